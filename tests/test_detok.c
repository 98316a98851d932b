/* Streaming detokenisation: whole UTF-8 only, U+FFFD for invalid bytes, the
 * SPM leading space, and stop strings with hold-back, on the Llama 2 (byte
 * tokens) and GPT-2 shared vocabularies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "detok.h"
#include "gguf.h"
#include "tokenizer.h"

struct fixture {
    struct gguf_file *f[2];
    struct tokenizer *t[2];
};

enum { V_LLAMA2, V_GPT2 };

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    const char *shared = getenv("LLORCH_SHARED");
    if (!fx)
        return -1;
    if (!shared || !*shared)
        shared = "../shared";
    const char *paths[2] = {"models/llama-tiny-f32.gguf", "models/gpt2-tiny-f32.gguf"};
    for (int i = 0; i < 2; i++) {
        char path[4096], err[256] = "";
        snprintf(path, sizeof(path), "%s/%s", shared, paths[i]);
        if (gguf_open(&fx->f[i], path, err, sizeof(err)) ||
            tokenizer_new(&fx->t[i], fx->f[i], err, sizeof(err))) {
            fprintf(stderr, "%s: %s\n", path, err);
            return -1;
        }
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    for (int i = 0; i < 2; i++) {
        tokenizer_free(fx->t[i]);
        gguf_close(fx->f[i]);
    }
    free(fx);
    return 0;
}

#define BYTE(b) (3 + (b)) /* Llama 2's <0xNN> ids */
#define OUTCAP (DETOK_PENDING_CAP + 64)

/* Pushes ids one by one, appending everything emitted to acc; returns the
 * stop index (or -1) and the number of pushes accepted. */
static int feed(struct detok *d, const llorch_token *ids, size_t n, char *acc, size_t *acc_len,
                size_t *pushed)
{
    char out[OUTCAP];
    int stop = -1;
    *pushed = 0;
    for (size_t i = 0; i < n && stop < 0; i++) {
        int r = detok_push(d, ids[i], out, sizeof(out), &stop);
        assert_true(r >= 0);
        memcpy(acc + *acc_len, out, (size_t)r);
        *acc_len += (size_t)r;
        (*pushed)++;
    }
    return stop;
}

static void split_character_is_emitted_once_complete(void **state)
{
    struct fixture *fx = *state;
    struct detok d;
    assert_int_equal(detok_init(&d, fx->t[V_LLAMA2], NULL, NULL, 0, false), 0);
    char out[OUTCAP];
    int stop;
    assert_int_equal(detok_push(&d, BYTE(0xE2), out, sizeof(out), &stop), 0);
    assert_int_equal(detok_push(&d, BYTE(0x82), out, sizeof(out), &stop), 0);
    assert_int_equal(detok_push(&d, BYTE(0xAC), out, sizeof(out), &stop), 3);
    assert_memory_equal(out, "\xE2\x82\xAC", 3);
    assert_int_equal(stop, -1);
    assert_int_equal(detok_flush(&d, out, sizeof(out)), 0);
}

static void invalid_bytes_become_replacement_characters(void **state)
{
    struct fixture *fx = *state;
    struct detok d;
    assert_int_equal(detok_init(&d, fx->t[V_LLAMA2], NULL, NULL, 0, false), 0);
    /* E2 then 'A': the started character is cut short; a lone continuation
     * byte; an invalid lead byte; then a truncated character at the end. */
    llorch_token ids[] = {BYTE(0xE2), BYTE('A'), BYTE(0x80), BYTE(0xFF), BYTE(0xF0), BYTE(0x9F)};
    char acc[256];
    size_t len = 0, pushed;
    feed(&d, ids, 6, acc, &len, &pushed);
    const char *want = "\xEF\xBF\xBD" "A" "\xEF\xBF\xBD" "\xEF\xBF\xBD";
    assert_int_equal(len, strlen(want));
    assert_memory_equal(acc, want, len);
    char out[OUTCAP];
    assert_int_equal(detok_flush(&d, out, sizeof(out)), 3);
    assert_memory_equal(out, "\xEF\xBF\xBD", 3);
}

static void first_piece_loses_its_leading_space_when_asked(void **state)
{
    struct fixture *fx = *state;
    struct detok d;
    llorch_token ids[] = {15043, 3186}; /* ▁Hello ▁world */
    char acc[64];
    size_t len = 0, pushed;
    assert_int_equal(detok_init(&d, fx->t[V_LLAMA2], NULL, NULL, 0, true), 0);
    feed(&d, ids, 2, acc, &len, &pushed);
    assert_int_equal(len, 11);
    assert_memory_equal(acc, "Hello world", 11);
    len = 0;
    assert_int_equal(detok_init(&d, fx->t[V_LLAMA2], NULL, NULL, 0, false), 0);
    feed(&d, ids, 2, acc, &len, &pushed);
    assert_int_equal(len, 12);
}

static void control_tokens_render_as_nothing(void **state)
{
    struct fixture *fx = *state;
    struct detok d;
    char out[OUTCAP];
    int stop;
    assert_int_equal(detok_init(&d, fx->t[V_GPT2], NULL, NULL, 0, false), 0);
    assert_int_equal(detok_push(&d, 50256, out, sizeof(out), &stop), 0);
    assert_int_equal(detok_push(&d, 50257, out, sizeof(out), &stop), LLORCH_EINVAL);
}

static size_t encode(const struct tokenizer *t, const char *s, llorch_token *ids, size_t cap)
{
    size_t n = 0;
    assert_int_equal(tokenizer_encode(t, s, strlen(s), false, false, ids, cap, &n, NULL), 0);
    return n;
}

static void stop_string_spanning_tokens_ends_the_stream_before_it(void **state)
{
    struct fixture *fx = *state;
    const char *stops[] = {"STOP"};
    size_t lens[] = {4};
    llorch_token ids[64];
    size_t n = encode(fx->t[V_GPT2], "Hello world, STOPPED here", ids, 64);
    struct detok d;
    assert_int_equal(detok_init(&d, fx->t[V_GPT2], stops, lens, 1, false), 0);
    char acc[256];
    size_t len = 0, pushed;
    int stop = feed(&d, ids, n, acc, &len, &pushed);
    assert_int_equal(stop, 0);
    assert_true(pushed < n);
    assert_int_equal(len, strlen("Hello world, "));
    assert_memory_equal(acc, "Hello world, ", len);
    char out[OUTCAP];
    int s2;
    assert_int_equal(detok_push(&d, ids[0], out, sizeof(out), &s2), LLORCH_EINVAL);
    assert_int_equal(detok_flush(&d, out, sizeof(out)), 0);
}

static void possible_stop_prefix_is_held_back_then_released(void **state)
{
    struct fixture *fx = *state;
    const char *stops[] = {"world peace"};
    size_t lens[] = {11};
    struct detok d;
    assert_int_equal(detok_init(&d, fx->t[V_GPT2], stops, lens, 1, false), 0);
    llorch_token ids[64];
    char acc[256];
    size_t len = 0, pushed;
    size_t n = encode(fx->t[V_GPT2], "Hello world", ids, 64);
    assert_int_equal(feed(&d, ids, n, acc, &len, &pushed), -1);
    /* "world" could still become "world peace": only "Hello " is final. */
    assert_int_equal(len, 6);
    assert_memory_equal(acc, "Hello ", 6);
    n = encode(fx->t[V_GPT2], " war", ids, 64);
    assert_int_equal(feed(&d, ids, n, acc, &len, &pushed), -1);
    assert_int_equal(len, strlen("Hello world war"));
    assert_memory_equal(acc, "Hello world war", len);
}

static void held_back_text_is_released_at_flush(void **state)
{
    struct fixture *fx = *state;
    const char *stops[] = {"\n\nUser:"};
    size_t lens[] = {7};
    struct detok d;
    assert_int_equal(detok_init(&d, fx->t[V_GPT2], stops, lens, 1, false), 0);
    llorch_token ids[64];
    char acc[256];
    size_t len = 0, pushed;
    size_t n = encode(fx->t[V_GPT2], "Done.\n\nUs", ids, 64);
    assert_int_equal(feed(&d, ids, n, acc, &len, &pushed), -1);
    assert_int_equal(len, 5);
    char out[OUTCAP];
    int r = detok_flush(&d, out, sizeof(out));
    assert_int_equal(r, 4);
    assert_memory_equal(out, "\n\nUs", 4);
}

static void earliest_stop_wins_and_ties_go_to_the_first(void **state)
{
    struct fixture *fx = *state;
    const char *stops[] = {"cd", "bcd", "bc"};
    size_t lens[] = {2, 3, 2};
    struct detok d;
    llorch_token ids[64];
    char acc[256];
    size_t len = 0, pushed;
    /* All of "abcde" arrives in one token when possible; "bcd" and "bc"
     * both start at 1, "bcd" is listed first. */
    assert_int_equal(detok_init(&d, fx->t[V_GPT2], stops, lens, 3, false), 0);
    size_t n = encode(fx->t[V_GPT2], "abcde", ids, 64);
    int stop = feed(&d, ids, n, acc, &len, &pushed);
    assert_true(stop == 1 || stop == 2);
    assert_int_equal(len, 1);
    assert_int_equal(acc[0], 'a');
}

static void stop_matches_across_split_utf8(void **state)
{
    struct fixture *fx = *state;
    const char *stops[] = {"\xE2\x82\xAC!"};
    size_t lens[] = {4};
    struct detok d;
    assert_int_equal(detok_init(&d, fx->t[V_LLAMA2], stops, lens, 1, false), 0);
    llorch_token ids[] = {BYTE('x'), BYTE(0xE2), BYTE(0x82), BYTE(0xAC), BYTE('!'), BYTE('y')};
    char acc[64];
    size_t len = 0, pushed;
    assert_int_equal(feed(&d, ids, 6, acc, &len, &pushed), 0);
    assert_int_equal(pushed, 5);
    assert_int_equal(len, 1);
    assert_int_equal(acc[0], 'x');
}

static void too_small_output_is_refused_without_consuming(void **state)
{
    struct fixture *fx = *state;
    struct detok d;
    assert_int_equal(detok_init(&d, fx->t[V_GPT2], NULL, NULL, 0, false), 0);
    char out[OUTCAP];
    int stop;
    assert_int_equal(detok_push(&d, 15496, out, 2, &stop), LLORCH_ETOOBIG); /* "Hello" */
    assert_int_equal(detok_push(&d, 15496, out, sizeof(out), &stop), 5);
    assert_memory_equal(out, "Hello", 5);
    assert_true(detok_out_cap(fx->t[V_GPT2]) >= 3 * tokenizer_max_piece_len(fx->t[V_GPT2]));
}

static void every_piece_fits_in_the_advertised_output(void **state)
{
    struct fixture *fx = *state;
    for (int v = 0; v < 2; v++) {
        const struct tokenizer *t = fx->t[v];
        size_t cap = detok_out_cap(t);
        char *out = malloc(cap);
        assert_non_null(out);
        const char *stops[] = {"zz"};
        size_t lens[] = {2};
        struct detok d;
        assert_int_equal(detok_init(&d, t, stops, lens, 1, false), 0);
        for (uint32_t id = 0; id < tokenizer_n_vocab(t); id++) {
            int stop;
            int r = detok_push(&d, (llorch_token)id, out, cap, &stop);
            if (stop >= 0 || r == LLORCH_EINVAL)
                assert_int_equal(detok_init(&d, t, stops, lens, 1, false), 0);
            else
                assert_true(r >= 0);
        }
        free(out);
    }
}

static void init_rejects_bad_stop_lists(void **state)
{
    struct fixture *fx = *state;
    struct detok d;
    const char *five[] = {"a", "b", "c", "d", "e"};
    size_t lens[] = {1, 1, 1, 1, 1};
    assert_int_equal(detok_init(&d, fx->t[V_GPT2], five, lens, 5, false), LLORCH_EINVAL);
    size_t zero[] = {0};
    assert_int_equal(detok_init(&d, fx->t[V_GPT2], five, zero, 1, false), LLORCH_EINVAL);
    size_t big[] = {DETOK_MAX_STOP_LEN + 1};
    assert_int_equal(detok_init(&d, fx->t[V_GPT2], five, big, 1, false), LLORCH_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(split_character_is_emitted_once_complete),
        cmocka_unit_test(invalid_bytes_become_replacement_characters),
        cmocka_unit_test(first_piece_loses_its_leading_space_when_asked),
        cmocka_unit_test(control_tokens_render_as_nothing),
        cmocka_unit_test(stop_string_spanning_tokens_ends_the_stream_before_it),
        cmocka_unit_test(possible_stop_prefix_is_held_back_then_released),
        cmocka_unit_test(held_back_text_is_released_at_flush),
        cmocka_unit_test(earliest_stop_wins_and_ties_go_to_the_first),
        cmocka_unit_test(stop_matches_across_split_utf8),
        cmocka_unit_test(too_small_output_is_refused_without_consuming),
        cmocka_unit_test(every_piece_fits_in_the_advertised_output),
        cmocka_unit_test(init_rejects_bad_stop_lists),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
