/* Continuous batching. The loop thread submits and cancels; a preparation
 * thread tokenises and checks each request in arrival order; the step driver
 * thread (which also drives the pool as worker 0) admits requests, builds
 * each step from one decode token per running sequence plus chunks of pending
 * prompts sized to a latency target (stepcost.h), has the pool sample and
 * detokenise the step's sequences in parallel, and posts events back.
 * Every accepted request yields exactly one terminal event (END or ERROR);
 * the submitter's `owner` pointer must stay valid until it has been taken.
 *
 * Event order per request: STARTED (when admitted), TOKEN*, then END or
 * ERROR. A request rejected at admission (invalid prompt, can never fit:
 * CONTEXT_EXCEEDED) gets its ERROR without a STARTED. Preemption under KV
 * pressure is invisible to the client: the sequence is recomputed and its
 * output continues with the next index. An end-of-generation token is not
 * sent as a TOKEN event and does not count in tokens_out.
 *
 * Events come from a pool preallocated at sched_new(); STARTED and the
 * terminal event are embedded in the request slot, so they never wait.
 * When the loop holds every TOKEN event of the pool, the step driver blocks
 * until some are released (nothing is dropped or coalesced). A request slot
 * is reused only after its STARTED and terminal events are released, so a
 * loop that does not release events eventually sees LLORCH_EFULL.
 *
 * Memory: one arena sized (max_queue + max_batch) request slots, each with
 * the prompt copy (max_prompt_bytes), a token array of n_ctx entries, the
 * sampler state and the detokeniser; one logits buffer per batch slot; one
 * sampling scratch. Nothing is allocated after sched_new(). */
#ifndef LLORCH_SCHED_H
#define LLORCH_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "detok.h"
#include "forward.h"
#include "llorch/llorch.h"
#include "queue.h"
#include "tokenizer.h"
#include "tpool.h"

#define SCHED_JOB_ID_MAX 256
#define SCHED_MAX_LOGPROBS 20
#define SCHED_EVENT_TEXT_CAP (DETOK_PENDING_CAP + 64)

enum sched_event_type {
    SCHED_EV_STARTED,
    SCHED_EV_TOKEN,
    SCHED_EV_END,
    SCHED_EV_ERROR,
};

enum sched_stop_reason {
    SCHED_STOP_MAX_TOKENS,
    SCHED_STOP_EOS,
    SCHED_STOP_SEQUENCE,
    SCHED_STOP_CANCELLED,
    SCHED_STOP_ERROR,
};

/* What ended a request, as the engine saw it. Each API maps these codes to
 * its own wire names and statuses in one table (src/server/api.h); the
 * message is for people and no API reads it to decide anything. */
enum sched_error {
    SCHED_ERR_CANCELLED,
    SCHED_ERR_TIMEOUT,
    SCHED_ERR_INVALID_REQUEST,    /* empty, not UTF-8, not tokenizable, bad stops */
    SCHED_ERR_INFERENCE_FAILED,
    SCHED_ERR_KV_EXHAUSTED,       /* the cache has no room now (it would fit an empty one) */
    SCHED_ERR_CLIENT_TOO_SLOW,
    SCHED_ERR_SHUTTING_DOWN,
    SCHED_ERR_CONTEXT_EXCEEDED,   /* prompt + max_tokens can never fit: n_ctx or the whole cache */
    SCHED_ERR_PROMPT_TOO_LARGE,   /* prompt text over the per-request byte limit */
};
#define SCHED_ERR_COUNT_ (SCHED_ERR_PROMPT_TOO_LARGE + 1)

struct sched_params {
    uint32_t max_tokens;          /* >= 1 */
    float temperature;            /* 0 = greedy */
    float top_p;                  /* 1 = off */
    uint32_t top_k;               /* 0 = off */
    float min_p;                  /* 0 = off */
    float repetition_penalty;     /* 1 = off */
    float presence_penalty;       /* 0 = off */
    float frequency_penalty;      /* 0 = off */
    uint64_t seed;
    uint32_t n_stops;
    const char *stops[DETOK_MAX_STOPS];   /* copied by sched_submit */
    size_t stop_lens[DETOK_MAX_STOPS];
    uint32_t timeout_ms;          /* 0 = none */
    uint32_t n_logprobs;          /* top-N log-probs per token (OpenAI), 0 = none */
    bool ignore_eos;
};

struct sched_request {
    const char *job_id;           /* copied; 1..SCHED_JOB_ID_MAX-1 bytes */
    size_t job_id_len;
    const char *prompt;           /* UTF-8, copied; or NULL with prompt_tokens */
    size_t prompt_len;
    const llorch_token *prompt_tokens;
    size_t n_prompt_tokens;
    bool add_bos;                 /* usually tokenizer_adds_bos() */
    bool parse_special;           /* chat templates render control tokens */
    struct sched_params params;
    void *owner;                  /* returned in every event */
};

struct sched_logprob {
    llorch_token id;
    float logprob;
};

struct sched_event {
    struct llorch_queue node;     /* loop thread: on the list from sched_events_take() */
    enum sched_event_type type;
    uint64_t req_id;
    void *owner;
    union {
        struct {
            uint32_t n_prompt_tokens;
            uint32_t queued_ms;       /* submit to admission */
        } started;
        struct {
            uint32_t index;           /* 0-based index of the token in the output */
            llorch_token id;
            float logprob;            /* of the chosen token (when n_logprobs > 0) */
            uint32_t n_top;
            struct sched_logprob top[SCHED_MAX_LOGPROBS];
            uint32_t text_len;        /* text may be empty (held back or partial UTF-8) */
            char text[SCHED_EVENT_TEXT_CAP];
        } token;
        struct {
            enum sched_stop_reason reason;
            int32_t stop_index;       /* which stop string, for SCHED_STOP_SEQUENCE */
            uint32_t tokens_out;
            uint32_t n_prompt_tokens;
            uint32_t ttft_ms;         /* submit to first token */
            uint32_t decode_time_ms;  /* admission (STARTED) to end */
            uint32_t text_len;        /* final released text (held-back suffix) */
            char text[SCHED_EVENT_TEXT_CAP];
        } end;
        struct {
            enum sched_error code;
            char message[256];
        } error;
    } u;
};

/* What one engine step carried and cost. */
struct sched_step_info {
    double seconds;               /* the forward step, measured */
    uint32_t n_seqs;              /* sequences in it */
    uint32_t n_tokens;            /* n_prefill + n_decode */
    uint32_t n_prefill;           /* prompt tokens (chunks) */
    uint32_t n_decode;            /* sequences decoding one token */
    uint32_t budget;              /* prompt tokens the step was allowed */
    /* The driver's time off the forward pass: from the end of the previous
     * forward step to the start of this one (0 for the first step after the
     * driver was idle), and of it the previous step's sampling and
     * detokenising on the pool and its posting of events in step order. */
    double gap_s;
    double sample_s;
    double emit_s;
};

/* The step cost model as last fitted, and the latency target it serves. */
struct sched_cost_stats {
    double itl_target_s;          /* configured, or itl_target_pct of the decode step; 0: none yet */
    double step_s;                /* fixed part of every step */
    double prefill_step_s;        /* extra fixed part of a step with prompt chunks */
    double prefill_token_s;       /* per prompt token */
    double decode_seq_s;          /* per decoded sequence */
    uint32_t budget;              /* prompt tokens allowed in the last step */
};

struct sched_opts {
    uint32_t max_batch;           /* running sequences, default 32 */
    uint32_t max_queue;           /* waiting requests, default 256 */
    uint32_t step_tokens;         /* token budget per step (chunked prefill), default 512 */
    /* New arrivals wait up to this long (from the oldest) for more to join
     * them before they are admitted, unless they fill the batch; running
     * sequences keep stepping. Default 0 = admit at once. */
    uint32_t batch_window_ms;
    /* Called on the step driver thread when the event list goes from empty to
     * non-empty (e.g. uv_async_send). */
    void (*notify)(void *ctx);
    void *notify_ctx;
    /* Prompt text bytes per request slot; 0: max(128 KiB, 16 * n_ctx). A
     * longer prompt is accepted and ends with ERROR PROMPT_TOO_LARGE. */
    uint32_t max_prompt_bytes;
    /* Called on the step driver thread after every engine step with what it
     * carried and cost; e.g. metrics_observe_step. May be NULL. */
    void (*on_step)(void *ctx, const struct sched_step_info *info);
    void *on_step_ctx;
    /* Another engine (a pipeline's coordinator): steps go to step() on the
     * driver thread instead of forward_step, the KV decisions to kv; with
     * n_vocab and n_ctx the forward engine may then be NULL. */
    int (*step)(void *ctx, struct forward_entry *entries, uint32_t n);
    void *step_ctx;
    struct kv_cache *kv;
    uint32_t n_vocab, n_ctx;
    /* Micro-batches (a pipeline of max_groups stages), used instead of step()
     * when submit is set: up to max_groups groups of running sequences are
     * in flight at once, a sequence in at most one. submit(step_ctx, group,
     * entries, n) starts a group (group in 0..max_groups-1, reused in order;
     * the entries and their logits stay untouched until it completes);
     * complete(step_ctx, &group) waits for the oldest group in flight, fills
     * its logits and returns 0 or a negative code for that group. A sequence
     * in flight is never preempted, freed or cancelled until its group has
     * completed (cancels and timeouts wait for it). */
    int (*submit)(void *ctx, uint32_t group, struct forward_entry *entries, uint32_t n);
    int (*complete)(void *ctx, uint32_t *group);
    uint32_t max_groups;
    /* Latency target of a step with prompt chunks next to running streams,
     * in ms; 0: twice the measured pure decode step of the current batch.
     * The prompt chunk of each step is sized from the measured step cost to
     * stay within it (stall-free batching, see stepcost.h). */
    uint32_t itl_target_ms;
    /* With itl_target_ms 0: the target in percent of the measured pure
     * decode step of the current batch; 0 = 200 (twice). Lower keeps the
     * running streams' pace, higher gives the prompts more of each step. */
    uint32_t itl_target_pct;
    /* The pool that samples and detokenises a step's sequences in parallel
     * (the one the forward engine runs on); NULL: the driver does it. */
    struct tpool *pool;
    /* Tests: the step time the cost model learns from, instead of the
     * measured one (a made-up cost model). NULL in production. */
    double (*step_cost)(void *ctx, uint32_t n_prefill, uint32_t n_decode);
    void *step_cost_ctx;
};
/* The forward engine must allow max_seqs >= max_batch and max_step_tokens >=
 * step_tokens. step_tokens bounds every step, decodes included; with
 * step_tokens >= max_batch (the daemon sizes the engine so) every running
 * stream decodes in every step and prompt chunks get what the latency target
 * leaves, at most step_tokens minus the decodes. */

struct sched_stats {
    uint32_t slots_total;         /* max_batch */
    uint32_t slots_busy;          /* running sequences */
    uint32_t queue_depth;         /* waiting requests */
    struct kv_stats kv;
    uint64_t tokens_generated;
    uint64_t tokens_prompted;
    uint64_t prefix_tokens_reused;
    uint64_t preemptions;
    uint64_t steps;
    struct sched_cost_stats cost;
};

struct sched;

/* Starts the step driver thread. The forward engine and tokenizer must
 * outlive the scheduler. */
int sched_new(struct sched **out, struct forward *fw, const struct tokenizer *tok,
              const struct sched_opts *o);
/* Stops the driver (ends every request with SHUTTING_DOWN first) and frees. */
void sched_free(struct sched *s);

/* Thread-safe. Copies the request. Returns the request id through *req_id, or
 * LLORCH_EFULL (queue full), LLORCH_EEXISTS (job_id already queued or running),
 * LLORCH_ESHUTDOWN (draining), LLORCH_EINVAL (bad parameters), LLORCH_EUTF8. */
int sched_submit(struct sched *s, const struct sched_request *r, uint64_t *req_id);
/* Thread-safe. The request ends with ERROR `code` (CANCELLED, TIMEOUT,
 * CLIENT_TOO_SLOW) at the next step boundary. LLORCH_ENOTFOUND if not live. */
int sched_cancel(struct sched *s, uint64_t req_id, enum sched_error code);
int sched_cancel_job(struct sched *s, const char *job_id, size_t len, enum sched_error code);

/* Loop thread: moves every pending event, in order, onto the tail of out;
 * give them back with sched_events_release() once written. */
void sched_events_take(struct sched *s, struct llorch_queue *out);
void sched_events_release(struct sched *s, struct llorch_queue *events);

/* Stop admitting (new submits get LLORCH_ESHUTDOWN); running and queued work
 * continues. sched_shutdown_now() ends everything with SHUTTING_DOWN. */
void sched_drain(struct sched *s);
void sched_shutdown_now(struct sched *s);
bool sched_idle(struct sched *s);

/* Thread-safe snapshot. */
void sched_stats(struct sched *s, struct sched_stats *out);

/* The engine's names, for logs and tools ("context_exceeded", ...); wire
 * names are each API's. */
const char *sched_error_name(enum sched_error e);
const char *sched_stop_reason_name(enum sched_stop_reason r); /* "max_tokens", ... */

#endif
