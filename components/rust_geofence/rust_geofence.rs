//! rust_geofence: keeps entities inside a circle around the local origin.
//!
//! Columns: 0 position.x, 1 position.y, 2 velocity.x, 3 velocity.y (the last two written).
//! An entity outside the radius that is still moving outward gets the outward part of its
//! velocity reflected (it turns back in at the same speed). Each such turn publishes
//! `edge.<device>.evt.geofence.breach` with `{"entity":"<id>","dist_m":<metres, 1 decimal>}`
//! and counts it in the private KV key `breaches` (u64 LE), which survives restarts and
//! reloads. The radius is KV key `radius_m` (f64 LE), 50 m if absent; `edge_init` logs it and
//! publishes `edge.<device>.evt.geofence.armed` `{"radius_m":<metres, 1 decimal>}`.
#![no_std]

use edge::{Level, Text};

const PX: u32 = 0;
const PY: u32 = 1;
const VX: u32 = 2;
const VY: u32 = 3;
const NCOL: usize = 4;
const DEFAULT_RADIUS_M: f64 = 50.0;

static mut RADIUS_M: f64 = DEFAULT_RADIUS_M;
static mut SUBJECT: Text<96> = Text::new();

#[no_mangle]
pub extern "C" fn edge_init() -> i32 {
    let radius = match edge::kv_get_f64("radius_m") {
        Some(r) if r > 0.0 && r.is_finite() => r,
        Some(_) => {
            edge::log(Level::Error, "radius_m must be a positive number of metres");
            return 1;
        }
        None => DEFAULT_RADIUS_M,
    };
    let subject = edge::device_subject::<96>("evt.geofence.breach");
    let armed = edge::device_subject::<96>("evt.geofence.armed");
    if subject.overflowed || armed.overflowed {
        return 2;
    }
    let mut line: Text<80> = Text::new();
    line.push_str("geofence radius ").push_fixed(radius, 1).push_str(" m");
    edge::log(Level::Info, core::str::from_utf8(line.as_bytes()).unwrap_or("geofence"));
    let mut msg: Text<64> = Text::new();
    msg.push_str("{\"radius_m\":").push_fixed(radius, 1).push_str("}");
    if edge::publish(armed.as_bytes(), msg.as_bytes()).is_err() {
        return 3;
    }
    unsafe {
        RADIUS_M = radius;
        SUBJECT = subject;
    }
    0
}


fn report(index: usize, dist: f64) {
    let mut msg: Text<160> = Text::new();
    msg.push_str("{\"entity\":\"")
        .push_entity_id(index)
        .push_str("\",\"dist_m\":")
        .push_fixed(dist, 1)
        .push_str("}");
    let subject = unsafe { &SUBJECT };
    if edge::publish(subject.as_bytes(), msg.as_bytes()).is_err() {
        edge::log(Level::Warning, "breach event not published");
    }
    let count = edge::kv_get_u64("breaches").unwrap_or(0) + 1;
    let _ = edge::kv_put_u64("breaches", count);
}

#[no_mangle]
pub extern "C" fn edge_tick(n: i32, _dt: f64) -> i32 {
    if n <= 0 {
        return 0;
    }
    let n = n as usize;
    let cols = match unsafe { edge::scratch(n * NCOL) } {
        Some(c) => c,
        None => return 1, // the batch does not fit in limits.memory_pages
    };
    let (px, rest) = cols.split_at_mut(n);
    let (py, rest) = rest.split_at_mut(n);
    let (vx, vy) = rest.split_at_mut(n);
    for (col, dst) in [(PX, &mut *px), (PY, &mut *py), (VX, &mut *vx), (VY, &mut *vy)] {
        if edge::read_column(col, dst).is_err() {
            return 2;
        }
    }
    let radius = unsafe { RADIUS_M };
    for i in 0..n {
        let dist = edge::sqrt(px[i] * px[i] + py[i] * py[i]);
        if dist <= radius {
            continue;
        }
        let (ux, uy) = (px[i] / dist, py[i] / dist);
        let outward = vx[i] * ux + vy[i] * uy;
        if outward <= 0.0 {
            continue; // already heading back
        }
        vx[i] -= 2.0 * outward * ux;
        vy[i] -= 2.0 * outward * uy;
        report(i, dist);
    }
    if edge::write_column(VX, vx).is_err() || edge::write_column(VY, vy).is_err() {
        return 3;
    }
    0
}
