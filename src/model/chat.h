/* Chat templates for /v1/chat/completions: the families found in real GGUF
 * files, recognised from tokenizer.chat_template the way llama.cpp's
 * llm_chat_detect_template does (markers in the Jinja text; no Jinja
 * engine), and rendered to a prompt string with control tokens in text form
 * (the caller tokenizes it with parse_special). */
#ifndef LLORCH_CHAT_H
#define LLORCH_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#define CHAT_TEMPLATE_MAP(XX)                                                  \
    XX(CHATML, "chatml")                                                       \
    XX(LLAMA2, "llama2")                                                       \
    XX(LLAMA2_SYS, "llama2-sys")                                               \
    XX(LLAMA2_SYS_BOS, "llama2-sys-bos")                                       \
    XX(LLAMA2_SYS_STRIP, "llama2-sys-strip")                                   \
    XX(MISTRAL_V1, "mistral-v1")                                               \
    XX(MISTRAL_V3, "mistral-v3")                                               \
    XX(MISTRAL_V3_TEKKEN, "mistral-v3-tekken")                                 \
    XX(MISTRAL_V7, "mistral-v7")                                               \
    XX(LLAMA3, "llama3")                                                       \
    XX(ZEPHYR, "zephyr")                                                       \
    XX(PHI3, "phi3")                                                           \
    XX(PHI4, "phi4")                                                           \
    XX(FALCON3, "falcon3")                                                     \
    XX(GEMMA, "gemma")                                                         \
    XX(VICUNA, "vicuna")                                                       \
    XX(VICUNA_ORCA, "vicuna-orca")

enum chat_template {
    CHAT_TEMPLATE_UNKNOWN = 0,
#define CHAT_XX_(id, name) CHAT_TEMPLATE_##id,
    CHAT_TEMPLATE_MAP(CHAT_XX_)
#undef CHAT_XX_
    CHAT_TEMPLATE_COUNT_,
};

struct chat_message {
    const char *role;     /* "system", "user", "assistant" (others passed through) */
    size_t role_len;
    const char *content;  /* UTF-8 */
    size_t content_len;
};

/* Recognises a template by name ("chatml") or by markers in its Jinja text;
 * CHAT_TEMPLATE_UNKNOWN when neither. */
enum chat_template chat_template_detect(const char *tmpl, size_t len);
/* Only by name; CHAT_TEMPLATE_UNKNOWN for an unknown name. */
enum chat_template chat_template_from_name(const char *name);
const char *chat_template_name(enum chat_template t);
/* "chatml, llama2, ..." for error messages. */
const char *chat_template_names(void);

/* Renders the conversation. *out is malloc'd and NUL-terminated (free()
 * it); *out_len excludes the NUL. add_assistant appends the prefix of the
 * assistant's turn. Returns LLORCH_EUNSUPPORTED for CHAT_TEMPLATE_UNKNOWN,
 * LLORCH_ENOMEM, or LLORCH_ETOOBIG past max_len bytes. */
int chat_render(enum chat_template t, const struct chat_message *msgs, size_t n,
                bool add_assistant, size_t max_len, char **out, size_t *out_len);

#endif
