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
    struct resume_registry *resume; /* resumable streams of every adapter */
    struct sched *sched;
    enum api_state state;
    double progress;
    char failure[160];            /* api_set_failed: why the engine is gone; "" = none */
    uv_async_t async;
    uv_timer_t drain_timer;
    unsigned handles_open;
    bool closing;
    struct llorch_queue jobs;     /* every live job, of every adapter */
    uint32_t live;
    struct http_buf json;         /* scratch for whole responses */
    struct http_buf frame;        /* scratch for a frame with its id */
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

LLORCH_API bool api_request_grace(struct api *a, struct http_request *r, json_t *root,
                                  uint32_t *grace)
{
    uint32_t max = resume_registry_grace_ms(a->resume);
    *grace = json_is_true(json_object_get(root, "resumable")) ? max : 0;
    size_t hl = 0;
    const char *h = http_request_header(r, "x-resume-grace-ms", &hl);
    if (!h)
        return true;
    uint64_t v = 0;
    bool ok = hl > 0 && hl <= 10;
    for (size_t i = 0; ok && i < hl; i++) {
        ok = h[i] >= '0' && h[i] <= '9';
        v = v * 10 + (uint64_t)(h[i] - '0');
    }
    if (!ok) {
        http_respond_error(r, 400, "INVALID_HEADER",
                           "X-Resume-Grace-Ms must be a whole number of milliseconds", NULL);
        return false;
    }
    *grace = (uint32_t)LLORCH_MIN(v, (uint64_t)max);
    return true;
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
    resume_entry_free(&j->resume);
    a->live--; /* a drain in progress notices on its next poll */
    j->ops->free(j);
}

LLORCH_API void api_job_cancel(struct api_job *j, enum sched_error code)
{
    LLORCH_ASSERT_ON_LOOP(&j->api->loop_thread);
    if (j->api->sched)
        sched_cancel(j->api->sched, j->req_id, code);
}

/* Connection gone: keep the job until its terminal event, cancel it now;
 * a resumable one runs on, journaled, for its grace period (detached). */
static void api_job_on_abort(void *data)
{
    struct api_job *j = data;
    j->req = NULL;
    j->sse.req = NULL;
    if (resume_entry_detach(&j->resume))
        return;
    api_job_cancel(j, SCHED_ERR_CANCELLED);
}

/* Grace over with nobody back (resume.c): cancel the job as a dropped
 * connection does (counted as expired), or free it if it had ended. */
static void api_job_on_expire(void *ctx, struct resume_entry *e)
{
    struct api *a = ctx;
    struct api_job *j = llorch_container_of(e, struct api_job, resume);
    if (j->finished) {
        api_job_release(j); /* ended: its kept frames go */
        return;
    }
    metrics_counter_add(a->metrics, METRICS_C_RESUME_EXPIRED, 1);
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
    resume_entry_free(&j->resume); /* cut, not resumable: its journal goes too */
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

LLORCH_API bool api_job_writing(const struct api_job *j)
{
    return j->sse.req || j->resume.resumable;
}

/* Frames go to the reader when attached and to the journal when the job is
 * resumable (detached included), with their ids. */
LLORCH_API void api_job_send(struct api_job *j, const char *type, const char *data, size_t len,
                             bool force)
{
    LLORCH_ASSERT_ON_LOOP(&j->api->loop_thread);
    struct api *a = j->api;
    if (!api_job_writing(j))
        return;
    bool terminal = !strcmp(type, "end") || !strcmp(type, "error");
    if (resume_entry_frame(&j->resume, &a->frame, type, data, len, terminal) != 0)
        return;
    if (j->sse.req &&
        sse_stream_send_frame(&j->sse, a->frame.data, a->frame.len, force) == LLORCH_EFULL)
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
    j->resume.mode = mode; /* a resumed reader's head */
    if (!j->head_sent && !j->req && j->resume.resumable) {
        j->head_sent = true; /* dropped before its head: it begins in its journal */
        return 0;
    }
    if (j->head_sent || !j->req)
        return j->sse.req || j->resume.resumable ? 0 : LLORCH_EINVAL;
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
    /* a job id kept for a resumable stream (ended or not) is still taken */
    if (resume_registry_find(a->resume, j->job_id, j->job_id_len))
        return LLORCH_EEXISTS;
    resume_entry_init(&j->resume, a->resume, j->job_id, j->job_id_len, SSE_MODE_EVENT,
                      a->state == API_READY ? j->resume_grace_ms : 0, api_job_on_expire, a);
    j->resume.with_ids = j->frame_ids || j->resume.resumable;
    int rc = sched_submit(a->sched, req, &j->req_id);
    if (rc != 0) {
        resume_entry_free(&j->resume);
        return rc;
    }
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

/* The job's last frame is queued: a resumable job keeps its journal for its
 * grace even when its reader is attached (the last frames may still be in
 * flight when the connection drops); any other job goes now. */
static void api_job_end_or_keep(struct api_job *j)
{
    if (j->sse.req)
        sse_stream_end(&j->sse, false);
    j->req = NULL;
    if (j->api->state != API_DRAINING &&
        (j->resume.detached || resume_entry_detach(&j->resume))) {
        j->finished = true;
        return;
    }
    api_job_release(j);
}

LLORCH_API struct api_job *api_job_find_resumable(struct api *a, const struct api_job_ops *ops,
                                                  const char *job_id, size_t len)
{
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    struct resume_entry *e = resume_registry_find(a->resume, job_id, len);
    if (!e || e->expire != api_job_on_expire)
        return NULL;
    struct api_job *j = llorch_container_of(e, struct api_job, resume);
    return j->ops == ops ? j : NULL;
}

LLORCH_API int api_job_resume(struct api_job *j, struct http_request *r)
{
    struct api *a = j->api;
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    struct resume_entry *e = &j->resume;
    if (!e->detached || j->sse.req)
        return LLORCH_EAGAIN;
    size_t hl = 0;
    const char *h = http_request_header(r, "last-event-id", &hl);
    uint64_t from;
    int rc = resume_entry_parse_last_id(e, h, hl, &from);
    if (rc)
        return rc;
    if (sse_stream_begin(&j->sse, r, e->mode, a->sse_outbox_bytes) != 0) {
        j->sse.req = NULL; /* as api_job_begin_stream: the job stays detached */
        return 0;
    }
    j->req = r;
    metrics_counter_add(a->metrics, METRICS_C_RESUMES, 1);
    if (e->resumable && from < e->n_journal)
        metrics_counter_add(a->metrics, METRICS_C_RESUME_REPLAYED, e->n_journal - from);
    const char *data;
    size_t len;
    resume_entry_attach(e, from, &data, &len);
    if (len)
        sse_stream_send_frame(&j->sse, data, len, true); /* within --resume-job-bytes */
    if (j->finished) {
        api_job_end_or_keep(j); /* kept again for its grace */
        return 0;
    }
    http_request_on_abort(r, api_job_on_abort, j);
    if (!j->got_token && a->ping_interval_ms)
        http_request_timer_start(r, a->ping_interval_ms, api_job_ping, j);
    return 0;
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
    api_job_end_or_keep(j);
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
    resume_registry_expire_all(a->resume); /* nobody is coming back to a drain */
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

LLORCH_API void api_set_failed(struct api *a, const char *why)
{
    LLORCH_ASSERT_ON_LOOP(&a->loop_thread);
    snprintf(a->failure, sizeof a->failure, "%s", why && why[0] ? why : "engine failed");
}

LLORCH_API const char *api_failure(const struct api *a)
{
    return a->failure[0] ? a->failure : NULL;
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
    struct resume_limits rl = {.grace_ms = o->resume_grace_ms,
                               .job_bytes = o->resume_job_bytes ? o->resume_job_bytes : 1u << 20,
                               .total_bytes =
                                   o->resume_total_bytes ? o->resume_total_bytes : 64u << 20};
    int r = resume_registry_new(&a->resume, loop, &rl);
    if (r) {
        api_close(a);
        return r;
    }
    *out = a;
    return 0;
}

static void api_handle_closed(uv_handle_t *h)
{
    struct api *a = h->data;
    if (--a->handles_open > 0)
        return;
    http_buf_free(&a->json);
    http_buf_free(&a->frame);
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
    resume_registry_close(a->resume);
    a->resume = NULL;
    uv_timer_stop(&a->drain_timer);
    uv_close((uv_handle_t *)&a->async, api_handle_closed);
    uv_close((uv_handle_t *)&a->drain_timer, api_handle_closed);
}
