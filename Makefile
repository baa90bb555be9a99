# The README's two commands: `make demo` and `make test`. Every target sets itself up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KAFKA_LIBS := .cache/kafka/libs
KAFKA_STAMP := $(KAFKA_LIBS)/.fetched

.PHONY: setup kafka-jars test unit integration lint demo clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Apache Kafka's jars from Maven Central, into a cache outside git.
kafka-jars: $(KAFKA_STAMP)

$(KAFKA_STAMP): deploy/kafka/pom.xml
	mvn --batch-mode --quiet -f deploy/kafka/pom.xml dependency:copy-dependencies \
	    -DoutputDirectory=$(abspath $(KAFKA_LIBS)) -DincludeScope=runtime
	touch $(KAFKA_STAMP)

lint: setup
	$(VENV)/bin/ruff check shared services tests benchmarks
	$(VENV)/bin/mypy

# Unit and integration tests; the integration suite starts its own broker unless
# LINEGUARD_KAFKA_BOOTSTRAP names one.
test: setup kafka-jars lint
	$(PY) -m pytest -q -ra tests

unit: setup
	$(PY) -m pytest -q -ra tests/unit

integration: setup kafka-jars
	$(PY) -m pytest -q -ra tests/integration

demo: setup kafka-jars
	$(VENV)/bin/lineguard demo

clean:
	rm -rf $(VENV) .cache var
