/*
 * edge.h: header-only C SDK for edge WebAssembly components (host ABI contract 1, docs/abi.md).
 *
 * Build a component with:
 *   clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -Wl,--export-dynamic -I components/sdk -o c.wasm c.c
 *
 * There is no libc: this header provides edge_memcpy/edge_memset (and memcpy/memset/memmove
 * symbols, which clang may emit calls to), string helpers, the host imports, and EDGE_INBOX() which
 * defines a static message buffer and the edge_alloc export the host needs for edge_on_message.
 */
#ifndef EDGE_SDK_H
#define EDGE_SDK_H

#include <stdint.h>
#include <stddef.h>

#define EDGE_CONTRACT 1

#define EDGE_IMPORT(name) __attribute__((import_module("edge"), import_name(name)))
#define EDGE_EXPORT(name) __attribute__((export_name(name)))

/* ---- host imports (module "edge") ---------------------------------------------------------- */
EDGE_IMPORT("log") void edge_log(int32_t level, const char *ptr, int32_t len);
EDGE_IMPORT("publish") int32_t edge_publish(const char *subj, int32_t subj_len, const void *data, int32_t data_len);
EDGE_IMPORT("kv_get") int32_t edge_kv_get(const char *key, int32_t key_len, void *buf, int32_t cap);
EDGE_IMPORT("kv_put") int32_t edge_kv_put(const char *key, int32_t key_len, const void *val, int32_t val_len);
EDGE_IMPORT("clock_ms") int64_t edge_clock_ms(void);
EDGE_IMPORT("monotonic_ns") int64_t edge_monotonic_ns(void);
EDGE_IMPORT("batch_len") int32_t edge_batch_len(void);
EDGE_IMPORT("col_read") int32_t edge_col_read(int32_t column, double *ptr, int32_t cap_bytes);
EDGE_IMPORT("col_write") int32_t edge_col_write(int32_t column, const double *ptr, int32_t len_bytes);
EDGE_IMPORT("entity_id") int32_t edge_entity_id(int32_t index, char *buf, int32_t cap);
EDGE_IMPORT("device_id") int32_t edge_device_id(char *buf, int32_t cap);
/* Run model `model` (granted in the manifest's run.models) on `in` (every input tensor's bytes, in
 * input order, in the tensor's dtype); the outputs' bytes (in output order; float32 for float and
 * quantized models) land in `out`. Returns the bytes written, or an EDGE_INFER_* code. On
 * EDGE_INFER_BAD_INPUT / EDGE_INFER_SMALL_OUTPUT with out_cap >= 4, the first 4 bytes of `out` hold
 * the size expected (input / output bytes, little-endian u32). */
EDGE_IMPORT("infer") int32_t edge_infer(const char *model, int32_t model_len, const void *in, int32_t in_len,
                                       void *out, int32_t out_cap);

enum { EDGE_DEBUG = 0, EDGE_INFO = 1, EDGE_WARNING = 2, EDGE_ERROR = 3 };
/* publish: 0, -1 not granted, -2 invalid subject (wildcards, > 256 bytes) or payload > EDGE_PUBLISH_MAX,
 * -3 the call's publish_per_call quota is spent. */
enum { EDGE_OK = 0, EDGE_DENIED = -1, EDGE_BAD_SUBJECT = -2, EDGE_QUOTA = -3 };
#define EDGE_PUBLISH_MAX (1024 * 1024 - 1024) /* bytes: 1 MiB less room for the message's headers */
/* kv_put: 0, or -1 key/value too large (or the key empty, not [A-Za-z0-9_.-], or with an empty
 * token: a..b .a a.), -2 over the component's KV quota (limits.kv_keys/kv_bytes). */
enum { EDGE_KV_TOO_LARGE = -1, EDGE_KV_QUOTA = -2 };
enum {
    EDGE_INFER_DENIED = -1,       /* model not granted by run.models (counted as denied_infer) */
    EDGE_INFER_UNKNOWN = -2,      /* no such model loaded on the device */
    EDGE_INFER_BAD_INPUT = -3,    /* in_len is not the size of the model's inputs */
    EDGE_INFER_SMALL_OUTPUT = -4, /* out_cap is smaller than the model's outputs */
    EDGE_INFER_FAILED = -5        /* the model failed or ran past the host's infer timeout */
};

/* ---- no-libc helpers --------------------------------------------------------------------- */
/* no_builtin: without it clang -O2 turns these loops back into calls to memcpy/memset, which the
 * weak definitions below route here again: infinite recursion (a wasm3 stack-overflow trap). */
#define EDGE_NO_BUILTIN __attribute__((no_builtin("memcpy", "memset", "memmove")))

EDGE_NO_BUILTIN static inline void *edge_memcpy(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    while (n--) *d++ = *s++;
    return dst;
}

EDGE_NO_BUILTIN static inline void *edge_memset(void *dst, int c, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

static inline size_t edge_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static inline int edge_memeq(const void *a, const void *b, size_t n) {
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    for (size_t i = 0; i < n; i++) if (x[i] != y[i]) return 0;
    return 1;
}

/* clang lowers struct copies and large initialisers to calls to these symbols; define them once
 * per component (weak, so a component may provide its own). */
__attribute__((weak)) void *memcpy(void *dst, const void *src, size_t n) { return edge_memcpy(dst, src, n); }
__attribute__((weak)) void *memset(void *dst, int c, size_t n) { return edge_memset(dst, c, n); }
EDGE_NO_BUILTIN __attribute__((weak)) void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    if (d < s) while (n--) *d++ = *s++;
    else { d += n; s += n; while (n--) *--d = *--s; }
    return dst;
}

/* ---- scratch memory ----------------------------------------------------------------------- */
/* The host fixes linear memory at the manifest's limits.memory_pages (memory.grow fails beyond it).
 * edge_scratch(bytes) returns a 16-byte aligned area of at least `bytes` bytes after the static
 * data (the same area on every call: it is scratch, not an allocator), or 0 if it does not fit. */
extern unsigned char __heap_base;

static inline void *edge_scratch(size_t bytes) {
    size_t base = ((size_t)&__heap_base + 15u) & ~(size_t)15u;
    size_t need = base + bytes;
    size_t have = (size_t)__builtin_wasm_memory_size(0) * 65536u;
    if (need > have) {
        size_t pages = (need - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
    }
    return (void *)base;
}

/* ---- convenience wrappers ----------------------------------------------------------------- */
static inline void edge_log_str(int32_t level, const char *msg) {
    edge_log(level, msg, (int32_t)edge_strlen(msg));
}

static inline int32_t edge_publish_str(const char *subject, const void *data, int32_t data_len) {
    return edge_publish(subject, (int32_t)edge_strlen(subject), data, data_len);
}

static inline int32_t edge_kv_get_str(const char *key, void *buf, int32_t cap) {
    return edge_kv_get(key, (int32_t)edge_strlen(key), buf, cap);
}

static inline int32_t edge_kv_put_str(const char *key, const void *val, int32_t val_len) {
    return edge_kv_put(key, (int32_t)edge_strlen(key), val, val_len);
}

/* Append decimal `v` to buf at *pos (no bounds beyond cap). Handy for log lines. */
static inline void edge_fmt_int(char *buf, int32_t cap, int32_t *pos, int64_t v) {
    char tmp[24];
    int32_t n = 0;
    uint64_t u = v < 0 ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
    do { tmp[n++] = (char)('0' + (u % 10)); u /= 10; } while (u && n < 24);
    if (v < 0 && *pos < cap) buf[(*pos)++] = '-';
    while (n && *pos < cap) buf[(*pos)++] = tmp[--n];
}

/* Column helpers: the host copies f64 columns of the current batch in and out. */
static inline int32_t edge_read_column(int32_t column, double *dst, int32_t n) {
    return edge_col_read(column, dst, n * (int32_t)sizeof(double));
}

static inline int32_t edge_write_column(int32_t column, const double *src, int32_t n) {
    return edge_col_write(column, src, n * (int32_t)sizeof(double));
}

/* Inference helpers. edge_infer_str names the model with a C string. */
static inline int32_t edge_infer_str(const char *model, const void *in, int32_t in_len, void *out,
                                     int32_t out_cap) {
    return edge_infer(model, (int32_t)edge_strlen(model), in, in_len, out, out_cap);
}

/* Learn a model's input and output sizes (bytes): asks with an empty input (-> the input size),
 * then runs the model once on zeros written into `work` (`cap` bytes, must hold the input) with a
 * 4-byte output buffer (-> the output size). Returns 0, or an EDGE_INFER_* code (EDGE_INFER_BAD_INPUT
 * also when `work` cannot hold the input, with *in_bytes set). Call it from edge_init, not per tick. */
static inline int32_t edge_infer_sizes(const char *model, void *work, int32_t cap, int32_t *in_bytes,
                                       int32_t *out_bytes) {
    int32_t ml = (int32_t)edge_strlen(model);
    uint32_t hint = 0;
    int32_t rc = edge_infer(model, ml, work, 0, &hint, 4);
    if (rc >= 0) { *in_bytes = 0; *out_bytes = rc; return 0; }
    if (rc != EDGE_INFER_BAD_INPUT) return rc;
    *in_bytes = (int32_t)hint;
    if ((int32_t)hint > cap) return EDGE_INFER_BAD_INPUT;
    /* a plain zeroing loop: clang may turn edge_memset into a call to memset, which is fine, but
     * keep this helper free of library calls */
    for (uint32_t i = 0; i < hint; i++) ((volatile uint8_t *)work)[i] = 0;
    rc = edge_infer(model, ml, work, (int32_t)hint, &hint, 4);
    if (rc == EDGE_INFER_SMALL_OUTPUT) { *out_bytes = (int32_t)hint; return 0; }
    if (rc >= 0) { *out_bytes = rc; return 0; }
    return rc;
}

/* ---- exports ------------------------------------------------------------------------------ */
/* EDGE_INIT, EDGE_TICK and EDGE_ON_MESSAGE (no arguments) open the definitions of the contract's
 * exports: `EDGE_TICK { ... }` has the parameters `n` and `dt`, `EDGE_ON_MESSAGE { ... }` the
 * parameters `subject`, `subject_len`, `data` and `data_len`. */
#define EDGE_INIT __attribute__((export_name("edge_init"))) int32_t edge_init(void)
#define EDGE_TICK __attribute__((export_name("edge_tick"))) int32_t edge_tick(int32_t n, double dt)
#define EDGE_ON_MESSAGE                                                                           \
    __attribute__((export_name("edge_on_message"))) int32_t edge_on_message(                      \
        const char *subject, int32_t subject_len, const uint8_t *data, int32_t data_len)

/* EDGE_HEALTH: the optional health export, called every [health] interval_s under [health] gas:
 * return 0 when healthy; else a nonzero code, the reason being the last line the call logged
 * (edge_health_fail). It may only read and log: a publish or KV write makes it not OK. */
#define EDGE_HEALTH __attribute__((export_name("edge_health"))) int32_t edge_health(void)

/* Log `reason` (level warning) and return `code`: `return edge_health_fail(3, "sensor stuck");` */
static inline int32_t edge_health_fail(int32_t code, const char *reason) {
    edge_log_str(2, reason);
    return code;
}

/* EDGE_INBOX(size): a static buffer of `size` bytes and the edge_alloc export returning it (0 if
 * the message does not fit: the host then drops it and counts it). */
#define EDGE_INBOX(size)                                                                          \
    static uint8_t edge_inbox_[(size)];                                                           \
    __attribute__((export_name("edge_alloc"))) int32_t edge_alloc(int32_t n) {                    \
        return (n >= 0 && n <= (int32_t)(size)) ? (int32_t)(uintptr_t)edge_inbox_ : 0;            \
    }

#endif /* EDGE_SDK_H */
