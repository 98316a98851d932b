/* The forward pass against llama.cpp: every reference file in
 * $LLORCH_SHARED/reference/ (f32 KV cache, flash attention off). Exact mode
 * (--dtype f32 --kv f32, activations rounded as llama.cpp rounds them for
 * f16 and Q4_0/Q8_0 weights): with the reference prompt and its greedy
 * continuation forced, every top-8 reference log-prob must be within
 *   1e-4 for qwen2-* and phi3-* (the bound; we measure ~2e-7),
 *   2e-4 for the other f32 files (we measure <= 4e-5: stories260k and gpt2
 *        are limited by llama.cpp's own float rounding, which its README
 *        puts at ~3e-5 against a float64 forward),
 *   2e-3 for f16 / q8_0 / q4_0 files (we measure ~1e-7 for most; llama-tiny
 *        f16 stays at ~1.3e-4 in decode steps, a residual of llama.cpp's f16
 *        path we do not reproduce, and q4_0 p2 reaches ~1.8e-3 after one
 *        activation lands on the other side of a Q8_0 rounding step);
 * and our argmax must equal llama.cpp's wherever its top-1/top-2 gap is at
 * least 1e-3. The worst difference per file is printed.
 * bf16 and int8: the mean absolute top-8 log-prob difference per model stays
 * under a bound derived from measurements of the format's own effect, and
 * stories260k's greedy tokens are llama.cpp's wherever the format cannot
 * flip them (see the constants below for why not at every step). */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "forward.h"
#include "gguf.h"
#include "kernels.h"
#include "model.h"
#include "quant.h"
#include "tpool.h"

#define MAX_REFS 128
#define TOP 8
#define GAP 1e-3

struct ref {
    char file[256];
    char model[128];
    json_t *root;
    llorch_token *prompt;
    size_t n_prompt;
    llorch_token *greedy;
    size_t n_greedy;
    json_t *steps;
};

struct suite {
    struct ref refs[MAX_REFS];
    int n;
    const char *shared;
    struct tpool *pool;
};

static int ref_cmp(const void *a, const void *b)
{
    return strcmp(((const struct ref *)a)->file, ((const struct ref *)b)->file);
}

static llorch_token *ids_of(json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    llorch_token *t = malloc((*n ? *n : 1) * sizeof *t);
    assert_non_null(t);
    for (size_t i = 0; i < *n; i++)
        t[i] = (llorch_token)json_integer_value(json_array_get(arr, i));
    return t;
}

static int suite_setup(void **state)
{
    struct suite *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->shared = getenv("LLORCH_SHARED");
    if (!s->shared)
        s->shared = "../shared";
    char dir[512];
    snprintf(dir, sizeof dir, "%s/reference", s->shared);
    DIR *d = opendir(dir);
    if (!d) {
        print_error("cannot open %s\n", dir);
        free(s);
        return -1;
    }
    struct dirent *de;
    while ((de = readdir(d)) && s->n < MAX_REFS) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".json"))
            continue;
        struct ref *r = &s->refs[s->n];
        snprintf(r->file, sizeof r->file, "%s", de->d_name);
        s->n++;
    }
    closedir(d);
    qsort(s->refs, (size_t)s->n, sizeof s->refs[0], ref_cmp);
    for (int i = 0; i < s->n; i++) {
        struct ref *r = &s->refs[i];
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, r->file);
        json_error_t je;
        r->root = json_load_file(path, 0, &je);
        if (!r->root) {
            print_error("%s: %s\n", path, je.text);
            return -1;
        }
        snprintf(r->model, sizeof r->model, "%s", json_string_value(json_object_get(r->root, "model")));
        r->prompt = ids_of(json_object_get(r->root, "prompt_tokens"), &r->n_prompt);
        r->greedy = ids_of(json_object_get(r->root, "greedy_tokens"), &r->n_greedy);
        r->steps = json_object_get(r->root, "steps");
        if (json_array_size(r->steps) != r->n_greedy + 1)
            return -1;
    }
    struct tpool_opts po = {.n_threads = 2, .name = "test-ref"};
    if (tpool_new(&s->pool, &po))
        return -1;
    *state = s;
    return 0;
}

static int suite_teardown(void **state)
{
    struct suite *s = *state;
    for (int i = 0; i < s->n; i++) {
        json_decref(s->refs[i].root);
        free(s->refs[i].prompt);
        free(s->refs[i].greedy);
    }
    tpool_free(s->pool);
    free(s);
    return 0;
}

static struct model *load(const struct suite *s, const char *name)
{
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/models/%s", s->shared, name);
    struct model *m;
    int rc = model_load(&m, path, err, sizeof err);
    if (rc)
        print_error("%s: %s\n", path, err);
    assert_int_equal(rc, 0);
    return m;
}

static struct forward *engine_at(const struct suite *s, const struct model *m, enum llorch_dtype dt,
                                 enum llorch_kv_type kv, uint32_t max_step, enum llorch_isa isa)
{
    struct forward_opts fo = {
        .dtype = dt, .isa = isa, .kv_type = kv, .kv_bytes = 0, .n_ctx = 0, .max_seqs = 1,
        .max_step_tokens = max_step, .pool = s->pool, .llama_rounding = true,
    };
    const uint64_t elem = kv == LLORCH_KV_F32 ? 4 : 2;
    fo.kv_bytes = 256ull * 2 * m->hp.n_layer * m->hp.n_head_kv * m->hp.head_dim * elem;
    struct forward *fw;
    char err[256];
    int rc = forward_new(&fw, m, &fo, err, sizeof err);
    if (rc)
        print_error("forward_new: %s\n", err);
    assert_int_equal(rc, 0);
    return fw;
}

static struct forward *engine(const struct suite *s, const struct model *m, enum llorch_dtype dt,
                              enum llorch_kv_type kv, uint32_t max_step)
{
    return engine_at(s, m, dt, kv, max_step, LLORCH_ISA_AUTO);
}

/* Feeds the prompt, then n_steps tokens: forced ones, or our own argmax when
 * forced is NULL (their ids go to chosen). logp gets [n_steps + 1][n_vocab]
 * log-probs, computed in double. */
static void run(struct forward *fw, const llorch_token *prompt, size_t n_prompt,
                const llorch_token *forced, size_t n_steps, llorch_token *chosen, double *logp)
{
    const uint32_t nv = forward_n_vocab(fw);
    struct kv_cache *kv = forward_kv(fw);
    struct kv_seq *seq;
    assert_int_equal(kv_seq_new(kv, &seq), 0);
    assert_int_equal(kv_seq_reserve(kv, seq, (uint32_t)(n_prompt + n_steps)), 0);
    float *logits = malloc(nv * sizeof *logits);
    assert_non_null(logits);
    struct forward_entry e = {.seq = seq, .tokens = prompt, .n_tokens = (uint32_t)n_prompt, .logits = logits};
    llorch_token next;
    for (size_t step = 0; step <= n_steps; step++) {
        assert_int_equal(forward_step(fw, &e, 1), 0);
        double max = -INFINITY, sum = 0.0;
        uint32_t best = 0;
        for (uint32_t i = 0; i < nv; i++) {
            max = fmax(max, logits[i]);
            if (logits[i] > logits[best])
                best = i;
        }
        for (uint32_t i = 0; i < nv; i++)
            sum += exp((double)logits[i] - max);
        const double lse = max + log(sum);
        for (uint32_t i = 0; i < nv; i++)
            logp[step * nv + i] = (double)logits[i] - lse;
        if (chosen)
            chosen[step] = (llorch_token)best;
        if (step == n_steps)
            break;
        next = forced ? forced[step] : (llorch_token)best;
        e.tokens = &next;
        e.n_tokens = 1;
    }
    kv_seq_free(kv, seq);
    free(logits);
}

static double ref_lp(json_t *steps, size_t step, size_t k, llorch_token *id)
{
    json_t *pair = json_array_get(json_array_get(steps, step), k);
    *id = (llorch_token)json_integer_value(json_array_get(pair, 0));
    return json_real_value(json_array_get(pair, 1));
}

static bool starts_with(const char *s, const char *p)
{
    return !strncmp(s, p, strlen(p));
}

/* Every reference within its bound with weights run as dt at level isa. */
static void check_exact(struct suite *s, enum llorch_dtype dt, enum llorch_isa isa)
{
    assert_true(s->n >= 36); /* the shared set: 9 models x 4 prompts */
    int i = 0;
    while (i < s->n) {
        int j = i;
        while (j < s->n && !strcmp(s->refs[j].model, s->refs[i].model))
            j++;
        struct model *m = load(s, s->refs[i].model);
        size_t max_prompt = 1;
        for (int k = i; k < j; k++)
            max_prompt = s->refs[k].n_prompt > max_prompt ? s->refs[k].n_prompt : max_prompt;
        struct forward *fw = engine_at(s, m, dt, LLORCH_KV_F32, (uint32_t)max_prompt, isa);
        const uint32_t nv = forward_n_vocab(fw);
        const char *name = s->refs[i].model;
        const double tol = starts_with(name, "qwen2-") || starts_with(name, "phi3-") ? 1e-4
                           : strstr(name, "-f32") || starts_with(name, "stories") ? 2e-4
                                                                                  : 2e-3;
        for (int k = i; k < j; k++) {
            struct ref *r = &s->refs[k];
            double *logp = malloc((r->n_greedy + 1) * nv * sizeof *logp);
            llorch_token *ours = malloc((r->n_greedy + 1) * sizeof *ours);
            run(fw, r->prompt, r->n_prompt, r->greedy, r->n_greedy, ours, logp);
            double worst = 0.0;
            for (size_t st = 0; st <= r->n_greedy; st++) {
                llorch_token id, id2;
                for (size_t t = 0; t < TOP; t++) {
                    double lp = ref_lp(r->steps, st, t, &id);
                    worst = fmax(worst, fabs(logp[st * nv + (uint32_t)id] - lp));
                }
                const double gap = ref_lp(r->steps, st, 0, &id) - ref_lp(r->steps, st, 1, &id2);
                if (gap >= GAP) {
                    if (ours[st] != id)
                        print_error("%s step %zu: argmax %d, llama.cpp %d (gap %.3g)\n", r->file, st,
                                    ours[st], id, gap);
                    assert_int_equal(ours[st], id);
                }
            }
            print_message("%-28s %s %s worst |dlogprob| %.3g (bound %.0e)\n", r->file,
                          forward_dtype_name(dt), forward_isa_name(fw), worst, tol);
            assert_true(worst <= tol);
            free(logp);
            free(ours);
        }
        forward_free(fw);
        model_free(m);
        i = j;
    }
}

static void reference_exact_mode_matches_llama_cpp(void **state)
{
    check_exact(*state, LLORCH_DTYPE_F32, LLORCH_ISA_AUTO);
}

/* The default, each weight in its file's class (f16 as f16 with f16
 * activations, Q8_0/Q4_0 with Q8_0 activations: llama.cpp's own roundings),
 * meets the exact-mode bounds at every level this CPU runs. */
static void reference_native_classes_match_llama_cpp_at_every_level(void **state)
{
    static const enum kernels_isa k[] = {KERNELS_ISA_SCALAR, KERNELS_ISA_AVX2, KERNELS_ISA_AVXVNNI,
                                         KERNELS_ISA_AVX512};
    static const enum llorch_isa l[] = {LLORCH_ISA_SCALAR, LLORCH_ISA_AVX2, LLORCH_ISA_AVXVNNI,
                                        LLORCH_ISA_AVX512};
    for (int i = 0; i < 4; i++) {
        if (!kernels_get(k[i])) {
            print_message("skipped level %s: this CPU lacks it\n", kernels_isa_name(k[i]));
            continue;
        }
        check_exact(*state, LLORCH_DTYPE_NATIVE, l[i]);
    }
}

/* stories260k with every 2-D weight rounded to F16 (written by the gguf
 * writer into a temporary file): run natively, f16 weights with f16
 * activations, its teacher-forced greedy tokens over the first 8 steps of
 * the 4 prompts are llama.cpp's at all 32 steps (bf16 and int8 cannot do
 * that: see the constants below), at every level this CPU runs. */
static struct model *stories_as_f16(const struct suite *s, char *path, size_t cap)
{
    struct model *src = load(s, "stories260k.gguf");
    struct gguf_file *f = src->file;
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 32), 0);
    for (uint64_t i = 0; i < gguf_kv_count(f); i++) {
        struct gguf_str key;
        enum gguf_type type;
        const void *data;
        uint64_t len;
        assert_int_equal(gguf_kv_at(f, i, &key, &type), 0);
        assert_int_equal(gguf_kv_raw_at(f, i, &data, &len), 0);
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)key.len, key.ptr);
        assert_int_equal(gguf_writer_set_raw(w, name, type, data, len), 0);
    }
    assert_int_equal(gguf_writer_set_u32(w, "general.file_type", 1), 0);
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(f, i);
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        if (t->n_dims == 2 && t->type == GGML_TYPE_F32) {
            uint16_t *h = malloc(t->n_elements * sizeof *h);
            assert_non_null(h);
            assert_int_equal(quant_quantize(GGML_TYPE_F16, t->data, h, t->n_elements), 0);
            assert_int_equal(gguf_writer_add_tensor(w, name, GGML_TYPE_F16, 2, t->ne, h,
                                                    t->n_elements * 2), 0);
            free(h);
        } else {
            assert_int_equal(gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data,
                                                    t->nbytes), 0);
        }
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(path, cap, "%s/llorch-stories-f16-%d.gguf", tmp && tmp[0] ? tmp : "/tmp", (int)getpid());
    assert_int_equal(gguf_writer_write_file(w, path), 0);
    gguf_writer_free(w);
    model_free(src);
    struct model *m;
    char err[256];
    assert_int_equal(model_load(&m, path, err, sizeof err), 0);
    return m;
}

static void reference_f16_file_greedy_matches_llama_cpp_at_every_step(void **state)
{
    struct suite *s = *state;
    char path[512];
    struct model *m = stories_as_f16(s, path, sizeof path);
    static const enum kernels_isa k[] = {KERNELS_ISA_SCALAR, KERNELS_ISA_AVX2, KERNELS_ISA_AVXVNNI,
                                         KERNELS_ISA_AVX512};
    static const enum llorch_isa l[] = {LLORCH_ISA_SCALAR, LLORCH_ISA_AVX2, LLORCH_ISA_AVXVNNI,
                                        LLORCH_ISA_AVX512};
    for (int li = 0; li < 4; li++) {
        if (!kernels_get(k[li])) {
            print_message("skipped level %s: this CPU lacks it\n", kernels_isa_name(k[li]));
            continue;
        }
        uint32_t max_prompt = 1;
        for (int i = 0; i < s->n; i++)
            if (starts_with(s->refs[i].model, "stories") && s->refs[i].n_prompt > max_prompt)
                max_prompt = (uint32_t)s->refs[i].n_prompt;
        struct forward *fw = engine_at(s, m, LLORCH_DTYPE_NATIVE, LLORCH_KV_F32, max_prompt, l[li]);
        const uint32_t nv = forward_n_vocab(fw);
        int checked = 0, equal = 0;
        for (int i = 0; i < s->n; i++) {
            struct ref *r = &s->refs[i];
            if (!starts_with(r->model, "stories"))
                continue;
            const size_t steps = r->n_greedy < 8 ? r->n_greedy : 8;
            double *logp = malloc((steps + 1) * nv * sizeof *logp);
            llorch_token *ours = malloc((steps + 1) * sizeof *ours);
            run(fw, r->prompt, r->n_prompt, r->greedy, steps, ours, logp);
            for (size_t st = 0; st < steps; st++) {
                checked++;
                equal += ours[st] == r->greedy[st];
                if (ours[st] != r->greedy[st])
                    print_error("%s f16 %s step %zu: greedy %d, llama.cpp %d\n", r->file,
                                forward_isa_name(fw), st, ours[st], r->greedy[st]);
            }
            free(logp);
            free(ours);
        }
        print_message("stories260k as F16, native %s: greedy equal at %d of %d steps\n",
                      forward_isa_name(fw), equal, checked);
        assert_int_equal(checked, 32);
        assert_int_equal(equal, checked);
        forward_free(fw);
    }
    model_free(m);
    unlink(path);
}

/* bf16 and int8, with an f32 KV cache like the references (so the figures
 * are the format's own). On the random-weight models (logits of order 1,
 * flat distributions) bf16's 8-bit significand and int8's per-channel weights
 * / per-token activations move the top-8 log-probs by a mean of
 * 4e-4..1.8e-3 (bf16) and 1.3e-3..4.6e-3 (int8), measured; the bounds below
 * are about three times the worst model.
 *
 * stories260k (real weights, dim 64, logits spread ~21, sd ~3.4) is far more
 * sensitive: bf16's ~0.2 % relative rounding per element becomes ~0.07 in
 * log-prob. Measured (teacher forced, first 8 steps of the 4 prompts = 32
 * steps), by replacing the rounding with random perturbations of one
 * rounding step, 40 seeds: bf16 weights + activations give a mean of 0.071 and
 * miss 1.0 step on average (all 32 equal in only 33 % of seeds); int8 weights
 * + u8 activations 0.30 and 5.9 misses (all equal: never). The standard
 * deviation of our top-1/top-2 margin reaches 0.22 (bf16) and 0.80 (int8) at
 * steps where llama.cpp's own gap is 0.046..0.27, and llama.cpp's formats do
 * no better (emulated: its bf16 path misses the same step as ours, Q8_0
 * weights + Q8_0 activations miss 7 of 32). No per-matrix choice fixes every
 * step (keeping any one matrix kind, the LM head included, in f32 still
 * misses 1..6); only f16-like precision (11 bits) for weights and
 * activations does. So the greedy tokens of the first 8 steps are required
 * to be llama.cpp's wherever llama.cpp's top-1/top-2 gap exceeds about twice
 * the worst noise of the format: 0.5 for bf16, 1.5 for int8; the mean bounds
 * are 0.2 and 0.8 (measured 0.076 and 0.30). */
#define MEAN_BOUND_BF16 0.006
#define MEAN_BOUND_INT8 0.015
#define MEAN_BOUND_STORIES_BF16 0.2
#define MEAN_BOUND_STORIES_INT8 0.8
#define GREEDY_GAP_BF16 0.5
#define GREEDY_GAP_INT8 1.5

static void reference_bf16_and_int8_stay_within_format_bounds(void **state)
{
    struct suite *s = *state;
    const enum llorch_dtype dts[2] = {LLORCH_DTYPE_BF16, LLORCH_DTYPE_INT8};
    int i = 0;
    while (i < s->n) {
        int j = i;
        while (j < s->n && !strcmp(s->refs[j].model, s->refs[i].model))
            j++;
        struct model *m = load(s, s->refs[i].model);
        const bool stories = starts_with(s->refs[i].model, "stories");
        size_t max_prompt = 1;
        for (int k = i; k < j; k++)
            max_prompt = s->refs[k].n_prompt > max_prompt ? s->refs[k].n_prompt : max_prompt;
        for (int d = 0; d < 2; d++) {
            const double bound = stories ? (d ? MEAN_BOUND_STORIES_INT8 : MEAN_BOUND_STORIES_BF16)
                                         : (d ? MEAN_BOUND_INT8 : MEAN_BOUND_BF16);
            const double gap_min = d ? GREEDY_GAP_INT8 : GREEDY_GAP_BF16;
            struct forward *fw = engine(s, m, dts[d], LLORCH_KV_F32, (uint32_t)max_prompt);
            const uint32_t nv = forward_n_vocab(fw);
            double sum = 0.0;
            size_t count = 0, greedy_checked = 0, greedy_equal = 0;
            /* two prompts per model keep the suite fast; stories260k all four */
            for (int k = i; k < j && (stories || k < i + 2); k++) {
                struct ref *r = &s->refs[k];
                double *logp = malloc((r->n_greedy + 1) * nv * sizeof *logp);
                llorch_token *ours = malloc((r->n_greedy + 1) * sizeof *ours);
                run(fw, r->prompt, r->n_prompt, r->greedy, r->n_greedy, ours, logp);
                for (size_t st = 0; st <= r->n_greedy; st++) {
                    for (size_t t = 0; t < TOP; t++) {
                        llorch_token id;
                        double lp = ref_lp(r->steps, st, t, &id);
                        sum += fabs(logp[st * nv + (uint32_t)id] - lp);
                        count++;
                    }
                    llorch_token id, id2;
                    const double gap = ref_lp(r->steps, st, 0, &id) - ref_lp(r->steps, st, 1, &id2);
                    if (stories && st < 8)
                        greedy_equal += ours[st] == r->greedy[st];
                    if (stories && st < 8 && gap > gap_min) {
                        if (ours[st] != r->greedy[st])
                            print_error("%s %s step %zu: greedy %d, llama.cpp %d (gap %.3g)\n", r->file,
                                        forward_dtype_name(dts[d]), st, ours[st], r->greedy[st], gap);
                        assert_int_equal(ours[st], r->greedy[st]);
                        greedy_checked++;
                    }
                }
                free(logp);
                free(ours);
            }
            const double mean = sum / (double)count;
            print_message("%-22s %-4s mean |dlogprob| %.3g (bound %.2g)%s\n", s->refs[i].model,
                          forward_dtype_name(dts[d]), mean, bound, stories ? ", greedy checked" : "");
            if (stories) {
                print_message("%-22s %-4s greedy tokens equal at %zu of 32 steps with gap > %.1f "
                              "(required), %zu of all 32 first-8 steps\n",
                              s->refs[i].model, forward_dtype_name(dts[d]), greedy_checked, gap_min,
                              greedy_equal);
                assert_true(greedy_checked >= 4); /* the check is not vacuous (20 and 4 measured) */
            }
            assert_true(mean <= bound);
            forward_free(fw);
        }
        model_free(m);
        i = j;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reference_exact_mode_matches_llama_cpp),
        cmocka_unit_test(reference_native_classes_match_llama_cpp_at_every_level),
        cmocka_unit_test(reference_f16_file_greedy_matches_llama_cpp_at_every_step),
        cmocka_unit_test(reference_bf16_and_int8_stay_within_format_bounds),
    };
    return cmocka_run_group_tests(tests, suite_setup, suite_teardown);
}
