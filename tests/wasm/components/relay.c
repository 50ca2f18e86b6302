/* Test component: relays what it hears, configured through its KV (read in edge_init):
 *   out   the subject it publishes to (required)
 *   reps  how many copies of each message it publishes (decimal, default 1)
 * A message whose subject ends in ".put" carries "key=value": the component puts it in its KV
 * and publishes "rc=<kv_put result>" on `out`. One ending in ".kv" is a KV flood: the payload is
 * put under `reps` keys "f0", "f1", ... (nothing published). Any other message is republished
 * on `out` `reps` times. For the loop, rate and KV quota tests (tests/wasm/test_sandbox_limits.py,
 * test_loops.py) and bench/bench_sandbox.py. */
#include "edge.h"

EDGE_INBOX(4096)

static char out[256];
static int32_t out_len;
static int32_t reps = 1;

EDGE_INIT {
    out_len = edge_kv_get_str("out", out, (int32_t)sizeof out);
    if (out_len <= 0 || out_len > (int32_t)sizeof out) return 1;
    char buf[16];
    int32_t n = edge_kv_get_str("reps", buf, (int32_t)sizeof buf);
    if (n > 0 && n <= (int32_t)sizeof buf) {
        int32_t v = 0;
        for (int32_t i = 0; i < n; i++) v = v * 10 + (buf[i] - '0');
        reps = v;
    }
    return 0;
}

EDGE_ON_MESSAGE {
    if (subject_len >= 4 && edge_memeq(subject + subject_len - 4, ".put", 4)) {
        int32_t eq = 0;
        while (eq < data_len && data[eq] != '=') eq++;
        if (eq >= data_len) return 1;
        int32_t rc = edge_kv_put((const char *)data, eq, data + eq + 1, data_len - eq - 1);
        char msg[16] = "rc=";
        int32_t pos = 3;
        edge_fmt_int(msg, (int32_t)sizeof msg, &pos, rc);
        edge_publish(out, out_len, msg, pos);
        return 0;
    }
    if (subject_len >= 3 && edge_memeq(subject + subject_len - 3, ".kv", 3)) {
        char key[16] = "f";
        for (int32_t i = 0; i < reps; i++) {
            int32_t pos = 1;
            edge_fmt_int(key, (int32_t)sizeof key, &pos, i);
            edge_kv_put(key, pos, data, data_len);
        }
        return 0;
    }
    for (int32_t i = 0; i < reps; i++) edge_publish(out, out_len, data, data_len);
    return 0;
}
