"""``edge run``: start a device in the foreground until SIGINT/SIGTERM; SIGHUP reloads the
policy file (docs/policy.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from edge import logs
from edge.cli import memory
from edge.config import DeviceConfig, embedded_default, load_config
from edge.errors import EdgeError
from edge.runtime import Runtime, run_until_signal
from edge.service.notify import Notifier

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
    memory.tune_allocator()  # before any thread starts: see edge/cli/memory.py
    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.config:
        cfg = _load(args.config, data_dir)
    else:
        cfg = embedded_default(data_dir=data_dir, drones=args.drones)
    logs.configure(args.log_level or cfg.log_level, json_lines=args.json_logs or cfg.log_json)
    runtime = demo_runtime(cfg, view=not args.quiet) if cfg.demo else Runtime(cfg)
    notifier = Notifier.from_env()  # systemd's Type=notify (edge/service/notify.py); inert without it
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            notifier.stopping()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, lambda: runtime.reload_policy())
    tasks = [
        loop.create_task(_trim_when_settled(runtime), name="edge.cli.trim"),
        loop.create_task(notifier.ready_when(lambda: runtime.started_at is not None,
                                             lambda: _ready_status(runtime)), name="edge.cli.ready"),
        loop.create_task(notifier.feed_watchdog(), name="edge.cli.watchdog"),
    ]
    try:
        try:
            await run_until_signal(runtime, stop)
        except EdgeError as err:  # a new config fragment on probation may be why: the previous set
            if not args.config or not _fragments_failed(cfg, err):
                raise
            cfg = _load(args.config, data_dir)
            runtime = Runtime(cfg)
            await run_until_signal(runtime, stop)
    finally:
        for task in tasks:
            task.cancel()
        notifier.close()
    return 0


def _load(path: str, data_dir: Path | None) -> DeviceConfig:
    """The config file with the OTA config fragments its update state names (docs/ota.md)."""
    if _has_ota(path):
        from edge.ota.fragments import load_device_config

        return load_device_config(path, data_dir=data_dir)
    return load_config(path, data_dir=data_dir)


def _has_ota(path: str) -> bool:
    from edge.config.overlay import read_toml

    return "ota" in read_toml(path)


def _fragments_failed(cfg: DeviceConfig, err: Exception) -> bool:
    if not cfg.fragments:
        return False
    from edge.ota.fragments import abandon_start

    return abandon_start(cfg, err)


def _ready_status(runtime: Runtime) -> str:
    ready = f" in {runtime.ready_s:.1f} s" if runtime.ready_s is not None else ""
    return f"device {runtime.device} ready{ready}"


async def _trim_when_settled(runtime: Runtime) -> None:
    """Once the device is ready and its start-up garbage is freed, give the pages back."""
    while runtime.started_at is None:
        await asyncio.sleep(0.2)
    await asyncio.sleep(memory.TRIM_AFTER_S)
    memory.trim()
