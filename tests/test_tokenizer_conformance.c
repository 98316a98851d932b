/* Conformance with llama.cpp: every line of
 * $LLORCH_SHARED/reference/tokenizer/{llama2,gpt2,llama3,qwen2}.jsonl gives a
 * text and llama.cpp's ids without BOS (`ids`), with add_special (`ids_bos`)
 * and its detokenisation of `ids` (`detok`, or `text` when absent). Each
 * vocabulary must reproduce all of them exactly. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gguf.h"
#include "tokenizer.h"

static const char *shared_dir(void)
{
    const char *s = getenv("LLORCH_SHARED");
    return s && *s ? s : "../shared";
}

struct vocab_case {
    const char *jsonl;
    const char *gguf;
    const char *pre;
    enum tokenizer_kind kind;
};

static void print_ids(const char *label, const llorch_token *ids, size_t n)
{
    fprintf(stderr, "    %s [", label);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "%s%d", i ? "," : "", ids[i]);
    fprintf(stderr, "]\n");
}

/* Compares our ids with a JSON array; prints both on mismatch. */
static bool ids_match(const json_t *want, const llorch_token *got, size_t n, const char *what,
                      size_t line, const char *text)
{
    bool ok = json_is_array(want) && json_array_size(want) == n;
    for (size_t i = 0; ok && i < n; i++)
        ok = json_integer_value(json_array_get(want, i)) == got[i];
    if (!ok) {
        fprintf(stderr, "  line %zu %s mismatch for \"%s\"\n", line, what, text);
        print_ids("got ", got, n);
        fprintf(stderr, "    want ");
        json_dumpf(want, stderr, JSON_COMPACT);
        fprintf(stderr, "\n");
    }
    return ok;
}

static void run_vocab(const struct vocab_case *vc)
{
    char path[4096], err[256] = "";
    snprintf(path, sizeof(path), "%s/%s", shared_dir(), vc->gguf);
    struct gguf_file *f = NULL;
    int rc = gguf_open(&f, path, err, sizeof(err));
    if (rc)
        fprintf(stderr, "gguf_open %s: %s\n", path, err);
    assert_int_equal(rc, 0);
    struct tokenizer *t = NULL;
    rc = tokenizer_new(&t, f, err, sizeof(err));
    if (rc)
        fprintf(stderr, "tokenizer_new %s: %s\n", path, err);
    assert_int_equal(rc, 0);
    assert_int_equal(tokenizer_kind(t), vc->kind);
    assert_string_equal(tokenizer_pre_name(t), vc->pre);

    snprintf(path, sizeof(path), "%s/reference/tokenizer/%s", shared_dir(), vc->jsonl);
    FILE *fp = fopen(path, "r");
    if (!fp)
        fprintf(stderr, "cannot open %s\n", path);
    assert_non_null(fp);

    size_t cap = 1 << 16, lines = 0, bad = 0;
    llorch_token *ids = malloc(cap * sizeof(*ids));
    char *text_out = malloc(1 << 20);
    assert_non_null(ids);
    assert_non_null(text_out);
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t ll;
    while ((ll = getline(&line, &line_cap, fp)) > 0) {
        if (line[0] == '\n')
            continue;
        lines++;
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)ll, 0, &je);
        assert_non_null(o);
        json_t *jt = json_object_get(o, "text");
        const char *text = json_string_value(jt);
        size_t tlen = json_string_length(jt);
        assert_non_null(text);

        size_t n = 0;
        rc = tokenizer_encode(t, text, tlen, false, false, ids, cap, &n, NULL);
        assert_int_equal(rc, 0);
        bool ok = ids_match(json_object_get(o, "ids"), ids, n, "ids", lines, text);

        size_t dn = 0;
        rc = tokenizer_decode(t, ids, n, text_out, 1 << 20, &dn);
        assert_int_equal(rc, 0);
        json_t *jd = json_object_get(o, "detok");
        const char *want_d = jd ? json_string_value(jd) : text;
        size_t want_dl = jd ? json_string_length(jd) : tlen;
        if (dn != want_dl || memcmp(text_out, want_d, dn)) {
            fprintf(stderr, "  line %zu detok mismatch: got \"%.*s\" want \"%s\"\n", lines,
                    (int)dn, text_out, want_d);
            ok = false;
        }

        rc = tokenizer_encode(t, text, tlen, tokenizer_adds_bos(t), false, ids, cap, &n, NULL);
        assert_int_equal(rc, 0);
        ok = ids_match(json_object_get(o, "ids_bos"), ids, n, "ids_bos", lines, text) && ok;
        if (!ok)
            bad++;
        json_decref(o);
    }
    free(line);
    fclose(fp);
    free(ids);
    free(text_out);
    if (bad)
        fprintf(stderr, "%s: %zu of %zu lines differ\n", vc->jsonl, bad, lines);
    assert_int_equal(lines, 73);
    assert_int_equal(bad, 0);
    tokenizer_free(t);
    gguf_close(f);
}

static void llama2_spm_matches_llama_cpp_on_every_line(void **state)
{
    (void)state;
    run_vocab(&(struct vocab_case){"llama2.jsonl", "models/llama-tiny-f32.gguf", "default",
                                   TOKENIZER_SPM});
}

static void gpt2_bpe_matches_llama_cpp_on_every_line(void **state)
{
    (void)state;
    run_vocab(&(struct vocab_case){"gpt2.jsonl", "models/gpt2-tiny-f32.gguf", "gpt-2",
                                   TOKENIZER_BPE});
}

static void llama3_bpe_matches_llama_cpp_on_every_line(void **state)
{
    (void)state;
    run_vocab(&(struct vocab_case){"llama3.jsonl", "vocab/llama3-vocab.gguf", "llama-bpe",
                                   TOKENIZER_BPE});
}

static void qwen2_bpe_matches_llama_cpp_on_every_line(void **state)
{
    (void)state;
    run_vocab(&(struct vocab_case){"qwen2.jsonl", "vocab/qwen2-vocab.gguf", "qwen2",
                                   TOKENIZER_BPE});
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(llama2_spm_matches_llama_cpp_on_every_line),
        cmocka_unit_test(gpt2_bpe_matches_llama_cpp_on_every_line),
        cmocka_unit_test(llama3_bpe_matches_llama_cpp_on_every_line),
        cmocka_unit_test(qwen2_bpe_matches_llama_cpp_on_every_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
