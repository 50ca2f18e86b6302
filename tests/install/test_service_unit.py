"""edge.service, rendered from the one service description (edge/service/service.toml)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import ConfigError
from edge.service import unit

ROOT = Path(__file__).resolve().parents[2]
IMAGE_UNIT = ROOT / "image" / "rootfs" / "usr" / "lib" / "systemd" / "system" / "edge.service"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_committed_unit_is_the_rendered_one() -> None:
    res = subprocess.run([sys.executable, "-m", "edge.service.unit", "--check", str(IMAGE_UNIT)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert IMAGE_UNIT.read_text() == unit.render()


def test_check_reports_a_drifted_unit(tmp_path: Path) -> None:
    drifted = tmp_path / "edge.service"
    drifted.write_text(unit.render().replace("WatchdogSec=30", "WatchdogSec=300"))
    res = subprocess.run([sys.executable, "-m", "edge.service.unit", "--check", str(drifted)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "differs from the rendered unit" in res.stderr


def test_the_unit_has_the_promised_settings() -> None:
    d = directives(unit.render())
    desc = unit.description()
    one = {k: v[0] for k, v in d.items() if len(v) == 1}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert int(one["WatchdogSec"]) > 0 and one["Restart"] == "on-failure"
    assert int(one["StartLimitBurst"]) >= 1 and int(one["StartLimitIntervalSec"]) > 0
    assert int(one["TimeoutStopSec"]) > 0
    assert one["User"] == desc["account"]["user"]
    assert d["SupplementaryGroups"] == ["i2c", "gpio", "dialout", "video"] == desc["account"]["groups"]
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "StateDirectory": "edge"}.items():
        assert one[key] == value, key
    assert d["RestrictAddressFamilies"] == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    assert d["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert one["StandardOutput"] == "journal"
    exec_start = one["ExecStart"].split()
    assert exec_start[:2] == [unit.IMAGE_EXEC, "run"]
    assert exec_start[exec_start.index("--config") + 1] == desc["paths"]["config"]
    assert exec_start[exec_start.index("--data-dir") + 1] == desc["paths"]["data_dir"]
    assert f"/var/lib/{one['StateDirectory']}" == desc["paths"]["data_dir"]


def test_a_bad_value_in_the_description_names_its_key() -> None:
    with pytest.raises(ConfigError) as err:
        unit.render(desc={"service": {"Environment": [{"A": 1}]}})
    assert err.value.key == "service.Environment"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: `make test` installs systemd"
    return found


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    path = tmp_path / "edge.service"
    path.write_text(unit.render(str(Path(sys.executable).with_name("python"))))
    res = subprocess.run([systemd_analyze(), "verify", "--man=no", str(path)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "edge.service" not in res.stderr, res.stderr  # no warning about our unit


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    """systemd's own exposure score of the unit: 'OK' (<= 2.5 of 10) or better."""
    path = tmp_path / "edge.service"
    path.write_text(unit.render(str(Path(sys.executable).with_name("python"))))
    res = subprocess.run([systemd_analyze(), "security", "--offline=true", "--no-pager", str(path)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    m = re.search(r"Overall exposure level for edge.service: ([0-9.]+)", res.stdout)
    assert m, res.stdout[-500:]
    assert float(m.group(1)) <= 2.5, res.stdout
