/* Model metadata: architecture and hyperparameters from `<arch>.*` keys,
 * tensor names mapped to roles exactly as llama.cpp names them, and every
 * tensor's shape checked against the hyperparameters.
 *
 * Shapes are in ggml ne order (ne[0] innermost): a Linear (out, in) weight is
 * [in, out]. With E = n_embd, V = n_vocab, Q = n_head * head_dim,
 * KV = n_head_kv * head_dim, F = n_ff:
 *   token_embd [E, V], position_embd [E, n_ctx_train] (gpt2), output [E, V]
 *   attn_q [E, Q], attn_k/v [E, KV], attn_qkv [E, Q + 2 KV], attn_output [Q, E]
 *   ffn_gate/up [E, F] (phi3's fused ffn_up [E, 2F]), ffn_down [F, E]
 *   norms and biases 1-D; rope_freqs [n_rot / 2]. */
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_keys.h"
#include "llorch/error.h"
#include "quant.h"
#include "util.h"

#define MODEL_MAX_LAYERS 4096
#define MODEL_MAX_DIM (1u << 24) /* any larger hyperparameter is corrupt */

static const char *const arch_names[MODEL_ARCH_COUNT_] = {"gpt2", "llama", "qwen2", "phi3"};

LLORCH_API const char *model_arch_name(enum model_arch a)
{
    return (unsigned)a < MODEL_ARCH_COUNT_ ? arch_names[a] : "unknown";
}

LLORCH_API const char *model_supported_archs(void)
{
    return "gpt2, llama, qwen2, phi3";
}

/* ---- tensor roles ---- */

#define A_GPT2 (1u << MODEL_ARCH_GPT2)
#define A_LLAMA (1u << MODEL_ARCH_LLAMA)
#define A_QWEN2 (1u << MODEL_ARCH_QWEN2)
#define A_PHI3 (1u << MODEL_ARCH_PHI3)
#define A_ALL (A_GPT2 | A_LLAMA | A_QWEN2 | A_PHI3)

enum dim {
    D_NONE, /* 1: unused dimension */
    D_E,
    D_V,
    D_Q,
    D_KV,
    D_QKV,
    D_F,
    D_FUP, /* F, or 2F for phi3's fused gate/up */
    D_CTX,
    D_ROT2,
};

struct role {
    const char *name;  /* without "blk.N." for layer roles */
    size_t off;        /* offsetof in struct model_layer or struct model */
    unsigned required; /* archs that must have it */
    unsigned allowed;  /* archs that may have it */
    enum dim d0, d1;
};

#define LR(field) offsetof(struct model_layer, field)
#define MR(field) offsetof(struct model, field)

static const struct role global_roles[] = {
    {"token_embd.weight", MR(tok_embd), A_ALL, A_ALL, D_E, D_V},
    {"position_embd.weight", MR(pos_embd), A_GPT2, A_GPT2, D_E, D_CTX},
    {"output_norm.weight", MR(output_norm), A_ALL, A_ALL, D_E, D_NONE},
    {"output_norm.bias", MR(output_norm_b), A_GPT2, A_GPT2, D_E, D_NONE},
    {"output.weight", MR(output), 0, A_ALL, D_E, D_V},
    {"rope_freqs.weight", MR(rope_freqs), 0, A_LLAMA, D_ROT2, D_NONE},
};

static const struct role layer_roles[] = {
    {"attn_norm.weight", LR(attn_norm), A_ALL, A_ALL, D_E, D_NONE},
    {"attn_norm.bias", LR(attn_norm_b), A_GPT2, A_GPT2, D_E, D_NONE},
    /* phi3 may carry separate q/k/v instead of attn_qkv (checked below) */
    {"attn_q.weight", LR(wq), A_LLAMA | A_QWEN2, A_LLAMA | A_QWEN2 | A_PHI3, D_E, D_Q},
    {"attn_k.weight", LR(wk), A_LLAMA | A_QWEN2, A_LLAMA | A_QWEN2 | A_PHI3, D_E, D_KV},
    {"attn_v.weight", LR(wv), A_LLAMA | A_QWEN2, A_LLAMA | A_QWEN2 | A_PHI3, D_E, D_KV},
    {"attn_q.bias", LR(bq), A_QWEN2, A_LLAMA | A_QWEN2, D_Q, D_NONE},
    {"attn_k.bias", LR(bk), A_QWEN2, A_LLAMA | A_QWEN2, D_KV, D_NONE},
    {"attn_v.bias", LR(bv), A_QWEN2, A_LLAMA | A_QWEN2, D_KV, D_NONE},
    {"attn_qkv.weight", LR(wqkv), A_GPT2, A_GPT2 | A_PHI3, D_E, D_QKV},
    {"attn_qkv.bias", LR(bqkv), A_GPT2, A_GPT2, D_QKV, D_NONE},
    {"attn_output.weight", LR(wo), A_ALL, A_ALL, D_Q, D_E},
    {"attn_output.bias", LR(bo), A_GPT2, A_GPT2 | A_LLAMA, D_E, D_NONE},
    {"ffn_norm.weight", LR(ffn_norm), A_ALL, A_ALL, D_E, D_NONE},
    {"ffn_norm.bias", LR(ffn_norm_b), A_GPT2, A_GPT2, D_E, D_NONE},
    {"ffn_gate.weight", LR(ffn_gate), A_LLAMA | A_QWEN2, A_LLAMA | A_QWEN2, D_E, D_F},
    {"ffn_up.weight", LR(ffn_up), A_ALL, A_ALL, D_E, D_FUP},
    {"ffn_up.bias", LR(ffn_up_b), A_GPT2, A_GPT2, D_F, D_NONE},
    {"ffn_down.weight", LR(ffn_down), A_ALL, A_ALL, D_F, D_E},
    {"ffn_down.bias", LR(ffn_down_b), A_GPT2, A_GPT2, D_E, D_NONE},
};

static const struct gguf_tensor **slot_at(void *base, size_t off)
{
    return (const struct gguf_tensor **)((char *)base + off);
}

static uint64_t dim_value(const struct model_hparams *hp, enum dim d)
{
    uint64_t q = (uint64_t)hp->n_head * hp->head_dim, kv = (uint64_t)hp->n_head_kv * hp->head_dim;
    switch (d) {
    case D_NONE:
        return 1;
    case D_E:
        return hp->n_embd;
    case D_V:
        return hp->n_vocab;
    case D_Q:
        return q;
    case D_KV:
        return kv;
    case D_QKV:
        return q + 2 * kv;
    case D_F:
        return hp->n_ff;
    case D_FUP:
        return hp->arch == MODEL_ARCH_PHI3 ? 2ull * hp->n_ff : hp->n_ff;
    case D_CTX:
        return hp->n_ctx_train;
    case D_ROT2:
        return hp->n_rot / 2;
    }
    return 0;
}

static void shape_str(char *out, size_t n, const uint64_t *ne, uint32_t n_dims)
{
    size_t at = 0;
    at += (size_t)snprintf(out + at, n - at, "[");
    for (uint32_t i = 0; i < n_dims && at < n; i++)
        at += (size_t)snprintf(out + at, n - at, "%s%llu", i ? ", " : "", (unsigned long long)ne[i]);
    if (at < n)
        snprintf(out + at, n - at, "]");
}

static int check_shape(const struct model_hparams *hp, const struct gguf_tensor *t,
                       const struct role *r, char *err, size_t errlen)
{
    uint64_t want[GGUF_MAX_DIMS] = {dim_value(hp, r->d0), dim_value(hp, r->d1), 1, 1};
    uint32_t want_dims = r->d1 == D_NONE ? 1 : 2;
    if (memcmp(want, t->ne, sizeof want)) {
        char ws[96], gs[96];
        shape_str(ws, sizeof ws, want, want_dims);
        shape_str(gs, sizeof gs, t->ne, t->n_dims);
        return llorch_errf(err, errlen, LLORCH_EFORMAT, "tensor '%.*s': shape %s, expected %s", (int)t->name.len,
                    t->name.ptr, gs, ws);
    }
    if (!quant_can_dequantize(t->type))
        return llorch_errf(err, errlen, LLORCH_EUNSUPPORTED, "tensor '%.*s': type %s is not supported",
                    (int)t->name.len, t->name.ptr, ggml_type_name(t->type));
    /* norms, biases and rope factors are used as f32 vectors */
    if (r->d1 == D_NONE && t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16 &&
        t->type != GGML_TYPE_BF16)
        return llorch_errf(err, errlen, LLORCH_EUNSUPPORTED, "tensor '%.*s': 1-D tensor of type %s",
                    (int)t->name.len, t->name.ptr, ggml_type_name(t->type));
    return 0;
}

/* ---- hyperparameters ---- */

struct keyctx {
    const struct gguf_file *f;
    const char *arch;
    char *err;
    size_t errlen;
};

static void arch_key(char *out, size_t n, const char *arch, const char *suffix)
{
    snprintf(out, n, "%s.%s", arch, suffix);
}

/* u32 hyperparameter; def < 0 means required. */
static int hp_u32(struct keyctx *k, const char *suffix, int64_t def, uint32_t *out)
{
    char key[128];
    arch_key(key, sizeof key, k->arch, suffix);
    int rc = gguf_get_u32(k->f, key, out);
    if (rc == LLORCH_ENOTFOUND && def >= 0) {
        *out = (uint32_t)def;
        return 0;
    }
    if (rc == LLORCH_ENOTFOUND)
        return llorch_errf(k->err, k->errlen, LLORCH_EFORMAT, "key '%s' is missing", key);
    if (rc == LLORCH_EFORMAT) {
        /* llama.cpp also accepts a per-layer array here (all equal for us) */
        struct gguf_arr arr;
        if (!gguf_get_arr(k->f, key, &arr) && arr.count > 0 &&
            (arr.type == GGUF_TYPE_UINT32 || arr.type == GGUF_TYPE_INT32)) {
            uint32_t first;
            memcpy(&first, arr.data, 4);
            for (uint64_t i = 1; i < arr.count; i++) {
                uint32_t v;
                memcpy(&v, (const char *)arr.data + 4 * i, 4);
                if (v != first)
                    return llorch_errf(k->err, k->errlen, LLORCH_EUNSUPPORTED,
                                "key '%s': per-layer values differ (not supported)", key);
            }
            *out = first;
            return 0;
        }
        return llorch_errf(k->err, k->errlen, LLORCH_EFORMAT, "key '%s' is not an integer", key);
    }
    if (rc)
        return llorch_errf(k->err, k->errlen, rc, "key '%s' is out of range", key);
    if (*out > MODEL_MAX_DIM)
        return llorch_errf(k->err, k->errlen, LLORCH_ERANGE, "key '%s' = %u is implausibly large", key,
                    *out);
    return 0;
}

static int hp_f32(struct keyctx *k, const char *suffix, bool required, float def, float *out)
{
    char key[128];
    arch_key(key, sizeof key, k->arch, suffix);
    int rc = gguf_get_f32(k->f, key, out);
    if (rc == LLORCH_ENOTFOUND && !required) {
        *out = def;
        return 0;
    }
    if (rc == LLORCH_ENOTFOUND)
        return llorch_errf(k->err, k->errlen, LLORCH_EFORMAT, "key '%s' is missing", key);
    if (rc)
        return llorch_errf(k->err, k->errlen, rc, "key '%s' is not a float", key);
    return 0;
}

static int read_hparams(const struct gguf_file *f, enum model_arch arch, bool vocab_only,
                        struct model_hparams *hp, char *err, size_t errlen)
{
    struct keyctx k = {f, arch_names[arch], err, errlen};
    int64_t req = vocab_only ? 0 : -1; /* vocab-only files have no hyperparameters */
    int rc;
    memset(hp, 0, sizeof *hp);
    hp->arch = arch;
    if ((rc = hp_u32(&k, LLORCH_GGUF_ARCH_CONTEXT_LENGTH, req, &hp->n_ctx_train)) ||
        (rc = hp_u32(&k, LLORCH_GGUF_ARCH_EMBEDDING_LENGTH, req, &hp->n_embd)) ||
        (rc = hp_u32(&k, LLORCH_GGUF_ARCH_BLOCK_COUNT, req, &hp->n_layer)) ||
        (rc = hp_u32(&k, LLORCH_GGUF_ARCH_FEED_FORWARD_LENGTH, req, &hp->n_ff)) ||
        (rc = hp_u32(&k, LLORCH_GGUF_ARCH_HEAD_COUNT, req, &hp->n_head)) ||
        (rc = hp_u32(&k, LLORCH_GGUF_ARCH_HEAD_COUNT_KV, hp->n_head, &hp->n_head_kv)))
        return rc;
    if (hp->n_layer > MODEL_MAX_LAYERS)
        return llorch_errf(err, errlen, LLORCH_ERANGE,
                           "key '%s." LLORCH_GGUF_ARCH_BLOCK_COUNT "' = %u exceeds %d", k.arch,
                           hp->n_layer, MODEL_MAX_LAYERS);
    uint32_t def_hd = hp->n_head ? hp->n_embd / hp->n_head : 0;
    uint32_t vdim;
    if ((rc = hp_u32(&k, LLORCH_GGUF_ARCH_KEY_LENGTH, def_hd, &hp->head_dim)) ||
        (rc = hp_u32(&k, LLORCH_GGUF_ARCH_VALUE_LENGTH, hp->head_dim, &vdim)))
        return rc;
    if ((rc = hp_u32(&k, LLORCH_GGUF_ARCH_VOCAB_SIZE, 0, &hp->n_vocab)))
        return rc;

    if (arch == MODEL_ARCH_GPT2) {
        hp->rope_type = MODEL_ROPE_NONE;
        rc = hp_f32(&k, LLORCH_GGUF_ARCH_LAYERNORM_EPS, !vocab_only, 1e-5f, &hp->norm_eps);
    } else {
        hp->rope_type = arch == MODEL_ARCH_LLAMA ? MODEL_ROPE_NORM : MODEL_ROPE_NEOX;
        rc = hp_f32(&k, LLORCH_GGUF_ARCH_LAYERNORM_RMS_EPS, !vocab_only, 1e-5f, &hp->norm_eps);
    }
    if (rc)
        return rc;
    if (arch != MODEL_ARCH_GPT2) {
        if ((rc = hp_u32(&k, LLORCH_GGUF_ARCH_ROPE_DIMENSION_COUNT, hp->head_dim, &hp->n_rot)) ||
            (rc =
                 hp_f32(&k, LLORCH_GGUF_ARCH_ROPE_FREQ_BASE, false, 10000.0f, &hp->rope_freq_base)))
            return rc;
    } else {
        hp->rope_freq_base = 10000.0f;
    }
    /* rope scaling: linear scales positions by 1/factor; llama3-style scaling
     * comes as the rope_freqs tensor, with no scaling type */
    hp->rope_freq_scale = 1.0f;
    char key[128];
    struct gguf_str st;
    float factor = 0.0f;
    arch_key(key, sizeof key, k.arch, LLORCH_GGUF_ARCH_ROPE_SCALING_TYPE);
    bool has_type = gguf_get_str(f, key, &st) == 0;
    arch_key(key, sizeof key, k.arch, LLORCH_GGUF_ARCH_ROPE_SCALING_FACTOR);
    if (gguf_get_f32(f, key, &factor)) {
        arch_key(key, sizeof key, k.arch, LLORCH_GGUF_ARCH_ROPE_SCALE_LINEAR); /* older files */
        if (gguf_get_f32(f, key, &factor))
            factor = 0.0f;
    }
    if (has_type && !(st.len == 4 && !memcmp(st.ptr, "none", 4)) &&
        !(st.len == 6 && !memcmp(st.ptr, "linear", 6)))
        return llorch_errf(err, errlen, LLORCH_EUNSUPPORTED,
                           "key '%s." LLORCH_GGUF_ARCH_ROPE_SCALING_TYPE
                           "' = '%.*s' is not supported (none, linear)",
                           k.arch, (int)(st.len > 32 ? 32 : st.len), st.ptr);
    bool is_none = has_type && st.len == 4;
    if (!is_none && factor != 0.0f && factor != 1.0f) {
        if (!(factor > 0.0f) || factor > 1e6f)
            return llorch_errf(err, errlen, LLORCH_ERANGE, "key '%s.rope.scaling.factor' = %g is invalid",
                        k.arch, (double)factor);
        hp->rope_freq_scale = 1.0f / factor;
    }
    uint32_t ft;
    hp->file_type = gguf_get_u32(f, LLORCH_GGUF_KEY_FILE_TYPE, &ft) ? UINT32_MAX : ft;
    if (vocab_only)
        return 0;

    /* consistency of what the engine relies on */
    if (hp->n_embd == 0 || hp->n_layer == 0 || hp->n_head == 0 || hp->n_head_kv == 0 ||
        hp->n_ff == 0 || hp->n_ctx_train == 0)
        return llorch_errf(err, errlen, LLORCH_EFORMAT,
                    "hyperparameters must be positive (n_embd %u, n_layer %u, n_head %u, "
                    "n_head_kv %u, n_ff %u, n_ctx %u)",
                    hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv, hp->n_ff, hp->n_ctx_train);
    if (hp->n_head % hp->n_head_kv)
        return llorch_errf(err, errlen, LLORCH_EFORMAT, "n_head %u is not a multiple of n_head_kv %u",
                    hp->n_head, hp->n_head_kv);
    if (hp->head_dim == 0 || vdim != hp->head_dim)
        return llorch_errf(err, errlen, LLORCH_EFORMAT, "head dimension %u (value length %u) not supported",
                    hp->head_dim, vdim);
    if (arch == MODEL_ARCH_GPT2 && hp->n_head_kv != hp->n_head)
        return llorch_errf(err, errlen, LLORCH_EFORMAT, "gpt2 needs n_head_kv == n_head");
    if (arch != MODEL_ARCH_GPT2 && (hp->n_rot == 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2))
        return llorch_errf(err, errlen, LLORCH_EFORMAT,
                    "key '%s.rope.dimension_count' = %u must be even and at most head_dim %u",
                    k.arch, hp->n_rot, hp->head_dim);
    if (!(hp->rope_freq_base > 0.0f))
        return llorch_errf(err, errlen, LLORCH_ERANGE, "key '%s.rope.freq_base' must be positive", k.arch);
    if (!(hp->norm_eps >= 0.0f) || hp->norm_eps > 1.0f)
        return llorch_errf(err, errlen, LLORCH_ERANGE, "norm epsilon %g out of range",
                    (double)hp->norm_eps);
    return 0;
}

/* ---- loading ---- */

static int map_tensor(struct model *m, const struct gguf_tensor *t, char *err, size_t errlen)
{
    unsigned abit = 1u << m->hp.arch;
    const char *name = t->name.ptr;
    uint64_t len = t->name.len;
    if (len > 6 && !memcmp(name, "blk.", 4)) {
        uint64_t i = 4, layer = 0;
        while (i < len && name[i] >= '0' && name[i] <= '9' && layer <= MODEL_MAX_LAYERS)
            layer = layer * 10 + (uint64_t)(name[i++] - '0');
        if (i > 4 && i < len && name[i] == '.') {
            i++;
            for (size_t r = 0; r < LLORCH_ARRAY_SIZE(layer_roles); r++) {
                const struct role *ro = &layer_roles[r];
                if (strlen(ro->name) != len - i || memcmp(ro->name, name + i, len - i))
                    continue;
                if (layer >= m->hp.n_layer)
                    return llorch_errf(err, errlen, LLORCH_EFORMAT,
                                "tensor '%.*s': layer %llu but block_count is %u", (int)len, name,
                                (unsigned long long)layer, m->hp.n_layer);
                if (!(ro->allowed & abit))
                    break;
                *slot_at(&m->layers[layer], ro->off) = t;
                return 0;
            }
        }
    } else {
        for (size_t r = 0; r < LLORCH_ARRAY_SIZE(global_roles); r++) {
            const struct role *ro = &global_roles[r];
            if (strlen(ro->name) != len || memcmp(ro->name, name, len))
                continue;
            if (!(ro->allowed & abit))
                break;
            *slot_at(m, ro->off) = t;
            return 0;
        }
    }
    return llorch_errf(err, errlen, LLORCH_EFORMAT, "tensor '%.*s' is not used by architecture %s",
                (int)(len > 100 ? 100 : len), name, arch_names[m->hp.arch]);
}

static int check_roles(struct model *m, char *err, size_t errlen)
{
    unsigned abit = 1u << m->hp.arch;
    int rc;
    for (size_t r = 0; r < LLORCH_ARRAY_SIZE(global_roles); r++) {
        const struct role *ro = &global_roles[r];
        const struct gguf_tensor *t = *slot_at(m, ro->off);
        if (!t) {
            if ((ro->required & abit) && !m->partial)
                return llorch_errf(err, errlen, LLORCH_EFORMAT, "tensor '%s' is missing", ro->name);
            continue;
        }
        if ((rc = check_shape(&m->hp, t, ro, err, errlen)))
            return rc;
    }
    const uint32_t l_end = m->partial ? m->part_end : m->hp.n_layer;
    for (uint32_t l = m->partial ? m->part_first : 0; l < l_end; l++) {
        struct model_layer *ly = &m->layers[l];
        bool phi3_split = m->hp.arch == MODEL_ARCH_PHI3 && !ly->wqkv;
        for (size_t r = 0; r < LLORCH_ARRAY_SIZE(layer_roles); r++) {
            const struct role *ro = &layer_roles[r];
            const struct gguf_tensor *t = *slot_at(ly, ro->off);
            if (!t) {
                bool req = (ro->required & abit) != 0;
                /* phi3: fused attn_qkv, or all three of q/k/v */
                if (phi3_split && (ro->off == LR(wq) || ro->off == LR(wk) || ro->off == LR(wv)))
                    req = true;
                if (req) {
                    if (m->hp.arch == MODEL_ARCH_PHI3 && ro->off == LR(wq))
                        return llorch_errf(err, errlen, LLORCH_EFORMAT,
                                    "tensor 'blk.%u.attn_qkv.weight' (or attn_q/k/v) is missing",
                                    l);
                    return llorch_errf(err, errlen, LLORCH_EFORMAT, "tensor 'blk.%u.%s' is missing", l,
                                ro->name);
                }
                continue;
            }
            if ((rc = check_shape(&m->hp, t, ro, err, errlen)))
                return rc;
        }
        if (ly->wqkv && (ly->wq || ly->wk || ly->wv))
            return llorch_errf(err, errlen, LLORCH_EFORMAT,
                        "layer %u has both attn_qkv and separate attn_q/k/v", l);
    }
    if (!m->output) {
        m->output = m->tok_embd;
        m->output_tied = true;
    }
    return 0;
}

static void name_from(struct model *m, const struct gguf_file *f, const char *path)
{
    struct gguf_str s;
    if (!gguf_get_str(f, LLORCH_GGUF_KEY_NAME, &s) && s.len > 0) {
        size_t n = s.len < sizeof m->name - 1 ? (size_t)s.len : sizeof m->name - 1;
        memcpy(m->name, s.ptr, n);
        m->name[n] = 0;
        return;
    }
    const char *base = path ? strrchr(path, '/') : NULL;
    base = base ? base + 1 : (path ? path : "model");
    size_t n = strlen(base);
    if (n > 5 && !strcmp(base + n - 5, ".gguf"))
        n -= 5;
    if (n > sizeof m->name - 1)
        n = sizeof m->name - 1;
    memcpy(m->name, base, n);
    m->name[n] = 0;
}

static int load(struct model *m, char *err, size_t errlen, const char *path)
{
    const struct gguf_file *f = m->file;
    struct gguf_str a;
    int rc = gguf_get_str(f, LLORCH_GGUF_KEY_ARCHITECTURE, &a);
    if (rc == LLORCH_ENOTFOUND)
        return llorch_errf(err, errlen, LLORCH_EFORMAT,
                           "key '" LLORCH_GGUF_KEY_ARCHITECTURE "' is missing");
    if (rc)
        return llorch_errf(err, errlen, LLORCH_EFORMAT,
                           "key '" LLORCH_GGUF_KEY_ARCHITECTURE "' is not a string");
    int arch = -1;
    for (int i = 0; i < MODEL_ARCH_COUNT_; i++)
        if (a.len == strlen(arch_names[i]) && !memcmp(a.ptr, arch_names[i], a.len))
            arch = i;
    if (arch < 0)
        return llorch_errf(err, errlen, LLORCH_EUNSUPPORTED,
                    "architecture '%.*s' is not supported (supported: %s)",
                    (int)(a.len > 64 ? 64 : a.len), a.ptr, model_supported_archs());
    m->vocab_only = gguf_tensor_count(f) == 0;
    name_from(m, f, path);
    if ((rc = read_hparams(f, (enum model_arch)arch, m->vocab_only, &m->hp, err, errlen)))
        return rc;

    /* vocabulary size from the tokenizer when there is one */
    struct gguf_arr toks;
    bool has_toks = gguf_get_arr(f, LLORCH_GGUF_KEY_TOK_TOKENS, &toks) == 0;
    if (has_toks && toks.count > UINT32_MAX)
        return llorch_errf(err, errlen, LLORCH_ERANGE, "key 'tokenizer.ggml.tokens' has too many entries");
    if (m->vocab_only) {
        if (has_toks)
            m->hp.n_vocab = (uint32_t)toks.count;
        return 0;
    }

    if (m->partial && m->part_end > m->hp.n_layer)
        return llorch_errf(err, errlen, LLORCH_EINVAL, "layers %u..%u past the model's %u",
                           m->part_first, m->part_end - 1, m->hp.n_layer);
    const struct gguf_tensor *emb = gguf_tensor_find(f, "token_embd.weight");
    if (!emb && m->partial && (has_toks || m->hp.n_vocab)) {
        /* a stage without the embedding: the size from the metadata */
        if (!m->hp.n_vocab)
            m->hp.n_vocab = (uint32_t)toks.count;
        goto tensors;
    }
    if (!emb)
        return llorch_errf(err, errlen, LLORCH_EFORMAT, "tensor 'token_embd.weight' is missing");
    if (emb->n_dims != 2 || emb->ne[1] == 0 || emb->ne[1] > UINT32_MAX)
        return llorch_errf(err, errlen, LLORCH_EFORMAT, "tensor 'token_embd.weight': bad shape");
    uint32_t n_vocab = (uint32_t)emb->ne[1];
    if (m->hp.n_vocab && m->hp.n_vocab != n_vocab)
        return llorch_errf(err, errlen, LLORCH_EFORMAT,
                    "key '%s.vocab_size' = %u but token_embd.weight has %u rows",
                    arch_names[arch], m->hp.n_vocab, n_vocab);
    if (has_toks && toks.count != n_vocab)
        return llorch_errf(err, errlen, LLORCH_EFORMAT,
                    "tokenizer has %llu tokens but token_embd.weight has %u rows",
                    (unsigned long long)toks.count, n_vocab);
    m->hp.n_vocab = n_vocab;

tensors:
    m->layers = calloc(m->hp.n_layer, sizeof *m->layers);
    if (!m->layers)
        return llorch_errf(err, errlen, LLORCH_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++)
        if ((rc = map_tensor(m, gguf_tensor_at(f, i), err, errlen)))
            return rc;
    return check_roles(m, err, errlen);
}

/* A model over f (owned from now on): the whole model, or with partial only
 * layers [first, end) and what they read. */
static int model_make(struct model **out, struct gguf_file *f, const char *path, bool partial,
                      uint32_t first, uint32_t end, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = 0;
    struct model *m = calloc(1, sizeof *m);
    if (!m) {
        gguf_close(f);
        return llorch_errf(err, errlen, LLORCH_ENOMEM, "out of memory");
    }
    m->file = f;
    m->partial = partial;
    m->part_first = first;
    m->part_end = end;
    char msg[384];
    int rc = load(m, msg, sizeof msg, path);
    if (rc) {
        if (path)
            llorch_errf(err, errlen, rc, "%s: %s", path, msg);
        else
            llorch_errf(err, errlen, rc, "%s", msg);
        model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

LLORCH_API int model_load_gguf(struct model **out, struct gguf_file *f, const char *path, char *err,
                               size_t errlen)
{
    return model_make(out, f, path, false, 0, 0, err, errlen);
}

LLORCH_API int model_load(struct model **out, const char *path, char *err, size_t errlen)
{
    struct gguf_file *f;
    *out = NULL;
    int rc = gguf_open(&f, path, err, errlen);
    if (rc)
        return rc;
    return model_load_gguf(out, f, path, err, errlen);
}

/* The tensors of layers [first, end), and those outside blocks but the
 * output norm and head unless end is the last layer. */
struct model_want {
    uint32_t first, end, n_layer;
    bool read;
};

static bool model_wants(void *ctx, const struct gguf_file *meta, const struct gguf_tensor *t)
{
    struct model_want *w = ctx;
    if (!w->read) { /* the layer count, once, from the first part's metadata */
        w->read = true;
        struct gguf_str a;
        char arch[64], key[96];
        if (!gguf_get_str(meta, LLORCH_GGUF_KEY_ARCHITECTURE, &a) && a.len < sizeof arch) {
            snprintf(arch, sizeof arch, "%.*s", (int)a.len, a.ptr);
            arch_key(key, sizeof key, arch, LLORCH_GGUF_ARCH_BLOCK_COUNT);
            (void)gguf_get_u32(meta, key, &w->n_layer);
        }
    }
    const char *name = t->name.ptr;
    const uint64_t len = t->name.len;
    if (len > 4 && !memcmp(name, "blk.", 4)) {
        uint64_t layer = 0, i = 4;
        while (i < len && name[i] >= '0' && name[i] <= '9' && layer <= MODEL_MAX_LAYERS)
            layer = layer * 10 + (uint64_t)(name[i++] - '0');
        return layer >= w->first && layer < w->end;
    }
    if ((len >= 7 && !memcmp(name, "output.", 7)) || (len >= 12 && !memcmp(name, "output_norm.", 12)))
        return w->end >= w->n_layer;
    return true;
}

LLORCH_API int model_load_layers(struct model **out, const char *path, uint32_t first,
                                 uint32_t end, char *err, size_t errlen)
{
    *out = NULL;
    struct model_want w = {.first = first, .end = end};
    struct gguf_file *f;
    int rc = gguf_open_some(&f, path, model_wants, &w, err, errlen);
    if (rc)
        return rc;
    return model_make(out, f, path, true, first, end, err, errlen);
}

LLORCH_API void model_free(struct model *m)
{
    if (!m)
        return;
    gguf_close(m->file);
    free(m->layers);
    free(m);
}

LLORCH_API uint64_t model_weight_bytes(const struct model *m)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < gguf_tensor_count(m->file); i++)
        sum += gguf_tensor_at(m->file, i)->nbytes;
    return sum;
}
