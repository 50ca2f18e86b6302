/* Test component: reads column 0, waits `dt` seconds of wall clock, writes column 0 + 1.
 * Lets a test act on the world while a tick is in flight (after the read, before the write). */
#include "edge.h"

EDGE_TICK {
    if (n <= 0) return 0;
    double *x = (double *)edge_scratch((size_t)n * sizeof(double));
    if (!x || edge_read_column(0, x, n) < 0) return 2;
    int64_t until = edge_monotonic_ns() + (int64_t)(dt * 1e9);
    while (edge_monotonic_ns() < until) {
    }
    for (int32_t i = 0; i < n; i++) x[i] += 1.0;
    return edge_write_column(0, x, n) < 0 ? 3 : 0;
}
