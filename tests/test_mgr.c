/* Pool-manager client against a real HTTP receiver on 127.0.0.1 (a tiny
 * libuv server in this file, on the same loop): the ready payload's fields,
 * retries with back-off after failures, giving up, heartbeats, test mode,
 * closing with a request in flight. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "llorch/error.h"
#include "mgr.h"

/* ---- the receiver ------------------------------------------------------ */

#define RX_MAX_REQ 64

struct rx_req {
    char path[256];
    char content_type[128];
    char *body;
    uint64_t at_ms; /* uv_now when complete */
};

struct receiver {
    uv_loop_t *loop;
    uv_tcp_t server;
    int port;
    int statuses[16]; /* answers in order; the last one repeats; 0 = never answer */
    int n_statuses;
    struct rx_req req[RX_MAX_REQ];
    int n_req;
    int open_conns;
};

struct rx_conn {
    uv_tcp_t tcp;
    struct receiver *rx;
    char buf[16384];
    size_t len;
    bool done;
};

static void rx_conn_closed(uv_handle_t *h)
{
    struct rx_conn *c = h->data;
    c->rx->open_conns--;
    free(c);
}

static void rx_written(uv_write_t *w, int status)
{
    (void)status;
    struct rx_conn *c = w->data;
    free(w);
    uv_close((uv_handle_t *)&c->tcp, rx_conn_closed);
}

static void rx_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    struct rx_conn *c = h->data;
    *b = uv_buf_init(c->buf + c->len, (unsigned)(sizeof c->buf - 1 - c->len));
}

static void rx_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    struct rx_conn *c = s->data;
    if (n < 0) {
        if (!uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, rx_conn_closed);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = 0;
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end || c->done)
        return;
    const char *cl = strcasestr(c->buf, "\r\nContent-Length:");
    size_t body_len = cl ? strtoul(cl + 17, NULL, 10) : 0;
    if (c->len < (size_t)(end + 4 - c->buf) + body_len)
        return;
    c->done = true;
    struct receiver *rx = c->rx;
    assert_true(rx->n_req < RX_MAX_REQ);
    struct rx_req *r = &rx->req[rx->n_req];
    sscanf(c->buf, "POST %255s ", r->path);
    const char *ct = strcasestr(c->buf, "\r\nContent-Type:");
    if (ct)
        sscanf(ct + 15, " %127[^\r]", r->content_type);
    r->body = strndup(end + 4, body_len);
    r->at_ms = uv_now(rx->loop);
    int idx = rx->n_req < rx->n_statuses ? rx->n_req : rx->n_statuses - 1;
    int status = rx->statuses[idx];
    rx->n_req++;
    if (!status)
        return; /* hang: keep the connection open, never answer */
    static char resp[256];
    int len =
        snprintf(resp, sizeof resp,
                 "HTTP/1.1 %d X\r\nContent-Length: 5\r\nConnection: close\r\n\r\nnope!", status);
    uv_write_t *w = malloc(sizeof *w);
    w->data = c;
    uv_buf_t ub = uv_buf_init(resp, (unsigned)len);
    uv_write(w, s, &ub, 1, rx_written);
}

static void rx_accept(uv_stream_t *server, int status)
{
    assert_int_equal(status, 0);
    struct receiver *rx = server->data;
    struct rx_conn *c = calloc(1, sizeof *c);
    c->rx = rx;
    uv_tcp_init(rx->loop, &c->tcp);
    c->tcp.data = c;
    rx->open_conns++;
    assert_int_equal(uv_accept(server, (uv_stream_t *)&c->tcp), 0);
    uv_read_start((uv_stream_t *)&c->tcp, rx_alloc, rx_read);
}

static void rx_start(struct receiver *rx, uv_loop_t *loop, const int *statuses, int n)
{
    memset(rx, 0, sizeof *rx);
    rx->loop = loop;
    memcpy(rx->statuses, statuses, sizeof(int) * (size_t)n);
    rx->n_statuses = n;
    uv_tcp_init(loop, &rx->server);
    rx->server.data = rx;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&rx->server, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&rx->server, 16, rx_accept), 0);
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    uv_tcp_getsockname(&rx->server, (struct sockaddr *)&ss, &sl);
    rx->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void rx_close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) {
        if (h->type == UV_TCP && h->data && h->data != arg)
            uv_close(h, rx_conn_closed);
        else
            uv_close(h, NULL);
    }
}

static void rx_stop(struct receiver *rx)
{
    /* closes the server and any hanging connection */
    uv_walk(rx->loop, rx_close_walk, rx);
    uv_run(rx->loop, UV_RUN_DEFAULT);
    for (int i = 0; i < rx->n_req; i++)
        free(rx->req[i].body);
}

/* ---- driving the loop --------------------------------------------------- */

struct waiter {
    struct mgr *m;
    enum mgr_status until;
    struct receiver *rx;
    int until_requests;
    bool hit;
};

static void on_tick(uv_timer_t *t)
{
    struct waiter *w = t->data;
    struct mgr_state st;
    mgr_state_get(w->m, &st);
    if ((w->until_requests && w->rx->n_req >= w->until_requests) ||
        (!w->until_requests && st.status == w->until)) {
        w->hit = true;
        uv_stop(t->loop);
    }
}

/* Runs the loop until the status (or request count) is reached or ms pass. */
static bool run_until(uv_loop_t *loop, struct waiter *w, uint64_t ms)
{
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    tick.data = w;
    uv_timer_start(&tick, on_tick, 5, 5);
    uint64_t deadline = uv_now(loop) + ms;
    while (!w->hit && uv_now(loop) < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return w->hit;
}

static void on_closed(void *ctx)
{
    *(int *)ctx += 1;
}

static void close_mgr(uv_loop_t *loop, struct mgr *m)
{
    int closed = 0;
    mgr_close(m, on_closed, &closed);
    while (!closed)
        uv_run(loop, UV_RUN_ONCE);
    assert_int_equal(closed, 1);
}

static struct mgr_opts base_opts(char *cb_url, size_t n, int port, const char *path)
{
    snprintf(cb_url, n, "http://127.0.0.1:%d%s", port, path);
    struct mgr_opts o = {
        .callback_url = cb_url,
        .worker_id = "w-test",
        .worker_url = "http://127.0.0.1:8123",
        .model_ref = "tiny.gguf",
        .memory_bytes = 123456789,
        .port = 8123,
        .max_retries = 5,
        .backoff_ms = 20,
        .backoff_max_ms = 1000,
        .timeout_ms = 2000,
    };
    return o;
}

static void check_payload(const char *body)
{
    json_error_t e;
    json_t *j = json_loads(body, 0, &e);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "worker_id")), "w-test");
    assert_string_equal(json_string_value(json_object_get(j, "url")), "http://127.0.0.1:8123");
    assert_string_equal(json_string_value(json_object_get(j, "uri")), "http://127.0.0.1:8123");
    assert_string_equal(json_string_value(json_object_get(j, "model_ref")), "tiny.gguf");
    assert_string_equal(json_string_value(json_object_get(j, "backend")), "cpu");
    assert_string_equal(json_string_value(json_object_get(j, "memory_type")), "cpu");
    assert_true(json_is_integer(json_object_get(j, "device")));
    assert_int_equal(json_integer_value(json_object_get(j, "device")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "vram_bytes")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "memory_bytes")), 123456789);
    assert_int_equal(json_integer_value(json_object_get(j, "port")), 8123);
    assert_int_equal(json_object_size(j), 10);
    json_decref(j);
}

/* ---- tests ------------------------------------------------------------- */

static void mgr_backoff_doubles_and_is_capped(void **state)
{
    (void)state;
    assert_int_equal(mgr_backoff_delay_ms(500, 30000, 1), 500);
    assert_int_equal(mgr_backoff_delay_ms(500, 30000, 2), 1000);
    assert_int_equal(mgr_backoff_delay_ms(500, 30000, 4), 4000);
    assert_int_equal(mgr_backoff_delay_ms(500, 30000, 7), 30000);
    assert_int_equal(mgr_backoff_delay_ms(500, 30000, 100000), 30000);
    assert_int_equal(mgr_backoff_delay_ms(4000000000u, 4000000000u, 3), 4000000000u);
}

static void mgr_worker_url_handles_wildcards_and_ipv6(void **state)
{
    (void)state;
    char buf[300], host[256] = "";
    assert_int_equal(mgr_format_worker_url("127.0.0.1", 8080, buf, sizeof buf), 0);
    assert_string_equal(buf, "http://127.0.0.1:8080");
    assert_int_equal(mgr_format_worker_url("::1", 80, buf, sizeof buf), 0);
    assert_string_equal(buf, "http://[::1]:80");
    gethostname(host, sizeof host - 1);
    char want[300];
    snprintf(want, sizeof want, "http://%s:9", host);
    assert_int_equal(mgr_format_worker_url("0.0.0.0", 9, buf, sizeof buf), 0);
    assert_string_equal(buf, want);
    assert_int_equal(mgr_format_worker_url("::", 9, buf, sizeof buf), 0);
    assert_string_equal(buf, want);
    assert_int_equal(mgr_format_worker_url("example.org", 9, buf, 10), LLORCH_ETOOBIG);
}

static void mgr_test_mode_sends_nothing(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct mgr_opts o = {.callback_url = "http://localhost:9999/ready", .worker_id = "w"};
    struct mgr *m;
    assert_int_equal(mgr_new(&m, &loop, &o), 0);
    assert_string_equal(mgr_status(m), "disabled");
    assert_int_equal(mgr_start(m), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_string_equal(mgr_status(m), "disabled");
    close_mgr(&loop, m);
    o.callback_url = "";
    assert_int_equal(mgr_new(&m, &loop, &o), 0);
    assert_string_equal(mgr_status(m), "disabled");
    close_mgr(&loop, m);
    assert_string_equal(mgr_status(NULL), "disabled");
    int closed = 0;
    mgr_close(NULL, on_closed, &closed);
    assert_int_equal(closed, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void mgr_rejects_a_non_http_callback_url(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct mgr_opts o = {.callback_url = "ftp://pm/ready", .worker_id = "w"};
    struct mgr *m;
    assert_int_equal(mgr_new(&m, &loop, &o), LLORCH_EINVAL);
    assert_null(m);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void count_event(void *ctx, enum mgr_count what)
{
    ((unsigned *)ctx)[what]++;
}

static void mgr_callback_retries_with_backoff_until_accepted(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct receiver rx;
    int statuses[] = {503, 500, 204};
    rx_start(&rx, &loop, statuses, 3);
    char url[128];
    struct mgr_opts o = base_opts(url, sizeof url, rx.port, "/v2/workers/ready?x=1");
    unsigned counts[4] = {0};
    o.count = count_event;
    o.count_ctx = counts;
    struct mgr *m;
    assert_int_equal(mgr_new(&m, &loop, &o), 0);
    assert_string_equal(mgr_status(m), "pending");
    assert_int_equal(mgr_start(m), 0);
    assert_int_equal(mgr_start(m), 0); /* idempotent */
    struct waiter w = {.m = m, .until = MGR_REGISTERED};
    assert_true(run_until(&loop, &w, 5000));
    struct mgr_state st;
    mgr_state_get(m, &st);
    assert_int_equal(st.attempts, 3);
    assert_int_equal(st.last_http_status, 204);
    assert_string_equal(st.last_error, "");
    assert_string_equal(mgr_status(m), "registered");
    assert_int_equal(rx.n_req, 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(rx.req[i].path, "/v2/workers/ready?x=1");
        assert_string_equal(rx.req[i].content_type, "application/json");
        check_payload(rx.req[i].body);
    }
    /* back-off: 20 ms then 40 ms between attempts (timer granularity: 1 ms) */
    assert_true(rx.req[1].at_ms - rx.req[0].at_ms >= 19);
    assert_true(rx.req[2].at_ms - rx.req[1].at_ms >= 39);
    assert_int_equal(counts[MGR_COUNT_CALLBACK_ATTEMPT], 3);
    assert_int_equal(counts[MGR_COUNT_CALLBACK_FAILURE], 2);
    close_mgr(&loop, m);
    rx_stop(&rx);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void mgr_gives_up_after_max_retries_and_reports_failed(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct receiver rx;
    int statuses[] = {500};
    rx_start(&rx, &loop, statuses, 1);
    char url[128];
    struct mgr_opts o = base_opts(url, sizeof url, rx.port, "/ready");
    o.max_retries = 2;
    o.backoff_ms = 10;
    struct mgr *m;
    assert_int_equal(mgr_new(&m, &loop, &o), 0);
    mgr_start(m);
    struct waiter w = {.m = m, .until = MGR_FAILED};
    assert_true(run_until(&loop, &w, 5000));
    struct mgr_state st;
    mgr_state_get(m, &st);
    assert_int_equal(st.attempts, 3);
    assert_int_equal(rx.n_req, 3);
    assert_int_equal(st.last_http_status, 500);
    assert_non_null(strstr(st.last_error, "HTTP 500"));
    assert_non_null(strstr(st.last_error, "nope!"));
    assert_string_equal(mgr_status(m), "failed");
    /* nothing more is sent after giving up */
    struct waiter w2 = {.m = m, .rx = &rx, .until_requests = 4};
    assert_false(run_until(&loop, &w2, 100));
    close_mgr(&loop, m);
    rx_stop(&rx);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void mgr_connection_refused_is_retried_then_fails(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    /* a port that was just free: bind, read it, close */
    struct receiver rx;
    int statuses[] = {200};
    rx_start(&rx, &loop, statuses, 1);
    int port = rx.port;
    rx_stop(&rx);
    char url[128];
    struct mgr_opts o = base_opts(url, sizeof url, port, "/ready");
    o.max_retries = 1;
    o.backoff_ms = 10;
    struct mgr *m;
    assert_int_equal(mgr_new(&m, &loop, &o), 0);
    mgr_start(m);
    struct waiter w = {.m = m, .until = MGR_FAILED};
    assert_true(run_until(&loop, &w, 5000));
    struct mgr_state st;
    mgr_state_get(m, &st);
    assert_int_equal(st.attempts, 2);
    assert_int_equal(st.last_http_status, 0);
    assert_true(strlen(st.last_error) > 0);
    close_mgr(&loop, m);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void mgr_request_timeout_counts_as_a_failure(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct receiver rx;
    int statuses[] = {0, 200}; /* hang once, then accept */
    rx_start(&rx, &loop, statuses, 2);
    char url[128];
    struct mgr_opts o = base_opts(url, sizeof url, rx.port, "/ready");
    o.timeout_ms = 200;
    struct mgr *m;
    assert_int_equal(mgr_new(&m, &loop, &o), 0);
    mgr_start(m);
    struct waiter w = {.m = m, .until = MGR_REGISTERED};
    assert_true(run_until(&loop, &w, 5000));
    assert_int_equal(rx.n_req, 2);
    assert_true(rx.req[1].at_ms - rx.req[0].at_ms >= 200);
    close_mgr(&loop, m);
    rx_stop(&rx);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static const char *degraded(void *ctx)
{
    (*(int *)ctx)++;
    return "degraded";
}

static void mgr_heartbeats_follow_registration(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct receiver rx;
    int statuses[] = {200, 200, 500, 200};
    rx_start(&rx, &loop, statuses, 4);
    char url[128];
    struct mgr_opts o = base_opts(url, sizeof url, rx.port, "/v1/workers/ready");
    o.heartbeat_interval_s = 1;
    int calls = 0;
    o.health_status = degraded;
    o.health_ctx = &calls;
    struct mgr *m;
    assert_int_equal(mgr_new(&m, &loop, &o), 0);
    mgr_start(m);
    struct waiter w = {.m = m, .rx = &rx, .until_requests = 4};
    assert_true(run_until(&loop, &w, 6000));
    assert_string_equal(rx.req[0].path, "/v1/workers/ready");
    for (int i = 1; i < 4; i++) {
        assert_string_equal(rx.req[i].path, "/v1/heartbeat");
        json_t *j = json_loads(rx.req[i].body, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "worker_id")), "w-test");
        assert_string_equal(json_string_value(json_object_get(j, "health_status")), "degraded");
        const char *ts = json_string_value(json_object_get(j, "timestamp"));
        assert_non_null(ts);
        assert_int_equal(strlen(ts), 20); /* 2026-11-23T09:03:34Z */
        assert_true(ts[10] == 'T' && ts[19] == 'Z');
        json_decref(j);
        /* about one second apart */
        if (i > 1)
            assert_true(rx.req[i].at_ms - rx.req[i - 1].at_ms >= 900);
    }
    assert_int_equal(calls, 3);
    /* a failed heartbeat changes nothing about registration */
    struct mgr_state st;
    mgr_state_get(m, &st);
    assert_int_equal(st.status, MGR_REGISTERED);
    assert_int_equal(st.heartbeats_sent, 3);
    assert_int_equal(st.heartbeats_failed, 1);
    close_mgr(&loop, m);
    rx_stop(&rx);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void mgr_close_with_a_request_in_flight_frees_everything(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct receiver rx;
    int statuses[] = {0};
    rx_start(&rx, &loop, statuses, 1);
    char url[128];
    struct mgr_opts o = base_opts(url, sizeof url, rx.port, "/ready");
    struct mgr *m;
    assert_int_equal(mgr_new(&m, &loop, &o), 0);
    mgr_start(m);
    struct waiter w = {.m = m, .rx = &rx, .until_requests = 1};
    assert_true(run_until(&loop, &w, 5000));
    assert_string_equal(mgr_status(m), "registering");
    close_mgr(&loop, m);
    rx_stop(&rx);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(mgr_backoff_doubles_and_is_capped),
        cmocka_unit_test(mgr_worker_url_handles_wildcards_and_ipv6),
        cmocka_unit_test(mgr_test_mode_sends_nothing),
        cmocka_unit_test(mgr_rejects_a_non_http_callback_url),
        cmocka_unit_test(mgr_callback_retries_with_backoff_until_accepted),
        cmocka_unit_test(mgr_gives_up_after_max_retries_and_reports_failed),
        cmocka_unit_test(mgr_connection_refused_is_retried_then_fails),
        cmocka_unit_test(mgr_request_timeout_counts_as_a_failure),
        cmocka_unit_test(mgr_heartbeats_follow_registration),
        cmocka_unit_test(mgr_close_with_a_request_in_flight_frees_everything),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
