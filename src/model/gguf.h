/* GGUF v2/v3 reader (mmap, bounds-checked) and a small writer for synthetic
 * models. The file format: magic "GGUF", u32 version, u64 tensor count, u64
 * metadata count, metadata key/value pairs, tensor infos, padding to
 * general.alignment, tensor data. All integers little-endian. */
#ifndef LLORCH_GGUF_H
#define LLORCH_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ggml_type.h"

/* Metadata value types, numbered as in the GGUF specification. */
enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT_,
};

#define GGUF_MAX_DIMS 4

/* A string inside the mapped file: not NUL-terminated. */
struct gguf_str {
    const char *ptr;
    uint64_t len;
};

/* An array value. For scalar element types `data` points at `count` packed
 * little-endian elements inside the mapping; for strings `data` is an
 * internal offset index (opaque: use gguf_arr_str() with the same file);
 * nested arrays are validated but only reachable through gguf_kv_raw_at()
 * (no model key uses them). */
struct gguf_arr {
    enum gguf_type type;
    uint64_t count;
    const void *data;
};

struct gguf_tensor {
    struct gguf_str name;
    enum ggml_type type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the innermost (row) dimension; unused dims are 1 */
    uint64_t n_elements;
    uint64_t offset;            /* relative to the data section */
    uint64_t nbytes;
    const void *data;           /* inside the mapping; aligned to general.alignment */
};

struct gguf_file;

/* Opens and validates a GGUF file. On failure returns a negative llorch code
 * and writes a one-line message naming the key or tensor and the file offset
 * into err (if errlen > 0). The mapping stays valid until gguf_close().
 * The first part of a split model (NAME-00001-of-0000N.gguf, split.count N)
 * opens every part and reads as one model: the first part's metadata, all
 * parts' tensors; another part is refused (LLORCH_EINVAL) naming the first. */
int gguf_open(struct gguf_file **out, const char *path, char *err, size_t errlen);
/* Which tensors a caller needs: it sees the first part (the metadata) and
 * one tensor. */
typedef bool (*gguf_want_fn)(void *ctx, const struct gguf_file *first,
                             const struct gguf_tensor *t);
/* As gguf_open, for a pipeline stage: of a split model's first part, only
 * the parts holding a tensor that want takes stay mapped (and the first);
 * the others are opened, read and closed again, and their tensors are not
 * in the table. A later part (split.no > 0) opens alone: a stage's own file
 * from `llorch-cli split`, which carries the whole metadata. */
int gguf_open_some(struct gguf_file **out, const char *path, gguf_want_fn want, void *ctx,
                   char *err, size_t errlen);
/* One file alone, also a single part of a split model (a pipeline stage's). */
int gguf_open_part(struct gguf_file **out, const char *path, char *err, size_t errlen);
/* Drops the file's pages from this process's memory (they stay in the page
 * cache; a later read maps them again): after the weights are packed. */
void gguf_release_pages(const struct gguf_file *f);
/* Parts behind f: 1 for a whole file. */
uint32_t gguf_split_count(const struct gguf_file *f);
/* Most parts of a split model (llama.cpp's names have five digits). */
#define LLORCH_GGUF_SPLIT_MAX 9999u
/* PREFIX-%05u-of-%05u.gguf for part `no` (0-based) of count: llama.cpp's
 * split names. LLORCH_ETOOBIG when it does not fit in n. */
int gguf_split_path(char *out, size_t n, const char *prefix, uint32_t no, uint32_t count);

/* Same, over a caller-owned buffer (tests, fuzzing); buf must outlive the
 * returned object. */
/* Tells the kernel that the tensor's bytes of a mapped file are no longer
 * needed (they were repacked): its whole pages leave memory and come back
 * from the file if read again. No effect on a file opened from a buffer. */
void gguf_tensor_release(const struct gguf_file *f, const struct gguf_tensor *t);
int gguf_open_buffer(struct gguf_file **out, const void *buf, size_t len, char *err,
                     size_t errlen);

void gguf_close(struct gguf_file *f); /* NULL is safe */

uint32_t gguf_version(const struct gguf_file *f);
uint64_t gguf_alignment(const struct gguf_file *f);
uint64_t gguf_file_size(const struct gguf_file *f); /* all parts of a split model */

/* Metadata. Getters return 0, LLORCH_ENOTFOUND when the key is absent, or
 * LLORCH_EFORMAT when it has another type. Integer getters accept any integer
 * type whose value fits (LLORCH_ERANGE otherwise); gguf_get_f32 accepts
 * float32 and float64. */
uint64_t gguf_kv_count(const struct gguf_file *f);
bool gguf_has_key(const struct gguf_file *f, const char *key);
int gguf_key_type(const struct gguf_file *f, const char *key, enum gguf_type *type);
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i32(const struct gguf_file *f, const char *key, int32_t *out);
int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out);
int gguf_get_bool(const struct gguf_file *f, const char *key, bool *out);
int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out);
int gguf_get_arr(const struct gguf_file *f, const char *key, struct gguf_arr *out);
/* The i-th string of a string array (i < arr->count), O(1) after open. */
int gguf_arr_str(const struct gguf_file *f, const struct gguf_arr *arr, uint64_t i,
                 struct gguf_str *out);

/* Metadata walk for inspect: key name and type of the i-th pair. */
int gguf_kv_at(const struct gguf_file *f, uint64_t i, struct gguf_str *key, enum gguf_type *type);
/* Index of a key (LLORCH_ENOTFOUND when absent). */
int gguf_kv_find(const struct gguf_file *f, const char *key, uint64_t *index);
/* The encoded value bytes of the i-th pair as they sit in the file (after the
 * type tag): used to copy keys verbatim into another file (llorch-synth
 * --vocab-from) with gguf_writer_set_raw(). */
int gguf_kv_raw_at(const struct gguf_file *f, uint64_t i, const void **data, uint64_t *len);
/* The i-th pair's value when it is an array (LLORCH_EFORMAT otherwise). */
int gguf_kv_arr_at(const struct gguf_file *f, uint64_t i, struct gguf_arr *out);
/* File offset of the tensor data section. */
uint64_t gguf_data_offset(const struct gguf_file *f);
/* Size in bytes of one element of a scalar gguf_type, 0 for string/array. */
uint64_t gguf_type_size(enum gguf_type t);

/* Tensors. */
uint64_t gguf_tensor_count(const struct gguf_file *f);
const struct gguf_tensor *gguf_tensor_at(const struct gguf_file *f, uint64_t i);
const struct gguf_tensor *gguf_tensor_find(const struct gguf_file *f, const char *name);

const char *gguf_type_name(enum gguf_type t);

/* Writer: builds a GGUF v3 file in memory, then writes it out. */
struct gguf_writer;
int gguf_writer_new(struct gguf_writer **out, uint32_t alignment);
void gguf_writer_free(struct gguf_writer *w);
int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v);
/* Scalar arrays: elem_type is a scalar gguf_type, data holds count elements. */
int gguf_writer_set_arr(struct gguf_writer *w, const char *key, enum gguf_type elem_type,
                        const void *data, uint64_t count);
int gguf_writer_set_str_arr(struct gguf_writer *w, const char *key, const char *const *strs,
                            const uint64_t *lens, uint64_t count);
/* Adds a tensor; data holds the encoded bytes for the type (copied). */
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, enum ggml_type type,
                           uint32_t n_dims, const uint64_t *ne, const void *data, uint64_t nbytes);
int gguf_writer_write_file(struct gguf_writer *w, const char *path);

/* More setters. Setting a key again replaces its value (the position of the
 * first setting is kept). */
int gguf_writer_set_u64(struct gguf_writer *w, const char *key, uint64_t v);
/* A value given as its encoded bytes (what follows the type tag in the file),
 * e.g. from gguf_kv_raw_at(); the bytes are validated as a value of `type`. */
int gguf_writer_set_raw(struct gguf_writer *w, const char *key, enum gguf_type type,
                        const void *data, uint64_t len);
/* Writes the whole file into a malloc'd buffer (tests, fuzzing); the caller
 * frees *buf. */
int gguf_writer_write_buffer(struct gguf_writer *w, void **buf, size_t *len);

/* Streaming: declare every tensor first (no data), then stream_begin writes
 * the header, metadata and tensor infos; stream_data is called once per
 * declared tensor, in declaration order, with exactly its bytes (it may be
 * called in several pieces: the tensor is complete once its nbytes arrived);
 * stream_end checks that every tensor was written and closes the file. A
 * writer is either streaming or in-memory (add_tensor), not both. */
int gguf_writer_add_tensor_info(struct gguf_writer *w, const char *name, enum ggml_type type,
                                uint32_t n_dims, const uint64_t *ne);
int gguf_writer_stream_begin(struct gguf_writer *w, const char *path);
int gguf_writer_stream_data(struct gguf_writer *w, const void *data, uint64_t nbytes);
int gguf_writer_stream_end(struct gguf_writer *w);

#endif
