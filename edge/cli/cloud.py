"""``edge cloud`` (hub side) and ``edge fleet`` (what the hub knows about its devices).

``edge cloud run`` starts an embedded JetStream hub for development: it keeps its store and the
devices' leaf logins under ``--store`` (default ``~/.local/state/edge-hub``), writes ``hub.json``
there so the other commands find it, and prints the ``[hub]`` table each device needs. With
``--page HOST:PORT`` it also serves the live fleet page (:mod:`edge.sync.hub.page`); ``edge fleet
page`` serves the page alone for a hub that is already running.

Device logins are kept in ``devices.json`` (mode 0600): a password per device, or, for devices
run with ``--nkeys``, only the device's public nkey; the matching seed is written to
``devices/<device>.nk`` (mode 0600) for the operator to copy to the device, and the printed
``[hub]`` table points ``nkey_seed`` at it. A device already on nkeys stays on nkeys; ``--nkeys``
switches a password device to an nkey (its password stops working).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from edge.errors import EdgeError, NatsError

# the store layout lives with the hub it belongs to (importing it pulls no hub libraries)
HUB_FILE = "hub.json"


def default_store() -> Path:
    from edge.sync.hub.dev import default_store as store

    return store()


def register(sub: Any) -> None:
    cloud = sub.add_parser("cloud", help="the cloud hub: run one, provision devices, send commands")
    csub = cloud.add_subparsers(dest="verb", required=True)
    run = csub.add_parser("run", help="run an embedded JetStream hub (development)")
    run.add_argument("--store", type=Path, default=None, help="hub data directory")
    run.add_argument("--device", action="append", default=[], help="device to provision (repeat)")
    run.add_argument("--port", type=int, default=4222, help="client port on 127.0.0.1")
    run.add_argument("--leaf-port", type=int, default=7422, help="leaf-node port on 127.0.0.1")
    run.add_argument("--insecure", action="store_true", help="no logins (loopback experiments only)")
    run.add_argument(
        "--nkeys",
        action="store_true",
        help="devices log in with nkeys (seeds written to <store>/devices/<device>.nk) instead of passwords",
    )
    run.add_argument("--page", metavar="HOST:PORT", default=None,
                     help="also serve the fleet page (live web view of the devices) on HOST:PORT")
    for name, text in (("provision", "create the hub streams for devices"), ("deprovision", "delete them")):
        p = csub.add_parser(name, help=text)
        _hub_args(p)
        p.add_argument("devices", nargs="+")
    send = csub.add_parser("send", help="queue a command for a device (delivered when it is online)")
    _hub_args(send)
    send.add_argument("device")
    send.add_argument("name", help="command subject tail, e.g. drone-0.rtl (entity.verb)")
    send.add_argument("payload", nargs="?", default="{}", help="JSON payload")
    send.add_argument("--ttl", type=float, default=3600.0, help="seconds until the command expires")
    send.add_argument("--policy", type=Path, default=None,
                      help="fleet policy file: the command is queued only if it allows it (docs/policy.md)")
    send.add_argument("--operator", default="cloud", help="who sends it (the policy's operator:<name>)")

    fleet = sub.add_parser("fleet", help="devices as the hub sees them")
    fsub = fleet.add_subparsers(dest="verb", required=True)
    status = fsub.add_parser("status", help="link state, last seen, lag, stream sizes")
    _hub_args(status)
    status.add_argument("--json", action="store_true")
    page = fsub.add_parser("page", help="serve the live fleet page for a running hub")
    _hub_args(page)
    page.add_argument("--page", metavar="HOST:PORT", default="127.0.0.1:8080", help="where to serve it")


def _hub_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub-url", help="client URL of the hub (default: from the store's hub.json)")
    p.add_argument("--store", type=Path, default=None, help="hub data directory of `edge cloud run`")


def _hub_url(args: argparse.Namespace) -> str:
    if args.hub_url:
        return str(args.hub_url)
    path = (args.store or default_store()) / HUB_FILE
    try:
        return str(json.loads(path.read_text())["client_url"])
    except (OSError, ValueError, KeyError):
        raise NatsError(f"no hub found ({path} missing); start one with `edge cloud run` or pass --hub-url") from None


async def dispatch(args: argparse.Namespace) -> int:
    if args.command == "cloud" and args.verb == "run":
        return await run_hub(args)
    if args.command == "fleet" and args.verb == "page":
        return await serve_page(args)
    import nats

    if args.verb == "send" and args.policy is not None:  # [policy] decided before anything is queued
        from edge.policy.hub import FleetPolicy

        FleetPolicy.from_file(args.policy).require_command(args.operator, args.device, args.name)
    url = _hub_url(args)
    try:
        nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False)
    except Exception as err:
        raise NatsError(f"cannot reach the hub at {url.split('@')[-1]}: {err}") from None
    try:
        js = nc.jetstream()
        from edge.sync.hub import fleet as hubops

        if args.command == "fleet":
            rows = [s.as_dict() for s in await hubops.fleet_status(js)]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                from edge.cli.status import table

                cols = ["device", "link", "last_seen_s", "lag", "tele_messages", "evt_messages", "cmd_pending"]
                print(table([c.upper() for c in cols], [[_fmt(r[c]) for c in cols] for r in rows]))
        elif args.verb == "provision":
            for device in args.devices:
                print(json.dumps(await hubops.provision_device(js, device)))
        elif args.verb == "deprovision":
            for device in args.devices:
                await hubops.deprovision_device(js, device)
                print(f"deprovisioned {device}")
        elif args.verb == "send":
            try:
                payload = json.dumps(json.loads(args.payload)).encode()
            except ValueError as err:
                raise EdgeError(f"payload is not JSON: {err}") from None
            ack = await hubops.send_command(js, args.device, args.name, payload, ttl_s=args.ttl)
            print(f"queued for {args.device} (stream {ack.stream}, seq {ack.seq}), expires in {args.ttl:.0f} s")
    finally:
        await nc.close()
    return 0


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return "-" if value is None else str(value)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_page(args: argparse.Namespace) -> int:
    """``edge fleet page``: the fleet page for the hub at ``--hub-url`` (or the store's hub.json)."""
    from edge import logs
    from edge.sync.hub.page.web import FleetPage, parse_bind

    logs.configure("info")
    host, port = parse_bind(args.page)
    page = FleetPage(_hub_url(args), host=host, port=port)
    await page.start()
    print(f"fleet page: {page.url}", flush=True)
    try:
        await _until_signalled()
    finally:
        await page.stop()
    return 0


async def run_hub(args: argparse.Namespace) -> int:
    from edge import logs
    from edge.sync.hub.dev import DevHub

    logs.configure("info")
    hub = DevHub(args.store or default_store(), devices=args.device, secure=not args.insecure, nkeys=args.nkeys,
                 port=args.port, leaf_port=args.leaf_port)
    await hub.start()
    server = hub.server
    if server is None:
        raise EdgeError("the hub did not start")
    print(f"hub running: clients {server.url}, leaf nodes {server.leaf_url}, store {hub.store}")
    page = None
    try:
        if args.page:
            from edge.sync.hub.page.web import FleetPage, parse_bind

            host, port = parse_bind(args.page)
            page = FleetPage(server.client_url, host=host, port=port)
            await page.start()
            print(f"fleet page: {page.url}")
        for device in args.device:
            print("\n" + hub.device_table(device))
        sys.stdout.flush()
        await _until_signalled()
    finally:
        if page is not None:
            await page.stop()
        await hub.stop()
    return 0
