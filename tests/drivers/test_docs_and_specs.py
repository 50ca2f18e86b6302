"""The drivers against what docs/drivers/*.md promise and what the datasheets and protocol specs
say, with the specs' own numbers: the BMP280/BME280 compensation example, INA219's calibration
example, the MPU-6050 register map's sensitivities, NMEA 0183 sentences with real checksums, and
MAVLink frames built by pymavlink as an autopilot peer would send them (tests/rigs/mavpeer.py)."""

from __future__ import annotations

import math
import os
import struct
from collections.abc import AsyncIterator
from functools import reduce
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin
from pymavlink.dialects.v20 import common as mav
from rigs.mavpeer import MavPeer

from drivers.gpio.outputs import LEDDriver, PWMOutputDriver
from drivers.i2c import bme280, ina219, mpu6050
from drivers.i2c.emulated import EmulatedBus
from drivers.i2c.sim_bme280 import BME280Model
from drivers.i2c.sim_ina219 import INA219Model
from drivers.i2c.sim_mpu6050 import MPU6050Model
from drivers.serial.link import open_pty
from drivers.serial.mavlink import MAVLinkDriver
from drivers.serial.nmea import NMEAGPSDriver
from drivers.testing import RecordingContext
from edge.config import load_config
from edge.errors import ConfigError, DriverError

pytestmark = pytest.mark.timeout(60)

# BMP280 datasheet 3.11.3 / BME280 datasheet 8.2 worked example (trimming and raw values).
DATASHEET_CAL = bme280.Calibration(27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
ADC_T, ADC_P = 519888, 415148


# ----- BME280 / BMP280 ---------------------------------------------------------------------------

def test_bme280_datasheet_temperature_example() -> None:
    t_fine, t = bme280.compensate_temperature(ADC_T, DATASHEET_CAL)
    assert t_fine == 128422
    assert t == 2508  # 25.08 °C


def test_bme280_datasheet_pressure_example() -> None:
    t_fine, _ = bme280.compensate_temperature(ADC_T, DATASHEET_CAL)
    q24_8 = bme280.compensate_pressure(ADC_P, t_fine, DATASHEET_CAL)
    assert abs(q24_8 / 256.0 - 100653.27) < 0.03  # Pa (datasheet: 100653.27 Pa)


def test_bme280_calibration_registers_decode_as_the_datasheet_lays_them_out() -> None:
    # 0x88..0x9F little-endian T1 (u16), T2, T3, P1 (u16), P2..P9 (s16); 0xA1 = dig_H1;
    # 0xE1/E2 = H2 (s16), 0xE3 = H3, H4 = E4[7:0] <<4 | E5[3:0], H5 = E6[7:0] << 4 | E5[7:4], E7 = H6 (s8)
    a = struct.pack("<HhhHhhhhhhhh", 27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500,
                    -14600, 6000) + bytes([0x00, 75])
    h4, h5 = -200, 50  # signed 12-bit
    b = struct.pack("<h", 362) + bytes([0, (h4 >> 4) & 0xFF, (h4 & 0x0F) | ((h5 & 0x0F) << 4), (h5 >> 4) & 0xFF]) \
        + struct.pack("<b", -30)
    c = bme280.Calibration.from_registers(a, b)
    assert (c.T1, c.T2, c.T3, c.P1, c.P9) == (27504, 26435, -1000, 36477, 6000)
    assert (c.H1, c.H2, c.H3, c.H4, c.H5, c.H6) == (75, 362, 0, -200, 50, -30)


async def _bme_with_raw(model: BME280Model, adc_t: int, adc_p: int) -> dict[str, float]:
    bus = EmulatedBus(1)
    bus.attach(0x76, model)
    drv = bme280.BMP280Driver("baro", "drone1", bus=bus, address=0x76) if not model.has_humidity else \
        bme280.BME280Driver("baro", "drone1", bus=bus, address=0x76)
    await drv._open()
    model.stuck = True  # the data registers hold what we put there
    model._write_raw(adc_p, adc_t, 0x8000)
    return await drv.read()


async def test_bmp280_driver_reads_the_datasheet_example_end_to_end() -> None:
    out = await _bme_with_raw(BME280Model(humidity=False, calibration=DATASHEET_CAL), ADC_T, ADC_P)
    assert out["temperature"] == 25.08
    assert abs(out["pressure"] - 100653.27) < 0.03
    assert "humidity" not in out


async def test_bme280_reset_value_is_no_measurement_yet() -> None:
    with pytest.raises(ValueError, match="no measurement"):
        await _bme_with_raw(BME280Model(humidity=False, calibration=DATASHEET_CAL), 0x80000, ADC_P)


async def test_bme280_configures_chip_as_documented() -> None:
    bus = EmulatedBus(1)
    model = bus.attach(0x76, BME280Model())
    drv = bme280.BME280Driver("baro", "drone1", bus=bus, address=0x76, oversampling=16)
    await drv._open()
    # ctrl_hum osrs_h = x16 (101), ctrl_meas osrs_t = osrs_p = x16, normal mode (11); config 0
    assert model.regs[0xF2] & 0x07 == 0b101
    assert model.regs[0xF4] == (0b101 << 5) | (0b101 << 2) | 0b11
    assert model.regs[0xF5] == 0


async def test_bme280_refuses_a_bmp280_chip_id() -> None:
    bus = EmulatedBus(1)
    bus.attach(0x76, BME280Model(humidity=False))  # chip id 0x58
    drv = bme280.BME280Driver("baro", "drone1", bus=bus, address=0x76)
    with pytest.raises(DriverError) as err:
        await drv.start(RecordingContext())
    assert err.value.device == "i2c-1:0x76"
    assert "0x58" in str(err.value) and "0x60" in str(err.value)
    await drv.stop()


async def test_i2c_nack_fails_start_naming_the_address() -> None:
    bus = EmulatedBus(1)  # nothing at 0x77
    drv = bme280.BME280Driver("baro", "drone1", bus=bus, address=0x77)
    with pytest.raises(DriverError) as err:
        await drv.start(RecordingContext())
    assert err.value.device == "i2c-1:0x77"
    await drv.stop()


# ----- MPU-6050 (register map 4.17 / 4.18 / 4.19) ----------------------------------------------------

@pytest.mark.parametrize(("accel_g", "lsb_per_g"), [(2, 16384), (4, 8192), (8, 4096), (16, 2048)])
@pytest.mark.parametrize(("gyro_dps", "lsb_per_dps"), [(250, 131.0), (500, 65.5), (1000, 32.8), (2000, 16.4)])
async def test_mpu6050_register_map_sensitivities(accel_g: int, lsb_per_g: int, gyro_dps: int,
                                                  lsb_per_dps: float) -> None:
    bus = EmulatedBus(1)
    model = bus.attach(0x68, MPU6050Model(noise_lsb=0.0))
    drv = mpu6050.MPU6050Driver("imu", "drone1", bus=bus, accel_range_g=accel_g, gyro_range_dps=gyro_dps,
                                rate_hz=50, reset_s=0.0)
    await drv._open()
    assert model.regs[0x19] == 19  # SMPLRT_DIV: 1 kHz / (1 + 19) = 50 Hz
    assert model.regs[0x1C] >> 3 & 3 == {2: 0, 4: 1, 8: 2, 16: 3}[accel_g]
    assert model.regs[0x1B] >> 3 & 3 == {250: 0, 500: 1, 1000: 2, 2000: 3}[gyro_dps]
    model.stuck = True
    gyro_raw = round(10 * lsb_per_dps)  # 10 °/s
    raw = struct.pack(">hhhhhhh", lsb_per_g, -lsb_per_g // 2, 0, 0, gyro_raw, 0, -gyro_raw)
    model.regs[0x3B:0x3B + 14] = raw
    out = await drv.read()
    assert out["ax"] == pytest.approx(9.80665, rel=1e-9)
    assert out["ay"] == pytest.approx(-9.80665 / 2, rel=1e-9)
    assert out["gx"] == pytest.approx(math.radians(gyro_raw / lsb_per_dps), rel=1e-9)
    assert out["gx"] == pytest.approx(math.radians(10.0), rel=2e-3)
    assert out["gz"] == pytest.approx(-out["gx"])
    assert out["temperature"] == pytest.approx(36.53)  # raw 0: Temp = raw / 340 + 36.53


# ----- INA219 (datasheet 8.5.1 programming example) --------------------------------------------------

def test_ina219_datasheet_calibration_example() -> None:
    # R_shunt 0.1 Ω, Current_LSB 100 µA -> Cal = trunc(0.04096 / (100e-6 * 0.1)) = 4096
    cal, lsb = ina219.calibration_for(0.1, 100e-6 * 32768)
    assert cal == 4096
    assert lsb == pytest.approx(100e-6)


async def test_ina219_reads_bus_voltage_current_power() -> None:
    bus = EmulatedBus(1)
    model = bus.attach(0x40, INA219Model(shunt_ohms=0.1))
    model.set(voltage=12.0, current=1.0)
    drv = ina219.INA219Driver("power", "drone1", bus=bus, shunt_ohms=0.1, max_current_a=3.2768)
    await drv._open()
    assert (model.regs[10] << 8 | model.regs[11]) == 4096  # calibration register
    assert (model.regs[0] << 8 | model.regs[1]) == 0x399F
    out = await drv.read()
    assert out["voltage"] == pytest.approx(12.0)  # 4 mV LSB, register >> 3
    assert out["shunt_voltage"] == pytest.approx(0.1)  # 10 µV LSB
    assert out["current"] == pytest.approx(1.0)
    assert out["power"] == pytest.approx(12.0, rel=1e-3)  # Power_LSB = 20 × Current_LSB


# ----- GPIO ------------------------------------------------------------------------------------------

@pytest.fixture
def factory() -> MockFactory:
    return MockFactory(pin_class=MockPWMPin)


async def test_esc_starts_at_1ms_and_throttle_maps_to_pulse(factory: MockFactory) -> None:
    ctx = RecordingContext()
    esc = PWMOutputDriver("motor1", "drone1", pin=13, mode="esc", pin_factory=factory)
    await esc.start(ctx)
    try:
        assert factory.pin(13).state == pytest.approx(0.05)  # 1.0 ms / 20 ms
        ack = await ctx.command("drone1", "motor1", {"throttle": 0.5})
        assert ack == {"ok": True, "value": 0.5, "pulse_s": 0.0015}
        assert factory.pin(13).state == pytest.approx(0.075)
        bad = await ctx.command("drone1", "motor1", {"throttle": 1.5})
        assert bad["ok"] is False and "throttle" in bad["error"]
        n = len(factory.pin(13).states)
    finally:
        await esc.stop()
    # back to zero throttle (1 ms) on stop, before the pin is released
    assert [s.state for s in factory.pin(13).states[n:]][:1] == [pytest.approx(0.05)]


async def test_servo_angle_and_led(factory: MockFactory) -> None:
    ctx = RecordingContext()
    servo = PWMOutputDriver("gimbal", "drone1", pin=12, max_angle_deg=90, pin_factory=factory)
    led = LEDDriver("status", "drone1", pin=17, pin_factory=factory)
    await servo.start(ctx)
    await led.start(ctx)
    try:
        ack = await ctx.command("drone1", "gimbal", {"angle": -45})
        assert ack == {"ok": True, "value": -0.5, "pulse_s": 0.00125}
        assert factory.pin(12).state == pytest.approx(0.00125 / 0.02)
        assert await ctx.command("drone1", "status", {"on": True}) == {"ok": True, "value": 1.0}
        assert factory.pin(17).state
        assert ctx.component("drone1", "status") == {"value": 1.0}
        blink = await ctx.command("drone1", "status", {"blink": True, "on_time": 0.2, "off_time": 0.8})
        assert blink == {"ok": True, "blink": True}
        assert ctx.component("drone1", "status") == {"value": -1.0}
    finally:
        await led.stop()
        await servo.stop()


# ----- NMEA 0183 -------------------------------------------------------------------------------------

def nmea(body: str) -> bytes:
    """A sentence with its checksum: XOR of every character between '$' and '*', two hex digits."""
    return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}\r\n".encode("ascii")


def test_nmea_checksum_of_the_classic_examples() -> None:
    assert nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,").endswith(b"*47\r\n")
    assert nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W").endswith(b"*6A\r\n")


@pytest.fixture
async def gps_port() -> AsyncIterator[tuple[int, NMEAGPSDriver, RecordingContext]]:
    master, slave, port = open_pty()
    ctx = RecordingContext()
    drv = NMEAGPSDriver("gps", "drone1", port=port, velocity=True)
    await drv.start(ctx)
    try:
        yield master, drv, ctx
    finally:
        await drv.stop()
        for fd in (master, slave):
            os.close(fd)


async def test_nmea_gga_fields(gps_port: tuple[int, NMEAGPSDriver, RecordingContext]) -> None:
    master, drv, ctx = gps_port
    os.write(master, nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))
    await ctx.wait_for(lambda: bool(ctx.component("drone1", "geo")))
    geo = ctx.component("drone1", "geo")
    assert float(geo["lat"]) == pytest.approx(48 + 7.038 / 60, abs=1e-9)
    assert float(geo["lon"]) == pytest.approx(11 + 31.0 / 60, abs=1e-9)
    assert geo["alt"] == 545.4  # antenna altitude above mean sea level
    assert ctx.component("drone1", "gps") == {"fix_quality": 1, "satellites": 8, "hdop": 0.9}
    # southern / western hemispheres are negative; GN talker (multi-constellation) accepted
    os.write(master, nmea("GNGGA,010203.00,3327.000,S,07039.600,W,2,11,1.2,520.3,M,25.0,M,,"))
    await ctx.wait_for(lambda: float(ctx.component("drone1", "geo")["lat"]) < 0)
    geo = ctx.component("drone1", "geo")
    assert float(geo["lat"]) == pytest.approx(-33.45) and float(geo["lon"]) == pytest.approx(-70.66)
    assert ctx.component("drone1", "gps")["fix_quality"] == 2  # DGPS
    # a fix with an empty altitude (and HDOP) field: the position moves, the altitude is not 0 m
    os.write(master, nmea("GPGGA,010204.00,3327.100,S,07039.600,W,1,05,,,M,,M,,"))
    await ctx.wait_for(lambda: float(ctx.component("drone1", "geo")["lat"]) < -33.451)
    assert ctx.component("drone1", "geo")["alt"] == 520.3  # as it was
    assert ctx.component("drone1", "gps")["hdop"] == 99.99


async def test_nmea_bad_checksum_dropped_and_no_fix_keeps_geo(
        gps_port: tuple[int, NMEAGPSDriver, RecordingContext]) -> None:
    master, drv, ctx = gps_port
    good = nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    os.write(master, good.replace(b"*47", b"*48"))  # wrong checksum
    os.write(master, nmea("GPGGA,123520,,,,,0,03,99.9,,M,,M,,"))  # no fix
    await ctx.wait_for(lambda: drv.sentences >= 1 and drv.bad_lines >= 1)
    assert ctx.component("drone1", "geo") == {}  # neither the bad sentence nor a no-fix GGA sets geo
    assert ctx.component("drone1", "gps") == {"fix_quality": 0, "satellites": 3, "hdop": 99.9}
    assert drv.health().state == "running" and drv.health().errors >= 1


async def test_nmea_rmc_speed_knots_to_mps_and_void_status(
        gps_port: tuple[int, NMEAGPSDriver, RecordingContext]) -> None:
    master, drv, ctx = gps_port
    os.write(master, nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"))
    await ctx.wait_for(lambda: bool(ctx.component("drone1", "velocity")))
    v = ctx.component("drone1", "velocity")
    speed = 22.4 * 1852 / 3600  # a knot is 1852 m per hour
    assert float(v["x"]) == pytest.approx(speed * math.sin(math.radians(84.4)), rel=1e-9)  # east
    assert float(v["y"]) == pytest.approx(speed * math.cos(math.radians(84.4)), rel=1e-9)  # north
    os.write(master, nmea("GPRMC,123520,V,,,,,,,230394,,,N"))
    await ctx.wait_for(lambda: ctx.component("drone1", "gps").get("fix_quality") == 0)


# ----- MAVLink -----------------------------------------------------------------------------------------

@pytest.fixture
async def fc() -> AsyncIterator[tuple[MavPeer, MAVLinkDriver, RecordingContext]]:
    peer = MavPeer("ardupilot")
    await peer.start()
    ctx = RecordingContext()
    drv = MAVLinkDriver("fc", "drone1", port=peer.port, heartbeat_s=0.2, link_timeout_s=2.0,
                        command_timeout_s=0.5, telemetry_hz=4.0)
    await drv.start(ctx)
    try:
        yield peer, drv, ctx
    finally:
        await drv.stop()
        await peer.stop()


async def test_mavlink_gcs_heartbeat_and_message_intervals(fc: tuple[MavPeer, MAVLinkDriver, RecordingContext]) -> None:
    peer, drv, ctx = fc
    await peer.wait(lambda: len(peer.of("HEARTBEAT")) >= 2)
    hb = peer.of("HEARTBEAT")[0].msg
    assert (hb.type, hb.autopilot) == (mav.MAV_TYPE_GCS, mav.MAV_AUTOPILOT_INVALID)
    assert hb.get_srcSystem() == 255
    await peer.wait(lambda: bool(peer.commands(mav.MAV_CMD_SET_MESSAGE_INTERVAL)))
    intervals = {int(m.param1): m.param2 for m in peer.commands(mav.MAV_CMD_SET_MESSAGE_INTERVAL)}
    assert intervals[mav.MAVLINK_MSG_ID_GLOBAL_POSITION_INT] == 250_000  # µs at telemetry_hz 4
    assert mav.MAVLINK_MSG_ID_BATTERY_STATUS in intervals


async def test_mavlink_telemetry_units(fc: tuple[MavPeer, MAVLinkDriver, RecordingContext]) -> None:
    peer, drv, ctx = fc
    await ctx.wait_for(lambda: bool(ctx.component("drone1", "flight")))
    assert ctx.component("drone1", "flight") == {"armed": False, "mode": "STABILIZE", "system_status": "STANDBY"}
    peer.send(peer.mav.global_position_int_encode(0, -334500000, -706600000, 520_300, 20_300, 150, -250, 100, 0))
    peer.send(peer.mav.attitude_encode(0, 0.1, -0.2, 1.5, 0, 0, 0))
    cells = [3700, 3710, 3720] + [65535] * 7
    peer.send(peer.mav.battery_status_encode(0, 0, 0, 2500, cells, -1, -1, -1, 80))
    peer.send(peer.mav.battery_status_encode(1, 0, 0, 32767, [11100] + [65535] * 9, 1234, -1, -1, -1))
    await ctx.wait_for(lambda: bool(ctx.component("drone1", "battery_1"))
                       and float(ctx.component("drone1", "velocity").get("x", 0)) != 0)
    geo = ctx.component("drone1", "geo")
    assert float(geo["lat"]) == pytest.approx(-33.45) and float(geo["lon"]) == pytest.approx(-70.66)
    assert float(geo["alt"]) == pytest.approx(520.3)
    assert ctx.component("drone1", "velocity") == pytest.approx({"x": -2.5, "y": 1.5, "z": -1.0})  # NED cm/s -> ENU
    assert ctx.component("drone1", "attitude") == pytest.approx({"roll": 0.1, "pitch": -0.2, "yaw": 1.5})
    b0 = ctx.component("drone1", "battery")
    assert b0["voltage"] == pytest.approx(11.13) and b0["temperature"] == pytest.approx(25.0)
    assert b0["level"] == pytest.approx(0.8) and b0["unknown"] == "current"
    b1 = ctx.component("drone1", "battery_1")
    assert b1["voltage"] == pytest.approx(11.1) and b1["current"] == pytest.approx(12.34)
    assert b1["unknown"] == "level,temperature"


async def test_mavlink_velocity_position_goto_frames(fc: tuple[MavPeer, MAVLinkDriver, RecordingContext]) -> None:
    peer, drv, ctx = fc
    ack = await ctx.command("drone1", "velocity", {"x": 1.0, "y": 2.0, "z": 0.5})
    assert ack["ok"] and ack["result"] == "TRACKING" and ack["type_mask"] == 0x0DC7
    m = peer.setpoints()[-1].msg
    assert (m.coordinate_frame, m.type_mask) == (mav.MAV_FRAME_LOCAL_NED, 0x0DC7)
    assert (m.vx, m.vy, m.vz) == pytest.approx((2.0, 1.0, -0.5))  # north, east, down
    assert (m.target_system, m.target_component) == (1, 1)

    await ctx.command("drone1", "velocity", {"x": 1.0, "y": 0.5, "frame": "body", "yaw_rate": 30})
    m = peer.setpoints()[-1].msg
    assert (m.coordinate_frame, m.type_mask) == (mav.MAV_FRAME_BODY_OFFSET_NED, 0x05C7)
    assert (m.vx, m.vy, m.vz) == pytest.approx((1.0, -0.5, 0.0))
    assert m.yaw_rate == pytest.approx(math.radians(30))

    await ctx.command("drone1", "position", {"x": 3.0, "y": 4.0, "z": 10.0, "yaw": 90})
    m = peer.setpoints()[-1].msg
    assert (m.coordinate_frame, m.type_mask) == (mav.MAV_FRAME_LOCAL_NED, 0x09F8)
    assert (m.x, m.y, m.z) == pytest.approx((4.0, 3.0, -10.0))
    assert m.yaw == pytest.approx(math.pi / 2)

    ack = await ctx.command("drone1", "goto", {"lat": 47.3977, "lon": 8.5456, "alt": 20.0})
    m = peer.setpoints()[-1].msg
    assert m.get_type() == "SET_POSITION_TARGET_GLOBAL_INT"
    assert (m.coordinate_frame, m.type_mask) == (mav.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, 0x0DF8)
    assert (m.lat_int, m.lon_int, m.alt) == (473977000, 85456000, pytest.approx(20.0))
    assert ack["confirmed_by"] == "POSITION_TARGET_GLOBAL_INT"


async def test_mavlink_command_long_and_acks(fc: tuple[MavPeer, MAVLinkDriver, RecordingContext]) -> None:
    peer, drv, ctx = fc
    ack = await ctx.command("drone1", "arm", {})
    assert ack == {"ok": True, "command": "MAV_CMD_COMPONENT_ARM_DISARM", "result": "ACCEPTED",
                   "flavour": "ardupilot"}
    arm = peer.commands(mav.MAV_CMD_COMPONENT_ARM_DISARM)[-1]
    assert (arm.param1, arm.target_system, arm.target_component, arm.confirmation) == (1, 1, 1, 0)

    await ctx.command("drone1", "disarm", {"force": True})
    d = peer.commands(mav.MAV_CMD_COMPONENT_ARM_DISARM)[-1]
    assert (d.param1, d.param2) == (0, 21196)

    ack = await ctx.command("drone1", "set_mode", {"mode": "GUIDED"})
    sm = peer.commands(mav.MAV_CMD_DO_SET_MODE)[-1]
    assert (sm.param1, sm.param2) == (mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, 4) and ack["ok"]

    await ctx.command("drone1", "takeoff", {"alt": 10})
    assert peer.commands(mav.MAV_CMD_NAV_TAKEOFF)[-1].param7 == 10.0

    peer.results[mav.MAV_CMD_NAV_LAND] = mav.MAV_RESULT_DENIED
    ack = await ctx.command("drone1", "land", {})
    assert ack["ok"] is False and ack["result"] == "DENIED"
    assert ack["error"] == "the autopilot answered DENIED to MAV_CMD_NAV_LAND"

    peer.in_progress.add(mav.MAV_CMD_NAV_RETURN_TO_LAUNCH)
    ack = await ctx.command("drone1", "rtl", {})
    assert ack["ok"] and ack["result"] == "ACCEPTED"  # IN_PROGRESS kept it waiting for the final ack

    peer.silent.add(mav.MAV_CMD_CONDITION_YAW)
    ack = await ctx.command("drone1", "yaw", {"yaw": -90, "rate": 20, "direction": "cw"})
    assert ack == {"ok": False, "error": "no COMMAND_ACK for MAV_CMD_CONDITION_YAW within 0.5 s"}
    y = peer.commands(mav.MAV_CMD_CONDITION_YAW)[-1]
    assert (y.param1, y.param2, y.param3, y.param4) == (270.0, 20.0, 1.0, 0.0)


async def test_mavlink_garbage_before_a_frame_does_not_swallow_it(
        fc: tuple[MavPeer, MAVLinkDriver, RecordingContext]) -> None:
    peer, drv, ctx = fc
    frame = peer.mav.attitude_encode(0, 0.0, 0.0, 2.5, 0, 0, 0).pack(peer.mav)
    os.write(peer._master, b"\xfd\x09garbage\xfe" + frame)
    await ctx.wait_for(lambda: ctx.component("drone1", "attitude").get("yaw") == pytest.approx(2.5))
    assert drv.bad_bytes > 0 and drv.health().state == "running"


# ----- config errors ------------------------------------------------------------------------------------

def test_config_error_sentence_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text('[[drivers]]\nname = "baro"\nkind = "bme280"\nentity = "drone1"\nrate_hz = "fast"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"driver 'baro': expected a number, got 'fast' (key 'drivers[0].rate_hz' in {path})" in str(err.value)



async def test_nmea_sentences_it_does_not_use_are_ignored_not_bad_and_keep_it_alive(
        gps_port: tuple[int, NMEAGPSDriver, RecordingContext]) -> None:
    """A u-blox receiver sends $PUBX (proprietary: pynmea2 gives it no sentence type; reading that
    crashed the driver's loop), GSV and TXT, and maybe a type pynmea2 does not know: counted as
    ignored, never as bad lines; the GGA after them is still read."""
    master, drv, ctx = gps_port
    for body in ("PUBX,00,081350.00,4717.113210,N,00833.915187,E,546.589,G3,2.1,2.0,0.007,77.52,"
                 "0.007,,0.92,1.19,0.77,9,0,0",
                 "GPGSV,1,1,01,01,40,083,46", "GPTXT,01,01,02,ANTSTATUS=OK", "GPXXX,1,2"):
        os.write(master, nmea(body))
    os.write(master, nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))
    await ctx.wait_for(lambda: bool(ctx.component("drone1", "geo")))
    assert drv.details() == {"sentences": 5, "bad_lines": 0, "ignored": 4}
    assert drv.health().state == "running" and drv.health().errors == 0
