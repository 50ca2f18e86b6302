/* follow_agent: a minimal wasm agent (docs/agents.md).
 *
 * For each detections event on edge.<device>.evt.<entity>.detections
 *   {"items": [{"label": ..., "score": s, "box": [x0, y0, x1, y1]}, ...]}   (best item first)
 * it steers <entity> toward the first box: velocity proportional to the box centre's offset from
 * the frame centre (image right = +x, image up = +y, dead band 0.05, at most 3 m/s per axis), and
 * publishes
 *   edge.<device>.cmd.<entity>.velocity   {"x": vx, "y": vy, "z": 0}
 *   edge.<device>.evt.<entity>.decision   {"agent": "follow_agent", "entity": ..., "decision": "follow",
 *                                          "reason": "...", "inputs": {"box": [...]}}
 * A set without a box is ignored (holding on timeout needs a clock tick: see FollowAgent). */
#include "edge.h"

EDGE_INBOX(65536 + 512)

#define GAIN 4.0
#define MAX_SPEED 3.0
#define DEADBAND 0.05

static char device[64];
static int32_t device_len;

EDGE_INIT {
    device_len = edge_device_id(device, (int32_t)sizeof device);
    return (device_len <= 0 || device_len > (int32_t)sizeof device) ? 1 : 0;
}

/* Position just after `needle` in s[0..n), or -1. */
static int32_t find(const char *s, int32_t n, const char *needle) {
    int32_t m = (int32_t)edge_strlen(needle);
    for (int32_t i = 0; i + m <= n; i++)
        if (edge_memeq(s + i, needle, (size_t)m)) return i + m;
    return -1;
}

/* Parse a JSON number without exponent at s[*pos]; skips leading blanks and commas. */
static int parse_number(const char *s, int32_t n, int32_t *pos, double *out) {
    int32_t i = *pos;
    while (i < n && (s[i] == ' ' || s[i] == ',' || s[i] == '\n' || s[i] == '\t')) i++;
    int neg = 0;
    if (i < n && s[i] == '-') { neg = 1; i++; }
    if (i >= n || s[i] < '0' || s[i] > '9') return 0;
    double v = 0.0;
    while (i < n && s[i] >= '0' && s[i] <= '9') v = v * 10.0 + (s[i++] - '0');
    if (i < n && s[i] == '.') {
        double scale = 0.1;
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++, scale *= 0.1) v += (s[i] - '0') * scale;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) return 0; /* not needed for boxes in 0..1 */
    *out = neg ? -v : v;
    *pos = i;
    return 1;
}

static void put(char *buf, int32_t cap, int32_t *pos, const char *s, int32_t len) {
    if (*pos + len > cap) len = cap - *pos;
    if (len > 0) { edge_memcpy(buf + *pos, s, (size_t)len); *pos += len; }
}

static void put_str(char *buf, int32_t cap, int32_t *pos, const char *s) {
    put(buf, cap, pos, s, (int32_t)edge_strlen(s));
}

/* A fixed-point number with 3 decimals. */
static void put_fixed(char *buf, int32_t cap, int32_t *pos, double v) {
    int64_t milli = (int64_t)(v * 1000.0 + (v < 0 ? -0.5 : 0.5));
    if (milli < 0) { put(buf, cap, pos, "-", 1); milli = -milli; }
    edge_fmt_int(buf, cap, pos, milli / 1000);
    put(buf, cap, pos, ".", 1);
    int64_t frac = milli % 1000;
    char digits[3] = {(char)('0' + frac / 100), (char)('0' + (frac / 10) % 10), (char)('0' + frac % 10)};
    put(buf, cap, pos, digits, 3);
}

static double steer(double err) {
    if (err < DEADBAND && err > -DEADBAND) return 0.0;
    double v = GAIN * err;
    return v > MAX_SPEED ? MAX_SPEED : (v < -MAX_SPEED ? -MAX_SPEED : v);
}

EDGE_ON_MESSAGE {
    /* subject: edge.<device>.evt.<entity>.detections */
    const char *subj = (const char *)subject;
    int32_t dots[5], nd = 0;
    for (int32_t i = 0; i < subject_len && nd < 5; i++)
        if (subj[i] == '.') dots[nd++] = i;
    if (nd != 4) return 1;
    const char *entity = subj + dots[2] + 1;
    int32_t entity_len = dots[3] - dots[2] - 1;

    const char *msg = (const char *)data;
    int32_t at = find(msg, data_len, "\"box\"");
    if (at < 0) return 0; /* no target in this set */
    int32_t open = find(msg + at, data_len - at, "[");
    if (open < 0) return 1;
    at += open;
    double box[4];
    for (int k = 0; k < 4; k++)
        if (!parse_number(msg, data_len, &at, &box[k])) return 2;
    double vx = steer((box[0] + box[2]) / 2.0 - 0.5);
    double vy = steer(0.5 - (box[1] + box[3]) / 2.0);

    char out_subject[256], body[512];
    int32_t sp = 0, bp = 0;
    put_str(out_subject, sizeof out_subject, &sp, "edge.");
    put(out_subject, sizeof out_subject, &sp, device, device_len);
    put_str(out_subject, sizeof out_subject, &sp, ".cmd.");
    put(out_subject, sizeof out_subject, &sp, entity, entity_len);
    put_str(out_subject, sizeof out_subject, &sp, ".velocity");
    put_str(body, sizeof body, &bp, "{\"x\":");
    put_fixed(body, sizeof body, &bp, vx);
    put_str(body, sizeof body, &bp, ",\"y\":");
    put_fixed(body, sizeof body, &bp, vy);
    put_str(body, sizeof body, &bp, ",\"z\":0}");
    if (edge_publish(out_subject, sp, body, bp) != EDGE_OK) return 3;

    sp = 0;
    bp = 0;
    put_str(out_subject, sizeof out_subject, &sp, "edge.");
    put(out_subject, sizeof out_subject, &sp, device, device_len);
    put_str(out_subject, sizeof out_subject, &sp, ".evt.");
    put(out_subject, sizeof out_subject, &sp, entity, entity_len);
    put_str(out_subject, sizeof out_subject, &sp, ".decision");
    put_str(body, sizeof body, &bp, "{\"t\":");
    edge_fmt_int(body, sizeof body, &bp, edge_clock_ms() / 1000);
    put_str(body, sizeof body, &bp, ",\"agent\":\"follow_agent\",\"kind\":\"wasm\",\"entity\":\"");
    put(body, sizeof body, &bp, entity, entity_len);
    put_str(body, sizeof body, &bp, "\",\"decision\":\"follow\",\"reason\":\"steer toward the first box\",");
    put_str(body, sizeof body, &bp, "\"inputs\":{\"box\":[");
    for (int k = 0; k < 4; k++) {
        if (k) put(body, sizeof body, &bp, ",", 1);
        put_fixed(body, sizeof body, &bp, box[k]);
    }
    put_str(body, sizeof body, &bp, "]},\"command\":{\"verb\":\"velocity\"}}");
    return edge_publish(out_subject, sp, body, bp) == EDGE_OK ? 0 : 4;
}
