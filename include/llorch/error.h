/* Error codes of llorch: one X-macro table generates the codes, their names
 * and their messages. Every function that can fail returns 0 or one of these
 * negative codes; errno, oneDNN, libuv, libcurl and llhttp errors are
 * translated once, at the boundary of the module that calls them. */
#ifndef LLORCH_ERROR_H
#define LLORCH_ERROR_H

#define LLORCH_ERRNO_MAP(XX)                                                   \
    XX(NOMEM, "out of memory")                                                 \
    XX(INVAL, "invalid argument")                                              \
    XX(IO, "input/output error")                                               \
    XX(FORMAT, "malformed input")                                              \
    XX(RANGE, "value out of range")                                            \
    XX(OVERFLOW, "size arithmetic overflow")                                   \
    XX(UNSUPPORTED, "not supported")                                           \
    XX(NOTFOUND, "not found")                                                  \
    XX(EXISTS, "already exists")                                               \
    XX(UTF8, "invalid UTF-8")                                                  \
    XX(FULL, "queue full")                                                     \
    XX(KV_EXHAUSTED, "KV cache exhausted")                                     \
    XX(CANCELLED, "cancelled")                                                 \
    XX(TIMEOUT, "timed out")                                                   \
    XX(SHUTDOWN, "shutting down")                                              \
    XX(AGAIN, "try again")                                                     \
    XX(TOOBIG, "too large")                                                    \
    XX(DNNL, "oneDNN failure")                                                 \
    XX(UV, "libuv failure")                                                    \
    XX(CURL, "libcurl failure")                                                \
    XX(STAGE_LOST, "a pipeline stage was lost")                                \
    XX(INTERNAL, "internal error")

/* Indices first, then the negative codes derived from them, so the table
 * stays the single place where an error is added. */
enum llorch_err_index {
#define LLORCH_XX_(name, msg) LLORCH_ERRIDX_##name,
    LLORCH_ERRNO_MAP(LLORCH_XX_)
#undef LLORCH_XX_
    LLORCH_ERRIDX_COUNT_
};

enum llorch_err {
    LLORCH_OK = 0,
#define LLORCH_XX_(name, msg) LLORCH_E##name = -1 - LLORCH_ERRIDX_##name,
    LLORCH_ERRNO_MAP(LLORCH_XX_)
#undef LLORCH_XX_
};

/* Message for an error code ("unknown error" for anything not in the table).
 * The returned string is static. */
const char *llorch_strerror(int err);

/* Symbolic name ("LLORCH_ENOMEM") for an error code. */
const char *llorch_err_name(int err);

/* Translates a positive or negative errno value to an llorch code. */
int llorch_err_from_errno(int errnum);

#endif
