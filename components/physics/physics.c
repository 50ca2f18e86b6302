/* physics: position += velocity * dt for every entity that has both. */
#include "edge.h"

/* Columns (manifest order): 0-2 position.x/y/z, 3-5 velocity.x/y/z. */
enum { PX, PY, PZ, VX, VY, VZ, NCOL };

/* The kernel works on NCOL consecutive columns of n doubles at `cols`. Exported so a benchmark can
 * time the pure update on data already in linear memory.
 * Unrolled by 4: the host's gas metering charges at every loop head (a host call per iteration),
 * so four entities per iteration cut that overhead to a quarter (metered/plain ~1.3x -> ~1.05x). */
EDGE_EXPORT("physics_kernel") void physics_kernel(double *cols, int32_t n, double dt) {
    double *px = cols + PX * n, *py = cols + PY * n, *pz = cols + PZ * n;
    const double *vx = cols + VX * n, *vy = cols + VY * n, *vz = cols + VZ * n;
#pragma clang loop unroll_count(4)
    for (int32_t i = 0; i < n; i++) {
        px[i] += vx[i] * dt;
        py[i] += vy[i] * dt;
        pz[i] += vz[i] * dt;
    }
}

/* Returns a scratch area for NCOL columns of n doubles (for the benchmark's raw kernel call). */
EDGE_EXPORT("physics_buffer") int32_t physics_buffer(int32_t n) {
    return (int32_t)(uintptr_t)edge_scratch((size_t)n * NCOL * sizeof(double));
}

EDGE_TICK {
    if (n <= 0) return 0;
    double *cols = (double *)edge_scratch((size_t)n * NCOL * sizeof(double));
    if (!cols) {
        edge_log_str(EDGE_ERROR, "physics: batch does not fit in memory_pages");
        return 1;
    }
    for (int32_t c = 0; c < NCOL; c++)
        if (edge_read_column(c, cols + c * n, n) < 0) return 2;
    physics_kernel(cols, n, dt);
    for (int32_t c = PX; c <= PZ; c++)
        if (edge_write_column(c, cols + c * n, n) < 0) return 3;
    return 0;
}
