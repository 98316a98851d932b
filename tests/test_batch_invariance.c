/* Batch invariance: one sequence computed alone, with its prompt in chunks,
 * inside batches of 3 and 16 sequences that mix prefill chunks and decode
 * tokens, and on top of a prefix shared from the cache, gives bit-identical
 * logits at every step (no tolerance: every matmul row, norm, RoPE and
 * attention task depends only on its own row and its own sequence's cache).
 * Checked for f32 (exact mode) and int8 on stories260k, for f32 on the
 * qwen2 model, and for every weight class at every level: the shared files'
 * classes, and the K types (the Q4_K_M mix, Q5_K) and Q4_1/Q5_0/Q5_1 in tiny
 * models that llorch-synth writes at test time. After every sequence ends,
 * every KV block is back in the free pool. */
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

#include "forward.h"
#include "kernels.h"
#include "model.h"
#include "tpool.h"

#define N_PROMPT 37 /* two full KV blocks and 5 more */
#define N_DECODE 6
#define MAX_OTHERS 15
#define OTHER_LEN 40

struct others {
    struct kv_seq *seq[MAX_OTHERS];
    llorch_token tok[MAX_OTHERS][OTHER_LEN];
    uint32_t done[MAX_OTHERS];
    uint32_t chunk[MAX_OTHERS]; /* tokens per step while in "prefill" */
    uint32_t prompt[MAX_OTHERS]; /* after this many, one token per step */
    int n;
};

static struct forward *engine(const struct model *m, struct tpool *pool, enum llorch_dtype dt,
                             enum llorch_isa isa)
{
    struct forward_opts fo = {
        .dtype = dt, .isa = isa, .kv_type = dt == LLORCH_DTYPE_F32 ? LLORCH_KV_F32 : LLORCH_KV_F16,
        .kv_bytes = 0, .max_seqs = 16, .max_step_tokens = 128, .pool = pool, .llama_rounding = true,
    };
    fo.kv_bytes = 64ull * 16 * 2 * m->hp.n_layer * m->hp.n_head_kv * m->hp.head_dim * 4;
    struct forward *fw;
    char err[256];
    int rc = forward_new(&fw, m, &fo, err, sizeof err);
    if (rc)
        print_error("forward_new: %s\n", err);
    assert_int_equal(rc, 0);
    return fw;
}

static void others_start(struct forward *fw, struct others *o, int n, uint32_t seed)
{
    struct kv_cache *kv = forward_kv(fw);
    const uint32_t nv = forward_n_vocab(fw);
    o->n = n;
    for (int i = 0; i < n; i++) {
        assert_int_equal(kv_seq_new(kv, &o->seq[i]), 0);
        assert_int_equal(kv_seq_reserve(kv, o->seq[i], OTHER_LEN), 0);
        for (int t = 0; t < OTHER_LEN; t++)
            o->tok[i][t] = (llorch_token)(1 + (seed * 7919u + (uint32_t)i * 104729u + (uint32_t)t * 31u) % (nv - 1));
        o->done[i] = 0;
        o->chunk[i] = 1 + (uint32_t)(i * 5 + (int)seed) % 7;
        o->prompt[i] = (uint32_t)(i % 3) * 9; /* 0: decode from the start */
    }
}

/* Adds each unfinished other to the step. */
static uint32_t others_entries(struct others *o, struct forward_entry *e, float *logits, uint32_t nv)
{
    uint32_t n = 0;
    for (int i = 0; i < o->n; i++) {
        if (o->done[i] >= OTHER_LEN)
            continue;
        uint32_t c = o->done[i] < o->prompt[i] ? o->chunk[i] : 1;
        if (c > OTHER_LEN - o->done[i])
            c = OTHER_LEN - o->done[i];
        e[n] = (struct forward_entry){.seq = o->seq[i], .tokens = &o->tok[i][o->done[i]],
                                      .n_tokens = c, .logits = logits + (size_t)n * nv};
        o->done[i] += c;
        n++;
    }
    return n;
}

static void others_end(struct forward *fw, struct others *o)
{
    for (int i = 0; i < o->n; i++)
        kv_seq_free(forward_kv(fw), o->seq[i]);
    o->n = 0;
}

/* Runs S (prompt in chunks of `chunk`, then N_DECODE tokens) with n_others
 * other sequences in every step; out gets S's logits after the prompt and
 * after each decode token: [N_DECODE + 1][n_vocab]. With share, S first takes
 * what the cache holds of its prompt. */
static void run_s(struct forward *fw, const llorch_token *s_tok, uint32_t chunk, int n_others,
                  bool share, float *out)
{
    const uint32_t nv = forward_n_vocab(fw);
    struct kv_cache *kv = forward_kv(fw);
    struct others o;
    memset(&o, 0, sizeof o);
    float *scratch = malloc((size_t)(MAX_OTHERS + 1) * nv * sizeof *scratch);
    assert_non_null(scratch);
    struct forward_entry e[MAX_OTHERS + 1];
    /* S takes its cached prefix first: the others' allocations may evict */
    struct kv_seq *s;
    assert_int_equal(kv_seq_new(kv, &s), 0);
    uint32_t done = share ? kv_seq_share_prefix(kv, s, s_tok, N_PROMPT) : 0;
    if (share)
        assert_int_equal(done, 32);
    assert_int_equal(kv_seq_reserve(kv, s, N_PROMPT + N_DECODE - done), 0);
    others_start(fw, &o, n_others, (uint32_t)n_others + chunk);
    /* the others start one step early, so some are mid-way when S arrives */
    if (n_others) {
        uint32_t n = others_entries(&o, e, scratch, nv);
        assert_int_equal(forward_step(fw, e, n), 0);
    }
    int out_i = 0;
    while (out_i <= N_DECODE) {
        uint32_t c = done < N_PROMPT ? (chunk < N_PROMPT - done ? chunk : N_PROMPT - done) : 1;
        const bool emits = done + c >= N_PROMPT;
        uint32_t n = 0;
        /* S sits at different places in the batch */
        if (out_i % 2 == 0)
            e[n++] = (struct forward_entry){.seq = s, .tokens = s_tok + done, .n_tokens = c,
                                            .logits = emits ? out + (size_t)out_i * nv : scratch};
        n += others_entries(&o, e + n, scratch + (size_t)nv, nv);
        if (out_i % 2 == 1)
            e[n++] = (struct forward_entry){.seq = s, .tokens = s_tok + done, .n_tokens = c,
                                            .logits = emits ? out + (size_t)out_i * nv : scratch};
        assert_int_equal(forward_step(fw, e, n), 0);
        done += c;
        if (emits)
            out_i++;
    }
    assert_int_equal(kv_seq_len(s), N_PROMPT + N_DECODE);
    kv_seq_free(kv, s);
    others_end(fw, &o);
    free(scratch);
}

/* path: a file name under $LLORCH_SHARED/models, or an absolute path */
static void check_model_at(const char *file, enum llorch_dtype dt, enum llorch_isa isa)
{
    const char *shared = getenv("LLORCH_SHARED");
    char path[1024], err[256];
    if (file[0] == '/')
        snprintf(path, sizeof path, "%s", file);
    else
        snprintf(path, sizeof path, "%s/models/%s", shared ? shared : "../shared", file);
    struct model *m;
    int rc = model_load(&m, path, err, sizeof err);
    if (rc)
        print_error("%s: %s\n", path, err);
    assert_int_equal(rc, 0);
    struct tpool *pool;
    struct tpool_opts po = {.n_threads = 2, .name = "test-bi"};
    assert_int_equal(tpool_new(&pool, &po), 0);
    struct forward *fw = engine(m, pool, dt, isa);
    const uint32_t nv = forward_n_vocab(fw);
    llorch_token s_tok[N_PROMPT + N_DECODE];
    for (int i = 0; i < N_PROMPT + N_DECODE; i++)
        s_tok[i] = (llorch_token)(3 + (i * 131) % (nv - 3));
    const size_t bytes = (size_t)(N_DECODE + 1) * nv * sizeof(float);
    float *alone = malloc(bytes), *got = malloc(bytes);
    assert_non_null(alone);
    assert_non_null(got);

    struct {
        const char *what;
        uint32_t chunk;
        int others;
        bool share;
    } cases[] = {
        {"alone", N_PROMPT, 0, false},
        {"batch of 1, prompt in chunks of 8", 8, 0, false},
        {"batch of 3", N_PROMPT, 2, false},
        {"batch of 3, prompt in chunks of 5", 5, 2, false},
        {"batch of 16", N_PROMPT, 15, false},
        {"batch of 16, prompt in chunks of 13", 13, 15, false},
        {"batch of 16 on a shared prefix", N_PROMPT, 15, true},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        run_s(fw, s_tok, cases[c].chunk, cases[c].others, cases[c].share, c == 0 ? alone : got);
        if (c == 0)
            continue;
        size_t diff = 0;
        for (size_t i = 0; i < bytes / sizeof(float); i++)
            diff += memcmp(&alone[i], &got[i], sizeof(float)) != 0;
        print_message("%s %s %s %s: %zu of %zu logits differ\n", file, forward_dtype_name(dt),
                      forward_isa_name(fw), cases[c].what, diff, bytes / sizeof(float));
        assert_int_equal(diff, 0);
    }
    struct kv_stats st;
    kv_cache_stats(forward_kv(fw), &st);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.seqs_active, 0);
    assert_int_equal(kv_cache_free_blocks(forward_kv(fw)), st.blocks_total);
    assert_true(st.prefix_hits >= 2);
    free(alone);
    free(got);
    forward_free(fw);
    tpool_free(pool);
    model_free(m);
}

static void check_model(const char *file, enum llorch_dtype dt)
{
    check_model_at(file, dt, LLORCH_ISA_AUTO);
}

static const struct {
    enum llorch_isa isa;
    enum kernels_isa k;
} levels[] = {{LLORCH_ISA_SCALAR, KERNELS_ISA_SCALAR},
              {LLORCH_ISA_AVX2, KERNELS_ISA_AVX2},
              {LLORCH_ISA_AVXVNNI, KERNELS_ISA_AVXVNNI},
              {LLORCH_ISA_AVX512, KERNELS_ISA_AVX512}};

/* Every weight class the shared models have (f32, f16, q8_0, q4_0 kept in
 * their class, and the f32/bf16/int8 overrides), at every level this CPU
 * runs; the other classes: batch_invariance_synthetic_classes_at_every_level. */
static void batch_invariance_every_weight_class_at_every_level(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        enum llorch_dtype dt;
    } runs[] = {
        {"stories260k.gguf", LLORCH_DTYPE_NATIVE},    {"llama-tiny-f16.gguf", LLORCH_DTYPE_NATIVE},
        {"llama-tiny-q8_0.gguf", LLORCH_DTYPE_NATIVE}, {"llama-tiny-q4_0.gguf", LLORCH_DTYPE_NATIVE},
        {"stories260k.gguf", LLORCH_DTYPE_F32},       {"stories260k.gguf", LLORCH_DTYPE_BF16},
        {"stories260k.gguf", LLORCH_DTYPE_INT8},
    };
    for (size_t l = 0; l < sizeof levels / sizeof levels[0]; l++) {
        if (!kernels_get(levels[l].k)) {
            print_message("skipped level %s: this CPU lacks it\n", kernels_isa_name(levels[l].k));
            continue;
        }
        for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++)
            check_model_at(runs[r].file, runs[r].dt, levels[l].isa);
    }
}

/* The classes no shared file has, in models llorch-synth writes (tiny, so
 * every level stays fast): q4_k_m puts Q4_K and Q6_K in one model (with 2
 * layers, layer 1's attn_v and ffn_down and the output are Q6_K); Q5_K,
 * which Q4_K_M does not use, on its own; Q4_1, Q5_0 and Q5_1 at rows of 64
 * (the tiny preset's shape, n_ff 128 so that ffn_down quantises too). */
static const struct {
    const char *type, *shape;
    enum ggml_type want_ffn_down0, want_output; /* what the file must hold */
} synth_models[] = {
    {"q4_k_m", "--n-embd 256 --n-ff 256 --n-layer 2 --n-head 4 --n-head-kv 2", GGML_TYPE_Q4_K,
     GGML_TYPE_Q6_K},
    {"q5_k", "--n-embd 256 --n-ff 256 --n-layer 2 --n-head 4 --n-head-kv 2", GGML_TYPE_Q5_K,
     GGML_TYPE_Q5_K},
    {"q4_1", "--n-ff 128", GGML_TYPE_Q4_1, GGML_TYPE_Q4_1},
    {"q5_0", "--n-ff 128", GGML_TYPE_Q5_0, GGML_TYPE_Q5_0},
    {"q5_1", "--n-ff 128", GGML_TYPE_Q5_1, GGML_TYPE_Q5_1},
};

static void synth_model_path(char *out, size_t n, size_t i)
{
    snprintf(out, n, "/tmp/llorch-test-bi-%d-%s.gguf", (int)getpid(), synth_models[i].type);
}

static int synth_models_write(void **state)
{
    (void)state;
    const char *build = getenv("LLORCH_BUILD");
    for (size_t i = 0; i < sizeof synth_models / sizeof synth_models[0]; i++) {
        char path[256], cmd[1024];
        synth_model_path(path, sizeof path, i);
        snprintf(cmd, sizeof cmd, "'%s/tools/llorch-synth' -o '%s' --type %s %s --seed %zu",
                 build ? build : "build", path, synth_models[i].type, synth_models[i].shape, 3 + i);
        int st = system(cmd);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) {
            print_error("llorch-synth failed: %s\n", cmd);
            return -1;
        }
    }
    return 0;
}

static int synth_models_remove(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof synth_models / sizeof synth_models[0]; i++) {
        char path[256];
        synth_model_path(path, sizeof path, i);
        unlink(path);
    }
    return 0;
}

static void batch_invariance_synthetic_classes_at_every_level(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof synth_models / sizeof synth_models[0]; i++) {
        char path[256], err[256];
        synth_model_path(path, sizeof path, i);
        struct model *m;
        int rc = model_load(&m, path, err, sizeof err);
        if (rc)
            print_error("%s: %s\n", path, err);
        assert_int_equal(rc, 0);
        /* the file holds the classes this test is for (not a fallback) */
        assert_int_equal(m->layers[0].ffn_down->type, synth_models[i].want_ffn_down0);
        assert_int_equal(m->output->type, synth_models[i].want_output);
        if (!strcmp(synth_models[i].type, "q4_k_m"))
            assert_int_equal(m->layers[1].ffn_down->type, GGML_TYPE_Q6_K);
        model_free(m);
    }
    for (size_t l = 0; l < sizeof levels / sizeof levels[0]; l++) {
        if (!kernels_get(levels[l].k)) {
            print_message("skipped level %s: this CPU lacks it\n", kernels_isa_name(levels[l].k));
            continue;
        }
        for (size_t i = 0; i < sizeof synth_models / sizeof synth_models[0]; i++) {
            char path[256];
            synth_model_path(path, sizeof path, i);
            check_model_at(path, LLORCH_DTYPE_NATIVE, levels[l].isa);
        }
    }
}

static void batch_invariance_stories260k_f32_is_bit_identical(void **state)
{
    (void)state;
    check_model("stories260k.gguf", LLORCH_DTYPE_F32);
}

static void batch_invariance_stories260k_int8_is_bit_identical(void **state)
{
    (void)state;
    check_model("stories260k.gguf", LLORCH_DTYPE_INT8);
}

static void batch_invariance_qwen2_f32_is_bit_identical(void **state)
{
    (void)state;
    check_model("qwen2-tiny-f32.gguf", LLORCH_DTYPE_F32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(batch_invariance_stories260k_f32_is_bit_identical),
        cmocka_unit_test(batch_invariance_stories260k_int8_is_bit_identical),
        cmocka_unit_test(batch_invariance_qwen2_f32_is_bit_identical),
        cmocka_unit_test(batch_invariance_every_weight_class_at_every_level),
        cmocka_unit_test(batch_invariance_synthetic_classes_at_every_level),
    };
    return cmocka_run_group_tests(tests, synth_models_write, synth_models_remove);
}
