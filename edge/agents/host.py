"""``AgentHost``: runs the configured native agents of a device, each isolated from the others.

It is a layer (``start(ctx)`` / ``stop()`` / ``status()``, section ``agents``). Per
agent a supervisor task builds the agent from its factory, subscribes to its subjects, and loops:
wait for input or the agent's interval, ``read_world``, ``decide`` (under a deadline), send the
commands (each a request answered by the device's command router, waited for at most
``command_timeout`` seconds), record the decisions with each command's answer (or why there was
none). An exception (or a deadline overrun) in ``observe``, ``read_world``
or ``decide`` is a fault: counted, logged, published on ``edge.<d>.evt.<entity>.agent_fault`` and
shown in ``edge status``; the agent is then rebuilt after an exponential backoff while the other
agents keep running.

It also serves the ``edge-agents`` micro service:

* ``edge.<d>.api.agent.decisions`` ``{entity?, agent?, limit?}`` -> recent decision records;
* ``edge.<d>.api.agent.list`` ``{}`` -> the agents and their state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from edge.nats import subjects
from edge.agents.base import Agent, Decision
from edge.agents.config import AgentSpec
from edge.agents.decisions import DEFAULT_QUERY_LIMIT, MAX_INGESTED_BYTES, DecisionLog, decision_filter
from edge.agents.record import AgentRecorder, entity_view, message_payload
from edge.backoff import Backoff
from edge.errors import EdgeError
from edge.layer import DeviceContext
from edge.errors import LifecycleError
from edge.nats.commands import CommandClient, CommandError, Reason, answer_error, new_command_id
from edge.nats.service import RequestError, endpoint, loads
from edge.world.store import World

log = logging.getLogger("edge.agents")

SERVICE_NAME = "edge-agents"
SERVICE_VERSION = "1.0.0"
DEFAULT_BACKOFF_INITIAL_S = 0.5  # first restart delay after a fault
DEFAULT_BACKOFF_MAX_S = 30.0  # longest restart delay
STABLE_AFTER_S = 30.0  # an agent running this long without a fault resets its backoff
DEFAULT_DECIDE_DEADLINE_S = 1.0  # a decide() running longer is a fault
DEFAULT_COMMAND_TIMEOUT_S = 1.0  # a decision's command waits this long for its answer
MAX_QUERY_LIMIT = 1000
STOP_TIMEOUT_S = 2.0  # stop() waits this long for an agent task to end
READY_TIMEOUT_S = 5.0  # start() waits this long for each agent to subscribe
FAULT_KIND = "agent_fault"


class AgentRequestError(RequestError):
    """A request to the agents API is malformed."""


class AgentFault(EdgeError):
    """An agent raised or overran its deadline; carries the agent, the phase and the cause."""

    def __init__(self, message: str, *, agent: str, phase: str, cause: str | None = None) -> None:
        super().__init__(message, agent=agent, phase=phase, cause=cause)
        self.agent = agent
        self.phase = phase


class AgentRunner:
    """Supervises one agent: build, feed, decide, restart on fault."""

    def __init__(self, spec: AgentSpec, host: AgentHost) -> None:
        self.spec = spec
        self.host = host
        self.agent: Agent | None = None
        self.state = "starting"
        self.decisions = 0
        self.commands = 0
        self.faults = 0
        self.restarts = 0
        self.last_error: str | None = None
        self.last_decision: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self._fault: AgentFault | None = None
        self._subs: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._recording: set[asyncio.Future[None]] = set()  # records handed on as the task was cancelled
        self._stopping = False
        self.ready = asyncio.Event()  # set once the first instance is subscribed (or has failed)

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"edge.agent.{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        task = self._task
        if task is not None:
            # cancel until it ends: a cancellation can be swallowed by a wait_for deep in a client
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while not task.done() and time.monotonic() < deadline:
                task.cancel()
                await asyncio.wait({task}, timeout=0.05)
            if not task.done():
                log.error("agent %s did not stop within %.1f s", self.name, STOP_TIMEOUT_S)
        if self._recording:  # the record of a decision whose answer the stop stopped waiting for
            await asyncio.wait(set(self._recording), timeout=STOP_TIMEOUT_S)
        await self._unsubscribe()
        self.state = "stopped"

    async def _supervise(self) -> None:
        backoff = Backoff(self.host.backoff_initial, self.host.backoff_max, stable_after_s=STABLE_AFTER_S)
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001  an agent's bug must not take the host down
                if self._stopping:
                    return
                fault = err if isinstance(err, AgentFault) else AgentFault(
                    f"agent {self.name} failed: {type(err).__name__}: {err}",
                    agent=self.name, phase="run", cause=type(err).__name__)
                delay = backoff.next(ran_s=time.monotonic() - started)
                await self._on_fault(fault, delay)
                self.state = "backoff"
                self.ready.set()
                await asyncio.sleep(delay)
                self.restarts += 1

    async def _run_once(self) -> None:
        nc = self.host.nc
        agent = self.spec.factory()
        agent.device = self.host.device
        self.agent = agent
        rec = self.host.recorder
        if rec is not None:  # [replay hook] (edge.agents.record)
            rec.on_agent(agent, self.spec.table)
        self._fault = None
        self._wake.clear()
        for subject in agent.subjects(self.host.device):
            self._subs.append(await nc.subscribe(subject, cb=self._on_msg))
        await nc.flush()
        self.state = "running"
        self.ready.set()
        try:
            while not self._stopping:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(agent.interval):
                        await self._wake.wait()
                self._wake.clear()
                if self._fault is not None:
                    raise self._fault
                now = time.monotonic()
                try:
                    agent.read_world(self.host.world, now)
                except Exception as err:
                    raise self._fault_of(err, "read_world") from err
                if rec is not None:  # [replay hook] what read_world saw
                    rec.on_read(self.name, now, entity_view(self.host.world, agent.entity))
                try:
                    async with asyncio.timeout(self.host.decide_deadline):
                        decisions = await agent.decide(now)
                except TimeoutError as err:
                    raise AgentFault(
                        f"agent {self.name}: decide() took longer than {self.host.decide_deadline} s",
                        agent=self.name, phase="decide", cause="deadline") from err
                except Exception as err:
                    raise self._fault_of(err, "decide") from err
                if rec is not None:  # [replay hook]
                    rec.on_decide(self.name, decisions or ())
                await self._act(agent, decisions)
        finally:
            await self._unsubscribe()

    def _fault_of(self, err: Exception, phase: str) -> AgentFault:
        return AgentFault(f"agent {self.name}: {phase}() raised {type(err).__name__}: {err}",
                          agent=self.name, phase=phase, cause=type(err).__name__)

    async def _on_msg(self, msg: Msg) -> None:
        agent = self.agent
        if agent is None or self._fault is not None:
            return
        payload = message_payload(msg.data)
        now = time.monotonic()
        rec = self.host.recorder
        if rec is not None:  # [replay hook] (edge.agents.record)
            rec.on_observe(self.name, msg.subject, msg.data, now)
        try:
            if agent.observe(msg.subject, payload, now):
                self._wake.set()
        except Exception as err:  # noqa: BLE001  reported through the supervisor
            self._fault = self._fault_of(err, "observe")
            self._wake.set()

    async def _unsubscribe(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _act(self, agent: Agent, decisions: Sequence[Decision]) -> None:
        for d in decisions or ():
            if not isinstance(d, Decision):
                raise AgentFault(f"agent {self.name}: decide() returned {type(d).__name__}, not Decision",
                                 agent=self.name, phase="decide", cause="type")
            record: dict[str, Any] = {
                "t": time.time(), "entity": agent.entity, "agent": agent.name, "kind": agent.kind,
                "decision": d.decision, "reason": d.reason, "inputs": dict(d.inputs),
            }
            if d.command is not None:
                target = d.command.entity or agent.entity
                subject = subjects.command(self.host.device, target, d.command.verb)
                args = dict(d.command.args)
                entry: dict[str, Any] = {"entity": target, "verb": d.command.verb, "subject": subject, "args": args}
                command_id = new_command_id()
                try:
                    res = await self.host.commands.send(target, d.command.verb, args, command_id=command_id,
                                                        timeout=self.host.command_timeout, caller=self.name)
                except asyncio.CancelledError:
                    # the agent stops while the answer is awaited: the command went out (it may
                    # run), so its decision is recorded all the same, as unanswered in time
                    entry["id"] = command_id
                    entry["answer"] = answer_error(
                        command_id, Reason.TIMEOUT,
                        f"agent {self.name} stopped before the answer came; the command may still run")
                    self.commands += 1
                    record["command"] = entry
                    self._count(record)
                    task = asyncio.ensure_future(self.host.decisions.record(record))  # not cancelled with this one
                    self._recording.add(task)
                    task.add_done_callback(self._recording.discard)
                    raise
                except CommandError as err:  # no answer in time (the command may still run), or none at all
                    entry["id"] = err.id
                    entry["answer"] = err.to_answer()
                    log.debug("agent %s: %s", self.name, err.message)
                else:
                    entry.update(id=res.id, answer=res.answer, rtt_ms=res.rtt_ms)
                self.commands += 1
                record["command"] = entry
            self._count(record)
            await self.host.decisions.record(record)

    def _count(self, record: dict[str, Any]) -> None:
        self.decisions += 1
        self.last_decision = record

    async def _on_fault(self, fault: AgentFault, backoff: float) -> None:
        self.faults += 1
        self.last_error = fault.message
        log.warning("%s; restarting in %.1f s", fault.message, backoff)
        body = {**fault.to_dict(), "faults": self.faults, "restart_in_s": backoff}
        self.host.ctx.events.emit(subjects.event(self.host.device, self.spec.entity, FAULT_KIND),
                                  json.dumps(body).encode())

    def status(self) -> dict[str, Any]:
        out = {
            "name": self.name, "kind": self.spec.kind, "entity": self.spec.entity, "state": self.state,
            "decisions": self.decisions, "commands": self.commands, "faults": self.faults,
            "restarts": self.restarts, "last_error": self.last_error,
            "last_decision": self.last_decision,
        }
        if self.agent is not None:
            out["agent"] = self.agent.describe()
        return out


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class AgentHost:
    """Runs :class:`AgentSpec` agents and records their decisions (a layer).

    ``wasm_agents`` (given by the composition root) lists the loaded wasm components that act as
    agents (they subscribe and publish), shown in the status.
    """

    name = "agents"

    def __init__(
        self,
        specs: Sequence[AgentSpec],
        *,
        decisions: DecisionLog | None = None,
        backoff_initial: float = DEFAULT_BACKOFF_INITIAL_S,
        backoff_max: float = DEFAULT_BACKOFF_MAX_S,
        decide_deadline: float = DEFAULT_DECIDE_DEADLINE_S,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
        wasm_agents: Callable[[], list[str]] | None = None,
    ) -> None:
        self.wasm_agents = wasm_agents
        self.specs = list(specs)
        self._decisions = decisions
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.decide_deadline = decide_deadline
        self.command_timeout = command_timeout
        self._commands: CommandClient | None = None
        self.runners: dict[str, AgentRunner] = {}
        self._ctx: DeviceContext | None = None
        self._service: Service | None = None
        self._decision_sub: Subscription | None = None
        #: [replay hook] told what each agent saw and decided; None = not recorded
        self.recorder: AgentRecorder | None = None

    # -- wiring -------------------------------------------------------------------------------

    @property
    def ctx(self) -> DeviceContext:
        if self._ctx is None:
            raise LifecycleError("the agent host is not started; call start(ctx) first")
        return self._ctx

    @property
    def device(self) -> str:
        return self.ctx.device

    @property
    def world(self) -> World:
        return self.ctx.world

    @property
    def nc(self) -> Client:
        return self.ctx.nc

    @property
    def commands(self) -> CommandClient:
        if self._commands is None:
            raise LifecycleError("the agent host is not started; call start(ctx) first")
        return self._commands

    @property
    def decisions(self) -> DecisionLog:
        if self._decisions is None:
            raise LifecycleError("the agent host is not started; call start(ctx) first")
        return self._decisions

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        self._commands = CommandClient(ctx.nc, ctx.device)
        if self._decisions is None:
            self._decisions = DecisionLog(ctx.device)
        await self._decisions.start(ctx.nc, ctx.events)
        await self._start_service(ctx.nc)
        self._decision_sub = await ctx.nc.subscribe(decision_filter(ctx.device), cb=self._on_decision)
        seen: set[str] = set()
        for spec in self.specs:
            if spec.name in seen:
                raise EdgeError(f"two agents are named '{spec.name}'", agent=spec.name)
            seen.add(spec.name)
            runner = AgentRunner(spec, self)
            self.runners[spec.name] = runner
            runner.start()
        for runner in self.runners.values():
            await asyncio.wait({asyncio.ensure_future(runner.ready.wait())}, timeout=READY_TIMEOUT_S)
        log.info("agent host started %d agent(s)", len(self.runners))

    async def stop(self) -> None:
        for runner in list(self.runners.values()):
            await runner.stop()
        if self._service is not None:
            await self._service.stop()
            self._service = None
        if self._decision_sub is not None:
            with contextlib.suppress(Exception):
                await self._decision_sub.unsubscribe()
            self._decision_sub = None

    async def _on_decision(self, msg: Msg) -> None:
        """Decision records of agents this host does not run (wasm agents) join the ring."""
        if len(msg.data) > MAX_INGESTED_BYTES:
            self.decisions.too_large += 1
            return
        try:
            record = loads(msg.data)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            self.decisions.malformed += 1
            return
        if record.get("agent") not in self.runners:
            record.setdefault("entity", msg.subject.split(".")[3])
            self.decisions.ingest(record)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "agents": [r.status() for r in self.runners.values()],
            "decisions": self._decisions.status() if self._decisions else {},
        }
        if self.wasm_agents is not None:  # wasm components with message grants are wasm agents
            out["wasm"] = sorted(self.wasm_agents())
        return out

    # -- API ----------------------------------------------------------------------------------

    async def _start_service(self, nc: Client) -> None:
        svc = await add_service(nc, name=SERVICE_NAME, version=SERVICE_VERSION,
                                description=f"agents of device {self.device}",
                                metadata={"device": self.device})
        endpoints: list[tuple[str, Handler, str]] = [
            ("decisions", self._api_decisions, "Recent decision records {entity?, agent?, limit?}."),
            ("list", self._api_list, "Agents and their state."),
        ]
        for verb, handler, doc in endpoints:
            await svc.add_endpoint(name=f"agent-{verb}", subject=subjects.api(self.device, "agent", verb),
                                   handler=self._wrap(handler), metadata={"doc": doc})
        self._service = svc

    @staticmethod
    def _wrap(handler: Handler) -> Callable[[Request], Awaitable[None]]:
        return endpoint(handler, name="edge-agents")

    async def _api_decisions(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        entity, agent, limit = body.get("entity"), body.get("agent"), body.get("limit", DEFAULT_QUERY_LIMIT)
        for key, value in (("entity", entity), ("agent", agent)):
            if value is not None and not isinstance(value, str):
                raise AgentRequestError(f"'{key}' must be a string", key=key)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_LIMIT:
            raise AgentRequestError(f"'limit' must be an integer 1..{MAX_QUERY_LIMIT}", key="limit")
        return self.decisions.query(entity=entity, agent=agent, limit=limit)

    async def _api_list(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return [r.status() for r in self.runners.values()]
