"""The hub's fleet page against a real hub with devices as leaf nodes (real nats-servers).

Devices publish heartbeats with the lightweight publisher of tests/rigs/heartbeats.py (the body
the runtime's HeartbeatLayer sends; one test runs the real runtime layer). The browser test drives
Debian's chromium with Playwright (no browser is downloaded)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from edge.config import load_config
from edge.errors import ConfigError, EdgeError
from edge.nats.server import pick_free_port
from edge.runtime import Runtime
from edge.sync.device.heartbeat import MAX_LISTED, HeartbeatLayer, heartbeat_subject, summary_of
from edge.sync.hub.fleet import provision_device
from edge.sync.hub.page.collect import FleetCollector, parse_heartbeat
from edge.sync.hub.page.web import FleetPage, parse_bind
from edge.sync.hub.server import HubServer
from rigs.heartbeats import HeartbeatPublisher
from rigs.link import SyncRig

CHROMIUM = "/usr/bin/chromium"
INTERVAL_S = 0.3
TTL_S = 1.2
SUMMARY = {
    "components": [{"name": "patrol", "version": "1.2.0", "state": "running"}],
    "models": [{"name": "face", "version": "abc123def456", "state": "serving"}],
    "faults": 2, "denied": 3,
}
POSITIONS = {
    "dev1": [{"entity": "drone-0", "lat": 47.3977, "lon": 8.5456, "alt": 488.0}],
    "dev2": [{"entity": "drone-7", "lat": 47.3990, "lon": 8.5470, "alt": 490.0},
             {"entity": "rover-1", "x": 3.0, "y": -4.0}],
}


async def until(fn: Callable[[], Awaitable[Any]], timeout: float = 20.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        await asyncio.sleep(step)


class Fleet:
    """A hub, two linked devices publishing heartbeats, and a provisioned device never seen."""

    def __init__(self, rig: SyncRig) -> None:
        self.rig = rig
        self.beats: dict[str, HeartbeatPublisher] = {}

    async def start(self) -> None:
        await self.rig.start()
        for d in ("dev1", "dev2"):
            self.beats[d] = HeartbeatPublisher(self.rig.dev_nc[d], d, interval_s=INTERVAL_S, ttl_s=TTL_S,
                                               positions=POSITIONS[d], summary=SUMMARY).start()
        await provision_device(self.rig.hub_js, "dev3")  # provisioned, never linked

    async def close(self) -> None:
        for b in self.beats.values():
            await b.stop()
        await self.rig.close()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = Fleet(SyncRig(tmp_path, ("dev1", "dev2")))
    try:
        await f.start()
        yield f
    finally:
        await f.close()


def by_device(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["device"]: d for d in snap["devices"]}


async def test_collector_shows_heartbeats_lag_positions_and_offline(fleet: Fleet) -> None:
    col = FleetCollector(fleet.rig.hub_js)

    async def both_online() -> dict[str, Any] | None:
        snap = await col.poll()
        views = by_device(snap)
        ok = all(views[d]["state"] == "online" and views[d]["lag"] == 0 for d in ("dev1", "dev2"))
        return snap if ok else None

    snap = await until(both_online)
    views = by_device(snap)
    assert snap["hub"] == "up" and snap["counts"] == {"online": 2, "offline": 0, "never": 1}
    assert views["dev3"]["state"] == "never" and views["dev3"]["link"] == "never"
    one = views["dev1"]
    assert one["link"] == "up" and one["ttl_s"] == TTL_S and one["heartbeat_age_s"] <= TTL_S
    assert one["components"] == SUMMARY["components"] and one["models"] == SUMMARY["models"]
    assert one["faults"] == 2 and one["denied"] == 3 and one["desired"] is None
    assert one["positions"] == POSITIONS["dev1"]
    assert views["dev2"]["positions"] == POSITIONS["dev2"]
    # lag by sequence: with the link cut, what dev2 records is counted once it is back
    await fleet.rig.links["dev2"].cut()
    await fleet.beats["dev2"].stop()
    t0 = time.monotonic()

    async def dev2_offline() -> bool:
        return bool(by_device(await col.poll())["dev2"]["state"] == "offline")

    await until(dev2_offline)
    took = time.monotonic() - t0
    assert TTL_S - INTERVAL_S - 0.1 <= took <= TTL_S + 2.0, took  # not before the ttl, soon after it
    assert by_device(await col.poll())["dev1"]["state"] == "online"
    # it comes back: the backlog (heartbeats recorded offline included) arrives, online again
    fleet.beats["dev2"].start()
    await fleet.rig.links["dev2"].restore()

    async def dev2_back() -> bool:
        v = by_device(await col.poll())["dev2"]
        return bool(v["state"] == "online" and v["lag"] == 0)

    await until(dev2_back)
    assert col.errors == 0 and col.malformed == 0


async def test_malformed_heartbeats_are_counted_and_the_last_good_one_is_kept(fleet: Fleet) -> None:
    await fleet.beats["dev1"].stop()
    col = FleetCollector(fleet.rig.hub_js)
    nc = fleet.rig.dev_nc["dev1"]
    subject = heartbeat_subject("dev1")

    async def seq_seen() -> int | None:
        return by_device(await col.poll())["dev1"]["seq"]  # type: ignore[no-any-return]

    good_seq = await until(seq_seen)
    hostile = (b"[" * 100_000 + b"]" * 100_000, b'{"v": 1, "ttl_s": 1' + b"0" * 400 + b"}")  # too deep, too big
    for bad in (b"not json", b"[1, 2]", b'{"v": 2, "ttl_s": 1}', b'{"v": 1, "ttl_s": -1}', *hostile):
        before = col.malformed
        await nc.publish(subject, bad)
        await nc.flush()

        async def counted(before: int = before) -> bool:
            await col.poll()
            return col.malformed == before + 1

        await until(counted)
        view = by_device(await col.poll())["dev1"]
        assert view["seq"] == good_seq and view["components"] == SUMMARY["components"]
    assert col.malformed == 6  # each bad message counted once, however often it is read
    await col.poll()
    assert col.malformed == 6 and col.errors == 0
    with pytest.raises(EdgeError, match="not JSON"):
        parse_heartbeat(b"{")


async def test_recent_faults_come_from_the_hub_event_streams(fleet: Fleet) -> None:
    js = fleet.rig.dev_js("dev1")
    await js.publish("edge.dev1.evt.runtime.fault", json.dumps(
        {"component": "patrol", "error": "SandboxError", "message": "trap: unreachable"}).encode())
    await js.publish("edge.dev1.evt.drone-0.agent_fault", json.dumps(
        {"agent": "follow-drone-0", "message": "decide() took 1.2 s"}).encode())
    col = FleetCollector(fleet.rig.hub_js)

    async def both() -> list[dict[str, Any]] | None:
        faults = by_device(await col.poll())["dev1"]["recent_faults"]
        return faults if len(faults) == 2 else None

    faults = await until(both)
    assert [f["subject"] for f in faults] == ["edge.dev1.evt.drone-0.agent_fault", "edge.dev1.evt.runtime.fault"]
    assert faults[0]["what"] == "follow-drone-0" and faults[1]["message"] == "trap: unreachable"
    await js.publish("edge.dev1.evt.runtime.fault", b"garbage")
    before = col.malformed

    async def dropped() -> bool:
        await col.poll()
        return col.malformed == before + 1

    await until(dropped)
    assert len(by_device(await col.poll())["dev1"]["recent_faults"]) == 2


async def test_page_routes_limits_and_hub_outage(fleet: Fleet) -> None:
    assert fleet.rig.hub_nc is not None
    page = FleetPage(fleet.rig.hub.client_url, refresh_s=0.2, max_clients=1)
    await page.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(page.url) as r:
                html = await r.text()
                assert r.status == 200 and r.content_type == "text/html"
            assert "<svg" in html and "/fleet.js" in html
            async with http.get(page.url + "fleet.js") as r:
                script = await r.text()
            for text in (html, script):
                assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
                assert "https://" not in text  # nothing from the internet: no CDN, no map tiles

            async def fleet_json() -> dict[str, Any] | None:
                async with http.get(page.url + "api/fleet") as r:
                    snap: dict[str, Any] = await r.json()
                return snap if snap["counts"].get("online") == 2 else None

            snap = await until(fleet_json)
            assert sorted(by_device(snap)) == ["dev1", "dev2", "dev3"]
            async with http.post(page.url) as r:
                assert r.status == 405
            async with http.get(page.url + "nope") as r:
                assert r.status == 404
            async with http.get(page.url + "api/events") as live:
                assert live.headers["Content-Type"] == "text/event-stream"
                events = []
                async for line in live.content:
                    if line.startswith(b"data: "):
                        events.append(json.loads(line[6:]))
                        if len(events) == 2:
                            break
                assert events[1]["t"] > events[0]["t"]  # live: a new snapshot per refresh
                async with http.get(page.url + "api/events") as second:
                    assert second.status == 503 and page.refused == 1

            async def released() -> bool:
                return page.clients == 0

            await until(released)  # a browser that went away frees its place
            async with http.get(page.url + "api/events") as again:
                assert again.status == 200
            # the hub goes away: the page keeps answering and says so
            await fleet.rig.hub.stop()

            async def unreachable() -> bool:
                async with http.get(page.url + "api/fleet") as r:
                    return bool((await r.json())["hub"] == "unreachable")

            await until(unreachable, timeout=30)
            assert page.status()["collector"]["errors"] >= 1
    finally:
        await page.stop()


async def test_page_stops_promptly_with_a_live_client(fleet: Fleet) -> None:
    page = FleetPage(fleet.rig.hub.client_url, refresh_s=0.2)
    await page.start()
    async with aiohttp.ClientSession() as http, http.get(page.url + "api/events") as live:
        assert (await live.content.readline()).startswith(b"retry:")
        t0 = time.monotonic()
        await page.stop()
        assert time.monotonic() - t0 < 3.0 and page.clients == 0


async def test_page_start_errors_are_clear_and_leave_nothing_running(fleet: Fleet) -> None:
    first = FleetPage(fleet.rig.hub.client_url)
    await first.start()
    try:
        taken = FleetPage(fleet.rig.hub.client_url, port=first.port)
        with pytest.raises(EdgeError, match=f"cannot serve the fleet page on 127.0.0.1:{first.port}"):
            await taken.start()
        assert taken._nc is None and taken._task is None  # cleaned up
    finally:
        await first.stop()
    with pytest.raises(EdgeError, match="cannot reach the hub at nats://127.0.0.1:.* within 1 s: "):
        await FleetPage(f"nats://127.0.0.1:{pick_free_port('127.0.0.1')}", connect_timeout_s=1.0).start()


def test_bind_and_settings_errors() -> None:
    assert parse_bind("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_bind("9000") == ("127.0.0.1", 9000)
    assert parse_bind("[::1]:0") == ("::1", 0)
    with pytest.raises(ConfigError, match="--page"):
        parse_bind("localhost:http")
    with pytest.raises(ConfigError, match="outside"):
        parse_bind("127.0.0.1:70000")
    with pytest.raises(ConfigError, match="refresh"):
        FleetPage("nats://127.0.0.1:1", refresh_s=0.0)
    with pytest.raises(ConfigError, match="interval"):
        HeartbeatLayer(interval_s=0.0)
    with pytest.raises(ConfigError, match="ttl factor"):
        HeartbeatLayer(ttl_factor=0.5)


async def test_fleet_page_in_a_headless_browser(fleet: Fleet, tmp_path: Path) -> None:
    from PIL import Image
    from playwright.async_api import async_playwright

    assert os.path.exists(CHROMIUM), "the browser test needs Debian's chromium (`make test` installs it)"

    await fleet.rig.dev_js("dev1").publish("edge.dev1.evt.runtime.fault", json.dumps(
        {"component": "patrol", "message": "trap: out of gas"}).encode())
    page_srv = FleetPage(fleet.rig.hub.client_url, refresh_s=0.25)
    await page_srv.start()
    profile = tmp_path / "chromium-profile"
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch_persistent_context(
                str(profile), executable_path=CHROMIUM, headless=True, viewport={"width": 1280, "height": 800},
                args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync"])
            try:
                page = await browser.new_page()
                blocked: list[str] = []
                page.on("request", lambda req: blocked.append(req.url)
                        if not req.url.startswith(page_srv.url) else None)
                await page.goto(page_srv.url)
                for d in ("dev1", "dev2"):
                    await page.wait_for_selector(f'tr[data-device="{d}"][data-state="online"]', timeout=15_000)
                await page.wait_for_selector('body[data-live="live"]', timeout=10_000)
                assert await page.inner_text('tr[data-device="dev3"] [data-field="state"]') == "never"
                assert await page.inner_text('tr[data-device="dev1"] [data-field="lag"]') == "0"
                assert "patrol 1.2.0 / -" in await page.inner_text('tr[data-device="dev1"] [data-field="components"]')
                assert await page.inner_text('tr[data-device="dev2"] [data-field="denied"]') == "3"
                assert "2 online, 0 offline, 1 never seen" in await page.inner_text("#counts")
                assert await page.locator("#geo circle").count() == 2
                await page.wait_for_selector('#faults li[data-device="dev1"]', timeout=10_000)
                assert "patrol trap: out of gas" in await page.inner_text('#faults li[data-device="dev1"]')
                assert await page.locator('#local circle[data-entity="rover-1"]').count() == 1
                shot = tmp_path / "fleet.png"
                await page.screenshot(path=str(shot), full_page=False)
                img = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
                assert img.size == (1280, 800)
                colors = img.getcolors(maxcolors=1 << 20) or []
                assert len(colors) > 50  # text, table, plots: not a blank page
                green = sum(n for n, (r, g, b) in colors if (r, g, b) == (0x1F, 0x8F, 0x4E))
                assert green > 100  # the "online" badges are drawn
                # a device stops: the page shows it offline within seconds, live (no reload)
                t_loaded = await page.evaluate("Number(document.body.dataset.t)")
                await fleet.beats["dev2"].stop()
                await fleet.rig.devices["dev2"].stop()
                t0 = time.monotonic()
                await page.wait_for_selector('tr[data-device="dev2"][data-state="offline"]', timeout=15_000)
                took = time.monotonic() - t0
                print(f"\nfleet page shows a stopped device offline after {took:.2f} s (ttl {TTL_S} s)")
                assert took <= TTL_S + 3.0, took
                assert await page.evaluate("Number(document.body.dataset.t)") > t_loaded
                assert await page.get_attribute('#geo circle[data-device="dev2"]', "fill") == "#bbb"
                assert await page.inner_text('tr[data-device="dev1"] [data-field="state"]') == "online"
                await page.screenshot(path=str(tmp_path / "fleet-offline.png"))
                assert blocked == []  # the page loaded nothing from anywhere but the hub's page
            finally:
                await browser.close()
    finally:
        await page_srv.stop()
        shutil.rmtree(profile, ignore_errors=True)


def test_heartbeat_summary_counts_denials_and_bounds_lists() -> None:
    status = {
        "components": [{"name": f"c{i}", "version": "1.0.0", "state": "running",
                        "counters": {"denied": 2, "denied_infer": 1}} for i in range(MAX_LISTED + 5)],
        "tools": {"denied": {"llm": 4, "ops": 1}},
        "inference": {"models": {"face": {"sha256": "0123456789abcdef", "state": "serving"}}},
        "faults": [{"t": 1.0, "component": "c1", "kind": "trap", "message": "x" * 500}],
    }
    s = summary_of(status)
    assert len(s["components"]) == MAX_LISTED  # bounded before it is sent
    assert s["denied"] == 3 * (MAX_LISTED + 5) + 5
    assert s["models"] == [{"name": "face", "version": "0123456789ab", "state": "serving"}]
    assert s["faults"] == 1 and len(s["last_fault"]["message"]) == 200
    assert summary_of({}) == {"components": [], "models": [], "faults": 0, "last_fault": None, "denied": 0}


RUNTIME_DEVICE = """
[device]
id = "dev1"
[hub]
url = "{leaf}"
user = "dev1"
password = "{password}"
[[entities]]
id = "pod"
components = {{ position = {{ x = 1.5, y = -2.0 }} }}
"""


async def test_runtime_heartbeat_reaches_the_page(tmp_path: Path) -> None:
    hub = HubServer(tmp_path / "hub")
    await hub.start()
    cloud = await nats.connect(hub.client_url)
    rt: Runtime | None = None
    try:
        cred = await hub.add_device("dev1")
        await provision_device(cloud.jetstream(), "dev1")
        path = tmp_path / "dev1.toml"
        path.write_text(RUNTIME_DEVICE.format(leaf=hub.leaf_url, password=cred.password))
        broken = HeartbeatLayer(lambda: {"components": 1 / 0}, interval_s=0.1)  # a status part failing
        broken.name = "heartbeat-broken"
        rt = Runtime(load_config(path, data_dir=tmp_path / "dev1"), layers=[broken])
        await rt.start()
        col = FleetCollector(cloud.jetstream())

        async def online() -> dict[str, Any] | None:
            v = by_device(await col.poll())["dev1"]
            return v if v["state"] == "online" else None

        view = await until(online, timeout=30)
        assert view["positions"] == [{"entity": "pod", "x": 1.5, "y": -2.0}]
        assert view["ttl_s"] == 6.0 and view["seq"] >= 1 and view["components"] == []
        assert rt.status()["heartbeat"]["sent"] >= 1
        # the failing one counts its errors and keeps trying; the real heartbeat is unaffected
        async def failed_twice() -> bool | None:
            return True if rt is not None and rt.status()["heartbeat-broken"]["errors"] >= 2 else None

        await until(failed_twice, timeout=10)
        assert broken.sent == 0
    finally:
        if rt is not None:
            await rt.stop()
        await cloud.close()
        await hub.stop()


async def test_cloud_run_serves_the_page(tmp_path: Path) -> None:
    ports = [pick_free_port("127.0.0.1") for _ in range(3)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli.main", "cloud", "run", "--store", str(tmp_path / "hub"),
        "--port", str(ports[0]), "--leaf-port", str(ports[1]), "--page", f"127.0.0.1:{ports[2]}",
        "--device", "dev1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        url = None
        while url is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "edge cloud run exited early"
            if line.startswith("fleet page: "):
                url = line.split(": ", 1)[1].strip()
        assert url == f"http://127.0.0.1:{ports[2]}/"
        async with aiohttp.ClientSession() as http, http.get(url + "api/fleet") as r:
            snap = await r.json()
        assert [(d["device"], d["state"]) for d in snap["devices"]] == [("dev1", "never")]
        # `edge fleet page` serves the same for the running hub (found through the store's hub.json)
        port = pick_free_port("127.0.0.1")
        viewer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli.main", "fleet", "page", "--store", str(tmp_path / "hub"),
            "--page", f"127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            assert viewer.stdout is not None
            line = (await asyncio.wait_for(viewer.stdout.readline(), 30)).decode()
            assert line.strip() == f"fleet page: http://127.0.0.1:{port}/"
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/api/fleet") as r:
                assert [d["device"] for d in (await r.json())["devices"]] == ["dev1"]
            viewer.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(viewer.wait(), 20) == 0
        finally:
            if viewer.returncode is None:
                viewer.kill()
                await viewer.wait()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
