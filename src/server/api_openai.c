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

#include "api.h"
#include "llorch/config.h"
#include "llorch/error.h"
#include "queue.h"
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
    char *model_ref;
    char *chat_template_name;     /* forced family, or "" */
    struct api *core;
    char *model_id;
    char *model_name;
    int64_t created;
    const struct tokenizer *tok;
    char *chat_tmpl;              /* the file's template text, or NULL */
    size_t chat_tmpl_len;
    enum chat_template tmpl;
    uint32_t n_ctx;
    struct http_buf out;          /* scratch: the JSON being emitted */
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

/* An OpenAI job: the core's job (its request, stream and lifecycle) plus
 * what its chunks and whole response need. A stream's head is sent at
 * STARTED or at the first ping, whichever comes first. */
struct oai_job {
    struct api_job base;          /* first: the scheduler's owner */
    struct api_openai *api;
    enum oai_kind kind;
    bool stream;
    bool include_usage;
    bool logprobs;                /* per-token log-probs wanted */
    uint32_t n_top;               /* alternatives per token */
    int64_t created;
    uint32_t n_prompt;
    uint64_t text_offset;         /* legacy logprobs: byte offset of the next token */
    char *echo;                   /* completions with echo: the prompt text */
    size_t echo_len;
    struct http_buf text;         /* whole response: the output so far */
    json_t *lp;                   /* whole response: the log-probs so far */
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

/* OpenAI's status, type and code of every api_error; `names_prompt`: the
 * error is about the prompt (param "prompt" or "messages"). */
static const struct oai_wire {
    int status;
    const char *type;
    const char *code;             /* NULL = JSON null */
    bool names_prompt;
} oai_errors[API_ERR_COUNT_] = {
    [API_ERR_CANCELLED] = {499, "server_error", "cancelled", false},
    [API_ERR_TIMEOUT] = {504, "server_error", "timeout", false},
    [API_ERR_INVALID_REQUEST] = {400, "invalid_request_error", NULL, true},
    [API_ERR_INFERENCE_FAILED] = {500, "server_error", "inference_failed", false},
    [API_ERR_KV_EXHAUSTED] = {503, "server_error", "kv_cache_exhausted", false},
    [API_ERR_CLIENT_TOO_SLOW] = {503, "server_error", "client_too_slow", false},
    [API_ERR_SHUTTING_DOWN] = {503, "server_error", "shutting_down", false},
    [API_ERR_CONTEXT_EXCEEDED] = {400, "invalid_request_error", "context_length_exceeded", true},
    [API_ERR_PROMPT_TOO_LARGE] = {400, "invalid_request_error", "context_length_exceeded", true},
    [API_ERR_QUEUE_FULL] = {429, "server_error", "queue_full", false},
    [API_ERR_JOB_EXISTS] = {500, "server_error", NULL, false}, /* our ids are random */
    [API_ERR_LOADING] = {503, "server_error", "model_loading", false},
    [API_ERR_INTERNAL] = {500, "server_error", NULL, false},
};

/* The error of code `c` with a message; param names the prompt's field when
 * the table says the error is about the prompt. */
static void err_code(struct oai_err *e, enum api_error c, const char *prompt_param,
                     const char *message)
{
    const struct oai_wire *w = &oai_errors[(unsigned)c < API_ERR_COUNT_ ? c : API_ERR_INTERNAL];
    err_set(e, w->status, w->type, w->code, w->names_prompt ? prompt_param : NULL, "%s",
            message);
}

LLORCH_API int api_openai_error_wire(enum api_error e, const char **type, const char **code)
{
    struct oai_err err;
    err_code(&err, e, "prompt", "");
    *type = err.type;
    *code = err.code;
    return err.status;
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

static void respond_json(struct api_openai *a, struct http_request *r, int status, json_t *o,
                         const char *extra)
{
    api_respond_json(a->core, r, status, o, extra);
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
    api_number_text(v, num, sizeof(num));
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
    const char *names[] = {a->model_id, a->model_name, a->model_ref};
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
    size_t chars = api_utf8_chars(s, len);
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
        if (rc == LLORCH_ETOOBIG || (rc == 0 && api_utf8_chars(q->rendered, len) > OAI_PROMPT_MAX_CHARS)) {
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

static void job_free(struct api_job *base)
{
    struct oai_job *j = (struct oai_job *)base;
    http_buf_free(&j->text);
    json_decref(j->lp);
    free(j->echo);
    free(j);
}

/* The common head of every object: {"id":..,"object":..,"created":..,"model":.. */
static int chunk_head(struct oai_job *j, struct http_buf *b)
{
    struct api_openai *a = j->api;
    int r = http_buf_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", j->id,
                            j->kind == OAI_CHAT ? "chat.completion.chunk" : "text_completion",
                            (long long)j->created);
    if (!r)
        r = api_json_append_string(a->core, b, a->model_id, strlen(a->model_id));
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

static void job_send_frame(struct oai_job *j, struct http_buf *b, bool force)
{
    api_job_send(&j->base, "chunk", b->data, b->len, force);
}

static void job_send_error_frame(struct oai_job *j, const struct oai_err *e)
{
    struct api_openai *a = j->api;
    a->out.len = 0;
    if (api_job_writing(&j->base) && api_json_append(&a->out, err_json(e)) == 0)
        api_job_send(&j->base, "error", a->out.data, a->out.len, true);
}

static void job_send_error(struct api_job *base, enum api_error c, const char *message)
{
    struct oai_err e;
    err_code(&e, c, NULL, message);
    job_send_error_frame((struct oai_job *)base, &e);
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
                r = api_json_append_string(a->core, b, text, len);
        }
        if (!r)
            r = http_buf_append(b, "},", 2);
    } else {
        if (!r)
            r = http_buf_append(b, "\"text\":", 7);
        if (!r)
            r = api_json_append_string(a->core, b, text ? text : "", text ? len : 0);
        if (!r)
            r = http_buf_append(b, ",", 1);
    }
    if (!r)
        r = http_buf_append(b, "\"logprobs\":", 11);
    if (!r)
        r = lp ? api_json_append(b, lp) : http_buf_append(b, "null", 4);
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
    if (j->base.head_sent || (!j->base.req && !j->base.resume.resumable))
        return;
    if (api_job_begin_stream(&j->base, SSE_MODE_DATA) != 0)
        return;
    if (j->kind == OAI_CHAT)
        job_send_chunk(j, "", 0, true, NULL, NULL, false);
    else if (j->echo_len)
        job_send_chunk(j, j->echo, j->echo_len, false, NULL, NULL, false);
}

/* The ping timer before the head: a job waiting in a long queue must not
 * look dead to proxies. */
static void job_ping_before_head(struct api_job *base)
{
    job_begin_stream((struct oai_job *)base);
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
        json_array_append_new(top, json_pack("{s:o*,s:f,s:o*}", "token", api_json_text(a->core, p2, n2),
                                             "logprob", (double)ev->u.token.top[i].logprob,
                                             "bytes", bytes_array(p2, n2)));
    }
    return json_pack("{s:o*,s:f,s:o*,s:o*}", "token", api_json_text(a->core, piece, n), "logprob",
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
        const char *s = api_text_sanitize(a->core, p2, n2, &sl);
        if (s)
            json_object_setn_new_nocheck(top, s, sl, json_real(ev->u.token.top[i].logprob));
    }
    json_array_append_new(json_object_get(lp, "tokens"), api_json_text(a->core, piece, n));
    json_array_append_new(json_object_get(lp, "token_logprobs"), json_real(ev->u.token.logprob));
    json_array_append_new(json_object_get(lp, "top_logprobs"), top);
    json_array_append_new(json_object_get(lp, "text_offset"),
                          json_integer((json_int_t)j->text_offset));
    /* offsets count characters, as OpenAI's do; a character split over byte
     * tokens counts once, at its lead byte */
    j->text_offset += api_utf8_chars(piece, n);
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
    if (!api_job_writing(&j->base) || (len == 0 && !j->logprobs))
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
                           "assistant", "content", api_json_text(a->core, j->text.data ? j->text.data : "",
                                                              j->text.len),
                           "logprobs", lp, "finish_reason", fin);
    } else {
        struct http_buf all = {0};
        http_buf_append(&all, j->echo ? j->echo : "", j->echo_len);
        http_buf_append(&all, j->text.data ? j->text.data : "", j->text.len);
        choice = json_pack("{s:o*,s:i,s:o,s:s}", "text",
                           api_json_text(a->core, all.data ? all.data : "", all.len), "index", 0,
                           "logprobs", lp, "finish_reason", fin);
        http_buf_free(&all);
    }
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:s,s:[o*],s:{s:I,s:I,s:I}}", "id", j->id, "object",
                          j->kind == OAI_CHAT ? "chat.completion" : "text_completion", "created",
                          (json_int_t)j->created, "model", a->model_id, "system_fingerprint",
                          OAI_FINGERPRINT, "choices", choice, "usage", "prompt_tokens",
                          (json_int_t)j->n_prompt, "completion_tokens", (json_int_t)completion,
                          "total_tokens", (json_int_t)(j->n_prompt + completion));
    respond_json(a, j->base.req, 200, o, NULL);
    j->base.req = NULL;
}

static void job_on_end(struct oai_job *j, const struct sched_event *ev)
{
    /* The end-of-generation token was generated too, though it has no text. */
    uint32_t completion = ev->u.end.tokens_out + (ev->u.end.reason == SCHED_STOP_EOS);
    j->n_prompt = ev->u.end.n_prompt_tokens;
    if (!j->stream) {
        if (j->base.req)
            job_respond_whole(j, ev, completion);
        return;
    }
    job_begin_stream(j);
    if (!api_job_writing(&j->base))
        return;
    const char *fin = finish_reason(ev->u.end.reason);
    job_send_chunk(j, ev->u.end.text_len ? ev->u.end.text : NULL, ev->u.end.text_len, false, NULL,
                   fin, true);
    if (j->include_usage && api_job_writing(&j->base)) {
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
    enum api_error c = api_error_from_sched(ev->u.error.code);
    const char *m = ev->u.error.message[0] ? ev->u.error.message : sched_error_name(ev->u.error.code);
    err_code(&e, c, j->kind == OAI_CHAT ? "messages" : "prompt", m);
    if (!j->base.head_sent && j->base.req) {
        respond_err(j->api, j->base.req, &e);
        j->base.req = NULL;
        resume_entry_free(&j->base.resume); /* answered whole: nothing to resume */
        return;
    }
    job_begin_stream(j); /* a resumable stream dropped before its head */
    job_send_error_frame(j, &e);
}

static void job_on_event(struct api_job *base, const struct sched_event *ev)
{
    struct oai_job *j = (struct oai_job *)base;
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
        break;
    case SCHED_EV_ERROR:
        job_on_error(j, ev);
        break;
    }
}

static const char *job_error_code(enum api_error e)
{
    const char *type, *code;
    api_openai_error_wire(e, &type, &code);
    return code ? code : type;
}

static const struct api_job_ops oai_job_ops = {
    .api = "openai",
    .on_event = job_on_event,
    .send_error = job_send_error,
    .ping_before_head = job_ping_before_head,
    .error_code = job_error_code,
    .free = job_free,
};

/* ---- handlers ---- */

/* Auth and readiness; false when answered. */
static bool admit_request(struct api_openai *a, struct http_request *r, bool generation)
{
    struct oai_err e;
    if (!api_authorized(a->core, r)) {
        err_set(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
                "missing or invalid bearer token (Authorization: Bearer <key>)");
        respond_err(a, r, &e);
        return false;
    }
    if (!generation)
        return true;
    if (api_draining(a->core)) {
        err_code(&e, API_ERR_SHUTTING_DOWN, NULL, "the server is shutting down");
        respond_err(a, r, &e);
        return false;
    }
    if (!api_is_ready(a->core) || !a->tok) {
        err_code(&e, API_ERR_LOADING, NULL, "the model is loading");
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
    enum api_error c = api_error_from_submit(rc);
    char msg[200];
    switch (c) {
    case API_ERR_QUEUE_FULL:
        snprintf(msg, sizeof(msg), "the request queue is full; retry later");
        break;
    case API_ERR_SHUTTING_DOWN:
        snprintf(msg, sizeof(msg), "the server is shutting down");
        break;
    case API_ERR_INVALID_REQUEST:
        snprintf(msg, sizeof(msg), "request rejected: %s", llorch_strerror(rc));
        break;
    default:
        snprintf(msg, sizeof(msg), "submit failed: %s", llorch_strerror(rc));
        break;
    }
    err_code(&e, c, NULL, msg);
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
    j->api = a;
    j->kind = kind;
    j->stream = q.stream;
    j->include_usage = q.include_usage;
    j->logprobs = q.logprobs;
    j->n_top = q.n_top;
    j->created = (int64_t)time(NULL);
    j->text_offset = api_utf8_chars(j->echo ? j->echo : "", j->echo_len);
    if (j->logprobs && !j->stream)
        j->lp = logprobs_new(kind);
    new_id(j->id, sizeof(j->id), kind == OAI_CHAT ? "chatcmpl-" : "cmpl-");
    /* OpenAI streams keep their exact wire form (no ids) unless resumable */
    if (j->stream && !api_request_grace(a->core, r, root, &j->base.resume_grace_ms)) {
        json_decref(j->lp);
        free(j->echo);
        free(j);
        oai_request_free(&q);
        json_decref(root);
        return;
    }
    q.sr.job_id = j->id;
    q.sr.job_id_len = strlen(j->id);
    /* the scheduler reports the chosen token's log-prob only with n_logprobs > 0 */
    q.sr.params.n_logprobs = j->logprobs ? LLORCH_MAX(j->n_top, 1u) : 0;
    int rc = api_job_submit(a->core, &j->base, &oai_job_ops, r, &q.sr, j->stream);
    oai_request_free(&q);
    json_decref(root);
    if (rc != 0) {
        json_decref(j->lp);
        free(j->echo);
        free(j);
        submit_failed(a, r, rc);
        return;
    }
}

/* GET /v1/completions/{id} and /v1/chat/completions/{id} (the stream's
 * chunk id) with Last-Event-ID: the rest of a resumable stream. */
static void h_resume(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    struct api_openai *a = ctx;
    if (!admit_request(a, r, false))
        return;
    struct oai_err e;
    struct api_job *base = api_job_find_resumable(a->core, &oai_job_ops, tail, tail_len);
    struct oai_job *j = (struct oai_job *)base;
    bool chat_route = r->path_len >= 9 && !memcmp(r->path, "/v1/chat/", 9);
    if (!j || (j->kind == OAI_CHAT) != chat_route) {
        err_set(&e, 404, "invalid_request_error", "resume_not_found", NULL,
                "no resumable stream with this id (unknown, not resumable, expired, or over "
                "the journal bound)");
        respond_err(a, r, &e);
        return;
    }
    int rc = api_job_resume(base, r);
    if (rc == LLORCH_EAGAIN) {
        err_set(&e, 409, "invalid_request_error", "stream_attached", NULL,
                "this stream is being read on another connection");
        respond_err(a, r, &e);
    } else if (rc) {
        err_set(&e, 400, "invalid_request_error",
                rc == LLORCH_ERANGE ? "last_event_id_past_end" : "invalid_last_event_id",
                "Last-Event-ID", rc == LLORCH_ERANGE
                                     ? "Last-Event-ID is past the last frame of this stream"
                                     : "Last-Event-ID must be an id of this stream's frames");
        respond_err(a, r, &e);
    }
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

static void h_model(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    struct api_openai *a = ctx;
    if (!admit_request(a, r, false))
        return;
    /* the id may contain '/' (as "org/name"), percent-encoded or not */
    char id[512];
    size_t n;
    bool ok = api_path_unescape(tail, tail_len, true, id, sizeof(id), &n);
    if (ok && (!strcmp(id, a->model_id) || (a->model_name && !strcmp(id, a->model_name)) ||
               !strcmp(id, a->model_ref))) {
        respond_json(a, r, 200, model_object(a), NULL);
        return;
    }
    struct oai_err e;
    err_set(&e, 404, "invalid_request_error", "model_not_found", "model",
            "The model `%.200s` does not exist; this server serves `%s`", id, a->model_id);
    respond_err(a, r, &e);
}

/* ---- lifecycle ---- */

static enum chat_template resolve_template(const char *forced, const char *tmpl,
                                           size_t len)
{
    if (forced[0])
        return chat_template_from_name(forced);
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
    a->tmpl = resolve_template(a->chat_template_name, a->chat_tmpl, a->chat_tmpl_len);
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
    a->model_ref = strdup(o->model_ref ? o->model_ref : "");
    a->chat_template_name = strdup(o->chat_template_name ? o->chat_template_name : "");
    a->core = o->core;
    a->created = (int64_t)time(NULL);
    const char *ref = o->model_ref ? o->model_ref : "";
    const char *id = o->model_id && o->model_id[0] ? o->model_id : ref;
    a->model_id = strdup(id[0] ? id : "model");
    a->model_name = o->model_name ? strdup(o->model_name) : NULL;
    int r = a->model_id && (!o->model_name || a->model_name) && a->model_ref &&
                    a->chat_template_name
                ? 0
                : LLORCH_ENOMEM;
    if (!r)
        r = api_openai_set_model(a, o->tok, o->chat_template, o->chat_template_len, o->n_ctx);
    /* path, methods, handler and metrics label: the one route table */
    static const struct {
        unsigned methods;
        const char *path;
        bool prefix;
        http_handler_fn fn;
        enum metrics_endpoint label;
    } routes[] = {
        {LLORCH_HTTP_GET, "/v1/models", false, h_models, METRICS_EP_MODELS},
        {LLORCH_HTTP_GET, "/v1/models/", true, h_model, METRICS_EP_MODEL},
        {LLORCH_HTTP_POST, "/v1/completions", false, h_completions, METRICS_EP_COMPLETIONS},
        {LLORCH_HTTP_POST, "/v1/chat/completions", false, h_chat, METRICS_EP_CHAT_COMPLETIONS},
        {LLORCH_HTTP_GET, "/models", false, h_models, METRICS_EP_MODELS_ROOT},
        {LLORCH_HTTP_POST, "/completions", false, h_completions, METRICS_EP_COMPLETIONS_ROOT},
        {LLORCH_HTTP_POST, "/chat/completions", false, h_chat, METRICS_EP_CHAT_COMPLETIONS_ROOT},
        {LLORCH_HTTP_GET, "/v1/completions/", true, h_resume, METRICS_EP_COMPLETIONS_RESUME},
        {LLORCH_HTTP_GET, "/v1/chat/completions/", true, h_resume,
         METRICS_EP_CHAT_COMPLETIONS_RESUME},
    };
    for (size_t i = 0; !r && i < LLORCH_ARRAY_SIZE(routes); i++)
        r = http_server_route_tagged(srv, routes[i].methods, routes[i].path, routes[i].prefix,
                                     routes[i].fn, a, (int)routes[i].label);
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
    http_buf_free(&a->out);
    free(a->chat_tmpl);
    free(a->model_id);
    free(a->model_name);
    free(a->model_ref);
    free(a->chat_template_name);
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
