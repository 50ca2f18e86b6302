"""JetStream storage limits of the embedded nats-server, and the reservations they must hold.

JetStream reserves every stream's ``max_bytes`` against its server's store limit
(``max_file_store`` for file streams, ``max_memory_store`` for memory streams) when the stream is
made or changed. nats-server's own default for the file store is 75 % of the disk that is free
when it starts: the store's own data makes that smaller at each restart, until the streams it
recovers no longer fit and every stream or bucket the runtime then makes or updates is refused
("insufficient storage resources available"). The runtime therefore always gives the server both
limits explicitly (:func:`store_limits`): ``[nats] max_store_bytes`` and ``max_mem_bytes``, by
default half the size of the filesystem that holds the data dir (its size, not its free space,
so the limit stays where it was across restarts) and :data:`DEFAULT_MEM_BYTES`.

:func:`check_reservations` compares what the recovered streams reserve with the limits before
any layer starts, and :func:`reservation_error` turns the server's refusal of one stream into a
sentence that names the stream, the sizes and the key to change.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import StorageType

from edge.errors import NatsError

log = logging.getLogger("edge.nats.storage")

MIB = 1024 * 1024
#: share of the data dir's filesystem (its size) the file store may reserve by default
DEFAULT_STORE_SHARE = 0.5
#: bytes the memory store may reserve by default (the runtime's own streams are all on file)
DEFAULT_MEM_BYTES = 64 * MIB
#: the smallest default file store, for tiny filesystems (bytes)
MIN_DEFAULT_STORE_BYTES = 64 * MIB
#: nats-server's error codes for a reservation that does not fit its limits: "insufficient
#: storage resources available" (file store), "insufficient memory resources available"
ERR_INSUFFICIENT_RESOURCES = frozenset({10047, 10028})

FILE_KEY = "nats.max_store_bytes"
MEM_KEY = "nats.max_mem_bytes"


class StoreLimitError(NatsError):
    """A stream's reservation does not fit the JetStream store's limit; names the stream(s), the
    sizes and the config key that sets the limit."""


@dataclass(frozen=True)
class StoreLimits:
    """The limits given to the embedded server, in bytes, and where each came from."""

    file_bytes: int
    mem_bytes: int
    file_source: str  # "[nats] max_store_bytes" or "half of the data partition (N bytes)"
    mem_source: str


@dataclass(frozen=True)
class Reservation:
    stream: str
    storage: StorageType
    bytes: int


def filesystem_bytes(path: Path) -> int:
    """The size of the filesystem holding ``path`` (its nearest existing ancestor), in bytes."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_blocks * st.f_frsize


def store_limits(data_dir: Path, max_store_bytes: int | None = None,
                 max_mem_bytes: int | None = None) -> StoreLimits:
    """The explicit limits for the embedded server of a device whose data dir is ``data_dir``.

    ``None`` (the config's 0) takes the default: half the size of the data dir's filesystem
    (at least :data:`MIN_DEFAULT_STORE_BYTES`) for the file store, :data:`DEFAULT_MEM_BYTES` for
    the memory store. A configured file limit larger than the filesystem is logged: the disk
    would fill before JetStream's limits are reached."""
    size = filesystem_bytes(data_dir)
    if max_store_bytes:
        file_bytes, file_source = max_store_bytes, f"[nats] max_store_bytes = {max_store_bytes}"
        if max_store_bytes > size:
            log.warning("[nats] max_store_bytes = %d is larger than the filesystem of %s (%d bytes): "
                        "the disk fills before JetStream's limits are reached", max_store_bytes, data_dir, size)
    else:
        file_bytes = max(int(size * DEFAULT_STORE_SHARE) // MIB * MIB, MIN_DEFAULT_STORE_BYTES)
        file_source = (f"the default [nats] max_store_bytes: half of the {size} bytes of the data "
                       f"dir's filesystem")
    if max_mem_bytes:
        mem_bytes, mem_source = max_mem_bytes, f"[nats] max_mem_bytes = {max_mem_bytes}"
    else:
        mem_bytes, mem_source = DEFAULT_MEM_BYTES, "the default [nats] max_mem_bytes"
    return StoreLimits(file_bytes, mem_bytes, file_source, mem_source)


async def reservations(js: JetStreamContext) -> list[Reservation]:
    """What every stream of this JetStream reserves (its ``max_bytes``; none without one)."""
    out = []
    for info in await js.streams_info():
        cfg = info.config
        size = cfg.max_bytes if cfg.max_bytes and cfg.max_bytes > 0 else 0
        out.append(Reservation(cfg.name or "?", cfg.storage or StorageType.FILE, size))
    return out


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def _listing(held: list[Reservation]) -> str:
    parts = [f"{r.stream} {_mib(r.bytes)}" for r in sorted(held, key=lambda r: -r.bytes) if r.bytes]
    return ", ".join(parts) or "nothing"


async def check_reservations(js: JetStreamContext, limits: StoreLimits) -> None:
    """Raise :class:`StoreLimitError` when the streams the server holds already reserve more than
    its limits (a limit lowered, or streams made under a larger one): the server keeps them, but
    refuses every stream or bucket made or changed afterwards."""
    held = await reservations(js)
    for storage, limit, key, source in (
        (StorageType.FILE, limits.file_bytes, FILE_KEY, limits.file_source),
        (StorageType.MEMORY, limits.mem_bytes, MEM_KEY, limits.mem_source),
    ):
        mine = [r for r in held if r.storage == storage]
        total = sum(r.bytes for r in mine)
        if total > limit:
            raise StoreLimitError(
                f"The JetStream {storage.value} streams reserve {_mib(total)} ({_listing(mine)}), more "
                f"than the store's limit of {_mib(limit)} ({source}): raise {key} to at least {total} "
                f"bytes, or remove a stream the device no longer needs.",
                key=key, reserved=total, limit=limit,
            )


async def reservation_error(js: JetStreamContext, stream: str, storage: StorageType | None,
                            wanted: int | None, description: str) -> StoreLimitError:
    """The error for the server's refusal (:data:`ERR_INSUFFICIENT_RESOURCES`) of ``stream``,
    which asked to reserve ``wanted`` bytes: what the other streams hold already and the key that
    sets the limit. (The server refuses a changed stream's create request before it says the
    stream exists, so "update" is told from the streams it holds.)"""
    storage = storage or StorageType.FILE
    key = FILE_KEY if storage == StorageType.FILE else MEM_KEY
    verb = "create"
    try:
        every = await reservations(js)
        held = [r for r in every if r.storage == storage and r.stream != stream]
        if any(r.stream == stream for r in every):
            verb = "update"
        others = f"the other {storage.value} streams reserve {_mib(sum(r.bytes for r in held))} ({_listing(held)})"
    except Exception as exc:  # noqa: BLE001  the listing only adds detail to the error
        others = f"the other streams could not be listed ({exc})"
    size = _mib(wanted) if wanted and wanted > 0 else "no size limit of its own"
    return StoreLimitError(
        f"Could not {verb} stream {stream} ({size}): {description}; {others}. The store's limit is "
        f"{key} (default: half the data partition); raise it or lower the stream's limit.",
        stream=stream, key=key, wanted=wanted,
    )
