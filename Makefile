# CheXStack developer entry points. `make test` runs every test tier; `make demo` the streaming demo.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: help venv system-deps lint typecheck unit integration test demo schemas bench clean

help:
	@echo "make test   - install what is needed, then lint, type-check, unit and integration tests"
	@echo "make demo   - broker, model, serving and workers on this machine; upload synthetic X-rays"
	@echo "make bench  - streaming benchmark (writes docs/performance.md figures to stdout)"

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

lint: $(STAMP)
	$(VENV)/bin/ruff check chexstack tests bench
	$(VENV)/bin/ruff format --check chexstack tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy chexstack

schemas: $(STAMP)
	$(VENV)/bin/chexstack schemas export --out docs/schemas
	git diff --exit-code docs/schemas || (echo "docs/schemas is stale: commit the regenerated files" >&2; exit 1)

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit -q

integration: $(STAMP)
	$(VENV)/bin/pytest tests/integration -q

test: lint typecheck schemas unit integration

demo: $(STAMP)
	bash scripts/demo.sh

bench: $(STAMP)
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
