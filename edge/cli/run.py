"""``edge run``: start a device in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from edge import logs
from edge.config import embedded_default, load_config
from edge.demo import FleetView, apply_demo
from edge.runtime import Runtime, run_until_signal

log = logging.getLogger("edge.cli.run")


async def run(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.config:
        cfg = load_config(args.config, data_dir=data_dir)
    else:
        cfg = embedded_default(data_dir=data_dir, drones=args.drones)
    logs.configure(args.log_level or cfg.log_level, json_lines=args.json_logs or cfg.log_json)
    if cfg.demo:
        apply_demo(cfg)
    runtime = Runtime(cfg)
    if cfg.demo and not args.quiet:
        runtime.extras.append(FleetView())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_until_signal(runtime, stop)
    return 0
