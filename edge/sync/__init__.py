"""Edge-to-cloud sync through a NATS leaf node (see docs/sync.md).

Modules: ``naming`` (subjects, streams, domains), ``streams`` (device streams, drop counting),
``durable`` (durable sourcing consumers), ``publisher`` (message ids, batched acks, downsampling),
``commands`` (cloud commands on the device), ``leaf`` (device server options), ``hub`` (per-device
credentials and permissions, embedded hub), ``cloud`` (provisioning, commands, fleet status),
``testing`` (hub + devices + cuttable link for tests and benchmarks).
"""
