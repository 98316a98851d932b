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
 * vocabulary's default, which gives llama_tokenize(add_special=true)); EOS is
 * never appended. parse_special lets CONTROL tokens be matched in text;
 * USER_DEFINED tokens are always split out, as llama.cpp does. */
int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, bool add_bos,
                     bool parse_special, llorch_token *out, size_t cap, size_t *n_out,
                     size_t *bad_offset);

/* tokenizer_encode without the per-call word cache it uses on long inputs
 * (same ids; tests compare the two paths). */
int tokenizer_encode_nocache(const struct tokenizer *t, const char *text, size_t len, bool add_bos,
                             bool parse_special, llorch_token *out, size_t cap, size_t *n_out,
                             size_t *bad_offset);

/* The raw bytes one token stands for when detokenised (byte-level BPE
 * decoded, "▁" as space, <0xNN> as the byte). Control tokens give their text
 * only if render_special. May be partial UTF-8. Returns the byte count
 * (truncated to cap) or a negative code for an id out of range. */
int tokenizer_token_bytes(const struct tokenizer *t, llorch_token id, bool render_special,
                          char *buf, size_t cap);

/* The same bytes without copying: a pointer into the tokenizer (valid until
 * tokenizer_free), or NULL for an id out of range. *len gets the length (0
 * for control tokens unless render_special). */
const char *tokenizer_token_piece(const struct tokenizer *t, llorch_token id, bool render_special,
                                  size_t *len);

/* Detokenises a whole list as llama_detokenize(remove_special=false,
 * unparse_special=false) does, clean_spaces included. Same length contract as
 * tokenizer_encode (returns LLORCH_ETOOBIG when it does not fit). */
int tokenizer_decode(const struct tokenizer *t, const llorch_token *ids, size_t n, char *out,
                     size_t cap, size_t *n_out);

/* Validates UTF-8 (no overlongs, surrogates or code points above U+10FFFF);
 * returns true and leaves *bad_offset alone when valid, else stores the
 * offset of the first byte of the first invalid sequence. */
bool tokenizer_utf8_valid(const char *s, size_t len, size_t *bad_offset);

/* Token attributes, numbered as llama.cpp's llama_token_attr bits (after the
 * adjustments llama.cpp makes at load: EOG-named tokens become CONTROL, ...). */
enum tokenizer_attr {
    TOKENIZER_ATTR_UNDEFINED = 0,
    TOKENIZER_ATTR_UNKNOWN = 1 << 0,
    TOKENIZER_ATTR_UNUSED = 1 << 1,
    TOKENIZER_ATTR_NORMAL = 1 << 2,
    TOKENIZER_ATTR_CONTROL = 1 << 3,
    TOKENIZER_ATTR_USER_DEFINED = 1 << 4,
    TOKENIZER_ATTR_BYTE = 1 << 5,
    TOKENIZER_ATTR_NORMALIZED = 1 << 6,
    TOKENIZER_ATTR_LSTRIP = 1 << 7,
    TOKENIZER_ATTR_RSTRIP = 1 << 8,
    TOKENIZER_ATTR_SINGLE_WORD = 1 << 9,
};

/* Attribute bits of a token (0 for an id out of range). */
unsigned tokenizer_token_attr(const struct tokenizer *t, llorch_token id);
/* The vocabulary string of a token as stored in the file (not decoded), or
 * NULL for an id out of range. Not NUL-terminated; *len gets its length. */
const char *tokenizer_token_text(const struct tokenizer *t, llorch_token id, size_t *len);
/* Other special ids (-1 when none). */
llorch_token tokenizer_eot(const struct tokenizer *t);
llorch_token tokenizer_unk(const struct tokenizer *t);
llorch_token tokenizer_pad(const struct tokenizer *t);
bool tokenizer_adds_eos(const struct tokenizer *t);
/* Whether tokenizer_decode applies llama.cpp's clean_spaces pass. */
bool tokenizer_clean_spaces(const struct tokenizer *t);
/* Longest tokenizer_token_bytes() result over the vocabulary (render_special
 * true), for sizing buffers. */
size_t tokenizer_max_piece_len(const struct tokenizer *t);

#endif
