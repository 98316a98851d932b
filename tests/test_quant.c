/* Element types: f16/bf16 conversions (exhaustive and against the F16C
 * hardware conversion), every block format on hand-built blocks, ggml's
 * reference quantisers (Q8_0/Q4_0 by rule; Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
 * Q6_K by hand-derived blocks, round-trip error and bytes recorded from
 * ggml), and round trips against the shared llama-tiny files (quantising the
 * f32 weights reproduces the q8_0, q4_0 and f16 files byte for byte). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gguf.h"
#include "llorch/error.h"
#include "quant.h"
#include "util.h"

/* the fixed inputs below must be the same floats everywhere */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void quant_sizes_match_ggml(void **state)
{
    (void)state;
    assert_int_equal(ggml_type_block_elems(GGML_TYPE_Q4_0), 32);
    assert_int_equal(ggml_type_block_bytes(GGML_TYPE_Q4_0), 18);
    assert_int_equal(ggml_type_block_bytes(GGML_TYPE_Q4_1), 20);
    assert_int_equal(ggml_type_block_bytes(GGML_TYPE_Q5_0), 22);
    assert_int_equal(ggml_type_block_bytes(GGML_TYPE_Q5_1), 24);
    assert_int_equal(ggml_type_block_bytes(GGML_TYPE_Q8_0), 34);
    assert_int_equal(ggml_type_block_elems(GGML_TYPE_Q4_K), 256);
    assert_int_equal(ggml_type_block_bytes(GGML_TYPE_Q4_K), 144);
    assert_int_equal(ggml_type_block_bytes(GGML_TYPE_Q5_K), 176);
    assert_int_equal(ggml_type_block_bytes(GGML_TYPE_Q6_K), 210);
    assert_int_equal(ggml_type_block_bytes(GGML_TYPE_BF16), 2);
    assert_false(ggml_type_known((enum ggml_type)4));
    assert_false(ggml_type_known((enum ggml_type)1000));
    assert_string_equal(ggml_type_name(GGML_TYPE_Q6_K), "q6_K");
    uint64_t n;
    assert_int_equal(ggml_type_row_bytes(GGML_TYPE_Q8_0, 64, &n), 0);
    assert_int_equal(n, 68);
    assert_int_equal(ggml_type_row_bytes(GGML_TYPE_Q8_0, 65, &n), LLORCH_EINVAL);
    assert_int_equal(ggml_type_row_bytes((enum ggml_type)4, 64, &n), LLORCH_EUNSUPPORTED);
    assert_int_equal(ggml_type_row_bytes(GGML_TYPE_F32, UINT64_MAX / 2, &n), LLORCH_EOVERFLOW);
}

static void quant_f16_known_values_round_to_nearest_even(void **state)
{
    (void)state;
    assert_int_equal(quant_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(quant_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(quant_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(quant_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(quant_f32_to_f16(65519.99f), 0x7bff);
    assert_int_equal(quant_f32_to_f16(65520.0f), 0x7c00); /* halfway to 2^16: even = inf */
    assert_int_equal(quant_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(quant_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);        /* tie -> even */
    assert_int_equal(quant_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);    /* tie -> even */
    assert_int_equal(quant_f32_to_f16(0x1p-24f), 0x0001);               /* smallest subnormal */
    assert_int_equal(quant_f32_to_f16(0x1p-25f), 0x0000);               /* tie -> even (0) */
    assert_int_equal(quant_f32_to_f16(0x1.8p-25f), 0x0001);
    assert_int_equal(quant_f32_to_f16(3 * 0x1p-25f), 0x0002);           /* 1.5 units: tie -> 2 */
    assert_int_equal(quant_f32_to_f16(0x1.ff8p-15f), 0x03ff);           /* largest subnormal */
    assert_int_equal(quant_f32_to_f16(0x1.ffcp-15f), 0x0400);           /* tie -> even: 2^-14 */
    uint16_t nan = quant_f32_to_f16(NAN);
    assert_int_equal(nan & 0x7c00, 0x7c00);
    assert_int_not_equal(nan & 0x3ff, 0);
    assert_true(quant_f16_to_f32(0x3555) == 0x1.554p-2f);
    assert_true(quant_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(quant_f16_to_f32(0x83ff) == -0x1.ff8p-15f);
    assert_true(isinf(quant_f16_to_f32(0xfc00)) && quant_f16_to_f32(0xfc00) < 0);
    assert_true(isnan(quant_f16_to_f32(0x7e00)));
}

static void quant_f16_roundtrips_every_half(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            continue; /* NaNs: checked above */
        uint16_t back = quant_f32_to_f16(quant_f16_to_f32((uint16_t)h));
        if (back != h)
            fail_msg("half 0x%04x came back as 0x%04x", h, back);
    }
}

static void quant_f16_matches_hardware_conversion(void **state)
{
    (void)state;
    /* _Float16 conversions compile to F16C vcvtps2ph (round to nearest even) */
    uint32_t s = 12345;
    for (int i = 0; i < 1000000; i++) {
        s = s * 1664525u + 1013904223u;
        /* exponents around the f16 range: 2^-30 .. 2^20 */
        uint32_t u = (s & 0x807fffffu) | ((97u + (s >> 8) % 51u) << 23);
        float f = from_bits(u);
        _Float16 hw = (_Float16)f;
        uint16_t hb;
        memcpy(&hb, &hw, 2);
        uint16_t sw = quant_f32_to_f16(f);
        if (sw != hb)
            fail_msg("%a: ours 0x%04x, hardware 0x%04x", (double)f, sw, hb);
    }
}

static void quant_bf16_rounds_to_nearest_even_and_keeps_nan(void **state)
{
    (void)state;
    assert_int_equal(quant_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(quant_f32_to_bf16(from_bits(0x3f808000)), 0x3f80); /* tie -> even */
    assert_int_equal(quant_f32_to_bf16(from_bits(0x3f818000)), 0x3f82); /* tie -> even */
    assert_int_equal(quant_f32_to_bf16(from_bits(0x3f808001)), 0x3f81);
    assert_int_equal(quant_f32_to_bf16(from_bits(0x7f7fffff)), 0x7f80); /* FLT_MAX -> inf */
    uint16_t n = quant_f32_to_bf16(from_bits(0x7f800001)); /* NaN with low payload only */
    assert_true(isnan(quant_bf16_to_f32(n)));
    assert_true(quant_bf16_to_f32(0xc040) == -3.0f);
    assert_int_equal(bits(quant_bf16_to_f32(0x1234)), 0x12340000);
}

/* ---- hand-built blocks ---- */

static void quant_q4_0_block_decodes(void **state)
{
    (void)state;
    uint8_t b[18];
    put16(b, 0x3800); /* d = 0.5 */
    for (int j = 0; j < 16; j++)
        b[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    assert_int_equal(quant_dequantize(GGML_TYPE_Q4_0, b, y, 32), 0);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (float)(j - 8) * 0.5f);
        assert_true(y[j + 16] == (float)(7 - j) * 0.5f);
    }
    assert_true(y[0] == -4.0f && y[16] == 3.5f);
}

static void quant_q4_1_block_decodes(void **state)
{
    (void)state;
    uint8_t b[20];
    put16(b, 0x3400);     /* d = 0.25 */
    put16(b + 2, 0xbc00); /* m = -1 */
    for (int j = 0; j < 16; j++)
        b[4 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    assert_int_equal(quant_dequantize(GGML_TYPE_Q4_1, b, y, 32), 0);
    assert_true(y[0] == -1.0f);
    assert_true(y[15] == 2.75f);
    assert_true(y[16] == 2.75f);
    assert_true(y[31] == -1.0f);
}

static void quant_q5_0_block_decodes(void **state)
{
    (void)state;
    uint8_t b[22];
    put16(b, 0x3c00); /* d = 1 */
    uint32_t qh = 0x0000ffff; /* fifth bit set for elements 0..15 only */
    memcpy(b + 2, &qh, 4);
    for (int j = 0; j < 16; j++)
        b[6 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    assert_int_equal(quant_dequantize(GGML_TYPE_Q5_0, b, y, 32), 0);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (float)j);             /* 16 + j - 16 */
        assert_true(y[j + 16] == (float)(-1 - j)); /* 15 - j - 16 */
    }
    qh = 0x00010001; /* element 0 and element 16 */
    memcpy(b + 2, &qh, 4);
    assert_int_equal(quant_dequantize(GGML_TYPE_Q5_0, b, y, 32), 0);
    assert_true(y[0] == 0.0f && y[1] == -15.0f && y[16] == 15.0f && y[17] == -2.0f);
}

static void quant_q5_1_block_decodes(void **state)
{
    (void)state;
    uint8_t b[24];
    put16(b, 0x4000);     /* d = 2 */
    put16(b + 2, 0x3800); /* m = 0.5 */
    uint32_t qh = 0xffff0000;
    memcpy(b + 4, &qh, 4);
    for (int j = 0; j < 16; j++)
        b[8 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    assert_int_equal(quant_dequantize(GGML_TYPE_Q5_1, b, y, 32), 0);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (float)j * 2 + 0.5f);
        assert_true(y[j + 16] == (float)(31 - j) * 2 + 0.5f);
    }
}

static void quant_q8_0_block_decodes(void **state)
{
    (void)state;
    uint8_t b[34];
    put16(b, 0x3000); /* d = 0.125 */
    for (int j = 0; j < 32; j++)
        b[2 + j] = (uint8_t)(int8_t)(j * 8 - 128);
    float y[32];
    assert_int_equal(quant_dequantize(GGML_TYPE_Q8_0, b, y, 32), 0);
    for (int j = 0; j < 32; j++)
        assert_true(y[j] == (float)(j * 8 - 128) * 0.125f);
    assert_true(y[0] == -16.0f);
}

/* The 12-byte scale/min packing of Q4_K/Q5_K, written from the format
 * description: sub-blocks 0..3 keep 6 bits in bytes 0..3 (scale) and 4..7
 * (min); 4..7 keep their low 4 bits in bytes 8..11 (scale low, min high
 * nibble) and their top 2 bits in the top 2 bits of bytes 0..3 / 4..7. */
static void pack_k4_scales(uint8_t out[12], const uint8_t sc[8], const uint8_t mn[8])
{
    memset(out, 0, 12);
    for (int s = 0; s < 4; s++) {
        out[s] = sc[s];
        out[s + 4] = mn[s];
    }
    for (int s = 4; s < 8; s++) {
        out[s + 4] = (uint8_t)((sc[s] & 0xf) | ((mn[s] & 0xf) << 4));
        out[s - 4] |= (uint8_t)((sc[s] >> 4) << 6);
        out[s] |= (uint8_t)((mn[s] >> 4) << 6);
    }
}

static void make_k_scales(uint8_t sc[8], uint8_t mn[8])
{
    for (int s = 0; s < 8; s++) {
        sc[s] = (uint8_t)(10 + 7 * s); /* 10..59: sub-blocks 4..7 use the top bits */
        mn[s] = (uint8_t)(63 - 5 * s);
    }
}

static void quant_q4_k_block_decodes(void **state)
{
    (void)state;
    uint8_t b[144], sc[8], mn[8];
    put16(b, 0x3c00);     /* d = 1 */
    put16(b + 2, 0x3800); /* dmin = 0.5 */
    make_k_scales(sc, mn);
    pack_k4_scales(b + 4, sc, mn);
    for (int i = 0; i < 128; i++)
        b[16 + i] = (uint8_t)((i * 7) & 0xff);
    float y[256];
    assert_int_equal(quant_dequantize(GGML_TYPE_Q4_K, b, y, 256), 0);
    /* element e: sub-block s = e / 32, chunk c = s / 2 uses bytes 32c..32c+31,
     * even sub-blocks the low nibble, odd ones the high nibble */
    for (int e = 0; e < 256; e++) {
        int s = e / 32, l = e % 32, byte = b[16 + 32 * (s / 2) + l];
        int q = s % 2 ? byte >> 4 : byte & 0xf;
        float want = (float)sc[s] * (float)q - 0.5f * (float)mn[s];
        if (y[e] != want)
            fail_msg("element %d: %g, want %g", e, (double)y[e], (double)want);
    }
    assert_true(y[0] == -31.5f);           /* q 0, min 63 * 0.5 */
    assert_true(y[255] == 59.0f * 7 - 14); /* byte 127*7 & 255 = 0x79: high nibble 7, min 28 */
}

static void quant_q5_k_block_decodes(void **state)
{
    (void)state;
    uint8_t b[176], sc[8], mn[8];
    put16(b, 0x3800);     /* d = 0.5 */
    put16(b + 2, 0x3c00); /* dmin = 1 */
    make_k_scales(sc, mn);
    pack_k4_scales(b + 4, sc, mn);
    for (int i = 0; i < 32; i++)
        b[16 + i] = (uint8_t)(i * 37 + 11);
    for (int i = 0; i < 128; i++)
        b[48 + i] = (uint8_t)((i * 13 + 5) & 0xff);
    float y[256];
    assert_int_equal(quant_dequantize(GGML_TYPE_Q5_K, b, y, 256), 0);
    for (int e = 0; e < 256; e++) {
        int s = e / 32, l = e % 32, byte = b[48 + 32 * (s / 2) + l];
        int q = (s % 2 ? byte >> 4 : byte & 0xf) | (((b[16 + l] >> s) & 1) << 4);
        float want = 0.5f * (float)sc[s] * (float)q - (float)mn[s];
        if (y[e] != want)
            fail_msg("element %d: %g, want %g", e, (double)y[e], (double)want);
    }
}

static void quant_q6_k_block_decodes(void **state)
{
    (void)state;
    uint8_t b[210];
    for (int i = 0; i < 128; i++)
        b[i] = (uint8_t)(i * 29 + 3);
    for (int i = 0; i < 64; i++)
        b[128 + i] = (uint8_t)(i * 53 + 17);
    for (int i = 0; i < 16; i++)
        b[192 + i] = (uint8_t)(int8_t)(i * 9 - 70);
    put16(b + 208, 0x3400); /* d = 0.25 */
    float y[256];
    assert_int_equal(quant_dequantize(GGML_TYPE_Q6_K, b, y, 256), 0);
    /* element e: half n = e / 128, group g = (e % 128) / 32, l = e % 32;
     * low 4 bits from ql[64n + 32(g%2) + l] (low nibble for g < 2),
     * high 2 bits from qh[32n + l] bits 2g..2g+1, scale sc[8n + 2g + l/16] */
    for (int e = 0; e < 256; e++) {
        int n = e / 128, g = (e % 128) / 32, l = e % 32;
        int lb = b[64 * n + 32 * (g % 2) + l];
        int lo = g < 2 ? lb & 0xf : lb >> 4;
        int hi = (b[128 + 32 * n + l] >> (2 * g)) & 3;
        int q = (lo | (hi << 4)) - 32;
        int scale = (int8_t)b[192 + 8 * n + 2 * g + l / 16];
        float want = 0.25f * (float)scale * (float)q;
        if (y[e] != want)
            fail_msg("element %d: %g, want %g", e, (double)y[e], (double)want);
    }
}

static void quant_f16_and_bf16_rows_decode(void **state)
{
    (void)state;
    uint8_t b[8];
    put16(b, 0x3c00), put16(b + 2, 0xc000), put16(b + 4, 0x0001), put16(b + 6, 0x7bff);
    float y[4];
    assert_int_equal(quant_dequantize(GGML_TYPE_F16, b, y, 4), 0);
    assert_true(y[0] == 1.0f && y[1] == -2.0f && y[2] == 0x1p-24f && y[3] == 65504.0f);
    put16(b, 0x3f80), put16(b + 2, 0xc040);
    assert_int_equal(quant_dequantize(GGML_TYPE_BF16, b, y, 2), 0);
    assert_true(y[0] == 1.0f && y[1] == -3.0f);
}

static void quant_dequantize_rejects_partial_blocks_and_unsupported_types(void **state)
{
    (void)state;
    uint8_t b[64] = {0};
    float y[64];
    assert_int_equal(quant_dequantize(GGML_TYPE_Q8_0, b, y, 31), LLORCH_EINVAL);
    assert_int_equal(quant_dequantize(GGML_TYPE_Q2_K, b, y, 256), LLORCH_EUNSUPPORTED);
    assert_false(quant_can_dequantize(GGML_TYPE_Q2_K));
    assert_true(quant_can_dequantize(GGML_TYPE_Q6_K));
    assert_int_equal(quant_quantize(GGML_TYPE_Q2_K, y, b, 256), LLORCH_EUNSUPPORTED);
    assert_int_equal(quant_quantize(GGML_TYPE_Q4_K, y, b, 224), LLORCH_EINVAL);
    assert_int_equal(quant_quantize(GGML_TYPE_Q5_1, y, b, 48), LLORCH_EINVAL);
}

static void quant_q8_0_quantiser_matches_ggml_rounding(void **state)
{
    (void)state;
    float x[32];
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j - 16);
    uint8_t b[34];
    assert_int_equal(quant_quantize(GGML_TYPE_Q8_0, x, b, 32), 0);
    /* d = 16/127; q = round(x * 127/16) */
    uint16_t d;
    memcpy(&d, b, 2);
    assert_int_equal(d, quant_f32_to_f16(16.0f / 127.0f));
    assert_int_equal((int8_t)b[2], -127);
    assert_int_equal((int8_t)b[2 + 17], 8);   /* 1 * 7.9375 */
    assert_int_equal((int8_t)b[2 + 18], 16);  /* 2 * 7.9375 = 15.875 */
    assert_int_equal((int8_t)b[2 + 31], 119); /* 15 * 7.9375 = 119.06 */
    for (int j = 0; j < 32; j++) /* within half a step */
        assert_true(fabsf((float)(int8_t)b[2 + j] * 16.0f / 127.0f - x[j]) <= 8.0f / 127.0f + 1e-6f);
    /* ties round away from zero: 0.5 / (1/127) = 63.5 exactly representable */
    float t[32] = {0};
    t[0] = 127.0f;
    t[1] = 63.5f;
    t[2] = -63.5f;
    assert_int_equal(quant_quantize(GGML_TYPE_Q8_0, t, b, 32), 0);
    assert_int_equal((int8_t)b[3], 64);
    assert_int_equal((int8_t)b[4], -64);
    float z[32] = {0};
    assert_int_equal(quant_quantize(GGML_TYPE_Q8_0, z, b, 32), 0);
    for (int j = 0; j < 34; j++)
        assert_int_equal(b[j], 0);
}

static void quant_q4_0_quantiser_matches_ggml_rounding(void **state)
{
    (void)state;
    float x[32];
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j % 16) - 8.0f; /* -8..7 twice: max magnitude -8, d = 1 */
    uint8_t b[18];
    assert_int_equal(quant_quantize(GGML_TYPE_Q4_0, x, b, 32), 0);
    uint16_t d;
    memcpy(&d, b, 2);
    assert_int_equal(d, 0x3c00);
    for (int j = 0; j < 16; j++)
        assert_int_equal(b[2 + j], j | (j << 4));
    /* positive extreme: d = -1, x = 8 maps to 0, x = -8 clamps to 15 */
    x[0] = 8.0f;
    x[16] = -8.0f; /* same magnitude: the first one found wins */
    assert_int_equal(quant_quantize(GGML_TYPE_Q4_0, x, b, 32), 0);
    memcpy(&d, b, 2);
    assert_int_equal(d, 0xbc00);
    assert_int_equal(b[2] & 0xf, 0);
    assert_int_equal(b[2] >> 4, 15);
}

/* ---- the quantisers added for llorch-synth's other classes ---- */

static const enum ggml_type new_types[] = {GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
                                           GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K};

static uint32_t gen_next(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

/* 16 blocks of 256 with a different shape in each eighth: small and large
 * normals, all positive, sparse, zero sub-blocks, growing magnitude, all
 * negative, heavy tails (the same floats wherever IEEE single rounds). */
static void gen_fill(float *x, int n)
{
    uint32_t s = 2024;
    for (int i = 0; i < n; i++) {
        float u = 0;
        for (int k = 0; k < 4; k++)
            u += (float)(gen_next(&s) & 0xffff) * (1.0f / 65536.0f);
        float v = (u - 2.0f) * 1.7320508f; /* about N(0, 1) */
        switch (i / 256 % 8) {
        case 0: x[i] = 0.02f * v; break;
        case 1: x[i] = 3.0f * v; break;
        case 2: x[i] = 0.5f + 0.1f * v; break;
        case 3: x[i] = (i % 29 == 0) ? v : 0.0f; break;
        case 4: x[i] = (i / 32 % 2) ? 0.0f : 0.01f * v; break;
        case 5: x[i] = (float)(i % 16) * 0.0625f * v; break;
        case 6: x[i] = -0.25f + 0.01f * v; break;
        default: x[i] = 1e-3f * v * v * v; break;
        }
    }
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static size_t quantised_bytes(enum ggml_type t, uint64_t n)
{
    uint64_t b;
    assert_int_equal(ggml_type_row_bytes(t, n, &b), 0);
    return (size_t)b;
}

/* The hashes are of the bytes libggml-base's ggml_quantize_chunk (what
 * llama-quantize calls, no imatrix) wrote for gen_fill's input; any change
 * of rounding, search step, clamp or packing changes them. */
static void quant_new_quantisers_write_ggml_bytes_for_a_fixed_input(void **state)
{
    (void)state;
    static const struct {
        enum ggml_type t;
        uint64_t fnv;
    } want[] = {
        {GGML_TYPE_Q4_1, 0xbb58d81c2ff9e9caull}, {GGML_TYPE_Q5_0, 0x61d420d55d628170ull},
        {GGML_TYPE_Q5_1, 0xd7180a3be5415b23ull}, {GGML_TYPE_Q4_K, 0x0a8f39fd19b8ddd0ull},
        {GGML_TYPE_Q5_K, 0x7af21f504043e0f7ull}, {GGML_TYPE_Q6_K, 0x76849f04eba948f4ull},
    };
    enum { N = 16 * 256 };
    float *x = malloc(N * sizeof *x);
    uint8_t *q = malloc(N * 4);
    gen_fill(x, N);
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(want); i++) {
        memset(q, 0xaa, N * 4); /* a byte the quantiser forgets to write shows */
        assert_int_equal(quant_quantize(want[i].t, x, q, N), 0);
        uint64_t h = fnv1a(q, quantised_bytes(want[i].t, N));
        if (h != want[i].fnv)
            fail_msg("%s: bytes hash to 0x%016llx, ggml's to 0x%016llx", ggml_type_name(want[i].t),
                     (unsigned long long)h, (unsigned long long)want[i].fnv);
    }
    free(x);
    free(q);
}

/* Relative RMS error of dequantize(quantize(x)) on unit normals: the bounds
 * sit ~25% above what the reference quantisers give (measured: Q4_1 0.0755,
 * Q5_0 0.0408, Q5_1 0.0361, Q4_K 0.0682, Q5_K 0.0345, Q6_K 0.0170); a wrong
 * scale, a lost rounding offset or a misplaced nibble or high bit lands far
 * above. */
static void quant_new_quantisers_round_trip_within_their_error(void **state)
{
    (void)state;
    static const struct {
        enum ggml_type t;
        double bound;
    } b[] = {{GGML_TYPE_Q4_1, 0.095}, {GGML_TYPE_Q5_0, 0.051}, {GGML_TYPE_Q5_1, 0.045},
             {GGML_TYPE_Q4_K, 0.085}, {GGML_TYPE_Q5_K, 0.043}, {GGML_TYPE_Q6_K, 0.021}};
    enum { N = 64 * 256 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    uint8_t *q = malloc(N * 4);
    uint32_t s = 99;
    for (int i = 0; i < N; i++) {
        float u = 0;
        for (int k = 0; k < 4; k++)
            u += (float)(gen_next(&s) & 0xffff) * (1.0f / 65536.0f);
        x[i] = (u - 2.0f) * 1.7320508f;
    }
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(b); i++) {
        assert_int_equal(quant_quantize(b[i].t, x, q, N), 0);
        assert_int_equal(quant_dequantize(b[i].t, q, y, N), 0);
        double e2 = 0, x2 = 0;
        for (int j = 0; j < N; j++) {
            e2 += ((double)y[j] - x[j]) * ((double)y[j] - x[j]);
            x2 += (double)x[j] * x[j];
        }
        double rel = sqrt(e2 / x2);
        print_message("%s: relative RMS error %.4f (bound %.3f)\n", ggml_type_name(b[i].t), rel,
                      b[i].bound);
        assert_true(rel < b[i].bound);
    }
    free(x);
    free(y);
    free(q);
}

/* Zero blocks: every scale decodes to 0 and every value to +-0, no NaN.
 * Q5_0, like Q4_0, stores d = 0 / -16 = -0 and levels 16 (value 0): its
 * bytes are 0x8000 and a full qh; the others write only zero bytes. */
static void quant_new_quantisers_keep_zero_blocks_zero(void **state)
{
    (void)state;
    float x[256] = {0}, y[256];
    uint8_t q[256];
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(new_types); i++) {
        enum ggml_type t = new_types[i];
        size_t bytes = quantised_bytes(t, 256);
        memset(q, 0xaa, sizeof q);
        assert_int_equal(quant_quantize(t, x, q, 256), 0);
        assert_int_equal(quant_dequantize(t, q, y, 256), 0);
        for (int j = 0; j < 256; j++)
            if (y[j] != 0.0f)
                fail_msg("%s: element %d decodes to %g", ggml_type_name(t), j, (double)y[j]);
        for (size_t k = 0; k < bytes; k++) {
            uint8_t want = 0;
            if (t == GGML_TYPE_Q5_0) { /* per 22-byte block: d 0x8000, qh all ones, qs 0 */
                size_t o = k % 22;
                want = o == 1 ? 0x80 : (o >= 2 && o < 6) ? 0xff : 0;
            }
            if (q[k] != want)
                fail_msg("%s: byte %zu is 0x%02x, want 0x%02x", ggml_type_name(t), k, q[k], want);
        }
    }
    /* values below the all-zero cut-off (1e-15) count as zero for Q6_K */
    for (int j = 0; j < 256; j++)
        x[j] = (j % 2 ? 1e-16f : -1e-16f);
    assert_int_equal(quant_quantize(GGML_TYPE_Q6_K, x, q, 256), 0);
    for (int k = 0; k < 210; k++)
        assert_int_equal(q[k], 0);
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

/* One non-zero element, derived by hand from the reference algorithms. */
static void quant_32_blocks_with_one_value_give_hand_derived_bytes(void **state)
{
    (void)state;
    float x[32] = {0}, y[32];
    uint8_t q[24];
    /* Q4_1: min 0, max 1.5: d = 0.1, m = 0; x[5] -> 15, the rest -> 0 */
    x[5] = 1.5f;
    assert_int_equal(quant_quantize(GGML_TYPE_Q4_1, x, q, 32), 0);
    assert_int_equal(rd16(q), quant_f32_to_f16(0.1f));
    assert_int_equal(rd16(q + 2), 0);
    for (int j = 0; j < 16; j++)
        assert_int_equal(q[4 + j], j == 5 ? 0x0f : 0);
    /* Q5_0: largest magnitude -2 at 20: d = -2 / -16 = 0.125; x[20] -> 0
     * (high nibble of byte 4, qh bit 20 clear), zeros -> 16 (qh bit set) */
    x[5] = 0;
    x[20] = -2.0f;
    assert_int_equal(quant_quantize(GGML_TYPE_Q5_0, x, q, 32), 0);
    assert_int_equal(rd16(q), 0x3000);
    uint32_t qh;
    memcpy(&qh, q + 2, 4);
    assert_int_equal(qh, 0xffefffffu);
    for (int j = 0; j < 16; j++)
        assert_int_equal(q[6 + j], 0);
    assert_int_equal(quant_dequantize(GGML_TYPE_Q5_0, q, y, 32), 0);
    assert_true(y[20] == -2.0f && y[4] == 0.0f && y[19] == 0.0f);
    /* Q5_1: min -2, max 0: d = 2 / 31, m = -2; x[20] -> 0, zeros -> 31
     * (qs 0xff, every qh bit but 20) */
    assert_int_equal(quant_quantize(GGML_TYPE_Q5_1, x, q, 32), 0);
    assert_int_equal(rd16(q), quant_f32_to_f16(2.0f / 31.0f));
    assert_int_equal(rd16(q + 2), 0xc000);
    memcpy(&qh, q + 4, 4);
    assert_int_equal(qh, 0xffefffffu);
    for (int j = 0; j < 16; j++)
        assert_int_equal(q[8 + j], j == 4 ? 0x0f : 0xff);
    /* all equal: Q5_1 keeps the value in m with d = 0 */
    for (int j = 0; j < 32; j++)
        x[j] = 0.75f;
    assert_int_equal(quant_quantize(GGML_TYPE_Q5_1, x, q, 32), 0);
    assert_int_equal(rd16(q), 0);
    assert_int_equal(rd16(q + 2), 0x3a00);
    assert_int_equal(quant_dequantize(GGML_TYPE_Q5_1, q, y, 32), 0);
    for (int j = 0; j < 32; j++)
        assert_true(y[j] == 0.75f);
}

/* A constant positive block: each sub-block's min clamps to 0 and every
 * trial of the search puts all 32 values on one level, so the fit stays at
 * the first guess: scale c / nmax, min 0. Every 6-bit scale is then 63
 * (top bits set in bytes 0..3, low nibbles 0xf in 8..11), every min 0,
 * d = (c / nmax) / 63, dmin = 0, and every level nmax. */
static void quant_k4_k5_constant_block_gives_hand_derived_bytes(void **state)
{
    (void)state;
    float x[256], y[256];
    uint8_t q[176];
    for (int j = 0; j < 256; j++)
        x[j] = 0.5f;
    for (int k = 0; k < 2; k++) {
        enum ggml_type t = k ? GGML_TYPE_Q5_K : GGML_TYPE_Q4_K;
        int nmax = k ? 31 : 15;
        assert_int_equal(quant_quantize(t, x, q, 256), 0);
        assert_int_equal(rd16(q), quant_f32_to_f16(1.0f / (float)(2 * nmax) / 63.0f));
        assert_int_equal(rd16(q + 2), 0);
        for (int j = 0; j < 12; j++)
            assert_int_equal(q[4 + j], j < 4 ? 0xff : j < 8 ? 0x00 : 0x0f);
        for (int j = 16; j < (k ? 176 : 144); j++) /* qh (Q5_K) and qs: all ones */
            assert_int_equal(q[j], 0xff);
        assert_int_equal(quant_dequantize(t, q, y, 256), 0);
        for (int j = 0; j < 256; j++)
            assert_true(fabsf(y[j] - 0.5f) < 0.5f * 0x1p-10f);
    }
}

/* One value 1 at element e, the rest 0. Its group of 16 fits scale -1/32
 * (level -32 for the value); the block's d is 1/4096 so that this group's
 * int8 scale is -128. Zero groups keep level 0 from the fit (their scale
 * is 0, they are not re-quantised); the value's own group has level 32
 * for its zeros. Checks where ql's nibbles and qh's pairs go. */
static void quant_q6_k_single_value_gives_hand_derived_bytes(void **state)
{
    (void)state;
    static const int elems[] = {0, 77, 200};
    for (size_t k = 0; k < LLORCH_ARRAY_SIZE(elems); k++) {
        const int e = elems[k], g = e / 16;
        float x[256] = {0}, y[256];
        uint8_t q[210], want[210] = {0};
        x[e] = 1.0f;
        assert_int_equal(quant_quantize(GGML_TYPE_Q6_K, x, q, 256), 0);
        /* levels: 32 in group g but 0 at e, 0 elsewhere; lay them out */
        for (int i = 16 * g; i < 16 * g + 16; i++) {
            int lv = i == e ? 0 : 32, n = i / 128, r = i % 128, quarter = r / 32, l = r % 32;
            uint8_t *ql = want + 64 * n + 32 * (quarter % 2) + l;
            *ql |= (uint8_t)((lv & 0xf) << (quarter < 2 ? 0 : 4));
            want[128 + 32 * n + l] |= (uint8_t)((lv >> 4) << (2 * quarter));
        }
        want[192 + g] = 0x80;
        want[208] = 0x00, want[209] = 0x0c; /* f16 2^-12 */
        assert_memory_equal(q, want, 210);
        assert_int_equal(quant_dequantize(GGML_TYPE_Q6_K, q, y, 256), 0);
        for (int i = 0; i < 256; i++)
            assert_true(y[i] == (i == e ? 1.0f : 0.0f));
    }
}

/* ---- shared files ---- */

static void shared_path(char *out, size_t n, const char *rel)
{
    const char *dir = getenv("LLORCH_SHARED");
    snprintf(out, n, "%s/%s", dir ? dir : "../shared", rel);
}

static struct gguf_file *open_shared(const char *rel)
{
    char path[512], err[512];
    shared_path(path, sizeof path, rel);
    struct gguf_file *f;
    if (gguf_open(&f, path, err, sizeof err))
        fail_msg("%s", err);
    return f;
}

/* Every tensor of `rel` against llama-tiny-f32: quantising the f32 values
 * with our quantiser gives the file's bytes, and dequantised values are
 * within the format's error. Returns how many tensors had `want_type`. */
static int check_against_f32(const char *rel, enum ggml_type want_type)
{
    struct gguf_file *ref = open_shared("models/llama-tiny-f32.gguf");
    struct gguf_file *q = open_shared(rel);
    int n_typed = 0;
    assert_int_equal(gguf_tensor_count(q), gguf_tensor_count(ref));
    for (uint64_t i = 0; i < gguf_tensor_count(q); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(q, i);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        const struct gguf_tensor *r = gguf_tensor_find(ref, name);
        assert_non_null(r);
        assert_int_equal(r->type, GGML_TYPE_F32);
        assert_int_equal(r->n_elements, t->n_elements);
        uint64_t n = t->n_elements;
        float *x = malloc(n * 4), *y = malloc(n * 4);
        uint8_t *bytes = malloc(t->nbytes);
        memcpy(x, r->data, n * 4);
        assert_int_equal(quant_quantize(t->type, x, bytes, n), 0);
        if (memcmp(bytes, t->data, t->nbytes))
            fail_msg("%s %s: requantised bytes differ", rel, name);
        assert_int_equal(quant_dequantize(t->type, t->data, y, n), 0);
        uint64_t blck = ggml_type_block_elems(t->type);
        uint64_t bb = blck > 1 ? blck : 1;
        for (uint64_t b0 = 0; b0 < n; b0 += bb) {
            float amax = 0;
            for (uint64_t j = b0; j < b0 + bb; j++)
                amax = fmaxf(amax, fabsf(x[j]));
            for (uint64_t j = b0; j < b0 + bb; j++) {
                float tol;
                switch (t->type) {
                case GGML_TYPE_F32:
                    tol = 0;
                    break;
                case GGML_TYPE_F16:
                    tol = fabsf(x[j]) * 0x1p-11f + 0x1p-25f; /* half an ulp */
                    break;
                case GGML_TYPE_Q8_0:
                    /* half a step, plus up to 127 times d's f16 rounding (2^-11 relative) */
                    tol = amax / 127 * (0.5f + 127 * 0x1p-11f) * 1.001f + 1e-9f;
                    break;
                default: /* Q4_0: a step of amax/8, the far end may clamp a whole step */
                    tol = amax / 8 * (1 + 8 * 0x1p-11f) * 1.001f + 1e-9f;
                    break;
                }
                if (!(fabsf(y[j] - x[j]) <= tol))
                    fail_msg("%s %s[%llu]: %g vs f32 %g (tol %g)", rel, name,
                             (unsigned long long)j, (double)y[j], (double)x[j], (double)tol);
            }
        }
        if (t->type == want_type)
            n_typed++;
        free(x);
        free(y);
        free(bytes);
    }
    gguf_close(q);
    gguf_close(ref);
    return n_typed;
}

static void quant_q8_0_file_matches_requantised_f32(void **state)
{
    (void)state;
    assert_int_equal(check_against_f32("models/llama-tiny-q8_0.gguf", GGML_TYPE_Q8_0), 14);
}

static void quant_q4_0_file_matches_requantised_f32(void **state)
{
    (void)state;
    assert_int_equal(check_against_f32("models/llama-tiny-q4_0.gguf", GGML_TYPE_Q4_0), 14);
}

static void quant_f16_file_matches_converted_f32(void **state)
{
    (void)state;
    assert_int_equal(check_against_f32("models/llama-tiny-f16.gguf", GGML_TYPE_F16), 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(quant_sizes_match_ggml),
        cmocka_unit_test(quant_f16_known_values_round_to_nearest_even),
        cmocka_unit_test(quant_f16_roundtrips_every_half),
        cmocka_unit_test(quant_f16_matches_hardware_conversion),
        cmocka_unit_test(quant_bf16_rounds_to_nearest_even_and_keeps_nan),
        cmocka_unit_test(quant_q4_0_block_decodes),
        cmocka_unit_test(quant_q4_1_block_decodes),
        cmocka_unit_test(quant_q5_0_block_decodes),
        cmocka_unit_test(quant_q5_1_block_decodes),
        cmocka_unit_test(quant_q8_0_block_decodes),
        cmocka_unit_test(quant_q4_k_block_decodes),
        cmocka_unit_test(quant_q5_k_block_decodes),
        cmocka_unit_test(quant_q6_k_block_decodes),
        cmocka_unit_test(quant_f16_and_bf16_rows_decode),
        cmocka_unit_test(quant_dequantize_rejects_partial_blocks_and_unsupported_types),
        cmocka_unit_test(quant_q8_0_quantiser_matches_ggml_rounding),
        cmocka_unit_test(quant_q4_0_quantiser_matches_ggml_rounding),
        cmocka_unit_test(quant_new_quantisers_write_ggml_bytes_for_a_fixed_input),
        cmocka_unit_test(quant_new_quantisers_round_trip_within_their_error),
        cmocka_unit_test(quant_new_quantisers_keep_zero_blocks_zero),
        cmocka_unit_test(quant_32_blocks_with_one_value_give_hand_derived_bytes),
        cmocka_unit_test(quant_k4_k5_constant_block_gives_hand_derived_bytes),
        cmocka_unit_test(quant_q6_k_single_value_gives_hand_derived_bytes),
        cmocka_unit_test(quant_q8_0_file_matches_requantised_f32),
        cmocka_unit_test(quant_q4_0_file_matches_requantised_f32),
        cmocka_unit_test(quant_f16_file_matches_converted_f32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
