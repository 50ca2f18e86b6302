"""The device's TUF client: verified metadata and artifacts, nothing hand-verified.

:class:`TrustClient` runs python-tuf's reference client (``tuf.ngclient.Updater``) in a worker
thread over :class:`~edge.ota.fetcher.JetStreamFetcher`. Its trusted metadata lives in
``<data_dir>/ota/tuf`` (so versions only go up across restarts); the first start bootstraps from
the root the device's config names. Every refusal of the client becomes an
:class:`~edge.ota.errors.OtaError` with a reason (:func:`classify`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.ota.errors import OtaError
from edge.ota.fetcher import SCHEME, JetStreamFetcher

log = logging.getLogger("edge.ota.trust")


@dataclass(frozen=True)
class Verified:
    """An artifact whose length, hash and signatures the client verified."""

    path: str
    sha256: str
    data: bytes
    custom: dict[str, Any]


def describe(err: BaseException) -> str:
    """One line: the exception and what caused it (python-tuf wraps fetch errors)."""
    text = f"{type(err).__name__}: {err}"
    cause = err.__cause__
    if cause is not None:
        text += f" ({type(cause).__name__}: {cause})"
    return text


def classify(err: BaseException) -> str:
    """The OtaError reason of one of python-tuf's exceptions."""
    from tuf.api import exceptions as e

    if isinstance(err, e.UnsignedMetadataError):
        return "signature"
    if isinstance(err, e.ExpiredMetadataError):
        return "expired"
    if isinstance(err, e.BadVersionNumberError):
        return "rollback"
    if isinstance(err, e.LengthOrHashMismatchError):
        return "tampered"
    if isinstance(err, e.DownloadLengthMismatchError):
        return "too_large"
    if isinstance(err, e.DownloadError):
        return "download"
    return "invalid"


class TrustClient:
    """Refreshes the fleet's metadata and fetches verified artifacts over ``obs``."""

    def __init__(self, obs: Any, metadata_dir: Path, bootstrap_root: bytes | None) -> None:
        self.obs = obs
        self.metadata_dir = metadata_dir
        self.bootstrap_root = bootstrap_root
        self.fetcher: JetStreamFetcher | None = None
        self._updater: Any = None

    @property
    def bytes_in(self) -> int:
        return self.fetcher.bytes_in if self.fetcher is not None else 0

    def _new_updater(self) -> Any:
        from tuf.ngclient import Updater

        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        trusted = (self.metadata_dir / "root.json").exists()
        if not trusted and self.bootstrap_root is None:
            raise OtaError("the device has no trusted root metadata; set ota.root in its config",
                           reason="signature")
        return Updater(str(self.metadata_dir), f"{SCHEME}metadata/", None, f"{SCHEME}targets/",
                       fetcher=self.fetcher, bootstrap=None if trusted else self.bootstrap_root)

    async def refresh(self) -> None:
        """Fetch and verify root (the chain), timestamp, snapshot and targets."""
        if self.fetcher is None:
            self.fetcher = JetStreamFetcher(self.obs, asyncio.get_running_loop())

        def work() -> Any:
            updater = self._new_updater()
            updater.refresh()
            return updater

        try:
            self._updater = await asyncio.to_thread(work)
        except OtaError:
            raise
        except Exception as err:  # noqa: BLE001  python-tuf's refusals, classified
            self._updater = None
            raise OtaError(f"update metadata refused: {describe(err)}",
                           artifact="metadata", reason=classify(err)) from err

    async def fetch(self, target: str, dest: Path) -> Verified:
        """Download ``target`` to ``dest`` (verified: length, sha256, signed by targets)."""
        if self._updater is None:
            await self.refresh()
        updater = self._updater

        def work() -> Verified:
            info = updater.get_targetinfo(target)
            if info is None:
                raise OtaError(f"artifact {target} is not in the fleet's signed targets",
                               artifact=target, reason="missing")
            dest.parent.mkdir(parents=True, exist_ok=True)
            updater.download_target(info, str(dest))
            return Verified(target, info.hashes["sha256"], dest.read_bytes(), dict(info.custom))

        try:
            return await asyncio.to_thread(work)
        except OtaError:
            raise
        except Exception as err:  # noqa: BLE001  python-tuf's refusals, classified
            dest.unlink(missing_ok=True)
            raise OtaError(f"artifact {target} refused: {describe(err)}",
                           artifact=target, reason=classify(err)) from err
