/* Work-stealing thread pool. Each worker owns a fixed-size Chase-Lev deque
 * (C11 atomics, Lê et al. 2013) of ranges of chunk indices; a parallel_for
 * pushes the whole range on the caller's deque, and whoever takes a range
 * splits it in halves down to one chunk (pushing the upper halves, so
 * thieves take the biggest pieces first and owners walk their chunks in
 * ascending order). Workers without work steal from random victims; after
 * spin_us with nothing found they sleep on a futex that a push wakes, so an
 * idle pool costs no CPU and no stealable range waits for a sleeper. */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "llorch/error.h"
#include "tpool.h"
#include "util.h"

#define TPOOL_MAX_THREADS 1024
/* A range of at most 2^32 chunks splits into at most 32 halves, and an owner
 * only splits the range it just took, so a deque never holds more than ~33
 * entries; a full deque makes the owner run the range unsplit instead. */
#define TPOOL_DEQUE_CAP 64
#define TPOOL_DEFAULT_SPIN_US 50
#define TPOOL_CACHELINE 64

/* Per-thread identity: which pool thread this is and whether it is inside a
 * task (a nested parallel_for then runs inline). Thread-local, not shared. */
static _Thread_local int tl_worker = -1;
static _Thread_local int tl_in_task;

struct tpool_deque {
    _Alignas(TPOOL_CACHELINE) _Atomic int64_t top;   /* thieves advance it */
    _Alignas(TPOOL_CACHELINE) _Atomic int64_t bottom; /* the owner moves it */
    _Alignas(TPOOL_CACHELINE) _Atomic uint64_t buf[TPOOL_DEQUE_CAP];
};

struct tpool_worker {
    struct tpool_deque dq;
    struct tpool *pool;
    int index;
    bool started;
    pthread_t thread;
    uint64_t rng; /* xorshift state for victim choice, owned by this worker */
};

struct tpool_job {
    tpool_range_fn fn;
    void *ctx;
    int64_t n;
    int64_t grain;
};

struct tpool {
    int n;          /* workers including the caller (worker 0) */
    uint64_t spin_ns;
    struct tpool_worker *w; /* [n], cache-line aligned */

    /* Written by the caller before it publishes a job (its push), read by a
     * worker after it takes a range of that job: the deque's release/acquire
     * orders them, and the caller rewrites them only after remaining hit 0,
     * i.e. after every reader finished. */
    struct tpool_job job;

    _Alignas(TPOOL_CACHELINE) _Atomic int64_t remaining; /* chunks not yet run */
    _Atomic uint32_t done;            /* futex word: 1 once remaining hit 0 */
    _Atomic int caller_sleeping;
    /* futex word of sleeping workers: bumped by a push that finds sleepers,
     * and by tpool_free */
    _Alignas(TPOOL_CACHELINE) _Atomic uint32_t wake;
    _Atomic int n_sleeping;
    _Atomic bool stop;
    _Atomic bool busy; /* a parallel_for is running (one driver at a time) */

    void *slot_obj[TPOOL_SLOTS];
    tpool_slot_free_fn slot_free[TPOOL_SLOTS];
};

/* ---- small helpers ---- */

static inline void tpool_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

static uint64_t tpool_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void tpool_futex_wait(_Atomic uint32_t *addr, uint32_t expected)
{
    /* EAGAIN (value changed) and EINTR both just mean "look again". */
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void tpool_futex_wake(_Atomic uint32_t *addr, int count)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

static uint32_t tpool_rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return (uint32_t)(x >> 32);
}

static inline uint64_t tpool_range_pack(uint32_t begin, uint32_t end)
{
    return (uint64_t)begin << 32 | end;
}

/* ---- Chase-Lev deque with a fixed ring (no resizing) ---- */

static bool tpool_deque_push(struct tpool_deque *q, uint64_t v)
{
    int64_t b = atomic_load_explicit(&q->bottom, memory_order_relaxed);
    int64_t t = atomic_load_explicit(&q->top, memory_order_acquire);
    if (b - t >= TPOOL_DEQUE_CAP)
        return false;
    atomic_store_explicit(&q->buf[b & (TPOOL_DEQUE_CAP - 1)], v, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&q->bottom, b + 1, memory_order_relaxed);
    return true;
}

static bool tpool_deque_pop(struct tpool_deque *q, uint64_t *out)
{
    int64_t b = atomic_load_explicit(&q->bottom, memory_order_relaxed) - 1;
    atomic_store_explicit(&q->bottom, b, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    int64_t t = atomic_load_explicit(&q->top, memory_order_relaxed);
    bool ok = false;
    if (t <= b) {
        *out = atomic_load_explicit(&q->buf[b & (TPOOL_DEQUE_CAP - 1)], memory_order_relaxed);
        ok = true;
        if (t == b) { /* last element: race the thieves for it */
            if (!atomic_compare_exchange_strong_explicit(&q->top, &t, t + 1,
                                                         memory_order_seq_cst,
                                                         memory_order_relaxed))
                ok = false;
            atomic_store_explicit(&q->bottom, b + 1, memory_order_relaxed);
        }
    } else {
        atomic_store_explicit(&q->bottom, b + 1, memory_order_relaxed);
    }
    return ok;
}

static bool tpool_deque_steal(struct tpool_deque *q, uint64_t *out)
{
    int64_t t = atomic_load_explicit(&q->top, memory_order_acquire);
    atomic_thread_fence(memory_order_seq_cst);
    int64_t b = atomic_load_explicit(&q->bottom, memory_order_acquire);
    if (t >= b)
        return false;
    uint64_t v = atomic_load_explicit(&q->buf[t & (TPOOL_DEQUE_CAP - 1)], memory_order_relaxed);
    if (!atomic_compare_exchange_strong_explicit(&q->top, &t, t + 1, memory_order_seq_cst,
                                                 memory_order_relaxed))
        return false;
    *out = v;
    return true;
}

/* ---- running a job ---- */

/* After pushing work: wake up to count sleepers, if any. The seq_cst fence
 * pairs with the one a would-be sleeper executes between announcing itself
 * (n_sleeping++) and its last look at the deques, so either we see it and
 * wake it, or it sees our push. */
static void tpool_notify(struct tpool *p, int count)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&p->n_sleeping, memory_order_relaxed) > 0) {
        atomic_fetch_add_explicit(&p->wake, 1, memory_order_seq_cst);
        tpool_futex_wake(&p->wake, count);
    }
}

static void tpool_chunks_done(struct tpool *p, int64_t count)
{
    if (atomic_fetch_sub_explicit(&p->remaining, count, memory_order_acq_rel) == count) {
        atomic_store_explicit(&p->done, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&p->caller_sleeping, memory_order_seq_cst))
            tpool_futex_wake(&p->done, INT_MAX);
    }
}

/* Takes range e (chunk indices [begin, end)), pushes its upper halves so
 * others can steal them, runs the first chunk. */
static void tpool_range_run(struct tpool *p, struct tpool_worker *self, uint64_t e)
{
    uint32_t cb = (uint32_t)(e >> 32), ce = (uint32_t)e;
    int pushed = 0;
    while (ce - cb > 1) {
        uint32_t mid = cb + (ce - cb) / 2;
        if (!tpool_deque_push(&self->dq, tpool_range_pack(mid, ce)))
            break;
        ce = mid;
        pushed++;
    }
    if (pushed)
        tpool_notify(p, pushed);
    const struct tpool_job *j = &p->job;
    int64_t begin = (int64_t)cb * j->grain;
    int64_t end = (int64_t)ce * j->grain;
    if (end > j->n)
        end = j->n;
    int saved = tl_in_task;
    tl_in_task = 1;
    j->fn(j->ctx, begin, end, self->index);
    tl_in_task = saved;
    tpool_chunks_done(p, (int64_t)(ce - cb));
}

static bool tpool_steal_any(struct tpool *p, struct tpool_worker *self, uint64_t *out)
{
    int n = p->n;
    int start = (int)(tpool_rng_next(&self->rng) % (uint32_t)n);
    for (int k = 0; k < n; k++) {
        int v = start + k;
        if (v >= n)
            v -= n;
        if (v != self->index && tpool_deque_steal(&p->w[v].dq, out))
            return true;
    }
    return false;
}

static bool tpool_take(struct tpool *p, struct tpool_worker *self, uint64_t *out)
{
    return tpool_deque_pop(&self->dq, out) || tpool_steal_any(p, self, out);
}

/* A pool worker found nothing for spin_ns: sleep until a push or a new job
 * bumps the wake word past w. Takes and runs work found on the last look. */
static void tpool_worker_sleep(struct tpool *p, struct tpool_worker *self, uint32_t w)
{
    atomic_fetch_add_explicit(&p->n_sleeping, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t e;
    bool found = tpool_take(p, self, &e);
    if (!found && atomic_load_explicit(&p->wake, memory_order_seq_cst) == w &&
        !atomic_load_explicit(&p->stop, memory_order_seq_cst))
        tpool_futex_wait(&p->wake, w);
    atomic_fetch_sub_explicit(&p->n_sleeping, 1, memory_order_seq_cst);
    if (found)
        tpool_range_run(p, self, e);
}

static void *tpool_worker_main(void *arg)
{
    struct tpool_worker *self = arg;
    struct tpool *p = self->pool;
    tl_worker = self->index;
    uint64_t idle_since = 0;
    for (unsigned i = 0;; i++) {
        uint32_t w = atomic_load_explicit(&p->wake, memory_order_acquire);
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            break;
        uint64_t e;
        if (tpool_take(p, self, &e)) {
            tpool_range_run(p, self, e);
            idle_since = 0;
            continue;
        }
        if ((i & 15) == 15) {
            uint64_t t = tpool_now_ns();
            if (idle_since == 0) {
                idle_since = t;
            } else if (t - idle_since > p->spin_ns) {
                tpool_worker_sleep(p, self, w);
                idle_since = 0;
                continue;
            }
        }
        tpool_cpu_relax();
    }
    return NULL;
}

/* The caller (worker 0) runs chunks until none is left to take, then waits
 * for the ones still running elsewhere: spin, then sleep until the worker
 * that finishes the job wakes it. */
static void tpool_caller_work(struct tpool *p, struct tpool_worker *self)
{
    uint64_t idle_since = 0;
    for (unsigned i = 0;; i++) {
        uint64_t e;
        if (tpool_take(p, self, &e)) {
            tpool_range_run(p, self, e);
            idle_since = 0;
            continue;
        }
        if (atomic_load_explicit(&p->remaining, memory_order_acquire) == 0)
            return;
        if ((i & 15) == 15) {
            uint64_t t = tpool_now_ns();
            if (idle_since == 0)
                idle_since = t;
            else if (t - idle_since > p->spin_ns)
                break;
        }
        tpool_cpu_relax();
    }
    for (;;) {
        atomic_store_explicit(&p->caller_sleeping, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&p->done, memory_order_seq_cst) == 0)
            tpool_futex_wait(&p->done, 0);
        atomic_store_explicit(&p->caller_sleeping, 0, memory_order_relaxed);
        if (atomic_load_explicit(&p->remaining, memory_order_acquire) == 0)
            return;
    }
}

LLORCH_API void tpool_parallel_for(struct tpool *p, int64_t n, int64_t grain, tpool_range_fn fn,
                                   void *ctx)
{
    if (n <= 0)
        return;
    if (grain < 1)
        grain = 1;
    if (tl_in_task) { /* nested: the outer parallel_for already uses every worker */
        fn(ctx, 0, n, tl_worker < 0 ? 0 : tl_worker);
        return;
    }
    int64_t chunks = (n - 1) / grain + 1;
    if (chunks > (int64_t)UINT32_MAX) { /* keep chunk indices in 32 bits */
        grain = (n - 1) / (int64_t)UINT32_MAX + 1;
        chunks = (n - 1) / grain + 1;
    }
    int saved_worker = tl_worker;
    tl_worker = 0;
    if (!p || p->n == 1 || chunks == 1) {
        tl_in_task = 1;
        fn(ctx, 0, n, 0);
        tl_in_task = 0;
        tl_worker = saved_worker;
        return;
    }
    bool was_busy = atomic_exchange_explicit(&p->busy, true, memory_order_acquire);
    assert(!was_busy && "tpool_parallel_for called from two threads at once");
    LLORCH_UNUSED(was_busy);

    p->job = (struct tpool_job){.fn = fn, .ctx = ctx, .n = n, .grain = grain};
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->remaining, chunks, memory_order_relaxed);
    struct tpool_worker *self = &p->w[0];
    bool pushed = tpool_deque_push(&self->dq, tpool_range_pack(0, (uint32_t)chunks));
    assert(pushed); /* worker 0's deque is empty between jobs */
    LLORCH_UNUSED(pushed);
    tpool_notify(p, INT_MAX);

    tpool_caller_work(p, self);

    tl_worker = saved_worker;
    atomic_store_explicit(&p->busy, false, memory_order_release);
}

/* ---- lifecycle ---- */

static int tpool_allowed_cpus(int *cpus, int cap)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return 0;
    int k = 0;
    for (int c = 0; c < CPU_SETSIZE && k < cap; c++)
        if (CPU_ISSET(c, &set))
            cpus[k++] = c;
    return k;
}

LLORCH_API int tpool_new(struct tpool **out, const struct tpool_opts *opts)
{
    if (!out)
        return LLORCH_EINVAL;
    *out = NULL;
    struct tpool_opts o = {0};
    if (opts)
        o = *opts;

    static const int cpus_cap = CPU_SETSIZE;
    int *cpus = malloc(sizeof(int) * (size_t)cpus_cap);
    if (!cpus)
        return LLORCH_ENOMEM;
    int n_cpus = tpool_allowed_cpus(cpus, cpus_cap);
    int n = o.n_threads;
    if (n <= 0) {
        n = n_cpus;
        if (n <= 0) {
            long c = sysconf(_SC_NPROCESSORS_ONLN);
            n = c > 0 ? (int)LLORCH_MIN(c, TPOOL_MAX_THREADS) : 1;
        }
    }
    if (n > TPOOL_MAX_THREADS) {
        free(cpus);
        return LLORCH_ERANGE;
    }

    struct tpool *p = NULL;
    if (posix_memalign((void **)&p, TPOOL_CACHELINE, sizeof(*p)) != 0) {
        free(cpus);
        return LLORCH_ENOMEM;
    }
    memset(p, 0, sizeof(*p));
    p->n = n;
    p->spin_ns = (uint64_t)(o.spin_us ? o.spin_us : TPOOL_DEFAULT_SPIN_US) * 1000u;
    if (posix_memalign((void **)&p->w, TPOOL_CACHELINE, sizeof(*p->w) * (size_t)n) != 0) {
        free(p);
        free(cpus);
        return LLORCH_ENOMEM;
    }
    memset(p->w, 0, sizeof(*p->w) * (size_t)n);
    atomic_init(&p->remaining, 0);
    atomic_init(&p->done, 1);
    atomic_init(&p->caller_sleeping, 0);
    atomic_init(&p->wake, 0);
    atomic_init(&p->n_sleeping, 0);
    atomic_init(&p->stop, false);
    atomic_init(&p->busy, false);
    for (int i = 0; i < n; i++) {
        struct tpool_worker *w = &p->w[i];
        atomic_init(&w->dq.top, 0);
        atomic_init(&w->dq.bottom, 0);
        w->pool = p;
        w->index = i;
        w->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) | 1;
    }

    const char *prefix = o.name ? o.name : "llorch-w";
    int err = 0;
    for (int i = 1; i < n; i++) {
        struct tpool_worker *w = &p->w[i];
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        if (o.pin && n_cpus > 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            /* Worker 0 is the caller, whose affinity is not ours to set; it
             * gets cpus[0] implicitly because the others are taken. */
            CPU_SET(cpus[i % n_cpus], &set);
            pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
        }
        int rc = pthread_create(&w->thread, &attr, tpool_worker_main, w);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            err = llorch_err_from_errno(rc);
            break;
        }
        w->started = true;
        char name[16];
        snprintf(name, sizeof(name), "%s%d", prefix, i);
        pthread_setname_np(w->thread, name); /* cosmetic: failure is harmless */
    }
    free(cpus);
    if (err) {
        tpool_free(p);
        return err;
    }
    *out = p;
    return 0;
}

LLORCH_API void tpool_free(struct tpool *p)
{
    if (!p)
        return;
    atomic_store_explicit(&p->stop, true, memory_order_seq_cst);
    atomic_fetch_add_explicit(&p->wake, 1, memory_order_seq_cst);
    tpool_futex_wake(&p->wake, INT_MAX);
    for (int i = 1; i < p->n; i++)
        if (p->w[i].started)
            pthread_join(p->w[i].thread, NULL);
    for (unsigned s = 0; s < TPOOL_SLOTS; s++)
        if (p->slot_obj[s] && p->slot_free[s])
            p->slot_free[s](p->slot_obj[s]);
    free(p->w);
    free(p);
}

LLORCH_API int tpool_size(const struct tpool *p)
{
    return p ? p->n : 1;
}

LLORCH_API int tpool_worker_index(void)
{
    return tl_worker;
}

LLORCH_API bool tpool_in_task(void)
{
    return tl_in_task != 0;
}

LLORCH_API void *tpool_slot_get(const struct tpool *p, unsigned slot)
{
    if (!p || slot >= TPOOL_SLOTS)
        return NULL;
    return p->slot_obj[slot];
}

LLORCH_API void tpool_slot_set(struct tpool *p, unsigned slot, void *obj,
                               tpool_slot_free_fn free_fn)
{
    if (!p || slot >= TPOOL_SLOTS)
        return;
    p->slot_obj[slot] = obj;
    p->slot_free[slot] = free_fn;
}
