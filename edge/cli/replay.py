"""``edge replay``: re-run the recorded systems over a window and compare (docs/replay.md).

Exit codes: 0 every output identical, 3 a divergence (the report says where), 1 an error.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.errors import EdgeError

#: Exit code of a replay whose outputs differ from the record.
EXIT_DIVERGED = 3


def register(sub: Any) -> None:
    """Add ``edge replay`` to the ``edge`` parser."""
    p = sub.add_parser("replay", help="re-run recorded systems over a window and compare every output")
    p.add_argument("--url", help="NATS URL of the device or the hub (default: the running device)")
    p.add_argument("--device", help="device id (default: the one running here; on a hub: required)")
    p.add_argument("--data-dir", help="the device's data directory")
    p.add_argument("--from", dest="t_from", help="window start: unix seconds, ISO 8601 or -30s")
    p.add_argument("--to", dest="t_to", help="window end (default: the last record)")
    p.add_argument("--seq", help="window by stream sequence FROM:TO instead of (or with) time")
    p.add_argument("--system", action="append", default=[], metavar="NAME",
                   help="replay only this component or agent (repeatable)")
    p.add_argument("--with", dest="what_if", action="append", default=[], metavar="NAME=PATH",
                   help="what-if: run this module (.wasm), manifest or agent table (.toml) instead of "
                        "the recorded NAME")
    p.add_argument("--stream", default="REC", help="the record stream (a hub's copy: its name there)")
    p.add_argument("--domain", help="JetStream domain of the stream (e.g. hub)")
    p.add_argument("--json", action="store_true", help="the report as JSON")


#: A relative time (``-30s``, ``-5m``, ``-1h``): argparse takes it for an option, not a value.
_RELATIVE_TIME = re.compile(r"^-\d+(?:\.\d+)?[smh]$")


def relative_times(argv: Sequence[str]) -> list[str]:
    """``--from -60s`` as ``--from=-60s``, so the documented spelling parses."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--from", "--to") and i + 1 < len(argv) and _RELATIVE_TIME.match(argv[i + 1]):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def what_if_args(items: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise EdgeError(f"'{item}' is not NAME=PATH (e.g. patrol=build/patrol-2.wasm)")
        out[name] = Path(path)
    return out


async def dispatch(args: argparse.Namespace) -> int:
    import nats

    from edge.cli.client import locate
    from edge.errors import NatsError
    from edge.replay.replayer import replay
    from edge.replay.source import Window, parse_seq, parse_time

    kwargs: dict[str, Any] = {}
    if args.t_from:
        kwargs["t_from"] = parse_time(args.t_from)
    if args.t_to:
        kwargs["t_to"] = parse_time(args.t_to)
    if args.seq:
        kwargs["seq_from"], kwargs["seq_to"] = parse_seq(args.seq)
    window = Window(**kwargs)
    what_if = what_if_args(args.what_if)
    device, url = locate(args)
    try:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0,
                                allow_reconnect=False)
    except Exception as err:
        raise NatsError(f"cannot reach NATS at {url}: {err}") from None
    try:
        if device is None:
            from edge.cli.client import DeviceClient

            async with DeviceClient(url) as client:
                device = client.device
        assert device is not None
        js = nc.jetstream(domain=args.domain) if args.domain else nc.jetstream()
        report = await replay(js, device, window, stream=args.stream,
                              systems=args.system or None, what_if=what_if)
    finally:
        await nc.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.render())
    return 0 if report.identical else EXIT_DIVERGED
