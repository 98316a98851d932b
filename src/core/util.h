/* Small internal helpers shared by every module: visibility, container_of,
 * overflow-checked size arithmetic. Nothing here allocates. */
#ifndef LLORCH_UTIL_H
#define LLORCH_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* Symbols of the public API; everything else stays hidden
 * (-fvisibility=hidden). */
#define LLORCH_API __attribute__((visibility("default")))

#define LLORCH_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define llorch_container_of(ptr, type, member)                                 \
    ((type *)((char *)(ptr) - offsetof(type, member)))

#define LLORCH_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LLORCH_MAX(a, b) ((a) > (b) ? (a) : (b))

#define LLORCH_UNUSED(x) ((void)(x))

/* Overflow-checked arithmetic: return true when the result does not fit. */
static inline bool llorch_add_overflows(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

static inline bool llorch_mul_overflows(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

static inline bool llorch_size_mul_overflows(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

static inline bool llorch_size_add_overflows(size_t a, size_t b, size_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

/* Writes a one-line message into err (when err and errlen are non-zero) and
 * returns code: `return llorch_errf(err, errlen, LLORCH_EFORMAT, "...", ...)`.
 * The one place module boundaries turn a failure into caller-visible text. */
int llorch_errf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Round up to a power-of-two alignment; the caller checks overflow. */
static inline uint64_t llorch_align_up(uint64_t x, uint64_t align)
{
    return (x + align - 1) & ~(align - 1);
}

#endif
