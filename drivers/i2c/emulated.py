"""The emulated I2C backend: a bus whose chips are register-level models.

Key components
- :class:`EmulatedBus`: a :class:`~drivers.i2c.bus.Bus` that routes transactions to the
  :class:`ChipModel` attached at each address. An address with no model NACKs like real hardware
  (``OSError(ENXIO)``). Faults can be injected per address: NACK, I/O error after N reads.
- :class:`ChipModel`: a 256-register file with a register pointer. A model MUST set its reset
  values in ``reset()`` and MAY override ``before_read(register, length)`` (refresh data
  registers) and ``after_write(register, value)`` (react to control registers). ``stuck = True``
  freezes the data (the model stops refreshing), as a hung sensor does.

Example
    bus = EmulatedBus(1)
    bme = BME280Model()
    bus.attach(0x76, bme)
    bme.set(temperature=21.5, pressure=101325.0, humidity=40.0)
    bus.fault(0x76, io_error_after=10)
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers.i2c.bus import Bus


class ChipModel:
    """Base class of emulated chips: a register file, a pointer, and hooks."""

    name = "chip"

    def __init__(self) -> None:
        self.regs = bytearray(256)
        self.pointer = 0
        self.stuck = False
        self.reset()

    def reset(self) -> None:
        """Put power-on values into ``regs``."""

    def before_read(self, register: int, length: int) -> None:
        """Called before ``length`` bytes are read from ``register`` (refresh data here)."""

    def after_write(self, register: int, value: int) -> None:
        """Called after ``value`` was written to ``register``."""

    def read(self, register: int, length: int) -> bytes:
        self.before_read(register, length)
        out = bytes(self.regs[(register + i) & 0xFF] for i in range(length))
        self.pointer = (register + length) & 0xFF
        return out

    def write(self, register: int, data: Sequence[int]) -> None:
        for i, value in enumerate(data):
            reg = (register + i) & 0xFF
            if self.writable(reg):
                self.regs[reg] = value & 0xFF
            self.after_write(reg, value & 0xFF)
        self.pointer = (register + len(data)) & 0xFF

    def writable(self, register: int) -> bool:
        """Whether a write to ``register`` changes it (read-only registers return False)."""
        return True


@dataclass
class Fault:
    """Faults on one address: ``nack`` refuses every transaction; ``io_error_after`` lets that
    many reads succeed, then every read raises EIO."""

    nack: bool = False
    io_error_after: int | None = None
    reads: int = 0


def _oserror(code: int, address: int) -> OSError:
    return OSError(code, f"{os.strerror(code)} (address 0x{address:02x})")


class EmulatedBus(Bus):
    """A bus populated with :class:`ChipModel` objects. ``transaction_s`` adds simulated bus time."""

    def __init__(self, number: int = 1, *, transaction_s: float = 0.0) -> None:
        self.number = number
        self.transaction_s = transaction_s
        self.models: dict[int, ChipModel] = {}
        self.faults: dict[int, Fault] = {}
        self.reads = 0
        self.writes = 0

    def attach(self, address: int, model: ChipModel) -> ChipModel:
        if address in self.models:
            raise ValueError(f"address 0x{address:02x} already has a {self.models[address].name}")
        self.models[address] = model
        return model

    def detach(self, address: int) -> None:
        """Remove the chip (unplugged): the address NACKs from now on."""
        self.models.pop(address, None)

    def fault(self, address: int, *, nack: bool = False, io_error_after: int | None = None) -> Fault:
        f = Fault(nack=nack, io_error_after=io_error_after)
        self.faults[address] = f
        return f

    def clear_fault(self, address: int) -> None:
        self.faults.pop(address, None)

    def _model(self, address: int, reading: bool) -> ChipModel:
        f = self.faults.get(address)
        if f is not None:
            if f.nack:
                raise _oserror(errno.EREMOTEIO, address)
            if reading and f.io_error_after is not None:
                if f.reads >= f.io_error_after:
                    raise _oserror(errno.EIO, address)
                f.reads += 1
        model = self.models.get(address)
        if model is None:
            raise _oserror(errno.ENXIO, address)
        return model

    async def _tick(self) -> None:
        if self.transaction_s > 0:
            await asyncio.sleep(self.transaction_s)

    async def read_byte(self, address: int) -> int:
        await self._tick()
        model = self._model(address, True)
        self.reads += 1
        return model.read(model.pointer, 1)[0]

    async def read_byte_data(self, address: int, register: int) -> int:
        await self._tick()
        model = self._model(address, True)
        self.reads += 1
        return model.read(register, 1)[0]

    async def read_block(self, address: int, register: int, length: int) -> bytes:
        await self._tick()
        model = self._model(address, True)
        self.reads += 1
        return model.read(register, length)

    async def write_byte_data(self, address: int, register: int, value: int) -> None:
        await self._tick()
        self._model(address, False).write(register, [value])
        self.writes += 1

    async def write_block(self, address: int, register: int, data: Sequence[int]) -> None:
        await self._tick()
        self._model(address, False).write(register, data)
        self.writes += 1


def ensure_model(bus: Bus, address: int, make: Callable[[], ChipModel]) -> None:
    """For ``backend = "emulated"`` configs: put a default chip model at ``address`` if it is free."""
    if isinstance(bus, EmulatedBus) and address not in bus.models:
        bus.attach(address, make())
