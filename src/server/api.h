/* The API core shared by every protocol adapter (the worker contract,
 * the OpenAI API): what can end or refuse a job, as one code that each
 * adapter maps to its own wire name and HTTP status in one table. */
#ifndef LLORCH_API_H
#define LLORCH_API_H

#include "sched.h"

/* Every way a job can be refused at submission or end in an error. The
 * first SCHED_ERR_COUNT_ values are the engine's (enum sched_error), in its
 * order; the rest happen before the engine has the request. */
enum api_error {
    API_ERR_CANCELLED = SCHED_ERR_CANCELLED,
    API_ERR_TIMEOUT = SCHED_ERR_TIMEOUT,
    API_ERR_INVALID_REQUEST = SCHED_ERR_INVALID_REQUEST,
    API_ERR_INFERENCE_FAILED = SCHED_ERR_INFERENCE_FAILED,
    API_ERR_KV_EXHAUSTED = SCHED_ERR_KV_EXHAUSTED,
    API_ERR_CLIENT_TOO_SLOW = SCHED_ERR_CLIENT_TOO_SLOW,
    API_ERR_SHUTTING_DOWN = SCHED_ERR_SHUTTING_DOWN,
    API_ERR_CONTEXT_EXCEEDED = SCHED_ERR_CONTEXT_EXCEEDED,
    API_ERR_PROMPT_TOO_LARGE = SCHED_ERR_PROMPT_TOO_LARGE,
    API_ERR_QUEUE_FULL = SCHED_ERR_COUNT_, /* sched_submit: LLORCH_EFULL */
    API_ERR_JOB_EXISTS,                    /* sched_submit: LLORCH_EEXISTS */
    API_ERR_LOADING,                       /* no scheduler yet */
    API_ERR_INTERNAL,                      /* anything else (out of memory, ...) */
    API_ERR_COUNT_
};

/* The code of a terminal ERROR event. */
enum api_error api_error_from_sched(enum sched_error e);
/* The code of a failed sched_submit() (LLORCH_EFULL, LLORCH_EEXISTS,
 * LLORCH_ESHUTDOWN, LLORCH_EINVAL, LLORCH_EUTF8, LLORCH_ETOOBIG, other). */
enum api_error api_error_from_submit(int rc);

#endif
