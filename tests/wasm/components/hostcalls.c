/* Test component: each tick makes `dt` cheap host calls of one kind, chosen by `n`:
 * 0 batch_len, 1 clock_ms, 2 monotonic_ns, 3 device_id (an import with arguments).
 * For measuring what a host call costs the worker in memory (tests/wasm/test_recycle.py,
 * bench/bench_memory.py). */
#include "edge.h"

static char buf[64];
static volatile int64_t sink;

EDGE_TICK {
    int32_t calls = (int32_t)dt;
    int64_t s = 0;
    for (int32_t i = 0; i < calls; i++) {
        switch (n) {
        case 0: s += edge_batch_len(); break;
        case 1: s += edge_clock_ms(); break;
        case 2: s += edge_monotonic_ns(); break;
        default: s += edge_device_id(buf, (int32_t)sizeof buf); break;
        }
    }
    sink = s;
    return 0;
}
