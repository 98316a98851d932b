/* Public types shared by the engine, the server and the tools. */
#ifndef LLORCH_LLORCH_H
#define LLORCH_LLORCH_H

#include <stdint.h>

#include "llorch/error.h"

/* Runtime type of packed weights (--dtype). */
enum llorch_dtype {
    LLORCH_DTYPE_AUTO = 0, /* int8 for quantised files, bf16 for f16/bf16, f32 for f32 */
    LLORCH_DTYPE_F32,
    LLORCH_DTYPE_BF16,
    LLORCH_DTYPE_INT8,
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
