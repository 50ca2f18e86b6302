"""The one reply envelope of the device's micro services (device API, tools, agents).

Every endpoint takes a JSON object and answers exactly once:

* success: ``{"ok": true, "result": ...}``;
* refusal: ``{"ok": false, "error": {"error": "<class>", "message": "...", ...fields}}`` with the
  micro service headers ``Nats-Service-Error`` (the message) and ``Nats-Service-Error-Code``
  (HTTP-like: 400 bad request, 403 denied, 404 unknown, 500 internal, 503 unavailable, 504 timeout).

:func:`endpoint` wraps a handler ``async (body) -> result`` into a nats-py micro handler that
decodes the body, maps errors to codes and never lets an exception escape into the service.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from nats.micro.request import Request

from edge.errors import EdgeError

log = logging.getLogger("edge.nats.service")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
CodeFor = Callable[[EdgeError], str]


class ServiceError(EdgeError):
    """A request was refused; ``code`` is the HTTP-like status sent in the service headers."""

    code: ClassVar[str] = "400"


class RequestError(ServiceError):
    """A request is malformed (not JSON, not an object, a field missing or of the wrong type)."""


def code_of(err: EdgeError) -> str:
    """The default status of an error: its own ``code`` if it is a ServiceError, else 400."""
    return err.code if isinstance(err, ServiceError) else "400"


def ok_body(result: Any) -> bytes:
    return json.dumps({"ok": True, "result": result}, default=str).encode()


def error_body(err: EdgeError) -> bytes:
    return json.dumps({"ok": False, "error": err.to_dict()}, default=str).encode()


async def respond_ok(req: Request, result: Any) -> None:
    await req.respond(ok_body(result))


async def respond_error(req: Request, err: EdgeError, code: str | None = None) -> None:
    await req.respond_error(code or code_of(err), err.message, data=error_body(err))


def decode_body(data: bytes) -> dict[str, Any]:
    """A request body: empty means ``{}``; anything but a JSON object is a RequestError."""
    if not data:
        return {}
    try:
        body = json.loads(data)
    except ValueError as err:
        raise RequestError(f"request body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    return body


def endpoint(handler: Handler, *, name: str, code_for: CodeFor = code_of,
             on_error: Callable[[EdgeError], None] | None = None) -> Callable[[Request], Awaitable[None]]:
    """A micro handler that answers every request exactly once in the envelope above."""

    async def handle(req: Request) -> None:
        try:
            result = await handler(decode_body(req.data))
        except EdgeError as err:
            if on_error is not None:
                on_error(err)
            await respond_error(req, err, code_for(err))
            return
        except Exception as exc:  # noqa: BLE001  never let a handler kill the service
            log.exception("endpoint %s failed", name)
            internal = EdgeError(f"internal error: {type(exc).__name__}: {exc}")
            if on_error is not None:
                on_error(internal)
            await respond_error(req, internal, "500")
            return
        await respond_ok(req, result)

    return handle
