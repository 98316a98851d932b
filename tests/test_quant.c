/* Element types: f16/bf16 conversions (exhaustive and against the F16C
 * hardware conversion), every block format on hand-built blocks, ggml's
 * Q8_0/Q4_0 reference quantisers, and round trips against the shared
 * llama-tiny files (quantising the f32 weights reproduces the q8_0, q4_0 and
 * f16 files byte for byte). */
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
    assert_int_equal(quant_quantize(GGML_TYPE_Q4_K, y, b, 256), LLORCH_EUNSUPPORTED);
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
        cmocka_unit_test(quant_q8_0_file_matches_requantised_f32),
        cmocka_unit_test(quant_q4_0_file_matches_requantised_f32),
        cmocka_unit_test(quant_f16_file_matches_converted_f32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
