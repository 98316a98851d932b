/* The API core shared by every protocol adapter (the worker contract in
 * api_worker.c, the OpenAI API in api_openai.c), as redis' networking.c is
 * to its command families: the readiness state, bearer-token auth, the one
 * event drain out of the scheduler (a uv_async_t), the job registry and the
 * graceful drain, JSON helpers, and the one SSE job skeleton (submission,
 * abort, ping, slow-client cut with its log line, the terminal event's log
 * line and release). An adapter parses requests and writes its frames
 * through struct api_job_ops; everything else about a job happens here, so
 * every job of either API is logged and counted the same way.
 *
 * What can end or refuse a job is one enum api_error that each adapter maps
 * to its own wire name and HTTP status in one table.
 *
 * Loop thread only, except api_notify(). */
#ifndef LLORCH_API_H
#define LLORCH_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "http.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "resume.h"
#include "sched.h"
#include "sse.h"

/* Every way a job can be refused at submission or end in an error. The
 * first SCHED_ERR_COUNT_ values are the engine's (enum sched_error), in its
 * order; the rest happen before the engine has the request. */
enum api_error {
    API_ERR_CANCELLED = SCHED_ERR_CANCELLED,
    API_ERR_TIMEOUT = SCHED_ERR_TIMEOUT,
    API_ERR_INVALID_REQUEST = SCHED_ERR_INVALID_REQUEST,
    API_ERR_INFERENCE_FAILED = SCHED_ERR_INFERENCE_FAILED,
    API_ERR_KV_EXHAUSTED = SCHED_ERR_KV_EXHAUSTED,
    API_ERR_CLIENT_TOO_SLOW = SCHED_ERR_CLIENT_TOO_SLOW,
    API_ERR_SHUTTING_DOWN = SCHED_ERR_SHUTTING_DOWN,
    API_ERR_CONTEXT_EXCEEDED = SCHED_ERR_CONTEXT_EXCEEDED,
    API_ERR_PROMPT_TOO_LARGE = SCHED_ERR_PROMPT_TOO_LARGE,
    API_ERR_QUEUE_FULL = SCHED_ERR_COUNT_, /* sched_submit: LLORCH_EFULL */
    API_ERR_JOB_EXISTS,                    /* sched_submit: LLORCH_EEXISTS */
    API_ERR_LOADING,                       /* no scheduler yet */
    API_ERR_INTERNAL,                      /* anything else (out of memory, ...) */
    API_ERR_COUNT_
};

/* The code of a terminal ERROR event. */
enum api_error api_error_from_sched(enum sched_error e);
/* The code of a failed sched_submit() (LLORCH_EFULL, LLORCH_EEXISTS,
 * LLORCH_ESHUTDOWN, LLORCH_EINVAL, LLORCH_EUTF8, LLORCH_ETOOBIG, other). */
enum api_error api_error_from_submit(int rc);

/* ---- the core ---- */

struct api_opts {
    const char *api_key;          /* bearer key, "" or NULL = none; must outlive the api */
    uint64_t sse_outbox_bytes;    /* per-stream bound on unsent bytes (slow-client cut) */
    uint32_t ping_interval_ms;    /* keep-alive comments until the first token; 0 = none */
    struct metrics *metrics;      /* may be NULL: job events feed TTFT, ITL, end reasons */
    struct log *log;              /* may be NULL: one line per finished job */
    /* resumable streams (resume.h): the largest grace a request may ask for
     * (0 = none), the journal bounds per job and over all jobs */
    uint32_t resume_grace_ms;
    uint64_t resume_job_bytes;
    uint64_t resume_total_bytes;
};

enum api_state { API_LOADING, API_READY, API_DRAINING };

struct api;

/* Starts the event channel on loop; in the loading state. srv is the server
 * the adapters route on (the drain stops it and counts its connections). */
int api_new(struct api **out, uv_loop_t *loop, struct http_server *srv,
            const struct api_opts *o);
/* Closes the event channel and frees jobs still waiting for a terminal
 * event (each through its adapter's free); memory is freed in the close
 * callback (keep running the loop). Call after sched_free() and after the
 * adapters are freed. NULL is safe. */
void api_close(struct api *a);

/* sched_opts.notify with ctx = the api: any thread. */
void api_notify(void *ctx);

void api_set_loading(struct api *a, double progress);
/* Ready to serve: sched must outlive the api's use of it (until api_close). */
void api_set_ready(struct api *a, struct sched *s);
/* The engine is gone for good (a pipeline stage was lost): /health says so
 * (503 "failed" with why) from now on; the daemon drains and exits non-zero. */
void api_set_failed(struct api *a, const char *why);
const char *api_failure(const struct api *a); /* NULL while none */
enum api_state api_state(const struct api *a);
double api_loading_progress(const struct api *a);
bool api_is_ready(const struct api *a);
/* The scheduler once ready (NULL while loading and after close). */
struct sched *api_sched(const struct api *a);

/* Graceful drain: stop accepting, refuse new jobs, let running streams end
 * up to timeout_ms, then end the rest with SHUTTING_DOWN. done(ctx) runs
 * (from a timer, never inside the caller) once every job has ended and every
 * connection is closed, or after a grace period past the deadline. */
void api_drain(struct api *a, uint32_t timeout_ms, void (*done)(void *ctx), void *ctx);
bool api_draining(const struct api *a);
/* Jobs submitted and not yet ended (their terminal event not yet taken). */
uint32_t api_live_jobs(const struct api *a);

/* Bearer-token check (constant time); true when no key is configured. */
bool api_authorized(const struct api *a, const struct http_request *r);
bool api_has_key(const struct api *a);
/* 401 with WWW-Authenticate and a JSON error body. */
void api_respond_unauthorized(struct http_request *r);

/* The grace a request asks for: "resumable": true in root (the configured
 * grace), or X-Resume-Grace-Ms: N (at most the configured grace); 0 = not
 * resumable. False when a 400 was answered. */
bool api_request_grace(struct api *a, struct http_request *r, json_t *root, uint32_t *grace);

/* ---- JSON helpers ---- */

/* Appends o's compact text (reals with float precision) to b; takes o's
 * reference (NULL is LLORCH_ENOMEM, for json_pack failures). */
int api_json_append(struct http_buf *b, json_t *o);
/* Sends o (reference taken) as the whole response; 500 when it cannot. */
void api_respond_json(struct api *a, struct http_request *r, int status, json_t *o,
                      const char *extra_headers);
/* Replaces invalid UTF-8 with U+FFFD into the api's scratch (valid until the
 * next call); NULL when out of memory. */
const char *api_text_sanitize(struct api *a, const char *s, size_t len, size_t *out_len);
/* A JSON string of arbitrary bytes: invalid UTF-8 becomes U+FFFD. */
json_t *api_json_text(struct api *a, const char *s, size_t len);
/* Appends s as a quoted JSON string (invalid UTF-8 as U+FFFD). */
int api_json_append_string(struct api *a, struct http_buf *b, const char *s, size_t len);
/* Unicode characters of UTF-8 text (continuation bytes not counted). */
size_t api_utf8_chars(const char *s, size_t len);
/* The shortest text that reads back as the same JSON number, for error
 * messages that quote a value ("got 3", "got 0.25"). */
void api_number_text(const json_t *v, char *out, size_t cap);
/* Percent-decodes a path segment into out (NUL-terminated); false when it
 * is empty, does not fit cap, or holds a '/' and !allow_slash. */
bool api_path_unescape(const char *s, size_t len, bool allow_slash, char *out, size_t cap,
                       size_t *out_len);

/* ---- jobs ---- */

struct api_job;

/* What an adapter does with its jobs. */
struct api_job_ops {
    const char *api;              /* the log lines' `api` field: "worker", "openai" */
    /* Every event of the job, after the core's bookkeeping (metrics, the
     * ping timer stopped at the first token, and at a terminal event the log
     * line). At END or ERROR the adapter writes its last frames or its
     * whole response; the core then ends the stream and frees the job. */
    void (*on_event)(struct api_job *j, const struct sched_event *ev);
    /* Queues the adapter's error frame for a stream, forced past the outbox
     * bound (the slow-client cut, before the core cuts the connection). */
    void (*send_error)(struct api_job *j, enum api_error e, const char *message);
    /* The ping timer fired before the stream's head was sent (a stream that
     * sends its head late does it now); NULL when heads are sent at once. */
    void (*ping_before_head)(struct api_job *j);
    /* The adapter's wire name of e, for the log lines. */
    const char *(*error_code)(enum api_error e);
    /* Frees the adapter's job (the api_job is its first member). */
    void (*free)(struct api_job *j);
};

/* Embedded first in an adapter's job; the scheduler's `owner`. Lives from a
 * successful api_job_submit() until its terminal event was handled (or
 * api_close), connected or not: a dead or too slow client detaches it and
 * cancels the request. */
struct api_job {
    const struct api_job_ops *ops;
    struct api *api;
    struct llorch_queue node;     /* in the api's registry */
    struct metrics_job metrics;   /* zero-initialised; the event drain fills it */
    struct http_request *req;     /* the client's request while it is ours */
    struct sse_stream sse;        /* streams: sse.req != NULL from the head to the end */
    uint64_t req_id;
    uint32_t n_frames;            /* token frames sent (the adapter counts; logged) */
    bool head_sent;
    bool got_token;
    /* Set by the adapter before api_job_submit(): > 0 makes the stream
     * resumable (its frames journaled, a dropped connection detaches the job
     * for this long instead of cancelling it); frame_ids: every frame carries
     * an `id:` line even when not resumable (resumable ones always do). */
    uint32_t resume_grace_ms;
    bool frame_ids;
    bool finished;                /* terminal event handled, kept for a reader */
    struct resume_entry resume;   /* frame ids; journal and grace when resumable */
    size_t job_id_len;
    char job_id[SCHED_JOB_ID_MAX];
};

/* Submits req for j (zero-initialised by the caller but for the adapter's
 * own fields) on behalf of the client's request r: sets req->owner, and on
 * success registers the job, cancels it when the client goes away, and when
 * ping starts the keep-alive timer. Returns 0 or sched_submit()'s error (the
 * job is then not registered; the caller frees it and answers r). */
int api_job_submit(struct api *a, struct api_job *j, const struct api_job_ops *ops,
                   struct http_request *r, struct sched_request *req, bool ping);
/* A job whose frames are written: a reader is attached, or the stream is
 * resumable (its frames go to the journal while detached). */
bool api_job_writing(const struct api_job *j);
/* Sends the stream's response head; on failure the job is detached and
 * cancelled. */
int api_job_begin_stream(struct api_job *j, enum sse_mode mode);
/* Queues one frame (with its `id:` line when resumable or frame_ids), and
 * journals it when resumable; nothing when not writing. A full outbox cuts
 * the slow client unless force (the cut stream is no longer resumable). */
void api_job_send(struct api_job *j, const char *type, const char *data, size_t len,
                  bool force);
/* Asks the scheduler to end the job with code (its ERROR event follows). */
void api_job_cancel(struct api_job *j, enum sched_error code);

/* Resuming a stream (GET /execute/{id} and the like, with Last-Event-ID):
 * the resumable job of an adapter (ops) with this job id, or NULL (unknown,
 * not resumable, expired, over the journal bound, another adapter's). */
struct api_job *api_job_find_resumable(struct api *a, const struct api_job_ops *ops,
                                       const char *job_id, size_t len);
/* Attaches r as the job's reader: its head, the frames after its
 * Last-Event-ID, then the rest live. 0, or (nothing answered) LLORCH_EAGAIN:
 * a reader is attached; LLORCH_EINVAL: a malformed Last-Event-ID or another
 * job's; LLORCH_ERANGE: past the last frame. Counted in the metrics. */
int api_job_resume(struct api_job *j, struct http_request *r);

#endif
