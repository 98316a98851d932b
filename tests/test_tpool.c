/* The work-stealing pool: coverage of every index exactly once, real
 * spreading over workers, no deadlock over many small jobs, nesting, pinning,
 * names, and an idle pool that sleeps instead of spinning. */
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <cmocka.h>

#include "tpool.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* ---- coverage ---- */

struct cover_ctx {
    _Atomic int *hits;
    int64_t n, grain;
    int n_workers;
    _Atomic int bad; /* chunk shorter than grain (not last), bad worker index */
};

static void cover_fn(void *vctx, int64_t b, int64_t e, int worker)
{
    struct cover_ctx *c = vctx;
    if (b < 0 || e > c->n || b >= e || (e - b < c->grain && e != c->n) || worker < 0 ||
        worker >= c->n_workers || tpool_worker_index() != worker || !tpool_in_task())
        atomic_fetch_add(&c->bad, 1);
    for (int64_t i = b; i < e; i++)
        atomic_fetch_add_explicit(&c->hits[i], 1, memory_order_relaxed);
}

static void tpool_parallel_for_covers_every_index_exactly_once(void **state)
{
    (void)state;
    struct tpool *p;
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 4}), 0);
    static const int64_t ns[] = {1, 2, 3, 5, 7, 16, 63, 64, 65, 100, 1000, 4097, 100003};
    static const int64_t grains[] = {0, 1, 2, 3, 7, 16, 1000, 100003, 200000};
    _Atomic int *hits = calloc(100003, sizeof(*hits));
    assert_non_null(hits);
    for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++) {
        for (size_t g = 0; g < sizeof(grains) / sizeof(grains[0]); g++) {
            int64_t n = ns[a];
            for (int64_t i = 0; i < n; i++)
                atomic_init(&hits[i], 0);
            struct cover_ctx c = {.hits = hits, .n = n, .n_workers = 4,
                                  .grain = grains[g] < 1 ? 1 : grains[g]};
            atomic_init(&c.bad, 0);
            tpool_parallel_for(p, n, grains[g], cover_fn, &c);
            assert_int_equal(atomic_load(&c.bad), 0);
            for (int64_t i = 0; i < n; i++)
                if (atomic_load(&hits[i]) != 1)
                    fail_msg("n=%lld grain=%lld: index %lld ran %d times", (long long)n,
                             (long long)grains[g], (long long)i, atomic_load(&hits[i]));
        }
    }
    free(hits);
    tpool_free(p);
}

static void noop_fn(void *ctx, int64_t b, int64_t e, int worker)
{
    (void)ctx, (void)b, (void)e, (void)worker;
    fail_msg("a parallel_for over nothing ran a chunk");
}

static void tpool_parallel_for_over_nothing_runs_nothing(void **state)
{
    (void)state;
    struct tpool *p;
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 2}), 0);
    tpool_parallel_for(p, 0, 1, noop_fn, NULL);
    tpool_parallel_for(p, -5, 1, noop_fn, NULL);
    tpool_free(p);
}

/* ---- spreading: every chunk blocks until all chunks have started, so the
 * job only finishes if n_threads workers run chunks at the same time. A pool
 * that does not spread work fails by timeout instead of hanging. ---- */

struct rendezvous_ctx {
    int n;
    _Atomic int started;
    _Atomic int timed_out;
    _Atomic int ran_on[64];
    _Atomic int pinned_wrong;
};

static void rendezvous_fn(void *vctx, int64_t b, int64_t e, int worker)
{
    struct rendezvous_ctx *c = vctx;
    for (int64_t i = b; i < e; i++) {
        atomic_fetch_add(&c->ran_on[worker], 1);
        atomic_fetch_add(&c->started, 1);
    }
    if (worker > 0) { /* pool threads: when pinned, exactly one CPU */
        cpu_set_t set;
        if (pthread_getaffinity_np(pthread_self(), sizeof(set), &set) == 0 && CPU_COUNT(&set) != 1)
            atomic_fetch_add(&c->pinned_wrong, 1);
    }
    double deadline = now_s() + 20.0;
    while (atomic_load(&c->started) < c->n) {
        if (now_s() > deadline) {
            atomic_store(&c->timed_out, 1);
            return;
        }
        sched_yield();
    }
}

static void run_rendezvous(struct tpool *p, struct rendezvous_ctx *c)
{
    c->n = tpool_size(p);
    atomic_init(&c->started, 0);
    atomic_init(&c->timed_out, 0);
    atomic_init(&c->pinned_wrong, 0);
    for (int i = 0; i < 64; i++)
        atomic_init(&c->ran_on[i], 0);
    tpool_parallel_for(p, c->n, 1, rendezvous_fn, c);
}

static void tpool_parallel_for_runs_chunks_on_every_worker_at_once(void **state)
{
    (void)state;
    struct tpool *p;
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 4}), 0);
    for (int rep = 0; rep < 3; rep++) {
        struct rendezvous_ctx c;
        run_rendezvous(p, &c);
        assert_int_equal(atomic_load(&c.timed_out), 0);
        for (int w = 0; w < 4; w++)
            assert_int_equal(atomic_load(&c.ran_on[w]), 1);
        if (rep == 1)
            sleep_ms(5); /* let the workers fall asleep: wake-up path too */
    }
    tpool_free(p);
}

/* ---- many small jobs ---- */

static void count_fn(void *vctx, int64_t b, int64_t e, int worker)
{
    (void)worker;
    atomic_fetch_add_explicit((_Atomic int64_t *)vctx, e - b, memory_order_relaxed);
}

static void many_small_jobs(uint32_t spin_us)
{
    struct tpool *p;
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 3, .spin_us = spin_us}), 0);
    _Atomic int64_t total;
    atomic_init(&total, 0);
    int64_t expect = 0;
    for (int i = 0; i < 10000; i++) {
        int64_t n = 1 + i % 9;
        tpool_parallel_for(p, n, 1, count_fn, &total);
        expect += n;
        /* the caller sees every chunk's effect once parallel_for returns */
        if (atomic_load_explicit(&total, memory_order_relaxed) != expect)
            fail_msg("job %d returned before its chunks finished", i);
    }
    tpool_free(p);
}

static void tpool_survives_10k_small_jobs_with_spinning_workers(void **state)
{
    (void)state;
    many_small_jobs(0);
}

static void tpool_survives_10k_small_jobs_with_sleeping_workers(void **state)
{
    (void)state;
    many_small_jobs(1); /* workers sleep between jobs: exercises the futex wake-up */
}

/* ---- lifecycle ---- */

static void tpool_free_while_idle_joins_workers(void **state)
{
    (void)state;
    struct tpool *p;
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 4}), 0);
    tpool_free(p); /* workers possibly not even started yet */
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 4, .spin_us = 1}), 0);
    _Atomic int64_t total;
    atomic_init(&total, 0);
    tpool_parallel_for(p, 100, 1, count_fn, &total);
    sleep_ms(20); /* now asleep on the futex */
    tpool_free(p);
    tpool_free(NULL);
    assert_int_equal(atomic_load(&total), 100);
}

static void worker_zero_fn(void *vctx, int64_t b, int64_t e, int worker)
{
    int *bad = vctx;
    if (worker != 0 || tpool_worker_index() != 0)
        (*bad)++;
    (void)b, (void)e;
}

static void tpool_with_one_thread_runs_everything_on_the_caller(void **state)
{
    (void)state;
    struct tpool *p;
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 1}), 0);
    assert_int_equal(tpool_size(p), 1);
    int bad = 0;
    tpool_parallel_for(p, 1000, 3, worker_zero_fn, &bad);
    assert_int_equal(bad, 0);
    _Atomic int64_t total;
    atomic_init(&total, 0);
    tpool_parallel_for(p, 1000, 3, count_fn, &total);
    assert_int_equal(atomic_load(&total), 1000);
    tpool_free(p);
}

static void tpool_parallel_for_without_a_pool_runs_inline(void **state)
{
    (void)state;
    int bad = 0;
    tpool_parallel_for(NULL, 100, 7, worker_zero_fn, &bad);
    assert_int_equal(bad, 0);
    _Atomic int64_t total;
    atomic_init(&total, 0);
    tpool_parallel_for(NULL, 100, 7, count_fn, &total);
    assert_int_equal(atomic_load(&total), 100);
    assert_int_equal(tpool_size(NULL), 1);
}

static void tpool_default_size_is_the_allowed_cpu_count(void **state)
{
    (void)state;
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
    struct tpool *p;
    assert_int_equal(tpool_new(&p, NULL), 0);
    assert_int_equal(tpool_size(p), CPU_COUNT(&set));
    tpool_free(p);
    assert_int_not_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 100000}), 0);
}

/* ---- nesting, worker index ---- */

struct nest_ctx {
    struct tpool *p;
    _Atomic int inner_total;
    _Atomic int bad;
};

static void nest_inner_fn(void *vctx, int64_t b, int64_t e, int worker)
{
    struct nest_ctx *c = vctx;
    if (worker != tpool_worker_index() || !tpool_in_task())
        atomic_fetch_add(&c->bad, 1);
    atomic_fetch_add(&c->inner_total, (int)(e - b));
}

static void nest_outer_fn(void *vctx, int64_t b, int64_t e, int worker)
{
    struct nest_ctx *c = vctx;
    for (int64_t i = b; i < e; i++) {
        tpool_parallel_for(c->p, 10, 1, nest_inner_fn, c);
        if (tpool_worker_index() != worker)
            atomic_fetch_add(&c->bad, 1);
    }
}

static void tpool_nested_parallel_for_runs_inline_on_the_worker(void **state)
{
    (void)state;
    struct nest_ctx c = {0};
    assert_int_equal(tpool_new(&c.p, &(struct tpool_opts){.n_threads = 3}), 0);
    atomic_init(&c.inner_total, 0);
    atomic_init(&c.bad, 0);
    assert_int_equal(tpool_worker_index(), -1);
    assert_false(tpool_in_task());
    tpool_parallel_for(c.p, 50, 1, nest_outer_fn, &c);
    assert_int_equal(atomic_load(&c.inner_total), 500);
    assert_int_equal(atomic_load(&c.bad), 0);
    assert_int_equal(tpool_worker_index(), -1); /* restored after the call */
    assert_false(tpool_in_task());
    tpool_free(c.p);
}

/* ---- pinning and names ---- */

static void tpool_pinned_workers_each_own_one_cpu(void **state)
{
    (void)state;
    struct tpool *p;
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 3, .pin = true}), 0);
    struct rendezvous_ctx c;
    run_rendezvous(p, &c);
    assert_int_equal(atomic_load(&c.timed_out), 0);
    assert_int_equal(atomic_load(&c.pinned_wrong), 0);
    tpool_free(p);
}

static int count_threads_named(const char *prefix)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int count = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[320], comm[64] = {0};
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof(comm), f) && strncmp(comm, prefix, strlen(prefix)) == 0)
            count++;
        fclose(f);
    }
    closedir(d);
    return count;
}

static void tpool_names_its_threads_with_the_prefix(void **state)
{
    (void)state;
    struct tpool *p;
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 4, .name = "tst-pool"}), 0);
    assert_int_equal(count_threads_named("tst-pool"), 3); /* worker 0 is the caller */
    tpool_free(p);
    assert_int_equal(count_threads_named("tst-pool"), 0);
}

/* ---- idle CPU: process CPU time over 200 ms of wall time. A spinning pool
 * of 3 workers burns up to 600 ms there; a sleeping one ~0. The control test
 * below proves the measurement sees spinning even on a loaded machine. ---- */

static double process_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static double idle_cpu_over_200ms(uint32_t spin_us)
{
    struct tpool *p;
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 4, .spin_us = spin_us}), 0);
    _Atomic int64_t total;
    atomic_init(&total, 0);
    tpool_parallel_for(p, 64, 1, count_fn, &total);
    double c0 = process_cpu_s();
    sleep_ms(200);
    double used = process_cpu_s() - c0;
    tpool_free(p);
    return used;
}

static void tpool_idle_workers_sleep_instead_of_spinning(void **state)
{
    (void)state;
    double used = idle_cpu_over_200ms(0);
    if (used > 0.020)
        fail_msg("idle pool used %.1f ms of CPU in 200 ms", used * 1e3);
}

static void tpool_idle_measurement_detects_a_spinning_pool(void **state)
{
    (void)state;
    /* spin_us of 2 s: the workers spin through the whole window */
    double used = idle_cpu_over_200ms(2000000);
    if (used < 0.040)
        fail_msg("spinning pool measured only %.1f ms of CPU in 200 ms", used * 1e3);
}

/* ---- per-pool slots ---- */

static void count_free(void *obj)
{
    (*(int *)obj)++;
}

static void tpool_free_releases_slot_objects(void **state)
{
    (void)state;
    struct tpool *p;
    assert_int_equal(tpool_new(&p, &(struct tpool_opts){.n_threads = 2}), 0);
    int freed = 0;
    assert_null(tpool_slot_get(p, 1u));
    tpool_slot_set(p, 1u, &freed, count_free);
    assert_ptr_equal(tpool_slot_get(p, 1u), &freed);
    assert_null(tpool_slot_get(p, TPOOL_SLOTS));
    tpool_free(p);
    assert_int_equal(freed, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tpool_parallel_for_covers_every_index_exactly_once),
        cmocka_unit_test(tpool_parallel_for_over_nothing_runs_nothing),
        cmocka_unit_test(tpool_parallel_for_without_a_pool_runs_inline),
        cmocka_unit_test(tpool_parallel_for_runs_chunks_on_every_worker_at_once),
        cmocka_unit_test(tpool_survives_10k_small_jobs_with_spinning_workers),
        cmocka_unit_test(tpool_survives_10k_small_jobs_with_sleeping_workers),
        cmocka_unit_test(tpool_free_while_idle_joins_workers),
        cmocka_unit_test(tpool_with_one_thread_runs_everything_on_the_caller),
        cmocka_unit_test(tpool_default_size_is_the_allowed_cpu_count),
        cmocka_unit_test(tpool_nested_parallel_for_runs_inline_on_the_worker),
        cmocka_unit_test(tpool_pinned_workers_each_own_one_cpu),
        cmocka_unit_test(tpool_names_its_threads_with_the_prefix),
        cmocka_unit_test(tpool_idle_workers_sleep_instead_of_spinning),
        cmocka_unit_test(tpool_idle_measurement_detects_a_spinning_pool),
        cmocka_unit_test(tpool_free_releases_slot_objects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
