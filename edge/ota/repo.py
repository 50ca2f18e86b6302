"""The fleet side of the update path: keys, TUF metadata, signing, publishing.

A fleet repository is a directory::

    keys/<role>-<n>.pem        ed25519 private keys (PKCS8 PEM, mode 0600): keep root's offline
    metadata/<v>.root.json     every root version (a device walks the chain to the newest)
    metadata/<v>.targets.json  targets and snapshot by version (consistent snapshots)
    metadata/<v>.snapshot.json
    metadata/timestamp.json    the one unversioned role, re-signed often, short expiry
    targets/<path>             the artifacts, by target path

Key components
- :func:`keygen`: a new repository: one key per signature of each role's threshold, root v1.
- :func:`publish`: adds (or replaces) an artifact as a target at a version; bumps targets,
  snapshot and timestamp and signs them with the repository's keys.
- :func:`rotate`: replaces a role's keys in a new root version signed by the old and new root
  keys (the key ceremony, docs/ota.md).
- :func:`upload`: copies the metadata and targets into the hub's object store, where devices
  fetch them over their leaf link.

Metadata and signatures are python-tuf's (``tuf.api.metadata``) with securesystemslib's
``CryptoSigner``; nothing here verifies: devices use the reference client (:mod:`edge.ota.trust`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, UTC
from pathlib import Path
from typing import Any

from edge.ota.errors import OtaError

log = logging.getLogger("edge.ota.repo")

ROLES = ("root", "targets", "snapshot", "timestamp")
#: Default lifetimes of signed metadata (days): root long, timestamp short (freeze attacks).
DEFAULT_EXPIRY_DAYS = {"root": 365.0, "targets": 90.0, "snapshot": 30.0, "timestamp": 1.0}
SPEC_VERSION = "1.0.31"
OTA_BUCKET = "edge-ota"  # hub object store holding metadata/ and targets/


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass
class Repo:
    """An open fleet repository directory."""

    path: Path

    @property
    def keys_dir(self) -> Path:
        return self.path / "keys"

    @property
    def metadata_dir(self) -> Path:
        return self.path / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.path / "targets"

    def signers(self, role: str) -> list[Any]:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from securesystemslib.signer import CryptoSigner

        out = []
        for pem in sorted(self.keys_dir.glob(f"{role}-*.pem")):
            out.append(CryptoSigner(load_pem_private_key(pem.read_bytes(), None)))  # type: ignore[arg-type]
        if not out:
            raise OtaError(f"no {role} key in {self.keys_dir}", reason="signature")
        return out

    def load(self, role: str) -> Any:
        from tuf.api.metadata import Metadata

        if role == "timestamp":
            path = self.metadata_dir / "timestamp.json"
        else:
            versions = sorted(int(p.name.split(".")[0]) for p in self.metadata_dir.glob(f"*.{role}.json"))
            if not versions:
                raise OtaError(f"no {role} metadata in {self.metadata_dir}", reason="missing")
            path = self.metadata_dir / f"{versions[-1]}.{role}.json"
        return Metadata.from_file(str(path))

    def write(self, md: Any, role: str, *, signers: list[Any] | None = None,
              expiry_days: float | None = None) -> None:
        from tuf.api.serialization.json import JSONSerializer

        md.signed.expires = _now() + timedelta(days=expiry_days if expiry_days is not None
                                              else DEFAULT_EXPIRY_DAYS[role])
        md.signatures.clear()
        for signer in signers if signers is not None else self.signers(role):
            md.sign(signer, append=True)
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        data = md.to_bytes(JSONSerializer(compact=False))
        tmp = self.metadata_dir / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.metadata_dir / name)
        if role == "root":
            (self.metadata_dir / "root.json").write_bytes(data)


def open_repo(path: str | Path) -> Repo:
    repo = Repo(Path(path))
    if not (repo.metadata_dir / "root.json").is_file():
        raise OtaError(f"{repo.path} is not a fleet repository (no metadata/root.json); run `edge ota keygen`",
                       reason="missing")
    return repo


def _new_keys(repo: Repo, role: str, count: int) -> list[Any]:
    from securesystemslib.signer import CryptoSigner

    existing = len(list(repo.keys_dir.glob(f"{role}-*.pem")))
    out = []
    for i in range(count):
        signer = CryptoSigner.generate_ed25519()
        _write_secret(repo.keys_dir / f"{role}-{existing + i}.pem", signer.private_bytes)
        out.append(signer)
    return out


def keygen(path: str | Path, *, thresholds: dict[str, int] | None = None) -> Repo:
    """Create a repository at ``path``: ``thresholds[role]`` keys per role (default 1 each), root
    version 1 and empty targets, snapshot and timestamp, all signed."""
    from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp

    repo = Repo(Path(path))
    if (repo.metadata_dir / "root.json").exists():
        raise OtaError(f"{repo.path} already holds a fleet repository; refusing to overwrite its keys",
                       reason="invalid")
    for d in (repo.keys_dir, repo.metadata_dir, repo.targets_dir):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(repo.keys_dir, 0o700)
    thresholds = {r: 1 for r in ROLES} | (thresholds or {})
    root = Root(expires=_now(), consistent_snapshot=True)
    for role in ROLES:
        root.roles[role].threshold = thresholds[role]
        for signer in _new_keys(repo, role, thresholds[role]):
            root.add_key(signer.public_key, role)
    repo.write(Metadata(root), "root")
    repo.write(Metadata(Targets(expires=_now())), "targets")
    repo.write(Metadata(Snapshot(expires=_now(), meta={"targets.json": MetaFile(1)})), "snapshot")
    repo.write(Metadata(Timestamp(expires=_now(), snapshot_meta=MetaFile(1))), "timestamp")
    log.info("new fleet repository in %s", repo.path)
    return repo


def target_path(kind: str, name: str, version: str) -> str:
    return f"{kind}/{name}/{version}.tar"


def publish(path: str | Path, artifact: bytes, *, kind: str, name: str, version: str,
            custom: dict[str, Any] | None = None, expiry_days: float | None = None) -> str:
    """Sign ``artifact`` as target ``<kind>/<name>/<version>.tar``; returns the target path.

    Targets, snapshot and timestamp each get a new version (versions only go up)."""
    from tuf.api.metadata import MetaFile, TargetFile

    repo = open_repo(path)
    tpath = target_path(kind, name, version)
    tfile = TargetFile.from_data(tpath, artifact, ["sha256"])
    tfile.unrecognized_fields["custom"] = {"kind": kind, "name": name, "version": version, **(custom or {})}
    digest = tfile.hashes["sha256"]
    dest = repo.targets_dir / Path(tpath).parent / f"{digest}.{Path(tpath).name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(artifact)
    targets = repo.load("targets")
    targets.signed.targets[tpath] = tfile
    targets.signed.version += 1
    repo.write(targets, "targets", expiry_days=expiry_days)
    snapshot = repo.load("snapshot")
    snapshot.signed.meta["targets.json"] = MetaFile(targets.signed.version)
    snapshot.signed.version += 1
    repo.write(snapshot, "snapshot", expiry_days=expiry_days)
    timestamp = repo.load("timestamp")
    timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
    timestamp.signed.version += 1
    repo.write(timestamp, "timestamp", expiry_days=expiry_days)
    log.info("published %s (sha256 %s, %d bytes)", tpath, digest, len(artifact))
    return tpath


def refresh_timestamp(path: str | Path, *, expiry_days: float | None = None) -> int:
    """Re-sign the timestamp with a new version (run often: a device refuses an expired one)."""
    repo = open_repo(path)
    timestamp = repo.load("timestamp")
    timestamp.signed.version += 1
    repo.write(timestamp, "timestamp", expiry_days=expiry_days)
    return int(timestamp.signed.version)


def rotate(path: str | Path, role: str, *, count: int = 1, threshold: int | None = None) -> int:
    """Replace every key of ``role`` with ``count`` new keys in a new root version, signed by the
    old root keys and (for root) the new ones; returns the new root version."""
    if role not in ROLES:
        raise OtaError(f"unknown role {role!r}; roles are {', '.join(ROLES)}", reason="invalid")
    repo = open_repo(path)
    root = repo.load("root")
    old_root_signers = repo.signers("root")
    for keyid in list(root.signed.roles[role].keyids):
        root.signed.revoke_key(keyid, role)
    old = sorted(repo.keys_dir.glob(f"{role}-*.pem"))
    retired = repo.keys_dir / "retired"
    retired.mkdir(exist_ok=True)
    for pem in old:
        pem.replace(retired / f"v{root.signed.version}-{pem.name}")
    new = _new_keys(repo, role, count)
    for signer in new:
        root.signed.add_key(signer.public_key, role)
    root.signed.roles[role].threshold = threshold or count
    root.signed.version += 1
    signers = old_root_signers + (new if role == "root" else [])
    repo.write(root, "root", signers=signers)
    if role != "root":  # re-sign the role with its new keys so clients verify it
        for r in ("targets", "snapshot", "timestamp"):
            md = repo.load(r)
            md.signed.version += 1
            if r == "snapshot":
                from tuf.api.metadata import MetaFile

                md.signed.meta["targets.json"] = MetaFile(repo.load("targets").signed.version)
            if r == "timestamp":
                from tuf.api.metadata import MetaFile

                md.signed.snapshot_meta = MetaFile(repo.load("snapshot").signed.version)
            repo.write(md, r)
    return int(root.signed.version)


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def upload(js: Any, path: str | Path, *, bucket: str = OTA_BUCKET) -> int:
    """Copy the repository's metadata and targets into the hub object store ``bucket``
    (``js``: a JetStream context on the hub). Returns the number of objects written."""
    from nats.js.errors import NotFoundError

    repo = open_repo(path)
    try:
        obs = await js.object_store(bucket)
    except NotFoundError:
        obs = await js.create_object_store(bucket)
    have: dict[str, str] = {}
    try:
        for info in await obs.list():
            have[info.name] = info.digest or ""
    except NotFoundError:
        pass
    written = 0
    files = [(f"metadata/{p.name}", p) for p in sorted(repo.metadata_dir.glob("*.json"))]
    files += [(f"targets/{p.relative_to(repo.targets_dir).as_posix()}", p)
              for p in sorted(repo.targets_dir.rglob("*")) if p.is_file()]
    for name, p in files:
        data = p.read_bytes()
        versioned = name.startswith("targets/") or name.split("/")[-1][:1].isdigit()
        if versioned and name in have:
            continue  # versioned names never change
        await obs.put(name, data)
        written += 1
    return written


def describe(path: str | Path) -> dict[str, Any]:
    repo = open_repo(path)
    out: dict[str, Any] = {}
    for role in ROLES:
        md = repo.load(role)
        out[role] = {"version": md.signed.version, "expires": md.signed.expires.isoformat()}
    out["targets"]["artifacts"] = sorted(repo.load("targets").signed.targets)
    return out


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
