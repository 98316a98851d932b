/* bench/decode: decode tokens/s of the whole engine (forward_step) at batch
 * sizes 1, 4, 16, 64, as ratios to limits measured in the same run:
 *   - batch B: B sequences, each with a short prompt prefilled, then timed
 *     steps of one token for all B (warm-up steps, which may create oneDNN
 *     primitives for B rows, excluded);
 *   - read bandwidth: all pool workers streaming through a buffer far larger
 *     than the last-level cache;
 *   - GEMM peak of the run dtype: an m=512, n=k=4096 matmul, best of
 *     matmul_run (pool tasks, one OpenMP thread each) and one raw oneDNN
 *     primitive on all OpenMP threads;
 *   - FMA peak: every worker running 8-lane f32 fmas from registers, the
 *     ceiling of the float types' matmuls (--pp prints its ratio).
 * The machine is shared: every batch runs in rounds of {one read pass, one
 * GEMM-peak call, a chunk of decode steps}, so each figure is compared with
 * limits measured under the same background load; every figure is the best
 * round (the median step is printed beside it).
 * Model: --model PATH, else a TinyLlama-1.1B-shaped synthetic Q8_0 file made
 * once with llorch-synth (next to this binary: ../tools/llorch-synth) in
 * --cache-dir (default $TMPDIR or /tmp). --dtype native (the default) keeps
 * each weight in its file's class; bf16/int8/f32 convert at load.
 * --steady S then runs S seconds of back-to-back steps per batch (a server's
 * rhythm); --bw-pairs N, N single steps each beside a read pass (the ratio a
 * drifting host's bandwidth does not move).
 * Prints figures and ratios; never asserts. --quick runs in a few seconds per
 * dtype after loading. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <immintrin.h>
#include <oneapi/dnnl/dnnl.h>

#include "forward.h"
#include "kernels.h"
#include "kv.h"
#include "bench_common.h"
#include "llorch/llorch.h"
#include "matmul.h"
#include "model.h"
#include "qmm.h"
#include "tpool.h"
#include "util.h"

#define DEC_MAX_BATCHES 8

struct cfg {
    const char *model;
    const char *cache_dir;
    enum llorch_dtype dtypes[4];
    int n_dtypes;
    enum llorch_isa isa;
    uint32_t batches[DEC_MAX_BATCHES];
    int n_batches;
    int threads;
    bool pin;
    uint32_t spin_us; /* the pool's spin before sleeping (0: its default) */
    bool quick;
    uint32_t prompt;      /* tokens prefilled per sequence */
    uint32_t pp;          /* --pp N: one sequence's N-token prompt in one step, best of 3 */
    int warm;             /* untimed steps per batch */
    int rounds;           /* timed rounds per batch (best of) */
    double chunk_s;       /* decode steps per round: at least this long */
    double bw_s;          /* read passes per round: at least this long */
    int chunk_max_tokens; /* ... and at most this many tokens (B x steps), >= 2 steps */
    double steady_s;      /* --steady S: after the rounds, S seconds of back-to-back steps */
    int bw_pairs;         /* --bw-pairs N: then N (step, read pass) pairs per batch */
    double fma_peak;      /* FLOP/s, measured once at start (fma_peak) */
};

/* A steady run's steps are bounded so the KV cache can be sized up front. */
#define DEC_STEADY_MAX_STEPS 512u
#define DEC_BW_PAIRS_MAX 200


/* ---- machine ----------------------------------------------------------- */



/* ---- FMA peak ----------------------------------------------------------- */

/* The float types' compute ceiling: every worker running 8-lane f32 fmas
 * from registers only (12 independent chains, more than the fma latency
 * times the fma rate of any x86 core), in FLOP/s. */
#define FMA_ITERS 4000000

static void fma_task(void *vctx, int64_t b, int64_t e, int worker)
{
    LLORCH_UNUSED(worker);
    uint64_t *sink = vctx;
    for (int64_t t = b; t < e; t++) {
        __m256 a[12];
        const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-3f);
        for (int i = 0; i < 12; i++)
            a[i] = _mm256_set1_ps((float)i);
        for (int it = 0; it < FMA_ITERS; it++)
            for (int i = 0; i < 12; i++) {
                a[i] = _mm256_fmadd_ps(a[i], x, y);
                __asm__("" : "+x"(a[i])); /* keep every chain in its register */
            }
        __m256 sum = a[0];
        for (int i = 1; i < 12; i++) /* every chain feeds the sink */
            sum = _mm256_add_ps(sum, a[i]);
        float o[8];
        _mm256_storeu_ps(o, sum);
        sink[t % 8] += (uint64_t)o[0];
    }
}

/* Best of five passes of four tasks per worker (a sleeping worker wakes
 * while the others run, and steals). */
static double fma_peak(struct tpool *pool)
{
    const int n = 4 * (pool ? tpool_size(pool) : 1);
    uint64_t sink[8] = {0};
    double best = 0;
    for (int trial = 0; trial < 5; trial++) {
        const double t0 = bench_now_s();
        tpool_parallel_for(pool, n, 1, fma_task, sink);
        best = LLORCH_MAX(best, (double)n * FMA_ITERS * 12 * 16 / (bench_now_s() - t0));
    }
    return best;
}

/* ---- GEMM peak --------------------------------------------------------- */


/* One raw oneDNN matmul primitive on nthr OpenMP threads, weights in the
 * layout it prefers (plain reorder; int8 values simply rounded, which is all
 * a speed measurement needs). */
struct raw {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst;
    void *srcbuf, *weibuf, *dstbuf;
    int nthr;
};

static void raw_free(struct raw *r)
{
    if (r->prim)
        dnnl_primitive_destroy(r->prim);
    if (r->src)
        dnnl_memory_destroy(r->src);
    if (r->wei)
        dnnl_memory_destroy(r->wei);
    if (r->dst)
        dnnl_memory_destroy(r->dst);
    free(r->srcbuf);
    free(r->weibuf);
    free(r->dstbuf);
    if (r->stream)
        dnnl_stream_destroy(r->stream);
    if (r->eng)
        dnnl_engine_destroy(r->eng);
    memset(r, 0, sizeof *r);
}

#define RAW_CK(x)                                                                                  \
    do {                                                                                           \
        if ((x) != dnnl_success)                                                                   \
            goto fail;                                                                             \
    } while (0)

static int raw_new(struct raw *r, enum llorch_dtype dt, int64_t m, int64_t n, int64_t k,
                   const float *w, int nthr)
{
    memset(r, 0, sizeof *r);
    r->nthr = nthr;
    /* oneDNN sizes its parallelism by the creating thread's OpenMP limit,
     * which pool tasks on this thread (worker 0) set to 1 */
    omp_set_num_threads(nthr);
    const dnnl_data_type_t sdt = dt == LLORCH_DTYPE_F32 ? dnnl_f32 : dt == LLORCH_DTYPE_BF16 ? dnnl_bf16 : dnnl_u8;
    const dnnl_data_type_t wdt = dt == LLORCH_DTYPE_F32 ? dnnl_f32 : dt == LLORCH_DTYPE_BF16 ? dnnl_bf16 : dnnl_s8;
    const dnnl_data_type_t ddt = dt == LLORCH_DTYPE_INT8 ? dnnl_s32 : dnnl_f32;
    const size_t ssz = dt == LLORCH_DTYPE_F32 ? 4 : dt == LLORCH_DTYPE_BF16 ? 2 : 1;
    dnnl_primitive_desc_t pd = NULL, rpd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_memory_t wsrc = NULL;
    RAW_CK(dnnl_engine_create(&r->eng, dnnl_cpu, 0));
    RAW_CK(dnnl_stream_create(&r->stream, r->eng, dnnl_stream_default_flags));
    dnnl_memory_desc_t smd, wmd, dmd, wplain;
    dnnl_dims_t sd = {m, k}, wd = {k, n}, dd = {m, n}, wstr = {1, k};
    RAW_CK(dnnl_memory_desc_init_by_tag(&smd, 2, sd, sdt, dnnl_ab));
    RAW_CK(dnnl_memory_desc_init_by_tag(&wmd, 2, wd, wdt, dnnl_format_tag_any));
    RAW_CK(dnnl_memory_desc_init_by_tag(&dmd, 2, dd, ddt, dnnl_ab));
    RAW_CK(dnnl_memory_desc_init_by_strides(&wplain, 2, wd, dnnl_f32, wstr));
    dnnl_matmul_desc_t desc;
    RAW_CK(dnnl_matmul_desc_init(&desc, &smd, &wmd, NULL, &dmd));
    RAW_CK(dnnl_primitive_desc_create(&pd, &desc, NULL, r->eng, NULL));
    const dnnl_memory_desc_t packed = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    RAW_CK(dnnl_primitive_create(&r->prim, pd));
    RAW_CK(dnnl_reorder_primitive_desc_create(&rpd, &wplain, r->eng, &packed, r->eng, NULL));
    RAW_CK(dnnl_primitive_create(&reorder, rpd));
    if (posix_memalign(&r->weibuf, 4096, dnnl_memory_desc_get_size(&packed)) != 0 ||
        posix_memalign(&r->srcbuf, 64, (size_t)(m * k) * ssz) != 0 ||
        posix_memalign(&r->dstbuf, 64, (size_t)(m * n) * 4) != 0)
        goto fail;
    RAW_CK(dnnl_memory_create(&wsrc, &wplain, r->eng, (void *)w));
    RAW_CK(dnnl_memory_create(&r->wei, &packed, r->eng, r->weibuf));
    dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, wsrc}, {DNNL_ARG_TO, r->wei}};
    RAW_CK(dnnl_primitive_execute(reorder, r->stream, 2, ra));
    RAW_CK(dnnl_stream_wait(r->stream));
    memset(r->srcbuf, 0x3c, (size_t)(m * k) * ssz);
    RAW_CK(dnnl_memory_create(&r->src, &smd, r->eng, r->srcbuf));
    RAW_CK(dnnl_memory_create(&r->dst, &dmd, r->eng, r->dstbuf));
    dnnl_memory_destroy(wsrc);
    dnnl_primitive_destroy(reorder);
    dnnl_primitive_desc_destroy(rpd);
    dnnl_primitive_desc_destroy(pd);
    return 0;
fail:
    if (wsrc)
        dnnl_memory_destroy(wsrc);
    if (reorder)
        dnnl_primitive_destroy(reorder);
    if (rpd)
        dnnl_primitive_desc_destroy(rpd);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    raw_free(r);
    return -1;
}

static int raw_run(struct raw *r)
{
    if (omp_get_max_threads() != r->nthr)
        omp_set_num_threads(r->nthr);
    dnnl_exec_arg_t a[3] = {{DNNL_ARG_SRC, r->src}, {DNNL_ARG_WEIGHTS, r->wei}, {DNNL_ARG_DST, r->dst}};
    if (dnnl_primitive_execute(r->prim, r->stream, 3, a) != dnnl_success)
        return -1;
    return dnnl_stream_wait(r->stream) == dnnl_success ? 0 : -1;
}

struct peak {
    struct mm_weight *w;
    struct qmm_weight *q; /* our kernels: the model's own ffn_up, in place */
    void *act;
    struct raw raw;
    bool have_raw;
    float *x, *y;
    int64_t m, n, k;
    double pool_best, raw_best; /* ops per second */
};

static int peak_new(struct peak *p, struct tpool *pool, enum llorch_dtype dt, const float *w,
                    int64_t m, int64_t n, int64_t k)
{
    memset(p, 0, sizeof *p);
    p->m = m, p->n = n, p->k = k;
    p->x = bench_rand_floats(m * k, 7);
    p->y = malloc(sizeof(float) * (size_t)(m * n));
    if (!p->x || !p->y || matmul_weight_new(&p->w, w, n, k, dt, m, pool) != 0)
        return -1;
    p->have_raw = raw_new(&p->raw, dt, m, n, k, w, tpool_size(pool)) == 0;
    return 0;
}

/* The peak of our kernels on the model's largest layer matrix in its own
 * class (m rows; K-type and 4-bit files measure their own kernels). */
static int peak_new_qmm(struct peak *p, const struct model *m, enum kernels_isa isa, int64_t rows)
{
    memset(p, 0, sizeof *p);
    const struct gguf_tensor *t = m->layers[0].ffn_up;
    p->m = rows, p->n = (int64_t)t->ne[1], p->k = (int64_t)t->ne[0];
    struct qmm_part part = {.type = t->type, .data = t->data, .n_rows = p->n};
    if (qmm_weight_new(&p->q, &part, 1, p->k, isa, NULL) != 0)
        return -1;
    p->x = bench_rand_floats(p->m * p->k, 7);
    p->y = malloc(sizeof(float) * (size_t)(p->m * p->n));
    return posix_memalign(&p->act, 64, qmm_act_bytes(p->q, p->m)) == 0 && p->x && p->y ? 0 : -1;
}

static void peak_free(struct peak *p)
{
    qmm_weight_free(p->q);
    free(p->act);
    matmul_weight_free(p->w);
    if (p->have_raw)
        raw_free(&p->raw);
    free(p->x);
    free(p->y);
    memset(p, 0, sizeof *p);
}

/* One call of each arrangement; keeps the best rate. */
static void peak_round(struct peak *p, struct tpool *pool)
{
    const double ops = 2.0 * (double)p->m * (double)p->n * (double)p->k;
    double t0 = bench_now_s();
    if (p->q && qmm_run(p->q, p->x, p->y, p->m, p->act, pool) == 0)
        p->pool_best = LLORCH_MAX(p->pool_best, ops / (bench_now_s() - t0));
    if (p->w && matmul_run(p->w, p->x, p->y, p->m, pool) == 0)
        p->pool_best = LLORCH_MAX(p->pool_best, ops / (bench_now_s() - t0));
    if (p->have_raw) {
        t0 = bench_now_s();
        if (raw_run(&p->raw) == 0)
            p->raw_best = LLORCH_MAX(p->raw_best, ops / (bench_now_s() - t0));
    }
}

/* ---- model ------------------------------------------------------------- */

/* Makes the default model with llorch-synth unless it is already there. */
static int default_model(const struct cfg *cf, const char *argv0, char *path, size_t cap)
{
    snprintf(path, cap, "%s/llorch-bench-tinyllama-1.1b-q8_0.gguf", cf->cache_dir);
    struct stat st;
    if (stat(path, &st) == 0 && st.st_size > 0) {
        printf("model: reusing %s\n", path);
        return 0;
    }
    char synth[PATH_MAX];
    const char *slash = strrchr(argv0, '/');
    snprintf(synth, sizeof synth, "%.*s../tools/llorch-synth", slash ? (int)(slash - argv0 + 1) : 0,
             argv0);
    char tmp[PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    printf("model: %s -o %s --preset tinyllama-1.1b --type q8_0 --vocab builtin\n", synth, path);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execl(synth, synth, "-o", tmp, "--preset", "tinyllama-1.1b", "--type", "q8_0", "--vocab",
              "builtin", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        fprintf(stderr, "cannot make the model with %s (give --model PATH)\n", synth);
        return -1;
    }
    return 0;
}

/* Weight parameters each token multiplies (every matmul, the LM head
 * included; the embedding lookup is not a matmul). */
static double matmul_params(const struct model *m)
{
    double p = 0;
    for (uint32_t il = 0; il < m->hp.n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        const struct gguf_tensor *t[] = {L->wq, L->wk, L->wv, L->wqkv, L->wo,
                                         L->ffn_gate, L->ffn_up, L->ffn_down};
        for (size_t i = 0; i < LLORCH_ARRAY_SIZE(t); i++)
            if (t[i])
                p += (double)t[i]->n_elements;
    }
    return p + (double)m->output->n_elements;
}

/* VmRSS after load and the prefill (so that every weight read in place from
 * the mapping has been read once and counts) against the bound: file
 * size + KV budget + 10 %. */
static void dec_print_rss(const struct model *m, uint64_t kv_bytes, uint64_t own)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long long rss = 0, anon = 0, file = 0;
    while (f && fgets(line, sizeof line, f)) {
        sscanf(line, "VmRSS: %llu", &rss);
        sscanf(line, "RssAnon: %llu", &anon);
        sscanf(line, "RssFile: %llu", &file);
    }
    if (f)
        fclose(f);
    const double fsz = (double)gguf_file_size(m->file), bound = (fsz + (double)kv_bytes) * 1.10;
    const double served = LLORCH_MAX(0.0, rss * 1024.0 - (double)own);
    printf("memory after load and prefill: VmRSS %.1f MB (anon %.1f, file %.1f), of which this bench's "
           "read buffer and GEMM-peak inputs %.1f MB; file %.1f MB + KV budget %.1f MB + 10 %% = %.1f MB; "
           "ratio %.2f of the bound (VmRSS less the bench's own buffers)\n",
           rss / 1024.0 * 1.024, anon / 1024.0 * 1.024, file / 1024.0 * 1.024, (double)own / 1e6,
           fsz / 1e6, (double)kv_bytes / 1e6, bound / 1e6, served / bound);
}

/* ---- decode ------------------------------------------------------------ */

struct dec {
    struct forward *fw;
    struct kv_cache *kv;
    struct kv_seq **seq;
    struct forward_entry *e;
    llorch_token *tok;   /* [max_batch, prompt] */
    float *logits;       /* [max_batch, n_vocab] */
    uint32_t n_vocab;
    uint64_t rng;
};

static llorch_token dec_token(struct dec *d)
{
    d->rng = d->rng * 6364136223846793005ull + 1442695040888963407ull;
    return (llorch_token)((d->rng >> 33) % d->n_vocab);
}

/* One decode step for sequences [0, b): reserve one slot each (as the
 * scheduler does), then forward_step. */
static int dec_step(struct dec *d, uint32_t b)
{
    for (uint32_t i = 0; i < b; i++) {
        int rc = kv_seq_reserve(d->kv, d->seq[i], 1);
        if (rc < 0)
            return rc;
        d->tok[i] = dec_token(d);
        d->e[i] = (struct forward_entry){.seq = d->seq[i], .tokens = &d->tok[i], .n_tokens = 1,
                                         .logits = d->logits + (size_t)i * d->n_vocab};
    }
    return forward_step(d->fw, d->e, b);
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e-6;
}

/* Seconds this process's threads were runnable but waiting for a CPU
 * (the host's other load), summed: /proc/self/task/<tid>/schedstat's second
 * field. 0 where schedstat is missing. */
static double runqueue_wait_seconds(void)
{
    double sum = 0;
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[64];
        snprintf(path, sizeof path, "/proc/self/task/%.16s/schedstat", e->d_name);
        FILE *f = fopen(path, "r");
        unsigned long long run, wait;
        if (f && fscanf(f, "%llu %llu", &run, &wait) == 2)
            sum += (double)wait * 1e-9;
        if (f)
            fclose(f);
    }
    closedir(d);
    return sum;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct batch_result {
    uint32_t b;
    double best_step_s;   /* best round's mean step time */
    double median_step_s; /* over every timed step */
    double bw;            /* best read bandwidth seen alongside */
    double peak;          /* best GEMM peak seen alongside */
    int steps;
    /* --steady: back-to-back steps with nothing between them, as a server's
     * driver runs them (the rounds interleave read passes and GEMM calls) */
    int steady_steps;
    double steady_mean_s, steady_median_s;
    double steady_cores; /* process CPU seconds per wall second over them */
    double steady_wait;  /* threads' seconds waiting for a CPU, per wall second */
    /* --bw-pairs: each step's weight bytes per second over the read
     * bandwidth of the pass right after it, median and range; the passes' median */
    int pairs;
    double pair_med, pair_lo, pair_hi, pair_bw_med;
};

/* --steady: steps back to back for `seconds` (at most DEC_STEADY_MAX_STEPS),
 * nothing else in between: the figure a server's sustained steps compare
 * with. Mean and median over every step, and the cores the process kept busy
 * (CPU time over wall time: below the pool's size when workers sleep or the
 * host takes the cores away). */
static int dec_steady(struct dec *d, uint32_t b, double seconds, double *times,
                      struct batch_result *r)
{
    int n = 0, rc = 0;
    const double c0 = cpu_seconds(), q0 = runqueue_wait_seconds(), w0 = bench_now_s();
    double t = w0;
    while (rc == 0 && n < (int)DEC_STEADY_MAX_STEPS && (n < 2 || t - w0 < seconds)) {
        rc = dec_step(d, b);
        const double t2 = bench_now_s();
        times[n++] = t2 - t;
        t = t2;
    }
    if (rc < 0)
        return rc;
    r->steady_cores = (cpu_seconds() - c0) / (t - w0);
    r->steady_wait = (runqueue_wait_seconds() - q0) / (t - w0);
    r->steady_steps = n;
    r->steady_mean_s = (t - w0) / n;
    qsort(times, (size_t)n, sizeof *times, cmp_double);
    r->steady_median_s = times[n / 2];
    return 0;
}

/* --bw-pairs: one step, then one read trial, n times. On a host whose
 * bandwidth drifts by more than a step's gap to it (a shared VM), the best
 * read trial of a run and a mean of steps are taken at different moments;
 * a step and the pass beside it see the same memory system. */
static int dec_bw_pairs(struct dec *d, uint32_t b, int n, uint64_t wbytes, struct bench_bw *bwc,
                        double *tmp, struct batch_result *r)
{
    double bws[DEC_BW_PAIRS_MAX];
    for (int i = 0; i < n; i++) {
        const double t0 = bench_now_s();
        const int rc = dec_step(d, b);
        if (rc < 0)
            return rc;
        const double step_bps = (double)wbytes / (bench_now_s() - t0);
        bws[i] = bench_bw_trial(bwc, 0.02);
        tmp[i] = step_bps / bws[i];
    }
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
    qsort(bws, (size_t)n, sizeof *bws, cmp_double);
    r->pairs = n;
    r->pair_lo = tmp[0], r->pair_hi = tmp[n - 1], r->pair_med = tmp[n / 2];
    r->pair_bw_med = bws[n / 2];
    return 0;
}

static int run_dtype(const struct cfg *cf, const struct model *m, struct tpool *pool,
                     enum llorch_dtype dt, double *bw_all, double *peak_all, const float *wpeak,
                     struct bench_bw *bwc)
{
    const char *dn = forward_dtype_name(dt);
    uint32_t max_b = 0;
    for (int i = 0; i < cf->n_batches; i++)
        max_b = LLORCH_MAX(max_b, cf->batches[i]);
    /* steps any sequence can take: sequence 0 runs in every batch */
    uint64_t steps_seq0 = 0, kv_tokens = (uint64_t)max_b * (cf->prompt + LLORCH_KV_BLOCK) + cf->pp;
    uint64_t kv_steady = 0; /* --steady's extra room: not in the memory bound below */
    for (int i = 0; i < cf->n_batches; i++) {
        uint32_t b = cf->batches[i];
        uint64_t per_round = LLORCH_MAX(2u, (uint64_t)cf->chunk_max_tokens / b);
        uint64_t steps = (uint64_t)cf->warm + (uint64_t)cf->rounds * per_round;
        if (cf->steady_s > 0) {
            steps_seq0 += DEC_STEADY_MAX_STEPS;
            kv_steady += (uint64_t)DEC_STEADY_MAX_STEPS * b;
        }
        steps_seq0 += (uint64_t)cf->bw_pairs;
        kv_steady += (uint64_t)cf->bw_pairs * b;
        steps_seq0 += steps;
        kv_tokens += steps * b;
    }
    const struct model_hparams *hp = &m->hp;
    const uint64_t elt = dt == LLORCH_DTYPE_F32 ? 4 : 2;
    const uint64_t per_tok = (uint64_t)hp->n_layer * 2 * hp->n_head_kv * hp->head_dim * elt;
    const uint32_t step_tokens = LLORCH_MAX(LLORCH_MAX(max_b, 256u), cf->pp);
    struct forward_opts fo = {
        .dtype = dt,
        .isa = cf->isa,
        .kv_bytes = (kv_tokens + kv_steady) * per_tok * 5 / 4 + (16u << 20),
        .n_ctx = (uint32_t)LLORCH_MAX(cf->prompt + steps_seq0, cf->pp) + 2 * LLORCH_KV_BLOCK,
        .max_seqs = max_b,
        .max_step_tokens = step_tokens,
        .pool = pool,
    };
    struct dec d = {.n_vocab = hp->n_vocab, .rng = 12345};
    char err[256];
    double t0 = bench_now_s();
    int rc = forward_new(&d.fw, m, &fo, err, sizeof err);
    if (rc < 0) {
        printf("%s: forward_new failed: %s\n", dn, err[0] ? err : llorch_strerror(rc));
        return rc;
    }
    double t_load = bench_now_s() - t0;
    d.kv = forward_kv(d.fw);
    d.seq = calloc(max_b, sizeof *d.seq);
    d.e = calloc(max_b, sizeof *d.e);
    d.tok = calloc((size_t)max_b * cf->prompt, sizeof *d.tok);
    d.logits = malloc((size_t)max_b * d.n_vocab * sizeof *d.logits);
    struct peak pk;
    const bool ours = strcmp(forward_matmul_backend(d.fw), "llorch") == 0;
    /* the peak of the level the forward runs (a forced one included) */
    int prc = ours ? peak_new_qmm(&pk, m, forward_isa(d.fw), 128)
                   : peak_new(&pk, pool, dt, wpeak, 512, 4096, 4096);
    if (!d.seq || !d.e || !d.tok || !d.logits || prc != 0) {
        printf("%s: out of memory\n", dn);
        rc = LLORCH_ENOMEM;
        goto out;
    }
    const uint64_t wbytes = forward_weight_bytes(d.fw);
    const double params = matmul_params(m);
    printf("\n== dtype %s: packed in %.1f s; weight bytes read per step %.1f MB (forward_weight_bytes); "
           "%.1f M matmul parameters per token; KV %s\n",
           dn, t_load, (double)wbytes / 1e6, params / 1e6, forward_kv_type_name(forward_kv_type(d.fw)));
    printf("kernels: level %s, matmuls by %s; peak weight: %s (m=%lld n=%lld k=%lld)\n",
           forward_isa_name(d.fw), forward_matmul_backend(d.fw),
           pk.q ? qmm_weight_impl(pk.q) : matmul_weight_impl(pk.w), (long long)pk.m, (long long)pk.n,
           (long long)pk.k);

    /* llama-bench's ppN: one sequence, an N-token prompt in one step */
    if (cf->pp) {
        double best = 1e30;
        llorch_token *pt = calloc(cf->pp, sizeof *pt);
        for (int rep = 0; rep < 3 && pt && rc == 0; rep++) {
            struct kv_seq *sq;
            for (uint32_t j = 0; j < cf->pp; j++)
                pt[j] = dec_token(&d);
            if ((rc = kv_seq_new(d.kv, &sq)) < 0)
                break;
            if ((rc = kv_seq_reserve(d.kv, sq, cf->pp)) == 0) {
                struct forward_entry pe = {.seq = sq, .tokens = pt, .n_tokens = cf->pp, .logits = d.logits};
                double p0 = bench_now_s();
                rc = forward_step(d.fw, &pe, 1);
                best = LLORCH_MIN(best, bench_now_s() - p0);
            }
            kv_seq_free(d.kv, sq);
        }
        free(pt);
        if (rc == 0)
            printf("prefill pp%u: %.1f tok/s (one sequence, one step, best of 3); matmuls %.1f GFLOP/s, "
                   "%.2f of the FMA peak\n",
                   cf->pp, cf->pp / best, 2.0 * params * cf->pp / best / 1e9,
                   cf->fma_peak > 0 ? 2.0 * params * cf->pp / best / cf->fma_peak : 0);
    }

    /* prefill every sequence's prompt, step_tokens tokens per step */
    t0 = bench_now_s();
    uint32_t next = 0;
    while (rc == 0 && next < max_b) {
        uint32_t n = 0;
        while (next < max_b && (n + 1) * cf->prompt <= step_tokens) {
            if ((rc = kv_seq_new(d.kv, &d.seq[next])) < 0 ||
                (rc = kv_seq_reserve(d.kv, d.seq[next], cf->prompt)) < 0)
                break;
            llorch_token *t = d.tok + (size_t)next * cf->prompt;
            for (uint32_t j = 0; j < cf->prompt; j++)
                t[j] = dec_token(&d);
            d.e[n++] = (struct forward_entry){.seq = d.seq[next], .tokens = t,
                                              .n_tokens = cf->prompt,
                                              .logits = d.logits + (size_t)next * d.n_vocab};
            next++;
        }
        if (rc == 0)
            rc = forward_step(d.fw, d.e, n);
    }
    if (rc < 0) {
        printf("%s: prefill failed: %s\n", dn, llorch_strerror(rc));
        goto out;
    }
    printf("prefill: %u sequences x %u tokens in %.2f s (%.1f tok/s)\n", max_b, cf->prompt,
           bench_now_s() - t0, (double)max_b * cf->prompt / (bench_now_s() - t0));
    {
        /* the bench's own buffers: read buffer, oneDNN peak weights, peak inputs */
        uint64_t own = (uint64_t)bwc->n * (uint64_t)bwc->chunk + 4096ull * 4096ull * sizeof(float);
        if (pk.q) {
            own += (uint64_t)(pk.m * pk.k + pk.m * pk.n) * sizeof(float) + qmm_act_bytes(pk.q, pk.m);
            if (qmm_weight_part_copied(pk.q, 0))
                own += qmm_weight_bytes(pk.q);
        }
        /* measured before any --steady step: the bound is the same as without it */
        dec_print_rss(m, kv_tokens * per_tok * 5 / 4 + (16u << 20), own);
    }

    struct batch_result res[DEC_MAX_BATCHES];
    int n_res = 0;
    double *times = malloc(sizeof(double) * (size_t)LLORCH_MAX(cf->rounds * (cf->chunk_max_tokens + 2),
                                                               (int)DEC_STEADY_MAX_STEPS));
    for (int bi = 0; bi < cf->n_batches && rc == 0 && times; bi++) {
        const uint32_t b = cf->batches[bi];
        struct batch_result *r = &res[n_res];
        *r = (struct batch_result){.b = b, .best_step_s = 1e30};
        for (int i = 0; i < cf->warm && rc == 0; i++)
            rc = dec_step(&d, b);
        const int max_steps = (int)LLORCH_MAX(2u, (uint32_t)cf->chunk_max_tokens / b);
        int nt = 0;
        for (int round = 0; round < cf->rounds && rc == 0; round++) {
            peak_round(&pk, pool);
            r->bw = LLORCH_MAX(r->bw, bench_bw_trial(bwc, cf->bw_s));
            r->peak = LLORCH_MAX(pk.pool_best, pk.raw_best);
            int steps = 0;
            double c0 = bench_now_s(), t = c0;
            while (rc == 0 && steps < max_steps && (steps < 2 || t - c0 < cf->chunk_s)) {
                rc = dec_step(&d, b);
                double t2 = bench_now_s();
                times[nt++] = t2 - t;
                t = t2;
                steps++;
            }
            if (rc == 0)
                r->best_step_s = LLORCH_MIN(r->best_step_s, (t - c0) / steps);
        }
        if (rc < 0) {
            printf("%s: batch %u: decode step failed: %s\n", dn, b, llorch_strerror(rc));
            break;
        }
        qsort(times, (size_t)nt, sizeof *times, cmp_double);
        r->median_step_s = times[nt / 2];
        r->steps = nt;
        if (cf->steady_s > 0 && rc == 0)
            rc = dec_steady(&d, b, cf->steady_s, times, r);
        if (cf->bw_pairs > 0 && rc == 0)
            rc = dec_bw_pairs(&d, b, cf->bw_pairs, wbytes, bwc, times, r);
        *bw_all = LLORCH_MAX(*bw_all, r->bw);
        *peak_all = LLORCH_MAX(*peak_all, r->peak);
        n_res++;
    }
    free(times);

    /* Ratios use the best limits seen over all of this dtype's rounds (a
     * round where the background load hit the read pass but not the decode
     * chunk would otherwise give a ratio above 1); the per-batch figures
     * seen alongside are printed below the table. */
    double bw_dt = 0, peak_dt = 0;
    for (int i = 0; i < n_res; i++) {
        bw_dt = LLORCH_MAX(bw_dt, res[i].bw);
        peak_dt = LLORCH_MAX(peak_dt, res[i].peak);
    }
    const char *unit = dt == LLORCH_DTYPE_INT8 || dt == LLORCH_DTYPE_NATIVE ? "GOP/s" : "GFLOP/s";
    printf("read bandwidth %s run: %.1f GB/s (best of %d trials)\n", dn, bw_dt / 1e9,
           n_res * cf->rounds);
    printf("GEMM peak %s: %.1f %s (m=%lld n=%lld k=%lld; best of pool %.1f, omp %.1f)\n", dn,
           peak_dt / 1e9, unit, (long long)pk.m, (long long)pk.n, (long long)pk.k,
           pk.pool_best / 1e9, pk.raw_best / 1e9);
    printf("%-5s %-10s %9s %9s %9s %9s %6s %11s %6s %6s\n", "dtype", "batch", "tok/s", "ms/step",
           "med ms", "GB/s", "xBW", unit, "xPEAK", "steps");
    for (int i = 0; i < n_res; i++) {
        const struct batch_result *r = &res[i];
        const double tps = r->b / r->best_step_s;
        const double gbs = (double)wbytes / r->best_step_s / 1e9;
        const double flops = 2.0 * params * r->b / r->best_step_s;
        printf("%-5s batch %-4u %9.1f %9.2f %9.2f %9.1f %6.2f %11.1f %6.2f %6d   tok/s (med %.1f)\n",
               dn, r->b, tps, r->best_step_s * 1e3, r->median_step_s * 1e3, gbs,
               bw_dt > 0 ? gbs * 1e9 / bw_dt : 0, flops / 1e9, peak_dt > 0 ? flops / peak_dt : 0,
               r->steps, r->b / r->median_step_s);
    }
    for (int i = 0; i < n_res; i++)
        printf("  batch %u: read bandwidth alongside %.1f GB/s (bound %.1f tok/s x batch), GEMM "
               "peak alongside %.1f %s (bound %.1f tok/s)\n",
               res[i].b, res[i].bw / 1e9, res[i].bw / (double)wbytes, res[i].peak / 1e9, unit,
               res[i].peak / (2.0 * params));
    for (int i = 0; i < n_res && cf->steady_s > 0; i++)
        printf("steady %s batch %u: %d back-to-back steps, mean %.2f ms/step, median %.2f ms, "
               "%.1f tok/s (mean), %.2f cores busy, %.2f threads waiting for a CPU\n",
               dn, res[i].b, res[i].steady_steps, res[i].steady_mean_s * 1e3,
               res[i].steady_median_s * 1e3, res[i].b / res[i].steady_mean_s, res[i].steady_cores,
               res[i].steady_wait);
    for (int i = 0; i < n_res && cf->bw_pairs > 0; i++)
        printf("pairs %s batch %u: %d adjacent (step, read pass) pairs, step weight bytes/s over the "
               "pass's bandwidth: median %.2f (range %.2f-%.2f); passes' median %.1f GB/s\n",
               dn, res[i].b, res[i].pairs, res[i].pair_med, res[i].pair_lo, res[i].pair_hi,
               res[i].pair_bw_med / 1e9);
out:
    peak_free(&pk);
    for (uint32_t i = 0; d.seq && i < max_b; i++)
        kv_seq_free(d.kv, d.seq[i]);
    free(d.seq);
    free(d.e);
    free(d.tok);
    free(d.logits);
    forward_free(d.fw);
    return rc;
}

/* ---- main -------------------------------------------------------------- */

static int parse_dtype(const char *s, struct cfg *cf)
{
    cf->n_dtypes = 0;
    if (strcmp(s, "all") == 0) {
        cf->dtypes[cf->n_dtypes++] = LLORCH_DTYPE_BF16;
        cf->dtypes[cf->n_dtypes++] = LLORCH_DTYPE_INT8;
        cf->dtypes[cf->n_dtypes++] = LLORCH_DTYPE_F32;
        return 0;
    }
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (cf->n_dtypes == 4)
            return -1;
        if (strcmp(t, "f32") == 0)
            cf->dtypes[cf->n_dtypes++] = LLORCH_DTYPE_F32;
        else if (strcmp(t, "bf16") == 0)
            cf->dtypes[cf->n_dtypes++] = LLORCH_DTYPE_BF16;
        else if (strcmp(t, "int8") == 0)
            cf->dtypes[cf->n_dtypes++] = LLORCH_DTYPE_INT8;
        else if (strcmp(t, "native") == 0)
            cf->dtypes[cf->n_dtypes++] = LLORCH_DTYPE_NATIVE;
        else
            return -1;
    }
    return cf->n_dtypes ? 0 : -1;
}

static int parse_batches(const char *s, struct cfg *cf)
{
    cf->n_batches = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        long v = strtol(t, &end, 10);
        if (*end || v < 1 || v > 256 || cf->n_batches == DEC_MAX_BATCHES)
            return -1;
        cf->batches[cf->n_batches++] = (uint32_t)v;
    }
    return cf->n_batches ? 0 : -1;
}

int main(int argc, char **argv)
{
    /* libgomp reads its wait policy when it loads: the raw oneDNN peak call
     * would leave OpenMP threads spinning for milliseconds on the cores the
     * next decode steps need, so run with a passive policy unless told. */
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        execv("/proc/self/exe", argv);
    }
    const char *tmpdir = getenv("TMPDIR");
    struct cfg cf = {.cache_dir = tmpdir && tmpdir[0] ? tmpdir : "/tmp", .prompt = 16, .warm = 2,
                     .rounds = 5, .chunk_s = 0.5, .bw_s = 0.1, .chunk_max_tokens = 256};
    parse_dtype("native", &cf);
    parse_batches("1,4,16,64", &cf);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quick") == 0) {
            cf.quick = true;
        } else if (strcmp(a, "--spin-us") == 0 && v && atoi(v) > 0 && atoi(v) <= 1000000) {
            cf.spin_us = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--pin") == 0) {
            cf.pin = true;
        } else if (strcmp(a, "--model") == 0 && v) {
            cf.model = v, i++;
        } else if (strcmp(a, "--cache-dir") == 0 && v) {
            cf.cache_dir = v, i++;
        } else if (strcmp(a, "--threads") == 0 && v) {
            cf.threads = atoi(v), i++;
        } else if (strcmp(a, "--prompt") == 0 && v && atoi(v) >= 1 && atoi(v) <= 256) {
            cf.prompt = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--pp") == 0 && v && atoi(v) >= 1 && atoi(v) <= 4096) {
            cf.pp = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--rounds") == 0 && v && atoi(v) >= 1 && atoi(v) <= 100) {
            cf.rounds = atoi(v), i++;
        } else if (strcmp(a, "--steady") == 0 && v && atof(v) > 0 && atof(v) <= 600) {
            cf.steady_s = atof(v), i++;
        } else if (strcmp(a, "--bw-pairs") == 0 && v && atoi(v) >= 1 && atoi(v) <= DEC_BW_PAIRS_MAX) {
            cf.bw_pairs = atoi(v), i++;
        } else if (strcmp(a, "--isa") == 0 && v &&
                   (strcmp(v, "auto") == 0 || strcmp(v, "scalar") == 0 || strcmp(v, "avx2") == 0 ||
                    strcmp(v, "avxvnni") == 0 || strcmp(v, "avx512") == 0)) {
            cf.isa = strcmp(v, "scalar") == 0    ? LLORCH_ISA_SCALAR
                     : strcmp(v, "avx2") == 0    ? LLORCH_ISA_AVX2
                     : strcmp(v, "avxvnni") == 0 ? LLORCH_ISA_AVXVNNI
                     : strcmp(v, "avx512") == 0  ? LLORCH_ISA_AVX512
                                                 : LLORCH_ISA_AUTO;
            i++;
        } else if (strcmp(a, "--dtype") == 0 && v && parse_dtype(v, &cf) == 0) {
            i++;
        } else if (strcmp(a, "--batches") == 0 && v && parse_batches(v, &cf) == 0) {
            i++;
        } else {
            fprintf(stderr,
                    "usage: %s [--model PATH] [--dtype native,bf16,int8,f32|all] [--isa auto|scalar|avx2|avxvnni|avx512]\n"
                    "          [--batches 1,4,16,64]\n"
                    "          [--quick] [--rounds N] [--prompt N] [--pp N] [--threads N] [--pin] [--spin-us N]\n"
                    "          [--steady SECONDS] [--bw-pairs N]\n"
                    "          [--cache-dir DIR]\n",
                    argv[0]);
            return 2;
        }
    }
    if (cf.quick) {
        cf.rounds = LLORCH_MIN(cf.rounds, 3);
        cf.chunk_s = 0.15;
        cf.bw_s = 0.05;
        cf.chunk_max_tokens = 128;
    }

    struct tpool *pool;
    int rc = tpool_new(&pool, &(struct tpool_opts){.n_threads = cf.threads, .pin = cf.pin,
                                                    .spin_us = cf.spin_us, .name = "decode-w"});
    if (rc < 0) {
        fprintf(stderr, "tpool_new: %s\n", llorch_strerror(rc));
        return 1;
    }
    const int P = tpool_size(pool);
    char cpu[256], flags[512];
    bench_cpu_model(cpu, sizeof cpu, flags, sizeof flags);
    const uint64_t llc = bench_llc_bytes();
    double load[3] = {0};
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = -1;
        fclose(la);
    }
    printf("machine: %s\n", cpu);
    printf("workers: %d (pool threads incl. caller%s), online CPUs: %ld; load average %.2f %.2f %.2f\n",
           P, cf.pin ? ", pinned" : "", sysconf(_SC_NPROCESSORS_ONLN), load[0], load[1], load[2]);
    printf("cpu flags: %s\n", flags);
    printf("oneDNN %d.%d.%d, effective ISA: %s; engine kernels: %s; OMP_WAIT_POLICY=%s\n", dnnl_version()->major,
           dnnl_version()->minor, dnnl_version()->patch, matmul_cpu_isa_name(), kernels_best()->name,
           getenv("OMP_WAIT_POLICY"));
    printf("mode: %s (%d rounds per batch of {GEMM peak calls, read passes, decode steps >= %.0f ms, "
           "<= %d tokens}; %d warm-up steps; prompt %u tokens)\n",
           cf.quick ? "quick" : "full", cf.rounds, cf.chunk_s * 1e3, cf.chunk_max_tokens, cf.warm,
           cf.prompt);

    char path[PATH_MAX];
    if (!cf.model) {
        if (default_model(&cf, argv[0], path, sizeof path) != 0)
            return 1;
        cf.model = path;
    }
    struct model *m;
    char err[256];
    double t0 = bench_now_s();
    if ((rc = model_load(&m, cf.model, err, sizeof err)) < 0) {
        fprintf(stderr, "%s: %s\n", cf.model, err[0] ? err : llorch_strerror(rc));
        return 1;
    }
    const struct model_hparams *hp = &m->hp;
    printf("model: %s (%s): %s, %u layers, n_embd %u, n_ff %u, heads %u / kv %u, head_dim %u, "
           "vocab %u; loaded in %.1f s\n",
           cf.model, m->name, model_arch_name(hp->arch), hp->n_layer, hp->n_embd, hp->n_ff,
           hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_vocab, bench_now_s() - t0);

    /* read buffer: far beyond the last-level cache, bounded for a shared box */
    const uint64_t mib = 1u << 20;
    const uint64_t bw_bytes = cf.quick ? 256 * mib : LLORCH_MIN(LLORCH_MAX(8 * llc, 256 * mib), 1024 * mib);
    struct bench_bw bwc = {.pool = pool, .chunk = 1 << 20};
    bwc.n = (int64_t)(bw_bytes / (uint64_t)bwc.chunk);
    uint8_t *bwbuf = NULL;
    float *wpeak = bench_rand_floats(4096 * 4096, 1);
    if (!wpeak || posix_memalign((void **)&bwbuf, 4096, bw_bytes) != 0) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    memset(bwbuf, 1, bw_bytes); /* fault every page in before timing */
    bwc.buf = bwbuf;
    printf("read buffer %.0f MiB (last-level cache %.1f MiB)\n", (double)bw_bytes / mib,
           (double)llc / mib);
    cf.fma_peak = fma_peak(pool);
    printf("FMA peak: %.1f GFLOP/s (8-lane f32 fmas from registers on %d workers, best of 5): the "
           "ceiling of the float types' matmuls\n",
           cf.fma_peak / 1e9, tpool_size(pool));

    double bw_all = 0, peak_all[3] = {0};
    int failed = 0;
    for (int i = 0; i < cf.n_dtypes; i++)
        failed |= run_dtype(&cf, m, pool, cf.dtypes[i], &bw_all, &peak_all[i], wpeak, &bwc) < 0;
    printf("\nread bandwidth (best seen): %.1f GB/s\n", bw_all / 1e9);
    printf("tok/s and ms/step: best round's mean step; med: median step. GB/s: packed weight bytes "
           "per step / step time; xBW: ratio to the best read bandwidth of the dtype's run "
           "(batch-1 target >= 0.85). GFLOP/s: 2 x matmul parameters x tokens / step time (attention "
           "excluded); xPEAK: ratio to the best GEMM peak of the dtype's run "
           "(batch-64 target >= 0.60).\n");
    free(bwbuf);
    free(wpeak);
    model_free(m);
    tpool_free(pool);
    return failed ? 1 : 0;
}
