"""Errors of the tools service; each carries the status code sent in the service headers."""

from __future__ import annotations

from typing import Any, ClassVar

from edge.nats.service import ServiceError

class ToolError(ServiceError):
    """A tool call was refused; ``code`` is the HTTP-like status sent in the service headers."""

    code: ClassVar[str] = "400"

    def __init__(self, message: str, *, tool: str | None = None, **fields: Any) -> None:
        super().__init__(message, tool=tool, **fields)
        self.tool = tool


class ToolDenied(ToolError):
    code: ClassVar[str] = "403"


class ToolNotFound(ToolError):
    code: ClassVar[str] = "404"


class ToolUnavailable(ToolError):
    code: ClassVar[str] = "503"


class ToolTimeout(ToolError):
    code: ClassVar[str] = "504"
