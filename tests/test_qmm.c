/* Matmuls over weights in their file's class (src/engine/qmm.c): for every
 * tensor type and every instruction-set level this CPU runs, each output
 * equals the scalar reference bit for bit, lies within the activation
 * rounding of a double-precision dot over the dequantised weights, and does
 * not depend on the number of rows in the call, on the pool or on how the
 * rows are split into parts. Levels the CPU lacks are named as skipped. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels.h"
#include "qmm.h"
#include "quant.h"
#include "tpool.h"

static const enum ggml_type all_types[] = {
    GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,
    GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K,
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static float rndf(void) /* [-1, 1) */
{
    return (float)(rnd() % 2000001) / 1000000.0f - 1.0f;
}

static void put_f16(uint8_t *p, float v)
{
    uint16_t h = quant_f32_to_f16(v);
    memcpy(p, &h, 2);
}

/* Random rows of type t: random bits for the quantised values, sane f16
 * scales (random bits there would be NaN or huge). */
static uint8_t *random_rows(enum ggml_type t, int64_t rows, int64_t k)
{
    uint64_t rb;
    assert_int_equal(ggml_type_row_bytes(t, (uint64_t)k, &rb), 0);
    uint8_t *w = malloc((size_t)(rb * (uint64_t)rows) + 1);
    assert_non_null(w);
    for (uint64_t i = 0; i < rb * (uint64_t)rows; i++)
        w[i] = (uint8_t)rnd();
    const uint64_t bb = ggml_type_block_bytes(t), nb = rb * (uint64_t)rows / bb;
    for (uint64_t b = 0; b < nb; b++) {
        uint8_t *blk = w + b * bb;
        switch (t) {
        case GGML_TYPE_F32: {
            float v = rndf() * 0.1f;
            memcpy(blk, &v, 4);
            break;
        }
        case GGML_TYPE_F16:
            put_f16(blk, rndf() * 0.1f);
            break;
        case GGML_TYPE_BF16: {
            uint16_t h = quant_f32_to_bf16(rndf() * 0.1f);
            memcpy(blk, &h, 2);
            break;
        }
        case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q5_0:
            put_f16(blk, rndf() * 0.01f);
            break;
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
            put_f16(blk, rndf() * 0.01f);
            put_f16(blk + 2, rndf() * 0.01f);
            break;
        case GGML_TYPE_Q6_K:
            put_f16(blk + 208, rndf() * 0.01f);
            break;
        default:
            fail();
        }
    }
    return w;
}

static float *random_x(int64_t n)
{
    float *x = malloc((size_t)n * sizeof *x);
    assert_non_null(x);
    for (int64_t i = 0; i < n; i++)
        x[i] = rndf() * (i % 7 == 0 ? 4.0f : 1.0f);
    return x;
}

static struct qmm_weight *weight_on(const struct qmm_part *p, int n, int64_t k, enum kernels_isa isa,
                                    struct tpool *pool)
{
    struct qmm_weight *w;
    assert_int_equal(qmm_weight_new(&w, p, n, k, isa, pool), 0);
    return w;
}

static struct qmm_weight *weight(const struct qmm_part *p, int n, int64_t k, enum kernels_isa isa)
{
    return weight_on(p, n, k, isa, NULL);
}

static void *act_for(const struct qmm_weight *w, int64_t m)
{
    void *a = aligned_alloc(64, (qmm_act_bytes(w, m) + 63) / 64 * 64);
    assert_non_null(a);
    return a;
}

/* The scalar level's outputs of every row of p against x, one row at a time. */
static void scalar_rows(const struct qmm_part *p, int64_t k, const float *x, float *want)
{
    struct qmm_weight *ref = weight(p, 1, k, KERNELS_ISA_SCALAR);
    void *act = act_for(ref, 1);
    for (int64_t r = 0; r < p->n_rows; r++)
        want[r] = qmm_dot_row(ref, r, x, act);
    free(act);
    qmm_weight_free(ref);
}

/* Row lengths that each type's block size allows, tails included. */
static int lengths_for(enum ggml_type t, int64_t *ks)
{
    const uint64_t b = ggml_type_block_elems(t);
    if (b == 1) {
        const int64_t f[] = {1, 7, 31, 32, 33, 176, 1000};
        memcpy(ks, f, sizeof f);
        return 7;
    }
    if (b == 32) {
        const int64_t q[] = {32, 96, 256, 2080};
        memcpy(ks, q, sizeof q);
        return 4;
    }
    const int64_t kq[] = {256, 768, 2048};
    memcpy(ks, kq, sizeof kq);
    return 3;
}

/* Every level above scalar gives want[r] for row r of p against x, bit for bit. */
static void expect_scalar_bits_at_every_level(const struct qmm_part *p, int64_t k, const float *x,
                                              const float *want, int rows, const char *what)
{
    for (int isa = KERNELS_ISA_AVX2; isa < KERNELS_ISA_COUNT_; isa++) {
        if (!qmm_level_runs((enum kernels_isa)isa))
            continue;
        struct qmm_weight *w = weight(p, 1, k, (enum kernels_isa)isa);
        void *wact = act_for(w, 1); /* a level's layout may need more */
        for (int r = 0; r < rows; r++) {
            const float got = qmm_dot_row(w, r, x, wact);
            if (memcmp(&got, &want[r], sizeof got) != 0)
                fail_msg("%s row %d level %s: %.9g, scalar %.9g", what, r,
                         kernels_isa_name((enum kernels_isa)isa), got, want[r]);
        }
        free(wact);
        qmm_weight_free(w);
    }
}

static void every_level_gives_the_scalar_bits_for_every_type(void **state)
{
    (void)state;
    for (int isa = KERNELS_ISA_AVX2; isa < KERNELS_ISA_COUNT_; isa++)
        if (!qmm_level_runs((enum kernels_isa)isa))
            print_message("skipped level %s: this CPU lacks it\n", kernels_isa_name((enum kernels_isa)isa));
        else if (!kernels_get((enum kernels_isa)isa))
            print_message("level %s: this CPU lacks it; its kernels run here with vpdpbusd emulated\n",
                          kernels_isa_name((enum kernels_isa)isa));
    for (size_t ti = 0; ti < sizeof all_types / sizeof all_types[0]; ti++) {
        const enum ggml_type t = all_types[ti];
        int64_t ks[8];
        const int nk = lengths_for(t, ks);
        for (int ki = 0; ki < nk; ki++) {
            const int64_t k = ks[ki], rows = 5;
            uint8_t *wd = random_rows(t, rows, k);
            float *x = random_x(k);
            struct qmm_part p = {.type = t, .data = wd, .n_rows = rows};
            float want[5];
            scalar_rows(&p, k, x, want);
            /* semantics: within activation rounding of the dequantised dot */
            float *deq = malloc((size_t)k * sizeof *deq);
            uint64_t rb;
            assert_int_equal(ggml_type_row_bytes(t, (uint64_t)k, &rb), 0);
            for (int r = 0; r < rows; r++) {
                assert_int_equal(quant_dequantize(t, wd + r * rb, deq, (uint64_t)k), 0);
                double exact = 0, mag = 0;
                for (int64_t i = 0; i < k; i++) {
                    exact += (double)deq[i] * x[i];
                    mag += fabs((double)deq[i] * x[i]);
                }
                const double tol = (t == GGML_TYPE_F32 ? 1e-6 : t == GGML_TYPE_BF16 ? 1e-2 : 2e-2) * mag + 1e-6;
                if (fabs(want[r] - exact) > tol)
                    fail_msg("%s k=%lld row %d: %.9g vs exact %.9g (tol %.3g)", ggml_type_name(t),
                             (long long)k, r, want[r], exact, tol);
            }
            free(deq);
            char what[64];
            snprintf(what, sizeof what, "%s k=%lld", ggml_type_name(t), (long long)k);
            expect_scalar_bits_at_every_level(&p, k, x, want, rows, what);
            free(x);
            free(wd);
        }
    }
}

/* A stack of three parts run with 1..40 rows, with and without a pool:
 * every row's outputs are the bits of that row computed alone, and of the
 * scalar level. */
static void check_rows_alone(const enum ggml_type types[3], int64_t k)
{
    const int64_t max_m = 40;
    const int64_t n_rows[3] = {37, 64, 19};
    struct qmm_part parts[3];
    uint8_t *data[3];
    int64_t n_out = 0;
    for (int i = 0; i < 3; i++) {
        data[i] = random_rows(types[i], n_rows[i], k);
        parts[i] = (struct qmm_part){.type = types[i], .data = data[i], .n_rows = n_rows[i]};
        n_out += n_rows[i];
    }
    float *x = random_x(k * max_m);
    float *y = malloc((size_t)(max_m * n_out) * sizeof *y);
    float *alone = malloc((size_t)(max_m * n_out) * sizeof *alone);
    struct tpool *pool;
    assert_int_equal(tpool_new(&pool, &(struct tpool_opts){.n_threads = 3}), 0);
    struct qmm_weight *ref = weight(parts, 3, k, KERNELS_ISA_SCALAR);
    assert_int_equal(qmm_weight_n_out(ref), n_out);
    void *act = act_for(ref, 1);
    for (int64_t r = 0; r < max_m; r++)
        assert_int_equal(qmm_run(ref, x + r * k, alone + r * n_out, 1, act, NULL), 0);
    free(act);
    for (int isa = 0; isa < KERNELS_ISA_COUNT_; isa++) {
        if (!qmm_level_runs((enum kernels_isa)isa))
            continue;
        struct qmm_weight *w = weight_on(parts, 3, k, (enum kernels_isa)isa, pool); /* packed on it */
        act = act_for(w, max_m);
        const int64_t ms[] = {1, 2, 3, 4, 7, 8, 16, 17, 40};
        for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
            for (int use_pool = 0; use_pool < 2; use_pool++) {
                memset(y, 0xff, (size_t)(ms[mi] * n_out) * sizeof *y);
                assert_int_equal(qmm_run(w, x, y, ms[mi], act, use_pool ? pool : NULL), 0);
                if (memcmp(y, alone, (size_t)(ms[mi] * n_out) * sizeof *y) != 0)
                    fail_msg("%s|%s|%s k=%lld level %s m=%lld pool=%d differs from rows alone",
                             ggml_type_name(types[0]), ggml_type_name(types[1]), ggml_type_name(types[2]),
                             (long long)k, kernels_isa_name((enum kernels_isa)isa), (long long)ms[mi],
                             use_pool);
            }
        }
        free(act);
        qmm_weight_free(w);
    }
    qmm_weight_free(ref);
    tpool_free(pool);
    free(alone);
    free(y);
    free(x);
    for (int i = 0; i < 3; i++)
        free(data[i]);
}

/* A Q4_K_M-like stack (two activation formats); the row-interleaved types
 * with parts of 37, 64 and 19 rows (groups of 8 padded, and cut by parts and
 * by the pool's row ranges); and a float stack (3 x 4 tiles; k = 1000 and
 * 1001: tails of 0 and 1 element past the last 8). */
static void rows_do_not_depend_on_m_parts_or_pool(void **state)
{
    (void)state;
    const enum ggml_type kq[3] = {GGML_TYPE_Q4_K, GGML_TYPE_Q6_K, GGML_TYPE_Q8_0};
    check_rows_alone(kq, 512);
    const enum ggml_type x8[3] = {GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0};
    check_rows_alone(x8, 96);
    const enum ggml_type x8m[3] = {GGML_TYPE_Q5_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_1};
    check_rows_alone(x8m, 96);
    const enum ggml_type k8[3] = {GGML_TYPE_Q5_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K};
    check_rows_alone(k8, 512);
    const enum ggml_type fl[3] = {GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_F32};
    check_rows_alone(fl, 1000);
    check_rows_alone(fl, 1001);
}

/* Every value bit set (largest magnitudes; Q6_K's scales 127) against
 * activations all at +-127: the kernels' narrow partial sums (int16 before
 * widening) must not saturate, so every level still gives the scalar bits. */
static void extreme_blocks_give_the_scalar_bits(void **state)
{
    (void)state;
    const int64_t k = 512, rows = 11;
    for (size_t ti = 0; ti < sizeof all_types / sizeof all_types[0]; ti++) {
        const enum ggml_type t = all_types[ti];
        const uint64_t bb = ggml_type_block_bytes(t), be = ggml_type_block_elems(t);
        if (be == 1)
            continue;
        uint8_t *wd = random_rows(t, rows, k);
        const uint64_t nb = (uint64_t)(rows * k) / be;
        /* the f16 scale fields kept, every other byte all ones */
        const size_t keep = t == GGML_TYPE_Q6_K ? 0 : (t == GGML_TYPE_Q4_1 || t == GGML_TYPE_Q5_1 || t == GGML_TYPE_Q4_K || t == GGML_TYPE_Q5_K) ? 4 : 2;
        for (uint64_t b = 0; b < nb; b++) {
            uint8_t *blk = wd + b * bb;
            memset(blk + keep, 0xff, bb - keep - (t == GGML_TYPE_Q6_K ? 2 : 0));
            if (t == GGML_TYPE_Q6_K)
                memset(blk + 192, 0x7f, 16);
        }
        for (int sign = 0; sign < 2; sign++) {
            float *x = random_x(k);
            for (int64_t i = 0; i < k; i++)
                x[i] = sign ? (i % 2 ? -1.0f : 1.0f) : 1.0f;
            struct qmm_part p = {.type = t, .data = wd, .n_rows = rows};
            float want[11];
            scalar_rows(&p, k, x, want);
            char what[64];
            snprintf(what, sizeof what, "%s extreme blocks, x %s", ggml_type_name(t), sign ? "+-1" : "1");
            expect_scalar_bits_at_every_level(&p, k, x, want, rows, what);
            free(x);
        }
        free(wd);
    }
}

/* Repacking (Q4_K: 51 groups, the last padded, in tasks of 16) and the
 * copy of float rows onto huge pages (F16: 2.7 MiB in 1 MiB tasks) run on a
 * pool at load: at every level the whole matrix packed there gives the bits
 * of its 64-row slices packed alone (each too small to be copied). */
static void weights_packed_on_a_pool_give_the_same_bits(void **state)
{
    (void)state;
    const int64_t k = 2048, m = 3, slice = 64;
    const struct {
        enum ggml_type t;
        int64_t rows;
    } cases[] = {{GGML_TYPE_Q4_K, 403}, {GGML_TYPE_F16, 701}};
    struct tpool *pool;
    assert_int_equal(tpool_new(&pool, &(struct tpool_opts){.n_threads = 3}), 0);
    float *x = random_x(k * m);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t rows = cases[ci].rows;
        uint64_t rb;
        assert_int_equal(ggml_type_row_bytes(cases[ci].t, (uint64_t)k, &rb), 0);
        uint8_t *wd = random_rows(cases[ci].t, rows, k);
        float *want = malloc((size_t)(m * rows) * sizeof *want);
        float *got = malloc((size_t)(m * rows) * sizeof *got);
        float *part_y = malloc((size_t)(m * slice) * sizeof *part_y);
        assert_non_null(want);
        assert_non_null(got);
        assert_non_null(part_y);
        for (int isa = 0; isa < KERNELS_ISA_COUNT_; isa++) {
            if (!qmm_level_runs((enum kernels_isa)isa))
                continue;
            for (int64_t r0 = 0; r0 < rows; r0 += slice) {
                const int64_t n = rows - r0 < slice ? rows - r0 : slice;
                struct qmm_part sp = {.type = cases[ci].t, .data = wd + (size_t)r0 * rb, .n_rows = n};
                struct qmm_weight *sw = weight(&sp, 1, k, (enum kernels_isa)isa);
                assert_false(cases[ci].t == GGML_TYPE_F16 && qmm_weight_part_copied(sw, 0));
                void *act = act_for(sw, m);
                assert_int_equal(qmm_run(sw, x, part_y, m, act, NULL), 0);
                for (int64_t r = 0; r < m; r++)
                    memcpy(want + r * rows + r0, part_y + r * n, (size_t)n * sizeof *want);
                free(act);
                qmm_weight_free(sw);
            }
            struct qmm_part p = {.type = cases[ci].t, .data = wd, .n_rows = rows};
            struct qmm_weight *pooled = weight_on(&p, 1, k, (enum kernels_isa)isa, pool);
            /* F16 rows copied; Q4_K repacked above the scalar level */
            assert_true(qmm_weight_part_copied(pooled, 0) || isa == KERNELS_ISA_SCALAR);
            void *act = act_for(pooled, m);
            memset(got, 0xff, (size_t)(m * rows) * sizeof *got);
            assert_int_equal(qmm_run(pooled, x, got, m, act, NULL), 0);
            if (memcmp(want, got, (size_t)(m * rows) * sizeof *got) != 0)
                fail_msg("%s level %s: the matrix packed on a pool differs from its slices packed alone",
                         ggml_type_name(cases[ci].t), kernels_isa_name((enum kernels_isa)isa));
            free(act);
            qmm_weight_free(pooled);
        }
        free(part_y);
        free(got);
        free(want);
        free(wd);
    }
    free(x);
    tpool_free(pool);
}

static void weight_rejects_bad_shapes_and_frees_owned_parts(void **state)
{
    (void)state;
    struct qmm_weight *w = (struct qmm_weight *)1;
    uint8_t buf[64] = {0};
    /* 40 is not a multiple of Q8_0's 32 */
    struct qmm_part p = {.type = GGML_TYPE_Q8_0, .data = buf, .n_rows = 1};
    assert_int_equal(qmm_weight_new(&w, &p, 1, 40, KERNELS_ISA_SCALAR, NULL), LLORCH_EINVAL);
    assert_null(w);
    /* a type without kernels: its owned copy is still freed (ASan: no leak) */
    struct qmm_part q = {.type = GGML_TYPE_Q2_K, .data = buf, .n_rows = 1, .owned = malloc(16)};
    assert_int_equal(qmm_weight_new(&w, &q, 1, 256, KERNELS_ISA_SCALAR, NULL), LLORCH_EUNSUPPORTED);
    assert_false(qmm_type_supported(GGML_TYPE_Q2_K));
    assert_true(qmm_type_supported(GGML_TYPE_Q6_K));
    struct qmm_part none = {.type = GGML_TYPE_F32, .data = buf, .n_rows = 1};
    assert_int_equal(qmm_weight_new(&w, &none, 0, 4, KERNELS_ISA_SCALAR, NULL), LLORCH_EINVAL);
}

/* The weight names the level its kernels run at, and says when the VNNI
 * sums are emulated; a level this CPU cannot run is refused. */
static void weight_names_its_level_and_emulation(void **state)
{
    (void)state;
    uint8_t *wd = random_rows(GGML_TYPE_Q8_0, 8, 64);
    struct qmm_part p = {.type = GGML_TYPE_Q8_0, .data = wd, .n_rows = 8};
    for (int isa = 0; isa < KERNELS_ISA_COUNT_; isa++) {
        struct qmm_weight *w = (struct qmm_weight *)1;
        if (!qmm_level_runs((enum kernels_isa)isa)) {
            assert_int_equal(qmm_weight_new(&w, &p, 1, 64, (enum kernels_isa)isa, NULL), LLORCH_EINVAL);
            assert_null(w);
            continue;
        }
        assert_int_equal(qmm_weight_new(&w, &p, 1, 64, (enum kernels_isa)isa, NULL), 0);
        char want[64];
        snprintf(want, sizeof want, "llorch:%s%s q8_0", kernels_isa_name((enum kernels_isa)isa),
                 kernels_get((enum kernels_isa)isa) ? "" : "-emulated");
        assert_string_equal(qmm_weight_impl(w), want);
        qmm_weight_free(w);
    }
    free(wd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(weight_names_its_level_and_emulation),
        cmocka_unit_test(every_level_gives_the_scalar_bits_for_every_type),
        cmocka_unit_test(rows_do_not_depend_on_m_parts_or_pool),
        cmocka_unit_test(weights_packed_on_a_pool_give_the_same_bits),
        cmocka_unit_test(extreme_blocks_give_the_scalar_bits),
        cmocka_unit_test(weight_rejects_bad_shapes_and_frees_owned_parts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
