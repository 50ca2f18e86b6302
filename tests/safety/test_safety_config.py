"""The [safety] section: defaults, per-entity overrides, bounded values, errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load_config
from edge.errors import ConfigError
from edge.safety.envelope import DEFAULTS, Fence


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text("[device]\nid = \"d1\"\n" + text)
    return path


def test_no_section_gives_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    env = cfg.safety.for_entity("anything")
    assert env == DEFAULTS
    assert (env.max_horizontal_speed, env.max_vertical_speed, env.max_yaw_rate) == (5.0, 2.0, 90.0)
    assert (env.fence, env.floor, env.ceiling) == (None, None, 120.0)
    assert (env.battery_reserve, env.failsafe_s, env.lookahead_s) == (0.2, 2.0, 2.0)
    assert env.motion_modes == ("GUIDED", "OFFBOARD") and env.fence_action == "hold"


def test_defaults_and_entity_overrides(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[safety]
max_horizontal_speed = 3
ceiling = 60.0
[safety.drone-0]
fence_radius = 40.0
fence_center = [5.0, -5.0]
floor = 2.0
battery_reserve = 0.3
[safety.drone-1]
fence_polygon = [[0, 0], [10, 0], [10, 10]]
ceiling = false
motion_modes = ["guided"]
"""))
    d0 = cfg.safety.for_entity("drone-0")
    assert d0.max_horizontal_speed == 3.0 and d0.ceiling == 60.0  # inherited from [safety]
    assert d0.fence == Fence(radius=40.0, center=(5.0, -5.0)) and d0.floor == 2.0 and d0.battery_reserve == 0.3
    d1 = cfg.safety.for_entity("drone-1")
    assert d1.fence is not None and len(d1.fence.points) == 3 and d1.ceiling is None
    assert d1.motion_modes == ("GUIDED",)
    assert cfg.safety.for_entity("other").fence is None
    assert sorted(cfg.safety.entities) == ["drone-0", "drone-1"]


@pytest.mark.parametrize(("text", "key", "words"), [
    ("[safety]\nmax_horizontal_speed = 80\n", "safety.max_horizontal_speed", "within 0.1..50 m/s"),
    ("[safety]\nbattery_reserve = -0.1\n", "safety.battery_reserve", "within 0..0.9"),
    ("[safety]\nspeed = 3\n", "safety.speed", "unknown key 'speed'"),
    ("[safety.d0]\nfence_radius = 10\nfence_polygon = [[0,0],[1,0],[1,1]]\n", "safety.d0.fence_polygon", "not both"),
    ("[safety.d0]\nfence_polygon = [[0,0],[1,0]]\n", "safety.d0.fence_polygon", "3..64 points"),
    ("[safety.d0]\nfence_center = [1, 2]\n", "safety.d0.fence_center", "needs fence_radius"),
    ("[safety.d0]\nfloor = 50\nceiling = 40\n", "safety.d0.floor", "below the ceiling"),
    ("[safety.d0]\nfence_action = \"ignore\"\n", "safety.d0.fence_action", "one of hold, refuse"),
    ("[safety.\"bad.id\"]\n", "safety.bad.id", "is not valid"),
])
def test_bad_values_name_the_key_and_the_file(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key and err.value.file == str(path)
    assert words in str(err.value)


def test_the_documented_error_sentence(tmp_path: Path) -> None:
    path = write(tmp_path, "[safety.drone-0]\nmax_horizontal_speed = 80\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"safety of 'drone-0': must be within 0.1..50 m/s, got 80 "
                              f"(key 'safety.drone-0.max_horizontal_speed' in {path})")
