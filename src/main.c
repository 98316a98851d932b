/* llorch-cpud, the daemon: configuration, start-up order, signals and the
 * graceful shutdown. Start-up: parse config → load model and tokenizer →
 * thread pool, forward engine → HTTP server and APIs → scheduler → listen →
 * READY → pool-manager callback; then the loop runs until a drain ends.
 * Shutdown (first SIGTERM/SIGINT or POST /v1/shutdown): stop accepting, let
 * streams finish up to --drain-timeout-ms, end the rest with SHUTTING_DOWN,
 * exit 0. A second signal exits at once (status 1). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "api_openai.h"
#include "api_worker.h"
#include "config.h"
#include "forward.h"
#include "gguf.h"
#include "http.h"
#include "llorch/error.h"
#include "log.h"
#include "model.h"
#include "sched.h"
#include "tokenizer.h"
#include "tpool.h"
#include "util.h"

struct daemon {
    const struct config *cfg;
    struct log *log;
    uv_loop_t loop;
    uv_signal_t sigterm, sigint;
    bool signals_open;
    struct model *model;
    struct tokenizer *tok;
    struct tpool *pool;
    struct forward *fw;
    struct http_server *srv;
    struct api_worker *api;
    struct api_openai *oai;
    struct sched *sched;
    bool shutting_down;
    int exit_code;
};

/* Runs from the drain timer once every job has ended (or the grace passed):
 * close everything; the loop returns when the last handle is closed. */
static void daemon_on_drained(void *ctx)
{
    struct daemon *d = ctx;
    log_write(d->log, CONFIG_LOG_INFO, "drained, exiting", NULL, 0);
    http_server_close(d->srv);
    d->srv = NULL;
    /* Joins the step driver; ends anything left with SHUTTING_DOWN (its
     * events are never taken: api_worker_close frees their owners). */
    sched_free(d->sched);
    d->sched = NULL;
    api_openai_free(d->oai);
    d->oai = NULL;
    api_worker_close(d->api);
    d->api = NULL;
    /* ops: close the pool-manager client (mgr) and the metrics timers here. */
    if (d->signals_open) {
        d->signals_open = false;
        uv_close((uv_handle_t *)&d->sigterm, NULL);
        uv_close((uv_handle_t *)&d->sigint, NULL);
    }
}

/* The graceful drain, from a signal or POST /v1/shutdown. */
static void daemon_begin_shutdown(void *ctx)
{
    struct daemon *d = ctx;
    if (d->shutting_down)
        return;
    d->shutting_down = true;
    struct log_field f[] = {LOG_F_UINT("drain_timeout_ms", d->cfg->drain_timeout_ms),
                            LOG_F_UINT("live_jobs", api_worker_live_jobs(d->api))};
    log_write(d->log, CONFIG_LOG_INFO, "shutting down: draining", f, LLORCH_ARRAY_SIZE(f));
    /* ops: sd_notify STOPPING=1 here. */
    api_worker_drain(d->api, d->cfg->drain_timeout_ms, daemon_on_drained, d);
}

static void daemon_on_signal(uv_signal_t *h, int signum)
{
    struct daemon *d = h->data;
    if (d->shutting_down) {
        /* second signal: no more waiting */
        static const char msg[] = "second signal: exiting now\n";
        ssize_t w = write(2, msg, sizeof(msg) - 1);
        (void)w;
        _exit(1);
    }
    struct log_field f[] = {LOG_F_STR("signal", signum == SIGTERM ? "SIGTERM" : "SIGINT")};
    log_write(d->log, CONFIG_LOG_INFO, "signal received", f, 1);
    daemon_begin_shutdown(d);
}

static int fail(struct daemon *d, const char *what, const char *detail)
{
    struct log_field f[] = {LOG_F_STR("error", detail)};
    log_write(d->log, CONFIG_LOG_ERROR, what, f, 1);
    return 1;
}

static int daemon_start(struct daemon *d)
{
    const struct config *cfg = d->cfg;
    char err[512] = "";
    int r;

    /* 1. the model */
    if (cfg->model[0] == 0)
        return fail(d, "no model", "--model PATH is required");
    r = model_load(&d->model, cfg->model, err, sizeof(err));
    if (r)
        return fail(d, "model load failed", err[0] ? err : llorch_strerror(r));
    if (d->model->vocab_only)
        return fail(d, "model load failed", "the file has no tensors (vocabulary only)");
    r = tokenizer_new(&d->tok, d->model->file, err, sizeof(err));
    if (r)
        return fail(d, "tokenizer failed", err[0] ? err : llorch_strerror(r));

    /* 2. the engine */
    struct tpool_opts po = {.n_threads = (int)cfg->threads, .pin = cfg->cpu_pinning,
                            .name = "llorch-w"};
    r = tpool_new(&d->pool, &po);
    if (r)
        return fail(d, "thread pool failed", llorch_strerror(r));
    struct forward_opts fo = {
        .dtype = cfg->dtype,
        .kv_type = cfg->kv_type,
        .kv_bytes = (uint64_t)cfg->kv_cache_mb << 20,
        .n_ctx = cfg->ctx,
        .max_seqs = cfg->max_batch,
        .max_step_tokens = cfg->step_tokens,
        .pool = d->pool,
    };
    r = forward_new(&d->fw, d->model, &fo, err, sizeof(err));
    if (r)
        return fail(d, "forward engine failed", err[0] ? err : llorch_strerror(r));

    /* 3. the server and its APIs */
    struct http_limits lim = {
        .max_connections = cfg->max_connections,
        .max_header_bytes = cfg->max_header_bytes,
        .max_body_bytes = cfg->max_body_bytes,
        .header_timeout_ms = cfg->header_timeout_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
    };
    r = http_server_new(&d->srv, &d->loop, &lim);
    if (r)
        return fail(d, "http server failed", llorch_strerror(r));
    struct api_worker_opts ao = {
        .cfg = cfg,
        .info = {
            .model = cfg->model_ref[0] ? cfg->model_ref : d->model->name,
            .arch = model_arch_name(d->model->hp.arch),
            .memory_bytes = forward_weight_bytes(d->fw) + ((uint64_t)cfg->kv_cache_mb << 20),
            .n_ctx = forward_n_ctx(d->fw),
            .dtype = forward_dtype_name(forward_dtype(d->fw)),
            .kv_type = forward_kv_type_name(forward_kv_type(d->fw)),
            .threads = (uint32_t)tpool_size(d->pool),
            .add_bos = tokenizer_adds_bos(d->tok),
        },
        .shutdown_cb = daemon_begin_shutdown,
        .shutdown_ctx = d,
    };
    r = api_worker_new(&d->api, &d->loop, d->srv, &ao);
    if (r)
        return fail(d, "worker api failed", llorch_strerror(r));
    struct gguf_str tmpl = {0};
    bool has_tmpl = gguf_get_str(d->model->file, "tokenizer.chat_template", &tmpl) == 0;
    struct api_openai_opts oo = {
        .cfg = cfg,
        .worker = d->api,
        .model_id = ao.info.model,
        .model_name = d->model->name,
        .tok = d->tok,
        .chat_template = has_tmpl ? tmpl.ptr : NULL,
        .chat_template_len = has_tmpl ? (size_t)tmpl.len : 0,
        .n_ctx = ao.info.n_ctx,
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
        log_write(d->log, CONFIG_LOG_WARN,
                  "the model's chat template is not recognised: /v1/chat/completions answers 400 "
                  "unless --chat-template NAME is given",
                  tf, 1);
    }
    /* ops: metrics routes (/metrics) register here. */

    /* 4. the scheduler: its events come back through the api's uv_async_t */
    struct sched_opts so = {
        .max_batch = cfg->max_batch,
        .max_queue = cfg->max_queue,
        .step_tokens = cfg->step_tokens,
        .batch_window_ms = cfg->batch_window_ms,
        .notify = api_worker_notify,
        .notify_ctx = d->api,
    };
    r = sched_new(&d->sched, d->fw, d->tok, &so);
    if (r)
        return fail(d, "scheduler failed", llorch_strerror(r));
    api_worker_set_ready(d->api, d->sched);

    /* 5. listen (ops: an inherited socket from systemd goes through
     * http_server_listen_fd() instead) */
    r = http_server_listen(d->srv, cfg->host, cfg->port);
    if (r)
        return fail(d, "listen failed", llorch_strerror(r));

    uv_signal_init(&d->loop, &d->sigterm);
    uv_signal_init(&d->loop, &d->sigint);
    d->sigterm.data = d->sigint.data = d;
    uv_signal_start(&d->sigterm, daemon_on_signal, SIGTERM);
    uv_signal_start(&d->sigint, daemon_on_signal, SIGINT);
    d->signals_open = true;

    struct log_field f[] = {
        LOG_F_STR("host", cfg->host),
        LOG_F_UINT("port", http_server_port(d->srv)),
        LOG_F_STR("model", ao.info.model),
        LOG_F_STR("arch", ao.info.arch),
        LOG_F_STR("dtype", ao.info.dtype),
        LOG_F_UINT("threads", ao.info.threads),
        LOG_F_UINT("max_batch", cfg->max_batch),
    };
    log_write(d->log, CONFIG_LOG_INFO, "listening", f, LLORCH_ARRAY_SIZE(f));

    /* 6. ops: sd_notify READY=1 here. */
    /* 7. ops: the pool-manager callback (mgr) starts here unless test mode. */
    return 0;
}

/* Frees whatever start-up created, in reverse order. Handles still open
 * (after a failed start) are closed and the loop run until they are. */
static void daemon_stop(struct daemon *d)
{
    if (d->srv)
        http_server_close(d->srv);
    sched_free(d->sched);
    api_openai_free(d->oai);
    api_worker_close(d->api);
    if (d->signals_open) {
        uv_close((uv_handle_t *)&d->sigterm, NULL);
        uv_close((uv_handle_t *)&d->sigint, NULL);
    }
    uv_run(&d->loop, UV_RUN_DEFAULT);
    uv_loop_close(&d->loop);
    forward_free(d->fw);
    tpool_free(d->pool);
    tokenizer_free(d->tok);
    model_free(d->model);
}

int main(int argc, char **argv, char **envp)
{
    static struct config cfg; /* large (paths); immutable after parsing */
    config_defaults(&cfg);
    bool exit_now = false;
    char err[1024] = "";
    int r = config_parse(&cfg, argc, argv, envp, &exit_now, err, sizeof(err));
    if (r) {
        log_printf(NULL, CONFIG_LOG_ERROR, "%s", err[0] ? err : llorch_strerror(r));
        return 2;
    }
    if (exit_now)
        return 0;

    struct daemon d = {.cfg = &cfg};
    if (log_new(&d.log, 2, cfg.log_format, cfg.log_level, cfg.worker_id) != 0) {
        log_printf(NULL, CONFIG_LOG_ERROR, "cannot create the logger");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&d.loop) != 0) {
        log_write(d.log, CONFIG_LOG_ERROR, "uv_loop_init failed", NULL, 0);
        log_free(d.log);
        return 1;
    }
    d.exit_code = daemon_start(&d);
    if (d.exit_code == 0) {
        uv_run(&d.loop, UV_RUN_DEFAULT);
        d.srv = NULL; /* closed by daemon_on_drained */
    }
    daemon_stop(&d);
    log_write(d.log, CONFIG_LOG_INFO, d.exit_code ? "start-up failed" : "stopped", NULL, 0);
    log_free(d.log);
    return d.exit_code;
}
