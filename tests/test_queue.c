/* The intrusive queue: insertion order, removal, move, safe iteration. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "queue.h"
#include "util.h"

struct item {
    int value;
    struct llorch_queue node;
};

static int collect(struct llorch_queue *h, int *out, int cap)
{
    int n = 0;
    struct llorch_queue *q;
    llorch_queue_foreach(q, h) {
        if (n < cap)
            out[n] = llorch_container_of(q, struct item, node)->value;
        n++;
    }
    return n;
}

static void queue_keeps_insertion_order(void **state)
{
    (void)state;
    struct llorch_queue h;
    struct item it[4];
    for (int k = 0; k < 4; k++)
        it[k].value = k;
    llorch_queue_init(&h);
    assert_true(llorch_queue_empty(&h));
    llorch_queue_insert_tail(&h, &it[1].node);
    llorch_queue_insert_tail(&h, &it[2].node);
    llorch_queue_insert_head(&h, &it[0].node);
    llorch_queue_insert_tail(&h, &it[3].node);
    int got[8];
    assert_int_equal(collect(&h, got, 8), 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(got[i], i);
}

static void queue_remove_unlinks_only_that_element(void **state)
{
    (void)state;
    struct llorch_queue h;
    struct item it[3];
    for (int k = 0; k < 3; k++)
        it[k].value = k;
    llorch_queue_init(&h);
    for (int i = 0; i < 3; i++)
        llorch_queue_insert_tail(&h, &it[i].node);
    llorch_queue_remove(&it[1].node);
    int got[8];
    assert_int_equal(collect(&h, got, 8), 2);
    assert_int_equal(got[0], 0);
    assert_int_equal(got[1], 2);
    /* A removed node is self-linked, so removing twice is harmless. */
    llorch_queue_remove(&it[1].node);
    assert_int_equal(collect(&h, got, 8), 2);
}

static void queue_move_appends_and_empties_source(void **state)
{
    (void)state;
    struct llorch_queue a, b;
    struct item it[4];
    for (int k = 0; k < 4; k++)
        it[k].value = k;
    llorch_queue_init(&a);
    llorch_queue_init(&b);
    llorch_queue_insert_tail(&b, &it[0].node);
    llorch_queue_insert_tail(&a, &it[1].node);
    llorch_queue_insert_tail(&a, &it[2].node);
    llorch_queue_move(&a, &b);
    assert_true(llorch_queue_empty(&a));
    llorch_queue_move(&a, &b); /* moving an empty list changes nothing */
    llorch_queue_insert_tail(&b, &it[3].node);
    int got[8];
    assert_int_equal(collect(&b, got, 8), 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(got[i], i);
}

static void queue_safe_iteration_allows_removal(void **state)
{
    (void)state;
    struct llorch_queue h;
    struct item it[5];
    for (int k = 0; k < 5; k++)
        it[k].value = k;
    llorch_queue_init(&h);
    for (int i = 0; i < 5; i++)
        llorch_queue_insert_tail(&h, &it[i].node);
    struct llorch_queue *q, *tmp;
    llorch_queue_foreach_safe(q, tmp, &h) {
        if (llorch_container_of(q, struct item, node)->value % 2 == 0)
            llorch_queue_remove(q);
    }
    int got[8];
    assert_int_equal(collect(&h, got, 8), 2);
    assert_int_equal(got[0], 1);
    assert_int_equal(got[1], 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(queue_keeps_insertion_order),
        cmocka_unit_test(queue_remove_unlinks_only_that_element),
        cmocka_unit_test(queue_move_appends_and_empties_source),
        cmocka_unit_test(queue_safe_iteration_allows_removal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
