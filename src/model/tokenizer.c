/* Tokenizers read from GGUF metadata, behaving as llama.cpp's llama-vocab.cpp
 * does for the same file: SentencePiece-style ("llama": score-driven bigram
 * merges over UTF-8 characters, "▁" for spaces, <0xNN> byte fallback) and
 * byte-level BPE ("gpt2": pre-split by the tokenizer.ggml.pre regexes with
 * PCRE2, GPT-2 byte-to-unicode mapping, merge ranks). Special tokens are split
 * out of the text first (llama.cpp's tokenizer_st_partition). Everything is
 * built once in tokenizer_new and only read afterwards, so one tokenizer may
 * be used from several threads at once; each call allocates its own scratch.
 *
 * Vocabulary keys read (GGUF metadata): tokenizer.ggml.model, .pre, .tokens
 * (string array), .scores (f32 or i32 array), .token_type (i32 array),
 * .merges (string array, "left right"), the special ids (*_token_id),
 * .add_bos_token, .add_eos_token, .add_space_prefix, general.name. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "tokenizer.h"

#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_keys.h"
#include "util.h"

/* GGUF token_type values (llama.cpp's llama_token_type). */
enum {
    TT_UNDEFINED = 0,
    TT_NORMAL = 1,
    TT_UNKNOWN = 2,
    TT_CONTROL = 3,
    TT_USER_DEFINED = 4,
    TT_UNUSED = 5,
    TT_BYTE = 6,
};

#define TOK_MAX_REGEX 4

/* Pre-tokenizer families, by the regex list llama.cpp uses for them. */
enum pre_kind {
    PRE_DEFAULT,
    PRE_GPT2,
    PRE_LLAMA3,
    PRE_QWEN2,
    PRE_STARCODER,
    PRE_FALCON,
    PRE_PORO,
};

/* Unicode White_Space, the set llama.cpp's unicode tables call whitespace.
 * Written out because PCRE2's \s differs (it adds U+180E). */
#define WS "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

/* GPT-2's split regex, with the trailing \s+ llama.cpp's own splitter has. */
#define RE_GPT2                                                                \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS      \
    "]+(?![^" WS "])|[" WS "]+"
/* Llama 3 / Qwen 2: case-insensitive contractions, a non-letter may lead a
 * letter run, newline runs kept with the whitespace before them. */
#define RE_LLAMA3_HEAD                                                         \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
#define RE_LLAMA3_TAIL                                                         \
    "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+"
#define RE_LLAMA3 RE_LLAMA3_HEAD "\\p{N}{1,3}" RE_LLAMA3_TAIL
#define RE_QWEN2 RE_LLAMA3_HEAD "\\p{N}" RE_LLAMA3_TAIL

struct pre_def {
    const char *name;
    enum pre_kind kind;
    bool clean_spaces;
    bool ignore_merges;
    bool add_bos;   /* llama.cpp's default before add_bos_token is read */
    bool bos_null;  /* chatglm: no default BOS */
};

/* tokenizer.ggml.pre values llama.cpp maps onto the families above, with the
 * flags it sets for each (llama_vocab::impl::load). */
static const struct pre_def pre_defs[] = {
    {"default", PRE_DEFAULT, true, false, false, false},
    {"llama3", PRE_LLAMA3, true, true, true, false},
    {"llama-v3", PRE_LLAMA3, true, true, true, false},
    {"llama-bpe", PRE_LLAMA3, true, true, true, false},
    {"falcon3", PRE_LLAMA3, true, true, true, false},
    {"falcon-h1", PRE_LLAMA3, true, true, true, false},
    {"pixtral", PRE_LLAMA3, true, true, true, false},
    {"midm-2.0", PRE_LLAMA3, true, true, true, false},
    {"lfm2", PRE_LLAMA3, true, true, true, false},
    {"dbrx", PRE_LLAMA3, true, false, false, false},
    {"smaug-bpe", PRE_LLAMA3, true, false, false, false},
    {"glm4", PRE_LLAMA3, true, false, false, true},
    {"chatglm-bpe", PRE_LLAMA3, true, false, false, true},
    {"gpt-2", PRE_GPT2, true, false, false, false},
    {"phi-2", PRE_GPT2, true, false, false, false},
    {"jina-es", PRE_GPT2, true, false, false, false},
    {"jina-de", PRE_GPT2, true, false, false, false},
    {"gigachat", PRE_GPT2, true, false, false, false},
    {"jina-v2-es", PRE_GPT2, true, false, false, false},
    {"jina-v2-de", PRE_GPT2, true, false, false, false},
    {"a.x-4.0", PRE_GPT2, true, false, false, false},
    {"mellum", PRE_GPT2, true, false, false, false},
    {"modern-bert", PRE_GPT2, true, false, false, false},
    {"mpt", PRE_GPT2, true, false, false, false},
    {"olmo", PRE_GPT2, true, false, false, false},
    {"jais", PRE_GPT2, true, false, false, false},
    {"exaone4", PRE_GPT2, true, false, false, false},
    {"trillion", PRE_GPT2, false, false, false, false},
    {"granite-docling", PRE_GPT2, false, false, false, false},
    {"qwen2", PRE_QWEN2, false, false, false, false},
    {"deepseek-r1-qwen", PRE_QWEN2, false, false, false, false},
    {"kormo", PRE_QWEN2, false, false, false, false},
    {"f2llmv2", PRE_QWEN2, false, false, false, false},
    {"hunyuan", PRE_QWEN2, false, false, false, false},
    {"stablelm2", PRE_QWEN2, true, false, false, false},
    {"megrez", PRE_QWEN2, true, false, false, false},
    {"starcoder", PRE_STARCODER, true, false, false, false},
    {"refact", PRE_STARCODER, true, false, false, false},
    {"codeshell", PRE_STARCODER, true, false, false, false},
    {"exaone", PRE_STARCODER, true, false, false, false},
    {"minerva-7b", PRE_STARCODER, true, false, false, false},
    {"mellum2", PRE_STARCODER, true, false, false, false},
    {"command-r", PRE_STARCODER, false, false, false, false},
    {"smollm", PRE_STARCODER, false, false, false, false},
    {"falcon", PRE_FALCON, true, false, false, false},
    {"poro-chat", PRE_PORO, false, false, false, false},
    {"bloom", PRE_PORO, true, false, false, false},
    {"gpt3-finnish", PRE_PORO, true, false, false, false},
};

/* The regexes of each family, applied one after the other: each splits every
 * piece the previous one produced into matches and the gaps between them. */
static const char *const pre_regexes[][TOK_MAX_REGEX] = {
    [PRE_DEFAULT] = {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"},
    [PRE_GPT2] = {RE_GPT2, NULL, NULL, NULL},
    [PRE_LLAMA3] = {RE_LLAMA3, NULL, NULL, NULL},
    [PRE_QWEN2] = {RE_QWEN2, NULL, NULL, NULL},
    [PRE_STARCODER] = {"\\p{N}", RE_GPT2, NULL, NULL},
    [PRE_FALCON] = {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]", NULL},
    [PRE_PORO] = {" ?[^(" WS "|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+", NULL, NULL, NULL},
};

/* ---------------------------------------------------------------------- */
/* Hashed string table: token texts (ids < n_vocab) plus strings that appear
 * only as a half of a BPE merge (ids >= n_vocab), all in one owned blob. */

struct strtab {
    char *blob;
    size_t blob_len, blob_cap;
    uint32_t *off, *len;
    uint32_t n, cap;
    int32_t *slot;      /* id, or -1 for an empty slot */
    uint32_t *slot_hash;
    uint32_t mask;
    uint32_t max_len;
};

/* The tail is read with fixed-size loads (overlapping ones where it is
 * shorter than the load): a variable-length memcpy into the word compiles to
 * a byte loop whose stores the next load has to wait for. Only equality of
 * hashes matters (lookups), never their values. */
static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull);
    const char *end = s + n;
    bool whole = n >= 8;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    if (n && whole) {
        memcpy(&v, end - 8, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, end - 4, 4);
        v = ((uint64_t)b << 32) | a;
    } else if (n) {
        v = (uint64_t)(unsigned char)s[0] | (uint64_t)(unsigned char)s[n / 2] << 8 |
            (uint64_t)(unsigned char)s[n - 1] << 16;
    }
    h = (h ^ v) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static int32_t strtab_find_h(const struct strtab *st, const char *s, size_t n, uint64_t h)
{
    if (n > st->max_len)
        return -1;
    uint32_t h32 = (uint32_t)h;
    for (uint32_t i = h32 & st->mask;; i = (i + 1) & st->mask) {
        int32_t id = st->slot[i];
        if (id < 0)
            return -1;
        if (st->slot_hash[i] == h32 && st->len[id] == n && !memcmp(st->blob + st->off[id], s, n))
            return id;
    }
}

static int32_t strtab_find(const struct strtab *st, const char *s, size_t n)
{
    if (n > st->max_len)
        return -1;
    return strtab_find_h(st, s, n, hash_bytes(s, n));
}

static int strtab_rehash(struct strtab *st, uint32_t nslots)
{
    int32_t *slot = malloc((size_t)nslots * sizeof(*slot));
    uint32_t *sh = malloc((size_t)nslots * sizeof(*sh));
    if (!slot || !sh) {
        free(slot);
        free(sh);
        return LLORCH_ENOMEM;
    }
    memset(slot, 0xff, (size_t)nslots * sizeof(*slot));
    uint32_t mask = nslots - 1;
    for (uint32_t id = 0; id < st->n; id++) {
        uint32_t h32 = (uint32_t)hash_bytes(st->blob + st->off[id], st->len[id]);
        uint32_t i = h32 & mask;
        while (slot[i] >= 0)
            i = (i + 1) & mask;
        slot[i] = (int32_t)id;
        sh[i] = h32;
    }
    free(st->slot);
    free(st->slot_hash);
    st->slot = slot;
    st->slot_hash = sh;
    st->mask = mask;
    return 0;
}

/* Appends a string (no duplicate check); the caller rehashes. */
static int strtab_push(struct strtab *st, const char *s, size_t n)
{
    if (n > UINT32_MAX || st->n >= (uint32_t)INT32_MAX)
        return LLORCH_ERANGE;
    if (st->n == st->cap) {
        uint32_t nc = st->cap ? st->cap * 2 : 1024;
        uint32_t *o = realloc(st->off, (size_t)nc * sizeof(*o));
        if (!o)
            return LLORCH_ENOMEM;
        st->off = o;
        uint32_t *l = realloc(st->len, (size_t)nc * sizeof(*l));
        if (!l)
            return LLORCH_ENOMEM;
        st->len = l;
        st->cap = nc;
    }
    if (st->blob_len + n > st->blob_cap) {
        size_t nc = st->blob_cap ? st->blob_cap : 65536;
        while (nc < st->blob_len + n)
            nc *= 2;
        if (nc > UINT32_MAX)
            return LLORCH_ERANGE;
        char *b = realloc(st->blob, nc);
        if (!b)
            return LLORCH_ENOMEM;
        st->blob = b;
        st->blob_cap = nc;
    }
    memcpy(st->blob + st->blob_len, s, n);
    st->off[st->n] = (uint32_t)st->blob_len;
    st->len[st->n] = (uint32_t)n;
    st->blob_len += n;
    st->n++;
    if (n > st->max_len)
        st->max_len = (uint32_t)n;
    return 0;
}

/* Adds a string if absent and returns its id (>= 0) or a negative code. */
static int32_t strtab_intern(struct strtab *st, const char *s, size_t n)
{
    uint64_t h = hash_bytes(s, n);
    if (st->slot) {
        int32_t id = strtab_find_h(st, s, n, h);
        if (id >= 0)
            return id;
    }
    int rc = strtab_push(st, s, n);
    if (rc)
        return rc;
    if ((uint64_t)st->n * 2 > (uint64_t)st->mask + 1 || !st->slot) {
        uint32_t ns = st->slot ? (st->mask + 1) * 2 : 1024;
        while ((uint64_t)st->n * 2 > ns)
            ns *= 2;
        rc = strtab_rehash(st, ns);
        return rc ? rc : (int32_t)(st->n - 1);
    }
    uint32_t h32 = (uint32_t)h, i = h32 & st->mask;
    while (st->slot[i] >= 0)
        i = (i + 1) & st->mask;
    st->slot[i] = (int32_t)(st->n - 1);
    st->slot_hash[i] = h32;
    return (int32_t)(st->n - 1);
}

static void strtab_free(struct strtab *st)
{
    free(st->blob);
    free(st->off);
    free(st->len);
    free(st->slot);
    free(st->slot_hash);
}

/* ---------------------------------------------------------------------- */
/* BPE merge ranks: (left string id, right string id) -> rank and the id of
 * the concatenation (-1 when that string is in neither vocab nor merges). */

struct merge_slot {
    uint64_t key; /* left << 32 | right; UINT64_MAX when empty */
    int32_t rank;
    int32_t merged;
};

static inline uint32_t merge_hash(uint64_t key)
{
    key *= 0x9E3779B97F4A7C15ull;
    return (uint32_t)(key >> 32) ^ (uint32_t)key;
}

/* ---------------------------------------------------------------------- */

struct tokenizer {
    enum tokenizer_kind kind;
    enum pre_kind pre;
    char pre_name[64];
    uint32_t n_vocab;
    struct strtab st;
    float *score;
    uint16_t *attr;

    struct merge_slot *merges;
    uint32_t merge_mask;

    /* GPT-2 byte-to-unicode mapping and its inverse. */
    uint8_t byte_enc[256][2];
    uint8_t byte_enc_len[256];
    int32_t byte_sym[256];  /* string id of each mapped byte, -1 if none */
    int16_t cp_to_byte[0x144];
    int32_t byte_tok[256];  /* SPM byte fallback token, -1 if none */

    pcre2_code *re[TOK_MAX_REGEX];
    bool re_jit[TOK_MAX_REGEX];
    uint32_t n_re;

    bool clean_spaces, ignore_merges, add_space_prefix, add_bos, add_eos;
    bool spm_split; /* no token has "▁" after another character */
    llorch_token bos, eos, eot, eom, unk, sep, pad, mask;
    llorch_token fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;

    llorch_token *special; /* CONTROL/USER_DEFINED/UNKNOWN, longest text first */
    uint32_t n_special;
    llorch_token *eog;
    uint32_t n_eog;

    /* token_to_piece(special = true) of every token, as llama.cpp caches it. */
    char *pieces;
    uint32_t *piece_off, *piece_len;
    size_t max_piece;
};

/* ---------------------------------------------------------------------- */
/* UTF-8 */

static inline size_t utf8_len_lead(unsigned char c)
{
    /* llama.cpp's unicode_len_utf8: by the high nibble of the lead byte. */
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

LLORCH_API bool tokenizer_utf8_valid(const char *s, size_t len, size_t *bad_offset)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            goto bad;
        }
        if (len - i < n)
            goto bad;
        if (p[i + 1] < lo || p[i + 1] > hi)
            goto bad;
        for (size_t k = 2; k < n; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                goto bad;
        i += n;
        continue;
    bad:
        if (bad_offset)
            *bad_offset = i;
        return false;
    }
    return true;
}

/* llama.cpp's lenient decoder (unicode_cpt_from_utf8 + the 0xFFFD fallback of
 * unicode_cpts_from_utf8), used on vocabulary strings only. */
static uint32_t utf8_next_lenient(const unsigned char *s, size_t n, size_t *i)
{
    size_t o = *i;
    unsigned char c = s[o];
    if (!(c & 0x80)) {
        *i = o + 1;
        return c;
    }
    if (!(c & 0x40))
        goto bad;
    if (!(c & 0x20)) {
        if (o + 1 >= n || (s[o + 1] & 0xC0) != 0x80)
            goto bad;
        *i = o + 2;
        return ((uint32_t)(c & 0x1F) << 6) | (s[o + 1] & 0x3F);
    }
    if (!(c & 0x10)) {
        if (o + 2 >= n || (s[o + 1] & 0xC0) != 0x80 || (s[o + 2] & 0xC0) != 0x80)
            goto bad;
        *i = o + 3;
        return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[o + 1] & 0x3F) << 6) |
               (s[o + 2] & 0x3F);
    }
    if (!(c & 0x08)) {
        if (o + 3 >= n || (s[o + 1] & 0xC0) != 0x80 || (s[o + 2] & 0xC0) != 0x80 ||
            (s[o + 3] & 0xC0) != 0x80)
            goto bad;
        *i = o + 4;
        return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[o + 1] & 0x3F) << 12) |
               ((uint32_t)(s[o + 2] & 0x3F) << 6) | (s[o + 3] & 0x3F);
    }
bad:
    *i = o + 1;
    return 0xFFFD;
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---------------------------------------------------------------------- */
/* Min-heap of candidate merges. The key orders them as llama.cpp's priority
 * queues do: BPE by rank then leftmost; SPM by highest score then leftmost. */

struct cand {
    uint64_t key;
    int32_t right;
    uint32_t size;
};

struct heap {
    struct cand *v;
    size_t n, cap;
};

/* 4-ary: half the levels of a binary heap and the four children of a node
 * share a cache line or two, which matters for the 1M-entry queues of long
 * words. */
static int heap_push(struct heap *h, struct cand c)
{
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 256;
        struct cand *v = realloc(h->v, nc * sizeof(*v));
        if (!v)
            return LLORCH_ENOMEM;
        h->v = v;
        h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 4;
        if (h->v[p].key <= c.key)
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = c;
    return 0;
}

static struct cand heap_pop(struct heap *h)
{
    struct cand top = h->v[0];
    struct cand last = h->v[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t c0 = 4 * i + 1;
        if (c0 >= n)
            break;
        size_t m = c0, ce = LLORCH_MIN(c0 + 4, n);
        for (size_t c = c0 + 1; c < ce; c++)
            if (h->v[c].key < h->v[m].key)
                m = c;
        if (h->v[m].key >= last.key)
            break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (n)
        h->v[i] = last;
    return top;
}

/* Larger score -> smaller key, so the min-heap pops the best score first. */
static inline uint32_t score_key(float s)
{
    if (s == 0.0f)
        s = 0.0f; /* -0 and +0 compare equal in llama.cpp */
    uint32_t u;
    memcpy(&u, &s, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ~u;
}

/* ---------------------------------------------------------------------- */
/* Per-call scratch and output. */

struct sym {
    int32_t id; /* BPE: string id, -1 if unknown; SPM: token id once merged */
    uint32_t off, n;
    int32_t prev, next;
    /* Short words only (SCAN_MAX): the queue key of the merge of this symbol
     * with the next one (UINT64_MAX: none) and the id that merge gives. */
    int32_t pair_id;
    uint64_t pair_key;
};

/* Words of at most this many symbols merge by scanning their symbols for the
 * best pair instead of through the heap. The queue only ever pops the least
 * key among the pairs adjacent right now (a stale entry fails the size and
 * adjacency checks; one that passes is the same pair), and a symbol keeps its
 * index when it absorbs its right neighbour, so both pick the same merges in
 * the same order; the scan skips the heap and looks each pair up once. */
#define SCAN_MAX 48

struct span {
    size_t off, len;
    llorch_token tok; /* -1 for text */
};

/* Per-call cache of short words: the ids of a pre-token (BPE) or of a
 * stretch between "▁" runs (SPM) depend only on its bytes, and prose repeats
 * words. Only used for long inputs, where it pays for itself. */
#define WC_SLOTS 4096
#define WC_KEY 24
#define WC_IDS 6
#define WC_MIN_INPUT 4096

struct wc_entry {
    uint32_t h;
    uint8_t klen, nids;
    char key[WC_KEY];
    llorch_token ids[WC_IDS];
};

struct enc {
    const struct tokenizer *t;
    struct wc_entry *wc;
    llorch_token *out;
    size_t cap, n;
    struct sym *sym;
    size_t sym_cap;
    struct heap heap;
    char *buf;
    size_t buf_cap;
    struct span *w, *w2;
    size_t w_n, w_cap, w2_n, w2_cap;
    pcre2_match_data *md;
};

static inline void emit(struct enc *e, llorch_token id)
{
    if (e->n < e->cap)
        e->out[e->n] = id;
    e->n++;
}

/* Emits the cached ids of w and returns true, or returns false with *slot
 * set for wc_store. */
static bool wc_lookup(struct enc *e, const char *w, size_t len, struct wc_entry **slot)
{
    *slot = NULL;
    if (!e->wc || len > WC_KEY || len == 0)
        return false;
    uint32_t h = (uint32_t)hash_bytes(w, len);
    struct wc_entry *we = &e->wc[h & (WC_SLOTS - 1)];
    if (we->klen == len && we->h == h && !memcmp(we->key, w, len)) {
        for (uint32_t i = 0; i < we->nids; i++)
            emit(e, we->ids[i]);
        return true;
    }
    we->klen = 0; /* invalid until stored */
    we->h = h;
    *slot = we;
    return false;
}

static void wc_store(struct enc *e, struct wc_entry *we, const char *w, size_t len, size_t n0)
{
    size_t k = e->n - n0;
    if (!we || k > WC_IDS || e->n > e->cap)
        return;
    memcpy(we->key, w, len);
    memcpy(we->ids, e->out + n0, k * sizeof(llorch_token));
    we->nids = (uint8_t)k;
    we->klen = (uint8_t)len;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem)
            return LLORCH_ENOMEM;
        nc *= 2;
    }
    void *q = realloc(*p, nc * elem);
    if (!q)
        return LLORCH_ENOMEM;
    *p = q;
    *cap = nc;
    return 0;
}

static int span_push(struct span **v, size_t *n, size_t *cap, size_t off, size_t len,
                     llorch_token tok)
{
    int rc = grow((void **)v, cap, *n + 1, sizeof(**v));
    if (rc)
        return rc;
    (*v)[(*n)++] = (struct span){off, len, tok};
    return 0;
}

/* ---------------------------------------------------------------------- */
/* SPM: llama.cpp's llm_tokenizer_spm_session. */

static int spm_try_bigram(struct enc *e, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return 0;
    const struct tokenizer *t = e->t;
    size_t n = (size_t)e->sym[l].n + e->sym[r].n;
    int32_t id = strtab_find(&t->st, e->buf + e->sym[l].off, n);
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return 0;
    struct cand c = {((uint64_t)score_key(t->score[id]) << 32) | (uint32_t)l, r, (uint32_t)n};
    return heap_push(&e->heap, c);
}

/* Sets the pair key and id of sym[l] and the symbol after it (SPM). */
static void spm_pair(struct enc *e, int32_t l)
{
    const struct tokenizer *t = e->t;
    struct sym *s = &e->sym[l];
    s->pair_key = UINT64_MAX;
    if (s->next < 0)
        return;
    int32_t id = strtab_find(&t->st, e->buf + s->off, (size_t)s->n + e->sym[s->next].n);
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return;
    s->pair_key = ((uint64_t)score_key(t->score[id]) << 32) | (uint32_t)l;
    s->pair_id = id;
}

/* The symbol (from the first, index 0) whose pair with the next has the
 * least key, or -1 when no pair merges. */
static int32_t scan_best(const struct sym *sym)
{
    uint64_t best = UINT64_MAX;
    int32_t bi = -1;
    for (int32_t i = 0; i != -1; i = sym[i].next)
        if (sym[i].pair_key < best) {
            best = sym[i].pair_key;
            bi = i;
        }
    return bi;
}

/* Merges sym[l] with the next symbol into id. */
static void sym_absorb_next(struct sym *sym, int32_t l, int32_t id)
{
    struct sym *ls = &sym[l], *rs = &sym[ls->next];
    ls->id = id;
    ls->n += rs->n;
    rs->n = 0;
    ls->next = rs->next;
    if (rs->next >= 0)
        sym[rs->next].prev = l;
}

static int spm_segment_merge(struct enc *e, size_t b0, size_t b1);

/* One independent stretch buf[b0, b1) of the escaped text, through the word
 * cache. */
static int spm_segment(struct enc *e, size_t b0, size_t b1)
{
    struct wc_entry *we;
    if (wc_lookup(e, e->buf + b0, b1 - b0, &we))
        return 0;
    size_t n0 = e->n;
    int rc = spm_segment_merge(e, b0, b1);
    if (!rc)
        wc_store(e, we, e->buf + b0, b1 - b0, n0);
    return rc;
}

/* llama.cpp's SPM merge loop over buf[b0, b1). */
static int spm_segment_merge(struct enc *e, size_t b0, size_t b1)
{
    const struct tokenizer *t = e->t;
    int rc;
    int32_t ns = 0;
    for (size_t o = b0; o < b1;) {
        size_t n = LLORCH_MIN(utf8_len_lead((unsigned char)e->buf[o]), b1 - o);
        e->sym[ns] = (struct sym){-1, (uint32_t)o, (uint32_t)n, ns - 1, o + n == b1 ? -1 : ns + 1,
                                  -1, UINT64_MAX};
        o += n;
        ns++;
    }
    if (ns == 0)
        return 0;
    e->heap.n = 0;
    if (ns <= SCAN_MAX) {
        for (int32_t i = 0; i < ns; i++)
            spm_pair(e, i);
        for (int32_t l; (l = scan_best(e->sym)) >= 0;) {
            sym_absorb_next(e->sym, l, e->sym[l].pair_id);
            if (e->sym[l].prev >= 0)
                spm_pair(e, e->sym[l].prev);
            spm_pair(e, l);
        }
    } else {
        for (int32_t i = 1; i < ns; i++)
            if ((rc = spm_try_bigram(e, i - 1, i)))
                return rc;
    }
    while (e->heap.n) {
        struct cand c = heap_pop(&e->heap);
        int32_t l = (int32_t)(uint32_t)c.key, r = c.right;
        struct sym *ls = &e->sym[l], *rs = &e->sym[r];
        if (ls->n == 0 || rs->n == 0 || ls->n + rs->n != c.size || ls->next != r)
            continue;
        ls->n += rs->n;
        rs->n = 0;
        ls->next = rs->next;
        if (rs->next >= 0)
            e->sym[rs->next].prev = l;
        if ((rc = spm_try_bigram(e, ls->prev, l)) || (rc = spm_try_bigram(e, l, ls->next)))
            return rc;
    }
    /* A merged symbol is always a token; a lone character that is not one
     * falls back to its bytes. */
    for (int32_t i = 0; i != -1; i = e->sym[i].next) {
        const struct sym *s = &e->sym[i];
        int32_t id = s->id >= 0 ? s->id : strtab_find(&t->st, e->buf + s->off, s->n);
        if (id >= 0 && (uint32_t)id < t->n_vocab) {
            emit(e, id);
            continue;
        }
        for (uint32_t k = 0; k < s->n; k++) {
            int32_t b = t->byte_tok[(unsigned char)e->buf[s->off + k]];
            if (b >= 0)
                emit(e, b);
            else if (t->unk >= 0)
                emit(e, t->unk);
        }
    }
    return 0;
}

static inline bool is_lower_block(const char *p)
{
    return p[0] == '\xE2' && p[1] == '\x96' && p[2] == '\x81';
}

static int spm_encode(struct enc *e, const char *text, size_t len, bool space_prefix)
{
    const struct tokenizer *t = e->t;
    /* "▁" for every space, one more in front when asked. */
    size_t need = 3 * (len + 1);
    int rc = grow((void **)&e->buf, &e->buf_cap, need, 1);
    if (rc)
        return rc;
    size_t bl = 0;
    if (space_prefix) {
        memcpy(e->buf, "\xE2\x96\x81", 3);
        bl = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(e->buf + bl, "\xE2\x96\x81", 3);
            bl += 3;
        } else {
            e->buf[bl++] = text[i];
        }
    }
    if (bl == 0)
        return 0;
    if (bl > (size_t)INT32_MAX)
        return LLORCH_ETOOBIG;
    if ((rc = grow((void **)&e->sym, &e->sym_cap, bl, sizeof(struct sym))))
        return rc;
    if (!t->spm_split)
        return spm_segment(e, 0, bl);
    /* No token has "▁" after another character (checked at load), so no
     * merge crosses the start of a "▁" run and each stretch from one run to
     * the next merges alone, in the same relative order as in one queue. */
    /* "▁" starts with 0xE2, a lead byte: in a piece of valid UTF-8 every
     * 0xE2 starts a character, so only those need looking at. */
    size_t s0 = 0;
    for (size_t o = 0; o < bl; o++) {
        const char *p = memchr(e->buf + o, 0xE2, bl - o);
        if (!p)
            break;
        o = (size_t)(p - e->buf);
        if (o > s0 && o + 3 <= bl && is_lower_block(e->buf + o) &&
            !(o >= 3 && is_lower_block(e->buf + o - 3))) {
            if ((rc = spm_segment(e, s0, o)))
                return rc;
            s0 = o;
        }
    }
    return spm_segment(e, s0, bl);
}

/* ---------------------------------------------------------------------- */
/* BPE: llama.cpp's llm_tokenizer_bpe_session, over one pre-token. */

static int bpe_add(struct enc *e, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return 0;
    const struct tokenizer *t = e->t;
    int32_t a = e->sym[l].id, b = e->sym[r].id;
    if (a < 0 || b < 0 || !t->merges)
        return 0;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t i = merge_hash(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const struct merge_slot *m = &t->merges[i];
        if (m->key == UINT64_MAX)
            return 0;
        if (m->key == key) {
            struct cand c = {((uint64_t)(uint32_t)m->rank << 32) | (uint32_t)l, r,
                             e->sym[l].n + e->sym[r].n};
            return heap_push(&e->heap, c);
        }
    }
}

/* Sets the pair key and id of sym[l] and the symbol after it (BPE). */
static void bpe_pair(struct enc *e, int32_t l)
{
    const struct tokenizer *t = e->t;
    struct sym *s = &e->sym[l];
    s->pair_key = UINT64_MAX;
    if (s->next < 0)
        return;
    int32_t a = s->id, b = e->sym[s->next].id;
    if (a < 0 || b < 0 || !t->merges)
        return;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t i = merge_hash(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const struct merge_slot *m = &t->merges[i];
        if (m->key == UINT64_MAX)
            return;
        if (m->key == key) {
            s->pair_key = ((uint64_t)(uint32_t)m->rank << 32) | (uint32_t)l;
            s->pair_id = m->merged;
            return;
        }
    }
}

static int32_t merge_result(const struct tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t i = merge_hash(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const struct merge_slot *m = &t->merges[i];
        if (m->key == UINT64_MAX)
            return -1;
        if (m->key == key)
            return m->merged;
    }
}

static int bpe_word_merge(struct enc *e, const char *w, size_t len);

static int bpe_word(struct enc *e, const char *w, size_t len)
{
    struct wc_entry *we;
    if (wc_lookup(e, w, len, &we))
        return 0;
    size_t n0 = e->n;
    int rc = bpe_word_merge(e, w, len);
    if (!rc)
        wc_store(e, we, w, len, n0);
    return rc;
}

static int bpe_word_merge(struct enc *e, const char *w, size_t len)
{
    const struct tokenizer *t = e->t;
    if (len == 0)
        return 0;
    int rc = grow((void **)&e->buf, &e->buf_cap, 2 * len + 1, 1);
    if (rc)
        return rc;
    if ((rc = grow((void **)&e->sym, &e->sym_cap, len + 1, sizeof(struct sym))))
        return rc;
    if (len > (size_t)INT32_MAX / 2)
        return LLORCH_ETOOBIG;
    /* Byte-level encoding: each input byte becomes one mapped character and
     * one initial symbol. */
    size_t bl = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)w[i];
        e->sym[i] = (struct sym){t->byte_sym[c], (uint32_t)bl, t->byte_enc_len[c], (int32_t)i - 1,
                                 i + 1 == len ? -1 : (int32_t)i + 1, -1, UINT64_MAX};
        memcpy(e->buf + bl, t->byte_enc[c], t->byte_enc_len[c]);
        bl += t->byte_enc_len[c];
    }
    if (t->ignore_merges) {
        int32_t id = strtab_find(&t->st, e->buf, bl);
        if (id >= 0 && (uint32_t)id < t->n_vocab) {
            emit(e, id);
            return 0;
        }
    }
    int32_t ns = (int32_t)len;
    e->heap.n = 0;
    if (ns <= SCAN_MAX) {
        for (int32_t i = 0; i < ns; i++)
            bpe_pair(e, i);
        for (int32_t l; (l = scan_best(e->sym)) >= 0;) {
            sym_absorb_next(e->sym, l, e->sym[l].pair_id);
            if (e->sym[l].prev >= 0)
                bpe_pair(e, e->sym[l].prev);
            bpe_pair(e, l);
        }
    } else {
        for (int32_t i = 1; i < ns; i++)
            if ((rc = bpe_add(e, i - 1, i)))
                return rc;
    }
    while (e->heap.n) {
        struct cand c = heap_pop(&e->heap);
        int32_t l = (int32_t)(uint32_t)c.key, r = c.right;
        struct sym *ls = &e->sym[l], *rs = &e->sym[r];
        if (ls->n == 0 || rs->n == 0 || ls->n + rs->n != c.size || ls->next != r)
            continue;
        ls->id = merge_result(t, ls->id, rs->id);
        ls->n += rs->n;
        rs->n = 0;
        ls->next = rs->next;
        if (rs->next >= 0)
            e->sym[rs->next].prev = l;
        if ((rc = bpe_add(e, ls->prev, l)) || (rc = bpe_add(e, l, ls->next)))
            return rc;
    }
    for (int32_t i = 0; i != -1; i = e->sym[i].next) {
        const struct sym *s = &e->sym[i];
        if (s->id >= 0 && (uint32_t)s->id < t->n_vocab) {
            emit(e, s->id);
            continue;
        }
        /* Not a token: llama.cpp looks up each byte of the mapped text. */
        for (uint32_t k = 0; k < s->n; k++) {
            int32_t id = strtab_find(&t->st, e->buf + s->off + k, 1);
            if (id >= 0 && (uint32_t)id < t->n_vocab)
                emit(e, id);
        }
    }
    return 0;
}

static int re_match(const struct tokenizer *t, uint32_t k, const char *s, size_t len, size_t start,
                    pcre2_match_data *md)
{
    int rc;
    if (t->re_jit[k]) {
        rc = pcre2_jit_match(t->re[k], (PCRE2_SPTR)s, len, start, 0, md, NULL);
        if (rc >= 0 || rc == PCRE2_ERROR_NOMATCH)
            return rc;
    }
    /* Interpreter: also the fallback when the JIT stack runs out. */
    return pcre2_match(t->re[k], (PCRE2_SPTR)s, len, start, PCRE2_NO_UTF_CHECK, md, NULL);
}

/* A piece of the pre-tokenizer's output: kept for the next regex, or
 * encoded at once after the last one. */
static int piece_out(struct enc *e, bool last, const char *text, size_t off, size_t len,
                     struct span **out, size_t *n, size_t *cap)
{
    if (last)
        return bpe_word(e, text + off, len);
    return span_push(out, n, cap, off, len, -1);
}

/* Splits text[off, off+len) with regex k into matches and the gaps between
 * them (as llama.cpp's std::regex fallback does). */
static int re_split(struct enc *e, uint32_t k, const char *text, size_t off, size_t len,
                    struct span **out, size_t *n, size_t *cap)
{
    const char *s = text + off;
    bool last = k + 1 == e->t->n_re;
    size_t pos = 0;
    int rc;
    while (pos < len) {
        int m = re_match(e->t, k, s, len, pos, e->md);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0)
            return LLORCH_EINTERNAL;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (ms < pos || me < ms || me > len)
            return LLORCH_EINTERNAL;
        if (me == ms) /* empty match (no llama.cpp regex has one): one character */
            me = ms + LLORCH_MIN(utf8_len_lead((unsigned char)s[ms]), len - ms);
        if (ms > pos && (rc = piece_out(e, last, text, off + pos, ms - pos, out, n, cap)))
            return rc;
        if ((rc = piece_out(e, last, text, off + ms, me - ms, out, n, cap)))
            return rc;
        pos = me;
    }
    if (pos < len && (rc = piece_out(e, last, text, off + pos, len - pos, out, n, cap)))
        return rc;
    return 0;
}

static int bpe_encode(struct enc *e, const char *text, size_t len)
{
    const struct tokenizer *t = e->t;
    int rc;
    if (t->n_re == 0)
        return bpe_word(e, text, len);
    if (t->n_re == 1)
        return re_split(e, 0, text, 0, len, NULL, NULL, NULL);
    e->w_n = 0;
    if ((rc = span_push(&e->w, &e->w_n, &e->w_cap, 0, len, -1)))
        return rc;
    for (uint32_t k = 0; k < t->n_re; k++) {
        e->w2_n = 0;
        for (size_t i = 0; i < e->w_n; i++)
            if ((rc = re_split(e, k, text, e->w[i].off, e->w[i].len, &e->w2, &e->w2_n,
                               &e->w2_cap)))
                return rc;
        struct span *tv = e->w;
        e->w = e->w2;
        e->w2 = tv;
        size_t tc = e->w_cap;
        e->w_cap = e->w2_cap;
        e->w2_cap = tc;
        e->w_n = e->w2_n;
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Special-token partition: llama.cpp's tokenizer_st_partition. Tokens are
 * taken longest first; each splits every remaining text fragment at all its
 * (non-overlapping, leftmost-first) occurrences. */

static int partition(struct enc *e, const char *text, size_t len, bool parse_special,
                     struct span **frags, size_t *nf, size_t *capf)
{
    const struct tokenizer *t = e->t;
    int rc;
    *nf = 0;
    if (len == 0)
        return 0;
    if ((rc = span_push(frags, nf, capf, 0, len, -1)))
        return rc;
    for (uint32_t si = 0; si < t->n_special; si++) {
        llorch_token id = t->special[si];
        unsigned a = t->attr[id];
        if (!parse_special && (a & (TOKENIZER_ATTR_CONTROL | TOKENIZER_ATTR_UNKNOWN)))
            continue;
        const char *tt = t->st.blob + t->st.off[id];
        size_t tl = t->st.len[id];
        if (tl == 0 || !memmem(text, len, tt, tl))
            continue;
        e->w2_n = 0;
        for (size_t fi = 0; fi < *nf; fi++) {
            struct span f = (*frags)[fi];
            if (f.tok >= 0) {
                if ((rc = span_push(&e->w2, &e->w2_n, &e->w2_cap, f.off, f.len, f.tok)))
                    return rc;
                continue;
            }
            size_t off = f.off, flen = f.len;
            while (flen > 0) {
                const char *m = memmem(text + off, flen, tt, tl);
                if (!m) {
                    if ((rc = span_push(&e->w2, &e->w2_n, &e->w2_cap, off, flen, -1)))
                        return rc;
                    break;
                }
                size_t mo = (size_t)(m - text);
                size_t left = mo - off;
                if (a & TOKENIZER_ATTR_LSTRIP)
                    while (left > 0 && strchr(" \t\n\v\f\r", text[off + left - 1]) &&
                           text[off + left - 1])
                        left--;
                if (left > 0 && (rc = span_push(&e->w2, &e->w2_n, &e->w2_cap, off, left, -1)))
                    return rc;
                if ((rc = span_push(&e->w2, &e->w2_n, &e->w2_cap, mo, tl, id)))
                    return rc;
                size_t roff = mo + tl, rlen = off + flen - roff;
                if (a & TOKENIZER_ATTR_RSTRIP)
                    while (rlen > 0 && text[roff] && strchr(" \t\n\v\f\r", text[roff])) {
                        roff++;
                        rlen--;
                    }
                off = roff;
                flen = rlen;
            }
        }
        struct span *tv = *frags;
        *frags = e->w2;
        e->w2 = tv;
        size_t tc = *capf;
        *capf = e->w2_cap;
        e->w2_cap = tc;
        *nf = e->w2_n;
    }
    return 0;
}

static int encode(const struct tokenizer *t, const char *text, size_t len, bool add_bos,
                  bool parse_special, llorch_token *out, size_t cap, size_t *n_out,
                  size_t *bad_offset, bool use_cache)
{
    if (!t || (!text && len) || (!out && cap) || !n_out)
        return LLORCH_EINVAL;
    *n_out = 0;
    if (!tokenizer_utf8_valid(text, len, bad_offset))
        return LLORCH_EUTF8;

    struct enc e = {.t = t, .out = out, .cap = cap};
    struct span *frags = NULL;
    size_t nf = 0, capf = 0;
    int rc = 0;

    if (use_cache && len >= WC_MIN_INPUT) {
        e.wc = calloc(WC_SLOTS, sizeof(*e.wc));
        if (!e.wc) {
            rc = LLORCH_ENOMEM;
            goto done;
        }
    }
    if (t->kind == TOKENIZER_BPE && t->n_re) {
        e.md = pcre2_match_data_create(2, NULL);
        if (!e.md) {
            rc = LLORCH_ENOMEM;
            goto done;
        }
    }
    if ((rc = partition(&e, text, len, parse_special, &frags, &nf, &capf)))
        goto done;
    if (add_bos && t->bos >= 0)
        emit(&e, t->bos);
    bool prev_special = true; /* SPM: the first text fragment gets a space */
    for (size_t i = 0; i < nf; i++) {
        const struct span *f = &frags[i];
        if (f->tok >= 0) {
            emit(&e, f->tok);
            prev_special = true;
            continue;
        }
        if (t->kind == TOKENIZER_SPM) {
            rc = spm_encode(&e, text + f->off, f->len, t->add_space_prefix && prev_special);
            prev_special = false;
        } else {
            rc = bpe_encode(&e, text + f->off, f->len);
        }
        if (rc)
            goto done;
    }
    *n_out = e.n;
    if (e.n > cap)
        rc = LLORCH_ETOOBIG;
done:
    free(frags);
    free(e.wc);
    free(e.sym);
    free(e.heap.v);
    free(e.buf);
    free(e.w);
    free(e.w2);
    pcre2_match_data_free(e.md);
    return rc;
}

LLORCH_API int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len,
                                bool add_bos, bool parse_special, llorch_token *out, size_t cap,
                                size_t *n_out, size_t *bad_offset)
{
    return encode(t, text, len, add_bos, parse_special, out, cap, n_out, bad_offset, true);
}

LLORCH_API int tokenizer_encode_nocache(const struct tokenizer *t, const char *text, size_t len,
                                        bool add_bos, bool parse_special, llorch_token *out,
                                        size_t cap, size_t *n_out, size_t *bad_offset)
{
    return encode(t, text, len, add_bos, parse_special, out, cap, n_out, bad_offset, false);
}

/* ---------------------------------------------------------------------- */
/* Decoding */

LLORCH_API int tokenizer_token_bytes(const struct tokenizer *t, llorch_token id,
                                     bool render_special, char *buf, size_t cap)
{
    if (!t || id < 0 || (uint32_t)id >= t->n_vocab)
        return LLORCH_ERANGE;
    unsigned a = t->attr[id];
    if (!render_special && (a & (TOKENIZER_ATTR_UNKNOWN | TOKENIZER_ATTR_CONTROL)))
        return 0;
    size_t n = LLORCH_MIN((size_t)t->piece_len[id], cap);
    if (n)
        memcpy(buf, t->pieces + t->piece_off[id], n);
    return (int)n;
}

LLORCH_API const char *tokenizer_token_piece(const struct tokenizer *t, llorch_token id,
                                             bool render_special, size_t *len)
{
    if (!t || id < 0 || (uint32_t)id >= t->n_vocab)
        return NULL;
    unsigned a = t->attr[id];
    *len = (!render_special && (a & (TOKENIZER_ATTR_UNKNOWN | TOKENIZER_ATTR_CONTROL)))
               ? 0
               : t->piece_len[id];
    return t->pieces + t->piece_off[id];
}

/* HF's clean_up_tokenization_spaces as llama.cpp applies it, in place. */
static size_t clean_spaces(char *text, size_t total)
{
    const size_t total1 = total;
    total = total ? 1 : 0;
    for (size_t i = 1; i < total1; ++i) {
        const char x = text[i];
        if (text[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ','))
            total--;
        text[total++] = x;
    }
    const size_t total2 = total;
    total = total ? 1 : 0;
    for (size_t i = 1; i < total2; ++i) {
        const char x = text[i];
        if (x == '\'' && i + 1 < total2 && text[i - 1] == ' ' && text[i + 1] == ' ') {
            total--;
            text[++i] = '\0';
        }
        text[total++] = x;
    }
    const size_t total3 = total;
    total = total ? 1 : 0;
    for (size_t i = 1; i < total3; ++i) {
        const char x = text[i];
        if (text[i - 1] == ' ' && x == '\'' && i + 1 < total3) {
            const char x1 = text[i + 1];
            if (x1 == 's' || x1 == 'm') {
                total--;
            } else if (x1 != 't' && x1 != 'd' && i + 2 < total3) {
                const char x2 = text[i + 2];
                if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e'))
                    total--;
            }
        }
        text[total++] = x;
    }
    return total;
}

LLORCH_API int tokenizer_decode(const struct tokenizer *t, const llorch_token *ids, size_t n,
                                char *out, size_t cap, size_t *n_out)
{
    if (!t || (!ids && n) || (!out && cap) || !n_out)
        return LLORCH_EINVAL;
    size_t total = 0;
    bool remove_space = t->add_space_prefix;
    for (size_t i = 0; i < n; i++) {
        llorch_token id = ids[i];
        if (id < 0 || (uint32_t)id >= t->n_vocab)
            return LLORCH_ERANGE;
        bool strip = remove_space;
        remove_space = false;
        if (t->attr[id] & (TOKENIZER_ATTR_UNKNOWN | TOKENIZER_ATTR_CONTROL))
            continue;
        const char *p = t->pieces + t->piece_off[id];
        size_t pl = t->piece_len[id];
        if (strip && pl && p[0] == ' ') {
            p++;
            pl--;
        }
        if (total + pl <= cap)
            memcpy(out + total, p, pl);
        total += pl;
    }
    *n_out = total;
    if (total > cap)
        return LLORCH_ETOOBIG;
    if (t->clean_spaces)
        *n_out = clean_spaces(out, total);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Accessors */

LLORCH_API enum tokenizer_kind tokenizer_kind(const struct tokenizer *t) { return t->kind; }
LLORCH_API const char *tokenizer_pre_name(const struct tokenizer *t) { return t->pre_name; }
LLORCH_API uint32_t tokenizer_n_vocab(const struct tokenizer *t) { return t->n_vocab; }
LLORCH_API llorch_token tokenizer_bos(const struct tokenizer *t) { return t->bos; }
LLORCH_API llorch_token tokenizer_eos(const struct tokenizer *t) { return t->eos; }
LLORCH_API llorch_token tokenizer_eot(const struct tokenizer *t) { return t->eot; }
LLORCH_API llorch_token tokenizer_unk(const struct tokenizer *t) { return t->unk; }
LLORCH_API llorch_token tokenizer_pad(const struct tokenizer *t) { return t->pad; }
LLORCH_API bool tokenizer_adds_bos(const struct tokenizer *t) { return t->add_bos; }
LLORCH_API bool tokenizer_adds_eos(const struct tokenizer *t) { return t->add_eos; }
LLORCH_API bool tokenizer_clean_spaces(const struct tokenizer *t) { return t->clean_spaces; }
LLORCH_API size_t tokenizer_max_piece_len(const struct tokenizer *t) { return t->max_piece; }

LLORCH_API bool tokenizer_is_eog(const struct tokenizer *t, llorch_token id)
{
    for (uint32_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id)
            return true;
    return false;
}

LLORCH_API size_t tokenizer_eog_ids(const struct tokenizer *t, const llorch_token **ids)
{
    if (ids)
        *ids = t->eog;
    return t->n_eog;
}

LLORCH_API bool tokenizer_is_control(const struct tokenizer *t, llorch_token id)
{
    return id >= 0 && (uint32_t)id < t->n_vocab && (t->attr[id] & TOKENIZER_ATTR_CONTROL);
}

LLORCH_API unsigned tokenizer_token_attr(const struct tokenizer *t, llorch_token id)
{
    return (id >= 0 && (uint32_t)id < t->n_vocab) ? t->attr[id] : 0;
}

LLORCH_API const char *tokenizer_token_text(const struct tokenizer *t, llorch_token id,
                                            size_t *len)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return NULL;
    if (len)
        *len = t->st.len[id];
    return t->st.blob + t->st.off[id];
}

/* ---------------------------------------------------------------------- */
/* Loading */

LLORCH_API void tokenizer_free(struct tokenizer *t)
{
    if (!t)
        return;
    strtab_free(&t->st);
    free(t->score);
    free(t->attr);
    free(t->merges);
    for (uint32_t k = 0; k < t->n_re; k++)
        pcre2_code_free(t->re[k]);
    free(t->special);
    free(t->eog);
    free(t->pieces);
    free(t->piece_off);
    free(t->piece_len);
    free(t);
}

static bool gstr_eq(struct gguf_str s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && !memcmp(s.ptr, c, n);
}

static void byte_map_init(struct tokenizer *t)
{
    /* GPT-2's bytes_to_unicode: printable Latin-1 maps to itself, the other
     * 68 bytes to U+0100.. in byte order. */
    for (int i = 0; i < 0x144; i++)
        t->cp_to_byte[i] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        uint32_t cp = self ? (uint32_t)b : (uint32_t)(256 + n++);
        char tmp[4];
        size_t l = utf8_put(cp, tmp);
        memcpy(t->byte_enc[b], tmp, l);
        t->byte_enc_len[b] = (uint8_t)l;
        t->cp_to_byte[cp] = (int16_t)b;
    }
}

static int read_id(const struct gguf_file *f, const char *key, llorch_token *id, uint32_t n_vocab)
{
    /* llama.cpp first drops a default that is out of range, then takes the
     * file's value when it is in range. */
    if (*id >= 0 && (uint32_t)*id >= n_vocab)
        *id = -1;
    uint32_t v;
    if (gguf_get_u32(f, key, &v) == 0 && v < n_vocab)
        *id = (llorch_token)v;
    return 0;
}

static bool name_in(const char *s, size_t n, const char *const *list)
{
    for (; *list; list++)
        if (strlen(*list) == n && !memcmp(*list, s, n))
            return true;
    return false;
}

static const char *const eot_names[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<end_of_utterance>", NULL};
static const char *const eom_names[] = {"<|eom_id|>", NULL};
static const char *const fim_pad_names[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>",
                                            "[PAD]", NULL};
static const char *const fim_rep_names[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                            "<REPO>", "<reponame>", NULL};
static const char *const fim_sep_names[] = {"<|file_sep|>", NULL};
static const char *const eog_names[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~[", NULL};

static llorch_token find_text(const struct tokenizer *t, const char *s)
{
    int32_t id = strtab_find(&t->st, s, strlen(s));
    return (id >= 0 && (uint32_t)id < t->n_vocab) ? id : -1;
}

static int eog_add(struct tokenizer *t, llorch_token id)
{
    if (id < 0)
        return 0;
    for (uint32_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id)
            return 0;
    llorch_token *v = realloc(t->eog, (t->n_eog + 1) * sizeof(*v));
    if (!v)
        return LLORCH_ENOMEM;
    t->eog = v;
    t->eog[t->n_eog++] = id;
    return 0;
}

static int cmp_tok(const void *a, const void *b)
{
    llorch_token x = *(const llorch_token *)a, y = *(const llorch_token *)b;
    return (x > y) - (x < y);
}

/* Special-token attributes and the EOG set, as llama.cpp derives them from
 * the ids in the file and from token texts. */
static int specials_init(struct tokenizer *t)
{
    int rc;
    uint32_t nv = t->n_vocab;
    /* Ids not given by keys are found by text; where several texts match,
     * the lowest id wins (llama.cpp's hash-map order is unspecified). */
    for (uint32_t id = 0; id < nv; id++) {
        const char *s = t->st.blob + t->st.off[id];
        size_t n = t->st.len[id];
        struct {
            llorch_token *slot;
            const char *const *names;
        } probes[] = {{&t->eot, eot_names},         {&t->eom, eom_names},
                      {&t->fim_pad, fim_pad_names}, {&t->fim_rep, fim_rep_names},
                      {&t->fim_sep, fim_sep_names}};
        for (size_t p = 0; p < LLORCH_ARRAY_SIZE(probes); p++)
            if (*probes[p].slot < 0 && name_in(s, n, probes[p].names)) {
                *probes[p].slot = (llorch_token)id;
                t->attr[id] |= TOKENIZER_ATTR_CONTROL;
            }
    }
    for (uint32_t id = 0; id < nv; id++) {
        if ((t->attr[id] & TOKENIZER_ATTR_CONTROL) &&
            memmem(t->st.blob + t->st.off[id], t->st.len[id], "unused", 6))
            t->attr[id] |= TOKENIZER_ATTR_UNUSED;
    }
    if ((rc = eog_add(t, t->fim_pad)) || (rc = eog_add(t, t->fim_rep)) ||
        (rc = eog_add(t, t->fim_sep)))
        return rc;
    for (uint32_t id = 0; id < nv; id++) {
        if (name_in(t->st.blob + t->st.off[id], t->st.len[id], eog_names)) {
            if ((rc = eog_add(t, (llorch_token)id)))
                return rc;
            t->attr[id] |= TOKENIZER_ATTR_CONTROL;
        }
    }
    static const char *const always_user[] = {"<|channel|>", "<|message|>", "<|start|>",
                                              "<|constrain|>"};
    for (size_t k = 0; k < LLORCH_ARRAY_SIZE(always_user); k++) {
        llorch_token id = find_text(t, always_user[k]);
        if (id >= 0)
            t->attr[id] = TOKENIZER_ATTR_USER_DEFINED;
    }
    if ((rc = eog_add(t, t->eos)) || (rc = eog_add(t, t->eot)) || (rc = eog_add(t, t->eom)))
        return rc;
    /* o200k_harmony / solar-open: <|end|> is not an end of generation. */
    {
        bool has_return = false, has_call = false, has_flush = false;
        llorch_token end_id = -1;
        for (uint32_t i = 0; i < t->n_eog; i++) {
            llorch_token id = t->eog[i];
            const char *s = t->st.blob + t->st.off[id];
            size_t n = t->st.len[id];
            if (name_in(s, n, (const char *const[]){"<|return|>", NULL}))
                has_return = true;
            else if (name_in(s, n, (const char *const[]){"<|call|>", "<|calls|>", NULL}))
                has_call = true;
            else if (name_in(s, n, (const char *const[]){"<|flush|>", NULL}))
                has_flush = true;
            else if (name_in(s, n, (const char *const[]){"<|end|>", NULL}))
                end_id = id;
        }
        if (end_id >= 0 && ((has_return && has_call) || (has_call && has_flush))) {
            for (uint32_t i = 0; i < t->n_eog; i++)
                if (t->eog[i] == end_id)
                    t->eog[i] = t->eog[--t->n_eog];
            t->attr[end_id] = TOKENIZER_ATTR_USER_DEFINED;
        }
    }
    /* gemma4 / paddleocr: </s> is not an end of generation next to
     * <|tool_response>. */
    {
        llorch_token s_id = -1;
        bool has_tr = false;
        for (uint32_t i = 0; i < t->n_eog; i++) {
            llorch_token id = t->eog[i];
            const char *s = t->st.blob + t->st.off[id];
            size_t n = t->st.len[id];
            if (name_in(s, n, (const char *const[]){"<|tool_response>", NULL}))
                has_tr = true;
            else if (name_in(s, n, (const char *const[]){"</s>", NULL}))
                s_id = id;
        }
        if (has_tr && s_id >= 0) {
            for (uint32_t i = 0; i < t->n_eog; i++)
                if (t->eog[i] == s_id)
                    t->eog[i] = t->eog[--t->n_eog];
            t->attr[s_id] = TOKENIZER_ATTR_NORMAL;
        }
    }
    if (t->n_eog)
        qsort(t->eog, t->n_eog, sizeof(*t->eog), cmp_tok);

    /* Tokens split out of text before the model's tokenizer runs, longest
     * first (ties by id). */
    uint32_t ns = 0;
    for (uint32_t id = 0; id < nv; id++)
        if (t->attr[id] & (TOKENIZER_ATTR_CONTROL | TOKENIZER_ATTR_USER_DEFINED |
                           TOKENIZER_ATTR_UNKNOWN))
            ns++;
    if (ns) {
        t->special = malloc(ns * sizeof(*t->special));
        if (!t->special)
            return LLORCH_ENOMEM;
    }
    for (uint32_t id = 0; id < nv; id++)
        if (t->attr[id] & (TOKENIZER_ATTR_CONTROL | TOKENIZER_ATTR_USER_DEFINED |
                           TOKENIZER_ATTR_UNKNOWN))
            t->special[t->n_special++] = (llorch_token)id;
    /* Stable insertion-free sort: by length descending, then id. */
    for (uint32_t i = 1; i < t->n_special; i++) {
        llorch_token v = t->special[i];
        uint32_t j = i;
        while (j > 0 && t->st.len[t->special[j - 1]] < t->st.len[v]) {
            t->special[j] = t->special[j - 1];
            j--;
        }
        t->special[j] = v;
    }
    return 0;
}

/* Upper bound of a token's decoded length: a BPE code point outside the
 * byte map becomes "[UNK_BYTE_0x<hex><text>]" (llama_decode_text). */
static size_t piece_bound(const struct tokenizer *t, const char *s, size_t n)
{
    if (t->kind == TOKENIZER_SPM)
        return n;
    size_t unmapped = 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp = utf8_next_lenient(u, n, &i);
        if (!(cp < 0x144 && t->cp_to_byte[cp] >= 0))
            unmapped++;
    }
    return n + unmapped * (22 + n);
}

static int pieces_init(struct tokenizer *t)
{
    uint32_t nv = t->n_vocab;
    size_t cap = t->st.blob_len + 64, len = 0;
    t->pieces = malloc(cap);
    t->piece_off = malloc((size_t)nv * sizeof(uint32_t));
    t->piece_len = malloc((size_t)nv * sizeof(uint32_t));
    if (!t->pieces || !t->piece_off || !t->piece_len)
        return LLORCH_ENOMEM;
    char tmp[4];
    for (uint32_t id = 0; id < nv; id++) {
        const char *s = t->st.blob + t->st.off[id];
        size_t n = t->st.len[id];
        unsigned a = t->attr[id];
        size_t need = piece_bound(t, s, n) + 1;
        if (len + need > cap) {
            size_t nc = cap * 2;
            while (nc < len + need)
                nc *= 2;
            if (nc > UINT32_MAX)
                return LLORCH_ERANGE;
            char *p = realloc(t->pieces, nc);
            if (!p)
                return LLORCH_ENOMEM;
            t->pieces = p;
            cap = nc;
        }
        char *o = t->pieces + len;
        size_t ol = 0;
        if (a & (TOKENIZER_ATTR_UNKNOWN | TOKENIZER_ATTR_CONTROL | TOKENIZER_ATTR_USER_DEFINED)) {
            memcpy(o, s, n);
            ol = n;
        } else if (a & TOKENIZER_ATTR_NORMAL) {
            if (t->kind == TOKENIZER_SPM) {
                for (size_t i = 0; i < n; i++) {
                    if (i + 3 <= n && !memcmp(s + i, "\xE2\x96\x81", 3)) {
                        o[ol++] = ' ';
                        i += 2;
                    } else {
                        o[ol++] = s[i];
                    }
                }
            } else {
                const unsigned char *u = (const unsigned char *)s;
                for (size_t i = 0; i < n;) {
                    uint32_t cp = utf8_next_lenient(u, n, &i);
                    if (cp < 0x144 && t->cp_to_byte[cp] >= 0) {
                        o[ol++] = (char)t->cp_to_byte[cp];
                        continue;
                    }
                    size_t cl = utf8_put(cp > 0x10FFFF ? 0xFFFD : cp, tmp);
                    memcpy(o + ol, "[UNK_BYTE_0x", 12);
                    ol += 12;
                    static const char hx[] = "0123456789abcdef";
                    for (size_t k = 0; k < cl; k++) {
                        o[ol++] = hx[(unsigned char)tmp[k] >> 4];
                        o[ol++] = hx[(unsigned char)tmp[k] & 15];
                    }
                    memcpy(o + ol, s, n);
                    ol += n;
                    o[ol++] = ']';
                }
            }
        } else if (a & TOKENIZER_ATTR_BYTE) {
            /* strtol over text[3..5), as llama.cpp's token_to_byte. */
            char hex[3] = {0};
            if (n > 3)
                memcpy(hex, s + 3, LLORCH_MIN(n - 3, (size_t)2));
            o[ol++] = (char)strtol(hex, NULL, 16);
        }
        t->piece_off[id] = (uint32_t)len;
        t->piece_len[id] = (uint32_t)ol;
        if (ol > t->max_piece)
            t->max_piece = ol;
        len += ol;
    }
    return 0;
}

static int merges_init(struct tokenizer *t, const struct gguf_file *f, const struct gguf_arr *ma,
                       char *err, size_t errlen)
{
    uint64_t nm = ma->count;
    if (nm > (uint64_t)INT32_MAX) {
        (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_MERGES ": %llu merges is too many",
                          (unsigned long long)nm);
        return LLORCH_ERANGE;
    }
    /* Pass 1: intern both halves of every merge. */
    int32_t *pairs = malloc((size_t)(nm ? nm : 1) * 2 * sizeof(int32_t));
    if (!pairs)
        return LLORCH_ENOMEM;
    int rc = 0;
    for (uint64_t i = 0; i < nm; i++) {
        struct gguf_str s;
        if ((rc = gguf_arr_str(f, ma, i, &s))) {
            (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_MERGES "[%llu]: unreadable",
                              (unsigned long long)i);
            goto out;
        }
        /* Split at the first space after the first byte; none gives an
         * empty pair, as llama.cpp does. */
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        size_t l1 = 0, l2 = 0;
        const char *p2 = s.ptr;
        if (sp) {
            l1 = (size_t)(sp - s.ptr);
            p2 = sp + 1;
            l2 = s.len - l1 - 1;
        }
        int32_t a = strtab_intern(&t->st, s.ptr, l1);
        int32_t b = a >= 0 ? strtab_intern(&t->st, p2, l2) : a;
        if (a < 0 || b < 0) {
            rc = a < 0 ? a : b;
            goto out;
        }
        pairs[2 * i] = a;
        pairs[2 * i + 1] = b;
    }
    uint32_t nslots = 1024;
    while ((uint64_t)nslots < nm * 2 + 2)
        nslots *= 2;
    t->merges = malloc((size_t)nslots * sizeof(*t->merges));
    if (!t->merges) {
        rc = LLORCH_ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < nslots; i++)
        t->merges[i] = (struct merge_slot){UINT64_MAX, -1, -1};
    t->merge_mask = nslots - 1;
    char *cat = NULL;
    size_t cat_cap = 0;
    for (uint64_t i = 0; i < nm; i++) {
        int32_t a = pairs[2 * i], b = pairs[2 * i + 1];
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        uint32_t h = merge_hash(key) & t->merge_mask;
        while (t->merges[h].key != UINT64_MAX && t->merges[h].key != key)
            h = (h + 1) & t->merge_mask;
        if (t->merges[h].key == key)
            continue; /* duplicate pair: the first (lowest) rank stays */
        size_t la = t->st.len[a], lb = t->st.len[b];
        if ((rc = grow((void **)&cat, &cat_cap, la + lb + 1, 1))) {
            free(cat);
            goto out;
        }
        memcpy(cat, t->st.blob + t->st.off[a], la);
        memcpy(cat + la, t->st.blob + t->st.off[b], lb);
        t->merges[h] = (struct merge_slot){key, (int32_t)i, strtab_find(&t->st, cat, la + lb)};
    }
    free(cat);
out:
    free(pairs);
    return rc;
}

static int regex_init(struct tokenizer *t, char *err, size_t errlen)
{
    for (uint32_t k = 0; k < TOK_MAX_REGEX && pre_regexes[t->pre][k]; k++) {
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)pre_regexes[t->pre][k], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
        if (!re) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(ec, msg, sizeof(msg));
            (void)llorch_errf(err, errlen, 0, "pre-tokenizer regex %u for '%s': %s at %zu", k, t->pre_name,
                    (const char *)msg, (size_t)eo);
            return LLORCH_EINTERNAL;
        }
        t->re[t->n_re] = re;
        t->re_jit[t->n_re] = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
        t->n_re++;
    }
    return 0;
}

/* ---- tokenizer_new, by phase ---- */

/* The tokenizer family (tokenizer.ggml.model) and, for BPE, its
 * pre-tokenizer (tokenizer.ggml.pre), with their default special ids. */
static int tokenizer_kind_init(struct tokenizer *t, const struct gguf_file *f,
                               struct gguf_str model, char *err, size_t errlen)
{
    struct gguf_str pre = {NULL, 0};
    bool has_pre = gguf_get_str(f, LLORCH_GGUF_KEY_TOK_PRE, &pre) == 0;
    if (gstr_eq(model, "llama")) {
        t->kind = TOKENIZER_SPM;
        t->bos = 1;
        t->eos = 2;
        t->unk = 0;
        t->add_space_prefix = true;
        t->add_bos = true;
        t->pre = PRE_DEFAULT;
        snprintf(t->pre_name, sizeof(t->pre_name), "default");
    } else if (gstr_eq(model, "gpt2")) {
        t->kind = TOKENIZER_BPE;
        t->bos = 11;
        t->eos = 11;
        t->unk = -1;
        t->clean_spaces = true;
        const struct pre_def *pd = NULL;
        if (!has_pre || pre.len == 0) {
            pd = &pre_defs[0];
        } else {
            for (size_t i = 0; i < LLORCH_ARRAY_SIZE(pre_defs); i++)
                if (gstr_eq(pre, pre_defs[i].name))
                    pd = &pre_defs[i];
        }
        if (!pd) {
            (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_PRE ": unsupported pre-tokenizer '%.*s'",
                    (int)LLORCH_MIN(pre.len, (uint64_t)64), pre.ptr);
            return LLORCH_EUNSUPPORTED;
        }
        t->pre = pd->kind;
        t->clean_spaces = pd->clean_spaces;
        t->ignore_merges = pd->ignore_merges;
        t->add_bos = pd->add_bos;
        if (pd->bos_null)
            t->bos = -1;
        snprintf(t->pre_name, sizeof(t->pre_name), "%s", pd->name);
    } else {
        (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_MODEL ": unsupported tokenizer '%.*s'",
                (int)LLORCH_MIN(model.len, (uint64_t)64), model.ptr);
        return LLORCH_EUNSUPPORTED;
    }
    bool bv;
    if (gguf_get_bool(f, LLORCH_GGUF_KEY_TOK_ADD_SPACE_PREFIX, &bv) == 0)
        t->add_space_prefix = bv;
    return 0;
}

/* The vocabulary: token texts (interned; ids must be unique), scores and
 * token types. */
static int tokenizer_vocab_init(struct tokenizer *t, const struct gguf_file *f, char *err,
                                size_t errlen)
{
    struct gguf_arr toks;
    if (gguf_get_arr(f, LLORCH_GGUF_KEY_TOK_TOKENS, &toks) || toks.type != GGUF_TYPE_STRING) {
        (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_TOKENS ": missing or not a string array");
        return LLORCH_EFORMAT;
    }
    if (toks.count == 0 || toks.count > (uint64_t)INT32_MAX) {
        (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_TOKENS ": %llu tokens", (unsigned long long)toks.count);
        return LLORCH_EFORMAT;
    }
    uint32_t nv = (uint32_t)toks.count;
    t->n_vocab = nv;
    struct gguf_arr sc = {0}, tt = {0};
    bool has_sc = gguf_get_arr(f, LLORCH_GGUF_KEY_TOK_SCORES, &sc) == 0;
    bool has_tt = gguf_get_arr(f, LLORCH_GGUF_KEY_TOK_TOKEN_TYPE, &tt) == 0;
    if (has_sc && ((sc.type != GGUF_TYPE_FLOAT32 && sc.type != GGUF_TYPE_INT32) || sc.count < nv)) {
        (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_SCORES ": want %u f32 or i32 values", nv);
        return LLORCH_EFORMAT;
    }
    if (has_tt && ((tt.type != GGUF_TYPE_INT32 && tt.type != GGUF_TYPE_UINT32) || tt.count < nv)) {
        (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_TOKEN_TYPE ": want %u i32 values", nv);
        return LLORCH_EFORMAT;
    }
    t->score = calloc(nv, sizeof(*t->score));
    t->attr = calloc(nv, sizeof(*t->attr));
    if (!t->score || !t->attr)
        return LLORCH_ENOMEM;
    for (uint32_t i = 0; i < nv; i++) {
        struct gguf_str s;
        if (gguf_arr_str(f, &toks, i, &s)) {
            (void)llorch_errf(err, errlen, 0, "tokenizer.ggml.tokens[%u]: unreadable", i);
            return LLORCH_EFORMAT;
        }
        char emptybuf[32];
        if (s.len == 0) {
            int l = snprintf(emptybuf, sizeof(emptybuf), "[EMPTY_%u]", i);
            s.ptr = emptybuf;
            s.len = (uint64_t)l;
        }
        int32_t id = strtab_intern(&t->st, s.ptr, s.len);
        if (id < 0) {
            return id;
        }
        if ((uint32_t)id != i) {
            (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_TOKENS ": duplicate token '%.*s' at ids %d and %u",
                    (int)LLORCH_MIN(s.len, (uint64_t)64), s.ptr, id, i);
            return LLORCH_EFORMAT;
        }
        if (has_sc) {
            if (sc.type == GGUF_TYPE_FLOAT32) {
                memcpy(&t->score[i], (const char *)sc.data + 4 * (size_t)i, 4);
            } else {
                int32_t v;
                memcpy(&v, (const char *)sc.data + 4 * (size_t)i, 4);
                t->score[i] = (float)v;
            }
        }
        unsigned a = TOKENIZER_ATTR_NORMAL;
        if (has_tt) {
            int32_t v;
            memcpy(&v, (const char *)tt.data + 4 * (size_t)i, 4);
            switch (v) {
            case TT_UNKNOWN: a = TOKENIZER_ATTR_UNKNOWN; break;
            case TT_UNUSED: a = TOKENIZER_ATTR_UNUSED; break;
            case TT_NORMAL: a = TOKENIZER_ATTR_NORMAL; break;
            case TT_CONTROL: a = TOKENIZER_ATTR_CONTROL; break;
            case TT_USER_DEFINED: a = TOKENIZER_ATTR_USER_DEFINED; break;
            case TT_BYTE: a = TOKENIZER_ATTR_BYTE; break;
            default: a = TOKENIZER_ATTR_UNDEFINED; break;
            }
        }
        t->attr[i] = (uint16_t)a;
    }
    return 0;
}

/* How bytes become tokens: BPE's merges, byte map and pre-tokenizer regex;
 * SPM's <0xXX> byte tokens and whether its vocabulary needs the split of
 * ▁-runs. */
static int tokenizer_bytes_init(struct tokenizer *t, const struct gguf_file *f, char *err,
                                size_t errlen)
{
    int rc;
    uint32_t nv = t->n_vocab;
    if (t->kind == TOKENIZER_BPE) {
        struct gguf_arr ma;
        if (gguf_get_arr(f, LLORCH_GGUF_KEY_TOK_MERGES, &ma) || ma.type != GGUF_TYPE_STRING) {
            (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_MERGES ": missing or not a string array");
            return LLORCH_EFORMAT;
        }
        if ((rc = merges_init(t, f, &ma, err, errlen)))
            return rc;
        for (int b = 0; b < 256; b++)
            t->byte_sym[b] = strtab_find(&t->st, (const char *)t->byte_enc[b], t->byte_enc_len[b]);
        if ((rc = regex_init(t, err, errlen)))
            return rc;
    } else {
        static const char hex[] = "0123456789ABCDEF";
        for (int b = 0; b < 256; b++) {
            char buf[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
            int32_t id = strtab_find(&t->st, buf, 6);
            if (id < 0 || (uint32_t)id >= nv) {
                char c = (char)b;
                id = strtab_find(&t->st, &c, 1);
            }
            t->byte_tok[b] = (id >= 0 && (uint32_t)id < nv) ? id : -1;
        }
        t->spm_split = true;
        for (uint32_t i = 0; i < nv && t->spm_split; i++) {
            const char *s = t->st.blob + t->st.off[i];
            size_t n = t->st.len[i], k = 0;
            while (k + 3 <= n && is_lower_block(s + k))
                k += 3;
            for (; k + 3 <= n; k++)
                if (is_lower_block(s + k))
                    t->spm_split = false;
        }
    }
    return 0;
}

/* The special tokens: ids from the file, add_bos/add_eos, the special and
 * piece tables, and Phi-3's whitespace stripping after specials. */
static int tokenizer_specials_init(struct tokenizer *t, const struct gguf_file *f, char *err,
                                   size_t errlen)
{
    int rc;
    bool bv;
    uint32_t nv = t->n_vocab;
    static const struct {
        const char *key;
        size_t field;
    } id_keys[] = {
        {LLORCH_GGUF_KEY_TOK_BOS_ID, offsetof(struct tokenizer, bos)},
        {LLORCH_GGUF_KEY_TOK_EOS_ID, offsetof(struct tokenizer, eos)},
        {LLORCH_GGUF_KEY_TOK_EOT_ID, offsetof(struct tokenizer, eot)},
        {LLORCH_GGUF_KEY_TOK_EOM_ID, offsetof(struct tokenizer, eom)},
        {LLORCH_GGUF_KEY_TOK_UNK_ID, offsetof(struct tokenizer, unk)},
        {LLORCH_GGUF_KEY_TOK_SEP_ID, offsetof(struct tokenizer, sep)},
        {LLORCH_GGUF_KEY_TOK_PAD_ID, offsetof(struct tokenizer, pad)},
        {LLORCH_GGUF_KEY_TOK_MASK_ID, offsetof(struct tokenizer, mask)},
        {LLORCH_GGUF_KEY_TOK_FIM_PRE_ID, offsetof(struct tokenizer, fim_pre)},
        {LLORCH_GGUF_KEY_TOK_FIM_SUF_ID, offsetof(struct tokenizer, fim_suf)},
        {LLORCH_GGUF_KEY_TOK_FIM_MID_ID, offsetof(struct tokenizer, fim_mid)},
        {LLORCH_GGUF_KEY_TOK_FIM_PAD_ID, offsetof(struct tokenizer, fim_pad)},
        {LLORCH_GGUF_KEY_TOK_FIM_REP_ID, offsetof(struct tokenizer, fim_rep)},
        {LLORCH_GGUF_KEY_TOK_FIM_SEP_ID, offsetof(struct tokenizer, fim_sep)},
        {LLORCH_GGUF_KEY_TOK_PREFIX_ID, offsetof(struct tokenizer, fim_pre)},
        {LLORCH_GGUF_KEY_TOK_SUFFIX_ID, offsetof(struct tokenizer, fim_suf)},
        {LLORCH_GGUF_KEY_TOK_MIDDLE_ID, offsetof(struct tokenizer, fim_mid)},
    };
    for (size_t k = 0; k < LLORCH_ARRAY_SIZE(id_keys); k++)
        read_id(f, id_keys[k].key, (llorch_token *)((char *)t + id_keys[k].field), nv);
    if (gguf_get_bool(f, LLORCH_GGUF_KEY_TOK_ADD_BOS, &bv) == 0)
        t->add_bos = bv;
    if (gguf_get_bool(f, LLORCH_GGUF_KEY_TOK_ADD_EOS, &bv) == 0)
        t->add_eos = bv;
    if ((t->add_bos && t->bos < 0) || (t->add_eos && t->eos < 0)) {
        (void)llorch_errf(err, errlen, 0, "tokenizer.ggml.add_%s_token is true but the %s id is not set",
                t->add_bos && t->bos < 0 ? "bos" : "eos", t->add_bos && t->bos < 0 ? "bos" : "eos");
        return LLORCH_EFORMAT;
    }
    if ((rc = specials_init(t)))
        return rc;
    if ((rc = pieces_init(t)))
        return rc;

    /* Phi-3 vocabularies strip whitespace after special tokens. */
    struct gguf_str gname;
    if (gguf_get_str(f, LLORCH_GGUF_KEY_NAME, &gname) == 0) {
        char lower[256];
        size_t n = LLORCH_MIN(gname.len, sizeof(lower) - 1);
        for (size_t i = 0; i < n; i++) {
            char c = gname.ptr[i];
            lower[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        lower[n] = 0;
        if (strstr(lower, "phi-3") || strstr(lower, "phi3")) {
            for (uint32_t i = 0; i < t->n_special; i++)
                t->attr[t->special[i]] |= TOKENIZER_ATTR_RSTRIP;
            llorch_token id = find_text(t, "</s>");
            if (id >= 0)
                t->attr[id] |= TOKENIZER_ATTR_RSTRIP;
            static const char *const no_strip[] = {"<unk>", "<s>", "<|endoftext|>"};
            for (size_t k = 0; k < LLORCH_ARRAY_SIZE(no_strip); k++)
                if ((id = find_text(t, no_strip[k])) >= 0)
                    t->attr[id] &= (uint16_t)~TOKENIZER_ATTR_RSTRIP;
        }
    }
    return 0;
}

LLORCH_API int tokenizer_new(struct tokenizer **out, const struct gguf_file *f, char *err,
                             size_t errlen)
{
    if (!out || !f)
        return LLORCH_EINVAL;
    *out = NULL;
    struct gguf_str model;
    if (gguf_get_str(f, LLORCH_GGUF_KEY_TOK_MODEL, &model)) {
        (void)llorch_errf(err, errlen, 0, LLORCH_GGUF_KEY_TOK_MODEL ": missing or not a string");
        return LLORCH_EFORMAT;
    }
    struct tokenizer *t = calloc(1, sizeof(*t));
    if (!t)
        return LLORCH_ENOMEM;
    t->eot = t->eom = t->sep = t->pad = t->mask = -1;
    t->fim_pre = t->fim_suf = t->fim_mid = t->fim_pad = t->fim_rep = t->fim_sep = -1;
    byte_map_init(t);
    int rc = tokenizer_kind_init(t, f, model, err, errlen);
    if (!rc)
        rc = tokenizer_vocab_init(t, f, err, errlen);
    if (!rc)
        rc = tokenizer_bytes_init(t, f, err, errlen);
    if (!rc)
        rc = tokenizer_specials_init(t, f, err, errlen);
    if (rc) {
        if (rc == LLORCH_ENOMEM)
            (void)llorch_errf(err, errlen, 0, "tokenizer: out of memory");
        tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}
