/* Prometheus metrics. Counters, gauges and histograms are lock-free atomics
 * that any thread updates (the loop thread for requests and streams, the step
 * driver for steps); metrics_render() writes the text exposition format
 * (version 0.0.4) for GET /metrics, adding the gauges and counters of a
 * sched_stats snapshot and a few process metrics. */
#ifndef LLORCH_METRICS_H
#define LLORCH_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "sched.h"

/* The Content-Type of metrics_render()'s output. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Route label of llorch_http_requests_total. Each route is registered with
 * its label as the route's tag (http_server_route_tagged), so a request's
 * http_request.route_tag is its label and no second route table exists. */
enum metrics_endpoint {
    METRICS_EP_HEALTH,           /* /health, /v1/health */
    METRICS_EP_READY,            /* /v1/ready */
    METRICS_EP_EXECUTE,          /* /execute */
    METRICS_EP_INFERENCE,        /* /v1/inference */
    METRICS_EP_INFERENCE_CANCEL, /* DELETE /v1/inference/{id}, GET (resume) */
    METRICS_EP_CANCEL,           /* /cancel */
    METRICS_EP_COMPLETIONS,      /* /v1/completions */
    METRICS_EP_CHAT_COMPLETIONS, /* /v1/chat/completions */
    METRICS_EP_MODELS,           /* /v1/models */
    METRICS_EP_METRICS,          /* /metrics */
    METRICS_EP_SHUTDOWN,         /* /v1/admin/shutdown, /v1/shutdown */
    METRICS_EP_OTHER,            /* no route (404s) */
    METRICS_EP_MODEL,            /* /v1/models/{id} */
    METRICS_EP_COMPLETIONS_ROOT, /* /completions */
    METRICS_EP_CHAT_COMPLETIONS_ROOT, /* /chat/completions */
    METRICS_EP_MODELS_ROOT,      /* /models */
    METRICS_EP_EXECUTE_RESUME,   /* GET /execute/{id} (resume) */
    METRICS_EP_COMPLETIONS_RESUME, /* GET /v1/completions/{id} (resume) */
    METRICS_EP_CHAT_COMPLETIONS_RESUME, /* GET /v1/chat/completions/{id} (resume) */
    METRICS_EP_COUNT_
};

/* Gauges the loop thread keeps current. */
enum metrics_gauge {
    METRICS_G_CONNECTIONS, /* open HTTP connections */
    METRICS_G_STREAMS,     /* SSE streams being written */
    METRICS_G_COUNT_
};

/* Counters without labels, for events outside requests. */
enum metrics_counter {
    METRICS_C_CALLBACK_ATTEMPTS,    /* ready-callback POSTs sent */
    METRICS_C_CALLBACK_FAILURES,    /* of which failed */
    METRICS_C_HEARTBEATS,           /* heartbeat POSTs sent */
    METRICS_C_HEARTBEAT_FAILURES,   /* of which failed */
    METRICS_C_CONNECTIONS_REJECTED, /* over --max-connections */
    METRICS_C_RESUMES,              /* resumable streams picked up again */
    METRICS_C_RESUME_REPLAYED,      /* frames replayed to resuming readers */
    METRICS_C_RESUME_EXPIRED,       /* detached jobs nobody came back for */
    METRICS_C_COUNT_
};

struct metrics;

/* worker_id and model label llorch_info; both are copied. */
int metrics_new(struct metrics **out, const char *worker_id, const char *model);
void metrics_free(struct metrics *m); /* NULL is safe */

/* A request's label from its route tag (-1 or out of range: "other"). */
enum metrics_endpoint metrics_endpoint_from_tag(int route_tag);
const char *metrics_endpoint_name(enum metrics_endpoint e);

/* Every function below is thread-safe and lock-free; a NULL m is ignored so
 * callers need no checks. */
void metrics_request_done(struct metrics *m, enum metrics_endpoint e, unsigned status);
void metrics_gauge_add(struct metrics *m, enum metrics_gauge g, int64_t delta);
void metrics_gauge_set(struct metrics *m, enum metrics_gauge g, int64_t value);
void metrics_counter_add(struct metrics *m, enum metrics_counter c, uint64_t n);
/* A job's terminal event: by stop reason, and by error code for errors. */
void metrics_job_end(struct metrics *m, enum sched_stop_reason r);
void metrics_job_error(struct metrics *m, enum sched_error e);
/* Time from admission (or arrival) to the first token. */
void metrics_observe_ttft(struct metrics *m, double seconds);
/* Time between two consecutive tokens of one stream. */
void metrics_observe_itl(struct metrics *m, double seconds);
/* One engine step: its duration, the sequences in it and the tokens it
 * computed (decode tokens plus prefill chunks). */
void metrics_observe_step(struct metrics *m, double seconds, uint32_t batch_size,
                          uint32_t n_tokens);
/* One engine step's mix: the prompt tokens and decoded sequences it carried
 * and the prompt-token budget the latency target gave it (counted only for
 * steps with prompt tokens). */
void metrics_observe_step_mix(struct metrics *m, uint32_t n_prefill, uint32_t n_decode,
                              uint32_t budget);
/* The step driver's time between two consecutive forward steps, and of it
 * the previous step's sampling (pool) and event posting (driver); counted
 * only for steps that followed another without the driver sleeping
 * (gap_s > 0). */
void metrics_observe_step_gap(struct metrics *m, double gap_s, double sample_s, double emit_s);
/* Model loading, 0..1; 1 = loaded (llorch_model_loaded). */
void metrics_set_load_progress(struct metrics *m, double progress);
/* Whole request, from the request's arrival to its terminal event. */
void metrics_observe_request(struct metrics *m, double seconds);

/* Per-job state for metrics_observe_event(), zero-initialised, owned by
 * whoever owns the job (e.g. embedded in its api_job). */
struct metrics_job {
    uint64_t submit_ns;     /* monotonic; 0 until STARTED */
    uint64_t last_token_ns; /* monotonic; 0 before the first token */
};

/* Loop thread: one scheduler event of a job. STARTED fixes the submit time
 * (now - queued_ms); each TOKEN after the first is an inter-token latency;
 * END observes TTFT (its ttft_ms), the request duration and the stop
 * reason; ERROR counts the error code (and reason "cancelled" or "error"). */
void metrics_observe_event(struct metrics *m, const struct sched_event *ev,
                           struct metrics_job *job);

/* Renders every metric; st may be NULL (e.g. while loading: the engine
 * gauges are then omitted). *out is malloc'd and NUL-terminated; free() it.
 * Returns 0 or LLORCH_ENOMEM. */
int metrics_render(struct metrics *m, const struct sched_stats *st, char **out, size_t *len);

#endif
