/* Test component: edge_tick traps (unreachable) when its first column is negative, else counts
 * ticks in KV key "ticks". edge_on_message divides by the payload length (0 traps). */
#include "edge.h"

EDGE_INBOX(4096)

static double col[1024];

EDGE_TICK {
    (void)dt;
    if (n > 1024) return 1;
    if (n > 0 && edge_read_column(0, col, n) >= 0 && col[0] < 0) __builtin_trap();
    int64_t ticks = 0;
    edge_kv_get_str("ticks", &ticks, (int32_t)sizeof ticks);
    ticks++;
    edge_kv_put_str("ticks", &ticks, (int32_t)sizeof ticks);
    return 0;
}

static volatile int32_t zero_guard = 1000;

EDGE_ON_MESSAGE {
    (void)subject;
    (void)subject_len;
    (void)data;
    volatile int32_t q = zero_guard / data_len; /* data_len == 0: integer divide by zero */
    (void)q;
    return 0;
}
