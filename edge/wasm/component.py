"""The runtime's record of one loaded component: state, counters, worker, batch."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from edge.errors import SandboxError
from edge.wasm.abi import ModuleInfo
from edge.wasm.columns import CopyBatch, OutputArea, WorldColumns
from edge.wasm.grants import PublishGrant
from edge.wasm.manifest import Manifest
from edge.wasm.procs import WorkerProcess
from edge.wasm.quotas import KvUsage, TokenBucket

#: Counters of each component (see docs/sandbox.md, "Status").
COUNTERS = ("ticks", "messages", "published", "denied", "dropped", "errors", "logs_dropped",
            "traps", "out_of_gas", "deadlines", "crashes", "infers", "infer_errors",
            "denied_infer", "protocol_errors", "effects_dropped", "rate_limited", "loop_dropped",
            "kv_refused", "policy_denied", "kv_failures")


@dataclass
class Component:
    manifest: Manifest
    wasm: bytes
    info: ModuleInfo
    kv: dict[str, bytes]
    handle: int = 0
    state: str = "starting"
    worker: WorkerProcess | None = None
    generation: int = 0
    restarts: int = 0
    failures: deque[float] = field(default_factory=deque)
    last_fault: SandboxError | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    gas_last: int = 0
    batch: CopyBatch | None = None
    batch_gen: int = 0
    batch_sent: bool = False
    ids: list[str] | None = None
    ids_sent: bool = False
    bound: tuple[object, ...] | None = None  # what the worker has bound (shared mode)
    shared_refused: bool = False
    output: OutputArea | None = None  # shared mode: where the worker writes
    world: WorldColumns | None = None  # shared mode: the runtime's own view of the columns
    timer: asyncio.TimerHandle | None = None
    denied_logged_at: float = 0.0
    #: [replay hook] the clock values its last tick read, and the reads not reported (clock
    #: modes record / replay only; edge.wasm.protocol.CLOCK_RECORD)
    tick_clocks: list[tuple[int, int]] = field(default_factory=list)
    tick_clocks_cut: int = 0
    #: [replay hook] the clock values its last load (start function and ``edge_init``) read,
    #: the reads not reported, and (replay clock mode) the values those reads answer
    init_clocks: list[tuple[int, int]] = field(default_factory=list)
    init_clocks_cut: int = 0
    init_feed: tuple[tuple[int, int], ...] = ()
    loading: bool = False  # its first start, inside pool.load (a fault there refuses the load)
    #: a staged instance (SandboxPool.stage): its calls' effects are held here, in order, and
    #: handed to the host at the promotion; None = applied at once
    held: list[tuple[object, int, str]] | None = None
    kv_base: dict[str, bytes] | None = None  # staged: the KV its edge_init was given
    #: the name its worker knows the instance by ("" = its component name; a staged successor
    #: has one of its own, so it can run beside the instance it replaces in one worker)
    wire_name: str = ""
    grant: PublishGrant = field(init=False)
    kv_usage: KvUsage = field(init=False)  # what its KV holds, against limits.kv_keys/kv_bytes
    publish_bucket: TokenBucket = field(init=False)  # limits.publish_rate / publish_burst
    limit_reported_at: dict[str, float] = field(default_factory=dict)  # limit -> last event
    limit_unreported: dict[str, int] = field(default_factory=dict)  # limit -> drops since

    def __post_init__(self) -> None:
        lim = self.manifest.limits
        self.grant = PublishGrant(self.manifest.publish)
        self.kv_usage = KvUsage.of(self.kv, lim.kv_keys, lim.kv_bytes)
        self.publish_bucket = TokenBucket(lim.publish_rate, lim.publish_burst, time.monotonic())

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def wire(self) -> str:
        return self.wire_name or self.manifest.name

    def discard_storage(self) -> None:
        """Forget the batch files (copy mode and output area)."""
        if self.batch is not None:
            self.batch.discard()
            self.batch = None
        if self.output is not None:
            self.output.discard()
            self.output = None
        self.world = None
