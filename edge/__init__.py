"""edge: a lean ECS runtime for single-board computers.

Key components
- ``edge.world``: entities, typed components (columnar, persisted to JetStream KV) and the system scheduler.
- ``edge.wasm``: WebAssembly systems on wasm3, run in sandbox worker processes under a metered host ABI.
- ``edge.natsd``: the embedded, supervised nats-server and client connection helpers.
- ``edge.runtime``: the composition root that builds a running device from its config.
- ``edge.cli``: the ``edge`` command.
"""

__version__ = "0.1.0"
