"""The device API: entities, components and status as a NATS micro service (``edge-device``)."""
