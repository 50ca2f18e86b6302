"""``edge-tools``: the device's capabilities as tools for external (LLM) agents, over NATS."""
