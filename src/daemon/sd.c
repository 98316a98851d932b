/* systemd notifications and socket activation. The watchdog timer runs on
 * the loop, so a ping proves the loop is alive; the optional `alive` check
 * lets the daemon also require engine progress before pinging. */
#include "sd.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "llorch/error.h"
#include "util.h"

struct llorch_sd {
    uv_loop_t *loop;
    uv_timer_t watchdog;
    struct log *log;
    uint64_t period_ms; /* 0 = no watchdog */
    bool notify;        /* NOTIFY_SOCKET set */
    bool ready, closing;
    bool (*alive)(void *ctx);
    void *alive_ctx;
    uint64_t pings, skipped;
    void (*close_cb)(void *ctx);
    void *close_ctx;
};

int llorch_sd_listen_fd(int *fd, char *err, size_t errlen)
{
    *fd = -1;
    int n = sd_listen_fds(1);
    if (n < 0) {
        snprintf(err, errlen, "socket activation: %s", strerror(-n));
        return LLORCH_EINVAL;
    }
    if (n == 0)
        return 0;
    if (n > 1) {
        snprintf(err, errlen,
                 "socket activation: %d sockets passed, expected one (one ListenStream= line)", n);
        return LLORCH_EINVAL;
    }
    int s = SD_LISTEN_FDS_START;
    if (sd_is_socket(s, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
        snprintf(err, errlen, "socket activation: fd %d is not a listening stream socket", s);
        return LLORCH_EINVAL;
    }
    if (sd_is_socket_inet(s, AF_UNSPEC, SOCK_STREAM, 1, 0) <= 0) {
        snprintf(err, errlen, "socket activation: fd %d is not a TCP socket", s);
        return LLORCH_EINVAL;
    }
    *fd = s;
    return 0;
}

int llorch_sd_new(struct llorch_sd **out, uv_loop_t *loop, struct log *log)
{
    *out = NULL;
    struct llorch_sd *s = calloc(1, sizeof *s);
    if (!s)
        return LLORCH_ENOMEM;
    s->loop = loop;
    s->log = log;
    const char *ns = getenv("NOTIFY_SOCKET");
    s->notify = ns && *ns;
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0)
        s->period_ms = LLORCH_MAX(usec / 2000, 1);
    uv_timer_init(loop, &s->watchdog);
    s->watchdog.data = s;
    *out = s;
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    struct llorch_sd *s = h->data;
    void (*cb)(void *) = s->close_cb;
    void *ctx = s->close_ctx;
    free(s);
    if (cb)
        cb(ctx);
}

void llorch_sd_close(struct llorch_sd *s, void (*cb)(void *ctx), void *ctx)
{
    if (!s) {
        if (cb)
            cb(ctx);
        return;
    }
    if (s->closing)
        return;
    s->closing = true;
    s->close_cb = cb;
    s->close_ctx = ctx;
    uv_timer_stop(&s->watchdog);
    uv_close((uv_handle_t *)&s->watchdog, on_closed);
}

static void on_watchdog(uv_timer_t *t)
{
    struct llorch_sd *s = t->data;
    if (s->alive && !s->alive(s->alive_ctx)) {
        /* Log the first skipped ping only: systemd will act on the silence. */
        if (s->skipped++ == 0)
            log_write(s->log, LOG_LEVEL_ERROR,
                      "engine not making progress; withholding the systemd watchdog ping", NULL, 0);
        return;
    }
    s->skipped = 0;
    s->pings++;
    sd_notify(0, "WATCHDOG=1");
}

void llorch_sd_ready(struct llorch_sd *s, const char *status, bool (*alive)(void *ctx), void *ctx)
{
    if (!s || s->ready)
        return;
    s->ready = true;
    s->alive = alive;
    s->alive_ctx = ctx;
    sd_notifyf(0, "READY=1\nSTATUS=%s\nMAINPID=%lu", status ? status : "serving",
               (unsigned long)getpid());
    if (s->period_ms) {
        struct log_field f[] = {LOG_F_UINT("period_ms", s->period_ms)};
        log_write(s->log, LOG_LEVEL_INFO, "systemd watchdog pings on", f, 1);
        on_watchdog(&s->watchdog); /* one at once, then every period */
        uv_timer_start(&s->watchdog, on_watchdog, s->period_ms, s->period_ms);
    }
}

void llorch_sd_status(struct llorch_sd *s, const char *fmt, ...)
{
    if (!s || !s->notify)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *p = buf; *p; p++) /* one line: a newline would start a new assignment */
        if (*p == '\n')
            *p = ' ';
    sd_notifyf(0, "STATUS=%s", buf);
}

void llorch_sd_loading(struct llorch_sd *s, double progress, uint32_t extend_ms)
{
    if (!s || !s->notify)
        return;
    int pct = (int)(progress * 100.0 + 0.5);
    pct = pct < 0 ? 0 : pct > 100 ? 100 : pct;
    sd_notifyf(0, "STATUS=loading model %d%%\nEXTEND_TIMEOUT_USEC=%llu", pct,
               (unsigned long long)extend_ms * 1000ull);
}

void llorch_sd_stopping(struct llorch_sd *s, const char *status)
{
    if (!s)
        return;
    sd_notifyf(0, "STOPPING=1\nSTATUS=%s", status ? status : "stopping");
}

uint64_t llorch_sd_watchdog_period_ms(const struct llorch_sd *s)
{
    return s ? s->period_ms : 0;
}

bool llorch_sd_notify_enabled(const struct llorch_sd *s)
{
    return s && s->notify;
}
