/* resume.c alone: frame ids and their escaping, Last-Event-ID parsing, the
 * journal and its two bounds, detach/attach/replay, and expiry on the loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "llorch/error.h"
#include "resume.h"

struct fx {
    uv_loop_t loop;
    struct resume_registry *reg;
    int expired;
    struct resume_entry *last_expired;
};

static void on_expire(void *ctx, struct resume_entry *e)
{
    struct fx *f = ctx;
    f->expired++;
    f->last_expired = e;
}

static struct fx *fx_new(uint32_t grace, uint64_t job_bytes, uint64_t total_bytes)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    struct resume_limits lim = {grace, job_bytes, total_bytes};
    assert_int_equal(resume_registry_new(&f->reg, &f->loop, &lim), 0);
    return f;
}

static void fx_free(struct fx *f)
{
    resume_registry_close(f->reg);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
}

static void frame(struct resume_entry *e, struct http_buf *b, const char *type, bool terminal)
{
    static const char json[] = "{\"type\":\"token\"}";
    assert_int_equal(resume_entry_frame(e, b, type, json, sizeof(json) - 1, terminal), 0);
}

static void frames_carry_escaped_ids_after_the_data_line(void **state)
{
    (void)state;
    struct fx *f = fx_new(1000, 1 << 20, 1 << 20);
    struct resume_entry e;
    static const char id[] = "a b:c%d\n";
    resume_entry_init(&e, f->reg, id, sizeof(id) - 1, SSE_MODE_DATA, 0, on_expire, f);
    struct http_buf b = {0};
    frame(&e, &b, "token", false);
    frame(&e, &b, "token", false);
    assert_int_equal(http_buf_append(&b, "", 1), 0);
    assert_string_equal(b.data, "data: {\"type\":\"token\"}\nid: a%20b%3Ac%25d%0A:1\n\n");
    assert_false(e.resumable); /* no grace asked */
    resume_entry_free(&e);
    http_buf_free(&b);
    fx_free(f);
}

static void last_event_id_must_name_this_job_and_a_sent_frame(void **state)
{
    (void)state;
    struct fx *f = fx_new(1000, 1 << 20, 1 << 20);
    struct resume_entry e;
    resume_entry_init(&e, f->reg, "j:1", 3, SSE_MODE_EVENT, 500, on_expire, f);
    struct http_buf b = {0};
    for (int i = 0; i < 3; i++)
        frame(&e, &b, "token", false);
    uint64_t from = 99;
    assert_int_equal(resume_entry_parse_last_id(&e, NULL, 0, &from), 0);
    assert_int_equal(from, 0);
    assert_int_equal(resume_entry_parse_last_id(&e, " j%3A1:1 ", 9, &from), 0);
    assert_int_equal(from, 2);
    assert_int_equal(resume_entry_parse_last_id(&e, "j%3a1:2", 7, &from), 0);
    assert_int_equal(from, 3);
    assert_int_equal(resume_entry_parse_last_id(&e, "j%3A1:3", 7, &from), LLORCH_ERANGE);
    static const char *const bad[] = {"j%3A1", "j%3A1:", "j:1:1x", "k%3A1:1", "j%3A:1", "j%3A12:1",
                                      "j%3A1:-1", "j%3A1:99999999999999999999", "j%3:1", "%"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(resume_entry_parse_last_id(&e, bad[i], strlen(bad[i]), &from),
                         LLORCH_EINVAL);
    resume_entry_free(&e);
    http_buf_free(&b);
    fx_free(f);
}

static void attach_replays_exactly_the_frames_after_the_id(void **state)
{
    (void)state;
    struct fx *f = fx_new(1000, 1 << 20, 1 << 20);
    struct resume_entry e;
    resume_entry_init(&e, f->reg, "j", 1, SSE_MODE_EVENT, 1000, on_expire, f);
    struct http_buf b = {0}, all = {0};
    for (int i = 0; i < 4; i++) {
        frame(&e, &b, i == 3 ? "end" : "token", i == 3);
        http_buf_append(&all, b.data, b.len);
    }
    assert_true(e.ended);
    assert_true(resume_entry_detach(&e));
    assert_false(resume_entry_detach(&e)); /* once */
    assert_ptr_equal(resume_registry_find(f->reg, "j", 1), &e);
    uint64_t from;
    assert_int_equal(resume_entry_parse_last_id(&e, "j:1", 3, &from), 0);
    const char *data;
    size_t len;
    resume_entry_attach(&e, from, &data, &len);
    const char *third = strstr(all.data, "id: j:1\n\n") + 9;
    assert_int_equal(len, all.len - (size_t)(third - all.data));
    assert_memory_equal(data, third, len);
    struct resume_stats st;
    resume_registry_stats(f->reg, &st);
    assert_int_equal(st.resumes, 1);
    assert_int_equal(st.replayed_frames, 2);
    assert_int_equal(st.detached, 0);
    assert_int_equal(st.bytes, all.len);
    resume_entry_free(&e);
    resume_registry_stats(f->reg, &st);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.entries, 0);
    assert_null(resume_registry_find(f->reg, "j", 1));
    http_buf_free(&b);
    http_buf_free(&all);
    fx_free(f);
}

static void journal_over_the_job_bound_stops_being_resumable(void **state)
{
    (void)state;
    struct fx *f = fx_new(1000, 200, 1 << 20);
    struct resume_entry e;
    resume_entry_init(&e, f->reg, "j", 1, SSE_MODE_EVENT, 1000, on_expire, f);
    struct http_buf b = {0};
    for (int i = 0; i < 20 && e.resumable; i++)
        frame(&e, &b, "token", false);
    assert_false(e.resumable);
    assert_false(resume_entry_detach(&e)); /* the caller cancels as before */
    assert_null(resume_registry_find(f->reg, "j", 1));
    /* ids go on */
    frame(&e, &b, "token", false);
    assert_non_null(memmem(b.data, b.len, "id: j:", 6));
    struct resume_stats st;
    resume_registry_stats(f->reg, &st);
    assert_int_equal(st.overflowed, 1);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(f->expired, 0);
    resume_entry_free(&e);
    http_buf_free(&b);
    fx_free(f);
}

static void journal_over_the_total_bound_ends_a_detached_job(void **state)
{
    (void)state;
    struct fx *f = fx_new(1000, 1 << 20, 300);
    struct resume_entry a, c;
    resume_entry_init(&a, f->reg, "a", 1, SSE_MODE_EVENT, 1000, on_expire, f);
    resume_entry_init(&c, f->reg, "c", 1, SSE_MODE_EVENT, 1000, on_expire, f);
    struct http_buf b = {0};
    for (int i = 0; i < 3; i++)
        frame(&a, &b, "token", false);
    assert_true(resume_entry_detach(&c));
    for (int i = 0; i < 10 && c.resumable; i++)
        frame(&c, &b, "token", false);
    assert_false(c.resumable);
    assert_int_equal(f->expired, 1); /* detached: ended at once */
    assert_ptr_equal(f->last_expired, &c);
    assert_true(a.resumable);
    resume_entry_free(&a);
    resume_entry_free(&c);
    http_buf_free(&b);
    fx_free(f);
}

static void detached_entry_expires_after_its_grace(void **state)
{
    (void)state;
    struct fx *f = fx_new(60000, 1 << 20, 1 << 20);
    struct resume_entry e;
    resume_entry_init(&e, f->reg, "j", 1, SSE_MODE_EVENT, 50, on_expire, f); /* asks for less */
    assert_int_equal(e.grace_ms, 50);
    struct http_buf b = {0};
    frame(&e, &b, "token", false);
    assert_true(resume_entry_detach(&e));
    uint64_t t0 = uv_now(&f->loop);
    while (f->expired == 0)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_update_time(&f->loop);
    assert_true(uv_now(&f->loop) - t0 >= 50);
    assert_false(e.resumable);
    assert_null(resume_registry_find(f->reg, "j", 1));
    struct resume_stats st;
    resume_registry_stats(f->reg, &st);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.detached, 0);
    resume_entry_free(&e);
    http_buf_free(&b);
    fx_free(f);
}

static void expire_all_ends_every_detached_entry_and_the_grace(void **state)
{
    (void)state;
    struct fx *f = fx_new(60000, 1 << 20, 1 << 20);
    struct resume_entry a, c;
    resume_entry_init(&a, f->reg, "a", 1, SSE_MODE_EVENT, 60000, on_expire, f);
    resume_entry_init(&c, f->reg, "c", 1, SSE_MODE_EVENT, 60000, on_expire, f);
    assert_true(resume_entry_detach(&a));
    resume_registry_expire_all(f->reg);
    assert_int_equal(f->expired, 1);
    assert_false(resume_entry_detach(&c)); /* no grace any more */
    assert_int_equal(resume_registry_grace_ms(f->reg), 0);
    resume_entry_free(&a);
    resume_entry_free(&c);
    fx_free(f);
}

static void grace_zero_makes_nothing_resumable(void **state)
{
    (void)state;
    struct fx *f = fx_new(0, 1 << 20, 1 << 20);
    struct resume_entry e;
    resume_entry_init(&e, f->reg, "j", 1, SSE_MODE_EVENT, 5000, on_expire, f);
    assert_false(e.resumable);
    assert_false(resume_entry_detach(&e));
    resume_entry_free(&e);
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(frames_carry_escaped_ids_after_the_data_line),
        cmocka_unit_test(last_event_id_must_name_this_job_and_a_sent_frame),
        cmocka_unit_test(attach_replays_exactly_the_frames_after_the_id),
        cmocka_unit_test(journal_over_the_job_bound_stops_being_resumable),
        cmocka_unit_test(journal_over_the_total_bound_ends_a_detached_job),
        cmocka_unit_test(detached_entry_expires_after_its_grace),
        cmocka_unit_test(expire_all_ends_every_detached_entry_and_the_grace),
        cmocka_unit_test(grace_zero_makes_nothing_resumable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
