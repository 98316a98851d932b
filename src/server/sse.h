/* Server-Sent Events over a streamed HTTP response: frame formats (the seed
 * form with `event:` lines and the data-only form ending in `data: [DONE]`),
 * keep-alive comments, the per-stream outbox bound that cuts slow readers,
 * and UTF-8 sanitising so that invalid bytes never reach the wire.
 * Loop thread only. */
#ifndef LLORCH_SSE_H
#define LLORCH_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"

enum sse_mode {
    SSE_MODE_EVENT, /* "event: <type>\ndata: <json>\n\n" (POST /execute) */
    SSE_MODE_DATA,  /* "data: <json>\n\n", then "data: [DONE]\n\n" (POST /v1/inference) */
};

/* The response headers of every stream. */
#define SSE_HEADERS "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
#define SSE_CONTENT_TYPE "text/event-stream"

/* Appends one frame to b. json is one line (compact JSON has no newline);
 * a newline in it would end the data field early, so LLORCH_EINVAL. */
int sse_frame_append(struct http_buf *b, enum sse_mode mode, const char *type, const char *json,
                     size_t len);
int sse_ping_append(struct http_buf *b); /* ": ping\n\n" */
int sse_done_append(struct http_buf *b); /* "data: [DONE]\n\n" */

/* True when s is well-formed UTF-8; else *bad_offset is the first bad byte. */
bool sse_utf8_valid(const char *s, size_t len, size_t *bad_offset);

/* Copies s to out, replacing every invalid UTF-8 sequence (overlong,
 * surrogate, out of range, truncated) with U+FFFD. Needs cap >= 3 * len in
 * the worst case; returns the bytes written, or SIZE_MAX if cap is short. */
size_t sse_utf8_sanitize(const char *s, size_t len, char *out, size_t cap);

struct sse_stream {
    struct http_request *req;  /* NULL once ended */
    enum sse_mode mode;
    uint64_t outbox_bytes;     /* bound on bytes queued and unsent */
    struct http_buf frame;     /* scratch, reused for every frame */
};

/* Sends the 200 response head with the SSE headers. */
int sse_stream_begin(struct sse_stream *s, struct http_request *req, enum sse_mode mode,
                     uint64_t outbox_bytes);
/* Queues one frame. Returns LLORCH_EFULL (and queues nothing) when the
 * outbox would exceed its bound, unless force (terminal frames). */
int sse_stream_send(struct sse_stream *s, const char *type, const char *json, size_t len,
                    bool force);
/* Queues frames already formatted (e.g. with an `id:` line, or replayed),
 * under the same bound as sse_stream_send. */
int sse_stream_send_frame(struct sse_stream *s, const char *frame, size_t len, bool force);
int sse_stream_ping(struct sse_stream *s);
/* After the terminal frame: "data: [DONE]" in data mode, then ends the
 * response (the connection stays usable unless close_conn). */
void sse_stream_end(struct sse_stream *s, bool close_conn);
/* A slow reader's end, after its forced error frame: "data: [DONE]" in
 * data mode, then the response ends and the connection closes once flushed,
 * or after SSE_CUT_GRACE_MS if the reader does not take the bytes (it then
 * sees the stream stop short of the error frame: a closed connection). */
#define SSE_CUT_GRACE_MS 2000u
void sse_stream_cut(struct sse_stream *s);
/* Frees the scratch buffer (the stream must have ended or been aborted). */
void sse_stream_free(struct sse_stream *s);

#endif
