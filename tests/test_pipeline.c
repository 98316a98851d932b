/* Layer ranges of the forward pass (pipeline stages) in one process: stages
 * chained by their hidden states give logits bit-identical to the whole
 * model for prefill and decode of several sequences at once, with 2 and 4
 * stages and an uneven split; each stage packs only its layers (the stages'
 * packed bytes sum to the whole model's); bad ranges and requests a range
 * cannot serve are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "forward.h"
#include "kv.h"
#include "llorch/error.h"
#include "model.h"
#include "tpool.h"
#include "util.h"

#define MAX_STAGES 4
#define N_SEQ 3
#define N_DEC 5

static const char *model_path(const char *name)
{
    static char buf[1024];
    const char *dir = getenv("LLORCH_SHARED");
    snprintf(buf, sizeof buf, "%s/models/%s", dir ? dir : "../shared", name);
    return buf;
}

static struct forward *fw_open(const struct model *m, struct tpool *pool, uint32_t first,
                               uint32_t end, enum llorch_dtype dtype)
{
    struct forward_opts fo = {
        .dtype = dtype,
        .kv_type = LLORCH_KV_AUTO,
        .kv_bytes = 64ull << 20,
        .max_seqs = 8,
        .max_step_tokens = 64,
        .pool = pool,
        .layer_first = first,
        .layer_end = end,
    };
    struct forward *fw;
    char err[256];
    int rc = forward_new(&fw, m, &fo, err, sizeof err);
    if (rc)
        fail_msg("forward_new [%u, %u): %s", first, end, err);
    return fw;
}

/* Runs the same steps through the whole model and through stages split at
 * cuts[0..n_stages) (first layers); every logit must be the same float. */
static void run_chain(const char *model, enum llorch_dtype dtype, const uint32_t *cuts,
                      int n_stages)
{
    struct model *m;
    char err[256];
    if (model_load(&m, model_path(model), err, sizeof err))
        fail_msg("model_load %s: %s", model, err);
    struct tpool *pool;
    struct tpool_opts po = {.n_threads = 2, .name = "t-pipe"};
    assert_int_equal(tpool_new(&pool, &po), 0);
    const uint32_t n_layer = m->hp.n_layer, n_vocab = m->hp.n_vocab, n_embd = m->hp.n_embd;

    struct forward *whole = fw_open(m, pool, 0, 0, dtype);
    struct forward *st[MAX_STAGES];
    uint64_t stage_bytes = 0;
    for (int s = 0; s < n_stages; s++) {
        st[s] = fw_open(m, pool, cuts[s], s + 1 < n_stages ? cuts[s + 1] : n_layer, dtype);
        stage_bytes += forward_weight_bytes(st[s]);
    }
    /* each stage packs only its layers: together exactly the whole model */
    assert_true(stage_bytes == forward_weight_bytes(whole));
    if (n_stages > 1)
        assert_true(forward_weight_bytes(st[0]) < forward_weight_bytes(whole));

    struct kv_seq *ws[N_SEQ], *ss[MAX_STAGES][N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        assert_int_equal(kv_seq_new(forward_kv(whole), &ws[i]), 0);
        assert_int_equal(kv_seq_reserve(forward_kv(whole), ws[i], 40), 0);
        for (int s = 0; s < n_stages; s++) {
            assert_int_equal(kv_seq_new(forward_kv(st[s]), &ss[s][i]), 0);
            assert_int_equal(kv_seq_reserve(forward_kv(st[s]), ss[s][i], 40), 0);
        }
    }
    llorch_token prompt[N_SEQ][16];
    const uint32_t plen[N_SEQ] = {7, 13, 3};
    for (int i = 0; i < N_SEQ; i++)
        for (uint32_t t = 0; t < plen[i]; t++)
            prompt[i][t] = (llorch_token)(1 + (i * 131 + t * 37) % (n_vocab - 1));
    float *lw = malloc((size_t)N_SEQ * n_vocab * sizeof(float));
    float *lp = malloc((size_t)N_SEQ * n_vocab * sizeof(float));
    float *h[2] = {malloc(64 * (size_t)n_embd * sizeof(float)),
                   malloc(64 * (size_t)n_embd * sizeof(float))};
    llorch_token next[N_SEQ];
    for (int step = 0; step <= N_DEC; step++) {
        struct forward_entry ew[N_SEQ], es[N_SEQ];
        for (int i = 0; i < N_SEQ; i++) {
            const llorch_token *toks = step ? &next[i] : prompt[i];
            uint32_t n = step ? 1 : plen[i];
            ew[i] = (struct forward_entry){
                .seq = ws[i], .tokens = toks, .n_tokens = n, .logits = lw + (size_t)i * n_vocab};
            es[i] = ew[i];
            es[i].logits = lp + (size_t)i * n_vocab;
        }
        assert_int_equal(forward_step(whole, ew, N_SEQ), 0);
        const float *in = NULL;
        for (int s = 0; s < n_stages; s++) {
            for (int i = 0; i < N_SEQ; i++)
                es[i].seq = ss[s][i];
            float *out = s + 1 < n_stages ? h[s & 1] : NULL;
            assert_int_equal(forward_step_hidden(st[s], es, N_SEQ, in, out), 0);
            in = out;
        }
        if (memcmp(lw, lp, (size_t)N_SEQ * n_vocab * sizeof(float)))
            fail_msg("%s, %d stages: logits differ at step %d", model, n_stages, step);
        for (int i = 0; i < N_SEQ; i++) {
            uint32_t best = 0;
            for (uint32_t v = 1; v < n_vocab; v++)
                if (lw[(size_t)i * n_vocab + v] > lw[(size_t)i * n_vocab + best])
                    best = v;
            next[i] = (llorch_token)best;
        }
    }
    free(h[0]);
    free(h[1]);
    free(lw);
    free(lp);
    for (int s = 0; s < n_stages; s++)
        forward_free(st[s]);
    forward_free(whole);
    tpool_free(pool);
    model_free(m);
}

static void pipeline_two_stages_give_the_whole_models_logits_bit_for_bit(void **state)
{
    (void)state;
    const uint32_t cuts[] = {0, 2};
    run_chain("llama-mid-f32.gguf", LLORCH_DTYPE_F32, cuts, 2);
    const uint32_t cuts_tiny[] = {0, 1};
    run_chain("llama-tiny-q8_0.gguf", LLORCH_DTYPE_AUTO, cuts_tiny, 2);
    run_chain("qwen2-tiny-f32.gguf", LLORCH_DTYPE_F32, cuts_tiny, 2);
    run_chain("gpt2-tiny-f32.gguf", LLORCH_DTYPE_F32, cuts_tiny, 2);
}

static void pipeline_four_and_uneven_stages_give_the_whole_models_logits(void **state)
{
    (void)state;
    const uint32_t four[] = {0, 1, 2, 3};
    run_chain("llama-mid-f32.gguf", LLORCH_DTYPE_F32, four, 4);
    const uint32_t uneven[] = {0, 3};
    run_chain("llama-mid-f32.gguf", LLORCH_DTYPE_F32, uneven, 2);
    const uint32_t five[] = {0, 1, 3, 4};
    run_chain("stories260k.gguf", LLORCH_DTYPE_F32, five, 4);
}

static void pipeline_bad_ranges_and_requests_are_refused(void **state)
{
    (void)state;
    struct model *m;
    char err[256];
    assert_int_equal(model_load(&m, model_path("llama-mid-f32.gguf"), err, sizeof err), 0);
    struct forward_opts fo = {
        .dtype = LLORCH_DTYPE_F32, .kv_bytes = 16ull << 20, .max_seqs = 2, .max_step_tokens = 8};
    struct forward *fw;
    fo.layer_first = 2, fo.layer_end = 2;
    assert_int_equal(forward_new(&fw, m, &fo, err, sizeof err), LLORCH_EINVAL);
    assert_non_null(strstr(err, "layer range"));
    fo.layer_first = 0, fo.layer_end = 5;
    assert_int_equal(forward_new(&fw, m, &fo, err, sizeof err), LLORCH_EINVAL);
    fo.layer_first = 1, fo.layer_end = 3; /* a middle stage */
    assert_int_equal(forward_new(&fw, m, &fo, err, sizeof err), 0);
    struct kv_seq *seq;
    assert_int_equal(kv_seq_new(forward_kv(fw), &seq), 0);
    assert_int_equal(kv_seq_reserve(forward_kv(fw), seq, 4), 0);
    llorch_token t[2] = {1, 2};
    float hin[2 * 256], hout[2 * 256], logits[32000];
    memset(hin, 0, sizeof hin);
    struct forward_entry e = {.seq = seq, .tokens = t, .n_tokens = 2, .logits = logits};
    /* no embedding here, no head here */
    assert_int_equal(forward_step_hidden(fw, &e, 1, NULL, hout), LLORCH_EINVAL);
    assert_int_equal(forward_step_hidden(fw, &e, 1, hin, NULL), LLORCH_EINVAL);
    assert_int_equal(forward_step(fw, &e, 1), LLORCH_EINVAL);
    assert_int_equal(kv_seq_len(seq), 0);
    e.logits = NULL;
    assert_int_equal(forward_step_hidden(fw, &e, 1, hin, hout), 0);
    assert_int_equal(kv_seq_len(seq), 2);
    kv_seq_free(forward_kv(fw), seq);
    forward_free(fw);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pipeline_two_stages_give_the_whole_models_logits_bit_for_bit),
        cmocka_unit_test(pipeline_four_and_uneven_stages_give_the_whole_models_logits),
        cmocka_unit_test(pipeline_bad_ranges_and_requests_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
