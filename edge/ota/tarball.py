"""The one archive format of every OTA artifact: an uncompressed tar of a few regular files.

:func:`pack` writes the files in order; :func:`read_members` reads an artifact back member by
member and refuses, before anything is written, a member that is not a regular file, a name that
is not allowed or comes twice, and a size over its cap (the cap is checked on the header, before
the member's bytes are read). What a kind of artifact must hold is its own module's business.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge.ota.errors import OtaError


def pack(files: Sequence[tuple[str, bytes]], *, trim: bool = False) -> bytes:
    """An uncompressed tar of ``files`` (name, bytes), each a regular file of mode 0644.

    ``trim``: without the padding to a whole 10 KiB record (a one-file fragment stays 2 KiB)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        end = tar.offset + 2 * tarfile.BLOCKSIZE  # the members and the end-of-archive blocks
    return buf.getvalue()[:end] if trim else buf.getvalue()


def read_members(data: bytes, caps: Mapping[str, int], *, artifact: str, what: str,
                 holds: str) -> dict[str, bytes]:
    """The members of the artifact ``data`` by name; each must be a name of ``caps`` at most once,
    a regular file of at most its cap. ``what`` (e.g. ``a model bundle``) and ``holds`` (what it
    may hold) word the error."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except tarfile.TarError as err:
        raise OtaError(f"artifact {artifact} is not {what}: {err}", artifact=artifact, reason="invalid") from err
    seen: dict[str, bytes] = {}
    with tar:
        for member in tar:
            if member.name not in caps or not member.isreg() or member.name in seen:
                raise OtaError(f"artifact {artifact} holds {member.name!r}; {what} holds {holds}",
                               artifact=artifact, reason="invalid")
            if member.size > caps[member.name]:
                raise OtaError(f"artifact {artifact}: {member.name} is {member.size} bytes, over "
                               f"{caps[member.name]}", artifact=artifact, reason="too_large")
            f = tar.extractfile(member)
            seen[member.name] = f.read() if f is not None else b""
    return seen


def require(seen: Mapping[str, bytes], names: Sequence[str], *, artifact: str) -> None:
    """Refuse an artifact that lacks one of ``names``."""
    missing = [n for n in names if n not in seen]
    if missing:
        raise OtaError(f"artifact {artifact} lacks {', '.join(missing)}", artifact=artifact, reason="invalid")


def write_members(seen: Mapping[str, bytes], dest: Path) -> None:
    """Write the members into the new directory ``dest``."""
    dest.mkdir(parents=True)
    for name, body in seen.items():
        (dest / name).write_bytes(body)
