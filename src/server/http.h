/* HTTP/1.1 server on libuv + llhttp: listening (host/port or an inherited
 * fd), connections with keep-alive and in-order pipelining, request limits
 * and timeouts, a route table (404 and 405 + Allow answered here), and
 * responses either whole or streamed with chunked transfer encoding.
 * Loop thread only. One request per connection is handled at a time: the
 * parser pauses after each request and resumes once its response has ended,
 * so pipelined requests are answered in order. */
#ifndef LLORCH_HTTP_H
#define LLORCH_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* A growable byte buffer (reused per connection). */
struct http_buf {
    char *data;
    size_t len;
    size_t cap;
};

int http_buf_reserve(struct http_buf *b, size_t extra); /* cap >= len + extra */
int http_buf_append(struct http_buf *b, const void *p, size_t n);
int http_buf_printf(struct http_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void http_buf_free(struct http_buf *b); /* leaves b empty and reusable */

/* Method bits, for route tables. */
enum {
    LLORCH_HTTP_GET = 1u << 0,
    LLORCH_HTTP_HEAD = 1u << 1,
    LLORCH_HTTP_POST = 1u << 2,
    LLORCH_HTTP_PUT = 1u << 3,
    LLORCH_HTTP_DELETE = 1u << 4,
    LLORCH_HTTP_OPTIONS = 1u << 5,
    LLORCH_HTTP_PATCH = 1u << 6,
    LLORCH_HTTP_OTHER = 1u << 7,
};

struct http_limits {
    uint32_t max_connections;   /* excess connections get 503 and are closed */
    uint32_t max_header_bytes;  /* request line + headers; 431 past it */
    uint64_t max_body_bytes;    /* 413 past it */
    uint32_t header_timeout_ms; /* from a request's first byte to its end; 408 */
    uint32_t idle_timeout_ms;   /* keep-alive connection with no request */
    uint32_t stream_sndbuf_bytes; /* SO_SNDBUF set on a connection when it begins a
                                   * streamed response (for the rest of its life), so
                                   * that a reader's backlog stays in our outbox where
                                   * it is measured; 0 = leave the kernel's autotuning */
};

struct http_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct http_conn;
struct http_server;

/* A parsed request; valid until its response ends or the connection dies
 * (then the abort callback runs). Nothing is NUL-terminated except method_name. */
struct http_request {
    struct http_conn *conn;
    unsigned method;             /* LLORCH_HTTP_* bit */
    const char *method_name;
    const char *target;          /* raw request target */
    size_t target_len;
    const char *path;            /* target without the query */
    size_t path_len;
    const char *query;           /* after '?', may be empty */
    size_t query_len;
    const struct http_header *headers;
    size_t n_headers;
    const char *body;
    size_t body_len;
    uint8_t http_major, http_minor;
    bool keep_alive;
    bool peer_is_loopback;
    /* The tag of the first route whose path matched (its method may not
     * have: a 405), or -1 when none did (a 404); see http_server_route_tagged. */
    int route_tag;
};

/* The handler answers with http_respond() or http_stream_begin() now or
 * later (until then the connection reads no further request). tail is the
 * part of the path after a prefix route's path (empty for exact routes). */
typedef void (*http_handler_fn)(void *ctx, struct http_request *req, const char *tail,
                                size_t tail_len);

/* Case-insensitive header lookup; NULL when absent. */
const char *http_request_header(const struct http_request *r, const char *name, size_t *len);

/* A whole response. extra_headers is "Name: value\r\n"* or NULL. Adds
 * Content-Length and Connection. */
int http_respond(struct http_request *r, int status, const char *content_type,
                 const char *extra_headers, const void *body, size_t len);
/* A JSON error response {"error":{"code","message"}}. */
int http_respond_error(struct http_request *r, int status, const char *code, const char *message,
                       const char *extra_headers);

/* A streamed response: chunked on HTTP/1.1 (the connection stays usable
 * after http_stream_end), close-delimited on HTTP/1.0. Writes are queued and
 * flushed once per loop iteration. */
int http_stream_begin(struct http_request *r, int status, const char *content_type,
                      const char *extra_headers);
int http_stream_write(struct http_request *r, const void *data, size_t len);
/* Ends the response; close_conn closes the connection once flushed. */
void http_stream_end(struct http_request *r, bool close_conn);
/* Ends the response because the peer reads too slowly (the caller has
 * queued its last words, e.g. an error frame): the connection is not reused
 * and reads nothing more; what is queued gets grace_ms to reach the kernel,
 * then the connection closes with or without it (a peer that never reads
 * cannot hold it open). */
void http_stream_cut(struct http_request *r, uint32_t grace_ms);
/* Bytes queued on the connection and not yet taken by the kernel. */
size_t http_request_pending_bytes(const struct http_request *r);

/* Called once if the connection dies before the response ended (EOF,
 * reset, write error, server close). The request is gone when it runs. */
void http_request_on_abort(struct http_request *r, void (*cb)(void *data), void *data);
/* A repeating timer bound to the request (e.g. keep-alive comments); stops
 * by itself when the response ends or the connection dies. */
int http_request_timer_start(struct http_request *r, uint64_t interval_ms,
                             void (*cb)(void *data), void *data);
void http_request_timer_stop(struct http_request *r);

/* For fuzzers and tests: a connection with no socket is given data in reads
 * of `piece` bytes (0 = all at once); its requests are parsed, limited and
 * routed as from a socket, and what it would write is appended to out.
 * Handlers must answer at once (a request still busy at the end is
 * aborted). The connection is closed before returning; run the loop once
 * (UV_RUN_NOWAIT) to free it. */
int http_server_feed(struct http_server *s, const void *data, size_t len, size_t piece,
                     struct http_buf *out);

/* Reason phrase of a status code. */
const char *http_status_reason(int status);

int http_server_new(struct http_server **out, uv_loop_t *loop, const struct http_limits *lim);
/* Registers a route. Exact path, or every path that starts with `path` when
 * prefix. A path with routes but none for the method gets 405 + Allow. */
int http_server_route(struct http_server *s, unsigned methods, const char *path, bool prefix,
                      http_handler_fn fn, void *ctx);
/* The same with a tag (>= 0) that requests matching the path carry in
 * route_tag, e.g. the route's metrics label; http_server_route's tag is -1. */
int http_server_route_tagged(struct http_server *s, unsigned methods, const char *path,
                             bool prefix, http_handler_fn fn, void *ctx, int tag);
int http_server_listen(struct http_server *s, const char *host, uint16_t port);
/* Adopts an already bound and listening TCP socket (socket activation). */
int http_server_listen_fd(struct http_server *s, int fd);
/* Why the last listen attempt failed, in the system's words ("address
 * already in use"); NULL when it did not fail, or failed for no system
 * reason. */
const char *http_server_listen_error(const struct http_server *s);
/* Observer of every response status (metrics, access logs): called when a
 * handler responds or begins a stream (r set), and for errors answered
 * outside any handler such as limits and timeouts (r NULL). */
typedef void (*http_observe_fn)(void *ctx, const struct http_request *r, int status);
void http_server_observe(struct http_server *s, http_observe_fn fn, void *ctx);
/* The bound port (useful after listening on port 0), or 0. */
uint16_t http_server_port(const struct http_server *s);
uint32_t http_server_conn_count(const struct http_server *s);
/* Graceful drain: stop accepting, close connections with no request in
 * progress, close each remaining one after its current response. */
void http_server_drain(struct http_server *s);
bool http_server_draining(const struct http_server *s);
/* Closes every connection (aborting requests) and the listener; the memory
 * is freed once libuv has closed the handles (keep running the loop). NULL
 * is safe. */
void http_server_close(struct http_server *s);

#endif
