/* A loaded GGUF model: architecture, hyperparameters, and the tensors of
 * each role, shape-checked against the hyperparameters. Weights stay in the
 * read-only mapping; packing for compute is the engine's job (forward.c). */
#ifndef LLORCH_MODEL_H
#define LLORCH_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

enum model_arch {
    MODEL_ARCH_GPT2,
    MODEL_ARCH_LLAMA,
    MODEL_ARCH_QWEN2,
    MODEL_ARCH_PHI3,
    MODEL_ARCH_COUNT_,
};

enum model_rope_type {
    MODEL_ROPE_NONE,  /* gpt2: learned positions */
    MODEL_ROPE_NORM,  /* llama: adjacent pairs (2i, 2i+1) */
    MODEL_ROPE_NEOX,  /* qwen2, phi3: halves (i, i + n_rot/2) */
};

struct model_hparams {
    enum model_arch arch;
    uint32_t n_vocab;       /* rows of token_embd */
    uint32_t n_ctx_train;
    uint32_t n_embd;
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t head_dim;      /* n_embd / n_head unless the file says otherwise */
    uint32_t n_ff;
    uint32_t n_rot;         /* rope.dimension_count, default head_dim */
    float rope_freq_base;   /* default 10000 */
    float rope_freq_scale; /* 1 / rope.scaling.factor for linear scaling, default 1 */
    enum model_rope_type rope_type;
    float norm_eps;         /* layer_norm_epsilon (gpt2) or layer_norm_rms_epsilon */
    uint32_t file_type;     /* general.file_type, or UINT32_MAX when absent */
};

/* Tensors of one block; NULL where the architecture has none. */
struct model_layer {
    const struct gguf_tensor *attn_norm, *attn_norm_b;
    const struct gguf_tensor *wq, *wk, *wv, *bq, *bk, *bv; /* separate (llama, qwen2) */
    const struct gguf_tensor *wqkv, *bqkv;                 /* fused (gpt2, phi3) */
    const struct gguf_tensor *wo, *bo;
    const struct gguf_tensor *ffn_norm, *ffn_norm_b;
    const struct gguf_tensor *ffn_gate;                    /* llama, qwen2 */
    const struct gguf_tensor *ffn_up, *ffn_up_b;           /* phi3: [gate | up], 2*n_ff rows */
    const struct gguf_tensor *ffn_down, *ffn_down_b;
};

struct model {
    struct gguf_file *file;
    struct model_hparams hp;
    bool vocab_only;                       /* no tensors: tokenizer use only */
    char name[128];                        /* general.name, or the file stem */
    const struct gguf_tensor *tok_embd;    /* [n_embd, n_vocab] in ggml ne order */
    const struct gguf_tensor *pos_embd;    /* gpt2 */
    const struct gguf_tensor *output_norm, *output_norm_b;
    const struct gguf_tensor *output;      /* == tok_embd when tied */
    bool output_tied;
    const struct gguf_tensor *rope_freqs;  /* llama3 per-dimension factors, n_rot/2, or NULL */
    struct model_layer *layers;            /* n_layer entries */
    /* model_load_layers: only layers [part_first, part_end) are checked and
     * present, the embedding, output norm and head only where in the file */
    bool partial;
    uint32_t part_first, part_end;
};

/* Loads and checks a model. A file without tensors loads as vocab_only (only
 * general.architecture is required then). Errors name the key or tensor. */
int model_load(struct model **out, const char *path, char *err, size_t errlen);
/* Same over an already opened file; the model takes ownership of f. */
int model_load_gguf(struct model **out, struct gguf_file *f, const char *path, char *err,
                    size_t errlen);
/* A pipeline stage's share: of a split model only the parts holding layers
 * [first, end) (and the head when end is n_layer) are mapped, besides the
 * first part's metadata; a later part opens alone (a stage's own file). The
 * tensors outside the share may be absent (NULL); a forward engine over
 * another range fails naming what is missing. */
int model_load_layers(struct model **out, const char *path, uint32_t first, uint32_t end,
                      char *err, size_t errlen);
void model_free(struct model *m); /* NULL is safe; closes the file */

const char *model_arch_name(enum model_arch a);
/* "gpt2, llama, qwen2, phi3" */
const char *model_supported_archs(void);

/* Total bytes of the tensors, for memory accounting. */
uint64_t model_weight_bytes(const struct model *m);

#endif
