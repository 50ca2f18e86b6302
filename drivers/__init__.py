"""edge hardware drivers: readings into entity components and subjects, commands into actuators.

Key components
- ``drivers.base``: the runtime contract (``DriverContext``, ``Driver``, ``DriverHealth``).
- ``drivers.config.build_driver``: a driver from a ``[[drivers]]`` config table.
- ``drivers.supervisor.DriverSupervisor``: runs drivers, restarts failing ones with backoff.
- Families: ``drivers.i2c``, ``drivers.gpio``, ``drivers.serial``, ``drivers.camera``; each has a
  real backend and an emulated peer. The demo's emulated drone is built in ``edge.demo.hardware``.
- ``drivers.testing.RecordingContext``: an in-memory context for tests and tools.

See docs/drivers/README.md.
"""
