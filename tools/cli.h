/* Subcommands of llorch-cli; each lives in its own tools/cli_<name>.c. */
#ifndef LLORCH_CLI_H
#define LLORCH_CLI_H

#include "llorch/llorch.h"

/* "1,2,3" -> ids (each 0..INT32_MAX, no spaces); returns the count, or -1
 * for a malformed list or more than cap ids. Shared by the subcommands that
 * take --tokens/--force lists. */
long cli_ids_parse(const char *s, llorch_token *out, long cap);

int cli_inspect_main(int argc, char **argv);
int cli_tokenize_main(int argc, char **argv);
int cli_detokenize_main(int argc, char **argv);
int cli_logits_main(int argc, char **argv);
int cli_generate_main(int argc, char **argv);
int cli_split_main(int argc, char **argv);

#endif
