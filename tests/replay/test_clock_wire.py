"""The clock section of a worker's call result (edge.wasm.wire): what a recording or replaying
worker reports about a call's clock reads, and every such section the decoder refuses."""

from __future__ import annotations

import struct

import pytest

from edge.wasm.protocol import CLOCK_MS, CLOCK_NS, CLOCK_REPORT_MAX, CallResult
from edge.wasm.wire import (
    EXPECT_TICK,
    KIND_CLOCK_REPLY,
    ProtocolError,
    decode_answer,
    decode_result,
    encode_clock_reply,
    encode_result,
)


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
    (_section(1, 0, struct.pack("<Bq", 7, 1)), "unknown clock kind in \\[7\\]"),
])
def test_malformed_clock_sections_are_refused(extra: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_result(memoryview(extra))


def test_a_tick_whose_only_extra_is_its_clock_reads_travels_compact() -> None:
    res = CallResult(gas_used=9, errors=1, logs_dropped=2, written=5,
                     clocks=[(CLOCK_MS, 1_764_640_000_123), (CLOCK_NS, 77)])
    assert res.has_effects() and not res.has_effects(clocks=False)
    frame = encode_clock_reply(res)
    assert frame[4] == KIND_CLOCK_REPLY and KIND_CLOCK_REPLY in EXPECT_TICK
    assert decode_answer(KIND_CLOCK_REPLY, body(frame)) == ("ok", res)
    res.publishes.append(("a.b", b""))
    assert res.has_effects(clocks=False)  # a publish too: the full C frame


@pytest.mark.parametrize("frame, why", [
    (b"K\x00", "at least"),
    (struct.pack("<BBxxIIQQII", KIND_CLOCK_REPLY, 2, 0, 0, 0, 0, 0, 0), "status code 2"),
    (struct.pack("<BBxxIIQQII", KIND_CLOCK_REPLY, 0, 0, 0, 0, 0, 1, 0), "need 9 bytes"),
    (struct.pack("<BBxxIIQQII", KIND_CLOCK_REPLY, 0, 0, 0, 0, 0, 1, 0)
     + struct.pack("<Bq", 3, 1), "unknown clock kind"),
    (struct.pack("<BBxxIIQQII", KIND_CLOCK_REPLY, 0, 0, 0, 0, 0, CLOCK_REPORT_MAX + 1, 0),
     "at most"),
])
def test_malformed_compact_clock_replies_are_refused(frame: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_answer(KIND_CLOCK_REPLY, memoryview(frame))
