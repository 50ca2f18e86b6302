"""Config fragments as signed OTA artifacts: validated over the base config before anything
changes, live sections applied at once and the others pending a restart, on probation with the
bundle, rolled back with it, and crash-safe across restarts (docs/ota.md, *Config fragments*)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from edge.cli.status import render
from edge.config import DeviceConfig
from edge.ota.errors import OtaError
from edge.ota.fragments import abandon_start, load_device_config

from settings_rig import BASE_CEILING, SettingsRig
from support import ota_status, versions, wait_for

pytestmark = pytest.mark.timeout(90)

V1 = "[safety]\nceiling = 50.0\n\n[sandbox]\ndeadline = 1.5\n\n[policy]\nusage_interval = 2.5\n"
V2 = "[safety]\nceiling = 40.0\nmax_horizontal_speed = 3.0\n"


@pytest.fixture
async def rig(tmp_path: Path, nc: Client, nats_url: str) -> AsyncIterator[SettingsRig]:
    r = SettingsRig(tmp_path, nc, nats_url)
    r.fragment("limits", "1.0.0", V1)
    r.fragment("limits", "2.0.0", V2)
    r.fragment("limits", "9.0.0", "[safety]\nceiling = -5000.0\n")  # out of range: the loader refuses it
    r.fragment("link", "1.0.0", '[hub]\nurl = "nats://elsewhere:7422"\n', checked=False)
    await r.upload()
    try:
        yield r
    finally:
        await r.stop()


async def test_good_fragment_is_applied_live_and_reported_with_pending_restart(rig: SettingsRig) -> None:
    rt = await rig.start()
    assert rig.ceiling() == BASE_CEILING
    await rig.desire("r1", {"blink": "1.0.0", "config:limits": "1.0.0"})
    await rig.committed("r1")
    assert versions(rt) == {"blink": "1.0.0"}
    assert rig.ceiling() == 50.0  # [safety] applied live
    config = ota_status(rt)["config"]
    assert config == {"fragments": ["limits@1.0.0"], "live": ["policy", "safety"], "pending_restart": ["sandbox"],
                      "error": None}
    assert rig.layer("policy").config.usage_interval == 2.5  # [policy] applied live
    assert rig.state()["active"]["config:limits"]["version"] == "1.0.0"
    text = render(rt.status())
    assert "config fragments: limits@1.0.0" in text and "pending restart: [sandbox]" in text
    assert rt.sandbox.settings.deadline_s == 2.0  # not live: the running sandbox keeps its deadline
    await wait_for(lambda: any(e["kind"] == "committed" and e["revision"] == "r1" for e in rig.events))
    # the next start loads the fragment from the pointer file: nothing pending any more
    await rig.stop()
    rt = await rig.start()
    assert rt.config.fragments == ["limits@1.0.0"] and rt.config.sandbox.deadline == 1.5
    assert rig.ceiling() == 50.0
    await wait_for(lambda: ota_status(rt)["config"]["fragments"] == ["limits@1.0.0"])
    assert ota_status(rt)["config"]["pending_restart"] == []
    # a fragment replaced by another: the sandbox section goes back to the base (pending restart)
    await rig.desire("r2", {"blink": "1.0.0", "config:limits": "2.0.0"})
    await rig.committed("r2")
    assert rig.ceiling() == 40.0 and rig.layer("safety").config.defaults.max_horizontal_speed == 3.0
    assert ota_status(rt)["config"]["pending_restart"] == ["sandbox"]


async def test_bad_fragments_are_refused_naming_the_key_and_nothing_changes(rig: SettingsRig) -> None:
    rt = await rig.start()
    await rig.desire("r1", {"blink": "1.0.0", "config:limits": "1.0.0"})
    await rig.committed("r1")
    await wait_for(lambda: rig.state()["revision"] == "r1")  # the pointer is written off the loop
    before = (rig.tmp / "data" / "ota" / "state.json").read_bytes()
    await rig.desire("r2", {"blink": "1.0.0", "config:limits": "9.0.0"})
    await wait_for(lambda: (ota_status(rt)["last_error"] or {}).get("artifact") == "limits@9.0.0")
    err = ota_status(rt)["last_error"]
    assert err["reason"] == "invalid"
    assert "key 'safety.ceiling' in config fragment limits@9.0.0" in err["message"], err["message"]
    assert "update refused (invalid): config refused" in render(rt.status())
    await wait_for(lambda: any(e["kind"] == "refused" and "limits@9.0.0" in e["message"] for e in rig.events))
    assert (rig.tmp / "data" / "ota" / "state.json").read_bytes() == before
    assert rig.ceiling() == 50.0 and ota_status(rt)["revision"] == "r1"
    # a section a fragment may not set (the hub link), signed without the publisher's check
    await rig.desire("r3", {"blink": "1.0.0", "config:link": "1.0.0"})
    await wait_for(lambda: "section 'hub'" in ((ota_status(rt)["last_error"] or {}).get("message") or ""))
    err = ota_status(rt)["last_error"]
    assert "key 'hub' in config fragment link@1.0.0" in err["message"], err["message"]
    assert (rig.tmp / "data" / "ota" / "state.json").read_bytes() == before
    assert rt.config.hub is None


async def test_a_fragment_that_no_longer_loads_over_a_changed_base_is_not_used(rig: SettingsRig) -> None:
    await rig.start()
    await rig.desire("r1", {"blink": "1.0.0", "config:limits": "1.0.0"})
    await rig.committed("r1")
    await rig.stop()
    # the base now has a floor above the fragment's ceiling: base + fragment no longer loads
    rig.config.write_text(rig.config.read_text().replace("[safety]\n", "[safety]\nfloor = 60.0\n"))
    rt = await rig.start()
    assert rt.config.fragments == [] and rig.ceiling() == BASE_CEILING
    config = ota_status(rt)["config"]
    assert config["fragments"] == [] and "the floor (60 m) must be below the ceiling (50 m)" in config["error"]
    assert "key 'safety.floor'" in config["error"] and "running with the base config alone" in config["error"]
    assert "config fragments not in force:" in render(rt.status())
    assert versions(rt) == {"blink": "1.0.0"}  # everything else runs as committed


def test_the_publisher_refuses_forbidden_sections(tmp_path: Path) -> None:
    from edge.ota.fragments import pack_fragment

    for text, key in (('[device]\nid = "x"\n', "device"), ('[nats]\nurl = "nats://x"\n', "nats"),
                      ('[ota]\npoll_s = 1.0\n', "ota"), ('[policy]\nfile = "p.toml"\n', "policy.file"),
                      ('[[components]]\nmanifest = "m.toml"\n', "components")):
        path = tmp_path / "f.toml"
        path.write_text(text)
        with pytest.raises(OtaError) as info:
            pack_fragment(path)
        assert f"key '{key}'" in info.value.message


async def test_fragment_on_a_failing_probation_is_rolled_back_with_its_bundle(rig: SettingsRig) -> None:
    rt = await rig.start()
    await rig.desire("r1", {"blink": "1.0.0", "config:limits": "1.0.0"})
    await rig.committed("r1")
    await rig.desire("r2", {"blink": "3.0.0", "config:limits": "2.0.0"})  # 3.0.0 traps on probation
    await wait_for(lambda: ota_status(rt)["rolled_back"] == 1)
    status = ota_status(rt)
    assert "config:limits@2.0.0" in status["bad"] and "blink@3.0.0" in status["bad"]
    assert versions(rt) == {"blink": "1.0.0"}
    assert rig.ceiling() == 50.0  # the previous fragment set re-applied
    assert status["config"]["fragments"] == ["limits@1.0.0"]
    assert rig.state()["active"]["config:limits"]["version"] == "1.0.0"


async def test_restart_during_a_fragments_probation_resumes_it(rig: SettingsRig) -> None:
    rt = await rig.start()
    await rig.desire("r1", {"blink": "1.0.0", "config:limits": "1.0.0"})
    await rig.committed("r1")
    await rig.desire("r2", {"blink": "1.0.0", "config:limits": "2.0.0"}, probation_s=3.0)
    await wait_for(lambda: (rig.state()["probation"] or {}).get("revision") == "r2")
    await wait_for(lambda: rig.ceiling() == 40.0)  # the pointer is written before the fragment applies
    await rig.stop()  # a restart in the middle of the probation
    assert rig.state()["probation"]["boots"] == 0
    rt = await rig.start()
    assert rt.config.fragments == ["limits@2.0.0"] and rig.ceiling() == 40.0
    assert rig.state()["probation"]["boots"] == 1  # counted once, by the config loader
    await rig.committed("r2")
    assert ota_status(rt)["config"]["fragments"] == ["limits@2.0.0"] and rig.ceiling() == 40.0


async def test_starts_past_max_boots_come_up_with_the_previous_fragments(tmp_path: Path, nc: Client,
                                                                        nats_url: str) -> None:
    rig = SettingsRig(tmp_path, nc, nats_url, max_boots=1)
    rig.fragment("limits", "1.0.0", V1)
    rig.fragment("limits", "2.0.0", V2)
    await rig.upload()
    try:
        rt = await rig.start()
        await rig.desire("r1", {"blink": "1.0.0", "config:limits": "1.0.0"})
        await rig.committed("r1")
        await rig.desire("r2", {"blink": "1.0.0", "config:limits": "2.0.0"}, probation_s=60.0)
        await wait_for(lambda: (rig.state()["probation"] or {}).get("revision") == "r2")
        await rig.stop()
        # a start that never got as far as the update layer (as when the new fragment breaks an
        # earlier layer) still counts: the pointer file decides what the next start loads
        assert load_device_config(rig.config).fragments == ["limits@2.0.0"]
        cfg = load_device_config(rig.config)
        assert cfg.fragments == ["limits@1.0.0"] and cfg.safety.defaults.ceiling == 50.0
        rt = await rig.start()
        assert rig.ceiling() == 50.0
        await wait_for(lambda: "config:limits@2.0.0" in ota_status(rt)["bad"])
        assert "restarted" in ota_status(rt)["bad"]["config:limits@2.0.0"]
        assert ota_status(rt)["config"]["fragments"] == ["limits@1.0.0"] and ota_status(rt)["revision"] == "r1"
    finally:
        await rig.stop()


async def test_edge_run_comes_up_with_the_previous_fragments_when_a_new_one_breaks_the_start(
        rig: SettingsRig) -> None:
    # valid config, but no server can hold a stream this large: the runtime cannot start with it
    rig.fragment("streams", "1.0.0", "[sync]\nevt_max_bytes = 1000000000000000\n")
    await rig.upload()
    rt = await rig.start()
    await rig.desire("r1", {"blink": "1.0.0", "config:limits": "1.0.0"})
    await rig.committed("r1")
    await rig.desire("r2", {"blink": "1.0.0", "config:limits": "1.0.0", "config:streams": "1.0.0"},
                     probation_s=60.0)
    await wait_for(lambda: (rig.state()["probation"] or {}).get("revision") == "r2")
    # the pointer names r2 a moment before its fragments are applied (r1's ["sandbox"] until then)
    await wait_for(lambda: ota_status(rt)["config"]["pending_restart"] == ["sandbox", "sync"])
    await rig.stop()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from edge.cli.main import main; sys.exit(main(sys.argv[1:]))",
        "run", "--config", str(rig.config), "--quiet", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_for(lambda: "config:streams@1.0.0" in rig.state()["bad"], timeout=60)
        state = rig.state()
        assert state["probation"] is None and state["revision"] == "r1"
        assert "config:streams" not in state["active"] and state["active"]["config:limits"]["version"] == "1.0.0"
        reason = state["bad"]["config:streams@1.0.0"]
        assert "did not start with config fragments limits@1.0.0, streams@1.0.0" in reason, reason
        assert "insufficient storage" in reason, reason
        assert proc.returncode is None  # it runs, with the previous fragments
        runtime_file = rig.tmp / "data" / "runtime.json"  # written once a start succeeded
        await wait_for(lambda: runtime_file.exists() and json.loads(runtime_file.read_text())["pid"] == proc.pid,
                       timeout=30)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_abandon_start_only_acts_on_fragments_of_a_probation(tmp_path: Path) -> None:
    cfg = DeviceConfig(device="x", data_dir=tmp_path)
    assert not abandon_start(cfg, RuntimeError("no fragments, no [ota]: not ours"))
