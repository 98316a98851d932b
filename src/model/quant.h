/* Dequantisation of GGUF/ggml tensor types to f32 exactly as the block
 * formats define them, reference quantisers, f16/bf16 scalar conversions
 * (the type traits: ggml_type.h). */
#ifndef LLORCH_QUANT_H
#define LLORCH_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "ggml_type.h"

/* Dequantises n elements (a multiple of the block size) of type t to f32. */
int quant_dequantize(enum ggml_type t, const void *src, float *dst, uint64_t n);

/* Whether quant_dequantize handles t: F32, F16, BF16, Q4_0, Q4_1, Q5_0,
 * Q5_1, Q8_0, Q4_K, Q5_K, Q6_K (other known types open and inspect only). */
bool quant_can_dequantize(enum ggml_type t);

/* Quantisers (used by llorch-synth and the round-trip tests) for every type
 * quant_dequantize handles: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
 * Q4_K, Q5_K, Q6_K. They write the bytes ggml's reference quantisers write
 * (what llama-quantize writes without an importance matrix). n is a multiple
 * of the block size (32, or 256 for the K types), else LLORCH_EINVAL. */
int quant_quantize(enum ggml_type t, const float *src, void *dst, uint64_t n);

float quant_f16_to_f32(uint16_t h);
uint16_t quant_f32_to_f16(float f);   /* round to nearest even */
float quant_bf16_to_f32(uint16_t h);
uint16_t quant_f32_to_bf16(float f);  /* round to nearest even, NaN kept */

#endif
