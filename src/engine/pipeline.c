/* The MPI pipeline (see pipeline.h). Messages, all on MPI_COMM_WORLD:
 *
 *   start   stage -> 0   gather  struct pl_hello (KV blocks its budget holds, host)
 *           0 -> all     bcast   u32 common block count (0: give up)
 *           stage -> 0   gather  struct pl_ready (load result, sizes)
 *   step    0 -> stage   TAG_STEP    u32 words: kind, n_ops, ops, n_entries, entries
 *             op    = type, seq, n [, n tokens for SHARE_PREFIX]
 *             entry = seq, n_tokens, tokens[n_tokens]
 *           s -> s+1     TAG_HIDDEN  f32 [T, n_embd] then the trailer
 *           last -> 0    TAG_LOGITS  f32 [n_entries, n_vocab] then the trailer
 *             trailer = f32 status (0 or a negative llorch code), f32 ms per stage
 *           stage -> 0   TAG_BEAT    u32 the stage's rank, every stage_timeout_ms / 4
 *                                    while it computes a step (heartbeat)
 *
 * Waits poll (MPI_Test/MPI_Iprobe) with short sleeps instead of MPI's busy
 * polling, so that idle stages leave the cores to others. */
#include "pipeline.h"

#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gguf.h"
#include "llorch/error.h"
#include "util.h"

#define TAG_STEP 1
#define TAG_HIDDEN 2
#define TAG_LOGITS 3
#define TAG_BEAT 4
#define PL_STEP 1u
#define PL_QUIT 2u

struct pl_hello {
    uint32_t cap_blocks;
    char host[64];
};

struct pl_ready {
    int32_t rc;
    uint32_t n_ctx;
    int32_t dtype, kv_type;
    uint64_t weight_bytes, kv_bytes;
    char isa[16];
    char err[256];
};

/* One group in flight (micro-batches): its step message stays untouched
 * until its sends complete, its logits land in its own buffer. */
struct pl_slot {
    uint32_t *msg;                /* [msg_cap] */
    float *logits;                /* [max_seqs * n_vocab + trailer] */
    MPI_Request logits_rq;
    MPI_Request send_rq[PIPELINE_MAX_STAGES];
    struct forward_entry *entries; /* the caller's, until complete */
    uint32_t n;
    double t0;
};

struct pipeline {
    const struct model *m;
    struct pipeline_opts o;
    int n_stages;
    uint32_t first[PIPELINE_MAX_STAGES];
    uint32_t n_ctx;
    enum llorch_dtype dtype;
    enum llorch_kv_type kv_type;
    char isa[16];                 /* the first stage's kernel level */
    struct kv_cache *kv;          /* block tables only */
    uint32_t *msg;                /* the step message being built (swapped with a slot's) */
    size_t msg_cap, msg_len;      /* words */
    size_t ops_at;                /* index of n_ops */
    bool overflow;                /* the journal did not fit: the step fails */
    size_t logits_words;
    uint32_t n_slots;             /* groups in flight at most (pipeline_opts.max_groups) */
    struct pl_slot *slots;        /* [n_slots]: a ring of the groups in flight */
    uint32_t s_head, s_count;
    atomic_bool lost;             /* pipeline_abort: a rank is gone, no more MPI with it */
    double t_progress;            /* ms: the last result or heartbeat, or the submit that
                                   * found nothing in flight (the silence starts there) */
    double heard[PIPELINE_MAX_STAGES]; /* ms: each stage's last heartbeat or result */
    pthread_mutex_t mu;           /* the stage figures below (/health) */
    struct pipeline_stage_info stages[PIPELINE_MAX_STAGES];
    double last_ms;
};

/* ---- helpers ------------------------------------------------------------ */

static void pl_sleep_us(unsigned us)
{
    struct timespec ts = {0, (long)us * 1000L};
    nanosleep(&ts, NULL);
}

static bool pl_silent(struct pipeline *p);

/* Returns the element count received (receives) or 0; -1 as soon as lost
 * is set (NULL: never; the request is then left pending), or, with watch
 * (rank 0), once no stage has been heard from for its stage_timeout_ms. */
static int pl_wait(MPI_Request *rq, MPI_Datatype type, const atomic_bool *lost,
                   struct pipeline *watch)
{
    unsigned us = 0;
    for (;;) {
        if (lost && atomic_load(lost))
            return -1;
        int done = 0, count = 0;
        MPI_Status st;
        MPI_Test(rq, &done, &st);
        if (done) {
            if (type != MPI_DATATYPE_NULL)
                MPI_Get_count(&st, type, &count);
            return count;
        }
        if (watch && pl_silent(watch))
            return -1;
        if (us < 200)
            us += 10;
        pl_sleep_us(us);
    }
}

static double pl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

LLORCH_API int pipeline_layers_parse(const char *spec, uint32_t n_layer, uint32_t n_stages,
                                     uint32_t *first, char *err, size_t errlen)
{
    if (n_stages == 0 || n_stages > PIPELINE_MAX_STAGES || n_stages > n_layer)
        return llorch_errf(err, errlen, LLORCH_EINVAL,
                           "--pipeline: %u stages for %u layers (1..%d stages, at most one a "
                           "layer)",
                           n_stages, n_layer, PIPELINE_MAX_STAGES);
    if (!spec || !spec[0]) {
        for (uint32_t s = 0; s < n_stages; s++)
            first[s] = (uint32_t)((uint64_t)s * n_layer / n_stages);
        return 0;
    }
    uint32_t n = 0, next = 0;
    const char *p = spec;
    while (*p) {
        char *end;
        unsigned long a = strtoul(p, &end, 10);
        if (end == p || *end != '-')
            break;
        p = end + 1;
        unsigned long b = strtoul(p, &end, 10);
        if (end == p || a != next || b < a || b >= n_layer || n >= n_stages)
            break;
        first[n++] = (uint32_t)a;
        next = (uint32_t)b + 1;
        p = end;
        if (*p == ',')
            p++;
        else if (*p)
            break;
    }
    if (*p || n != n_stages || next != n_layer)
        return llorch_errf(err, errlen, LLORCH_EINVAL,
                           "--layers '%.64s': expected %u contiguous inclusive ranges A-B,C-D,... "
                           "covering layers 0..%u, one per stage",
                           spec, n_stages, n_layer - 1);
    return 0;
}

static uint32_t pl_last(const struct pipeline *p, int s)
{
    return s + 1 < p->n_stages ? p->first[s + 1] - 1 : p->m->hp.n_layer - 1;
}

/* The largest step message: journal ops between two steps (each admission
 * attempt: new + share of a whole prompt + free; reserves; frees) plus the
 * entries. */
static size_t pl_msg_cap(const struct forward_opts *fo, uint32_t n_ctx)
{
    const size_t seqs = fo->max_seqs + 1;
    return 16 + seqs * ((size_t)n_ctx + 24) + (size_t)fo->max_seqs * 3 + fo->max_step_tokens;
}

/* ---- coordinator ---------------------------------------------------------- */

static void pl_journal(void *ctx, const struct kv_op *op)
{
    struct pipeline *p = ctx;
    size_t need = 3 + (op->type == KV_OP_SHARE_PREFIX ? op->n : 0);
    if (p->msg_len + need > p->msg_cap) {
        p->overflow = true;
        return;
    }
    uint32_t *w = p->msg + p->msg_len;
    w[0] = (uint32_t)op->type;
    w[1] = op->seq;
    w[2] = op->n;
    if (op->type == KV_OP_SHARE_PREFIX)
        memcpy(w + 3, op->tokens, (size_t)op->n * sizeof *w);
    p->msg_len += need;
    p->msg[p->ops_at]++;
}

static void pl_msg_reset(struct pipeline *p)
{
    p->msg[0] = PL_STEP;
    p->msg[1] = 0; /* n_ops */
    p->ops_at = 1;
    p->msg_len = 2;
    p->overflow = false;
}

/* Takes the stages' heartbeats that have arrived. */
static void pl_take_beats(struct pipeline *p)
{
    for (;;) {
        int flag = 0;
        MPI_Status st;
        MPI_Iprobe(MPI_ANY_SOURCE, TAG_BEAT, MPI_COMM_WORLD, &flag, &st);
        if (!flag)
            return;
        uint32_t word;
        MPI_Recv(&word, 1, MPI_UINT32_T, st.MPI_SOURCE, TAG_BEAT, MPI_COMM_WORLD,
                 MPI_STATUS_IGNORE);
        p->t_progress = pl_now_ms();
        if (st.MPI_SOURCE >= 1 && st.MPI_SOURCE <= p->n_stages)
            p->heard[st.MPI_SOURCE - 1] = p->t_progress;
    }
}

/* No stage made progress for stage_timeout_ms: the pipeline is lost (once),
 * and the daemon is told why. */
static void pl_stalled(struct pipeline *p, double now)
{
    if (atomic_exchange(&p->lost, true))
        return;
    char why[512];
    int n = snprintf(why, sizeof why,
                     "no pipeline stage answered or computed for %u ms (a stage stopped or its "
                     "host is unreachable); last heard:",
                     p->o.stage_timeout_ms);
    for (int s = 0; s < p->n_stages && n > 0 && (size_t)n < sizeof why; s++)
        n += snprintf(why + n, sizeof why - (size_t)n, "%s rank %d %.0f ms ago", s ? "," : "",
                      s + 1, now - p->heard[s]);
    if (p->o.on_lost)
        p->o.on_lost(p->o.on_lost_ctx, why);
}

/* Rank 0, between polls of a request: takes the heartbeats that arrived,
 * then whether nothing was heard from any stage for stage_timeout_ms (a
 * frozen stage: MPI itself would wait for ever; the pipeline is then lost).
 * The heartbeats are taken before the clock is read, so that a coordinator
 * that was itself held up (an overloaded host) does not blame the stages. */
static bool pl_silent(struct pipeline *p)
{
    if (!p->o.stage_timeout_ms)
        return false;
    pl_take_beats(p);
    const double now = pl_now_ms();
    if (now - p->t_progress <= (double)p->o.stage_timeout_ms)
        return false;
    pl_stalled(p, now);
    return true;
}

static int pl_send_all(struct pipeline *p, const uint32_t *msg, size_t words)
{
    MPI_Request rq[PIPELINE_MAX_STAGES];
    for (int s = 0; s < p->n_stages; s++)
        MPI_Isend(msg, (int)words, MPI_UINT32_T, s + 1, TAG_STEP, MPI_COMM_WORLD, &rq[s]);
    for (int s = 0; s < p->n_stages; s++)
        if (pl_wait(&rq[s], MPI_DATATYPE_NULL, &p->lost, NULL) < 0)
            return LLORCH_ESTAGE_LOST; /* the sends stay pending: the process is ending */
    return 0;
}

static void pl_slots_free(struct pipeline *p)
{
    for (uint32_t s = 0; p->slots && s < p->n_slots; s++) {
        free(p->slots[s].msg);
        free(p->slots[s].logits);
    }
    free(p->slots);
    free(p->msg);
}

LLORCH_API int pipeline_coord_new(struct pipeline **out, const struct model *m,
                                  const struct pipeline_opts *o, char *err, size_t errlen)
{
    *out = NULL;
    struct pipeline *p = calloc(1, sizeof *p);
    if (!p)
        return LLORCH_ENOMEM;
    p->m = m;
    p->o = *o;
    p->n_stages = o->size - 1;
    atomic_init(&p->lost, false);
    pthread_mutex_init(&p->mu, NULL);
    int rc = pipeline_layers_parse(o->layers, m->hp.n_layer, (uint32_t)LLORCH_MAX(p->n_stages, 0),
                                   p->first, err, errlen);
    if (!rc && o->max_groups > PIPELINE_MAX_STAGES)
        rc = llorch_errf(err, errlen, LLORCH_EINVAL, "--pipeline-groups %u: at most %d",
                         o->max_groups, PIPELINE_MAX_STAGES);
    /* Every rank takes part in the start-up collectives, also on errors. */
    struct pl_hello me = {0}, *hello = calloc((size_t)o->size, sizeof *hello);
    struct pl_ready rme = {0}, *ready = calloc((size_t)o->size, sizeof *ready);
    if (!hello || !ready) {
        MPI_Abort(MPI_COMM_WORLD, 1); /* cannot even take part: end the job */
        return LLORCH_ENOMEM;
    }
    MPI_Gather(&me, sizeof me, MPI_BYTE, hello, sizeof me, MPI_BYTE, 0, MPI_COMM_WORLD);
    uint32_t blocks = UINT32_MAX;
    for (int r = 1; r < o->size; r++)
        blocks = LLORCH_MIN(blocks, hello[r].cap_blocks);
    if (rc || blocks == 0 || blocks == UINT32_MAX) {
        if (!rc)
            rc = llorch_errf(err, errlen, LLORCH_EINVAL,
                             "--kv-cache-mb holds no KV block on some stage");
        blocks = 0;
    }
    MPI_Bcast(&blocks, 1, MPI_UINT32_T, 0, MPI_COMM_WORLD);
    if (blocks) {
        MPI_Gather(&rme, sizeof rme, MPI_BYTE, ready, sizeof rme, MPI_BYTE, 0, MPI_COMM_WORLD);
        for (int r = 1; r < o->size && !rc; r++)
            if (ready[r].rc)
                rc = llorch_errf(err, errlen, ready[r].rc, "stage %d (rank %d on %.64s): %s", r - 1,
                                 r, hello[r].host, ready[r].err);
    }
    if (!rc) {
        p->n_ctx = ready[1].n_ctx;
        p->dtype = (enum llorch_dtype)ready[1].dtype;
        p->kv_type = (enum llorch_kv_type)ready[1].kv_type;
        snprintf(p->isa, sizeof p->isa, "%.15s", ready[1].isa);
        for (int s = 0; s < p->n_stages; s++) {
            struct pipeline_stage_info *si = &p->stages[s];
            si->rank = s + 1;
            snprintf(si->host, sizeof si->host, "%.63s", hello[s + 1].host);
            si->layer_first = p->first[s];
            si->layer_last = pl_last(p, s);
            si->weight_bytes = ready[s + 1].weight_bytes;
            si->kv_bytes = ready[s + 1].kv_bytes;
        }
        struct kv_cache_opts ko = {
            .type = p->kv_type, .n_layer = 0, .n_head_kv = m->hp.n_head_kv,
            .head_dim = m->hp.head_dim, .max_seqs = o->fo.max_seqs, .max_seq_len = p->n_ctx,
            .n_blocks = blocks,
        };
        p->msg_cap = pl_msg_cap(&o->fo, p->n_ctx);
        p->logits_words = (size_t)o->fo.max_seqs * m->hp.n_vocab + 1 + (size_t)p->n_stages;
        p->msg = malloc(p->msg_cap * sizeof *p->msg);
        p->n_slots = o->max_groups ? o->max_groups : (uint32_t)p->n_stages;
        p->slots = calloc(p->n_slots, sizeof *p->slots);
        bool ok = p->msg && p->slots;
        for (uint32_t s = 0; ok && s < p->n_slots; s++) {
            struct pl_slot *sl = &p->slots[s];
            sl->msg = malloc(p->msg_cap * sizeof *sl->msg);
            sl->logits = malloc(p->logits_words * sizeof *sl->logits);
            sl->logits_rq = MPI_REQUEST_NULL;
            for (int r = 0; r < PIPELINE_MAX_STAGES; r++)
                sl->send_rq[r] = MPI_REQUEST_NULL;
            ok = sl->msg && sl->logits;
        }
        if (!ok)
            rc = LLORCH_ENOMEM;
        else if ((rc = kv_cache_new(&p->kv, &ko)) < 0)
            (void)llorch_errf(err, errlen, rc, "the coordinator's KV tables: %s",
                              llorch_strerror(rc));
    }
    free(hello);
    free(ready);
    if (rc) {
        if (blocks) {
            uint32_t quit = PL_QUIT;
            (void)pl_send_all(p, &quit, 1);
        }
        kv_cache_free(p->kv);
        pl_slots_free(p);
        pthread_mutex_destroy(&p->mu);
        free(p);
        return rc;
    }
    pl_msg_reset(p);
    kv_cache_set_journal(p->kv, pl_journal, p);
    p->t_progress = pl_now_ms();
    for (int s = 0; s < p->n_stages; s++)
        p->heard[s] = p->t_progress;
    *out = p;
    return 0;
}

LLORCH_API void pipeline_free(struct pipeline *p)
{
    if (!p)
        return;
    if (!atomic_load(&p->lost)) {
        uint32_t quit = PL_QUIT;
        (void)pl_send_all(p, &quit, 1);
    } else {
        /* the buffers go: no pending receive may land in them later */
        for (uint32_t s = 0; s < p->n_slots; s++) {
            struct pl_slot *sl = &p->slots[s];
            if (sl->logits_rq != MPI_REQUEST_NULL) {
                MPI_Cancel(&sl->logits_rq);
                MPI_Request_free(&sl->logits_rq);
            }
            for (int r = 0; r < p->n_stages; r++)
                if (sl->send_rq[r] != MPI_REQUEST_NULL) {
                    MPI_Cancel(&sl->send_rq[r]);
                    MPI_Request_free(&sl->send_rq[r]);
                }
        }
    }
    kv_cache_free(p->kv);
    pl_slots_free(p);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

LLORCH_API uint32_t pipeline_max_groups(const struct pipeline *p)
{
    return p->n_slots;
}

/* Sends group `group` (the next slot of the ring) to every stage with the
 * journal since the last submit, and posts the receive of its logits.
 * The coordinator's tables record the entries' tokens now: a stage commits
 * them when it computes the group, before it applies the next group's
 * journal, so prefix reuse decided after this submit sees the same cache on
 * every rank. */
LLORCH_API int pipeline_submit(void *ctx, uint32_t group, struct forward_entry *entries,
                               uint32_t n)
{
    struct pipeline *p = ctx;
    if (n == 0 || n > p->o.fo.max_seqs || p->s_count >= p->n_slots ||
        group != (p->s_head + p->s_count) % p->n_slots)
        return LLORCH_EINVAL;
    if (atomic_load(&p->lost))
        return LLORCH_ESTAGE_LOST;
    struct pl_slot *sl = &p->slots[group];
    const uint32_t n_vocab = p->m->hp.n_vocab;
    /* the entries after the journal */
    size_t at = p->msg_len;
    size_t need = 1 + 2 * (size_t)n;
    for (uint32_t i = 0; i < n; i++) {
        if (entries[i].all_logits || !entries[i].logits || !entries[i].n_tokens)
            return LLORCH_EINVAL;
        need += entries[i].n_tokens;
    }
    if (p->overflow || at + need > p->msg_cap)
        return LLORCH_EINTERNAL;
    sl->t0 = pl_now_ms();
    if (p->s_count == 0)
        p->t_progress = sl->t0; /* nothing was in flight: no silence before this */
    p->msg[at++] = n;
    for (uint32_t i = 0; i < n; i++) {
        p->msg[at++] = kv_seq_index(p->kv, entries[i].seq);
        p->msg[at++] = entries[i].n_tokens;
        memcpy(p->msg + at, entries[i].tokens, (size_t)entries[i].n_tokens * sizeof *p->msg);
        at += entries[i].n_tokens;
    }
    /* the built message becomes the slot's (its last sends completed in
     * pipeline_complete); the slot's old buffer takes the next journal */
    uint32_t *msg = p->msg;
    p->msg = sl->msg;
    sl->msg = msg;
    pl_msg_reset(p);
    const size_t words = (size_t)n * n_vocab + 1 + (size_t)p->n_stages;
    MPI_Irecv(sl->logits, (int)words, MPI_FLOAT, p->n_stages, TAG_LOGITS, MPI_COMM_WORLD,
              &sl->logits_rq);
    for (int s = 0; s < p->n_stages; s++)
        MPI_Isend(sl->msg, (int)at, MPI_UINT32_T, s + 1, TAG_STEP, MPI_COMM_WORLD,
                  &sl->send_rq[s]);
    for (uint32_t i = 0; i < n; i++)
        kv_seq_commit(p->kv, entries[i].seq, entries[i].tokens, entries[i].n_tokens);
    sl->entries = entries;
    sl->n = n;
    p->s_count++;
    return 0;
}

/* Waits for the oldest group in flight and copies its logits out. After
 * pipeline_abort every group still in flight returns LLORCH_ESTAGE_LOST at
 * once (its requests stay pending for pipeline_free to cancel). */
LLORCH_API int pipeline_complete(void *ctx, uint32_t *group)
{
    struct pipeline *p = ctx;
    if (p->s_count == 0)
        return LLORCH_EINVAL;
    struct pl_slot *sl = &p->slots[p->s_head];
    *group = p->s_head;
    p->s_head = (p->s_head + 1) % p->n_slots;
    p->s_count--;
    const uint32_t n_vocab = p->m->hp.n_vocab;
    int got = pl_wait(&sl->logits_rq, MPI_FLOAT, &p->lost, p);
    if (got < 0)
        return LLORCH_ESTAGE_LOST;
    p->t_progress = p->heard[p->n_stages - 1] = pl_now_ms();
    for (int s = 0; s < p->n_stages; s++)
        if (pl_wait(&sl->send_rq[s], MPI_DATATYPE_NULL, &p->lost, p) < 0)
            return LLORCH_ESTAGE_LOST;
    if (got < 1 + p->n_stages)
        return LLORCH_EINTERNAL;
    const float *trailer = sl->logits + (size_t)got - 1 - (size_t)p->n_stages;
    pthread_mutex_lock(&p->mu);
    for (int s = 0; s < p->n_stages; s++)
        p->stages[s].last_step_ms = trailer[1 + s];
    p->last_ms = pl_now_ms() - sl->t0;
    pthread_mutex_unlock(&p->mu);
    if (trailer[0] != 0.0f)
        return (int)trailer[0];
    if ((size_t)got != (size_t)sl->n * n_vocab + 1 + (size_t)p->n_stages)
        return LLORCH_EINTERNAL;
    for (uint32_t i = 0; i < sl->n; i++)
        memcpy(sl->entries[i].logits, sl->logits + (size_t)i * n_vocab,
               (size_t)n_vocab * sizeof(float));
    return 0;
}

/* One step, nothing else in flight: a submit and its complete. */
LLORCH_API int pipeline_step(void *ctx, struct forward_entry *entries, uint32_t n)
{
    struct pipeline *p = ctx;
    if (n == 0)
        return 0;
    if (p->s_count != 0)
        return LLORCH_EINVAL;
    int rc = pipeline_submit(p, p->s_head, entries, n);
    if (rc < 0)
        return rc;
    uint32_t group;
    return pipeline_complete(p, &group);
}

LLORCH_API void pipeline_abort(struct pipeline *p)
{
    atomic_store(&p->lost, true);
}

LLORCH_API struct kv_cache *pipeline_kv(struct pipeline *p)
{
    return p->kv;
}

LLORCH_API uint32_t pipeline_n_ctx(const struct pipeline *p)
{
    return p->n_ctx;
}

LLORCH_API uint32_t pipeline_n_stages(const struct pipeline *p)
{
    return (uint32_t)p->n_stages;
}

LLORCH_API enum llorch_dtype pipeline_dtype(const struct pipeline *p)
{
    return p->dtype;
}

LLORCH_API enum llorch_kv_type pipeline_kv_type(const struct pipeline *p)
{
    return p->kv_type;
}

LLORCH_API const char *pipeline_isa_name(const struct pipeline *p)
{
    return p->isa;
}

LLORCH_API void pipeline_stage(struct pipeline *p, uint32_t i, struct pipeline_stage_info *out)
{
    pthread_mutex_lock(&p->mu);
    *out = p->stages[i < (uint32_t)p->n_stages ? i : 0];
    pthread_mutex_unlock(&p->mu);
}

LLORCH_API double pipeline_last_step_ms(struct pipeline *p)
{
    pthread_mutex_lock(&p->mu);
    double ms = p->last_ms;
    pthread_mutex_unlock(&p->mu);
    return ms;
}

/* ---- stages ------------------------------------------------------------------ */

LLORCH_API int pipeline_stage_load(struct model **out, const char *path,
                                   const struct pipeline_opts *o, char *err, size_t errlen)
{
    /* the layer count first (the metadata's part only), then the share */
    struct model *meta = NULL;
    int rc = model_load_layers(&meta, path, 0, 0, err, errlen);
    if (rc)
        return rc;
    uint32_t starts[PIPELINE_MAX_STAGES];
    const uint32_t n_layer = meta->hp.n_layer, n_stages = (uint32_t)(o->size - 1);
    const uint32_t stage = (uint32_t)(o->rank - 1);
    model_free(meta);
    rc = pipeline_layers_parse(o->layers, n_layer, n_stages, starts, err, errlen);
    if (rc)
        return rc;
    return model_load_layers(out, path, starts[stage],
                             stage + 1 < n_stages ? starts[stage + 1] : n_layer, err, errlen);
}

/* Applies the journal and builds the entries of one step message; returns 0
 * or a negative code. */
static int pl_stage_parse(struct kv_cache *kv, const uint32_t *msg, size_t len,
                          struct forward_entry *e, uint32_t max_seqs, uint32_t *n_out,
                          int64_t *n_tok)
{
    size_t at = 1;
    if (at >= len)
        return LLORCH_EFORMAT;
    uint32_t n_ops = msg[at++];
    for (uint32_t i = 0; i < n_ops; i++) {
        if (at + 3 > len)
            return LLORCH_EFORMAT;
        struct kv_op op = {(enum kv_op_type)msg[at], msg[at + 1], msg[at + 2], NULL};
        at += 3;
        if (op.type == KV_OP_SHARE_PREFIX) {
            if (op.n > len - at)
                return LLORCH_EFORMAT;
            op.tokens = (const llorch_token *)(msg + at);
            at += op.n;
        }
        int rc = kv_cache_replay(kv, &op);
        if (rc)
            return rc;
    }
    if (at >= len)
        return LLORCH_EFORMAT;
    uint32_t n = msg[at++];
    if (n == 0 || n > max_seqs)
        return LLORCH_EFORMAT;
    *n_tok = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (at + 2 > len)
            return LLORCH_EFORMAT;
        struct kv_seq *seq = kv_seq_at(kv, msg[at]);
        uint32_t nt = msg[at + 1];
        at += 2;
        if (!seq || nt == 0 || nt > len - at)
            return LLORCH_EFORMAT;
        e[i] = (struct forward_entry){.seq = seq, .tokens = (const llorch_token *)(msg + at),
                                      .n_tokens = nt};
        at += nt;
        *n_tok += nt;
    }
    *n_out = n;
    return 0;
}

/* Waits for the next message from rank 0 into msg; returns its length. */
static size_t pl_stage_recv(uint32_t *msg, size_t cap)
{
    unsigned us = 0;
    for (;;) {
        int flag = 0;
        MPI_Status st;
        MPI_Iprobe(0, TAG_STEP, MPI_COMM_WORLD, &flag, &st);
        if (flag) {
            int count = 0;
            MPI_Get_count(&st, MPI_UINT32_T, &count);
            if (count <= 0 || (size_t)count > cap) {
                MPI_Abort(MPI_COMM_WORLD, 3); /* a protocol bug: end the job */
                return 0;
            }
            MPI_Recv(msg, count, MPI_UINT32_T, 0, TAG_STEP, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            return (size_t)count;
        }
        if (us < 1000)
            us += 20;
        pl_sleep_us(us);
    }
}

/* A stage's heartbeat. While the stage computes a step it makes no MPI
 * call for as long as the step takes (seconds for a long prompt chunk on a
 * slow CPU); meanwhile this thread sends rank 0 one word every interval, so
 * that rank 0 tells a long step from a stage that stopped. MPI is
 * initialised MPI_THREAD_SERIALIZED: every MPI call of the stage is made
 * under mu, which the stage loop holds except while it computes. Idle (no
 * step), the thread sleeps on cv: no wake-ups, no messages. */
struct pl_beat {
    pthread_mutex_t mu;
    pthread_cond_t cv;            /* CLOCK_MONOTONIC */
    pthread_t thread;
    bool running, computing, stop;
    double interval_ms, since, sent; /* since: this compute began; sent: the last beat */
    uint32_t word;                /* the stage's rank */
    MPI_Request rq;
};

static void *pl_beat_main(void *arg)
{
    struct pl_beat *b = arg;
    pthread_mutex_lock(&b->mu);
    while (!b->stop) {
        if (!b->computing) {
            pthread_cond_wait(&b->cv, &b->mu);
            continue;
        }
        const double due = LLORCH_MAX(b->since, b->sent) + b->interval_ms;
        const double now = pl_now_ms();
        if (now < due) {
            const double at_ms = due - now;
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            long long ns = ts.tv_nsec + (long long)(at_ms * 1e6);
            ts.tv_sec += (time_t)(ns / 1000000000LL);
            ts.tv_nsec = (long)(ns % 1000000000LL);
            (void)pthread_cond_timedwait(&b->cv, &b->mu, &ts);
            continue;
        }
        int done = 1;
        if (b->rq != MPI_REQUEST_NULL)
            MPI_Test(&b->rq, &done, MPI_STATUS_IGNORE);
        if (done) /* else the last beat is still on its way: one at a time */
            MPI_Isend(&b->word, 1, MPI_UINT32_T, 0, TAG_BEAT, MPI_COMM_WORLD, &b->rq);
        b->sent = now;
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* Starts the heartbeat (interval_ms 0: none); the caller then holds mu. */
static void pl_beat_start(struct pl_beat *b, uint32_t interval_ms, int rank)
{
    *b = (struct pl_beat){.interval_ms = interval_ms, .word = (uint32_t)rank,
                          .rq = MPI_REQUEST_NULL};
    if (!interval_ms)
        return;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&b->mu);
    b->running = pthread_create(&b->thread, NULL, pl_beat_main, b) == 0;
    if (!b->running) { /* no heartbeat: a long step may then be taken for a lost stage */
        pthread_mutex_unlock(&b->mu);
        pthread_cond_destroy(&b->cv);
        pthread_mutex_destroy(&b->mu);
    }
}

/* Around a step's compute: the thread may make MPI calls meanwhile. */
static void pl_beat_compute(struct pl_beat *b, bool on)
{
    if (!b->running)
        return;
    if (!on)
        pthread_mutex_lock(&b->mu);
    b->computing = on;
    if (on) {
        b->since = pl_now_ms();
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
    }
}

static void pl_beat_stop(struct pl_beat *b)
{
    if (!b->running)
        return;
    b->stop = true;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    if (b->rq != MPI_REQUEST_NULL)
        (void)pl_wait(&b->rq, MPI_DATATYPE_NULL, NULL, NULL);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    b->running = false;
}

LLORCH_API int pipeline_stage_run(const struct model *m, const struct pipeline_opts *o, char *err,
                                  size_t errlen)
{
    const int stage = o->rank - 1, n_stages = o->size - 1;
    const bool first = stage == 0, last = stage == n_stages - 1;
    uint32_t starts[PIPELINE_MAX_STAGES];
    int rc = pipeline_layers_parse(o->layers, m->hp.n_layer, (uint32_t)n_stages, starts, err,
                                   errlen);
    struct forward_opts fo = o->fo;
    if (!rc) {
        fo.layer_first = starts[stage];
        fo.layer_end = stage + 1 < n_stages ? starts[stage + 1] : m->hp.n_layer;
    }
    struct pl_hello me = {0};
    uint64_t per_block = rc ? 0 : forward_kv_block_bytes(m, &fo);
    uint64_t cap = per_block ? fo.kv_bytes / per_block : 0;
    me.cap_blocks = rc ? 0 : (uint32_t)LLORCH_MIN(cap, (uint64_t)(UINT32_MAX / 4));
    gethostname(me.host, sizeof me.host - 1);
    MPI_Gather(&me, sizeof me, MPI_BYTE, NULL, 0, MPI_BYTE, 0, MPI_COMM_WORLD);
    uint32_t blocks = 0;
    MPI_Bcast(&blocks, 1, MPI_UINT32_T, 0, MPI_COMM_WORLD);
    if (blocks == 0)
        return rc ? rc : llorch_errf(err, errlen, LLORCH_EINVAL, "the coordinator gave up");
    fo.kv_blocks = blocks;
    struct forward *fw = NULL;
    struct pl_ready ready = {0};
    if (!rc)
        rc = forward_new(&fw, m, &fo, ready.err, sizeof ready.err);
    else
        snprintf(ready.err, sizeof ready.err, "%s", err);
    const uint32_t n_vocab = m->hp.n_vocab;
    const size_t msg_cap = pl_msg_cap(&fo, fw ? forward_n_ctx(fw) : 1);
    const size_t trailer = 1 + (size_t)n_stages;
    const size_t hidden_words = (size_t)fo.max_step_tokens * m->hp.n_embd + trailer;
    const size_t out_words = last ? (size_t)fo.max_seqs * n_vocab + trailer : hidden_words;
    uint32_t *msg = NULL;
    float *hin = NULL, *hout = NULL, *hbuf[2] = {NULL, NULL};
    MPI_Request out_rq[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    unsigned cur = 0;
    struct forward_entry *e = calloc(fo.max_seqs, sizeof *e);
    if (!rc) {
        msg = malloc(msg_cap * sizeof *msg);
        hin = malloc(hidden_words * sizeof *hin);
        hbuf[0] = malloc(out_words * sizeof *hout);
        hbuf[1] = malloc(out_words * sizeof *hout);
        if (!msg || !hin || !hbuf[0] || !hbuf[1] || !e) {
            rc = LLORCH_ENOMEM;
            snprintf(ready.err, sizeof ready.err, "out of memory");
        }
    }
    if (fw)
        gguf_release_pages(m->file); /* packed: only the embedding rows are read again */
    ready.rc = rc;
    if (fw) {
        ready.n_ctx = forward_n_ctx(fw);
        ready.dtype = (int32_t)forward_dtype(fw);
        ready.kv_type = (int32_t)forward_kv_type(fw);
        ready.weight_bytes = forward_weight_bytes(fw);
        snprintf(ready.isa, sizeof ready.isa, "%.15s", forward_isa_name(fw));
        ready.kv_bytes = (uint64_t)blocks * per_block;
    }
    MPI_Gather(&ready, sizeof ready, MPI_BYTE, NULL, 0, MPI_BYTE, 0, MPI_COMM_WORLD);

    /* Serve steps until QUIT (the coordinator also sends QUIT after a failed
     * start). On a failed start msg may be NULL: read into a word. */
    uint32_t quit_word;
    struct pl_beat beat;
    pl_beat_start(&beat, rc ? 0 : LLORCH_MAX(o->stage_timeout_ms / 4, o->stage_timeout_ms ? 1u : 0u),
                  o->rank);
    for (;;) {
        size_t len = msg ? pl_stage_recv(msg, msg_cap) : pl_stage_recv(&quit_word, 1);
        const uint32_t kind = msg ? msg[0] : quit_word;
        if (kind != PL_STEP || !msg)
            break;
        uint32_t n = 0;
        int64_t T = 0;
        int st = pl_stage_parse(forward_kv(fw), msg, len, e, fo.max_seqs, &n, &T);
        if (st) {
            /* the caches no longer agree with the coordinator's: a bug */
            fprintf(stderr, "llorch-cpud stage %d: a step message does not apply: %s\n", stage,
                    llorch_strerror(st));
            MPI_Abort(MPI_COMM_WORLD, 4);
        }
        MPI_Request rq;
        const float *in_trailer = NULL;
        if (!first) {
            MPI_Irecv(hin, (int)hidden_words, MPI_FLOAT, o->rank - 1, TAG_HIDDEN, MPI_COMM_WORLD,
                      &rq);
            int got = pl_wait(&rq, MPI_FLOAT, NULL, NULL);
            if (got < (int)trailer)
                MPI_Abort(MPI_COMM_WORLD, 4); /* a protocol bug */
            in_trailer = hin + (got - (int)trailer);
            if (in_trailer[0] != 0.0f)
                st = (int)in_trailer[0]; /* an earlier stage failed: pass it on */
            else if ((size_t)got != (size_t)T * m->hp.n_embd + trailer)
                st = LLORCH_EINTERNAL;
        }
        /* two output buffers: the send of group g goes on while g+1 is
         * received and computed; g's buffer is reused for g+2 only once its
         * send has completed */
        hout = hbuf[cur];
        if (out_rq[cur] != MPI_REQUEST_NULL)
            (void)pl_wait(&out_rq[cur], MPI_DATATYPE_NULL, NULL, NULL);
        double t0 = pl_now_ms(); /* this stage's compute, not its wait for input */
        if (!st) {
            for (uint32_t i = 0; i < n; i++)
                e[i].logits = last ? hout + (size_t)i * n_vocab : NULL;
            pl_beat_compute(&beat, true);
            st = forward_step_hidden(fw, e, n, first ? NULL : hin, last ? NULL : hout);
            pl_beat_compute(&beat, false);
        }
        size_t out_len = st ? 0 : last ? (size_t)n * n_vocab : (size_t)T * m->hp.n_embd;
        float *tr = hout + out_len;
        tr[0] = (float)st;
        for (int s = 0; s < n_stages; s++)
            tr[1 + s] = in_trailer && s < stage ? in_trailer[1 + s] : 0.0f;
        tr[1 + stage] = (float)(pl_now_ms() - t0);
        MPI_Isend(hout, (int)(out_len + trailer), MPI_FLOAT, last ? 0 : o->rank + 1,
                  last ? TAG_LOGITS : TAG_HIDDEN, MPI_COMM_WORLD, &out_rq[cur]);
        cur ^= 1u;
    }
    pl_beat_stop(&beat);
    for (int b = 0; b < 2; b++)
        if (out_rq[b] != MPI_REQUEST_NULL)
            (void)pl_wait(&out_rq[b], MPI_DATATYPE_NULL, NULL, NULL);
    free(msg);
    free(hin);
    free(hbuf[0]);
    free(hbuf[1]);
    free(e);
    forward_free(fw);
    return rc;
}
