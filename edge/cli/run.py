"""``edge run``: start a device in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from edge import logs
from edge.config import DeviceConfig, embedded_default, load_config
from edge.runtime import Runtime, run_until_signal

log = logging.getLogger("edge.cli.run")


def demo_runtime(cfg: DeviceConfig, *, view: bool) -> Runtime:
    """The embedded demo: the demo fleet added to ``cfg``, and the console view."""
    from edge.demo.fleet import apply_demo
    from edge.demo.view import FleetView

    runtime = Runtime(apply_demo(cfg))
    if view:
        runtime.add_layer(FleetView(runtime.components_status))
    return runtime


async def run(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.config:
        cfg = load_config(args.config, data_dir=data_dir)
    else:
        cfg = embedded_default(data_dir=data_dir, drones=args.drones)
    logs.configure(args.log_level or cfg.log_level, json_lines=args.json_logs or cfg.log_json)
    runtime = demo_runtime(cfg, view=not args.quiet) if cfg.demo else Runtime(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_until_signal(runtime, stop)
    return 0
