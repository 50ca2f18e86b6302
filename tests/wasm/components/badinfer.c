/* Test component: imports edge.infer with the wrong signature (model name only). */
#include <stdint.h>

__attribute__((import_module("edge"), import_name("infer"))) int32_t bad_infer(int32_t, int32_t);

__attribute__((export_name("edge_tick"))) int32_t edge_tick(int32_t n, double dt) {
    (void)dt;
    return bad_infer(n, n);
}
