#!/usr/bin/env python3
"""An external agent driving a device through its ``edge-tools`` service.

It does what an LLM agent would do, with a few rules standing in for the model: fetch the tool
schemas (the same JSON an LLM tool-calling API takes), then loop "model proposes a tool call ->
call the tool over NATS -> feed the result back" until the planner is done:

1. ``list_entities``            - which drones are there?
2. ``read_sensor`` battery      - for each drone (up to --max-drones)
3. ``send_command``             - the drone with the lowest battery: ``rtl`` below --low, else ``hold``

Only nats-py is needed. Run it against the demo device (``edge run``, device id ``demo``)::

    python examples/external_agent.py --device demo                # URL from the running device
    python examples/external_agent.py --url nats://127.0.0.1:4222 --device demo --caller planner
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import nats
from nats.errors import Error as NatsClientError

CALLER_HEADER = "Edge-Caller"
REQUEST_TIMEOUT_S = 5.0
DEFAULT_LOW = 0.3  # battery fraction below which the planner orders a return to launch


def find_url(device: str) -> str:
    """The NATS URL a running ``edge run`` wrote to its data dir (runtime.json)."""
    base = os.environ.get("EDGE_DATA_DIR")
    if base:
        candidates = [Path(base)]
    else:
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        candidates = [Path(state) / "edge" / device]
    for d in candidates:
        info = d / "runtime.json"
        if info.exists():
            return str(json.loads(info.read_text())["url"])
    return "nats://127.0.0.1:4222"


class RulePlanner:
    """Stands in for an LLM: given the tool schemas and the results so far, propose the next call."""

    def __init__(self, tools: list[dict[str, Any]], *, low: float, max_drones: int) -> None:
        self.tools = {t["name"]: t for t in tools}
        self.low = low
        self.max_drones = max_drones
        self.drones: list[str] | None = None
        self.levels: dict[str, float] = {}
        self.done = False

    def next_call(self) -> tuple[str, dict[str, Any]] | None:
        if self.done:
            return None
        if self.drones is None:
            return "list_entities", {"kind": "drone"}
        for drone in self.drones:
            if drone not in self.levels:
                return "read_sensor", {"entity": drone, "sensor": "battery"}
        if not self.levels or "send_command" not in self.tools:
            self.done = True
            return None
        drone = min(self.levels, key=lambda d: self.levels[d])
        verb = "rtl" if self.levels[drone] < self.low else "hold"
        self.done = True
        return "send_command", {"entity": drone, "verb": verb, "args": {}, "timeout_s": 2.0}

    def observe(self, tool: str, args: dict[str, Any], result: Any) -> None:
        if tool == "list_entities":
            ids = [e["id"] for e in (result or {}).get("entities", []) if "battery" in e["components"]]
            self.drones = ids[: self.max_drones]
        elif tool == "read_sensor":
            level = (result or {}).get("values", {}).get("level")
            self.levels[args["entity"]] = float(level) if isinstance(level, (int, float)) else 1.0


def summarize(tool: str, result: Any) -> str:
    if tool == "list_entities":
        return f"{len(result['entities'])} entities: " + ", ".join(e["id"] for e in result["entities"])
    if tool == "read_sensor":
        age = result.get("age_s")
        return (f"battery level {result['values'].get('level', float('nan')):.2f} "
                f"(from {result['source']}{f', {age:.2f} s old' if age is not None else ''})")
    if tool == "send_command":
        return f"ack {json.dumps(result['ack'])} in {result['rtt_ms']:.1f} ms"
    return json.dumps(result)[:200]


async def run(url: str, device: str, caller: str, low: float, max_drones: int) -> int:
    async def quiet(err: Exception) -> None:  # connection errors are reported once, by main()
        pass

    nc = await nats.connect(url, connect_timeout=REQUEST_TIMEOUT_S, allow_reconnect=False,
                            max_reconnect_attempts=1, error_cb=quiet)
    headers = {CALLER_HEADER: caller}
    prefix = f"edge.{device}.tools"
    try:
        reply = await nc.request(f"{prefix}.schema", b"{}", timeout=REQUEST_TIMEOUT_S, headers=headers)
        tools = json.loads(reply.data)["result"]["tools"]
        print(f"device {device}: {len(tools)} tools for caller {caller}: {', '.join(t['name'] for t in tools)}")
        planner = RulePlanner(tools, low=low, max_drones=max_drones)
        calls = failures = 0
        while (step := planner.next_call()) is not None:
            tool, args = step
            print(f"-> {tool} {json.dumps(args)}")
            t0 = time.perf_counter()
            msg = await nc.request(f"{prefix}.{tool}", json.dumps(args).encode(),
                                   timeout=REQUEST_TIMEOUT_S, headers=headers)
            ms = (time.perf_counter() - t0) * 1e3
            body = json.loads(msg.data)
            calls += 1
            if body.get("ok"):
                print(f"<- ok in {ms:.1f} ms: {summarize(tool, body['result'])}")
                planner.observe(tool, args, body["result"])
            else:
                failures += 1
                code = msg.headers.get("Nats-Service-Error-Code") if msg.headers else "?"
                print(f"<- error {code} in {ms:.1f} ms: {body['error']['message']}")
                planner.observe(tool, args, None)
        print(f"done: {calls} tool calls, {failures} failed")
        return 0
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    ap.add_argument("--device", default="demo", help="device id (default: demo)")
    ap.add_argument("--url", help="NATS URL of the device (default: from the running device's runtime.json)")
    ap.add_argument("--caller", default="external-agent", help="sent as the Edge-Caller header")
    ap.add_argument("--low", type=float, default=DEFAULT_LOW, help="battery fraction that triggers rtl")
    ap.add_argument("--max-drones", type=int, default=5)
    args = ap.parse_args(argv)
    url = args.url or find_url(args.device)
    try:
        return asyncio.run(run(url, args.device, args.caller, args.low, args.max_drones))
    except (OSError, NatsClientError, TimeoutError) as err:
        print(f"error: cannot talk to device {args.device} at {url}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
