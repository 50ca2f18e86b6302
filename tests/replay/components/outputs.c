/* outputs (test component): every message of n payload bytes is answered with PUBS publishes of
 * "ok n=<n> i=<i>" on edge.<device>.evt.out.ok and one "secret n=<n>" on
 * edge.<device>.evt.out.secret, and three KV puts of the key "count" ("<n>-1", "<n>-2", "<n>-3")
 * in one call. A device's policy may deny the secret publishes, its publish rate limit refuse
 * some of the others, and its effects lane coalesce the three puts of one key: the component's
 * own outputs stay the same. CHANGE_FROM (default: never) makes a message of at least that many
 * bytes publish "changed" instead of "secret": a changed component, for the what-if test. */
#include "edge.h"

#ifndef PUBS
#define PUBS 1
#endif
#ifndef CHANGE_FROM
#define CHANGE_FROM 1000000
#endif

EDGE_INBOX(4096)

static char ok_subject[160], secret_subject[160];
static int32_t ok_len, secret_len;

static int32_t subject(char *out, const char *tail, int32_t tail_len) {
    static const char head[] = "edge.";
    int32_t pos = sizeof head - 1;
    edge_memcpy(out, head, sizeof head - 1);
    int32_t dev = edge_device_id(out + pos, 160 - pos - tail_len);
    if (dev < 0) return -1;
    pos += dev;
    edge_memcpy(out + pos, tail, tail_len);
    return pos + tail_len;
}

EDGE_INIT {
    static const char ok[] = ".evt.out.ok", secret[] = ".evt.out.secret";
    ok_len = subject(ok_subject, ok, (int32_t)sizeof ok - 1);
    secret_len = subject(secret_subject, secret, (int32_t)sizeof secret - 1);
    return ok_len > 0 && secret_len > 0 ? 0 : 1;
}

EDGE_ON_MESSAGE {
    (void)subject;
    (void)subject_len;
    (void)data;
    char out[64];
    int32_t pos;
    for (int32_t i = 0; i < PUBS; i++) {
        pos = 0;
        static const char a[] = "ok n=", b[] = " i=";
        edge_memcpy(out, a, sizeof a - 1); pos = sizeof a - 1;
        edge_fmt_int(out, (int32_t)sizeof out, &pos, data_len);
        edge_memcpy(out + pos, b, sizeof b - 1); pos += sizeof b - 1;
        edge_fmt_int(out, (int32_t)sizeof out, &pos, i);
        if (edge_publish(ok_subject, ok_len, out, pos) != EDGE_OK) return 1;
    }
    static const char s[] = "secret n=", c[] = "changed n=";
    if (data_len >= CHANGE_FROM) {
        edge_memcpy(out, c, sizeof c - 1); pos = sizeof c - 1;
    } else {
        edge_memcpy(out, s, sizeof s - 1); pos = sizeof s - 1;
    }
    edge_fmt_int(out, (int32_t)sizeof out, &pos, data_len);
    if (edge_publish(secret_subject, secret_len, out, pos) != EDGE_OK) return 1;
    for (int32_t k = 1; k <= 3; k++) {
        pos = 0;
        edge_fmt_int(out, (int32_t)sizeof out, &pos, data_len);
        out[pos++] = '-';
        edge_fmt_int(out, (int32_t)sizeof out, &pos, k);
        if (edge_kv_put_str("count", out, pos) != 0) return 1;
    }
    return 0;
}
