/* Test component: imports edge.log with the wrong signature. */
#include <stdint.h>

__attribute__((import_module("edge"), import_name("log"))) int32_t bad_log(int32_t);

__attribute__((export_name("edge_tick"))) int32_t edge_tick(int32_t n, double dt) {
    (void)dt;
    return bad_log(n);
}
