/* systemd integration (libsystemd's sd-daemon): READY=1 / STOPPING=1 /
 * STATUS= / EXTEND_TIMEOUT_USEC= notifications, WATCHDOG=1 pings from a loop
 * timer at half of WATCHDOG_USEC, and socket activation (LISTEN_FDS) for
 * uv_tcp_open. Without NOTIFY_SOCKET every notification is a no-op, so the
 * daemon calls these unconditionally. Functions are prefixed llorch_sd_
 * because sd_* belongs to libsystemd. Loop thread only. */
#ifndef LLORCH_SD_H
#define LLORCH_SD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "log.h"

struct llorch_sd;

/* Returns 0 with *fd = the listening TCP socket passed by systemd, or
 * *fd = -1 when not socket-activated; LLORCH_EINVAL (with a message) when
 * more than one socket or a non-listening/non-TCP socket was passed. The
 * LISTEN_* variables are removed from the environment. */
int llorch_sd_listen_fd(int *fd, char *err, size_t errlen);

/* Reads WATCHDOG_USEC/WATCHDOG_PID. log may be NULL. */
int llorch_sd_new(struct llorch_sd **out, uv_loop_t *loop, struct log *log);
/* Stops the watchdog; frees after the timer is closed, then cb(ctx). NULL
 * is allowed (cb still runs). */
void llorch_sd_close(struct llorch_sd *s, void (*cb)(void *ctx), void *ctx);

/* READY=1 with a STATUS line, and starts the watchdog pings when systemd
 * asked for them. alive (may be NULL) is asked before each ping: returning
 * false skips it, so a wedged engine lets systemd restart us. */
void llorch_sd_ready(struct llorch_sd *s, const char *status, bool (*alive)(void *ctx), void *ctx);
/* STATUS=<text> (e.g. "loading model 42%", "serving, 3 streams"). */
void llorch_sd_status(struct llorch_sd *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* During start-up: STATUS plus EXTEND_TIMEOUT_USEC so that a large model
 * does not hit TimeoutStartSec while it is still making progress. */
void llorch_sd_loading(struct llorch_sd *s, double progress, uint32_t extend_ms);
/* STOPPING=1 with a STATUS line; pings continue while draining. */
void llorch_sd_stopping(struct llorch_sd *s, const char *status);

/* Whether systemd asked for watchdog pings, and their period (half of
 * WATCHDOG_USEC) in ms; 0 when off. */
uint64_t llorch_sd_watchdog_period_ms(const struct llorch_sd *s);
/* Whether NOTIFY_SOCKET is set (we run under systemd Type=notify). */
bool llorch_sd_notify_enabled(const struct llorch_sd *s);

#endif
