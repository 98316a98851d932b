/* Traits of the GGUF/ggml tensor element types (see ggml_type.h). */
#include "ggml_type.h"

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

LLORCH_API uint64_t ggml_type_block_elems(enum ggml_type t)
{
    const struct type_traits *tt = traits_of(t);
    return tt ? tt->blck : 0;
}

LLORCH_API uint64_t ggml_type_block_bytes(enum ggml_type t)
{
    const struct type_traits *tt = traits_of(t);
    return tt ? tt->bytes : 0;
}

LLORCH_API bool ggml_type_known(enum ggml_type t)
{
    return traits_of(t) != NULL;
}

LLORCH_API const char *ggml_type_name(enum ggml_type t)
{
    const struct type_traits *tt = traits_of(t);
    return tt ? tt->name : "unknown";
}

LLORCH_API int ggml_type_row_bytes(enum ggml_type t, uint64_t n, uint64_t *out)
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
