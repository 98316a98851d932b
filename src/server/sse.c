/* SSE framing and the per-stream outbox. A frame is built in the stream's
 * scratch buffer and handed to the HTTP layer as one chunk; the HTTP layer
 * queues it with everything else written during this loop iteration and
 * flushes once per iteration. */
#include "sse.h"

#include <string.h>

#include "llorch/error.h"
#include "util.h"

LLORCH_API int sse_frame_append(struct http_buf *b, enum sse_mode mode, const char *type,
                                const char *json, size_t len)
{
    if (memchr(json, '\n', len) || memchr(json, '\r', len))
        return LLORCH_EINVAL;
    int r = 0;
    if (mode == SSE_MODE_EVENT) {
        r = http_buf_append(b, "event: ", 7);
        if (!r)
            r = http_buf_append(b, type, strlen(type));
        if (!r)
            r = http_buf_append(b, "\n", 1);
    }
    if (!r)
        r = http_buf_append(b, "data: ", 6);
    if (!r)
        r = http_buf_append(b, json, len);
    if (!r)
        r = http_buf_append(b, "\n\n", 2);
    return r;
}

LLORCH_API int sse_ping_append(struct http_buf *b)
{
    return http_buf_append(b, ": ping\n\n", 8);
}

LLORCH_API int sse_done_append(struct http_buf *b)
{
    return http_buf_append(b, "data: [DONE]\n\n", 14);
}

/* Length of the longest well-formed prefix of one UTF-8 character at s
 * (Unicode Table 3-7), and whether it is complete. */
static size_t utf8_char(const unsigned char *s, size_t len, bool *complete)
{
    unsigned char c = s[0];
    *complete = false;
    if (c < 0x80) {
        *complete = true;
        return 1;
    }
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 1; /* continuation byte, C0, C1, F5..FF */
    }
    size_t i = 1;
    for (; i < need && i < len; i++) {
        unsigned char b = s[i];
        if (b < lo || b > hi)
            break;
        lo = 0x80;
        hi = 0xBF;
    }
    *complete = i == need;
    return i;
}

LLORCH_API bool sse_utf8_valid(const char *s, size_t len, size_t *bad_offset)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        bool complete;
        size_t n = utf8_char(u + i, len - i, &complete);
        if (!complete) {
            if (bad_offset)
                *bad_offset = i;
            return false;
        }
        i += n;
    }
    return true;
}

LLORCH_API size_t sse_utf8_sanitize(const char *s, size_t len, char *out, size_t cap)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        bool complete;
        size_t n = utf8_char(u + i, len - i, &complete);
        if (complete) {
            if (cap - o < n)
                return SIZE_MAX;
            memcpy(out + o, s + i, n);
            o += n;
        } else {
            if (cap - o < 3)
                return SIZE_MAX;
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
        }
        i += n;
    }
    return o;
}

LLORCH_API int sse_stream_begin(struct sse_stream *s, struct http_request *req, enum sse_mode mode,
                                uint64_t outbox_bytes)
{
    s->req = req;
    s->mode = mode;
    s->outbox_bytes = outbox_bytes;
    s->frame.len = 0;
    return http_stream_begin(req, 200, SSE_CONTENT_TYPE, SSE_HEADERS);
}

static int stream_put(struct sse_stream *s, bool force)
{
    if (!s->req)
        return LLORCH_EINVAL;
    size_t pending = http_request_pending_bytes(s->req);
    if (!force && pending + s->frame.len > s->outbox_bytes) {
        s->frame.len = 0;
        return LLORCH_EFULL;
    }
    int r = http_stream_write(s->req, s->frame.data, s->frame.len);
    s->frame.len = 0;
    return r;
}

LLORCH_API int sse_stream_send(struct sse_stream *s, const char *type, const char *json,
                               size_t len, bool force)
{
    s->frame.len = 0;
    int r = sse_frame_append(&s->frame, s->mode, type, json, len);
    if (r) {
        s->frame.len = 0;
        return r;
    }
    return stream_put(s, force);
}

LLORCH_API int sse_stream_send_frame(struct sse_stream *s, const char *frame, size_t len,
                                     bool force)
{
    s->frame.len = 0;
    int r = http_buf_append(&s->frame, frame, len);
    if (r) {
        s->frame.len = 0;
        return r;
    }
    return stream_put(s, force);
}

LLORCH_API int sse_stream_ping(struct sse_stream *s)
{
    s->frame.len = 0;
    int r = sse_ping_append(&s->frame);
    return r ? r : stream_put(s, false);
}

static void stream_put_done(struct sse_stream *s)
{
    if (s->mode == SSE_MODE_DATA) {
        s->frame.len = 0;
        if (sse_done_append(&s->frame) == 0)
            stream_put(s, true);
    }
}

LLORCH_API void sse_stream_end(struct sse_stream *s, bool close_conn)
{
    if (!s->req)
        return;
    stream_put_done(s);
    http_stream_end(s->req, close_conn);
    s->req = NULL;
}

LLORCH_API void sse_stream_cut(struct sse_stream *s)
{
    if (!s->req)
        return;
    stream_put_done(s);
    http_stream_cut(s->req, SSE_CUT_GRACE_MS);
    s->req = NULL;
}

LLORCH_API void sse_stream_free(struct sse_stream *s)
{
    http_buf_free(&s->frame);
    s->req = NULL;
}
