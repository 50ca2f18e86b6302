"""The same engine on the hub: fleet-side decisions.

Key components
- :class:`FleetPolicy`: a policy file compiled for the hub. :meth:`FleetPolicy.command` decides
  whether operator ``op`` may queue a command for a device (principal ``operator:<op>``, action
  ``command``, resource ``<device>.<entity>.<verb>``, the device's labels as context), checked
  before the command is queued; :meth:`FleetPolicy.artifact` whether operator ``op`` may give a
  device an OTA artifact (principal ``operator:<op>``, action ``deploy``, resource
  ``<device>.<kind>.<name>.<version>``, the device's labels as context), checked before the
  desired state is written (``edge ota desire``, each batch of ``edge rollout start``).
  Nothing is granted implicitly on the hub: default deny.
- :meth:`FleetPolicy.require_command` and :meth:`FleetPolicy.require_artifact` raise
  :class:`~edge.policy.model.PolicyDenied` naming the rule and the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from edge.policy.engine import CompiledPolicy
from edge.policy.model import Action, Context, Decision, PolicyDenied
from edge.policy.rules import Policy, load_policy

log = logging.getLogger("edge.policy.hub")

#: What ``{device}`` stands for in a hub policy file (the hub's own JetStream domain).
HUB_NAME = "hub"


class FleetPolicy:
    """Fleet-side decisions with the device engine (see the module docstring)."""

    def __init__(self, policy: Policy, generation: int = 1) -> None:
        self.compiled = CompiledPolicy(policy, generation)

    @classmethod
    def from_file(cls, path: str | Path) -> FleetPolicy:
        return cls(load_policy(path, HUB_NAME))

    def command(self, operator: str, device: str, name: str,
                labels: Mapping[str, str] | None = None) -> Decision:
        """May ``operator`` queue command ``name`` (``<entity>.<verb>``) for ``device``?"""
        ctx = Context(labels=dict(labels or {}))
        return self.compiled.decide("operator", operator, Action.COMMAND, f"{device}.{name}",
                                    False, lambda: ctx)

    def require_command(self, operator: str, device: str, name: str,
                        labels: Mapping[str, str] | None = None) -> Decision:
        return _required(self.command(operator, device, name, labels), operator, "command",
                         f"send '{name[:80]}' to", device, f"{device}.{name}")

    def artifact(self, operator: str, device: str, artifact: str,
                 labels: Mapping[str, str] | None = None) -> Decision:
        """May ``operator`` give ``device`` the OTA ``artifact`` (``<kind>.<name>.<version>``)?"""
        ctx = Context(labels=dict(labels or {}))
        return self.compiled.decide("operator", operator, Action.DEPLOY, f"{device}.{artifact}", False,
                                    lambda: ctx)

    def require_artifact(self, operator: str, device: str, artifact: str,
                         labels: Mapping[str, str] | None = None) -> Decision:
        return _required(self.artifact(operator, device, artifact, labels), operator, "deploy",
                         f"deploy '{artifact[:160]}' to", device, f"{device}.{artifact}")


def _required(d: Decision, operator: str, action: str, what: str, device: str, resource: str) -> Decision:
    """``d`` when it allows; else the denial logged and raised as :class:`PolicyDenied`."""
    if not d.allowed:
        log.warning("operator %s may not %s %s: %s (%s)", operator, what, device, d.reason, d.rule)
        raise PolicyDenied(f"operator '{operator}' may not {what} device '{device[:64]}': {d.reason} "
                           f"(rule '{d.rule}')", principal=f"operator:{operator}", action=action,
                           resource=resource, rule=d.rule, reason=d.reason)
    return d
