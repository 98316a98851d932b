/* Tokenizers read from GGUF metadata, conformant with llama.cpp: byte-level
 * BPE ("gpt2", pre-split with PCRE2 by tokenizer.ggml.pre) and
 * SentencePiece-style ("llama"). A tokenizer is immutable after creation and
 * safe to use from several threads at once. */
#ifndef LLORCH_TOKENIZER_H
#define LLORCH_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "llorch/llorch.h"

enum tokenizer_kind { TOKENIZER_SPM, TOKENIZER_BPE };

struct tokenizer;

int tokenizer_new(struct tokenizer **out, const struct gguf_file *f, char *err, size_t errlen);
void tokenizer_free(struct tokenizer *t); /* NULL is safe */

enum tokenizer_kind tokenizer_kind(const struct tokenizer *t);
const char *tokenizer_pre_name(const struct tokenizer *t); /* "gpt-2", "llama-bpe", "default", ... */
uint32_t tokenizer_n_vocab(const struct tokenizer *t);
llorch_token tokenizer_bos(const struct tokenizer *t); /* -1 when none */
llorch_token tokenizer_eos(const struct tokenizer *t);
bool tokenizer_adds_bos(const struct tokenizer *t);
bool tokenizer_is_eog(const struct tokenizer *t, llorch_token id);
/* The end-of-generation set (eos, eot, eom, <|im_end|>, <|endoftext|>...). */
size_t tokenizer_eog_ids(const struct tokenizer *t, const llorch_token **ids);
bool tokenizer_is_control(const struct tokenizer *t, llorch_token id);

/* Encodes UTF-8 text. Returns LLORCH_EUTF8 for invalid UTF-8 (with the byte
 * offset of the first bad byte in *bad_offset if non-NULL). Writes at most cap
 * ids; *n_out is always the full count, and LLORCH_ETOOBIG is returned when it
 * exceeds cap. add_bos follows the caller (use tokenizer_adds_bos() for the
 * vocabulary's default); parse_special lets CONTROL tokens be matched in text. */
int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, bool add_bos,
                     bool parse_special, llorch_token *out, size_t cap, size_t *n_out,
                     size_t *bad_offset);

/* The raw bytes one token stands for when detokenised (byte-level BPE
 * decoded, "▁" as space, <0xNN> as the byte). Control tokens give their text
 * only if render_special. May be partial UTF-8. Returns the byte count
 * (truncated to cap) or a negative code for an id out of range. */
int tokenizer_token_bytes(const struct tokenizer *t, llorch_token id, bool render_special,
                          char *buf, size_t cap);

/* Detokenises a whole list as llama_detokenize(remove_special=false,
 * unparse_special=false) does, clean_spaces included. Same length contract as
 * tokenizer_encode (returns LLORCH_ETOOBIG when it does not fit). */
int tokenizer_decode(const struct tokenizer *t, const llorch_token *ids, size_t n, char *out,
                     size_t cap, size_t *n_out);

/* Validates UTF-8; returns true and leaves *bad_offset alone when valid. */
bool tokenizer_utf8_valid(const char *s, size_t len, size_t *bad_offset);

#endif
