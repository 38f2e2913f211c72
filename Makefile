# The two front doors: `make test` and (with the control daemon) `make demo`.
# Each does its own set-up: a virtual environment in .venv with edgectl installed
# editable, its Cython kernels compiled (REQUIRE_CYTHON=1: a failed build is fatal).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck pytest bench demo clean

$(STAMP): pyproject.toml setup.py $(wildcard cext/*.pyx cext/*.pxd)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	REQUIRE_CYTHON=1 $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check edgectl tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/edgectl demo

bench: $(STAMP)
	$(BIN)/edgectl bench --site examples/reference_site.toml
	$(BIN)/python benchmarks/polling.py --devices 100,500,1000

clean:
	rm -rf $(VENV) build *.egg-info cext/*.c edgectl/_ext/*.so
