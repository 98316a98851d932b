/* Load generator for the worker contract's streaming endpoint (POST /execute,
 * or /v1/inference when that path is given). One thread drives libcurl multi:
 * a closed loop keeps N streams in flight, an open loop starts streams at a
 * Poisson rate. Every stream's SSE frames are parsed and their order checked
 * (started -> token* -> exactly one end|error); the run reports requests/s,
 * output tokens/s, time to first token and inter-token latency percentiles,
 * errors by code and malformed streams, as a table and as one CSV row.
 * It always stops by itself (request count and duration are both bounded) and
 * only talks to the address given, which must be loopback unless
 * --allow-remote is passed.
 *
 * --scenario stall measures what a long prompt does to streams already
 * running (stall-free batching, issue #19), through the OpenAI
 * /v1/completions stream that both llorch-cpud and llama-server speak (with
 * logprobs: 1, so that every token is a frame even when its text is empty or
 * held back, as on a synthetic model's vocabulary): the
 * long prompt's TTFT on the idle server first, then N streams decoding, the
 * long prompt at time T, K short requests shortly after it, and the running
 * streams' inter-token latency and throughput before and during the
 * prefill. */
#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LG_MAX_REQUESTS 10000000ULL          /* hard cap on --requests */
#define LG_MAX_DURATION_S 86400.0            /* hard cap on --duration */
#define LG_MAX_DRAIN_S 600.0                 /* hard cap on --drain-timeout */
#define LG_MAX_IDLE 100000u                  /* hard cap on --idle-streams */
#define LG_MAX_INFLIGHT 100000u              /* hard cap on --concurrency / --max-inflight */
#define LG_LINE_MAX (64u * 1024u)            /* one SSE line; longer is malformed */
#define LG_FRAME_MAX (1024u * 1024u)         /* one SSE frame's data; larger is malformed */
#define LG_SAMPLES_MAX (16u * 1024u * 1024u) /* latency samples kept per kind */
#define LG_ERR_KINDS 64                      /* distinct error codes tallied by name */
#define LG_PROMPTS_MAX 1000000u              /* lines read from --prompt-file */
#define LG_PROMPT_CHARS_MAX 32768u           /* the contract's prompt limit */

struct lg_opts {
    const char *url;
    bool allow_remote;
    const char *prompt;
    const char *prompt_file;
    uint32_t prompt_tokens_approx;
    uint32_t max_tokens;
    double temperature;
    uint64_t seed;
    uint32_t concurrency;
    bool concurrency_set;
    double rate;
    uint32_t max_inflight;
    uint64_t requests;
    double duration_s;
    double drain_s;
    uint32_t idle_streams;
    uint32_t idle_max_tokens;
    uint32_t idle_read_bps;
    double connect_timeout_s;
    const char *csv;
    const char *label;
    bool fail_on_error;
    bool quiet;
    /* --scenario stall */
    bool stall;
    uint32_t stall_streams;
    uint32_t stall_prompt_tokens;
    uint32_t stall_stream_tokens;
    double stall_at_s;
    uint32_t stall_shorts;
    double stall_short_delay_s;
};

/* Growable array of latency samples in seconds, capped at LG_SAMPLES_MAX. */
struct lg_samples {
    double *v;
    size_t n, cap;
    uint64_t dropped;
};

struct lg_errcount {
    char code[48];
    uint64_t n;
};

/* Counters for one class of streams (the measured load, or the idle ones). */
struct lg_tally {
    uint64_t started;   /* requests sent */
    uint64_t ok;        /* ended with an end frame */
    uint64_t errors;    /* error frame, HTTP status other than 200, transport error */
    uint64_t malformed; /* frame order or content broke the contract */
    uint64_t aborted;   /* cut by loadgen at the deadline; neither error nor malformed */
    uint64_t out_tokens;
    uint64_t token_frames;
    uint64_t tokens_out_mismatch; /* end.tokens_out differs from token frames seen */
    uint64_t pings;
    struct lg_errcount err[LG_ERR_KINDS];
    uint64_t err_other;
    char first_malformed[200];
};

enum lg_state { LG_WAIT_STARTED, LG_IN_TOKENS, LG_TERMINATED };

struct lg;

struct lg_stream {
    struct lg *lg;
    CURL *easy;
    bool idle;
    uint64_t index;
    char job_id[64];
    char *body;
    double t_start, t_last_token;
    long http_status; /* 0 until the first body byte */
    bool content_type_ok;
    enum lg_state state;
    bool saw_end;
    char err_code[48];
    bool malformed;
    char malformed_why[128];
    int64_t last_i;
    uint64_t token_frames;
    bool have_tokens_out;
    uint64_t tokens_out;
    /* SSE parser: one line at a time, then the frame's fields. */
    char *line;
    size_t line_len, line_cap;
    bool pending_cr;
    char event[32];
    bool have_event;
    bool event_too_long;
    char *data;
    size_t data_len, data_cap;
    bool have_data;
    int framing; /* 0 unknown, 1 "event:" lines, 2 data-only (/v1/inference) */
    bool done_marker;
    /* Body of a non-200 reply, for the error code it names. */
    char errbody[512];
    size_t errbody_len;
};

struct lg {
    struct lg_opts o;
    CURLM *multi;
    struct curl_slist *headers;
    char *target; /* full URL of the streaming endpoint */
    char **prompts;
    size_t n_prompts;
    uint64_t rng;
    uint64_t issued, idle_issued;
    uint32_t inflight, idle_inflight;
    uint32_t idle_target; /* idle streams to hold; one that fails is not replaced */
    double t0, t_deadline, t_drain_end, t_last_done, next_arrival;
    bool stopping;
    uint64_t arrivals_dropped;
    struct lg_tally load, idle;
    struct lg_samples ttft, itl;
    struct lg_stream **live;
    size_t n_live, cap_live;
};

static double lg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* xorshift64*: seeded, so synthetic prompts and arrivals repeat run to run. */
static uint64_t lg_rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double lg_rng_unit(uint64_t *s)
{
    return (double)(lg_rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static void lg_samples_push(struct lg_samples *s, double v)
{
    if (s->n == s->cap) {
        if (s->cap >= LG_SAMPLES_MAX) {
            s->dropped++;
            return;
        }
        size_t cap = s->cap ? s->cap * 2 : 4096;
        double *nv = realloc(s->v, cap * sizeof *nv);
        if (!nv) {
            s->dropped++;
            return;
        }
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = v;
}

static int lg_double_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples, in milliseconds; NAN when empty. */
static double lg_samples_pct_ms(const struct lg_samples *s, double p)
{
    if (s->n == 0)
        return NAN;
    double rank = ceil(p / 100.0 * (double)s->n);
    size_t idx = rank < 1.0 ? 0 : (size_t)rank - 1;
    if (idx >= s->n)
        idx = s->n - 1;
    return s->v[idx] * 1e3;
}

static void lg_tally_error(struct lg_tally *t, const char *code)
{
    t->errors++;
    for (size_t k = 0; k < LG_ERR_KINDS; k++) {
        if (t->err[k].n == 0) {
            snprintf(t->err[k].code, sizeof t->err[k].code, "%s", code);
            t->err[k].n = 1;
            return;
        }
        if (strcmp(t->err[k].code, code) == 0) {
            t->err[k].n++;
            return;
        }
    }
    t->err_other++;
}

/* "CODE:n;CODE:n" (or "" when none) into buf. */
static void lg_tally_errors_fmt(const struct lg_tally *t, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t k = 0; k < LG_ERR_KINDS && t->err[k].n; k++) {
        int w = snprintf(buf + off, len - off, "%s%s:%" PRIu64, off ? ";" : "", t->err[k].code,
                         t->err[k].n);
        if (w < 0 || (size_t)w >= len - off)
            return;
        off += (size_t)w;
    }
    if (t->err_other)
        snprintf(buf + off, len - off, "%sOTHER:%" PRIu64, off ? ";" : "", t->err_other);
}

static struct lg_tally *lg_stream_tally(struct lg_stream *st)
{
    return st->idle ? &st->lg->idle : &st->lg->load;
}

static void lg_stream_malformed(struct lg_stream *st, const char *fmt, const char *detail)
{
    if (st->malformed)
        return;
    st->malformed = true;
    snprintf(st->malformed_why, sizeof st->malformed_why, fmt, detail ? detail : "");
}

static bool lg_stop_reason_valid(const char *r)
{
    static const char *const ok[] = {"max_tokens", "eos", "stop_sequence", "cancelled", "error"};
    for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++)
        if (strcmp(r, ok[k]) == 0)
            return true;
    return false;
}

/* One complete frame (event type + data) in contract order. */
static void lg_frame_handle(struct lg_stream *st, double now)
{
    struct lg *lg = st->lg;
    int framing = st->have_event ? 1 : 2;
    if (st->event_too_long) {
        lg_stream_malformed(st, "event name too long%s", NULL);
        return;
    }
    if (!st->have_data) {
        /* An event line with no data is not a frame of this contract. */
        lg_stream_malformed(st, "frame without data (event %s)", st->event);
        return;
    }
    if (st->framing == 0)
        st->framing = framing;
    else if (st->framing != framing) {
        lg_stream_malformed(st, "frames mix event: lines and data-only%s", NULL);
        return;
    }
    if (st->data_len == 6 && memcmp(st->data, "[DONE]", 6) == 0) {
        if (framing != 2 || st->state != LG_TERMINATED || st->done_marker)
            lg_stream_malformed(st, "[DONE] out of place%s", NULL);
        st->done_marker = true;
        return;
    }
    if (st->state == LG_TERMINATED) {
        lg_stream_malformed(st, "frame after the terminal event%s", NULL);
        return;
    }
    json_error_t jerr;
    /* a token may be the byte 0 ("\u0000" is valid JSON; jansson refuses
     * it unless asked) */
    json_t *j = json_loadb(st->data, st->data_len, JSON_ALLOW_NUL, &jerr);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        lg_stream_malformed(st, "data is not a JSON object: %.60s", j ? "another JSON value" : jerr.text);
        return;
    }
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) {
        lg_stream_malformed(st, "data has no \"type\"%s", NULL);
    } else if (st->have_event && strcmp(type, st->event) != 0) {
        lg_stream_malformed(st, "event name differs from data type %s", type);
    } else if (strcmp(type, "started") == 0) {
        const char *jid = json_string_value(json_object_get(j, "job_id"));
        if (st->state != LG_WAIT_STARTED)
            lg_stream_malformed(st, "second started%s", NULL);
        else if (jid && strcmp(jid, st->job_id) != 0)
            lg_stream_malformed(st, "started names another job_id %s", jid);
        st->state = LG_IN_TOKENS;
    } else if (strcmp(type, "token") == 0) {
        json_t *ji = json_object_get(j, "i");
        if (st->state != LG_IN_TOKENS)
            lg_stream_malformed(st, "token before started%s", NULL);
        else if (!json_is_string(json_object_get(j, "t")))
            lg_stream_malformed(st, "token without string \"t\"%s", NULL);
        else if (!json_is_integer(ji) || json_integer_value(ji) <= st->last_i)
            lg_stream_malformed(st, "token \"i\" missing or not increasing%s", NULL);
        else {
            st->last_i = json_integer_value(ji);
            if (!st->idle) {
                if (st->token_frames == 0)
                    lg_samples_push(&lg->ttft, now - st->t_start);
                else
                    lg_samples_push(&lg->itl, now - st->t_last_token);
            }
            st->t_last_token = now;
            st->token_frames++;
        }
    } else if (strcmp(type, "end") == 0) {
        const char *reason = json_string_value(json_object_get(j, "stop_reason"));
        json_t *to = json_object_get(j, "tokens_out");
        if (st->state != LG_IN_TOKENS)
            lg_stream_malformed(st, "end before started%s", NULL);
        else if (!reason || !lg_stop_reason_valid(reason))
            lg_stream_malformed(st, "end with unknown stop_reason %s", reason ? reason : "(none)");
        else if (to && (!json_is_integer(to) || json_integer_value(to) < 0))
            lg_stream_malformed(st, "end with bad tokens_out%s", NULL);
        if (json_is_integer(to) && json_integer_value(to) >= 0) {
            st->have_tokens_out = true;
            st->tokens_out = (uint64_t)json_integer_value(to);
        }
        st->saw_end = true;
        st->state = LG_TERMINATED;
    } else if (strcmp(type, "error") == 0) {
        const char *code = json_string_value(json_object_get(j, "code"));
        /* A job that ends before it is admitted (cancelled or failed while
         * queued, server shutting down) gets an error without `started`,
         * as the daemon sends it; frames after the terminal one are caught
         * above. */
        if (!code || !*code)
            lg_stream_malformed(st, "error without code%s", NULL);
        snprintf(st->err_code, sizeof st->err_code, "%s", code && *code ? code : "UNKNOWN");
        st->state = LG_TERMINATED;
    } else {
        lg_stream_malformed(st, "unknown event type %s", type);
    }
    json_decref(j);
}

static void lg_frame_reset(struct lg_stream *st)
{
    st->have_event = false;
    st->event_too_long = false;
    st->event[0] = '\0';
    st->have_data = false;
    st->data_len = 0;
}

/* One SSE line (without its terminator), per the WHATWG event-stream rules. */
static void lg_line_handle(struct lg_stream *st, const char *s, size_t n, double now)
{
    if (n == 0) {
        if (st->have_event || st->have_data)
            lg_frame_handle(st, now);
        lg_frame_reset(st);
        return;
    }
    if (s[0] == ':') {
        lg_stream_tally(st)->pings++;
        return;
    }
    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = (size_t)(s + n - v);
    if (vlen && v[0] == ' ') {
        v++;
        vlen--;
    }
    if (flen == 5 && memcmp(s, "event", 5) == 0) {
        st->have_event = true;
        if (vlen >= sizeof st->event) {
            st->event_too_long = true;
            return;
        }
        memcpy(st->event, v, vlen);
        st->event[vlen] = '\0';
    } else if (flen == 4 && memcmp(s, "data", 4) == 0) {
        size_t need = st->data_len + (st->have_data ? 1 : 0) + vlen;
        if (need > LG_FRAME_MAX) {
            lg_stream_malformed(st, "frame data over 1 MiB%s", NULL);
            return;
        }
        if (need + 1 > st->data_cap) {
            size_t cap = st->data_cap ? st->data_cap : 1024;
            while (cap < need + 1)
                cap *= 2;
            char *nd = realloc(st->data, cap);
            if (!nd) {
                lg_stream_malformed(st, "out of memory%s", NULL);
                return;
            }
            st->data = nd;
            st->data_cap = cap;
        }
        if (st->have_data)
            st->data[st->data_len++] = '\n';
        memcpy(st->data + st->data_len, v, vlen);
        st->data_len += vlen;
        st->have_data = true;
    }
    /* id, retry and unknown fields are ignored, as the SSE rules say. */
}

/* Splits bytes into lines (LF, CR or CRLF), keeping a partial line across calls. */
static void lg_sse_feed(struct lg_stream *st, const char *p, size_t n, double now)
{
    for (size_t k = 0; k < n && !st->malformed; k++) {
        char c = p[k];
        if (st->pending_cr) {
            st->pending_cr = false;
            if (c == '\n')
                continue;
        }
        if (c == '\r' || c == '\n') {
            st->pending_cr = c == '\r';
            lg_line_handle(st, st->line, st->line_len, now);
            st->line_len = 0;
            continue;
        }
        if (st->line_len == st->line_cap) {
            /* Grown on demand: thousands of idle streams must stay small. */
            if (st->line_cap == LG_LINE_MAX) {
                lg_stream_malformed(st, "line over 64 KiB%s", NULL);
                return;
            }
            size_t cap = st->line_cap ? st->line_cap * 2 : 256;
            char *nl = realloc(st->line, cap);
            if (!nl) {
                lg_stream_malformed(st, "out of memory%s", NULL);
                return;
            }
            st->line = nl;
            st->line_cap = cap;
        }
        st->line[st->line_len++] = c;
    }
}

static size_t lg_on_header(char *buf, size_t size, size_t nitems, void *ud)
{
    struct lg_stream *st = ud;
    size_t n = size * nitems;
    static const char ct[] = "content-type:";
    if (n > sizeof ct - 1 && strncasecmp(buf, ct, sizeof ct - 1) == 0) {
        const char *v = buf + sizeof ct - 1;
        size_t vlen = n - (sizeof ct - 1);
        while (vlen && (*v == ' ' || *v == '\t')) {
            v++;
            vlen--;
        }
        st->content_type_ok = vlen >= 17 && strncasecmp(v, "text/event-stream", 17) == 0;
    }
    return n;
}

static size_t lg_on_body(char *buf, size_t size, size_t nmemb, void *ud)
{
    struct lg_stream *st = ud;
    size_t n = size * nmemb;
    double now = lg_now();
    if (st->http_status == 0)
        curl_easy_getinfo(st->easy, CURLINFO_RESPONSE_CODE, &st->http_status);
    if (st->http_status != 200) {
        size_t room = sizeof st->errbody - 1 - st->errbody_len;
        size_t take = n < room ? n : room;
        memcpy(st->errbody + st->errbody_len, buf, take);
        st->errbody_len += take;
        st->errbody[st->errbody_len] = '\0';
        return n;
    }
    if (!st->content_type_ok) {
        lg_stream_malformed(st, "200 without Content-Type text/event-stream%s", NULL);
        return 0; /* aborts the transfer: nothing more to check on it */
    }
    lg_sse_feed(st, buf, n, now);
    return st->malformed ? 0 : n;
}

static void lg_stream_free(struct lg_stream *st)
{
    if (!st)
        return;
    if (st->easy) {
        curl_multi_remove_handle(st->lg->multi, st->easy);
        curl_easy_cleanup(st->easy);
    }
    free(st->body);
    free(st->line);
    free(st->data);
    free(st);
}

/* About n tokens of common English words, different for each request (seeded),
 * so a shared-prefix cache does not turn the benchmark into a cache test. */
static char *lg_prompt_synth(uint32_t n, uint64_t seed)
{
    static const char *const words[] = {
        "the", "of",  "and",  "to", "in",    "a",   "is",   "that", "for",  "it",
        "as",  "was", "with", "be", "by",    "on",  "not",  "he",   "this", "are",
        "or",  "his", "from", "at", "which", "but", "have", "an",   "had",  "they",
    };
    size_t nw = sizeof words / sizeof words[0];
    size_t cap = (size_t)n * 7 + 1;
    if (cap > LG_PROMPT_CHARS_MAX + 1)
        cap = LG_PROMPT_CHARS_MAX + 1;
    char *p = malloc(cap);
    if (!p)
        return NULL;
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    size_t off = 0;
    for (uint32_t k = 0; k < n; k++) {
        const char *w = words[lg_rng_next(&s) % nw];
        size_t wl = strlen(w);
        if (off + wl + 2 > cap)
            break;
        if (off)
            p[off++] = ' ';
        memcpy(p + off, w, wl);
        off += wl;
    }
    p[off] = '\0';
    return p;
}

static char *lg_body_make(struct lg *lg, struct lg_stream *st)
{
    char *synth = NULL;
    const char *prompt;
    if (lg->o.prompt_tokens_approx) {
        synth = lg_prompt_synth(lg->o.prompt_tokens_approx, lg->o.seed + st->index);
        if (!synth)
            return NULL;
        prompt = synth;
    } else {
        prompt = lg->prompts[st->index % lg->n_prompts];
    }
    json_t *j =
        json_pack("{s:s, s:s, s:i, s:f, s:I}", "job_id", st->job_id, "prompt", prompt, "max_tokens",
                  (int)(st->idle ? lg->o.idle_max_tokens : lg->o.max_tokens), "temperature",
                  lg->o.temperature, "seed", (json_int_t)(lg->o.seed + st->index));
    free(synth);
    if (!j)
        return NULL;
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

static int lg_live_add(struct lg *lg, struct lg_stream *st)
{
    if (lg->n_live == lg->cap_live) {
        size_t cap = lg->cap_live ? lg->cap_live * 2 : 64;
        struct lg_stream **nl = realloc(lg->live, cap * sizeof *nl);
        if (!nl)
            return -1;
        lg->live = nl;
        lg->cap_live = cap;
    }
    lg->live[lg->n_live++] = st;
    return 0;
}

static void lg_live_remove(struct lg *lg, struct lg_stream *st)
{
    for (size_t k = 0; k < lg->n_live; k++) {
        if (lg->live[k] == st) {
            lg->live[k] = lg->live[--lg->n_live];
            return;
        }
    }
}

/* Starts one stream; returns 0, or -1 when out of memory or curl refuses. */
static int lg_stream_start(struct lg *lg, bool idle)
{
    struct lg_stream *st = calloc(1, sizeof *st);
    if (!st)
        return -1;
    st->lg = lg;
    st->idle = idle;
    st->index = idle ? lg->idle_issued : lg->issued;
    st->last_i = -1;
    snprintf(st->job_id, sizeof st->job_id, "lg-%ld-%s%" PRIu64, (long)getpid(),
             idle ? "idle-" : "", st->index);
    st->body = lg_body_make(lg, st);
    st->easy = st->body ? curl_easy_init() : NULL;
    if (!st->easy) {
        lg_stream_free(st);
        return -1;
    }
    CURL *e = st->easy;
    curl_easy_setopt(e, CURLOPT_URL, lg->target);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*"); /* never detour through a proxy */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L); /* one stream, one connection */
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, lg->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, st->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(st->body));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(lg->o.connect_timeout_s * 1e3));
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, lg_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, st);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, lg_on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, st);
    curl_easy_setopt(e, CURLOPT_PRIVATE, st);
    if (idle) {
        /* Slow reading: curl stops draining the socket past this rate, so the
         * server sees a reader that falls behind, as a stalled client would. */
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 1024L);
        curl_easy_setopt(e, CURLOPT_MAX_RECV_SPEED_LARGE, (curl_off_t)lg->o.idle_read_bps);
    }
    if (lg_live_add(lg, st) != 0) {
        lg_stream_free(st);
        return -1;
    }
    if (curl_multi_add_handle(lg->multi, e) != CURLM_OK) {
        lg_live_remove(lg, st);
        lg_stream_free(st);
        return -1;
    }
    st->t_start = lg_now();
    if (idle) {
        lg->idle_issued++;
        lg->idle_inflight++;
        lg->idle.started++;
    } else {
        lg->issued++;
        lg->inflight++;
        lg->load.started++;
    }
    return 0;
}

/* Books a finished (or deliberately cut) stream into its tally and frees it. */
static void lg_stream_finish(struct lg *lg, struct lg_stream *st, CURLcode res, bool cut)
{
    struct lg_tally *t = lg_stream_tally(st);
    if (st->http_status == 0)
        curl_easy_getinfo(st->easy, CURLINFO_RESPONSE_CODE, &st->http_status);
    t->token_frames += st->token_frames;
    t->out_tokens += st->have_tokens_out ? st->tokens_out : st->token_frames;
    if (st->have_tokens_out && st->tokens_out != st->token_frames)
        t->tokens_out_mismatch++;

    if (st->malformed) {
        t->malformed++;
    } else if (cut) {
        t->aborted++;
    } else if (res != CURLE_OK && st->http_status == 0) {
        char code[48];
        snprintf(code, sizeof code, "%s",
                 res == CURLE_COULDNT_CONNECT      ? "CONNECT_FAILED"
                 : res == CURLE_OPERATION_TIMEDOUT ? "CONNECT_TIMEOUT"
                                                   : "TRANSPORT");
        lg_tally_error(t, code);
    } else if (st->http_status != 200) {
        char code[48];
        snprintf(code, sizeof code, "HTTP_%ld", st->http_status);
        lg_tally_error(t, code);
    } else if (st->state != LG_TERMINATED) {
        lg_stream_malformed(st, "stream closed before end or error%s", NULL);
        t->malformed++;
    } else if (st->framing == 2 && !st->done_marker) {
        lg_stream_malformed(st, "data-only stream without [DONE]%s", NULL);
        t->malformed++;
    } else if (st->saw_end) {
        t->ok++;
    } else {
        lg_tally_error(t, st->err_code);
    }
    if (st->malformed && !t->first_malformed[0])
        snprintf(t->first_malformed, sizeof t->first_malformed, "%s: %s", st->job_id,
                 st->malformed_why);

    if (st->idle) {
        lg->idle_inflight--;
        if (!st->saw_end || st->malformed)
            lg->idle_target--; /* replacing failures would hammer a broken server */
    } else {
        lg->inflight--;
        lg->t_last_done = lg_now();
    }
    lg_live_remove(lg, st);
    lg_stream_free(st);
}

static void lg_messages_drain(struct lg *lg)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(lg->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode res = m->data.result;
        char *priv = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
        lg_stream_finish(lg, (struct lg_stream *)(void *)priv, res, false);
    }
}

/* Starts what the closed or open loop calls for now. */
static void lg_issue(struct lg *lg, double now)
{
    if (!lg->stopping) {
        while (lg->idle_inflight < lg->idle_target)
            if (lg_stream_start(lg, true) != 0)
                break;
    }
    if (lg->stopping)
        return;
    if (lg->o.rate > 0) {
        while (now >= lg->next_arrival && lg->issued < lg->o.requests) {
            if (lg->inflight >= lg->o.max_inflight) {
                /* Open loop: an arrival that finds no room is dropped and
                 * reported, not queued (queuing would hide the overload). */
                lg->arrivals_dropped++;
                lg->issued++;
            } else if (lg_stream_start(lg, false) != 0) {
                break;
            }
            lg->next_arrival += -log(1.0 - lg_rng_unit(&lg->rng)) / lg->o.rate;
        }
    } else {
        while (lg->inflight < lg->o.concurrency && lg->issued < lg->o.requests)
            if (lg_stream_start(lg, false) != 0)
                break;
    }
}

static void lg_cut_all(struct lg *lg, bool idle_only)
{
    for (size_t k = lg->n_live; k-- > 0;) {
        struct lg_stream *st = lg->live[k];
        if (idle_only && !st->idle)
            continue;
        /* Removal moves the last entry into slot k; it was already visited. */
        lg_stream_finish(lg, st, CURLE_OK, true);
    }
}

static void lg_run(struct lg *lg)
{
    lg->t0 = lg_now();
    lg->t_last_done = lg->t0;
    lg->t_deadline = lg->t0 + lg->o.duration_s;
    lg->next_arrival = lg->t0;
    lg->idle_target = lg->o.idle_streams;
    for (;;) {
        double now = lg_now();
        if (!lg->stopping) {
            bool all_issued = lg->issued >= lg->o.requests;
            if (now >= lg->t_deadline ||
                (all_issued && lg->inflight == 0 && (lg->o.concurrency > 0 || lg->o.rate > 0))) {
                lg->stopping = true;
                lg->t_drain_end = now + lg->o.drain_s;
                lg_cut_all(lg, true); /* idle streams only accompany the load */
            }
        }
        if (lg->stopping && (lg->inflight == 0 || now >= lg->t_drain_end)) {
            lg_cut_all(lg, false);
            break;
        }
        lg_issue(lg, now);
        int running = 0;
        curl_multi_perform(lg->multi, &running);
        lg_messages_drain(lg);
        lg_issue(lg, lg_now());
        int wait_ms = 20;
        if (lg->o.rate > 0 && !lg->stopping) {
            double d = (lg->next_arrival - lg_now()) * 1e3;
            wait_ms = d < 1 ? 1 : d > 20 ? 20 : (int)d;
        }
        curl_multi_poll(lg->multi, NULL, 0, wait_ms, NULL);
    }
}

static void lg_report_table(const struct lg *lg, double elapsed)
{
    const struct lg_tally *t = &lg->load;
    char errs[1024];
    printf("loadgen  %s  ", lg->target);
    if (lg->o.rate > 0)
        printf("open loop %.2f req/s (max in flight %u)", lg->o.rate, lg->o.max_inflight);
    else
        printf("closed loop, concurrency %u", lg->o.concurrency);
    printf("  max_tokens %u  temperature %.2f\n", lg->o.max_tokens, lg->o.temperature);
    printf("  elapsed         %10.2f s\n", elapsed);
    printf("  requests        %10" PRIu64 " sent  %" PRIu64 " ok  %" PRIu64 " errors  %" PRIu64
           " malformed  %" PRIu64 " cut at deadline\n",
           t->started, t->ok, t->errors, t->malformed, t->aborted);
    if (lg->arrivals_dropped)
        printf("  dropped         %10" PRIu64 " arrivals (no room in flight)\n",
               lg->arrivals_dropped);
    printf("  throughput      %10.2f req/s  %.1f output tok/s\n",
           elapsed > 0 ? (double)t->ok / elapsed : 0.0,
           elapsed > 0 ? (double)t->out_tokens / elapsed : 0.0);
    printf("  TTFT ms         p50 %8.2f  p90 %8.2f  p99 %8.2f  (n=%zu)\n",
           lg_samples_pct_ms(&lg->ttft, 50), lg_samples_pct_ms(&lg->ttft, 90),
           lg_samples_pct_ms(&lg->ttft, 99), lg->ttft.n);
    printf("  ITL ms          p50 %8.2f  p90 %8.2f  p99 %8.2f  (n=%zu)\n",
           lg_samples_pct_ms(&lg->itl, 50), lg_samples_pct_ms(&lg->itl, 90),
           lg_samples_pct_ms(&lg->itl, 99), lg->itl.n);
    lg_tally_errors_fmt(t, errs, sizeof errs);
    printf("  errors by code  %s\n", errs[0] ? errs : "none");
    if (t->tokens_out_mismatch)
        printf("  note            %" PRIu64 " streams' end.tokens_out differs from token frames\n",
               t->tokens_out_mismatch);
    if (t->malformed)
        printf("  first malformed %s\n", t->first_malformed);
    if (lg->o.idle_streams) {
        const struct lg_tally *i = &lg->idle;
        lg_tally_errors_fmt(i, errs, sizeof errs);
        printf("  idle streams    %u held (reading %u B/s, max_tokens %u): %" PRIu64
               " opened  %" PRIu64 " open at the end  %" PRIu64 " ended  %" PRIu64
               " errors  %" PRIu64 " malformed\n",
               lg->o.idle_streams, lg->o.idle_read_bps, lg->o.idle_max_tokens, i->started,
               i->aborted, i->ok, i->errors, i->malformed);
        printf("  idle errors     %s\n", errs[0] ? errs : "none");
        if (i->malformed)
            printf("  idle malformed  %s\n", i->first_malformed);
    }
    if (lg->ttft.dropped || lg->itl.dropped)
        printf("  note            latency samples over the cap were dropped\n");
}

static void lg_csv_field(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static int lg_report_csv(const struct lg *lg, double elapsed)
{
    FILE *f = fopen(lg->o.csv, "a");
    if (!f) {
        fprintf(stderr, "loadgen: cannot open %s: %s\n", lg->o.csv, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && sb.st_size == 0)
        fprintf(f, "label,url,mode,concurrency,rate,idle_streams,max_tokens,"
                   "prompt_tokens_approx,elapsed_s,sent,ok,errors,malformed,cut,"
                   "dropped_arrivals,out_tokens,req_per_s,out_tok_per_s,ttft_p50_ms,ttft_p90_ms,"
                   "ttft_p99_ms,itl_p50_ms,itl_p90_ms,itl_p99_ms,errors_by_code,"
                   "idle_opened,idle_open_at_end,idle_errors,idle_malformed\n");
    const struct lg_tally *t = &lg->load;
    char errs[1024];
    lg_tally_errors_fmt(t, errs, sizeof errs);
    lg_csv_field(f, lg->o.label ? lg->o.label : "");
    fputc(',', f);
    lg_csv_field(f, lg->target);
    fprintf(f,
            ",%s,%u,%.3f,%u,%u,%u,%.3f,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
            ",%" PRIu64 ",%" PRIu64 ",%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,",
            lg->o.rate > 0 ? "open" : "closed", lg->o.concurrency, lg->o.rate, lg->o.idle_streams,
            lg->o.max_tokens, lg->o.prompt_tokens_approx, elapsed, t->started, t->ok, t->errors,
            t->malformed, t->aborted, lg->arrivals_dropped, t->out_tokens,
            elapsed > 0 ? (double)t->ok / elapsed : 0.0,
            elapsed > 0 ? (double)t->out_tokens / elapsed : 0.0, lg_samples_pct_ms(&lg->ttft, 50),
            lg_samples_pct_ms(&lg->ttft, 90), lg_samples_pct_ms(&lg->ttft, 99),
            lg_samples_pct_ms(&lg->itl, 50), lg_samples_pct_ms(&lg->itl, 90),
            lg_samples_pct_ms(&lg->itl, 99));
    lg_csv_field(f, errs);
    fprintf(f, ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\n", lg->idle.started,
            lg->idle.aborted, lg->idle.errors, lg->idle.malformed);
    int rc = ferror(f) ? -1 : 0;
    if (fclose(f) != 0)
        rc = -1;
    if (rc)
        fprintf(stderr, "loadgen: writing %s failed\n", lg->o.csv);
    return rc;
}

static bool lg_host_is_loopback(const char *host)
{
    char h[256];
    size_t n = strlen(host);
    if (n == 0 || n >= sizeof h)
        return false;
    if (strcasecmp(host, "localhost") == 0)
        return true; /* curl resolves it to loopback itself, never via DNS */
    if (host[0] == '[' && host[n - 1] == ']') {
        memcpy(h, host + 1, n - 2);
        h[n - 2] = '\0';
    } else {
        memcpy(h, host, n + 1);
    }
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, h, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, h, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}

/* Checks the URL and builds the endpoint's full URL (path /execute unless one
 * is given). Returns 0 or -1 with a message on stderr. */
static int lg_target_make(struct lg *lg)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *path = NULL, *full = NULL;
    int rc = -1;
    if (!u)
        return -1;
    if (curl_url_set(u, CURLUPART_URL, lg->o.url, 0) != CURLUE_OK) {
        fprintf(stderr, "loadgen: cannot parse --url %s\n", lg->o.url);
        goto out;
    }
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        strcasecmp(scheme, "http") != 0) {
        fprintf(stderr, "loadgen: --url must be http://HOST:PORT\n");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        fprintf(stderr, "loadgen: --url has no host\n");
        goto out;
    }
    if (!lg->o.allow_remote && !lg_host_is_loopback(host)) {
        fprintf(stderr,
                "loadgen: refusing %s: not a loopback address (127.0.0.0/8, ::1, localhost); "
                "pass --allow-remote to load another host\n",
                host);
        goto out;
    }
    if (curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK &&
        (path[0] == '\0' || strcmp(path, "/") == 0) &&
        curl_url_set(u, CURLUPART_PATH, lg->o.stall ? "/v1/completions" : "/execute", 0) !=
            CURLUE_OK)
        goto out;
    if (curl_url_get(u, CURLUPART_URL, &full, 0) != CURLUE_OK)
        goto out;
    lg->target = strdup(full);
    rc = lg->target ? 0 : -1;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(path);
    curl_free(full);
    curl_url_cleanup(u);
    return rc;
}

static int lg_prompts_load(struct lg *lg)
{
    if (lg->o.prompt_tokens_approx)
        return 0;
    if (!lg->o.prompt_file) {
        lg->prompts = malloc(sizeof *lg->prompts);
        if (!lg->prompts)
            return -1;
        lg->prompts[0] = strdup(lg->o.prompt ? lg->o.prompt : "Once upon a time");
        if (!lg->prompts[0])
            return -1;
        lg->n_prompts = 1;
        return 0;
    }
    FILE *f = fopen(lg->o.prompt_file, "r");
    if (!f) {
        fprintf(stderr, "loadgen: cannot open %s: %s\n", lg->o.prompt_file, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0, alloc = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        if (lg->n_prompts == LG_PROMPTS_MAX)
            break;
        if (lg->n_prompts == alloc) {
            alloc = alloc ? alloc * 2 : 64;
            char **np = realloc(lg->prompts, alloc * sizeof *np);
            if (!np) {
                rc = -1;
                break;
            }
            lg->prompts = np;
        }
        lg->prompts[lg->n_prompts] = strdup(line);
        if (!lg->prompts[lg->n_prompts]) {
            rc = -1;
            break;
        }
        lg->n_prompts++;
    }
    free(line);
    fclose(f);
    if (rc == 0 && lg->n_prompts == 0) {
        fprintf(stderr, "loadgen: %s holds no prompt\n", lg->o.prompt_file);
        rc = -1;
    }
    return rc;
}

static void lg_usage(FILE *f)
{
    fprintf(
        f,
        "usage: loadgen --url http://127.0.0.1:PORT [options]\n"
        "Streams POST /execute (or the path in --url) and checks every SSE frame.\n"
        "  --url URL                 target; loopback only unless --allow-remote\n"
        "  --allow-remote            allow a non-loopback host\n"
        "  --prompt TEXT             prompt (default \"Once upon a time\")\n"
        "  --prompt-file FILE        prompts, one per line, used in turn\n"
        "  --prompt-tokens-approx N  synthetic prompt of about N tokens, new per request\n"
        "  --max-tokens N            per request (default 32)\n"
        "  --temperature T           (default 1.0)\n"
        "  --seed S                  request i gets seed S+i (default 42)\n"
        "  --concurrency N           closed loop: N streams in flight (default 1)\n"
        "  --rate R                  open loop: Poisson arrivals, R requests/s\n"
        "  --max-inflight N          open loop cap; arrivals past it are dropped (default 4096)\n"
        "  --requests N              stop after N requests (default 1000, at most %llu)\n"
        "  --duration S              stop issuing after S seconds (default 30, at most %.0f)\n"
        "  --drain-timeout S         then wait S s for streams in flight (default 10)\n"
        "  --idle-streams N          also hold N slowly read streams open\n"
        "  --idle-max-tokens N       their max_tokens (default 2048)\n"
        "  --idle-read-bps B         their read rate, bytes/s (default 64)\n"
        "  --connect-timeout S       (default 5)\n"
        "  --csv FILE                append one row (header when the file is new)\n"
        "  --label TEXT              first CSV column\n"
        "  --fail-on-error           exit 3 when any request failed\n"
        "  --quiet                   no table on stdout\n"
        "--scenario stall (POST /v1/completions, stream=true; llorch-cpud or llama-server):\n"
        "  the long prompt alone on the idle server, then --stall-streams N decoding,\n"
        "  the long prompt again (new text) --stall-at S seconds after they all run and\n"
        "  --stall-shorts K short requests --stall-short-delay S after it; reports the\n"
        "  running streams' ITL and tok/s before and during the prefill and every TTFT\n"
        "  --stall-streams N         running streams (default 4)\n"
        "  --stall-prompt-tokens P   long prompt, about P tokens (default 1950)\n"
        "  --stall-stream-tokens M   running streams' max_tokens (default 1500)\n"
        "  --stall-at S              (default 8)\n"
        "  --stall-shorts K          (default 2)\n"
        "  --stall-short-delay S     (default 1)\n"
        "Exit: 0 ok, 1 a stream was malformed, 2 usage or set-up error, 3 errors with\n"
        "--fail-on-error.\n",
        (unsigned long long)LG_MAX_REQUESTS, LG_MAX_DURATION_S);
}

static int lg_parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || !isdigit((unsigned char)s[0]))
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int lg_parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    if (!s || !*s)
        return -1;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

enum {
    OPT_URL = 256,
    OPT_ALLOW_REMOTE,
    OPT_PROMPT,
    OPT_PROMPT_FILE,
    OPT_PROMPT_TOKENS,
    OPT_MAX_TOKENS,
    OPT_TEMPERATURE,
    OPT_SEED,
    OPT_CONCURRENCY,
    OPT_RATE,
    OPT_MAX_INFLIGHT,
    OPT_REQUESTS,
    OPT_DURATION,
    OPT_DRAIN,
    OPT_IDLE,
    OPT_IDLE_MAX_TOKENS,
    OPT_IDLE_BPS,
    OPT_CONNECT_TIMEOUT,
    OPT_CSV,
    OPT_LABEL,
    OPT_FAIL_ON_ERROR,
    OPT_QUIET,
    OPT_HELP,
    OPT_SCENARIO,
    OPT_STALL_STREAMS,
    OPT_STALL_PROMPT,
    OPT_STALL_STREAM_TOKENS,
    OPT_STALL_AT,
    OPT_STALL_SHORTS,
    OPT_STALL_SHORT_DELAY,
};

static int lg_opts_parse(struct lg_opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"url", required_argument, NULL, OPT_URL},
        {"allow-remote", no_argument, NULL, OPT_ALLOW_REMOTE},
        {"prompt", required_argument, NULL, OPT_PROMPT},
        {"prompt-file", required_argument, NULL, OPT_PROMPT_FILE},
        {"prompt-tokens-approx", required_argument, NULL, OPT_PROMPT_TOKENS},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"temperature", required_argument, NULL, OPT_TEMPERATURE},
        {"seed", required_argument, NULL, OPT_SEED},
        {"concurrency", required_argument, NULL, OPT_CONCURRENCY},
        {"rate", required_argument, NULL, OPT_RATE},
        {"max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT},
        {"requests", required_argument, NULL, OPT_REQUESTS},
        {"duration", required_argument, NULL, OPT_DURATION},
        {"drain-timeout", required_argument, NULL, OPT_DRAIN},
        {"idle-streams", required_argument, NULL, OPT_IDLE},
        {"idle-max-tokens", required_argument, NULL, OPT_IDLE_MAX_TOKENS},
        {"idle-read-bps", required_argument, NULL, OPT_IDLE_BPS},
        {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
        {"csv", required_argument, NULL, OPT_CSV},
        {"label", required_argument, NULL, OPT_LABEL},
        {"fail-on-error", no_argument, NULL, OPT_FAIL_ON_ERROR},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, OPT_HELP},
        {"scenario", required_argument, NULL, OPT_SCENARIO},
        {"stall-streams", required_argument, NULL, OPT_STALL_STREAMS},
        {"stall-prompt-tokens", required_argument, NULL, OPT_STALL_PROMPT},
        {"stall-stream-tokens", required_argument, NULL, OPT_STALL_STREAM_TOKENS},
        {"stall-at", required_argument, NULL, OPT_STALL_AT},
        {"stall-shorts", required_argument, NULL, OPT_STALL_SHORTS},
        {"stall-short-delay", required_argument, NULL, OPT_STALL_SHORT_DELAY},
        {NULL, 0, NULL, 0},
    };
    *o = (struct lg_opts){
        .max_tokens = 32,
        .temperature = 1.0,
        .seed = 42,
        .concurrency = 1,
        .max_inflight = 4096,
        .requests = 1000,
        .duration_s = 30,
        .drain_s = 10,
        .idle_max_tokens = 2048,
        .idle_read_bps = 64,
        .connect_timeout_s = 5,
        .stall_streams = 4,
        .stall_prompt_tokens = 1950,
        .stall_stream_tokens = 1500,
        .stall_at_s = 8,
        .stall_shorts = 2,
        .stall_short_delay_s = 1,
    };
    bool duration_set = false;
    int c;
    uint64_t u;
    int li = 0;
    while ((c = getopt_long(argc, argv, "", longopts, &li)) != -1) {
        int bad = 0;
        switch (c) {
        case OPT_URL:
            o->url = optarg;
            break;
        case OPT_ALLOW_REMOTE:
            o->allow_remote = true;
            break;
        case OPT_PROMPT:
            o->prompt = optarg;
            break;
        case OPT_PROMPT_FILE:
            o->prompt_file = optarg;
            break;
        case OPT_PROMPT_TOKENS:
            bad = lg_parse_u64(optarg, 1, LG_PROMPT_CHARS_MAX / 4, &u);
            o->prompt_tokens_approx = (uint32_t)u;
            break;
        case OPT_MAX_TOKENS:
            bad = lg_parse_u64(optarg, 1, 2048, &u);
            o->max_tokens = (uint32_t)u;
            break;
        case OPT_TEMPERATURE:
            bad = lg_parse_double(optarg, 0.0, 2.0, &o->temperature);
            break;
        case OPT_SEED:
            bad = lg_parse_u64(optarg, 0, (uint64_t)INT64_MAX - LG_MAX_REQUESTS, &o->seed);
            break;
        case OPT_CONCURRENCY:
            bad = lg_parse_u64(optarg, 0, LG_MAX_INFLIGHT, &u);
            o->concurrency = (uint32_t)u;
            o->concurrency_set = true;
            break;
        case OPT_RATE:
            bad = lg_parse_double(optarg, 0.001, 1e6, &o->rate);
            break;
        case OPT_MAX_INFLIGHT:
            bad = lg_parse_u64(optarg, 1, LG_MAX_INFLIGHT, &u);
            o->max_inflight = (uint32_t)u;
            break;
        case OPT_REQUESTS:
            bad = lg_parse_u64(optarg, 1, LG_MAX_REQUESTS, &o->requests);
            break;
        case OPT_DURATION:
            bad = lg_parse_double(optarg, 0.001, LG_MAX_DURATION_S, &o->duration_s);
            duration_set = true;
            break;
        case OPT_DRAIN:
            bad = lg_parse_double(optarg, 0.0, LG_MAX_DRAIN_S, &o->drain_s);
            break;
        case OPT_IDLE:
            bad = lg_parse_u64(optarg, 0, LG_MAX_IDLE, &u);
            o->idle_streams = (uint32_t)u;
            break;
        case OPT_IDLE_MAX_TOKENS:
            bad = lg_parse_u64(optarg, 1, 2048, &u);
            o->idle_max_tokens = (uint32_t)u;
            break;
        case OPT_IDLE_BPS:
            bad = lg_parse_u64(optarg, 1, 1u << 30, &u);
            o->idle_read_bps = (uint32_t)u;
            break;
        case OPT_CONNECT_TIMEOUT:
            bad = lg_parse_double(optarg, 0.001, 600, &o->connect_timeout_s);
            break;
        case OPT_CSV:
            o->csv = optarg;
            break;
        case OPT_LABEL:
            o->label = optarg;
            break;
        case OPT_FAIL_ON_ERROR:
            o->fail_on_error = true;
            break;
        case OPT_QUIET:
            o->quiet = true;
            break;
        case OPT_HELP:
            lg_usage(stdout);
            exit(0);
        case OPT_SCENARIO:
            bad = strcmp(optarg, "stall") != 0;
            o->stall = !bad;
            break;
        case OPT_STALL_STREAMS:
            bad = lg_parse_u64(optarg, 0, 1024, &u);
            o->stall_streams = (uint32_t)u;
            break;
        case OPT_STALL_PROMPT:
            bad = lg_parse_u64(optarg, 1, LG_PROMPT_CHARS_MAX / 4, &u);
            o->stall_prompt_tokens = (uint32_t)u;
            break;
        case OPT_STALL_STREAM_TOKENS:
            bad = lg_parse_u64(optarg, 1, 2048, &u);
            o->stall_stream_tokens = (uint32_t)u;
            break;
        case OPT_STALL_AT:
            bad = lg_parse_double(optarg, 0.0, 3600, &o->stall_at_s);
            break;
        case OPT_STALL_SHORTS:
            bad = lg_parse_u64(optarg, 0, 1024, &u);
            o->stall_shorts = (uint32_t)u;
            break;
        case OPT_STALL_SHORT_DELAY:
            bad = lg_parse_double(optarg, 0.0, 3600, &o->stall_short_delay_s);
            break;
        default:
            lg_usage(stderr);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "loadgen: bad value for --%s: %s\n", longopts[li].name, optarg);
            return -1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "loadgen: unexpected argument %s\n", argv[optind]);
        return -1;
    }
    if (!o->url) {
        fprintf(stderr, "loadgen: --url is required\n");
        return -1;
    }
    if (o->stall) {
        if (!duration_set)
            o->duration_s = 900; /* the whole scenario's bound */
        return 0;
    }
    if ((o->prompt != NULL) + (o->prompt_file != NULL) + (o->prompt_tokens_approx != 0) > 1) {
        fprintf(stderr, "loadgen: give at most one of --prompt, --prompt-file, "
                        "--prompt-tokens-approx\n");
        return -1;
    }
    if (o->rate > 0 && o->concurrency_set) {
        fprintf(stderr, "loadgen: --rate (open loop) and --concurrency (closed loop) exclude "
                        "each other\n");
        return -1;
    }
    if (o->rate > 0)
        o->concurrency = 0; /* open loop: in flight is whatever the arrivals make it */
    if (o->rate == 0 && o->concurrency == 0 && o->idle_streams == 0) {
        fprintf(stderr, "loadgen: nothing to do: concurrency 0 and no idle streams\n");
        return -1;
    }
    return 0;
}

/* Many streams need many descriptors; raise the soft limit as far as allowed. */
static void lg_fd_limit_raise(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void lg_free(struct lg *lg)
{
    lg_cut_all(lg, false);
    free(lg->live);
    for (size_t k = 0; k < lg->n_prompts; k++)
        free(lg->prompts[k]);
    free(lg->prompts);
    free(lg->ttft.v);
    free(lg->itl.v);
    free(lg->target);
    curl_slist_free_all(lg->headers);
    if (lg->multi)
        curl_multi_cleanup(lg->multi);
}

/* ---- --scenario stall --------------------------------------------------- */

enum lg_sx_kind { LG_SX_RUNNING, LG_SX_LONG, LG_SX_SHORT };

/* One OpenAI completion stream: data-only SSE frames whose JSON carries
 * choices[0].text, then data: [DONE]. A frame with choices[0] and no
 * finish_reason is one token. */
struct lg_sx_stream {
    struct lg_sx *sx;
    CURL *easy;
    enum lg_sx_kind kind;
    char *body;
    double t_start, t_first, t_last;
    uint64_t tokens;
    bool finished, failed;
    long status;
    char *line;
    size_t line_len, line_cap;
};

/* A token of a running stream: when it came and the gap before it. */
struct lg_sx_tok {
    double t, gap;
};

struct lg_sx {
    const struct lg_opts *o;
    const char *url;
    CURLM *multi;
    struct curl_slist *headers;
    struct lg_sx_stream **streams;
    size_t n_streams, cap_streams;
    struct lg_sx_tok *toks;
    size_t n_toks, cap_toks;
};

static void lg_sx_line(struct lg_sx_stream *st, const char *s, size_t n, double now)
{
    if (n < 6 || memcmp(s, "data: ", 6) != 0)
        return;
    s += 6;
    n -= 6;
    if (n == 6 && memcmp(s, "[DONE]", 6) == 0)
        return;
    json_t *j = json_loadb(s, n, JSON_ALLOW_NUL, NULL);
    json_t *c0 = j ? json_array_get(json_object_get(j, "choices"), 0) : NULL;
    json_t *fr = c0 ? json_object_get(c0, "finish_reason") : NULL;
    const char *text = c0 ? json_string_value(json_object_get(c0, "text")) : NULL;
    bool token = c0 && ((!fr || json_is_null(fr)) || (text && *text));
    if (j && json_object_get(j, "error"))
        st->failed = true;
    json_decref(j);
    if (!token)
        return;
    if (st->tokens == 0) {
        st->t_first = now;
    } else if (st->kind == LG_SX_RUNNING) {
        struct lg_sx *sx = st->sx;
        if (sx->n_toks == sx->cap_toks) {
            size_t cap = sx->cap_toks ? sx->cap_toks * 2 : 4096;
            struct lg_sx_tok *nt = realloc(sx->toks, cap * sizeof *nt);
            if (!nt)
                return;
            sx->toks = nt;
            sx->cap_toks = cap;
        }
        sx->toks[sx->n_toks++] = (struct lg_sx_tok){now, now - st->t_last};
    }
    st->t_last = now;
    st->tokens++;
}

static size_t lg_sx_on_body(char *buf, size_t size, size_t nmemb, void *ud)
{
    struct lg_sx_stream *st = ud;
    size_t n = size * nmemb;
    double now = lg_now();
    for (size_t k = 0; k < n; k++) {
        char c = buf[k];
        if (c == '\n' || c == '\r') {
            lg_sx_line(st, st->line, st->line_len, now);
            st->line_len = 0;
            continue;
        }
        if (st->line_len + 1 >= st->line_cap) {
            if (st->line_cap >= LG_FRAME_MAX)
                return 0; /* a line over 1 MiB: cut the stream */
            size_t cap = st->line_cap ? st->line_cap * 2 : 1024;
            char *nl = realloc(st->line, cap);
            if (!nl)
                return 0;
            st->line = nl;
            st->line_cap = cap;
        }
        st->line[st->line_len++] = c;
    }
    return n;
}

static struct lg_sx_stream *lg_sx_start(struct lg_sx *sx, enum lg_sx_kind kind, uint32_t words,
                                        uint32_t max_tokens, uint64_t seed)
{
    struct lg_sx_stream *st = calloc(1, sizeof *st);
    char *prompt = lg_prompt_synth(words, seed);
    json_t *j =
        prompt ? json_pack("{s:s, s:i, s:f, s:I, s:b, s:b, s:b, s:i}", "prompt", prompt, "max_tokens",
                           (int)max_tokens, "temperature", sx->o->temperature, "seed",
                           (json_int_t)seed, "stream", 1, "ignore_eos", 1, "cache_prompt", 0, "logprobs", 1)
               : NULL;
    free(prompt);
    if (st && j)
        st->body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!st || !st->body || !(st->easy = curl_easy_init())) {
        if (st)
            free(st->body);
        free(st);
        return NULL;
    }
    st->sx = sx;
    st->kind = kind;
    CURL *e = st->easy;
    curl_easy_setopt(e, CURLOPT_URL, sx->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, sx->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, st->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(st->body));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(sx->o->connect_timeout_s * 1e3));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, lg_sx_on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, st);
    curl_easy_setopt(e, CURLOPT_PRIVATE, st);
    if (sx->n_streams == sx->cap_streams) {
        size_t cap = sx->cap_streams ? sx->cap_streams * 2 : 16;
        struct lg_sx_stream **ns = realloc(sx->streams, cap * sizeof *ns);
        if (!ns)
            goto fail;
        sx->streams = ns;
        sx->cap_streams = cap;
    }
    if (curl_multi_add_handle(sx->multi, e) != CURLM_OK)
        goto fail;
    sx->streams[sx->n_streams++] = st;
    st->t_start = lg_now();
    return st;
fail:
    curl_easy_cleanup(e);
    free(st->body);
    free(st);
    return NULL;
}

/* Runs the transfers for up to `until` (absolute) or until done(ctx). */
static void lg_sx_pump(struct lg_sx *sx, double until, bool (*done)(struct lg_sx *, void *),
                       void *ctx)
{
    int running = 0;
    while (lg_now() < until && !(done && done(sx, ctx))) {
        curl_multi_perform(sx->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(sx->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            struct lg_sx_stream *st;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&st);
            curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &st->status);
            st->finished = true;
            if (m->data.result != CURLE_OK || st->status != 200)
                st->failed = true;
            curl_multi_remove_handle(sx->multi, m->easy_handle);
        }
        curl_multi_poll(sx->multi, NULL, 0, 10, NULL);
    }
}

static bool lg_sx_first_token(struct lg_sx *sx, void *ctx)
{
    (void)sx;
    struct lg_sx_stream *st = ctx;
    return st->tokens > 0 || st->finished;
}

static bool lg_sx_all_running(struct lg_sx *sx, void *ctx)
{
    (void)ctx;
    for (size_t k = 0; k < sx->n_streams; k++)
        if (sx->streams[k]->kind == LG_SX_RUNNING && sx->streams[k]->tokens < 2 &&
            !sx->streams[k]->finished)
            return false;
    return true;
}

static bool lg_sx_not_running_done(struct lg_sx *sx, void *ctx)
{
    (void)ctx;
    for (size_t k = 0; k < sx->n_streams; k++)
        if (sx->streams[k]->kind != LG_SX_RUNNING && sx->streams[k]->tokens == 0 &&
            !sx->streams[k]->finished)
            return false;
    return true;
}

static bool lg_sx_running_past(struct lg_sx *sx, void *ctx)
{
    double t = *(const double *)ctx;
    for (size_t k = 0; k < sx->n_streams; k++)
        if (sx->streams[k]->kind == LG_SX_RUNNING && !sx->streams[k]->finished &&
            sx->streams[k]->t_last < t)
            return false;
    return true;
}

/* ITL percentiles (ms) of the running streams' token intervals and their
 * throughput over [t0, t1). The throughput counts the tokens that arrived in
 * the window. The intervals are those of the tokens that arrived in it, and
 * with `overlap` also those that arrived after t0 and whose interval began
 * before t1: a stream frozen for the whole window sends its next token only
 * after it, and that interval is the stall the window is about. */
static void lg_sx_window(const struct lg_sx *sx, double t0, double t1, bool overlap, double *p50,
                         double *p99, double *max, double *tok_s)
{
    struct lg_samples w = {0};
    size_t n_in = 0;
    for (size_t k = 0; k < sx->n_toks; k++) {
        double t = sx->toks[k].t;
        bool in = t >= t0 && t < t1;
        n_in += in;
        if (in || (overlap && t >= t1 && t - sx->toks[k].gap < t1))
            lg_samples_push(&w, sx->toks[k].gap);
    }
    if (w.n)
        qsort(w.v, w.n, sizeof *w.v, lg_double_cmp);
    *p50 = lg_samples_pct_ms(&w, 50);
    *p99 = lg_samples_pct_ms(&w, 99);
    *max = lg_samples_pct_ms(&w, 100);
    *tok_s = t1 > t0 ? (double)n_in / (t1 - t0) : NAN;
    free(w.v);
}

static void lg_sx_free(struct lg_sx *sx)
{
    for (size_t k = 0; k < sx->n_streams; k++) {
        struct lg_sx_stream *st = sx->streams[k];
        if (!st->finished)
            curl_multi_remove_handle(sx->multi, st->easy); /* closes: the server cancels */
        curl_easy_cleanup(st->easy);
        free(st->body);
        free(st->line);
        free(st);
    }
    free(sx->streams);
    free(sx->toks);
}

static int lg_stall_run(struct lg *lg)
{
    const struct lg_opts *o = &lg->o;
    struct lg_sx sx = {.o = o, .url = lg->target, .multi = lg->multi, .headers = lg->headers};
    double t_end = lg_now() + o->duration_s;
    int rc = 2;
    uint64_t seed = o->seed * 1000;

    /* 1. the long prompt on the idle server */
    struct lg_sx_stream *idle = lg_sx_start(&sx, LG_SX_LONG, o->stall_prompt_tokens, 1, seed + 1);
    if (!idle)
        goto out;
    lg_sx_pump(&sx, t_end, lg_sx_first_token, idle);
    /* 2. the running streams, until each has decoded, then stall_at more */
    for (uint32_t i = 0; i < o->stall_streams; i++)
        if (!lg_sx_start(&sx, LG_SX_RUNNING, 16, o->stall_stream_tokens, seed + 100 + i))
            goto out;
    lg_sx_pump(&sx, t_end, lg_sx_all_running, NULL);
    double t_run = lg_now();
    lg_sx_pump(&sx, fmin(t_end, t_run + o->stall_at_s), NULL, NULL);
    /* 3. the long prompt again (new text: no prefix cache), short ones after */
    double t_long = lg_now();
    struct lg_sx_stream *lng = lg_sx_start(&sx, LG_SX_LONG, o->stall_prompt_tokens, 1, seed + 2);
    if (!lng)
        goto out;
    lg_sx_pump(&sx, fmin(t_end, t_long + o->stall_short_delay_s), lg_sx_first_token, lng);
    for (uint32_t i = 0; i < o->stall_shorts; i++)
        if (!lg_sx_start(&sx, LG_SX_SHORT, 16, 1, seed + 200 + i))
            goto out;
    lg_sx_pump(&sx, t_end, lg_sx_not_running_done, NULL);
    double t_long_first = lng->tokens ? lng->t_first : lg_now();
    /* 4. each running stream's next token: a stream frozen for the whole
     * prefill ends the interval that spans it only now */
    lg_sx_pump(&sx, fmin(t_end, lg_now() + 60), lg_sx_running_past, &t_long_first);

    /* report */
    double b50, b99, bmax, btps, d50, d99, dmax, dtps;
    double t_before0 = t_run > t_long - o->stall_at_s ? t_run : t_long - o->stall_at_s;
    lg_sx_window(&sx, t_before0, t_long, false, &b50, &b99, &bmax, &btps);
    lg_sx_window(&sx, t_long, t_long_first, true, &d50, &d99, &dmax, &dtps);
    double ttft_idle = idle->tokens ? (idle->t_first - idle->t_start) * 1e3 : NAN;
    double ttft_long = lng->tokens ? (lng->t_first - lng->t_start) * 1e3 : NAN;
    struct lg_samples sh = {0};
    uint32_t failed = 0, ended_early = 0;
    for (size_t k = 0; k < sx.n_streams; k++) {
        struct lg_sx_stream *st = sx.streams[k];
        failed += st->failed || (st->finished && st->tokens == 0);
        ended_early += st->kind == LG_SX_RUNNING && st->finished && st->t_last < t_long_first;
        if (st->kind == LG_SX_SHORT && st->tokens)
            lg_samples_push(&sh, st->t_first - st->t_start);
    }
    if (sh.n)
        qsort(sh.v, sh.n, sizeof *sh.v, lg_double_cmp);
    const char *label = o->label ? o->label : "";
    if (!o->quiet) {
        printf("stall scenario %s: %u running streams, long prompt ~%u tokens, %u short requests "
               "%.1f s after it\n",
               label, o->stall_streams, o->stall_prompt_tokens, o->stall_shorts,
               o->stall_short_delay_s);
        printf("  running ITL before   p50 %8.1f ms  p99 %8.1f ms  max %8.1f ms  %6.2f tok/s\n",
               b50, b99, bmax, btps);
        printf("  running ITL during   p50 %8.1f ms  p99 %8.1f ms  max %8.1f ms  %6.2f tok/s\n",
               d50, d99, dmax, dtps);
        printf("  ratios during/before ITL p99 %.2fx   throughput %.2fx\n", d99 / b99, dtps / btps);
        printf("  long prompt TTFT     %8.1f ms (idle server %8.1f ms, %.2fx)\n", ttft_long,
               ttft_idle, ttft_long / ttft_idle);
        printf("  short requests TTFT  p50 %8.1f ms  max %8.1f ms  (%zu of %u)\n",
               lg_samples_pct_ms(&sh, 50), lg_samples_pct_ms(&sh, 100), sh.n, o->stall_shorts);
        if (failed || ended_early)
            printf("  %u request(s) failed, %u running stream(s) ended before the long prompt's "
                   "first token\n",
                   failed, ended_early);
    }
    if (o->csv) {
        struct stat sb;
        bool fresh = stat(o->csv, &sb) != 0 || sb.st_size == 0;
        FILE *f = fopen(o->csv, "a");
        if (f) {
            if (fresh)
                fprintf(f, "label,streams,prompt_tokens,itl_p50_before_ms,itl_p99_before_ms,"
                           "itl_p50_during_ms,itl_p99_during_ms,itl_max_during_ms,"
                           "tok_s_before,tok_s_during,ttft_long_ms,ttft_idle_ms,"
                           "ttft_short_p50_ms,ttft_short_max_ms,failed\n");
            lg_csv_field(f, label);
            fprintf(f, ",%u,%u,%.1f,%.1f,%.1f,%.1f,%.1f,%.2f,%.2f,%.1f,%.1f,%.1f,%.1f,%u\n",
                    o->stall_streams, o->stall_prompt_tokens, b50, b99, d50, d99, dmax, btps, dtps,
                    ttft_long, ttft_idle, lg_samples_pct_ms(&sh, 50), lg_samples_pct_ms(&sh, 100),
                    failed);
            fclose(f);
        }
    }
    free(sh.v);
    rc = failed ? 3 : 0;
out:
    if (rc == 2)
        fprintf(stderr, "loadgen: could not start a stall-scenario request\n");
    lg_sx_free(&sx);
    return rc;
}

int main(int argc, char **argv)
{
    struct lg lg = {0};
    if (lg_opts_parse(&lg.o, argc, argv) != 0)
        return 2;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "loadgen: curl_global_init failed\n");
        return 2;
    }
    int rc = 2;
    lg.rng = lg.o.seed * 0x9E3779B97F4A7C15ULL + 0x1234567ULL;
    if (lg_target_make(&lg) != 0 || lg_prompts_load(&lg) != 0)
        goto out;
    lg.multi = curl_multi_init();
    lg.headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (lg.headers) {
        struct curl_slist *h = curl_slist_append(lg.headers, "Accept: text/event-stream");
        h = h ? curl_slist_append(h, "Expect:") : NULL; /* no 100-continue round trip */
        if (!h) {
            curl_slist_free_all(lg.headers);
            lg.headers = NULL;
        }
    }
    if (!lg.multi || !lg.headers) {
        fprintf(stderr, "loadgen: out of memory\n");
        goto out;
    }
    lg_fd_limit_raise();
    if (lg.o.stall) {
        rc = lg_stall_run(&lg);
        goto out;
    }
    lg_run(&lg);
    double elapsed = lg.t_last_done - lg.t0;
    if (lg.load.started == 0)
        elapsed = lg_now() - lg.t0;
    if (lg.ttft.n)
        qsort(lg.ttft.v, lg.ttft.n, sizeof *lg.ttft.v, lg_double_cmp);
    if (lg.itl.n)
        qsort(lg.itl.v, lg.itl.n, sizeof *lg.itl.v, lg_double_cmp);
    if (!lg.o.quiet)
        lg_report_table(&lg, elapsed);
    rc = 0;
    if (lg.o.csv && lg_report_csv(&lg, elapsed) != 0)
        rc = 2;
    if (lg.o.fail_on_error && (lg.load.errors || lg.idle.errors))
        rc = 3;
    if (lg.load.malformed || lg.idle.malformed) {
        fprintf(stderr, "loadgen: %" PRIu64 " malformed stream(s); first: %s\n",
                lg.load.malformed + lg.idle.malformed,
                lg.load.malformed ? lg.load.first_malformed : lg.idle.first_malformed);
        rc = 1;
    }
out:
    lg_free(&lg);
    curl_global_cleanup();
    return rc;
}
