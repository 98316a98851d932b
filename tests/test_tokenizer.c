/* Tokenizer behaviour beyond the reference vectors: edge inputs, special
 * token classes, EOG sets, errors, the word cache, concurrency and long
 * inputs, on the four shared vocabularies (Llama 2 SPM, GPT-2, Llama 3,
 * Qwen 2) and on small vocabularies written with the GGUF writer. */
#include <pthread.h>
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

enum { V_LLAMA2, V_GPT2, V_LLAMA3, V_QWEN2, V_COUNT };

static const char *const vocab_paths[V_COUNT] = {
    "models/llama-tiny-f32.gguf", "models/gpt2-tiny-f32.gguf", "vocab/llama3-vocab.gguf",
    "vocab/qwen2-vocab.gguf"};

struct fixture {
    struct gguf_file *f[V_COUNT];
    struct tokenizer *t[V_COUNT];
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    if (!fx)
        return -1;
    const char *shared = getenv("LLORCH_SHARED");
    if (!shared || !*shared)
        shared = "../shared";
    for (int i = 0; i < V_COUNT; i++) {
        char path[4096], err[256] = "";
        snprintf(path, sizeof(path), "%s/%s", shared, vocab_paths[i]);
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
    for (int i = 0; i < V_COUNT; i++) {
        tokenizer_free(fx->t[i]);
        gguf_close(fx->f[i]);
    }
    free(fx);
    return 0;
}

#define MAXIDS 4096

static size_t enc(const struct tokenizer *t, const char *s, bool bos, bool special,
                  llorch_token *ids)
{
    size_t n = 0;
    int rc = tokenizer_encode(t, s, strlen(s), bos, special, ids, MAXIDS, &n, NULL);
    assert_int_equal(rc, 0);
    return n;
}

static bool has_id(const llorch_token *ids, size_t n, llorch_token id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

/* decode(encode(s)) == s */
static void assert_round_trip(const struct tokenizer *t, const char *s, size_t len)
{
    size_t cap = len + 64, n = 0, dn = 0;
    llorch_token *ids = malloc(cap * sizeof(*ids));
    char *out = malloc(len * 2 + 64);
    assert_non_null(ids);
    assert_non_null(out);
    assert_int_equal(tokenizer_encode(t, s, len, false, false, ids, cap, &n, NULL), 0);
    assert_int_equal(tokenizer_decode(t, ids, n, out, len * 2 + 64, &dn), 0);
    assert_int_equal(dn, len);
    assert_memory_equal(out, s, len);
    free(ids);
    free(out);
}

static void empty_text_gives_no_ids_and_bos_alone_with_add_bos(void **state)
{
    struct fixture *fx = *state;
    llorch_token ids[4];
    size_t n = 99;
    for (int v = 0; v < V_COUNT; v++) {
        assert_int_equal(tokenizer_encode(fx->t[v], "", 0, false, false, ids, 4, &n, NULL), 0);
        assert_int_equal(n, 0);
    }
    assert_int_equal(tokenizer_encode(fx->t[V_LLAMA2], "", 0, true, false, ids, 4, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    assert_int_equal(tokenizer_encode(fx->t[V_LLAMA3], "", 0, true, false, ids, 4, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 128000);
}

static void adds_bos_follows_add_bos_token(void **state)
{
    struct fixture *fx = *state;
    assert_true(tokenizer_adds_bos(fx->t[V_LLAMA2]));
    assert_false(tokenizer_adds_bos(fx->t[V_GPT2]));
    assert_true(tokenizer_adds_bos(fx->t[V_LLAMA3]));
    assert_false(tokenizer_adds_bos(fx->t[V_QWEN2]));
    assert_int_equal(tokenizer_bos(fx->t[V_QWEN2]), 151643);
}

static void invalid_utf8_is_rejected_with_the_offset_of_the_bad_sequence(void **state)
{
    struct fixture *fx = *state;
    static const struct {
        const char *s;
        size_t len, off;
    } cases[] = {
        {"ab\xC3\x28", 4, 2},         /* bad continuation */
        {"\xC0\xAF", 2, 0},           /* overlong */
        {"x\xED\xA0\x80", 4, 1},      /* surrogate */
        {"abc\xE2\x82", 5, 3},        /* truncated at the end */
        {"ok \xF4\x90\x80\x80", 7, 3}, /* above U+10FFFF */
        {"\xFF", 1, 0},
        {"a\x80", 2, 1}, /* lone continuation */
    };
    llorch_token ids[16];
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (int v = 0; v < V_COUNT; v++) {
            size_t n = 7, off = 999;
            int rc = tokenizer_encode(fx->t[v], cases[c].s, cases[c].len, false, false, ids, 16,
                                      &n, &off);
            assert_int_equal(rc, LLORCH_EUTF8);
            assert_int_equal(off, cases[c].off);
            assert_int_equal(n, 0);
        }
    }
}

static void too_small_output_reports_the_full_count(void **state)
{
    struct fixture *fx = *state;
    llorch_token ids[2];
    size_t n = 0, full = 0;
    llorch_token big[64];
    full = enc(fx->t[V_GPT2], "one two three four five", false, false, big);
    assert_int_equal(tokenizer_encode(fx->t[V_GPT2], "one two three four five", 23, false, false,
                                      ids, 2, &n, NULL),
                     LLORCH_ETOOBIG);
    assert_int_equal(n, full);
    assert_int_equal(ids[0], big[0]);
    assert_int_equal(ids[1], big[1]);
}

static void control_tokens_are_matched_only_with_parse_special(void **state)
{
    struct fixture *fx = *state;
    llorch_token ids[MAXIDS];
    size_t n = enc(fx->t[V_LLAMA3], "<|start_header_id|>user<|end_header_id|>", false, false, ids);
    assert_false(has_id(ids, n, 128006));
    n = enc(fx->t[V_LLAMA3], "<|start_header_id|>user<|end_header_id|>", false, true, ids);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 128006);
    assert_int_equal(ids[2], 128007);
    n = enc(fx->t[V_QWEN2], "<|im_start|>user", false, false, ids);
    assert_false(has_id(ids, n, 151644));
    n = enc(fx->t[V_QWEN2], "<|im_start|>user", false, true, ids);
    assert_int_equal(ids[0], 151644);
    /* <s> is plain text for SPM unless parsed as special. */
    n = enc(fx->t[V_LLAMA2], "<s>hi", false, false, ids);
    assert_false(has_id(ids, n, 1));
    n = enc(fx->t[V_LLAMA2], "<s>hi", false, true, ids);
    assert_int_equal(ids[0], 1);
    assert_true(tokenizer_is_control(fx->t[V_QWEN2], 151644));
    assert_false(tokenizer_is_control(fx->t[V_QWEN2], 151667));
}

static void user_defined_tokens_are_split_out_of_plain_text(void **state)
{
    struct fixture *fx = *state;
    llorch_token ids[MAXIDS];
    for (int special = 0; special < 2; special++) {
        size_t n = enc(fx->t[V_QWEN2], "a<think>b</think><tool_call>", false, special, ids);
        assert_true(has_id(ids, n, 151667));
        assert_true(has_id(ids, n, 151668));
        assert_true(has_id(ids, n, 151657));
    }
    assert_int_equal(tokenizer_token_attr(fx->t[V_QWEN2], 151667), TOKENIZER_ATTR_USER_DEFINED);
}

static void unused_padding_tokens_are_never_produced(void **state)
{
    struct fixture *fx = *state;
    llorch_token ids[MAXIDS];
    for (int special = 0; special < 2; special++) {
        size_t n = enc(fx->t[V_QWEN2], "[PAD151669] [PAD151935][PAD151700]", false, special, ids);
        for (size_t i = 0; i < n; i++)
            assert_true(ids[i] < 151669);
    }
    assert_true(tokenizer_token_attr(fx->t[V_QWEN2], 151700) & TOKENIZER_ATTR_UNUSED);
}

static void eog_set_is_derived_as_llama_cpp_does(void **state)
{
    struct fixture *fx = *state;
    const llorch_token *ids;
    size_t n = tokenizer_eog_ids(fx->t[V_LLAMA3], &ids);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 128001); /* <|end_of_text|> */
    assert_int_equal(ids[1], 128008); /* <|eom_id|> */
    assert_int_equal(ids[2], 128009); /* <|eot_id|>, the eos */
    /* Qwen: <|endoftext|>, <|im_end|>, the FIM pad/repo/file-sep, and the
     * plain-vocabulary "</s>" (128247), which llama.cpp's name list catches
     * and turns into a control token. */
    n = tokenizer_eog_ids(fx->t[V_QWEN2], &ids);
    llorch_token want[] = {128247, 151643, 151645, 151662, 151663, 151664};
    assert_int_equal(n, 6);
    assert_true(tokenizer_is_control(fx->t[V_QWEN2], 128247));
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(ids[i], want[i]);
    assert_true(tokenizer_is_eog(fx->t[V_LLAMA2], 2));
    assert_int_equal(tokenizer_eog_ids(fx->t[V_LLAMA2], NULL), 1);
    assert_true(tokenizer_is_eog(fx->t[V_GPT2], 50256));
    assert_false(tokenizer_is_eog(fx->t[V_GPT2], 50255));
}

static void digit_runs_split_by_the_pre_tokenizer(void **state)
{
    struct fixture *fx = *state;
    char digits[301];
    for (int i = 0; i < 300; i++)
        digits[i] = (char)('0' + (i * 7 + 3) % 10);
    digits[300] = 0;
    llorch_token ids[MAXIDS];
    size_t n = enc(fx->t[V_QWEN2], digits, false, false, ids);
    assert_int_equal(n, 300); /* one token per digit */
    n = enc(fx->t[V_LLAMA3], digits, false, false, ids);
    assert_int_equal(n, 100); /* groups of three from the left */
    n = enc(fx->t[V_LLAMA3], "1234567", false, false, ids);
    assert_int_equal(n, 3);
    size_t len;
    const char *p = tokenizer_token_piece(fx->t[V_LLAMA3], ids[2], false, &len);
    assert_int_equal(len, 1);
    assert_int_equal(p[0], '7');
    for (int v = 0; v < V_COUNT; v++)
        assert_round_trip(fx->t[v], digits, 300);
}

static void whitespace_runs_and_lone_spaces_round_trip(void **state)
{
    struct fixture *fx = *state;
    static char s[4000];
    size_t n = 0;
    memset(s, ' ', 1000);
    n = 1000;
    s[n++] = 'x';
    memset(s + n, '\n', 500);
    n += 500;
    memset(s + n, '\t', 300);
    n += 300;
    s[n++] = 'y';
    memcpy(s + n, " \r\n \r\n  ", 8);
    n += 8;
    for (int v = 0; v < V_COUNT; v++) {
        assert_round_trip(fx->t[v], s, n);
        assert_round_trip(fx->t[v], " ", 1);
        assert_round_trip(fx->t[v], "   ", 3);
    }
}

static void emoji_sequences_round_trip(void **state)
{
    struct fixture *fx = *state;
    /* ZWJ family, rainbow flag (VS16 + ZWJ), a regional-indicator flag,
     * a skin-tone modifier, a combining accent. */
    const char *s = "\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7"
                    "\xE2\x80\x8D\xF0\x9F\x91\xA6 \xF0\x9F\x8F\xB3\xEF\xB8\x8F\xE2\x80\x8D"
                    "\xF0\x9F\x8C\x88 \xF0\x9F\x87\xAF\xF0\x9F\x87\xB5 \xF0\x9F\x91\x8D\xF0\x9F"
                    "\x8F\xBD e\xCC\x81";
    for (int v = 0; v < V_COUNT; v++)
        assert_round_trip(fx->t[v], s, strlen(s));
    /* Byte fallback: SPM spells unknown characters with <0xNN> tokens. */
    llorch_token ids[MAXIDS];
    size_t n = enc(fx->t[V_LLAMA2], "\xF0\x9F\x91\xA9", false, false, ids);
    assert_true(has_id(ids, n, 3 + 0xF0));
    assert_true(tokenizer_token_attr(fx->t[V_LLAMA2], 3 + 0xF0) & TOKENIZER_ATTR_BYTE);
}

static void decode_cleans_spaces_only_where_the_vocabulary_says(void **state)
{
    struct fixture *fx = *state;
    const char *s = "Hi . I 'm here , ok ?";
    llorch_token ids[MAXIDS];
    char out[256];
    size_t dn;
    size_t n = enc(fx->t[V_GPT2], s, false, false, ids);
    assert_int_equal(tokenizer_decode(fx->t[V_GPT2], ids, n, out, sizeof(out), &dn), 0);
    assert_int_equal(dn, strlen("Hi. I'm here, ok?"));
    assert_memory_equal(out, "Hi. I'm here, ok?", dn);
    assert_true(tokenizer_clean_spaces(fx->t[V_LLAMA3]));
    assert_false(tokenizer_clean_spaces(fx->t[V_QWEN2]));
    assert_round_trip(fx->t[V_QWEN2], s, strlen(s));
    assert_round_trip(fx->t[V_LLAMA2], s, strlen(s));
}

static void spm_decode_drops_the_leading_space_of_a_fresh_list_only(void **state)
{
    struct fixture *fx = *state;
    llorch_token ids[] = {1, 15043, 3186}; /* <s> ▁Hello ▁world */
    char out[64];
    size_t dn;
    assert_int_equal(tokenizer_decode(fx->t[V_LLAMA2], ids + 1, 2, out, sizeof(out), &dn), 0);
    assert_int_equal(dn, 11);
    assert_memory_equal(out, "Hello world", 11);
    /* The BOS renders as nothing but takes the first-token slot. */
    assert_int_equal(tokenizer_decode(fx->t[V_LLAMA2], ids, 3, out, sizeof(out), &dn), 0);
    assert_int_equal(dn, 12);
    assert_memory_equal(out, " Hello world", 12);
    assert_int_equal(tokenizer_decode(fx->t[V_LLAMA2], ids, 3, out, 5, &dn), LLORCH_ETOOBIG);
    assert_int_equal(dn, 12);
}

static void token_bytes_render_control_tokens_only_when_asked(void **state)
{
    struct fixture *fx = *state;
    char buf[64];
    assert_int_equal(tokenizer_token_bytes(fx->t[V_LLAMA3], 128009, false, buf, sizeof(buf)), 0);
    int n = tokenizer_token_bytes(fx->t[V_LLAMA3], 128009, true, buf, sizeof(buf));
    assert_int_equal(n, 10);
    assert_memory_equal(buf, "<|eot_id|>", 10);
    n = tokenizer_token_bytes(fx->t[V_LLAMA2], 3 + 0xE2, false, buf, sizeof(buf));
    assert_int_equal(n, 1);
    assert_int_equal((unsigned char)buf[0], 0xE2);
    assert_true(tokenizer_token_bytes(fx->t[V_GPT2], 50257, false, buf, sizeof(buf)) < 0);
    assert_true(tokenizer_token_bytes(fx->t[V_GPT2], -1, false, buf, sizeof(buf)) < 0);
}

/* Long text that exercises every path: multilingual words repeated so the
 * word cache hits, digits, whitespace runs. */
static char *long_text(size_t *len)
{
    static const char *const parts[] = {
        "The quick brown fox", " jumped over 1234567 lazy dogs;", " it wasn't EASY.\n\n",
        "  Caf\xC3\xA9 na\xC3\xAFve \xE4\xBD\xA0\xE5\xA5\xBD\xE4\xB8\x96\xE7\x95\x8C",
        " \xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82", "\t\tx = f(y) + 42;\r\n",
        " \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", " they'RE here", "    ", "?!..", " <think>",
    };
    size_t cap = 64 * 1024, n = 0;
    char *s = malloc(cap);
    uint32_t r = 1;
    while (s && n < cap - 256) {
        r = r * 1103515245u + 12345u;
        const char *p = parts[(r >> 16) % (sizeof(parts) / sizeof(parts[0]))];
        size_t l = strlen(p);
        memcpy(s + n, p, l);
        n += l;
    }
    *len = n;
    return s;
}

static void word_cache_gives_the_same_ids_as_uncached_encoding(void **state)
{
    struct fixture *fx = *state;
    size_t len;
    char *s = long_text(&len);
    assert_non_null(s);
    size_t cap = len + 16;
    llorch_token *a = malloc(cap * sizeof(*a)), *b = malloc(cap * sizeof(*b));
    assert_non_null(a);
    assert_non_null(b);
    for (int v = 0; v < V_COUNT; v++) {
        size_t na, nb;
        assert_int_equal(tokenizer_encode(fx->t[v], s, len, false, false, a, cap, &na, NULL), 0);
        assert_int_equal(tokenizer_encode_nocache(fx->t[v], s, len, false, false, b, cap, &nb,
                                                  NULL),
                         0);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof(*a));
    }
    free(a);
    free(b);
    free(s);
}

struct thread_arg {
    const struct tokenizer *t;
    const char *s;
    size_t len;
    llorch_token *ids;
    size_t n;
    int rc;
};

static void *encode_thread(void *p)
{
    struct thread_arg *a = p;
    for (int i = 0; i < 3 && a->rc == 0; i++)
        a->rc = tokenizer_encode(a->t, a->s, a->len, true, true, a->ids, a->len + 16, &a->n, NULL);
    return NULL;
}

static void concurrent_encodes_of_one_tokenizer_agree(void **state)
{
    struct fixture *fx = *state;
    size_t len;
    char *s = long_text(&len);
    assert_non_null(s);
    for (int v = V_LLAMA3; v <= V_QWEN2; v++) {
        struct thread_arg args[4];
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
            args[i] = (struct thread_arg){fx->t[v], s, len, malloc((len + 16) * sizeof(llorch_token)),
                                          0, 0};
            assert_non_null(args[i].ids);
            assert_int_equal(pthread_create(&th[i], NULL, encode_thread, &args[i]), 0);
        }
        for (int i = 0; i < 4; i++)
            pthread_join(th[i], NULL);
        for (int i = 0; i < 4; i++) {
            assert_int_equal(args[i].rc, 0);
            assert_int_equal(args[i].n, args[0].n);
            assert_memory_equal(args[i].ids, args[0].ids, args[0].n * sizeof(llorch_token));
        }
        for (int i = 0; i < 4; i++)
            free(args[i].ids);
    }
    free(s);
}

static void long_single_word_encodes_and_round_trips(void **state)
{
    struct fixture *fx = *state;
    size_t len = 256 * 1024;
    char *s = malloc(len);
    assert_non_null(s);
    uint32_t r = 7;
    for (size_t i = 0; i < len; i++) {
        r = r * 1103515245u + 12345u;
        s[i] = (char)('a' + (r >> 16) % 26);
    }
    for (int v = 0; v < V_COUNT; v++)
        assert_round_trip(fx->t[v], s, len);
    free(s);
}

/* A vocabulary written with the GGUF writer. */
static struct gguf_file *write_vocab(const char *model, const char *const *toks, size_t n,
                                     const char *const *merges, size_t nm, void **buf)
{
    struct gguf_writer *w = NULL;
    assert_int_equal(gguf_writer_new(&w, 32), 0);
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(gguf_writer_set_str(w, "tokenizer.ggml.model", model), 0);
    uint64_t lens[64];
    for (size_t i = 0; i < n; i++)
        lens[i] = strlen(toks[i]);
    assert_int_equal(gguf_writer_set_str_arr(w, "tokenizer.ggml.tokens", toks, lens, n), 0);
    if (merges) {
        uint64_t ml[64];
        for (size_t i = 0; i < nm; i++)
            ml[i] = strlen(merges[i]);
        assert_int_equal(gguf_writer_set_str_arr(w, "tokenizer.ggml.merges", merges, ml, nm), 0);
        assert_int_equal(gguf_writer_set_str(w, "tokenizer.ggml.pre", "gpt-2"), 0);
    }
    size_t len;
    assert_int_equal(gguf_writer_write_buffer(w, buf, &len), 0);
    gguf_writer_free(w);
    struct gguf_file *f = NULL;
    char err[128];
    assert_int_equal(gguf_open_buffer(&f, *buf, len, err, sizeof(err)), 0);
    return f;
}

static void unknown_tokenizer_model_and_duplicates_are_rejected(void **state)
{
    (void)state;
    void *buf = NULL;
    const char *toks[] = {"a", "b", "c"};
    struct gguf_file *f = write_vocab("bert", toks, 3, NULL, 0, &buf);
    struct tokenizer *t = NULL;
    char err[256] = "";
    assert_int_equal(tokenizer_new(&t, f, err, sizeof(err)), LLORCH_EUNSUPPORTED);
    assert_null(t);
    assert_non_null(strstr(err, "bert"));
    gguf_close(f);
    free(buf);
    const char *dup[] = {"a", "b", "a"};
    f = write_vocab("llama", dup, 3, NULL, 0, &buf);
    assert_int_equal(tokenizer_new(&t, f, err, sizeof(err)), LLORCH_EFORMAT);
    assert_non_null(strstr(err, "duplicate"));
    gguf_close(f);
    free(buf);
    f = write_vocab("gpt2", toks, 3, NULL, 0, &buf); /* BPE without merges */
    assert_int_equal(tokenizer_new(&t, f, err, sizeof(err)), LLORCH_EFORMAT);
    gguf_close(f);
    free(buf);
}

static void bpe_applies_merges_by_rank_not_by_position(void **state)
{
    (void)state;
    /* "abc": ranks make "bc" merge before "ab", so the result is a + bc. */
    const char *toks[] = {"a", "b", "c", "ab", "bc", "abc"};
    const char *merges[] = {"b c", "a b"};
    void *buf = NULL;
    struct gguf_file *f = write_vocab("gpt2", toks, 6, merges, 2, &buf);
    struct tokenizer *t = NULL;
    char err[256] = "";
    assert_int_equal(tokenizer_new(&t, f, err, sizeof(err)), 0);
    llorch_token ids[8];
    size_t n;
    assert_int_equal(tokenizer_encode(t, "abc", 3, false, false, ids, 8, &n, NULL), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 0);
    assert_int_equal(ids[1], 4);
    /* A character with no token is dropped, as llama.cpp drops it. */
    assert_int_equal(tokenizer_encode(t, "abd", 3, false, false, ids, 8, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 3);
    tokenizer_free(t);
    gguf_close(f);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(empty_text_gives_no_ids_and_bos_alone_with_add_bos),
        cmocka_unit_test(adds_bos_follows_add_bos_token),
        cmocka_unit_test(invalid_utf8_is_rejected_with_the_offset_of_the_bad_sequence),
        cmocka_unit_test(too_small_output_reports_the_full_count),
        cmocka_unit_test(control_tokens_are_matched_only_with_parse_special),
        cmocka_unit_test(user_defined_tokens_are_split_out_of_plain_text),
        cmocka_unit_test(unused_padding_tokens_are_never_produced),
        cmocka_unit_test(eog_set_is_derived_as_llama_cpp_does),
        cmocka_unit_test(digit_runs_split_by_the_pre_tokenizer),
        cmocka_unit_test(whitespace_runs_and_lone_spaces_round_trip),
        cmocka_unit_test(emoji_sequences_round_trip),
        cmocka_unit_test(decode_cleans_spaces_only_where_the_vocabulary_says),
        cmocka_unit_test(spm_decode_drops_the_leading_space_of_a_fresh_list_only),
        cmocka_unit_test(token_bytes_render_control_tokens_only_when_asked),
        cmocka_unit_test(word_cache_gives_the_same_ids_as_uncached_encoding),
        cmocka_unit_test(concurrent_encodes_of_one_tokenizer_agree),
        cmocka_unit_test(long_single_word_encodes_and_round_trips),
        cmocka_unit_test(unknown_tokenizer_model_and_duplicates_are_rejected),
        cmocka_unit_test(bpe_applies_merges_by_rank_not_by_position),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
