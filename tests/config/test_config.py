from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import embedded_default, load_config
from edge.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(text)
    return path


def test_full_config_parses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[device]
id = "drone7"
data_dir = "state"
[nats]
port = 4333
[state]
persist_interval = 0.5
[sandbox]
deadline = 1.5
max_worker_rss_mb = 64
max_hops = 3
[record]
enabled = false
[log]
level = "DEBUG"
[schemas.wind]
fields = { speed = "f64", source = "str" }
[[components]]
manifest = "c/physics/manifest.toml"
[[entities]]
id = "d1"
kind = "drone"
labels = { fleet = "n" }
components = { position = { x = 1.0 } }
[[drivers]]
name = "baro"
kind = "bme280"
entity = "d1"
""",
    )
    cfg = load_config(path)
    assert cfg.device == "drone7"
    assert cfg.data_dir == tmp_path / "state"
    assert cfg.nats.port == 4333 and cfg.nats.url == ""
    assert cfg.state.persist_interval == 0.5
    assert cfg.sandbox.deadline == 1.5
    assert cfg.sandbox.max_worker_rss_mb == 64
    assert cfg.sandbox.max_hops == 3
    assert cfg.record is False
    assert cfg.log_level == "debug"
    assert cfg.schemas[0].name == "wind" and cfg.schemas[0].fields["source"] == "str"
    assert cfg.components == [tmp_path / "c/physics/manifest.toml"]
    assert cfg.entities[0].components == {"position": {"x": 1.0}}
    assert [(d.name, d.kind, d.entity, d.backend) for d in cfg.drivers] == [("baro", "bme280", "d1", "real")]
    assert cfg.drivers[0].table == {"name": "baro", "kind": "bme280", "entity": "d1"}
    assert not cfg.demo


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[device]\nid = 'Bad Id'", "device.id"),
        ("[nats]\nport = 'x'", "nats.port"),
        ("[nats]\nport = 70000", "nats.port"),
        ("[nats]\nwat = 1", "nats.wat"),
        ("[state]\npersist_interval = 0", "state.persist_interval"),
        ("[log]\nlevel = 'loud'", "log.level"),
        ("[schemas.wind]\nfields = { speed = 'float' }", "schemas.wind.fields.speed"),
        ("[[components]]\npath = 'x'", "components[0].path"),
        ("[[entities]]\nid = 'no spaces'", "entities[0].id"),
        ("components = 3", "components"),
        ("colour = 'red'", "colour"),
        ("[sandbox]\nmax_hops = 65", "sandbox.max_hops"),
        ("[sandbox]\nmax_hops = 0", "sandbox.max_hops"),
        ("[record]\nenabled = 1", "record.enabled"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key
    assert err.value.file == str(path)
    assert f"key '{key}' in {path}" in str(err.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[device\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_embedded_default_is_the_demo(tmp_path: Path) -> None:
    cfg = embedded_default(data_dir=tmp_path, drones=3)
    assert cfg.device == "demo" and cfg.demo and cfg.demo_drones == 3 and cfg.nats.url == ""
