/* The scheduler on the tiny shared models: batched output equals solo output
 * (greedy and seeded sampling), preemption, cancellation, timeouts, the
 * admission limits, stop strings, prefix reuse and shutdown. Events are
 * polled with a condvar-based notify; a test can hold events (take them
 * without releasing) to stall the step driver deterministically, since it
 * waits when the loop holds every TOKEN event of the pool. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "forward.h"
#include "model.h"
#include "sched.h"
#include "stepcost.h"
#include "tokenizer.h"
#include "tpool.h"
#include "util.h"

#define MAX_OUT 512
#define WAIT_MS 30000

struct result {
    uint64_t id;
    uint64_t started_seq, first_token_seq; /* dispatch order of STARTED and token 0 */
    int n_started, n_terminal;
    bool order_error;
    enum sched_event_type terminal;
    enum sched_stop_reason reason;
    int32_t stop_index;
    enum sched_error code;
    char message[256];
    uint32_t tokens_out;
    uint32_t n_tokens;
    llorch_token tokens[MAX_OUT];
    uint32_t n_top_seen;
    uint32_t n_tokens_at_start_of; /* another result's n_tokens when this one started */
    uint64_t t_started_ms;
    bool logprob_error;
    size_t text_len;
    char text[8192];
};

/* A made-up asynchronous engine (micro-batches, h_opts.groups): up to
 * `slots` groups in flight, each completing no sooner than latency_us after
 * its submit, computed by forward_step at complete (so the token streams
 * must equal the synchronous engine's). It checks the scheduler's promises:
 * no sequence in two groups in flight, groups completed in submit order, no
 * KV decision (journal op) touching a sequence in flight, and the journal
 * replays, in decision order, onto a table-only replica as a stage would
 * (journal, then the group's commit at its submit). Runs on the driver. */
#define AE_MAX_SLOTS 8
struct async_engine {
    struct forward *fw;
    struct kv_cache *kv, *replica;
    uint32_t slots, latency_us;
    struct {
        struct forward_entry *e;
        uint32_t n, group;
        uint64_t t_submit_us;
    } ring[AE_MAX_SLOTS];
    uint32_t head, count, next_group;
    _Atomic uint32_t violations, max_in_flight, replay_errors;
    _Atomic uint64_t groups_done;
};

struct harness {
    struct model *m;
    struct async_engine ae;
    struct tokenizer *tok;
    struct tpool *pool;
    struct forward *fw;
    struct sched *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool notified;
    struct llorch_queue held;
    /* on_step figures, written by the driver thread */
    _Atomic uint64_t steps_seen, step_tokens_seen, step_seqs_seen;
    _Atomic uint32_t max_step_tokens_seen;
    uint32_t step_sleep_us;       /* slows every step (on_step), set before submits */
    /* every step's mix, written by the driver thread under mu */
    struct sched_step_info steps[4096];
    uint32_t n_steps;
};

#define STEPS_MAX 4096

/* The made-up cost model of the stall tests (seconds): 100 ms to read the
 * weights, 20 ms more for a step with prompt chunks, 10 ms per prompt
 * token, 5 ms per decoded sequence. */
static double fake_cost(uint32_t n_prefill, uint32_t n_decode)
{
    return 0.1 + (n_prefill ? 0.02 : 0.0) + 0.01 * n_prefill + 0.005 * n_decode;
}

static double h_step_cost(void *ctx, uint32_t n_prefill, uint32_t n_decode)
{
    (void)ctx;
    return fake_cost(n_prefill, n_decode);
}

static void h_on_step(void *ctx, const struct sched_step_info *info)
{
    struct harness *h = ctx;
    /* cmocka asserts must stay on the test thread */
    h->steps_seen++;
    h->step_tokens_seen += info->n_tokens;
    h->step_seqs_seen += info->n_seqs;
    if (info->n_tokens > h->max_step_tokens_seen)
        h->max_step_tokens_seen = info->n_tokens;
    pthread_mutex_lock(&h->mu);
    if (h->n_steps < STEPS_MAX)
        h->steps[h->n_steps++] = *info;
    pthread_mutex_unlock(&h->mu);
    if (h->step_sleep_us) {
        struct timespec ts = {0, (long)h->step_sleep_us * 1000L};
        nanosleep(&ts, NULL);
    }
}

static void h_notify(void *ctx)
{
    struct harness *h = ctx;
    pthread_mutex_lock(&h->mu);
    h->notified = true;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static char *model_path(const char *name)
{
    const char *dir = getenv("LLORCH_SHARED");
    static char buf[1024];
    snprintf(buf, sizeof(buf), "%s/models/%s", dir ? dir : "../shared", name);
    return buf;
}

struct h_opts {
    const char *model;
    uint64_t kv_blocks;           /* 0: plenty */
    uint32_t max_batch, max_queue, step_tokens;
    uint32_t batch_window_ms, step_sleep_us;
    uint32_t itl_target_ms, itl_target_pct;
    bool fake_cost;               /* the cost model learns fake_cost(), not the clock */
    uint32_t groups, group_latency_us; /* micro-batches on the async engine */
};

static uint64_t ae_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static bool ae_in_flight(struct async_engine *a, uint32_t seq_index)
{
    for (uint32_t k = 0; k < a->count; k++) {
        uint32_t at = (a->head + k) % a->slots;
        for (uint32_t i = 0; i < a->ring[at].n; i++)
            if (kv_seq_index(a->kv, a->ring[at].e[i].seq) == seq_index)
                return true;
    }
    return false;
}

static void ae_journal(void *ctx, const struct kv_op *op)
{
    struct async_engine *a = ctx;
    if (ae_in_flight(a, op->seq))
        a->violations++;
    if (kv_cache_replay(a->replica, op) != 0)
        a->replay_errors++;
}

static int ae_submit(void *ctx, uint32_t group, struct forward_entry *e, uint32_t n)
{
    struct async_engine *a = ctx;
    if (a->count >= a->slots || group != a->next_group)
        a->violations++;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t idx = kv_seq_index(a->kv, e[i].seq);
        if (ae_in_flight(a, idx))
            a->violations++;
        for (uint32_t j = 0; j < i; j++)
            if (e[j].seq == e[i].seq)
                a->violations++;
        struct kv_seq *rs = kv_seq_at(a->replica, idx);
        if (!rs)
            a->replay_errors++;
        else
            kv_seq_commit(a->replica, rs, e[i].tokens, e[i].n_tokens);
    }
    uint32_t at = (a->head + a->count) % a->slots;
    a->ring[at].e = e;
    a->ring[at].n = n;
    a->ring[at].group = group;
    a->ring[at].t_submit_us = ae_now_us();
    a->count++;
    a->next_group = (group + 1) % a->slots;
    if (a->count > a->max_in_flight)
        a->max_in_flight = a->count;
    return 0;
}

static int ae_complete(void *ctx, uint32_t *group)
{
    struct async_engine *a = ctx;
    if (a->count == 0) {
        a->violations++;
        return LLORCH_EINVAL;
    }
    uint32_t at = a->head;
    uint64_t due = a->ring[at].t_submit_us + a->latency_us, now = ae_now_us();
    if (now < due) {
        struct timespec ts = {0, (long)(due - now) * 1000L};
        nanosleep(&ts, NULL);
    }
    *group = a->ring[at].group;
    /* computed now, oldest first: each group after the ones before it */
    int rc = forward_step(a->fw, a->ring[at].e, a->ring[at].n);
    a->head = (a->head + 1) % a->slots;
    a->count--;
    a->groups_done++;
    return rc;
}

static uint64_t kv_block_bytes(const struct model *m)
{
    return 2ull * m->hp.n_layer * m->hp.n_head_kv * m->hp.head_dim * LLORCH_KV_BLOCK * sizeof(float);
}

static void h_open(struct harness *h, const struct h_opts *o)
{
    memset(h, 0, sizeof(*h));
    char err[256] = "";
    int rc = model_load(&h->m, model_path(o->model), err, sizeof(err));
    if (rc < 0)
        fail_msg("model_load %s: %s", o->model, err);
    rc = tokenizer_new(&h->tok, h->m->file, err, sizeof(err));
    if (rc < 0)
        fail_msg("tokenizer_new: %s", err);
    struct tpool_opts po = {.n_threads = 2, .name = "t-sched"};
    assert_int_equal(tpool_new(&h->pool, &po), 0);
    uint32_t max_batch = o->max_batch ? o->max_batch : 32;
    uint32_t step_tokens = o->step_tokens ? o->step_tokens : 256;
    struct forward_opts fo = {
        .dtype = LLORCH_DTYPE_F32,
        .kv_type = LLORCH_KV_F32,
        .kv_bytes = (o->kv_blocks ? o->kv_blocks : 2048) * kv_block_bytes(h->m),
        .n_ctx = 0,
        .max_seqs = LLORCH_MIN(max_batch, step_tokens), /* the engine needs <= step_tokens */
        .max_step_tokens = step_tokens,
        .pool = h->pool,
    };
    h->step_sleep_us = o->step_sleep_us;
    rc = forward_new(&h->fw, h->m, &fo, err, sizeof(err));
    if (rc < 0)
        fail_msg("forward_new: %s", err);
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    llorch_queue_init(&h->held);
    struct sched_opts so = {
        .max_batch = max_batch,
        .max_queue = o->max_queue ? o->max_queue : 64,
        .step_tokens = step_tokens,
        .batch_window_ms = o->batch_window_ms,
        .notify = h_notify,
        .notify_ctx = h,
        .on_step = h_on_step,
        .on_step_ctx = h,
        .itl_target_ms = o->itl_target_ms,
        .itl_target_pct = o->itl_target_pct,
        .pool = h->pool,
        .step_cost = o->fake_cost ? h_step_cost : NULL,
    };
    if (o->groups) {
        struct async_engine *a = &h->ae;
        a->fw = h->fw;
        a->kv = forward_kv(h->fw);
        a->slots = o->groups;
        a->latency_us = o->group_latency_us;
        struct kv_stats ks;
        kv_cache_stats(a->kv, &ks);
        struct kv_cache_opts ko = {
            .type = LLORCH_KV_F32, .n_layer = 0, .n_head_kv = h->m->hp.n_head_kv,
            .head_dim = h->m->hp.head_dim, .max_seqs = fo.max_seqs,
            .max_seq_len = forward_n_ctx(h->fw), .n_blocks = ks.blocks_total,
        };
        assert_int_equal(kv_cache_new(&a->replica, &ko), 0);
        kv_cache_set_journal(a->kv, ae_journal, a);
        so.submit = ae_submit;
        so.complete = ae_complete;
        so.max_groups = o->groups;
        so.step_ctx = a;
        so.kv = a->kv;
        so.n_vocab = forward_n_vocab(h->fw);
        so.n_ctx = forward_n_ctx(h->fw);
    }
    assert_int_equal(sched_new(&h->s, o->groups ? NULL : h->fw, h->tok, &so), 0);
}

static void h_release_held(struct harness *h)
{
    sched_events_release(h->s, &h->held);
}

static void h_close(struct harness *h)
{
    h_release_held(h);
    sched_free(h->s);
    if (h->ae.replica) {
        /* every decision replayed; the replica ends as empty as the cache */
        struct kv_stats rs;
        kv_cache_stats(h->ae.replica, &rs);
        assert_int_equal(rs.seqs_active, 0);
        assert_int_equal(rs.blocks_used, 0);
        kv_cache_free(h->ae.replica);
    }
    forward_free(h->fw);
    tpool_free(h->pool);
    tokenizer_free(h->tok);
    model_free(h->m);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
}

static void append_text(struct result *r, const char *t, size_t n)
{
    if (r->text_len + n <= sizeof(r->text)) {
        memcpy(r->text + r->text_len, t, n);
        r->text_len += n;
    }
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}
static uint64_t dispatch_seq;

static void dispatch(struct sched_event *ev)
{
    struct result *r = ev->owner;
    dispatch_seq++;
    if (ev->type == SCHED_EV_STARTED)
        r->started_seq = dispatch_seq;
    if (ev->type == SCHED_EV_TOKEN && ev->u.token.index == 0)
        r->first_token_seq = dispatch_seq;
    if (ev->req_id != r->id)
        r->order_error = true;
    switch (ev->type) {
    case SCHED_EV_STARTED:
        if (r->n_started || r->n_tokens || r->n_terminal)
            r->order_error = true;
        r->n_started++;
        r->t_started_ms = now_ms();
        break;
    case SCHED_EV_TOKEN:
        if (r->n_terminal || !r->n_started || ev->u.token.index != r->n_tokens ||
            r->n_tokens >= MAX_OUT) {
            r->order_error = true;
            break;
        }
        r->tokens[r->n_tokens++] = ev->u.token.id;
        append_text(r, ev->u.token.text, ev->u.token.text_len);
        if (ev->u.token.n_top) {
            r->n_top_seen = ev->u.token.n_top;
            for (uint32_t i = 1; i < ev->u.token.n_top; i++)
                if (ev->u.token.top[i].logprob > ev->u.token.top[i - 1].logprob)
                    r->logprob_error = true;
            if (ev->u.token.logprob > ev->u.token.top[0].logprob + 1e-6f ||
                ev->u.token.logprob > 0.0f)
                r->logprob_error = true;
        }
        break;
    case SCHED_EV_END:
        r->n_terminal++;
        r->terminal = SCHED_EV_END;
        r->reason = ev->u.end.reason;
        r->stop_index = ev->u.end.stop_index;
        r->tokens_out = ev->u.end.tokens_out;
        append_text(r, ev->u.end.text, ev->u.end.text_len);
        break;
    case SCHED_EV_ERROR:
        r->n_terminal++;
        r->terminal = SCHED_EV_ERROR;
        r->code = ev->u.error.code;
        snprintf(r->message, sizeof(r->message), "%s", ev->u.error.message);
        break;
    }
}

/* Waits up to wait_ms for a notify, then takes and dispatches the events;
 * releases them unless hold. */
static void h_pump(struct harness *h, int wait_ms, bool hold)
{
    pthread_mutex_lock(&h->mu);
    if (!h->notified) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)wait_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&h->cv, &h->mu, &ts);
    }
    h->notified = false;
    pthread_mutex_unlock(&h->mu);
    struct llorch_queue list;
    llorch_queue_init(&list);
    sched_events_take(h->s, &list);
    struct llorch_queue *q;
    llorch_queue_foreach(q, &list)
        dispatch(llorch_container_of(q, struct sched_event, node));
    if (hold)
        llorch_queue_move(&list, &h->held);
    else
        sched_events_release(h->s, &list);
}

static bool all_done(struct result *rs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (rs[i].n_terminal == 0)
            return false;
    return true;
}

static void h_wait_all(struct harness *h, struct result *rs, size_t n)
{
    uint64_t until = now_ms() + WAIT_MS;
    while (!all_done(rs, n)) {
        if (now_ms() > until)
            fail_msg("requests did not finish in %d ms", WAIT_MS);
        h_pump(h, 20, false);
    }
    /* exactly one terminal each, nothing out of order */
    h_pump(h, 1, false);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(rs[i].n_terminal, 1);
        assert_false(rs[i].order_error);
    }
}

/* Pumps (holding) until pred(r) or the deadline. */
static void h_pump_until_tokens(struct harness *h, struct result *r, uint32_t n_tokens, bool hold)
{
    uint64_t until = now_ms() + WAIT_MS;
    while (r->n_tokens < n_tokens && r->n_terminal == 0) {
        if (now_ms() > until)
            fail_msg("no tokens in %d ms", WAIT_MS);
        h_pump(h, 20, hold);
    }
}

static void h_pump_until_started(struct harness *h, struct result *r, bool hold)
{
    uint64_t until = now_ms() + WAIT_MS;
    while (!r->n_started && !r->n_terminal) {
        if (now_ms() > until)
            fail_msg("not started in %d ms", WAIT_MS);
        h_pump(h, 20, hold);
    }
}

static void assert_kv_all_free(struct harness *h)
{
    /* the stats snapshot is taken after each step: wait for an idle one */
    uint64_t until = now_ms() + WAIT_MS;
    struct sched_stats st;
    for (;;) {
        sched_stats(h->s, &st);
        if (sched_idle(h->s) && st.kv.blocks_used == 0 && st.slots_busy == 0 &&
            st.queue_depth == 0)
            break;
        if (now_ms() > until)
            fail_msg("blocks still used: %u, busy %u, queued %u", st.kv.blocks_used,
                     st.slots_busy, st.queue_depth);
        h_pump(h, 5, false);
    }
    assert_int_equal(st.kv.seqs_active, 0);
}

static struct sched_params greedy(uint32_t max_tokens)
{
    struct sched_params p;
    memset(&p, 0, sizeof(p));
    p.max_tokens = max_tokens;
    p.temperature = 0.0f;
    p.top_p = 1.0f;
    p.repetition_penalty = 1.0f;
    return p;
}

/* stories260k prompts: BOS then ids from an LCG in [3, 511]. */
static size_t make_prompt(llorch_token *out, size_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 12345u;
    out[0] = 1;
    for (size_t i = 1; i < n; i++) {
        x = x * 1103515245u + 12345u;
        out[i] = (llorch_token)(3 + (x >> 8) % 509);
    }
    return n;
}

static int submit_tokens(struct harness *h, struct result *r, const char *job,
                         const llorch_token *toks, size_t n, const struct sched_params *p)
{
    memset(r, 0, sizeof(*r));
    struct sched_request req = {
        .job_id = job,
        .job_id_len = strlen(job),
        .prompt_tokens = toks,
        .n_prompt_tokens = n,
        .params = *p,
        .owner = r,
    };
    return sched_submit(h->s, &req, &r->id);
}

static int submit_text(struct harness *h, struct result *r, const char *job, const char *text,
                       const struct sched_params *p)
{
    memset(r, 0, sizeof(*r));
    struct sched_request req = {
        .job_id = job,
        .job_id_len = strlen(job),
        .prompt = text,
        .prompt_len = strlen(text),
        .add_bos = tokenizer_adds_bos(h->tok),
        .params = *p,
        .owner = r,
    };
    return sched_submit(h->s, &req, &r->id);
}

static void assert_same_output(const struct result *a, const struct result *b)
{
    assert_int_equal(a->terminal, SCHED_EV_END);
    assert_int_equal(b->terminal, SCHED_EV_END);
    assert_int_equal(a->reason, b->reason);
    assert_int_equal(a->n_tokens, b->n_tokens);
    assert_int_equal(a->tokens_out, a->n_tokens);
    assert_int_equal(b->tokens_out, b->n_tokens);
    assert_memory_equal(a->tokens, b->tokens, a->n_tokens * sizeof(llorch_token));
}

/* ---- tests ---- */

#define N_MIXED 50

static void sched_fifty_greedy_requests_match_each_run_alone(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 32, .max_queue = 64});
    static struct result solo[N_MIXED], batch[N_MIXED];
    static llorch_token prompts[N_MIXED][128];
    size_t lens[N_MIXED];
    uint32_t max_tok[N_MIXED];
    char job[32];
    for (int i = 0; i < N_MIXED; i++) {
        lens[i] = make_prompt(prompts[i], 1 + (size_t)(i * 37) % 120, (uint32_t)i);
        max_tok[i] = 4 + (uint32_t)(i * 13) % 21;
        struct sched_params p = greedy(max_tok[i]);
        snprintf(job, sizeof(job), "solo-%d", i);
        assert_int_equal(submit_tokens(&h, &solo[i], job, prompts[i], lens[i], &p), 0);
        h_wait_all(&h, &solo[i], 1);
    }
    for (int i = 0; i < N_MIXED; i++) {
        struct sched_params p = greedy(max_tok[i]);
        snprintf(job, sizeof(job), "batch-%d", i);
        assert_int_equal(submit_tokens(&h, &batch[i], job, prompts[i], lens[i], &p), 0);
    }
    h_wait_all(&h, batch, N_MIXED);
    for (int i = 0; i < N_MIXED; i++) {
        assert_int_equal(batch[i].n_started, 1);
        assert_same_output(&solo[i], &batch[i]);
    }
    struct sched_stats st;
    sched_stats(h.s, &st);
    assert_true(st.steps > 0);
    assert_true(st.tokens_generated >= 2 * N_MIXED * 4);
    assert_kv_all_free(&h);
    h_close(&h);
}

static struct sched_params sampled(uint64_t seed)
{
    struct sched_params p = greedy(24);
    p.temperature = 0.9f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.02f;
    p.repetition_penalty = 1.1f;
    p.seed = seed;
    return p;
}

static void sched_seeded_request_is_the_same_alone_and_among_63_others(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 64, .max_queue = 64});
    static struct result alone, crowd[64];
    static llorch_token prompts[64][64];
    size_t lens[64];
    for (int i = 0; i < 64; i++)
        lens[i] = make_prompt(prompts[i], 8 + (size_t)(i * 5) % 50, 1000u + (uint32_t)i);
    const int target = 31;
    struct sched_params pt = sampled(0x5eed5eedull);
    assert_int_equal(submit_tokens(&h, &alone, "alone", prompts[target], lens[target], &pt), 0);
    h_wait_all(&h, &alone, 1);
    char job[32];
    for (int i = 0; i < 64; i++) {
        struct sched_params p = i == target ? pt : sampled(77u + (uint64_t)i);
        snprintf(job, sizeof(job), "crowd-%d", i);
        assert_int_equal(submit_tokens(&h, &crowd[i], job, prompts[i], lens[i], &p), 0);
    }
    h_wait_all(&h, crowd, 64);
    assert_same_output(&alone, &crowd[target]);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_cancel_mid_flight_ends_with_cancelled_and_frees_blocks(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 1});
    static struct result r;
    llorch_token prompt[8];
    make_prompt(prompt, 8, 3);
    struct sched_params p = greedy(400);
    p.ignore_eos = true;
    assert_int_equal(submit_tokens(&h, &r, "c1", prompt, 8, &p), 0);
    /* Holding the events stalls the driver within one pool of tokens, so the
     * request is still running when the cancel arrives. */
    h_pump_until_tokens(&h, &r, 3, true);
    assert_int_equal(sched_cancel(h.s, r.id, SCHED_ERR_CANCELLED), 0);
    assert_int_equal(sched_cancel_job(h.s, "nope", 4, SCHED_ERR_CANCELLED), LLORCH_ENOTFOUND);
    h_release_held(&h);
    h_wait_all(&h, &r, 1);
    assert_int_equal(r.terminal, SCHED_EV_ERROR);
    assert_int_equal(r.code, SCHED_ERR_CANCELLED);
    assert_true(r.n_tokens >= 3 && r.n_tokens < 400);
    assert_int_equal(sched_cancel(h.s, r.id, SCHED_ERR_CANCELLED), LLORCH_ENOTFOUND);
    assert_kv_all_free(&h);

    /* by job id, while queued behind another */
    static struct result a, b;
    assert_int_equal(submit_tokens(&h, &a, "a", prompt, 8, &p), 0);
    h_pump_until_started(&h, &a, true);
    assert_int_equal(submit_tokens(&h, &b, "b", prompt, 8, &p), 0);
    assert_int_equal(sched_cancel_job(h.s, "b", 1, SCHED_ERR_CLIENT_TOO_SLOW), 0);
    assert_int_equal(sched_cancel_job(h.s, "a", 1, SCHED_ERR_CANCELLED), 0);
    h_release_held(&h);
    uint64_t until = now_ms() + WAIT_MS;
    while (!a.n_terminal || !b.n_terminal) {
        assert_true(now_ms() < until);
        h_pump(&h, 20, false);
    }
    assert_int_equal(b.terminal, SCHED_EV_ERROR);
    assert_int_equal(b.code, SCHED_ERR_CLIENT_TOO_SLOW);
    assert_int_equal(b.n_started, 0);
    assert_int_equal(a.code, SCHED_ERR_CANCELLED);
    assert_kv_all_free(&h);
    h_close(&h);
}

#define N_PRE 8

static void sched_preemption_under_a_tiny_kv_cache_keeps_every_output(void **state)
{
    (void)state;
    struct harness h;
    /* 12 blocks (192 tokens) for 8 requests of up to ~100 tokens each */
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .kv_blocks = 12, .max_batch = 8,
                                .step_tokens = 64});
    static struct result solo[N_PRE], conc[N_PRE];
    static llorch_token prompts[N_PRE][64];
    size_t lens[N_PRE];
    char job[32];
    for (int i = 0; i < N_PRE; i++) {
        lens[i] = make_prompt(prompts[i], 20 + (size_t)i * 5, 500u + (uint32_t)i);
        struct sched_params p = greedy(40);
        p.ignore_eos = true;
        snprintf(job, sizeof(job), "solo-%d", i);
        assert_int_equal(submit_tokens(&h, &solo[i], job, prompts[i], lens[i], &p), 0);
        h_wait_all(&h, &solo[i], 1);
        assert_int_equal(solo[i].n_tokens, 40);
    }
    struct sched_stats before;
    sched_stats(h.s, &before);
    for (int i = 0; i < N_PRE; i++) {
        struct sched_params p = greedy(40);
        p.ignore_eos = true;
        snprintf(job, sizeof(job), "conc-%d", i);
        assert_int_equal(submit_tokens(&h, &conc[i], job, prompts[i], lens[i], &p), 0);
    }
    h_wait_all(&h, conc, N_PRE);
    for (int i = 0; i < N_PRE; i++)
        assert_same_output(&solo[i], &conc[i]);
    struct sched_stats after;
    sched_stats(h.s, &after);
    assert_true(after.preemptions > before.preemptions);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_full_queue_and_duplicate_job_are_refused(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 1, .max_queue = 2});
    static struct result r[4];
    llorch_token prompt[8];
    make_prompt(prompt, 8, 9);
    struct sched_params p = greedy(300);
    p.ignore_eos = true;
    assert_int_equal(submit_tokens(&h, &r[0], "A", prompt, 8, &p), 0);
    h_pump_until_started(&h, &r[0], true);
    /* A holds the only batch slot (and stalls on held events) */
    assert_int_equal(submit_tokens(&h, &r[1], "B", prompt, 8, &p), 0);
    assert_int_equal(submit_tokens(&h, &r[2], "C", prompt, 8, &p), 0);
    assert_int_equal(submit_tokens(&h, &r[3], "D", prompt, 8, &p), LLORCH_EFULL);
    struct result dup;
    assert_int_equal(submit_tokens(&h, &dup, "A", prompt, 8, &p), LLORCH_EEXISTS);
    struct sched_stats st;
    sched_stats(h.s, &st);
    assert_int_equal(st.queue_depth, 2);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sched_cancel(h.s, r[i].id, SCHED_ERR_CANCELLED), 0);
    h_release_held(&h);
    h_wait_all(&h, r, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].terminal, SCHED_EV_ERROR);
        assert_int_equal(r[i].code, SCHED_ERR_CANCELLED);
    }
    /* the job id is free again once its request ended */
    p = greedy(2);
    assert_int_equal(submit_tokens(&h, &dup, "A", prompt, 8, &p), 0);
    h_wait_all(&h, &dup, 1);
    assert_int_equal(dup.terminal, SCHED_EV_END);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_bad_parameters_are_refused_at_submit(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 2});
    struct result r;
    llorch_token prompt[4] = {1, 10, 20, 30};
    struct sched_params p = greedy(0);
    assert_int_equal(submit_tokens(&h, &r, "x", prompt, 4, &p), LLORCH_EINVAL);
    p = greedy(4);
    p.top_p = 2.0f;
    assert_int_equal(submit_tokens(&h, &r, "x", prompt, 4, &p), LLORCH_EINVAL);
    p = greedy(4);
    llorch_token bad[2] = {1, 100000};
    assert_int_equal(submit_tokens(&h, &r, "x", bad, 2, &p), LLORCH_EINVAL);
    assert_int_equal(submit_tokens(&h, &r, "", prompt, 4, &p), LLORCH_EINVAL);
    assert_int_equal(submit_text(&h, &r, "x", "caf\xc3", &p), LLORCH_EUTF8);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_prompt_over_the_byte_limit_ends_with_prompt_too_large(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf"});
    /* the default limit for a 512-token context is 128 KiB */
    size_t n = 200 * 1024;
    char *text = malloc(n + 1);
    assert_non_null(text);
    memset(text, 'a', n);
    text[n] = 0;
    static struct result r;
    struct sched_params p = greedy(1);
    assert_int_equal(submit_text(&h, &r, "big", text, &p), 0);
    free(text);
    h_wait_all(&h, &r, 1);
    assert_int_equal(r.terminal, SCHED_EV_ERROR);
    assert_int_equal(r.code, SCHED_ERR_PROMPT_TOO_LARGE);
    assert_int_equal(r.n_started, 0);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_requests_that_can_never_fit_end_with_context_exceeded(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .kv_blocks = 8, .max_batch = 2});
    static struct result r[4];
    static llorch_token prompt[600];
    make_prompt(prompt, 600, 1);
    /* beyond the context (512) */
    struct sched_params p = greedy(450);
    assert_int_equal(submit_tokens(&h, &r[0], "ctx", prompt, 100, &p), 0);
    /* fits the context, not the 8-block (128-token) cache */
    p = greedy(100);
    assert_int_equal(submit_tokens(&h, &r[1], "kv", prompt, 50, &p), 0);
    /* more prompt tokens than the context holds */
    p = greedy(1);
    assert_int_equal(submit_tokens(&h, &r[2], "long", prompt, 600, &p), 0);
    /* nothing to condition on */
    assert_int_equal(submit_tokens(&h, &r[3], "empty", prompt, 0, &p), 0);
    h_wait_all(&h, r, 4);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].terminal, SCHED_EV_ERROR);
        assert_int_equal(r[i].code, SCHED_ERR_CONTEXT_EXCEEDED);
        assert_int_equal(r[i].n_started, 0);
    }
    assert_non_null(strstr(r[0].message, "context length"));
    assert_non_null(strstr(r[0].message, "512"));
    assert_non_null(strstr(r[1].message, "KV cache"));
    assert_int_equal(r[3].code, SCHED_ERR_INVALID_REQUEST);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_timeout_ends_running_and_waiting_requests(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 1});
    static struct result r[2];
    llorch_token prompt[8];
    make_prompt(prompt, 8, 4);
    struct sched_params p = greedy(300);
    p.ignore_eos = true;
    p.timeout_ms = 150;
    assert_int_equal(submit_tokens(&h, &r[0], "run", prompt, 8, &p), 0);
    h_pump_until_started(&h, &r[0], true);
    p.timeout_ms = 1;
    assert_int_equal(submit_tokens(&h, &r[1], "wait", prompt, 8, &p), 0);
    struct timespec ts = {0, 200 * 1000000L};
    nanosleep(&ts, NULL);
    h_release_held(&h);
    h_wait_all(&h, r, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].terminal, SCHED_EV_ERROR);
        assert_int_equal(r[i].code, SCHED_ERR_TIMEOUT);
    }
    assert_int_equal(r[1].n_started, 0);
    assert_true(r[0].n_tokens < 300);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_stop_string_ends_the_stream_before_the_match(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "llama-tiny-f32.gguf", .max_batch = 4});
    static struct result full, cut;
    struct sched_params p = greedy(24);
    p.ignore_eos = true;
    assert_int_equal(submit_text(&h, &full, "full", "Once upon a time", &p), 0);
    h_wait_all(&h, &full, 1);
    assert_int_equal(full.reason, SCHED_STOP_MAX_TOKENS);
    assert_true(full.text_len > 8);
    /* a stop string of three ASCII bytes from the second half of the
     * output, cut at its first occurrence */
    size_t k = full.text_len / 2;
    while (k + 3 <= full.text_len && ((full.text[k] | full.text[k + 1] | full.text[k + 2]) & 0x80))
        k++;
    assert_true(k + 3 <= full.text_len);
    char stop[4];
    memcpy(stop, full.text + k, 3);
    stop[3] = '\0';
    const char *first = NULL;
    for (size_t i = 0; i + 3 <= full.text_len && !first; i++)
        if (memcmp(full.text + i, stop, 3) == 0)
            first = full.text + i;
    size_t expect_len = (size_t)(first - full.text);
    p.n_stops = 2;
    p.stops[0] = "\x01never";
    p.stop_lens[0] = 6;
    p.stops[1] = stop;
    p.stop_lens[1] = 3;
    assert_int_equal(submit_text(&h, &cut, "cut", "Once upon a time", &p), 0);
    h_wait_all(&h, &cut, 1);
    assert_int_equal(cut.terminal, SCHED_EV_END);
    assert_int_equal(cut.reason, SCHED_STOP_SEQUENCE);
    assert_int_equal(cut.stop_index, 1);
    assert_int_equal(cut.text_len, expect_len);
    assert_memory_equal(cut.text, full.text, expect_len);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_shared_prefix_is_reused_with_the_same_output(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 4});
    static struct result a, b;
    llorch_token prompt[50];
    make_prompt(prompt, 50, 42);
    struct sched_params p = greedy(12);
    p.n_logprobs = 5;
    assert_int_equal(submit_tokens(&h, &a, "p1", prompt, 50, &p), 0);
    h_wait_all(&h, &a, 1);
    struct sched_stats s1, s2;
    sched_stats(h.s, &s1);
    assert_int_equal(submit_tokens(&h, &b, "p2", prompt, 50, &p), 0);
    h_wait_all(&h, &b, 1);
    sched_stats(h.s, &s2);
    assert_same_output(&a, &b);
    assert_true(s2.prefix_tokens_reused - s1.prefix_tokens_reused >= 48);
    assert_true(s2.kv.prefix_hits > s1.kv.prefix_hits);
    /* greedy picks the first of the top log-probs */
    assert_int_equal(a.n_top_seen, 5);
    assert_false(a.logprob_error);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_on_step_reports_every_step_with_its_tokens(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 4, .step_tokens = 16});
    static struct result a;
    llorch_token prompt[50];
    make_prompt(prompt, 50, 7);
    struct sched_params p = greedy(12);
    p.ignore_eos = true;
    struct sched_stats s0, s1;
    sched_stats(h.s, &s0);
    assert_int_equal(submit_tokens(&h, &a, "st", prompt, 50, &p), 0);
    h_wait_all(&h, &a, 1);
    sched_stats(h.s, &s1);
    assert_int_equal(a.tokens_out, 12);
    /* The 50-token prompt in chunks of at most 16, then one token fed back
     * for each generated token but the last. */
    assert_int_equal(h.step_tokens_seen, 50 + 11);
    assert_int_equal(h.steps_seen, s1.steps - s0.steps);
    assert_int_equal(h.step_seqs_seen, h.steps_seen);
    assert_true(h.max_step_tokens_seen <= 16);
    assert_true(h.steps_seen >= 4 + 11);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_on_step_reports_the_driver_time_between_forward_steps(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 4, .step_tokens = 16});
    static struct result a;
    llorch_token prompt[8];
    make_prompt(prompt, 8, 3);
    struct sched_params p = greedy(6);
    p.ignore_eos = true;
    assert_int_equal(submit_tokens(&h, &a, "gap", prompt, 8, &p), 0);
    h_wait_all(&h, &a, 1);
    assert_int_equal(a.tokens_out, 6);
    pthread_mutex_lock(&h.mu);
    assert_int_equal(h.n_steps, 6); /* the prompt, then 5 decodes */
    /* The first step follows an idle driver: no gap. Every later one
     * follows the previous forward step: its gap holds the previous step's
     * sampling and posting (on_step runs between the two as well). */
    assert_true(h.steps[0].gap_s == 0.0);
    assert_true(h.steps[0].sample_s == 0.0 && h.steps[0].emit_s == 0.0);
    for (uint32_t i = 1; i < h.n_steps; i++) {
        assert_true(h.steps[i].gap_s > 0.0);
        assert_true(h.steps[i].sample_s > 0.0);
        assert_true(h.steps[i].sample_s + h.steps[i].emit_s <= h.steps[i].gap_s);
    }
    pthread_mutex_unlock(&h.mu);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_shutdown_ends_everything_and_refuses_new_work(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 2});
    static struct result r[4];
    llorch_token prompt[8];
    make_prompt(prompt, 8, 5);
    struct sched_params p = greedy(300);
    p.ignore_eos = true;
    char job[16];
    for (int i = 0; i < 4; i++) {
        snprintf(job, sizeof(job), "s%d", i);
        assert_int_equal(submit_tokens(&h, &r[i], job, prompt, 8, &p), 0);
    }
    /* drain: no new work, the old work continues */
    sched_drain(h.s);
    struct result late;
    assert_int_equal(submit_tokens(&h, &late, "late", prompt, 8, &p), LLORCH_ESHUTDOWN);
    h_pump_until_tokens(&h, &r[0], 2, true); /* holding: nobody can finish */
    assert_false(sched_idle(h.s));
    sched_shutdown_now(h.s);
    h_release_held(&h);
    h_wait_all(&h, r, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r[i].terminal, SCHED_EV_ERROR);
        assert_int_equal(r[i].code, SCHED_ERR_SHUTTING_DOWN);
    }
    assert_true(sched_idle(h.s));
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_held_events_stall_the_driver_without_losing_tokens(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 1});
    static struct result solo, held;
    llorch_token prompt[8];
    make_prompt(prompt, 8, 11);
    struct sched_params p = greedy(100);
    p.ignore_eos = true;
    assert_int_equal(submit_tokens(&h, &solo, "solo", prompt, 8, &p), 0);
    h_wait_all(&h, &solo, 1);
    assert_int_equal(submit_tokens(&h, &held, "held", prompt, 8, &p), 0);
    /* The loop keeps every event: the driver runs out of TOKEN events (one
     * pool: 8 per batch slot + 16) and waits instead of dropping any. */
    uint64_t until = now_ms() + 300;
    while (now_ms() < until)
        h_pump(&h, 10, true);
    assert_int_equal(held.n_terminal, 0);
    assert_true(held.n_tokens > 0 && held.n_tokens <= 24);
    h_release_held(&h);
    h_wait_all(&h, &held, 1);
    assert_same_output(&solo, &held);
    assert_kv_all_free(&h);
    h_close(&h);
}

/* ChatLoop's batching window: arrivals while a sequence runs wait for more
 * to join them (B and C start together, a window after B), and the running
 * sequence keeps stepping meanwhile. */
static void sched_batch_window_gathers_arrivals_while_others_run(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 4,
                                .batch_window_ms = 300, .step_sleep_us = 2000});
    static struct result a, b, c;
    llorch_token pa[8], pb[8], pc[8];
    make_prompt(pa, 8, 1);
    make_prompt(pb, 8, 2);
    make_prompt(pc, 8, 3);
    struct sched_params p = greedy(400);
    p.ignore_eos = true;
    assert_int_equal(submit_tokens(&h, &a, "a", pa, 8, &p), 0);
    h_pump_until_tokens(&h, &a, 3, false);
    struct sched_params q = greedy(4);
    uint64_t tb = now_ms();
    assert_int_equal(submit_tokens(&h, &b, "b", pb, 8, &q), 0);
    uint32_t a_at_b = a.n_tokens;
    while (now_ms() < tb + 100)
        h_pump(&h, 10, false);
    assert_int_equal(b.n_started, 0);
    uint64_t tc = now_ms();
    assert_int_equal(submit_tokens(&h, &c, "c", pc, 8, &q), 0);
    h_pump_until_started(&h, &b, false);
    h_pump_until_started(&h, &c, false);
    /* B waited the window, C joined it: both admitted by one sched_admit. */
    assert_true(b.t_started_ms >= tb + 290);
    assert_true(c.t_started_ms < tc + 290);
    assert_true(c.t_started_ms <= b.t_started_ms + 25);
    /* A kept stepping while B waited (2 ms a step, ~150 in the window;
     * a loaded sanitizer run still makes a handful, a paused batch none). */
    assert_true(a.n_tokens >= a_at_b + 4);
    assert_int_equal(sched_cancel(h.s, a.id, SCHED_ERR_CANCELLED), 0);
    struct result *rs[3] = {&a, &b, &c};
    uint64_t until = now_ms() + WAIT_MS;
    while (!rs[0]->n_terminal || !rs[1]->n_terminal || !rs[2]->n_terminal) {
        if (now_ms() > until)
            fail_msg("requests did not finish");
        h_pump(&h, 20, false);
    }
    assert_int_equal(b.terminal, SCHED_EV_END);
    assert_int_equal(c.terminal, SCHED_EV_END);
    assert_kv_all_free(&h);
    h_close(&h);
}

/* Arrivals that fill the batch do not wait for the window. */
static void sched_batch_window_ends_early_when_the_batch_is_full(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 2,
                                .batch_window_ms = 5000, .step_sleep_us = 1000});
    static struct result a, b;
    llorch_token pa[8], pb[8];
    make_prompt(pa, 8, 4);
    make_prompt(pb, 8, 5);
    struct sched_params p = greedy(8);
    p.ignore_eos = true;
    uint64_t t0 = now_ms();
    assert_int_equal(submit_tokens(&h, &a, "a", pa, 8, &p), 0);
    assert_int_equal(submit_tokens(&h, &b, "b", pb, 8, &p), 0);
    h_pump_until_started(&h, &a, false);
    h_pump_until_started(&h, &b, false);
    assert_true(a.t_started_ms < t0 + 2500);
    assert_true(b.t_started_ms < t0 + 2500);
    uint64_t until = now_ms() + WAIT_MS;
    while (!a.n_terminal || !b.n_terminal) {
        if (now_ms() > until)
            fail_msg("requests did not finish");
        h_pump(&h, 20, false);
    }
    assert_int_equal(a.terminal, SCHED_EV_END);
    assert_int_equal(b.terminal, SCHED_EV_END);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_engine_smaller_than_the_batch_still_completes_everyone(void **state)
{
    (void)state;
    struct harness h;
    /* 3 tokens and 3 sequences per step for 6 streams: the step budget and
     * kv_seq_new running dry both make streams wait, never fail */
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 6, .step_tokens = 3});
    static struct result solo[6], conc[6];
    static llorch_token prompts[6][16];
    char job[32];
    for (int i = 0; i < 6; i++) {
        make_prompt(prompts[i], 5 + (size_t)i, 900u + (uint32_t)i);
        struct sched_params p = greedy(10);
        p.ignore_eos = true;
        snprintf(job, sizeof(job), "solo-%d", i);
        assert_int_equal(submit_tokens(&h, &solo[i], job, prompts[i], 5 + (size_t)i, &p), 0);
        h_wait_all(&h, &solo[i], 1);
    }
    for (int i = 0; i < 6; i++) {
        struct sched_params p = greedy(10);
        p.ignore_eos = true;
        snprintf(job, sizeof(job), "conc-%d", i);
        assert_int_equal(submit_tokens(&h, &conc[i], job, prompts[i], 5 + (size_t)i, &p), 0);
    }
    h_wait_all(&h, conc, 6);
    for (int i = 0; i < 6; i++)
        assert_same_output(&solo[i], &conc[i]);
    assert_kv_all_free(&h);
    h_close(&h);
}

/* ---- the step cost model and the prefill budget (made-up costs) ---- */

static void stepcost_fit_recovers_a_linear_step_cost(void **state)
{
    (void)state;
    struct stepcost c;
    stepcost_init(&c);
    /* varied steps, as a busy server makes them */
    for (uint32_t i = 0; i < 200; i++) {
        uint32_t p = (i % 3 == 0) ? 0 : (i * 7) % 61 + 1, d = (i * 5) % 9;
        stepcost_observe(&c, p, d, fake_cost(p, d));
    }
    struct stepcost_fit f;
    stepcost_get(&c, &f);
    assert_true(f.prefill_known);
    assert_float_equal(f.fixed, 0.1, 1e-3);
    assert_float_equal(f.prefill_step, 0.02, 1e-3);
    assert_float_equal(f.prefill_token, 0.01, 1e-4);
    assert_float_equal(f.decode_seq, 0.005, 1e-4);
    assert_float_equal(stepcost_predict(&c, 40, 4), fake_cost(40, 4), 1e-3);
}

static void stepcost_budget_keeps_the_step_within_twice_a_decode_step(void **state)
{
    (void)state;
    struct stepcost c;
    stepcost_init(&c);
    for (uint32_t i = 0; i < 200; i++) {
        uint32_t p = (i % 3 == 0) ? 0 : (i * 7) % 61 + 1, d = (i * 5) % 9;
        stepcost_observe(&c, p, d, fake_cost(p, d));
    }
    /* 4 streams: a decode step is 120 ms, the target 240 ms; a step with
     * prompt chunks costs 140 ms + 10 ms per token: 10 tokens */
    assert_float_equal(stepcost_target(&c, 4, 0.0), 0.24, 1e-3);
    uint32_t b = stepcost_budget(&c, 4, 0.0, 512);
    assert_true(b >= STEPCOST_MIN_CHUNK && b <= 10); /* never past the target */
    assert_true(fake_cost(b, 4) <= 0.24 + 1e-6);
    /* an explicit target: 505 ms leaves at most 36.5 tokens */
    b = stepcost_budget(&c, 4, 0.505, 512);
    assert_true(b > 10 && b <= 36);
    /* in closed loop (each step carries the chunk it was given) the chunk
     * settles on the largest within the target: 10, less the fit's rounding */
    for (int i = 0; i < 30; i++) {
        b = stepcost_budget(&c, 4, 0.0, 512);
        stepcost_observe(&c, b, 4, fake_cost(b, 4));
    }
    b = stepcost_budget(&c, 4, 0.0, 512);
    assert_true(b == 9 || b == 10);
    /* --step-tokens still caps */
    assert_int_equal(stepcost_budget(&c, 4, 0.505, 20), 20);
    /* nothing decoding: the largest chunk prefills fastest */
    assert_int_equal(stepcost_budget(&c, 0, 0.0, 512), 512);
    assert_int_equal(stepcost_budget(&c, 0, 0.05, 512), 512);
    /* a target below a decode step: prompts still progress */
    assert_int_equal(stepcost_budget(&c, 4, 0.01, 512), STEPCOST_MIN_CHUNK);
}

static void stepcost_budget_probes_before_a_prompt_chunk_was_measured(void **state)
{
    (void)state;
    struct stepcost c;
    stepcost_init(&c);
    assert_int_equal(stepcost_budget(&c, 2, 0.0, 512), STEPCOST_PROBE_TOKENS);
    for (int i = 0; i < 20; i++)
        stepcost_observe(&c, 0, 2, fake_cost(0, 2));
    assert_float_equal(stepcost_target(&c, 2, 0.0), 2 * fake_cost(0, 2), 1e-3);
    /* decodes alone say nothing about a prompt token */
    assert_int_equal(stepcost_budget(&c, 2, 0.0, 512), STEPCOST_PROBE_TOKENS);
    assert_int_equal(stepcost_budget(&c, 2, 0.0, 8), 8);
    /* prompt-only steps (a fit that says prompt tokens are cheap) are not
     * trusted next to decodes until such a step was measured */
    for (int i = 0; i < 5; i++)
        stepcost_observe(&c, 512, 0, 0.1 + 1e-5 * 512);
    assert_int_equal(stepcost_budget(&c, 2, 0.0, 512), STEPCOST_PROBE_TOKENS);
    stepcost_observe(&c, STEPCOST_PROBE_TOKENS, 2, fake_cost(STEPCOST_PROBE_TOKENS, 2));
    assert_true(stepcost_budget(&c, 2, 0.0, 512) < STEPCOST_PROBE_TOKENS);
}

static void stepcost_target_holds_while_a_long_prefill_runs_slow(void **state)
{
    (void)state;
    struct stepcost c;
    stepcost_init(&c);
    stepcost_observe(&c, 64, 0, fake_cost(64, 0));
    for (int i = 0; i < 20; i++)
        stepcost_observe(&c, 0, 4, fake_cost(0, 4));
    assert_float_equal(stepcost_target(&c, 4, 0.0), 2 * fake_cost(0, 4), 1e-9);
    /* minutes of mixed steps only, each far slower than the model says (the
     * host got busy): the target stays twice the measured decode step, and
     * the chunk shrinks to the floor instead of following a drifting fit */
    for (int i = 0; i < 200; i++) {
        uint32_t b = stepcost_budget(&c, 4, 0.0, 512);
        stepcost_observe(&c, b, 4, 0.2 + 0.01 * b);
    }
    assert_float_equal(stepcost_target(&c, 4, 0.0), 2 * fake_cost(0, 4), 1e-9);
    assert_int_equal(stepcost_budget(&c, 4, 0.0, 512), STEPCOST_MIN_CHUNK);
    /* another batch size: moved by the fitted cost per sequence */
    assert_true(stepcost_decode_step(&c, 6) >= stepcost_decode_step(&c, 4));
}

static void stepcost_split_serves_a_short_prompt_next_to_a_long_one(void **state)
{
    (void)state;
    uint32_t out[4];
    /* arrival order: a long prompt, then a short one */
    stepcost_split((uint32_t[]){2000, 30}, 2, 64, out);
    assert_int_equal(out[0], 34);
    assert_int_equal(out[1], 30);
    /* equal shares when all are long; the remainder goes to the oldest */
    stepcost_split((uint32_t[]){500, 400, 300}, 3, 64, out);
    assert_int_equal(out[0], 22);
    assert_int_equal(out[1], 21);
    assert_int_equal(out[2], 21);
    /* water-filling: 10 and 20 are served in full, the rest split */
    stepcost_split((uint32_t[]){10, 1000, 20, 1000}, 4, 100, out);
    assert_int_equal(out[0], 10);
    assert_int_equal(out[1], 35);
    assert_int_equal(out[2], 20);
    assert_int_equal(out[3], 35);
    /* fewer tokens than prompts: the oldest get one each */
    stepcost_split((uint32_t[]){50, 50, 50}, 3, 2, out);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[1], 1);
    assert_int_equal(out[2], 0);
    /* more than everyone needs */
    stepcost_split((uint32_t[]){5, 7}, 2, 100, out);
    assert_int_equal(out[0], 5);
    assert_int_equal(out[1], 7);
}

/* ---- the scheduler's step rules (made-up step cost through step_cost) ---- */

static void h_steps_copy(struct harness *h, struct sched_step_info *out, uint32_t *n)
{
    pthread_mutex_lock(&h->mu);
    *n = h->n_steps;
    memcpy(out, h->steps, (size_t)h->n_steps * sizeof(*out));
    pthread_mutex_unlock(&h->mu);
}

static struct sched_step_info steps_seen[STEPS_MAX];

/* One stream decodes (8-token prompt, seed); once it has 4 tokens a 300-token
 * prompt (seed + 1) arrives and is answered with one token; then the stream
 * is cancelled. Returns the step count when the long prompt arrived. */
static uint32_t h_long_prompt_beside_a_stream(struct harness *h, struct result *run,
                                              struct result *lng, uint32_t seed)
{
    llorch_token p8[8];
    static llorch_token p300[300];
    make_prompt(p8, 8, seed);
    make_prompt(p300, 300, seed + 1);
    struct sched_params p = greedy(400);
    p.ignore_eos = true;
    assert_int_equal(submit_tokens(h, run, "run", p8, 8, &p), 0);
    h_pump_until_tokens(h, run, 4, false);
    pthread_mutex_lock(&h->mu);
    uint32_t mark = h->n_steps;
    pthread_mutex_unlock(&h->mu);
    struct sched_params pl = greedy(2);
    pl.ignore_eos = true;
    assert_int_equal(submit_tokens(h, lng, "long", p300, 300, &pl), 0);
    h_wait_all(h, lng, 1);
    assert_int_equal(sched_cancel(h->s, run->id, SCHED_ERR_CANCELLED), 0);
    h_wait_all(h, run, 1);
    return mark;
}

static void sched_long_prompt_is_split_so_running_streams_keep_their_pace(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 4, .step_tokens = 256,
                                .fake_cost = true});
    static struct result run, lng;
    const uint32_t mark = h_long_prompt_beside_a_stream(&h, &run, &lng, 21);
    uint32_t n;
    h_steps_copy(&h, steps_seen, &n);
    /* The prompt went in chunks next to the stream's decode, which no step
     * skipped; past the first chunks (the model learns what a prompt token
     * costs) every step stayed within twice a decode step of one stream. */
    uint32_t mixed = 0, prefilled = 0;
    double target = 2 * fake_cost(0, 1);
    for (uint32_t i = mark; i < n && prefilled < 299; i++) {
        if (steps_seen[i].n_prefill == 0)
            continue;
        assert_int_equal(steps_seen[i].n_decode, 1);
        assert_true(steps_seen[i].n_prefill <= steps_seen[i].budget);
        prefilled += steps_seen[i].n_prefill;
        if (++mixed > 3)
            assert_true(fake_cost(steps_seen[i].n_prefill, steps_seen[i].n_decode) <=
                        target + 1e-9);
    }
    /* a last single prompt token goes in as a one-token entry, like a decode */
    assert_true(prefilled == 300 || prefilled == 299);
    /* 300 tokens at ~8 per step, not one 256-token stall */
    assert_true(mixed >= 300 / 16);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_explicit_itl_target_sizes_the_chunks(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 4, .step_tokens = 256,
                                .fake_cost = true, .itl_target_ms = 400});
    static struct result run, lng;
    const uint32_t mark = h_long_prompt_beside_a_stream(&h, &run, &lng, 31);
    struct sched_stats st;
    sched_stats(h.s, &st);
    assert_float_equal(st.cost.itl_target_s, 0.4, 1e-9);
    assert_float_equal(st.cost.prefill_token_s, 0.01, 2e-3);
    uint32_t n, mixed = 0, prefilled = 0, largest = 0;
    h_steps_copy(&h, steps_seen, &n);
    for (uint32_t i = mark; i < n && prefilled < 300; i++) {
        if (steps_seen[i].n_prefill == 0)
            continue;
        prefilled += steps_seen[i].n_prefill;
        if (++mixed > 3) {
            assert_true(fake_cost(steps_seen[i].n_prefill, steps_seen[i].n_decode) <= 0.4 + 1e-9);
            largest = LLORCH_MAX(largest, steps_seen[i].n_prefill);
        }
    }
    /* 400 ms - 125 ms leaves 27 prompt tokens a step */
    assert_true(largest >= 25 && largest <= 27);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_itl_target_pct_sizes_the_chunks_relative_to_the_decode_step(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 4, .step_tokens = 256,
                                .fake_cost = true, .itl_target_pct = 175});
    static struct result run, lng;
    const uint32_t mark = h_long_prompt_beside_a_stream(&h, &run, &lng, 41);
    /* 1.75 x the 105 ms decode step of one stream: 183.75 ms, which leaves
     * 5 prompt tokens a step (twice the decode step would leave 8) */
    double target = 1.75 * fake_cost(0, 1);
    uint32_t n, mixed = 0, prefilled = 0, largest = 0;
    h_steps_copy(&h, steps_seen, &n);
    for (uint32_t i = mark; i < n && prefilled < 300; i++) {
        if (steps_seen[i].n_prefill == 0)
            continue;
        assert_int_equal(steps_seen[i].n_decode, 1);
        prefilled += steps_seen[i].n_prefill;
        if (++mixed > 3) {
            assert_true(fake_cost(steps_seen[i].n_prefill, steps_seen[i].n_decode) <=
                        target + 1e-9);
            largest = LLORCH_MAX(largest, steps_seen[i].n_prefill);
        }
    }
    assert_int_equal(largest, 5);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_prompt_alone_prefills_in_the_largest_chunks(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 4, .step_tokens = 128,
                                .fake_cost = true});
    static struct result lng;
    static llorch_token p300[300];
    make_prompt(p300, 300, 41);
    struct sched_params pl = greedy(2);
    pl.ignore_eos = true;
    assert_int_equal(submit_tokens(&h, &lng, "long", p300, 300, &pl), 0);
    h_wait_all(&h, &lng, 1);
    uint32_t n;
    h_steps_copy(&h, steps_seen, &n);
    assert_true(n >= 3);
    assert_int_equal(steps_seen[0].n_prefill, 128);
    assert_int_equal(steps_seen[1].n_prefill, 128);
    assert_int_equal(steps_seen[2].n_prefill, 44);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_short_prompt_is_not_starved_behind_a_long_prefill(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 4, .step_tokens = 32,
                                .fake_cost = true});
    static struct result lng, shrt;
    static llorch_token p400[400];
    llorch_token p10[10];
    make_prompt(p400, 400, 51);
    make_prompt(p10, 10, 52);
    struct sched_params p = greedy(2);
    p.ignore_eos = true;
    assert_int_equal(submit_tokens(&h, &lng, "long", p400, 400, &p), 0);
    h_pump_until_started(&h, &lng, false);
    assert_int_equal(submit_tokens(&h, &shrt, "short", p10, 10, &p), 0);
    struct result both[2];
    h_wait_all(&h, &lng, 1);
    h_wait_all(&h, &shrt, 1);
    (void)both;
    /* 400 tokens take 13 steps of 32; the short prompt shares the next one */
    assert_true(shrt.first_token_seq < lng.first_token_seq);
    assert_true(shrt.started_seq > lng.started_seq);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_queued_requests_are_admitted_in_arrival_order(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 1});
    /* a long text prompt first: it is tokenised off the driver, and the
     * token prompts behind it still wait their turn */
    static char text[24000];
    for (size_t i = 0; i + 1 < sizeof(text); i++)
        text[i] = "once upon a time "[i % 17];
    text[sizeof(text) - 1] = '\0';
    static struct result r[5];
    llorch_token pr[8];
    make_prompt(pr, 8, 61);
    struct sched_params p = greedy(2);
    p.ignore_eos = true;
    struct sched_params pt = greedy(2);
    pt.ignore_eos = true;
    /* the text is far longer than the context: it ends with
     * CONTEXT_EXCEEDED after tokenising, without a STARTED */
    assert_int_equal(submit_text(&h, &r[0], "text-long", text, &pt), 0);
    assert_int_equal(submit_text(&h, &r[1], "text", "once upon a time", &pt), 0);
    char job[16];
    for (int i = 2; i < 5; i++) {
        snprintf(job, sizeof(job), "tok-%d", i);
        assert_int_equal(submit_tokens(&h, &r[i], job, pr, 8, &p), 0);
    }
    h_wait_all(&h, r, 5);
    assert_int_equal(r[0].terminal, SCHED_EV_ERROR);
    assert_int_equal(r[0].code, SCHED_ERR_CONTEXT_EXCEEDED);
    assert_int_equal(r[0].n_started, 0);
    for (int i = 1; i < 5; i++) {
        assert_int_equal(r[i].terminal, SCHED_EV_END);
        if (i > 1)
            assert_true(r[i].started_seq > r[i - 1].started_seq);
    }
    assert_kv_all_free(&h);
    h_close(&h);
}

/* ---- micro-batches: the made-up asynchronous engine (h_opts.groups) ---- */

#define N_GRP 24

/* Greedy outputs of n prompts, one step at a time on the synchronous engine. */
static void sync_outputs(struct result *out, llorch_token (*prompts)[128], const size_t *lens,
                         int n, uint64_t kv_blocks, uint32_t max_batch, uint32_t max_tok)
{
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .kv_blocks = kv_blocks,
                                .max_batch = max_batch, .step_tokens = 64});
    char job[32];
    for (int i = 0; i < n; i++) {
        struct sched_params p = greedy(max_tok);
        p.ignore_eos = true;
        snprintf(job, sizeof(job), "sync-%d", i);
        assert_int_equal(submit_tokens(&h, &out[i], job, prompts[i], lens[i], &p), 0);
    }
    h_wait_all(&h, out, (size_t)n);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_groups_in_flight_give_the_synchronous_streams(void **state)
{
    (void)state;
    static llorch_token prompts[N_GRP][128];
    static struct result ref[N_GRP], got[N_GRP];
    size_t lens[N_GRP];
    for (int i = 0; i < N_GRP; i++)
        lens[i] = make_prompt(prompts[i], 3 + (size_t)(i * 29) % 100, 900u + (uint32_t)i);
    sync_outputs(ref, prompts, lens, N_GRP, 0, 16, 24);
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 16, .step_tokens = 64,
                                .groups = 3, .group_latency_us = 2000});
    char job[32];
    for (int i = 0; i < N_GRP; i++) {
        struct sched_params p = greedy(24);
        p.ignore_eos = true;
        snprintf(job, sizeof(job), "grp-%d", i);
        assert_int_equal(submit_tokens(&h, &got[i], job, prompts[i], lens[i], &p), 0);
    }
    h_wait_all(&h, got, N_GRP);
    for (int i = 0; i < N_GRP; i++)
        assert_same_output(&ref[i], &got[i]);
    assert_int_equal(h.ae.max_in_flight, 3); /* the groups were in flight together */
    assert_int_equal(h.ae.violations, 0);
    assert_int_equal(h.ae.replay_errors, 0);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_groups_never_preempt_a_sequence_in_flight(void **state)
{
    (void)state;
    static llorch_token prompts[N_PRE][128];
    static struct result ref[N_PRE], got[N_PRE];
    size_t lens[N_PRE];
    for (int i = 0; i < N_PRE; i++)
        lens[i] = make_prompt(prompts[i], 20 + (size_t)i * 5, 500u + (uint32_t)i);
    sync_outputs(ref, prompts, lens, N_PRE, 12, 8, 40);
    struct harness h;
    /* 12 blocks (192 tokens) for 8 requests of up to ~100 tokens each */
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .kv_blocks = 12, .max_batch = 8,
                                .step_tokens = 64, .groups = 2, .group_latency_us = 1000});
    char job[32];
    for (int i = 0; i < N_PRE; i++) {
        struct sched_params p = greedy(40);
        p.ignore_eos = true;
        snprintf(job, sizeof(job), "pre-%d", i);
        assert_int_equal(submit_tokens(&h, &got[i], job, prompts[i], lens[i], &p), 0);
    }
    h_wait_all(&h, got, N_PRE);
    for (int i = 0; i < N_PRE; i++)
        assert_same_output(&ref[i], &got[i]);
    struct sched_stats st;
    sched_stats(h.s, &st);
    assert_true(st.preemptions > 0);
    assert_int_equal(h.ae.max_in_flight, 2);
    assert_int_equal(h.ae.violations, 0); /* no KV decision on a sequence in flight */
    assert_int_equal(h.ae.replay_errors, 0);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_cancel_and_timeout_of_a_sequence_in_flight_wait_for_its_group(void **state)
{
    (void)state;
    struct harness h;
    /* groups of one sequence each, 50 ms apiece: a cancel lands while the
     * sequence is in flight */
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 2, .groups = 2,
                                .group_latency_us = 50000});
    static struct result a, b, c;
    llorch_token prompt[8];
    make_prompt(prompt, 8, 3);
    struct sched_params p = greedy(400);
    p.ignore_eos = true;
    assert_int_equal(submit_tokens(&h, &a, "a", prompt, 8, &p), 0);
    assert_int_equal(submit_tokens(&h, &b, "b", prompt, 8, &p), 0);
    h_pump_until_tokens(&h, &a, 2, false);
    h_pump_until_tokens(&h, &b, 2, false);
    assert_int_equal(sched_cancel(h.s, a.id, SCHED_ERR_CANCELLED), 0);
    uint64_t until = now_ms() + WAIT_MS;
    while (!a.n_terminal) {
        assert_true(now_ms() < until);
        h_pump(&h, 20, false);
    }
    assert_int_equal(a.terminal, SCHED_EV_ERROR);
    assert_int_equal(a.code, SCHED_ERR_CANCELLED);
    /* b ran on beside it: cancel it too, and time out a third */
    assert_int_equal(sched_cancel(h.s, b.id, SCHED_ERR_CLIENT_TOO_SLOW), 0);
    p.timeout_ms = 300;
    assert_int_equal(submit_tokens(&h, &c, "c", prompt, 8, &p), 0);
    until = now_ms() + WAIT_MS;
    while (!b.n_terminal || !c.n_terminal) {
        assert_true(now_ms() < until);
        h_pump(&h, 20, false);
    }
    assert_int_equal(b.code, SCHED_ERR_CLIENT_TOO_SLOW);
    assert_int_equal(c.terminal, SCHED_EV_ERROR);
    assert_int_equal(c.code, SCHED_ERR_TIMEOUT);
    assert_true(c.n_tokens > 0); /* it ran before its time was up */
    assert_true(h.ae.groups_done > 4);
    assert_int_equal(h.ae.violations, 0); /* no free while in flight */
    assert_int_equal(h.ae.replay_errors, 0);
    assert_kv_all_free(&h);
    h_close(&h);
}

static void sched_shutdown_with_groups_in_flight_ends_everyone(void **state)
{
    (void)state;
    struct harness h;
    h_open(&h, &(struct h_opts){.model = "stories260k.gguf", .max_batch = 4, .groups = 2,
                                .group_latency_us = 20000});
    static struct result r[4];
    llorch_token prompt[8];
    make_prompt(prompt, 8, 5);
    struct sched_params p = greedy(400);
    p.ignore_eos = true;
    char job[32];
    for (int i = 0; i < 4; i++) {
        snprintf(job, sizeof(job), "s-%d", i);
        assert_int_equal(submit_tokens(&h, &r[i], job, prompt, 8, &p), 0);
    }
    h_pump_until_tokens(&h, &r[3], 2, false);
    sched_shutdown_now(h.s);
    h_wait_all(&h, r, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(r[i].code, SCHED_ERR_SHUTTING_DOWN);
    assert_int_equal(h.ae.violations, 0);
    assert_int_equal(h.ae.replay_errors, 0);
    h_close(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sched_fifty_greedy_requests_match_each_run_alone),
        cmocka_unit_test(sched_seeded_request_is_the_same_alone_and_among_63_others),
        cmocka_unit_test(sched_cancel_mid_flight_ends_with_cancelled_and_frees_blocks),
        cmocka_unit_test(sched_preemption_under_a_tiny_kv_cache_keeps_every_output),
        cmocka_unit_test(sched_full_queue_and_duplicate_job_are_refused),
        cmocka_unit_test(sched_bad_parameters_are_refused_at_submit),
        cmocka_unit_test(sched_requests_that_can_never_fit_end_with_context_exceeded),
        cmocka_unit_test(sched_prompt_over_the_byte_limit_ends_with_prompt_too_large),
        cmocka_unit_test(sched_timeout_ends_running_and_waiting_requests),
        cmocka_unit_test(sched_stop_string_ends_the_stream_before_the_match),
        cmocka_unit_test(sched_shared_prefix_is_reused_with_the_same_output),
        cmocka_unit_test(sched_on_step_reports_every_step_with_its_tokens),
        cmocka_unit_test(sched_on_step_reports_the_driver_time_between_forward_steps),
        cmocka_unit_test(sched_shutdown_ends_everything_and_refuses_new_work),
        cmocka_unit_test(sched_held_events_stall_the_driver_without_losing_tokens),
        cmocka_unit_test(sched_engine_smaller_than_the_batch_still_completes_everyone),
        cmocka_unit_test(sched_batch_window_gathers_arrivals_while_others_run),
        cmocka_unit_test(sched_batch_window_ends_early_when_the_batch_is_full),
        cmocka_unit_test(stepcost_fit_recovers_a_linear_step_cost),
        cmocka_unit_test(stepcost_budget_keeps_the_step_within_twice_a_decode_step),
        cmocka_unit_test(stepcost_budget_probes_before_a_prompt_chunk_was_measured),
        cmocka_unit_test(stepcost_target_holds_while_a_long_prefill_runs_slow),
        cmocka_unit_test(stepcost_split_serves_a_short_prompt_next_to_a_long_one),
        cmocka_unit_test(sched_long_prompt_is_split_so_running_streams_keep_their_pace),
        cmocka_unit_test(sched_explicit_itl_target_sizes_the_chunks),
        cmocka_unit_test(sched_itl_target_pct_sizes_the_chunks_relative_to_the_decode_step),
        cmocka_unit_test(sched_prompt_alone_prefills_in_the_largest_chunks),
        cmocka_unit_test(sched_short_prompt_is_not_starved_behind_a_long_prefill),
        cmocka_unit_test(sched_queued_requests_are_admitted_in_arrival_order),
        cmocka_unit_test(sched_groups_in_flight_give_the_synchronous_streams),
        cmocka_unit_test(sched_groups_never_preempt_a_sequence_in_flight),
        cmocka_unit_test(sched_cancel_and_timeout_of_a_sequence_in_flight_wait_for_its_group),
        cmocka_unit_test(sched_shutdown_with_groups_in_flight_ends_everyone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
