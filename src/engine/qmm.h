/* Matmuls over weights kept in the file's own class: y[m, n_out] = x[m, n_in] Wᵀ
 * with W's rows in their GGUF block layout (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
 * Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), read from a buffer the weight owns on huge
 * pages (above the scalar level the block types' rows are interleaved 8 at a
 * time, padded to a multiple of 8 rows; rows in the file's layout of 2 MiB
 * or more are copied as they are: qmm_weight_part_copied) or, below 2 MiB in
 * the file's layout, in place from the file mapping.
 * Activations are rounded per row as llama.cpp's CPU backend rounds them for
 * the weight type (f16 / bf16 values, Q8_0 blocks of 32 with their sums for
 * the 32-element types, Q8_K blocks of 256 with 16-element sums for the K
 * types).
 *
 * Every output element is one dot product in a fixed order that does not
 * depend on m, on tiling or on the worker (batch invariance), and every
 * instruction-set level computes the same bits as the scalar reference:
 *   float types: 8 f32 lanes, lane t takes elements i with i % 8 == t by
 *     fused multiply-add (the tail padded with zeros), then
 *     hsum8(a) = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7));
 *   Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: each block's sum exact in integers (the
 *     offsets of Q4_0/Q5_0 included), then one chain per output,
 *     acc = fma(d_w * d_x, (float)block_sum, acc), block after block, and
 *     Q4_1/Q5_1's m in a second chain accm = fma(m_w, s_x, accm), the result
 *     acc + accm (one lane per weight row in the interleaved kernels);
 *   Q4_K, Q5_K, Q6_K: per superblock P = sum over sub-blocks of scale x
 *     sum of q x, exact in integers (Q6_K's q - 32 included), then
 *     acc = fma(d_x * d_w, (float)P, acc); Q4_K/Q5_K's mins in a second
 *     chain accm = fma(d_x * dmin, (float)sum_s m_s x_sum_s, accm), and the
 *     result acc - accm.
 * tests/test_qmm.c checks every level against the scalar one bit for bit. */
#ifndef LLORCH_QMM_H
#define LLORCH_QMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "kernels.h"
#include "tpool.h"

/* Consecutive output rows of one tensor type: n_rows rows of n_in elements
 * in GGUF's block layout. owned, when set, is freed with the weight (a
 * converted copy); otherwise data must outlive the weight (the mapping). */
struct qmm_part {
    enum ggml_type type;
    const void *data;
    int64_t n_rows;
    void *owned;
};

struct qmm_weight;

/* Whether type t has kernels (the 11 types above). */
bool qmm_type_supported(enum ggml_type t);

/* Whether qmm_weight_new takes level isa on this CPU: every level
 * kernels_get() runs, and avxvnni on any AVX2 CPU, where its block kernels
 * compute vpdpbusd's sums with AVX2 instructions (same bits, slower; the
 * engine never picks it, tests check the VNNI kernels with it). */
bool qmm_level_runs(enum kernels_isa isa);

/* A weight of up to QMM_MAX_PARTS parts stacked by rows (q|k|v, gate|up);
 * qmm_level_runs(isa) must hold. The repacking or copying of the parts runs
 * on pool (NULL: on the caller). On error the owned buffers of parts are
 * freed too. */
#define QMM_MAX_PARTS 4
int qmm_weight_new(struct qmm_weight **out, const struct qmm_part *parts, int n_parts, int64_t n_in,
                   enum kernels_isa isa, struct tpool *pool);
void qmm_weight_free(struct qmm_weight *w); /* NULL is safe */
/* Whether part i was repacked into memory of the weight's own (the level's
 * grouped layouts): the caller may then release the part's file pages. */
bool qmm_weight_part_copied(const struct qmm_weight *w, int part);
int64_t qmm_weight_n_out(const struct qmm_weight *w);
uint64_t qmm_weight_bytes(const struct qmm_weight *w); /* bytes read per use */
const char *qmm_weight_impl(const struct qmm_weight *w); /* "llorch:avx2 q4_K+q6_K" (avxvnni-emulated) */

/* Scratch qmm_run needs for m rows (rounded activations). */
size_t qmm_act_bytes(const struct qmm_weight *w, int64_t m);

/* y = x Wᵀ, y row-major [m, n_out]. act: qmm_act_bytes(w, m) bytes, 64-byte
 * aligned. Driver thread (or no pool); allocates nothing. */
int qmm_run(const struct qmm_weight *w, const float *x, float *y, int64_t m, void *act,
            struct tpool *pool);

/* One row, one output: for tests. */
float qmm_dot_row(const struct qmm_weight *w, int64_t row, const float *x, void *act);

#endif
