/* Sampling: penalties, top-k, top-p, min-p, temperature and a seeded draw in
 * llama.cpp's default order (see sample.h), plus OpenAI top-N log-probs. The
 * per-token path works in a scratch list sized by n_vocab at creation and
 * allocates nothing. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct sample_scratch {
    uint32_t n_vocab;
    struct sample_cand *cand;     /* [n_vocab] */
    float *logits;                /* [n_vocab] penalised copy */
    llorch_token *win;            /* [SAMPLE_PENALTY_MAX_N] sorted window */
};

/* Above this many candidates top-p first tries the head of the list only. */
#define SAMPLE_TOP_P_HEAD 256
#define SAMPLE_TOP_P_FULL_SORT_MIN 1024

LLORCH_API void sample_params_default(struct sample_params *p)
{
    memset(p, 0, sizeof(*p));
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
    p->penalty_last_n = SAMPLE_PENALTY_LAST_N;
}

LLORCH_API int sample_params_check(const struct sample_params *p)
{
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return LLORCH_EINVAL;
    if (!(p->top_p >= 0.0f && p->top_p <= 1.0f))
        return LLORCH_EINVAL;
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return LLORCH_EINVAL;
    if (!isfinite(p->repetition_penalty) || !isfinite(p->presence_penalty) ||
        !isfinite(p->frequency_penalty))
        return LLORCH_EINVAL;
    if (p->penalty_last_n > SAMPLE_PENALTY_MAX_N || p->n_logprobs > SAMPLE_MAX_LOGPROBS)
        return LLORCH_EINVAL;
    return 0;
}

/* splitmix64: spreads any 64-bit seed (0 included) over the 256-bit state. */
static uint64_t sample_splitmix_next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t sample_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

LLORCH_API void sample_init(struct sampler *s, const struct sample_params *p)
{
    s->p = *p;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = sample_splitmix_next(&x);
}

/* xoshiro256** */
LLORCH_API uint64_t sample_rng_next(struct sampler *s)
{
    uint64_t *r = s->rng;
    const uint64_t result = sample_rotl(r[1] * 5, 7) * 9;
    const uint64_t t = r[1] << 17;
    r[2] ^= r[0];
    r[3] ^= r[1];
    r[1] ^= r[2];
    r[0] ^= r[3];
    r[2] ^= t;
    r[3] = sample_rotl(r[3], 45);
    return result;
}

LLORCH_API double sample_rng_uniform(struct sampler *s)
{
    return (double)(sample_rng_next(s) >> 11) * 0x1.0p-53;
}

LLORCH_API int sample_scratch_new(struct sample_scratch **out, uint32_t n_vocab)
{
    *out = NULL;
    if (n_vocab == 0)
        return LLORCH_EINVAL;
    struct sample_scratch *sc = calloc(1, sizeof(*sc));
    if (!sc)
        return LLORCH_ENOMEM;
    sc->n_vocab = n_vocab;
    sc->cand = malloc((size_t)n_vocab * sizeof(*sc->cand));
    sc->logits = malloc((size_t)n_vocab * sizeof(*sc->logits));
    sc->win = malloc(SAMPLE_PENALTY_MAX_N * sizeof(*sc->win));
    if (!sc->cand || !sc->logits || !sc->win) {
        sample_scratch_free(sc);
        return LLORCH_ENOMEM;
    }
    *out = sc;
    return 0;
}

LLORCH_API void sample_scratch_free(struct sample_scratch *sc)
{
    if (!sc)
        return;
    free(sc->cand);
    free(sc->logits);
    free(sc->win);
    free(sc);
}

/* ---- penalties ---- */

static int sample_token_cmp(const void *a, const void *b)
{
    llorch_token x = *(const llorch_token *)a, y = *(const llorch_token *)b;
    return (x > y) - (x < y);
}

LLORCH_API void sample_penalties_apply(float *logits, uint32_t n_vocab, const llorch_token *win,
                                       size_t n_win, float repeat, float freq, float presence,
                                       llorch_token *tmp)
{
    if (repeat <= 0.0f)
        repeat = 1.0f;
    if (n_win == 0 || (repeat == 1.0f && freq == 0.0f && presence == 0.0f))
        return;
    /* Count each distinct token of the window: sort a copy, walk the runs. */
    memcpy(tmp, win, n_win * sizeof(*tmp));
    qsort(tmp, n_win, sizeof(*tmp), sample_token_cmp);
    for (size_t i = 0; i < n_win;) {
        size_t j = i + 1;
        while (j < n_win && tmp[j] == tmp[i])
            j++;
        llorch_token id = tmp[i];
        size_t count = j - i;
        i = j;
        if (id < 0 || (uint32_t)id >= n_vocab)
            continue;
        float l = logits[id];
        l = l <= 0.0f ? l * repeat : l / repeat;
        l -= (float)count * freq + presence;
        logits[id] = l;
    }
}

/* ---- ordering helpers: descending logit, ties by lower id ---- */

static inline bool sample_cand_before(const struct sample_cand *a, const struct sample_cand *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int sample_cand_cmp(const void *pa, const void *pb)
{
    const struct sample_cand *a = pa, *b = pb;
    if (sample_cand_before(a, b))
        return -1;
    if (sample_cand_before(b, a))
        return 1;
    return 0;
}

static inline void sample_cand_swap(struct sample_cand *a, struct sample_cand *b)
{
    struct sample_cand t = *a;
    *a = *b;
    *b = t;
}

/* Min-heap (by "before" order: the root is the one that comes last). */
static void sample_heap_down(struct sample_cand *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && sample_cand_before(&h[m], &h[l]))
            m = l;
        if (r < n && sample_cand_before(&h[m], &h[r]))
            m = r;
        if (m == i)
            return;
        sample_cand_swap(&h[i], &h[m]);
        i = m;
    }
}

/* Moves the m best candidates to the front, sorted; the others stay behind
 * them in some order. O(n log m). */
static void sample_select_top(struct sample_cands *c, size_t m)
{
    if (m >= c->size) {
        qsort(c->data, c->size, sizeof(*c->data), sample_cand_cmp);
        return;
    }
    struct sample_cand *d = c->data;
    for (size_t i = m / 2; i-- > 0;)
        sample_heap_down(d, m, i);
    for (size_t i = m; i < c->size; i++) {
        if (sample_cand_before(&d[i], &d[0])) {
            sample_cand_swap(&d[i], &d[0]);
            sample_heap_down(d, m, 0);
        }
    }
    qsort(d, m, sizeof(*d), sample_cand_cmp);
}

/* ---- processors ---- */

LLORCH_API void sample_softmax(struct sample_cands *c)
{
    if (c->size == 0)
        return;
    float max_l = c->data[0].logit;
    for (size_t i = 1; i < c->size; i++)
        max_l = LLORCH_MAX(max_l, c->data[i].logit);
    double sum = 0.0;
    for (size_t i = 0; i < c->size; i++) {
        float p = expf(c->data[i].logit - max_l);
        c->data[i].p = p;
        sum += p;
    }
    for (size_t i = 0; i < c->size; i++)
        c->data[i].p = (float)(c->data[i].p / sum);
}

LLORCH_API void sample_top_k_apply(struct sample_cands *c, uint32_t k)
{
    if (k == 0 || c->size == 0)
        return;
    size_t kk = LLORCH_MIN((size_t)k, c->size);
    if (!c->sorted)
        sample_select_top(c, kk);
    c->size = kk;
    c->sorted = true;
}

LLORCH_API void sample_top_p_apply(struct sample_cands *c, float p)
{
    if (p >= 1.0f || c->size == 0)
        return;
    sample_softmax(c);
    /* Large unsorted lists: the head usually holds the mass, so sort only the
     * best SAMPLE_TOP_P_HEAD first, and grow the sorted head from the tail
     * (x16 each time) while the mass is not reached. */
    size_t head = c->size;
    if (!c->sorted) {
        head = c->size > SAMPLE_TOP_P_FULL_SORT_MIN ? SAMPLE_TOP_P_HEAD : c->size;
        sample_select_top(c, head);
    }
    float cum = 0.0f;
    size_t last = c->size;
    for (size_t i = 0; i < c->size; i++) {
        if (i == head) {
            /* Every tail candidate ranks after the head, so selecting the
             * best of the tail extends the sorted order. */
            size_t grow = LLORCH_MIN(head * 16, c->size) - head;
            struct sample_cands tail = {c->data + head, c->size - head, false};
            sample_select_top(&tail, grow);
            head += grow;
        }
        cum += c->data[i].p;
        if (cum >= p) {
            last = i + 1;
            break;
        }
    }
    c->size = last;
    c->sorted = true;
}

LLORCH_API void sample_min_p_apply(struct sample_cands *c, float p)
{
    if (p <= 0.0f || c->size == 0)
        return;
    float max_l = c->data[0].logit;
    if (!c->sorted)
        for (size_t i = 1; i < c->size; i++)
            max_l = LLORCH_MAX(max_l, c->data[i].logit);
    const float min_l = max_l + logf(p);
    if (c->sorted) {
        size_t i = 1; /* the first always stays */
        while (i < c->size && c->data[i].logit >= min_l)
            i++;
        c->size = i;
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < c->size; i++)
        if (c->data[i].logit >= min_l)
            c->data[n++] = c->data[i];
    c->size = n > 0 ? n : 1;
}

LLORCH_API void sample_temp_apply(struct sample_cands *c, float t)
{
    if (t <= 0.0f || t == 1.0f)
        return;
    for (size_t i = 0; i < c->size; i++)
        c->data[i].logit /= t;
}

LLORCH_API size_t sample_dist_pick(struct sample_cands *c, double u)
{
    if (c->size <= 1) {
        if (c->size == 1)
            c->data[0].p = 1.0f;
        return 0;
    }
    float max_l = c->data[0].logit;
    for (size_t i = 1; i < c->size; i++)
        max_l = LLORCH_MAX(max_l, c->data[i].logit);
    double sum = 0.0;
    for (size_t i = 0; i < c->size; i++) {
        float p = expf(c->data[i].logit - max_l);
        c->data[i].p = p;
        sum += p;
    }
    /* The first candidate whose running sum exceeds u * sum: a candidate with
     * p == 0 can never be chosen, and the last one with p > 0 catches any
     * rounding at u close to 1. */
    const double target = sum * u;
    double run = 0.0;
    size_t chosen = SIZE_MAX, last_pos = 0;
    for (size_t i = 0; i < c->size; i++) {
        if (c->data[i].p > 0.0f)
            last_pos = i;
        if (chosen == SIZE_MAX) {
            run += c->data[i].p;
            if (run > target)
                chosen = i;
        }
        c->data[i].p = (float)(c->data[i].p / sum);
    }
    return chosen == SIZE_MAX ? last_pos : chosen;
}

/* ---- log-probs of the raw distribution ---- */

static void sample_logprobs(const float *logits, uint32_t n_vocab, uint32_t n_top,
                            llorch_token chosen, struct sample_out *out)
{
    float max_l = logits[0];
    for (uint32_t i = 1; i < n_vocab; i++)
        max_l = LLORCH_MAX(max_l, logits[i]);
    double sum = 0.0;
    for (uint32_t i = 0; i < n_vocab; i++)
        sum += expf(logits[i] - max_l);
    const float lse = max_l + (float)log(sum);
    out->logprob = logits[chosen] - lse;

    /* Top n_top by insertion into a short sorted array: n_top <= 20. */
    uint32_t n = 0;
    struct sample_logprob *top = out->top;
    for (uint32_t i = 0; i < n_vocab; i++) {
        float l = logits[i];
        if (n == n_top && !(l > top[n - 1].logprob))
            continue; /* equal logits keep the lower id already held */
        uint32_t j = n < n_top ? n++ : n - 1;
        while (j > 0 && l > top[j - 1].logprob) {
            top[j] = top[j - 1];
            j--;
        }
        top[j].id = (llorch_token)i;
        top[j].logprob = l;
    }
    for (uint32_t i = 0; i < n; i++)
        top[i].logprob -= lse;
    out->n_top = n;
}

/* ---- the chain ---- */

LLORCH_API int sample_token(struct sampler *s, struct sample_scratch *sc, const float *logits,
                            const llorch_token *history, size_t n_history, struct sample_out *out)
{
    const struct sample_params *p = &s->p;
    const uint32_t nv = sc->n_vocab;

    size_t n_win = LLORCH_MIN(n_history, (size_t)p->penalty_last_n);
    const llorch_token *win = history + (n_history - n_win);
    for (size_t i = 0; i < n_win; i++)
        if (win[i] < 0 || (uint32_t)win[i] >= nv)
            return LLORCH_EINVAL;

    const bool penalised = n_win > 0 && ((p->repetition_penalty > 0.0f &&
                                          p->repetition_penalty != 1.0f) ||
                                         p->frequency_penalty != 0.0f ||
                                         p->presence_penalty != 0.0f);
    const float *l = logits;
    if (penalised) {
        memcpy(sc->logits, logits, (size_t)nv * sizeof(float));
        sample_penalties_apply(sc->logits, nv, win, n_win, p->repetition_penalty,
                               p->frequency_penalty, p->presence_penalty, sc->win);
        l = sc->logits;
    }

    llorch_token id;
    if (p->temperature <= 0.0f) {
        uint32_t best = 0;
        for (uint32_t i = 1; i < nv; i++)
            if (l[i] > l[best])
                best = i;
        id = (llorch_token)best;
    } else {
        struct sample_cands c = {sc->cand, nv, false};
        for (uint32_t i = 0; i < nv; i++) {
            c.data[i].id = (llorch_token)i;
            c.data[i].logit = l[i];
            c.data[i].p = 0.0f;
        }
        sample_top_k_apply(&c, p->top_k);
        sample_top_p_apply(&c, p->top_p);
        sample_min_p_apply(&c, p->min_p);
        sample_temp_apply(&c, p->temperature);
        size_t k = sample_dist_pick(&c, sample_rng_uniform(s));
        id = c.data[k].id;
    }

    out->id = id;
    out->logprob = 0.0f;
    out->n_top = 0;
    if (p->n_logprobs > 0)
        sample_logprobs(logits, nv, p->n_logprobs, id, out);
    return 0;
}
