"""Signed component updates end to end: a real nats-server holding the fleet's store, a real
runtime with real wasm, python-tuf verifying (docs/ota.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from edge.ota import hub, repo as fleet
from edge.ota.layer import OtaLayer
from edge.ota.store import STATE_FILE
from edge.runtime import Runtime

from support import TRAP_CODE, component, device_config, ota_status, publish_component, versions, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def fleet_repo(tmp_path: Path, nc: Client) -> Path:
    repo = tmp_path / "fleet"
    fleet.keygen(repo)
    for v in ("1.0.0", "2.0.0"):
        publish_component(repo, tmp_path, component(tmp_path / "src", "blink", v))
    publish_component(repo, tmp_path, component(tmp_path / "src", "blink", "3.0.0", TRAP_CODE))
    await fleet.upload(nc.jetstream(), repo)
    return repo


@pytest.fixture
async def events(nc: Client) -> AsyncIterator[list[dict[str, Any]]]:
    got: list[dict[str, Any]] = []

    async def on(msg: Any) -> None:
        got.append({"kind": msg.subject.rsplit(".", 1)[-1], **json.loads(msg.data)})

    sub = await nc.subscribe("edge.dev1.evt.ota.>", cb=on)
    yield got
    await sub.unsubscribe()


@pytest.fixture
async def device(tmp_path: Path, nats_url: str, fleet_repo: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(device_config(tmp_path, nats_url, fleet_repo / "metadata" / "1.root.json"))
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def test_update_is_verified_activated_and_committed(device: Runtime, nc: Client,
                                                          events: list[dict[str, Any]]) -> None:
    js = nc.jetstream()
    await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r1")
    assert versions(device) == {"blink": "1.0.0"}
    await hub.set_desired(js, "dev1", "r2", {"blink": "2.0.0"})
    # runs on probation before the commit
    await wait_for(lambda: ota_status(device)["probation"] is not None and versions(device) == {"blink": "2.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r2")
    assert ota_status(device)["probation"] is None
    state = json.loads((device.config.data_dir / "ota" / STATE_FILE).read_text())
    assert state["active"]["blink"]["version"] == "2.0.0"
    await wait_for(lambda: sum(e["kind"] == "committed" for e in events) == 2)
    report = await hub.get_report(js, "dev1")
    assert report is not None and report["active"] == {"blink": "2.0.0"} and report["revision"] == "r2"


async def test_trap_on_probation_rolls_back_and_marks_bad(device: Runtime, nc: Client,
                                                          events: list[dict[str, Any]]) -> None:
    js = nc.jetstream()
    await hub.set_desired(js, "dev1", "r1", {"blink": "2.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r1")
    await hub.set_desired(js, "dev1", "r2", {"blink": "3.0.0"})
    await wait_for(lambda: ota_status(device)["rolled_back"] == 1)
    assert versions(device) == {"blink": "2.0.0"}
    st = ota_status(device)
    assert st["revision"] == "r1" and "blink@3.0.0" in st["bad"] and "trap" in st["bad"]["blink@3.0.0"]
    await wait_for(lambda: any(e["kind"] == "rolled_back" for e in events))
    rolled = [e for e in events if e["kind"] == "rolled_back"][0]
    assert rolled["revision"] == "r2" and "trap" in rolled["reason"]
    passes = st["reconciles"]
    await wait_for(lambda: ota_status(device)["reconciles"] >= passes + 5)
    assert ota_status(device)["rolled_back"] == 1  # the bad version is not tried again
    report = await hub.get_report(js, "dev1")
    assert report is not None and "blink@3.0.0" in report["bad"]


async def test_restart_during_probation_resumes_it(tmp_path: Path, nats_url: str, fleet_repo: Path,
                                                   nc: Client) -> None:
    root = fleet_repo / "metadata" / "1.root.json"
    js = nc.jetstream()
    # long enough that both starts and the stop between them fit in it on a loaded machine (the
    # resumed probation keeps its clock)
    PROBATION_S = 15.0  # noqa: N806
    await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
    rt = Runtime(device_config(tmp_path, nats_url, root, probation_s=PROBATION_S))
    await rt.start()
    try:
        await wait_for(lambda: ota_status(rt)["probation"] is not None)
    finally:
        await rt.stop()
    rt = Runtime(device_config(tmp_path, nats_url, root, probation_s=PROBATION_S))
    await rt.start()
    try:
        assert versions(rt) == {"blink": "1.0.0"}  # running again before the hub is asked anything
        assert ota_status(rt)["probation"] is not None  # still on probation, not committed by the restart
        await wait_for(lambda: ota_status(rt)["revision"] == "r1", timeout=PROBATION_S + 20)
    finally:
        await rt.stop()


@contextlib.asynccontextmanager
async def on_probation(tmp_path: Path, nats_url: str, fleet_repo: Path, nc: Client) -> AsyncIterator[OtaLayer]:
    """A device running blink 1.0.0 on a long probation (revision r1): its OTA layer."""
    root = fleet_repo / "metadata" / "1.root.json"
    await hub.set_desired(nc.jetstream(), "dev1", "r1", {"blink": "1.0.0"})
    rt = Runtime(device_config(tmp_path, nats_url, root, probation_s=60.0))
    await rt.start()
    try:
        await wait_for(lambda: ota_status(rt)["probation"] is not None and versions(rt) == {"blink": "1.0.0"})
        assert rt.layers is not None
        yield next(layer for layer in rt.layers.layers if isinstance(layer, OtaLayer))
    finally:
        await rt.stop()


async def test_a_stop_during_probation_is_no_verdict(tmp_path: Path, nats_url: str, fleet_repo: Path,
                                                    nc: Client) -> None:
    """While the device stops, its components stop under the probation watch: nothing may commit
    or roll back (and mark the new version bad) then; the next start resumes the probation."""
    async with on_probation(tmp_path, nats_url, fleet_repo, nc) as ota:
        await ota.stop()
        await ota._rollback("component blink 1.0.0 is not running")  # what the watch would say
        await ota._commit()
        assert ota.state.probation is not None and ota.state.probation.revision == "r1"
        assert ota.state.bad == {} and ota.state.revision != "r1"


async def test_a_commit_the_stop_cuts_into_is_carried_through_with_its_event(
        tmp_path: Path, nats_url: str, fleet_repo: Path, nc: Client) -> None:
    """A stop that cancels a commit in the middle of its pointer write: the write lands (it did
    before too), and so do the counter and the ``committed`` event (they were lost: the next
    start finds nothing on probation, so nothing would ever announce the commit)."""
    async with on_probation(tmp_path, nats_url, fleet_repo, nc) as ota:
        assert ota.store is not None
        sub = await nc.subscribe("edge.dev1.evt.ota.committed")
        save = ota.store.save_bytes

        def slow_save(data: bytes) -> None:  # a slow SD card
            time.sleep(0.5)
            save(data)

        ota.store.save_bytes = slow_save  # type: ignore[method-assign]
        committing = asyncio.create_task(ota._commit())
        await wait_for(lambda: ota._writing is not None and not ota._writing.done())
        committing.cancel()  # what the stop does to the probation watch
        await ota.stop()
        assert ota.state.probation is None and ota.state.revision == "r1"
        assert ota.counters["committed"] == 1
        event = json.loads((await sub.next_msg(timeout=5)).data)
        assert event["revision"] == "r1"


async def test_device_starts_offline_with_what_it_committed(tmp_path: Path, nats_url: str,
                                                            fleet_repo: Path, nc: Client) -> None:
    root = fleet_repo / "metadata" / "1.root.json"
    await hub.set_desired(nc.jetstream(), "dev1", "r1", {"blink": "2.0.0"})
    rt = Runtime(device_config(tmp_path, nats_url, root, probation_s=0.2))
    await rt.start()
    try:
        await wait_for(lambda: ota_status(rt)["revision"] == "r1")
    finally:
        await rt.stop()
    # the hub's store is gone (offline): the device still comes up with blink 2.0.0
    await nc.jetstream().delete_object_store(fleet.OTA_BUCKET)
    rt = Runtime(device_config(tmp_path, nats_url, root, probation_s=0.2))
    await rt.start()
    try:
        assert versions(rt) == {"blink": "2.0.0"}
    finally:
        await rt.stop()


async def test_key_rotation_is_followed_by_the_device(device: Runtime, nc: Client, fleet_repo: Path,
                                                      tmp_path: Path) -> None:
    js = nc.jetstream()
    await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r1")
    assert fleet.rotate(fleet_repo, "targets") == 2
    assert fleet.rotate(fleet_repo, "root") == 3
    publish_component(fleet_repo, tmp_path, component(tmp_path / "src", "blink", "4.0.0"))
    await fleet.upload(js, fleet_repo)
    await hub.set_desired(js, "dev1", "r2", {"blink": "4.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r2")  # the device walked root 1 -> 3
    trusted = json.loads((device.config.data_dir / "ota" / "tuf" / "root.json").read_text())
    assert trusted["signed"]["version"] == 3
    # a targets role signed with the retired key is refused now
    repo = fleet.open_repo(fleet_repo)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import MetaFile

    retired = sorted((fleet_repo / "keys" / "retired").glob("*targets-0.pem"))[0]
    old_signer = CryptoSigner(load_pem_private_key(retired.read_bytes(), None))  # type: ignore[arg-type]
    publish_component(fleet_repo, tmp_path, component(tmp_path / "src", "blink", "5.0.0"))
    targets = repo.load("targets")
    targets.signed.version += 1
    repo.write(targets, "targets", signers=[old_signer])
    snap = repo.load("snapshot")
    snap.signed.meta["targets.json"] = MetaFile(targets.signed.version)
    snap.signed.version += 1
    repo.write(snap, "snapshot")
    ts = repo.load("timestamp")
    ts.signed.snapshot_meta = MetaFile(snap.signed.version)
    ts.signed.version += 1
    repo.write(ts, "timestamp")
    await fleet.upload(js, fleet_repo)
    await hub.set_desired(js, "dev1", "r3", {"blink": "5.0.0"})
    await wait_for(lambda: (ota_status(device)["last_error"] or {}).get("reason") == "signature")
    assert versions(device) == {"blink": "4.0.0"}


async def test_bundle_is_all_or_nothing_and_unlisted_components_are_removed(
        device: Runtime, nc: Client, fleet_repo: Path, tmp_path: Path) -> None:
    js = nc.jetstream()
    src = tmp_path / "src"
    publish_component(fleet_repo, tmp_path, component(src, "other", "1.0.0"))
    publish_component(fleet_repo, tmp_path, component(src, "other", "2.0.0", contract=99))
    await fleet.upload(js, fleet_repo)
    await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0", "other": "1.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r1")
    assert versions(device) == {"blink": "1.0.0", "other": "1.0.0"}
    # blink 2.0.0 is fine but other 2.0.0 needs a contract the device lacks: neither changes
    await hub.set_desired(js, "dev1", "r2", {"blink": "2.0.0", "other": "2.0.0"})
    await wait_for(lambda: (ota_status(device)["last_error"] or {}).get("reason") == "contract")
    assert versions(device) == {"blink": "1.0.0", "other": "1.0.0"} and ota_status(device)["revision"] == "r1"
    # a component no longer listed is unloaded (and comes back on a rollback of that revision)
    await hub.set_desired(js, "dev1", "r3", {"blink": "2.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r3")
    assert versions(device) == {"blink": "2.0.0"}


async def test_component_kv_carries_across_the_update_and_the_rollback(device: Runtime, nc: Client) -> None:
    js = nc.jetstream()
    await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r1")
    kv = await js.key_value("edge-components")
    await kv.put("blink.count", b"7")  # what the component stored (its private KV)

    def handed() -> dict[str, bytes]:  # the KV snapshot the running instance was started with
        assert device.pool is not None
        return dict(device.pool._comps["blink"].kv)

    await hub.set_desired(js, "dev1", "r2", {"blink": "2.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r2")
    assert versions(device) == {"blink": "2.0.0"} and handed() == {"count": b"7"}
    await kv.put("blink.count", b"8")  # the new version changed it
    await hub.set_desired(js, "dev1", "r3", {"blink": "3.0.0"})  # traps: rolled back
    await wait_for(lambda: ota_status(device)["rolled_back"] == 1 and versions(device) == {"blink": "2.0.0"})
    assert handed() == {"count": b"8"}


async def test_malformed_desired_state_is_counted_and_dropped(device: Runtime, nc: Client) -> None:
    js = nc.jetstream()
    await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r1")
    kv = await js.key_value(hub.DESIRED_BUCKET)
    for junk in (b"{not json", b'{"revision": 5}', b'{"revision": "x", "components": {"a b": "1"}}',
                 b'{"revision": "x", "probation_s": -1}', b"x" * 70_000):
        n = ota_status(device)["malformed"]
        await kv.put("dev1", junk)
        await wait_for(lambda n=n: ota_status(device)["malformed"] > n)
        assert ota_status(device)["last_error"]["reason"] == "invalid"
    assert versions(device) == {"blink": "1.0.0"} and ota_status(device)["revision"] == "r1"


async def test_a_bad_version_is_not_retried_and_says_why(device: Runtime, nc: Client) -> None:
    js = nc.jetstream()
    await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r1")
    await hub.set_desired(js, "dev1", "r2", {"blink": "3.0.0"})
    await wait_for(lambda: ota_status(device)["rolled_back"] == 1)
    await hub.set_desired(js, "dev1", "r3", {"blink": "3.0.0"})  # the same bad version again
    # a pass over r2 after its rollback may already say r2 is waiting (on a loaded machine it
    # comes before r3 is desired): wait for the pass over r3
    await wait_for(lambda: (ota_status(device)["waiting"] or "").startswith("revision r3 "))
    assert "blink@3.0.0" in ota_status(device)["waiting"] and ota_status(device)["rolled_back"] == 1
    from edge.cli.status import render

    assert "waiting: revision r3 names blink@3.0.0" in render(device.status())


async def test_too_many_restarts_during_probation_roll_back(tmp_path: Path, nats_url: str,
                                                            fleet_repo: Path, nc: Client) -> None:
    root = fleet_repo / "metadata" / "1.root.json"
    js = nc.jetstream()
    await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
    rt = Runtime(device_config(tmp_path, nats_url, root, probation_s=0.3))
    await rt.start()
    try:
        await wait_for(lambda: ota_status(rt)["revision"] == "r1")
    finally:
        await rt.stop()
    await hub.set_desired(js, "dev1", "r2", {"blink": "2.0.0"})
    for boot in range(3):  # max_boots = 1: the second restart during the probation rolls it back
        rt = Runtime(device_config(tmp_path, nats_url, root, probation_s=60.0, max_boots=1))
        await rt.start()
        try:
            if boot == 0:
                await wait_for(lambda rt=rt: ota_status(rt)["probation"] is not None
                               and versions(rt) == {"blink": "2.0.0"})
            elif boot == 1:
                assert versions(rt) == {"blink": "2.0.0"} and ota_status(rt)["probation"] is not None
            else:
                assert versions(rt) == {"blink": "1.0.0"} and ota_status(rt)["probation"] is None
                assert "restarted 2 times" in ota_status(rt)["bad"]["blink@2.0.0"]
        finally:
            await rt.stop()


async def test_missing_root_file_the_device_starts_and_says_why(tmp_path: Path, nats_url: str) -> None:
    rt = Runtime(device_config(tmp_path, nats_url, tmp_path / "no-such-root.json"))
    await rt.start()
    try:
        err = ota_status(rt)["last_error"]
        assert err["reason"] == "signature" and "no-such-root.json" in err["message"]
    finally:
        await rt.stop()
