/* Test component: edge_tick never returns (stopped by gas or by the wall-clock deadline). */
#include "edge.h"

static volatile int32_t sink;

EDGE_TICK {
    (void)dt;
    for (;;) sink += n;
    return 0;
}
