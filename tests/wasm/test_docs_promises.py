"""Promises of docs/abi.md checked by a component written from the docs alone, through a real
Runtime (embedded or external nats-server, sandbox workers, compiled C).

The finding behind this file: ``publish`` accepted a payload of exactly 1 MiB (the documented
limit), and the runtime forwarded it with its origin headers. nats-server counts headers in its
``max_payload`` (1 MiB by default), answered ``Maximum Payload Violation`` and closed the
connection, which nats-py does not reconnect: one component's publish cut the whole device off
NATS. The limit now leaves room for the headers (``PUBLISH_HEADER_ROOM``), and the runtime never
sends a message larger than the server it is connected to accepts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from sandbox_support import Recorder, build_module, entry, manifest, wait_for, write_manifest

from rigs.nats import ServerFactory

from edge.config import DEVICE_ID_RE, DeviceConfig
from edge.config.device import NatsConfig
from edge.runtime import Runtime
from edge.errors import ComponentLoadError, EntityError
from edge.inference.config import MODEL_NAME_RE
from edge.nats.subjects import is_id
from edge.wasm.abi import PUBLISH_HEADER_ROOM, PUBLISH_MAX_BYTES
from edge.wasm.manifest import load_manifest
from edge.wasm.origin import MAX_HOPS, header_bytes, origin_headers, origin_id
from edge.wasm.pool import SandboxPool
from edge.world.schema import NAME_RE as SCHEMA_NAME_RE
from edge.world.store import check_entity_id

pytestmark = pytest.mark.timeout(120)

DEV = "dp"

#: on a message "m" publishes EDGE_PUBLISH_MAX (edge.h) bytes on evt.big.data, on "o" one byte more, on
#: "s" a small one; the publish's result goes to evt.big.rc as one signed byte
BIG = r"""
#include "edge.h"
EDGE_INBOX(16)
static uint8_t big[EDGE_PUBLISH_MAX + 1];
static const char data_subj[] = "edge.DEV.evt.big.data";
static const char rc_subj[] = "edge.DEV.evt.big.rc";
EDGE_ON_MESSAGE {
    (void)subject; (void)subject_len;
    if (data_len != 1) return 1;
    int32_t n = data[0] == 'm' ? EDGE_PUBLISH_MAX : data[0] == 'o' ? EDGE_PUBLISH_MAX + 1 : 5;
    for (int32_t i = 0; i < n; i++) big[i] = (uint8_t)i;
    int8_t rc = (int8_t)edge_publish(data_subj, sizeof data_subj - 1, big, n);
    return edge_publish(rc_subj, sizeof rc_subj - 1, &rc, 1);
}
"""


@pytest.fixture(scope="module")
def big_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("big")
    src = tmp / "big.c"
    src.write_text(BIG.replace("DEV", DEV))  # the SDK's EDGE_PUBLISH_MAX: the host's limit?
    return Path(build_module().compile_wasm([src], tmp / "big.wasm"))


class Tap:
    def __init__(self) -> None:
        self.msgs: list[Msg] = []

    async def on_msg(self, msg: Msg) -> None:
        self.msgs.append(msg)


async def start(tmp: Path, big_module: Path, nats: NatsConfig | None = None) -> Runtime:
    rt = Runtime(DeviceConfig(device=DEV, data_dir=tmp / "data", nats=nats or NatsConfig()))
    await rt.start()
    path = write_manifest(tmp, "big", big_module, subscribe=(f"edge.{DEV}.big.in",),
                          publish=(f"edge.{DEV}.evt.big.>",), memory_pages=18)
    await rt.load_component(str(path))
    return rt


@pytest.fixture
async def runtime(tmp_path: Path, big_module: Path) -> AsyncIterator[Runtime]:
    rt = await start(tmp_path, big_module)
    try:
        yield rt
    finally:
        await rt.stop()


async def ask(rt: Runtime, rcs: Tap, what: bytes) -> int:
    """Send ``what`` to the component; its publish's result."""
    before = len(rcs.msgs)
    await rt.sandbox.ctx.nc.publish(f"edge.{DEV}.big.in", what)
    await wait_for(lambda: len(rcs.msgs) > before, timeout=10)
    return int.from_bytes(rcs.msgs[before].data, "little", signed=True)


def test_the_header_room_holds_the_longest_origin_headers() -> None:
    longest = origin_headers(origin_id("c" * 64, "d" * 64), 10 ** 6 - 1)  # names 1-64, 6 digits
    assert MAX_HOPS < 10 ** 6
    assert header_bytes(longest) <= PUBLISH_HEADER_ROOM
    assert PUBLISH_MAX_BYTES + PUBLISH_HEADER_ROOM == 1024 * 1024  # nats-server's default


async def test_the_largest_payload_is_delivered_and_the_device_stays_connected(
        runtime: Runtime) -> None:
    nc = runtime.sandbox.ctx.nc
    data, rcs = Tap(), Tap()
    await nc.subscribe(f"edge.{DEV}.evt.big.data", cb=data.on_msg)
    await nc.subscribe(f"edge.{DEV}.evt.big.rc", cb=rcs.on_msg)
    assert await ask(runtime, rcs, b"m") == 0
    await wait_for(lambda: data.msgs, timeout=10)
    assert len(data.msgs[0].data) == PUBLISH_MAX_BYTES
    assert data.msgs[0].data[:3] == bytes([0, 1, 2])
    assert data.msgs[0].headers and data.msgs[0].headers["Edge-Component"] == f"big@{DEV}"
    assert await ask(runtime, rcs, b"o") == -2  # one byte more: refused at the call
    await asyncio.sleep(0.3)
    assert len(data.msgs) == 1
    assert nc.is_connected and not nc.is_closed
    assert await ask(runtime, rcs, b"s") == 0  # the device still publishes
    await wait_for(lambda: len(data.msgs) == 2)


async def test_a_message_over_an_external_servers_max_payload_is_dropped_not_fatal(
        tmp_path: Path, big_module: Path, nats_servers: ServerFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = await nats_servers("small", extra="max_payload: 524288")
    rt = await start(tmp_path, big_module, NatsConfig(url=srv.url))
    try:
        nc = rt.sandbox.ctx.nc
        assert nc.max_payload == 524288
        data, rcs = Tap(), Tap()
        await nc.subscribe(f"edge.{DEV}.evt.big.data", cb=data.on_msg)
        await nc.subscribe(f"edge.{DEV}.evt.big.rc", cb=rcs.on_msg)
        with caplog.at_level(logging.WARNING, logger="edge.wasm.layer"):
            assert await ask(rt, rcs, b"m") == 0  # accepted at the call, too large for this server
            await wait_for(lambda: rt.sandbox.oversize.get("big") == 1)
        warning = next(r.getMessage() for r in caplog.records if "max_payload" in r.getMessage())
        assert "'big'" in warning and f"edge.{DEV}.evt.big.data" in warning and "524288" in warning
        assert nc.is_connected and not nc.is_closed
        status = next(s for s in rt.components_status() if s["name"] == "big")
        assert status["oversize"] == 1
        assert await ask(rt, rcs, b"s") == 0
        await wait_for(lambda: len(data.msgs) == 1)
        assert len(data.msgs[0].data) == 5  # only the small one went out
    finally:
        await rt.stop()


#: Every return code docs/abi.md's import table promises, from one call: each result is published
#: as "name=value" on evt.codes (publish_per_call = 46 in its manifest, so the quota is reached
#: last, after the results: `quota_ok` publishes succeed, then -3).
CODES = r"""
#include "edge.h"
EDGE_INBOX(64)
static uint8_t big[EDGE_PUBLISH_MAX + 1];
static char k[300];
static char buf[64];
static int32_t sent;
static const char out[] = "edge.DEV.evt.codes";
static void put(const char *name, int32_t v) {
    char d[64]; int32_t l = 0;
    for (int i = 0; name[i]; i++) d[l++] = name[i];
    d[l++] = '=';
    edge_fmt_int(d, 64, &l, v);
    edge_publish(out, sizeof out - 1, d, l);
    sent++;
}
EDGE_ON_MESSAGE {
    (void)subject; (void)subject_len; (void)data; (void)data_len;
    sent = 0;
    put("batch_len", edge_batch_len());
    put("entity_id", edge_entity_id(0, buf, 8));
    put("col_read", edge_col_read(0, (double *)buf, 8));
    put("col_write", edge_col_write(0, (const double *)buf, 8));
    put("pub_denied", edge_publish_str("edge.DEV.cmd.other", "x", 1));
    put("pub_wild", edge_publish_str("edge.DEV.evt.*", "x", 1));
    put("pub_gt", edge_publish_str("edge.DEV.evt.>", "x", 1));
    put("pub_empty", edge_publish(out, 0, "x", 1));
    put("pub_space", edge_publish_str("edge.DEV.evt.a b", "x", 1));
    put("pub_empty_token", edge_publish_str("edge.DEV.evt..b", "x", 1));
    put("pub_star_inside", edge_publish_str("edge.DEV.evt.a*b", "x", 1));
    put("pub_newline", edge_publish_str("edge.DEV.evt.a\n", "x", 1));
    for (int i = 0; i < 257; i++) k[i] = 'a';
    edge_memcpy(k, "edge.DEV.evt.", sizeof "edge.DEV.evt." - 1);
    put("pub_subject_256", edge_publish(k, 256, "x", 1));
    put("pub_subject_257", edge_publish(k, 257, "x", 1));
    put("pub_payload_max", edge_publish(out, sizeof out - 1, big, EDGE_PUBLISH_MAX));
    put("pub_payload_over", edge_publish(out, sizeof out - 1, big, EDGE_PUBLISH_MAX + 1));
    for (int i = 0; i < 129; i++) k[i] = 'k';
    put("put_key_128", edge_kv_put(k, 128, "v", 1));
    put("put_key_129", edge_kv_put(k, 129, "v", 1));
    put("put_key_chars", edge_kv_put("a/b", 3, "v", 1));
    put("put_key_empty", edge_kv_put("a", 0, "v", 1));
    put("put_key_dots", edge_kv_put("a..b", 4, "v", 1));
    put("put_key_dot_last", edge_kv_put("a.", 2, "v", 1));
    put("put_key_dot_first", edge_kv_put(".a", 2, "v", 1));
    put("put_key_newline", edge_kv_put("a\n", 2, "v", 1));
    put("put_value_64k", edge_kv_put_str("v", big, 64 * 1024));
    put("put_value_over", edge_kv_put_str("v2", big, 64 * 1024 + 1));
    put("put_quota", edge_kv_put_str("third", "v", 1));
    put("get_full_length", edge_kv_get_str("v", buf, 4));
    put("get_absent", edge_kv_get_str("absent", buf, 4));
    put("get_key_129", edge_kv_get(k, 129, buf, 4));
    int32_t ok = 0, rc = 0;
    while ((rc = edge_publish(out, sizeof out - 1, "q", 1)) == 0) ok++;
    /* the quota is spent: report through the log instead (level 1) */
    char line[64]; int32_t l = 0;
    const char *p = "quota_ok=";
    while (*p) line[l++] = *p++;
    edge_fmt_int(line, 64, &l, ok + sent + 2); /* + pub_subject_256 and pub_payload_max */
    line[l++] = ' ';
    edge_fmt_int(line, 64, &l, rc);
    edge_log(9, line, l); /* a level outside 0..3 is logged at info */
    for (int i = 0; i < 2000; i++) big[i] = 'L';
    edge_log(EDGE_INFO, (const char *)big, 2000);
    for (int i = 0; i < 30; i++) edge_log_str(EDGE_DEBUG, "burst");
    return 0;
}
"""

#: What docs/abi.md says each of them returns.
DOCUMENTED = {
    "batch_len": 0,  # 0 outside edge_tick
    "entity_id": -1, "col_read": -1, "col_write": -1,  # no batch
    "pub_denied": -1, "pub_wild": -2, "pub_gt": -2, "pub_empty": -2,
    "pub_space": -2, "pub_empty_token": -2, "pub_star_inside": -2,
    # a final newline passed the subject rule ($ matches before it): publish returned 0, then
    # nats-py refused the subject and the rest of the call's publishes were lost with it
    "pub_newline": -2,
    "pub_subject_256": 0, "pub_subject_257": -2,
    "pub_payload_max": 0, "pub_payload_over": -2,
    "put_key_128": 0, "put_key_129": -1, "put_key_chars": -1, "put_key_empty": -1,
    # the key is stored as the subject $KV.edge-components.<component>.<key>: an empty token
    # was accepted (0) and then lost, since JetStream refuses such a subject after the call
    "put_key_dots": -1, "put_key_dot_last": -1, "put_key_dot_first": -1, "put_key_newline": -1,
    "put_value_64k": 0, "put_value_over": -1,
    "put_quota": -2,  # limits.kv_keys = 2: the 128-byte key and "v" are stored
    "get_full_length": 64 * 1024, "get_absent": -1, "get_key_129": -1,
}


async def test_every_documented_return_code_and_limit(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "codes.c"
    src.write_text(CODES.replace("DEV", "dev1"))
    module = Path(build_module().compile_wasm([src], tmp_path / "codes.wasm"))
    await pool.load(manifest(tmp_path, "codes", module, subscribe=("edge.dev1.codes",),
                             publish=("edge.dev1.evt.>",), memory_pages=18, publish_per_call=46,
                             limits={"kv_keys": 2}))
    with caplog.at_level(logging.DEBUG, logger="edge.wasm.component"):
        await pool.deliver("codes", [("edge.dev1.codes", b"go")])
        await pool.flush()
    got = dict(d.decode().split("=") for _, s, d in rec.published
               if s == "edge.dev1.evt.codes" and b"=" in d)
    assert {k: int(v) for k, v in got.items()} == DOCUMENTED
    lines = [r.getMessage() for r in caplog.records if r.name == "edge.wasm.component"]
    quota = [r for r in caplog.records if r.getMessage().endswith("quota_ok=46 -3")]
    assert [r.levelno for r in quota] == [logging.INFO], lines  # publish_per_call, then -3
    assert max(len(line) for line in lines) < 1100 and any("L" * 1024 in x for x in lines)
    assert not any("L" * 1025 in x for x in lines)  # a line is cut at 1 KiB
    counters = entry(pool, "codes")["counters"]
    assert isinstance(counters, dict)
    assert counters["logs_dropped"] == 32 - 20  # a burst of 20 lines, the rest dropped
    assert counters["denied"] == 1 and counters["kv_refused"] == 1


def test_a_ticking_manifest_without_a_query_is_refused_naming_the_key_and_file(
        tmp_path: Path, big_module: Path) -> None:
    # docs/abi.md, Exports: a tick needs edge_tick *and* a query (the docs named only the first)
    path = write_manifest(tmp_path, "noquery", big_module, tick_hz=1.0)
    with pytest.raises(ComponentLoadError) as err:
        load_manifest(path, DEV)
    text = str(err.value)
    assert "needs a query" in text and "run.tick_hz" in text and str(path) in text


#: on "put": stores "kept" = the payload's second byte, then traps; edge_init publishes what it
#: finds under "kept" (or "none") on evt.kept
KEEPER = r"""
#include "edge.h"
EDGE_INBOX(64)
static const char out[] = "edge.DEV.evt.kept";
EDGE_INIT {
    uint8_t v[1];
    int32_t n = edge_kv_get_str("kept", v, 1);
    return n == 1 ? edge_publish(out, sizeof out - 1, v, 1) : edge_publish(out, sizeof out - 1, "none", 4);
}
EDGE_ON_MESSAGE {
    (void)subject; (void)subject_len;
    if (data_len != 2) return 1;
    if (edge_kv_put_str("kept", data + 1, 1) != 0) return 2;
    __builtin_trap();
}
"""


async def test_the_puts_of_a_trapping_call_are_kept_for_the_restart(tmp_path: Path) -> None:
    # docs/abi.md, Key-value lifetime: "the new instance sees every put the host accepted, also
    # those a trapping call made before its trap"
    src = tmp_path / "keeper.c"
    src.write_text(KEEPER.replace("DEV", DEV))
    module = Path(build_module().compile_wasm([src], tmp_path / "keeper.wasm"))
    rt = Runtime(DeviceConfig(device=DEV, data_dir=tmp_path / "data"))
    await rt.start()
    try:
        kept = Tap()
        await rt.sandbox.ctx.nc.subscribe(f"edge.{DEV}.evt.kept", cb=kept.on_msg)
        path = write_manifest(tmp_path, "keeper", module, subscribe=(f"edge.{DEV}.keeper.in",),
                              publish=(f"edge.{DEV}.evt.kept",), memory_pages=2)
        await rt.load_component(str(path))
        await wait_for(lambda: [m.data for m in kept.msgs] == [b"none"])
        await rt.sandbox.ctx.nc.publish(f"edge.{DEV}.keeper.in", b"p7")
        await wait_for(lambda: len(kept.msgs) == 2, timeout=10)  # trapped, restarted
        assert kept.msgs[1].data == b"7"
        status = next(s for s in rt.components_status() if s["name"] == "keeper")
        assert status["last_fault"] and status["last_fault"]["reason"] == "trap"
        entry_ = await (await rt.sandbox._bucket()).get("keeper.kept")
        assert entry_.value == b"7"  # and it is in the bucket
    finally:
        await rt.stop()


BAD_ALLOC = r"""
#include "edge.h"
static int32_t where;
__attribute__((export_name("edge_alloc"))) int32_t edge_alloc(int32_t n) { (void)n; return where; }
EDGE_INIT { where = 0x7ffffff0; return 0; }
EDGE_ON_MESSAGE { (void)subject; (void)subject_len; (void)data; (void)data_len; return 0; }
"""


async def test_an_inbox_outside_linear_memory_is_a_trap_of_edge_alloc(
        pool: SandboxPool, rec: Recorder, tmp_path: Path) -> None:
    src = tmp_path / "badalloc.c"
    src.write_text(BAD_ALLOC)
    module = Path(build_module().compile_wasm([src], tmp_path / "badalloc.wasm"))
    await pool.load(manifest(tmp_path, "badalloc", module, subscribe=("edge.dev1.in",),
                             memory_pages=2))
    await pool.deliver("badalloc", [("edge.dev1.in", b"a"), ("edge.dev1.in", b"b")])
    await pool.flush()
    fault = await wait_for(lambda: [f for c, f in rec.faults if c == "badalloc"])
    assert fault[0].reason == "trap" and fault[0].export == "edge_alloc"
    assert "edge_alloc returned an out-of-bounds buffer" in fault[0].message
    counters = entry(pool, "badalloc")["counters"]
    assert isinstance(counters, dict) and counters["dropped"] == 2 and counters["messages"] == 0


@pytest.mark.parametrize(("key", "line"), [
    ("name", 'name = "n\\n"'),  # documented as [a-z0-9_-]+
    ("run.publish", 'publish = ["edge.{device}.evt.x\\n"]'),
    ("run.subscribe", 'subscribe = ["edge.{device}.in\\n"]'),
    ("query.read", 'read = ["position.x\\n"]'),
])
def test_a_final_newline_does_not_pass_a_manifest_rule(
        tmp_path: Path, big_module: Path, key: str, line: str) -> None:
    # `$` in a Python pattern also matches before a final newline: such a name or subject was
    # accepted and ended up in subjects and headers
    table = {"name": "", "run.publish": "[run]\n", "run.subscribe": "[run]\n",
             "query.read": "[query]\n"}[key]
    head = "" if key == "name" else 'name = "nl"\n'
    path = tmp_path / "nl.toml"
    path.write_text(f'{head}version = "1.0.0"\ncontract = 1\nmodule = "{big_module}"\n'
                    f"{table}{line}\n")
    with pytest.raises(ComponentLoadError) as err:
        load_manifest(path, DEV)
    assert f"key '{key}'" in str(err.value) and str(path) in str(err.value)


def test_a_final_newline_is_not_an_id() -> None:
    assert is_id("drone-1") and not is_id("drone-1\n")
    assert DEVICE_ID_RE.match("demo") and not DEVICE_ID_RE.match("demo\n")
    assert MODEL_NAME_RE.match("face") and not MODEL_NAME_RE.match("face\n")  # [[models]] name
    assert SCHEMA_NAME_RE.match("wind") and not SCHEMA_NAME_RE.match("wind\n")
    check_entity_id("drone-1")
    with pytest.raises(EntityError):  # the device API's entity.spawn takes ids from the network
        check_entity_id("drone-1\n")


#: one tick: writes 42 into column 0, reads it back, reports what it read and the documented
#: codes of the tick's imports on evt.tick as "name=value"; returns 7 (a failed tick, counted)
TICKER = r"""
#include "edge.h"
static double col[8];
static char id[16];
static void put(const char *name, int64_t v) {
    char d[64]; int32_t l = 0;
    for (int i = 0; name[i]; i++) d[l++] = name[i];
    d[l++] = '=';
    edge_fmt_int(d, 64, &l, v);
    edge_publish_str("edge.dev1.evt.tick", d, l);
}
EDGE_TICK {
    (void)dt;
    put("batch_len", edge_batch_len());
    for (int32_t i = 0; i < n; i++) col[i] = 42.0;
    put("write_written", edge_col_write(1, col, n * 8));
    put("write_read_only", edge_col_write(0, col, n * 8));
    put("write_short", edge_col_write(1, col, n * 8 - 8));
    for (int32_t i = 0; i < n; i++) col[i] = 0.0;
    put("read_back", edge_col_read(1, col, n * 8));
    put("read_back_value", (int64_t)col[n - 1]);
    put("read_unknown", edge_col_read(2, col, n * 8));
    put("read_small_cap", edge_col_read(0, col, n * 8 - 1));
    put("entity_id", edge_entity_id(1, id, 16));
    put("entity_id_cut", edge_entity_id(1, id, 2));
    put("entity_id_past", edge_entity_id(n, id, 16));
    return 7;
}
"""


async def test_the_tick_imports_keep_their_documented_codes(
        pool: SandboxPool, rec: Recorder, tmp_path: Path) -> None:
    src = tmp_path / "ticker.c"
    src.write_text(TICKER)
    module = Path(build_module().compile_wasm([src], tmp_path / "ticker.wasm"))
    # columns: 0 velocity.x (read), 1 position.x (write, not read)
    await pool.load(manifest(tmp_path, "ticker", module, read=("velocity.x",),
                             write=("position.x",), publish=("edge.dev1.evt.tick",),
                             memory_pages=2))
    cols = pool.batch("ticker", 2)
    cols[0][:2] = 1.0
    cols[1][:2] = 0.0
    ok = await pool.tick("ticker", 2, 0.1, ids=["drone-a", "drone-bb"])
    assert ok  # edge_tick returned 7: a failed tick, not a fault; its effects stand
    await pool.flush()
    got = {k: int(v) for k, v in (d.decode().split("=") for _, s, d in rec.published
                                  if s == "edge.dev1.evt.tick")}
    assert got == {"batch_len": 2, "write_written": 0, "write_read_only": -1, "write_short": -1,
                   "read_back": 16, "read_back_value": 42, "read_unknown": -1,
                   "read_small_cap": -1, "entity_id": 8, "entity_id_cut": 8,
                   "entity_id_past": -1}
    assert list(cols[1][:2]) == [42.0, 42.0] and list(cols[0][:2]) == [1.0, 1.0]
    counters = entry(pool, "ticker")["counters"]
    assert isinstance(counters, dict) and counters["errors"] == 1 and counters["traps"] == 0


#: on a message naming an import, calls it with a length of -1 (the pair's length argument)
NEGATIVE = r"""
#include "edge.h"
EDGE_INBOX(64)
static char buf[16];
EDGE_ON_MESSAGE {
    (void)subject; (void)subject_len;
    switch (data_len == 1 ? data[0] : 0) {
    case 'l': edge_log(1, buf, -1); return 0;
    case 'p': return edge_publish_str("edge.dev1.evt.neg", buf, -1);
    case 's': return edge_publish(buf, -1, buf, 1);
    case 'k': return edge_kv_put_str("k", buf, -1);
    case 'g': return edge_kv_get_str("k", buf, -1);
    case 'd': return edge_device_id(buf, -1);
    default: return 9;
    }
}
"""


@pytest.mark.parametrize(("what", "text"), [
    (b"l", "log: range ("), (b"p", "publish: range ("), (b"s", "publish: range ("),
    (b"k", "kv_put: range ("), (b"g", "kv_get: buffer ("), (b"d", "device_id: buffer ("),
])
async def test_a_negative_length_is_outside_linear_memory(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, what: bytes, text: str) -> None:
    # docs/abi.md: a pair outside linear memory traps, naming the import, before anything else
    src = tmp_path / "neg.c"
    src.write_text(NEGATIVE)
    module = Path(build_module().compile_wasm([src], tmp_path / "neg.wasm"))
    await pool.load(manifest(tmp_path, "neg", module, subscribe=("edge.dev1.in",),
                             publish=("edge.dev1.evt.neg",), memory_pages=2))
    await pool.deliver("neg", [("edge.dev1.in", what)])
    await pool.flush()
    (fault,) = await wait_for(lambda: [f for c, f in rec.faults if c == "neg"])
    assert fault.reason == "trap" and fault.export == "edge_on_message"
    assert text in fault.message and ", -1) is outside linear memory" in fault.message
    assert rec.published == []
