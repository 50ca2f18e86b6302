"""The language layer against a real nats-server: indexing EVT through a durable consumer,
resume after a restart, malformed messages, novelty, captured logs and tool calls, notes,
documents, the API, the lexical fallback, and a new model over the air."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import ObjectMeta

from edge.language.config import LanguageConfig
from edge.language.embedder import default_model_path
from edge.language.layer import LanguageLayer
from edge.layer import DeviceContext
from language_support import DEV, emit, wait_until



def indexed(layer: LanguageLayer) -> int:
    return int(layer.status()["indexer"]["indexed"])


async def request(nc: Client, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(f"edge.{DEV}.api.language.{verb}", json.dumps(body).encode(), timeout=10)
    out: dict[str, Any] = json.loads(msg.data)
    return out


def layer(**kw: Any) -> LanguageLayer:
    kw.setdefault("documents", ())
    return LanguageLayer(LanguageConfig(**kw))


async def test_indexes_the_device_streams_and_answers_with_stream_and_seq(ctx: DeviceContext, nc: Client) -> None:
    lang = layer()
    await lang.start(ctx)
    await lang.wait_ready(30)
    try:
        assert lang.status()["mode"] == "semantic" and lang.status()["fallback"] is None
        emit(ctx, "drone-0", "statustext", {"severity": 4, "text": "PreArm: Battery below minimum voltage"})
        emit(ctx, "drone-0", "decision", {"agent": "follow-drone-0", "decision": "hold",
                                          "reason": "face lost for 2 s", "inputs": {}})
        emit(ctx, "drone-0", "statustext", b"{not json")  # counted and dropped, the loop goes on
        ctx.events.emit(f"edge.{DEV}.ack.drone-0.rtl", json.dumps({"ok": True, "id": "c1"}).encode())
        await wait_until(lambda: indexed(lang) >= 3)
        st = lang.status()["indexer"]
        assert st["malformed"] == 1 and "not JSON" in st["last_malformed"]
        hits = await lang.knowledge.search("the battery voltage is too low to arm")
        top = hits[0]
        assert top.kind == "statustext" and top.stream == "EVT" and top.seq == 1 and top.entity == "drone-0"
        assert top.source == f"edge.{DEV}.evt.drone-0.statustext" and top.t > 0 and top.score > 0
        info = await ctx.js.stream_info("EVT")
        by_text = {h.text: h.seq for h in await lang.knowledge.search("return to launch command", limit=10)}
        assert by_text["command rtl to drone-0: ok"] <= info.state.last_seq
        only = await lang.knowledge.search("battery", kinds=["decision"])
        assert [h.kind for h in only] == ["decision"]
        reply = await request(nc, "search", {"query": "why did the drone hold", "entity": "drone-0", "limit": 2})
        assert reply["ok"] and reply["result"][0]["kind"] == "decision"
        assert reply["result"][0]["stream"] == "EVT" and reply["result"][0]["seq"] == 2
    finally:
        await lang.stop()


async def test_bad_requests_get_an_error_and_the_service_keeps_serving(ctx: DeviceContext, nc: Client) -> None:
    lang = layer(embedder="lexical")
    await lang.start(ctx)
    await lang.wait_ready(30)
    try:
        for body in ({}, {"query": "x", "limit": 500}, {"query": "x", "kinds": [1]}, {"query": "x", "entity": 7}):
            bad = await request(nc, "search", body)
            assert not bad["ok"] and bad["error"]["error"] == "LanguageError" and bad["error"]["key"]
        note = await request(nc, "note", {"text": "", "entity": "drone-0"})
        assert not note["ok"] and note["error"]["key"] == "text"
        assert not (await request(nc, "note", {"text": "x", "entity": "bad entity"}))["ok"]
        assert not (await request(nc, "terms", {"entity": "drone-0", "top": 0}))["ok"]
        assert (await request(nc, "search", {"query": "anything"}))["ok"]
    finally:
        await lang.stop()


async def test_resumes_where_it_stopped_and_rebuilds_a_removed_index(ctx: DeviceContext) -> None:
    lang = layer(embedder="lexical")
    await lang.start(ctx)
    await lang.wait_ready(30)
    for i in range(5):
        emit(ctx, "drone-2", "statustext", {"text": f"line {i} of the first run"})
    await wait_until(lambda: indexed(lang) == 5)
    digest_dir = lang.serving.store.dir  # type: ignore[union-attr]
    await lang.stop()
    for i in range(3):  # said while the layer was down
        emit(ctx, "drone-2", "statustext", {"text": f"line {i} while stopped"})
    await asyncio.sleep(0.3)
    again = layer(embedder="lexical")
    await again.start(ctx)
    await again.wait_ready(30)
    try:
        try:
            await wait_until(lambda: again.status()["entries"] == 8)
        except AssertionError:
            print(json.dumps(again.status(), default=str))
            raise
        assert indexed(again) == 3  # only the new ones: no duplicates
        cursor = again.serving.store.cursor("EVT")  # type: ignore[union-attr]
        info = await ctx.js.stream_info("EVT")
        assert cursor == info.state.last_seq
    finally:
        await again.stop()
    import shutil

    shutil.rmtree(digest_dir)  # the index file is gone; the durable consumer is past it
    rebuilt = layer(embedder="lexical")
    await rebuilt.start(ctx)
    await rebuilt.wait_ready(30)
    try:
        await wait_until(lambda: rebuilt.status()["entries"] == 8)
    finally:
        await rebuilt.stop()


async def test_novelty_events_for_first_and_unusual_lines_only(ctx: DeviceContext, nc: Client) -> None:
    seen: list[dict[str, Any]] = []

    async def on(msg: Any) -> None:
        seen.append(json.loads(msg.data))

    await nc.subscribe(f"edge.{DEV}.lang.*.novelty", cb=on)
    lang = layer()
    await lang.start(ctx)
    await lang.wait_ready(30)
    try:
        emit(ctx, "drone-3", "statustext", {"text": "Mission: 4 waypoints uploaded"})
        await wait_until(lambda: len(seen) == 1)
        assert seen[0]["first"] is True and seen[0]["novelty"] == 1.0 and seen[0]["seq"] == 1
        emit(ctx, "drone-3", "statustext", {"text": "Mission: 5 waypoints uploaded"})  # nearly the same
        await wait_until(lambda: indexed(lang) == 2)
        emit(ctx, "drone-3", "statustext", {"text": "Crash: disarming, motor 3 lost thrust"})
        await wait_until(lambda: len(seen) == 2)
        await asyncio.sleep(0.3)
        assert len(seen) == 2 and seen[1]["text"].startswith("Crash") and not seen[1]["first"]
        assert seen[1]["nearest"]["text"].startswith("Mission") and seen[1]["novelty"] >= 0.55
        assert lang.status()["indexer"]["novel"] == 2
        assert lang.status()["entries"] == 3  # novelty events are not indexed themselves
    finally:
        await lang.stop()


async def test_warning_logs_tool_calls_and_notes_become_searchable(ctx: DeviceContext, nc: Client) -> None:
    lang = layer()
    await lang.start(ctx)
    await lang.wait_ready(30)
    try:
        logging.getLogger("edge.hardware.test").warning("driver imu: I2C bus error, restarting in 2 s")
        logging.getLogger("edge.hardware.test").info("an info line is not captured")
        await nc.publish(f"edge.{DEV}.tools.send_command", json.dumps({"entity": "drone-4", "verb": "rtl"}).encode(),
                         headers={"Edge-Caller": "planner"})
        note = await request(nc, "note", {"text": "propeller 2 replaced after the hard landing", "entity": "drone-4",
                                          "author": "ana"})
        assert note["ok"] and note["result"]["subject"] == f"edge.{DEV}.lang.drone-4.note"
        await wait_until(lambda: indexed(lang) == 3)
        assert lang.status()["logs"]["captured"] == 1 and lang.status()["tool_calls"]["recorded"] == 1
        log_hit = (await lang.knowledge.search("sensor bus failure", kinds=["log"]))[0]
        assert log_hit.entity == "runtime" and "I2C bus error" in log_hit.text and log_hit.stream == "LANG"
        tool = (await lang.knowledge.search("who asked drone-4 to return home", kinds=["tool_call"]))[0]
        assert tool.entity == "drone-4" and "planner" in tool.text
        n = (await lang.knowledge.search("maintenance on the propellers", entity="drone-4"))[0]
        assert n.kind == "note" and n.meta == {"author": "ana"}
        terms = await request(nc, "terms", {"entity": "drone-4", "top": 5})
        assert terms["ok"] and terms["result"]["entries"] == 2 and len(terms["result"]["vector"]) == 384
        assert (await ctx.js.stream_info("EVT")).state.messages == 0  # all of it went to LANG, not EVT
    finally:
        await lang.stop()


async def test_without_the_lang_stream_evt_is_still_indexed(ctx: DeviceContext, nc: Client) -> None:
    from nats.js.api import StreamConfig

    await ctx.js.add_stream(StreamConfig(name="SQUAT", subjects=[f"edge.{DEV}.lang.>"]))  # LANG cannot exist
    lang = layer(embedder="lexical")
    await lang.start(ctx)
    await lang.wait_ready(30)
    try:
        assert "LANG" in lang.status()["last_error"] and "logs" not in lang.status()
        emit(ctx, "drone-9", "statustext", {"text": "EKF primary changed"})
        await wait_until(lambda: indexed(lang) == 1)
        assert lang.status()["indexer"]["novel"] == 0  # nowhere to publish novelty
        note = await request(nc, "note", {"text": "a note"})
        assert not note["ok"] and note["error"]["reason"] == "not-serving"
    finally:
        await lang.stop()


async def test_documents_and_manifests_are_indexed_once(ctx: DeviceContext, tmp_path: Path) -> None:
    docs = tmp_path / "manuals"
    docs.mkdir()
    (docs / "fc.md").write_text("# Flight controller\n\n## Failsafe\n\nWhen the radio link is lost the vehicle "
                                "returns to launch after 5 seconds.\n\n## Calibration\n\nLevel the "
                                "accelerometer on a flat table.\n")
    manifest = tmp_path / "manifest.toml"
    manifest.write_text('name = "geofence"\nversion = "1.0.0"\ndescription = "keeps drones inside a polygon"\n')
    lang = LanguageLayer(LanguageConfig(embedder="lexical", documents=(docs,)), manifests=[manifest])
    await lang.start(ctx)
    await lang.wait_ready(30)
    try:
        await wait_until(lambda: lang.documents == 2)
        hit = (await lang.knowledge.search("what happens when the radio link is lost", kinds=["doc"]))[0]
        assert hit.source.endswith("fc.md#Failsafe") and hit.stream is None and hit.seq is None
        fence = (await lang.knowledge.search("polygon boundary", kinds=["doc"]))[0]
        assert fence.entity == "geofence" and "keeps drones inside" in fence.text
        entries = lang.status()["entries"]
    finally:
        await lang.stop()
    again = LanguageLayer(LanguageConfig(embedder="lexical", documents=(docs,)), manifests=[manifest])
    await again.start(ctx)
    await again.wait_ready(30)
    try:
        await wait_until(lambda: again.documents == 2)
        assert again.status()["entries"] == entries  # unchanged documents are not indexed twice
    finally:
        await again.stop()


async def test_lexical_fallback_is_reported_and_still_searches(ctx: DeviceContext, tmp_path: Path) -> None:
    lang = layer(embedder="auto", model_path=tmp_path / "absent.onnx")
    await lang.start(ctx)
    await lang.wait_ready(30)
    try:
        st = lang.status()
        assert st["mode"] == "lexical" and "absent.onnx" in st["fallback"]
        emit(ctx, "drone-5", "statustext", {"text": "Compass variance too high"})
        await wait_until(lambda: indexed(lang) == 1)
        assert (await lang.knowledge.search("compass"))[0].text == "Compass variance too high"
        assert lang.knowledge.mode() == "lexical"
    finally:
        await lang.stop()


async def test_an_explicit_model_that_does_not_load_is_reported_not_replaced(ctx: DeviceContext, nc: Client,
                                                                              tmp_path: Path) -> None:
    lang = layer(embedder="minilm", model_path=tmp_path / "absent.onnx")
    await lang.start(ctx)  # the endpoints serve at once; the model loads in the background
    try:
        from edge.language.errors import LanguageUnavailable

        with pytest.raises(LanguageUnavailable, match="absent.onnx"):
            await lang.wait_ready(30)
        assert lang.status()["mode"] == "failed" and "absent.onnx" in lang.status()["last_error"]
        reply = await request(nc, "search", {"query": "anything"})
        assert not reply["ok"] and reply["error"]["reason"] == "not-serving"
    finally:
        await lang.stop()


async def test_installing_the_extra_reindexes_while_the_lexical_index_serves(ctx: DeviceContext) -> None:
    lexical = layer(embedder="lexical")
    await lexical.start(ctx)
    await lexical.wait_ready(30)
    for i in range(12):
        emit(ctx, "drone-8", "statustext", {"text": f"Battery {90 - i}% remaining"})
    await wait_until(lambda: indexed(lexical) == 12)
    await lexical.stop()
    upgraded = layer(embedder="auto")  # the model is installed now
    await upgraded.start(ctx)
    await upgraded.wait_ready(30)
    try:
        st = upgraded.status()
        assert st["mode"] == "lexical" and st["entries"] == 12  # the old index serves at once
        assert await upgraded.knowledge.search("battery")  # served meanwhile
        await wait_until(lambda: upgraded.status()["mode"] == "semantic", 60)
        assert upgraded.status()["entries"] == 12 and upgraded.status()["model_swaps"] == 1
    finally:
        await upgraded.stop()


async def test_an_unusable_data_dir_is_reported(ctx: DeviceContext) -> None:
    ctx.data_dir.mkdir(parents=True, exist_ok=True)
    (ctx.data_dir / "language").write_text("a file where the index directory goes")
    lang = layer(embedder="lexical")
    await lang.start(ctx)
    try:
        from edge.language.errors import LanguageUnavailable

        with pytest.raises(LanguageUnavailable):
            await lang.wait_ready(30)
        assert lang.status()["mode"] == "failed" and "NotADirectoryError" in lang.status()["last_error"]
    finally:
        await lang.stop()


async def test_a_new_model_over_the_air_reindexes_while_the_old_index_serves(ctx: DeviceContext) -> None:
    obs = await ctx.js.create_object_store("lang-models")
    lang = layer(embedder="lexical", model_bucket="lang-models", model_object="minilm.onnx")
    await lang.start(ctx)
    await lang.wait_ready(30)
    try:
        assert lang.status()["mode"] == "lexical"
        for i in range(20):
            emit(ctx, "drone-6", "statustext", {"text": f"GPS: {i} satellites in view"})
        emit(ctx, "drone-6", "statustext", {"text": "Battery failsafe: landing"})
        await wait_until(lambda: indexed(lang) == 21)
        old_dir = lang.serving.store.dir  # type: ignore[union-attr]
        # a model whose declared digest is wrong is refused; the serving index stays
        await obs.put("minilm.onnx", b"not a model", meta=ObjectMeta(name="minilm.onnx",
                                                                    headers={"Edge-Sha256": "00" * 32}))
        await wait_until(lambda: "does not match" in (lang.status()["last_error"] or ""))
        assert lang.status()["mode"] == "lexical"
        model = default_model_path().read_bytes()  # type: ignore[union-attr]
        await obs.put("minilm.onnx", model, meta=ObjectMeta(
            name="minilm.onnx", headers={"Edge-Sha256": hashlib.sha256(model).hexdigest()}))
        await wait_until(lambda: "rebuilding" in lang.status() or lang.status()["mode"] == "semantic", 30)
        while "rebuilding" in lang.status():  # the old index answers during the re-index
            assert lang.status()["mode"] == "lexical"
            assert await lang.knowledge.search("battery")
            await asyncio.sleep(0.05)
        await wait_until(lambda: lang.status()["mode"] == "semantic", 60)
        await wait_until(lambda: not old_dir.exists())  # then the old index is removed
        st = lang.status()
        assert st["model_swaps"] == 1 and st["entries"] == 21
        hits = await lang.knowledge.search("the vehicle is coming down because the power is low")
        assert hits[0].text == "Battery failsafe: landing"
        emit(ctx, "drone-6", "statustext", {"text": "Landed"})  # the new index follows the stream live
        await wait_until(lambda: lang.status()["entries"] == 22)
        for stream in ("EVT", "LANG"):
            names = [c.name for c in await ctx.js.consumers_info(stream)]
            assert [n for n in names if n.startswith("lang-")] == [st["indexer"]["consumer"]]
    finally:
        await lang.stop()


@pytest.mark.parametrize("raw, key", [({"embedder": "bert"}, "language.embedder"),
                                      ({"threads": 0}, "language.threads"),
                                      ({"model_bucket": "a b"}, "language.model_bucket"),
                                      ({"sizes": 1}, "language.sizes")])
def test_config_errors_name_the_key_and_file(raw: dict[str, Any], key: str) -> None:
    from edge.config.device import parse_config
    from edge.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config({"language": raw}, file="dev.toml")
    assert err.value.key == key and err.value.file == "dev.toml"


def test_language_off_builds_no_layer(tmp_path: Path) -> None:
    from edge.config.device import parse_config
    from edge.language.layer import build_language
    from edge.runtime import build_layers

    off = parse_config({"language": {"enabled": False}, "device": {"id": "d1", "data_dir": str(tmp_path)}})
    assert build_language(off) is None and "language" not in [x.name for x in build_layers(off)]
    on = parse_config({"device": {"id": "d1", "data_dir": str(tmp_path)}, "language": {"embedder": "lexical",
                       "documents": ["docs"], "novelty_threshold": 0.3}})
    assert on.language.documents == (Path.cwd() / "docs",) and on.language.novelty_threshold == 0.3
    assert "language" in [x.name for x in build_layers(on)]
