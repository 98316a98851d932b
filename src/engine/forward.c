/* One batched forward step over many sequences for gpt2, llama, qwen2 and
 * phi3. The token rows of every sequence in the step are concatenated into
 * one [n_tokens, n_embd] activation matrix, so each weight matrix is read
 * once per step (one oneDNN matmul over all rows); attention runs per
 * sequence and head over the paged KV cache. Row r of every result depends
 * only on row r's own inputs and its sequence's cache, so a sequence gets the
 * same bits whatever else is in the batch.
 *
 * Weights are dequantised once at load and packed by matmul.c for the run
 * dtype. In exact mode (f32) with llama_rounding, the activations entering a
 * matmul are rounded as llama.cpp's CPU backend rounds them for the weight's
 * file type (f16 -> f16, bf16 -> bf16, Q4/Q5/Q8 -> Q8_0 blocks), so that f16
 * and quantised files match llama.cpp to float rounding too. */
#include "forward.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "kernels.h"
#include "matmul.h"
#include "qmm.h"
#include "quant.h"
#include "util.h"

enum fw_round { FW_ROUND_NONE, FW_ROUND_F16, FW_ROUND_BF16, FW_ROUND_Q8_0 };

/* One weight matrix [n_out, n_in] with its optional bias: ours (q, in the
 * file's class or a converted copy) or oneDNN's packed one (w). */
struct fw_proj {
    struct qmm_weight *q;
    struct mm_weight *w;
    float *bias;          /* [n_out] or NULL */
    int64_t n_out;
    int64_t n_in;
    enum fw_round round;  /* activation rounding in llama_rounding mode */
};

/* Projections that read the same input and whose outputs are used as
 * consecutive parts (q|k|v, gate|up): one fused matrix when the file types
 * allow, otherwise one per part. */
struct fw_group {
    struct fw_proj p[3];
    int n_proj;           /* 1 (fused or single) or n_part */
    int n_part;
    int64_t part[3];      /* widths of the parts */
    int64_t total;        /* sum of the parts */
};

struct fw_layer {
    float *attn_norm, *attn_norm_b;   /* [n_embd] */
    float *ffn_norm, *ffn_norm_b;
    struct fw_group qkv;              /* parts: q [n_head*hd], k, v [n_head_kv*hd] */
    struct fw_proj wo;
    struct fw_group up;               /* gpt2: up; llama/qwen2/phi3: gate, up */
    struct fw_proj down;
};

struct forward {
    const struct model *m;
    struct model_hparams hp;
    struct forward_opts o;
    enum llorch_dtype dtype;
    enum llorch_kv_type kv_type;
    enum kernels_isa isa;
    bool onednn;                      /* matmuls through matmul.c, else qmm.c */
    bool rounding;
    uint32_t l0, l1;  /* layers [l0, l1) of this forward (a pipeline stage's) */
    bool embed, head; /* l0 == 0, l1 == n_layer */
    uint32_t n_ctx;
    int n_workers;
    const struct kernels *k;
    struct kv_cache *kv;
    struct fw_layer *layers;
    float *out_norm, *out_norm_b;
    struct fw_proj output;
    float *rope_freqs;                /* [n_rot/2] or NULL */
    uint16_t *gelu_table;             /* gpt2 */
    uint64_t tok_row_bytes, pos_row_bytes;
    uint64_t weight_bytes;
    /* load progress: weight elements dequantised plus elements packed, of
     * twice the elements of every packed matrix */
    uint64_t work_done, work_total;
    double work_reported;             /* last fraction given to o.progress */
    int64_t n_q, n_kv;                /* n_head*hd, n_head_kv*hd */
    uint32_t out_cap;                 /* rows per output matmul */

    /* scratch, [T = max_step_tokens] rows unless noted */
    float *x;        /* [T, n_embd] residual stream */
    float *xn;       /* [T, n_embd] normed */
    float *xr;       /* [T, max n_in] rounded matmul input */
    float *qkv;      /* [T, n_q + 2 n_kv] */
    float *att;      /* [T, n_q] */
    float *proj;     /* [T, n_embd] */
    float *ffn;      /* [T, up.total] */
    float *act;      /* [T, n_ff] */
    float *rope;     /* [T, n_rot] */
    float *scores;   /* [n_workers, 2 x GQA group x n_ctx] */
    float *xo;       /* [out_cap, n_embd] */
    float *lo;       /* [out_cap, n_vocab] */
    uint32_t *tok_entry;  /* [T] entry of each row */
    uint32_t *tok_pos;    /* [T] position of each row */
    uint32_t *ent_start;  /* [max_seqs] first row of each entry */
    uint64_t *ent_task;   /* [max_seqs + 1] first attention task of each entry */
    void *qact;           /* qmm's rounded activations, qact_bytes */
    size_t qact_bytes;
    uint32_t *out_src;    /* [T] rows that need logits */
    float **out_dst;      /* [T] where they go */
};

/* ---- helpers ----------------------------------------------------------- */

static void fw_err(char *err, size_t errlen, const char *fmt, const char *what)
{
    if (errlen)
        snprintf(err, errlen, fmt, what);
}

static enum fw_round fw_round_of(enum ggml_type t)
{
    switch (t) {
    case GGML_TYPE_F16:
        return FW_ROUND_F16;
    case GGML_TYPE_BF16:
        return FW_ROUND_BF16;
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q8_0:
        return FW_ROUND_Q8_0;
    default:
        /* f32, and k-quants (whose Q8_K activations are not emulated) */
        return FW_ROUND_NONE;
    }
}

/* A 1-D tensor of n elements as an owned f32 array (NULL tensor: NULL). */
static int fw_vec(const struct gguf_tensor *t, uint64_t n, float **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!t)
        return 0;
    if (t->n_elements != n) {
        fw_err(err, errlen, "tensor %s has an unexpected size", "(vector)");
        return LLORCH_EFORMAT;
    }
    float *v = malloc((size_t)n * sizeof *v);
    if (!v)
        return LLORCH_ENOMEM;
    int rc = quant_dequantize(t->type, t->data, v, n);
    if (rc < 0) {
        free(v);
        fw_err(err, errlen, "cannot dequantise a %s tensor", ggml_type_name(t->type));
        return rc;
    }
    *out = v;
    return 0;
}

/* Counts work done towards load progress and reports it, at most every
 * 1/1024 of the total so that the caller sees a bounded number of calls.
 * Returns LLORCH_ECANCELLED when the callback asks to stop. */
static int fw_progress_add(struct forward *f, uint64_t work, char *err, size_t errlen)
{
    f->work_done += work;
    if (!f->o.progress || !f->work_total)
        return 0;
    double frac = (double)f->work_done / (double)f->work_total;
    if (frac >= 1.0)
        frac = 0.999; /* exactly 1.0 only once everything is set up */
    if (frac - f->work_reported < 1.0 / 1024)
        return 0;
    f->work_reported = frac;
    if (f->o.progress(f->o.progress_ctx, frac))
        return 0;
    fw_err(err, errlen, "%s", "loading cancelled");
    return LLORCH_ECANCELLED;
}

/* What fw_progress_add counts for a whole model: each packed matrix is
 * dequantised, then packed (same elements each). */
static uint64_t fw_work_total(const struct model *m, uint32_t l0, uint32_t l1, bool head)
{
    uint64_t n = head && m->output ? m->output->n_elements : 0;
    for (uint32_t il = l0; il < l1; il++) {
        const struct model_layer *L = &m->layers[il];
        const struct gguf_tensor *t[] = {L->wqkv, L->wq,     L->wk,     L->wv,
                                         L->wo,   L->ffn_gate, L->ffn_up, L->ffn_down};
        for (size_t i = 0; i < LLORCH_ARRAY_SIZE(t); i++)
            n += t[i] ? t[i]->n_elements : 0;
    }
    return 2 * n;
}

/* Dequantises tensors stacked by rows into one [sum n_out, n_in] matrix,
 * packs it, and stacks their biases (missing ones as zeros). */
/* The class a tensor runs in with our kernels: its own (native), or the
 * explicit --dtype's (int8 as Q8_0 blocks where rows allow, else f32). */
static enum ggml_type fw_qmm_type(const struct forward *f, const struct gguf_tensor *t)
{
    switch (f->dtype) {
    case LLORCH_DTYPE_F32:
        return GGML_TYPE_F32;
    case LLORCH_DTYPE_BF16:
        return GGML_TYPE_BF16;
    case LLORCH_DTYPE_INT8:
        return t->ne[0] % 32 == 0 ? GGML_TYPE_Q8_0 : GGML_TYPE_F32;
    default:
        return t->type;
    }
}

static void fw_tensor_name(const struct gguf_tensor *t, char *name, size_t len)
{
    snprintf(name, len, "%.*s (%s)", (int)LLORCH_MIN(t->name.len, 64), t->name.ptr,
             ggml_type_name(t->type));
}

/* One tensor as a qmm part: in place from the mapping when it runs in its
 * own class, else converted into an owned copy (whose file pages are then
 * released). */
static int fw_qmm_part(struct forward *f, const struct gguf_tensor *t, struct qmm_part *part,
                       char *err, size_t errlen)
{
    char name[96];
    const enum ggml_type want = fw_qmm_type(f, t);
    *part = (struct qmm_part){.type = want, .data = t->data, .n_rows = (int64_t)t->ne[1]};
    if (!qmm_type_supported(t->type) || !quant_can_dequantize(t->type)) {
        fw_tensor_name(t, name, sizeof name);
        fw_err(err, errlen,
               "weight %s has a type without kernels (supported: f32, f16, bf16, q8_0, q4_0, "
               "q4_1, q5_0, q5_1, q4_K, q5_K, q6_K)", name);
        return LLORCH_EUNSUPPORTED;
    }
    if (want == t->type)
        return fw_progress_add(f, 2 * t->n_elements, err, errlen);
    uint64_t rb;
    size_t n = (size_t)t->n_elements;
    if (ggml_type_row_bytes(want, t->ne[0], &rb) < 0 || n > SIZE_MAX / 4)
        return LLORCH_EOVERFLOW;
    float *buf = malloc(n * sizeof *buf);
    if (!buf)
        return LLORCH_ENOMEM;
    int rc = quant_dequantize(t->type, t->data, buf, n);
    if (rc == 0)
        rc = fw_progress_add(f, n, err, errlen);
    void *owned = buf;
    if (rc == 0 && want != GGML_TYPE_F32) {
        owned = malloc((size_t)(rb * t->ne[1]));
        rc = owned ? quant_quantize(want, buf, owned, n) : LLORCH_ENOMEM;
        free(buf);
    }
    if (rc < 0) {
        free(owned);
        fw_tensor_name(t, name, sizeof name);
        fw_err(err, errlen, "cannot convert weight %s", name);
        return rc;
    }
    part->data = part->owned = owned;
    gguf_tensor_release(f->m->file, t);
    return fw_progress_add(f, n, err, errlen);
}

static int fw_proj_new_qmm(struct forward *f, struct fw_proj *p, const struct gguf_tensor *const *w,
                           int n, char *err, size_t errlen)
{
    struct qmm_part parts[QMM_MAX_PARTS];
    int made = 0, rc = 0;
    if (n > QMM_MAX_PARTS)
        return LLORCH_EINVAL;
    for (; made < n && rc == 0; made++)
        rc = fw_qmm_part(f, w[made], &parts[made], err, errlen);
    if (rc < 0) {
        for (int i = 0; i < made; i++)
            free(parts[i].owned);
        return rc;
    }
    rc = qmm_weight_new(&p->q, parts, n, (int64_t)w[0]->ne[0], f->isa, f->o.pool);
    if (rc < 0) {
        fw_err(err, errlen, "cannot set up a weight matrix: %s", llorch_strerror(rc));
        return rc;
    }
    for (int i = 0; i < n; i++)
        if (!parts[i].owned && qmm_weight_part_copied(p->q, i))
            gguf_tensor_release(f->m->file, w[i]);
    f->weight_bytes += qmm_weight_bytes(p->q);
    return 0;
}

static int fw_proj_new(struct forward *f, struct fw_proj *p, const struct gguf_tensor *const *w,
                       const struct gguf_tensor *const *b, int n, int64_t max_m, char *err,
                       size_t errlen)
{
    memset(p, 0, sizeof *p);
    const int64_t n_in = (int64_t)w[0]->ne[0];
    int64_t n_out = 0;
    bool any_bias = false;
    for (int i = 0; i < n; i++) {
        if ((int64_t)w[i]->ne[0] != n_in || w[i]->n_elements != w[i]->ne[0] * w[i]->ne[1]) {
            fw_err(err, errlen, "weight %s: rows do not stack", "(projection)");
            return LLORCH_EFORMAT;
        }
        n_out += (int64_t)w[i]->ne[1];
        any_bias |= b && b[i];
    }
    size_t elems;
    if (llorch_size_mul_overflows((size_t)n_out, (size_t)n_in, &elems) || elems > SIZE_MAX / 4)
        return LLORCH_EOVERFLOW;
    int rc = 0;
    if (!f->onednn) {
        rc = fw_proj_new_qmm(f, p, w, n, err, errlen);
        goto packed;
    }
    float *buf = malloc(elems * sizeof *buf);
    if (!buf)
        return LLORCH_ENOMEM;
    int64_t row = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        rc = quant_dequantize(w[i]->type, w[i]->data, buf + row * n_in, w[i]->n_elements);
        if (rc < 0) {
            char name[96];
            fw_tensor_name(w[i], name, sizeof name);
            fw_err(err, errlen, "cannot dequantise weight %s", name);
        }
        row += (int64_t)w[i]->ne[1];
        if (rc == 0)
            rc = fw_progress_add(f, w[i]->n_elements, err, errlen);
    }
    if (rc == 0) {
        rc = matmul_weight_new(&p->w, buf, n_out, n_in, f->dtype, max_m, f->o.pool);
        if (rc < 0)
            fw_err(err, errlen, "cannot pack a weight matrix: %s", llorch_strerror(rc));
    }
    free(buf);
    if (rc == 0)
        rc = fw_progress_add(f, (uint64_t)elems, err, errlen);
    if (rc == 0) {
        f->weight_bytes += matmul_weight_bytes(p->w);
        for (int i = 0; i < n; i++)
            gguf_tensor_release(f->m->file, w[i]);
    }
packed:
    if (rc < 0)
        return rc;
    p->n_out = n_out;
    p->n_in = n_in;
    p->round = fw_round_of(w[0]->type);
    if (any_bias) {
        p->bias = calloc((size_t)n_out, sizeof *p->bias);
        if (!p->bias)
            return LLORCH_ENOMEM;
        row = 0;
        for (int i = 0; i < n; i++) {
            if (b[i]) {
                if (b[i]->n_elements != w[i]->ne[1]) {
                    fw_err(err, errlen, "bias of %s has the wrong size", "(projection)");
                    return LLORCH_EFORMAT;
                }
                rc = quant_dequantize(b[i]->type, b[i]->data, p->bias + row, b[i]->n_elements);
                if (rc < 0)
                    return rc;
            }
            row += (int64_t)w[i]->ne[1];
        }
    }
    return 0;
}

static void fw_proj_free(struct fw_proj *p)
{
    qmm_weight_free(p->q);
    matmul_weight_free(p->w);
    free(p->bias);
    memset(p, 0, sizeof *p);
}

/* A group of parts given as separate tensors (fused when their file types
 * round alike) or as one fused tensor split into parts. */
static int fw_group_new(struct forward *f, struct fw_group *g, const struct gguf_tensor *const *w,
                        const struct gguf_tensor *const *b, int n_tensors, const int64_t *part,
                        int n_part, int64_t max_m, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    g->n_part = n_part;
    for (int i = 0; i < n_part; i++) {
        g->part[i] = part[i];
        g->total += part[i];
    }
    /* our kernels stack parts of different types; oneDNN and the exact-mode
     * rounding need one class per matrix */
    bool fuse = true;
    for (int i = 1; i < n_tensors && (f->onednn || f->rounding); i++)
        fuse &= fw_round_of(w[i]->type) == fw_round_of(w[0]->type);
    if (n_tensors == 1 || fuse) {
        g->n_proj = 1;
        int rc = fw_proj_new(f, &g->p[0], w, b, n_tensors, max_m, err, errlen);
        if (rc == 0 && g->p[0].n_out != g->total) {
            fw_err(err, errlen, "fused weight %s has the wrong number of rows", "(group)");
            rc = LLORCH_EFORMAT;
        }
        return rc;
    }
    g->n_proj = n_tensors;
    for (int i = 0; i < n_tensors; i++) {
        int rc = fw_proj_new(f, &g->p[i], &w[i], b ? &b[i] : NULL, 1, max_m, err, errlen);
        if (rc < 0)
            return rc;
        if (g->p[i].n_out != part[i]) {
            fw_err(err, errlen, "weight %s has the wrong number of rows", "(group part)");
            return LLORCH_EFORMAT;
        }
    }
    return 0;
}

static void fw_group_free(struct fw_group *g)
{
    for (int i = 0; i < 3; i++)
        fw_proj_free(&g->p[i]);
}

/* ---- parallel row kernels ---------------------------------------------- */

typedef void (*fw_rows_fn)(struct forward *f, void *arg, int64_t begin, int64_t end, int worker);

struct fw_task {
    struct forward *f;
    fw_rows_fn fn;
    void *arg;
};

static void fw_task_run(void *ctx, int64_t begin, int64_t end, int worker)
{
    struct fw_task *t = ctx;
    t->fn(t->f, t->arg, begin, end, worker);
}

static void fw_parallel(struct forward *f, int64_t n, int64_t grain, fw_rows_fn fn, void *arg)
{
    if (n <= 0)
        return;
    if (!f->o.pool || n <= 1) {
        fn(f, arg, 0, n, 0);
        return;
    }
    struct fw_task t = {f, fn, arg};
    tpool_parallel_for(f->o.pool, n, grain, fw_task_run, &t);
}

struct fw_norm_arg {
    const float *in;
    float *out;
    const float *w, *b;
    int64_t n;
    const uint32_t *rows;  /* gather: out row r reads in row rows[r]; NULL: same row */
};

static void fw_norm_rows(struct forward *f, void *arg, int64_t begin, int64_t end, int worker)
{
    LLORCH_UNUSED(worker);
    const struct fw_norm_arg *a = arg;
    for (int64_t r = begin; r < end; r++) {
        const float *x = a->in + (a->rows ? a->rows[r] : r) * a->n;
        float *y = a->out + r * a->n;
        if (f->hp.arch == MODEL_ARCH_GPT2)
            f->k->layernorm(y, x, a->w, a->b, a->n, f->hp.norm_eps);
        else
            f->k->rmsnorm(y, x, a->w, a->n, f->hp.norm_eps);
    }
}

static void fw_norm(struct forward *f, const float *in, float *out, const float *w, const float *b,
                    int64_t rows, const uint32_t *gather)
{
    struct fw_norm_arg a = {in, out, w, b, f->hp.n_embd, gather};
    fw_parallel(f, rows, 4, fw_norm_rows, &a);
}

struct fw_round_arg {
    const float *in;
    float *out;
    int64_t n;
    enum fw_round kind;
};

static void fw_round_rows(struct forward *f, void *arg, int64_t begin, int64_t end, int worker)
{
    LLORCH_UNUSED(worker);
    const struct fw_round_arg *a = arg;
    for (int64_t r = begin; r < end; r++) {
        float *y = a->out + r * a->n;
        memcpy(y, a->in + r * a->n, (size_t)a->n * sizeof *y);
        switch (a->kind) {
        case FW_ROUND_F16:
            kernels_round_f16(y, a->n);
            break;
        case FW_ROUND_BF16:
            for (int64_t i = 0; i < a->n; i++)
                y[i] = half_bf16_to_f32(half_f32_to_bf16(y[i]));
            break;
        case FW_ROUND_Q8_0:
            kernels_round_q8_0(y, a->n);
            break;
        default:
            break;
        }
        LLORCH_UNUSED(f);
    }
}

/* y[m, n_out] = x[m, n_in] W^T + bias, rounding x first where asked. */
static int fw_proj_run(struct forward *f, const struct fw_proj *p, const float *x, float *y,
                       int64_t m)
{
    if (f->rounding && p->round != FW_ROUND_NONE &&
        !(p->round == FW_ROUND_Q8_0 && p->n_in % 32 != 0)) {
        struct fw_round_arg a = {x, f->xr, p->n_in, p->round};
        fw_parallel(f, m, 4, fw_round_rows, &a);
        x = f->xr;
    }
    int rc = p->q ? qmm_run(p->q, x, y, m, f->qact, f->o.pool) : matmul_run(p->w, x, y, m, f->o.pool);
    if (rc < 0)
        return rc;
    if (p->bias)
        for (int64_t r = 0; r < m; r++)
            f->k->add(y + r * p->n_out, p->bias, p->n_out);
    return 0;
}

/* Runs a group into buf; part i of row r is at out[i] + r * stride[i]. */
static int fw_group_run(struct forward *f, const struct fw_group *g, const float *x, int64_t m,
                        float *buf, float **out, int64_t *stride)
{
    if (g->n_proj == 1) {
        int rc = fw_proj_run(f, &g->p[0], x, buf, m);
        int64_t off = 0;
        for (int i = 0; i < g->n_part; i++) {
            out[i] = buf + off;
            stride[i] = g->total;
            off += g->part[i];
        }
        return rc;
    }
    float *dst = buf;
    for (int i = 0; i < g->n_proj; i++) {
        int rc = fw_proj_run(f, &g->p[i], x, dst, m);
        if (rc < 0)
            return rc;
        out[i] = dst;
        stride[i] = g->part[i];
        dst += m * g->part[i];
    }
    return 0;
}

/* ---- load -------------------------------------------------------------- */

static enum llorch_dtype fw_auto_dtype(const struct model *m)
{
    uint32_t ft = m->hp.file_type;
    if (ft == 0)
        return LLORCH_DTYPE_F32;
    if (ft == 1 || ft == 32) /* MOSTLY_F16, MOSTLY_BF16 */
        return LLORCH_DTYPE_BF16;
    if (ft != UINT32_MAX)
        return LLORCH_DTYPE_INT8;
    /* no general.file_type: judge by the largest per-layer matrix (of the
     * first layer present: a stage's model has only its own) */
    const struct gguf_tensor *t = m->tok_embd;
    for (uint32_t l = 0; l < m->hp.n_layer; l++)
        if (m->layers[l].ffn_down) {
            t = m->layers[l].ffn_down;
            break;
        }
    switch (t ? t->type : GGML_TYPE_F32) {
    case GGML_TYPE_F32:
        return LLORCH_DTYPE_F32;
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16:
        return LLORCH_DTYPE_BF16;
    default:
        return LLORCH_DTYPE_INT8;
    }
}

static enum llorch_kv_type fw_kv_type(const struct model *m, const struct forward_opts *o)
{
    const enum llorch_dtype d = o->dtype == LLORCH_DTYPE_AUTO ? LLORCH_DTYPE_NATIVE : o->dtype;
    const bool f32_class =
        d == LLORCH_DTYPE_F32 || (d == LLORCH_DTYPE_NATIVE && fw_auto_dtype(m) == LLORCH_DTYPE_F32);
    return o->kv_type != LLORCH_KV_AUTO ? o->kv_type : f32_class ? LLORCH_KV_F32 : LLORCH_KV_F16;
}

LLORCH_API uint64_t forward_kv_block_bytes(const struct model *m, const struct forward_opts *o)
{
    const uint32_t end = o->layer_end ? o->layer_end : m->hp.n_layer;
    const uint32_t n = end > o->layer_first ? end - o->layer_first : 0;
    const uint64_t elem = fw_kv_type(m, o) == LLORCH_KV_F32 ? 4 : 2;
    return 2ull * n * m->hp.n_head_kv * m->hp.head_dim * LLORCH_KV_BLOCK * elem;
}

/* Grows the shared activation scratch to what p needs for m rows. */
static void fw_qact_need(struct forward *f, const struct fw_proj *p, int64_t m)
{
    if (p->q)
        f->qact_bytes = LLORCH_MAX(f->qact_bytes, qmm_act_bytes(p->q, m));
}

/* The kernel level: the best this CPU runs, or a lower one asked for. */
static int fw_resolve_isa(struct forward *f, enum llorch_isa want, char *err, size_t errlen)
{
    const struct kernels *best = kernels_best();
    enum kernels_isa level = best->isa;
    switch (want) {
    case LLORCH_ISA_SCALAR:
        level = KERNELS_ISA_SCALAR;
        break;
    case LLORCH_ISA_AVX2:
        level = KERNELS_ISA_AVX2;
        break;
    case LLORCH_ISA_AVXVNNI:
        level = KERNELS_ISA_AVXVNNI;
        break;
    case LLORCH_ISA_AVX512:
        level = KERNELS_ISA_AVX512;
        break;
    default:
        break;
    }
    f->k = kernels_get(level);
    if (!f->k) {
        char runs[64] = "scalar";
        size_t len = strlen(runs);
        for (int i = KERNELS_ISA_SCALAR + 1; i < KERNELS_ISA_COUNT_; i++)
            if (kernels_get((enum kernels_isa)i) && len < sizeof runs) /* AVX-512 without VNNI: no avxvnni */
                len += (size_t)snprintf(runs + len, sizeof runs - len, ", %s", kernels_isa_name((enum kernels_isa)i));
        if (errlen)
            snprintf(err, errlen, "kernel level %s is not one this CPU runs (its best: %s); it runs: %s",
                     kernels_isa_name(level), best->name, runs);
        return LLORCH_EUNSUPPORTED;
    }
    f->isa = level;
    return 0;
}

static int fw_alloc(void **p, size_t count, size_t size)
{
    size_t bytes;
    if (llorch_size_mul_overflows(count ? count : 1, size, &bytes))
        return LLORCH_EOVERFLOW;
    *p = aligned_alloc(64, (size_t)llorch_align_up(bytes, 64));
    return *p ? 0 : LLORCH_ENOMEM;
}

static int fw_layer_new(struct forward *f, uint32_t il, char *err, size_t errlen)
{
    const struct model_layer *L = &f->m->layers[il];
    struct fw_layer *l = &f->layers[il];
    const uint32_t n_embd = f->hp.n_embd;
    const int64_t T = f->o.max_step_tokens;
    int rc;
    if ((rc = fw_vec(L->attn_norm, n_embd, &l->attn_norm, err, errlen)) < 0 ||
        (rc = fw_vec(L->attn_norm_b, n_embd, &l->attn_norm_b, err, errlen)) < 0 ||
        (rc = fw_vec(L->ffn_norm, n_embd, &l->ffn_norm, err, errlen)) < 0 ||
        (rc = fw_vec(L->ffn_norm_b, n_embd, &l->ffn_norm_b, err, errlen)) < 0)
        return rc;
    if (!l->attn_norm || !l->ffn_norm) {
        fw_err(err, errlen, "layer without %s", "norm weights");
        return LLORCH_EFORMAT;
    }
    const int64_t qkv_parts[3] = {f->n_q, f->n_kv, f->n_kv};
    if (L->wqkv) {
        const struct gguf_tensor *w[1] = {L->wqkv}, *b[1] = {L->bqkv};
        rc = fw_group_new(f, &l->qkv, w, b, 1, qkv_parts, 3, T, err, errlen);
    } else if (L->wq && L->wk && L->wv) {
        const struct gguf_tensor *w[3] = {L->wq, L->wk, L->wv}, *b[3] = {L->bq, L->bk, L->bv};
        rc = fw_group_new(f, &l->qkv, w, b, 3, qkv_parts, 3, T, err, errlen);
    } else {
        fw_err(err, errlen, "layer without %s", "attention weights");
        return LLORCH_EFORMAT;
    }
    if (rc < 0)
        return rc;
    if (!L->wo || !L->ffn_up || !L->ffn_down) {
        fw_err(err, errlen, "layer without %s", "output or feed-forward weights");
        return LLORCH_EFORMAT;
    }
    {
        const struct gguf_tensor *w[1] = {L->wo}, *b[1] = {L->bo};
        if ((rc = fw_proj_new(f, &l->wo, w, b, 1, T, err, errlen)) < 0)
            return rc;
    }
    const int64_t n_ff = f->hp.n_ff;
    if (f->hp.arch == MODEL_ARCH_GPT2) {
        const struct gguf_tensor *w[1] = {L->ffn_up}, *b[1] = {L->ffn_up_b};
        const int64_t parts[1] = {n_ff};
        rc = fw_group_new(f, &l->up, w, b, 1, parts, 1, T, err, errlen);
    } else if (f->hp.arch == MODEL_ARCH_PHI3) {
        /* ffn_up rows are [gate (n_ff) | up (n_ff)] */
        const struct gguf_tensor *w[1] = {L->ffn_up}, *b[1] = {L->ffn_up_b};
        const int64_t parts[2] = {n_ff, n_ff};
        rc = fw_group_new(f, &l->up, w, b, 1, parts, 2, T, err, errlen);
    } else {
        if (!L->ffn_gate) {
            fw_err(err, errlen, "layer without %s", "ffn_gate");
            return LLORCH_EFORMAT;
        }
        const struct gguf_tensor *w[2] = {L->ffn_gate, L->ffn_up}, *b[2] = {NULL, L->ffn_up_b};
        const int64_t parts[2] = {n_ff, n_ff};
        rc = fw_group_new(f, &l->up, w, b, 2, parts, 2, T, err, errlen);
    }
    if (rc < 0)
        return rc;
    const struct gguf_tensor *w[1] = {L->ffn_down}, *b[1] = {L->ffn_down_b};
    return fw_proj_new(f, &l->down, w, b, 1, T, err, errlen);
}

LLORCH_API int forward_new(struct forward **out, const struct model *m, const struct forward_opts *o,
                           char *err, size_t errlen)
{
    *out = NULL;
    if (errlen)
        err[0] = '\0';
    if (m->vocab_only) {
        fw_err(err, errlen, "%s", "the model file has no weights (vocabulary only)");
        return LLORCH_EINVAL;
    }
    const struct model_hparams *hp = &m->hp;
    if (hp->arch >= MODEL_ARCH_COUNT_ || !hp->n_head || !hp->n_head_kv ||
        hp->n_head % hp->n_head_kv || !hp->head_dim || hp->n_rot > hp->head_dim || hp->n_rot % 2 ||
        !hp->n_embd || !hp->n_layer || !hp->n_vocab || !hp->n_ff) {
        fw_err(err, errlen, "%s", "unsupported hyperparameters");
        return LLORCH_EINVAL;
    }
    if (!o->max_seqs || !o->max_step_tokens || o->max_seqs > o->max_step_tokens) {
        fw_err(err, errlen, "%s", "max_seqs and max_step_tokens must be >= 1, max_seqs <= max_step_tokens");
        return LLORCH_EINVAL;
    }
    struct forward *f = calloc(1, sizeof *f);
    if (!f)
        return LLORCH_ENOMEM;
    f->m = m;
    f->hp = *hp;
    f->o = *o;
    if (fw_resolve_isa(f, o->isa, err, errlen) < 0) {
        free(f);
        return LLORCH_EUNSUPPORTED;
    }
    f->dtype = o->dtype == LLORCH_DTYPE_AUTO ? LLORCH_DTYPE_NATIVE : o->dtype;
    /* oneDNN runs an explicit f32/bf16/int8 choice where its AVX-512 kernels
     * are the measured best (large-m GEMM); everything else is ours */
    f->onednn = f->dtype != LLORCH_DTYPE_NATIVE && f->isa >= KERNELS_ISA_AVX512;
    f->kv_type = fw_kv_type(m, o);
    f->rounding = o->llama_rounding && f->dtype == LLORCH_DTYPE_F32;
    f->n_ctx = o->n_ctx ? o->n_ctx : hp->n_ctx_train;
    if (!f->n_ctx)
        f->n_ctx = 2048;
    if (hp->arch == MODEL_ARCH_GPT2 && f->n_ctx > hp->n_ctx_train)
        f->n_ctx = hp->n_ctx_train; /* learned positions end there */
    f->l0 = o->layer_first;
    f->l1 = o->layer_end ? o->layer_end : hp->n_layer;
    if (f->l0 >= f->l1 || f->l1 > hp->n_layer) {
        free(f);
        fw_err(err, errlen, "%s", "the layer range is empty or past the model's layers");
        return LLORCH_EINVAL;
    }
    f->embed = f->l0 == 0;
    f->head = f->l1 == hp->n_layer;
    f->n_workers = o->pool ? tpool_size(o->pool) : 1;
    f->n_q = (int64_t)hp->n_head * hp->head_dim;
    f->n_kv = (int64_t)hp->n_head_kv * hp->head_dim;
    f->out_cap = o->max_seqs;
    const int64_t T = o->max_step_tokens;
    const int64_t n_embd = hp->n_embd;

    int rc = 0;
    if (o->progress && !o->progress(o->progress_ctx, 0.0)) {
        fw_err(err, errlen, "%s", "loading cancelled");
        rc = LLORCH_ECANCELLED;
        goto fail;
    }
    f->work_total = fw_work_total(m, f->l0, f->l1, f->head);
    /* a stage's model (model_load_layers) has only what its range reads */
    if ((f->embed && (!m->tok_embd || (hp->arch == MODEL_ARCH_GPT2 && !m->pos_embd))) ||
        (f->head && (!m->output || !m->output_norm))) {
        fw_err(err, errlen, "%s", "the model lacks token embeddings, output or positions");
        rc = LLORCH_EFORMAT;
        goto fail;
    }
    for (uint32_t il = f->l0; il < f->l1; il++)
        if (!m->layers[il].wo || !m->layers[il].ffn_down) {
            char what[16];
            snprintf(what, sizeof what, "%u", il);
            fw_err(err, errlen, "layer %s is not in this model's file(s)", what);
            rc = LLORCH_EFORMAT;
            goto fail;
        }
    if (m->tok_embd && (rc = ggml_type_row_bytes(m->tok_embd->type, hp->n_embd, &f->tok_row_bytes)) < 0)
        goto fail;
    if (m->pos_embd && (rc = ggml_type_row_bytes(m->pos_embd->type, hp->n_embd, &f->pos_row_bytes)) < 0)
        goto fail;
    if ((m->tok_embd && (m->tok_embd->ne[0] != hp->n_embd || m->tok_embd->ne[1] < hp->n_vocab)) ||
        (m->pos_embd && (m->pos_embd->ne[0] != hp->n_embd || m->pos_embd->ne[1] < f->n_ctx))) {
        fw_err(err, errlen, "%s", "embedding shapes do not match the hyperparameters");
        rc = LLORCH_EFORMAT;
        goto fail;
    }
    f->layers = calloc(hp->n_layer, sizeof *f->layers);
    if (!f->layers) {
        rc = LLORCH_ENOMEM;
        goto fail;
    }
    for (uint32_t il = f->l0; il < f->l1; il++)
        if ((rc = fw_layer_new(f, il, err, errlen)) < 0)
            goto fail;
    if (f->head && ((rc = fw_vec(m->output_norm, hp->n_embd, &f->out_norm, err, errlen)) < 0 ||
                    (rc = fw_vec(m->output_norm_b, hp->n_embd, &f->out_norm_b, err, errlen)) < 0))
        goto fail;
    if (f->head) {
        const struct gguf_tensor *w[1] = {m->output};
        if ((rc = fw_proj_new(f, &f->output, w, NULL, 1, f->out_cap, err, errlen)) < 0)
            goto fail;
        if (f->output.n_out < hp->n_vocab || f->output.n_in != n_embd) {
            fw_err(err, errlen, "%s", "output matrix shape does not match the vocabulary");
            rc = LLORCH_EFORMAT;
            goto fail;
        }
    }
    if (m->rope_freqs && hp->rope_type != MODEL_ROPE_NONE &&
        (rc = fw_vec(m->rope_freqs, hp->n_rot / 2, &f->rope_freqs, err, errlen)) < 0)
        goto fail;
    if (hp->arch == MODEL_ARCH_GPT2) {
        f->gelu_table = malloc(KERNELS_GELU_TABLE_SIZE * sizeof *f->gelu_table);
        if (!f->gelu_table) {
            rc = LLORCH_ENOMEM;
            goto fail;
        }
        kernels_gelu_table_init(f->gelu_table);
    }

    struct kv_cache_opts ko = {
        .type = f->kv_type,
        .n_layer = f->l1 - f->l0,
        .n_head_kv = hp->n_head_kv,
        .head_dim = hp->head_dim,
        .bytes = o->kv_bytes,
        .max_seqs = o->max_seqs,
        .max_seq_len = f->n_ctx,
        .n_blocks = o->kv_blocks,
    };
    if ((rc = kv_cache_new(&f->kv, &ko)) < 0) {
        fw_err(err, errlen, "cannot create the KV cache: %s", llorch_strerror(rc));
        goto fail;
    }

    int64_t max_in = n_embd;
    for (uint32_t il = f->l0; il < f->l1; il++)
        max_in = LLORCH_MAX(max_in, f->layers[il].down.n_in);
    if (!f->onednn) {
        if (f->head)
            fw_qact_need(f, &f->output, f->out_cap);
        for (uint32_t il = f->l0; il < f->l1; il++) {
            const struct fw_layer *l = &f->layers[il];
            for (int i = 0; i < l->qkv.n_proj; i++)
                fw_qact_need(f, &l->qkv.p[i], T);
            for (int i = 0; i < l->up.n_proj; i++)
                fw_qact_need(f, &l->up.p[i], T);
            fw_qact_need(f, &l->wo, T);
            fw_qact_need(f, &l->down, T);
        }
        if ((rc = fw_alloc(&f->qact, f->qact_bytes, 1)) < 0)
            goto fail;
    }
    const int64_t up_total = f->layers[f->l0].up.total;
    if ((rc = fw_alloc((void **)&f->x, (size_t)(T * n_embd), 4)) < 0 ||
        (rc = fw_alloc((void **)&f->xn, (size_t)(T * n_embd), 4)) < 0 ||
        (rc = fw_alloc((void **)&f->xr, (size_t)(T * max_in), 4)) < 0 ||
        (rc = fw_alloc((void **)&f->qkv, (size_t)(T * (f->n_q + 2 * f->n_kv)), 4)) < 0 ||
        (rc = fw_alloc((void **)&f->att, (size_t)(T * f->n_q), 4)) < 0 ||
        (rc = fw_alloc((void **)&f->proj, (size_t)(T * n_embd), 4)) < 0 ||
        (rc = fw_alloc((void **)&f->ffn, (size_t)(T * up_total), 4)) < 0 ||
        (rc = fw_alloc((void **)&f->act, (size_t)(T * hp->n_ff), 4)) < 0 ||
        (rc = fw_alloc((void **)&f->rope, (size_t)(T * LLORCH_MAX(hp->n_rot, 2u)), 4)) < 0 ||
        (rc = fw_alloc((void **)&f->scores,
                       (size_t)f->n_workers * 2 * (hp->n_head / hp->n_head_kv) * f->n_ctx, 4)) < 0 ||
        (rc = fw_alloc((void **)&f->xo, (size_t)f->out_cap * n_embd, 4)) < 0 ||
        (rc = fw_alloc((void **)&f->lo, (size_t)f->out_cap * (size_t)LLORCH_MAX(f->output.n_out, 1),
                       4)) < 0 ||
        (rc = fw_alloc((void **)&f->tok_entry, (size_t)T, 4)) < 0 ||
        (rc = fw_alloc((void **)&f->tok_pos, (size_t)T, 4)) < 0 ||
        (rc = fw_alloc((void **)&f->ent_start, o->max_seqs, 4)) < 0 ||
        (rc = fw_alloc((void **)&f->ent_task, (size_t)o->max_seqs + 1, 8)) < 0 ||
        (rc = fw_alloc((void **)&f->out_src, (size_t)T, 4)) < 0 ||
        (rc = fw_alloc((void **)&f->out_dst, (size_t)T, sizeof(float *))) < 0)
        goto fail;
    for (uint32_t il = f->l0; il < f->l1; il++)
        if (f->layers[il].up.total != up_total) {
            fw_err(err, errlen, "%s", "layers with different feed-forward widths");
            rc = LLORCH_EFORMAT;
            goto fail;
        }
    if (o->progress)
        (void)o->progress(o->progress_ctx, 1.0);
    *out = f;
    return 0;
fail:
    if (errlen && !err[0])
        fw_err(err, errlen, "cannot set up the forward pass: %s", llorch_strerror(rc));
    forward_free(f);
    return rc;
}

LLORCH_API void forward_free(struct forward *f)
{
    if (!f)
        return;
    if (f->layers) {
        for (uint32_t il = 0; il < f->hp.n_layer; il++) {
            struct fw_layer *l = &f->layers[il];
            free(l->attn_norm);
            free(l->attn_norm_b);
            free(l->ffn_norm);
            free(l->ffn_norm_b);
            fw_group_free(&l->qkv);
            fw_proj_free(&l->wo);
            fw_group_free(&l->up);
            fw_proj_free(&l->down);
        }
        free(f->layers);
    }
    fw_proj_free(&f->output);
    free(f->out_norm);
    free(f->out_norm_b);
    free(f->rope_freqs);
    free(f->gelu_table);
    kv_cache_free(f->kv);
    free(f->qact);
    free(f->x);
    free(f->xn);
    free(f->xr);
    free(f->qkv);
    free(f->att);
    free(f->proj);
    free(f->ffn);
    free(f->act);
    free(f->rope);
    free(f->scores);
    free(f->xo);
    free(f->lo);
    free(f->tok_entry);
    free(f->tok_pos);
    free(f->ent_start);
    free(f->ent_task);
    free(f->out_src);
    free(f->out_dst);
    free(f);
}

/* ---- step -------------------------------------------------------------- */

struct fw_step {
    struct forward_entry *e;
    const float *hidden_in; /* [n_tok, n_embd] residual stream from the previous stage, or NULL */
    uint32_t n_entries;
    int64_t n_tok;
    uint32_t layer;
    float *q, *k, *v;
    int64_t qs, ks, vs;
    struct kv_layer_view lv;
    float *gate, *up;
    int64_t gs, us;
    int rc;
};

static void fw_embed_rows(struct forward *f, void *arg, int64_t begin, int64_t end, int worker)
{
    LLORCH_UNUSED(worker);
    struct fw_step *s = arg;
    const int64_t n_embd = f->hp.n_embd;
    for (int64_t r = begin; r < end; r++) {
        const struct forward_entry *e = &s->e[f->tok_entry[r]];
        const llorch_token tok = e->tokens[r - f->ent_start[f->tok_entry[r]]];
        const struct gguf_tensor *te = f->m->tok_embd;
        float *x = f->x + r * n_embd;
        if (s->hidden_in) {
            memcpy(x, s->hidden_in + r * n_embd, (size_t)n_embd * sizeof *x);
        } else {
            quant_dequantize(te->type, (const uint8_t *)te->data + (uint64_t)tok * f->tok_row_bytes,
                             x, (uint64_t)n_embd);
        }
        if (f->m->pos_embd && !s->hidden_in) {
            const struct gguf_tensor *pe = f->m->pos_embd;
            float *p = f->proj + r * n_embd;
            quant_dequantize(pe->type, (const uint8_t *)pe->data + (uint64_t)f->tok_pos[r] * f->pos_row_bytes,
                             p, (uint64_t)n_embd);
            f->k->add(x, p, n_embd);
        }
        if (f->hp.rope_type != MODEL_ROPE_NONE)
            kernels_rope_cache(f->rope + r * f->hp.n_rot, f->tok_pos[r], f->hp.n_rot,
                               f->hp.rope_freq_base, f->hp.rope_freq_scale, f->rope_freqs);
    }
}

/* RoPE on q and k of each row, phi3's q scaling, then K/V into the cache. */
static void fw_rope_store_rows(struct forward *f, void *arg, int64_t begin, int64_t end, int worker)
{
    LLORCH_UNUSED(worker);
    struct fw_step *s = arg;
    const struct model_hparams *hp = &f->hp;
    for (int64_t r = begin; r < end; r++) {
        float *q = s->q + r * s->qs, *k = s->k + r * s->ks, *v = s->v + r * s->vs;
        if (hp->rope_type != MODEL_ROPE_NONE) {
            const enum kernels_rope_mode mode =
                hp->rope_type == MODEL_ROPE_NEOX ? KERNELS_ROPE_NEOX : KERNELS_ROPE_NORM;
            const float *cs = f->rope + r * hp->n_rot;
            kernels_rope(q, hp->n_head, hp->head_dim, hp->n_rot, cs, mode);
            kernels_rope(k, hp->n_head_kv, hp->head_dim, hp->n_rot, cs, mode);
        }
        if (hp->arch == MODEL_ARCH_PHI3)
            f->k->scale(q, 1.0f / sqrtf((float)hp->head_dim), f->n_q);
        const struct forward_entry *e = &s->e[f->tok_entry[r]];
        kv_seq_store(f->kv, e->seq, s->layer - f->l0, f->tok_pos[r], k, v);
    }
}

/* Tasks: (entry, chunk of FW_ATTN_ROWS query rows, K/V head), entry-major,
 * K/V head minor; each runs every query head of the K/V head's GQA group, so
 * each K/V row is read once per group. Chunking only splits the query rows
 * of a long prefill over the workers: every row's result is the same
 * whichever task computes it. */
#define FW_ATTN_ROWS 16

static void fw_attn_tasks(struct forward *f, void *arg, int64_t begin, int64_t end, int worker)
{
    struct fw_step *s = arg;
    const struct model_hparams *hp = &f->hp;
    const uint32_t group = hp->n_head / hp->n_head_kv;
    const float scale = hp->arch == MODEL_ARCH_PHI3 ? 1.0f : 1.0f / sqrtf((float)hp->head_dim);
    uint32_t ei = 0;
    for (int64_t task = begin; task < end; task++) {
        /* entry of this task: ent_task[ei] <= task < ent_task[ei + 1] */
        while (f->ent_task[ei + 1] <= (uint64_t)task)
            ei++;
        const uint64_t local = (uint64_t)task - f->ent_task[ei];
        const uint32_t g = (uint32_t)(local % hp->n_head_kv);
        const uint32_t chunk = (uint32_t)(local / hp->n_head_kv);
        const uint32_t h = g * group;
        const struct forward_entry *e = &s->e[ei];
        const uint32_t t0 = chunk * FW_ATTN_ROWS;
        const int64_t row0 = f->ent_start[ei] + t0;
        struct kernels_kv_view kv = {
            .k = s->lv.k + (size_t)g * s->lv.head_stride,
            .v = s->lv.v + (size_t)g * s->lv.head_stride,
            .block_stride = s->lv.block_stride,
            .row_bytes = s->lv.row_bytes,
            .block = LLORCH_KV_BLOCK,
            .type = s->lv.type,
            .blocks = kv_seq_blocks(e->seq),
        };
        struct kernels_attn a = {
            .q = s->q + row0 * s->qs + (int64_t)h * hp->head_dim,
            .q_stride = s->qs,
            .out = f->att + row0 * f->n_q + (int64_t)h * hp->head_dim,
            .out_stride = f->n_q,
            .n_q = LLORCH_MIN(FW_ATTN_ROWS, e->n_tokens - t0),
            .pos0 = f->tok_pos[row0],
            .head_dim = hp->head_dim,
            .scale = scale,
            .kv = &kv,
            .scores = f->scores + (size_t)worker * 2 * group * f->n_ctx,
            .n_head = group,
        };
        kernels_attention(f->k, &a);
    }
}

static void fw_ffn_act_rows(struct forward *f, void *arg, int64_t begin, int64_t end, int worker)
{
    LLORCH_UNUSED(worker);
    struct fw_step *s = arg;
    const int64_t n_ff = f->hp.n_ff;
    for (int64_t r = begin; r < end; r++) {
        float *y = f->act + r * n_ff;
        if (f->hp.arch == MODEL_ARCH_GPT2)
            kernels_gelu(y, s->up + r * s->us, n_ff, f->gelu_table);
        else
            f->k->swiglu(y, s->gate + r * s->gs, s->up + r * s->us, n_ff);
    }
}

static void fw_residual_rows(struct forward *f, void *arg, int64_t begin, int64_t end, int worker)
{
    LLORCH_UNUSED(worker);
    LLORCH_UNUSED(arg);
    const int64_t n = f->hp.n_embd;
    for (int64_t r = begin; r < end; r++)
        f->k->add(f->x + r * n, f->proj + r * n, n);
}

static int fw_layer_run(struct forward *f, struct fw_step *s, uint32_t il)
{
    const struct fw_layer *l = &f->layers[il];
    const int64_t T = s->n_tok;
    int rc;
    s->layer = il;

    /* attention: xn = norm(x); q|k|v = xn Wqkv^T (+ b) */
    fw_norm(f, f->x, f->xn, l->attn_norm, l->attn_norm_b, T, NULL);
    float *parts[3];
    int64_t strides[3];
    if ((rc = fw_group_run(f, &l->qkv, f->xn, T, f->qkv, parts, strides)) < 0)
        return rc;
    s->q = parts[0], s->k = parts[1], s->v = parts[2];
    s->qs = strides[0], s->ks = strides[1], s->vs = strides[2];
    kv_cache_layer(f->kv, il - f->l0, &s->lv);
    fw_parallel(f, T, 4, fw_rope_store_rows, s);
    fw_parallel(f, (int64_t)f->ent_task[s->n_entries], 1, fw_attn_tasks, s);
    /* x += att Wo^T (+ bo) */
    if ((rc = fw_proj_run(f, &l->wo, f->att, f->proj, T)) < 0)
        return rc;
    fw_parallel(f, T, 8, fw_residual_rows, NULL);

    /* feed-forward: x += act(xn W_up^T) W_down^T */
    fw_norm(f, f->x, f->xn, l->ffn_norm, l->ffn_norm_b, T, NULL);
    if ((rc = fw_group_run(f, &l->up, f->xn, T, f->ffn, parts, strides)) < 0)
        return rc;
    if (l->up.n_part == 2) {
        s->gate = parts[0], s->up = parts[1];
        s->gs = strides[0], s->us = strides[1];
    } else {
        s->gate = NULL, s->up = parts[0];
        s->gs = 0, s->us = strides[0];
    }
    fw_parallel(f, T, 4, fw_ffn_act_rows, s);
    if ((rc = fw_proj_run(f, &l->down, f->act, f->proj, T)) < 0)
        return rc;
    fw_parallel(f, T, 8, fw_residual_rows, NULL);
    return 0;
}

/* Final norm and the output matrix for the rows that need logits, out_cap
 * rows per matmul. */
static int fw_logits(struct forward *f, uint32_t n_out)
{
    const uint32_t n_vocab = f->hp.n_vocab;
    const int64_t ld = f->output.n_out;
    for (uint32_t r0 = 0; r0 < n_out; r0 += f->out_cap) {
        const uint32_t cnt = LLORCH_MIN(f->out_cap, n_out - r0);
        fw_norm(f, f->x, f->xo, f->out_norm, f->out_norm_b, cnt, f->out_src + r0);
        int rc = fw_proj_run(f, &f->output, f->xo, f->lo, cnt);
        if (rc < 0)
            return rc;
        for (uint32_t r = 0; r < cnt; r++)
            memcpy(f->out_dst[r0 + r], f->lo + (int64_t)r * ld, (size_t)n_vocab * sizeof(float));
    }
    return 0;
}

LLORCH_API int forward_step(struct forward *f, struct forward_entry *entries, uint32_t n)
{
    return forward_step_hidden(f, entries, n, NULL, NULL);
}

LLORCH_API int forward_step_hidden(struct forward *f, struct forward_entry *entries, uint32_t n,
                                   const float *hidden_in, float *hidden_out)
{
    if (n == 0)
        return 0;
    if (n > f->o.max_seqs || (!hidden_in && !f->embed) || (!hidden_out && !f->head))
        return LLORCH_EINVAL;
    /* validate everything before touching any state */
    int64_t T = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct forward_entry *e = &entries[i];
        if (!e->seq || !e->tokens || !e->n_tokens || (!hidden_out && !e->logits))
            return LLORCH_EINVAL;
        for (uint32_t j = 0; j < i; j++)
            if (entries[j].seq == e->seq)
                return LLORCH_EINVAL;
        const uint64_t end = (uint64_t)kv_seq_len(e->seq) + e->n_tokens;
        if (end > f->n_ctx)
            return LLORCH_ERANGE;
        if (end > kv_seq_capacity(e->seq))
            return LLORCH_EKV_EXHAUSTED;
        for (uint32_t t = 0; t < e->n_tokens; t++)
            if (e->tokens[t] < 0 || (uint32_t)e->tokens[t] >= f->hp.n_vocab)
                return LLORCH_ERANGE;
        T += e->n_tokens;
        if (T > f->o.max_step_tokens)
            return LLORCH_EINVAL;
    }
    /* row metadata: rows of entry i are [ent_start[i], ent_start[i] + n_tokens) */
    uint32_t row = 0, n_out = 0;
    f->ent_task[0] = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct forward_entry *e = &entries[i];
        const uint32_t len = kv_seq_len(e->seq);
        f->ent_start[i] = row;
        f->ent_task[i + 1] = f->ent_task[i] +
                             (uint64_t)((e->n_tokens - 1) / FW_ATTN_ROWS + 1) * f->hp.n_head_kv;
        for (uint32_t t = 0; t < e->n_tokens; t++) {
            f->tok_entry[row + t] = i;
            f->tok_pos[row + t] = len + t;
            if (!hidden_out && (e->all_logits || t == e->n_tokens - 1)) {
                f->out_src[n_out] = row + t;
                f->out_dst[n_out] = e->logits + (e->all_logits ? (size_t)t * f->hp.n_vocab : 0);
                n_out++;
            }
        }
        row += e->n_tokens;
    }

    struct fw_step s = {.e = entries, .hidden_in = hidden_in, .n_entries = n, .n_tok = T};
    fw_parallel(f, T, 8, fw_embed_rows, &s);
    int rc = 0;
    for (uint32_t il = f->l0; il < f->l1 && rc == 0; il++)
        rc = fw_layer_run(f, &s, il);
    if (rc == 0 && hidden_out)
        memcpy(hidden_out, f->x, (size_t)T * f->hp.n_embd * sizeof *hidden_out);
    else if (rc == 0)
        rc = fw_logits(f, n_out);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < n; i++)
        kv_seq_commit(f->kv, entries[i].seq, entries[i].tokens, entries[i].n_tokens);
    return 0;
}

/* ---- accessors --------------------------------------------------------- */

LLORCH_API struct kv_cache *forward_kv(struct forward *f)
{
    return f->kv;
}

LLORCH_API enum llorch_dtype forward_dtype(const struct forward *f)
{
    return f->dtype;
}

LLORCH_API enum llorch_kv_type forward_kv_type(const struct forward *f)
{
    return f->kv_type;
}

LLORCH_API uint32_t forward_n_vocab(const struct forward *f)
{
    return f->hp.n_vocab;
}

LLORCH_API uint32_t forward_n_ctx(const struct forward *f)
{
    return f->n_ctx;
}

LLORCH_API uint64_t forward_weight_bytes(const struct forward *f)
{
    return f->weight_bytes;
}

LLORCH_API enum kernels_isa forward_isa(const struct forward *f)
{
    return f->isa;
}

LLORCH_API const char *forward_isa_name(const struct forward *f)
{
    return kernels_isa_name(f->isa);
}

LLORCH_API const char *forward_matmul_backend(const struct forward *f)
{
    return f->onednn ? "onednn" : "llorch";
}

LLORCH_API const char *forward_dtype_name(enum llorch_dtype d)
{
    switch (d) {
    case LLORCH_DTYPE_AUTO:
        return "auto";
    case LLORCH_DTYPE_F32:
        return "f32";
    case LLORCH_DTYPE_BF16:
        return "bf16";
    case LLORCH_DTYPE_INT8:
        return "int8";
    case LLORCH_DTYPE_NATIVE:
        return "native";
    default:
        return "unknown";
    }
}

LLORCH_API const char *forward_kv_type_name(enum llorch_kv_type t)
{
    switch (t) {
    case LLORCH_KV_AUTO:
        return "auto";
    case LLORCH_KV_F32:
        return "f32";
    case LLORCH_KV_F16:
        return "f16";
    case LLORCH_KV_BF16:
        return "bf16";
    default:
        return "unknown";
    }
}
