"""What is said in a device message: one JetStream message of ``EVT`` or ``LANG`` -> one
:class:`Entry` (or none).

``edge.<d>.evt.<entity>.<kind>``, ``edge.<d>.lang.<entity>.<kind>`` and
``edge.<d>.ack.<entity>.<verb>`` carry JSON objects. Each kind becomes one line of text:

=============  ===========================================================================
kind           text
=============  ===========================================================================
statustext     the flight controller's text (``severity`` kept in ``meta``)
decision       ``<agent> decided <decision>: <reason>`` (+ the command and its answer); an
               ``inputs.cites`` list (search hits the agent used) is kept in ``meta.cites``
log            ``<LEVEL> <logger>: <message>`` (warning and above, :mod:`edge.language.capture`)
tool_call      ``tool <name> called by <caller>: <arguments>``
note           an operator note's text (``author`` in ``meta``)
fault          ``component <name> fault (<error>): <message>`` (``evt.runtime.fault``)
command        ``command <verb> to <entity>: ok`` or ``... refused (<reason>): <error>`` (acks);
               a cloud command's result ``ack.<id>``: ``cloud command <id>: ...`` (entity ``cloud``)
other          ``<kind>: key=value, ...`` of the scalar fields
=============  ===========================================================================

The kinds above are written by the runtime, its drivers and agents: a body of one of them (and of
any ``ack`` or ``lang`` message) that is not a JSON object is malformed: :class:`Malformed` is
raised, and the indexer counts and drops it. Any other ``evt`` kind is free-form (a component may
publish what it likes): a body that is not a JSON object but is UTF-8 text becomes
``<kind>: <text>``; a binary body is not an entry (counted as skipped, not malformed).
"""

from __future__ import annotations

import json
from typing import Any

from edge.language.config import MAX_TEXT_CHARS
from edge.language.errors import LanguageError
from edge.language.store import Entry
from edge.nats.service import loads


class Malformed(LanguageError):
    """A message the indexer cannot read (not JSON, not an object, a subject of the wrong shape)."""


def _scalars(body: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    parts = []
    for k, v in body.items():
        if k in skip or isinstance(v, (dict, list)) or v is None:
            continue
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def _answer(answer: Any) -> str:
    if not isinstance(answer, dict):
        return "no answer"
    if answer.get("ok"):
        return "ok"
    return f"refused ({answer.get('reason', '?')}): {answer.get('error', '')}".rstrip(": ")


KNOWN_KINDS = frozenset({"statustext", "decision", "log", "tool_call", "note", "fault"})


def _free_text(kind: str, data: bytes) -> str | None:
    """A free-form event body as text, or None when it is binary (not UTF-8, or control bytes)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return None
    return f"{kind}: {' '.join(text.split())}" if text.strip() else None


def extract(subject: str, data: bytes, *, t: float, stream: str | None, seq: int | None,
            skip_kinds: tuple[str, ...] = ()) -> Entry | None:
    """The entry of one message, or None when its kind is not indexed."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[2] == "ack":  # edge.<d>.ack.<command id>: a cloud command's result
        parts = [*parts[:3], "cloud", parts[3]]
    if len(parts) < 5 or parts[2] not in ("evt", "ack", "lang"):
        raise Malformed(f"subject {subject!r} is not edge.<device>.evt|ack|lang.<entity>.<kind>", subject=subject)
    family, entity, kind = parts[2], parts[3], ".".join(parts[4:])
    if family != "ack" and kind in skip_kinds:
        return None
    free = family == "evt" and kind not in KNOWN_KINDS  # a component's own event: any body
    try:
        body = loads(data)
    except ValueError as err:
        if free:
            return _text_entry(kind, entity, subject, data, t=t, stream=stream, seq=seq)
        raise Malformed(f"message on {subject} is not JSON: {err}", subject=subject) from None
    if not isinstance(body, dict):
        if free:
            return _text_entry(kind, entity, subject, data, t=t, stream=stream, seq=seq)
        raise Malformed(f"message on {subject} is not a JSON object", subject=subject)
    meta: dict[str, Any] = {}
    if family == "ack" and entity == "cloud" and len(subject.split(".")) == 4:
        text = f"cloud command {kind}: {_answer(body)}"
        meta["ok"] = bool(body.get("ok"))
        kind = "command"
    elif family == "ack":
        text = f"command {kind} to {entity}: {_answer(body)}"
        meta["ok"] = bool(body.get("ok"))
        kind = "command"
    elif kind == "statustext":
        text = str(body.get("text", ""))
        meta["severity"] = body.get("severity")
    elif kind == "decision":
        text = f"{body.get('agent', '?')} decided {body.get('decision', '?')}: {body.get('reason', '')}"
        cmd = body.get("command")
        if isinstance(cmd, dict):
            text += f" (command {cmd.get('verb')} to {cmd.get('entity')}: {_answer(cmd.get('answer'))})"
        inputs = body.get("inputs")
        if isinstance(inputs, dict) and isinstance(inputs.get("cites"), list):
            meta["cites"] = inputs["cites"][:20]
        meta["agent"] = body.get("agent")
    elif kind == "log":
        text = f"{str(body.get('level', '')).upper()} {body.get('logger', '')}: {body.get('msg', '')}"
    elif kind == "tool_call":
        args = body.get("args")
        text = f"tool {body.get('tool')} called by {body.get('caller')}: " + (
            json.dumps(args, separators=(", ", ": "), default=str) if args else "no arguments")
    elif kind == "note":
        text = str(body.get("text", ""))
        meta["author"] = body.get("author")
    elif kind == "fault" and entity == "runtime":
        text = (f"component {body.get('component')} fault ({body.get('error', body.get('reason', ''))}): "
                f"{body.get('message', '')}")
    else:
        text = f"{kind}: {_scalars(body, ('t',))}" if body else kind
    text = text.strip()
    if not text:
        return None
    ts = body.get("t")
    when = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts > 0 else t
    return Entry(text=text[:MAX_TEXT_CHARS], kind=kind, entity=entity, source=subject, t=when,
                 stream=stream, seq=seq, meta=meta)


def _text_entry(kind: str, entity: str, subject: str, data: bytes, *, t: float, stream: str | None,
                seq: int | None) -> Entry | None:
    text = _free_text(kind, data)
    if text is None:
        return None
    return Entry(text=text[:MAX_TEXT_CHARS], kind=kind, entity=entity, source=subject, t=t,
                 stream=stream, seq=seq, meta={})
