# didact — one command to run, one to test. Everything else is a convenience.
#   make demo   venv + packages, then the nightly job for the last 3 days (simulated cluster)
#   make test   venv + packages + system services' packages, the model gate (quick), then the whole test suite
#               (on three pytest-xdist workers; PYTEST_WORKERS=0 runs it in this one process)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
# torch goes in first, pinned (a CPU wheel on the build machines); override for CUDA, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
DIDACT := $(VENV)/bin/didact
export DIDACT_HOME ?= $(CURDIR)/.didact
export DAGSTER_HOME ?= $(DIDACT_HOME)/dagster

.PHONY: venv system-deps demo test test-fast ci-gate ui mlflow-ui bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "== installing torch ($(TORCH_SPEC)) first, then didact and its pins"
	@$(PIP) install -q --disable-pip-version-check $(TORCH_SPEC) 2>&1 | grep -v "^WARNING: Location" || true
	@$(PIP) install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -W ignore -c "import torch, dagster, dagster_mlflow, mlflow, duckdb, didact_core, didact_assets" \
		|| { echo "install failed"; exit 1; }
	@touch $@

system-deps:
	@bash scripts/install_system_deps.sh

demo: venv
	$(DIDACT) demo

# The suite on $(PYTEST_WORKERS) pytest-xdist workers, a file's tests on one worker (its module
# fixtures start their services once), then alone the tests marked serial (they measure the
# node's load).  The files start longest first (what they took before: tests/conftest.py), in that
# order (--no-loadscope-reorder).  Both parts always run; either failing fails the target.
PYTEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: venv system-deps ci-gate
	rc=0; \
	$(PY) -m pytest -q --durations=20 $(PYTEST_PARALLEL) -m "not serial" || rc=$$?; \
	$(PY) -m pytest -q --durations=20 -m serial || rc=$$?; \
	exit $$rc

# a change that makes the model worse fails here (ci/reference.json, ci/thresholds.toml; docs/ci.md)
ci-gate: venv
	$(DIDACT) ci gate --profile quick --report $(CURDIR)/.ci/.state/ci-report

test-fast: venv
	$(PY) -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

ui: venv
	$(DIDACT) ui

mlflow-ui: venv
	@mkdir -p $(DIDACT_HOME)/mlflow
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(DIDACT_HOME)/mlflow/mlflow.db \
		--default-artifact-root $(DIDACT_HOME)/mlflow/artifacts --host 127.0.0.1 --port 5000

bench: venv
	@$(PIP) install -q --disable-pip-version-check -e ".[bench]" 2>&1 | grep -v "^WARNING: Location" || true
	$(DIDACT) bench pipeline

clean:
	rm -rf $(VENV) .pytest_cache
