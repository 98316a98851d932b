/* oneDNN matmuls over weights packed once at load time.
 * y[m, n_out] = x[m, n_in] · Wᵀ, W given row-major as [n_out, n_in] f32
 * (dequantised), packed into oneDNN's blocked layout for the runtime dtype:
 * f32, bf16, or int8 (s8 weights, per-output-channel scales; activations
 * quantised per row to u8 with their own scale; s32 accumulation). Output
 * columns are split into tiles that pool tasks compute with one OpenMP thread
 * each. Primitives are cached per batch-row count and share the packed
 * buffer. */
#ifndef LLORCH_MATMUL_H
#define LLORCH_MATMUL_H

#include <stdbool.h>
#include <stdint.h>

#include "llorch/llorch.h"
#include "tpool.h"

/* The pool slot matmul keeps its per-pool context in (tpool_slot_get). */
#define TPOOL_SLOT_MATMUL 0u

struct mm_weight;

/* Packs w ([n_out, n_in] f32 row-major). dtype must be F32, BF16 or INT8.
 * max_m bounds the rows of any later call (the scheduler's token budget). */
int matmul_weight_new(struct mm_weight **out, const float *w, int64_t n_out, int64_t n_in,
                      enum llorch_dtype dtype, int64_t max_m, struct tpool *pool);
void matmul_weight_free(struct mm_weight *w); /* NULL is safe */
int64_t matmul_weight_n_out(const struct mm_weight *w);
int64_t matmul_weight_n_in(const struct mm_weight *w);
uint64_t matmul_weight_bytes(const struct mm_weight *w); /* packed bytes read per use */

/* y = x · Wᵀ for 1 <= m <= max_m. Row r of y depends only on row r of x (the
 * same bits whatever m is: batch invariance). No allocation once the
 * primitive for m exists; matmul_prepare() creates them ahead of time. */
int matmul_run(const struct mm_weight *w, const float *x, float *y, int64_t m, struct tpool *pool);
int matmul_prepare(struct mm_weight *w, int64_t m);

/* Everything below is additive to the original contract. */

/* matmul_run() must be called from the thread that drives the pool, outside
 * pool tasks (it is itself a parallel_for and uses per-pool scratch); inside
 * a task it returns LLORCH_EINVAL. pool must be the pool given at
 * matmul_weight_new(); NULL there means no pool: the weight gets a private
 * one-worker context and runs on the calling thread. */

/* Tiling knob for benchmarks and tests: tile_n output columns per pool task
 * (0: the default, which splits n_out evenly over the workers, in multiples of
 * 64 columns where that is exact, else of 16). */
struct mm_tiling {
    int64_t tile_n;
    bool no_gemv; /* int8: oneDNN for every m, never the small-m GEMV (A/B runs) */
};
int matmul_weight_new_tiled(struct mm_weight **out, const float *w, int64_t n_out, int64_t n_in,
                            enum llorch_dtype dtype, int64_t max_m, struct tpool *pool,
                            const struct mm_tiling *tiling);
int64_t matmul_weight_tile_n(const struct mm_weight *w);

/* What oneDNN dispatches to on this CPU ("avx512_core_bf16", ...), and the
 * implementation it chose for this weight ("brg:avx512_core_vnni"). Static
 * strings. */
const char *matmul_cpu_isa_name(void);
const char *matmul_weight_impl(const struct mm_weight *w);
/* The kernel a call with m rows runs: on CPUs with AVX-512 VNNI (BF16), int8
 * weights up to 4 rows (bf16 up to 2) run our own GEMV over oneDNN's packed
 * layout ("llorch:gemv_avx512_vnni", "llorch:gemv_avx512_bf16"; checked at
 * load to give the same bits as oneDNN's kernels), anything else
 * matmul_weight_impl(). */
const char *matmul_weight_impl_for_m(const struct mm_weight *w, int64_t m);

#endif
