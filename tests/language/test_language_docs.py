"""The concrete promises of docs/language.md, checked from the doc alone against a real
nats-server: the status fields, where the index lives, the consumers and the LANG stream, the
device API's defaults and limits, what is indexed and what is not, novelty's payload, and the
config's error sentence and ranges."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from edge.language.config import LanguageConfig
from edge.language.layer import LanguageLayer
from edge.layer import DeviceContext
from language_support import DEV, emit, wait_until



async def request(nc: Client, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(f"edge.{DEV}.api.language.{verb}", json.dumps(body).encode(), timeout=10)
    out: dict[str, Any] = json.loads(msg.data)
    return out


async def lexical(ctx: DeviceContext) -> LanguageLayer:
    lang = LanguageLayer(LanguageConfig(embedder="lexical", documents=()))
    await lang.start(ctx)
    await lang.wait_ready(30)
    return lang


async def test_status_index_file_consumers_and_lang_stream(ctx: DeviceContext) -> None:
    lang = await lexical(ctx)
    try:
        emit(ctx, "drone-0", "statustext", {"severity": 4, "text": "GPS glitch"})
        await wait_until(lambda: lang.status()["indexer"]["indexed"] >= 1)
        st = lang.status()
        assert {"mode", "fallback", "model", "digest", "entries", "size_bytes", "documents", "searches",
                "notes", "model_swaps", "last_error", "indexer", "logs", "tool_calls"} <= set(st)
        assert st["mode"] == "lexical"
        assert {"consumer", "indexed", "skipped", "malformed", "last_malformed", "novel", "pending",
                "caught_up", "last_error"} <= set(st["indexer"])
        assert {"captured", "dropped"} <= set(st["logs"])
        assert "recorded" in st["tool_calls"]
        digest = st["digest"]
        assert len(digest) >= 16
        index = ctx.data_dir / "language" / digest[:16] / "index.sqlite"
        assert index.is_file() and st["size_bytes"] > 0
        # one durable consumer lang-<digest[:12]> on each of EVT and LANG
        assert st["indexer"]["consumer"] == f"lang-{digest[:12]}"
        for stream in ("EVT", "LANG"):
            names = [c.name for c in await ctx.js.consumers_info(stream)]
            assert f"lang-{digest[:12]}" in names, (stream, names)
        info = await ctx.js.stream_info("LANG")
        assert info.config.subjects == [f"edge.{DEV}.lang.>"]
        assert info.config.max_bytes == 8 * 2**20
        assert info.config.max_age == 7 * 24 * 3600.0
    finally:
        await lang.stop()


async def test_device_api_defaults_limits_and_result_shapes(ctx: DeviceContext, nc: Client) -> None:
    lang = await lexical(ctx)
    try:
        for i in range(8):
            emit(ctx, "drone-1", "statustext", {"text": f"motor {i} temperature high"})
        await wait_until(lambda: lang.status()["indexer"]["indexed"] >= 8)
        # search: the default limit is 5; each hit has the documented fields
        reply = await request(nc, "search", {"query": "motor temperature"})
        assert reply["ok"], reply
        hits = reply["result"]
        assert len(hits) == 5
        assert {"text", "kind", "entity", "source", "t", "stream", "seq", "score", "similarity",
                "keyword_rank", "vector_rank", "id", "meta"} <= set(hits[0])
        assert hits[0]["stream"] == "EVT" and isinstance(hits[0]["seq"], int)
        assert not (await request(nc, "search", {"query": "a", "kinds": ["k"] * 21}))["ok"]
        assert (await request(nc, "search", {"query": "a", "kinds": ["k"] * 20}))["ok"]
        # note: entity "device" and author "operator" by default; at most 4,000 characters
        note = await request(nc, "note", {"text": "propeller 2 replaced"})
        assert note["ok"], note
        assert note["result"]["subject"] == f"edge.{DEV}.lang.device.note" and note["result"]["id"]
        await wait_until(lambda: lang.status()["entries"] >= 9)
        found = await lang.knowledge.search("propeller replaced", kinds=["note"])
        assert found and found[0].entity == "device" and found[0].meta.get("author") == "operator"
        assert found[0].stream == "LANG"
        assert (await request(nc, "note", {"text": "x" * 4000}))["ok"]
        too_long = await request(nc, "note", {"text": "x" * 4001})
        assert not too_long["ok"] and too_long["error"]["key"] == "text"
        # terms: top 10 by default, 1..50; the shape; a window with nothing has vector null
        terms = await request(nc, "terms", {"entity": "drone-1"})
        assert terms["ok"], terms
        res = terms["result"]
        assert {"entity", "since", "until", "entries", "terms", "vector", "model"} <= set(res)
        assert res["entries"] == 8 and 0 < len(res["terms"]) <= 10
        assert {"term", "count", "score"} <= set(res["terms"][0])
        assert isinstance(res["vector"], list) and len(res["vector"]) == 384
        assert len((await request(nc, "terms", {"entity": "drone-1", "top": 50}))["result"]["terms"]) > 0
        assert not (await request(nc, "terms", {"entity": "drone-1", "top": 51}))["ok"]
        empty = (await request(nc, "terms", {"entity": "drone-9"}))["result"]
        assert empty["entries"] == 0 and empty["vector"] is None
    finally:
        await lang.stop()


async def test_what_is_indexed_and_novelty_payload(ctx: DeviceContext, nc: Client) -> None:
    novelties: list[dict[str, Any]] = []

    async def got(msg: Any) -> None:
        novelties.append(json.loads(msg.data))

    sub = await nc.subscribe(f"edge.{DEV}.lang.*.novelty", cb=got)
    lang = await lexical(ctx)
    try:
        emit(ctx, "drone-2", "detection", {"items": [{"label": "person"}]})  # skip_kinds default
        emit(ctx, "drone-2", "novelty", {"text": "not my own output"})  # always skipped
        emit(ctx, "drone-2", "lap", b"\x00\x01\xff")  # a binary body: skipped
        emit(ctx, "drone-2", "statustext", {"text": "Compass calibration started"})
        await wait_until(lambda: lang.status()["indexer"]["indexed"] >= 1)
        await wait_until(lambda: lang.status()["indexer"]["skipped"] >= 3)
        assert lang.status()["entries"] == 1
        assert [h.kind for h in await lang.knowledge.search("person detection novelty output", limit=50)] \
            == ["statustext"]
        await wait_until(lambda: len(novelties) >= 1)
        first = novelties[0]
        assert {"entity", "text", "kind", "source", "stream", "seq", "t", "novelty", "first",
                "nearest"} <= set(first)
        assert first["entity"] == "drone-2" and first["first"] is True
        assert first["novelty"] == 1.0 and first["nearest"] is None
        assert first["stream"] == "EVT" and first["source"] == f"edge.{DEV}.evt.drone-2.statustext"
        # the same line again is not novel
        emit(ctx, "drone-2", "statustext", {"text": "Compass calibration started"})
        await wait_until(lambda: lang.status()["indexer"]["indexed"] >= 2)
        await asyncio.sleep(0.5)
        assert len(novelties) == 1
    finally:
        await lang.stop()
        await sub.unsubscribe()


def test_config_error_sentence_ranges_and_defaults(tmp_path: Path) -> None:
    from edge.config.device import parse_config
    from edge.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config({"language": {"embedder": "bert"}}, file="device.toml")
    assert ("must be one of auto, minilm, lexical; got 'bert' (key 'language.embedder' in "
            "device.toml)") in str(err.value)
    for key, bad in (("threads", 9), ("threads", 0), ("novelty_threshold", 2.5),
                     ("novelty_threshold", -0.1)):
        with pytest.raises(ConfigError) as err:
            parse_config({"language": {key: bad}}, file="device.toml")
        assert err.value.key == f"language.{key}"
    for key, good in (("threads", 8), ("novelty_threshold", 2.0), ("novelty_threshold", 0.0)):
        parse_config({"language": {key: good}}, file="device.toml")
    cfg = parse_config({"device": {"id": "d1", "data_dir": str(tmp_path)}}).language
    assert (cfg.enabled, cfg.embedder, cfg.model_bucket, cfg.model_object, cfg.threads) == (
        True, "auto", "", "minilm.onnx", 1)
    assert cfg.skip_kinds == ("detection", "novelty")
    assert cfg.novelty_threshold == 0.55 and cfg.max_entries == 200_000
