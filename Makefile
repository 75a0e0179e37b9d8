# codejail-service developer commands. `make help` lists them.
.DEFAULT_GOAL := help
.PHONY: help requirements upgrade quality annotations test-unit validate serve clean run test openapi

PYTHON ?= /usr/bin/python3.11
VENV ?= .venv
VENV_BIN := $(VENV)/bin
# Re-install whenever the pins or the package metadata change.
VENV_STAMP := $(VENV)/.installed
# Every venv here is made with Debian's python3.11 and its venv module, installed (as root) where a
# fresh machine lacks them; each target that uses another host program installs it the same way.
PYTHON_READY := bash tests/host-tools.sh python $(PYTHON):python3.11 -:python3.11-venv

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV_STAMP): requirements/test.txt requirements/pip-tools.txt pyproject.toml
	$(PYTHON_READY)
	test -x $(VENV_BIN)/python || $(PYTHON) -m venv $(VENV)
	$(VENV_BIN)/pip install --quiet --upgrade pip
	$(VENV_BIN)/pip install --quiet -r requirements/pip-tools.txt
	$(VENV_BIN)/pip-sync --quiet requirements/test.txt requirements/pip-tools.txt
	$(VENV_BIN)/pip install --quiet --no-deps -e .
	touch $@

requirements: $(VENV_STAMP) ## create/update the dev venv (.venv) from the pinned requirements

PIP_COMPILE = $(VENV_BIN)/pip-compile --quiet --upgrade --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links

# The Open edX platform's sandbox files (README.md there: its requirements/edx-sandbox/), beside
# this checkout as in CI; `make upgrade` copies them into requirements/sandbox/platform/ when there.
PLATFORM_SANDBOX ?= ../shared/platform-sandbox
SANDBOX_REQS := requirements/sandbox

upgrade: $(VENV_STAMP) ## recompile requirements/*.txt from the .in files (newest allowed versions); the sandbox's from the platform's pins, with the difference
	if [ -d $(PLATFORM_SANDBOX) ]; then \
		cp $(PLATFORM_SANDBOX)/current-base.in $(SANDBOX_REQS)/platform/base.in; \
		cp $(PLATFORM_SANDBOX)/current-base.txt $(SANDBOX_REQS)/platform/current.txt; \
		cp $(PLATFORM_SANDBOX)/teak.txt $(SANDBOX_REQS)/platform/teak.txt; \
	else echo "no $(PLATFORM_SANDBOX): the platform's sandbox files stay as vendored"; fi
	# From the platform's own pins (pip-compile keeps each that installs on this Python), not the newest.
	cp $(SANDBOX_REQS)/platform/current.txt $(SANDBOX_REQS)/current-py311.txt
	cd $(SANDBOX_REQS) && CUSTOM_COMPILE_COMMAND="make upgrade" $(abspath $(VENV_BIN))/pip-compile --quiet \
		--allow-unsafe --no-strip-extras --no-emit-index-url --no-emit-find-links \
		-o current-py311.txt current-py311.in
	$(VENV_BIN)/python deploy/sandbox_sets.py diff
	$(PIP_COMPILE) -o requirements/pip-tools.txt requirements/pip-tools.in
	$(PIP_COMPILE) -o requirements/base.txt requirements/base.in
	$(PIP_COMPILE) -o requirements/test.txt requirements/test.in
	$(PIP_COMPILE) -o requirements/docs.txt requirements/docs.in
	$(PIP_COMPILE) -o requirements/deploy.txt requirements/deploy.in
	$(PIP_COMPILE) -o requirements/tutor.txt requirements/tutor.in

quality: $(VENV_STAMP) ## lint and import order (ruff)
	$(VENV_BIN)/ruff check codejail_service manage.py tests benchmarks docs/_ext deploy/tutor-contrib-codejail-service deploy/sandbox_sets.py

annotations: $(VENV_STAMP) ## check toggle, setting and custom-attribute annotations (config: .annotations)
	$(VENV_BIN)/code_annotations static_find_annotations --config_file .annotations --lint --report

test-unit: $(VENV_STAMP) ## unit tests with coverage of codejail_service/ (fails under 95 %)
	$(VENV_BIN)/pytest

validate: quality annotations test-unit ## everything a change must pass before it is committed

openapi: $(VENV_STAMP) ## regenerate the checked-in OpenAPI schema (docs/openapi.yaml) from the views
	DJANGO_SETTINGS_MODULE=codejail_service.settings.test $(VENV_BIN)/python manage.py spectacular \
		--validate --fail-on-warn --file docs/openapi.yaml

# Production settings when a config file is named, else the developer settings.
SERVE_SETTINGS ?= $(if $(CODEJAIL_SERVICE_CFG),codejail_service.settings.production,codejail_service.settings.local)

serve: $(VENV_STAMP) ## run gunicorn with our config from the current environment (CODEJAIL_SERVICE_BIND, CODEJAIL_SERVICE_CFG)
	DJANGO_SETTINGS_MODULE=$${DJANGO_SETTINGS_MODULE:-$(SERVE_SETTINGS)} \
		$(VENV_BIN)/gunicorn -c python:codejail_service.gunicorn_config codejail_service.wsgi

clean: ## remove caches and reports (keeps .venv)
	rm -rf .cache .coverage coverage.xml htmlcov .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -exec rm -rf {} +

# --- The real service on this host (as root): provisioning, serving, the live suite ---------
.PHONY: install-host provision test-live test-live-fresh test-sabotage bench-confinement bench-zygote bench-imports audit
# A stand-in for "the outside network" (deploy/egress-testbed.sh) that the web app must not reach.
EGRESS_TARGET := 10.213.0.2:80
# An operator's extra sandbox package, small and pure Python: the live suite imports it in a run.
# Only the test targets install it; `make run` installs what an operator's host needs, no more.
EXTRA_SANDBOX_PACKAGE := tabulate==0.9.0
RUN_ENV := CODEJAIL_BLOCK_APP_EGRESS=1 CODEJAIL_EGRESS_CHECK_TARGET=$(EGRESS_TARGET)
PROVISION_ENV := $(RUN_ENV) CODEJAIL_EXTRA_PIP_REQUIREMENTS=$(EXTRA_SANDBOX_PACKAGE)
export CODEJAIL_LIVE_EXTRA_PACKAGE := $(EXTRA_SANDBOX_PACKAGE)
LIVE_PYTEST_ONLY := $(VENV_BIN)/pytest -p no:django -p no:cacheprovider -o addopts= -W ignore::pytest.PytestConfigWarning
LIVE_PYTEST := $(LIVE_PYTEST_ONLY) tests/live

provision: ## (root) set up this host for the test targets: `make install-host`, the test's extra sandbox package, the egress testbed
	bash tests/host-tools.sh provision ip:iproute2
	bash deploy/egress-testbed.sh up
	$(PROVISION_ENV) bash deploy/provision.sh

install-host: ## (root) what `make run` installs, without serving: users, venvs, sudoers, config, app egress block
	bash tests/host-tools.sh install-host ip:iproute2
	$(RUN_ENV) bash deploy/provision.sh

run: install-host ## (root) set up this host and serve on 127.0.0.1:8550 (CODEJAIL_SERVICE_BIND overrides)
	bash deploy/egress-testbed.sh up
	bash deploy/serve.sh

test-live: provision $(VENV_STAMP) ## (root) the live API suite against the real service on this host, as configured by default (warm sandbox: ADR 7)
	$(LIVE_PYTEST)

test-live-fresh: provision $(VENV_STAMP) ## (root) the live API suite and a 300-run soak with a fresh interpreter per run (CODEJAIL_WARM_SANDBOX: false, the opt-out)
	CODEJAIL_LIVE_WARM=0 $(LIVE_PYTEST)
	CODEJAIL_LIVE_WARM=0 $(VENV_BIN)/pytest -p no:django -p no:cacheprovider -o addopts= \
		-W ignore::pytest.PytestConfigWarning -s tests/robustness/test_soak.py

test-sabotage: provision $(VENV_STAMP) ## (root) the live suite with our confinement layer off: its deny tests must fail
	$(PROVISION_ENV) CODEJAIL_CONFINEMENT=off bash deploy/provision.sh
	CODEJAIL_LIVE_SABOTAGE=1 $(LIVE_PYTEST); status=$$?; \
		$(PROVISION_ENV) bash deploy/provision.sh; exit $$status

audit: provision $(VENV_STAMP) ## (root) try every syscall number from inside a real run; write the table to docs/syscall-audit.rst
	CODEJAIL_AUDIT_WRITE_DOCS=1 $(LIVE_PYTEST_ONLY) tests/live/test_syscall_audit.py

bench-confinement: provision ## (root) what our confinement layer costs per run (layer on vs off, interleaved)
	$(PYTHON) benchmarks/confinement_cost.py --runs $${RUNS:-200}

bench-zygote: provision ## (root) CPU and wall time per run: the warm sandbox's zygote vs fresh interpreters (ADR 7)
	$(PYTHON) benchmarks/zygote_cost.py --runs $${RUNS:-200}

bench-imports: provision ## (root) what importing each course package costs a fresh sandbox run (chooses the zygote's PRELOAD)
	cd benchmarks && $(PYTHON) import_cost.py --runs $${RUNS:-5}

test: test-unit apparmor-compile docs validate-deploy test-fresh-machine test-live test-live-fresh test-lms-client test-robustness test-faults test-sabotage test-deploy-host test-apparmor test-image test-tutor ## (root) every test (about 40 min here)

# --- The LMS's own client (issue 12): xblocks-contrib's capa safe_exec against the live service --
.PHONY: test-lms-client
LMS_CLIENT_VENV := .cache/venv-lms-client

# --no-deps: xblocks-contrib declares the platform's whole stack; requirements/lms-client.txt
# lists what the client needs, explicitly.
$(LMS_CLIENT_VENV)/.installed: requirements/lms-client.txt
	$(PYTHON_READY)
	test -x $(LMS_CLIENT_VENV)/bin/python || $(PYTHON) -m venv $(LMS_CLIENT_VENV)
	$(LMS_CLIENT_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements/lms-client.txt
	touch $@

# The darklaunch's local codejail, as an LMS host has it: a --copies venv of the platform's own
# current pins (not the service's set), with openedx-calc 4.0.3 for 5.0.0 on this Python 3.11 (5.0.0
# requires 3.12; the same code). Built once per pins, kept under .cache/ (readable by the sandbox user).
LMS_LOCAL_PINS := $(SANDBOX_REQS)/platform/current.txt
LMS_LOCAL_VENV := .cache/venv-lms-local-$(shell cat $(LMS_LOCAL_PINS) | sha256sum | cut -c1-16)
export CODEJAIL_LMS_LOCAL_VENV := $(abspath $(LMS_LOCAL_VENV))

$(LMS_LOCAL_VENV)/.installed: $(LMS_LOCAL_PINS)
	rm -rf .cache/venv-lms-local-*
	$(PYTHON_READY)
	$(PYTHON) -m venv --copies $(LMS_LOCAL_VENV)
	sed 's/^openedx-calc==5\.0\.0$$/openedx-calc==4.0.3/' $(LMS_LOCAL_PINS) > $(LMS_LOCAL_VENV)/pins.txt
	$(LMS_LOCAL_VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r $(LMS_LOCAL_VENV)/pins.txt
	$(LMS_LOCAL_VENV)/bin/python -m compileall -q $(LMS_LOCAL_VENV)/lib >/dev/null || true
	chmod go+rx .cache && chmod -R go+rX,go-w $(LMS_LOCAL_VENV)
	touch $@

test-lms-client: provision $(LMS_CLIENT_VENV)/.installed $(LMS_LOCAL_VENV)/.installed ## (root) the LMS's own client (REST, darklaunch vs a local codejail of the platform's pins, the parity corpus) against the service, warm (the default) and fresh
	$(LMS_CLIENT_VENV)/bin/pytest tests/lms_client
	CODEJAIL_LIVE_WARM=0 $(LMS_CLIENT_VENV)/bin/pytest tests/lms_client --ignore=tests/lms_client/test_preload.py

# --- Robustness (issue 7): fuzzing, property tests, soak, faults; against the real service ----
.PHONY: test-robustness fuzz soak test-faults
ROBUST_PYTEST := $(VENV_BIN)/pytest -p no:django -p no:cacheprovider -o addopts= -W ignore::pytest.PytestConfigWarning -s

test-robustness: provision $(VENV_STAMP) ## (root) schemathesis + hypothesis against the live API (bounded), and a 300-run soak
	$(ROBUST_PYTEST) tests/robustness/test_fuzz_api.py tests/robustness/test_properties.py
	$(ROBUST_PYTEST) tests/robustness/test_soak.py

fuzz: provision $(VENV_STAMP) ## (root) deeper fuzzing: FUZZ_EXAMPLES (2000) per operation and per property
	CODEJAIL_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-2000} CODEJAIL_PROPERTY_EXAMPLES=$${FUZZ_EXAMPLES:-2000} \
		$(ROBUST_PYTEST) tests/robustness/test_fuzz_api.py tests/robustness/test_properties.py

soak: provision $(VENV_STAMP) ## (root) SOAK_RUNS (5000) mixed runs at SOAK_CONCURRENCY (8), ~10 % hostile: errors, RSS drift, leaks
	CODEJAIL_SOAK_RUNS=$${SOAK_RUNS:-5000} CODEJAIL_SOAK_CONCURRENCY=$${SOAK_CONCURRENCY:-8} \
		$(ROBUST_PYTEST) tests/robustness/test_soak.py

test-faults: provision $(VENV_STAMP) ## (root) kill a worker mid-run, break the sandbox venv / sudoers, fill /tmp; restores the host
	$(ROBUST_PYTEST) tests/robustness/test_faults.py

# --- Performance (issue 6) -----------------------------------------------------------
.PHONY: bench bench-profile bench-timeout bench-globals
BENCH_ARGS ?=
bench-timeout: provision ## (root) how long a run killed at REALTIME takes to be answered, at c=1 and at capacity, fresh and warm
	$(PYTHON) benchmarks/timeout_answer.py

bench-globals: provision ## (root) worker memory and answer time for globals of 1 to 9 MiB, which come back whole
	$(PYTHON) benchmarks/globals_memory.py

bench: provision ## (root) load benchmark of the real service vs the interpreter floor: table, where a run's time goes, .cache/bench/latest.json (BENCH_ARGS)
	$(PYTHON) benchmarks/bench.py $(BENCH_ARGS)

bench-profile: provision ## (root) make bench at c=1 and 8 with perf profiling the c=1 cells (kernel and user symbols, by process)
	bash tests/host-tools.sh bench-profile perf:linux-perf
	$(PYTHON) benchmarks/bench.py --concurrency 1,8 --perf $(BENCH_ARGS)

# --- Docs and deployment checks. Own venvs under .cache/: their pins are compiled
# separately from test.txt, and pip-sync in .venv would remove them.
.PHONY: docs lint-docker validate-deploy test-deploy-host test-image
DOCS_VENV := .cache/venv-docs
DEPLOY_VENV := .cache/venv-deploy

$(DOCS_VENV)/.installed: requirements/docs.txt
	$(PYTHON_READY)
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/docs.txt
	touch $@

$(DEPLOY_VENV)/.installed: requirements/deploy.txt
	$(PYTHON_READY)
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/deploy.txt
	touch $@

docs: $(DOCS_VENV)/.installed ## build the Sphinx docs into docs/_build/html (any warning fails)
	$(DOCS_VENV)/bin/pytest tests/docs
	$(DOCS_VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

lint-docker: $(DEPLOY_VENV)/.installed ## lint the Dockerfile with hadolint
	$(DEPLOY_VENV)/bin/hadolint Dockerfile

validate-deploy: lint-docker ## Dockerfile + Kubernetes manifests: schemas (1.30, 1.37), kustomize render, invariants
	mkdir -p .cache
	$(DEPLOY_VENV)/bin/kubectl kustomize deploy/kubernetes > .cache/kubernetes-rendered.yaml
	for v in 1.30.0 1.37.0; do \
		$(DEPLOY_VENV)/bin/kubernetes-validate --strict --quiet -k $$v .cache/kubernetes-rendered.yaml || exit 1; \
	done
	$(DEPLOY_VENV)/bin/pytest tests/deploy -m "not host and not tutor"

test-deploy-host: $(DEPLOY_VENV)/.installed ## as root after deploy/provision.sh: the pod's capabilities against the real sudo
	$(DEPLOY_VENV)/bin/pytest tests/deploy -m host

.PHONY: apparmor-compile test-apparmor

apparmor-compile: ## compile the AppArmor profiles in apparmor/ without loading them (apparmor_parser -Q -K -T)
	bash tests/apparmor_vm/compile-profiles.sh

test-apparmor: ## (root) boot Debian's kernel under QEMU (tcg), run the live suite with AppArmor as the only confinement
	bash tests/apparmor_vm/run.sh

test-image: $(VENV_STAMP) ## (root) build the image on Debian's Docker engine, run it as the Deployment does, live suite (fresh, warm) against it
	EXTRA_SANDBOX_PACKAGE=$(EXTRA_SANDBOX_PACKAGE) bash tests/deploy/image-test.sh

.PHONY: test-tutor
test-tutor: $(VENV_STAMP) $(DEPLOY_VENV)/.installed ## (root) the Tutor plugin with the real Tutor: rendered env checked, image built by `tutor images build`, its compose service runs a problem
	EXTRA_SANDBOX_PACKAGE=$(EXTRA_SANDBOX_PACKAGE) bash tests/deploy/tutor-test.sh

# --- The README's commands on a machine nothing was installed on ----------------------------
.PHONY: test-fresh-machine
test-fresh-machine: ## (root) in a fresh minbase bookworm root filesystem: quality, unit tests, docs, then `make run` until /health/ answers 200
	bash tests/fresh_machine/rehearse.sh
