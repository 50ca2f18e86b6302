"""Errors of the language system, rooted in :class:`edge.errors.EdgeError`."""

from __future__ import annotations

from typing import Any, ClassVar

from edge.nats.service import ServiceError


class LanguageError(ServiceError):
    """A language request was refused (bad query, bad note) or the index could not be used.

    ``code`` is the status the device API and the tools service send (400 by default).
    """

    code: ClassVar[str] = "400"

    def __init__(self, message: str, *, reason: str | None = None, **fields: Any) -> None:
        super().__init__(message, reason=reason, **fields)
        self.reason = reason


class LanguageUnavailable(LanguageError):
    """The index is not serving (the layer is off, not started yet, or stopped)."""

    code: ClassVar[str] = "503"


class EmbedderError(LanguageError):
    """The embedding model could not be loaded (missing file, wrong digest, bad ONNX graph)."""
