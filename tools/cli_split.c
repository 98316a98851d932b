/* llorch-cli split: writes a model as llama.cpp-style split files, one per
 * pipeline stage (PREFIX-00001-of-0000N.gguf ...), each a valid GGUF file with
 * the whole model's metadata plus split.no, split.count and
 * split.tensors.count, and only the tensors of its layer range: blk.A..B,
 * the first part also every tensor outside the blocks (token_embd, rope
 * freqs), the last the output norm and head (a head tied to the embedding
 * as its own output.weight), and every part a copy of rope_freqs.weight
 * (llama 3's RoPE factors, read by every layer: a few hundred bytes). The
 * first part opens the whole model (gguf_open, which takes a copy once); a
 * stage can open its own part alone (gguf_open_some) and finds in it all
 * it reads. (llama.cpp refuses a tensor in two parts: a split of a model
 * with rope_freqs.weight is for llorch-cpud only.)
 * Tensor bytes are streamed from the source mapping: memory stays small. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "gguf_keys.h"
#include "llorch/error.h"
#include "util.h"

#define SPLIT_MAX_STAGES 256

static void split_usage(FILE *to)
{
    fprintf(to, "usage: llorch-cli split --model MODEL --out PREFIX\n"
                "         [--stages N (default 2, an even split of the layers) |\n"
                "          --layers A-B,C-D,... (inclusive, contiguous from 0 to the last layer)]\n"
                "writes PREFIX-00001-of-0000N.gguf ... (llama.cpp's split names)\n");
}

/* "0-7,8-15": first layer of each stage into first[], returns the count or
 * -1 (malformed, not contiguous from 0, or not ending at n_layer - 1). */
static int split_parse_layers(const char *s, uint32_t n_layer, uint32_t *first, int cap)
{
    int n = 0;
    uint32_t next = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        unsigned long a = strtoul(p, &end, 10);
        if (end == p || *end != '-' || errno)
            return -1;
        p = end + 1;
        unsigned long b = strtoul(p, &end, 10);
        if (end == p || errno || a != next || b < a || b >= n_layer || n >= cap)
            return -1;
        first[n++] = (uint32_t)a;
        next = (uint32_t)b + 1;
        p = end;
        if (*p == ',')
            p++;
        else if (*p)
            return -1;
    }
    return next == n_layer ? n : -1;
}

/* Tensors every layer reads, outside the blocks: copied into every part. */
static bool split_copied(const struct gguf_tensor *t)
{
    static const char rope_freqs[] = "rope_freqs.weight";
    return t->name.len == sizeof rope_freqs - 1 && !memcmp(t->name.ptr, rope_freqs, t->name.len);
}

/* The part a tensor goes to. */
static uint32_t split_part_of(const struct gguf_tensor *t, const uint32_t *first, uint32_t n_parts)
{
    char name[128];
    size_t len = LLORCH_MIN(t->name.len, sizeof name - 1);
    memcpy(name, t->name.ptr, len);
    name[len] = 0;
    unsigned layer;
    if (sscanf(name, "blk.%u.", &layer) == 1) {
        uint32_t p = 0;
        while (p + 1 < n_parts && layer >= first[p + 1])
            p++;
        return p;
    }
    if (!strncmp(name, "output_norm.", 12) || !strncmp(name, "output.", 7))
        return n_parts - 1;
    return 0;
}

/* Whether a tensor is written into part `part`: its own, or a copy. */
static bool split_in_part(const struct gguf_tensor *t, const uint32_t *first, uint32_t n_parts,
                          uint32_t part)
{
    return split_part_of(t, first, n_parts) == part || (part > 0 && split_copied(t));
}

static int split_write_part(const struct gguf_file *f, const char *path, uint32_t part,
                            uint32_t n_parts, const uint32_t *first, uint64_t *bytes,
                            uint64_t *n_tensors)
{
    /* A head tied to the embedding: the last part carries it as its own
     * output.weight (same bytes), so that the last stage's file alone holds
     * everything that stage reads. */
    const struct gguf_tensor *emb = gguf_tensor_find(f, "token_embd.weight");
    const bool untie = n_parts > 1 && emb && !gguf_tensor_find(f, "output.weight");
    const struct gguf_tensor *tied = untie && part + 1 == n_parts ? emb : NULL;
    uint64_t n_copied = 0;
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++)
        n_copied += split_copied(gguf_tensor_at(f, i));
    /* split.tensors.count: the tensors in all parts, copies included */
    const uint64_t n_total = gguf_tensor_count(f) + (untie ? 1 : 0) + n_copied * (n_parts - 1);
    struct gguf_writer *w;
    int rc = gguf_writer_new(&w, (uint32_t)gguf_alignment(f));
    if (rc)
        return rc;
    /* every key of the model but the split keys, then ours */
    for (uint64_t i = 0; i < gguf_kv_count(f) && !rc; i++) {
        struct gguf_str k;
        enum gguf_type t;
        const void *raw;
        uint64_t len;
        char key[512];
        if ((rc = gguf_kv_at(f, i, &k, &t)))
            break;
        if (k.len >= sizeof key) {
            rc = LLORCH_ETOOBIG;
            break;
        }
        memcpy(key, k.ptr, k.len);
        key[k.len] = 0;
        if (!strncmp(key, "split.", 6))
            continue;
        if (!(rc = gguf_kv_raw_at(f, i, &raw, &len)))
            rc = gguf_writer_set_raw(w, key, t, raw, len);
    }
    uint16_t no = (uint16_t)part, count = (uint16_t)n_parts;
    if (!rc)
        rc = gguf_writer_set_raw(w, LLORCH_GGUF_KEY_SPLIT_NO, GGUF_TYPE_UINT16, &no, 2);
    if (!rc)
        rc = gguf_writer_set_raw(w, LLORCH_GGUF_KEY_SPLIT_COUNT, GGUF_TYPE_UINT16, &count, 2);
    if (!rc)
        rc = gguf_writer_set_i32(w, LLORCH_GGUF_KEY_SPLIT_TENSORS_COUNT, (int32_t)n_total);
    *bytes = 0;
    *n_tensors = 0;
    for (uint64_t i = 0; i < gguf_tensor_count(f) && !rc; i++) {
        const struct gguf_tensor *t = gguf_tensor_at(f, i);
        if (!split_in_part(t, first, n_parts, part))
            continue;
        char name[256];
        if (t->name.len >= sizeof name) {
            rc = LLORCH_ETOOBIG;
            break;
        }
        memcpy(name, t->name.ptr, t->name.len);
        name[t->name.len] = 0;
        rc = gguf_writer_add_tensor_info(w, name, t->type, t->n_dims, t->ne);
        *bytes += t->nbytes;
        (*n_tensors)++;
    }
    if (!rc && tied) {
        rc = gguf_writer_add_tensor_info(w, "output.weight", tied->type, tied->n_dims, tied->ne);
        *bytes += tied->nbytes;
        (*n_tensors)++;
    }
    if (!rc)
        rc = gguf_writer_stream_begin(w, path);
    for (uint64_t i = 0; i < gguf_tensor_count(f) && !rc; i++) {
        const struct gguf_tensor *t = gguf_tensor_at(f, i);
        if (split_in_part(t, first, n_parts, part))
            rc = gguf_writer_stream_data(w, t->data, t->nbytes);
    }
    if (!rc && tied)
        rc = gguf_writer_stream_data(w, tied->data, tied->nbytes);
    if (!rc)
        rc = gguf_writer_stream_end(w);
    gguf_writer_free(w);
    return rc;
}

int cli_split_main(int argc, char **argv)
{
    const char *model = NULL, *out = NULL, *layers = NULL;
    unsigned long stages = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            split_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "llorch-cli split: %s needs a value\n", a);
            split_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) {
            model = v;
        } else if (!strcmp(a, "--out")) {
            out = v;
        } else if (!strcmp(a, "--layers")) {
            layers = v;
        } else if (!strcmp(a, "--stages")) {
            char *end;
            errno = 0;
            stages = strtoul(v, &end, 10);
            if (*end || errno || stages < 1 || stages > SPLIT_MAX_STAGES) {
                fprintf(stderr, "llorch-cli split: --stages: expected 1..%d, got '%s'\n",
                        SPLIT_MAX_STAGES, v);
                return 2;
            }
        } else {
            fprintf(stderr, "llorch-cli split: unknown option '%s'\n", a);
            split_usage(stderr);
            return 2;
        }
    }
    if (!model || !out || (layers && stages)) {
        fprintf(stderr, "llorch-cli split: %s\n",
                layers && stages ? "give --stages or --layers, not both"
                                 : "--model and --out are required");
        split_usage(stderr);
        return 2;
    }
    char err[512];
    struct gguf_file *f;
    int rc = gguf_open(&f, model, err, sizeof err);
    if (rc) {
        fprintf(stderr, "llorch-cli split: %s\n", err);
        return 1;
    }
    struct gguf_str arch;
    char key[160];
    uint32_t n_layer = 0;
    if (gguf_get_str(f, LLORCH_GGUF_KEY_ARCHITECTURE, &arch) || arch.len > 64) {
        fprintf(stderr, "llorch-cli split: %s: no " LLORCH_GGUF_KEY_ARCHITECTURE "\n", model);
        gguf_close(f);
        return 1;
    }
    snprintf(key, sizeof key, "%.*s.%s", (int)arch.len, arch.ptr, LLORCH_GGUF_ARCH_BLOCK_COUNT);
    if (gguf_get_u32(f, key, &n_layer) || n_layer == 0) {
        fprintf(stderr, "llorch-cli split: %s: no %s (a vocabulary-only file?)\n", model, key);
        gguf_close(f);
        return 1;
    }
    uint32_t first[SPLIT_MAX_STAGES];
    int n_parts;
    if (layers) {
        n_parts = split_parse_layers(layers, n_layer, first, SPLIT_MAX_STAGES);
        if (n_parts < 1) {
            fprintf(stderr,
                    "llorch-cli split: --layers '%s': expected contiguous inclusive ranges "
                    "A-B,C-D,... covering layers 0..%u\n",
                    layers, n_layer - 1);
            gguf_close(f);
            return 2;
        }
    } else {
        n_parts = (int)(stages ? stages : 2);
        if ((uint32_t)n_parts > n_layer) {
            fprintf(stderr,
                    "llorch-cli split: %d stages for %u layers: at most one stage a layer\n",
                    n_parts, n_layer);
            gguf_close(f);
            return 2;
        }
        for (int s = 0; s < n_parts; s++)
            first[s] = (uint32_t)((uint64_t)s * n_layer / (uint32_t)n_parts);
    }
    for (int s = 0; s < n_parts; s++) {
        char path[4200];
        uint64_t bytes, nt;
        rc = gguf_split_path(path, sizeof path, out, (uint32_t)s, (uint32_t)n_parts);
        if (!rc)
            rc = split_write_part(f, path, (uint32_t)s, (uint32_t)n_parts, first, &bytes, &nt);
        if (rc) {
            fprintf(stderr, "llorch-cli split: writing part %d of %d: %s\n", s + 1, n_parts,
                    llorch_strerror(rc));
            gguf_close(f);
            return 1;
        }
        uint32_t last = s + 1 < n_parts ? first[s + 1] - 1 : n_layer - 1;
        printf("%s: layers %u-%u, %" PRIu64 " tensors, %" PRIu64 " bytes\n", path, first[s], last,
               nt, bytes);
    }
    gguf_close(f);
    return 0;
}
