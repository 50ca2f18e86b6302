"""GPIO outputs driven by commands: an LED (on/off, brightness, blink) and a PWM output for a
servo or an ESC (50 Hz, 1–2 ms pulses).

Key components
- :class:`LEDDriver`: verb ``<name>`` (configurable ``verb``) with ``{"on": bool}``,
  ``{"value": 0..1}`` (``pwm = true``) or ``{"blink": true, "on_time": s, "off_time": s}``.
- :class:`PWMOutputDriver`: ``mode = "servo"`` takes ``{"value": -1..1}`` (or ``{"angle": deg}``
  within ``±max_angle_deg``); ``mode = "esc"`` takes ``{"throttle": 0..1}`` and starts at zero
  throttle (the pulse ESCs need to arm). ``failsafe_s`` > 0 returns an ESC to zero throttle (a
  servo to its ``neutral``) when no command arrived for that long. Stopping the driver does the same
  before releasing the pin.
Both report the output in a component named after the driver (``{"value": float}``) and answer
each command (``DriverContext.serve``; recorded on ``edge.<device>.ack.<entity>.<verb>``).

The backend is gpiozero's pin factory (``pin_factory=``; see :mod:`drivers.gpio.pins`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from drivers.base import CommandHandler, Driver
from drivers.config import REQUIRED, Table
from drivers.gpio.pins import pin_factory

DEFAULT_MIN_PULSE_S = 0.001  # seconds: ESC zero throttle / servo full left
DEFAULT_MAX_PULSE_S = 0.002  # seconds
DEFAULT_FRAME_S = 0.02  # seconds between pulses (50 Hz)
DEFAULT_MAX_ANGLE_DEG = 90.0
DEFAULT_BLINK_S = 0.5  # seconds on and off


def _number(args: dict[str, Any], key: str, lo: float, hi: float) -> float:
    v = args.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"'{key}' must be a number in [{lo}, {hi}]")
    if not lo <= v <= hi:
        raise ValueError(f"'{key}' = {v} is out of range [{lo}, {hi}]")
    return float(v)


class _OutputDriver(Driver):
    def __init__(self, name: str, entity: str, *, pin: int | str, verb: str | None,
                 pin_factory: Any, publish_telemetry: bool) -> None:
        super().__init__(name, entity, publish_telemetry=publish_telemetry)
        self.pin = pin
        self.verb = verb or name
        self.pin_factory = pin_factory
        self.device: Any = None

    @property
    def where(self) -> str:
        return f"gpio {self.pin}"

    async def _close(self) -> None:
        dev, self.device = self.device, None
        if dev is not None:
            dev.close()

    async def _report(self, value: float) -> None:
        self._sample()
        await self._emit(self.name, {"value": value})


class LEDDriver(_OutputDriver):
    kind: ClassVar[str] = "led"

    def __init__(self, name: str, entity: str, *, pin: int | str, pwm: bool = False,
                 active_high: bool = True, verb: str | None = None, pin_factory: Any = None,
                 publish_telemetry: bool = True) -> None:
        super().__init__(name, entity, pin=pin, verb=verb, pin_factory=pin_factory,
                         publish_telemetry=publish_telemetry)
        self.pwm = pwm
        self.active_high = active_high

    async def _open(self) -> None:
        from gpiozero import LED, PWMLED

        cls = PWMLED if self.pwm else LED
        self.device = cls(self.pin, active_high=self.active_high, initial_value=False,
                          pin_factory=self.pin_factory)

    def commands(self) -> dict[str, CommandHandler]:
        return {self.verb: self._command}

    async def _run(self) -> None:
        await self._report(0.0)
        await asyncio.Event().wait()

    async def _command(self, args: dict[str, Any]) -> dict[str, Any]:
        dev = self.device
        if dev is None:
            raise RuntimeError("LED is not open")
        if args.get("blink"):
            on = _number({"on_time": DEFAULT_BLINK_S, **args}, "on_time", 0.001, 3600)
            off = _number({"off_time": DEFAULT_BLINK_S, **args}, "off_time", 0.001, 3600)
            dev.blink(on_time=on, off_time=off)
            await self._report(-1.0)
            return {"blink": True}
        if "value" in args:
            if not self.pwm:
                raise ValueError("'value' needs pwm = true; use {\"on\": true|false}")
            value = _number(args, "value", 0.0, 1.0)
        elif isinstance(args.get("on"), bool):
            value = 1.0 if args["on"] else 0.0
        else:
            raise ValueError('expected {"on": true|false}, {"value": 0..1} or {"blink": true}')
        dev.value = value
        await self._report(value)
        return {"value": value}


class PWMOutputDriver(_OutputDriver):
    kind: ClassVar[str] = "pwm"

    def __init__(self, name: str, entity: str, *, pin: int | str, mode: str = "servo",
                 min_pulse_s: float = DEFAULT_MIN_PULSE_S, max_pulse_s: float = DEFAULT_MAX_PULSE_S,
                 frame_s: float = DEFAULT_FRAME_S, max_angle_deg: float = DEFAULT_MAX_ANGLE_DEG,
                 neutral: float = 0.0, failsafe_s: float = 0.0, verb: str | None = None,
                 pin_factory: Any = None, publish_telemetry: bool = True) -> None:
        super().__init__(name, entity, pin=pin, verb=verb, pin_factory=pin_factory,
                         publish_telemetry=publish_telemetry)
        if mode not in ("servo", "esc"):
            raise ValueError(f"mode must be 'servo' or 'esc'; got {mode!r}")
        if not 0 < min_pulse_s < max_pulse_s < frame_s:
            raise ValueError("need 0 < min_pulse_s < max_pulse_s < frame_s")
        self.mode = mode
        self.min_pulse_s, self.max_pulse_s, self.frame_s = min_pulse_s, max_pulse_s, frame_s
        self.max_angle_deg = max_angle_deg
        self.failsafe_s = failsafe_s
        self.safe_value = -1.0 if mode == "esc" else max(-1.0, min(1.0, neutral))
        self._last_cmd = time.monotonic()
        self.failsafes = 0

    @property
    def output(self) -> float:
        """The commanded level: servo -1..1, ESC throttle 0..1."""
        v = float(self.device.value) if self.device is not None else self.safe_value
        return (v + 1.0) / 2.0 if self.mode == "esc" else v

    async def _open(self) -> None:
        from gpiozero import Servo

        self.device = Servo(self.pin, initial_value=self.safe_value, min_pulse_width=self.min_pulse_s,
                            max_pulse_width=self.max_pulse_s, frame_width=self.frame_s,
                            pin_factory=self.pin_factory)

    def commands(self) -> dict[str, CommandHandler]:
        return {self.verb: self._command}

    async def _run(self) -> None:
        await self._report(self.output)
        self._last_cmd = time.monotonic()
        if self.failsafe_s <= 0:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.failsafe_s / 4)
            if time.monotonic() - self._last_cmd > self.failsafe_s and self.device is not None \
                    and self.device.value != self.safe_value:
                self.device.value = self.safe_value
                self.failsafes += 1
                self.log.warning("pwm %s: no command for %.1f s, failsafe", self.name, self.failsafe_s)
                await self._report(self.output)
                await self._event(f"{self.name}_failsafe", {"name": self.name, "value": self.output})

    async def _command(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.device is None:
            raise RuntimeError("PWM output is not open")
        if self.mode == "esc":
            value = _number(args, "throttle", 0.0, 1.0) * 2.0 - 1.0
        elif "angle" in args:
            a = self.max_angle_deg
            value = _number(args, "angle", -a, a) / a
        else:
            value = _number(args, "value", -1.0, 1.0)
        self.device.value = value
        self._last_cmd = time.monotonic()
        await self._report(self.output)
        pulse = self.min_pulse_s + (value + 1.0) / 2.0 * (self.max_pulse_s - self.min_pulse_s)
        return {"value": self.output, "pulse_s": round(pulse, 6)}

    async def _close(self) -> None:
        if self.device is not None:
            self.device.value = self.safe_value  # never leave a motor spinning
        await super()._close()


def led_from_config(t: Table) -> LEDDriver:
    return LEDDriver(
        t.name, t.entity, pin=t.integer("pin", REQUIRED, lo=0),
        pwm=t.flag("pwm", False), active_high=t.flag("active_high", True), verb=t.text("verb", None),
        pin_factory=pin_factory(t.backend), publish_telemetry=t.publish,
    )


def pwm_from_config(t: Table) -> PWMOutputDriver:
    return PWMOutputDriver(
        t.name, t.entity, pin=t.integer("pin", REQUIRED, lo=0), mode=t.choice("mode", ("servo", "esc"), "servo"),
        min_pulse_s=t.number("min_pulse_ms", DEFAULT_MIN_PULSE_S * 1000, lo=0.1, hi=5.0) / 1000,
        max_pulse_s=t.number("max_pulse_ms", DEFAULT_MAX_PULSE_S * 1000, lo=0.2, hi=10.0) / 1000,
        frame_s=t.number("frame_ms", DEFAULT_FRAME_S * 1000, lo=2.5, hi=100.0) / 1000,
        max_angle_deg=t.number("max_angle_deg", DEFAULT_MAX_ANGLE_DEG, lo=1.0, hi=360.0),
        neutral=t.number("neutral", 0.0, lo=-1.0, hi=1.0),
        failsafe_s=t.number("failsafe_s", 0.0, lo=0.0), verb=t.text("verb", None),
        pin_factory=pin_factory(t.backend), publish_telemetry=t.publish,
    )
