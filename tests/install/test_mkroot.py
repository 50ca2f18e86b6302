"""image/mkroot.sh, the image's root filesystem step: sized to the files, retried only when mkfs.ext4
says they did not fit, bounded, any other error and a mount under the root refused with the log."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MKROOT = ROOT / "image" / "mkroot.sh"
MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("dumpe2fs") is None,
                                reason="needs e2fsprogs (mkfs.ext4, dumpe2fs)")


def mkroot(root: Path, image: Path, slack_mb: int | str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MKROOT), str(root), str(image), str(slack_mb)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def tree(base: Path, big_mib: int = 0, files: int = 0) -> Path:
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("edge\n")
    if big_mib:
        (root / "big").write_bytes(os.urandom(big_mib * MIB))  # incompressible, all blocks used
    for i in range(files):
        (root / f"f{i}").touch()
    return root


def free_mb(image: Path) -> int:
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout
    head = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(head["Free blocks"]) * int(head["Block size"]) // MIB


def test_sized_to_the_files_with_the_slack_free(tmp_path: Path) -> None:
    root, image = tree(tmp_path, big_mib=20), tmp_path / "root.ext4"
    done = mkroot(root, image, 16)
    assert done.returncode == 0, done.stderr
    root_mb, free = map(int, done.stdout.split())
    assert image.stat().st_size == root_mb * MIB
    assert free == free_mb(image) and 16 <= free <= 16 + 16  # the slack, and not much more
    assert done.stderr == ""  # the first estimate fitted
    subprocess.run(["e2fsck", "-f", "-n", str(image)], check=True, capture_output=True)


def test_grown_only_while_the_files_do_not_fit(tmp_path: Path) -> None:
    # no slack: the first estimate (files + 10 %) is too small for the files and the tables
    root, image = tree(tmp_path, big_mib=30), tmp_path / "root.ext4"
    done = mkroot(root, image, 0)
    assert done.returncode == 0, done.stderr
    grows = [line for line in done.stderr.splitlines() if "did not fit" in line]
    assert 1 <= len(grows) < 5, done.stderr
    assert "Could not allocate block in ext2 filesystem" in grows[0]


def test_bounded_by_tries_when_inodes_run_out(tmp_path: Path) -> None:
    root, image = tree(tmp_path, files=6000), tmp_path / "root.ext4"  # empty files: 0 bytes, 6000 inodes
    done = mkroot(root, image, 0)
    assert done.returncode == 1
    assert done.stderr.count("; trying ") == 4, done.stderr  # 5 tries in all
    assert "after 5 tries" in done.stderr and "Could not allocate inode" in done.stderr


def test_bounded_by_the_size_cap(tmp_path: Path) -> None:
    root, image = tree(tmp_path, big_mib=30), tmp_path / "root.ext4"
    done = mkroot(root, image, 16, EDGE_IMAGE_ROOT_MAX_MB="40")
    assert done.returncode == 1
    assert "limit of 40 MiB (EDGE_IMAGE_ROOT_MAX_MB" in done.stderr, done.stderr
    assert not image.exists() or image.stat().st_size <= 40 * MIB


def test_any_other_mkfs_error_fails_at_once_with_its_log(tmp_path: Path) -> None:
    root = tree(tmp_path, big_mib=1)
    done = mkroot(root, Path("/proc/edge-root.ext4"), 16)  # mkfs cannot make its file there
    assert done.returncode == 1
    assert "did not fit" not in done.stderr
    assert "mkfs.ext4 -d" in done.stderr and "   mkfs.ext4: " in done.stderr, done.stderr  # the log, indented


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    root = tree(tmp_path)
    assert "no root directory" in mkroot(tmp_path / "nope", tmp_path / "r.ext4", 16).stderr
    assert "SLACK_MB must be a whole number" in mkroot(root, tmp_path / "r.ext4", "lots").stderr
    bad_cap = mkroot(root, tmp_path / "r.ext4", 16, EDGE_IMAGE_ROOT_MAX_MB="2G")
    assert bad_cap.returncode == 1 and "EDGE_IMAGE_ROOT_MAX_MB must be a whole number" in bad_cap.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a filesystem under the root needs root")
def test_a_mount_under_the_root_is_refused(tmp_path: Path) -> None:
    root, image = tree(tmp_path, big_mib=1), tmp_path / "root.ext4"
    sys_dir = root / "sys"
    sys_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "edge-test", str(sys_dir)], check=True)
    try:
        done = mkroot(root, image, 16)
    finally:
        subprocess.run(["umount", str(sys_dir)], check=True)
    assert done.returncode == 1
    assert "still mounted under" in done.stderr and str(sys_dir) in done.stderr, done.stderr
    assert not image.exists()
    assert mkroot(root, image, 16).returncode == 0  # unmounted: it is made
