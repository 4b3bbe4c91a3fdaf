# AttestMesh — every entry point an operator, a developer or CI uses.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/tools/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
NODES ?= 3

.PHONY: setup lint test test-unit test-component test-e2e demo demo-down bench contracts image clean

setup:
	@bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check sidecar indexer ops devnet tests tests/standins/phala bench contracts setup.py
	$(VENV)/bin/ruff format --check sidecar indexer ops devnet tests tests/standins/phala bench contracts setup.py
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy contracts/build.py bench
	$(VENV)/bin/lint-imports
	shellcheck scripts/*.sh deploy/*.sh .ci/run
	$(VENV)/bin/hadolint Dockerfile

test: setup lint
	$(PY) -m pytest tests/unit -q
	$(PY) -m pytest tests/component -q -n 2 --dist loadfile
	$(PY) -m pytest tests/e2e -q -n 2

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-component: setup
	$(PY) -m pytest tests/component -q -n 2 --dist loadfile

test-e2e: setup
	$(PY) -m pytest tests/e2e -q -n 2

demo: setup
	$(VENV)/bin/attestmesh devnet up --nodes $(NODES)
	$(VENV)/bin/attestmesh devnet status --wait-healthy 120

demo-down: setup
	$(VENV)/bin/attestmesh devnet down

bench: setup
	$(PY) -m bench

contracts: setup
	$(PY) contracts/build.py

# Build the Dockerfile with podman (a local Debian base made once by mmdebstrap; ATTESTMESH_IMAGE_BASE=<ref>
# for another) and print the image id: docs/image.md "Building".
image: setup
	@bash scripts/image.sh

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
