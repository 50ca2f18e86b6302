"""The Nix delivery (flake.nix, nix/), checked with Nix alone: this machine and CI have Debian's
Nix but no nixpkgs, so nothing is built here (docs/install.md says what was built where). Every
.nix file parses; the flake's outputs are the ones docs/install.md names; the NixOS module's unit
settings equal the Debian image's edge.service (both come from edge/service/service.toml)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.service import unit

ROOT = Path(__file__).resolve().parents[2]
STUB = Path(__file__).with_name("nixstub.nix")
IMAGE_UNIT = ROOT / "image" / "rootfs" / "usr" / "lib" / "systemd" / "system" / "edge.service"


def nix_instantiate() -> str:
    found = shutil.which("nix-instantiate")
    assert found, "nix-instantiate is missing: `make test` installs Debian's nix-bin"
    return found


def nix_files() -> list[Path]:
    return [ROOT / "flake.nix", *sorted((ROOT / "nix").glob("*.nix")), STUB]


@pytest.mark.parametrize("path", nix_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_nix_file_parses(path: Path) -> None:
    res = subprocess.run([nix_instantiate(), "--parse", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_a_broken_nix_file_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nix"
    bad.write_text("{ a = 1; b = ; }")
    res = subprocess.run([nix_instantiate(), "--parse", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "syntax error" in res.stderr


@pytest.fixture(scope="module")
def evaluated() -> dict[str, Any]:
    res = subprocess.run([nix_instantiate(), "--eval", "--strict", "--json", str(STUB)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def documented_outputs() -> set[str]:
    """The flake outputs docs/install.md names (`flake outputs: ...` line)."""
    text = (ROOT / "docs" / "install.md").read_text()
    m = re.search(r"Flake outputs: (.+)", text)
    assert m, "docs/install.md lists the flake outputs on a 'Flake outputs:' line"
    return set(re.findall(r"`([A-Za-z.\-0-9]+)`", m.group(1)))


def test_flake_outputs_are_the_documented_ones(evaluated: dict[str, Any]) -> None:
    names = {"packages.default", "apps.default", "devShells.default",
             *(f"nixosModules.{n}" for n in evaluated["nixosModules"]),
             *(f"nixosConfigurations.{n}" for n in evaluated["nixosConfigurations"])}
    for system in ("x86_64-linux", "aarch64-linux"):
        assert "default" in evaluated["packages"][system]
        assert evaluated["apps"][system] == {"default": "app"}
        assert evaluated["devShells"][system] == ["default"]
    assert set(evaluated["outputs"]) == {"packages", "apps", "nixosModules", "nixosConfigurations", "devShells"}
    assert evaluated["inputs"] == ["nixos-hardware", "nixpkgs"]
    assert documented_outputs() == names


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def as_lines(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [("yes" if v else "no") if isinstance(v, bool) else str(v) for v in items]


def test_module_unit_settings_equal_the_debian_unit(evaluated: dict[str, Any]) -> None:
    """What the NixOS module gives systemd is, directive by directive, the image's unit (its
    program path aside)."""
    service = evaluated["service"]
    nixos: dict[str, dict[str, list[str]]] = {
        "Unit": {"Description": [service["description"]], "After": service["after"],
                 **{k: as_lines(v) for k, v in service["unitConfig"].items()}},
        "Service": {k: as_lines(v) for k, v in service["serviceConfig"].items()},
        "Install": {"WantedBy": service["wantedBy"]},
    }
    debian = parse_unit(unit.render(evaluated["exec"]))
    assert nixos == debian
    # and the committed image unit is that same rendering for the image's program path
    assert parse_unit(IMAGE_UNIT.read_text()) == parse_unit(unit.render(unit.IMAGE_EXEC))
    assert debian["Service"]["ExecStart"][0].startswith(evaluated["exec"] + " run ")


def test_module_creates_the_account_and_renders_the_config(evaluated: dict[str, Any]) -> None:
    desc = unit.description()
    user = desc["account"]["user"]
    users = evaluated["users"]
    assert users["users"][user]["extraGroups"] == desc["account"]["groups"]
    assert users["users"][user]["isSystemUser"] is True
    assert set(users["groups"]) == {user, *desc["account"]["groups"]}
    assert evaluated["etc"] == [desc["paths"]["config"].removeprefix("/etc/")]
    assert evaluated["options"] == ["enable", "package", "settings"]
    assert evaluated["moduleEnabledBy"] is True


SRI_SHA256 = re.compile(r"sha256-[A-Za-z0-9+/]{43}=")

# Each local derivation's fetch, evaluated with stand-ins that return their arguments: the URL or
# PyPI name it fetches and the hash it pins.
FETCHES = """
let
  root = %(root)s;
  lib = { licenses = { mit = "mit"; bsd2 = "bsd2"; }; platforms.linux = [ ]; };
  id = a: a;
  # as callPackage does: each file gets the arguments it asks for
  py = f: let fn = import f; in fn (builtins.intersectAttrs (builtins.functionArgs fn) {
    inherit lib; buildPythonPackage = id; fetchPypi = id; setuptools = null; numpy = null;
    pillow = null; libcamera = null; });
  zig = system: (import (root + "/nix/zig.nix") {
    inherit lib; fetchurl = id; unzip = null;
    stdenvNoCC = { hostPlatform.system = system; mkDerivation = id; };
  }).src;
in {
  pywasm3 = (py (root + "/nix/pywasm3.nix")).src;
  picamera2 = (py (root + "/nix/picamera2.nix")).src;
  zig-x86_64 = zig "x86_64-linux";
  zig-aarch64 = zig "aarch64-linux";
}
"""


@pytest.fixture(scope="module")
def fetches() -> dict[str, dict[str, str]]:
    res = subprocess.run([nix_instantiate(), "--eval", "--strict", "--json", "--expr", FETCHES % {"root": ROOT}],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out: dict[str, dict[str, str]] = json.loads(res.stdout)
    return out


def test_every_fetched_source_is_pinned_by_a_real_hash(fetches: dict[str, dict[str, str]]) -> None:
    """No placeholder hash is left (lib.fakeHash is all zeros); each is an SRI SHA-256."""
    for name, src in fetches.items():
        assert SRI_SHA256.fullmatch(src["hash"]), (name, src)
        assert src["hash"] != "sha256-" + "A" * 43 + "=", name  # lib.fakeHash
    assert len({src["hash"] for src in fetches.values()}) == len(fetches)
    for path in [ROOT / "flake.nix", *(ROOT / "nix").glob("*.nix")]:
        assert "fakeHash" not in path.read_text() and "fakeSha256" not in path.read_text(), path


def test_the_pinned_sources_are_the_versions_the_project_uses(fetches: dict[str, dict[str, str]]) -> None:
    assert fetches["pywasm3"]["pname"] == "pywasm3" and fetches["pywasm3"]["version"] == "0.5.0"
    assert fetches["picamera2"]["pname"] == "picamera2"
    zig_version = re.search(r'^ZIG_VERSION = "([^"]+)"', (ROOT / "components" / "build.py").read_text(), re.M)
    assert zig_version
    for system, arch in (("zig-x86_64", "x86_64"), ("zig-aarch64", "aarch64")):
        wheel = fetches[system]["url"].rsplit("/", 1)[1]
        assert wheel.startswith(f"ziglang-{zig_version.group(1)}.") and wheel.endswith(".whl"), wheel
        assert f"_{arch}." in wheel, wheel


def test_zig_for_an_unknown_system_is_a_clear_error() -> None:
    expr = (FETCHES % {"root": ROOT}).replace('zig-aarch64 = zig "aarch64-linux";', 'zig-riscv = zig "riscv64-linux";')
    res = subprocess.run([nix_instantiate(), "--eval", "--strict", "--json", "--expr", expr],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "no ziglang 0.17.0 wheel for riscv64-linux" in res.stderr, res.stderr
