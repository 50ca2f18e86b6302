"""The I2C bus seam: what a chip driver needs from a bus, and the real (smbus2) backend.

Key components
- :class:`Bus`: the async interface chip drivers use. A backend MUST implement ``read_byte``,
  ``read_byte_data``, ``read_block``, ``write_byte_data``, ``write_block`` and ``close``; errors
  are ``OSError`` like the kernel's (ENXIO/EREMOTEIO for a NACK, EIO for a bus error).
- :class:`SMBusBus`: Linux ``/dev/i2c-N`` through smbus2. Opened lazily on first use; every
  blocking call runs in the bus's own single worker thread, so transactions never interleave.
- :class:`drivers.i2c.emulated.EmulatedBus`: the emulated peer (chip models answering registers).
- :func:`shared_bus`: one Bus object per (backend, number) in the process, shared by drivers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("edge.drivers.i2c")

I2C_MIN_ADDRESS = 0x03
I2C_MAX_ADDRESS = 0x77
SMBUS_BLOCK_MAX = 32  # bytes per SMBus i2c block transfer


class Bus(ABC):
    """An I2C bus. All methods are coroutines; a NACK raises ``OSError``."""

    number: int

    @property
    def name(self) -> str:
        return f"i2c-{self.number}"

    @abstractmethod
    async def read_byte(self, address: int) -> int:
        """Receive one byte without a register (used by scans to probe for an ACK)."""

    @abstractmethod
    async def read_byte_data(self, address: int, register: int) -> int: ...

    @abstractmethod
    async def read_block(self, address: int, register: int, length: int) -> bytes:
        """Write ``register`` then read ``length`` bytes (auto-incrementing on most chips)."""

    @abstractmethod
    async def write_byte_data(self, address: int, register: int, value: int) -> None: ...

    @abstractmethod
    async def write_block(self, address: int, register: int, data: Sequence[int]) -> None: ...

    async def close(self) -> None:
        """Release the bus. A closed bus reopens on next use."""


class SMBusBus(Bus):
    """``/dev/i2c-<number>`` via smbus2, opened lazily; blocking calls run in one worker thread."""

    def __init__(self, number: int) -> None:
        self.number = number
        self._bus: Any = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _ensure_open(self) -> Any:
        if self._bus is None:
            import smbus2  # lazy: only on devices with real I2C

            self._bus = smbus2.SMBus(self.number)  # FileNotFoundError if /dev/i2c-N is absent
            log.info("opened /dev/i2c-%d", self.number)
        return self._bus

    async def _call(self, method: str, *args: Any) -> Any:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)

        def run() -> Any:
            return getattr(self._ensure_open(), method)(*args)

        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    async def read_byte(self, address: int) -> int:
        return int(await self._call("read_byte", address))

    async def read_byte_data(self, address: int, register: int) -> int:
        return int(await self._call("read_byte_data", address, register))

    async def read_block(self, address: int, register: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            n = min(length, SMBUS_BLOCK_MAX)
            out += bytes(await self._call("read_i2c_block_data", address, register, n))
            register, length = register + n, length - n
        return bytes(out)

    async def write_byte_data(self, address: int, register: int, value: int) -> None:
        await self._call("write_byte_data", address, register, value)

    async def write_block(self, address: int, register: int, data: Sequence[int]) -> None:
        await self._call("write_i2c_block_data", address, register, list(data))

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        pool, self._pool = self._pool, None
        if pool is not None:
            if bus is not None:
                await asyncio.get_running_loop().run_in_executor(pool, bus.close)
            pool.shutdown(wait=False)


_SHARED: dict[tuple[str, int], Bus] = {}


def shared_bus(number: int, backend: str) -> Bus:
    """The process's bus object for ``(backend, number)``: drivers on one bus share it."""
    key = (backend, number)
    bus = _SHARED.get(key)
    if bus is None:
        if backend == "emulated":
            from drivers.i2c.emulated import EmulatedBus

            bus = EmulatedBus(number)
        else:
            bus = SMBusBus(number)
        _SHARED[key] = bus
    return bus


def forget_shared_buses() -> None:
    """Drop the shared bus objects (tests, reloading config)."""
    _SHARED.clear()
