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
    char pending[DETOK_PENDING_CAP];
    /* implementation state may follow */
};

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
 * negative code (LLORCH_ETOOBIG if cap < what must be emitted; cap >=
 * DETOK_PENDING_CAP + 64 always suffices). */
int detok_push(struct detok *d, llorch_token id, char *out, size_t cap, int *stop_idx);

/* End of generation: releases held-back text (incomplete UTF-8 as U+FFFD).
 * Returns bytes written or a negative code. */
int detok_flush(struct detok *d, char *out, size_t cap);

#endif
