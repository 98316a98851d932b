/* llorch-synth: writes a valid GGUF model with seeded random weights, for
 * tests and benchmarks. Shapes come from flags or presets; 2-D weights take
 * the requested type, or llama-quantize's Q4_K_M mix (q4_k_m); rows a type
 * cannot block-quantise fall back as llama-quantize does (Q4_K to Q5_0, Q5_K
 * to Q5_1, Q6_K to Q8_0; F16 where not a multiple of 32, as
 * convert_hf_to_gguf does); norms and biases stay F32. The vocabulary is
 * copied from another GGUF (every tokenizer.* key) or is a small built-in
 * SentencePiece-style one. Tensors are generated, quantised and streamed one
 * chunk at a time, so a 1.1B-parameter model never sits in memory as f32. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "gguf_keys.h"
#include "llorch/error.h"
#include "quant.h"

#define CHUNK_ELEMS (1u << 20) /* generated per step: 4 MiB of f32 */

struct opts {
    const char *arch;
    uint32_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, n_vocab;
    float rope_base, eps;
    bool tied, rope_freqs;
    enum ggml_type type;
    bool q4_k_m; /* type is Q4_K, mixed with Q6_K as llama-quantize's Q4_K_M */
    const char *vocab_from; /* NULL: built-in */
    const char *out;
    const char *name;
    uint64_t seed;
};

static void usage(FILE *to)
{
    fprintf(to,
            "usage: llorch-synth -o PATH [--preset tiny|tinyllama-1.1b|qwen2.5-1.5b|phi3-mini]\n"
            "         [--arch llama|qwen2|phi3|gpt2] [--n-embd N] [--n-layer N] [--n-head N]\n"
            "         [--n-head-kv N] [--n-ff N] [--n-ctx N] [--n-vocab N] [--rope-base F]\n"
            "         [--eps F] [--tied] [--rope-freqs] [--type TYPE]\n"
            "         [--vocab-from FILE | --vocab builtin] [--seed N] [--name NAME]\n"
            "  TYPE: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 (blocks of 32), q4_k q5_k q6_k\n"
            "        (blocks of 256), every 2-D weight in that type, or q4_k_m: llama-quantize's\n"
            "        Q4_K_M mix (Q4_K; Q6_K for output and for attn_v/attn_qkv and ffn_down in\n"
            "        its 'more bits' layers). Rows a type cannot split into blocks fall back as\n"
            "        llama-quantize does: q4_K->q5_0, q5_K->q5_1, q6_K->q8_0, then f16 if the\n"
            "        row is not a multiple of 32 either: K types need n_embd and n_ff to be\n"
            "        multiples of 256 to stay K types.\n");
}

static int preset(struct opts *o, const char *name)
{
    /* arch, embd, layers, heads, kv heads, ff, ctx, vocab, rope base, eps, tied */
    static const struct {
        const char *name, *arch;
        uint32_t e, l, h, kv, ff, ctx, v;
        float base, eps;
        bool tied;
    } p[] = {
        {"tiny", "llama", 64, 2, 4, 2, 176, 256, 0, 10000.0f, 1e-5f, false},
        {"tinyllama-1.1b", "llama", 2048, 22, 32, 4, 5632, 2048, 32000, 10000.0f, 1e-5f, false},
        {"qwen2.5-1.5b", "qwen2", 1536, 28, 12, 2, 8960, 32768, 151936, 1e6f, 1e-6f, true},
        {"phi3-mini", "phi3", 3072, 32, 32, 32, 8192, 4096, 32064, 10000.0f, 1e-5f, false},
    };
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
        if (strcmp(p[i].name, name))
            continue;
        o->arch = p[i].arch;
        o->n_embd = p[i].e, o->n_layer = p[i].l, o->n_head = p[i].h, o->n_head_kv = p[i].kv;
        o->n_ff = p[i].ff, o->n_ctx = p[i].ctx, o->n_vocab = p[i].v;
        o->rope_base = p[i].base, o->eps = p[i].eps, o->tied = p[i].tied;
        return 0;
    }
    return -1;
}

static int parse_u32(const char *flag, const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s || v == 0 || v > (1u << 24)) {
        fprintf(stderr, "llorch-synth: %s needs a positive integer up to 2^24, got '%s'\n", flag, s);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int parse_f32(const char *flag, const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s || !(v > 0.0f) || isinf(v)) {
        fprintf(stderr, "llorch-synth: %s needs a positive number, got '%s'\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_type(const char *s, struct opts *o)
{
    static const struct {
        const char *name;
        enum ggml_type t;
    } types[] = {{"f32", GGML_TYPE_F32},   {"f16", GGML_TYPE_F16},   {"bf16", GGML_TYPE_BF16},
                 {"q8_0", GGML_TYPE_Q8_0}, {"q4_0", GGML_TYPE_Q4_0}, {"q4_1", GGML_TYPE_Q4_1},
                 {"q5_0", GGML_TYPE_Q5_0}, {"q5_1", GGML_TYPE_Q5_1}, {"q4_k", GGML_TYPE_Q4_K},
                 {"q5_k", GGML_TYPE_Q5_K}, {"q6_k", GGML_TYPE_Q6_K}, {"q4_k_m", GGML_TYPE_Q4_K}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(types[i].name, s)) {
            o->type = types[i].t;
            o->q4_k_m = !strcmp(s, "q4_k_m");
            return 0;
        }
    fprintf(stderr, "llorch-synth: --type must be f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, "
                    "q4_k, q5_k, q6_k or q4_k_m, got '%s'\n", s);
    return -1;
}

/* ---- random numbers: xorshift64*, approximately normal ---- */

struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dull;
}

/* Sum of four 16-bit uniforms (Irwin-Hall): mean 2, variance 1/3; scaled to
 * unit variance. Close enough to a normal for synthetic weights, and one
 * generator call per value. */
static float rng_normal(struct rng *r)
{
    uint64_t v = rng_next(r);
    uint32_t s = (uint32_t)(v & 0xffff) + (uint32_t)((v >> 16) & 0xffff) +
                 (uint32_t)((v >> 32) & 0xffff) + (uint32_t)(v >> 48);
    return ((float)s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

/* ---- built-in vocabulary ---- */

static const char *const builtin_words[] = {
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
    "are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or",
    "had", "by", "hot", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all",
    "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do",
    "their", "time", "if", "will", "way", "about", "many", "then", "them", "write", "would",
    "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look",
    "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most", "people", "my",
    "over", "know", "water", "than", "call", "first", "who", "may", "down", "side", "been", "now",
    "find", "any", "new", "work", "part", "take", "get", "place", "made", "live", "where",
    "after", "back", "little", "only", "round", "man", "year", "came", "show", "every", "good",
    "me", "give", "our", "under", "name", "very", "through", "just", "form", "sentence", "great",
    "think", "say", "help", "low", "line", "differ", "turn", "cause", "much", "mean", "before",
    "move", "right", "boy", "old", "too", "same", "tell", "does", "set", "three", "want", "air",
    "well", "also", "play", "small", "end", "put", "home", "read", "hand", "port", "large",
    "spell", "add", "even", "land", "here", "must", "big", "high", "such", "follow", "act",
    "why", "ask", "men", "change", "went", "light", "kind", "off", "need", "house", "picture",
    "try", "us", "again", "animal", "point", "mother", "world", "near", "build", "self", "earth",
    "father", "Once", "upon", "story", "girl", "dog", "cat", "happy", "Hello", "The", "It",
    "model", "token", "text", "data", "computer", "language", "answer", "question", "Lily",
    "Tom", "friend", "play", "park", "ball", "tree", "sun", "sky", "blue", "red", "green",
};

struct vocab {
    char **tok;
    float *score;
    int32_t *type;
    uint32_t n, cap;
};

static int vocab_push(struct vocab *v, const char *s, int32_t type)
{
    if (v->n == v->cap) {
        uint32_t cap = v->cap ? 2 * v->cap : 1024;
        char **t = realloc(v->tok, cap * sizeof *t);
        if (!t)
            return -1;
        v->tok = t;
        float *sc = realloc(v->score, cap * sizeof *sc);
        if (!sc)
            return -1;
        v->score = sc;
        int32_t *ty = realloc(v->type, cap * sizeof *ty);
        if (!ty)
            return -1;
        v->type = ty;
        v->cap = cap;
    }
    v->tok[v->n] = strdup(s);
    if (!v->tok[v->n])
        return -1;
    v->score[v->n] = -(float)v->n; /* earlier pieces merge first */
    v->type[v->n] = type;
    v->n++;
    return 0;
}

/* Adds s unless present (the base vocabulary has ~1000 pieces). */
static int vocab_add(struct vocab *v, const char *s, int32_t type)
{
    for (uint32_t i = 0; i < v->n; i++)
        if (!strcmp(v->tok[i], s))
            return 0;
    return vocab_push(v, s, type);
}

static void vocab_free(struct vocab *v)
{
    for (uint32_t i = 0; i < v->n; i++)
        free(v->tok[i]);
    free(v->tok);
    free(v->score);
    free(v->type);
}

/* <unk> <s> </s>, 256 byte tokens, "▁", printable ASCII characters, then
 * every "▁"-prefixed prefix of the common words (so SentencePiece merging
 * can reach each word), then UNUSED padding up to n_vocab. Token types as
 * llama.cpp numbers them: 1 NORMAL, 2 UNKNOWN, 3 CONTROL, 5 UNUSED, 6 BYTE. */
static int vocab_builtin(struct vocab *v, uint32_t n_vocab)
{
    int rc = vocab_add(v, "<unk>", 2) | vocab_add(v, "<s>", 3) | vocab_add(v, "</s>", 3);
    char buf[64];
    for (int b = 0; b < 256; b++) {
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        rc |= vocab_add(v, buf, 6);
    }
    rc |= vocab_add(v, "\xe2\x96\x81", 1);
    for (int c = 0x21; c < 0x7f; c++) {
        buf[0] = (char)c, buf[1] = 0;
        rc |= vocab_add(v, buf, 1);
    }
    for (size_t w = 0; w < sizeof builtin_words / sizeof builtin_words[0]; w++) {
        size_t n = strlen(builtin_words[w]);
        for (size_t k = 1; k <= n; k++) {
            snprintf(buf, sizeof buf, "\xe2\x96\x81%.*s", (int)k, builtin_words[w]);
            rc |= vocab_add(v, buf, 1);
        }
    }
    if (rc)
        return -1;
    if (n_vocab && n_vocab < v->n) {
        fprintf(stderr, "llorch-synth: the built-in vocabulary has %u tokens; --n-vocab %u is smaller\n",
                v->n, n_vocab);
        return -1;
    }
    for (uint32_t i = v->n; i < n_vocab; i++) {
        snprintf(buf, sizeof buf, "<unused%u>", i);
        if (vocab_push(v, buf, 5))
            return -1;
        v->score[v->n - 1] = -1e9f;
    }
    return 0;
}

static int put_builtin_vocab(struct gguf_writer *w, struct vocab *v)
{
    int rc = gguf_writer_set_str(w, LLORCH_GGUF_KEY_TOK_MODEL, "llama");
    rc = rc ? rc : gguf_writer_set_str(w, LLORCH_GGUF_KEY_TOK_PRE, "default");
    rc = rc ? rc
            : gguf_writer_set_str_arr(w, LLORCH_GGUF_KEY_TOK_TOKENS, (const char *const *)v->tok,
                                      NULL, v->n);
    rc = rc ? rc
            : gguf_writer_set_arr(w, LLORCH_GGUF_KEY_TOK_SCORES, GGUF_TYPE_FLOAT32, v->score, v->n);
    rc =
        rc ? rc
           : gguf_writer_set_arr(w, LLORCH_GGUF_KEY_TOK_TOKEN_TYPE, GGUF_TYPE_INT32, v->type, v->n);
    rc = rc ? rc : gguf_writer_set_u32(w, LLORCH_GGUF_KEY_TOK_BOS_ID, 1);
    rc = rc ? rc : gguf_writer_set_u32(w, LLORCH_GGUF_KEY_TOK_EOS_ID, 2);
    rc = rc ? rc : gguf_writer_set_u32(w, LLORCH_GGUF_KEY_TOK_UNK_ID, 0);
    rc = rc ? rc : gguf_writer_set_bool(w, LLORCH_GGUF_KEY_TOK_ADD_BOS, true);
    rc = rc ? rc : gguf_writer_set_bool(w, LLORCH_GGUF_KEY_TOK_ADD_EOS, false);
    return rc;
}

/* Copies every tokenizer.* key; returns the token count in *n_vocab. */
static int copy_vocab(struct gguf_writer *w, const char *path, uint32_t *n_vocab)
{
    char err[512];
    struct gguf_file *f;
    if (gguf_open(&f, path, err, sizeof err)) {
        fprintf(stderr, "llorch-synth: --vocab-from: %s\n", err);
        return -1;
    }
    struct gguf_arr toks;
    if (gguf_get_arr(f, LLORCH_GGUF_KEY_TOK_TOKENS, &toks) || toks.type != GGUF_TYPE_STRING ||
        toks.count == 0 || toks.count > (1u << 24)) {
        fprintf(stderr, "llorch-synth: --vocab-from: %s has no usable tokenizer.ggml.tokens\n", path);
        gguf_close(f);
        return -1;
    }
    *n_vocab = (uint32_t)toks.count;
    int rc = 0;
    for (uint64_t i = 0; i < gguf_kv_count(f) && !rc; i++) {
        struct gguf_str k;
        enum gguf_type t;
        const void *raw;
        uint64_t len;
        gguf_kv_at(f, i, &k, &t);
        if (k.len < 10 || memcmp(k.ptr, "tokenizer.", 10) || k.len > 255)
            continue;
        char key[256];
        memcpy(key, k.ptr, k.len);
        key[k.len] = 0;
        gguf_kv_raw_at(f, i, &raw, &len);
        rc = gguf_writer_set_raw(w, key, t, raw, len);
    }
    gguf_close(f);
    if (rc)
        fprintf(stderr, "llorch-synth: copying the vocabulary: %s\n", llorch_strerror(rc));
    return rc ? -1 : 0;
}

/* ---- tensors ---- */

enum init { INIT_WEIGHT, INIT_NORM, INIT_BIAS, INIT_ROPE_FREQS };

struct tdesc {
    char name[64];
    enum ggml_type type;
    uint32_t n_dims;
    uint64_t ne[2];
    enum init init;
};

struct tlist {
    struct tdesc *t;
    size_t n, cap;
    size_t n_k_fallback; /* K-type weights whose rows are not a multiple of 256 */
};

/* llama-quantize's use_more_bits: the first and last eighth of the layers
 * and every third layer in between take the larger type in Q4_K_M. */
static bool use_more_bits(uint32_t layer, uint32_t n_layer)
{
    int i = (int)layer, n = (int)n_layer;
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* The type of 2-D weight `name` of layer `layer` with rows of d0 elements:
 * the requested type, the Q4_K_M mix (llama_tensor_get_type for a model
 * without experts: output, or token_embd when tied, Q6_K (Q8_0 for rows
 * that are not a multiple of 256); attn_v, attn_qkv and ffn_down Q6_K in
 * use_more_bits layers; position_embd is never quantised and stays F16 as
 * convert_hf_to_gguf writes it), then llama-quantize's fallback for rows
 * the type cannot split into blocks. */
static enum ggml_type weight_type(struct tlist *l, const struct opts *o, const char *name,
                                  uint32_t layer, uint64_t d0)
{
    enum ggml_type t = o->type;
    if (o->q4_k_m) {
        bool output = !strcmp(name, "output.weight") ||
                      (o->tied && !strcmp(name, "token_embd.weight"));
        bool more = strstr(name, ".attn_v.weight") || strstr(name, ".attn_qkv.weight") ||
                    strstr(name, ".ffn_down.weight");
        if (!strcmp(name, "position_embd.weight"))
            return GGML_TYPE_F16;
        if (output)
            t = d0 % 256 ? GGML_TYPE_Q8_0 : GGML_TYPE_Q6_K;
        else if (more && use_more_bits(layer, o->n_layer))
            t = GGML_TYPE_Q6_K;
    }
    if (ggml_type_block_elems(t) == 256 && d0 % 256) {
        l->n_k_fallback++;
        t = t == GGML_TYPE_Q4_K   ? GGML_TYPE_Q5_0
            : t == GGML_TYPE_Q5_K ? GGML_TYPE_Q5_1
                                  : GGML_TYPE_Q8_0;
    }
    /* convert_hf_to_gguf keeps rows it cannot block-quantise as F16 */
    if (ggml_type_block_elems(t) > 1 && d0 % ggml_type_block_elems(t))
        t = GGML_TYPE_F16;
    return t;
}

static int tl_add(struct tlist *l, const struct opts *o, const char *name, uint32_t layer,
                  uint64_t d0, uint64_t d1, enum init init)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        struct tdesc *t = realloc(l->t, cap * sizeof *t);
        if (!t)
            return -1;
        l->t = t;
        l->cap = cap;
    }
    struct tdesc *t = &l->t[l->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = d1 ? 2 : 1;
    t->ne[0] = d0;
    t->ne[1] = d1 ? d1 : 1;
    t->init = init;
    t->type = d1 ? weight_type(l, o, name, layer, d0) : GGML_TYPE_F32;
    return 0;
}

static int build_tensors(const struct opts *o, struct tlist *l)
{
    bool gpt2 = !strcmp(o->arch, "gpt2"), phi3 = !strcmp(o->arch, "phi3");
    bool qwen2 = !strcmp(o->arch, "qwen2");
    uint64_t E = o->n_embd, hd = o->n_embd / o->n_head, Q = o->n_head * hd;
    uint64_t KV = o->n_head_kv * hd, F = o->n_ff, V = o->n_vocab;
    char n[64];
    int rc = tl_add(l, o, "token_embd.weight", 0, E, V, INIT_WEIGHT);
    if (gpt2)
        rc |= tl_add(l, o, "position_embd.weight", 0, E, o->n_ctx, INIT_WEIGHT);
    rc |= tl_add(l, o, "output_norm.weight", 0, E, 0, INIT_NORM);
    if (gpt2)
        rc |= tl_add(l, o, "output_norm.bias", 0, E, 0, INIT_BIAS);
    if (!o->tied)
        rc |= tl_add(l, o, "output.weight", 0, E, V, INIT_WEIGHT);
    if (o->rope_freqs)
        rc |= tl_add(l, o, "rope_freqs.weight", 0, hd / 2, 0, INIT_ROPE_FREQS);
    for (uint32_t i = 0; i < o->n_layer && !rc; i++) {
#define ADD(s, d0, d1, init)                                                                       \
    (snprintf(n, sizeof n, "blk.%u." s, i), tl_add(l, o, n, i, d0, d1, init))
        rc |= ADD("attn_norm.weight", E, 0, INIT_NORM);
        if (gpt2)
            rc |= ADD("attn_norm.bias", E, 0, INIT_BIAS);
        if (gpt2 || phi3) {
            rc |= ADD("attn_qkv.weight", E, Q + 2 * KV, INIT_WEIGHT);
            if (gpt2)
                rc |= ADD("attn_qkv.bias", Q + 2 * KV, 0, INIT_BIAS);
        } else {
            rc |= ADD("attn_q.weight", E, Q, INIT_WEIGHT);
            rc |= ADD("attn_k.weight", E, KV, INIT_WEIGHT);
            rc |= ADD("attn_v.weight", E, KV, INIT_WEIGHT);
            if (qwen2) {
                rc |= ADD("attn_q.bias", Q, 0, INIT_BIAS);
                rc |= ADD("attn_k.bias", KV, 0, INIT_BIAS);
                rc |= ADD("attn_v.bias", KV, 0, INIT_BIAS);
            }
        }
        rc |= ADD("attn_output.weight", Q, E, INIT_WEIGHT);
        if (gpt2)
            rc |= ADD("attn_output.bias", E, 0, INIT_BIAS);
        rc |= ADD("ffn_norm.weight", E, 0, INIT_NORM);
        if (gpt2)
            rc |= ADD("ffn_norm.bias", E, 0, INIT_BIAS);
        if (!gpt2 && !phi3)
            rc |= ADD("ffn_gate.weight", E, F, INIT_WEIGHT);
        rc |= ADD("ffn_up.weight", E, phi3 ? 2 * F : F, INIT_WEIGHT);
        if (gpt2)
            rc |= ADD("ffn_up.bias", F, 0, INIT_BIAS);
        rc |= ADD("ffn_down.weight", F, E, INIT_WEIGHT);
        if (gpt2)
            rc |= ADD("ffn_down.bias", E, 0, INIT_BIAS);
#undef ADD
    }
    return rc;
}

/* Llama 3.1's rope scaling as per-dimension factors (what convert_hf_to_gguf
 * stores in rope_freqs.weight): factor 8, low/high frequency factors 1 and 4,
 * original context 8192. Dimension pair i has frequency base^(-2i/n_rot). */
static float llama3_rope_factor(uint64_t i, uint64_t n_rot, float base)
{
    const double factor = 8.0, low = 1.0, high = 4.0, orig_ctx = 8192.0;
    double freq = pow((double)base, -2.0 * (double)i / (double)n_rot);
    double wavelen = 2.0 * M_PI / freq;
    if (wavelen < orig_ctx / high)
        return 1.0f;
    if (wavelen > orig_ctx / low)
        return (float)factor;
    double smooth = (orig_ctx / wavelen - low) / (high - low);
    return (float)(1.0 / ((1.0 - smooth) / factor + smooth));
}

static int write_tensor(struct gguf_writer *w, const struct tdesc *t, const struct opts *o,
                        struct rng *r, float *buf, uint8_t *qbuf)
{
    uint64_t ne0 = t->ne[0], rows = t->ne[1];
    uint64_t rows_per_chunk = ne0 >= CHUNK_ELEMS ? 1 : CHUNK_ELEMS / ne0;
    uint64_t row_bytes;
    if (ggml_type_row_bytes(t->type, ne0, &row_bytes))
        return -1;
    for (uint64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
        uint64_t nr = rows - r0 < rows_per_chunk ? rows - r0 : rows_per_chunk;
        uint64_t n = nr * ne0;
        for (uint64_t i = 0; i < n; i++) {
            switch (t->init) {
            case INIT_WEIGHT:
            case INIT_BIAS:
                buf[i] = 0.02f * rng_normal(r);
                break;
            case INIT_NORM:
                buf[i] = 1.0f + 0.02f * rng_normal(r);
                break;
            case INIT_ROPE_FREQS:
                buf[i] = llama3_rope_factor(i, 2 * ne0, o->rope_base);
                break;
            }
        }
        if (quant_quantize(t->type, buf, qbuf, n))
            return -1;
        int rc = gguf_writer_stream_data(w, qbuf, nr * row_bytes);
        if (rc) {
            fprintf(stderr, "llorch-synth: writing %s: %s\n", t->name, llorch_strerror(rc));
            return -1;
        }
    }
    return 0;
}

/* llama_ftype numbers; a single K type is written as its _S ("mostly")
 * variant, the name llama.cpp gives a model that is nearly all that type. */
static uint32_t file_type_of(const struct opts *o)
{
    switch (o->type) {
    case GGML_TYPE_F16: return 1;
    case GGML_TYPE_BF16: return 32;
    case GGML_TYPE_Q8_0: return 7;
    case GGML_TYPE_Q4_0: return 2;
    case GGML_TYPE_Q4_1: return 3;
    case GGML_TYPE_Q5_0: return 8;
    case GGML_TYPE_Q5_1: return 9;
    case GGML_TYPE_Q4_K: return o->q4_k_m ? 15 : 14;
    case GGML_TYPE_Q5_K: return 16;
    case GGML_TYPE_Q6_K: return 18;
    default: return 0;
    }
}

static int put_hparams(struct gguf_writer *w, const struct opts *o)
{
    char k[128];
    const char *a = o->arch;
    bool gpt2 = !strcmp(a, "gpt2");
    int rc = gguf_writer_set_str(w, LLORCH_GGUF_KEY_ARCHITECTURE, a);
#define SETU(s, v) (rc = rc ? rc : gguf_writer_set_u32(w, (snprintf(k, sizeof k, "%s." s, a), k), v))
#define SETF(s, v) (rc = rc ? rc : gguf_writer_set_f32(w, (snprintf(k, sizeof k, "%s." s, a), k), v))
    rc = rc ? rc : gguf_writer_set_str(w, LLORCH_GGUF_KEY_NAME, o->name);
    rc = rc ? rc : gguf_writer_set_u32(w, LLORCH_GGUF_KEY_FILE_TYPE, file_type_of(o));
    if (ggml_type_block_elems(o->type) > 1)
        rc = rc ? rc : gguf_writer_set_u32(w, LLORCH_GGUF_KEY_QUANTIZATION_VERSION, 2);
    SETU(LLORCH_GGUF_ARCH_CONTEXT_LENGTH, o->n_ctx);
    SETU(LLORCH_GGUF_ARCH_EMBEDDING_LENGTH, o->n_embd);
    SETU(LLORCH_GGUF_ARCH_BLOCK_COUNT, o->n_layer);
    SETU(LLORCH_GGUF_ARCH_FEED_FORWARD_LENGTH, o->n_ff);
    SETU(LLORCH_GGUF_ARCH_HEAD_COUNT, o->n_head);
    SETU(LLORCH_GGUF_ARCH_HEAD_COUNT_KV, o->n_head_kv);
    if (gpt2) {
        SETF(LLORCH_GGUF_ARCH_LAYERNORM_EPS, o->eps);
    } else {
        SETF(LLORCH_GGUF_ARCH_LAYERNORM_RMS_EPS, o->eps);
        SETF(LLORCH_GGUF_ARCH_ROPE_FREQ_BASE, o->rope_base);
        /* convert_hf_to_gguf writes no dimension_count for qwen2 */
        if (strcmp(a, "qwen2"))
            SETU(LLORCH_GGUF_ARCH_ROPE_DIMENSION_COUNT, o->n_embd / o->n_head);
        if (!strcmp(a, "phi3"))
            SETU(LLORCH_GGUF_ARCH_ROPE_SCALING_ORIG_CTX, o->n_ctx);
    }
#undef SETU
#undef SETF
    return rc;
}

static int run(struct opts *o)
{
    struct gguf_writer *w = NULL;
    struct vocab v = {0};
    struct tlist tl = {0};
    float *buf = NULL;
    uint8_t *qbuf = NULL;
    int ret = 1, rc;
    if ((rc = gguf_writer_new(&w, 32)))
        goto out;
    if (o->vocab_from) {
        uint32_t n;
        if (copy_vocab(w, o->vocab_from, &n))
            goto out;
        if (o->n_vocab && o->n_vocab != n)
            fprintf(stderr, "llorch-synth: note: n_vocab %u from %s replaces %u\n", n,
                    o->vocab_from, o->n_vocab);
        o->n_vocab = n;
    } else {
        if (vocab_builtin(&v, o->n_vocab))
            goto out;
        o->n_vocab = v.n;
        if ((rc = put_builtin_vocab(w, &v)))
            goto out;
    }
    if ((rc = put_hparams(w, o)) || build_tensors(o, &tl))
        goto out;
    if (tl.n_k_fallback)
        fprintf(stderr, "llorch-synth: note: %zu weights have rows that are not a multiple of 256 "
                        "and fall back as llama-quantize does (q4_K->q5_0, q5_K->q5_1, "
                        "q6_K->q8_0; f16 where not a multiple of 32)\n", tl.n_k_fallback);
    for (size_t i = 0; i < tl.n; i++) {
        const struct tdesc *t = &tl.t[i];
        if ((rc = gguf_writer_add_tensor_info(w, t->name, t->type, t->n_dims, t->ne)))
            goto out;
    }
    if ((rc = gguf_writer_stream_begin(w, o->out))) {
        fprintf(stderr, "llorch-synth: %s: %s\n", o->out, llorch_strerror(rc));
        rc = 0;
        goto out;
    }
    /* a chunk is CHUNK_ELEMS values, or one row when rows are longer */
    size_t max_elems = CHUNK_ELEMS;
    for (size_t i = 0; i < tl.n; i++)
        if (tl.t[i].ne[0] > max_elems)
            max_elems = (size_t)tl.t[i].ne[0];
    buf = malloc(max_elems * sizeof *buf);
    qbuf = malloc(max_elems * sizeof *buf); /* no type takes more than 4 bytes a value */
    if (!buf || !qbuf) {
        rc = LLORCH_ENOMEM;
        goto out;
    }
    struct rng r = {o->seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull};
    if (r.s == 0)
        r.s = 1;
    for (size_t i = 0; i < tl.n; i++)
        if (write_tensor(w, &tl.t[i], o, &r, buf, qbuf)) {
            remove(o->out);
            goto out;
        }
    if ((rc = gguf_writer_stream_end(w))) {
        remove(o->out);
        goto out;
    }
    ret = 0;
out:
    if (ret && rc)
        fprintf(stderr, "llorch-synth: %s\n", llorch_strerror(rc));
    gguf_writer_free(w);
    vocab_free(&v);
    free(tl.t);
    free(buf);
    free(qbuf);
    return ret;
}

int main(int argc, char **argv)
{
    struct opts o = {0};
    preset(&o, "tiny");
    o.type = GGML_TYPE_F32;
    o.seed = 1;
    o.name = NULL;
    bool kv_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = strcmp(a, "--tied") && strcmp(a, "--rope-freqs") && strcmp(a, "--help") &&
                     strcmp(a, "-h");
        if (takes && !val) {
            fprintf(stderr, "llorch-synth: %s needs a value\n", a);
            return 2;
        }
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            o.out = val;
        } else if (!strcmp(a, "--preset")) {
            if (preset(&o, val)) {
                fprintf(stderr, "llorch-synth: unknown preset '%s'\n", val);
                return 2;
            }
        } else if (!strcmp(a, "--arch")) {
            if (strcmp(val, "llama") && strcmp(val, "qwen2") && strcmp(val, "phi3") &&
                strcmp(val, "gpt2")) {
                fprintf(stderr, "llorch-synth: --arch must be llama, qwen2, phi3 or gpt2\n");
                return 2;
            }
            o.arch = val;
        } else if (!strcmp(a, "--n-embd")) {
            bad = parse_u32(a, val, &o.n_embd);
        } else if (!strcmp(a, "--n-layer")) {
            bad = parse_u32(a, val, &o.n_layer);
        } else if (!strcmp(a, "--n-head")) {
            bad = parse_u32(a, val, &o.n_head);
        } else if (!strcmp(a, "--n-head-kv")) {
            bad = parse_u32(a, val, &o.n_head_kv);
            kv_set = true;
        } else if (!strcmp(a, "--n-ff")) {
            bad = parse_u32(a, val, &o.n_ff);
        } else if (!strcmp(a, "--n-ctx")) {
            bad = parse_u32(a, val, &o.n_ctx);
        } else if (!strcmp(a, "--n-vocab")) {
            bad = parse_u32(a, val, &o.n_vocab);
        } else if (!strcmp(a, "--rope-base")) {
            bad = parse_f32(a, val, &o.rope_base);
        } else if (!strcmp(a, "--eps")) {
            bad = parse_f32(a, val, &o.eps);
        } else if (!strcmp(a, "--tied")) {
            o.tied = true;
        } else if (!strcmp(a, "--rope-freqs")) {
            o.rope_freqs = true;
        } else if (!strcmp(a, "--type")) {
            bad = parse_type(val, &o);
        } else if (!strcmp(a, "--vocab-from")) {
            o.vocab_from = val;
        } else if (!strcmp(a, "--vocab")) {
            if (strcmp(val, "builtin")) {
                fprintf(stderr, "llorch-synth: --vocab takes only 'builtin' (or use --vocab-from)\n");
                return 2;
            }
            o.vocab_from = NULL;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            o.seed = strtoull(val, &end, 10);
            bad = errno || *end || end == val;
            if (bad)
                fprintf(stderr, "llorch-synth: --seed needs an integer\n");
        } else if (!strcmp(a, "--name")) {
            o.name = val;
        } else {
            fprintf(stderr, "llorch-synth: unknown argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (bad)
            return 2;
        if (takes)
            i++;
    }
    if (!o.out) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(o.arch, "gpt2") && !kv_set)
        o.n_head_kv = o.n_head;
    if (o.n_embd % o.n_head || o.n_head % o.n_head_kv || (o.n_embd / o.n_head) % 2) {
        fprintf(stderr, "llorch-synth: n_embd %u must split into %u heads of even size, and "
                        "n_head into groups of n_head_kv %u\n",
                o.n_embd, o.n_head, o.n_head_kv);
        return 2;
    }
    if (!strcmp(o.arch, "gpt2") && o.n_head_kv != o.n_head) {
        fprintf(stderr, "llorch-synth: gpt2 needs n_head_kv == n_head\n");
        return 2;
    }
    if (o.rope_freqs && strcmp(o.arch, "llama")) {
        fprintf(stderr, "llorch-synth: --rope-freqs is for llama models\n");
        return 2;
    }
    char name[128];
    if (!o.name) {
        snprintf(name, sizeof name, "synthetic %s", o.arch);
        o.name = name;
    }
    return run(&o);
}
