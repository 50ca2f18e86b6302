"""The safety envelope between every command source and the vehicle (docs/safety.md)."""
