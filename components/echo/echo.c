/* echo: republishes every message it receives on edge.<device>.evt.echo. */
#include "edge.h"

EDGE_INBOX(65536 + 256)

static char out_subject[160];
static int32_t out_len;

EDGE_INIT {
    static const char head[] = "edge.", tail[] = ".evt.echo";
    int32_t pos = sizeof head - 1;
    edge_memcpy(out_subject, head, sizeof head - 1);
    int32_t dev = edge_device_id(out_subject + pos, (int32_t)sizeof out_subject - pos - (int32_t)sizeof tail);
    if (dev < 0 || pos + dev + (int32_t)sizeof tail > (int32_t)sizeof out_subject) return 1;
    pos += dev;
    edge_memcpy(out_subject + pos, tail, sizeof tail - 1);
    out_len = pos + (int32_t)sizeof tail - 1;
    return 0;
}

EDGE_ON_MESSAGE {
    (void)subject;
    (void)subject_len;
    return edge_publish(out_subject, out_len, data, data_len) == EDGE_OK ? 0 : 1;
}
