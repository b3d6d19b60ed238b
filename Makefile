# SkyDeck: `make run` starts everything on embedded defaults; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.12 2>/dev/null || command -v python3 2>/dev/null)
VENV   := .venv
PY     := $(VENV)/bin/python
# One stamp per install, named after what it installed: `make run` after `make test` installs nothing.
RUN_STAMP := $(VENV)/.installed-run-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
DEV_STAMP := $(VENV)/.installed-dev-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
export SKYPILOT_DISABLE_USAGE_COLLECTION := 1
export SKYDECK_BIND ?= 127.0.0.1:8000

.PHONY: run test lint install install-dev migrate check bench e2e-up e2e-test e2e-down clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "SkyDeck needs Python 3.12 (found " + sys.version.split()[0] + "): install it, or run make PYTHON=/path/to/python3.12")'
	$(PYTHON) -m venv $(VENV)

## make install: what SkyDeck runs on (requirements.txt); make install-dev adds the test and lint tools
$(RUN_STAMP): | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-run-* && touch $@

$(DEV_STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-dev-* && touch $@

install: $(RUN_STAMP)

install-dev: $(DEV_STAMP)

migrate: install
	$(PY) manage.py migrate --noinput

## make run: web + Celery worker + beat (the Procfile) on SQLite and a filesystem broker under var/;
## honcho runs them in the foreground and one Ctrl-C stops all three
# On Ctrl-C honcho sends SIGTERM, then SIGKILL to what still runs 5 s after the first one
# stopped; an idle Celery worker on the filesystem broker needs 6-7 s to shut down, so
# honcho waits 15 s here (it has no option for that).
HONCHO := $(PY) -c 'import honcho.command, honcho.manager; honcho.manager.KILL_WAIT = 15; honcho.command.main()'
run: migrate
	$(PY) manage.py ensure_login --url http://$(SKYDECK_BIND)/
	PATH="$(abspath $(VENV))/bin:$$PATH" PYTHONUNBUFFERED=1 $(HONCHO) start

## make test: the whole suite; services that are missing are skipped with a reason (CI=true fails instead)
# Everything but the Slurm end-to-end tests in parallel processes (pytest-xdist; the SkyPilot API
# server tests stay on one of them), then the end-to-end tests alone: a launch on the one-node
# cluster needs the cores the others would take. MARK narrows both ("not browser");
# PYTEST_WORKERS=0 runs the first part in this process. Exit code 5 is "nothing selected".
PYTEST_WORKERS ?= 3
MARK ?=
test: install-dev
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "not slurm$(if $(MARK), and ($(MARK)))" $(PYTEST_ARGS)
	$(PY) -m pytest -m "slurm$(if $(MARK), and ($(MARK)))" $(PYTEST_ARGS) || [ $$? -eq 5 ]

## make lint: ruff's checks and formatting (configured in pyproject.toml)
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: install
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run

## make bench: fill PostgreSQL with 10,000 experiments and 200,000 jobs and time the pages
bench: install
	$(PY) bench/pages.py

## the one-node Slurm cluster that the SkyPilot end-to-end tests launch on (root only)
e2e-up: install
	SKY_VENV=$(CURDIR)/$(VENV) bash ../shared/e2e-slurm/up.sh

## the SkyPilot end-to-end tests on that cluster, through a real Celery worker (needs Redis)
E2E_DIR ?= /tmp/skydeck-slurm
e2e-test: install-dev
	SKYDECK_E2E_SLURM=1 SKYDECK_TEST_SKY_HOME=$(E2E_DIR)/client-home SKYPILOT_API_SERVER_LOCAL_PORT=46690 \
	  $(PY) -m pytest -m slurm $(PYTEST_ARGS)

e2e-down:
	bash ../shared/e2e-slurm/down.sh

clean:
	rm -rf $(VENV) var .pytest_cache
