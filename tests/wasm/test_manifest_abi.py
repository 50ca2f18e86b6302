"""Manifest parsing and the load-time contract checks, on real compiled modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sandbox_support import DEVICE, ROOT, build_module, compile_test_components, write_manifest

from edge.errors import ComponentLoadError
from edge.wasm.abi import check_module, fix_memory, prepare_module
from edge.wasm.manifest import load_manifest
from edge.wasm.wasmbin import SEC_MEMORY, find_section, parse_sections
from edge.wasm.worker import subject_matches


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    build_module().build()
    return compile_test_components(tmp_path_factory.mktemp("wasm"))


def test_demo_manifests_parse_and_columns_follow_the_abi(modules: dict[str, Path]) -> None:
    m = load_manifest(ROOT / "components" / "patrol" / "manifest.toml", DEVICE)
    assert m.columns == ("position.x", "position.y", "patrol.cx", "patrol.cy", "patrol.half",
                         "patrol.speed", "patrol.leg", "velocity.x", "velocity.y")
    assert m.writable == (6, 7, 8)
    assert m.components == ("position", "patrol", "velocity")
    b = load_manifest(ROOT / "components" / "battery" / "manifest.toml", DEVICE)
    assert b.publish == ("edge.dev1.evt.battery.>",)
    assert b.limits.gas == 50_000_000 and b.tick_hz == 1.0
    assert b.module == (ROOT / "components" / "build" / "battery.wasm").resolve()


_M = 'name = "x"\nversion = "1"\ncontract = 1\nmodule = "m.wasm"\n'


@pytest.mark.parametrize(("body", "key", "fragment"), [
    ('version = "1"\ncontract = 1\nmodule = "m.wasm"\n', "name", "missing required key"),
    ('name = "Bad Name"\nversion = "1"\ncontract = 1\nmodule = "m.wasm"\n', "name", "invalid"),
    ('name = "x"\nversion = 1\ncontract = 1\nmodule = "m.wasm"\n', "version", "expected a string, got 1"),
    ('name = "x"\nversion = "1"\ncontract = 7\nmodule = "m.wasm"\n', "contract", "not supported"),
    ('name = "x"\nversion = "1"\ncontract = 1\nmodule = "nope.wasm"\n', "module", "does not exist"),
    ('name = "x"\nversion = "1"\ncontract = 1\nmodule = "m.wasm"\ncolour = 1\n', "colour",
     "unknown key"),
    ('name = "x"\nversion = "1"\ncontract = 1\nmodule = "m.wasm"\n[limits]\ngas = -1\n',
     "limits.gas", "must be within 1..9007199254740992 gas, got -1"),
    ('name = "x"\nversion = "1"\ncontract = 1\nmodule = "m.wasm"\n[limits]\nmemory_pages = true\n',
     "limits.memory_pages", "expected an integer, got true"),
    ('name = "x"\nversion = "1"\ncontract = 1\nmodule = "m.wasm"\n[query]\nread = ["nodot"]\n',
     "query.read", "invalid field"),
    ('name = "x"\nversion = "1"\ncontract = 1\nmodule = "m.wasm"\n[run]\npublish = ["a..b"]\n',
     "run.publish", "invalid subject"),
    ('name = "x"\nversion = "1"\ncontract = 1\nmodule = "m.wasm"\n[run]\ntick_hz = 5\n',
     "run.tick_hz", "needs a query"),
    # every number has a range, and the error names it
    (_M + "[limits]\ngas = 1_000_000_000_000_000_000_000_000_000_000\n", "limits.gas",
     "component 'x': must be within 1..9007199254740992 gas, got 10000000000000000000000000"),
    (_M + "[limits]\ngas = 0\n", "limits.gas", "must be within 1..9007199254740992 gas, got 0"),
    (_M + "[limits]\nmemory_pages = 0\n", "limits.memory_pages",
     "must be within 1..16384 pages, got 0"),
    (_M + "[limits]\nmemory_pages = 16385\n", "limits.memory_pages",
     "must be within 1..16384 pages, got 16385"),
    (_M + "[limits]\npublish_per_call = -1\n", "limits.publish_per_call",
     "must be within 0..100000, got -1"),
    (_M + "[limits]\npublish_per_call = 100001\n", "limits.publish_per_call",
     "must be within 0..100000, got 100001"),
    (_M + "[limits]\ngas = 1.5\n", "limits.gas", "expected an integer, got 1.5"),
    (_M + "[limits]\nstack = 1\n", "limits.stack", "unknown key 'stack'"),
    (_M + "[run]\ntick_hz = 1001\n", "run.tick_hz", "must be within 0..1000 Hz, got 1001"),
    (_M + "[run]\ntick_hz = nan\n", "run.tick_hz", "must be within 0..1000 Hz, got nan"),
    (_M + "[run]\ntick_hz = -inf\n", "run.tick_hz", "must be within 0..1000 Hz, got -inf"),
    (_M + "[run]\nmodels = [\"a\", \"a\"]\n", "run.models", "duplicate model name"),
    (_M + "[run]\nsubscribe = [1]\n", "run.subscribe", "expected a list of strings"),
    (_M + "query = 3\n", "query", "expected a table, got 3"),
    (_M + "description = 3\n", "description", "expected a string, got 3"),
    ('name = "x"\nversion = "1"\ncontract = 100000000000000000000\nmodule = "m.wasm"\n',
     "contract", "not supported"),
    ('name = "x"\nversion = "1"\ncontract = 1\nmodule = ""\n', "module", "non-empty path"),
    ('name = "x"\nversion = "1"\ncontract = 1\nmodule = "."\n', "module",
     "is not a regular file"),
])
def test_manifest_errors_name_key_and_file(tmp_path: Path, body: str, key: str,
                                           fragment: str) -> None:
    (tmp_path / "m.wasm").write_bytes(b"\0asm\1\0\0\0")
    path = tmp_path / "manifest.toml"
    path.write_text(body)
    with pytest.raises(ComponentLoadError) as exc:
        load_manifest(path, DEVICE)
    assert f"key '{key}'" in str(exc.value)
    assert str(path) in str(exc.value)
    assert fragment in str(exc.value)
    assert exc.value.path == str(path)
    if key != "name":  # once the name is read, the error names the component too
        assert exc.value.component == "x"
        assert str(exc.value).startswith("component 'x': ")


def test_manifest_not_toml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text("name = \n")
    with pytest.raises(ComponentLoadError, match="not valid TOML") as exc:
        load_manifest(path, DEVICE)
    assert str(path) in str(exc.value)


def test_device_is_substituted_in_subjects(tmp_path: Path, modules: dict[str, Path]) -> None:
    path = write_manifest(tmp_path, "x", modules["trap"], subscribe=("edge.{device}.cmd.>",),
                          publish=("edge.{device}.evt.*",))
    m = load_manifest(path, "drone-7")
    assert m.subscribe == ("edge.drone-7.cmd.>",)
    assert m.publish == ("edge.drone-7.evt.*",)


def test_import_outside_the_contract_is_refused_by_name(tmp_path: Path,
                                                        modules: dict[str, Path]) -> None:
    m = load_manifest(write_manifest(tmp_path, "sock", modules["badimport"], tick_hz=1,
                                     read=("a.b",)), DEVICE)
    with pytest.raises(ComponentLoadError) as exc:
        check_module(modules["badimport"].read_bytes(), m)
    assert str(exc.value) == ("component 'sock' imports edge.open_socket, which contract 1 "
                              "does not provide")
    assert exc.value.component == "sock"


def test_wrong_import_signature_is_refused(tmp_path: Path, modules: dict[str, Path]) -> None:
    m = load_manifest(write_manifest(tmp_path, "sig", modules["badsig"]), DEVICE)
    with pytest.raises(ComponentLoadError, match=r"imports edge.log with signature i\(i\); "
                                                 r"contract 1 defines it as v\(iii\)"):
        check_module(modules["badsig"].read_bytes(), m)


def test_metering_import_is_refused(tmp_path: Path, modules: dict[str, Path]) -> None:
    from edge.wasm.instrument import instrument

    m = load_manifest(write_manifest(tmp_path, "meter", modules["loop"]), DEVICE)
    metered = instrument(modules["loop"].read_bytes())
    with pytest.raises(ComponentLoadError, match="imports metering.usegas, which contract 1 "
                                                 "does not provide"):
        check_module(metered, m)


def test_subscribe_needs_on_message(tmp_path: Path, modules: dict[str, Path]) -> None:
    m = load_manifest(write_manifest(tmp_path, "nosub", modules["loop"],
                                     subscribe=("a.b",)), DEVICE)
    with pytest.raises(ComponentLoadError, match="does not export edge_on_message"):
        check_module(modules["loop"].read_bytes(), m)


def test_memory_is_pinned_to_the_manifest_limit(tmp_path: Path,
                                                modules: dict[str, Path]) -> None:
    m = load_manifest(write_manifest(tmp_path, "grow", modules["grow"], memory_pages=5), DEVICE)
    fixed = fix_memory(modules["grow"].read_bytes(), m)
    mem = find_section(parse_sections(fixed), SEC_MEMORY)
    assert mem is not None and mem.payload == b"\x01\x01\x05\x05"
    wasm, info = prepare_module(modules["grow"].read_bytes(), m)
    assert info.ticks and not info.handles_messages
    assert b"metering" in wasm


def test_module_needing_more_memory_than_granted_is_refused(tmp_path: Path,
                                                            modules: dict[str, Path]) -> None:
    # clang gives the module 2 initial pages (stack + data).
    m = load_manifest(write_manifest(tmp_path, "tiny", modules["grow"], memory_pages=1), DEVICE)
    with pytest.raises(ComponentLoadError, match="more than limits.memory_pages = 1"):
        check_module(modules["grow"].read_bytes(), m)


def test_garbage_is_refused_with_a_sentence(tmp_path: Path, modules: dict[str, Path]) -> None:
    m = load_manifest(write_manifest(tmp_path, "junk", modules["loop"]), DEVICE)
    with pytest.raises(ComponentLoadError, match="component 'junk' is not a valid module"):
        check_module(b"hello world", m)


@pytest.mark.parametrize(("pattern", "subject", "ok"), [
    ("edge.d.evt.>", "edge.d.evt.a", True),
    ("edge.d.evt.>", "edge.d.evt.a.b", True),
    ("edge.d.evt.>", "edge.d.evt", False),
    ("edge.*.evt", "edge.d.evt", True),
    ("edge.*.evt", "edge.d.e.evt", False),
    ("edge.d.evt", "edge.d.evt", True),
    ("edge.d.evt", "edge.d.evt.x", False),
    ("edge.d", "edge.d.evt", False),
])
def test_subject_matching(pattern: str, subject: str, ok: bool) -> None:
    assert subject_matches(pattern, subject) is ok


def test_oversized_module_is_refused_before_reading(tmp_path: Path) -> None:
    from edge.wasm.manifest import MAX_MODULE_BYTES

    module = tmp_path / "m.wasm"
    module.write_bytes(b"\0asm\1\0\0\0")
    os.truncate(module, 64 * 2**30)  # sparse: reading it would take 64 GiB
    path = tmp_path / "manifest.toml"
    path.write_text(_M)
    with pytest.raises(ComponentLoadError) as exc:
        load_manifest(path, DEVICE)
    assert str(exc.value) == (
        f"component 'x': module file {module} is {64 * 2**30} bytes, larger than the 16 MiB "
        f"limit (key 'module' in {path})")
    assert MAX_MODULE_BYTES == 16 * 2**20
    os.truncate(module, MAX_MODULE_BYTES)  # exactly the cap is fine
    assert load_manifest(path, DEVICE).module == module


def test_manifest_file_is_bounded_and_must_be_regular(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text(_M)
    os.truncate(big, 2**30)
    with pytest.raises(ComponentLoadError, match=r"manifest .*big.toml is \d+ bytes, larger "
                                                 r"than the 64 KiB limit"):
        load_manifest(big, DEVICE)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # opening it must not wait for a writer
    with pytest.raises(ComponentLoadError, match="is not a regular file"):
        load_manifest(fifo, DEVICE)
    with pytest.raises(ComponentLoadError, match="cannot read manifest .*No such file"):
        load_manifest(tmp_path / "nope.toml", DEVICE)
