/* oneDNN matmuls over weights packed once. y[m, n_out] = x[m, n_in] · Wᵀ.
 *
 * Layout. W ([n_out, n_in] f32 row-major) is oneDNN's B = Wᵀ [K = n_in,
 * N = n_out] with strides (1, K). N is cut into tiles of tile_n columns (the
 * last may be narrower: at most two tile shapes); each tile is reordered once
 * into the blocked layout oneDNN's brgemm matmul prefers for a fixed-M
 * primitive of that tile shape (weights memory desc with format_tag any). That
 * layout does not depend on M, so primitives for every row count share the
 * one packed buffer (created with the explicit packed desc, so oneDNN can
 * only pick a kernel for that exact layout).
 *
 * Parallelism. Rows are cut into blocks of MM_MBLOCK; one pool task runs one
 * (tile, row block) with one oneDNN primitive on one OpenMP thread
 * (omp_set_num_threads(1) on every pool thread, primitives created while the
 * creating thread's OpenMP limit is 1, so oneDNN never opens a parallel
 * region of its own). Primitives are cached per (tile shape, block rows):
 * a full block always uses the MM_MBLOCK-row primitive, the last block the
 * primitive for its exact row count; no run-time M.
 *
 * Batch invariance. Row r of y must not depend on m. Activation conversion
 * is per row. oneDNN 2.6's brgemm kernels sum K in chunks, each chunk from
 * zero in registers and then added to the partial result, and pick the chunk
 * size from the whole shape, dst row stride included: with dst written
 * straight into y (row stride n_out) the 1-row primitive rounds differently
 * from the others (measured for f32 and bf16). With a dense dst (row stride =
 * tile width) every row count 1..64 gives bit-identical rows (measured over
 * K in 1..5632, tile widths 1..2816, all three types). So each task writes a
 * dense [rows, tile] block into per-worker scratch and copies it into y (int8
 * does its rescale on the way). tests/test_matmul.c checks it bit for bit.
 *
 * Types. f32: x as is. bf16: x rounded to bf16 (nearest even), bf16 weights,
 * f32 output. int8: weights s8 with a per-output-channel scale
 * (max|w|/127, symmetric); each row of x quantised to u8 with its own scale
 * and zero point over [min(x,0), max(x,0)]; oneDNN accumulates u8·s8 in s32
 * and each task rescales its block on the way into y:
 *   y = (acc - zp_r · Σ_k q_w[n,k]) · scale_r · scale_n.
 * Without VNNI, x86 int8 kernels multiply with vpmaddubsw, which saturates
 * pairs of u8·s8 products in s16, so activations then use 7 bits (0..127).
 *
 * Memory. Per pool (tpool slot): the engine, one stream per worker, per-worker
 * scratchpad (user-managed), and the shared buffer for converted activations.
 * Per worker, three memory objects carry the src/dst/scratchpad pointers of
 * each execution (their handle is set per task). Their descriptor is a
 * placeholder: for primitives without run-time dims oneDNN 2.6 takes every
 * shape from the primitive descriptor and only the data handle from the
 * argument, which lets matmul_run create no memory object at all (the tests
 * would catch a oneDNN that checked). */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "llorch/error.h"
#include "half.h"
#include "matmul.h"
#include "util.h"

#define MM_MBLOCK 64
#define MM_ALIGN 64
#define MM_COL_ALIGN 64   /* oneDNN's N block on AVX-512 */
#define MM_COL_ALIGN_MIN 16
/* Below this many activation elements, converting on the caller beats a
 * fork-join. */
#define MM_CONVERT_SERIAL_MAX 65536
/* int8: |Σ (q_x - zp) q_w| <= 255 · 127 · K must fit the s32 accumulator. */
#define MM_INT8_MAX_K 65536
/* small-m GEMV: see its section */
#define MM_GEMV_MAX_M 4      /* int8 */
#define MM_GEMV_BF16_MAX_M 2 /* bf16: at 4 rows brgemm measured faster */
#define MM_GEMV_ROWS 4      /* int8 rows per pass over a block (16 accumulators) */
#define MM_GEMV_BF16_ROWS 2 /* bf16: 8 accumulators + 8 chunk totals */
/* 64-column blocks per task, at least: small tasks that work stealing can
 * rebalance measured 5-20 % faster than one contiguous range per worker */
#define MM_GEMV_GRAIN 2

struct mm_ctx {
    _Atomic int refs; /* the pool's slot + one per weight */
    int n_workers;
    dnnl_engine_t engine;
    dnnl_stream_t *stream;    /* [n_workers] */
    dnnl_memory_t *src_mem;   /* [n_workers] handle carriers */
    dnnl_memory_t *dst_mem;
    dnnl_memory_t *scr_mem;
    void **scratch;           /* [n_workers], scratch_bytes each */
    size_t scratch_bytes;
    void **dtile;             /* [n_workers] dense dst block, dtile_bytes each */
    size_t dtile_bytes;
    void *act;                /* converted activations, [rows, K] bf16 or u8 */
    size_t act_bytes;
    float *row_scale;         /* int8: [rows_cap] */
    int32_t *row_zp;
    int64_t rows_cap;
    int qmax;                 /* int8 activation levels: 255, or 127 without VNNI */
};

struct mm_weight {
    struct tpool *pool;
    struct mm_ctx *ctx;
    enum llorch_dtype dtype;
    int64_t n_out, n_in, max_m;
    int64_t tile_n, n_tiles;
    int n_shapes;                    /* 1, or 2 when the last tile is narrower */
    int64_t shape_cols[2];
    dnnl_memory_desc_t packed_md[2];
    dnnl_primitive_t prim[2][MM_MBLOCK + 1]; /* [shape][block rows], lazily */
    const char *impl;
    void *packed;
    uint64_t packed_bytes;
    uint64_t *tile_off;              /* [n_tiles] byte offset in packed */
    dnnl_memory_t *wmem;             /* [n_tiles] */
    float *col_scale;                /* int8: [n_out] */
    int32_t *col_sum;                /* int8: [n_out], Σ_k q_w[n, k] */
    /* small-m path (see "small-m GEMV"): set when the packed layout is the
     * kernel's, the CPU has the instructions and a probe gave brgemm's bits */
    bool gemv;
    int64_t gemv_chunk;              /* bf16: k summed per chunk */
    int64_t gemv_blocks;             /* 64-column blocks over all tiles */
    int64_t gemv_tile_blocks;        /* blocks in a full tile */
    int64_t gemv_stride[2];          /* bytes between 64-column blocks, per shape */
};

/* ---- small helpers ---- */

/* Whether m rows run the small-m GEMV (see its section). */
static inline bool mm_gemv_for(const struct mm_weight *w, int64_t m)
{
    return w->gemv &&
           m <= (w->dtype == LLORCH_DTYPE_INT8 ? MM_GEMV_MAX_M : MM_GEMV_BF16_MAX_M);
}

static int mm_err(dnnl_status_t s)
{
    switch (s) {
    case dnnl_success:
        return 0;
    case dnnl_out_of_memory:
        return LLORCH_ENOMEM;
    case dnnl_unimplemented:
        return LLORCH_EUNSUPPORTED;
    default:
        return LLORCH_EDNNL;
    }
}

static void *mm_alloc(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, MM_ALIGN, llorch_align_up(bytes ? bytes : 1, MM_ALIGN)) != 0)
        return NULL;
    return p;
}

/* oneDNN sizes its blocking (and its parallel regions) by the creating
 * thread's OpenMP limit: create every primitive with the limit at 1. */
static int mm_omp_single_begin(void)
{
    int saved = omp_get_max_threads();
    if (saved != 1)
        omp_set_num_threads(1);
    return saved;
}

static void mm_omp_single_end(int saved)
{
    if (saved != 1)
        omp_set_num_threads(saved);
}

static size_t mm_act_elem(enum llorch_dtype dt)
{
    return dt == LLORCH_DTYPE_BF16 ? 2 : dt == LLORCH_DTYPE_INT8 ? 1 : 0;
}

static dnnl_data_type_t mm_src_dt(enum llorch_dtype dt)
{
    return dt == LLORCH_DTYPE_BF16 ? dnnl_bf16 : dt == LLORCH_DTYPE_INT8 ? dnnl_u8 : dnnl_f32;
}

static dnnl_data_type_t mm_wei_dt(enum llorch_dtype dt)
{
    return dt == LLORCH_DTYPE_BF16 ? dnnl_bf16 : dt == LLORCH_DTYPE_INT8 ? dnnl_s8 : dnnl_f32;
}

static dnnl_data_type_t mm_dst_dt(enum llorch_dtype dt)
{
    return dt == LLORCH_DTYPE_INT8 ? dnnl_s32 : dnnl_f32;
}

/* ---- per-pool context ---- */

static void mm_ctx_release(struct mm_ctx *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    for (int i = 0; i < c->n_workers; i++) {
        if (c->stream && c->stream[i])
            dnnl_stream_destroy(c->stream[i]);
        if (c->src_mem && c->src_mem[i])
            dnnl_memory_destroy(c->src_mem[i]);
        if (c->dst_mem && c->dst_mem[i])
            dnnl_memory_destroy(c->dst_mem[i]);
        if (c->scr_mem && c->scr_mem[i])
            dnnl_memory_destroy(c->scr_mem[i]);
        if (c->scratch)
            free(c->scratch[i]);
        if (c->dtile)
            free(c->dtile[i]);
    }
    free(c->stream);
    free(c->src_mem);
    free(c->dst_mem);
    free(c->scr_mem);
    free(c->scratch);
    free(c->dtile);
    free(c->act);
    free(c->row_scale);
    free(c->row_zp);
    if (c->engine)
        dnnl_engine_destroy(c->engine);
    free(c);
}

static void mm_ctx_slot_free(void *obj)
{
    mm_ctx_release(obj);
}

static int mm_carrier_new(dnnl_memory_t *out, dnnl_engine_t engine)
{
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {MM_ALIGN};
    dnnl_status_t s = dnnl_memory_desc_init_by_tag(&md, 1, dims, dnnl_u8, dnnl_a);
    if (s == dnnl_success)
        s = dnnl_memory_create(out, &md, engine, DNNL_MEMORY_NONE);
    return mm_err(s);
}

/* The pool's context (created on first use and held by the pool's slot),
 * or, without a pool, a private one-worker context (held only by the weight
 * that asks: refs starts at 0). */
static int mm_ctx_get(struct tpool *pool, struct mm_ctx **out)
{
    struct mm_ctx *c = tpool_slot_get(pool, TPOOL_SLOT_MATMUL);
    if (c) {
        *out = c;
        return 0;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        return LLORCH_ENOMEM;
    atomic_init(&c->refs, 1);
    int n = tpool_size(pool);
    c->n_workers = n;
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    c->qmax = ((isa & dnnl_cpu_isa_avx512_core_vnni) == dnnl_cpu_isa_avx512_core_vnni ||
               (isa & dnnl_cpu_isa_avx2_vnni) == dnnl_cpu_isa_avx2_vnni)
                  ? 255
                  : 127;
    int err = mm_err(dnnl_engine_create(&c->engine, dnnl_cpu, 0));
    if (!err) {
        c->stream = calloc((size_t)n, sizeof(*c->stream));
        c->src_mem = calloc((size_t)n, sizeof(*c->src_mem));
        c->dst_mem = calloc((size_t)n, sizeof(*c->dst_mem));
        c->scr_mem = calloc((size_t)n, sizeof(*c->scr_mem));
        c->scratch = calloc((size_t)n, sizeof(*c->scratch));
        c->dtile = calloc((size_t)n, sizeof(*c->dtile));
        if (!c->stream || !c->src_mem || !c->dst_mem || !c->scr_mem || !c->scratch || !c->dtile)
            err = LLORCH_ENOMEM;
    }
    for (int i = 0; !err && i < n; i++) {
        err = mm_err(dnnl_stream_create(&c->stream[i], c->engine, dnnl_stream_default_flags));
        if (!err)
            err = mm_carrier_new(&c->src_mem[i], c->engine);
        if (!err)
            err = mm_carrier_new(&c->dst_mem[i], c->engine);
        if (!err)
            err = mm_carrier_new(&c->scr_mem[i], c->engine);
    }
    if (err) {
        mm_ctx_release(c);
        return err;
    }
    if (pool)
        tpool_slot_set(pool, TPOOL_SLOT_MATMUL, c, mm_ctx_slot_free);
    else
        atomic_store(&c->refs, 0);
    *out = c;
    return 0;
}

/* Grows every worker's buffer bufs[i] to bytes (driver thread, between
 * runs). */
static int mm_ctx_reserve(struct mm_ctx *c, void **bufs, size_t *have, size_t bytes)
{
    if (bytes <= *have)
        return 0;
    for (int i = 0; i < c->n_workers; i++) {
        void *p = mm_alloc(bytes);
        if (!p)
            return LLORCH_ENOMEM;
        free(bufs[i]);
        bufs[i] = p;
    }
    *have = bytes;
    return 0;
}

static int mm_ctx_reserve_act(struct mm_ctx *c, size_t act_bytes, int64_t rows)
{
    if (act_bytes > c->act_bytes) {
        void *p = mm_alloc(act_bytes);
        if (!p)
            return LLORCH_ENOMEM;
        free(c->act);
        c->act = p;
        c->act_bytes = act_bytes;
    }
    if (rows > c->rows_cap) {
        float *s = mm_alloc(sizeof(float) * (size_t)rows);
        int32_t *z = mm_alloc(sizeof(int32_t) * (size_t)rows);
        if (!s || !z) {
            free(s);
            free(z);
            return LLORCH_ENOMEM;
        }
        free(c->row_scale);
        free(c->row_zp);
        c->row_scale = s;
        c->row_zp = z;
        c->rows_cap = rows;
    }
    return 0;
}

/* ---- primitives ---- */

/* Matmul primitive descriptor for rows x cols of this weight; wmd is the
 * packed layout, or NULL to let oneDNN choose it (format_tag any). */
static int mm_pd_new(dnnl_primitive_desc_t *out, const struct mm_weight *w, int64_t rows,
                     int64_t cols, const dnnl_memory_desc_t *wmd)
{
    dnnl_memory_desc_t src, wei, dst;
    dnnl_dims_t sdims = {rows, w->n_in}, sstr = {w->n_in, 1};
    dnnl_dims_t wdims = {w->n_in, cols};
    dnnl_dims_t ddims = {rows, cols}, dstr = {cols, 1}; /* dense: see the top */
    dnnl_status_t s = dnnl_memory_desc_init_by_strides(&src, 2, sdims, mm_src_dt(w->dtype), sstr);
    if (s == dnnl_success) {
        if (wmd)
            wei = *wmd;
        else
            s = dnnl_memory_desc_init_by_tag(&wei, 2, wdims, mm_wei_dt(w->dtype),
                                             dnnl_format_tag_any);
    }
    if (s == dnnl_success)
        s = dnnl_memory_desc_init_by_strides(&dst, 2, ddims, mm_dst_dt(w->dtype), dstr);
    dnnl_matmul_desc_t desc;
    if (s == dnnl_success)
        s = dnnl_matmul_desc_init(&desc, &src, &wei, NULL, &dst);
    dnnl_primitive_attr_t attr = NULL;
    if (s == dnnl_success)
        s = dnnl_primitive_attr_create(&attr);
    if (s == dnnl_success)
        s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (s == dnnl_success) {
        int saved = mm_omp_single_begin();
        s = dnnl_primitive_desc_create(out, &desc, attr, w->ctx->engine, NULL);
        mm_omp_single_end(saved);
    }
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return mm_err(s);
}

/* Creates the primitive for (shape, rows) if missing; driver thread only. */
static int mm_prim_ensure(struct mm_weight *w, int shape, int64_t rows)
{
    if (w->prim[shape][rows])
        return 0;
    dnnl_primitive_desc_t pd;
    int err = mm_pd_new(&pd, w, rows, w->shape_cols[shape], &w->packed_md[shape]);
    if (err)
        return err;
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    err = mm_ctx_reserve(w->ctx, w->ctx->scratch, &w->ctx->scratch_bytes,
                         smd ? dnnl_memory_desc_get_size(smd) : 0);
    if (!err) {
        int saved = mm_omp_single_begin();
        err = mm_err(dnnl_primitive_create(&w->prim[shape][rows], pd));
        mm_omp_single_end(saved);
    }
    dnnl_primitive_desc_destroy(pd);
    return err;
}

static int mm_prims_for_m(struct mm_weight *w, int64_t m)
{
    if (mm_gemv_for(w, m))
        return 0; /* the GEMV needs no primitive */
    for (int sh = 0; sh < w->n_shapes; sh++) {
        int err = 0;
        if (m >= MM_MBLOCK)
            err = mm_prim_ensure(w, sh, MM_MBLOCK);
        if (!err && m % MM_MBLOCK)
            err = mm_prim_ensure(w, sh, m % MM_MBLOCK);
        if (err)
            return err;
    }
    return 0;
}

/* ---- conversions (per row: the same bits whatever else is in the batch) ---- */

static void mm_row_to_bf16(uint16_t *dst, const float *x, int64_t k)
{
    for (int64_t i = 0; i < k; i++)
        dst[i] = half_f32_to_bf16(x[i]);
}

/* u8 with zero point over [min(x, 0), max(x, 0)], so 0 is exact. Rounding
 * is to nearest even in both the AVX2 body and the scalar tail (cvtps2dq
 * under the default MXCSR, lrintf), so the bits do not depend on the path. */
static void mm_row_to_u8(uint8_t *dst, float *scale, int32_t *zp, const float *x, int64_t k,
                         int qmax)
{
    float lo = 0.0f, hi = 0.0f;
    int64_t i = 0;
#ifdef __AVX2__
    __m256 vlo = _mm256_setzero_ps(), vhi = _mm256_setzero_ps();
    for (; i + 8 <= k; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        vlo = _mm256_min_ps(vlo, v);
        vhi = _mm256_max_ps(vhi, v);
    }
    float tl[8], th[8];
    _mm256_storeu_ps(tl, vlo);
    _mm256_storeu_ps(th, vhi);
    for (int j = 0; j < 8; j++) {
        lo = tl[j] < lo ? tl[j] : lo;
        hi = th[j] > hi ? th[j] : hi;
    }
#endif
    for (; i < k; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    float s = (hi - lo) / (float)qmax;
    if (!(s > 0.0f) || !isfinite(s)) { /* all-zero row (or non-finite input) */
        memset(dst, 0, (size_t)k);
        *scale = 0.0f;
        *zp = 0;
        return;
    }
    float inv = 1.0f / s;
    int32_t z = (int32_t)lrintf(-lo * inv);
    z = z < 0 ? 0 : z > qmax ? qmax : z;
    i = 0;
#ifdef __AVX2__
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i vz = _mm256_set1_epi32(z), vmax = _mm256_set1_epi32(qmax);
    const __m256i vzero = _mm256_setzero_si256();
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; i + 32 <= k; i += 32) {
        __m256i q[4];
        for (int j = 0; j < 4; j++) {
            __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), vinv));
            v = _mm256_add_epi32(v, vz);
            q[j] = _mm256_min_epi32(_mm256_max_epi32(v, vzero), vmax);
        }
        /* packs work per 128-bit lane; the permute restores element order */
        __m256i p16a = _mm256_packus_epi32(q[0], q[1]);
        __m256i p16b = _mm256_packus_epi32(q[2], q[3]);
        __m256i p8 = _mm256_packus_epi16(p16a, p16b);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_permutevar8x32_epi32(p8, order));
    }
#endif
    for (; i < k; i++) {
        int32_t q = (int32_t)lrintf(x[i] * inv) + z;
        dst[i] = (uint8_t)(q < 0 ? 0 : q > qmax ? qmax : q);
    }
    *scale = s;
    *zp = z;
}

struct mm_run {
    const struct mm_weight *w;
    const float *x;
    float *y;
    int64_t m, n_mb;
    _Atomic int err;
};

static void mm_convert_rows(struct mm_run *r, int64_t b, int64_t e)
{
    const struct mm_weight *w = r->w;
    struct mm_ctx *c = w->ctx;
    int64_t k = w->n_in;
    for (int64_t i = b; i < e; i++) {
        if (w->dtype == LLORCH_DTYPE_BF16)
            mm_row_to_bf16((uint16_t *)c->act + i * k, r->x + i * k, k);
        else
            mm_row_to_u8((uint8_t *)c->act + i * k, &c->row_scale[i], &c->row_zp[i],
                         r->x + i * k, k, c->qmax);
    }
}

static void mm_convert_task(void *vctx, int64_t b, int64_t e, int worker)
{
    LLORCH_UNUSED(worker);
    mm_convert_rows(vctx, b, e);
}

/* Moves the dense [rows, cols] block of task scratch into y at (r0, c0);
 * int8 rescales s32 to f32 on the way. */
static void mm_block_store(const struct mm_weight *w, const void *blk, float *y, int64_t r0,
                           int64_t rows, int64_t c0, int64_t cols)
{
    const struct mm_ctx *c = w->ctx;
    for (int64_t i = 0; i < rows; i++) {
        float *out = y + (r0 + i) * w->n_out + c0;
        if (w->dtype != LLORCH_DTYPE_INT8) {
            memcpy(out, (const float *)blk + i * cols, sizeof(float) * (size_t)cols);
            continue;
        }
        const int32_t *acc = (const int32_t *)blk + i * cols;
        float sx = c->row_scale[r0 + i];
        int32_t zp = c->row_zp[r0 + i];
        const float *sw = w->col_scale + c0;
        const int32_t *cs = w->col_sum + c0;
        for (int64_t j = 0; j < cols; j++)
            out[j] = (float)(acc[j] - zp * cs[j]) * (sx * sw[j]);
    }
}

static void mm_gemm_task(void *vctx, int64_t b, int64_t e, int worker)
{
    struct mm_run *r = vctx;
    const struct mm_weight *w = r->w;
    struct mm_ctx *c = w->ctx;
    /* A pool thread's OpenMP limit starts at the machine's core count. */
    if (omp_get_max_threads() != 1)
        omp_set_num_threads(1);
    size_t xe = w->dtype == LLORCH_DTYPE_F32 ? sizeof(float) : mm_act_elem(w->dtype);
    const char *src_base = w->dtype == LLORCH_DTYPE_F32 ? (const char *)r->x : c->act;
    for (int64_t t = b; t < e; t++) {
        int64_t tile = t / r->n_mb, mb = t % r->n_mb;
        int64_t r0 = mb * MM_MBLOCK;
        int64_t rows = LLORCH_MIN(MM_MBLOCK, r->m - r0);
        int64_t c0 = tile * w->tile_n;
        int shape = (tile == w->n_tiles - 1 && w->n_shapes == 2) ? 1 : 0;
        dnnl_primitive_t p = w->prim[shape][rows];
        dnnl_status_t s =
            dnnl_memory_set_data_handle(c->src_mem[worker],
                                        (void *)(src_base + (size_t)(r0 * w->n_in) * xe));
        if (s == dnnl_success)
            s = dnnl_memory_set_data_handle(c->dst_mem[worker], c->dtile[worker]);
        if (s == dnnl_success)
            s = dnnl_memory_set_data_handle(c->scr_mem[worker], c->scratch[worker]);
        if (s == dnnl_success) {
            dnnl_exec_arg_t args[4] = {
                {DNNL_ARG_SRC, c->src_mem[worker]},
                {DNNL_ARG_WEIGHTS, w->wmem[tile]},
                {DNNL_ARG_DST, c->dst_mem[worker]},
                {DNNL_ARG_SCRATCHPAD, c->scr_mem[worker]},
            };
            s = dnnl_primitive_execute(p, c->stream[worker], 4, args);
        }
        if (s != dnnl_success) {
            int expect = 0;
            atomic_compare_exchange_strong(&r->err, &expect, mm_err(s));
            continue;
        }
        mm_block_store(w, c->dtile[worker], r->y, r0, rows, c0, w->shape_cols[shape]);
    }
}

/* ---- small-m GEMV (int8 and bf16) ----
 *
 * Decode at a handful of rows is bandwidth-bound, and there oneDNN 2.6's
 * brgemm kernels stream the weights below the machine's read bandwidth
 * (~60 of ~75 GB/s measured) and allocate on every execute. Up to
 * MM_GEMV_MAX_M (int8) or MM_GEMV_BF16_MAX_M (bf16) rows therefore run our own kernel over oneDNN's packed
 * layout as it is (no second copy). Per tile, 64-column blocks of
 *   int8: [K/64][16][64 n][4 k] bytes  (oneDNN's BA16a64b4a),
 *   bf16: [K/32][16][64 n][2 k] bf16   (BA16a64b2a),
 * K padded with zeros, so each 256-byte line holds 4 (2) consecutive k for
 * 64 columns: four vpdpbusd (vdpbf16ps) per row and line.
 *
 * Batch invariance needs the same bits as brgemm. int8: u8 · s8 summed in s32
 * without saturation is exact in any order, and the rescale is
 * mm_block_store's. bf16: brgemm sums K in chunks (each from zero, then added
 * to the running total; 512 or 1024 deep on oneDNN 2.6 depending on K) and
 * so does the kernel, over the padded K as brgemm does. Neither rule is
 * documented by oneDNN, so each weight proves it at load: one probe row
 * through oneDNN's one-row primitive and through the kernel (bf16: for each
 * candidate chunk) must agree bit for bit, else that weight keeps brgemm.
 * tests/test_matmul.c compares rows for every m as well. */

static bool mm_gemv_layout(const dnnl_memory_desc_t *md, enum llorch_dtype dt, int64_t k,
                           int64_t cols)
{
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    const int64_t kp = md->padded_dims[0], np = md->padded_dims[1];
    const int64_t kv = dt == LLORCH_DTYPE_INT8 ? 4 : 2; /* k per 32-bit lane */
    return md->ndims == 2 && md->data_type == mm_wei_dt(dt) &&
           md->format_kind == dnnl_blocked && md->offset0 == 0 && md->extra.flags == 0 &&
           b->inner_nblks == 3 && b->inner_blks[0] == 16 && b->inner_idxs[0] == 0 &&
           b->inner_blks[1] == 64 && b->inner_idxs[1] == 1 && b->inner_blks[2] == kv &&
           b->inner_idxs[2] == 0 && kp % (16 * kv) == 0 && kp >= k && np % 64 == 0 &&
           np >= cols && b->strides[0] == 16 * 64 * kv && b->strides[1] == kp * 64;
}

static bool mm_gemv_cpu(enum llorch_dtype dt)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw"))
        return false;
    return dt == LLORCH_DTYPE_INT8 ? __builtin_cpu_supports("avx512vnni")
                                   : __builtin_cpu_supports("avx512bf16");
}

#define MM_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define MM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

/* 256 bytes of one weight line. No software prefetch: the blocks are read
 * front to back and the hardware prefetcher keeps up; prefetching 512-4096
 * bytes ahead measured 3-20 % slower on Zen 5. */
#define MM_GEMV_LOAD_LINE(wp, w0, w1, w2, w3)                                                     \
    do {                                                                                       \
        w0 = _mm512_load_si512((const char *)(wp));                                            \
        w1 = _mm512_load_si512((const char *)(wp) + 64);                                       \
        w2 = _mm512_load_si512((const char *)(wp) + 128);                                      \
        w3 = _mm512_load_si512((const char *)(wp) + 192);                                      \
    } while (0)

static inline __mmask16 mm_gemv_mask(int64_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

static inline int32_t mm_load_u32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* n < 4 bytes, zero-extended to a 32-bit lane */
static inline int32_t mm_load_tail_u8(const uint8_t *p, int64_t n)
{
    uint8_t b[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < n; i++)
        b[i] = p[i];
    return mm_load_u32(b);
}

/* Columns [col, col + 16) of row `row` under mask mk, from s32 sums:
 * y = (acc - zp · Σ q_w) · (scale_r · scale_n), as mm_block_store. */
static inline __attribute__((always_inline)) MM_VNNI_TARGET void
mm_gemv_int8_store(const struct mm_weight *w, float *y, __m512i acc, int64_t row, int64_t col,
                   __mmask16 mk)
{
    const struct mm_ctx *c = w->ctx;
    const __m512i cs = _mm512_maskz_loadu_epi32(mk, w->col_sum + col);
    const __m512 s = _mm512_mul_ps(_mm512_set1_ps(c->row_scale[row]),
                                   _mm512_maskz_loadu_ps(mk, w->col_scale + col));
    const __m512i zp = _mm512_set1_epi32(c->row_zp[row]);
    const __m512i v = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zp, cs));
    _mm512_mask_storeu_ps(y + row * w->n_out + col, mk, _mm512_mul_ps(_mm512_cvtepi32_ps(v), s));
}

/* int8: R rows (a constant once inlined, so the accumulators stay in
 * registers) of one block, then y = (acc - zp · Σ q_w) · (scale_r · scale_n)
 * as mm_block_store. */
static inline __attribute__((always_inline)) MM_VNNI_TARGET void
mm_gemv_int8_rows(const struct mm_weight *w, const int8_t *wb, const uint8_t *x, float *y,
                  int64_t r0, const int R, int64_t c0, int64_t ncols)
{
    const int64_t k = w->n_in, nq = k / 4;
    __m512i acc[MM_GEMV_ROWS][4];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 4; j++)
            acc[r][j] = _mm512_setzero_si512();
    const int8_t *wp = wb;
    __m512i w0, w1, w2, w3;
#define MM_GEMV_INT8_LINE(quad_of_row)                                                         \
    do {                                                                                       \
        MM_GEMV_LOAD_LINE(wp, w0, w1, w2, w3);                                                 \
        for (int r = 0; r < R; r++) {                                                          \
            const __m512i xb = _mm512_set1_epi32(quad_of_row);                                 \
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], xb, w0);                                \
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], xb, w1);                                \
            acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], xb, w2);                                \
            acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], xb, w3);                                \
        }                                                                                      \
    } while (0)
    for (int64_t q = 0; q < nq; q++, wp += 256)
        MM_GEMV_INT8_LINE(mm_load_u32(x + r * k + 4 * q));
    if (k % 4) /* the last partial quad: the missing x are 0 */
        MM_GEMV_INT8_LINE(mm_load_tail_u8(x + r * k + 4 * nq, k % 4));
#undef MM_GEMV_INT8_LINE
    for (int j = 0; j < 4 && ncols - 16 * j > 0; j++)
        for (int r = 0; r < R; r++)
            mm_gemv_int8_store(w, y, acc[r][j], r0 + r, c0 + 16 * j, mm_gemv_mask(ncols - 16 * j));
}

/* bf16: R rows of one block; K pairs in chunks of `chunk` k, each summed from
 * zero and then added to the total, over the padded K (kp). */
static inline __attribute__((always_inline)) MM_BF16_TARGET void
mm_gemv_bf16_rows(const struct mm_weight *w, const uint16_t *wb, const uint16_t *x, float *y,
                  int64_t r0, const int R, int64_t c0, int64_t ncols, int64_t kp, int64_t chunk)
{
    const int64_t k = w->n_in, full = k / 2, pairs = kp / 2, step = chunk / 2;
    __m512 tot[MM_GEMV_BF16_ROWS][4], acc[MM_GEMV_BF16_ROWS][4];
    __m512i w0, w1, w2, w3;
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 4; j++)
            tot[r][j] = _mm512_setzero_ps(); /* replaced (not added to) by the first chunk */
    for (int64_t p0 = 0; p0 < pairs; p0 += step) {
        for (int r = 0; r < R; r++)
            for (int j = 0; j < 4; j++)
                acc[r][j] = _mm512_setzero_ps();
        const int64_t end = LLORCH_MIN(p0 + step, pairs);
        const uint16_t *wp = wb + p0 * 128;
#define MM_GEMV_BF16_LINE(pair_of_row)                                                         \
    do {                                                                                       \
        MM_GEMV_LOAD_LINE(wp, w0, w1, w2, w3);                                                 \
        for (int r = 0; r < R; r++) {                                                          \
            const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair_of_row);                      \
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xb, (__m512bh)w0);                         \
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xb, (__m512bh)w1);                         \
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], xb, (__m512bh)w2);                         \
            acc[r][3] = _mm512_dpbf16_ps(acc[r][3], xb, (__m512bh)w3);                         \
        }                                                                                      \
    } while (0)
        int64_t p = p0;
        for (; p < LLORCH_MIN(end, full); p++, wp += 128)
            MM_GEMV_BF16_LINE(mm_load_u32(x + r * k + 2 * p));
        for (; p < end; p++, wp += 128) /* past K: zeros, as in the padded layout */
            MM_GEMV_BF16_LINE(2 * p < k ? (int32_t)x[r * k + 2 * p] : 0);
#undef MM_GEMV_BF16_LINE
        for (int r = 0; r < R; r++)
            for (int j = 0; j < 4; j++)
                tot[r][j] = p0 == 0 ? acc[r][j] : _mm512_add_ps(tot[r][j], acc[r][j]);
    }
    for (int j = 0; j < 4 && ncols - 16 * j > 0; j++)
        for (int r = 0; r < R; r++)
            _mm512_mask_storeu_ps(y + (r0 + r) * w->n_out + c0 + 16 * j,
                                  mm_gemv_mask(ncols - 16 * j), tot[r][j]);
}

struct mm_gemv_blk {
    const char *wb;   /* the block's weights */
    int64_t c0, ncols;
    int shape;
};

static inline struct mm_gemv_blk mm_gemv_block(const struct mm_weight *w, int64_t g)
{
    const int64_t tile = g / w->gemv_tile_blocks, j = g % w->gemv_tile_blocks;
    const int shape = (tile == w->n_tiles - 1 && w->n_shapes == 2) ? 1 : 0;
    return (struct mm_gemv_blk){
        .wb = (const char *)w->packed + w->tile_off[tile] +
              (uint64_t)j * (uint64_t)w->gemv_stride[shape],
        .c0 = tile * w->tile_n + 64 * j,
        .ncols = LLORCH_MIN(64, w->shape_cols[shape] - 64 * j),
        .shape = shape,
    };
}

/* int8, one row, two neighbouring full blocks at once: two weight streams
 * in flight per core (measured +5..13 % over one block at a time at m = 1,
 * which brings the kernel level with brgemm there). */
static inline __attribute__((always_inline)) MM_VNNI_TARGET void
mm_gemv_int8_row_2blocks(const struct mm_weight *w, const int8_t *wa, const int8_t *wb,
                         const uint8_t *x, float *y, int64_t c0)
{
    const int64_t k = w->n_in, nq = k / 4;
    __m512i a[8];
    for (int j = 0; j < 8; j++)
        a[j] = _mm512_setzero_si512();
    for (int64_t q = 0; q <= nq; q++) {
        int32_t quad;
        if (q < nq)
            quad = mm_load_u32(x + 4 * q);
        else if (k % 4)
            quad = mm_load_tail_u8(x + 4 * nq, k % 4);
        else
            break;
        const __m512i xb = _mm512_set1_epi32(quad);
        const int8_t *pa = wa + 256 * q, *pb = wb + 256 * q;
        a[0] = _mm512_dpbusd_epi32(a[0], xb, _mm512_load_si512(pa));
        a[1] = _mm512_dpbusd_epi32(a[1], xb, _mm512_load_si512(pa + 64));
        a[2] = _mm512_dpbusd_epi32(a[2], xb, _mm512_load_si512(pa + 128));
        a[3] = _mm512_dpbusd_epi32(a[3], xb, _mm512_load_si512(pa + 192));
        a[4] = _mm512_dpbusd_epi32(a[4], xb, _mm512_load_si512(pb));
        a[5] = _mm512_dpbusd_epi32(a[5], xb, _mm512_load_si512(pb + 64));
        a[6] = _mm512_dpbusd_epi32(a[6], xb, _mm512_load_si512(pb + 128));
        a[7] = _mm512_dpbusd_epi32(a[7], xb, _mm512_load_si512(pb + 192));
    }
    for (int j = 0; j < 8; j++)
        mm_gemv_int8_store(w, y, a[j], 0, c0 + 16 * j, (__mmask16)0xffff);
}

static MM_VNNI_TARGET void mm_gemv_int8_task(void *vctx, int64_t b, int64_t e, int worker)
{
    LLORCH_UNUSED(worker);
    const struct mm_run *run = vctx;
    const struct mm_weight *w = run->w;
    for (int64_t g = b; g < e; g++) {
        const struct mm_gemv_blk k = mm_gemv_block(w, g);
        const int8_t *wb = (const int8_t *)k.wb;
        if (run->m == 1 && g + 1 < e && k.ncols == 64) {
            const struct mm_gemv_blk k2 = mm_gemv_block(w, g + 1);
            if (k2.ncols == 64 && k2.c0 == k.c0 + 64) {
                mm_gemv_int8_row_2blocks(w, wb, (const int8_t *)k2.wb, w->ctx->act, run->y,
                                         k.c0);
                g++;
                continue;
            }
        }
        for (int64_t r0 = 0; r0 < run->m; r0 += MM_GEMV_ROWS) {
            const uint8_t *x = (const uint8_t *)w->ctx->act + r0 * w->n_in;
            switch (LLORCH_MIN(MM_GEMV_ROWS, run->m - r0)) {
            case 1:
                mm_gemv_int8_rows(w, wb, x, run->y, r0, 1, k.c0, k.ncols);
                break;
            case 2:
                mm_gemv_int8_rows(w, wb, x, run->y, r0, 2, k.c0, k.ncols);
                break;
            case 3:
                mm_gemv_int8_rows(w, wb, x, run->y, r0, 3, k.c0, k.ncols);
                break;
            default:
                mm_gemv_int8_rows(w, wb, x, run->y, r0, 4, k.c0, k.ncols);
                break;
            }
        }
    }
}

static MM_BF16_TARGET void mm_gemv_bf16_task(void *vctx, int64_t b, int64_t e, int worker)
{
    LLORCH_UNUSED(worker);
    const struct mm_run *run = vctx;
    const struct mm_weight *w = run->w;
    for (int64_t g = b; g < e; g++) {
        const struct mm_gemv_blk k = mm_gemv_block(w, g);
        const uint16_t *wb = (const uint16_t *)k.wb;
        const int64_t kp = w->packed_md[k.shape].padded_dims[0];
        for (int64_t r0 = 0; r0 < run->m; r0 += MM_GEMV_BF16_ROWS) {
            const uint16_t *x = (const uint16_t *)w->ctx->act + r0 * w->n_in;
            if (run->m - r0 >= 2)
                mm_gemv_bf16_rows(w, wb, x, run->y, r0, 2, k.c0, k.ncols, kp, w->gemv_chunk);
            else
                mm_gemv_bf16_rows(w, wb, x, run->y, r0, 1, k.c0, k.ncols, kp, w->gemv_chunk);
        }
    }
}

static void mm_run_gemv(struct mm_run *r, struct tpool *pool)
{
    const struct mm_weight *w = r->w;
    tpool_parallel_for(pool, w->gemv_blocks, MM_GEMV_GRAIN,
                       w->dtype == LLORCH_DTYPE_INT8 ? mm_gemv_int8_task : mm_gemv_bf16_task, r);
}

static int mm_run_brgemm(struct mm_run *r, struct tpool *pool)
{
    tpool_parallel_for(pool, r->w->n_tiles * r->n_mb, 1, mm_gemm_task, r);
    return atomic_load(&r->err);
}

static void mm_convert(struct mm_run *r, struct tpool *pool)
{
    if (r->w->dtype == LLORCH_DTYPE_F32)
        return;
    if (r->m * r->w->n_in <= MM_CONVERT_SERIAL_MAX)
        mm_convert_rows(r, 0, r->m);
    else
        tpool_parallel_for(pool, r->m, 1, mm_convert_task, r);
}

/* Decides the small-m path once the weights are packed: the layout must be
 * the kernel's, and a probe row must give brgemm's bits (see the top of this
 * section). Driver thread. */
static int mm_gemv_setup(struct mm_weight *w, bool allowed)
{
    w->gemv = false;
    if (!allowed || w->dtype == LLORCH_DTYPE_F32 || !mm_gemv_cpu(w->dtype) ||
        (w->dtype == LLORCH_DTYPE_INT8 && w->ctx->qmax != 255))
        return 0;
    for (int sh = 0; sh < w->n_shapes; sh++) {
        if (!mm_gemv_layout(&w->packed_md[sh], w->dtype, w->n_in, w->shape_cols[sh]))
            return 0;
        w->gemv_stride[sh] = w->packed_md[sh].format_desc.blocking.strides[1] *
                             (int64_t)mm_act_elem(w->dtype);
    }
    w->gemv_tile_blocks = (w->tile_n + 63) / 64;
    /* the last tile may be narrower: its blocks end the index range */
    w->gemv_blocks = (w->n_tiles - 1) * w->gemv_tile_blocks +
                     (w->shape_cols[w->n_shapes - 1] + 63) / 64;

    /* the probe: a fixed pseudo-random row with both signs and a spread of
     * magnitudes, through brgemm's one-row primitive and through the kernel */
    for (int sh = 0; sh < w->n_shapes; sh++) {
        int err = mm_prim_ensure(w, sh, 1);
        if (err)
            return err;
    }
    float *x = malloc(sizeof(float) * (size_t)w->n_in);
    float *ref = malloc(sizeof(float) * (size_t)w->n_out);
    float *got = malloc(sizeof(float) * (size_t)w->n_out);
    int err = x && ref && got ? 0 : LLORCH_ENOMEM;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; !err && i < w->n_in; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        const double u = (double)(s >> 11) * 0x1p-53; /* [0, 1) */
        x[i] = (float)((u - 0.5) * exp2(8.0 * u - 4.0));
    }
    struct mm_run r = {.w = w, .x = x, .y = ref, .m = 1, .n_mb = 1};
    atomic_init(&r.err, 0);
    if (!err) {
        mm_convert(&r, w->pool);
        err = mm_run_brgemm(&r, w->pool);
    }
    /* bf16 chunk candidates: the whole padded K first, then oneDNN 2.6's
     * 1024 and 512, then other powers of two */
    static const int64_t chunks[] = {0, 1024, 512, 256, 2048, 128, 4096, 64, 8192};
    const int n_try = w->dtype == LLORCH_DTYPE_INT8 ? 1 : (int)(sizeof chunks / sizeof chunks[0]);
    for (int i = 0; !err && i < n_try && !w->gemv; i++) {
        w->gemv_chunk = chunks[i] ? chunks[i] : w->packed_md[0].padded_dims[0];
        r.y = got;
        mm_run_gemv(&r, w->pool);
        w->gemv = memcmp(got, ref, sizeof(float) * (size_t)w->n_out) == 0;
    }
    for (int sh = 0; w->gemv && sh < w->n_shapes; sh++) { /* one row never reaches brgemm now */
        dnnl_primitive_destroy(w->prim[sh][1]);
        w->prim[sh][1] = NULL;
    }
    free(x);
    free(ref);
    free(got);
    return err;
}

/* ---- packing ---- */

struct mm_pack {
    struct mm_weight *w;
    const float *src;
    dnnl_primitive_t reorder[2];
    _Atomic int err;
};

static void mm_pack_task(void *vctx, int64_t b, int64_t e, int worker)
{
    struct mm_pack *pk = vctx;
    struct mm_weight *w = pk->w;
    int64_t k = w->n_in;
    if (omp_get_max_threads() != 1)
        omp_set_num_threads(1);
    for (int64_t t = b; t < e; t++) {
        int shape = (t == w->n_tiles - 1 && w->n_shapes == 2) ? 1 : 0;
        int64_t cols = w->shape_cols[shape], c0 = t * w->tile_n;
        const float *rows = pk->src + c0 * k; /* W[c0 .. c0+cols, :] */
        void *plain = (void *)rows;
        int8_t *q = NULL;
        int err = 0;
        if (w->dtype == LLORCH_DTYPE_INT8) {
            /* symmetric per output channel: q = round(w / s), s = max|w| / 127 */
            q = malloc((size_t)(cols * k));
            if (!q)
                err = LLORCH_ENOMEM;
            for (int64_t n = 0; !err && n < cols; n++) {
                const float *wr = rows + n * k;
                float amax = 0.0f;
                for (int64_t i = 0; i < k; i++)
                    amax = fabsf(wr[i]) > amax ? fabsf(wr[i]) : amax;
                float s = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
                int32_t sum = 0;
                for (int64_t i = 0; i < k; i++) {
                    long v = lrintf(wr[i] * inv);
                    v = v < -127 ? -127 : v > 127 ? 127 : v;
                    q[n * k + i] = (int8_t)v;
                    sum += (int32_t)v;
                }
                w->col_scale[c0 + n] = s;
                w->col_sum[c0 + n] = sum;
            }
            plain = q;
        }
        dnnl_memory_desc_t umd;
        dnnl_dims_t dims = {k, cols}, str = {1, k};
        dnnl_memory_t um = NULL;
        if (!err)
            err = mm_err(dnnl_memory_desc_init_by_strides(
                &umd, 2, dims, w->dtype == LLORCH_DTYPE_INT8 ? dnnl_s8 : dnnl_f32, str));
        if (!err)
            err = mm_err(dnnl_memory_create(&um, &umd, w->ctx->engine, plain));
        if (!err) {
            dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, um}, {DNNL_ARG_TO, w->wmem[t]}};
            err = mm_err(dnnl_primitive_execute(pk->reorder[shape], w->ctx->stream[worker], 2,
                                                args));
        }
        if (um)
            dnnl_memory_destroy(um);
        free(q);
        if (err) {
            int expect = 0;
            atomic_compare_exchange_strong(&pk->err, &expect, err);
        }
    }
}

static int64_t mm_default_tile_n(int64_t n_out, int workers)
{
    int64_t tiles = workers;
    int64_t blocks = (n_out + MM_COL_ALIGN - 1) / MM_COL_ALIGN;
    if (blocks % tiles == 0)
        return blocks / tiles * MM_COL_ALIGN;
    int64_t t = (n_out + tiles - 1) / tiles;
    return (int64_t)llorch_align_up((uint64_t)t, MM_COL_ALIGN_MIN);
}

static int mm_weight_pack(struct mm_weight *w, const float *src)
{
    struct mm_ctx *c = w->ctx;
    /* Let oneDNN choose the layout of each tile shape (for a full row
     * block; the layout does not depend on M, and every later primitive is
     * created with it explicitly). */
    for (int sh = 0; sh < w->n_shapes; sh++) {
        dnnl_primitive_desc_t pd;
        int err = mm_pd_new(&pd, w, LLORCH_MIN(MM_MBLOCK, w->max_m), w->shape_cols[sh], NULL);
        if (err)
            return err;
        w->packed_md[sh] = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        if (sh == 0) {
            const char *impl = NULL;
            dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
            /* oneDNN's implementation names are static strings */
            w->impl = impl ? impl : "unknown";
        }
        dnnl_primitive_desc_destroy(pd);
    }
    uint64_t off = 0;
    for (int64_t t = 0; t < w->n_tiles; t++) {
        int sh = (t == w->n_tiles - 1 && w->n_shapes == 2) ? 1 : 0;
        w->tile_off[t] = off;
        off += llorch_align_up(dnnl_memory_desc_get_size(&w->packed_md[sh]), MM_ALIGN);
    }
    w->packed_bytes = off;
    w->packed = mm_alloc(off);
    if (!w->packed)
        return LLORCH_ENOMEM;
    for (int64_t t = 0; t < w->n_tiles; t++) {
        int sh = (t == w->n_tiles - 1 && w->n_shapes == 2) ? 1 : 0;
        int err = mm_err(dnnl_memory_create(&w->wmem[t], &w->packed_md[sh], c->engine,
                                            (char *)w->packed + w->tile_off[t]));
        if (err)
            return err;
    }

    struct mm_pack pk = {.w = w, .src = src};
    atomic_init(&pk.err, 0);
    int err = 0;
    for (int sh = 0; !err && sh < w->n_shapes; sh++) {
        dnnl_memory_desc_t umd;
        dnnl_dims_t dims = {w->n_in, w->shape_cols[sh]}, str = {1, w->n_in};
        err = mm_err(dnnl_memory_desc_init_by_strides(
            &umd, 2, dims, w->dtype == LLORCH_DTYPE_INT8 ? dnnl_s8 : dnnl_f32, str));
        dnnl_primitive_desc_t rpd = NULL;
        int saved = mm_omp_single_begin();
        if (!err)
            err = mm_err(dnnl_reorder_primitive_desc_create(&rpd, &umd, c->engine,
                                                            &w->packed_md[sh], c->engine, NULL));
        if (!err)
            err = mm_err(dnnl_primitive_create(&pk.reorder[sh], rpd));
        mm_omp_single_end(saved);
        if (rpd)
            dnnl_primitive_desc_destroy(rpd);
    }
    if (!err) {
        tpool_parallel_for(w->pool, w->n_tiles, 1, mm_pack_task, &pk);
        err = atomic_load(&pk.err);
    }
    for (int sh = 0; sh < 2; sh++)
        if (pk.reorder[sh])
            dnnl_primitive_destroy(pk.reorder[sh]);
    return err;
}

/* ---- public API ---- */

LLORCH_API int matmul_weight_new_tiled(struct mm_weight **out, const float *src, int64_t n_out,
                                       int64_t n_in, enum llorch_dtype dtype, int64_t max_m,
                                       struct tpool *pool, const struct mm_tiling *tiling)
{
    if (!out)
        return LLORCH_EINVAL;
    *out = NULL;
    if (!src || n_out < 1 || n_in < 1 || max_m < 1)
        return LLORCH_EINVAL;
    if (dtype != LLORCH_DTYPE_F32 && dtype != LLORCH_DTYPE_BF16 && dtype != LLORCH_DTYPE_INT8)
        return LLORCH_EINVAL;
    if (tpool_in_task())
        return LLORCH_EINVAL;
    uint64_t elems, act;
    if (llorch_mul_overflows((uint64_t)n_out, (uint64_t)n_in, &elems) || elems > INT64_MAX / 4 ||
        llorch_mul_overflows((uint64_t)max_m, (uint64_t)n_in, &act) || act > INT64_MAX / 4 ||
        llorch_mul_overflows((uint64_t)max_m, (uint64_t)n_out, &act) || act > INT64_MAX / 4)
        return LLORCH_EOVERFLOW;
    if (dtype == LLORCH_DTYPE_INT8 && n_in > MM_INT8_MAX_K)
        return LLORCH_EUNSUPPORTED;
    int64_t tile_n = tiling && tiling->tile_n > 0 ? tiling->tile_n : 0;
    if (tiling && tiling->tile_n < 0)
        return LLORCH_EINVAL;

    struct mm_ctx *c;
    int err = mm_ctx_get(pool, &c);
    if (err)
        return err;
    struct mm_weight *w = calloc(1, sizeof(*w));
    if (!w)
        return LLORCH_ENOMEM;
    atomic_fetch_add(&c->refs, 1);
    w->ctx = c;
    w->pool = pool;
    w->dtype = dtype;
    w->n_out = n_out;
    w->n_in = n_in;
    w->max_m = max_m;
    if (tile_n == 0)
        tile_n = mm_default_tile_n(n_out, c->n_workers);
    w->tile_n = LLORCH_MIN(tile_n, n_out);
    w->n_tiles = (n_out + w->tile_n - 1) / w->tile_n;
    w->shape_cols[0] = w->tile_n;
    w->n_shapes = 1;
    if (n_out % w->tile_n) {
        w->shape_cols[1] = n_out % w->tile_n;
        w->n_shapes = 2;
    }
    w->tile_off = calloc((size_t)w->n_tiles, sizeof(*w->tile_off));
    w->wmem = calloc((size_t)w->n_tiles, sizeof(*w->wmem));
    if (!w->tile_off || !w->wmem)
        err = LLORCH_ENOMEM;
    if (!err && dtype == LLORCH_DTYPE_INT8) {
        w->col_scale = mm_alloc(sizeof(float) * (size_t)n_out);
        w->col_sum = mm_alloc(sizeof(int32_t) * (size_t)n_out);
        if (!w->col_scale || !w->col_sum)
            err = LLORCH_ENOMEM;
    }
    if (!err && dtype != LLORCH_DTYPE_F32)
        err = mm_ctx_reserve_act(c, (size_t)(max_m * n_in) * mm_act_elem(dtype), max_m);
    if (!err) /* f32 and s32 are both 4 bytes */
        err = mm_ctx_reserve(c, c->dtile, &c->dtile_bytes,
                             sizeof(float) * (size_t)(LLORCH_MIN(max_m, MM_MBLOCK) * w->tile_n));
    if (!err)
        err = mm_weight_pack(w, src);
    if (!err)
        err = mm_gemv_setup(w, !(tiling && tiling->no_gemv));
    if (!err) /* the common decode shapes: one row, and a full row block */
        err = mm_prims_for_m(w, LLORCH_MIN(max_m, MM_MBLOCK));
    if (!err)
        err = mm_prims_for_m(w, 1);
    if (err) {
        matmul_weight_free(w);
        return err;
    }
    *out = w;
    return 0;
}

LLORCH_API int matmul_weight_new(struct mm_weight **out, const float *w, int64_t n_out,
                                 int64_t n_in, enum llorch_dtype dtype, int64_t max_m,
                                 struct tpool *pool)
{
    return matmul_weight_new_tiled(out, w, n_out, n_in, dtype, max_m, pool, NULL);
}

LLORCH_API void matmul_weight_free(struct mm_weight *w)
{
    if (!w)
        return;
    for (int sh = 0; sh < 2; sh++)
        for (int r = 0; r <= MM_MBLOCK; r++)
            if (w->prim[sh][r])
                dnnl_primitive_destroy(w->prim[sh][r]);
    if (w->wmem)
        for (int64_t t = 0; t < w->n_tiles; t++)
            if (w->wmem[t])
                dnnl_memory_destroy(w->wmem[t]);
    free(w->wmem);
    free(w->tile_off);
    free(w->packed);
    free(w->col_scale);
    free(w->col_sum);
    mm_ctx_release(w->ctx);
    free(w);
}

LLORCH_API int64_t matmul_weight_n_out(const struct mm_weight *w)
{
    return w->n_out;
}

LLORCH_API int64_t matmul_weight_n_in(const struct mm_weight *w)
{
    return w->n_in;
}

LLORCH_API int64_t matmul_weight_tile_n(const struct mm_weight *w)
{
    return w->tile_n;
}

LLORCH_API uint64_t matmul_weight_bytes(const struct mm_weight *w)
{
    /* what one use streams from memory: the weights at their type's width
     * (the packed buffer's padding to oneDNN's blocks is never read) */
    uint64_t e = w->dtype == LLORCH_DTYPE_F32 ? 4 : w->dtype == LLORCH_DTYPE_BF16 ? 2 : 1;
    return (uint64_t)w->n_out * (uint64_t)w->n_in * e;
}

LLORCH_API const char *matmul_weight_impl(const struct mm_weight *w)
{
    return w && w->impl ? w->impl : "none";
}

LLORCH_API const char *matmul_weight_impl_for_m(const struct mm_weight *w, int64_t m)
{
    if (w && m >= 1 && mm_gemv_for(w, m))
        return w->dtype == LLORCH_DTYPE_INT8 ? "llorch:gemv_avx512_vnni" : "llorch:gemv_avx512_bf16";
    return matmul_weight_impl(w);
}

LLORCH_API int matmul_prepare(struct mm_weight *w, int64_t m)
{
    if (!w || m < 1 || m > w->max_m)
        return LLORCH_EINVAL;
    if (tpool_in_task())
        return LLORCH_EINVAL;
    return mm_prims_for_m(w, m);
}

LLORCH_API int matmul_run(const struct mm_weight *w, const float *x, float *y, int64_t m,
                          struct tpool *pool)
{
    if (!w || !x || !y || m < 1 || m > w->max_m || pool != w->pool)
        return LLORCH_EINVAL;
    if (tpool_in_task())
        return LLORCH_EINVAL;
    /* First use of this row count: create its primitives (the only
     * allocation; steady state has none). The weight is logically const:
     * the cache is an implementation detail. */
    int err = mm_prims_for_m((struct mm_weight *)w, m);
    if (err)
        return err;
    struct mm_run r = {.w = w, .x = x, .y = y, .m = m, .n_mb = (m + MM_MBLOCK - 1) / MM_MBLOCK};
    atomic_init(&r.err, 0);
    mm_convert(&r, pool);
    if (mm_gemv_for(w, m)) {
        mm_run_gemv(&r, pool);
        return 0;
    }
    return mm_run_brgemm(&r, pool);
}

LLORCH_API const char *matmul_cpu_isa_name(void)
{
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41:
        return "sse41";
    case dnnl_cpu_isa_avx:
        return "avx";
    case dnnl_cpu_isa_avx2:
        return "avx2";
    case dnnl_cpu_isa_avx2_vnni:
        return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic:
        return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops:
        return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core:
        return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni:
        return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16:
        return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx:
        return "avx512_core_amx";
    default:
        return "unknown";
    }
}
