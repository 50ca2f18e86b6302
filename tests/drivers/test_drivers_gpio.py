"""GPIO drivers through gpiozero's MockFactory (the real gpiozero device code runs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

from drivers.config import build_driver
from drivers.gpio.inputs import ButtonDriver
from drivers.gpio.outputs import LEDDriver, PWMOutputDriver
from drivers.testing import RecordingContext

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def factory() -> Iterator[Any]:
    saved = Device.pin_factory
    f = MockFactory(pin_class=MockPWMPin)
    Device.pin_factory = f
    try:
        yield f
    finally:
        f.reset()
        Device.pin_factory = saved


async def test_led_on_off_by_command(factory: Any) -> None:
    ctx = RecordingContext("dev1")
    led = LEDDriver("status_led", "drone1", pin=17, pin_factory=factory)
    await led.start(ctx)
    await asyncio.sleep(0)
    pin = factory.pin(17)
    assert not pin.state
    ack = await ctx.command("drone1", "status_led", {"on": True})
    assert ack == {"ok": True, "value": 1.0} and pin.state == 1
    ack = await ctx.command("drone1", "status_led", {"value": 0.5})  # not a PWM LED
    assert ack["ok"] is False and "pwm" in ack["error"]
    ack = await ctx.command("drone1", "status_led", {"on": False})
    assert ack["ok"] and pin.state == 0
    assert ctx.component("drone1", "status_led") == {"value": 0.0}
    assert led.health().errors == 1
    await led.stop()
    assert ctx.subscriptions == []


async def test_pwm_led_brightness(factory: Any) -> None:
    ctx = RecordingContext()
    led = LEDDriver("lamp", "drone1", pin=18, pwm=True, pin_factory=factory)
    await led.start(ctx)
    await asyncio.sleep(0)
    ack = await ctx.command("drone1", "lamp", {"value": 0.25})
    assert ack["ok"] and abs(factory.pin(18).state - 0.25) < 1e-9
    ack = await ctx.command("drone1", "lamp", {"value": 2})
    assert not ack["ok"] and "out of range" in ack["error"]
    await led.stop()


async def test_servo_pulse_width(factory: Any) -> None:
    ctx = RecordingContext()
    servo = PWMOutputDriver("gimbal", "drone1", pin=12, mode="servo", pin_factory=factory)
    await servo.start(ctx)
    await asyncio.sleep(0)
    pin = factory.pin(12)
    assert abs(pin.state - 0.075) < 1e-6  # 1.5 ms of 20 ms at neutral
    ack = await ctx.command("drone1", "gimbal", {"value": 1.0})
    assert ack["ok"] and ack["pulse_s"] == 0.002 and abs(pin.state - 0.1) < 1e-6
    ack = await ctx.command("drone1", "gimbal", {"angle": -45})
    assert ack["ok"] and abs(ack["value"] + 0.5) < 1e-9 and abs(pin.state - 0.0625) < 1e-6
    assert pin.frequency == pytest.approx(50)
    await servo.stop()


async def test_esc_throttle_failsafe_and_safe_stop(factory: Any) -> None:
    ctx = RecordingContext()
    esc = PWMOutputDriver("motor1", "drone1", pin=13, mode="esc", failsafe_s=0.2, pin_factory=factory)
    await esc.start(ctx)
    await asyncio.sleep(0)
    pin = factory.pin(13)
    assert abs(pin.state - 0.05) < 1e-6  # 1.0 ms: zero throttle, arms the ESC
    ack = await ctx.command("drone1", "motor1", {"throttle": 0.5})
    assert ack["ok"] and abs(pin.state - 0.075) < 1e-6
    await ctx.wait_published("edge.dev1.evt.drone1.motor1_failsafe", timeout=2)
    assert abs(pin.state - 0.05) < 1e-6 and esc.failsafes == 1
    await ctx.command("drone1", "motor1", {"throttle": 0.8})
    await esc.stop()
    assert esc.device is None


async def test_button_events(factory: Any) -> None:
    ctx = RecordingContext("dev1")
    btn = ButtonDriver("limit_up", "drone1", pin=4, bounce_s=None, pin_factory=factory)
    await btn.start(ctx)
    pin = factory.pin(4)
    await ctx.wait_for(lambda: ctx.component("drone1", "limit_up") == {"pressed": False})
    pin.drive_low()
    evt = await ctx.wait_published("edge.dev1.evt.drone1.limit_up")
    assert evt.json()["pressed"] is True
    assert ctx.component("drone1", "limit_up") == {"pressed": True}
    n = len(ctx.published)
    pin.drive_high()
    evt = await ctx.wait_published("edge.dev1.evt.drone1.limit_up", after=n)
    assert evt.json()["pressed"] is False and btn.health().samples == 2
    await btn.stop()


async def test_gpio_from_config_uses_emulated_factory() -> None:
    from drivers.gpio.pins import emulated_factory

    saved = Device.pin_factory
    try:
        drv = build_driver("m", {"kind": "pwm", "pin": 21, "entity": "d", "mode": "esc",
                                 "backend": "emulated", "min_pulse_ms": 1.1})
        ctx = RecordingContext()
        await drv.start(ctx)
        assert abs(emulated_factory().pin(21).state - 0.055) < 1e-6
        await drv.stop()
    finally:
        emulated_factory().reset()
        Device.pin_factory = saved
