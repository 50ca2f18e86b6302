"""The composition root: builds a running device from its :class:`~edge.config.DeviceConfig`.

Start: layers built from the (already validated) config -> data dir -> NATS (embedded server or
external URL) -> the event publisher -> world restored from KV -> the command router (the one
subscriber of ``edge.<d>.cmd.*.*``) -> the device context -> the layers in order::

    state (write-behind persister) -> policy (the policy point's admission check on the router)
    -> safety (the envelope's guard on the router)
    -> sync (device streams, leaf link) -> [heartbeat] -> api -> drivers
    -> inference -> tools -> agents -> [demo actuator] -> [recorder] -> components (wasm) -> [ota]
    -> [extra layers]

Stop runs the layers in reverse (each under a timeout, every error collected), then the command
router, the event publisher's flush, the NATS connection and nats-server. The state layer stops last of the layers,
so its final flush sees every write. This is the only module that knows every layer: layers are
given their collaborators here, typed, and never look each other up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from edge.config import DeviceConfig
from edge.errors import EdgeError, NatsError
from edge.layer import DeviceContext, Layer, LayerStack
from edge.errors import LifecycleError
from edge.nats.commands import CommandRouter
from edge.nats.events import DeviceEvents
from edge.nats.server import NatsServer
from edge.nats.storage import StoreLimits, check_reservations, store_limits
from edge.tasks import bounded
from edge.wasm.layer import SandboxLayer, SandboxSettings
from edge.wasm.pool import SandboxPool
from edge.world.persist import Persister
from edge.world.schema import SchemaRegistry
from edge.world.store import World

log = logging.getLogger("edge.runtime")

RUNTIME_FILE = "runtime.json"  # written into the data dir so the CLI can find a running device
CONNECT_TIMEOUT = 5.0  # seconds
STOP_STEP_TIMEOUT_S = 10.0  # seconds each shutdown step may take
EVENT_FLUSH_TIMEOUT_S = 5.0  # seconds the outbox gets at shutdown to deliver what it holds


class Runtime:
    """One device: its NATS, world and layers."""

    def __init__(self, config: DeviceConfig, *, layers: list[Layer] | None = None,
                 record: bool = True) -> None:
        self.config = config
        self.device = config.device
        self.server: NatsServer | None = None
        self.store_limits: StoreLimits | None = None  # the embedded server's JetStream limits
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        schemas = SchemaRegistry()
        for schema in config.schemas:
            schemas.register(schema)
        self.world = World(schemas)
        self.persister: Persister | None = None
        self.context: DeviceContext | None = None
        self.events: DeviceEvents | None = None
        self.commands: CommandRouter | None = None
        self.sandbox = sandbox_layer(config)
        self._extra: list[Layer] = list(layers or [])
        self.record = record  # the replay recorder (docs/replay.md); False: nothing is recorded
        self.layers: LayerStack | None = None
        self.started_at: float | None = None
        self.ready_s: float | None = None

    @property
    def pool(self) -> SandboxPool | None:
        """The sandbox pool (while the runtime runs)."""
        return self.sandbox.pool

    @property
    def faults(self) -> list[dict[str, Any]]:
        """Recent component faults (load failures, traps, crashes), oldest first."""
        return self.sandbox.faults

    def add_layer(self, layer: Layer) -> None:
        """Add a layer that starts after the built-in ones (before :meth:`start`)."""
        if self.layers is not None:
            raise LifecycleError("layers are fixed once the runtime has started; add them before start()")
        self._extra.append(layer)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.layers is not None:
            raise LifecycleError("the runtime is already started; stop it before starting it again")
        t0 = time.monotonic()
        cfg = self.config
        built = build_layers(cfg, sandbox=self.sandbox, status=self.status,
                             record=self.record and cfg.record)  # before anything starts
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
        if self.store_limits is not None:
            # before anything makes a stream or a bucket: the recovered streams fit the limits
            await check_reservations(self.js, self.store_limits)
        self.events = DeviceEvents(self.nc, self.device)
        await self.events.start()
        self.persister = Persister(self.world, self.js, bucket=cfg.state.bucket, interval=cfg.state.persist_interval)
        restored = await self.persister.restore()
        log.info("restored %d entities from bucket %s", restored, cfg.state.bucket)
        for spec in cfg.entities:
            if spec.id not in self.world:
                self.world.spawn(spec.id, spec.kind, spec.labels, spec.components)
        # the one subscriber of edge.<d>.cmd.*.*: serving before any layer registers, stopped after them
        self.commands = CommandRouter(self.nc, self.device, self.events)
        await self.commands.start()
        self.context = DeviceContext(
            device=self.device, nc=self.nc, js=self.js, world=self.world, data_dir=cfg.data_dir,
            events=self.events, commands=self.commands, server=self.server,
        )
        self.layers = LayerStack([self.persister, *built, *self._extra], stop_timeout=STOP_STEP_TIMEOUT_S)
        await self.layers.start(self.context)
        self.started_at = time.time()
        self.ready_s = time.monotonic() - t0
        self._write_runtime_file(url)
        log.info("device %s ready in %.2f s (nats %s)", self.device, self.ready_s, url)

    async def stop(self) -> None:
        errors: list[str] = []
        if self.layers is not None:
            errors += await self.layers.stop()

        async def step(name: str, coro: Any) -> None:
            try:
                await bounded(coro, STOP_STEP_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001  collected, not raised
                errors.append(f"{name}: {type(err).__name__}: {err}")

        if self.commands is not None:
            await step("command router", self.commands.stop())
        if self.persister is not None and self.layers is None:
            await step("state flush", self.persister.stop())  # start failed before the layers
        if self.events is not None:
            await step("event flush", self.events.stop(EVENT_FLUSH_TIMEOUT_S))
        if self.nc is not None:
            await step("nats connection", self.nc.drain())
        if self.server is not None:
            await step("nats-server", self.server.stop())
        (self.config.data_dir / RUNTIME_FILE).unlink(missing_ok=True)
        for err in errors:
            log.error("shutdown: %s", err)
        log.info("device %s stopped", self.device)

    async def _start_nats(self) -> str:
        cfg = self.config
        if cfg.nats.url:
            return cfg.nats.url
        from edge.sync.device.leaf import device_server_options

        hub = cfg.hub
        # explicit JetStream limits: nats-server's default moves with the free disk (edge.nats.storage)
        limits = self.store_limits = store_limits(cfg.data_dir, cfg.nats.max_store_bytes, cfg.nats.max_mem_bytes)
        log.info("JetStream store limits: %d bytes on file (%s), %d bytes in memory (%s)",
                 limits.file_bytes, limits.file_source, limits.mem_bytes, limits.mem_source)
        opts = device_server_options(
            self.device,
            cfg.data_dir / "nats",
            hub,
            port=cfg.nats.port,
            max_store_bytes=limits.file_bytes,
            max_mem_bytes=limits.mem_bytes,
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

    # -- components (the device API's operations, served by the sandbox layer) ----------------

    async def load_component(self, manifest_path: str) -> dict[str, Any]:
        return await self.sandbox.load_component(manifest_path)

    async def unload_component(self, name: str) -> None:
        await self.sandbox.unload_component(name)

    def components_status(self) -> list[dict[str, Any]]:
        return self.sandbox.components_status()

    def reload_policy(self) -> None:
        """Read the ``[policy]`` file again now (``edge run`` does it on SIGHUP); a bad file is
        refused and the old policy kept (docs/policy.md)."""
        for layer in self.layers or ():
            reload = getattr(layer, "reload", None)
            if layer.name == "policy" and reload is not None:
                try:
                    reload()
                except EdgeError as err:
                    log.warning("policy not reloaded: %s", err.message)

    # -- status -------------------------------------------------------------------------------

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
            "entities": entities,
            "faults": self.sandbox.faults[-10:],
            "events": self.events.status() if self.events is not None else {},
            "commands": self.commands.status() if self.commands is not None else {},
        }
        if self.layers is not None:
            out.update(self.layers.status())
        else:
            out["state"] = {}
            out["components"] = self.components_status()
        return out


def sandbox_layer(cfg: DeviceConfig) -> SandboxLayer:
    s = cfg.sandbox
    return SandboxLayer(cfg.components, SandboxSettings(s.deadline, s.recycle_after, s.workers,
                                                        s.max_worker_rss_mb, s.max_hops))


def build_layers(cfg: DeviceConfig, *, sandbox: SandboxLayer | None = None,
                 status: Callable[[], dict[str, Any]] | None = None,
                 record: bool = True) -> list[Layer]:
    """The layers the config asks for, in start order, each given its collaborators.

    The config is already validated (:func:`edge.config.load_config` reads every section into its
    typed form), so nothing here parses; building a driver imports its module only now.

    ``sandbox`` is the device's sandbox layer (built from ``cfg`` if not given); ``status`` is
    what the device API answers for ``status.get`` (the runtime's :meth:`Runtime.status`);
    ``record`` adds the replay recorder (docs/replay.md) in front of the sandbox.
    """
    sandbox = sandbox or sandbox_layer(cfg)
    from edge.agents.host import AgentHost
    from edge.agents.tools.service import ToolsService
    from edge.api.service import DeviceApi
    from edge.policy.layer import PolicyLayer
    from edge.policy.point import PolicyPoint
    from edge.policy.sandbox import SandboxPolicy
    from edge.safety.layer import SafetyLayer
    from edge.sync.device.heartbeat import HeartbeatLayer
    from edge.language.layer import build_language
    from edge.sync.device.layer import UplinkLayer

    streams = cfg.sync.streams(cfg.device, bucket=cfg.state.bucket, hub=cfg.hub is not None)
    streams.record = streams.record and record  # [sync] record: only what the recorder writes
    uplink = UplinkLayer(streams, cfg.hub)
    layers: list[Layer] = [uplink]
    # the policy point every message passes (docs/policy.md); without [policy] file: metering only
    point = PolicyPoint(cfg.device, link=(lambda: "up" if uplink.link_up else "down") if cfg.hub else None)
    sandbox.policy = SandboxPolicy(point)
    policy = PolicyLayer(point, cfg.policy, agents=[a.name for a in cfg.agents])
    if cfg.hub is not None:  # what the hub's fleet page shows (docs/sync.md, "Fleet page")
        layers.append(HeartbeatLayer(status))
    extra_drivers: list[Any] = []
    extra_layers: list[Layer] = []
    if cfg.demo:
        from edge.demo.fleet import demo_parts

        extra_drivers, extra_layers = demo_parts(cfg.device, cfg.data_dir)
    hardware = None
    if cfg.drivers or extra_drivers:
        from edge.hardware.layer import HardwareLayer, build_drivers

        hardware = HardwareLayer([*build_drivers(cfg.drivers), *extra_drivers])
    vehicles = [d.entity for d in (hardware.drivers if hardware else []) if d.vehicle]
    # first: the guard is on the router before any command source or driver starts
    safety = SafetyLayer(cfg.safety, vehicles)
    layers.insert(0, safety)
    layers.insert(0, policy)  # before the envelope: a denied command is refused before it queues
    inference = None
    if cfg.models or cfg.vision:
        from edge.inference.bridge import RegistryInferBridge
        from edge.inference.layer import InferenceLayer

        inference = InferenceLayer(cfg.models, cfg.vision, frames=hardware.frames if hardware else None,
                                   policy=point)
        sandbox.bridge = RegistryInferBridge(inference.registry, policy=point)
    api = DeviceApi(sandbox, status=status or dict, policy=policy, point=point)
    layers.append(api)
    if hardware is not None:
        layers.append(hardware)
    if inference is not None:
        layers.append(inference)
        camera = inference.camera
    else:
        finder = hardware.frames if hardware is not None else None

        def camera() -> tuple[Any, Any]:
            return (finder(None) if finder is not None else None), None

    language = build_language(cfg)  # started after the agents: LANG is created after their decision stream
    tools = ToolsService(cfg.tools, models=inference.registry if inference else None, camera=camera,
                         knowledge=language.knowledge if language is not None else None, policy=point)
    layers.append(tools)
    # after the uplink: the decision stream copies records out of the EVT stream it creates
    agents = AgentHost(cfg.agents, wasm_agents=sandbox.wasm_agents)
    layers.append(agents)
    layers += [language] if language is not None else []
    layers.extend(extra_layers)
    if record:  # before the sandbox: it records every component load, and stops after it
        from edge.replay.recorder import RecorderLayer

        sandbox.recorder = agents.recorder = tools.recorder = recorder = RecorderLayer()
        recorder.policy_state = point.in_use  # the policy in use at start, and every reload
        point.load_listeners.append(recorder.on_policy)
        if inference is not None:  # the model answering each infer
            recorder.model_sha = _model_sha(inference.registry)
        layers.append(recorder)
    layers.append(sandbox)
    if cfg.ota is not None:  # after the sandbox: it swaps components in it (docs/ota.md)
        from edge.ota.layer import OtaLayer

        layers.append(OtaLayer(cfg.ota, sandbox, credentials=cfg.nats.credentials,
                              models=inference.registry if inference is not None else None,
                              policy=policy, safety=safety, device_config=cfg))
    return layers


def _model_sha(registry: Any) -> Callable[[str], str | None]:
    """The sha256 of the model a registry serves under a name (None when none is loaded)."""
    from edge.inference.errors import InferenceError

    def sha(name: str) -> str | None:
        try:
            return str(registry.get(name).sha256)
        except InferenceError:
            return None

    return sha


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
