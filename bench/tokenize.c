/* Tokenizer encode speed on one core: English-like prose generated
 * deterministically from a word list, for the SPM (Llama 2), GPT-2, Llama 3
 * and Qwen 2 vocabularies, plus the time for a 1 MB single-word input (no
 * quadratic merge loops). Prints the machine, figures and ratios (to the
 * 20 MB/s target and to GPT-2's speed); never asserts. "no-cache" is the
 * same encode without the per-call word cache (the generated prose repeats
 * a small word list, so the cached figure is the optimistic one).
 *
 * usage: tokenize [--shared DIR] [--vocab PATH]... [--mb N] [--reps N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gguf.h"
#include "tokenizer.h"

static const char *const words[] = {
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "I", "this", "are", "or", "his", "from", "at", "which", "but",
    "have", "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her",
    "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no", "time",
    "people", "river", "mountain", "government", "language", "history", "between", "through",
    "because", "important", "different", "following", "something", "development", "children",
    "understand", "experience", "information", "probably", "especially", "themselves",
    "computer", "morning", "window", "quickly", "beautiful", "yesterday", "tomorrow",
    "thousand", "question", "answer", "village", "ocean", "forest", "library", "student",
    "teacher", "doctor", "kitchen", "garden", "weather", "machine", "network", "science",
    "don't", "it's", "they're", "we've", "I'm", "she'll", "1984", "42", "3.14", "2024",
};

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* Sentences of 5..24 words, capitalised, with commas, full stops, question
 * marks and a paragraph break every few sentences. */
static char *make_prose(size_t bytes, size_t *len)
{
    char *p = malloc(bytes + 64);
    if (!p)
        return NULL;
    uint64_t s = 12345;
    size_t n = 0;
    while (n < bytes) {
        size_t nw = 5 + lcg(&s) % 20;
        for (size_t i = 0; i < nw && n < bytes; i++) {
            const char *w = words[lcg(&s) % (sizeof(words) / sizeof(words[0]))];
            size_t wl = strlen(w);
            if (n + wl + 3 > bytes + 60)
                break;
            memcpy(p + n, w, wl);
            if (i == 0 && p[n] >= 'a' && p[n] <= 'z')
                p[n] = (char)(p[n] - 'a' + 'A');
            n += wl;
            if (i + 1 < nw) {
                if (lcg(&s) % 10 == 0)
                    p[n++] = ',';
                p[n++] = ' ';
            }
        }
        p[n++] = lcg(&s) % 8 == 0 ? '?' : '.';
        p[n++] = lcg(&s) % 5 == 0 ? '\n' : ' ';
    }
    *len = n;
    return p;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void print_cpu(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    if (f) {
        while (fgets(line, sizeof(line), f)) {
            if (!strncmp(line, "model name", 10)) {
                char *c = strchr(line, ':');
                printf("machine: %s", c ? c + 2 : line);
                break;
            }
        }
        fclose(f);
    }
}

struct result {
    char name[128];
    double mbps, mbps_nocache;
    double word_s;
    size_t tokens;
};

static int bench_one(const char *path, const char *prose, size_t plen, const char *word,
                     size_t wlen, int reps, struct result *r)
{
    char err[256] = "";
    struct gguf_file *f = NULL;
    struct tokenizer *t = NULL;
    if (gguf_open(&f, path, err, sizeof(err)) || tokenizer_new(&t, f, err, sizeof(err))) {
        fprintf(stderr, "%s: %s\n", path, err);
        gguf_close(f);
        return -1;
    }
    size_t cap = plen + 16;
    llorch_token *ids = malloc(cap * sizeof(*ids));
    if (!ids)
        return -1;
    double best = 1e30;
    size_t n = 0;
    for (int i = 0; i < reps; i++) {
        double t0 = now();
        int rc = tokenizer_encode(t, prose, plen, false, false, ids, cap, &n, NULL);
        double dt = now() - t0;
        if (rc)
            fprintf(stderr, "%s: encode failed (%d)\n", path, rc);
        if (dt < best)
            best = dt;
    }
    double best_nc = 1e30;
    for (int i = 0; i < reps; i++) {
        double t0 = now();
        tokenizer_encode_nocache(t, prose, plen, false, false, ids, cap, &n, NULL);
        double dt = now() - t0;
        if (dt < best_nc)
            best_nc = dt;
    }
    r->mbps_nocache = (double)plen / best_nc / 1e6;
    size_t nw = 0;
    r->word_s = 1e30;
    for (int i = 0; i < 3; i++) {
        double t0 = now();
        tokenizer_encode(t, word, wlen, false, false, ids, cap, &nw, NULL);
        double dt = now() - t0;
        if (dt < r->word_s)
            r->word_s = dt;
    }
    r->mbps = (double)plen / best / 1e6;
    r->tokens = n;
    const char *slash = strrchr(path, '/');
    snprintf(r->name, sizeof(r->name), "%s (%s, pre %s, %u tokens)", slash ? slash + 1 : path,
             tokenizer_kind(t) == TOKENIZER_SPM ? "SPM" : "BPE", tokenizer_pre_name(t),
             tokenizer_n_vocab(t));
    free(ids);
    tokenizer_free(t);
    gguf_close(f);
    return 0;
}

/* The whole file, or NULL (with a message). */
static char *read_text(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        perror(path);
        return NULL;
    }
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 65536 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(fp);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0)
            break;
    }
    fclose(fp);
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    const char *shared = getenv("LLORCH_SHARED");
    if (!shared || !*shared)
        shared = "../shared";
    const char *vocabs[16];
    int nv = 0, reps = 5;
    double mb = 2.0;
    const char *text_file = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--shared") && i + 1 < argc)
            shared = argv[++i];
        else if (!strcmp(argv[i], "--vocab") && i + 1 < argc && nv < 16)
            vocabs[nv++] = argv[++i];
        else if (!strcmp(argv[i], "--mb") && i + 1 < argc)
            mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--text-file") && i + 1 < argc)
            text_file = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--shared DIR] [--vocab PATH]... [--mb N] [--reps N] [--text-file F]\n",
                    argv[0]);
            return 2;
        }
    }
    static char paths[4][4096];
    if (nv == 0) {
        const char *rel[4] = {"models/llama-tiny-f32.gguf", "models/gpt2-tiny-f32.gguf",
                              "vocab/llama3-vocab.gguf", "vocab/qwen2-vocab.gguf"};
        for (int i = 0; i < 4; i++) {
            snprintf(paths[i], sizeof(paths[i]), "%s/%s", shared, rel[i]);
            vocabs[nv++] = paths[i];
        }
    }
    size_t plen = 0;
    /* Generated prose repeats a small word list (kind to the word cache);
     * --text-file measures real text instead. */
    char *prose = text_file ? read_text(text_file, &plen) : make_prose((size_t)(mb * 1e6), &plen);
    size_t wlen = 1000000;
    char *word = malloc(wlen);
    if (!prose || !word)
        return 1;
    uint64_t s = 7;
    for (size_t i = 0; i < wlen; i++)
        word[i] = (char)('a' + lcg(&s) % 26);

    print_cpu();
    printf("input: %.2f MB of %s, best of %d runs, one thread;\n"
           "       1 MB single word of random a-z, best of 3\n",
           (double)plen / 1e6, text_file ? text_file : "generated English prose", reps);
    printf("%-62s %8s %7s %9s %10s %9s %11s\n", "vocabulary", "MB/s", "vs 20", "vs GPT-2",
           "no-cache", "bytes/tok", "1MB word s");
    struct result res[16];
    double gpt2 = 0;
    for (int i = 0; i < nv; i++) {
        if (bench_one(vocabs[i], prose, plen, word, wlen, reps, &res[i])) {
            res[i].mbps = 0;
            continue;
        }
        if (strstr(res[i].name, "pre gpt-2"))
            gpt2 = res[i].mbps;
    }
    for (int i = 0; i < nv; i++) {
        if (res[i].mbps == 0)
            continue;
        char vs[32] = "-";
        if (gpt2 > 0)
            snprintf(vs, sizeof(vs), "%.2fx", res[i].mbps / gpt2);
        printf("%-62s %8.1f %6.2fx %9s %10.1f %9.2f %11.3f\n", res[i].name, res[i].mbps,
               res[i].mbps / 20.0, vs, res[i].mbps_nocache, (double)plen / (double)res[i].tokens,
               res[i].word_s);
    }
    free(prose);
    free(word);
    return 0;
}
