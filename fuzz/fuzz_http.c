/* The HTTP request path without sockets: bytes go through llhttp and our
 * callbacks (header and body limits, Expect, pipelining), the route table
 * (exact and prefix routes, 404, 405 + Allow) and the real worker-contract
 * and OpenAI handlers (loading state, bearer auth), read in pieces whose
 * size the first input byte picks. Every response must start with a status
 * line. */
#include <stdint.h>
#include <string.h>

#include <uv.h>

#include "api.h"
#include "api_openai.h"
#include "api_worker.h"
#include "fuzz_common.h"
#include "http.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uv_loop_t loop;
static struct http_server *srv;
static struct api *core;
static struct api_worker *worker;
static struct api_openai *oai;

/* Answers with what it saw, touching every field the parser filled. */
static void h_echo(void *ctx, struct http_request *r, const char *tail, size_t tail_len)
{
    (void)ctx;
    struct http_buf b = {0};
    http_buf_printf(&b, "%s %.*s ? %.*s tail=%.*s\n", r->method_name, (int)r->path_len, r->path,
                    (int)r->query_len, r->query, (int)tail_len, tail);
    for (size_t i = 0; i < r->n_headers; i++)
        http_buf_printf(&b, "%.*s: %.*s\n", (int)r->headers[i].name_len, r->headers[i].name,
                        (int)r->headers[i].value_len, r->headers[i].value);
    http_buf_append(&b, r->body, r->body_len);
    size_t ct_len = 0;
    const char *ct = http_request_header(r, "content-type", &ct_len);
    if (ct && ct_len == 10 && memcmp(ct, "text/event", 10) == 0) {
        http_stream_begin(r, 200, "text/event-stream", NULL);
        http_stream_write(r, b.data, b.len);
        http_stream_end(r, false);
    } else {
        http_respond(r, 200, "text/plain", NULL, b.data, b.len);
    }
    http_buf_free(&b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    uv_loop_init(&loop);
    struct http_limits lim = {
        .max_connections = 8,
        .max_header_bytes = 2048, /* small, so that the fuzzer reaches it */
        .max_body_bytes = 4096,
        .header_timeout_ms = 10000,
        .idle_timeout_ms = 10000,
    };
    FUZZ_CHECK(http_server_new(&srv, &loop, &lim) == 0);
    struct api_opts co = {.api_key = "fuzzkey", .sse_outbox_bytes = 1 << 20,
                          .ping_interval_ms = 15000, .resume_grace_ms = 5000};
    FUZZ_CHECK(api_new(&core, &loop, srv, &co) == 0);
    struct api_worker_opts wo = {.info = {.model = "tiny", .arch = "llama"}};
    FUZZ_CHECK(api_worker_new(&worker, core, srv, &wo) == 0);
    struct api_openai_opts oo = {.core = core, .model_ref = "tiny", .model_id = "tiny"};
    FUZZ_CHECK(api_openai_new(&oai, srv, &oo) == 0);
    FUZZ_CHECK(http_server_route(srv, LLORCH_HTTP_GET | LLORCH_HTTP_POST | LLORCH_HTTP_HEAD,
                                 "/echo", false, h_echo, NULL) == 0);
    FUZZ_CHECK(http_server_route(srv, LLORCH_HTTP_PUT | LLORCH_HTTP_DELETE, "/p/", true, h_echo,
                                 NULL) == 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t piece = data[0] < 128 ? 0 : (size_t)(data[0] & 63) + 1;
    struct http_buf out = {0};
    FUZZ_CHECK(http_server_feed(srv, data + 1, size - 1, piece, &out) == 0);
    if (out.len)
        FUZZ_CHECK(out.len >= 12 && memcmp(out.data, "HTTP/1.1 ", 9) == 0);
    http_buf_free(&out);
    uv_run(&loop, UV_RUN_NOWAIT); /* frees the connection */
    FUZZ_CHECK(http_server_conn_count(srv) == 0);
    return 0;
}
