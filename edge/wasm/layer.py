"""The WebAssembly systems as a layer (``edge status`` section ``components``).

Key components
- :class:`SandboxLayer`: owns the sandbox pool, loads the configured components (manifest ->
  pool -> tick loop and/or message pump), serves load/unload to the device API, and is the
  pool's host: component publishes go to NATS (events through the device's acknowledged
  publisher), private KV writes to the ``edge-components`` bucket, faults into the status and
  onto ``edge.<device>.evt.runtime.fault``; limits that refused a component's effects (publish
  rate, hop limit, KV quota) onto ``edge.<device>.evt.runtime.limit``. Every publish and KV
  write carries the component's name and hop count as headers (:mod:`edge.wasm.origin`), and
  each component's :class:`~edge.wasm.inbox.ComponentInbox` drops its own messages.
- The ``infer`` import is served by the inference bridge the composition root hands in.
- With a policy point (``policy``, :class:`~edge.wasm.host.MessagePolicy`), the pool's effects
  pass it and every message delivered into a component does too (docs/policy.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from edge.errors import ComponentLoadError, EdgeError, SandboxError
from edge.layer import DeviceContext
from edge.errors import LifecycleError
from edge.nats import subjects
from edge.wasm.health import HEALTH_EXPORT, HealthResult, HealthWatch
from edge.wasm.origin import DEFAULT_MAX_HOPS
from edge.wasm.host import InferBridge, MessagePolicy
from edge.wasm.inbox import COMPONENT_KV_BUCKET, ComponentInbox
from edge.wasm.manifest import Manifest, load_manifest, read_module
from edge.wasm.origin import header_bytes, origin_headers, origin_id
from edge.wasm.pool import SandboxPool
from edge.wasm.protocol import CLOCK_LIVE, CLOCK_RECORD
from edge.wasm.record import CallOutputs, RecordingBridge, SandboxRecorder, record_prefix
from edge.world.scheduler import SharedBatch, TickLoop
from edge.world.store import F64Array

log = logging.getLogger("edge.wasm.layer")

#: Seconds between two warnings about one component's messages too large for the NATS server.
OVERSIZE_WARN_INTERVAL_S = 5.0

COMPONENT_KV_STREAM = f"KV_{COMPONENT_KV_BUCKET}"  # the JetStream stream behind the bucket
KV_SUBJECT_PREFIX = f"$KV.{COMPONENT_KV_BUCKET}."  # subject of key k: prefix + k
STATE_READ_TIMEOUT_S = 5.0  # seconds to read one key of a component's KV snapshot at load
SWAP_FLUSH_TIMEOUT_S = 10.0  # seconds a swap waits for the old version's queued effects to be handed over
MAX_FAULTS_KEPT = 50
PUMP_PENDING_MSGS = 100_000  # NATS client-side buffer per subscription of a component


class WasmTickRunner:
    """Adapts a component in the sandbox pool to the scheduler's TickRunner protocol."""

    def __init__(self, pool: SandboxPool, name: str,
                 recorder: SandboxRecorder | None = None) -> None:
        self.pool = pool
        self.name = name
        self.recorder = recorder
        self._views: list[F64Array] = []
        self._ids: list[str] = []

    def buffers(self, n: int) -> list[F64Array]:
        self._views = self.pool.batch(self.name, n)
        return self._views

    async def run(self, n: int, dt: float, ids: Any) -> bool:
        rec = self.recorder
        if rec is None:
            return await self.pool.tick(self.name, n, dt, ids)
        # [replay hook] the exact inputs of the call, and the columns it left (edge.wasm.record)
        if ids is not None:
            self._ids = list(ids)
        before = [v.copy() for v in self._views]
        ok = await self.pool.tick(self.name, n, dt, ids)
        clocks, cut = self.pool.tick_clocks(self.name)
        rec.on_tick(self.name, dt, self._ids, before, self._views, ok, clocks, cut)
        return ok

    # [shared world columns] the scheduler's SharedTickRunner method: the worker reads and writes
    # the world's shared columns in place (see edge.world.scheduler, docs/sandbox.md).
    async def run_shared(self, batch: SharedBatch, dt: float, on_done: Callable[[], None]) -> bool | None:
        rec = self.recorder
        nbytes = batch.n * len(batch.refs) * 8
        if rec is not None and rec.records_batch(self.name, nbytes):
            on_done()  # [replay hook] recorded ticks use copies (edge.wasm.record)
            return None
        ok = await self.pool.tick_shared(
            self.name, batch.n, dt, version=batch.version,
            columns=[(r.path, r.ino, r.nbytes) for r in batch.refs],
            index=batch.index, ids=batch.ids, on_done=on_done,
        )
        if rec is not None and ok is not None:  # [replay hook] too large to record
            rec.on_tick_unrecorded(self.name, dt, nbytes, ok)
        return ok


@dataclass
class LoadedComponent:
    manifest: Manifest
    tick: TickLoop | None = None
    pump: ComponentInbox | None = None
    subs: list[Subscription] = field(default_factory=list)
    health: HealthWatch | None = None  # its edge_health calls, if it exports one


@dataclass(frozen=True)
class SandboxSettings:
    deadline_s: float
    recycle_after: int
    workers: int
    max_worker_rss_mb: int = 96  # a worker past this RSS is replaced (MiB); 0 = never
    max_hops: int = DEFAULT_MAX_HOPS  # handlers a message may pass before publishes are refused


class SandboxLayer:
    """Runs the device's WebAssembly components in the sandbox."""

    name = "components"

    def __init__(self, manifests: Sequence[Path], settings: SandboxSettings, *,
                 infer: InferBridge | None = None) -> None:
        self.manifests = list(manifests)
        self.settings = settings
        self.bridge = infer
        self.policy: MessagePolicy | None = None  # set by the composition root
        self.components: dict[str, LoadedComponent] = {}
        self.faults: list[dict[str, Any]] = []
        self.pool: SandboxPool | None = None
        self._ctx: DeviceContext | None = None
        self._kv: KeyValue | None = None
        #: [replay hook] told what each component saw and did; None = not recorded (edge.wasm.record)
        self.recorder: SandboxRecorder | None = None
        # [ota] called with (component, fault) after each fault is recorded (edge.ota probation)
        self.fault_listeners: list[Callable[[str, SandboxError], None]] = []
        #: per component: messages too large for the server's max_payload, and when last warned
        self.oversize: dict[str, int] = {}
        self._oversize_warned: dict[str, float] = {}

    @property
    def ctx(self) -> DeviceContext:
        if self._ctx is None:
            raise LifecycleError("the sandbox layer is not started; components load after start(ctx)")
        return self._ctx

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        s = self.settings
        rss = s.max_worker_rss_mb * 2**20 if s.max_worker_rss_mb > 0 else None
        bridge = self.bridge
        if bridge is not None and self.recorder is not None:  # [replay hook] answers recorded
            bridge = RecordingBridge(bridge, self.recorder)
        self.pool = SandboxPool(ctx.device, self, infer=bridge, recycle_after=s.recycle_after,
                                recycle_rss_bytes=rss, deadline_s=s.deadline_s, workers=s.workers,
                                max_hops=s.max_hops, policy=self.policy,
                                clock=CLOCK_LIVE if self.recorder is None else CLOCK_RECORD)
        if self.recorder is not None:  # [replay hook] the clock reads of message calls
            self.pool.message_clocks = self.recorder.on_message_clocks
        await self.pool.start()
        for manifest_path in self.manifests:
            try:
                await self.load_component(str(manifest_path))
            except EdgeError as err:  # a bad component is reported; the device still comes up
                log.error("component %s not loaded: %s", manifest_path, err)
                self._record_fault(str(manifest_path), "load", err.message)

    async def stop(self) -> None:
        errors: list[str] = []
        for name in list(self.components):
            try:
                await self._stop_component(name)
            except Exception as err:  # noqa: BLE001  every component gets its stop
                errors.append(f"component {name}: {type(err).__name__}: {err}")
        if self.pool is not None:
            await self.pool.stop()
            self.pool = None
        if errors:
            raise EdgeError("; ".join(errors))

    def status(self) -> list[dict[str, Any]]:
        return self.components_status()

    # -- components ---------------------------------------------------------------------------

    async def load_component(self, manifest_path: str, *, tick_since: float | None = None) -> dict[str, Any]:
        """Load a component. ``tick_since`` (the last tick of the version it replaces, an update's
        swap) continues that tick schedule (:meth:`TickLoop.start`)."""
        ctx = self.ctx
        pool = self.pool
        if pool is None:
            raise LifecycleError("the sandbox is stopped; no component can be loaded")
        manifest = load_manifest(Path(manifest_path), ctx.device)
        if manifest.name in self.components:
            raise ComponentLoadError(
                f"component '{manifest.name}' is already loaded; unload it first", component=manifest.name
            )
        for column in manifest.columns:
            try:
                ctx.world.column(column)
            except EdgeError as err:
                raise ComponentLoadError(
                    f"component '{manifest.name}' queries {column}: {err.message}", component=manifest.name
                ) from err
        revisions: dict[str, int] = {}
        kv = await self._component_state(manifest.name, revisions)
        await pool.load(manifest, kv)
        rec = self.recorder
        if rec is not None:  # [replay hook] the version that runs, its KV as loaded, init's clock
            clocks, cut = pool.init_clocks(manifest.name)
            rec.on_load(manifest, await asyncio.to_thread(read_module, manifest), kv, clocks, cut,
                        revisions)
        loaded = LoadedComponent(manifest)
        if HEALTH_EXPORT in pool.component(manifest.name).info.exports:
            loaded.health = HealthWatch(pool, manifest.name, manifest.health, self.on_health)
            loaded.health.start()
        if manifest.tick_hz > 0:
            loaded.tick = TickLoop(ctx.world, WasmTickRunner(pool, manifest.name, rec), read=manifest.read,
                                   write=manifest.write, hz=manifest.tick_hz)
            loaded.tick.start(since=tick_since)
        await self._subscribe(loaded)
        self.components[manifest.name] = loaded
        log.info("component %s %s loaded", manifest.name, manifest.version)
        return {"name": manifest.name, "version": manifest.version}

    async def _subscribe(self, loaded: LoadedComponent) -> None:
        """The component's inbox and its subscriptions (its manifest's ``subscribe``)."""
        ctx = self.ctx
        pool = self.pool
        assert pool is not None
        rec = self.recorder
        manifest = loaded.manifest
        if manifest.subscribe:
            name = manifest.name
            policy = self.policy
            records = record_prefix(ctx.device)

            async def deliver(batch: list[tuple[str, bytes]], hops: int) -> None:
                if policy is not None and not (batch := policy.deliveries(name, batch)):
                    return
                if rec is not None:  # [replay hook]
                    rec.on_deliver(name, batch, hops)
                await pool.deliver(name, batch, hops)

            pump = ComponentInbox(manifest.name, deliver, origin=origin_id(name, ctx.device),
                                  receive_own=manifest.receive_own)
            pump.start()
            loaded.pump = pump
            for subject in manifest.subscribe:

                async def on_msg(msg: Msg, pump: ComponentInbox = pump) -> None:
                    if msg.subject.startswith(records):  # [replay hook] records about components
                        return  # are not theirs to hear: recording them would feed back
                    pump.put(msg.subject, msg.data, msg.headers)

                loaded.subs.append(await ctx.nc.subscribe(subject, cb=on_msg, pending_msgs_limit=PUMP_PENDING_MSGS))

    async def replace_component(self, manifest_path: str) -> dict[str, Any]:
        """Swap a loaded component for another version with a warm standby.

        The new version is staged beside the old one (:meth:`SandboxPool.stage`: compiled,
        instantiated, ``edge_init`` run with the component's KV as it is: the old one's queued
        writes flushed to the bucket, then the bucket read) while
        the old keeps ticking and handling messages; then the old stops after its current tick
        (:meth:`TickLoop.stop_after_tick`), the new one is promoted and takes the very next
        scheduled tick. The inbox and subscriptions carry over when the subscriptions are the
        same (otherwise they are set up again). A staged load that fails raises
        ComponentLoadError and leaves the old version running untouched.

        Falls back to unload + load when the pool does not know the component (a cold swap;
        also inside :meth:`SandboxPool.promote` when the old one wrote its KV meanwhile). The
        recorder is told the old version's unload and the new one's load
        (with the KV its ``edge_init`` was given) at the promotion.
        Returns ``{"name", "version", "warm"}``.
        """
        ctx = self.ctx
        pool = self.pool
        if pool is None:
            raise LifecycleError("the sandbox is stopped; no component can be loaded")
        manifest = load_manifest(Path(manifest_path), ctx.device)
        name = manifest.name
        loaded = self.components.get(name)
        if loaded is None:
            raise ComponentLoadError(f"no component '{name}' is loaded to replace", component=name)
        if not pool.can_stage(name):
            since = loaded.tick.last_at if loaded.tick is not None else None
            await self.unload_component(name)
            out = await self.load_component(manifest_path, tick_since=since)
            return {**out, "warm": False}
        for column in manifest.columns:
            try:
                ctx.world.column(column)
            except EdgeError as err:
                raise ComponentLoadError(
                    f"component '{name}' queries {column}: {err.message}", component=name
                ) from err
        # the state as it is: the old one's queued writes flushed, then the bucket read (also
        # what others wrote there); the old one's writes from here on make promote() go cold
        base = pool.kv_view(name)
        try:  # a store that takes no writes holds them for retry (edge.wasm.effects): no swap then
            await asyncio.wait_for(pool.effects.join(), SWAP_FLUSH_TIMEOUT_S)
        except TimeoutError:
            raise ComponentLoadError(
                f"component '{name}' cannot be swapped: its queued KV writes were not acknowledged "
                f"within {SWAP_FLUSH_TIMEOUT_S:g} s (is JetStream up?); the running version runs on",
                component=name) from None
        revisions: dict[str, int] = {}
        kv = await self._component_state(name, revisions)
        await pool.stage(manifest, kv, base=base)  # raises: the old one runs on
        if loaded.health is not None:  # no health call into the old one while it is swapped out
            await loaded.health.stop()
        since = await loaded.tick.stop_after_tick() if loaded.tick is not None else None
        rec = self.recorder
        try:
            warm = await pool.promote(name, on_swap=(
                None if rec is None else lambda: rec.on_unload(name)))  # [replay hook]
        except EdgeError:
            state = "unloaded"
            with contextlib.suppress(SandboxError):
                state = pool.state(name)
            if state != "unloaded":  # the old instance is untouched: it ticks on, same schedule
                if loaded.tick is not None:
                    loaded.tick.start(since=since)
                if loaded.health is not None:
                    loaded.health.start()
            else:  # a cold load after the promotion failed: nothing of it is left running
                self.components.pop(name, None)
                for sub in loaded.subs:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                if loaded.pump is not None:
                    await loaded.pump.stop()
            raise
        if rec is not None:  # [replay hook] the version that runs, its KV as given, init's clock
            clocks, cut = pool.init_clocks(name)
            rec.on_load(manifest, await asyncio.to_thread(read_module, manifest),
                        kv if warm else pool.kv_view(name), clocks, cut,
                        revisions if warm else None)
        old = loaded.manifest
        same_subs = (old.subscribe, old.receive_own) == (manifest.subscribe, manifest.receive_own)
        loaded.manifest = manifest
        loaded.tick = None
        loaded.health = None  # the new version's own health calls, if it exports edge_health
        if HEALTH_EXPORT in pool.component(name).info.exports:
            loaded.health = HealthWatch(pool, name, manifest.health, self.on_health)
            loaded.health.start()
        if manifest.tick_hz > 0:
            loaded.tick = TickLoop(ctx.world, WasmTickRunner(pool, name, rec), read=manifest.read,
                                   write=manifest.write, hz=manifest.tick_hz)
            loaded.tick.start(since=since)
        if not same_subs:
            for sub in loaded.subs:
                await sub.unsubscribe()
            if loaded.pump is not None:
                await loaded.pump.stop()
            loaded.subs, loaded.pump = [], None
            await self._subscribe(loaded)
        log.info("component %s %s -> %s (%s swap)", name, old.version, manifest.version,
                 "warm" if warm else "cold")
        return {"name": name, "version": manifest.version, "warm": warm}

    async def unload_component(self, name: str) -> None:
        if name not in self.components:
            raise ComponentLoadError(f"no component '{name}' is loaded", component=name)
        await self._stop_component(name)
        log.info("component %s unloaded", name)

    async def _stop_component(self, name: str) -> None:
        loaded = self.components.pop(name)
        if loaded.health is not None:
            await loaded.health.stop()
        for sub in loaded.subs:
            await sub.unsubscribe()
        if loaded.tick is not None:
            await loaded.tick.stop()
        if loaded.pump is not None:
            await loaded.pump.stop()
        if self.pool is not None:
            await self.pool.unload(name)
        if self.recorder is not None:  # [replay hook]
            self.recorder.on_unload(name)

    def wasm_agents(self) -> list[str]:
        """Loaded components that both subscribe and publish: they act as agents."""
        return [n for n, c in self.components.items() if c.manifest.subscribe and c.manifest.publish]

    def components_status(self) -> list[dict[str, Any]]:
        pool_status = {s["name"]: s for s in (self.pool.status() if self.pool else [])}
        out = []
        for name, loaded in sorted(self.components.items()):
            entry = dict(pool_status.get(name, {"name": name, "state": "unknown"}))
            entry["version"] = loaded.manifest.version
            if loaded.tick is not None:
                entry["tick_hz"] = loaded.manifest.tick_hz
                entry["tick"] = loaded.tick.stats.to_dict()
            if loaded.pump is not None:
                entry["inbox"] = loaded.pump.to_dict()
            if name in self.oversize:  # messages too large for the server's max_payload
                entry["oversize"] = self.oversize[name]
            entry["health"] = loaded.health.to_dict() if loaded.health is not None else None
            out.append(entry)
        return out

    # -- component KV ---------------------------------------------------------------------------

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            js = self.ctx.js
            try:
                self._kv = await js.key_value(COMPONENT_KV_BUCKET)
            except BucketNotFoundError:
                self._kv = await js.create_key_value(bucket=COMPONENT_KV_BUCKET, history=1)
        return self._kv

    async def _component_state(self, component: str,
                               revisions: dict[str, int] | None = None) -> dict[str, bytes]:
        """The component's private keys, read without a consumer.

        A ``kv.watch`` here left one ephemeral consumer per load on the bucket's stream (nats-py
        unsubscribes but does not delete it; the server drops it after 5 min of inactivity):
        2,000 load/unload cycles made 2,000 consumers. Instead the keys come from the stream's
        per-subject state (one ``STREAM.INFO`` with a subject filter) and each value from a
        direct get.
        """
        kv = await self._bucket()
        prefix = f"{component}."
        info = await self.ctx.js.stream_info(COMPONENT_KV_STREAM,
                                             subjects_filter=f"{KV_SUBJECT_PREFIX}{prefix}>")
        out: dict[str, bytes] = {}
        for subject in sorted(info.state.subjects or {}):
            key = subject[len(KV_SUBJECT_PREFIX):]
            try:
                entry = await asyncio.wait_for(kv.get(key), STATE_READ_TIMEOUT_S)
            except KeyNotFoundError:  # deleted or purged: its last message is a marker
                continue
            out[key[len(prefix):]] = entry.value or b""
            if revisions is not None and entry.revision is not None:  # [replay hook]
                revisions[key[len(prefix):]] = entry.revision
        return out

    # -- the pool's host callbacks ----------------------------------------------------------------

    async def publish(self, component: str, subject: str, data: bytes, hops: int) -> None:
        # A component's publish is a core NATS publish (docs/abi.md): its messages can be a
        # high-rate stream, and the device streams capture those on evt/tele subjects. The
        # runtime's own records about components (faults) go through the acknowledged publisher.
        ctx = self.ctx
        headers = origin_headers(origin_id(component, ctx.device), hops)
        size = len(data) + header_bytes(headers)
        if size > ctx.nc.max_payload:
            # nats-server would close the device's connection (headers count in its limit),
            # and nats-py does not reconnect after that: drop this one message instead
            self._drop_oversize(component, subject, size, ctx.nc.max_payload)
            return
        await ctx.nc.publish(subject, data, headers=headers)

    def _drop_oversize(self, component: str, subject: str, size: int, limit: int) -> None:
        count = self.oversize[component] = self.oversize.get(component, 0) + 1
        now = time.monotonic()
        if now - self._oversize_warned.get(component, -OVERSIZE_WARN_INTERVAL_S) >= OVERSIZE_WARN_INTERVAL_S:
            self._oversize_warned[component] = now
            log.warning("component '%s': a message on %s of %d bytes with its headers is over the "
                        "NATS server's max_payload of %d bytes; dropped (%d so far)",
                        component, subject, size, limit, count)

    async def kv_put(self, component: str, key: str, value: bytes, hops: int) -> None:
        # a KV put is a JetStream publish on the key's subject: with the origin headers, a
        # component subscribed to $KV.> does not hear its own writes either (edge.wasm.origin)
        await self._bucket()
        ctx = self.ctx
        revision: int | None = None
        try:
            ack = await ctx.js.publish(f"{KV_SUBJECT_PREFIX}{component}.{key}", value,
                                       headers=origin_headers(origin_id(component, ctx.device), hops))
            revision = ack.seq
        finally:
            if self.recorder is not None:  # [replay hook] the write, and the revision it got
                self.recorder.on_kv_put(component, key, value, revision)

    def on_call_outputs(self, component: str, outputs: CallOutputs) -> None:
        """[replay hook] a call's own outputs, before the effects pipeline (edge.wasm.record)."""
        if self.recorder is not None:
            self.recorder.on_outputs(component, outputs)

    def on_limit(self, component: str, limit: str, dropped: int) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        body = json.dumps({"component": component, "limit": limit, "dropped": dropped}).encode()
        ctx.events.emit(subjects.event(ctx.device, "runtime", "limit"), body)

    def on_health(self, component: str, result: HealthResult) -> None:
        """A not-OK ``edge_health`` answer: logged and sent on ``evt.runtime.health`` with the
        component's count of them (OTA probation rolls back on it by itself)."""
        ctx = self._ctx
        loaded = self.components.get(component)
        if result.ok or ctx is None or loaded is None or loaded.health is None:
            return
        log.warning("component %s: %s", component, result.describe(component))
        body = json.dumps({"component": component, "version": loaded.manifest.version,
                           "message": result.describe(component), "not_ok": loaded.health.not_ok,
                           **result.to_dict()}).encode()
        ctx.events.emit(subjects.event(ctx.device, "runtime", "health"), body)

    def on_fault(self, component: str, fault: SandboxError) -> None:
        log.warning("component %s fault: %s", component, fault.message)
        self._record_fault(component, fault.reason or "fault", fault.message, export=fault.export)
        ctx = self._ctx
        if ctx is not None:
            body = json.dumps({"component": component, **fault.to_dict()}).encode()
            ctx.events.emit(subjects.event(ctx.device, "runtime", "fault"), body)
        for listener in list(self.fault_listeners):  # [ota] probation watches faults
            try:
                listener(component, fault)
            except Exception:
                log.exception("fault listener failed for component '%s'", component)

    def _record_fault(self, component: str, kind: str, message: str, **extra: Any) -> None:
        self.faults.append({"t": time.time(), "component": component, "kind": kind, "message": message, **extra})
        del self.faults[:-MAX_FAULTS_KEPT]
