/* Work-stealing thread pool: one worker per core, per-worker deques with
 * random stealing, fork-join parallel_for. The thread that calls
 * tpool_parallel_for() takes part as worker 0; the pool owns n_threads - 1
 * more. Workers spin briefly, then sleep, so an idle server uses ~0% CPU. */
#ifndef LLORCH_TPOOL_H
#define LLORCH_TPOOL_H

#include <stdbool.h>
#include <stdint.h>

struct tpool;

struct tpool_opts {
    int n_threads;        /* total workers including the caller; <= 0: number of online CPUs */
    bool pin;             /* pin worker i to the i-th CPU of the process affinity mask */
    const char *name;     /* thread name prefix, e.g. "llorch-w" */
    uint32_t spin_us;     /* spin this long before sleeping (default when 0: 50) */
};

int tpool_new(struct tpool **out, const struct tpool_opts *opts);
void tpool_free(struct tpool *p); /* NULL is safe; joins the workers */
int tpool_size(const struct tpool *p);

/* fn(ctx, begin, end, worker) over [0, n) in chunks of at least grain
 * indices; worker is in [0, tpool_size). Returns when every chunk has run.
 * Call from one thread at a time (the step driver); a call from inside a task
 * runs inline on the calling worker. No allocation. A NULL pool runs
 * everything inline on the caller as worker 0. */
typedef void (*tpool_range_fn)(void *ctx, int64_t begin, int64_t end, int worker);
void tpool_parallel_for(struct tpool *p, int64_t n, int64_t grain, tpool_range_fn fn, void *ctx);

/* Index of the calling pool thread, or -1 outside the pool. */
int tpool_worker_index(void);

/* True while the calling thread runs a task of some pool (a nested
 * tpool_parallel_for would run inline). */
bool tpool_in_task(void);

/* One context object per compute module per pool (matmul keeps its oneDNN
 * engine, per-worker streams and scratch there), so per-worker resources live
 * as long as the pool without any process-wide state. tpool_free() calls
 * free_fn(obj) after joining the workers. Driver thread only, outside
 * tpool_parallel_for. Setting a slot that is already set replaces it without
 * freeing the old object. */
/* Slots 0..TPOOL_SLOTS-1: each client claims one in its own header
 * (matmul.h: TPOOL_SLOT_MATMUL), so the pool names none of its clients. An
 * out-of-range slot reads NULL and is not set. */
#define TPOOL_SLOTS 4u
typedef void (*tpool_slot_free_fn)(void *obj);
void *tpool_slot_get(const struct tpool *p, unsigned slot);
void tpool_slot_set(struct tpool *p, unsigned slot, void *obj, tpool_slot_free_fn free_fn);

#endif
