"""`edge run` as a real process: SIGHUP reloads the policy file (no file watching configured), a
bad file is refused and the old policy kept, and `edge accounting --json` shows it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

CONFIG = """
[device]
id = "hup1"
[policy]
file = "policy.toml"
watch_interval = 0
"""
RULE = '[[rule]]\nname = "{name}"\neffect = "allow"\nprincipal = "caller:a"\naction = "call"\n'


def accounting(env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "edge.cli.main", "accounting", "--json"], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)["policy"]  # type: ignore[no-any-return]


def until(pred: object, env: dict[str, str]) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while True:
        pol = accounting(env)
        if pred(pol):  # type: ignore[operator]
            return pol
        assert time.monotonic() < deadline, pol
        time.sleep(0.2)


def test_sighup_reloads_the_policy_file(tmp_path: Path) -> None:
    (tmp_path / "device.toml").write_text(CONFIG)
    policy = tmp_path / "policy.toml"
    policy.write_text(RULE.format(name="first"))
    data = tmp_path / "data"
    env = dict(os.environ, EDGE_DATA_DIR=str(data))
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli.main", "run", "--config", str(tmp_path / "device.toml"),
                             "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "stderr.log", "ab"))
    try:
        deadline = time.monotonic() + 30
        while not (data / "runtime.json").exists():
            assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert accounting(env)["generation"] == 1
        policy.write_text(RULE.format(name="second") + RULE.format(name="third"))
        time.sleep(0.3)
        assert accounting(env)["generation"] == 1  # no watching: nothing changes by itself
        proc.send_signal(signal.SIGHUP)
        pol = until(lambda p: p["generation"] == 2, env)
        assert pol["rules"] == 2 and pol["error"] is None
        policy.write_text("[[rule]]\nname = 'x'\n")
        proc.send_signal(signal.SIGHUP)
        pol = until(lambda p: p["error"], env)
        assert pol["generation"] == 2 and pol["rules"] == 2 and "rule 'x'" in pol["error"]["message"]  # type: ignore[index]
        assert proc.poll() is None  # still running
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
