from __future__ import annotations

import subprocess
import sys


def edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli.main", *args], capture_output=True, text=True, timeout=60)


def test_hw_scan_emulated_bus_identifies_the_chips() -> None:
    res = edge("hw", "scan", "--emulated")
    assert res.returncode == 0
    assert res.stdout.splitlines() == [
        "emulated i2c-1 0x40 ina219",
        "emulated i2c-1 0x68 mpu6050",
        "emulated i2c-1 0x76 bme280",
    ]


def test_hw_scan_missing_bus_is_one_sentence() -> None:
    res = edge("hw", "scan", "--bus", "77")
    assert res.returncode == 1
    assert res.stderr.startswith("edge: no I2C bus /dev/i2c-77")
