/* Numeric kernels: scalar versions in portable C, AVX2 and AVX-512 versions
 * compiled with target attributes and picked at run time. The arithmetic
 * order follows ggml's CPU backend where it matters for matching llama.cpp:
 * norms sum squares in double and round the mean to float before sqrtf,
 * softmax sums in double and scales by the float of 1/sum, RoPE builds its
 * angles by repeated float multiplication, GELU goes through an f16 table. */
#include "kernels.h"

#include "half.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "util.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define KERNELS_X86 1
#else
#define KERNELS_X86 0
#endif

/* Position p's K (or V) row of a paged view: base (kv->k or kv->v) plus its
 * block's offset from the sequence's block table. */
static inline const uint8_t *kv_row(const struct kernels_kv_view *kv, const uint8_t *base, int64_t p)
{
    return base + (size_t)kv->blocks[p / kv->block] * kv->block_stride +
           (size_t)(p % kv->block) * kv->row_bytes;
}

/* ---- scalar kernels ---------------------------------------------------- */

static float dot_scalar(const float *a, const float *b, int64_t n)
{
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static float dot_f16_scalar(const float *a, const uint16_t *b, int64_t n)
{
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * half_f16_to_f32(b[i]);
    return s;
}

static float dot_bf16_scalar(const float *a, const uint16_t *b, int64_t n)
{
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * half_bf16_to_f32(b[i]);
    return s;
}

static void axpy_scalar(float *y, float a, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void axpy_f16_scalar(float *y, float a, const uint16_t *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * half_f16_to_f32(x[i]);
}

static void axpy_bf16_scalar(float *y, float a, const uint16_t *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * half_bf16_to_f32(x[i]);
}

/* The normalisation factor of RMSNorm exactly as ggml: float squares summed
 * in double, mean rounded to float, then 1/sqrtf. */
static inline float rms_scale(double sum, int64_t n, float eps)
{
    const float mean = (float)(sum / (double)n);
    return 1.0f / sqrtf(mean + eps);
}

static void rmsnorm_scalar(float *y, const float *x, const float *w, int64_t n, float eps)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float scale = rms_scale(sum, n, eps);
    for (int64_t i = 0; i < n; i++)
        y[i] = (x[i] * scale) * w[i];
}

static void layernorm_scalar(float *y, const float *x, const float *w, const float *b, int64_t n,
                             float eps)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)x[i];
    const float mean = (float)(sum / (double)n);
    double sum2 = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i] - mean;
        y[i] = v;
        sum2 += (double)(v * v);
    }
    const float scale = rms_scale(sum2, n, eps);
    for (int64_t i = 0; i < n; i++) {
        float v = (y[i] * scale) * w[i];
        y[i] = b ? v + b[i] : v;
    }
}

static void add_scalar(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
}

static void scale_scalar(float *y, float s, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] *= s;
}

static void swiglu_scalar(float *y, const float *g, const float *u, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float x = g[i];
        y[i] = (x / (1.0f + expf(-x))) * u[i];
    }
}

static float softmax_scalar(float *x, int64_t n)
{
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float e = expf(x[i] - max);
        x[i] = e;
        sum += (double)e;
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
    return max;
}

static void to_f16_scalar(uint16_t *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = half_f32_to_f16(x[i]);
}

static void to_bf16_scalar(uint16_t *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = half_f32_to_bf16(x[i]);
}

static void from_f16_scalar(float *y, const uint16_t *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = half_f16_to_f32(x[i]);
}

static const struct kernels kernels_scalar = {
    .isa = KERNELS_ISA_SCALAR,
    .name = "scalar",
    .dot = dot_scalar,
    .dot_f16 = dot_f16_scalar,
    .dot_bf16 = dot_bf16_scalar,
    .axpy = axpy_scalar,
    .axpy_f16 = axpy_f16_scalar,
    .axpy_bf16 = axpy_bf16_scalar,
    .rmsnorm = rmsnorm_scalar,
    .layernorm = layernorm_scalar,
    .add = add_scalar,
    .scale = scale_scalar,
    .swiglu = swiglu_scalar,
    .softmax = softmax_scalar,
    .to_f16 = to_f16_scalar,
    .to_bf16 = to_bf16_scalar,
    .from_f16 = from_f16_scalar,
};

#if KERNELS_X86

/* ---- AVX2 + FMA + F16C ------------------------------------------------- */

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

AVX2_TARGET static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

AVX2_TARGET static inline double hsum256d(__m256d v)
{
    __m128d lo = _mm256_castpd256_pd128(v);
    __m128d hi = _mm256_extractf128_pd(v, 1);
    lo = _mm_add_pd(lo, hi);
    lo = _mm_add_sd(lo, _mm_unpackhi_pd(lo, lo));
    return _mm_cvtsd_f64(lo);
}

/* expf for 8 lanes: n = round(x / ln2), r = x - n ln2 in two parts (Cody and
 * Waite), a degree-6 polynomial for e^r, 2^n through the exponent bits.
 * Within 2 ulp of expf over [-87.3, 88.7]; 0 below, +inf above. */
AVX2_TARGET static inline __m256 exp256(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.72283935546875f);
    const __m256 lo = _mm256_set1_ps(-87.33654022216797f);
    __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    /* 2^n for n in [-126, 128]: split into two factors so n = 128 works */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1);
    __m256i n2 = _mm256_sub_epi32(ni, n1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    p = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    p = _mm256_blendv_ps(p, _mm256_set1_ps(INFINITY), over);
    p = _mm256_andnot_ps(under, p);
    return p;
}

/* dot_avx2's vector part over the first n8 elements (a multiple of 8), before
 * its horizontal sum: 4 chains over 32-element steps, 8-element steps into
 * the first; (s0 + s1) + (s2 + s3). */
AVX2_TARGET static inline __m256 dot8_avx2(const float *a, const float *b, int64_t n8)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n8; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i < n8; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    return _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
}

AVX2_TARGET static float dot_avx2(const float *a, const float *b, int64_t n)
{
    const int64_t n8 = n / 8 * 8;
    float s = hsum256(dot8_avx2(a, b, n8));
    for (int64_t i = n8; i < n; i++)
        s += a[i] * b[i];
    return s;
}

AVX2_TARGET static inline __m256 load_f16x8(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

AVX2_TARGET static inline __m256 load_bf16x8(const uint16_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

AVX2_TARGET static float dot_f16_avx2(const float *a, const uint16_t *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_f16x8(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load_f16x8(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_f16x8(b + i), s0);
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        s += a[i] * half_f16_to_f32(b[i]);
    return s;
}

AVX2_TARGET static float dot_bf16_avx2(const float *a, const uint16_t *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_bf16x8(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load_bf16x8(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_bf16x8(b + i), s0);
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        s += a[i] * half_bf16_to_f32(b[i]);
    return s;
}

AVX2_TARGET static void axpy_avx2(float *y, float a, const float *x, int64_t n)
{
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] = fmaf(a, x[i], y[i]);
}

AVX2_TARGET static void axpy_f16_avx2(float *y, float a, const uint16_t *x, int64_t n)
{
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_f16x8(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] = fmaf(a, half_f16_to_f32(x[i]), y[i]);
}

AVX2_TARGET static void axpy_bf16_avx2(float *y, float a, const uint16_t *x, int64_t n)
{
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_bf16x8(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] = fmaf(a, half_bf16_to_f32(x[i]), y[i]);
}

/* Squares rounded to float, then widened and summed in double (ggml's
 * order: (ggml_float)(x*x)). */
AVX2_TARGET static double sumsq_avx2(const float *x, int64_t n, int64_t *done)
{
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 sq = _mm256_mul_ps(v, v);
        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
    }
    *done = i;
    return hsum256d(_mm256_add_pd(acc0, acc1));
}

AVX2_TARGET static void rmsnorm_avx2(float *y, const float *x, const float *w, int64_t n, float eps)
{
    int64_t i;
    double sum = sumsq_avx2(x, n, &i);
    for (; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float scale = rms_scale(sum, n, eps);
    const __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, _mm256_loadu_ps(w + i)));
    }
    for (; i < n; i++)
        y[i] = (x[i] * scale) * w[i];
}

AVX2_TARGET static void layernorm_avx2(float *y, const float *x, const float *w, const float *b,
                                       int64_t n, float eps)
{
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    double sum = hsum256d(_mm256_add_pd(acc0, acc1));
    for (; i < n; i++)
        sum += (double)x[i];
    const float mean = (float)(sum / (double)n);
    const __m256 vm = _mm256_set1_ps(mean);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    for (; i < n; i++)
        y[i] = x[i] - mean;
    double sum2 = sumsq_avx2(y, n, &i);
    for (; i < n; i++)
        sum2 += (double)(y[i] * y[i]);
    const float scale = rms_scale(sum2, n, eps);
    const __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(y + i), vs), _mm256_loadu_ps(w + i));
        if (b)
            v = _mm256_add_ps(v, _mm256_loadu_ps(b + i));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; i++) {
        float v = (y[i] * scale) * w[i];
        y[i] = b ? v + b[i] : v;
    }
}

AVX2_TARGET static void add_avx2(float *y, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
    for (; i < n; i++)
        y[i] += x[i];
}

AVX2_TARGET static void scale_avx2(float *y, float s, int64_t n)
{
    const __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), vs));
    for (; i < n; i++)
        y[i] *= s;
}

AVX2_TARGET static void swiglu_avx2(float *y, const float *g, const float *u, int64_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
        __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) {
        const float x = g[i];
        y[i] = (x / (1.0f + expf(-x))) * u[i];
    }
}

AVX2_TARGET static float softmax_avx2(float *x, int64_t n)
{
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    float tmp[8];
    _mm256_storeu_ps(tmp, vmax);
    float max = -INFINITY;
    for (int j = 0; j < 8; j++)
        max = tmp[j] > max ? tmp[j] : max;
    for (; i < n; i++)
        max = x[i] > max ? x[i] : max;
    const __m256 vm = _mm256_set1_ps(max);
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double sum = hsum256d(_mm256_add_pd(acc0, acc1));
    for (; i < n; i++) {
        const float e = expf(x[i] - max);
        x[i] = e;
        sum += (double)e;
    }
    scale_avx2(x, (float)(1.0 / sum), n);
    return max;
}

AVX2_TARGET static void to_f16_avx2(uint16_t *y, const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = half_f32_to_f16(x[i]);
}

AVX2_TARGET static void to_bf16_avx2(uint16_t *y, const float *x, int64_t n)
{
    /* round to nearest even on the bits; NaN lanes are fixed up by the
     * scalar conversion (rare, and never produced by a finite model) */
    const __m256i bias = _mm256_set1_epi32(0x7fff);
    const __m256i one = _mm256_set1_epi32(1);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
        if (_mm256_movemask_ps(nan)) {
            for (int j = 0; j < 8; j++)
                y[i + j] = half_f32_to_bf16(x[i + j]);
            continue;
        }
        __m256i b = _mm256_castps_si256(v);
        __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), one);
        b = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, bias), lsb), 16);
        __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
        _mm_storeu_si128((__m128i *)(y + i), packed);
    }
    for (; i < n; i++)
        y[i] = half_f32_to_bf16(x[i]);
}

AVX2_TARGET static void from_f16_avx2(float *y, const uint16_t *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, load_f16x8(x + i));
    for (; i < n; i++)
        y[i] = half_f16_to_f32(x[i]);
}

/* GQA attention of nh query heads over one K/V head at the AVX2 level, for
 * head_dim a multiple of 8 up to KERNELS_ATTN_AVX2_MAX. K/V rows are
 * converted 8 at a time into an L1 buffer and used by every head and by a
 * pair of query rows. Scores: the 8 keys' dot products of a head end in one
 * transposed horizontal sum that adds the lanes in hsum256's pairs; values:
 * 32 output columns stay in registers over the 8 rows. Per (query row,
 * head, K/V row) the arithmetic is dot_avx2's and axpy_avx2's, in their
 * order (fma is commutative in its product, so is each add), so the bits
 * are those of the per-head path (attention_group) whatever nh and however
 * rows pair up. */
#define KERNELS_ATTN_AVX2_MAX 256
#define KERNELS_ATTN_AVX2_KEYS 8

/* n rows from position p0 on, as f32, into r (hd floats each, hd a multiple
 * of 8). */
AVX2_TARGET static inline void attn_rows_avx2(float *r, const struct kernels_kv_view *kv,
                                              const uint8_t *base, int64_t p0, int64_t n, int64_t hd)
{
    for (int64_t j = 0; j < n; j++, r += hd) {
        const uint8_t *row = kv_row(kv, base, p0 + j);
        for (int64_t d = 0; d < hd; d += 8) {
            __m256 v;
            switch (kv->type) {
            case LLORCH_KV_F16:
                v = load_f16x8((const uint16_t *)(const void *)row + d);
                break;
            case LLORCH_KV_BF16:
                v = load_bf16x8((const uint16_t *)(const void *)row + d);
                break;
            default:
                v = _mm256_loadu_ps((const float *)(const void *)row + d);
                break;
            }
            _mm256_store_ps(r + d, v);
        }
    }
}

/* hsum256 of 8 vectors at once: lane k of the result is hsum256(v[k]),
 * ((x0 + x2) + (x1 + x3)) with x = lo + hi, the same adds. */
AVX2_TARGET static inline __m256 attn_hsum8x8_avx2(const __m256 v[8])
{
    /* x of v[k] and v[k + 4] side by side: [x(v0) | x(v4)], [x(v1) | x(v5)], ... */
    __m256 x[4];
    for (int k = 0; k < 4; k++)
        x[k] = _mm256_add_ps(_mm256_permute2f128_ps(v[k], v[k + 4], 0x20),
                             _mm256_permute2f128_ps(v[k], v[k + 4], 0x31));
    /* per 128-bit half: (x0 + x2, x1 + x3) of two vectors */
    const __m256 y01 = _mm256_add_ps(_mm256_shuffle_ps(x[0], x[1], 0x44), _mm256_shuffle_ps(x[0], x[1], 0xee));
    const __m256 y23 = _mm256_add_ps(_mm256_shuffle_ps(x[2], x[3], 0x44), _mm256_shuffle_ps(x[2], x[3], 0xee));
    /* (x0 + x2) + (x1 + x3): lanes v0 v1 v2 v3 | v4 v5 v6 v7 */
    return _mm256_add_ps(_mm256_shuffle_ps(y01, y23, 0x88), _mm256_shuffle_ps(y01, y23, 0xdd));
}

AVX2_TARGET static void attention_group_avx2(const struct kernels *k, const struct kernels_attn *a,
                                             int64_t nh)
{
    enum { KB = KERNELS_ATTN_AVX2_KEYS };
    const struct kernels_kv_view *kv = a->kv;
    const int64_t hd = a->head_dim;
    float rb[KB * KERNELS_ATTN_AVX2_MAX] __attribute__((aligned(32)));
    const __m256 scale = _mm256_set1_ps(a->scale);
    for (int64_t t0 = 0; t0 < a->n_q; t0 += 2) {
        const int64_t nt = a->n_q - t0 < 2 ? 1 : 2;
        const int64_t n_kv0 = a->pos0 + t0 + 1, n_kv_last = n_kv0 + nt - 1;
        /* scores of row t0 + j, head i at sc + (j * nh + i) * n_kv_last */
        float *sc = a->scores;
        for (int64_t p0 = 0; p0 < n_kv_last; p0 += KB) {
            const int64_t np = LLORCH_MIN((int64_t)KB, n_kv_last - p0);
            attn_rows_avx2(rb, kv, kv->k, p0, np, hd);
            for (int64_t j = 0; j < nt; j++) {
                const int64_t lim = LLORCH_MIN(np, n_kv0 + j - p0);
                const float *q = a->q + (t0 + j) * a->q_stride;
                for (int64_t i = 0; i < nh; i++) {
                    float *si = sc + (j * nh + i) * n_kv_last + p0;
                    if (lim == KB) {
                        __m256 v[KB];
                        for (int r = 0; r < KB; r++)
                            v[r] = dot8_avx2(q + i * hd, rb + r * hd, hd);
                        _mm256_storeu_ps(si, _mm256_mul_ps(attn_hsum8x8_avx2(v), scale));
                    } else {
                        for (int64_t r = 0; r < lim; r++)
                            si[r] = hsum256(dot8_avx2(q + i * hd, rb + r * hd, hd)) * a->scale;
                    }
                }
            }
        }
        for (int64_t j = 0; j < nt; j++)
            for (int64_t i = 0; i < nh; i++) {
                k->softmax(sc + (j * nh + i) * n_kv_last, n_kv0 + j);
                memset(a->out + (t0 + j) * a->out_stride + i * hd, 0, (size_t)hd * sizeof(float));
            }
        for (int64_t p0 = 0; p0 < n_kv_last; p0 += KB) {
            const int64_t np = LLORCH_MIN((int64_t)KB, n_kv_last - p0);
            attn_rows_avx2(rb, kv, kv->v, p0, np, hd);
            for (int64_t j = 0; j < nt; j++) {
                const int64_t lim = LLORCH_MIN(np, n_kv0 + j - p0);
                float *out = a->out + (t0 + j) * a->out_stride;
                for (int64_t i = 0; i < nh; i++) {
                    float *oi = out + i * hd;
                    const float *w = sc + (j * nh + i) * n_kv_last + p0;
                    int64_t d = 0;
                    for (; d + 32 <= hd; d += 32) {
                        __m256 o0 = _mm256_loadu_ps(oi + d), o1 = _mm256_loadu_ps(oi + d + 8);
                        __m256 o2 = _mm256_loadu_ps(oi + d + 16), o3 = _mm256_loadu_ps(oi + d + 24);
                        for (int64_t r = 0; r < lim; r++) {
                            const __m256 wr = _mm256_broadcast_ss(w + r);
                            const float *vr = rb + r * hd + d;
                            o0 = _mm256_fmadd_ps(wr, _mm256_load_ps(vr), o0);
                            o1 = _mm256_fmadd_ps(wr, _mm256_load_ps(vr + 8), o1);
                            o2 = _mm256_fmadd_ps(wr, _mm256_load_ps(vr + 16), o2);
                            o3 = _mm256_fmadd_ps(wr, _mm256_load_ps(vr + 24), o3);
                        }
                        _mm256_storeu_ps(oi + d, o0);
                        _mm256_storeu_ps(oi + d + 8, o1);
                        _mm256_storeu_ps(oi + d + 16, o2);
                        _mm256_storeu_ps(oi + d + 24, o3);
                    }
                    for (; d < hd; d += 8) {
                        __m256 o = _mm256_loadu_ps(oi + d);
                        for (int64_t r = 0; r < lim; r++)
                            o = _mm256_fmadd_ps(_mm256_broadcast_ss(w + r), _mm256_load_ps(rb + r * hd + d), o);
                        _mm256_storeu_ps(oi + d, o);
                    }
                }
            }
        }
    }
}

#define KERNELS_AVX2_TABLE                                                                        \
    .dot = dot_avx2, .dot_f16 = dot_f16_avx2, .dot_bf16 = dot_bf16_avx2, .axpy = axpy_avx2,         \
    .axpy_f16 = axpy_f16_avx2, .axpy_bf16 = axpy_bf16_avx2, .rmsnorm = rmsnorm_avx2,                \
    .layernorm = layernorm_avx2, .add = add_avx2, .scale = scale_avx2, .swiglu = swiglu_avx2,       \
    .softmax = softmax_avx2, .to_f16 = to_f16_avx2, .to_bf16 = to_bf16_avx2,                        \
    .from_f16 = from_f16_avx2

static const struct kernels kernels_avx2 = {.isa = KERNELS_ISA_AVX2, .name = "avx2", KERNELS_AVX2_TABLE};

/* The same kernels: the level exists for qmm.c's VNNI block matmuls. */
static const struct kernels kernels_avxvnni = {.isa = KERNELS_ISA_AVXVNNI, .name = "avxvnni", KERNELS_AVX2_TABLE};


/* ---- AVX-512 ----------------------------------------------------------- */

#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

AVX512_TARGET static inline __mmask16 tail16(int64_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

AVX512_TARGET static inline __m512 exp512(__m512 x)
{
    const __m512 hi = _mm512_set1_ps(88.72283935546875f);
    const __m512 lo = _mm512_set1_ps(-87.33654022216797f);
    __mmask16 over = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    p = _mm512_scalef_ps(p, n); /* p * 2^n, exact */
    p = _mm512_mask_mov_ps(p, over, _mm512_set1_ps(INFINITY));
    p = _mm512_mask_mov_ps(p, under, _mm512_setzero_ps());
    return p;
}

AVX512_TARGET static float dot_avx512(const float *a, const float *b, int64_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

AVX512_TARGET static inline __m512 load_f16x16(const uint16_t *p, __mmask16 m)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

AVX512_TARGET static inline __m512 load_bf16x16(const uint16_t *p, __mmask16 m)
{
    __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

AVX512_TARGET static float dot_f16_avx512(const float *a, const uint16_t *b, int64_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load_f16x16(b + i, 0xffff), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), load_f16x16(b + i + 16, 0xffff), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), load_f16x16(b + i, m), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

AVX512_TARGET static float dot_bf16_avx512(const float *a, const uint16_t *b, int64_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load_bf16x16(b + i, 0xffff), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), load_bf16x16(b + i + 16, 0xffff), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), load_bf16x16(b + i, m), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

AVX512_TARGET static void axpy_avx512(float *y, float a, const float *x, int64_t n)
{
    const __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

AVX512_TARGET static void axpy_f16_avx512(float *y, float a, const uint16_t *x, int64_t n)
{
    const __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_fmadd_ps(va, load_f16x16(x + i, m), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

AVX512_TARGET static void axpy_bf16_avx512(float *y, float a, const uint16_t *x, int64_t n)
{
    const __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_fmadd_ps(va, load_bf16x16(x + i, m), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

/* Sum of float squares (or of the values) widened to double, 16 lanes. */
AVX512_TARGET static double sum_wide_avx512(const float *x, int64_t n, bool square)
{
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        if (square)
            v = _mm512_mul_ps(v, v);
        acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
}

AVX512_TARGET static void rmsnorm_avx512(float *y, const float *x, const float *w, int64_t n,
                                         float eps)
{
    const float scale = rms_scale(sum_wide_avx512(x, n, true), n, eps);
    const __m512 vs = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i)));
    }
}

AVX512_TARGET static void layernorm_avx512(float *y, const float *x, const float *w,
                                           const float *b, int64_t n, float eps)
{
    const float mean = (float)(sum_wide_avx512(x, n, false) / (double)n);
    const __m512 vm = _mm512_set1_ps(mean);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm));
    }
    const float scale = rms_scale(sum_wide_avx512(y, n, true), n, eps);
    const __m512 vs = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), vs),
                                 _mm512_maskz_loadu_ps(m, w + i));
        if (b)
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

AVX512_TARGET static void add_avx512(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        _mm512_mask_storeu_ps(y + i, m,
                              _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + i), _mm512_maskz_loadu_ps(m, x + i)));
    }
}

AVX512_TARGET static void scale_avx512(float *y, float s, int64_t n)
{
    const __m512 vs = _mm512_set1_ps(s);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), vs));
    }
}

AVX512_TARGET static void swiglu_avx512(float *y, const float *g, const float *u, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        __m512 s = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

AVX512_TARGET static float softmax_avx512(float *x, int64_t n)
{
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, x + i));
    }
    const float max = _mm512_reduce_max_ps(vmax);
    const __m512 vm = _mm512_set1_ps(max);
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm));
        e = _mm512_maskz_mov_ps(m, e);
        _mm512_mask_storeu_ps(x + i, m, e);
        acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    const double sum = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
    scale_avx512(x, (float)(1.0 / sum), n);
    return max;
}

AVX512_TARGET static void to_f16_avx512(uint16_t *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_mask_storeu_epi16(y + i, m, h);
    }
}

AVX512_TARGET static void to_bf16_avx512(uint16_t *y, const float *x, int64_t n)
{
    const __m512i bias = _mm512_set1_epi32(0x7fff);
    const __m512i one = _mm512_set1_epi32(1);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        __m512i b = _mm512_castps_si512(v);
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), one);
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, bias), lsb), 16);
        __m512i q = _mm512_or_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40));
        r = _mm512_mask_mov_epi32(r, nan, q);
        _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtepi32_epi16(r));
    }
}

AVX512_TARGET static void from_f16_avx512(float *y, const uint16_t *x, int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        _mm512_mask_storeu_ps(y + i, m, load_f16x16(x + i, m));
    }
}

static const struct kernels kernels_avx512 = {
    .isa = KERNELS_ISA_AVX512,
    .name = "avx512",
    .dot = dot_avx512,
    .dot_f16 = dot_f16_avx512,
    .dot_bf16 = dot_bf16_avx512,
    .axpy = axpy_avx512,
    .axpy_f16 = axpy_f16_avx512,
    .axpy_bf16 = axpy_bf16_avx512,
    .rmsnorm = rmsnorm_avx512,
    .layernorm = layernorm_avx512,
    .add = add_avx512,
    .scale = scale_avx512,
    .swiglu = swiglu_avx512,
    .softmax = softmax_avx512,
    .to_f16 = to_f16_avx512,
    .to_bf16 = to_bf16_avx512,
    .from_f16 = from_f16_avx512,
};

/* GQA attention of nh query heads over one K/V head (see attention_group):
 * each K/V row is loaded and converted into registers once, then used by
 * every head; head_dim a multiple of 16, at most 256. Per (row, head) the
 * arithmetic does not depend on nh, and it is the FMA order of dot_f16_avx512
 * and axpy_f16_avx512, so an f16 cache gives the bits the per-head kernels
 * gave (checked bit for bit against them at head_dim 64). */
AVX512_TARGET static inline __m512 attn_load16(const uint8_t *row, int64_t c,
                                               enum llorch_kv_type type)
{
    switch (type) {
    case LLORCH_KV_F16:
        return load_f16x16((const uint16_t *)(const void *)row + 16 * c, 0xffff);
    case LLORCH_KV_BF16:
        return load_bf16x16((const uint16_t *)(const void *)row + 16 * c, 0xffff);
    default:
        return _mm512_loadu_ps((const float *)(const void *)row + 16 * c);
    }
}

AVX512_TARGET static void attention_group_avx512(const struct kernels *k,
                                                 const struct kernels_attn *a, int64_t nh)
{
    const struct kernels_kv_view *kv = a->kv;
    const int64_t hd = a->head_dim, nc = hd / 16;
    __m512 r[16];
    for (int64_t t = 0; t < a->n_q; t++) {
        const float *q = a->q + t * a->q_stride;
        float *out = a->out + t * a->out_stride;
        const int64_t n_kv = a->pos0 + t + 1;
        float *sc = a->scores; /* head i at sc + i * n_kv */
        for (int64_t p = 0; p < n_kv; p++) {
            const uint8_t *row = kv_row(kv, kv->k, p);
            for (int64_t c = 0; c < nc; c++)
                r[c] = attn_load16(row, c, kv->type);
            for (int64_t i = 0; i < nh; i++) {
                const float *qi = q + i * hd;
                __m512 s0 = _mm512_mul_ps(_mm512_loadu_ps(qi), r[0]);
                __m512 s1 = _mm512_setzero_ps();
                for (int64_t c = 1; c + 1 < nc; c += 2) {
                    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(qi + 16 * c), r[c], s1);
                    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(qi + 16 * c + 16), r[c + 1], s0);
                }
                if (nc % 2 == 0)
                    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(qi + 16 * (nc - 1)), r[nc - 1], s1);
                sc[i * n_kv + p] = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) * a->scale;
            }
        }
        for (int64_t i = 0; i < nh; i++) {
            k->softmax(sc + i * n_kv, n_kv);
            memset(out + i * hd, 0, (size_t)hd * sizeof(float));
        }
        for (int64_t p = 0; p < n_kv; p++) {
            const uint8_t *row = kv_row(kv, kv->v, p);
            for (int64_t c = 0; c < nc; c++)
                r[c] = attn_load16(row, c, kv->type);
            for (int64_t i = 0; i < nh; i++) {
                float *oi = out + i * hd;
                const __m512 w = _mm512_set1_ps(sc[i * n_kv + p]);
                for (int64_t c = 0; c < nc; c++)
                    _mm512_storeu_ps(oi + 16 * c,
                                     _mm512_fmadd_ps(w, r[c], _mm512_loadu_ps(oi + 16 * c)));
            }
        }
    }
}

#endif /* KERNELS_X86 */

/* ---- selection --------------------------------------------------------- */

#if KERNELS_X86
/* F16C from CPUID leaf 1 (ECX bit 29): clang before 15 rejects "f16c" in
 * __builtin_cpu_supports, and the fuzz build (tests under clang) needs it. */
static bool cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static bool cpu_avx2_level(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
}
#endif

LLORCH_API enum kernels_vnni kernels_vnni(void)
{
#if KERNELS_X86
    unsigned a, b, c, d;
    if (!__builtin_cpu_supports("avx2")) /* also: the OS saves the ymm state */
        return KERNELS_VNNI_NONE;
    /* AVX-VNNI: CPUID leaf 7 sub-leaf 1, EAX bit 4 */
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4)))
        return KERNELS_VNNI_VEX;
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl"))
        return KERNELS_VNNI_EVEX;
#endif
    return KERNELS_VNNI_NONE;
}

LLORCH_API const struct kernels *kernels_get(enum kernels_isa isa)
{
    switch (isa) {
    case KERNELS_ISA_SCALAR:
        return &kernels_scalar;
#if KERNELS_X86
    case KERNELS_ISA_AVX2:
        return cpu_avx2_level() ? &kernels_avx2 : NULL;
    case KERNELS_ISA_AVXVNNI:
        return cpu_avx2_level() && kernels_vnni() != KERNELS_VNNI_NONE ? &kernels_avxvnni : NULL;
    case KERNELS_ISA_AVX512:
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && cpu_avx2_level())
            return &kernels_avx512;
        return NULL;
#endif
    default:
        return NULL;
    }
}

LLORCH_API const struct kernels *kernels_best(void)
{
    for (int isa = KERNELS_ISA_COUNT_ - 1; isa > KERNELS_ISA_SCALAR; isa--) {
        const struct kernels *k = kernels_get((enum kernels_isa)isa);
        if (k)
            return k;
    }
    return &kernels_scalar;
}

LLORCH_API const char *kernels_isa_name(enum kernels_isa isa)
{
    switch (isa) {
    case KERNELS_ISA_SCALAR:
        return "scalar";
    case KERNELS_ISA_AVX2:
        return "avx2";
    case KERNELS_ISA_AVXVNNI:
        return "avxvnni";
    case KERNELS_ISA_AVX512:
        return "avx512";
    default:
        return "unknown";
    }
}

/* ---- GELU -------------------------------------------------------------- */

LLORCH_API float kernels_gelu_exact(float x)
{
    const float sqrt_2_over_pi = 0.79788456080286535587989211986876f;
    const float coef_a = 0.044715f;
    return 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * x * (1.0f + coef_a * x * x)));
}

LLORCH_API void kernels_gelu_table_init(uint16_t *table)
{
    for (uint32_t i = 0; i < KERNELS_GELU_TABLE_SIZE; i++)
        table[i] = half_f32_to_f16(kernels_gelu_exact(half_f16_to_f32((uint16_t)i)));
}

/* A table lookup per element in every instruction set, as ggml does; the
 * cost is negligible next to the matmuls around it. */
LLORCH_API void kernels_gelu(float *y, const float *x, int64_t n, const uint16_t *table)
{
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        if (v <= -10.0f)
            y[i] = 0.0f;
        else if (v >= 10.0f)
            y[i] = v;
        else
            y[i] = half_f16_to_f32(table[half_f32_to_f16(v)]);
    }
}

/* ---- RoPE -------------------------------------------------------------- */

LLORCH_API void kernels_rope_cache(float *cs, int64_t pos, int64_t n_rot, float freq_base,
                                   float freq_scale, const float *factors)
{
    /* ggml_rope_cache_init with ext_factor 0 and mscale 1: theta starts at
     * pos and is multiplied by base^(-2/n_rot) once per pair, in float. */
    const float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    for (int64_t i0 = 0; i0 < n_rot; i0 += 2) {
        const float ff = factors ? factors[i0 / 2] : 1.0f;
        const float t = freq_scale * (theta / ff);
        cs[i0] = cosf(t);
        cs[i0 + 1] = sinf(t);
        theta *= theta_scale;
    }
}

LLORCH_API void kernels_rope(float *x, int64_t n_head, int64_t head_dim, int64_t n_rot,
                             const float *cs, enum kernels_rope_mode mode)
{
    const int64_t half = n_rot / 2;
    for (int64_t h = 0; h < n_head; h++) {
        float *v = x + h * head_dim;
        if (mode == KERNELS_ROPE_NORM) {
            for (int64_t i0 = 0; i0 < n_rot; i0 += 2) {
                const float c = cs[i0], s = cs[i0 + 1];
                const float x0 = v[i0], x1 = v[i0 + 1];
                v[i0] = x0 * c - x1 * s;
                v[i0 + 1] = x0 * s + x1 * c;
            }
        } else {
            for (int64_t i = 0; i < half; i++) {
                const float c = cs[2 * i], s = cs[2 * i + 1];
                const float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * c - x1 * s;
                v[i + half] = x0 * s + x1 * c;
            }
        }
    }
}

/* ---- activation rounding (llama.cpp compatibility) --------------------- */

LLORCH_API void kernels_round_f16(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = half_f16_to_f32(half_f32_to_f16(x[i]));
}

LLORCH_API void kernels_round_q8_0(float *x, int64_t n)
{
    /* ggml's x86 quantize_row_q8_0: d = amax/127 stored as f16, the values
     * multiplied by 127/amax and rounded to nearest even. */
    for (int64_t b = 0; b + 32 <= n; b += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float a = fabsf(x[b + j]);
            amax = a > amax ? a : amax;
        }
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        const float dh = half_f16_to_f32(half_f32_to_f16(d));
        for (int j = 0; j < 32; j++)
            x[b + j] = dh * nearbyintf(x[b + j] * id);
    }
}

/* ---- attention --------------------------------------------------------- */

/* Rows of up to this many elements are converted on the stack; longer
 * heads (none of the supported models) use the typed kernels directly. */
#define KERNELS_ATTN_ROW_MAX 512

/* Position p's K (or V) row of the view as f32: a pointer into the cache for
 * f32, else converted into buf. */
static const float *attn_row(const struct kernels *k, const struct kernels_kv_view *kv,
                             const uint8_t *base, int64_t p, int64_t hd, float *buf)
{
    const uint8_t *row = kv_row(kv, base, p);
    switch (kv->type) {
    case LLORCH_KV_F16:
        k->from_f16(buf, (const uint16_t *)(const void *)row, hd);
        return buf;
    case LLORCH_KV_BF16:
        for (int64_t d = 0; d < hd; d++) {
            uint16_t h;
            memcpy(&h, row + 2 * d, 2);
            buf[d] = half_bf16_to_f32(h);
        }
        return buf;
    default:
        return (const float *)(const void *)row;
    }
}

/* Every head of a GQA group per K/V row: one conversion of the row, then
 * one f32 dot (axpy) per head. The conversion is exact, so each (row, head)
 * sees the same f32 values whatever the group size. */
static void attention_group(const struct kernels *k, const struct kernels_attn *a, int64_t nh)
{
#if KERNELS_X86
    if (k->isa == KERNELS_ISA_AVX512 && a->head_dim % 16 == 0 && a->head_dim <= 256) {
        attention_group_avx512(k, a, nh);
        return;
    }
    if ((k->isa == KERNELS_ISA_AVX2 || k->isa == KERNELS_ISA_AVXVNNI) && a->head_dim % 8 == 0 &&
        a->head_dim <= KERNELS_ATTN_AVX2_MAX) {
        attention_group_avx2(k, a, nh);
        return;
    }
#endif
    const struct kernels_kv_view *kv = a->kv;
    const int64_t hd = a->head_dim;
    float buf[KERNELS_ATTN_ROW_MAX];
    for (int64_t t = 0; t < a->n_q; t++) {
        const float *q = a->q + t * a->q_stride;
        float *out = a->out + t * a->out_stride;
        const int64_t n_kv = a->pos0 + t + 1;
        /* scores of head i at sc + i * n_kv */
        float *sc = a->scores;
        for (int64_t p = 0; p < n_kv; p++) {
            const float *kr = attn_row(k, kv, kv->k, p, hd, buf);
            for (int64_t i = 0; i < nh; i++)
                sc[i * n_kv + p] = k->dot(q + i * hd, kr, hd) * a->scale;
        }
        for (int64_t i = 0; i < nh; i++) {
            k->softmax(sc + i * n_kv, n_kv);
            memset(out + i * hd, 0, (size_t)hd * sizeof(float));
        }
        for (int64_t p = 0; p < n_kv; p++) {
            const float *vr = attn_row(k, kv, kv->v, p, hd, buf);
            for (int64_t i = 0; i < nh; i++)
                k->axpy(out + i * hd, sc[i * n_kv + p], vr, hd);
        }
    }
}

LLORCH_API void kernels_attention(const struct kernels *k, const struct kernels_attn *a)
{
    if (a->head_dim <= KERNELS_ATTN_ROW_MAX) {
        attention_group(k, a, a->n_head > 1 ? a->n_head : 1);
        return;
    }
    const struct kernels_kv_view *kv = a->kv;
    const int64_t hd = a->head_dim;
    const int64_t nh = a->n_head > 1 ? a->n_head : 1;
    for (int64_t th = 0; th < a->n_q * nh; th++) {
        const int64_t t = th / nh, i = th % nh;
        const float *q = a->q + t * a->q_stride + i * hd;
        float *out = a->out + t * a->out_stride + i * hd;
        const int64_t n_kv = a->pos0 + t + 1;
        float *sc = a->scores;
        /* scores = scale * q . k_p, block by block through the table */
        for (int64_t p0 = 0; p0 < n_kv; p0 += kv->block) {
            const uint8_t *kb = kv->k + (size_t)kv->blocks[p0 / kv->block] * kv->block_stride;
            const int64_t m = LLORCH_MIN((int64_t)kv->block, n_kv - p0);
            for (int64_t j = 0; j < m; j++) {
                const void *row = kb + (size_t)j * kv->row_bytes;
                float s;
                switch (kv->type) {
                case LLORCH_KV_F16:
                    s = k->dot_f16(q, row, hd);
                    break;
                case LLORCH_KV_BF16:
                    s = k->dot_bf16(q, row, hd);
                    break;
                default:
                    s = k->dot(q, row, hd);
                    break;
                }
                sc[p0 + j] = s * a->scale;
            }
        }
        k->softmax(sc, n_kv);
        /* out = sum_p softmax_p v_p */
        memset(out, 0, (size_t)hd * sizeof(float));
        for (int64_t p0 = 0; p0 < n_kv; p0 += kv->block) {
            const uint8_t *vb = kv->v + (size_t)kv->blocks[p0 / kv->block] * kv->block_stride;
            const int64_t m = LLORCH_MIN((int64_t)kv->block, n_kv - p0);
            for (int64_t j = 0; j < m; j++) {
                const void *row = vb + (size_t)j * kv->row_bytes;
                switch (kv->type) {
                case LLORCH_KV_F16:
                    k->axpy_f16(out, sc[p0 + j], row, hd);
                    break;
                case LLORCH_KV_BF16:
                    k->axpy_bf16(out, sc[p0 + j], row, hd);
                    break;
                default:
                    k->axpy(out, sc[p0 + j], row, hd);
                    break;
                }
            }
        }
    }
}
