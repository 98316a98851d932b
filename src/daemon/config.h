/* The validated, immutable process configuration: every option as a long
 * CLI flag, an LLORCH_* environment variable and a `key = value` line of the
 * --config file; precedence flag > env > file > default. The only
 * process-wide state, passed by pointer. */
#ifndef LLORCH_CONFIG_H
#define LLORCH_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/llorch.h"
#include "log.h"

/* Smallest non-zero --sse-sndbuf-bytes (below it the kernel rounds up anyway). */
#define CONFIG_SNDBUF_MIN 4096u

struct config {
    /* identity and model */
    char worker_id[128];          /* --worker-id (default: hostname) */
    char model[4096];             /* --model PATH (required for the daemon) */
    char model_ref[512];          /* --model-ref (default: the file name) */
    char callback_url[2048];      /* --callback-url; contains localhost:9999 = test mode */
    char api_key_file[4096];      /* --api-key-file; empty = no auth */
    char api_key[256];            /* read from api_key_file at start-up */
    char chat_template[64];       /* --chat-template NAME; empty = from the file */
    /* network */
    char host[256];               /* --host, default 127.0.0.1 */
    char advertise_url[2048];     /* --advertise-url: the worker's URL in the ready callback;
                                     empty = http://<host>:<port> */
    uint16_t port;                /* --port, default 8080 */
    uint32_t max_connections;     /* --max-connections, default 16384 */
    uint32_t max_header_bytes;    /* --max-header-bytes, default 16384 */
    uint64_t max_body_bytes;      /* --max-body-bytes, default 2 MiB */
    uint32_t header_timeout_ms;   /* --header-timeout-ms, default 10000 */
    uint32_t idle_timeout_ms;     /* --idle-timeout-ms, default 60000 */
    uint64_t sse_outbox_bytes;    /* --sse-outbox-bytes, default 1 MiB */
    uint32_t sse_sndbuf_bytes;    /* --sse-sndbuf-bytes: SO_SNDBUF of streaming connections,
                                   * 0 (default) = kernel autotuning, else >= CONFIG_SNDBUF_MIN */
    uint32_t ping_interval_ms;    /* --ping-interval-ms, default 15000 */
    uint32_t resume_grace_ms;     /* --resume-grace-ms, default 5000, 0 = no resumable streams */
    uint64_t resume_job_bytes;    /* --resume-job-bytes, default 1 MiB */
    uint64_t resume_total_bytes;  /* --resume-total-bytes, default 64 MiB */
    uint32_t drain_timeout_ms;    /* --drain-timeout-ms, default 30000 */
    /* engine */
    uint32_t threads;             /* --threads, 0 = online CPUs */
    bool cpu_pinning;             /* --cpu-pinning */
    uint32_t max_batch;           /* --max-batch, default 32 */
    uint32_t max_queue;           /* --max-queue, default 256 */
    uint32_t step_tokens;         /* --step-tokens, default 512 */
    uint32_t itl_target_ms;       /* --itl-target-ms, default 0 = itl_target_pct of a decode step */
    uint32_t itl_target_pct;      /* --itl-target-pct, default 200 */
    uint32_t kv_cache_mb;         /* --kv-cache-mb, default 1024 */
    uint32_t ctx;                 /* --ctx, 0 = the model's training context */
    uint32_t batch_window_ms;     /* --batch-window-ms, default 0 (ChatLoop batching_window_ms) */
    enum llorch_dtype dtype;      /* --dtype auto|f32|bf16|int8|native */
    enum llorch_isa isa;          /* --isa auto|scalar|avx2|avxvnni|avx512 (ChatLoop enable_simd =
                                   * false: scalar) */
    bool pipeline;                /* --pipeline: an MPI pipeline (rank 0 serves) */
    char layers[512];             /* --layers A-B,C-D,...: stage ranges; empty = even split */
    uint32_t pipeline_groups;     /* --pipeline-groups: micro-batch groups in flight, 0 = one
                                   * per stage (default), 1 = none (one step at a time) */
    uint32_t stage_timeout_ms;    /* --stage-timeout-ms: no answer and no heartbeat from any
                                   * stage for this long = a stage is lost; default 10000,
                                   * 0 = never (MPI's own detection only) */
    enum llorch_kv_type kv_type;  /* --kv auto|f32|f16|bf16 */
    /* operations */
    uint32_t heartbeat_interval_s;   /* --heartbeat-interval, 0 = off, default 30; sent only
                                      * when a (non-test-mode) callback URL is set */
    uint32_t callback_max_retries;   /* --callback-max-retries, default 8 */
    uint32_t callback_backoff_ms;    /* --callback-backoff-ms, first delay, default 500 */
    uint32_t callback_backoff_max_ms; /* --callback-backoff-max-ms, delay cap, default 30000 */
    enum log_format log_format; /* --log-format json|text */
    enum log_level log_level;   /* --log-level debug|info|warn|error */
    char config_file[4096];       /* --config FILE */
};

/* Fills c with defaults. */
void config_defaults(struct config *c);

/* Parses argv (argv[0] is the program), the environment (envp, NULL-terminated
 * "K=V" strings) and the --config file. Returns 0, or a negative code with a
 * message naming the option and the accepted range in err. Sets *exit_now
 * (and prints to stdout) for --help and --version. Fills derived fields:
 * worker_id (hostname) and model_ref (the model's file name) when not given,
 * api_key from api_key_file. Does not require --model: the daemon checks. */
int config_parse(struct config *c, int argc, char **argv, char **envp, bool *exit_now, char *err,
                 size_t errlen);

/* True when the callback URL means "no pool manager" (test mode). */
bool config_callback_is_test_mode(const struct config *c);
/* localhost, *.localhost, 127.0.0.0/8 or ::1 (brackets allowed): bytes plus
 * length. */
bool config_host_is_loopback(const char *host, size_t len);

#endif
