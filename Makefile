# Two commands do everything on a fresh machine (Python 3.11, gcc, registries):
#   make run    set up, then the main job on virtual meters
#   make test   set up, then the whole default test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STUBS := $(VENV)/.port-stubs
METERS ?= 3

.PHONY: setup run test lint typecheck mpy test-host test-device bench-sim clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# One typeshed per MicroPython port (the two stub packages overwrite each other's files in
# .venv): assembled once into ~/.cache/meterctl/typeshed, fetching a stub wheel only when its
# installed copy was overwritten. After this, typecheck needs no network.
$(STUBS): $(STAMP)
	$(BIN)/python -m host_tools.flash.typecheck --prepare
	@touch $(STUBS)

run: setup
	$(BIN)/meterctl demo --meters $(METERS) --dir .sim/run

lint: setup typecheck
	$(BIN)/ruff check host_tools tests_host tests_device
	$(BIN)/mypy

# mypy over firmware/ + each board/<port> against that port's MicroPython stubs (~5 s).
typecheck: setup $(STUBS)
	$(BIN)/python -m host_tools.flash.typecheck

# mpy-cross every board's image for its architecture; sizes against docs/hardware.md's budgets.
mpy: setup
	$(BIN)/python -m host_tools.flash.sizes

# Debian packages the default suite talks to (mosquitto for `meterctl mqtt`): installed
# only when missing, and only where apt-get runs as root (the tests that need one say so).
.PHONY: test-deps
test-deps:
	@test -x /usr/sbin/mosquitto || command -v mosquitto >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get -qq update && \
	    DEBIAN_FRONTEND=noninteractive apt-get -y -qq install --no-install-recommends \
	      mosquitto >/dev/null; } || echo "mosquitto missing: its tests will skip"

# Three workers on the CI machine's two cores, one test file each at a time (a file's module
# fixtures, its virtual meters, stay in one worker), the longest files first (conftest.py's
# order: --no-loadscope-reorder keeps it). Most device tests wait on the meters' clocks: on 2
# workers the suite kept the 2 cores 31 % busy (18 min 25 s; 9 min 12 s user, 2 min 15 s sys),
# on 3 it took 13 min 40 s (7 December 2026, this 2-core host). 4 took 10 min 50 s but then a
# group set up at an interval boundary met a head-end race (fixed: docs/HEADEND.md): 3 keeps a
# margin. TEST_JOBS=0: one process.
TEST_JOBS ?= 3
test: setup lint test-deps
	$(BIN)/pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder --durations=40 tests_host tests_device

test-host: setup
	$(BIN)/pytest -q tests_host

test-device: setup
	$(BIN)/pytest -q tests_device $(if $(PORT),--port $(PORT))

bench-sim: setup
	$(BIN)/python -m host_tools.sim.bench --meters $(or $(BENCH_METERS),50)

# `meterctl bench` (issue 7): C1-C14 and S1-S4 on virtual meters beside the Elster AS300,
# quick form (setups 1x3,1x25, 3 runs); figures, tables and chart in build/bench/, and the
# results block of docs/BENCH.md rewritten.
.PHONY: bench
bench: setup
	$(BIN)/meterctl bench --sim --quick --json build/bench/bench.json \
		--md build/bench/bench.md --png build/bench/bench.png --update-doc docs/BENCH.md

# mip packages (issue 20): package.json (firmware/) and board/<name>/package.json from the tree,
# and a compiled mip index in build/mip (one package per board: hasm-meter-<board>).
.PHONY: mip
mip: setup
	$(BIN)/python -m host_tools.flash.mip

# Fuzzing on the MicroPython VM (issue 10): FUZZ_N inputs per target (WAN parser, CS
# verification, LoPA chunk handler, RECOVER handler); the default suite runs 5000 in all
# (tests_host/test_fuzz.py). FUZZ_SEED picks another input stream.
FUZZ_N ?= 100000
FUZZ_SEED ?= 1
.PHONY: fuzz
fuzz: setup
	$(BIN)/python -m host_tools.fuzz --inputs $(FUZZ_N) --seed $(FUZZ_SEED)

# Mutation testing (issue 18, host_tools/mutate.py): each security check of
# tests_host/mutations.toml broken in turn in a scratch copy of the tree, and the tests that
# must catch it run there, 2 at a time; fails if one survives or the list is stale (~1 min).
# The default suite runs it (tests_host/test_mutate.py). MUTATE_ONLY=ID[,ID...] runs some.
.PHONY: mutate
mutate: setup
	$(BIN)/python -m host_tools.mutate $(if $(MUTATE_ONLY),--only $(MUTATE_ONLY))

# Power-cut campaign (issue 10, host_tools/reliability/powercut.py): POWERCUT_N cuts over
# POWERCUT_METERS virtual meters, at random moments and at every persisted write point; the
# default suite runs 51 (tests_device/test_powercut.py).
POWERCUT_N ?= 1000
POWERCUT_METERS ?= 4
.PHONY: powercut
powercut: setup
	$(BIN)/python -m host_tools.reliability.powercut --cuts $(POWERCUT_N) --meters $(POWERCUT_METERS)

# Soak (issue 10, host_tools/reliability/soak.py): SOAK_METERS meters of SOAK_PROFILE on an
# accelerated clock for SOAK_INTERVALS 15-min intervals (672: a week; 2880: a month), a LoPA
# round each, with failures and power cuts, and the free-heap trend in bytes per simulated
# day; the default suite runs a short one (tests_device/test_soak.py).
SOAK_METERS ?= 50
SOAK_INTERVALS ?= 672
SOAK_PROFILE ?= rp2-pico
SOAK_GROUP ?= 10
# more options, e.g. --samples soak.json (every meter's heap samples and restarts, as JSON)
SOAK_FLAGS ?=
.PHONY: soak
soak: setup
	$(BIN)/python -m host_tools.reliability.soak --meters $(SOAK_METERS) \
		--intervals $(SOAK_INTERVALS) --profile $(SOAK_PROFILE) --group $(SOAK_GROUP) \
		$(SOAK_FLAGS)

clean:
	rm -rf build .sim .pytest_cache .ruff_cache .mypy_cache

# --- Emulated Cortex-M boards (issue 8): MicroPython's VM for ARMv6-M / ARMv7E-M under QEMU,
# counted in instructions. The toolchain (gcc-arm-none-eabi, libnewlib-arm-none-eabi,
# qemu-system-arm) is apt-get installed only when missing; MicroPython's py/ and shared/ come
# from the PyPI sdist; images are cached (~/.cache/meterctl-emu, METER_EMU_CACHE).
# `make test` runs the Cortex-M0+ smoke test and quick bench (and the M4 and M33 X25519
# tests); bench-emulated adds the M4 and M33 component benches and the RP2040 cycle model
# (rp2040js from npm), writes the component figures into docs/BENCH.md, and prints one
# X25519's count on each board (docs/BENCH.md's X25519 tables); `summary` puts the boards in
# one table beside Elster's figures and the physical limits.
.PHONY: emulated-toolchain emulated bench-emulated
emulated-toolchain: setup
	$(BIN)/python -m host_tools.emu toolchain

emulated: emulated-toolchain
	$(BIN)/python -m host_tools.emu build --board m0plus
	$(BIN)/python -m host_tools.emu build --board m4
	$(BIN)/python -m host_tools.emu build --board m33
	$(BIN)/python -m host_tools.emu build --board m3
	$(BIN)/python -m host_tools.emu build --board rp2040

bench-emulated: emulated
	mkdir -p build/emulated
	METER_EMU_FULL=1 $(BIN)/pytest -q tests_host/test_emulated.py
	$(BIN)/python -m host_tools.emu run-bench --board m0plus --update-doc docs/BENCH.md --json build/emulated/m0plus.json
	$(BIN)/python -m host_tools.emu run-bench --board m4 --update-doc docs/BENCH.md --json build/emulated/m4.json
	$(BIN)/python -m host_tools.emu run-bench --board m33 --update-doc docs/BENCH.md --json build/emulated/m33.json
	$(BIN)/python -m host_tools.emu run-bench --board rp2040 --update-doc docs/BENCH.md --json build/emulated/rp2040.json
	$(BIN)/python -m host_tools.emu summary build/emulated/m0plus.json build/emulated/rp2040.json build/emulated/m4.json build/emulated/m33.json --update-doc docs/BENCH.md
	$(BIN)/python -m host_tools.emu x25519 --board m0plus
	$(BIN)/python -m host_tools.emu c6 --board m0plus --seconds 60 --update-doc docs/BENCH.md
	$(BIN)/python -m host_tools.emu c6 --board m0plus --seconds 60 --members 0 --update-doc docs/BENCH.md
	$(BIN)/python -m host_tools.emu c6 --board m0plus --seconds 60 --offswitch core1 --update-doc docs/BENCH.md
	$(BIN)/python -m host_tools.emu x25519 --board m4
	$(BIN)/python -m host_tools.emu x25519 --board m33
	$(BIN)/python -m host_tools.emu x25519 --board rp2040 --runs 1
