/* SSE framing, keep-alive comments, [DONE], and UTF-8 sanitising (no
 * sockets: frames are built into byte buffers). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/error.h"
#include "sse.h"

static void assert_buf_eq(const struct http_buf *b, const char *want)
{
    assert_int_equal(b->len, strlen(want));
    assert_memory_equal(b->data, want, b->len);
}

static void event_frame_has_event_line_then_data_line(void **state)
{
    (void)state;
    struct http_buf b = {0};
    const char *j = "{\"type\":\"token\",\"t\":\"Hi\",\"i\":0}";
    assert_int_equal(sse_frame_append(&b, SSE_MODE_EVENT, "token", j, strlen(j)), 0);
    assert_buf_eq(&b, "event: token\ndata: {\"type\":\"token\",\"t\":\"Hi\",\"i\":0}\n\n");
    http_buf_free(&b);
}

static void data_frame_has_only_the_data_line(void **state)
{
    (void)state;
    struct http_buf b = {0};
    const char *j = "{\"type\":\"end\"}";
    assert_int_equal(sse_frame_append(&b, SSE_MODE_DATA, "end", j, strlen(j)), 0);
    assert_buf_eq(&b, "data: {\"type\":\"end\"}\n\n");
    http_buf_free(&b);
}

static void frames_append_after_each_other(void **state)
{
    (void)state;
    struct http_buf b = {0};
    assert_int_equal(sse_frame_append(&b, SSE_MODE_DATA, "x", "1", 1), 0);
    assert_int_equal(sse_ping_append(&b), 0);
    assert_int_equal(sse_frame_append(&b, SSE_MODE_DATA, "x", "2", 1), 0);
    assert_int_equal(sse_done_append(&b), 0);
    assert_buf_eq(&b, "data: 1\n\n: ping\n\ndata: 2\n\ndata: [DONE]\n\n");
    http_buf_free(&b);
}

static void frame_with_a_newline_in_its_json_is_refused(void **state)
{
    (void)state;
    struct http_buf b = {0};
    assert_int_equal(sse_frame_append(&b, SSE_MODE_DATA, "x", "{\n}", 3), LLORCH_EINVAL);
    assert_int_equal(sse_frame_append(&b, SSE_MODE_EVENT, "x", "{\r}", 3), LLORCH_EINVAL);
    assert_int_equal(b.len, 0);
    http_buf_free(&b);
}

static void ping_is_a_standalone_comment_frame(void **state)
{
    (void)state;
    struct http_buf b = {0};
    assert_int_equal(sse_ping_append(&b), 0);
    assert_buf_eq(&b, ": ping\n\n");
    http_buf_free(&b);
}

static size_t sanitize(const char *in, size_t len, char *out, size_t cap)
{
    return sse_utf8_sanitize(in, len, out, cap);
}

static void sanitize_keeps_well_formed_text(void **state)
{
    (void)state;
    const char *s = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\x7F"; /* a é € 😀 DEL */
    char out[64];
    size_t n = sanitize(s, strlen(s), out, sizeof(out));
    assert_int_equal(n, strlen(s));
    assert_memory_equal(out, s, n);
}

static void sanitize_replaces_each_maximal_bad_subpart_with_one_replacement(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
        const char *want;
    } cases[] = {
        {"\x80", 1, "\xEF\xBF\xBD"},                          /* lone continuation */
        {"\xC0\x80", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},          /* overlong NUL: 2 bad bytes */
        {"\xED\xA0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* surrogate */
        {"\xE2\x82", 2, "\xEF\xBF\xBD"},                      /* truncated 3-byte */
        {"\xE2\x82x", 3, "\xEF\xBF\xBDx"},                    /* interrupted 3-byte */
        {"\xF4\x90\x80\x80", 4, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* > U+10FFFF */
        {"\xF5", 1, "\xEF\xBF\xBD"},
        {"a\xF0\x9F\x98", 4, "a\xEF\xBF\xBD"},                /* truncated 4-byte at the end */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[64];
        size_t n = sanitize(cases[i].in, cases[i].len, out, sizeof(out));
        assert_int_equal(n, strlen(cases[i].want));
        assert_memory_equal(out, cases[i].want, n);
    }
}

static void sanitize_output_is_always_valid(void **state)
{
    (void)state;
    /* every 3-byte combination over an interesting alphabet */
    static const unsigned char alpha[] = {0x00, 0x41, 0x7F, 0x80, 0xBF, 0xC2, 0xDF, 0xE0, 0xED,
                                          0xEF, 0xF0, 0xF4, 0xF5, 0xFF, 0xA0, 0x90};
    size_t na = sizeof(alpha);
    for (size_t a = 0; a < na; a++)
        for (size_t b = 0; b < na; b++)
            for (size_t c = 0; c < na; c++) {
                char in[3] = {(char)alpha[a], (char)alpha[b], (char)alpha[c]};
                char out[16];
                size_t n = sanitize(in, 3, out, sizeof(out));
                assert_true(n != SIZE_MAX);
                size_t bad;
                assert_true(sse_utf8_valid(out, n, &bad));
            }
}

static void sanitize_fails_when_the_output_is_too_small(void **state)
{
    (void)state;
    char out[4];
    assert_int_equal(sanitize("\x80\x80", 2, out, sizeof(out)), SIZE_MAX);
    assert_int_equal(sanitize("abcde", 5, out, sizeof(out)), SIZE_MAX);
}

static void utf8_valid_reports_the_first_bad_byte(void **state)
{
    (void)state;
    size_t bad = 99;
    assert_true(sse_utf8_valid("h\xC3\xA9llo", 6, &bad));
    assert_int_equal(bad, 99);
    assert_false(sse_utf8_valid("ab\xC3\xA9\xFFz", 6, &bad));
    assert_int_equal(bad, 4);
    assert_false(sse_utf8_valid("abc\xE2\x82", 5, &bad));
    assert_int_equal(bad, 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(event_frame_has_event_line_then_data_line),
        cmocka_unit_test(data_frame_has_only_the_data_line),
        cmocka_unit_test(frames_append_after_each_other),
        cmocka_unit_test(frame_with_a_newline_in_its_json_is_refused),
        cmocka_unit_test(ping_is_a_standalone_comment_frame),
        cmocka_unit_test(sanitize_keeps_well_formed_text),
        cmocka_unit_test(sanitize_replaces_each_maximal_bad_subpart_with_one_replacement),
        cmocka_unit_test(sanitize_output_is_always_valid),
        cmocka_unit_test(sanitize_fails_when_the_output_is_too_small),
        cmocka_unit_test(utf8_valid_reports_the_first_bad_byte),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
