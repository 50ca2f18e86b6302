/* Test component: each tick publishes to a granted subject and to one it is not granted, and
 * logs the return codes. */
#include "edge.h"

static int32_t last_ok = 99, last_denied = 99, last_bad = 99;

EDGE_TICK {
    (void)n;
    (void)dt;
    last_ok = edge_publish_str("edge.dev1.evt.forbidden.ok", "ok", 2);
    last_denied = edge_publish_str("edge.dev1.cmd.motors.arm", "arm", 3);
    last_bad = edge_publish_str("edge.dev1.evt.forbidden.*", "x", 1);
    char line[64];
    int32_t pos = 0;
    edge_fmt_int(line, 64, &pos, last_ok);
    line[pos++] = ' ';
    edge_fmt_int(line, 64, &pos, last_denied);
    line[pos++] = ' ';
    edge_fmt_int(line, 64, &pos, last_bad);
    edge_log(EDGE_INFO, line, pos);
    return 0;
}
