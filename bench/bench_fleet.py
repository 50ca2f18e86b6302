"""A simulated fleet on one machine: N real device nats-servers (JetStream, the device streams) as
leaf nodes of one hub, each fed by a lightweight publisher (telemetry + the device heartbeat).

Measures, in one run (single timed runs: absolute figures, labelled so; docs/scale.md):
1. Start-up: all devices started, streams created, linked and provisioned.
2. Steady state: every device publishes ``--rate`` telemetry msg/s plus a heartbeat a second for
   ``--steady-s`` seconds: hub CPU (s of CPU per s, per device) and hub RSS per device (above the
   hub's RSS with the devices provisioned and idle). Device nats-server RSS (median) too.
3. Reconnect storm: the hub is stopped, every device keeps recording (``--backlog`` messages each),
   the hub starts again; time from the hub's start until every device's hub stream holds all
   of the device's telemetry (the slowest device), the median device, and the hub ingest rate
   during the catch-up (backlog / time).
4. Fleet page: one collector poll over all devices (what the page does every refresh), and the time
   until the page's collector shows a stopped device offline (heartbeat 1 s, ttl 3 s).

    python bench/bench_fleet.py [--devices 50] [--rate 10] [--steady-s 15] [--backlog 1000] [--quick] [--json]

Not part of the default ``make bench`` (it starts 50+ servers); ``make bench-fleet`` or
``bench/run_all.py --fleet`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test rigs (tests/rigs/)

import nats  # noqa: E402
import psutil  # noqa: E402
from nats.aio.client import Client as NATS  # noqa: E402

from edge.nats.publisher import Publisher  # noqa: E402
from edge.nats.server import NatsServer, pick_free_port  # noqa: E402
from edge.sync.device.leaf import HubLink, device_server_options  # noqa: E402
from edge.sync.device.streams import MIB, DeviceStreamConfig, ensure_device_streams  # noqa: E402
from edge.sync.hub.fleet import provision_device  # noqa: E402
from edge.sync.hub.page.collect import FleetCollector  # noqa: E402
from edge.sync.hub.server import DeviceCredential, HubServer  # noqa: E402
from harness import Absolute, report  # noqa: E402
from rigs.heartbeats import HeartbeatPublisher  # noqa: E402

PAYLOAD = b'{"x": 12.5, "y": -3.25, "z": 10.0, "speed": 4.0}'
START_BATCH = 10  # devices started at once
OFFLINE_TTL_S = 3.0


class Device:
    def __init__(self, name: str, base: Path, hub: HubServer, cred: DeviceCredential) -> None:
        assert hub.leaf_port is not None
        self.name = name
        link = HubLink(url=f"nats-leaf://127.0.0.1:{hub.leaf_port}", user=name, password=cred.password)
        self.server = NatsServer(device_server_options(name, base / name, link, max_store_bytes=256 * MIB))
        self.nc: NATS | None = None
        self.beat: HeartbeatPublisher | None = None
        self.sent = 0

    async def start(self, hub_domain: str) -> None:
        await self.server.start()
        self.nc = await nats.connect(self.server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        await ensure_device_streams(self.nc.jetstream(), DeviceStreamConfig(
            self.name, hub_domain=hub_domain, tele_max_bytes=64 * MIB, evt_max_bytes=4 * MIB))
        self.beat = HeartbeatPublisher(self.nc, self.name, interval_s=1.0, ttl_s=OFFLINE_TTL_S,
                                       positions=[{"entity": "drone", "lat": 47.39, "lon": 8.54}]).start()

    async def device_tele(self) -> int:
        assert self.nc is not None
        return int((await self.nc.jetstream().stream_info("TELE")).state.messages)

    async def stop(self) -> None:
        if self.beat is not None:
            await self.beat.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        with contextlib.suppress(Exception):
            await self.server.stop()


def hub_usage(hub: HubServer) -> tuple[float, int]:
    """(CPU seconds so far, RSS bytes) of the hub's nats-server process."""
    assert hub.pid is not None
    p = psutil.Process(hub.pid)
    t = p.cpu_times()
    return t.user + t.system, int(p.memory_info().rss)


async def telemetry(devices: list[Device], rate: float, seconds: float) -> int:
    """Every device publishes ``rate`` msg/s (core publish into TELE, like TelemetryPublisher)."""
    n = 0
    period = 1.0 / rate
    t_end = time.monotonic() + seconds
    nxt = time.monotonic()
    while time.monotonic() < t_end:
        for d in devices:
            if d.nc is not None and d.nc.is_connected:
                await d.nc.publish(f"edge.{d.name}.tele.drone.position", PAYLOAD)
                d.sent += 1
                n += 1
        nxt += period
        await asyncio.sleep(max(0.0, nxt - time.monotonic()))
    return n


async def burst(d: Device, n: int, name: str) -> None:
    """``n`` telemetry messages as fast as the device's server acknowledges them (batched acks)."""
    assert d.nc is not None
    async with Publisher(d.nc) as pub:
        futs = [await pub.publish(f"edge.{d.name}.tele.drone.{name}", PAYLOAD) for _ in range(n)]
        await asyncio.gather(*futs)


async def hub_tele(js: Any, device: str) -> int:
    return int((await js.stream_info(f"TELE_{device}")).state.messages)


async def wait_caught_up(js: Any, want: dict[str, int], timeout: float,
                         before: dict[str, int] | None = None) -> tuple[dict[str, float], float | None]:
    """Seconds until each device's hub TELE stream holds ``want[device]`` messages, and the
    seconds until the first new message (above ``before``) was seen at the hub."""
    t0 = time.monotonic()
    done: dict[str, float] = {}
    first: float | None = None
    while len(done) < len(want) and time.monotonic() - t0 < timeout:
        for d, n in want.items():
            if d in done:
                continue
            with contextlib.suppress(Exception):
                got = await hub_tele(js, d)
                if first is None and before is not None and got > before.get(d, 0):
                    first = time.monotonic() - t0
                if got >= n:
                    done[d] = time.monotonic() - t0
        await asyncio.sleep(0.05)
    return done, first


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": args.devices, "rate": args.rate}
    with tempfile.TemporaryDirectory(prefix="edge-fleet-") as tmp:
        base = Path(tmp)
        names = [f"dev{i:03d}" for i in range(args.devices)]
        creds = [DeviceCredential(n) for n in names]
        hub = HubServer(base / "hub", devices=creds, port=pick_free_port(), leaf_port=pick_free_port(),
                        monitor_port=pick_free_port())
        await hub.start()
        hc = await nats.connect(hub.client_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                error_cb=_quiet)
        js = hc.jetstream()
        cpu0, rss_empty = hub_usage(hub)
        devices = [Device(n, base, hub, c) for n, c in zip(names, creds)]
        try:
            t0 = time.monotonic()
            for i in range(0, len(devices), START_BATCH):
                await asyncio.gather(*(d.start(hub.domain) for d in devices[i:i + START_BATCH]))
            while int((await hub.monitor("leafz")).get("leafnodes", 0)) < len(devices):
                await asyncio.sleep(0.1)
            for d in devices:
                await provision_device(js, d.name)
            out["startup_s"] = time.monotonic() - t0
            await asyncio.sleep(3.0)  # heartbeats only
            cpu1, rss_idle = hub_usage(hub)
            # steady state
            sent = await telemetry(devices, args.rate, args.steady_s)
            cpu2, rss_steady = hub_usage(hub)
            out["steady_msgs"] = sent
            out["hub_cpu_per_device_pct"] = 100.0 * (cpu2 - cpu1) / args.steady_s / len(devices)
            out["hub_rss_empty_mb"] = rss_empty / MIB
            out["hub_rss_steady_mb"] = rss_steady / MIB
            out["hub_rss_per_device_mb"] = (rss_steady - rss_empty) / MIB / len(devices)
            dev_rss = [psutil.Process(d.server.pid).memory_info().rss for d in devices if d.server.pid]
            out["device_server_rss_median_mb"] = statistics.median(dev_rss) / MIB
            want = {d.name: await d.device_tele() for d in devices}
            up, _ = await wait_caught_up(js, want, 60.0)
            out["steady_all_at_hub"] = len(up) == len(devices)
            # live ingest: every device writes a burst at once, link up
            before = want
            t_burst = time.monotonic()
            for i in range(0, len(devices), START_BATCH * 2):
                await asyncio.gather(*(burst(d, args.backlog, "burst") for d in devices[i:i + START_BATCH * 2]))
            out["burst_write_s"] = time.monotonic() - t_burst
            want = {d.name: await d.device_tele() for d in devices}
            up, _ = await wait_caught_up(js, want, 60.0)
            total = sum(want.values()) - sum(before.values())
            out["burst_msgs"] = total
            out["burst_at_hub_s"] = time.monotonic() - t_burst if len(up) == len(devices) else None
            out["burst_ingest_msgs_per_s"] = total / out["burst_at_hub_s"] if out["burst_at_hub_s"] else None
            # fleet page: one poll over all devices
            col = FleetCollector(js)
            polls = []
            for _ in range(3):
                p0 = time.monotonic()
                snap = await col.poll()
                polls.append(time.monotonic() - p0)
            out["page_poll_s"] = statistics.median(polls)
            out["page_online"] = snap["counts"].get("online", 0)
            # reconnect storm: hub down, devices keep recording, hub back
            before = {d.name: await hub_tele(js, d.name) for d in devices}
            await hub.stop()
            backlog_t0 = time.monotonic()
            for d in devices:
                if d.beat is not None:
                    await d.beat.stop()
            for i in range(0, len(devices), START_BATCH * 2):
                await asyncio.gather(*(burst(d, args.backlog, "backlog") for d in devices[i:i + START_BATCH * 2]))
            out["backlog_write_s"] = time.monotonic() - backlog_t0
            want = {d.name: await d.device_tele() for d in devices}
            t_start = time.monotonic()
            await hub.start()
            hub_started = time.monotonic() - t_start
            cpu3, _ = hub_usage(hub)
            done, first = await wait_caught_up(js, want, args.storm_timeout_s, before)
            cpu4, rss_storm = hub_usage(hub)
            out["hub_start_s"] = hub_started
            out["storm_caught_up"] = len(done)
            out["storm_all_s"] = max(done.values()) if len(done) == len(devices) else None
            out["storm_median_s"] = statistics.median(done.values()) if done else None
            out["storm_first_s"] = first
            drain = (out["storm_all_s"] - first) if out["storm_all_s"] and first is not None else None
            out["storm_drain_s"] = drain
            backlog = sum(want.values()) - sum(before.values())
            out["backlog_msgs"] = backlog
            out["storm_ingest_msgs_per_s"] = backlog / drain if drain else None
            out["storm_hub_cpu_s"] = cpu4 - cpu3
            out["hub_rss_storm_mb"] = rss_storm / MIB
            # a device stops: time until the page's collector shows it offline
            for d in devices:
                if d.beat is not None:
                    d.beat.start()
            victim = devices[0]
            col = FleetCollector(js)

            async def state_of(name: str) -> str:
                for v in (await col.poll())["devices"]:
                    if v["device"] == name:
                        return str(v["state"])
                return "missing"

            t_wait = time.monotonic()
            while await state_of(victim.name) != "online" and time.monotonic() - t_wait < 30:
                await asyncio.sleep(0.25)
            await victim.stop()
            t_off = time.monotonic()
            while await state_of(victim.name) != "offline" and time.monotonic() - t_off < 30:
                await asyncio.sleep(0.25)
            out["page_offline_after_s"] = time.monotonic() - t_off
        finally:
            for d in devices:
                await d.stop()
            with contextlib.suppress(Exception):
                await hc.close()
            await hub.stop()
    return out


async def _quiet(err: Exception) -> None:
    pass


def rows(r: dict[str, Any]) -> list[Absolute]:
    n = r["devices"]
    storm = f"{r['storm_all_s']:.1f} s" if r["storm_all_s"] else f"incomplete ({r['storm_caught_up']}/{n})"
    return [
        Absolute(f"fleet of {n}: start, link and provision every device", f"{r['startup_s']:.1f} s"),
        Absolute(f"fleet of {n}: hub CPU per device at {r['rate']:.0f} msg/s + 1 heartbeat/s",
                 f"{r['hub_cpu_per_device_pct']:.2f} % of a core",
                 f"{r['steady_msgs']} msgs, all at hub: {r['steady_all_at_hub']}"),
        Absolute(f"fleet of {n}: hub RSS per device", f"{r['hub_rss_per_device_mb']:.2f} MiB",
                 f"hub {r['hub_rss_empty_mb']:.0f} MiB empty, {r['hub_rss_steady_mb']:.0f} MiB steady, "
                 f"{r['hub_rss_storm_mb']:.0f} MiB after the storm"),
        Absolute(f"fleet of {n}: device nats-server RSS (median)", f"{r['device_server_rss_median_mb']:.1f} MiB"),
        Absolute(f"fleet of {n}: reconnect storm, every device caught up after hub start", storm,
                 f"{r['backlog_msgs']} msgs waiting; median device {r['storm_median_s'] or 0:.1f} s; "
                 f"hub start {r['hub_start_s']:.1f} s"),
        Absolute(f"fleet of {n}: hub ingest while the storm drains",
                 f"{r['storm_ingest_msgs_per_s'] or 0:,.0f} msg/s",
                 f"first backlog at hub {r['storm_first_s'] or 0:.1f} s after start, drained in "
                 f"{r['storm_drain_s'] or 0:.1f} s; hub CPU {r['storm_hub_cpu_s']:.1f} s"),
        Absolute(f"fleet of {n}: hub ingest, every device bursting (link up)",
                 f"{r['burst_ingest_msgs_per_s'] or 0:,.0f} msg/s",
                 f"{r['burst_msgs']} msgs written in {r['burst_write_s']:.1f} s by the one-process "
                 f"publishers, all at hub after {r['burst_at_hub_s'] or 0:.1f} s (a lower bound)"),
        Absolute(f"fleet of {n}: fleet page poll (all devices)", f"{r['page_poll_s'] * 1000:.0f} ms"),
        Absolute(f"fleet of {n}: page shows a stopped device offline", f"{r['page_offline_after_s']:.1f} s",
                 f"heartbeat 1 s, ttl {OFFLINE_TTL_S:.0f} s, polled every 0.25 s"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--rate", type=float, default=10.0, help="telemetry msg/s per device (steady state)")
    ap.add_argument("--steady-s", type=float, default=15.0)
    ap.add_argument("--backlog", type=int, default=1000, help="telemetry msgs per device recorded while the hub is down")
    ap.add_argument("--storm-timeout-s", type=float, default=120.0)
    ap.add_argument("--quick", action="store_true", help="10 devices, shorter phases")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.devices < 1 or args.rate <= 0 or args.backlog < 0:
        ap.error("--devices >= 1, --rate > 0 and --backlog >= 0")
    if args.quick:
        args.devices, args.steady_s, args.backlog = min(args.devices, 10), 5.0, 200
    r = asyncio.run(run(args))
    if args.json:
        print(json.dumps(r, indent=2))
    report(rows(r), command="bench/bench_fleet.py" + (" --quick" if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
