/* The thread-affinity checks behind LLORCH_ASSERT_ON_LOOP and
 * LLORCH_ASSERT_ON_DRIVER. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>

#include "thread.h"

static void *check_from_other(void *arg)
{
    const struct llorch_thread *t = arg;
    static bool res[2];
    res[0] = llorch_thread_is_current(t);
    res[1] = llorch_thread_is_other(t);
    return res;
}

static void an_unrecorded_owner_checks_nothing(void **state)
{
    (void)state;
    struct llorch_thread t = {0};
    assert_true(llorch_thread_is_current(&t));
    assert_true(llorch_thread_is_other(&t));
}

static void the_recording_thread_is_the_owner(void **state)
{
    (void)state;
    struct llorch_thread t = {0};
    llorch_thread_record(&t);
    assert_true(llorch_thread_is_current(&t));
    assert_false(llorch_thread_is_other(&t));
    LLORCH_ASSERT_ON_LOOP(&t);
    LLORCH_ASSERT_ON_DRIVER(&t);
}

static void another_thread_is_not_the_owner(void **state)
{
    (void)state;
    struct llorch_thread t = {0};
    llorch_thread_record(&t);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, check_from_other, &t), 0);
    void *ret;
    assert_int_equal(pthread_join(th, &ret), 0);
    const bool *res = ret;
    assert_false(res[0]);
    assert_true(res[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(an_unrecorded_owner_checks_nothing),
        cmocka_unit_test(the_recording_thread_is_the_owner),
        cmocka_unit_test(another_thread_is_not_the_owner),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
