"""The recorder layer: writes what every wasm system saw and did onto the ``REC`` stream.

Key components
- :class:`RecordSettings`: the stream's limits and the checkpoint and snapshot periods.
- :class:`RecorderLayer`: the :class:`~edge.wasm.record.SandboxRecorder` of the sandbox layer
  and the :class:`~edge.agents.record.AgentRecorder` of the agent host (both set by the
  composition root) and a :class:`~edge.layer.Layer` (section ``recorder`` of
  ``edge status``). Hooks only queue (bounded; overflow counted in ``dropped``); one task
  publishes the queue in order, so the stream sequence is the order things happened in.

Records (docs/replay.md): ``start`` (a run of the runtime began), ``load`` (a component's
manifest, module bytes, sha256 and KV; repeated as a checkpoint every ``checkpoint_s``),
``unload``, ``tick`` (dt, entity ids, the input columns, the written columns), ``msg``
(messages handed to ``edge_on_message``), ``pub`` (the publishes of one call as its reply
carried them, up to 256 a record, with what the device's effects pipeline refused) and ``kv``
(each KV put of a call, with what became of it: written and its revision, denied, dropped or
replaced while queued), ``infer`` (the answer
a model gave: its output, or the error's reason), ``snap`` (every
entity's components, every ``snapshot_s``); for native agents ``agent`` (an instance was built:
kind, entity, config table), ``obs`` (a message observed, with its monotonic ``now``), ``read``
(the entity's components ``read_world`` saw) and ``decide`` (the decisions).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from edge.agents.base import Agent, Decision
from edge.agents.record import decision_dict
from edge.errors import EdgeError
from edge.layer import DeviceContext
from edge.replay.records import (
    REC_STREAM,
    b64,
    digest,
    encode,
    imports_clock,
    pack_columns,
    rec_filter,
    rec_subject,
)
from edge.tasks import cancel_and_wait
from edge.wasm.manifest import Manifest
from edge.wasm.record import KV_QUEUED, CallOutputs

log = logging.getLogger("edge.replay.recorder")

#: Kinds whose consecutive records of one component are written as one message (``items``).
MERGED_KINDS = frozenset({"msg", "pub", "obs"})
#: Most records merged into one message.
MAX_MERGED = 64
#: Records waiting to be published; beyond this new ones are dropped (and counted).
MAX_QUEUED = 20_000
#: Publishes inlined in a ``pub`` record up to this size (bytes); larger ones keep only a hash.
MAX_INLINE_PUBLISH = 1024
#: Publishes of one call in one ``pub`` record, at most this many (a call with more has several).
PUBS_PER_RECORD = 256
#: Seconds between two runs of the periodic work (snapshots, checkpoints).
PERIODIC_S = 0.2
#: The counts of a ``pub`` record's ``dev``: what the device's effects pipeline refused, in the
#: order it applies them (docs/replay.md).
PUB_FATES = ("hop_limited", "rate_limited", "policy_denied", "lane_dropped")
#: Largest batch a tick record (input columns) or a message record (payloads) holds, in bytes;
#: a larger one is recorded without them (``too_large``: its size) and that component cannot be
#: replayed over it.
MAX_TICK_BYTES = 256 * 1024
#: A tool call's request or reply larger than this is recorded by its size and hash (bytes).
MAX_TOOL_BYTES = 64 * 1024
#: Message records of one clock-reading component waiting for their call's clock reads; past
#: this the oldest is written without them (the sandbox keeps at most 8 batches in flight).
MAX_WAITING = 256


@dataclass(frozen=True)
class RecordSettings:
    """Limits of the ``REC`` stream and the recorder's periods (seconds, bytes)."""

    max_age_s: float = 3600.0
    max_bytes: int = 256 * 2**20
    checkpoint_s: float = 60.0
    snapshot_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_age_s", "checkpoint_s", "snapshot_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds "
                                 f"(got {getattr(self, name)})")
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive number of bytes (got {self.max_bytes})")

    def stream_config(self, device: str) -> StreamConfig:
        return StreamConfig(name=REC_STREAM, subjects=[rec_filter(device)],
                            storage=StorageType.FILE, discard=DiscardPolicy.OLD,
                            max_age=self.max_age_s, max_bytes=self.max_bytes)


@dataclass
class _Recorded:
    """What the recorder keeps of a loaded component (for checkpoints and digests)."""

    manifest: Manifest
    text: str
    module: bytes
    sha: str
    kv: dict[str, bytes]
    writable: tuple[int, ...]
    step: int = 0
    #: the module imports a clock: its message records wait for their call's clock reads
    reads_clock: bool = False
    #: message records waiting for the clock reads of their call, in the order handed over
    waiting: deque[dict[str, Any]] = field(default_factory=deque)
    #: answers still to come for records written early (``clock_lost``): skipped, in order
    unanswered: int = 0
    #: the step of the tick whose outputs came (they come before the tick returns)
    tick_step: int | None = None
    #: the steps of the message batches handed over and not answered yet, in order
    msg_steps: deque[int] = field(default_factory=deque)


@dataclass
class RecorderStats:
    records: int = 0
    bytes: int = 0
    dropped: int = 0
    errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class RecorderLayer:
    """Records the sandbox's inputs and outputs (see the module docstring)."""

    name = "recorder"

    def __init__(self, settings: RecordSettings | None = None) -> None:
        self.settings = settings or RecordSettings()
        self.run_id = uuid.uuid4().hex[:12]
        self.stats = RecorderStats()
        self._queue: deque[tuple[str, str | None, dict[str, Any]]] = deque()
        self._wake = asyncio.Event()
        self._comps: dict[str, _Recorded] = {}
        #: ``kv`` records of puts queued for the host, per (component, key), oldest first:
        #: written once the host wrote them (with the revision) or a later put replaced them
        self._kv_pending: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        #: records of a first ``edge_init``'s outputs, held until the component's load record
        self._held: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._ctx: DeviceContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: the sha256 of the model serving a name (None: unknown); set by the composition root
        self.model_sha: Callable[[str], str | None] | None = None
        #: the policy in use (a ``policy`` record body), asked at start; set by the composition
        #: root with :meth:`on_policy` as the policy point's load listener
        self.policy_state: Callable[[], dict[str, Any]] | None = None

    # -- layer ------------------------------------------------------------------------------

    async def start(self, ctx: DeviceContext) -> None:
        from edge.sync.device.streams import ensure_stream

        self._ctx = ctx
        await ensure_stream(ctx.js, self.settings.stream_config(ctx.device))
        # the layers before this one (the agents) queued records as they started: a run's
        # ``start`` and its ``policy`` still come first in the stream
        early = list(self._queue)
        self._queue.clear()
        self._put("start", None, {"device": ctx.device})
        if self.policy_state is not None:
            self._put("policy", None, {**self.policy_state(), "reload": False})
        self._queue.extend(early)
        self._tasks = [asyncio.create_task(self._write(), name="edge.replay.write"),
                       asyncio.create_task(self._periodic(), name="edge.replay.periodic")]

    async def stop(self) -> None:
        for task in self._tasks[1:]:
            await cancel_and_wait(task)
        self._release_kv(None)
        if self._tasks:
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(), 5.0)  # the last records go out
            await cancel_and_wait(self._tasks[0])
            self._tasks = []
        ctx = self._ctx
        if ctx is not None and ctx.nc.is_connected:
            with contextlib.suppress(Exception):
                await ctx.nc.flush(timeout=2)

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {"stream": REC_STREAM, "run": self.run_id, "records": s.records, "bytes": s.bytes,
                "dropped": s.dropped, "errors": s.errors, "queued": len(self._queue),
                "by_kind": dict(s.by_kind)}

    # -- the sandbox's hooks (edge.wasm.record.SandboxRecorder) ------------------------------

    def on_load(self, manifest: Manifest, module: bytes, kv: dict[str, bytes],
                clocks: Sequence[tuple[int, int]] = (), cut: int = 0,
                kv_revisions: Mapping[str, int] | None = None) -> None:
        text = ""
        if manifest.path is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                text = manifest.path.read_text("utf-8")
        old = self._comps.get(manifest.name)
        if old is not None:
            self._release_waiting(old)
        rec = _Recorded(manifest, text, module, hashlib.sha256(module).hexdigest(), dict(kv),
                        manifest.writable, reads_clock=imports_clock(module))
        self._comps[manifest.name] = rec
        body = self._load_body(rec, checkpoint=False)
        if kv_revisions:  # the bucket's revision of each key as it was read at the load
            body["kv_rev"] = {k: int(v) for k, v in sorted(kv_revisions.items())}
        if clocks or cut:  # the start function's and edge_init's clock reads, in order
            body["clock"] = [[k, v] for k, v in clocks]
            if cut:
                body["clock_cut"] = cut
        self._put("load", manifest.name, body)
        for kind, held in self._held.pop(manifest.name, []):  # edge_init's outputs: step 0
            if kind == "pub" or held.pop("_written", False) or "dev" in held:
                self._put(kind, manifest.name, held)

    def on_unload(self, component: str) -> None:
        self._release_kv(component)
        rec = self._comps.pop(component, None)
        if rec is not None:
            self._release_waiting(rec)
            self._put("unload", component, {})

    def records_batch(self, component: str, nbytes: int) -> bool:
        return nbytes <= MAX_TICK_BYTES

    def on_tick_unrecorded(self, component: str, dt: float, nbytes: int, ok: bool) -> None:
        rec = self._comps.get(component)
        if rec is None:
            return
        self._put("tick", component, {"step": self._tick_step(rec), "dt": dt, "ok": ok,
                                      "too_large": nbytes})

    def on_tick(self, component: str, dt: float, ids: Sequence[str],
                before: Sequence[np.ndarray], after: Sequence[np.ndarray], ok: bool,
                clocks: Sequence[tuple[int, int]] = (), cut: int = 0) -> None:
        rec = self._comps.get(component)
        if rec is None:
            return
        step = self._tick_step(rec)
        size = sum(int(c.nbytes) for c in before)
        if size > MAX_TICK_BYTES:
            self._put("tick", component, {"step": step, "dt": dt, "ok": ok,
                                          "too_large": size})
            return
        out = [after[i] for i in rec.writable] if ok else []
        body: dict[str, Any] = {"step": step, "dt": dt, "ids": list(ids), "ok": ok,
                                "in": pack_columns(before), "out": pack_columns(out)}
        if clocks or cut:  # the clock reads of the call, in order: [kind, value]
            body["clock"] = [[k, v] for k, v in clocks]
            if cut:
                body["clock_cut"] = cut
        self._put("tick", component, body)

    def on_deliver(self, component: str, messages: Sequence[tuple[str, bytes]],
                   hops: int) -> None:
        rec = self._comps.get(component)
        if rec is None:
            return
        rec.step += 1
        if len(rec.msg_steps) >= MAX_WAITING:  # answers lost (a crash): the oldest go
            rec.msg_steps.popleft()
        rec.msg_steps.append(rec.step)
        size = sum(len(d) + len(s) for s, d in messages)
        if size > MAX_TICK_BYTES:
            body: dict[str, Any] = {"step": rec.step, "hops": hops, "too_large": size}
        else:
            body = {"step": rec.step, "hops": hops, "msgs": [[s, b64(d)] for s, d in messages]}
        if rec.reads_clock:  # written when the call's clock reads are known
            if len(rec.waiting) >= MAX_WAITING:  # the oldest goes out without its reads
                oldest = rec.waiting.popleft()
                oldest["clock_lost"] = True
                rec.unanswered += 1
                self._put("msg", component, oldest)
            rec.waiting.append(body)
            return
        self._put("msg", component, body)

    def on_message_clocks(self, component: str, clocks: Sequence[tuple[int, int]],
                          cut: int) -> None:
        """The clock reads of the oldest message batch of ``component`` still waiting."""
        rec = self._comps.get(component)
        if rec is None:
            return
        if rec.unanswered:  # the answer of a record already written without its reads
            rec.unanswered -= 1
            return
        if not rec.waiting:
            return
        body = rec.waiting.popleft()
        if clocks or cut:
            body["clock"] = [[k, v] for k, v in clocks]
            if cut:
                body["clock_cut"] = cut
        self._put("msg", component, body)

    def _release_waiting(self, rec: _Recorded) -> None:
        """Message records whose call will not answer (an unload or a new load): written as
        they are, marked ``clock_lost``."""
        rec.unanswered = 0
        while rec.waiting:
            body = rec.waiting.popleft()
            body["clock_lost"] = True
            self._put("msg", rec.manifest.name, body)

    @staticmethod
    def _tick_step(rec: _Recorded) -> int:
        """The step of the tick being recorded: the one its outputs reserved, or the next."""
        if rec.tick_step is not None:
            step, rec.tick_step = rec.tick_step, None
            return step
        rec.step += 1
        return rec.step

    def on_outputs(self, component: str, outputs: CallOutputs) -> None:
        """A call's own publishes and KV puts (before the effects pipeline), as ``pub`` and
        ``kv`` records of the call's step."""
        rec = self._comps.get(component)
        held: list[tuple[str, dict[str, Any]]] | None = None
        export = outputs.export
        if export == "edge_tick":
            if rec is None:
                return
            rec.step += 1
            rec.tick_step = step = rec.step
        elif export == "edge_on_message":
            if rec is None:
                return
            step = rec.msg_steps.popleft() if rec.msg_steps else rec.step
        elif rec is None:  # a first edge_init: its load record comes once the load returns
            step = 0
            self._forget_held(component)  # of a load that failed: it has no load record
            if not (outputs.publishes or outputs.kv_puts):
                return
            held = self._held[component] = []
        else:  # edge_init of a restart after a fault: the batches in flight were lost
            step = rec.step
            rec.msg_steps.clear()
        if outputs.publishes:
            self._pub_records(component, step, outputs, held)
        if outputs.kv_puts:
            self._kv_records(component, step, outputs, held, rec)

    def _pub_records(self, component: str, step: int, outputs: CallOutputs,
                     held: list[tuple[str, dict[str, Any]]] | None) -> None:
        pubs = outputs.publishes
        dev = {name: n for name, n in zip(PUB_FATES, (outputs.hop_limited, outputs.rate_limited,
                                                      outputs.policy_denied, outputs.lane_dropped))
               if n}
        for i in range(0, len(pubs), PUBS_PER_RECORD):
            entries = []
            for subject, data in pubs[i:i + PUBS_PER_RECORD]:
                entry = [subject, digest(data)]
                if len(data) <= MAX_INLINE_PUBLISH:
                    entry.append(b64(data))
                entries.append(entry)
            body: dict[str, Any] = {"step": step, "pubs": entries}
            if i == 0 and dev:  # what the device's pipeline refused of this call's publishes
                body["dev"] = dev
            if held is not None:
                held.append(("pub", body))
            else:
                self._put("pub", component, body)

    def _kv_records(self, component: str, step: int, outputs: CallOutputs,
                    held: list[tuple[str, dict[str, Any]]] | None, rec: _Recorded | None) -> None:
        replaced = set(outputs.coalesced)
        for i, ((key, value), fate) in enumerate(zip(outputs.kv_puts, outputs.kv_fate,
                                                      strict=True)):
            body: dict[str, Any] = {"step": step, "i": i, "key": key, "value": b64(value)}
            if held is not None:
                held.append(("kv", body))
            if fate != KV_QUEUED:  # denied by the policy or dropped from a full lane
                body["dev"] = fate
                if held is None:
                    self._put("kv", component, body)
                continue
            pending = self._kv_pending.setdefault((component, key), deque())
            if i in replaced and pending:  # the put still queued is never written
                self._resolve(component, pending.pop(), "coalesced")
            pending.append(body)

    def _resolve(self, component: str, body: dict[str, Any], dev: str | None = None,
                 revision: int | None = None) -> None:
        """A pending ``kv`` record's put was written (``revision``, None: the write failed),
        replaced while queued (``dev``) or will not be written any more."""
        if dev is not None:
            body["dev"] = dev
        if revision is not None:  # the bucket's revision the write got (its stream sequence)
            body["rev"] = revision
        if component in self._held and any(b is body for _, b in self._held[component]):
            body["_written"] = True  # written out with its load record
            return
        self._put("kv", component, body)

    def _forget_held(self, component: str) -> None:
        """Drop the held outputs of a first ``edge_init`` whose load never got a record."""
        held = self._held.pop(component, None)
        if not held:
            return
        bodies = {id(body) for _, body in held}
        for key in [k for k in self._kv_pending if k[0] == component]:
            kept = deque(b for b in self._kv_pending[key] if id(b) not in bodies)
            if kept:
                self._kv_pending[key] = kept
            else:
                del self._kv_pending[key]

    def _release_kv(self, component: str | None) -> None:
        """Pending ``kv`` records of ``component`` (None: all) go out as they are (unloaded or
        stopped before the host wrote them)."""
        for (name, key) in [k for k in self._kv_pending if component in (None, k[0])]:
            for body in self._kv_pending.pop((name, key)):
                self._resolve(name, body)
        for name in [n for n in self._held if component in (None, n)]:
            for kind, body in self._held.pop(name):
                body.pop("_written", None)
                self._put(kind, name, body)

    def on_kv_put(self, component: str, key: str, value: bytes,
                  revision: int | None = None) -> None:
        """The host wrote a put of ``component`` (its oldest still pending for ``key``)."""
        rec = self._comps.get(component)
        if rec is not None:
            rec.kv[key] = value
        pending = self._kv_pending.get((component, key))
        if not pending:
            return
        body = pending.popleft()
        if not pending:
            del self._kv_pending[(component, key)]
        self._resolve(component, body, revision=revision)

    def on_infer(self, component: str, model: str, data: bytes, out: bytes | None,
                 error: EdgeError | None) -> None:
        rec = self._comps.get(component)
        body: dict[str, Any] = {"step": rec.step if rec else 0, "model": model,
                                "in": digest(data)}
        sha = self.model_sha(model) if self.model_sha is not None else None
        if sha:  # the model that answered: its sha256 (the registry's, when the answer came)
            body["model_sha"] = sha
        if out is not None:
            body["out"] = b64(out)
        elif error is not None:
            body["reason"] = str(error.fields.get("reason", "failed"))
            if "expected" in error.fields:
                body["expected"] = str(error.fields["expected"])
        else:
            body["reason"] = "failed"
        self._put("infer", component, body)

    # -- the policy point's load listener --------------------------------------------------

    def on_policy(self, state: Mapping[str, Any]) -> None:
        """A policy was loaded (or switched off): file, sha256, generation, counts."""
        if self._ctx is not None:  # the one in use at start is recorded by start()
            self._put("policy", None, {**dict(state), "reload": True})

    # -- the agent host's hooks (edge.agents.record.AgentRecorder) ----------------------------

    def on_agent(self, agent: Agent, table: Mapping[str, Any]) -> None:
        self._put("agent", agent.name, {"kind": agent.kind, "entity": agent.entity,
                                        "interval": agent.interval, "table": dict(table)})

    def on_observe(self, agent: str, subject: str, data: bytes, now: float) -> None:
        self._put("obs", agent, {"subject": subject, "data": b64(data), "now": now})

    def on_read(self, agent: str, now: float, world: Mapping[str, Any]) -> None:
        self._put("read", agent, {"now": now, "world": dict(world)})

    def on_decide(self, agent: str, decisions: Sequence[Decision]) -> None:
        self._put("decide", agent, {"decisions": [decision_dict(d) for d in decisions]})

    # -- the tools service's hook (edge.agents.tools.service.ToolCallRecorder) ----------------

    def on_tool_call(self, tool: str, caller: str, request: bytes, code: str,
                     reply: bytes) -> None:
        body: dict[str, Any] = {"tool": tool, "caller": caller, "code": code,
                                "request_sha": digest(request), "reply_sha": digest(reply)}
        if len(request) <= MAX_TOOL_BYTES:
            body["request"] = b64(request)
        else:
            body["request_too_large"] = len(request)
        if len(reply) <= MAX_TOOL_BYTES:
            body["reply"] = b64(reply)
        else:
            body["reply_too_large"] = len(reply)
        self._put("tool", None, body)

    # -- internals --------------------------------------------------------------------------

    def _load_body(self, rec: _Recorded, *, checkpoint: bool) -> dict[str, Any]:
        m = rec.manifest
        return {"version": m.version, "sha256": rec.sha, "manifest": rec.text,
                "manifest_path": str(m.path) if m.path else "", "module": b64(rec.module),
                "kv": {k: b64(v) for k, v in sorted(rec.kv.items())}, "step": rec.step,
                "checkpoint": checkpoint}

    def _put(self, kind: str, component: str | None, body: dict[str, Any]) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self.stats.dropped += 1
            return
        body["k"] = kind
        body["t"] = time.time()
        body["run"] = self.run_id
        if component is not None:
            body["c"] = component
        self._queue.append((kind, component, body))
        self._wake.set()

    async def _drain(self) -> None:
        while self._queue:
            await asyncio.sleep(0.01)

    async def drained(self) -> None:
        """Return once every record queued so far is handed to NATS (and flushed)."""
        await self._drain()
        ctx = self._ctx
        if ctx is not None:
            await ctx.nc.flush()

    async def _write(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        queue = self._queue
        stats = self.stats
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
            kind, component, body = queue.popleft()
            if kind in MERGED_KINDS:  # a burst of one component's records: one message
                items = [body]
                while (queue and len(items) < MAX_MERGED and queue[0][0] == kind
                       and queue[0][1] == component):
                    items.append(queue.popleft()[2])
                if len(items) > 1:
                    body = {"k": kind, "c": component, "t": body["t"], "run": self.run_id,
                            "items": items}
            data = encode(body)
            try:
                await ctx.nc.publish(rec_subject(ctx.device, kind, component), data)
            except Exception as err:  # noqa: BLE001  a lost record is counted, never fatal
                stats.errors += 1
                log.warning("a %s record was not published: %s", kind, err)
                continue
            stats.records += 1
            stats.bytes += len(data)
            stats.by_kind[kind] = stats.by_kind.get(kind, 0) + 1

    async def _periodic(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        next_snap = loop.time()
        next_ckpt = loop.time() + s.checkpoint_s
        while True:
            now = loop.time()
            if now >= next_snap:
                self._snapshot()
                next_snap = now + s.snapshot_s
            if now >= next_ckpt:
                for rec in list(self._comps.values()):
                    self._put("load", rec.manifest.name, self._load_body(rec, checkpoint=True))
                next_ckpt = now + s.checkpoint_s
            await asyncio.sleep(max(0.0, min(next_snap, next_ckpt, now + PERIODIC_S) - loop.time()))

    def _snapshot(self) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        world = ctx.world
        entities: dict[str, Any] = {}
        for meta in world.entities():
            try:
                entities[meta.id] = {"kind": meta.kind, "labels": dict(meta.labels),
                                     "components": world.get_all(meta.id)}
            except Exception:  # noqa: BLE001  removed meanwhile: not in this snapshot
                continue
        self._put("snap", None, {"entities": entities})
