"""The worker -> runtime frame format (edge.wasm.wire): what a worker can send, and everything
the decoder refuses."""

from __future__ import annotations

import struct

import pytest

from edge.wasm.abi import LOG_MAX_BYTES, PUBLISH_MAX_BYTES
from edge.wasm.protocol import CallResult
from edge.wasm.wire import (
    HOST_REQUEST,
    KIND_HOST_REQUEST,
    KIND_RESULT,
    REPLY,
    RESULT_HEAD,
    ProtocolError,
    decode_answer,
    decode_host_request,
    decode_result,
    encode_host_request,
    encode_ping,
    encode_reply,
    encode_result,
)


def body(frame: bytes) -> memoryview:
    (size,) = struct.unpack_from("<I", frame)
    assert size == len(frame) - 4
    return memoryview(frame)[4:]


def test_a_full_result_round_trips() -> None:
    res = CallResult(gas_used=7, errors=1, logs_dropped=2, messages=3, dropped=1, written=5,
                     publishes=[("a.b", b"\x00\x01"), ("c.d", b"")], kv_puts=[("k", b"v")],
                     logs=[(2, "hé")], denied=["x.y"], denied_models=["m"], denied_extra=4,
                     denied_models_extra=1, kv_refused=6, fault=("out_of_gas", "edge_tick", "[trap] Out of gas"))
    status, got = decode_result(body(encode_result("fault", res)))
    assert status == "fault" and got == res


def test_statuses_texts_pings_and_host_requests() -> None:
    assert decode_result(body(encode_result("refused", text="bad module"))) == ("refused",
                                                                                  "bad module")
    assert decode_answer(0x50, body(encode_ping(12, 3, 4096))) == (
        "ok", {"pid": 12, "instances": 3, "rss_kb": 4096})
    assert decode_answer(0x52, body(encode_reply(1, 0, 0, 0, 0)))[0] == "gone"
    req = decode_host_request(body(encode_host_request(0, 64, b"fc", b"\x01\x02")))
    assert (req.op, req.out_cap, req.model, req.data) == (0, 64, "fc", b"\x01\x02")


def test_an_honest_worker_never_writes_a_refused_frame() -> None:
    """Texts are cut on a character boundary: a log line of 1 KiB of invalid UTF-8 (each byte
    replaced by a 3-byte U+FFFD) still decodes."""
    line = (b"\xff" * LOG_MAX_BYTES).decode("utf-8", "replace")
    res = CallResult(logs=[(1, line)], denied_models=["é" * 64])
    status, got = decode_result(body(encode_result("ok", res)))
    assert status == "ok" and len(got.logs[0][1].encode()) <= LOG_MAX_BYTES


def head(**kw: int) -> bytes:
    fields = dict(kind=KIND_RESULT, status=0, reason=0, export=0, errors=0, logs_dropped=0,
                  messages=0, dropped=0, gas=0, written=0, denied_extra=0, models_extra=0, kv_refused=0,
                  n_pub=0, n_kv=0, n_logs=0, n_denied=0, n_models=0)
    fields.update(kw)
    return RESULT_HEAD.pack(*fields.values())


NO_TEXT = struct.pack("<I", 0)


@pytest.mark.parametrize(("frame_body", "why"), [
    (head(status=9) + NO_TEXT, "unknown status"),
    (head(reason=9, status=2) + NO_TEXT, "unknown fault reason"),
    (head(reason=1) + NO_TEXT, "status ok with fault reason"),
    (head(status=2) + NO_TEXT, "status fault with fault reason 0"),
    (head(n_pub=1) + NO_TEXT, "need"),
    (head(n_pub=2**32 - 1) + NO_TEXT, "need"),
    (head(n_pub=1) + struct.pack("<HI", 3, PUBLISH_MAX_BYTES + 1) + b"a.b" + NO_TEXT,
     "exceeds the limit"),
    (head(n_pub=1) + struct.pack("<HI", 3, 100) + b"a.b" + NO_TEXT, "runs past the end"),
    (head(n_denied=1) + struct.pack("<H", 2) + b"\xff\xfe" + NO_TEXT, "not UTF-8"),
    (head() + NO_TEXT + b"x", "left over"),
    (head()[:10], "frame ends"),
    (head() + struct.pack("<I", 2**31), "exceeds the limit"),
])
def test_results_the_decoder_refuses(frame_body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why) as info:
        decode_result(memoryview(frame_body))
    assert info.value.reason == "protocol"


@pytest.mark.parametrize(("kind", "frame_body", "why"), [
    (0x52, REPLY.pack(0x52, 0, 0, 0, 0, 0) + b"x", "compact reply of"),
    (0x52, REPLY.pack(0x52, 2, 0, 0, 0, 0), "compact reply with status fault"),
    (0x50, b"P" * 3, "ping reply of"),
    (0x5A, b"Z" * 32, "unknown frame kind"),
])
def test_answers_the_decoder_refuses(kind: int, frame_body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_answer(kind, memoryview(frame_body))


@pytest.mark.parametrize(("frame_body", "why"), [
    (HOST_REQUEST.pack(KIND_HOST_REQUEST, 7, 0, 0), "unknown host request operation"),
    (HOST_REQUEST.pack(KIND_HOST_REQUEST, 0, -1, 0), "negative output capacity"),
    (HOST_REQUEST.pack(KIND_HOST_REQUEST, 0, 8, 65) + b"m" * 65, "model name of 65 bytes"),
    (HOST_REQUEST.pack(KIND_HOST_REQUEST, 0, 8, 10) + b"m", "runs past the end"),
])
def test_host_requests_the_decoder_refuses(frame_body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_host_request(memoryview(frame_body))
