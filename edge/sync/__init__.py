"""Edge-to-cloud sync through a NATS leaf node (see docs/sync.md).

Key components
- :mod:`edge.sync.device`: the device side (streams with drop counting, leaf-link options, cloud
  commands played locally, the uplink layer).
- :mod:`edge.sync.hub`: the hub side (hub server, per-device logins and accounts,
  provisioning, fleet status).
- :mod:`edge.sync.durable`: the durable sourcing consumers both sides use.
"""
