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

#include <math.h>
#include <string.h>

#include "llorch/error.h"
#include "util.h"

struct type_traits {
    const char *name;
    uint32_t blck;  /* elements per block; 0 = not a type */
    uint32_t bytes; /* bytes per block */
};

/* Indexed by enum ggml_type value (holes are types ggml removed). */
static const struct type_traits traits[] = {
    [0] = {"f32", 1, 4},
    [1] = {"f16", 1, 2},
    [2] = {"q4_0", 32, 18},
    [3] = {"q4_1", 32, 20},
    [6] = {"q5_0", 32, 22},
    [7] = {"q5_1", 32, 24},
    [8] = {"q8_0", 32, 34},
    [9] = {"q8_1", 32, 36},
    [10] = {"q2_K", 256, 84},
    [11] = {"q3_K", 256, 110},
    [12] = {"q4_K", 256, 144},
    [13] = {"q5_K", 256, 176},
    [14] = {"q6_K", 256, 210},
    [15] = {"q8_K", 256, 292},
    [16] = {"iq2_xxs", 256, 66},
    [17] = {"iq2_xs", 256, 74},
    [18] = {"iq3_xxs", 256, 98},
    [19] = {"iq1_s", 256, 50},
    [20] = {"iq4_nl", 32, 18},
    [21] = {"iq3_s", 256, 110},
    [22] = {"iq2_s", 256, 82},
    [23] = {"iq4_xs", 256, 136},
    [24] = {"i8", 1, 1},
    [25] = {"i16", 1, 2},
    [26] = {"i32", 1, 4},
    [27] = {"i64", 1, 8},
    [28] = {"f64", 1, 8},
    [29] = {"iq1_m", 256, 56},
    [30] = {"bf16", 1, 2},
    [34] = {"tq1_0", 256, 54},
    [35] = {"tq2_0", 256, 66},
    [39] = {"mxfp4", 32, 17},
};

static const struct type_traits *traits_of(enum ggml_type t)
{
    if ((unsigned)t >= LLORCH_ARRAY_SIZE(traits) || traits[t].blck == 0)
        return NULL;
    return &traits[t];
}

LLORCH_API uint64_t quant_block_elems(enum ggml_type t)
{
    const struct type_traits *tt = traits_of(t);
    return tt ? tt->blck : 0;
}

LLORCH_API uint64_t quant_block_bytes(enum ggml_type t)
{
    const struct type_traits *tt = traits_of(t);
    return tt ? tt->bytes : 0;
}

LLORCH_API bool quant_type_known(enum ggml_type t)
{
    return traits_of(t) != NULL;
}

LLORCH_API const char *quant_type_name(enum ggml_type t)
{
    const struct type_traits *tt = traits_of(t);
    return tt ? tt->name : "unknown";
}

LLORCH_API int quant_row_bytes(enum ggml_type t, uint64_t n, uint64_t *out)
{
    const struct type_traits *tt = traits_of(t);
    if (!tt)
        return LLORCH_EUNSUPPORTED;
    if (n % tt->blck)
        return LLORCH_EINVAL;
    if (llorch_mul_overflows(n / tt->blck, tt->bytes, out))
        return LLORCH_EOVERFLOW;
    return 0;
}

/* ---- scalar conversions ---- */

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

LLORCH_API float quant_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f) /* inf / NaN: keep the payload */
        return f32_from_bits(sign | 0x7f800000 | (man << 13));
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in f32 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

/* Round to nearest, ties to even, like F16C's _cvtss_sh(x, 0) that ggml's
 * CPU backend uses. */
LLORCH_API uint16_t quant_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) /* NaN: quiet, keep the top payload bits */
        return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x1ff);
    if (ax >= 0x477ff000) /* >= 65520 rounds to infinity */
        return sign | 0x7c00;
    if (ax >= 0x38800000) { /* normal half: rebias exponent by 127 - 15 */
        uint32_t r = ax - 0x38000000;
        uint32_t h = r >> 13, rem = r & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
            h++;
        return sign | (uint16_t)h;
    }
    if (ax <= 0x33000000) /* <= 2^-25 rounds (ties to even) to zero */
        return sign;
    /* subnormal half: value = m 2^(e-150), unit 2^-24, so h = m >> (126 - e) */
    uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1)))
        h++;
    return sign | (uint16_t)h;
}

LLORCH_API float quant_bf16_to_f32(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

LLORCH_API uint16_t quant_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) /* NaN: force quiet so it stays NaN */
        return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* ---- dequantisation ---- */

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

LLORCH_API int quant_dequantize(enum ggml_type t, const void *src, float *dst, uint64_t n)
{
    const uint8_t *s = src;
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
    default:
        return LLORCH_EUNSUPPORTED;
    }
}

LLORCH_API int quant_quantize(enum ggml_type t, const float *src, void *dst, uint64_t n)
{
    uint8_t *d = dst;
    switch (t) {
    case GGML_TYPE_F32:
        memcpy(dst, src, n * 4);
        return 0;
    case GGML_TYPE_F16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = quant_f32_to_f16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return 0;
    case GGML_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = quant_f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return 0;
    default:
        return LLORCH_EUNSUPPORTED;
    }
}
