"""NATS request/reply services of the device (nats-py ``micro``)."""
