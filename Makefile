# The README's two commands: `make demo` and `make test`. Every target sets itself up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KAFKA_LIBS := .cache/kafka/libs
KAFKA_STAMP := $(KAFKA_LIBS)/.fetched

.PHONY: setup kafka-jars test unit integration lint demo clean promtool ops-tools rules-test media-tools browser

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Apache Kafka's jars from Maven Central, into a cache outside git.
kafka-jars: $(KAFKA_STAMP)

# The folder is emptied first so a version change in the pom leaves no stale jar on the classpath.
$(KAFKA_STAMP): deploy/kafka/pom.xml
	rm -rf $(KAFKA_LIBS)
	mvn --batch-mode --quiet -f deploy/kafka/pom.xml dependency:copy-dependencies \
	    -DoutputDirectory=$(abspath $(KAFKA_LIBS)) -DincludeScope=runtime
	touch $(KAFKA_STAMP)

lint: setup
	$(VENV)/bin/ruff check shared services tests benchmarks deploy
	$(VENV)/bin/mypy

# Unit and integration tests; the integration suite starts its own broker unless
# LINEGUARD_KAFKA_BOOTSTRAP names one.
test: setup kafka-jars lint rules-test ops-tools media-tools browser
	$(PY) -m pytest -q -ra tests

unit: setup media-tools
	$(PY) -m pytest -q -ra tests/unit

integration: setup kafka-jars ops-tools media-tools browser
	$(PY) -m pytest -q -ra tests/integration

# promtool (Debian's `prometheus` package) checks and unit-tests the alert rules. Installed only
# when missing; quiet and idempotent.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	    echo "installing promtool (Debian package prometheus)"; \
	    $(SUDO) apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# The live operations test runs a real Prometheus and Alertmanager (Debian's `prometheus` and
# `prometheus-alertmanager` packages). Installed only when missing; quiet and idempotent.
ops-tools: promtool
	@{ command -v prometheus >/dev/null 2>&1 && command -v prometheus-alertmanager >/dev/null 2>&1; } || { \
	    echo "installing prometheus and prometheus-alertmanager (Debian packages)"; \
	    $(SUDO) apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	        prometheus prometheus-alertmanager >/dev/null; }

# The camera gateway's tests stream real video: FFmpeg (clips, and a live HTTP stream with
# -listen 1) and GStreamer's RTSP server, run by the system python3 with its gi bindings
# (x264enc is in plugins-ugly). Debian packages, installed only when missing.
MEDIA_PACKAGES := ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
media-tools:
	@{ command -v ffmpeg >/dev/null 2>&1 && /usr/bin/python3 -c "import gi; \
	    gi.require_version('GstRtspServer', '1.0'); from gi.repository import Gst, GstRtspServer; \
	    Gst.init(None); assert Gst.ElementFactory.find('x264enc')" >/dev/null 2>&1; } || { \
	    echo "installing FFmpeg and GStreamer's RTSP server (Debian packages)"; \
	    $(SUDO) apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	        $(MEDIA_PACKAGES) >/dev/null; }

# The console's tests drive a real browser: Debian's chromium and its chromedriver (selenium finds
# both on PATH and downloads nothing). Installed only when missing.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	    echo "installing Chromium and its driver (Debian packages chromium, chromium-driver)"; \
	    $(SUDO) apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	        chromium chromium-driver >/dev/null; }

rules-test: promtool
	promtool check rules deploy/prometheus/rules/*.yml >/dev/null
	promtool test rules deploy/prometheus/tests/*.yml

demo: setup kafka-jars
	$(VENV)/bin/lineguard demo

clean:
	rm -rf $(VENV) .cache var
