/* Incremental detokenisation of one sequence: token pieces go through a
 * UTF-8 assembler (only whole characters leave it; an invalid sequence
 * becomes one U+FFFD per maximal invalid subpart, as the Unicode standard
 * recommends) and then through the stop-string matcher, which holds back any
 * suffix that could still grow into a stop string. All state lives in the
 * struct detok; nothing is allocated per token.
 *
 * Stop semantics follow llama.cpp's server: after each token the earliest
 * occurrence of any stop string wins (ties: the first stop in the list); the
 * text before it is emitted, the stop itself and anything after are not. */
#include "detok.h"

#include <string.h>

#include "util.h"

#define DETOK_CHUNK 256

struct sink {
    char *out;
    size_t cap, n;
};

LLORCH_API size_t detok_out_cap(const struct tokenizer *tok)
{
    return DETOK_MAX_STOP_LEN + 3 * (tokenizer_max_piece_len(tok) + 4) + 8;
}

LLORCH_API int detok_init(struct detok *d, const struct tokenizer *tok, const char *const *stops,
                          const size_t *stop_lens, uint32_t n_stops, bool strip_leading_space)
{
    if (!d || !tok || n_stops > DETOK_MAX_STOPS || (n_stops && (!stops || !stop_lens)))
        return LLORCH_EINVAL;
    memset(d, 0, sizeof(*d));
    for (uint32_t i = 0; i < n_stops; i++) {
        if (!stops[i] || stop_lens[i] == 0 || stop_lens[i] > DETOK_MAX_STOP_LEN)
            return LLORCH_EINVAL;
        memcpy(d->stops[i], stops[i], stop_lens[i]);
        d->stop_len[i] = (uint32_t)stop_lens[i];
        if (stop_lens[i] > d->max_stop_len)
            d->max_stop_len = stop_lens[i];
    }
    d->tok = tok;
    d->n_stops = n_stops;
    d->first = strip_leading_space;
    return 0;
}

static void sink_put(struct sink *s, const char *p, size_t n)
{
    /* The caller checked the worst case up front. */
    memcpy(s->out + s->n, p, n);
    s->n += n;
}

/* Length of the shortest tail of pending[0, len) that could still begin a
 * stop string: everything before it is final. */
static size_t hold_start(const struct detok *d, size_t len)
{
    size_t lo = len > d->max_stop_len ? len - d->max_stop_len + 1 : 0;
    for (size_t k = lo; k < len; k++) {
        size_t tail = len - k;
        for (uint32_t i = 0; i < d->n_stops; i++)
            if (tail < d->stop_len[i] && !memcmp(d->pending + k, d->stops[i], tail))
                return k;
    }
    return len;
}

/* Earliest stop occurrence in pending (ties: lowest index); -1 if none. */
static int find_stop(const struct detok *d, size_t *pos)
{
    int best = -1;
    size_t best_pos = 0;
    for (uint32_t i = 0; i < d->n_stops; i++) {
        const char *m = memmem(d->pending, d->pending_len, d->stops[i], d->stop_len[i]);
        if (m && (best < 0 || (size_t)(m - d->pending) < best_pos)) {
            best = (int)i;
            best_pos = (size_t)(m - d->pending);
        }
    }
    *pos = best_pos;
    return best;
}

/* Whole characters into the stop matcher; final text to the sink. Returns
 * the index of a stop string that completed, or -1. */
static int text_feed(struct detok *d, const char *p, size_t n, struct sink *s)
{
    if (d->n_stops == 0) {
        sink_put(s, p, n);
        return -1;
    }
    while (n > 0) {
        size_t m = LLORCH_MIN(n, DETOK_PENDING_CAP - d->pending_len);
        memcpy(d->pending + d->pending_len, p, m);
        d->pending_len += m;
        p += m;
        n -= m;
        size_t pos;
        int idx = find_stop(d, &pos);
        if (idx >= 0) {
            sink_put(s, d->pending, pos);
            d->pending_len = 0;
            d->stopped = true;
            return idx;
        }
        size_t k = hold_start(d, d->pending_len);
        sink_put(s, d->pending, k);
        memmove(d->pending, d->pending + k, d->pending_len - k);
        d->pending_len -= k;
    }
    return -1;
}

/* Bytes into the UTF-8 assembler; whole characters (or U+FFFD) go on into
 * chunk, which is passed to the matcher when full. */
struct chunk {
    char b[DETOK_CHUNK + 8];
    size_t n;
};

static int chunk_put(struct detok *d, struct chunk *c, const char *p, size_t n, struct sink *s)
{
    memcpy(c->b + c->n, p, n);
    c->n += n;
    if (c->n >= DETOK_CHUNK) {
        int idx = text_feed(d, c->b, c->n, s);
        c->n = 0;
        return idx;
    }
    return -1;
}

static const char fffd[3] = {'\xEF', '\xBF', '\xBD'};

static int utf8_byte(struct detok *d, unsigned char b, struct chunk *c, struct sink *s)
{
    int idx;
    if (d->part_len > 0) {
        bool ok = d->part_len == 1 ? (b >= d->part_lo && b <= d->part_hi) : ((b & 0xC0) == 0x80);
        if (ok) {
            d->part[d->part_len++] = b;
            if (d->part_len < d->part_need)
                return -1;
            d->part_len = 0;
            return chunk_put(d, c, (const char *)d->part, d->part_need, s);
        }
        /* The incomplete character ends here: one U+FFFD for it, then b
         * starts afresh. */
        d->part_len = 0;
        if ((idx = chunk_put(d, c, fffd, 3, s)) >= 0)
            return idx;
    }
    if (b < 0x80) {
        char ch = (char)b;
        return chunk_put(d, c, &ch, 1, s);
    }
    d->part_lo = 0x80;
    d->part_hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        d->part_need = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        d->part_need = 3;
        if (b == 0xE0)
            d->part_lo = 0xA0;
        else if (b == 0xED)
            d->part_hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        d->part_need = 4;
        if (b == 0xF0)
            d->part_lo = 0x90;
        else if (b == 0xF4)
            d->part_hi = 0x8F;
    } else {
        return chunk_put(d, c, fffd, 3, s);
    }
    d->part[0] = b;
    d->part_len = 1;
    return -1;
}

LLORCH_API int detok_push(struct detok *d, llorch_token id, char *out, size_t cap, int *stop_idx)
{
    if (stop_idx)
        *stop_idx = -1;
    if (!d || !d->tok || (!out && cap) || d->stopped)
        return LLORCH_EINVAL;
    size_t n;
    const char *p = tokenizer_token_piece(d->tok, id, false, &n);
    if (!p)
        return LLORCH_EINVAL;
    /* Worst case: all held text plus every byte as a U+FFFD. */
    if (cap < d->pending_len + 3 * ((size_t)d->part_len + n + 1))
        return LLORCH_ETOOBIG;
    if (d->first) {
        d->first = false;
        if (n && p[0] == ' ') {
            p++;
            n--;
        }
    }
    struct sink s = {out, cap, 0};
    struct chunk c;
    c.n = 0;
    int idx = -1;
    for (size_t i = 0; i < n && idx < 0; i++)
        idx = utf8_byte(d, (unsigned char)p[i], &c, &s);
    if (idx < 0 && c.n)
        idx = text_feed(d, c.b, c.n, &s);
    if (idx >= 0) {
        d->part_len = 0;
        if (stop_idx)
            *stop_idx = idx;
    }
    return (int)s.n;
}

LLORCH_API int detok_flush(struct detok *d, char *out, size_t cap)
{
    if (!d || (!out && cap))
        return LLORCH_EINVAL;
    if (d->stopped)
        return 0;
    if (cap < d->pending_len + 3)
        return LLORCH_ETOOBIG;
    struct sink s = {out, cap, 0};
    int idx = -1;
    if (d->part_len) {
        d->part_len = 0;
        idx = text_feed(d, fffd, 3, &s);
    }
    if (idx < 0) {
        sink_put(&s, d->pending, d->pending_len);
        d->pending_len = 0;
    }
    d->stopped = true;
    return (int)s.n;
}
