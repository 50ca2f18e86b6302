"""A three-node hub cluster (stock nats-server processes from :class:`FleetConfig`) and devices.

:class:`ClusterRig` writes the fleet config for three local nodes, runs each node as a plain
``nats-server -c <node>.conf`` (so a node can be killed and restarted), provisions the devices'
hub streams with three replicas, and starts the devices as leaf nodes whose remotes list every
node. ``kill_hub_node`` kills one node with SIGKILL (the one the device is linked to, by default)
and restarts it after a pause. It offers what :class:`rigs.faults.FaultMix` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from edge.errors import NatsError
from edge.nats import subjects as naming
from edge.nats.server import NatsServer, find_nats_server, pick_free_port
from edge.sync.device.leaf import HubLink, device_server_options
from edge.sync.device.streams import DeviceStreamConfig, ensure_device_streams
from edge.sync.hub.config import FleetConfig, HubNode
from edge.sync.hub.fleet import ProvisionOptions, provision_device
from rigs.link import LinkProxy


class ClusterRig:
    def __init__(self, base: Path, devices: tuple[str, ...] = ("dev1",), *, replicas: int = 3,
                 stream_cfg: dict[str, object] | None = None) -> None:
        self.base = Path(base)
        self.device_ids = devices
        self.replicas = replicas
        self.stream_cfg = stream_cfg or {}
        nodes = [HubNode(f"hub-{i}", host="127.0.0.1", port=pick_free_port(), leaf_port=pick_free_port(),
                         cluster_port=pick_free_port()) for i in (1, 2, 3)]
        self.cfg = FleetConfig.create(self.base / "hub", nodes)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.devices: dict[str, NatsServer] = {}
        self.dev_nc: dict[str, NATS] = {}
        self.links: dict[str, LinkProxy] = {}  # none: the devices dial the nodes directly
        self.hub_nc: NATS | None = None
        self.node_kills = 0

    @property
    def hub_js(self) -> JetStreamContext:
        if self.hub_nc is None:
            raise NatsError("The cluster rig's hub connection is not open.")
        return self.hub_nc.jetstream(timeout=10)

    def dev_js(self, device: str = "dev1") -> JetStreamContext:
        return self.dev_nc[device].jetstream()

    async def start_node(self, node: HubNode) -> None:
        log = open(self.base / f"{node.name}.log", "ab")  # noqa: SIM115 (the process owns it)
        try:
            self.procs[node.name] = await asyncio.create_subprocess_exec(
                find_nats_server(), "-c", str(self.cfg.config_path(node)), stdout=log, stderr=log)
        finally:
            log.close()
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", node.port)
                w.close()
                return
            await asyncio.sleep(0.05)
        raise NatsError(f"hub node {node.name} did not start")

    async def start(self) -> None:
        for d in self.device_ids:
            self.cfg.add_device(d)
        self.cfg.write()
        await asyncio.gather(*(self.start_node(n) for n in self.cfg.nodes))
        self.hub_nc = await nats.connect(servers=self.cfg.client_urls(), reconnect_time_wait=0.1,
                                         max_reconnect_attempts=-1)
        await self.wait_js_ready()
        for d in self.device_ids:
            await self.add_device(d)

    async def wait_js_ready(self, timeout: float = 30.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(Exception):
                await self.hub_js.account_info()
                return
            await asyncio.sleep(0.2)
        raise NatsError("the hub cluster's JetStream did not become ready")

    async def add_device(self, device: str) -> NatsServer:
        urls = self.cfg.leaf_urls()
        link = HubLink(url=urls[0], urls=urls[1:], user=device, password=self.cfg.devices[device]["password"])
        srv = NatsServer(device_server_options(device, self.base / device, link, monitor_port=0))
        await srv.start()
        self.devices[device] = srv
        self.dev_nc[device] = await nats.connect(srv.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        await self.wait_linked(device)
        await ensure_device_streams(self.dev_js(device), DeviceStreamConfig(device, hub_domain="hub", **self.stream_cfg))  # type: ignore[arg-type]
        for _ in range(50):  # R3 stream creation needs the meta leader
            try:
                await provision_device(self.hub_js, device, ProvisionOptions(replicas=self.replicas))
                break
            except Exception:
                await asyncio.sleep(0.3)
        return srv

    async def linked_node(self, device: str = "dev1") -> HubNode | None:
        leafz = await self.devices[device].monitor("leafz")
        for leaf in leafz.get("leafs", []):
            port = int(leaf.get("port", 0))
            for n in self.cfg.nodes:
                if n.leaf_port == port:
                    return n
        return None

    async def wait_linked(self, device: str, timeout: float = 15.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if (await self.devices[device].monitor("leafz")).get("leafnodes", 0) > 0:
                return
            await asyncio.sleep(0.05)
        raise NatsError(f"Device {device} did not link to the hub cluster within {timeout} s.")

    async def kill_hub_node(self, rng: random.Random | None = None, *, device: str = "dev1",
                            down_s: float = 1.0) -> str:
        """SIGKILL the node ``device`` is linked to (else a random one), restart it after ``down_s``."""
        node = await self.linked_node(device) or (rng or random).choice(self.cfg.nodes)
        proc = self.procs[node.name]
        proc.kill()
        await proc.wait()
        self.node_kills += 1
        await asyncio.sleep(down_s)
        await self.start_node(node)
        return node.name

    async def hub_count(self, kind: str, device: str = "dev1") -> int:
        info = await self.hub_js.stream_info(naming.hub_stream(kind, device))
        return int(info.state.messages)

    async def close(self) -> None:
        for nc in [*self.dev_nc.values(), self.hub_nc]:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
        for srv in self.devices.values():
            with contextlib.suppress(Exception):
                await srv.stop()
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)
