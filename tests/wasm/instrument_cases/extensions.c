/* Post-MVP features clang emits with -mbulk-memory -msign-ext -mnontrapping-fptoint:
   memory.copy / memory.fill (0xFC 10/11), sign extension (0xC0-0xC4), saturating
   float-to-int truncation (0xFC 0-7). */
#define EXPORT(name) __attribute__((export_name(name)))

static unsigned char a[512], b[512];

EXPORT("copy_fill") int copy_fill(int n, int v) {
    for (int i = 0; i < 512; i++) a[i] = (unsigned char)i;
    __builtin_memmove(a + 7, a, (unsigned long)n);
    __builtin_memset(b, v, (unsigned long)n);
    int s = 0;
    for (int i = 0; i < 512; i++) s += a[i] * 3 + b[i];
    return s;
}

EXPORT("sext8") int sext8(int x) { return (int)(signed char)x; }
EXPORT("sext16") int sext16(int x) { return (int)(short)x; }
EXPORT("sext64_32") long long sext64_32(long long x) { return (long long)(int)x; }

EXPORT("sat_i32") int sat_i32(double x) { return __builtin_wasm_trunc_saturate_s_i32_f64(x); }
EXPORT("sat_u32") int sat_u32(float x) {
    return (int)__builtin_wasm_trunc_saturate_u_i32_f32(x);
}
EXPORT("sat_i64") long long sat_i64(double x) { return __builtin_wasm_trunc_saturate_s_i64_f64(x); }
EXPORT("grow") int grow(int pages) { return __builtin_wasm_memory_grow(0, pages); }
EXPORT("size") int size(void) { return __builtin_wasm_memory_size(0); }

/* A loop whose few instructions each move a lot of memory. */
static unsigned char big[1 << 20];
unsigned char *volatile fill_target = big;
EXPORT("fill_forever") void fill_forever(int n) {
    for (int i = 0;; i++) __builtin_memset(fill_target, i, (unsigned long)n);
}
