"""The compiled engine: precedence (deny over allow over grant over default deny), conditions,
and the decision cache, which provably answers what the rules answer (property tests); fuzzed
principals and resources never crash it and never allow by accident."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.nats.subjects import subject_matches
from edge.policy.engine import CACHE_MAX, CompiledPolicy
from edge.policy.model import ACTIONS, KINDS, Context, valid_resource
from edge.policy.rules import parse_policy

DEV = "dev1"


def compiled(*rules: dict[str, Any], limits: tuple[dict[str, Any], ...] = ()) -> CompiledPolicy:
    return CompiledPolicy(parse_policy({"rule": list(rules), "limit": list(limits)}, DEV), 1)


def rule(name: str, effect: str, principal: Any, action: Any, resource: Any = ">", **kw: Any) -> dict[str, Any]:
    return {"name": name, "effect": effect, "principal": principal, "action": action,
            "resource": resource, **kw}


def test_each_action_is_denied_by_default_and_allowed_by_a_rule() -> None:
    resources = {"publish": "edge.dev1.evt.a.b", "deliver": "edge.dev1.cmd.echo", "command": "drone-0.rtl",
                 "call": "list_entities", "kv": "count", "infer": "face", "deploy": "fw-1_2"}
    empty = compiled()
    for action, resource in resources.items():
        d = empty.decide("caller", "x", action, resource)
        assert (d.allowed, d.rule) == (False, "default"), action
    allowing = compiled(*(rule(f"allow-{a}", "allow", "caller:x", a, r) for a, r in resources.items()))
    for action, resource in resources.items():
        d = allowing.decide("caller", "x", action, resource)
        assert (d.allowed, d.rule) == (True, f"allow-{action}"), action
        assert not allowing.decide("caller", "y", action, resource).allowed  # another principal
        assert not allowing.decide("agent", "x", action, resource).allowed  # another kind


def test_deny_overrides_allow_and_a_grant_and_names_its_reason() -> None:
    c = compiled(rule("all", "allow", "component:*", "publish", "edge.dev1.>"),
                 rule("no-secret", "deny", "*", "*", "edge.dev1.evt.secret.>", reason="secret"))
    d = c.decide("component", "patrol", "publish", "edge.dev1.evt.secret.x", True)
    assert (d.allowed, d.rule, d.reason) == (False, "no-secret", "secret")
    assert c.decide("component", "patrol", "publish", "edge.dev1.evt.open.x").rule == "all"
    assert c.decide("component", "patrol", "publish", "edge.other.evt.x", True).rule == "grant"
    assert c.decide("component", "patrol", "publish", "edge.other.evt.x", False).rule == "default"


def test_conditions_on_labels_link_and_time_of_day_are_never_cached() -> None:
    c = compiled(rule("north", "allow", "operator:*", "command", "*.rtl", labels={"fleet": "north"}),
                 rule("night", "deny", "operator:*", "command", "*.rtl", hours="22:00-06:00"),
                 rule("up", "allow", "caller:*", "call", "list_entities", link="up"))
    north = Context(labels={"fleet": "north"}, minute=12 * 60)
    assert c.decide("operator", "ops", "command", "d1.rtl", ctx=lambda: north).rule == "north"
    south = Context(labels={"fleet": "south"}, minute=12 * 60)
    assert c.decide("operator", "ops", "command", "d1.rtl", ctx=lambda: south).rule == "default"
    night = Context(labels={"fleet": "north"}, minute=23 * 60)
    assert c.decide("operator", "ops", "command", "d1.rtl", ctx=lambda: night).rule == "night"
    early = Context(labels={"fleet": "north"}, minute=5 * 60 + 59)
    assert c.decide("operator", "ops", "command", "d1.rtl", ctx=lambda: early).rule == "night"
    assert c.decide("caller", "a", "call", "list_entities", ctx=lambda: Context(link="up")).allowed
    assert not c.decide("caller", "a", "call", "list_entities", ctx=lambda: Context(link="down")).allowed
    assert not c.decide("caller", "a", "call", "list_entities").allowed  # no context: link "none"
    assert c.stats()["cached"] == 0


def test_invalid_principals_and_resources_are_denied_and_not_cached() -> None:
    c = compiled(rule("all", "allow", "*", "*", ">"))
    for kind, pid, resource in [("caller", "x", "a.*"), ("caller", "x", "a.>"), ("caller", "x", "a..b"),
                                ("caller", "x", ""), ("caller", "x", "a b"), ("caller", "x", "a" * 600),
                                ("caller", "x", "bad\udcff"), ("caller", "", "a"), ("caller", "x" * 65, "a"),
                                ("robot", "x", "a"), ("caller", "a.b", "a"), ("caller", "*", "a")]:
        d = c.decide(kind, pid, "call", resource, True)
        assert (d.allowed, d.rule) == (False, "invalid"), (kind, pid, resource)
    assert not c.decide("caller", "x", "fly", "a", True).allowed
    assert c.stats()["cached"] == 0


def test_the_cache_is_bounded() -> None:
    c = compiled(rule("all", "allow", "component:*", "publish", ">"))
    for i in range(CACHE_MAX + 10):
        assert c.decide("component", "c", "publish", f"s.{i}").allowed
    assert c.stats()["cached"] <= CACHE_MAX


# -- property tests: cached == uncached; fuzz never allows by accident ---------------------------

TOKENS = st.sampled_from(["edge", "dev1", "evt", "cmd", "a", "b", "rtl", "*", ">", "x-y", "drone_1"])
PATTERNS = st.lists(TOKENS, min_size=1, max_size=4).map(".".join).filter(
    lambda p: ">" not in p.split(".")[:-1])
PIDS = st.sampled_from(["a", "b", "patrol", "*", "cloud"])
PRINCIPALS = st.tuples(st.sampled_from([*KINDS, "*"]), PIDS).map(lambda kp: f"{kp[0]}:{kp[1]}")
RULES = st.lists(st.fixed_dictionaries({
    "effect": st.sampled_from(["allow", "deny"]),
    "principal": st.lists(PRINCIPALS, min_size=1, max_size=2),
    "action": st.lists(st.sampled_from([*ACTIONS, "*"]), min_size=1, max_size=2),
    "resource": st.lists(PATTERNS, min_size=1, max_size=2),
    "cond": st.sampled_from([None, "labels", "link", "hours"]),
}), max_size=8)
RESOURCE_TOKENS = st.one_of(TOKENS, st.text(max_size=6))
RESOURCES = st.one_of(st.lists(RESOURCE_TOKENS, min_size=1, max_size=5).map(".".join),
                      st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
                      st.integers(520, 2000).map(lambda n: "a." * n + "a"))
REQUESTS = st.lists(st.tuples(st.sampled_from([*KINDS, "robot"]),
                              st.one_of(PIDS, st.text(max_size=70)),
                              st.sampled_from([*ACTIONS, "fly"]), RESOURCES, st.booleans(),
                              st.sampled_from(["up", "down", "none"]), st.integers(0, 1439),
                              st.sampled_from(["north", "south"])), min_size=1, max_size=30)


def build(rules: list[dict[str, Any]]) -> CompiledPolicy:
    out = []
    for i, r in enumerate(rules):
        extra: dict[str, Any] = {}
        if r["cond"] == "labels":
            extra["labels"] = {"fleet": "north"}
        elif r["cond"] == "link":
            extra["link"] = "up"
        elif r["cond"] == "hours":
            extra["hours"] = "08:00-17:00"
        out.append(rule(f"r{i}", r["effect"], r["principal"], r["action"], r["resource"], **extra))
    return compiled(*out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RULES, REQUESTS)
def test_cached_decisions_equal_uncached_ones(rules: list[dict[str, Any]], requests: list[Any]) -> None:
    c = build(rules)
    for _ in range(2):  # the second pass answers from the cache where it may
        for kind, pid, action, resource, granted, link, minute, fleet in requests:
            ctx = Context(labels={"fleet": fleet}, link=link, minute=minute)
            cached = c.decide(kind, pid, action, resource, granted, lambda ctx=ctx: ctx)
            fresh = c.decide_uncached(kind, pid, action, resource, granted, lambda ctx=ctx: ctx)
            assert cached == fresh


def reference(rules: list[dict[str, Any]], kind: str, pid: str, action: str, resource: str,
              granted: bool, ctx: Context) -> bool:
    """The documented semantics, written plainly: what the engine must answer."""
    from edge.policy.model import valid_principal

    if not (valid_principal(kind, pid) and valid_resource(resource) and action in ACTIONS):
        return False

    def applies(r: dict[str, Any]) -> bool:
        who = any(p.split(":")[0] in ("*", kind) and p.split(":")[1] in ("*", pid) for p in r["principal"])
        what = "*" in r["action"] or action in r["action"]
        where = any(subject_matches(p.replace("{device}", DEV), resource) for p in r["resource"])
        cond = {None: True, "labels": ctx.labels.get("fleet") == "north", "link": ctx.link == "up",
                "hours": 480 <= ctx.minute_of_day() < 1020}[r["cond"]]
        return who and what and where and cond

    if any(r["effect"] == "deny" and applies(r) for r in rules):
        return False
    if any(r["effect"] == "allow" and applies(r) for r in rules):
        return True
    return granted


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RULES, REQUESTS)
def test_fuzzed_requests_never_crash_and_never_allow_what_the_rules_do_not(
        rules: list[dict[str, Any]], requests: list[Any]) -> None:
    c = build(rules)
    for kind, pid, action, resource, granted, link, minute, fleet in requests:
        ctx = Context(labels={"fleet": fleet}, link=link, minute=minute)
        d = c.decide(kind, pid, action, resource, granted, lambda ctx=ctx: ctx)
        assert d.allowed == reference(rules, kind, pid, action, resource, granted, ctx)
        if d.allowed:
            assert valid_resource(resource) and "*" not in resource.split(".")
