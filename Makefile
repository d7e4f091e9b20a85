# The two commands of the README: `make up` and `make test`.
# Both make the virtualenv when pyproject.toml is newer than it, then make sure Postgres and
# Redis answer (starting them if they are installed here), then do their work.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# `make up` is the local path: its settings are in .env (DEBUG and the demo on, a key of its
# own), which it writes on its first run and never overwrites, so that a manage.py command in
# any other shell sees the same settings (agentops/settings.py reads .env).
screenshots: export DEBUG ?= 1
# The demo agents and their tables (tools/demo) load only where asked for: the local path, the
# screenshots and the suite (whose workers run the chaos agent and count calls in its ledger).
screenshots: export DEMO ?= 1
test: export DEMO ?= 1
# The suite runs as production does, DEBUG off, with a key of its own, and never reads the
# developer's .env (an empty DOTENV_FILE: no file), so what it tests is what it sets.
test: export DEBUG ?= 0
test: export SECRET_KEY ?= insecure-key-for-the-test-suite-only
test: export DOTENV_FILE =

.PHONY: up test services chromium screenshots clean local-env

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

services: $(STAMP)
	$(PY) manage.py services

# The local .env, written once; an existing one is left as it is.
local-env: $(STAMP)
	$(PY) -m agentops.localenv

up: local-env services
	$(PY) manage.py migrate --no-input
	$(PY) manage.py seed_demo
	$(PY) manage.py serve

test: services chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# The browser tests drive Debian's Chromium. Install it where we may (root, or sudo without a
# password); anywhere else, stop at once with the one command to run.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
	    echo "Installing Debian's chromium for the browser tests"; \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "The browser tests need Debian's Chromium at /usr/bin/chromium: run 'sudo apt-get install chromium', then make test again." >&2; \
	    exit 1; \
	  fi; }
	@test -x /usr/bin/chromium

# docs/screenshots/*.png, from the demo data, in a database of their own.
screenshots: services
	$(PY) manage.py screenshots

clean:
	rm -rf $(VENV) .data .pytest_cache
