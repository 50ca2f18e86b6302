"""Re-attach a hub source that waits for a device that is already back.

When a hub source (re)attaches to a device's durable sourcing consumer it sends
``CONSUMER.RESET`` and waits for the answer. If the device's leaf link is not up at that moment
(a hub that just restarted asks 100-200 ms after restoring its streams; the device's leaf may
link a moment later), the request is lost, nats-server 2.15 waits 5 s for it and then backs off
for another 2 s or more before it asks again: data stops for 5-7 s although the device is
reachable after a fraction of a second.

:func:`reattach_stalled` sees that from the outside, with NATS's own information: the hub
stream's source reports no activity for ``stall_s`` seconds (an attached source hears at least
the consumer's idle heartbeat every second), while the device answers its JetStream API over the
leaf (so an attach would succeed now). It then updates the hub stream without the source and
with it again (two ``STREAM.UPDATE`` calls): the server drops the waiting attach and sets the
source up anew at once, at the position the hub stored (it scans its own messages' source
headers), not at the device consumer's. :class:`SourceWatch` does this for every provisioned
device every ``interval_s`` (``edge cloud run`` runs one).
"""

from __future__ import annotations

import copy
import logging
import time

from nats.js import JetStreamContext

from edge.nats import subjects as naming
from edge.sync.hub.periodic import Periodic
from edge.sync.hub.audit import device_js_request

log = logging.getLogger("edge.sync.hub.reattach")

DEFAULT_STALL_S = 1.5  # an attached source hears the consumer's heartbeat every second
DEFAULT_INTERVAL_S = 0.25
MIN_GAP_S = 1.0  # at most one re-attach per stream in this many seconds (an attach may miss again)
SOURCED = (naming.TELE_STREAM, naming.EVT_STREAM)


async def reattach_stalled(js: JetStreamContext, device: str, *, stall_s: float = DEFAULT_STALL_S,
                           last: dict[str, float] | None = None) -> list[str]:
    """Re-attach the device's hub sources that are stalled while the device is reachable; the
    names of the hub streams re-attached. ``last`` (stream -> monotonic time) rate-limits."""
    d = naming.check_device_id(device)
    stalled = []
    for stream in SOURCED:
        info = await js.stream_info(naming.hub_stream(stream, d))
        for src in info.sources or []:
            active_s = None if src.active is None or src.active < 0 else src.active / 1e9
            if active_s is None or active_s > stall_s:
                stalled.append((stream, info))
                break
    if not stalled:
        return []
    # the device must answer now, over the leaf, or an attach would only wait again
    if await device_js_request(js._nc, d, f"STREAM.INFO.{naming.EVT_STREAM}", timeout=0.5) is None:
        return []
    done = []
    now = time.monotonic()
    for stream, info in stalled:
        name = naming.hub_stream(stream, d)
        if last is not None and now - last.get(name, -MIN_GAP_S) < MIN_GAP_S:
            continue
        cfg = info.config
        without = copy.deepcopy(cfg)
        without.sources = []
        await js.update_stream(without)
        await js.update_stream(cfg)
        if last is not None:
            last[name] = now
        done.append(name)
        log.info("re-attached the stalled source of %s (device %s answers)", name, d)
    return done


class SourceWatch(Periodic):
    """Runs :func:`reattach_stalled` for every provisioned device every ``interval_s``."""

    name = "edge-hub-source-watch"

    def __init__(self, js: JetStreamContext, *, interval_s: float = DEFAULT_INTERVAL_S,
                 stall_s: float = DEFAULT_STALL_S) -> None:
        super().__init__(interval_s)
        self.js = js
        self.stall_s = stall_s
        self.reattached = 0
        self._last: dict[str, float] = {}

    async def run_once(self) -> list[str]:
        from edge.sync.hub.fleet import list_devices

        out: list[str] = []
        for d in await list_devices(self.js):
            try:
                out += await reattach_stalled(self.js, d, stall_s=self.stall_s, last=self._last)
            except Exception as err:  # one device's trouble never stops the others
                self.errors += 1
                log.debug("source watch of device %s: %r", d, err)
        self.reattached += len(out)
        return out
