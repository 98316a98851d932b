/* Public types shared by the engine, the server and the tools. */
#ifndef LLORCH_LLORCH_H
#define LLORCH_LLORCH_H

#include <stdint.h>

#include "llorch/error.h"

/* Runtime type of packed weights (--dtype). */
enum llorch_dtype {
    LLORCH_DTYPE_AUTO = 0, /* the default: NATIVE */
    LLORCH_DTYPE_F32,
    LLORCH_DTYPE_BF16,
    LLORCH_DTYPE_INT8,
    LLORCH_DTYPE_NATIVE,   /* each weight in its file's own class (Q4_K as Q4_K, F16 as f16) */
};

/* Kernel level (--isa): AUTO is the best this CPU runs; a lower one can be
 * forced (tests, A/B runs, ChatLoop's enable_simd = false as SCALAR). */
enum llorch_isa {
    LLORCH_ISA_AUTO = 0,
    LLORCH_ISA_SCALAR,
    LLORCH_ISA_AVX2,    /* AVX2 + FMA + F16C */
    LLORCH_ISA_AVXVNNI, /* AVX2 + 256-bit vpdpbusd (AVX-VNNI, or AVX512-VNNI with VL) */
    LLORCH_ISA_AVX512,  /* AVX-512 F/BW/VL/DQ */
};

/* Element type of the KV cache (--kv). */
enum llorch_kv_type {
    LLORCH_KV_AUTO = 0, /* f32 when dtype is f32, else f16 */
    LLORCH_KV_F32,
    LLORCH_KV_F16,
    LLORCH_KV_BF16,
};

typedef int32_t llorch_token;

#endif
