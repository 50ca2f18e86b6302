/* Test component: a start function, edge_init's result, and imports called with bad arguments.
 *
 * C cannot declare a wasm start function: the test adds a `start` section naming
 * edge_start_here (sandbox_support.with_start). The start function counts its runs in KV key
 * "started" and, by the first byte of KV key "start": 't' traps, 's' spins until its gas runs
 * out, anything else returns. edge_init returns 7 if KV "start" is 'h' and the start function did
 * not run exactly once, else the i32 in KV key "init" (0 if absent).
 *
 * edge_on_message calls an import by the first payload byte and publishes its result (i32,
 * little-endian) on edge.dev1.evt.lifecycle:
 *   'L' log with a length far past linear memory (traps)
 *   'l' log of 3000 bytes inside linear memory (cut at 1 KiB; returns, result 0)
 *   'K' kv_get of an absent key into a buffer outside linear memory (traps)
 *   'k' kv_get of an absent key into a buffer inside linear memory (-1)
 *   'P' kv_put of a too-long key whose bytes run past linear memory (traps)
 */
#include "edge.h"

EDGE_INBOX(4096)

static volatile int32_t started;
static char line[3000];
static char buf[16];

#define FAR_AWAY ((void *)0x7ffffff0) /* far beyond any linear memory the host allows */

static char kv_mode(void) {
    char m = 0;
    return edge_kv_get_str("start", &m, 1) >= 1 ? m : 0;
}

EDGE_EXPORT("edge_start_here") void edge_start_here(void) {
    started += 1;
    int32_t n = started;
    edge_kv_put_str("started", &n, (int32_t)sizeof n);
    char m = kv_mode();
    if (m == 't') __builtin_trap();
    if (m == 's') {
        for (;;) started += 1;
    }
}

EDGE_INIT {
    if (kv_mode() == 'h' && started != 1) return 7;
    int32_t rc = 0;
    edge_kv_get_str("init", &rc, (int32_t)sizeof rc);
    return rc;
}

EDGE_ON_MESSAGE {
    (void)subject;
    (void)subject_len;
    if (data_len < 1) return 1;
    int32_t rc = 0;
    switch (data[0]) {
    case 'L': edge_log(EDGE_INFO, line, 0x7fffff00); break;
    case 'l':
        edge_memset(line, 'x', sizeof line);
        edge_log(EDGE_INFO, line, (int32_t)sizeof line);
        break;
    case 'K': rc = edge_kv_get("absent", 6, FAR_AWAY, 16); break;
    case 'k': rc = edge_kv_get("absent", 6, buf, (int32_t)sizeof buf); break;
    case 'P': rc = edge_kv_put((const char *)FAR_AWAY, 1000, buf, 1); break;
    default: return 1;
    }
    edge_publish_str("edge.dev1.evt.lifecycle", &rc, (int32_t)sizeof rc);
    return 0;
}
