"""Log lines and tool calls put into the LANG stream: rate limit, threads, what is not captured,
unreadable and long tool calls (real nats-server, the device's acknowledged publisher)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

from nats.aio.client import Client

from edge.language.capture import MAX_ARGS_CHARS, LogCapture, ToolCallRecorder
from edge.language.stream import LANG_STREAM, ensure_lang_stream
from edge.layer import DeviceContext

DEV = "dev1"


async def lang_messages(ctx: DeviceContext, want: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while (await ctx.js.stream_info(LANG_STREAM)).state.messages < want:
        assert time.monotonic() < deadline, "LANG did not get the messages"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # and nothing more
    info = await ctx.js.stream_info(LANG_STREAM)
    out = []
    for seq in range(1, info.state.last_seq + 1):
        msg = await ctx.js.get_msg(LANG_STREAM, seq)
        out.append({"subject": msg.subject, **json.loads(msg.data or b"{}")})
    return out


async def test_log_lines_are_rate_limited_thread_safe_and_not_self_fed(ctx: DeviceContext) -> None:
    await ensure_lang_stream(ctx.js, DEV)
    cap = LogCapture(ctx.events, DEV, asyncio.get_running_loop(), rate=0.001, burst=4)
    cap.install()
    try:
        logging.getLogger("edge.language.indexer").warning("the language layer's own line")
        logging.getLogger("edge.nats.outbox").warning("the publishing path's line")
        logging.getLogger("drivers.i2c").error("from the event loop")
        t = threading.Thread(target=lambda: logging.getLogger("edge.wasm").warning("from a thread"))
        t.start()
        t.join()
        for i in range(5):
            logging.getLogger("edge.hardware").warning("burst %d", i)
        logging.getLogger("edge.hardware").info("below warning")
        got = await lang_messages(ctx, 4)
    finally:
        cap.uninstall()
    # the thread's line is handed to the loop, so it may land after the burst
    assert sorted(m["msg"] for m in got) == ["burst 0", "burst 1", "from a thread", "from the event loop"]
    assert {m["subject"] for m in got} == {f"edge.{DEV}.lang.runtime.log"}
    first = next(m for m in got if m["msg"] == "from the event loop")
    assert first["level"] == "error" and first["logger"] == "drivers.i2c"
    assert cap.status() == {"captured": 4, "dropped": 3, "rate": 0.001}


async def test_tool_calls_are_recorded_even_unreadable_or_long(ctx: DeviceContext, nc: Client) -> None:
    await ensure_lang_stream(ctx.js, DEV)
    rec = ToolCallRecorder(nc, ctx.events, DEV)
    await rec.start()
    try:
        tools = f"edge.{DEV}.tools"
        await nc.publish(f"{tools}.send_command", json.dumps({"entity": "drone-1", "verb": "rtl"}).encode(),
                         headers={"Edge-Caller": "planner"})
        await nc.publish(f"{tools}.read_sensor", b"{broken")
        await nc.publish(f"{tools}.list_entities", b"[" * 100_000 + b"]" * 100_000)  # too deep to decode
        await nc.publish(f"{tools}.run_model", json.dumps({"model": "m", "inputs": [[0.5] * 400]}).encode())
        await nc.publish(f"{tools}.schema", b"")  # not a call of a tool
        await nc.publish(f"{tools}.search_knowledge", b'{"query": "x"}')  # not recorded (it feeds itself)
        got = await lang_messages(ctx, 4)
    finally:
        await rec.stop()
    assert [m["subject"] for m in got] == [f"edge.{DEV}.lang.drone-1.tool_call"] + [
        f"edge.{DEV}.lang.tools.tool_call"] * 3
    assert got[0]["caller"] == "planner" and got[0]["args"] == {"entity": "drone-1", "verb": "rtl"}
    assert got[1]["caller"] == "anonymous" and got[1]["args"] == {"unreadable": True}
    assert got[2]["tool"] == "list_entities" and got[2]["args"] == {"unreadable": True}
    assert len(got[3]["args"]["truncated"]) == MAX_ARGS_CHARS
    assert rec.status() == {"recorded": 4, "unreadable": 2}
