"""`edge run` as a real process: CLI commands, kill -9 loses at most one persist interval,
SIGTERM shuts down cleanly with exit code 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CONFIG = """
[device]
id = "proc1"
[state]
persist_interval = {interval}
[[entities]]
id = "probe"
kind = "sensor"
components = {{ position = {{ x = 0.0 }} }}
"""


def edge(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli.main", *args], env=env, capture_output=True, text=True, timeout=60, check=check
    )


class Device:
    def __init__(self, tmp: Path, interval: float = 0.3) -> None:
        self.tmp = tmp
        self.config = tmp / "device.toml"
        self.config.write_text(CONFIG.format(interval=interval))
        self.data = tmp / "data"
        self.env = dict(os.environ, EDGE_DATA_DIR=str(self.data))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.data / "runtime.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli.main", "run", "--config", str(self.config), "--log-level", "warning"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "stderr.log", "ab"),
        )
        deadline = time.monotonic() + 20
        while not (self.data / "runtime.json").exists():
            assert self.proc.poll() is None, (self.tmp / "stderr.log").read_text()
            assert time.monotonic() < deadline, "device did not become ready"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    dev = Device(tmp_path)
    try:
        yield dev
    finally:
        if dev.proc is not None and dev.proc.poll() is None:
            dev.proc.kill()
            dev.proc.wait()
        # the embedded nats-server dies with its parent; make sure of it
        subprocess.run(["pkill", "-f", str(dev.data / "nats")], check=False)


def test_cli_against_running_device(device: Device) -> None:
    device.start()
    env = device.env
    out = edge("status", env=env).stdout
    assert "device proc1" in out and "connected" in out and "probe" in out
    status = json.loads(edge("status", "--json", env=env).stdout)
    assert status["device"] == "proc1" and status["nats"]["connected"] is True
    assert status["nats"]["server"]["running"] is True
    edge("entity", "spawn", "rover", "--kind", "rover", "--label", "team=a", "--set", "position.x=3", env=env)
    got = json.loads(edge("entity", "get", "rover", env=env).stdout)
    assert got["labels"] == {"team": "a"} and got["components"]["position"]["x"] == 3.0
    edge("entity", "set", "rover", "position.y=4.5", "battery.level=0.5", env=env)
    got = json.loads(edge("entity", "get", "rover", env=env).stdout)
    assert got["components"]["position"]["y"] == 4.5 and got["components"]["battery"]["level"] == 0.5
    assert "rover" in edge("entity", "list", env=env).stdout
    bad = edge("entity", "set", "rover", "position.x=far", env=env, check=False)
    assert bad.returncode == 1 and "position.x" in bad.stderr and "number" in bad.stderr
    assert "Traceback" not in bad.stderr
    edge("entity", "rm", "rover", env=env)
    assert "rover" not in edge("entity", "list", env=env).stdout
    # a command is a request: nothing serves `rtl` here, and the answer says so at once
    refused = edge("cmd", "probe", "rtl", "{}", "--id", "c-7", env=env, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert json.loads(refused.stdout) == {"ok": False, "id": "c-7", "reason": "no-handler",
                                          "error": "nothing on device proc1 serves 'rtl' for 'probe'"}
    assert refused.stderr == "edge: nothing on device proc1 serves 'rtl' for 'probe' (no-handler)\n"
    bad = edge("cmd", "probe", "rtl", "[1]", env=env, check=False)
    assert bad.returncode == 1 and "must be a JSON object" in bad.stderr
    assert device.stop() == 0


def test_kill_9_loses_at_most_one_interval(device: Device) -> None:
    device.start()
    env = device.env
    edge("entity", "set", "probe", "position.x=1", env=env)
    time.sleep(1.0)  # > 3 persist intervals: this write must survive
    edge("entity", "set", "probe", "position.y=2", env=env)
    time.sleep(1.0)
    assert device.stop(signal.SIGKILL) == -signal.SIGKILL
    subprocess.run(["pkill", "-9", "-f", str(device.data / "nats")], check=False)
    device.start()
    got = json.loads(edge("entity", "get", "probe", env=env).stdout)
    assert got["components"]["position"]["x"] == 1.0
    assert got["components"]["position"]["y"] == 2.0
    assert device.stop() == 0


def test_sigterm_flushes_and_exits_zero(tmp_path: Path) -> None:
    dev = Device(tmp_path, interval=3600)  # only the shutdown flush can persist this write
    try:
        dev.start()
        edge("entity", "set", "probe", "position.z=7", env=dev.env)
        assert dev.stop(signal.SIGTERM) == 0
        assert not (dev.data / "runtime.json").exists()
        dev.start()
        got = json.loads(edge("entity", "get", "probe", env=dev.env).stdout)
        assert got["components"]["position"]["z"] == 7.0
        assert dev.stop(signal.SIGINT) == 0
    finally:
        if dev.proc is not None and dev.proc.poll() is None:
            dev.proc.kill()


def test_no_running_device_gives_one_sentence(tmp_path: Path) -> None:
    env = dict(os.environ, EDGE_DATA_DIR=str(tmp_path))
    res = edge("status", env=env, check=False)
    assert res.returncode == 1
    assert res.stderr.startswith("edge: no running device found")


def test_bad_config_names_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[state]\npersist_interval = 'often'\n")
    res = edge("run", "--config", str(cfg), env=dict(os.environ), check=False)
    assert res.returncode == 1
    assert f"key 'state.persist_interval' in {cfg}" in res.stderr


def test_component_load_whose_edge_init_fails_exits_1(device: Device) -> None:
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("edge_components_build", root / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.compile_wasm([root / "tests" / "wasm" / "components" / "initfail.c"], device.tmp / "initfail.wasm")
    manifest = device.tmp / "initfail.toml"
    manifest.write_text('name = "initfail"\nversion = "1.0.0"\ncontract = 1\nmodule = "initfail.wasm"\n')
    device.start()
    env = device.env
    bad = edge("component", "load", str(manifest), env=env, check=False)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == "edge: component 'initfail' failed to start: edge_init returned 1; it is not loaded\n"
    assert "initfail" not in edge("component", "list", env=env).stdout
    assert device.stop() == 0
