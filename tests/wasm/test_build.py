"""components/build.py: one language per component, clear errors, incremental builds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sandbox_support import ROOT, build_module

BUILD = build_module()


def component(tmp_path: Path, name: str, *files: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "manifest.toml").write_text(f'name = "{name}"\n')
    for f in files:
        (d / f).write_text("")
    return d


@pytest.mark.parametrize(("files", "language", "root"), [
    (("a.c", "b.c"), "c", "a.c"),
    (("x.rs", "util.rs"), "rust", "x.rs"),
    (("x.zig", "helpers.zig", "notes.txt"), "zig", "x.zig"),
])
def test_the_language_and_root_come_from_the_sources(tmp_path: Path, files: tuple[str, ...],
                                                     language: str, root: str) -> None:
    d = component(tmp_path, "x", *files)
    src = BUILD.sources_of(d)
    assert src.language == language and src.root == d / root
    assert sorted(p.name for p in src.files) == sorted(f for f in files if not f.endswith(".txt"))


def test_bad_source_sets_are_refused_with_a_sentence(tmp_path: Path) -> None:
    with pytest.raises(BUILD.BuildError, match=r"component none: no \.c, \.rs or \.zig source"):
        BUILD.sources_of(component(tmp_path, "none", "README.md"))
    with pytest.raises(BUILD.BuildError, match=r"component mixed: sources in more than one "
                                               r"language \(c, rust\)"):
        BUILD.sources_of(component(tmp_path, "mixed", "mixed.c", "mixed.rs"))
    with pytest.raises(BUILD.BuildError, match=r"component odd: a zig component's root file "
                                               r"must be odd\.zig \(found main\.zig\)"):
        BUILD.sources_of(component(tmp_path, "odd", "main.zig"))


def test_every_component_builds_and_a_second_build_is_a_no_op() -> None:
    BUILD.build()
    assert BUILD.build() == []
    names = {d.name for d in BUILD.component_dirs()}
    assert {"rust_geofence", "zig_odometer", "physics"} <= names
    for name in names:
        assert (ROOT / "components" / "build" / f"{name}.wasm").is_file()


def test_a_changed_sdk_rebuilds_only_its_language() -> None:
    BUILD.build()
    sdk = BUILD.ZIG_SDK
    before = sdk.stat().st_mtime
    try:
        later = time.time() + 10
        os.utime(sdk, (later, later))
        built = BUILD.build()
        assert [p.name for p in built] == ["zig_odometer.wasm"]
    finally:
        os.utime(sdk, (before, before))


def test_the_command_line_prints_the_error_and_exits_1(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGE_RUSTC", str(tmp_path / "missing"))
    lib = BUILD.OUT / "rust" / "libedge.rlib"
    saved = lib.read_bytes() if lib.exists() else None
    geofence = BUILD.OUT / "rust_geofence.wasm"
    kept = geofence.read_bytes()
    try:
        assert BUILD.main(["--force", "rust_geofence"]) == 1
    finally:
        geofence.write_bytes(kept)
        if saved is not None:
            lib.write_bytes(saved)
    assert "error: no rustc for wasm32-unknown-unknown" in capsys.readouterr().err
