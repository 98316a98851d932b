/* Structured logs: every JSON line parses (jansson) with ts, level, msg,
 * worker_id and the fields in order; escaping and invalid UTF-8; text form;
 * level filtering; concurrent writers never interleave within a line. */
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "llorch/error.h"
#include "log.h"

/* A temporary file as the log's fd; read back with slurp(). */
static int tmp_fd(void)
{
    char path[] = "/tmp/llorch-test-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    return fd;
}

static char *slurp(int fd)
{
    off_t end = lseek(fd, 0, SEEK_END);
    char *buf = malloc((size_t)end + 1);
    assert_non_null(buf);
    assert_int_equal(pread(fd, buf, (size_t)end, 0), end);
    buf[end] = 0;
    return buf;
}

static json_t *parse_line(const char *line, size_t len)
{
    json_error_t e;
    json_t *j = json_loadb(line, len, 0, &e);
    if (!j)
        fail_msg("not JSON (%s): %.*s", e.text, (int)len, line);
    return j;
}

static void log_json_line_has_ts_level_msg_worker_id_then_fields(void **state)
{
    (void)state;
    int fd = tmp_fd();
    struct log *l;
    assert_int_equal(log_new(&l, fd, LOG_FORMAT_JSON, LOG_LEVEL_INFO, "w1"), 0);
    struct log_field f[] = {
        LOG_F_STR("job_id", "j-1"), LOG_F_UINT("tokens_out", 42), LOG_F_INT("delta", -3),
        LOG_F_DBL("ttft_ms", 12.5), LOG_F_BOOL("stream", 1),      LOG_F_STR("none", NULL),
    };
    log_write(l, LOG_LEVEL_INFO, "request done", f, 6);
    char *out = slurp(fd);
    size_t len = strlen(out);
    assert_true(len > 0 && out[len - 1] == '\n');
    assert_null(memchr(out, '\n', len - 1));
    assert_true(!strncmp(out, "{\"ts\":\"", 7));
    json_t *j = parse_line(out, len - 1);
    const char *ts = json_string_value(json_object_get(j, "ts"));
    assert_non_null(ts);
    /* 2026-11-23T09:03:34.123Z */
    assert_int_equal(strlen(ts), 24);
    assert_true(ts[4] == '-' && ts[10] == 'T' && ts[19] == '.' && ts[23] == 'Z');
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "request done");
    assert_string_equal(json_string_value(json_object_get(j, "worker_id")), "w1");
    assert_string_equal(json_string_value(json_object_get(j, "job_id")), "j-1");
    assert_int_equal(json_integer_value(json_object_get(j, "tokens_out")), 42);
    assert_int_equal(json_integer_value(json_object_get(j, "delta")), -3);
    assert_true(json_real_value(json_object_get(j, "ttft_ms")) == 12.5);
    assert_true(json_is_true(json_object_get(j, "stream")));
    assert_true(json_is_null(json_object_get(j, "none")));
    /* order: ts, level, msg, worker_id, fields */
    const char *keys[] = {"\"ts\"",        "\"level\"",  "\"msg\"",
                          "\"worker_id\"", "\"job_id\"", "\"tokens_out\""};
    const char *prev = out;
    for (size_t i = 0; i < 6; i++) {
        const char *p = strstr(out, keys[i]);
        assert_non_null(p);
        assert_true(p >= prev);
        prev = p;
    }
    json_decref(j);
    free(out);
    log_free(l);
    close(fd);
}

static void log_json_escapes_quotes_controls_and_invalid_utf8(void **state)
{
    (void)state;
    int fd = tmp_fd();
    struct log *l;
    assert_int_equal(log_new(&l, fd, LOG_FORMAT_JSON, LOG_LEVEL_DEBUG, "w\"\n"), 0);
    const char *msg = "q\" b\\ n\n t\t c\x01 del\x7f é 日本 \xf0\x9f\x98\x80 bad\xff\xc3 end";
    struct log_field f[] = {LOG_F_STR("k\"ey\n", "v\x02\"")};
    log_write(l, LOG_LEVEL_WARN, msg, f, 1);
    char *out = slurp(fd);
    size_t len = strlen(out);
    assert_null(memchr(out, '\n', len - 1));
    json_t *j = parse_line(out, len - 1);
    assert_string_equal(json_string_value(json_object_get(j, "msg")),
                        "q\" b\\ n\n t\t c\x01 del\x7f é 日本 \xf0\x9f\x98\x80 bad\xef\xbf\xbd"
                        "\xef\xbf\xbd end");
    assert_string_equal(json_string_value(json_object_get(j, "worker_id")), "w\"\n");
    assert_string_equal(json_string_value(json_object_get(j, "k\"ey\n")), "v\x02\"");
    assert_string_equal(json_string_value(json_object_get(j, "level")), "warn");
    json_decref(j);
    free(out);
    log_free(l);
    close(fd);
}

static void log_json_non_finite_doubles_are_null(void **state)
{
    (void)state;
    int fd = tmp_fd();
    struct log *l;
    assert_int_equal(log_new(&l, fd, LOG_FORMAT_JSON, LOG_LEVEL_DEBUG, "w"), 0);
    struct log_field f[] = {LOG_F_DBL("a", 0.0 / 0.0), LOG_F_DBL("b", 1.0 / 0.0),
                            LOG_F_DBL("c", 1e300)};
    log_write(l, LOG_LEVEL_INFO, "m", f, 3);
    char *out = slurp(fd);
    json_t *j = parse_line(out, strlen(out) - 1);
    assert_true(json_is_null(json_object_get(j, "a")));
    assert_true(json_is_null(json_object_get(j, "b")));
    assert_true(json_real_value(json_object_get(j, "c")) == 1e300);
    json_decref(j);
    free(out);
    log_free(l);
    close(fd);
}

static void log_level_filter_drops_lower_levels(void **state)
{
    (void)state;
    int fd = tmp_fd();
    struct log *l;
    assert_int_equal(log_new(&l, fd, LOG_FORMAT_JSON, LOG_LEVEL_WARN, "w"), 0);
    assert_false(log_enabled(l, LOG_LEVEL_INFO));
    assert_true(log_enabled(l, LOG_LEVEL_ERROR));
    log_write(l, LOG_LEVEL_DEBUG, "d", NULL, 0);
    log_write(l, LOG_LEVEL_INFO, "i", NULL, 0);
    log_write(l, LOG_LEVEL_WARN, "w", NULL, 0);
    log_printf(l, LOG_LEVEL_ERROR, "e %d", 7);
    log_printf(l, LOG_LEVEL_INFO, "i %d", 8);
    char *out = slurp(fd);
    size_t lines = 0;
    for (char *p = out; (p = strchr(p, '\n')); p++)
        lines++;
    assert_int_equal(lines, 2);
    assert_non_null(strstr(out, "\"level\":\"warn\",\"msg\":\"w\""));
    assert_non_null(strstr(out, "\"level\":\"error\",\"msg\":\"e 7\""));
    free(out);
    log_free(l);
    close(fd);
}

static void log_text_format_is_one_readable_line(void **state)
{
    (void)state;
    int fd = tmp_fd();
    struct log *l;
    assert_int_equal(log_new(&l, fd, LOG_FORMAT_TEXT, LOG_LEVEL_INFO, "w1"), 0);
    struct log_field f[] = {LOG_F_STR("job_id", "j1"), LOG_F_STR("path", "a b"), LOG_F_UINT("n", 3),
                            LOG_F_DBL("ms", 1.25)};
    log_write(l, LOG_LEVEL_ERROR, "listen failed:\naddress \"in use\"", f, 4);
    char *out = slurp(fd);
    size_t len = strlen(out);
    assert_null(memchr(out, '\n', len - 1));
    assert_int_equal(out[len - 1], '\n');
    assert_true(out[4] == '-' && out[10] == 'T' && out[23] == 'Z');
    assert_non_null(strstr(out, " ERROR listen failed:\\naddress \"in use\" job_id=j1 "
                                "path=\"a b\" n=3 ms=1.25\n"));
    assert_null(strchr(out, '{'));
    free(out);
    log_free(l);
    close(fd);
}

static void log_huge_message_stays_one_valid_line(void **state)
{
    (void)state;
    int fd = tmp_fd();
    struct log *l;
    assert_int_equal(log_new(&l, fd, LOG_FORMAT_JSON, LOG_LEVEL_INFO, "w"), 0);
    size_t n = 200000;
    char *big = malloc(n + 1);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)(i % 3 == 0 ? '\n' : 'x'); /* escaping doubles a third */
    big[n] = 0;
    struct log_field f[] = {LOG_F_STR("big", big)};
    log_write(l, LOG_LEVEL_INFO, big, f, 1);
    log_write(l, LOG_LEVEL_INFO, "short", f, 1);
    log_printf(l, LOG_LEVEL_INFO, "%s", big);
    log_write(l, LOG_LEVEL_INFO, "after", NULL, 0);
    char *out = slurp(fd);
    size_t lines = 0;
    for (char *p = out, *nl; (nl = strchr(p, '\n')); p = nl + 1) {
        json_t *j = parse_line(p, (size_t)(nl - p));
        assert_true((size_t)(nl - p) <= 64 * 1024);
        if (lines < 3)
            assert_true(json_is_true(json_object_get(j, "truncated")));
        assert_string_equal(json_string_value(json_object_get(j, "worker_id")), "w");
        json_decref(j);
        lines++;
    }
    assert_int_equal(lines, 4);
    free(out);
    free(big);
    log_free(l);
    close(fd);
}

static void log_medium_message_is_kept_whole(void **state)
{
    (void)state;
    int fd = tmp_fd();
    struct log *l;
    assert_int_equal(log_new(&l, fd, LOG_FORMAT_JSON, LOG_LEVEL_INFO, "w"), 0);
    char big[20000];
    memset(big, 'y', sizeof big - 1);
    big[sizeof big - 1] = 0;
    log_write(l, LOG_LEVEL_INFO, big, NULL, 0);
    char *out = slurp(fd);
    json_t *j = parse_line(out, strlen(out) - 1);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), big);
    assert_null(json_object_get(j, "truncated"));
    json_decref(j);
    free(out);
    log_free(l);
    close(fd);
}

#define N_THREADS 8
#define N_LINES 500

static void *writer(void *arg)
{
    struct log *l = arg;
    char msg[1500];
    memset(msg, 'm', sizeof msg - 1);
    msg[sizeof msg - 1] = 0;
    for (int i = 0; i < N_LINES; i++) {
        struct log_field f[] = {LOG_F_UINT("i", (uint64_t)i), LOG_F_STR("pad", msg)};
        log_write(l, LOG_LEVEL_INFO, "concurrent", f, 2);
    }
    return NULL;
}

static void log_concurrent_writers_never_interleave(void **state)
{
    (void)state;
    int fd = tmp_fd();
    struct log *l;
    assert_int_equal(log_new(&l, fd, LOG_FORMAT_JSON, LOG_LEVEL_INFO, "w"), 0);
    pthread_t t[N_THREADS];
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, writer, l), 0);
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);
    char *out = slurp(fd);
    size_t lines = 0;
    for (char *p = out, *nl; (nl = strchr(p, '\n')); p = nl + 1) {
        json_t *j = parse_line(p, (size_t)(nl - p));
        json_decref(j);
        lines++;
    }
    assert_int_equal(lines, N_THREADS * N_LINES);
    free(out);
    log_free(l);
    close(fd);
}

static void log_new_rejects_bad_arguments_and_free_null_is_safe(void **state)
{
    (void)state;
    struct log *l = (struct log *)1;
    assert_int_equal(log_new(&l, -1, LOG_FORMAT_JSON, LOG_LEVEL_INFO, "w"), LLORCH_EINVAL);
    assert_null(l);
    log_free(NULL);
    assert_string_equal(log_level_name(LOG_LEVEL_WARN), "warn");
}

static void log_null_logger_writes_text_to_stderr(void **state)
{
    (void)state;
    int fd = tmp_fd();
    int saved = dup(2);
    dup2(fd, 2);
    log_write(NULL, LOG_LEVEL_ERROR, "early failure", NULL, 0);
    log_write(NULL, LOG_LEVEL_DEBUG, "hidden", NULL, 0);
    dup2(saved, 2);
    close(saved);
    char *out = slurp(fd);
    assert_non_null(strstr(out, " ERROR early failure\n"));
    assert_null(strstr(out, "hidden"));
    free(out);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(log_json_line_has_ts_level_msg_worker_id_then_fields),
        cmocka_unit_test(log_json_escapes_quotes_controls_and_invalid_utf8),
        cmocka_unit_test(log_json_non_finite_doubles_are_null),
        cmocka_unit_test(log_level_filter_drops_lower_levels),
        cmocka_unit_test(log_text_format_is_one_readable_line),
        cmocka_unit_test(log_huge_message_stays_one_valid_line),
        cmocka_unit_test(log_medium_message_is_kept_whole),
        cmocka_unit_test(log_concurrent_writers_never_interleave),
        cmocka_unit_test(log_new_rejects_bad_arguments_and_free_null_is_safe),
        cmocka_unit_test(log_null_logger_writes_text_to_stderr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
