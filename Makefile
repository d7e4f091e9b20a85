# The two commands of the README: `make up` and `make test`.
# Both make the virtualenv when pyproject.toml is newer than it, then make sure Postgres and
# Redis answer (starting them if they are installed here), then do their work.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# `make up` is the local path: DEBUG on unless the environment says otherwise.
up: export DEBUG ?= 1
screenshots: export DEBUG ?= 1
# The demo agents and their tables (tools/demo) load only where asked for: the local path, the
# screenshots and the suite (whose workers run the chaos agent and count calls in its ledger).
up: export DEMO ?= 1
screenshots: export DEMO ?= 1
test: export DEMO ?= 1
# The suite runs as production does, DEBUG off, with a key of its own.
test: export DEBUG ?= 0
test: export SECRET_KEY ?= insecure-key-for-the-test-suite-only

.PHONY: up test services screenshots clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

services: $(STAMP)
	$(PY) manage.py services

up: services
	$(PY) manage.py migrate --no-input
	$(PY) manage.py seed_demo
	$(PY) manage.py serve

test: services
	$(PY) -m pytest $(PYTEST_ARGS)

# docs/screenshots/*.png, from the demo data, in a database of their own.
screenshots: services
	$(PY) manage.py screenshots

clean:
	rm -rf $(VENV) .data .pytest_cache
