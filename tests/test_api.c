/* The API core's error codes and each adapter's one table of wire names and
 * statuses: a status follows from the code, never from a message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "api.h"
#include "api_openai.h"
#include "api_worker.h"
#include "llorch/error.h"

static void every_engine_error_has_its_own_api_code(void **state)
{
    (void)state;
    for (int e = 0; e < SCHED_ERR_COUNT_; e++)
        assert_int_equal(api_error_from_sched((enum sched_error)e), e);
    assert_int_equal(api_error_from_sched((enum sched_error)99), API_ERR_INFERENCE_FAILED);
}

static void submit_failures_map_to_codes(void **state)
{
    (void)state;
    assert_int_equal(api_error_from_submit(LLORCH_EFULL), API_ERR_QUEUE_FULL);
    assert_int_equal(api_error_from_submit(LLORCH_EEXISTS), API_ERR_JOB_EXISTS);
    assert_int_equal(api_error_from_submit(LLORCH_ESHUTDOWN), API_ERR_SHUTTING_DOWN);
    assert_int_equal(api_error_from_submit(LLORCH_EINVAL), API_ERR_INVALID_REQUEST);
    assert_int_equal(api_error_from_submit(LLORCH_EUTF8), API_ERR_INVALID_REQUEST);
    assert_int_equal(api_error_from_submit(LLORCH_ETOOBIG), API_ERR_INVALID_REQUEST);
    assert_int_equal(api_error_from_submit(LLORCH_ENOMEM), API_ERR_INTERNAL);
}

static void every_code_has_a_worker_name_and_status(void **state)
{
    (void)state;
    for (int e = 0; e < API_ERR_COUNT_; e++) {
        const char *code = NULL;
        int st = api_worker_error_wire((enum api_error)e, &code);
        assert_non_null(code);
        assert_true(st >= 400 && st <= 599);
    }
}

static void every_code_has_an_openai_type_and_status(void **state)
{
    (void)state;
    for (int e = 0; e < API_ERR_COUNT_; e++) {
        const char *type = NULL, *code = NULL;
        int st = api_openai_error_wire((enum api_error)e, &type, &code);
        assert_non_null(type);
        assert_true(st >= 400 && st <= 599);
    }
}

static void worker_statuses_follow_the_code(void **state)
{
    (void)state;
    static const struct {
        enum api_error e;
        int status;
        const char *code;
    } cases[] = {
        {API_ERR_CONTEXT_EXCEEDED, 400, "KV_EXHAUSTED"},
        {API_ERR_PROMPT_TOO_LARGE, 400, "KV_EXHAUSTED"},
        {API_ERR_KV_EXHAUSTED, 503, "KV_EXHAUSTED"},
        {API_ERR_QUEUE_FULL, 503, "QUEUE_FULL"},
        {API_ERR_JOB_EXISTS, 409, "JOB_EXISTS"},
        {API_ERR_SHUTTING_DOWN, 503, "SHUTTING_DOWN"},
        {API_ERR_LOADING, 503, "LOADING"},
        {API_ERR_INVALID_REQUEST, 400, "INVALID_REQUEST"},
        {API_ERR_CANCELLED, 499, "CANCELLED"},
        {API_ERR_CLIENT_TOO_SLOW, 503, "CLIENT_TOO_SLOW"},
        {API_ERR_INFERENCE_FAILED, 500, "INFERENCE_FAILED"},
        {API_ERR_INTERNAL, 500, "INTERNAL"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *code;
        assert_int_equal(api_worker_error_wire(cases[i].e, &code), cases[i].status);
        assert_string_equal(code, cases[i].code);
    }
}

static void openai_statuses_follow_the_code(void **state)
{
    (void)state;
    static const struct {
        enum api_error e;
        int status;
        const char *type, *code;
    } cases[] = {
        {API_ERR_CONTEXT_EXCEEDED, 400, "invalid_request_error", "context_length_exceeded"},
        {API_ERR_PROMPT_TOO_LARGE, 400, "invalid_request_error", "context_length_exceeded"},
        {API_ERR_KV_EXHAUSTED, 503, "server_error", "kv_cache_exhausted"},
        {API_ERR_QUEUE_FULL, 429, "server_error", "queue_full"},
        {API_ERR_SHUTTING_DOWN, 503, "server_error", "shutting_down"},
        {API_ERR_LOADING, 503, "server_error", "model_loading"},
        {API_ERR_TIMEOUT, 504, "server_error", "timeout"},
        {API_ERR_CANCELLED, 499, "server_error", "cancelled"},
        {API_ERR_CLIENT_TOO_SLOW, 503, "server_error", "client_too_slow"},
        {API_ERR_INFERENCE_FAILED, 500, "server_error", "inference_failed"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *type, *code;
        assert_int_equal(api_openai_error_wire(cases[i].e, &type, &code), cases[i].status);
        assert_string_equal(type, cases[i].type);
        assert_string_equal(code, cases[i].code);
    }
    const char *type, *code;
    assert_int_equal(api_openai_error_wire(API_ERR_INVALID_REQUEST, &type, &code), 400);
    assert_string_equal(type, "invalid_request_error");
    assert_null(code);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_engine_error_has_its_own_api_code),
        cmocka_unit_test(submit_failures_map_to_codes),
        cmocka_unit_test(every_code_has_a_worker_name_and_status),
        cmocka_unit_test(every_code_has_an_openai_type_and_status),
        cmocka_unit_test(worker_statuses_follow_the_code),
        cmocka_unit_test(openai_statuses_follow_the_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
