/* Structured logs: one JSON object per line on stderr (ts, level, msg,
 * worker_id, then the caller's fields), or a human-readable text form.
 * Thread-safe: each line is written with a single write(2). */
#ifndef LLORCH_LOG_H
#define LLORCH_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* --log-format and --log-level (the config module parses them). */
enum log_format { LOG_FORMAT_JSON, LOG_FORMAT_TEXT };
enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

struct log;

/* A typed field for structured lines. */
enum log_field_type { LOG_STR, LOG_INT, LOG_UINT, LOG_DBL, LOG_BOOL };
struct log_field {
    const char *key;
    enum log_field_type type;
    union {
        const char *s;
        int64_t i;
        uint64_t u;
        double d;
        int b;
    } v;
};
#define LOG_F_STR(k, x) ((struct log_field){.key = (k), .type = LOG_STR, .v.s = (x)})
#define LOG_F_INT(k, x) ((struct log_field){.key = (k), .type = LOG_INT, .v.i = (x)})
#define LOG_F_UINT(k, x) ((struct log_field){.key = (k), .type = LOG_UINT, .v.u = (x)})
#define LOG_F_DBL(k, x) ((struct log_field){.key = (k), .type = LOG_DBL, .v.d = (x)})
#define LOG_F_BOOL(k, x) ((struct log_field){.key = (k), .type = LOG_BOOL, .v.b = (x)})

/* fd is usually 2. worker_id is copied. */
int log_new(struct log **out, int fd, enum log_format format, enum log_level level,
            const char *worker_id);
void log_free(struct log *l); /* NULL is safe */

/* Whether a line at level would be written (to skip building costly fields). */
bool log_enabled(const struct log *l, enum log_level level);
/* "debug", "info", "warn", "error". */
const char *log_level_name(enum log_level level);

/* msg is plain text (escaped as needed); fields may be NULL/0. A NULL log
 * writes text lines to stderr (useful before configuration is parsed). */
void log_write(struct log *l, enum log_level level, const char *msg,
               const struct log_field *fields, size_t n_fields);
/* printf-style convenience without fields. */
void log_printf(struct log *l, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
