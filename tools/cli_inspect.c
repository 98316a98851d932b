/* llorch-cli inspect MODEL [--json] [--tensors]: what a GGUF file holds —
 * architecture, hyperparameters, tokenizer (kind, pre-tokenizer, size,
 * special ids, end-of-generation set), file type, tensor bytes by type and,
 * with --tensors, the tensor table. Vocab-only files print what they have. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "gguf_keys.h"
#include "llorch/error.h"
#include "model.h"
#include "quant.h"
#include "tokenizer.h"

#define MAX_EOG 32
#define N_TYPES 64 /* ggml type numbers are below this */

struct tok_info {
    char model[64], pre[64];
    uint64_t n_tokens;
    int64_t bos, eos, unk, pad, eot, eom;
    int64_t eog[MAX_EOG];
    int n_eog;
    char tok_err[256]; /* why the vocabulary is not a usable tokenizer, or empty */
};

struct type_stat {
    uint64_t count, bytes;
};

static void str_copy(char *out, size_t n, struct gguf_str s)
{
    size_t k = s.len < n - 1 ? (size_t)s.len : n - 1;
    memcpy(out, s.ptr, k);
    out[k] = 0;
}

static int64_t special_id(const struct gguf_file *f, const char *key, uint64_t n_tokens)
{
    uint32_t v;
    if (gguf_get_u32(f, key, &v) || v >= n_tokens)
        return -1;
    return v;
}

static void eog_add(struct tok_info *ti, int64_t id)
{
    if (id < 0)
        return;
    for (int i = 0; i < ti->n_eog; i++)
        if (ti->eog[i] == id)
            return;
    if (ti->n_eog < MAX_EOG)
        ti->eog[ti->n_eog++] = id;
}

/* The end-of-generation set is the tokenizer's (the one generation stops
 * on); when the vocabulary cannot be loaded as a tokenizer, only the ids the
 * keys name are shown. */
static void derive_eog(const struct gguf_file *f, struct tok_info *ti)
{
    struct tokenizer *tok = NULL;
    if (tokenizer_new(&tok, f, ti->tok_err, sizeof ti->tok_err) == 0) {
        const llorch_token *ids;
        size_t n = tokenizer_eog_ids(tok, &ids);
        for (size_t i = 0; i < n; i++)
            eog_add(ti, ids[i]);
        tokenizer_free(tok);
    }
    eog_add(ti, ti->eos);
    eog_add(ti, ti->eot);
    eog_add(ti, ti->eom);
    /* sorted, for stable output */
    for (int i = 1; i < ti->n_eog; i++)
        for (int j = i; j > 0 && ti->eog[j - 1] > ti->eog[j]; j--) {
            int64_t t = ti->eog[j];
            ti->eog[j] = ti->eog[j - 1];
            ti->eog[j - 1] = t;
        }
}

static void read_tok_info(const struct gguf_file *f, struct tok_info *ti)
{
    memset(ti, 0, sizeof *ti);
    struct gguf_str s;
    strcpy(ti->model, "none");
    strcpy(ti->pre, "default");
    if (!gguf_get_str(f, LLORCH_GGUF_KEY_TOK_MODEL, &s))
        str_copy(ti->model, sizeof ti->model, s);
    if (!gguf_get_str(f, LLORCH_GGUF_KEY_TOK_PRE, &s))
        str_copy(ti->pre, sizeof ti->pre, s);
    struct gguf_arr toks;
    bool has = !gguf_get_arr(f, LLORCH_GGUF_KEY_TOK_TOKENS, &toks) && toks.type == GGUF_TYPE_STRING;
    ti->n_tokens = has ? toks.count : 0;
    ti->bos = special_id(f, LLORCH_GGUF_KEY_TOK_BOS_ID, ti->n_tokens);
    ti->eos = special_id(f, LLORCH_GGUF_KEY_TOK_EOS_ID, ti->n_tokens);
    ti->unk = special_id(f, LLORCH_GGUF_KEY_TOK_UNK_ID, ti->n_tokens);
    ti->pad = special_id(f, LLORCH_GGUF_KEY_TOK_PAD_ID, ti->n_tokens);
    ti->eot = special_id(f, LLORCH_GGUF_KEY_TOK_EOT_ID, ti->n_tokens);
    ti->eom = special_id(f, LLORCH_GGUF_KEY_TOK_EOM_ID, ti->n_tokens);
    if (has)
        derive_eog(f, ti);
}

static const char *file_type_name(uint32_t ft)
{
    switch (ft) {
    case 0: return "F32";
    case 1: return "F16";
    case 2: return "Q4_0";
    case 3: return "Q4_1";
    case 7: return "Q8_0";
    case 8: return "Q5_0";
    case 9: return "Q5_1";
    case 10: return "Q2_K";
    case 11: return "Q3_K_S";
    case 12: return "Q3_K_M";
    case 13: return "Q3_K_L";
    case 14: return "Q4_K_S";
    case 15: return "Q4_K_M";
    case 16: return "Q5_K_S";
    case 17: return "Q5_K_M";
    case 18: return "Q6_K";
    case 32: return "BF16";
    case UINT32_MAX: return "unknown";
    default: return "other";
    }
}

static const char *rope_name(enum model_rope_type r)
{
    return r == MODEL_ROPE_NORM ? "norm" : r == MODEL_ROPE_NEOX ? "neox" : "none";
}

static void token_text(const struct gguf_file *f, int64_t id, char *out, size_t n)
{
    struct gguf_arr toks;
    struct gguf_str s;
    out[0] = 0;
    if (id < 0 || gguf_get_arr(f, LLORCH_GGUF_KEY_TOK_TOKENS, &toks) ||
        gguf_arr_str(f, &toks, (uint64_t)id, &s))
        return;
    str_copy(out, n, s);
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = '?';
}

static json_t *json_id(int64_t id)
{
    return id < 0 ? json_null() : json_integer(id);
}

static void shape_text(const struct gguf_tensor *t, char *out, size_t n)
{
    size_t at = 0;
    for (uint32_t d = 0; d < t->n_dims && at < n; d++)
        at += (size_t)snprintf(out + at, n - at, "%s%llu", d ? " x " : "",
                               (unsigned long long)t->ne[d]);
}

static int print_json(const char *path, const struct model *m, const struct tok_info *ti,
                      const struct type_stat *stats, uint64_t total, bool tensors)
{
    const struct gguf_file *f = m->file;
    const struct model_hparams *hp = &m->hp;
    json_t *o = json_object();
    json_object_set_new(o, "file", json_string(path));
    json_object_set_new(o, "gguf_version", json_integer(gguf_version(f)));
    json_object_set_new(o, "arch", json_string(model_arch_name(hp->arch)));
    json_object_set_new(o, "name", json_string(m->name));
    json_object_set_new(o, "vocab_only", json_boolean(m->vocab_only));
    json_object_set_new(o, "n_vocab", json_integer(hp->n_vocab));
    json_object_set_new(o, "n_ctx_train", json_integer(hp->n_ctx_train));
    json_object_set_new(o, "n_embd", json_integer(hp->n_embd));
    json_object_set_new(o, "n_layer", json_integer(hp->n_layer));
    json_object_set_new(o, "n_head", json_integer(hp->n_head));
    json_object_set_new(o, "n_head_kv", json_integer(hp->n_head_kv));
    json_object_set_new(o, "head_dim", json_integer(hp->head_dim));
    json_object_set_new(o, "n_ff", json_integer(hp->n_ff));
    json_object_set_new(o, "n_rot", json_integer(hp->n_rot));
    json_object_set_new(o, "rope_type", json_string(rope_name(hp->rope_type)));
    json_object_set_new(o, "rope_freq_base", json_real(hp->rope_freq_base));
    json_object_set_new(o, "rope_freq_scale", json_real(hp->rope_freq_scale));
    json_object_set_new(o, "rope_freqs", json_boolean(m->rope_freqs != NULL));
    json_object_set_new(o, "norm_eps", json_real(hp->norm_eps));
    json_object_set_new(o, "output_tied", json_boolean(m->output_tied));
    json_object_set_new(o, "file_type", hp->file_type == UINT32_MAX ? json_null()
                                                                     : json_integer(hp->file_type));
    json_object_set_new(o, "file_type_name", json_string(file_type_name(hp->file_type)));
    json_object_set_new(o, "tokenizer", json_string(ti->model));
    json_object_set_new(o, "tokenizer_pre", json_string(ti->pre));
    json_object_set_new(o, "n_tokens", json_integer((json_int_t)ti->n_tokens));
    json_t *sp = json_object();
    json_object_set_new(sp, "bos", json_id(ti->bos));
    json_object_set_new(sp, "eos", json_id(ti->eos));
    json_object_set_new(sp, "unk", json_id(ti->unk));
    json_object_set_new(sp, "pad", json_id(ti->pad));
    json_object_set_new(sp, "eot", json_id(ti->eot));
    json_object_set_new(sp, "eom", json_id(ti->eom));
    json_object_set_new(o, "special", sp);
    json_t *eog = json_array();
    for (int i = 0; i < ti->n_eog; i++)
        json_array_append_new(eog, json_integer(ti->eog[i]));
    json_object_set_new(o, "eog", eog);
    if (ti->tok_err[0])
        json_object_set_new(o, "tokenizer_error", json_string(ti->tok_err));
    json_object_set_new(o, "n_tensors", json_integer((json_int_t)gguf_tensor_count(f)));
    json_object_set_new(o, "bytes", json_integer((json_int_t)total));
    json_t *bt = json_object();
    for (int t = 0; t < N_TYPES; t++) {
        if (!stats[t].count)
            continue;
        json_t *e = json_object();
        json_object_set_new(e, "count", json_integer((json_int_t)stats[t].count));
        json_object_set_new(e, "bytes", json_integer((json_int_t)stats[t].bytes));
        json_object_set_new(bt, ggml_type_name((enum ggml_type)t), e);
    }
    json_object_set_new(o, "bytes_by_type", bt);
    if (tensors) {
        json_t *arr = json_array();
        for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
            const struct gguf_tensor *t = gguf_tensor_at(f, i);
            json_t *e = json_object(), *ne = json_array();
            json_object_set_new(e, "name", json_stringn(t->name.ptr, (size_t)t->name.len));
            json_object_set_new(e, "type", json_string(ggml_type_name(t->type)));
            for (uint32_t d = 0; d < t->n_dims; d++)
                json_array_append_new(ne, json_integer((json_int_t)t->ne[d]));
            json_object_set_new(e, "ne", ne);
            json_object_set_new(e, "bytes", json_integer((json_int_t)t->nbytes));
            json_object_set_new(e, "offset", json_integer((json_int_t)t->offset));
            json_array_append_new(arr, e);
        }
        json_object_set_new(o, "tensors", arr);
    }
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(7));
    json_decref(o);
    if (!s)
        return 1;
    printf("%s\n", s);
    free(s);
    return 0;
}

static void print_text(const char *path, const struct model *m, const struct tok_info *ti,
                       const struct type_stat *stats, uint64_t total, bool tensors)
{
    const struct gguf_file *f = m->file;
    const struct model_hparams *hp = &m->hp;
    printf("file:          %s (GGUF v%u, %llu bytes, alignment %llu, %llu keys)\n", path,
           gguf_version(f), (unsigned long long)gguf_file_size(f),
           (unsigned long long)gguf_alignment(f), (unsigned long long)gguf_kv_count(f));
    printf("name:          %s\n", m->name);
    printf("arch:          %s%s\n", model_arch_name(hp->arch),
           m->vocab_only ? " (vocab only: no weights)" : "");
    if (!m->vocab_only) {
        printf("n_vocab:       %u\n", hp->n_vocab);
        printf("n_ctx_train:   %u\n", hp->n_ctx_train);
        printf("n_embd:        %u\n", hp->n_embd);
        printf("n_layer:       %u\n", hp->n_layer);
        printf("n_head:        %u (kv %u, head_dim %u)\n", hp->n_head, hp->n_head_kv, hp->head_dim);
        printf("n_ff:          %u\n", hp->n_ff);
        printf("rope:          %s, n_rot %u, freq_base %g, freq_scale %g%s\n",
               rope_name(hp->rope_type), hp->n_rot, (double)hp->rope_freq_base,
               (double)hp->rope_freq_scale, m->rope_freqs ? ", rope_freqs factors" : "");
        printf("norm_eps:      %g\n", (double)hp->norm_eps);
        printf("output:        %s\n", m->output_tied ? "tied to token_embd" : "output.weight");
        printf("file_type:     %s\n", file_type_name(hp->file_type));
    }
    printf("tokenizer:     %s (pre %s), %llu tokens\n", ti->model, ti->pre,
           (unsigned long long)ti->n_tokens);
    const struct {
        const char *name;
        int64_t id;
    } sp[] = {{"bos", ti->bos}, {"eos", ti->eos}, {"unk", ti->unk},
              {"pad", ti->pad}, {"eot", ti->eot}, {"eom", ti->eom}};
    printf("special:      ");
    for (size_t i = 0; i < sizeof sp / sizeof sp[0]; i++) {
        char txt[64];
        if (sp[i].id < 0)
            continue;
        token_text(f, sp[i].id, txt, sizeof txt);
        printf(" %s %lld '%s'", sp[i].name, (long long)sp[i].id, txt);
    }
    printf("\neog:          ");
    for (int i = 0; i < ti->n_eog; i++) {
        char txt[64];
        token_text(f, ti->eog[i], txt, sizeof txt);
        printf(" %lld '%s'", (long long)ti->eog[i], txt);
    }
    if (ti->tok_err[0])
        printf("\ntokenizer:     not usable: %s", ti->tok_err);
    printf("\ntensors:       %llu, %llu bytes", (unsigned long long)gguf_tensor_count(f),
           (unsigned long long)total);
    for (int t = 0; t < N_TYPES; t++)
        if (stats[t].count)
            printf("; %s %llu (%llu bytes)", ggml_type_name((enum ggml_type)t),
                   (unsigned long long)stats[t].count, (unsigned long long)stats[t].bytes);
    printf("\n");
    if (tensors) {
        printf("\n%-36s %-6s %-20s %12s %12s\n", "name", "type", "shape", "bytes", "offset");
        for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
            const struct gguf_tensor *t = gguf_tensor_at(f, i);
            char shape[96];
            shape_text(t, shape, sizeof shape);
            printf("%-36.*s %-6s %-20s %12llu %12llu\n", (int)t->name.len, t->name.ptr,
                   ggml_type_name(t->type), shape, (unsigned long long)t->nbytes,
                   (unsigned long long)t->offset);
        }
    }
}

int cli_inspect_main(int argc, char **argv)
{
    const char *path = NULL;
    bool json = false, tensors = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--tensors")) {
            tensors = true;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: llorch-cli inspect MODEL [--json] [--tensors]\n");
            return 0;
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "llorch-cli inspect: unexpected argument '%s'\n", argv[i]);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        fprintf(stderr, "usage: llorch-cli inspect MODEL [--json] [--tensors]\n");
        return 2;
    }
    char err[512];
    struct model *m;
    if (model_load(&m, path, err, sizeof err)) {
        fprintf(stderr, "llorch-cli inspect: %s\n", err);
        return 1;
    }
    struct tok_info ti;
    read_tok_info(m->file, &ti);
    struct type_stat stats[N_TYPES];
    memset(stats, 0, sizeof stats);
    uint64_t total = 0;
    for (uint64_t i = 0; i < gguf_tensor_count(m->file); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(m->file, i);
        if ((unsigned)t->type < N_TYPES) {
            stats[t->type].count++;
            stats[t->type].bytes += t->nbytes;
        }
        total += t->nbytes;
    }
    int rc = 0;
    if (json)
        rc = print_json(path, m, &ti, stats, total, tensors);
    else
        print_text(path, m, &ti, stats, total, tensors);
    model_free(m);
    if (fflush(stdout)) {
        fprintf(stderr, "llorch-cli inspect: write error\n");
        return 1;
    }
    return rc;
}
