/* Pool-manager client: once the worker listens, POSTs the ready payload of the
 * worker contract to the callback URL, retrying with bounded exponential
 * back-off, then (optionally) POSTs a heartbeat to <root>/v1/heartbeat every
 * heartbeat_interval_s. libcurl's multi interface runs on the caller's libuv
 * loop (uv_poll per socket, one uv_timer for curl's timeouts); no thread.
 * Failures never stop serving: they are logged, counted (opts.count) and
 * visible through mgr_status() for /health. A callback URL containing
 * localhost:9999 (or none) is test mode: nothing is sent.
 * Every function runs on the loop thread only (asserted: the thread that
 * called mgr_new). */
#ifndef LLORCH_MGR_H
#define LLORCH_MGR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "log.h"

/* What the client counts, through mgr_opts.count (e.g. into metrics). */
enum mgr_count {
    MGR_COUNT_CALLBACK_ATTEMPT,   /* a ready-callback POST sent */
    MGR_COUNT_CALLBACK_FAILURE,   /* one that failed */
    MGR_COUNT_HEARTBEAT,          /* a heartbeat POST sent */
    MGR_COUNT_HEARTBEAT_FAILURE,  /* one that failed */
};

struct mgr_opts {
    const char *callback_url; /* "" or NULL = no pool manager */
    const char *worker_id;
    const char *worker_url; /* this worker's base URL, see mgr_format_worker_url() */
    const char *model_ref;
    uint64_t memory_bytes;         /* resident model + KV cache */
    uint16_t port;                 /* the bound port */
    uint32_t max_retries;          /* after the first attempt */
    uint32_t backoff_ms;           /* first retry delay, doubled per retry */
    uint32_t backoff_max_ms;       /* delay cap */
    uint32_t heartbeat_interval_s; /* 0 = no heartbeats */
    uint32_t timeout_ms;           /* per POST; 0 = 10000 */
    /* "healthy" or "degraded" for heartbeats; NULL = always "healthy". */
    const char *(*health_status)(void *ctx);
    void *health_ctx;
    struct log *log;         /* may be NULL */
    /* Called on the loop thread for every counted event; may be NULL. */
    void (*count)(void *ctx, enum mgr_count what);
    void *count_ctx;
};

enum mgr_status {
    MGR_DISABLED,    /* test mode or no callback URL */
    MGR_PENDING,     /* created, mgr_start() not called yet */
    MGR_REGISTERING, /* a callback POST is in flight */
    MGR_RETRYING,    /* waiting for the next attempt */
    MGR_REGISTERED,  /* the pool manager answered 2xx */
    MGR_FAILED,      /* gave up after max_retries; still serving */
};

struct mgr_state {
    enum mgr_status status;
    uint32_t attempts;     /* callback POSTs sent */
    long last_http_status; /* 0 = no HTTP answer */
    char last_error[256];  /* "" when the last attempt succeeded */
    uint64_t heartbeats_sent;
    uint64_t heartbeats_failed;
    bool heartbeat_ok; /* the last heartbeat was answered 2xx */
};

struct mgr;

/* Copies every string of o. Returns 0, LLORCH_ENOMEM, LLORCH_EINVAL (bad
 * callback URL) or LLORCH_ECURL. */
int mgr_new(struct mgr **out, uv_loop_t *loop, const struct mgr_opts *o);
/* Sends the first callback (after listen and READY); idempotent. */
int mgr_start(struct mgr *m);
/* Cancels transfers and timers; m is freed once every handle is closed,
 * then cb(ctx) runs (cb may be NULL). NULL m is allowed (cb still runs). */
void mgr_close(struct mgr *m, void (*cb)(void *ctx), void *ctx);

enum mgr_status mgr_state_get(const struct mgr *m, struct mgr_state *out);
/* "disabled", "pending", "registering", "retrying", "registered", "failed";
 * a NULL m is "disabled". */
const char *mgr_status(const struct mgr *m);
const char *mgr_status_name(enum mgr_status s);

/* Delay before retry number n (1-based): backoff_ms * 2^(n-1), capped. */
uint32_t mgr_backoff_delay_ms(uint32_t backoff_ms, uint32_t backoff_max_ms, uint32_t n);

/* "http://HOST:PORT" for the payload's url/uri: a wildcard host (0.0.0.0,
 * ::, empty) becomes the machine's hostname, IPv6 literals get brackets.
 * Returns 0 or LLORCH_ETOOBIG. */
int mgr_format_worker_url(const char *host, uint16_t port, char *buf, size_t n);

#endif
