/* Token sampling: logits processors and a seeded draw, with llama.cpp's
 * semantics and its default chain order where the parameters overlap.
 *
 * Order of application (llama.cpp common_sampler default chain, restricted to
 * the samplers we offer; DRY, typical-p, XTC, top-n-sigma are absent):
 *
 *   1. penalties   repetition, frequency, presence over the last
 *                  penalty_last_n tokens of prompt + generated (default 64,
 *                  llama.cpp's repeat_last_n; the scheduler passes the whole
 *                  history, prompt first, and the window is its tail):
 *                    logit <= 0 ? logit *= repeat : logit /= repeat
 *                    logit -= count * frequency + (count > 0) * presence
 *                  applied once per distinct token of the window.
 *   2. top_k       keep the k highest logits (0 = off)
 *   3. top_p       keep the smallest head of the sorted list whose
 *                  probability (softmax of the current logits, before
 *                  temperature) sums to >= top_p (1 = off)
 *   4. min_p       keep logits >= max_logit + log(min_p), i.e. p >= min_p *
 *                  p_max (0 = off)
 *   5. temperature divide the logits by it
 *   6. dist        softmax of what is left and one draw u in [0, 1) from the
 *                  request's own RNG: the first candidate whose running sum
 *                  exceeds u * sum.
 *
 * temperature 0 is greedy: penalties, then the first maximum over the vocab
 * (lowest id on ties; top_k/top_p/min_p cannot change the argmax); greedy
 * draws nothing from the RNG. Ties in sorted lists are broken by lower id, so
 * results are deterministic. repetition_penalty <= 0 is treated as off (1).
 *
 * The RNG is xoshiro256** seeded through splitmix64 from the 64-bit seed: a
 * sequence of draws depends only on the seed and on how many draws came
 * before, never on other requests. Log-probs (OpenAI `logprobs`) are
 * log_softmax of the raw logits (before penalties and temperature), as
 * llama-server reports them.
 *
 * Memory: struct sampler is the per-request state (fixed size); struct
 * sample_scratch holds the candidate buffers sized by n_vocab, allocated once
 * per sampling thread; sample_token() allocates nothing. */
#ifndef LLORCH_SAMPLE_H
#define LLORCH_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/llorch.h"

#define SAMPLE_MAX_LOGPROBS 20
#define SAMPLE_PENALTY_LAST_N 64      /* default window, llama.cpp's repeat_last_n */
#define SAMPLE_PENALTY_MAX_N 4096     /* largest window accepted */

struct sample_params {
    float temperature;            /* 0 = greedy; finite, >= 0 */
    uint32_t top_k;               /* 0 = off */
    float top_p;                  /* [0, 1]; 1 = off */
    float min_p;                  /* [0, 1]; 0 = off */
    float repetition_penalty;     /* 1 = off (<= 0 also off) */
    float presence_penalty;       /* 0 = off */
    float frequency_penalty;      /* 0 = off */
    uint32_t penalty_last_n;      /* window, 0..SAMPLE_PENALTY_MAX_N; 0 = penalties off */
    uint64_t seed;
    uint32_t n_logprobs;          /* 0..SAMPLE_MAX_LOGPROBS */
};

/* Per-request state: the parameters and the RNG. Plain data (copyable). */
struct sampler {
    struct sample_params p;
    uint64_t rng[4];
};

struct sample_logprob {
    llorch_token id;
    float logprob;
};

struct sample_out {
    llorch_token id;
    float logprob;                /* of id under log_softmax(raw logits); when n_logprobs > 0 */
    uint32_t n_top;
    struct sample_logprob top[SAMPLE_MAX_LOGPROBS]; /* descending, ties by lower id */
};

/* One candidate of the working list. */
struct sample_cand {
    llorch_token id;
    float logit;
    float p;
};

/* The working list the processors narrow down; data is caller-owned. */
struct sample_cands {
    struct sample_cand *data;
    size_t size;
    bool sorted;                  /* data is in descending logit order */
};

struct sample_scratch;

/* Defaults: temperature 1, everything else off, window 64, seed 0. */
void sample_params_default(struct sample_params *p);
/* 0 or LLORCH_EINVAL naming nothing: the caller validates field by field. */
int sample_params_check(const struct sample_params *p);

void sample_init(struct sampler *s, const struct sample_params *p);

int sample_scratch_new(struct sample_scratch **out, uint32_t n_vocab);
void sample_scratch_free(struct sample_scratch *sc); /* NULL is safe */

/* Picks the next token from logits [n_vocab] (read-only). history holds the
 * tokens so far (prompt then generated); its last penalty_last_n entries are
 * the penalty window. Returns 0, or LLORCH_EINVAL for a history token out of
 * range. No allocation. */
int sample_token(struct sampler *s, struct sample_scratch *sc, const float *logits,
                 const llorch_token *history, size_t n_history, struct sample_out *out);

/* The steps, exposed for tests and for callers that build their own chain.
 * penalties work on a dense logits array [n_vocab] indexed by id; tmp needs
 * n_win entries. */
void sample_penalties_apply(float *logits, uint32_t n_vocab, const llorch_token *win,
                            size_t n_win, float repeat, float freq, float presence,
                            llorch_token *tmp);
void sample_top_k_apply(struct sample_cands *c, uint32_t k);
void sample_top_p_apply(struct sample_cands *c, float p);
void sample_min_p_apply(struct sample_cands *c, float p);
void sample_temp_apply(struct sample_cands *c, float t);
/* Fills p with the softmax of the logits (list order unchanged). */
void sample_softmax(struct sample_cands *c);
/* Index chosen for a uniform u in [0, 1) (also fills p). */
size_t sample_dist_pick(struct sample_cands *c, double u);

/* The request's RNG: next 64 bits, and a double in [0, 1) from the top 53. */
uint64_t sample_rng_next(struct sampler *s);
double sample_rng_uniform(struct sampler *s);

#endif
