/* GGUF/ggml tensor element types and their traits (elements and bytes per
 * block, names): shared by the GGUF reader, quantisation and the kernels,
 * depending on none of them. */
#ifndef LLORCH_GGML_TYPE_H
#define LLORCH_GGML_TYPE_H

#include <stdbool.h>
#include <stdint.h>

/* Tensor element types, numbered as ggml numbers them. */
enum ggml_type {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6,
    GGML_TYPE_Q5_1 = 7,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10,
    GGML_TYPE_Q3_K = 11,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_Q8_K = 15,
    GGML_TYPE_BF16 = 30,
};

/* Elements per block (1 for F32/F16/BF16) and bytes per block; 0 for an
 * unknown type. */
uint64_t ggml_type_block_elems(enum ggml_type t);
uint64_t ggml_type_block_bytes(enum ggml_type t);
bool ggml_type_known(enum ggml_type t);
const char *ggml_type_name(enum ggml_type t);

/* Bytes of a row of n elements, or LLORCH_E* (<0) if n is not a multiple of
 * the block size or the type is unknown. */
int ggml_type_row_bytes(enum ggml_type t, uint64_t n, uint64_t *out);

#endif
