/* Hostile GGUF input: thousands of mutated copies of small files (every
 * truncation length, random byte flips, huge and odd values patched over
 * every header position) must either fail with a message or open into a
 * consistent file whose every string and tensor lies inside the buffer.
 * Each mutant sits in its own exact-size heap block, so ASan catches any read
 * past the end. Deterministic seed; a few seconds under ASan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gguf.h"
#include "llorch/error.h"
#include "model.h"
#include "quant.h"

struct rng {
    uint64_t s;
};

static uint64_t rnd(struct rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dull;
}

/* A tiny llama model (loads in model_load) with one value of most types. */
static void *make_model(size_t *len)
{
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 0), 0);
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_u32(w, "llama.context_length", 16);
    gguf_writer_set_u32(w, "llama.embedding_length", 8);
    gguf_writer_set_u32(w, "llama.block_count", 1);
    gguf_writer_set_u32(w, "llama.feed_forward_length", 32);
    gguf_writer_set_u32(w, "llama.attention.head_count", 2);
    gguf_writer_set_u32(w, "llama.attention.head_count_kv", 1);
    gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
    const char *toks[4] = {"<unk>", "<s>", "</s>", "a"};
    gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", toks, NULL, 4);
    float scores[4] = {0, 0, 0, -1};
    gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, 4);
    /* nested: [[7u16], ["x"]] */
    uint8_t nv[64], *p = nv;
    uint32_t t = GGUF_TYPE_ARRAY, t16 = GGUF_TYPE_UINT16, ts = GGUF_TYPE_STRING;
    uint64_t two = 2, one = 1;
    memcpy(p, &t, 4), memcpy(p + 4, &two, 8), p += 12;
    memcpy(p, &t16, 4), memcpy(p + 4, &one, 8), p[12] = 7, p[13] = 0, p += 14;
    memcpy(p, &ts, 4), memcpy(p + 4, &one, 8), memcpy(p + 12, &one, 8), p[20] = 'x', p += 21;
    gguf_writer_set_raw(w, "test.nested", GGUF_TYPE_ARRAY, nv, (uint64_t)(p - nv));
    static const struct {
        const char *name;
        uint64_t d0, d1;
        enum ggml_type type;
    } ts_[] = {
        {"token_embd.weight", 8, 4, GGML_TYPE_F16},
        {"output_norm.weight", 8, 0, GGML_TYPE_F32},
        {"blk.0.attn_norm.weight", 8, 0, GGML_TYPE_F32},
        {"blk.0.attn_q.weight", 8, 8, GGML_TYPE_F32},
        {"blk.0.attn_k.weight", 8, 4, GGML_TYPE_F32},
        {"blk.0.attn_v.weight", 8, 4, GGML_TYPE_F32},
        {"blk.0.attn_output.weight", 8, 8, GGML_TYPE_F32},
        {"blk.0.ffn_norm.weight", 8, 0, GGML_TYPE_F32},
        {"blk.0.ffn_gate.weight", 8, 32, GGML_TYPE_F32},
        {"blk.0.ffn_up.weight", 8, 32, GGML_TYPE_F32},
        {"blk.0.ffn_down.weight", 32, 8, GGML_TYPE_Q8_0},
    };
    uint8_t data[2048];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 31);
    for (size_t i = 0; i < sizeof ts_ / sizeof ts_[0]; i++) {
        uint64_t ne[2] = {ts_[i].d0, ts_[i].d1};
        uint64_t row;
        assert_int_equal(ggml_type_row_bytes(ts_[i].type, ts_[i].d0, &row), 0);
        uint64_t nbytes = row * (ts_[i].d1 ? ts_[i].d1 : 1);
        assert_true(nbytes <= sizeof data);
        if (ts_[i].type == GGML_TYPE_Q8_0) /* keep the f16 scales finite */
            memset(data, 0, nbytes);
        assert_int_equal(gguf_writer_add_tensor(w, ts_[i].name, ts_[i].type, ts_[i].d1 ? 2 : 1, ne,
                                                data, nbytes),
                         0);
    }
    void *buf;
    assert_int_equal(gguf_writer_write_buffer(w, &buf, len), 0);
    gguf_writer_free(w);
    return buf;
}

/* Touches everything an opened file exposes; ASan flags any stray read. */
static uint64_t walk(const struct gguf_file *f, const uint8_t *buf, size_t len)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < gguf_kv_count(f); i++) {
        struct gguf_str k;
        enum gguf_type t;
        const void *raw;
        uint64_t rl;
        assert_int_equal(gguf_kv_at(f, i, &k, &t), 0);
        assert_true((const uint8_t *)k.ptr >= buf && (const uint8_t *)k.ptr + k.len <= buf + len);
        assert_int_equal(gguf_kv_raw_at(f, i, &raw, &rl), 0);
        assert_true((const uint8_t *)raw >= buf && (const uint8_t *)raw + rl <= buf + len);
        for (uint64_t j = 0; j < rl; j++)
            sum += ((const uint8_t *)raw)[j];
        struct gguf_arr a;
        if (t == GGUF_TYPE_ARRAY && gguf_kv_arr_at(f, i, &a) == 0 && a.type == GGUF_TYPE_STRING) {
            for (uint64_t j = 0; j < a.count; j++) {
                struct gguf_str s;
                assert_int_equal(gguf_arr_str(f, &a, j, &s), 0);
                assert_true((const uint8_t *)s.ptr >= buf &&
                            (const uint8_t *)s.ptr + s.len <= buf + len);
                if (s.len)
                    sum += (uint8_t)s.ptr[s.len - 1];
            }
        }
    }
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(f, i);
        uint64_t row;
        assert_true(ggml_type_known(t->type));
        assert_int_equal(ggml_type_row_bytes(t->type, t->ne[0], &row), 0);
        assert_true(t->data == NULL || ((const uint8_t *)t->data >= buf &&
                                        (const uint8_t *)t->data + t->nbytes <= buf + len));
        if (t->nbytes)
            sum += ((const uint8_t *)t->data)[t->nbytes - 1];
    }
    return sum;
}

struct stats {
    int opened, failed, loaded;
};

/* Opens one mutant from its own exact-size allocation. */
static void try_one(const uint8_t *src, size_t len, struct stats *st)
{
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    if (len)
        memcpy(buf, src, len);
    char err[512];
    err[0] = 0;
    struct gguf_file *f;
    int rc = gguf_open_buffer(&f, buf, len, err, sizeof err);
    if (rc) {
        assert_true(rc < 0);
        assert_null(f);
        if (!err[0])
            fail_msg("failure %d without a message (len %zu)", rc, len);
        st->failed++;
    } else {
        st->opened++;
        (void)walk(f, buf, len);
        struct model *m;
        if (model_load_gguf(&m, f, NULL, err, sizeof err) == 0) {
            st->loaded++;
            if (!m->vocab_only) {
                for (uint32_t l = 0; l < m->hp.n_layer; l++)
                    assert_non_null(m->layers[l].wo);
                assert_non_null(m->output);
            }
            model_free(m);
        } else {
            assert_null(m);
            assert_true(err[0] != 0);
        }
    }
    free(buf);
}

static void fuzz_every_truncation_fails_or_opens_consistently(void **state)
{
    (void)state;
    size_t len;
    uint8_t *base = make_model(&len);
    struct stats st = {0};
    try_one(base, len, &st);
    assert_int_equal(st.loaded, 1); /* the unmutated file is a valid model */
    for (size_t n = 0; n < len; n++)
        try_one(base, n, &st);
    /* truncation anywhere in the data must fail; some header cuts cannot */
    assert_true(st.failed >= (int)len - 1);
    free(base);
}

static void fuzz_random_byte_flips_fail_cleanly(void **state)
{
    (void)state;
    size_t len;
    uint8_t *base = make_model(&len);
    uint8_t *m = malloc(len);
    struct rng r = {0x1234567887654321ull};
    struct stats st = {0};
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(m, base, len);
        int flips = 1 + (int)(rnd(&r) % 8);
        /* mostly in the header, where the structure is */
        size_t span = (rnd(&r) & 3) ? 1024 : len;
        if (span > len)
            span = len;
        for (int k = 0; k < flips; k++) {
            uint64_t v = rnd(&r);
            m[v % span] = (v >> 32) & 1 ? (uint8_t)(v >> 40) : m[v % span] ^ (uint8_t)(1u << ((v >> 40) & 7));
        }
        try_one(m, len, &st);
    }
    assert_true(st.failed > 100);
    assert_true(st.opened > 100);
    free(m);
    free(base);
}

static void fuzz_huge_values_over_every_header_field_fail_cleanly(void **state)
{
    (void)state;
    size_t len;
    uint8_t *base = make_model(&len);
    struct gguf_file *f;
    char err[256];
    assert_int_equal(gguf_open_buffer(&f, base, len, err, sizeof err), 0);
    size_t header = (size_t)gguf_data_offset(f);
    gguf_close(f);
    uint8_t *m = malloc(len);
    static const uint64_t v64[] = {UINT64_MAX, 1ull << 63, (uint64_t)INT64_MAX, 1ull << 32,
                                   0x100000000001ull, 0};
    static const uint32_t v32[] = {UINT32_MAX, 0x80000000u, 13, 9, 8, 5, 0, 100};
    struct stats st = {0};
    for (size_t at = 0; at + 8 <= header; at++) {
        for (size_t k = 0; k < sizeof v64 / sizeof v64[0]; k++) {
            memcpy(m, base, len);
            uint64_t v = v64[k] ? v64[k] : (uint64_t)len; /* 0 slot: the file length */
            memcpy(m + at, &v, 8);
            try_one(m, len, &st);
        }
        for (size_t k = 0; k < sizeof v32 / sizeof v32[0]; k++) {
            memcpy(m, base, len);
            memcpy(m + at, &v32[k], 4);
            try_one(m, len, &st);
        }
    }
    assert_true(st.failed > (int)header);
    free(m);
    free(base);
}

static void fuzz_vocab_only_file_mutations_fail_cleanly(void **state)
{
    (void)state;
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 0), 0);
    gguf_writer_set_str(w, "general.architecture", "qwen2");
    const char *toks[64];
    char store[64][8];
    for (int i = 0; i < 64; i++) {
        snprintf(store[i], sizeof store[i], "t%d", i);
        toks[i] = store[i];
    }
    gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", toks, NULL, 64);
    gguf_writer_set_str_arr(w, "tokenizer.ggml.merges", toks, NULL, 32);
    void *base;
    size_t len;
    assert_int_equal(gguf_writer_write_buffer(w, &base, &len), 0);
    gguf_writer_free(w);
    struct stats st = {0};
    try_one(base, len, &st);
    assert_int_equal(st.loaded, 1);
    for (size_t n = 0; n < len; n++)
        try_one(base, n, &st);
    uint8_t *m = malloc(len);
    struct rng r = {42};
    for (int iter = 0; iter < 1000; iter++) {
        memcpy(m, base, len);
        uint64_t v = rnd(&r), at = v % (len - 8);
        uint64_t big = (v >> 8) & 1 ? UINT64_MAX >> (v & 63) : (v >> 16) % (2 * len);
        memcpy(m + at, &big, 8);
        try_one(m, len, &st);
    }
    free(m);
    free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fuzz_every_truncation_fails_or_opens_consistently),
        cmocka_unit_test(fuzz_random_byte_flips_fail_cleanly),
        cmocka_unit_test(fuzz_huge_values_over_every_header_field_fail_cleanly),
        cmocka_unit_test(fuzz_vocab_only_file_mutations_fail_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
