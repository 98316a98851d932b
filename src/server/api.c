/* The API core: readiness, auth, the event drain, the job registry and the
 * drain, JSON helpers and the SSE job skeleton shared by every protocol
 * adapter. A job (struct api_job, first in an adapter's job) is the
 * scheduler's `owner` for one generation from api_job_submit() until its
 * terminal event was taken. */
#include "api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "llorch/error.h"
#include "thread.h"
#include "util.h"

#define API_DRAIN_POLL_MS 20
#define API_DRAIN_GRACE_MS 5000   /* after SHUTTING_DOWN was sent to everything */

struct api {
    uv_loop_t *loop;
    struct llorch_thread loop_thread; /* recorded by api_new: every function but api_notify */
    struct http_server *srv;
    const char *api_key;
    uint64_t sse_outbox_bytes;
    uint32_t ping_interval_ms;
    struct metrics *metrics;
    struct log *log;
    struct sched *sched;
    enum api_state state;
    double progress;
    uv_async_t async;
    uv_timer_t drain_timer;
    unsigned handles_open;
    bool closing;
    struct llorch_queue jobs;     /* every live job, of every adapter */
    uint32_t live;
    struct http_buf json;         /* scratch for whole responses */
    char *text;                   /* scratch for sanitised text */
    size_t text_cap;
    /* drain */
    void (*drain_done)(void *ctx);
    void *drain_ctx;
    uint64_t drain_deadline;      /* uv_now() ms */
    bool drain_forced;
    uint64_t drain_forced_at;
    bool drain_fired;
};

/* ---- error codes ---- */

LLORCH_API enum api_error api_error_from_sched(enum sched_error e)
{
    return (unsigned)e < SCHED_ERR_COUNT_ ? (enum api_error)e : API_ERR_INFERENCE_FAILED;
}

LLORCH_API enum api_error api_error_from_submit(int rc)
{
    switch (rc) {
    case LLORCH_EFULL: return API_ERR_QUEUE_FULL;
    case LLORCH_EEXISTS: return API_ERR_JOB_EXISTS;
    case LLORCH_ESHUTDOWN: return API_ERR_SHUTTING_DOWN;
    case LLORCH_EINVAL:
    case LLORCH_EUTF8:
    case LLORCH_ETOOBIG: return API_ERR_INVALID_REQUEST;
    default: return API_ERR_INTERNAL;
    }
}

/* ---- JSON helpers ---- */

LLORCH_API int api_json_append(struct http_buf *b, json_t *o)
{
    if (!o)
        return LLORCH_ENOMEM;
    /* log-probs need no more than float precision */
    size_t flags = JSON_COMPACT | JSON_REAL_PRECISION(9);
    size_t n = json_dumpb(o, NULL, 0, flags);
    int r = LLORCH_ENOMEM;
    if (n && http_buf_reserve(b, n) == 0) {
        b->len += json_dumpb(o, b->data + b->len, n, flags);
        r = 0;
    }
    json_decref(o);
    return r;
}

LLORCH_API void api_respond_json(struct api *a, struct http_request *r, int status, json_t *o,
                                 const char *extra_headers)
{
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    a->json.len = 0;
    if (api_json_append(&a->json, o) != 0) {
        http_respond_error(r, 500, "INTERNAL", "out of memory", NULL);
        return;
    }
    http_respond(r, status, "application/json", extra_headers, a->json.data, a->json.len);
}

LLORCH_API const char *api_text_sanitize(struct api *a, const char *s, size_t len,
                                         size_t *out_len)
{
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    size_t need = len * 3 + 1;
    if (need > a->text_cap) {
        char *p = realloc(a->text, need);
        if (!p)
            return NULL;
        a->text = p;
        a->text_cap = need;
    }
    size_t n = sse_utf8_sanitize(s, len, a->text, a->text_cap);
    if (n == SIZE_MAX)
        return NULL;
    *out_len = n;
    return a->text;
}

LLORCH_API json_t *api_json_text(struct api *a, const char *s, size_t len)
{
    size_t n;
    const char *t = api_text_sanitize(a, s, len, &n);
    return t ? json_stringn_nocheck(t, n) : NULL;
}

LLORCH_API int api_json_append_string(struct api *a, struct http_buf *b, const char *s,
                                      size_t len)
{
    size_t n;
    const char *t = api_text_sanitize(a, s, len, &n);
    if (!t || http_buf_reserve(b, n * 6 + 2) != 0)
        return LLORCH_ENOMEM;
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        switch (c) {
        case '"': *o++ = '\\'; *o++ = '"'; break;
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        case '\t': *o++ = '\\'; *o++ = 't'; break;
        default:
            if (c < 0x20)
                o += snprintf(o, 7, "\\u%04x", c);
            else
                *o++ = (char)c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 0;
}

LLORCH_API size_t api_utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

LLORCH_API void api_number_text(const json_t *v, char *out, size_t cap)
{
    if (json_is_integer(v)) {
        snprintf(out, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return;
    }
    double d = json_number_value(v);
    for (int p = 1; p <= 17; p++) {
        snprintf(out, cap, "%.*g", p, d);
        if (strtod(out, NULL) == d)
            return;
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

LLORCH_API bool api_path_unescape(const char *s, size_t len, bool allow_slash, char *out,
                                  size_t cap, size_t *out_len)
{
    size_t n = 0;
    *out_len = 0;
    if (len == 0 || cap == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < len && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else if (c == '/' && !allow_slash) {
            return false;
        }
        if (n + 1 >= cap)
            return false;
        out[n++] = c;
    }
    out[n] = 0;
    *out_len = n;
    return true;
}

/* ---- auth ---- */

LLORCH_API bool api_has_key(const struct api *a)
{
    return a->api_key && a->api_key[0];
}

LLORCH_API bool api_authorized(const struct api *a, const struct http_request *r)
{
    if (!api_has_key(a))
        return true;
    const char *key = a->api_key;
    size_t klen = strlen(key);
    size_t hlen;
    const char *h = http_request_header(r, "authorization", &hlen);
    if (!h || hlen < 7 || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    hlen -= 7;
    while (hlen && (*h == ' ' || *h == '\t')) {
        h++;
        hlen--;
    }
    while (hlen && (h[hlen - 1] == ' ' || h[hlen - 1] == '\t'))
        hlen--;
    /* constant time in the key's length: no early exit on a mismatch */
    unsigned diff = (unsigned)(hlen ^ klen);
    for (size_t i = 0; i < klen; i++) {
        unsigned char c = hlen ? (unsigned char)h[i % hlen] : 0;
        diff |= c ^ (unsigned char)key[i];
    }
    return diff == 0;
}

LLORCH_API void api_respond_unauthorized(struct http_request *r)
{
    http_respond_error(r, 401, "UNAUTHORIZED", "missing or invalid bearer token",
                       "WWW-Authenticate: Bearer\r\n");
}

/* ---- jobs ---- */

static void api_job_id_text(const struct api_job *j, char *out)
{
    memcpy(out, j->job_id, j->job_id_len);
    out[j->job_id_len] = 0;
}

static void api_job_release(struct api_job *j)
{
    struct api *a = j->api;
    llorch_queue_remove(&j->node);
    sse_stream_free(&j->sse);
    a->live--; /* a drain in progress notices on its next poll */
    j->ops->free(j);
}

LLORCH_API void api_job_cancel(struct api_job *j, enum sched_error code)
{
    LLORCH_ASSERT_ON_LOOP(&j->api->loop_thread);
    if (j->api->sched)
        sched_cancel(j->api->sched, j->req_id, code);
}

/* Connection gone: keep the job until its terminal event, cancel it now. */
static void api_job_on_abort(void *data)
{
    struct api_job *j = data;
    j->req = NULL;
    j->sse.req = NULL;
    api_job_cancel(j, SCHED_ERR_CANCELLED);
}

/* The reader is too slow for the outbox bound: cancel the job (its ERROR
 * event, counted by code in the metrics, comes back and frees it), queue the
 * adapter's error frame past the bound and cut the connection
 * (sse_stream_cut: closed once flushed, or after a short grace if the reader
 * takes nothing). */
static void api_job_cut_slow(struct api_job *j)
{
    LLORCH_ASSERT_ON_LOOP(&j->api->loop_thread);
    struct api *a = j->api;
    api_job_cancel(j, SCHED_ERR_CLIENT_TOO_SLOW);
    if (log_enabled(a->log, LOG_LEVEL_WARN)) {
        char id[SCHED_JOB_ID_MAX];
        api_job_id_text(j, id);
        struct log_field f[] = {
            LOG_F_STR("job_id", id),
            LOG_F_STR("api", j->ops->api),
            LOG_F_STR("code", j->ops->error_code(API_ERR_CLIENT_TOO_SLOW)),
            LOG_F_UINT("token_frames", j->n_frames),
            LOG_F_UINT("queued_bytes", http_request_pending_bytes(j->sse.req)),
            LOG_F_UINT("outbox_bytes", j->sse.outbox_bytes),
        };
        log_write(a->log, LOG_LEVEL_WARN, "stream cut: the client reads too slowly", f,
                  LLORCH_ARRAY_SIZE(f));
    }
    j->ops->send_error(j, API_ERR_CLIENT_TOO_SLOW,
                       "the client reads slower than the stream is produced");
    sse_stream_cut(&j->sse);
    j->req = NULL;
}

LLORCH_API void api_job_send(struct api_job *j, const char *type, const char *data, size_t len,
                             bool force)
{
    LLORCH_ASSERT_ON_LOOP(&j->api->loop_thread);
    if (!j->sse.req)
        return;
    if (sse_stream_send(&j->sse, type, data, len, force) == LLORCH_EFULL)
        api_job_cut_slow(j);
}

static void api_job_ping(void *data)
{
    struct api_job *j = data;
    LLORCH_ASSERT_ON_LOOP(&j->api->loop_thread);
    if (!j->head_sent) {
        if (j->ops->ping_before_head)
            j->ops->ping_before_head(j);
        return;
    }
    if (j->sse.req && sse_stream_ping(&j->sse) == LLORCH_EFULL)
        api_job_cut_slow(j);
}

LLORCH_API int api_job_begin_stream(struct api_job *j, enum sse_mode mode)
{
    LLORCH_ASSERT_ON_LOOP(&j->api->loop_thread);
    if (j->head_sent || !j->req)
        return j->sse.req ? 0 : LLORCH_EINVAL;
    j->head_sent = true;
    int rc = sse_stream_begin(&j->sse, j->req, mode, j->api->sse_outbox_bytes);
    if (rc != 0) {
        j->sse.req = NULL;
        j->req = NULL;
        api_job_cancel(j, SCHED_ERR_CANCELLED);
    }
    return rc;
}

LLORCH_API int api_job_submit(struct api *a, struct api_job *j, const struct api_job_ops *ops,
                              struct http_request *r, struct sched_request *req, bool ping)
{
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    j->ops = ops;
    j->api = a;
    j->req = r;
    j->job_id_len = LLORCH_MIN(req->job_id_len, (size_t)SCHED_JOB_ID_MAX - 1);
    memcpy(j->job_id, req->job_id, j->job_id_len);
    req->owner = j;
    if (!a->sched)
        return LLORCH_ESHUTDOWN;
    int rc = sched_submit(a->sched, req, &j->req_id);
    if (rc != 0)
        return rc;
    llorch_queue_insert_tail(&a->jobs, &j->node);
    a->live++;
    http_request_on_abort(r, api_job_on_abort, j);
    if (ping && a->ping_interval_ms)
        http_request_timer_start(r, a->ping_interval_ms, api_job_ping, j);
    return 0;
}

/* One log line per finished job (END or ERROR), whichever API it came from. */
static void api_job_log_end(struct api_job *j, const struct sched_event *ev)
{
    struct api *a = j->api;
    if (!log_enabled(a->log, LOG_LEVEL_INFO))
        return;
    char id[SCHED_JOB_ID_MAX];
    api_job_id_text(j, id);
    if (ev->type == SCHED_EV_END) {
        struct log_field f[] = {
            LOG_F_STR("job_id", id),
            LOG_F_STR("api", j->ops->api),
            LOG_F_STR("stop_reason", sched_stop_reason_name(ev->u.end.reason)),
            LOG_F_UINT("tokens_in", ev->u.end.n_prompt_tokens),
            LOG_F_UINT("tokens_out", ev->u.end.tokens_out),
            LOG_F_UINT("ttft_ms", ev->u.end.ttft_ms),
            LOG_F_UINT("decode_time_ms", ev->u.end.decode_time_ms),
            LOG_F_BOOL("client_gone", j->req == NULL),
        };
        log_write(a->log, LOG_LEVEL_INFO, "job done", f, LLORCH_ARRAY_SIZE(f));
    } else {
        struct log_field f[] = {
            LOG_F_STR("job_id", id),
            LOG_F_STR("api", j->ops->api),
            LOG_F_STR("code", j->ops->error_code(api_error_from_sched(ev->u.error.code))),
            LOG_F_STR("error", ev->u.error.message),
            LOG_F_UINT("token_frames", j->n_frames),
        };
        log_write(a->log, LOG_LEVEL_INFO, "job ended with an error", f, LLORCH_ARRAY_SIZE(f));
    }
}

static void api_job_on_event(struct api_job *j, const struct sched_event *ev)
{
    LLORCH_ASSERT_ON_LOOP(&j->api->loop_thread);
    bool terminal = ev->type == SCHED_EV_END || ev->type == SCHED_EV_ERROR;
    if (ev->type == SCHED_EV_TOKEN && !j->got_token) {
        j->got_token = true;
        if (j->sse.req)
            http_request_timer_stop(j->sse.req);
    }
    if (terminal)
        api_job_log_end(j, ev);
    j->ops->on_event(j, ev);
    if (!terminal)
        return;
    if (j->sse.req)
        sse_stream_end(&j->sse, false);
    j->req = NULL;
    api_job_release(j);
}

/* ---- the event drain ---- */

static void api_async_cb(uv_async_t *h)
{
    struct api *a = h->data;
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    if (!a->sched)
        return;
    struct llorch_queue list, *q;
    llorch_queue_init(&list);
    sched_events_take(a->sched, &list);
    llorch_queue_foreach(q, &list) {
        struct sched_event *ev = llorch_container_of(q, struct sched_event, node);
        struct api_job *j = ev->owner;
        if (!j)
            continue;
        metrics_observe_event(a->metrics, ev, &j->metrics); /* before: it may free */
        api_job_on_event(j, ev);
    }
    sched_events_release(a->sched, &list);
}

LLORCH_API void api_notify(void *ctx)
{
    struct api *a = ctx;
    uv_async_send(&a->async);
}

/* ---- drain ---- */

static void api_drain_timer_cb(uv_timer_t *t)
{
    struct api *a = t->data;
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    uint64_t now = uv_now(a->loop);
    bool done = a->live == 0 && http_server_conn_count(a->srv) == 0;
    if (!done && !a->drain_forced && now >= a->drain_deadline) {
        a->drain_forced = true;
        a->drain_forced_at = now;
        if (a->sched)
            sched_shutdown_now(a->sched);
    }
    if (!done && a->drain_forced && now >= a->drain_forced_at + API_DRAIN_GRACE_MS)
        done = true;
    if (done && !a->drain_fired) {
        a->drain_fired = true;
        uv_timer_stop(t);
        if (a->drain_done)
            a->drain_done(a->drain_ctx);
    }
}

LLORCH_API void api_drain(struct api *a, uint32_t timeout_ms, void (*done)(void *ctx),
                          void *ctx)
{
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    if (a->state == API_DRAINING || a->closing)
        return;
    a->state = API_DRAINING;
    a->drain_done = done;
    a->drain_ctx = ctx;
    a->drain_deadline = uv_now(a->loop) + timeout_ms;
    http_server_drain(a->srv);
    if (a->sched)
        sched_drain(a->sched);
    uv_timer_start(&a->drain_timer, api_drain_timer_cb, 0, API_DRAIN_POLL_MS);
}

LLORCH_API bool api_draining(const struct api *a)
{
    return a->state == API_DRAINING;
}

LLORCH_API uint32_t api_live_jobs(const struct api *a)
{
    return a->live;
}

/* ---- state ---- */

LLORCH_API void api_set_loading(struct api *a, double progress)
{
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    a->state = API_LOADING;
    a->progress = progress;
}

LLORCH_API void api_set_ready(struct api *a, struct sched *s)
{
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    a->sched = s;
    if (a->state != API_DRAINING)
        a->state = API_READY;
}

LLORCH_API enum api_state api_state(const struct api *a)
{
    return a->state;
}

LLORCH_API double api_loading_progress(const struct api *a)
{
    return a->progress;
}

LLORCH_API bool api_is_ready(const struct api *a)
{
    return a->state == API_READY && a->sched;
}

LLORCH_API struct sched *api_sched(const struct api *a)
{
    return a->closing ? NULL : a->sched;
}

/* ---- lifecycle ---- */

LLORCH_API int api_new(struct api **out, uv_loop_t *loop, struct http_server *srv,
                       const struct api_opts *o)
{
    *out = NULL;
    struct api *a = calloc(1, sizeof(*a));
    if (!a)
        return LLORCH_ENOMEM;
    a->loop = loop;
    llorch_thread_record(&a->loop_thread);
    a->srv = srv;
    a->api_key = o->api_key;
    a->sse_outbox_bytes = o->sse_outbox_bytes;
    a->ping_interval_ms = o->ping_interval_ms;
    a->metrics = o->metrics;
    a->log = o->log;
    a->state = API_LOADING;
    llorch_queue_init(&a->jobs);
    if (uv_async_init(loop, &a->async, api_async_cb)) {
        free(a);
        return LLORCH_EUV;
    }
    a->async.data = a;
    uv_timer_init(loop, &a->drain_timer);
    a->drain_timer.data = a;
    a->handles_open = 2;
    *out = a;
    return 0;
}

static void api_handle_closed(uv_handle_t *h)
{
    struct api *a = h->data;
    if (--a->handles_open > 0)
        return;
    http_buf_free(&a->json);
    free(a->text);
    free(a);
}

LLORCH_API void api_close(struct api *a)
{
    if (!a || a->closing)
        return;
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    a->closing = true;
    a->sched = NULL;
    while (!llorch_queue_empty(&a->jobs)) {
        struct api_job *j =
            llorch_container_of(llorch_queue_head(&a->jobs), struct api_job, node);
        api_job_release(j);
    }
    uv_timer_stop(&a->drain_timer);
    uv_close((uv_handle_t *)&a->async, api_handle_closed);
    uv_close((uv_handle_t *)&a->drain_timer, api_handle_closed);
}
