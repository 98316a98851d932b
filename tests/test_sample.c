/* Sampling: each processor against hand-computed values, the seeded draw,
 * the full chain, and statistical checks with a fixed seed (deterministic, so
 * the bounds cannot flake) that the filters keep exactly the allowed set in
 * the right proportions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sample.h"
#include "util.h"

#define TOL 1e-6

static void cands_from(struct sample_cands *c, struct sample_cand *buf, const float *logits,
                       size_t n)
{
    for (size_t i = 0; i < n; i++) {
        buf[i].id = (llorch_token)i;
        buf[i].logit = logits[i];
        buf[i].p = 0.0f;
    }
    c->data = buf;
    c->size = n;
    c->sorted = false;
}

static void penalties_follow_llama_cpp_formula(void **state)
{
    (void)state;
    float l[4] = {2.0f, -2.0f, 1.0f, 0.5f};
    llorch_token win[3] = {0, 1, 0};
    llorch_token tmp[3];
    sample_penalties_apply(l, 4, win, 3, 2.0f, 0.5f, 0.25f, tmp);
    /* token 0: count 2, positive: 2/2 - (2*0.5 + 0.25) */
    assert_float_equal(l[0], -0.25f, TOL);
    /* token 1: count 1, negative: -2*2 - (0.5 + 0.25) */
    assert_float_equal(l[1], -4.75f, TOL);
    assert_float_equal(l[2], 1.0f, 0.0);
    assert_float_equal(l[3], 0.5f, 0.0);
}

static void penalties_ignore_tokens_outside_window_and_zero_repeat(void **state)
{
    (void)state;
    float l[3] = {3.0f, 3.0f, 3.0f};
    llorch_token win[2] = {2, 2};
    llorch_token tmp[2];
    sample_penalties_apply(l, 3, win, 2, 0.0f, 0.0f, 0.0f, tmp); /* 0 = off */
    assert_float_equal(l[2], 3.0f, 0.0);
    sample_penalties_apply(l, 3, win, 2, 1.5f, 0.0f, 0.0f, tmp);
    assert_float_equal(l[0], 3.0f, 0.0);
    assert_float_equal(l[1], 3.0f, 0.0);
    assert_float_equal(l[2], 2.0f, TOL);
}

static void top_k_keeps_k_best_sorted_with_ties_by_lower_id(void **state)
{
    (void)state;
    float l[6] = {1.0f, 4.0f, 2.0f, 4.0f, 0.0f, 3.0f};
    struct sample_cand buf[6];
    struct sample_cands c;
    cands_from(&c, buf, l, 6);
    sample_top_k_apply(&c, 3);
    assert_int_equal(c.size, 3);
    assert_true(c.sorted);
    assert_int_equal(c.data[0].id, 1);
    assert_int_equal(c.data[1].id, 3);
    assert_int_equal(c.data[2].id, 5);
    cands_from(&c, buf, l, 6);
    sample_top_k_apply(&c, 0);
    assert_int_equal(c.size, 6);
    sample_top_k_apply(&c, 100);
    assert_int_equal(c.size, 6);
    assert_int_equal(c.data[5].id, 4);
}

static void top_p_keeps_smallest_head_reaching_p(void **state)
{
    (void)state;
    const float pr[4] = {0.1f, 0.4f, 0.2f, 0.3f};
    float l[4];
    for (int i = 0; i < 4; i++)
        l[i] = logf(pr[i]);
    struct sample_cand buf[4];
    struct sample_cands c;
    cands_from(&c, buf, l, 4);
    sample_top_p_apply(&c, 0.65f); /* 0.4 + 0.3 >= 0.65 */
    assert_int_equal(c.size, 2);
    assert_int_equal(c.data[0].id, 1);
    assert_int_equal(c.data[1].id, 3);
    assert_float_equal(c.data[0].p, 0.4f, TOL);
    cands_from(&c, buf, l, 4);
    sample_top_p_apply(&c, 0.0f); /* at least one stays */
    assert_int_equal(c.size, 1);
    assert_int_equal(c.data[0].id, 1);
    cands_from(&c, buf, l, 4);
    sample_top_p_apply(&c, 1.0f); /* off */
    assert_int_equal(c.size, 4);
    assert_false(c.sorted);
}

/* A large list whose mass is spread past the first 256 candidates takes the
 * fall-back full sort; the result is the exact sorted prefix. */
static void top_p_on_large_flat_list_matches_full_sort(void **state)
{
    (void)state;
    enum { N = 3000 };
    float *l = malloc(N * sizeof(float));
    struct sample_cand *buf = malloc(N * sizeof(*buf));
    assert_non_null(l);
    assert_non_null(buf);
    for (int i = 0; i < N; i++)
        l[i] = (float)((i * 7919) % N) * 1e-4f; /* a permutation of a slow ramp */
    /* reference mass from a float64 softmax */
    double mx = 0, sum = 0;
    for (int i = 0; i < N; i++)
        mx = fmax(mx, l[i]);
    for (int i = 0; i < N; i++)
        sum += exp(l[i] - mx);
    struct sample_cands c;
    cands_from(&c, buf, l, N);
    sample_top_p_apply(&c, 0.5f);
    /* the kept ones are exactly those with the largest logits, in order */
    assert_true(c.sorted);
    assert_true(c.size > 256 && c.size < N);
    double mass = 0;
    for (size_t i = 0; i < c.size; i++) {
        if (i > 0)
            assert_true(c.data[i - 1].logit > c.data[i].logit);
        mass += exp(c.data[i].logit - mx) / sum;
    }
    assert_true(mass >= 0.5 - 1e-4);
    assert_true(mass - exp(c.data[c.size - 1].logit - mx) / sum < 0.5 + 1e-4);
    /* every dropped candidate ranks below the last kept one */
    float cut = c.data[c.size - 1].logit;
    size_t above = 0;
    for (int i = 0; i < N; i++)
        above += l[i] >= cut;
    assert_int_equal(above, c.size);
    free(l);
    free(buf);
}

static void min_p_keeps_p_at_least_fraction_of_max(void **state)
{
    (void)state;
    const float rel[4] = {1.0f, 0.5f, 0.05f, 0.2f};
    float l[4];
    for (int i = 0; i < 4; i++)
        l[i] = logf(rel[i]) + 3.0f;
    struct sample_cand buf[4];
    struct sample_cands c;
    cands_from(&c, buf, l, 4);
    sample_min_p_apply(&c, 0.1f);
    assert_int_equal(c.size, 3);
    assert_int_equal(c.data[0].id, 0);
    assert_int_equal(c.data[1].id, 1);
    assert_int_equal(c.data[2].id, 3);
    /* the sorted path gives the same set */
    cands_from(&c, buf, l, 4);
    sample_top_k_apply(&c, 4);
    sample_min_p_apply(&c, 0.1f);
    assert_int_equal(c.size, 3);
    assert_int_equal(c.data[2].id, 3);
}

static void temperature_divides_logits(void **state)
{
    (void)state;
    float l[2] = {1.0f, -2.0f};
    struct sample_cand buf[2];
    struct sample_cands c;
    cands_from(&c, buf, l, 2);
    sample_temp_apply(&c, 0.5f);
    assert_float_equal(c.data[0].logit, 2.0f, TOL);
    assert_float_equal(c.data[1].logit, -4.0f, TOL);
}

static void dist_pick_follows_cumulative_probabilities(void **state)
{
    (void)state;
    float l[3] = {logf(0.5f), logf(0.25f), logf(0.25f)};
    struct sample_cand buf[3];
    struct sample_cands c;
    cands_from(&c, buf, l, 3);
    assert_int_equal(sample_dist_pick(&c, 0.0), 0);
    assert_float_equal(c.data[0].p, 0.5f, TOL);
    assert_int_equal(sample_dist_pick(&c, 0.49), 0);
    assert_int_equal(sample_dist_pick(&c, 0.6), 1);
    assert_int_equal(sample_dist_pick(&c, 0.76), 2);
    assert_int_equal(sample_dist_pick(&c, 0.9999999999), 2);
}

static void dist_pick_never_chooses_zero_probability(void **state)
{
    (void)state;
    float l[3] = {-INFINITY, 0.0f, -INFINITY};
    struct sample_cand buf[3];
    struct sample_cands c;
    cands_from(&c, buf, l, 3);
    assert_int_equal(sample_dist_pick(&c, 0.0), 1);
    assert_int_equal(sample_dist_pick(&c, 0.999999), 1);
}

static void greedy_takes_first_max_and_leaves_rng_alone(void **state)
{
    (void)state;
    struct sample_scratch *sc;
    assert_int_equal(sample_scratch_new(&sc, 4), 0);
    struct sample_params p;
    sample_params_default(&p);
    p.temperature = 0.0f;
    p.seed = 7;
    struct sampler s;
    sample_init(&s, &p);
    uint64_t before[4];
    memcpy(before, s.rng, sizeof(before));
    float l[4] = {1.0f, 3.0f, 3.0f, 2.0f};
    struct sample_out out;
    assert_int_equal(sample_token(&s, sc, l, NULL, 0, &out), 0);
    assert_int_equal(out.id, 1);
    assert_memory_equal(before, s.rng, sizeof(before));
    sample_scratch_free(sc);
}

static void repetition_penalty_changes_greedy_choice_within_window(void **state)
{
    (void)state;
    struct sample_scratch *sc;
    assert_int_equal(sample_scratch_new(&sc, 3), 0);
    struct sample_params p;
    sample_params_default(&p);
    p.temperature = 0.0f;
    p.repetition_penalty = 1.1f;
    p.penalty_last_n = 2;
    struct sampler s;
    sample_init(&s, &p);
    float l[3] = {3.0f, 2.9f, 0.0f};
    struct sample_out out;
    llorch_token h1[1] = {0};
    assert_int_equal(sample_token(&s, sc, l, h1, 1, &out), 0);
    assert_int_equal(out.id, 1); /* 3 / 1.1 < 2.9 */
    llorch_token h2[3] = {0, 2, 2}; /* token 0 left the 2-token window */
    assert_int_equal(sample_token(&s, sc, l, h2, 3, &out), 0);
    assert_int_equal(out.id, 0);
    /* the raw logits are not modified */
    assert_float_equal(l[0], 3.0f, 0.0);
    llorch_token bad[1] = {3};
    assert_int_equal(sample_token(&s, sc, l, bad, 1, &out), LLORCH_EINVAL);
    sample_scratch_free(sc);
}

static void logprobs_are_log_softmax_of_raw_logits(void **state)
{
    (void)state;
    struct sample_scratch *sc;
    assert_int_equal(sample_scratch_new(&sc, 4), 0);
    struct sample_params p;
    sample_params_default(&p);
    p.temperature = 0.0f;
    p.repetition_penalty = 10.0f;
    p.n_logprobs = 3;
    struct sampler s;
    sample_init(&s, &p);
    /* p = 1/6, 1/3, 1/3, 1/6; all logits negative so the penalty multiplies */
    float l[4] = {-1.0f, logf(2.0f) - 1.0f, logf(2.0f) - 1.0f, -1.0f};
    llorch_token h[2] = {1, 2};
    struct sample_out out;
    assert_int_equal(sample_token(&s, sc, l, h, 2, &out), 0);
    assert_int_equal(out.id, 0); /* penalties push 1 and 2 down */
    assert_float_equal(out.logprob, logf(1.0f / 6.0f), 1e-5);
    assert_int_equal(out.n_top, 3);
    assert_int_equal(out.top[0].id, 1);
    assert_int_equal(out.top[1].id, 2);
    assert_int_equal(out.top[2].id, 0);
    assert_float_equal(out.top[0].logprob, logf(1.0f / 3.0f), 1e-5);
    assert_float_equal(out.top[2].logprob, logf(1.0f / 6.0f), 1e-5);
    sample_scratch_free(sc);
}

/* Runs n draws of the whole chain and counts the chosen ids. */
static void draw_counts(const struct sample_params *p, const float *l, uint32_t nv, int n,
                        int *counts)
{
    struct sample_scratch *sc;
    assert_int_equal(sample_scratch_new(&sc, nv), 0);
    struct sampler s;
    sample_init(&s, p);
    memset(counts, 0, nv * sizeof(int));
    for (int i = 0; i < n; i++) {
        struct sample_out out;
        assert_int_equal(sample_token(&s, sc, l, NULL, 0, &out), 0);
        assert_true(out.id >= 0 && (uint32_t)out.id < nv);
        counts[out.id]++;
    }
    sample_scratch_free(sc);
}

/* Pearson chi-square of counts against expected probabilities over the
 * allowed ids; with a fixed seed the value is a constant, and the bound (the
 * 1e-6 tail for <= 7 degrees of freedom is ~ 35) is far above what a correct
 * sampler gives while a wrong proportion (e.g. no renormalisation, or the
 * temperature applied before top-p) gives hundreds. */
static double chi_square(const int *counts, const double *expect, uint32_t nv, int n)
{
    double x = 0;
    for (uint32_t i = 0; i < nv; i++) {
        if (expect[i] == 0.0)
            continue;
        double e = expect[i] * n;
        x += (counts[i] - e) * (counts[i] - e) / e;
    }
    return x;
}

#define NV 8
static const double base_p[NV] = {0.30, 0.20, 0.15, 0.12, 0.10, 0.07, 0.04, 0.02};

static void logits_from(float *l, float shift)
{
    for (int i = 0; i < NV; i++)
        l[i] = (float)log(base_p[i]) + shift;
}

static void statistics_check(const struct sample_params *p, const bool *allowed, double temp)
{
    float l[NV];
    logits_from(l, 1.5f);
    int counts[NV];
    const int n = 20000;
    draw_counts(p, l, NV, n, counts);
    double expect[NV], z = 0;
    for (int i = 0; i < NV; i++) {
        expect[i] = allowed[i] ? pow(base_p[i], 1.0 / temp) : 0.0;
        z += expect[i];
    }
    for (int i = 0; i < NV; i++) {
        expect[i] /= z;
        if (!allowed[i])
            assert_int_equal(counts[i], 0);
        else
            assert_true(counts[i] > 0);
    }
    assert_true(chi_square(counts, expect, NV, n) < 35.0);
}

static void top_k_samples_only_k_best_in_proportion(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.top_k = 3;
    p.seed = 1234;
    const bool allowed[NV] = {1, 1, 1, 0, 0, 0, 0, 0};
    statistics_check(&p, allowed, 1.0);
}

static void top_p_samples_only_nucleus_in_proportion(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.top_p = 0.75f; /* .30+.20+.15+.12 = .77 >= .75 */
    p.temperature = 0.7f;
    p.seed = 99;
    const bool allowed[NV] = {1, 1, 1, 1, 0, 0, 0, 0};
    statistics_check(&p, allowed, 0.7);
}

static void min_p_samples_only_above_threshold_in_proportion(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.min_p = 0.3f; /* keeps p >= .09: ids 0..4 */
    p.temperature = 1.5f;
    p.seed = 5;
    const bool allowed[NV] = {1, 1, 1, 1, 1, 0, 0, 0};
    statistics_check(&p, allowed, 1.5);
}

static void unfiltered_sampling_matches_softmax(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.seed = 42;
    const bool allowed[NV] = {1, 1, 1, 1, 1, 1, 1, 1};
    statistics_check(&p, allowed, 1.0);
}

/* A wrong proportion must fail the same bound: sampling the top-3 set as if
 * temperature were 1 while 0.5 is expected. */
static void chi_square_bound_rejects_wrong_proportions(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.top_k = 3;
    p.seed = 1234;
    float l[NV];
    logits_from(l, 0.0f);
    int counts[NV];
    draw_counts(&p, l, NV, 20000, counts);
    double expect[NV] = {0}, z = 0;
    for (int i = 0; i < 3; i++)
        z += expect[i] = pow(base_p[i], 2.0);
    for (int i = 0; i < 3; i++)
        expect[i] /= z;
    assert_true(chi_square(counts, expect, NV, 20000) > 100.0);
}

static void same_seed_gives_same_tokens_and_other_seed_differs(void **state)
{
    (void)state;
    float l[NV];
    logits_from(l, 0.0f);
    struct sample_params p;
    sample_params_default(&p);
    p.seed = 0xdeadbeefcafeull;
    p.top_p = 0.9f;
    struct sample_scratch *sc;
    assert_int_equal(sample_scratch_new(&sc, NV), 0);
    struct sampler s1, s2, s3;
    sample_init(&s1, &p);
    sample_init(&s2, &p);
    p.seed++;
    sample_init(&s3, &p);
    int differ = 0;
    for (int i = 0; i < 200; i++) {
        struct sample_out o1, o2, o3;
        assert_int_equal(sample_token(&s1, sc, l, NULL, 0, &o1), 0);
        /* interleave another request: it must not disturb s1/s2 */
        assert_int_equal(sample_token(&s3, sc, l, NULL, 0, &o3), 0);
        assert_int_equal(sample_token(&s2, sc, l, NULL, 0, &o2), 0);
        assert_int_equal(o1.id, o2.id);
        differ += o1.id != o3.id;
    }
    assert_true(differ > 20);
    sample_scratch_free(sc);
}

static void rng_is_uniform_in_unit_interval(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    p.seed = 0;
    struct sampler s;
    sample_init(&s, &p);
    int bins[10] = {0};
    for (int i = 0; i < 10000; i++) {
        double u = sample_rng_uniform(&s);
        assert_true(u >= 0.0 && u < 1.0);
        bins[(int)(u * 10)]++;
    }
    for (int i = 0; i < 10; i++)
        assert_true(bins[i] > 850 && bins[i] < 1150);
}

static void params_check_rejects_out_of_range(void **state)
{
    (void)state;
    struct sample_params p;
    sample_params_default(&p);
    assert_int_equal(sample_params_check(&p), 0);
    p.temperature = -1.0f;
    assert_int_equal(sample_params_check(&p), LLORCH_EINVAL);
    sample_params_default(&p);
    p.top_p = 1.5f;
    assert_int_equal(sample_params_check(&p), LLORCH_EINVAL);
    sample_params_default(&p);
    p.min_p = NAN;
    assert_int_equal(sample_params_check(&p), LLORCH_EINVAL);
    sample_params_default(&p);
    p.n_logprobs = SAMPLE_MAX_LOGPROBS + 1;
    assert_int_equal(sample_params_check(&p), LLORCH_EINVAL);
    sample_params_default(&p);
    p.penalty_last_n = SAMPLE_PENALTY_MAX_N + 1;
    assert_int_equal(sample_params_check(&p), LLORCH_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(penalties_follow_llama_cpp_formula),
        cmocka_unit_test(penalties_ignore_tokens_outside_window_and_zero_repeat),
        cmocka_unit_test(top_k_keeps_k_best_sorted_with_ties_by_lower_id),
        cmocka_unit_test(top_p_keeps_smallest_head_reaching_p),
        cmocka_unit_test(top_p_on_large_flat_list_matches_full_sort),
        cmocka_unit_test(min_p_keeps_p_at_least_fraction_of_max),
        cmocka_unit_test(temperature_divides_logits),
        cmocka_unit_test(dist_pick_follows_cumulative_probabilities),
        cmocka_unit_test(dist_pick_never_chooses_zero_probability),
        cmocka_unit_test(greedy_takes_first_max_and_leaves_rng_alone),
        cmocka_unit_test(repetition_penalty_changes_greedy_choice_within_window),
        cmocka_unit_test(logprobs_are_log_softmax_of_raw_logits),
        cmocka_unit_test(top_k_samples_only_k_best_in_proportion),
        cmocka_unit_test(top_p_samples_only_nucleus_in_proportion),
        cmocka_unit_test(min_p_samples_only_above_threshold_in_proportion),
        cmocka_unit_test(unfiltered_sampling_matches_softmax),
        cmocka_unit_test(chi_square_bound_rejects_wrong_proportions),
        cmocka_unit_test(same_seed_gives_same_tokens_and_other_seed_differs),
        cmocka_unit_test(rng_is_uniform_in_unit_interval),
        cmocka_unit_test(params_check_rejects_out_of_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
