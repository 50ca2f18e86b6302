"""Over-the-air updates of components as a layer (``edge status`` section ``ota``).

Key components
- :class:`OtaLayer`: at start, runs what the device last activated (from ``state.json``, no hub
  needed) and resumes an interrupted probation; then reconciles, every ``poll_s``, to the
  desired state the hub holds for the device (KV ``edge-ota-desired``, key = device id):
  refresh the fleet's TUF metadata, fetch and verify every artifact of the revision, stage them,
  check their manifests (host contract, name), and only then switch the pointer (one atomic
  write for the whole bundle) and swap the components in the sandbox. A new version runs on
  probation: a sandbox fault (trap, out of gas, deadline kill, crash, failed init) or a tick over
  ``tick_budget_ms`` rolls the whole bundle back and marks its versions bad (reconciliation does
  not retry them); a probation that runs its time is committed. Each outcome is an event
  (``edge.<device>.evt.ota.<committed|rolled_back|refused>``), and what the device runs is
  reported on ``edge.<device>.evt.ota.report`` (the hub reads it from ``EVT_<device>``).

Desired state (JSON)::

    {"revision": "r7", "components": {"physics": "1.2.0"}, "models": {"face": "2.0.0"}}

``components`` and ``models`` are the whole set the update path manages on this device (one
bundle); the artifact of a component ``name`` at ``version`` is the signed target
``component/<name>/<version>.tar``, of a model ``model/<name>/<version>.tar``: a model is run on
its stored probe before it is activated (:mod:`edge.ota.models`) and served through the
inference registry. Models are kept in the pointer file as ``model:<name>``; config fragments
(``config/<name>/<version>.tar``, :mod:`edge.ota.fragments`) as ``config:<name>`` and the policy
(``policy/<name>/<version>.tar``, :mod:`edge.ota.policies`) as ``policy:<name>``: they are checked
at staging (the merged config loads, the policy compiles) and applied with the rest of the bundle.
Before an artifact is fetched the device's own policy point decides ``deploy`` (principal
``device:ota``, resource ``<kind>.<name>.<version>``; granted unless a deny rule matches).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from collections.abc import Coroutine
from typing import Any

from edge.backoff import Backoff
from edge.errors import EdgeError, LifecycleError, SandboxError
from edge.layer import DeviceContext
from edge.nats import subjects
from edge.ota.config import OtaConfig
from edge.ota.errors import OtaError
from edge.ota.fragments import CONFIG_PREFIX, Fragments, fragment_entries
from edge.ota.policies import POLICY_PREFIX, Policies, compile_staged
from edge.ota.repo import target_path
from edge.ota.store import Entry, OtaState, Probation, Store, count_boot, new_boot_id
from edge.ota.trust import TrustClient
from edge.wasm.layer import SandboxLayer

log = logging.getLogger("edge.ota.layer")

PROBATION_CHECK_S = 0.1  # how often probation looks at tick latencies and the clock
MAX_DESIRED_BYTES = 64 * 1024  # a desired-state document larger than this is refused
MODEL_PREFIX = "model:"  # models share the pointer file with components under this prefix
REPORT_EVERY_S = 60.0  # an unchanged report is sent again after this long
#: Desired-state keys of the artifact kinds -> their prefix in the pointer file ("" for components).
KIND_KEYS = {"components": ("component", ""), "models": ("model", MODEL_PREFIX),
             "config": ("config", CONFIG_PREFIX), "policy": ("policy", POLICY_PREFIX)}
#: The device's own policy point decides this before an artifact is fetched.
DEPLOY_PRINCIPAL = ("device", "ota")


def artifact_kind(name: str) -> tuple[str, str]:
    """``(kind, short name)`` of a pointer-file name (``config:limits`` -> ``("config", "limits")``)."""
    for kind, prefix in KIND_KEYS.values():
        if prefix and name.startswith(prefix):
            return kind, name[len(prefix):]
    return "component", name


def parse_desired(data: bytes) -> tuple[str, dict[str, str], float | None]:
    """``(revision, {component: version}, probation_s)`` of a desired-state document (a
    rollout may set the probation time), or an OtaError."""
    if len(data) > MAX_DESIRED_BYTES:
        raise OtaError(f"desired state is {len(data)} bytes, over {MAX_DESIRED_BYTES}", reason="invalid")
    try:
        raw = json.loads(data)
    except ValueError as err:
        raise OtaError(f"desired state is not JSON: {err}", reason="invalid") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("revision"), str) or not raw["revision"]:
        raise OtaError("desired state needs a non-empty string 'revision'", reason="invalid")
    comps: dict[str, str] = {}
    for key, (kind, prefix) in KIND_KEYS.items():
        got = raw.get(key, {})
        if not isinstance(got, dict) or not all(
                subjects.is_id(k) and isinstance(v, str) and v for k, v in got.items()):
            raise OtaError(f"desired state '{key}' must map {kind} names to version strings", reason="invalid")
        if key == "policy" and len(got) > 1:
            raise OtaError("desired state 'policy' names at most one policy", reason="invalid")
        comps.update({f"{prefix}{k}": v for k, v in got.items()})
    probation = raw.get("probation_s")
    if probation is not None and (not isinstance(probation, (int, float)) or not 0 <= probation <= 86400):
        raise OtaError("desired state 'probation_s' must be a number of seconds within 0..86400",
                       reason="invalid")
    return raw["revision"], dict(comps), (float(probation) if probation is not None else None)


class OtaLayer:
    """Keeps the device's OTA-managed components at their desired, signed versions."""

    name = "ota"

    def __init__(self, cfg: OtaConfig, sandbox: SandboxLayer, *, credentials: str | None = None,
                 models: Any = None, policy: Any = None, safety: Any = None,
                 device_config: Any = None) -> None:
        from edge.config.device import DeviceConfig

        self.cfg = cfg
        self.sandbox = sandbox
        self.policy = policy  # the PolicyLayer: decides deploy, swaps policy artifacts (None: neither)
        base = device_config if device_config is not None else DeviceConfig(device="-", data_dir=Path("."))
        self.fragments = Fragments(base, safety=safety, policy=policy)
        self.policies = Policies(policy, base.device)
        self.models = models  # the inference layer's ModelRegistry (None: no model updates)
        self._model_loaded: dict[str, str] = {}  # model name -> sha256 of the artifact serving
        self.credentials = credentials  # the device's NATS login (an external server's .creds)
        self._nc: Any = None
        self.state = OtaState()
        self.store: Store | None = None
        self.trust: TrustClient | None = None
        self.last_error: dict[str, Any] | None = None
        self.counters = {"reconciles": 0, "refused": 0, "committed": 0, "rolled_back": 0,
                         "malformed": 0, "hub_errors": 0}
        self.last_switch_ms: float | None = None  # the last swap in the sandbox (stage + promote)
        self.last_rollback_ms: float | None = None  # from a fault on probation to the previous running
        self._fault_at: float | None = None
        self._stopping = False  # stop() began: nothing commits or rolls back any more
        self.hub_error: str | None = None  # why the last pass could not reach the hub's store
        self.waiting: str | None = None  # why the desired state is not being applied
        self._last_report = ""
        self._last_report_at = 0.0
        self._ctx: DeviceContext | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._probation_task: asyncio.Task[Any] | None = None
        self._lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()
        self._save_lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None  # the pointer write under way
        self._deciding: asyncio.Future[None] | None = None  # a commit or rollback under way
        self._hub_js: Any = None
        self._hub_kv: dict[str, Any] = {}

    @property
    def ctx(self) -> DeviceContext:
        if self._ctx is None:
            raise LifecycleError("the ota layer is not started")
        return self._ctx

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        self._stopping = False
        self.policies.device = ctx.device  # a policy artifact's {device} patterns
        self.store = Store(ctx.data_dir / "ota")
        self.state = self.store.open()
        root: bytes | None = None
        if self.cfg.root is not None:
            try:
                root = self.cfg.root.read_bytes()
            except OSError as err:  # the device still runs what it committed; updates wait
                self.last_error = OtaError(f"cannot read the trusted root metadata {self.cfg.root}: "
                                           f"{err.strerror}", artifact="root", reason="signature").to_dict()
        self._hub_js = None  # the update connection is opened by the first reconcile pass
        self.sandbox.fault_listeners.append(self._on_fault)
        prob = self.state.probation
        if prob is not None:
            boot = self.fragments.config.boot or new_boot_id()
            if count_boot(self.state, boot):  # not counted yet by the config loader
                await self._save()
            if prob.boots > self.cfg.max_boots or prob.failed:
                await self._apply(self.state.active)
                await self._rollback(prob.failed or f"device restarted {prob.boots} times during probation")
            else:
                log.info("resuming probation of revision %s after a restart", prob.revision)
                await self._apply_or_rollback()
        else:
            await self._apply(self.state.active)
        self._tasks.append(asyncio.create_task(self._reconcile_loop(root), name="ota-reconcile"))

    async def stop(self) -> None:
        # From here nothing commits or rolls back: a stop is not a verdict on the versions (the
        # components stop under the probation watch), and the next start resumes the probation.
        self._stopping = True
        tasks = [*self._tasks, *([self._probation_task] if self._probation_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._probation_task is not None and self._probation_task not in tasks:  # started meanwhile
            self._probation_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._probation_task
        self._tasks.clear()
        if self._deciding is not None:  # a verdict begun before the stop is carried through:
            with contextlib.suppress(Exception):  # its pointer, counters and event all, or none
                await asyncio.wait_for(asyncio.shield(self._deciding), 10.0)
            self._deciding = None
        if self._writing is not None:  # the last pointer write lands before stop returns
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._writing), 10.0)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 5.0)
            self._nc = None
            self._hub_js = None
            self._hub_kv.clear()
            self.trust = None
        self._probation_task = None
        with contextlib.suppress(ValueError):
            self.sandbox.fault_listeners.remove(self._on_fault)

    def status(self) -> dict[str, Any]:
        prob = self.state.probation
        out: dict[str, Any] = {
            "revision": self.state.revision,
            "active": {k: v.version for k, v in sorted(self.state.active.items())},
            "probation": None,
            "bad": dict(self.state.bad),
            "last_error": self.last_error,
            "bytes_in": self.trust.bytes_in if self.trust else 0,
            "last_switch_ms": self.last_switch_ms,
            "last_rollback_ms": self.last_rollback_ms,
            "hub_error": self.hub_error,
            "waiting": self.waiting,
            "config": self.fragments.status(),
            "policy": (self.policy.artifact if self.policy is not None else None),
            **self.counters,
        }
        if prob is not None:
            out["probation"] = {"revision": prob.revision,
                                "remaining_s": round(max(0.0, prob.started + prob.duration_s - time.time()), 1),
                                "components": {k: v.version if v else None for k, v in prob.components.items()}}
        return out

    # -- reconciliation -----------------------------------------------------------------------

    def wake(self) -> None:
        """Reconcile now instead of at the next poll."""
        self._wake.set()

    async def _reconcile_loop(self, root: bytes | None) -> None:
        backoff = Backoff(0.5, max(self.cfg.poll_s, 0.5) * 4)
        failures = 0
        while True:
            delay = self.cfg.poll_s
            try:
                await self._pass(root)
                failures = 0
                self.hub_error = None
            except OtaError as err:
                self.hub_error = err.message if err.reason == "download" else None
                if err.reason == "download":
                    failures += 1
                    delay = min(delay, backoff.delay(failures - 1))
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001  the hub may be away: retried, never fatal
                failures += 1
                self.counters["hub_errors"] += 1
                self.hub_error = f"{type(err).__name__}: {err}"
                delay = min(delay, backoff.delay(failures - 1))
                log.debug("reconcile: %s", self.hub_error)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _connect(self) -> Any:
        """The hub's JetStream through the device's server, on a connection of its own whose
        inbox is under the device's subjects (:func:`edge.ota.hub.ota_inbox`): the only replies
        a device's leaf login receives from the hub."""
        if self._hub_js is None:
            import nats

            from edge.ota.hub import ota_inbox

            url = self.ctx.nc.connected_url
            if url is None:
                raise OtaError("the device's NATS is not connected", reason="download")
            self._nc = await nats.connect(url.geturl(), name=f"edge-ota-{self.ctx.device}",
                                          inbox_prefix=ota_inbox(self.ctx.device),
                                          user_credentials=self.credentials, connect_timeout=5,
                                          max_reconnect_attempts=-1, reconnect_time_wait=0.5)
            if self.cfg.hub_domain:
                # the hub's store through the device's account on the hub, which imports exactly
                # the update calls under edge.<d>.hub.API (edge.ota.hub.ota_exports)
                from edge.nats.subjects import hub_api

                self._hub_js = self._nc.jetstream(prefix=hub_api(self.ctx.device))
            else:  # the device's own server holds the store
                self._hub_js = self._nc.jetstream()
        return self._hub_js

    async def _kv(self, bucket: str) -> Any:
        await self._connect()
        if bucket not in self._hub_kv:
            from nats.js.errors import BucketNotFoundError

            try:
                self._hub_kv[bucket] = await self._hub_js.key_value(bucket)
            except BucketNotFoundError as err:  # the hub creates them (edge.ota.hub)
                raise OtaError(f"the hub has no bucket '{bucket}' yet", reason="download") from err
        return self._hub_kv[bucket]

    async def _desired(self) -> bytes | None:
        from nats.js.errors import KeyNotFoundError

        kv = await self._kv(self.cfg.desired_bucket)
        try:
            entry = await kv.get(self.ctx.device)
        except KeyNotFoundError:
            return None
        return entry.value or None

    async def reconcile_once(self, root: bytes | None) -> str:
        """One pass: returns what it did (``idle``, ``probation``, ``bad``, ``activated``)."""
        async with self._lock:
            self.counters["reconciles"] += 1
            data = await self._desired()
            if data is None:
                return "idle"
            try:
                revision, wanted, probation_s = parse_desired(data)
            except OtaError as err:
                self.counters["malformed"] += 1
                await self._refused(err)
                return "malformed"
            if self.state.probation is not None:
                return "probation"
            current = {k: v.version for k, v in self.state.active.items()}
            if wanted == current:
                if self.state.revision != revision:
                    self.state.revision = revision
                    await self._save()
                    await self._report()
                return "idle"
            bad = [f"{n}@{v}" for n, v in wanted.items() if f"{n}@{v}" in self.state.bad]
            if bad:  # not retried: the hub has to name another version
                self.waiting = f"revision {revision} names {', '.join(bad)}, marked bad on this device"
                return "bad"
            self.waiting = None
            try:
                staged = await self._fetch_and_stage(root, wanted)
            except OtaError as err:
                await self._refused(err)
                raise
            await self._activate(revision, wanted, staged, probation_s)
            return "activated"

    async def _pass(self, root: bytes | None) -> str:
        try:
            return await self.reconcile_once(root)
        finally:
            await self._report()

    async def _fetch_and_stage(self, root: bytes | None, wanted: dict[str, str]) -> dict[str, Entry]:
        """Every changed artifact fetched, verified, staged and checked; nothing switched yet."""
        from edge.wasm.manifest import load_manifest

        store = self.store
        assert store is not None
        if self.trust is None:
            from nats.js.errors import NotFoundError

            try:
                obs = await (await self._connect()).object_store(self.cfg.bucket)
            except NotFoundError as err:
                raise OtaError(f"the hub has no update store '{self.cfg.bucket}'", reason="download") from err
            self.trust = TrustClient(obs, store.tuf, root)
        await self.trust.refresh()
        out: dict[str, Entry] = {}
        for name, version in sorted(wanted.items()):
            have = self.state.active.get(name)
            if have is not None and have.version == version:
                continue
            kind, short = artifact_kind(name)
            self._decide_deploy(kind, short, version)
            if kind == "model" and self.models is None:
                raise OtaError(f"model {short}: this device has no inference layer (configure a [[models]] "
                               "entry)", artifact=target_path(kind, short, version), reason="invalid")
            tpath = target_path(kind, short, version)
            part = store.part_path("download")
            try:
                verified = await self.trust.fetch(tpath, part)
            finally:
                part.unlink(missing_ok=True)  # the verified bytes are kept under their digest
            custom = verified.custom
            if custom.get("name") != short or custom.get("version") != version or custom.get("kind") != kind:
                raise OtaError(f"artifact {tpath} is signed as {custom.get('kind')}/{custom.get('name')}/"
                               f"{custom.get('version')}", artifact=tpath, reason="invalid")
            staged_path = await asyncio.to_thread(store.stage, verified.sha256, verified.data,
                                                  artifact=tpath, kind=kind)  # fsyncs: off the loop
            if kind == "model":
                from edge.ota.models import probe

                await probe(short, staged_path, await self.models.start(), artifact=tpath)
                out[name] = Entry(version, verified.sha256)
                continue
            if kind == "policy":  # compiled now: a policy that does not compile never activates
                compile_staged(store.staged, short, Entry(version, verified.sha256), self.ctx.device)
                out[name] = Entry(version, verified.sha256)
                continue
            if kind == "config":  # the whole set is checked below, once every fragment is here
                out[name] = Entry(version, verified.sha256)
                continue
            manifest_path = staged_path
            try:
                manifest = load_manifest(manifest_path, self.ctx.device)
            except EdgeError as err:
                reason = "contract" if "contract" in err.message else "invalid"
                raise OtaError(f"artifact {tpath}: {err.message}", artifact=tpath, reason=reason) from err
            if manifest.name != name or manifest.version != version:
                raise OtaError(f"artifact {tpath} holds {manifest.name} {manifest.version}", artifact=tpath,
                               reason="invalid")
            out[name] = Entry(version, verified.sha256)
        frags = {n: out.get(n) or self.state.active[n] for n in wanted if n.startswith(CONFIG_PREFIX)}
        if any(n in out for n in frags) or (not frags and fragment_entries(self.state.active)):
            # the base config with the new set of fragments must load before anything changes
            await asyncio.to_thread(self.fragments.validate, store.staged, fragment_entries(frags))
        return out

    def _decide_deploy(self, kind: str, name: str, version: str) -> None:
        """The device's own policy point on this artifact, before it is fetched."""
        if self.policy is None:
            return
        from edge.policy.model import Action

        resource = f"{kind}.{name}.{version}"
        d = self.policy.point.check(*DEPLOY_PRINCIPAL, Action.DEPLOY, resource, granted=True)
        if not d.allowed:
            tpath = target_path(kind, name, version)
            raise OtaError(f"artifact {tpath} refused by the device's policy: {d.reason} (rule '{d.rule}')",
                           artifact=tpath, reason="denied")

    # -- activation, probation, commit, rollback ----------------------------------------------

    async def _activate(self, revision: str, wanted: dict[str, str], staged: dict[str, Entry],
                        probation_s: float | None = None) -> None:
        old = dict(self.state.active)
        new: dict[str, Entry] = {}
        changes: dict[str, Entry | None] = {}
        for name in wanted:
            new[name] = staged.get(name) or old[name]
            if name in staged:
                changes[name] = staged[name]
        for name in old:
            if name not in wanted:
                changes[name] = None
        previous: dict[str, Entry | None] = {n: old.get(n) for n in changes}
        self.state.active = new
        duration = self.cfg.probation_s if probation_s is None else probation_s
        self.state.probation = Probation(revision, time.time(), duration, changes, previous)
        await self._save()  # the switch: one atomic write for the whole bundle
        log.info("revision %s activated on probation (%s)", revision,
                 ", ".join(f"{n} {e.version if e else 'removed'}" for n, e in changes.items()))
        await self._apply_or_rollback(fresh=True)

    async def _apply_or_rollback(self, *, fresh: bool = False) -> None:
        """Apply the active set; roll back if it fails. ``fresh``: a new activation (not a
        probation resumed after a restart, whose clock goes on)."""
        try:
            await self._apply(self.state.active)
        except EdgeError as err:
            await self._rollback(f"{err.fields.get('reason', 'load')}: {err.message}")
            return
        if self.state.probation is None:  # a fault during the swap rolled it back already
            return
        if fresh:  # the probation's time runs from when the new versions run (a staged load
            # takes a while); the pointer file keeps the activation time until its next write
            self.state.probation.started = max(self.state.probation.started, time.time())
        await self._report()
        self._start_probation()

    async def _apply(self, active: dict[str, Entry], also: set[str] | None = None) -> None:
        """Make the sandbox run ``active`` (OTA-managed components only; ``also``: names to
        unload if ``active`` lacks them); raises on a failed load, after trying every one."""
        async with self._apply_lock:  # a rollback's swap waits for the activation's to finish
            await self._apply_locked(active, also)

    async def _apply_locked(self, active: dict[str, Entry], also: set[str] | None) -> None:
        store = self.store
        assert store is not None
        t0 = time.monotonic()
        managed = set(active) | (also or set())
        prob = self.state.probation
        if prob is not None:
            managed |= set(prob.previous) | set(prob.components)
        first_error: EdgeError | None = None
        for name in sorted(managed):
            entry = active.get(name)
            if name.startswith((CONFIG_PREFIX, POLICY_PREFIX)):
                continue  # applied together below
            if name.startswith(MODEL_PREFIX):
                try:
                    await self._apply_model(name[len(MODEL_PREFIX):], entry)
                except EdgeError as err:
                    first_error = first_error or err
                continue
            loaded = self.sandbox.components.get(name)
            if loaded is not None and entry is not None and loaded.manifest.version == entry.version \
                    and store.manifest(entry).resolve().parent == loaded.manifest.module.parent:
                continue
            if entry is None:
                if loaded is not None:
                    await self.sandbox.unload_component(name)
                continue
            try:
                if loaded is not None:  # a warm standby: the old one ticks until the new one
                    # is initialised, and the new one takes the old one's next scheduled tick
                    await self.sandbox.replace_component(str(store.manifest(entry)))
                else:
                    await self.sandbox.load_component(str(store.manifest(entry)))
            except EdgeError as err:
                log.error("component %s %s did not load: %s", name, entry.version, err.message)
                first_error = first_error or err
        try:  # the policy first: a fragment's live [policy] intervals then apply to it
            self.policies.apply(store.staged, active)
            self.fragments.apply(store.staged, fragment_entries(active))
        except EdgeError as err:
            log.error("config or policy of the bundle did not apply: %s", err.message)
            first_error = first_error or err
        self.last_switch_ms = round((time.monotonic() - t0) * 1000, 2)
        if first_error is not None:
            raise first_error

    async def _apply_model(self, name: str, entry: Entry | None) -> None:
        """Serve ``entry`` as model ``name`` in the inference registry (probed when staged)."""
        if self.models is None:
            return
        if entry is None:
            if name in self._model_loaded:
                await self.models.remove(name)
                del self._model_loaded[name]
            return
        if self._model_loaded.get(name) == entry.sha256:
            return
        from edge.inference.config import ModelSpec

        assert self.store is not None
        await self.models.load(ModelSpec(name, path=str(self.store.model_file(entry))))
        self._model_loaded[name] = entry.sha256

    def _start_probation(self) -> None:
        if self._stopping:
            return
        if self._probation_task is not None:
            self._probation_task.cancel()
        if self.state.probation is not None:
            self._probation_task = asyncio.create_task(self._watch_probation(), name="ota-probation")

    async def _watch_probation(self) -> None:
        """Checks every ``PROBATION_CHECK_S``: each new component still loaded, its ticks within
        budget (the manifest's ``health.max_tick_ms``, else ``ota.tick_budget_ms``), its declared
        heartbeats arriving (``health.publishes``); commits once the probation has run its time.
        Sandbox faults arrive through :meth:`_on_fault`."""
        seen: dict[str, float] = {}
        subs = []
        try:
            prob = self.state.probation
            if prob is None:
                return
            beats: list[tuple[str, str, float]] = []
            for name, entry in prob.components.items():
                loaded = self.sandbox.components.get(name)
                if entry is None or loaded is None:
                    continue
                for subject, every in loaded.manifest.health.publishes:
                    beats.append((name, subject, every))

                    async def on_beat(msg: Any, subject: str = subject) -> None:
                        seen[subject] = time.monotonic()

                    subs.append(await self.ctx.nc.subscribe(subject, cb=on_beat))
            t0 = time.monotonic()
            while True:
                prob = self.state.probation
                if prob is None:
                    return
                failure = self._probation_failure(prob, beats, seen, t0)
                if failure is not None:
                    self._probation_task = None
                    await self._rollback(failure)
                    return
                if time.time() >= prob.started + prob.duration_s:
                    self._probation_task = None
                    await self._commit()
                    return
                await asyncio.sleep(PROBATION_CHECK_S)
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    def _probation_failure(self, prob: Probation, beats: list[tuple[str, str, float]],
                           seen: dict[str, float], t0: float) -> str | None:
        now = time.monotonic()
        for name, entry in prob.components.items():
            if entry is not None and name.startswith(MODEL_PREFIX):
                failure = self._model_failure(name[len(MODEL_PREFIX):], entry)
                if failure is not None:
                    return failure
                continue
            if entry is None or name.startswith((CONFIG_PREFIX, POLICY_PREFIX)):
                continue  # a fragment was validated, a policy compiled before activation
            loaded = self.sandbox.components.get(name)
            if loaded is None:
                return f"component {name} {entry.version} is not running"
            budget = loaded.manifest.health.max_tick_ms or self.cfg.tick_budget_ms
            if budget > 0 and loaded.tick is not None and loaded.tick.stats.ticks > 0 \
                    and loaded.tick.stats.last_ms > budget:
                return (f"budget: component {name} {entry.version} ticked in "
                        f"{loaded.tick.stats.last_ms:.2f} ms, over its {budget:g} ms budget")
            health = loaded.health.last if loaded.health is not None else None
            if health is not None and not health.ok:  # its edge_health export said not OK
                return health.describe(name)
        for name, subject, every in beats:
            last = seen.get(subject, t0)
            if now - last > every:
                return f"health: component {name} published nothing on {subject} for {every:g} s"
        return None

    def _model_failure(self, name: str, entry: Entry) -> str | None:
        """A new model on probation (probed before activation): an inference error, or a median
        latency over ``ota.model_latency_ms``, of the version it serves fails it."""
        if self.models is None:
            return None
        st = self.models.status().get(name)
        if st is None or self._model_loaded.get(name) != entry.sha256:
            return None  # not serving this version (yet): nothing it ran to judge
        if st.errors:
            return (f"model: {name} {entry.version} failed {st.errors} inference(s) on "
                    f"probation: {st.last_error}")
        budget = self.cfg.model_latency_ms
        if budget > 0 and st.invocations and st.p50_ms is not None and st.p50_ms > budget:
            return (f"budget: model {name} {entry.version} ran in {st.p50_ms:.2f} ms (median), "
                    f"over its {budget:g} ms budget")
        return None

    def _on_fault(self, component: str, fault: SandboxError) -> None:
        prob = self.state.probation
        if prob is None or prob.components.get(component) is None:
            return
        reason = f"{fault.reason or 'fault'}: {fault.message}"
        self._fault_at = time.monotonic()
        if self._probation_task is not None:
            self._probation_task.cancel()
            self._probation_task = None
        self._tasks.append(asyncio.create_task(self._rollback(reason), name="ota-rollback"))

    async def _decide(self, verdict: Coroutine[Any, Any, None]) -> None:
        """Run a commit or a rollback to its end even if the caller is cancelled (a stop): the
        pointer write, the counters and the outcome event go together; stop() waits for it."""
        task = asyncio.ensure_future(verdict)
        self._deciding = task
        await asyncio.shield(task)

    async def _commit(self) -> None:
        prob = self.state.probation
        if prob is None or self._fault_at is not None or self._stopping:  # a fault's rollback is
            return  # on its way, or the device stops: the next start resumes the probation
        await self._decide(self._commit_now(prob))

    async def _commit_now(self, prob: Probation) -> None:
        self.state.previous = dict(prob.previous)
        self.state.revision = prob.revision
        self.state.probation = None
        self._history("committed", prob.revision, "")
        await self._save()
        assert self.store is not None
        await asyncio.to_thread(self.store.collect, self.state)
        self.counters["committed"] += 1
        log.info("revision %s committed", prob.revision)
        await self._outcome("committed", {"revision": prob.revision,
                                          "components": {k: v.version if v else None
                                                         for k, v in prob.components.items()}})

    async def _rollback(self, reason: str) -> None:
        prob = self.state.probation
        if prob is None:
            return
        if self._stopping:  # what fails while the device stops is the stop, not the versions
            log.info("revision %s not rolled back while stopping (%s); the next start resumes "
                     "its probation", prob.revision, reason)
            return
        await self._decide(self._rollback_now(prob, reason))

    async def _rollback_now(self, prob: Probation, reason: str) -> None:
        for name, entry in prob.components.items():
            if entry is not None:
                self.state.bad[f"{name}@{entry.version}"] = reason
        active = dict(self.state.active)
        for name, entry in prob.previous.items():
            if entry is None:
                active.pop(name, None)
            else:
                active[name] = entry
        self.state.active = active
        self.state.probation = None
        self._history("rolled_back", prob.revision, reason)
        await self._save()
        log.warning("revision %s rolled back: %s", prob.revision, reason)
        # previous components back, with their KV (the bucket is per component name)
        try:
            await self._apply(active, set(prob.components))
        except EdgeError as err:
            log.error("rollback of %s: the previous version did not load: %s", prob.revision, err.message)
        self.counters["rolled_back"] += 1
        if self._fault_at is not None:
            self.last_rollback_ms = round((time.monotonic() - self._fault_at) * 1000, 2)
            self._fault_at = None
        await self._outcome("rolled_back", {"revision": prob.revision, "reason": reason,
                                            "components": {k: v.version if v else None
                                                           for k, v in prob.components.items()}})

    async def _refused(self, err: OtaError) -> None:
        self.counters["refused"] += 1
        repeat = self.last_error is not None and self.last_error.get("message") == err.message
        self.last_error = {"t": time.time(), **err.to_dict()}
        if repeat:  # the same refusal again (a retried download): counted, not re-announced
            return
        log.error("update refused: %s", err.message)
        await self._outcome("refused", err.to_dict())

    # -- records ------------------------------------------------------------------------------

    def _history(self, outcome: str, revision: str, reason: str) -> None:
        self.state.history.append({"t": time.time(), "outcome": outcome, "revision": revision, "reason": reason})
        del self.state.history[:-20]

    async def _save(self) -> None:
        """Write the pointer file as the state is now; the write and its fsyncs run in a thread
        (a slow medium must not stall the components' ticks), one save at a time, in order."""
        assert self.store is not None
        data = self.state.to_json()
        async with self._save_lock:
            # shielded: a cancelled caller (stop) never leaves a write landing after the layer stopped
            self._writing = asyncio.ensure_future(asyncio.to_thread(self.store.save_bytes, data))
            await asyncio.shield(self._writing)

    async def _outcome(self, kind: str, body: dict[str, Any]) -> None:
        ctx = self.ctx
        payload = {"device": ctx.device, "t": time.time(), **body}
        ctx.events.emit(subjects.event(ctx.device, "ota", kind), json.dumps(payload).encode())
        await self._report()

    def report(self) -> dict[str, Any]:
        return {"device": self.ctx.device, "t": time.time(), **self.status(),
                "history": self.state.history[-5:]}

    async def _report(self) -> None:
        """What the device runs, as an event on ``edge.<device>.evt.ota.report``: the device's
        EVT stream keeps it while offline and the uplink carries it into the hub's
        ``EVT_<device>`` (where :func:`edge.ota.hub.get_report` reads the last one). Sent when it
        changes, and at least every ``REPORT_EVERY_S``."""
        body = self.report()
        key = json.dumps({k: v for k, v in body.items() if k not in ("t", "reconciles", "hub_errors",
                                                                      "refused", "bytes_in")},
                         sort_keys=True, default=str)
        now = time.monotonic()
        if key == self._last_report and now - self._last_report_at < REPORT_EVERY_S:
            return
        self._last_report, self._last_report_at = key, now
        ctx = self.ctx
        ctx.events.emit(subjects.event(ctx.device, "ota", "report"), json.dumps(body, default=str).encode())
