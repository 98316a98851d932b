/* Subcommands of llorch-cli; each lives in its own tools/cli_<name>.c. */
#ifndef LLORCH_CLI_H
#define LLORCH_CLI_H

int cli_inspect_main(int argc, char **argv);
int cli_tokenize_main(int argc, char **argv);
int cli_detokenize_main(int argc, char **argv);
int cli_logits_main(int argc, char **argv);
int cli_generate_main(int argc, char **argv);

#endif
