/* patrol: steer velocity toward the corners of a square (half-size `half` around (cx, cy)) in turn,
 * at `speed`; within 1 m of the current corner, move on to the next one (leg = (leg + 1) % 4). */
#include "edge.h"

/* Columns: read position.x/y, patrol.cx/cy/half/speed/leg; then write-only velocity.x/y. */
enum { PX, PY, CX, CY, HALF, SPEED, LEG, VX, VY, NCOL };
#define ARRIVED 1.0

static void corner(int leg, double cx, double cy, double h, double *x, double *y) {
    static const double sx[4] = {1.0, -1.0, -1.0, 1.0}, sy[4] = {1.0, 1.0, -1.0, -1.0};
    *x = cx + sx[leg] * h;
    *y = cy + sy[leg] * h;
}

EDGE_TICK {
    (void)dt;
    if (n <= 0) return 0;
    double *cols = (double *)edge_scratch((size_t)n * NCOL * sizeof(double));
    if (!cols) return 1;
    for (int32_t c = PX; c <= LEG; c++)
        if (edge_read_column(c, cols + c * n, n) < 0) return 2;
    double *px = cols + PX * n, *py = cols + PY * n, *cx = cols + CX * n, *cy = cols + CY * n;
    double *half = cols + HALF * n, *speed = cols + SPEED * n, *legs = cols + LEG * n;
    double *vx = cols + VX * n, *vy = cols + VY * n;
    for (int32_t i = 0; i < n; i++) {
        int leg = ((int)legs[i]) & 3;
        double tx, ty;
        corner(leg, cx[i], cy[i], half[i], &tx, &ty);
        double dx = tx - px[i], dy = ty - py[i];
        double dist = __builtin_sqrt(dx * dx + dy * dy);
        if (dist < ARRIVED) {
            leg = (leg + 1) & 3;
            corner(leg, cx[i], cy[i], half[i], &tx, &ty);
            dx = tx - px[i];
            dy = ty - py[i];
            dist = __builtin_sqrt(dx * dx + dy * dy);
        }
        legs[i] = (double)leg;
        if (dist > 0.0) {
            vx[i] = dx / dist * speed[i];
            vy[i] = dy / dist * speed[i];
        } else {
            vx[i] = vy[i] = 0.0;
        }
    }
    if (edge_write_column(VX, vx, n) < 0 || edge_write_column(VY, vy, n) < 0) return 3;
    return edge_write_column(LEG, legs, n) < 0 ? 3 : 0;
}
