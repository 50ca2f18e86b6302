"""Hardware as a runtime layer: the drivers of ``drivers/`` wired to the world and NATS."""
