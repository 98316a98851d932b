/* The worker contract of the orchestrator (../shared/DESIGN.md, "Worker
 * contract"), both generations: health and readiness, generation streams
 * (POST /execute with `event:` frames, POST /v1/inference with data-only
 * frames and [DONE]), cancel, shutdown; request validation. A protocol
 * adapter over the API core (api.h: auth, the event drain, jobs, the
 * drain). Loop thread only. */
#ifndef LLORCH_API_WORKER_H
#define LLORCH_API_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "api.h"
#include "http.h"
#include "sched.h"

/* What /health and the stream frames report about the loaded model. */
struct api_worker_info {
    const char *model;        /* name in /health and `started` frames */
    const char *arch;
    uint64_t memory_bytes;    /* packed weights + KV cache */
    uint32_t n_ctx;
    const char *dtype;
    const char *isa;          /* kernel level: scalar, avx2, avxvnni, avx512 */
    const char *kv_type;
    uint32_t threads;
    bool add_bos;             /* the tokenizer's default, for submitted prompts */
};

struct api_worker_opts {
    struct api_worker_info info;
    /* POST /v1/admin/shutdown, /v1/shutdown: start the same drain as SIGTERM
     * (main's function, so that systemd hears STOPPING either way). */
    void (*shutdown_cb)(void *ctx);
    void *shutdown_ctx;
};

/* The pool manager's registration as /health reports it ("pool_manager");
 * strings must stay valid until the next call. */
struct api_worker_pm_state {
    const char *status;
    uint32_t attempts;
    const char *last_error;
};

struct api_worker;

/* Registers the routes on srv over core (which must outlive the worker
 * api). /health answers 503 "loading" until api_set_ready(core). */
int api_worker_new(struct api_worker **out, struct api *core, struct http_server *srv,
                   const struct api_worker_opts *o);
/* Call after api_close(core)'s jobs are gone or before it; NULL is safe. */
void api_worker_free(struct api_worker *a);

/* Replaces what /health reports about the model, for a daemon that creates
 * the api (to answer 503 "loading") before the weights are packed; strings
 * must outlive the api. */
void api_worker_set_info(struct api_worker *a, const struct api_worker_info *info);
/* Who /health asks for the pool manager's state (set once the client
 * exists; NULL = not reported). */
void api_worker_set_pool_manager(struct api_worker *a,
                                 void (*state)(void *ctx, struct api_worker_pm_state *out),
                                 void *ctx);
/* Loop thread: fn adds its fields to every healthy /health object (a
 * jansson json_t *; e.g. a pipeline's "stages"). fn runs on the loop thread. */
void api_worker_set_health_extra(struct api_worker *a, void (*fn)(void *ctx, void *json_obj),
                                 void *ctx);

/* The worker contract's wire code ("KV_EXHAUSTED", ...) and HTTP status of
 * an api_error (its one table; exposed for unit tests). */
int api_worker_error_wire(enum api_error e, const char **code);

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
