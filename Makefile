# CheXStack entry points. `make up` provisions the platform on this machine, `make test` runs every test
# tier, `make demo` the streaming path as plain processes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TF_CPP_MIN_LOG_LEVEL := 2
# ansible-playbook, molecule and their helpers come from the venv.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Extra ansible-playbook arguments for `make up` / `make down`, e.g. ARGS='-e chexstack_expose=true'.
ARGS ?=

.PHONY: help venv system-deps up down images lint typecheck unit integration journeys e2e security browser test demo schemas bench clean

help:
	@echo "make up      - install the controller toolchain, run site.yml on this machine (the platform)"
	@echo "make down    - stop every platform container; volumes (Kafka data, models, blobs) are kept"
	@echo "make test    - install what is needed, then lint, unit, integration and e2e (Molecule, playbook, browser) tests"
	@echo "make journeys - every shell block of the README, run as written (beside a running platform)"
	@echo "make security - security probes alone (containers, tokens, HTTP limits, poison, PHI) on the e2e instance"
	@echo "make browser - browser tests alone: deploys the isolated e2e instance, drives JupyterLab with Chromium"
	@echo "make demo    - broker, model, serving and workers on this machine; upload synthetic X-rays"
	@echo "make bench   - streaming benchmark (writes docs/performance.md figures to stdout)"
	@echo "make images  - build the container images (ARGS='--source bootstrap|pull')"

system-deps:
	@bash scripts/install-system-deps.sh

$(STAMP): requirements.txt requirements-runtime.txt requirements-nodeps.txt pyproject.toml
	@bash scripts/install-system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# tensorflow-serving-api wants the full `tensorflow` wheel; we run tensorflow-cpu of the same version.
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	ansible-playbook -i inventory/local.yml site.yml $(ARGS)

down: $(STAMP)
	ansible-playbook -i inventory/local.yml down.yml $(ARGS)

images: $(STAMP)
	bash scripts/images/build.sh $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check chexstack tests bench plugins
	$(VENV)/bin/ruff format --check chexstack tests bench plugins

typecheck: $(STAMP)
	$(VENV)/bin/mypy chexstack plugins/filter bench tests

schemas: $(STAMP)
	$(VENV)/bin/chexstack schemas export --out docs/schemas
	git diff --exit-code docs/schemas || (echo "docs/schemas is stale: commit the regenerated files" >&2; exit 1)

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit -q

# --durations: CI's log names the slowest tests, to keep the run inside its time budget.
integration: $(STAMP)
	$(VENV)/bin/pytest tests/integration -q --durations=15

# Every shell block of the README as written, in order (tests/journeys): the README cannot drift from
# the code.
journeys: $(STAMP)
	$(VENV)/bin/pytest tests/journeys -v --durations=15

# ansible-lint and yamllint, every role's Molecule scenario, then the whole playbook on this machine,
# then the security tier (what a local or notebook user could try) and the browser tier (Playwright +
# Chromium, notebooks run headless) against the same deployment: one pytest process, so the platform
# instance (a session fixture, tests/conftest.py) is deployed once.
e2e: $(STAMP)
	$(VENV)/bin/pytest tests/e2e tests/security tests/browser -v --durations=15

# The security tier alone; like `make browser` it deploys the e2e instance (CHEXSTACK_E2E_REUSE=1
# reuses a running one).
security: $(STAMP)
	$(VENV)/bin/pytest tests/security -v

# The browser tier alone; it deploys the isolated e2e instance itself (CHEXSTACK_E2E_REUSE=1 reuses a
# running one). Screenshots go to tests/artifacts/browser/ (CHEXSTACK_TEST_ARTIFACTS overrides).
browser: $(STAMP)
	$(VENV)/bin/pytest tests/browser -v

test: lint typecheck schemas unit integration journeys e2e

demo: $(STAMP)
	bash scripts/demo.sh

bench: $(STAMP)
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
