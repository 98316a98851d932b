/* Continuous batching: the step driver thread owns the waiting and running
 * lists, the KV cache and the forward engine; the loop thread reaches it only
 * through a mutex-guarded inbox (submit, cancel) and a mutex-guarded event
 * list (out). A preparation thread tokenises and checks each submitted
 * request (in arrival order) before the driver sees it, so a 32k-character
 * prompt never delays a step. Each step runs one decode token for every
 * running sequence and chunks of pending prompts, sized by the measured step
 * cost to keep the step within a latency target (stepcost.h) and shared
 * max-min fairly between the prompts; the step's sequences are then sampled
 * and detokenised in parallel on the pool. Under KV pressure the most
 * recently admitted sequence is preempted and recomputed later. */
#include "sched.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kv.h"
#include "sample.h"
#include "stepcost.h"
#include "thread.h"
#include "util.h"

_Static_assert(SCHED_MAX_LOGPROBS == SAMPLE_MAX_LOGPROBS, "log-prob table sizes differ");

#define SCHED_DEFAULT_MAX_BATCH 32
#define SCHED_DEFAULT_MAX_QUEUE 256
#define SCHED_DEFAULT_STEP_TOKENS 512
#define SCHED_MIN_PROMPT_BYTES (128u * 1024u)
/* TOKEN events in flight to the loop per batch slot before the driver waits. */
#define SCHED_EVENTS_PER_SLOT 8

struct sched_req {
    struct llorch_queue node;     /* free list, inbox (mu) or waiting/running (driver) */
    uint32_t index;

    /* Written by sched_submit under mu, then read by the driver only. */
    uint64_t id;
    void *owner;
    char job_id[SCHED_JOB_ID_MAX];
    size_t job_id_len;
    struct sched_params params;
    size_t stop_lens[DETOK_MAX_STOPS];
    char stops[DETOK_MAX_STOPS][DETOK_MAX_STOP_LEN];
    bool add_bos, parse_special, has_text, too_big;
    char *prompt;                 /* [prompt_cap] */
    size_t prompt_len;
    llorch_token *tokens;         /* [n_ctx]: prompt, then generated */
    uint64_t t_submit;

    /* Under mu. */
    bool live;                    /* accepted, terminal event not yet posted */
    bool done;                    /* terminal event posted */
    int refs;                     /* embedded events posted and not released */
    int cancel;                   /* -1, or the enum sched_error to end with */

    /* Preparation thread until handed over (under mu), then driver only. */
    bool prepared;                /* tokenised and checked */
    bool prep_failed;             /* ev_end holds the ERROR to post */

    /* Driver only. */
    int drv_cancel;
    bool started, finished;
    uint32_t chunk;               /* prompt tokens given in the step being built */
    uint32_t n_tok;               /* tokens in tokens[] */
    uint32_t n_prompt;
    uint32_t n_done;              /* tokens whose K/V are in the cache */
    uint32_t n_gen;               /* sampled tokens (EOG included) */
    uint32_t n_out;               /* TOKEN events sent */
    bool in_flight;               /* micro-batches: in a group not yet completed */
    bool cand;                    /* micro-batches: picked for the group being built */
    uint64_t t_admit, t_first;
    struct kv_seq *seq;
    struct sampler smp;
    struct detok dt;

    struct sched_event ev_started;
    struct sched_event ev_end;
};

/* One sequence to sample after a step: filled on the driver, sampled and
 * detokenised by a pool task, then finished on the driver. */
struct sched_sample {
    struct sched_req *r;
    const float *logits;          /* [n_vocab] */
    struct sched_event *ev;       /* a TOKEN event taken beforehand; NULL when shutting down */
    struct sample_out so;
    int rc;                       /* sample_token's */
    bool eog;
    int text_len;                 /* detok_push's */
    int stop_idx;
};

/* Micro-batches: one group of running sequences in flight (o.submit). Its
 * arrays are allocated at sched_new and reused in ring order. */
struct sched_group {
    struct forward_entry *entries; /* [max_batch] */
    struct sched_req **req;        /* [max_batch] */
    float *logits;                 /* [max_batch, n_vocab] */
    uint32_t n, n_prefill, n_decode, budget;
    uint64_t t0;
};

struct sched {
    struct forward *fw;
    const struct tokenizer *tok;
    struct kv_cache *kv;
    struct sched_opts o;
    uint32_t n_vocab, n_ctx, kv_blocks_total;
    size_t prompt_cap;

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv_work;       /* driver: new work, cancel, shutdown */
    pthread_cond_t cv_events;     /* driver: a TOKEN event came back */
    pthread_cond_t cv_prep;       /* preparation thread: a submit, shutdown */
    pthread_t prep_thread;
    bool prep_started;
    struct llorch_thread driver;  /* recorded when the driver starts */

    /* Under mu. */
    struct llorch_queue inbox;    /* submitted, for the preparation thread */
    struct llorch_queue ready;    /* prepared, for the driver */
    struct llorch_queue free_reqs;
    struct llorch_queue events;
    struct llorch_queue free_events;
    uint32_t n_queued;            /* accepted, not running (preempted included) */
    uint32_t n_live;
    uint64_t next_id;
    bool draining, shutdown, stop;
    struct sched_stats stats;

    /* Driver only. */
    struct llorch_queue waiting;
    struct llorch_queue running;  /* in admission order: the tail is the newest */
    struct llorch_queue post;     /* events built this phase, posted by flush */
    uint32_t n_running;
    int32_t queue_delta;          /* applied to n_queued at the next flush */
    struct forward_entry *entries; /* [max_batch] */
    struct sched_req **entry_req; /* [max_batch] */
    float *logits;                /* [max_batch, n_vocab] */
    struct sample_scratch **scratch; /* [n_scratch]: one per pool worker */
    uint32_t n_scratch;
    struct sched_sample *samples; /* [max_batch] */
    uint32_t *pending;            /* [max_batch] */
    uint32_t *chunks;             /* [max_batch] */
    struct stepcost cost;
    double target_s;              /* itl_target_ms, 0 = automatic */
    uint32_t step_budget, step_prefill, step_decode;
    uint64_t c_generated, c_prompted, c_reused, c_preempt, c_steps;
    struct sched_group *groups;   /* [max_groups] when o.submit, a ring */
    uint32_t g_head, g_count;     /* the oldest group in flight, how many */
    /* end of the last forward step (0: idle since), and the time its
     * sampling and event posting took: reported with the next step */
    uint64_t t_fwd_end;
    double last_sample_s, last_emit_s;

    /* Memory. */
    struct sched_req *reqs;       /* [n_reqs] */
    uint32_t n_reqs;
    char *prompt_arena;
    llorch_token *token_arena;
    struct sched_event *ev_pool;  /* [n_events] */
    uint32_t n_events;
};

/* ---- small helpers ---- */

static uint64_t sched_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t sched_ms_between(uint64_t a, uint64_t b)
{
    if (b <= a)
        return 0;
    uint64_t ms = (b - a) / 1000000ull;
    return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
}

static void sched_deadline(struct timespec *ts, uint64_t ns_from_now)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    uint64_t ns = (uint64_t)ts->tv_nsec + ns_from_now;
    ts->tv_sec += (time_t)(ns / 1000000000ull);
    ts->tv_nsec = (long)(ns % 1000000000ull);
}

static struct sched_req *sched_req_of(struct llorch_queue *q)
{
    return llorch_container_of(q, struct sched_req, node);
}

LLORCH_API const char *sched_error_name(enum sched_error e)
{
    switch (e) {
    case SCHED_ERR_CANCELLED: return "cancelled";
    case SCHED_ERR_TIMEOUT: return "timeout";
    case SCHED_ERR_INVALID_REQUEST: return "invalid_request";
    case SCHED_ERR_INFERENCE_FAILED: return "inference_failed";
    case SCHED_ERR_KV_EXHAUSTED: return "kv_exhausted";
    case SCHED_ERR_CLIENT_TOO_SLOW: return "client_too_slow";
    case SCHED_ERR_SHUTTING_DOWN: return "shutting_down";
    case SCHED_ERR_CONTEXT_EXCEEDED: return "context_exceeded";
    case SCHED_ERR_PROMPT_TOO_LARGE: return "prompt_too_large";
    }
    return "inference_failed";
}

LLORCH_API const char *sched_stop_reason_name(enum sched_stop_reason r)
{
    switch (r) {
    case SCHED_STOP_MAX_TOKENS: return "max_tokens";
    case SCHED_STOP_EOS: return "eos";
    case SCHED_STOP_SEQUENCE: return "stop_sequence";
    case SCHED_STOP_CANCELLED: return "cancelled";
    case SCHED_STOP_ERROR: return "error";
    }
    return "error";
}

static const char *sched_cancel_message(enum sched_error e)
{
    switch (e) {
    case SCHED_ERR_CANCELLED: return "the request was cancelled";
    case SCHED_ERR_TIMEOUT: return "the request ran past its timeout";
    case SCHED_ERR_CLIENT_TOO_SLOW: return "the client did not read the stream fast enough";
    case SCHED_ERR_SHUTTING_DOWN: return "the worker is shutting down";
    default: return "the request was ended";
    }
}

/* ---- posting events (driver) ---- */

static bool sched_event_is_pooled(const struct sched *s, const struct sched_event *ev)
{
    return ev >= s->ev_pool && ev < s->ev_pool + s->n_events;
}

static struct sched_req *sched_event_owner_req(struct sched *s, struct sched_event *ev)
{
    size_t off = (size_t)((char *)ev - (char *)s->reqs);
    return &s->reqs[off / sizeof(struct sched_req)];
}

static void sched_stats_fill_locked(struct sched *s)
{
    struct sched_stats *st = &s->stats;
    st->slots_total = s->o.max_batch;
    st->slots_busy = s->n_running;
    st->queue_depth = s->n_queued;
    kv_cache_stats(s->kv, &st->kv);
    st->tokens_generated = s->c_generated;
    st->tokens_prompted = s->c_prompted;
    st->prefix_tokens_reused = s->c_reused;
    st->preemptions = s->c_preempt;
    st->steps = s->c_steps;
    struct stepcost_fit f;
    stepcost_get(&s->cost, &f);
    st->cost.itl_target_s = stepcost_target(&s->cost, s->step_decode, s->target_s);
    st->cost.step_s = f.fixed;
    st->cost.prefill_step_s = f.prefill_step;
    st->cost.prefill_token_s = f.prefill_token;
    st->cost.decode_seq_s = f.decode_seq;
    st->cost.budget = s->step_budget;
}

/* Publishes the events built since the last flush, the counters and the
 * stats snapshot; notifies the loop when its list was empty. */
static void sched_flush(struct sched *s)
{
    LLORCH_ASSERT_ON_DRIVER(&s->driver);
    bool notify = false;
    pthread_mutex_lock(&s->mu);
    struct llorch_queue *q;
    llorch_queue_foreach(q, &s->post) {
        struct sched_event *ev = llorch_container_of(q, struct sched_event, node);
        if (sched_event_is_pooled(s, ev))
            continue;
        struct sched_req *r = sched_event_owner_req(s, ev);
        r->refs++;
        if (ev == &r->ev_end) {
            r->done = true;
            r->live = false;
            s->n_live--;
        }
    }
    s->n_queued = (uint32_t)((int32_t)s->n_queued + s->queue_delta);
    s->queue_delta = 0;
    if (!llorch_queue_empty(&s->post)) {
        notify = llorch_queue_empty(&s->events);
        llorch_queue_move(&s->post, &s->events);
    }
    sched_stats_fill_locked(s);
    pthread_mutex_unlock(&s->mu);
    if (notify && s->o.notify)
        s->o.notify(s->o.notify_ctx);
}

/* A TOKEN event from the pool; when the loop holds all of them, posts what
 * is pending and waits. NULL only when shutting down. */
static struct sched_event *sched_event_get(struct sched *s)
{
    struct sched_event *ev = NULL;
    pthread_mutex_lock(&s->mu);
    if (llorch_queue_empty(&s->free_events)) {
        pthread_mutex_unlock(&s->mu);
        sched_flush(s);
        pthread_mutex_lock(&s->mu);
        while (llorch_queue_empty(&s->free_events) && !s->stop && !s->shutdown)
            pthread_cond_wait(&s->cv_events, &s->mu);
    }
    if (!llorch_queue_empty(&s->free_events)) {
        struct llorch_queue *q = llorch_queue_head(&s->free_events);
        llorch_queue_remove(q);
        ev = llorch_container_of(q, struct sched_event, node);
    }
    pthread_mutex_unlock(&s->mu);
    return ev;
}

/* Gives back a TOKEN event taken with sched_event_get and not posted. */
static void sched_event_put(struct sched *s, struct sched_event *ev)
{
    pthread_mutex_lock(&s->mu);
    llorch_queue_insert_tail(&s->free_events, &ev->node);
    pthread_mutex_unlock(&s->mu);
}

/* ---- ending a request (driver) ---- */

static void sched_req_unlink(struct sched *s, struct sched_req *r)
{
    assert(!r->in_flight);
    if (r->seq) {
        kv_seq_free(s->kv, r->seq);
        r->seq = NULL;
        s->n_running--;
    } else {
        s->queue_delta--;
    }
    llorch_queue_remove(&r->node);
    r->finished = true;
}

static void sched_req_fail(struct sched *s, struct sched_req *r, enum sched_error code,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void sched_req_fail(struct sched *s, struct sched_req *r, enum sched_error code,
                           const char *fmt, ...)
{
    LLORCH_ASSERT_ON_DRIVER(&s->driver);
    sched_req_unlink(s, r);
    struct sched_event *ev = &r->ev_end;
    ev->type = SCHED_EV_ERROR;
    ev->req_id = r->id;
    ev->owner = r->owner;
    ev->u.error.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ev->u.error.message, sizeof(ev->u.error.message), fmt, ap);
    va_end(ap);
    llorch_queue_insert_tail(&s->post, &ev->node);
}

static void sched_req_end(struct sched *s, struct sched_req *r, enum sched_stop_reason reason,
                          int32_t stop_index)
{
    LLORCH_ASSERT_ON_DRIVER(&s->driver);
    uint64_t now = sched_now_ns();
    sched_req_unlink(s, r);
    struct sched_event *ev = &r->ev_end;
    ev->type = SCHED_EV_END;
    ev->req_id = r->id;
    ev->owner = r->owner;
    ev->u.end.reason = reason;
    ev->u.end.stop_index = stop_index;
    ev->u.end.tokens_out = r->n_out;
    ev->u.end.n_prompt_tokens = r->n_prompt;
    ev->u.end.ttft_ms = r->n_gen ? sched_ms_between(r->t_submit, r->t_first) : 0;
    ev->u.end.decode_time_ms = sched_ms_between(r->t_admit, now);
    ev->u.end.text_len = 0;
    if (reason != SCHED_STOP_SEQUENCE) {
        int n = detok_flush(&r->dt, ev->u.end.text, sizeof(ev->u.end.text));
        ev->u.end.text_len = n > 0 ? (uint32_t)n : 0;
    }
    llorch_queue_insert_tail(&s->post, &ev->node);
}

/* Frees a running sequence's blocks and puts it back at the front of the
 * queue; its tokens (prompt and generated) are recomputed on re-admission,
 * so its output continues where it was. */
static void sched_req_preempt(struct sched *s, struct sched_req *r)
{
    assert(!r->in_flight);
    kv_seq_free(s->kv, r->seq);
    r->seq = NULL;
    r->n_done = 0;
    llorch_queue_remove(&r->node);
    llorch_queue_insert_head(&s->waiting, &r->node);
    s->n_running--;
    s->queue_delta++;
    s->c_preempt++;
}

/* ---- admission (driver) ---- */

static uint32_t sched_blocks_for(uint64_t tokens)
{
    uint64_t b = (tokens + LLORCH_KV_BLOCK - 1) / LLORCH_KV_BLOCK;
    return b > UINT32_MAX ? UINT32_MAX : (uint32_t)b;
}

static bool sched_prep_fail(struct sched_req *r, enum sched_error code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Preparation thread: records the ERROR a request will end with (the driver
 * posts it). Returns false. */
static bool sched_prep_fail(struct sched_req *r, enum sched_error code, const char *fmt, ...)
{
    struct sched_event *ev = &r->ev_end;
    ev->type = SCHED_EV_ERROR;
    ev->req_id = r->id;
    ev->owner = r->owner;
    ev->u.error.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ev->u.error.message, sizeof(ev->u.error.message), fmt, ap);
    va_end(ap);
    r->prep_failed = true;
    return false;
}

/* Preparation thread: tokenises and checks a request once, and sets up its
 * sampler and detokeniser. Touches nothing but the request (and reads the
 * immutable tokenizer and sizes). Returns false when it must end with the
 * ERROR recorded in ev_end. */
static bool sched_req_prepare(const struct sched *s, struct sched_req *r)
{
    const struct sched_params *p = &r->params;
    if (r->too_big && r->has_text)
        return sched_prep_fail(r, SCHED_ERR_PROMPT_TOO_LARGE,
                               "the prompt exceeds the per-request limit of %zu bytes",
                               s->prompt_cap);
    if (r->too_big)
        return sched_prep_fail(r, SCHED_ERR_CONTEXT_EXCEEDED,
                               "the prompt has more tokens than the context length of %u", s->n_ctx);
    if (r->has_text) {
        size_t n = 0, bad = 0;
        int rc = tokenizer_encode(s->tok, r->prompt, r->prompt_len, r->add_bos, r->parse_special,
                                  r->tokens, s->n_ctx, &n, &bad);
        if (rc == LLORCH_ETOOBIG) {
            return sched_prep_fail(r, SCHED_ERR_CONTEXT_EXCEEDED,
                                   "the prompt is %zu tokens; the context length is %u", n,
                                   s->n_ctx);
        }
        if (rc == LLORCH_EUTF8) {
            return sched_prep_fail(r, SCHED_ERR_INVALID_REQUEST,
                                   "the prompt is not valid UTF-8 (byte %zu)", bad);
        }
        if (rc < 0) {
            return sched_prep_fail(r, SCHED_ERR_INVALID_REQUEST,
                                   "the prompt cannot be tokenized: %s", llorch_strerror(rc));
        }
        r->n_tok = (uint32_t)n;
    }
    r->n_prompt = r->n_tok;
    if (r->n_prompt == 0) {
        return sched_prep_fail(r, SCHED_ERR_INVALID_REQUEST, "the prompt is empty");
    }
    uint64_t need = (uint64_t)r->n_prompt + p->max_tokens;
    if (need > s->n_ctx) {
        return sched_prep_fail(
            r, SCHED_ERR_CONTEXT_EXCEEDED,
            "prompt (%u tokens) + max_tokens (%u) exceeds the context length of %u "
            "tokens",
            r->n_prompt, p->max_tokens, s->n_ctx);
    }
    if (sched_blocks_for(need) > s->kv_blocks_total) {
        return sched_prep_fail(
            r, SCHED_ERR_CONTEXT_EXCEEDED,
            "prompt (%u tokens) + max_tokens (%u) needs %u KV blocks of %d tokens; the "
            "KV cache holds %u blocks (%u tokens)",
            r->n_prompt, p->max_tokens, sched_blocks_for(need), LLORCH_KV_BLOCK, s->kv_blocks_total,
            s->kv_blocks_total * LLORCH_KV_BLOCK);
    }
    struct sample_params sp;
    sample_params_default(&sp);
    sp.temperature = p->temperature;
    sp.top_k = p->top_k;
    sp.top_p = p->top_p;
    sp.min_p = p->min_p;
    sp.repetition_penalty = p->repetition_penalty;
    sp.presence_penalty = p->presence_penalty;
    sp.frequency_penalty = p->frequency_penalty;
    sp.seed = p->seed;
    sp.n_logprobs = p->n_logprobs;
    sample_init(&r->smp, &sp);
    const char *stops[DETOK_MAX_STOPS];
    for (uint32_t i = 0; i < p->n_stops; i++)
        stops[i] = r->stops[i];
    /* A continuation of the prompt: the first piece keeps its leading space
     * (as llama-server streams pieces). */
    int rc = detok_init(&r->dt, s->tok, stops, r->stop_lens, p->n_stops, false);
    if (rc < 0) {
        return sched_prep_fail(r, SCHED_ERR_INVALID_REQUEST, "invalid stop strings: %s",
                               llorch_strerror(rc));
    }
    r->prepared = true;
    return true;
}

/* Admits the head of the queue if a sequence and enough KV blocks are free.
 * Returns false when admission must wait. */
static bool sched_admit_one(struct sched *s, struct sched_req *r)
{
    struct kv_seq *seq = NULL;
    if (kv_seq_new(s->kv, &seq) < 0)
        return false;
    uint32_t shared = kv_seq_share_prefix(s->kv, seq, r->tokens, r->n_tok);
    /* Keep one spare block per running sequence so that admitting does not
     * immediately force a preemption; with nothing running, anything that
     * passed the size check fits. */
    uint32_t need = kv_seq_blocks_needed(s->kv, seq, r->n_tok - shared);
    if (s->n_running > 0 && (uint64_t)need + s->n_running > kv_cache_free_blocks(s->kv)) {
        kv_seq_free(s->kv, seq);
        return false;
    }
    r->seq = seq;
    r->n_done = shared;
    s->c_reused += shared;
    llorch_queue_remove(&r->node);
    llorch_queue_insert_tail(&s->running, &r->node);
    s->n_running++;
    s->queue_delta--;
    if (!r->started) {
        r->started = true;
        r->t_admit = sched_now_ns();
        s->c_prompted += r->n_prompt;
        struct sched_event *ev = &r->ev_started;
        ev->type = SCHED_EV_STARTED;
        ev->req_id = r->id;
        ev->owner = r->owner;
        ev->u.started.n_prompt_tokens = r->n_prompt;
        ev->u.started.queued_ms = sched_ms_between(r->t_submit, r->t_admit);
        llorch_queue_insert_tail(&s->post, &ev->node);
    }
    return true;
}

/* The batching window (ChatLoop's batching_window_ms): new arrivals wait up
 * to batch_window_ms from the oldest of them for more to join, so that they
 * are admitted together, unless they already fill the batch. It applies
 * whenever requests wait, not only from idle; running sequences keep
 * stepping meanwhile, and preempted sequences are never held. Returns the
 * time (sched_now_ns) the window closes, or 0 when admission may run now. */
static uint64_t sched_window_hold(struct sched *s, uint64_t now)
{
    if (s->o.batch_window_ms == 0 || llorch_queue_empty(&s->waiting))
        return 0;
    struct sched_req *head = sched_req_of(llorch_queue_head(&s->waiting));
    if (head->started)
        return 0;
    uint32_t n = s->n_running;
    struct llorch_queue *q;
    llorch_queue_foreach(q, &s->waiting) {
        if (++n >= s->o.max_batch)
            return 0;
    }
    uint64_t until = head->t_submit + (uint64_t)s->o.batch_window_ms * 1000000ull;
    return now < until ? until : 0;
}

/* Admits in arrival order (preempted sequences first): a request that must
 * wait for room holds back the ones behind it. */
static void sched_admit(struct sched *s)
{
    while (s->n_running < s->o.max_batch && !llorch_queue_empty(&s->waiting)) {
        struct sched_req *r = sched_req_of(llorch_queue_head(&s->waiting));
        if (r->prep_failed || !r->prepared) {
            /* !prepared only when shutting down, which never admits */
            sched_req_unlink(s, r);
            llorch_queue_insert_tail(&s->post, &r->ev_end.node);
            continue;
        }
        if (!sched_admit_one(s, r))
            break;
    }
}

/* ---- cancellation, timeouts, shutdown (driver) ---- */

static void sched_reap_list(struct sched *s, struct llorch_queue *list, uint64_t now, bool all)
{
    struct llorch_queue *q, *tmp;
    llorch_queue_foreach_safe(q, tmp, list) {
        struct sched_req *r = sched_req_of(q);
        if (r->in_flight)
            continue; /* micro-batches: ends once its group has completed */
        if (all) {
            sched_req_fail(s, r, SCHED_ERR_SHUTTING_DOWN, "%s",
                           sched_cancel_message(SCHED_ERR_SHUTTING_DOWN));
        } else if (r->drv_cancel >= 0) {
            enum sched_error code = (enum sched_error)r->drv_cancel;
            sched_req_fail(s, r, code, "%s", sched_cancel_message(code));
        } else if (r->params.timeout_ms &&
                   now - r->t_submit >= (uint64_t)r->params.timeout_ms * 1000000ull) {
            sched_req_fail(s, r, SCHED_ERR_TIMEOUT, "the request ran past its timeout of %u ms",
                           r->params.timeout_ms);
        }
    }
}

/* ---- one step (driver) ---- */

/* Largest n <= want whose blocks fit in the free pool. */
static uint32_t sched_max_fit(struct sched *s, struct kv_seq *seq, uint32_t want)
{
    uint32_t free_blocks = kv_cache_free_blocks(s->kv);
    uint32_t lo = 0, hi = want;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2;
        if (kv_seq_blocks_needed(s->kv, seq, mid) <= free_blocks)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* The newest running sequence not in flight. */
static struct sched_req *sched_newest_idle(struct sched *s)
{
    struct llorch_queue *q;
    for (q = s->running.prev; q != &s->running; q = q->prev)
        if (!sched_req_of(q)->in_flight)
            return sched_req_of(q);
    return NULL;
}

/* Reserves KV for want tokens of r, preempting the newest sequences not in
 * flight until they fit (a prompt chunk first shrinks to what fits). The
 * newest cannot grow: a decoder steps aside (preempted; *resume is then the
 * node that followed it), a prompt chunk waits for blocks. Returns the
 * tokens reserved (0 with *rc the error when reserving failed otherwise). */
static uint32_t sched_reserve(struct sched *s, struct sched_req *r, bool decode, uint32_t want,
                              int *rc, struct llorch_queue **resume)
{
    *rc = 0;
    *resume = NULL;
    while (want > 0 && (*rc = kv_seq_reserve(s->kv, r->seq, want)) < 0) {
        if (*rc != LLORCH_EKV_EXHAUSTED)
            return 0;
        if (!decode) {
            uint32_t fit = sched_max_fit(s, r->seq, want);
            if (fit > 0) {
                want = fit;
                continue;
            }
        }
        /* r is not in flight, so the newest idle one is r or after it */
        struct sched_req *victim = sched_newest_idle(s);
        if (victim == r) {
            if (decode) {
                *resume = r->node.next;
                sched_req_preempt(s, r);
            }
            return 0;
        }
        victim->cand = false;
        sched_req_preempt(s, victim);
    }
    return want;
}

/* After sched_reserve: fails r if reserving failed for another reason than
 * a full cache, else writes its entry of want tokens (none for 0). Returns
 * whether an entry was written. */
static bool sched_entry(struct sched *s, struct sched_req *r, uint32_t want, int rc,
                        struct forward_entry *e, float *logits)
{
    if (want == 0) {
        if (rc < 0 && rc != LLORCH_EKV_EXHAUSTED)
            sched_req_fail(s, r, SCHED_ERR_INFERENCE_FAILED, "KV reservation failed: %s",
                           llorch_strerror(rc));
        return false;
    }
    *e = (struct forward_entry){
        .seq = r->seq,
        .tokens = r->tokens + r->n_done,
        .n_tokens = want,
        .all_logits = false,
        .logits = logits,
    };
    return true;
}

/* Sizes this step's prompt chunks: the decodes come first (step_tokens
 * bounds the whole step, the engine was sized for it), the cost model gives
 * the prompt tokens that keep the step within the latency target, and the
 * prompts share them max-min fairly (stepcost_split), so a short prompt
 * admitted behind a long one is not starved. Picks (r->cand) at most cap
 * running sequences not in flight, oldest first (all of them for a whole
 * step), sets each picked prompt's r->chunk and returns the decodes allowed. */
static uint32_t sched_plan(struct sched *s, uint32_t cap)
{
    uint32_t n_decode = 0, n_prompts = 0, picked = 0;
    struct llorch_queue *q;
    llorch_queue_foreach(q, &s->running) {
        struct sched_req *r = sched_req_of(q);
        r->cand = !r->in_flight && picked < cap;
        if (!r->cand)
            continue;
        picked++;
        uint32_t pending = r->n_tok - r->n_done;
        if (pending == 1)
            n_decode++;
        else
            s->pending[n_prompts++] = pending;
    }
    uint32_t decode_left = LLORCH_MIN(n_decode, s->o.step_tokens);
    uint32_t budget_cap = s->o.step_tokens - decode_left;
    s->step_budget =
        n_prompts ? stepcost_budget(&s->cost, decode_left, s->target_s, budget_cap) : 0;
    stepcost_split(s->pending, n_prompts, s->step_budget, s->chunks);
    uint32_t i = 0;
    llorch_queue_foreach(q, &s->running) {
        struct sched_req *r = sched_req_of(q);
        if (r->cand)
            r->chunk = r->n_tok - r->n_done == 1 ? 0 : s->chunks[i++];
    }
    return decode_left;
}

/* Chooses the picked sequences' tokens, oldest first, into entries / req /
 * logits, and reserves their KV room, preempting the newest sequences not in
 * flight when the pool runs dry. Counts the step's prompt and decoded tokens;
 * returns the number of entries. */
static uint32_t sched_build(struct sched *s, uint32_t cap, struct forward_entry *entries,
                            struct sched_req **req, float *logits, uint32_t *n_prefill,
                            uint32_t *n_decode)
{
    uint32_t decode_left = sched_plan(s, cap);
    uint32_t n = 0;
    *n_prefill = *n_decode = 0;
    struct llorch_queue *q = s->running.next;
    while (q != &s->running) {
        struct sched_req *r = sched_req_of(q);
        if (!r->cand) {
            q = r->node.next;
            continue;
        }
        r->cand = false;
        uint32_t pending = r->n_tok - r->n_done;
        bool decode = pending == 1;
        uint32_t want = decode ? (decode_left > 0) : r->chunk;
        if (decode && want)
            decode_left--;
        int rc = 0;
        struct llorch_queue *resume = NULL;
        want = sched_reserve(s, r, decode, want, &rc, &resume);
        if (resume) { /* r preempted itself: go on after it */
            q = resume;
            continue;
        }
        q = r->node.next; /* r may fail and leave the list */
        if (sched_entry(s, r, want, rc, &entries[n], logits + (size_t)n * s->n_vocab)) {
            req[n++] = r;
            if (decode)
                (*n_decode)++;
            else
                *n_prefill += want;
        }
    }
    return n;
}

/* Pool task: samples and detokenises the step's sequences [begin, end),
 * each with the scratch of the worker it runs on. */
static void sched_sample_task(void *ctx, int64_t begin, int64_t end, int worker)
{
    struct sched *s = ctx;
    struct sample_scratch *sc = s->scratch[(uint32_t)worker < s->n_scratch ? worker : 0];
    for (int64_t i = begin; i < end; i++) {
        struct sched_sample *sm = &s->samples[i];
        struct sched_req *r = sm->r;
        sm->rc = sample_token(&r->smp, sc, sm->logits, r->tokens, r->n_tok, &sm->so);
        sm->eog = false;
        sm->text_len = 0;
        sm->stop_idx = -1;
        if (sm->rc < 0)
            continue;
        sm->eog = !r->params.ignore_eos && tokenizer_is_eog(s->tok, sm->so.id);
        if (!sm->eog && sm->ev)
            sm->text_len = detok_push(&r->dt, sm->so.id, sm->ev->u.token.text,
                                      sizeof(sm->ev->u.token.text), &sm->stop_idx);
    }
}

/* Driver: posts a sampled token (or ends the request) in step order. */
static void sched_emit_token(struct sched *s, struct sched_sample *sm)
{
    struct sched_req *r = sm->r;
    struct sched_event *ev = sm->ev;
    if (sm->rc < 0) {
        if (ev)
            sched_event_put(s, ev);
        sched_req_fail(s, r, SCHED_ERR_INFERENCE_FAILED, "sampling failed");
        return;
    }
    if (r->n_gen == 0)
        r->t_first = sched_now_ns();
    r->tokens[r->n_tok++] = sm->so.id;
    r->n_gen++;
    s->c_generated++;
    if (sm->eog) {
        if (ev)
            sched_event_put(s, ev);
        sched_req_end(s, r, SCHED_STOP_EOS, -1);
        return;
    }
    if (!ev)
        return; /* shutting down: the request ends with SHUTTING_DOWN next */
    ev->type = SCHED_EV_TOKEN;
    ev->req_id = r->id;
    ev->owner = r->owner;
    ev->u.token.index = r->n_out++;
    ev->u.token.id = sm->so.id;
    ev->u.token.logprob = sm->so.logprob;
    ev->u.token.n_top = sm->so.n_top;
    for (uint32_t i = 0; i < sm->so.n_top; i++) {
        ev->u.token.top[i].id = sm->so.top[i].id;
        ev->u.token.top[i].logprob = sm->so.top[i].logprob;
    }
    ev->u.token.text_len = sm->text_len > 0 ? (uint32_t)sm->text_len : 0;
    llorch_queue_insert_tail(&s->post, &ev->node);
    if (sm->stop_idx >= 0)
        sched_req_end(s, r, SCHED_STOP_SEQUENCE, sm->stop_idx);
    else if (r->n_gen >= r->params.max_tokens)
        sched_req_end(s, r, SCHED_STOP_MAX_TOKENS, -1);
}

/* A finished step (or group) of n sequences: counted, fed to the cost
 * model when it succeeded, and reported to on_step; gap_s is the driver's
 * time since the previous step (0: none to report). */
static void sched_report(struct sched *s, int rc, double seconds, uint32_t n, uint32_t n_prefill,
                         uint32_t n_decode, uint32_t budget, double gap_s)
{
    s->c_steps++;
    if (rc == 0)
        stepcost_observe(&s->cost, n_prefill, n_decode,
                         s->o.step_cost ? s->o.step_cost(s->o.step_cost_ctx, n_prefill, n_decode)
                                        : seconds);
    if (s->o.on_step) {
        struct sched_step_info info = {
            .seconds = seconds,
            .n_seqs = n,
            .n_tokens = n_prefill + n_decode,
            .n_prefill = n_prefill,
            .n_decode = n_decode,
            .budget = budget,
            .gap_s = gap_s,
            .sample_s = gap_s > 0.0 ? s->last_sample_s : 0.0,
            .emit_s = gap_s > 0.0 ? s->last_emit_s : 0.0,
        };
        s->o.on_step(s->o.on_step_ctx, &info);
    }
}

/* The results of a step's n entries (rc its status): on failure every
 * sequence fails; else each advances, and those that finished their prompt
 * or decoded get their next token from a pool task each (softmax over the
 * vocabulary, penalties, detokenising): the driver only decides and
 * launches. */
static void sched_take(struct sched *s, const struct forward_entry *e, struct sched_req *const *req,
                       uint32_t n, int rc)
{
    if (rc < 0) {
        for (uint32_t i = 0; i < n; i++)
            sched_req_fail(s, req[i], SCHED_ERR_INFERENCE_FAILED, "the forward step failed: %s",
                           llorch_strerror(rc));
        return;
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct sched_req *r = req[i];
        r->n_done += e[i].n_tokens;
        if (r->n_done == r->n_tok)
            s->samples[k++] = (struct sched_sample){.r = r, .logits = e[i].logits};
    }
    for (uint32_t i = 0; i < k; i++)
        s->samples[i].ev = sched_event_get(s);
    uint64_t t_s0 = sched_now_ns();
    tpool_parallel_for(s->o.pool, k, 1, sched_sample_task, s);
    uint64_t t_s1 = sched_now_ns();
    for (uint32_t i = 0; i < k; i++)
        sched_emit_token(s, &s->samples[i]);
    s->last_sample_s = (double)(t_s1 - t_s0) * 1e-9;
    s->last_emit_s = (double)(sched_now_ns() - t_s1) * 1e-9;
}

static void sched_step(struct sched *s)
{
    uint32_t n = sched_build(s, UINT32_MAX, s->entries, s->entry_req, s->logits, &s->step_prefill,
                             &s->step_decode);
    if (n == 0) {
        /* Only reachable when the oldest sequence cannot get a single block
         * with everything else preempted: end it rather than spin. */
        if (s->n_running > 0) {
            struct sched_req *r = sched_req_of(llorch_queue_head(&s->running));
            sched_req_fail(s, r, SCHED_ERR_KV_EXHAUSTED, "the KV cache has no room for this "
                                                         "sequence");
        }
        return;
    }
    uint64_t t0 = sched_now_ns();
    double gap_s = s->t_fwd_end ? (double)(t0 - s->t_fwd_end) * 1e-9 : 0.0;
    int rc = s->o.step ? s->o.step(s->o.step_ctx, s->entries, n) : forward_step(s->fw, s->entries, n);
    s->t_fwd_end = sched_now_ns();
    sched_report(s, rc, (double)(s->t_fwd_end - t0) * 1e-9, n, s->step_prefill, s->step_decode,
                 s->step_budget, gap_s);
    sched_take(s, s->entries, s->entry_req, n, rc);
    if (rc == 0 && s->n_running == 0)
        s->t_fwd_end = 0; /* the driver may sleep now: no gap to the next step */
}

/* ---- micro-batches (driver; o.submit set) ----
 *
 * Up to max_groups groups of running sequences are in flight at once (a
 * pipeline of that many stages keeps every stage busy). A sequence is in at
 * most one group (its next token depends on the last), so the groups
 * partition the running set, each at most ceil(running / max_groups)
 * sequences so that they stay of similar size. A group is built by
 * sched_build as a step is, from the sequences not in flight only; a
 * sequence in flight is never chosen as a preemption victim, and its cancel or timeout
 * waits for its group (sched_reap_list skips it). Groups complete in the
 * order they were submitted. */

/* Takes the oldest group's results: samples, detokenises and emits as
 * sched_step does; with discard (shutting down) its sequences are only
 * released (they end with SHUTTING_DOWN next). */
static void sched_group_complete(struct sched *s, bool discard)
{
    uint32_t gi = UINT32_MAX;
    int rc = s->o.complete(s->o.step_ctx, &gi);
    struct sched_group *g = &s->groups[s->g_head];
    assert(gi == s->g_head);
    (void)gi;
    s->g_head = (s->g_head + 1) % s->o.max_groups;
    s->g_count--;
    double seconds = (double)(sched_now_ns() - g->t0) * 1e-9;
    for (uint32_t i = 0; i < g->n; i++)
        g->req[i]->in_flight = false;
    /* a group's submit-to-complete time is its streams' token interval */
    sched_report(s, rc, seconds, g->n, g->n_prefill, g->n_decode, g->budget, 0.0);
    if (!discard)
        sched_take(s, g->entries, g->req, g->n, rc);
}

/* Shutting down: waits out every group in flight, so that their sequences
 * may be freed. */
static void sched_groups_drain(struct sched *s)
{
    while (s->g_count > 0)
        sched_group_complete(s, true);
}

/* One turn of the micro-batch driver: fills the free group slots from the
 * running sequences not in flight, then completes the oldest group. */
static void sched_groups_step(struct sched *s)
{
    while (s->g_count < s->o.max_groups) {
        uint32_t idle = 0;
        struct llorch_queue *q;
        llorch_queue_foreach(q, &s->running) idle += !sched_req_of(q)->in_flight;
        if (idle == 0)
            break;
        uint32_t cap = (s->n_running + s->o.max_groups - 1) / s->o.max_groups;
        uint32_t gi = (s->g_head + s->g_count) % s->o.max_groups;
        struct sched_group *g = &s->groups[gi];
        uint32_t n = sched_build(s, LLORCH_MAX(cap, 1u), g->entries, g->req, g->logits,
                                 &g->n_prefill, &g->n_decode);
        g->n = n;
        g->budget = s->step_budget;
        if (n == 0) {
            /* as sched_step: the oldest cannot get a block with everything
             * else preempted; with groups in flight, wait for them */
            if (s->g_count == 0 && s->n_running > 0) {
                struct sched_req *r = sched_req_of(llorch_queue_head(&s->running));
                sched_req_fail(s, r, SCHED_ERR_KV_EXHAUSTED, "the KV cache has no room for this "
                                                             "sequence");
            }
            break;
        }
        g->t0 = sched_now_ns();
        int rc = s->o.submit(s->o.step_ctx, gi, g->entries, n);
        if (rc < 0) {
            sched_take(s, g->entries, g->req, n, rc); /* each fails */
            continue;
        }
        for (uint32_t i = 0; i < n; i++)
            g->req[i]->in_flight = true;
        s->g_count++;
    }
    if (s->g_count > 0)
        sched_group_complete(s, false);
}

/* ---- the driver thread ---- */

/* The preparation thread: tokenises submitted requests one at a time, in
 * arrival order, and hands them to the driver. It runs next to the step (a
 * long prompt costs the pool a core for a few milliseconds, never a step
 * boundary). When shutting down it hands them over unprepared: the driver
 * ends them. */
static void *sched_prep_main(void *arg)
{
    struct sched *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && llorch_queue_empty(&s->inbox))
            pthread_cond_wait(&s->cv_prep, &s->mu);
        if (s->stop)
            break;
        struct llorch_queue *q = llorch_queue_head(&s->inbox);
        llorch_queue_remove(q);
        struct sched_req *r = sched_req_of(q);
        if (!s->shutdown && r->cancel < 0) {
            pthread_mutex_unlock(&s->mu);
            sched_req_prepare(s, r);
            pthread_mutex_lock(&s->mu);
        }
        llorch_queue_insert_tail(&s->ready, q);
        pthread_cond_signal(&s->cv_work);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Under mu: moves prepared requests to the waiting list and snapshots
 * cancels; when shutting down, the ones not prepared yet too (they end). */
static void sched_sync_locked(struct sched *s)
{
    llorch_queue_move(&s->ready, &s->waiting);
    if (s->shutdown)
        llorch_queue_move(&s->inbox, &s->waiting);
    struct llorch_queue *q;
    llorch_queue_foreach(q, &s->waiting)
        sched_req_of(q)->drv_cancel = sched_req_of(q)->cancel;
    llorch_queue_foreach(q, &s->running)
        sched_req_of(q)->drv_cancel = sched_req_of(q)->cancel;
}

static void *sched_driver_main(void *arg)
{
    struct sched *s = arg;
    llorch_thread_record(&s->driver);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stop && !s->shutdown && llorch_queue_empty(&s->ready) &&
               s->n_running == 0 && llorch_queue_empty(&s->waiting))
            pthread_cond_wait(&s->cv_work, &s->mu);
        sched_sync_locked(s);
        bool stop = s->stop, shutdown = s->shutdown;
        pthread_mutex_unlock(&s->mu);

        if (s->o.submit && shutdown)
            sched_groups_drain(s);
        uint64_t now = sched_now_ns();
        sched_reap_list(s, &s->waiting, now, shutdown);
        sched_reap_list(s, &s->running, now, shutdown);
        uint64_t hold_until = 0;
        if (!shutdown) {
            hold_until = sched_window_hold(s, now);
            if (!hold_until)
                sched_admit(s);
            sched_flush(s); /* STARTED events go out before the step runs */
            if (s->n_running > 0 && s->o.submit)
                sched_groups_step(s);
            else if (s->n_running > 0)
                sched_step(s);
        }
        sched_flush(s);
        if (stop)
            break;
        if (shutdown) {
            /* Wait for the next submit (refused) or for sched_free. */
            pthread_mutex_lock(&s->mu);
            while (!s->stop && llorch_queue_empty(&s->inbox) && llorch_queue_empty(&s->ready))
                pthread_cond_wait(&s->cv_work, &s->mu);
            pthread_mutex_unlock(&s->mu);
        } else if (hold_until && s->n_running == 0) {
            /* Nothing to step while the window gathers: sleep until it
             * closes or another arrival may fill the batch. */
            uint64_t now2 = sched_now_ns();
            if (hold_until > now2) {
                pthread_mutex_lock(&s->mu);
                struct timespec until;
                sched_deadline(&until, hold_until - now2);
                if (!s->stop && !s->shutdown && llorch_queue_empty(&s->ready))
                    pthread_cond_timedwait(&s->cv_work, &s->mu, &until);
                pthread_mutex_unlock(&s->mu);
            }
        } else if (s->n_running == 0 && !llorch_queue_empty(&s->waiting)) {
            /* Waiting on a resource with nothing running cannot happen with
             * a consistent KV cache; do not spin if it does. */
            pthread_mutex_lock(&s->mu);
            struct timespec until;
            sched_deadline(&until, 10 * 1000000ull);
            pthread_cond_timedwait(&s->cv_work, &s->mu, &until);
            pthread_mutex_unlock(&s->mu);
        }
    }
    return NULL;
}

/* ---- construction ---- */

static void sched_mem_free(struct sched *s)
{
    if (s->scratch)
        for (uint32_t i = 0; i < s->n_scratch; i++)
            sample_scratch_free(s->scratch[i]);
    free(s->scratch);
    free(s->samples);
    free(s->pending);
    free(s->chunks);
    free(s->reqs);
    free(s->ev_pool);
    free(s->token_arena);
    free(s->prompt_arena);
    free(s->entries);
    free(s->entry_req);
    free(s->logits);
    if (s->groups)
        for (uint32_t i = 0; i < s->o.max_groups; i++) {
            free(s->groups[i].entries);
            free(s->groups[i].req);
            free(s->groups[i].logits);
        }
    free(s->groups);
    free(s);
}

LLORCH_API int sched_new(struct sched **out, struct forward *fw, const struct tokenizer *tok,
                         const struct sched_opts *o)
{
    *out = NULL;
    const bool other = o && (o->step || o->submit);
    if (!tok || !o || (!fw && !(other && o->kv && o->n_vocab && o->n_ctx)) ||
        (o->submit && (!o->complete || o->max_groups == 0)))
        return LLORCH_EINVAL;
    struct sched *s = calloc(1, sizeof(*s));
    if (!s)
        return LLORCH_ENOMEM;
    s->fw = fw;
    s->tok = tok;
    s->kv = other ? o->kv : forward_kv(fw);
    s->o = *o;
    if (s->o.max_batch == 0)
        s->o.max_batch = SCHED_DEFAULT_MAX_BATCH;
    if (s->o.max_queue == 0)
        s->o.max_queue = SCHED_DEFAULT_MAX_QUEUE;
    if (s->o.step_tokens == 0)
        s->o.step_tokens = SCHED_DEFAULT_STEP_TOKENS;
    s->n_vocab = other ? o->n_vocab : forward_n_vocab(fw);
    s->n_ctx = other ? o->n_ctx : forward_n_ctx(fw);
    struct kv_stats ks;
    kv_cache_stats(s->kv, &ks);
    s->kv_blocks_total = ks.blocks_total;
    s->prompt_cap = s->o.max_prompt_bytes
                        ? s->o.max_prompt_bytes
                        : LLORCH_MAX(SCHED_MIN_PROMPT_BYTES, (size_t)s->n_ctx * 16u);
    s->n_reqs = s->o.max_queue + s->o.max_batch;
    s->n_events = s->o.max_batch * SCHED_EVENTS_PER_SLOT + 16;

    llorch_queue_init(&s->inbox);
    llorch_queue_init(&s->ready);
    llorch_queue_init(&s->free_reqs);
    llorch_queue_init(&s->events);
    llorch_queue_init(&s->free_events);
    llorch_queue_init(&s->waiting);
    llorch_queue_init(&s->running);
    llorch_queue_init(&s->post);
    s->next_id = 1;

    size_t tok_bytes, prompt_bytes, logit_count;
    if (s->n_vocab == 0 || s->n_ctx == 0 ||
        llorch_size_mul_overflows((size_t)s->n_reqs * s->n_ctx, sizeof(llorch_token),
                                  &tok_bytes) ||
        llorch_size_mul_overflows(s->n_reqs, s->prompt_cap, &prompt_bytes) ||
        llorch_size_mul_overflows(s->o.max_batch, s->n_vocab, &logit_count)) {
        free(s);
        return LLORCH_EINVAL;
    }
    int rc = LLORCH_ENOMEM;
    s->reqs = calloc(s->n_reqs, sizeof(*s->reqs));
    s->ev_pool = calloc(s->n_events, sizeof(*s->ev_pool));
    /* The large arenas are touched only where prompts land. */
    s->token_arena = malloc(tok_bytes);
    s->prompt_arena = malloc(prompt_bytes);
    s->entries = calloc(s->o.max_batch, sizeof(*s->entries));
    s->entry_req = calloc(s->o.max_batch, sizeof(*s->entry_req));
    s->logits = malloc(logit_count * sizeof(float));
    s->samples = calloc(s->o.max_batch, sizeof(*s->samples));
    s->pending = calloc(s->o.max_batch, sizeof(*s->pending));
    s->chunks = calloc(s->o.max_batch, sizeof(*s->chunks));
    s->n_scratch = s->o.pool ? (uint32_t)tpool_size(s->o.pool) : 1;
    s->scratch = calloc(s->n_scratch, sizeof(*s->scratch));
    if (!s->reqs || !s->ev_pool || !s->token_arena || !s->prompt_arena || !s->entries ||
        !s->entry_req || !s->logits || !s->samples || !s->pending || !s->chunks || !s->scratch)
        goto fail;
    for (uint32_t i = 0; i < s->n_scratch; i++)
        if ((rc = sample_scratch_new(&s->scratch[i], s->n_vocab)) < 0)
            goto fail;
    rc = LLORCH_ENOMEM;
    if (s->o.submit) {
        s->groups = calloc(s->o.max_groups, sizeof(*s->groups));
        if (!s->groups)
            goto fail;
        for (uint32_t i = 0; i < s->o.max_groups; i++) {
            struct sched_group *g = &s->groups[i];
            g->entries = calloc(s->o.max_batch, sizeof(*g->entries));
            g->req = calloc(s->o.max_batch, sizeof(*g->req));
            g->logits = malloc(logit_count * sizeof(float));
            if (!g->entries || !g->req || !g->logits)
                goto fail;
        }
    }
    stepcost_init(&s->cost);
    s->target_s = (double)s->o.itl_target_ms * 1e-3;
    if (s->o.itl_target_pct)
        s->cost.ratio = (double)s->o.itl_target_pct / 100.0;
    for (uint32_t i = 0; i < s->n_reqs; i++) {
        struct sched_req *r = &s->reqs[i];
        r->index = i;
        r->tokens = s->token_arena + (size_t)i * s->n_ctx;
        r->prompt = s->prompt_arena + (size_t)i * s->prompt_cap;
        r->cancel = -1;
        llorch_queue_insert_tail(&s->free_reqs, &r->node);
    }
    for (uint32_t i = 0; i < s->n_events; i++)
        llorch_queue_insert_tail(&s->free_events, &s->ev_pool[i].node);
    sched_stats_fill_locked(s);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv_work, &ca);
    pthread_cond_init(&s->cv_events, &ca);
    pthread_cond_init(&s->cv_prep, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&s->prep_thread, NULL, sched_prep_main, s) == 0) {
        s->prep_started = true;
        pthread_setname_np(s->prep_thread, "llorch-prep");
        if (pthread_create(&s->thread, NULL, sched_driver_main, s) == 0) {
            s->thread_started = true;
            pthread_setname_np(s->thread, "llorch-sched");
            *out = s;
            return 0;
        }
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_broadcast(&s->cv_prep);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->prep_thread, NULL);
    }
    rc = LLORCH_ENOMEM;
    pthread_cond_destroy(&s->cv_work);
    pthread_cond_destroy(&s->cv_events);
    pthread_cond_destroy(&s->cv_prep);
    pthread_mutex_destroy(&s->mu);
fail:
    sched_mem_free(s);
    return rc;
}

LLORCH_API void sched_free(struct sched *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    s->shutdown = true;
    s->draining = true;
    pthread_cond_broadcast(&s->cv_work);
    pthread_cond_broadcast(&s->cv_events);
    pthread_cond_broadcast(&s->cv_prep);
    pthread_mutex_unlock(&s->mu);
    if (s->prep_started)
        pthread_join(s->prep_thread, NULL);
    if (s->thread_started)
        pthread_join(s->thread, NULL);
    pthread_cond_destroy(&s->cv_work);
    pthread_cond_destroy(&s->cv_events);
    pthread_cond_destroy(&s->cv_prep);
    pthread_mutex_destroy(&s->mu);
    sched_mem_free(s);
}

/* ---- the loop thread's side ---- */

static int sched_request_check(const struct sched *s, const struct sched_request *r)
{
    const struct sched_params *p = &r->params;
    if (!r->job_id || r->job_id_len == 0 || r->job_id_len >= SCHED_JOB_ID_MAX)
        return LLORCH_EINVAL;
    if ((r->prompt == NULL) == (r->prompt_tokens == NULL))
        return LLORCH_EINVAL;
    if (p->max_tokens < 1 || p->n_stops > DETOK_MAX_STOPS || p->n_logprobs > SCHED_MAX_LOGPROBS)
        return LLORCH_EINVAL;
    for (uint32_t i = 0; i < p->n_stops; i++)
        if (!p->stops[i] || p->stop_lens[i] == 0 || p->stop_lens[i] > DETOK_MAX_STOP_LEN)
            return LLORCH_EINVAL;
    struct sample_params sp;
    sample_params_default(&sp);
    sp.temperature = p->temperature;
    sp.top_p = p->top_p;
    sp.min_p = p->min_p;
    sp.repetition_penalty = p->repetition_penalty;
    sp.presence_penalty = p->presence_penalty;
    sp.frequency_penalty = p->frequency_penalty;
    sp.n_logprobs = p->n_logprobs;
    if (sample_params_check(&sp) < 0)
        return LLORCH_EINVAL;
    if (r->prompt_tokens) {
        for (size_t i = 0; i < r->n_prompt_tokens; i++)
            if (r->prompt_tokens[i] < 0 || (uint32_t)r->prompt_tokens[i] >= s->n_vocab)
                return LLORCH_EINVAL;
    } else if (!tokenizer_utf8_valid(r->prompt, r->prompt_len, NULL)) {
        return LLORCH_EUTF8;
    }
    return 0;
}

static struct sched_req *sched_find_live_job_locked(struct sched *s, const char *job_id, size_t len)
{
    for (uint32_t i = 0; i < s->n_reqs; i++) {
        struct sched_req *r = &s->reqs[i];
        if (r->live && r->job_id_len == len && memcmp(r->job_id, job_id, len) == 0)
            return r;
    }
    return NULL;
}

LLORCH_API int sched_submit(struct sched *s, const struct sched_request *req, uint64_t *req_id)
{
    int rc = sched_request_check(s, req);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&s->mu);
    if (s->draining || s->shutdown) {
        rc = LLORCH_ESHUTDOWN;
    } else if (sched_find_live_job_locked(s, req->job_id, req->job_id_len)) {
        rc = LLORCH_EEXISTS;
    } else if (s->n_queued >= s->o.max_queue || llorch_queue_empty(&s->free_reqs)) {
        rc = LLORCH_EFULL;
    }
    if (rc < 0) {
        pthread_mutex_unlock(&s->mu);
        return rc;
    }
    struct llorch_queue *q = llorch_queue_head(&s->free_reqs);
    llorch_queue_remove(q);
    struct sched_req *r = sched_req_of(q);

    r->id = s->next_id++;
    r->owner = req->owner;
    memcpy(r->job_id, req->job_id, req->job_id_len);
    r->job_id[req->job_id_len] = '\0';
    r->job_id_len = req->job_id_len;
    r->params = req->params;
    for (uint32_t i = 0; i < req->params.n_stops; i++) {
        memcpy(r->stops[i], req->params.stops[i], req->params.stop_lens[i]);
        r->stop_lens[i] = req->params.stop_lens[i];
        r->params.stops[i] = r->stops[i];
    }
    r->add_bos = req->add_bos;
    r->parse_special = req->parse_special;
    r->has_text = req->prompt != NULL;
    r->too_big = false;
    r->prompt_len = 0;
    r->n_tok = 0;
    if (r->has_text) {
        if (req->prompt_len > s->prompt_cap) {
            r->too_big = true;
        } else {
            memcpy(r->prompt, req->prompt, req->prompt_len);
            r->prompt_len = req->prompt_len;
        }
    } else if (req->n_prompt_tokens > s->n_ctx) {
        r->too_big = true;
    } else {
        memcpy(r->tokens, req->prompt_tokens, req->n_prompt_tokens * sizeof(llorch_token));
        r->n_tok = (uint32_t)req->n_prompt_tokens;
    }
    r->t_submit = sched_now_ns();
    r->live = true;
    r->done = false;
    r->refs = 0;
    r->cancel = -1;
    r->drv_cancel = -1;
    r->prepared = r->prep_failed = r->started = r->finished = false;
    r->n_prompt = r->n_done = r->n_gen = r->n_out = 0;
    r->t_admit = r->t_first = 0;
    r->seq = NULL;
    r->in_flight = r->cand = false;
    s->n_queued++;
    s->n_live++;
    s->stats.queue_depth = s->n_queued;
    llorch_queue_insert_tail(&s->inbox, &r->node);
    pthread_cond_signal(&s->cv_prep);
    pthread_mutex_unlock(&s->mu);
    if (req_id)
        *req_id = r->id;
    return 0;
}

static int sched_cancel_locked(struct sched *s, struct sched_req *r, enum sched_error code)
{
    if (!r || !r->live)
        return LLORCH_ENOTFOUND;
    if (r->cancel < 0)
        r->cancel = (int)code;
    pthread_cond_signal(&s->cv_work);
    return 0;
}

LLORCH_API int sched_cancel(struct sched *s, uint64_t req_id, enum sched_error code)
{
    pthread_mutex_lock(&s->mu);
    struct sched_req *found = NULL;
    for (uint32_t i = 0; i < s->n_reqs && !found; i++)
        if (s->reqs[i].live && s->reqs[i].id == req_id)
            found = &s->reqs[i];
    int rc = sched_cancel_locked(s, found, code);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

LLORCH_API int sched_cancel_job(struct sched *s, const char *job_id, size_t len,
                                enum sched_error code)
{
    pthread_mutex_lock(&s->mu);
    int rc = sched_cancel_locked(s, sched_find_live_job_locked(s, job_id, len), code);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

LLORCH_API void sched_events_take(struct sched *s, struct llorch_queue *out)
{
    LLORCH_ASSERT_OFF_THREAD(&s->driver); /* the loop's side */
    pthread_mutex_lock(&s->mu);
    llorch_queue_move(&s->events, out);
    pthread_mutex_unlock(&s->mu);
}

LLORCH_API void sched_events_release(struct sched *s, struct llorch_queue *events)
{
    LLORCH_ASSERT_OFF_THREAD(&s->driver); /* the loop's side */
    bool pooled = false;
    pthread_mutex_lock(&s->mu);
    while (!llorch_queue_empty(events)) {
        struct llorch_queue *q = llorch_queue_head(events);
        llorch_queue_remove(q);
        struct sched_event *ev = llorch_container_of(q, struct sched_event, node);
        if (sched_event_is_pooled(s, ev)) {
            llorch_queue_insert_tail(&s->free_events, q);
            pooled = true;
            continue;
        }
        struct sched_req *r = sched_event_owner_req(s, ev);
        if (--r->refs == 0 && r->done) {
            r->done = false;
            llorch_queue_insert_tail(&s->free_reqs, &r->node);
        }
    }
    if (pooled)
        pthread_cond_signal(&s->cv_events);
    pthread_mutex_unlock(&s->mu);
}

LLORCH_API void sched_drain(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    s->draining = true;
    pthread_mutex_unlock(&s->mu);
}

LLORCH_API void sched_shutdown_now(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    s->draining = true;
    s->shutdown = true;
    pthread_cond_broadcast(&s->cv_work);
    pthread_cond_broadcast(&s->cv_events);
    pthread_mutex_unlock(&s->mu);
}

LLORCH_API bool sched_idle(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    bool idle = s->n_live == 0;
    pthread_mutex_unlock(&s->mu);
    return idle;
}

LLORCH_API void sched_stats(struct sched *s, struct sched_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    pthread_mutex_unlock(&s->mu);
}
