# Two commands do everything on a fresh machine (Python 3.11, gcc, registries):
#   make run    set up, then the main job on virtual meters
#   make test   set up, then the whole default test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
METERS ?= 3

.PHONY: setup run test lint typecheck test-host test-device bench-sim clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: setup
	$(BIN)/meterctl demo --meters $(METERS) --dir .sim/run

lint: setup
	$(BIN)/ruff check host_tools tests_host tests_device
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -q tests_host tests_device

test-host: setup
	$(BIN)/pytest -q tests_host

test-device: setup
	$(BIN)/pytest -q tests_device $(if $(PORT),--port $(PORT))

bench-sim: setup
	$(BIN)/python -m host_tools.sim.bench --meters $(or $(BENCH_METERS),50)

clean:
	rm -rf build .sim .pytest_cache .ruff_cache .mypy_cache
