"""The device's update store: content-addressed artifacts and one atomic pointer file.

Layout under ``<data_dir>/ota``::

    objects/<sha256>         verified artifacts (written as .part, renamed once verified)
    staged/<sha256>/         unpacked component bundles (manifest.toml, module.wasm)
    tuf/                     the TUF client's trusted metadata
    state.json               what runs: active versions, the probation, the previous versions,
                             the versions marked bad

``state.json`` is the only pointer: it is replaced by write, fsync, rename, fsync of the
directory (:func:`atomic_write`), so a power cut leaves either the old file or the new one, and a
bundle of several components switches in one rename. What it points at is always complete on
disk before it is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.ota.bundle import MANIFEST
from edge.ota.errors import OtaError

log = logging.getLogger("edge.ota.store")

STATE_FILE = "state.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class Entry:
    """One component at one version, by the digest of its verified artifact."""

    version: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"version": self.version, "sha256": self.sha256}


def _entries(raw: Any) -> dict[str, Entry | None]:
    out: dict[str, Entry | None] = {}
    for name, e in dict(raw or {}).items():
        out[str(name)] = Entry(str(e["version"]), str(e["sha256"])) if e else None
    return out


@dataclass
class Probation:
    """An activation not yet committed: ``previous`` is what to go back to."""

    revision: str
    started: float
    duration_s: float
    components: dict[str, Entry | None]  # what the activation changed (None: removed)
    previous: dict[str, Entry | None]
    boots: int = 0  # restarts of the device during this probation
    boot: str = ""  # the start that counted the last restart (:func:`count_boot`)
    failed: str = ""  # why a start with this activation failed (rolled back at the next start)

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "started": self.started, "duration_s": self.duration_s,
                "boots": self.boots, "boot": self.boot, "failed": self.failed,
                "components": {k: v.to_dict() if v else None for k, v in self.components.items()},
                "previous": {k: v.to_dict() if v else None for k, v in self.previous.items()}}


@dataclass
class OtaState:
    active: dict[str, Entry] = field(default_factory=dict)
    previous: dict[str, Entry | None] = field(default_factory=dict)
    probation: Probation | None = None
    revision: str = ""  # the last committed desired revision
    bad: dict[str, str] = field(default_factory=dict)  # "name@version" -> reason
    history: list[dict[str, Any]] = field(default_factory=list)  # recent outcomes, newest last

    def to_json(self) -> bytes:
        return json.dumps({
            "active": {k: v.to_dict() for k, v in self.active.items()},
            "previous": {k: v.to_dict() if v else None for k, v in self.previous.items()},
            "probation": self.probation.to_dict() if self.probation else None,
            "revision": self.revision, "bad": self.bad, "history": self.history[-20:],
        }, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> OtaState:
        raw = json.loads(data)
        prob = raw.get("probation")
        probation = None
        if prob:
            probation = Probation(str(prob["revision"]), float(prob["started"]), float(prob["duration_s"]),
                                  _entries(prob["components"]), _entries(prob["previous"]),
                                  int(prob.get("boots", 0)), str(prob.get("boot", "")),
                                  str(prob.get("failed", "")))
        active = {k: v for k, v in _entries(raw.get("active")).items() if v is not None}
        return cls(active=active, previous=_entries(raw.get("previous")), probation=probation,
                   revision=str(raw.get("revision", "")), bad=dict(raw.get("bad", {})),
                   history=list(raw.get("history", [])))


def new_boot_id() -> str:
    """An id for one start of the device (whoever counts a start tags the probation with it)."""
    return uuid.uuid4().hex[:16]


def count_boot(state: OtaState, boot: str) -> bool:
    """Count the start ``boot`` against the probation of ``state`` once (the config loader and
    the update layer both call it with the same id: whichever runs first counts). True if it
    counted now."""
    prob = state.probation
    if prob is None or prob.boot == boot:
        return False
    prob.boots += 1
    prob.boot = boot
    return True


def read_state(root: Path) -> OtaState | None:
    """The pointer file under ``root`` (``<data_dir>/ota``) without touching anything else (None:
    there is none)."""
    path = root / STATE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return OtaState.from_json(data)
    except (ValueError, KeyError, TypeError) as err:
        raise OtaError(f"{path} is not a valid update state: {err}", reason="invalid") from err


class Store:
    """The on-disk store of one device."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.staged = root / "staged"
        self.tuf = root / "tuf"

    def open(self) -> OtaState:
        for d in (self.objects, self.staged, self.tuf):
            d.mkdir(parents=True, exist_ok=True)
        for junk in [*self.objects.glob("*.part"), *self.staged.glob(".*"), *self.root.glob(".*.tmp")]:
            # what a crash left half written: never pointed at, safe to drop
            if junk.is_dir():
                shutil.rmtree(junk, ignore_errors=True)
            else:
                junk.unlink(missing_ok=True)
        path = self.root / STATE_FILE
        if not path.exists():
            return OtaState()
        try:
            return OtaState.from_json(path.read_bytes())
        except (ValueError, KeyError, TypeError) as err:
            raise OtaError(f"{path} is not a valid update state: {err}", reason="invalid") from err

    def save(self, state: OtaState) -> None:
        self.save_bytes(state.to_json())

    def save_bytes(self, data: bytes) -> None:
        atomic_write(self.root / STATE_FILE, data)

    def part_path(self, sha256_hint: str) -> Path:
        return self.objects / f"{sha256_hint}.{uuid.uuid4().hex[:8]}.part"

    def has(self, sha256: str) -> bool:
        return (self.staged / sha256 / MANIFEST).is_file()

    def manifest(self, entry: Entry) -> Path:
        path = self.staged / entry.sha256 / MANIFEST
        if not path.is_file():
            raise OtaError(f"staged bundle {entry.sha256} is missing from {self.staged}", reason="missing")
        return path

    def stage(self, sha256: str, data: bytes, *, artifact: str, kind: str = "component") -> Path:
        """Keep the verified ``data`` under its digest and unpack it; returns the directory's
        manifest path (components) or the directory (models)."""
        from edge.ota.bundle import unpack
        from edge.ota.fragments import unpack_fragment
        from edge.ota.models import unpack_model
        from edge.ota.policies import unpack_policy

        unpackers = {"component": unpack, "model": unpack_model, "config": unpack_fragment,
                     "policy": unpack_policy}
        done = self.staged / sha256
        if done.is_dir():
            return done / MANIFEST if kind == "component" else done
        obj = self.objects / sha256
        if not obj.exists():
            part = self.part_path(sha256)
            part.write_bytes(data)
            with open(part, "rb+") as f:
                os.fsync(f.fileno())
            part.replace(obj)
        tmp = self.staged / f".{sha256}.{uuid.uuid4().hex[:8]}"
        try:
            unpackers[kind](data, tmp, artifact=artifact)
            for p in tmp.iterdir():
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
            tmp.replace(self.staged / sha256)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return done / MANIFEST if kind == "component" else done

    def model_file(self, entry: Entry) -> Path:
        from edge.ota.models import MODEL

        return self.staged_file(entry, MODEL)

    def staged_file(self, entry: Entry, member: str) -> Path:
        """The file ``member`` of the staged artifact ``entry`` (OtaError if it is gone)."""
        path = self.staged / entry.sha256 / member
        if not path.is_file():
            raise OtaError(f"staged artifact {entry.sha256} is missing from {self.staged}", reason="missing")
        return path

    def collect(self, state: OtaState) -> int:
        """Remove artifacts nothing in ``state`` points at; returns how many."""
        keep = {e.sha256 for e in state.active.values()}
        keep |= {e.sha256 for e in state.previous.values() if e}
        if state.probation is not None:
            keep |= {e.sha256 for e in state.probation.previous.values() if e}
            keep |= {e.sha256 for e in state.probation.components.values() if e}
        removed = 0
        for d in list(self.staged.iterdir()):
            if d.name not in keep and not d.name.startswith("."):
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        for o in list(self.objects.iterdir()):
            if o.name not in keep and not o.name.endswith(".part"):
                o.unlink(missing_ok=True)
        return removed


__all__ = ["Entry", "OtaState", "Probation", "Store", "atomic_write", "count_boot", "new_boot_id", "read_state"]
