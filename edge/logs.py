"""Logging setup for the ``edge`` program (the library itself adds no handlers)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from edge.errors import EdgeError


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for devices whose logs are shipped and parsed.

    An :class:`~edge.errors.EdgeError` in the record (the exception being logged, or an argument
    of the message) keeps its structure: ``error`` holds its class, message and fields (component,
    key, file, device, subject, ...), so a log pipeline can filter on them.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        err = _edge_error(record)
        if err is not None:
            out["error"] = err.to_dict()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _edge_error(record: logging.LogRecord) -> EdgeError | None:
    if record.exc_info and isinstance(record.exc_info[1], EdgeError):
        return record.exc_info[1]
    args = record.args if isinstance(record.args, tuple) else (record.args,) if record.args else ()
    return next((a for a in args if isinstance(a, EdgeError)), None)


def configure(level: str = "info", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        fmt.converter = time.localtime
        handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("nats").setLevel(max(logging.WARNING, root.level))
