"""Fuzzing the new resource and principal kinds (property tests, hypothesis): world writes through
the device API (``<entity>`` / ``<entity>.<component>`` built from fuzzed ids and names), model
names of inference requests (dots allowed), the vision pipelines' ``device:<entity>`` and the API
callers' ``caller:<Edge-Caller>`` principals. They never crash the engine or the point, a fuzzed
name never stands for another entity's resource, and a decision is always what the documented
precedence answers (the plain restatement in test_engine.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import build, reference

from edge.api.service import write_resources
from edge.errors import EdgeError
from edge.policy.meter import MAX_PRINCIPALS
from edge.policy.model import Context, valid_principal, valid_resource
from edge.policy.point import PolicyPoint
from edge.policy.rules import parse_policy

ODD = ["", "*", ">", "a.b", "a b", "x" * 65, "\x00", "é", "bad\udcff", ".", "a.", "drone-0.position"]
ENTITIES = st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), st.sampled_from(["drone-0", "cam", *ODD]),
                     st.text(max_size=20))
COMPONENTS = st.one_of(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
                       st.sampled_from(["position", "battery", "Position", *ODD]), st.text(max_size=12))
MODELS = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}", fullmatch=True),
                   st.sampled_from(["face", "face.v2", "fc", *ODD]), st.text(max_size=20))
CALLERS = st.one_of(st.sampled_from(["cli", "ops", "anonymous", "viewer", *ODD]), st.text(max_size=70))

TOKENS = st.sampled_from(["drone-0", "cam", "position", "battery", "face", "v2", "fc", "*", ">"])
PATTERNS = st.lists(TOKENS, min_size=1, max_size=3).map(".".join).filter(lambda p: ">" not in p.split(".")[:-1])
PRINCIPALS = st.tuples(st.sampled_from(["caller", "device", "component", "*"]),
                       st.sampled_from(["cli", "ops", "cam", "drone-0", "*"])).map(lambda kp: f"{kp[0]}:{kp[1]}")
RULES = st.lists(st.fixed_dictionaries({
    "effect": st.sampled_from(["allow", "deny"]),
    "principal": st.lists(PRINCIPALS, min_size=1, max_size=2),
    "action": st.lists(st.sampled_from(["kv", "infer", "*"]), min_size=1, max_size=2),
    "resource": st.lists(PATTERNS, min_size=1, max_size=2),
    "cond": st.sampled_from([None, None, "labels", "link"]),
}), max_size=8)


@settings(max_examples=400, deadline=None)
@given(ENTITIES, st.lists(COMPONENTS, max_size=3))
def test_fuzzed_entity_and_component_names_are_refused_or_name_their_own_resource(
        entity: str, components: list[str]) -> None:
    try:
        resources = write_resources(entity, components)
    except EdgeError as err:
        assert err.message  # one sentence; never another exception
        return
    assert len(resources) == max(1, len(components))
    for resource, comp in zip(resources, components or [None], strict=True):
        assert valid_resource(resource)
        tokens = resource.split(".")
        assert tokens[0] == entity and tokens[1:] == ([comp] if comp else [])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RULES, st.lists(st.tuples(st.sampled_from(["api", "vision", "tools"]), CALLERS, ENTITIES, COMPONENTS,
                                 MODELS, st.booleans(), st.sampled_from(["up", "down", "none"]),
                                 st.sampled_from(["north", "south"])), min_size=1, max_size=25))
def test_fuzzed_api_writes_and_inference_requests_decide_as_the_rules_say(
        rules: list[dict[str, Any]], requests: list[Any]) -> None:
    c = build(rules)
    for path, caller, entity, comp, model, with_comp, link, fleet in requests:
        if path == "api":  # as the device API decides a write
            try:
                asked = [("caller", caller, "kv", r, False) for r in
                         write_resources(entity, [comp] if with_comp else [])]
            except EdgeError:
                continue
        elif path == "vision":  # a pipeline on a fuzzed entity, a fuzzed model name
            asked = [("device", entity, "infer", model, True)]
        else:  # run_model / capture_frame by a fuzzed caller
            asked = [("caller", caller, "infer", model, True)]
        ctx = Context(labels={"fleet": fleet}, link=link, minute=600)
        for kind, pid, action, resource, granted in asked:
            for _ in range(2):  # the second answer may come from the cache
                d = c.decide(kind, pid, action, resource, granted, lambda ctx=ctx: ctx)
                assert d.allowed == reference(rules, kind, pid, action, resource, granted, ctx), (
                    kind, pid, action, resource, d)
            if d.allowed:
                assert valid_resource(resource) and not {"*", ">"} & set(resource.split("."))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(CALLERS, ENTITIES, COMPONENTS, MODELS), min_size=1, max_size=40))
def test_fuzzed_callers_entities_and_models_never_crash_the_point_or_grow_it(requests: list[Any]) -> None:
    point = PolicyPoint("dev1")
    point.load(parse_policy({"rule": [
        {"name": "cli-drone", "effect": "allow", "principal": "caller:cli", "action": "kv",
         "resource": ["drone-0", "drone-0.>"]},
        {"name": "no-face", "effect": "deny", "principal": "device:*", "action": "infer", "resource": "face"},
    ]}, "dev1"))
    for caller, entity, comp, model in requests:
        try:
            resources = write_resources(entity, [comp])
        except EdgeError:
            resources = []
        for r in resources:
            d = point.check("caller", caller, "kv", r, size=len(r), entity=entity)
            assert d.allowed == (caller == "cli" and entity == "drone-0"), (caller, r, d)
        d = point.check("device", entity, "infer", model, size=100, granted=True)
        expect = valid_principal("device", entity) and valid_resource(model) and model != "face"
        assert d.allowed == expect, (entity, model, d)
    assert len(point.meter.usage) <= MAX_PRINCIPALS + 2
    assert all(len(k) + len(i) <= 128 for k, i in point.meter.usage)
    assert len(point.recent) <= 100
