/* Test component for the infer import.
 *
 * edge_on_message: the payload is a command, little-endian:
 *   i32 repeat, i32 in_len (-1 = the input's real length), i32 out_cap, i32 model_len,
 *   model name, input bytes.
 * It calls edge_infer `repeat` times and publishes on "t.out": i32 result of the last call, then
 * the first out_cap bytes of the output buffer (zeroed before each call).
 *
 * edge_init: edge_infer_sizes("fc") and kv "sizes" = i32 result, input bytes, output bytes.
 *
 * edge_tick: model "fc" ([1,4] float32 -> [1,3] float32) per entity, on columns 0..3 (read),
 * results into columns 4..6 (written). Returns the first negative infer result, if any.
 */
#include "edge.h"

#define MAX_OUT 4096
#define MAX_ROWS 1024

EDGE_INBOX(8192)

static uint8_t out_buf[4 + MAX_OUT];
static double cols[7][MAX_ROWS];

static int32_t rd32(const uint8_t *p) {
    return (int32_t)((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
}

EDGE_INIT {
    static uint8_t work[256];
    int32_t sizes[3] = {0, -1, -1};
    sizes[0] = edge_infer_sizes("fc", work, (int32_t)sizeof work, &sizes[1], &sizes[2]);
    edge_kv_put_str("sizes", sizes, (int32_t)sizeof sizes);
    return 0;
}

EDGE_ON_MESSAGE {
    (void)subject; (void)subject_len;
    if (data_len < 16) return 1;
    int32_t repeat = rd32(data), in_len = rd32(data + 4), out_cap = rd32(data + 8), mlen = rd32(data + 12);
    if (mlen < 0 || 16 + mlen > data_len || out_cap < 0 || out_cap > MAX_OUT) return 2;
    const char *model = (const char *)(data + 16);
    const uint8_t *in = data + 16 + mlen;
    if (in_len < 0) in_len = data_len - 16 - mlen;
    int32_t rc = 0;
    for (int32_t i = 0; i < repeat; i++) {
        for (int32_t k = 0; k < out_cap; k++) ((volatile uint8_t *)out_buf)[4 + k] = 0;
        rc = edge_infer(model, mlen, in, in_len, out_buf + 4, out_cap);
    }
    out_buf[0] = (uint8_t)rc; out_buf[1] = (uint8_t)(rc >> 8);
    out_buf[2] = (uint8_t)(rc >> 16); out_buf[3] = (uint8_t)(rc >> 24);
    return edge_publish_str("t.out", out_buf, 4 + out_cap) == 0 ? 0 : 3;
}

EDGE_TICK {
    (void)dt;
    if (n > MAX_ROWS) return 10;
    for (int32_t c = 0; c < 4; c++)
        if (edge_read_column(c, cols[c], n) < 0) return 11;
    for (int32_t i = 0; i < n; i++) {
        float x[4], y[3];
        for (int32_t c = 0; c < 4; c++) x[c] = (float)cols[c][i];
        int32_t rc = edge_infer_str("fc", x, (int32_t)sizeof x, y, (int32_t)sizeof y);
        if (rc != (int32_t)sizeof y) return rc < 0 ? -rc : 12;
        for (int32_t c = 0; c < 3; c++) cols[4 + c][i] = (double)y[c];
    }
    for (int32_t c = 4; c < 7; c++)
        if (edge_write_column(c, cols[c], n) < 0) return 13;
    return 0;
}
