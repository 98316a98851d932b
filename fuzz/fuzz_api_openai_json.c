/* The OpenAI API's request validation (POST /v1/completions and
 * /v1/chat/completions, chat rendered with the template and counted with
 * the tokenizer of llama-tiny-f32): any body gives 200 or an error status
 * with an OpenAI-shaped JSON error. The first input byte picks the
 * endpoint. */
#include <stdint.h>
#include <string.h>

#include <jansson.h>
#include <uv.h>

#include "api.h"
#include "api_openai.h"
#include "api_worker.h"
#include "fuzz_common.h"
#include "gguf.h"
#include "http.h"
#include "tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uv_loop_t loop;
static struct api *core;
static struct http_server *srv;
static struct api_worker *worker;
static struct api_openai *oai;
static struct gguf_file *file;
static struct tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/models/llama-tiny-f32.gguf", fuzz_shared_dir());
    if (gguf_open(&file, path, err, sizeof err) || tokenizer_new(&tok, file, err, sizeof err)) {
        fprintf(stderr, "%s: %s\n", path, err);
        abort();
    }
    uv_loop_init(&loop);
    struct http_limits lim = {.max_connections = 1, .max_header_bytes = 1024,
                              .max_body_bytes = 1024};
    FUZZ_CHECK(http_server_new(&srv, &loop, &lim) == 0);
    struct api_opts co = {.sse_outbox_bytes = 1 << 20};
    FUZZ_CHECK(api_new(&core, &loop, srv, &co) == 0);
    struct api_worker_opts wo = {.info = {.model = "tiny", .arch = "llama"}};
    FUZZ_CHECK(api_worker_new(&worker, core, srv, &wo) == 0);
    struct api_openai_opts oo = {.core = core, .model_ref = "tiny", .model_id = "tiny",
                                 .model_name = "llama-tiny", .tok = tok, .n_ctx = 256};
    FUZZ_CHECK(api_openai_new(&oai, srv, &oo) == 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    bool chat = data[0] & 1;
    char *err = NULL;
    int status = api_openai_validate(oai, chat, (const char *)data + 1, size - 1, &err);
    if (status == 200) {
        FUZZ_CHECK(err == NULL);
    } else {
        FUZZ_CHECK(status == 400 || status == 404 || status == 422);
        FUZZ_CHECK(err != NULL);
        json_t *e = json_loads(err, 0, NULL);
        FUZZ_CHECK(json_is_object(json_object_get(e, "error")));
        FUZZ_CHECK(json_is_string(json_object_get(json_object_get(e, "error"), "message")));
        json_decref(e);
        free(err);
    }
    return 0;
}
