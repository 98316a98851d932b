/* ggml tensor element types: block sizes and names for every type ggml
 * numbers (so any GGUF file opens and inspects), dequantisation to f32 for
 * the types the engine runs, and the reference quantisers llorch-synth uses.
 *
 * Block layouts (little-endian, ggml-common.h); d/m are f16 unless noted:
 *   Q4_0  32 elems, 18 B: d, qs[16]   x[j] = (lo(qs[j]) - 8) d, x[j+16] = (hi(qs[j]) - 8) d
 *   Q4_1  32 elems, 20 B: d, m, qs[16]  x = q d + m
 *   Q5_0  32 elems, 22 B: d, qh u32, qs[16]  5th bit of x[j] in qh bit j, of x[j+16] in bit j+16; (q - 16) d
 *   Q5_1  32 elems, 24 B: d, m, qh u32, qs[16]  q d + m
 *   Q8_0  32 elems, 34 B: d, qs[32] int8  x = q d
 *   Q4_K 256 elems, 144 B: d, dmin, scales[12] (8 6-bit scale/min pairs), qs[128]
 *   Q5_K 256 elems, 176 B: d, dmin, scales[12], qh[32], qs[128]
 *   Q6_K 256 elems, 210 B: ql[128], qh[64], scales[16] int8, d */
#include "quant.h"

#include "half.h"

#include <math.h>
#include <string.h>

#include "llorch/error.h"
#include "util.h"

/* ---- scalar conversions ---- */

LLORCH_API float quant_f16_to_f32(uint16_t h)
{
    return half_f16_to_f32(h);
}

LLORCH_API uint16_t quant_f32_to_f16(float f)
{
    return half_f32_to_f16(f);
}

LLORCH_API float quant_bf16_to_f32(uint16_t h)
{
    return half_bf16_to_f32(h);
}

LLORCH_API uint16_t quant_f32_to_bf16(float f)
{
    return half_f32_to_bf16(f);
}

/* ---- dequantisation ---- */

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline float f16at(const uint8_t *p)
{
    return quant_f16_to_f32(rd16(p));
}

/* Q4_K/Q5_K: 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min
 * packed into 12 bytes: sub-blocks 0..3 in the low 6 bits of bytes 0..3
 * (scales) and 4..7 (mins); sub-blocks 4..7 take their low 4 bits from
 * bytes 8..11 (scale low nibble, min high nibble) and their top 2 bits from
 * the top bits of bytes 0..3 (scales) and 4..7 (mins). */
static inline void k4_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void dq_q4_0(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 18, y += 32) {
        float d = f16at(b);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((b[2 + j] & 0xf) - 8) * d;
            y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
        }
    }
}

static void dq_q4_1(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 20, y += 32) {
        float d = f16at(b), m = f16at(b + 2);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(b[4 + j] & 0xf) * d + m;
            y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
        }
    }
}

static void dq_q5_0(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 22, y += 32) {
        float d = f16at(b);
        uint32_t qh;
        memcpy(&qh, b + 2, 4);
        const uint8_t *qs = b + 6;
        for (int j = 0; j < 16; j++) {
            int x0 = (qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int x1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = (float)(x0 - 16) * d;
            y[j + 16] = (float)(x1 - 16) * d;
        }
    }
}

static void dq_q5_1(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 24, y += 32) {
        float d = f16at(b), m = f16at(b + 2);
        uint32_t qh;
        memcpy(&qh, b + 4, 4);
        const uint8_t *qs = b + 8;
        for (int j = 0; j < 16; j++) {
            int x0 = (qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int x1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = (float)x0 * d + m;
            y[j + 16] = (float)x1 * d + m;
        }
    }
}

static void dq_q8_0(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 34, y += 32) {
        float d = f16at(b);
        for (int j = 0; j < 32; j++)
            y[j] = (float)(int8_t)b[2 + j] * d;
    }
}

/* Q4_K: d, dmin, scales[12], qs[128]; each 64 elements use 32 bytes of qs:
 * low nibbles are sub-block 2k, high nibbles sub-block 2k+1. */
static void dq_q4_k(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 144) {
        float d = f16at(b), dmin = f16at(b + 2);
        const uint8_t *sc = b + 4, *q = b + 16;
        for (int j = 0; j < 4; j++, q += 32) {
            uint8_t s0, m0, s1, m1;
            k4_scale_min(2 * j, sc, &s0, &m0);
            k4_scale_min(2 * j + 1, sc, &s1, &m1);
            float d1 = d * s0, mm1 = dmin * m0, d2 = d * s1, mm2 = dmin * m1;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)(q[l] & 0xf) - mm1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)(q[l] >> 4) - mm2;
        }
    }
}

/* Q5_K: d, dmin, scales[12], qh[32], qs[128]; as Q4_K plus a fifth bit:
 * element l of sub-block s takes bit s of qh[l]. */
static void dq_q5_k(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 176) {
        float d = f16at(b), dmin = f16at(b + 2);
        const uint8_t *sc = b + 4, *qh = b + 16, *q = b + 48;
        for (int j = 0; j < 4; j++, q += 32) {
            uint8_t s0, m0, s1, m1;
            k4_scale_min(2 * j, sc, &s0, &m0);
            k4_scale_min(2 * j + 1, sc, &s1, &m1);
            float d1 = d * s0, mm1 = dmin * m0, d2 = d * s1, mm2 = dmin * m1;
            uint8_t u1 = (uint8_t)(1u << (2 * j)), u2 = (uint8_t)(2u << (2 * j));
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)((q[l] & 0xf) + (qh[l] & u1 ? 16 : 0)) - mm1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)((q[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - mm2;
        }
    }
}

/* Q6_K: ql[128], qh[64], scales[16] int8, d. Per 128 elements: 64 bytes of
 * ql (low nibbles then high nibbles of two 32-byte halves), 32 bytes of qh
 * (2 bits for each of the four 32-element groups), 8 scales of 16 elements. */
static void dq_q6_k(const uint8_t *b, float *y, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, b += 210) {
        float d = f16at(b + 208);
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int n = 0; n < 2; n++, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

LLORCH_API int quant_dequantize(enum ggml_type t, const void *src, float *dst, uint64_t n)
{
    const uint8_t *s = src;
    const uint64_t blck = ggml_type_block_elems(t);
    if (!blck)
        return LLORCH_EUNSUPPORTED;
    if (n % blck)
        return LLORCH_EINVAL;
    uint64_t nb = n / blck;
    switch (t) {
    case GGML_TYPE_F32:
        memcpy(dst, src, n * 4);
        return 0;
    case GGML_TYPE_F16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = quant_f16_to_f32(rd16(s + 2 * i));
        return 0;
    case GGML_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = quant_bf16_to_f32(rd16(s + 2 * i));
        return 0;
    case GGML_TYPE_Q4_0:
        dq_q4_0(s, dst, nb);
        return 0;
    case GGML_TYPE_Q4_1:
        dq_q4_1(s, dst, nb);
        return 0;
    case GGML_TYPE_Q5_0:
        dq_q5_0(s, dst, nb);
        return 0;
    case GGML_TYPE_Q5_1:
        dq_q5_1(s, dst, nb);
        return 0;
    case GGML_TYPE_Q8_0:
        dq_q8_0(s, dst, nb);
        return 0;
    case GGML_TYPE_Q4_K:
        dq_q4_k(s, dst, nb);
        return 0;
    case GGML_TYPE_Q5_K:
        dq_q5_k(s, dst, nb);
        return 0;
    case GGML_TYPE_Q6_K:
        dq_q6_k(s, dst, nb);
        return 0;
    default:
        return LLORCH_EUNSUPPORTED;
    }
}

LLORCH_API bool quant_can_dequantize(enum ggml_type t)
{
    switch (t) {
    case GGML_TYPE_F32:
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16:
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q8_0:
    case GGML_TYPE_Q4_K:
    case GGML_TYPE_Q5_K:
    case GGML_TYPE_Q6_K:
        return true;
    default:
        return false;
    }
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ggml's quantize_row_q8_0_ref: d = amax / 127 in f32 (stored as f16), the
 * quants round(x / d) with the unrounded f32 d, ties away from zero. */
static void q_q8_0(const float *x, uint8_t *b, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, x += 32, b += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = LLORCH_MAX(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        put16(b, quant_f32_to_f16(d));
        for (int j = 0; j < 32; j++)
            b[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
    }
}

/* ggml's quantize_row_q4_0_ref: d = (value of largest magnitude) / -8, so
 * that element maps to q = 0; q = min(15, trunc(x / d + 8.5)). Byte j holds
 * element j (low nibble) and element j + 16 (high nibble). */
static void q_q4_0(const float *x, uint8_t *b, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, x += 32, b += 18) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = max / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        put16(b, quant_f32_to_f16(d));
        for (int j = 0; j < 16; j++) {
            int x0 = (int8_t)(x[j] * id + 8.5f), x1 = (int8_t)(x[j + 16] * id + 8.5f);
            x0 = LLORCH_MIN(15, x0);
            x1 = LLORCH_MIN(15, x1);
            b[2 + j] = (uint8_t)(x0 | (x1 << 4));
        }
    }
}

LLORCH_API int quant_quantize(enum ggml_type t, const float *src, void *dst, uint64_t n)
{
    uint8_t *d = dst;
    uint64_t blck = ggml_type_block_elems(t);
    if (blck == 0)
        return LLORCH_EUNSUPPORTED;
    if (n % blck)
        return LLORCH_EINVAL;
    switch (t) {
    case GGML_TYPE_F32:
        memcpy(dst, src, n * 4);
        return 0;
    case GGML_TYPE_F16:
        for (uint64_t i = 0; i < n; i++)
            put16(d + 2 * i, quant_f32_to_f16(src[i]));
        return 0;
    case GGML_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++)
            put16(d + 2 * i, quant_f32_to_bf16(src[i]));
        return 0;
    case GGML_TYPE_Q8_0:
        q_q8_0(src, d, n / 32);
        return 0;
    case GGML_TYPE_Q4_0:
        q_q4_0(src, d, n / 32);
        return 0;
    default:
        return LLORCH_EUNSUPPORTED;
    }
}
