/* GGUF parsing (moved here from the unit test's fixed mutations): any
 * bytes either fail to open with a message, or open into a file whose every
 * key, string, array and tensor lies inside the buffer; an opened file goes
 * on to the model loader and the tokenizer, which fail with a message or
 * succeed. Each input sits in its own exact-size heap block, so ASan catches
 * any read past the end.
 *
 * With LLORCH_FUZZ_WRITE_SEEDS=DIR set, writes the seed corpus (a tiny
 * llama model with one value of most types, and a vocabulary-only qwen2
 * file) into DIR and exits. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "gguf.h"
#include "llorch/error.h"
#include "model.h"
#include "quant.h"
#include "tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define assert_int_equal(a, b) FUZZ_CHECK((a) == (b))
#define assert_true(c) FUZZ_CHECK(c)

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

/* A vocabulary-only qwen2 file (64 tokens, 32 merges). */
static void *make_vocab(size_t *len)
{
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
    void *buf;
    assert_int_equal(gguf_writer_write_buffer(w, &buf, len), 0);
    gguf_writer_free(w);
    return buf;
}

static void write_seed(const char *dir, const char *name, void *buf, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    FUZZ_CHECK(f && fwrite(buf, 1, len, f) == len && fclose(f) == 0);
    free(buf);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *dir = getenv("LLORCH_FUZZ_WRITE_SEEDS");
    if (dir && dir[0]) {
        size_t len;
        void *b = make_model(&len);
        write_seed(dir, "llama-tiny-model.gguf", b, len);
        b = make_vocab(&len);
        write_seed(dir, "qwen2-vocab-only.gguf", b, len);
        exit(0);
    }
    return 0;
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    FUZZ_CHECK(buf != NULL);
    if (size)
        memcpy(buf, data, size);
    char err[512];
    err[0] = 0;
    struct gguf_file *f;
    int rc = gguf_open_buffer(&f, buf, size, err, sizeof err);
    if (rc) {
        FUZZ_CHECK(rc < 0 && f == NULL && err[0] != 0);
        free(buf);
        return 0;
    }
    uint64_t sum = walk(f, buf, size);
    __asm__ volatile("" : : "r"(sum)); /* the reads stay */
    struct tokenizer *t;
    err[0] = 0;
    if (tokenizer_new(&t, f, err, sizeof err) == 0) {
        llorch_token ids[64];
        size_t n = 0;
        if (tokenizer_encode(t, "hello t1 t2", 11, true, true, ids, 64, &n, NULL) == 0) {
            char out[1024];
            size_t ol;
            (void)tokenizer_decode(t, ids, n, out, sizeof out, &ol);
        }
        tokenizer_free(t);
    } else {
        FUZZ_CHECK(err[0] != 0);
    }
    struct model *m;
    err[0] = 0;
    if (model_load_gguf(&m, f, NULL, err, sizeof err) == 0) {
        if (!m->vocab_only) {
            for (uint32_t l = 0; l < m->hp.n_layer; l++)
                FUZZ_CHECK(m->layers[l].wo != NULL);
            FUZZ_CHECK(m->output != NULL);
        }
        model_free(m); /* closes f */
    } else {
        FUZZ_CHECK(m == NULL && err[0] != 0);
    }
    /* the model took f, loaded or not */
    free(buf);
    return 0;
}
