//! zig_odometer: the distance the fleet has travelled, and a speed cap.
//!
//! Columns: 0 velocity.x, 1 velocity.y, 2 velocity.z (all written). Each tick adds every
//! entity's speed * dt to the fleet's total distance, kept in the private KV key `total_m`
//! (f64 LE, so it survives restarts and reloads). Each time the total passes a multiple of
//! 100 m it publishes `edge.<device>.evt.odometer.milestone` `{"total_m":<whole metres>}` and
//! logs it. If KV key `max_speed_mps` (f64 LE) is set, a faster entity's velocity is scaled
//! down to that speed.
//!
//! Messages on `edge.<device>.cmd.odometer`: `reset` sets the total to 0, `report` publishes
//! `edge.<device>.evt.odometer.total` `{"total_m":<metres, 3 decimals>}`; anything else is
//! logged and returns 1 (counted as an error).
const std = @import("std");
const edge = @import("edge");

const VX = 0;
const VY = 1;
const VZ = 2;
const MILESTONE_M = 100.0;

var total_m: f64 = 0;
var max_speed: ?f64 = null;
var subject_buf: [128]u8 = undefined;
var prefix: []const u8 = "";

const inbox = edge.Inbox(256);

export fn edge_alloc(n: i32) i32 {
    return inbox.alloc(n);
}

export fn edge_init() i32 {
    total_m = edge.kvGetF64("total_m") orelse 0;
    max_speed = edge.kvGetF64("max_speed_mps");
    if (max_speed) |m| {
        if (!(m > 0 and std.math.isFinite(m))) {
            edge.log(.err, "max_speed_mps must be a positive speed");
            return 1;
        }
    }
    prefix = edge.deviceSubject(&subject_buf, "evt.odometer.") catch return 2;
    edge.logf(.info, "odometer at {d:.1} m", .{total_m});
    return 0;
}

fn emit(tail: []const u8, payload: []const u8) void {
    var subject: [160]u8 = undefined;
    const s = std.fmt.bufPrint(&subject, "{s}{s}", .{ prefix, tail }) catch return;
    edge.publish(s, payload) catch edge.log(.warning, "odometer event not published");
}

export fn edge_tick(n: i32, dt: f64) i32 {
    if (n <= 0) return 0;
    const count: usize = @intCast(n);
    const cols = edge.scratch(f64, 3 * count) orelse return 1;
    const vx = cols[0..count];
    const vy = cols[count .. 2 * count];
    const vz = cols[2 * count .. 3 * count];
    edge.readColumn(VX, vx) catch return 2;
    edge.readColumn(VY, vy) catch return 2;
    edge.readColumn(VZ, vz) catch return 2;
    const before = total_m;
    var capped = false;
    for (vx, vy, vz) |*x, *y, *z| {
        const speed = @sqrt(x.* * x.* + y.* * y.* + z.* * z.*);
        if (max_speed) |m| {
            if (speed > m) {
                const k = m / speed;
                x.* *= k;
                y.* *= k;
                z.* *= k;
                capped = true;
                total_m += m * dt;
                continue;
            }
        }
        total_m += speed * dt;
    }
    if (capped) {
        edge.writeColumn(VX, vx) catch return 3;
        edge.writeColumn(VY, vy) catch return 3;
        edge.writeColumn(VZ, vz) catch return 3;
    }
    edge.kvPutF64("total_m", total_m) catch return 4;
    if (@floor(total_m / MILESTONE_M) > @floor(before / MILESTONE_M)) {
        const whole: i64 = @intFromFloat(@floor(total_m / MILESTONE_M) * MILESTONE_M);
        var msg: [64]u8 = undefined;
        emit("milestone", std.fmt.bufPrint(&msg, "{{\"total_m\":{d}}}", .{whole}) catch return 5);
        edge.logf(.info, "odometer passed {d} m", .{whole});
    }
    return 0;
}

export fn edge_on_message(subject: [*]const u8, subject_len: i32, data: [*]const u8, data_len: i32) i32 {
    _ = subject;
    _ = subject_len;
    const body = edge.message(data, data_len);
    if (std.mem.eql(u8, body, "reset")) {
        total_m = 0;
        edge.kvPutF64("total_m", 0) catch return 2;
        return 0;
    }
    if (std.mem.eql(u8, body, "report")) {
        var msg: [64]u8 = undefined;
        emit("total", std.fmt.bufPrint(&msg, "{{\"total_m\":{d:.3}}}", .{total_m}) catch return 3);
        return 0;
    }
    edge.log(.warning, "odometer: unknown command (expected reset or report)");
    return 1;
}
