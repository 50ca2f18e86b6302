"""GPIO inputs: a button or limit switch that publishes press/release events.

:class:`ButtonDriver` wraps ``gpiozero.Button`` (pull-up by default: wire the switch between the
pin and GND). Each change becomes an event ``edge.<device>.evt.<entity>.<event>`` with
``{"name", "pressed": bool, "t": unix seconds}`` and updates the component named after the driver
(``{"pressed": bool}``). gpiozero calls back from its own thread; the callback only hands the
change to the event loop (``call_soon_threadsafe``), which publishes it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from drivers.base import Driver
from drivers.config import REQUIRED, Table
from drivers.gpio.pins import pin_factory

DEFAULT_BOUNCE_S = 0.01  # seconds of contact bounce ignored


class ButtonDriver(Driver):
    kind: ClassVar[str] = "button"

    def __init__(self, name: str, entity: str, *, pin: int | str, pull_up: bool = True,
                 bounce_s: float | None = DEFAULT_BOUNCE_S, event: str | None = None,
                 pin_factory: Any = None, publish_telemetry: bool = True) -> None:
        super().__init__(name, entity, publish_telemetry=publish_telemetry)
        self.pin = pin
        self.pull_up = pull_up
        self.bounce_s = bounce_s
        self.event_kind = event or name
        self.pin_factory = pin_factory
        self.device: Any = None
        self._changes: asyncio.Queue[tuple[bool, float]] = asyncio.Queue()

    @property
    def where(self) -> str:
        return f"gpio {self.pin}"

    async def _open(self) -> None:
        from gpiozero import Button

        loop = asyncio.get_running_loop()
        self._changes = asyncio.Queue()
        q = self._changes
        dev = Button(self.pin, pull_up=self.pull_up, bounce_time=self.bounce_s or None,
                     pin_factory=self.pin_factory)
        dev.when_pressed = lambda: loop.call_soon_threadsafe(q.put_nowait, (True, time.time()))
        dev.when_released = lambda: loop.call_soon_threadsafe(q.put_nowait, (False, time.time()))
        self.device = dev

    async def _run(self) -> None:
        await self._emit(self.name, {"pressed": bool(self.device.is_pressed)})
        while True:
            pressed, t = await self._changes.get()
            self._sample()
            await self._emit(self.name, {"pressed": pressed})
            await self._event(self.event_kind, {"name": self.name, "pressed": pressed, "t": t})

    async def _close(self) -> None:
        dev, self.device = self.device, None
        if dev is not None:
            dev.close()


def from_config(t: Table) -> ButtonDriver:
    bounce = t.number("bounce_ms", DEFAULT_BOUNCE_S * 1000, lo=0.0, hi=1000.0)
    return ButtonDriver(
        t.name, t.entity, pin=t.integer("pin", REQUIRED, lo=0), pull_up=t.flag("pull_up", True),
        bounce_s=bounce / 1000 if bounce else None, event=t.text("event", None),
        pin_factory=pin_factory(t.backend), publish_telemetry=t.publish,
    )
