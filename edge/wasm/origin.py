"""Where a message a component published came from, carried in two NATS headers.

The host (:class:`~edge.wasm.layer.SandboxLayer`) sends every publish and KV write of a
component with:

* ``Edge-Component``: the publishing component and its device, ``<component>@<device>``
  (:func:`origin_id`; the same component on another device of the fleet is another origin). A
  component never receives a message it published itself unless its manifest sets
  ``run.receive_own = true``: its inbox drops them (counted as ``own``), so a component
  subscribed to ``>`` cannot hear its own echo.
* ``Edge-Hops``: the number of component handlers the message has passed through: 1 for a
  publish from a tick or ``edge_init``, and ``h + 1`` for one made while handling messages
  whose largest count was ``h`` (a message without the header counts 0). What a handler
  publishes past the pool's ``max_hops`` is refused (``loop_dropped``): a loop between
  components (A echoes B echoes A) stops after ``max_hops`` messages.

The component cannot set or change headers (``publish`` takes a subject and a payload), so
both are the runtime's word. Anyone else who can publish on the device's NATS can forge them:
the result is a message refused or not delivered, never one more delivered.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Header naming the component that published a message.
ORIGIN_HEADER = "Edge-Component"
#: Header counting the component handlers a message has passed through.
HOPS_HEADER = "Edge-Hops"
#: Longest ``Edge-Hops`` value read (digits); a longer one is malformed.
HOPS_MAX_DIGITS = 6
#: Handlers a message may pass through before what a handler publishes from it is refused.
DEFAULT_MAX_HOPS = 8
#: Upper bound of ``max_hops``.
MAX_HOPS = 64


class MalformedHeader(ValueError):
    """An ``Edge-Hops`` header that is not a small non-negative decimal integer."""


def origin_id(component: str, device: str) -> str:
    """The ``Edge-Component`` value of ``component`` on ``device``."""
    return f"{component}@{device}"


def header_bytes(headers: dict[str, str]) -> int:
    """Bytes ``headers`` take on the wire (``NATS/1.0``, a ``name: value`` line each, the blank
    line): nats-server counts them in ``max_payload`` with the payload."""
    return len(b"NATS/1.0\r\n\r\n") + sum(len(k.encode()) + len(v.encode()) + 4
                                          for k, v in headers.items())


def origin_headers(origin: str, hops: int) -> dict[str, str]:
    """The headers of a message published by ``origin`` (:func:`origin_id`) after ``hops``
    handlers."""
    return {ORIGIN_HEADER: origin, HOPS_HEADER: str(hops)}


def read_origin(headers: Mapping[str, str] | None) -> tuple[str | None, int]:
    """``(origin, hops)`` of a received message: ``(None, 0)`` without the headers.

    Raises :class:`MalformedHeader` for an ``Edge-Hops`` value that is not 1 to 6 decimal
    digits.
    """
    if not headers:
        return None, 0
    raw = headers.get(HOPS_HEADER)
    hops = 0
    if raw is not None:
        if not (0 < len(raw) <= HOPS_MAX_DIGITS and raw.isascii() and raw.isdigit()):
            raise MalformedHeader(f"{HOPS_HEADER} header {raw[:16]!r} is not a hop count")
        hops = int(raw)
    return headers.get(ORIGIN_HEADER), hops
