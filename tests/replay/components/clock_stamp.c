/* clock_stamp (test component): edge_init reads clock_ms once and keeps it (in memory and under
 * the KV key "born"); every message is answered on edge.<device>.evt.stamp with
 * "born=<init ms> now=<clock_ms in edge_on_message> n=<payload bytes>". Both published numbers
 * come from clock reads, so a replay that does not feed the recorded values diverges. */
#include "edge.h"

EDGE_INBOX(4096)

static char out_subject[160];
static int32_t out_len;
static int64_t born;

EDGE_INIT {
    static const char head[] = "edge.", tail[] = ".evt.stamp";
    int32_t pos = sizeof head - 1;
    edge_memcpy(out_subject, head, sizeof head - 1);
    int32_t dev = edge_device_id(out_subject + pos, (int32_t)sizeof out_subject - pos - (int32_t)sizeof tail);
    if (dev < 0 || pos + dev + (int32_t)sizeof tail > (int32_t)sizeof out_subject) return 1;
    pos += dev;
    edge_memcpy(out_subject + pos, tail, sizeof tail - 1);
    out_len = pos + (int32_t)sizeof tail - 1;
    born = edge_clock_ms();
    char text[24];
    int32_t n = 0;
    edge_fmt_int(text, (int32_t)sizeof text, &n, born);
    return edge_kv_put_str("born", text, n) == 0 ? 0 : 1;
}

EDGE_ON_MESSAGE {
    (void)subject;
    (void)subject_len;
    (void)data;
    int64_t now = edge_clock_ms();
    char out[96];
    int32_t pos = 0;
    static const char a[] = "born=", b[] = " now=", c[] = " n=";
    edge_memcpy(out + pos, a, sizeof a - 1); pos += sizeof a - 1;
    edge_fmt_int(out, (int32_t)sizeof out, &pos, born);
    edge_memcpy(out + pos, b, sizeof b - 1); pos += sizeof b - 1;
    edge_fmt_int(out, (int32_t)sizeof out, &pos, now);
    edge_memcpy(out + pos, c, sizeof c - 1); pos += sizeof c - 1;
    edge_fmt_int(out, (int32_t)sizeof out, &pos, data_len);
    return edge_publish(out_subject, out_len, out, pos) == EDGE_OK ? 0 : 1;
}
