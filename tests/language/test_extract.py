"""What each kind of device message says (the indexer's text), and malformed messages."""

from __future__ import annotations

import json

import pytest

from edge.language.extract import Malformed, extract


def _x(subject: str, body: object, **kw: object) -> object:
    return extract(subject, json.dumps(body).encode(), t=5.0, stream="EVT", seq=9, **kw)  # type: ignore[arg-type]


def test_kinds_become_readable_lines() -> None:
    st = _x("edge.d.evt.drone-0.statustext", {"severity": 4, "text": "EKF variance"})
    assert (st.kind, st.entity, st.text, st.meta, st.seq, st.t) == (  # type: ignore[union-attr]
        "statustext", "drone-0", "EKF variance", {"severity": 4}, 9, 5.0)
    dec = _x("edge.d.evt.drone-0.decision", {"t": 7.0, "agent": "follow-drone-0", "decision": "hold",
                                             "reason": "target lost", "inputs": {"cites": [{"seq": 3}]},
                                             "command": {"verb": "hold", "entity": "drone-0",
                                                         "answer": {"ok": False, "reason": "driver-down",
                                                                    "error": "fc is down"}}})
    assert dec.text == ("follow-drone-0 decided hold: target lost (command hold to drone-0: "  # type: ignore[union-attr]
                        "refused (driver-down): fc is down)")
    assert dec.meta["cites"] == [{"seq": 3}] and dec.t == 7.0  # type: ignore[union-attr]
    ack = _x("edge.d.ack.drone-0.rtl", {"ok": True, "id": "x"})
    assert (ack.kind, ack.text) == ("command", "command rtl to drone-0: ok")  # type: ignore[union-attr]
    cloud = _x("edge.d.ack.c42", {"ok": False, "error": "expired", "reason": "expired"})
    assert (cloud.kind, cloud.entity, cloud.text) == (  # type: ignore[union-attr]
        "command", "cloud", "cloud command c42: refused (expired): expired")
    log = _x("edge.d.evt.runtime.log", {"level": "warning", "logger": "edge.hw", "msg": "bus error"})
    assert log.text == "WARNING edge.hw: bus error"  # type: ignore[union-attr]
    tool = _x("edge.d.evt.drone-1.tool_call", {"tool": "send_command", "caller": "planner", "args": {"verb": "rtl"}})
    assert tool.text == 'tool send_command called by planner: {"verb": "rtl"}'  # type: ignore[union-attr]
    fault = _x("edge.d.evt.runtime.fault", {"component": "patrol", "error": "trap", "message": "unreachable"})
    assert fault.text == "component patrol fault (trap): unreachable"  # type: ignore[union-attr]
    other = _x("edge.d.evt.battery.low", {"entity": "drone-3", "level": 0.1})
    assert other.text == "low: entity=drone-3, level=0.1"  # type: ignore[union-attr]


def test_skipped_kinds_and_empty_lines_are_not_entries() -> None:
    assert _x("edge.d.evt.drone-0.detection", {"items": []}, skip_kinds=("detection",)) is None
    assert _x("edge.d.evt.drone-0.statustext", {"text": "  "}) is None


@pytest.mark.parametrize("subject, data", [
    ("edge.d.evt.drone-0.statustext", b"not json"),
    ("edge.d.evt.drone-0.statustext", b"[1, 2]"),
    ("edge.d.tele.drone-0.imu", b"{}"),
    ("edge.d.evt.x", b"{}"),
    ("edge.d.evt.drone-0.decision", b"[" * 100_000 + b"]" * 100_000),  # too deep: once, a poison message
])
def test_malformed_messages_raise_malformed(subject: str, data: bytes) -> None:
    with pytest.raises(Malformed):
        extract(subject, data, t=0.0, stream="EVT", seq=1)


def test_a_components_free_form_event_is_text_or_skipped_never_malformed() -> None:
    text = extract("edge.d.evt.drone-0.lap", b"lap 3 done\n  in 41 s", t=5.0, stream="EVT", seq=9)
    assert text is not None and (text.kind, text.entity, text.text, text.seq) == (
        "lap", "drone-0", "lap: lap 3 done in 41 s", 9)
    listed = extract("edge.d.evt.drone-0.lap", b"[1, 2]", t=5.0, stream="EVT", seq=9)
    assert listed is not None and listed.text == "lap: [1, 2]"
    assert extract("edge.d.evt.drone-0.lap", b"\x00\x01\xff", t=0.0, stream="EVT", seq=1) is None
    assert extract("edge.d.evt.drone-0.lap", b"ok\x00", t=0.0, stream="EVT", seq=1) is None
    with pytest.raises(Malformed):  # a kind the runtime writes must be a JSON object
        extract("edge.d.evt.runtime.fault", b"trap", t=0.0, stream="EVT", seq=1)
    with pytest.raises(Malformed):
        extract("edge.d.ack.drone-0.rtl", b"ok", t=0.0, stream="EVT", seq=1)
