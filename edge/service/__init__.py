"""The system service: its one description (``service.toml``), the unit rendered from it, and the
systemd notify protocol spoken by ``edge run`` (ready, watchdog, stopping)."""
