"""Policy artifacts: a policy file (docs/policy.md) shipped and activated like every artifact.

A policy artifact (``policy/<name>/<version>.tar``) holds exactly ``policy.toml``. On the fleet
side :func:`pack_policy` checks the file with the policy loader before it is signed; on the
device :func:`compile_staged` compiles the staged file for this device at staging (a policy
that does not compile is refused, reason ``invalid``, naming the rule, the key and
``name@version``), and :class:`Policies` swaps it in through the policy layer at activation and
back at a rollback (the previous artifact, or the configured file when there was none).

A device runs at most one policy artifact: a desired state names it as ``"policy": {name: version}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.ota.errors import OtaError
from edge.ota.fragments import pack_file, unpack_file
from edge.ota.store import Entry
from edge.policy.rules import Policy, policy_from_bytes

log = logging.getLogger("edge.ota.policies")

POLICY_FILE = "policy.toml"
POLICY_PREFIX = "policy:"  # policies share the pointer file with components under this prefix
MAX_POLICY_BYTES = 4 * 2**20
#: The device id a policy is checked with on the fleet side (``{device}`` patterns).
CHECK_DEVICE = "fleet-check"


def pack_policy(path: Path) -> bytes:
    """The artifact of the policy file at ``path``, checked with the policy loader first."""
    data = path.read_bytes()
    if len(data) > MAX_POLICY_BYTES:
        raise OtaError(f"{path} is {len(data)} bytes, over {MAX_POLICY_BYTES}", reason="too_large")
    try:
        policy_from_bytes(data, CHECK_DEVICE, str(path))
    except EdgeError as err:
        raise OtaError(err.message, reason="invalid") from err
    return pack_file(POLICY_FILE, data)


def unpack_policy(data: bytes, dest: Path, *, artifact: str) -> None:
    unpack_file(data, dest, member=POLICY_FILE, cap=MAX_POLICY_BYTES, artifact=artifact)


def policy_entry(active: Mapping[str, Entry | None]) -> tuple[str, Entry] | None:
    """The policy artifact of a pointer map (its name without the prefix), if any."""
    for name, entry in sorted(active.items()):
        if name.startswith(POLICY_PREFIX) and entry is not None:
            return name[len(POLICY_PREFIX):], entry
    return None


def compile_staged(staged: Path, name: str, entry: Entry, device: str) -> Policy:
    """The staged policy ``name`` at ``entry`` read and compiled for ``device``; OtaError
    (reason ``invalid``) if it does not compile."""
    label = f"policy {name}@{entry.version}"
    path = staged / entry.sha256 / POLICY_FILE
    try:
        data = path.read_bytes()
    except OSError as err:
        raise OtaError(f"{label}: its staged file {path} cannot be read: {err.strerror}",
                       artifact=label, reason="missing") from err
    try:
        policy = policy_from_bytes(data, device, label)
    except EdgeError as err:
        raise OtaError(f"policy refused: {err.message}", artifact=f"{name}@{entry.version}",
                       reason="invalid") from err
    from edge.policy.engine import CompiledPolicy

    CompiledPolicy(policy, 0)  # compiled at staging too: what activation swaps in cannot fail
    return policy


class Policies:
    """Swaps policy artifacts in the policy layer (``layer``: a PolicyLayer; None: no policy point)."""

    def __init__(self, layer: Any, device: str) -> None:
        self.layer = layer
        self.device = device
        self._sha: str | None = None

    def apply(self, staged: Path, active: Mapping[str, Entry | None]) -> None:
        found = policy_entry(active)
        if found is None:
            if self._sha is not None and self.layer is not None:
                self.layer.clear_artifact()
                log.info("no policy artifact any more: the configured policy decides again")
            self._sha = None
            return
        name, entry = found
        if entry.sha256 == self._sha:
            return
        if self.layer is None:
            raise OtaError(f"policy {name}@{entry.version}: this device has no policy point",
                           artifact=f"{name}@{entry.version}", reason="invalid")
        policy = compile_staged(staged, name, entry, self.device)
        self.layer.use_artifact(policy, {"name": name, "version": entry.version, "sha256": entry.sha256})
        self._sha = entry.sha256
        log.info("policy %s@%s in force (sha256 %s)", name, entry.version, entry.sha256[:12])


__all__ = ["MAX_POLICY_BYTES", "POLICY_FILE", "POLICY_PREFIX", "Policies", "compile_staged", "pack_policy",
           "policy_entry", "unpack_policy"]
