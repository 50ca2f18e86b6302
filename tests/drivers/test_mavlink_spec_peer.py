"""The MAVLink driver against a peer that builds frames from the spec (mavlink.io): v2 payload
truncation, v1 frames, signed frames, unknown message ids, noise markers with a length past the
data, split reads, several systems and components on one link, and the command protocol's acks."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymavlink.dialects.v20 import common as mav
from pymavlink.generator import mavcrc
from rigs.mavpeer import MavPeer

from drivers.serial.mavcodec import MavCodec
from drivers.serial.mavlink import MAVLinkDriver
from drivers.testing import RecordingContext

pytestmark = pytest.mark.timeout(60)

HB_ID, HB_EXTRA = 0, 50
CRC_EXTRA = {0: 50, 77: 143}  # HEARTBEAT, COMMAND_ACK (common.xml)


def crc(body: bytes, extra: int) -> bytes:
    c = mavcrc.x25crc(body)
    c.accumulate(bytes([extra]))
    return struct.pack("<H", c.crc)


def v2(msgid: int, payload: bytes, extra: int, *, sysid: int = 1, comp: int = 1, seq: int = 0,
       truncate: bool = True, sign: bool = False) -> bytes:
    """A MAVLink 2 frame as the spec serializes it (trailing zero bytes of the payload cut)."""
    if truncate:
        payload = payload.rstrip(b"\x00") or payload[:1]
    hdr = struct.pack("<BBBBBBBHB", 0xFD, len(payload), 1 if sign else 0, 0, seq, sysid, comp,
                      msgid & 0xFFFF, msgid >> 16)
    frame = hdr + payload + crc(hdr[1:] + payload, extra)
    if sign:  # link id, 48-bit timestamp, 48-bit signature (not checkable without the key)
        frame += bytes([7]) + (123456).to_bytes(6, "little") + bytes(range(6))
    return frame


def v1(msgid: int, payload: bytes, extra: int, *, sysid: int = 1, comp: int = 1, seq: int = 0) -> bytes:
    hdr = struct.pack("<BBBBBB", 0xFE, len(payload), seq, sysid, comp, msgid)
    return hdr + payload + crc(hdr[1:] + payload, extra)


def heartbeat(type_: int = mav.MAV_TYPE_QUADROTOR, autopilot: int = mav.MAV_AUTOPILOT_ARDUPILOTMEGA,
              base_mode: int = mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, custom_mode: int = 4) -> bytes:
    return struct.pack("<IBBBBB", custom_mode, type_, autopilot, base_mode, mav.MAV_STATE_STANDBY, 3)


def ack(command: int, result: int, progress: int = 0, target_system: int = 255,
        target_component: int = 190) -> bytes:
    return struct.pack("<HBBiBB", command, result, progress, 0, target_system, target_component)


def types(msgs: list[Any]) -> list[str]:
    return [m.get_type() for m in msgs]


# -- framing, on the codec the driver reads with --------------------------------------------

def test_truncated_v2_payload_is_zero_extended() -> None:
    c = MavCodec(255, 190)
    frame = v2(HB_ID, struct.pack("<IBBBBB", 4, 2, 3, 0, 0, 0), HB_EXTRA)
    assert frame[1] == 6  # the spec's truncation took the trailing zeros
    (msg,) = c.feed(frame)
    assert (msg.custom_mode, msg.type, msg.autopilot, msg.base_mode, msg.mavlink_version) == (4, 2, 3, 0, 0)
    # a COMMAND_ACK cut to its first bytes: the extension fields read 0 (addressed to everyone)
    (a,) = c.feed(v2(77, ack(400, 0, target_system=0, target_component=0), 143))
    assert (a.command, a.result, a.progress, a.target_system, a.target_component) == (400, 0, 0, 0, 0)
    assert c.bad_bytes == 0


def test_v1_frames_and_a_mix_on_one_link() -> None:
    c = MavCodec(255, 190)
    hb = heartbeat()
    data = v1(0, hb, HB_EXTRA) + v2(0, hb, HB_EXTRA) + v1(0, hb, HB_EXTRA, seq=1)
    msgs = c.feed(data)
    assert types(msgs) == ["HEARTBEAT"] * 3 and all(m.custom_mode == 4 for m in msgs)
    assert c.bad_bytes == 0


def test_signed_v2_frames_are_accepted_unverified_and_framing_holds() -> None:
    c = MavCodec(255, 190)
    hb = heartbeat()
    data = v2(0, hb, HB_EXTRA, sign=True) + v2(0, hb, HB_EXTRA) + v2(0, hb, HB_EXTRA, sign=True)
    assert types(c.feed(data)) == ["HEARTBEAT"] * 3
    assert c.bad_bytes == 0


def test_unknown_message_id_is_skipped_counted_and_the_next_frame_read() -> None:
    c = MavCodec(255, 190)
    unknown = v2(60123, b"\x01\x02\x03\x04", 99)
    assert types(c.feed(unknown + v2(0, heartbeat(), HB_EXTRA))) == ["HEARTBEAT"]
    assert c.bad_bytes == len(unknown)  # its CRC cannot be checked: noise, counted


def test_a_noise_marker_whose_length_runs_past_the_data_does_not_hold_up_the_next_frame() -> None:
    c = MavCodec(255, 190)
    good = v2(0, heartbeat(), HB_EXTRA)
    # 0xFD, length 255: a frame of 267+ bytes that will never come; the heartbeat must not wait
    assert types(c.feed(b"\xfd\xff\x00" + good)) == ["HEARTBEAT"]
    assert types(c.feed(b"\xfe\xf0" + good)) == ["HEARTBEAT"]  # the same with a v1 marker
    assert c.bad_bytes == 5 and not c._buf


def test_a_frame_split_at_every_byte_position() -> None:
    text = b"\xfd\xfe\xfd inside a payload"  # start markers inside the payload
    st = struct.pack("<B50s", 6, text)
    frame = v2(253, st, 83) + v2(0, heartbeat(), HB_EXTRA, seq=1)
    for cut in range(1, len(frame)):
        c = MavCodec(255, 190)
        got = c.feed(frame[:cut]) + c.feed(frame[cut:])
        assert types(got) == ["STATUSTEXT", "HEARTBEAT"], cut
        assert "inside a payload" in got[0].text
        assert c.bad_bytes == 0, cut


def test_byte_by_byte_with_garbage_bursts() -> None:
    c = MavCodec(255, 190)
    good = v2(0, heartbeat(), HB_EXTRA)
    burst = bytes([0xFD, 0x10, 0x00, 0xFE, 0x55, 0xFD, 0xFD, 0xFF]) * 4
    data = burst + good + burst + good + good
    got: list[Any] = []
    for b in data:
        got += c.feed(bytes([b]))
    got += c.feed(good)  # whatever noise still waits, the next frame settles it
    assert types(got).count("HEARTBEAT") == 4
    assert c.bad_bytes == 2 * len(burst)


# -- the driver on a pty --------------------------------------------------------------------

def driver(port: str, **kw: Any) -> MAVLinkDriver:
    opts: dict[str, Any] = {"heartbeat_s": 0.2, "link_timeout_s": 1.0, "command_timeout_s": 0.6,
                            "telemetry_hz": 10.0, **kw}
    return MAVLinkDriver("fc", "drone1", port=port, **opts)


@pytest.fixture
async def peer() -> AsyncIterator[MavPeer]:
    p = MavPeer("ardupilot", heartbeat_hz=0)  # this test writes every frame itself
    p._answer = lambda msg: None  # type: ignore[method-assign]  # this test answers every frame itself
    await p.start()
    yield p
    await p.stop()


def raw(p: MavPeer, data: bytes) -> None:
    os.write(p._master, data)


async def beat(p: MavPeer, stop: asyncio.Event, frames: Any) -> None:
    while not stop.is_set():
        raw(p, frames())
        await asyncio.sleep(0.05)


async def test_gimbal_companion_gcs_and_a_second_autopilot_do_not_stand_in_for_the_vehicle(peer: MavPeer) -> None:
    """target_component 0: the first autopilot heard. A gimbal that claims an autopilot, a companion
    computer, a GCS and autopilot sysid 2 come first; none is taken for the vehicle, and commands
    go to system 1, component 1."""
    others = (v2(0, heartbeat(type_=mav.MAV_TYPE_GIMBAL, autopilot=mav.MAV_AUTOPILOT_GENERIC), HB_EXTRA, comp=154)
              + v2(0, heartbeat(type_=mav.MAV_TYPE_ONBOARD_CONTROLLER, autopilot=mav.MAV_AUTOPILOT_GENERIC),
                   HB_EXTRA, comp=191)
              + v2(0, heartbeat(type_=mav.MAV_TYPE_GCS, autopilot=mav.MAV_AUTOPILOT_INVALID), HB_EXTRA, sysid=255)
              + v2(0, heartbeat(autopilot=mav.MAV_AUTOPILOT_PX4, custom_mode=6 << 16), HB_EXTRA, sysid=2))
    stop = asyncio.Event()
    drv = driver(peer.port, target_component=0)
    ctx = RecordingContext("dev1")
    task = asyncio.create_task(beat(peer, stop, lambda: others + v2(0, heartbeat(), HB_EXTRA, comp=1)))
    try:
        await drv.start(ctx)
        assert drv.telemetry.autopilot_component == 1
        assert drv.commander.component == 1 and drv.commander.flavour == "ardupilot"
        await peer.wait(lambda: len(peer.commands()) >= 1)
        assert {(m.target_system, m.target_component) for m in peer.commands()} == {(1, 1)}
    finally:
        stop.set()
        await task
        await drv.stop()


async def acking(peer: MavPeer, answer: Any) -> asyncio.Task[None]:
    """Heartbeats from system 1 and ``answer(command_long)`` -> bytes for each COMMAND_LONG seen."""
    async def run() -> None:
        seen = 0
        while True:
            raw(peer, v2(0, heartbeat(), HB_EXTRA))
            cmds = peer.commands()
            for m in cmds[seen:]:
                for delay, data in answer(m):
                    asyncio.get_running_loop().call_later(delay, raw, peer, data)
            seen = len(cmds)
            await asyncio.sleep(0.02)
    return asyncio.create_task(run())


ARM = mav.MAV_CMD_COMPONENT_ARM_DISARM


async def test_command_acks_of_others_are_not_ours(peer: MavPeer) -> None:
    def answer(m: Any) -> list[tuple[float, bytes]]:
        if m.command != ARM:
            return [(0, v2(77, ack(m.command, 0), 143))]
        return [
            (0.0, v2(77, ack(ARM, mav.MAV_RESULT_DENIED, target_component=191), 143)),  # another requester
            (0.0, v2(77, ack(ARM, mav.MAV_RESULT_DENIED, target_system=254), 143)),  # another GCS
            (0.0, v2(77, ack(mav.MAV_CMD_NAV_LAND, mav.MAV_RESULT_DENIED), 143)),  # another command
            (0.0, v2(77, ack(ARM, mav.MAV_RESULT_DENIED), 143, comp=154)),  # the gimbal
            (0.05, v2(77, ack(ARM, mav.MAV_RESULT_IN_PROGRESS, 40), 143)),
            (0.15, v2(77, ack(ARM, mav.MAV_RESULT_ACCEPTED, 100), 143)),
            (0.2, v2(77, ack(ARM, mav.MAV_RESULT_FAILED), 143)),  # a duplicate, too late
        ]
    task = await acking(peer, answer)
    drv = driver(peer.port)
    try:
        await drv.start(RecordingContext("dev1"))
        out = await drv.command_long(ARM, 1)
        assert out["ok"] and out["result"] == "ACCEPTED"
        await asyncio.sleep(0.3)  # the duplicate FAILED arrives with nothing waiting: ignored
        assert drv.commander.bad_messages == 0
    finally:
        task.cancel()
        await drv.stop()


@pytest.mark.parametrize("result,word", [(mav.MAV_RESULT_TEMPORARILY_REJECTED, "TEMPORARILY_REJECTED"),
                                         (mav.MAV_RESULT_UNSUPPORTED, "UNSUPPORTED"),
                                         (mav.MAV_RESULT_FAILED, "FAILED")])
async def test_refusals_carry_their_word_and_sentence(peer: MavPeer, result: int, word: str) -> None:
    def answer(m: Any) -> list[tuple[float, bytes]]:
        return [(0, v2(77, ack(m.command, result if m.command == ARM else 0), 143))]
    task = await acking(peer, answer)
    drv = driver(peer.port)
    try:
        await drv.start(RecordingContext("dev1"))
        out = await drv.command_long(ARM, 1)
        assert out == {"ok": False, "command": "MAV_CMD_COMPONENT_ARM_DISARM", "result": word,
                       "flavour": "ardupilot",
                       "error": f"the autopilot answered {word} to MAV_CMD_COMPONENT_ARM_DISARM"}
    finally:
        task.cancel()
        await drv.stop()


async def test_a_late_ack_after_the_timeout_is_dropped(peer: MavPeer) -> None:
    n = 0

    def answer(m: Any) -> list[tuple[float, bytes]]:
        nonlocal n
        if m.command != ARM:
            return [(0, v2(77, ack(m.command, 0), 143))]
        n += 1
        if n == 1:  # after the driver gave up (0.6 s)
            return [(0.9, v2(77, ack(ARM, mav.MAV_RESULT_ACCEPTED), 143))]
        return [(0.3, v2(77, ack(ARM, mav.MAV_RESULT_DENIED), 143))]
    task = await acking(peer, answer)
    drv = driver(peer.port)
    try:
        await drv.start(RecordingContext("dev1"))
        with pytest.raises(TimeoutError, match="no COMMAND_ACK"):
            await drv.command_long(ARM, 1)
        await asyncio.sleep(0.5)  # the late ACCEPTED lands with nothing waiting: dropped
        out = await drv.command_long(ARM, 1)
        assert out["result"] == "DENIED"
    finally:
        task.cancel()
        await drv.stop()


async def test_link_lost_when_heartbeats_stop_and_a_peer_under_another_sysid_is_not_followed(peer: MavPeer) -> None:
    sysid = 1
    stop = asyncio.Event()
    task = asyncio.create_task(beat(peer, stop, lambda: v2(0, heartbeat(), HB_EXTRA, sysid=sysid)))
    drv = driver(peer.port)
    try:
        await drv.start(RecordingContext("dev1"))
        t0 = drv.last_heartbeat
        sysid = 7  # rebooted with another SYSID_THISMAV: not our vehicle
        await asyncio.sleep(0.3)
        assert drv.last_heartbeat - t0 < 0.2
        with pytest.raises(Exception, match="silent for"):  # the watchdog fails the driver
            await asyncio.wait_for(drv._run(), 3.0)
    finally:
        stop.set()
        await task
        await drv.stop()
