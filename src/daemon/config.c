/* The process configuration. One table below describes every option once;
 * the long flag (--max-batch), the environment variable (LLORCH_MAX_BATCH),
 * the config-file key (max_batch), --help and validation all derive from it.
 *
 * Config file format: UTF-8 text, one `key = value` per line; blank lines
 * and lines whose first non-blank character is `#` are ignored; a value may
 * be wrapped in double quotes (kept verbatim inside, no escapes); trailing
 * ` # comment` after an unquoted value is stripped. Unknown keys are errors
 * reported as FILE:LINE. Precedence: flag > env > file > default.
 *
 * ChatLoop's knob names are aliases in the file and the environment (table
 * `aliases`): worker_threads = threads, enable_cpu_pinning = cpu_pinning,
 * max_batch_size = max_batch, batching_window_ms = batch_window_ms,
 * max_queue_size = max_queue, kv_cache_mb (already ours), enable_simd
 * (false = isa scalar, true = isa auto). In the environment they carry our
 * prefix (LLORCH_WORKER_THREADS); our own name wins over an alias there. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "llorch/config.h"
#include "llorch/error.h"
#include "util.h"

#define CONFIG_LINE_MAX 8192
#define CONFIG_FILE_MAX (1u << 20)
#define CONFIG_KEY_FILE_MAX 4096

enum opt_type { OPT_STR, OPT_U16, OPT_U32, OPT_U64, OPT_BOOL, OPT_ENUM };

struct opt {
    const char *flag;  /* "max-batch"; key and env name derive from it */
    const char *group; /* --help heading starting at this option, or NULL */
    enum opt_type type;
    size_t off;
    size_t size;              /* OPT_STR: buffer size including the NUL */
    uint64_t min, max;        /* integers: inclusive range */
    const char *const *names; /* OPT_ENUM: NULL-terminated, value = index */
    const char *metavar;      /* "N", "PATH" */
    const char *unit;         /* "ms", "MiB", ... or NULL */
    const char *default_text; /* for --help when the default is derived */
    const char *help;
};

static const char *const dtype_names[] = {"auto", "f32", "bf16", "int8", "native", NULL};
static const char *const isa_names[] = {"auto", "scalar", "avx2", "avxvnni", "avx512", NULL};
static const char *const kv_names[] = {"auto", "f32", "f16", "bf16", NULL};
static const char *const log_format_names[] = {"json", "text", NULL};
static const char *const log_level_names[] = {"debug", "info", "warn", "error", NULL};

/* Enum fields are stored through an int. */
_Static_assert(sizeof(enum llorch_dtype) == sizeof(int), "enum size");
_Static_assert(sizeof(enum llorch_kv_type) == sizeof(int), "enum size");
_Static_assert(sizeof(enum llorch_isa) == sizeof(int), "enum size");
_Static_assert(sizeof(enum log_format) == sizeof(int), "enum size");
_Static_assert(sizeof(enum log_level) == sizeof(int), "enum size");

#define F(field) offsetof(struct config, field), sizeof(((struct config *)0)->field)
#define KiB 1024ull
#define MiB (1024ull * 1024ull)
#define GiB (1024ull * 1024ull * 1024ull)

static const struct opt opts[] = {
    {"worker-id", "identity and model", OPT_STR, F(worker_id), 0, 0, NULL, "ID", NULL, "hostname",
     "worker identity sent to the pool manager and in every log line"},
    {"model", NULL, OPT_STR, F(model), 0, 0, NULL, "PATH", NULL, "none",
     "GGUF model file to load (required by the daemon)"},
    {"model-ref", NULL, OPT_STR, F(model_ref), 0, 0, NULL, "REF", NULL, "the model's file name",
     "model reference reported to the pool manager"},
    {"callback-url", NULL, OPT_STR, F(callback_url), 0, 0, NULL, "URL", NULL, "none",
     "pool-manager ready callback (http:// or https://); localhost:9999 = test mode, no callback"},
    {"api-key-file", NULL, OPT_STR, F(api_key_file), 0, 0, NULL, "PATH", NULL, "none, no auth",
     "file holding the API key (read at start-up; must not be accessible by others)"},
    {"chat-template", NULL, OPT_STR, F(chat_template), 0, 0, NULL, "NAME", NULL, "from the model",
     "chat template for /v1/chat/completions"},
    {"dtype", NULL, OPT_ENUM, F(dtype), 0, 0, dtype_names, "TYPE", NULL, NULL,
     "runtime weight type (auto = native: every weight in its file's own class, e.g. Q4_K as "
     "Q4_K, F16 as f16; f32/bf16/int8 convert once at load)"},
    {"isa", NULL, OPT_ENUM, F(isa), 0, 0, isa_names, "LEVEL", NULL, NULL,
     "kernel level (auto: the best this CPU runs; scalar/avx2/avxvnni/avx512 force a lower one)"},
    {"kv", NULL, OPT_ENUM, F(kv_type), 0, 0, kv_names, "TYPE", NULL, NULL,
     "KV cache element type (auto: f32 when dtype is f32, else f16)"},

    {"host", "network", OPT_STR, F(host), 0, 0, NULL, "ADDR", NULL, NULL, "address to listen on"},
    {"port", NULL, OPT_U16, F(port), 0, 65535, NULL, "N", NULL, NULL,
     "TCP port to listen on (0 = any free port)"},
    {"advertise-url", NULL, OPT_STR, F(advertise_url), 0, 0, NULL, "URL", NULL,
     "http://HOST:PORT (the listen address)",
     "this worker's URL in the pool-manager ready callback, for a pool manager on another host "
     "when listening on loopback or behind NAT"},
    {"max-connections", NULL, OPT_U32, F(max_connections), 1, 1048576, NULL, "N", NULL, NULL,
     "open connections at most"},
    {"max-header-bytes", NULL, OPT_U32, F(max_header_bytes), 1024, 1 * MiB, NULL, "N", "bytes",
     NULL, "request line plus headers at most"},
    {"max-body-bytes", NULL, OPT_U64, F(max_body_bytes), 1024, 1 * GiB, NULL, "N", "bytes", NULL,
     "request body at most (larger: 413)"},
    {"header-timeout-ms", NULL, OPT_U32, F(header_timeout_ms), 100, 3600000, NULL, "N", "ms", NULL,
     "time to receive a request's headers"},
    {"idle-timeout-ms", NULL, OPT_U32, F(idle_timeout_ms), 100, 86400000, NULL, "N", "ms", NULL,
     "keep-alive connection idle time"},
    {"sse-outbox-bytes", NULL, OPT_U64, F(sse_outbox_bytes), 4 * KiB, 1 * GiB, NULL, "N", "bytes",
     NULL, "unsent stream bytes per client before CLIENT_TOO_SLOW"},
    {"sse-sndbuf-bytes", NULL, OPT_U32, F(sse_sndbuf_bytes), 0, 64 * MiB, NULL, "N", "bytes",
     NULL,
     "kernel send buffer (SO_SNDBUF) of streaming connections (0 = kernel autotuning, else at "
     "least 4096); a small one makes --sse-outbox-bytes the real bound on a slow reader"},
    {"ping-interval-ms", NULL, OPT_U32, F(ping_interval_ms), 100, 3600000, NULL, "N", "ms", NULL,
     "`: ping` comment frames on quiet streams"},
    {"resume-grace-ms", NULL, OPT_U32, F(resume_grace_ms), 0, 3600000, NULL, "N", "ms", NULL,
     "how long a resumable stream's job outlives its dropped connection (0 = closing cancels)"},
    {"resume-job-bytes", NULL, OPT_U64, F(resume_job_bytes), 4 * KiB, 1 * GiB, NULL, "N", "bytes",
     NULL, "frames kept per resumable job (past it the job is no longer resumable)"},
    {"resume-total-bytes", NULL, OPT_U64, F(resume_total_bytes), 4 * KiB, 64 * GiB, NULL, "N",
     "bytes", NULL, "frames kept over all resumable jobs"},
    {"drain-timeout-ms", NULL, OPT_U32, F(drain_timeout_ms), 0, 3600000, NULL, "N", "ms", NULL,
     "graceful shutdown: time for running jobs before they are ended"},

    {"threads", "engine", OPT_U32, F(threads), 0, 4096, NULL, "N", NULL, "0 = online CPUs",
     "compute threads"},
    {"cpu-pinning", NULL, OPT_BOOL, F(cpu_pinning), 0, 1, NULL, NULL, NULL, NULL,
     "pin compute threads to CPUs (of the process's affinity mask)"},
    {"max-batch", NULL, OPT_U32, F(max_batch), 1, 1024, NULL, "N", "sequences", NULL,
     "sequences running at once"},
    {"max-queue", NULL, OPT_U32, F(max_queue), 1, 1048576, NULL, "N", "requests", NULL,
     "waiting requests before 503"},
    {"step-tokens", NULL, OPT_U32, F(step_tokens), 1, 65536, NULL, "N", "tokens", NULL,
     "token budget of one step (chunked prefill)"},
    {"itl-target-ms", NULL, OPT_U32, F(itl_target_ms), 0, 600000, NULL, "N", NULL,
     "0 = twice a decode step",
     "step time in ms that running streams keep while prompts prefill (the prompt chunk is "
     "sized from the measured step cost; --step-tokens still caps it)"},
    {"itl-target-pct", NULL, OPT_U32, F(itl_target_pct), 100, 100000, NULL, "N", "%", NULL,
     "with --itl-target-ms 0: the step time running streams keep while prompts prefill, in "
     "percent of a pure decode step of the batch (lower: the streams keep their pace, the "
     "prompt waits longer; higher: the other way round)"},
    {"kv-cache-mb", NULL, OPT_U32, F(kv_cache_mb), 1, 1048576, NULL, "N", "MiB", NULL,
     "KV cache size"},
    {"ctx", NULL, OPT_U32, F(ctx), 0, 1048576, NULL, "N", "tokens", "0 = the model's",
     "context length per sequence"},
    {"batch-window-ms", NULL, OPT_U32, F(batch_window_ms), 0, 10000, NULL, "N", "ms", NULL,
     "new requests wait up to this long (from the oldest) for more to join them before they are "
     "admitted, unless they fill the batch; running streams keep stepping"},
    {"pipeline", NULL, OPT_BOOL, F(pipeline), 0, 1, NULL, NULL, NULL, NULL,
     "one model split by layers over MPI ranks: `mpirun -np S+1 llorch-cpud --pipeline ...`; "
     "rank 0 serves, ranks 1..S each hold a layer range"},
    {"layers", NULL, OPT_STR, F(layers), 0, 0, NULL, "A-B,...", NULL, "an even split",
     "with --pipeline: each stage's inclusive layer range, in rank order (0-7,8-15,16-23,24-31)"},
    {"pipeline-groups", NULL, OPT_U32, F(pipeline_groups), 0, 64, NULL, "N", "groups",
     "0 = one per stage",
     "with --pipeline: micro-batch groups of running sequences in flight at once (0 = one per "
     "stage, which keeps every stage busy; 1 = no micro-batches: each step passes through the "
     "stages one after the other, for comparison runs)"},
    {"stage-timeout-ms", NULL, OPT_U32, F(stage_timeout_ms), 0, 3600000, NULL, "N", "ms", NULL,
     "with --pipeline: a stage that neither answers nor computes for this long is lost (a frozen "
     "process, a host cut off: MPI notices neither); every stream ends with an error and the job "
     "exits 1. Bounds silence, not a step: a stage beats every N/4 ms while it computes. "
     "0 = never"},

    {"heartbeat-interval", "operations", OPT_U32, F(heartbeat_interval_s), 0, 86400, NULL, "N", "s",
     NULL, "pool-manager heartbeat period (0 = off)"},
    {"callback-max-retries", NULL, OPT_U32, F(callback_max_retries), 0, 100, NULL, "N", NULL, NULL,
     "ready-callback retries after the first attempt"},
    {"callback-backoff-ms", NULL, OPT_U32, F(callback_backoff_ms), 10, 600000, NULL, "N", "ms",
     NULL, "first retry delay, doubled per attempt"},
    {"callback-backoff-max-ms", NULL, OPT_U32, F(callback_backoff_max_ms), 10, 3600000, NULL, "N",
     "ms", NULL, "retry delay cap"},
    {"log-format", NULL, OPT_ENUM, F(log_format), 0, 0, log_format_names, "FMT", NULL, NULL,
     "log lines on stderr: json (one object per line) or text"},
    {"log-level", NULL, OPT_ENUM, F(log_level), 0, 0, log_level_names, "LEVEL", NULL, NULL,
     "lowest level logged"},
    {"config", NULL, OPT_STR, F(config_file), 0, 0, NULL, "FILE", NULL, "none",
     "config file of `key = value` lines (env LLORCH_CONFIG; not allowed inside the file)"},
};
#undef F

/* ChatLoop's knob names (file keys; env LLORCH_ + upper case). A boolean
 * alias with value names maps false/true onto those values of the target. */
struct opt_alias {
    const char *key;
    const char *flag;     /* our option */
    const char *if_false; /* NULL: the value passes through */
    const char *if_true;
};

static const struct opt_alias aliases[] = {
    {"worker_threads", "threads", NULL, NULL},
    {"enable_cpu_pinning", "cpu-pinning", NULL, NULL},
    {"max_batch_size", "max-batch", NULL, NULL},
    {"batching_window_ms", "batch-window-ms", NULL, NULL},
    {"max_queue_size", "max-queue", NULL, NULL},
    {"enable_simd", "isa", "scalar", "auto"},
};


static const struct opt *opt_find_flag(const char *name, size_t len)
{
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(opts); i++)
        if (strlen(opts[i].flag) == len && !memcmp(opts[i].flag, name, len))
            return &opts[i];
    return NULL;
}

/* File keys are flags with '_' for '-'. */
static const struct opt *opt_find_key(const char *key, size_t len)
{
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(opts); i++) {
        const char *f = opts[i].flag;
        if (strlen(f) != len)
            continue;
        size_t j = 0;
        for (; j < len; j++)
            if ((f[j] == '-' ? '_' : f[j]) != key[j])
                break;
        if (j == len)
            return &opts[i];
    }
    return NULL;
}

static const struct opt_alias *alias_find_key(const char *key, size_t len)
{
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(aliases); i++)
        if (strlen(aliases[i].key) == len && !memcmp(aliases[i].key, key, len))
            return &aliases[i];
    return NULL;
}

static const struct opt_alias *alias_of_flag(const char *flag)
{
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(aliases); i++)
        if (!strcmp(aliases[i].flag, flag))
            return &aliases[i];
    return NULL;
}

static void alias_env_name(const struct opt_alias *a, char *buf, size_t n)
{
    size_t w = (size_t)snprintf(buf, n, "LLORCH_");
    for (const char *p = a->key; *p && w + 1 < n; p++, w++)
        buf[w] = (*p >= 'a' && *p <= 'z') ? (char)(*p - 'a' + 'A') : *p;
    buf[w] = 0;
}

static void opt_env_name(const struct opt *o, char *buf, size_t n)
{
    size_t w = (size_t)snprintf(buf, n, "LLORCH_");
    for (const char *p = o->flag; *p && w + 1 < n; p++, w++)
        buf[w] = *p == '-' ? '_' : (*p >= 'a' && *p <= 'z') ? (char)(*p - 'a' + 'A') : *p;
    buf[w] = 0;
}

/* Where a value came from, for error messages. */
struct origin {
    const char *kind;  /* "flag", "env", "file" */
    const char *name;  /* env variable or file path */
    unsigned line;
    const char *alias; /* ChatLoop key the value came under, or NULL */
};

static void origin_format(const struct origin *src, const struct opt *o, char *buf, size_t n)
{
    if (!strcmp(src->kind, "file") && src->alias)
        snprintf(buf, n, "%s:%u: %s (--%s)", src->name, src->line, src->alias, o->flag);
    else if (!strcmp(src->kind, "file"))
        snprintf(buf, n, "%s:%u: --%s", src->name, src->line, o->flag);
    else if (!strcmp(src->kind, "env"))
        snprintf(buf, n, "--%s (from %s)", o->flag, src->name);
    else
        snprintf(buf, n, "--%s", o->flag);
}

/* Strict unsigned decimal: digits only, no sign, no spaces, no junk. */
static bool parse_u64(const char *s, uint64_t *out)
{
    if (!*s)
        return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        if (llorch_mul_overflows(v, 10, &v) || llorch_add_overflows(v, (uint64_t)(*s - '0'), &v))
            return false;
    }
    *out = v;
    return true;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(yes); i++) {
        if (!strcasecmp(s, yes[i])) {
            *out = true;
            return true;
        }
        if (!strcasecmp(s, no[i])) {
            *out = false;
            return true;
        }
    }
    return false;
}

static void enum_list(const struct opt *o, char *buf, size_t n)
{
    size_t w = 0;
    buf[0] = 0;
    for (const char *const *p = o->names; *p && w < n; p++)
        w += (size_t)snprintf(buf + w, n - w, "%s%s", p == o->names ? "" : "|", *p);
}

/* Stores value into c for option o, or fails naming the option and range. */
static int opt_set(struct config *c, const struct opt *o, const char *value,
                   const struct origin *src, char *err, size_t errlen)
{
    char where[4200];
    origin_format(src, o, where, sizeof where);
    char *field = (char *)c + o->off;
    uint64_t v;
    switch (o->type) {
    case OPT_STR: {
        size_t len = strlen(value);
        if (len >= o->size)
            return llorch_errf(err, errlen, LLORCH_ETOOBIG,
                        "%s: value is too long (%zu bytes, at most %zu)", where, len, o->size - 1);
        memcpy(field, value, len + 1);
        return 0;
    }
    case OPT_U16:
    case OPT_U32:
    case OPT_U64:
        if (!parse_u64(value, &v) || v < o->min || v > o->max)
            return llorch_errf(err, errlen, LLORCH_ERANGE,
                        "%s: invalid value '%.64s': expected an integer in %llu..%llu%s%s", where,
                        value, (unsigned long long)o->min, (unsigned long long)o->max,
                        o->unit ? " " : "", o->unit ? o->unit : "");
        if (o->type == OPT_U16) {
            uint16_t x = (uint16_t)v;
            memcpy(field, &x, sizeof x);
        } else if (o->type == OPT_U32) {
            uint32_t x = (uint32_t)v;
            memcpy(field, &x, sizeof x);
        } else {
            memcpy(field, &v, sizeof v);
        }
        return 0;
    case OPT_BOOL: {
        bool b;
        if (!parse_bool(value, &b))
            return llorch_errf(err, errlen, LLORCH_EINVAL,
                        "%s: invalid value '%.64s': expected true|false (or 1|0, yes|no, on|off)",
                        where, value);
        memcpy(field, &b, sizeof b);
        return 0;
    }
    case OPT_ENUM:
        for (int i = 0; o->names[i]; i++) {
            if (!strcmp(o->names[i], value)) {
                memcpy(field, &i, sizeof i);
                return 0;
            }
        }
        char list[128];
        enum_list(o, list, sizeof list);
        return llorch_errf(err, errlen, LLORCH_EINVAL, "%s: invalid value '%.64s': expected one of %s",
                    where, value, list);
    }
    return llorch_errf(err, errlen, LLORCH_EINTERNAL, "%s: bad option type", where);
}

/* Stores a value given under a ChatLoop alias. */
static int alias_set(struct config *c, const struct opt_alias *a, const char *value,
                     const struct origin *src, char *err, size_t errlen)
{
    const struct opt *o = opt_find_flag(a->flag, strlen(a->flag));
    if (a->if_false) {
        bool b;
        if (!parse_bool(value, &b)) {
            char where[4200];
            origin_format(src, o, where, sizeof where);
            return llorch_errf(err, errlen, LLORCH_EINVAL,
                               "%s: invalid value '%.64s' for %s: expected true|false (or 1|0, "
                               "yes|no, on|off)",
                               where, value, a->key);
        }
        value = b ? a->if_true : a->if_false;
    }
    return opt_set(c, o, value, src, err, errlen);
}

void config_defaults(struct config *c)
{
    memset(c, 0, sizeof *c);
    if (gethostname(c->worker_id, sizeof c->worker_id - 1) != 0 || !c->worker_id[0])
        snprintf(c->worker_id, sizeof c->worker_id, "llorch-cpud");
    c->worker_id[sizeof c->worker_id - 1] = 0;
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 8080;
    c->max_connections = 16384;
    c->max_header_bytes = 16384;
    c->max_body_bytes = 2 * MiB;
    c->header_timeout_ms = 10000;
    c->idle_timeout_ms = 60000;
    c->sse_outbox_bytes = 1 * MiB;
    c->ping_interval_ms = 15000;
    c->resume_grace_ms = 5000;
    c->resume_job_bytes = 1 * MiB;
    c->resume_total_bytes = 64 * MiB;
    c->drain_timeout_ms = 30000;
    c->threads = 0;
    c->cpu_pinning = false;
    c->max_batch = 32;
    c->max_queue = 256;
    c->step_tokens = 512;
    c->itl_target_ms = 0;
    c->itl_target_pct = 200;
    c->kv_cache_mb = 1024;
    c->ctx = 0;
    c->batch_window_ms = 0;
    c->dtype = LLORCH_DTYPE_AUTO;
    c->kv_type = LLORCH_KV_AUTO;
    /* silence, not a step's time (a computing stage beats every 2.5 s):
     * room for the largest transfer, a group's logits (32 x 128k vocab x
     * 4 bytes = 16 MB: 1.3 s at 100 Mbit/s), and for an overloaded host */
    c->stage_timeout_ms = 10000;
    c->heartbeat_interval_s = 30;
    c->callback_max_retries = 8;
    c->callback_backoff_ms = 500;
    c->callback_backoff_max_ms = 30000;
    c->log_format = LOG_FORMAT_JSON;
    c->log_level = LOG_LEVEL_INFO;
}

/* ---- --help ---------------------------------------------------------- */

static void opt_default_text(const struct opt *o, const struct config *d, char *buf, size_t n)
{
    const char *field = (const char *)d + o->off;
    if (o->default_text) {
        snprintf(buf, n, "%s", o->default_text);
        return;
    }
    switch (o->type) {
    case OPT_STR:
        snprintf(buf, n, "%s", field);
        break;
    case OPT_U16: {
        uint16_t x;
        memcpy(&x, field, sizeof x);
        snprintf(buf, n, "%u", x);
        break;
    }
    case OPT_U32: {
        uint32_t x;
        memcpy(&x, field, sizeof x);
        snprintf(buf, n, "%u", x);
        break;
    }
    case OPT_U64: {
        uint64_t x;
        memcpy(&x, field, sizeof x);
        snprintf(buf, n, "%llu", (unsigned long long)x);
        break;
    }
    case OPT_BOOL: {
        bool b;
        memcpy(&b, field, sizeof b);
        snprintf(buf, n, "%s", b ? "true" : "false");
        break;
    }
    case OPT_ENUM: {
        int i;
        memcpy(&i, field, sizeof i);
        snprintf(buf, n, "%s", o->names[i]);
        break;
    }
    }
}

static void config_print_help(FILE *to)
{
    struct config d;
    config_defaults(&d);
    fprintf(to,
            "usage: llorch-cpud --model PATH [OPTIONS]\n\n"
            "llorch-cpud %s: CPU inference worker (worker contract + OpenAI API).\n"
            "Every option is also an environment variable (--max-batch 32 =\n"
            "LLORCH_MAX_BATCH=32) and a line of the --config file (max_batch = 32);\n"
            "precedence: flag > environment > file > default.\n",
            LLORCH_VERSION);
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(opts); i++) {
        const struct opt *o = &opts[i];
        if (o->group)
            fprintf(to, "\n%s:\n", o->group);
        char lhs[96], def[96], range[96] = "";
        if (o->type == OPT_BOOL)
            snprintf(lhs, sizeof lhs, "--%s[=BOOL]", o->flag);
        else
            snprintf(lhs, sizeof lhs, "--%s %s", o->flag, o->metavar);
        opt_default_text(o, &d, def, sizeof def);
        if (o->type == OPT_U16 || o->type == OPT_U32 || o->type == OPT_U64)
            snprintf(range, sizeof range, ", range %llu..%llu", (unsigned long long)o->min,
                     (unsigned long long)o->max);
        else if (o->type == OPT_ENUM) {
            char list[80];
            enum_list(o, list, sizeof list);
            snprintf(range, sizeof range, ", one of %s", list);
        }
        char env[64], alias[96] = "";
        opt_env_name(o, env, sizeof env);
        const struct opt_alias *al = alias_of_flag(o->flag);
        if (al)
            snprintf(alias, sizeof alias, "; ChatLoop key %s%s", al->key,
                     al->if_false ? " (a boolean: false = scalar)" : "");
        fprintf(to, "  %s\n      %s\n      (default: %s%s%s%s; env %s%s)\n", lhs, o->help, def,
                o->unit ? " " : "", o->unit ? o->unit : "", range, env, alias);
    }
    fprintf(to, "\nother:\n  --help, -h\n      this text\n  --version\n      print the version\n");
}

/* ---- sources ------------------------------------------------------------ */

static bool is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' || ch == '\f';
}

/* Parses one config file's text (NUL-terminated) into c. */
static int config_apply_file_text(struct config *c, const char *path, char *text, char *err,
                                  size_t errlen)
{
    unsigned lineno = 0;
    char *p = text;
    while (p) {
        char *line = p;
        char *nl = strchr(p, '\n');
        if (nl) {
            *nl = 0;
            p = nl + 1;
        } else {
            p = NULL;
        }
        lineno++;
        if (strlen(line) >= CONFIG_LINE_MAX)
            return llorch_errf(err, errlen, LLORCH_ETOOBIG, "%s:%u: line too long (at most %d bytes)",
                        path, lineno, CONFIG_LINE_MAX - 1);
        while (is_space(*line))
            line++;
        size_t len = strlen(line);
        while (len && is_space(line[len - 1]))
            line[--len] = 0;
        if (!len || line[0] == '#')
            continue;
        char *eq = strchr(line, '=');
        if (!eq)
            return llorch_errf(err, errlen, LLORCH_EFORMAT, "%s:%u: expected `key = value`", path, lineno);
        char *key = line, *kend = eq;
        while (kend > key && is_space(kend[-1]))
            kend--;
        *kend = 0;
        char *value = eq + 1;
        while (is_space(*value))
            value++;
        size_t vlen = strlen(value);
        if (value[0] == '"') {
            char *close = strchr(value + 1, '"');
            if (!close)
                return llorch_errf(err, errlen, LLORCH_EFORMAT, "%s:%u: unterminated quoted value", path,
                            lineno);
            char *rest = close + 1;
            while (is_space(*rest))
                rest++;
            if (*rest && *rest != '#')
                return llorch_errf(err, errlen, LLORCH_EFORMAT,
                            "%s:%u: unexpected text after the quoted value", path, lineno);
            *close = 0;
            value++;
        } else {
            /* ` # comment` after a value; a '#' inside a word stays (URLs). */
            for (size_t i = 1; i < vlen; i++) {
                if (value[i] == '#' && is_space(value[i - 1])) {
                    value[i] = 0;
                    break;
                }
            }
            vlen = strlen(value);
            while (vlen && is_space(value[vlen - 1]))
                value[--vlen] = 0;
        }
        if (!key[0])
            return llorch_errf(err, errlen, LLORCH_EFORMAT, "%s:%u: missing key before '='", path, lineno);
        const struct opt *o = opt_find_key(key, strlen(key));
        if (!o) {
            const struct opt_alias *a = alias_find_key(key, strlen(key));
            if (!a)
                return llorch_errf(err, errlen, LLORCH_EINVAL, "%s:%u: unknown key '%.64s'", path,
                                   lineno, key);
            struct origin asrc = {"file", path, lineno, a->key};
            int r = alias_set(c, a, value, &asrc, err, errlen);
            if (r)
                return r;
            continue;
        }
        if (!strcmp(o->flag, "config"))
            return llorch_errf(err, errlen, LLORCH_EINVAL,
                        "%s:%u: 'config' cannot be set inside a config file", path, lineno);
        struct origin src = {"file", path, lineno, NULL};
        int r = opt_set(c, o, value, &src, err, errlen);
        if (r)
            return r;
    }
    return 0;
}

static int read_small_file(const char *path, const char *what, size_t max, char **out,
                           size_t *out_len, struct stat *st, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return llorch_errf(err, errlen, llorch_err_from_errno(e), "%s '%s': %s", what, path, strerror(e));
    }
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return llorch_errf(err, errlen, LLORCH_EINVAL, "%s '%s': not a regular file", what, path);
    }
    if ((uint64_t)st->st_size > max) {
        close(fd);
        return llorch_errf(err, errlen, LLORCH_ETOOBIG, "%s '%s': too large (at most %zu bytes)", what,
                    path, max);
    }
    char *buf = malloc((size_t)st->st_size + 1);
    if (!buf) {
        close(fd);
        return llorch_errf(err, errlen, LLORCH_ENOMEM, "%s '%s': out of memory", what, path);
    }
    size_t got = 0;
    while (got < (size_t)st->st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st->st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return llorch_errf(err, errlen, llorch_err_from_errno(e), "%s '%s': %s", what, path,
                        strerror(e));
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = 0;
    *out = buf;
    *out_len = got;
    return 0;
}

static int config_apply_file(struct config *c, const char *path, char *err, size_t errlen)
{
    char *text;
    size_t len;
    struct stat st;
    int r = read_small_file(path, "config file", CONFIG_FILE_MAX, &text, &len, &st, err, errlen);
    if (r)
        return r;
    if (memchr(text, 0, len)) {
        free(text);
        return llorch_errf(err, errlen, LLORCH_EFORMAT, "config file '%s': contains a NUL byte", path);
    }
    r = config_apply_file_text(c, path, text, err, errlen);
    free(text);
    return r;
}

static const char *env_lookup(char **envp, const char *name)
{
    if (!envp)
        return NULL;
    size_t n = strlen(name);
    for (char **e = envp; *e; e++)
        if (!strncmp(*e, name, n) && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

static int config_apply_env(struct config *c, char **envp, char *err, size_t errlen)
{
    /* Aliases first: our own name wins. */
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(aliases); i++) {
        char name[64];
        alias_env_name(&aliases[i], name, sizeof name);
        const char *v = env_lookup(envp, name);
        if (!v)
            continue;
        struct origin src = {"env", name, 0, aliases[i].key};
        int r = alias_set(c, &aliases[i], v, &src, err, errlen);
        if (r)
            return r;
    }
    for (size_t i = 0; i < LLORCH_ARRAY_SIZE(opts); i++) {
        const struct opt *o = &opts[i];
        if (!strcmp(o->flag, "config"))
            continue; /* read before the file */
        char name[64];
        opt_env_name(o, name, sizeof name);
        const char *v = env_lookup(envp, name);
        if (!v)
            continue;
        struct origin src = {"env", name, 0, NULL};
        int r = opt_set(c, o, v, &src, err, errlen);
        if (r)
            return r;
    }
    return 0;
}

/* Walks argv. When only_config, stores --config and skips everything else
 * (values included) so that the file can be applied first. */
static int config_apply_argv(struct config *c, int argc, char **argv, bool only_config, char *err,
                             size_t errlen)
{
    struct origin src = {"flag", NULL, 0, NULL};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == 0)
            return llorch_errf(err, errlen, LLORCH_EINVAL,
                        "unexpected argument '%.64s' (options are --name VALUE or --name=VALUE; "
                        "see --help)",
                        a);
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt *o = opt_find_flag(name, nlen);
        bool negated = false;
        if (!o && nlen > 3 && !strncmp(name, "no-", 3)) {
            o = opt_find_flag(name + 3, nlen - 3);
            if (o && o->type != OPT_BOOL)
                o = NULL;
            negated = o != NULL;
        }
        if (!o)
            return llorch_errf(err, errlen, LLORCH_EINVAL, "unknown option '--%.*s' (see --help)",
                        (int)LLORCH_MIN(nlen, 64), name);
        const char *value;
        if (o->type == OPT_BOOL) {
            if (negated && eq)
                return llorch_errf(err, errlen, LLORCH_EINVAL, "--no-%s takes no value", o->flag);
            value = eq ? eq + 1 : negated ? "false" : "true";
        } else if (eq) {
            value = eq + 1;
        } else {
            if (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2))
                return llorch_errf(err, errlen, LLORCH_EINVAL,
                            "--%s needs a value (%s; use --%s=VALUE for values starting with "
                            "--)",
                            o->flag, o->metavar, o->flag);
            value = argv[++i];
        }
        bool is_config = !strcmp(o->flag, "config");
        if (only_config != is_config)
            continue;
        int r = opt_set(c, o, value, &src, err, errlen);
        if (r)
            return r;
    }
    return 0;
}

/* Reads, trims and checks the API key. */
static int config_read_api_key(struct config *c, char *err, size_t errlen)
{
    char *text;
    size_t len;
    struct stat st;
    int r = read_small_file(c->api_key_file, "--api-key-file", CONFIG_KEY_FILE_MAX, &text, &len,
                            &st, err, errlen);
    if (r)
        return r;
    if (st.st_mode & (S_IROTH | S_IWOTH)) {
        free(text);
        return llorch_errf(err, errlen, LLORCH_EINVAL,
                    "--api-key-file '%s': accessible by others (mode %04o); chmod o-rwx it",
                    c->api_key_file, (unsigned)(st.st_mode & 07777));
    }
    size_t a = 0, b = len;
    while (a < b && is_space(text[a]))
        a++;
    while (b > a && is_space(text[b - 1]))
        b--;
    r = 0;
    if (a == b)
        r = llorch_errf(err, errlen, LLORCH_EINVAL, "--api-key-file '%s': empty key", c->api_key_file);
    else if (b - a >= sizeof c->api_key)
        r = llorch_errf(err, errlen, LLORCH_ETOOBIG,
                 "--api-key-file '%s': key too long (at most %zu bytes)", c->api_key_file,
                 sizeof c->api_key - 1);
    for (size_t i = a; !r && i < b; i++)
        if ((unsigned char)text[i] < 0x20 || text[i] == 0x7f)
            r = llorch_errf(err, errlen, LLORCH_EINVAL,
                     "--api-key-file '%s': key contains a control character or line break",
                     c->api_key_file);
    if (!r) {
        memcpy(c->api_key, text + a, b - a);
        c->api_key[b - a] = 0;
    }
    memset(text, 0, len);
    free(text);
    return r;
}

/* The host part of an http(s) URL (without brackets or port). */
static void url_host(const char *url, const char **host, size_t *len)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *end = p + strcspn(p, "/?#");
    const char *at = memchr(p, '@', (size_t)(end - p));
    if (at)
        p = at + 1;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        *host = p + 1;
        *len = rb ? (size_t)(rb - p - 1) : (size_t)(end - p - 1);
        return;
    }
    const char *colon = memchr(p, ':', (size_t)(end - p));
    *host = p;
    *len = (size_t)((colon ? colon : end) - p);
}

bool config_host_is_loopback(const char *host, size_t len)
{
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
    }
    return (len == 9 && !strncasecmp(host, "localhost", 9)) ||
           (len > 10 && !strncasecmp(host + len - 10, ".localhost", 10)) ||
           (len >= 4 && !strncmp(host, "127.", 4)) || (len == 3 && !strncmp(host, "::1", 3));
}

static bool is_http_url(const char *u)
{
    return !strncmp(u, "http://", 7) || !strncmp(u, "https://", 8);
}

/* A pool manager on another host cannot call back a worker that would
 * advertise a loopback address: refuse to start rather than register an
 * unreachable URL. */
static int config_check_advertised(const struct config *c, char *err, size_t errlen)
{
    if (c->advertise_url[0] && !is_http_url(c->advertise_url))
        return llorch_errf(err, errlen, LLORCH_EINVAL,
                           "--advertise-url: expected an http:// or https:// URL, got '%.64s'",
                           c->advertise_url);
    if (config_callback_is_test_mode(c))
        return 0;
    const char *h;
    size_t n;
    url_host(c->callback_url, &h, &n);
    bool pm_local = config_host_is_loopback(h, n);
    const char *adv = c->advertise_url[0] ? c->advertise_url : NULL;
    bool worker_local;
    if (adv) {
        url_host(adv, &h, &n);
        worker_local = config_host_is_loopback(h, n);
    } else {
        worker_local = config_host_is_loopback(c->host, strlen(c->host));
    }
    if (pm_local || !worker_local)
        return 0;
    url_host(c->callback_url, &h, &n);
    return llorch_errf(err, errlen, LLORCH_EINVAL,
                       "--callback-url: the pool manager at %.*s is on another host, but this "
                       "worker would advertise %s%s, a loopback address it cannot reach; listen "
                       "on a reachable address (--host) or pass --advertise-url URL",
                       (int)LLORCH_MIN(n, (size_t)200), h, adv ? adv : "http://",
                       adv ? "" : c->host);
}

static int config_finish(struct config *c, char *err, size_t errlen)
{
    if (!c->worker_id[0])
        return llorch_errf(err, errlen, LLORCH_EINVAL, "--worker-id: must not be empty");
    for (const char *p = c->worker_id; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return llorch_errf(err, errlen, LLORCH_EINVAL, "--worker-id: contains a control character");
    if (!c->host[0])
        return llorch_errf(err, errlen, LLORCH_EINVAL, "--host: must not be empty");
    if (c->callback_url[0] && strncmp(c->callback_url, "http://", 7) &&
        strncmp(c->callback_url, "https://", 8))
        return llorch_errf(err, errlen, LLORCH_EINVAL,
                    "--callback-url: expected an http:// or https:// URL, got '%.64s'",
                    c->callback_url);
    int ra = config_check_advertised(c, err, errlen);
    if (ra)
        return ra;
    if (c->sse_sndbuf_bytes > 0 && c->sse_sndbuf_bytes < CONFIG_SNDBUF_MIN)
        return llorch_errf(err, errlen, LLORCH_ERANGE,
                    "--sse-sndbuf-bytes: must be 0 (kernel autotuning) or at least %u, got %u",
                    CONFIG_SNDBUF_MIN, c->sse_sndbuf_bytes);
    if (c->callback_backoff_max_ms < c->callback_backoff_ms)
        return llorch_errf(err, errlen, LLORCH_ERANGE,
                    "--callback-backoff-max-ms: must be at least --callback-backoff-ms (%u), "
                    "got %u",
                    c->callback_backoff_ms, c->callback_backoff_max_ms);
    if (!c->model_ref[0] && c->model[0]) {
        const char *base = strrchr(c->model, '/');
        base = base ? base + 1 : c->model;
        size_t blen = strlen(base);
        if (blen >= sizeof c->model_ref)
            return llorch_errf(err, errlen, LLORCH_ETOOBIG,
                        "--model-ref: the model's file name is too long (at most %zu bytes); "
                        "set --model-ref",
                        sizeof c->model_ref - 1);
        memcpy(c->model_ref, base, blen + 1);
    }
    c->api_key[0] = 0;
    if (c->api_key_file[0])
        return config_read_api_key(c, err, errlen);
    return 0;
}

int config_parse(struct config *c, int argc, char **argv, char **envp, bool *exit_now, char *err,
                 size_t errlen)
{
    if (err && errlen)
        err[0] = 0;
    *exit_now = false;
    config_defaults(c);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            config_print_help(stdout);
            fflush(stdout);
            *exit_now = true;
            return 0;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("llorch-cpud %s\n", LLORCH_VERSION);
            fflush(stdout);
            *exit_now = true;
            return 0;
        }
    }
    /* The config file's path: flag, then env. */
    const char *cf = env_lookup(envp, "LLORCH_CONFIG");
    if (cf) {
        struct origin src = {"env", "LLORCH_CONFIG", 0, NULL};
        int r = opt_set(c, opt_find_flag("config", 6), cf, &src, err, errlen);
        if (r)
            return r;
    }
    int r = config_apply_argv(c, argc, argv, true, err, errlen);
    if (r)
        return r;
    if (c->config_file[0]) {
        char path[sizeof c->config_file];
        memcpy(path, c->config_file, sizeof path);
        r = config_apply_file(c, path, err, errlen);
        if (r)
            return r;
    }
    r = config_apply_env(c, envp, err, errlen);
    if (r)
        return r;
    r = config_apply_argv(c, argc, argv, false, err, errlen);
    if (r)
        return r;
    return config_finish(c, err, errlen);
}

bool config_callback_is_test_mode(const struct config *c)
{
    return !c->callback_url[0] || strstr(c->callback_url, "localhost:9999") != NULL;
}
