/* Metrics: the rendered text is checked by a strict parser of the Prometheus
 * text exposition format 0.0.4 written here (and by promtool when Debian's
 * prometheus package is installed); counters, gauges and histograms hold the
 * values observed, also from many threads at once. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "llorch/config.h"
#include "llorch/error.h"
#include "metrics.h"

/* ---- a strict parser of the text exposition format -------------------- */

/* Over-long names and labels are cut on purpose in the parser's buffers. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#define PROM_MAX_SERIES 4096
#define PROM_MAX_FAMILIES 256
#define PROM_NAME_MAX 200
#define PROM_LABELS_MAX 1024

struct prom_series {
    char name[PROM_NAME_MAX];
    char labels[PROM_LABELS_MAX];       /* as written, without braces */
    char labels_no_le[PROM_LABELS_MAX]; /* canonical: sorted k="v", le removed */
    char le[64];
    double value;
    int family;
};

struct prom_family {
    char name[PROM_NAME_MAX];
    char type[16];
    bool has_help, has_type, closed, has_samples;
};

struct prom {
    struct prom_series s[PROM_MAX_SERIES];
    size_t n;
    struct prom_family f[PROM_MAX_FAMILIES];
    size_t nf;
    int current; /* family of the previous line, -1 none */
};

static bool is_name_start(char c, bool colon)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}

static bool is_name_char(char c, bool colon)
{
    return is_name_start(c, colon) || (c >= '0' && c <= '9');
}

/* Reads a name at *p; returns its length (0 if none). */
static size_t read_name(const char *p, bool colon)
{
    if (!is_name_start(*p, colon))
        return 0;
    size_t n = 1;
    while (is_name_char(p[n], colon))
        n++;
    return n;
}

/* Go's strconv.ParseFloat accepts these, and so does Prometheus. */
static bool parse_value(const char *s, size_t len, double *out)
{
    char buf[64];
    if (!len || len >= sizeof buf)
        return false;
    memcpy(buf, s, len);
    buf[len] = 0;
    if (!strcmp(buf, "+Inf") || !strcmp(buf, "Inf")) {
        *out = INFINITY;
        return true;
    }
    if (!strcmp(buf, "-Inf")) {
        *out = -INFINITY;
        return true;
    }
    if (!strcmp(buf, "NaN")) {
        *out = NAN;
        return true;
    }
    for (size_t i = 0; i < len; i++)
        if (!strchr("0123456789+-.eE", buf[i]))
            return false;
    char *end;
    *out = strtod(buf, &end);
    return *end == 0;
}

static int prom_fail(char *err, size_t n, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int prom_fail(char *err, size_t n, unsigned line, const char *fmt, ...)
{
    int w = snprintf(err, n, "line %u: ", line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + w, n - (size_t)w, fmt, ap);
    va_end(ap);
    return -1;
}

static int family_find(struct prom *p, const char *name, size_t len)
{
    for (size_t i = 0; i < p->nf; i++)
        if (strlen(p->f[i].name) == len && !memcmp(p->f[i].name, name, len))
            return (int)i;
    return -1;
}

/* Enters family i (for HELP, TYPE or a sample); families are contiguous. */
static int family_enter(struct prom *p, int i, unsigned line, char *err, size_t n)
{
    if (p->current == i)
        return 0;
    if (p->f[i].closed)
        return prom_fail(err, n, line, "family %s appears again after other families",
                         p->f[i].name);
    if (p->current >= 0)
        p->f[p->current].closed = true;
    p->current = i;
    return 0;
}

static int family_get(struct prom *p, const char *name, size_t len, unsigned line, char *err,
                      size_t n)
{
    int i = family_find(p, name, len);
    if (i < 0) {
        if (p->nf == PROM_MAX_FAMILIES || len >= PROM_NAME_MAX)
            return prom_fail(err, n, line, "too many families");
        i = (int)p->nf++;
        memset(&p->f[i], 0, sizeof p->f[i]);
        memcpy(p->f[i].name, name, len);
    }
    return family_enter(p, i, line, err, n) ? -1 : i;
}

/* The family a sample belongs to, from the TYPE lines seen so far. */
static int sample_family(struct prom *p, const char *name, size_t len, const char **suffix)
{
    *suffix = "";
    int i = family_find(p, name, len);
    if (i >= 0 && strcmp(p->f[i].type, "histogram") && strcmp(p->f[i].type, "summary"))
        return i;
    static const char *const sfx[] = {"_bucket", "_sum", "_count"};
    for (size_t k = 0; k < 3; k++) {
        size_t sl = strlen(sfx[k]);
        if (len > sl && !memcmp(name + len - sl, sfx[k], sl)) {
            int j = family_find(p, name, len - sl);
            if (j >= 0 && (!strcmp(p->f[j].type, "histogram") ||
                           (!strcmp(p->f[j].type, "summary") && k > 0))) {
                *suffix = sfx[k];
                return j;
            }
        }
    }
    return i;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int prom_parse(struct prom *p, const char *text, char *err, size_t errn)
{
    memset(p, 0, sizeof *p);
    p->current = -1;
    size_t tlen = strlen(text);
    if (!tlen || text[tlen - 1] != '\n')
        return prom_fail(err, errn, 0, "output does not end with a line feed");
    unsigned line = 0;
    for (const char *l = text, *nl; *l; l = nl + 1) {
        nl = strchr(l, '\n');
        line++;
        size_t len = (size_t)(nl - l);
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)l[i] < 0x20 && l[i] != '\t')
                return prom_fail(err, errn, line, "control character");
        if (!len)
            continue;
        if (l[0] == '#') {
            bool help = len > 7 && !memcmp(l, "# HELP ", 7);
            bool type = len > 7 && !memcmp(l, "# TYPE ", 7);
            if (!help && !type)
                continue; /* plain comment */
            const char *name = l + 7;
            size_t nlen = read_name(name, true);
            if (!nlen)
                return prom_fail(err, errn, line, "bad metric name");
            int f = family_get(p, name, nlen, line, err, errn);
            if (f < 0)
                return -1;
            const char *rest = name + nlen;
            if (help) {
                if (p->f[f].has_help)
                    return prom_fail(err, errn, line, "second HELP for %s", p->f[f].name);
                if (rest < l + len && *rest != ' ')
                    return prom_fail(err, errn, line, "HELP: expected a space after the name");
                for (const char *c = rest; c < l + len; c++)
                    if (*c == '\\' && (c + 1 >= l + len || (c[1] != '\\' && c[1] != 'n')))
                        return prom_fail(err, errn, line, "HELP: bad escape");
                    else if (*c == '\\')
                        c++;
                p->f[f].has_help = true;
            } else {
                if (p->f[f].has_type)
                    return prom_fail(err, errn, line, "second TYPE for %s", p->f[f].name);
                if (p->f[f].has_samples)
                    return prom_fail(err, errn, line, "TYPE after samples of %s", p->f[f].name);
                if (*rest != ' ')
                    return prom_fail(err, errn, line, "TYPE: expected a space after the name");
                size_t tl = (size_t)(l + len - rest - 1);
                static const char *const types[] = {"counter", "gauge", "histogram", "summary",
                                                    "untyped"};
                bool ok = false;
                for (size_t k = 0; k < 5; k++)
                    if (tl == strlen(types[k]) && !memcmp(rest + 1, types[k], tl))
                        ok = true;
                if (!ok)
                    return prom_fail(err, errn, line, "TYPE: unknown type");
                memcpy(p->f[f].type, rest + 1, tl);
                p->f[f].has_type = true;
            }
            continue;
        }
        /* sample */
        if (p->n == PROM_MAX_SERIES)
            return prom_fail(err, errn, line, "too many samples");
        struct prom_series *s = &p->s[p->n];
        memset(s, 0, sizeof *s);
        size_t nlen = read_name(l, true);
        if (!nlen || nlen >= PROM_NAME_MAX)
            return prom_fail(err, errn, line, "bad metric name");
        memcpy(s->name, l, nlen);
        const char *c = l + nlen;
        const char *end = l + len;
        char *keys[64];
        char pairs[64][PROM_LABELS_MAX / 4];
        size_t nk = 0;
        if (c < end && *c == '{') {
            const char *open = ++c;
            while (c < end && *c != '}') {
                size_t kl = read_name(c, false);
                if (!kl)
                    return prom_fail(err, errn, line, "bad label name");
                if (kl >= 2 && c[0] == '_' && c[1] == '_')
                    return prom_fail(err, errn, line, "reserved label name");
                const char *key = c;
                c += kl;
                if (c + 1 >= end || c[0] != '=' || c[1] != '"')
                    return prom_fail(err, errn, line, "expected =\" after a label name");
                c += 2;
                char val[256];
                size_t vl = 0;
                while (c < end && *c != '"') {
                    char ch = *c;
                    if (ch == '\\') {
                        if (c + 1 >= end || !strchr("\\\"n", c[1]))
                            return prom_fail(err, errn, line, "bad escape in a label value");
                        ch = c[1] == 'n' ? '\n' : c[1];
                        c++;
                    }
                    if (vl + 1 < sizeof val)
                        val[vl++] = ch;
                    c++;
                }
                val[vl] = 0;
                if (c >= end)
                    return prom_fail(err, errn, line, "unterminated label value");
                c++;
                if (nk == 64)
                    return prom_fail(err, errn, line, "too many labels");
                for (size_t k = 0; k < nk; k++)
                    if (!strncmp(pairs[k], key, kl) && pairs[k][kl] == '=')
                        return prom_fail(err, errn, line, "duplicate label %.*s", (int)kl, key);
                snprintf(pairs[nk], sizeof pairs[nk], "%.*s=\"%s\"", (int)kl, key, val);
                if (kl == 2 && !memcmp(key, "le", 2))
                    snprintf(s->le, sizeof s->le, "%s", val);
                keys[nk] = pairs[nk];
                nk++;
                if (c < end && *c == ',')
                    c++;
                else if (c < end && *c != '}')
                    return prom_fail(err, errn, line, "expected , or } after a label");
            }
            if (c >= end)
                return prom_fail(err, errn, line, "unterminated label set");
            snprintf(s->labels, sizeof s->labels, "%.*s", (int)(c - open), open);
            c++;
        }
        if (c >= end || *c != ' ')
            return prom_fail(err, errn, line, "expected one space before the value");
        c++;
        const char *vstart = c;
        while (c < end && *c != ' ')
            c++;
        if (!parse_value(vstart, (size_t)(c - vstart), &s->value))
            return prom_fail(err, errn, line, "bad value '%.*s'", (int)(c - vstart), vstart);
        if (c < end) { /* timestamp: an integer of milliseconds */
            c++;
            if (c >= end)
                return prom_fail(err, errn, line, "trailing space");
            for (const char *t = c; t < end; t++)
                if (!((*t >= '0' && *t <= '9') || (t == c && *t == '-')))
                    return prom_fail(err, errn, line, "bad timestamp");
        }
        /* canonical label set without le, for histogram grouping and dups */
        qsort(keys, nk, sizeof keys[0], cmp_str);
        size_t w = 0;
        for (size_t k = 0; k < nk; k++) {
            if (!strncmp(keys[k], "le=", 3))
                continue;
            w += (size_t)snprintf(s->labels_no_le + w, sizeof s->labels_no_le - w, "%s,", keys[k]);
        }
        const char *suffix;
        int f = sample_family(p, s->name, nlen, &suffix);
        if (f < 0 || !p->f[f].has_type)
            return prom_fail(err, errn, line, "sample %s without a TYPE line", s->name);
        if (family_enter(p, f, line, err, errn))
            return -1;
        p->f[f].has_samples = true;
        s->family = f;
        const char *type = p->f[f].type;
        if (!strcmp(type, "histogram") && (strcmp(suffix, "_bucket") == 0) != (s->le[0] != 0))
            return prom_fail(err, errn, line, "le label must be on _bucket samples only");
        if (strcmp(type, "histogram") && s->le[0])
            return prom_fail(err, errn, line, "le label outside a histogram");
        if (!strcmp(type, "counter") && !(s->value >= 0))
            return prom_fail(err, errn, line, "negative or NaN counter");
        for (size_t k = 0; k < p->n; k++)
            if (!strcmp(p->s[k].name, s->name) && !strcmp(p->s[k].labels_no_le, s->labels_no_le) &&
                !strcmp(p->s[k].le, s->le))
                return prom_fail(err, errn, line, "duplicate series %s{%s}", s->name, s->labels);
        p->n++;
    }
    /* histograms: per label set, increasing le, cumulative counts, +Inf = _count */
    for (size_t f = 0; f < p->nf; f++) {
        if (!p->f[f].has_type && p->f[f].has_help)
            return prom_fail(err, errn, 0, "HELP without TYPE for %s", p->f[f].name);
        if (strcmp(p->f[f].type, "histogram"))
            continue;
        for (size_t i = 0; i < p->n; i++) {
            if (p->s[i].family != (int)f || !p->s[i].le[0])
                continue;
            bool first = true;
            for (size_t k = 0; k < i; k++)
                if (p->s[k].family == (int)f && p->s[k].le[0] &&
                    !strcmp(p->s[k].labels_no_le, p->s[i].labels_no_le))
                    first = false;
            if (!first)
                continue;
            double prev_le = -INFINITY, prev_count = 0;
            bool inf = false;
            for (size_t k = i; k < p->n; k++) {
                struct prom_series *b = &p->s[k];
                if (b->family != (int)f || !b->le[0] ||
                    strcmp(b->labels_no_le, p->s[i].labels_no_le))
                    continue;
                double le;
                if (!parse_value(b->le, strlen(b->le), &le) || isnan(le))
                    return prom_fail(err, errn, 0, "%s: bad le \"%s\"", b->name, b->le);
                if (!(le > prev_le))
                    return prom_fail(err, errn, 0, "%s: le not increasing", b->name);
                if (b->value < prev_count)
                    return prom_fail(err, errn, 0, "%s: bucket counts not cumulative", b->name);
                prev_le = le;
                prev_count = b->value;
                inf = isinf(le);
            }
            if (!inf)
                return prom_fail(err, errn, 0, "%s: no le=\"+Inf\" bucket", p->f[f].name);
            bool has_sum = false, has_count = false;
            char want[PROM_NAME_MAX + 8];
            for (size_t k = 0; k < p->n; k++) {
                if (p->s[k].family != (int)f || strcmp(p->s[k].labels_no_le, p->s[i].labels_no_le))
                    continue;
                snprintf(want, sizeof want, "%s_count", p->f[f].name);
                if (!strcmp(p->s[k].name, want)) {
                    has_count = true;
                    if (p->s[k].value != prev_count)
                        return prom_fail(err, errn, 0, "%s: +Inf bucket != _count", want);
                }
                snprintf(want, sizeof want, "%s_sum", p->f[f].name);
                if (!strcmp(p->s[k].name, want))
                    has_sum = true;
            }
            if (!has_sum || !has_count)
                return prom_fail(err, errn, 0, "%s: missing _sum or _count", p->f[f].name);
        }
    }
    return 0;
}

/* Value of the series name{labels} (labels as rendered), or NAN. */
static double prom_get(const struct prom *p, const char *name, const char *labels)
{
    for (size_t i = 0; i < p->n; i++)
        if (!strcmp(p->s[i].name, name) && !strcmp(p->s[i].labels, labels ? labels : ""))
            return p->s[i].value;
    return NAN;
}

static const char *prom_type(const struct prom *p, const char *family)
{
    for (size_t i = 0; i < p->nf; i++)
        if (!strcmp(p->f[i].name, family))
            return p->f[i].type;
    return "";
}

/* ---- helpers ------------------------------------------------------------- */

static struct prom *render_and_parse(struct metrics *m, const struct sched_stats *st,
                                     char **text_out)
{
    char *text;
    size_t len;
    assert_int_equal(metrics_render(m, st, &text, &len), 0);
    assert_int_equal(strlen(text), len);
    struct prom *p = malloc(sizeof *p);
    assert_non_null(p);
    char err[512];
    if (prom_parse(p, text, err, sizeof err))
        fail_msg("invalid exposition: %s\n%s", err, text);
    if (text_out)
        *text_out = text;
    else
        free(text);
    return p;
}

static struct sched_stats sample_stats(void)
{
    struct sched_stats st = {0};
    st.slots_total = 32;
    st.slots_busy = 5;
    st.queue_depth = 7;
    st.kv.blocks_total = 1000;
    st.kv.blocks_used = 321;
    st.kv.blocks_cached = 12;
    st.kv.prefix_hits = 44;
    st.tokens_generated = 123456789012ull;
    st.tokens_prompted = 5555;
    st.prefix_tokens_reused = 640;
    st.preemptions = 2;
    st.steps = 999;
    return st;
}

/* ---- tests --------------------------------------------------------------- */

static void metrics_fresh_render_is_valid_exposition(void **state)
{
    (void)state;
    struct metrics *m;
    assert_int_equal(metrics_new(&m, "w1", "tiny.gguf"), 0);
    struct prom *p = render_and_parse(m, NULL, NULL);
    char info[128];
    snprintf(info, sizeof info, "version=\"%s\",worker_id=\"w1\",model=\"tiny.gguf\"",
             LLORCH_VERSION);
    assert_true(prom_get(p, "llorch_info", info) == 1);
    assert_true(prom_get(p, "llorch_model_loaded", NULL) == 0);
    assert_true(isnan(prom_get(p, "llorch_queue_depth", NULL))); /* no stats while loading */
    assert_string_equal(prom_type(p, "llorch_time_to_first_token_seconds"), "histogram");
    assert_true(prom_get(p, "llorch_time_to_first_token_seconds_count", NULL) == 0);
    assert_true(prom_get(p, "process_resident_memory_bytes", NULL) > 0);
    assert_true(prom_get(p, "process_start_time_seconds", NULL) > 1.6e9);
    free(p);
    metrics_free(m);
}

static void metrics_sched_stats_become_gauges_and_counters(void **state)
{
    (void)state;
    struct metrics *m;
    assert_int_equal(metrics_new(&m, "w1", "tiny"), 0);
    metrics_set_load_progress(m, 1.0);
    struct sched_stats st = sample_stats();
    struct prom *p = render_and_parse(m, &st, NULL);
    static const struct {
        const char *name, *type;
        double v;
    } want[] = {
        {"llorch_queue_depth", "gauge", 7},
        {"llorch_running_sequences", "gauge", 5},
        {"llorch_max_batch", "gauge", 32},
        {"llorch_kv_blocks_used", "gauge", 321},
        {"llorch_kv_blocks_capacity", "gauge", 1000},
        {"llorch_kv_blocks_cached", "gauge", 12},
        {"llorch_prefix_cache_hits_total", "counter", 44},
        {"llorch_prefix_tokens_reused_total", "counter", 640},
        {"llorch_tokens_generated_total", "counter", 123456789012.0},
        {"llorch_tokens_prompted_total", "counter", 5555},
        {"llorch_preemptions_total", "counter", 2},
        {"llorch_steps_total", "counter", 999},
        {"llorch_model_loaded", "gauge", 1},
        {"llorch_model_load_progress", "gauge", 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (prom_get(p, want[i].name, NULL) != want[i].v)
            fail_msg("%s = %g, want %g", want[i].name, prom_get(p, want[i].name, NULL), want[i].v);
        assert_string_equal(prom_type(p, want[i].name), want[i].type);
    }
    free(p);
    metrics_free(m);
}

static void metrics_requests_are_counted_by_endpoint_and_status(void **state)
{
    (void)state;
    struct metrics *m;
    assert_int_equal(metrics_new(&m, "w1", "tiny"), 0);
    for (int i = 0; i < 3; i++)
        metrics_request_done(m, METRICS_EP_EXECUTE, 200);
    metrics_request_done(m, METRICS_EP_EXECUTE, 400);
    metrics_request_done(m, metrics_endpoint_from_tag(METRICS_EP_HEALTH), 503);
    metrics_request_done(m, metrics_endpoint_from_tag(-1), 404);
    metrics_request_done(m, METRICS_EP_METRICS, 999); /* out of range: counted as 500 */
    struct prom *p = render_and_parse(m, NULL, NULL);
    assert_string_equal(prom_type(p, "llorch_http_requests_total"), "counter");
    assert_true(prom_get(p, "llorch_http_requests_total", "endpoint=\"/execute\",status=\"200\"") ==
                3);
    assert_true(prom_get(p, "llorch_http_requests_total", "endpoint=\"/execute\",status=\"400\"") ==
                1);
    assert_true(prom_get(p, "llorch_http_requests_total", "endpoint=\"/health\",status=\"503\"") ==
                1);
    assert_true(prom_get(p, "llorch_http_requests_total", "endpoint=\"other\",status=\"404\"") ==
                1);
    assert_true(prom_get(p, "llorch_http_requests_total", "endpoint=\"/metrics\",status=\"500\"") ==
                1);
    assert_true(
        isnan(prom_get(p, "llorch_http_requests_total", "endpoint=\"/execute\",status=\"500\"")));
    free(p);
    metrics_free(m);
}

static void metrics_every_endpoint_has_its_own_label(void **state)
{
    (void)state;
    static const char *const want[METRICS_EP_COUNT_] = {
        [METRICS_EP_HEALTH] = "/health",
        [METRICS_EP_READY] = "/v1/ready",
        [METRICS_EP_EXECUTE] = "/execute",
        [METRICS_EP_INFERENCE] = "/v1/inference",
        [METRICS_EP_INFERENCE_CANCEL] = "/v1/inference/{job_id}",
        [METRICS_EP_CANCEL] = "/cancel",
        [METRICS_EP_COMPLETIONS] = "/v1/completions",
        [METRICS_EP_CHAT_COMPLETIONS] = "/v1/chat/completions",
        [METRICS_EP_MODELS] = "/v1/models",
        [METRICS_EP_METRICS] = "/metrics",
        [METRICS_EP_SHUTDOWN] = "/v1/shutdown",
        [METRICS_EP_OTHER] = "other",
        [METRICS_EP_MODEL] = "/v1/models/{id}",
        [METRICS_EP_COMPLETIONS_ROOT] = "/completions",
        [METRICS_EP_CHAT_COMPLETIONS_ROOT] = "/chat/completions",
        [METRICS_EP_MODELS_ROOT] = "/models",
        [METRICS_EP_EXECUTE_RESUME] = "/execute/{job_id}",
        [METRICS_EP_COMPLETIONS_RESUME] = "/v1/completions/{id}",
        [METRICS_EP_CHAT_COMPLETIONS_RESUME] = "/v1/chat/completions/{id}",
    };
    for (int e = 0; e < METRICS_EP_COUNT_; e++) {
        assert_non_null(want[e]);
        assert_string_equal(metrics_endpoint_name((enum metrics_endpoint)e), want[e]);
        assert_int_equal(metrics_endpoint_from_tag(e), e);
    }
    assert_int_equal(metrics_endpoint_from_tag(-1), METRICS_EP_OTHER);
    assert_int_equal(metrics_endpoint_from_tag(METRICS_EP_COUNT_), METRICS_EP_OTHER);
}

static void metrics_histogram_le_is_inclusive_and_count_matches(void **state)
{
    (void)state;
    struct metrics *m;
    assert_int_equal(metrics_new(&m, "w1", "tiny"), 0);
    metrics_observe_ttft(m, 0.005); /* exactly on the first bound: le="0.005" */
    metrics_observe_ttft(m, 0.0051);
    metrics_observe_ttft(m, 0.25);
    metrics_observe_ttft(m, 1000); /* above every bound */
    metrics_observe_ttft(m, -1);   /* clamped to 0 */
    metrics_observe_ttft(m, NAN);  /* ignored */
    metrics_observe_step(m, 0.003, 17, 300);
    metrics_observe_itl(m, 0.02);
    metrics_observe_request(m, 3);
    struct prom *p = render_and_parse(m, NULL, NULL);
    const char *h = "llorch_time_to_first_token_seconds_bucket";
    assert_true(prom_get(p, h, "le=\"0.005\"") == 2);
    assert_true(prom_get(p, h, "le=\"0.01\"") == 3);
    assert_true(prom_get(p, h, "le=\"0.25\"") == 4);
    assert_true(prom_get(p, h, "le=\"60\"") == 4);
    assert_true(prom_get(p, h, "le=\"+Inf\"") == 5);
    assert_true(prom_get(p, "llorch_time_to_first_token_seconds_count", NULL) == 5);
    assert_true(fabs(prom_get(p, "llorch_time_to_first_token_seconds_sum", NULL) -
                     (0.005 + 0.0051 + 0.25 + 1000)) < 1e-9);
    assert_true(prom_get(p, "llorch_batch_size_bucket", "le=\"16\"") == 0);
    assert_true(prom_get(p, "llorch_batch_size_bucket", "le=\"32\"") == 1);
    assert_true(prom_get(p, "llorch_step_tokens_bucket", "le=\"512\"") == 1);
    assert_true(prom_get(p, "llorch_step_duration_seconds_bucket", "le=\"0.005\"") == 1);
    assert_true(prom_get(p, "llorch_step_duration_seconds_bucket", "le=\"0.0025\"") == 0);
    assert_true(prom_get(p, "llorch_inter_token_latency_seconds_count", NULL) == 1);
    assert_true(prom_get(p, "llorch_request_duration_seconds_bucket", "le=\"5\"") == 1);
    free(p);
    metrics_free(m);
}

static void metrics_step_mix_and_cost_model_are_exported(void **state)
{
    (void)state;
    struct metrics *m;
    assert_int_equal(metrics_new(&m, "w1", "tiny"), 0);
    metrics_observe_step_mix(m, 12, 4, 12); /* a step with a prompt chunk */
    metrics_observe_step_mix(m, 0, 4, 0);   /* decodes only: no budget */
    struct sched_stats st = sample_stats();
    st.cost.itl_target_s = 0.25;
    st.cost.step_s = 0.1;
    st.cost.prefill_step_s = 0.02;
    st.cost.prefill_token_s = 0.0125;
    st.cost.decode_seq_s = 0.005;
    struct prom *p = render_and_parse(m, &st, NULL);
    assert_true(prom_get(p, "llorch_step_prefill_tokens_count", NULL) == 2);
    assert_true(prom_get(p, "llorch_step_prefill_tokens_bucket", "le=\"0\"") == 1);
    assert_true(prom_get(p, "llorch_step_prefill_tokens_bucket", "le=\"16\"") == 2);
    assert_true(prom_get(p, "llorch_step_decode_tokens_bucket", "le=\"4\"") == 2);
    assert_true(prom_get(p, "llorch_step_decode_tokens_sum", NULL) == 8);
    assert_true(prom_get(p, "llorch_step_budget_tokens_count", NULL) == 1);
    assert_true(prom_get(p, "llorch_step_budget_tokens_sum", NULL) == 12);
    assert_true(prom_get(p, "llorch_itl_target_seconds", NULL) == 0.25);
    assert_true(prom_get(p, "llorch_step_cost_fixed_seconds", NULL) == 0.1);
    assert_true(prom_get(p, "llorch_step_cost_prefill_step_seconds", NULL) == 0.02);
    assert_true(prom_get(p, "llorch_step_cost_prefill_token_seconds", NULL) == 0.0125);
    assert_true(prom_get(p, "llorch_step_cost_decode_seq_seconds", NULL) == 0.005);
    assert_string_equal(prom_type(p, "llorch_itl_target_seconds"), "gauge");
    assert_string_equal(prom_type(p, "llorch_step_budget_tokens"), "histogram");
    free(p);
    metrics_free(m);
}

static void metrics_jobs_gauges_and_counters_render(void **state)
{
    (void)state;
    struct metrics *m;
    assert_int_equal(metrics_new(&m, "w1", "tiny"), 0);
    metrics_job_end(m, SCHED_STOP_EOS);
    metrics_job_end(m, SCHED_STOP_EOS);
    metrics_job_end(m, SCHED_STOP_ERROR);
    metrics_job_error(m, SCHED_ERR_CLIENT_TOO_SLOW);
    metrics_gauge_add(m, METRICS_G_CONNECTIONS, 3);
    metrics_gauge_add(m, METRICS_G_CONNECTIONS, -1);
    metrics_gauge_set(m, METRICS_G_STREAMS, 9);
    metrics_counter_add(m, METRICS_C_CALLBACK_ATTEMPTS, 4);
    metrics_counter_add(m, METRICS_C_CALLBACK_FAILURES, 3);
    struct prom *p = render_and_parse(m, NULL, NULL);
    assert_true(prom_get(p, "llorch_jobs_total", "reason=\"eos\"") == 2);
    assert_true(prom_get(p, "llorch_jobs_total", "reason=\"error\"") == 1);
    assert_true(prom_get(p, "llorch_jobs_total", "reason=\"max_tokens\"") == 0);
    assert_true(prom_get(p, "llorch_job_errors_total", "code=\"CLIENT_TOO_SLOW\"") == 1);
    assert_true(prom_get(p, "llorch_http_connections", NULL) == 2);
    assert_true(prom_get(p, "llorch_streams", NULL) == 9);
    assert_true(prom_get(p, "llorch_pool_manager_callback_attempts_total", NULL) == 4);
    assert_true(prom_get(p, "llorch_pool_manager_callback_failures_total", NULL) == 3);
    free(p);
    metrics_free(m);
}

static void metrics_label_values_are_escaped(void **state)
{
    (void)state;
    struct metrics *m;
    assert_int_equal(metrics_new(&m, "w\"1\\", "a\nb\"c.gguf"), 0);
    char *text;
    struct prom *p = render_and_parse(m, NULL, &text);
    assert_non_null(strstr(text, "worker_id=\"w\\\"1\\\\\",model=\"a\\nb\\\"c.gguf\"} 1\n"));
    free(text);
    free(p);
    metrics_free(m);
}

static void metrics_events_feed_ttft_itl_jobs_and_durations(void **state)
{
    (void)state;
    struct metrics *m;
    assert_int_equal(metrics_new(&m, "w1", "tiny"), 0);
    struct metrics_job job = {0};
    struct sched_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = SCHED_EV_STARTED;
    ev.u.started.queued_ms = 20;
    metrics_observe_event(m, &ev, &job);
    assert_true(job.submit_ns > 0);
    ev.type = SCHED_EV_TOKEN;
    for (int i = 0; i < 4; i++) {
        metrics_observe_event(m, &ev, &job);
        usleep(2000);
    }
    ev.type = SCHED_EV_END;
    ev.u.end.tokens_out = 4;
    ev.u.end.ttft_ms = 30;
    ev.u.end.reason = SCHED_STOP_MAX_TOKENS;
    metrics_observe_event(m, &ev, &job);
    struct metrics_job job2 = {0};
    memset(&ev, 0, sizeof ev);
    ev.type = SCHED_EV_ERROR;
    ev.u.error.code = SCHED_ERR_CANCELLED;
    metrics_observe_event(m, &ev, &job2); /* rejected before STARTED: no duration */
    ev.u.error.code = SCHED_ERR_KV_EXHAUSTED;
    metrics_observe_event(m, &ev, &job2);
    metrics_observe_event(NULL, &ev, &job2);
    struct prom *p = render_and_parse(m, NULL, NULL);
    assert_true(prom_get(p, "llorch_inter_token_latency_seconds_count", NULL) == 3);
    assert_true(prom_get(p, "llorch_inter_token_latency_seconds_bucket", "le=\"0.001\"") == 0);
    assert_true(prom_get(p, "llorch_time_to_first_token_seconds_count", NULL) == 1);
    assert_true(prom_get(p, "llorch_time_to_first_token_seconds_bucket", "le=\"0.025\"") == 0);
    assert_true(prom_get(p, "llorch_time_to_first_token_seconds_bucket", "le=\"0.05\"") == 1);
    assert_true(prom_get(p, "llorch_request_duration_seconds_count", NULL) == 1);
    assert_true(prom_get(p, "llorch_request_duration_seconds_sum", NULL) >= 0.026);
    assert_true(prom_get(p, "llorch_jobs_total", "reason=\"max_tokens\"") == 1);
    assert_true(prom_get(p, "llorch_jobs_total", "reason=\"cancelled\"") == 1);
    assert_true(prom_get(p, "llorch_jobs_total", "reason=\"error\"") == 1);
    assert_true(prom_get(p, "llorch_job_errors_total", "code=\"KV_EXHAUSTED\"") == 1);
    assert_true(prom_get(p, "llorch_job_errors_total", "code=\"CANCELLED\"") == 1);
    free(p);
    metrics_free(m);
}

#define N_THREADS 8
#define N_OBS 20000

static void *observer(void *arg)
{
    struct metrics *m = arg;
    for (int i = 0; i < N_OBS; i++) {
        metrics_observe_itl(m, 0.5);
        metrics_request_done(m, METRICS_EP_EXECUTE, 200);
        metrics_observe_step(m, 0.001, 4, 4);
    }
    return NULL;
}

static void metrics_concurrent_observers_lose_nothing(void **state)
{
    (void)state;
    struct metrics *m;
    assert_int_equal(metrics_new(&m, "w1", "tiny"), 0);
    pthread_t t[N_THREADS];
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, observer, m), 0);
    /* rendering while observers run stays valid */
    for (int i = 0; i < 5; i++)
        free(render_and_parse(m, NULL, NULL));
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);
    struct prom *p = render_and_parse(m, NULL, NULL);
    double n = (double)N_THREADS * N_OBS;
    assert_true(prom_get(p, "llorch_inter_token_latency_seconds_count", NULL) == n);
    assert_true(prom_get(p, "llorch_inter_token_latency_seconds_sum", NULL) == n * 0.5);
    assert_true(prom_get(p, "llorch_http_requests_total", "endpoint=\"/execute\",status=\"200\"") ==
                n);
    assert_true(prom_get(p, "llorch_batch_size_count", NULL) == n);
    free(p);
    metrics_free(m);
}

static void metrics_null_is_ignored(void **state)
{
    (void)state;
    metrics_request_done(NULL, METRICS_EP_EXECUTE, 200);
    metrics_observe_ttft(NULL, 1);
    metrics_observe_step(NULL, 1, 1, 1);
    metrics_gauge_add(NULL, METRICS_G_STREAMS, 1);
    metrics_free(NULL);
    char *out = (char *)1;
    size_t len = 1;
    assert_int_equal(metrics_render(NULL, NULL, &out, &len), LLORCH_EINVAL);
    assert_null(out);
}

/* The parser above must be able to fail, or the tests prove nothing. */
static void metrics_strict_parser_rejects_bad_exposition(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "x 1",                                        /* no final newline */
        "x 1\n",                                      /* no TYPE */
        "# TYPE x gauge\nx{a=\"1\",a=\"2\"} 1\n",     /* duplicate label */
        "# TYPE x gauge\nx 1\nx 2\n",                 /* duplicate series */
        "# TYPE x gauge\nx  1\n",                     /* two spaces */
        "# TYPE x gauge\nx 1x\n",                     /* bad value */
        "# TYPE x gauge\nx{a=\"\\q\"} 1\n",           /* bad escape */
        "# TYPE x gauge\nx{a=1} 1\n",                 /* unquoted value */
        "# TYPE x counter\nx -1\n",                   /* negative counter */
        "# TYPE x gauge\n# TYPE y gauge\ny 1\nx 1\n", /* family not contiguous */
        "# TYPE x gauge\nx 1\n# TYPE x gauge\n",      /* second TYPE */
        "# TYPE x wibble\nx 1\n",                     /* unknown type */
        "# TYPE 1x gauge\n",                          /* bad name */
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",    /* no +Inf */
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n", /* count != */
        "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n"
        "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",            /* le order */
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", /* no sum */
        "# TYPE x gauge\nx{le=\"1\"} 1\n",                          /* le on gauge */
        "# HELP x a \\q\n# TYPE x gauge\nx 1\n",                    /* bad HELP */
    };
    struct prom *p = malloc(sizeof *p);
    assert_non_null(p);
    char err[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (prom_parse(p, bad[i], err, sizeof err) == 0)
            fail_msg("accepted bad input #%zu: %s", i, bad[i]);
    assert_int_equal(prom_parse(p,
                                "# HELP h a\\nb\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\n"
                                "h_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n"
                                "# a comment\n\n# TYPE x gauge\nx{a=\"q\\\"\",b=\"\"} -Inf 123\n",
                                err, sizeof err),
                     0);
    free(p);
}

static void metrics_output_passes_promtool(void **state)
{
    (void)state;
    if (access("/usr/bin/promtool", X_OK) != 0)
        skip(); /* Debian's prometheus package is optional; the parser above is not */
    struct metrics *m;
    assert_int_equal(metrics_new(&m, "w\"1", "tiny"), 0);
    metrics_request_done(m, METRICS_EP_EXECUTE, 200);
    metrics_observe_ttft(m, 0.1);
    struct sched_stats st = sample_stats();
    char *text;
    size_t len;
    assert_int_equal(metrics_render(m, &st, &text, &len), 0);
    FILE *f = popen("/usr/bin/promtool check metrics >/tmp/llorch-promtool.out 2>&1", "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    int rc = pclose(f);
    if (rc != 0) {
        char buf[4096] = "";
        FILE *o = fopen("/tmp/llorch-promtool.out", "r");
        if (o) {
            buf[fread(buf, 1, sizeof buf - 1, o)] = 0;
            fclose(o);
        }
        fail_msg("promtool check metrics failed (%d):\n%s", rc, buf);
    }
    free(text);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(metrics_fresh_render_is_valid_exposition),
        cmocka_unit_test(metrics_sched_stats_become_gauges_and_counters),
        cmocka_unit_test(metrics_step_mix_and_cost_model_are_exported),
        cmocka_unit_test(metrics_requests_are_counted_by_endpoint_and_status),
        cmocka_unit_test(metrics_every_endpoint_has_its_own_label),
        cmocka_unit_test(metrics_histogram_le_is_inclusive_and_count_matches),
        cmocka_unit_test(metrics_jobs_gauges_and_counters_render),
        cmocka_unit_test(metrics_label_values_are_escaped),
        cmocka_unit_test(metrics_events_feed_ttft_itl_jobs_and_durations),
        cmocka_unit_test(metrics_concurrent_observers_lose_nothing),
        cmocka_unit_test(metrics_null_is_ignored),
        cmocka_unit_test(metrics_strict_parser_rejects_bad_exposition),
        cmocka_unit_test(metrics_output_passes_promtool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
