/* The HTTP server in-process on 127.0.0.1 (an ephemeral port): routing,
 * keep-alive and pipelining, HTTP/1.0, limits (413, 431, 408, 503 over the
 * connection limit), Expect: 100-continue, idle close, chunked streams and
 * aborts. The test drives the loop with UV_RUN_NOWAIT between non-blocking
 * socket reads, so server and client share one thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "llorch/error.h"
#include "sse.h"

struct fixture {
    uv_loop_t loop;
    struct http_server *srv;
    uint16_t port;
    struct http_request *stream_req; /* held by /stream */
    int aborts;
    int hits;
};

static void h_hello(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    (void)tail;
    (void)tail_len;
    struct fixture *f = ctx;
    f->hits++;
    char body[256];
    int n = snprintf(body, sizeof(body), "%.*s|%zu", (int)r->path_len, r->path, r->body_len);
    http_respond(r, 200, "text/plain", NULL, body, (size_t)n);
}

static void on_abort(void *data)
{
    struct fixture *f = data;
    f->aborts++;
    f->stream_req = NULL;
}

static void h_stream(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    (void)tail;
    (void)tail_len;
    struct fixture *f = ctx;
    f->stream_req = r;
    http_request_on_abort(r, on_abort, f);
    http_stream_begin(r, 200, "text/event-stream", "Cache-Control: no-cache\r\n");
    http_stream_write(r, "first", 5);
}

/* Queues frames until the outbox bound refuses one (nothing is flushed
 * before the handler returns), then a forced terminal frame. */
static void h_sse_bound(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    (void)tail;
    (void)tail_len;
    struct fixture *f = ctx;
    struct sse_stream st = {0};
    assert_int_equal(sse_stream_begin(&st, r, SSE_MODE_DATA, 4096), 0);
    char json[100];
    memset(json, 'x', sizeof(json));
    int rc = 0, sent = 0;
    while (sent < 1000 && (rc = sse_stream_send(&st, "t", json, sizeof(json), false)) == 0)
        sent++;
    assert_int_equal(rc, LLORCH_EFULL);
    assert_true(http_request_pending_bytes(r) <= 4096);
    f->hits = sent;
    assert_int_equal(sse_stream_send(&st, "error", "{\"e\":1}", 7, true), 0);
    sse_stream_end(&st, false);
    sse_stream_free(&st);
}

/* 256 KiB in 4 KiB chunks, for a peer that reads nothing. */
static void h_flood(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    (void)tail;
    (void)tail_len;
    struct fixture *f = ctx;
    f->stream_req = r;
    http_request_on_abort(r, on_abort, f);
    assert_int_equal(http_stream_begin(r, 200, "text/event-stream", NULL), 0);
    static char chunk[4096];
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < 64; i++)
        assert_int_equal(http_stream_write(r, chunk, sizeof(chunk)), 0);
}

static void setup_limits(struct fixture *f, const struct http_limits *lim)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(http_server_new(&f->srv, &f->loop, lim), 0);
    assert_int_equal(http_server_route(f->srv, LLORCH_HTTP_GET | LLORCH_HTTP_POST, "/hello",
                                       false, h_hello, f), 0);
    assert_int_equal(http_server_route(f->srv, LLORCH_HTTP_DELETE, "/items/", true, h_hello, f), 0);
    assert_int_equal(http_server_route(f->srv, LLORCH_HTTP_GET, "/stream", false, h_stream, f), 0);
    assert_int_equal(http_server_route(f->srv, LLORCH_HTTP_GET, "/bound", false, h_sse_bound, f), 0);
    assert_int_equal(http_server_route(f->srv, LLORCH_HTTP_GET, "/flood", false, h_flood, f), 0);
    assert_int_equal(http_server_listen(f->srv, "127.0.0.1", 0), 0);
    f->port = http_server_port(f->srv);
    assert_true(f->port > 0);
}

static const struct http_limits default_limits = {
    .max_connections = 64,
    .max_header_bytes = 4096,
    .max_body_bytes = 1024,
    .header_timeout_ms = 2000,
    .idle_timeout_ms = 2000,
};

static void setup(struct fixture *f)
{
    setup_limits(f, &default_limits);
}

static void teardown(struct fixture *f)
{
    http_server_close(f->srv);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static int client_connect(struct fixture *f)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void client_send(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN)
            continue;
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

static void client_send_str(int fd, const char *s)
{
    client_send(fd, s, strlen(s));
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Runs the loop and reads until `until` appears `count` times in what was
 * received, the peer closes (*closed), or timeout_ms passes. */
struct recv_buf {
    char data[65536];
    size_t len;
    bool closed;
};

static size_t count_of(const struct recv_buf *b, const char *needle)
{
    size_t n = 0, nl = strlen(needle);
    for (size_t i = 0; nl && i + nl <= b->len; i++)
        if (memcmp(b->data + i, needle, nl) == 0)
            n++;
    return n;
}

static void pump(struct fixture *f, int fd, struct recv_buf *b, const char *until, size_t count,
                 double timeout_ms)
{
    double end = now_ms() + timeout_ms;
    while (now_ms() < end) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        if (fd >= 0 && !b->closed) {
            ssize_t n = recv(fd, b->data + b->len, sizeof(b->data) - 1 - b->len, 0);
            if (n > 0)
                b->len += (size_t)n;
            else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
                b->closed = true;
            b->data[b->len] = 0;
        }
        if (until && count_of(b, until) >= count)
            return;
        if (!until && b->closed)
            return;
        usleep(500);
    }
}

static void get_on_a_route_answers_200_with_content_length(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *req = "GET /hello?x=1 HTTP/1.1\r\nHost: t\r\n\r\n";
    client_send(fd, req, strlen(req));
    struct recv_buf b = {0};
    pump(&f, fd, &b, "/hello|0", 1, 2000);
    assert_non_null(strstr(b.data, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(b.data, "Content-Length: 8\r\n"));
    assert_null(strstr(b.data, "Connection: close"));
    close(fd);
    teardown(&f);
}

static void observe_tag(void *ctx, const struct http_request *r, int status)
{
    int *tags = ctx;
    (void)status;
    tags[tags[0] + 1] = r ? r->route_tag : -2;
    tags[0]++;
}

static void requests_carry_the_tag_of_the_route_their_path_matched(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    assert_int_equal(http_server_route_tagged(f.srv, LLORCH_HTTP_GET, "/tagged", false, h_hello,
                                              &f, 7),
                     0);
    assert_int_equal(http_server_route_tagged(f.srv, LLORCH_HTTP_GET, "/pre/", true, h_hello, &f,
                                              9),
                     0);
    int tags[8] = {0};
    http_server_observe(f.srv, observe_tag, tags);
    int fd = client_connect(&f);
    const char *req = "GET /tagged HTTP/1.1\r\nHost: t\r\n\r\n"
                      "POST /tagged HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
                      "GET /pre/x%2Fy HTTP/1.1\r\nHost: t\r\n\r\n"
                      "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
                      "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
    client_send(fd, req, strlen(req));
    struct recv_buf b = {0};
    pump(&f, fd, &b, "HTTP/1.1 ", 5, 2000);
    assert_int_equal(tags[0], 5);
    assert_int_equal(tags[1], 7);  /* matched */
    assert_int_equal(tags[2], 7);  /* 405: its path matched */
    assert_int_equal(tags[3], 9);  /* prefix route */
    assert_int_equal(tags[4], -1); /* 404 */
    assert_int_equal(tags[5], -1); /* a route registered without a tag */
    close(fd);
    teardown(&f);
}

static void unknown_path_answers_404_with_a_json_error(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *req = "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n";
    client_send(fd, req, strlen(req));
    struct recv_buf b = {0};
    pump(&f, fd, &b, "}}", 1, 2000);
    assert_non_null(strstr(b.data, "HTTP/1.1 404 Not Found\r\n"));
    assert_non_null(strstr(b.data, "Content-Type: application/json\r\n"));
    assert_non_null(strstr(b.data, "{\"error\":{\"code\":\"NOT_FOUND\""));
    close(fd);
    teardown(&f);
}

static void wrong_method_answers_405_with_allow(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *req = "PUT /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
                      "GET /items/7 HTTP/1.1\r\nHost: t\r\n\r\n";
    client_send(fd, req, strlen(req));
    struct recv_buf b = {0};
    pump(&f, fd, &b, "}}", 2, 2000);
    assert_non_null(strstr(b.data, "HTTP/1.1 405 Method Not Allowed\r\n"));
    assert_non_null(strstr(b.data, "Allow: GET, POST\r\n"));
    assert_non_null(strstr(b.data, "Allow: DELETE\r\n"));
    close(fd);
    teardown(&f);
}

static void pipelined_requests_are_answered_in_order(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    char req[4096];
    size_t n = 0;
    for (int i = 0; i < 20; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n,
                              "POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%.*s", i,
                              i, "abcdefghijklmnopqrstuvwxyz");
    client_send(fd, req, n);
    struct recv_buf b = {0};
    pump(&f, fd, &b, "HTTP/1.1 200", 20, 3000);
    assert_int_equal(count_of(&b, "HTTP/1.1 200"), 20);
    const char *p = b.data;
    for (int i = 0; i < 20; i++) {
        char want[32];
        snprintf(want, sizeof(want), "/hello|%d", i);
        const char *q = strstr(p, want);
        assert_non_null(q);
        p = q + strlen(want);
    }
    close(fd);
    teardown(&f);
}

static void pipelined_request_waits_for_a_streamed_response(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *req = "GET /stream HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
    client_send(fd, req, strlen(req));
    struct recv_buf b = {0};
    pump(&f, fd, &b, "first\r\n", 1, 2000);
    assert_non_null(f.stream_req);
    assert_int_equal(f.hits, 0);
    assert_non_null(strstr(b.data, "Transfer-Encoding: chunked\r\n"));
    assert_non_null(strstr(b.data, "5\r\nfirst\r\n"));
    http_stream_write(f.stream_req, "second", 6);
    http_stream_end(f.stream_req, false);
    f.stream_req = NULL;
    pump(&f, fd, &b, "/hello|0", 1, 2000);
    const char *s2 = strstr(b.data, "6\r\nsecond\r\n0\r\n\r\n");
    const char *h = strstr(b.data, "/hello|0");
    assert_non_null(s2);
    assert_non_null(h);
    assert_true(s2 < h);
    assert_int_equal(f.aborts, 0);
    close(fd);
    teardown(&f);
}

static void http10_request_gets_a_response_then_close(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *req = "GET /hello HTTP/1.0\r\n\r\n";
    client_send(fd, req, strlen(req));
    struct recv_buf b = {0};
    pump(&f, fd, &b, NULL, 0, 3000);
    assert_true(b.closed);
    assert_non_null(strstr(b.data, "Connection: close\r\n"));
    assert_non_null(strstr(b.data, "/hello|0"));
    close(fd);
    teardown(&f);
}

static void http10_keep_alive_is_honoured(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *req = "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                      "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    client_send(fd, req, strlen(req));
    struct recv_buf b = {0};
    pump(&f, fd, &b, "/hello|0", 2, 2000);
    assert_int_equal(count_of(&b, "Connection: keep-alive\r\n"), 2);
    assert_false(b.closed);
    close(fd);
    teardown(&f);
}

static void stream_on_http10_is_close_delimited(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *req = "GET /stream HTTP/1.0\r\n\r\n";
    client_send(fd, req, strlen(req));
    struct recv_buf b = {0};
    pump(&f, fd, &b, "first", 1, 2000);
    assert_null(strstr(b.data, "chunked"));
    http_stream_write(f.stream_req, "more", 4);
    http_stream_end(f.stream_req, false);
    pump(&f, fd, &b, NULL, 0, 3000);
    assert_true(b.closed);
    assert_non_null(strstr(b.data, "\r\n\r\nfirstmore"));
    close(fd);
    teardown(&f);
}

static void body_over_the_limit_answers_413(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *req = "POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n";
    client_send(fd, req, strlen(req));
    struct recv_buf b = {0};
    pump(&f, fd, &b, "}}", 1, 2000);
    assert_non_null(strstr(b.data, "HTTP/1.1 413 "));
    assert_non_null(strstr(b.data, "PAYLOAD_TOO_LARGE"));
    assert_int_equal(f.hits, 0);
    close(fd);
    teardown(&f);
}

static void chunked_body_over_the_limit_answers_413(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *req = "POST /hello HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    client_send(fd, req, strlen(req));
    char chunk[600];
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < 2; i++) {
        client_send_str(fd, "258\r\n");
        client_send(fd, chunk, sizeof(chunk));
        client_send_str(fd, "\r\n");
    }
    struct recv_buf b = {0};
    pump(&f, fd, &b, "}}", 1, 2000);
    assert_non_null(strstr(b.data, "HTTP/1.1 413 "));
    assert_int_equal(f.hits, 0);
    close(fd);
    teardown(&f);
}

static void body_at_the_limit_is_accepted(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    char req[2048];
    int n = snprintf(req, sizeof(req), "POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
    memset(req + n, 'y', 1024);
    client_send(fd, req, (size_t)n + 1024);
    struct recv_buf b = {0};
    pump(&f, fd, &b, "/hello|1024", 1, 2000);
    assert_non_null(strstr(b.data, "HTTP/1.1 200 OK"));
    close(fd);
    teardown(&f);
}

static void header_section_over_the_limit_answers_431(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    char req[8192];
    int n = snprintf(req, sizeof(req), "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + n, 'z', 5000);
    n += 5000;
    n += snprintf(req + n, sizeof(req) - (size_t)n, "\r\n\r\n");
    client_send(fd, req, (size_t)n);
    struct recv_buf b = {0};
    pump(&f, fd, &b, "}}", 1, 2000);
    assert_non_null(strstr(b.data, "HTTP/1.1 431 "));
    assert_int_equal(f.hits, 0);
    close(fd);
    teardown(&f);
}

static void slow_headers_get_408_and_the_connection_closes(void **state)
{
    (void)state;
    struct fixture f;
    struct http_limits lim = default_limits;
    lim.header_timeout_ms = 150;
    setup_limits(&f, &lim);
    int slow = client_connect(&f);
    client_send_str(slow, "GET /hello HTTP/1.1\r\nHo");
    /* another client is served meanwhile */
    int fast = client_connect(&f);
    client_send_str(fast, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    struct recv_buf bf = {0};
    pump(&f, fast, &bf, "/hello|0", 1, 1000);
    assert_non_null(strstr(bf.data, "200 OK"));
    struct recv_buf b = {0};
    double t0 = now_ms();
    pump(&f, slow, &b, NULL, 0, 3000);
    assert_true(b.closed);
    assert_true(now_ms() - t0 < 2500);
    assert_non_null(strstr(b.data, "HTTP/1.1 408 "));
    close(slow);
    close(fast);
    teardown(&f);
}

static void idle_keep_alive_connection_is_closed_silently(void **state)
{
    (void)state;
    struct fixture f;
    struct http_limits lim = default_limits;
    lim.idle_timeout_ms = 100;
    setup_limits(&f, &lim);
    int fd = client_connect(&f);
    client_send_str(fd, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    struct recv_buf b = {0};
    pump(&f, fd, &b, "/hello|0", 1, 1000);
    size_t before = b.len;
    pump(&f, fd, &b, NULL, 0, 2000);
    assert_true(b.closed);
    assert_int_equal(b.len, before);
    close(fd);
    teardown(&f);
}

static void expect_100_continue_gets_the_interim_response(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *head = "POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
    client_send(fd, head, strlen(head));
    struct recv_buf b = {0};
    pump(&f, fd, &b, "HTTP/1.1 100 Continue\r\n\r\n", 1, 1000);
    assert_int_equal(count_of(&b, "100 Continue"), 1);
    assert_int_equal(f.hits, 0);
    client_send_str(fd, "abc");
    pump(&f, fd, &b, "/hello|3", 1, 1000);
    assert_non_null(strstr(b.data, "200 OK"));
    close(fd);
    teardown(&f);
}

static void expect_with_a_too_large_body_gets_413_without_continue(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    const char *head = "POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 99999\r\nExpect: 100-continue\r\n\r\n";
    client_send(fd, head, strlen(head));
    struct recv_buf b = {0};
    pump(&f, fd, &b, "}}", 1, 1000);
    assert_non_null(strstr(b.data, "HTTP/1.1 413 "));
    assert_null(strstr(b.data, "100 Continue"));
    close(fd);
    teardown(&f);
}

static void connections_over_the_limit_get_503_and_close(void **state)
{
    (void)state;
    struct fixture f;
    struct http_limits lim = default_limits;
    lim.max_connections = 2;
    setup_limits(&f, &lim);
    int a = client_connect(&f), b2 = client_connect(&f);
    struct recv_buf tmp = {0};
    pump(&f, -1, &tmp, "never", 1, 100);
    assert_int_equal(http_server_conn_count(f.srv), 2);
    int c = client_connect(&f);
    struct recv_buf b = {0};
    pump(&f, c, &b, NULL, 0, 3000);
    assert_true(b.closed);
    assert_non_null(strstr(b.data, "HTTP/1.1 503 "));
    assert_non_null(strstr(b.data, "TOO_MANY_CONNECTIONS"));
    /* the first two still work */
    client_send_str(a, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    struct recv_buf ba = {0};
    pump(&f, a, &ba, "/hello|0", 1, 1000);
    assert_non_null(strstr(ba.data, "200 OK"));
    close(a);
    close(b2);
    close(c);
    teardown(&f);
}

static void malformed_request_gets_400_and_close(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    client_send(fd, "GARBAGE\x01 / HTTP/1.1\r\n\r\n", 24);
    struct recv_buf b = {0};
    pump(&f, fd, &b, NULL, 0, 3000);
    assert_true(b.closed);
    assert_non_null(strstr(b.data, "HTTP/1.1 400 "));
    close(fd);
    teardown(&f);
}

static void client_disconnect_aborts_the_streamed_request(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    client_send_str(fd, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n");
    struct recv_buf b = {0};
    pump(&f, fd, &b, "first", 1, 1000);
    assert_non_null(f.stream_req);
    close(fd);
    pump(&f, -1, &b, NULL, 0, 200);
    assert_int_equal(f.aborts, 1);
    assert_null(f.stream_req);
    assert_int_equal(http_server_conn_count(f.srv), 0);
    teardown(&f);
}

static void drain_closes_idle_connections_and_the_listener(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int idle = client_connect(&f);
    int busy = client_connect(&f);
    client_send_str(busy, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n");
    struct recv_buf bb = {0};
    pump(&f, busy, &bb, "first", 1, 1000);
    http_server_drain(f.srv);
    struct recv_buf bi = {0};
    pump(&f, idle, &bi, NULL, 0, 1000);
    assert_true(bi.closed);
    /* the stream finishes, then its connection closes */
    http_stream_write(f.stream_req, "last", 4);
    http_stream_end(f.stream_req, false);
    pump(&f, busy, &bb, NULL, 0, 3000);
    assert_true(bb.closed);
    assert_non_null(strstr(bb.data, "4\r\nlast\r\n0\r\n\r\n"));
    assert_int_equal(f.aborts, 0);
    close(idle);
    close(busy);
    teardown(&f);
}

static void sse_outbox_refuses_frames_past_its_bound(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    int fd = client_connect(&f);
    client_send_str(fd, "GET /bound HTTP/1.1\r\nHost: t\r\n\r\n");
    struct recv_buf b = {0};
    pump(&f, fd, &b, "data: [DONE]\n\n\r\n0\r\n\r\n", 1, 2000);
    /* 108-byte frames + chunk framing: about 35 fit in 4096 bytes */
    assert_true(f.hits > 20 && f.hits < 40);
    assert_int_equal(count_of(&b, "data: xxxx"), (size_t)f.hits);
    assert_non_null(strstr(b.data, "data: {\"e\":1}\n\n"));
    close(fd);
    teardown(&f);
}

/* A client socket with a tiny receive buffer (set before connecting, so the
 * window it advertises stays small). */
static int client_connect_small_rcvbuf(struct fixture *f)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    int v = 1024;
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v)), 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* With the send buffer bounded, a non-reading peer's backlog stays in our
 * queue (where the SSE outbox bound sees it) instead of the kernel's. */
static void stream_sndbuf_keeps_the_backlog_in_our_queue(void **state)
{
    (void)state;
    struct fixture f;
    struct http_limits lim = default_limits;
    lim.stream_sndbuf_bytes = 4096;
    setup_limits(&f, &lim);
    int fd = client_connect_small_rcvbuf(&f);
    client_send_str(fd, "GET /flood HTTP/1.1\r\nHost: t\r\n\r\n");
    double end = now_ms() + 2000;
    while (now_ms() < end && !f.stream_req)
        uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_non_null(f.stream_req);
    end = now_ms() + 200; /* let the kernel take what it will */
    while (now_ms() < end) {
        uv_run(&f.loop, UV_RUN_NOWAIT);
        usleep(500);
    }
    /* the kernel took at most a few tens of KiB of the 256 KiB */
    assert_true(http_request_pending_bytes(f.stream_req) > 200000);
    assert_true(http_request_pending_bytes(f.stream_req) <= 64 * 4104 + 256);
    http_stream_end(f.stream_req, false);
    close(fd);
    teardown(&f);
}

/* A cut stream's connection closes after the grace even though the peer
 * never reads what is queued; the handler sees no abort (it ended). */
static void cut_stream_closes_a_connection_that_never_reads(void **state)
{
    (void)state;
    struct fixture f;
    struct http_limits lim = default_limits;
    lim.stream_sndbuf_bytes = 4096;
    setup_limits(&f, &lim);
    int fd = client_connect_small_rcvbuf(&f);
    client_send_str(fd, "GET /flood HTTP/1.1\r\nHost: t\r\n\r\n");
    double end = now_ms() + 2000;
    while (now_ms() < end && !f.stream_req)
        uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_non_null(f.stream_req);
    struct http_request *r = f.stream_req;
    f.stream_req = NULL;
    http_stream_cut(r, 100);
    assert_int_equal(http_server_conn_count(f.srv), 1);
    double t0 = now_ms();
    end = t0 + 3000;
    while (now_ms() < end && http_server_conn_count(f.srv) > 0) {
        uv_run(&f.loop, UV_RUN_NOWAIT);
        usleep(500);
    }
    assert_int_equal(http_server_conn_count(f.srv), 0);
    assert_true(now_ms() - t0 >= 90);
    assert_int_equal(f.aborts, 0);
    /* the peer still reads what the kernel held, then the end */
    struct recv_buf b = {0};
    pump(&f, fd, &b, NULL, 0, 2000);
    assert_true(b.closed);
    assert_non_null(strstr(b.data, "HTTP/1.1 200 OK\r\n"));
    close(fd);
    teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(get_on_a_route_answers_200_with_content_length),
        cmocka_unit_test(unknown_path_answers_404_with_a_json_error),
        cmocka_unit_test(requests_carry_the_tag_of_the_route_their_path_matched),
        cmocka_unit_test(wrong_method_answers_405_with_allow),
        cmocka_unit_test(pipelined_requests_are_answered_in_order),
        cmocka_unit_test(pipelined_request_waits_for_a_streamed_response),
        cmocka_unit_test(http10_request_gets_a_response_then_close),
        cmocka_unit_test(http10_keep_alive_is_honoured),
        cmocka_unit_test(stream_on_http10_is_close_delimited),
        cmocka_unit_test(body_over_the_limit_answers_413),
        cmocka_unit_test(chunked_body_over_the_limit_answers_413),
        cmocka_unit_test(body_at_the_limit_is_accepted),
        cmocka_unit_test(header_section_over_the_limit_answers_431),
        cmocka_unit_test(slow_headers_get_408_and_the_connection_closes),
        cmocka_unit_test(idle_keep_alive_connection_is_closed_silently),
        cmocka_unit_test(expect_100_continue_gets_the_interim_response),
        cmocka_unit_test(expect_with_a_too_large_body_gets_413_without_continue),
        cmocka_unit_test(connections_over_the_limit_get_503_and_close),
        cmocka_unit_test(malformed_request_gets_400_and_close),
        cmocka_unit_test(client_disconnect_aborts_the_streamed_request),
        cmocka_unit_test(drain_closes_idle_connections_and_the_listener),
        cmocka_unit_test(sse_outbox_refuses_frames_past_its_bound),
        cmocka_unit_test(stream_sndbuf_keeps_the_backlog_in_our_queue),
        cmocka_unit_test(cut_stream_closes_a_connection_that_never_reads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
