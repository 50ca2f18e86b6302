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

import nats.errors
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


#: Longest error message (and ``Nats-Service-Error`` header) a reply carries, in characters; a
#: longer one, e.g. echoing a huge id, is cut and ends with an ellipsis.
MAX_MESSAGE_CHARS = 512
#: Longest string field of an error reply, in characters (cut the same way).
MAX_FIELD_CHARS = 256


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def ok_body(result: Any) -> bytes:
    return json.dumps({"ok": True, "result": result}, default=str).encode()


def error_body(err: EdgeError) -> bytes:
    """The error envelope; the message and every string field are clipped (above), so a refusal
    of a request just under the server's ``max_payload`` still fits in a reply."""
    out = {k: _clip(v, MAX_FIELD_CHARS) if isinstance(v, str) else v for k, v in err.to_dict().items()}
    out["message"] = _clip(err.message, MAX_MESSAGE_CHARS)
    return json.dumps({"ok": False, "error": out}, default=str).encode()


async def respond_ok(req: Request, result: Any) -> None:
    """Answer ``result``; one over the server's ``max_payload`` is answered as a 500 saying so."""
    body = ok_body(result)
    try:
        await req.respond(body)
    except nats.errors.MaxPayloadError:
        await respond_error(req, EdgeError(
            f"the reply of {len(body)} bytes is over the server's max_payload: ask for less"), "500")


async def respond_error(req: Request, err: EdgeError, code: str | None = None) -> None:
    await req.respond_error(code or code_of(err), _clip(err.message, MAX_MESSAGE_CHARS), data=error_body(err))


def loads(data: bytes | str) -> Any:
    """``json.loads`` for bytes from the network: JSON nested too deeply for the decoder is a
    ``ValueError`` like any other malformed JSON, never a ``RecursionError`` escaping a handler."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def decode_body(data: bytes) -> dict[str, Any]:
    """A request body: empty means ``{}``; anything but a JSON object is a RequestError."""
    if not data:
        return {}
    try:
        body = loads(data)
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
