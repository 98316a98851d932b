/* Paged KV cache: a fixed pool of blocks of LLORCH_KV_BLOCK tokens, sized once
 * from --kv-cache-mb; each sequence has a block table. Full blocks can be
 * shared between sequences (refcounted, found by a hash of the token prefix
 * they hold). No allocation after kv_cache_new(). Not thread-safe: the step
 * driver owns it. */
#ifndef LLORCH_KV_H
#define LLORCH_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/llorch.h"

#define LLORCH_KV_BLOCK 16

struct kv_cache;
struct kv_seq;

struct kv_cache_opts {
    enum llorch_kv_type type;  /* F32, F16 or BF16 (not AUTO) */
    uint32_t n_layer;
    uint32_t n_head_kv;
    uint32_t head_dim;
    uint64_t bytes;            /* budget for K and V of all layers */
    uint32_t max_seqs;         /* sequence handles preallocated */
    uint32_t max_seq_len;      /* context length: bounds a block table */
    /* Exactly this many blocks when non-zero (bytes is then ignored), and
     * n_layer may be 0: a cache of block tables without storage (a pipeline
     * coordinator's, whose stages hold the K/V). */
    uint32_t n_blocks;
};

/* The mutating calls a scheduler makes, as a journal: a pipeline's
 * coordinator records them and every stage replays them in the same order
 * on a cache of the same number of blocks, so that all hold the same block
 * tables (admission, preemption, frees and prefix reuse reach every stage).
 * kv_seq_commit is not journalled: forward steps commit on each side. */
enum kv_op_type { KV_OP_SEQ_NEW = 1, KV_OP_SEQ_FREE, KV_OP_RESERVE, KV_OP_SHARE_PREFIX };
struct kv_op {
    enum kv_op_type type;
    uint32_t seq;               /* handle index (kv_seq_index) */
    uint32_t n;                 /* RESERVE: tokens; SHARE_PREFIX: tokens given */
    const llorch_token *tokens; /* SHARE_PREFIX: [n] */
};

struct kv_stats {
    uint32_t blocks_total;
    uint32_t blocks_used;      /* referenced by at least one sequence */
    uint32_t blocks_cached;    /* free but still holding a reusable prefix */
    uint64_t prefix_hits;      /* blocks reused through kv_seq_share_prefix */
    uint32_t seqs_active;
};

int kv_cache_new(struct kv_cache **out, const struct kv_cache_opts *o);
void kv_cache_free(struct kv_cache *c); /* NULL is safe */
void kv_cache_stats(const struct kv_cache *c, struct kv_stats *s);
uint32_t kv_cache_free_blocks(const struct kv_cache *c); /* allocatable now, cached ones included */

/* Called after each journalled call (NULL: none). */
void kv_cache_set_journal(struct kv_cache *c, void (*fn)(void *ctx, const struct kv_op *op),
                          void *ctx);
/* Applies one journalled call; LLORCH_EINVAL (and nothing changed) when it
 * does not fit this cache's state (a handle not in use, a different handle
 * from SEQ_NEW), LLORCH_EKV_EXHAUSTED when a reservation does not fit. */
int kv_cache_replay(struct kv_cache *c, const struct kv_op *op);
uint32_t kv_seq_index(const struct kv_cache *c, const struct kv_seq *s);
struct kv_seq *kv_seq_at(struct kv_cache *c, uint32_t index); /* NULL: not in use */

/* A sequence handle from the preallocated pool; LLORCH_EFULL when none left. */
int kv_seq_new(struct kv_cache *c, struct kv_seq **out);
/* Releases the blocks (shared ones when their refcount drops to 0) and the
 * handle. NULL is safe. */
void kv_seq_free(struct kv_cache *c, struct kv_seq *s);
uint32_t kv_seq_len(const struct kv_seq *s);  /* tokens stored */
/* Makes room for n more tokens (allocating blocks as needed) or returns
 * LLORCH_EKV_EXHAUSTED and changes nothing. */
int kv_seq_reserve(struct kv_cache *c, struct kv_seq *s, uint32_t n);
/* Blocks needed to grow s by n tokens. */
uint32_t kv_seq_blocks_needed(const struct kv_cache *c, const struct kv_seq *s, uint32_t n);
/* For an empty s: attaches cached full blocks holding a prefix of tokens[0..n)
 * and returns how many tokens are already computed (a multiple of the block
 * size, and less than n so that the last token is always computed). */
uint32_t kv_seq_share_prefix(struct kv_cache *c, struct kv_seq *s, const llorch_token *tokens,
                             uint32_t n);
/* Records the tokens whose K/V were just written (for prefix hashing) and
 * advances the length. */
void kv_seq_commit(struct kv_cache *c, struct kv_seq *s, const llorch_token *tokens, uint32_t n);

/* Storage, for the engine. Every layer holds, per block, K then V, each
 * [n_head_kv][LLORCH_KV_BLOCK][head_dim] elements of the cache type; the
 * element for (block b, kv head h, slot t) of K is at
 *   k + b * block_stride + h * head_stride + t * row_bytes. */
struct kv_layer_view {
    uint8_t *k;
    uint8_t *v;
    size_t block_stride;
    size_t head_stride;
    size_t row_bytes;
    enum llorch_kv_type type;
};
void kv_cache_layer(const struct kv_cache *c, uint32_t layer, struct kv_layer_view *out);
enum llorch_kv_type kv_cache_type(const struct kv_cache *c);
uint32_t kv_cache_max_seq_len(const struct kv_cache *c);
/* The block table of s: block ids for positions [0, reserved). */
const uint32_t *kv_seq_blocks(const struct kv_seq *s);
/* Tokens s has room for without allocating (its blocks times the block size). */
uint32_t kv_seq_capacity(const struct kv_seq *s);
/* Writes K and V of position pos (< kv_seq_capacity) for one layer, converting
 * from f32: k and v are [n_head_kv * head_dim]. Positions inside blocks that
 * are shared must not be written (the engine only writes past the prefix). */
void kv_seq_store(struct kv_cache *c, const struct kv_seq *s, uint32_t layer, uint32_t pos,
                  const float *k, const float *v);

#endif
