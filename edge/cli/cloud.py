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
    run.add_argument("--host", default="127.0.0.1", help="address the listeners bind (0.0.0.0: all)")
    run.add_argument("--port", type=int, default=4222, help="client port (node i of a cluster: +i-1)")
    run.add_argument("--leaf-port", type=int, default=7422, help="leaf-node port (node i: +i-1)")
    run.add_argument("--nodes", type=int, default=1, help="3: a JetStream cluster of three nodes, R3 streams")
    run.add_argument("--cluster-port", type=int, default=6222, help="cluster route port (node i: +i-1)")
    run.add_argument("--tls-cert", type=Path, help="certificate (PEM) for TLS on the leaf port")
    run.add_argument("--tls-key", type=Path, help="its key")
    run.add_argument("--insecure", action="store_true",
                     help="clients need no login (loopback experiments only); devices still log in")
    run.add_argument(
        "--nkeys",
        action="store_true",
        help="devices log in with nkeys (seeds written to <store>/devices/<device>.nk) instead of passwords",
    )
    run.add_argument("--page", metavar="HOST:PORT", default=None,
                     help="also serve the fleet page (live web view of the devices) on HOST:PORT")
    conf = csub.add_parser("config", help="write a complete hub config for a fleet (run it with a stock nats-server)")
    conf.add_argument("dir", type=Path, help="directory for fleet.json and <node>.conf")
    conf.add_argument("--device", action="append", default=[], help="device to add (repeat)")
    conf.add_argument("--nkeys", action="store_true", help="new devices log in with nkeys (seeds in <dir>/devices/)")
    conf.add_argument("--host", default="0.0.0.0", help="address every listener binds (default all)")
    conf.add_argument("--port", type=int, default=4222, help="client port")
    conf.add_argument("--leaf-port", type=int, default=7422, help="leaf-node port (devices)")
    conf.add_argument("--cluster-port", type=int, default=6222, help="cluster route port")
    conf.add_argument("--node", action="append", default=[], metavar="NAME=ADDRESS",
                      help="a hub node and the address the others and the devices dial (repeat: 3 for a cluster)")
    conf.add_argument("--nodes", type=int, default=None,
                      help="N local nodes (hub-1..N on one machine, ports +0..N-1) instead of --node")
    conf.add_argument("--tls-cert", help="hub certificate (PEM): TLS on client, leaf and cluster ports")
    conf.add_argument("--tls-key", help="its key")
    conf.add_argument("--tls-ca", help="CA of client certificates: devices and routes must present one")
    add = csub.add_parser("add-device", help="add a device to a fleet config, reload the running hub, provision")
    add.add_argument("dir", type=Path, help="the directory of `edge cloud config`")
    add.add_argument("devices", nargs="+")
    add.add_argument("--nkeys", action="store_true", help="log in with an nkey (seed in <dir>/devices/<device>.nk)")
    add.add_argument("--replicas", type=int, default=None, help="stream replicas (default: 3 on a cluster, else 1)")
    add.add_argument("--no-reload", action="store_true", help="only write the files")
    for name, text in (("provision", "create the hub streams for devices"), ("deprovision", "delete them")):
        p = csub.add_parser(name, help=text)
        _hub_args(p)
        p.add_argument("devices", nargs="+")
        if name == "provision":
            p.add_argument("--record", action="store_true",
                           help="also REC_<device>, the copy of replay records of a device with "
                                "[sync] record = true (docs/replay.md)")
    rep = csub.add_parser("repair", help="backfill events the hub's sourcing skipped, from the devices' own "
                                         "streams (one pass; exit 3 if some stay missing)")
    _hub_args(rep)
    rep.add_argument("devices", nargs="*", help="default: every provisioned device")
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
    status = fsub.add_parser(
        "status", help="link state, last seen, lag and missing events by sequence, stream sizes (exit 3 on an alarm)"
    )
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
    if args.command == "cloud" and args.verb == "config":
        return write_fleet_config(args)
    if args.command == "cloud" and args.verb == "add-device":
        return await add_devices(args)
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

                cols = ["device", "link", "last_seen_s", "lag", "evt_missing", "tele_messages", "evt_messages",
                        "cmd_pending", "rec_lag"]
                print(table([c.upper() for c in cols], [[_fmt(r[c]) for c in cols] for r in rows]))
                for r in rows:
                    for alarm in r["alarms"]:
                        print(f"ALARM {r['device']}: {alarm}")
            if any(r["alarms"] for r in rows):
                return 3  # something needs attention (scripts and monitoring)
        elif args.verb == "provision":
            for device in args.devices:
                opts = hubops.ProvisionOptions(record=args.record)
                print(json.dumps(await hubops.provision_device(js, device, opts)))
        elif args.verb == "deprovision":
            for device in args.devices:
                await hubops.deprovision_device(js, device)
                print(f"deprovisioned {device}")
        elif args.verb == "repair":
            from edge.sync.hub.repair import repair_device

            left = 0
            for device in args.devices or await hubops.list_devices(js):
                done = await repair_device(js, device)
                print(json.dumps(done.as_dict()))
                left += done.missing - done.repaired - done.duplicates + (1 if done.error else 0)
            if left:
                return 3
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


def _stop_on_signal() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM from now on (installed before anything starts, so a signal
    during start-up stops cleanly instead of interrupting whatever task runs)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _until_signalled() -> None:
    await _stop_on_signal().wait()


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
    stop = _stop_on_signal()
    from edge.nats.server import TlsFiles

    if bool(args.tls_cert) != bool(args.tls_key):
        raise EdgeError("give both --tls-cert and --tls-key")
    tls = TlsFiles(cert=args.tls_cert, key=args.tls_key) if args.tls_cert else None
    hub = DevHub(args.store or default_store(), devices=args.device, secure=not args.insecure, nkeys=args.nkeys,
                 port=args.port, leaf_port=args.leaf_port, nodes=args.nodes, host=args.host,
                 cluster_port=args.cluster_port, leaf_tls=tls)
    await hub.start()
    if hub.server is None:
        raise EdgeError("the hub did not start")
    print(f"hub running: {len(hub.servers)} node(s), clients {', '.join(s.url for s in hub.servers)}, "
          f"leaf nodes {', '.join(hub.leaf_urls())}, store {hub.store}")
    page = None
    try:
        if args.page:
            from edge.sync.hub.page.web import FleetPage, parse_bind

            host, port = parse_bind(args.page)
            page = FleetPage(hub.servers[0].client_url, host=host, port=port)
            await page.start()
            print(f"fleet page: {page.url}")
        for device in args.device:
            print("\n" + hub.device_table(device))
        sys.stdout.flush()
        await stop.wait()
    finally:
        if page is not None:
            await page.stop()
        await hub.stop()
    return 0


def write_fleet_config(args: argparse.Namespace) -> int:
    """``edge cloud config``: a new fleet config (or more devices in an existing one)."""
    from edge.errors import ConfigError
    from edge.sync.hub.config import FLEET_FILE, FleetConfig, HubNode

    if (args.dir / FLEET_FILE).exists():
        cfg = FleetConfig.load(args.dir)
    else:
        nodes: list[HubNode] = []
        if args.nodes and args.node:
            raise ConfigError("give --node or --nodes, not both", key="nodes")
        if args.nodes:
            nodes = [HubNode(f"hub-{i + 1}", host=args.host, port=args.port + i, leaf_port=args.leaf_port + i,
                             cluster_port=args.cluster_port + i) for i in range(args.nodes)]
        for spec in args.node:
            name, sep, address = spec.partition("=")
            if not sep or not address:
                raise ConfigError(f"--node {spec!r}: expected NAME=ADDRESS", key="node")
            nodes.append(HubNode(name, host=args.host, port=args.port, leaf_port=args.leaf_port,
                                 cluster_port=args.cluster_port, advertise=address))
        cfg = FleetConfig.create(args.dir, nodes or [HubNode("hub", host=args.host, port=args.port,
                                                            leaf_port=args.leaf_port, cluster_port=args.cluster_port)],
                                 tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca)
    for device in args.device:
        cfg.add_device(device, nkey=args.nkeys)
    for path in cfg.write():
        print(f"wrote {path}: run it with `nats-server -c {path}`")
    print(f"back-end clients: {', '.join(cfg.client_urls())}")
    for device in args.device:
        print("\n" + cfg.device_table(device))
    return 0


async def add_devices(args: argparse.Namespace) -> int:
    """``edge cloud add-device``: register, rewrite, reload the running nodes, provision."""
    import nats

    from edge.sync.hub import fleet as hubops
    from edge.sync.hub.config import FleetConfig, reload_node

    cfg = FleetConfig.load(args.dir)
    for device in args.devices:
        cfg.add_device(device, nkey=args.nkeys)
    cfg.write()
    if args.no_reload:
        print(f"wrote {args.dir}; reload the hub (twice: `nats-server --signal reload`) to apply")
    else:
        reloaded = [n.name for n in cfg.nodes if await reload_node(cfg, n)]
        print(f"reloaded: {', '.join(reloaded) or 'no node running here'}")
        if reloaded:
            await asyncio.sleep(1.0)  # both reloads applied
            replicas = args.replicas or (3 if len(cfg.nodes) >= 3 else 1)
            try:
                nc = await nats.connect(servers=cfg.client_urls(), connect_timeout=3,
                                        max_reconnect_attempts=0, allow_reconnect=False)
            except Exception as err:
                raise NatsError(f"cannot reach the hub to provision: {err}") from None
            try:
                for device in args.devices:
                    res = await hubops.provision_device(nc.jetstream(), device,
                                                        hubops.ProvisionOptions(replicas=replicas))
                    print(f"provisioned {device}: {', '.join(res['streams'])}")
            finally:
                await nc.close()
    for device in args.devices:
        print("\n" + cfg.device_table(device))
    return 0
