/* Incremental, UTF-8-safe detokenisation of one sequence's output and the
 * stop-string matcher with hold-back. A struct detok lives inside the
 * sequence and uses fixed buffers: no allocation per token. */
#ifndef LLORCH_DETOK_H
#define LLORCH_DETOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define DETOK_MAX_STOPS 4
#define DETOK_MAX_STOP_LEN 100
#define DETOK_PENDING_CAP 512   /* bytes of incomplete UTF-8 + held-back text */

struct detok {
    const struct tokenizer *tok;
    uint32_t n_stops;
    uint32_t stop_len[DETOK_MAX_STOPS];
    char stops[DETOK_MAX_STOPS][DETOK_MAX_STOP_LEN];
    bool first;                 /* SPM: drop the leading space of the very first piece */
    bool stopped;
    size_t pending_len;
    char pending[DETOK_PENDING_CAP]; /* held-back text (whole UTF-8) */
    /* implementation state */
    uint8_t part[4];            /* bytes of an incomplete UTF-8 character */
    uint8_t part_len, part_need, part_lo, part_hi;
    size_t max_stop_len;
};

/* Output space that always suffices for one detok_push or detok_flush with
 * this tokenizer: held-back text plus the longest piece, each byte possibly
 * becoming a 3-byte U+FFFD. DETOK_PENDING_CAP + 64 is enough for pieces up to
 * 128 bytes; detok_push returns LLORCH_ETOOBIG (consuming nothing) when cap is
 * too small for the token at hand, so a caller may retry with more. */
size_t detok_out_cap(const struct tokenizer *tok);

/* stops: up to DETOK_MAX_STOPS strings of 1..DETOK_MAX_STOP_LEN bytes.
 * strip_leading_space: true for a fresh SPM generation (as llama.cpp
 * detokenizes a fresh list). */
int detok_init(struct detok *d, const struct tokenizer *tok, const char *const *stops,
               const size_t *stop_lens, uint32_t n_stops, bool strip_leading_space);

/* Feeds one token. Appends to out (cap bytes) the text that is now final:
 * whole UTF-8 characters (invalid sequences become U+FFFD), minus any suffix
 * that could still begin a stop string. When a stop string completes,
 * *stop_idx is set to its index (else -1), text up to (not including) the stop
 * is emitted and the detok refuses further input. Returns bytes written or a
 * negative code (LLORCH_ETOOBIG if cap < what may be emitted, see
 * detok_out_cap(); LLORCH_EINVAL after a stop or for an id out of range).
 * Control tokens render as nothing (as llama_detokenize with
 * unparse_special=false). */
int detok_push(struct detok *d, llorch_token id, char *out, size_t cap, int *stop_idx);

/* End of generation: releases held-back text (incomplete UTF-8 as U+FFFD).
 * Returns bytes written or a negative code. */
int detok_flush(struct detok *d, char *out, size_t cap);

#endif
