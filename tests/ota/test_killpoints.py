"""kill -9 at random points of download, verification, staging, activation and probation: every
restart runs the old or the new version of the whole bundle, never neither and never a mix, and
then finishes or rolls back without help (docs/ota.md, *Crash safety*).

The default suite kills 10 times; ``make ota-killtest`` (``EDGE_OTA_KILLS=100``, marker ``slow``)
runs 100 kill points.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from edge.ota import hub, repo as fleet

from support import TRAP_CODE, component, publish_component

KILLS = int(os.environ.get("EDGE_OTA_KILLS", "10"))
VERSIONS = ["1.0.0", "2.0.0", "3.0.0", "4.0.0"]  # 3.0.0 of 'b' traps: its bundle rolls back
pytestmark = pytest.mark.timeout(60 + KILLS * 12)


def _start(url: str, data: Path, root: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("killchild.py")), url, str(data),
                             str(root)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the runtime and anything in its session
    proc.wait()


def _live(data: Path) -> dict | None:  # type: ignore[type-arg]
    try:
        return dict(json.loads((data / "live.json").read_text()))
    except (OSError, ValueError):
        return None


def _boots(data: Path) -> int:
    try:
        return len((data / "boots.jsonl").read_text().splitlines())
    except OSError:
        return 0


async def _wait(pred, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_kill_9_at_random_points(tmp_path: Path, nc: Client, nats_url: str) -> None:
    rnd = random.Random(int(os.environ.get("EDGE_OTA_SEED", "12")))
    js = nc.jetstream()
    repo = tmp_path / "fleet"
    fleet.keygen(repo)
    for v in VERSIONS:
        for name in ("a", "b"):
            code = TRAP_CODE if (name == "b" and v == "3.0.0") else b"\x41\x00"
            publish_component(repo, tmp_path, component(tmp_path / "src", name, v, code))
    await fleet.upload(js, repo)
    root = repo / "metadata" / "1.root.json"
    data = tmp_path / "dev"
    data.mkdir()
    await hub.set_desired(js, "kill1", "r0", {"a": "1.0.0", "b": "1.0.0"})
    proc = _start(nats_url, data, root)
    try:
        assert await _wait(lambda: ((_live(data) or {}).get("ota") or {}).get("revision") == "r0", 60)
        _kill(proc)
        revision = 0
        phases: dict[str, int] = {}
        for _ in range(KILLS):
            revision += 1
            version = VERSIONS[revision % len(VERSIONS)]
            await hub.set_desired(js, "kill1", f"r{revision}", {"a": version, "b": version})
            proc = _start(nats_url, data, root)
            (data / "live.json").unlink(missing_ok=True)
            if rnd.random() < 0.2:  # a kill during start-up (the boot's own activation)
                await asyncio.sleep(rnd.uniform(0.1, 1.5))
            else:  # once it is up: somewhere in download, verification, staging, activation, probation
                booted = _boots(data)
                await _wait(lambda booted=booted: _boots(data) > booted, 60)
                await asyncio.sleep(rnd.uniform(0.0, 1.2))
            live = _live(data)
            _kill(proc)
            ota = (live or {}).get("ota") or {}
            phase = ("start-up" if live is None else "probation" if ota.get("probation")
                     else "done" if ota.get("revision") == f"r{revision}" else "fetch/verify/stage")
            phases[phase] = phases.get(phase, 0) + 1
        boots = [json.loads(line) for line in (data / "boots.jsonl").read_text().splitlines()]
        print(f"kill points: {phases}; restarts that came up: {len(boots) - 1}")
        assert len(boots) >= 1 + KILLS // 2  # most kills land after start-up (a fifth during it)
        for boot in boots[1:]:
            running = boot["running"]
            assert set(running) == {"a", "b"}, f"a restart ran {running}"  # never neither
            assert running["a"] == running["b"], f"a restart ran a mixed bundle {running}"
            assert running["a"] in VERSIONS
        # and then it finishes or rolls back without help
        proc = _start(nats_url, data, root)
        want = VERSIONS[revision % len(VERSIONS)]

        def settled() -> bool:
            live = _live(data) or {}
            ota = live.get("ota") or {}
            if ota.get("probation") is not None:
                return False
            if ota.get("revision") == f"r{revision}":
                return live.get("running") == {"a": want, "b": want}
            return f"b@{want}" in (ota.get("bad") or {})  # rolled back (3.0.0 traps)

        assert await _wait(settled, 60), _live(data)
        live = _live(data) or {}
        assert live["running"]["a"] == live["running"]["b"]
    finally:
        if proc.poll() is None:
            _kill(proc)
