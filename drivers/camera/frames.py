"""Frames and the latest-frame-wins slot shared by camera drivers and their local consumers.

Frames never travel through NATS (too big). A camera driver ``put``s each frame into a
:class:`LatestFrame`; consumers (the inference provider) ``await get_newer(seq)`` and always get the
newest frame. A frame that is replaced before anybody took it is counted in ``dropped``; nothing
is ever queued, so a slow consumer cannot make memory grow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera frame: ``image`` is HxWx3 uint8 RGB; ``t`` is ``time.monotonic()`` at capture."""

    seq: int
    t: float
    image: npt.NDArray[np.uint8]
    source: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


class LatestFrame:
    """A one-slot mailbox: ``put`` replaces, ``get_newer`` waits for a frame newer than a sequence."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._taken_seq = -1
        self._cond: asyncio.Condition | None = None
        self.published = 0
        self.dropped = 0

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def latest(self) -> Frame | None:
        return self._frame

    async def put(self, frame: Frame) -> None:
        cond = self._condition()
        async with cond:
            old = self._frame
            if old is not None and old.seq > self._taken_seq:
                self.dropped += 1
            self._frame = frame
            self.published += 1
            cond.notify_all()

    async def get_newer(self, seq: int) -> Frame:
        """Return the newest frame whose ``seq`` is greater than ``seq``, waiting if needed."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self._frame is not None and self._frame.seq > seq)
            frame = self._frame
            assert frame is not None
            self._taken_seq = max(self._taken_seq, frame.seq)
            return frame
