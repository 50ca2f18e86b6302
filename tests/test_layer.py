"""The layer contract: start in order, stop in reverse with a timeout each, every error collected,
a failed start unwinds what started, misuse refused with a sentence."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from edge.errors import LifecycleError
from edge.layer import DeviceContext, Layer, LayerStack

CTX = cast(DeviceContext, object())  # LayerStack hands the context through without reading it


class Probe:
    def __init__(self, name: str, log: list[str], *, fail_start: bool = False, fail_stop: bool = False,
                 hang_stop: bool = False, bad_status: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail_start, self.fail_stop, self.hang_stop, self.bad_status = fail_start, fail_stop, hang_stop, bad_status

    async def start(self, ctx: DeviceContext) -> None:
        assert ctx is CTX
        self.log.append(f"start {self.name}")
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.hang_stop:
            await asyncio.sleep(3600)
        if self.fail_stop:
            raise RuntimeError(f"{self.name} broke while stopping")

    def status(self) -> Any:
        if self.bad_status:
            raise ValueError("no status")
        return {"ok": self.name}


def test_probe_is_a_layer() -> None:
    assert isinstance(Probe("a", []), Layer)


async def test_start_in_order_stop_in_reverse_errors_collected() -> None:
    log: list[str] = []
    stack = LayerStack([Probe("a", log), Probe("b", log, fail_stop=True), Probe("c", log, hang_stop=True),
                        Probe("d", log, bad_status=True)], stop_timeout=0.1)
    await stack.start(CTX)
    status = stack.status()
    assert status["a"] == {"ok": "a"} and "no status" in status["d"]["error"]
    errors = await stack.stop()
    assert log == ["start a", "start b", "start c", "start d", "stop d", "stop c", "stop b", "stop a"]
    assert errors == ["c: did not stop within 0.1 s", "b: RuntimeError: b broke while stopping"]
    assert await stack.stop() == []  # stopping twice is harmless


async def test_failed_start_unwinds_the_started_layers() -> None:
    log: list[str] = []
    stack = LayerStack([Probe("a", log), Probe("b", log, fail_start=True), Probe("c", log)])
    with pytest.raises(RuntimeError, match="b cannot start"):
        await stack.start(CTX)
    assert log == ["start a", "start b", "stop b", "stop a"]  # c never started, b got its stop


async def test_misuse_is_refused_with_a_sentence() -> None:
    with pytest.raises(LifecycleError, match="two layers are named 'a'"):
        LayerStack([Probe("a", []), Probe("a", [])])
    stack = LayerStack([Probe("a", [])])
    await stack.start(CTX)
    with pytest.raises(LifecycleError, match="already started"):
        await stack.start(CTX)
    await stack.stop()


class Stubborn(Probe):
    """A layer whose stop swallows its cancellation (as nats-py can inside a publish waiting for
    buffer space) and keeps going."""

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        for _ in range(30):
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                pass


async def test_a_layer_that_swallows_its_cancellation_is_left_behind_not_waited_for() -> None:
    """asyncio.wait_for waited for it until it ended by itself (3 s here; in a service, past
    its TimeoutStopSec); the stack moves on after the timeout and the cancellation's grace."""
    log: list[str] = []
    stack = LayerStack([Probe("a", log), Stubborn("s", log)], stop_timeout=0.2)
    await stack.start(CTX)
    t0 = asyncio.get_running_loop().time()
    errors = await stack.stop()
    assert asyncio.get_running_loop().time() - t0 < 3.0
    assert errors == ["s: did not stop within 0.2 s"] and log[-2:] == ["stop s", "stop a"]
