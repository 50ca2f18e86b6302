"""The ECS world: entities, typed components and the systems that run over them.

Key components
- :mod:`edge.world.schema`: component schemas (typed, checked records) and the built-in set.
- :mod:`edge.world.store`: the in-memory columnar store (one float64 column per numeric field).
- :mod:`edge.world.persist`: write-behind persistence of the store to a JetStream KV bucket.
- :mod:`edge.world.scheduler`: tick loops that run systems over query batches.
"""
