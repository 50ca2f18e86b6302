"""The config reader: each getter, ranges, choices, paths, arrays of tables, unknown keys, and the
one message style (``<problem> (key '<key>' in <file>)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config.table import REQUIRED, Table, array
from edge.errors import ConfigError

FILE = "/etc/edge/device.toml"
BASE = Path("/etc/edge")


def table(data: dict[str, Any], key: str = "sec", label: str | None = None) -> Table:
    return Table(data, key=key, file=FILE, base=BASE, label=label)


def refused(call: Any, key: str, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        call()
    err = ei.value
    assert err.key == key and err.file == FILE
    assert text in err.message
    assert str(err).endswith(f"(key '{key}' in {FILE})")
    return err


def test_scalars_and_defaults() -> None:
    t = table({"s": "x", "i": 3, "f": 2, "b": True})
    assert t.text("s") == "x" and t.text("missing", "d") == "d" and t.text("nothing", None) is None
    assert t.integer("i", lo=0, hi=5) == 3 and t.integer("gone", 7) == 7
    f = t.number("f", lo=0.0, unit="s")
    assert f == 2.0 and isinstance(f, float)
    assert t.flag("b") is True and t.flag("absent", False) is False
    t.finish()


@pytest.mark.parametrize(("data", "call", "text"), [
    ({"k": 1}, lambda t: t.text("k"), "expected a string, got 1"),
    ({"k": "1"}, lambda t: t.integer("k"), "expected an integer, got '1'"),
    ({"k": True}, lambda t: t.integer("k"), "expected an integer, got true"),
    ({"k": 1.5}, lambda t: t.integer("k"), "expected an integer, got 1.5"),
    ({"k": False}, lambda t: t.number("k"), "expected a number, got false"),
    ({"k": "yes"}, lambda t: t.flag("k"), "expected true or false, got 'yes'"),
    ({"k": 3}, lambda t: t.path("k"), "expected a path (string), got 3"),
    ({"k": "a"}, lambda t: t.items("k"), "expected a list, got 'a'"),
    ({"k": [1]}, lambda t: t.strings("k"), "expected a list of strings, got [1]"),
    ({"k": 2}, lambda t: t.mapping("k"), "expected a table, got 2"),
    ({"k": 2}, lambda t: t.table("k"), "expected a table, got 2"),
    ({"k": {"a": 1}}, lambda t: t.tables("k"), "expected an array of tables ([[k]])"),
    ({"k": [1]}, lambda t: t.tables("k"), "expected an array of tables ([[k]])"),
])
def test_wrong_type_names_key_and_file(data: dict[str, Any], call: Any, text: str) -> None:
    t = table(data)
    key = "sec.k"
    with pytest.raises(ConfigError) as ei:
        call(t)
    err = ei.value
    assert err.key == key and err.file == FILE and text in err.message, err.message
    assert str(err) == err.message and str(err).endswith(f"(key '{key}' in {FILE})")


def test_required() -> None:
    refused(lambda: table({}).text("port", REQUIRED), "sec.port", "missing required key 'port'")
    refused(lambda: table({}).integer("pin"), "sec.pin", "missing required key 'pin'")
    refused(lambda: table({"p": ""}).path("p"), "sec.p", "expected a non-empty path")


@pytest.mark.parametrize(("call", "text"), [
    (lambda t: t.integer("n", lo=0, hi=65535), "must be within 0..65535, got 70000"),
    (lambda t: t.integer("n", hi=10), "must be at most 10, got 70000"),
    (lambda t: t.number("x", lo=0.05, hi=3600, unit="s"), "must be within 0.05..3600 s, got 0"),
    (lambda t: t.number("x", lo=1.0, unit="Hz"), "must be at least 1 Hz, got 0"),
])
def test_ranges_with_units(call: Any, text: str) -> None:
    t = table({"n": 70000, "x": 0})
    with pytest.raises(ConfigError) as ei:
        call(t)
    assert text in ei.value.message


def test_defaults_are_not_range_checked() -> None:
    assert table({}).integer("n", 0, lo=1) == 0  # "not given" may be outside the range
    assert table({}).number("x", None, lo=1.0) is None


def test_integer_choices() -> None:
    t = table({"g": 3, "ok": 4})
    assert t.integer("ok", choices=(2, 4, 8)) == 4
    refused(lambda: t.integer("g", 2, choices=(2, 4, 8), unit="g"), "sec.g", "must be one of 2, 4, 8 g; got 3")


def test_choices() -> None:
    t = table({"backend": "fake", "mode": "esc"})
    assert t.choice("mode", ("servo", "esc")) == "esc"
    assert t.choice("other", ("a", "b"), "a") == "a"
    refused(lambda: t.choice("backend", ("real", "emulated"), "real"), "sec.backend",
            "must be one of real, emulated; got 'fake'")
    refused(lambda: table({"s": ""}).text("s", nonempty=True), "sec.s", "expected a non-empty string")


def test_paths_are_relative_to_the_config_file() -> None:
    t = table({"rel": "models/face.tflite", "abs": "/dev/ttyAMA0", "up": "../x", "home": "~/k", "empty": ""})
    assert t.path("rel") == BASE / "models" / "face.tflite"
    assert t.path("abs") == Path("/dev/ttyAMA0")
    assert t.path("up") == BASE / ".." / "x"
    assert t.path("home") == Path.home() / "k"
    assert t.path("empty", None) is None  # "" counts as not given
    assert t.path("absent", None) is None


def test_lists_and_free_form_tables() -> None:
    t = table({"l": [1, "a"], "s": ["a", "b"], "m": {"fleet": "n"}})
    assert t.items("l") == [1, "a"] and t.items("none", None) is None
    assert t.strings("s") == ["a", "b"] and t.strings("none", []) == []
    assert t.mapping("m") == {"fleet": "n"} and t.mapping("none", {}) == {}
    t.finish()


def test_sub_tables_and_arrays_name_their_keys() -> None:
    top = Table({"nats": {"port": "x"}, "drivers": [{"a": 1}, {"b": 2}]}, file=FILE, base=BASE)
    nats = top.table("nats")
    refused(lambda: nats.integer("port"), "nats.port", "expected an integer")
    first, second = top.tables("drivers")
    assert first.integer("a") == 1 and first.base == BASE
    refused(second.finish, "drivers[1].b", "unknown key 'b'")
    empty = top.table("absent")
    assert empty.data == {} and empty.prefix == "absent"
    assert top.tables("none") == []
    assert [t.prefix for t in array("models", [{}, {}], file=FILE)] == ["models[0]", "models[1]"]
    assert array("models", None) == []


def test_unknown_keys_are_refused_in_sorted_order() -> None:
    t = table({"port": 1, "zeta": 2, "alpha": 3})
    t.integer("port")
    assert t.unread() == ["alpha", "zeta"]
    refused(t.finish, "sec.alpha", "unknown key 'alpha'")
    t.mark("alpha", "zeta")
    t.finish()
    names = table({"a": 1, "b": 2})
    assert names.names() == ["a", "b"]
    names.finish()  # names() reads every key


def test_top_level_keys_and_label() -> None:
    top = Table({"colour": "red"}, file=FILE)
    refused(top.finish, "colour", "unknown key 'colour'")
    t = table({"rate_hz": "fast"}, key="drivers[0]", label="driver 'baro'")
    err = refused(lambda: t.number("rate_hz"), "drivers[0].rate_hz", "expected a number")
    assert err.message.startswith("driver 'baro': expected a number, got 'fast'")
    assert t.error(None, "bad").key == "drivers[0]"


def test_not_a_table() -> None:
    with pytest.raises(ConfigError) as ei:
        Table([1], key="tools", file=FILE)
    assert ei.value.key == "tools" and "expected a table" in ei.value.message
