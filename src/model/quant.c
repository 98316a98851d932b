/* ggml tensor element types: block sizes and names for every type ggml
 * numbers (so any GGUF file opens and inspects), dequantisation to f32 for
 * the types the engine runs, and quantisers for the same types that write the
 * bytes ggml's reference quantisers (llama-quantize without an imatrix) write;
 * llorch-synth and the round-trip tests use them.
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

#include <float.h>
#include <math.h>
#include <string.h>

#include "llorch/error.h"
#include "util.h"

/* The quantisers reproduce ggml's bytes only if every float operation is
 * rounded on its own, as in ggml-base (built without FMA). GCC keeps
 * -ffp-contract=off in ISO C mode (c_std=c17); clang needs telling. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

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

/* The value of largest magnitude of a 32-block, signed (the first of equal
 * magnitudes), as ggml's 4- and 5-bit quantisers pick it. */
static float signed_amax32(const float *x)
{
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

/* Smallest and largest value of a 32-block (Q4_1, Q5_1). */
static void min_max32(const float *x, float *min, float *max)
{
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
        lo = x[j] < lo ? x[j] : lo;
        hi = x[j] > hi ? x[j] : hi;
    }
    *min = lo;
    *max = hi;
}

/* ggml's quantize_row_q4_0_ref: d = (value of largest magnitude) / -8, so
 * that element maps to q = 0; q = min(15, trunc(x / d + 8.5)). Byte j holds
 * element j (low nibble) and element j + 16 (high nibble). */
static void q_q4_0(const float *x, uint8_t *b, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, x += 32, b += 18) {
        float d = signed_amax32(x) / -8.0f;
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

/* ggml's quantize_row_q4_1_ref: d = (max - min) / 15, m = min, both f16;
 * q = min(15, trunc((x - min) / d + 0.5)) with the unrounded f32 d and min. */
static void q_q4_1(const float *x, uint8_t *b, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, x += 32, b += 20) {
        float min, max;
        min_max32(x, &min, &max);
        float d = (max - min) / 15.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        put16(b, quant_f32_to_f16(d));
        put16(b + 2, quant_f32_to_f16(min));
        for (int j = 0; j < 16; j++) {
            int x0 = (int)((x[j] - min) * id + 0.5f), x1 = (int)((x[j + 16] - min) * id + 0.5f);
            b[4 + j] = (uint8_t)(LLORCH_MIN(15, x0) | (LLORCH_MIN(15, x1) << 4));
        }
    }
}

/* ggml's quantize_row_q5_0_ref: as Q4_0 with 32 levels, d = (value of
 * largest magnitude) / -16, q = min(31, trunc(x / d + 16.5)); bit 4 of
 * element j goes to bit j of qh. */
static void q_q5_0(const float *x, uint8_t *b, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, x += 32, b += 22) {
        float d = signed_amax32(x) / -16.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        put16(b, quant_f32_to_f16(d));
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int x0 = LLORCH_MIN(31, (int)(x[j] * id + 16.5f));
            int x1 = LLORCH_MIN(31, (int)(x[j + 16] * id + 16.5f));
            b[6 + j] = (uint8_t)((x0 & 0xf) | ((x1 & 0xf) << 4));
            qh |= (uint32_t)(x0 >> 4) << j | (uint32_t)(x1 >> 4) << (j + 16);
        }
        memcpy(b + 2, &qh, 4);
    }
}

/* ggml's quantize_row_q5_1_ref: as Q4_1 with 31 steps, the fifth bits in qh
 * as for Q5_0. */
static void q_q5_1(const float *x, uint8_t *b, uint64_t nb)
{
    for (uint64_t i = 0; i < nb; i++, x += 32, b += 24) {
        float min, max;
        min_max32(x, &min, &max);
        float d = (max - min) / 31.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        put16(b, quant_f32_to_f16(d));
        put16(b + 2, quant_f32_to_f16(min));
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            /* (x - min) / d <= 31 up to rounding: the clamp never acts */
            int x0 = LLORCH_MIN(31, (int)((x[j] - min) * id + 0.5f));
            int x1 = LLORCH_MIN(31, (int)((x[j + 16] - min) * id + 0.5f));
            b[8 + j] = (uint8_t)((x0 & 0xf) | ((x1 & 0xf) << 4));
            qh |= (uint32_t)(x0 >> 4) << j | (uint32_t)(x1 >> 4) << (j + 16);
        }
        memcpy(b + 4, &qh, 4);
    }
}

/* ---- K-quant helpers (ggml's nearest_int, make_qkx2_quants, make_qx_quants) ---- */

/* Groups whose largest magnitude is below this count as all zero. */
#define LLORCH_GROUP_MAX_EPS 1e-15f

/* Round to nearest, ties to even, for |x| < 2^22: adding 1.5 * 2^23 puts
 * the integer in the low mantissa bits. ggml rounds this way, not roundf's
 * ties-away, and the bytes must agree. */
static inline int nearest_int(float x)
{
    float v = x + 12582912.0f;
    int32_t u;
    memcpy(&u, &v, 4);
    return (u & 0x007fffff) - 0x00400000;
}

/* Fits x[i] ~ scale * L[i] - the_min with L in 0..nmax, min <= 0, minimising
 * the weighted squared error: a first guess from the range, then nstep + 1
 * trial scales (nmax + rmin + k rdelta steps over the range), each refined
 * by weighted least squares and kept if its error is lower. Returns scale
 * and writes the_min >= 0 (make_qkx2_quants with use_mad false). */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *the_min, float rmin, float rdelta, int nstep)
{
    uint8_t trial[32];
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        min = x[i] < min ? x[i] : min;
        max = x[i] > max ? x[i] : max;
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)LLORCH_MAX(0, LLORCH_MIN(nmax, l));
        float diff = scale * (float)L[i] + min - x[i];
        best += w[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = LLORCH_MAX(0, LLORCH_MIN(nmax, nearest_int(iscale * (x[i] - min))));
            trial[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l;
            sum_xl += w[i] * (float)l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (!(D > 0))
            continue;
        float s = (sum_w * sum_xl - sum_x * sum_l) / D;
        float m = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (m > 0) {
            m = 0;
            s = sum_xl / sum_l2;
        }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float diff = s * (float)trial[i] + m - x[i];
            err += w[i] * (diff * diff);
        }
        if (err < best) {
            memcpy(L, trial, (size_t)n);
            best = err;
            scale = s;
            min = m;
        }
    }
    *the_min = -min;
    return scale;
}

/* One trial of fit_signed_scale: levels for x / (-(nmax + delta) / max),
 * with sums weighted by x^2 for the least-squares scale. */
static void signed_levels(int n, int nmax, const float *x, float iscale, int8_t *L, float *sumlx,
                          float *suml2)
{
    *sumlx = *suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = LLORCH_MAX(-nmax, LLORCH_MIN(nmax - 1, nearest_int(iscale * x[i])));
        if (L)
            L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        *sumlx += w * x[i] * (float)l;
        *suml2 += w * (float)l * (float)l;
    }
}

/* Fits x[i] ~ scale * (L[i] - nmax) with L in 0..2 nmax - 1, the value of
 * largest magnitude at the end of the range, trying 18 scales around it
 * and keeping the best x^2-weighted least-squares fit (make_qx_quants with
 * rmse_type 1 and no importance weights). */
static float fit_signed_scale(int n, int nmax, const float *x, int8_t *L)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    }
    if (amax < LLORCH_GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)-nmax / max, sumlx, suml2;
    signed_levels(n, nmax, x, iscale, L, &sumlx, &suml2);
    float scale = suml2 != 0 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        signed_levels(n, nmax, x, iscale, NULL, &sumlx, &suml2);
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            signed_levels(n, nmax, x, iscale, L, &sumlx, &suml2);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q4_K/Q5_K scales: the 8 sub-block scales and mins relative to their
 * largest, as 6-bit integers packed as k4_scale_min reads them; d and dmin
 * the f16 steps. Then every element is re-quantised against the rounded
 * scales (sub-blocks whose scale rounds to 0 keep their first levels). */
static void k_scales_and_levels(const float *x, uint8_t *b, uint8_t L[256], int nmax, float rmin,
                                int nstep)
{
    float scales[8], mins[8], w[32], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += xs[l] * xs[l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) /* weight: how far from zero, plus the group's RMS */
            w[l] = av_x + fabsf(xs[l]);
        scales[j] = fit_scale_min(32, nmax, xs, w, L + 32 * j, &mins[j], rmin, 0.1f, nstep);
        max_scale = scales[j] > max_scale ? scales[j] : max_scale;
        max_min = mins[j] > max_min ? mins[j] : max_min;
    }
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    uint8_t *sc = b + 4;
    for (int j = 0; j < 8; j++) {
        /* ggml stores nearest_int in a uint8_t before clamping: keep its wrap */
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = LLORCH_MIN(63, ls);
        lm = LLORCH_MIN(63, lm);
        if (j < 4) {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (uint8_t)((ls & 0xf) | ((lm & 0xf) << 4));
            sc[j - 4] |= (uint8_t)((ls >> 4) << 6);
            sc[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    put16(b, quant_f32_to_f16(max_scale / 63.0f));
    put16(b + 2, quant_f32_to_f16(max_min / 63.0f));
    float d = f16at(b), dmin = f16at(b + 2);
    for (int j = 0; j < 8; j++) {
        uint8_t s, m;
        k4_scale_min(j, sc, &s, &m);
        float ds = d * (float)s;
        if (ds == 0.0f)
            continue;
        float dm = dmin * (float)m;
        for (int l = 0; l < 32; l++) {
            int q = nearest_int((x[32 * j + l] + dm) / ds);
            L[32 * j + l] = (uint8_t)LLORCH_MAX(0, LLORCH_MIN(nmax, q));
        }
    }
}

/* ggml's quantize_row_q4_K_ref (no importance matrix). */
static void q_q4_k(const float *x, uint8_t *b, uint64_t nb)
{
    uint8_t L[256];
    for (uint64_t i = 0; i < nb; i++, x += 256, b += 144) {
        k_scales_and_levels(x, b, L, 15, -1.0f, 20);
        uint8_t *q = b + 16;
        for (int j = 0; j < 256; j += 64, q += 32) /* sub-block 2k low nibbles, 2k+1 high */
            for (int l = 0; l < 32; l++)
                q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

/* ggml's quantize_row_q5_K_ref (no importance matrix). */
static void q_q5_k(const float *x, uint8_t *b, uint64_t nb)
{
    uint8_t L[256];
    for (uint64_t i = 0; i < nb; i++, x += 256, b += 176) {
        k_scales_and_levels(x, b, L, 31, -0.5f, 15);
        uint8_t *qh = b + 16, *q = b + 48;
        memset(qh, 0, 32);
        for (int j = 0; j < 256; j += 64, q += 32) {
            int s = j / 32; /* sub-blocks s and s + 1: bits s and s + 1 of qh */
            for (int l = 0; l < 32; l++) {
                int l1 = L[j + l], l2 = L[j + l + 32];
                qh[l] |= (uint8_t)(((l1 >> 4) << s) | ((l2 >> 4) << (s + 1)));
                q[l] = (uint8_t)((l1 & 0xf) | ((l2 & 0xf) << 4));
            }
        }
    }
}

/* ggml's quantize_row_q6_K_ref: 16 groups of 16 fitted by fit_signed_scale,
 * group scales as int8 relative to the largest (which becomes -128), the
 * elements then re-quantised against the rounded scales. */
static void q_q6_k(const float *x, uint8_t *b, uint64_t nb)
{
    int8_t L[256];
    for (uint64_t i = 0; i < nb; i++, x += 256, b += 210) {
        float scales[16], max_scale = 0, max_abs = 0;
        for (int g = 0; g < 16; g++) {
            scales[g] = fit_signed_scale(16, 32, x + 16 * g, L + 16 * g);
            if (fabsf(scales[g]) > max_abs) {
                max_abs = fabsf(scales[g]);
                max_scale = scales[g];
            }
        }
        if (max_abs < LLORCH_GROUP_MAX_EPS) {
            memset(b, 0, 210);
            continue;
        }
        float iscale = -128.0f / max_scale;
        put16(b + 208, quant_f32_to_f16(1 / iscale));
        int8_t *sc = (int8_t *)(b + 192);
        for (int g = 0; g < 16; g++)
            sc[g] = (int8_t)LLORCH_MIN(127, nearest_int(iscale * scales[g]));
        float d = f16at(b + 208);
        for (int g = 0; g < 16; g++) {
            float dg = d * (float)sc[g];
            if (dg == 0.0f)
                continue;
            for (int l = 0; l < 16; l++) {
                int q = nearest_int(x[16 * g + l] / dg);
                L[16 * g + l] = (int8_t)(LLORCH_MAX(-32, LLORCH_MIN(31, q)) + 32);
            }
        }
        /* per 128 elements: ql[l] = lo(q[l]) | lo(q[l+64]) << 4,
         * ql[l+32] = lo(q[l+32]) | lo(q[l+96]) << 4, qh[l] the four top pairs */
        uint8_t *ql = b, *qh = b + 128;
        for (int j = 0; j < 256; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                uint8_t q1 = (uint8_t)L[j + l], q2 = (uint8_t)L[j + l + 32];
                uint8_t q3 = (uint8_t)L[j + l + 64], q4 = (uint8_t)L[j + l + 96];
                ql[l] = (uint8_t)((q1 & 0xf) | ((q3 & 0xf) << 4));
                ql[l + 32] = (uint8_t)((q2 & 0xf) | ((q4 & 0xf) << 4));
                qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) |
                                  ((q4 >> 4) << 6));
            }
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
    case GGML_TYPE_Q4_1:
        q_q4_1(src, d, n / 32);
        return 0;
    case GGML_TYPE_Q5_0:
        q_q5_0(src, d, n / 32);
        return 0;
    case GGML_TYPE_Q5_1:
        q_q5_1(src, d, n / 32);
        return 0;
    case GGML_TYPE_Q4_K:
        q_q4_k(src, d, n / 256);
        return 0;
    case GGML_TYPE_Q5_K:
        q_q5_k(src, d, n / 256);
        return 0;
    case GGML_TYPE_Q6_K:
        q_q6_k(src, d, n / 256);
        return 0;
    default:
        return LLORCH_EUNSUPPORTED;
    }
}
