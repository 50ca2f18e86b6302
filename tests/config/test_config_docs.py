"""What README.md ("Configuration"), docs/policy.md ("The policy file") and docs/agents.md
("Configuration", "Permissions") promise about the device config, checked from the docs alone:
the README's sample file loads with the values it shows, every documented default holds, and a
bad key, type, range or file stops ``edge run`` with one sentence naming the key and the file
(never a traceback), in the documented form ``<sentence> (key '<key>' in <file>)``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli.main import main
from edge.config import default_device_id, load_config
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def readme_sample() -> str:
    """The ```toml block of the README's Configuration section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration"):text.index("## Cloud hub")]
    m = re.search(r"```toml\n(.*?)```", section, re.S)
    assert m, "the README's Configuration section has a TOML sample"
    return m.group(1)


def write(tmp_path: Path, text: str, name: str = "device.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_readme_sample_loads_with_the_values_it_shows(tmp_path: Path) -> None:
    path = write(tmp_path, readme_sample())
    cfg = load_config(path)
    assert cfg.device == "drone7"
    assert cfg.data_dir == Path("/var/lib/edge")
    assert (cfg.nats.url, cfg.nats.port, cfg.nats.credentials) == ("", 0, None)
    # 0 = the default (half the filesystem / 64 MiB), kept as "not set"
    assert cfg.nats.max_store_bytes is None and cfg.nats.max_mem_bytes is None
    assert (cfg.state.bucket, cfg.state.persist_interval) == ("edge-state", 1.0)
    sb = cfg.sandbox
    assert (sb.deadline, sb.recycle_after, sb.workers, sb.max_worker_rss_mb, sb.max_hops) == (2.0, 64, 1, 96, 8)
    assert cfg.record is True
    assert (cfg.log_level, cfg.log_json) == ("info", False)
    assert [s.name for s in cfg.schemas] == ["wind"]
    assert cfg.components == [tmp_path / "components/physics/manifest.toml"]
    assert cfg.entities[0].id == "drone7" and cfg.entities[0].labels == {"fleet": "north"}
    assert cfg.drivers[0].name == "baro"
    assert Path(cfg.models[0].path) == tmp_path / "models/face_detection_short_range.tflite"
    assert cfg.agents and cfg.vision
    assert cfg.sync.tele_max_bytes == 67108864 and cfg.sync.evt_max_bytes == 16777216
    assert cfg.sync.tele_max_age_s == 604800 and cfg.sync.cmd_max_age_s == 3600 and cfg.sync.record is False
    assert cfg.policy.file == tmp_path / "policy.toml"
    assert (cfg.policy.usage_interval, cfg.policy.watch_interval) == (10.0, 1.0)
    assert cfg.ota is not None and cfg.ota.root == tmp_path / "fleet-root.json" and cfg.ota.probation_s == 60.0
    assert cfg.language.enabled and cfg.language.embedder == "auto"
    assert cfg.language.documents == (tmp_path / "docs",)
    assert cfg.hub is not None


def test_every_section_is_optional_and_the_documented_defaults_hold(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.device == default_device_id()  # the hostname
    assert (cfg.nats.url, cfg.nats.port, cfg.nats.credentials) == ("", 0, None)
    assert cfg.nats.max_store_bytes is None and cfg.nats.max_mem_bytes is None
    assert (cfg.state.bucket, cfg.state.persist_interval) == ("edge-state", 1.0)
    sb = cfg.sandbox
    assert (sb.deadline, sb.recycle_after, sb.workers, sb.max_worker_rss_mb, sb.max_hops) == (2.0, 64, 1, 96, 8)
    assert cfg.record is True
    assert (cfg.log_level, cfg.log_json) == ("info", False)
    assert cfg.hub is None and cfg.ota is None
    assert cfg.policy.file is None  # no file: every message allowed, metered
    assert (cfg.policy.usage_interval, cfg.policy.watch_interval) == (10.0, 1.0)
    s = cfg.safety.defaults
    assert (s.max_horizontal_speed, s.max_vertical_speed, s.ceiling, s.battery_reserve) == (5.0, 2.0, 120.0, 0.2)
    assert cfg.language.enabled  # on unless enabled = false
    assert cfg.tools.permissions.open  # no [tools.callers]: every tool open


def test_the_data_dir_default_is_the_state_dir_of_the_id_or_edge_data_dir(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[device]\nid = "d7"\n')
    monkeypatch.delenv("EDGE_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert load_config(path).data_dir == Path.home() / ".local/state/edge/d7"
    monkeypatch.setenv("EDGE_DATA_DIR", str(tmp_path / "env"))
    assert load_config(path).data_dir == tmp_path / "env"


def test_paths_are_relative_to_the_file_and_absolute_ones_are_kept(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, '[device]\nid = "p"\ndata_dir = "state"\n[nats]\ncredentials = "/abs/x.creds"\n'
                      '[policy]\nfile = "policy.toml"\n[[components]]\nmanifest = "c/manifest.toml"\n')
    cfg = load_config(path)
    assert cfg.data_dir == sub / "state"
    assert cfg.nats.credentials == "/abs/x.creds"
    assert cfg.policy.file == sub / "policy.toml"
    assert cfg.components == [sub / "c/manifest.toml"]


#: (file text, the key the error must name, words the sentence must have). Every kind of mistake
#: the README names: an unknown key, a wrong type, a value out of range, in every section.
BAD: list[tuple[str, str, str]] = [
    # unknown keys and sections
    ("[nats]\nadress = 1\n", "nats.adress", "unknown key 'adress'"),
    ("[natz]\nport = 1\n", "natz", "unknown key 'natz'"),
    ('[[drivers]]\nname = "baro"\nkind = "bme280"\nentity = "d"\nadress = 0x76\n', "drivers[0].adress",
     "unknown key 'adress' for kind 'bme280'"),
    ('[[agents]]\nkind = "follow"\nentity = "d"\ngian = 1\n', "agents[0].gian", "unknown key 'gian'"),
    ('[[components]]\nmanifst = "x"\n', "components[0].manifst", "unknown key 'manifst'"),
    # wrong types
    ('[nats]\nport = "4222"\n', "nats.port", "expected an integer"),
    ("[device]\nid = 5\n", "device.id", "expected a string"),
    ('[state]\npersist_interval = "1"\n', "state.persist_interval", "expected a number"),
    ("[sandbox]\nworkers = 1.5\n", "sandbox.workers", "expected an integer"),
    ('[log]\njson = "yes"\n', "log.json", "expected true or false"),
    ("[record]\nenabled = 1\n", "record.enabled", "expected true or false"),
    ('[tools.callers]\nplanner = "list_entities"\n', "tools.callers.planner", "expected a list of strings"),
    ('[[models]]\nname = "a"\npath = "a.tflite"\n[[models]]\nname = "b"\npath = 5\n', "models[1].path",
     "expected a path"),
    ("nats = 5\n", "nats", "expected a table"),
    ('[ota]\nprobation_s = "x"\n', "ota.probation_s", "expected a number"),
    # out of range / not one of the choices
    ("[nats]\nport = 70000\n", "nats.port", "must be within 0..65535"),
    ("[sandbox]\nmax_hops = 0\n", "sandbox.max_hops", "must be within 1..64"),
    ("[sandbox]\nmax_hops = 65\n", "sandbox.max_hops", "must be within 1..64"),
    ("[state]\npersist_interval = nan\n", "state.persist_interval", "must be within"),
    ('[log]\nlevel = "verbose"\n', "log.level", "must be one of debug, info, warning, error"),
    ("[policy]\nusage_interval = 0.05\n", "policy.usage_interval", "must be within 0.1..86400"),
    ("[policy]\nusage_interval = 100000\n", "policy.usage_interval", "must be within 0.1..86400"),
    ("[policy]\nwatch_interval = -1\n", "policy.watch_interval", "must be within 0.."),
    ("[sync]\ntele_max_bytes = -5\n", "sync.tele_max_bytes", "must be at least 0"),
    ("[safety]\nmax_horizontal_speed = -1.0\n", "safety.max_horizontal_speed", "must be within"),
    ('[safety.drone7]\nfence_radius = "x"\n', "safety.drone7.fence_radius", "expected a number"),
    ('[language]\nembedder = "gpt"\n', "language.embedder", "must be one of auto, minilm, lexical"),
    ('[[entities]]\nid = "a b"\n', "entities[0].id", "entity ids are"),
    ('[device]\nid = "Drone 7"\n', "device.id", "must be 1-63 characters"),
]


@pytest.mark.parametrize("text,key,words", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_a_bad_value_is_one_sentence_naming_the_key_and_the_file(tmp_path: Path, text: str, key: str,
                                                                 words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.key, err.file) == (key, str(path))
    msg = str(err)
    assert words in msg, msg
    assert msg.endswith(f"(key '{key}' in {path})"), msg
    assert "\n" not in msg


def test_the_readme_error_sentence_is_the_one_edge_run_prints(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The README's example, word for word but for the file: ``edge run`` exits 1 with it."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"```\n(.*\(key 'drivers\[0\]\.adress' in /etc/edge/device\.toml\))\n```", text)
    assert m, "the README shows the error of drivers[0].adress"
    path = write(tmp_path, '[[drivers]]\nname = "baro"\nkind = "bme280"\nentity = "drone7"\nbus = 1\n'
                           "adress = 0x76\n")
    assert main(["run", "--config", str(path), "--data-dir", str(tmp_path / "data"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "edge: " + m.group(1).replace("/etc/edge/device.toml", str(path))


def test_the_agents_doc_error_sentence(tmp_path: Path) -> None:
    path = write(tmp_path, '[[agents]]\nkind = "follow"\nentity = "drone-1"\ngian = 2\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"unknown key 'gian' (key 'agents[0].gian' in {path})"


def test_documented_bounds_are_accepted(tmp_path: Path) -> None:
    """The edges of the documented ranges load: max_hops 1 and 64, usage_interval 0.1 and
    86400, watch_interval 0 (no watching), port 65535, every log level."""
    for text in ("[sandbox]\nmax_hops = 1\n", "[sandbox]\nmax_hops = 64\n", "[policy]\nusage_interval = 0.1\n",
                 "[policy]\nusage_interval = 86400\n", "[policy]\nwatch_interval = 0\n",
                 "[nats]\nport = 65535\n", '[log]\nlevel = "debug"\n', '[log]\nlevel = "error"\n',
                 '[log]\nlevel = "warning"\n', "[language]\nenabled = false\n"):
        load_config(write(tmp_path, text))


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not a config at all, and the sentence each gets."""
    (tmp_path / "a-directory").mkdir()
    write(tmp_path, "[nats\nport = 1\n", "broken.toml")
    (tmp_path / "latin1.toml").write_bytes(b'[device]\nid = "caf\xe9"\n')
    return {
        "missing": (tmp_path / "missing.toml", "config file not found"),
        "directory": (tmp_path / "a-directory", "config file cannot be read"),
        "invalid TOML": (tmp_path / "broken.toml", "invalid TOML"),
        "not UTF-8": (tmp_path / "latin1.toml", "not UTF-8 text"),
    }


def test_a_bad_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    for what, (path, words) in bad_files(tmp_path).items():
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.file == str(path), what
        assert str(info.value).startswith(words), (what, str(info.value))
        assert str(info.value).endswith(f"(in {path})"), (what, str(info.value))


def test_edge_run_on_a_bad_file_prints_one_sentence_and_exits_1(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    for what, (path, words) in bad_files(tmp_path).items():
        code = main(["run", "--config", str(path), "--data-dir", str(tmp_path / "data"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 1, what
        assert err.startswith(f"edge: {words}") and f"(in {path})" in err, (what, err)
        assert err.count("\n") == 1, (what, err)


def test_edge_run_never_shows_a_traceback_on_bad_input(tmp_path: Path) -> None:
    """The real CLI in its own process: a bad key and a bad file each exit 1 with one line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGE_DATA_DIR": str(tmp_path / "data")}
    cases = [write(tmp_path, "[sandbox]\nmax_hops = 100\n", "hops.toml"), tmp_path / "nope.toml",
             write(tmp_path, "= 1\n", "garbage.toml")]
    for path in cases:
        proc = subprocess.run([sys.executable, "-m", "edge.cli.main", "run", "--config", str(path), "--quiet"],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 1, proc
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edge: ") and str(path) in lines[0], proc.stderr
