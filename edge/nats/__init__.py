"""NATS, the device's nervous system: the embedded server and the names and envelopes on the wire.

Key components
- :mod:`edge.nats.server`: finding, configuring, starting and supervising the embedded nats-server.
- :mod:`edge.nats.subjects`: the one ID rule, subject builders, stream names, the wildcard matcher.
- :mod:`edge.nats.service`: the one reply envelope of every micro service (API, tools, agents).
- :mod:`edge.nats.commands`: commands as requests with one answer each (the command client).

Import the submodule you need; nothing here does work at import time.
"""
