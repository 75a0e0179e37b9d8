# codejail-service developer commands. `make help` lists them.
.DEFAULT_GOAL := help
.PHONY: help requirements upgrade quality annotations test-unit validate serve clean run test

PYTHON ?= /usr/bin/python3.11
VENV ?= .venv
VENV_BIN := $(VENV)/bin
# Re-install whenever the pins or the package metadata change.
VENV_STAMP := $(VENV)/.installed

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV_STAMP): requirements/test.txt requirements/pip-tools.txt pyproject.toml
	test -x $(VENV_BIN)/python || $(PYTHON) -m venv $(VENV)
	$(VENV_BIN)/pip install --quiet --upgrade pip
	$(VENV_BIN)/pip install --quiet -r requirements/pip-tools.txt
	$(VENV_BIN)/pip-sync --quiet requirements/test.txt requirements/pip-tools.txt
	$(VENV_BIN)/pip install --quiet --no-deps -e .
	touch $@

requirements: $(VENV_STAMP) ## create/update the dev venv (.venv) from the pinned requirements

PIP_COMPILE = $(VENV_BIN)/pip-compile --quiet --upgrade --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links

upgrade: $(VENV_STAMP) ## recompile requirements/*.txt from the .in files (newest allowed versions)
	$(PIP_COMPILE) -o requirements/pip-tools.txt requirements/pip-tools.in
	$(PIP_COMPILE) -o requirements/base.txt requirements/base.in
	$(PIP_COMPILE) -o requirements/test.txt requirements/test.in

quality: $(VENV_STAMP) ## lint and import order (ruff)
	$(VENV_BIN)/ruff check codejail_service manage.py

annotations: $(VENV_STAMP) ## check toggle, setting and custom-attribute annotations (config: .annotations)
	$(VENV_BIN)/code_annotations static_find_annotations --config_file .annotations --lint --report

test-unit: $(VENV_STAMP) ## unit tests with coverage of codejail_service/ (fails under 95 %)
	$(VENV_BIN)/pytest

validate: quality annotations test-unit ## everything a change must pass before it is committed

# Production settings when a config file is named, else the developer settings.
SERVE_SETTINGS ?= $(if $(CODEJAIL_SERVICE_CFG),codejail_service.settings.production,codejail_service.settings.local)

serve: $(VENV_STAMP) ## run gunicorn with our config from the current environment (CODEJAIL_SERVICE_BIND, CODEJAIL_SERVICE_CFG)
	DJANGO_SETTINGS_MODULE=$${DJANGO_SETTINGS_MODULE:-$(SERVE_SETTINGS)} \
		$(VENV_BIN)/gunicorn -c python:codejail_service.gunicorn_config codejail_service.wsgi

clean: ## remove caches and reports (keeps .venv)
	rm -rf .cache .coverage coverage.xml htmlcov .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +

# Placeholders the lead extends: provisioning + serving as the app user, and the live suite.
run: serve ## set up and serve on 127.0.0.1:8550 (CODEJAIL_SERVICE_BIND overrides)

test: test-unit ## every test
