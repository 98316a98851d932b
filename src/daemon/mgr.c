/* libcurl multi on the libuv loop, the way curl's multi-uv example does it:
 * curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION → one
 * uv_poll_t per socket) and when to call it back (CURLMOPT_TIMERFUNCTION →
 * one uv_timer_t); readiness and timeouts go to curl_multi_socket_action and
 * finished transfers are collected with curl_multi_info_read. At most two
 * transfers exist: the ready callback and a heartbeat.
 *
 * Retry policy: attempt 1 at mgr_start(); after a failure (transport error or
 * a non-2xx answer) attempt n+1 waits mgr_backoff_delay_ms(n), up to
 * 1 + max_retries attempts; then the status is "failed" and the worker keeps
 * serving. Heartbeats start once registered (the pool manager knows us). */
#include "mgr.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "llorch/config.h"
#include "llorch/error.h"
#include "queue.h"
#include "thread.h"
#include "util.h"

#define MGR_URL_MAX 2048
#define MGR_BODY_SNIPPET 200

enum xfer_kind { XFER_CALLBACK, XFER_HEARTBEAT };

struct xfer {
    struct mgr *m;
    enum xfer_kind kind;
    CURL *easy; /* NULL when idle */
    struct curl_slist *headers;
    char body[MGR_BODY_SNIPPET + 1]; /* start of the answer, for logs */
    size_t body_len;
    char errbuf[CURL_ERROR_SIZE];
};

struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct mgr *m;
    struct llorch_queue node;
};

struct mgr {
    uv_loop_t *loop;
    struct llorch_thread loop_thread; /* recorded by mgr_new: every function runs there */
    CURLM *multi;
    uv_timer_t curl_timer;  /* curl's own timeouts */
    uv_timer_t retry_timer; /* next callback attempt */
    uv_timer_t heartbeat_timer;
    struct xfer callback, heartbeat;
    struct llorch_queue socks; /* struct sock, open poll handles */
    unsigned handles_open;     /* uv handles not yet closed */
    bool started, closing, test_mode, curl_inited;
    void (*close_cb)(void *ctx);
    void *close_ctx;

    struct mgr_state st;
    char *callback_url;
    char *heartbeat_url;
    char *payload; /* ready payload JSON */
    char *worker_id;
    uint32_t max_retries, backoff_ms, backoff_max_ms, heartbeat_interval_s, timeout_ms;
    const char *(*health_status)(void *ctx);
    void *health_ctx;
    struct log *log;
    void (*count)(void *ctx, enum mgr_count what);
    void *count_ctx;
};

static const char *const status_names[] = {
    [MGR_DISABLED] = "disabled", [MGR_PENDING] = "pending",       [MGR_REGISTERING] = "registering",
    [MGR_RETRYING] = "retrying", [MGR_REGISTERED] = "registered", [MGR_FAILED] = "failed",
};

const char *mgr_status_name(enum mgr_status s)
{
    return (unsigned)s < LLORCH_ARRAY_SIZE(status_names) ? status_names[s] : "unknown";
}

const char *mgr_status(const struct mgr *m)
{
    return m ? mgr_status_name(m->st.status) : "disabled";
}

enum mgr_status mgr_state_get(const struct mgr *m, struct mgr_state *out)
{
    if (!m) {
        memset(out, 0, sizeof *out);
        out->status = MGR_DISABLED;
        return MGR_DISABLED;
    }
    LLORCH_ASSERT_ON_LOOP(&m->loop_thread);
    *out = m->st;
    return m->st.status;
}

uint32_t mgr_backoff_delay_ms(uint32_t backoff_ms, uint32_t backoff_max_ms, uint32_t n)
{
    uint64_t d = backoff_ms;
    for (uint32_t i = 1; i < n && d < backoff_max_ms; i++)
        d *= 2;
    return (uint32_t)LLORCH_MIN(d, (uint64_t)backoff_max_ms);
}

int mgr_format_worker_url(const char *host, uint16_t port, char *buf, size_t n)
{
    char name[256];
    if (!host || !*host || !strcmp(host, "0.0.0.0") || !strcmp(host, "::") ||
        !strcmp(host, "[::]")) {
        if (gethostname(name, sizeof name - 1) != 0 || !name[0])
            snprintf(name, sizeof name, "127.0.0.1");
        name[sizeof name - 1] = 0;
        host = name;
    }
    bool v6 = strchr(host, ':') && host[0] != '[';
    int w = snprintf(buf, n, "http://%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "", port);
    return w < 0 || (size_t)w >= n ? LLORCH_ETOOBIG : 0;
}

/* ---- logging helpers --------------------------------------------------- */

static void mgr_log(struct mgr *m, enum log_level level, const char *msg,
                    const struct log_field *f, size_t n)
{
    log_write(m->log, level, msg, f, n);
}

/* ---- handle bookkeeping -------------------------------------------------- */

static void mgr_count(struct mgr *m, enum mgr_count what)
{
    if (m->count)
        m->count(m->count_ctx, what);
}

/* The memory and the libcurl global reference of m (its handles are gone). */
static void mgr_release(struct mgr *m)
{
    if (m->curl_inited)
        curl_global_cleanup();
    free(m->callback_url);
    free(m->heartbeat_url);
    free(m->payload);
    free(m->worker_id);
    free(m);
}

static void mgr_maybe_free(struct mgr *m)
{
    if (!m->closing || m->handles_open)
        return;
    void (*cb)(void *) = m->close_cb;
    void *ctx = m->close_ctx;
    mgr_release(m);
    if (cb)
        cb(ctx);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct mgr *m = h->data;
    m->handles_open--;
    mgr_maybe_free(m);
}

static void on_sock_closed(uv_handle_t *h)
{
    struct sock *s = h->data;
    struct mgr *m = s->m;
    free(s);
    m->handles_open--;
    mgr_maybe_free(m);
}

static void sock_close(struct sock *s)
{
    llorch_queue_remove(&s->node);
    uv_poll_stop(&s->poll);
    s->poll.data = s;
    uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

/* ---- curl ↔ libuv -------------------------------------------------------- */

static void xfer_finish(struct xfer *x, CURLcode rc);

static void check_multi_info(struct mgr *m)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        CURLcode rc = msg->data.result;
        if (x)
            xfer_finish(x, rc);
    }
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct sock *s = p->data;
    struct mgr *m = s->m;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(m->multi, s->fd, flags, &running);
    check_multi_info(m);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    struct mgr *m = userp;
    struct sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(m->multi, fd, NULL);
            sock_close(s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return -1;
        s->fd = fd;
        s->m = m;
        if (uv_poll_init_socket(m->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        m->handles_open++;
        llorch_queue_insert_tail(&m->socks, &s->node);
        curl_multi_assign(m->multi, fd, s);
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

static void on_curl_timer(uv_timer_t *t)
{
    struct mgr *m = t->data;
    int running;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(m);
}

static int on_curl_timeout(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct mgr *m = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&m->curl_timer);
    else /* 0: as soon as possible, but never from inside curl */
        uv_timer_start(&m->curl_timer, on_curl_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    struct xfer *x = userp;
    size_t n = size * nmemb;
    size_t room = MGR_BODY_SNIPPET - x->body_len;
    size_t take = LLORCH_MIN(n, room);
    memcpy(x->body + x->body_len, data, take);
    x->body_len += take;
    x->body[x->body_len] = 0;
    return n;
}

/* Starts a POST of body to url on x. */
static int xfer_start(struct mgr *m, struct xfer *x, const char *url, const char *body)
{
    CURL *e = curl_easy_init();
    if (!e)
        return LLORCH_ENOMEM;
    x->body_len = 0;
    x->body[0] = 0;
    x->errbuf[0] = 0;
    x->headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (!x->headers) {
        curl_easy_cleanup(e);
        return LLORCH_ENOMEM;
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "llorch-cpud/" LLORCH_VERSION);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)m->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)LLORCH_MIN(m->timeout_ms, 5000u));
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    /* A fresh connection per POST: on a reused connection that the server
     * closed, curl silently resends, and an attempt would not be one POST. */
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    x->easy = e;
    if (curl_multi_add_handle(m->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        curl_slist_free_all(x->headers);
        x->headers = NULL;
        x->easy = NULL;
        return LLORCH_ECURL;
    }
    return 0;
}

static void xfer_release(struct mgr *m, struct xfer *x)
{
    if (!x->easy)
        return;
    curl_multi_remove_handle(m->multi, x->easy);
    curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    x->easy = NULL;
    x->headers = NULL;
}

/* ---- the ready callback --------------------------------------------------- */

static void callback_attempt(struct mgr *m);

static void on_retry_timer(uv_timer_t *t)
{
    callback_attempt(t->data);
}

static void heartbeat_send(struct mgr *m);

static void on_heartbeat_timer(uv_timer_t *t)
{
    heartbeat_send(t->data);
}

static void callback_failed(struct mgr *m, const char *why)
{
    mgr_count(m, MGR_COUNT_CALLBACK_FAILURE);
    snprintf(m->st.last_error, sizeof m->st.last_error, "%s", why);
    uint32_t retries_done = m->st.attempts - 1;
    if (retries_done >= m->max_retries) {
        m->st.status = MGR_FAILED;
        struct log_field f[] = {
            LOG_F_STR("url", m->callback_url),
            LOG_F_UINT("attempts", m->st.attempts),
            LOG_F_STR("error", why),
        };
        mgr_log(m, LOG_LEVEL_ERROR, "pool-manager callback failed; giving up (still serving)", f,
                LLORCH_ARRAY_SIZE(f));
        return;
    }
    uint32_t delay = mgr_backoff_delay_ms(m->backoff_ms, m->backoff_max_ms, m->st.attempts);
    m->st.status = MGR_RETRYING;
    struct log_field f[] = {
        LOG_F_STR("url", m->callback_url),
        LOG_F_UINT("attempt", m->st.attempts),
        LOG_F_STR("error", why),
        LOG_F_UINT("retry_in_ms", delay),
    };
    mgr_log(m, LOG_LEVEL_WARN, "pool-manager callback failed; retrying", f, LLORCH_ARRAY_SIZE(f));
    uv_timer_start(&m->retry_timer, on_retry_timer, delay, 0);
}

static void callback_attempt(struct mgr *m)
{
    LLORCH_ASSERT_ON_LOOP(&m->loop_thread);
    if (m->closing)
        return;
    m->st.attempts++;
    m->st.status = MGR_REGISTERING;
    mgr_count(m, MGR_COUNT_CALLBACK_ATTEMPT);
    int r = xfer_start(m, &m->callback, m->callback_url, m->payload);
    if (r) {
        char why[128];
        snprintf(why, sizeof why, "cannot start the request: %s", llorch_strerror(r));
        callback_failed(m, why);
    }
}

static void callback_done(struct mgr *m, CURLcode rc, long http, const char *errbuf,
                          const char *body)
{
    m->st.last_http_status = http;
    if (rc == CURLE_OK && http >= 200 && http < 300) {
        m->st.status = MGR_REGISTERED;
        m->st.last_error[0] = 0;
        struct log_field f[] = {
            LOG_F_STR("url", m->callback_url),
            LOG_F_UINT("attempt", m->st.attempts),
            LOG_F_INT("http_status", http),
        };
        mgr_log(m, LOG_LEVEL_INFO, "registered with the pool manager", f, LLORCH_ARRAY_SIZE(f));
        if (m->heartbeat_interval_s && m->heartbeat_url) {
            uint64_t period = (uint64_t)m->heartbeat_interval_s * 1000;
            uv_timer_start(&m->heartbeat_timer, on_heartbeat_timer, period, period);
        }
        return;
    }
    char why[512];
    if (rc != CURLE_OK)
        snprintf(why, sizeof why, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
    else
        snprintf(why, sizeof why, "HTTP %ld: %.200s", http, body);
    callback_failed(m, why);
}

/* ---- heartbeats ----------------------------------------------------------- */

static void heartbeat_send(struct mgr *m)
{
    if (m->closing || m->heartbeat.easy)
        return; /* the previous one is still in flight: skip a beat */
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    const char *health = m->health_status ? m->health_status(m->health_ctx) : "healthy";
    json_t *j = json_pack("{s:s, s:s, s:s}", "worker_id", m->worker_id, "timestamp", ts,
                          "health_status", health ? health : "healthy");
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!body)
        return;
    m->st.heartbeats_sent++;
    mgr_count(m, MGR_COUNT_HEARTBEAT);
    if (xfer_start(m, &m->heartbeat, m->heartbeat_url, body) != 0) {
        m->st.heartbeats_failed++;
        m->st.heartbeat_ok = false;
        mgr_count(m, MGR_COUNT_HEARTBEAT_FAILURE);
    }
    free(body);
}

static void heartbeat_done(struct mgr *m, CURLcode rc, long http, const char *errbuf)
{
    bool ok = rc == CURLE_OK && http >= 200 && http < 300;
    if (!ok) {
        m->st.heartbeats_failed++;
        mgr_count(m, MGR_COUNT_HEARTBEAT_FAILURE);
        /* Log the first failure of a run and every 10th, not every beat. */
        if (m->st.heartbeat_ok || m->st.heartbeats_failed % 10 == 1) {
            struct log_field f[] = {
                LOG_F_STR("url", m->heartbeat_url),
                LOG_F_INT("http_status", http),
                LOG_F_STR("error", rc != CURLE_OK ? (errbuf[0] ? errbuf : curl_easy_strerror(rc))
                                                  : "non-2xx answer"),
                LOG_F_UINT("failures", m->st.heartbeats_failed),
            };
            mgr_log(m, LOG_LEVEL_WARN, "pool-manager heartbeat failed", f, LLORCH_ARRAY_SIZE(f));
        }
    } else if (!m->st.heartbeat_ok) {
        struct log_field f[] = {LOG_F_STR("url", m->heartbeat_url)};
        mgr_log(m, LOG_LEVEL_DEBUG, "pool-manager heartbeat ok", f, 1);
    }
    m->st.heartbeat_ok = ok;
}

static void xfer_finish(struct xfer *x, CURLcode rc)
{
    struct mgr *m = x->m;
    long http = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &http);
    char errbuf[CURL_ERROR_SIZE];
    char body[MGR_BODY_SNIPPET + 1];
    memcpy(errbuf, x->errbuf, sizeof errbuf);
    memcpy(body, x->body, sizeof body);
    for (char *p = body; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    /* Release first: the handlers may start the next transfer on x. */
    xfer_release(m, x);
    if (x->kind == XFER_CALLBACK)
        callback_done(m, rc, http, errbuf, body);
    else
        heartbeat_done(m, rc, http, errbuf);
}

/* ---- lifecycle ------------------------------------------------------------ */

/* <scheme>://<host>[:port]/v1/heartbeat from the callback URL. */
static char *heartbeat_url_from(const char *callback)
{
    CURLU *u = curl_url();
    if (!u)
        return NULL;
    char *out = NULL;
    if (curl_url_set(u, CURLUPART_URL, callback, 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_PATH, "/v1/heartbeat", 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_QUERY, NULL, 0) == CURLUE_OK &&
        curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0) == CURLUE_OK) {
        char *s = NULL;
        if (curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK) {
            out = strdup(s);
            curl_free(s);
        }
    }
    curl_url_cleanup(u);
    return out;
}

static char *ready_payload(const struct mgr_opts *o)
{
    const char *url = o->worker_url ? o->worker_url : "";
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:I, s:s, s:i}", "worker_id",
                          o->worker_id ? o->worker_id : "", "url", url, "uri", url, "model_ref",
                          o->model_ref ? o->model_ref : "", "backend", "cpu", "device", 0,
                          "vram_bytes", 0, "memory_bytes", (json_int_t)o->memory_bytes,
                          "memory_type", "cpu", "port", (int)o->port);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    return s;
}

int mgr_new(struct mgr **out, uv_loop_t *loop, const struct mgr_opts *o)
{
    *out = NULL;
    struct mgr *m = calloc(1, sizeof *m);
    if (!m)
        return LLORCH_ENOMEM;
    m->loop = loop;
    llorch_thread_record(&m->loop_thread);
    llorch_queue_init(&m->socks);
    m->log = o->log;
    m->count = o->count;
    m->count_ctx = o->count_ctx;
    m->max_retries = o->max_retries;
    m->backoff_ms = o->backoff_ms ? o->backoff_ms : 500;
    m->backoff_max_ms = LLORCH_MAX(o->backoff_max_ms, m->backoff_ms);
    m->heartbeat_interval_s = o->heartbeat_interval_s;
    m->timeout_ms = o->timeout_ms ? o->timeout_ms : 10000;
    m->health_status = o->health_status;
    m->health_ctx = o->health_ctx;
    m->callback.m = m;
    m->callback.kind = XFER_CALLBACK;
    m->heartbeat.m = m;
    m->heartbeat.kind = XFER_HEARTBEAT;
    const char *cb = o->callback_url ? o->callback_url : "";
    m->test_mode = !*cb || strstr(cb, "localhost:9999") != NULL;
    m->st.status = m->test_mode ? MGR_DISABLED : MGR_PENDING;
    m->worker_id = strdup(o->worker_id ? o->worker_id : "");
    if (!m->worker_id)
        goto nomem;
    if (m->test_mode) {
        *out = m;
        return 0;
    }
    if (strlen(cb) >= MGR_URL_MAX || (strncmp(cb, "http://", 7) && strncmp(cb, "https://", 8))) {
        free(m->worker_id);
        free(m);
        return LLORCH_EINVAL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(m->worker_id);
        free(m);
        return LLORCH_ECURL;
    }
    m->curl_inited = true;
    m->callback_url = strdup(cb);
    m->heartbeat_url = heartbeat_url_from(cb);
    m->payload = ready_payload(o);
    if (!m->callback_url || !m->payload)
        goto nomem;
    if (!m->heartbeat_url) {
        mgr_release(m);
        return LLORCH_EINVAL;
    }
    m->multi = curl_multi_init();
    if (!m->multi)
        goto nomem;
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_curl_timeout);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    uv_timer_t *timers[] = {&m->curl_timer, &m->retry_timer, &m->heartbeat_timer};
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(timers); i++) {
        uv_timer_init(loop, timers[i]);
        timers[i]->data = m;
        m->handles_open++;
    }
    *out = m;
    return 0;
nomem:
    if (m->multi)
        curl_multi_cleanup(m->multi);
    mgr_release(m);
    return LLORCH_ENOMEM;
}

int mgr_start(struct mgr *m)
{
    if (m)
        LLORCH_ASSERT_ON_LOOP(&m->loop_thread);
    if (!m || m->test_mode) {
        if (m && !m->started) {
            m->started = true;
            mgr_log(m, LOG_LEVEL_INFO, "pool-manager callback disabled (test mode)", NULL, 0);
        }
        return 0;
    }
    if (m->started || m->closing)
        return 0;
    m->started = true;
    struct log_field f[] = {LOG_F_STR("url", m->callback_url)};
    mgr_log(m, LOG_LEVEL_INFO, "calling back the pool manager", f, 1);
    callback_attempt(m);
    return 0;
}

void mgr_close(struct mgr *m, void (*cb)(void *ctx), void *ctx)
{
    if (!m) {
        if (cb)
            cb(ctx);
        return;
    }
    LLORCH_ASSERT_ON_LOOP(&m->loop_thread);
    if (m->closing)
        return;
    m->closing = true;
    m->close_cb = cb;
    m->close_ctx = ctx;
    if (m->test_mode) {
        mgr_maybe_free(m);
        return;
    }
    xfer_release(m, &m->callback);
    xfer_release(m, &m->heartbeat);
    curl_multi_cleanup(m->multi); /* may report more sockets to remove */
    m->multi = NULL;
    while (!llorch_queue_empty(&m->socks))
        sock_close(llorch_container_of(llorch_queue_head(&m->socks), struct sock, node));
    uv_timer_t *timers[] = {&m->curl_timer, &m->retry_timer, &m->heartbeat_timer};
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(timers); i++) {
        uv_timer_stop(timers[i]);
        uv_close((uv_handle_t *)timers[i], on_handle_closed);
    }
}
