"""JetStream store limits: explicit and stable across restarts, a reservation that does not fit is
a clear error (real nats-server; edge.nats.storage)."""

from __future__ import annotations

import os
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from edge.config import DeviceConfig, load_config
from edge.errors import ConfigError
from edge.nats.storage import (
    DEFAULT_MEM_BYTES,
    MIB,
    StoreLimitError,
    check_reservations,
    reservations,
    store_limits,
)
from edge.runtime import Runtime
from edge.sync.device.streams import ensure_stream
from rigs.nats import running_server


def half_of_fs(path: Path) -> int:
    st = os.statvfs(path)
    return int(st.f_blocks * st.f_frsize * 0.5) // MIB * MIB


def stream(name: str, mib: int) -> StreamConfig:
    return StreamConfig(name=name, subjects=[name.lower()], max_bytes=mib * MIB, storage=StorageType.FILE)


def test_default_limits_are_half_the_filesystem_and_do_not_move_with_free_space(tmp_path: Path) -> None:
    limits = store_limits(tmp_path / "not-yet" / "made")  # the nearest existing ancestor counts
    assert limits.file_bytes == half_of_fs(tmp_path) and limits.file_bytes % MIB == 0
    assert limits.mem_bytes == DEFAULT_MEM_BYTES
    assert "half" in limits.file_source
    (tmp_path / "fill").write_bytes(b"\0" * (8 * MIB))  # less free space, same size
    os.sync()
    assert store_limits(tmp_path).file_bytes == limits.file_bytes
    given = store_limits(tmp_path, 123 * MIB, 7 * MIB)
    assert (given.file_bytes, given.mem_bytes) == (123 * MIB, 7 * MIB)
    assert "max_store_bytes = " in given.file_source


def test_config_keys_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text("[nats]\nmax_store_bytes = 1073741824\nmax_mem_bytes = 33554432\n")
    cfg = load_config(path)
    assert (cfg.nats.max_store_bytes, cfg.nats.max_mem_bytes) == (2**30, 32 * MIB)
    path.write_text("[nats]\nmax_mem_bytes = -1\n")
    with pytest.raises(ConfigError, match="nats.max_mem_bytes"):
        load_config(path)


async def test_a_stream_that_does_not_fit_is_a_clear_error(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_store_bytes=50 * MIB) as srv:
        nc = await nats.connect(srv.url)
        try:
            js = nc.jetstream()
            await ensure_stream(js, stream("SMALL", 30))
            with pytest.raises(StoreLimitError) as err:
                await ensure_stream(js, stream("BIG", 30))
            msg = str(err.value)
            assert "stream BIG (30.0 MiB)" in msg and "SMALL 30.0 MiB" in msg, msg
            assert "nats.max_store_bytes" in msg and err.value.fields["stream"] == "BIG"
            assert [r.stream for r in await reservations(js)] == ["SMALL"]  # nothing half made
        finally:
            await nc.close()


async def test_streams_over_a_lowered_limit_are_named_before_anything_is_made(tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with running_server(tmp_path, store_dir=store, max_store_bytes=100 * MIB) as srv:
        nc = await nats.connect(srv.url)
        js = nc.jetstream()
        for name in ("A", "B", "C"):
            await ensure_stream(js, stream(name, 30))
        await check_reservations(js, store_limits(tmp_path, 100 * MIB))  # fits
        await nc.close()
    # the same store under a smaller limit: the server recovers the streams, but refuses every
    # stream made or changed afterwards; the check says so first, with the numbers
    async with running_server(tmp_path, store_dir=store, max_store_bytes=50 * MIB) as srv:
        nc = await nats.connect(srv.url)
        try:
            js = nc.jetstream()
            assert sorted(r.stream for r in await reservations(js)) == ["A", "B", "C"]
            with pytest.raises(StoreLimitError) as err:
                await check_reservations(js, store_limits(tmp_path, 50 * MIB))
            msg = str(err.value)
            assert "reserve 90.0 MiB" in msg and "limit of 50.0 MiB" in msg, msg
            assert f"at least {90 * MIB} bytes" in msg and "nats.max_store_bytes" in msg
            with pytest.raises(StoreLimitError, match="Could not create stream D"):
                await ensure_stream(js, stream("D", 1))  # what the check spares the device
            changed = stream("A", 30)
            changed.description = "the same size, another description"
            with pytest.raises(StoreLimitError, match=r"Could not update stream A \(30.0 MiB\)"):
                await ensure_stream(js, changed)
        finally:
            await nc.close()


async def test_memory_streams_count_against_the_memory_limit(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_store_bytes=100 * MIB, max_mem_bytes=8 * MIB) as srv:
        nc = await nats.connect(srv.url)
        try:
            js = nc.jetstream()
            cfg = StreamConfig(name="M", subjects=["m"], max_bytes=16 * MIB, storage=StorageType.MEMORY)
            with pytest.raises(StoreLimitError, match="nats.max_mem_bytes"):
                await ensure_stream(js, cfg)
            await ensure_stream(js, stream("F", 16))  # the file store is another budget
        finally:
            await nc.close()


def device(tmp_path: Path, max_store_bytes: int | None = None) -> DeviceConfig:
    cfg = DeviceConfig(device="s1", data_dir=tmp_path / "s1")
    cfg.nats.max_store_bytes = max_store_bytes
    return cfg


async def test_runtime_gives_the_server_explicit_limits(tmp_path: Path) -> None:
    rt = Runtime(device(tmp_path))
    await rt.start()
    try:
        conf = (tmp_path / "s1" / "nats" / "nats.conf").read_text()
        assert f"max_file_store: {half_of_fs(tmp_path)}" in conf, conf
        assert f"max_memory_store: {DEFAULT_MEM_BYTES}" in conf, conf
        assert rt.store_limits is not None and rt.store_limits.file_bytes == half_of_fs(tmp_path)
    finally:
        await rt.stop()


async def test_runtime_start_under_a_too_small_limit_names_the_stream(tmp_path: Path) -> None:
    rt = Runtime(device(tmp_path, 4 * MIB))
    try:
        with pytest.raises(StoreLimitError) as err:
            await rt.start()
        assert "Could not create stream" in str(err.value) and "nats.max_store_bytes" in str(err.value)
    finally:
        await rt.stop()


async def test_runtime_restart_under_a_lowered_limit_fails_before_the_layers(tmp_path: Path) -> None:
    rt = Runtime(device(tmp_path))
    await rt.start()
    await rt.stop()
    rt = Runtime(device(tmp_path, 24 * MIB))
    try:
        with pytest.raises(StoreLimitError) as err:
            await rt.start()
        msg = str(err.value)
        assert "streams reserve" in msg and "TELE 64.0 MiB" in msg and "limit of 24.0 MiB" in msg, msg
        assert rt.layers is None and rt.persister is None  # nothing started past the check
    finally:
        await rt.stop()
    rt = Runtime(device(tmp_path))  # the default again: it starts
    await rt.start()
    await rt.stop()
