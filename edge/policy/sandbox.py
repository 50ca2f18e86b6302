"""The policy point as the sandbox's :class:`~edge.wasm.host.MessagePolicy`.

A component's publishes, KV puts and the messages delivered into it reach this adapter after the
sandbox's own checks (the manifest's grants, hop limit, publish rate, KV quota), so each is
``granted``: with no rule deciding, it is allowed as before; a ``deny`` rule, an ``allow`` rule
or a limit decides otherwise. Resources: the subject (publish, deliver) and the key (kv).
"""

from __future__ import annotations

from edge.policy.model import Action
from edge.policy.point import PolicyPoint

_PUBLISH = Action.PUBLISH.value
_DELIVER = Action.DELIVER.value
_KV = Action.KV.value


class SandboxPolicy:
    """Adapts :class:`PolicyPoint` to the sandbox (one decision per message)."""

    def __init__(self, point: PolicyPoint) -> None:
        self.point = point

    def on_call(self, component: str, gas: int) -> None:
        self.point.meter.of("component", component).gas += gas

    def _filter(self, component: str, action: str,
                items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        return self.point.check_batch("component", component, action, items, granted=True)

    def publishes(self, component: str, items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        return self._filter(component, _PUBLISH, items)

    def kv_puts(self, component: str, items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        return self._filter(component, _KV, items)

    def deliveries(self, component: str, items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        return self._filter(component, _DELIVER, items)
