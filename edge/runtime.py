"""The composition root: builds a running device from its :class:`~edge.config.DeviceConfig`.

Start order: data dir -> NATS (embedded server or external URL) -> world restored from KV ->
sandbox pool and components -> device API -> drivers -> persister. Stop runs in reverse, collects
every error instead of stopping at the first, and always ends with a final state flush.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from edge import subjects
from edge.config import DeviceConfig
from edge.errors import ComponentLoadError, EdgeError, NatsError, SandboxError
from edge.natsd.server import NatsServer
from edge.services.api import DeviceApi
from edge.wasm.manifest import Manifest, load_manifest
from edge.wasm.pool import SandboxPool
from edge.world.persist import Persister
from edge.world.scheduler import MessagePump, SharedBatch, TickLoop
from edge.world.schema import SchemaRegistry
from edge.world.store import F64Array, World

log = logging.getLogger("edge.runtime")

COMPONENT_KV_BUCKET = "edge-components"  # private key-value state of wasm components
RUNTIME_FILE = "runtime.json"  # written into the data dir so the CLI can find a running device
CONNECT_TIMEOUT = 5.0  # seconds
DEMO_HW_ENTITY = "drone-0"  # the demo drone whose components come from emulated hardware


class WasmTickRunner:
    """Adapts a component in the sandbox pool to the scheduler's TickRunner protocol."""

    def __init__(self, pool: SandboxPool, name: str) -> None:
        self.pool = pool
        self.name = name

    def buffers(self, n: int) -> list[F64Array]:
        return self.pool.batch(self.name, n)

    async def run(self, n: int, dt: float, ids: Any) -> bool:
        return await self.pool.tick(self.name, n, dt, ids)

    # [shared world columns] the scheduler's optional SharedTickRunner method: the worker reads
    # and writes the world's shared columns in place (see edge.world.scheduler, docs/sandbox.md).
    async def run_shared(self, batch: SharedBatch, dt: float, on_done: Callable[[], None]) -> bool | None:
        return await self.pool.tick_shared(
            self.name, batch.n, dt, version=batch.version,
            columns=[(r.path, r.ino, r.nbytes) for r in batch.refs],
            index=batch.index, ids=batch.ids, on_done=on_done,
        )


@dataclass
class LoadedComponent:
    manifest: Manifest
    tick: TickLoop | None = None
    pump: MessagePump | None = None
    subs: list[Any] = field(default_factory=list)


class Runtime:
    """One device: its NATS, world, components, API and drivers."""

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.device = config.device
        self.server: NatsServer | None = None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        schemas = SchemaRegistry()
        for schema in config.schemas:
            schemas.register(schema)
        self.world = World(schemas)
        self.persister: Persister | None = None
        self.pool: SandboxPool | None = None
        self.api: DeviceApi | None = None
        self.components: dict[str, LoadedComponent] = {}
        self.faults: list[dict[str, Any]] = []
        self.extras: list[Any] = []  # parts with start()/stop()/status() added by later layers
        self._component_kv: KeyValue | None = None
        self.started_at: float | None = None
        self.ready_s: float | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        t0 = time.monotonic()
        cfg = self.config
        self.extras[:0] = build_layers(cfg)  # config errors surface before anything starts
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        url = await self._start_nats()
        self.nc = await nats.connect(
            url,
            name=f"edge-runtime-{self.device}",
            connect_timeout=CONNECT_TIMEOUT,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            user_credentials=cfg.nats.credentials,
            error_cb=self._nats_error,
        )
        self.js = self.nc.jetstream()
        self.persister = Persister(
            self.world, self.js, bucket=cfg.state.bucket, interval=cfg.state.persist_interval
        )
        restored = await self.persister.restore()
        log.info("restored %d entities from bucket %s", restored, cfg.state.bucket)
        for spec in cfg.entities:
            if spec.id not in self.world:
                self.world.spawn(spec.id, spec.kind, spec.labels, spec.components)
        self.pool = SandboxPool(
            self.device,
            self,
            recycle_after=cfg.sandbox.recycle_after,
            deadline_s=cfg.sandbox.deadline,
            workers=cfg.sandbox.workers,
        )
        await self.pool.start()
        self.api = DeviceApi(self.device, self.world, self)
        await self.api.start(self.nc)
        for extra in self.extras:  # before the components: their edge_init may already infer
            await extra.start(self)
        for manifest_path in cfg.components:
            try:
                await self.load_component(str(manifest_path))
            except EdgeError as err:  # a bad component is reported; the device still comes up
                log.error("component %s not loaded: %s", manifest_path, err)
                self._record_fault(str(manifest_path), "load", err.message)
        await self.persister.start()
        self.started_at = time.time()
        self.ready_s = time.monotonic() - t0
        self._write_runtime_file(url)
        log.info("device %s ready in %.2f s (nats %s)", self.device, self.ready_s, url)

    async def stop(self) -> None:
        errors: list[str] = []

        async def step(name: str, coro: Any) -> None:
            try:
                await asyncio.wait_for(coro, 10)
            except Exception as err:
                errors.append(f"{name}: {type(err).__name__}: {err}")

        for extra in reversed(self.extras):
            await step(type(extra).__name__, extra.stop())
        if self.api is not None:
            await step("api", self.api.stop())
        for name in list(self.components):
            await step(f"component {name}", self._stop_component(name))
        if self.pool is not None:
            await step("sandbox", self.pool.stop())
        if self.persister is not None:
            await step("state flush", self.persister.stop())
        if self.nc is not None:
            await step("nats connection", self.nc.drain())
        if self.server is not None:
            await step("nats-server", self.server.stop())
        with_runtime_file = self.config.data_dir / RUNTIME_FILE
        with_runtime_file.unlink(missing_ok=True)
        for err in errors:
            log.error("shutdown: %s", err)
        log.info("device %s stopped", self.device)

    async def _start_nats(self) -> str:
        cfg = self.config
        if cfg.nats.url:
            return cfg.nats.url
        from edge.sync.leaf import device_server_options
        from edge.uplink import hub_link

        hub = hub_link(cfg.hub, file=cfg.file, base=_config_base(cfg))
        opts = device_server_options(
            self.device,
            cfg.data_dir / "nats",
            hub,
            port=cfg.nats.port,
            max_store_bytes=cfg.nats.max_store_bytes,
            sync_interval=None,  # the server's default fsync interval; see docs/sync.md
            monitor_port=0 if hub else None,  # the uplink watches the leaf link through it
        )
        self.server = NatsServer(opts)
        await self.server.start(supervise=True)
        return self.server.url

    async def _nats_error(self, err: Exception) -> None:
        log.warning("nats: %s", err)

    def _write_runtime_file(self, url: str) -> None:
        info = {"device": self.device, "url": url, "pid": os.getpid(), "started": self.started_at}
        path = self.config.data_dir / RUNTIME_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)

    def camera_frames(self, camera: str | None = None) -> Any:
        """The latest-frame slot of a camera driver (first camera if ``camera`` is None), or None."""
        for extra in self.extras:
            frames = getattr(extra, "frames", None)
            if callable(frames):
                slot = frames(camera)
                if slot is not None:
                    return slot
        return None

    # -- components ---------------------------------------------------------------------------

    async def load_component(self, manifest_path: str) -> dict[str, Any]:
        assert self.pool is not None and self.nc is not None
        manifest = load_manifest(Path(manifest_path), self.device)
        if manifest.name in self.components:
            raise ComponentLoadError(
                f"component '{manifest.name}' is already loaded; unload it first", component=manifest.name
            )
        for name in manifest.columns:
            try:
                self.world.column(name)
            except EdgeError as err:
                raise ComponentLoadError(
                    f"component '{manifest.name}' queries {name}: {err.message}", component=manifest.name
                ) from err
        kv = await self._component_state(manifest.name)
        await self.pool.load(manifest, kv)
        loaded = LoadedComponent(manifest)
        if manifest.tick_hz > 0:
            loaded.tick = TickLoop(
                self.world,
                WasmTickRunner(self.pool, manifest.name),
                read=manifest.read,
                write=manifest.write,
                hz=manifest.tick_hz,
            )
            loaded.tick.start()
        if manifest.subscribe:
            pool = self.pool
            name = manifest.name

            async def deliver(batch: Sequence[tuple[str, bytes]]) -> None:
                await pool.deliver(name, batch)

            pump = MessagePump(manifest.name, deliver)
            pump.start()
            loaded.pump = pump
            for subject in manifest.subscribe:

                async def on_msg(msg: Msg, pump: MessagePump = pump) -> None:
                    pump.put(msg.subject, msg.data)

                loaded.subs.append(await self.nc.subscribe(subject, cb=on_msg, pending_msgs_limit=100_000))
        self.components[manifest.name] = loaded
        log.info("component %s %s loaded", manifest.name, manifest.version)
        return {"name": manifest.name, "version": manifest.version}

    async def unload_component(self, name: str) -> None:
        if name not in self.components:
            raise ComponentLoadError(f"no component '{name}' is loaded", component=name)
        await self._stop_component(name)
        log.info("component %s unloaded", name)

    async def _stop_component(self, name: str) -> None:
        loaded = self.components.pop(name)
        for sub in loaded.subs:
            await sub.unsubscribe()
        if loaded.tick is not None:
            await loaded.tick.stop()
        if loaded.pump is not None:
            await loaded.pump.stop()
        if self.pool is not None:
            await self.pool.unload(name)

    async def _component_bucket(self) -> KeyValue:
        if self._component_kv is None:
            assert self.js is not None
            try:
                self._component_kv = await self.js.key_value(COMPONENT_KV_BUCKET)
            except BucketNotFoundError:
                self._component_kv = await self.js.create_key_value(bucket=COMPONENT_KV_BUCKET, history=1)
        return self._component_kv

    async def _component_state(self, component: str) -> dict[str, bytes]:
        kv = await self._component_bucket()
        out: dict[str, bytes] = {}
        watcher = await kv.watch(f"{component}.>", ignore_deletes=True)
        try:
            while (entry := await watcher.updates(timeout=CONNECT_TIMEOUT)) is not None:
                out[entry.key[len(component) + 1 :]] = entry.value or b""
        finally:
            await watcher.stop()
        return out

    # -- HostCallbacks for the sandbox pool -----------------------------------------------------

    async def publish(self, component: str, subject: str, data: bytes) -> None:
        if self.nc is not None:
            await self.nc.publish(subject, data)

    async def kv_put(self, component: str, key: str, value: bytes) -> None:
        kv = await self._component_bucket()
        await kv.put(f"{component}.{key}", value)

    async def infer(self, component: str, model: str, data: bytes) -> bytes:
        """Run ``model`` for a wasm component's ``infer`` import (the pool checked the grant).

        ``data`` is every input tensor's bytes, in input order, each in the tensor's dtype and
        shape; the result is every output's bytes in output order (float32 for float and
        dequantized models). Raises InferenceError: reason ``unknown-model`` (no such model, or
        no perception layer), ``input-size`` (``expected`` = bytes wanted), or the model's own.
        """
        import numpy as np

        from edge.inference.errors import InferenceError

        registry = next((r for e in self.extras if (r := getattr(e, "registry", None)) is not None), None)
        if registry is None:
            raise InferenceError(
                f"component '{component}' asked for model '{model}', but this device loads no models",
                model=model, reason="unknown-model",
            )
        spec = registry.get(model)
        sizes = [int(np.prod(t.shape, dtype=np.int64)) * t.dtype.itemsize for t in spec.inputs]
        if len(data) != sum(sizes):
            raise InferenceError(
                f"component '{component}': model '{model}' takes {sum(sizes)} input bytes, got {len(data)}",
                model=model, reason="input-size", expected=str(sum(sizes)), got=str(len(data)),
            )
        arrays, pos = [], 0
        for t, size in zip(spec.inputs, sizes, strict=True):
            arrays.append(np.frombuffer(data, dtype=t.dtype, count=size // t.dtype.itemsize, offset=pos).reshape(t.shape))
            pos += size
        outputs = await registry.infer(model, arrays)
        return b"".join(np.ascontiguousarray(o).tobytes() for o in outputs)

    def on_fault(self, component: str, fault: SandboxError) -> None:
        log.warning("component %s fault: %s", component, fault.message)
        self._record_fault(component, fault.reason or "fault", fault.message, export=fault.export)
        if self.nc is not None and self.nc.is_connected:
            body = json.dumps({"component": component, **fault.to_dict()}).encode()
            asyncio.get_running_loop().create_task(
                self.nc.publish(subjects.event(self.device, "runtime", "fault"), body)
            )

    def _record_fault(self, component: str, kind: str, message: str, **extra: Any) -> None:
        self.faults.append({"t": time.time(), "component": component, "kind": kind, "message": message, **extra})
        del self.faults[:-50]

    # -- status -------------------------------------------------------------------------------

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
            out.append(entry)
        return out

    def status(self) -> dict[str, Any]:
        nats_health: dict[str, Any] = {"connected": bool(self.nc and self.nc.is_connected)}
        if self.nc is not None:
            nats_health["url"] = self.nc.connected_url.geturl() if self.nc.connected_url else None
            nats_health["reconnects"] = self.nc.stats.get("reconnects", 0)
        if self.server is not None:
            nats_health["server"] = self.server.health()
        entities = [
            {**m.to_dict(), "components": self.world.components_of(m.id)} for m in self.world.entities()
        ]
        out: dict[str, Any] = {
            "device": self.device,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1) if self.started_at else 0.0,
            "ready_s": round(self.ready_s, 3) if self.ready_s is not None else None,
            "nats": nats_health,
            "state": self.persister.status() if self.persister else {},
            "components": self.components_status(),
            "entities": entities,
            "faults": self.faults[-10:],
        }
        for extra in self.extras:
            section = getattr(extra, "status_section", None)
            if section:
                out[section] = extra.status()
        return out


def build_layers(cfg: DeviceConfig) -> list[Any]:
    """The optional layers the config asks for, in start order: hardware, perception, agents."""
    layers: list[Any] = []
    if cfg.drivers or cfg.demo:
        from edge.hardware import HardwareLayer, build_drivers

        drivers = build_drivers(cfg.drivers, file=cfg.file)
        if cfg.demo:
            from drivers.demo import demo_hardware

            drivers += demo_hardware(cfg.device, DEMO_HW_ENTITY, rundir=str(cfg.data_dir / "emulators"))
        layers.append(HardwareLayer(drivers))
    if cfg.models or cfg.vision:
        from edge.perception import PerceptionLayer

        layers.append(PerceptionLayer.from_config(cfg.models, cfg.vision, file=cfg.file))
    from edge.uplink import UplinkLayer, hub_link, stream_config

    hub = hub_link(cfg.hub, file=cfg.file, base=_config_base(cfg))
    streams = stream_config(cfg.device, cfg.sync, file=cfg.file, bucket=cfg.state.bucket, hub=hub is not None)
    layers.append(UplinkLayer(streams, hub))
    # after the uplink: the decision stream copies records out of the EVT stream it creates
    from edge.agents.config import parse_agents
    from edge.agents.host import AgentHost
    from edge.services.tools import ToolsService, parse_tools_config

    layers.append(ToolsService(parse_tools_config(cfg.tools or None, file=cfg.file)))
    agents = cfg.agents
    if cfg.demo and not agents:
        agents = [{"kind": "follow", "entity": DEMO_HW_ENTITY}]
    layers.append(AgentHost(parse_agents(agents, file=cfg.file)))
    if cfg.demo:
        from edge.agents.actuator import SimActuator

        layers.append(SimActuator())
    return layers


def _config_base(cfg: DeviceConfig) -> Path:
    return Path(cfg.file).resolve().parent if cfg.file else Path.cwd()


async def run_until_signal(runtime: Runtime, stop: asyncio.Event) -> None:
    """Start ``runtime``, wait for ``stop``, then shut it down cleanly."""
    try:
        await runtime.start()
    except EdgeError:
        await runtime.stop()
        raise
    except Exception as err:
        await runtime.stop()
        raise NatsError(f"runtime failed to start: {type(err).__name__}: {err}") from err
    await stop.wait()
    await runtime.stop()
