/* The message and name tables generated from LLORCH_ERRNO_MAP, and the one
 * place where errno values become llorch codes. */
#include "llorch/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "util.h"

static const char *const err_messages[] = {
#define LLORCH_XX_(name, msg) [LLORCH_ERRIDX_##name] = msg,
    LLORCH_ERRNO_MAP(LLORCH_XX_)
#undef LLORCH_XX_
};

static const char *const err_names[] = {
#define LLORCH_XX_(name, msg) [LLORCH_ERRIDX_##name] = "LLORCH_E" #name,
    LLORCH_ERRNO_MAP(LLORCH_XX_)
#undef LLORCH_XX_
};

LLORCH_API const char *llorch_strerror(int err)
{
    if (err == 0)
        return "success";
    int idx = -1 - err;
    if (idx < 0 || idx >= LLORCH_ERRIDX_COUNT_)
        return "unknown error";
    return err_messages[idx];
}

LLORCH_API const char *llorch_err_name(int err)
{
    if (err == 0)
        return "LLORCH_OK";
    int idx = -1 - err;
    if (idx < 0 || idx >= LLORCH_ERRIDX_COUNT_)
        return "LLORCH_EUNKNOWN";
    return err_names[idx];
}

LLORCH_API int llorch_err_from_errno(int errnum)
{
    if (errnum < 0)
        errnum = -errnum;
    switch (errnum) {
    case 0: return 0;
    case ENOMEM: return LLORCH_ENOMEM;
    case EINVAL: return LLORCH_EINVAL;
    case ENOENT: return LLORCH_ENOTFOUND;
    case EEXIST: return LLORCH_EEXISTS;
    case ERANGE: return LLORCH_ERANGE;
    case EOVERFLOW: return LLORCH_EOVERFLOW;
    case EAGAIN: return LLORCH_EAGAIN;
    case ETIMEDOUT: return LLORCH_ETIMEOUT;
    case ECANCELED: return LLORCH_ECANCELLED;
    case EFBIG: return LLORCH_ETOOBIG;
    case ENOTSUP: return LLORCH_EUNSUPPORTED;
    case EILSEQ: return LLORCH_EUTF8;
    default: return LLORCH_EIO;
    }
}

int llorch_errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}
