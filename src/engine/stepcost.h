/* The step cost model and the prefill budget of the scheduler (stall-free
 * batching, after Sarathi-Serve: Agrawal et al., "Taming Throughput-Latency
 * Tradeoff in LLM Inference with Sarathi-Serve", OSDI 2024). A step's time is
 * fitted, as the engine runs, as
 *
 *   t = fixed + prefill_step * [n_prefill > 0] + prefill_token * n_prefill
 *         + decode_seq * n_decode
 *
 * (the weights are read once per step whatever it carries; each prefill token
 * and each decoded sequence adds its rows to the matmuls and its attention;
 * a step with prompt chunks leaves the small-m GEMV path) by exponentially
 * weighted least squares over the recent steps. The prefill chunk of the next
 * step is what keeps the step within the latency target: by default twice a
 * pure decode step of the current batch, so that a running stream's token
 * interval at most doubles while a prompt is prefilled. With nothing decoding
 * the chunk is the cap (the largest step prefills fastest). Pure functions of
 * their arguments, no threads, no allocation: the tests drive them with a
 * made-up cost. */
#ifndef LLORCH_STEPCOST_H
#define LLORCH_STEPCOST_H

#include <stdbool.h>
#include <stdint.h>

#define STEPCOST_NX 4            /* fixed, prefill_step, prefill_token, decode_seq */
#define STEPCOST_DECAY 0.95      /* weight of a step one step older: ~20 steps remembered */
#define STEPCOST_PROBE_TOKENS 16 /* prefill chunk next to decodes before any is measured */
#define STEPCOST_MIN_CHUNK 4     /* prompts always progress, even past the target */
#define STEPCOST_INC_DECAY 0.7   /* the measured cost of a prompt token follows the last steps */
#define STEPCOST_RATIO_DEFAULT 2.0 /* automatic target: this many pure decode steps */

struct stepcost {
    double s[STEPCOST_NX][STEPCOST_NX];  /* decayed sum of x x^T */
    double r[STEPCOST_NX];               /* decayed sum of x t */
    double theta[STEPCOST_NX];           /* the fit, seconds; see the formula above */
    double w_total, w_prefill, w_decode; /* decayed weight of all, prefill, decode steps */
    /* What a prompt token really added to the recent steps that carried
     * decodes too: (time - predicted decode step) / prompt tokens, the extra
     * fixed part included, so it holds at the chunk size in use even when
     * the fit cannot tell the fixed part from the per-token part (steps of
     * one chunk size). Decayed sum and weight. */
    double inc, w_inc;
    /* The measured pure decode step (decayed mean over decode-only steps, and
     * the batch of the last one): the reference of the target and of the
     * per-token measure. Only decode-only steps move it, so a long prefill
     * (no decode-only steps for minutes) cannot drag it along. */
    double dec, w_dec;
    uint32_t dec_n;
    uint64_t n_steps;
    /* The automatic target as a multiple of the pure decode step (>= 1;
     * STEPCOST_RATIO_DEFAULT after stepcost_init). It is the policy's one
     * trade-off: on a compute-bound host a prompt token costs about what a
     * decoded token costs, so a step of ratio r decode steps gives the
     * running streams 1/r of their throughput and the prompt (r - 1) decode
     * steps' worth of tokens per step (see bench/README.md, "Stall-free
     * steps"). */
    double ratio;
};

/* The cost figures as last fitted (seconds). */
struct stepcost_fit {
    double fixed, prefill_step, prefill_token, decode_seq;
    bool prefill_known; /* a step with prompt chunks was measured */
};

void stepcost_init(struct stepcost *c);
/* One measured step: its prompt tokens, its decoded sequences, its time. */
void stepcost_observe(struct stepcost *c, uint32_t n_prefill, uint32_t n_decode, double seconds);
void stepcost_get(const struct stepcost *c, struct stepcost_fit *out);
/* Predicted time of a step (0 before any was measured). */
double stepcost_predict(const struct stepcost *c, uint32_t n_prefill, uint32_t n_decode);

/* The step's latency target in seconds: target_s when > 0, else c->ratio
 * times the pure decode step of n_decode sequences (0 when nothing is
 * decoding or nothing was measured yet: no target). */
double stepcost_target(const struct stepcost *c, uint32_t n_decode, double target_s);

/* The pure decode step of n_decode sequences: the measured one, moved by the
 * fitted cost per sequence for another batch size (the fit before any
 * decode-only step was measured). */
double stepcost_decode_step(const struct stepcost *c, uint32_t n_decode);

/* Prompt tokens the next step may carry next to n_decode decodes, at most
 * cap: the largest chunk whose predicted step stays within the target, by
 * the fit and by the measured cost of a prompt token at the recent chunk
 * size (the smaller of the two, so that a drifting fit cannot overshoot),
 * never below STEPCOST_MIN_CHUNK (nor cap); cap when there is no target;
 * at most STEPCOST_PROBE_TOKENS while no step with prompt chunks and decodes
 * has been measured. */
uint32_t stepcost_budget(const struct stepcost *c, uint32_t n_decode, double target_s,
                         uint32_t cap);

/* Splits budget over n pending prompts (pending[i] tokens left each) max-min
 * fairly: every prompt gets an equal share, and what a short prompt does not
 * need goes to the others, so a short prompt admitted behind a long one
 * finishes its prefill in the next step or two instead of waiting for the long
 * one. out[i] <= pending[i]; sum(out) = min(budget, sum(pending)); when budget
 * < n, the first `budget` prompts (in list order, i.e. arrival order) get one
 * token each. */
void stepcost_split(const uint32_t *pending, uint32_t n, uint32_t budget, uint32_t *out);

#endif
