/* Test component: each tick tries to grow memory by column 0's value in pages; publishes the
 * result of memory.grow and the memory size (pages) as "<grow> <size>". */
#include "edge.h"

static double col[16];

EDGE_TICK {
    (void)dt;
    if (n < 1 || n > 16) return 1;
    edge_read_column(0, col, n);
    int32_t r = (int32_t)__builtin_wasm_memory_grow(0, (size_t)col[0]);
    char line[64];
    int32_t pos = 0;
    edge_fmt_int(line, 64, &pos, r);
    line[pos++] = ' ';
    edge_fmt_int(line, 64, &pos, (int64_t)__builtin_wasm_memory_size(0));
    edge_publish_str("edge.dev1.evt.grow", line, pos);
    return 0;
}
