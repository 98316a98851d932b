/* Kernels against double-precision references, for every instruction set
 * this CPU runs (scalar always, AVX2 and AVX-512 where supported). Stated
 * tolerances: reductions within n * 2^-24 of sum |terms| (float
 * accumulation), norms and activations within a few float ulps, GELU within
 * f16 rounding, conversions exact. */
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

#include "half.h"
#include "kernels.h"

#define FEPS 5.9604644775390625e-8 /* 2^-24 */

/* Deterministic pseudo-random floats in [-1, 1). */
static uint64_t rng_state = 88172645463325252ULL;
static float frand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void fill(float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = frand() * scale;
}

/* Instruction sets to test: every one the CPU supports. */
static int isas(const struct kernels **out)
{
    int n = 0;
    for (int i = 0; i < KERNELS_ISA_COUNT_; i++) {
        const struct kernels *k = kernels_get((enum kernels_isa)i);
        if (k)
            out[n++] = k;
    }
    return n;
}

static const int64_t sizes[] = {1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 256, 1000};

static void kernels_scalar_is_always_available_and_best_is_not_null(void **state)
{
    (void)state;
    assert_non_null(kernels_get(KERNELS_ISA_SCALAR));
    assert_non_null(kernels_best());
    assert_null(kernels_get(KERNELS_ISA_COUNT_));
    assert_string_equal(kernels_isa_name(KERNELS_ISA_AVX512), "avx512");
    assert_string_equal(kernels_isa_name(KERNELS_ISA_AVXVNNI), "avxvnni");
    print_message("best kernels: %s\n", kernels_best()->name);
}

/* Whether /proc/cpuinfo's first flags line lists flag (a whole word). */
static bool cpuinfo_has(const char *flag)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return false;
    char line[8192];
    bool found = false;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        const size_t n = strlen(flag);
        for (char *p = strstr(line, flag); p && !found; p = strstr(p + 1, flag))
            found = p[-1] == ' ' && (p[n] == ' ' || p[n] == '\n' || p[n] == 0);
        break;
    }
    fclose(f);
    return found;
}

/* The kernel's own reading of the CPU (cpuid) against the OS's: the avxvnni
 * level exists with AVX2 and either VNNI form, and its table is avx2's
 * kernels under its own name. */
static void kernels_avxvnni_level_follows_the_cpu_flags(void **state)
{
    (void)state;
    const bool vex = cpuinfo_has("avx_vnni"), evex = cpuinfo_has("avx512_vnni") && cpuinfo_has("avx512vl");
    const bool avx2 = kernels_get(KERNELS_ISA_AVX2) != NULL;
    const enum kernels_vnni want = !avx2 ? KERNELS_VNNI_NONE : vex ? KERNELS_VNNI_VEX : evex ? KERNELS_VNNI_EVEX
                                                                                   : KERNELS_VNNI_NONE;
    if (avx2) /* without AVX2 the level is off whatever kernels_vnni says */
        assert_int_equal(kernels_vnni(), want);
    const struct kernels *k = kernels_get(KERNELS_ISA_AVXVNNI);
    assert_int_equal(k != NULL, want != KERNELS_VNNI_NONE);
    print_message("avxvnni level: %s\n", !k ? "absent (this CPU lacks VNNI)" : want == KERNELS_VNNI_VEX ? "VEX" : "EVEX");
    if (k) {
        assert_int_equal(k->isa, KERNELS_ISA_AVXVNNI);
        assert_ptr_equal(k->dot, kernels_get(KERNELS_ISA_AVX2)->dot);
        assert_ptr_equal(k->softmax, kernels_get(KERNELS_ISA_AVX2)->softmax);
    }
}

/* The nearest f16 by search over neighbours, ties to even. */
static void check_f16_nearest(float x)
{
    uint16_t h = half_f32_to_f16(x);
    double v = half_f16_to_f32(h);
    if (isinf(v)) {
        assert_true(fabs((double)x) >= 65520.0);
        return;
    }
    double err = fabs(v - x);
    for (int d = -1; d <= 1; d += 2) {
        uint16_t nb = (uint16_t)(h + d);
        if (((nb >> 10) & 0x1f) == 0x1f || ((h & 0x7fff) == 0 && d < 0))
            continue;
        double e2 = fabs((double)half_f16_to_f32(nb) - x);
        assert_true(err <= e2);
        if (err == e2)
            assert_int_equal(h & 1, 0);
    }
}

static void kernels_f16_conversion_rounds_to_nearest_even(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = half_f16_to_f32(h);
        if (isnan(f)) {
            assert_true(isnan(half_f16_to_f32(half_f32_to_f16(f))));
            continue;
        }
        assert_int_equal(half_f32_to_f16(f), h);
    }
    const float edge[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 2.9802322e-8f,
                          2.98023259e-8f, 5.96046448e-8f, 6.1e-5f, 6.103515625e-05f, 0.33333334f};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) {
        check_f16_nearest(edge[i]);
        check_f16_nearest(-edge[i]);
    }
    for (int i = 0; i < 200000; i++) {
        float x = ldexpf(frand(), (int)(frand() * 30.0f));
        check_f16_nearest(x);
    }
    assert_int_equal(half_f32_to_f16(2.9802322387695312e-8f), 0);  /* 2^-25: tie to even */
    assert_int_equal(half_f32_to_f16(65520.0f), 0x7c00);
    assert_true(isnan(half_f16_to_f32(half_f32_to_f16(NAN))));
}

static void kernels_bf16_conversion_rounds_to_nearest_even(void **state)
{
    (void)state;
    assert_int_equal(half_f32_to_bf16(1.0f), 0x3f80);
    /* 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1) */
    assert_int_equal(half_f32_to_bf16(1.00390625f), 0x3f80);
    /* 1 + 3*2^-8 ties up to 1 + 2^-6 (even) */
    assert_int_equal(half_f32_to_bf16(1.01171875f), 0x3f82);
    assert_true(isnan(half_bf16_to_f32(half_f32_to_bf16(NAN))));
    for (int i = 0; i < 100000; i++) {
        float x = ldexpf(frand(), (int)(frand() * 60.0f));
        uint16_t b = half_f32_to_bf16(x);
        double e = fabs((double)half_bf16_to_f32(b) - x);
        double up = fabs((double)half_bf16_to_f32((uint16_t)(b + 1)) - x);
        double dn = fabs((double)half_bf16_to_f32((uint16_t)(b - 1)) - x);
        assert_true(e <= up && e <= dn);
    }
}

static void kernels_vector_conversions_match_scalar(void **state)
{
    (void)state;
    const struct kernels *ks[KERNELS_ISA_COUNT_];
    int nk = isas(ks);
    float x[1001], back[1001];
    uint16_t h[1001];
    for (int i = 0; i < 1001; i++)
        x[i] = ldexpf(frand(), (int)(frand() * 20.0f));
    x[5] = NAN;
    x[6] = INFINITY;
    x[7] = 1e9f;
    for (int k = 0; k < nk; k++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t n = sizes[s];
            memset(h, 0xab, sizeof h);
            ks[k]->to_f16(h, x, n);
            for (int64_t i = 0; i < n; i++)
                assert_int_equal(h[i], half_f32_to_f16(x[i]));
            assert_int_equal(h[n], 0xabab); /* nothing written past n */
            ks[k]->from_f16(back, h, n);
            for (int64_t i = 0; i < n; i++) {
                float ref = half_f16_to_f32(h[i]);
                assert_true(memcmp(&back[i], &ref, 4) == 0 || (isnan(ref) && isnan(back[i])));
            }
            ks[k]->to_bf16(h, x, n);
            for (int64_t i = 0; i < n; i++) {
                if (isnan(x[i]))
                    assert_true(isnan(half_bf16_to_f32(h[i])));
                else
                    assert_int_equal(h[i], half_f32_to_bf16(x[i]));
            }
        }
    }
}

static void kernels_dot_and_axpy_match_double_reference(void **state)
{
    (void)state;
    const struct kernels *ks[KERNELS_ISA_COUNT_];
    int nk = isas(ks);
    float a[1000], b[1000], y[1000], y0[1000];
    uint16_t bh[1000], bb[1000];
    for (int k = 0; k < nk; k++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t n = sizes[s];
            fill(a, n, 1.0f);
            fill(b, n, 2.0f);
            fill(y0, n, 1.0f);
            for (int64_t i = 0; i < n; i++) {
                bh[i] = half_f32_to_f16(b[i]);
                bb[i] = half_f32_to_bf16(b[i]);
            }
            for (int variant = 0; variant < 3; variant++) {
                double ref = 0.0, mag = 0.0;
                for (int64_t i = 0; i < n; i++) {
                    double bv = variant == 0 ? b[i]
                                : variant == 1 ? half_f16_to_f32(bh[i])
                                               : half_bf16_to_f32(bb[i]);
                    ref += (double)a[i] * bv;
                    mag += fabs((double)a[i] * bv);
                }
                float got = variant == 0   ? ks[k]->dot(a, b, n)
                            : variant == 1 ? ks[k]->dot_f16(a, bh, n)
                                           : ks[k]->dot_bf16(a, bb, n);
                assert_true(fabs(got - ref) <= (double)n * FEPS * mag + 1e-30);

                const float alpha = 0.37f;
                memcpy(y, y0, (size_t)n * sizeof(float));
                if (variant == 0)
                    ks[k]->axpy(y, alpha, b, n);
                else if (variant == 1)
                    ks[k]->axpy_f16(y, alpha, bh, n);
                else
                    ks[k]->axpy_bf16(y, alpha, bb, n);
                for (int64_t i = 0; i < n; i++) {
                    double bv = variant == 0 ? b[i]
                                : variant == 1 ? half_f16_to_f32(bh[i])
                                               : half_bf16_to_f32(bb[i]);
                    double r = (double)y0[i] + (double)alpha * bv;
                    assert_true(fabs(y[i] - r) <= 2 * FEPS * (fabs(y0[i]) + fabs(alpha * bv)));
                }
            }
        }
    }
}

static void kernels_rmsnorm_matches_double_reference(void **state)
{
    (void)state;
    const struct kernels *ks[KERNELS_ISA_COUNT_];
    int nk = isas(ks);
    float x[1000], w[1000], y[1000];
    for (int k = 0; k < nk; k++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t n = sizes[s];
            fill(x, n, 3.0f);
            fill(w, n, 1.0f);
            const float eps = 1e-5f;
            ks[k]->rmsnorm(y, x, w, n, eps);
            double ss = 0.0;
            for (int64_t i = 0; i < n; i++)
                ss += (double)x[i] * x[i];
            double sc = 1.0 / sqrt(ss / n + eps);
            for (int64_t i = 0; i < n; i++) {
                double r = x[i] * sc * w[i];
                assert_true(fabs(y[i] - r) <= 6 * FEPS * fabs(r) + 1e-30);
            }
            /* in place works too */
            memcpy(y, x, (size_t)n * sizeof(float));
            ks[k]->rmsnorm(y, y, w, n, eps);
            assert_true(fabs(y[0] - x[0] * sc * w[0]) <= 6 * FEPS * fabs(x[0] * sc * w[0]) + 1e-30);
        }
    }
}

static void kernels_layernorm_matches_double_reference(void **state)
{
    (void)state;
    const struct kernels *ks[KERNELS_ISA_COUNT_];
    int nk = isas(ks);
    float x[1000], w[1000], b[1000], y[1000];
    for (int k = 0; k < nk; k++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t n = sizes[s];
            if (n < 2)
                continue;
            fill(x, n, 3.0f);
            for (int64_t i = 0; i < n; i++)
                x[i] += 0.5f; /* a mean away from 0 */
            fill(w, n, 1.0f);
            fill(b, n, 0.1f);
            const float eps = 1e-5f;
            for (int with_bias = 0; with_bias < 2; with_bias++) {
                ks[k]->layernorm(y, x, w, with_bias ? b : NULL, n, eps);
                double mean = 0.0, var = 0.0;
                for (int64_t i = 0; i < n; i++)
                    mean += x[i];
                mean /= n;
                for (int64_t i = 0; i < n; i++)
                    var += (x[i] - mean) * (x[i] - mean);
                var /= n;
                double sc = 1.0 / sqrt(var + eps);
                for (int64_t i = 0; i < n; i++) {
                    double r = (x[i] - mean) * sc * w[i] + (with_bias ? b[i] : 0.0);
                    /* the mean is rounded to float (as ggml does), so
                     * x - mean carries an error of ulps of |x| + |mean| */
                    double tol = 8 * FEPS * ((fabs(x[i]) + fabs(mean)) * sc * fabs(w[i]) + fabs(r));
                    assert_true(fabs(y[i] - r) <= tol);
                }
            }
        }
    }
}

static void kernels_swiglu_add_scale_match_double_reference(void **state)
{
    (void)state;
    const struct kernels *ks[KERNELS_ISA_COUNT_];
    int nk = isas(ks);
    float g[1000], u[1000], y[1000];
    for (int k = 0; k < nk; k++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t n = sizes[s];
            fill(g, n, 12.0f);
            fill(u, n, 2.0f);
            if (n > 3) {
                g[0] = 95.0f;   /* exp(-x) underflows */
                g[1] = -95.0f;  /* exp(-x) overflows: silu is -0 */
                g[2] = 0.0f;
            }
            ks[k]->swiglu(y, g, u, n);
            for (int64_t i = 0; i < n; i++) {
                double r = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
                assert_true(fabs(y[i] - r) <= 8 * FEPS * fabs(r) + 1e-37);
            }
            memcpy(y, g, (size_t)n * sizeof(float));
            ks[k]->add(y, u, n);
            for (int64_t i = 0; i < n; i++)
                assert_true(y[i] == g[i] + u[i]);
            ks[k]->scale(y, 0.5f, n);
            for (int64_t i = 0; i < n; i++)
                assert_true(y[i] == (g[i] + u[i]) * 0.5f);
        }
    }
}

static void kernels_softmax_is_stable_and_matches_double_reference(void **state)
{
    (void)state;
    const struct kernels *ks[KERNELS_ISA_COUNT_];
    int nk = isas(ks);
    float x[1000], x0[1000];
    for (int k = 0; k < nk; k++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t n = sizes[s];
            fill(x0, n, 30.0f);
            x0[n - 1] = 1000.0f; /* would overflow a naive exp */
            if (n > 2)
                x0[0] = -1000.0f;
            memcpy(x, x0, (size_t)n * sizeof(float));
            float max = ks[k]->softmax(x, n);
            assert_true(max == 1000.0f);
            double sum = 0.0;
            for (int64_t i = 0; i < n; i++)
                sum += exp((double)x0[i] - 1000.0);
            for (int64_t i = 0; i < n; i++) {
                double r = exp((double)x0[i] - 1000.0) / sum;
                assert_true(fabs(x[i] - r) <= 8 * FEPS * r + 1e-37);
            }
        }
    }
}

static void kernels_gelu_rounds_input_to_f16_like_ggml(void **state)
{
    (void)state;
    uint16_t *table = malloc(KERNELS_GELU_TABLE_SIZE * sizeof *table);
    assert_non_null(table);
    kernels_gelu_table_init(table);
    float x[4096], y[4096];
    fill(x, 4096, 12.0f);
    kernels_gelu(y, x, 4096, table);
    double worst_exact = 0.0;
    for (int i = 0; i < 4096; i++) {
        if (x[i] <= -10.0f) {
            assert_true(y[i] == 0.0f);
            continue;
        }
        if (x[i] >= 10.0f) {
            assert_true(y[i] == x[i]);
            continue;
        }
        /* the output is the f16 of the float tanh-GELU of the f16-rounded
         * input, exactly */
        const float xr = half_f16_to_f32(half_f32_to_f16(x[i]));
        assert_true(y[i] == half_f16_to_f32(half_f32_to_f16(kernels_gelu_exact(xr))));
        /* and within f16 rounding of the double formula, plus the float
         * cancellation in 1 + tanh(z) for negative inputs (~ulp(1) * |x|) */
        double r = 0.5 * xr * (1.0 + tanh(0.7978845608028654 * xr * (1.0 + 0.044715 * xr * xr)));
        assert_true(fabs(y[i] - r) <= fabs(r) * 0x1p-11 + 4 * FEPS * fabs(xr) + 0x1p-24);
        double d = fabs(y[i] - kernels_gelu_exact(x[i]));
        worst_exact = d > worst_exact ? d : worst_exact;
    }
    /* inputs that round to the same f16 give the same output */
    float a = 1.0f + 0x1p-12f, b[1] = {1.0f}, ya, yb;
    kernels_gelu(&ya, &a, 1, table);
    kernels_gelu(&yb, b, 1, table);
    assert_true(ya == yb);
    /* and the table differs visibly from exact tanh-GELU (as llama.cpp's does) */
    assert_true(worst_exact > 1e-4);
    free(table);
}

/* RoPE with llama3 frequency factors, checked against values worked out by
 * hand: pos 1, base 10000, n_rot 4, factors {1, 4}: theta_0 = 1,
 * theta_1 = 10000^(-1/2) / 4 = 0.0025. */
static void kernels_rope_with_freq_factors_matches_hand_computed_values(void **state)
{
    (void)state;
    const float factors[2] = {1.0f, 4.0f};
    float cs[4];
    kernels_rope_cache(cs, 1, 4, 10000.0f, 1.0f, factors);
    assert_float_equal(cs[0], 0.5403023059f, 1e-7); /* cos 1 */
    assert_float_equal(cs[1], 0.8414709848f, 1e-7); /* sin 1 */
    assert_float_equal(cs[2], 0.9999968750f, 1e-7); /* cos 0.0025 */
    assert_float_equal(cs[3], 0.0024999974f, 1e-9); /* sin 0.0025 */

    /* NORM rotates (x0, x1) and (x2, x3); a 5th dim past n_rot stays */
    float v[5] = {1.0f, 0.0f, 0.0f, 1.0f, 7.0f};
    kernels_rope(v, 1, 5, 4, cs, KERNELS_ROPE_NORM);
    assert_float_equal(v[0], 0.5403023059f, 1e-7);
    assert_float_equal(v[1], 0.8414709848f, 1e-7);
    assert_float_equal(v[2], -0.0024999974f, 1e-9);
    assert_float_equal(v[3], 0.9999968750f, 1e-7);
    assert_true(v[4] == 7.0f);

    /* NEOX rotates (x0, x2) by theta_0 and (x1, x3) by theta_1 */
    float w[4] = {1.0f, 0.0f, 0.0f, 1.0f};
    kernels_rope(w, 1, 4, 4, cs, KERNELS_ROPE_NEOX);
    assert_float_equal(w[0], 0.5403023059f, 1e-7);
    assert_float_equal(w[2], 0.8414709848f, 1e-7);
    assert_float_equal(w[1], -0.0024999974f, 1e-9);
    assert_float_equal(w[3], 0.9999968750f, 1e-7);

    /* linear scaling halves every angle: theta_0 = 0.5 at pos 1 */
    kernels_rope_cache(cs, 1, 4, 10000.0f, 0.5f, NULL);
    assert_float_equal(cs[0], 0.8775825619f, 1e-7);
    assert_float_equal(cs[3], 0.0049999792f, 1e-9); /* sin(0.005) */
}

static void kernels_rope_matches_double_reference_over_positions(void **state)
{
    (void)state;
    const int64_t n_rot = 64, hd = 80, nh = 3;
    float factors[32], cs[64], x[240], x0[240];
    for (int i = 0; i < 32; i++)
        factors[i] = 1.0f + (float)i / 8.0f;
    for (int mode = 0; mode < 2; mode++) {
        for (int64_t pos = 0; pos < 4096; pos += 511) {
            kernels_rope_cache(cs, pos, n_rot, 500000.0f, 1.0f, factors);
            fill(x0, hd * nh, 1.0f);
            memcpy(x, x0, sizeof x);
            kernels_rope(x, nh, hd, n_rot, cs, (enum kernels_rope_mode)mode);
            for (int64_t h = 0; h < nh; h++) {
                for (int64_t i = 0; i < n_rot / 2; i++) {
                    /* the float recurrence drifts by ~i ulps of theta */
                    double th = (double)pos * pow(500000.0, -2.0 * i / n_rot) / factors[i];
                    int64_t a = mode == KERNELS_ROPE_NORM ? 2 * i : i;
                    int64_t b = mode == KERNELS_ROPE_NORM ? 2 * i + 1 : i + n_rot / 2;
                    double x0a = x0[h * hd + a], x0b = x0[h * hd + b];
                    double ra = x0a * cos(th) - x0b * sin(th);
                    double rb = x0a * sin(th) + x0b * cos(th);
                    double tol = 64 * FEPS * (th + 1.0);
                    assert_true(fabs(x[h * hd + a] - ra) <= tol);
                    assert_true(fabs(x[h * hd + b] - rb) <= tol);
                }
                for (int64_t i = n_rot; i < hd; i++)
                    assert_true(x[h * hd + i] == x0[h * hd + i]);
            }
        }
    }
}

static void kernels_round_q8_0_quantises_blocks_of_32(void **state)
{
    (void)state;
    float x[64], x0[64];
    fill(x0, 64, 3.0f);
    x0[40] = -5.0f; /* amax of the second block */
    memcpy(x, x0, sizeof x);
    kernels_round_q8_0(x, 64);
    for (int b = 0; b < 2; b++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x0[b * 32 + j]));
        double d = half_f16_to_f32(half_f32_to_f16(amax / 127.0f));
        for (int j = 0; j < 32; j++) {
            double q = x[b * 32 + j] / d;
            assert_true(fabs(q - nearbyint(q)) < 1e-4);  /* a multiple of the f16 scale */
            assert_true(fabs(q) <= 127.0 + 1e-4);
            assert_true(fabs(x[b * 32 + j] - x0[b * 32 + j]) <= 0.5 * d * 1.01 + 1e-3 * d);
        }
    }
    float z[32] = {0};
    kernels_round_q8_0(z, 32);
    for (int j = 0; j < 32; j++)
        assert_true(z[j] == 0.0f);
    float h[3] = {1.0f + 0x1p-12f, 0.1f, 70000.0f};
    kernels_round_f16(h, 3);
    assert_true(h[0] == 1.0f);
    assert_true(h[1] == half_f16_to_f32(half_f32_to_f16(0.1f)));
    assert_true(isinf(h[2]));
}

/* Paged attention with a scrambled block table, in every KV type, against a
 * double-precision causal attention over the stored (converted) values. */
static void kernels_attention_over_paged_kv_matches_double_reference(void **state)
{
    (void)state;
    const struct kernels *ks[KERNELS_ISA_COUNT_];
    int nk = isas(ks);
    enum { HD = 40, BLK = 16, NBLK = 6, NPOS = 83, NQ = 5 };
    const uint32_t blocks[NBLK] = {4, 0, 5, 2, 1, 3};
    static float kf[NPOS][HD], vf[NPOS][HD], q[NQ][HD], out[NQ][HD], scores[2 * NPOS];
    static uint8_t kstore[NBLK * BLK * HD * 4], vstore[NBLK * BLK * HD * 4];
    for (int p = 0; p < NPOS; p++) {
        fill(kf[p], HD, 1.0f);
        fill(vf[p], HD, 1.0f);
    }
    for (int t = 0; t < NQ; t++)
        fill(q[t], HD, 2.0f);
    const enum llorch_kv_type types[3] = {LLORCH_KV_F32, LLORCH_KV_F16, LLORCH_KV_BF16};
    for (int ti = 0; ti < 3; ti++) {
        const size_t elem = types[ti] == LLORCH_KV_F32 ? 4 : 2;
        /* store position p at slot p % BLK of block blocks[p / BLK] */
        static float kq[NPOS][HD], vq[NPOS][HD]; /* the values as stored */
        for (int p = 0; p < NPOS; p++) {
            size_t off = ((size_t)blocks[p / BLK] * BLK + (size_t)(p % BLK)) * HD * elem;
            for (int d = 0; d < HD; d++) {
                if (types[ti] == LLORCH_KV_F32) {
                    memcpy(kstore + off + (size_t)d * 4, &kf[p][d], 4);
                    memcpy(vstore + off + (size_t)d * 4, &vf[p][d], 4);
                    kq[p][d] = kf[p][d];
                    vq[p][d] = vf[p][d];
                } else {
                    uint16_t hk = types[ti] == LLORCH_KV_F16 ? half_f32_to_f16(kf[p][d])
                                                             : half_f32_to_bf16(kf[p][d]);
                    uint16_t hv = types[ti] == LLORCH_KV_F16 ? half_f32_to_f16(vf[p][d])
                                                             : half_f32_to_bf16(vf[p][d]);
                    memcpy(kstore + off + (size_t)d * 2, &hk, 2);
                    memcpy(vstore + off + (size_t)d * 2, &hv, 2);
                    kq[p][d] = types[ti] == LLORCH_KV_F16 ? half_f16_to_f32(hk) : half_bf16_to_f32(hk);
                    vq[p][d] = types[ti] == LLORCH_KV_F16 ? half_f16_to_f32(hv) : half_bf16_to_f32(hv);
                }
            }
        }
        const struct kernels_kv_view kv = {
            .k = kstore, .v = vstore, .block_stride = (size_t)BLK * HD * elem,
            .row_bytes = (size_t)HD * elem, .block = BLK, .type = types[ti], .blocks = blocks,
        };
        const int64_t pos0 = NPOS - NQ;
        for (int k = 0; k < nk; k++) {
            struct kernels_attn a = {
                .q = q[0], .q_stride = HD, .out = out[0], .out_stride = HD, .n_q = NQ,
                .pos0 = pos0, .head_dim = HD, .scale = 1.0f / sqrtf(HD), .kv = &kv, .scores = scores,
            };
            kernels_attention(ks[k], &a);
            for (int t = 0; t < NQ; t++) {
                const int64_t n_kv = pos0 + t + 1;
                double s[NPOS], max = -INFINITY, sum = 0.0;
                for (int64_t p = 0; p < n_kv; p++) {
                    s[p] = 0.0;
                    for (int d = 0; d < HD; d++)
                        s[p] += (double)q[t][d] * kq[p][d];
                    s[p] /= sqrt((double)HD);
                    max = s[p] > max ? s[p] : max;
                }
                for (int64_t p = 0; p < n_kv; p++)
                    sum += exp(s[p] - max);
                for (int d = 0; d < HD; d++) {
                    double r = 0.0;
                    for (int64_t p = 0; p < n_kv; p++)
                        r += exp(s[p] - max) / sum * vq[p][d];
                    assert_true(fabs(out[t][d] - r) <= 2e-6);
                }
            }
        }
    }
}

/* A GQA group (three query heads sharing one K/V head) in one call gives,
 * head for head, the same bits as each head alone, in every KV type, and
 * does not depend on how many query rows the call has. */
static void kernels_attention_group_matches_each_head_alone(void **state)
{
    (void)state;
    const struct kernels *ks[KERNELS_ISA_COUNT_];
    int nk = isas(ks);
    enum { HD = 24, NH = 3, BLK = 16, NBLK = 4, NPOS = 50, NQ = 4 };
    const uint32_t blocks[NBLK] = {2, 3, 0, 1};
    static float q[NQ][NH * HD], out[NQ][NH * HD], one[HD], scores[2 * NH * NPOS];
    static uint8_t kstore[NBLK * BLK * HD * 4], vstore[NBLK * BLK * HD * 4];
    for (int t = 0; t < NQ; t++)
        fill(q[t], NH * HD, 2.0f);
    const enum llorch_kv_type types[3] = {LLORCH_KV_F32, LLORCH_KV_F16, LLORCH_KV_BF16};
    for (int ti = 0; ti < 3; ti++) {
        const size_t elem = types[ti] == LLORCH_KV_F32 ? 4 : 2;
        for (size_t b = 0; b < sizeof kstore / elem; b++) {
            float kv2[2];
            fill(kv2, 2, 1.0f);
            if (elem == 4) {
                memcpy(kstore + b * 4, &kv2[0], 4);
                memcpy(vstore + b * 4, &kv2[1], 4);
            } else {
                uint16_t hk = types[ti] == LLORCH_KV_F16 ? half_f32_to_f16(kv2[0])
                                                         : half_f32_to_bf16(kv2[0]);
                uint16_t hv = types[ti] == LLORCH_KV_F16 ? half_f32_to_f16(kv2[1])
                                                         : half_f32_to_bf16(kv2[1]);
                memcpy(kstore + b * 2, &hk, 2);
                memcpy(vstore + b * 2, &hv, 2);
            }
        }
        const struct kernels_kv_view kv = {
            .k = kstore, .v = vstore, .block_stride = (size_t)BLK * HD * elem,
            .row_bytes = (size_t)HD * elem, .block = BLK, .type = types[ti], .blocks = blocks,
        };
        const int64_t pos0 = NPOS - NQ;
        for (int k = 0; k < nk; k++) {
            struct kernels_attn a = {
                .q = q[0], .q_stride = NH * HD, .out = out[0], .out_stride = NH * HD,
                .n_q = NQ, .pos0 = pos0, .head_dim = HD, .scale = 0.3f, .kv = &kv,
                .scores = scores, .n_head = NH,
            };
            kernels_attention(ks[k], &a);
            for (int t = 0; t < NQ; t++)
                for (int h = 0; h < NH; h++) {
                    struct kernels_attn b = {
                        .q = q[t] + h * HD, .q_stride = NH * HD, .out = one, .out_stride = HD,
                        .n_q = 1, .pos0 = pos0 + t, .head_dim = HD, .scale = 0.3f, .kv = &kv,
                        .scores = scores,
                    };
                    kernels_attention(ks[k], &b);
                    assert_memory_equal(one, out[t] + h * HD, sizeof one);
                }
        }
    }
}

/* Below AVX-512 a GQA call computes, for every (query row, head), the bits
 * of the level's own per-head kernels: the K/V row converted exactly to f32,
 * dot, scale, softmax, then axpy row after row. Checked over head sizes the
 * AVX2 register kernel takes (multiples of 8: 32-element steps plus 8-element
 * tails), an odd number of query rows (it takes them in pairs) and every KV
 * type. The AVX-512 kernel keeps its own FMA order (see kernels.c). */
static void kernels_attention_equals_the_levels_per_head_kernels(void **state)
{
    (void)state;
    enum { NH = 3, BLK = 16, NBLK = 5, NPOS = 70, NQ = 5, HDMAX = 128 };
    const uint32_t blocks[NBLK] = {3, 0, 4, 1, 2};
    static float q[NQ][NH * HDMAX], out[NQ][NH * HDMAX], want[NH * HDMAX];
    static float scores[2 * NH * NPOS], sc[NPOS], kr[NPOS][HDMAX], vr[NPOS][HDMAX];
    static uint8_t kstore[NBLK * BLK * HDMAX * 4], vstore[NBLK * BLK * HDMAX * 4];
    const int64_t hds[] = {24, 40, 64, 96, 128};
    const enum llorch_kv_type types[3] = {LLORCH_KV_F32, LLORCH_KV_F16, LLORCH_KV_BF16};
    for (int isa = KERNELS_ISA_SCALAR; isa < KERNELS_ISA_AVX512; isa++) {
        const struct kernels *k = kernels_get((enum kernels_isa)isa);
        if (!k) {
            print_message("skipped level %s: this CPU lacks it\n", kernels_isa_name((enum kernels_isa)isa));
            continue;
        }
        for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
            const int64_t hd = hds[hi];
            for (int ti = 0; ti < 3; ti++) {
                const size_t elem = types[ti] == LLORCH_KV_F32 ? 4 : 2;
                for (int p = 0; p < NPOS; p++) {
                    const size_t off = ((size_t)blocks[p / BLK] * BLK + (size_t)(p % BLK)) * (size_t)hd * elem;
                    for (int64_t d = 0; d < hd; d++) {
                        float kv2[2];
                        fill(kv2, 2, 1.0f);
                        if (elem == 4) {
                            memcpy(kstore + off + (size_t)d * 4, &kv2[0], 4);
                            memcpy(vstore + off + (size_t)d * 4, &kv2[1], 4);
                            kr[p][d] = kv2[0], vr[p][d] = kv2[1];
                            continue;
                        }
                        const bool f16 = types[ti] == LLORCH_KV_F16;
                        const uint16_t hk = f16 ? half_f32_to_f16(kv2[0]) : half_f32_to_bf16(kv2[0]);
                        const uint16_t hv = f16 ? half_f32_to_f16(kv2[1]) : half_f32_to_bf16(kv2[1]);
                        memcpy(kstore + off + (size_t)d * 2, &hk, 2);
                        memcpy(vstore + off + (size_t)d * 2, &hv, 2);
                        kr[p][d] = f16 ? half_f16_to_f32(hk) : half_bf16_to_f32(hk);
                        vr[p][d] = f16 ? half_f16_to_f32(hv) : half_bf16_to_f32(hv);
                    }
                }
                for (int t = 0; t < NQ; t++)
                    fill(q[t], NH * hd, 2.0f);
                const struct kernels_kv_view kv = {
                    .k = kstore, .v = vstore, .block_stride = (size_t)BLK * (size_t)hd * elem,
                    .row_bytes = (size_t)hd * elem, .block = BLK, .type = types[ti], .blocks = blocks,
                };
                const int64_t pos0 = NPOS - NQ;
                struct kernels_attn a = {
                    .q = q[0], .q_stride = NH * HDMAX, .out = out[0], .out_stride = NH * HDMAX, .n_q = NQ,
                    .pos0 = pos0, .head_dim = hd, .scale = 0.2f, .kv = &kv, .scores = scores,
                    .n_head = NH,
                };
                kernels_attention(k, &a);
                for (int t = 0; t < NQ; t++) {
                    const int64_t n_kv = pos0 + t + 1;
                    for (int h = 0; h < NH; h++) {
                        for (int64_t p = 0; p < n_kv; p++)
                            sc[p] = k->dot(q[t] + h * hd, kr[p], hd) * 0.2f;
                        k->softmax(sc, n_kv);
                        memset(want + h * hd, 0, (size_t)hd * sizeof(float));
                        for (int64_t p = 0; p < n_kv; p++)
                            k->axpy(want + h * hd, sc[p], vr[p], hd);
                    }
                    if (memcmp(want, out[t], (size_t)(NH * hd) * sizeof(float)) != 0)
                        fail_msg("level %s head_dim %lld kv type %d row %d: not the per-head bits",
                                 k->name, (long long)hd, ti, t);
                }
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(kernels_scalar_is_always_available_and_best_is_not_null),
        cmocka_unit_test(kernels_avxvnni_level_follows_the_cpu_flags),
        cmocka_unit_test(kernels_f16_conversion_rounds_to_nearest_even),
        cmocka_unit_test(kernels_bf16_conversion_rounds_to_nearest_even),
        cmocka_unit_test(kernels_vector_conversions_match_scalar),
        cmocka_unit_test(kernels_dot_and_axpy_match_double_reference),
        cmocka_unit_test(kernels_rmsnorm_matches_double_reference),
        cmocka_unit_test(kernels_layernorm_matches_double_reference),
        cmocka_unit_test(kernels_swiglu_add_scale_match_double_reference),
        cmocka_unit_test(kernels_softmax_is_stable_and_matches_double_reference),
        cmocka_unit_test(kernels_gelu_rounds_input_to_f16_like_ggml),
        cmocka_unit_test(kernels_rope_with_freq_factors_matches_hand_computed_values),
        cmocka_unit_test(kernels_rope_matches_double_reference_over_positions),
        cmocka_unit_test(kernels_round_q8_0_quantises_blocks_of_32),
        cmocka_unit_test(kernels_attention_over_paged_kv_matches_double_reference),
        cmocka_unit_test(kernels_attention_group_matches_each_head_alone),
        cmocka_unit_test(kernels_attention_equals_the_levels_per_head_kernels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
