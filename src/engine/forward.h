/* One batched forward step over many sequences, each contributing a chunk of
 * prompt (prefill) or one token (decode). Owns the packed weights, the KV
 * cache and the scratch buffers, all sized at forward_new(): no allocation in
 * forward_step(). Call from one thread (the step driver). */
#ifndef LLORCH_FORWARD_H
#define LLORCH_FORWARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "kv.h"
#include "llorch/llorch.h"
#include "model.h"
#include "tpool.h"

struct forward_opts {
    enum llorch_dtype dtype;      /* AUTO: NATIVE */
    enum llorch_isa isa;          /* AUTO: the best this CPU runs */
    enum llorch_kv_type kv_type;  /* AUTO: f32 with f32 weights (or an f32 file), else f16 */
    uint64_t kv_bytes;            /* KV cache budget */
    uint32_t n_ctx;               /* max tokens per sequence; 0: n_ctx_train */
    uint32_t max_seqs;            /* sequences in one step */
    uint32_t max_step_tokens;     /* tokens in one step (prefill chunks + decodes) */
    struct tpool *pool;           /* NULL: everything runs on the caller */
    /* Exact mode only (dtype F32): round the activations entering each
     * matmul as llama.cpp's CPU backend does for the weight's file type (f16
     * weights: activations to f16; bf16: to bf16; Q4_0/Q4_1/Q5_0/Q5_1/Q8_0:
     * to Q8_0 blocks), so f16 and quantised files match llama.cpp to float
     * rounding. Ignored for bf16/int8, whose own rounding dominates. */
    bool llama_rounding;
    /* Optional, called from forward_new on its thread as the weights are
     * dequantised and packed (the slow part of loading a big model):
     * fractions of the weight elements done, non-decreasing from 0.0, at most
     * ~1000 calls, the last one exactly 1.0 on success. Returning false
     * stops loading: forward_new frees what it made and returns
     * LLORCH_ECANCELLED (the return of the final 1.0 call is ignored). */
    bool (*progress)(void *ctx, double fraction);
    void *progress_ctx;
    /* A pipeline stage's share of the model: layers [layer_first, layer_end)
     * only (layer_end 0 = the last layer); only their weights are packed and
     * only their KV is cached. The token embedding is used only by the range
     * that starts at layer 0, the output norm and head only by the range that
     * ends at the last layer. Default {0, 0}: the whole model. */
    uint32_t layer_first;
    uint32_t layer_end;
    /* Exactly this many KV blocks (a pipeline's stages and coordinator must
     * agree), kv_bytes ignored; 0: as many as kv_bytes holds. */
    uint32_t kv_blocks;
};

/* One sequence's part of a step: tokens [0, n_tokens) appended at positions
 * kv_seq_len(seq) onwards. logits receives [n_vocab] floats for the last
 * token, or [n_tokens, n_vocab] when all_logits. */
struct forward_entry {
    struct kv_seq *seq;
    const llorch_token *tokens;
    uint32_t n_tokens;
    bool all_logits;
    float *logits;
};

struct forward;

int forward_new(struct forward **out, const struct model *m, const struct forward_opts *o,
                char *err, size_t errlen);
void forward_free(struct forward *f); /* NULL is safe */
/* Bytes of one KV block (LLORCH_KV_BLOCK tokens of K and V over the layer
 * range of o), with o's dtype and KV type resolved as forward_new does. */
uint64_t forward_kv_block_bytes(const struct model *m, const struct forward_opts *o);

/* Runs one step. Every entry's seq must have room reserved (kv_seq_reserve);
 * on return each seq's length has advanced by its n_tokens. */
int forward_step(struct forward *f, struct forward_entry *entries, uint32_t n);
/* One step of a layer range (pipeline stage). The residual stream enters as
 * hidden_in [T, n_embd] (T = the entries' n_tokens summed, rows in entry
 * order), or from the token embedding when NULL (range from layer 0 only);
 * it leaves as hidden_out [T, n_embd], or as logits into the entries when
 * NULL (range to the last layer only; logits may be NULL otherwise). Tokens
 * are always given (the KV cache keys prefixes by them). The same
 * arithmetic as forward_step: stages chained by their hidden states give
 * bit-identical logits. LLORCH_EINVAL when the range cannot do what is
 * asked. */
int forward_step_hidden(struct forward *f, struct forward_entry *entries, uint32_t n,
                        const float *hidden_in, float *hidden_out);

struct kv_cache *forward_kv(struct forward *f);
enum llorch_dtype forward_dtype(const struct forward *f);
enum llorch_kv_type forward_kv_type(const struct forward *f);
uint32_t forward_n_vocab(const struct forward *f);
uint32_t forward_n_ctx(const struct forward *f);
uint64_t forward_weight_bytes(const struct forward *f); /* packed bytes read per token */
/* The kernel level in use (one the CPU runs; never AUTO), its name
 * ("scalar", "avx2", "avxvnni", "avx512") and, for messages, what runs the
 * matmuls ("llorch" or "onednn"). */
enum kernels_isa forward_isa(const struct forward *f);
const char *forward_isa_name(const struct forward *f);
const char *forward_matmul_backend(const struct forward *f);

const char *forward_dtype_name(enum llorch_dtype d);
const char *forward_kv_type_name(enum llorch_kv_type t);

#endif
