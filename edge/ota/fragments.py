"""Config fragment artifacts: a TOML fragment of the device config, signed like every artifact.

Key components
- :func:`pack_file` / :func:`unpack_file`: an artifact holding exactly one regular file (config
  fragments and policies), refused member by member before anything is written.
- :func:`pack_fragment`: the fleet side: a fragment file checked (TOML, only the sections a
  fragment may set: :data:`edge.config.overlay.SECTIONS`) and packed as ``fragment.toml``.
- :class:`Fragments`: the device side. :meth:`Fragments.validate` merges a set of fragments over
  the device's base config file and runs the typed config loader on the result (a bad fragment
  is refused naming the key and ``name@version``) before anything changes; :meth:`Fragments.apply`
  applies the sections that have a live path (``safety``, ``policy``) and reports the others as
  pending a restart.
- :func:`load_device_config`: what ``edge run`` loads: the base file with the fragments the
  pointer file (``<data_dir>/ota/state.json``) names. The state on disk decides: a start during
  a probation counts against ``ota.max_boots``, and past it the fragments the probation would go
  back to are loaded instead, so a device whose new fragment keeps it from starting comes up
  with the previous set by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config.device import DeviceConfig, load_config
from edge.config.overlay import (MAX_FRAGMENT_BYTES, SECTIONS, check_fragment, parse_toml, parse_with_fragments,
                                 read_toml)
from edge.errors import ConfigError
from edge.ota import tarball
from edge.ota.errors import OtaError
from edge.ota.store import Entry, OtaState, atomic_write, count_boot, new_boot_id, read_state

log = logging.getLogger("edge.ota.fragments")

FRAGMENT = "fragment.toml"
CONFIG_PREFIX = "config:"  # fragments share the pointer file with components under this prefix


def pack_file(member: str, data: bytes) -> bytes:
    """An artifact holding ``data`` as the one regular file ``member`` (trimmed: a 200-byte
    fragment stays a 2 KiB artifact)."""
    return tarball.pack(((member, data),), trim=True)


def unpack_file(data: bytes, dest: Path, *, member: str, cap: int, artifact: str) -> None:
    """Write the one member of ``data`` (it must be ``member``, at most ``cap`` bytes) into the new
    directory ``dest``."""
    seen = tarball.read_members(data, {member: cap}, artifact=artifact, what="a bundle",
                                holds=f"exactly {member}")
    tarball.require(seen, (member,), artifact=artifact)
    tarball.write_members(seen, dest)


def pack_fragment(path: Path) -> bytes:
    """The artifact of the fragment file at ``path`` (checked: TOML, allowed sections only)."""
    data = path.read_bytes()
    if len(data) > MAX_FRAGMENT_BYTES:
        raise OtaError(f"{path} is {len(data)} bytes, over {MAX_FRAGMENT_BYTES}", reason="too_large")
    try:
        check_fragment(parse_toml(data, str(path)), str(path))
    except ConfigError as err:
        raise OtaError(err.message, reason="invalid") from err
    return pack_file(FRAGMENT, data)


def unpack_fragment(data: bytes, dest: Path, *, artifact: str) -> None:
    unpack_file(data, dest, member=FRAGMENT, cap=MAX_FRAGMENT_BYTES, artifact=artifact)


def label(name: str, entry: Entry) -> str:
    """``limits@1.0.0``: how a fragment is named in errors and the status."""
    return f"{name[len(CONFIG_PREFIX):] if name.startswith(CONFIG_PREFIX) else name}@{entry.version}"


def fragment_entries(active: Mapping[str, Entry | None]) -> list[tuple[str, Entry]]:
    """The config fragments of a pointer map, in the order they are laid over the base (by name)."""
    return sorted((n, e) for n, e in active.items() if n.startswith(CONFIG_PREFIX) and e is not None)


def read_fragments(staged: Path, entries: list[tuple[str, Entry]]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, parsed TOML)`` of each staged fragment (``staged``: ``<data_dir>/ota/staged``)."""
    out = []
    for name, entry in entries:
        lb = label(name, entry)
        path = staged / entry.sha256 / FRAGMENT
        try:
            data = path.read_bytes()
        except OSError as err:
            raise OtaError(f"config fragment {lb}: its staged file {path} cannot be read: {err.strerror}",
                           artifact=lb, reason="missing") from err
        try:
            out.append((lb, parse_toml(data, f"config fragment {lb}")))
        except ConfigError as err:
            raise OtaError(err.message, artifact=lb, reason="invalid") from err
    return out


@dataclass
class Applied:
    """What a set of fragments did: its labels, the sections applied live, those waiting for a restart."""

    fragments: list[str]
    live: list[str]
    pending_restart: list[str]
    error: str | None = None  # why the fragments the pointer names are not the ones in force

    def to_dict(self) -> dict[str, Any]:
        return {"fragments": self.fragments, "live": self.live, "pending_restart": self.pending_restart,
                "error": self.error}


class Fragments:
    """The device side of config fragments (see the module docstring).

    ``config`` is the config the process started with (its ``file`` is the base; its
    ``overlay`` what fragments set then); ``safety`` and ``policy`` are the layers whose sections
    apply live (None: not on this device)."""

    def __init__(self, config: DeviceConfig, *, safety: Any = None, policy: Any = None) -> None:
        self.config = config
        self.safety = safety
        self.policy = policy
        self.applied = Applied(list(config.fragments), [], [])
        self._key: tuple[tuple[str, str], ...] | None = None

    def validate(self, staged: Path, entries: list[tuple[str, Entry]]) -> DeviceConfig:
        """The typed config the base file and these fragments make; OtaError (reason
        ``invalid``, the key and the fragment named) if it does not load. Changes nothing."""
        file = self.config.file
        if file is None:
            names = ", ".join(label(n, e) for n, e in entries)
            raise OtaError(f"config fragment {names}: this device's config was not loaded from a file, so "
                           "there is no base to lay a fragment over", artifact=names, reason="invalid")
        frags = read_fragments(staged, entries)
        try:
            return parse_with_fragments(read_toml(file), frags, file=file, base=Path(file).resolve().parent,
                                        data_dir=self.config.data_dir)
        except ConfigError as err:
            culprit = err.file if err.file and err.file.startswith("config fragment ") else None
            raise OtaError(f"config refused: {err.message}", artifact=(culprit or "")[16:] or None,
                           reason="invalid") from err

    def apply(self, staged: Path, entries: list[tuple[str, Entry]]) -> Applied:
        """Apply the live sections of this set of fragments and record what waits for a restart
        (a set already applied is not applied again)."""
        key = tuple((n, e.sha256) for n, e in entries)
        if key == self._key:
            return self.applied
        if not entries and not self.config.fragments and self._key is None:
            self._key = key
            return self.applied
        try:
            cfg = self.validate(staged, entries) if entries else self._base()
        except OtaError as err:
            if self._key is not None:
                raise
            # at start: the config loader already fell back (logged); the device runs, and says why
            self._key = key
            self.applied = Applied(list(self.config.fragments), [], [], f"{err.message}; running with "
                                   f"{', '.join(self.config.fragments) or 'the base config alone'}")
            log.error("%s", self.applied.error)
            return self.applied
        live: list[str] = []
        pending: list[str] = []
        now, then = cfg.overlay, self.config.overlay
        for section in sorted(set(now) | set(then)):
            if now.get(section) == then.get(section) and self._key is None:
                continue
            if SECTIONS.get(section) == "live":
                self._apply_live(section, cfg)
                live.append(section)
            elif now.get(section) != then.get(section):
                pending.append(section)
        self._key = key
        self.applied = Applied([label(n, e) for n, e in entries], live, pending)
        log.info("config fragments %s applied (live: %s; pending restart: %s)",
                 ", ".join(self.applied.fragments) or "none", ", ".join(live) or "-", ", ".join(pending) or "-")
        return self.applied

    def _base(self) -> DeviceConfig:
        file = self.config.file
        if file is None:
            return self.config
        try:
            return parse_with_fragments(read_toml(file), [], file=file, base=Path(file).resolve().parent,
                                        data_dir=self.config.data_dir)
        except ConfigError as err:
            raise OtaError(f"config refused: {err.message}", reason="invalid") from err

    def _apply_live(self, section: str, cfg: DeviceConfig) -> None:
        if section == "safety" and self.safety is not None:
            self.safety.config = cfg.safety
            self.safety.guarded |= set(cfg.safety.entities)  # an entity guarded stays guarded
        elif section == "policy" and self.policy is not None:
            self.policy.configure(cfg.policy)

    def status(self) -> dict[str, Any]:
        return self.applied.to_dict()


def load_device_config(path: str | Path, *, data_dir: Path | None = None) -> DeviceConfig:
    """The device config at ``path`` with the config fragments the update state names (see the
    module docstring). Without ``[ota]`` or any fragment it is :func:`edge.config.load_config`."""
    cfg = load_config(path, data_dir=data_dir)
    if cfg.ota is None:
        return cfg
    root = cfg.data_dir / "ota"
    try:
        state = read_state(root)
    except OtaError as err:  # the update layer reports it; the device starts on its base config
        log.error("%s; starting without config fragments", err.message)
        return cfg
    if state is None:
        return cfg
    boot = new_boot_id()
    if count_boot(state, boot):  # this start counts against the probation, before anything can fail
        atomic_write(root / "state.json", state.to_json())
    sets = _candidates(state, cfg.ota.max_boots)
    base_raw = read_toml(path)
    for reason, entries in sets:
        if not entries:
            cfg.boot = boot
            return cfg
        try:
            frags = read_fragments(root / "staged", entries)
            out = parse_with_fragments(base_raw, frags, file=str(path), base=Path(path).resolve().parent,
                                       data_dir=data_dir)
        except (OtaError, ConfigError) as err:
            log.error("config fragments %s not used: %s", ", ".join(label(n, e) for n, e in entries), err.message)
            continue
        if reason:
            log.warning("starting with config fragments %s: %s", ", ".join(out.fragments) or "none", reason)
        out.boot = boot
        return out
    cfg.boot = boot
    return cfg


def abandon_start(cfg: DeviceConfig, err: Exception) -> bool:
    """The runtime of ``cfg`` failed to start: if ``cfg`` was loaded with config fragments of a
    probation, use that probation's last restart so the next :func:`load_device_config` loads
    the previous fragments (and the update layer rolls the bundle back). True if it did."""
    if cfg.ota is None or not cfg.fragments:
        return False
    root = cfg.data_dir / "ota"
    try:
        state = read_state(root)
    except OtaError:
        return False
    prob = state.probation if state is not None else None
    if state is None or prob is None or not any(n.startswith(CONFIG_PREFIX) for n in prob.components):
        return False
    log.error("the device did not start with config fragments %s (%s): going back to the previous ones",
              ", ".join(cfg.fragments), err)
    prob.boots = max(prob.boots, cfg.ota.max_boots)
    prob.failed = f"the device did not start with config fragments {', '.join(cfg.fragments)}: {err}"[:500]
    atomic_write(root / "state.json", state.to_json())
    return True


def _candidates(state: OtaState, max_boots: int) -> list[tuple[str, list[tuple[str, Entry]]]]:
    """The fragment sets to try, best first: the active one (unless the probation has used its
    restarts), then the one its probation would go back to."""
    active = fragment_entries(state.active)
    prob = state.probation
    if prob is None:
        return [("", active)]
    previous = dict(state.active)
    for name, entry in prob.previous.items():
        if entry is None:
            previous.pop(name, None)
        else:
            previous[name] = entry
    back = fragment_entries(previous)
    if prob.boots > max_boots or prob.failed:  # past the limit: the update layer rolls it back
        return [(f"the probation of revision {prob.revision} used its {max_boots} restarts", back)]
    return [("", active), (f"the fragments of revision {prob.revision} did not load", back)]


__all__ = ["CONFIG_PREFIX", "FRAGMENT", "Applied", "Fragments", "abandon_start", "fragment_entries", "label", "load_device_config",
           "pack_file", "pack_fragment", "read_fragments", "unpack_file", "unpack_fragment"]
