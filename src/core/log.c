/* Structured log lines. A line is built in a buffer (on the stack, on the
 * heap past 4 KiB, capped at LOG_LINE_MAX with string values truncated) and
 * leaves with one write(2), so concurrent writers never interleave within a
 * line. JSON output is always valid UTF-8: control characters are escaped and
 * invalid UTF-8 bytes become U+FFFD. The struct log is immutable after
 * log_new, hence safe to share between threads. */
#include "log.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "llorch/error.h"
#include "util.h"

#define LOG_STACK_BYTES 4096
#define LOG_LINE_MAX (64 * 1024)
#define LOG_WORKER_ID_MAX 128

struct log {
    int fd;
    enum log_format format;
    enum log_level level;
    char worker_id[LOG_WORKER_ID_MAX];
};

/* ---- a growable line buffer that never fails: past the cap it truncates */

struct lbuf {
    char *p;
    size_t len, cap;
    bool heap;
    bool truncated;
    char stack[LOG_STACK_BYTES];
};

static void lbuf_init(struct lbuf *b)
{
    b->p = b->stack;
    b->len = 0;
    b->cap = sizeof b->stack;
    b->heap = false;
    b->truncated = false;
}

static void lbuf_free(struct lbuf *b)
{
    if (b->heap)
        free(b->p);
}

/* Room for n more bytes, keeping 8 in reserve for the line's end. */
static bool lbuf_reserve(struct lbuf *b, size_t n)
{
    if (b->len + n + 8 <= b->cap)
        return true;
    if (b->len + n + 8 > LOG_LINE_MAX) {
        b->truncated = true;
        return false;
    }
    size_t cap = b->cap * 2;
    while (cap < b->len + n + 8)
        cap *= 2;
    if (cap > LOG_LINE_MAX)
        cap = LOG_LINE_MAX;
    char *p = b->heap ? realloc(b->p, cap) : malloc(cap);
    if (!p) {
        b->truncated = true;
        return false;
    }
    if (!b->heap)
        memcpy(p, b->stack, b->len);
    b->p = p;
    b->cap = cap;
    b->heap = true;
    return true;
}

static void lbuf_put(struct lbuf *b, const char *s, size_t n)
{
    if (!lbuf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

/* The line's end always fits: every reservation keeps 8 bytes spare. */
static void lbuf_put_end(struct lbuf *b, const char *s)
{
    size_t n = strlen(s);
    if (n > 8 || b->len + n > b->cap)
        n = 0;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void lbuf_puts(struct lbuf *b, const char *s)
{
    lbuf_put(b, s, strlen(s));
}

static void lbuf_printf(struct lbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lbuf_printf(struct lbuf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        lbuf_put(b, tmp, LLORCH_MIN((size_t)n, sizeof tmp - 1));
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Appends s as the inside of a JSON string (json), or as text where only
 * control characters are escaped (so a text line stays one line). */
static void lbuf_put_escaped(struct lbuf *b, const char *s, bool json)
{
    const unsigned char *u = (const unsigned char *)(s ? s : "(null)");
    size_t n = strlen((const char *)u);
    size_t i = 0;
    while (i < n) {
        /* copy the longest run that needs no escaping */
        size_t run = i;
        while (run < n && u[run] >= 0x20 && u[run] < 0x7f &&
               ((u[run] != '"' && u[run] != '\\') || !json))
            run++;
        if (run > i) {
            if (!lbuf_reserve(b, run - i))
                return;
            lbuf_put(b, (const char *)u + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = u[i];
        if (c >= 0x80) {
            size_t l = utf8_seq_len(u + i, n - i);
            if (l) {
                if (!lbuf_reserve(b, l))
                    return;
                lbuf_put(b, (const char *)u + i, l);
                i += l;
            } else {
                lbuf_put(b, "\xef\xbf\xbd", 3); /* U+FFFD */
                i++;
            }
            continue;
        }
        char esc[8];
        switch (c) {
        case '"':
            lbuf_put(b, "\\\"", 2);
            break;
        case '\\':
            lbuf_put(b, "\\\\", 2);
            break;
        case '\n':
            lbuf_put(b, "\\n", 2);
            break;
        case '\r':
            lbuf_put(b, "\\r", 2);
            break;
        case '\t':
            lbuf_put(b, "\\t", 2);
            break;
        case '\b':
            lbuf_put(b, "\\b", 2);
            break;
        case '\f':
            lbuf_put(b, "\\f", 2);
            break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", c);
            lbuf_put(b, esc, 6);
            break;
        }
        if (b->truncated)
            return;
        i++;
    }
}

static void lbuf_put_json_string(struct lbuf *b, const char *s)
{
    lbuf_put(b, "\"", 1);
    lbuf_put_escaped(b, s, true);
    lbuf_put(b, "\"", 1);
}

/* Text values: bare when they are one plain word, else quoted. */
static void lbuf_put_text_value(struct lbuf *b, const char *s)
{
    bool bare = s && *s;
    for (const char *p = s; bare && *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
            bare = false;
    if (bare) {
        lbuf_puts(b, s);
        return;
    }
    lbuf_put_json_string(b, s);
}

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const level_names_text[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

static void put_timestamp(struct lbuf *b)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    time_t sec = ts.tv_sec;
    gmtime_r(&sec, &tm);
    char tmp[96];
    snprintf(tmp, sizeof tmp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (long)(ts.tv_nsec / 1000000));
    lbuf_puts(b, tmp);
}

static void put_double(struct lbuf *b, double d, bool json)
{
    if (!isfinite(d)) {
        lbuf_puts(b, json ? "null" : (isnan(d) ? "nan" : d > 0 ? "inf" : "-inf"));
        return;
    }
    lbuf_printf(b, "%.15g", d);
}

static void put_field_value(struct lbuf *b, const struct log_field *f, bool json)
{
    switch (f->type) {
    case LOG_STR:
        if (json) {
            if (f->v.s)
                lbuf_put_json_string(b, f->v.s);
            else
                lbuf_puts(b, "null");
        } else {
            lbuf_put_text_value(b, f->v.s);
        }
        break;
    case LOG_INT:
        lbuf_printf(b, "%lld", (long long)f->v.i);
        break;
    case LOG_UINT:
        lbuf_printf(b, "%llu", (unsigned long long)f->v.u);
        break;
    case LOG_DBL:
        put_double(b, f->v.d, json);
        break;
    case LOG_BOOL:
        lbuf_puts(b, f->v.b ? "true" : "false");
        break;
    }
}

/* Writes the whole line with one write(2) when the kernel takes it; only a
 * short write (pipes past PIPE_BUF, full disks) continues with a second. */
static void write_all(int fd, const char *p, size_t n)
{
    int tries = 0;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && tries++ < 10) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            poll(&pfd, 1, 10);
            continue;
        }
        return; /* nowhere to report a failing log */
    }
}

static void log_emit(int fd, enum log_format format, const char *worker_id,
                     enum log_level level, const char *msg, const struct log_field *fields,
                     size_t n_fields)
{
    if ((unsigned)level > LOG_LEVEL_ERROR)
        level = LOG_LEVEL_ERROR;
    struct lbuf b;
    lbuf_init(&b);
    if (format == LOG_FORMAT_JSON) {
        lbuf_puts(&b, "{\"ts\":\"");
        put_timestamp(&b);
        lbuf_puts(&b, "\",\"level\":\"");
        lbuf_puts(&b, level_names[level]);
        lbuf_puts(&b, "\",\"msg\":");
        lbuf_put_json_string(&b, msg ? msg : "");
        if (worker_id) {
            lbuf_puts(&b, ",\"worker_id\":");
            lbuf_put_json_string(&b, worker_id);
        }
        for (size_t i = 0; i < n_fields && !b.truncated; i++) {
            lbuf_puts(&b, ",");
            lbuf_put_json_string(&b, fields[i].key ? fields[i].key : "");
            lbuf_puts(&b, ":");
            put_field_value(&b, &fields[i], true);
        }
        if (b.truncated) {
            /* Rebuild the end so the line is still one valid object: drop
             * everything after the last complete prefix we can prove valid. */
            b.truncated = false;
            lbuf_free(&b);
            lbuf_init(&b);
            lbuf_puts(&b, "{\"ts\":\"");
            put_timestamp(&b);
            lbuf_puts(&b, "\",\"level\":\"");
            lbuf_puts(&b, level_names[level]);
            lbuf_puts(&b, "\",\"msg\":\"");
            /* escaping grows a byte to at most 6 */
            char *cut = strndup(msg ? msg : "", LOG_LINE_MAX / 8);
            lbuf_put_escaped(&b, cut ? cut : "", true);
            free(cut);
            lbuf_puts(&b, "\",\"truncated\":true");
            if (worker_id) {
                lbuf_puts(&b, ",\"worker_id\":");
                lbuf_put_json_string(&b, worker_id);
            }
        }
        lbuf_put_end(&b, "}\n");
    } else {
        put_timestamp(&b);
        lbuf_puts(&b, " ");
        lbuf_puts(&b, level_names_text[level]);
        lbuf_puts(&b, " ");
        lbuf_put_escaped(&b, msg ? msg : "", false);
        for (size_t i = 0; i < n_fields && !b.truncated; i++) {
            lbuf_puts(&b, " ");
            lbuf_put_escaped(&b, fields[i].key ? fields[i].key : "", false);
            lbuf_puts(&b, "=");
            put_field_value(&b, &fields[i], false);
        }
        lbuf_put_end(&b, b.truncated ? " [cut]\n" : "\n");
    }
    write_all(fd, b.p, b.len);
    lbuf_free(&b);
}

int log_new(struct log **out, int fd, enum log_format format, enum log_level level,
            const char *worker_id)
{
    *out = NULL;
    if (fd < 0 || (unsigned)format > LOG_FORMAT_TEXT || (unsigned)level > LOG_LEVEL_ERROR)
        return LLORCH_EINVAL;
    struct log *l = calloc(1, sizeof *l);
    if (!l)
        return LLORCH_ENOMEM;
    l->fd = fd;
    l->format = format;
    l->level = level;
    snprintf(l->worker_id, sizeof l->worker_id, "%s", worker_id ? worker_id : "");
    *out = l;
    return 0;
}

void log_free(struct log *l)
{
    free(l);
}

bool log_enabled(const struct log *l, enum log_level level)
{
    return level >= (l ? l->level : LOG_LEVEL_INFO);
}

const char *log_level_name(enum log_level level)
{
    return (unsigned)level <= LOG_LEVEL_ERROR ? level_names[level] : "error";
}

void log_write(struct log *l, enum log_level level, const char *msg,
               const struct log_field *fields, size_t n_fields)
{
    if (!log_enabled(l, level))
        return;
    if (!l) {
        log_emit(2, LOG_FORMAT_TEXT, NULL, level, msg, fields, n_fields);
        return;
    }
    log_emit(l->fd, l->format, l->worker_id, level, msg, fields, n_fields);
}

void log_printf(struct log *l, enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(l, level))
        return;
    char stack[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(stack, sizeof stack, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof stack) {
        log_write(l, level, stack, NULL, 0);
        return;
    }
    size_t cap = LLORCH_MIN((size_t)n + 1, (size_t)LOG_LINE_MAX);
    char *heap = malloc(cap);
    if (!heap) {
        log_write(l, level, stack, NULL, 0);
        return;
    }
    va_start(ap, fmt);
    vsnprintf(heap, cap, fmt, ap);
    va_end(ap);
    log_write(l, level, heap, NULL, 0);
    free(heap);
}
