"""``edge accounting``: top principals by messages, bytes and gas; recent denials; quota use
(the device API's ``accounting.get``); ``edge accounting reload`` reloads the policy file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edge.cli.status import table


def register(sub: Any, common: Any) -> None:
    acct = sub.add_parser("accounting", help="who uses what: top principals, denials, quotas (docs/policy.md)")
    common(acct)
    acct.add_argument("--json", action="store_true", help="machine-readable output")
    acct.add_argument("--top", type=int, default=10, help="principals per table (1..1000)")
    acct.add_argument("--reload", action="store_true", help="reload the policy file first")


def render(result: dict[str, Any]) -> str:
    pol = result.get("policy", {})
    state = (f"policy {pol.get('file')} generation {pol.get('generation')} ({pol.get('rules')} rules, "
             f"{pol.get('limits')} limits)" if pol.get("enforcing") else
             "policy: none loaded (every message allowed, metered)")
    out = [f"device {result.get('device')}  {state}  denied {pol.get('denied', 0)}"]
    if pol.get("error"):
        out.append(f"last reload refused: {pol['error'].get('message')}")
    cols = ["messages", "bytes", "gas", "infer_s", "kv_writes", "commands", "calls", "denied"]
    for by in ("messages", "bytes", "gas"):
        rows = result.get("top", {}).get(by, [])
        out += ["", f"top by {by}:",
                table(["PRINCIPAL", *(c.upper() for c in cols)], [[r["principal"], *(r[c] for c in cols)] for r in rows])]
    denials = result.get("denials", [])
    out += ["", "recent denials:",
            table(["PRINCIPAL", "ACTION", "RESOURCE", "RULE", "REASON"],
                  [[d["principal"], d["action"], d["resource"][:60], d["rule"], d["reason"]] for d in denials])]
    quotas = result.get("quotas", [])
    out += ["", "quota use:",
            table(["PRINCIPAL", "LIMIT", "MESSAGES", "QUOTA", "BYTES", "QUOTA_BYTES", "TOKENS"],
                  [[q["principal"], q["limit"], q["messages"], q.get("quota_messages", ""), q["bytes"],
                    q.get("quota_bytes", ""), q.get("tokens", "")] for q in quotas])]
    return "\n".join(out)


async def run(args: argparse.Namespace) -> int:
    from edge.cli.client import DeviceClient, locate

    device, url = locate(args)
    async with DeviceClient(url, device) as client:
        if args.reload:
            await client.call("policy", "reload", {})
        result = await client.call("accounting", "get", {"top": args.top})
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0
