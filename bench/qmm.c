/* The matmul kernels alone (src/engine/qmm.c), on one thread or a pool of
 * --threads N: for every weight
 * type and every level this CPU runs, a [rows, k] weight against m
 * activation rows. Prints, per type and level: m=1 weight bytes per second
 * (GB/s) and its ratio to the same threads' read bandwidth measured alongside,
 * and for larger m the integer/float ops per second (2 x rows x k x m) per
 * core. Weights are random blocks with sane scales, bigger than the
 * last-level cache for m=1. Never asserts.
 *
 * usage: bench/qmm [--k N] [--rows N] [--ms 1,4,16,64] [--types q8_0,q4_K,...]
 *                  [--reps N] [--isa scalar|avx2|avxvnni|avx512] [--threads N] [--copies N]
 * --copies N packs the matrix N times and runs the copies one after another
 * (a decode step's many matrices: each read once per step, none in cache). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "kernels.h"
#include "qmm.h"
#include "quant.h"
#include "tpool.h"
#include "util.h"

static const struct {
    const char *name;
    enum ggml_type t;
} types[] = {
    {"f32", GGML_TYPE_F32},   {"f16", GGML_TYPE_F16},   {"bf16", GGML_TYPE_BF16},
    {"q8_0", GGML_TYPE_Q8_0}, {"q4_0", GGML_TYPE_Q4_0}, {"q4_1", GGML_TYPE_Q4_1},
    {"q5_0", GGML_TYPE_Q5_0}, {"q5_1", GGML_TYPE_Q5_1}, {"q4_K", GGML_TYPE_Q4_K},
    {"q5_K", GGML_TYPE_Q5_K}, {"q6_K", GGML_TYPE_Q6_K},
};
#define N_TYPES ((int)LLORCH_ARRAY_SIZE(types))

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static void put16(uint8_t *p, uint16_t h)
{
    memcpy(p, &h, 2);
}

/* Random blocks; the f16 scale fields get small finite values. */
static uint8_t *make_rows(enum ggml_type t, int64_t rows, int64_t k, uint64_t *bytes)
{
    uint64_t rb;
    if (ggml_type_row_bytes(t, (uint64_t)k, &rb) < 0)
        return NULL;
    *bytes = rb * (uint64_t)rows;
    void *mem = NULL;
    if (posix_memalign(&mem, 64, *bytes) != 0) /* 32-byte loads in the read pass */
        return NULL;
    uint8_t *w = mem;
    for (uint64_t i = 0; i < *bytes; i++)
        w[i] = (uint8_t)rnd();
    const uint64_t bb = ggml_type_block_bytes(t), nb = *bytes / bb;
    const uint16_t small = quant_f32_to_f16(0.01f);
    for (uint64_t b = 0; b < nb; b++) {
        uint8_t *p = w + b * bb;
        switch (t) {
        case GGML_TYPE_F32: {
            float v = (float)(rnd() % 1000) * 1e-4f;
            memcpy(p, &v, 4);
            break;
        }
        case GGML_TYPE_F16:
            put16(p, quant_f32_to_f16((float)(rnd() % 1000) * 1e-4f));
            break;
        case GGML_TYPE_BF16:
            put16(p, quant_f32_to_bf16((float)(rnd() % 1000) * 1e-4f));
            break;
        case GGML_TYPE_Q6_K:
            put16(p + 208, small);
            break;
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
            put16(p + 2, small);
            put16(p, small);
            break;
        default:
            put16(p, small);
            break;
        }
    }
    return w;
}

int main(int argc, char **argv)
{
    int64_t k = 2048, rows = 16384;
    int64_t ms[8] = {1, 16, 64};
    int n_ms = 3, reps = 5, threads = 1, copies = 1;
    bool want[N_TYPES];
    for (int i = 0; i < N_TYPES; i++)
        want[i] = true;
    int only_isa = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--k") && v)
            k = atoll(v), i++;
        else if (!strcmp(a, "--rows") && v)
            rows = atoll(v), i++;
        else if (!strcmp(a, "--threads") && v)
            threads = atoi(v), i++;
        else if (!strcmp(a, "--copies") && v)
            copies = atoi(v), i++;
        else if (!strcmp(a, "--reps") && v)
            reps = atoi(v), i++;
        else if (!strcmp(a, "--isa") && v) {
            for (int l = 0; l < KERNELS_ISA_COUNT_; l++)
                if (!strcmp(v, kernels_isa_name((enum kernels_isa)l)))
                    only_isa = l;
            if (only_isa < 0) {
                fprintf(stderr, "--isa: no level %s\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--ms") && v) {
            n_ms = 0;
            char buf[128];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *sv = NULL, *t = strtok_r(buf, ",", &sv); t && n_ms < 8; t = strtok_r(NULL, ",", &sv))
                ms[n_ms++] = atoll(t);
            i++;
        } else if (!strcmp(a, "--types") && v) {
            for (int t = 0; t < N_TYPES; t++)
                want[t] = strstr(v, types[t].name) != NULL;
            i++;
        } else {
            fprintf(stderr, "usage: %s [--k N] [--rows N] [--ms 1,16,64] [--types q8_0,q4_K] [--reps N] "
                            "[--isa scalar|avx2|avxvnni|avx512] [--threads N] [--copies N]\n", argv[0]);
            return 2;
        }
    }
    if (k % 256 || k < 256 || rows < 2 || threads < 1 || copies < 1 || copies > 1024) {
        fprintf(stderr, "--k must be a multiple of 256, --threads at least 1, --copies 1..1024\n");
        return 2;
    }
    struct tpool *pool = NULL;
    if (threads > 1 && tpool_new(&pool, &(struct tpool_opts){.n_threads = threads}) != 0) {
        fprintf(stderr, "cannot start %d threads\n", threads);
        return 1;
    }
    char cpu[256], flags[512];
    bench_cpu_model(cpu, sizeof cpu, flags, sizeof flags);
    printf("machine: %s; flags:%s\n", cpu, flags);
    printf("shape: weight [%lld, %lld] x %d cop%s, %d thread%s, best of %d\n", (long long)rows, (long long)k,
           copies, copies > 1 ? "ies run in turn" : "y", threads, threads > 1 ? "s (one pool)" : "", reps);
    int64_t max_m = 1;
    for (int i = 0; i < n_ms; i++)
        max_m = LLORCH_MAX(max_m, ms[i]);
    float *x = bench_rand_floats(max_m * k, 3);
    float *y = malloc((size_t)(max_m * rows) * sizeof *y);
    if (!x || !y)
        return 1;
    printf("%-6s %-7s %9s %7s", "type", "level", "m=1 GB/s", "xBW");
    for (int i = 0; i < n_ms; i++)
        if (ms[i] > 1)
            printf(" %10s", "");
    printf("\n");
    for (int ti = 0; ti < N_TYPES; ti++) {
        if (!want[ti])
            continue;
        uint64_t bytes;
        uint8_t *w = make_rows(types[ti].t, rows, k, &bytes);
        if (!w)
            return 1;
        /* the roofline over as many bytes as the copies span (the first
         * rows, else a buffer of that size) */
        const uint64_t span = bytes * (uint64_t)copies;
        uint8_t *bwbuf = w;
        if (copies > 1) {
            void *mem = NULL;
            if (posix_memalign(&mem, 64, span) != 0)
                return 1;
            bwbuf = mem;
            memset(bwbuf, 1, span);
        }
        struct bench_bw bwc = {.pool = pool, .buf = bwbuf, .chunk = 64 * 1024};
        bwc.n = (int64_t)(span / (uint64_t)bwc.chunk);
        const double bw = bench_bw_trial(&bwc, 0.3);
        if (bwbuf != w)
            free(bwbuf);
        for (int isa = 0; isa < KERNELS_ISA_COUNT_; isa++) {
            /* avxvnni on a CPU without VNNI: emulated ("avxvnni*"), a check, not a figure */
            if (!qmm_level_runs((enum kernels_isa)isa) || (only_isa >= 0 && isa != only_isa))
                continue;
            struct qmm_part part = {.type = types[ti].t, .data = w, .n_rows = rows};
            struct qmm_weight **qw = calloc((size_t)copies, sizeof *qw);
            if (!qw)
                return 1;
            for (int c = 0; c < copies; c++)
                if (qmm_weight_new(&qw[c], &part, 1, k, (enum kernels_isa)isa, pool) != 0)
                    return 1;
            void *act = NULL;
            if (posix_memalign(&act, 64, qmm_act_bytes(qw[0], max_m)) != 0)
                return 1;
            char level[16];
            snprintf(level, sizeof level, "%s%s", kernels_isa_name((enum kernels_isa)isa),
                     kernels_get((enum kernels_isa)isa) ? "" : "*");
            printf("%-6s %-8s", types[ti].name, level);
            for (int mi = 0; mi < n_ms; mi++) {
                double best = 1e30;
                for (int r = 0; r < reps; r++) {
                    double t0 = bench_now_s();
                    for (int c = 0; c < copies; c++)
                        qmm_run(qw[c], x, y, ms[mi], act, pool);
                    best = LLORCH_MIN(best, (bench_now_s() - t0) / copies);
                }
                if (ms[mi] == 1)
                    printf(" %9.2f %7.2f", (double)bytes / best / 1e9, (double)bytes / best / bw);
                else
                    printf(" m=%-3lld %6.1f GOP/s", (long long)ms[mi],
                           2.0 * (double)rows * (double)k * (double)ms[mi] / best / 1e9);
            }
            printf("   (read bw %.1f GB/s)\n", bw / 1e9);
            free(act);
            for (int c = 0; c < copies; c++)
                qmm_weight_free(qw[c]);
            free(qw);
        }
        free(w);
    }
    free(x);
    free(y);
    tpool_free(pool);
    return 0;
}
