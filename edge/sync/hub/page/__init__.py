"""The hub's fleet page: devices online/offline, lag, versions, faults and positions, live (docs/sync.md).

:mod:`.collect` reads the hub's JetStream into snapshots; :mod:`.web` serves the page and the
live updates. ``edge cloud run --page 127.0.0.1:8080`` runs it next to the development hub.
"""
