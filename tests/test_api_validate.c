/* Request validation of both APIs and the socket-less HTTP path the fuzzers
 * drive (fuzz/): error bodies stay JSON when the message quotes invalid or
 * cut UTF-8 (found by fuzz_api_worker_json: a 400 turned into a 500), and
 * http_server_feed parses, limits and routes like a socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uv.h>

#include "api.h"
#include "api_openai.h"
#include "api_worker.h"
#include "gguf.h"
#include "http.h"
#include "tokenizer.h"

/* A malformed escape right before a two-byte character: jansson's error
 * text ends "near '"\u00e9\uf26\xd4" (the first byte of the character). */
static const char cut_utf8_body[] =
    "{\"job_id\": \"j1\", \"prompt\": \"\\u00e9\\uf26\xd4\xa3ud83d\", \"max_tokens\": 4}";

static void assert_json_error(const char *body, const char *key)
{
    assert_non_null(body);
    json_t *o = json_loads(body, 0, NULL);
    assert_non_null(o);
    assert_true(json_is_object(json_object_get(o, key)) || json_is_array(json_object_get(o, key)));
    json_decref(o);
}

static void worker_malformed_json_quoting_a_cut_character_is_400_with_json(void **state)
{
    (void)state;
    struct api_worker_params p;
    void *root;
    char *err;
    int st = api_worker_validate("application/json", 16, cut_utf8_body, sizeof(cut_utf8_body) - 1,
                                 &p, &root, &err);
    assert_int_equal(st, 400);
    assert_null(root);
    assert_json_error(err, "error");
    assert_non_null(strstr(err, "INVALID_JSON"));
    free(err);
}

struct oai_fixture {
    uv_loop_t loop;
    struct api *core;
    struct http_server *srv;
    struct api_worker *worker;
    struct api_openai *oai;
    struct gguf_file *file;
    struct tokenizer *tok;
};

static int oai_setup(void **state)
{
    struct oai_fixture *f = calloc(1, sizeof(*f));
    const char *shared = getenv("LLORCH_SHARED");
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/models/llama-tiny-f32.gguf", shared ? shared : "../shared");
    if (gguf_open(&f->file, path, err, sizeof err) ||
        tokenizer_new(&f->tok, f->file, err, sizeof err)) {
        fprintf(stderr, "%s: %s\n", path, err);
        return -1;
    }
    uv_loop_init(&f->loop);
    struct http_limits lim = {.max_connections = 4, .max_header_bytes = 256,
                              .max_body_bytes = 64, .header_timeout_ms = 1000,
                              .idle_timeout_ms = 1000};
    assert_int_equal(http_server_new(&f->srv, &f->loop, &lim), 0);
    struct api_opts co = {.sse_outbox_bytes = 1 << 20};
    assert_int_equal(api_new(&f->core, &f->loop, f->srv, &co), 0);
    struct api_worker_opts wo = {.info = {.model = "tiny", .arch = "llama"}};
    assert_int_equal(api_worker_new(&f->worker, f->core, f->srv, &wo), 0);
    struct api_openai_opts oo = {.core = f->core, .model_ref = "tiny", .model_id = "tiny",
                                 .tok = f->tok, .n_ctx = 256};
    assert_int_equal(api_openai_new(&f->oai, f->srv, &oo), 0);
    *state = f;
    return 0;
}

static int oai_teardown(void **state)
{
    struct oai_fixture *f = *state;
    api_openai_free(f->oai);
    api_worker_free(f->worker);
    api_close(f->core);
    http_server_close(f->srv);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    tokenizer_free(f->tok);
    gguf_close(f->file);
    free(f);
    return 0;
}

static void openai_malformed_json_quoting_a_cut_character_is_400_with_json(void **state)
{
    struct oai_fixture *f = *state;
    static const char body[] = "{\"prompt\": \"\\u00e9\\uf26\xd4\xa3\", \"max_tokens\": 4}";
    for (int chat = 0; chat < 2; chat++) {
        char *err = NULL;
        assert_int_equal(api_openai_validate(f->oai, chat, body, sizeof(body) - 1, &err), 400);
        assert_json_error(err, "error");
        free(err);
    }
}

static void openai_model_name_cut_inside_a_character_is_404_with_json(void **state)
{
    struct oai_fixture *f = *state;
    /* the message quotes the name with %.200s: 199 ASCII bytes, then "é" */
    char body[512];
    char name[256];
    memset(name, 'a', 199);
    memcpy(name + 199, "\xc3\xa9", 3);
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":\"x\",\"max_tokens\":1}", name);
    char *err = NULL;
    assert_int_equal(api_openai_validate(f->oai, false, body, strlen(body), &err), 404);
    assert_json_error(err, "error");
    free(err);
}

static void openai_valid_requests_validate(void **state)
{
    struct oai_fixture *f = *state;
    static const char comp[] = "{\"prompt\":\"Hello\",\"max_tokens\":3,\"temperature\":0}";
    static const char chat[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":3}";
    char *err = NULL;
    assert_int_equal(api_openai_validate(f->oai, false, comp, sizeof(comp) - 1, &err), 200);
    assert_null(err);
    assert_int_equal(api_openai_validate(f->oai, true, chat, sizeof(chat) - 1, &err), 200);
    assert_null(err);
}

static void feed_routes_pipelined_requests_in_pieces(void **state)
{
    struct oai_fixture *f = *state;
    static const char in[] = "GET /v1/models HTTP/1.1\r\n\r\n"
                             "GET /nope HTTP/1.1\r\n\r\n"
                             "PUT /health HTTP/1.1\r\n\r\n";
    for (size_t piece = 0; piece < 8; piece++) {
        struct http_buf out = {0};
        assert_int_equal(http_server_feed(f->srv, in, sizeof(in) - 1, piece, &out), 0);
        assert_int_equal(out.len > 0, 1);
        assert_int_equal(http_buf_append(&out, "", 1), 0);
        const char *a = strstr(out.data, "HTTP/1.1 200");
        const char *b = strstr(out.data, "HTTP/1.1 404");
        const char *c = strstr(out.data, "HTTP/1.1 405");
        assert_true(a && b && c && a < b && b < c);
        assert_non_null(strstr(c, "Allow: GET"));
        http_buf_free(&out);
        uv_run(&f->loop, UV_RUN_NOWAIT);
        assert_int_equal(http_server_conn_count(f->srv), 0);
    }
}

static void feed_applies_the_limits(void **state)
{
    struct oai_fixture *f = *state;
    char in[512];
    memset(in, 'a', sizeof in);
    memcpy(in, "GET / HTTP/1.1\r\nX: ", 19);
    memcpy(in + sizeof in - 4, "\r\n\r\n", 4);
    struct http_buf out = {0};
    assert_int_equal(http_server_feed(f->srv, in, sizeof in, 0, &out), 0);
    assert_true(out.len > 12 && memcmp(out.data, "HTTP/1.1 431", 12) == 0);
    out.len = 0;
    static const char big[] = "POST /v1/completions HTTP/1.1\r\nContent-Length: 65\r\n\r\n";
    assert_int_equal(http_server_feed(f->srv, big, sizeof(big) - 1, 0, &out), 0);
    assert_true(out.len > 12 && memcmp(out.data, "HTTP/1.1 413", 12) == 0);
    http_buf_free(&out);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(worker_malformed_json_quoting_a_cut_character_is_400_with_json),
        cmocka_unit_test_setup_teardown(openai_malformed_json_quoting_a_cut_character_is_400_with_json,
                                        oai_setup, oai_teardown),
        cmocka_unit_test_setup_teardown(openai_model_name_cut_inside_a_character_is_404_with_json,
                                        oai_setup, oai_teardown),
        cmocka_unit_test_setup_teardown(openai_valid_requests_validate, oai_setup, oai_teardown),
        cmocka_unit_test_setup_teardown(feed_routes_pipelined_requests_in_pieces, oai_setup,
                                        oai_teardown),
        cmocka_unit_test_setup_teardown(feed_applies_the_limits, oai_setup, oai_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
