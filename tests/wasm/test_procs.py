"""One worker process as seen from the runtime (edge.wasm.procs) and the worker's process setup
(edge.wasm.worker.__main__): sessions, dying with the runtime."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sandbox_support import DEVICE, ROOT, Recorder

from edge.errors import SandboxError
from edge.wasm.pool import SandboxPool
from edge.wasm.procs import WorkerProcess
from edge.wasm.protocol import HEADER, encode
from edge.wasm.wire import decode_ping

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def pool() -> AsyncIterator[SandboxPool]:
    p = SandboxPool(DEVICE, Recorder(), backoff_base_s=0.05, workers=1)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def test_workers_run_in_their_own_session(pool: SandboxPool) -> None:
    (pid,) = pool.worker_pids()
    assert os.getsid(pid) == pid and os.getpgid(pid) != os.getpgid(0)


def test_workers_die_with_the_runtime(tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from edge.wasm.pool import SandboxPool\n"
        "class H:\n"
        "    async def publish(self, *a): pass\n"
        "    async def kv_put(self, *a): pass\n"
        "    def on_fault(self, *a): pass\n"
        "    def on_limit(self, *a): pass\n"
        "async def main():\n"
        "    pool = SandboxPool('d', H(), workers=2)\n"
        "    await pool.start()\n"
        "    print(' '.join(map(str, pool.worker_pids())), flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        proc.kill()  # no clean shutdown: stdin is not closed in order, the kernel must do it
        proc.wait(5)
        for pid in pids:
            for _ in range(200):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                _reap(pid)
                time.sleep(0.01)
            else:
                raise AssertionError(f"worker {pid} outlived the runtime")
    finally:
        if proc.poll() is None:
            proc.kill()


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


async def test_a_worker_process_starts_once() -> None:
    w = WorkerProcess(1.0, lambda *a: None)
    await w.start(1)
    try:
        with pytest.raises(SandboxError, match="already started"):
            await w.start(1)
    finally:
        await w.stop()


async def test_using_a_stopped_pool_says_what_to_do(tmp_path: Path) -> None:
    p = SandboxPool(DEVICE, Recorder())
    with pytest.raises(SandboxError, match=r"not started; call start\(\)"):
        await p.load(None)  # type: ignore[arg-type]


def test_a_worker_exits_at_once_at_the_end_of_its_input(tmp_path: Path) -> None:
    """At the end of its input the worker answers what it was sent and exits 0 without the
    interpreter's teardown (atexit handlers do not run; a pool's stop does not wait for it)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('teardown ran\\n'))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    proc = subprocess.run([sys.executable, "-P", "-m", "edge.wasm.worker"], cwd=tmp_path,
                          input=encode(("ping",)), capture_output=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    status, payload = decode_ping(memoryview(proc.stdout)[HEADER.size:])
    assert status == "ok" and payload["pid"] > 0
    assert b"teardown ran" not in proc.stderr


def test_the_atexit_handler_runs_in_a_process_that_exits_normally(tmp_path: Path) -> None:
    """The control of the test above: the same handler runs in a process that exits normally,
    so its absence there is the worker's doing."""
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('teardown ran\\n'))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    proc = subprocess.run([sys.executable, "-P", "-c", "pass"], cwd=tmp_path,
                          capture_output=True, env=env, timeout=30)
    assert b"teardown ran" in proc.stderr
