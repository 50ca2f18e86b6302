"""Every section is typed and validated at load: unknown keys refused naming key and file, paths
relative to the file, drivers checked without importing their heavy modules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.config import DriverSpec
from edge.agents.config import AgentSpec
from edge.agents.tools.permissions import ToolsConfig
from edge.config import DeviceConfig, embedded_default, load_config
from edge.errors import ConfigError
from edge.inference.config import ModelSpec, VisionSpec
from edge.sync.device.config import SyncConfig
from edge.sync.device.leaf import HubLink

ROOT = Path(__file__).resolve().parents[2]
#: The one message form: ["<what> '<name>': "]<lower-case sentence, no final period> (key '<key>' in <file>)
STYLE = re.compile(r"^(\w+ '[^']+': )?[a-z].*[^.] \(key '[^']+' in .+\)$")

# section -> (a minimal valid TOML for it, the key prefix its unknown key gets)
SECTIONS = {
    "top": ("", ""),
    "device": ("[device]\nid = 'd1'\n", "device."),
    "nats": ("[nats]\nport = 0\n", "nats."),
    "state": ("[state]\nbucket = 'b'\n", "state."),
    "sandbox": ("[sandbox]\nworkers = 1\n", "sandbox."),
    "log": ("[log]\nlevel = 'info'\n", "log."),
    "demo": ("[demo]\ndrones = 1\n", "demo."),
    "schemas": ("[schemas.wind]\nfields = { speed = 'f64' }\n", "schemas.wind."),
    "components": ("[[components]]\nmanifest = 'm.toml'\n", "components[0]."),
    "entities": ("[[entities]]\nid = 'e1'\n", "entities[0]."),
    "drivers": ("[[drivers]]\nname = 'baro'\nkind = 'bme280'\nentity = 'e1'\n", "drivers[0]."),
    "drivers-mavlink": ("[[drivers]]\nname = 'fc'\nkind = 'mavlink'\nentity = 'e1'\nport = '/dev/ttyAMA0'\n",
                        "drivers[0]."),
    "models": ("[[models]]\nname = 'm'\npath = 'm.tflite'\n", "models[0]."),
    "vision": ("[[vision]]\nmodel = 'm'\nentity = 'e1'\n", "vision[0]."),
    "agents": ("[[agents]]\nkind = 'follow'\nentity = 'e1'\n", "agents[0]."),
    "tools": ("[tools]\nenabled = true\n", "tools."),
    "hub": ("[hub]\nurl = 'nats-leaf://h:7422'\n", "hub."),
    "sync": ("[sync]\ntele_max_bytes = 1024\n", "sync."),
}


def write(tmp_path: Path, text: str, name: str = "device.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_section_refuses_an_unknown_key(tmp_path: Path, section: str) -> None:
    text, prefix = SECTIONS[section]
    load_config(write(tmp_path, text))  # the section as given is valid
    path = write(tmp_path, (text + "bogus_key = 1\n") if text else "bogus_key = 1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    key = f"{prefix}bogus_key"
    assert ei.value.key == key and ei.value.file == str(path)
    assert "unknown key 'bogus_key'" in str(ei.value)
    assert str(ei.value).endswith(f"(key '{key}' in {path})")


@pytest.mark.parametrize(("text", "key"), [
    ("[[drivers]]\nkind = 'bme280'\nentity = 'e'\n", "drivers[0].name"),
    ("[[drivers]]\nname = 'a'\nkind = 'bme280'\nentity = 'e'\n[[drivers]]\nname = 'a'\nkind = 'led'\n",
     "drivers[1].name"),
    ("[[drivers]]\nname = 'a'\nkind = 'bme280'\nentity = 'e'\nrate_hz = 0\n", "drivers[0].rate_hz"),
    ("[[drivers]]\nname = 'fc'\nkind = 'mavlink'\nentity = 'e'\nport = 'p'\nbaud = 'fast'\n", "drivers[0].baud"),
    ("[[drivers]]\nname = 'fc'\nkind = 'mavlink'\nentity = 'e'\n", "drivers[0].port"),
    ("[[models]]\nname = 'a'\npath = 'x'\nthreads = 0\n", "models[0].threads"),
    ("[[models]]\nname = 'a'\npath = 'x'\n[[models]]\nname = 'a'\npath = 'y'\n", "models[1].name"),
    ("[[vision]]\nmodel = 'm'\n", "vision[0].entity"),
    ("[[vision]]\nmodel = 'm'\nentity = 'e'\nmin_score = 2\n", "vision[0].min_score"),
    ("[[agents]]\nkind = 'follow'\nentity = 'e'\ngain = 'x'\n", "agents[0].gain"),
    ("[tools]\nack_timeout = 0\n", "tools.ack_timeout"),
    ("[tools.callers]\nplanner = ['fly']\n", "tools.callers.planner"),
    ("[hub]\nuser = 'x'\n", "hub.url"),
    ("[hub]\nurl = 'nats-leaf://h'\nuser = 'u'\ncredentials = 'c.creds'\n", "hub.credentials"),
    ("[sync]\ntele_max_bytes = -1\n", "sync.tele_max_bytes"),
    ("[schemas.wind]\nfeilds = { speed = 'f64' }\n", "schemas.wind.fields"),
    ("[[drivers]]\nname = 'cam'\nkind = 'camera'\nentity = 'e'\nsource = 'file'\n", "drivers[0].path"),
])
def test_section_errors_surface_at_load(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert ei.value.key == key and ei.value.file == str(path)
    assert STYLE.match(str(ei.value)), str(ei.value)
    assert str(ei.value).endswith(f"(key '{key}' in {path})")


def test_sections_are_typed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "".join(text for text, _ in SECTIONS.values() if "mavlink" not in text)))
    assert isinstance(cfg.hub, HubLink) and cfg.hub.url == "nats-leaf://h:7422"
    assert isinstance(cfg.sync, SyncConfig) and cfg.sync.tele_max_bytes == 1024
    assert isinstance(cfg.tools, ToolsConfig) and cfg.tools.enabled
    assert [type(m) for m in cfg.models] == [ModelSpec] and [type(v) for v in cfg.vision] == [VisionSpec]
    assert [type(a) for a in cfg.agents] == [AgentSpec] and cfg.agents[0].name == "follow-e1"
    assert [type(d) for d in cfg.drivers] == [DriverSpec] and cfg.drivers[0].kind == "bme280"
    assert cfg.components == [tmp_path / "m.toml"]
    streams = cfg.sync.streams(cfg.device, bucket=cfg.state.bucket, hub=True)
    assert streams.tele_max_bytes == 1024 and streams.hub_domain == "hub" and not streams.state_bucket


def test_defaults_without_sections(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.hub is None and cfg.sync == SyncConfig() and cfg.tools == ToolsConfig()
    assert cfg.drivers == cfg.models == cfg.vision == cfg.agents == []
    dflt = embedded_default(data_dir=tmp_path)
    assert dflt.hub is None and dflt.sync == SyncConfig() and dflt.tools.permissions.open


def test_the_demo_adds_typed_entries(tmp_path: Path) -> None:
    from edge.demo.fleet import DEMO_HW_ENTITY, apply_demo

    cfg = apply_demo(embedded_default(data_dir=tmp_path, drones=2))
    assert [(type(a), a.entity) for a in cfg.agents] == [(AgentSpec, DEMO_HW_ENTITY)]
    assert all(isinstance(m, ModelSpec) for m in cfg.models)
    assert all(isinstance(v, VisionSpec) and v.model == "face" for v in cfg.vision)
    assert len(cfg.models) == len(cfg.vision) <= 1  # the face model only with the demo extra


def test_every_path_is_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    path = write(conf, """
[device]
data_dir = "state"
[nats]
url = "nats://127.0.0.1:4222"
credentials = "nats.creds"
[[components]]
manifest = "c/physics/manifest.toml"
[[models]]
name = "face"
path = "models/face.tflite"
[[models]]
name = "tpu"
path = "models/det.tflite"
delegate = "lib/libdelegate.so"
[[models]]
name = "alias"
object = "x.tflite"
delegate = "edgetpu"
[[drivers]]
name = "gps"
kind = "nmea_gps"
entity = "e"
port = "dev/gps"
[[drivers]]
name = "fc"
kind = "mavlink"
entity = "e"
port = "/dev/ttyAMA0"
[[drivers]]
name = "cam"
kind = "camera"
entity = "e"
backend = "emulated"
source = "file"
path = "frames/face.png"
[hub]
url = "nats-leaf://hub:7422"
nkey_seed = "keys/dev.nk"
tls_ca = "ca.pem"
tls_cert = "/etc/ssl/dev.pem"
tls_key = "dev.key"
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "conf" / "device.toml")
    base = conf.resolve()
    assert cfg.data_dir == base / "state"
    assert cfg.nats.credentials == str(base / "nats.creds")
    assert cfg.components == [base / "c/physics/manifest.toml"]
    assert cfg.models[0].path == str(base / "models/face.tflite")
    assert cfg.models[1].delegate == str(base / "lib/libdelegate.so")
    assert cfg.models[2].delegate == "edgetpu"  # a library name, found by the loader
    assert cfg.hub is not None
    assert cfg.hub.nkey_seed == base / "keys/dev.nk" and cfg.hub.tls_ca == base / "ca.pem"
    assert cfg.hub.tls_cert == Path("/etc/ssl/dev.pem") and cfg.hub.tls_key == base / "dev.key"
    gps, fc, cam = (d.build() for d in cfg.drivers)
    assert gps.port == str(base / "dev/gps")
    assert fc.port == "/dev/ttyAMA0"
    assert str(cam.source.path) == str(base / "frames/face.png")
    assert path.exists()


def test_the_readme_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Configuration", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    path = write(tmp_path, block)
    cfg = load_config(path)
    assert isinstance(cfg, DeviceConfig) and cfg.device == "drone7"
    assert cfg.models[0].path == str(tmp_path / "models/face_detection_short_range.tflite")
    assert cfg.hub is not None and cfg.hub.tls_ca == tmp_path / "ca.pem"


def test_the_sample_driver_config_loads() -> None:
    cfg = load_config(ROOT / "docs" / "drivers" / "pi-drone.toml")
    assert {d.kind for d in cfg.drivers} >= {"mavlink", "nmea_gps", "camera", "ina219"}


def test_load_checks_mavlink_keys_without_importing_pymavlink(tmp_path: Path) -> None:
    path = write(tmp_path, SECTIONS["drivers-mavlink"][0] + "baud = 57600\n")
    code = (
        "import sys\nfrom edge.config import load_config\n"
        f"cfg = load_config({str(path)!r})\n"
        "assert cfg.drivers[0].kind == 'mavlink'\n"
        "assert 'pymavlink' not in sys.modules and 'drivers.serial.mavlink' not in sys.modules, 'imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_one_message_style(tmp_path: Path) -> None:
    """Every message: lower-case start, no trailing period, then (key '<key>' in <file>)."""
    for text, _ in SECTIONS.values():
        path = write(tmp_path, (text + "bogus_key = 1\n") if text else "bogus_key = 1\n")
        with pytest.raises(ConfigError) as ei:
            load_config(path)
        assert STYLE.match(str(ei.value)), str(ei.value)
