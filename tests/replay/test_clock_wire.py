"""The clock section of a worker's call result (edge.wasm.wire): what a recording or replaying
worker reports about a call's clock reads, and every such section the decoder refuses."""

from __future__ import annotations

import struct

import pytest

from edge.wasm.protocol import CLOCK_MS, CLOCK_NS, CLOCK_REPORT_MAX, CallResult
from edge.wasm.wire import ProtocolError, decode_result, encode_result


def body(frame: bytes) -> memoryview:
    (size,) = struct.unpack_from("<I", frame)
    assert size == len(frame) - 4
    return memoryview(frame)[4:]


def test_clock_reads_round_trip_and_make_a_result_carry_them() -> None:
    res = CallResult(clocks=[(CLOCK_MS, 1_764_640_000_123), (CLOCK_NS, -5), (CLOCK_MS, 0)],
                     clocks_cut=2)
    assert res.has_effects()  # a tick that read the clock travels as a C frame
    status, got = decode_result(body(encode_result("ok", res)))
    assert status == "ok" and got == res
    res.reset()
    assert not res.clocks and not res.clocks_cut and not res.has_effects()


def test_a_result_without_clock_reads_has_no_clock_section() -> None:
    plain = encode_result("ok", CallResult(gas_used=3))
    clocked = encode_result("ok", CallResult(gas_used=3, clocks=[(CLOCK_MS, 1)]))
    assert len(clocked) - len(plain) == 8 + 9  # the section head and one read
    assert decode_result(body(plain))[1].clocks == []


def _section(n: int, cut: int, items: bytes) -> bytes:
    frame = encode_result("ok", CallResult())
    return frame[4:] + struct.pack("<II", n, cut) + items


@pytest.mark.parametrize("extra, why", [
    (_section(CLOCK_REPORT_MAX + 1, 0, b""), "at most"),
    (_section(2, 0, struct.pack("<Bq", 0, 1)), "need 18 bytes"),
    (_section(1, 0, struct.pack("<Bq", 0, 1) + b"x"), "need 9 bytes"),
    (_section(1, 0, struct.pack("<Bq", 7, 1)), "unknown clock kind 7"),
])
def test_malformed_clock_sections_are_refused(extra: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_result(memoryview(extra))
