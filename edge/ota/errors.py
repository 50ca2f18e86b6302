"""The errors of the update path, each with the artifact and a short machine-readable reason."""

from __future__ import annotations

from edge.errors import EdgeError


class OtaError(EdgeError):
    """An update was refused or failed; nothing on the device changed because of it.

    ``reason`` is one of: ``tampered`` (hash or length mismatch), ``signature`` (unknown key or
    fewer signatures than the threshold), ``expired``, ``rollback`` (a version older than the
    trusted one), ``too_large`` (over its declared length), ``download`` (fetch failed or was
    cut; retried), ``missing`` (no such artifact), ``contract`` (the device lacks the host
    contract), ``invalid`` (a malformed bundle), ``probation`` (failed on probation).
    """

    def __init__(self, message: str, *, artifact: str | None = None, reason: str = "invalid") -> None:
        super().__init__(message, artifact=artifact, reason=reason)
        self.artifact = artifact
        self.reason = reason
