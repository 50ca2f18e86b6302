"""One root for every error the runtime raises on purpose.

Each subsystem subclasses :class:`EdgeError` and carries the fields a user needs (component, key,
file, device, subject). ``str(err)`` is one readable sentence; the fields are there for code and for
``--json`` output.
"""

from __future__ import annotations

from typing import Any


class EdgeError(Exception):
    """Base class. ``message`` is a full sentence; ``fields`` are structured context."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "message": self.message, **self.fields}


class ConfigError(EdgeError):
    """A config file or value is wrong. Always names the key and, when known, the file."""

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None) -> None:
        where = ""
        if key and file:
            where = f" (key '{key}' in {file})"
        elif key:
            where = f" (key '{key}')"
        elif file:
            where = f" (in {file})"
        super().__init__(message + where, key=key, file=file)
        self.key = key
        self.file = file


class SchemaError(EdgeError):
    """A component value does not match its schema."""

    def __init__(self, message: str, *, component: str | None = None, field: str | None = None) -> None:
        super().__init__(message, component=component, field=field)
        self.component = component
        self.field = field


class EntityError(EdgeError):
    """An entity operation failed (unknown id, duplicate id, ...)."""

    def __init__(self, message: str, *, entity: str | None = None) -> None:
        super().__init__(message, entity=entity)
        self.entity = entity


class ComponentLoadError(EdgeError):
    """A WebAssembly component (or its manifest) was refused at load time."""

    def __init__(self, message: str, *, component: str | None = None, path: str | None = None) -> None:
        super().__init__(message, component=component, path=path)
        self.component = component
        self.path = path


class SandboxError(EdgeError):
    """A component failed while running: trap, out of gas, deadline, or its worker died."""

    def __init__(
        self,
        message: str,
        *,
        component: str | None = None,
        export: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, component=component, export=export, reason=reason)
        self.component = component
        self.export = export
        self.reason = reason


class LifecycleError(EdgeError):
    """A lifecycle was misused: used before start, started twice, used after stop."""


class NatsError(EdgeError):
    """The embedded nats-server or the connection to NATS failed."""


class DriverError(EdgeError):
    """A hardware driver failed; carries the device and the cause."""

    def __init__(self, message: str, *, device: str | None = None, cause: str | None = None) -> None:
        super().__init__(message, device=device, cause=cause)
        self.device = device
        self.cause = cause
