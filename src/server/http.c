/* The HTTP/1.1 server: connections from accept to close. Each connection
 * owns an input buffer (unparsed bytes), a header store (request target and
 * header names/values, copied out of the input so it can be compacted), a
 * body buffer and two output buffers (queued, and handed to uv_write). The
 * parser pauses after every request; the next is parsed only after the
 * response ended, so pipelined requests are answered in order. Writes and
 * deferred parsing happen in one prepare phase per loop iteration; memory is
 * freed only in libuv close callbacks. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "llorch/error.h"
#include "queue.h"
#include "sse.h"
#include "thread.h"
#include "util.h"

#define HTTP_MAX_HEADERS 64
#define HTTP_IN_CHUNK 4096            /* read buffer granularity */
#define HTTP_KEEP_BUF_BYTES 65536     /* larger buffers are freed after a request */
#define HTTP_LINGER_MS 2000           /* wait for the peer's FIN after our last byte */

enum conn_timer {
    CONN_TIMER_NONE,
    CONN_TIMER_HEADER, /* request being read (or none yet on a new connection) */
    CONN_TIMER_IDLE,   /* keep-alive, between requests */
    CONN_TIMER_REQ,    /* owned by the request's handler */
    CONN_TIMER_LINGER, /* after shutdown(SHUT_WR), waiting for EOF; or a cut
                        * stream's last bytes waiting for the peer to read */
};

enum hdr_last { HDR_NONE, HDR_FIELD, HDR_VALUE };

struct hdr_off {
    size_t noff, nlen, voff, vlen;
};

struct http_route {
    unsigned methods;
    char *path;
    size_t len;
    bool prefix;
    http_handler_fn fn;
    void *ctx;
    int tag;
};

struct http_server {
    uv_loop_t *loop;
    struct llorch_thread loop_thread; /* recorded by http_server_new: every function runs there */
    struct http_limits lim;
    llhttp_settings_t settings;
    uv_tcp_t listener;
    bool listener_open;
    int listen_uv_err; /* libuv's error of the last listen attempt, 0 if none */
    uv_prepare_t prepare;
    unsigned handles_open;
    struct llorch_queue conns;
    struct llorch_queue dirty;
    uint32_t n_conns;
    struct http_route *routes;
    size_t n_routes;
    bool draining;
    bool closing;
    uint16_t port;
    http_observe_fn observe;
    void *observe_ctx;
};

struct http_conn {
    struct http_server *srv;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    llhttp_t parser;
    struct llorch_queue node;
    struct llorch_queue dirty_node;
    bool on_dirty;
    bool need_process;
    int handles_open;

    struct http_buf in;
    size_t in_off;
    bool reading;

    /* the request being parsed */
    struct http_buf hbuf;
    size_t url_off, url_len;
    struct hdr_off hdr[HTTP_MAX_HEADERS];
    size_t n_hdrs;
    enum hdr_last last;
    uint64_t header_bytes;
    struct http_buf body;
    bool in_message;
    bool got_bytes;
    int reject_status;
    const char *reject_code;
    const char *reject_msg;

    /* the request being answered */
    struct http_header headers[HTTP_MAX_HEADERS];
    struct http_request req;
    bool busy;
    bool streaming;
    bool chunked;
    bool stream_keep;
    void (*abort_cb)(void *);
    void *abort_data;
    void (*timer_cb)(void *);
    void *timer_data;
    enum conn_timer timer_mode;

    struct http_buf out;
    struct http_buf inflight;
    bool writing;
    bool close_after;  /* close once the output is flushed */
    bool shutting;     /* shutdown(SHUT_WR) sent, lingering */
    bool closing;
    bool rejected;     /* over max_connections */
    bool peer_loopback;
    bool sndbuf_set;   /* SO_SNDBUF already bounded (stream_sndbuf_bytes) */
};

/* ---- buffers ---- */

LLORCH_API int http_buf_reserve(struct http_buf *b, size_t extra)
{
    size_t need;
    if (llorch_size_add_overflows(b->len, extra, &need))
        return LLORCH_EOVERFLOW;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (llorch_size_mul_overflows(cap, 2, &cap))
            return LLORCH_EOVERFLOW;
    }
    char *p = realloc(b->data, cap);
    if (!p)
        return LLORCH_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

LLORCH_API int http_buf_append(struct http_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    int r = http_buf_reserve(b, n);
    if (r)
        return r;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

LLORCH_API int http_buf_printf(struct http_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return LLORCH_EINVAL;
    int r = http_buf_reserve(b, (size_t)n + 1);
    if (r)
        return r;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

LLORCH_API void http_buf_free(struct http_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static void buf_shrink(struct http_buf *b)
{
    if (b->len == 0 && b->cap > HTTP_KEEP_BUF_BYTES)
        http_buf_free(b);
}

/* ---- status and error bodies ---- */

LLORCH_API const char *http_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

/* {"error":{"code":…,"message":…}} into out (replacing its contents). */
static int error_body(struct http_buf *out, const char *code, const char *message)
{
    /* Messages may quote the request, cut to fit (inside a multi-byte
     * character): invalid UTF-8 is replaced, as json_pack refuses it. */
    char clean[3 * 1024 + 1];
    size_t n_clean = sse_utf8_sanitize(message, strnlen(message, 1024), clean, sizeof(clean));
    json_t *o = json_pack("{s:{s:s,s:s%}}", "error", "code", code, "message", clean,
                          n_clean == SIZE_MAX ? (size_t)0 : n_clean);
    if (!o)
        return LLORCH_ENOMEM;
    size_t n = json_dumpb(o, NULL, 0, JSON_COMPACT);
    int r = LLORCH_ENOMEM;
    out->len = 0;
    if (n && http_buf_reserve(out, n) == 0) {
        out->len = json_dumpb(o, out->data, n, JSON_COMPACT);
        r = 0;
    }
    json_decref(o);
    return r;
}

/* ---- connection plumbing ---- */

static void conn_close(struct http_conn *c);
static void conn_process(struct http_conn *c);
static void conn_read_start(struct http_conn *c);

static void conn_mark_dirty(struct http_conn *c)
{
    if (c->closing || c->on_dirty)
        return;
    c->on_dirty = true;
    llorch_queue_insert_tail(&c->srv->dirty, &c->dirty_node);
}

static void conn_timer_cb(uv_timer_t *t);

static void conn_timer_set(struct http_conn *c, enum conn_timer mode, uint64_t ms)
{
    if (c->closing)
        return;
    c->timer_mode = mode;
    if (mode == CONN_TIMER_NONE || ms == 0) {
        c->timer_mode = CONN_TIMER_NONE;
        uv_timer_stop(&c->timer);
        return;
    }
    uv_timer_start(&c->timer, conn_timer_cb, ms, mode == CONN_TIMER_REQ ? ms : 0);
}

static void conn_handle_closed(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    if (--c->handles_open > 0)
        return;
    http_buf_free(&c->in);
    http_buf_free(&c->hbuf);
    http_buf_free(&c->body);
    http_buf_free(&c->out);
    http_buf_free(&c->inflight);
    free(c);
}

/* Closes now: aborts the request in progress; memory goes in the close
 * callbacks, so callers up the stack may still look at c->closing. */
static void conn_close(struct http_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->busy) {
        c->busy = false;
        void (*cb)(void *) = c->abort_cb;
        c->abort_cb = NULL;
        if (cb)
            cb(c->abort_data);
    }
    llorch_queue_remove(&c->node);
    if (c->on_dirty) {
        llorch_queue_remove(&c->dirty_node);
        c->on_dirty = false;
    }
    if (!c->rejected)
        c->srv->n_conns--;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

static void conn_shutdown_cb(uv_shutdown_t *req, int status)
{
    struct http_conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0)
        conn_close(c);
}

/* Everything is written and the connection is to end: send FIN and discard
 * input until the peer closes (or a short linger timeout), so the peer reads
 * our last response before any reset. */
static void conn_linger(struct http_conn *c)
{
    if (c->shutting || c->closing)
        return;
    c->shutting = true;
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, conn_shutdown_cb) != 0) {
        conn_close(c);
        return;
    }
    if (!c->reading) {
        c->reading = true;
        conn_read_start(c);
    }
    conn_timer_set(c, CONN_TIMER_LINGER, HTTP_LINGER_MS);
}

static void conn_write_cb(uv_write_t *req, int status);

static void conn_flush(struct http_conn *c)
{
    if (c->closing || c->writing || c->shutting)
        return;
    if (c->out.len == 0) {
        if (c->close_after)
            conn_linger(c);
        return;
    }
    struct http_buf t = c->inflight;
    c->inflight = c->out;
    c->out = t;
    c->out.len = 0;
    uv_buf_t b = uv_buf_init(c->inflight.data, (unsigned)c->inflight.len);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, conn_write_cb) != 0) {
        conn_close(c);
        return;
    }
    c->writing = true;
}

static void conn_write_cb(uv_write_t *req, int status)
{
    struct http_conn *c = req->data;
    c->writing = false;
    c->inflight.len = 0;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (!c->busy)
        buf_shrink(&c->inflight);
    conn_flush(c);
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    LLORCH_UNUSED(suggested);
    struct http_conn *c = h->data;
    if (c->in_off == c->in.len) {
        c->in_off = c->in.len = 0;
    } else if (c->in_off > 0 && c->in_off >= c->in.cap / 2) {
        memmove(c->in.data, c->in.data + c->in_off, c->in.len - c->in_off);
        c->in.len -= c->in_off;
        c->in_off = 0;
    }
    if (c->shutting || c->rejected || c->close_after) {
        /* discarding: reuse whatever room there is */
        c->in_off = c->in.len = 0;
    }
    if (http_buf_reserve(&c->in, HTTP_IN_CHUNK) != 0) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init(c->in.data + c->in.len, (unsigned)(c->in.cap - c->in.len));
}

static void conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    LLORCH_UNUSED(buf);
    struct http_conn *c = st->data;
    if (c->closing)
        return;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    if (c->shutting || c->rejected || c->close_after)
        return; /* discard */
    c->in.len += (size_t)nread;
    conn_process(c);
}

static void conn_read_start(struct http_conn *c)
{
    if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, conn_read_cb) != 0)
        conn_close(c);
}

static void conn_write_head(struct http_conn *c, int status, const char *content_type,
                            const char *extra, uint64_t content_length, bool has_length,
                            bool chunked, bool keep, bool http10)
{
    http_buf_printf(&c->out, "HTTP/1.1 %d %s\r\n", status, http_status_reason(status));
    if (content_type)
        http_buf_printf(&c->out, "Content-Type: %s\r\n", content_type);
    if (has_length)
        http_buf_printf(&c->out, "Content-Length: %llu\r\n", (unsigned long long)content_length);
    if (chunked)
        http_buf_printf(&c->out, "Transfer-Encoding: chunked\r\n");
    if (extra)
        http_buf_append(&c->out, extra, strlen(extra));
    if (!keep)
        http_buf_printf(&c->out, "Connection: close\r\n");
    else if (http10)
        http_buf_printf(&c->out, "Connection: keep-alive\r\n");
    http_buf_append(&c->out, "\r\n", 2);
}

/* An error answered outside any handler (parse errors, limits, timeouts):
 * always closes the connection afterwards. */
static void conn_fail(struct http_conn *c, int status, const char *code, const char *message)
{
    if (c->closing || c->close_after)
        return;
    if (c->srv->observe)
        c->srv->observe(c->srv->observe_ctx, NULL, status);
    struct http_buf body = {0};
    if (error_body(&body, code, message) == 0) {
        conn_write_head(c, status, "application/json", NULL, body.len, true, false, false, false);
        http_buf_append(&c->out, body.data, body.len);
    }
    http_buf_free(&body);
    c->close_after = true;
    conn_timer_set(c, CONN_TIMER_NONE, 0);
    conn_mark_dirty(c);
}

static void conn_timer_cb(uv_timer_t *t)
{
    struct http_conn *c = t->data;
    if (c->closing)
        return;
    switch (c->timer_mode) {
    case CONN_TIMER_HEADER:
        c->timer_mode = CONN_TIMER_NONE;
        if (c->got_bytes || c->in_message)
            conn_fail(c, 408, "REQUEST_TIMEOUT", "request not received within the header timeout");
        else
            conn_close(c);
        break;
    case CONN_TIMER_IDLE:
    case CONN_TIMER_LINGER:
        c->timer_mode = CONN_TIMER_NONE;
        conn_close(c);
        break;
    case CONN_TIMER_REQ:
        if (c->busy && c->timer_cb)
            c->timer_cb(c->timer_data);
        break;
    case CONN_TIMER_NONE:
        break;
    }
}

/* ---- llhttp callbacks ---- */

static int reject(struct http_conn *c, int status, const char *code, const char *msg)
{
    if (!c->reject_status) {
        c->reject_status = status;
        c->reject_code = code;
        c->reject_msg = msg;
    }
    return -1;
}

static int hbuf_add(struct http_conn *c, const char *at, size_t len, size_t overhead)
{
    c->header_bytes += len + overhead;
    if (c->header_bytes > c->srv->lim.max_header_bytes)
        return reject(c, 431, "HEADERS_TOO_LARGE", "request header section exceeds the limit");
    if (http_buf_append(&c->hbuf, at, len) != 0)
        return reject(c, 500, "INTERNAL", "out of memory");
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct http_conn *c = p->data;
    c->hbuf.len = 0;
    c->url_off = c->url_len = 0;
    c->n_hdrs = 0;
    c->last = HDR_NONE;
    c->header_bytes = 0;
    c->body.len = 0;
    c->in_message = true;
    conn_timer_set(c, CONN_TIMER_HEADER, c->srv->lim.header_timeout_ms);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->url_len == 0)
        c->url_off = c->hbuf.len;
    int r = hbuf_add(c, at, len, c->url_len == 0 ? 16 : 0); /* method, version, CRLF */
    c->url_len += len;
    return r;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->last != HDR_FIELD) {
        if (c->n_hdrs == HTTP_MAX_HEADERS)
            return reject(c, 431, "HEADERS_TOO_LARGE", "too many request headers");
        struct hdr_off *h = &c->hdr[c->n_hdrs++];
        h->noff = c->hbuf.len;
        h->nlen = h->voff = h->vlen = 0;
        c->last = HDR_FIELD;
        c->header_bytes += 4; /* ": " and CRLF */
    }
    c->hdr[c->n_hdrs - 1].nlen += len;
    return hbuf_add(c, at, len, 0);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->n_hdrs == 0)
        return 0;
    struct hdr_off *h = &c->hdr[c->n_hdrs - 1];
    if (c->last != HDR_VALUE) {
        h->voff = c->hbuf.len;
        h->vlen = 0;
        c->last = HDR_VALUE;
    }
    h->vlen += len;
    return hbuf_add(c, at, len, 0);
}

static const char *find_hdr(struct http_conn *c, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < c->n_hdrs; i++) {
        const struct hdr_off *h = &c->hdr[i];
        if (h->nlen == nl && strncasecmp(c->hbuf.data + h->noff, name, nl) == 0) {
            *len = h->vlen;
            return c->hbuf.data + h->voff;
        }
    }
    return NULL;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    const struct http_limits *lim = &c->srv->lim;
    bool has_body = (p->flags & F_CHUNKED) ||
                    ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > lim->max_body_bytes)
        return reject(c, 413, "PAYLOAD_TOO_LARGE", "request body exceeds the limit");
    size_t elen;
    const char *expect = find_hdr(c, "expect", &elen);
    if (expect && has_body) {
        if (elen == 12 && strncasecmp(expect, "100-continue", 12) == 0) {
            if (p->http_major == 1 && p->http_minor >= 1) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                http_buf_append(&c->out, cont, sizeof(cont) - 1);
                conn_mark_dirty(c);
            }
        } else {
            return reject(c, 417, "EXPECTATION_FAILED", "unsupported Expect header");
        }
    }
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0 &&
        http_buf_reserve(&c->body, (size_t)p->content_length) != 0)
        return reject(c, 500, "INTERNAL", "out of memory");
    /* the body gets its own header_timeout from here */
    conn_timer_set(c, CONN_TIMER_HEADER, lim->header_timeout_ms);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->body.len + len > c->srv->lim.max_body_bytes)
        return reject(c, 413, "PAYLOAD_TOO_LARGE", "request body exceeds the limit");
    if (http_buf_append(&c->body, at, len) != 0)
        return reject(c, 500, "INTERNAL", "out of memory");
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    c->in_message = false;
    return HPE_PAUSED;
}

/* ---- dispatch ---- */

static unsigned method_bit(uint8_t m)
{
    switch (m) {
    case HTTP_GET: return LLORCH_HTTP_GET;
    case HTTP_HEAD: return LLORCH_HTTP_HEAD;
    case HTTP_POST: return LLORCH_HTTP_POST;
    case HTTP_PUT: return LLORCH_HTTP_PUT;
    case HTTP_DELETE: return LLORCH_HTTP_DELETE;
    case HTTP_OPTIONS: return LLORCH_HTTP_OPTIONS;
    case HTTP_PATCH: return LLORCH_HTTP_PATCH;
    default: return LLORCH_HTTP_OTHER;
    }
}

static void allow_header(unsigned methods, char *out, size_t cap)
{
    static const struct { unsigned bit; const char *name; } names[] = {
        {LLORCH_HTTP_GET, "GET"},       {LLORCH_HTTP_HEAD, "HEAD"},
        {LLORCH_HTTP_POST, "POST"},     {LLORCH_HTTP_PUT, "PUT"},
        {LLORCH_HTTP_DELETE, "DELETE"}, {LLORCH_HTTP_OPTIONS, "OPTIONS"},
        {LLORCH_HTTP_PATCH, "PATCH"},
    };
    size_t n = (size_t)snprintf(out, cap, "Allow: ");
    bool first = true;
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(names) && n < cap; i++) {
        if (!(methods & names[i].bit))
            continue;
        n += (size_t)snprintf(out + n, cap - n, "%s%s", first ? "" : ", ", names[i].name);
        first = false;
    }
    if (n < cap)
        snprintf(out + n, cap - n, "\r\n");
}

static void conn_dispatch(struct http_conn *c)
{
    struct http_server *s = c->srv;
    struct http_request *r = &c->req;
    for (size_t i = 0; i < c->n_hdrs; i++) {
        c->headers[i].name = c->hbuf.data + c->hdr[i].noff;
        c->headers[i].name_len = c->hdr[i].nlen;
        c->headers[i].value = c->hbuf.data + c->hdr[i].voff;
        c->headers[i].value_len = c->hdr[i].vlen;
    }
    memset(r, 0, sizeof(*r));
    r->conn = c;
    r->method = method_bit(c->parser.method);
    r->method_name = llhttp_method_name((llhttp_method_t)c->parser.method);
    r->target = c->hbuf.data ? c->hbuf.data + c->url_off : "";
    r->target_len = c->url_len;
    r->path = r->target;
    const char *q = memchr(r->target, '?', r->target_len);
    r->path_len = q ? (size_t)(q - r->target) : r->target_len;
    r->query = q ? q + 1 : r->target + r->target_len;
    r->query_len = q ? r->target_len - r->path_len - 1 : 0;
    r->headers = c->headers;
    r->n_headers = c->n_hdrs;
    r->body = c->body.data ? c->body.data : "";
    r->body_len = c->body.len;
    r->http_major = c->parser.http_major;
    r->http_minor = c->parser.http_minor;
    r->keep_alive = llhttp_should_keep_alive(&c->parser) && !c->parser.upgrade;
    r->peer_is_loopback = c->peer_loopback;
    c->busy = true;
    c->streaming = false;
    c->abort_cb = NULL;
    c->timer_cb = NULL;
    conn_timer_set(c, CONN_TIMER_NONE, 0);

    unsigned allowed = 0;
    r->route_tag = -1;
    for (size_t i = 0; i < s->n_routes; i++) {
        const struct http_route *rt = &s->routes[i];
        bool match = rt->prefix ? (r->path_len >= rt->len && memcmp(r->path, rt->path, rt->len) == 0)
                                : (r->path_len == rt->len && memcmp(r->path, rt->path, rt->len) == 0);
        if (!match)
            continue;
        if (r->route_tag < 0)
            r->route_tag = rt->tag;
        if (rt->methods & r->method) {
            r->route_tag = rt->tag;
            const char *tail = r->path + rt->len;
            rt->fn(rt->ctx, r, tail, rt->prefix ? r->path_len - rt->len : 0);
            return;
        }
        allowed |= rt->methods;
    }
    if (allowed) {
        char allow[128];
        allow_header(allowed, allow, sizeof(allow));
        http_respond_error(r, 405, "METHOD_NOT_ALLOWED", "method not allowed for this path", allow);
    } else {
        http_respond_error(r, 404, "NOT_FOUND", "no such endpoint", NULL);
    }
}

static void conn_process(struct http_conn *c)
{
    while (!c->closing && !c->close_after && !c->busy && c->in_off < c->in.len) {
        const char *p = c->in.data + c->in_off;
        size_t n = c->in.len - c->in_off;
        c->got_bytes = true;
        llhttp_errno_t e = llhttp_execute(&c->parser, p, n);
        if (e == HPE_OK) {
            c->in_off = c->in.len;
            break;
        }
        if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            const char *pos = llhttp_get_error_pos(&c->parser);
            c->in_off = pos ? (size_t)(pos - c->in.data) : c->in.len;
            if (e == HPE_PAUSED_UPGRADE)
                llhttp_resume_after_upgrade(&c->parser);
            else
                llhttp_resume(&c->parser);
            conn_dispatch(c);
            continue;
        }
        if (c->reject_status) {
            conn_fail(c, c->reject_status, c->reject_code, c->reject_msg);
        } else {
            char msg[160];
            snprintf(msg, sizeof(msg), "malformed HTTP request: %s",
                     c->parser.reason ? c->parser.reason : llhttp_errno_name(e));
            conn_fail(c, 400, "BAD_REQUEST", msg);
        }
        return;
    }
    if (c->closing || c->close_after)
        return;
    if (c->in_off == c->in.len)
        c->in_off = c->in.len = 0;
    /* Backpressure on pipelined input queued behind a long response. */
    uint64_t backlog = c->in.len - c->in_off;
    if (c->busy && c->reading && backlog > (uint64_t)c->srv->lim.max_header_bytes + HTTP_IN_CHUNK) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* The response ended: move on to the next request or close. */
static void conn_response_done(struct http_conn *c, bool close_conn)
{
    c->busy = false;
    c->streaming = false;
    c->abort_cb = NULL;
    c->timer_cb = NULL;
    if (c->closing)
        return;
    /* While draining, a request already pipelined behind this response is
     * still answered (with Connection: close); otherwise close now. */
    if (close_conn || (c->srv->draining && c->in_off == c->in.len)) {
        c->close_after = true;
        conn_timer_set(c, CONN_TIMER_NONE, 0);
        conn_mark_dirty(c);
        return;
    }
    buf_shrink(&c->body);
    c->got_bytes = c->in_off < c->in.len;
    conn_timer_set(c, c->got_bytes ? CONN_TIMER_HEADER : CONN_TIMER_IDLE,
                   c->got_bytes ? c->srv->lim.header_timeout_ms : c->srv->lim.idle_timeout_ms);
    if (!c->reading) {
        c->reading = true;
        conn_read_start(c);
    }
    c->need_process = true;
    conn_mark_dirty(c);
}

/* ---- responses ---- */

LLORCH_API const char *http_request_header(const struct http_request *r, const char *name,
                                           size_t *len)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < r->n_headers; i++) {
        const struct http_header *h = &r->headers[i];
        if (h->name_len == nl && strncasecmp(h->name, name, nl) == 0) {
            if (len)
                *len = h->value_len;
            return h->value;
        }
    }
    return NULL;
}

LLORCH_API int http_respond(struct http_request *r, int status, const char *content_type,
                            const char *extra_headers, const void *body, size_t len)
{
    LLORCH_ASSERT_ON_LOOP(&r->conn->srv->loop_thread);
    struct http_conn *c = r->conn;
    if (c->closing || !c->busy || c->streaming)
        return LLORCH_EINVAL;
    if (c->srv->observe)
        c->srv->observe(c->srv->observe_ctx, r, status);
    bool keep = r->keep_alive && !c->srv->draining;
    bool http10 = r->http_major == 1 && r->http_minor == 0;
    conn_write_head(c, status, content_type, extra_headers, len, true, false, keep, http10);
    if (r->method != LLORCH_HTTP_HEAD)
        http_buf_append(&c->out, body, len);
    conn_mark_dirty(c);
    conn_response_done(c, !keep);
    return 0;
}

LLORCH_API int http_respond_error(struct http_request *r, int status, const char *code,
                                  const char *message, const char *extra_headers)
{
    struct http_buf body = {0};
    int rc = error_body(&body, code, message);
    if (rc == 0)
        rc = http_respond(r, status, "application/json", extra_headers, body.data, body.len);
    else
        rc = http_respond(r, 500, "application/json", NULL, "{}", 2);
    http_buf_free(&body);
    return rc;
}

LLORCH_API int http_stream_begin(struct http_request *r, int status, const char *content_type,
                                 const char *extra_headers)
{
    LLORCH_ASSERT_ON_LOOP(&r->conn->srv->loop_thread);
    struct http_conn *c = r->conn;
    if (c->closing || !c->busy || c->streaming)
        return LLORCH_EINVAL;
    if (c->srv->observe)
        c->srv->observe(c->srv->observe_ctx, r, status);
    if (c->srv->lim.stream_sndbuf_bytes && !c->sndbuf_set) {
        /* Best effort: on failure the kernel keeps autotuning, which only
         * makes the outbox bound looser. */
        int v = (int)LLORCH_MIN(c->srv->lim.stream_sndbuf_bytes, (uint32_t)INT32_MAX);
        c->sndbuf_set = uv_send_buffer_size((uv_handle_t *)&c->tcp, &v) == 0;
    }
    bool http11 = !(r->http_major == 1 && r->http_minor == 0);
    c->streaming = true;
    c->chunked = http11;
    c->stream_keep = http11 && r->keep_alive && !c->srv->draining;
    conn_write_head(c, status, content_type, extra_headers, 0, false, c->chunked, c->stream_keep,
                    false);
    conn_mark_dirty(c);
    return 0;
}

LLORCH_API int http_stream_write(struct http_request *r, const void *data, size_t len)
{
    LLORCH_ASSERT_ON_LOOP(&r->conn->srv->loop_thread);
    struct http_conn *c = r->conn;
    if (c->closing || !c->streaming)
        return LLORCH_EINVAL;
    if (len == 0)
        return 0;
    int rc = 0;
    if (c->chunked)
        rc = http_buf_printf(&c->out, "%zx\r\n", len);
    if (!rc)
        rc = http_buf_append(&c->out, data, len);
    if (!rc && c->chunked)
        rc = http_buf_append(&c->out, "\r\n", 2);
    conn_mark_dirty(c);
    return rc;
}

LLORCH_API void http_stream_end(struct http_request *r, bool close_conn)
{
    LLORCH_ASSERT_ON_LOOP(&r->conn->srv->loop_thread);
    struct http_conn *c = r->conn;
    if (c->closing || !c->streaming)
        return;
    if (c->chunked)
        http_buf_append(&c->out, "0\r\n\r\n", 5);
    conn_mark_dirty(c);
    conn_response_done(c, close_conn || !c->stream_keep);
}

LLORCH_API void http_stream_cut(struct http_request *r, uint32_t grace_ms)
{
    LLORCH_ASSERT_ON_LOOP(&r->conn->srv->loop_thread);
    struct http_conn *c = r->conn;
    if (c->closing || !c->streaming)
        return;
    if (c->chunked)
        http_buf_append(&c->out, "0\r\n\r\n", 5);
    conn_mark_dirty(c);
    conn_response_done(c, true);
    /* Once flushed, conn_linger replaces this timer with its own. */
    conn_timer_set(c, CONN_TIMER_LINGER, LLORCH_MAX(grace_ms, 1u));
}

LLORCH_API size_t http_request_pending_bytes(const struct http_request *r)
{
    const struct http_conn *c = r->conn;
    return c->out.len + uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
}

LLORCH_API void http_request_on_abort(struct http_request *r, void (*cb)(void *data), void *data)
{
    LLORCH_ASSERT_ON_LOOP(&r->conn->srv->loop_thread);
    r->conn->abort_cb = cb;
    r->conn->abort_data = data;
}

LLORCH_API int http_request_timer_start(struct http_request *r, uint64_t interval_ms,
                                        void (*cb)(void *data), void *data)
{
    LLORCH_ASSERT_ON_LOOP(&r->conn->srv->loop_thread);
    struct http_conn *c = r->conn;
    if (c->closing || !c->busy || interval_ms == 0)
        return LLORCH_EINVAL;
    c->timer_cb = cb;
    c->timer_data = data;
    conn_timer_set(c, CONN_TIMER_REQ, interval_ms);
    return 0;
}

LLORCH_API void http_request_timer_stop(struct http_request *r)
{
    struct http_conn *c = r->conn;
    if (c->timer_mode == CONN_TIMER_REQ)
        conn_timer_set(c, CONN_TIMER_NONE, 0);
    c->timer_cb = NULL;
}

/* ---- server ---- */

static bool peer_loopback(uv_tcp_t *t)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &len) != 0)
        return false;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_LOOPBACK(&a->sin6_addr))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && a->sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

static void on_connection(uv_stream_t *ls, int status)
{
    struct http_server *s = ls->data;
    if (status < 0 || s->closing)
        return;
    struct http_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        /* accept and drop, or the listener keeps firing */
        uv_tcp_t *t = malloc(sizeof(*t));
        if (t && uv_tcp_init(s->loop, t) == 0) {
            uv_accept(ls, (uv_stream_t *)t);
            uv_close((uv_handle_t *)t, (uv_close_cb)free);
        } else {
            free(t);
        }
        return;
    }
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    llorch_queue_init(&c->dirty_node);
    llorch_queue_insert_tail(&s->conns, &c->node);
    c->rejected = s->n_conns >= s->lim.max_connections;
    if (!c->rejected)
        s->n_conns++;
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->peer_loopback = peer_loopback(&c->tcp);
    if (c->rejected) {
        c->rejected = false; /* conn_fail writes regardless; keep counting straight */
        conn_fail(c, 503, "TOO_MANY_CONNECTIONS", "connection limit reached");
        c->rejected = true;
        return;
    }
    c->reading = true;
    conn_read_start(c);
    conn_timer_set(c, CONN_TIMER_HEADER, s->lim.header_timeout_ms);
}

/* A connection with no socket: the bytes are appended to its input in
 * pieces, as reads would, and parsed, limited and routed as from a socket.
 * Nothing is flushed (the loop is not run); the queued output is handed back.
 * The tcp handle is initialised but never opened, so closing it is safe. */
LLORCH_API int http_server_feed(struct http_server *s, const void *data, size_t len,
                                size_t piece, struct http_buf *out)
{
    if (s->closing)
        return LLORCH_EINVAL;
    struct http_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return LLORCH_ENOMEM;
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    llorch_queue_init(&c->dirty_node);
    llorch_queue_insert_tail(&s->conns, &c->node);
    s->n_conns++;
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    c->reading = true;
    if (piece == 0)
        piece = len ? len : 1;
    int rc = 0;
    for (size_t off = 0; off < len && !c->closing && !c->close_after;) {
        size_t n = LLORCH_MIN(piece, len - off);
        /* as conn_alloc_cb: drop what was parsed before reading more */
        if (c->in_off == c->in.len)
            c->in_off = c->in.len = 0;
        rc = http_buf_append(&c->in, (const char *)data + off, n);
        if (rc)
            break;
        off += n;
        if (!c->busy)
            conn_process(c);
    }
    if (!rc)
        rc = http_buf_append(out, c->out.data, c->out.len);
    conn_close(c);
    return rc;
}

static void prepare_cb(uv_prepare_t *p)
{
    struct http_server *s = p->data;
    while (!llorch_queue_empty(&s->dirty)) {
        struct llorch_queue *q = llorch_queue_head(&s->dirty);
        struct http_conn *c = llorch_container_of(q, struct http_conn, dirty_node);
        llorch_queue_remove(q);
        c->on_dirty = false;
        if (c->need_process) {
            c->need_process = false;
            conn_process(c);
        }
        conn_flush(c);
    }
}

static void server_handle_closed(uv_handle_t *h)
{
    struct http_server *s = h->data;
    if (--s->handles_open > 0)
        return;
    for (size_t i = 0; i < s->n_routes; i++)
        free(s->routes[i].path);
    free(s->routes);
    free(s);
}

LLORCH_API int http_server_new(struct http_server **out, uv_loop_t *loop,
                               const struct http_limits *lim)
{
    *out = NULL;
    struct http_server *s = calloc(1, sizeof(*s));
    if (!s)
        return LLORCH_ENOMEM;
    s->loop = loop;
    llorch_thread_record(&s->loop_thread);
    s->lim = *lim;
    if (s->lim.max_connections == 0)
        s->lim.max_connections = 1;
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_value = on_header_value;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;
    llorch_queue_init(&s->conns);
    llorch_queue_init(&s->dirty);
    uv_prepare_init(loop, &s->prepare);
    s->prepare.data = s;
    s->handles_open = 1;
    uv_prepare_start(&s->prepare, prepare_cb);
    uv_unref((uv_handle_t *)&s->prepare);
    *out = s;
    return 0;
}

LLORCH_API int http_server_route(struct http_server *s, unsigned methods, const char *path,
                                 bool prefix, http_handler_fn fn, void *ctx)
{
    return http_server_route_tagged(s, methods, path, prefix, fn, ctx, -1);
}

LLORCH_API int http_server_route_tagged(struct http_server *s, unsigned methods, const char *path,
                                        bool prefix, http_handler_fn fn, void *ctx, int tag)
{
    LLORCH_ASSERT_ON_LOOP(&s->loop_thread);
    struct http_route *r = realloc(s->routes, (s->n_routes + 1) * sizeof(*r));
    if (!r)
        return LLORCH_ENOMEM;
    s->routes = r;
    char *p = strdup(path);
    if (!p)
        return LLORCH_ENOMEM;
    s->routes[s->n_routes++] = (struct http_route){
        .methods = methods, .path = p, .len = strlen(p), .prefix = prefix, .fn = fn, .ctx = ctx,
        .tag = tag};
    return 0;
}

/* A failed bind, listen or open: kept for http_server_listen_error. */
static int listen_failed(struct http_server *s, int uv_err)
{
    s->listen_uv_err = uv_err;
    return llorch_err_from_errno(-uv_err);
}

static int server_start(struct http_server *s)
{
    int r = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection);
    if (r)
        return listen_failed(s, r);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET)
            s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            s->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return 0;
}

static int server_init_listener(struct http_server *s)
{
    if (s->listener_open || s->closing)
        return LLORCH_EINVAL;
    s->listen_uv_err = 0;
    int r = uv_tcp_init(s->loop, &s->listener);
    if (r)
        return LLORCH_EUV;
    s->listener.data = s;
    s->listener_open = true;
    s->handles_open++;
    return 0;
}

static void listener_close(struct http_server *s)
{
    if (!s->listener_open)
        return;
    s->listener_open = false;
    uv_close((uv_handle_t *)&s->listener, server_handle_closed);
}

LLORCH_API int http_server_listen(struct http_server *s, const char *host, uint16_t port)
{
    LLORCH_ASSERT_ON_LOOP(&s->loop_thread);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
        return LLORCH_EINVAL;
    int r = server_init_listener(s);
    if (r)
        return r;
    r = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    r = r ? listen_failed(s, r) : server_start(s);
    if (r)
        listener_close(s);
    return r;
}

LLORCH_API const char *http_server_listen_error(const struct http_server *s)
{
    return s->listen_uv_err ? uv_strerror(s->listen_uv_err) : NULL;
}

LLORCH_API int http_server_listen_fd(struct http_server *s, int fd)
{
    LLORCH_ASSERT_ON_LOOP(&s->loop_thread);
    int r = server_init_listener(s);
    if (r)
        return r;
    r = uv_tcp_open(&s->listener, fd);
    r = r ? listen_failed(s, r) : server_start(s);
    if (r)
        listener_close(s);
    return r;
}

LLORCH_API void http_server_observe(struct http_server *s, http_observe_fn fn, void *ctx)
{
    s->observe = fn;
    s->observe_ctx = ctx;
}

LLORCH_API uint16_t http_server_port(const struct http_server *s)
{
    return s->port;
}

LLORCH_API uint32_t http_server_conn_count(const struct http_server *s)
{
    return s->n_conns;
}

LLORCH_API bool http_server_draining(const struct http_server *s)
{
    return s->draining;
}

LLORCH_API void http_server_drain(struct http_server *s)
{
    LLORCH_ASSERT_ON_LOOP(&s->loop_thread);
    if (s->draining)
        return;
    s->draining = true;
    listener_close(s);
    struct llorch_queue *q, *tmp;
    llorch_queue_foreach_safe(q, tmp, &s->conns) {
        struct http_conn *c = llorch_container_of(q, struct http_conn, node);
        if (!c->busy && !c->in_message && !c->close_after && c->out.len == 0 && !c->writing)
            conn_close(c);
    }
}

LLORCH_API void http_server_close(struct http_server *s)
{
    if (!s || s->closing)
        return;
    s->closing = true;
    s->draining = true;
    listener_close(s);
    while (!llorch_queue_empty(&s->conns)) {
        struct http_conn *c = llorch_container_of(llorch_queue_head(&s->conns), struct http_conn, node);
        conn_close(c);
    }
    uv_prepare_stop(&s->prepare);
    uv_close((uv_handle_t *)&s->prepare, server_handle_closed);
}
