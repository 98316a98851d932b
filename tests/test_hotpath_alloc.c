/* Zero allocations on the per-token hot path: once a request is admitted and
 * its batch shape has been seen once (the first steps may create oneDNN
 * primitives), decode steps at a fixed batch composition make no
 * malloc/calloc/realloc/free/aligned allocation call, on any thread (the step
 * driver and every pool worker), from our code or from libc/libgomp.
 *
 * Known exception, counted and printed but not failed: oneDNN 2.6's
 * dnnl_primitive_execute itself allocates on every call (the exec context's
 * argument hash map, and std::function wrappers of its parallel lambdas;
 * about 12 calls per execution on llama-tiny). No public API of 2.6 avoids it, so the tests
 * attribute each counted call by its stack (a frame in libdnnl) and fail on
 * any call outside oneDNN; the oneDNN figure is printed for the report.
 *
 * Counting: in the release build this executable defines (and, linked with
 * -rdynamic and default visibility, exports) the allocator entry points and
 * forwards them to glibc's __libc_* functions, so every call in the process,
 * shared libraries included, lands here. Under AddressSanitizer (which owns
 * malloc) the sanitizer's malloc/free hooks count instead. Counting is a
 * process-wide fact, so the counter is necessarily global state (test-only).
 * While armed, the first few calls outside oneDNN print a backtrace to
 * stderr (HOTPATH_ALLOC_TRACES=N for more, HOTPATH_ALLOC_TRACES_ONEDNN=1 to
 * include oneDNN's).
 *
 * Control tests prove the counter sees an allocation made on a pool worker
 * and one made inside oneDNN (and attributes each correctly), so the zero
 * results cannot come from a counter that sees nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <oneapi/dnnl/dnnl.h>

#include "forward.h"
#include "kv.h"
#include "model.h"
#include "sched.h"
#include "tokenizer.h"
#include "tpool.h"
#include "util.h"

/* ---- the counting allocator ---------------------------------------------- */

/* backtraces printed per armed window; HOTPATH_ALLOC_TRACES=N for more */
static int hp_max_traces = 4;

static atomic_bool hp_armed;
static atomic_ulong hp_count;
static atomic_ulong hp_count_onednn; /* of hp_count, calls from inside libdnnl */
static bool hp_trace_onednn;
static atomic_int hp_traces;
static atomic_bool hp_trace; /* print backtraces of the first calls */
static _Thread_local int hp_busy;    /* inside the counter itself */
static _Thread_local bool hp_ignore; /* this thread's calls are not counted */

/* True when the call comes from inside oneDNN (a frame in libdnnl). */
static bool hp_from_onednn(void *const *frames, int n)
{
    for (int i = 0; i < n; i++) {
        Dl_info di;
        if (dladdr(frames[i], &di) && di.dli_fname && strstr(di.dli_fname, "libdnnl"))
            return true;
    }
    return false;
}

static void hp_note(void)
{
    if (!atomic_load_explicit(&hp_armed, memory_order_relaxed) || hp_busy || hp_ignore)
        return;
    hp_busy++;
    atomic_fetch_add(&hp_count, 1);
    void *frames[32];
    const int n = backtrace(frames, 32);
    const bool dnnl = hp_from_onednn(frames, n);
    if (dnnl)
        atomic_fetch_add(&hp_count_onednn, 1);
    /* traces of calls outside oneDNN (those fail the tests); all of them
     * with HOTPATH_ALLOC_TRACES_ONEDNN=1 */
    if (atomic_load(&hp_trace) && (!dnnl || hp_trace_onednn) &&
        atomic_fetch_add(&hp_traces, 1) < hp_max_traces) {
        char buf[8192];
        size_t len = 0;
        static const char hdr[] = "---- allocation on the hot path:\n";
        memcpy(buf, hdr, sizeof hdr - 1);
        len += sizeof hdr - 1;
        for (int i = 0; i < n && len < sizeof buf - 256; i++) {
            Dl_info di;
            if (dladdr(frames[i], &di) && di.dli_fname)
                len += (size_t)snprintf(buf + len, sizeof buf - len, "  %s(%s+0x%lx) [+0x%lx]\n",
                                        di.dli_fname, di.dli_sname ? di.dli_sname : "",
                                        (unsigned long)((char *)frames[i] - (char *)(di.dli_saddr ? di.dli_saddr : di.dli_fbase)),
                                        (unsigned long)((char *)frames[i] - (char *)di.dli_fbase));
        }
        /* one write per trace, so traces from concurrent threads do not mix */
        if (write(2, buf, len) < 0) {
            /* nothing to do: the count still fails the test */
        }
    }
    hp_busy--;
}

static void hp_arm(bool trace)
{
    atomic_store(&hp_trace, trace);
    atomic_store(&hp_count, 0);
    atomic_store(&hp_count_onednn, 0);
    atomic_store(&hp_traces, 0);
    atomic_store(&hp_armed, true);
}

static unsigned long hp_disarm(void)
{
    atomic_store(&hp_armed, false);
    return atomic_load(&hp_count);
}

#if defined(__SANITIZE_ADDRESS__)
/* from the sanitizer runtime (its header is not always installed) */
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));

static void hp_malloc_hook(const volatile void *p, size_t n)
{
    LLORCH_UNUSED(p);
    LLORCH_UNUSED(n);
    hp_note();
}

static void hp_free_hook(const volatile void *p)
{
    if (p)
        hp_note();
}

static void hp_install(void)
{
    __sanitizer_install_malloc_and_free_hooks(hp_malloc_hook, hp_free_hook);
}
#else
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);
extern void __libc_free(void *p);

/* The build hides symbols by default: these must be exported so that every
 * shared library binds to them. */
#define HP_EXPORT __attribute__((visibility("default")))

HP_EXPORT void *malloc(size_t n)
{
    hp_note();
    return __libc_malloc(n);
}

HP_EXPORT void *calloc(size_t n, size_t size)
{
    hp_note();
    return __libc_calloc(n, size);
}

HP_EXPORT void *realloc(void *p, size_t n)
{
    hp_note();
    return __libc_realloc(p, n);
}

HP_EXPORT void free(void *p)
{
    if (p)
        hp_note();
    __libc_free(p);
}

HP_EXPORT void *aligned_alloc(size_t align, size_t n)
{
    hp_note();
    return __libc_memalign(align, n);
}

HP_EXPORT void *memalign(size_t align, size_t n);
HP_EXPORT void *memalign(size_t align, size_t n)
{
    hp_note();
    return __libc_memalign(align, n);
}

HP_EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1)))
        return 22; /* EINVAL */
    hp_note();
    void *p = __libc_memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}

static void hp_install(void)
{
}
#endif

static int hp_setup(void **state)
{
    LLORCH_UNUSED(state);
    hp_install();
    const char *env = getenv("HOTPATH_ALLOC_TRACES");
    if (env && atoi(env) >= 0)
        hp_max_traces = atoi(env);
    hp_trace_onednn = getenv("HOTPATH_ALLOC_TRACES_ONEDNN") != NULL;
    /* backtrace() loads the unwinder (which allocates) on its first call */
    void *frames[4];
    backtrace(frames, 4);
    return 0;
}

/* ---- helpers ------------------------------------------------------------- */

static const char *model_path(char *buf, size_t cap, const char *name)
{
    const char *dir = getenv("LLORCH_SHARED");
    snprintf(buf, cap, "%s/models/%s", dir ? dir : "../shared", name);
    return buf;
}

static struct model *load_model(void)
{
    char path[1024], err[256] = "";
    struct model *m = NULL;
    int rc = model_load(&m, model_path(path, sizeof path, "llama-tiny-f32.gguf"), err, sizeof err);
    if (rc < 0)
        fail_msg("model_load: %s", err);
    return m;
}

static struct tpool *new_pool(void)
{
    struct tpool *p = NULL;
    struct tpool_opts po = {.n_threads = 2, .name = "t-hpa"};
    assert_int_equal(tpool_new(&p, &po), 0);
    return p;
}

/* ---- control: the counter sees allocations on pool workers --------------- */

static void alloc_task(void *ctx, int64_t b, int64_t e, int worker)
{
    LLORCH_UNUSED(ctx);
    LLORCH_UNUSED(worker);
    /* through a volatile pointer, so the compiler cannot drop the pair */
    void *(*volatile mf)(size_t) = malloc;
    void (*volatile ff)(void *) = free;
    for (int64_t i = b; i < e; i++)
        ff(mf(64));
}

static void counter_sees_allocations_on_pool_workers(void **state)
{
    LLORCH_UNUSED(state);
    struct tpool *pool = new_pool();
    hp_arm(false);
    tpool_parallel_for(pool, 8, 1, alloc_task, NULL);
    unsigned long n = hp_disarm();
    tpool_free(pool);
    /* 8 mallocs and 8 frees, none of them oneDNN's */
    assert_true(n >= 16);
    assert_int_equal(atomic_load(&hp_count_onednn), 0);
}

/* oneDNN is C++ in a shared library: its operator new and aligned
 * allocations must be seen too. */
static void counter_sees_and_attributes_allocations_inside_onednn(void **state)
{
    LLORCH_UNUSED(state);
    dnnl_primitive_attr_t attr = NULL;
    hp_arm(false);
    dnnl_status_t st = dnnl_primitive_attr_create(&attr);
    if (st == dnnl_success)
        dnnl_primitive_attr_destroy(attr);
    unsigned long n = hp_disarm();
    assert_int_equal(st, dnnl_success);
    assert_true(n >= 2);
    assert_int_equal(atomic_load(&hp_count_onednn), n);
}

/* ---- forward_step directly ----------------------------------------------- */

#define FW_SEQS 3
#define FW_WARM 3
#define FW_STEPS 12

static void decode_steps_allocate_nothing(enum llorch_dtype dt)
{
    struct model *m = load_model();
    struct tpool *pool = new_pool();
    const struct model_hparams *hp = &m->hp;
    const uint64_t per_tok = 2ull * hp->n_layer * hp->n_head_kv * hp->head_dim * sizeof(float);
    struct forward_opts fo = {
        .dtype = dt,
        .kv_type = LLORCH_KV_AUTO,
        .kv_bytes = 1024 * per_tok,
        .n_ctx = 256,
        .max_seqs = 4,
        .max_step_tokens = 64,
        .pool = pool,
    };
    struct forward *fw = NULL;
    char err[256] = "";
    if (forward_new(&fw, m, &fo, err, sizeof err) < 0)
        fail_msg("forward_new: %s", err);
    struct kv_cache *kv = forward_kv(fw);
    const uint32_t n_vocab = forward_n_vocab(fw);
    float *logits = malloc(sizeof(float) * FW_SEQS * n_vocab);
    assert_non_null(logits);
    struct kv_seq *seq[FW_SEQS];
    llorch_token prompt[FW_SEQS][24], tok[FW_SEQS];
    struct forward_entry e[FW_SEQS];
    /* prompts of different lengths (5, 12, 19 tokens) so the sequences
     * cross KV block boundaries at different steps */
    for (uint32_t i = 0; i < FW_SEQS; i++) {
        const uint32_t len = 5 + 7 * i;
        assert_int_equal(kv_seq_new(kv, &seq[i]), 0);
        assert_int_equal(kv_seq_reserve(kv, seq[i], len), 0);
        for (uint32_t j = 0; j < len; j++)
            prompt[i][j] = (llorch_token)(1 + (i * 131 + j * 17) % (n_vocab - 1));
        e[i] = (struct forward_entry){.seq = seq[i], .tokens = prompt[i], .n_tokens = len,
                                      .logits = logits + (size_t)i * n_vocab};
    }
    assert_int_equal(forward_step(fw, e, FW_SEQS), 0);

    unsigned long counted = 0;
    for (int step = 0; step < FW_WARM + FW_STEPS; step++) {
        if (step == FW_WARM)
            hp_arm(true);
        /* the per-step work of a decode step, as the scheduler does it */
        for (uint32_t i = 0; i < FW_SEQS; i++) {
            assert_int_equal(kv_seq_reserve(kv, seq[i], 1), 0);
            tok[i] = (llorch_token)(1 + (uint32_t)(step * 7 + i) % (n_vocab - 1));
            e[i] = (struct forward_entry){.seq = seq[i], .tokens = &tok[i], .n_tokens = 1,
                                          .logits = logits + (size_t)i * n_vocab};
        }
        if (forward_step(fw, e, FW_SEQS) != 0) {
            hp_disarm();
            fail_msg("forward_step failed at decode step %d", step);
        }
    }
    counted = hp_disarm();
    const unsigned long in_onednn = atomic_load(&hp_count_onednn);
    for (uint32_t i = 0; i < FW_SEQS; i++)
        kv_seq_free(kv, seq[i]);
    free(logits);
    forward_free(fw);
    tpool_free(pool);
    model_free(m);
    print_message("%s: %lu allocator calls in %d decode steps of %d sequences, %lu of them inside "
                  "oneDNN's dnnl_primitive_execute\n",
                  forward_dtype_name(dt), counted, FW_STEPS, FW_SEQS, in_onednn);
    if (counted != in_onednn)
        fail_msg("%lu allocator calls outside oneDNN in %d decode steps of %d sequences (%s); "
                 "backtraces above",
                 counted - in_onednn, FW_STEPS, FW_SEQS, forward_dtype_name(dt));
    /* int8 on AVX-512 VNNI runs up to 4 rows with our own GEMV, never
     * oneDNN: such decode steps allocate nothing at all (bf16's GEMV takes
     * only up to 2 rows) */
    __builtin_cpu_init();
    const bool gemv = dt == LLORCH_DTYPE_INT8 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
    if (gemv && in_onednn != 0)
        fail_msg("%lu allocator calls inside oneDNN in %s decode steps of %d sequences: the "
                 "small-m GEMV should have run them",
                 in_onednn, forward_dtype_name(dt), FW_SEQS);
}

static void forward_decode_steps_allocate_nothing_outside_onednn_f32(void **state)
{
    LLORCH_UNUSED(state);
    decode_steps_allocate_nothing(LLORCH_DTYPE_F32);
}

static void forward_decode_steps_allocate_nothing_outside_onednn_int8(void **state)
{
    LLORCH_UNUSED(state);
    decode_steps_allocate_nothing(LLORCH_DTYPE_INT8);
}

static void forward_decode_steps_allocate_nothing_outside_onednn_bf16(void **state)
{
    LLORCH_UNUSED(state);
    decode_steps_allocate_nothing(LLORCH_DTYPE_BF16);
}

/* ---- through the scheduler ----------------------------------------------- */

/* The step driver arms the counter from its on_step callback once both
 * requests have decoded together for a few steps, and disarms it SCH_STEPS
 * steps later: the window is the driver's whole per-step work (sampling,
 * detokenising, posting events, building the next step, forward_step). The
 * test thread, which takes and releases the events, is not counted. */
#define SCH_REQS 2
#define SCH_WARM 3
#define SCH_STEPS 12

struct sch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool notified;
    /* written by the driver thread */
    atomic_int decode_run;   /* consecutive all-decode steps of SCH_REQS sequences */
    atomic_int window_steps; /* steps inside the armed window */
    atomic_bool window_mixed;
    atomic_bool done;
    atomic_ulong counted;
    atomic_ulong counted_onednn;
};

static void sch_notify(void *ctx)
{
    struct sch *h = ctx;
    pthread_mutex_lock(&h->mu);
    h->notified = true;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static void sch_on_step(void *ctx, const struct sched_step_info *info)
{
    const uint32_t n_seqs = info->n_seqs, n_tokens = info->n_tokens;
    struct sch *h = ctx;
    if (atomic_load(&h->done))
        return;
    const bool decode = n_seqs == SCH_REQS && n_tokens == SCH_REQS;
    if (atomic_load(&hp_armed)) {
        atomic_fetch_add(&h->window_steps, 1);
        if (!decode)
            atomic_store(&h->window_mixed, true);
        if (atomic_load(&h->window_steps) == SCH_STEPS) {
            atomic_store(&h->counted, hp_disarm());
            atomic_store(&h->counted_onednn, atomic_load(&hp_count_onednn));
            atomic_store(&h->done, true);
        }
        return;
    }
    int run = decode ? atomic_fetch_add(&h->decode_run, 1) + 1 : 0;
    if (!decode)
        atomic_store(&h->decode_run, 0);
    if (run == SCH_WARM)
        hp_arm(true);
}

static void sched_steady_decode_allocates_nothing_outside_onednn(void **state)
{
    LLORCH_UNUSED(state);
    hp_ignore = true; /* the test thread: event take/release, waiting */
    struct model *m = load_model();
    struct tpool *pool = new_pool();
    struct tokenizer *tok = NULL;
    char err[256] = "";
    if (tokenizer_new(&tok, m->file, err, sizeof err) < 0)
        fail_msg("tokenizer_new: %s", err);
    const struct model_hparams *hp = &m->hp;
    const uint64_t per_tok = 2ull * hp->n_layer * hp->n_head_kv * hp->head_dim * sizeof(float);
    struct forward_opts fo = {
        .dtype = LLORCH_DTYPE_F32,
        .kv_type = LLORCH_KV_F32,
        .kv_bytes = 1024 * per_tok,
        .n_ctx = 256,
        .max_seqs = 4,
        .max_step_tokens = 64,
        .pool = pool,
    };
    struct forward *fw = NULL;
    if (forward_new(&fw, m, &fo, err, sizeof err) < 0)
        fail_msg("forward_new: %s", err);
    struct sch h = {.notified = false};
    pthread_mutex_init(&h.mu, NULL);
    pthread_cond_init(&h.cv, NULL);
    struct sched *s = NULL;
    struct sched_opts so = {.max_batch = 4, .max_queue = 4, .step_tokens = 64,
                            .notify = sch_notify, .notify_ctx = &h,
                            .on_step = sch_on_step, .on_step_ctx = &h};
    assert_int_equal(sched_new(&s, fw, tok, &so), 0);
    /* both prompts fit one step, so the requests are admitted and prefilled
     * together and then decode side by side; max_tokens outlasts the
     * window; seeded sampling exercises the sampler's full path */
    static const llorch_token prompts[SCH_REQS][6] = {{1, 450, 4996, 17354, 1701, 29916},
                                                      {1, 9038, 2501, 263, 931, 727}};
    for (int i = 0; i < SCH_REQS; i++) {
        char id[16];
        snprintf(id, sizeof id, "hpa-%d", i);
        struct sched_request r = {
            .job_id = id,
            .job_id_len = strlen(id),
            .prompt_tokens = prompts[i],
            .n_prompt_tokens = 6,
            .params = {.max_tokens = SCH_WARM + SCH_STEPS + 16, .temperature = 0.8f,
                       .top_p = 0.95f, .top_k = 40, .repetition_penalty = 1.1f,
                       .seed = 42 + (uint64_t)i, .ignore_eos = true},
        };
        assert_int_equal(sched_submit(s, &r, NULL), 0);
    }
    int terminal = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (terminal < SCH_REQS) {
        pthread_mutex_lock(&h.mu);
        while (!h.notified) {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_nsec += 50 * 1000000;
            if (dl.tv_nsec >= 1000000000) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&h.cv, &h.mu, &dl);
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - t0.tv_sec > 60)
                break;
        }
        h.notified = false;
        pthread_mutex_unlock(&h.mu);
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec > 60)
            break;
        struct llorch_queue evs;
        llorch_queue_init(&evs);
        sched_events_take(s, &evs);
        for (struct llorch_queue *q = evs.next; q != &evs; q = q->next) {
            struct sched_event *ev = llorch_container_of(q, struct sched_event, node);
            terminal += ev->type == SCHED_EV_END || ev->type == SCHED_EV_ERROR;
        }
        sched_events_release(s, &evs);
    }
    sched_free(s);
    forward_free(fw);
    tokenizer_free(tok);
    tpool_free(pool);
    model_free(m);
    pthread_mutex_destroy(&h.mu);
    pthread_cond_destroy(&h.cv);
    hp_ignore = false;
    assert_int_equal(terminal, SCH_REQS);
    assert_true(atomic_load(&h.done));
    assert_false(atomic_load(&h.window_mixed));
    const unsigned long counted = atomic_load(&h.counted);
    const unsigned long in_onednn = atomic_load(&h.counted_onednn);
    print_message("sched: %lu allocator calls in %d steady decode steps of %d requests, %lu of "
                  "them inside oneDNN's dnnl_primitive_execute\n",
                  counted, SCH_STEPS, SCH_REQS, in_onednn);
    if (counted != in_onednn)
        fail_msg("%lu allocator calls outside oneDNN in %d steady decode steps of %d requests "
                 "through the scheduler; backtraces above",
                 counted - in_onednn, SCH_STEPS, SCH_REQS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(counter_sees_allocations_on_pool_workers),
        cmocka_unit_test(counter_sees_and_attributes_allocations_inside_onednn),
        cmocka_unit_test(forward_decode_steps_allocate_nothing_outside_onednn_f32),
        cmocka_unit_test(forward_decode_steps_allocate_nothing_outside_onednn_int8),
        cmocka_unit_test(forward_decode_steps_allocate_nothing_outside_onednn_bf16),
        cmocka_unit_test(sched_steady_decode_allocates_nothing_outside_onednn),
    };
    return cmocka_run_group_tests(tests, hp_setup, NULL);
}
