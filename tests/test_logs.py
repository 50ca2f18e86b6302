"""JSON log lines keep the structure of an EdgeError (class, message, fields)."""

from __future__ import annotations

import json
import logging

from edge.errors import ConfigError, SandboxError
from edge.logs import JsonFormatter


def line(logger: logging.Logger, record: logging.LogRecord) -> dict[str, object]:
    return json.loads(JsonFormatter().format(record))  # type: ignore[no-any-return]


def test_fields_of_a_logged_error_argument_are_kept() -> None:
    log = logging.getLogger("edge.test")
    err = ConfigError("expected an integer, got 'x'", key="nats.port", file="/etc/edge/device.toml")
    rec = log.makeRecord("edge.test", logging.ERROR, __file__, 1, "config refused: %s", (err,), None)
    out = line(log, rec)
    assert out["msg"].startswith("config refused: expected an integer")  # type: ignore[union-attr]
    assert out["error"] == {"error": "ConfigError", "message": err.message, "key": "nats.port",
                            "file": "/etc/edge/device.toml"}


def test_fields_of_a_logged_exception_are_kept() -> None:
    log = logging.getLogger("edge.test")
    try:
        raise SandboxError("component 'x' ran out of gas", component="x", export="edge_tick", reason="out_of_gas")
    except SandboxError as err:
        rec = log.makeRecord("edge.test", logging.WARNING, __file__, 1, "fault", (), (type(err), err, None))
    out = line(log, rec)
    assert out["error"]["component"] == "x" and out["error"]["reason"] == "out_of_gas"  # type: ignore[index]
    assert "exc" in out


def test_a_plain_message_has_no_error_field() -> None:
    log = logging.getLogger("edge.test")
    out = line(log, log.makeRecord("edge.test", logging.INFO, __file__, 1, "%d drivers started", (3,), None))
    assert out["msg"] == "3 drivers started" and "error" not in out
