"""A fault mix over a hub and a device, with every message counted by sequence on both sides.

:class:`FaultMix` publishes numbered events (``EVT``) and telemetry (``TELE``) on the device at a
steady rate while it applies faults one after the other, then waits until the hub has caught up
and compares, independently of the sourcing bookkeeping:

* the device's stream sequences (``EVT`` never evicts: ``1..last``; ``TELE`` what it still holds)
  with the source sequences in the hub's ``Nats-Stream-Source`` headers: any missing sequence
  (that the device did not evict) is a *gap*, any repeated one a *duplicate*;
* the numbers the publisher got acknowledged with the payloads on the hub (an independent
  counter: every acknowledged number exactly once, in order).

Fault kinds: ``hub_stop`` (clean stop, down for a while), ``hub_kill`` (kill -9), ``device_kill``
(kill -9 of the device's nats-server, supervised restart), ``flap`` (the link cut and restored
several times), ``outage`` (a long cut that overruns the device's ``TELE`` budget),
``node_kill`` (kill -9 of one node of a clustered hub, when the rig has one), ``dangle`` (a link
cut that neither side is told about, for ``dangle_s`` seconds, sometimes with a hub kill -9 in
the middle: needs the namespace rig, :mod:`rigs.netns`).
Used by ``tests/sync/test_fault_mix.py`` (a bounded slice) and ``bench/bench_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from edge.nats import subjects as naming
from edge.nats.publisher import Publisher
from edge.sync.hub.audit import REPAIRED_SOURCE_HEADER, source_sequence
from edge.sync.hub.reattach import SourceWatch
from edge.sync.hub.repair import Repairer, hub_source_sequences
from rigs.link import SyncRig, read_stream

log = logging.getLogger("edge.sync")

FAULT_KINDS = ("hub_stop", "hub_kill", "device_kill", "flap", "outage")
NETNS_FAULT_KINDS = (*FAULT_KINDS, "dangle")


@dataclass
class Tally:
    """What one stream looks like on both sides after a run."""

    stream: str
    device_first: int
    device_last: int
    hub_seqs: list[int]
    gaps: list[int]
    duplicates: int
    out_of_order: int


@dataclass
class MixResult:
    faults: list[str]
    published: dict[str, int]
    acked: dict[str, int]
    tally: dict[str, Tally]
    payload_missing: dict[str, list[int]]
    payload_duplicates: dict[str, int]
    evicted_tele: int
    catch_up_s: list[float] = field(default_factory=list)  # per hub restart: first new data on the hub
    repaired: int = 0  # events the hub's repairer backfilled (the sourcing had skipped them)
    reattached: int = 0  # stalled sources the hub's source watch re-attached

    @property
    def lost(self) -> int:
        return sum(len(t.gaps) for t in self.tally.values()) + len(self.payload_missing.get("EVT", []))

    @property
    def duplicated(self) -> int:
        return sum(t.duplicates for t in self.tally.values()) + sum(self.payload_duplicates.values())


async def hub_source_seqs(js: JetStreamContext, stream: str) -> list[tuple[int, bytes]]:
    """(device sequence, payload) of every message in a hub stream, in hub order."""
    out: list[tuple[int, bytes]] = []
    msgs: list[tuple[str, bytes, dict[str, str]]] = []
    for attempt in range(5):  # a clustered stream may be electing a leader after a node loss
        try:
            msgs = await read_stream(js, stream)
            break
        except TimeoutError:
            if attempt == 4:
                raise
            await asyncio.sleep(1.0)
    for _, data, hdrs in msgs:
        src = source_sequence(hdrs)
        out.append((src[0] if src else -1, data))
    return out


def _tally(stream: str, first: int, last: int, seqs: list[int]) -> Tally:
    have = set(seqs)
    # a sequence is a gap if the device still holds it, or (EVT: never evicted) if it was ever there
    lo = 1 if stream == naming.EVT_STREAM else max(first, 1)
    gaps = [s for s in range(lo, last + 1) if s not in have]
    ooo = sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b <= a)
    return Tally(stream, first, last, seqs, gaps, len(seqs) - len(have), ooo)


class FaultMix:
    """Drive ``faults`` over ``rig`` (device ``dev1``) while publishing; see the module doc."""

    def __init__(self, rig: SyncRig, *, device: str = "dev1", rate_hz: float = 200.0,
                 seed: int = 1, down_s: tuple[float, float] = (0.3, 1.5),
                 outage_msgs: int = 1500, hub_stop_s: tuple[float, float] | None = None,
                 dangle_s: tuple[float, float] = (2.0, 12.0), dangle_kill_p: float = 0.5,
                 keepers: bool = False) -> None:
        self.rig = rig
        self.device = device
        self.rate_hz = rate_hz
        self.rng = random.Random(seed)
        self.down_s = down_s
        self.outage_msgs = outage_msgs
        self.hub_stop_s = hub_stop_s or down_s  # a clean stop can be longer (the 30 s)
        self.dangle_s = dangle_s
        self.dangle_kill_p = dangle_kill_p  # share of dangles with a hub kill -9 in the middle
        # what `edge cloud run` runs beside the hub: the repairer and the source watch
        self.repairer: Repairer | None = Repairer(rig.hub_js, interval_s=1.0) if keepers else None
        self.watch: SourceWatch | None = SourceWatch(rig.hub_js) if keepers else None
        self.next = {"EVT": 0, "TELE": 0}
        self.catch_up: list[float] = []
        self._paused = asyncio.Event()
        self._paused.set()

    def _subject(self, kind: str) -> str:
        return f"edge.{self.device}.{'evt' if kind == 'EVT' else 'tele'}.mix"

    async def _publish(self, pub: Publisher, kind: str) -> None:
        n = self.next[kind]
        self.next[kind] += 1
        await pub.publish(self._subject(kind), str(n).encode(), msg_id=f"{kind}-{n}")

    async def _producer(self, pub: Publisher, stop: asyncio.Event) -> None:
        period = 1.0 / self.rate_hz
        while not stop.is_set():
            await self._paused.wait()
            await self._publish(pub, "EVT")
            await self._publish(pub, "TELE")
            await asyncio.sleep(period)

    async def _hub_has_new(self, before: int, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(Exception):
                if await self.rig.hub_count("EVT", self.device) > before:
                    return time.monotonic() - t0
            await asyncio.sleep(0.02)
        return float("inf")

    async def _hub_restart(self, kill: bool) -> None:
        hub = self.rig.hub
        await (hub.kill() if kill else hub.stop())
        await asyncio.sleep(self.rng.uniform(*(self.down_s if kill else self.hub_stop_s)))
        await hub.start()
        t0 = time.monotonic()
        # the count the hub held when it came back, then the first new message stored
        before = -1
        while before < 0 and time.monotonic() - t0 < 10:
            with contextlib.suppress(Exception):
                before = await self.rig.hub_count("EVT", self.device)
            if before < 0:
                await asyncio.sleep(0.01)
        took = await self._hub_has_new(before)
        self.catch_up.append(time.monotonic() - t0 if took != float("inf") else took)

    async def fault(self, kind: str, pub: Publisher) -> None:
        link = self.rig.links.get(self.device)
        if kind in ("flap", "outage", "dangle") and link is None:
            raise ValueError(f"{kind} needs a rig with a cuttable link")
        assert link is not None or kind not in ("flap", "outage", "dangle")
        if kind in ("hub_stop", "hub_kill"):
            await self._hub_restart(kill=kind == "hub_kill")
        elif kind == "device_kill":
            srv = self.rig.devices[self.device]
            await srv.kill()
            await asyncio.sleep(self.rng.uniform(0.1, 0.5))
            await srv.start()
        elif kind == "flap" and link is not None:
            for _ in range(4):
                await link.cut()
                await asyncio.sleep(self.rng.uniform(0.05, 0.4))
                await link.restore()
                await asyncio.sleep(self.rng.uniform(0.05, 0.4))
        elif kind == "outage" and link is not None:
            await link.cut()
            self._paused.clear()  # a burst, as fast as the device acks, to overrun TELE's budget
            try:
                for _ in range(self.outage_msgs):
                    await self._publish(pub, "EVT")
                    await self._publish(pub, "TELE")
                await pub.flush(30)
            finally:
                self._paused.set()
            await link.restore()
        elif kind == "dangle" and link is not None:
            if not hasattr(link, "ns"):
                raise ValueError("dangle needs the namespace rig (rigs.netns.NetnsSyncRig)")
            await link.cut()
            down = self.rng.uniform(*self.dangle_s)
            if self.rng.random() < self.dangle_kill_p:  # the hub dies while the link dangles
                await asyncio.sleep(down / 2)
                await self.rig.hub.kill()
                await asyncio.sleep(self.rng.uniform(*self.down_s))
                await self.rig.hub.start()
                await asyncio.sleep(down / 2)
            else:
                await asyncio.sleep(down)
            await link.restore()
        elif kind == "node_kill":
            killer = getattr(self.rig, "kill_hub_node", None)
            if killer is None:
                raise ValueError("node_kill needs a clustered hub rig")
            await killer(self.rng)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    async def run(self, faults: Sequence[str], *, settle_s: float = 60.0) -> MixResult:
        stop = asyncio.Event()
        for keeper in (self.repairer, self.watch):
            if keeper is not None:
                keeper.start()
        async with Publisher(self.rig.dev_nc[self.device], ack_timeout_s=0.5, max_attempts=100_000) as pub:
            producer = asyncio.create_task(self._producer(pub, stop))
            try:
                for kind in faults:
                    await asyncio.sleep(self.rng.uniform(0.2, 0.8))
                    log.info("fault %s", kind)
                    await self.fault(kind, pub)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await producer
            await pub.flush(60)
            acked = {"EVT": pub.stats.acked, "TELE": 0}
        try:
            return await self.collect(list(faults), acked, settle_s)
        finally:
            for keeper in (self.repairer, self.watch):
                if keeper is not None:
                    await keeper.stop()

    async def collect(self, faults: list[str], acked: dict[str, int], settle_s: float) -> MixResult:
        djs = self.rig.dev_js(self.device)
        hjs = self.rig.hub_js
        states = {k: (await djs.stream_info(k)).state for k in ("EVT", "TELE")}
        deadline = time.monotonic() + settle_s
        hub: dict[str, list[tuple[int, bytes]]] = {}
        while True:  # until the hub's delivered position reaches the device's last sequence
            done = True
            for k in ("EVT", "TELE"):
                try:
                    info = await hjs.stream_info(naming.hub_stream(k, self.device))
                    if info.state.messages == 0 and states[k].last_seq:
                        done = False
                        continue
                    last = await hjs.get_msg(naming.hub_stream(k, self.device), info.state.last_seq)
                except Exception as err:  # a clustered hub electing a stream leader: ask again
                    log.debug("hub not answering yet: %r", err)
                    done = False
                    continue
                src = source_sequence(last.headers)
                if REPAIRED_SOURCE_HEADER in (last.headers or {}):  # backfilled: stored after newer ones
                    seqs, _ = await hub_source_sequences(hjs, naming.hub_stream(k, self.device))
                    src = (max(seqs), "") if seqs else None
                if not src or src[0] < states[k].last_seq:
                    done = False
            if done or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        if self.repairer is not None:
            await self.repairer.stop()
            await self.repairer.run_once()  # a last pass once the hub has caught up
        for k in ("EVT", "TELE"):
            hub[k] = await hub_source_seqs(hjs, naming.hub_stream(k, self.device))
        tally = {k: _tally(k, states[k].first_seq, states[k].last_seq, [s for s, _ in hub[k]]) for k in hub}
        missing: dict[str, list[int]] = {}
        dups: dict[str, int] = {}
        for k in hub:
            nums = [int(d) for _, d in hub[k]]
            seen = set(nums)
            dups[k] = len(nums) - len(seen)
            if k == "EVT":  # every published event was acknowledged (flushed) and must be there
                missing[k] = [n for n in range(self.next[k]) if n not in seen]
        tele_removed = max(states["TELE"].first_seq - 1, 0) + (states["TELE"].num_deleted or 0)
        return MixResult(faults, dict(self.next), acked, tally, missing, dups, tele_removed, self.catch_up,
                         repaired=self.repairer.repaired if self.repairer else 0,
                         reattached=self.watch.reattached if self.watch else 0)


def fault_plan(n: int, kinds: Sequence[str] = FAULT_KINDS, seed: int = 1) -> list[str]:
    """``n`` faults cycling through ``kinds`` in a shuffled order (every kind at least once)."""
    rng = random.Random(seed)
    plan = [kinds[i % len(kinds)] for i in range(n)]
    rng.shuffle(plan)
    return plan
