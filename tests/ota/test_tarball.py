"""The artifact archive: every member refused before anything is written."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from edge.ota import bundle, tarball
from edge.ota.errors import OtaError
from edge.ota.fragments import FRAGMENT, pack_file, unpack_fragment

CAPS = {"a": 10, "b": 100}


def raw_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_pack_and_read_back() -> None:
    data = tarball.pack((("a", b"1234"), ("b", b"x" * 100)))
    assert len(data) % tarfile.RECORDSIZE == 0
    assert tarball.read_members(data, CAPS, artifact="t", what="a test", holds="a and b") == {
        "a": b"1234", "b": b"x" * 100}
    trimmed = tarball.pack((("a", b"1234"),), trim=True)
    assert len(trimmed) == 4 * tarfile.BLOCKSIZE  # header, data, two end-of-archive blocks
    assert tarball.read_members(trimmed, CAPS, artifact="t", what="a test", holds="a") == {"a": b"1234"}


def link(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return info, b""


@pytest.mark.parametrize("members, reason, words", [
    ((link("a"),), "invalid", "holds 'a'"),
    ((reg("../a", b"1"),), "invalid", "holds '../a'"),
    ((reg("c", b"1"),), "invalid", "holds 'c'; a test holds a and b"),
    ((reg("a", b"1"), reg("a", b"2")), "invalid", "holds 'a'"),
    ((reg("a", b"x" * 11),), "too_large", "a is 11 bytes, over 10"),
])
def test_refused_members(members: tuple[tuple[tarfile.TarInfo, bytes], ...], reason: str, words: str) -> None:
    with pytest.raises(OtaError) as info:
        tarball.read_members(raw_tar(*members), CAPS, artifact="t@1", what="a test", holds="a and b")
    assert info.value.fields["reason"] == reason and words in info.value.message
    assert info.value.fields["artifact"] == "t@1"


def test_not_a_tar_and_a_missing_member(tmp_path: Path) -> None:
    with pytest.raises(OtaError, match="is not a component bundle") as info:
        bundle.unpack(b"\x00garbage" * 100, tmp_path / "x", artifact="c@1")
    assert info.value.fields["reason"] == "invalid"
    with pytest.raises(OtaError, match="lacks module.wasm"):
        bundle.unpack(tarball.pack(((bundle.MANIFEST, b"name = 'x'"),)), tmp_path / "y", artifact="c@1")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # nothing written


def test_a_fragment_artifact_holds_one_file(tmp_path: Path) -> None:
    unpack_fragment(pack_file(FRAGMENT, b"[safety]\n"), tmp_path / "ok", artifact="f@1")
    assert (tmp_path / "ok" / FRAGMENT).read_bytes() == b"[safety]\n"
    with pytest.raises(OtaError, match="holds 'other.toml'; a bundle holds exactly fragment.toml"):
        unpack_fragment(pack_file("other.toml", b""), tmp_path / "bad", artifact="f@2")
    assert not (tmp_path / "bad").exists()
