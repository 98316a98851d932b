/* llorch-cli generate: one request through the real scheduler (the same
 * path the server takes), printing the text as it streams and a stats line
 * on stderr at the end. */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "forward.h"
#include "model.h"
#include "sched.h"
#include "tokenizer.h"
#include "tpool.h"
#include "util.h"

struct gen_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool notified;
};

static void gen_notify(void *ctx)
{
    struct gen_wait *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->notified = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void gen_usage(FILE *to)
{
    fprintf(to,
            "usage: llorch-cli generate --model M (--prompt T | --tokens 1,2,3) [options]\n"
            "  --max-tokens N          tokens to generate (default 64)\n"
            "  --temperature F         0 = greedy (default 0.8)\n"
            "  --top-k N               0 = off (default 40)\n"
            "  --top-p F               1 = off (default 0.95)\n"
            "  --min-p F               0 = off (default 0.05)\n"
            "  --repeat-penalty F      1 = off (default 1.0)\n"
            "  --presence-penalty F    0 = off\n"
            "  --frequency-penalty F   0 = off\n"
            "  --seed N                64-bit seed (default 42)\n"
            "  --stop S                stop string (repeatable, up to %d)\n"
            "  --logprobs N            print the top-N log-probs of each token on stderr\n"
            "  --ignore-eos            keep generating past end-of-generation tokens\n"
            "  --no-bos                do not add BOS to a text prompt\n"
            "  --special               parse control tokens in the prompt text\n"
            "  --dtype auto|f32|bf16|int8   (default auto)\n"
            "  --threads N             (default: all CPUs)\n"
            "  --ctx N                 context length (default: the model's)\n"
            "  --kv-cache-mb N         (default 256)\n",
            DETOK_MAX_STOPS);
}

static int gen_parse_dtype(const char *s, enum llorch_dtype *out)
{
    static const struct {
        const char *name;
        enum llorch_dtype d;
    } t[] = {{"auto", LLORCH_DTYPE_AUTO},
             {"f32", LLORCH_DTYPE_F32},
             {"bf16", LLORCH_DTYPE_BF16},
             {"int8", LLORCH_DTYPE_INT8}};
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(t); i++)
        if (!strcmp(s, t[i].name)) {
            *out = t[i].d;
            return 0;
        }
    return LLORCH_EINVAL;
}

static bool gen_parse_f(const char *s, float *out)
{
    char *end;
    float v = strtof(s, &end);
    if (end == s || *end)
        return false;
    *out = v;
    return true;
}

static bool gen_parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (*s == '-')
        return false;
    unsigned long long v = strtoull(s, &end, 0);
    if (end == s || *end)
        return false;
    *out = v;
    return true;
}

/* "1,2,3" into a malloc'd ids array; returns the count or -1. A list of
 * n ids has at least 2n-1 bytes, which bounds the array. */
static long gen_parse_ids(const char *s, llorch_token **out)
{
    long cap = (long)(strlen(s) / 2 + 1);
    llorch_token *ids = malloc((size_t)cap * sizeof(*ids));
    if (!ids)
        return -1;
    long n = cli_ids_parse(s, ids, cap);
    if (n < 0) {
        free(ids);
        return -1;
    }
    *out = ids;
    return n;
}

static uint64_t gen_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int cli_generate_main(int argc, char **argv)
{
    enum {
        O_MODEL = 256, O_PROMPT, O_TOKENS, O_MAX, O_TEMP, O_TOPK, O_TOPP, O_MINP, O_REP, O_PRES,
        O_FREQ, O_SEED, O_STOP, O_LOGPROBS, O_IGNORE_EOS, O_NO_BOS, O_SPECIAL, O_DTYPE, O_THREADS,
        O_CTX, O_KV, O_HELP,
    };
    static const struct option opts[] = {
        {"model", required_argument, NULL, O_MODEL},
        {"prompt", required_argument, NULL, O_PROMPT},
        {"tokens", required_argument, NULL, O_TOKENS},
        {"max-tokens", required_argument, NULL, O_MAX},
        {"temperature", required_argument, NULL, O_TEMP},
        {"temp", required_argument, NULL, O_TEMP},
        {"top-k", required_argument, NULL, O_TOPK},
        {"top-p", required_argument, NULL, O_TOPP},
        {"min-p", required_argument, NULL, O_MINP},
        {"repeat-penalty", required_argument, NULL, O_REP},
        {"repetition-penalty", required_argument, NULL, O_REP},
        {"presence-penalty", required_argument, NULL, O_PRES},
        {"frequency-penalty", required_argument, NULL, O_FREQ},
        {"seed", required_argument, NULL, O_SEED},
        {"stop", required_argument, NULL, O_STOP},
        {"logprobs", required_argument, NULL, O_LOGPROBS},
        {"ignore-eos", no_argument, NULL, O_IGNORE_EOS},
        {"no-bos", no_argument, NULL, O_NO_BOS},
        {"special", no_argument, NULL, O_SPECIAL},
        {"dtype", required_argument, NULL, O_DTYPE},
        {"threads", required_argument, NULL, O_THREADS},
        {"ctx", required_argument, NULL, O_CTX},
        {"kv-cache-mb", required_argument, NULL, O_KV},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *model_path = NULL, *prompt = NULL, *tokens_arg = NULL;
    struct sched_params p = {
        .max_tokens = 64,
        .temperature = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repetition_penalty = 1.0f,
        .seed = 42,
    };
    bool no_bos = false, special = false;
    enum llorch_dtype dtype = LLORCH_DTYPE_AUTO;
    uint64_t threads = 0, ctx = 0, kv_mb = 256, u = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case O_MODEL: model_path = optarg; break;
        case O_PROMPT: prompt = optarg; break;
        case O_TOKENS: tokens_arg = optarg; break;
        case O_MAX: ok = gen_parse_u64(optarg, &u) && u >= 1 && u <= UINT32_MAX; p.max_tokens = (uint32_t)u; break;
        case O_TEMP: ok = gen_parse_f(optarg, &p.temperature); break;
        case O_TOPK: ok = gen_parse_u64(optarg, &u) && u <= UINT32_MAX; p.top_k = (uint32_t)u; break;
        case O_TOPP: ok = gen_parse_f(optarg, &p.top_p); break;
        case O_MINP: ok = gen_parse_f(optarg, &p.min_p); break;
        case O_REP: ok = gen_parse_f(optarg, &p.repetition_penalty); break;
        case O_PRES: ok = gen_parse_f(optarg, &p.presence_penalty); break;
        case O_FREQ: ok = gen_parse_f(optarg, &p.frequency_penalty); break;
        case O_SEED: ok = gen_parse_u64(optarg, &p.seed); break;
        case O_STOP:
            ok = p.n_stops < DETOK_MAX_STOPS && strlen(optarg) >= 1 &&
                 strlen(optarg) <= DETOK_MAX_STOP_LEN;
            if (ok) {
                p.stops[p.n_stops] = optarg;
                p.stop_lens[p.n_stops++] = strlen(optarg);
            }
            break;
        case O_LOGPROBS: ok = gen_parse_u64(optarg, &u) && u <= SCHED_MAX_LOGPROBS; p.n_logprobs = (uint32_t)u; break;
        case O_IGNORE_EOS: p.ignore_eos = true; break;
        case O_NO_BOS: no_bos = true; break;
        case O_SPECIAL: special = true; break;
        case O_DTYPE: ok = gen_parse_dtype(optarg, &dtype) == 0; break;
        case O_THREADS: ok = gen_parse_u64(optarg, &threads) && threads <= 4096; break;
        case O_CTX: ok = gen_parse_u64(optarg, &ctx) && ctx <= UINT32_MAX; break;
        case O_KV: ok = gen_parse_u64(optarg, &kv_mb) && kv_mb >= 1 && kv_mb <= (1u << 24); break;
        case O_HELP: gen_usage(stdout); return 0;
        default: gen_usage(stderr); return 2;
        }
        if (!ok) {
            const char *name = "?";
            for (const struct option *o = opts; o->name; o++)
                if (o->val == c) {
                    name = o->name;
                    break;
                }
            fprintf(stderr, "llorch-cli generate: bad value for --%s: '%s'\n", name,
                    optarg ? optarg : "");
            return 2;
        }
    }
    if (!model_path || (!prompt == !tokens_arg) || optind != argc) {
        gen_usage(stderr);
        return 2;
    }

    int ret = 1;
    char err[512] = "";
    struct model *m = NULL;
    struct tokenizer *tok = NULL;
    struct tpool *pool = NULL;
    struct forward *fw = NULL;
    struct sched *s = NULL;
    llorch_token *ids = NULL;
    long n_ids = 0;
    struct gen_wait w = {.notified = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);

    int rc = model_load(&m, model_path, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "llorch-cli generate: %s: %s\n", model_path, err[0] ? err : llorch_strerror(rc));
        goto out;
    }
    if ((rc = tokenizer_new(&tok, m->file, err, sizeof(err))) < 0) {
        fprintf(stderr, "llorch-cli generate: tokenizer: %s\n", err[0] ? err : llorch_strerror(rc));
        goto out;
    }
    if (tokens_arg && (n_ids = gen_parse_ids(tokens_arg, &ids)) < 0) {
        fprintf(stderr, "llorch-cli generate: bad --tokens list\n");
        goto out;
    }
    struct tpool_opts po = {.n_threads = (int)threads, .name = "llorch-w"};
    if ((rc = tpool_new(&pool, &po)) < 0) {
        fprintf(stderr, "llorch-cli generate: thread pool: %s\n", llorch_strerror(rc));
        goto out;
    }
    struct forward_opts fo = {
        .dtype = dtype,
        .kv_bytes = kv_mb << 20,
        .n_ctx = (uint32_t)ctx,
        .max_seqs = 1,
        .max_step_tokens = 512,
        .pool = pool,
    };
    if ((rc = forward_new(&fw, m, &fo, err, sizeof(err))) < 0) {
        fprintf(stderr, "llorch-cli generate: %s\n", err[0] ? err : llorch_strerror(rc));
        goto out;
    }
    struct sched_opts so = {.max_batch = 1, .max_queue = 1, .step_tokens = 512,
                            .notify = gen_notify, .notify_ctx = &w};
    if ((rc = sched_new(&s, fw, tok, &so)) < 0) {
        fprintf(stderr, "llorch-cli generate: scheduler: %s\n", llorch_strerror(rc));
        goto out;
    }
    struct sched_request req = {
        .job_id = "cli",
        .job_id_len = 3,
        .prompt = prompt,
        .prompt_len = prompt ? strlen(prompt) : 0,
        .prompt_tokens = tokens_arg ? ids : NULL,
        .n_prompt_tokens = (size_t)n_ids,
        .add_bos = !no_bos && tokenizer_adds_bos(tok),
        .parse_special = special,
        .params = p,
    };
    uint64_t t0 = gen_now_ms();
    if ((rc = sched_submit(s, &req, NULL)) < 0) {
        fprintf(stderr, "llorch-cli generate: %s\n", llorch_strerror(rc));
        goto out;
    }
    bool done = false;
    while (!done) {
        pthread_mutex_lock(&w.mu);
        while (!w.notified)
            pthread_cond_wait(&w.cv, &w.mu);
        w.notified = false;
        pthread_mutex_unlock(&w.mu);
        struct llorch_queue list, *q;
        llorch_queue_init(&list);
        sched_events_take(s, &list);
        llorch_queue_foreach(q, &list) {
            struct sched_event *ev = llorch_container_of(q, struct sched_event, node);
            switch (ev->type) {
            case SCHED_EV_STARTED:
                break;
            case SCHED_EV_TOKEN:
                fwrite(ev->u.token.text, 1, ev->u.token.text_len, stdout);
                fflush(stdout);
                if (p.n_logprobs) {
                    fprintf(stderr, "[%u] id %d logprob %.5f top:", ev->u.token.index,
                            ev->u.token.id, ev->u.token.logprob);
                    for (uint32_t i = 0; i < ev->u.token.n_top; i++)
                        fprintf(stderr, " %d:%.5f", ev->u.token.top[i].id,
                                ev->u.token.top[i].logprob);
                    fputc('\n', stderr);
                }
                break;
            case SCHED_EV_END: {
                fwrite(ev->u.end.text, 1, ev->u.end.text_len, stdout);
                fputc('\n', stdout);
                fflush(stdout);
                uint64_t ms = gen_now_ms() - t0;
                uint32_t dec = ev->u.end.decode_time_ms;
                fprintf(stderr,
                        "prompt %u tokens, generated %u tokens, ttft %u ms, decode %u ms "
                        "(%.1f tok/s), total %llu ms, stop %s\n",
                        ev->u.end.n_prompt_tokens, ev->u.end.tokens_out, ev->u.end.ttft_ms, dec,
                        dec ? 1000.0 * ev->u.end.tokens_out / dec : 0.0,
                        (unsigned long long)ms, sched_stop_reason_name(ev->u.end.reason));
                ret = 0;
                done = true;
                break;
            }
            case SCHED_EV_ERROR:
                fflush(stdout);
                fprintf(stderr, "\nllorch-cli generate: %s: %s\n",
                        sched_error_name(ev->u.error.code), ev->u.error.message);
                done = true;
                break;
            }
        }
        sched_events_release(s, &list);
    }
out:
    sched_free(s);
    forward_free(fw);
    tpool_free(pool);
    tokenizer_free(tok);
    model_free(m);
    free(ids);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return ret;
}
