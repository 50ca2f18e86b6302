"""`edge cloud run` + `edge run` with a [hub] + `edge fleet status` + `edge cloud send`, as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge.nats.server import pick_free_port

DEVICE = """
[device]
id = "dev2"
[hub]
url = "{leaf}"
user = "dev2"
password = "{password}"
[[entities]]
id = "pod"
[[drivers]]
name = "lamp"
kind = "led"
entity = "pod"
backend = "emulated"
pin = 5
"""


def edge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def wait_until(fn, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.3)


def test_hub_device_fleet_and_command_round_trip(tmp_path: Path) -> None:
    env = dict(os.environ, EDGE_HUB_DIR=str(tmp_path / "hub"), EDGE_DATA_DIR=str(tmp_path / "dev2"))
    port, leaf_port = pick_free_port(), pick_free_port()
    hub = subprocess.Popen(
        [sys.executable, "-m", "edge.cli.main", "cloud", "run", "--device", "dev2",
         "--port", str(port), "--leaf-port", str(leaf_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    device = None
    try:
        hub_file = tmp_path / "hub" / "hub.json"
        wait_until(hub_file.exists)
        info = json.loads(hub_file.read_text())
        password = json.loads((tmp_path / "hub" / "devices.json").read_text())["dev2"]
        cfg = tmp_path / "dev2.toml"
        cfg.write_text(DEVICE.format(leaf=info["leaf_url"], password=password))
        device = subprocess.Popen(
            [sys.executable, "-m", "edge.cli.main", "run", "--config", str(cfg), "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def fleet_up() -> bool:
            res = edge("fleet", "status", "--json", env=env)
            rows = json.loads(res.stdout) if res.returncode == 0 else []
            return any(r["device"] == "dev2" and r["link"] == "up" for r in rows)

        wait_until(fleet_up)
        assert "dev2" in edge("fleet", "status", env=env).stdout
        sent = edge("cloud", "send", "dev2", "pod.lamp", '{"on": true}', "--ttl", "60", env=env)
        assert sent.returncode == 0 and "queued for dev2" in sent.stdout

        def lamp_on() -> bool:
            res = edge("entity", "get", "pod", env=env)
            return res.returncode == 0 and json.loads(res.stdout)["components"].get("lamp", {}).get("value") == 1.0

        wait_until(lamp_on)
        bad = edge("cloud", "send", "dev2", "pod.lamp", "{nope", env=env)
        assert bad.returncode == 1 and "not JSON" in bad.stderr
    finally:
        for proc in (device, hub):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    assert proc.wait(30) == 0
                finally:
                    if proc.poll() is None:
                        proc.kill()
