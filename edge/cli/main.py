"""``edge``: run a device and talk to a running one.

Exit codes: 0 success, 1 a refused request or a runtime error (one sentence on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from edge.errors import EdgeError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="NATS URL of the device (default: found from the data dir)")
    p.add_argument("--device", help="device id (default: the one running here)")
    p.add_argument("--data-dir", help="the device's data directory")


def build_parser() -> argparse.ArgumentParser:
    from edge import __version__

    parser = argparse.ArgumentParser(prog="edge", description="A lean ECS runtime for single-board computers.")
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the device (no --config: the embedded demo)")
    run.add_argument("--config", "-c", help="device config file (TOML)")
    run.add_argument("--data-dir", help="where state and the embedded nats-server live")
    run.add_argument("--drones", type=int, default=5, help="demo fleet size (embedded demo only)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--json-logs", action="store_true", help="log one JSON object per line")
    run.add_argument("--quiet", action="store_true", help="no fleet view on stdout")

    status = sub.add_parser("status", help="components, entities and NATS health of a running device")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    entity = sub.add_parser("entity", help="list, show, create, change and remove entities")
    esub = entity.add_subparsers(dest="verb", required=True)
    p = esub.add_parser("list")
    _common(p)
    p.add_argument("--kind")
    p.add_argument("--json", action="store_true")
    p = esub.add_parser("get")
    _common(p)
    p.add_argument("id")
    p = esub.add_parser("spawn")
    _common(p)
    p.add_argument("id")
    p.add_argument("--kind", default="")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--set", action="append", default=[], metavar="COMPONENT.FIELD=VALUE")
    p = esub.add_parser("set")
    _common(p)
    p.add_argument("id")
    p.add_argument("values", nargs="+", metavar="COMPONENT.FIELD=VALUE")
    p = esub.add_parser("rm")
    _common(p)
    p.add_argument("id")

    comp = sub.add_parser("component", help="list, load and unload WebAssembly components")
    csub = comp.add_subparsers(dest="verb", required=True)
    p = csub.add_parser("list")
    _common(p)
    p.add_argument("--json", action="store_true")
    p = csub.add_parser("load")
    _common(p)
    p.add_argument("manifest", help="path to the component's manifest.toml")
    p = csub.add_parser("unload")
    _common(p)
    p.add_argument("name")
    p = csub.add_parser("contracts", help="host ABI contract versions this runtime supports")

    cmd = sub.add_parser("cmd", help="send a command to an entity and print its answer")
    _common(cmd)
    cmd.add_argument("entity")
    cmd.add_argument("verb")
    cmd.add_argument("args", nargs="?", default="{}", help="the command's arguments as a JSON object")
    cmd.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    cmd.add_argument("--id", help="command id (a retry with the same id is not run twice)")
    cmd.add_argument("--caller", default="cli", help="who sends it (the Edge-Caller header)")

    from edge.cli import accounting, extra

    accounting.register(sub, _common)
    extra.register(sub)
    from edge.cli import replay

    replay.register(sub)
    from edge.cli import ota  # [ota] edge ota ..., edge rollout ...

    ota.add_parser(sub)
    return parser


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        comp, dot, field = key.partition(".")
        if not sep or not dot or not comp or not field:
            raise EdgeError(f"'{item}' is not COMPONENT.FIELD=VALUE")
        out.setdefault(comp, {})[field] = _value(raw)
    return out


async def _call(args: argparse.Namespace, group: str, verb: str, body: dict[str, Any] | None = None) -> Any:
    from edge.cli.client import DeviceClient, locate

    device, url = locate(args)
    async with DeviceClient(url, device) as client:
        return await client.call(group, verb, body)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


async def dispatch(args: argparse.Namespace) -> int:
    from edge.cli import status as status_view

    cmd = args.command
    if cmd in ("ota", "rollout"):  # [ota]
        from edge.cli import ota

        return await ota.dispatch(args)
    if cmd == "run":
        from edge.cli.run import run

        return await run(args)
    if cmd == "status":
        result = await _call(args, "status", "get")
        print(json.dumps(result, indent=2) if args.json else status_view.render(result))
        return 0
    if cmd == "entity":
        if args.verb == "list":
            result = await _call(args, "entity", "list", {"kind": args.kind} if args.kind else {})
            print(json.dumps(result, indent=2) if args.json else status_view.entity_table(result))
        elif args.verb == "get":
            _print(await _call(args, "entity", "get", {"id": args.id}))
        elif args.verb == "spawn":
            labels = dict(item.partition("=")[::2] for item in args.label)
            body = {"id": args.id, "kind": args.kind, "labels": labels, "components": parse_assignments(args.set)}
            _print(await _call(args, "entity", "spawn", body))
        elif args.verb == "set":
            for comp, values in parse_assignments(args.values).items():
                _print(await _call(args, "entity", "set", {"id": args.id, "component": comp, "values": values}))
        elif args.verb == "rm":
            await _call(args, "entity", "rm", {"id": args.id})
            print(f"removed {args.id}")
        return 0
    if cmd == "component":
        if args.verb == "contracts":
            from edge.wasm.abi import CONTRACT_VERSIONS

            print(" ".join(str(v) for v in CONTRACT_VERSIONS))
        elif args.verb == "list":
            result = await _call(args, "component", "list")
            print(json.dumps(result, indent=2) if args.json else status_view.component_table(result))
        elif args.verb == "load":
            from pathlib import Path

            _print(await _call(args, "component", "load", {"manifest": str(Path(args.manifest).resolve())}))
        elif args.verb == "unload":
            await _call(args, "component", "unload", {"name": args.name})
            print(f"unloaded {args.name}")
        return 0
    if cmd == "cmd":
        return await send_command(args)
    if cmd == "accounting":
        from edge.cli import accounting

        return await accounting.run(args)
    if cmd == "replay":
        from edge.cli import replay

        return await replay.dispatch(args)
    from edge.cli import extra

    return await extra.dispatch(args)


async def send_command(args: argparse.Namespace) -> int:
    """``edge cmd <entity> <verb> [json]``: a command request; prints the answer, exit 1 if refused."""
    from edge.cli.client import DeviceClient, locate
    from edge.nats.commands import CommandClient

    try:
        body = json.loads(args.args)
    except ValueError as err:
        raise EdgeError(f"the command's arguments are not JSON: {err}") from None
    if not isinstance(body, dict):
        raise EdgeError("the command's arguments must be a JSON object, e.g. '{\"alt\": 5}'")
    device, url = locate(args)
    async with DeviceClient(url, device) as client:
        assert client.nc is not None and client.device is not None
        res = await CommandClient(client.nc, client.device).send(
            args.entity, args.verb, body, timeout=args.timeout, caller=args.caller, command_id=args.id)
    _print(res.answer)
    if not res.ok:
        print(f"edge: {res.answer.get('error', 'the command was refused')} ({res.reason})", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from edge.cli.replay import relative_times

    # ``edge replay --from -60s``: a value, not an option (only replay has --from/--to)
    argv = relative_times(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(dispatch(args))
    except EdgeError as err:
        print(f"edge: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
