/* One model split by layers over MPI ranks (ChatLoop's coordinator and
 * stages, on Open MPI): rank 0, the coordinator, runs the scheduler with
 * pipeline_step as its engine and a KV cache of block tables only; ranks
 * 1..S are stages, each packing only its layer range (the first also the
 * token embedding, the last the output norm and head) and holding its
 * layers' K/V. Per step the coordinator sends every stage the journal of
 * the scheduler's KV decisions since the last step (admit, preempt, free,
 * prefix reuse: replayed on identical caches) and the step's tokens; the
 * hidden states [T, n_embd] flow stage to stage and the last stage sends
 * the logits back. Same kernels, same order: the logits are bit-identical
 * to one process. Built only with MPI (LLORCH_HAVE_MPI). MPI must be
 * initialised with at least MPI_THREAD_SERIALIZED; calls on rank 0 come
 * from one thread at a time (the loader, then the step driver, then the
 * closer). A lost rank ends the job (MPI's default error handler, or the
 * launcher's SIGTERM then SIGKILL to every rank); the coordinator, told by
 * pipeline_abort, fails every group in flight at once so that their streams end
 * with an error frame before that. A stage that stops answering without
 * MPI noticing (frozen, or its host cut off) is found by the coordinator
 * itself: no result and no heartbeat for stage_timeout_ms. */
#ifndef LLORCH_PIPELINE_H
#define LLORCH_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "kv.h"
#include "model.h"

#define PIPELINE_MAX_STAGES 64

struct pipeline_opts {
    struct forward_opts fo; /* as for one process; layer_first/end/kv_blocks are set here */
    const char *layers;     /* "0-7,8-15,...": one inclusive range per stage; NULL/"" = even */
    int rank, size;         /* MPI_COMM_WORLD; stages = size - 1 */
    uint32_t max_groups;    /* coordinator: groups in flight at most (1..PIPELINE_MAX_STAGES);
                             * 0 = one per stage */
    /* A lost stage that MPI does not notice (a frozen process, a host whose
     * network vanished: no connection closes). Every rank: 0 = never.
     * A stage sends rank 0 a heartbeat every stage_timeout_ms / 4 while it
     * computes a step; rank 0, waiting for a group, gives up when neither a
     * result nor a heartbeat came for stage_timeout_ms. So the bound is on
     * silence, not on a step's time: a long prefill chunk on a slow CPU
     * beats all along, while the time of a transfer (the largest message, a
     * group's logits, max_seqs x n_vocab x 4 bytes) must fit in it. */
    uint32_t stage_timeout_ms;
    /* Rank 0: called once, on the thread that waited (the step driver),
     * when the pipeline gave up on a silent stage: from then on it is lost
     * as after pipeline_abort. why is valid during the call only. */
    void (*on_lost)(void *ctx, const char *why);
    void *on_lost_ctx;
};

/* A stage as the coordinator sees it (for /health). */
struct pipeline_stage_info {
    int rank;
    char host[64];
    uint32_t layer_first, layer_last; /* inclusive */
    uint64_t weight_bytes, kv_bytes;
    double last_step_ms;              /* that stage's compute of the last step */
};

struct pipeline;

/* Splits "A-B,C-D" or evenly: first layer of each of n stages into first[];
 * 0 or LLORCH_EINVAL with a message. */
int pipeline_layers_parse(const char *spec, uint32_t n_layer, uint32_t n_stages, uint32_t *first,
                          char *err, size_t errlen);

/* Rank 0: waits for every stage to load, agrees the KV block count (the
 * smallest any stage's --kv-cache-mb holds) and makes the table-only cache. */
int pipeline_coord_new(struct pipeline **out, const struct model *m, const struct pipeline_opts *o,
                       char *err, size_t errlen);
/* Tells the stages to exit, frees. NULL is safe. */
void pipeline_free(struct pipeline *p);
/* The scheduler's engine (sched_opts.step): one step through every stage,
 * with no group in flight. */
int pipeline_step(void *p, struct forward_entry *entries, uint32_t n);
/* Micro-batches (sched_opts.submit/complete/max_groups): up to
 * pipeline_max_groups (pipeline_opts.max_groups, by default the stage
 * count) groups in flight, submitted in
 * ring order (group = the next slot) and completed oldest first; each
 * group's entries and logits stay untouched until its complete. */
int pipeline_submit(void *p, uint32_t group, struct forward_entry *entries, uint32_t n);
int pipeline_complete(void *p, uint32_t *group);
uint32_t pipeline_max_groups(const struct pipeline *p);
/* A rank is gone (any thread): the step in flight and every later one
 * return LLORCH_ESTAGE_LOST at once, no MPI call waits on a stage any more,
 * and pipeline_free sends the stages nothing. */
void pipeline_abort(struct pipeline *p);
struct kv_cache *pipeline_kv(struct pipeline *p);
uint32_t pipeline_n_ctx(const struct pipeline *p);
uint32_t pipeline_n_stages(const struct pipeline *p);
enum llorch_dtype pipeline_dtype(const struct pipeline *p);
enum llorch_kv_type pipeline_kv_type(const struct pipeline *p);
const char *pipeline_isa_name(const struct pipeline *p); /* the stages' kernel level */
/* Thread-safe snapshot of stage i (0-based). */
void pipeline_stage(struct pipeline *p, uint32_t i, struct pipeline_stage_info *out);
double pipeline_last_step_ms(struct pipeline *p);

/* Ranks 1..S: the model with only this stage's layers (o->rank, o->size,
 * o->layers): of split files only the parts that hold them are mapped (see
 * model_load_layers); path may also be the stage's own part. */
int pipeline_stage_load(struct model **out, const char *path, const struct pipeline_opts *o,
                        char *err, size_t errlen);

/* Ranks 1..S: loads the range, serves steps until the coordinator says
 * stop; with o->stage_timeout_ms, a heartbeat thread tells rank 0 that a
 * long step is still being computed. Returns 0, or an error (reported to
 * the coordinator while loading). */
int pipeline_stage_run(const struct model *m, const struct pipeline_opts *o, char *err,
                       size_t errlen);

#endif
