"""search_knowledge in the tools service (schema, permissions, errors) and in-process for native
agents, with a decision record that cites the hits it used."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nats.aio.client import Client

from edge.agents.jsonschema import validate
from edge.agents.tools.permissions import parse_tools_config
from edge.agents.tools.service import ToolsService
from edge.language.config import LanguageConfig
from edge.language.layer import LanguageLayer
from edge.language.search import cite
from edge.layer import DeviceContext

DEV = "dev1"


async def call(nc: Client, body: Any, caller: str | None = None) -> tuple[dict[str, Any], str | None]:
    msg = await nc.request(f"edge.{DEV}.tools.search_knowledge", json.dumps(body).encode(), timeout=10,
                           headers={"Edge-Caller": caller} if caller else None)
    return json.loads(msg.data), (msg.headers or {}).get("Nats-Service-Error-Code")


async def until(pred: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.05)


async def test_search_knowledge_tool_with_permissions_and_citations(ctx: DeviceContext, nc: Client) -> None:
    lang = LanguageLayer(LanguageConfig(documents=()))
    await lang.start(ctx)
    await lang.wait_ready(30)
    perms = parse_tools_config({"callers": {"planner": ["search_knowledge"], "viewer": ["list_entities"]}})
    tools = ToolsService(perms, knowledge=lang.knowledge)
    await tools.start(ctx)
    try:
        ctx.events.emit(f"edge.{DEV}.evt.drone-0.statustext",
                        json.dumps({"severity": 2, "text": "Failsafe: radio link lost, returning to launch"}).encode())
        await until(lambda: lang.status()["indexer"]["indexed"] == 1)
        reply, code = await call(nc, {"query": "what did the drone do when it lost its radio", "limit": 3},
                                 "planner")
        assert code is None and reply["ok"], reply
        validate(reply["result"], tools.tools["search_knowledge"].output_schema)
        hit = reply["result"]["hits"][0]
        assert reply["result"]["mode"] == "semantic" and hit["kind"] == "statustext"
        assert hit["stream"] == "EVT" and hit["seq"] == 1 and hit["source"].endswith("drone-0.statustext")
        denied, code = await call(nc, {"query": "radio"}, "viewer")
        assert code == "403" and not denied["ok"]
        bad, code = await call(nc, {"query": "radio", "limit": 99}, "planner")
        assert code == "400" and "limit" in bad["error"]["message"]
        schema = json.loads((await nc.request(f"edge.{DEV}.tools.schema", b"", timeout=2,
                                              headers={"Edge-Caller": "planner"})).data)["result"]
        assert [t["name"] for t in schema["tools"]] == ["search_knowledge"]

        # a native agent: the same search in process; its decision record cites the hits it used
        hits = await lang.knowledge.search("radio link lost", entity="drone-0")
        from edge.agents.decisions import DecisionLog

        decisions = DecisionLog(DEV)
        await decisions.start(nc, ctx.events)
        await decisions.record({"t": time.time(), "entity": "drone-0", "agent": "planner", "kind": "plan",
                                "decision": "hold", "reason": "the link was lost before",
                                "inputs": {"cites": cite(hits[:1])}})
        await until(lambda: lang.status()["indexer"]["indexed"] == 3)  # + the logged denial
        rec = (await lang.knowledge.search("planner decided hold", kinds=["decision"]))[0]
        assert rec.meta["cites"] == [{"source": hit["source"], "stream": "EVT", "seq": 1, "id": hits[0].id}]
    finally:
        await tools.stop()
        await lang.stop()


async def test_search_knowledge_without_a_language_layer_is_unavailable(ctx: DeviceContext, nc: Client) -> None:
    tools = ToolsService()
    await tools.start(ctx)
    try:
        reply, code = await call(nc, {"query": "anything"})
        assert code == "503" and reply["error"]["reason"] == "no-language"
    finally:
        await tools.stop()


async def test_search_knowledge_before_the_layer_serves_is_unavailable(ctx: DeviceContext, nc: Client) -> None:
    lang = LanguageLayer(LanguageConfig(documents=()))  # never started
    tools = ToolsService(knowledge=lang.knowledge)
    await tools.start(ctx)
    try:
        reply, code = await call(nc, {"query": "anything"})
        assert code == "503" and reply["error"]["reason"] == "not-serving"
    finally:
        await tools.stop()
