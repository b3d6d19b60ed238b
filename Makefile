# SkyDeck: `make run` starts everything on embedded defaults; `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.12 2>/dev/null || command -v python3 2>/dev/null)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
export SKYPILOT_DISABLE_USAGE_COLLECTION := 1
export SKYDECK_BIND ?= 127.0.0.1:8000

.PHONY: run test install migrate check bench e2e-up e2e-test e2e-down clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "SkyDeck needs Python 3.12 (found " + sys.version.split()[0] + "): install it, or run make PYTHON=/path/to/python3.12")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

migrate: install
	$(PY) manage.py migrate --noinput

## make run: web + Celery worker + beat on SQLite and a filesystem broker under var/
run: migrate
	$(PY) manage.py ensure_login --url http://$(SKYDECK_BIND)/
	$(PY) manage.py runall

## make test: the whole suite; services that are missing are skipped with a reason (CI=true fails instead)
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

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
e2e-test: install
	SKYDECK_E2E_SLURM=1 SKYDECK_TEST_SKY_HOME=$(E2E_DIR)/client-home SKYPILOT_API_SERVER_LOCAL_PORT=46690 \
	  $(PY) -m pytest -m slurm $(PYTEST_ARGS)

e2e-down:
	bash ../shared/e2e-slurm/down.sh

clean:
	rm -rf $(VENV) var .pytest_cache
