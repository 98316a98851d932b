/* llorch-synth: its models load in model_load for every architecture and
 * type, are deterministic per seed, carry a usable vocabulary (built in or
 * copied), follow llama-quantize's fallbacks for rows that do not
 * block-quantise and its Q4_K_M mix, and round-trip through `llorch-cli
 * inspect --json`. Runs the real binaries. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf.h"
#include "llorch/error.h"
#include "model.h"
#include "quant.h"

static char errbuf[512];

static const char *build_dir(void)
{
    const char *b = getenv("LLORCH_BUILD");
    return b ? b : "build";
}

static const char *shared_dir(void)
{
    const char *d = getenv("LLORCH_SHARED");
    return d ? d : "../shared";
}

static void tmp_path(char *out, size_t n, const char *tag)
{
    snprintf(out, n, "/tmp/llorch-test-synth-%d-%s.gguf", (int)getpid(), tag);
}

/* Runs llorch-synth with args; returns its exit status. */
static int synth(const char *out, const char *args)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s/tools/llorch-synth' -o '%s' %s 2>/dev/null", build_dir(), out,
             args);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static struct model *load(const char *path)
{
    struct model *m;
    if (model_load(&m, path, errbuf, sizeof errbuf))
        fail_msg("%s", errbuf);
    return m;
}

static void synth_each_arch_loads_with_requested_shape(void **state)
{
    (void)state;
    static const struct {
        const char *arch;
        enum model_arch a;
        enum model_rope_type rope;
    } archs[] = {{"llama", MODEL_ARCH_LLAMA, MODEL_ROPE_NORM},
                 {"qwen2", MODEL_ARCH_QWEN2, MODEL_ROPE_NEOX},
                 {"phi3", MODEL_ARCH_PHI3, MODEL_ROPE_NEOX},
                 {"gpt2", MODEL_ARCH_GPT2, MODEL_ROPE_NONE}};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        char path[256], args[256];
        tmp_path(path, sizeof path, archs[i].arch);
        bool gpt2 = archs[i].a == MODEL_ARCH_GPT2;
        snprintf(args, sizeof args,
                 "--arch %s --n-embd 96 --n-layer 3 --n-head 6 --n-head-kv %d --n-ff 128 "
                 "--n-ctx 64 --rope-base 1000000 --seed 7",
                 archs[i].arch, gpt2 ? 6 : 2);
        assert_int_equal(synth(path, args), 0);
        struct model *m = load(path);
        const struct model_hparams *hp = &m->hp;
        assert_int_equal(hp->arch, archs[i].a);
        assert_int_equal(hp->n_embd, 96);
        assert_int_equal(hp->n_layer, 3);
        assert_int_equal(hp->n_head, 6);
        assert_int_equal(hp->n_head_kv, gpt2 ? 6 : 2);
        assert_int_equal(hp->head_dim, 16);
        assert_int_equal(hp->n_ff, 128);
        assert_int_equal(hp->n_ctx_train, 64);
        assert_int_equal(hp->rope_type, archs[i].rope);
        if (!gpt2)
            assert_true(hp->rope_freq_base == 1e6f);
        assert_false(m->output_tied);
        assert_int_equal(hp->file_type, 0);
        model_free(m);
        unlink(path);
    }
}

static double tensor_stat(const struct gguf_tensor *t, double *mean)
{
    float *x = malloc(t->n_elements * sizeof *x);
    assert_int_equal(quant_dequantize(t->type, t->data, x, t->n_elements), 0);
    double s = 0, s2 = 0;
    for (uint64_t i = 0; i < t->n_elements; i++)
        s += x[i], s2 += (double)x[i] * x[i];
    free(x);
    *mean = s / (double)t->n_elements;
    return sqrt(s2 / (double)t->n_elements - *mean * *mean);
}

static void synth_weights_are_small_normals_and_norms_near_one(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "stats");
    assert_int_equal(synth(path, "--n-embd 128 --n-ff 256 --seed 3"), 0);
    struct model *m = load(path);
    double mean, sd = tensor_stat(m->layers[0].ffn_up, &mean);
    assert_true(fabs(mean) < 0.001);
    assert_true(fabs(sd - 0.02) < 0.001);
    sd = tensor_stat(m->layers[1].attn_norm, &mean);
    assert_true(fabs(mean - 1.0) < 0.01);
    assert_true(sd > 0.01 && sd < 0.03);
    model_free(m);
    unlink(path);
}

static void synth_same_seed_gives_same_bytes(void **state)
{
    (void)state;
    char a[256], b[256], c[256];
    tmp_path(a, sizeof a, "seed-a");
    tmp_path(b, sizeof b, "seed-b");
    tmp_path(c, sizeof c, "seed-c");
    assert_int_equal(synth(a, "--seed 11 --type q4_0"), 0);
    assert_int_equal(synth(b, "--seed 11 --type q4_0"), 0);
    assert_int_equal(synth(c, "--seed 12 --type q4_0"), 0);
    struct gguf_file *fa, *fb, *fc;
    assert_int_equal(gguf_open(&fa, a, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_open(&fb, b, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_open(&fc, c, errbuf, sizeof errbuf), 0);
    const struct gguf_tensor *ta = gguf_tensor_find(fa, "blk.1.attn_q.weight");
    const struct gguf_tensor *tb = gguf_tensor_find(fb, "blk.1.attn_q.weight");
    const struct gguf_tensor *tc = gguf_tensor_find(fc, "blk.1.attn_q.weight");
    assert_int_equal(gguf_file_size(fa), gguf_file_size(fb));
    assert_memory_equal(ta->data, tb->data, ta->nbytes);
    assert_memory_not_equal(ta->data, tc->data, ta->nbytes);
    gguf_close(fa);
    gguf_close(fb);
    gguf_close(fc);
    unlink(a);
    unlink(b);
    unlink(c);
}

static void synth_quantised_types_fall_back_to_f16_for_odd_rows(void **state)
{
    (void)state;
    static const struct {
        const char *flag;
        enum ggml_type t;
        uint32_t ft;
    } types[] = {{"f16", GGML_TYPE_F16, 1},   {"bf16", GGML_TYPE_BF16, 32},
                 {"q8_0", GGML_TYPE_Q8_0, 7},  {"q4_0", GGML_TYPE_Q4_0, 2},
                 {"q4_1", GGML_TYPE_Q4_1, 3},  {"q5_0", GGML_TYPE_Q5_0, 8},
                 {"q5_1", GGML_TYPE_Q5_1, 9}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char path[256], args[64];
        tmp_path(path, sizeof path, types[i].flag);
        snprintf(args, sizeof args, "--type %s", types[i].flag); /* tiny: n_ff 176 */
        assert_int_equal(synth(path, args), 0);
        struct model *m = load(path);
        assert_int_equal(m->hp.file_type, types[i].ft);
        assert_int_equal(m->layers[0].wq->type, types[i].t);
        assert_int_equal(m->tok_embd->type, types[i].t);
        bool blocked = ggml_type_block_elems(types[i].t) > 1;
        assert_int_equal(m->layers[0].ffn_down->type, blocked ? GGML_TYPE_F16 : types[i].t);
        assert_int_equal(m->layers[0].attn_norm->type, GGML_TYPE_F32);
        model_free(m);
        unlink(path);
    }
}

/* K types on rows of 256: every 2-D weight in the type, the ftype of its
 * "mostly" (_S) name, and the weights decode close to what was generated
 * (the same seed as f32 draws the same values). */
static void synth_k_types_quantise_every_weight_when_rows_are_256(void **state)
{
    (void)state;
    static const struct {
        const char *flag;
        enum ggml_type t;
        uint32_t ft;
        double tol; /* of the RMS difference to f32, relative to the weights' 0.02 */
    } types[] = {{"q4_k", GGML_TYPE_Q4_K, 14, 0.09},
                 {"q5_k", GGML_TYPE_Q5_K, 16, 0.045},
                 {"q6_k", GGML_TYPE_Q6_K, 18, 0.022}};
    const char *shape = "--n-embd 256 --n-ff 512 --n-head 4 --n-head-kv 2 --n-vocab 1024 --seed 4";
    char ref[256], args[256];
    tmp_path(ref, sizeof ref, "k-f32");
    snprintf(args, sizeof args, "%s --type f32", shape);
    assert_int_equal(synth(ref, args), 0);
    struct model *r = load(ref);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char path[256];
        tmp_path(path, sizeof path, types[i].flag);
        snprintf(args, sizeof args, "%s --type %s", shape, types[i].flag);
        assert_int_equal(synth(path, args), 0);
        struct model *m = load(path);
        assert_int_equal(m->hp.file_type, types[i].ft);
        const struct gguf_tensor *w[] = {m->tok_embd, m->output, m->layers[0].wq,
                                         m->layers[1].wv, m->layers[1].wo, m->layers[0].ffn_down};
        for (size_t k = 0; k < sizeof w / sizeof w[0]; k++)
            assert_int_equal(w[k]->type, types[i].t);
        assert_int_equal(m->layers[0].attn_norm->type, GGML_TYPE_F32);
        const struct gguf_tensor *q = m->layers[1].ffn_down, *f = r->layers[1].ffn_down;
        float *x = malloc(q->n_elements * sizeof *x);
        assert_int_equal(quant_dequantize(q->type, q->data, x, q->n_elements), 0);
        double e2 = 0;
        for (uint64_t j = 0; j < q->n_elements; j++) {
            double d = (double)x[j] - ((const float *)f->data)[j];
            e2 += d * d;
        }
        free(x);
        double rel = sqrt(e2 / (double)q->n_elements) / 0.02;
        if (!(rel < types[i].tol))
            fail_msg("%s: ffn_down differs from f32 by %.4f of its scale", types[i].flag, rel);
        model_free(m);
        unlink(path);
    }
    model_free(r);
    unlink(ref);
}

/* The tiny preset's rows (n_embd 64, n_ff 176) cannot take a K type: rows
 * of 64 fall back as llama-quantize does, rows of 176 (not a multiple of
 * 32 either) to F16, and the tool says so. */
static void synth_k_types_fall_back_as_llama_quantize_for_short_rows(void **state)
{
    (void)state;
    static const struct {
        const char *flag;
        enum ggml_type fallback;
    } types[] = {{"q4_k", GGML_TYPE_Q5_0}, {"q5_k", GGML_TYPE_Q5_1}, {"q6_k", GGML_TYPE_Q8_0}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char path[256], cmd[1024];
        tmp_path(path, sizeof path, types[i].flag);
        snprintf(cmd, sizeof cmd, "'%s/tools/llorch-synth' -o '%s' --type %s 2>&1", build_dir(), path,
                 types[i].flag);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        char out[1024] = "";
        size_t n = fread(out, 1, sizeof out - 1, p);
        out[n] = 0;
        assert_int_equal(pclose(p), 0);
        assert_non_null(strstr(out, "not a multiple of 256"));
        struct model *m = load(path);
        assert_int_equal(m->tok_embd->type, types[i].fallback);
        assert_int_equal(m->layers[0].wq->type, types[i].fallback);
        assert_int_equal(m->layers[0].ffn_down->type, GGML_TYPE_F16);
        model_free(m);
        unlink(path);
    }
}

/* llama-quantize's Q4_K_M for a model without experts: Q4_K, with Q6_K for
 * output (token_embd when tied) and for attn_v (attn_qkv) and ffn_down in
 * use_more_bits layers: with 8 layers, 0, 3, 6 and 7. The same choice of
 * types and bytes as llama-quantize's was checked by hand on llama, phi3
 * and a tied tiny model (tools cannot run it in CI). */
static void synth_q4_k_m_mixes_q6_k_where_llama_quantize_does(void **state)
{
    (void)state;
    static const bool more[8] = {true, false, false, true, false, false, true, true};
    char path[256];
    tmp_path(path, sizeof path, "q4km");
    assert_int_equal(synth(path, "--n-embd 256 --n-ff 512 --n-layer 8 --n-head 4 --n-head-kv 2 "
                                 "--type q4_k_m"),
                     0);
    struct model *m = load(path);
    assert_int_equal(m->hp.file_type, 15);
    assert_int_equal(m->output->type, GGML_TYPE_Q6_K);
    assert_int_equal(m->tok_embd->type, GGML_TYPE_Q4_K);
    for (int l = 0; l < 8; l++) {
        const struct model_layer *L = &m->layers[l];
        enum ggml_type big = more[l] ? GGML_TYPE_Q6_K : GGML_TYPE_Q4_K;
        assert_int_equal(L->wv->type, big);
        assert_int_equal(L->ffn_down->type, big);
        assert_int_equal(L->wq->type, GGML_TYPE_Q4_K);
        assert_int_equal(L->wk->type, GGML_TYPE_Q4_K);
        assert_int_equal(L->wo->type, GGML_TYPE_Q4_K);
        assert_int_equal(L->ffn_gate->type, GGML_TYPE_Q4_K);
        assert_int_equal(L->ffn_up->type, GGML_TYPE_Q4_K);
    }
    model_free(m);
    unlink(path);
    /* phi3's fused attn_qkv counts as attn_v; tied, token_embd is the output */
    assert_int_equal(synth(path, "--arch phi3 --n-embd 256 --n-ff 256 --n-layer 4 --n-head 4 "
                                 "--n-head-kv 4 --tied --type q4_k_m"),
                     0);
    m = load(path);
    assert_int_equal(m->tok_embd->type, GGML_TYPE_Q6_K);
    for (int l = 0; l < 4; l++) { /* 4 layers: n/8 = 0, so 3 (>= 7n/8) and 2 (l % 3 == 2) */
        enum ggml_type big = l >= 2 ? GGML_TYPE_Q6_K : GGML_TYPE_Q4_K;
        assert_int_equal(m->layers[l].wqkv->type, big);
        assert_int_equal(m->layers[l].ffn_down->type, big);
        assert_int_equal(m->layers[l].wo->type, GGML_TYPE_Q4_K);
    }
    model_free(m);
    unlink(path);
}

static void synth_builtin_vocab_is_sentencepiece_shaped(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "vocab");
    assert_int_equal(synth(path, "--vocab builtin --n-vocab 2000 --tied"), 0);
    struct gguf_file *f;
    assert_int_equal(gguf_open(&f, path, errbuf, sizeof errbuf), 0);
    struct gguf_arr toks, types, scores;
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.tokens", &toks), 0);
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.token_type", &types), 0);
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.scores", &scores), 0);
    assert_int_equal(toks.count, 2000);
    assert_int_equal(types.count, 2000);
    assert_int_equal(scores.count, 2000);
    struct gguf_str s;
    assert_int_equal(gguf_arr_str(f, &toks, 0, &s), 0);
    assert_memory_equal(s.ptr, "<unk>", 5);
    assert_int_equal(gguf_arr_str(f, &toks, 3 + 0x41, &s), 0);
    assert_memory_equal(s.ptr, "<0x41>", 6);
    int32_t ty[300];
    memcpy(ty, types.data, sizeof ty);
    assert_int_equal(ty[0], 2);
    assert_int_equal(ty[1], 3);
    assert_int_equal(ty[258], 6);
    /* "▁the" and all its prefixes are there, so SPM merging can reach it */
    bool the = false, th = false;
    for (uint64_t i = 0; i < toks.count; i++) {
        assert_int_equal(gguf_arr_str(f, &toks, i, &s), 0);
        the |= s.len == 6 && !memcmp(s.ptr, "\xe2\x96\x81the", 6);
        th |= s.len == 5 && !memcmp(s.ptr, "\xe2\x96\x81th", 5);
    }
    assert_true(the && th);
    uint32_t bos;
    assert_int_equal(gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &bos), 0);
    assert_int_equal(bos, 1);
    gguf_close(f);
    struct model *m = load(path);
    assert_int_equal(m->hp.n_vocab, 2000);
    assert_true(m->output_tied);
    model_free(m);
    unlink(path);
}

static void synth_vocab_from_copies_every_tokenizer_key(void **state)
{
    (void)state;
    char path[256], args[1024], src[512];
    tmp_path(path, sizeof path, "vocab-from");
    snprintf(src, sizeof src, "%s/vocab/qwen2-vocab.gguf", shared_dir());
    snprintf(args, sizeof args, "--arch qwen2 --n-embd 32 --n-head 2 --n-head-kv 1 --n-ff 32 "
             "--n-layer 1 --type q8_0 --tied --vocab-from '%s'", src);
    assert_int_equal(synth(path, args), 0);
    struct gguf_file *s, *d;
    assert_int_equal(gguf_open(&s, src, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_open(&d, path, errbuf, sizeof errbuf), 0);
    int copied = 0;
    for (uint64_t i = 0; i < gguf_kv_count(s); i++) {
        struct gguf_str k;
        enum gguf_type t;
        gguf_kv_at(s, i, &k, &t);
        if (k.len < 10 || memcmp(k.ptr, "tokenizer.", 10))
            continue;
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
        uint64_t j;
        assert_int_equal(gguf_kv_find(d, key, &j), 0);
        const void *ra, *rb;
        uint64_t la, lb;
        gguf_kv_raw_at(s, i, &ra, &la);
        gguf_kv_raw_at(d, j, &rb, &lb);
        assert_int_equal(la, lb);
        assert_memory_equal(ra, rb, la);
        copied++;
    }
    assert_true(copied >= 8);
    gguf_close(s);
    gguf_close(d);
    struct model *m = load(path);
    assert_int_equal(m->hp.n_vocab, 151936);
    assert_int_equal(m->tok_embd->ne[1], 151936);
    model_free(m);
    unlink(path);
}

static void synth_rope_freqs_are_llama3_factors(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "rope");
    assert_int_equal(synth(path, "--rope-freqs --n-embd 128 --n-head 2 --n-head-kv 1 "
                                 "--rope-base 500000"),
                     0);
    struct model *m = load(path);
    assert_non_null(m->rope_freqs);
    assert_int_equal(m->rope_freqs->ne[0], 32); /* n_rot / 2 */
    float f[32];
    memcpy(f, m->rope_freqs->data, sizeof f);
    /* high frequencies untouched, low ones scaled by 8, smooth in between */
    assert_true(f[0] == 1.0f);
    assert_true(f[31] == 8.0f);
    for (int i = 1; i < 32; i++)
        assert_true(f[i] >= f[i - 1]);
    bool between = false;
    for (int i = 0; i < 32; i++)
        between |= f[i] > 1.0f && f[i] < 8.0f;
    assert_true(between);
    model_free(m);
    unlink(path);
}

static json_t *inspect_json(const char *path, int *status)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s/tools/llorch-cli' inspect '%s' --json 2>/dev/null", build_dir(),
             path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    json_error_t e;
    json_t *j = json_loadf(p, JSON_DISABLE_EOF_CHECK, &e);
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return j;
}

static void synth_output_roundtrips_through_inspect(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "inspect");
    assert_int_equal(synth(path, "--arch phi3 --n-embd 64 --n-head 4 --n-head-kv 4 --n-ff 96 "
                                 "--n-ctx 128 --type q8_0 --eps 0.000001"),
                     0);
    struct model *m = load(path);
    int st;
    json_t *j = inspect_json(path, &st);
    assert_int_equal(st, 0);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "arch")), "phi3");
    assert_int_equal(json_integer_value(json_object_get(j, "n_vocab")), m->hp.n_vocab);
    assert_int_equal(json_integer_value(json_object_get(j, "n_ctx_train")), 128);
    assert_int_equal(json_integer_value(json_object_get(j, "n_embd")), 64);
    assert_int_equal(json_integer_value(json_object_get(j, "n_layer")), 2);
    assert_int_equal(json_integer_value(json_object_get(j, "n_head")), 4);
    assert_int_equal(json_integer_value(json_object_get(j, "n_head_kv")), 4);
    assert_int_equal(json_integer_value(json_object_get(j, "n_ff")), 96);
    assert_true(json_real_value(json_object_get(j, "rope_freq_base")) == 10000.0);
    assert_true(fabs(json_real_value(json_object_get(j, "norm_eps")) - 1e-6) < 1e-12);
    assert_string_equal(json_string_value(json_object_get(j, "tokenizer")), "llama");
    assert_int_equal(json_integer_value(json_object_get(j, "n_tensors")),
                     gguf_tensor_count(m->file));
    assert_int_equal(json_integer_value(json_object_get(j, "bytes")), model_weight_bytes(m));
    json_t *eog = json_object_get(j, "eog");
    assert_int_equal(json_array_size(eog), 1);
    assert_int_equal(json_integer_value(json_array_get(eog, 0)), 2);
    json_decref(j);
    model_free(m);
    unlink(path);
}

static void inspect_reads_vocab_only_files_and_rejects_bad_ones(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/vocab/qwen2-vocab.gguf", shared_dir());
    int st;
    json_t *j = inspect_json(path, &st);
    assert_int_equal(st, 0);
    assert_true(json_is_true(json_object_get(j, "vocab_only")));
    assert_int_equal(json_integer_value(json_object_get(j, "n_vocab")), 151936);
    assert_string_equal(json_string_value(json_object_get(j, "tokenizer_pre")), "qwen2");
    json_t *sp = json_object_get(j, "special");
    assert_int_equal(json_integer_value(json_object_get(sp, "eos")), 151645);
    json_t *eog = json_object_get(j, "eog");
    bool im_end = false, eot = false;
    for (size_t i = 0; i < json_array_size(eog); i++) {
        im_end |= json_integer_value(json_array_get(eog, i)) == 151645;
        eot |= json_integer_value(json_array_get(eog, i)) == 151643;
    }
    assert_true(im_end && eot);
    json_decref(j);
    /* a truncated copy fails with exit status 1 */
    char bad[256];
    tmp_path(bad, sizeof bad, "bad");
    FILE *fp = fopen(bad, "wb");
    fwrite("GGUF\3\0\0\0\1\0\0", 1, 11, fp);
    fclose(fp);
    j = inspect_json(bad, &st);
    assert_int_equal(st, 1);
    json_decref(j);
    unlink(bad);
}

static void synth_rejects_bad_arguments(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "args");
    assert_int_not_equal(synth(path, "--n-embd 0"), 0);
    assert_int_not_equal(synth(path, "--n-embd 100 --n-head 3"), 0);
    assert_int_not_equal(synth(path, "--arch mamba"), 0);
    assert_int_not_equal(synth(path, "--type q2_k"), 0);
    assert_int_not_equal(synth(path, "--type q4_k_s"), 0);
    assert_int_not_equal(synth(path, "--preset nope"), 0);
    assert_int_not_equal(synth(path, "--n-vocab 10"), 0); /* smaller than the built-in vocab */
    assert_int_not_equal(synth(path, "--vocab-from /nonexistent.gguf"), 0);
    assert_int_not_equal(access(path, F_OK), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(synth_each_arch_loads_with_requested_shape),
        cmocka_unit_test(synth_weights_are_small_normals_and_norms_near_one),
        cmocka_unit_test(synth_same_seed_gives_same_bytes),
        cmocka_unit_test(synth_quantised_types_fall_back_to_f16_for_odd_rows),
        cmocka_unit_test(synth_k_types_quantise_every_weight_when_rows_are_256),
        cmocka_unit_test(synth_k_types_fall_back_as_llama_quantize_for_short_rows),
        cmocka_unit_test(synth_q4_k_m_mixes_q6_k_where_llama_quantize_does),
        cmocka_unit_test(synth_builtin_vocab_is_sentencepiece_shaped),
        cmocka_unit_test(synth_vocab_from_copies_every_tokenizer_key),
        cmocka_unit_test(synth_rope_freqs_are_llama3_factors),
        cmocka_unit_test(synth_output_roundtrips_through_inspect),
        cmocka_unit_test(inspect_reads_vocab_only_files_and_rejects_bad_ones),
        cmocka_unit_test(synth_rejects_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
