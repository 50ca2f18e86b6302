"""The policy file: every mistake is refused at load with one sentence naming the rule, the key
and the file; nothing half-read is ever returned."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.errors import ConfigError, EdgeError
from edge.policy.model import ACTIONS, PolicyError
from edge.policy.rules import MAX_RULES, load_policy, parse_policy

GOOD = """
version = 1
[[rule]]
name = "ops-rtl"
effect = "allow"
principal = ["operator:*", "agent:follow-1"]
action = "command"
resource = ["*.rtl"]
labels = { fleet = "north" }
link = "up"
hours = "22:00-06:00"

[[limit]]
name = "callers"
principal = "caller:*"
action = ["call", "infer"]
rate = 2.5
quota_messages = 100
window = 30
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_every_field(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, GOOD), "dev1")
    (rule,), (limit,) = p.rules, p.limits
    assert rule.principals == (("operator", "*"), ("agent", "follow-1"))
    assert rule.actions == ("command",) and rule.resources == ("*.rtl",)
    assert rule.labels == {"fleet": "north"} and rule.link == "up" and rule.hours == (1320, 360)
    assert limit.rate == 2.5 and limit.burst == 3 and limit.quota_messages == 100 and limit.window == 30
    assert len(p.digest) == 64 and p.file == str(tmp_path / "policy.toml")


def test_device_placeholder_and_star_action(tmp_path: Path) -> None:
    p = parse_policy({"rule": [{"name": "a", "effect": "deny", "principal": "*", "action": "*",
                                "resource": "edge.{device}.evt.>"}]}, "drone7")
    assert p.rules[0].resources == ("edge.drone7.evt.>",) and p.rules[0].actions == ACTIONS
    assert p.rules[0].principals == (("*", "*"),)


@pytest.mark.parametrize(("body", "words"), [
    ('name = "r1"\neffect = "maybe"\nprincipal = "caller:*"\naction = "call"',
     ["rule 'r1'", "must be one of allow, deny", "rule[0].effect"]),
    ('name = "r1"\neffect = "allow"\nprincipal = "robot:x"\naction = "call"',
     ["rule 'r1'", "principal 'robot:x'", "rule[0].principal"]),
    ('name = "r1"\neffect = "allow"\nprincipal = "caller:*"\naction = "fly"',
     ["rule 'r1'", "unknown action 'fly'", "rule[0].action"]),
    ('name = "r1"\neffect = "allow"\nprincipal = "caller:*"\naction = "call"\nresource = "a.>.b"',
     ["rule 'r1'", "resource pattern 'a.>.b'", "rule[0].resource"]),
    ('name = "r1"\neffect = "allow"\nprincipal = "caller:*"\naction = "call"\nresource = "a..b"',
     ["resource pattern 'a..b'"]),
    ('name = "r1"\neffect = "allow"\nprincipal = "caller:*"\naction = "call"\nresource = "a.b*"',
     ["resource pattern 'a.b*'"]),
    ('name = "r1"\neffect = "allow"\nprincipal = "caller:*"\naction = "call"\nhours = "25:00-26:00"',
     ["rule 'r1'", "HH:MM-HH:MM", "rule[0].hours"]),
    ('name = "r1"\neffect = "allow"\nprincipal = "caller:*"\naction = "call"\nhours = "08:00-08:00"',
     ["empty"]),
    ('name = "r1"\neffect = "allow"\nprincipal = "caller:*"\naction = "call"\nlink = "sideways"',
     ["rule[0].link"]),
    ('name = "r1"\neffect = "allow"\nprincipal = "caller:*"\naction = "call"\ncolour = "red"',
     ["rule 'r1'", "unknown key 'colour'", "rule[0].colour"]),
    ('name = "r1"\neffect = "allow"\nprincipal = "caller:*"\naction = []',
     ["rule[0].action", "non-empty list"]),
    ('effect = "allow"\nprincipal = "caller:*"\naction = "call"',
     ["rule rule[0]", "missing required key 'name'"]),
    ('name = "bad name!"\neffect = "allow"\nprincipal = "caller:*"\naction = "call"',
     ["rule names are"]),
])
def test_a_bad_rule_is_refused_naming_the_rule_the_key_and_the_file(
        tmp_path: Path, body: str, words: list[str]) -> None:
    path = write(tmp_path, "[[rule]]\n" + body + "\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path, "dev1")
    text = info.value.message
    for w in words:
        assert w in text, text
    assert str(path) in text
    assert isinstance(info.value, ConfigError) and isinstance(info.value, EdgeError)
    assert info.value.file == str(path)


def test_limits_are_checked(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="needs rate, quota_messages or quota_bytes"):
        load_policy(write(tmp_path, '[[limit]]\nname = "l"\nprincipal = "caller:*"\naction = "call"\n'), "d")
    with pytest.raises(PolicyError, match=r"limit\[0\]\.rate"):
        load_policy(write(tmp_path, '[[limit]]\nname = "l"\nprincipal = "caller:*"\naction = "call"\n'
                                    "rate = -1\n"), "d")
    with pytest.raises(PolicyError, match="burst needs a rate"):
        load_policy(write(tmp_path, '[[limit]]\nname = "l"\nprincipal = "caller:*"\naction = "call"\n'
                                    "quota_messages = 3\nburst = 2\n"), "d")


def test_duplicate_names_unknown_top_keys_versions_and_syntax(tmp_path: Path) -> None:
    rule = '[[rule]]\nname = "same"\neffect = "allow"\nprincipal = "caller:*"\naction = "call"\n'
    with pytest.raises(PolicyError, match="a second rule or limit is named 'same'"):
        load_policy(write(tmp_path, rule + rule), "d")
    with pytest.raises(PolicyError, match="unknown key 'rules'"):
        load_policy(write(tmp_path, "[[rules]]\nname = 'x'\n"), "d")
    with pytest.raises(PolicyError, match="version"):
        load_policy(write(tmp_path, "version = 2\n"), "d")
    with pytest.raises(PolicyError, match="invalid TOML") as info:
        load_policy(write(tmp_path, "[[rule]\n"), "d")
    assert str(tmp_path / "policy.toml") in info.value.message
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "absent.toml", "d")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(tmp_path / "bin.toml", "d")


def test_too_many_rules_are_refused_before_they_are_read() -> None:
    rules = [{"name": f"r{i}"} for i in range(MAX_RULES + 1)]  # each one would be invalid too
    with pytest.raises(PolicyError, match=f"at most {MAX_RULES}"):
        parse_policy({"rule": rules}, "d")


def test_the_example_policy_and_config_load() -> None:
    from edge.config import load_config

    root = Path(__file__).resolve().parents[2] / "examples"
    cfg = load_config(root / "demo-policy.toml")
    assert cfg.policy.file == root / "policy.toml" and cfg.demo
    p = load_policy(root / "policy.toml", cfg.device)
    assert [r.name for r in p.rules] == ["agents-steer", "cli-anything", "pilot-launches", "cli-writes", "cli-deploys",
                                        "cloud-lands", "no-arming-at-night"]
    assert [lim.name for lim in p.limits] == ["tool-calls"]
