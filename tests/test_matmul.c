/* oneDNN matmuls against a plain double-precision GEMM for every dtype and
 * odd shapes, batch invariance (bit for bit), argument errors, and no
 * OpenMP threads of oneDNN's own.
 *
 * Tolerances, per output element y = Σ_k x_k w_k, with A = Σ_k |x_k w_k|:
 * - f32: oneDNN accumulates in f32 with FMAs in some order; any order is
 *   within γ_K·A, γ_K ≈ K·2^-24.
 * - bf16: x and w rounded to nearest bf16 (8 significant bits: relative
 *   error ≤ 2^-8 each, so ≤ 2^-7 + 2^-16 per product), products exact in f32,
 *   f32 accumulation: (2^-7 + 2^-16 + K·2^-24)·A. A second check against the
 *   GEMM of the bf16-rounded inputs leaves only the accumulation term, which
 *   proves the rounding is to nearest even and the layout is right.
 * - int8: x̂ = s_x(q - z) is within s_x/2 of x (per row s_x = range/levels),
 *   ŵ within s_w/2 of w (s_w = max|w_n|/127), integer accumulation exact:
 *   |Σx̂ŵ - Σxw| ≤ ½s_x·Σ|ŵ| + ½s_w·Σ|x|, plus ~4 f32 roundings of the
 *   epilogue. The bound below uses 0.6 instead of ½ and the 7-bit level
 *   count (127), which covers CPUs without VNNI. */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/error.h"
#include "kernels.h"
#include "matmul.h"
#include "tpool.h"

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static float *rand_matrix(int64_t rows, int64_t cols)
{
    float *a = malloc(sizeof(float) * (size_t)(rows * cols));
    assert_non_null(a);
    for (int64_t i = 0; i < rows * cols; i++)
        a[i] = frand();
    return a;
}

/* Rows of different magnitude and sign structure, as activations have. */
static float *rand_activations(int64_t rows, int64_t cols)
{
    float *x = rand_matrix(rows, cols);
    for (int64_t i = 0; i < rows; i++) {
        float *r = x + i * cols;
        switch (i % 5) {
        case 1:
            for (int64_t k = 0; k < cols; k++)
                r[k] *= 30.0f;
            break;
        case 2: /* all positive: zero point at 0 */
            for (int64_t k = 0; k < cols; k++)
                r[k] = fabsf(r[k]) * 0.01f;
            break;
        case 3: /* all negative: zero point at the top */
            for (int64_t k = 0; k < cols; k++)
                r[k] = -fabsf(r[k]) - 1.0f;
            break;
        case 4: /* skewed, like SiLU output */
            for (int64_t k = 0; k < cols; k++)
                r[k] = r[k] > 0 ? r[k] * 3.0f : r[k] * 0.2f;
            break;
        default:
            break;
        }
    }
    return x;
}

static float bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static const char *dtype_name(enum llorch_dtype dt)
{
    return dt == LLORCH_DTYPE_F32 ? "f32" : dt == LLORCH_DTYPE_BF16 ? "bf16" : "int8";
}

/* Checks y = x·Wᵀ for the first m rows against the reference and bound. */
static void check_rows(enum llorch_dtype dt, const float *x, const float *w, const float *y,
                       int64_t m, int64_t n_out, int64_t n_in)
{
    const double u24 = ldexp(1.0, -24);
    double *sw = calloc((size_t)n_out, sizeof(double));  /* int8 weight scale */
    double *sabs = calloc((size_t)n_out, sizeof(double)); /* Σ|w| */
    assert_non_null(sw);
    assert_non_null(sabs);
    for (int64_t n = 0; n < n_out; n++) {
        double amax = 0;
        for (int64_t k = 0; k < n_in; k++) {
            amax = fmax(amax, fabs(w[n * n_in + k]));
            sabs[n] += fabs(w[n * n_in + k]);
        }
        sw[n] = amax / 127.0;
    }
    for (int64_t i = 0; i < m; i++) {
        const float *xr = x + i * n_in;
        double lo = 0, hi = 0, xabs = 0;
        for (int64_t k = 0; k < n_in; k++) {
            lo = fmin(lo, xr[k]);
            hi = fmax(hi, xr[k]);
            xabs += fabs(xr[k]);
        }
        double sx = (hi - lo) / 127.0;
        for (int64_t n = 0; n < n_out; n++) {
            const float *wr = w + n * n_in;
            double ref = 0, a = 0, ref_bf = 0, a_bf = 0;
            for (int64_t k = 0; k < n_in; k++) {
                ref += (double)xr[k] * wr[k];
                a += fabs((double)xr[k] * wr[k]);
                if (dt == LLORCH_DTYPE_BF16) {
                    double p = (double)bf16_round(xr[k]) * bf16_round(wr[k]);
                    ref_bf += p;
                    a_bf += fabs(p);
                }
            }
            double got = y[i * n_out + n], tol, err = fabs(got - ref);
            if (dt == LLORCH_DTYPE_F32) {
                tol = 1.01 * (double)n_in * u24 * a + 1e-30;
            } else if (dt == LLORCH_DTYPE_BF16) {
                tol = (ldexp(1.0, -7) + ldexp(1.0, -16) + 1.01 * (double)n_in * u24) * a + 1e-30;
                double tol_bf = 1.01 * (double)n_in * u24 * a_bf + 1e-30;
                if (fabs(got - ref_bf) > tol_bf)
                    fail_msg("bf16 m=%lld row %lld col %lld: %.9g vs bf16-input GEMM %.9g "
                             "(tol %.3g)",
                             (long long)m, (long long)i, (long long)n, got, ref_bf, tol_bf);
            } else {
                double wabs_hat = sabs[n] + 0.5 * (double)n_in * sw[n];
                tol = 0.6 * sx * wabs_hat + 0.6 * sw[n] * xabs + 1e-6 * a + 1e-30;
            }
            if (!(err <= tol))
                fail_msg("%s %lldx%lld m=%lld row %lld col %lld: got %.9g want %.9g "
                         "(err %.3g > tol %.3g)",
                         dtype_name(dt), (long long)n_out, (long long)n_in, (long long)m,
                         (long long)i, (long long)n, got, ref, err, tol);
        }
    }
    free(sw);
    free(sabs);
}

static bool vnni512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
}

static bool bf16_512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
}

static void check_shape(struct tpool *pool, enum llorch_dtype dt, int64_t n_out, int64_t n_in,
                        const int64_t *ms, int n_ms, int64_t tile_n)
{
    int64_t max_m = 0;
    for (int i = 0; i < n_ms; i++)
        max_m = ms[i] > max_m ? ms[i] : max_m;
    float *w = rand_matrix(n_out, n_in);
    float *x = rand_activations(max_m, n_in);
    float *y = malloc(sizeof(float) * (size_t)(max_m * n_out));
    assert_non_null(y);
    struct mm_weight *mw;
    struct mm_tiling tiling = {.tile_n = tile_n};
    assert_int_equal(matmul_weight_new_tiled(&mw, w, n_out, n_in, dt, max_m, pool, &tiling), 0);
    assert_int_equal(matmul_weight_n_out(mw), n_out);
    assert_int_equal(matmul_weight_n_in(mw), n_in);
    for (int i = 0; i < n_ms; i++) {
        memset(y, 0xff, sizeof(float) * (size_t)(max_m * n_out)); /* NaN if unwritten */
        assert_int_equal(matmul_run(mw, x, y, ms[i], pool), 0);
        check_rows(dt, x, w, y, ms[i], n_out, n_in);
    }
    matmul_weight_free(mw);
    free(w);
    free(x);
    free(y);
}

/* m = 1..64 on one odd shape, the larger m on a few others, and a tile
 * width that leaves a narrower last tile. */
static void check_dtype(enum llorch_dtype dt)
{
    struct tpool *pool;
    assert_int_equal(tpool_new(&pool, &(struct tpool_opts){.n_threads = 3}), 0);
    int64_t all[64];
    for (int i = 0; i < 64; i++)
        all[i] = i + 1;
    check_shape(pool, dt, 67, 45, all, 64, 0);
    static const int64_t big[] = {1, 3, 64, 65, 100, 512};
    check_shape(pool, dt, 130, 129, big, 6, 0);
    check_shape(pool, dt, 200, 33, big, 6, 48); /* 5 tiles of 48, last of 8 */
    static const int64_t some[] = {1, 2, 7, 64, 100};
    check_shape(pool, dt, 1, 1, some, 5, 0);
    check_shape(pool, dt, 5, 3, some, 5, 0);
    check_shape(pool, dt, 96, 1000, some, 5, 0);
    check_shape(pool, dt, 300, 17, some, 5, 16);
    tpool_free(pool);
}

/* The engine runs matmul.c (oneDNN) only at the avx512 level (forward.c);
 * below it our own kernels (tests/test_qmm.c) serve every type. oneDNN 2.6
 * has no bf16 kernels for AVX2, and its AVX2 f32 GEMM sums K differently
 * for different m, so those checks need AVX-512; the others run anywhere. */
static void need_avx512(const char *why)
{
    if (!kernels_get(KERNELS_ISA_AVX512)) {
        print_message("skipped on this CPU (no AVX-512): %s\n", why);
        skip();
    }
}

static void matmul_f32_matches_reference_gemm(void **state)
{
    (void)state;
    check_dtype(LLORCH_DTYPE_F32);
}

static void matmul_bf16_matches_reference_gemm_within_bf16_rounding(void **state)
{
    (void)state;
    need_avx512("oneDNN bf16");
    check_dtype(LLORCH_DTYPE_BF16);
}

static void matmul_int8_matches_reference_gemm_within_quantisation_error(void **state)
{
    (void)state;
    check_dtype(LLORCH_DTYPE_INT8);
}

static void matmul_int8_zero_row_gives_exact_zeros(void **state)
{
    (void)state;
    struct tpool *pool;
    assert_int_equal(tpool_new(&pool, &(struct tpool_opts){.n_threads = 2}), 0);
    float *w = rand_matrix(70, 40);
    float x[3 * 40] = {0};
    for (int k = 0; k < 40; k++)
        x[2 * 40 + k] = 1.0f; /* constant row: exact in u8 (zero point 0) */
    float y[3 * 70];
    struct mm_weight *mw;
    assert_int_equal(matmul_weight_new(&mw, w, 70, 40, LLORCH_DTYPE_INT8, 3, pool), 0);
    assert_int_equal(matmul_run(mw, x, y, 3, pool), 0);
    for (int n = 0; n < 70; n++)
        assert_true(y[n] == 0.0f && y[70 + n] == 0.0f);
    check_rows(LLORCH_DTYPE_INT8, x, w, y, 3, 70, 40);
    matmul_weight_free(mw);
    free(w);
    tpool_free(pool);
}

/* ---- batch invariance: a row's result does not depend on m or on where the
 * row sits in the batch ---- */

static void check_invariance_tiled(enum llorch_dtype dt, int64_t n_out, int64_t n_in,
                                  int64_t tile_n)
{
    struct tpool *pool;
    assert_int_equal(tpool_new(&pool, &(struct tpool_opts){.n_threads = 2}), 0);
    const int64_t M = 150;
    float *w = rand_matrix(n_out, n_in);
    float *x = rand_activations(M, n_in);
    float *full = malloc(sizeof(float) * (size_t)(M * n_out));
    float *y = malloc(sizeof(float) * (size_t)(M * n_out));
    assert_non_null(full);
    assert_non_null(y);
    struct mm_weight *mw;
    struct mm_tiling tiling = {.tile_n = tile_n};
    assert_int_equal(matmul_weight_new_tiled(&mw, w, n_out, n_in, dt, M, pool, &tiling), 0);
    /* On AVX-512 VNNI CPUs int8 runs m <= 4 with our GEMV, larger m with
     * oneDNN: the comparison below is then between the two kernels. */
    if (dt == LLORCH_DTYPE_INT8 && vnni512())
        assert_string_equal(matmul_weight_impl_for_m(mw, 1), "llorch:gemv_avx512_vnni");
    if (dt == LLORCH_DTYPE_BF16 && bf16_512())
        assert_string_equal(matmul_weight_impl_for_m(mw, 1), "llorch:gemv_avx512_bf16");
    assert_string_not_equal(matmul_weight_impl_for_m(mw, M), "llorch:gemv_avx512_vnni");
    assert_int_equal(matmul_run(mw, x, full, M, pool), 0);
    static const int64_t ms[] = {1, 2, 3, 4, 5, 8, 17, 31, 63, 64, 65, 100, 127, 128, 129, 149};
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
        int64_t m = ms[i];
        int64_t offs[3] = {0, (M - m) / 2, M - m};
        for (int o = 0; o < 3; o++) {
            assert_int_equal(matmul_run(mw, x + offs[o] * n_in, y, m, pool), 0);
            if (memcmp(y, full + offs[o] * n_out, sizeof(float) * (size_t)(m * n_out)) != 0)
                fail_msg("%s %lldx%lld: rows %lld..%lld differ when run with m=%lld",
                         dtype_name(dt), (long long)n_out, (long long)n_in,
                         (long long)offs[o], (long long)(offs[o] + m), (long long)m);
        }
    }
    matmul_weight_free(mw);
    free(w);
    free(x);
    free(full);
    free(y);
    tpool_free(pool);
}

static void check_invariance(enum llorch_dtype dt, int64_t n_out, int64_t n_in)
{
    check_invariance_tiled(dt, n_out, n_in, 0);
}

static void matmul_f32_rows_are_bit_identical_whatever_m(void **state)
{
    (void)state;
    need_avx512("oneDNN f32 m-invariance");
    check_invariance(LLORCH_DTYPE_F32, 200, 77);
    check_invariance(LLORCH_DTYPE_F32, 64, 512);
}

static void matmul_bf16_rows_are_bit_identical_whatever_m(void **state)
{
    (void)state;
    need_avx512("oneDNN bf16");
    check_invariance(LLORCH_DTYPE_BF16, 200, 77);
    check_invariance(LLORCH_DTYPE_BF16, 64, 512);
    /* K past oneDNN's 512- and 1024-deep chunks, odd K; tiles whose width is
     * not a multiple of 64, and a narrower last tile */
    check_invariance_tiled(LLORCH_DTYPE_BF16, 300, 2051, 48);
    check_invariance_tiled(LLORCH_DTYPE_BF16, 130, 1000, 80);
    check_invariance_tiled(LLORCH_DTYPE_BF16, 70, 5632, 0);
    check_invariance_tiled(LLORCH_DTYPE_BF16, 3, 1, 0);
}

static void matmul_int8_rows_are_bit_identical_whatever_m(void **state)
{
    (void)state;
    check_invariance(LLORCH_DTYPE_INT8, 200, 77);
    check_invariance(LLORCH_DTYPE_INT8, 64, 512);
    /* K not a multiple of 4 or of oneDNN's 64-deep blocks; tiles whose width
     * is not a multiple of 64, and a narrower last tile */
    check_invariance_tiled(LLORCH_DTYPE_INT8, 300, 2051, 48);
    check_invariance_tiled(LLORCH_DTYPE_INT8, 257, 130, 80);
    check_invariance_tiled(LLORCH_DTYPE_INT8, 3, 1, 0);
}

/* ---- errors ---- */

static void matmul_rejects_bad_arguments(void **state)
{
    (void)state;
    struct tpool *pool, *other;
    assert_int_equal(tpool_new(&pool, &(struct tpool_opts){.n_threads = 2}), 0);
    assert_int_equal(tpool_new(&other, &(struct tpool_opts){.n_threads = 2}), 0);
    float w[4 * 8] = {0}, x[2 * 8] = {0}, y[2 * 4];
    struct mm_weight *mw = (struct mm_weight *)1;
    assert_int_equal(matmul_weight_new(&mw, w, 4, 8, LLORCH_DTYPE_AUTO, 2, pool), LLORCH_EINVAL);
    assert_null(mw);
    assert_int_equal(matmul_weight_new(&mw, w, 4, 8, (enum llorch_dtype)99, 2, pool),
                     LLORCH_EINVAL);
    assert_int_equal(matmul_weight_new(&mw, w, 0, 8, LLORCH_DTYPE_F32, 2, pool), LLORCH_EINVAL);
    assert_int_equal(matmul_weight_new(&mw, w, 4, 0, LLORCH_DTYPE_F32, 2, pool), LLORCH_EINVAL);
    assert_int_equal(matmul_weight_new(&mw, w, 4, 8, LLORCH_DTYPE_F32, 0, pool), LLORCH_EINVAL);
    assert_int_equal(matmul_weight_new(&mw, NULL, 4, 8, LLORCH_DTYPE_F32, 2, pool), LLORCH_EINVAL);
    assert_int_equal(matmul_weight_new(&mw, w, INT64_MAX / 2, 8, LLORCH_DTYPE_F32, 2, pool),
                     LLORCH_EOVERFLOW);
    assert_int_equal(matmul_weight_new(NULL, w, 4, 8, LLORCH_DTYPE_F32, 2, pool), LLORCH_EINVAL);

    assert_int_equal(matmul_weight_new(&mw, w, 4, 8, LLORCH_DTYPE_F32, 2, pool), 0);
    assert_int_equal(matmul_run(mw, x, y, 0, pool), LLORCH_EINVAL);
    assert_int_equal(matmul_run(mw, x, y, -1, pool), LLORCH_EINVAL);
    assert_int_equal(matmul_run(mw, x, y, 3, pool), LLORCH_EINVAL); /* m > max_m */
    assert_int_equal(matmul_run(mw, x, y, 2, other), LLORCH_EINVAL);
    assert_int_equal(matmul_run(mw, x, y, 2, NULL), LLORCH_EINVAL);
    assert_int_equal(matmul_run(mw, NULL, y, 2, pool), LLORCH_EINVAL);
    assert_int_equal(matmul_run(mw, x, NULL, 2, pool), LLORCH_EINVAL);
    assert_int_equal(matmul_prepare(mw, 0), LLORCH_EINVAL);
    assert_int_equal(matmul_prepare(mw, 3), LLORCH_EINVAL);
    assert_int_equal(matmul_prepare(mw, 2), 0);
    assert_int_equal(matmul_run(mw, x, y, 2, pool), 0);
    matmul_weight_free(mw);
    matmul_weight_free(NULL);
    tpool_free(other);
    tpool_free(pool);
}

struct in_task_ctx {
    const struct mm_weight *mw;
    struct tpool *pool;
    int rc;
};

static void run_in_task(void *vctx, int64_t b, int64_t e, int worker)
{
    (void)b, (void)e, (void)worker;
    struct in_task_ctx *c = vctx;
    float x[8] = {0}, y[4];
    c->rc = matmul_run(c->mw, x, y, 1, c->pool);
}

static void matmul_run_inside_a_pool_task_is_refused(void **state)
{
    (void)state;
    struct tpool *pool;
    assert_int_equal(tpool_new(&pool, &(struct tpool_opts){.n_threads = 2}), 0);
    float w[4 * 8] = {0};
    struct in_task_ctx c = {.pool = pool, .rc = 0};
    struct mm_weight *mw;
    assert_int_equal(matmul_weight_new(&mw, w, 4, 8, LLORCH_DTYPE_F32, 2, pool), 0);
    c.mw = mw;
    tpool_parallel_for(pool, 1, 1, run_in_task, &c);
    assert_int_equal(c.rc, LLORCH_EINVAL);
    matmul_weight_free(mw);
    tpool_free(pool);
}

/* ---- resources ---- */

static int count_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static void matmul_runs_on_pool_threads_only(void **state)
{
    (void)state;
    need_avx512("uses bf16 weights");
    int before = count_threads();
    struct tpool *pool;
    assert_int_equal(tpool_new(&pool, &(struct tpool_opts){.n_threads = 3}), 0);
    float *w = rand_matrix(512, 256), *x = rand_activations(70, 256);
    float *y = malloc(sizeof(float) * 70 * 512);
    assert_non_null(y);
    static const enum llorch_dtype dts[] = {LLORCH_DTYPE_F32, LLORCH_DTYPE_BF16, LLORCH_DTYPE_INT8};
    for (int d = 0; d < 3; d++) {
        struct mm_weight *mw;
        assert_int_equal(matmul_weight_new(&mw, w, 512, 256, dts[d], 70, pool), 0);
        assert_int_equal(matmul_run(mw, x, y, 70, pool), 0);
        assert_int_equal(matmul_run(mw, x, y, 1, pool), 0);
        matmul_weight_free(mw);
    }
    /* no OpenMP team was ever started: only the pool's 2 threads were added */
    assert_int_equal(count_threads(), before + 2);
    tpool_free(pool);
    free(w);
    free(x);
    free(y);
}

static void matmul_weight_may_outlive_its_pool(void **state)
{
    (void)state;
    need_avx512("uses bf16 weights");
    struct tpool *pool;
    assert_int_equal(tpool_new(&pool, &(struct tpool_opts){.n_threads = 2}), 0);
    float *w = rand_matrix(33, 20);
    struct mm_weight *mw;
    assert_int_equal(matmul_weight_new(&mw, w, 33, 20, LLORCH_DTYPE_BF16, 4, pool), 0);
    assert_true(matmul_weight_bytes(mw) == 33 * 20 * 2);
    assert_true(matmul_weight_tile_n(mw) >= 16);
    assert_non_null(matmul_weight_impl(mw));
    assert_non_null(matmul_cpu_isa_name());
    tpool_free(pool);
    matmul_weight_free(mw); /* the per-pool context is reference-counted */
    free(w);
}

static void matmul_without_a_pool_runs_on_the_caller(void **state)
{
    (void)state;
    need_avx512("uses bf16 weights");
    float *w = rand_matrix(100, 70), *x = rand_activations(66, 70);
    float *y = malloc(sizeof(float) * 66 * 100), *y2 = malloc(sizeof(float) * 100);
    assert_non_null(y);
    assert_non_null(y2);
    static const enum llorch_dtype dts[] = {LLORCH_DTYPE_F32, LLORCH_DTYPE_BF16, LLORCH_DTYPE_INT8};
    for (int d = 0; d < 3; d++) {
        struct mm_weight *mw;
        assert_int_equal(matmul_weight_new(&mw, w, 100, 70, dts[d], 66, NULL), 0);
        assert_int_equal(matmul_run(mw, x, y, 66, NULL), 0);
        check_rows(dts[d], x, w, y, 66, 100, 70);
        assert_int_equal(matmul_run(mw, x + 65 * 70, y2, 1, NULL), 0);
        assert_memory_equal(y2, y + 65 * 100, sizeof(float) * 100);
        matmul_weight_free(mw);
    }
    free(w);
    free(x);
    free(y);
    free(y2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(matmul_f32_matches_reference_gemm),
        cmocka_unit_test(matmul_bf16_matches_reference_gemm_within_bf16_rounding),
        cmocka_unit_test(matmul_int8_matches_reference_gemm_within_quantisation_error),
        cmocka_unit_test(matmul_int8_zero_row_gives_exact_zeros),
        cmocka_unit_test(matmul_f32_rows_are_bit_identical_whatever_m),
        cmocka_unit_test(matmul_bf16_rows_are_bit_identical_whatever_m),
        cmocka_unit_test(matmul_int8_rows_are_bit_identical_whatever_m),
        cmocka_unit_test(matmul_rejects_bad_arguments),
        cmocka_unit_test(matmul_run_inside_a_pool_task_is_refused),
        cmocka_unit_test(matmul_runs_on_pool_threads_only),
        cmocka_unit_test(matmul_weight_may_outlive_its_pool),
        cmocka_unit_test(matmul_without_a_pool_runs_on_the_caller),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
