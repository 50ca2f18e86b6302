/* Test component: an edge_health export driven by its KV key "mode" (read at each call):
 *   absent or "ok"  -> 0 (healthy)
 *   "bad"           -> 3 with the reason "sensor stuck"
 *   "after<N>"      -> healthy for N calls, then 4 with the reason "tired"
 *   "spin"          -> loops until its gas runs out
 *   "trap"          -> traps
 *   "publish"       -> publishes (an effect edge_health may not have), then 0
 * edge_tick counts ticks into KV key "ticks" is not needed: it does nothing. */
#include "edge.h"

static int32_t calls;

EDGE_TICK {
    (void)n;
    (void)dt;
    return 0;
}

static int same(const char *a, int32_t len, const char *b) {
    int32_t i = 0;
    for (; i < len && b[i]; i++)
        if (a[i] != b[i]) return 0;
    return i == len && b[i] == 0;
}

EDGE_HEALTH {
    char mode[32];
    int32_t len = edge_kv_get_str("mode", mode, (int32_t)sizeof mode);
    calls++;
    if (len <= 0 || same(mode, len, "ok")) return 0;
    if (same(mode, len, "bad")) return edge_health_fail(3, "sensor stuck");
    if (same(mode, len, "spin")) {
        volatile int32_t x = 0;
        for (;;) x++;
    }
    if (same(mode, len, "trap")) __builtin_trap();
    if (same(mode, len, "publish")) {
        edge_publish_str("edge.dev1.evt.health.x", "{}", 2);
        return 0;
    }
    if (len > 5 && mode[0] == 'a' && mode[1] == 'f' && mode[2] == 't' && mode[3] == 'e' &&
        mode[4] == 'r') {
        int32_t limit = 0;
        for (int32_t i = 5; i < len && mode[i] >= '0' && mode[i] <= '9'; i++)
            limit = limit * 10 + (mode[i] - '0');
        if (calls > limit) return edge_health_fail(4, "tired");
        return 0;
    }
    return edge_health_fail(9, "unknown mode");
}
