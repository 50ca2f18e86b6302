"""The embedding model as an over-the-air artifact: an object in a JetStream object store.

The digest rule is the inference registry's (docs/inference.md): the expected SHA-256 is the
object's ``Edge-Sha256`` header, else its ``sha256`` metadata entry, else the store's own digest.
A model that does not match is refused and the serving one is kept.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

from nats.js.client import JetStreamContext

from edge.language.errors import EmbedderError

DIGEST_HEADER = "Edge-Sha256"
STORE_DIGEST_PREFIX = "SHA-256="
FETCH_TIMEOUT_S = 60.0


def expected_digest(info: Any) -> str | None:
    headers = getattr(info, "headers", None) or {}
    for k, v in headers.items():
        if str(k).lower() == DIGEST_HEADER.lower():
            return str(v[0] if isinstance(v, list) and v else v).strip().lower()
    metadata = getattr(info, "metadata", None) or {}
    if "sha256" in metadata:
        return str(metadata["sha256"]).strip().lower()
    digest = getattr(info, "digest", None)
    if digest and str(digest).upper().startswith(STORE_DIGEST_PREFIX):
        raw = str(digest)[len(STORE_DIGEST_PREFIX):]
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
    return None


async def fetch_model(js: JetStreamContext, bucket: str, name: str, into: Path) -> tuple[Path, str]:
    """Object ``name`` of ``bucket``, verified, written to ``into/<sha256>.onnx``: (path, sha256).
    EmbedderError when it cannot be fetched or does not match its digest."""
    try:
        store = await js.object_store(bucket)
        result = await asyncio.wait_for(store.get(name), FETCH_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001  nats-py raises its own not-found / timeout classes
        raise EmbedderError(f"cannot fetch the embedding model '{name}' from bucket '{bucket}': "
                            f"{type(err).__name__} {err}".rstrip(), reason="fetch", bucket=bucket,
                            object=name) from err
    content = bytes(result.data or b"")
    want = expected_digest(result.info)
    got = hashlib.sha256(content).hexdigest()
    if want is None or got != want:
        raise EmbedderError(f"embedding model '{name}' from bucket '{bucket}': SHA-256 {got} does not match "
                            f"{want}; keeping the serving model", reason="digest", expected=want, got=got)
    into.mkdir(parents=True, exist_ok=True)
    path = into / f"{got}.onnx"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        await asyncio.to_thread(tmp.write_bytes, content)
        tmp.replace(path)
    for old in into.glob("*.onnx"):  # keep the newest two: the serving model and this one
        if old != path and len(list(into.glob("*.onnx"))) > 2:
            old.unlink(missing_ok=True)
    return path, got
