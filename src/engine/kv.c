/* Paged KV cache. One storage buffer holds, for every layer, n_blocks blocks
 * of K and V ([n_head_kv][LLORCH_KV_BLOCK][head_dim] each); a block id names
 * the same slot in every layer. Block metadata, sequence handles, block
 * tables and the prefix hash table are all allocated in kv_cache_new().
 *
 * A block is in exactly one of three states:
 *   free    on the free list, no reusable contents;
 *   used    ref > 0, in the block table of ref sequences;
 *   cached  ref == 0 but full and registered in the prefix table, on an LRU
 *           list; allocation takes free blocks first, then evicts the oldest
 *           cached block.
 * A full block is registered under the hash of every token from position 0
 * to its end. A hit is verified: the block's own tokens must be equal, and
 * its parent (the block holding the previous LLORCH_KV_BLOCK tokens) must be
 * the block matched one level up, with the generation it had when the child
 * was registered (a block's generation changes whenever it gets new
 * contents), so by induction the whole prefix is equal. */
#include "kv.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "util.h"

#define KV_NONE UINT32_MAX
#define KV_B LLORCH_KV_BLOCK

struct kv_block {
    uint32_t ref;
    uint32_t gen;          /* bumped on every allocation */
    bool hashed;           /* registered in the prefix table */
    uint64_t hash;         /* hash of tokens [0, end of this block) */
    uint32_t parent;       /* block matched for the previous KV_B tokens, or KV_NONE */
    uint32_t parent_gen;
    uint32_t hnext, hprev; /* prefix table chain */
    uint32_t lnext, lprev; /* free list (lnext only) or LRU list of cached blocks */
    llorch_token tokens[KV_B];
};

struct kv_seq {
    bool active;
    uint32_t len;          /* tokens committed */
    uint32_t n_blocks;     /* entries of blocks[] */
    uint64_t hash;         /* prefix hash of the full blocks committed so far */
    uint32_t canon;        /* registered block equal to the last full block, or KV_NONE */
    uint32_t canon_gen;
    uint32_t next_free;    /* handle free list */
    uint32_t *blocks;      /* [max_blocks] */
};

struct kv_cache {
    struct kv_cache_opts o;
    const struct kernels *k;
    uint32_t n_blocks;
    uint32_t max_blocks;   /* per sequence */
    size_t row_bytes, head_stride, half_stride, block_stride, layer_stride;
    uint8_t *storage;
    struct kv_block *blocks;
    uint32_t free_head;
    uint32_t n_free;
    uint32_t lru_head, lru_tail;
    uint32_t n_cached;
    uint32_t *buckets;
    uint32_t bucket_mask;
    struct kv_seq *seqs;
    uint32_t *tables;
    uint32_t seq_free_head;
    uint32_t seqs_active;
    uint64_t prefix_hits;
    void (*journal)(void *ctx, const struct kv_op *op);
    void *journal_ctx;
};

static void kv_journal(struct kv_cache *c, enum kv_op_type type, const struct kv_seq *s, uint32_t n,
                       const llorch_token *tokens)
{
    if (!c->journal)
        return;
    struct kv_op op = {type, (uint32_t)(s - c->seqs), n, tokens};
    c->journal(c->journal_ctx, &op);
}

/* ---- hashing ----------------------------------------------------------- */

static uint64_t kv_hash_mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Hash of a prefix extended by one block of tokens. */
static uint64_t kv_hash_block(uint64_t prev, const llorch_token *t)
{
    uint64_t h = prev ^ 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < KV_B; i++) {
        h ^= (uint32_t)t[i];
        h *= 0x100000001b3ULL;
    }
    return kv_hash_mix(h);
}

#define KV_HASH_ROOT 0x6c6c6f7263686b76ULL

/* ---- block lists ------------------------------------------------------- */

static void kv_lru_remove(struct kv_cache *c, uint32_t id)
{
    struct kv_block *b = &c->blocks[id];
    if (b->lprev != KV_NONE)
        c->blocks[b->lprev].lnext = b->lnext;
    else
        c->lru_head = b->lnext;
    if (b->lnext != KV_NONE)
        c->blocks[b->lnext].lprev = b->lprev;
    else
        c->lru_tail = b->lprev;
    b->lnext = b->lprev = KV_NONE;
    c->n_cached--;
}

static void kv_lru_append(struct kv_cache *c, uint32_t id)
{
    struct kv_block *b = &c->blocks[id];
    b->lprev = c->lru_tail;
    b->lnext = KV_NONE;
    if (c->lru_tail != KV_NONE)
        c->blocks[c->lru_tail].lnext = id;
    else
        c->lru_head = id;
    c->lru_tail = id;
    c->n_cached++;
}

static void kv_free_push(struct kv_cache *c, uint32_t id)
{
    c->blocks[id].lnext = c->free_head;
    c->blocks[id].lprev = KV_NONE;
    c->free_head = id;
    c->n_free++;
}

static void kv_table_insert(struct kv_cache *c, uint32_t id)
{
    struct kv_block *b = &c->blocks[id];
    uint32_t *head = &c->buckets[b->hash & c->bucket_mask];
    b->hprev = KV_NONE;
    b->hnext = *head;
    if (*head != KV_NONE)
        c->blocks[*head].hprev = id;
    *head = id;
    b->hashed = true;
}

static void kv_table_remove(struct kv_cache *c, uint32_t id)
{
    struct kv_block *b = &c->blocks[id];
    if (!b->hashed)
        return;
    if (b->hprev != KV_NONE)
        c->blocks[b->hprev].hnext = b->hnext;
    else
        c->buckets[b->hash & c->bucket_mask] = b->hnext;
    if (b->hnext != KV_NONE)
        c->blocks[b->hnext].hprev = b->hprev;
    b->hnext = b->hprev = KV_NONE;
    b->hashed = false;
}

/* The registered block holding tokens t[0..KV_B) after the prefix whose last
 * block is (parent, parent_gen), under hash h; KV_NONE if none. */
static uint32_t kv_table_find(const struct kv_cache *c, uint64_t h, const llorch_token *t,
                              uint32_t parent, uint32_t parent_gen)
{
    for (uint32_t id = c->buckets[h & c->bucket_mask]; id != KV_NONE; id = c->blocks[id].hnext) {
        const struct kv_block *b = &c->blocks[id];
        if (b->hash != h || b->parent != parent || memcmp(b->tokens, t, sizeof b->tokens))
            continue;
        if (parent != KV_NONE && (b->parent_gen != parent_gen || c->blocks[parent].gen != parent_gen))
            continue;
        return id;
    }
    return KV_NONE;
}

/* Takes a free block, or evicts the least recently cached one. */
static uint32_t kv_block_alloc(struct kv_cache *c)
{
    uint32_t id;
    if (c->free_head != KV_NONE) {
        id = c->free_head;
        c->free_head = c->blocks[id].lnext;
        c->n_free--;
    } else {
        id = c->lru_head;
        assert(id != KV_NONE);
        kv_lru_remove(c, id);
        kv_table_remove(c, id);
    }
    struct kv_block *b = &c->blocks[id];
    b->ref = 1;
    b->gen++;
    b->hashed = false;
    b->parent = KV_NONE;
    b->parent_gen = 0;
    b->lnext = b->lprev = KV_NONE;
    return id;
}

static void kv_block_release(struct kv_cache *c, uint32_t id)
{
    struct kv_block *b = &c->blocks[id];
    assert(b->ref > 0);
    if (--b->ref > 0)
        return;
    if (b->hashed)
        kv_lru_append(c, id);
    else
        kv_free_push(c, id);
}

/* ---- cache ------------------------------------------------------------- */

static size_t kv_elem_size(enum llorch_kv_type t)
{
    switch (t) {
    case LLORCH_KV_F32:
        return 4;
    case LLORCH_KV_F16:
    case LLORCH_KV_BF16:
        return 2;
    default:
        return 0;
    }
}

LLORCH_API int kv_cache_new(struct kv_cache **out, const struct kv_cache_opts *o)
{
    *out = NULL;
    const size_t elem = kv_elem_size(o->type);
    if (!elem || (!o->n_layer && !o->n_blocks) || !o->n_head_kv || !o->head_dim || !o->max_seqs ||
        !o->max_seq_len || o->max_seqs >= KV_NONE || o->n_blocks > KV_NONE / 2)
        return LLORCH_EINVAL;

    uint64_t row, head, block, per_block;
    if (llorch_mul_overflows(o->head_dim, elem, &row) || llorch_mul_overflows(row, KV_B, &head) ||
        llorch_mul_overflows(head, 2ull * o->n_head_kv, &block) ||
        llorch_mul_overflows(block, o->n_layer, &per_block))
        return LLORCH_EOVERFLOW;
    uint64_t n_blocks = o->n_blocks ? o->n_blocks : o->bytes / per_block;
    if (n_blocks == 0)
        return LLORCH_EINVAL;
    if (n_blocks > KV_NONE / 2)
        n_blocks = KV_NONE / 2;

    uint64_t storage_bytes;
    if (llorch_mul_overflows(per_block, n_blocks, &storage_bytes) || storage_bytes > SIZE_MAX - 64)
        return LLORCH_EOVERFLOW;
    const uint32_t max_blocks = (o->max_seq_len + KV_B - 1) / KV_B;
    uint64_t table_entries;
    if (llorch_mul_overflows(max_blocks, o->max_seqs, &table_entries) || table_entries > SIZE_MAX / 4)
        return LLORCH_EOVERFLOW;
    uint32_t n_buckets = 1;
    while (n_buckets < n_blocks)
        n_buckets <<= 1;

    struct kv_cache *c = calloc(1, sizeof *c);
    if (!c)
        return LLORCH_ENOMEM;
    c->o = *o;
    c->k = kernels_best();
    c->n_blocks = (uint32_t)n_blocks;
    c->max_blocks = max_blocks;
    c->row_bytes = (size_t)row;
    c->head_stride = (size_t)head;
    c->half_stride = (size_t)head * o->n_head_kv;
    c->block_stride = (size_t)block;
    c->layer_stride = (size_t)block * c->n_blocks;
    c->storage = aligned_alloc(64, (size_t)llorch_align_up(LLORCH_MAX(storage_bytes, 1), 64));
    c->blocks = calloc(n_blocks, sizeof *c->blocks);
    c->buckets = malloc((size_t)n_buckets * sizeof *c->buckets);
    c->seqs = calloc(o->max_seqs, sizeof *c->seqs);
    c->tables = malloc((size_t)table_entries * sizeof *c->tables);
    if (!c->storage || !c->blocks || !c->buckets || !c->seqs || !c->tables) {
        kv_cache_free(c);
        return LLORCH_ENOMEM;
    }
    c->bucket_mask = n_buckets - 1;
    for (uint32_t i = 0; i < n_buckets; i++)
        c->buckets[i] = KV_NONE;
    c->free_head = KV_NONE;
    c->lru_head = c->lru_tail = KV_NONE;
    for (uint32_t i = c->n_blocks; i-- > 0;) {
        c->blocks[i].hnext = c->blocks[i].hprev = KV_NONE;
        c->blocks[i].parent = KV_NONE;
        kv_free_push(c, i);
    }
    c->seq_free_head = KV_NONE;
    for (uint32_t i = o->max_seqs; i-- > 0;) {
        c->seqs[i].blocks = c->tables + (size_t)i * max_blocks;
        c->seqs[i].next_free = c->seq_free_head;
        c->seq_free_head = i;
    }
    *out = c;
    return 0;
}

LLORCH_API void kv_cache_free(struct kv_cache *c)
{
    if (!c)
        return;
    free(c->storage);
    free(c->blocks);
    free(c->buckets);
    free(c->seqs);
    free(c->tables);
    free(c);
}

LLORCH_API void kv_cache_stats(const struct kv_cache *c, struct kv_stats *s)
{
    s->blocks_total = c->n_blocks;
    s->blocks_used = c->n_blocks - c->n_free - c->n_cached;
    s->blocks_cached = c->n_cached;
    s->prefix_hits = c->prefix_hits;
    s->seqs_active = c->seqs_active;
}

LLORCH_API uint32_t kv_cache_free_blocks(const struct kv_cache *c)
{
    return c->n_free + c->n_cached;
}

LLORCH_API enum llorch_kv_type kv_cache_type(const struct kv_cache *c)
{
    return c->o.type;
}

LLORCH_API uint32_t kv_cache_max_seq_len(const struct kv_cache *c)
{
    return c->o.max_seq_len;
}

LLORCH_API void kv_cache_layer(const struct kv_cache *c, uint32_t layer, struct kv_layer_view *out)
{
    assert(layer < c->o.n_layer);
    uint8_t *base = c->storage + (size_t)layer * c->layer_stride;
    out->k = base;
    out->v = base + c->half_stride;
    out->block_stride = c->block_stride;
    out->head_stride = c->head_stride;
    out->row_bytes = c->row_bytes;
    out->type = c->o.type;
}

/* ---- sequences --------------------------------------------------------- */

LLORCH_API int kv_seq_new(struct kv_cache *c, struct kv_seq **out)
{
    *out = NULL;
    if (c->seq_free_head == KV_NONE)
        return LLORCH_EFULL;
    struct kv_seq *s = &c->seqs[c->seq_free_head];
    c->seq_free_head = s->next_free;
    s->next_free = KV_NONE;
    s->active = true;
    s->len = 0;
    s->n_blocks = 0;
    s->hash = KV_HASH_ROOT;
    s->canon = KV_NONE;
    s->canon_gen = 0;
    c->seqs_active++;
    *out = s;
    kv_journal(c, KV_OP_SEQ_NEW, s, 0, NULL);
    return 0;
}

LLORCH_API void kv_seq_free(struct kv_cache *c, struct kv_seq *s)
{
    if (!s)
        return;
    assert(s->active);
    /* Deepest blocks first: they reach the LRU list first and so are evicted
     * before the prefixes they depend on. */
    for (uint32_t i = s->n_blocks; i-- > 0;)
        kv_block_release(c, s->blocks[i]);
    s->n_blocks = 0;
    s->len = 0;
    s->active = false;
    s->next_free = c->seq_free_head;
    c->seq_free_head = (uint32_t)(s - c->seqs);
    c->seqs_active--;
    kv_journal(c, KV_OP_SEQ_FREE, s, 0, NULL);
}

LLORCH_API uint32_t kv_seq_len(const struct kv_seq *s)
{
    return s->len;
}

LLORCH_API const uint32_t *kv_seq_blocks(const struct kv_seq *s)
{
    return s->blocks;
}

LLORCH_API uint32_t kv_seq_capacity(const struct kv_seq *s)
{
    return s->n_blocks * KV_B;
}

LLORCH_API uint32_t kv_seq_blocks_needed(const struct kv_cache *c, const struct kv_seq *s, uint32_t n)
{
    LLORCH_UNUSED(c);
    uint64_t target = (uint64_t)s->len + n;
    uint64_t want = (target + KV_B - 1) / KV_B;
    return want > s->n_blocks ? (uint32_t)(want - s->n_blocks) : 0;
}

LLORCH_API int kv_seq_reserve(struct kv_cache *c, struct kv_seq *s, uint32_t n)
{
    if ((uint64_t)s->len + n > c->o.max_seq_len)
        return LLORCH_ERANGE;
    uint32_t need = kv_seq_blocks_needed(c, s, n);
    if (need > c->n_free + c->n_cached)
        return LLORCH_EKV_EXHAUSTED;
    for (uint32_t i = 0; i < need; i++)
        s->blocks[s->n_blocks++] = kv_block_alloc(c);
    kv_journal(c, KV_OP_RESERVE, s, n, NULL);
    return 0;
}

LLORCH_API uint32_t kv_seq_share_prefix(struct kv_cache *c, struct kv_seq *s,
                                        const llorch_token *tokens, uint32_t n)
{
    assert(s->len == 0 && s->n_blocks == 0);
    uint64_t h = KV_HASH_ROOT;
    uint32_t parent = KV_NONE, parent_gen = 0;
    uint32_t done = 0;
    /* only whole blocks that leave at least the last token to compute */
    while ((uint64_t)done + KV_B < n && done + KV_B <= c->o.max_seq_len) {
        const uint64_t nh = kv_hash_block(h, tokens + done);
        const uint32_t id = kv_table_find(c, nh, tokens + done, parent, parent_gen);
        if (id == KV_NONE)
            break;
        struct kv_block *b = &c->blocks[id];
        if (b->ref++ == 0)
            kv_lru_remove(c, id);
        s->blocks[s->n_blocks++] = id;
        c->prefix_hits++;
        h = nh;
        parent = id;
        parent_gen = b->gen;
        done += KV_B;
    }
    s->len = done;
    s->hash = h;
    s->canon = parent;
    s->canon_gen = parent_gen;
    kv_journal(c, KV_OP_SHARE_PREFIX, s, n, tokens);
    return done;
}

LLORCH_API void kv_cache_set_journal(struct kv_cache *c,
                                     void (*fn)(void *ctx, const struct kv_op *op), void *ctx)
{
    c->journal = fn;
    c->journal_ctx = ctx;
}

LLORCH_API uint32_t kv_seq_index(const struct kv_cache *c, const struct kv_seq *s)
{
    return (uint32_t)(s - c->seqs);
}

LLORCH_API struct kv_seq *kv_seq_at(struct kv_cache *c, uint32_t index)
{
    return index < c->o.max_seqs && c->seqs[index].active ? &c->seqs[index] : NULL;
}

LLORCH_API int kv_cache_replay(struct kv_cache *c, const struct kv_op *op)
{
    struct kv_seq *s = kv_seq_at(c, op->seq);
    switch (op->type) {
    case KV_OP_SEQ_NEW: {
        if (s || c->seq_free_head != op->seq)
            return LLORCH_EINVAL;
        struct kv_seq *n;
        return kv_seq_new(c, &n);
    }
    case KV_OP_SEQ_FREE:
        if (!s)
            return LLORCH_EINVAL;
        kv_seq_free(c, s);
        return 0;
    case KV_OP_RESERVE:
        return s ? kv_seq_reserve(c, s, op->n) : LLORCH_EINVAL;
    case KV_OP_SHARE_PREFIX:
        if (!s || s->len || s->n_blocks || !op->tokens)
            return LLORCH_EINVAL;
        (void)kv_seq_share_prefix(c, s, op->tokens, op->n);
        return 0;
    }
    return LLORCH_EINVAL;
}

/* Registers s's block that just became full, unless an equal prefix is
 * already registered (then that one is the canonical parent for the next). */
static void kv_seq_block_full(struct kv_cache *c, struct kv_seq *s, uint32_t idx)
{
    const uint32_t id = s->blocks[idx];
    struct kv_block *b = &c->blocks[id];
    const uint64_t h = kv_hash_block(s->hash, b->tokens);
    uint32_t found = kv_table_find(c, h, b->tokens, s->canon, s->canon_gen);
    if (found == KV_NONE && !b->hashed) {
        b->hash = h;
        b->parent = s->canon;
        b->parent_gen = s->canon_gen;
        kv_table_insert(c, id);
        found = id;
    }
    s->hash = h;
    s->canon = found;
    s->canon_gen = found != KV_NONE ? c->blocks[found].gen : 0;
}

LLORCH_API void kv_seq_commit(struct kv_cache *c, struct kv_seq *s, const llorch_token *tokens,
                              uint32_t n)
{
    assert((uint64_t)s->len + n <= (uint64_t)s->n_blocks * KV_B);
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t pos = s->len;
        struct kv_block *b = &c->blocks[s->blocks[pos / KV_B]];
        assert(!b->hashed && b->ref == 1);
        b->tokens[pos % KV_B] = tokens[i];
        s->len = pos + 1;
        if (s->len % KV_B == 0)
            kv_seq_block_full(c, s, pos / KV_B);
    }
}

LLORCH_API void kv_seq_store(struct kv_cache *c, const struct kv_seq *s, uint32_t layer,
                             uint32_t pos, const float *k, const float *v)
{
    assert(pos < s->n_blocks * KV_B && layer < c->o.n_layer);
    const uint32_t id = s->blocks[pos / KV_B];
    assert(!c->blocks[id].hashed);
    uint8_t *kb = c->storage + (size_t)layer * c->layer_stride + (size_t)id * c->block_stride +
                  (size_t)(pos % KV_B) * c->row_bytes;
    uint8_t *vb = kb + c->half_stride;
    const uint32_t hd = c->o.head_dim;
    for (uint32_t h = 0; h < c->o.n_head_kv; h++) {
        uint8_t *kd = kb + (size_t)h * c->head_stride;
        uint8_t *vd = vb + (size_t)h * c->head_stride;
        const float *ks = k + (size_t)h * hd, *vs = v + (size_t)h * hd;
        switch (c->o.type) {
        case LLORCH_KV_F16:
            c->k->to_f16((uint16_t *)(void *)kd, ks, hd);
            c->k->to_f16((uint16_t *)(void *)vd, vs, hd);
            break;
        case LLORCH_KV_BF16:
            c->k->to_bf16((uint16_t *)(void *)kd, ks, hd);
            c->k->to_bf16((uint16_t *)(void *)vd, vs, hd);
            break;
        default:
            memcpy(kd, ks, (size_t)hd * sizeof(float));
            memcpy(vd, vs, (size_t)hd * sizeof(float));
            break;
        }
    }
}
