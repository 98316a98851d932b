/* llorch-cpud, the daemon: configuration, start-up order, signals and the
 * graceful shutdown. Start-up: parse config → open the model file and read
 * its tokenizer (mmap: fast) → thread pool → HTTP server and APIs → listen
 * (so /health answers 503 "loading" with progress) → pack the weights on a
 * libuv pool thread (forward_new: the slow part), progress shown as a bar on
 * a TTY, log lines, the metrics gauge and systemd STATUS= → scheduler →
 * ready → READY=1 → pool-manager callback; then the loop runs until a drain
 * ends. A signal while loading stops the packing and exits 0; a failed load
 * exits 1.
 * Shutdown (first SIGTERM/SIGINT or POST /v1/shutdown): stop accepting, let
 * streams finish up to --drain-timeout-ms, end the rest with SHUTTING_DOWN,
 * exit 0. A second signal exits at once (status 1).
 * --pipeline on rank 0: a SIGTERM from the MPI launcher (our parent) means it
 * is ending the job (a rank died, or mpirun was stopped) and sends SIGKILL a
 * second later: the pipeline is lost; the step in flight fails, every stream
 * ends with an error frame, /health answers "failed", and the process exits
 * 1 well within that second. A stage that MPI does not see go (frozen, or
 * its host cut off) is found by the step driver: nothing heard from any
 * stage for --stage-timeout-ms; the same happens, and the process ends
 * with MPI_Abort, so that the launcher kills the silent rank. */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "api_openai.h"
#include "api_worker.h"
#include "config.h"
#include "forward.h"
#include "gguf.h"
#include "gguf_keys.h"
#include "http.h"
#include "llorch/config.h"
#include "llorch/error.h"
#include "log.h"
#include "metrics.h"
#include "mgr.h"
#include "model.h"
#include "pipeline.h"
#include "sched.h"
#include "sd.h"
#include "tokenizer.h"
#include "tpool.h"
#include "util.h"
#if LLORCH_HAVE_MPI
#include <mpi.h>
#endif

struct daemon {
    const struct config *cfg;
    struct log *log;
    uv_loop_t loop;
    uv_signal_t sigterm, sigint;
    bool signals_open;
    /* --pipeline on rank 0: SIGTERM by sigaction (its sender matters), fed
     * to the loop through term_async; lost_timer ends the lost pipeline */
    uv_async_t term_async;
    uv_timer_t lost_timer;
    bool term_open;
    bool pl_lost;
    bool pl_stalled;          /* lost by --stage-timeout-ms: a stage may still live, frozen */
    atomic_bool pl_stall_set; /* the step driver found a silent stage (pl_stall_why) */
    char pl_stall_why[512];   /* written before pl_stall_set, read after it */
    struct model *model;
    struct tokenizer *tok;
    struct tpool *pool;
    struct forward *fw;
    struct pipeline *pl;      /* --pipeline on rank 0: the stages instead of fw */
    int mpi_rank, mpi_size;
    bool pl_started;          /* pipeline_coord_new ran (the stages left its collectives) */
    uint32_t pl_groups;       /* micro-batch groups the scheduler keeps in flight (/health) */
    struct http_server *srv;
    struct api *api;              /* the API core: jobs, readiness, the drain */
    struct api_worker *worker;
    struct api_openai *oai;
    struct sched *sched;
    bool shutting_down;
    int exit_code;
    /* operations */
    struct metrics *metrics;
    struct mgr *mgr;
    struct mgr_state mgr_state;   /* /health's copy, refreshed when asked */
    struct llorch_sd *sd;
    int listen_fd;            /* from systemd socket activation, or -1 */
    uint64_t wd_steps;        /* engine steps at the last watchdog check */
    uint64_t wd_stuck_since;  /* uv_now() when work waited without a step, or 0 */
    /* loading: forward_new runs on a libuv pool thread (load_work) and
     * reports progress through load_ppm + load_async to the loop */
    struct api_worker_info info;
    uv_work_t load_work;
    uv_async_t load_async;
    bool load_async_open;
    bool loading;             /* queued, its after-work callback not yet run */
    _Atomic uint32_t load_ppm;   /* progress in millionths, written by the load thread */
    atomic_bool load_cancel;  /* set on the loop by a signal: stop packing */
    int load_rc;
    char load_err[512];
    uint64_t load_t0;         /* uv_hrtime() at "loading model" */
    int load_pct;             /* last percentage shown (STATUS=, bar) */
    int load_decile;          /* last tenth logged */
    bool load_bar;            /* a progress bar on stderr (a TTY, text logs) */
};

static void daemon_term_close(struct daemon *d);

/* Closes everything that keeps the loop running (a load still under way
 * closes its own handle when it ends); the loop returns when the last
 * handle is closed. */
static void daemon_close_all(struct daemon *d)
{
    d->shutting_down = true; /* a signal from now on exits at once */
    http_server_close(d->srv);
    d->srv = NULL;
    /* Joins the step driver; ends anything left with SHUTTING_DOWN (its
     * events are never taken: api_close frees their owners). */
    sched_free(d->sched);
    d->sched = NULL;
    api_openai_free(d->oai);
    d->oai = NULL;
    api_worker_free(d->worker);
    d->worker = NULL;
    api_close(d->api);
    d->api = NULL;
    mgr_close(d->mgr, NULL, NULL);
    d->mgr = NULL;
    llorch_sd_close(d->sd, NULL, NULL);
    d->sd = NULL;
    if (d->signals_open) {
        d->signals_open = false;
        uv_close((uv_handle_t *)&d->sigterm, NULL);
        uv_close((uv_handle_t *)&d->sigint, NULL);
    }
    daemon_term_close(d);
}

/* Runs from the drain timer once every job has ended (or the grace passed). */
static void daemon_on_drained(void *ctx)
{
    struct daemon *d = ctx;
    log_write(d->log, LOG_LEVEL_INFO, "drained, exiting", NULL, 0);
    daemon_close_all(d);
}

/* The graceful drain, from a signal or POST /v1/shutdown. */
static void daemon_begin_shutdown(void *ctx)
{
    struct daemon *d = ctx;
    if (d->shutting_down)
        return;
    d->shutting_down = true;
    struct log_field f[] = {LOG_F_UINT("drain_timeout_ms", d->cfg->drain_timeout_ms),
                            LOG_F_UINT("live_jobs", api_live_jobs(d->api))};
    log_write(d->log, LOG_LEVEL_INFO, d->loading ? "shutting down: loading stopped" :
              "shutting down: draining", f, LLORCH_ARRAY_SIZE(f));
    atomic_store(&d->load_cancel, true); /* the load thread stops at its next report */
    llorch_sd_stopping(d->sd, "draining");
    api_drain(d->api, d->cfg->drain_timeout_ms, daemon_on_drained, d);
}

static void daemon_signal(struct daemon *d, int signum)
{
    if (d->shutting_down) {
        /* second signal: no more waiting */
        static const char msg[] = "second signal: exiting now\n";
        ssize_t w = write(2, msg, sizeof(msg) - 1);
        (void)w;
        _exit(1);
    }
    struct log_field f[] = {LOG_F_STR("signal", signum == SIGTERM ? "SIGTERM" : "SIGINT")};
    log_write(d->log, LOG_LEVEL_INFO, "signal received", f, 1);
    daemon_begin_shutdown(d);
}

static void daemon_on_signal(uv_signal_t *h, int signum)
{
    daemon_signal(h->data, signum);
}

/* ---- --pipeline on rank 0: SIGTERM and its sender ---- */

/* A signal handler has no context pointer: what it saw reaches the loop
 * through these (lock-free atomics and uv_async_send are async-signal-safe). */
static struct {
    _Atomic(uv_async_t *) async;
    atomic_int from_launcher, from_others;
} daemon_term;

static void daemon_on_sigterm(int signo, siginfo_t *si, void *uc)
{
    LLORCH_UNUSED(signo);
    LLORCH_UNUSED(uc);
    if (si && si->si_pid == getppid())
        atomic_fetch_add(&daemon_term.from_launcher, 1);
    else
        atomic_fetch_add(&daemon_term.from_others, 1);
    uv_async_t *a = atomic_load(&daemon_term.async);
    if (a)
        uv_async_send(a);
}

/* After LOST_LINGER_MS (/health shows "failed" meanwhile; the streams got
 * their error frames at once): close as a drain does, exit 1. */
#define LOST_LINGER_MS 300
#define LOST_DRAIN_MS 200

static void daemon_on_lost_linger(uv_timer_t *t)
{
    struct daemon *d = t->data;
    if (d->shutting_down) /* a drain under way ends it */
        return;
    d->shutting_down = true;
    llorch_sd_stopping(d->sd, "pipeline lost");
    api_drain(d->api, LOST_DRAIN_MS, daemon_on_drained, d);
}

/* The pipeline cannot go on: fail every step from now (the one in flight
 * included), say why on /health, end the process with status 1. */
static void daemon_pipeline_lost(struct daemon *d, const char *why)
{
    if (d->pl_lost)
        return;
    d->pl_lost = true;
    d->exit_code = 1;
    struct log_field f[] = {LOG_F_STR("error", why)};
    log_write(d->log, LOG_LEVEL_ERROR, "pipeline lost: failing every job, exiting", f, 1);
    if (d->loading) /* the load thread waits in an MPI collective with the lost rank */
        _exit(1);
    if (d->pl)
        pipeline_abort(d->pl);
    if (d->api)
        api_set_failed(d->api, why);
    uv_timer_start(&d->lost_timer, daemon_on_lost_linger, LOST_LINGER_MS, 0);
}

/* The step driver (pipeline_complete) found no stage answering within
 * --stage-timeout-ms: the pipeline is already lost there; the loop ends
 * the job as for the launcher's SIGTERM (term_async), and main ends it with
 * MPI_Abort so that the launcher kills the frozen rank. */
static void daemon_on_stage_silent(void *ctx, const char *why)
{
    struct daemon *d = ctx;
    snprintf(d->pl_stall_why, sizeof d->pl_stall_why, "%s", why);
    atomic_store(&d->pl_stall_set, true);
    uv_async_t *a = atomic_load(&daemon_term.async);
    if (a)
        uv_async_send(a);
}

static void daemon_on_term_async(uv_async_t *h)
{
    struct daemon *d = h->data;
    if (atomic_exchange(&d->pl_stall_set, false)) {
        d->pl_stalled = true;
        daemon_pipeline_lost(d, d->pl_stall_why);
    }
    if (atomic_exchange(&daemon_term.from_launcher, 0))
        daemon_pipeline_lost(d, "the MPI launcher is ending the job (a rank died or mpirun "
                                "was stopped)");
    for (int n = atomic_exchange(&daemon_term.from_others, 0); n > 0; n--)
        daemon_signal(d, SIGTERM);
}

static int daemon_term_open(struct daemon *d)
{
    int r = uv_async_init(&d->loop, &d->term_async, daemon_on_term_async);
    if (r)
        return r;
    uv_timer_init(&d->loop, &d->lost_timer);
    d->term_async.data = d->lost_timer.data = d;
    d->term_open = true;
    atomic_store(&daemon_term.async, &d->term_async);
    struct sigaction sa = {.sa_sigaction = daemon_on_sigterm, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGTERM, &sa, NULL) ? uv_translate_sys_error(errno) : 0;
}

/* A SIGTERM from now on ends the process (as a second signal would). */
static void daemon_term_close(struct daemon *d)
{
    if (!d->term_open)
        return;
    d->term_open = false;
    signal(SIGTERM, SIG_DFL);
    atomic_store(&daemon_term.async, NULL);
    uv_close((uv_handle_t *)&d->term_async, NULL);
    uv_close((uv_handle_t *)&d->lost_timer, NULL);
}

static int fail(struct daemon *d, const char *what, const char *detail)
{
    struct log_field f[] = {LOG_F_STR("error", detail)};
    log_write(d->log, LOG_LEVEL_ERROR, what, f, 1);
    return 1;
}

/* ---- operations: metrics, access log, watchdog, pool manager ---- */

static void daemon_on_response(void *ctx, const struct http_request *r, int status)
{
    struct daemon *d = ctx;
    enum metrics_endpoint e = metrics_endpoint_from_tag(r ? r->route_tag : -1);
    metrics_request_done(d->metrics, e, (unsigned)status);
    if (!log_enabled(d->log, LOG_LEVEL_DEBUG))
        return;
    char path[256];
    size_t n = r ? LLORCH_MIN(r->path_len, sizeof(path) - 1) : 0;
    if (r)
        memcpy(path, r->path, n);
    path[n] = 0;
    struct log_field f[] = {LOG_F_STR("method", r ? r->method_name : ""), LOG_F_STR("path", path),
                            LOG_F_INT("status", status)};
    log_write(d->log, LOG_LEVEL_DEBUG, "http response", f, LLORCH_ARRAY_SIZE(f));
}

static void daemon_h_metrics(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    LLORCH_UNUSED(tail);
    LLORCH_UNUSED(tail_len);
    struct daemon *d = ctx;
    if (!api_authorized(d->api, r)) { /* same key as the API when one is set */
        api_respond_unauthorized(r);
        return;
    }
    struct sched_stats st;
    if (d->sched)
        sched_stats(d->sched, &st);
    metrics_gauge_set(d->metrics, METRICS_G_CONNECTIONS, http_server_conn_count(d->srv));
    char *text;
    size_t len;
    if (metrics_render(d->metrics, d->sched ? &st : NULL, &text, &len) != 0) {
        http_respond_error(r, 500, "INTERNAL", "out of memory", NULL);
        return;
    }
    http_respond(r, 200, METRICS_CONTENT_TYPE, NULL, text, len);
    free(text);
}

/* Asked before every systemd watchdog ping: the loop is alive (we are
 * running on it); the engine is alive unless work has been waiting without
 * a single step for two watchdog timeouts. Also refreshes STATUS=. */
static bool daemon_alive(void *ctx)
{
    struct daemon *d = ctx;
    if (!d->sched)
        return true;
    struct sched_stats st;
    sched_stats(d->sched, &st);
    llorch_sd_status(d->sd, "%s: %u running, %u queued, %s", d->shutting_down ? "draining" :
                     "serving", st.slots_busy, st.queue_depth, mgr_status(d->mgr));
    uint64_t now = uv_now(&d->loop);
    bool work = st.slots_busy > 0 || st.queue_depth > 0;
    if (!work || st.steps != d->wd_steps) {
        d->wd_steps = st.steps;
        d->wd_stuck_since = 0;
        return true;
    }
    if (!d->wd_stuck_since)
        d->wd_stuck_since = now;
    return now - d->wd_stuck_since < 4 * llorch_sd_watchdog_period_ms(d->sd);
}

static const char *daemon_health_status(void *ctx)
{
    struct daemon *d = ctx;
    return d->shutting_down ? "degraded" : "healthy";
}

/* /health's pool_manager object (loop thread, as the client's state). */
static void daemon_pm_state(void *ctx, struct api_worker_pm_state *out)
{
    struct daemon *d = ctx;
    mgr_state_get(d->mgr, &d->mgr_state);
    out->status = mgr_status_name(d->mgr_state.status);
    out->attempts = d->mgr_state.attempts;
    out->last_error = d->mgr_state.last_error;
}

/* The pool-manager client's counted events, into metrics. */
static void daemon_count_mgr(void *ctx, enum mgr_count what)
{
    static const enum metrics_counter c[] = {
        [MGR_COUNT_CALLBACK_ATTEMPT] = METRICS_C_CALLBACK_ATTEMPTS,
        [MGR_COUNT_CALLBACK_FAILURE] = METRICS_C_CALLBACK_FAILURES,
        [MGR_COUNT_HEARTBEAT] = METRICS_C_HEARTBEATS,
        [MGR_COUNT_HEARTBEAT_FAILURE] = METRICS_C_HEARTBEAT_FAILURES,
    };
    if ((unsigned)what < LLORCH_ARRAY_SIZE(c))
        metrics_counter_add(ctx, c[what], 1);
}

/* The pool-manager client, once the port is known (after listening). */
static int daemon_start_mgr(struct daemon *d, uint64_t memory_bytes)
{
    const struct config *cfg = d->cfg;
    uint16_t port = http_server_port(d->srv);
    /* --advertise-url, else the listen address (config refused a loopback
     * one for a pool manager on another host) */
    char url[2048];
    if (cfg->advertise_url[0])
        snprintf(url, sizeof(url), "%s", cfg->advertise_url);
    else if (mgr_format_worker_url(cfg->host, port, url, sizeof(url)) != 0)
        return fail(d, "pool-manager client failed", "worker URL too long");
    struct mgr_opts mo = {
        .callback_url = cfg->callback_url,
        .worker_id = cfg->worker_id,
        .worker_url = url,
        .model_ref = cfg->model_ref,
        .memory_bytes = memory_bytes,
        .port = port,
        .max_retries = cfg->callback_max_retries,
        .backoff_ms = cfg->callback_backoff_ms,
        .backoff_max_ms = cfg->callback_backoff_max_ms,
        .heartbeat_interval_s = cfg->heartbeat_interval_s,
        .health_status = daemon_health_status,
        .health_ctx = d,
        .log = d->log,
        .count = daemon_count_mgr,
        .count_ctx = d->metrics,
    };
    int r = mgr_new(&d->mgr, &d->loop, &mo);
    if (r)
        return fail(d, "pool-manager client failed", llorch_strerror(r));
    api_worker_set_pool_manager(d->worker, daemon_pm_state, d);
    mgr_start(d->mgr);
    return 0;
}

/* Step driver thread: the engine's per-step figures go to the step-time,
 * batch-size and step-mix histograms (metrics are lock-free). */
static void daemon_on_step(void *ctx, const struct sched_step_info *info)
{
    metrics_observe_step(ctx, info->seconds, info->n_seqs, info->n_tokens);
    metrics_observe_step_mix(ctx, info->n_prefill, info->n_decode, info->budget);
    metrics_observe_step_gap(ctx, info->gap_s, info->sample_s, info->emit_s);
}

/* ---- loading ---- */

/* Load thread: forward_new's progress callback. Returns false to stop. */
static bool daemon_load_progress(void *ctx, double fraction)
{
    struct daemon *d = ctx;
    double ppm = fraction * 1e6;
    atomic_store(&d->load_ppm, (uint32_t)(ppm < 0 ? 0 : ppm > 1e6 ? 1e6 : ppm));
    uv_async_send(&d->load_async); /* coalesced: the loop shows the latest */
    return !atomic_load(&d->load_cancel);
}

/* Load thread: the slow part, dequantising and packing every weight. */
static void daemon_load_work(uv_work_t *w)
{
    struct daemon *d = w->data;
    const struct config *cfg = d->cfg;
    struct forward_opts fo = {
        .dtype = cfg->dtype,
        .isa = cfg->isa,
        .kv_type = cfg->kv_type,
        .kv_bytes = (uint64_t)cfg->kv_cache_mb << 20,
        .n_ctx = cfg->ctx,
        /* Every admitted stream holds a sequence; the engine needs
         * max_seqs <= max_step_tokens, while the scheduler never puts more
         * than step_tokens tokens in one step (streams take turns when
         * step_tokens < max_batch). */
        .max_seqs = cfg->max_batch,
        .max_step_tokens = LLORCH_MAX(cfg->step_tokens, cfg->max_batch),
        .pool = d->pool,
        .progress = daemon_load_progress,
        .progress_ctx = d,
    };
#if LLORCH_HAVE_MPI
    if (cfg->pipeline) {
        struct pipeline_opts plo = {.fo = fo, .layers = cfg->layers, .rank = d->mpi_rank,
                                    .size = d->mpi_size, .max_groups = cfg->pipeline_groups,
                                    .stage_timeout_ms = cfg->stage_timeout_ms,
                                    .on_lost = daemon_on_stage_silent, .on_lost_ctx = d};
        plo.fo.progress = NULL; /* the stages pack; rank 0 waits for them */
        d->load_rc = pipeline_coord_new(&d->pl, d->model, &plo, d->load_err, sizeof(d->load_err));
        d->pl_started = true;
        return;
    }
#endif
    d->load_rc = forward_new(&d->fw, d->model, &fo, d->load_err, sizeof(d->load_err));
}

static void daemon_bar_draw(int pct)
{
    enum { WIDTH = 40 };
    char line[128];
    int fill = pct * WIDTH / 100;
    int n = snprintf(line, sizeof(line), "\rloading model [%.*s%.*s] %3d%%", fill,
                     "########################################", WIDTH - fill,
                     "                                        ", pct);
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}

/* Loop thread: shows the latest progress everywhere, rate-limited to
 * whole percents (STATUS=, the bar) and tenths (log lines). /health and the
 * gauge stay below 1 until the model serves (the gauge's 1 means loaded). */
static void daemon_show_progress(struct daemon *d)
{
    double p = atomic_load(&d->load_ppm) / 1e6;
    double shown = LLORCH_MIN(p, 0.999);
    metrics_set_load_progress(d->metrics, shown);
    if (d->api && !d->shutting_down)
        api_set_loading(d->api, shown);
    int pct = (int)(p * 100.0);
    if (pct > d->load_pct) {
        d->load_pct = pct;
        llorch_sd_loading(d->sd, p, 60000); /* TimeoutStartSec runs while we progress */
        if (d->load_bar)
            daemon_bar_draw(pct);
    }
    int decile = (int)(p * 10.0);
    if (!d->load_bar && decile > d->load_decile) {
        d->load_decile = decile;
        struct log_field f[] = {LOG_F_DBL("progress", (double)(int)(p * 1000.0) / 1000.0),
                                LOG_F_UINT("elapsed_ms", (uv_hrtime() - d->load_t0) / 1000000)};
        log_write(d->log, LOG_LEVEL_INFO, "loading model: progress", f, LLORCH_ARRAY_SIZE(f));
    }
}

static void daemon_on_load_progress(uv_async_t *h)
{
    struct daemon *d = h->data;
    if (d->loading && !d->shutting_down)
        daemon_show_progress(d);
}

/* /health on a pipeline's coordinator: "stages": [{rank, host, layers
 * [first, last], weight_bytes, kv_bytes, last_step_ms}], the last
 * step's time through every stage and back, and the micro-batch groups
 * in flight at most (1: one step at a time). */
static void daemon_health_stages(void *ctx, void *json_obj)
{
    struct daemon *d = ctx;
    json_t *arr = json_array();
    for (uint32_t i = 0; arr && i < pipeline_n_stages(d->pl); i++) {
        struct pipeline_stage_info si;
        pipeline_stage(d->pl, i, &si);
        json_array_append_new(
            arr, json_pack("{s:i,s:s,s:[I,I],s:I,s:I,s:f}", "rank", si.rank, "host", si.host,
                           "layers", (json_int_t)si.layer_first, (json_int_t)si.layer_last,
                           "weight_bytes", (json_int_t)si.weight_bytes, "kv_bytes",
                           (json_int_t)si.kv_bytes, "last_step_ms", si.last_step_ms));
    }
    json_object_set_new(json_obj, "stages", arr);
    json_object_set_new(json_obj, "pipeline_last_step_ms", json_real(pipeline_last_step_ms(d->pl)));
    json_object_set_new(json_obj, "pipeline_groups", json_integer((json_int_t)d->pl_groups));
}

/* Loop thread, once the weights are packed: scheduler → ready → READY=1 →
 * the pool-manager callback. */
static int daemon_loaded(struct daemon *d)
{
    const struct config *cfg = d->cfg;
    uint64_t weight_bytes = 0;
    if (d->pl) {
        /* the whole pipeline's: every stage's packed weights and KV */
        d->info.memory_bytes = 0;
        for (uint32_t i = 0; i < pipeline_n_stages(d->pl); i++) {
            struct pipeline_stage_info si;
            pipeline_stage(d->pl, i, &si);
            d->info.memory_bytes += si.weight_bytes + si.kv_bytes;
            weight_bytes += si.weight_bytes;
            struct log_field sf[] = {
                LOG_F_UINT("rank", (uint64_t)si.rank), LOG_F_STR("host", si.host),
                LOG_F_UINT("layer_first", si.layer_first), LOG_F_UINT("layer_last", si.layer_last),
                LOG_F_UINT("weight_bytes", si.weight_bytes), LOG_F_UINT("kv_bytes", si.kv_bytes),
            };
            log_write(d->log, LOG_LEVEL_INFO, "pipeline stage ready", sf, LLORCH_ARRAY_SIZE(sf));
        }
        d->info.n_ctx = pipeline_n_ctx(d->pl);
        d->info.dtype = forward_dtype_name(pipeline_dtype(d->pl));
        d->info.kv_type = forward_kv_type_name(pipeline_kv_type(d->pl));
        d->info.isa = pipeline_isa_name(d->pl);
    } else {
        weight_bytes = forward_weight_bytes(d->fw);
        d->info.memory_bytes = weight_bytes + ((uint64_t)cfg->kv_cache_mb << 20);
        d->info.n_ctx = forward_n_ctx(d->fw);
        d->info.dtype = forward_dtype_name(forward_dtype(d->fw));
        d->info.kv_type = forward_kv_type_name(forward_kv_type(d->fw));
        d->info.isa = forward_isa_name(d->fw);
    }
    api_worker_set_info(d->worker, &d->info);
    struct gguf_str tmpl = {0};
    bool has_tmpl = gguf_get_str(d->model->file, LLORCH_GGUF_KEY_TOK_CHAT_TEMPLATE, &tmpl) == 0;
    int r = api_openai_set_model(d->oai, d->tok, has_tmpl ? tmpl.ptr : NULL,
                                 has_tmpl ? (size_t)tmpl.len : 0, d->info.n_ctx);
    if (r)
        return fail(d, "openai api failed", llorch_strerror(r));
    struct log_field mf[] = {
        LOG_F_STR("model", cfg->model),
        LOG_F_UINT("load_ms", (uv_hrtime() - d->load_t0) / 1000000),
        LOG_F_UINT("weight_bytes", weight_bytes),
        LOG_F_STR("dtype", d->info.dtype),
        LOG_F_STR("kv_type", d->info.kv_type),
        LOG_F_STR("isa", d->info.isa),
        LOG_F_STR("matmul", d->fw ? forward_matmul_backend(d->fw) : "pipeline stages"),
        LOG_F_UINT("n_ctx", d->info.n_ctx),
    };
    log_write(d->log, LOG_LEVEL_INFO, "model loaded", mf, LLORCH_ARRAY_SIZE(mf));

    /* the scheduler: its events come back through the api's uv_async_t */
    struct sched_opts so = {
        .max_batch = cfg->max_batch,
        .max_queue = cfg->max_queue,
        .step_tokens = cfg->step_tokens,
        .itl_target_ms = cfg->itl_target_ms,
        .itl_target_pct = cfg->itl_target_pct,
        .pool = d->pool,
        .batch_window_ms = cfg->batch_window_ms,
        .notify = api_notify,
        .notify_ctx = d->api,
        .on_step = daemon_on_step,
        .on_step_ctx = d->metrics,
    };
    if (d->pl) {
        /* micro-batches: one group in flight per stage keeps every stage
         * busy; --pipeline-groups 1 keeps the one-step-at-a-time driver
         * (sched_step with pipeline_step), as before micro-batches, so that
         * one build can measure both */
        so.step = pipeline_step;
        if (pipeline_max_groups(d->pl) > 1) {
            so.submit = pipeline_submit;
            so.complete = pipeline_complete;
            so.max_groups = pipeline_max_groups(d->pl);
        }
        d->pl_groups = so.submit ? so.max_groups : 1;
        so.step_ctx = d->pl;
        so.kv = pipeline_kv(d->pl);
        so.n_vocab = d->model->hp.n_vocab;
        so.n_ctx = pipeline_n_ctx(d->pl);
    }
    r = sched_new(&d->sched, d->fw, d->tok, &so);
    if (r)
        return fail(d, "scheduler failed", llorch_strerror(r));
    if (d->pl)
        api_worker_set_health_extra(d->worker, daemon_health_stages, d);
    api_set_ready(d->api, d->sched);
    metrics_set_load_progress(d->metrics, 1.0);

    /* systemd: READY=1, then watchdog pings from the loop */
    char status[256];
    snprintf(status, sizeof(status), "serving %s on port %u", d->info.model,
             (unsigned)http_server_port(d->srv));
    llorch_sd_ready(d->sd, status, daemon_alive, d);

    /* the pool-manager callback (test mode: nothing is sent) */
    return daemon_start_mgr(d, d->info.memory_bytes);
}

static void daemon_load_done(uv_work_t *w, int status)
{
    struct daemon *d = w->data;
    if (status == 0 && d->load_rc == 0)
        daemon_show_progress(d); /* the final 100% */
    d->loading = false;
    if (d->load_bar) {
        ssize_t n = write(2, "\n", 1);
        (void)n;
    }
    d->load_async_open = false;
    uv_close((uv_handle_t *)&d->load_async, NULL);
    if (d->shutting_down) /* a signal stopped loading; the drain closes the rest */
        return;
    if (status != 0 || d->load_rc != 0) {
        fail(d, "model load failed",
             d->load_err[0] ? d->load_err : llorch_strerror(status ? LLORCH_EUV : d->load_rc));
        d->exit_code = 1;
        daemon_close_all(d);
        return;
    }
    if (daemon_loaded(d) != 0) {
        d->exit_code = 1;
        daemon_close_all(d);
    }
}

/* Every connection and every stream is a file descriptor: raise the soft
 * open-file limit to the hard one (systemd's default soft limit is 1024),
 * and say so when --max-connections cannot be reached under it. */
static void daemon_raise_nofile(struct daemon *d)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = {.rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            rl = want;
    }
    /* headroom for the model, the loop, logs and the pool-manager client */
    uint64_t need = (uint64_t)d->cfg->max_connections + 64;
    if (rl.rlim_cur != RLIM_INFINITY && (uint64_t)rl.rlim_cur < need) {
        struct log_field f[] = {
            LOG_F_UINT("open_files_limit", (uint64_t)rl.rlim_cur),
            LOG_F_UINT("max_connections", d->cfg->max_connections),
        };
        log_write(d->log, LOG_LEVEL_WARN,
                  "the open-file limit is below --max-connections: connections past it are "
                  "refused by accept()",
                  f, LLORCH_ARRAY_SIZE(f));
    }
}

/* Phase 0: the open-file limit, systemd, the socket it may pass us, metrics. */
static int daemon_start_operations(struct daemon *d)
{
    const struct config *cfg = d->cfg;
    char err[512] = "";
    int r;

    daemon_raise_nofile(d);
    r = llorch_sd_new(&d->sd, &d->loop, d->log);
    if (r)
        return fail(d, "systemd integration failed", llorch_strerror(r));
    r = llorch_sd_listen_fd(&d->listen_fd, err, sizeof(err));
    if (r)
        return fail(d, "socket activation failed", err);
    r = metrics_new(&d->metrics, cfg->worker_id, cfg->model_ref);
    if (r)
        return fail(d, "metrics failed", llorch_strerror(r));
    return 0;
}

/* Phase 1: the model file (mapped, checked), its tokenizer and the compute pool; quick, so a bad
 * file fails before anything listens. */
static int daemon_open_model(struct daemon *d)
{
    const struct config *cfg = d->cfg;
    char err[512] = "";
    int r;

    /* 1. the model file (mapped, checked) and its tokenizer: quick, so a bad
     * file fails here, before anything listens */
    if (cfg->model[0] == 0)
        return fail(d, "no model", "--model PATH is required");
    struct log_field lf[] = {LOG_F_STR("model", cfg->model)};
    log_write(d->log, LOG_LEVEL_INFO, "loading model", lf, 1);
    llorch_sd_status(d->sd, "loading model %s", cfg->model);
    d->load_t0 = uv_hrtime();
    /* a pipeline's coordinator holds no weights: the metadata's part only */
    r = cfg->pipeline ? model_load_layers(&d->model, cfg->model, 0, 0, err, sizeof(err))
                      : model_load(&d->model, cfg->model, err, sizeof(err));
    if (r)
        return fail(d, "model load failed", err[0] ? err : llorch_strerror(r));
    if (d->model->vocab_only)
        return fail(d, "model load failed", "the file has no weights: it is a vocabulary-only GGUF (tokenizer metadata, no tensors)");
    r = tokenizer_new(&d->tok, d->model->file, err, sizeof(err));
    if (r)
        return fail(d, "tokenizer failed", err[0] ? err : llorch_strerror(r));
    struct tpool_opts po = {.n_threads = (int)cfg->threads, .pin = cfg->cpu_pinning,
                            .name = "llorch-w"};
    r = tpool_new(&d->pool, &po);
    if (r)
        return fail(d, "thread pool failed", llorch_strerror(r));
    return 0;
}

/* Phase 2: the HTTP server, the API core and both APIs, in the loading state. */
static int daemon_start_server(struct daemon *d)
{
    const struct config *cfg = d->cfg;
    char err[512] = "";
    int r;

    /* 2. the server and its APIs, in the loading state; what only the
     * packed weights tell (dtype, n_ctx, memory) is set once loaded */
    struct http_limits lim = {
        .max_connections = cfg->max_connections,
        .max_header_bytes = cfg->max_header_bytes,
        .max_body_bytes = cfg->max_body_bytes,
        .header_timeout_ms = cfg->header_timeout_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .stream_sndbuf_bytes = cfg->sse_sndbuf_bytes,
    };
    r = http_server_new(&d->srv, &d->loop, &lim);
    if (r)
        return fail(d, "http server failed", llorch_strerror(r));
    d->info = (struct api_worker_info){
        .model = cfg->model_ref[0] ? cfg->model_ref : d->model->name,
        .arch = model_arch_name(d->model->hp.arch),
        .threads = (uint32_t)tpool_size(d->pool),
        .add_bos = tokenizer_adds_bos(d->tok),
    };
    struct api_opts co = {
        .api_key = cfg->api_key,
        .sse_outbox_bytes = cfg->sse_outbox_bytes,
        .ping_interval_ms = cfg->ping_interval_ms,
        .metrics = d->metrics,
        .log = d->log,
        .resume_grace_ms = cfg->resume_grace_ms,
        .resume_job_bytes = cfg->resume_job_bytes,
        .resume_total_bytes = cfg->resume_total_bytes,
    };
    r = api_new(&d->api, &d->loop, d->srv, &co);
    if (r)
        return fail(d, "api failed", llorch_strerror(r));
    struct api_worker_opts ao = {
        .info = d->info,
        .shutdown_cb = daemon_begin_shutdown,
        .shutdown_ctx = d,
    };
    r = api_worker_new(&d->worker, d->api, d->srv, &ao);
    if (r)
        return fail(d, "worker api failed", llorch_strerror(r));
    http_server_observe(d->srv, daemon_on_response, d);
    r = http_server_route_tagged(d->srv, LLORCH_HTTP_GET | LLORCH_HTTP_HEAD, "/metrics", false,
                                 daemon_h_metrics, d, METRICS_EP_METRICS);
    if (r)
        return fail(d, "metrics route failed", llorch_strerror(r));
    struct gguf_str tmpl = {0};
    bool has_tmpl = gguf_get_str(d->model->file, LLORCH_GGUF_KEY_TOK_CHAT_TEMPLATE, &tmpl) == 0;
    struct api_openai_opts oo = {
        .model_ref = cfg->model_ref,
        .chat_template_name = cfg->chat_template,
        .core = d->api,
        .model_id = d->info.model,
        .model_name = d->model->name,
        .tok = d->tok,
        .chat_template = has_tmpl ? tmpl.ptr : NULL,
        .chat_template_len = has_tmpl ? (size_t)tmpl.len : 0,
    };
    r = api_openai_new(&d->oai, d->srv, &oo);
    if (r)
        return fail(d, "openai api failed", llorch_strerror(r));
    if (api_openai_chat_template(d->oai) == CHAT_TEMPLATE_UNKNOWN && cfg->chat_template[0]) {
        snprintf(err, sizeof(err), "unknown --chat-template `%s`; supported: %s",
                 cfg->chat_template, chat_template_names());
        return fail(d, "bad configuration", err);
    }
    if (api_openai_chat_template(d->oai) == CHAT_TEMPLATE_UNKNOWN) {
        struct log_field tf[] = {LOG_F_STR("supported", chat_template_names())};
        log_write(d->log, LOG_LEVEL_WARN,
                  "the model's chat template is not recognised: /v1/chat/completions answers 400 "
                  "unless --chat-template NAME is given",
                  tf, 1);
    }
    return 0;
}

/* Phase 3: listen (so /health answers while the weights are packed) and handle signals. */
static int daemon_listen(struct daemon *d)
{
    const struct config *cfg = d->cfg;
    int r;

    /* 3. listen now, so that /health answers at once while the weights are
     * packed: on the socket systemd passed (--host/--port ignored) or our
     * own. READY=1 and the pool-manager callback wait for the model. */
    if (d->listen_fd >= 0)
        r = http_server_listen_fd(d->srv, d->listen_fd);
    else
        r = http_server_listen(d->srv, cfg->host, cfg->port);
    if (r) {
        /* the system's reason ("address already in use"), and where */
        const char *why = http_server_listen_error(d->srv);
        if (!why)
            why = llorch_strerror(r);
        char detail[640]; /* a reason and a host of up to 255 bytes each */
        if (d->listen_fd >= 0)
            snprintf(detail, sizeof detail, "%s (the socket passed by systemd)", why);
        else
            snprintf(detail, sizeof detail, "%s (%s port %u)", why, cfg->host, (unsigned)cfg->port);
        return fail(d, "listen failed", detail);
    }

    uv_signal_init(&d->loop, &d->sigterm);
    uv_signal_init(&d->loop, &d->sigint);
    d->sigterm.data = d->sigint.data = d;
    if (cfg->pipeline)
        r = daemon_term_open(d);
    else
        r = uv_signal_start(&d->sigterm, daemon_on_signal, SIGTERM);
    uv_signal_start(&d->sigint, daemon_on_signal, SIGINT);
    d->signals_open = true;
    if (r)
        return fail(d, "signal handling failed", uv_strerror(r));

    struct log_field f[] = {
        LOG_F_STR("host", cfg->host),
        LOG_F_UINT("port", http_server_port(d->srv)),
        LOG_F_STR("model", d->info.model),
        LOG_F_STR("arch", d->info.arch),
        LOG_F_UINT("threads", d->info.threads),
        LOG_F_UINT("max_batch", cfg->max_batch),
    };
    log_write(d->log, LOG_LEVEL_INFO,
              d->listen_fd >= 0 ? "listening on the socket passed by systemd" : "listening", f,
              LLORCH_ARRAY_SIZE(f));
    return 0;
}

/* Phase 4: pack the weights on a libuv pool thread; daemon_load_done continues. */
static int daemon_start_load(struct daemon *d)
{
    const struct config *cfg = d->cfg;
    int r;

    /* 4. pack the weights off the loop; daemon_load_done continues */
    r = uv_async_init(&d->loop, &d->load_async, daemon_on_load_progress);
    if (r)
        return fail(d, "loading failed", uv_strerror(r));
    d->load_async.data = d;
    d->load_async_open = true;
    d->load_bar = isatty(2) && cfg->log_format == LOG_FORMAT_TEXT;
    d->load_pct = -1;
    d->load_work.data = d;
    r = uv_queue_work(&d->loop, &d->load_work, daemon_load_work, daemon_load_done);
    if (r)
        return fail(d, "loading failed", uv_strerror(r));
    d->loading = true;
    return 0;
}

static int daemon_start(struct daemon *d)
{
    int r = daemon_start_operations(d);
    if (!r)
        r = daemon_open_model(d);
    if (!r)
        r = daemon_start_server(d);
    if (!r)
        r = daemon_listen(d);
    if (!r)
        r = daemon_start_load(d);
    return r;
}

/* Frees whatever start-up created, in reverse order. Handles still open
 * (after a failed start) are closed and the loop run until they are. */
static void daemon_stop(struct daemon *d)
{
    if (d->srv)
        http_server_close(d->srv);
    sched_free(d->sched);
    api_openai_free(d->oai);
    api_worker_free(d->worker);
    api_close(d->api);
    mgr_close(d->mgr, NULL, NULL);
    llorch_sd_close(d->sd, NULL, NULL);
    if (d->signals_open) {
        uv_close((uv_handle_t *)&d->sigterm, NULL);
        uv_close((uv_handle_t *)&d->sigint, NULL);
    }
    daemon_term_close(d);
    if (d->load_async_open)
        uv_close((uv_handle_t *)&d->load_async, NULL);
    uv_run(&d->loop, UV_RUN_DEFAULT);
    uv_loop_close(&d->loop);
    metrics_free(d->metrics);
    forward_free(d->fw);
    pipeline_free(d->pl); /* the stages exit */
    tpool_free(d->pool);
    tokenizer_free(d->tok);
    model_free(d->model);
}

#if LLORCH_HAVE_MPI
/* Ranks 1..S of --pipeline: load the model file, pack the stage's layers,
 * serve steps until the coordinator says stop. Signals are the
 * coordinator's business (mpirun forwards SIGTERM to every rank; the
 * coordinator drains, then stops the stages). */
static int daemon_stage_main(const struct config *cfg, int rank, int size)
{
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    struct log *log = NULL;
    char id[160];
    snprintf(id, sizeof id, "%s/stage%d", cfg->worker_id, rank);
    (void)log_new(&log, 2, cfg->log_format, cfg->log_level, id);
    char err[512] = "";
    struct model *m = NULL;
    struct tpool *pool = NULL;
    const struct pipeline_opts share = {.layers = cfg->layers, .rank = rank, .size = size};
    int r = pipeline_stage_load(&m, cfg->model, &share, err, sizeof err);
    struct tpool_opts po = {.n_threads = (int)cfg->threads, .pin = cfg->cpu_pinning,
                            .name = "llorch-s"};
    if (r) {
        log_printf(log, LOG_LEVEL_ERROR, "stage %d: model load failed: %s", rank, err);
        MPI_Abort(MPI_COMM_WORLD, 1); /* the coordinator waits in a collective */
        return 1;
    }
    if ((r = tpool_new(&pool, &po)) != 0) {
        log_printf(log, LOG_LEVEL_ERROR, "stage %d: thread pool failed", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
        return 1;
    }
    struct pipeline_opts plo = {
        .fo = {
            .dtype = cfg->dtype,
            .kv_type = cfg->kv_type,
            .isa = cfg->isa,
            .kv_bytes = (uint64_t)cfg->kv_cache_mb << 20,
            .n_ctx = cfg->ctx,
            .max_seqs = cfg->max_batch,
            .max_step_tokens = LLORCH_MAX(cfg->step_tokens, cfg->max_batch),
            .pool = pool,
        },
        .layers = cfg->layers,
        .rank = rank,
        .size = size,
        .stage_timeout_ms = cfg->stage_timeout_ms, /* the heartbeat's period: a quarter */
    };
    r = pipeline_stage_run(m, &plo, err, sizeof err);
    if (r)
        log_printf(log, LOG_LEVEL_ERROR, "stage %d: %s", rank, err[0] ? err : llorch_strerror(r));
    else
        log_printf(log, LOG_LEVEL_INFO, "stage %d: stopped", rank);
    tpool_free(pool);
    model_free(m);
    log_free(log);
    MPI_Finalize();
    return r ? 1 : 0;
}
#endif

int main(int argc, char **argv, char **envp)
{
    static struct config cfg; /* large (paths); immutable after parsing */
    config_defaults(&cfg);
    bool exit_now = false;
    char err[1024] = "";
    int r = config_parse(&cfg, argc, argv, envp, &exit_now, err, sizeof(err));
    if (r) {
        log_printf(NULL, LOG_LEVEL_ERROR, "%s", err[0] ? err : llorch_strerror(r));
        return 2;
    }
    if (exit_now)
        return 0;

    struct daemon d = {.cfg = &cfg, .listen_fd = -1};
    if (cfg.pipeline) {
#if LLORCH_HAVE_MPI
        int provided = 0;
        MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        MPI_Comm_rank(MPI_COMM_WORLD, &d.mpi_rank);
        MPI_Comm_size(MPI_COMM_WORLD, &d.mpi_size);
        if (provided < MPI_THREAD_SERIALIZED || d.mpi_size < 2) {
            if (d.mpi_rank == 0)
                log_printf(NULL, LOG_LEVEL_ERROR, "%s",
                           d.mpi_size < 2 ? "--pipeline: run as `mpirun -np S+1 llorch-cpud "
                                            "--pipeline ...` (rank 0 serves, ranks 1..S are stages)"
                                          : "--pipeline: MPI lacks MPI_THREAD_SERIALIZED");
            MPI_Finalize();
            return 2;
        }
        if (d.mpi_rank > 0)
            return daemon_stage_main(&cfg, d.mpi_rank, d.mpi_size);
#else
        log_printf(NULL, LOG_LEVEL_ERROR,
                   "--pipeline: this build has no MPI (install libopenmpi-dev, rebuild)");
        return 2;
#endif
    }
    if (log_new(&d.log, 2, cfg.log_format, cfg.log_level, cfg.worker_id) != 0) {
        log_printf(NULL, LOG_LEVEL_ERROR, "cannot create the logger");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&d.loop) != 0) {
        log_write(d.log, LOG_LEVEL_ERROR, "uv_loop_init failed", NULL, 0);
        log_free(d.log);
        return 1;
    }
    d.exit_code = daemon_start(&d);
    if (d.exit_code == 0) {
        uv_run(&d.loop, UV_RUN_DEFAULT);
        d.srv = NULL; /* closed by daemon_on_drained */
    }
    daemon_stop(&d);
    log_write(d.log, LOG_LEVEL_INFO, d.exit_code ? "start-up failed" : "stopped", NULL, 0);
    log_free(d.log);
#if LLORCH_HAVE_MPI
    if (cfg.pipeline) {
        if (!d.pl_started) /* the stages wait in the start-up collectives: end the job */
            MPI_Abort(MPI_COMM_WORLD, d.exit_code ? d.exit_code : 1);
        if (d.pl_stalled) /* a silent rank may live on, frozen: the launcher kills it */
            MPI_Abort(MPI_COMM_WORLD, d.exit_code);
        if (d.pl_lost) /* MPI_Finalize would wait for the lost rank */
            return d.exit_code;
        MPI_Finalize();
    }
#endif
    return d.exit_code;
}
