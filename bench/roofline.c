/* bench/roofline: the limits of this machine, measured in one run, and how
 * close matmul_run gets to them.
 *   - read bandwidth: all pool workers streaming through a buffer far larger
 *     than the last-level cache (best of several passes);
 *   - GEMM peak per type (f32, bf16, int8): a large square-ish matmul through
 *     matmul_run (pool tasks, one OpenMP thread each), and the same shape as
 *     one raw oneDNN primitive parallelised by its own OpenMP;
 *   - batch 64 and batch 1 on a 5632x2048 weight (TinyLlama's FFN up/gate),
 *     cycling through enough copies that weights come from DRAM as in a real
 *     decode step; batch 1 as a ratio to the read bandwidth, batch 64 as a
 *     ratio to the GEMM peak.
 * Prints figures and ratios; never asserts. --quick runs in a few seconds. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <oneapi/dnnl/dnnl.h>

#include "bench_common.h"
#include "llorch/llorch.h"
#include "matmul.h"
#include "tpool.h"
#include "util.h"

struct cfg {
    bool quick;
    bool pin;
    int threads;
    double min_trial_s; /* each timed trial runs at least this long */
    int trials;         /* best of */
};


/* ---- machine ---- */



/* ---- read bandwidth ---- */

/* ---- timing ---- */

typedef int (*bench_fn)(void *ctx, int iter);


/* ---- matmul_run over a set of weight copies ---- */

struct mm_bench {
    struct mm_weight **w;
    int n_copies;
    struct tpool *pool;
    const float *x;
    float *y;
    int64_t m;
};

static int mm_bench_call(void *vctx, int iter)
{
    struct mm_bench *b = vctx;
    return matmul_run(b->w[iter % b->n_copies], b->x, b->y, b->m, b->pool);
}

/* ---- raw oneDNN, one primitive, its own OpenMP parallelism ---- */

struct raw {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    dnnl_primitive_t prim;
    dnnl_memory_t src, dst;
    dnnl_memory_t *wei;
    void **wbuf;
    int n_copies;
    int nthr;
    void *srcbuf, *dstbuf;
};

static void raw_free(struct raw *r)
{
    if (r->prim)
        dnnl_primitive_destroy(r->prim);
    for (int i = 0; r->wei && i < r->n_copies; i++) {
        if (r->wei[i])
            dnnl_memory_destroy(r->wei[i]);
        free(r->wbuf[i]);
    }
    free(r->wei);
    free(r->wbuf);
    if (r->src)
        dnnl_memory_destroy(r->src);
    if (r->dst)
        dnnl_memory_destroy(r->dst);
    free(r->srcbuf);
    free(r->dstbuf);
    if (r->stream)
        dnnl_stream_destroy(r->stream);
    if (r->eng)
        dnnl_engine_destroy(r->eng);
    memset(r, 0, sizeof(*r));
}

#define RAW_CK(x)                                                                              \
    do {                                                                                       \
        if ((x) != dnnl_success) {                                                             \
            raw_free(r);                                                                       \
            return -1;                                                                         \
        }                                                                                      \
    } while (0)

/* oneDNN sizes a primitive's parallelism by the creating thread's OpenMP
 * limit, and pool tasks that ran on this thread (worker 0) left it at 1:
 * set it to nthr for creation and for every execution. */
static int raw_new(struct raw *r, enum llorch_dtype dt, int64_t m, int64_t n, int64_t k,
                   const float *w, int n_copies, int nthr)
{
    memset(r, 0, sizeof(*r));
    r->nthr = nthr;
    omp_set_num_threads(nthr);
    dnnl_data_type_t sdt = dt == LLORCH_DTYPE_F32 ? dnnl_f32 : dt == LLORCH_DTYPE_BF16 ? dnnl_bf16 : dnnl_u8;
    dnnl_data_type_t wdt = dt == LLORCH_DTYPE_F32 ? dnnl_f32 : dt == LLORCH_DTYPE_BF16 ? dnnl_bf16 : dnnl_s8;
    dnnl_data_type_t ddt = dt == LLORCH_DTYPE_INT8 ? dnnl_s32 : dnnl_f32;
    size_t ssz = dt == LLORCH_DTYPE_F32 ? 4 : dt == LLORCH_DTYPE_BF16 ? 2 : 1;
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
    dnnl_primitive_desc_t pd;
    RAW_CK(dnnl_primitive_desc_create(&pd, &desc, NULL, r->eng, NULL));
    const dnnl_memory_desc_t *packed = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_status_t s = dnnl_primitive_create(&r->prim, pd);
    dnnl_memory_desc_t packed_md = *packed;
    dnnl_primitive_desc_destroy(pd);
    RAW_CK(s);
    /* weights: f32 -> packed (plain conversion; int8 values are just
     * rounded, which is all a speed measurement needs) */
    dnnl_primitive_desc_t rpd;
    RAW_CK(dnnl_reorder_primitive_desc_create(&rpd, &wplain, r->eng, &packed_md, r->eng, NULL));
    dnnl_primitive_t reorder;
    s = dnnl_primitive_create(&reorder, rpd);
    dnnl_primitive_desc_destroy(rpd);
    RAW_CK(s);
    r->n_copies = n_copies;
    r->wei = calloc((size_t)n_copies, sizeof(*r->wei));
    r->wbuf = calloc((size_t)n_copies, sizeof(*r->wbuf));
    dnnl_memory_t wsrc = NULL;
    s = r->wei && r->wbuf ? dnnl_memory_create(&wsrc, &wplain, r->eng, (void *)w) : dnnl_out_of_memory;
    for (int i = 0; s == dnnl_success && i < n_copies; i++) {
        if (posix_memalign(&r->wbuf[i], 4096, dnnl_memory_desc_get_size(&packed_md)) != 0) {
            s = dnnl_out_of_memory;
            break;
        }
        s = dnnl_memory_create(&r->wei[i], &packed_md, r->eng, r->wbuf[i]);
        dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, wsrc}, {DNNL_ARG_TO, r->wei[i]}};
        if (s == dnnl_success)
            s = dnnl_primitive_execute(reorder, r->stream, 2, a);
    }
    if (s == dnnl_success)
        s = dnnl_stream_wait(r->stream);
    if (wsrc)
        dnnl_memory_destroy(wsrc);
    dnnl_primitive_destroy(reorder);
    RAW_CK(s);
    if (posix_memalign(&r->srcbuf, 64, (size_t)(m * k) * ssz) != 0 ||
        posix_memalign(&r->dstbuf, 64, (size_t)(m * n) * 4) != 0) {
        raw_free(r);
        return -1;
    }
    memset(r->srcbuf, 0x3c, (size_t)(m * k) * ssz);
    RAW_CK(dnnl_memory_create(&r->src, &smd, r->eng, r->srcbuf));
    RAW_CK(dnnl_memory_create(&r->dst, &dmd, r->eng, r->dstbuf));
    return 0;
}

static int raw_call(void *vctx, int iter)
{
    struct raw *r = vctx;
    if (omp_get_max_threads() != r->nthr)
        omp_set_num_threads(r->nthr);
    dnnl_exec_arg_t a[3] = {{DNNL_ARG_SRC, r->src},
                            {DNNL_ARG_WEIGHTS, r->wei[iter % r->n_copies]},
                            {DNNL_ARG_DST, r->dst}};
    if (dnnl_primitive_execute(r->prim, r->stream, 3, a) != dnnl_success)
        return -1;
    return dnnl_stream_wait(r->stream) == dnnl_success ? 0 : -1;
}

/* ---- interleaved measurements ---- */

/* The machine may be shared: each measurement of a group runs one trial in
 * turn, round after round, and keeps its best, so that compared figures see
 * the same background load. */
struct meas {
    const char *name;
    bench_fn fn;
    void *ctx;
    double work; /* bytes or operations per call */
    double best; /* seconds per call; < 0 when it failed */
    int iter;
};

static void measure_group(struct meas *ms, int n, const struct cfg *cf)
{
    for (int i = 0; i < n; i++) {
        ms[i].best = 1e30;
        ms[i].iter = 0;
        if (!ms[i].fn || ms[i].fn(ms[i].ctx, ms[i].iter++) != 0) /* warm-up */
            ms[i].best = -1;
    }
    for (int t = 0; t < cf->trials; t++) {
        for (int i = 0; i < n; i++) {
            if (ms[i].best < 0)
                continue;
            int calls = 0;
            double t0 = bench_now_s(), dt = 0.0;
            do {
                if (ms[i].fn(ms[i].ctx, ms[i].iter++) != 0) {
                    ms[i].best = -1;
                    break;
                }
                calls++;
                dt = bench_now_s() - t0;
            } while (dt < cf->min_trial_s);
            if (ms[i].best > 0 && dt / calls < ms[i].best)
                ms[i].best = dt / calls;
        }
    }
}

static double meas_rate(const struct meas *m) /* work per second / 1e9 */
{
    return m->best > 0 ? m->work / m->best / 1e9 : 0;
}

/* ---- one type ---- */

static const char *dt_name(enum llorch_dtype dt)
{
    return dt == LLORCH_DTYPE_F32 ? "f32" : dt == LLORCH_DTYPE_BF16 ? "bf16" : "int8";
}

static size_t dt_bytes(enum llorch_dtype dt)
{
    return dt == LLORCH_DTYPE_F32 ? 4 : dt == LLORCH_DTYPE_BF16 ? 2 : 1;
}

struct shapes {
    int64_t gm, gn, gk;    /* GEMM peak shape */
    int64_t vn, vk;        /* decode weight: n_out x n_in */
    int64_t batch;         /* the "large batch" decode row count */
    uint64_t stream_bytes; /* copies of the decode weight span at least this */
};

struct pool_set { /* copies of one weight for matmul_run */
    struct mm_weight **w;
    int n;
    struct mm_bench b;
};

static int pool_set_new(struct pool_set *ps, struct tpool *pool, enum llorch_dtype dt, int64_t m,
                        int64_t n, int64_t k, int copies, int64_t tile_n, bool no_gemv,
                        const float *w, const float *x, float *y)
{
    memset(ps, 0, sizeof(*ps));
    ps->w = calloc((size_t)copies, sizeof(*ps->w));
    if (!ps->w)
        return -1;
    struct mm_tiling tl = {.tile_n = tile_n, .no_gemv = no_gemv};
    for (; ps->n < copies; ps->n++)
        if (matmul_weight_new_tiled(&ps->w[ps->n], w, n, k, dt, m, pool, &tl) != 0)
            return -1;
    ps->b = (struct mm_bench){.w = ps->w, .n_copies = copies, .pool = pool, .x = x, .y = y, .m = m};
    return 0;
}

static void pool_set_free(struct pool_set *ps)
{
    for (int i = 0; i < ps->n; i++)
        matmul_weight_free(ps->w[i]);
    free(ps->w);
    memset(ps, 0, sizeof(*ps));
}

static int copies_for(const struct shapes *sh, enum llorch_dtype dt)
{
    uint64_t one = (uint64_t)(sh->vn * sh->vk) * dt_bytes(dt);
    int c = (int)((sh->stream_bytes + one - 1) / one);
    return c < 2 ? 2 : c;
}

static const enum llorch_dtype dts[] = {LLORCH_DTYPE_F32, LLORCH_DTYPE_BF16, LLORCH_DTYPE_INT8};

static int bw_call(void *vctx, int iter)
{
    (void)iter;
    bench_bw_pass(vctx);
    return 0;
}

int main(int argc, char **argv)
{
    struct cfg cf = {.trials = 15, .min_trial_s = 0.1};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            cf.quick = true;
        } else if (strcmp(argv[i], "--pin") == 0) {
            cf.pin = true;
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            cf.threads = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--quick] [--threads N] [--pin]\n", argv[0]);
            return 2;
        }
    }
    if (cf.quick) {
        cf.trials = 4;
        cf.min_trial_s = 0.025;
    }

    struct tpool *pool;
    int err = tpool_new(&pool, &(struct tpool_opts){.n_threads = cf.threads, .pin = cf.pin,
                                                     .name = "roofline-w"});
    if (err) {
        fprintf(stderr, "tpool_new: %s\n", llorch_strerror(err));
        return 1;
    }
    int P = tpool_size(pool);
    char model[256], flags[512];
    bench_cpu_model(model, sizeof(model), flags, sizeof(flags));
    uint64_t llc = bench_llc_bytes();
    printf("machine: %s\n", model);
    printf("workers: %d (pool threads incl. caller%s), online CPUs: %ld\n", P,
           cf.pin ? ", pinned" : "", sysconf(_SC_NPROCESSORS_ONLN));
    printf("cpu flags: %s\n", flags);
    printf("last-level cache: %.1f MiB\n", (double)llc / (1 << 20));
    printf("oneDNN %d.%d.%d, effective ISA: %s\n", dnnl_version()->major, dnnl_version()->minor,
           dnnl_version()->patch, matmul_cpu_isa_name());
    printf("mode: %s (interleaved trials, best of %d, each >= %.0f ms)\n", cf.quick ? "quick" : "full",
           cf.trials, cf.min_trial_s * 1e3);

    /* Buffers must dwarf the last-level cache, but VMs report anything (one
     * reported 508 MiB for a 32 MiB L3), and the machine may be shared:
     * clamp. */
    uint64_t mib = 1 << 20;
    uint64_t bw_bytes = cf.quick ? 256 * mib : LLORCH_MIN(LLORCH_MAX(8 * llc, 256 * mib), 1024 * mib);
    struct shapes sh = {
        .gm = cf.quick ? 256 : 512, .gn = cf.quick ? 2048 : 4096, .gk = cf.quick ? 2048 : 4096,
        .vn = 5632, .vk = 2048, .batch = 64,
        .stream_bytes = cf.quick ? 128 * mib : LLORCH_MIN(LLORCH_MAX(4 * llc, 128 * mib), 512 * mib),
    };
    printf("shapes: GEMM peak m=%lld n_out=%lld n_in=%lld; decode weight n_out=%lld n_in=%lld at "
           "m=1 and m=%lld, copies cycled to span >= %.0f MiB; read buffer %.0f MiB\n\n",
           (long long)sh.gm, (long long)sh.gn, (long long)sh.gk, (long long)sh.vn,
           (long long)sh.vk, (long long)sh.batch, (double)sh.stream_bytes / mib,
           (double)bw_bytes / mib);

    int64_t xmax = LLORCH_MAX(sh.gm * sh.gk, sh.batch * sh.vk);
    int64_t ymax = LLORCH_MAX(sh.gm * sh.gn, sh.batch * sh.vn);
    float *wg = bench_rand_floats(sh.gn * sh.gk, 1), *wv = bench_rand_floats(sh.vn * sh.vk, 2);
    float *x = bench_rand_floats(xmax, 3), *y = bench_rand_floats(ymax, 4);
    /* the roofline is the best of a plain streaming read and one with
     * software prefetch (which oneDNN's kernels use and which gained up to
     * ~10% on the Zen 5 VM) */
    struct bench_bw bwc = {.pool = pool, .chunk = 1 << 20};
    bwc.n = (int64_t)(bw_bytes / (uint64_t)bwc.chunk);
    struct bench_bw bwp = bwc;
    bwp.prefetch = 512;
    uint8_t *bwbuf = NULL;
    if (!wg || !wv || !x || !y || posix_memalign((void **)&bwbuf, 4096, bw_bytes) != 0) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    memset(bwbuf, 1, bw_bytes); /* fault every page in before timing */
    bwc.buf = bwbuf;
    bwp.buf = bwbuf;

    struct pool_set dec;
    struct raw raw;
    struct meas ms[8];
    omp_set_num_threads(P);
    double vbytes = (double)(sh.vn * sh.vk);
    double bw = 0, bw_with[3] = {0};
    double gemv_pool[3] = {0}, gemv_raw[3] = {0}, b64_pool[3] = {0}, b64_raw[3] = {0};
    int64_t dec_tile = 0;
    /* oneDNN 2.6 has no kernel for some types on some CPUs (bf16 below
     * AVX-512): those are skipped, said so, and left out of what follows */
    bool have[3] = {false, false, false};
    for (int d = 0; d < 3; d++) {
        /* 1. batch 1, interleaved with the read bandwidth it is compared to */
        int copies = copies_for(&sh, dts[d]);
        if (pool_set_new(&dec, pool, dts[d], sh.batch, sh.vn, sh.vk, copies, 0, false, wv, x, y) != 0 ||
            raw_new(&raw, dts[d], 1, sh.vn, sh.vk, wv, copies, P) != 0) {
            printf("%s: skipped, oneDNN has no matmul for it on this CPU\n", dt_name(dts[d]));
            pool_set_free(&dec);
            continue;
        }
        have[d] = true;
        dec.b.m = 1;
        dec_tile = matmul_weight_tile_n(dec.w[0]);
        ms[0] = (struct meas){.fn = bw_call, .ctx = &bwc,
                              .work = (double)bwc.n * (double)bwc.chunk};
        ms[1] = (struct meas){.fn = mm_bench_call, .ctx = &dec.b,
                              .work = vbytes * (double)dt_bytes(dts[d])};
        ms[2] = (struct meas){.fn = raw_call, .ctx = &raw,
                              .work = vbytes * (double)dt_bytes(dts[d])};
        ms[3] = (struct meas){.fn = bw_call, .ctx = &bwp,
                              .work = (double)bwp.n * (double)bwp.chunk};
        measure_group(ms, 4, &cf);
        bw_with[d] = LLORCH_MAX(meas_rate(&ms[0]), meas_rate(&ms[3])) * 1e9;
        bw = LLORCH_MAX(bw, bw_with[d]);
        gemv_pool[d] = meas_rate(&ms[1]);
        gemv_raw[d] = meas_rate(&ms[2]);
        raw_free(&raw);

        /* 2. batch 64 on the same weights */
        if (raw_new(&raw, dts[d], sh.batch, sh.vn, sh.vk, wv, copies, P) != 0) {
            fprintf(stderr, "%s: setup failed\n", dt_name(dts[d]));
            return 1;
        }
        dec.b.m = sh.batch;
        double ops = 2.0 * (double)(sh.batch * sh.vn * sh.vk);
        ms[0] = (struct meas){.fn = mm_bench_call, .ctx = &dec.b, .work = ops};
        ms[1] = (struct meas){.fn = raw_call, .ctx = &raw, .work = ops};
        measure_group(ms, 2, &cf);
        b64_pool[d] = meas_rate(&ms[0]);
        b64_raw[d] = meas_rate(&ms[1]);
        raw_free(&raw);
        pool_set_free(&dec);
    }
    printf("read bandwidth: %.1f GB/s (%d workers; measured alongside f32/bf16/int8 batch 1: "
           "%.1f / %.1f / %.1f)\n",
           bw / 1e9, P, bw_with[0] / 1e9, bw_with[1] / 1e9, bw_with[2] / 1e9);

    /* 3. GEMM peak */
    struct pool_set big[3];
    struct raw raw2[3];
    const char *impl[3] = {"-", "-", "-"};
    int64_t tile[3] = {0};
    int n_ms = 0, at[3] = {0};
    for (int d = 0; d < 3; d++) {
        if (!have[d])
            continue;
        if (pool_set_new(&big[d], pool, dts[d], sh.gm, sh.gn, sh.gk, 1, 0, false, wg, x, y) != 0 ||
            raw_new(&raw2[d], dts[d], sh.gm, sh.gn, sh.gk, wg, 1, P) != 0) {
            fprintf(stderr, "%s: setup failed\n", dt_name(dts[d]));
            return 1;
        }
        impl[d] = matmul_weight_impl(big[d].w[0]);
        tile[d] = matmul_weight_tile_n(big[d].w[0]);
        double ops = 2.0 * (double)(sh.gm * sh.gn * sh.gk);
        at[d] = n_ms;
        ms[n_ms++] = (struct meas){.fn = mm_bench_call, .ctx = &big[d].b, .work = ops};
        ms[n_ms++] = (struct meas){.fn = raw_call, .ctx = &raw2[d], .work = ops};
    }
    measure_group(ms, n_ms, &cf);
    double gemm_pool[3] = {0}, gemm_raw[3] = {0};
    for (int d = 0; d < 3; d++) {
        if (!have[d])
            continue;
        gemm_pool[d] = meas_rate(&ms[at[d]]);
        gemm_raw[d] = meas_rate(&ms[at[d] + 1]);
        raw_free(&raw2[d]);
        pool_set_free(&big[d]);
    }

    printf("\n%-5s %-21s | %-25s | %-25s | %-31s\n", "type", "oneDNN impl", "GEMM peak: pool / omp",
           "batch-64: pool / omp", "batch-1 GB/s: pool / omp");
    for (int d = 0; d < 3; d++)
        if (have[d])
            printf("%-5s %-21s | %10.1f / %10.1f | %10.1f / %10.1f | %6.1f (%.2f) / %6.1f (%.2f)\n",
               dt_name(dts[d]), impl[d], gemm_pool[d], gemm_raw[d], b64_pool[d], b64_raw[d],
               gemv_pool[d], bw_with[d] > 0 ? gemv_pool[d] * 1e9 / bw_with[d] : 0, gemv_raw[d],
               bw_with[d] > 0 ? gemv_raw[d] * 1e9 / bw_with[d] : 0);
    printf("(GFLOP/s; int8 GOP/s. pool: matmul_run, tasks of one oneDNN primitive on one OpenMP "
           "thread, tiles of %lld (GEMM) and %lld (decode) columns; omp: one oneDNN primitive on %d "
           "OpenMP threads. "
           "batch-1 in parentheses: ratio to the read bandwidth measured alongside)\n",
           (long long)tile[0], (long long)dec_tile, P);

    /* one line per type in the form bench/run-all parses */
    printf("\n");
    for (int d = 0; d < 3; d++)
        if (have[d])
            printf("GEMM peak %s: %.1f %s (best of pool %.1f, omp %.1f)\n", dt_name(dts[d]),
               LLORCH_MAX(gemm_pool[d], gemm_raw[d]),
               dts[d] == LLORCH_DTYPE_INT8 ? "GOPS" : "GFLOP/s", gemm_pool[d], gemm_raw[d]);

    printf("\nratios for the engine (pool arrangement):\n");
    for (int d = 0; d < 3; d++) {
        if (!have[d])
            continue;
        double peak = LLORCH_MAX(gemm_pool[d], gemm_raw[d]);
        printf("  %-5s batch-1 %.2f of read bandwidth, batch-%lld %.2f of GEMM peak (%.1f); "
               "pool/omp: GEMM %.2fx, batch-%lld %.2fx, batch-1 %.2fx\n",
               dt_name(dts[d]), bw_with[d] > 0 ? gemv_pool[d] * 1e9 / bw_with[d] : 0,
               (long long)sh.batch,
               peak > 0 ? b64_pool[d] / peak : 0, peak,
               gemm_raw[d] > 0 ? gemm_pool[d] / gemm_raw[d] : 0, (long long)sh.batch,
               b64_raw[d] > 0 ? b64_pool[d] / b64_raw[d] : 0,
               gemv_raw[d] > 0 ? gemv_pool[d] / gemv_raw[d] : 0);
    }

    {
        /* 4. int8 small m: our VNNI GEMV against oneDNN's brgemm, both
         * through the pool, interleaved (each as GB/s of weights) */
        struct pool_set g[2];
        const int copies = copies_for(&sh, LLORCH_DTYPE_INT8);
        if (pool_set_new(&g[0], pool, LLORCH_DTYPE_INT8, 8, sh.vn, sh.vk, copies, 0, false, wv, x,
                         y) != 0 ||
            pool_set_new(&g[1], pool, LLORCH_DTYPE_INT8, 8, sh.vn, sh.vk, copies, 0, true, wv, x,
                         y) != 0)
            return 1;
        printf("\nint8 %lldx%lld small m, GB/s of weights (ratio to the read bandwidth), "
               "%s / %s:\n",
               (long long)sh.vn, (long long)sh.vk, matmul_weight_impl_for_m(g[0].w[0], 1),
               matmul_weight_impl_for_m(g[1].w[0], 1));
        static const int64_t gm[] = {1, 2, 4, 8};
        for (int i = 0; i < 4; i++) {
            for (int j = 0; j < 2; j++) {
                g[j].b.m = gm[i];
                ms[j] = (struct meas){.fn = mm_bench_call, .ctx = &g[j].b, .work = vbytes};
            }
            ms[2] = (struct meas){.fn = bw_call, .ctx = &bwc,
                                  .work = (double)bwc.n * (double)bwc.chunk};
            ms[3] = (struct meas){.fn = bw_call, .ctx = &bwp,
                                  .work = (double)bwp.n * (double)bwp.chunk};
            measure_group(ms, 4, &cf);
            /* the best read bandwidth of the whole run, or the one alongside if higher */
            double r = LLORCH_MAX(bw / 1e9, LLORCH_MAX(meas_rate(&ms[2]), meas_rate(&ms[3])));
            printf("  m=%lld: %6.1f (%.2f) / %6.1f (%.2f)  [%s]\n", (long long)gm[i],
                   meas_rate(&ms[0]), meas_rate(&ms[0]) / r, meas_rate(&ms[1]),
                   meas_rate(&ms[1]) / r, matmul_weight_impl_for_m(g[0].w[0], gm[i]));
        }
        pool_set_free(&g[0]);
        pool_set_free(&g[1]);
    }

    if (!cf.quick) {
        /* 5. tiles per worker: one (the default) against finer tiles, which
         * let work stealing rebalance but cost a little per task */
        struct pool_set tl[3];
        int nt = 0;
        for (int per = 1; per <= 4; per *= 2, nt++) {
            int64_t t = (int64_t)llorch_align_up((uint64_t)((sh.vn + P * per - 1) / (P * per)), 16);
            if (pool_set_new(&tl[nt], pool, LLORCH_DTYPE_INT8, sh.batch, sh.vn, sh.vk,
                             copies_for(&sh, LLORCH_DTYPE_INT8), t, false, wv, x, y) != 0)
                return 1;
        }
        for (int pass = 0; pass < 2; pass++) {
            int64_t m = pass == 0 ? 1 : sh.batch;
            for (int i = 0; i < nt; i++) {
                tl[i].b.m = m;
                ms[i] = (struct meas){.fn = mm_bench_call, .ctx = &tl[i].b,
                                      .work = pass == 0 ? vbytes : 2.0 * (double)m * vbytes};
            }
            measure_group(ms, nt, &cf);
            printf("\ntiles per worker, int8 %lldx%lld, m=%lld:", (long long)sh.vn,
                   (long long)sh.vk, (long long)m);
            for (int i = 0; i < nt; i++)
                printf("  %d (tile %lld): %.1f %s", 1 << i, (long long)matmul_weight_tile_n(tl[i].w[0]),
                       meas_rate(&ms[i]), pass == 0 ? "GB/s" : "GOP/s");
        }
        printf("\n");
        for (int i = 0; i < nt; i++)
            pool_set_free(&tl[i]);
    }
    free(bwbuf);
    free(wg);
    free(wv);
    free(x);
    free(y);
    tpool_free(pool);
    return 0;
}
