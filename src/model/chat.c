/* Chat template detection and rendering. Detection follows the marker
 * checks of llama.cpp's llm_chat_detect_template, in the same order, so that
 * a GGUF file picks the same family here as there; rendering reproduces each
 * family's turn layout. */
#include "chat.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/error.h"
#include "util.h"

static const char *const template_names[] = {
    [CHAT_TEMPLATE_UNKNOWN] = "unknown",
#define CHAT_XX_(id, name) [CHAT_TEMPLATE_##id] = name,
    CHAT_TEMPLATE_MAP(CHAT_XX_)
#undef CHAT_XX_
};

LLORCH_API const char *chat_template_name(enum chat_template t)
{
    if ((int)t < 0 || t >= CHAT_TEMPLATE_COUNT_)
        return "unknown";
    return template_names[t];
}

LLORCH_API const char *chat_template_names(void)
{
    return "chatml, llama2, llama2-sys, llama2-sys-bos, llama2-sys-strip, mistral-v1, "
           "mistral-v3, mistral-v3-tekken, mistral-v7, llama3, zephyr, phi3, phi4, falcon3, "
           "gemma, vicuna, vicuna-orca";
}

LLORCH_API enum chat_template chat_template_from_name(const char *name)
{
    for (int t = 1; t < CHAT_TEMPLATE_COUNT_; t++)
        if (!strcmp(name, template_names[t]))
            return (enum chat_template)t;
    return CHAT_TEMPLATE_UNKNOWN;
}

/* memmem over an explicit length: the template comes from the file and is
 * not trusted to be NUL-terminated. */
static bool has(const char *s, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    return s && n <= len && memmem(s, len, needle, n) != NULL;
}

LLORCH_API enum chat_template chat_template_detect(const char *tmpl, size_t len)
{
    if (len < 64) {
        char name[64];
        memcpy(name, tmpl, len);
        name[len] = '\0';
        enum chat_template t = chat_template_from_name(name);
        if (t != CHAT_TEMPLATE_UNKNOWN)
            return t;
    }
    if (has(tmpl, len, "<|im_start|>"))
        return has(tmpl, len, "<|im_sep|>") ? CHAT_TEMPLATE_PHI4 : CHAT_TEMPLATE_CHATML;
    if ((len >= 7 && !memcmp(tmpl, "mistral", 7)) || has(tmpl, len, "[INST]")) {
        if (has(tmpl, len, "[SYSTEM_PROMPT]"))
            return CHAT_TEMPLATE_MISTRAL_V7;
        if (has(tmpl, len, "' [INST] ' + system_message") || has(tmpl, len, "[AVAILABLE_TOOLS]")) {
            if (has(tmpl, len, " [INST]"))
                return CHAT_TEMPLATE_MISTRAL_V1;
            if (has(tmpl, len, "\"[INST]\""))
                return CHAT_TEMPLATE_MISTRAL_V3_TEKKEN;
            return CHAT_TEMPLATE_MISTRAL_V3;
        }
        if (has(tmpl, len, "content.strip()"))
            return CHAT_TEMPLATE_LLAMA2_SYS_STRIP;
        if (has(tmpl, len, "bos_token + '[INST]"))
            return CHAT_TEMPLATE_LLAMA2_SYS_BOS;
        if (has(tmpl, len, "<<SYS>>"))
            return CHAT_TEMPLATE_LLAMA2_SYS;
        return CHAT_TEMPLATE_LLAMA2;
    }
    if (has(tmpl, len, "<|assistant|>") && has(tmpl, len, "<|end|>"))
        return CHAT_TEMPLATE_PHI3;
    if (has(tmpl, len, "<|assistant|>") && has(tmpl, len, "<|user|>") && has(tmpl, len, "</s>"))
        return CHAT_TEMPLATE_FALCON3;
    if (has(tmpl, len, "<|user|>") && has(tmpl, len, "<|endoftext|>"))
        return CHAT_TEMPLATE_ZEPHYR;
    if (has(tmpl, len, "<start_of_turn>"))
        return CHAT_TEMPLATE_GEMMA;
    if (has(tmpl, len, "USER: ") && has(tmpl, len, "ASSISTANT: "))
        return has(tmpl, len, "SYSTEM: ") ? CHAT_TEMPLATE_VICUNA_ORCA : CHAT_TEMPLATE_VICUNA;
    if (has(tmpl, len, "<|start_header_id|>") && has(tmpl, len, "<|end_header_id|>"))
        return CHAT_TEMPLATE_LLAMA3;
    return CHAT_TEMPLATE_UNKNOWN;
}

/* A growable output buffer with a hard cap. */
struct buf {
    char *p;
    size_t len, cap, max;
    int err;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->err)
        return;
    size_t need;
    if (llorch_size_add_overflows(b->len, n + 1, &need) || need > b->max + 1) {
        b->err = LLORCH_ETOOBIG;
        return;
    }
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->err = LLORCH_ENOMEM;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Leading and trailing ASCII whitespace removed, as the templates' trim. */
static void put_trimmed(struct buf *b, const char *s, size_t n)
{
    while (n && isspace((unsigned char)s[0])) {
        s++;
        n--;
    }
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    put(b, s, n);
}

static bool role_is(const struct chat_message *m, const char *role)
{
    size_t n = strlen(role);
    return m->role_len == n && !memcmp(m->role, role, n);
}

static void put_content(struct buf *b, const struct chat_message *m)
{
    put(b, m->content, m->content_len);
}

static void render_llama2(struct buf *b, enum chat_template t, const struct chat_message *msgs,
                          size_t n)
{
    bool sys = t != CHAT_TEMPLATE_LLAMA2;
    bool bos_inside = t == CHAT_TEMPLATE_LLAMA2_SYS_BOS;
    bool strip = t == CHAT_TEMPLATE_LLAMA2_SYS_STRIP;
    bool inside_turn = true; /* the BOS of the first turn comes from the tokenizer */
    puts_(b, "[INST] ");
    for (size_t i = 0; i < n; i++) {
        const struct chat_message *m = &msgs[i];
        if (!inside_turn) {
            inside_turn = true;
            puts_(b, bos_inside ? "<s>[INST] " : "[INST] ");
        }
        if (role_is(m, "system")) {
            if (sys)
                puts_(b, "<<SYS>>\n");
            if (strip)
                put_trimmed(b, m->content, m->content_len);
            else
                put_content(b, m);
            puts_(b, sys ? "\n<</SYS>>\n\n" : "\n");
        } else if (role_is(m, "user")) {
            if (strip)
                put_trimmed(b, m->content, m->content_len);
            else
                put_content(b, m);
            puts_(b, " [/INST]");
        } else {
            if (strip)
                put_trimmed(b, m->content, m->content_len);
            else
                put_content(b, m);
            puts_(b, "</s>");
            inside_turn = false;
        }
    }
}

static void render_mistral(struct buf *b, enum chat_template t, const struct chat_message *msgs,
                           size_t n)
{
    if (t == CHAT_TEMPLATE_MISTRAL_V7) {
        for (size_t i = 0; i < n; i++) {
            const struct chat_message *m = &msgs[i];
            if (role_is(m, "system")) {
                puts_(b, "[SYSTEM_PROMPT] ");
                put_content(b, m);
                puts_(b, "[/SYSTEM_PROMPT]");
            } else if (role_is(m, "user")) {
                puts_(b, "[INST] ");
                put_content(b, m);
                puts_(b, "[/INST]");
            } else {
                puts_(b, " ");
                put_content(b, m);
                puts_(b, "</s>");
            }
        }
        return;
    }
    const char *lead = t == CHAT_TEMPLATE_MISTRAL_V1 ? " " : "";
    const char *trail = t == CHAT_TEMPLATE_MISTRAL_V3_TEKKEN ? "" : " ";
    bool trim_assistant = t == CHAT_TEMPLATE_MISTRAL_V3;
    bool inside_turn = false;
    for (size_t i = 0; i < n; i++) {
        const struct chat_message *m = &msgs[i];
        if (!inside_turn) {
            puts_(b, lead);
            puts_(b, "[INST]");
            puts_(b, trail);
            inside_turn = true;
        }
        if (role_is(m, "system")) {
            put_content(b, m);
            puts_(b, "\n\n");
        } else if (role_is(m, "user")) {
            put_content(b, m);
            puts_(b, lead);
            puts_(b, "[/INST]");
        } else {
            puts_(b, trail);
            if (trim_assistant)
                put_trimmed(b, m->content, m->content_len);
            else
                put_content(b, m);
            puts_(b, "</s>");
            inside_turn = false;
        }
    }
}

static void render_gemma(struct buf *b, const struct chat_message *msgs, size_t n, bool add_ass)
{
    /* Gemma has no system turn: system texts (trimmed, concatenated) are
     * merged into the next user turn. */
    size_t sys_from = 0;
    bool sys_pending = false;
    for (size_t i = 0; i < n; i++) {
        const struct chat_message *m = &msgs[i];
        if (role_is(m, "system")) {
            if (!sys_pending)
                sys_from = i;
            sys_pending = true;
            continue;
        }
        bool model = role_is(m, "assistant");
        puts_(b, "<start_of_turn>");
        if (model)
            puts_(b, "model");
        else
            put(b, m->role, m->role_len);
        puts_(b, "\n");
        if (sys_pending && !model) {
            for (size_t k = sys_from; k < i; k++)
                if (role_is(&msgs[k], "system"))
                    put_trimmed(b, msgs[k].content, msgs[k].content_len);
            puts_(b, "\n\n");
            sys_pending = false;
        }
        put_trimmed(b, m->content, m->content_len);
        puts_(b, "<end_of_turn>\n");
    }
    if (add_ass)
        puts_(b, "<start_of_turn>model\n");
}

static void render_vicuna(struct buf *b, bool orca, const struct chat_message *msgs, size_t n,
                          bool add_ass)
{
    for (size_t i = 0; i < n; i++) {
        const struct chat_message *m = &msgs[i];
        if (role_is(m, "system")) {
            if (orca) {
                puts_(b, "SYSTEM: ");
                put_content(b, m);
                puts_(b, "\n");
            } else {
                put_content(b, m);
                puts_(b, "\n\n");
            }
        } else if (role_is(m, "user")) {
            puts_(b, "USER: ");
            put_content(b, m);
            puts_(b, "\n");
        } else if (role_is(m, "assistant")) {
            puts_(b, "ASSISTANT: ");
            put_content(b, m);
            puts_(b, "</s>\n");
        }
    }
    if (add_ass)
        puts_(b, "ASSISTANT:");
}

/* Families whose turns are "<prefix>role<mid>content<suffix>". */
static void render_simple(struct buf *b, const char *pre, const char *mid, const char *suf,
                          bool trim, const struct chat_message *msgs, size_t n, bool add_ass)
{
    for (size_t i = 0; i < n; i++) {
        puts_(b, pre);
        put(b, msgs[i].role, msgs[i].role_len);
        puts_(b, mid);
        if (trim)
            put_trimmed(b, msgs[i].content, msgs[i].content_len);
        else
            put_content(b, &msgs[i]);
        puts_(b, suf);
    }
    if (add_ass) {
        puts_(b, pre);
        puts_(b, "assistant");
        puts_(b, mid);
    }
}

LLORCH_API int chat_render(enum chat_template t, const struct chat_message *msgs, size_t n,
                           bool add_assistant, size_t max_len, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    struct buf b = {.max = max_len};
    switch (t) {
    case CHAT_TEMPLATE_CHATML:
        render_simple(&b, "<|im_start|>", "\n", "<|im_end|>\n", false, msgs, n, add_assistant);
        break;
    case CHAT_TEMPLATE_PHI4:
        render_simple(&b, "<|im_start|>", "<|im_sep|>", "<|im_end|>", false, msgs, n,
                      add_assistant);
        break;
    case CHAT_TEMPLATE_LLAMA2:
    case CHAT_TEMPLATE_LLAMA2_SYS:
    case CHAT_TEMPLATE_LLAMA2_SYS_BOS:
    case CHAT_TEMPLATE_LLAMA2_SYS_STRIP:
        render_llama2(&b, t, msgs, n);
        break;
    case CHAT_TEMPLATE_MISTRAL_V1:
    case CHAT_TEMPLATE_MISTRAL_V3:
    case CHAT_TEMPLATE_MISTRAL_V3_TEKKEN:
    case CHAT_TEMPLATE_MISTRAL_V7:
        render_mistral(&b, t, msgs, n);
        break;
    case CHAT_TEMPLATE_LLAMA3:
        render_simple(&b, "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", true,
                      msgs, n, add_assistant);
        break;
    case CHAT_TEMPLATE_ZEPHYR:
        render_simple(&b, "<|", "|>\n", "<|endoftext|>\n", false, msgs, n, add_assistant);
        break;
    case CHAT_TEMPLATE_PHI3:
        render_simple(&b, "<|", "|>\n", "<|end|>\n", false, msgs, n, add_assistant);
        break;
    case CHAT_TEMPLATE_FALCON3:
        render_simple(&b, "<|", "|>\n", "\n", false, msgs, n, add_assistant);
        break;
    case CHAT_TEMPLATE_GEMMA:
        render_gemma(&b, msgs, n, add_assistant);
        break;
    case CHAT_TEMPLATE_VICUNA:
    case CHAT_TEMPLATE_VICUNA_ORCA:
        render_vicuna(&b, t == CHAT_TEMPLATE_VICUNA_ORCA, msgs, n, add_assistant);
        break;
    default:
        return LLORCH_EUNSUPPORTED;
    }
    if (!b.err && !b.p)
        put(&b, "", 0);
    if (b.err) {
        free(b.p);
        return b.err;
    }
    *out = b.p;
    *out_len = b.len;
    return 0;
}
