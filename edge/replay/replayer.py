"""Re-runs recorded systems over a window in an isolated sandbox and compares every output.

Key components
- :class:`CaptureHost`: the pool's :class:`~edge.wasm.host.HostCallbacks` in a replay: keeps
  each call's own outputs (its publishes and KV puts as the call result carried them, before
  the replay pool's effects pipeline) and faults; carries nothing out (nothing reaches a device).
- :class:`Replayer`: one replay. Its own :class:`~edge.wasm.pool.SandboxPool` (own worker
  processes) loads each component as recorded (the recorded module bytes and manifest, or a
  what-if candidate), from its last load at or before the window so the instance's memory is
  what it was; then every recorded tick is fed its recorded ``dt``, entity ids and input
  columns, and every message batch its messages, in stream order. Outputs inside the window
  (``ok``, written columns, the calls' own publishes and KV puts) are compared with the record;
  what the device's effects pipeline did with the recorded ones (policy denials, rate and hop
  limits, lane drops, coalesced KV puts) is counted in the report, not compared.
- :class:`ReplayReport` / :class:`Divergence`: the result; the first divergence names the
  component, the step (tick number since load), the stream sequence, the time, the field and
  the entity, both values, and the inputs of that tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections import deque
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EdgeError, SandboxError
from edge.replay.agents import AgentFactory, AgentReplay, LiveAgent, is_agent_table
from edge.replay.records import (
    AGENT_KINDS,
    ReplayError,
    digest,
    imports_clock,
    unb64,
    unpack_columns,
)
from edge.replay.source import Records, Window
from edge.wasm.manifest import Manifest, load_manifest, parse_manifest
from edge.wasm.pool import SandboxPool
from edge.wasm.protocol import CLOCK_MS, CLOCK_NS, CLOCK_REPLAY
from edge.wasm.record import CallOutputs

log = logging.getLogger("edge.replay.replayer")

#: Most sandbox worker processes one replay starts. One: the components' calls are pipelined
#: into it, and starting a second worker cost more than it saved on demo windows (measured).
MAX_WORKERS = 1


class CaptureHost:
    """HostCallbacks that keep each call's own outputs instead of carrying anything out.

    The outputs come from :meth:`on_call_outputs` (a
    :class:`~edge.wasm.record.CallOutputsListener`: the call result's publishes and KV puts,
    per component, in call order, before the pool's hop limit, rate limit and lane); what the
    pool's pipeline then hands to :meth:`publish` / :meth:`kv_put` is only counted.
    """

    def __init__(self) -> None:
        self.publishes: dict[str, list[tuple[str, bytes]]] = {}
        self.kv_puts: dict[str, list[tuple[str, bytes]]] = {}
        self.faults: list[tuple[str, SandboxError]] = []
        self.limits: list[tuple[str, str, int]] = []
        self.carried = 0  # publishes and KV writes the pipeline let out (dropped here)

    def on_call_outputs(self, component: str, outputs: CallOutputs) -> None:
        if outputs.publishes:
            self.publishes.setdefault(component, []).extend(
                (s, bytes(d)) for s, d in outputs.publishes)
        if outputs.kv_puts:
            self.kv_puts.setdefault(component, []).extend(
                (k, bytes(v)) for k, v in outputs.kv_puts)

    async def publish(self, component: str, subject: str, data: bytes, hops: int) -> None:
        self.carried += 1

    async def kv_put(self, component: str, key: str, value: bytes, hops: int) -> None:
        self.carried += 1

    def on_fault(self, component: str, fault: SandboxError) -> None:
        self.faults.append((component, fault))

    def on_limit(self, component: str, limit: str, dropped: int) -> None:
        self.limits.append((component, limit, dropped))

    def take(self, component: str) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        return self.publishes.pop(component, []), self.kv_puts.pop(component, [])


class ReplayInfer:
    """The ``infer`` bridge of a replay: answers each component's calls with its recorded
    answers, in order; a call whose model or input differs from the recorded one is reported
    through ``on_mismatch`` (and still gets the recorded answer)."""

    def __init__(self, on_mismatch: Callable[[str, int, float, str, str], None] | None = None
                 ) -> None:
        self.answers: dict[str, deque[tuple[int, float, dict[str, Any]]]] = {}
        self.on_mismatch = on_mismatch or (lambda *_: None)

    async def infer(self, component: str, model: str, data: bytes) -> bytes:
        queue = self.answers.get(component)
        if not queue:
            self.on_mismatch(component, -1, 0.0, "no recorded call", f"{model} {digest(data)}")
            raise EdgeError(f"no recorded answer for an infer of {component}",
                            reason="unknown-model")
        seq, t, rec = queue.popleft()
        got = f"{model} {digest(data)}"
        want = f"{rec.get('model')} {rec.get('in')}"
        if got != want:
            self.on_mismatch(component, seq, t, want, got)
        if "out" in rec:
            return unb64(rec["out"], "out")
        raise EdgeError(f"the recorded infer of {component} failed", reason=rec.get("reason"),
                        expected=rec.get("expected"))


TOOL_CALLS_SHOWN = 10  # tool calls listed in the text report


class ReplaySandbox:
    """The isolated sandbox one replay runs in: its own :class:`SandboxPool` (own worker
    process, replay clock mode), the :class:`CaptureHost` and the :class:`ReplayInfer` bridge.

    :meth:`begin` starts the pool in the background, so that the worker process starts while
    the records are read (:func:`replay`); :meth:`ready` waits for it (starting it if nobody
    did); :meth:`close` stops it (after a start still under way has finished), and may be
    called more than once.
    """

    def __init__(self, device: str) -> None:
        self.host = CaptureHost()
        self.infer = ReplayInfer()
        workers = max(1, min(os.cpu_count() or 1, MAX_WORKERS))
        self.pool = SandboxPool(device, self.host, workers=workers, infer=self.infer,
                                clock=CLOCK_REPLAY)
        self._starting: asyncio.Task[None] | None = None

    def begin(self) -> None:
        if self._starting is None:
            self._starting = asyncio.create_task(self.pool.start(), name="edge.replay.sandbox")

    async def ready(self) -> SandboxPool:
        self.begin()
        assert self._starting is not None
        await self._starting
        return self.pool

    async def close(self) -> None:
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting  # a worker being started is stopped, not left behind
        await self.pool.stop()


@dataclass
class Divergence:
    """Where a replayed output first differs from the recorded one."""

    component: str
    what: str  # ok | columns | publish | kv
    step: int
    seq: int
    t: float
    recorded: Any
    replayed: Any
    field: str = ""
    entity: str = ""
    context: dict[str, Any] = dataclasses.field(default_factory=dict)

    def sentence(self) -> str:
        where = f"{self.component} step {self.step} (stream seq {self.seq}, t {self.t:.3f})"
        what = {"ok": "the call's success", "columns": f"{self.field} of {self.entity}",
                "publish": "a publish", "kv": "a key-value write", "decision": "the decisions",
                "infer": "an infer call (model, input hash)",
                "clock": "the clock reads ([kind, value]: 0 clock_ms, 1 monotonic_ns)",
                "fault": "the run"}.get(self.what, self.what)
        return f"first divergence: {where}: {what} was {self.recorded!r}, replayed {self.replayed!r}"


@dataclass
class ComponentReport:
    name: str
    kind: str = "component"  # or "agent" (a native agent)
    versions: list[dict[str, Any]] = field(default_factory=list)
    ticks: int = 0  # ticks compared (inside the window)
    ticks_differing: int = 0
    warmup_ticks: int = 0  # replayed before the window, to rebuild the instance's memory
    messages: int = 0
    publishes: int = 0
    publishes_differing: int = 0
    kv_puts: int = 0
    kv_differing: int = 0
    decisions: int = 0  # agents: decisions compared
    decisions_differing: int = 0
    exact_start: bool = True  # False: the window started from a checkpoint, not a load
    reads_clock: bool = False  # the module imports clock_ms or monotonic_ns (answered from the record)
    #: model name -> the sha256 of the models that answered its infer calls in the window
    models: dict[str, list[str]] = field(default_factory=dict)
    #: what the device's effects pipeline did with the recorded outputs in the window (counts,
    #: only those not 0): publishes refused by the hop limit (``hop_limited``), the publish
    #: rate (``rate_limited``), the policy (``policy_denied``), a full lane (``lane_dropped``);
    #: KV puts denied by the policy (``kv_policy_denied``), dropped (``kv_lane_dropped``),
    #: replaced while queued (``kv_coalesced``). Not compared: the replay runs none of it.
    device: dict[str, int] = field(default_factory=dict)
    first: Divergence | None = None

    @property
    def identical(self) -> bool:
        return self.first is None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["identical"] = self.identical
        return d


@dataclass
class ReplayReport:
    window: dict[str, Any]
    records: int
    malformed: int
    components: dict[str, ComponentReport]
    replay_s: float
    recorded_s: float
    #: the tools service's calls inside the window (answers external agents got): stream seq,
    #: time, tool, caller, code, request and reply (JSON, None when too large to record)
    tools: list[dict[str, Any]] = field(default_factory=list)
    #: the policies in use: the one at the window's start and every reload inside it (stream
    #: seq, time, file, sha256, generation, rules, limits, enforcing)
    policies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(c.identical for c in self.components.values())

    @property
    def first(self) -> Divergence | None:
        firsts = [c.first for c in self.components.values() if c.first is not None]
        return min(firsts, key=lambda d: (d.seq, d.t)) if firsts else None

    @property
    def speed(self) -> float:
        """How many times faster than it happened (recorded span / replay time)."""
        return self.recorded_s / self.replay_s if self.replay_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        first = self.first
        return {"window": self.window, "records": self.records, "malformed": self.malformed,
                "identical": self.identical, "replay_s": round(self.replay_s, 3),
                "recorded_s": round(self.recorded_s, 3), "speed": round(self.speed, 1),
                "first_divergence": dataclasses.asdict(first) if first else None,
                "components": {n: c.to_dict() for n, c in sorted(self.components.items())},
                "tools": self.tools, "policies": self.policies}

    def render(self) -> str:
        lines = [f"replayed {self.records} records ({self.recorded_s:.1f} s recorded) in "
                 f"{self.replay_s:.2f} s ({self.speed:.0f}x real time)"]
        for name, c in sorted(self.components.items()):
            if c.kind == "agent":
                state = "identical" if c.identical else (
                    f"DIVERGES: {c.decisions_differing} of {c.decisions} decisions differ")
                lines.append(f"  {name:<12} agent, {c.decisions} decisions: {state}")
                continue
            vers = ", ".join(f"{v['version']} {v['sha256'][:12]}{' (what-if)' if v['what_if'] else ''}"
                             for v in c.versions)
            state = "identical" if c.identical else (
                f"DIVERGES: {c.ticks_differing} of {c.ticks} ticks, {c.publishes_differing} of "
                f"{c.publishes} publishes, {c.kv_differing} of {c.kv_puts} KV writes differ")
            exact = "" if c.exact_start else " (started from a checkpoint)"
            if c.reads_clock:
                exact += " (reads the clock: its reads answered from the record)"
            lines.append(f"  {name:<12} {c.ticks} ticks, {c.messages} message batches, "
                         f"{c.publishes} publishes: {state}  [{vers}]{exact}")
            if c.device:
                lines.append(f"    on the device (not replayed): {_device_sentence(c)}")
            for model, shas in sorted(c.models.items()):
                lines.append(f"    model {model}: {', '.join(s[:12] for s in shas) or 'unknown'}")
        for p in self.policies:
            what = (f"{p.get('file')} sha256 {str(p.get('sha256'))[:12]}" if p.get("enforcing")
                    else "none (metering only)")
            lines.append(f"  policy at seq {p['seq']}: {what}, generation {p.get('generation')}")
        if self.tools:
            lines.append(f"  tool calls in the window (answers from outside, not replayed): "
                         f"{len(self.tools)}")
            for call in self.tools[:TOOL_CALLS_SHOWN]:
                lines.append(f"    seq {call['seq']} t {call['t']:.3f} {call['caller']} -> "
                             f"{call['tool']}: {call['code']}")
            if len(self.tools) > TOOL_CALLS_SHOWN:
                lines.append(f"    ... {len(self.tools) - TOOL_CALLS_SHOWN} more (--json)")
        first = self.first
        lines.append(first.sentence() if first else "every output is identical to the record")
        if first is not None and first.context:
            for key, value in first.context.items():
                lines.append(f"    {key}: {value}")
        return "\n".join(lines)


@dataclass
class _Effect:
    step: int
    seq: int
    t: float
    subject: str
    sha: str
    data: bytes | None


@dataclass
class LiveComponent:
    """A component as this replay runs it."""

    manifest: Manifest
    report: ComponentReport
    ids: list[str] | None = None
    running: bool = False
    step: int = 0  # the last call applied (step, stream seq, time)
    seq: int = 0
    t: float = 0.0
    gen: int = 0  # loads applied so far (steps count from each load)
    #: recorded pub and kv records: (load, step, index in the call, effect, device's fate)
    rec_pub_records: list[tuple[int, int, int, _Effect, dict[str, int]]] = field(
        default_factory=list)
    rec_kv_records: list[tuple[int, int, int, _Effect, str]] = field(default_factory=list)
    rec_pubs: list[_Effect] = field(default_factory=list)
    rep_pubs: list[_Effect] = field(default_factory=list)
    rec_kv: list[_Effect] = field(default_factory=list)
    rep_kv: list[_Effect] = field(default_factory=list)
    #: calls replayed inside the window: (load, step) -> the stream seq and time of the call's
    #: record (the load, tick or msg record), which a divergence of its outputs names
    inside_steps: dict[tuple[int, int], tuple[int, float]] = field(default_factory=dict)
    #: clock-reading components: each message batch's recorded reads (step, seq, time, reads,
    #: inside the window) and the replayed reads, in the order the batches were handed over
    rec_msg_clocks: list[tuple[int, int, float, list[tuple[int, int]], bool]] = field(
        default_factory=list)
    rep_msg_clocks: list[list[tuple[int, int]]] = field(default_factory=list)


def candidate(path: Path, device: str) -> tuple[Path, Manifest | None]:
    """A what-if candidate: a module file (recorded manifest, this module) or a manifest."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"what-if candidate {path} is not a file", path=str(path), reason="usage")
    if path.suffix == ".wasm":
        return path, None
    manifest = load_manifest(path, device)
    return manifest.module, manifest


class Replayer:
    """One replay of ``records`` for ``device`` (see the module docstring).

    ``systems``: the components and agents to replay (None = every recorded one); ``what_if``:
    component name -> a module (``.wasm``) or manifest path run instead of the recorded versions,
    or agent name -> a TOML file with the agent's config table (``kind``, ``entity``, ...; no
    ``module``); ``agents``: agent name -> a factory building the
    instance to run (what-if from Python, or an agent built in code).
    """

    def __init__(self, device: str, records: Records, window: Window, *,
                 systems: Sequence[str] | None = None,
                 what_if: Mapping[str, Path] | None = None,
                 agents: Mapping[str, AgentFactory] | None = None,
                 sandbox: ReplaySandbox | None = None, started: float | None = None) -> None:
        self.device = device
        self.records = records
        self.window = window
        self.systems = set(systems) if systems else None
        self._what_if_names = set(what_if or {})
        self.what_if = {k: candidate(v, device) for k, v in (what_if or {}).items()
                        if not is_agent_table(v)}
        #: the sandbox (one is made when none is given; :meth:`run` closes it) and when the
        #: replay began (``time.perf_counter()``; None: when :meth:`run` is called)
        self.sandbox = sandbox if sandbox is not None else ReplaySandbox(device)
        self.started = started
        self.host = self.sandbox.host
        self.infer = self.sandbox.infer
        self.infer.on_mismatch = self._infer_mismatch
        agent_what_if = {k: v for k, v in (what_if or {}).items() if is_agent_table(v)}
        self._agents = AgentReplay(device, records.items, window, selected=self._selected,
                                   what_if=agent_what_if, factories=agents)
        self._live: dict[str, LiveComponent] = {}
        self._reports: dict[str, ComponentReport] = {}
        self._tmp: Path | None = None

    async def run(self) -> ReplayReport:
        """Replay the window and compare; the sandbox is closed whatever happens."""
        try:
            return await self._run()
        finally:
            await self.sandbox.close()

    async def _run(self) -> ReplayReport:
        items = self.records.items
        start, first_in, last_in = self._plan(items)
        if self.systems is not None:
            missing = sorted(self.systems - set(self._reports))
            if missing:
                raise ReplayError(f"nothing of system '{missing[0]}' is recorded in the window",
                                  component=missing[0], reason="unknown")
        unknown = sorted(self._what_if_names - set(self._reports))
        if unknown:  # the candidate would replace nothing: an identical replay would prove nothing
            raise ReplayError(f"what-if candidate for '{unknown[0]}': '{unknown[0]}' ran nowhere "
                              "in the window (or is not among --system): nothing to compare it "
                              "against", component=unknown[0], reason="unknown")
        # Each component's inputs are recorded, so components replay independently: one task
        # each (sharing up to MAX_WORKERS worker processes), every task in stream order.
        streams: dict[str, list[tuple[int, dict[str, Any]]]] = {n: [] for n in self._reports}
        for seq, rec in items[start:last_in + 1]:
            name = rec.get("c")
            if isinstance(name, str) and name in streams:
                is_agent = self._reports[name].kind == "agent"
                if (rec["k"] in AGENT_KINDS) == is_agent:
                    streams[name].append((seq, rec))
        agent_streams = {n: r for n, r in streams.items() if self._reports[n].kind == "agent"}
        streams = {n: r for n, r in streams.items() if n not in agent_streams}
        for name, recs in streams.items():
            self.infer.answers[name] = deque((seq, float(r["t"]), r) for seq, r in recs
                                             if r["k"] == "infer")
        t0 = self.started if self.started is not None else time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edge-replay-") as tmp:
            self._tmp = Path(tmp)
            pool = await self.sandbox.ready()
            pool.message_clocks = self._message_clocks
            await asyncio.gather(*(self._replay_one(pool, name, recs)
                                   for name, recs in streams.items()),
                                 *(self._replay_agent(name, recs)
                                   for name, recs in agent_streams.items()))
            await self.sandbox.close()  # the sandbox's stop is part of the replay's time
        replay_s = time.perf_counter() - t0
        for seq, rec in items[last_in + 1:]:  # outputs written after the window's last step
            tail = self._live.get(str(rec.get("c")))
            if tail is not None and rec["k"] in ("pub", "kv"):
                self._recorded_output(tail, seq, float(rec["t"]), rec)
        for live in self._live.values():
            self._select_recorded(live)
            self._compare_effects(live)
        span = 0.0
        if first_in <= last_in:
            span = float(items[last_in][1]["t"]) - float(items[first_in][1]["t"])
        w = self.window
        window = {"from": w.t_from, "to": w.t_to if w.t_to != float("inf") else None,
                  "seq_from": items[first_in][0] if first_in <= last_in else None,
                  "seq_to": items[last_in][0] if first_in <= last_in else None}
        tools = [_tool_call(seq, rec) for seq, rec in items[first_in:last_in + 1]
                 if rec["k"] == "tool"] if first_in <= last_in else []
        return ReplayReport(window, last_in - start + 1 if first_in <= last_in else 0,
                            self.records.malformed, self._reports, replay_s, span, tools,
                            _policies(items, first_in, last_in))

    # -- planning --------------------------------------------------------------------------

    def _selected(self, name: str) -> bool:
        return self.systems is None or name in self.systems

    def _plan(self, items: list[tuple[int, dict[str, Any]]]) -> tuple[int, int, int]:
        """(first record to apply, first and last record inside the window)."""
        w = self.window
        inside = [i for i, (seq, rec) in enumerate(items) if w.contains(seq, float(rec["t"]))]
        if not inside:
            raise ReplayError("no record falls in the window (check --from/--to or --seq; "
                              f"the stream holds sequences {self.records.first_seq}.."
                              f"{self.records.last_seq})", reason="empty")
        first_in, last_in = inside[0], inside[-1]
        start = first_in
        names = {str(rec.get("c")) for _, rec in items[first_in:last_in + 1]
                 if rec.get("c") and rec["k"] in ("tick", "msg", "load", "unload")}
        for name in sorted(n for n in names if self._selected(n)):
            self._reports[name] = ComponentReport(name)
            real = ckpt = None
            for i in range(first_in, -1, -1):
                rec = items[i][1]
                if rec.get("c") == name and rec["k"] == "load":
                    if not rec.get("checkpoint"):
                        real = i
                        break
                    if ckpt is None:
                        ckpt = i
            begin = real if real is not None else ckpt
            if begin is None:  # loaded inside the window: its load is ahead
                continue
            if real is None:
                self._reports[name].exact_start = False
            start = min(start, begin)
        for name in self._agents.names(first_in, last_in):
            if name in self._reports:
                raise ReplayError(f"an agent and a component are both named '{name}'",
                                  component=name, reason="usage")
            self._reports[name] = ComponentReport(name, kind="agent")
            begin = self._agents.start_of(name, first_in)
            if begin is None:
                self._reports[name].exact_start = False
            else:
                start = min(start, begin)
        return start, first_in, last_in

    # -- applying records -------------------------------------------------------------------

    async def _replay_agent(self, name: str, recs: list[tuple[int, dict[str, Any]]]) -> None:
        live = LiveAgent(name)
        report = self._reports[name]

        def diverge(rep: ComponentReport, what: str, seq: int, t: float, recorded: Any,
                    replayed: Any, context: dict[str, Any] | None = None) -> None:
            step = report.decisions
            div = Divergence(name, what, step, seq, t, recorded, replayed, context=context or {})
            if rep.first is None or (seq, t) < (rep.first.seq, rep.first.t):
                rep.first = div

        for seq, rec in recs:
            try:
                await self._agents.apply(live, seq, rec, self.window.contains(seq, float(rec["t"])),
                                         report, diverge)
            except (KeyError, TypeError, ValueError) as err:
                raise ReplayError(f"record at stream seq {seq} ({rec['k']} of {name}) is "
                                  f"malformed: {type(err).__name__}: {err}", seq=seq,
                                  reason="malformed") from err
            await asyncio.sleep(0)

    async def _replay_one(self, pool: SandboxPool, name: str,
                          recs: list[tuple[int, dict[str, Any]]]) -> None:
        inside = False
        for seq, rec in recs:
            if not inside and self.window.contains(seq, float(rec["t"])):
                inside = True
                await pool.flush()  # what the warm-up did is not compared
                self.host.take(name)
            await self._apply(pool, seq, rec)
        await pool.flush()
        live = self._live.get(name)
        if live is not None:
            self._take_effects(live, live.step, live.seq, live.t, inside)

    async def _apply(self, pool: SandboxPool, seq: int, rec: dict[str, Any]) -> None:
        name = rec.get("c")
        if not isinstance(name, str) or name not in self._reports:
            return
        kind = rec["k"]
        t = float(rec["t"])
        inside = self.window.contains(seq, t)
        live = self._live.get(name)
        try:
            if kind in ("load", "unload") and live is not None and live.running:
                await pool.flush()  # message batches still in the worker finish first
            if kind == "load":
                if rec.get("checkpoint") and live is not None and live.running:
                    return  # a checkpoint of what already runs here
                await self._load(pool, name, rec, seq, t, inside)
            elif kind == "unload" and live is not None and live.running:
                await pool.unload(name)
                live.running = False
            elif kind == "tick" and live is not None and live.running:
                await self._tick(pool, live, seq, t, rec, inside)
            elif kind == "msg" and live is not None and live.running:
                await self._deliver(pool, live, seq, t, rec, inside)
            elif kind in ("pub", "kv") and live is not None:
                self._recorded_output(live, seq, t, rec)
            elif kind == "infer" and inside:
                shas = self._reports[name].models.setdefault(str(rec["model"]), [])
                sha = rec.get("model_sha")
                if isinstance(sha, str) and sha not in shas:
                    shas.append(sha)
        except (KeyError, TypeError, ValueError) as err:
            raise ReplayError(f"record at stream seq {seq} ({kind} of {name}) is malformed: "
                              f"{type(err).__name__}: {err}", seq=seq, reason="malformed") from err

    @staticmethod
    def _recorded_output(live: LiveComponent, seq: int, t: float, rec: dict[str, Any]) -> None:
        """A ``pub`` or ``kv`` record: kept with the load and step it belongs to (it may be
        written before its call's record, or after the window's end), selected once every
        record is applied (:meth:`_select_recorded`)."""
        step = int(rec.get("step", 0))
        if rec["k"] == "kv":
            value = unb64(rec["value"], "value")
            live.rec_kv_records.append((live.gen, step, int(rec.get("i", 0)),
                                        _Effect(step, seq, t, str(rec["key"]), digest(value),
                                                value), str(rec.get("dev", ""))))
            return
        dev = rec.get("dev") or {}
        if not isinstance(dev, dict):
            raise ValueError("field 'dev' of a pub record is not an object")
        fates = {str(k): int(v) for k, v in dev.items()}
        for i, entry in enumerate(rec["pubs"]):
            data = unb64(entry[2], "pubs") if len(entry) > 2 else None
            live.rec_pub_records.append((live.gen, step, i, _Effect(step, seq, t, str(entry[0]),
                                                                    str(entry[1]), data),
                                         fates if i == 0 else {}))

    @staticmethod
    def _select_recorded(live: LiveComponent) -> None:
        """The recorded outputs of the calls replayed inside the window, in call order, and the
        counts of what the device's pipeline did with them."""
        device = live.report.device
        pubs = sorted((r for r in live.rec_pub_records if (r[0], r[1]) in live.inside_steps),
                      key=lambda r: (r[0], r[1]))
        at = live.inside_steps
        live.rec_pubs = [dataclasses.replace(r[3], seq=at[r[0], r[1]][0], t=at[r[0], r[1]][1])
                         for r in pubs]
        for r in pubs:
            for fate, n in r[4].items():
                device[fate] = device.get(fate, 0) + n
        kvs = sorted((r for r in live.rec_kv_records if (r[0], r[1]) in live.inside_steps),
                     key=lambda r: (r[0], r[1], r[2]))
        live.rec_kv = [dataclasses.replace(r[3], seq=at[r[0], r[1]][0], t=at[r[0], r[1]][1])
                       for r in kvs]
        for _, _, _, _, kv_fate in kvs:
            if kv_fate:
                device[f"kv_{kv_fate}"] = device.get(f"kv_{kv_fate}", 0) + 1

    async def _load(self, pool: SandboxPool, name: str, rec: dict[str, Any], seq: int = 0,
                    t: float = 0.0, inside: bool = False) -> None:
        assert self._tmp is not None
        module = unb64(rec["module"], "module")
        sha = str(rec["sha256"])
        recorded = self._recorded_manifest(name, rec, module, sha)
        manifest, what_if = recorded, False
        if name in self.what_if:
            path, alt = self.what_if[name]
            manifest = alt if alt is not None else dataclasses.replace(recorded, module=path)
            what_if = True
            if manifest.columns != recorded.columns:
                raise ReplayError(f"what-if candidate for '{name}' queries {list(manifest.columns)}"
                                  f", the recorded version {list(recorded.columns)}: the recorded "
                                  "inputs do not fit it", component=name, reason="usage")
            sha = _sha(path)
        kv = {k: unb64(v, f"kv.{k}") for k, v in dict(rec.get("kv", {})).items()}
        live = self._live.get(name)
        report = self._reports[name]
        running = Path(manifest.module).read_bytes() if what_if else module
        reads_clock = imports_clock(running)
        report.reads_clock = report.reads_clock or reads_clock
        # a load (not a checkpoint: the device did not run edge_init there) feeds edge_init the
        # clock values it read on the device
        fed = not rec.get("checkpoint") and reads_clock
        if fed and rec.get("clock_cut"):
            raise ReplayError(f"the load of '{name}' (stream seq {seq}) read the clock "
                              f"{rec['clock_cut']} times more than a record keeps",
                              component=name, seq=seq, reason="not-recorded")
        feed = _clock_list(rec.get("clock", []), name, seq, "load") if fed else []
        try:
            await pool.load(manifest, kv, clock=feed if fed else None)
        except EdgeError as err:
            raise ReplayError(f"cannot load {name} {manifest.version} for the replay: "
                              f"{err.message}", component=name, reason="load") from err
        version: dict[str, Any] = {"version": manifest.version, "sha256": sha, "what_if": what_if}
        if isinstance(rec.get("kv_rev"), dict):
            version["kv_rev"] = dict(rec["kv_rev"])
        report.versions.append(version)
        if fed:
            read = [tuple(c) for c in pool.init_clocks(name)[0]]
            if read != feed and inside:
                self._reports[name].first = _earliest(
                    report.first, Divergence(name, "clock", int(rec.get("step", 0)), seq, t,
                                             feed, read, context={"call": "edge_init"}))
        if live is None:
            live = self._live[name] = LiveComponent(recorded, report)
        live.manifest = recorded
        live.ids = None
        live.running = True
        live.gen += 1
        if rec.get("checkpoint"):  # the device ran no edge_init here: its outputs are not its
            self.host.take(name)
            return
        if inside:  # edge_init's outputs are step 0 of the load
            live.inside_steps[(live.gen, 0)] = (seq, t)
        self._take_effects(live, 0, seq, t, inside)

    def _recorded_manifest(self, name: str, rec: dict[str, Any], module: bytes,
                           sha: str) -> Manifest:
        assert self._tmp is not None
        text = rec.get("manifest")
        if not isinstance(text, str) or not text:
            raise ReplayError(f"the load record of '{name}' has no manifest", component=name,
                              reason="malformed")
        mod_path = self._tmp / f"{sha}.wasm"
        if not mod_path.exists():
            mod_path.write_bytes(module)
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ReplayError(f"the recorded manifest of '{name}' is not TOML: {err}",
                              component=name, reason="malformed") from err
        doc["module"] = str(mod_path)
        return parse_manifest(doc, self._tmp / f"{name}.manifest.toml", self.device)

    async def _tick(self, pool: SandboxPool, live: LiveComponent, seq: int, t: float,
                    rec: dict[str, Any], inside: bool) -> None:
        m = live.manifest
        name = m.name
        if rec.get("too_large"):
            raise ReplayError(f"tick {rec.get('step')} of '{name}' (stream seq {seq}) was too "
                              f"large to record ({rec['too_large']} bytes of columns)",
                              component=name, seq=seq, reason="not-recorded")
        ids = [str(i) for i in rec["ids"]]
        n = len(ids)
        inputs = unpack_columns(rec["in"], len(m.columns), n, "in")
        views = pool.batch(name, n)
        for view, col in zip(views, inputs, strict=True):
            view[:] = col
        if rec.get("clock_cut"):
            raise ReplayError(f"tick {rec.get('step')} of '{name}' (stream seq {seq}) read the "
                              f"clock {rec['clock_cut']} times more than a record keeps",
                              component=name, seq=seq, reason="not-recorded")
        clocks = _clock_list(rec.get("clock", []), name, seq, "tick")
        send = ids if ids != live.ids else None
        report = live.report
        ok = await pool.tick(name, n, float(rec["dt"]), send,
                             clock=clocks if report.reads_clock else None)
        read = pool.tick_clocks(name)[0] if report.reads_clock else []
        live.ids = ids if ok else None
        step = int(rec.get("step", 0))
        self._take_effects(live, step, seq, t, inside)
        if not inside:
            report.warmup_ticks += 1
            return
        live.inside_steps[(live.gen, step)] = (seq, t)
        report.ticks += 1
        rec_ok = bool(rec["ok"])
        writable = m.writable
        if ok != rec_ok:
            report.ticks_differing += 1
            self._diverge(live, Divergence(name, "ok", step, seq, t, rec_ok, ok,
                                           context=self._context(m, ids, inputs, rec)))
            return
        if not ok:
            return
        if read != clocks:  # read the clock more or fewer times, or the other clock
            report.ticks_differing += 1
            self._diverge(live, Divergence(name, "clock", step, seq, t, clocks, read,
                                           context={"call": "edge_tick",
                                                    **self._context(m, ids, inputs, rec)}))
            return
        recorded = unpack_columns(rec["out"], len(writable), n, "out")
        replayed = np.stack([views[i] for i in writable]) if writable else recorded
        same = np.array_equal(recorded.view(np.uint64), replayed.view(np.uint64))
        if same:
            return
        report.ticks_differing += 1
        diff = np.argwhere(recorded.view(np.uint64) != replayed.view(np.uint64))
        c, e = (int(x) for x in diff[0])
        self._diverge(live, Divergence(name, "columns", step, seq, t,
                                       float(recorded[c, e]), float(replayed[c, e]),
                                       field=m.columns[writable[c]], entity=ids[e],
                                       context=self._context(m, ids, inputs, rec)))

    async def _deliver(self, pool: SandboxPool, live: LiveComponent, seq: int, t: float,
                       rec: dict[str, Any], inside: bool) -> None:
        if rec.get("too_large"):
            raise ReplayError(f"message batch {rec.get('step')} of '{live.manifest.name}' (stream "
                              f"seq {seq}) was too large to record ({rec['too_large']} bytes)",
                              component=live.manifest.name, seq=seq, reason="not-recorded")
        msgs = [(str(s), unb64(d, "msgs")) for s, d in rec["msgs"]]
        name = live.manifest.name
        step = int(rec.get("step", 0))
        feed: list[tuple[int, int]] | None = None
        if live.report.reads_clock:  # its reads answer the recorded values, in order
            if rec.get("clock_cut") or rec.get("clock_lost"):
                why = (f"read the clock {rec['clock_cut']} times more than a record keeps"
                       if rec.get("clock_cut") else
                       "was recorded without its clock reads (the component was unloaded first)")
                raise ReplayError(f"message batch {step} of '{name}' (stream seq {seq}) {why}",
                                  component=name, seq=seq, reason="not-recorded")
            feed = _clock_list(rec.get("clock", []), name, seq, "msg")
            live.rec_msg_clocks.append((step, seq, t, feed, inside))
        await pool.deliver(name, msgs, int(rec.get("hops", 0)), clock=feed)
        self._take_effects(live, step, seq, t, inside)
        if inside:
            live.report.messages += 1
            live.inside_steps[(live.gen, step)] = (seq, t)

    def _take_effects(self, live: LiveComponent, step: int, seq: int, t: float, inside: bool) -> None:
        """Effects that arrived so far (they may lag their call: the publish comparison goes by
        order, and a divergence names the recorded effect's step when there is one)."""
        live.step, live.seq, live.t = step, seq, t
        pubs, kvs = self.host.take(live.manifest.name)
        if not inside:
            return
        live.rep_pubs += [_Effect(step, seq, t, s, digest(d), d) for s, d in pubs]
        live.rep_kv += [_Effect(step, seq, t, k, digest(v), v) for k, v in kvs]

    def _message_clocks(self, name: str, clocks: Sequence[tuple[int, int]], cut: int) -> None:
        """The replay pool's listener: the reads of each message batch, in the order sent."""
        live = self._live.get(name)
        if live is not None and live.report.reads_clock:
            live.rep_msg_clocks.append([(int(k), int(v)) for k, v in clocks])

    # -- comparing --------------------------------------------------------------------------

    def _infer_mismatch(self, name: str, seq: int, t: float, recorded: str, replayed: str) -> None:
        live = self._live.get(name)
        if live is None:
            return
        if seq < 0:  # more calls than recorded: at the call being replayed
            seq, t = live.seq, live.t
        if not self.window.contains(seq, t):
            return
        self._diverge(live, Divergence(name, "infer", live.step, seq, t, recorded, replayed))

    @staticmethod
    def _context(m: Manifest, ids: list[str], inputs: np.ndarray,
                 rec: dict[str, Any]) -> dict[str, Any]:
        shown = ids[:8]
        cols = {f: [float(v) for v in inputs[i][:8]] for i, f in enumerate(m.columns)}
        return {"dt": rec.get("dt"), "entities": shown, "inputs": cols}

    @staticmethod
    def _diverge(live: LiveComponent, div: Divergence) -> None:
        first = live.report.first
        if first is None or (div.seq, div.t) < (first.seq, first.t):
            live.report.first = div

    def _compare_effects(self, live: LiveComponent) -> None:
        report = live.report
        name = live.manifest.name
        for i, (step, seq, t, recorded, inside) in enumerate(live.rec_msg_clocks):
            replayed = live.rep_msg_clocks[i] if i < len(live.rep_msg_clocks) else None
            if inside and replayed != recorded:  # more, fewer or other reads than recorded
                self._diverge(live, Divergence(name, "clock", step, seq, t, recorded, replayed,
                                               context={"call": "edge_on_message"}))
                break
        for what, rec_list, rep_list in (("publish", live.rec_pubs, live.rep_pubs),
                                         ("kv", live.rec_kv, live.rep_kv)):
            count = max(len(rec_list), len(rep_list))
            differing = 0
            for i in range(count):
                a = rec_list[i] if i < len(rec_list) else None
                b = rep_list[i] if i < len(rep_list) else None
                if a is not None and b is not None and (a.subject, a.sha) == (b.subject, b.sha):
                    continue
                differing += 1
                if differing == 1:
                    at = a if a is not None else b
                    assert at is not None
                    self._diverge(live, Divergence(name, what, at.step, at.seq, at.t,
                                                   _show(a), _show(b)))
            if what == "publish":
                report.publishes, report.publishes_differing = len(rec_list), differing
            else:
                report.kv_puts, report.kv_differing = len(rec_list), differing


def _tool_call(seq: int, rec: dict[str, Any]) -> dict[str, Any]:
    """A ``tool`` record as the report shows it (a record lacking a field stops the replay)."""
    try:
        call = {"seq": seq, "t": float(rec["t"]), "tool": str(rec["tool"]),
                "caller": str(rec["caller"]), "code": str(rec["code"]),
                "request_sha": str(rec["request_sha"]), "reply_sha": str(rec["reply_sha"])}
    except (KeyError, TypeError, ValueError):
        raise ReplayError(f"the tool record at stream seq {seq} lacks a field",
                          seq=seq, reason="malformed") from None
    for part in ("request", "reply"):
        raw = rec.get(part)
        value: Any = None
        if isinstance(raw, str):
            try:
                value = json.loads(unb64(raw, part) or b"{}")
            except ReplayError as err:
                raise ReplayError(f"the tool record at stream seq {seq}: {err.message}",
                                  seq=seq, reason="malformed") from None
            except ValueError:
                value = None  # recorded as it was sent, not JSON
        call[part] = value
    return call


def _clock_list(raw: Any, name: str, seq: int, kind: str) -> list[tuple[int, int]]:
    """A record's ``clock`` field as ``(kind, value)`` pairs (a malformed one stops the
    replay with its stream sequence)."""
    try:
        out = [(int(k), int(v)) for k, v in raw]
        good = all(k in (CLOCK_MS, CLOCK_NS) for k, _ in out)
    except (TypeError, ValueError):
        out, good = [], False
    if not good:
        raise ReplayError(f"the {kind} record at stream seq {seq} of '{name}' has a malformed "
                          f"clock field", component=name, seq=seq, reason="malformed")
    return out


def _earliest(first: Divergence | None, div: Divergence) -> Divergence:
    return div if first is None or (div.seq, div.t) < (first.seq, first.t) else first


def _policies(items: list[tuple[int, dict[str, Any]]], first_in: int,
              last_in: int) -> list[dict[str, Any]]:
    """The ``policy`` records in use over the window: the last one before it and those in it."""
    if first_in > last_in:
        return []
    keys = ("file", "sha256", "generation", "rules", "limits", "enforcing")
    out: list[dict[str, Any]] = []
    for i in range(first_in - 1, -1, -1):
        seq, rec = items[i]
        if rec["k"] == "policy":
            out.append({"seq": seq, "t": rec.get("t"), **{k: rec.get(k) for k in keys}})
            break
        if rec["k"] == "start":  # a new run: its own policy record follows the start
            break
    out += [{"seq": seq, "t": rec.get("t"), **{k: rec.get(k) for k in keys}}
            for seq, rec in items[first_in:last_in + 1] if rec["k"] == "policy"]
    return out


#: How the report names what the device's effects pipeline did (ComponentReport.device).
DEVICE_FATES = {"policy_denied": "the policy denied {n} of these publishes",
                "rate_limited": "the publish rate limit refused {n}",
                "hop_limited": "the hop limit refused {n}",
                "lane_dropped": "{n} were dropped from a full queue",
                "kv_policy_denied": "the policy denied {n} of these KV puts",
                "kv_lane_dropped": "{n} KV puts were dropped from a full queue",
                "kv_coalesced": "{n} KV puts were replaced by a later put of the key while "
                                "queued (not written)"}


def _device_sentence(c: ComponentReport) -> str:
    return "; ".join(DEVICE_FATES.get(k, k + " {n}").format(n=n)
                     for k, n in sorted(c.device.items()))


def _show(e: _Effect | None) -> str | None:
    if e is None:
        return None
    if e.data is not None and len(e.data) <= 200:
        return f"{e.subject} {e.data.decode('utf-8', 'replace')}"
    return f"{e.subject} sha {e.sha}"


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


async def replay(js: Any, device: str, window: Window, *, stream: str = "REC",
                 systems: Sequence[str] | None = None,
                 what_if: Mapping[str, Path] | None = None,
                 agents: Mapping[str, AgentFactory] | None = None) -> ReplayReport:
    """Read the window from ``stream`` (a device's ``REC`` or a hub's copy) and replay it
    (the arguments are :class:`Replayer`'s). The replay's sandbox worker starts while the
    records are read; the report's ``replay_s`` counts both."""
    from edge.replay.source import read_records

    t0 = time.perf_counter()
    sandbox = ReplaySandbox(device)
    sandbox.begin()
    try:
        records = await read_records(js, stream, device, window)
        replayer = Replayer(device, records, window, systems=systems, what_if=what_if,
                            agents=agents, sandbox=sandbox, started=t0)
    except BaseException:
        await sandbox.close()
        raise
    return await replayer.run()


__all__ = ["CaptureHost", "ComponentReport", "Divergence", "ReplayReport", "ReplaySandbox",
           "Replayer", "replay"]
