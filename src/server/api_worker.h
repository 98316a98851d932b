/* The worker contract of the orchestrator (../shared/DESIGN.md, "Worker
 * contract"), both generations: health and readiness, generation streams
 * (POST /execute with `event:` frames, POST /v1/inference with data-only
 * frames and [DONE]), cancel, shutdown; bearer-token auth; request
 * validation. Also owns the one event channel out of the scheduler (a
 * uv_async_t) and the graceful drain. Loop thread only, except
 * api_worker_notify(). */
#ifndef LLORCH_API_WORKER_H
#define LLORCH_API_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "mgr.h"
#include "sched.h"

/* Every sched_request.owner submitted by any API module points at one of
 * these (embedded first in the module's job), so one event drain serves all
 * APIs. on_event runs on the loop thread; the terminal event (END or ERROR)
 * is the last one, after which the sink may free itself. */
struct api_sink {
    void (*on_event)(struct api_sink *sink, const struct sched_event *ev);
    struct metrics_job metrics; /* zero-initialised; the event drain fills it */
};

/* What /health and the stream frames report about the loaded model. */
struct api_worker_info {
    const char *model;        /* name in /health and `started` frames */
    const char *arch;
    uint64_t memory_bytes;    /* packed weights + KV cache */
    uint32_t n_ctx;
    const char *dtype;
    const char *isa;          /* kernel level: scalar, avx2, avx512 */
    const char *kv_type;
    uint32_t threads;
    bool add_bos;             /* the tokenizer's default, for submitted prompts */
};

struct api_worker_opts {
    const struct config *cfg; /* must outlive the api: api key, outbox, ping, drain timeout */
    struct api_worker_info info;
    /* POST /v1/admin/shutdown, /v1/shutdown: start the same drain as SIGTERM
     * (main's function, so that systemd hears STOPPING either way). */
    void (*shutdown_cb)(void *ctx);
    void *shutdown_ctx;
    struct metrics *metrics;  /* may be NULL: job events feed TTFT, ITL, end reasons */
    struct log *log;          /* may be NULL: one line per finished job */
};

struct api_worker;

/* Registers the routes on srv and starts the event channel on loop. Starts
 * in the loading state (/health answers 503 "loading"). */
int api_worker_new(struct api_worker **out, uv_loop_t *loop, struct http_server *srv,
                   const struct api_worker_opts *o);
/* Closes the event channel, frees jobs still waiting for a terminal event;
 * memory is freed in the close callback (keep running the loop). Call after
 * sched_free(). NULL is safe. */
void api_worker_close(struct api_worker *a);

/* sched_opts.notify with ctx = the api_worker: any thread. */
void api_worker_notify(void *ctx);

void api_worker_set_loading(struct api_worker *a, double progress);
/* Replaces what /health reports about the model, for a daemon that creates
 * the api (to answer 503 "loading") before the weights are packed; strings
 * must outlive the api. */
void api_worker_set_info(struct api_worker *a, const struct api_worker_info *info);
/* Ready to serve: sched must outlive the api's use of it (until
 * api_worker_close). */
void api_worker_set_ready(struct api_worker *a, struct sched *s);
bool api_worker_is_ready(const struct api_worker *a);
/* The pool-manager client whose state /health reports as "pool_manager"
 * (created after listening, so set later; NULL = not reported). */
void api_worker_set_mgr(struct api_worker *a, const struct mgr *m);
/* The scheduler once ready (NULL while loading and after close), for other
 * API modules that submit to it. */
struct sched *api_worker_sched(const struct api_worker *a);

/* Graceful drain: stop accepting, refuse new jobs, let running streams end
 * up to timeout_ms, then end the rest with SHUTTING_DOWN. done(ctx) runs
 * (from a timer, never inside the caller) once every job has ended and every
 * connection is closed, or after a grace period past the deadline. */
void api_worker_drain(struct api_worker *a, uint32_t timeout_ms, void (*done)(void *ctx),
                      void *ctx);
bool api_worker_draining(const struct api_worker *a);

/* For other API modules: jobs that must end before a drain completes. */
void api_worker_job_ref(struct api_worker *a);
void api_worker_job_unref(struct api_worker *a);
uint32_t api_worker_live_jobs(const struct api_worker *a);

/* The shortest text that reads back as the same JSON number, for error
 * messages that quote a value ("got 3", "got 0.25"). */
void api_worker_number_text(const json_t *v, char *out, size_t cap);

/* Resumable streams (resume.h), for every API module: the registry (NULL
 * after close), the grace a request asks for ("resumable": true in root, or
 * X-Resume-Grace-Ms; false when a 400 was answered), and the metrics of a
 * resume that replays the frames from `from` on. */
struct resume_registry;
struct resume_entry;
struct resume_registry *api_worker_resume(const struct api_worker *a);
bool api_worker_request_grace(struct api_worker *a, struct http_request *r, json_t *root,
                              uint32_t *grace);
void api_worker_count_resume(struct api_worker *a, const struct resume_entry *e, uint64_t from);
/* The metrics given at creation (may be NULL). */
struct metrics *api_worker_metrics(const struct api_worker *a);

/* Bearer-token check (constant time); true when no key is configured. */
bool api_worker_authorized(const struct api_worker *a, const struct http_request *r);
/* 401 with WWW-Authenticate and a JSON error body. */
void api_worker_respond_unauthorized(struct http_request *r);

/* Validation of a generation request body (exposed for unit tests): on
 * success fills p and returns 200; otherwise returns the status (400, 415,
 * 422) and sets *err_body to the JSON error body to send (caller frees).
 * json_root receives the parsed document when 200 (strings in p point into
 * it; caller json_decref()s). */
struct api_worker_params {
    const char *job_id;
    size_t job_id_len;
    const char *prompt;
    size_t prompt_len;
    struct sched_params sp;
};
int api_worker_validate(const char *content_type, size_t ct_len, const char *body, size_t len,
                        struct api_worker_params *p, void **json_root, char **err_body);

#endif
