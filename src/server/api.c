/* The API core: the codes every protocol adapter maps to its wire. */
#include "api.h"

#include "llorch/error.h"
#include "util.h"

LLORCH_API enum api_error api_error_from_sched(enum sched_error e)
{
    return (unsigned)e < SCHED_ERR_COUNT_ ? (enum api_error)e : API_ERR_INFERENCE_FAILED;
}

LLORCH_API enum api_error api_error_from_submit(int rc)
{
    switch (rc) {
    case LLORCH_EFULL: return API_ERR_QUEUE_FULL;
    case LLORCH_EEXISTS: return API_ERR_JOB_EXISTS;
    case LLORCH_ESHUTDOWN: return API_ERR_SHUTTING_DOWN;
    case LLORCH_EINVAL:
    case LLORCH_EUTF8:
    case LLORCH_ETOOBIG: return API_ERR_INVALID_REQUEST;
    default: return API_ERR_INTERNAL;
    }
}
