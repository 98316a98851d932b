/* Paged KV cache: sizing from the byte budget, reserve/commit/free, exhaustion
 * that changes nothing, prefix sharing with refcounts, eviction of cached
 * prefixes deepest first, storage layout, and every block back in the pool
 * once every sequence has ended. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "half.h"
#include "kernels.h"
#include "kv.h"

#define B LLORCH_KV_BLOCK

/* 2 layers, 2 kv heads, head_dim 8, f32: 2 * 2 * 16 * 8 * 4 * 2 = 8 KiB a block */
static const size_t block_bytes = 2ull * 2 * B * 8 * 4 * 2;

static struct kv_cache *make_cache(uint32_t n_blocks, enum llorch_kv_type type, uint32_t max_seqs)
{
    size_t elem = type == LLORCH_KV_F32 ? 4 : 2;
    struct kv_cache_opts o = {
        .type = type, .n_layer = 2, .n_head_kv = 2, .head_dim = 8,
        .bytes = (uint64_t)n_blocks * (block_bytes / 4 * elem) + 100, /* a partial block is unused */
        .max_seqs = max_seqs, .max_seq_len = 256,
    };
    struct kv_cache *c = NULL;
    assert_int_equal(kv_cache_new(&c, &o), 0);
    return c;
}

static void tokens_fill(llorch_token *t, uint32_t n, llorch_token first)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = first + (llorch_token)i;
}

static void assert_all_blocks_free(const struct kv_cache *c)
{
    struct kv_stats st;
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.seqs_active, 0);
    assert_int_equal(kv_cache_free_blocks(c), st.blocks_total);
}

static void kv_pool_is_sized_from_the_byte_budget(void **state)
{
    (void)state;
    struct kv_cache *c = make_cache(10, LLORCH_KV_F32, 4);
    struct kv_stats st;
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_total, 10);
    assert_int_equal(kv_cache_free_blocks(c), 10);
    kv_cache_free(c);
    c = make_cache(10, LLORCH_KV_F16, 4); /* the same count at half the bytes */
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_total, 10);
    kv_cache_free(c);
    kv_cache_free(NULL);
}

static void kv_new_rejects_a_budget_below_one_block(void **state)
{
    (void)state;
    struct kv_cache_opts o = {.type = LLORCH_KV_F32, .n_layer = 2, .n_head_kv = 2, .head_dim = 8,
                              .bytes = block_bytes - 1, .max_seqs = 1, .max_seq_len = 16};
    struct kv_cache *c = (struct kv_cache *)&o;
    assert_int_equal(kv_cache_new(&c, &o), LLORCH_EINVAL);
    assert_null(c);
    o.bytes = block_bytes;
    o.type = LLORCH_KV_AUTO;
    assert_int_equal(kv_cache_new(&c, &o), LLORCH_EINVAL);
}

static void kv_reserve_commit_and_free_round_trip(void **state)
{
    (void)state;
    struct kv_cache *c = make_cache(8, LLORCH_KV_F32, 4);
    struct kv_seq *s;
    assert_int_equal(kv_seq_new(c, &s), 0);
    assert_int_equal(kv_seq_len(s), 0);
    assert_int_equal(kv_seq_blocks_needed(c, s, 40), 3);
    assert_int_equal(kv_seq_reserve(c, s, 40), 0);
    assert_int_equal(kv_seq_capacity(s), 48);
    assert_int_equal(kv_seq_blocks_needed(c, s, 40), 0);
    llorch_token t[40];
    tokens_fill(t, 40, 100);
    kv_seq_commit(c, s, t, 30);
    kv_seq_commit(c, s, t + 30, 10);
    assert_int_equal(kv_seq_len(s), 40);
    struct kv_stats st;
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_used, 3);
    assert_int_equal(st.seqs_active, 1);
    /* one more decode token fits in the third block */
    assert_int_equal(kv_seq_blocks_needed(c, s, 1), 0);
    assert_int_equal(kv_seq_blocks_needed(c, s, 9), 1);
    const uint32_t *bt = kv_seq_blocks(s);
    assert_true(bt[0] != bt[1] && bt[1] != bt[2] && bt[0] != bt[2]);
    kv_seq_free(c, s);
    assert_all_blocks_free(c);
    kv_seq_free(c, NULL);
    kv_cache_free(c);
}

static void kv_exhaustion_returns_error_and_changes_nothing(void **state)
{
    (void)state;
    struct kv_cache *c = make_cache(4, LLORCH_KV_F32, 4);
    struct kv_seq *a, *b;
    assert_int_equal(kv_seq_new(c, &a), 0);
    assert_int_equal(kv_seq_new(c, &b), 0);
    assert_int_equal(kv_seq_reserve(c, a, 48), 0); /* 3 of 4 blocks */
    struct kv_stats before, after;
    memset(&before, 0, sizeof before); /* padding, for the byte comparison */
    memset(&after, 0, sizeof after);
    kv_cache_stats(c, &before);
    assert_int_equal(kv_seq_reserve(c, b, 17), LLORCH_EKV_EXHAUSTED); /* needs 2 */
    kv_cache_stats(c, &after);
    assert_memory_equal(&before, &after, sizeof before);
    assert_int_equal(kv_seq_capacity(b), 0);
    assert_int_equal(kv_seq_len(b), 0);
    assert_int_equal(kv_cache_free_blocks(c), 1);
    assert_int_equal(kv_seq_reserve(c, b, 16), 0); /* exactly the last block */
    assert_int_equal(kv_seq_reserve(c, b, 17), LLORCH_EKV_EXHAUSTED);
    kv_seq_free(c, a);
    kv_seq_free(c, b);
    assert_all_blocks_free(c);
    kv_cache_free(c);
}

static void kv_reserve_past_max_seq_len_is_a_range_error(void **state)
{
    (void)state;
    struct kv_cache *c = make_cache(32, LLORCH_KV_F32, 1);
    struct kv_seq *s;
    assert_int_equal(kv_seq_new(c, &s), 0);
    assert_int_equal(kv_seq_reserve(c, s, 257), LLORCH_ERANGE);
    assert_int_equal(kv_seq_reserve(c, s, 256), 0);
    kv_seq_free(c, s);
    kv_cache_free(c);
}

static void kv_sequence_handles_run_out_then_come_back(void **state)
{
    (void)state;
    struct kv_cache *c = make_cache(4, LLORCH_KV_F32, 2);
    struct kv_seq *a, *b, *d = (struct kv_seq *)c;
    assert_int_equal(kv_seq_new(c, &a), 0);
    assert_int_equal(kv_seq_new(c, &b), 0);
    assert_int_equal(kv_seq_new(c, &d), LLORCH_EFULL);
    assert_null(d);
    kv_seq_free(c, a);
    assert_int_equal(kv_seq_new(c, &d), 0);
    kv_seq_free(c, b);
    kv_seq_free(c, d);
    assert_all_blocks_free(c);
    kv_cache_free(c);
}

/* Writes a sequence of n tokens through reserve and commit. */
static struct kv_seq *seq_with(struct kv_cache *c, const llorch_token *t, uint32_t n)
{
    struct kv_seq *s;
    assert_int_equal(kv_seq_new(c, &s), 0);
    uint32_t done = kv_seq_share_prefix(c, s, t, n);
    assert_int_equal(kv_seq_reserve(c, s, n - done), 0);
    kv_seq_commit(c, s, t + done, n - done);
    return s;
}

static void kv_full_blocks_are_shared_with_refcounts(void **state)
{
    (void)state;
    struct kv_cache *c = make_cache(16, LLORCH_KV_F32, 4);
    llorch_token t[40];
    tokens_fill(t, 40, 7);
    struct kv_seq *a = seq_with(c, t, 40); /* blocks: 2 full + 1 partial */
    struct kv_seq *b;
    assert_int_equal(kv_seq_new(c, &b), 0);
    assert_int_equal(kv_seq_share_prefix(c, b, t, 40), 32);
    assert_int_equal(kv_seq_len(b), 32);
    assert_int_equal(kv_seq_blocks(b)[0], kv_seq_blocks(a)[0]);
    assert_int_equal(kv_seq_blocks(b)[1], kv_seq_blocks(a)[1]);
    struct kv_stats st;
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_used, 3);
    assert_int_equal(st.prefix_hits, 2);
    assert_int_equal(kv_seq_reserve(c, b, 8), 0);
    kv_seq_commit(c, b, t + 32, 8);
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_used, 4); /* b's own third block */
    /* a ends: the shared blocks stay used by b */
    kv_seq_free(c, a);
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_used, 3);
    /* b ends: the two full blocks stay cached for reuse but are allocatable */
    kv_seq_free(c, b);
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_cached, 2);
    assert_all_blocks_free(c);
    /* and a third sequence with the same prompt finds them */
    struct kv_seq *d;
    assert_int_equal(kv_seq_new(c, &d), 0);
    assert_int_equal(kv_seq_share_prefix(c, d, t, 40), 32);
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_cached, 0);
    assert_int_equal(st.blocks_used, 2);
    kv_seq_free(c, d);
    assert_all_blocks_free(c);
    kv_cache_free(c);
}

static void kv_share_prefix_always_leaves_the_last_token_to_compute(void **state)
{
    (void)state;
    struct kv_cache *c = make_cache(16, LLORCH_KV_F32, 4);
    llorch_token t[32];
    tokens_fill(t, 32, 3);
    struct kv_seq *a = seq_with(c, t, 32);
    struct kv_seq *b;
    assert_int_equal(kv_seq_new(c, &b), 0);
    assert_int_equal(kv_seq_share_prefix(c, b, t, 32), 16);
    kv_seq_free(c, b);
    assert_int_equal(kv_seq_new(c, &b), 0);
    assert_int_equal(kv_seq_share_prefix(c, b, t, 16), 0);
    kv_seq_free(c, b);
    kv_seq_free(c, a);
    assert_all_blocks_free(c);
    kv_cache_free(c);
}

static void kv_share_prefix_stops_at_the_first_different_token(void **state)
{
    (void)state;
    struct kv_cache *c = make_cache(16, LLORCH_KV_F32, 4);
    llorch_token t[49], u[49];
    tokens_fill(t, 49, 3);
    struct kv_seq *a = seq_with(c, t, 49);
    memcpy(u, t, sizeof u);
    u[20] = 999; /* differs inside the second block */
    struct kv_seq *b;
    assert_int_equal(kv_seq_new(c, &b), 0);
    assert_int_equal(kv_seq_share_prefix(c, b, u, 49), 16);
    kv_seq_free(c, b);
    u[20] = t[20];
    u[0] = 999; /* differs in the first block: nothing after it matches either */
    assert_int_equal(kv_seq_new(c, &b), 0);
    assert_int_equal(kv_seq_share_prefix(c, b, u, 49), 0);
    kv_seq_free(c, b);
    /* the same second block after another first block is not a hit */
    struct kv_seq *d = seq_with(c, u, 49);
    struct kv_stats st;
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_used, 8);
    kv_seq_free(c, d);
    kv_seq_free(c, a);
    assert_all_blocks_free(c);
    kv_cache_free(c);
}

static void kv_cached_prefixes_are_evicted_deepest_first(void **state)
{
    (void)state;
    struct kv_cache *c = make_cache(4, LLORCH_KV_F32, 4);
    llorch_token t[49];
    tokens_fill(t, 49, 11);
    struct kv_seq *a = seq_with(c, t, 49); /* 3 full blocks + 1 partial: the whole pool */
    kv_seq_free(c, a);
    struct kv_stats st;
    kv_cache_stats(c, &st);
    assert_int_equal(st.blocks_cached, 3);
    /* taking two blocks uses the free one, then evicts the deepest cached one */
    struct kv_seq *x;
    assert_int_equal(kv_seq_new(c, &x), 0);
    assert_int_equal(kv_seq_reserve(c, x, 32), 0);
    struct kv_seq *b;
    assert_int_equal(kv_seq_new(c, &b), 0);
    assert_int_equal(kv_seq_share_prefix(c, b, t, 49), 32);
    kv_seq_free(c, b);
    kv_seq_free(c, x);
    /* now take three: the free ones first, then the deepest of what is left */
    assert_int_equal(kv_seq_new(c, &x), 0);
    assert_int_equal(kv_seq_reserve(c, x, 48), 0);
    assert_int_equal(kv_seq_new(c, &b), 0);
    assert_int_equal(kv_seq_share_prefix(c, b, t, 49), 16);
    kv_seq_free(c, b);
    kv_seq_free(c, x);
    assert_all_blocks_free(c);
    kv_cache_free(c);
}

static void kv_store_writes_through_the_block_table_in_the_cache_type(void **state)
{
    (void)state;
    const enum llorch_kv_type types[3] = {LLORCH_KV_F32, LLORCH_KV_F16, LLORCH_KV_BF16};
    for (int ti = 0; ti < 3; ti++) {
        struct kv_cache *c = make_cache(6, types[ti], 2);
        assert_int_equal(kv_cache_type(c), types[ti]);
        struct kv_seq *pad, *s;
        assert_int_equal(kv_seq_new(c, &pad), 0);
        assert_int_equal(kv_seq_reserve(c, pad, 20), 0); /* so s's blocks are not 0, 1 */
        assert_int_equal(kv_seq_new(c, &s), 0);
        assert_int_equal(kv_seq_reserve(c, s, 20), 0);
        float k[16], v[16];
        for (int i = 0; i < 16; i++) {
            k[i] = 0.25f * (float)i + 1.0f;
            v[i] = -0.5f * (float)i;
        }
        kv_seq_store(c, s, 1, 17, k, v); /* second block, slot 1, layer 1 */
        struct kv_layer_view lv;
        kv_cache_layer(c, 1, &lv);
        const uint32_t blk = kv_seq_blocks(s)[1];
        for (int h = 0; h < 2; h++) {
            for (int d = 0; d < 8; d++) {
                size_t off = blk * lv.block_stride + h * lv.head_stride + 1 * lv.row_bytes;
                float kr, vr;
                if (types[ti] == LLORCH_KV_F32) {
                    memcpy(&kr, lv.k + off + d * 4, 4);
                    memcpy(&vr, lv.v + off + d * 4, 4);
                } else {
                    uint16_t hk, hv;
                    memcpy(&hk, lv.k + off + d * 2, 2);
                    memcpy(&hv, lv.v + off + d * 2, 2);
                    kr = types[ti] == LLORCH_KV_F16 ? half_f16_to_f32(hk) : half_bf16_to_f32(hk);
                    vr = types[ti] == LLORCH_KV_F16 ? half_f16_to_f32(hv) : half_bf16_to_f32(hv);
                }
                assert_true(kr == k[h * 8 + d]); /* these values are exact in all three types */
                assert_true(vr == v[h * 8 + d]);
            }
        }
        kv_seq_free(c, s);
        kv_seq_free(c, pad);
        assert_all_blocks_free(c);
        kv_cache_free(c);
    }
}

static void kv_every_block_returns_after_many_sequences_end(void **state)
{
    (void)state;
    struct kv_cache *c = make_cache(24, LLORCH_KV_F32, 8);
    struct kv_seq *seqs[8];
    llorch_token t[100];
    tokens_fill(t, 100, 5);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 8; i++) {
            assert_int_equal(kv_seq_new(c, &seqs[i]), 0);
            uint32_t n = 10 + (uint32_t)(i * 7 + round * 5) % 40;
            uint32_t done = kv_seq_share_prefix(c, seqs[i], t, n);
            int rc = kv_seq_reserve(c, seqs[i], n - done);
            if (rc == 0)
                kv_seq_commit(c, seqs[i], t + done, n - done);
            else
                assert_int_equal(rc, LLORCH_EKV_EXHAUSTED);
        }
        for (int i = 7; i >= 0; i -= 2)
            kv_seq_free(c, seqs[i]);
        for (int i = 0; i < 8; i += 2)
            kv_seq_free(c, seqs[i]);
        assert_all_blocks_free(c);
    }
    kv_cache_free(c);
}

/* The journal of one cache replayed on another of the same block count
 * (no storage: a pipeline coordinator's) gives the same block tables, also
 * through prefix reuse, frees and eviction. */
struct journal {
    struct kv_cache *peer;
    int n_ops, fails;
};

static void journal_apply(void *ctx, const struct kv_op *op)
{
    struct journal *j = ctx;
    j->n_ops++;
    if (kv_cache_replay(j->peer, op) != 0)
        j->fails++;
}

static void kv_journal_replayed_on_a_tables_only_cache_keeps_the_same_tables(void **state)
{
    (void)state;
    struct kv_cache *a = make_cache(8, LLORCH_KV_F32, 4);
    struct kv_cache_opts o = {.type = LLORCH_KV_F32,
                              .n_layer = 0,
                              .n_head_kv = 2,
                              .head_dim = 8,
                              .max_seqs = 4,
                              .max_seq_len = 256,
                              .n_blocks = 8};
    struct kv_cache *b = NULL;
    assert_int_equal(kv_cache_new(&b, &o), 0);
    struct journal j = {.peer = b};
    kv_cache_set_journal(a, journal_apply, &j);
    llorch_token t[80];
    tokens_fill(t, 80, 5);
    for (int round = 0; round < 3; round++) {
        struct kv_seq *s1, *s2;
        assert_int_equal(kv_seq_new(a, &s1), 0);
        uint32_t shared = kv_seq_share_prefix(a, s1, t, 40);
        assert_int_equal(kv_seq_reserve(a, s1, 40 - shared), 0);
        kv_seq_commit(a, s1, t + shared, 40 - shared);
        kv_seq_commit(b, kv_seq_at(b, kv_seq_index(a, s1)), t + shared, 40 - shared);
        assert_int_equal(kv_seq_new(a, &s2), 0);
        shared = kv_seq_share_prefix(a, s2, t, 60);
        assert_int_equal(shared, 32);
        assert_int_equal(kv_seq_reserve(a, s2, 60 - shared), 0);
        kv_seq_commit(a, s2, t + shared, 60 - shared);
        kv_seq_commit(b, kv_seq_at(b, kv_seq_index(a, s2)), t + shared, 60 - shared);
        struct kv_seq *const sa[2] = {s1, s2};
        for (int i = 0; i < 2; i++) {
            struct kv_seq *sb = kv_seq_at(b, kv_seq_index(a, sa[i]));
            assert_non_null(sb);
            assert_int_equal(kv_seq_len(sb), kv_seq_len(sa[i]));
            assert_int_equal(kv_seq_capacity(sb), kv_seq_capacity(sa[i]));
            assert_memory_equal(kv_seq_blocks(sb), kv_seq_blocks(sa[i]),
                                kv_seq_capacity(sa[i]) / B * sizeof(uint32_t));
        }
        assert_int_equal(kv_cache_free_blocks(a), kv_cache_free_blocks(b));
        kv_seq_free(a, round & 1 ? s1 : s2);
        kv_seq_free(a, round & 1 ? s2 : s1);
        tokens_fill(t + 40, 40, (llorch_token)(100 * round)); /* new suffixes evict */
    }
    assert_int_equal(j.fails, 0);
    assert_true(j.n_ops >= 3 * 6);
    /* a replay that does not fit is refused */
    struct kv_op bad = {.type = KV_OP_SEQ_FREE, .seq = 3};
    assert_int_equal(kv_cache_replay(b, &bad), LLORCH_EINVAL);
    assert_all_blocks_free(a);
    assert_all_blocks_free(b);
    kv_cache_free(a);
    kv_cache_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(kv_pool_is_sized_from_the_byte_budget),
        cmocka_unit_test(kv_new_rejects_a_budget_below_one_block),
        cmocka_unit_test(kv_reserve_commit_and_free_round_trip),
        cmocka_unit_test(kv_exhaustion_returns_error_and_changes_nothing),
        cmocka_unit_test(kv_reserve_past_max_seq_len_is_a_range_error),
        cmocka_unit_test(kv_sequence_handles_run_out_then_come_back),
        cmocka_unit_test(kv_full_blocks_are_shared_with_refcounts),
        cmocka_unit_test(kv_share_prefix_always_leaves_the_last_token_to_compute),
        cmocka_unit_test(kv_share_prefix_stops_at_the_first_different_token),
        cmocka_unit_test(kv_cached_prefixes_are_evicted_deepest_first),
        cmocka_unit_test(kv_store_writes_through_the_block_table_in_the_cache_type),
        cmocka_unit_test(kv_every_block_returns_after_many_sequences_end),
        cmocka_unit_test(kv_journal_replayed_on_a_tables_only_cache_keeps_the_same_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
