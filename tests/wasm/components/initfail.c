/* Test component: edge_init fails (returns 1); edge_tick does nothing. Loading it must fail. */
#include "edge.h"

EDGE_INIT { return 1; }

EDGE_TICK {
    (void)n;
    (void)dt;
    return 0;
}
