/* The OpenAI-compatible API: GET /v1/models[/{id}], POST /v1/completions
 * and POST /v1/chat/completions (also without the /v1 prefix, as llama.cpp's
 * server serves them), whole responses and SSE streams ending in
 * `data: [DONE]`, errors as {"error":{"message","type","param","code"}}.
 * A protocol adapter over the API core (api.h), like the worker contract:
 * the core owns auth, readiness, the event drain, the jobs' lifecycle and
 * the drain. Loop thread only. */
#ifndef LLORCH_API_OPENAI_H
#define LLORCH_API_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "chat.h"
#include "http.h"
#include "tokenizer.h"

struct api_openai_opts {
    const char *model_ref;        /* --model-ref, also accepted in `model`; "" = none */
    const char *chat_template_name; /* --chat-template NAME forces a family; "" = none */
    struct api *core;             /* must outlive the api: sched, readiness, auth, jobs */
    const char *model_id;         /* `id` in /v1/models; NULL = model_ref */
    const char *model_name;       /* general.name, accepted as an alias in `model`; may be NULL */
    /* The loaded model, when known at start-up (else api_openai_set_model). */
    const struct tokenizer *tok;
    const char *chat_template;    /* tokenizer.chat_template of the file; NULL when absent */
    size_t chat_template_len;
    uint32_t n_ctx;
};

struct api_openai;

/* Registers the routes on srv. Copies the strings of o. */
int api_openai_new(struct api_openai **out, struct http_server *srv,
                   const struct api_openai_opts *o);
/* The loaded model's tokenizer (must outlive the api), chat template text
 * (copied; NULL when the file has none) and context length, for a model
 * loaded after api_openai_new. Generation requests answer 503 until set. */
int api_openai_set_model(struct api_openai *a, const struct tokenizer *tok,
                         const char *chat_template, size_t chat_template_len, uint32_t n_ctx);
/* OpenAI's error type, code (NULL = JSON null) and HTTP status of an
 * api_error (its one table; exposed for unit tests). */
int api_openai_error_wire(enum api_error e, const char **type, const char **code);

/* Frees the api (its jobs are the core's: api_close frees them). NULL is
 * safe. */
void api_openai_free(struct api_openai *a);

/* The chat template requests are rendered with: --chat-template when set,
 * else recognised from the file's template, chatml when the file has none
 * (as llama.cpp's server does); CHAT_TEMPLATE_UNKNOWN when the file's
 * template is not one we know (chat requests then get a 400). */
enum chat_template api_openai_chat_template(const struct api_openai *a);

/* Validation of a completion (chat = false) or chat request body alone, as
 * the handlers do before submitting (for fuzzers and tests): 200, or the
 * error status with *err_body set to the OpenAI-shaped JSON error (caller
 * frees). 503 while no model is set. */
int api_openai_validate(struct api_openai *a, bool chat, const char *body, size_t len,
                        char **err_body);

#endif
