"""The policy point: metering, limits (hit and recovered), denial events, the off switch, and
an atomic reload (under load, no decision ever comes from a half-loaded policy)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from edge.policy.meter import MAX_PRINCIPALS, OVERFLOW
from edge.policy.point import DENIAL_EVENT_INTERVAL_S, MAX_DENIAL_EVENTS, PolicyPoint
from edge.policy.rules import parse_policy
from rigs.events import ListEvents as Events, StepClock as Clock

DEV = "dev1"


def point(raw: dict[str, Any] | None, **kw: Any) -> tuple[PolicyPoint, Events, Clock]:
    events, clock = Events(), Clock()
    p = PolicyPoint(DEV, events=events, clock=clock, **kw)
    if raw is not None:
        p.load(parse_policy(raw, DEV))
    return p, events, clock


def test_the_off_switch_allows_everything_and_meters_it() -> None:
    p, events, _ = point(None)
    for action in ("publish", "command", "call", "kv", "infer"):
        assert p.check("component", "c", action, "a.b", size=10).rule == "off"
    p.add_gas("c", 500)
    p.add_infer("component", "c", 0.25)
    u = p.meter.of("component", "c").to_dict()
    assert u == {"messages": 5, "bytes": 50, "gas": 500, "infer_s": 0.25, "kv_writes": 1, "commands": 1,
                 "calls": 1, "denied": 0}
    assert not events.out and p.status()["enforcing"] is False


def test_rate_limits_deny_with_the_reason_count_raise_one_event_and_recover() -> None:
    p, events, clock = point({"limit": [{"name": "slow", "principal": "caller:*", "action": "call",
                                         "rate": 2.0, "burst": 2}]})
    results = [p.check("caller", "llm", "call", "list_entities", granted=True) for _ in range(5)]
    assert [d.allowed for d in results] == [True, True, False, False, False]
    assert results[2].rule == "slow" and "rate limit of 2 a second" in results[2].reason
    assert p.meter.of("caller", "llm").denied == 3 and p.denied == 3
    denied = [b for s, b in events.out if s == f"edge.{DEV}.evt.policy.denied"]
    assert len(denied) == 1 and denied[0]["rule"] == "slow" and denied[0]["count"] == 1  # rate-limited
    assert p.check("caller", "other", "call", "list_entities", granted=True).allowed  # per principal
    clock.t += 1.0  # two tokens back
    assert [p.check("caller", "llm", "call", "x", granted=True).allowed for _ in range(3)] == [True, True, False]
    clock.t += DENIAL_EVENT_INTERVAL_S
    assert not [p.check("caller", "llm", "call", "x", granted=True) for _ in range(3)][-1].allowed
    denied = [b for s, b in events.out if s == f"edge.{DEV}.evt.policy.denied"]
    assert len(denied) == 2 and denied[1]["count"] == 4  # itself and the 3 suppressed since the first
    assert len(p.recent) == 3 + 1 + 1


def test_quotas_per_window_hit_and_recover_and_show_in_the_accounting() -> None:
    p, _, clock = point({"limit": [{"name": "q", "principal": "component:*", "action": "publish",
                                    "resource": "edge.dev1.evt.>", "quota_messages": 3,
                                    "quota_bytes": 250, "window": 10}]})
    ok = [p.check("component", "c", "publish", "edge.dev1.evt.a", size=10, granted=True).allowed
          for _ in range(4)]
    assert ok == [True, True, True, False]
    assert p.check("component", "c", "publish", "edge.dev1.tele.a", size=10, granted=True).allowed  # other class
    clock.t += 10
    big = p.check("component", "c", "publish", "edge.dev1.evt.a", size=300, granted=True)
    assert not big.allowed and "quota of 250 bytes per 10 s" in big.reason
    assert p.check("component", "c", "publish", "edge.dev1.evt.a", size=200, granted=True).allowed
    (quota,) = p.accounting()["quotas"]
    assert quota == {"principal": "component:c", "limit": "q", "messages": 1, "bytes": 200,
                     "quota_messages": 3, "quota_bytes": 250}


def test_a_denial_is_never_counted_against_a_limit() -> None:
    p, _, _ = point({"rule": [{"name": "no", "effect": "deny", "principal": "*", "action": "*",
                               "resource": "secret"}],
                     "limit": [{"name": "q", "principal": "*", "action": "*", "quota_messages": 1}]})
    assert not p.check("caller", "a", "call", "secret", granted=True).allowed
    assert p.check("caller", "a", "call", "open", granted=True).allowed
    assert p.check("caller", "a", "call", "open", granted=True).rule == "q"


def test_fuzzed_principal_names_do_not_grow_the_meter_past_its_bound() -> None:
    p, _, _ = point(None)
    for i in range(MAX_PRINCIPALS + 500):
        p.check("caller", f"c{i}", "call", "x")
    assert len(p.meter.usage) == MAX_PRINCIPALS + 1
    assert p.meter.usage[OVERFLOW].messages == 500


def test_usage_intervals_report_what_changed() -> None:
    p, _, _ = point(None)
    p.check("component", "a", "publish", "s", size=4)
    p.add_gas("a", 7)
    assert p.meter.interval() == [{"principal": "component:a", "messages": 1, "bytes": 4, "gas": 7,
                                   "infer_s": 0.0, "kv_writes": 0, "commands": 0, "calls": 0, "denied": 0}]
    assert p.meter.interval() == []
    p.check("component", "a", "publish", "s", size=1)
    assert p.meter.interval()[0]["messages"] == 1


def test_a_bad_file_is_refused_and_the_old_policy_keeps_deciding(tmp_path: Path) -> None:
    p, _, _ = point(None)
    f = tmp_path / "policy.toml"
    f.write_text('[[rule]]\nname = "ok"\neffect = "allow"\nprincipal = "caller:a"\naction = "call"\n')
    assert p.load_file(f) and p.generation == 1
    f.write_text('[[rule]]\nname = "broken"\neffect = "allow"\nprincipal = "caller:a"\naction = "fly"\n')
    assert not p.load_file(f)
    assert p.generation == 1 and p.check("caller", "a", "call", "t").rule == "ok"
    err = p.status()["error"]
    assert err["rule"] == "broken" and err["file"] == str(f) and "unknown action 'fly'" in err["message"]
    f.write_text('[[rule]]\nname = "fixed"\neffect = "allow"\nprincipal = "caller:a"\naction = "call"\n')
    assert p.load_file(f) and p.status()["error"] is None and p.check("caller", "a", "call", "t").rule == "fixed"


async def test_a_reload_under_load_never_decides_on_a_half_loaded_policy() -> None:
    """Two policies alternate while decisions run: policy A allows only 'a.*', B only 'b.*'.
    Every decision must be exactly what the policy of its generation says."""
    n = 60
    rules_a = [{"name": f"a{i}", "effect": "allow", "principal": "caller:*", "action": "call",
                "resource": f"a.{i}"} for i in range(n)]
    rules_b = [{"name": f"b{i}", "effect": "allow", "principal": "caller:*", "action": "call",
                "resource": f"b.{i}"} for i in range(n)]
    pa, pb = parse_policy({"rule": rules_a}, DEV), parse_policy({"rule": rules_b}, DEV)
    p, _, _ = point(None)
    p.load(pa)
    kinds: dict[int, str] = {1: "a"}
    seen: list[tuple[int, str, bool]] = []
    stop = asyncio.Event()

    async def decide() -> None:
        i = 0
        while not stop.is_set():
            for which in ("a", "b"):
                d = p.check("caller", "x", "call", f"{which}.{i % n}")
                seen.append((d.generation, which, d.allowed))
            i += 1
            if i % 50 == 0:
                await asyncio.sleep(0)

    async def reload() -> None:
        for k in range(40):
            which = "b" if k % 2 == 0 else "a"
            p.load(pb if which == "b" else pa)
            kinds[p.generation] = which
            await asyncio.sleep(0)
        stop.set()

    await asyncio.gather(decide(), decide(), reload())
    assert len({g for g, _, _ in seen}) > 10  # the decisions really spanned the reloads
    for generation, which, allowed in seen:
        assert allowed == (kinds[generation] == which), (generation, which)


def test_a_batch_is_decided_like_its_messages_one_by_one() -> None:
    raw = {"rule": [{"name": "no-b", "effect": "deny", "principal": "component:*", "action": "publish",
                     "resource": "s.b"}],
           "limit": [{"name": "q", "principal": "component:*", "action": "publish", "resource": "s.c",
                      "quota_messages": 2}]}
    items = [("s.a", b"1"), ("s.b", b"22"), ("s.c", b"3"), ("s.c", b"4"), ("s.c", b"5"), ("bad.*", b"6")]
    batch, _, _ = point(raw)
    one, _, _ = point(raw)
    allowed = batch.check_batch("component", "c", "publish", items, granted=True)
    singles = [it for it in items
               if one.check("component", "c", "publish", it[0], size=len(it[1]), granted=True).allowed]
    assert allowed == singles == [("s.a", b"1"), ("s.c", b"3"), ("s.c", b"4")]
    assert batch.meter.of("component", "c").to_dict() == one.meter.of("component", "c").to_dict()
    assert batch.meter.of("component", "c").denied == 3
    assert [d["rule"] for d in batch.recent] == ["no-b", "q", "invalid"]
    fine = [("s.a", b"1")] * 3
    assert batch.check_batch("component", "c", "publish", fine, granted=True) is fine  # no copy


def test_fuzzed_principals_and_resources_never_crash_the_point_and_stay_bounded() -> None:
    p, events, clock = point({"rule": [{"name": "all", "effect": "allow", "principal": "*", "action": "*"}]})
    odd = ["", "x" * 100_000, "a..b", "*", ">", "a.*", "bad\udcff", "a b", "\x00", "a\tb", ".a"]
    odd_ids = [*odd, "a.b", "日本", "x" * 65]
    for pid in odd_ids:
        for resource in [*odd, "ok"]:
            d = p.check("caller", pid, "call", resource, size=len(resource), granted=True)
            assert not d.allowed and d.rule == "invalid"
            assert not p.check_batch("component", pid, "publish", [(resource, b"x")], granted=True)
        clock.t += DENIAL_EVENT_INTERVAL_S
    for resource in odd:
        assert not p.check("caller", "fine", "call", resource, granted=True).allowed
    assert p.check("caller", "fine", "call", "ok", granted=True).allowed
    assert len(p.meter.usage) <= 2 * len(odd_ids) + 1  # long ids share one "invalid:*" row
    assert all(len(k) + len(i) <= 128 for k, i in p.meter.usage)
    for _, body in events.out:
        assert len(body["principal"]) <= 100 and len(body["resource"]) <= 200
        json.dumps(body).encode()  # every record is valid JSON text


def test_denial_events_of_invented_principals_have_one_budget_per_interval() -> None:
    """One event per principal and rule is no bound when the sender invents a principal per
    message (any ``Edge-Caller``): all principals together get MAX_DENIAL_EVENTS an interval."""
    p, events, clock = point({"rule": []})
    for i in range(MAX_DENIAL_EVENTS + 50):
        assert not p.check("caller", f"c{i}", "call", "list_entities").allowed
    denied = [b for s, b in events.out if s == f"edge.{DEV}.evt.policy.denied"]
    assert len(denied) == MAX_DENIAL_EVENTS and p.denied == MAX_DENIAL_EVENTS + 50
    assert p.status()["denial_events_suppressed"] == 50 and len(p.recent) == 100
    clock.t += DENIAL_EVENT_INTERVAL_S  # a new interval: a new budget
    assert not p.check("caller", "late", "call", "list_entities").allowed
    assert len([s for s, _ in events.out if s == f"edge.{DEV}.evt.policy.denied"]) == MAX_DENIAL_EVENTS + 1
