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
 * runs inline on the calling worker. No allocation. */
typedef void (*tpool_range_fn)(void *ctx, int64_t begin, int64_t end, int worker);
void tpool_parallel_for(struct tpool *p, int64_t n, int64_t grain, tpool_range_fn fn, void *ctx);

/* Index of the calling pool thread, or -1 outside the pool. */
int tpool_worker_index(void);

#endif
