/* The one f16 and one bf16 conversion of the project (quantisation, the
 * kernels' scalar paths, oneDNN's activation rounding and the tests all use
 * these, so that every path rounds alike: batch invariance depends on it).
 * f32 -> f16 and f32 -> bf16 round to nearest even, as F16C's
 * _cvtss_sh(x, 0) and AVX-512 BF16's vcvtneps2bf16 do; NaN stays NaN. */
#ifndef LLORCH_HALF_H
#define LLORCH_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t half_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float half_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float half_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) /* inf / NaN: keep the payload */
        return half_bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in f32 */
        const float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return half_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t half_f32_to_f16(float f)
{
    const uint32_t x = half_f32_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: quiet, keep the top payload bits */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x1ffu));
    if (ax >= 0x477ff000u) /* >= 65520 rounds to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) { /* normal half: rebias exponent by 127 - 15 */
        const uint32_t r = ax - 0x38000000u;
        uint32_t h = r >> 13;
        const uint32_t rem = r & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            h++;
        return (uint16_t)(sign | h);
    }
    if (ax <= 0x33000000u) /* <= 2^-25 rounds (ties to even) to zero */
        return sign;
    /* subnormal half: value = m 2^(e-150), unit 2^-24, so h = m >> (126 - e) */
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e; /* 14..24 */
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

static inline float half_bf16_to_f32(uint16_t h)
{
    return half_bits_f32((uint32_t)h << 16);
}

static inline uint16_t half_f32_to_bf16(float f)
{
    const uint32_t x = half_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: force quiet so it stays NaN */
        return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

#endif
