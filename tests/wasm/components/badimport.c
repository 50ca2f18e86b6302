/* Test component: imports edge.open_socket, which the contract does not provide. */
#include "edge.h"

__attribute__((import_module("edge"), import_name("open_socket"))) int32_t open_socket(int32_t);

EDGE_TICK {
    (void)dt;
    return open_socket(n);
}
