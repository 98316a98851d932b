/* The tokenizers of every shared vocabulary (Llama 2 SPM, GPT-2, Llama 3
 * and Qwen 2 byte-level BPE), loaded once: any bytes are encoded (with and
 * without BOS and special-token parsing) or refused with an error, every id
 * is in the vocabulary, and the ids decode (whole and one piece at a time)
 * into a bounded buffer. The first input byte picks the vocabulary and the
 * flags. */
#include <stdint.h>
#include <string.h>

#include "fuzz_common.h"
#include "gguf.h"
#include "llorch/error.h"
#include "tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const vocab_paths[] = {
    "models/llama-tiny-f32.gguf", "models/gpt2-tiny-f32.gguf", "vocab/llama3-vocab.gguf",
    "vocab/qwen2-vocab.gguf"};
#define N_VOCABS (sizeof vocab_paths / sizeof vocab_paths[0])
static struct gguf_file *files[N_VOCABS];
static struct tokenizer *toks[N_VOCABS];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    for (size_t i = 0; i < N_VOCABS; i++) {
        char path[4096], err[256];
        snprintf(path, sizeof path, "%s/%s", fuzz_shared_dir(), vocab_paths[i]);
        if (gguf_open(&files[i], path, err, sizeof err) ||
            tokenizer_new(&toks[i], files[i], err, sizeof err)) {
            fprintf(stderr, "%s: %s\n", path, err);
            abort();
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > 4096)
        return 0;
    const struct tokenizer *t = toks[data[0] % N_VOCABS];
    bool add_bos = data[0] & 4, special = data[0] & 8, nocache = data[0] & 16;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    static llorch_token ids[4 * 4096 + 8];
    size_t n = 0;
    size_t bad = SIZE_MAX;
    int rc = nocache ? tokenizer_encode_nocache(t, text, len, add_bos, special, ids,
                                                sizeof ids / sizeof ids[0], &n, &bad)
                     : tokenizer_encode(t, text, len, add_bos, special, ids,
                                        sizeof ids / sizeof ids[0], &n, &bad);
    if (rc) {
        FUZZ_CHECK(rc == LLORCH_EUTF8 || rc == LLORCH_ETOOBIG);
        if (rc == LLORCH_EUTF8)
            FUZZ_CHECK(bad < len && !tokenizer_utf8_valid(text, len, NULL));
        return 0;
    }
    FUZZ_CHECK(tokenizer_utf8_valid(text, len, NULL));
    FUZZ_CHECK(n <= sizeof ids / sizeof ids[0]);
    uint32_t n_vocab = tokenizer_n_vocab(t);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && (uint32_t)ids[i] < n_vocab);
    static char out[64 * 4096];
    size_t out_len = 0;
    rc = tokenizer_decode(t, ids, n, out, sizeof out, &out_len);
    FUZZ_CHECK(rc == 0 || rc == LLORCH_ETOOBIG);
    if (rc == 0)
        FUZZ_CHECK(out_len <= sizeof out);
    /* Byte-level BPE without BOS, specials or space cleaning reads back as
     * the same bytes. */
    if (rc == 0 && tokenizer_kind(t) == TOKENIZER_BPE && !add_bos && !special &&
        !tokenizer_clean_spaces(t))
        FUZZ_CHECK(out_len == len && memcmp(out, text, len) == 0);
    for (size_t i = 0; i < n; i++) {
        char piece[512];
        int r = tokenizer_token_bytes(t, ids[i], special, piece, sizeof piece);
        FUZZ_CHECK(r >= 0 && (size_t)r <= sizeof piece);
    }
    return 0;
}
