"""edge: a lean ECS runtime for single-board computers.

Key components (one folder per concern; every layer implements :class:`edge.layer.Layer`)
- ``edge.layer``: the layer contract, the device context, the layer stack.
- ``edge.runtime``: the composition root that builds a running device from its config.
- ``edge.config``: the device config, one table reader, typed sections.
- ``edge.nats``: the embedded nats-server, subjects and ids, the service envelope, commands, the event publisher.
- ``edge.world``: entities, typed components (columnar, persisted to JetStream KV) and the system scheduler.
- ``edge.wasm``: WebAssembly systems on wasm3, run in sandbox worker processes under a metered host ABI.
- ``edge.hardware``, ``edge.inference``, ``edge.agents``, ``edge.api``, ``edge.sync``: the layers.
- ``edge.demo``: the embedded demo. ``edge.cli``: the ``edge`` command.
"""

__version__ = "0.1.0"
