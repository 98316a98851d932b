/* GGUF reader (mmap, every field bounds-checked) and writer.
 *
 * Format (all little-endian):
 *   "GGUF" u32 version (2 or 3) u64 n_tensors u64 n_kv
 *   n_kv x { string key, u32 type, value }
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
 *   padding to general.alignment (u32, power of two, default 32)
 *   tensor data; each tensor's offset is relative to here and aligned.
 * A string is u64 length + bytes (no NUL). An array value is u32 element type,
 * u64 count, then count values of that type (arrays may nest).
 *
 * Split models (llama.cpp's gguf-split): NAME-00001-of-0000N.gguf ... each
 * part a whole GGUF file with split.no (u16, 0-based), split.count (u16) and
 * split.tensors.count (i32, the model's total) and its share of the
 * tensors; the first part holds the model's metadata. gguf_open() of the
 * first part opens the others by name and presents one model: metadata of
 * the first part, every part's tensors (their data inside each part's own
 * mapping, `offset` relative to that part's data section). A tensor in two
 * parts is an error unless both hold the same bytes: a copy (ours:
 * rope_freqs.weight in every stage's part), taken once.
 *
 * Hostile input: every count is checked against the bytes left before any
 * allocation (a kv takes at least 13 bytes, a string 8, a tensor info 32), so
 * allocations are bounded by a small multiple of the file size. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf_keys.h"
#include "llorch/error.h"
#include "ggml_type.h"
#include "util.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian fields in place"
#endif

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_NESTING 8
#define GGUF_KV_MIN_BYTES 13     /* key length 8 + type 4 + 1-byte value */
#define GGUF_TENSOR_MIN_BYTES 32 /* name length 8 + n_dims 4 + ne 8 + type 4 + offset 8 */

struct gguf_kv {
    struct gguf_str key;
    enum gguf_type type;
    uint64_t val_off; /* file offset of the value (after the type tag) */
    uint64_t val_len; /* encoded bytes of the value */
    union {
        uint64_t u;
        int64_t i;
        double f;
    } num; /* integer, float and bool scalars */
    struct gguf_str str;
    struct gguf_arr arr;
    uint64_t *str_index; /* string arrays: file offset of each element's length */
};

struct gguf_file {
    const uint8_t *base;
    uint64_t size;
    bool mapped;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset;
    uint64_t n_kv;
    struct gguf_kv *kv;
    uint64_t n_tensors;
    struct gguf_tensor *tensors;
    /* open-addressing hash tables of indices + 1 (0 = empty) */
    uint64_t *kv_hash;
    uint64_t kv_hash_cap;
    uint64_t *t_hash;
    uint64_t t_hash_cap;
    /* a split model: the parts after the first (owned), split.count - 1 */
    struct gguf_file **parts;
    uint32_t n_parts;
};

static const char *const type_names[GGUF_TYPE_COUNT_] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64",
};

static const uint8_t type_sizes[GGUF_TYPE_COUNT_] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

LLORCH_API const char *gguf_type_name(enum gguf_type t)
{
    if ((unsigned)t >= GGUF_TYPE_COUNT_)
        return "unknown";
    return type_names[t];
}

LLORCH_API uint64_t gguf_type_size(enum gguf_type t)
{
    if ((unsigned)t >= GGUF_TYPE_COUNT_)
        return 0;
    return type_sizes[t];
}

/* ---- hashing ---- */

static uint64_t hash_bytes(const char *p, uint64_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (uint64_t i = 0; i < n; i++) {
        h ^= (uint8_t)p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static bool str_eq(struct gguf_str s, const char *p, uint64_t n)
{
    return s.len == n && memcmp(s.ptr, p, n) == 0;
}

static uint64_t hash_cap_for(uint64_t n)
{
    uint64_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    return cap;
}

/* Returns the slot holding name, or the empty slot where it would go. */
static uint64_t *hash_slot(uint64_t *tab, uint64_t cap, const char *p, uint64_t n,
                           const void *items, size_t stride, size_t name_off)
{
    uint64_t i = hash_bytes(p, n) & (cap - 1);
    for (;;) {
        uint64_t v = tab[i];
        if (v == 0)
            return &tab[i];
        const struct gguf_str *s =
            (const struct gguf_str *)((const char *)items + (v - 1) * stride + name_off);
        if (str_eq(*s, p, n))
            return &tab[i];
        i = (i + 1) & (cap - 1);
    }
}

/* ---- reading ---- */

struct rd {
    const uint8_t *b;
    uint64_t size;
    uint64_t pos;
    char *err;
    size_t errlen;
    const char *what; /* "key 'x'" or "tensor 'y'" for messages */
    char whatbuf[160];
};

static int fail(struct rd *r, uint64_t off, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct rd *r, uint64_t off, int code, const char *fmt, ...)
{
    if (r->err && r->errlen) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (r->what)
            snprintf(r->err, r->errlen, "%s at offset %llu: %s", r->what, (unsigned long long)off,
                     msg);
        else
            snprintf(r->err, r->errlen, "offset %llu: %s", (unsigned long long)off, msg);
    }
    return code;
}

static void set_what(struct rd *r, const char *kind, struct gguf_str name)
{
    /* names come from the file: print at most 100 bytes, no control chars */
    char clean[104];
    uint64_t n = name.len < 100 ? name.len : 100;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name.ptr[i];
        clean[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    clean[n] = 0;
    snprintf(r->whatbuf, sizeof r->whatbuf, "%s '%s%s'", kind, clean, name.len > 100 ? "..." : "");
    r->what = r->whatbuf;
}

static uint64_t rd_left(const struct rd *r)
{
    return r->size - r->pos;
}

static int rd_bytes(struct rd *r, void *out, uint64_t n, const char *field)
{
    if (rd_left(r) < n)
        return fail(r, r->pos, LLORCH_EFORMAT, "%s runs past end of file (size %llu)", field,
                    (unsigned long long)r->size);
    memcpy(out, r->b + r->pos, n);
    r->pos += n;
    return 0;
}

static int rd_u32(struct rd *r, uint32_t *v, const char *field)
{
    return rd_bytes(r, v, 4, field);
}

static int rd_u64(struct rd *r, uint64_t *v, const char *field)
{
    return rd_bytes(r, v, 8, field);
}

static int rd_str(struct rd *r, struct gguf_str *s, const char *field)
{
    uint64_t at = r->pos, len = 0;
    int rc = rd_u64(r, &len, field);
    if (rc)
        return rc;
    if (len > rd_left(r))
        return fail(r, at, LLORCH_EFORMAT, "%s length %llu runs past end of file (%llu bytes left)",
                    field, (unsigned long long)len, (unsigned long long)rd_left(r));
    s->ptr = (const char *)r->b + r->pos;
    s->len = len;
    r->pos += len;
    return 0;
}

/* Skips (validates) one value of type t; depth counts array nesting. */
static int skip_value(struct rd *r, enum gguf_type t, int depth)
{
    uint64_t at = r->pos;
    if ((unsigned)t >= GGUF_TYPE_COUNT_)
        return fail(r, at, LLORCH_EFORMAT, "unknown value type %u", (unsigned)t);
    if (t == GGUF_TYPE_STRING) {
        struct gguf_str s;
        return rd_str(r, &s, "string");
    }
    if (t != GGUF_TYPE_ARRAY) {
        if (rd_left(r) < type_sizes[t])
            return fail(r, at, LLORCH_EFORMAT, "%s value runs past end of file", type_names[t]);
        r->pos += type_sizes[t];
        return 0;
    }
    if (depth >= GGUF_MAX_NESTING)
        return fail(r, at, LLORCH_EFORMAT, "arrays nested deeper than %d", GGUF_MAX_NESTING);
    uint32_t et = 0;
    uint64_t count = 0;
    int rc = rd_u32(r, &et, "array type");
    if (!rc)
        rc = rd_u64(r, &count, "array count");
    if (rc)
        return rc;
    if (et >= GGUF_TYPE_COUNT_)
        return fail(r, at, LLORCH_EFORMAT, "unknown array element type %u", et);
    if (et == GGUF_TYPE_STRING || et == GGUF_TYPE_ARRAY) {
        uint64_t min = et == GGUF_TYPE_STRING ? 8 : 12;
        if (count > rd_left(r) / min)
            return fail(r, at, LLORCH_EFORMAT, "array count %llu exceeds what the %llu bytes left can hold",
                        (unsigned long long)count, (unsigned long long)rd_left(r));
        for (uint64_t i = 0; i < count; i++)
            if ((rc = skip_value(r, (enum gguf_type)et, depth + 1)))
                return rc;
        return 0;
    }
    uint64_t bytes;
    if (llorch_mul_overflows(count, type_sizes[et], &bytes) || bytes > rd_left(r))
        return fail(r, at, LLORCH_EFORMAT, "array of %llu %s runs past end of file",
                    (unsigned long long)count, type_names[et]);
    r->pos += bytes;
    return 0;
}

static int read_kv(struct rd *r, struct gguf_kv *kv)
{
    int rc = rd_str(r, &kv->key, "key");
    if (rc)
        return rc;
    set_what(r, "key", kv->key);
    uint32_t t = 0;
    if ((rc = rd_u32(r, &t, "value type")))
        return rc;
    if (t >= GGUF_TYPE_COUNT_)
        return fail(r, r->pos - 4, LLORCH_EFORMAT, "unknown value type %u", t);
    kv->type = (enum gguf_type)t;
    kv->val_off = r->pos;
    const uint8_t *p = r->b + r->pos;
    switch (kv->type) {
    case GGUF_TYPE_UINT8:
        if ((rc = skip_value(r, kv->type, 0)))
            return rc;
        kv->num.u = p[0];
        break;
    case GGUF_TYPE_INT8:
        if ((rc = skip_value(r, kv->type, 0)))
            return rc;
        kv->num.i = (int8_t)p[0];
        break;
    case GGUF_TYPE_BOOL:
        if ((rc = skip_value(r, kv->type, 0)))
            return rc;
        kv->num.u = p[0] != 0;
        break;
    case GGUF_TYPE_UINT16: {
        uint16_t v = 0;
        if ((rc = rd_bytes(r, &v, 2, "u16 value")))
            return rc;
        kv->num.u = v;
        break;
    }
    case GGUF_TYPE_INT16: {
        int16_t v = 0;
        if ((rc = rd_bytes(r, &v, 2, "i16 value")))
            return rc;
        kv->num.i = v;
        break;
    }
    case GGUF_TYPE_UINT32: {
        uint32_t v = 0;
        if ((rc = rd_bytes(r, &v, 4, "u32 value")))
            return rc;
        kv->num.u = v;
        break;
    }
    case GGUF_TYPE_INT32: {
        int32_t v = 0;
        if ((rc = rd_bytes(r, &v, 4, "i32 value")))
            return rc;
        kv->num.i = v;
        break;
    }
    case GGUF_TYPE_FLOAT32: {
        float v = 0;
        if ((rc = rd_bytes(r, &v, 4, "f32 value")))
            return rc;
        kv->num.f = v;
        break;
    }
    case GGUF_TYPE_UINT64:
        if ((rc = rd_bytes(r, &kv->num.u, 8, "u64 value")))
            return rc;
        break;
    case GGUF_TYPE_INT64:
        if ((rc = rd_bytes(r, &kv->num.i, 8, "i64 value")))
            return rc;
        break;
    case GGUF_TYPE_FLOAT64:
        if ((rc = rd_bytes(r, &kv->num.f, 8, "f64 value")))
            return rc;
        break;
    case GGUF_TYPE_STRING:
        if ((rc = rd_str(r, &kv->str, "string value")))
            return rc;
        break;
    case GGUF_TYPE_ARRAY: {
        uint32_t et = 0;
        uint64_t count = 0;
        if ((rc = rd_u32(r, &et, "array type")) || (rc = rd_u64(r, &count, "array count")))
            return rc;
        if (et >= GGUF_TYPE_COUNT_)
            return fail(r, kv->val_off, LLORCH_EFORMAT, "unknown array element type %u", et);
        kv->arr.type = (enum gguf_type)et;
        kv->arr.count = count;
        kv->arr.data = r->b + r->pos;
        if (et == GGUF_TYPE_STRING) {
            /* index every element so gguf_arr_str is O(1); each string takes
             * at least its 8-byte length, which bounds the allocation */
            if (count > rd_left(r) / 8)
                return fail(r, kv->val_off, LLORCH_EFORMAT,
                            "string array count %llu exceeds what the %llu bytes left can hold",
                            (unsigned long long)count, (unsigned long long)rd_left(r));
            kv->str_index = malloc((count ? count : 1) * sizeof *kv->str_index);
            if (!kv->str_index)
                return fail(r, kv->val_off, LLORCH_ENOMEM, "out of memory indexing %llu strings",
                            (unsigned long long)count);
            for (uint64_t i = 0; i < count; i++) {
                kv->str_index[i] = r->pos;
                uint64_t len;
                if (rd_left(r) < 8)
                    return fail(r, r->pos, LLORCH_EFORMAT,
                                "string %llu of %llu runs past end of file",
                                (unsigned long long)i, (unsigned long long)count);
                memcpy(&len, r->b + r->pos, 8);
                if (len > rd_left(r) - 8)
                    return fail(r, r->pos, LLORCH_EFORMAT,
                                "string %llu length %llu runs past end of file",
                                (unsigned long long)i, (unsigned long long)len);
                r->pos += 8 + len;
            }
            kv->arr.data = kv->str_index;
        } else {
            r->pos = kv->val_off;
            if ((rc = skip_value(r, GGUF_TYPE_ARRAY, 0)))
                return rc;
        }
        break;
    }
    default:
        return fail(r, kv->val_off, LLORCH_EFORMAT, "unknown value type %u", t);
    }
    kv->val_len = r->pos - kv->val_off;
    return 0;
}

static int read_tensor_info(struct rd *r, struct gguf_tensor *t)
{
    int rc = rd_str(r, &t->name, "tensor name");
    if (rc)
        return rc;
    set_what(r, "tensor", t->name);
    uint64_t at = r->pos;
    uint32_t n_dims = 0, type = 0;
    if ((rc = rd_u32(r, &n_dims, "n_dims")))
        return rc;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return fail(r, at, LLORCH_EFORMAT, "n_dims %u outside 1..%d", n_dims, GGUF_MAX_DIMS);
    t->n_dims = n_dims;
    for (int i = 0; i < GGUF_MAX_DIMS; i++)
        t->ne[i] = 1;
    uint64_t n = 1;
    for (uint32_t i = 0; i < n_dims; i++) {
        at = r->pos;
        if ((rc = rd_u64(r, &t->ne[i], "dimension")))
            return rc;
        /* ggml keeps ne as int64: larger values are negative there */
        if (t->ne[i] > (uint64_t)INT64_MAX || llorch_mul_overflows(n, t->ne[i], &n) ||
            n > (uint64_t)INT64_MAX)
            return fail(r, at, LLORCH_EFORMAT, "dimension %u = %llu makes the element count overflow",
                        i, (unsigned long long)t->ne[i]);
    }
    t->n_elements = n;
    at = r->pos;
    if ((rc = rd_u32(r, &type, "tensor type")))
        return rc;
    t->type = (enum ggml_type)type;
    if (!ggml_type_known(t->type))
        return fail(r, at, LLORCH_EFORMAT, "unknown tensor type %u", type);
    uint64_t blck = ggml_type_block_elems(t->type);
    if (t->ne[0] % blck)
        return fail(r, at, LLORCH_EFORMAT, "row length %llu is not a multiple of the %s block size %llu",
                    (unsigned long long)t->ne[0], ggml_type_name(t->type), (unsigned long long)blck);
    uint64_t row;
    if (ggml_type_row_bytes(t->type, t->ne[0], &row) || llorch_mul_overflows(row, n / (t->ne[0] ? t->ne[0] : 1), &t->nbytes))
        return fail(r, at, LLORCH_EFORMAT, "byte size overflows");
    if (t->ne[0] == 0)
        t->nbytes = 0;
    at = r->pos;
    if ((rc = rd_u64(r, &t->offset, "tensor offset")))
        return rc;
    return 0;
}

static void file_free_tables(struct gguf_file *f)
{
    if (f->kv)
        for (uint64_t i = 0; i < f->n_kv; i++)
            free(f->kv[i].str_index);
    free(f->kv);
    free(f->tensors);
    free(f->kv_hash);
    free(f->t_hash);
}

static int parse(struct gguf_file *f, char *err, size_t errlen)
{
    struct rd r = {.b = f->base, .size = f->size, .err = err, .errlen = errlen};
    int rc;
    if (f->size < 4 || memcmp(f->base, GGUF_MAGIC, 4))
        return fail(&r, 0, LLORCH_EFORMAT, "bad magic (not a GGUF file)");
    r.pos = 4;
    if ((rc = rd_u32(&r, &f->version, "version")))
        return rc;
    if (f->version == 1)
        return fail(&r, 4, LLORCH_EUNSUPPORTED, "GGUF version 1 is not supported (only v2 and v3)");
    if (f->version != 2 && f->version != 3) {
        if ((f->version & 0xffff) == 0)
            return fail(&r, 4, LLORCH_EUNSUPPORTED,
                        "version 0x%08x looks big-endian; only little-endian GGUF is supported",
                        f->version);
        return fail(&r, 4, LLORCH_EUNSUPPORTED, "GGUF version %u is not supported (only v2 and v3)",
                    f->version);
    }
    if ((rc = rd_u64(&r, &f->n_tensors, "tensor count")) || (rc = rd_u64(&r, &f->n_kv, "kv count")))
        return rc;
    /* each kv and tensor info takes a minimum of bytes: bounds the tables */
    if (f->n_kv > rd_left(&r) / GGUF_KV_MIN_BYTES)
        return fail(&r, 16, LLORCH_EFORMAT, "kv count %llu exceeds what the %llu bytes left can hold",
                    (unsigned long long)f->n_kv, (unsigned long long)rd_left(&r));
    if (f->n_tensors > rd_left(&r) / GGUF_TENSOR_MIN_BYTES)
        return fail(&r, 8, LLORCH_EFORMAT,
                    "tensor count %llu exceeds what the %llu bytes left can hold",
                    (unsigned long long)f->n_tensors, (unsigned long long)rd_left(&r));

    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->kv_hash_cap = hash_cap_for(f->n_kv);
    f->kv_hash = calloc(f->kv_hash_cap, sizeof *f->kv_hash);
    if (!f->kv || !f->kv_hash)
        return fail(&r, 0, LLORCH_ENOMEM, "out of memory");
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        struct gguf_kv *kv = &f->kv[i];
        uint64_t at = r.pos;
        r.what = NULL;
        if ((rc = read_kv(&r, kv))) {
            if (!r.what) { /* the key itself failed: say which pair */
                char tmp[256];
                snprintf(tmp, sizeof tmp, "%s", err && errlen ? err : "");
                if (err && errlen)
                    snprintf(err, errlen, "kv %llu: %s", (unsigned long long)i, tmp);
            }
            return rc;
        }
        uint64_t *slot = hash_slot(f->kv_hash, f->kv_hash_cap, kv->key.ptr, kv->key.len, f->kv,
                                   sizeof *f->kv, offsetof(struct gguf_kv, key));
        if (*slot)
            return fail(&r, at, LLORCH_EFORMAT, "duplicate key");
        *slot = i + 1;
        if (str_eq(kv->key, LLORCH_GGUF_KEY_ALIGNMENT, 17)) {
            if (kv->type != GGUF_TYPE_UINT32)
                return fail(&r, kv->val_off, LLORCH_EFORMAT, "must be u32, is %s",
                            type_names[kv->type]);
            uint64_t a = kv->num.u;
            if (a == 0 || (a & (a - 1)))
                return fail(&r, kv->val_off, LLORCH_EFORMAT, "alignment %llu is not a power of two",
                            (unsigned long long)a);
            f->alignment = a;
        }
    }

    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    f->t_hash_cap = hash_cap_for(f->n_tensors);
    f->t_hash = calloc(f->t_hash_cap, sizeof *f->t_hash);
    if (!f->tensors || !f->t_hash)
        return fail(&r, 0, LLORCH_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        uint64_t at = r.pos;
        r.what = NULL;
        if ((rc = read_tensor_info(&r, t))) {
            if (!r.what) {
                char tmp[256];
                snprintf(tmp, sizeof tmp, "%s", err && errlen ? err : "");
                if (err && errlen)
                    snprintf(err, errlen, "tensor %llu: %s", (unsigned long long)i, tmp);
            }
            return rc;
        }
        uint64_t *slot = hash_slot(f->t_hash, f->t_hash_cap, t->name.ptr, t->name.len, f->tensors,
                                   sizeof *f->tensors, offsetof(struct gguf_tensor, name));
        if (*slot)
            return fail(&r, at, LLORCH_EFORMAT, "duplicate tensor name");
        *slot = i + 1;
    }
    r.what = NULL;

    uint64_t data_off;
    if (llorch_add_overflows(r.pos, f->alignment - 1, &data_off))
        return fail(&r, r.pos, LLORCH_EFORMAT, "data offset overflows");
    data_off &= ~(f->alignment - 1);
    f->data_offset = data_off;
    if (f->n_tensors == 0)
        return 0; /* vocab-only files may end without padding */
    if (data_off > f->size)
        return fail(&r, r.pos, LLORCH_EFORMAT,
                    "tensor data section at %llu starts past end of file (size %llu)",
                    (unsigned long long)data_off, (unsigned long long)f->size);
    uint64_t data_size = f->size - data_off;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        set_what(&r, "tensor", t->name);
        uint64_t end;
        if (t->offset % f->alignment)
            return fail(&r, data_off, LLORCH_EFORMAT,
                        "data offset %llu is not a multiple of the alignment %llu",
                        (unsigned long long)t->offset, (unsigned long long)f->alignment);
        if (llorch_add_overflows(t->offset, t->nbytes, &end) || end > data_size)
            return fail(&r, data_off, LLORCH_EFORMAT,
                        "data [%llu, +%llu) runs past the end of the data section (%llu bytes)",
                        (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                        (unsigned long long)data_size);
        t->data = f->base + data_off + t->offset;
    }
    return 0;
}

static int open_common(struct gguf_file *f, struct gguf_file **out, char *err, size_t errlen)
{
    int rc = parse(f, err, errlen);
    if (rc) {
        gguf_close(f);
        *out = NULL;
        return rc;
    }
    *out = f;
    return 0;
}

LLORCH_API int gguf_open_buffer(struct gguf_file **out, const void *buf, size_t len, char *err,
                                size_t errlen)
{
    if (err && errlen)
        err[0] = 0;
    *out = NULL;
    struct gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return LLORCH_ENOMEM;
    }
    f->base = buf;
    f->size = len;
    return open_common(f, out, err, errlen);
}

static int gguf_open_one(struct gguf_file **out, const char *path, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = 0;
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = llorch_err_from_errno(errno);
        if (err && errlen)
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return rc;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        int e = errno;
        close(fd);
        if (err && errlen)
            snprintf(err, errlen, "%s: %s", path, S_ISREG(st.st_mode) ? strerror(e) : "not a regular file");
        return LLORCH_EIO;
    }
    if (st.st_size < 4) {
        close(fd);
        if (err && errlen)
            snprintf(err, errlen, "%s: offset 0: file of %lld bytes is too short for a GGUF header",
                     path, (long long)st.st_size);
        return LLORCH_EFORMAT;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) {
        if (err && errlen)
            snprintf(err, errlen, "%s: mmap: %s", path, strerror(e));
        return llorch_err_from_errno(e);
    }
    struct gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        munmap(map, (size_t)st.st_size);
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return LLORCH_ENOMEM;
    }
    f->base = map;
    f->size = (uint64_t)st.st_size;
    f->mapped = true;
    int rc = open_common(f, out, err, errlen);
    if (rc && err && errlen) {
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s", err);
        snprintf(err, errlen, "%s: %s", path, tmp);
    }
    return rc;
}

/* ---- split models ---- */

LLORCH_API int gguf_split_path(char *out, size_t n, const char *prefix, uint32_t no, uint32_t count)
{
    if (count == 0 || no >= count || count > LLORCH_GGUF_SPLIT_MAX)
        return LLORCH_EINVAL;
    int w = snprintf(out, n, "%s-%05u-of-%05u.gguf", prefix, no + 1, count);
    return w < 0 || (size_t)w >= n ? LLORCH_ETOOBIG : 0;
}

/* split.no and split.count of an opened part; count 0 when not split. */
static int split_keys(const struct gguf_file *f, uint32_t *no, uint32_t *count)
{
    *no = 0;
    *count = 0;
    int rc = gguf_get_u32(f, LLORCH_GGUF_KEY_SPLIT_COUNT, count);
    if (rc == LLORCH_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    rc = gguf_get_u32(f, LLORCH_GGUF_KEY_SPLIT_NO, no);
    if (rc == LLORCH_ENOTFOUND)
        *no = 0;
    else if (rc)
        return rc;
    return 0;
}

/* The first part's own tensor of that name, or NULL (before the merge). */
static const struct gguf_tensor *split_first_has(const struct gguf_file *first,
                                                 struct gguf_str name)
{
    uint64_t *slot = hash_slot(first->t_hash, first->t_hash_cap, name.ptr, name.len,
                               first->tensors, sizeof *first->tensors,
                               offsetof(struct gguf_tensor, name));
    return *slot ? &first->tensors[*slot - 1] : NULL;
}

/* A later part's copy of a tensor: same name, type, shape and bytes as
 * one already taken (`llorch-cli split` copies rope_freqs.weight, read by
 * every layer, into every part so that a stage's own file holds it). */
static bool split_is_copy(const struct gguf_tensor *a, const struct gguf_tensor *b)
{
    return a->type == b->type && a->n_dims == b->n_dims && !memcmp(a->ne, b->ne, sizeof a->ne) &&
           a->nbytes == b->nbytes && !memcmp(a->data, b->data, (size_t)a->nbytes);
}

/* Whether want takes any tensor of part p (want NULL: all) that the first
 * part does not hold already. */
static bool split_part_wanted(const struct gguf_file *first, const struct gguf_file *p,
                              gguf_want_fn want, void *ctx)
{
    for (uint64_t j = 0; !want || j < p->n_tensors; j++)
        if (!want || (!split_first_has(first, p->tensors[j].name) &&
                      want(ctx, first, &p->tensors[j])))
            return true;
    return false;
}

/* f is the first part, opened from path: opens the others and merges their
 * tensors into f's table; a part want takes nothing of is closed again
 * (its slot in f->parts stays NULL). */
static int split_join(struct gguf_file *f, const char *path, uint32_t count, gguf_want_fn want,
                      void *ctx, char *err, size_t errlen)
{
    char suffix[64], prefix[4096], part[4200];
    snprintf(suffix, sizeof suffix, "-%05u-of-%05u.gguf", 1u, count);
    size_t plen = strlen(path), slen = strlen(suffix);
    if (plen <= slen || strcmp(path + plen - slen, suffix) || plen - slen >= sizeof prefix)
        return llorch_errf(err, errlen, LLORCH_EFORMAT,
                           "%s: part 1 of a model split in %u parts, but the name does not end in "
                           "'%s' (the other parts are found by name)",
                           path, count, suffix);
    memcpy(prefix, path, plen - slen);
    prefix[plen - slen] = 0;
    f->parts = calloc(count - 1, sizeof *f->parts);
    if (!f->parts)
        return LLORCH_ENOMEM;
    uint64_t total = f->n_tensors, kept = f->n_tensors;
    for (uint32_t i = 1; i < count; i++) {
        (void)gguf_split_path(part, sizeof part, prefix, i, count);
        int rc = gguf_open_one(&f->parts[i - 1], part, err, errlen);
        if (rc)
            return rc; /* err names the part */
        f->n_parts = i;
        uint32_t no, cnt;
        rc = split_keys(f->parts[i - 1], &no, &cnt);
        if (rc || no != i || cnt != count)
            return llorch_errf(err, errlen, LLORCH_EFORMAT,
                               "%s: expected split.no %u and split.count %u, found %u and %u", part,
                               i, count, no, cnt);
        if (llorch_add_overflows(total, f->parts[i - 1]->n_tensors, &total))
            return LLORCH_EFORMAT;
        if (!split_part_wanted(f, f->parts[i - 1], want, ctx)) {
            gguf_close(f->parts[i - 1]);
            f->parts[i - 1] = NULL;
        } else {
            kept += f->parts[i - 1]->n_tensors;
        }
    }
    int32_t declared;
    if (gguf_get_i32(f, LLORCH_GGUF_KEY_SPLIT_TENSORS_COUNT, &declared) == 0 &&
        (declared < 0 || (uint64_t)declared != total))
        return llorch_errf(err, errlen, LLORCH_EFORMAT,
                           "%s: split.tensors.count is %d but the %u parts hold %llu tensors", path,
                           declared, count, (unsigned long long)total);
    /* One table over every kept part's tensors. */
    struct gguf_tensor *all = calloc(kept ? kept : 1, sizeof *all);
    uint64_t cap = hash_cap_for(kept);
    uint64_t *hash = calloc(cap, sizeof *hash);
    if (!all || !hash) {
        free(all);
        free(hash);
        return LLORCH_ENOMEM;
    }
    uint64_t n = 0;
    for (uint32_t i = 0; i < count; i++) {
        const struct gguf_file *p = i ? f->parts[i - 1] : f;
        for (uint64_t j = 0; p && j < p->n_tensors; j++) {
            all[n] = p->tensors[j];
            uint64_t *slot = hash_slot(hash, cap, all[n].name.ptr, all[n].name.len, all,
                                       sizeof *all, offsetof(struct gguf_tensor, name));
            if (*slot && split_is_copy(&all[*slot - 1], &all[n]))
                continue; /* a copy: the first one found stands */
            if (*slot) {
                int len = (int)LLORCH_MIN(all[n].name.len, (uint64_t)100);
                const char *name = all[n].name.ptr;
                free(all);
                free(hash);
                return llorch_errf(err, errlen, LLORCH_EFORMAT,
                                   "%s: tensor '%.*s' is in more than one part of the split model",
                                   path, len, name);
            }
            *slot = n + 1;
            n++;
        }
    }
    free(f->tensors);
    free(f->t_hash);
    f->tensors = all;
    f->t_hash = hash;
    f->t_hash_cap = cap;
    f->n_tensors = n;
    return 0;
}

/* gguf_open (want NULL, alone false) and gguf_open_some. */
static int split_open(struct gguf_file **out, const char *path, gguf_want_fn want, void *ctx,
                      bool alone, char *err, size_t errlen)
{
    int rc = gguf_open_one(out, path, err, errlen);
    if (rc)
        return rc;
    struct gguf_file *f = *out;
    uint32_t no, count;
    rc = split_keys(f, &no, &count);
    if (rc)
        rc = llorch_errf(err, errlen, LLORCH_EFORMAT,
                         "%s: split.no or split.count is not a "
                         "small integer",
                         path);
    else if (count > LLORCH_GGUF_SPLIT_MAX || (count > 0 && no >= count))
        rc = llorch_errf(err, errlen, LLORCH_EFORMAT,
                         "%s: split.no %u of split.count %u is out of range (at most %u parts)",
                         path, no, count, LLORCH_GGUF_SPLIT_MAX);
    else if (count > 1 && no != 0 && alone)
        return 0; /* a later part on its own */
    else if (count > 1 && no != 0)
        rc = llorch_errf(err, errlen, LLORCH_EINVAL,
                         "%s: part %u of a model split in %u parts: open the first part "
                         "(-00001-of-%05u.gguf), which finds the others",
                         path, no + 1, count, count);
    else if (count > 1)
        rc = split_join(f, path, count, want, ctx, err, errlen);
    if (rc) {
        gguf_close(f);
        *out = NULL;
    }
    return rc;
}

LLORCH_API int gguf_open(struct gguf_file **out, const char *path, char *err, size_t errlen)
{
    return split_open(out, path, NULL, NULL, false, err, errlen);
}

LLORCH_API int gguf_open_some(struct gguf_file **out, const char *path, gguf_want_fn want,
                              void *ctx, char *err, size_t errlen)
{
    return split_open(out, path, want, ctx, true, err, errlen);
}

LLORCH_API int gguf_open_part(struct gguf_file **out, const char *path, char *err, size_t errlen)
{
    return gguf_open_one(out, path, err, errlen);
}

LLORCH_API void gguf_release_pages(const struct gguf_file *f)
{
    if (f->mapped)
        (void)madvise((void *)f->base, (size_t)f->size, MADV_DONTNEED);
    for (uint32_t i = 0; i < f->n_parts; i++)
        if (f->parts[i])
            gguf_release_pages(f->parts[i]);
}

LLORCH_API uint32_t gguf_split_count(const struct gguf_file *f)
{
    return f->n_parts + 1;
}

LLORCH_API void gguf_close(struct gguf_file *f)
{
    if (!f)
        return;
    for (uint32_t i = 0; i < f->n_parts; i++)
        gguf_close(f->parts[i]);
    free(f->parts);
    file_free_tables(f);
    if (f->mapped)
        munmap((void *)f->base, (size_t)f->size);
    free(f);
}

LLORCH_API void gguf_tensor_release(const struct gguf_file *f, const struct gguf_tensor *t)
{
    /* Only whole pages of a file mapping: they fault back in from the file
     * if read again. A caller's buffer is never touched. */
    if (!f->mapped || !t->nbytes)
        return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t b = (uintptr_t)t->data, e = b + t->nbytes;
    const uintptr_t lo = (b + page - 1) & ~(page - 1), hi = e & ~(page - 1);
    if (hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

LLORCH_API uint32_t gguf_version(const struct gguf_file *f)
{
    return f->version;
}

LLORCH_API uint64_t gguf_alignment(const struct gguf_file *f)
{
    return f->alignment;
}

LLORCH_API uint64_t gguf_file_size(const struct gguf_file *f)
{
    uint64_t n = f->size;
    for (uint32_t i = 0; i < f->n_parts; i++)
        n += f->parts[i] ? f->parts[i]->size : 0;
    return n;
}

LLORCH_API uint64_t gguf_data_offset(const struct gguf_file *f)
{
    return f->data_offset;
}

/* ---- metadata getters ---- */

static const struct gguf_kv *kv_lookup(const struct gguf_file *f, const char *key)
{
    uint64_t n = strlen(key);
    uint64_t *slot = hash_slot(f->kv_hash, f->kv_hash_cap, key, n, f->kv, sizeof *f->kv,
                               offsetof(struct gguf_kv, key));
    return *slot ? &f->kv[*slot - 1] : NULL;
}

LLORCH_API uint64_t gguf_kv_count(const struct gguf_file *f)
{
    return f->n_kv;
}

LLORCH_API bool gguf_has_key(const struct gguf_file *f, const char *key)
{
    return kv_lookup(f, key) != NULL;
}

LLORCH_API int gguf_kv_find(const struct gguf_file *f, const char *key, uint64_t *index)
{
    const struct gguf_kv *kv = kv_lookup(f, key);
    if (!kv)
        return LLORCH_ENOTFOUND;
    *index = (uint64_t)(kv - f->kv);
    return 0;
}

LLORCH_API int gguf_key_type(const struct gguf_file *f, const char *key, enum gguf_type *type)
{
    const struct gguf_kv *kv = kv_lookup(f, key);
    if (!kv)
        return LLORCH_ENOTFOUND;
    *type = kv->type;
    return 0;
}

static bool type_is_signed_int(enum gguf_type t)
{
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 ||
           t == GGUF_TYPE_INT64;
}

static bool type_is_unsigned_int(enum gguf_type t)
{
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_UINT32 ||
           t == GGUF_TYPE_UINT64;
}

/* Integer value as (negative?, magnitude-ish) pair: fits checks per target. */
static int get_int(const struct gguf_file *f, const char *key, int64_t min, uint64_t max,
                   uint64_t *uv, int64_t *iv)
{
    const struct gguf_kv *kv = kv_lookup(f, key);
    if (!kv)
        return LLORCH_ENOTFOUND;
    if (type_is_unsigned_int(kv->type)) {
        if (kv->num.u > max)
            return LLORCH_ERANGE;
        *uv = kv->num.u;
        *iv = (int64_t)kv->num.u;
        return 0;
    }
    if (type_is_signed_int(kv->type)) {
        if (kv->num.i < min || (kv->num.i > 0 && (uint64_t)kv->num.i > max))
            return LLORCH_ERANGE;
        *iv = kv->num.i;
        *uv = (uint64_t)kv->num.i;
        return 0;
    }
    return LLORCH_EFORMAT;
}

LLORCH_API int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out)
{
    uint64_t u;
    int64_t i;
    int rc = get_int(f, key, 0, UINT32_MAX, &u, &i);
    if (!rc)
        *out = (uint32_t)u;
    return rc;
}

LLORCH_API int gguf_get_i32(const struct gguf_file *f, const char *key, int32_t *out)
{
    uint64_t u;
    int64_t i;
    int rc = get_int(f, key, INT32_MIN, INT32_MAX, &u, &i);
    if (!rc)
        *out = (int32_t)i;
    return rc;
}

LLORCH_API int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out)
{
    uint64_t u;
    int64_t i;
    int rc = get_int(f, key, 0, UINT64_MAX, &u, &i);
    if (!rc)
        *out = u;
    return rc;
}

LLORCH_API int gguf_get_f32(const struct gguf_file *f, const char *key, float *out)
{
    const struct gguf_kv *kv = kv_lookup(f, key);
    if (!kv)
        return LLORCH_ENOTFOUND;
    if (kv->type != GGUF_TYPE_FLOAT32 && kv->type != GGUF_TYPE_FLOAT64)
        return LLORCH_EFORMAT;
    *out = (float)kv->num.f;
    return 0;
}

LLORCH_API int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out)
{
    const struct gguf_kv *kv = kv_lookup(f, key);
    if (!kv)
        return LLORCH_ENOTFOUND;
    if (kv->type != GGUF_TYPE_BOOL)
        return LLORCH_EFORMAT;
    *out = kv->num.u != 0;
    return 0;
}

LLORCH_API int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out)
{
    const struct gguf_kv *kv = kv_lookup(f, key);
    if (!kv)
        return LLORCH_ENOTFOUND;
    if (kv->type != GGUF_TYPE_STRING)
        return LLORCH_EFORMAT;
    *out = kv->str;
    return 0;
}

LLORCH_API int gguf_get_arr(const struct gguf_file *f, const char *key, struct gguf_arr *out)
{
    const struct gguf_kv *kv = kv_lookup(f, key);
    if (!kv)
        return LLORCH_ENOTFOUND;
    if (kv->type != GGUF_TYPE_ARRAY)
        return LLORCH_EFORMAT;
    *out = kv->arr;
    return 0;
}

LLORCH_API int gguf_arr_str(const struct gguf_file *f, const struct gguf_arr *arr, uint64_t i,
                            struct gguf_str *out)
{
    if (arr->type != GGUF_TYPE_STRING)
        return LLORCH_EFORMAT;
    if (i >= arr->count)
        return LLORCH_ERANGE;
    /* for string arrays data is the offset index built at open */
    uint64_t off = ((const uint64_t *)arr->data)[i];
    memcpy(&out->len, f->base + off, 8);
    out->ptr = (const char *)f->base + off + 8;
    return 0;
}

LLORCH_API int gguf_kv_at(const struct gguf_file *f, uint64_t i, struct gguf_str *key,
                          enum gguf_type *type)
{
    if (i >= f->n_kv)
        return LLORCH_ERANGE;
    if (key)
        *key = f->kv[i].key;
    if (type)
        *type = f->kv[i].type;
    return 0;
}

LLORCH_API int gguf_kv_raw_at(const struct gguf_file *f, uint64_t i, const void **data,
                              uint64_t *len)
{
    if (i >= f->n_kv)
        return LLORCH_ERANGE;
    *data = f->base + f->kv[i].val_off;
    *len = f->kv[i].val_len;
    return 0;
}

LLORCH_API int gguf_kv_arr_at(const struct gguf_file *f, uint64_t i, struct gguf_arr *out)
{
    if (i >= f->n_kv)
        return LLORCH_ERANGE;
    if (f->kv[i].type != GGUF_TYPE_ARRAY)
        return LLORCH_EFORMAT;
    *out = f->kv[i].arr;
    return 0;
}

/* ---- tensors ---- */

LLORCH_API uint64_t gguf_tensor_count(const struct gguf_file *f)
{
    return f->n_tensors;
}

LLORCH_API const struct gguf_tensor *gguf_tensor_at(const struct gguf_file *f, uint64_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

LLORCH_API const struct gguf_tensor *gguf_tensor_find(const struct gguf_file *f, const char *name)
{
    uint64_t *slot = hash_slot(f->t_hash, f->t_hash_cap, name, strlen(name), f->tensors,
                               sizeof *f->tensors, offsetof(struct gguf_tensor, name));
    return *slot ? &f->tensors[*slot - 1] : NULL;
}

/* ---- writer ---- */

struct wkv {
    char *key;
    enum gguf_type type;
    uint8_t *val;
    uint64_t len;
};

struct wtensor {
    char *name;
    enum ggml_type type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint8_t *data; /* NULL when streamed */
    uint64_t nbytes;
    uint64_t offset;
};

struct gguf_writer {
    uint64_t alignment;
    struct wkv *kv;
    uint64_t n_kv, cap_kv;
    struct wtensor *t;
    uint64_t n_t, cap_t;
    bool streaming;  /* tensors declared with add_tensor_info */
    bool in_memory;  /* tensors added with data */
    FILE *out;       /* open while streaming */
    uint64_t cur;    /* tensor being streamed */
    uint64_t cur_written;
    int stream_err;
};

LLORCH_API int gguf_writer_new(struct gguf_writer **out, uint32_t alignment)
{
    *out = NULL;
    if (alignment == 0)
        alignment = GGUF_DEFAULT_ALIGNMENT;
    if (alignment & (alignment - 1))
        return LLORCH_EINVAL;
    struct gguf_writer *w = calloc(1, sizeof *w);
    if (!w)
        return LLORCH_ENOMEM;
    w->alignment = alignment;
    *out = w;
    return 0;
}

LLORCH_API void gguf_writer_free(struct gguf_writer *w)
{
    if (!w)
        return;
    if (w->out)
        fclose(w->out);
    for (uint64_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (uint64_t i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free(w->kv);
    free(w->t);
    free(w);
}

/* Takes ownership of val. */
static int writer_put(struct gguf_writer *w, const char *key, enum gguf_type type, uint8_t *val,
                      uint64_t len)
{
    if (w->out) {
        free(val);
        return LLORCH_EINVAL; /* metadata is already written */
    }
    for (uint64_t i = 0; i < w->n_kv; i++) {
        if (!strcmp(w->kv[i].key, key)) {
            free(w->kv[i].val);
            w->kv[i].type = type;
            w->kv[i].val = val;
            w->kv[i].len = len;
            return 0;
        }
    }
    if (w->n_kv == w->cap_kv) {
        uint64_t cap = w->cap_kv ? 2 * w->cap_kv : 16;
        struct wkv *kv = realloc(w->kv, cap * sizeof *kv);
        if (!kv) {
            free(val);
            return LLORCH_ENOMEM;
        }
        w->kv = kv;
        w->cap_kv = cap;
    }
    char *k = strdup(key);
    if (!k) {
        free(val);
        return LLORCH_ENOMEM;
    }
    w->kv[w->n_kv++] = (struct wkv){k, type, val, len};
    return 0;
}

static int writer_put_copy(struct gguf_writer *w, const char *key, enum gguf_type type,
                           const void *bytes, uint64_t len)
{
    uint8_t *v = malloc(len ? len : 1);
    if (!v)
        return LLORCH_ENOMEM;
    if (len)
        memcpy(v, bytes, len);
    return writer_put(w, key, type, v, len);
}

LLORCH_API int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v)
{
    return writer_put_copy(w, key, GGUF_TYPE_UINT32, &v, 4);
}

LLORCH_API int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v)
{
    return writer_put_copy(w, key, GGUF_TYPE_INT32, &v, 4);
}

LLORCH_API int gguf_writer_set_u64(struct gguf_writer *w, const char *key, uint64_t v)
{
    return writer_put_copy(w, key, GGUF_TYPE_UINT64, &v, 8);
}

LLORCH_API int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v)
{
    return writer_put_copy(w, key, GGUF_TYPE_FLOAT32, &v, 4);
}

LLORCH_API int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return writer_put_copy(w, key, GGUF_TYPE_BOOL, &b, 1);
}

LLORCH_API int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v)
{
    uint64_t n = strlen(v);
    uint8_t *val = malloc(8 + n);
    if (!val)
        return LLORCH_ENOMEM;
    memcpy(val, &n, 8);
    memcpy(val + 8, v, n);
    return writer_put(w, key, GGUF_TYPE_STRING, val, 8 + n);
}

LLORCH_API int gguf_writer_set_arr(struct gguf_writer *w, const char *key, enum gguf_type elem_type,
                                   const void *data, uint64_t count)
{
    uint64_t es = gguf_type_size(elem_type), bytes, total;
    if (es == 0)
        return LLORCH_EINVAL;
    if (llorch_mul_overflows(es, count, &bytes) || llorch_add_overflows(bytes, 12, &total) ||
        total > SIZE_MAX)
        return LLORCH_EOVERFLOW;
    uint8_t *val = malloc(total);
    if (!val)
        return LLORCH_ENOMEM;
    uint32_t et = elem_type;
    memcpy(val, &et, 4);
    memcpy(val + 4, &count, 8);
    if (bytes)
        memcpy(val + 12, data, bytes);
    return writer_put(w, key, GGUF_TYPE_ARRAY, val, total);
}

LLORCH_API int gguf_writer_set_str_arr(struct gguf_writer *w, const char *key,
                                       const char *const *strs, const uint64_t *lens,
                                       uint64_t count)
{
    uint64_t total = 12;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t n = lens ? lens[i] : strlen(strs[i]);
        if (llorch_add_overflows(total, 8, &total) || llorch_add_overflows(total, n, &total))
            return LLORCH_EOVERFLOW;
    }
    if (total > SIZE_MAX)
        return LLORCH_EOVERFLOW;
    uint8_t *val = malloc(total), *p = val;
    if (!val)
        return LLORCH_ENOMEM;
    uint32_t et = GGUF_TYPE_STRING;
    memcpy(p, &et, 4);
    memcpy(p + 4, &count, 8);
    p += 12;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t n = lens ? lens[i] : strlen(strs[i]);
        memcpy(p, &n, 8);
        if (n)
            memcpy(p + 8, strs[i], n);
        p += 8 + n;
    }
    return writer_put(w, key, GGUF_TYPE_ARRAY, val, total);
}

LLORCH_API int gguf_writer_set_raw(struct gguf_writer *w, const char *key, enum gguf_type type,
                                   const void *data, uint64_t len)
{
    /* validate the bytes as exactly one value of `type` */
    struct rd r = {.b = data, .size = len};
    if ((unsigned)type >= GGUF_TYPE_COUNT_ || skip_value(&r, type, 0) || r.pos != len)
        return LLORCH_EINVAL;
    return writer_put_copy(w, key, type, data, len);
}

static int writer_tensor(struct gguf_writer *w, const char *name, enum ggml_type type,
                         uint32_t n_dims, const uint64_t *ne, struct wtensor *out)
{
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS || !ggml_type_known(type))
        return LLORCH_EINVAL;
    for (uint64_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name))
            return LLORCH_EEXISTS;
    memset(out, 0, sizeof *out);
    out->type = type;
    out->n_dims = n_dims;
    uint64_t n = 1;
    for (int i = 0; i < GGUF_MAX_DIMS; i++)
        out->ne[i] = 1;
    for (uint32_t i = 0; i < n_dims; i++) {
        out->ne[i] = ne[i];
        if (ne[i] > (uint64_t)INT64_MAX || llorch_mul_overflows(n, ne[i], &n))
            return LLORCH_EOVERFLOW;
    }
    uint64_t row;
    int rc = ggml_type_row_bytes(type, ne[0], &row);
    if (rc)
        return rc;
    if (ne[0] == 0)
        out->nbytes = 0;
    else if (llorch_mul_overflows(row, n / ne[0], &out->nbytes))
        return LLORCH_EOVERFLOW;
    if (w->n_t == w->cap_t) {
        uint64_t cap = w->cap_t ? 2 * w->cap_t : 64;
        struct wtensor *t = realloc(w->t, cap * sizeof *t);
        if (!t)
            return LLORCH_ENOMEM;
        w->t = t;
        w->cap_t = cap;
    }
    out->name = strdup(name);
    if (!out->name)
        return LLORCH_ENOMEM;
    uint64_t off = 0;
    if (w->n_t) {
        const struct wtensor *p = &w->t[w->n_t - 1];
        off = llorch_align_up(p->offset + p->nbytes, w->alignment);
    }
    out->offset = off;
    return 0;
}

LLORCH_API int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, enum ggml_type type,
                                      uint32_t n_dims, const uint64_t *ne, const void *data,
                                      uint64_t nbytes)
{
    if (w->streaming)
        return LLORCH_EINVAL;
    struct wtensor t;
    int rc = writer_tensor(w, name, type, n_dims, ne, &t);
    if (rc)
        return rc;
    if (t.nbytes != nbytes || nbytes > SIZE_MAX) {
        free(t.name);
        return LLORCH_EINVAL;
    }
    t.data = malloc(nbytes ? nbytes : 1);
    if (!t.data) {
        free(t.name);
        return LLORCH_ENOMEM;
    }
    if (nbytes)
        memcpy(t.data, data, nbytes);
    w->t[w->n_t++] = t;
    w->in_memory = true;
    return 0;
}

LLORCH_API int gguf_writer_add_tensor_info(struct gguf_writer *w, const char *name,
                                           enum ggml_type type, uint32_t n_dims, const uint64_t *ne)
{
    if (w->in_memory || w->out)
        return LLORCH_EINVAL;
    struct wtensor t;
    int rc = writer_tensor(w, name, type, n_dims, ne, &t);
    if (rc)
        return rc;
    w->t[w->n_t++] = t;
    w->streaming = true;
    return 0;
}

static const uint8_t zeros[256];

static int put(FILE *fp, const void *p, uint64_t n)
{
    return n && fwrite(p, 1, n, fp) != n ? LLORCH_EIO : 0;
}

static int put_pad(FILE *fp, uint64_t pos, uint64_t align)
{
    uint64_t pad = llorch_align_up(pos, align) - pos;
    while (pad) {
        uint64_t n = pad < sizeof zeros ? pad : sizeof zeros;
        if (put(fp, zeros, n))
            return LLORCH_EIO;
        pad -= n;
    }
    return 0;
}

/* Header, metadata, tensor infos and padding; returns the bytes written. */
static int write_head(struct gguf_writer *w, FILE *fp)
{
    /* general.alignment must agree with the layout we write */
    bool have_align = false;
    for (uint64_t i = 0; i < w->n_kv; i++) {
        if (!strcmp(w->kv[i].key, LLORCH_GGUF_KEY_ALIGNMENT)) {
            uint32_t a;
            if (w->kv[i].type != GGUF_TYPE_UINT32)
                return LLORCH_EINVAL;
            memcpy(&a, w->kv[i].val, 4);
            if (a != w->alignment)
                return LLORCH_EINVAL;
            have_align = true;
        }
    }
    if (!have_align && w->alignment != GGUF_DEFAULT_ALIGNMENT) {
        int rc = gguf_writer_set_u32(w, LLORCH_GGUF_KEY_ALIGNMENT, (uint32_t)w->alignment);
        if (rc)
            return rc;
    }
    uint64_t pos = 0;
    uint32_t version = 3;
    int rc = put(fp, GGUF_MAGIC, 4) | put(fp, &version, 4) | put(fp, &w->n_t, 8) |
             put(fp, &w->n_kv, 8);
    pos += 24;
    for (uint64_t i = 0; i < w->n_kv && !rc; i++) {
        const struct wkv *kv = &w->kv[i];
        uint64_t kl = strlen(kv->key);
        uint32_t t = kv->type;
        rc = put(fp, &kl, 8) | put(fp, kv->key, kl) | put(fp, &t, 4) | put(fp, kv->val, kv->len);
        pos += 12 + kl + kv->len;
    }
    for (uint64_t i = 0; i < w->n_t && !rc; i++) {
        const struct wtensor *t = &w->t[i];
        uint64_t nl = strlen(t->name);
        uint32_t type = t->type;
        rc = put(fp, &nl, 8) | put(fp, t->name, nl) | put(fp, &t->n_dims, 4) |
             put(fp, t->ne, 8ull * t->n_dims) | put(fp, &type, 4) | put(fp, &t->offset, 8);
        pos += 8 + nl + 4 + 8ull * t->n_dims + 4 + 8;
    }
    if (!rc && w->n_t)
        rc = put_pad(fp, pos, w->alignment);
    return rc ? LLORCH_EIO : 0;
}

static int write_all(struct gguf_writer *w, FILE *fp)
{
    if (w->streaming)
        return LLORCH_EINVAL;
    int rc = write_head(w, fp);
    for (uint64_t i = 0; i < w->n_t && !rc; i++) {
        rc = put(fp, w->t[i].data, w->t[i].nbytes);
        if (!rc && i + 1 < w->n_t)
            rc = put_pad(fp, w->t[i].offset + w->t[i].nbytes, w->alignment);
    }
    return rc;
}

LLORCH_API int gguf_writer_write_file(struct gguf_writer *w, const char *path)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return llorch_err_from_errno(errno);
    int rc = write_all(w, fp);
    if (fclose(fp) && !rc)
        rc = LLORCH_EIO;
    if (rc)
        unlink(path);
    return rc;
}

LLORCH_API int gguf_writer_write_buffer(struct gguf_writer *w, void **buf, size_t *len)
{
    char *p = NULL;
    size_t n = 0;
    *buf = NULL;
    *len = 0;
    FILE *fp = open_memstream(&p, &n);
    if (!fp)
        return LLORCH_ENOMEM;
    int rc = write_all(w, fp);
    if (fclose(fp) && !rc)
        rc = LLORCH_ENOMEM;
    if (rc) {
        free(p);
        return rc;
    }
    *buf = p;
    *len = n;
    return 0;
}

LLORCH_API int gguf_writer_stream_begin(struct gguf_writer *w, const char *path)
{
    if (w->in_memory || w->out)
        return LLORCH_EINVAL;
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return llorch_err_from_errno(errno);
    int rc = write_head(w, fp);
    if (rc) {
        fclose(fp);
        return rc;
    }
    w->out = fp;
    w->streaming = true;
    w->cur = 0;
    w->cur_written = 0;
    w->stream_err = 0;
    return 0;
}

LLORCH_API int gguf_writer_stream_data(struct gguf_writer *w, const void *data, uint64_t nbytes)
{
    if (!w->out || w->cur >= w->n_t)
        return LLORCH_EINVAL;
    if (w->stream_err)
        return w->stream_err;
    const struct wtensor *t = &w->t[w->cur];
    if (nbytes > t->nbytes - w->cur_written)
        return LLORCH_EINVAL;
    int rc = put(w->out, data, nbytes);
    w->cur_written += nbytes;
    if (!rc && w->cur_written == t->nbytes) {
        if (w->cur + 1 < w->n_t)
            rc = put_pad(w->out, t->offset + t->nbytes, w->alignment);
        w->cur++;
        w->cur_written = 0;
    }
    if (rc)
        w->stream_err = rc;
    return rc;
}

LLORCH_API int gguf_writer_stream_end(struct gguf_writer *w)
{
    if (!w->out)
        return LLORCH_EINVAL;
    /* zero-byte tensors need no stream_data call */
    while (w->cur < w->n_t && w->t[w->cur].nbytes == 0 && !w->stream_err)
        gguf_writer_stream_data(w, NULL, 0);
    int rc = w->stream_err;
    if (!rc && w->cur != w->n_t)
        rc = LLORCH_EINVAL;
    if (fclose(w->out) && !rc)
        rc = LLORCH_EIO;
    w->out = NULL;
    return rc;
}
