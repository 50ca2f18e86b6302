"""The systemd notify protocol of `edge run` (Type=notify, WatchdogSec), against a real AF_UNIX
datagram socket that the test listens on as the service manager would."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.service.notify import Notifier, NotifyError

pytestmark = pytest.mark.timeout(90)

CONFIG = """
[device]
id = "notify1"
[[entities]]
id = "probe"
kind = "sensor"
components = { position = { x = 0.0 } }
"""


class Manager:
    """The receiving end of $NOTIFY_SOCKET: every datagram with the time it arrived."""

    def __init__(self, path: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, line: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, text in list(self.messages):
                if line in text.split("\n"):
                    return at
            time.sleep(0.02)
        raise AssertionError(f"no {line} within {timeout} s; got {self.texts()}")

    def texts(self) -> list[str]:
        return [t for _, t in self.messages]

    def times(self, line: str) -> list[float]:
        return [at for at, text in self.messages if line in text.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[str, Manager]]:
    path = str(tmp_path / "notify.sock")
    mgr = Manager(path)
    try:
        yield path, mgr
    finally:
        mgr.close()


def test_messages_reach_a_path_socket(manager: tuple[str, Manager]) -> None:
    path, mgr = manager
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert n.enabled and n.watchdog_interval == 1.5
    assert n.ready("device x ready") and n.watchdog() and n.stopping()
    mgr.wait_for("STOPPING=1", 2)
    assert mgr.texts() == ["READY=1\nSTATUS=device x ready", "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]
    assert n.sent == 3 and n.failed == 0
    n.close()


def test_abstract_socket() -> None:
    name = f"edge-test-{os.getpid()}-{time.monotonic_ns()}"
    mgr = Manager(b"\0" + name.encode())
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        mgr.wait_for("READY=1", 2)
    finally:
        mgr.close()


def test_without_a_manager_nothing_is_sent() -> None:
    n = Notifier.from_env({})
    assert not n.enabled and n.watchdog_interval is None
    assert not n.ready() and not n.watchdog()
    assert asyncio.run(asyncio.wait_for(n.feed_watchdog(), 1)) is None  # returns at once


@pytest.mark.parametrize(("env", "variable"), [
    ({"NOTIFY_SOCKET": "relative/path"}, "NOTIFY_SOCKET"),
    ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "soon"}, "WATCHDOG_USEC"),
    ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "0"}, "WATCHDOG_USEC"),
])
def test_malformed_environment_is_a_clear_error(env: dict[str, str], variable: str) -> None:
    with pytest.raises(NotifyError) as err:
        Notifier.from_env(env)
    assert err.value.variable == variable and variable in err.value.message


def test_watchdog_meant_for_another_process_is_ignored(manager: tuple[str, Manager]) -> None:
    path, _ = manager
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=4242)
    assert n.enabled and n.watchdog_interval is None


def test_a_vanished_socket_is_counted_not_raised(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "gone.sock"))
    assert not n.ready()
    assert n.failed == 1 and n.sent == 0


def test_the_environment_is_removed_for_children(manager: tuple[str, Manager], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = manager
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = Notifier.from_env(pid=os.getpid())
    assert n.enabled and n.watchdog_interval == 0.5
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ


def test_a_blocked_event_loop_stops_feeding_the_watchdog(manager: tuple[str, Manager]) -> None:
    path, mgr = manager
    n = Notifier(path, watchdog_usec=100_000)  # a ping every 50 ms

    async def scenario() -> tuple[float, float]:
        feeder = asyncio.create_task(n.feed_watchdog())
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        time.sleep(1.0)  # the loop hangs: nothing on it runs
        t1 = time.monotonic()
        await asyncio.sleep(0.5)
        feeder.cancel()
        return t0, t1

    t0, t1 = asyncio.run(scenario())
    pings = mgr.times("WATCHDOG=1")
    assert len([t for t in pings if t < t0]) >= 5
    assert not [t for t in pings if t0 + 0.1 < t < t1 - 0.01]  # none while the loop was blocked
    assert len([t for t in pings if t > t1]) >= 5  # and they resume when it runs again
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) >= 0.9


def test_edge_run_notifies_ready_watchdog_and_stopping(tmp_path: Path, manager: tuple[str, Manager]) -> None:
    path, mgr = manager
    config = tmp_path / "device.toml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000", EDGE_DATA_DIR=str(data))
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "stderr.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli.main", "run", "--config", str(config),
                                 "--log-level", "info"], env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        ready_at = mgr.wait_for("READY=1", 60)
        # ready means ready: the runtime file that clients use is written before READY=1
        assert (data / "runtime.json").exists(), log.read_text()
        ready = next(t for t in mgr.texts() if "READY=1" in t)
        assert "STATUS=device notify1 ready in" in ready
        time.sleep(1.0)
        assert len([t for t in mgr.times("WATCHDOG=1") if t > ready_at]) >= 3
        nats_pids = subprocess.run(["pgrep", "-P", str(proc.pid), "nats-server"], capture_output=True,
                                   text=True).stdout.split()
        assert nats_pids, "the embedded nats-server is a child of edge run"
        child_env = Path(f"/proc/{nats_pids[0]}/environ").read_bytes().split(b"\0")
        assert not [v for v in child_env if v.startswith(b"NOTIFY_SOCKET=")]  # only the main process notifies
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        assert mgr.wait_for("STOPPING=1", 2) > ready_at
    finally:
        if proc.poll() is None:
            proc.kill()


def test_edge_run_refuses_a_malformed_notify_socket(tmp_path: Path) -> None:
    config = tmp_path / "device.toml"
    config.write_text(CONFIG)
    env = dict(os.environ, NOTIFY_SOCKET="not-a-path", EDGE_DATA_DIR=str(tmp_path / "data"))
    res = subprocess.run([sys.executable, "-m", "edge.cli.main", "run", "--config", str(config)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("edge: NOTIFY_SOCKET 'not-a-path' is neither")
    assert not (tmp_path / "data" / "runtime.json").exists()  # refused before any work
