//! `edge`: the Rust SDK for edge WebAssembly components (host ABI contract 1, docs/abi.md).
//!
//! A `#![no_std]` crate with no dependencies, built by `components/build.py` with plain `rustc`
//! for `wasm32-unknown-unknown` (Debian: `apt-get install rustc libstd-rust-dev-wasm32`; no
//! cargo registry is needed). A component is a `cdylib` that uses this crate and exports the
//! contract's functions with `#[no_mangle] pub extern "C" fn`:
//!
//! ```ignore
//! #![no_std]
//! #[no_mangle]
//! pub extern "C" fn edge_tick(n: i32, dt: f64) -> i32 { 0 }
//! ```
//!
//! The crate provides the host imports as safe functions, the panic handler (a panic traps: the
//! host reports a `trap` and restarts the component), `scratch` memory after the static data,
//! a fixed-capacity text buffer (`Text`) for subjects and payloads, and `inbox!` for the
//! `edge_alloc` export that `edge_on_message` needs.
#![no_std]

use core::fmt;

/// The contract version this SDK implements (the manifest's `contract`).
pub const CONTRACT: i32 = 1;

/// The raw host imports (module `edge`), exactly as docs/abi.md lists them.
pub mod sys {
    #[link(wasm_import_module = "edge")]
    extern "C" {
        #[link_name = "log"]
        pub fn log(level: i32, ptr: *const u8, len: i32);
        #[link_name = "publish"]
        pub fn publish(subj: *const u8, subj_len: i32, data: *const u8, data_len: i32) -> i32;
        #[link_name = "kv_get"]
        pub fn kv_get(key: *const u8, key_len: i32, buf: *mut u8, cap: i32) -> i32;
        #[link_name = "kv_put"]
        pub fn kv_put(key: *const u8, key_len: i32, val: *const u8, val_len: i32) -> i32;
        #[link_name = "clock_ms"]
        pub fn clock_ms() -> i64;
        #[link_name = "monotonic_ns"]
        pub fn monotonic_ns() -> i64;
        #[link_name = "batch_len"]
        pub fn batch_len() -> i32;
        #[link_name = "col_read"]
        pub fn col_read(column: i32, ptr: *mut f64, cap: i32) -> i32;
        #[link_name = "col_write"]
        pub fn col_write(column: i32, ptr: *const f64, len: i32) -> i32;
        #[link_name = "entity_id"]
        pub fn entity_id(index: i32, buf: *mut u8, cap: i32) -> i32;
        #[link_name = "device_id"]
        pub fn device_id(buf: *mut u8, cap: i32) -> i32;
        #[link_name = "infer"]
        pub fn infer(
            model: *const u8,
            model_len: i32,
            input: *const u8,
            in_len: i32,
            out: *mut u8,
            out_cap: i32,
        ) -> i32;
    }
}

/// A panic traps the call (wasm `unreachable`): the host reports a `trap` and restarts the
/// component with backoff. Nothing is printed: log before panicking if the reason matters.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

fn len_i32(n: usize) -> i32 {
    // linear memory is at most 4 GiB and the host caps it at 1 GiB: a slice length fits
    n as i32
}

// ---- log ------------------------------------------------------------------------------------

/// Log levels of the `log` import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warning = 2,
    Error = 3,
}

/// Log a line (cut at 1 KiB by the host; a burst of 20, then 10 lines a second).
pub fn log(level: Level, msg: &str) {
    log_bytes(level, msg.as_bytes())
}

/// Log a line given as bytes (UTF-8 expected).
pub fn log_bytes(level: Level, msg: &[u8]) {
    unsafe { sys::log(level as i32, msg.as_ptr(), len_i32(msg.len())) }
}

// ---- publish ----------------------------------------------------------------------------------

/// Why `publish` refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// -1: the manifest's `run.publish` does not grant the subject (counted as `denied`).
    Denied,
    /// -2: the subject is invalid (wildcards, spaces, > 256 bytes) or the payload > 1 MiB - 1 KiB (1,047,552 bytes).
    BadSubject,
    /// -3: this call's `limits.publish_per_call` quota is spent.
    Quota,
    /// Any other code (not returned by contract 1).
    Other(i32),
}

/// Publish `data` on `subject` (a core NATS publish, sent in order after the call returns).
pub fn publish(subject: &[u8], data: &[u8]) -> Result<(), PublishError> {
    let rc = unsafe {
        sys::publish(subject.as_ptr(), len_i32(subject.len()), data.as_ptr(), len_i32(data.len()))
    };
    match rc {
        0 => Ok(()),
        -1 => Err(PublishError::Denied),
        -2 => Err(PublishError::BadSubject),
        -3 => Err(PublishError::Quota),
        other => Err(PublishError::Other(other)),
    }
}

// ---- key-value --------------------------------------------------------------------------------

/// Why `kv_put` refused a write (nothing was written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvError {
    /// The key (empty, > 128 bytes, not `[A-Za-z0-9_.-]`, or an empty token: `a..b`, `.a`, `a.`) or
    /// the value (> 64 KiB) is too large.
    TooLarge,
    /// The write would take the component past its KV quota (`limits.kv_keys`, `limits.kv_bytes`).
    Quota,
}

/// Read this component's private key into `buf`: the value's full length (at most `buf.len()`
/// bytes are copied), or `None` if the key is absent.
pub fn kv_get(key: &str, buf: &mut [u8]) -> Option<usize> {
    let rc = unsafe {
        sys::kv_get(key.as_ptr(), len_i32(key.len()), buf.as_mut_ptr(), len_i32(buf.len()))
    };
    if rc < 0 {
        None
    } else {
        Some(rc as usize)
    }
}

/// Write this component's private key (persisted by the host after the call returns).
pub fn kv_put(key: &str, value: &[u8]) -> Result<(), KvError> {
    let rc = unsafe {
        sys::kv_put(key.as_ptr(), len_i32(key.len()), value.as_ptr(), len_i32(value.len()))
    };
    match rc {
        0 => Ok(()),
        -2 => Err(KvError::Quota),
        _ => Err(KvError::TooLarge),
    }
}

/// A little-endian `u64` stored under `key`, or `None` if absent or not 8 bytes long.
pub fn kv_get_u64(key: &str) -> Option<u64> {
    let mut b = [0u8; 8];
    match kv_get(key, &mut b) {
        Some(8) => Some(u64::from_le_bytes(b)),
        _ => None,
    }
}

/// Store `value` under `key` as 8 little-endian bytes.
pub fn kv_put_u64(key: &str, value: u64) -> Result<(), KvError> {
    kv_put(key, &value.to_le_bytes())
}

/// A little-endian `f64` stored under `key`, or `None` if absent or not 8 bytes long.
pub fn kv_get_f64(key: &str) -> Option<f64> {
    kv_get_u64(key).map(f64::from_bits)
}

/// Store `value` under `key` as 8 little-endian bytes.
pub fn kv_put_f64(key: &str, value: f64) -> Result<(), KvError> {
    kv_put_u64(key, value.to_bits())
}

// ---- clocks -----------------------------------------------------------------------------------

/// Wall clock, milliseconds since the Unix epoch.
pub fn clock_ms() -> i64 {
    unsafe { sys::clock_ms() }
}

/// Monotonic clock, nanoseconds.
pub fn monotonic_ns() -> i64 {
    unsafe { sys::monotonic_ns() }
}

// ---- the tick batch ---------------------------------------------------------------------------

/// `col_read`/`col_write` refused: unknown column, read-only column, or a slice whose length is
/// not the batch's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnError;

/// Number of entities in the current tick batch (0 outside `edge_tick`).
pub fn batch_len() -> usize {
    let n = unsafe { sys::batch_len() };
    if n < 0 {
        0
    } else {
        n as usize
    }
}

/// Copy column `column` (manifest order: `query.read`, then the new `query.write` fields) of the
/// batch into `dst` (at least `batch_len()` values).
pub fn read_column(column: u32, dst: &mut [f64]) -> Result<(), ColumnError> {
    let cap = len_i32(dst.len() * 8);
    let rc = unsafe { sys::col_read(column as i32, dst.as_mut_ptr(), cap) };
    if rc < 0 {
        Err(ColumnError)
    } else {
        Ok(())
    }
}

/// Copy `src` (exactly `batch_len()` values) into column `column`, a `query.write` field.
pub fn write_column(column: u32, src: &[f64]) -> Result<(), ColumnError> {
    let rc = unsafe { sys::col_write(column as i32, src.as_ptr(), len_i32(src.len() * 8)) };
    if rc < 0 {
        Err(ColumnError)
    } else {
        Ok(())
    }
}

/// Copy the ID of batch entity `index` into `buf`: its full length, or `None` outside the batch.
pub fn entity_id(index: usize, buf: &mut [u8]) -> Option<usize> {
    let rc = unsafe { sys::entity_id(len_i32(index), buf.as_mut_ptr(), len_i32(buf.len())) };
    if rc < 0 {
        None
    } else {
        Some(rc as usize)
    }
}

/// Copy this device's ID into `buf`; returns its full length (IDs are at most 64 bytes).
pub fn device_id(buf: &mut [u8]) -> usize {
    let rc = unsafe { sys::device_id(buf.as_mut_ptr(), len_i32(buf.len())) };
    if rc < 0 {
        0
    } else {
        rc as usize
    }
}

// ---- inference --------------------------------------------------------------------------------

/// Why `infer` failed (docs/abi.md, *Inference*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InferError {
    /// -1: the model is not in `run.models`.
    Denied,
    /// -2: no such model is loaded on the device.
    Unknown,
    /// -3: the input is not the model's input size (which the host wrote at `out[0..4]`).
    BadInput,
    /// -4: `out` is smaller than the output (whose size the host wrote at `out[0..4]`).
    SmallOutput,
    /// -5: the model failed, timed out, or the call spent its infer budget.
    Failed,
    /// Any other code (not returned by contract 1).
    Other(i32),
}

/// Run model `model` on `input` (every input tensor's raw bytes, in input order); the outputs'
/// bytes land in `out`. Returns the number of bytes written.
pub fn infer(model: &str, input: &[u8], out: &mut [u8]) -> Result<usize, InferError> {
    let rc = unsafe {
        sys::infer(
            model.as_ptr(),
            len_i32(model.len()),
            input.as_ptr(),
            len_i32(input.len()),
            out.as_mut_ptr(),
            len_i32(out.len()),
        )
    };
    match rc {
        n if n >= 0 => Ok(n as usize),
        -1 => Err(InferError::Denied),
        -2 => Err(InferError::Unknown),
        -3 => Err(InferError::BadInput),
        -4 => Err(InferError::SmallOutput),
        -5 => Err(InferError::Failed),
        other => Err(InferError::Other(other)),
    }
}

// ---- math -----------------------------------------------------------------------------------

/// Square root, within one ulp of the exact result (`f64::sqrt` needs `std`, and the `sqrt` of
/// the compiler's builtins is not linked into a `no_std` module): Newton's method from an
/// estimate made of the exponent bits.
pub fn sqrt(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 || x.is_infinite() {
        return x;
    }
    let mut y = f64::from_bits((x.to_bits() >> 1) + (1023u64 << 51));
    for _ in 0..6 {
        y = 0.5 * (y + x / y);
    }
    y
}

// ---- scratch memory ---------------------------------------------------------------------------

extern "C" {
    /// End of the static data and the stack: defined by the linker.
    static __heap_base: u8;
}

/// `n` f64 values of scratch memory after the static data and the stack (the same area on
/// every call: scratch, not an allocator; any two calls return overlapping slices). `None` if
/// it does not fit in `limits.memory_pages`.
///
/// # Safety
/// The slice aliases every other slice `scratch` returned: use one at a time.
pub unsafe fn scratch(n: usize) -> Option<&'static mut [f64]> {
    let base = ((&__heap_base as *const u8 as usize) + 15) & !15;
    let need = base.checked_add(n.checked_mul(8)?)?;
    let have = core::arch::wasm32::memory_size(0) * 65536;
    if need > have {
        let pages = (need - have + 65535) / 65536;
        if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
            return None;
        }
    }
    Some(core::slice::from_raw_parts_mut(base as *mut f64, n))
}

// ---- text -------------------------------------------------------------------------------------

/// A fixed-capacity byte buffer for subjects, payloads and log lines (no allocator). Text past
/// the capacity is cut and sets `overflowed`. Implements `core::fmt::Write`, so `write!` works,
/// but `push_int`/`push_fixed` keep the module small (formatting floats with `core::fmt` adds
/// tens of KiB of code).
pub struct Text<const N: usize> {
    bytes: [u8; N],
    len: usize,
    /// Something did not fit.
    pub overflowed: bool,
}

impl<const N: usize> Text<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Text { bytes: [0; N], len: 0, overflowed: false }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Number of bytes written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget the contents.
    pub fn clear(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    /// Append bytes (cut at the capacity).
    pub fn push_bytes(&mut self, b: &[u8]) -> &mut Self {
        let room = N - self.len;
        let n = if b.len() > room {
            self.overflowed = true;
            room
        } else {
            b.len()
        };
        self.bytes[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        self
    }

    /// Append a string.
    pub fn push_str(&mut self, s: &str) -> &mut Self {
        self.push_bytes(s.as_bytes())
    }

    /// Append a decimal integer.
    pub fn push_int(&mut self, v: i64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        let mut u = v.unsigned_abs();
        loop {
            i -= 1;
            tmp[i] = b'0' + (u % 10) as u8;
            u /= 10;
            if u == 0 {
                break;
            }
        }
        if v < 0 {
            self.push_bytes(b"-");
        }
        self.push_bytes(&tmp[i..])
    }

    /// Append `v` with `decimals` digits after the point (0..=9; rounded half away from zero).
    pub fn push_fixed(&mut self, v: f64, decimals: u32) -> &mut Self {
        if v.is_nan() {
            return self.push_str("NaN");
        }
        let d = if decimals > 9 { 9 } else { decimals };
        let scale = 10u64.pow(d) as f64;
        let neg = v < 0.0;
        let a = if neg { -v } else { v };
        let scaled = a * scale + 0.5;
        if scaled >= 9.0e18 {
            return self.push_str(if neg { "-inf" } else { "inf" });
        }
        let units = scaled as u64;
        if neg && units != 0 {
            self.push_bytes(b"-");
        }
        let whole = units / 10u64.pow(d);
        self.push_int(whole as i64);
        if d > 0 {
            self.push_bytes(b".");
            let mut frac = units % 10u64.pow(d);
            let mut digits = [b'0'; 9];
            for k in (0..d as usize).rev() {
                digits[k] = b'0' + (frac % 10) as u8;
                frac /= 10;
            }
            self.push_bytes(&digits[..d as usize]);
        }
        self
    }

    /// Append batch entity `index`'s ID (nothing if it is outside the batch).
    pub fn push_entity_id(&mut self, index: usize) -> &mut Self {
        let mut id = [0u8; 64];
        if let Some(n) = entity_id(index, &mut id) {
            let n = if n > id.len() { id.len() } else { n };
            self.push_bytes(&id[..n]);
        }
        self
    }

    /// Append this device's ID.
    pub fn push_device_id(&mut self) -> &mut Self {
        let mut id = [0u8; 64];
        let n = device_id(&mut id);
        let n = if n > id.len() { id.len() } else { n };
        self.push_bytes(&id[..n])
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for Text<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        if self.overflowed {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// `edge.<device>.<tail>`: the subject prefix of this device, e.g. `device_subject("evt.x")`.
pub fn device_subject<const N: usize>(tail: &str) -> Text<N> {
    let mut t = Text::new();
    t.push_str("edge.").push_device_id().push_str(".").push_str(tail);
    t
}

// ---- health -----------------------------------------------------------------------------------

/// For the optional `edge_health` export (`#[no_mangle] pub extern "C" fn edge_health() -> i32`,
/// called every `[health] interval_s` under `[health] gas`): log `reason` (level warning) and
/// return `code` (nonzero: not OK; the host reports the last line the call logged as the
/// reason). `edge_health` may only read and log: a publish or KV write makes it not OK.
pub fn health_fail(code: i32, reason: &str) -> i32 {
    log(Level::Warning, reason);
    code
}

// ---- messages ---------------------------------------------------------------------------------

/// The bytes `(ptr, len)` the host handed to `edge_on_message`.
///
/// # Safety
/// `ptr`/`len` must be the arguments of the current `edge_on_message` call.
pub unsafe fn message<'a>(ptr: *const u8, len: i32) -> &'a [u8] {
    if len <= 0 {
        &[]
    } else {
        core::slice::from_raw_parts(ptr, len as usize)
    }
}

/// `inbox!(SIZE)`: a static message buffer of `SIZE` bytes and the `edge_alloc` export the host
/// needs for `edge_on_message` (it answers 0, "no room", for a larger message, which the host
/// then drops and counts).
#[macro_export]
macro_rules! inbox {
    ($size:expr) => {
        static mut EDGE_INBOX: [u8; $size] = [0; $size];

        #[no_mangle]
        pub extern "C" fn edge_alloc(n: i32) -> i32 {
            if n >= 0 && (n as usize) <= $size {
                unsafe { EDGE_INBOX.as_mut_ptr() as i32 }
            } else {
                0
            }
        }
    };
}
