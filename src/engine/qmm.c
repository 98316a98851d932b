/* Matmuls over weights in their GGUF block layout (see qmm.h for the
 * arithmetic every level must reproduce bit for bit).
 *
 * Block layouts read here (all little-endian, f16 scales):
 *   Q8_0 34 B: d, q[32] int8                    value = d q
 *   Q4_0 18 B: d, qs[16]: byte j = q_j | q_{j+16} << 4        d (q - 8)
 *   Q4_1 20 B: d, m, qs[16] as Q4_0                          d q + m
 *   Q5_0 22 B: d, qh (bit e = 5th bit of element e), qs[16]  d (q - 16)
 *   Q5_1 24 B: d, m, qh, qs[16]                              d q + m
 *   Q4_K 144 B per 256: d, dmin, scales[12] (6-bit scale and min of 8
 *        sub-blocks of 32), qs[128]: 32 bytes per 64 elements, low nibbles
 *        sub-block 2j, high nibbles 2j+1;   value = d sc q - dmin m
 *   Q5_K 176 B: d, dmin, scales[12], qh[32] (bit s of qh[l]: 5th bit of
 *        element l of sub-block s), qs[128]
 *   Q6_K 210 B: ql[128], qh[64], scales[16] int8 (one per 16), d;
 *        value = d sc (q - 32), q 6 bits.
 *
 * Work split: pool tasks take ranges of output rows; each walks its rows
 * for tiles of activation rows, so a weight row is read from memory once per
 * call and reused from cache for every activation row. */
#include "qmm.h"

#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "half.h"
#include "llorch/error.h"
#include "quant.h"
#include "util.h"

#define QMM_ALIGN 64
#define QMM_ROW_GRAIN 16  /* output rows per task, at least */
#define QMM_M_TILE 16     /* activation rows per pass over a weight row chunk */
#define QMM_N_CHUNK 64    /* weight rows kept in cache across every activation tile */
/* Bytes ahead of a weight row's reads that its blocks are prefetched: one
 * core's stream from memory falls short of the read bandwidth without it.
 * On the AVX2 EPYC (2 threads, batch-1 decode, alternated runs) 1 KiB gave
 * +10 % over none, 3 KiB beat 1 KiB for every type, and 12 KiB beat 3 KiB
 * (Q4_K_M 26.0 vs 23.0 tok/s, Q8_0 18.0 vs 16.6, means of 4 and 2 runs);
 * 24 KiB and an L2 hint were no better. */
#define QMM_PREFETCH 12288

/* How activations are rounded for a weight type. */
enum qmm_fmt {
    QMM_FMT_F32,   /* as they are */
    QMM_FMT_F16,   /* rounded to f16 and kept so (the level's own conversion) */
    QMM_FMT_BF16,  /* rounded to bf16, kept as f32 */
    QMM_FMT_Q8_0,  /* blocks of 32: q int8, d and s = d_unrounded * sum(q), both via f16 */
    QMM_FMT_Q8_K,  /* blocks of 256: q int8, d f32, bs = sums of 16 */
    QMM_FMT_COUNT_,
};

/* One activation row in its format. */
struct qmm_act {
    const uint8_t *f; /* float types: the row as qmm_act_type(weight type) */
    const int8_t *q;
    const float *d;
    const float *s;
    const int16_t *bs;
    const int32_t *sum; /* Q8_0 format: sum of each block's q */
};


struct qmm_type_info {
    enum ggml_type type;
    enum qmm_fmt fmt;
    int block;    /* elements per block */
    int bytes;    /* bytes per block */
    const char *name;
};

static const struct qmm_type_info qmm_types[] = {
    {GGML_TYPE_F32, QMM_FMT_F32, 1, 4, "f32"},      {GGML_TYPE_F16, QMM_FMT_F16, 1, 2, "f16"},
    {GGML_TYPE_BF16, QMM_FMT_BF16, 1, 2, "bf16"},   {GGML_TYPE_Q8_0, QMM_FMT_Q8_0, 32, 34, "q8_0"},
    {GGML_TYPE_Q4_0, QMM_FMT_Q8_0, 32, 18, "q4_0"}, {GGML_TYPE_Q4_1, QMM_FMT_Q8_0, 32, 20, "q4_1"},
    {GGML_TYPE_Q5_0, QMM_FMT_Q8_0, 32, 22, "q5_0"}, {GGML_TYPE_Q5_1, QMM_FMT_Q8_0, 32, 24, "q5_1"},
    {GGML_TYPE_Q4_K, QMM_FMT_Q8_K, 256, 144, "q4_K"}, {GGML_TYPE_Q5_K, QMM_FMT_Q8_K, 256, 176, "q5_K"},
    {GGML_TYPE_Q6_K, QMM_FMT_Q8_K, 256, 210, "q6_K"},
};
#define QMM_N_TYPES ((int)LLORCH_ARRAY_SIZE(qmm_types))

static const struct qmm_type_info *qmm_info(enum ggml_type t)
{
    for (int i = 0; i < QMM_N_TYPES; i++)
        if (qmm_types[i].type == t)
            return &qmm_types[i];
    return NULL;
}

static int qmm_type_index(enum ggml_type t)
{
    const struct qmm_type_info *ti = qmm_info(t);
    return ti ? (int)(ti - qmm_types) : -1;
}

LLORCH_API bool qmm_type_supported(enum ggml_type t)
{
    return qmm_info(t) != NULL;
}

/* ---- shared scalar pieces ---------------------------------------------- */

static inline float qmm_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return half_f16_to_f32(h);
}

static inline float qmm_hsum8(const float *a)
{
    const float t0 = a[0] + a[4], t1 = a[1] + a[5], t2 = a[2] + a[6], t3 = a[3] + a[7];
    return (t0 + t2) + (t1 + t3);
}

/* Q4_K/Q5_K 6-bit scale and min of sub-block j (see quant.c's k4_scale_min). */
static inline void qmm_k4_scale_min(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* ---- scalar reference dots ---------------------------------------------- */

/* The element type of a float type's activations: F16 weights take f16
 * (half the cache bytes of f32, converted as the weights are); BF16 ones
 * take the bf16-rounded values as f32 (its conversion costs two integer ops
 * per vector, more than the load it saves). */
static inline enum ggml_type qmm_act_type(enum ggml_type t)
{
    return t == GGML_TYPE_F16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
}

/* Element i of a float-type row as f32. */
static inline float float_value(enum ggml_type t, const uint8_t *w, int64_t i)
{
    switch (t) {
    case GGML_TYPE_F16:
        return qmm_f16(w + 2 * i);
    case GGML_TYPE_BF16: {
        uint16_t h;
        memcpy(&h, w + 2 * i, 2);
        return half_bf16_to_f32(h);
    }
    default: {
        float f;
        memcpy(&f, w + 4 * i, 4);
        return f;
    }
    }
}

/* 8 lanes, the tail padded with zeros (see qmm.h). */
static inline float float_dot_scalar(enum ggml_type t, const uint8_t *w, const struct qmm_act *a,
                                     int64_t n)
{
    float acc[8] = {0};
    for (int64_t i = 0; i < n; i += 8)
        for (int l = 0; l < 8; l++) {
            const bool in = i + l < n;
            acc[l] = fmaf(in ? float_value(t, w, i + l) : 0.0f, in ? float_value(qmm_act_type(t), a->f, i + l) : 0.0f,
                          acc[l]);
        }
    return qmm_hsum8(acc);
}

static float dot_f32_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    return float_dot_scalar(GGML_TYPE_F32, w, a, n);
}
static float dot_f16_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    return float_dot_scalar(GGML_TYPE_F16, w, a, n);
}
static float dot_bf16_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    return float_dot_scalar(GGML_TYPE_BF16, w, a, n);
}

/* 32-element types: weight values q[32] (signed, offsets applied) of block b. */
static inline void q32_values(enum ggml_type t, const uint8_t *blk, int q[32])
{
    switch (t) {
    case GGML_TYPE_Q8_0:
        for (int j = 0; j < 32; j++)
            q[j] = (int8_t)blk[2 + j];
        break;
    case GGML_TYPE_Q4_0:
        for (int j = 0; j < 16; j++) {
            q[j] = (blk[2 + j] & 0xf) - 8;
            q[j + 16] = (blk[2 + j] >> 4) - 8;
        }
        break;
    case GGML_TYPE_Q4_1:
        for (int j = 0; j < 16; j++) {
            q[j] = blk[4 + j] & 0xf;
            q[j + 16] = blk[4 + j] >> 4;
        }
        break;
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1: {
        const int off = t == GGML_TYPE_Q5_0 ? 2 : 4;
        uint32_t qh;
        memcpy(&qh, blk + off, 4);
        const uint8_t *qs = blk + off + 4;
        for (int j = 0; j < 16; j++) {
            q[j] = (qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            q[j + 16] = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        }
        if (t == GGML_TYPE_Q5_0)
            for (int j = 0; j < 32; j++)
                q[j] -= 16;
        break;
    }
    default:
        break;
    }
}

/* 32-element types: each block's sum exact in integers, then one fma chain
 * per output, and one more for Q4_1/Q5_1's m (see qmm.h). */
static inline float q32_dot_scalar(enum ggml_type t, const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    const int bytes = qmm_info(t)->bytes;
    const bool has_min = t == GGML_TYPE_Q4_1 || t == GGML_TYPE_Q5_1;
    float acc = 0.0f, accm = 0.0f;
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = w + b * bytes;
        int q[32];
        q32_values(t, blk, q);
        const int8_t *x = a->q + 32 * b;
        int32_t p = 0;
        for (int j = 0; j < 32; j++)
            p += q[j] * x[j];
        acc = fmaf(qmm_f16(blk) * a->d[b], (float)p, acc);
        if (has_min)
            accm = fmaf(qmm_f16(blk + 2), a->s[b], accm);
    }
    return has_min ? acc + accm : acc;
}

static float dot_q8_0_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    return q32_dot_scalar(GGML_TYPE_Q8_0, w, a, n);
}
static float dot_q4_0_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    return q32_dot_scalar(GGML_TYPE_Q4_0, w, a, n);
}
static float dot_q4_1_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    return q32_dot_scalar(GGML_TYPE_Q4_1, w, a, n);
}
static float dot_q5_0_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    return q32_dot_scalar(GGML_TYPE_Q5_0, w, a, n);
}
static float dot_q5_1_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    return q32_dot_scalar(GGML_TYPE_Q5_1, w, a, n);
}

/* Q4_K / Q5_K: per superblock P = sum_s sc[s] sum_e q[32s+e] x[32s+e] and
 * msum = sum_s m[s] (bs[2s] + bs[2s+1]), both exact; then one chain each. */
static float dot_q45_k_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n, bool five)
{
    const int bytes = five ? 176 : 144;
    float acc = 0.0f, accm = 0.0f;
    for (int64_t sb = 0; sb < n / 256; sb++) {
        const uint8_t *blk = w + sb * bytes;
        const uint8_t *scales = blk + 4, *qh = blk + 16, *qs = blk + (five ? 48 : 16);
        const int8_t *x = a->q + 256 * sb;
        const int16_t *bs = a->bs + 16 * sb;
        int32_t P = 0, msum = 0;
        for (int s = 0; s < 8; s++) {
            int sc, m;
            qmm_k4_scale_min(s, scales, &sc, &m);
            const uint8_t *qb = qs + 32 * (s / 2);
            for (int l = 0; l < 8; l++) {
                int p = 0;
                for (int i = 0; i < 4; i++) {
                    const int e = 4 * l + i;
                    int q = s % 2 ? qb[e] >> 4 : qb[e] & 0xf;
                    if (five)
                        q |= ((qh[e] >> s) & 1) << 4;
                    p += q * x[32 * s + e];
                }
                P += sc * p;
            }
            msum += m * (bs[2 * s] + bs[2 * s + 1]);
        }
        const float dx = a->d[sb];
        const float d = dx * qmm_f16(blk), dmin = dx * qmm_f16(blk + 2);
        acc = fmaf(d, (float)P, acc);
        accm = fmaf(dmin, (float)msum, accm);
    }
    return acc - accm;
}

static float dot_q4_k_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    return dot_q45_k_scalar(w, a, n, false);
}
static float dot_q5_k_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    return dot_q45_k_scalar(w, a, n, true);
}

/* Q6_K value of element e (0..255) of a block, q - 32. */
static inline int q6_value(const uint8_t *blk, int e)
{
    const int half = e / 128, r = e % 128, k = r / 32, l = r % 32;
    const uint8_t *ql = blk + 64 * half, *qh = blk + 128 + 32 * half;
    const int lo = k % 2 ? ql[l + 32] : ql[l];
    const int nib = k < 2 ? lo & 0xf : lo >> 4;
    return (nib | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
}

static float dot_q6_k_scalar(const uint8_t *w, const struct qmm_act *a, int64_t n)
{
    float acc = 0.0f;
    for (int64_t sb = 0; sb < n / 256; sb++) {
        const uint8_t *blk = w + sb * 210;
        const int8_t *sc = (const int8_t *)(blk + 192);
        const int8_t *x = a->q + 256 * sb;
        int32_t P = 0;
        for (int g = 0; g < 16; g++) {
            int p = 0;
            for (int e = 16 * g; e < 16 * g + 16; e++)
                p += q6_value(blk, e) * x[e];
            P += sc[g] * p;
        }
        const float d = a->d[sb] * qmm_f16(blk + 208);
        acc = fmaf(d, (float)P, acc);
    }
    return acc;
}

/* ---- tiles ----------------------------------------------------------------
 * Rows in the file's layout: every type at the scalar level, the float
 * types above it (the block types run row-interleaved there, below). A tile
 * computes WR weight rows (wstride bytes apart) against NR activation rows:
 * weight row i against activation row r at out[r * ostride + i], as the
 * row-interleaved kernels store theirs. Each output is still its own canonical dot product; the
 * tile only shares loads between them (one weight vector serves NR
 * activation rows; WR > 1 gives a single activation row independent fma
 * chains). */
#define QMM_MAX_WR 4
#define QMM_MAX_NR 4

typedef void (*qmm_tile_fn)(const uint8_t *w, size_t wstride, int wr, const struct qmm_act *a,
                            int nr, int64_t n, float *out, int64_t ostride);

/* The scalar level: one reference dot per output. */
#define QMM_DEF_SCALAR_TILE(NAME, DOT)                                                        \
    static void NAME(const uint8_t *w, size_t wstride, int wr, const struct qmm_act *a, int nr, \
                     int64_t n, float *out, int64_t ostride)                                  \
    {                                                                                         \
        for (int i = 0; i < wr; i++)                                                          \
            for (int r = 0; r < nr; r++)                                                      \
                out[r * ostride + i] = DOT(w + (size_t)i * wstride, &a[r], n);                \
    }
QMM_DEF_SCALAR_TILE(tile_f32_scalar, dot_f32_scalar)
QMM_DEF_SCALAR_TILE(tile_f16_scalar, dot_f16_scalar)
QMM_DEF_SCALAR_TILE(tile_bf16_scalar, dot_bf16_scalar)
QMM_DEF_SCALAR_TILE(tile_q8_0_scalar, dot_q8_0_scalar)
QMM_DEF_SCALAR_TILE(tile_q4_0_scalar, dot_q4_0_scalar)
QMM_DEF_SCALAR_TILE(tile_q4_1_scalar, dot_q4_1_scalar)
QMM_DEF_SCALAR_TILE(tile_q5_0_scalar, dot_q5_0_scalar)
QMM_DEF_SCALAR_TILE(tile_q5_1_scalar, dot_q5_1_scalar)
QMM_DEF_SCALAR_TILE(tile_q4_k_scalar, dot_q4_k_scalar)
QMM_DEF_SCALAR_TILE(tile_q5_k_scalar, dot_q5_k_scalar)
QMM_DEF_SCALAR_TILE(tile_q6_k_scalar, dot_q6_k_scalar)

/* ---- AVX2 + FMA + F16C ------------------------------------------------------ */

/* The sanitizers stay out of the vector kernels: their bounds are the
 * caller's (row bytes checked at qmm_weight_new; test_qmm runs every level
 * against the scalar one, which is instrumented), and instrumenting every
 * vector load made the sanitizer build's end-to-end tests several times
 * slower than a oneDNN matmul, which was never instrumented. */
#define QMM_AVX2 __attribute__((target("avx2,fma,f16c"), no_sanitize("address", "undefined")))
#define QMM_INLINE static inline __attribute__((always_inline)) QMM_AVX2

QMM_INLINE float avx2_hsum8(__m256 v)
{
    const __m128 t4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
    const __m128 t1 = _mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1));
    return _mm_cvtss_f32(t1);
}

QMM_INLINE __m256i avx2_load(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* ---- row-interleaved layouts (AVX2 and up) ---------------------------------
 * The block types' rows are repacked once at load, in place of the file's
 * bytes, into groups of QMM_X8 rows (the last group padded with zero rows).
 * Block b of a group's rows reads, for the 32-element types, as
 *   d: QMM_X8 f16 scales (16 B, row t's at t);
 *   Q4_1/Q5_1: m, 16 B likewise;
 *   Q5_0/Q5_1: qh, 32 B, row t's 32-bit word at 4t;
 *   values: Q8_0: 8 x 32 bytes, bytes 4t..4t+3 of vector j are elements
 *           4j..4j+3 of row t; the nibble types: 4 x 32 bytes, bytes
 *           4t..4t+3 of vector j are the file's bytes 4j..4j+3 of row t (low
 *           nibbles elements 4j.., high 16+4j..).
 * One 32-bit lane per weight row: an activation's 4 bytes are broadcast to
 * every lane, so after the block's multiplies each lane holds its row's
 * exact block sum, and one f16 conversion, one multiply and one fma serve 8
 * rows (as llama.cpp's repacked Q4_0 does; file-order kernels pay one
 * conversion and fma per row). The per-output chains are the scalar level's. */
#define QMM_X8 8
#define QMM_X8_NR 4 /* activation rows per pass over a group */
/* STEP(args..., r0, NR) for activation rows [0, nr), QMM_X8_NR at a time
 * from row r0, NR a constant in each expansion so that a pass's loops
 * unroll and its accumulators stay in registers. */
#define QMM_X8_PASSES(nr, STEP, ...)                                                                  \
    for (int r0_ = 0; r0_ < (nr); r0_ += QMM_X8_NR) {                                                 \
        switch (LLORCH_MIN((nr) - r0_, QMM_X8_NR)) {                                                  \
        case 1:                                                                                       \
            STEP(__VA_ARGS__, r0_, 1);                                                                \
            break;                                                                                    \
        case 2:                                                                                       \
            STEP(__VA_ARGS__, r0_, 2);                                                                \
            break;                                                                                    \
        case 3:                                                                                       \
            STEP(__VA_ARGS__, r0_, 3);                                                                \
            break;                                                                                    \
        default:                                                                                      \
            STEP(__VA_ARGS__, r0_, 4);                                                                \
            break;                                                                                    \
        }                                                                                             \
    }

/* Pins an accumulator to a register at this point: without it GCC
 * reassociates a block's chain of integer adds into a tree whose terms all
 * stay live, and spills them to the stack. */
#define QMM_KEEP(v) __asm__("" : "+x"(v))

static inline uint32_t qmm_load32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Block b of a group (gbytes each), its bytes QMM_PREFETCH ahead asked for. */
QMM_INLINE const uint8_t *avx2_x8_block(const uint8_t *grp, int64_t b, int gbytes)
{
    const uint8_t *blk = grp + (size_t)b * (size_t)gbytes;
    for (int l = 0; l < gbytes; l += 64)
        _mm_prefetch((const char *)blk + QMM_PREFETCH + l, _MM_HINT_T0);
    return blk;
}

/* Activation row r's outputs of a group's 8 rows, one vector: row t's at
 * out[r * stride + t]. */
QMM_INLINE void avx2_x8_store(__m256 v, float *out, int64_t stride, int r)
{
    _mm256_storeu_ps(out + r * stride, v);
}

/* Byte i of lane t = 0x10 where bit 4G + i of lane t's qh word is set. */
QMM_INLINE __m256i avx2_x8_bit5(__m256i qh, int G)
{
    const char b = (char)(G / 2);
    const __m256i pick = _mm256_setr_epi8(b, b, b, b, b + 4, b + 4, b + 4, b + 4, b + 8, b + 8, b + 8, b + 8,
                                          b + 12, b + 12, b + 12, b + 12, b, b, b, b, b + 4, b + 4, b + 4, b + 4,
                                          b + 8, b + 8, b + 8, b + 8, b + 12, b + 12, b + 12, b + 12);
    const __m256i bits = _mm256_set1_epi32(G % 2 ? (int)0x80402010u : 0x08040201);
    const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(qh, pick), bits);
    return _mm256_and_si256(_mm256_cmpeq_epi8(v, bits), _mm256_set1_epi8(0x10));
}

/* How a kernel sums four u8 x s8 products into each 32-bit lane: AVX2's
 * maddubs (int16 pairs, widened by madd; the nibble and 6-bit types add
 * several pairs before widening), or vpdpbusd, which adds the four exactly in
 * one instruction with no int16 stage. vpdpbusd is inline asm rather than the
 * intrinsics so that one body compiles in three forms: VEX (AVX-VNNI), EVEX
 * (AVX512-VNNI with VL), and an emulation by AVX2 instructions with the same
 * sums, which lets every AVX2 machine run and check the VNNI kernels
 * (qmm_level_runs). Every form ends with the same integers, so the scalar
 * level's bits. */
enum qmm_dp {
    QMM_DP_NONE, /* AVX2's maddubs */
    QMM_DP_EMULATED,
    QMM_DP_VEX,
    QMM_DP_EVEX,
};

/* acc + in lane i the sum of u[4i + j] (unsigned) x s[4i + j] (signed), j < 4 */
QMM_INLINE __m256i qmm_dpbusd(const enum qmm_dp dp, __m256i acc, __m256i u, __m256i s)
{
    if (dp == QMM_DP_VEX) {
        __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
        return acc;
    }
    if (dp == QMM_DP_EVEX) {
        __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
        return acc;
    }
    /* even and odd bytes widened to int16 (u by zeros, s by its sign): each
     * madd sums two exact products per lane */
    const __m256i ue = _mm256_and_si256(u, _mm256_set1_epi16(0xff)), uo = _mm256_srli_epi16(u, 8);
    const __m256i se = _mm256_srai_epi16(_mm256_slli_epi16(s, 8), 8), so = _mm256_srai_epi16(s, 8);
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(ue, se), _mm256_madd_epi16(uo, so)));
}

/* Blocks 0..nb-1 of one group against NR activation rows: out[r * stride + t].
 * Q8_0 as |w| against sign(x, w) (activations are within +-127). */
QMM_INLINE void x8_group(const enum qmm_dp dp, enum ggml_type type, const int NR, const uint8_t *grp,
                         const struct qmm_act *a, int64_t nb, float *out, int64_t stride)
{
    const bool vnni = dp != QMM_DP_NONE;
    const bool q8 = type == GGML_TYPE_Q8_0;
    const bool has_min = type == GGML_TYPE_Q4_1 || type == GGML_TYPE_Q5_1;
    const bool five = type == GGML_TYPE_Q5_0 || type == GGML_TYPE_Q5_1;
    /* the offset subtracted from unsigned values: Q4_0 8, Q5_0 16 */
    const int off = type == GGML_TYPE_Q4_0 ? 8 : type == GGML_TYPE_Q5_0 ? 16 : 0;
    const int bytes = q8 ? 34 : type == GGML_TYPE_Q4_0 ? 18 : type == GGML_TYPE_Q4_1 ? 20 : type == GGML_TYPE_Q5_0 ? 22 : 24;
    const int gbytes = QMM_X8 * bytes, vals = 16 + (has_min ? 16 : 0) + (five ? 32 : 0);
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0f);
    __m256 acc[QMM_X8_NR], accm[QMM_X8_NR];
    for (int r = 0; r < NR; r++)
        acc[r] = accm[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = avx2_x8_block(grp, b, gbytes);
        __m256i s[QMM_X8_NR];
        for (int r = 0; r < NR; r++)
            s[r] = _mm256_setzero_si256();
        if (q8) {
            for (int j = 0; j < 8; j++) {
                const __m256i v = avx2_load(blk + 16 + 32 * j), av = _mm256_abs_epi8(v);
                for (int r = 0; r < NR; r++) {
                    const __m256i xb = _mm256_set1_epi32((int)qmm_load32(a[r].q + 32 * b + 4 * j));
                    if (vnni) {
                        s[r] = qmm_dpbusd(dp, s[r], av, _mm256_sign_epi8(xb, v));
                    } else {
                        s[r] = _mm256_add_epi32(
                            s[r], _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(xb, v)), ones));
                        QMM_KEEP(s[r]);
                    }
                }
            }
        } else {
            /* unsigned values: AVX2 adds 4 products of at most 2 x 31 x 127
             * per int16 (8 of 4-bit ones) before widening */
            const __m256i qh = five ? avx2_load(blk + vals - 32) : _mm256_setzero_si256();
            __m256i s16[QMM_X8_NR];
            for (int r = 0; r < NR; r++)
                s16[r] = _mm256_setzero_si256();
            for (int j = 0; j < 4; j++) {
                const __m256i q = avx2_load(blk + vals + 32 * j);
                __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (five) {
                    lo = _mm256_or_si256(lo, avx2_x8_bit5(qh, j));
                    hi = _mm256_or_si256(hi, avx2_x8_bit5(qh, 4 + j));
                }
                for (int r = 0; r < NR; r++) {
                    const int8_t *x = a[r].q + 32 * b;
                    const __m256i xl = _mm256_set1_epi32((int)qmm_load32(x + 4 * j));
                    const __m256i xh = _mm256_set1_epi32((int)qmm_load32(x + 16 + 4 * j));
                    if (vnni) {
                        s[r] = qmm_dpbusd(dp, qmm_dpbusd(dp, s[r], lo, xl), hi, xh);
                    } else {
                        s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, xl));
                        s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(hi, xh));
                        QMM_KEEP(s16[r]);
                    }
                }
                if (!vnni && (j == 3 || (five && j == 1)))
                    for (int r = 0; r < NR; r++) {
                        s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(s16[r], ones));
                        s16[r] = _mm256_setzero_si256();
                    }
            }
            if (off) /* (q - off) x = q x - off x */
                for (int r = 0; r < NR; r++)
                    s[r] = _mm256_sub_epi32(s[r], _mm256_set1_epi32(off * a[r].sum[b]));
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)blk));
        for (int r = 0; r < NR; r++) /* d_w * d_x rounded as the scalar product is */
            acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(a[r].d[b])), _mm256_cvtepi32_ps(s[r]), acc[r]);
        if (has_min) {
            const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(blk + 16)));
            for (int r = 0; r < NR; r++)
                accm[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a[r].s[b]), accm[r]);
        }
    }
    for (int r = 0; r < NR; r++)
        avx2_x8_store(has_min ? _mm256_add_ps(acc[r], accm[r]) : acc[r], out, stride, r);
}

/* Sub-blocks 2c and 2c + 1 of a Q4_K/Q5_K group's superblock against NR
 * activation rows into P (c a constant, so Q5_K's shifts fold). sc: every
 * row's scale of each sub-block in its lane, for AVX2 in both its int16. */
QMM_INLINE void x8k45_quarter(const enum qmm_dp dp, bool five, const int NR, const int c, const uint8_t *blk,
                              const uint8_t *qs, const struct qmm_act *a, int64_t sb, const __m256i *sc,
                              __m256i *P)
{
    const bool vnni = dp != QMM_DP_NONE;
    const __m256i m4 = _mm256_set1_epi8(0x0f), b5 = _mm256_set1_epi8(0x10);
    __m256i slo[QMM_X8_NR], shi[QMM_X8_NR];
    for (int r = 0; r < NR; r++)
        slo[r] = shi[r] = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {
        const __m256i q = avx2_load(qs + 32 * (8 * c + j));
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (five) { /* bit 2c (2c + 1) of qh to 0x10 */
            const __m256i h = avx2_load(blk + 128 + 32 * j);
            const __m256i hl = c == 0 ? _mm256_slli_epi16(h, 4)
                               : c == 1 ? _mm256_slli_epi16(h, 2)
                               : c == 2 ? h
                                        : _mm256_srli_epi16(h, 2);
            const __m256i hh = c == 0 ? _mm256_slli_epi16(h, 3)
                               : c == 1 ? _mm256_slli_epi16(h, 1)
                               : c == 2 ? _mm256_srli_epi16(h, 1)
                                        : _mm256_srli_epi16(h, 3);
            lo = _mm256_or_si256(lo, _mm256_and_si256(hl, b5));
            hi = _mm256_or_si256(hi, _mm256_and_si256(hh, b5));
        }
        for (int r = 0; r < NR; r++) {
            const int8_t *x = a[r].q + 256 * sb + 64 * c;
            const __m256i xl = _mm256_set1_epi32((int)qmm_load32(x + 4 * j));
            const __m256i xh = _mm256_set1_epi32((int)qmm_load32(x + 32 + 4 * j));
            if (vnni) {
                slo[r] = qmm_dpbusd(dp, slo[r], lo, xl);
                shi[r] = qmm_dpbusd(dp, shi[r], hi, xh);
            } else {
                slo[r] = _mm256_add_epi16(slo[r], _mm256_maddubs_epi16(lo, xl));
                shi[r] = _mm256_add_epi16(shi[r], _mm256_maddubs_epi16(hi, xh));
                QMM_KEEP(slo[r]);
                QMM_KEEP(shi[r]);
            }
        }
        /* int16 holds 8 products of 4-bit values, 4 of 5-bit ones */
        if (!vnni && (j == 7 || (five && j == 3)))
            for (int r = 0; r < NR; r++) {
                P[r] = _mm256_add_epi32(P[r], _mm256_add_epi32(_mm256_madd_epi16(slo[r], sc[2 * c]),
                                                               _mm256_madd_epi16(shi[r], sc[2 * c + 1])));
                slo[r] = shi[r] = _mm256_setzero_si256();
            }
    }
    if (vnni) /* each sub-block's sums in int32, times its scale */
        for (int r = 0; r < NR; r++)
            P[r] = _mm256_add_epi32(P[r], _mm256_add_epi32(_mm256_mullo_epi32(slo[r], sc[2 * c]),
                                                           _mm256_mullo_epi32(shi[r], sc[2 * c + 1])));
}

/* A superblock's every row's scale of sub-block s in lane (AVX2: in both
 * int16 of it, for madd) and its min in both int16 (see x8k45_group). */
struct x8k45_scales {
    __m256i sc[8], mn[8];
};

QMM_INLINE void x8k45_decode(const enum qmm_dp dp, const uint8_t *blk, struct x8k45_scales *S)
{
    const __m256i f15 = _mm256_set1_epi32(15), three = _mm256_set1_epi32(3);
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    for (int s = 0; s < 8; s++) {
        const __m256i lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(blk + 32 + 8 * s)));
        const __m256i hi =
            _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)qmm_load32(blk + 96 + 4 * s)), shifts), f15);
        const __m256i scl = _mm256_or_si256(_mm256_and_si256(lo, f15), _mm256_slli_epi32(_mm256_and_si256(hi, three), 4));
        const __m256i mn = _mm256_or_si256(_mm256_srli_epi32(lo, 4), _mm256_slli_epi32(_mm256_srli_epi32(hi, 2), 4));
        S->sc[s] = dp != QMM_DP_NONE ? scl : _mm256_or_si256(scl, _mm256_slli_epi32(scl, 16));
        S->mn[s] = _mm256_or_si256(mn, _mm256_slli_epi32(mn, 16));
    }
}

/* One superblock of a Q4_K/Q5_K group against NR activation rows: each
 * row's P (sc q x) and mins sum, then acc[r] += d_x d_w P and
 * accm[r] += d_x dmin_w M, as the scalar level's chains. */
QMM_INLINE void x8k45_sb(const enum qmm_dp dp, bool five, const int NR, const uint8_t *blk,
                         const struct qmm_act *a, int64_t sb, const struct x8k45_scales *S, __m256 *acc,
                         __m256 *accm)
{
    __m256i P[QMM_X8_NR], M[QMM_X8_NR];
    for (int r = 0; r < NR; r++) {
        /* mins against the pairs of 16-sums */
        const int16_t *bs = a[r].bs + 16 * sb;
        M[r] = _mm256_setzero_si256();
        for (int s = 0; s < 8; s++)
            M[r] = _mm256_add_epi32(M[r], _mm256_madd_epi16(S->mn[s], _mm256_set1_epi32((int)qmm_load32(bs + 2 * s))));
        P[r] = _mm256_setzero_si256();
    }
    const uint8_t *qs = blk + (five ? 384 : 128);
    for (int c = 0; c < 4; c += 2) {
        x8k45_quarter(dp, five, NR, c, blk, qs, a, sb, S->sc, P);
        x8k45_quarter(dp, five, NR, c + 1, blk, qs, a, sb, S->sc, P);
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)blk));
    const __m256 dmw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(blk + 16)));
    for (int r = 0; r < NR; r++) {
        const __m256 dx = _mm256_set1_ps(a[r].d[sb]);
        acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(dx, dw), _mm256_cvtepi32_ps(P[r]), acc[r]);
        accm[r] = _mm256_fmadd_ps(_mm256_mul_ps(dx, dmw), _mm256_cvtepi32_ps(M[r]), accm[r]);
    }
}

/* Q4_K / Q5_K, row-interleaved: a group's superblock of 8 x 144 (176) bytes
 * reads as
 *   [0, 16) d, [16, 32) dmin: f16, row t's at t;
 *   [32, 96): sub-block s's 8 bytes, byte t = row t's scale & 15 | (min & 15) << 4;
 *   [96, 128): sub-block s's 32-bit word, bits 4t..4t+3 = row t's
 *              scale >> 4 | (min >> 4) << 2;
 *   Q5_K: [128, 384): qh in 8 vectors as Q8_0's values (4 bytes of each row);
 *   then 32 vectors of nibbles: vector 8c + j, bytes 4t..4t+3 = row t's
 *   qs[32c + 4j ..], low nibbles sub-block 2c, high 2c + 1.
 * Per superblock each lane ends with its row's exact P and mins sum. The
 * superblock's scales are decoded once for all nr (<= QMM_M_TILE) rows, which
 * then go through it QMM_X8_NR at a time; their accumulators wait in memory
 * between superblocks. */
QMM_INLINE void x8k45_group(const enum qmm_dp dp, enum ggml_type type, const uint8_t *grp,
                            const struct qmm_act *a, int nr, int64_t nsb, float *out, int64_t stride)
{
    const bool five = type == GGML_TYPE_Q5_K;
    const int gbytes = QMM_X8 * (five ? 176 : 144);
    __m256 acc[QMM_M_TILE], accm[QMM_M_TILE];
    for (int r = 0; r < nr; r++)
        acc[r] = accm[r] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = avx2_x8_block(grp, sb, gbytes);
        struct x8k45_scales S;
        x8k45_decode(dp, blk, &S);
#define QMM_X8K45_STEP(S, r0, NR) x8k45_sb(dp, five, NR, blk, a + (r0), sb, S, acc + (r0), accm + (r0))
        QMM_X8_PASSES(nr, QMM_X8K45_STEP, &S)
#undef QMM_X8K45_STEP
    }
    for (int r = 0; r < nr; r++)
        avx2_x8_store(_mm256_sub_ps(acc[r], accm[r]), out, stride, r);
}

/* Vector j of quarter k of half h of a Q6_K group's superblock: the 6-bit
 * values, 4 of each row (k a constant). */
QMM_INLINE __m256i q6k_values(const uint8_t *ql, const uint8_t *qh, int h, const int k, int j)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
    const __m256i L = avx2_load(ql + 32 * (16 * h + 8 * (k % 2) + j));
    const __m256i H = avx2_load(qh + 32 * (8 * h + j));
    const __m256i nib = k < 2 ? _mm256_and_si256(L, m4) : _mm256_and_si256(_mm256_srli_epi16(L, 4), m4);
    const __m256i hb = k == 0   ? _mm256_slli_epi16(H, 4)
                       : k == 1 ? _mm256_slli_epi16(H, 2)
                       : k == 2 ? H
                                : _mm256_srli_epi16(H, 2);
    return _mm256_or_si256(nib, _mm256_and_si256(hb, m30));
}

/* Elements 128h + 32k .. + 31 of every row (scale groups 8h + 2k, + 1)
 * against NR activation rows into P (k a constant, so the shifts fold). */
QMM_INLINE void x8q6k_quarter(const enum qmm_dp dp, const int NR, int h, const int k, const __m256i *scales,
                              const uint8_t *ql, const uint8_t *qh, const struct qmm_act *a, int64_t sb,
                              __m256i *P)
{
    const bool vnni = dp != QMM_DP_NONE;
    for (int half16 = 0; half16 < 2; half16++) {
        const __m256i scale = scales[8 * h + 2 * k + half16];
        __m256i A[QMM_X8_NR];
        for (int r = 0; r < NR; r++)
            A[r] = _mm256_setzero_si256();
        for (int jp = 0; jp < 2; jp++) {
            const int j0 = 4 * half16 + 2 * jp;
            const __m256i q0 = q6k_values(ql, qh, h, k, j0), q1 = q6k_values(ql, qh, h, k, j0 + 1);
            for (int r = 0; r < NR; r++) {
                const int8_t *x = a[r].q + 256 * sb + 128 * h + 32 * k + 4 * j0;
                const __m256i x0 = _mm256_set1_epi32((int)qmm_load32(x));
                const __m256i x1 = _mm256_set1_epi32((int)qmm_load32(x + 4));
                if (vnni) {
                    A[r] = qmm_dpbusd(dp, qmm_dpbusd(dp, A[r], q0, x0), q1, x1);
                } else { /* two products of 6-bit values per int16 */
                    const __m256i sum = _mm256_add_epi16(_mm256_maddubs_epi16(q0, x0), _mm256_maddubs_epi16(q1, x1));
                    P[r] = _mm256_add_epi32(P[r], _mm256_madd_epi16(sum, scale));
                    QMM_KEEP(P[r]);
                }
            }
        }
        if (vnni) /* the group's 16 products per lane in int32, times its scale */
            for (int r = 0; r < NR; r++)
                P[r] = _mm256_add_epi32(P[r], _mm256_mullo_epi32(A[r], scale));
    }
}

/* One Q6_K superblock against NR activation rows: acc[r] += d_x d_w P. */
QMM_INLINE void x8q6k_sb(const enum qmm_dp dp, const int NR, const __m256i *scales, const __m256i *pairs,
                         const uint8_t *ql, const uint8_t *qh, __m256 dw, const struct qmm_act *a, int64_t sb,
                         __m256 *acc)
{
    __m256i P[QMM_X8_NR];
    for (int r = 0; r < NR; r++) {
        /* offsets: sum_g sc_g bs_g, scales of g and g + 1 paired */
        const int16_t *bs = a[r].bs + 16 * sb;
        __m256i o = _mm256_setzero_si256();
        for (int g = 0; g < 16; g += 2)
            o = _mm256_add_epi32(o, _mm256_madd_epi16(pairs[g / 2], _mm256_set1_epi32((int)qmm_load32(bs + g))));
        P[r] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(o, 5));
    }
    for (int h = 0; h < 2; h++) {
        x8q6k_quarter(dp, NR, h, 0, scales, ql, qh, a, sb, P);
        x8q6k_quarter(dp, NR, h, 1, scales, ql, qh, a, sb, P);
        x8q6k_quarter(dp, NR, h, 2, scales, ql, qh, a, sb, P);
        x8q6k_quarter(dp, NR, h, 3, scales, ql, qh, a, sb, P);
    }
    for (int r = 0; r < NR; r++)
        acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(a[r].d[sb]), dw), _mm256_cvtepi32_ps(P[r]), acc[r]);
}

/* Q6_K, row-interleaved: a group's superblock of 8 x 210 bytes reads as
 *   [0, 16) d: f16, row t's at t;
 *   [16, 144): scale g's 8 bytes (int8), byte t = row t's;
 *   [144, 1168): ql in 32 vectors, vector 16h + 8p + j, bytes 4t..4t+3 =
 *                row t's ql[64h + 32p + 4j ..];
 *   [1168, 1680): qh in 16 vectors, vector 8h + j = row t's qh[32h + 4j ..].
 * Element 128h + 32k + l: nibble of ql vector (h, k % 2), low for k < 2;
 * its two high bits are bits 2k, 2k + 1 of qh; scale 8h + 2k + l / 16.
 * (q - 32) x = q x - 32 x: each lane sums sc q x exactly, less 32 times the
 * scales against the activation's 16-sums. */
QMM_INLINE void x8q6k_group(const enum qmm_dp dp, enum ggml_type type, const uint8_t *grp,
                            const struct qmm_act *a, int nr, int64_t nsb, float *out, int64_t stride)
{
    LLORCH_UNUSED(type);
    const bool vnni = dp != QMM_DP_NONE;
    const int gbytes = QMM_X8 * 210;
    __m256 acc[QMM_M_TILE];
    for (int r = 0; r < nr; r++)
        acc[r] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = avx2_x8_block(grp, sb, gbytes);
        const uint8_t *scb = blk + 16, *ql = blk + 144, *qh = blk + 1168;
        /* once for every row: scale g of row t in lane t (AVX2: in both
         * int16, for madd), and the scales of g and g + 1 as int16 pairs */
        __m256i scales[16], pairs[8];
        for (int g = 0; g < 16; g++) {
            const __m128i sg = _mm_loadl_epi64((const __m128i *)(const void *)(scb + 8 * g));
            scales[g] = vnni ? _mm256_cvtepi8_epi32(sg) : _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(sg, sg));
        }
        for (int g = 0; g < 16; g += 2)
            pairs[g / 2] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(
                _mm_loadl_epi64((const __m128i *)(const void *)(scb + 8 * g)),
                _mm_loadl_epi64((const __m128i *)(const void *)(scb + 8 * g + 8))));
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)blk));
#define QMM_X8Q6K_STEP(scales, r0, NR) x8q6k_sb(dp, NR, scales, pairs, ql, qh, dw, a + (r0), sb, acc + (r0))
        QMM_X8_PASSES(nr, QMM_X8Q6K_STEP, scales)
#undef QMM_X8Q6K_STEP
    }
    for (int r = 0; r < nr; r++)
        avx2_x8_store(acc[r], out, stride, r);
}

/* One group against nr activation rows, QMM_X8_NR at a time; n elements per
 * row; the group's 8 outputs for activation row r at out[r * stride ..]. */
typedef void (*qmm_x8_fn)(const uint8_t *grp, const struct qmm_act *a, int nr, int64_t n, float *out,
                          int64_t stride);

/* The types' kernels: the 32-element ones in passes of QMM_X8_NR rows over
 * the whole group; the K types take all nr (<= QMM_M_TILE) rows at once (a
 * superblock's scales decoded once for them), up to QMM_X8_NR of them with
 * nr a constant, so that one pass keeps its accumulators and the scales in
 * registers. */
#define QMM_X8_PASS_STEP(BODY, DP, TYPE, BLOCK, r0, NR)                                               \
    BODY(DP, TYPE, NR, grp, a + (r0), n / (BLOCK), out + (r0) * stride, stride)
#define QMM_X8_ONE_STEP(BODY, DP, TYPE, BLOCK, r0, NR) BODY(DP, TYPE, grp, a, NR, n / (BLOCK), out, stride)
#define QMM_X8_DISPATCH(NAME, BODY, DP, TYPE, BLOCK)                                                  \
    static QMM_AVX2 void NAME(const uint8_t *grp, const struct qmm_act *a, int nr, int64_t n,        \
                              float *out, int64_t stride)                                             \
    {                                                                                                 \
        QMM_X8_PASSES(nr, QMM_X8_PASS_STEP, BODY, DP, TYPE, BLOCK)                                    \
    }
#define QMM_X8_ALL_ROWS(NAME, BODY, DP, TYPE, BLOCK)                                                  \
    static QMM_AVX2 void NAME(const uint8_t *grp, const struct qmm_act *a, int nr, int64_t n,        \
                              float *out, int64_t stride)                                             \
    {                                                                                                 \
        if (nr <= QMM_X8_NR) {                                                                        \
            QMM_X8_PASSES(nr, QMM_X8_ONE_STEP, BODY, DP, TYPE, BLOCK)                                 \
        } else {                                                                                      \
            BODY(DP, TYPE, grp, a, nr, n / (BLOCK), out, stride);                                     \
        }                                                                                             \
    }
/* The eight block types' kernels for one way of summing, as a table indexed
 * like qmm_types (the float types NULL). */
#define QMM_X8_SET(SUF, DP)                                                                           \
    QMM_X8_DISPATCH(x8_q8_0_##SUF, x8_group, DP, GGML_TYPE_Q8_0, 32)                                  \
    QMM_X8_DISPATCH(x8_q4_0_##SUF, x8_group, DP, GGML_TYPE_Q4_0, 32)                                  \
    QMM_X8_DISPATCH(x8_q4_1_##SUF, x8_group, DP, GGML_TYPE_Q4_1, 32)                                  \
    QMM_X8_DISPATCH(x8_q5_0_##SUF, x8_group, DP, GGML_TYPE_Q5_0, 32)                                  \
    QMM_X8_DISPATCH(x8_q5_1_##SUF, x8_group, DP, GGML_TYPE_Q5_1, 32)                                  \
    QMM_X8_ALL_ROWS(x8_q4_k_##SUF, x8k45_group, DP, GGML_TYPE_Q4_K, 256)                              \
    QMM_X8_ALL_ROWS(x8_q5_k_##SUF, x8k45_group, DP, GGML_TYPE_Q5_K, 256)                              \
    QMM_X8_ALL_ROWS(x8_q6_k_##SUF, x8q6k_group, DP, GGML_TYPE_Q6_K, 256)                              \
    static const qmm_x8_fn qmm_x8_##SUF[QMM_N_TYPES] = {                                              \
        NULL,          NULL,          NULL,          x8_q8_0_##SUF, x8_q4_0_##SUF, x8_q4_1_##SUF,     \
        x8_q5_0_##SUF, x8_q5_1_##SUF, x8_q4_k_##SUF, x8_q5_k_##SUF, x8_q6_k_##SUF,                    \
    };
QMM_X8_SET(avx2, QMM_DP_NONE)
QMM_X8_SET(vnni_emulated, QMM_DP_EMULATED)
QMM_X8_SET(vnni_vex, QMM_DP_VEX)
QMM_X8_SET(vnni_evex, QMM_DP_EVEX)

/* Block b of row t of a group into the group's block b at d (see the
 * layouts above). */
static void qmm_x8_put(enum ggml_type t, uint8_t *d, const uint8_t *blk, int row)
{
    const size_t r4 = 4 * (size_t)row;
    switch (t) {
    case GGML_TYPE_Q8_0:
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1: {
        size_t at = 16, from = 2;
        memcpy(d + 2 * row, blk, 2);
        if (t == GGML_TYPE_Q4_1 || t == GGML_TYPE_Q5_1) { /* m */
            memcpy(d + 16 + 2 * row, blk + 2, 2);
            at += 16;
            from += 2;
        }
        if (t == GGML_TYPE_Q5_0 || t == GGML_TYPE_Q5_1) { /* qh */
            memcpy(d + at + r4, blk + from, 4);
            at += 32;
            from += 4;
        }
        for (size_t j = 0; j < (t == GGML_TYPE_Q8_0 ? 8u : 4u); j++)
            memcpy(d + at + 32 * j + r4, blk + from + 4 * j, 4);
        break;
    }
    case GGML_TYPE_Q6_K:
        memcpy(d + 2 * row, blk + 208, 2);
        for (int g = 0; g < 16; g++)
            d[16 + 8 * g + row] = blk[192 + g];
        for (size_t v = 0; v < 32; v++) /* v = 16h + 8p + j: ql[64h + 32p + 4j] */
            memcpy(d + 144 + 32 * v + r4, blk + 4 * v, 4);
        for (size_t v = 0; v < 16; v++) /* v = 8h + j: qh[32h + 4j] */
            memcpy(d + 1168 + 32 * v + r4, blk + 128 + 4 * v, 4);
        break;
    default: { /* Q4_K, Q5_K */
        const bool five = t == GGML_TYPE_Q5_K;
        memcpy(d + 2 * row, blk, 2);
        memcpy(d + 16 + 2 * row, blk + 2, 2);
        for (int s = 0; s < 8; s++) {
            int sc, m;
            qmm_k4_scale_min(s, blk + 4, &sc, &m);
            d[32 + 8 * s + row] = (uint8_t)((sc & 15) | (m & 15) << 4);
            d[96 + 4 * s + row / 2] |= (uint8_t)(((sc >> 4) | (m >> 4) << 2) << (4 * (row % 2)));
        }
        if (five)
            for (size_t j = 0; j < 8; j++)
                memcpy(d + 128 + 32 * j + r4, blk + 16 + 4 * j, 4);
        uint8_t *q = d + (five ? 384 : 128);
        const uint8_t *qs = blk + (five ? 48 : 16);
        for (size_t c = 0; c < 4; c++)
            for (size_t j = 0; j < 8; j++)
                memcpy(q + 32 * (8 * c + j) + r4, qs + 32 * c + 4 * j, 4);
        break;
    }
    }
}

/* Repacking a part: groups [b, e) of n_rows rows of nb blocks from src (file
 * layout) into dst, which holds ceil(n_rows / QMM_X8) groups; the padding
 * rows are zeros. */
struct qmm_repack_ctx {
    const struct qmm_type_info *ti;
    uint8_t *dst;
    const uint8_t *src;
    int64_t n_rows, nb;
};

static void qmm_x8_repack_task(void *vctx, int64_t b, int64_t e, int worker)
{
    LLORCH_UNUSED(worker);
    const struct qmm_repack_ctx *c = vctx;
    const size_t bytes = (size_t)c->ti->bytes, rb = (size_t)c->nb * bytes;
    for (int64_t g = b; g < e; g++) {
        uint8_t *d = c->dst + (size_t)g * QMM_X8 * rb;
        for (int64_t blk = 0; blk < c->nb; blk++, d += QMM_X8 * bytes) {
            memset(d, 0, QMM_X8 * bytes);
            for (int t = 0; t < QMM_X8 && g * QMM_X8 + t < c->n_rows; t++)
                qmm_x8_put(c->ti->type, d, c->src + (size_t)(g * QMM_X8 + t) * rb + (size_t)blk * bytes, t);
        }
    }
}

/* Float rows as they are: bytes [b, e) MiB of them. */
static void qmm_copy_task(void *vctx, int64_t b, int64_t e, int worker)
{
    LLORCH_UNUSED(worker);
    const struct qmm_repack_ctx *c = vctx;
    const size_t total = (size_t)c->n_rows * (size_t)c->nb * (size_t)c->ti->bytes;
    const size_t lo = (size_t)b << 20, hi = LLORCH_MIN(total, (size_t)e << 20);
    memcpy(c->dst + lo, c->src + lo, hi - lo);
}

/* 8 weight elements as f32: F16 by F16C, BF16 exactly by a shift. */
QMM_INLINE __m256 avx2_load_wf(enum ggml_type t, const uint8_t *p)
{
    switch (t) {
    case GGML_TYPE_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
    case GGML_TYPE_BF16:
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p)), 16));
    default:
        return _mm256_loadu_ps((const float *)(const void *)p);
    }
}

/* Float types: one 8-lane accumulator per output, so a tile holds WR x NR
 * outputs in registers: each weight vector is converted once for NR
 * activation rows, each activation vector loaded once for WR weight rows.
 * One activation row takes 4 weight rows (4 independent chains hide the
 * fma latency); more take 4 x 2. */
QMM_INLINE void avx2_float_tile(enum ggml_type t, int esize, const int WR, const int NR,
                                const uint8_t *w, size_t wstride, const struct qmm_act *a,
                                int64_t n, float *out, int64_t ostride)
{
    const int aes = qmm_act_type(t) == GGML_TYPE_F16 ? 2 : 4;
    __m256 acc[QMM_MAX_WR][QMM_MAX_NR];
    for (int i = 0; i < WR; i++)
        for (int r = 0; r < NR; r++)
            acc[i][r] = _mm256_setzero_ps();
    int64_t e = 0;
    for (; e + 8 <= n; e += 8) {
        __m256 wv[QMM_MAX_WR];
        for (int i = 0; i < WR; i++) {
            const uint8_t *p = w + (size_t)i * wstride + (size_t)e * (size_t)esize;
            if (NR == 1 && (e * esize) % 64 == 0)
                _mm_prefetch((const char *)p + QMM_PREFETCH, _MM_HINT_T0);
            wv[i] = avx2_load_wf(t, p);
        }
        for (int r = 0; r < NR; r++) {
            const __m256 xv = avx2_load_wf(qmm_act_type(t), a[r].f + (size_t)e * (size_t)aes);
            for (int i = 0; i < WR; i++)
                acc[i][r] = _mm256_fmadd_ps(wv[i], xv, acc[i][r]);
        }
    }
    if (e < n) { /* the tail, zero-padded as the scalar level does */
        const int64_t left = n - e;
        for (int i = 0; i < WR; i++) {
            uint8_t tw[8 * 4] = {0};
            memcpy(tw, w + (size_t)i * wstride + (size_t)e * (size_t)esize, (size_t)(left * esize));
            const __m256 wv = avx2_load_wf(t, tw);
            for (int r = 0; r < NR; r++) {
                uint8_t tx[8 * 4] = {0};
                memcpy(tx, a[r].f + (size_t)e * (size_t)aes, (size_t)(left * aes));
                acc[i][r] = _mm256_fmadd_ps(wv, avx2_load_wf(qmm_act_type(t), tx), acc[i][r]);
            }
        }
    }
    for (int i = 0; i < WR; i++)
        for (int r = 0; r < NR; r++)
            out[r * ostride + i] = avx2_hsum8(acc[i][r]);
}

/* One function per float type: the (wr, nr) shapes the driver uses, each
 * compiled with constant bounds so the accumulators live in registers. */
#define QMM_FLOAT_WR(T, ES, NR, AP, OP)                                                        \
    switch (wr) {                                                                              \
    case 1:                                                                                    \
        avx2_float_tile(T, ES, 1, NR, w, wstride, AP, n, OP, ostride);                         \
        break;                                                                                 \
    case 2:                                                                                    \
        avx2_float_tile(T, ES, 2, NR, w, wstride, AP, n, OP, ostride);                         \
        break;                                                                                 \
    case 3:                                                                                    \
        avx2_float_tile(T, ES, 3, NR, w, wstride, AP, n, OP, ostride);                         \
        break;                                                                                 \
    default:                                                                                   \
        avx2_float_tile(T, ES, 4, NR, w, wstride, AP, n, OP, ostride);                         \
        break;                                                                                 \
    }
#define QMM_FLOAT_NR 4 /* activation rows per tile when there are several */
#define QMM_FLOAT_WR_M 3 /* weight rows per tile then: 12 chains, 3 conversions */
#define QMM_AVX2_FLOAT_DISPATCH(NAME, T, ES)                                                    \
    static QMM_AVX2 void NAME(const uint8_t *w, size_t wstride, int wr, const struct qmm_act *a, \
                              int nr, int64_t n, float *out, int64_t ostride)                   \
    {                                                                                           \
        for (int r0 = 0; r0 < nr; r0 += QMM_FLOAT_NR) {                                         \
            float *o = out + r0 * ostride;                                                      \
            switch (LLORCH_MIN(nr - r0, QMM_FLOAT_NR)) {                                        \
            case 1:                                                                             \
                QMM_FLOAT_WR(T, ES, 1, a + r0, o)                                               \
                break;                                                                          \
            case 2:                                                                             \
                QMM_FLOAT_WR(T, ES, 2, a + r0, o)                                               \
                break;                                                                          \
            case 3:                                                                             \
                QMM_FLOAT_WR(T, ES, 3, a + r0, o)                                               \
                break;                                                                          \
            default:                                                                            \
                QMM_FLOAT_WR(T, ES, 4, a + r0, o)                                               \
                break;                                                                          \
            }                                                                                   \
        }                                                                                       \
    }
QMM_AVX2_FLOAT_DISPATCH(tile_f32_avx2, GGML_TYPE_F32, 4)
QMM_AVX2_FLOAT_DISPATCH(tile_f16_avx2, GGML_TYPE_F16, 2)
QMM_AVX2_FLOAT_DISPATCH(tile_bf16_avx2, GGML_TYPE_BF16, 2)

/* ---- tables ---------------------------------------------------------------- */

/* Indexed like qmm_types. The avxvnni and AVX-512 levels run the 256-bit
 * kernels (the block types' with vpdpbusd where the CPU has it): the lane
 * structure is the arithmetic's, and a batch-1 matmul is bound by memory,
 * not by vector width. NULL: the type runs in the row-interleaved layout
 * above this level (qmm_x8_table). */
static const qmm_tile_fn qmm_tiles_scalar[QMM_N_TYPES] = {
    tile_f32_scalar,  tile_f16_scalar,  tile_bf16_scalar, tile_q8_0_scalar,
    tile_q4_0_scalar, tile_q4_1_scalar, tile_q5_0_scalar, tile_q5_1_scalar,
    tile_q4_k_scalar, tile_q5_k_scalar, tile_q6_k_scalar,
};
static const qmm_tile_fn qmm_tiles_avx2[QMM_N_TYPES] = {
    tile_f32_avx2,  tile_f16_avx2,  tile_bf16_avx2, NULL, NULL, NULL,
    NULL,           NULL,           NULL,           NULL, NULL,
};

/* A level's block kernels: the VNNI ones in the form this CPU runs, or
 * emulated (the avxvnni level on a CPU without VNNI: qmm_level_runs); the
 * AVX-512 level takes them too where the CPU has VNNI. Asks cpuid: load time
 * only. */
static const qmm_x8_fn *qmm_x8_table(enum kernels_isa isa, bool emulated)
{
    if (isa == KERNELS_ISA_SCALAR)
        return NULL;
    if (isa == KERNELS_ISA_AVX2)
        return qmm_x8_avx2;
    if (emulated)
        return qmm_x8_vnni_emulated;
    switch (kernels_vnni()) {
    case KERNELS_VNNI_VEX:
        return qmm_x8_vnni_vex;
    case KERNELS_VNNI_EVEX:
        return qmm_x8_vnni_evex;
    default: /* AVX-512 without VNNI */
        return qmm_x8_avx2;
    }
}

LLORCH_API bool qmm_level_runs(enum kernels_isa isa)
{
    return kernels_get(isa) || (isa == KERNELS_ISA_AVXVNNI && kernels_get(KERNELS_ISA_AVX2));
}

static const qmm_tile_fn *qmm_tiles_for(enum kernels_isa isa)
{
    return isa == KERNELS_ISA_SCALAR ? qmm_tiles_scalar : qmm_tiles_avx2;
}

/* ---- activation rounding ------------------------------------------------- */

/* bf16-rounded values as f32 (qmm_act_type), through the level's own
 * rounding, 256 at a time. */
static void act_round_bf16(const struct kernels *k, float *y, const float *x, int64_t n)
{
    uint16_t h[256];
    for (int64_t i = 0; i < n; i += 256) {
        const int64_t len = LLORCH_MIN(n - i, 256);
        k->to_bf16(h, x + i, len);
        for (int64_t j = 0; j < len; j++)
            y[i + j] = half_bf16_to_f32(h[j]);
    }
}

/* As ggml's x86 quantize_row_q8_0 / q8_1: d = amax/127 kept as f16, values
 * times 127/amax rounded to nearest even; s = f16(d * sum(q)); sums = sum(q). */
static void act_quant_q8_0(int8_t *q, float *d, float *s, int32_t *sums, const float *x, int64_t n)
{
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float v = fabsf(xb[j]);
            amax = v > amax ? v : amax;
        }
        const float dd = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            const int v = (int)nearbyintf(xb[j] * id);
            q[32 * b + j] = (int8_t)v;
            sum += v;
        }
        d[b] = half_f16_to_f32(half_f32_to_f16(dd));
        s[b] = half_f16_to_f32(half_f32_to_f16(dd * (float)sum));
        sums[b] = sum;
    }
}

/* As ggml's quantize_row_q8_K: scale -127/max of the largest-magnitude value
 * (its sign included), nearest even, d = 1/scale; sums of 16. */
static void act_quant_q8_k(int8_t *q, float *d, int16_t *bs, const float *x, int64_t n)
{
    for (int64_t b = 0; b < n / 256; b++) {
        const float *xb = x + 256 * b;
        int8_t *qb = q + 256 * b;
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < 256; j++) {
            const float ax = fabsf(xb[j]);
            if (ax > amax) {
                amax = ax;
                max = xb[j];
            }
        }
        if (amax == 0.0f) {
            d[b] = 0.0f;
            memset(qb, 0, 256);
        } else {
            const float iscale = -127.0f / max;
            for (int j = 0; j < 256; j++) {
                const int v = (int)nearbyintf(iscale * xb[j]);
                qb[j] = (int8_t)(v < 127 ? v : 127);
            }
            d[b] = 1.0f / iscale;
        }
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++)
                sum += qb[16 * g + j];
            bs[16 * b + g] = (int16_t)sum;
        }
    }
}

/* ---- weights ------------------------------------------------------------- */

struct qmm_seg {
    const struct qmm_type_info *ti;
    qmm_tile_fn tile;
    qmm_x8_fn x8;           /* set: data holds groups of QMM_X8 interleaved rows */
    const uint8_t *data;
    size_t row_bytes;
    int64_t row0, n_rows;   /* output rows [row0, row0 + n_rows) */
    void *owned;
    bool copied;            /* repacked here: the part's data is no longer read */
};

struct qmm_weight {
    int64_t n_in, n_out;
    int n_seg;
    struct qmm_seg seg[QMM_MAX_PARTS];
    bool fmt_used[QMM_FMT_COUNT_];
    const struct kernels *k; /* the level's (kernels_get asks cpuid: a VM exit) */
    uint64_t bytes;
    char impl[64];
};

static void qmm_free_owned(const struct qmm_part *parts, int n)
{
    for (int i = 0; i < n; i++)
        free(parts[i].owned);
}

/* Repacked weights are read once per step from end to end: on 2 MiB pages a
 * step's walk takes ~500 TLB misses per GiB instead of ~260000. Buffers of a
 * whole huge page or more start on one and ask for them (the kernel's
 * "madvise" mode); freed with free() as any other. */
#define QMM_HUGE_PAGE ((size_t)2 << 20)

static void *qmm_alloc_weights(size_t bytes)
{
    if (bytes < QMM_HUGE_PAGE)
        return malloc(bytes);
    void *p = NULL;
    if (posix_memalign(&p, QMM_HUGE_PAGE, bytes) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes & ~(QMM_HUGE_PAGE - 1), MADV_HUGEPAGE); /* advice only */
#endif
    return p;
}

LLORCH_API int qmm_weight_new(struct qmm_weight **out, const struct qmm_part *parts, int n_parts,
                              int64_t n_in, enum kernels_isa isa, struct tpool *pool)
{
    *out = NULL;
    if (n_parts < 1 || n_parts > QMM_MAX_PARTS || n_in < 1 || !qmm_level_runs(isa)) {
        qmm_free_owned(parts, n_parts > 0 && n_parts <= QMM_MAX_PARTS ? n_parts : 0);
        return LLORCH_EINVAL;
    }
    struct qmm_weight *w = calloc(1, sizeof *w);
    if (!w) {
        qmm_free_owned(parts, n_parts);
        return LLORCH_ENOMEM;
    }
    w->n_in = n_in;
    /* the level runs (checked above), so without a table of its own it is
     * avxvnni emulated on an AVX2 CPU */
    const bool emulated = !kernels_get(isa);
    w->k = kernels_get(emulated ? KERNELS_ISA_AVX2 : isa);
    const qmm_x8_fn *x8 = qmm_x8_table(isa, emulated);
    int rc = 0;
    int len = snprintf(w->impl, sizeof w->impl, "llorch:%s%s", kernels_isa_name(isa), emulated ? "-emulated" : "");
    for (int i = 0; i < n_parts; i++) {
        struct qmm_seg *s = &w->seg[w->n_seg++];
        s->owned = parts[i].owned;
        s->ti = qmm_info(parts[i].type);
        uint64_t rb;
        if (!s->ti) {
            rc = LLORCH_EUNSUPPORTED;
            continue;
        }
        if (parts[i].n_rows < 1 || n_in % s->ti->block || !parts[i].data ||
            ggml_type_row_bytes(parts[i].type, (uint64_t)n_in, &rb) < 0) {
            rc = LLORCH_EINVAL;
            continue;
        }
        s->tile = qmm_tiles_for(isa)[qmm_type_index(parts[i].type)];
        s->data = parts[i].data;
        uint64_t padded_rows = (uint64_t)parts[i].n_rows;
        if (!s->tile) {
            s->x8 = x8[qmm_type_index(parts[i].type)];
            padded_rows = ((uint64_t)parts[i].n_rows + QMM_X8 - 1) / QMM_X8 * QMM_X8;
            uint8_t *g = qmm_alloc_weights((size_t)rb * (size_t)padded_rows);
            if (!g) {
                rc = LLORCH_ENOMEM;
                continue;
            }
            struct qmm_repack_ctx job = {s->ti, g, parts[i].data, parts[i].n_rows, n_in / s->ti->block};
            tpool_parallel_for(pool, (int64_t)padded_rows / QMM_X8, 16, qmm_x8_repack_task, &job);
            free(s->owned);
            s->data = s->owned = g;
            s->copied = true;
        } else if ((size_t)rb * (size_t)parts[i].n_rows >= QMM_HUGE_PAGE) {
            /* float rows as they are, moved onto huge pages: a batch-1 step
             * reads every page of the file's mapping once, one TLB miss per
             * 4 KiB there */
            const size_t bytes = (size_t)rb * (size_t)parts[i].n_rows;
            uint8_t *g = qmm_alloc_weights(bytes);
            if (!g) {
                rc = LLORCH_ENOMEM;
                continue;
            }
            struct qmm_repack_ctx job = {s->ti, g, parts[i].data, parts[i].n_rows, n_in / s->ti->block};
            tpool_parallel_for(pool, (int64_t)((bytes + (1u << 20) - 1) >> 20), 1, qmm_copy_task, &job);
            free(s->owned);
            s->data = s->owned = g;
            s->copied = true;
        }
        s->row_bytes = (size_t)rb;
        s->row0 = w->n_out;
        s->n_rows = parts[i].n_rows;
        w->n_out += parts[i].n_rows;
        w->bytes += (uint64_t)rb * padded_rows;
        w->fmt_used[s->ti->fmt] = true;
        if (len > 0 && (size_t)len < sizeof w->impl)
            len += snprintf(w->impl + len, sizeof w->impl - (size_t)len, "%s%s", i ? "+" : " ",
                            s->ti->name);
    }
    if (rc < 0) {
        qmm_weight_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

LLORCH_API void qmm_weight_free(struct qmm_weight *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n_seg; i++)
        free(w->seg[i].owned);
    free(w);
}

LLORCH_API bool qmm_weight_part_copied(const struct qmm_weight *w, int part)
{
    return part >= 0 && part < w->n_seg && w->seg[part].copied;
}

LLORCH_API int64_t qmm_weight_n_out(const struct qmm_weight *w)
{
    return w->n_out;
}

LLORCH_API uint64_t qmm_weight_bytes(const struct qmm_weight *w)
{
    return w->bytes;
}

LLORCH_API const char *qmm_weight_impl(const struct qmm_weight *w)
{
    return w->impl;
}

/* ---- activation scratch -------------------------------------------------- */

/* Byte layout of the scratch for m rows: per format used, its arrays one
 * after the other, each 64-byte aligned. */
struct qmm_act_layout {
    size_t f[QMM_FMT_COUNT_];      /* float values (F16/BF16) */
    size_t q[QMM_FMT_COUNT_];      /* int8 values (Q8_0/Q8_K) */
    size_t d[QMM_FMT_COUNT_];
    size_t s[QMM_FMT_COUNT_];
    size_t bs[QMM_FMT_COUNT_];
    size_t sum[QMM_FMT_COUNT_];
    size_t total;
};

static size_t qmm_take(size_t *at, size_t bytes)
{
    const size_t off = *at;
    *at += (bytes + QMM_ALIGN - 1) / QMM_ALIGN * QMM_ALIGN;
    return off;
}

static void qmm_layout(const struct qmm_weight *w, int64_t m, struct qmm_act_layout *L)
{
    memset(L, 0, sizeof *L);
    const size_t mk = (size_t)m * (size_t)w->n_in;
    size_t at = 0;
    for (int f = 0; f < QMM_FMT_COUNT_; f++) {
        if (!w->fmt_used[f])
            continue;
        switch ((enum qmm_fmt)f) {
        case QMM_FMT_F16:
            L->f[f] = qmm_take(&at, mk * sizeof(uint16_t));
            break;
        case QMM_FMT_BF16:
            L->f[f] = qmm_take(&at, mk * sizeof(float));
            break;
        case QMM_FMT_Q8_0:
            L->q[f] = qmm_take(&at, mk);
            L->d[f] = qmm_take(&at, mk / 32 * sizeof(float));
            L->s[f] = qmm_take(&at, mk / 32 * sizeof(float));
            L->sum[f] = qmm_take(&at, mk / 32 * sizeof(int32_t));
            break;
        case QMM_FMT_Q8_K:
            L->q[f] = qmm_take(&at, mk);
            L->d[f] = qmm_take(&at, mk / 256 * sizeof(float));
            L->bs[f] = qmm_take(&at, mk / 16 * sizeof(int16_t));
            break;
        default:
            break;
        }
    }
    L->total = at;
}

LLORCH_API size_t qmm_act_bytes(const struct qmm_weight *w, int64_t m)
{
    struct qmm_act_layout L;
    qmm_layout(w, m < 1 ? 1 : m, &L);
    return L.total ? L.total : QMM_ALIGN;
}

struct qmm_run_ctx {
    const struct qmm_weight *w;
    const float *x;
    float *y;
    int64_t m;
    uint8_t *act;
    struct qmm_act_layout L;
};

static struct qmm_act qmm_act_row(const struct qmm_run_ctx *c, enum qmm_fmt f, int64_t r)
{
    const int64_t k = c->w->n_in;
    struct qmm_act a = {0};
    switch (f) {
    case QMM_FMT_F32:
        a.f = (const uint8_t *)(c->x + r * k);
        break;
    case QMM_FMT_F16:
        a.f = c->act + c->L.f[f] + (size_t)(r * k) * sizeof(uint16_t);
        break;
    case QMM_FMT_BF16:
        a.f = c->act + c->L.f[f] + (size_t)(r * k) * sizeof(float);
        break;
    case QMM_FMT_Q8_0:
        a.q = (const int8_t *)(c->act + c->L.q[f]) + r * k;
        a.d = (const float *)(const void *)(c->act + c->L.d[f]) + r * (k / 32);
        a.s = (const float *)(const void *)(c->act + c->L.s[f]) + r * (k / 32);
        a.sum = (const int32_t *)(const void *)(c->act + c->L.sum[f]) + r * (k / 32);
        break;
    case QMM_FMT_Q8_K:
        a.q = (const int8_t *)(c->act + c->L.q[f]) + r * k;
        a.d = (const float *)(const void *)(c->act + c->L.d[f]) + r * (k / 256);
        a.bs = (const int16_t *)(const void *)(c->act + c->L.bs[f]) + r * (k / 16);
        break;
    default:
        break;
    }
    return a;
}

static void qmm_round_rows(void *vctx, int64_t b, int64_t e, int worker)
{
    LLORCH_UNUSED(worker);
    const struct qmm_run_ctx *c = vctx;
    const struct qmm_weight *w = c->w;
    const int64_t k = w->n_in;
    for (int64_t r = b; r < e; r++) {
        const float *x = c->x + r * k;
        for (int f = 0; f < QMM_FMT_COUNT_; f++) {
            if (!w->fmt_used[f] || f == QMM_FMT_F32)
                continue;
            struct qmm_act a = qmm_act_row(c, (enum qmm_fmt)f, r);
            switch ((enum qmm_fmt)f) {
            case QMM_FMT_F16:
                w->k->to_f16((uint16_t *)(uintptr_t)a.f, x, k);
                break;
            case QMM_FMT_BF16:
                act_round_bf16(w->k, (float *)(uintptr_t)a.f, x, k);
                break;
            case QMM_FMT_Q8_0:
                act_quant_q8_0((int8_t *)(uintptr_t)a.q, (float *)(uintptr_t)a.d,
                               (float *)(uintptr_t)a.s, (int32_t *)(uintptr_t)a.sum, x, k);
                break;
            case QMM_FMT_Q8_K:
                act_quant_q8_k((int8_t *)(uintptr_t)a.q, (float *)(uintptr_t)a.d,
                               (int16_t *)(uintptr_t)a.bs, x, k);
                break;
            default:
                break;
            }
        }
    }
}

/* Output rows [lo, hi) of a row-interleaved segment: the groups that hold
 * them, QMM_N_CHUNK rows at a time against every activation row. A whole
 * group stores its 8 outputs per activation row straight into y (one vector;
 * scattered scalar stores n_out apart cost 5 % of a batch-16 step); a group
 * cut by a task boundary or by the padding goes through out, and each task
 * that computes it keeps its own rows. */
static void qmm_x8_rows(const struct qmm_run_ctx *c, const struct qmm_seg *s, int64_t lo, int64_t hi)
{
    const struct qmm_weight *w = c->w;
    const int64_t g0 = (lo - s->row0) / QMM_X8, g1 = (hi - s->row0 + QMM_X8 - 1) / QMM_X8;
    const size_t gstride = QMM_X8 * s->row_bytes;
    for (int64_t gc = g0; gc < g1; gc += QMM_N_CHUNK / QMM_X8) {
        const int64_t gce = LLORCH_MIN(g1, gc + QMM_N_CHUNK / QMM_X8);
        for (int64_t r0 = 0; r0 < c->m; r0 += QMM_M_TILE) {
            const int nr = (int)LLORCH_MIN(c->m - r0, QMM_M_TILE);
            struct qmm_act a[QMM_M_TILE];
            float out[QMM_X8 * QMM_M_TILE];
            for (int r = 0; r < nr; r++)
                a[r] = qmm_act_row(c, s->ti->fmt, r0 + r);
            for (int64_t g = gc; g < gce; g++) {
                const int64_t row = s->row0 + g * QMM_X8;
                if (row >= lo && row + QMM_X8 <= hi) { /* whole group: straight into y */
                    s->x8(s->data + (size_t)g * gstride, a, nr, w->n_in, c->y + r0 * w->n_out + row, w->n_out);
                    continue;
                }
                s->x8(s->data + (size_t)g * gstride, a, nr, w->n_in, out, QMM_X8);
                for (int r = 0; r < nr; r++)
                    for (int t = 0; t < QMM_X8; t++)
                        if (row + t >= lo && row + t < hi)
                            c->y[(r0 + r) * w->n_out + row + t] = out[r * QMM_X8 + t];
            }
        }
    }
}

/* Output rows [b, e) in chunks of QMM_N_CHUNK rows, each chunk against every
 * activation row QMM_M_TILE at a time, so its weight rows stay in cache. Rows
 * in the file's layout (float types, or any type at the scalar level): one
 * activation row takes QMM_MAX_WR weight rows (independent chains), more
 * take QMM_FLOAT_WR_M against QMM_FLOAT_NR activation rows. */
static void qmm_rows_task(void *vctx, int64_t b, int64_t e, int worker)
{
    LLORCH_UNUSED(worker);
    const struct qmm_run_ctx *c = vctx;
    const struct qmm_weight *w = c->w;
    for (int i = 0; i < w->n_seg; i++) {
        const struct qmm_seg *s = &w->seg[i];
        const int64_t lo = LLORCH_MAX(b, s->row0), hi = LLORCH_MIN(e, s->row0 + s->n_rows);
        if (lo >= hi)
            continue;
        if (s->x8) {
            qmm_x8_rows(c, s, lo, hi);
            continue;
        }
        for (int64_t n0 = lo; n0 < hi; n0 += QMM_N_CHUNK) {
            const int64_t n1 = LLORCH_MIN(hi, n0 + QMM_N_CHUNK);
            for (int64_t r0 = 0; r0 < c->m; r0 += QMM_M_TILE) {
                const int nr = (int)LLORCH_MIN(c->m - r0, QMM_M_TILE);
                struct qmm_act a[QMM_M_TILE];
                /* the chunk's outputs, row by row, then copied into y: stores
                 * n_out floats apart, one per output, cost 4 % of an F16
                 * batch-64 step */
                float chunk[QMM_M_TILE * QMM_N_CHUNK];
                for (int r = 0; r < nr; r++)
                    a[r] = qmm_act_row(c, s->ti->fmt, r0 + r);
                for (int64_t n = n0; n < n1;) {
                    const int wr = (int)LLORCH_MIN(n1 - n, nr > 1 ? QMM_FLOAT_WR_M : QMM_MAX_WR);
                    s->tile(s->data + (size_t)(n - s->row0) * s->row_bytes, s->row_bytes, wr, a, nr,
                            w->n_in, chunk + (n - n0), QMM_N_CHUNK);
                    n += wr;
                }
                for (int r = 0; r < nr; r++)
                    memcpy(c->y + (r0 + r) * w->n_out + n0, chunk + r * QMM_N_CHUNK,
                           (size_t)(n1 - n0) * sizeof *chunk);
            }
        }
    }
}

/* Above this many activation elements the rounding runs on the pool. */
#define QMM_ROUND_SERIAL_MAX 32768

LLORCH_API int qmm_run(const struct qmm_weight *w, const float *x, float *y, int64_t m, void *act,
                       struct tpool *pool)
{
    if (m < 1)
        return m == 0 ? 0 : LLORCH_EINVAL;
    struct qmm_run_ctx c = {.w = w, .x = x, .y = y, .m = m, .act = act};
    qmm_layout(w, m, &c.L);
    if (m * w->n_in > QMM_ROUND_SERIAL_MAX)
        tpool_parallel_for(pool, m, 1, qmm_round_rows, &c);
    else
        qmm_round_rows(&c, 0, m, 0);
    const int workers = pool ? tpool_size(pool) : 1;
    int64_t grain = w->n_out / ((int64_t)workers * 8);
    grain = LLORCH_MAX(QMM_ROW_GRAIN, grain / 8 * 8);
    tpool_parallel_for(pool, w->n_out, grain, qmm_rows_task, &c);
    return 0;
}

LLORCH_API float qmm_dot_row(const struct qmm_weight *w, int64_t row, const float *x, void *act)
{
    struct qmm_run_ctx c = {.w = w, .x = x, .y = NULL, .m = 1, .act = act};
    qmm_layout(w, 1, &c.L);
    qmm_round_rows(&c, 0, 1, 0);
    for (int i = 0; i < w->n_seg; i++) {
        const struct qmm_seg *s = &w->seg[i];
        if (row >= s->row0 && row < s->row0 + s->n_rows) {
            struct qmm_act a = qmm_act_row(&c, s->ti->fmt, 0);
            if (s->x8) {
                const int64_t t = row - s->row0;
                float out[QMM_X8];
                s->x8(s->data + (size_t)(t / QMM_X8) * QMM_X8 * s->row_bytes, &a, 1, w->n_in, out, QMM_X8);
                return out[t % QMM_X8];
            }
            float out;
            s->tile(s->data + (size_t)(row - s->row0) * s->row_bytes, s->row_bytes, 1, &a, 1,
                    w->n_in, &out, 1);
            return out;
        }
    }
    return NAN;
}
