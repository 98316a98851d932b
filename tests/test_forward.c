/* The forward pass on held-out shapes built here with gguf_writer (MQA, GQA,
 * head_dim 16/24/32/64, a rotary dimension below head_dim, tied output,
 * llama3 rope_freqs, linear RoPE scaling, f16 weights, all four
 * architectures) against a plain double-precision forward written below from
 * the architecture definitions. Every logit of every position must agree to
 * 2e-6 * (1 + max |logit|) (the engine computes in f32 with oneDNN: measured
 * 1.2e-6..2.1e-5 for logits up to 50, i.e. below 5e-7 relative), gpt2 to
 * 2e-4: its GELU rounds the input to f16, and an f32 engine and a double
 * reference can land on neighbouring f16 values (2^-11 apart relative),
 * which moves that activation by ~5e-4 of itself (measured 7.5e-5). Also: argument
 * validation of forward_step and what forward_new reports. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "forward.h"
#include "gguf.h"
#include "half.h"
#include "kernels.h"
#include "model.h"
#include "quant.h"
#include "tpool.h"

#define LOGIT_TOL_REL 2e-6
#define LOGIT_TOL_GPT2 2e-4

struct spec {
    enum model_arch arch;
    uint32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot, n_ctx;
    float eps, base, linear_factor; /* linear_factor 0: no scaling */
    bool tied, freq_factors, f16;
};

/* The weights as the reference sees them (after f16 rounding if stored so),
 * row-major [n_out][n_in]. */
struct ref_layer {
    double *an, *anb, *fn, *fnb;
    double *wq, *wk, *wv, *bq, *bk, *bv, *wo, *bo;
    double *wg, *wu, *bu, *wd, *bd;
};

struct ref_model {
    struct spec s;
    double *tok, *pos, *on, *onb, *out, *ff;
    struct ref_layer *l;
    /* writer-side */
    struct gguf_writer *w;
    void *buf;
    size_t len;
    struct model *m;
    uint64_t rng;
    void *allocs[512];
    int n_allocs;
};

static double rnd(struct ref_model *r)
{
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return (double)(r->rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static void *track(struct ref_model *r, void *p)
{
    assert_non_null(p);
    assert_true(r->n_allocs < 512);
    r->allocs[r->n_allocs++] = p;
    return p;
}

/* Adds a tensor of ne = {n_in, n_out} (n_out 1: a vector) with values
 * center + scale * U(-1, 1); returns the reference copy. */
static double *add_tensor(struct ref_model *r, const char *name, uint64_t n_in, uint64_t n_out,
                          double center, double scale, bool allow_f16)
{
    const uint64_t n = n_in * n_out;
    float *f = malloc(n * sizeof *f);
    double *d = track(r, malloc(n * sizeof *d));
    assert_non_null(f);
    const bool f16 = allow_f16 && r->s.f16 && n_out > 1;
    uint16_t *h = f16 ? malloc(n * sizeof *h) : NULL;
    for (uint64_t i = 0; i < n; i++) {
        f[i] = (float)(center + scale * rnd(r));
        if (f16) {
            h[i] = half_f32_to_f16(f[i]);
            d[i] = half_f16_to_f32(h[i]);
        } else {
            d[i] = f[i];
        }
    }
    const uint64_t ne[2] = {n_in, n_out};
    int rc = f16 ? gguf_writer_add_tensor(r->w, name, GGML_TYPE_F16, 2, ne, h, n * 2)
                 : gguf_writer_add_tensor(r->w, name, GGML_TYPE_F32, n_out > 1 ? 2 : 1, ne, f, n * 4);
    assert_int_equal(rc, 0);
    free(f);
    free(h);
    return d;
}

static void set_key_u32(struct ref_model *r, const char *suffix, uint32_t v)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", model_arch_name(r->s.arch), suffix);
    assert_int_equal(gguf_writer_set_u32(r->w, key, v), 0);
}

static void set_key_f32(struct ref_model *r, const char *suffix, float v)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", model_arch_name(r->s.arch), suffix);
    assert_int_equal(gguf_writer_set_f32(r->w, key, v), 0);
}

static void build(struct ref_model *r, const struct spec *s, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    r->s = *s;
    r->rng = seed;
    assert_int_equal(gguf_writer_new(&r->w, 32), 0);
    const bool gpt2 = s->arch == MODEL_ARCH_GPT2;
    assert_int_equal(gguf_writer_set_str(r->w, "general.architecture", model_arch_name(s->arch)), 0);
    assert_int_equal(gguf_writer_set_str(r->w, "general.name", "held-out"), 0);
    set_key_u32(r, "context_length", s->n_ctx);
    set_key_u32(r, "embedding_length", s->n_embd);
    set_key_u32(r, "block_count", s->n_layer);
    set_key_u32(r, "feed_forward_length", s->n_ff);
    set_key_u32(r, "attention.head_count", s->n_head);
    set_key_u32(r, "attention.head_count_kv", s->n_head_kv);
    if (s->head_dim != s->n_embd / s->n_head) {
        set_key_u32(r, "attention.key_length", s->head_dim);
        set_key_u32(r, "attention.value_length", s->head_dim);
    }
    if (gpt2) {
        set_key_f32(r, "attention.layer_norm_epsilon", s->eps);
    } else {
        set_key_f32(r, "attention.layer_norm_rms_epsilon", s->eps);
        set_key_f32(r, "rope.freq_base", s->base);
        set_key_u32(r, "rope.dimension_count", s->n_rot);
    }
    if (s->linear_factor > 0.0f) {
        char key[128];
        snprintf(key, sizeof key, "%s.rope.scaling.type", model_arch_name(s->arch));
        assert_int_equal(gguf_writer_set_str(r->w, key, "linear"), 0);
        set_key_f32(r, "rope.scaling.factor", s->linear_factor);
    }

    const uint32_t E = s->n_embd, Q = s->n_head * s->head_dim, KV = s->n_head_kv * s->head_dim;
    const uint32_t F = s->n_ff;
    r->tok = add_tensor(r, "token_embd.weight", E, s->n_vocab, 0.0, 1.0, true);
    if (gpt2)
        r->pos = add_tensor(r, "position_embd.weight", E, s->n_ctx, 0.0, 0.5, true);
    r->l = track(r, calloc(s->n_layer, sizeof *r->l));
    for (uint32_t il = 0; il < s->n_layer; il++) {
        struct ref_layer *l = &r->l[il];
        char name[64];
#define NAME(x) (snprintf(name, sizeof name, "blk.%u." x, il), name)
        const double sE = 1.5 / sqrt(E), sQ = 1.5 / sqrt(Q), sF = 1.5 / sqrt(F);
        l->an = add_tensor(r, NAME("attn_norm.weight"), E, 1, 1.0, 0.2, false);
        if (gpt2)
            l->anb = add_tensor(r, NAME("attn_norm.bias"), E, 1, 0.0, 0.1, false);
        if (gpt2 || s->arch == MODEL_ARCH_PHI3) {
            /* fused [Q | K | V] rows */
            double *w = add_tensor(r, NAME("attn_qkv.weight"), E, Q + 2 * KV, 0.0, sE, true);
            l->wq = w, l->wk = w + (size_t)Q * E, l->wv = w + (size_t)(Q + KV) * E;
            if (gpt2) {
                double *b = add_tensor(r, NAME("attn_qkv.bias"), Q + 2 * KV, 1, 0.0, 0.1, false);
                l->bq = b, l->bk = b + Q, l->bv = b + Q + KV;
            }
        } else {
            l->wq = add_tensor(r, NAME("attn_q.weight"), E, Q, 0.0, sE, true);
            l->wk = add_tensor(r, NAME("attn_k.weight"), E, KV, 0.0, sE, true);
            l->wv = add_tensor(r, NAME("attn_v.weight"), E, KV, 0.0, sE, true);
            if (s->arch == MODEL_ARCH_QWEN2) {
                l->bq = add_tensor(r, NAME("attn_q.bias"), Q, 1, 0.0, 0.3, false);
                l->bk = add_tensor(r, NAME("attn_k.bias"), KV, 1, 0.0, 0.3, false);
                l->bv = add_tensor(r, NAME("attn_v.bias"), KV, 1, 0.0, 0.3, false);
            }
        }
        l->wo = add_tensor(r, NAME("attn_output.weight"), Q, E, 0.0, sQ, true);
        if (gpt2)
            l->bo = add_tensor(r, NAME("attn_output.bias"), E, 1, 0.0, 0.1, false);
        l->fn = add_tensor(r, NAME("ffn_norm.weight"), E, 1, 1.0, 0.2, false);
        if (gpt2) {
            l->fnb = add_tensor(r, NAME("ffn_norm.bias"), E, 1, 0.0, 0.1, false);
            l->wu = add_tensor(r, NAME("ffn_up.weight"), E, F, 0.0, sE, true);
            l->bu = add_tensor(r, NAME("ffn_up.bias"), F, 1, 0.0, 0.1, false);
        } else if (s->arch == MODEL_ARCH_PHI3) {
            double *w = add_tensor(r, NAME("ffn_up.weight"), E, 2 * F, 0.0, sE, true);
            l->wg = w, l->wu = w + (size_t)F * E; /* [gate | up] */
        } else {
            l->wg = add_tensor(r, NAME("ffn_gate.weight"), E, F, 0.0, sE, true);
            l->wu = add_tensor(r, NAME("ffn_up.weight"), E, F, 0.0, sE, true);
        }
        l->wd = add_tensor(r, NAME("ffn_down.weight"), F, E, 0.0, sF, true);
        if (gpt2)
            l->bd = add_tensor(r, NAME("ffn_down.bias"), E, 1, 0.0, 0.1, false);
#undef NAME
    }
    r->on = add_tensor(r, "output_norm.weight", E, 1, 1.0, 0.2, false);
    if (gpt2)
        r->onb = add_tensor(r, "output_norm.bias", E, 1, 0.0, 0.1, false);
    r->out = s->tied ? r->tok : add_tensor(r, "output.weight", E, s->n_vocab, 0.0, 2.0 / sqrt(E), true);
    if (s->freq_factors)
        r->ff = add_tensor(r, "rope_freqs.weight", s->n_rot / 2, 1, 2.5, 1.5, false);

    assert_int_equal(gguf_writer_write_buffer(r->w, &r->buf, &r->len), 0);
    struct gguf_file *gf;
    char err[256];
    int rc = gguf_open_buffer(&gf, r->buf, r->len, err, sizeof err);
    if (rc)
        print_message("gguf: %s\n", err);
    assert_int_equal(rc, 0);
    rc = model_load_gguf(&r->m, gf, "held-out.gguf", err, sizeof err);
    if (rc)
        print_message("model: %s\n", err);
    assert_int_equal(rc, 0);
    assert_int_equal(r->m->output_tied, s->tied);
}

static void ref_free(struct ref_model *r)
{
    model_free(r->m);
    gguf_writer_free(r->w);
    free(r->buf);
    for (int i = 0; i < r->n_allocs; i++)
        free(r->allocs[i]);
}

/* ---- double-precision reference ---------------------------------------- */

static void matvec(const double *w, const double *b, const double *x, double *y, uint32_t n_out,
                   uint32_t n_in)
{
    for (uint32_t o = 0; o < n_out; o++) {
        double s = b ? b[o] : 0.0;
        for (uint32_t i = 0; i < n_in; i++)
            s += w[(size_t)o * n_in + i] * x[i];
        y[o] = s;
    }
}

static void norm(const struct spec *s, const double *x, const double *w, const double *b, double *y)
{
    const uint32_t n = s->n_embd;
    if (s->arch == MODEL_ARCH_GPT2) {
        double mean = 0.0, var = 0.0;
        for (uint32_t i = 0; i < n; i++)
            mean += x[i];
        mean /= n;
        for (uint32_t i = 0; i < n; i++)
            var += (x[i] - mean) * (x[i] - mean);
        var /= n;
        for (uint32_t i = 0; i < n; i++)
            y[i] = (x[i] - mean) / sqrt(var + s->eps) * w[i] + b[i];
    } else {
        double ss = 0.0;
        for (uint32_t i = 0; i < n; i++)
            ss += x[i] * x[i];
        for (uint32_t i = 0; i < n; i++)
            y[i] = x[i] / sqrt(ss / n + s->eps) * w[i];
    }
}

static void rope(const struct ref_model *r, double *v, uint32_t n_head, uint32_t pos)
{
    const struct spec *s = &r->s;
    const double scale = s->linear_factor > 0.0f ? 1.0 / s->linear_factor : 1.0;
    for (uint32_t h = 0; h < n_head; h++) {
        double *x = v + (size_t)h * s->head_dim;
        for (uint32_t i = 0; i < s->n_rot / 2; i++) {
            double th = pos * scale * pow(s->base, -2.0 * i / s->n_rot) / (r->ff ? r->ff[i] : 1.0);
            uint32_t a = s->arch == MODEL_ARCH_LLAMA ? 2 * i : i;
            uint32_t b = s->arch == MODEL_ARCH_LLAMA ? 2 * i + 1 : i + s->n_rot / 2;
            double x0 = x[a], x1 = x[b];
            x[a] = x0 * cos(th) - x1 * sin(th);
            x[b] = x0 * sin(th) + x1 * cos(th);
        }
    }
}

/* ggml's GELU: input and output rounded to f16 (see kernels.h). */
static double gelu_ggml(double x)
{
    if (x <= -10.0)
        return 0.0;
    if (x >= 10.0)
        return x;
    double xr = half_f16_to_f32(half_f32_to_f16((float)x));
    double g = 0.5 * xr * (1.0 + tanh(0.7978845608028654 * xr * (1.0 + 0.044715 * xr * xr)));
    return half_f16_to_f32(half_f32_to_f16((float)g));
}

/* Logits [n][n_vocab] of positions 0..n-1. */
static void ref_forward(const struct ref_model *r, const llorch_token *toks, uint32_t n, double *logits)
{
    const struct spec *s = &r->s;
    const uint32_t E = s->n_embd, Q = s->n_head * s->head_dim, KV = s->n_head_kv * s->head_dim;
    const uint32_t F = s->n_ff, hd = s->head_dim;
    double *x = calloc((size_t)n * E, sizeof *x), *h = calloc(E, sizeof *h);
    double *K = calloc((size_t)s->n_layer * n * KV, sizeof *K), *V = calloc((size_t)s->n_layer * n * KV, sizeof *V);
    double *q = calloc(Q, sizeof *q), *att = calloc(Q, sizeof *att), *o = calloc(E, sizeof *o);
    double *g = calloc(F, sizeof *g), *u = calloc(F, sizeof *u), *sc = calloc(n, sizeof *sc);
    for (uint32_t p = 0; p < n; p++) {
        double *xp = x + (size_t)p * E;
        for (uint32_t i = 0; i < E; i++)
            xp[i] = r->tok[(size_t)toks[p] * E + i] + (r->pos ? r->pos[(size_t)p * E + i] : 0.0);
        for (uint32_t il = 0; il < s->n_layer; il++) {
            const struct ref_layer *l = &r->l[il];
            double *Kl = K + (size_t)il * n * KV, *Vl = V + (size_t)il * n * KV;
            norm(s, xp, l->an, l->anb, h);
            matvec(l->wq, l->bq, h, q, Q, E);
            matvec(l->wk, l->bk, h, Kl + (size_t)p * KV, KV, E);
            matvec(l->wv, l->bv, h, Vl + (size_t)p * KV, KV, E);
            if (s->arch != MODEL_ARCH_GPT2) {
                rope(r, q, s->n_head, p);
                rope(r, Kl + (size_t)p * KV, s->n_head_kv, p);
            }
            for (uint32_t hh = 0; hh < s->n_head; hh++) {
                const uint32_t g_kv = hh / (s->n_head / s->n_head_kv);
                double max = -INFINITY, sum = 0.0;
                for (uint32_t t = 0; t <= p; t++) {
                    double d = 0.0;
                    for (uint32_t i = 0; i < hd; i++)
                        d += q[hh * hd + i] * Kl[(size_t)t * KV + g_kv * hd + i];
                    sc[t] = d / sqrt((double)hd);
                    max = sc[t] > max ? sc[t] : max;
                }
                for (uint32_t t = 0; t <= p; t++)
                    sum += (sc[t] = exp(sc[t] - max));
                for (uint32_t i = 0; i < hd; i++) {
                    double a = 0.0;
                    for (uint32_t t = 0; t <= p; t++)
                        a += sc[t] / sum * Vl[(size_t)t * KV + g_kv * hd + i];
                    att[hh * hd + i] = a;
                }
            }
            matvec(l->wo, l->bo, att, o, E, Q);
            for (uint32_t i = 0; i < E; i++)
                xp[i] += o[i];
            norm(s, xp, l->fn, l->fnb, h);
            if (s->arch == MODEL_ARCH_GPT2) {
                matvec(l->wu, l->bu, h, u, F, E);
                for (uint32_t i = 0; i < F; i++)
                    u[i] = gelu_ggml(u[i]);
            } else {
                matvec(l->wg, NULL, h, g, F, E);
                matvec(l->wu, NULL, h, u, F, E);
                for (uint32_t i = 0; i < F; i++)
                    u[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            }
            matvec(l->wd, l->bd, u, o, E, F);
            for (uint32_t i = 0; i < E; i++)
                xp[i] += o[i];
        }
        norm(s, xp, r->on, r->onb, h);
        matvec(r->out, NULL, h, logits + (size_t)p * s->n_vocab, s->n_vocab, E);
    }
    free(x), free(h), free(K), free(V), free(q), free(att), free(o), free(g), free(u), free(sc);
}

/* ---- the comparison ----------------------------------------------------- */

static void check_shape(const struct spec *s, uint64_t seed)
{
    struct ref_model r;
    build(&r, s, seed);
    struct tpool *pool;
    struct tpool_opts po = {.n_threads = 2, .name = "test-fw"};
    assert_int_equal(tpool_new(&pool, &po), 0);
    struct forward_opts fo = {
        .dtype = LLORCH_DTYPE_F32, .kv_type = LLORCH_KV_F32, .kv_bytes = 4u << 20,
        .n_ctx = 0, .max_seqs = 2, .max_step_tokens = 16, .pool = pool,
    };
    struct forward *fw;
    char err[256];
    int rc = forward_new(&fw, r.m, &fo, err, sizeof err);
    if (rc)
        print_message("forward_new: %s\n", err);
    assert_int_equal(rc, 0);
    assert_int_equal(forward_n_vocab(fw), s->n_vocab);

    enum { N_PRE = 11, N_DEC = 4, N = N_PRE + N_DEC };
    llorch_token toks[N];
    for (int i = 0; i < N; i++)
        toks[i] = (llorch_token)((i * 37 + 5) % s->n_vocab);
    double *ref = malloc((size_t)N * s->n_vocab * sizeof *ref);
    float *got = malloc((size_t)N * s->n_vocab * sizeof *got);
    ref_forward(&r, toks, N, ref);

    struct kv_cache *kv = forward_kv(fw);
    struct kv_seq *seq;
    assert_int_equal(kv_seq_new(kv, &seq), 0);
    assert_int_equal(kv_seq_reserve(kv, seq, N), 0);
    struct forward_entry e = {.seq = seq, .tokens = toks, .n_tokens = N_PRE, .all_logits = true, .logits = got};
    assert_int_equal(forward_step(fw, &e, 1), 0);
    for (int i = N_PRE; i < N; i++) {
        e = (struct forward_entry){.seq = seq, .tokens = &toks[i], .n_tokens = 1, .logits = got + (size_t)i * s->n_vocab};
        assert_int_equal(forward_step(fw, &e, 1), 0);
    }
    assert_int_equal(kv_seq_len(seq), N);
    double worst = 0.0, maxabs = 0.0;
    for (size_t i = 0; i < (size_t)N * s->n_vocab; i++) {
        worst = fmax(worst, fabs(got[i] - ref[i]));
        maxabs = fmax(maxabs, fabs(ref[i]));
    }
    print_message("%s E%u H%u/%u hd%u rot%u%s%s%s: worst |logit diff| %.3g (logits up to %.3g)\n",
                  model_arch_name(s->arch), s->n_embd, s->n_head, s->n_head_kv, s->head_dim, s->n_rot,
                  s->tied ? " tied" : "", s->freq_factors ? " rope_freqs" : "", s->f16 ? " f16" : "",
                  worst, maxabs);
    assert_true(maxabs > 1.0); /* the shape is not degenerate */
    assert_true(worst <= (s->arch == MODEL_ARCH_GPT2 ? LOGIT_TOL_GPT2 : LOGIT_TOL_REL * (1.0 + maxabs)));
    kv_seq_free(kv, seq);
    free(ref);
    free(got);
    forward_free(fw);
    tpool_free(pool);
    ref_free(&r);
}

static void forward_llama_mqa_hd32_tied_rope_freqs_matches_reference(void **state)
{
    (void)state;
    const struct spec s = {.arch = MODEL_ARCH_LLAMA, .n_vocab = 61, .n_embd = 96, .n_layer = 2,
                           .n_head = 3, .n_head_kv = 1, .head_dim = 32, .n_ff = 144, .n_rot = 32,
                           .n_ctx = 64, .eps = 1e-5f, .base = 500000.0f, .tied = true,
                           .freq_factors = true};
    check_shape(&s, 11);
}

static void forward_llama_hd24_f16_linear_scaling_matches_reference(void **state)
{
    (void)state;
    const struct spec s = {.arch = MODEL_ARCH_LLAMA, .n_vocab = 70, .n_embd = 64, .n_layer = 2,
                           .n_head = 4, .n_head_kv = 2, .head_dim = 24, .n_ff = 100, .n_rot = 24,
                           .n_ctx = 64, .eps = 1e-6f, .base = 10000.0f, .linear_factor = 2.0f,
                           .f16 = true};
    check_shape(&s, 12);
}

static void forward_qwen2_hd64_single_kv_head_tied_matches_reference(void **state)
{
    (void)state;
    const struct spec s = {.arch = MODEL_ARCH_QWEN2, .n_vocab = 53, .n_embd = 128, .n_layer = 2,
                           .n_head = 2, .n_head_kv = 1, .head_dim = 64, .n_ff = 96, .n_rot = 64,
                           .n_ctx = 64, .eps = 1e-6f, .base = 1000000.0f, .tied = true};
    check_shape(&s, 13);
}

static void forward_phi3_gqa_partial_rotary_matches_reference(void **state)
{
    (void)state;
    const struct spec s = {.arch = MODEL_ARCH_PHI3, .n_vocab = 67, .n_embd = 64, .n_layer = 2,
                           .n_head = 4, .n_head_kv = 2, .head_dim = 16, .n_ff = 72, .n_rot = 8,
                           .n_ctx = 64, .eps = 1e-5f, .base = 10000.0f};
    check_shape(&s, 14);
}

static void forward_gpt2_three_heads_matches_reference(void **state)
{
    (void)state;
    const struct spec s = {.arch = MODEL_ARCH_GPT2, .n_vocab = 59, .n_embd = 48, .n_layer = 2,
                           .n_head = 3, .n_head_kv = 3, .head_dim = 16, .n_ff = 192, .n_rot = 0,
                           .n_ctx = 64, .eps = 1e-5f};
    check_shape(&s, 15);
}

static void forward_step_rejects_bad_entries_and_changes_nothing(void **state)
{
    (void)state;
    struct ref_model r;
    const struct spec s = {.arch = MODEL_ARCH_LLAMA, .n_vocab = 40, .n_embd = 32, .n_layer = 1,
                           .n_head = 2, .n_head_kv = 2, .head_dim = 16, .n_ff = 48, .n_rot = 16,
                           .n_ctx = 32, .eps = 1e-5f, .base = 10000.0f};
    build(&r, &s, 21);
    struct forward_opts fo = {.dtype = LLORCH_DTYPE_F32, .kv_type = LLORCH_KV_F32,
                              .kv_bytes = 1u << 20, .max_seqs = 2, .max_step_tokens = 8};
    struct forward *fw;
    char err[128];
    /* no pool: everything runs on the caller */
    assert_int_equal(forward_new(&fw, r.m, &fo, err, sizeof err), 0);
    assert_int_equal(forward_n_ctx(fw), 32);
    assert_int_equal(forward_dtype(fw), LLORCH_DTYPE_F32);
    struct kv_cache *kv = forward_kv(fw);
    struct kv_seq *a, *b;
    assert_int_equal(kv_seq_new(kv, &a), 0);
    assert_int_equal(kv_seq_new(kv, &b), 0);
    float logits[2 * 40];
    llorch_token toks[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    /* no room reserved */
    struct forward_entry e = {.seq = a, .tokens = toks, .n_tokens = 3, .logits = logits};
    assert_int_equal(forward_step(fw, &e, 1), LLORCH_EKV_EXHAUSTED);
    assert_int_equal(kv_seq_reserve(kv, a, 10), 0);
    /* token out of the vocabulary */
    llorch_token bad[2] = {1, 40};
    e.tokens = bad, e.n_tokens = 2;
    assert_int_equal(forward_step(fw, &e, 1), LLORCH_ERANGE);
    /* more tokens than a step holds */
    e.tokens = toks, e.n_tokens = 9;
    assert_int_equal(forward_step(fw, &e, 1), LLORCH_EINVAL);
    /* the same sequence twice */
    struct forward_entry two[2] = {{.seq = a, .tokens = toks, .n_tokens = 1, .logits = logits},
                                   {.seq = a, .tokens = toks, .n_tokens = 1, .logits = logits + 40}};
    assert_int_equal(forward_step(fw, two, 2), LLORCH_EINVAL);
    assert_int_equal(kv_seq_len(a), 0);
    /* and then a good step works */
    e.n_tokens = 3;
    assert_int_equal(forward_step(fw, &e, 1), 0);
    assert_int_equal(kv_seq_len(a), 3);
    kv_seq_free(kv, a);
    kv_seq_free(kv, b);
    forward_free(fw);
    forward_free(NULL);
    ref_free(&r);
}

static void forward_default_keeps_the_file_class_at_the_chosen_level(void **state)
{
    (void)state;
    struct ref_model r;
    const struct spec s = {.arch = MODEL_ARCH_QWEN2, .n_vocab = 40, .n_embd = 32, .n_layer = 1,
                           .n_head = 2, .n_head_kv = 1, .head_dim = 16, .n_ff = 48, .n_rot = 16,
                           .n_ctx = 32, .eps = 1e-5f, .base = 10000.0f, .f16 = true};
    build(&r, &s, 22);
    struct tpool *pool;
    struct tpool_opts po = {.n_threads = 2, .name = "test-fw"};
    assert_int_equal(tpool_new(&pool, &po), 0);
    struct forward_opts fo = {.kv_bytes = 1u << 20, .max_seqs = 1, .max_step_tokens = 4, .pool = pool};
    struct forward *fw;
    char err[128];
    assert_int_equal(forward_new(&fw, r.m, &fo, err, sizeof err), 0);
    /* the default keeps each weight in its file's class: f16 weights are
     * read as f16 (2 bytes each), kv f16 */
    assert_int_equal(forward_dtype(fw), LLORCH_DTYPE_NATIVE);
    assert_int_equal(forward_kv_type(fw), LLORCH_KV_F16);
    assert_string_equal(forward_matmul_backend(fw), "llorch");
    assert_string_equal(forward_isa_name(fw), kernels_best()->name);
    assert_int_equal(forward_isa(fw), kernels_best()->isa);
    const uint64_t native_bytes = forward_weight_bytes(fw);
    assert_true(native_bytes > 0);
    forward_free(fw);
    /* an explicit f32 reads twice the bytes */
    fo.dtype = LLORCH_DTYPE_F32;
    assert_int_equal(forward_new(&fw, r.m, &fo, err, sizeof err), 0);
    assert_int_equal(forward_weight_bytes(fw), 2 * native_bytes);
    assert_int_equal(forward_kv_type(fw), LLORCH_KV_F32);
    forward_free(fw);
    /* a forced lower level is used; one above the CPU's is refused by name */
    fo.dtype = LLORCH_DTYPE_AUTO;
    fo.isa = LLORCH_ISA_SCALAR;
    assert_int_equal(forward_new(&fw, r.m, &fo, err, sizeof err), 0);
    assert_string_equal(forward_isa_name(fw), "scalar");
    assert_int_equal(forward_isa(fw), KERNELS_ISA_SCALAR);
    if (!kernels_get(KERNELS_ISA_AVX512)) {
        struct forward *bad = (struct forward *)1;
        fo.isa = LLORCH_ISA_AVX512;
        assert_int_equal(forward_new(&bad, r.m, &fo, err, sizeof err), LLORCH_EUNSUPPORTED);
        assert_null(bad);
        assert_non_null(strstr(err, "not one this CPU runs"));
    }
    assert_string_equal(forward_dtype_name(LLORCH_DTYPE_INT8), "int8");
    assert_string_equal(forward_kv_type_name(LLORCH_KV_F16), "f16");
    forward_free(fw);
    tpool_free(pool);
    ref_free(&r);
}

struct progress_log {
    double v[2048];
    int n;
    int stop_after; /* return false on this call (1-based); 0 = never */
};

static bool record_progress(void *ctx, double fraction)
{
    struct progress_log *p = ctx;
    assert_true(p->n < (int)(sizeof p->v / sizeof p->v[0]));
    p->v[p->n++] = fraction;
    return p->stop_after == 0 || p->n < p->stop_after;
}

static const struct spec progress_spec = {
    .arch = MODEL_ARCH_LLAMA, .n_vocab = 40, .n_embd = 32, .n_layer = 3, .n_head = 2,
    .n_head_kv = 2, .head_dim = 16, .n_ff = 48, .n_rot = 16, .n_ctx = 32, .eps = 1e-5f,
    .base = 10000.0f};

static void forward_new_reports_progress_from_zero_to_one_never_decreasing(void **state)
{
    (void)state;
    struct ref_model r;
    build(&r, &progress_spec, 23);
    static struct progress_log p; /* large */
    memset(&p, 0, sizeof p);
    struct forward_opts fo = {.dtype = LLORCH_DTYPE_F32, .kv_bytes = 1u << 20, .max_seqs = 1,
                              .max_step_tokens = 4, .progress = record_progress,
                              .progress_ctx = &p};
    struct forward *fw;
    char err[128];
    assert_int_equal(forward_new(&fw, r.m, &fo, err, sizeof err), 0);
    /* 0.0 first, 1.0 (exactly) last and only there, steps in between */
    assert_true(p.n >= 2 + 3 * 4);
    assert_true(p.v[0] == 0.0);
    assert_true(p.v[p.n - 1] == 1.0);
    for (int i = 1; i < p.n; i++) {
        assert_true(p.v[i] >= p.v[i - 1]);
        assert_true(p.v[i] <= 1.0);
        if (i < p.n - 1)
            assert_true(p.v[i] < 1.0);
    }
    /* bounded: one call per 1/1024 at most, plus the ends */
    assert_true(p.n <= 1026);
    forward_free(fw);
    ref_free(&r);
}

static void forward_new_stops_when_the_progress_callback_says_so(void **state)
{
    (void)state;
    struct ref_model r;
    build(&r, &progress_spec, 24);
    for (int stop = 1; stop <= 3; stop++) { /* at 0.0, and in the middle of the weights */
        static struct progress_log p;
        memset(&p, 0, sizeof p);
        p.stop_after = stop;
        struct forward_opts fo = {.dtype = LLORCH_DTYPE_F32, .kv_bytes = 1u << 20, .max_seqs = 1,
                                  .max_step_tokens = 4, .progress = record_progress,
                                  .progress_ctx = &p};
        struct forward *fw = (struct forward *)&p;
        char err[128];
        assert_int_equal(forward_new(&fw, r.m, &fo, err, sizeof err), LLORCH_ECANCELLED);
        assert_null(fw);
        assert_string_equal(err, "loading cancelled");
        assert_int_equal(p.n, stop); /* no call after the one that said stop */
    }
    ref_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(forward_llama_mqa_hd32_tied_rope_freqs_matches_reference),
        cmocka_unit_test(forward_llama_hd24_f16_linear_scaling_matches_reference),
        cmocka_unit_test(forward_qwen2_hd64_single_kv_head_tied_matches_reference),
        cmocka_unit_test(forward_phi3_gqa_partial_rotary_matches_reference),
        cmocka_unit_test(forward_gpt2_three_heads_matches_reference),
        cmocka_unit_test(forward_step_rejects_bad_entries_and_changes_nothing),
        cmocka_unit_test(forward_default_keeps_the_file_class_at_the_chosen_level),
        cmocka_unit_test(forward_new_reports_progress_from_zero_to_one_never_decreasing),
        cmocka_unit_test(forward_new_stops_when_the_progress_callback_says_so),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
