"""Fuzzing the load path: mutated module bytes through ``prepare_module``, then a real worker.

A mutated module must either be refused with ComponentLoadError by the prepare path, or load
in a worker process (wasm3 through :class:`edge.wasm.worker.instance.Instance`) without
killing it: a load error, a trap or out-of-gas is fine, a signal or a hang is a *finding*.

Two users:

* ``tests/wasm/test_fuzz.py``: replays ``tests/wasm/fuzz_corpus/`` and runs a bounded number
  of hypothesis examples (the default suite).
* the long campaign, documented in docs/sandbox.md::

      PYTHONPATH=$PWD python tests/wasm/fuzz.py --minutes 10

  It mutates the seeds (real components and hand-built modules) and the corpus at random,
  keeps an input whose outcome (refusal sentence with its numbers removed, or worker result)
  was not seen before in the corpus (at most ``CORPUS_MAX`` files of at most
  ``CORPUS_FILE_MAX`` bytes), writes every finding to ``fuzz_corpus/crash-*.wasm`` and
  exits 1 if there was one. It adds a row to the campaigns' record
  (``fuzz_corpus/RECORD.md``, :func:`record_campaign`: date, revision, minutes, seed,
  executions, worker runs, findings) and rewrites the record's totals; ``--record ''`` skips it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "fuzz_corpus"
#: The record of every long campaign run (a markdown table and its totals).
RECORD = CORPUS / "RECORD.md"
#: Largest number of files the campaign keeps in the corpus.
CORPUS_MAX = 64
#: Largest corpus file (bytes).
CORPUS_FILE_MAX = 6 * 1024
#: Wall-clock budget of one worker load + calls (seconds); more is a hang (a finding).
WORKER_TIMEOUT_S = 10.0
#: Gas of each call in the fuzz worker (small: an endless loop ends quickly).
FUZZ_GAS = 2_000_000

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


# ---------------------------------------------------------------------------------------------
# Seeds and mutations


def crafted_seeds() -> list[bytes]:
    """Hand-built modules exercising tables, elements, globals, data, loops, br_table."""
    from wasm_craft import nested, tick_module

    return [
        tick_module(),
        tick_module(nested(8, 0x03), table=4, globals_=2, data=b"hello"),
        tick_module(b"\x02\x40\x41\x00\x0e\x02\x00\x00\x00\x0b\x41\x00", locals_decl=b"\x01\x03\x7f"),
        tick_module(b"\x03\x40\x0c\x00\x0b\x41\x00"),  # an endless loop (gas ends it)
    ]


def seed_files(extra_dirs: list[Path] = ()) -> list[Path]:  # type: ignore[assignment]
    root = HERE.parents[1]
    paths = sorted((root / "components" / "build").glob("*.wasm"))
    for d in extra_dirs:
        paths += sorted(Path(d).glob("*.wasm"))
    return paths


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.wasm")) if CORPUS.is_dir() else []


INTERESTING = (0x00, 0x01, 0x02, 0x03, 0x04, 0x0B, 0x0E, 0x40, 0x41, 0x60, 0x7F, 0x80, 0xFF)


def _sections(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each section, as far as they can be split (best effort)."""
    from edge.wasm.wasmbin import read_u32

    out = []
    pos = 8
    while pos < len(data):
        try:
            size, body = read_u32(data, pos + 1)
        except Exception:  # noqa: BLE001 - best effort on garbage
            break
        if body + size > len(data):
            break
        out.append((pos, body + size))
        pos = body + size
    return out


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One to four random mutations of ``data`` (``others`` donate sections and ranges)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        if n <= 8:
            buf += bytes(rng.choice(INTERESTING) for _ in range(rng.randint(1, 8)))
            continue
        pos = rng.randrange(8, n)
        if op == 0:  # flip a bit
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:  # an interesting byte
            buf[pos] = rng.choice(INTERESTING)
        elif op == 2:  # insert bytes
            buf[pos:pos] = bytes(rng.choice(INTERESTING) for _ in range(rng.randint(1, 16)))
        elif op == 3:  # delete a range
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 4:  # truncate
            del buf[pos:]
        elif op == 5:  # duplicate a range
            end = min(n, pos + rng.randint(1, 64))
            buf[pos:pos] = buf[pos:end] * rng.randint(1, 8)
        elif op == 6 or op == 7:  # splice a section of another module, or drop/repeat one
            donor = rng.choice(others) if others and op == 6 else bytes(buf)
            secs = _sections(donor)
            mine = _sections(bytes(buf))
            if secs and mine:
                s, e = rng.choice(secs)
                ms, me = rng.choice(mine)
                if op == 6:
                    buf[ms:me] = donor[s:e]
                elif rng.random() < 0.5:
                    del buf[ms:me]
                else:
                    buf[ms:ms] = buf[ms:me]
        else:  # a LEB128 count/size set to a boundary value
            from edge.wasm.wasmbin import encode_u32

            buf[pos : pos + 1] = encode_u32(rng.choice((0, 1, 127, 128, 1024, 65536, 2**31, 2**32 - 1)))
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# The prepare path


def fuzz_manifest(tmp: Path) -> object:
    from sandbox_support import DEVICE, write_manifest

    from edge.wasm.manifest import load_manifest

    module = tmp / "fuzz.wasm"
    module.write_bytes(b"\x00asm\x01\x00\x00\x00")
    return load_manifest(write_manifest(tmp, "fuzz", module, memory_pages=4, gas=FUZZ_GAS), DEVICE)


def prepare(wasm: bytes, manifest: object) -> tuple[bytes | None, str]:
    """Run the prepare path: (prepared bytes, "ok") or (None, refusal sentence without numbers).

    Any exception but ComponentLoadError propagates: that is a finding.
    """
    from edge.errors import ComponentLoadError
    from edge.wasm.abi import prepare_module

    try:
        out, _ = prepare_module(wasm, manifest)  # type: ignore[arg-type]
    except ComponentLoadError as err:
        return None, re.sub(r"\d+|'[^']*'|0x[0-9a-f]+", "#", err.message)
    return out, "ok"


# ---------------------------------------------------------------------------------------------
# The worker


_WORKER_MAIN = "fuzz-worker"


def _worker_main() -> None:
    """Child process: read (length, prepared module) frames; instantiate and call each."""
    from edge.wasm.protocol import LoadSpec
    from edge.wasm.worker.instance import Instance

    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")  # like the real worker: stray output goes to stderr
    os.dup2(2, 1)
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        (n,) = struct.unpack("<I", head)
        wasm = inp.read(n)
        spec = LoadSpec(name="fuzz", wasm=wasm, device="dev1", ncols=0, writable=(), publish=(),
                        gas=FUZZ_GAS, publish_per_call=4, kv={}, stack_bytes=64 * 1024)
        try:
            inst = Instance(spec)
            done = ["loaded"]
            for export in ("edge_init", "edge_tick", "edge_on_message"):
                if export not in inst.exports:
                    continue
                inst.begin()
                if export == "edge_init":
                    inst.call("edge_init")
                elif export == "edge_tick":
                    inst.tick(0, 0.01)
                elif "edge_alloc" in inst.exports:
                    inst.deliver([("a.b", b"xyz")])
                fault = inst.result.fault
                done.append(f"{export}:{fault[0] if fault else 'ok'}")
            status = " ".join(done)
        except Exception as exc:  # noqa: BLE001 - a clean error is not a finding
            status = f"error {type(exc).__name__}"
        line = status.encode()
        out.write(struct.pack("<I", len(line)) + line)
        out.flush()


@dataclass
class WorkerHarness:
    """A long-lived fuzz worker; restarted after a finding."""

    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE.parents[1]), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), _WORKER_MAIN],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env)

    def run(self, prepared: bytes, timeout: float = WORKER_TIMEOUT_S) -> tuple[bool, str]:
        """(survived, outcome). Not survived: the worker died (signal) or hung."""
        import select

        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        p = self.proc
        assert p.stdin is not None and p.stdout is not None
        self.runs += 1
        try:
            p.stdin.write(struct.pack("<I", len(prepared)) + prepared)
            p.stdin.flush()
        except BrokenPipeError:
            pass
        fd = p.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                return False, "hang"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    rc = p.wait()
                    self.proc = None
                    return False, f"died {rc}"
                data += chunk
                if len(data) >= 4 and len(data) >= 4 + struct.unpack("<I", data[:4])[0]:
                    return True, data[4:].decode()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# ---------------------------------------------------------------------------------------------
# The long campaign


@dataclass
class Stats:
    executions: int = 0
    prepared: int = 0
    worker_runs: int = 0
    findings: list[str] = field(default_factory=list)
    new_corpus: int = 0


#: What the default suite's bounded slice (tests/wasm/test_fuzz.py) ran, printed at the end of
#: the test run (tests/wasm/conftest.py, ``pytest_terminal_summary``).
SLICE = Stats()


def save(directory: Path, prefix: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}-{hashlib.sha1(data).hexdigest()[:12]}.wasm"
    path.write_bytes(data)
    return path


def campaign(minutes: float, corpus: Path, worker_every: int, seed: int | None) -> Stats:
    sys.path.insert(0, str(HERE.parents[1]))
    from sandbox_support import build_module, compile_test_components

    tmp = Path(tempfile.mkdtemp(prefix="edge-fuzz-"))
    build_module().build()
    compiled = compile_test_components(tmp)
    seeds = [p.read_bytes() for p in seed_files() + list(compiled.values())] + crafted_seeds()
    pool = seeds + [p.read_bytes() for p in sorted(corpus.glob("*.wasm"))]
    manifest = fuzz_manifest(tmp)
    seen = set()
    for data in pool:  # outcomes the corpus already covers
        try:
            seen.add(prepare(data, manifest)[1])
        except Exception:  # noqa: BLE001 - a corpus crash is re-reported below
            pass
    rng = random.Random(seed)
    harness = WorkerHarness()
    stats = Stats()
    end = time.monotonic() + minutes * 60
    n_files = len(list(corpus.glob("*.wasm")))
    while time.monotonic() < end:
        data = mutate(rng.choice(pool), rng, pool)
        stats.executions += 1
        try:
            prepared, outcome = prepare(data, manifest)
        except Exception as exc:  # noqa: BLE001 - that is what we look for
            path = save(corpus, "crash", data)
            stats.findings.append(f"prepare raised {type(exc).__name__}: {exc} ({path.name})")
            continue
        if prepared is not None:
            stats.prepared += 1
            if stats.prepared % worker_every == 0:
                stats.worker_runs += 1
                alive, result = harness.run(prepared)
                if not alive:
                    path = save(corpus, "crash", data)
                    stats.findings.append(f"worker {result} ({path.name})")
                    continue
                outcome = "worker " + result
        if outcome not in seen:
            seen.add(outcome)
            if len(data) <= CORPUS_FILE_MAX and n_files < CORPUS_MAX:
                save(corpus, "in", data)
                n_files += 1
                stats.new_corpus += 1
                pool.append(data)
    harness.close()
    return stats


RECORD_HEAD = """# Fuzzing record

Every long campaign of the load-path fuzzer (`tests/wasm/fuzz.py`, `make fuzz`; see
docs/sandbox.md, *Structure limits and fuzzing*) adds a row here; the totals below the table
are recomputed from the rows each time. "executions" are mutants through the prepare path;
"worker runs" are the mutants it accepted, run in a real worker. The default suite's bounded
slice (`tests/wasm/test_fuzz.py`) prints its own counts at the end of a test run and is not
recorded here.

| date (UTC) | revision | minutes | seed | executions | worker runs | findings |
|---|---|---|---|---|---|---|
"""
_ROW_RE = re.compile(r"^\| ([^|]*) \| ([^|]*) \| ([^|]*) \| ([^|]*) \| ([\d,]+) \| "
                     r"([\d,]+) \| ([^|]*) \|$")


def _revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip() or "?"


def record_campaign(path: Path, minutes: float, seed: int | None, stats: Stats) -> None:
    """Add this campaign's row to the record at ``path`` and rewrite its totals."""
    rows = []
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if _ROW_RE.match(line)]
    findings = (f"{len(stats.findings)}: " + "; ".join(stats.findings).replace("|", "/")[:300]
                if stats.findings else "0")
    rows.append(f"| {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} | {_revision()} | "
                f"{minutes:g} | {seed if seed is not None else '-'} | {stats.executions:,} | "
                f"{stats.worker_runs:,} | {findings} |")
    total_exec = total_runs = total_findings = 0
    for line in rows:
        m = _ROW_RE.match(line)
        assert m is not None
        total_exec += int(m.group(5).replace(",", ""))
        total_runs += int(m.group(6).replace(",", ""))
        lead = m.group(7).split(":")[0].split()[0]
        total_findings += int(lead) if lead.isdigit() else 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECORD_HEAD + "\n".join(rows) + "\n\n"
                    f"**Total: {len(rows)} campaigns, {total_exec:,} executions, "
                    f"{total_runs:,} worker runs, {total_findings} findings.**\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--worker-every", type=int, default=1,
                    help="run every N-th prepared module in the worker (default: every one)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--record", type=str, default=str(RECORD),
                    help="the campaigns' record to add a row to ('' = none)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    stats = campaign(args.minutes, args.corpus, args.worker_every, args.seed)
    print(f"{stats.executions} executions in {time.monotonic() - t0:.0f} s: {stats.prepared} "
          f"prepared, {stats.worker_runs} worker runs, {stats.new_corpus} new corpus files, "
          f"{len(stats.findings)} findings")
    for finding in stats.findings:
        print("FINDING", finding)
    if args.record:
        record_campaign(Path(args.record), args.minutes, args.seed, stats)
        print(f"recorded in {args.record}")
    return 1 if stats.findings else 0


if __name__ == "__main__":
    if sys.argv[1:2] == [_WORKER_MAIN]:
        _worker_main()
    else:
        sys.exit(main())
