/* The OpenAI-compatible API. A request is validated into a sched_request
 * (ranges as the worker contract's where the parameters overlap), submitted,
 * and answered from the scheduler's events: whole (one JSON object at the
 * terminal event) or as an SSE stream of chunk objects ending in
 * `data: [DONE]`. A stream's response head is sent once the job is admitted
 * (so that a prompt too long for the context is still a 400) or after one
 * ping interval in the queue, whichever comes first. A job (struct oai_job)
 * lives from a successful sched_submit() until its terminal event, connected
 * or not (a dead or too slow client detaches it and cancels the request). */
#include "api_openai.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "llorch/config.h"
#include "llorch/error.h"
#include "queue.h"
#include "resume.h"
#include "sched.h"
#include "sse.h"
#include "util.h"

#define OAI_MAX_TOKENS 2048        /* as the worker contract's max_tokens */
#define OAI_PROMPT_MAX_CHARS 32768 /* as the worker contract's prompt */
#define OAI_COMPLETION_DEFAULT_TOKENS 16 /* OpenAI's default for /v1/completions */
#define OAI_MAX_MESSAGES 4096
#define OAI_TOKEN_TEXT_CAP 256     /* one token's piece, for logprobs */
#define OAI_FINGERPRINT "llorch-cpud-" LLORCH_VERSION

struct api_openai {
    struct http_server *srv;
    const struct config *cfg;
    struct api_worker *worker;
    char *model_id;
    char *model_name;
    int64_t created;
    const struct tokenizer *tok;
    char *chat_tmpl;              /* the file's template text, or NULL */
    size_t chat_tmpl_len;
    enum chat_template tmpl;
    uint32_t n_ctx;
    struct llorch_queue jobs;
    struct http_buf out;          /* scratch: the JSON being emitted */
    struct http_buf frame;        /* scratch: a frame with its id */
    char *san;                    /* scratch: sanitised UTF-8 */
    size_t san_cap;
};

/* An error in OpenAI's shape. */
struct oai_err {
    int status;
    const char *type;
    const char *code;             /* NULL = JSON null */
    char param[96];               /* empty = JSON null */
    char message[600];
};

enum oai_kind { OAI_COMPLETION, OAI_CHAT };

struct oai_job {
    struct api_sink sink;         /* first: the owner pointer */
    struct api_openai *api;
    struct llorch_queue node;
    struct http_request *req;     /* while the client is connected */
    struct sse_stream sse;        /* stream: sse.req != NULL from the head to the end */
    enum oai_kind kind;
    bool stream;
    bool head_sent;
    bool include_usage;
    bool logprobs;                /* per-token log-probs wanted */
    bool got_token;
    uint32_t n_top;               /* alternatives per token */
    uint64_t req_id;
    int64_t created;
    uint32_t n_prompt;
    uint64_t text_offset;         /* legacy logprobs: byte offset of the next token */
    char *echo;                   /* completions with echo: the prompt text */
    size_t echo_len;
    struct http_buf text;         /* whole response: the output so far */
    json_t *lp;                   /* whole response: the log-probs so far */
    bool finished;                /* resumable stream ended while kept for a reader */
    struct resume_entry resume;   /* frame ids; journal and grace when resumable */
    char id[48];
};

/* ---- small helpers ---- */

static void err_set(struct oai_err *e, int status, const char *type, const char *code,
                    const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void err_set(struct oai_err *e, int status, const char *type, const char *code,
                    const char *param, const char *fmt, ...)
{
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
}

#define BAD(e, param, ...) err_set(e, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

/* Invalid UTF-8 replaced: messages and params quote the request (cut to
 * fit, or jansson's "near '...'"), and json_pack refuses invalid UTF-8. */
static json_t *err_text(const char *s, size_t cap)
{
    char buf[3 * sizeof(((struct oai_err *)0)->message) + 1];
    size_t n = sse_utf8_sanitize(s, strnlen(s, cap), buf, sizeof(buf));
    return json_stringn(buf, n == SIZE_MAX ? 0 : n);
}

static json_t *err_json(const struct oai_err *e)
{
    return json_pack("{s:{s:o,s:s,s:o,s:o}}", "error", "message",
                     err_text(e->message, sizeof(e->message)), "type", e->type, "param",
                     e->param[0] ? err_text(e->param, sizeof(e->param)) : json_null(), "code",
                     e->code ? json_string(e->code) : json_null());
}

static int dump_json(struct http_buf *b, json_t *o)
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

static void respond_json(struct api_openai *a, struct http_request *r, int status, json_t *o,
                         const char *extra)
{
    a->out.len = 0;
    if (dump_json(&a->out, o) != 0) {
        http_respond_error(r, 500, "INTERNAL", "out of memory", NULL);
        return;
    }
    http_respond(r, status, "application/json", extra, a->out.data, a->out.len);
}

static void respond_err(struct api_openai *a, struct http_request *r, const struct oai_err *e)
{
    const char *extra = NULL;
    if (e->status == 401)
        extra = "WWW-Authenticate: Bearer\r\n";
    else if (e->status == 429 || e->status == 503)
        extra = "Retry-After: 1\r\n";
    respond_json(a, r, e->status, err_json(e), extra);
}

/* Replaces invalid UTF-8 with U+FFFD into the api's scratch. */
static const char *sanitize(struct api_openai *a, const char *s, size_t len, size_t *out_len)
{
    size_t need = len * 3 + 1;
    if (need > a->san_cap) {
        char *p = realloc(a->san, need);
        if (!p)
            return NULL;
        a->san = p;
        a->san_cap = need;
    }
    size_t n = sse_utf8_sanitize(s, len, a->san, a->san_cap);
    if (n == SIZE_MAX)
        return NULL;
    *out_len = n;
    return a->san;
}

static json_t *json_text(struct api_openai *a, const char *s, size_t len)
{
    size_t n;
    const char *t = sanitize(a, s, len, &n);
    return t ? json_stringn_nocheck(t, n) : NULL;
}

/* Appends s as a quoted JSON string (invalid UTF-8 as U+FFFD). */
static int append_json_string(struct api_openai *a, struct http_buf *b, const char *s, size_t len)
{
    size_t n;
    const char *t = sanitize(a, s, len, &n);
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
            if (c < 0x20) {
                o += snprintf(o, 7, "\\u%04x", c);
            } else {
                *o++ = (char)c;
            }
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 0;
}

static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

static uint64_t random_u64(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
        v = uv_hrtime() * 0x9E3779B97F4A7C15ull;
    return v;
}

/* ---- parameters ---- */

/* A present, non-null member, or NULL. */
static json_t *member(json_t *root, const char *name)
{
    json_t *v = json_object_get(root, name);
    return v && !json_is_null(v) ? v : NULL;
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static bool get_number(json_t *root, const char *name, double lo, double hi, double def, float *out,
                       struct oai_err *e)
{
    json_t *v = member(root, name);
    *out = (float)def;
    if (!v)
        return true;
    if (!json_is_number(v)) {
        BAD(e, name, "%s must be a number (got %s)", name, json_kind(v));
        return false;
    }
    double d = json_number_value(v);
    char num[64];
    api_worker_number_text(v, num, sizeof(num));
    if (d < lo) {
        BAD(e, name, "%s must be at least %.1f (got %s)", name, lo, num);
        return false;
    }
    if (d > hi) {
        BAD(e, name, "%s must be at most %.1f (got %s)", name, hi, num);
        return false;
    }
    *out = (float)d;
    return true;
}

static bool get_int(json_t *root, const char *name, json_int_t lo, json_int_t hi, json_int_t def,
                    json_int_t *out, bool *present, struct oai_err *e)
{
    json_t *v = member(root, name);
    *out = def;
    if (present)
        *present = v != NULL;
    if (!v)
        return true;
    /* 3.0 is accepted as 3, as the Python and JS SDKs may send it */
    json_int_t x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && floor(json_real_value(v)) == json_real_value(v) &&
               fabs(json_real_value(v)) < 9.0e18) {
        x = (json_int_t)json_real_value(v);
    } else {
        BAD(e, name, "%s must be an integer (got %s)", name, json_kind(v));
        return false;
    }
    if (x < lo) {
        BAD(e, name, "%s must be at least %" JSON_INTEGER_FORMAT " (got %" JSON_INTEGER_FORMAT ")",
            name, lo, x);
        return false;
    }
    if (x > hi) {
        BAD(e, name, "%s must be at most %" JSON_INTEGER_FORMAT " (got %" JSON_INTEGER_FORMAT ")",
            name, hi, x);
        return false;
    }
    *out = x;
    return true;
}

static bool get_bool(json_t *root, const char *name, bool def, bool *out, struct oai_err *e)
{
    json_t *v = member(root, name);
    *out = def;
    if (!v)
        return true;
    if (!json_is_boolean(v)) {
        BAD(e, name, "%s must be a boolean (got %s)", name, json_kind(v));
        return false;
    }
    *out = json_is_true(v);
    return true;
}

/* stop: a string or an array of up to 4 strings of 1..100 bytes. */
static bool get_stops(json_t *root, struct sched_params *sp, struct oai_err *e)
{
    json_t *v = member(root, "stop");
    if (!v)
        return true;
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > DETOK_MAX_STOPS) {
            BAD(e, "stop", "stop must have at most %d sequences (got %zu)", DETOK_MAX_STOPS, n);
            return false;
        }
        items = NULL;
    } else if (!json_is_string(v)) {
        BAD(e, "stop", "stop must be a string or an array of strings (got %s)", json_kind(v));
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(v, i);
        if (!json_is_string(s)) {
            BAD(e, "stop", "stop[%zu] must be a string (got %s)", i, json_kind(s));
            return false;
        }
        size_t len = json_string_length(s);
        if (len == 0) {
            BAD(e, "stop", "stop[%zu] must not be empty", i);
            return false;
        }
        if (len > DETOK_MAX_STOP_LEN) {
            BAD(e, "stop", "stop[%zu] must be at most %d bytes (got %zu)", i, DETOK_MAX_STOP_LEN,
                len);
            return false;
        }
        sp->stops[i] = json_string_value(s);
        sp->stop_lens[i] = len;
    }
    sp->n_stops = (uint32_t)n;
    return true;
}

/* The sampling parameters both endpoints share. */
static bool get_sampling(json_t *root, struct sched_params *sp, struct oai_err *e)
{
    json_int_t i;
    bool present;
    if (!get_number(root, "temperature", 0.0, 2.0, 1.0, &sp->temperature, e) ||
        !get_number(root, "top_p", 0.0, 1.0, 1.0, &sp->top_p, e) ||
        !get_int(root, "top_k", 0, UINT32_MAX, 0, &i, NULL, e))
        return false;
    sp->top_k = (uint32_t)i;
    if (!get_number(root, "min_p", 0.0, 1.0, 0.0, &sp->min_p, e) ||
        !get_number(root, "repetition_penalty", 0.0, 2.0, 1.0, &sp->repetition_penalty, e) ||
        !get_number(root, "presence_penalty", -2.0, 2.0, 0.0, &sp->presence_penalty, e) ||
        !get_number(root, "frequency_penalty", -2.0, 2.0, 0.0, &sp->frequency_penalty, e))
        return false;
    if (!get_int(root, "seed", 0, INT64_MAX, 0, &i, &present, e))
        return false;
    /* OpenAI samples afresh each call unless a seed is given */
    sp->seed = present ? (uint64_t)i : random_u64();
    if (!get_int(root, "n", 1, INT64_MAX, 1, &i, NULL, e))
        return false;
    if (i != 1) {
        err_set(e, 400, "invalid_request_error", "unsupported_value", "n",
                "n must be 1: one choice per request is supported (got %" JSON_INTEGER_FORMAT ")",
                i);
        return false;
    }
    if (!get_int(root, "best_of", 1, 1, 1, &i, NULL, e))
        return false;
    json_t *lb = member(root, "logit_bias");
    if (lb && (!json_is_object(lb) || json_object_size(lb) > 0)) {
        err_set(e, 400, "invalid_request_error", "unsupported_parameter", "logit_bias",
                "logit_bias is not supported");
        return false;
    }
    json_t *u = member(root, "user");
    if (u && !json_is_string(u)) {
        BAD(e, "user", "user must be a string (got %s)", json_kind(u));
        return false;
    }
    return get_stops(root, sp, e);
}

/* `model`, when given, must name the loaded model. */
static bool check_model(struct api_openai *a, json_t *root, struct oai_err *e)
{
    json_t *v = member(root, "model");
    if (!v)
        return true;
    if (!json_is_string(v)) {
        BAD(e, "model", "model must be a string (got %s)", json_kind(v));
        return false;
    }
    const char *m = json_string_value(v);
    size_t n = json_string_length(v);
    const char *names[] = {a->model_id, a->model_name, a->cfg->model_ref};
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(names); i++)
        if (names[i] && names[i][0] && strlen(names[i]) == n && memcmp(names[i], m, n) == 0)
            return true;
    err_set(e, 404, "invalid_request_error", "model_not_found", "model",
            "The model `%.*s` does not exist; this server serves `%s`", (int)LLORCH_MIN(n, 200),
            m, a->model_id);
    return false;
}

static bool get_stream(json_t *root, bool *stream, bool *include_usage, struct oai_err *e)
{
    *include_usage = false;
    if (!get_bool(root, "stream", false, stream, e))
        return false;
    json_t *so = member(root, "stream_options");
    if (!so || !*stream)
        return true;
    if (!json_is_object(so)) {
        BAD(e, "stream_options", "stream_options must be an object (got %s)", json_kind(so));
        return false;
    }
    return get_bool(so, "include_usage", false, include_usage, e);
}

/* A validated request, ready to submit. Strings point into the JSON root or
 * into `owned`. */
struct oai_request {
    enum oai_kind kind;
    struct sched_request sr;
    bool stream, include_usage, echo, logprobs;
    uint32_t n_top;
    llorch_token *tokens;         /* owned: a token-id prompt, or a counted chat prompt */
    char *rendered;               /* owned: a chat prompt */
};

static void oai_request_free(struct oai_request *q)
{
    free(q->tokens);
    free(q->rendered);
}

static bool prompt_text_ok(const char *s, size_t len, const char *param, struct oai_err *e)
{
    size_t chars = utf8_chars(s, len);
    if (chars < 1 || chars > OAI_PROMPT_MAX_CHARS) {
        BAD(e, param, "%s must be between 1 and %d characters (got %zu)", param,
            OAI_PROMPT_MAX_CHARS, chars);
        return false;
    }
    return true;
}

/* A token-id array: 1..n_ctx ids below the vocabulary size. */
static bool prompt_tokens(struct api_openai *a, json_t *arr, struct oai_request *q,
                          struct oai_err *e)
{
    size_t n = json_array_size(arr);
    if (n == 0) {
        BAD(e, "prompt", "prompt must not be empty");
        return false;
    }
    if (n > a->n_ctx) {
        err_set(e, 400, "invalid_request_error", "context_length_exceeded", "prompt",
                "the prompt is %zu tokens; the context length is %u tokens", n, a->n_ctx);
        return false;
    }
    q->tokens = malloc(n * sizeof(*q->tokens));
    if (!q->tokens) {
        err_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return false;
    }
    uint32_t n_vocab = tokenizer_n_vocab(a->tok);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(arr, i);
        if (!json_is_integer(t) || json_integer_value(t) < 0 ||
            json_integer_value(t) >= (json_int_t)n_vocab) {
            BAD(e, "prompt", "prompt[%zu] must be a token id between 0 and %u", i, n_vocab - 1);
            return false;
        }
        q->tokens[i] = (llorch_token)json_integer_value(t);
    }
    q->sr.prompt_tokens = q->tokens;
    q->sr.n_prompt_tokens = n;
    return true;
}

/* prompt: a string, an array of one string, an array of token ids, or an
 * array of one array of token ids. */
static bool get_prompt(struct api_openai *a, json_t *root, struct oai_request *q,
                       struct oai_err *e)
{
    json_t *p = member(root, "prompt");
    if (!p) {
        BAD(e, "prompt", "missing required parameter `prompt`");
        return false;
    }
    if (json_is_array(p) && json_array_size(p) > 0) {
        json_t *first = json_array_get(p, 0);
        if (json_is_string(first) || json_is_array(first)) {
            if (json_array_size(p) != 1) {
                err_set(e, 400, "invalid_request_error", "unsupported_value", "prompt",
                        "prompt must be one prompt: batches of %zu prompts are not supported",
                        json_array_size(p));
                return false;
            }
            p = first;
        }
    }
    if (json_is_string(p)) {
        q->sr.prompt = json_string_value(p);
        q->sr.prompt_len = json_string_length(p);
        return prompt_text_ok(q->sr.prompt, q->sr.prompt_len, "prompt", e);
    }
    if (json_is_array(p))
        return prompt_tokens(a, p, q, e);
    BAD(e, "prompt", "prompt must be a string, an array of token ids, or an array of one of "
                     "those (got %s)", json_kind(p));
    return false;
}

static bool validate_completion(struct api_openai *a, json_t *root, struct oai_request *q,
                                struct oai_err *e)
{
    struct sched_params *sp = &q->sr.params;
    json_int_t i;
    bool present;
    if (!check_model(a, root, e) || !get_prompt(a, root, q, e))
        return false;
    if (!get_int(root, "max_tokens", 1, OAI_MAX_TOKENS, OAI_COMPLETION_DEFAULT_TOKENS, &i, NULL, e))
        return false;
    sp->max_tokens = (uint32_t)i;
    if (!get_sampling(root, sp, e) || !get_stream(root, &q->stream, &q->include_usage, e) ||
        !get_bool(root, "echo", false, &q->echo, e))
        return false;
    if (!get_int(root, "logprobs", 0, SCHED_MAX_LOGPROBS, 0, &i, &present, e))
        return false;
    q->logprobs = present;
    q->n_top = (uint32_t)i;
    if (q->echo && q->logprobs) {
        err_set(e, 400, "invalid_request_error", "unsupported_value", "echo",
                "echo with logprobs is not supported (prompt log-probs are not computed)");
        return false;
    }
    json_t *suffix = member(root, "suffix");
    if (suffix && (!json_is_string(suffix) || json_string_length(suffix) > 0)) {
        err_set(e, 400, "invalid_request_error", "unsupported_parameter", "suffix",
                "suffix is not supported");
        return false;
    }
    return true;
}

/* The text of one message's content: a string, or an array of text parts
 * (joined with newlines); appended to buf. */
static bool message_content(json_t *c, size_t idx, struct http_buf *buf, bool may_be_null,
                            struct oai_err *e)
{
    char param[64];
    snprintf(param, sizeof(param), "messages[%zu].content", idx);
    if (!c || json_is_null(c)) {
        if (may_be_null)
            return true;
        BAD(e, param, "%s is required", param);
        return false;
    }
    if (json_is_string(c))
        return http_buf_append(buf, json_string_value(c), json_string_length(c)) == 0 ||
               (err_set(e, 500, "server_error", NULL, NULL, "out of memory"), false);
    if (!json_is_array(c)) {
        BAD(e, param, "%s must be a string or an array of text parts (got %s)", param,
            json_kind(c));
        return false;
    }
    size_t k;
    json_t *part;
    json_array_foreach(c, k, part) {
        json_t *type = json_is_object(part) ? json_object_get(part, "type") : NULL;
        json_t *text = json_is_object(part) ? json_object_get(part, "text") : NULL;
        snprintf(param, sizeof(param), "messages[%zu].content[%zu]", idx, k);
        if (!json_is_string(type)) {
            BAD(e, param, "%s must be an object with a string `type`", param);
            return false;
        }
        if (strcmp(json_string_value(type), "text") != 0) {
            err_set(e, 400, "invalid_request_error", "unsupported_content_type", param,
                    "%s has type `%s`: only `text` parts are supported", param,
                    json_string_value(type));
            return false;
        }
        if (!json_is_string(text)) {
            BAD(e, param, "%s.text must be a string", param);
            return false;
        }
        if ((k > 0 && http_buf_append(buf, "\n", 1) != 0) ||
            http_buf_append(buf, json_string_value(text), json_string_length(text)) != 0) {
            err_set(e, 500, "server_error", NULL, NULL, "out of memory");
            return false;
        }
    }
    return true;
}

/* messages → the rendered prompt (q->rendered). */
static bool render_messages(struct api_openai *a, json_t *root, struct oai_request *q,
                            struct oai_err *e)
{
    json_t *msgs = member(root, "messages");
    if (!msgs) {
        BAD(e, "messages", "missing required parameter `messages`");
        return false;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        BAD(e, "messages", "messages must be a non-empty array of messages");
        return false;
    }
    size_t n = json_array_size(msgs);
    if (n > OAI_MAX_MESSAGES) {
        BAD(e, "messages", "messages must have at most %d entries (got %zu)", OAI_MAX_MESSAGES, n);
        return false;
    }
    if (a->tmpl == CHAT_TEMPLATE_UNKNOWN) {
        err_set(e, 400, "invalid_request_error", "unsupported_chat_template", NULL,
                "the model's chat template is not supported; start the server with "
                "--chat-template NAME, one of: %s", chat_template_names());
        return false;
    }
    struct chat_message *cm = calloc(n, sizeof(*cm));
    size_t *off = calloc(n + 1, sizeof(*off));
    struct http_buf content = {0};
    bool ok = cm && off;
    if (!ok)
        err_set(e, 500, "server_error", NULL, NULL, "out of memory");
    for (size_t i = 0; ok && i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        char param[64];
        snprintf(param, sizeof(param), "messages[%zu]", i);
        if (!json_is_object(m)) {
            BAD(e, param, "%s must be an object (got %s)", param, json_kind(m));
            ok = false;
            break;
        }
        json_t *role = json_object_get(m, "role");
        snprintf(param, sizeof(param), "messages[%zu].role", i);
        if (!json_is_string(role)) {
            BAD(e, param, "%s must be a string", param);
            ok = false;
            break;
        }
        const char *r = json_string_value(role);
        bool assistant = !strcmp(r, "assistant");
        if (!strcmp(r, "system") || !strcmp(r, "developer")) {
            cm[i].role = "system";
        } else if (!strcmp(r, "user")) {
            cm[i].role = "user";
        } else if (assistant) {
            cm[i].role = "assistant";
        } else {
            BAD(e, param, "%s must be one of system, developer, user, assistant (got `%.40s`)",
                param, r);
            ok = false;
            break;
        }
        cm[i].role_len = strlen(cm[i].role);
        off[i] = content.len;
        ok = message_content(json_object_get(m, "content"), i, &content, assistant, e);
    }
    if (ok) {
        off[n] = content.len;
        for (size_t i = 0; i < n; i++) {
            cm[i].content = content.data ? content.data + off[i] : "";
            cm[i].content_len = off[i + 1] - off[i];
        }
        size_t len = 0;
        int rc = chat_render(a->tmpl, cm, n, true, (size_t)OAI_PROMPT_MAX_CHARS * 4, &q->rendered,
                             &len);
        if (rc == LLORCH_ETOOBIG || (rc == 0 && utf8_chars(q->rendered, len) > OAI_PROMPT_MAX_CHARS)) {
            BAD(e, "messages", "the rendered conversation must be at most %d characters",
                OAI_PROMPT_MAX_CHARS);
            ok = false;
        } else if (rc != 0) {
            err_set(e, 500, "server_error", NULL, NULL, "chat template rendering failed: %s",
                    llorch_strerror(rc));
            ok = false;
        } else {
            q->sr.prompt = q->rendered;
            q->sr.prompt_len = len;
            q->sr.parse_special = true;
        }
    }
    free(cm);
    free(off);
    http_buf_free(&content);
    return ok;
}

/* Without max_tokens a chat answer may run to the end of the context (as
 * vLLM's default): that needs the prompt's length, so the prompt is counted
 * here and submitted as tokens. */
static bool chat_default_max_tokens(struct api_openai *a, struct oai_request *q, struct oai_err *e)
{
    size_t cap = (size_t)a->n_ctx + 1, n = 0;
    q->tokens = malloc(cap * sizeof(*q->tokens));
    if (!q->tokens) {
        err_set(e, 500, "server_error", NULL, NULL, "out of memory");
        return false;
    }
    int rc = tokenizer_encode(a->tok, q->sr.prompt, q->sr.prompt_len, q->sr.add_bos, true,
                              q->tokens, cap, &n, NULL);
    if (rc == 0 && n >= a->n_ctx)
        rc = LLORCH_ETOOBIG;
    if (rc == LLORCH_ETOOBIG) {
        err_set(e, 400, "invalid_request_error", "context_length_exceeded", "messages",
                "the conversation is %zu tokens; the context length is %u tokens", n, a->n_ctx);
        return false;
    }
    if (rc != 0) {
        BAD(e, "messages", "the conversation cannot be tokenized: %s", llorch_strerror(rc));
        return false;
    }
    q->sr.prompt = NULL;
    q->sr.prompt_len = 0;
    q->sr.prompt_tokens = q->tokens;
    q->sr.n_prompt_tokens = n;
    q->sr.params.max_tokens = (uint32_t)LLORCH_MIN((size_t)OAI_MAX_TOKENS, a->n_ctx - n);
    return true;
}

static bool validate_chat(struct api_openai *a, json_t *root, struct oai_request *q,
                          struct oai_err *e)
{
    struct sched_params *sp = &q->sr.params;
    json_int_t i;
    bool mt_given, mct_given;
    if (!check_model(a, root, e))
        return false;
    json_t *tools = member(root, "tools");
    if (tools && (!json_is_array(tools) || json_array_size(tools) > 0)) {
        err_set(e, 400, "invalid_request_error", "unsupported_parameter", "tools",
                "tools are not supported");
        return false;
    }
    json_t *rf = member(root, "response_format");
    if (rf) {
        json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
        if (!json_is_string(t)) {
            BAD(e, "response_format", "response_format must be an object with a string `type`");
            return false;
        }
        if (strcmp(json_string_value(t), "text") != 0) {
            err_set(e, 400, "invalid_request_error", "unsupported_value", "response_format",
                    "response_format type `%.40s` is not supported: only `text`",
                    json_string_value(t));
            return false;
        }
    }
    if (!render_messages(a, root, q, e))
        return false;
    /* max_completion_tokens is the newer name; it wins when both are given */
    if (!get_int(root, "max_tokens", 1, OAI_MAX_TOKENS, 0, &i, &mt_given, e))
        return false;
    sp->max_tokens = (uint32_t)i;
    if (!get_int(root, "max_completion_tokens", 1, OAI_MAX_TOKENS, 0, &i, &mct_given, e))
        return false;
    if (mct_given)
        sp->max_tokens = (uint32_t)i;
    if (!get_sampling(root, sp, e) || !get_stream(root, &q->stream, &q->include_usage, e) ||
        !get_bool(root, "logprobs", false, &q->logprobs, e))
        return false;
    bool tl_given;
    if (!get_int(root, "top_logprobs", 0, SCHED_MAX_LOGPROBS, 0, &i, &tl_given, e))
        return false;
    if (tl_given && !q->logprobs) {
        BAD(e, "top_logprobs", "top_logprobs requires logprobs to be true");
        return false;
    }
    q->n_top = (uint32_t)i;
    if (!mt_given && !mct_given)
        return chat_default_max_tokens(a, q, e);
    return true;
}

/* ---- jobs ---- */

static void job_free(struct oai_job *j)
{
    struct api_openai *a = j->api;
    llorch_queue_remove(&j->node);
    sse_stream_free(&j->sse);
    resume_entry_free(&j->resume);
    http_buf_free(&j->text);
    json_decref(j->lp);
    free(j->echo);
    free(j);
    api_worker_job_unref(a->worker);
}

/* Frames are written while a reader is attached, and journaled while the
 * stream is resumable (detached included). */
static bool job_writing(const struct oai_job *j)
{
    return j->sse.req || j->resume.resumable;
}

static void job_cancel(struct oai_job *j, enum sched_error code)
{
    struct sched *s = api_worker_sched(j->api->worker);
    if (s)
        sched_cancel(s, j->req_id, code);
}

/* Connection gone: keep the job until its terminal event, cancel it now. */
static void job_on_abort(void *data)
{
    struct oai_job *j = data;
    j->req = NULL;
    j->sse.req = NULL;
    if (resume_entry_detach(&j->resume))
        return; /* resumable: runs on, journaled, for its grace period */
    job_cancel(j, SCHED_ERR_CANCELLED);
}

/* Grace over with nobody back: cancel as a dropped connection does, or free
 * a job that had ended. */
static void job_on_expire(void *ctx, struct resume_entry *e)
{
    (void)ctx;
    struct oai_job *j = llorch_container_of(e, struct oai_job, resume);
    if (j->finished) {
        job_free(j);
        return;
    }
    metrics_counter_add(api_worker_metrics(j->api->worker), METRICS_C_RESUME_EXPIRED, 1);
    job_cancel(j, SCHED_ERR_CANCELLED);
}

/* The stream's last frame is queued: a resumable job keeps its frames for
 * its grace (its last ones may be in flight when the connection drops). */
static void job_end_or_keep(struct oai_job *j)
{
    if (j->sse.req)
        sse_stream_end(&j->sse, false);
    j->req = NULL;
    if (j->resume.detached || resume_entry_detach(&j->resume)) {
        j->finished = true;
        return;
    }
    job_free(j);
}

/* The common head of every object: {"id":..,"object":..,"created":..,"model":.. */
static int chunk_head(struct oai_job *j, struct http_buf *b)
{
    struct api_openai *a = j->api;
    int r = http_buf_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", j->id,
                            j->kind == OAI_CHAT ? "chat.completion.chunk" : "text_completion",
                            (long long)j->created);
    if (!r)
        r = append_json_string(a, b, a->model_id, strlen(a->model_id));
    if (!r)
        r = http_buf_printf(b, ",\"system_fingerprint\":\"%s\",\"choices\":[", OAI_FINGERPRINT);
    return r;
}

static int usage_append(struct http_buf *b, uint32_t prompt, uint32_t completion)
{
    return http_buf_printf(b,
                           "\"usage\":{\"prompt_tokens\":%u,\"completion_tokens\":%u,"
                           "\"total_tokens\":%u}",
                           prompt, completion, prompt + completion);
}

/* The reader is too slow for the outbox bound: cut it, cancel the job. */
static void job_cut_slow(struct oai_job *j);

static void job_send_frame(struct oai_job *j, struct http_buf *b, bool force)
{
    struct api_openai *a = j->api;
    if (!job_writing(j))
        return;
    if (resume_entry_frame(&j->resume, &a->frame, "chunk", b->data, b->len, false) != 0)
        return;
    if (j->sse.req &&
        sse_stream_send_frame(&j->sse, a->frame.data, a->frame.len, force) == LLORCH_EFULL)
        job_cut_slow(j);
}

static void job_send_error_frame(struct oai_job *j, const struct oai_err *e)
{
    struct api_openai *a = j->api;
    a->out.len = 0;
    if (job_writing(j) && dump_json(&a->out, err_json(e)) == 0 &&
        resume_entry_frame(&j->resume, &a->frame, "error", a->out.data, a->out.len, true) == 0 &&
        j->sse.req)
        sse_stream_send_frame(&j->sse, a->frame.data, a->frame.len, true);
}

static void job_cut_slow(struct oai_job *j)
{
    struct oai_err e;
    job_cancel(j, SCHED_ERR_CLIENT_TOO_SLOW);
    resume_entry_free(&j->resume); /* cut, not resumable */
    err_set(&e, 503, "server_error", "client_too_slow", NULL,
            "the client reads slower than the stream is produced");
    job_send_error_frame(j, &e);
    sse_stream_cut(&j->sse);
    j->req = NULL;
}

/* One chunk: text (a completion's `text` or a chat `delta.content`), the
 * first chat chunk's role, log-probs, a finish reason. */
static void job_send_chunk(struct oai_job *j, const char *text, size_t len, bool role,
                           json_t *lp, const char *finish, bool force)
{
    struct api_openai *a = j->api;
    struct http_buf *b = &a->out;
    b->len = 0;
    int r = chunk_head(j, b);
    if (!r)
        r = http_buf_append(b, "{\"index\":0,", 11);
    if (j->kind == OAI_CHAT) {
        if (!r)
            r = http_buf_append(b, "\"delta\":{", 9);
        if (!r && role)
            r = http_buf_printf(b, "\"role\":\"assistant\"%s", text ? "," : "");
        if (!r && text) {
            r = http_buf_append(b, "\"content\":", 10);
            if (!r)
                r = append_json_string(a, b, text, len);
        }
        if (!r)
            r = http_buf_append(b, "},", 2);
    } else {
        if (!r)
            r = http_buf_append(b, "\"text\":", 7);
        if (!r)
            r = append_json_string(a, b, text ? text : "", text ? len : 0);
        if (!r)
            r = http_buf_append(b, ",", 1);
    }
    if (!r)
        r = http_buf_append(b, "\"logprobs\":", 11);
    if (!r)
        r = lp ? dump_json(b, lp) : http_buf_append(b, "null", 4);
    else
        json_decref(lp);
    if (!r)
        r = finish ? http_buf_printf(b, ",\"finish_reason\":\"%s\"}]", finish)
                   : http_buf_append(b, ",\"finish_reason\":null}]", 23);
    if (!r && j->include_usage)
        r = http_buf_append(b, ",\"usage\":null", 13);
    if (!r)
        r = http_buf_append(b, "}", 1);
    if (!r)
        job_send_frame(j, b, force);
}

/* Sends the stream's head and its opening chunk (the chat role, or the
 * echoed prompt). */
static void job_begin_stream(struct oai_job *j)
{
    /* a resumable stream dropped before its head still begins, in its journal */
    if (j->head_sent || (!j->req && !j->resume.resumable))
        return;
    j->head_sent = true;
    if (j->req &&
        sse_stream_begin(&j->sse, j->req, SSE_MODE_DATA, j->api->cfg->sse_outbox_bytes) != 0) {
        j->sse.req = NULL;
        j->req = NULL;
        job_cancel(j, SCHED_ERR_CANCELLED);
        return;
    }
    if (j->kind == OAI_CHAT)
        job_send_chunk(j, "", 0, true, NULL, NULL, false);
    else if (j->echo_len)
        job_send_chunk(j, j->echo, j->echo_len, false, NULL, NULL, false);
}

/* Ping timer: until the first token. Before the head it sends the head (a
 * job waiting in a long queue must not look dead to proxies). */
static void job_ping(void *data)
{
    struct oai_job *j = data;
    if (!j->head_sent) {
        job_begin_stream(j);
        return;
    }
    if (j->sse.req && sse_stream_ping(&j->sse) == LLORCH_EFULL)
        job_cut_slow(j);
}

/* One token's piece, for log-probs (control tokens as their text). */
static size_t token_piece(struct api_openai *a, llorch_token id, char *buf, size_t cap)
{
    int n = tokenizer_token_bytes(a->tok, id, true, buf, cap);
    return n > 0 ? (size_t)LLORCH_MIN((size_t)n, cap) : 0;
}

static json_t *bytes_array(const char *s, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, json_integer((unsigned char)s[i]));
    return arr;
}

/* Chat shape: {"token","logprob","bytes","top_logprobs":[{"token","logprob","bytes"}]}. */
static json_t *chat_logprob_entry(struct oai_job *j, const struct sched_event *ev)
{
    struct api_openai *a = j->api;
    char piece[OAI_TOKEN_TEXT_CAP];
    size_t n = token_piece(a, ev->u.token.id, piece, sizeof(piece));
    json_t *top = json_array();
    for (uint32_t i = 0; top && i < LLORCH_MIN(ev->u.token.n_top, j->n_top); i++) {
        char p2[OAI_TOKEN_TEXT_CAP];
        size_t n2 = token_piece(a, ev->u.token.top[i].id, p2, sizeof(p2));
        json_array_append_new(top, json_pack("{s:o*,s:f,s:o*}", "token", json_text(a, p2, n2),
                                             "logprob", (double)ev->u.token.top[i].logprob,
                                             "bytes", bytes_array(p2, n2)));
    }
    return json_pack("{s:o*,s:f,s:o*,s:o*}", "token", json_text(a, piece, n), "logprob",
                     (double)ev->u.token.logprob, "bytes", bytes_array(piece, n), "top_logprobs",
                     top);
}

/* Legacy shape, appended to the four parallel arrays of lp. */
static void legacy_logprob_append(struct oai_job *j, json_t *lp, const struct sched_event *ev)
{
    struct api_openai *a = j->api;
    char piece[OAI_TOKEN_TEXT_CAP];
    size_t n = token_piece(a, ev->u.token.id, piece, sizeof(piece));
    json_t *top = json_object();
    for (uint32_t i = 0; top && i < LLORCH_MIN(ev->u.token.n_top, j->n_top); i++) {
        char p2[OAI_TOKEN_TEXT_CAP];
        size_t n2 = token_piece(a, ev->u.token.top[i].id, p2, sizeof(p2));
        size_t sl;
        const char *s = sanitize(a, p2, n2, &sl);
        if (s)
            json_object_setn_new_nocheck(top, s, sl, json_real(ev->u.token.top[i].logprob));
    }
    json_array_append_new(json_object_get(lp, "tokens"), json_text(a, piece, n));
    json_array_append_new(json_object_get(lp, "token_logprobs"), json_real(ev->u.token.logprob));
    json_array_append_new(json_object_get(lp, "top_logprobs"), top);
    json_array_append_new(json_object_get(lp, "text_offset"),
                          json_integer((json_int_t)j->text_offset));
    /* offsets count characters, as OpenAI's do; a character split over byte
     * tokens counts once, at its lead byte */
    j->text_offset += utf8_chars(piece, n);
}

static json_t *logprobs_new(enum oai_kind kind)
{
    if (kind == OAI_CHAT)
        return json_pack("{s:[],s:n}", "content", "refusal");
    return json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs", "top_logprobs",
                     "text_offset");
}

static void job_on_token(struct oai_job *j, const struct sched_event *ev)
{
    if (!j->got_token) {
        j->got_token = true;
        if (j->sse.req)
            http_request_timer_stop(j->sse.req);
    }
    const char *text = ev->u.token.text;
    size_t len = ev->u.token.text_len;
    if (!j->stream) {
        if (len)
            http_buf_append(&j->text, text, len);
        if (j->logprobs && j->lp) {
            if (j->kind == OAI_CHAT)
                json_array_append_new(json_object_get(j->lp, "content"),
                                      chat_logprob_entry(j, ev));
            else
                legacy_logprob_append(j, j->lp, ev);
        }
        return;
    }
    if (!job_writing(j) || (len == 0 && !j->logprobs))
        return;
    json_t *lp = NULL;
    if (j->logprobs) {
        lp = logprobs_new(j->kind);
        if (j->kind == OAI_CHAT)
            json_array_append_new(json_object_get(lp, "content"), chat_logprob_entry(j, ev));
        else
            legacy_logprob_append(j, lp, ev);
    }
    job_send_chunk(j, text, len, false, lp, NULL, false);
}

static const char *finish_reason(enum sched_stop_reason r)
{
    return r == SCHED_STOP_MAX_TOKENS ? "length" : "stop";
}

/* The whole response object. */
static void job_respond_whole(struct oai_job *j, const struct sched_event *ev,
                              uint32_t completion)
{
    struct api_openai *a = j->api;
    http_buf_append(&j->text, ev->u.end.text, ev->u.end.text_len);
    json_t *choice;
    const char *fin = finish_reason(ev->u.end.reason);
    json_t *lp = j->lp ? json_incref(j->lp) : json_null();
    if (j->kind == OAI_CHAT) {
        choice = json_pack("{s:i,s:{s:s,s:o*},s:o,s:s}", "index", 0, "message", "role",
                           "assistant", "content", json_text(a, j->text.data ? j->text.data : "",
                                                              j->text.len),
                           "logprobs", lp, "finish_reason", fin);
    } else {
        struct http_buf all = {0};
        http_buf_append(&all, j->echo ? j->echo : "", j->echo_len);
        http_buf_append(&all, j->text.data ? j->text.data : "", j->text.len);
        choice = json_pack("{s:o*,s:i,s:o,s:s}", "text",
                           json_text(a, all.data ? all.data : "", all.len), "index", 0,
                           "logprobs", lp, "finish_reason", fin);
        http_buf_free(&all);
    }
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:s,s:[o*],s:{s:I,s:I,s:I}}", "id", j->id, "object",
                          j->kind == OAI_CHAT ? "chat.completion" : "text_completion", "created",
                          (json_int_t)j->created, "model", a->model_id, "system_fingerprint",
                          OAI_FINGERPRINT, "choices", choice, "usage", "prompt_tokens",
                          (json_int_t)j->n_prompt, "completion_tokens", (json_int_t)completion,
                          "total_tokens", (json_int_t)(j->n_prompt + completion));
    respond_json(a, j->req, 200, o, NULL);
    j->req = NULL;
}

static void job_on_end(struct oai_job *j, const struct sched_event *ev)
{
    /* The end-of-generation token was generated too, though it has no text. */
    uint32_t completion = ev->u.end.tokens_out + (ev->u.end.reason == SCHED_STOP_EOS);
    j->n_prompt = ev->u.end.n_prompt_tokens;
    if (!j->stream) {
        if (j->req)
            job_respond_whole(j, ev, completion);
        return;
    }
    job_begin_stream(j);
    if (!job_writing(j))
        return;
    const char *fin = finish_reason(ev->u.end.reason);
    job_send_chunk(j, ev->u.end.text_len ? ev->u.end.text : NULL, ev->u.end.text_len, false, NULL,
                   fin, true);
    if (j->include_usage && job_writing(j)) {
        struct http_buf *b = &j->api->out;
        b->len = 0;
        int r = chunk_head(j, b);
        if (!r)
            r = http_buf_append(b, "],", 2);
        if (!r)
            r = usage_append(b, j->n_prompt, completion);
        if (!r)
            r = http_buf_append(b, "}", 1);
        if (!r)
            job_send_frame(j, b, true);
    }
}

/* The scheduler's error before or after the head: an HTTP error, or an
 * error frame in the stream. */
static void job_on_error(struct oai_job *j, const struct sched_event *ev)
{
    struct oai_err e;
    const char *m = ev->u.error.message[0] ? ev->u.error.message
                                           : sched_error_name(ev->u.error.code);
    const char *param = j->kind == OAI_CHAT ? "messages" : "prompt";
    switch (ev->u.error.code) {
    case SCHED_ERR_INVALID_REQUEST:
        err_set(&e, 400, "invalid_request_error", NULL, param, "%s", m);
        break;
    case SCHED_ERR_KV_EXHAUSTED:
        if (strstr(m, "context length") || strstr(m, "KV cache holds") || strstr(m, "limit"))
            err_set(&e, 400, "invalid_request_error", "context_length_exceeded", param, "%s", m);
        else
            err_set(&e, 503, "server_error", "kv_cache_exhausted", NULL, "%s", m);
        break;
    case SCHED_ERR_SHUTTING_DOWN:
        err_set(&e, 503, "server_error", "shutting_down", NULL, "%s", m);
        break;
    case SCHED_ERR_TIMEOUT:
        err_set(&e, 504, "server_error", "timeout", NULL, "%s", m);
        break;
    case SCHED_ERR_CANCELLED:
        err_set(&e, 499, "server_error", "cancelled", NULL, "%s", m);
        break;
    case SCHED_ERR_CLIENT_TOO_SLOW:
        err_set(&e, 503, "server_error", "client_too_slow", NULL, "%s", m);
        break;
    default:
        err_set(&e, 500, "server_error", "inference_failed", NULL, "%s", m);
        break;
    }
    if (!j->head_sent && j->req) {
        respond_err(j->api, j->req, &e);
        j->req = NULL;
        resume_entry_free(&j->resume); /* answered whole: nothing to resume */
        return;
    }
    job_begin_stream(j); /* a resumable stream dropped before its head */
    job_send_error_frame(j, &e);
}

static void job_on_event(struct api_sink *sink, const struct sched_event *ev)
{
    struct oai_job *j = (struct oai_job *)sink;
    switch (ev->type) {
    case SCHED_EV_STARTED:
        j->n_prompt = ev->u.started.n_prompt_tokens;
        if (j->stream)
            job_begin_stream(j);
        break;
    case SCHED_EV_TOKEN:
        job_on_token(j, ev);
        break;
    case SCHED_EV_END:
        job_on_end(j, ev);
        job_end_or_keep(j);
        break;
    case SCHED_EV_ERROR:
        job_on_error(j, ev);
        job_end_or_keep(j);
        break;
    }
}

/* ---- handlers ---- */

/* Auth and readiness; false when answered. */
static bool admit_request(struct api_openai *a, struct http_request *r, bool generation)
{
    struct oai_err e;
    if (!api_worker_authorized(a->worker, r)) {
        err_set(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
                "missing or invalid bearer token (Authorization: Bearer <key>)");
        respond_err(a, r, &e);
        return false;
    }
    if (!generation)
        return true;
    if (api_worker_draining(a->worker)) {
        err_set(&e, 503, "server_error", "shutting_down", NULL, "the server is shutting down");
        respond_err(a, r, &e);
        return false;
    }
    if (!api_worker_is_ready(a->worker) || !api_worker_sched(a->worker) || !a->tok) {
        err_set(&e, 503, "server_error", "model_loading", NULL, "the model is loading");
        respond_err(a, r, &e);
        return false;
    }
    return true;
}

static void new_id(char *out, size_t cap, const char *prefix)
{
    uint64_t hi = random_u64(), lo = random_u64();
    snprintf(out, cap, "%s%016llx%08llx", prefix, (unsigned long long)hi,
             (unsigned long long)(lo & 0xffffffffu));
}

static void submit_failed(struct api_openai *a, struct http_request *r, int rc)
{
    struct oai_err e;
    switch (rc) {
    case LLORCH_EFULL:
        err_set(&e, 429, "server_error", "queue_full",
                NULL, "the request queue is full; retry later");
        break;
    case LLORCH_ESHUTDOWN:
        err_set(&e, 503, "server_error", "shutting_down", NULL, "the server is shutting down");
        break;
    case LLORCH_EINVAL:
    case LLORCH_EUTF8:
    case LLORCH_ETOOBIG:
        BAD(&e, NULL, "request rejected: %s", llorch_strerror(rc));
        break;
    default:
        err_set(&e, 500, "server_error", NULL, NULL, "submit failed: %s", llorch_strerror(rc));
        break;
    }
    respond_err(a, r, &e);
}

/* The echo of a completion's prompt (token ids decoded). */
static int echo_text(struct api_openai *a, const struct oai_request *q, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (q->sr.prompt) {
        *out = malloc(q->sr.prompt_len + 1);
        if (!*out)
            return LLORCH_ENOMEM;
        memcpy(*out, q->sr.prompt, q->sr.prompt_len);
        *len = q->sr.prompt_len;
        return 0;
    }
    size_t cap = q->sr.n_prompt_tokens * 8 + 16, n = 0;
    for (int tries = 0; tries < 2; tries++) {
        char *p = malloc(cap);
        if (!p)
            return LLORCH_ENOMEM;
        int rc = tokenizer_decode(a->tok, q->sr.prompt_tokens, q->sr.n_prompt_tokens, p, cap, &n);
        if (rc == 0) {
            *out = p;
            *len = n;
            return 0;
        }
        free(p);
        if (rc != LLORCH_ETOOBIG)
            return rc;
        cap = n + 1;
    }
    return LLORCH_EINTERNAL;
}

static void handle_generate(struct api_openai *a, struct http_request *r, enum oai_kind kind)
{
    if (!admit_request(a, r, true))
        return;
    struct oai_err e = {0};
    json_error_t jerr;
    json_t *root = json_loadb(r->body, r->body_len, 0, &jerr);
    if (!root) {
        BAD(&e, NULL, "the request body is not valid JSON (byte offset %d): %s", jerr.position,
            jerr.text);
        respond_err(a, r, &e);
        return;
    }
    if (!json_is_object(root)) {
        BAD(&e, NULL, "the request body must be a JSON object");
        respond_err(a, r, &e);
        json_decref(root);
        return;
    }
    struct oai_request q = {.kind = kind};
    q.sr.add_bos = tokenizer_adds_bos(a->tok);
    bool ok = kind == OAI_CHAT ? validate_chat(a, root, &q, &e)
                               : validate_completion(a, root, &q, &e);
    struct oai_job *j = ok ? calloc(1, sizeof(*j)) : NULL;
    if (ok && !j)
        err_set(&e, 500, "server_error", NULL, NULL, "out of memory");
    if (j && q.echo && echo_text(a, &q, &j->echo, &j->echo_len) != 0) {
        err_set(&e, 500, "server_error", NULL, NULL, "cannot decode the prompt for echo");
        free(j);
        j = NULL;
    }
    if (!j) {
        respond_err(a, r, &e);
        oai_request_free(&q);
        json_decref(root);
        return;
    }
    j->sink.on_event = job_on_event;
    j->api = a;
    j->req = r;
    j->kind = kind;
    j->stream = q.stream;
    j->include_usage = q.include_usage;
    j->logprobs = q.logprobs;
    j->n_top = q.n_top;
    j->created = (int64_t)time(NULL);
    j->text_offset = utf8_chars(j->echo ? j->echo : "", j->echo_len);
    if (j->logprobs && !j->stream)
        j->lp = logprobs_new(kind);
    new_id(j->id, sizeof(j->id), kind == OAI_CHAT ? "chatcmpl-" : "cmpl-");
    uint32_t grace = 0;
    if (j->stream && !api_worker_request_grace(a->worker, r, root, &grace)) {
        json_decref(j->lp);
        free(j->echo);
        free(j);
        oai_request_free(&q);
        json_decref(root);
        return;
    }
    resume_entry_init(&j->resume, api_worker_resume(a->worker), j->id, strlen(j->id),
                      SSE_MODE_DATA, grace, job_on_expire, a);
    /* OpenAI streams keep their exact wire form unless resumable was asked */
    j->resume.with_ids = j->resume.resumable;
    q.sr.job_id = j->id;
    q.sr.job_id_len = strlen(j->id);
    q.sr.owner = &j->sink;
    /* the scheduler reports the chosen token's log-prob only with n_logprobs > 0 */
    q.sr.params.n_logprobs = j->logprobs ? LLORCH_MAX(j->n_top, 1u) : 0;
    int rc = sched_submit(api_worker_sched(a->worker), &q.sr, &j->req_id);
    oai_request_free(&q);
    json_decref(root);
    if (rc != 0) {
        resume_entry_free(&j->resume);
        json_decref(j->lp);
        free(j->echo);
        free(j);
        submit_failed(a, r, rc);
        return;
    }
    llorch_queue_insert_tail(&a->jobs, &j->node);
    api_worker_job_ref(a->worker);
    http_request_on_abort(r, job_on_abort, j);
    if (j->stream && a->cfg->ping_interval_ms)
        http_request_timer_start(r, a->cfg->ping_interval_ms, job_ping, j);
}

/* GET /v1/completions/{id} and /v1/chat/completions/{id} (the stream's
 * chunk id) with Last-Event-ID: the rest of a resumable stream. */
static void h_resume(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    struct api_openai *a = ctx;
    if (!admit_request(a, r, false))
        return;
    struct oai_err e;
    struct resume_entry *en = resume_registry_find(api_worker_resume(a->worker), tail, tail_len);
    struct oai_job *j = en && en->expire == job_on_expire
                            ? llorch_container_of(en, struct oai_job, resume) : NULL;
    bool chat_route = r->path_len >= 9 && !memcmp(r->path, "/v1/chat/", 9);
    if (!j || (j->kind == OAI_CHAT) != chat_route) {
        err_set(&e, 404, "invalid_request_error", "resume_not_found", NULL,
                "no resumable stream with this id (unknown, not resumable, expired, or over "
                "the journal bound)");
        respond_err(a, r, &e);
        return;
    }
    if (!en->detached || j->sse.req) {
        err_set(&e, 409, "invalid_request_error", "stream_attached", NULL,
                "this stream is being read on another connection");
        respond_err(a, r, &e);
        return;
    }
    size_t hl = 0;
    const char *h = http_request_header(r, "last-event-id", &hl);
    uint64_t from;
    int rc = resume_entry_parse_last_id(en, h, hl, &from);
    if (rc) {
        err_set(&e, 400, "invalid_request_error",
                rc == LLORCH_ERANGE ? "last_event_id_past_end" : "invalid_last_event_id",
                "Last-Event-ID", rc == LLORCH_ERANGE
                                     ? "Last-Event-ID is past the last frame of this stream"
                                     : "Last-Event-ID must be an id of this stream's frames");
        respond_err(a, r, &e);
        return;
    }
    if (sse_stream_begin(&j->sse, r, SSE_MODE_DATA, a->cfg->sse_outbox_bytes) != 0) {
        j->sse.req = NULL;
        return;
    }
    j->req = r;
    api_worker_count_resume(a->worker, en, from);
    const char *data;
    size_t len;
    resume_entry_attach(en, from, &data, &len);
    if (len)
        sse_stream_send_frame(&j->sse, data, len, true);
    if (j->finished) {
        job_end_or_keep(j);
        return;
    }
    http_request_on_abort(r, job_on_abort, j);
}

static void h_completions(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    handle_generate(ctx, r, OAI_COMPLETION);
}

static void h_chat(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    handle_generate(ctx, r, OAI_CHAT);
}

static json_t *model_object(struct api_openai *a)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:I}", "id", a->model_id, "object", "model", "created",
                     (json_int_t)a->created, "owned_by", "llorch-cpud", "max_model_len",
                     (json_int_t)a->n_ctx);
}

static void h_models(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    struct api_openai *a = ctx;
    if (!admit_request(a, r, false))
        return;
    respond_json(a, r, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", model_object(a)),
                 NULL);
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

static void h_model(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    struct api_openai *a = ctx;
    if (!admit_request(a, r, false))
        return;
    /* the id may contain '/' (as "org/name"), percent-encoded or not */
    char id[512];
    size_t n = 0;
    bool ok = tail_len > 0;
    for (size_t i = 0; ok && i < tail_len; i++) {
        char c = tail[i];
        if (c == '%' && i + 2 < tail_len + 0 && hexval(tail[i + 1]) >= 0 &&
            hexval(tail[i + 2]) >= 0) {
            c = (char)(hexval(tail[i + 1]) * 16 + hexval(tail[i + 2]));
            i += 2;
        }
        if (n + 1 >= sizeof(id))
            ok = false;
        else
            id[n++] = c;
    }
    id[n] = 0;
    if (ok && (!strcmp(id, a->model_id) || (a->model_name && !strcmp(id, a->model_name)) ||
               !strcmp(id, a->cfg->model_ref))) {
        respond_json(a, r, 200, model_object(a), NULL);
        return;
    }
    struct oai_err e;
    err_set(&e, 404, "invalid_request_error", "model_not_found", "model",
            "The model `%.200s` does not exist; this server serves `%s`", id, a->model_id);
    respond_err(a, r, &e);
}

/* ---- lifecycle ---- */

static enum chat_template resolve_template(const struct config *cfg, const char *tmpl,
                                           size_t len)
{
    if (cfg->chat_template[0])
        return chat_template_from_name(cfg->chat_template);
    if (!tmpl || len == 0)
        return CHAT_TEMPLATE_CHATML;
    return chat_template_detect(tmpl, len);
}

LLORCH_API int api_openai_set_model(struct api_openai *a, const struct tokenizer *tok,
                                    const char *chat_template, size_t chat_template_len,
                                    uint32_t n_ctx)
{
    char *t = NULL;
    if (chat_template && chat_template_len) {
        t = malloc(chat_template_len + 1);
        if (!t)
            return LLORCH_ENOMEM;
        memcpy(t, chat_template, chat_template_len);
        t[chat_template_len] = 0;
    }
    free(a->chat_tmpl);
    a->chat_tmpl = t;
    a->chat_tmpl_len = t ? chat_template_len : 0;
    a->tmpl = resolve_template(a->cfg, a->chat_tmpl, a->chat_tmpl_len);
    a->tok = tok;
    a->n_ctx = n_ctx;
    return 0;
}

LLORCH_API enum chat_template api_openai_chat_template(const struct api_openai *a)
{
    return a->tmpl;
}

LLORCH_API int api_openai_new(struct api_openai **out, struct http_server *srv,
                              const struct api_openai_opts *o)
{
    *out = NULL;
    struct api_openai *a = calloc(1, sizeof(*a));
    if (!a)
        return LLORCH_ENOMEM;
    a->srv = srv;
    a->cfg = o->cfg;
    a->worker = o->worker;
    a->created = (int64_t)time(NULL);
    llorch_queue_init(&a->jobs);
    const char *id = o->model_id && o->model_id[0] ? o->model_id : o->cfg->model_ref;
    a->model_id = strdup(id[0] ? id : "model");
    a->model_name = o->model_name ? strdup(o->model_name) : NULL;
    int r = a->model_id && (!o->model_name || a->model_name) ? 0 : LLORCH_ENOMEM;
    if (!r)
        r = api_openai_set_model(a, o->tok, o->chat_template, o->chat_template_len, o->n_ctx);
    static const struct {
        unsigned methods;
        const char *path;
        bool prefix;
        http_handler_fn fn;
    } routes[] = {
        {LLORCH_HTTP_GET, "/v1/models", false, h_models},
        {LLORCH_HTTP_GET, "/v1/models/", true, h_model},
        {LLORCH_HTTP_POST, "/v1/completions", false, h_completions},
        {LLORCH_HTTP_POST, "/v1/chat/completions", false, h_chat},
        {LLORCH_HTTP_GET, "/models", false, h_models},
        {LLORCH_HTTP_POST, "/completions", false, h_completions},
        {LLORCH_HTTP_POST, "/chat/completions", false, h_chat},
        {LLORCH_HTTP_GET, "/v1/completions/", true, h_resume},
        {LLORCH_HTTP_GET, "/v1/chat/completions/", true, h_resume},
    };
    for (size_t i = 0; !r && i < LLORCH_ARRAY_SIZE(routes); i++)
        r = http_server_route(srv, routes[i].methods, routes[i].path, routes[i].prefix,
                              routes[i].fn, a);
    if (r) {
        api_openai_free(a);
        return r;
    }
    *out = a;
    return 0;
}

LLORCH_API void api_openai_free(struct api_openai *a)
{
    if (!a)
        return;
    while (!llorch_queue_empty(&a->jobs)) {
        struct oai_job *j = llorch_container_of(llorch_queue_head(&a->jobs), struct oai_job, node);
        llorch_queue_remove(&j->node);
        sse_stream_free(&j->sse);
        resume_entry_free(&j->resume);
        http_buf_free(&j->text);
        json_decref(j->lp);
        free(j->echo);
        free(j);
    }
    http_buf_free(&a->out);
    http_buf_free(&a->frame);
    free(a->san);
    free(a->chat_tmpl);
    free(a->model_id);
    free(a->model_name);
    free(a);
}

/* ---- validation alone (fuzzers, tests) ---- */

LLORCH_API int api_openai_validate(struct api_openai *a, bool chat, const char *body, size_t len,
                                   char **err_body)
{
    *err_body = NULL;
    if (!a->tok)
        return 503;
    struct oai_err e = {0};
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    struct oai_request q = {.kind = chat ? OAI_CHAT : OAI_COMPLETION};
    bool ok = false;
    if (!root)
        BAD(&e, NULL, "the request body is not valid JSON (byte offset %d): %s", jerr.position,
            jerr.text);
    else if (!json_is_object(root))
        BAD(&e, NULL, "the request body must be a JSON object");
    else {
        q.sr.add_bos = tokenizer_adds_bos(a->tok);
        ok = chat ? validate_chat(a, root, &q, &e) : validate_completion(a, root, &q, &e);
    }
    int status = ok ? 200 : e.status;
    if (!ok) {
        json_t *o = err_json(&e);
        *err_body = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
    }
    oai_request_free(&q);
    json_decref(root);
    return status;
}
