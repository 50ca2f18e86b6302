"""Finds a running device and calls its API over NATS request/reply."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client

from edge.nats import subjects
from edge.config import default_data_dir
from edge.errors import EdgeError, LifecycleError, NatsError
from edge.runtime import RUNTIME_FILE

REQUEST_TIMEOUT = 5.0  # seconds


class ApiError(EdgeError):
    """The device refused a request; carries the device's own error fields."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runtime_files(args: argparse.Namespace) -> list[Path]:
    if getattr(args, "data_dir", None):
        return [Path(args.data_dir) / RUNTIME_FILE]
    if os.environ.get("EDGE_DATA_DIR"):
        return [Path(os.environ["EDGE_DATA_DIR"]) / RUNTIME_FILE]
    if getattr(args, "device", None):
        return [default_data_dir(args.device) / RUNTIME_FILE]
    parent = default_data_dir("x").parent
    return sorted(parent.glob(f"*/{RUNTIME_FILE}"))


def locate(args: argparse.Namespace) -> tuple[str | None, str]:
    """(device, url) of the device to talk to, from --url/--device or the data dir's runtime.json."""
    if getattr(args, "url", None):
        return getattr(args, "device", None), str(args.url)
    found = []
    for path in _runtime_files(args):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(info.get("pid", 0))):
            found.append(info)
    if not found:
        raise NatsError(
            "no running device found; start one with `edge run`, or pass --url (and --device) "
            "or --data-dir"
        )
    if len(found) > 1:
        names = ", ".join(i["device"] for i in found)
        raise NatsError(f"several devices are running ({names}); choose one with --device")
    return str(found[0]["device"]), str(found[0]["url"])


#: Who the CLI's API requests are from (``Edge-Caller``; ``edge cmd``'s default ``--caller`` too).
CLI_CALLER = "cli"


class DeviceClient:
    """``async with DeviceClient(url, device) as c: await c.call("entity", "list")``."""

    def __init__(self, url: str, device: str | None = None, *, caller: str = CLI_CALLER) -> None:
        self.url = url
        self.device = device
        self.caller = caller  # the Edge-Caller of its requests (the policy's caller:<name>)
        self.nc: Client | None = None

    async def __aenter__(self) -> DeviceClient:
        try:
            self.nc = await nats.connect(self.url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
        except Exception as err:
            raise NatsError(f"cannot reach NATS at {self.url}: {err}") from None
        if self.device is None:
            self.device = await self._discover()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.nc is not None:
            await self.nc.close()

    async def _discover(self) -> str:
        if self.nc is None:
            raise LifecycleError("DeviceClient is not connected; use `async with DeviceClient(url)`")
        try:
            msg = await self.nc.request("$SRV.INFO.edge-device", b"", timeout=REQUEST_TIMEOUT)
        except Exception:
            raise NatsError(f"no edge device answers at {self.url}") from None
        return str(json.loads(msg.data)["metadata"]["device"])

    async def call(self, group: str, verb: str, body: dict[str, Any] | None = None) -> Any:
        if self.nc is None or self.device is None:
            raise LifecycleError("DeviceClient is not connected; use `async with DeviceClient(url)`")
        subject = subjects.api(self.device, group, verb)
        try:
            msg = await self.nc.request(subject, json.dumps(body or {}).encode(), timeout=REQUEST_TIMEOUT,
                                        headers={subjects.CALLER_HEADER: self.caller})
        except Exception as err:
            raise NatsError(f"device {self.device} did not answer {subject}: {type(err).__name__}") from None
        reply = json.loads(msg.data)
        if not reply.get("ok"):
            info = reply.get("error", {})
            fields = {k: v for k, v in info.items() if k != "message"}
            raise ApiError(str(info.get("message", "request refused")), **fields)
        return reply.get("result")
