/* The worker contract: routes, validation, job streams and the drain. A job
 * (struct worker_job) is the scheduler's `owner` for one generation: it lives
 * from a successful sched_submit() until its terminal event has been taken,
 * whether or not its connection still exists (a dead or too slow connection
 * detaches it and cancels the request). */
#include "api_worker.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "llorch/error.h"
#include "queue.h"
#include "resume.h"
#include "sse.h"
#include "util.h"

#define API_PROMPT_MAX_CHARS 32768
#define API_MAX_TOKENS 2048
#define API_DRAIN_POLL_MS 20
#define API_DRAIN_GRACE_MS 5000   /* after SHUTTING_DOWN was sent to everything */

enum api_state { API_LOADING, API_READY, API_DRAINING };

struct api_worker {
    uv_loop_t *loop;
    struct http_server *srv;
    const struct config *cfg;
    struct api_worker_info info;
    void (*shutdown_cb)(void *ctx);
    void *shutdown_ctx;
    struct metrics *metrics;
    struct log *log;
    const struct mgr *mgr;
    struct sched *sched;
    enum api_state state;
    double progress;
    uv_async_t async;
    uv_timer_t drain_timer;
    unsigned handles_open;
    bool closing;
    struct llorch_queue jobs;
    uint32_t live;            /* our jobs + other modules' refs */
    struct http_buf json;     /* scratch for emitted JSON */
    struct http_buf frame;    /* scratch for a frame with its id */
    struct resume_registry *resume; /* resumable streams (resume.c) */
    char *text;               /* scratch for sanitised token text */
    size_t text_cap;
    /* drain */
    void (*drain_done)(void *ctx);
    void *drain_ctx;
    uint64_t drain_deadline;  /* uv_now() ms */
    bool drain_forced;
    uint64_t drain_forced_at;
    bool drain_fired;
};

struct worker_job {
    struct api_sink sink;     /* first: the owner pointer */
    struct api_worker *api;
    struct llorch_queue node;
    struct sse_stream sse;    /* sse.req != NULL while attached to a connection */
    uint64_t req_id;
    uint32_t n_frames;        /* token frames sent: their "i" */
    bool got_token;
    bool finished;            /* terminal event seen while detached: kept for a reader */
    enum sse_mode mode;
    struct resume_entry resume; /* frame ids; journal and grace when resumable */
    uint32_t n_stops;
    size_t stop_lens[DETOK_MAX_STOPS];
    char stops[DETOK_MAX_STOPS][DETOK_MAX_STOP_LEN];
    size_t job_id_len;
    char job_id[SCHED_JOB_ID_MAX];
};

/* ---- small helpers ---- */

static int dump_json(struct api_worker *a, json_t *o)
{
    a->json.len = 0;
    if (!o)
        return LLORCH_ENOMEM;
    size_t n = json_dumpb(o, NULL, 0, JSON_COMPACT);
    int r = LLORCH_ENOMEM;
    if (n && http_buf_reserve(&a->json, n) == 0) {
        a->json.len = json_dumpb(o, a->json.data, n, JSON_COMPACT);
        r = 0;
    }
    json_decref(o);
    return r;
}

static void respond_json(struct api_worker *a, struct http_request *r, int status, json_t *o,
                         const char *extra)
{
    if (dump_json(a, o) != 0) {
        http_respond_error(r, 500, "INTERNAL", "out of memory", NULL);
        return;
    }
    http_respond(r, status, "application/json", extra, a->json.data, a->json.len);
}

/* A JSON string of arbitrary bytes: invalid UTF-8 becomes U+FFFD. */
static json_t *json_text(struct api_worker *a, const char *s, size_t len)
{
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
    return json_stringn_nocheck(a->text, n);
}

static void iso8601_now(char *out, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

LLORCH_API bool api_worker_authorized(const struct api_worker *a, const struct http_request *r)
{
    const char *key = a->cfg->api_key;
    size_t klen = strlen(key);
    if (klen == 0)
        return true;
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

LLORCH_API void api_worker_respond_unauthorized(struct http_request *r)
{
    http_respond_error(r, 401, "UNAUTHORIZED", "missing or invalid bearer token",
                       "WWW-Authenticate: Bearer\r\n");
}

static bool check_auth(struct api_worker *a, struct http_request *r)
{
    if (api_worker_authorized(a, r))
        return true;
    api_worker_respond_unauthorized(r);
    return false;
}

/* ---- validation ---- */

/* "application/json" with optional parameters; NULL ct is a mismatch. */
static bool content_type_is_json(const char *ct, size_t len)
{
    if (!ct)
        return false;
    while (len && (*ct == ' ' || *ct == '\t')) {
        ct++;
        len--;
    }
    size_t n = 0;
    while (n < len && ct[n] != ';' && ct[n] != ' ' && ct[n] != '\t')
        n++;
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

/* jansson reports the position after the offending token; its text ends
 * with "near '<token>'", so step back over the token to point at its start. */
static size_t json_error_offset(const json_error_t *e)
{
    size_t pos = e->position > 0 ? (size_t)e->position : 0;
    const char *near = strstr(e->text, "near '");
    if (near) {
        const char *tok = near + 6;
        const char *end = strrchr(tok, '\'');
        if (end && (size_t)(end - tok) <= pos)
            pos -= (size_t)(end - tok);
    }
    return pos;
}

/* Shortest text that reads back as the same number. */
LLORCH_API void api_worker_number_text(const json_t *v, char *out, size_t cap)
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

/* A message as a JSON string, invalid UTF-8 replaced: messages quote the
 * request (jansson's "near '...'" may end inside a multi-byte character),
 * and json_pack refuses invalid UTF-8, which turned a 400 into a 500. */
static json_t *json_message(const char *message)
{
    char buf[3 * 1024 + 1];
    size_t n = sse_utf8_sanitize(message, strnlen(message, 1024), buf, sizeof(buf));
    return json_stringn(buf, n == SIZE_MAX ? 0 : n);
}

static char *error_obj_string(const char *code, const char *message)
{
    json_t *o = json_pack("{s:{s:s,s:o}}", "error", "code", code, "message", json_message(message));
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

static void add_violation(json_t *errs, const char *field, const char *constraint,
                          const char *message, json_t *value)
{
    json_t *e = json_pack("{s:s,s:s,s:o}", "field", field, "constraint", constraint, "message",
                          json_message(message));
    if (!e)
        return;
    if (value)
        json_object_set(e, "value", value);
    json_array_append_new(errs, e);
}

static void check_float(json_t *errs, const char *name, json_t *v, double lo, double hi,
                        const char *constraint)
{
    if (!v)
        return;
    double d = json_number_value(v);
    if (d >= lo && d <= hi)
        return;
    char num[64], msg[160];
    api_worker_number_text(v, num, sizeof(num));
    if (d < lo)
        snprintf(msg, sizeof(msg), "%s must be at least %.1f (got %s)", name, lo, num);
    else
        snprintf(msg, sizeof(msg), "%s must be at most %.1f (got %s)", name, hi, num);
    add_violation(errs, name, constraint, msg, v);
}

/* Finds which top-level key's value holds byte `off` of a JSON object text
 * (used to name the field of an invalid UTF-8 byte, which jansson refuses
 * before building anything). */
static bool field_at_offset(const char *b, size_t len, size_t off, char *field, size_t cap)
{
    size_t i = 0;
#define WS() while (i < len && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r')) i++
    WS();
    if (i >= len || b[i] != '{')
        return false;
    i++;
    for (;;) {
        WS();
        if (i >= len || b[i] != '"')
            return false;
        size_t ks = ++i;
        while (i < len && b[i] != '"')
            i += b[i] == '\\' ? 2 : 1;
        if (i >= len)
            return false;
        size_t ke = i++;
        if (off >= ks && off < ke) {
            snprintf(field, cap, "(key)");
            return true;
        }
        WS();
        if (i >= len || b[i] != ':')
            return false;
        i++;
        WS();
        size_t vs = i;
        int depth = 0;
        bool in_str = false;
        while (i < len) {
            char c = b[i];
            if (in_str) {
                if (c == '\\')
                    i++;
                else if (c == '"') {
                    in_str = false;
                    if (depth == 0) {
                        i++;
                        break;
                    }
                }
            } else if (c == '"') {
                in_str = true;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (depth == 0)
                    break;
                if (--depth == 0) {
                    i++;
                    break;
                }
            } else if (depth == 0 && (c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t')) {
                break;
            }
            i++;
        }
        if (off >= vs && off < i) {
            size_t n = LLORCH_MIN(ke - ks, cap - 1);
            memcpy(field, b + ks, n);
            field[n] = 0;
            return true;
        }
        WS();
        if (i >= len || b[i] != ',')
            return false;
        i++;
    }
#undef WS
}

enum field_kind { FK_STRING, FK_INTEGER, FK_NUMBER, FK_STOP };

static const struct field_spec {
    const char *name;
    enum field_kind kind;
    bool required;
} fields[] = {
    {"job_id", FK_STRING, true},      {"prompt", FK_STRING, true},
    {"max_tokens", FK_INTEGER, true}, {"temperature", FK_NUMBER, false},
    {"top_p", FK_NUMBER, false},      {"top_k", FK_INTEGER, false},
    {"repetition_penalty", FK_NUMBER, false},
    {"min_p", FK_NUMBER, false},      {"stop", FK_STOP, false},
    {"seed", FK_INTEGER, false},
};
enum { F_JOB_ID, F_PROMPT, F_MAX_TOKENS, F_TEMPERATURE, F_TOP_P, F_TOP_K, F_REP_PEN, F_MIN_P,
       F_STOP, F_SEED, F_COUNT_ };

static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

LLORCH_API int api_worker_validate(const char *content_type, size_t ct_len, const char *body,
                                   size_t len, struct api_worker_params *p, void **json_root,
                                   char **err_body)
{
    char msg[512];
    *json_root = NULL;
    *err_body = NULL;
    memset(p, 0, sizeof(*p));
    if (!content_type_is_json(content_type, ct_len)) {
        *err_body = error_obj_string("UNSUPPORTED_MEDIA_TYPE",
                                     "Content-Type must be application/json");
        return 415;
    }
    size_t bad;
    if (!sse_utf8_valid(body, len, &bad)) {
        char field[128];
        if (field_at_offset(body, len, bad, field, sizeof(field)))
            snprintf(msg, sizeof(msg), "field `%s` is not valid UTF-8 (byte offset %zu)", field, bad);
        else
            snprintf(msg, sizeof(msg), "request body is not valid UTF-8 (byte offset %zu)", bad);
        *err_body = error_obj_string("INVALID_UTF8", msg);
        return 400;
    }
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    if (!root) {
        snprintf(msg, sizeof(msg), "malformed JSON at byte offset %zu: %s", json_error_offset(&jerr),
                 jerr.text);
        *err_body = error_obj_string("INVALID_JSON", msg);
        return 400;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        *err_body = error_obj_string("INVALID_TYPE", "request body must be a JSON object");
        return 422;
    }
    json_t *v[F_COUNT_];
    for (size_t i = 0; i < F_COUNT_; i++) {
        const struct field_spec *f = &fields[i];
        v[i] = json_object_get(root, f->name);
        if (v[i] && json_is_null(v[i]))
            v[i] = NULL;
        if (!v[i]) {
            if (!f->required)
                continue;
            snprintf(msg, sizeof(msg), "missing required field `%s`", f->name);
            *err_body = error_obj_string("MISSING_FIELD", msg);
            json_decref(root);
            return 422;
        }
        const char *want = NULL;
        switch (f->kind) {
        case FK_STRING:
            if (!json_is_string(v[i]))
                want = "a string";
            break;
        case FK_INTEGER:
            if (!json_is_integer(v[i]))
                want = "an integer";
            break;
        case FK_NUMBER:
            if (!json_is_number(v[i]))
                want = "a number";
            break;
        case FK_STOP:
            if (json_is_array(v[i])) {
                size_t k;
                json_t *e;
                json_array_foreach(v[i], k, e) {
                    if (!json_is_string(e))
                        want = "an array of strings";
                }
            } else if (!json_is_string(v[i])) {
                want = "an array of strings";
            }
            break;
        }
        if (want) {
            snprintf(msg, sizeof(msg), "field `%s` must be %s", f->name, want);
            *err_body = error_obj_string("INVALID_TYPE", msg);
            json_decref(root);
            return 422;
        }
    }

    json_t *errs = json_array();
    char num[64];
    /* job_id */
    p->job_id = json_string_value(v[F_JOB_ID]);
    p->job_id_len = json_string_length(v[F_JOB_ID]);
    if (p->job_id_len == 0) {
        add_violation(errs, "job_id", "non_empty", "job_id must not be empty", v[F_JOB_ID]);
    } else if (p->job_id_len >= SCHED_JOB_ID_MAX) {
        snprintf(msg, sizeof(msg), "job_id must be at most %d bytes (got %zu)",
                 SCHED_JOB_ID_MAX - 1, p->job_id_len);
        char c[32];
        snprintf(c, sizeof(c), "max_length(%d)", SCHED_JOB_ID_MAX - 1);
        add_violation(errs, "job_id", c, msg, v[F_JOB_ID]);
    }
    /* prompt: counted in Unicode characters; value omitted */
    p->prompt = json_string_value(v[F_PROMPT]);
    p->prompt_len = json_string_length(v[F_PROMPT]);
    size_t chars = utf8_chars(p->prompt, p->prompt_len);
    if (chars < 1 || chars > API_PROMPT_MAX_CHARS) {
        snprintf(msg, sizeof(msg), "prompt must be between 1 and %d characters (got %zu)",
                 API_PROMPT_MAX_CHARS, chars);
        add_violation(errs, "prompt", "length(1..=32768)", msg, NULL);
    }
    /* max_tokens */
    json_int_t mt = json_integer_value(v[F_MAX_TOKENS]);
    if (mt < 1 || mt > API_MAX_TOKENS) {
        api_worker_number_text(v[F_MAX_TOKENS], num, sizeof(num));
        if (mt < 1)
            snprintf(msg, sizeof(msg), "max_tokens must be at least 1 (got %s)", num);
        else
            snprintf(msg, sizeof(msg), "max_tokens must be at most %d (got %s)", API_MAX_TOKENS, num);
        add_violation(errs, "max_tokens", "range(1..=2048)", msg, v[F_MAX_TOKENS]);
    }
    check_float(errs, "temperature", v[F_TEMPERATURE], 0.0, 2.0, "range(0.0..=2.0)");
    check_float(errs, "top_p", v[F_TOP_P], 0.0, 1.0, "range(0.0..=1.0)");
    if (v[F_TOP_K]) {
        json_int_t k = json_integer_value(v[F_TOP_K]);
        if (k < 0 || k > (json_int_t)UINT32_MAX) {
            api_worker_number_text(v[F_TOP_K], num, sizeof(num));
            snprintf(msg, sizeof(msg), "top_k must be %s %s (got %s)",
                     k < 0 ? "at least" : "at most", k < 0 ? "0" : "4294967295", num);
            add_violation(errs, "top_k", "range(0..=4294967295)", msg, v[F_TOP_K]);
        }
    }
    check_float(errs, "repetition_penalty", v[F_REP_PEN], 0.0, 2.0, "range(0.0..=2.0)");
    check_float(errs, "min_p", v[F_MIN_P], 0.0, 1.0, "range(0.0..=1.0)");
    /* stop: value omitted */
    if (v[F_STOP]) {
        size_t n = json_is_array(v[F_STOP]) ? json_array_size(v[F_STOP]) : 1;
        if (n > DETOK_MAX_STOPS) {
            snprintf(msg, sizeof(msg), "stop must have at most %d sequences (got %zu)",
                     DETOK_MAX_STOPS, n);
            add_violation(errs, "stop", "max_count(4)", msg, NULL);
        }
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_is_array(v[F_STOP]) ? json_array_get(v[F_STOP], i) : v[F_STOP];
            size_t sl = json_string_length(e);
            char fname[32];
            snprintf(fname, sizeof(fname), "stop[%zu]", i);
            if (sl == 0) {
                snprintf(msg, sizeof(msg), "%s must not be empty", fname);
                add_violation(errs, fname, "non_empty", msg, NULL);
            } else if (sl > DETOK_MAX_STOP_LEN) {
                snprintf(msg, sizeof(msg), "%s must be at most %d bytes (got %zu)", fname,
                         DETOK_MAX_STOP_LEN, sl);
                add_violation(errs, fname, "max_length(100)", msg, NULL);
            } else if (i < DETOK_MAX_STOPS) {
                p->sp.stops[i] = json_string_value(e);
                p->sp.stop_lens[i] = sl;
            }
        }
        p->sp.n_stops = (uint32_t)LLORCH_MIN(n, (size_t)DETOK_MAX_STOPS);
    }
    if (v[F_SEED] && json_integer_value(v[F_SEED]) < 0) {
        api_worker_number_text(v[F_SEED], num, sizeof(num));
        snprintf(msg, sizeof(msg), "seed must be at least 0 (got %s)", num);
        add_violation(errs, "seed", "range(0..=18446744073709551615)", msg, v[F_SEED]);
    }

    if (json_array_size(errs) > 0) {
        json_t *o = json_pack("{s:o}", "errors", errs);
        *err_body = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        json_decref(root);
        return 400;
    }
    json_decref(errs);
    p->sp.max_tokens = (uint32_t)mt;
    p->sp.temperature = v[F_TEMPERATURE] ? (float)json_number_value(v[F_TEMPERATURE]) : 1.0f;
    p->sp.top_p = v[F_TOP_P] ? (float)json_number_value(v[F_TOP_P]) : 1.0f;
    p->sp.top_k = v[F_TOP_K] ? (uint32_t)json_integer_value(v[F_TOP_K]) : 0;
    p->sp.repetition_penalty = v[F_REP_PEN] ? (float)json_number_value(v[F_REP_PEN]) : 1.0f;
    p->sp.min_p = v[F_MIN_P] ? (float)json_number_value(v[F_MIN_P]) : 0.0f;
    p->sp.seed = v[F_SEED] ? (uint64_t)json_integer_value(v[F_SEED]) : 42;
    *json_root = root;
    return 200;
}

/* ---- jobs and their streams ---- */

static void job_free(struct worker_job *j)
{
    struct api_worker *a = j->api;
    llorch_queue_remove(&j->node);
    sse_stream_free(&j->sse);
    resume_entry_free(&j->resume);
    free(j);
    a->live--; /* a drain in progress notices on its next poll */
}

/* Connection gone: keep the job until its terminal event, cancel it now. */
static void job_on_abort(void *data)
{
    struct worker_job *j = data;
    j->sse.req = NULL;
    if (resume_entry_detach(&j->resume))
        return; /* resumable: runs on, journaled, for its grace period */
    if (j->api->sched)
        sched_cancel(j->api->sched, j->req_id, SCHED_ERR_CANCELLED);
}

/* Grace over with nobody back (resume.c): cancel the job as a dropped
 * connection does (counted as expired), or free it if it had ended. */
static void job_on_expire(void *ctx, struct resume_entry *e)
{
    struct api_worker *a = ctx;
    struct worker_job *j = llorch_container_of(e, struct worker_job, resume);
    if (j->finished) {
        job_free(j); /* ended: its kept frames go */
        return;
    }
    metrics_counter_add(a->metrics, METRICS_C_RESUME_EXPIRED, 1);
    if (a->sched)
        sched_cancel(a->sched, j->req_id, SCHED_ERR_CANCELLED);
}

static void job_send(struct worker_job *j, const char *type, json_t *o, bool force);

static void job_send_error(struct worker_job *j, const char *code, const char *message)
{
    struct api_worker *a = j->api;
    json_t *o = json_pack("{s:s,s:s,s:o*}", "type", "error", "code", code, "message",
                          json_text(a, message, strlen(message)));
    job_send(j, "error", o, true);
}

/* Ends the response and detaches from the connection. */
static void job_finish_stream(struct worker_job *j, bool close_conn)
{
    if (!j->sse.req)
        return;
    sse_stream_end(&j->sse, close_conn);
}

/* The reader is too slow for the outbox bound: cancel the job (its ERROR
 * event, counted by code in the metrics, comes back and frees it), queue the
 * error frame past the bound and cut the connection (sse_stream_cut: closed
 * once flushed, or after a short grace if the reader takes nothing). */
static void job_cut_slow(struct worker_job *j)
{
    struct api_worker *a = j->api;
    if (a->sched)
        sched_cancel(a->sched, j->req_id, SCHED_ERR_CLIENT_TOO_SLOW);
    resume_entry_free(&j->resume); /* cut, not resumable: its journal goes too */
    if (log_enabled(a->log, CONFIG_LOG_WARN)) {
        char id[SCHED_JOB_ID_MAX];
        memcpy(id, j->job_id, j->job_id_len);
        id[j->job_id_len] = 0;
        struct log_field f[] = {
            LOG_F_STR("job_id", id),
            LOG_F_STR("code", "CLIENT_TOO_SLOW"),
            LOG_F_UINT("token_frames", j->n_frames),
            LOG_F_UINT("queued_bytes", http_request_pending_bytes(j->sse.req)),
            LOG_F_UINT("outbox_bytes", j->sse.outbox_bytes),
        };
        log_write(a->log, CONFIG_LOG_WARN, "stream cut: the client reads too slowly", f,
                  LLORCH_ARRAY_SIZE(f));
    }
    job_send_error(j, "CLIENT_TOO_SLOW", "client reads slower than the stream is produced");
    sse_stream_cut(&j->sse);
}

/* Frames go to the reader when attached and to the journal when the job is
 * resumable (detached included); every frame carries its id. */
static void job_send(struct worker_job *j, const char *type, json_t *o, bool force)
{
    struct api_worker *a = j->api;
    if (!j->sse.req && !j->resume.resumable) {
        json_decref(o);
        return;
    }
    if (dump_json(a, o) != 0)
        return;
    bool terminal = !strcmp(type, "end") || !strcmp(type, "error");
    if (resume_entry_frame(&j->resume, &a->frame, type, a->json.data, a->json.len, terminal) != 0)
        return;
    if (j->sse.req &&
        sse_stream_send_frame(&j->sse, a->frame.data, a->frame.len, force) == LLORCH_EFULL)
        job_cut_slow(j);
}

static void job_send_text(struct worker_job *j, const char *text, size_t len, bool force)
{
    struct api_worker *a = j->api;
    if (len == 0 || (!j->sse.req && !j->resume.resumable))
        return;
    json_t *o = json_pack("{s:s,s:o*,s:I}", "type", "token", "t", json_text(a, text, len), "i",
                          (json_int_t)j->n_frames);
    j->n_frames++;
    job_send(j, "token", o, force);
}

static void job_ping(void *data)
{
    struct worker_job *j = data;
    if (j->sse.req && sse_stream_ping(&j->sse) == LLORCH_EFULL)
        job_cut_slow(j);
}

/* One log line per finished job (END or ERROR). */
static void job_log_end(struct worker_job *j, const struct sched_event *ev)
{
    struct api_worker *a = j->api;
    if (!log_enabled(a->log, CONFIG_LOG_INFO))
        return;
    char id[SCHED_JOB_ID_MAX];
    memcpy(id, j->job_id, j->job_id_len);
    id[j->job_id_len] = 0;
    if (ev->type == SCHED_EV_END) {
        struct log_field f[] = {
            LOG_F_STR("job_id", id),
            LOG_F_STR("stop_reason", sched_stop_reason_name(ev->u.end.reason)),
            LOG_F_UINT("tokens_in", ev->u.end.n_prompt_tokens),
            LOG_F_UINT("tokens_out", ev->u.end.tokens_out),
            LOG_F_UINT("ttft_ms", ev->u.end.ttft_ms),
            LOG_F_UINT("decode_time_ms", ev->u.end.decode_time_ms),
            LOG_F_BOOL("client_gone", j->sse.req == NULL),
        };
        log_write(a->log, CONFIG_LOG_INFO, "job done", f, LLORCH_ARRAY_SIZE(f));
    } else {
        struct log_field f[] = {
            LOG_F_STR("job_id", id),
            LOG_F_STR("code", sched_error_name(ev->u.error.code)),
            LOG_F_STR("error", ev->u.error.message),
            LOG_F_UINT("token_frames", j->n_frames),
        };
        log_write(a->log, CONFIG_LOG_INFO, "job ended with an error", f, LLORCH_ARRAY_SIZE(f));
    }
}

/* The job's last frame is queued: a resumable job keeps its journal for its
 * grace even when its reader is attached (the last frames may still be in
 * flight when the connection drops); any other job goes now. */
static void job_end_or_keep(struct worker_job *j)
{
    job_finish_stream(j, false);
    if (j->resume.detached || resume_entry_detach(&j->resume)) {
        j->finished = true;
        return;
    }
    job_free(j);
}

static void job_on_event(struct api_sink *sink, const struct sched_event *ev)
{
    struct worker_job *j = (struct worker_job *)sink;
    struct api_worker *a = j->api;
    switch (ev->type) {
    case SCHED_EV_STARTED: {
        char ts[32];
        iso8601_now(ts, sizeof(ts));
        json_t *o = json_pack("{s:s,s:s#,s:s,s:s}", "type", "started", "job_id", j->job_id,
                              (int)j->job_id_len, "model", a->info.model, "started_at", ts);
        job_send(j, "started", o, false);
        break;
    }
    case SCHED_EV_TOKEN:
        if (!j->got_token) {
            j->got_token = true;
            if (j->sse.req)
                http_request_timer_stop(j->sse.req);
        }
        job_send_text(j, ev->u.token.text, ev->u.token.text_len, false);
        break;
    case SCHED_EV_END: {
        job_send_text(j, ev->u.end.text, ev->u.end.text_len, true);
        json_t *o = json_pack("{s:s,s:I,s:I,s:s}", "type", "end", "tokens_out",
                              (json_int_t)ev->u.end.tokens_out, "decode_time_ms",
                              (json_int_t)ev->u.end.decode_time_ms, "stop_reason",
                              sched_stop_reason_name(ev->u.end.reason));
        int32_t si = ev->u.end.stop_index;
        if (o && ev->u.end.reason == SCHED_STOP_SEQUENCE && si >= 0 && (uint32_t)si < j->n_stops)
            json_object_set_new(o, "stop_sequence_matched",
                                json_text(a, j->stops[si], j->stop_lens[si]));
        job_send(j, "end", o, true);
        job_log_end(j, ev);
        job_end_or_keep(j);
        break;
    }
    case SCHED_EV_ERROR:
        if (j->sse.req || (j->resume.resumable && !j->resume.ended)) {
            const char *m = ev->u.error.message;
            job_send_error(j, sched_error_name(ev->u.error.code),
                           m[0] ? m : sched_error_name(ev->u.error.code));
        }
        job_log_end(j, ev);
        job_end_or_keep(j);
        break;
    }
}

static void async_cb(uv_async_t *h)
{
    struct api_worker *a = h->data;
    if (!a->sched)
        return;
    struct llorch_queue list, *q;
    llorch_queue_init(&list);
    sched_events_take(a->sched, &list);
    llorch_queue_foreach(q, &list) {
        struct sched_event *ev = llorch_container_of(q, struct sched_event, node);
        struct api_sink *sink = ev->owner;
        if (sink)
            metrics_observe_event(a->metrics, ev, &sink->metrics); /* before: it may free */
        if (sink && sink->on_event)
            sink->on_event(sink, ev);
    }
    sched_events_release(a->sched, &list);
}

LLORCH_API void api_worker_notify(void *ctx)
{
    struct api_worker *a = ctx;
    uv_async_send(&a->async);
}

/* ---- handlers ---- */

static bool refuse_unless_ready(struct api_worker *a, struct http_request *r)
{
    if (a->state == API_LOADING) {
        http_respond_error(r, 503, "LOADING", "the model is loading", "Retry-After: 1\r\n");
        return true;
    }
    if (a->state == API_DRAINING || !a->sched) {
        http_respond_error(r, 503, "SHUTTING_DOWN", "the worker is shutting down", NULL);
        return true;
    }
    return false;
}

static void h_health(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    struct api_worker *a = ctx;
    if (a->state == API_LOADING) {
        respond_json(a, r, 503, json_pack("{s:s,s:f}", "status", "loading", "progress", a->progress),
                     NULL);
        return;
    }
    if (a->state == API_DRAINING || !a->sched) {
        respond_json(a, r, 503, json_pack("{s:s}", "status", "draining"), NULL);
        return;
    }
    struct sched_stats st;
    sched_stats(a->sched, &st);
    json_t *o = json_pack(
        "{s:s,s:b,s:I,s:I,s:s,s:s,s:s,s:I,s:I,s:I,"
        "s:{s:b,s:b,s:I,s:I,s:I,s:I,s:s,s:s,s:s,s:I},"
        "s:{s:I,s:I,s:I,s:I}}",
        "status", "healthy", "model_loaded", 1, "vram_bytes", (json_int_t)0, "memory_bytes",
        (json_int_t)a->info.memory_bytes, "memory_type", "cpu", "model", a->info.model, "arch",
        a->info.arch, "slots_total", (json_int_t)st.slots_total, "slots_busy",
        (json_int_t)st.slots_busy, "queue_depth", (json_int_t)st.queue_depth,
        "capabilities", "streaming", 1, "cancel", 1, "max_tokens", (json_int_t)API_MAX_TOKENS,
        "max_prompt_chars", (json_int_t)API_PROMPT_MAX_CHARS, "max_stop_sequences",
        (json_int_t)DETOK_MAX_STOPS, "n_ctx", (json_int_t)a->info.n_ctx, "dtype", a->info.dtype,
        "kv_type", a->info.kv_type, "isa", a->info.isa, "threads", (json_int_t)a->info.threads,
        "kv", "blocks_total", (json_int_t)st.kv.blocks_total, "blocks_used",
        (json_int_t)st.kv.blocks_used, "blocks_cached", (json_int_t)st.kv.blocks_cached,
        "seqs_active", (json_int_t)st.kv.seqs_active);
    if (o) /* jobs not yet at their terminal event (streams, cut or not) */
        json_object_set_new(o, "live_jobs", json_integer((json_int_t)a->live));
    if (o && a->mgr) {
        struct mgr_state ms;
        mgr_state_get(a->mgr, &ms);
        json_object_set_new(o, "pool_manager",
                            json_pack("{s:s,s:I,s:s}", "status", mgr_status_name(ms.status),
                                      "attempts", (json_int_t)ms.attempts, "last_error",
                                      ms.last_error));
    }
    respond_json(a, r, 200, o, NULL);
}

static void h_ready(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    struct api_worker *a = ctx;
    if (!check_auth(a, r))
        return;
    bool ready = a->state == API_READY && a->sched;
    respond_json(a, r, ready ? 200 : 503, json_pack("{s:b}", "ready", ready), NULL);
}

static void respond_raw_json(struct http_request *r, int status, char *body, const char *extra)
{
    if (!body) {
        http_respond_error(r, 500, "INTERNAL", "out of memory", NULL);
        return;
    }
    http_respond(r, status, "application/json", extra, body, strlen(body));
    free(body);
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

/* The grace a request asks for: "resumable": true in the body (the
 * configured grace), or X-Resume-Grace-Ms: N (at most the configured grace);
 * 0 = not resumable. False when a 400 was answered. */
LLORCH_API bool api_worker_request_grace(struct api_worker *a, struct http_request *r,
                                         json_t *root, uint32_t *grace)
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

LLORCH_API struct resume_registry *api_worker_resume(const struct api_worker *a)
{
    return a->resume;
}

LLORCH_API struct metrics *api_worker_metrics(const struct api_worker *a)
{
    return a->metrics;
}

LLORCH_API void api_worker_count_resume(struct api_worker *a, const struct resume_entry *e,
                                        uint64_t from)
{
    metrics_counter_add(a->metrics, METRICS_C_RESUMES, 1);
    if (e->resumable && from < e->n_journal)
        metrics_counter_add(a->metrics, METRICS_C_RESUME_REPLAYED, e->n_journal - from);
}

/* GET /execute/{job_id} and GET /v1/inference/{job_id} with Last-Event-ID:
 * the frames after that id, then the rest live, in the mode the job began
 * with. */
static void h_resume(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    struct api_worker *a = ctx;
    if (!check_auth(a, r) || refuse_unless_ready(a, r))
        return;
    char id[SCHED_JOB_ID_MAX];
    size_t n = 0;
    bool ok = tail_len > 0;
    for (size_t i = 0; ok && i < tail_len; i++) {
        char c = tail[i];
        if (c == '%' && i + 2 < tail_len && hexval(tail[i + 1]) >= 0 &&
            hexval(tail[i + 2]) >= 0) {
            c = (char)(hexval(tail[i + 1]) * 16 + hexval(tail[i + 2]));
            i += 2;
        } else if (c == '/') {
            ok = false;
        }
        if (n + 1 >= sizeof(id))
            ok = false;
        else
            id[n++] = c;
    }
    struct resume_entry *e = ok ? resume_registry_find(a->resume, id, n) : NULL;
    if (e && e->expire != job_on_expire)
        e = NULL; /* another API's job (an OpenAI stream) */
    if (!e) {
        http_respond_error(r, 404, "RESUME_NOT_FOUND",
                           "no resumable stream with this job_id (unknown, not resumable, "
                           "expired, or over the journal bound)", NULL);
        return;
    }
    struct worker_job *j = llorch_container_of(e, struct worker_job, resume);
    if (!e->detached || j->sse.req) {
        http_respond_error(r, 409, "STREAM_ATTACHED",
                           "this job's stream is being read on another connection", NULL);
        return;
    }
    size_t hl = 0;
    const char *h = http_request_header(r, "last-event-id", &hl);
    uint64_t from;
    int rc = resume_entry_parse_last_id(e, h, hl, &from);
    if (rc == LLORCH_ERANGE) {
        http_respond_error(r, 400, "LAST_EVENT_ID_PAST_END",
                           "Last-Event-ID is past the last frame of this job", NULL);
        return;
    }
    if (rc) {
        http_respond_error(r, 400, "INVALID_LAST_EVENT_ID",
                           "Last-Event-ID must be an id of this job's frames (<job_id>:<index>)",
                           NULL);
        return;
    }
    if (sse_stream_begin(&j->sse, r, j->mode, a->cfg->sse_outbox_bytes) != 0) {
        j->sse.req = NULL;
        return;
    }
    const char *data;
    size_t len;
    api_worker_count_resume(a, e, from);
    resume_entry_attach(e, from, &data, &len);
    if (len)
        sse_stream_send_frame(&j->sse, data, len, true); /* within --resume-job-bytes */
    if (j->finished) {
        job_end_or_keep(j); /* kept again for its grace */
        return;
    }
    http_request_on_abort(r, job_on_abort, j);
    if (!j->got_token && a->cfg->ping_interval_ms)
        http_request_timer_start(r, a->cfg->ping_interval_ms, job_ping, j);
}

static void handle_generate(struct api_worker *a, struct http_request *r, enum sse_mode mode)
{
    if (!check_auth(a, r) || refuse_unless_ready(a, r))
        return;
    size_t ctl = 0;
    const char *ct = http_request_header(r, "content-type", &ctl);
    struct api_worker_params p;
    void *root;
    char *err;
    int status = api_worker_validate(ct, ctl, r->body, r->body_len, &p, &root, &err);
    if (status != 200) {
        respond_raw_json(r, status, err, NULL);
        return;
    }
    uint32_t grace = 0;
    if (!api_worker_request_grace(a, r, root, &grace)) {
        json_decref(root);
        return;
    }
    if (resume_registry_find(a->resume, p.job_id, p.job_id_len)) {
        json_decref(root);
        http_respond_error(r, 409, "JOB_EXISTS",
                           "job_id is held for a resumable stream (GET /execute/{job_id})", NULL);
        return;
    }
    struct worker_job *j = calloc(1, sizeof(*j));
    if (!j) {
        json_decref(root);
        http_respond_error(r, 500, "INTERNAL", "out of memory", NULL);
        return;
    }
    j->sink.on_event = job_on_event;
    j->api = a;
    j->mode = mode;
    resume_entry_init(&j->resume, a->resume, p.job_id, p.job_id_len, mode, grace, job_on_expire, a);
    memcpy(j->job_id, p.job_id, p.job_id_len);
    j->job_id_len = p.job_id_len;
    j->n_stops = p.sp.n_stops;
    for (uint32_t i = 0; i < p.sp.n_stops; i++) {
        memcpy(j->stops[i], p.sp.stops[i], p.sp.stop_lens[i]);
        j->stop_lens[i] = p.sp.stop_lens[i];
    }
    struct sched_request req = {
        .job_id = p.job_id,
        .job_id_len = p.job_id_len,
        .prompt = p.prompt,
        .prompt_len = p.prompt_len,
        .add_bos = a->info.add_bos,
        .parse_special = false,
        .params = p.sp,
        .owner = &j->sink,
    };
    int rc = sched_submit(a->sched, &req, &j->req_id);
    if (rc != 0) {
        char msg[400];
        resume_entry_free(&j->resume);
        free(j);
        switch (rc) {
        case LLORCH_EFULL:
            http_respond_error(r, 503, "QUEUE_FULL", "the request queue is full",
                               "Retry-After: 1\r\n");
            break;
        case LLORCH_EEXISTS:
            snprintf(msg, sizeof(msg), "job_id `%.*s` is already running", (int)LLORCH_MIN(p.job_id_len, 256), p.job_id);
            http_respond_error(r, 409, "JOB_EXISTS", msg, NULL);
            break;
        case LLORCH_ESHUTDOWN:
            http_respond_error(r, 503, "SHUTTING_DOWN", "the worker is shutting down", NULL);
            break;
        case LLORCH_EINVAL:
        case LLORCH_EUTF8:
        case LLORCH_ETOOBIG:
            snprintf(msg, sizeof(msg), "request rejected: %s", llorch_strerror(rc));
            http_respond_error(r, 400, "INVALID_REQUEST", msg, NULL);
            break;
        default:
            snprintf(msg, sizeof(msg), "submit failed: %s", llorch_strerror(rc));
            http_respond_error(r, 500, "INTERNAL", msg, NULL);
            break;
        }
        json_decref(root);
        return;
    }
    json_decref(root); /* the scheduler copied what it needs */
    llorch_queue_insert_tail(&a->jobs, &j->node);
    a->live++;
    http_request_on_abort(r, job_on_abort, j);
    if (sse_stream_begin(&j->sse, r, mode, a->cfg->sse_outbox_bytes) != 0) {
        j->sse.req = NULL;
        sched_cancel(a->sched, j->req_id, SCHED_ERR_CANCELLED);
        return;
    }
    if (a->cfg->ping_interval_ms)
        http_request_timer_start(r, a->cfg->ping_interval_ms, job_ping, j);
}

static void h_execute(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    handle_generate(ctx, r, SSE_MODE_EVENT);
}

static void h_inference(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    handle_generate(ctx, r, SSE_MODE_DATA);
}

static int cancel_job(struct api_worker *a, const char *id, size_t len)
{
    if (!a->sched || len == 0)
        return LLORCH_ENOTFOUND;
    return sched_cancel_job(a->sched, id, len, SCHED_ERR_CANCELLED);
}

static void h_cancel(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    struct api_worker *a = ctx;
    if (!check_auth(a, r))
        return;
    size_t ctl = 0;
    const char *ct = http_request_header(r, "content-type", &ctl);
    if (ct && !content_type_is_json(ct, ctl)) {
        http_respond_error(r, 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json",
                           NULL);
        return;
    }
    json_error_t jerr;
    json_t *root = json_loadb(r->body, r->body_len, 0, &jerr);
    if (!root) {
        char msg[300];
        snprintf(msg, sizeof(msg), "malformed JSON at byte offset %zu: %s", json_error_offset(&jerr),
                 jerr.text);
        http_respond_error(r, 400, "INVALID_JSON", msg, NULL);
        return;
    }
    json_t *id = json_is_object(root) ? json_object_get(root, "job_id") : NULL;
    if (!id || json_is_null(id)) {
        http_respond_error(r, 422, "MISSING_FIELD", "missing required field `job_id`", NULL);
    } else if (!json_is_string(id)) {
        http_respond_error(r, 422, "INVALID_TYPE", "field `job_id` must be a string", NULL);
    } else if (cancel_job(a, json_string_value(id), json_string_length(id)) == 0) {
        respond_json(a, r, 202,
                     json_pack("{s:O,s:s}", "job_id", id, "status", "cancelling"), NULL);
    } else {
        http_respond_error(r, 404, "NOT_FOUND", "no queued or running job with this job_id", NULL);
    }
    json_decref(root);
}


static void h_delete_inference(void *ctx, struct http_request *r, const char *tail,
                               size_t tail_len)
{
    struct api_worker *a = ctx;
    if (!check_auth(a, r))
        return;
    char id[SCHED_JOB_ID_MAX];
    size_t n = 0;
    bool ok = tail_len > 0;
    for (size_t i = 0; ok && i < tail_len; i++) {
        char c = tail[i];
        if (c == '%' && i + 2 < tail_len && hexval(tail[i + 1]) >= 0 &&
            hexval(tail[i + 2]) >= 0) {
            c = (char)(hexval(tail[i + 1]) * 16 + hexval(tail[i + 2]));
            i += 2;
        } else if (c == '/') {
            ok = false;
            break;
        }
        if (n + 1 >= sizeof(id)) {
            ok = false;
            break;
        }
        id[n++] = c;
    }
    if (ok && cancel_job(a, id, n) == 0)
        http_respond(r, 204, NULL, NULL, "", 0);
    else
        http_respond_error(r, 404, "NOT_FOUND", "no queued or running job with this id", NULL);
}

static void h_shutdown(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    struct api_worker *a = ctx;
    if (!check_auth(a, r))
        return;
    if (a->cfg->api_key[0] == 0 && !r->peer_is_loopback) {
        http_respond_error(r, 403, "FORBIDDEN",
                           "shutdown is allowed only from loopback or with the API key", NULL);
        return;
    }
    respond_json(a, r, 202, json_pack("{s:s}", "status", "draining"), NULL);
    if (a->shutdown_cb)
        a->shutdown_cb(a->shutdown_ctx);
}

/* ---- drain ---- */

static void drain_timer_cb(uv_timer_t *t)
{
    struct api_worker *a = t->data;
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

LLORCH_API void api_worker_drain(struct api_worker *a, uint32_t timeout_ms,
                                 void (*done)(void *ctx), void *ctx)
{
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
    uv_timer_start(&a->drain_timer, drain_timer_cb, 0, API_DRAIN_POLL_MS);
}

LLORCH_API bool api_worker_draining(const struct api_worker *a)
{
    return a->state == API_DRAINING;
}

LLORCH_API void api_worker_job_ref(struct api_worker *a)
{
    a->live++;
}

LLORCH_API void api_worker_job_unref(struct api_worker *a)
{
    a->live--;
}

LLORCH_API uint32_t api_worker_live_jobs(const struct api_worker *a)
{
    return a->live;
}

/* ---- lifecycle ---- */

LLORCH_API void api_worker_set_loading(struct api_worker *a, double progress)
{
    a->state = API_LOADING;
    a->progress = progress;
}

LLORCH_API void api_worker_set_info(struct api_worker *a, const struct api_worker_info *info)
{
    a->info = *info;
    if (!a->info.model)
        a->info.model = "";
    if (!a->info.arch)
        a->info.arch = "";
    if (!a->info.dtype)
        a->info.dtype = "";
    if (!a->info.isa)
        a->info.isa = "";
    if (!a->info.kv_type)
        a->info.kv_type = "";
}

LLORCH_API void api_worker_set_ready(struct api_worker *a, struct sched *s)
{
    a->sched = s;
    if (a->state != API_DRAINING)
        a->state = API_READY;
}

LLORCH_API bool api_worker_is_ready(const struct api_worker *a)
{
    return a->state == API_READY && a->sched;
}

LLORCH_API void api_worker_set_mgr(struct api_worker *a, const struct mgr *m)
{
    a->mgr = m;
}

LLORCH_API struct sched *api_worker_sched(const struct api_worker *a)
{
    return a->closing ? NULL : a->sched;
}

LLORCH_API int api_worker_new(struct api_worker **out, uv_loop_t *loop, struct http_server *srv,
                              const struct api_worker_opts *o)
{
    *out = NULL;
    struct api_worker *a = calloc(1, sizeof(*a));
    if (!a)
        return LLORCH_ENOMEM;
    a->loop = loop;
    a->srv = srv;
    a->cfg = o->cfg;
    api_worker_set_info(a, &o->info);
    a->shutdown_cb = o->shutdown_cb;
    a->shutdown_ctx = o->shutdown_ctx;
    a->metrics = o->metrics;
    a->log = o->log;
    a->state = API_LOADING;
    llorch_queue_init(&a->jobs);
    int r = uv_async_init(loop, &a->async, async_cb);
    if (r) {
        free(a);
        return LLORCH_EUV;
    }
    a->async.data = a;
    uv_timer_init(loop, &a->drain_timer);
    a->drain_timer.data = a;
    a->handles_open = 2;
    struct resume_limits rl = {.grace_ms = a->cfg->resume_grace_ms,
                               .job_bytes = a->cfg->resume_job_bytes,
                               .total_bytes = a->cfg->resume_total_bytes};
    r = resume_registry_new(&a->resume, loop, &rl);
    if (r) {
        api_worker_close(a);
        return r;
    }

    static const struct {
        unsigned methods;
        const char *path;
        bool prefix;
        http_handler_fn fn;
    } routes[] = {
        {LLORCH_HTTP_GET, "/health", false, h_health},
        {LLORCH_HTTP_GET, "/v1/health", false, h_health},
        {LLORCH_HTTP_GET, "/v1/ready", false, h_ready},
        {LLORCH_HTTP_POST, "/execute", false, h_execute},
        {LLORCH_HTTP_POST, "/v1/inference", false, h_inference},
        {LLORCH_HTTP_DELETE, "/v1/inference/", true, h_delete_inference},
        {LLORCH_HTTP_GET, "/v1/inference/", true, h_resume},
        {LLORCH_HTTP_GET, "/execute/", true, h_resume},
        {LLORCH_HTTP_POST, "/cancel", false, h_cancel},
        {LLORCH_HTTP_POST, "/v1/admin/shutdown", false, h_shutdown},
        {LLORCH_HTTP_POST, "/v1/shutdown", false, h_shutdown},
    };
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(routes); i++) {
        r = http_server_route(srv, routes[i].methods, routes[i].path, routes[i].prefix,
                              routes[i].fn, a);
        if (r) {
            api_worker_close(a);
            return r;
        }
    }
    *out = a;
    return 0;
}

static void api_handle_closed(uv_handle_t *h)
{
    struct api_worker *a = h->data;
    if (--a->handles_open > 0)
        return;
    http_buf_free(&a->json);
    http_buf_free(&a->frame);
    free(a->text);
    free(a);
}

LLORCH_API void api_worker_close(struct api_worker *a)
{
    if (!a || a->closing)
        return;
    a->closing = true;
    a->sched = NULL;
    while (!llorch_queue_empty(&a->jobs)) {
        struct worker_job *j =
            llorch_container_of(llorch_queue_head(&a->jobs), struct worker_job, node);
        llorch_queue_remove(&j->node);
        sse_stream_free(&j->sse);
        resume_entry_free(&j->resume);
        free(j);
    }
    resume_registry_close(a->resume);
    a->resume = NULL;
    uv_timer_stop(&a->drain_timer);
    uv_close((uv_handle_t *)&a->async, api_handle_closed);
    uv_close((uv_handle_t *)&a->drain_timer, api_handle_closed);
}
