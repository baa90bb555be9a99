# The README's two commands: `make demo` and `make test`. Every target sets itself up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KAFKA_LIBS := .cache/kafka/libs
KAFKA_STAMP := $(KAFKA_LIBS)/.fetched

.PHONY: setup kafka-jars test unit integration lint demo clean promtool rules-test

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
	$(VENV)/bin/ruff check shared services tests benchmarks
	$(VENV)/bin/mypy

# Unit and integration tests; the integration suite starts its own broker unless
# LINEGUARD_KAFKA_BOOTSTRAP names one.
test: setup kafka-jars lint rules-test
	$(PY) -m pytest -q -ra tests

unit: setup
	$(PY) -m pytest -q -ra tests/unit

integration: setup kafka-jars
	$(PY) -m pytest -q -ra tests/integration

# promtool (Debian's `prometheus` package) checks and unit-tests the alert rules. Installed only
# when missing; quiet and idempotent.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	    echo "installing promtool (Debian package prometheus)"; \
	    $(SUDO) apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

rules-test: promtool
	promtool check rules deploy/prometheus/rules/*.yml >/dev/null
	promtool test rules deploy/prometheus/tests/*.yml

demo: setup kafka-jars
	$(VENV)/bin/lineguard demo

clean:
	rm -rf $(VENV) .cache var
