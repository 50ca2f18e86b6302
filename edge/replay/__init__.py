"""Replay: record what systems saw and did, and re-run them over a recorded window.

Key components
- :mod:`edge.replay.records`: the record format on the ``REC`` stream (one JSON object a message).
- :mod:`edge.replay.recorder`: :class:`RecorderLayer`, the device layer that writes them.
- :mod:`edge.replay.source`: reads a window of records from a device's stream or a hub's copy.
- :mod:`edge.replay.replayer`: re-runs the recorded versions (or a what-if candidate) in an
  isolated sandbox and compares every output with the record.

See docs/replay.md.
"""
