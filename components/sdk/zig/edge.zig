//! edge: the Zig SDK for edge WebAssembly components (host ABI contract 1, docs/abi.md).
//!
//! Built by components/build.py with the Zig of the PyPI package `ziglang` (pinned in
//! pyproject.toml's `sdk` extra): `zig build-exe -target wasm32-freestanding -mcpu mvp
//! -O ReleaseSafe -fno-entry -rdynamic --stack 65536`, this file given as module `edge`
//! (`-mcpu mvp`: wasm3 reads only the MVP encoding; ReleaseSafe: a failed safety check traps). A component imports it with
//! `const edge = @import("edge");` and exports the contract's functions with `export fn`:
//!
//!     export fn edge_tick(n: i32, dt: f64) i32 { ... }
//!
//! No allocator is needed: `scratch` hands out the memory after the static data and the stack,
//! `std.fmt.bufPrint` formats into a fixed buffer, and `Inbox` provides `edge_alloc`.

const std = @import("std");

/// The contract version this SDK implements (the manifest's `contract`).
pub const contract: i32 = 1;

/// The raw host imports (module `edge`), exactly as docs/abi.md lists them.
pub const sys = struct {
    pub extern "edge" fn log(level: i32, ptr: [*]const u8, len: i32) void;
    pub extern "edge" fn publish(subj: [*]const u8, subj_len: i32, data: [*]const u8, data_len: i32) i32;
    pub extern "edge" fn kv_get(key: [*]const u8, key_len: i32, buf: [*]u8, cap: i32) i32;
    pub extern "edge" fn kv_put(key: [*]const u8, key_len: i32, val: [*]const u8, val_len: i32) i32;
    pub extern "edge" fn clock_ms() i64;
    pub extern "edge" fn monotonic_ns() i64;
    pub extern "edge" fn batch_len() i32;
    pub extern "edge" fn col_read(column: i32, ptr: [*]f64, cap: i32) i32;
    pub extern "edge" fn col_write(column: i32, ptr: [*]const f64, len: i32) i32;
    pub extern "edge" fn entity_id(index: i32, buf: [*]u8, cap: i32) i32;
    pub extern "edge" fn device_id(buf: [*]u8, cap: i32) i32;
    pub extern "edge" fn infer(model: [*]const u8, model_len: i32, input: [*]const u8, in_len: i32, out: [*]u8, out_cap: i32) i32;
};

fn len32(n: usize) i32 {
    // linear memory is at most 4 GiB and the host caps it at 1 GiB: a slice length fits
    return @intCast(n);
}

// ---- log -------------------------------------------------------------------------------------

pub const Level = enum(i32) { debug = 0, info = 1, warning = 2, err = 3 };

/// Log a line (cut at 1 KiB by the host; a burst of 20, then 10 lines a second).
pub fn log(level: Level, msg: []const u8) void {
    sys.log(@intFromEnum(level), msg.ptr, len32(msg.len));
}

/// Log a formatted line (at most 256 bytes; a longer one is cut).
pub fn logf(level: Level, comptime fmt: []const u8, args: anytype) void {
    var buf: [256]u8 = undefined;
    const line = std.fmt.bufPrint(&buf, fmt, args) catch buf[0..];
    log(level, line);
}

// ---- publish ---------------------------------------------------------------------------------

pub const PublishError = error{
    /// -1: the manifest's run.publish does not grant the subject (counted as `denied`).
    Denied,
    /// -2: the subject is invalid (wildcards, spaces, > 256 bytes) or the payload > 1 MiB - 1 KiB (1,047,552 bytes).
    BadSubject,
    /// -3: this call's limits.publish_per_call quota is spent.
    Quota,
};

/// Publish `data` on `subject` (a core NATS publish, sent in order after the call returns).
pub fn publish(subject: []const u8, data: []const u8) PublishError!void {
    return switch (sys.publish(subject.ptr, len32(subject.len), data.ptr, len32(data.len))) {
        0 => {},
        -1 => error.Denied,
        -3 => error.Quota,
        else => error.BadSubject,
    };
}

// ---- key-value -------------------------------------------------------------------------------

/// kv_put refused the write: TooLarge, the key (empty, > 128 bytes, not [A-Za-z0-9_.-], or with an
/// empty token: a..b, .a, a.) or the value (> 64 KiB); Quota, it would pass the component's KV
/// quota (limits.kv_keys, limits.kv_bytes).
pub const KvError = error{ TooLarge, Quota };

/// Read this component's private key into `buf`: the value's full length (at most `buf.len`
/// bytes are copied), or null if the key is absent.
pub fn kvGet(key: []const u8, buf: []u8) ?usize {
    const rc = sys.kv_get(key.ptr, len32(key.len), buf.ptr, len32(buf.len));
    return if (rc < 0) null else @intCast(rc);
}

/// Write this component's private key (persisted by the host after the call returns).
pub fn kvPut(key: []const u8, value: []const u8) KvError!void {
    const rc = sys.kv_put(key.ptr, len32(key.len), value.ptr, len32(value.len));
    if (rc == -2) return error.Quota;
    if (rc != 0) return error.TooLarge;
}

/// A little-endian f64 stored under `key`, or null if absent or not 8 bytes long.
pub fn kvGetF64(key: []const u8) ?f64 {
    var b: [8]u8 = undefined;
    const n = kvGet(key, &b) orelse return null;
    if (n != 8) return null;
    return @bitCast(std.mem.readInt(u64, &b, .little));
}

/// Store `value` under `key` as 8 little-endian bytes.
pub fn kvPutF64(key: []const u8, value: f64) KvError!void {
    var b: [8]u8 = undefined;
    std.mem.writeInt(u64, &b, @bitCast(value), .little);
    return kvPut(key, &b);
}

// ---- clocks ----------------------------------------------------------------------------------

/// Wall clock, milliseconds since the Unix epoch.
pub fn clockMs() i64 {
    return sys.clock_ms();
}

/// Monotonic clock, nanoseconds.
pub fn monotonicNs() i64 {
    return sys.monotonic_ns();
}

// ---- the tick batch --------------------------------------------------------------------------

/// col_read / col_write refused: unknown column, read-only column, or a slice whose length is
/// not the batch's.
pub const ColumnError = error{BadColumn};

/// Number of entities in the current tick batch (0 outside edge_tick).
pub fn batchLen() usize {
    const n = sys.batch_len();
    return if (n < 0) 0 else @intCast(n);
}

/// Copy column `column` (manifest order: query.read, then the new query.write fields) of the
/// batch into `dst` (at least batchLen() values).
pub fn readColumn(column: u32, dst: []f64) ColumnError!void {
    if (sys.col_read(@intCast(column), dst.ptr, len32(dst.len * 8)) < 0) return error.BadColumn;
}

/// Copy `src` (exactly batchLen() values) into column `column`, a query.write field.
pub fn writeColumn(column: u32, src: []const f64) ColumnError!void {
    if (sys.col_write(@intCast(column), src.ptr, len32(src.len * 8)) < 0) return error.BadColumn;
}

/// Copy the ID of batch entity `index` into `buf`: the ID (cut at buf.len), or null outside
/// the batch.
pub fn entityId(index: usize, buf: []u8) ?[]const u8 {
    const rc = sys.entity_id(len32(index), buf.ptr, len32(buf.len));
    if (rc < 0) return null;
    return buf[0..@min(@as(usize, @intCast(rc)), buf.len)];
}

/// This device's ID, copied into `buf` (IDs are at most 64 bytes).
pub fn deviceId(buf: []u8) []const u8 {
    const rc = sys.device_id(buf.ptr, len32(buf.len));
    if (rc < 0) return buf[0..0];
    return buf[0..@min(@as(usize, @intCast(rc)), buf.len)];
}

/// `edge.<device>.<tail>` written into `buf`, e.g. deviceSubject(&buf, "evt.x").
pub fn deviceSubject(buf: []u8, tail: []const u8) error{NoSpaceLeft}![]const u8 {
    var id: [64]u8 = undefined;
    return std.fmt.bufPrint(buf, "edge.{s}.{s}", .{ deviceId(&id), tail });
}

// ---- inference -------------------------------------------------------------------------------

pub const InferError = error{
    /// -1: the model is not in run.models.
    Denied,
    /// -2: no such model is loaded on the device.
    Unknown,
    /// -3: the input is not the model's input size (the host wrote it at out[0..4]).
    BadInput,
    /// -4: `out` is smaller than the output (the host wrote its size at out[0..4]).
    SmallOutput,
    /// -5: the model failed, timed out, or the call spent its infer budget.
    Failed,
};

/// Run model `model` on `input` (every input tensor's raw bytes, in input order); the outputs'
/// bytes land in `out`. Returns the number of bytes written.
pub fn infer(model: []const u8, input: []const u8, out: []u8) InferError!usize {
    const rc = sys.infer(model.ptr, len32(model.len), input.ptr, len32(input.len), out.ptr, len32(out.len));
    return switch (rc) {
        -1 => error.Denied,
        -2 => error.Unknown,
        -3 => error.BadInput,
        -4 => error.SmallOutput,
        else => if (rc < 0) error.Failed else @intCast(rc),
    };
}

// ---- scratch memory --------------------------------------------------------------------------

/// End of the static data and the stack: defined by the linker.
extern var __heap_base: u8;

/// `n` values of type T of scratch memory after the static data and the stack (the same area on
/// every call: scratch, not an allocator), or null if it does not fit in limits.memory_pages.
pub fn scratch(comptime T: type, n: usize) ?[]T {
    const base = std.mem.alignForward(usize, @intFromPtr(&__heap_base), 16);
    const need = base + n * @sizeOf(T);
    const have = @wasmMemorySize(0) * 65536;
    if (need > have) {
        const pages = (need - have + 65535) / 65536;
        if (@wasmMemoryGrow(0, pages) < 0) return null;
    }
    const ptr: [*]T = @ptrFromInt(base);
    return ptr[0..n];
}

// ---- health ----------------------------------------------------------------------------------

/// For the optional edge_health export (`export fn edge_health() i32`, called every
/// [health] interval_s under [health] gas): log `reason` (level warning) and return `code`
/// (nonzero: not OK; the host reports the last line the call logged as the reason).
/// edge_health may only read and log: a publish or KV write makes it not OK.
pub fn healthFail(code: i32, reason: []const u8) i32 {
    log(.warning, reason);
    return code;
}

// ---- messages --------------------------------------------------------------------------------

/// The bytes (ptr, len) the host handed to edge_on_message.
pub fn message(ptr: [*]const u8, len: i32) []const u8 {
    return if (len <= 0) ptr[0..0] else ptr[0..@intCast(len)];
}

/// Inbox(size).alloc is an edge_alloc: a component exports it with
///     const inbox = edge.Inbox(4096);
///     export fn edge_alloc(n: i32) i32 { return inbox.alloc(n); }
/// It answers 0 ("no room") for a message larger than `size`; the host then drops it and counts it.
pub fn Inbox(comptime size: usize) type {
    return struct {
        var buf: [size]u8 align(16) = undefined;

        pub fn alloc(n: i32) i32 {
            if (n < 0 or @as(usize, @intCast(n)) > size) return 0;
            return @intCast(@intFromPtr(&buf));
        }
    };
}
