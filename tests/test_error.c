/* The error table: codes are negative and distinct, names and messages come
 * from the same table, errno translation covers the common cases. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/error.h"
#include "util.h"

static void error_codes_are_negative_and_distinct(void **state)
{
    (void)state;
    assert_int_equal(LLORCH_ENOMEM, -1);
    assert_true(LLORCH_EINTERNAL < LLORCH_ENOMEM);
    assert_int_equal(-1 - LLORCH_EINTERNAL, LLORCH_ERRIDX_COUNT_ - 1);
}

static void error_strerror_gives_table_message(void **state)
{
    (void)state;
    assert_string_equal(llorch_strerror(LLORCH_ENOMEM), "out of memory");
    assert_string_equal(llorch_strerror(LLORCH_EKV_EXHAUSTED), "KV cache exhausted");
    assert_string_equal(llorch_strerror(0), "success");
    assert_string_equal(llorch_strerror(-10000), "unknown error");
    assert_string_equal(llorch_strerror(5), "unknown error");
}

static void error_name_matches_code(void **state)
{
    (void)state;
    assert_string_equal(llorch_err_name(LLORCH_EUTF8), "LLORCH_EUTF8");
    assert_string_equal(llorch_err_name(LLORCH_OK), "LLORCH_OK");
    assert_string_equal(llorch_err_name(-999), "LLORCH_EUNKNOWN");
}

static void error_from_errno_translates_both_signs(void **state)
{
    (void)state;
    assert_int_equal(llorch_err_from_errno(ENOMEM), LLORCH_ENOMEM);
    assert_int_equal(llorch_err_from_errno(-ENOENT), LLORCH_ENOTFOUND);
    assert_int_equal(llorch_err_from_errno(0), 0);
    assert_int_equal(llorch_err_from_errno(EPIPE), LLORCH_EIO);
}

static void error_errf_writes_the_message_and_returns_the_code(void **state)
{
    (void)state;
    char err[16];
    assert_int_equal(llorch_errf(err, sizeof err, LLORCH_EFORMAT, "bad %s at %d", "key", 42),
                     LLORCH_EFORMAT);
    assert_string_equal(err, "bad key at 42");
    /* truncated to the buffer, always terminated */
    assert_int_equal(llorch_errf(err, 8, LLORCH_ERANGE, "%s", "0123456789"), LLORCH_ERANGE);
    assert_string_equal(err, "0123456");
    /* no buffer: only the code */
    assert_int_equal(llorch_errf(NULL, 0, LLORCH_EIO, "%s", "unused"), LLORCH_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(error_codes_are_negative_and_distinct),
        cmocka_unit_test(error_strerror_gives_table_message),
        cmocka_unit_test(error_name_matches_code),
        cmocka_unit_test(error_from_errno_translates_both_signs),
        cmocka_unit_test(error_errf_writes_the_message_and_returns_the_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
