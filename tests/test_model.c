/* Model metadata: every shared model loads with the shapes MODELS.md lists,
 * vocab-only files load as vocab_only, and hand-built files exercise the
 * defaults, the tensor roles per architecture and the errors (missing key,
 * unsupported architecture, wrong shape naming tensor/expected/actual). */
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

static char errbuf[512];

static void shared_path(char *out, size_t n, const char *rel)
{
    const char *dir = getenv("LLORCH_SHARED");
    snprintf(out, n, "%s/%s", dir ? dir : "../shared", rel);
}

static struct model *load_shared(const char *rel)
{
    char path[512];
    shared_path(path, sizeof path, rel);
    struct model *m;
    if (model_load(&m, path, errbuf, sizeof errbuf))
        fail_msg("%s", errbuf);
    return m;
}

struct expect {
    const char *file;
    enum model_arch arch;
    uint32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_ctx, n_vocab;
    bool tied;
    float eps, rope_base;
    enum model_rope_type rope;
};

/* From ../shared/models/MODELS.md */
static const struct expect shared_models[] = {
    {"models/stories260k.gguf", MODEL_ARCH_LLAMA, 64, 5, 8, 4, 8, 172, 512, 512, true, 1e-5f,
     10000.0f, MODEL_ROPE_NORM},
    {"models/llama-tiny-f32.gguf", MODEL_ARCH_LLAMA, 64, 2, 4, 2, 16, 176, 256, 32000, false, 0,
     10000.0f, MODEL_ROPE_NORM},
    {"models/llama-tiny-f16.gguf", MODEL_ARCH_LLAMA, 64, 2, 4, 2, 16, 176, 256, 32000, false, 0,
     10000.0f, MODEL_ROPE_NORM},
    {"models/llama-tiny-q8_0.gguf", MODEL_ARCH_LLAMA, 64, 2, 4, 2, 16, 176, 256, 32000, false, 0,
     10000.0f, MODEL_ROPE_NORM},
    {"models/llama-tiny-q4_0.gguf", MODEL_ARCH_LLAMA, 64, 2, 4, 2, 16, 176, 256, 32000, false, 0,
     10000.0f, MODEL_ROPE_NORM},
    {"models/gpt2-tiny-f32.gguf", MODEL_ARCH_GPT2, 64, 2, 4, 4, 16, 256, 256, 50257, false, 1e-5f,
     10000.0f, MODEL_ROPE_NONE},
    {"models/llama-mid-f32.gguf", MODEL_ARCH_LLAMA, 256, 4, 8, 2, 32, 704, 512, 32000, true, 0,
     10000.0f, MODEL_ROPE_NORM},
    {"models/qwen2-tiny-f32.gguf", MODEL_ARCH_QWEN2, 64, 2, 4, 2, 16, 176, 256, 32000, false, 1e-6f,
     1e6f, MODEL_ROPE_NEOX},
    {"models/phi3-tiny-f32.gguf", MODEL_ARCH_PHI3, 64, 2, 4, 4, 16, 192, 256, 32000, false, 1e-5f,
     10000.0f, MODEL_ROPE_NEOX},
};

static void model_shared_models_load_with_documented_shapes(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof shared_models / sizeof shared_models[0]; i++) {
        const struct expect *e = &shared_models[i];
        struct model *m = load_shared(e->file);
        const struct model_hparams *hp = &m->hp;
        if (hp->arch != e->arch || hp->n_embd != e->n_embd || hp->n_layer != e->n_layer ||
            hp->n_head != e->n_head || hp->n_head_kv != e->n_head_kv ||
            hp->head_dim != e->head_dim || hp->n_ff != e->n_ff || hp->n_ctx_train != e->n_ctx ||
            hp->n_vocab != e->n_vocab || m->output_tied != e->tied || hp->rope_type != e->rope ||
            hp->rope_freq_base != e->rope_base || hp->rope_freq_scale != 1.0f)
            fail_msg("%s: arch %d embd %u layer %u head %u/%u hd %u ff %u ctx %u vocab %u tied %d "
                     "rope %d base %g",
                     e->file, hp->arch, hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv,
                     hp->head_dim, hp->n_ff, hp->n_ctx_train, hp->n_vocab, m->output_tied,
                     hp->rope_type, (double)hp->rope_freq_base);
        if (e->eps != 0 && hp->norm_eps != e->eps)
            fail_msg("%s: eps %g", e->file, (double)hp->norm_eps);
        assert_false(m->vocab_only);
        assert_int_equal(hp->n_rot, hp->arch == MODEL_ARCH_GPT2 ? 0 : hp->head_dim);
        for (uint32_t l = 0; l < hp->n_layer; l++) {
            const struct model_layer *ly = &m->layers[l];
            assert_non_null(ly->attn_norm);
            assert_non_null(ly->wo);
            assert_non_null(ly->ffn_up);
            assert_non_null(ly->ffn_down);
        }
        if (e->tied)
            assert_ptr_equal(m->output, m->tok_embd);
        else
            assert_ptr_not_equal(m->output, m->tok_embd);
        assert_true(model_weight_bytes(m) > 0);
        model_free(m);
    }
}

static void model_architectures_get_their_tensor_roles(void **state)
{
    (void)state;
    struct model *m = load_shared("models/qwen2-tiny-f32.gguf");
    assert_non_null(m->layers[1].bq);
    assert_non_null(m->layers[1].bk);
    assert_non_null(m->layers[1].bv);
    assert_null(m->layers[1].wqkv);
    assert_int_equal(m->layers[1].bk->ne[0], 32); /* n_head_kv * head_dim */
    model_free(m);
    m = load_shared("models/phi3-tiny-f32.gguf");
    assert_non_null(m->layers[0].wqkv);
    assert_null(m->layers[0].wq);
    assert_null(m->layers[0].ffn_gate);
    assert_int_equal(m->layers[0].ffn_up->ne[1], 384); /* [gate | up] */
    assert_int_equal(m->layers[0].wqkv->ne[1], 192);
    assert_string_equal(m->name, "Phi 3 Tiny F32");
    model_free(m);
    m = load_shared("models/gpt2-tiny-f32.gguf");
    assert_non_null(m->pos_embd);
    assert_non_null(m->output_norm_b);
    assert_non_null(m->layers[0].bqkv);
    assert_non_null(m->layers[0].ffn_down_b);
    assert_int_equal(m->pos_embd->ne[1], 256);
    model_free(m);
}

static void model_vocab_only_files_load_as_vocab_only(void **state)
{
    (void)state;
    struct model *m = load_shared("vocab/llama3-vocab.gguf");
    assert_true(m->vocab_only);
    assert_int_equal(m->hp.arch, MODEL_ARCH_LLAMA);
    assert_int_equal(m->hp.n_vocab, 128256);
    assert_null(m->layers);
    assert_null(m->tok_embd);
    assert_int_equal(model_weight_bytes(m), 0);
    model_free(m);
    m = load_shared("vocab/qwen2-vocab.gguf");
    assert_true(m->vocab_only);
    assert_int_equal(m->hp.arch, MODEL_ARCH_QWEN2);
    assert_int_equal(m->hp.n_vocab, 151936);
    model_free(m);
}

/* ---- hand-built files ---- */

struct build {
    const char *arch;
    uint32_t n_embd, n_head, n_head_kv, n_ff, n_layer, n_vocab, n_ctx;
    bool tied, no_head_kv, no_eps, rope_freqs, phi3_split;
    const char *skip;      /* tensor name left out */
    const char *bad_shape; /* tensor whose ne[0] is off by one */
    const char *extra;     /* extra tensor name */
};

static void add(struct gguf_writer *w, const struct build *b, const char *name, uint64_t d0,
                uint64_t d1)
{
    if (b->skip && !strcmp(name, b->skip))
        return;
    if (b->bad_shape && !strcmp(name, b->bad_shape))
        d0++;
    uint64_t ne[2] = {d0, d1};
    uint32_t nd = d1 ? 2 : 1;
    uint64_t n = d0 * (d1 ? d1 : 1);
    float *z = calloc(n, 4);
    assert_int_equal(gguf_writer_add_tensor(w, name, GGML_TYPE_F32, nd, ne, z, n * 4), 0);
    free(z);
}

/* Builds the file in memory and loads it; *bufp keeps the bytes the model
 * points into (free after model_free). */
static struct model *build_model(const struct build *b, int want_rc, void **bufp)
{
    struct gguf_writer *w;
    char k[128], t[128];
    assert_int_equal(gguf_writer_new(&w, 0), 0);
    const char *a = b->arch;
    bool gpt2 = !strcmp(a, "gpt2"), phi3 = !strcmp(a, "phi3"), qwen2 = !strcmp(a, "qwen2");
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", a), 0);
#define KEY(s) (snprintf(k, sizeof k, "%s." s, a), k)
    gguf_writer_set_u32(w, KEY("context_length"), b->n_ctx);
    gguf_writer_set_u32(w, KEY("embedding_length"), b->n_embd);
    gguf_writer_set_u32(w, KEY("block_count"), b->n_layer);
    gguf_writer_set_u32(w, KEY("feed_forward_length"), b->n_ff);
    gguf_writer_set_u32(w, KEY("attention.head_count"), b->n_head);
    if (!b->no_head_kv)
        gguf_writer_set_u32(w, KEY("attention.head_count_kv"), b->n_head_kv);
    if (!b->no_eps)
        gguf_writer_set_f32(w, gpt2 ? KEY("attention.layer_norm_epsilon")
                                    : KEY("attention.layer_norm_rms_epsilon"),
                            1e-6f);
    uint32_t E = b->n_embd, hd = E / b->n_head, Q = b->n_head * hd;
    uint32_t KV = (b->no_head_kv ? b->n_head : b->n_head_kv) * hd, F = b->n_ff;
    add(w, b, "token_embd.weight", E, b->n_vocab);
    if (gpt2)
        add(w, b, "position_embd.weight", E, b->n_ctx);
    add(w, b, "output_norm.weight", E, 0);
    if (gpt2)
        add(w, b, "output_norm.bias", E, 0);
    if (!b->tied)
        add(w, b, "output.weight", E, b->n_vocab);
    if (b->rope_freqs)
        add(w, b, "rope_freqs.weight", hd / 2, 0);
    if (b->extra)
        add(w, b, b->extra, E, 0);
    for (uint32_t l = 0; l < b->n_layer; l++) {
#define T(s) (snprintf(t, sizeof t, "blk.%u." s, l), t)
        add(w, b, T("attn_norm.weight"), E, 0);
        add(w, b, T("ffn_norm.weight"), E, 0);
        if (gpt2) {
            add(w, b, T("attn_norm.bias"), E, 0);
            add(w, b, T("ffn_norm.bias"), E, 0);
            add(w, b, T("attn_qkv.bias"), 3 * E, 0);
            add(w, b, T("attn_output.bias"), E, 0);
            add(w, b, T("ffn_up.bias"), F, 0);
            add(w, b, T("ffn_down.bias"), E, 0);
        }
        if (gpt2 || (phi3 && !b->phi3_split)) {
            add(w, b, T("attn_qkv.weight"), E, Q + 2 * KV);
        } else {
            add(w, b, T("attn_q.weight"), E, Q);
            add(w, b, T("attn_k.weight"), E, KV);
            add(w, b, T("attn_v.weight"), E, KV);
        }
        if (qwen2) {
            add(w, b, T("attn_q.bias"), Q, 0);
            add(w, b, T("attn_k.bias"), KV, 0);
            add(w, b, T("attn_v.bias"), KV, 0);
        }
        add(w, b, T("attn_output.weight"), Q, E);
        if (!gpt2 && !phi3)
            add(w, b, T("ffn_gate.weight"), E, F);
        add(w, b, T("ffn_up.weight"), E, phi3 ? 2 * F : F);
        add(w, b, T("ffn_down.weight"), F, E);
#undef T
    }
#undef KEY
    void *buf;
    size_t len;
    assert_int_equal(gguf_writer_write_buffer(w, &buf, &len), 0);
    gguf_writer_free(w);
    struct gguf_file *f;
    assert_int_equal(gguf_open_buffer(&f, buf, len, errbuf, sizeof errbuf), 0);
    struct model *m;
    int rc = model_load_gguf(&m, f, "built.gguf", errbuf, sizeof errbuf);
    if (rc != want_rc)
        fail_msg("rc %d, want %d: %s", rc, want_rc, errbuf);
    if (m) {
        *bufp = buf;
    } else {
        *bufp = NULL;
        free(buf);
    }
    return m;
}

static void free_built(struct model *m, void *buf)
{
    model_free(m);
    free(buf);
}

static const struct build base = {"llama", 8, 2, 1, 16, 2, 10, 16, false, false, false, false,
                                  false, NULL, NULL, NULL};

static void model_head_count_kv_defaults_to_head_count(void **state)
{
    (void)state;
    void *buf;
    struct build b = base;
    b.no_head_kv = true;
    struct model *m = build_model(&b, 0, &buf);
    assert_int_equal(m->hp.n_head_kv, 2);
    assert_int_equal(m->hp.head_dim, 4);
    assert_int_equal(m->hp.n_rot, 4);
    assert_true(m->hp.rope_freq_base == 10000.0f);
    assert_int_equal(m->hp.file_type, UINT32_MAX);
    assert_string_equal(m->name, "built");
    free_built(m, buf);
}

static void model_missing_output_is_tied_to_embeddings(void **state)
{
    (void)state;
    void *buf;
    struct build b = base;
    b.tied = true;
    struct model *m = build_model(&b, 0, &buf);
    assert_true(m->output_tied);
    assert_ptr_equal(m->output, m->tok_embd);
    free_built(m, buf);
}

static void model_rope_freqs_tensor_is_mapped_for_llama(void **state)
{
    (void)state;
    void *buf;
    struct build b = base;
    b.rope_freqs = true;
    struct model *m = build_model(&b, 0, &buf);
    assert_non_null(m->rope_freqs);
    assert_int_equal(m->rope_freqs->ne[0], 2);
    free_built(m, buf);
    b.arch = "qwen2"; /* not a qwen2 tensor */
    assert_null(build_model(&b, LLORCH_EFORMAT, &buf));
    assert_non_null(strstr(errbuf, "rope_freqs.weight"));
}

static void model_wrong_shape_names_tensor_expected_and_actual(void **state)
{
    (void)state;
    void *buf;
    struct build b = base;
    b.bad_shape = "blk.1.attn_k.weight";
    assert_null(build_model(&b, LLORCH_EFORMAT, &buf));
    assert_non_null(strstr(errbuf, "built.gguf"));
    assert_non_null(strstr(errbuf, "blk.1.attn_k.weight"));
    assert_non_null(strstr(errbuf, "shape [9, 4], expected [8, 4]"));
}

static void model_missing_tensor_is_named(void **state)
{
    (void)state;
    void *buf;
    struct build b = base;
    b.skip = "blk.0.ffn_gate.weight";
    assert_null(build_model(&b, LLORCH_EFORMAT, &buf));
    assert_non_null(strstr(errbuf, "'blk.0.ffn_gate.weight' is missing"));
    b = base;
    b.arch = "qwen2";
    b.skip = "blk.1.attn_v.bias";
    assert_null(build_model(&b, LLORCH_EFORMAT, &buf));
    assert_non_null(strstr(errbuf, "'blk.1.attn_v.bias' is missing"));
}

static void model_unknown_tensor_and_layer_out_of_range_are_rejected(void **state)
{
    (void)state;
    void *buf;
    struct build b = base;
    b.extra = "blk.7.attn_norm.weight";
    assert_null(build_model(&b, LLORCH_EFORMAT, &buf));
    assert_non_null(strstr(errbuf, "layer 7 but block_count is 2"));
    b.extra = "mystery.weight";
    assert_null(build_model(&b, LLORCH_EFORMAT, &buf));
    assert_non_null(strstr(errbuf, "'mystery.weight' is not used by architecture llama"));
}

static void model_missing_hyperparameter_key_is_named(void **state)
{
    (void)state;
    void *buf;
    struct build b = base;
    b.no_eps = true;
    assert_null(build_model(&b, LLORCH_EFORMAT, &buf));
    assert_non_null(strstr(errbuf, "llama.attention.layer_norm_rms_epsilon"));
}

static void model_unsupported_architecture_lists_supported_ones(void **state)
{
    (void)state;
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 0), 0);
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", "mamba"), 0);
    void *buf;
    size_t len;
    assert_int_equal(gguf_writer_write_buffer(w, &buf, &len), 0);
    gguf_writer_free(w);
    struct gguf_file *f;
    assert_int_equal(gguf_open_buffer(&f, buf, len, errbuf, sizeof errbuf), 0);
    struct model *m;
    assert_int_equal(model_load_gguf(&m, f, NULL, errbuf, sizeof errbuf), LLORCH_EUNSUPPORTED);
    assert_null(m);
    assert_non_null(strstr(errbuf, "'mamba'"));
    assert_non_null(strstr(errbuf, "gpt2, llama, qwen2, phi3"));
    free(buf);
}

static void model_vocab_only_needs_only_the_architecture(void **state)
{
    (void)state;
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 0), 0);
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", "qwen2"), 0);
    const char *toks[3] = {"a", "b", "c"};
    assert_int_equal(gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", toks, NULL, 3), 0);
    void *buf;
    size_t len;
    assert_int_equal(gguf_writer_write_buffer(w, &buf, &len), 0);
    gguf_writer_free(w);
    struct gguf_file *f;
    assert_int_equal(gguf_open_buffer(&f, buf, len, errbuf, sizeof errbuf), 0);
    struct model *m;
    assert_int_equal(model_load_gguf(&m, f, NULL, errbuf, sizeof errbuf), 0);
    assert_true(m->vocab_only);
    assert_int_equal(m->hp.n_vocab, 3);
    assert_int_equal(m->hp.rope_type, MODEL_ROPE_NEOX);
    model_free(m);
    free(buf);
}

static void model_phi3_accepts_split_qkv(void **state)
{
    (void)state;
    void *buf;
    struct build b = base;
    b.arch = "phi3";
    b.phi3_split = true;
    struct model *m = build_model(&b, 0, &buf);
    assert_non_null(m->layers[0].wq);
    assert_null(m->layers[0].wqkv);
    assert_int_equal(m->layers[0].ffn_up->ne[1], 32);
    assert_int_equal(m->hp.rope_type, MODEL_ROPE_NEOX);
    free_built(m, buf);
    b.phi3_split = false;
    b.skip = "blk.0.attn_qkv.weight";
    assert_null(build_model(&b, LLORCH_EFORMAT, &buf));
    assert_non_null(strstr(errbuf, "blk.0.attn_qkv.weight"));
}

static void model_gpt2_builds_with_biases_and_positions(void **state)
{
    (void)state;
    void *buf;
    struct build b = base;
    b.arch = "gpt2";
    b.n_head_kv = 2;
    struct model *m = build_model(&b, 0, &buf);
    assert_int_equal(m->hp.rope_type, MODEL_ROPE_NONE);
    assert_non_null(m->pos_embd);
    assert_non_null(m->layers[1].bqkv);
    free_built(m, buf);
    b.skip = "position_embd.weight";
    assert_null(build_model(&b, LLORCH_EFORMAT, &buf));
    assert_non_null(strstr(errbuf, "position_embd.weight"));
}

static void model_missing_file_fails_cleanly(void **state)
{
    (void)state;
    struct model *m;
    assert_int_equal(model_load(&m, "/nonexistent.gguf", errbuf, sizeof errbuf), LLORCH_ENOTFOUND);
    assert_null(m);
    model_free(NULL);
    assert_string_equal(model_arch_name(MODEL_ARCH_PHI3), "phi3");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(model_shared_models_load_with_documented_shapes),
        cmocka_unit_test(model_architectures_get_their_tensor_roles),
        cmocka_unit_test(model_vocab_only_files_load_as_vocab_only),
        cmocka_unit_test(model_head_count_kv_defaults_to_head_count),
        cmocka_unit_test(model_missing_output_is_tied_to_embeddings),
        cmocka_unit_test(model_rope_freqs_tensor_is_mapped_for_llama),
        cmocka_unit_test(model_wrong_shape_names_tensor_expected_and_actual),
        cmocka_unit_test(model_missing_tensor_is_named),
        cmocka_unit_test(model_unknown_tensor_and_layer_out_of_range_are_rejected),
        cmocka_unit_test(model_missing_hyperparameter_key_is_named),
        cmocka_unit_test(model_unsupported_architecture_lists_supported_ones),
        cmocka_unit_test(model_vocab_only_needs_only_the_architecture),
        cmocka_unit_test(model_phi3_accepts_split_qkv),
        cmocka_unit_test(model_gpt2_builds_with_biases_and_positions),
        cmocka_unit_test(model_missing_file_fails_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
