"""Component artifacts: a manifest and its module in one uncompressed tar.

``pack`` turns a component's ``manifest.toml`` (whose ``module`` may point anywhere) into an
artifact holding exactly two regular files, ``manifest.toml`` (its ``module`` key rewritten to
``module.wasm``) and ``module.wasm``. ``unpack`` reads one back member by member, refusing
anything else (links, other names, sizes over the manifest and module caps) before it writes.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from edge.ota import tarball
from edge.ota.errors import OtaError
from edge.wasm.manifest import MAX_MANIFEST_BYTES, MAX_MODULE_BYTES

MANIFEST = "manifest.toml"
MODULE = "module.wasm"
_MODULE_LINE = re.compile(r'^module\s*=\s*"[^"]*"\s*$', re.MULTILINE)
_VERSION_LINE = re.compile(r'^version\s*=\s*"[^"]*"\s*$', re.MULTILINE)
_CAPS = {MANIFEST: MAX_MANIFEST_BYTES, MODULE: MAX_MODULE_BYTES}


def pack(manifest_path: Path, *, version: str | None = None) -> tuple[bytes, dict[str, object]]:
    """The artifact of the component at ``manifest_path`` and what its manifest says
    (name, version, contract); ``version`` replaces the manifest's ``version`` in the bundle."""
    text = manifest_path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise OtaError(f"{manifest_path}: not valid TOML: {err}", reason="invalid") from err
    for key in ("name", "version", "contract", "module"):
        if key not in raw:
            raise OtaError(f"{manifest_path}: missing key '{key}'", reason="invalid")
    module = (manifest_path.parent / str(raw["module"])).resolve()
    new_text, count = _MODULE_LINE.subn(f'module = "{MODULE}"', text)
    if count != 1:
        raise OtaError(f"{manifest_path}: write 'module = \"...\"' on one line of its own to publish it",
                       reason="invalid")
    if version is not None:
        new_text, count = _VERSION_LINE.subn(f'version = "{version}"', new_text)
        if count != 1:
            raise OtaError(f"{manifest_path}: write 'version = \"...\"' on one line of its own to publish "
                           "it with --version", reason="invalid")
        raw["version"] = version
    data = tarball.pack(((MANIFEST, new_text.encode()), (MODULE, module.read_bytes())))
    meta = {"name": str(raw["name"]), "version": str(raw["version"]), "contract": int(raw["contract"])}
    return data, meta


def unpack(data: bytes, dest: Path, *, artifact: str) -> None:
    """Write the two members of ``data`` into the (new, empty) directory ``dest``."""
    seen = tarball.read_members(data, _CAPS, artifact=artifact, what="a component bundle",
                                holds=f"exactly {MANIFEST} and {MODULE}")
    tarball.require(seen, (MANIFEST, MODULE), artifact=artifact)
    tarball.write_members(seen, dest)
