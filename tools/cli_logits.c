/* llorch-cli logits: runs the forward pass on a prompt (one batch), then one
 * token per step (argmax, or the tokens given with --force), and prints JSON
 * in the schema of the llama.cpp reference files (shared/reference/): prompt_tokens, greedy_tokens,
 * greedy_text, and per step the top-K [token_id, logprob] pairs (natural-log
 * softmax of the logits, computed in double). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "forward.h"
#include "model.h"
#include "tokenizer.h"
#include "tpool.h"

#define LOGITS_MAX_TOKENS 65536

static void logits_usage(FILE *to)
{
    fprintf(to,
            "usage: llorch-cli logits --model MODEL (--tokens 1,2,3 | --prompt TEXT)\n"
            "         [--dtype f32|bf16|int8|auto] [--kv f32|f16|bf16|auto] [--top 32]\n"
            "         [--steps 24 | --force 5,6,7] [--threads N] [--no-llama-rounding]\n");
}

struct logit_pair {
    llorch_token id;
    double lp;
};

/* Top k of the log-softmax of logits, sorted by logprob descending, ties by
 * lower id. Returns the log-sum-exp. */
static double logits_top(const float *logits, uint32_t n_vocab, uint32_t k, struct logit_pair *top)
{
    double max = -INFINITY;
    for (uint32_t i = 0; i < n_vocab; i++)
        max = logits[i] > max ? logits[i] : max;
    double sum = 0.0;
    for (uint32_t i = 0; i < n_vocab; i++)
        sum += exp((double)logits[i] - max);
    const double lse = max + log(sum);
    uint32_t n = 0;
    for (uint32_t i = 0; i < n_vocab; i++) {
        const double lp = (double)logits[i] - lse;
        if (n == k && lp <= top[k - 1].lp)
            continue;
        uint32_t j = n < k ? n++ : k - 1;
        while (j > 0 && top[j - 1].lp < lp)
            j--, top[j + 1] = top[j];
        top[j].id = (llorch_token)i;
        top[j].lp = lp;
    }
    return lse;
}

/* Copies UTF-8 text, replacing each maximal invalid subpart with U+FFFD (as
 * the WHATWG decoder does, and so the reference files' greedy_text shows
 * raw byte tokens). out needs 3 * n bytes. Returns the output length. */
static size_t logits_utf8_sanitize(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    while (i < n) {
        const unsigned char c = in[i];
        size_t need = 0;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c < 0x80) {
            out[o++] = (char)c;
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            lo = c == 0xe0 ? 0xa0 : 0x80;
            hi = c == 0xed ? 0x9f : 0xbf;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            lo = c == 0xf0 ? 0x90 : 0x80;
            hi = c == 0xf4 ? 0x8f : 0xbf;
        }
        size_t k = 1;
        while (need && k <= need && i + k < n && in[i + k] >= lo && in[i + k] <= hi) {
            lo = 0x80, hi = 0xbf;
            k++;
        }
        if (need && k == need + 1) {
            memcpy(out + o, in + i, k);
            o += k;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
        }
        i += k;
    }
    return o;
}

static llorch_token logits_argmax(const float *logits, uint32_t n_vocab)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    return (llorch_token)best;
}

static int logits_parse_dtype(const char *s, enum llorch_dtype *d)
{
    static const char *names[] = {"auto", "f32", "bf16", "int8"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) {
            *d = (enum llorch_dtype)i;
            return 0;
        }
    return -1;
}

static int logits_parse_kv(const char *s, enum llorch_kv_type *t)
{
    static const char *names[] = {"auto", "f32", "f16", "bf16"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) {
            *t = (enum llorch_kv_type)i;
            return 0;
        }
    return -1;
}

int cli_logits_main(int argc, char **argv)
{
    const char *model_path = NULL, *tokens_arg = NULL, *prompt = NULL, *force_arg = NULL;
    enum llorch_dtype dtype = LLORCH_DTYPE_AUTO;
    enum llorch_kv_type kv = LLORCH_KV_AUTO;
    long top_k = 32, steps = 24, threads = 0;
    bool rounding = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = true;
        if (!strcmp(a, "--model") && v)
            model_path = v;
        else if (!strcmp(a, "--tokens") && v)
            tokens_arg = v;
        else if (!strcmp(a, "--prompt") && v)
            prompt = v;
        else if (!strcmp(a, "--force") && v)
            force_arg = v;
        else if (!strcmp(a, "--dtype") && v) {
            if (logits_parse_dtype(v, &dtype)) {
                fprintf(stderr, "llorch-cli logits: bad --dtype '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--kv") && v) {
            if (logits_parse_kv(v, &kv)) {
                fprintf(stderr, "llorch-cli logits: bad --kv '%s'\n", v);
                return 2;
            }
        } else if ((!strcmp(a, "--top") || !strcmp(a, "--steps") || !strcmp(a, "--threads")) && v) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 0 || n > LOGITS_MAX_TOKENS) {
                fprintf(stderr, "llorch-cli logits: bad %s '%s'\n", a, v);
                return 2;
            }
            *(!strcmp(a, "--top") ? &top_k : !strcmp(a, "--steps") ? &steps : &threads) = n;
        } else if (!strcmp(a, "--no-llama-rounding")) {
            rounding = false;
            takes = false;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            logits_usage(stdout);
            return 0;
        } else {
            logits_usage(stderr);
            return 2;
        }
        if (takes)
            i++;
    }
    if (!model_path || (!tokens_arg == !prompt) || top_k < 1) {
        logits_usage(stderr);
        return 2;
    }

    int status = 1;
    char err[256] = "";
    struct model *m = NULL;
    struct tokenizer *tok = NULL;
    struct tpool *pool = NULL;
    struct forward *fw = NULL;
    struct kv_seq *seq = NULL;
    llorch_token *ids = NULL, *forced = NULL;
    float *logits = NULL;
    struct logit_pair *top = NULL;
    json_t *root = NULL;
    long n_ids = 0, n_forced = -1;

    int rc = model_load(&m, model_path, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "llorch-cli logits: %s: %s\n", model_path, err);
        goto out;
    }
    ids = malloc(LOGITS_MAX_TOKENS * sizeof *ids);
    forced = malloc(LOGITS_MAX_TOKENS * sizeof *forced);
    if (!ids || !forced)
        goto oom;
    if (tokenizer_new(&tok, m->file, err, sizeof err) < 0)
        tok = NULL; /* token ids still work; no text */
    if (tokens_arg) {
        n_ids = cli_ids_parse(tokens_arg, ids, LOGITS_MAX_TOKENS);
        if (n_ids <= 0) {
            fprintf(stderr, "llorch-cli logits: bad --tokens\n");
            status = 2;
            goto out;
        }
    } else {
        if (!tok) {
            fprintf(stderr, "llorch-cli logits: no tokenizer: %s\n", err);
            goto out;
        }
        size_t n = 0;
        rc = tokenizer_encode(tok, prompt, strlen(prompt), tokenizer_adds_bos(tok), false, ids,
                              LOGITS_MAX_TOKENS, &n, NULL);
        if (rc < 0 || n == 0) {
            fprintf(stderr, "llorch-cli logits: cannot tokenize the prompt: %s\n",
                    rc < 0 ? llorch_strerror(rc) : "empty");
            goto out;
        }
        n_ids = (long)n;
    }
    if (force_arg) {
        n_forced = cli_ids_parse(force_arg, forced, LOGITS_MAX_TOKENS);
        if (n_forced < 0) {
            fprintf(stderr, "llorch-cli logits: bad --force\n");
            status = 2;
            goto out;
        }
        steps = n_forced;
    }
    if (n_ids + steps >= LOGITS_MAX_TOKENS) {
        fprintf(stderr, "llorch-cli logits: too many tokens\n");
        status = 2;
        goto out;
    }

    struct tpool_opts po = {.n_threads = (int)threads, .name = "llorch-w"};
    if ((rc = tpool_new(&pool, &po)) < 0) {
        fprintf(stderr, "llorch-cli logits: thread pool: %s\n", llorch_strerror(rc));
        goto out;
    }
    const struct model_hparams *hp = &m->hp;
    const uint64_t n_ctx = (uint64_t)n_ids + (uint64_t)steps + 1;
    const uint64_t elem = kv == LLORCH_KV_F32 || (kv == LLORCH_KV_AUTO) ? 4 : 2;
    const uint64_t blocks = n_ctx / LLORCH_KV_BLOCK + 2;
    struct forward_opts fo = {
        .dtype = dtype, .kv_type = kv,
        .kv_bytes = blocks * LLORCH_KV_BLOCK * 2ull * hp->n_layer * hp->n_head_kv * hp->head_dim * elem,
        .n_ctx = 0, .max_seqs = 1, .max_step_tokens = (uint32_t)n_ids, .pool = pool,
        .llama_rounding = rounding,
    };
    if ((rc = forward_new(&fw, m, &fo, err, sizeof err)) < 0) {
        fprintf(stderr, "llorch-cli logits: %s\n", err);
        goto out;
    }
    if (n_ctx > forward_n_ctx(fw)) {
        fprintf(stderr, "llorch-cli logits: %llu tokens exceed the context of %u\n",
                (unsigned long long)n_ctx - 1, forward_n_ctx(fw));
        goto out;
    }
    const uint32_t n_vocab = forward_n_vocab(fw);
    if (top_k > n_vocab)
        top_k = n_vocab;
    logits = malloc((size_t)n_vocab * sizeof *logits);
    top = malloc((size_t)top_k * sizeof *top);
    if (!logits || !top)
        goto oom;
    struct kv_cache *kvc = forward_kv(fw);
    if ((rc = kv_seq_new(kvc, &seq)) < 0 || (rc = kv_seq_reserve(kvc, seq, (uint32_t)(n_ctx - 1))) < 0) {
        fprintf(stderr, "llorch-cli logits: KV cache: %s\n", llorch_strerror(rc));
        goto out;
    }

    root = json_object();
    json_t *jprompt = json_array(), *jgreedy = json_array(), *jsteps = json_array();
    json_t *jpos = json_array(), *jlse = json_array();
    const char *slash = strrchr(model_path, '/');
    json_object_set_new(root, "model", json_string(slash ? slash + 1 : model_path));
    json_object_set_new(root, "prompt", prompt ? json_string(prompt) : json_null());
    for (long i = 0; i < n_ids; i++)
        json_array_append_new(jprompt, json_integer(ids[i]));
    json_object_set_new(root, "prompt_tokens", jprompt);
    json_object_set_new(root, "n_predict", json_integer(steps));

    struct forward_entry e = {.seq = seq, .tokens = ids, .n_tokens = (uint32_t)n_ids, .logits = logits};
    for (long step = 0; step <= steps; step++) {
        if ((rc = forward_step(fw, &e, 1)) < 0) {
            fprintf(stderr, "llorch-cli logits: forward step %ld: %s\n", step, llorch_strerror(rc));
            goto out;
        }
        const double lse = logits_top(logits, n_vocab, (uint32_t)top_k, top);
        json_t *js = json_array();
        for (long i = 0; i < top_k; i++) {
            json_t *pair = json_array();
            json_array_append_new(pair, json_integer(top[i].id));
            json_array_append_new(pair, json_real(top[i].lp));
            json_array_append_new(js, pair);
        }
        json_array_append_new(jsteps, js);
        json_array_append_new(jpos, json_integer(n_ids - 1 + step));
        json_array_append_new(jlse, json_real(lse));
        if (step == steps)
            break;
        llorch_token next = n_forced >= 0 ? forced[step] : logits_argmax(logits, n_vocab);
        json_array_append_new(jgreedy, json_integer(next));
        ids[n_ids + step] = next;
        e.tokens = &ids[n_ids + step];
        e.n_tokens = 1;
    }
    json_object_set_new(root, "greedy_tokens", jgreedy);
    if (tok) {
        size_t cap = 64 + (size_t)steps * 256, n_out = 0;
        char *text = malloc(cap), *clean = malloc(3 * cap);
        if (!text || !clean) {
            free(text);
            free(clean);
            goto oom;
        }
        if (tokenizer_decode(tok, ids + n_ids, (size_t)steps, text, cap, &n_out) == 0) {
            size_t n_clean = logits_utf8_sanitize((const unsigned char *)text, n_out, clean);
            json_object_set_new(root, "greedy_text", json_stringn(clean, n_clean));
        }
        free(text);
        free(clean);
    }
    json_object_set_new(root, "steps", jsteps);
    json_object_set_new(root, "steps_pos", jpos);
    json_object_set_new(root, "steps_lse", jlse);
    json_t *cfg = json_object();
    json_object_set_new(cfg, "dtype", json_string(forward_dtype_name(forward_dtype(fw))));
    json_object_set_new(cfg, "kv", json_string(forward_kv_type_name(forward_kv_type(fw))));
    json_object_set_new(cfg, "threads", json_integer(tpool_size(pool)));
    json_object_set_new(cfg, "llama_rounding", json_boolean(rounding));
    json_object_set_new(root, "config", cfg);
    if (json_dumpf(root, stdout, JSON_COMPACT | JSON_REAL_PRECISION(17)) < 0)
        goto out;
    fputc('\n', stdout);
    status = 0;
    goto out;
oom:
    fprintf(stderr, "llorch-cli logits: out of memory\n");
out:
    json_decref(root);
    if (seq)
        kv_seq_free(forward_kv(fw), seq);
    forward_free(fw);
    tpool_free(pool);
    tokenizer_free(tok);
    model_free(m);
    free(ids);
    free(forced);
    free(logits);
    free(top);
    return status;
}
