/* llorch-cli: inspect, tokenize, detokenize, logits, generate, split. Dispatches to
 * the subcommand named by argv[1]; each subcommand parses its own flags. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "llorch/config.h"

long cli_ids_parse(const char *s, llorch_token *out, long cap)
{
    long n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || n >= cap)
            return -1;
        out[n++] = (llorch_token)v;
        p = end;
        if (*p == ',')
            p++;
        else if (*p)
            return -1;
    }
    return n;
}

struct subcommand {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *summary;
};

static const struct subcommand subcommands[] = {
#if LLORCH_CLI_HAS_INSPECT
    {"inspect", cli_inspect_main, "MODEL [--json] [--tensors]: architecture, shapes, tokenizer"},
#endif
#if LLORCH_CLI_HAS_TOKENIZE
    {"tokenize", cli_tokenize_main, "--model M [--bos] [--special] (--text T | --text-file F)"},
    {"detokenize", cli_detokenize_main, "--model M --ids 1,2,3"},
#endif
#if LLORCH_CLI_HAS_LOGITS
    {"logits", cli_logits_main, "--model M (--tokens 1,2 | --prompt T) [--dtype] [--kv] ..."},
#endif
#if LLORCH_CLI_HAS_GENERATE
    {"generate", cli_generate_main, "--model M --prompt T [sampling flags]"},
#endif
#if LLORCH_CLI_HAS_SPLIT
    {"split", cli_split_main, "--model M --out PREFIX [--stages N | --layers 0-7,8-15]"},
#endif
    {NULL, NULL, NULL},
};

static void usage(FILE *to)
{
    fprintf(to, "usage: llorch-cli COMMAND [ARGS]\n\ncommands:\n");
    for (const struct subcommand *c = subcommands; c->name; c++)
        fprintf(to, "  %-11s %s\n", c->name, c->summary);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("llorch-cli %s\n", LLORCH_VERSION);
        return 0;
    }
    for (const struct subcommand *c = subcommands; c->name; c++)
        if (!strcmp(argv[1], c->name))
            return c->main(argc - 1, argv + 1);
    fprintf(stderr, "llorch-cli: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
