/* llorch-cli tokenize / detokenize: text to token ids and back with a GGUF
 * file's vocabulary, exactly as llama.cpp does. The file is opened with
 * gguf_open only, so vocab-only files (no tensors) work as well as models. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "gguf.h"
#include "tokenizer.h"

static int open_vocab(const char *cmd, const char *path, struct gguf_file **f,
                      struct tokenizer **t)
{
    char err[512] = "";
    int rc = gguf_open(f, path, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "llorch-cli %s: %s: %s\n", cmd, path, err[0] ? err : llorch_strerror(rc));
        return 1;
    }
    rc = tokenizer_new(t, *f, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "llorch-cli %s: %s: %s\n", cmd, path, err[0] ? err : llorch_strerror(rc));
        gguf_close(*f);
        return 1;
    }
    return 0;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, fp);
        n += r;
        if (n < cap) {
            if (ferror(fp)) {
                free(buf);
                buf = NULL;
            }
            break;
        }
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    fclose(fp);
    *len = n;
    return buf;
}

static void tokenize_usage(FILE *to)
{
    fprintf(to,
            "usage: llorch-cli tokenize --model MODEL [--bos] [--special] (--text T | --text-file F)\n"
            "  prints the token ids as a JSON array\n"
            "  --bos      add BOS where the vocabulary asks for it (llama.cpp add_special)\n"
            "  --special  match control tokens such as <|im_start|> in the text\n");
}

int cli_tokenize_main(int argc, char **argv)
{
    const char *model = NULL, *text = NULL, *text_file = NULL;
    bool bos = false, special = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(argv[i], "--text") && i + 1 < argc) {
            text = argv[++i];
        } else if (!strcmp(argv[i], "--text-file") && i + 1 < argc) {
            text_file = argv[++i];
        } else if (!strcmp(argv[i], "--bos")) {
            bos = true;
        } else if (!strcmp(argv[i], "--special")) {
            special = true;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            tokenize_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "llorch-cli tokenize: unexpected argument '%s'\n", argv[i]);
            tokenize_usage(stderr);
            return 2;
        }
    }
    if (!model || (!text == !text_file)) {
        tokenize_usage(stderr);
        return 2;
    }
    char *owned = NULL;
    size_t len;
    if (text_file) {
        owned = read_file(text_file, &len);
        if (!owned) {
            fprintf(stderr, "llorch-cli tokenize: %s: %s\n", text_file, strerror(errno));
            return 1;
        }
        text = owned;
    } else {
        len = strlen(text);
    }
    struct gguf_file *f = NULL;
    struct tokenizer *t = NULL;
    if (open_vocab("tokenize", model, &f, &t)) {
        free(owned);
        return 1;
    }
    int ret = 0;
    size_t cap = len + 16, n = 0, bad = 0;
    llorch_token *ids = malloc(cap * sizeof(*ids));
    int rc = ids ? tokenizer_encode(t, text, len, bos && tokenizer_adds_bos(t), special, ids, cap,
                                    &n, &bad)
                 : LLORCH_ENOMEM;
    if (rc == LLORCH_EUTF8) {
        fprintf(stderr, "llorch-cli tokenize: %s: invalid UTF-8 at byte offset %zu\n",
                text_file ? text_file : "--text", bad);
        ret = 1;
    } else if (rc) {
        fprintf(stderr, "llorch-cli tokenize: %s\n", llorch_strerror(rc));
        ret = 1;
    } else {
        putchar('[');
        for (size_t i = 0; i < n; i++)
            printf(i ? ",%d" : "%d", ids[i]);
        printf("]\n");
    }
    free(ids);
    free(owned);
    tokenizer_free(t);
    gguf_close(f);
    return ret;
}

static void detokenize_usage(FILE *to)
{
    fprintf(to, "usage: llorch-cli detokenize --model MODEL --ids 1,2,3\n"
                "  prints the text as llama_detokenize does (control tokens render as nothing);\n"
                "  a newline is added only when stdout is a terminal\n");
}

/* "1,2,3", "[1, 2, 3]" or "1 2 3". */
static int parse_ids(const char *s, llorch_token **out, size_t *n)
{
    size_t cap = 16;
    *n = 0;
    *out = malloc(cap * sizeof(**out));
    if (!*out)
        return LLORCH_ENOMEM;
    while (*s) {
        if (*s == '[' || *s == ']' || *s == ',' || *s == ' ' || *s == '\t' || *s == '\n') {
            s++;
            continue;
        }
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX)
            return LLORCH_EINVAL;
        if (*n == cap) {
            llorch_token *nv = realloc(*out, cap * 2 * sizeof(**out));
            if (!nv)
                return LLORCH_ENOMEM;
            *out = nv;
            cap *= 2;
        }
        (*out)[(*n)++] = (llorch_token)v;
        s = end;
    }
    return 0;
}

int cli_detokenize_main(int argc, char **argv)
{
    const char *model = NULL, *ids_arg = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(argv[i], "--ids") && i + 1 < argc) {
            ids_arg = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            detokenize_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "llorch-cli detokenize: unexpected argument '%s'\n", argv[i]);
            detokenize_usage(stderr);
            return 2;
        }
    }
    if (!model || !ids_arg) {
        detokenize_usage(stderr);
        return 2;
    }
    llorch_token *ids = NULL;
    size_t n = 0;
    if (parse_ids(ids_arg, &ids, &n)) {
        fprintf(stderr, "llorch-cli detokenize: --ids: want comma-separated token ids\n");
        free(ids);
        return 2;
    }
    struct gguf_file *f = NULL;
    struct tokenizer *t = NULL;
    if (open_vocab("detokenize", model, &f, &t)) {
        free(ids);
        return 1;
    }
    int ret = 0;
    for (size_t i = 0; i < n; i++) {
        if ((uint32_t)ids[i] >= tokenizer_n_vocab(t)) {
            fprintf(stderr, "llorch-cli detokenize: id %d out of range (vocabulary has %u)\n",
                    ids[i], tokenizer_n_vocab(t));
            ret = 1;
            goto out;
        }
    }
    size_t cap = n * tokenizer_max_piece_len(t) + 1, len = 0;
    char *text = malloc(cap);
    int rc = text ? tokenizer_decode(t, ids, n, text, cap, &len) : LLORCH_ENOMEM;
    if (rc) {
        fprintf(stderr, "llorch-cli detokenize: %s\n", llorch_strerror(rc));
        ret = 1;
    } else {
        fwrite(text, 1, len, stdout);
        if (isatty(STDOUT_FILENO))
            putchar('\n');
    }
    free(text);
out:
    free(ids);
    tokenizer_free(t);
    gguf_close(f);
    return ret;
}
