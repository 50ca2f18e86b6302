"""The tools service's calls in the record: each external agent's call and the answer it got are
a ``tool`` record with its stream sequence, listed in the report of a window holding it."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from edge.agents.tools.permissions import CALLER_HEADER
from edge.replay.records import ReplayError
from edge.replay.replayer import Replayer, replay
from edge.replay.source import Window
from edge.runtime import Runtime
from replay_support import DEVICE, all_records, fleet_config


async def _calls(nc: Client) -> list[dict[str, object]]:
    out = []
    for tool, body in (("list_entities", b"{}"), ("read_component", b'{"entity": "nobody", '
                                                                    b'"component": "battery"}'),
                       ("list_entities", b"not json")):
        msg = await nc.request(f"edge.{DEVICE}.tools.{tool}", body, timeout=5,
                               headers={CALLER_HEADER: "planner"})
        out.append(json.loads(msg.data))
    return out


async def test_tool_calls_are_recorded_and_listed_in_the_report(tmp_path: Path,
                                                                nats_url: str) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    nc = await nats.connect(nats_url)
    try:
        rt = Runtime(cfg)
        await rt.start()
        try:
            await asyncio.sleep(0.5)
            t0 = time.time()
            answers = await _calls(nc)
            await asyncio.sleep(0.5)
        finally:
            await rt.stop()
        assert [a["ok"] for a in answers] == [True, False, False]
        js = nc.jetstream()
        records = await all_records(js)
        tools = [(s, r) for s, r in records.items if r["k"] == "tool"]
        assert [(r["tool"], r["caller"], r["code"]) for _, r in tools] == [
            ("list_entities", "planner", "200"), ("read_component", "planner", "404"),
            ("list_entities", "planner", "400")]
        # the reply recorded is the one the caller got, byte for byte
        first = tools[0][1]
        assert json.loads(base64.b64decode(first["reply"])) == answers[0]
        assert base64.b64decode(first["request"]) == b"{}"

        report = await replay(js, DEVICE, Window(t0))
        assert report.identical, report.render()
        assert [(c["seq"], c["tool"], c["code"]) for c in report.tools] == [
            (s, r["tool"], r["code"]) for s, r in tools]
        assert report.tools[0]["reply"] == answers[0]
        assert report.tools[2]["request"] is None  # "not json" is kept, but not as JSON
        text = report.render()
        assert "tool calls in the window (answers from outside, not replayed): 3" in text
        assert f"seq {tools[1][0]} " in text and "planner -> read_component: 404" in text
        assert report.to_dict()["tools"][1]["reply"]["ok"] is False

        # a window before the calls lists none
        before = await replay(js, DEVICE, Window(0, t0 - 0.2))
        assert before.tools == []

        # a tool record lacking a field stops the replay with its stream sequence
        del tools[1][1]["caller"]
        with pytest.raises(ReplayError, match=f"stream seq {tools[1][0]} lacks a field"):
            await Replayer(DEVICE, records, Window(t0)).run()
    finally:
        await nc.close()


async def test_tool_calls_of_a_device_without_the_recorder_are_not_recorded(
        tmp_path: Path, nats_url: str) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    rt = Runtime(cfg, record=False)
    await rt.start()
    nc = await nats.connect(nats_url)
    try:
        answers = await _calls(nc)
        assert [a["ok"] for a in answers] == [True, False, False]  # answered as with it
        with pytest.raises(NotFoundError):
            await nc.jetstream().stream_info("REC")
    finally:
        await nc.close()
        await rt.stop()
