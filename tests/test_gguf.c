/* GGUF reader and writer: round trips of every value type, the version and
 * alignment rules, and the errors a corrupted file must produce (naming the
 * key or tensor and the offset). Shared files: the vocab-only GGUFs open fast
 * with O(1) string access, the test models open with their tensor counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf.h"
#include "llorch/error.h"

static char errbuf[512];

static void shared_path(char *out, size_t n, const char *rel)
{
    const char *dir = getenv("LLORCH_SHARED");
    snprintf(out, n, "%s/%s", dir ? dir : "../shared", rel);
}

/* A small file with one value of every type and two tensors. */
static struct gguf_writer *make_writer(uint32_t alignment)
{
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, alignment), 0);
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.block_count", 2), 0);
    assert_int_equal(gguf_writer_set_i32(w, "test.i32", -5), 0);
    assert_int_equal(gguf_writer_set_f32(w, "test.f32", 1.5f), 0);
    assert_int_equal(gguf_writer_set_bool(w, "test.bool", true), 0);
    assert_int_equal(gguf_writer_set_u64(w, "test.u64", 1ull << 40), 0);
    const int32_t ints[3] = {7, -8, 9};
    assert_int_equal(gguf_writer_set_arr(w, "test.ints", GGUF_TYPE_INT32, ints, 3), 0);
    const char *strs[3] = {"a", "", "hello"};
    assert_int_equal(gguf_writer_set_str_arr(w, "test.strs", strs, NULL, 3), 0);
    uint8_t u8 = 200;
    assert_int_equal(gguf_writer_set_raw(w, "test.u8", GGUF_TYPE_UINT8, &u8, 1), 0);
    int16_t i16 = -300;
    assert_int_equal(gguf_writer_set_raw(w, "test.i16", GGUF_TYPE_INT16, &i16, 2), 0);
    double f64 = 0.25;
    assert_int_equal(gguf_writer_set_raw(w, "test.f64", GGUF_TYPE_FLOAT64, &f64, 8), 0);
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint64_t ne2[2] = {3, 2};
    assert_int_equal(gguf_writer_add_tensor(w, "a.weight", GGML_TYPE_F32, 2, ne2, a, sizeof a), 0);
    uint16_t h[5] = {0x3c00, 0, 0, 0, 0x4000};
    uint64_t ne1[1] = {5};
    assert_int_equal(gguf_writer_add_tensor(w, "b.weight", GGML_TYPE_F16, 1, ne1, h, sizeof h), 0);
    return w;
}

static void *make_buffer(size_t *len)
{
    struct gguf_writer *w = make_writer(0);
    void *buf;
    assert_int_equal(gguf_writer_write_buffer(w, &buf, len), 0);
    gguf_writer_free(w);
    return buf;
}

static int open_buf(const void *buf, size_t len, struct gguf_file **f)
{
    return gguf_open_buffer(f, buf, len, errbuf, sizeof errbuf);
}

/* Offset of the first byte of a string inside buf (for patching). */
static size_t find(const void *buf, size_t len, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i + n <= len; i++)
        if (!memcmp((const char *)buf + i, s, n))
            return i;
    fail_msg("'%s' not in buffer", s);
    return 0;
}

static void gguf_roundtrip_keeps_every_scalar_type(void **state)
{
    (void)state;
    size_t len;
    void *buf = make_buffer(&len);
    struct gguf_file *f;
    assert_int_equal(open_buf(buf, len, &f), 0);
    assert_int_equal(gguf_version(f), 3);
    assert_int_equal(gguf_alignment(f), 32);
    assert_int_equal(gguf_kv_count(f), 11);
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f32;
    bool b;
    assert_int_equal(gguf_get_u32(f, "llama.block_count", &u32), 0);
    assert_int_equal(u32, 2);
    assert_int_equal(gguf_get_i32(f, "test.i32", &i32), 0);
    assert_int_equal(i32, -5);
    assert_int_equal(gguf_get_f32(f, "test.f32", &f32), 0);
    assert_true(f32 == 1.5f);
    assert_int_equal(gguf_get_bool(f, "test.bool", &b), 0);
    assert_true(b);
    assert_int_equal(gguf_get_u64(f, "test.u64", &u64), 0);
    assert_true(u64 == 1ull << 40);
    assert_int_equal(gguf_get_u32(f, "test.u8", &u32), 0);
    assert_int_equal(u32, 200);
    assert_int_equal(gguf_get_i32(f, "test.i16", &i32), 0);
    assert_int_equal(i32, -300);
    assert_int_equal(gguf_get_f32(f, "test.f64", &f32), 0);
    assert_true(f32 == 0.25f);
    struct gguf_str s;
    assert_int_equal(gguf_get_str(f, "general.architecture", &s), 0);
    assert_int_equal(s.len, 5);
    assert_memory_equal(s.ptr, "llama", 5);
    gguf_close(f);
    free(buf);
}

static void gguf_roundtrip_keeps_arrays_and_strings(void **state)
{
    (void)state;
    size_t len;
    void *buf = make_buffer(&len);
    struct gguf_file *f;
    assert_int_equal(open_buf(buf, len, &f), 0);
    struct gguf_arr arr;
    assert_int_equal(gguf_get_arr(f, "test.ints", &arr), 0);
    assert_int_equal(arr.type, GGUF_TYPE_INT32);
    assert_int_equal(arr.count, 3);
    int32_t v[3];
    memcpy(v, arr.data, sizeof v);
    assert_int_equal(v[1], -8);
    assert_int_equal(gguf_get_arr(f, "test.strs", &arr), 0);
    assert_int_equal(arr.type, GGUF_TYPE_STRING);
    assert_int_equal(arr.count, 3);
    struct gguf_str s;
    assert_int_equal(gguf_arr_str(f, &arr, 2, &s), 0);
    assert_int_equal(s.len, 5);
    assert_memory_equal(s.ptr, "hello", 5);
    assert_int_equal(gguf_arr_str(f, &arr, 1, &s), 0);
    assert_int_equal(s.len, 0);
    assert_int_equal(gguf_arr_str(f, &arr, 3, &s), LLORCH_ERANGE);
    gguf_close(f);
    free(buf);
}

static void gguf_roundtrip_keeps_tensors(void **state)
{
    (void)state;
    size_t len;
    void *buf = make_buffer(&len);
    struct gguf_file *f;
    assert_int_equal(open_buf(buf, len, &f), 0);
    assert_int_equal(gguf_tensor_count(f), 2);
    const struct gguf_tensor *t = gguf_tensor_find(f, "a.weight");
    assert_non_null(t);
    assert_int_equal(t->type, GGML_TYPE_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 3);
    assert_int_equal(t->ne[1], 2);
    assert_int_equal(t->ne[2], 1);
    assert_int_equal(t->n_elements, 6);
    assert_int_equal(t->nbytes, 24);
    float a[6];
    memcpy(a, t->data, sizeof a);
    assert_true(a[5] == 6.0f);
    t = gguf_tensor_find(f, "b.weight");
    assert_non_null(t);
    assert_int_equal(t->nbytes, 10);
    assert_int_equal(t->offset, 32); /* 24 bytes of a.weight padded to 32 */
    assert_int_equal(((uintptr_t)t->data - (uintptr_t)buf) % 32, 0);
    assert_ptr_equal(gguf_tensor_at(f, 1), t);
    assert_null(gguf_tensor_find(f, "c.weight"));
    assert_null(gguf_tensor_at(f, 2));
    gguf_close(f);
    free(buf);
}

static void gguf_getters_check_type_range_and_presence(void **state)
{
    (void)state;
    size_t len;
    void *buf = make_buffer(&len);
    struct gguf_file *f;
    assert_int_equal(open_buf(buf, len, &f), 0);
    uint32_t u32;
    int32_t i32;
    float f32;
    struct gguf_str s;
    assert_int_equal(gguf_get_u32(f, "missing", &u32), LLORCH_ENOTFOUND);
    assert_false(gguf_has_key(f, "missing"));
    assert_true(gguf_has_key(f, "test.i32"));
    assert_int_equal(gguf_get_u32(f, "test.i32", &u32), LLORCH_ERANGE); /* -5 */
    assert_int_equal(gguf_get_u32(f, "test.u64", &u32), LLORCH_ERANGE); /* 2^40 */
    assert_int_equal(gguf_get_i32(f, "test.u64", &i32), LLORCH_ERANGE);
    assert_int_equal(gguf_get_u32(f, "general.architecture", &u32), LLORCH_EFORMAT);
    assert_int_equal(gguf_get_f32(f, "llama.block_count", &f32), LLORCH_EFORMAT);
    assert_int_equal(gguf_get_str(f, "test.strs", &s), LLORCH_EFORMAT);
    enum gguf_type t;
    assert_int_equal(gguf_key_type(f, "test.strs", &t), 0);
    assert_int_equal(t, GGUF_TYPE_ARRAY);
    uint64_t idx;
    assert_int_equal(gguf_kv_find(f, "test.f32", &idx), 0);
    assert_int_equal(gguf_kv_at(f, idx, &s, &t), 0);
    assert_int_equal(t, GGUF_TYPE_FLOAT32);
    assert_memory_equal(s.ptr, "test.f32", 8);
    assert_int_equal(gguf_kv_at(f, 11, &s, &t), LLORCH_ERANGE);
    gguf_close(f);
    free(buf);
}

static void gguf_nested_arrays_are_validated_and_walkable(void **state)
{
    (void)state;
    /* [[1u8, 2u8], ["x"]] : outer array of 2 arrays */
    uint8_t v[64], *p = v;
    uint32_t t = GGUF_TYPE_ARRAY;
    uint64_t n = 2;
    memcpy(p, &t, 4), memcpy(p + 4, &n, 8), p += 12;
    t = GGUF_TYPE_UINT8;
    memcpy(p, &t, 4), memcpy(p + 4, &n, 8), p += 12;
    *p++ = 1, *p++ = 2;
    t = GGUF_TYPE_STRING, n = 1;
    memcpy(p, &t, 4), memcpy(p + 4, &n, 8), p += 12;
    memcpy(p, &n, 8), p[8] = 'x', p += 9;
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 0), 0);
    assert_int_equal(gguf_writer_set_raw(w, "nested", GGUF_TYPE_ARRAY, v, (uint64_t)(p - v)), 0);
    /* one byte short is not a value */
    assert_int_equal(gguf_writer_set_raw(w, "bad", GGUF_TYPE_ARRAY, v, (uint64_t)(p - v) - 1),
                     LLORCH_EINVAL);
    void *buf;
    size_t len;
    assert_int_equal(gguf_writer_write_buffer(w, &buf, &len), 0);
    gguf_writer_free(w);
    struct gguf_file *f;
    assert_int_equal(open_buf(buf, len, &f), 0);
    struct gguf_arr arr;
    assert_int_equal(gguf_kv_arr_at(f, 0, &arr), 0);
    assert_int_equal(arr.type, GGUF_TYPE_ARRAY);
    assert_int_equal(arr.count, 2);
    const void *raw;
    uint64_t rawlen;
    assert_int_equal(gguf_kv_raw_at(f, 0, &raw, &rawlen), 0);
    assert_int_equal(rawlen, (uint64_t)(p - v));
    assert_memory_equal(raw, v, rawlen);
    gguf_close(f);
    /* truncate the inner string: must fail naming the key */
    size_t cut = len - 1;
    assert_int_not_equal(open_buf(buf, cut, &f), 0);
    assert_null(f);
    assert_non_null(strstr(errbuf, "key 'nested'"));
    free(buf);
}

static void gguf_version_2_opens_and_version_1_is_rejected(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = make_buffer(&len);
    struct gguf_file *f;
    buf[4] = 2;
    assert_int_equal(open_buf(buf, len, &f), 0);
    assert_int_equal(gguf_version(f), 2);
    gguf_close(f);
    buf[4] = 1;
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EUNSUPPORTED);
    assert_non_null(strstr(errbuf, "version 1"));
    assert_non_null(strstr(errbuf, "offset 4"));
    buf[4] = 4;
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EUNSUPPORTED);
    free(buf);
}

static void gguf_bad_magic_is_rejected(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = make_buffer(&len);
    struct gguf_file *f;
    buf[0] = 'X';
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "magic"));
    assert_int_equal(open_buf(buf, 3, &f), LLORCH_EFORMAT);
    free(buf);
}

static void gguf_custom_alignment_is_used_for_data(void **state)
{
    (void)state;
    struct gguf_writer *w = make_writer(64);
    void *buf;
    size_t len;
    assert_int_equal(gguf_writer_write_buffer(w, &buf, &len), 0);
    gguf_writer_free(w);
    struct gguf_file *f;
    assert_int_equal(open_buf(buf, len, &f), 0);
    assert_int_equal(gguf_alignment(f), 64);
    assert_int_equal(gguf_data_offset(f) % 64, 0);
    const struct gguf_tensor *t = gguf_tensor_find(f, "b.weight");
    assert_int_equal(t->offset, 64);
    uint16_t h;
    memcpy(&h, t->data, 2);
    assert_int_equal(h, 0x3c00);
    gguf_close(f);
    free(buf);
}

static void gguf_alignment_not_power_of_two_is_rejected(void **state)
{
    (void)state;
    struct gguf_writer *w = make_writer(64);
    void *buf;
    size_t len;
    assert_int_equal(gguf_writer_write_buffer(w, &buf, &len), 0);
    gguf_writer_free(w);
    size_t at = find(buf, len, "general.alignment") + 17 + 4;
    uint32_t a = 48;
    memcpy((char *)buf + at, &a, 4);
    struct gguf_file *f;
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "key 'general.alignment'"));
    assert_non_null(strstr(errbuf, "power of two"));
    a = 0;
    memcpy((char *)buf + at, &a, 4);
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    free(buf);
}

static void gguf_huge_string_length_fails_naming_key_and_offset(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = make_buffer(&len);
    size_t at = find(buf, len, "general.architecture") + 20 + 4; /* value length */
    uint64_t huge = UINT64_MAX - 3;
    memcpy(buf + at, &huge, 8);
    struct gguf_file *f;
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    char want[64];
    snprintf(want, sizeof want, "offset %zu", at);
    assert_non_null(strstr(errbuf, "key 'general.architecture'"));
    assert_non_null(strstr(errbuf, want));
    free(buf);
}

static void gguf_huge_counts_fail_without_allocating(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = make_buffer(&len);
    struct gguf_file *f;
    uint64_t huge = UINT64_MAX / 2;
    uint64_t orig;
    memcpy(&orig, buf + 16, 8);
    memcpy(buf + 16, &huge, 8); /* kv count */
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "kv count"));
    memcpy(buf + 16, &orig, 8);
    memcpy(buf + 8, &huge, 8); /* tensor count */
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "tensor count"));
    memcpy(buf + 8, &orig, 8);
    orig = 2;
    memcpy(buf + 8, &orig, 8);
    /* string array count */
    size_t at = find(buf, len, "test.strs") + 9 + 4 + 4;
    memcpy(buf + at, &huge, 8);
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "key 'test.strs'"));
    free(buf);
}

static void gguf_tensor_past_end_fails_naming_tensor(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = make_buffer(&len);
    struct gguf_file *f;
    /* dropping the last bytes cuts b.weight's data */
    assert_int_equal(open_buf(buf, len - 2, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "tensor 'b.weight'"));
    assert_non_null(strstr(errbuf, "past the end"));
    /* an offset far past the end */
    size_t at = find(buf, len, "b.weight") + 8 + 4 + 8 + 4;
    uint64_t off = 1ull << 62;
    memcpy(buf + at, &off, 8);
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "tensor 'b.weight'"));
    off = UINT64_MAX - 31; /* aligned, and offset + size overflows */
    memcpy(buf + at, &off, 8);
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    off = 8; /* in range but misaligned */
    memcpy(buf + at, &off, 8);
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "alignment"));
    free(buf);
}

static void gguf_bad_dims_and_types_fail_naming_tensor(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = make_buffer(&len);
    uint8_t *copy = malloc(len);
    struct gguf_file *f;
    size_t at = find(buf, len, "a.weight") + 8; /* n_dims */
    uint32_t nd = 5;
    memcpy(copy, buf, len);
    memcpy(copy + at, &nd, 4);
    assert_int_equal(open_buf(copy, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "tensor 'a.weight'"));
    assert_non_null(strstr(errbuf, "n_dims"));
    /* dims whose product overflows */
    uint64_t d = 1ull << 40;
    memcpy(copy, buf, len);
    memcpy(copy + at + 4, &d, 8);
    memcpy(copy + at + 12, &d, 8);
    assert_int_equal(open_buf(copy, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "overflow"));
    /* unknown tensor type */
    uint32_t ty = 77;
    memcpy(copy, buf, len);
    memcpy(copy + at + 4 + 16, &ty, 4);
    assert_int_equal(open_buf(copy, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "unknown tensor type 77"));
    /* a row that is not a whole number of blocks */
    ty = GGML_TYPE_Q8_0;
    memcpy(copy, buf, len);
    memcpy(copy + at + 4 + 16, &ty, 4);
    assert_int_equal(open_buf(copy, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "block size"));
    free(copy);
    free(buf);
}

static void gguf_duplicate_keys_and_tensors_are_rejected(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = make_buffer(&len);
    struct gguf_file *f;
    size_t at = find(buf, len, "test.i32");
    memcpy(buf + at, "test.f32", 8);
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "duplicate key"));
    memcpy(buf + at, "test.i32", 8);
    at = find(buf, len, "b.weight");
    buf[at] = 'a';
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "duplicate tensor"));
    free(buf);
}

static void gguf_unknown_value_type_is_rejected(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = make_buffer(&len);
    struct gguf_file *f;
    size_t at = find(buf, len, "test.bool") + 9;
    uint32_t t = 13;
    memcpy(buf + at, &t, 4);
    assert_int_equal(open_buf(buf, len, &f), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "key 'test.bool'"));
    assert_non_null(strstr(errbuf, "unknown value type 13"));
    free(buf);
}

static void gguf_streaming_writer_matches_in_memory_writer(void **state)
{
    (void)state;
    size_t len;
    void *buf = make_buffer(&len);
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 0), 0);
    /* same metadata as make_writer: copy it through the raw accessors */
    struct gguf_file *f;
    assert_int_equal(open_buf(buf, len, &f), 0);
    for (uint64_t i = 0; i < gguf_kv_count(f); i++) {
        struct gguf_str k;
        enum gguf_type t;
        const void *raw;
        uint64_t rl;
        char key[64];
        assert_int_equal(gguf_kv_at(f, i, &k, &t), 0);
        assert_int_equal(gguf_kv_raw_at(f, i, &raw, &rl), 0);
        snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
        assert_int_equal(gguf_writer_set_raw(w, key, t, raw, rl), 0);
    }
    for (uint64_t i = 0; i < gguf_tensor_count(f); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(f, i);
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        assert_int_equal(gguf_writer_add_tensor_info(w, name, t->type, t->n_dims, t->ne), 0);
    }
    char path[] = "/tmp/llorch-test-gguf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(gguf_writer_stream_begin(w, path), 0);
    const struct gguf_tensor *t0 = gguf_tensor_at(f, 0), *t1 = gguf_tensor_at(f, 1);
    /* first tensor in two pieces; too many bytes is refused */
    assert_int_equal(gguf_writer_stream_data(w, t0->data, 10), 0);
    assert_int_equal(gguf_writer_stream_data(w, t0->data, 100), LLORCH_EINVAL);
    assert_int_equal(gguf_writer_stream_data(w, (const char *)t0->data + 10, t0->nbytes - 10), 0);
    assert_int_equal(gguf_writer_stream_data(w, t1->data, t1->nbytes), 0);
    assert_int_equal(gguf_writer_stream_end(w), 0);
    gguf_writer_free(w);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    char *got = malloc(len + 16);
    size_t n = fread(got, 1, len + 16, fp);
    fclose(fp);
    unlink(path);
    assert_int_equal(n, len);
    assert_memory_equal(got, buf, len);
    free(got);
    gguf_close(f);
    free(buf);
}

static void gguf_stream_end_fails_when_a_tensor_is_missing(void **state)
{
    (void)state;
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 0), 0);
    uint64_t ne[1] = {4};
    assert_int_equal(gguf_writer_add_tensor_info(w, "x", GGML_TYPE_F32, 1, ne), 0);
    /* a writer is streaming or in-memory, not both */
    float v[4] = {0};
    assert_int_equal(gguf_writer_add_tensor(w, "y", GGML_TYPE_F32, 1, ne, v, 16), LLORCH_EINVAL);
    char path[] = "/tmp/llorch-test-gguf-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    assert_int_equal(gguf_writer_stream_begin(w, path), 0);
    assert_int_equal(gguf_writer_stream_end(w), LLORCH_EINVAL);
    gguf_writer_free(w);
    unlink(path);
}

static void gguf_writer_rejects_wrong_tensor_size(void **state)
{
    (void)state;
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 0), 0);
    uint64_t ne[2] = {32, 2};
    uint8_t q[68] = {0};
    assert_int_equal(gguf_writer_add_tensor(w, "q", GGML_TYPE_Q8_0, 2, ne, q, 67), LLORCH_EINVAL);
    assert_int_equal(gguf_writer_add_tensor(w, "q", GGML_TYPE_Q8_0, 2, ne, q, 68), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "q", GGML_TYPE_Q8_0, 2, ne, q, 68), LLORCH_EEXISTS);
    ne[0] = 33;
    assert_int_not_equal(gguf_writer_add_tensor(w, "r", GGML_TYPE_Q8_0, 2, ne, q, 68), 0);
    gguf_writer_free(w);
    assert_int_equal(gguf_writer_new(&w, 48), LLORCH_EINVAL);
}

static void gguf_open_reports_missing_file(void **state)
{
    (void)state;
    struct gguf_file *f;
    assert_int_equal(gguf_open(&f, "/nonexistent/x.gguf", errbuf, sizeof errbuf), LLORCH_ENOTFOUND);
    assert_null(f);
    assert_non_null(strstr(errbuf, "/nonexistent/x.gguf"));
    gguf_close(NULL);
}

static void gguf_qwen2_vocab_file_opens_with_indexed_strings(void **state)
{
    (void)state;
    char path[512];
    shared_path(path, sizeof path, "vocab/qwen2-vocab.gguf");
    struct gguf_file *f;
    assert_int_equal(gguf_open(&f, path, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_tensor_count(f), 0);
    struct gguf_arr toks;
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.tokens", &toks), 0);
    assert_int_equal(toks.count, 151936);
    struct gguf_str s;
    assert_int_equal(gguf_arr_str(f, &toks, 151645, &s), 0);
    assert_int_equal(s.len, strlen("<|im_end|>"));
    assert_memory_equal(s.ptr, "<|im_end|>", s.len);
    assert_int_equal(gguf_arr_str(f, &toks, 151667, &s), 0);
    assert_memory_equal(s.ptr, "<think>", 7);
    struct gguf_arr merges;
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.merges", &merges), 0);
    assert_int_equal(merges.count, 151387);
    gguf_close(f);
}

static void gguf_llama3_vocab_file_opens(void **state)
{
    (void)state;
    char path[512];
    shared_path(path, sizeof path, "vocab/llama3-vocab.gguf");
    struct gguf_file *f;
    assert_int_equal(gguf_open(&f, path, errbuf, sizeof errbuf), 0);
    struct gguf_arr toks;
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.tokens", &toks), 0);
    assert_int_equal(toks.count, 128256);
    struct gguf_str s;
    assert_int_equal(gguf_arr_str(f, &toks, 128009, &s), 0);
    assert_memory_equal(s.ptr, "<|eot_id|>", s.len);
    uint32_t eos;
    assert_int_equal(gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &eos), 0);
    assert_int_equal(eos, 128009);
    gguf_close(f);
}

static void gguf_shared_models_open_with_their_tensor_counts(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        uint64_t n_tensors;
    } models[] = {
        {"models/stories260k.gguf", 47},     {"models/llama-tiny-f32.gguf", 21},
        {"models/llama-tiny-f16.gguf", 21},  {"models/llama-tiny-q8_0.gguf", 21},
        {"models/llama-tiny-q4_0.gguf", 21}, {"models/gpt2-tiny-f32.gguf", 29},
        {"models/llama-mid-f32.gguf", 38},   {"models/qwen2-tiny-f32.gguf", 27},
        {"models/phi3-tiny-f32.gguf", 15},
    };
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        char path[512];
        shared_path(path, sizeof path, models[i].file);
        struct gguf_file *f;
        int rc = gguf_open(&f, path, errbuf, sizeof errbuf);
        if (rc)
            fail_msg("%s: %s", models[i].file, errbuf);
        assert_int_equal(gguf_tensor_count(f), models[i].n_tensors);
        gguf_close(f);
    }
}

/* ---- split models ---- */

/* Writes part `no` of `count` under dir/m: split keys (split_no may lie),
 * a name key and n_tensors tensors "t<no>.<k>" of 4 floats, value no*10+k. */
static void write_part(const char *dir, uint32_t no, uint32_t count, uint16_t split_no,
                       int32_t total, int n_tensors, const char *dup_name)
{
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 32), 0);
    uint16_t c16 = (uint16_t)count;
    assert_int_equal(gguf_writer_set_str(w, "general.name", no == 0 ? "first" : "other"), 0);
    assert_int_equal(gguf_writer_set_raw(w, "split.no", GGUF_TYPE_UINT16, &split_no, 2), 0);
    assert_int_equal(gguf_writer_set_raw(w, "split.count", GGUF_TYPE_UINT16, &c16, 2), 0);
    assert_int_equal(gguf_writer_set_i32(w, "split.tensors.count", total), 0);
    for (int k = 0; k < n_tensors; k++) {
        char name[32];
        snprintf(name, sizeof name, "t%u.%d", no, k);
        float v[4] = {(float)(no * 10 + (uint32_t)k), 1, 2, 3};
        uint64_t ne[1] = {4};
        assert_int_equal(gguf_writer_add_tensor(w, dup_name && k == 0 ? dup_name : name,
                                                GGML_TYPE_F32, 1, ne, v, sizeof v),
                         0);
    }
    char path[512];
    char prefix[400];
    snprintf(prefix, sizeof prefix, "%s/m", dir);
    assert_int_equal(gguf_split_path(path, sizeof path, prefix, no, count), 0);
    assert_int_equal(gguf_writer_write_file(w, path), 0);
    gguf_writer_free(w);
}

static void split_dir(char *dir, size_t n)
{
    snprintf(dir, n, "/tmp/llorch-test-split-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void split_dir_remove(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void gguf_split_path_uses_llama_cpp_names(void **state)
{
    (void)state;
    char p[64];
    assert_int_equal(gguf_split_path(p, sizeof p, "dir/m", 0, 3), 0);
    assert_string_equal(p, "dir/m-00001-of-00003.gguf");
    assert_int_equal(gguf_split_path(p, sizeof p, "m", 2, 3), 0);
    assert_string_equal(p, "m-00003-of-00003.gguf");
    assert_int_equal(gguf_split_path(p, sizeof p, "m", 3, 3), LLORCH_EINVAL);
    assert_int_equal(gguf_split_path(p, 8, "m", 0, 3), LLORCH_ETOOBIG);
}

static void gguf_split_model_opens_as_one_from_its_first_part(void **state)
{
    (void)state;
    char dir[64], path[256];
    split_dir(dir, sizeof dir);
    write_part(dir, 0, 3, 0, 6, 1, NULL);
    write_part(dir, 1, 3, 1, 6, 2, NULL);
    write_part(dir, 2, 3, 2, 6, 3, NULL);
    snprintf(path, sizeof path, "%s/m-00001-of-00003.gguf", dir);
    struct gguf_file *f;
    assert_int_equal(gguf_open(&f, path, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_split_count(f), 3);
    assert_int_equal(gguf_tensor_count(f), 6);
    struct gguf_str s;
    assert_int_equal(gguf_get_str(f, "general.name", &s), 0);
    assert_memory_equal(s.ptr, "first", 5);
    const char *names[] = {"t0.0", "t1.0", "t1.1", "t2.0", "t2.1", "t2.2"};
    const float vals[] = {0, 10, 11, 20, 21, 22};
    for (int i = 0; i < 6; i++) {
        const struct gguf_tensor *t = gguf_tensor_find(f, names[i]);
        assert_non_null(t);
        assert_ptr_equal(gguf_tensor_at(f, (uint64_t)i), t);
        float v;
        memcpy(&v, t->data, sizeof v);
        assert_true(v == vals[i]);
    }
    assert_null(gguf_tensor_find(f, "t0.1"));
    gguf_close(f);
    /* one part alone */
    snprintf(path, sizeof path, "%s/m-00002-of-00003.gguf", dir);
    assert_int_equal(gguf_open_part(&f, path, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_split_count(f), 1);
    assert_int_equal(gguf_tensor_count(f), 2);
    gguf_close(f);
    split_dir_remove(dir);
}

static void gguf_split_later_part_is_refused_naming_the_first(void **state)
{
    (void)state;
    char dir[64], path[256];
    split_dir(dir, sizeof dir);
    write_part(dir, 0, 2, 0, 2, 1, NULL);
    write_part(dir, 1, 2, 1, 2, 1, NULL);
    snprintf(path, sizeof path, "%s/m-00002-of-00002.gguf", dir);
    struct gguf_file *f;
    assert_int_equal(gguf_open(&f, path, errbuf, sizeof errbuf), LLORCH_EINVAL);
    assert_null(f);
    assert_non_null(strstr(errbuf, "part 2 of a model split in 2 parts"));
    assert_non_null(strstr(errbuf, "-00001-of-00002.gguf"));
    split_dir_remove(dir);
}

static void gguf_split_missing_or_inconsistent_parts_fail_naming_the_part(void **state)
{
    (void)state;
    char dir[64], path[256];
    struct gguf_file *f;
    split_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/m-00001-of-00003.gguf", dir);
    /* part 3 missing */
    write_part(dir, 0, 3, 0, 3, 1, NULL);
    write_part(dir, 1, 3, 1, 3, 1, NULL);
    assert_true(gguf_open(&f, path, errbuf, sizeof errbuf) < 0);
    assert_null(f);
    assert_non_null(strstr(errbuf, "m-00003-of-00003.gguf"));
    /* part 3 says it is part 2 */
    write_part(dir, 2, 3, 1, 3, 1, NULL);
    assert_int_equal(gguf_open(&f, path, errbuf, sizeof errbuf), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "expected split.no 2"));
    /* the parts hold 3 tensors, split.tensors.count says 4 */
    write_part(dir, 0, 3, 0, 4, 1, NULL);
    write_part(dir, 2, 3, 2, 4, 1, NULL);
    assert_int_equal(gguf_open(&f, path, errbuf, sizeof errbuf), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "split.tensors.count is 4"));
    /* one tensor in two parts */
    write_part(dir, 0, 3, 0, 3, 1, NULL);
    write_part(dir, 2, 3, 2, 3, 1, "t0.0");
    assert_int_equal(gguf_open(&f, path, errbuf, sizeof errbuf), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "'t0.0' is in more than one part"));
    /* consistent again: opens */
    write_part(dir, 2, 3, 2, 3, 1, NULL);
    assert_int_equal(gguf_open(&f, path, errbuf, sizeof errbuf), 0);
    gguf_close(f);
    /* a first part whose name does not follow the pattern */
    char other[300];
    snprintf(other, sizeof other, "%s/renamed.gguf", dir);
    assert_int_equal(rename(path, other), 0);
    assert_int_equal(gguf_open(&f, other, errbuf, sizeof errbuf), LLORCH_EFORMAT);
    assert_non_null(strstr(errbuf, "does not end in '-00001-of-00003.gguf'"));
    split_dir_remove(dir);
}

/* Whether this process maps a file whose path ends in name. */
static bool mapped(const char *name)
{
    FILE *fp = fopen("/proc/self/maps", "r");
    assert_non_null(fp);
    char line[1024];
    bool found = false;
    const size_t nl = strlen(name);
    while (!found && fgets(line, sizeof line, fp)) {
        size_t l = strcspn(line, "\n");
        line[l] = 0;
        found = l >= nl && !strcmp(line + l - nl, name);
    }
    fclose(fp);
    return found;
}

/* gguf_open_some's want: the tensors "t<part>.*" of one part; counts its
 * calls and checks it is shown the first part's metadata. */
struct want_part {
    char prefix[8];
    int calls, bad_meta;
};

static bool want_part(void *ctx, const struct gguf_file *first, const struct gguf_tensor *t)
{
    struct want_part *w = ctx;
    struct gguf_str s;
    w->calls++;
    if (gguf_get_str(first, "general.name", &s) || s.len != 5 || memcmp(s.ptr, "first", 5))
        w->bad_meta++;
    size_t n = strlen(w->prefix);
    return t->name.len > n && !memcmp(t->name.ptr, w->prefix, n);
}

static void gguf_open_some_maps_only_the_parts_holding_wanted_tensors(void **state)
{
    (void)state;
    char dir[64], path[256];
    split_dir(dir, sizeof dir);
    write_part(dir, 0, 3, 0, 6, 1, NULL); /* t0.0 */
    write_part(dir, 1, 3, 1, 6, 2, NULL); /* t1.0 t1.1 */
    write_part(dir, 2, 3, 2, 6, 3, NULL); /* t2.0 t2.1 t2.2 */
    snprintf(path, sizeof path, "%s/m-00001-of-00003.gguf", dir);
    const char *p1 = strrchr(path, '/');
    char n2[64], n3[64];
    snprintf(n2, sizeof n2, "%s/m-00002-of-00003.gguf", strrchr(dir, '/'));
    snprintf(n3, sizeof n3, "%s/m-00003-of-00003.gguf", strrchr(dir, '/'));
    struct want_part w = {.prefix = "t2."};
    struct gguf_file *f;
    assert_int_equal(gguf_open_some(&f, path, want_part, &w, errbuf, sizeof errbuf), 0);
    assert_true(w.calls > 0);
    assert_int_equal(w.bad_meta, 0);
    /* the first part (metadata) and the third stay mapped, the second not */
    assert_true(mapped(p1));
    assert_false(mapped(n2));
    assert_true(mapped(n3));
    assert_int_equal(gguf_split_count(f), 3);
    /* the first part's tensors and the kept part's, looked up across parts */
    assert_int_equal(gguf_tensor_count(f), 4);
    const char *names[] = {"t0.0", "t2.0", "t2.1", "t2.2"};
    const float vals[] = {0, 20, 21, 22};
    for (int i = 0; i < 4; i++) {
        const struct gguf_tensor *t = gguf_tensor_find(f, names[i]);
        assert_non_null(t);
        float v;
        memcpy(&v, t->data, sizeof v);
        assert_true(v == vals[i]);
    }
    assert_null(gguf_tensor_find(f, "t1.0"));
    assert_null(gguf_tensor_find(f, "t1.1"));
    struct gguf_str s;
    assert_int_equal(gguf_get_str(f, "general.name", &s), 0);
    assert_memory_equal(s.ptr, "first", 5);
    gguf_close(f);
    assert_false(mapped(p1));
    assert_false(mapped(n3));
    /* wanting nothing of the later parts: only the first stays */
    struct want_part none = {.prefix = "t0."};
    assert_int_equal(gguf_open_some(&f, path, want_part, &none, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_tensor_count(f), 1);
    assert_false(mapped(n2));
    assert_false(mapped(n3));
    gguf_close(f);
    /* a later part opens alone, with its own tensors only */
    snprintf(path, sizeof path, "%s/m-00002-of-00003.gguf", dir);
    struct want_part any = {.prefix = "t"};
    assert_int_equal(gguf_open_some(&f, path, want_part, &any, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_split_count(f), 1);
    assert_int_equal(gguf_tensor_count(f), 2);
    assert_non_null(gguf_tensor_find(f, "t1.1"));
    assert_null(gguf_tensor_find(f, "t0.0"));
    gguf_close(f);
    split_dir_remove(dir);
}

static void gguf_open_some_fails_naming_a_missing_mismatched_or_truncated_part(void **state)
{
    (void)state;
    char dir[64], path[256], part2[256], other[256];
    split_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/m-00001-of-00003.gguf", dir);
    snprintf(part2, sizeof part2, "%s/m-00002-of-00003.gguf", dir);
    write_part(dir, 0, 3, 0, 6, 1, NULL);
    write_part(dir, 2, 3, 2, 6, 3, NULL);
    struct want_part w = {.prefix = "t2."};
    struct gguf_file *f = (struct gguf_file *)&w;
    /* part 2 missing, though nothing of it is wanted: it is named */
    assert_int_equal(gguf_open_some(&f, path, want_part, &w, errbuf, sizeof errbuf),
                     LLORCH_ENOTFOUND);
    assert_null(f);
    assert_non_null(strstr(errbuf, "m-00002-of-00003.gguf"));
    /* part 2 of a model in 4 parts under part 2 of 3's name */
    write_part(dir, 1, 4, 1, 6, 2, NULL);
    snprintf(other, sizeof other, "%s/m-00002-of-00004.gguf", dir);
    assert_int_equal(rename(other, part2), 0);
    assert_int_equal(gguf_open_some(&f, path, want_part, &w, errbuf, sizeof errbuf),
                     LLORCH_EFORMAT);
    assert_null(f);
    assert_non_null(strstr(errbuf, "m-00002-of-00003.gguf"));
    assert_non_null(strstr(errbuf, "split.count 3, found 1 and 4"));
    /* part 2 as it should be: opens */
    write_part(dir, 1, 3, 1, 6, 2, NULL);
    assert_int_equal(gguf_open_some(&f, path, want_part, &w, errbuf, sizeof errbuf), 0);
    gguf_close(f);
    /* part 2 cut short (its tensor data gone): refused, naming it */
    FILE *fp = fopen(part2, "rb");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long size = ftell(fp);
    fclose(fp);
    assert_int_equal(truncate(part2, size - 8), 0);
    assert_int_equal(gguf_open_some(&f, path, want_part, &w, errbuf, sizeof errbuf),
                     LLORCH_EFORMAT);
    assert_null(f);
    assert_non_null(strstr(errbuf, "m-00002-of-00003.gguf"));
    /* every part closed again on each failure */
    assert_false(mapped("m-00001-of-00003.gguf"));
    assert_false(mapped("m-00003-of-00003.gguf"));
    split_dir_remove(dir);
}

/* Part `no` of 3 under dir/m with its tensor "t<no>.0" and a copy of
 * part 1's "t0.0" (the same bytes), as llorch-cli split copies
 * rope_freqs.weight. */
static void write_part_with_copy(const char *dir, uint32_t no, int32_t total)
{
    struct gguf_writer *w;
    assert_int_equal(gguf_writer_new(&w, 32), 0);
    uint16_t no16 = (uint16_t)no, c16 = 3;
    assert_int_equal(gguf_writer_set_raw(w, "split.no", GGUF_TYPE_UINT16, &no16, 2), 0);
    assert_int_equal(gguf_writer_set_raw(w, "split.count", GGUF_TYPE_UINT16, &c16, 2), 0);
    assert_int_equal(gguf_writer_set_i32(w, "split.tensors.count", total), 0);
    char name[32];
    snprintf(name, sizeof name, "t%u.0", no);
    float own[4] = {(float)(no * 10), 1, 2, 3}, copy[4] = {0, 1, 2, 3};
    uint64_t ne[1] = {4};
    assert_int_equal(gguf_writer_add_tensor(w, name, GGML_TYPE_F32, 1, ne, own, sizeof own), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "t0.0", GGML_TYPE_F32, 1, ne, copy, sizeof copy),
                     0);
    char path[512], prefix[400];
    snprintf(prefix, sizeof prefix, "%s/m", dir);
    assert_int_equal(gguf_split_path(path, sizeof path, prefix, no, 3), 0);
    assert_int_equal(gguf_writer_write_file(w, path), 0);
    gguf_writer_free(w);
}

static void gguf_split_copy_of_a_tensor_is_taken_once_and_maps_no_part(void **state)
{
    (void)state;
    char dir[64], path[256], n2[64], n3[64];
    split_dir(dir, sizeof dir);
    write_part(dir, 0, 3, 0, 5, 1, NULL); /* t0.0 = {0, 1, 2, 3} */
    write_part_with_copy(dir, 1, 5);      /* t1.0, t0.0 */
    write_part_with_copy(dir, 2, 5);      /* t2.0, t0.0 */
    snprintf(path, sizeof path, "%s/m-00001-of-00003.gguf", dir);
    snprintf(n2, sizeof n2, "%s/m-00002-of-00003.gguf", strrchr(dir, '/'));
    snprintf(n3, sizeof n3, "%s/m-00003-of-00003.gguf", strrchr(dir, '/'));
    struct gguf_file *f;
    assert_int_equal(gguf_open(&f, path, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_tensor_count(f), 3); /* t0.0 once */
    assert_non_null(gguf_tensor_find(f, "t1.0"));
    assert_non_null(gguf_tensor_find(f, "t2.0"));
    gguf_close(f);
    /* wanting t0.0 only: the parts holding a copy of it stay closed */
    struct want_part w0 = {.prefix = "t0."};
    assert_int_equal(gguf_open_some(&f, path, want_part, &w0, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_tensor_count(f), 1);
    assert_false(mapped(n2));
    assert_false(mapped(n3));
    gguf_close(f);
    struct want_part w2 = {.prefix = "t2."};
    assert_int_equal(gguf_open_some(&f, path, want_part, &w2, errbuf, sizeof errbuf), 0);
    assert_int_equal(gguf_tensor_count(f), 2);
    assert_false(mapped(n2));
    assert_true(mapped(n3));
    gguf_close(f);
    /* a later part alone holds its copy */
    snprintf(path, sizeof path, "%s/m-00003-of-00003.gguf", dir);
    assert_int_equal(gguf_open_some(&f, path, want_part, &w2, errbuf, sizeof errbuf), 0);
    assert_non_null(gguf_tensor_find(f, "t0.0"));
    gguf_close(f);
    split_dir_remove(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gguf_roundtrip_keeps_every_scalar_type),
        cmocka_unit_test(gguf_roundtrip_keeps_arrays_and_strings),
        cmocka_unit_test(gguf_roundtrip_keeps_tensors),
        cmocka_unit_test(gguf_getters_check_type_range_and_presence),
        cmocka_unit_test(gguf_nested_arrays_are_validated_and_walkable),
        cmocka_unit_test(gguf_version_2_opens_and_version_1_is_rejected),
        cmocka_unit_test(gguf_bad_magic_is_rejected),
        cmocka_unit_test(gguf_custom_alignment_is_used_for_data),
        cmocka_unit_test(gguf_alignment_not_power_of_two_is_rejected),
        cmocka_unit_test(gguf_huge_string_length_fails_naming_key_and_offset),
        cmocka_unit_test(gguf_huge_counts_fail_without_allocating),
        cmocka_unit_test(gguf_tensor_past_end_fails_naming_tensor),
        cmocka_unit_test(gguf_bad_dims_and_types_fail_naming_tensor),
        cmocka_unit_test(gguf_duplicate_keys_and_tensors_are_rejected),
        cmocka_unit_test(gguf_unknown_value_type_is_rejected),
        cmocka_unit_test(gguf_streaming_writer_matches_in_memory_writer),
        cmocka_unit_test(gguf_stream_end_fails_when_a_tensor_is_missing),
        cmocka_unit_test(gguf_writer_rejects_wrong_tensor_size),
        cmocka_unit_test(gguf_open_reports_missing_file),
        cmocka_unit_test(gguf_qwen2_vocab_file_opens_with_indexed_strings),
        cmocka_unit_test(gguf_llama3_vocab_file_opens),
        cmocka_unit_test(gguf_shared_models_open_with_their_tensor_counts),
        cmocka_unit_test(gguf_split_path_uses_llama_cpp_names),
        cmocka_unit_test(gguf_split_model_opens_as_one_from_its_first_part),
        cmocka_unit_test(gguf_split_later_part_is_refused_naming_the_first),
        cmocka_unit_test(gguf_split_missing_or_inconsistent_parts_fail_naming_the_part),
        cmocka_unit_test(gguf_open_some_maps_only_the_parts_holding_wanted_tensors),
        cmocka_unit_test(gguf_open_some_fails_naming_a_missing_mismatched_or_truncated_part),
        cmocka_unit_test(gguf_split_copy_of_a_tensor_is_taken_once_and_maps_no_part),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
