"""Readable tables for ``edge status``, ``edge entity list`` and ``edge component list``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def entity_table(entities: Sequence[dict[str, Any]]) -> str:
    rows = [
        (e["id"], e.get("kind", ""), ",".join(f"{k}={v}" for k, v in e.get("labels", {}).items()),
         " ".join(e.get("components", [])))
        for e in entities
    ]
    return table(["ENTITY", "KIND", "LABELS", "COMPONENTS"], rows)


def _health(health: Any) -> str:
    """A component's last ``edge_health`` answer: ok, not ok (reason) or none."""
    last = health.get("last") if isinstance(health, dict) else None
    if not isinstance(last, dict):
        return "none"
    if last.get("ok"):
        return "ok"
    what = last.get("fault") or last.get("code")
    reason = last.get("reason") or ""
    return f"not ok {what}" + (f": {reason}" if reason else "")


def component_table(components: Sequence[dict[str, Any]]) -> str:
    rows = []
    for c in components:
        counters = c.get("counters", {})
        tick = c.get("tick", {})
        rows.append(
            (
                c.get("name"),
                c.get("version", ""),
                c.get("state", "?"),
                c.get("restarts", 0),
                tick.get("ticks", counters.get("ticks", 0)),
                tick.get("entities", ""),
                f"{tick.get('p50_ms', 0):.2f}" if tick else "",
                counters.get("messages", 0),
                counters.get("published", 0),
                counters.get("denied", 0),
                (c.get("last_fault") or {}).get("message", "") if isinstance(c.get("last_fault"), dict)
                else (c.get("last_fault") or ""),
                _health(c.get("health")),
            )
        )
    return table(
        ["COMPONENT", "VERSION", "STATE", "RESTARTS", "TICKS", "BATCH", "P50_MS", "MSGS", "PUB", "DENIED", "LAST FAULT", "HEALTH"],
        rows,
    )


def render(status: dict[str, Any]) -> str:
    nats = status.get("nats", {})
    server = nats.get("server") or {}
    state = status.get("state", {})
    head = [
        f"device {status.get('device')}  pid {status.get('pid')}  up {status.get('uptime_s')} s"
        f"  ready in {status.get('ready_s')} s",
        f"nats   {'connected' if nats.get('connected') else 'DISCONNECTED'} {nats.get('url') or ''}"
        + (f"  embedded pid {server.get('pid')} restarts {server.get('restarts')}" if server else ""),
        f"state  bucket {state.get('bucket')} every {state.get('interval_s')} s: "
        f"{state.get('writes', 0)} writes, {state.get('pending', 0)} pending, {state.get('failures', 0)} failures",
        "",
        component_table(status.get("components", [])),
        "",
        entity_table(status.get("entities", [])),
    ]
    from edge.cli.ota import status_lines  # [ota] versions, probation, the last refusal

    ota_lines = status_lines(status.get("ota"))
    if ota_lines:
        head += ["", *ota_lines]
    for section in ("policy", "drivers", "commands", "safety", "inference", "sync", "agents", "tools", "language"):
        if status.get(section):
            head += ["", f"{section}:", _section(status[section])]
            if section == "drivers":
                head += driver_faults(status[section])
            elif section == "inference":
                head += inference_faults(status[section])
    faults = status.get("faults") or []
    if faults:
        head += ["", "recent faults:"]
        head += [f"  {f.get('component')}: {f.get('kind')}: {f.get('message')}" for f in faults[-5:]]
    return "\n".join(head)


def ago(seconds: Any) -> str:
    """``"12 s ago"``, ``"3 min ago"``, ``"2.0 h ago"``; empty if unknown."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def driver_faults(drivers: Any) -> list[str]:
    """One line per driver that has failed: the cause, the device, how long ago, the retry."""
    lines = []
    for d in drivers if isinstance(drivers, list) else []:
        cause = d.get("failure_cause") or (d.get("last_error") if d.get("state") != "running" else None)
        if not cause:
            continue
        when = ago(d.get("failed_ago_s"))
        retry = d.get("retry_in_s")
        lines.append(f"  driver {d.get('name')} ({d.get('state')}) failed{' ' + when if when else ''}: {cause}"
                     + (f" [device {d['failure_device']}]" if d.get("failure_device") else "")
                     + (f"; retry in {retry:.1f} s" if isinstance(retry, (int, float)) else ""))
    return lines


def inference_faults(inference: Any) -> list[str]:
    """Model load errors (the old model serving or none), pipeline errors, layer errors; with ages."""
    if not isinstance(inference, dict):
        return []
    lines = []
    for name, m in (inference.get("models") or {}).items():
        if not isinstance(m, dict) or not m.get("last_load_error"):
            continue
        serving = f"serving sha256 {str(m.get('sha256'))[:12]}" if m.get("state") == "serving" else "not serving"
        lines.append(f"  model {name}: {m.get('load_errors')} load errors, last {ago(m.get('last_load_error_ago_s'))}"
                     f" ({serving}): {m['last_load_error']}")
    for p in inference.get("pipelines") or []:
        if isinstance(p, dict) and p.get("last_error"):
            lines.append(f"  pipeline {p.get('name')}: {p.get('errors')} errors, {p.get('sink_errors')} sink errors:"
                         f" {p['last_error']}")
    for name, e in (inference.get("errors") or {}).items():
        if isinstance(e, dict):
            lines.append(f"  {name}: {e.get('error')} ({ago(e.get('ago_s'))})")
    return lines


SECTION_COLUMNS = 9  # widest table a section prints; --json has everything


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if v not in (None, "", [], {}))
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return "" if value is None else str(value)


def _section(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = list(value[0].keys())[:SECTION_COLUMNS]
        return table([k.upper() for k in keys], [[_fmt(row.get(k)) for k in keys] for row in value])
    if isinstance(value, dict):
        parts = []
        for key, sub in value.items():
            if isinstance(sub, dict) and sub and all(isinstance(v, dict) for v in sub.values()):
                rows = [{"name": name, **{k: v for k, v in row.items() if k != "name"}} for name, row in sub.items()]
                parts.append(f"  {key}:\n" + _section(rows))
            elif isinstance(sub, list) and sub and isinstance(sub[0], dict):
                parts.append(f"  {key}:\n" + _section(sub))
            elif sub not in (None, {}, []):
                parts.append(f"  {key}: {_fmt(sub)}")
        return "\n".join(parts)
    return str(value)
