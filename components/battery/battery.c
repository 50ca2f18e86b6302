/* battery: level -= drain * dt, clamped at 0. Publishes edge.<device>.evt.battery.low once when an
 * entity's level crosses 0.2 (a downward crossing happens once per discharge), and counts the events
 * in the private KV key "low_events". */
#include "edge.h"

/* Columns: 0 battery.level, 1 battery.drain. */
enum { LEVEL, DRAIN, NCOL };
#define LOW 0.2

static char subject[160];
static int32_t subject_len;

EDGE_INIT {
    static const char head[] = "edge.", tail[] = ".evt.battery.low";
    int32_t pos = 0;
    edge_memcpy(subject, head, sizeof head - 1);
    pos = sizeof head - 1;
    int32_t dev = edge_device_id(subject + pos, (int32_t)sizeof subject - pos - (int32_t)sizeof tail);
    if (dev < 0 || pos + dev + (int32_t)sizeof tail > (int32_t)sizeof subject) return 1;
    pos += dev;
    edge_memcpy(subject + pos, tail, sizeof tail - 1);
    subject_len = pos + (int32_t)sizeof tail - 1;
    return 0;
}

static void report_low(int32_t index, double level) {
    char msg[200];
    int32_t pos = 0;
    static const char a[] = "{\"entity\":\"", b[] = "\",\"level_pct\":";
    edge_memcpy(msg, a, sizeof a - 1);
    pos += sizeof a - 1;
    int32_t idn = edge_entity_id(index, msg + pos, 128);
    if (idn < 0 || idn > 128) return;
    pos += idn;
    edge_memcpy(msg + pos, b, sizeof b - 1);
    pos += sizeof b - 1;
    edge_fmt_int(msg, (int32_t)sizeof msg - 1, &pos, (int64_t)(level * 100.0));
    msg[pos++] = '}';
    edge_publish(subject, subject_len, msg, pos);

    int64_t count = 0;
    edge_kv_get_str("low_events", &count, (int32_t)sizeof count);
    count++;
    edge_kv_put_str("low_events", &count, (int32_t)sizeof count);
}

EDGE_TICK {
    if (n <= 0) return 0;
    double *cols = (double *)edge_scratch((size_t)n * NCOL * sizeof(double));
    if (!cols) return 1;
    double *level = cols, *drain = cols + n;
    if (edge_read_column(LEVEL, level, n) < 0 || edge_read_column(DRAIN, drain, n) < 0) return 2;
    for (int32_t i = 0; i < n; i++) {
        double before = level[i];
        double after = before - drain[i] * dt;
        if (after < 0.0) after = 0.0;
        level[i] = after;
        if (before >= LOW && after < LOW) report_low(i, after);
    }
    return edge_write_column(LEVEL, level, n) < 0 ? 3 : 0;
}
