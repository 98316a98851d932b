/* The worker contract: routes, validation and the frames of its job
 * streams, over the API core (api.h), which owns the jobs' lifecycle. A
 * worker job is an api_job plus what its frames need (stop strings for
 * `stop_sequence_matched`). */
#include "api_worker.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "llorch/error.h"
#include "sse.h"
#include "util.h"

#define API_PROMPT_MAX_CHARS 32768
#define API_MAX_TOKENS 2048

struct api_worker {
    struct api *core;
    struct api_worker_info info;
    void (*shutdown_cb)(void *ctx);
    void *shutdown_ctx;
    void (*health_extra)(void *ctx, void *json_obj);
    void *health_extra_ctx;
    void (*pool_manager)(void *ctx, struct api_worker_pm_state *out);
    void *pool_manager_ctx;
    struct http_buf json;     /* scratch for frames */
};

struct worker_job {
    struct api_job base;      /* first: the scheduler's owner */
    struct api_worker *api;
    uint32_t n_stops;
    size_t stop_lens[DETOK_MAX_STOPS];
    char stops[DETOK_MAX_STOPS][DETOK_MAX_STOP_LEN];
};

/* The worker contract's wire name and HTTP status of every api_error. A
 * generation's stream head is sent at submission, so the errors of a job
 * that was accepted arrive as `error` frames (their status is not sent). */
static const struct worker_error {
    int status;
    const char *code;
    const char *extra_headers;
} worker_errors[API_ERR_COUNT_] = {
    [API_ERR_CANCELLED] = {499, "CANCELLED", NULL},
    [API_ERR_TIMEOUT] = {504, "TIMEOUT", NULL},
    [API_ERR_INVALID_REQUEST] = {400, "INVALID_REQUEST", NULL},
    [API_ERR_INFERENCE_FAILED] = {500, "INFERENCE_FAILED", NULL},
    [API_ERR_KV_EXHAUSTED] = {503, "KV_EXHAUSTED", NULL},
    [API_ERR_CLIENT_TOO_SLOW] = {503, "CLIENT_TOO_SLOW", NULL},
    [API_ERR_SHUTTING_DOWN] = {503, "SHUTTING_DOWN", NULL},
    /* the contract has one name for "does not fit" */
    [API_ERR_CONTEXT_EXCEEDED] = {400, "KV_EXHAUSTED", NULL},
    [API_ERR_PROMPT_TOO_LARGE] = {400, "KV_EXHAUSTED", NULL},
    [API_ERR_QUEUE_FULL] = {503, "QUEUE_FULL", "Retry-After: 1\r\n"},
    [API_ERR_JOB_EXISTS] = {409, "JOB_EXISTS", NULL},
    [API_ERR_LOADING] = {503, "LOADING", "Retry-After: 1\r\n"},
    [API_ERR_INTERNAL] = {500, "INTERNAL", NULL},
};

static const struct worker_error *worker_error_of(enum api_error e)
{
    return &worker_errors[(unsigned)e < API_ERR_COUNT_ ? e : API_ERR_INTERNAL];
}

LLORCH_API int api_worker_error_wire(enum api_error e, const char **code)
{
    const struct worker_error *w = worker_error_of(e);
    *code = w->code;
    return w->status;
}

static void respond_error(struct http_request *r, enum api_error e, const char *message)
{
    const struct worker_error *w = worker_error_of(e);
    http_respond_error(r, w->status, w->code, message, w->extra_headers);
}

/* ---- small helpers ---- */

static void respond_json(struct api_worker *a, struct http_request *r, int status, json_t *o,
                         const char *extra)
{
    api_respond_json(a->core, r, status, o, extra);
}

static void iso8601_now(char *out, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static bool check_auth(struct api_worker *a, struct http_request *r)
{
    if (api_authorized(a->core, r))
        return true;
    api_respond_unauthorized(r);
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
    api_number_text(v, num, sizeof(num));
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

struct api_worker_params;
typedef void (*field_check_fn)(json_t *errs, json_t *v, struct api_worker_params *p);

static void check_job_id(json_t *errs, json_t *v, struct api_worker_params *p);
static void check_prompt(json_t *errs, json_t *v, struct api_worker_params *p);
static void check_stop(json_t *errs, json_t *v, struct api_worker_params *p);

/* The request's fields: JSON kind, whether required, and the value check:
 * a range (inclusive, with the constraint name reported) for numbers, or a
 * function for the rest. */
static const struct field_spec {
    const char *name;
    enum field_kind kind;
    bool required;
    double lo, hi;                /* FK_NUMBER, FK_INTEGER */
    const char *constraint;
    field_check_fn check;         /* instead of the range */
} fields[] = {
    {"job_id", FK_STRING, true, 0, 0, NULL, check_job_id},
    {"prompt", FK_STRING, true, 0, 0, NULL, check_prompt},
    {"max_tokens", FK_INTEGER, true, 1, API_MAX_TOKENS, "range(1..=2048)", NULL},
    {"temperature", FK_NUMBER, false, 0.0, 2.0, "range(0.0..=2.0)", NULL},
    {"top_p", FK_NUMBER, false, 0.0, 1.0, "range(0.0..=1.0)", NULL},
    {"top_k", FK_INTEGER, false, 0, 4294967295.0, "range(0..=4294967295)", NULL},
    {"repetition_penalty", FK_NUMBER, false, 0.0, 2.0, "range(0.0..=2.0)", NULL},
    {"min_p", FK_NUMBER, false, 0.0, 1.0, "range(0.0..=1.0)", NULL},
    {"stop", FK_STOP, false, 0, 0, NULL, check_stop},
    /* json_int_t cannot exceed the upper bound; only the lower one can fail */
    {"seed", FK_INTEGER, false, 0, 18446744073709551615.0, "range(0..=18446744073709551615)",
     NULL},
};
enum { F_JOB_ID, F_PROMPT, F_MAX_TOKENS, F_TEMPERATURE, F_TOP_P, F_TOP_K, F_REP_PEN, F_MIN_P,
       F_STOP, F_SEED, F_COUNT_ };

/* An integer outside [lo, hi]: "NAME must be at least LO (got V)". */
static void check_int(json_t *errs, const struct field_spec *f, json_t *v)
{
    json_int_t k = json_integer_value(v);
    bool low = (double)k < f->lo;
    if (!low && (double)k <= f->hi)
        return;
    char num[64], msg[160];
    api_number_text(v, num, sizeof(num));
    snprintf(msg, sizeof(msg), "%s must be %s %.0f (got %s)", f->name,
             low ? "at least" : "at most", low ? f->lo : f->hi, num);
    add_violation(errs, f->name, f->constraint, msg, v);
}

static void check_job_id(json_t *errs, json_t *v, struct api_worker_params *p)
{
    char msg[160], c[32];
    p->job_id = json_string_value(v);
    p->job_id_len = json_string_length(v);
    if (p->job_id_len == 0) {
        add_violation(errs, "job_id", "non_empty", "job_id must not be empty", v);
    } else if (p->job_id_len >= SCHED_JOB_ID_MAX) {
        snprintf(msg, sizeof(msg), "job_id must be at most %d bytes (got %zu)",
                 SCHED_JOB_ID_MAX - 1, p->job_id_len);
        snprintf(c, sizeof(c), "max_length(%d)", SCHED_JOB_ID_MAX - 1);
        add_violation(errs, "job_id", c, msg, v);
    }
}

/* Counted in Unicode characters; the value is not echoed. */
static void check_prompt(json_t *errs, json_t *v, struct api_worker_params *p)
{
    char msg[160];
    p->prompt = json_string_value(v);
    p->prompt_len = json_string_length(v);
    size_t chars = api_utf8_chars(p->prompt, p->prompt_len);
    if (chars < 1 || chars > API_PROMPT_MAX_CHARS) {
        snprintf(msg, sizeof(msg), "prompt must be between 1 and %d characters (got %zu)",
                 API_PROMPT_MAX_CHARS, chars);
        add_violation(errs, "prompt", "length(1..=32768)", msg, NULL);
    }
}

/* A string or an array of strings; values are not echoed. */
static void check_stop(json_t *errs, json_t *v, struct api_worker_params *p)
{
    char msg[160];
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (n > DETOK_MAX_STOPS) {
        snprintf(msg, sizeof(msg), "stop must have at most %d sequences (got %zu)",
                 DETOK_MAX_STOPS, n);
        add_violation(errs, "stop", "max_count(4)", msg, NULL);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
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

/* Phase 1: the body is a JSON object of valid UTF-8 sent as JSON. Returns
 * the document, or NULL with *status and *err_body set. */
static json_t *validate_body(const char *content_type, size_t ct_len, const char *body,
                             size_t len, int *status, char **err_body)
{
    char msg[512];
    if (!content_type_is_json(content_type, ct_len)) {
        *err_body = error_obj_string("UNSUPPORTED_MEDIA_TYPE",
                                     "Content-Type must be application/json");
        *status = 415;
        return NULL;
    }
    size_t bad;
    if (!sse_utf8_valid(body, len, &bad)) {
        char field[128];
        if (field_at_offset(body, len, bad, field, sizeof(field)))
            snprintf(msg, sizeof(msg), "field `%s` is not valid UTF-8 (byte offset %zu)", field, bad);
        else
            snprintf(msg, sizeof(msg), "request body is not valid UTF-8 (byte offset %zu)", bad);
        *err_body = error_obj_string("INVALID_UTF8", msg);
        *status = 400;
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    if (!root) {
        snprintf(msg, sizeof(msg), "malformed JSON at byte offset %zu: %s", json_error_offset(&jerr),
                 jerr.text);
        *err_body = error_obj_string("INVALID_JSON", msg);
        *status = 400;
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        *err_body = error_obj_string("INVALID_TYPE", "request body must be a JSON object");
        *status = 422;
        return NULL;
    }
    return root;
}

/* Phase 2: every field present when required and of its kind (null counts
 * as absent); v[i] is fields[i]'s value or NULL. Returns 0, or 422 with
 * *err_body set. */
static int validate_kinds(json_t *root, json_t *v[F_COUNT_], char **err_body)
{
    char msg[512];
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
            return 422;
        }
    }
    return 0;
}

LLORCH_API int api_worker_validate(const char *content_type, size_t ct_len, const char *body,
                                   size_t len, struct api_worker_params *p, void **json_root,
                                   char **err_body)
{
    *json_root = NULL;
    *err_body = NULL;
    memset(p, 0, sizeof(*p));
    int status = 0;
    json_t *root = validate_body(content_type, ct_len, body, len, &status, err_body);
    if (!root)
        return status;
    json_t *v[F_COUNT_];
    if ((status = validate_kinds(root, v, err_body)) != 0) {
        json_decref(root);
        return status;
    }
    /* phase 3: every value in range, all violations reported at once */
    json_t *errs = json_array();
    for (size_t i = 0; i < F_COUNT_; i++) {
        const struct field_spec *f = &fields[i];
        if (!v[i])
            continue;
        if (f->check)
            f->check(errs, v[i], p);
        else if (f->kind == FK_INTEGER)
            check_int(errs, f, v[i]);
        else
            check_float(errs, f->name, v[i], f->lo, f->hi, f->constraint);
    }
    if (json_array_size(errs) > 0) {
        json_t *o = json_pack("{s:o}", "errors", errs);
        *err_body = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        json_decref(root);
        return 400;
    }
    json_decref(errs);
    /* phase 4: the scheduler's parameters, defaults for what is absent */
    p->sp.max_tokens = (uint32_t)json_integer_value(v[F_MAX_TOKENS]);
    p->sp.temperature = v[F_TEMPERATURE] ? (float)json_number_value(v[F_TEMPERATURE]) : 1.0f;
    p->sp.top_p = v[F_TOP_P] ? (float)json_number_value(v[F_TOP_P]) : 1.0f;
    p->sp.top_k = v[F_TOP_K] ? (uint32_t)json_integer_value(v[F_TOP_K]) : 0;
    p->sp.repetition_penalty = v[F_REP_PEN] ? (float)json_number_value(v[F_REP_PEN]) : 1.0f;
    p->sp.min_p = v[F_MIN_P] ? (float)json_number_value(v[F_MIN_P]) : 0.0f;
    p->sp.seed = v[F_SEED] ? (uint64_t)json_integer_value(v[F_SEED]) : 42;
    *json_root = root;
    return 200;
}

/* ---- jobs and their frames ---- */

/* Every frame carries its id (the core adds it, and journals the frames of
 * a resumable job, detached included). */
static void job_send(struct worker_job *j, const char *type, json_t *o, bool force)
{
    struct api_worker *a = j->api;
    if (!api_job_writing(&j->base)) {
        json_decref(o);
        return;
    }
    a->json.len = 0;
    if (api_json_append(&a->json, o) != 0)
        return;
    api_job_send(&j->base, type, a->json.data, a->json.len, force);
}

static void job_send_error(struct api_job *base, enum api_error e, const char *message)
{
    struct worker_job *j = (struct worker_job *)base;
    struct api_worker *a = j->api;
    const char *code = worker_error_of(e)->code;
    json_t *o = json_pack("{s:s,s:s,s:o*}", "type", "error", "code", code, "message",
                          api_json_text(a->core, message, strlen(message)));
    job_send(j, "error", o, true);
}

static void job_send_text(struct worker_job *j, const char *text, size_t len, bool force)
{
    struct api_worker *a = j->api;
    if (len == 0 || !api_job_writing(&j->base))
        return;
    json_t *o = json_pack("{s:s,s:o*,s:I}", "type", "token", "t",
                          api_json_text(a->core, text, len), "i", (json_int_t)j->base.n_frames);
    j->base.n_frames++;
    job_send(j, "token", o, force);
}

static void job_on_event(struct api_job *base, const struct sched_event *ev)
{
    struct worker_job *j = (struct worker_job *)base;
    struct api_worker *a = j->api;
    switch (ev->type) {
    case SCHED_EV_STARTED: {
        char ts[32];
        iso8601_now(ts, sizeof(ts));
        json_t *o = json_pack("{s:s,s:s#,s:s,s:s}", "type", "started", "job_id", base->job_id,
                              (int)base->job_id_len, "model", a->info.model, "started_at", ts);
        job_send(j, "started", o, false);
        break;
    }
    case SCHED_EV_TOKEN:
        job_send_text(j, ev->u.token.text, ev->u.token.text_len, false);
        break;
    case SCHED_EV_END: {
        job_send_text(j, ev->u.end.text, ev->u.end.text_len, true);
        /* stop_sequence_matched is null unless a stop string ended the job */
        int32_t si = ev->u.end.stop_index;
        json_t *matched = ev->u.end.reason == SCHED_STOP_SEQUENCE && si >= 0 &&
                                  (uint32_t)si < j->n_stops
                              ? api_json_text(a->core, j->stops[si], j->stop_lens[si])
                              : json_null();
        json_t *o = json_pack("{s:s,s:I,s:I,s:s,s:o*}", "type", "end", "tokens_out",
                              (json_int_t)ev->u.end.tokens_out, "decode_time_ms",
                              (json_int_t)ev->u.end.decode_time_ms, "stop_reason",
                              sched_stop_reason_name(ev->u.end.reason), "stop_sequence_matched",
                              matched);
        job_send(j, "end", o, true);
        break;
    }
    case SCHED_EV_ERROR:
        if (base->sse.req || (base->resume.resumable && !base->resume.ended)) {
            const char *m = ev->u.error.message;
            enum api_error e = api_error_from_sched(ev->u.error.code);
            job_send_error(base, e, m[0] ? m : worker_error_of(e)->code);
        }
        break;
    }
}

static const char *job_error_code(enum api_error e)
{
    return worker_error_of(e)->code;
}

static void job_free(struct api_job *base)
{
    free(base);
}

static const struct api_job_ops worker_job_ops = {
    .api = "worker",
    .on_event = job_on_event,
    .send_error = job_send_error,
    .ping_before_head = NULL,
    .error_code = job_error_code,
    .free = job_free,
};

/* ---- handlers ---- */

static bool refuse_unless_ready(struct api_worker *a, struct http_request *r)
{
    if (api_state(a->core) == API_LOADING) {
        respond_error(r, API_ERR_LOADING, "the model is loading");
        return true;
    }
    if (!api_is_ready(a->core)) {
        respond_error(r, API_ERR_SHUTTING_DOWN, "the worker is shutting down");
        return true;
    }
    return false;
}

static void h_health(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    struct api_worker *a = ctx;
    if (api_failure(a->core)) {
        respond_json(a, r, 503,
                     json_pack("{s:s,s:b,s:s}", "status", "failed", "model_loaded", 0, "error",
                               api_failure(a->core)),
                     NULL);
        return;
    }
    if (api_state(a->core) == API_LOADING) {
        respond_json(a, r, 503,
                     json_pack("{s:s,s:b,s:f}", "status", "loading", "model_loaded", 0,
                               "progress", api_loading_progress(a->core)),
                     NULL);
        return;
    }
    struct sched *s = api_sched(a->core);
    if (api_state(a->core) == API_DRAINING || !s) {
        respond_json(a, r, 503, json_pack("{s:s}", "status", "draining"), NULL);
        return;
    }
    struct sched_stats st;
    sched_stats(s, &st);
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
    if (o) /* jobs not yet at their terminal event, or kept for a resumable reader */
        json_object_set_new(o, "live_jobs", json_integer((json_int_t)api_live_jobs(a->core)));
    if (o && a->pool_manager) {
        struct api_worker_pm_state ms = {.status = "", .last_error = ""};
        a->pool_manager(a->pool_manager_ctx, &ms);
        json_object_set_new(o, "pool_manager",
                            json_pack("{s:s,s:I,s:s}", "status", ms.status, "attempts",
                                      (json_int_t)ms.attempts, "last_error", ms.last_error));
    }
    if (o && a->health_extra)
        a->health_extra(a->health_extra_ctx, o);
    respond_json(a, r, 200, o, NULL);
}

LLORCH_API void api_worker_set_health_extra(struct api_worker *a,
                                            void (*fn)(void *ctx, void *json_obj), void *ctx)
{
    a->health_extra = fn;
    a->health_extra_ctx = ctx;
}

static void h_ready(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    struct api_worker *a = ctx;
    if (!check_auth(a, r))
        return;
    bool ready = api_is_ready(a->core);
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
    if (!api_request_grace(a->core, r, root, &grace)) {
        json_decref(root);
        return;
    }
    struct worker_job *j = calloc(1, sizeof(*j));
    if (!j) {
        json_decref(root);
        http_respond_error(r, 500, "INTERNAL", "out of memory", NULL);
        return;
    }
    j->api = a;
    j->base.resume_grace_ms = grace;
    j->base.frame_ids = true; /* worker frames always carry their id */
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
    };
    int rc = api_job_submit(a->core, &j->base, &worker_job_ops, r, &req, true);
    if (rc != 0) {
        char msg[400];
        free(j);
        enum api_error e = api_error_from_submit(rc);
        switch (e) {
        case API_ERR_QUEUE_FULL:
            snprintf(msg, sizeof(msg), "the request queue is full");
            break;
        case API_ERR_JOB_EXISTS:
            snprintf(msg, sizeof(msg),
                     "job_id `%.*s` is already running or held for a resumable stream "
                     "(GET /execute/{job_id})",
                     (int)LLORCH_MIN(p.job_id_len, 256), p.job_id);
            break;
        case API_ERR_SHUTTING_DOWN:
            snprintf(msg, sizeof(msg), "the worker is shutting down");
            break;
        case API_ERR_INVALID_REQUEST:
            snprintf(msg, sizeof(msg), "request rejected: %s", llorch_strerror(rc));
            break;
        default:
            snprintf(msg, sizeof(msg), "submit failed: %s", llorch_strerror(rc));
            break;
        }
        respond_error(r, e, msg);
        json_decref(root);
        return;
    }
    json_decref(root); /* the scheduler copied what it needs */
    api_job_begin_stream(&j->base, mode);
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

/* GET /execute/{job_id} and GET /v1/inference/{job_id} with Last-Event-ID:
 * the frames after that id, then the rest live, in the mode the job began
 * with (the core does it). */
static void h_resume(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    struct api_worker *a = ctx;
    if (!check_auth(a, r) || refuse_unless_ready(a, r))
        return;
    char id[SCHED_JOB_ID_MAX];
    size_t n = 0;
    bool ok = api_path_unescape(tail, tail_len, false, id, sizeof(id), &n);
    struct api_job *j = ok ? api_job_find_resumable(a->core, &worker_job_ops, id, n) : NULL;
    if (!j) {
        http_respond_error(r, 404, "RESUME_NOT_FOUND",
                           "no resumable stream with this job_id (unknown, not resumable, "
                           "expired, or over the journal bound)", NULL);
        return;
    }
    switch (api_job_resume(j, r)) {
    case 0:
        break;
    case LLORCH_EAGAIN:
        http_respond_error(r, 409, "STREAM_ATTACHED",
                           "this job's stream is being read on another connection", NULL);
        break;
    case LLORCH_ERANGE:
        http_respond_error(r, 400, "LAST_EVENT_ID_PAST_END",
                           "Last-Event-ID is past the last frame of this job", NULL);
        break;
    default:
        http_respond_error(r, 400, "INVALID_LAST_EVENT_ID",
                           "Last-Event-ID must be an id of this job's frames (<job_id>:<index>)",
                           NULL);
        break;
    }
}

static int cancel_job(struct api_worker *a, const char *id, size_t len)
{
    struct sched *s = api_sched(a->core);
    if (!s || len == 0)
        return LLORCH_ENOTFOUND;
    return sched_cancel_job(s, id, len, SCHED_ERR_CANCELLED);
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
    size_t n;
    bool ok = api_path_unescape(tail, tail_len, false, id, sizeof(id), &n);
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
    if (!api_has_key(a->core) && !r->peer_is_loopback) {
        http_respond_error(r, 403, "FORBIDDEN",
                           "shutdown is allowed only from loopback or with the API key", NULL);
        return;
    }
    respond_json(a, r, 202, json_pack("{s:s}", "status", "draining"), NULL);
    if (a->shutdown_cb)
        a->shutdown_cb(a->shutdown_ctx);
}

/* ---- lifecycle ---- */

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

LLORCH_API void api_worker_set_pool_manager(struct api_worker *a,
                                            void (*state)(void *ctx,
                                                          struct api_worker_pm_state *out),
                                            void *ctx)
{
    a->pool_manager = state;
    a->pool_manager_ctx = ctx;
}

LLORCH_API int api_worker_new(struct api_worker **out, struct api *core, struct http_server *srv,
                              const struct api_worker_opts *o)
{
    *out = NULL;
    struct api_worker *a = calloc(1, sizeof(*a));
    if (!a)
        return LLORCH_ENOMEM;
    a->core = core;
    api_worker_set_info(a, &o->info);
    a->shutdown_cb = o->shutdown_cb;
    a->shutdown_ctx = o->shutdown_ctx;

    /* path, methods, handler and metrics label: the one route table */
    static const struct {
        unsigned methods;
        const char *path;
        bool prefix;
        http_handler_fn fn;
        enum metrics_endpoint label;
    } routes[] = {
        {LLORCH_HTTP_GET, "/health", false, h_health, METRICS_EP_HEALTH},
        {LLORCH_HTTP_GET, "/v1/health", false, h_health, METRICS_EP_HEALTH},
        {LLORCH_HTTP_GET, "/v1/ready", false, h_ready, METRICS_EP_READY},
        {LLORCH_HTTP_POST, "/execute", false, h_execute, METRICS_EP_EXECUTE},
        {LLORCH_HTTP_POST, "/v1/inference", false, h_inference, METRICS_EP_INFERENCE},
        {LLORCH_HTTP_DELETE, "/v1/inference/", true, h_delete_inference,
         METRICS_EP_INFERENCE_CANCEL},
        {LLORCH_HTTP_GET, "/v1/inference/", true, h_resume, METRICS_EP_INFERENCE_CANCEL},
        {LLORCH_HTTP_GET, "/execute/", true, h_resume, METRICS_EP_EXECUTE_RESUME},
        {LLORCH_HTTP_POST, "/cancel", false, h_cancel, METRICS_EP_CANCEL},
        {LLORCH_HTTP_POST, "/v1/admin/shutdown", false, h_shutdown, METRICS_EP_SHUTDOWN},
        {LLORCH_HTTP_POST, "/v1/shutdown", false, h_shutdown, METRICS_EP_SHUTDOWN},
    };
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(routes); i++) {
        int r = http_server_route_tagged(srv, routes[i].methods, routes[i].path, routes[i].prefix,
                                         routes[i].fn, a, (int)routes[i].label);
        if (r) {
            api_worker_free(a);
            return r;
        }
    }
    *out = a;
    return 0;
}

LLORCH_API void api_worker_free(struct api_worker *a)
{
    if (!a)
        return;
    http_buf_free(&a->json);
    free(a);
}
