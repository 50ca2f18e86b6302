"""The worker's request loop (edge.wasm.worker.dispatch), in this process."""

from __future__ import annotations

from edge.wasm.protocol import KIND_REPLY, REPLY_FRAME, STATUS_GONE
from edge.wasm.wire import decode_answer, decode_ping, decode_result
from edge.wasm.worker import Worker


def test_compact_reply_for_an_unknown_handle() -> None:
    reply = bytes(Worker().tick(0, 12345, 0, 0.0))
    size, kind, status, *_ = REPLY_FRAME.unpack(reply)
    assert (size, kind, status) == (REPLY_FRAME.size - 4, KIND_REPLY, STATUS_GONE)


def test_every_reply_decodes_with_the_runtime_decoder() -> None:
    w = Worker()
    status, res = decode_result(memoryview(w.handle(("setup", "ghost", None, None)))[4:])
    assert status == "gone"
    assert decode_result(memoryview(w.handle(("nop",)))[4:])[0] == "ok"
    status, info = decode_ping(memoryview(w.handle(("ping",)))[4:])
    assert status == "ok" and info["instances"] == 0 and info["pid"] > 0
    reply = bytes(w.tick(0, 12345, 0, 0.0))
    assert decode_answer(reply[4], memoryview(reply)[4:])[0] == "gone"
