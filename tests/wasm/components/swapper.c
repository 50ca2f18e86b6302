/* Test component of the warm-standby swap (tests/wasm/test_stage_promote.py).
 *
 * edge_init reads the i32 in KV key "count" (0 if absent) and writes it to KV key "seen": what
 * its edge_init saw of the state. A message with payload 'w' followed by one byte writes that
 * byte as the i32 "count". edge_tick does nothing.
 */
#include "edge.h"

EDGE_INBOX(256)

EDGE_INIT {
    int32_t c = 0;
    edge_kv_get_str("count", &c, (int32_t)sizeof c);
    edge_kv_put_str("seen", &c, (int32_t)sizeof c);
    return 0;
}

EDGE_TICK {
    (void)n;
    (void)dt;
    return 0;
}

EDGE_ON_MESSAGE {
    (void)subject;
    (void)subject_len;
    if (data_len >= 2 && data[0] == 'w') {
        int32_t c = (uint8_t)data[1];
        edge_kv_put_str("count", &c, (int32_t)sizeof c);
    }
    return 0;
}
