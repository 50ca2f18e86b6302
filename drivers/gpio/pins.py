"""Which gpiozero pin factory a GPIO driver uses.

``backend = "real"`` uses gpiozero's own default (lgpio on a Pi, or ``GPIOZERO_PIN_FACTORY``).
``backend = "emulated"`` uses one process-wide ``MockFactory`` with PWM-capable mock pins, so
emulated buttons can be pressed (``pin.drive_low()``) and servo pulses observed
(``pin.state``) by whoever holds the factory (the demo, tests).
"""

from __future__ import annotations

from typing import Any

_EMULATED: Any = None


def emulated_factory() -> Any:
    """The shared MockFactory (created on first use)."""
    global _EMULATED
    if _EMULATED is None:
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        _EMULATED = MockFactory(pin_class=MockPWMPin)
    return _EMULATED


def pin_factory(backend: str) -> Any:
    """``None`` (gpiozero's default) for real hardware, the shared mock for ``"emulated"``."""
    return emulated_factory() if backend == "emulated" else None
