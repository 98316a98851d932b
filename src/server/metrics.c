/* Lock-free metrics and their Prometheus text rendering. Histograms keep
 * per-bucket (not cumulative) counts, so an observation is two relaxed
 * increments plus a CAS loop on the f64 sum; rendering accumulates the
 * buckets and derives _count from them, so `le="+Inf"` always equals _count
 * even while other threads observe. Status codes are counted per endpoint in
 * a dense [endpoint][100..599] table: exact, no hashing, 48 KiB. */
#include "metrics.h"

#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "llorch/config.h"
#include "llorch/error.h"
#include "util.h"

#define METRICS_STATUS_MIN 100
#define METRICS_STATUS_N 500 /* 100..599 */
#define METRICS_MAX_BUCKETS 16
#define METRICS_LABEL_MAX 512

struct histogram {
    const char *name;
    const char *help;
    size_t n_bounds;
    const double *bounds;                              /* upper bounds, increasing */
    _Atomic uint64_t buckets[METRICS_MAX_BUCKETS + 1]; /* last: above every bound */
    _Atomic uint64_t sum_bits;                         /* double */
};

enum histogram_id {
    H_TTFT,
    H_ITL,
    H_STEP,
    H_BATCH,
    H_STEP_TOKENS,
    H_REQUEST,
    H_STEP_PREFILL,
    H_STEP_DECODE,
    H_STEP_BUDGET,
    H_STEP_GAP,
    H_STEP_SAMPLE,
    H_STEP_EMIT,
    H_COUNT_
};

static const double ttft_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                     1,     2.5,  5,     10,   30,  60};
static const double itl_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                    0.075, 0.1,    0.25,  0.5,  1,     2.5};
static const double step_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                     0.05,   0.1,   0.25,   0.5,   1,    2.5};
static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
static const double step_token_bounds[] = {1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
static const double step_mix_bounds[] = {0, 1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
static const double request_bounds[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1,  2.5,
                                        5,    10,   30,  60,   120, 300};

static const char *const endpoint_names[METRICS_EP_COUNT_] = {
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

/* Label values of llorch_jobs_total; local so that metrics does not need
 * sched.c to link. Same spellings as the wire protocol. */
#define STOP_N 5
static const char *const stop_names[STOP_N] = {
    [SCHED_STOP_MAX_TOKENS] = "max_tokens",
    [SCHED_STOP_EOS] = "eos",
    [SCHED_STOP_SEQUENCE] = "stop_sequence",
    [SCHED_STOP_CANCELLED] = "cancelled",
    [SCHED_STOP_ERROR] = "error",
};
#define ERR_N 7
static const char *const error_names[ERR_N] = {
    [SCHED_ERR_CANCELLED] = "CANCELLED",
    [SCHED_ERR_TIMEOUT] = "TIMEOUT",
    [SCHED_ERR_INVALID_REQUEST] = "INVALID_REQUEST",
    [SCHED_ERR_INFERENCE_FAILED] = "INFERENCE_FAILED",
    [SCHED_ERR_KV_EXHAUSTED] = "KV_EXHAUSTED",
    [SCHED_ERR_CLIENT_TOO_SLOW] = "CLIENT_TOO_SLOW",
    [SCHED_ERR_SHUTTING_DOWN] = "SHUTTING_DOWN",
};

static const struct {
    const char *name, *help;
} gauge_meta[METRICS_G_COUNT_] = {
    [METRICS_G_CONNECTIONS] = {"llorch_http_connections", "Open HTTP connections."},
    [METRICS_G_STREAMS] = {"llorch_streams", "SSE streams being written."},
};

static const struct {
    const char *name, *help;
} counter_meta[METRICS_C_COUNT_] = {
    [METRICS_C_CALLBACK_ATTEMPTS] = {"llorch_pool_manager_callback_attempts_total",
                                     "Ready-callback POSTs sent to the pool manager."},
    [METRICS_C_CALLBACK_FAILURES] = {"llorch_pool_manager_callback_failures_total",
                                     "Ready-callback POSTs that failed."},
    [METRICS_C_HEARTBEATS] = {"llorch_pool_manager_heartbeats_total",
                              "Heartbeat POSTs sent to the pool manager."},
    [METRICS_C_HEARTBEAT_FAILURES] = {"llorch_pool_manager_heartbeat_failures_total",
                                      "Heartbeat POSTs that failed."},
    [METRICS_C_CONNECTIONS_REJECTED] = {"llorch_http_connections_rejected_total",
                                        "Connections closed at once for --max-connections."},
    [METRICS_C_RESUMES] = {"llorch_stream_resumes_total",
                           "Resumable streams picked up again after a dropped connection."},
    [METRICS_C_RESUME_REPLAYED] = {"llorch_stream_replayed_frames_total",
                                   "Frames replayed to resuming readers."},
    [METRICS_C_RESUME_EXPIRED] = {"llorch_stream_resume_expired_total",
                                  "Detached jobs cancelled or dropped when their grace ended."},
};

struct metrics {
    _Atomic uint64_t requests[METRICS_EP_COUNT_][METRICS_STATUS_N];
    _Atomic int64_t gauges[METRICS_G_COUNT_];
    _Atomic uint64_t counters[METRICS_C_COUNT_];
    _Atomic uint64_t jobs[STOP_N];
    _Atomic uint64_t job_errors[ERR_N];
    _Atomic uint64_t load_progress_bits;
    struct histogram hist[H_COUNT_];
    double start_time;
    char worker_id[METRICS_LABEL_MAX];
    char model[METRICS_LABEL_MAX];
};

static uint64_t dbl_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bits_dbl(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static void hist_init(struct histogram *h, const char *name, const char *help, const double *bounds,
                      size_t n)
{
    h->name = name;
    h->help = help;
    h->bounds = bounds;
    h->n_bounds = n;
    for (size_t i = 0; i <= METRICS_MAX_BUCKETS; i++)
        atomic_init(&h->buckets[i], 0);
    atomic_init(&h->sum_bits, dbl_bits(0.0));
}

static void hist_observe(struct histogram *h, double v)
{
    if (isnan(v) || isinf(v))
        return;
    if (v < 0)
        v = 0;
    /* Bucket i counts v <= bounds[i] and > bounds[i-1] (Prometheus `le`). */
    size_t lo = 0, hi = h->n_bounds;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v <= h->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&h->buckets[lo], 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&h->sum_bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&h->sum_bits, &old, dbl_bits(bits_dbl(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

static double now_realtime(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int metrics_new(struct metrics **out, const char *worker_id, const char *model)
{
    *out = NULL;
    struct metrics *m = calloc(1, sizeof *m);
    if (!m)
        return LLORCH_ENOMEM;
    /* calloc's zero bytes are valid initial atomics on every target we build
     * for; the explicit inits keep the C17 rule for the ones with values. */
    atomic_init(&m->load_progress_bits, dbl_bits(0.0));
    hist_init(&m->hist[H_TTFT], "llorch_time_to_first_token_seconds",
              "Time from admission to a job's first token.", ttft_bounds,
              LLORCH_ARRAY_SIZE(ttft_bounds));
    hist_init(&m->hist[H_ITL], "llorch_inter_token_latency_seconds",
              "Time between consecutive tokens of one stream.", itl_bounds,
              LLORCH_ARRAY_SIZE(itl_bounds));
    hist_init(&m->hist[H_STEP], "llorch_step_duration_seconds",
              "Duration of one engine step's batched forward pass (the driver's time between "
              "steps is llorch_step_gap_seconds).",
              step_bounds,
              LLORCH_ARRAY_SIZE(step_bounds));
    hist_init(&m->hist[H_BATCH], "llorch_batch_size", "Sequences in one engine step.", batch_bounds,
              LLORCH_ARRAY_SIZE(batch_bounds));
    hist_init(&m->hist[H_STEP_TOKENS], "llorch_step_tokens",
              "Tokens computed in one engine step (decode plus prefill chunks).", step_token_bounds,
              LLORCH_ARRAY_SIZE(step_token_bounds));
    hist_init(&m->hist[H_REQUEST], "llorch_request_duration_seconds",
              "Generation requests from arrival to their terminal event.", request_bounds,
              LLORCH_ARRAY_SIZE(request_bounds));
    hist_init(&m->hist[H_STEP_PREFILL], "llorch_step_prefill_tokens",
              "Prompt tokens (prefill chunks) carried by one engine step.", step_mix_bounds,
              LLORCH_ARRAY_SIZE(step_mix_bounds));
    hist_init(&m->hist[H_STEP_DECODE], "llorch_step_decode_tokens",
              "Decoded sequences (one token each) in one engine step.", step_mix_bounds,
              LLORCH_ARRAY_SIZE(step_mix_bounds));
    hist_init(&m->hist[H_STEP_BUDGET], "llorch_step_budget_tokens",
              "Prompt tokens the latency target allowed in a step with prompts to prefill.",
              step_mix_bounds, LLORCH_ARRAY_SIZE(step_mix_bounds));
    hist_init(&m->hist[H_STEP_GAP], "llorch_step_gap_seconds",
              "The step driver's time between two consecutive forward steps (sampling, "
              "detokenising, posting events, admission, planning).",
              step_bounds, LLORCH_ARRAY_SIZE(step_bounds));
    hist_init(&m->hist[H_STEP_SAMPLE], "llorch_step_sample_seconds",
              "Sampling and detokenising of one step's sequences on the pool.", step_bounds,
              LLORCH_ARRAY_SIZE(step_bounds));
    hist_init(&m->hist[H_STEP_EMIT], "llorch_step_emit_seconds",
              "Posting one step's tokens in step order on the step driver.", step_bounds,
              LLORCH_ARRAY_SIZE(step_bounds));
    for (size_t i = 0; i < H_COUNT_; i++)
        if (m->hist[i].n_bounds > METRICS_MAX_BUCKETS) {
            free(m);
            return LLORCH_EINTERNAL;
        }
    m->start_time = now_realtime();
    snprintf(m->worker_id, sizeof m->worker_id, "%s", worker_id ? worker_id : "");
    snprintf(m->model, sizeof m->model, "%s", model ? model : "");
    *out = m;
    return 0;
}

void metrics_free(struct metrics *m)
{
    free(m);
}

enum metrics_endpoint metrics_endpoint_from_tag(int route_tag)
{
    return route_tag >= 0 && route_tag < METRICS_EP_COUNT_ ? (enum metrics_endpoint)route_tag
                                                           : METRICS_EP_OTHER;
}

const char *metrics_endpoint_name(enum metrics_endpoint e)
{
    return (unsigned)e < METRICS_EP_COUNT_ ? endpoint_names[e] : "other";
}

void metrics_request_done(struct metrics *m, enum metrics_endpoint e, unsigned status)
{
    if (!m)
        return;
    if ((unsigned)e >= METRICS_EP_COUNT_)
        e = METRICS_EP_OTHER;
    if (status < METRICS_STATUS_MIN || status >= METRICS_STATUS_MIN + METRICS_STATUS_N)
        status = 500;
    atomic_fetch_add_explicit(&m->requests[e][status - METRICS_STATUS_MIN], 1,
                              memory_order_relaxed);
}

void metrics_gauge_add(struct metrics *m, enum metrics_gauge g, int64_t delta)
{
    if (m && (unsigned)g < METRICS_G_COUNT_)
        atomic_fetch_add_explicit(&m->gauges[g], delta, memory_order_relaxed);
}

void metrics_gauge_set(struct metrics *m, enum metrics_gauge g, int64_t value)
{
    if (m && (unsigned)g < METRICS_G_COUNT_)
        atomic_store_explicit(&m->gauges[g], value, memory_order_relaxed);
}

void metrics_counter_add(struct metrics *m, enum metrics_counter c, uint64_t n)
{
    if (m && (unsigned)c < METRICS_C_COUNT_)
        atomic_fetch_add_explicit(&m->counters[c], n, memory_order_relaxed);
}

void metrics_job_end(struct metrics *m, enum sched_stop_reason r)
{
    if (m && (unsigned)r < STOP_N)
        atomic_fetch_add_explicit(&m->jobs[r], 1, memory_order_relaxed);
}

void metrics_job_error(struct metrics *m, enum sched_error e)
{
    /* counted under the worker contract's one name for "does not fit" */
    if (e == SCHED_ERR_CONTEXT_EXCEEDED || e == SCHED_ERR_PROMPT_TOO_LARGE)
        e = SCHED_ERR_KV_EXHAUSTED;
    if (m && (unsigned)e < ERR_N)
        atomic_fetch_add_explicit(&m->job_errors[e], 1, memory_order_relaxed);
}

void metrics_observe_ttft(struct metrics *m, double seconds)
{
    if (m)
        hist_observe(&m->hist[H_TTFT], seconds);
}

void metrics_observe_itl(struct metrics *m, double seconds)
{
    if (m)
        hist_observe(&m->hist[H_ITL], seconds);
}

void metrics_observe_step(struct metrics *m, double seconds, uint32_t batch_size, uint32_t n_tokens)
{
    if (!m)
        return;
    hist_observe(&m->hist[H_STEP], seconds);
    hist_observe(&m->hist[H_BATCH], (double)batch_size);
    hist_observe(&m->hist[H_STEP_TOKENS], (double)n_tokens);
}

void metrics_observe_step_mix(struct metrics *m, uint32_t n_prefill, uint32_t n_decode,
                              uint32_t budget)
{
    if (!m)
        return;
    hist_observe(&m->hist[H_STEP_PREFILL], (double)n_prefill);
    hist_observe(&m->hist[H_STEP_DECODE], (double)n_decode);
    if (n_prefill > 0)
        hist_observe(&m->hist[H_STEP_BUDGET], (double)budget);
}

void metrics_observe_step_gap(struct metrics *m, double gap_s, double sample_s, double emit_s)
{
    if (!m || !(gap_s > 0.0))
        return;
    hist_observe(&m->hist[H_STEP_GAP], gap_s);
    hist_observe(&m->hist[H_STEP_SAMPLE], sample_s);
    hist_observe(&m->hist[H_STEP_EMIT], emit_s);
}

void metrics_observe_request(struct metrics *m, double seconds)
{
    if (m)
        hist_observe(&m->hist[H_REQUEST], seconds);
}

void metrics_set_load_progress(struct metrics *m, double progress)
{
    if (!m || isnan(progress))
        return;
    progress = progress < 0 ? 0 : progress > 1 ? 1 : progress;
    atomic_store_explicit(&m->load_progress_bits, dbl_bits(progress), memory_order_relaxed);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void metrics_observe_event(struct metrics *m, const struct sched_event *ev, struct metrics_job *job)
{
    if (!m || !ev || !job)
        return;
    uint64_t now = now_ns();
    switch (ev->type) {
    case SCHED_EV_STARTED: {
        uint64_t queued = (uint64_t)ev->u.started.queued_ms * 1000000ull;
        job->submit_ns = now > queued ? now - queued : 1;
        break;
    }
    case SCHED_EV_TOKEN:
        if (job->last_token_ns)
            hist_observe(&m->hist[H_ITL], (double)(now - job->last_token_ns) * 1e-9);
        job->last_token_ns = now;
        break;
    case SCHED_EV_END:
        if (ev->u.end.tokens_out > 0)
            hist_observe(&m->hist[H_TTFT], (double)ev->u.end.ttft_ms * 1e-3);
        if (job->submit_ns)
            hist_observe(&m->hist[H_REQUEST], (double)(now - job->submit_ns) * 1e-9);
        metrics_job_end(m, ev->u.end.reason);
        break;
    case SCHED_EV_ERROR:
        metrics_job_error(m, ev->u.error.code);
        metrics_job_end(m, ev->u.error.code == SCHED_ERR_CANCELLED ? SCHED_STOP_CANCELLED
                                                                   : SCHED_STOP_ERROR);
        if (job->submit_ns)
            hist_observe(&m->hist[H_REQUEST], (double)(now - job->submit_ns) * 1e-9);
        break;
    }
}

/* ---- rendering ----------------------------------------------------------- */

struct out {
    char *p;
    size_t len, cap;
    bool oom;
};

static void out_reserve(struct out *o, size_t n)
{
    if (o->oom || o->len + n + 1 <= o->cap)
        return;
    size_t cap = o->cap ? o->cap : 16384;
    while (cap < o->len + n + 1)
        cap *= 2;
    char *p = realloc(o->p, cap);
    if (!p) {
        o->oom = true;
        return;
    }
    o->p = p;
    o->cap = cap;
}

static void out_printf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    out_reserve(o, (size_t)n);
    if (o->oom)
        return;
    if ((size_t)n < sizeof tmp) {
        memcpy(o->p + o->len, tmp, (size_t)n + 1);
    } else {
        va_start(ap, fmt);
        vsnprintf(o->p + o->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    o->len += (size_t)n;
}

/* Label values: backslash, double quote and line feed are escaped. */
static void label_escape(const char *s, char *buf, size_t n)
{
    size_t w = 0;
    for (; *s && w + 3 < n; s++) {
        if (*s == '\\' || *s == '"') {
            buf[w++] = '\\';
            buf[w++] = *s;
        } else if (*s == '\n') {
            buf[w++] = '\\';
            buf[w++] = 'n';
        } else {
            buf[w++] = *s;
        }
    }
    buf[w] = 0;
}

/* Numbers the way Prometheus parses them: integers exactly, others in the
 * shortest %g that reads back,
 * infinities as +Inf/-Inf. */
static void fmt_value(double v, char *buf, size_t n)
{
    if (isinf(v))
        snprintf(buf, n, "%s", v > 0 ? "+Inf" : "-Inf");
    else if (isnan(v))
        snprintf(buf, n, "NaN");
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        snprintf(buf, n, "%.0f", v);
    else
        for (int prec = 15; prec <= 17; prec++) { /* shortest form that reads back */
            snprintf(buf, n, "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
    out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u64(struct out *o, const char *name, uint64_t v)
{
    out_printf(o, "%s %llu\n", name, (unsigned long long)v);
}

static void scalar(struct out *o, const char *name, const char *type, const char *help, uint64_t v)
{
    family(o, name, type, help);
    sample_u64(o, name, v);
}

static void gauge_dbl(struct out *o, const char *name, const char *help, double v)
{
    char buf[40];
    fmt_value(v, buf, sizeof buf);
    family(o, name, "gauge", help);
    out_printf(o, "%s %s\n", name, buf);
}

static void render_histogram(struct out *o, const struct histogram *h)
{
    family(o, h->name, "histogram", h->help);
    uint64_t cum = 0;
    char le[40];
    for (size_t i = 0; i <= h->n_bounds; i++) {
        cum += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        if (i < h->n_bounds)
            fmt_value(h->bounds[i], le, sizeof le);
        else
            snprintf(le, sizeof le, "+Inf");
        out_printf(o, "%s_bucket{le=\"%s\"} %llu\n", h->name, le, (unsigned long long)cum);
    }
    char sum[40];
    fmt_value(bits_dbl(atomic_load_explicit(&h->sum_bits, memory_order_relaxed)), sum, sizeof sum);
    out_printf(o, "%s_sum %s\n%s_count %llu\n", h->name, sum, h->name, (unsigned long long)cum);
}

static uint64_t process_rss_bytes(void)
{
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    unsigned long long size = 0, resident = 0;
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
        return 0;
    long page = sysconf(_SC_PAGESIZE);
    return resident * (uint64_t)(page > 0 ? page : 4096);
}

static void render(struct metrics *m, const struct sched_stats *st, struct out *o)
{
    char wid[METRICS_LABEL_MAX * 2], model[METRICS_LABEL_MAX * 2];
    label_escape(m->worker_id, wid, sizeof wid);
    label_escape(m->model, model, sizeof model);
    family(o, "llorch_info", "gauge", "Build and identity of this worker (always 1).");
    out_printf(o, "llorch_info{version=\"%s\",worker_id=\"%s\",model=\"%s\"} 1\n", LLORCH_VERSION,
               wid, model);

    double progress = bits_dbl(atomic_load_explicit(&m->load_progress_bits, memory_order_relaxed));
    char pv[40];
    fmt_value(progress, pv, sizeof pv);
    family(o, "llorch_model_load_progress", "gauge", "Model loading progress, 0 to 1.");
    out_printf(o, "llorch_model_load_progress %s\n", pv);
    scalar(o, "llorch_model_loaded", "gauge", "1 once the model is loaded and serving.",
           progress >= 1.0);

    family(o, "llorch_http_requests_total", "counter",
           "HTTP requests answered, by endpoint and status code.");
    for (int e = 0; e < METRICS_EP_COUNT_; e++)
        for (int s = 0; s < METRICS_STATUS_N; s++) {
            uint64_t v = atomic_load_explicit(&m->requests[e][s], memory_order_relaxed);
            if (v)
                out_printf(o, "llorch_http_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n",
                           endpoint_names[e], s + METRICS_STATUS_MIN, (unsigned long long)v);
        }
    for (int g = 0; g < METRICS_G_COUNT_; g++)
        scalar(o, gauge_meta[g].name, "gauge", gauge_meta[g].help,
               (uint64_t)LLORCH_MAX(atomic_load_explicit(&m->gauges[g], memory_order_relaxed), 0));
    for (int c = 0; c < METRICS_C_COUNT_; c++)
        scalar(o, counter_meta[c].name, "counter", counter_meta[c].help,
               atomic_load_explicit(&m->counters[c], memory_order_relaxed));

    family(o, "llorch_jobs_total", "counter", "Generation jobs ended, by stop reason.");
    for (int r = 0; r < STOP_N; r++)
        out_printf(o, "llorch_jobs_total{reason=\"%s\"} %llu\n", stop_names[r],
                   (unsigned long long)atomic_load_explicit(&m->jobs[r], memory_order_relaxed));
    family(o, "llorch_job_errors_total", "counter",
           "Generation jobs ended with an error event, by code.");
    for (int e = 0; e < ERR_N; e++)
        out_printf(
            o, "llorch_job_errors_total{code=\"%s\"} %llu\n", error_names[e],
            (unsigned long long)atomic_load_explicit(&m->job_errors[e], memory_order_relaxed));

    if (st) {
        scalar(o, "llorch_queue_depth", "gauge", "Requests waiting for admission.",
               st->queue_depth);
        scalar(o, "llorch_running_sequences", "gauge", "Sequences in the running batch.",
               st->slots_busy);
        scalar(o, "llorch_max_batch", "gauge", "Sequences that may run at once (--max-batch).",
               st->slots_total);
        scalar(o, "llorch_kv_blocks_used", "gauge", "KV cache blocks referenced by a sequence.",
               st->kv.blocks_used);
        scalar(o, "llorch_kv_blocks_cached", "gauge",
               "Free KV cache blocks still holding a reusable prefix.", st->kv.blocks_cached);
        scalar(o, "llorch_kv_blocks_capacity", "gauge", "KV cache blocks in the pool.",
               st->kv.blocks_total);
        scalar(o, "llorch_prefix_cache_hits_total", "counter",
               "KV blocks reused from the prefix cache.", st->kv.prefix_hits);
        scalar(o, "llorch_prefix_tokens_reused_total", "counter",
               "Prompt tokens not recomputed thanks to the prefix cache.",
               st->prefix_tokens_reused);
        scalar(o, "llorch_tokens_generated_total", "counter", "Tokens sampled.",
               st->tokens_generated);
        scalar(o, "llorch_tokens_prompted_total", "counter", "Prompt tokens processed.",
               st->tokens_prompted);
        scalar(o, "llorch_preemptions_total", "counter",
               "Sequences preempted for lack of KV blocks.", st->preemptions);
        scalar(o, "llorch_steps_total", "counter", "Engine steps run.", st->steps);
        gauge_dbl(o, "llorch_itl_target_seconds",
                  "Step time the prompt chunks are sized to stay within (--itl-target-ms, or "
                  "--itl-target-pct of the current decode step; 0 before it is known).",
                  st->cost.itl_target_s);
        gauge_dbl(o, "llorch_step_cost_fixed_seconds",
                  "Measured fixed cost of an engine step (weights read once).", st->cost.step_s);
        gauge_dbl(o, "llorch_step_cost_prefill_step_seconds",
                  "Measured extra fixed cost of a step that carries prompt chunks.",
                  st->cost.prefill_step_s);
        gauge_dbl(o, "llorch_step_cost_prefill_token_seconds",
                  "Measured cost of one prompt token in a step.", st->cost.prefill_token_s);
        gauge_dbl(o, "llorch_step_cost_decode_seq_seconds",
                  "Measured cost of one decoded sequence in a step.", st->cost.decode_seq_s);
    }
    for (int h = 0; h < H_COUNT_; h++)
        render_histogram(o, &m->hist[h]);

    char start[40];
    fmt_value(floor(m->start_time), start, sizeof start);
    family(o, "process_start_time_seconds", "gauge",
           "Start time of the process since unix epoch in seconds.");
    out_printf(o, "process_start_time_seconds %s\n", start);
    scalar(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
           process_rss_bytes());
}

int metrics_render(struct metrics *m, const struct sched_stats *st, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (!m)
        return LLORCH_EINVAL;
    struct out o = {0};
    out_reserve(&o, 0);
    render(m, st, &o);
    if (o.oom) {
        free(o.p);
        return LLORCH_ENOMEM;
    }
    *out = o.p;
    *len = o.len;
    return 0;
}
