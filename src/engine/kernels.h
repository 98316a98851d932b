/* Numeric kernels of the forward pass: norms, RoPE, activations, softmax,
 * attention over the paged KV cache, f16/bf16 conversions. Each kernel has a
 * portable scalar version and AVX2 / AVX-512 versions; kernels_get() returns
 * the table for one instruction set, kernels_best() the fastest this CPU runs.
 * The arithmetic follows ggml's CPU backend (llama.cpp), so that an f32
 * engine lands within rounding of llama.cpp's logits. Nothing here
 * allocates; nothing here keeps state. */
#ifndef LLORCH_KERNELS_H
#define LLORCH_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/llorch.h"

enum kernels_isa {
    KERNELS_ISA_SCALAR,
    KERNELS_ISA_AVX2,    /* AVX2 + FMA + F16C */
    KERNELS_ISA_AVXVNNI, /* AVX2 + 256-bit vpdpbusd (AVX-VNNI, or AVX512-VNNI with VL) */
    KERNELS_ISA_AVX512,  /* AVX-512 F/BW/VL/DQ (its block matmuls use VNNI where present) */
    KERNELS_ISA_COUNT_,
};

enum kernels_rope_mode {
    KERNELS_ROPE_NORM,   /* rotate adjacent pairs (2i, 2i+1): llama */
    KERNELS_ROPE_NEOX,   /* rotate halves (i, i + n_rot/2): qwen2, phi3 */
};

/* The kernels whose speed matters, one table per instruction set. All
 * lengths are element counts; pointers need no particular alignment. */
struct kernels {
    enum kernels_isa isa;
    const char *name;
    float (*dot)(const float *a, const float *b, int64_t n);
    float (*dot_f16)(const float *a, const uint16_t *b, int64_t n);
    float (*dot_bf16)(const float *a, const uint16_t *b, int64_t n);
    void (*axpy)(float *y, float a, const float *x, int64_t n);          /* y += a*x */
    void (*axpy_f16)(float *y, float a, const uint16_t *x, int64_t n);
    void (*axpy_bf16)(float *y, float a, const uint16_t *x, int64_t n);
    /* y = x / sqrt(mean(x^2) + eps) * w: the square sum in double, as ggml */
    void (*rmsnorm)(float *y, const float *x, const float *w, int64_t n, float eps);
    /* y = (x - mean) / sqrt(var + eps) * w + b (b may be NULL) */
    void (*layernorm)(float *y, const float *x, const float *w, const float *b, int64_t n,
                      float eps);
    void (*add)(float *y, const float *x, int64_t n);                    /* y += x */
    void (*scale)(float *y, float s, int64_t n);                         /* y *= s */
    /* y = silu(g) * u; y may alias g or u */
    void (*swiglu)(float *y, const float *g, const float *u, int64_t n);
    /* In place: x = exp(x - max) / sum, the sum in double. Returns max. */
    float (*softmax)(float *x, int64_t n);
    void (*to_f16)(uint16_t *y, const float *x, int64_t n);              /* round to nearest even */
    void (*to_bf16)(uint16_t *y, const float *x, int64_t n);
    void (*from_f16)(float *y, const uint16_t *x, int64_t n);
};

/* The 256-bit vpdpbusd this CPU runs: the VEX form (AVX-VNNI), else the
 * EVEX one (AVX512-VNNI with VL), else none. */
enum kernels_vnni {
    KERNELS_VNNI_NONE,
    KERNELS_VNNI_VEX,
    KERNELS_VNNI_EVEX,
};
/* Asks cpuid (a VM exit, microseconds): for set-up, never per row. */
enum kernels_vnni kernels_vnni(void);

/* Table for an instruction set, or NULL when this CPU (or this build) cannot
 * run it. kernels_best() never returns NULL. The avxvnni level's table holds
 * the avx2 kernels: only the block matmuls (qmm.c) differ. */
const struct kernels *kernels_get(enum kernels_isa isa);
const struct kernels *kernels_best(void);
const char *kernels_isa_name(enum kernels_isa isa);

/* Scalar f16/bf16 conversions: src/model/half.h (the project's one pair). */

/* GELU as ggml's CPU backend computes it for f32 tensors: x <= -10 gives 0,
 * x >= 10 gives x, otherwise x is rounded to f16 and the f16 tanh-GELU of that
 * value is read from a 65536-entry table. kernels_gelu_table_init() fills the
 * table (once, at load). */
#define KERNELS_GELU_TABLE_SIZE 65536
void kernels_gelu_table_init(uint16_t *table);
void kernels_gelu(float *y, const float *x, int64_t n, const uint16_t *table);
/* Exact tanh-GELU in float, for comparison. */
float kernels_gelu_exact(float x);

/* RoPE. kernels_rope_cache() writes cs[2i] = cos(theta_i), cs[2i+1] =
 * sin(theta_i) for i < n_rot/2, theta_i = pos * freq_scale * base^(-2i/n_rot)
 * / factor_i (factors: llama3 rope_freqs, NULL for 1), computing the powers
 * by repeated float multiplication as ggml_rope_cache_init does.
 * kernels_rope() rotates the first n_rot dims of each of n_head heads of
 * head_dim floats in x (in place) by the cache of one position. */
void kernels_rope_cache(float *cs, int64_t pos, int64_t n_rot, float freq_base, float freq_scale,
                        const float *factors);
void kernels_rope(float *x, int64_t n_head, int64_t head_dim, int64_t n_rot, const float *cs,
                  enum kernels_rope_mode mode);

/* Rounding of activations before a matmul, as llama.cpp's CPU backend does
 * for weights stored in f16 (activations to f16) and Q8_0/Q4_0 (activations
 * quantised to Q8_0 blocks of 32 and dequantised back; n a multiple of 32). */
void kernels_round_f16(float *x, int64_t n);
void kernels_round_q8_0(float *x, int64_t n);

/* One query head of one sequence over the paged KV cache. The keys and
 * values of kv head g for position p live at
 *   k + blocks[p / block] * block_stride + (p % block) * row_bytes
 * (the caller adds g's offset to k and v), of head_dim elements of type. */
struct kernels_kv_view {
    const uint8_t *k;
    const uint8_t *v;
    size_t block_stride;      /* bytes between consecutive block ids */
    size_t row_bytes;         /* bytes between consecutive positions in a block */
    uint32_t block;           /* positions per block */
    enum llorch_kv_type type; /* F32, F16 or BF16 */
    const uint32_t *blocks;   /* the sequence's block table */
};

/* Causal attention of n_q query rows at positions pos0 .. pos0+n_q-1:
 * out_t = softmax(scale * q_t . K[0..pos0+t]) V[0..pos0+t]. q_t is
 * q + t*q_stride ([head_dim]), out_t is out + t*out_stride. scores needs
 * 2 * (pos0 + n_q) floats (a level may take two query rows at once). */
struct kernels_attn {
    const float *q;
    int64_t q_stride;
    float *out;
    int64_t out_stride;
    int64_t n_q;
    int64_t pos0;
    int64_t head_dim;
    float scale;
    const struct kernels_kv_view *kv;
    float *scores;
    /* GQA: n_head query heads (0 means 1) that share this K/V head, head i of
     * row t at q + t*q_stride + i*head_dim (out likewise). Each K/V row is
     * read and converted to f32 once for all of them. scores then needs
     * 2 * n_head * (pos0 + n_q) floats. Each (row, head) result depends only on
     * that row's q and the cache, not on n_q or n_head. */
    int64_t n_head;
};
void kernels_attention(const struct kernels *k, const struct kernels_attn *a);

#endif
