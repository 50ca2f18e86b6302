"""Every refusal of the update path ends with a clear error in ``edge status`` and an event, and
changes nothing on the device (docs/ota.md, *Refusals*)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from edge.cli.status import render
from edge.ota import hub, repo as fleet
from edge.ota.store import STATE_FILE
from edge.runtime import Runtime

from support import component, device_config, ota_status, publish_component, versions, wait_for

pytestmark = pytest.mark.timeout(90)


class Rig:
    def __init__(self, tmp: Path, nc: Client, url: str) -> None:
        self.tmp = tmp
        self.nc = nc
        self.js = nc.jetstream()
        self.url = url
        self.repo = tmp / "fleet"
        self.rt: Runtime | None = None
        self.events: list[dict[str, Any]] = []

    async def obs(self) -> Any:
        return await self.js.object_store(fleet.OTA_BUCKET)

    def publish(self, version: str, **kw: Any) -> str:
        return publish_component(self.repo, self.tmp, component(self.tmp / "src", "blink", version,
                                                                 **kw.pop("comp", {})), **kw)

    async def upload(self) -> None:
        await fleet.upload(self.js, self.repo)

    async def start(self, *, thresholds: dict[str, int] | None = None) -> Runtime:
        fleet.keygen(self.repo, thresholds=thresholds)
        self.publish("1.0.0")
        await self.upload()

        async def on(msg: Any) -> None:
            self.events.append({"kind": msg.subject.rsplit(".", 1)[-1], **json.loads(msg.data)})

        await self.nc.subscribe("edge.dev1.evt.ota.>", cb=on)
        self.rt = Runtime(device_config(self.tmp, self.url, self.repo / "metadata" / "1.root.json",
                                        probation_s=0.2))
        await self.rt.start()
        await hub.set_desired(self.js, "dev1", "r1", {"blink": "1.0.0"})
        await wait_for(lambda: ota_status(self.rt)["revision"] == "r1")  # type: ignore[arg-type]
        state = self.rt.config.data_dir / "ota" / STATE_FILE  # written off the event loop, just after
        await wait_for(lambda: json.loads(state.read_text())["revision"] == "r1")
        return self.rt

    async def expect_refusal(self, reason: str, version: str = "2.0.0") -> dict[str, Any]:
        rt = self.rt
        assert rt is not None
        state_before = (rt.config.data_dir / "ota" / STATE_FILE).read_bytes()
        await hub.set_desired(self.js, "dev1", "r2", {"blink": version})
        await wait_for(lambda: (ota_status(rt)["last_error"] or {}).get("reason") == reason)
        err = ota_status(rt)["last_error"]
        await wait_for(lambda: any(e["kind"] == "refused" and e.get("reason") == reason for e in self.events))
        assert versions(rt) == {"blink": "1.0.0"}  # nothing changed
        assert ota_status(rt)["revision"] == "r1" and ota_status(rt)["probation"] is None
        assert (rt.config.data_dir / "ota" / STATE_FILE).read_bytes() == state_before
        text = render(rt.status())
        assert f"update refused ({reason})" in text and err["message"] in text
        return dict(err)


@pytest.fixture
async def rig(tmp_path: Path, nc: Client, nats_url: str) -> AsyncIterator[Rig]:
    r = Rig(tmp_path, nc, nats_url)
    try:
        yield r
    finally:
        if r.rt is not None:
            await r.rt.stop()


async def _target_object(rig: Rig, version: str) -> str:
    obs = await rig.obs()
    names = [i.name for i in await obs.list() if i.name.endswith(f".{version}.tar")]
    assert len(names) == 1
    return str(names[0])


async def test_tampered_artifact(rig: Rig) -> None:
    await rig.start()
    rig.publish("2.0.0")
    await rig.upload()
    name = await _target_object(rig, "2.0.0")
    obs = await rig.obs()
    good = (await obs.get(name)).data
    bad = bytearray(good)
    bad[-1] ^= 0xFF  # same length, one byte flipped
    await obs.put(name, bytes(bad))
    err = await rig.expect_refusal("tampered")
    assert "component/blink/2.0.0.tar" in err["message"]


async def test_artifact_over_its_declared_length(rig: Rig) -> None:
    await rig.start()
    rig.publish("2.0.0")
    await rig.upload()
    name = await _target_object(rig, "2.0.0")
    obs = await rig.obs()
    await obs.put(name, (await obs.get(name)).data + b"\0" * 4096)
    await rig.expect_refusal("too_large")


async def test_metadata_signed_by_an_unknown_key(rig: Rig, tmp_path: Path) -> None:
    await rig.start()
    rogue = tmp_path / "rogue"
    fleet.keygen(rogue)
    publish_component(rogue, tmp_path, component(tmp_path / "src2", "blink", "2.0.0"))
    obs = await rig.obs()
    for p in (rogue / "metadata").glob("*.json"):
        if not p.name.endswith("root.json"):
            await obs.put(f"metadata/{p.name}", p.read_bytes())
    await rig.expect_refusal("signature")


async def test_fewer_signatures_than_the_threshold(rig: Rig) -> None:
    await rig.start(thresholds={"targets": 2})
    rig.publish("2.0.0")
    repo = fleet.open_repo(rig.repo)
    targets = repo.load("targets")
    targets.signed.version += 1
    repo.write(targets, "targets", signers=repo.signers("targets")[:1])  # one of two
    from tuf.api.metadata import MetaFile

    snap = repo.load("snapshot")
    snap.signed.meta["targets.json"] = MetaFile(targets.signed.version)
    snap.signed.version += 1
    repo.write(snap, "snapshot")
    ts = repo.load("timestamp")
    ts.signed.snapshot_meta = MetaFile(snap.signed.version)
    ts.signed.version += 1
    repo.write(ts, "timestamp")
    await rig.upload()
    err = await rig.expect_refusal("signature")
    assert "targets" in err["message"]


async def test_expired_metadata(rig: Rig) -> None:
    await rig.start()
    rig.publish("2.0.0", expiry_days=1 / 86400)  # one second
    await rig.upload()
    await asyncio.sleep(1.5)
    await rig.expect_refusal("expired")


async def test_rollback_attack_older_metadata_replayed(rig: Rig) -> None:
    await rig.start()
    old_ts = (rig.repo / "metadata" / "timestamp.json").read_bytes()
    rig.publish("2.0.0")
    await rig.upload()
    await hub.set_desired(rig.js, "dev1", "r2", {"blink": "2.0.0"})
    assert rig.rt is not None
    await wait_for(lambda: ota_status(rig.rt)["revision"] == "r2")  # type: ignore[arg-type]
    await hub.set_desired(rig.js, "dev1", "r1", {"blink": "1.0.0"})
    await wait_for(lambda: ota_status(rig.rt)["revision"] == "r1")  # type: ignore[arg-type]
    # the attacker serves the older, validly signed timestamp (and so the older snapshot)
    await (await rig.obs()).put("metadata/timestamp.json", old_ts)
    await rig.expect_refusal("rollback")


async def test_freeze_attack_stale_timestamp_replayed(rig: Rig) -> None:
    await rig.start()
    fleet.refresh_timestamp(rig.repo, expiry_days=2 / 86400)  # valid for two seconds
    await rig.upload()
    assert rig.rt is not None
    ota = rig.rt.layers.layers[-1]  # type: ignore[union-attr]
    before = ota.counters["reconciles"]
    await wait_for(lambda: ota.counters["reconciles"] > before + 2)
    rig.publish("2.0.0")  # the fleet moves on, but the attacker keeps serving the old timestamp
    frozen = (await (await rig.obs()).get("metadata/timestamp.json")).data
    await rig.upload()
    await (await rig.obs()).put("metadata/timestamp.json", frozen)
    await asyncio.sleep(2.5)
    await rig.expect_refusal("expired")


async def test_manifest_needing_a_contract_the_device_lacks(rig: Rig) -> None:
    await rig.start()
    rig.publish("2.0.0", comp={"contract": 99})
    await rig.upload()
    err = await rig.expect_refusal("contract")
    assert "contract 99" in err["message"]


async def test_download_cut_is_retried_and_never_half_applied(rig: Rig) -> None:
    await rig.start()
    rig.publish("2.0.0")
    await rig.upload()
    name = await _target_object(rig, "2.0.0")
    obs = await rig.obs()
    good = (await obs.get(name)).data
    await obs.delete(name)  # the artifact cannot be fetched
    await rig.expect_refusal("download")
    assert rig.rt is not None
    objects = rig.rt.config.data_dir / "ota" / "objects"
    assert all(not p.name.endswith(".part") for p in objects.iterdir())
    await obs.put(name, good)  # the link is back: retried without help
    await wait_for(lambda: ota_status(rig.rt)["revision"] == "r2")  # type: ignore[arg-type]
    assert versions(rig.rt) == {"blink": "2.0.0"}
