/* Resumable streams: the `id:` of every SSE frame of a job
 * ("<job id>:<frame index>", the job id percent-encoded where SSE forbids a
 * byte), the journal of a resumable job's frames (whole frames, bounded per
 * job and over all jobs), and the registry of jobs whose connection dropped:
 * each waits up to its grace period for a reader with Last-Event-ID, then
 * the registry's expire callback ends it. The API modules own the jobs and
 * embed a resume_entry in each; this module owns bytes and deadlines only.
 * Loop thread only. */
#ifndef LLORCH_RESUME_H
#define LLORCH_RESUME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "http.h"
#include "queue.h"
#include "sse.h"

/* Job ids as the scheduler's (SCHED_JOB_ID_MAX: up to 255 bytes); an id is
 * "<job id, each byte escaped to at most 3>:<u64>" plus a NUL. */
#define RESUME_JOB_ID_MAX 256
#define RESUME_ID_MAX ((RESUME_JOB_ID_MAX - 1) * 3 + 1 + 20 + 1)

struct resume_limits {
    uint32_t grace_ms;    /* 0: no stream is resumable (closing cancels) */
    uint64_t job_bytes;   /* journal bound per job */
    uint64_t total_bytes; /* journal bound over all jobs */
};

struct resume_registry;
struct resume_entry;

/* Called when a detached entry's grace ends with nobody back (the entry is
 * already out of the registry and no longer resumable): the owner cancels
 * its job, or frees it when the job had already ended. Each owner (API
 * module) passes its own, which also tells whose job an entry is. */
typedef void (*resume_expire_fn)(void *ctx, struct resume_entry *e);

struct resume_entry {
    struct resume_registry *reg;
    resume_expire_fn expire;    /* the owner's */
    void *expire_ctx;
    struct llorch_queue node;   /* in the registry while resumable */
    struct http_buf journal;    /* whole frames, in order */
    uint64_t *ends;             /* frame i ends at journal byte ends[i] */
    uint64_t n_journal;         /* frames in the journal (= frames sent) */
    uint64_t ends_cap;
    uint64_t next_index;        /* index of the next frame */
    uint64_t deadline;          /* uv_now() ms, while detached */
    uint32_t grace_ms;
    bool resumable;             /* journaling; a dropped connection detaches */
    bool detached;
    bool ended;                 /* the terminal frame is in the journal */
    bool with_ids;              /* frames carry id lines (set by init; an owner may
                                 * clear it for streams that are not resumable) */
    enum sse_mode mode;
    size_t job_id_len;
    char job_id[RESUME_JOB_ID_MAX];
    size_t id_prefix_len;       /* the encoded job id and ':' */
    char id_prefix[RESUME_ID_MAX];
};

struct resume_stats {
    uint32_t entries;   /* resumable jobs */
    uint32_t detached;  /* of which waiting for a reader */
    uint64_t bytes;     /* journal bytes over all jobs */
    uint64_t resumes, replayed_frames, expired, overflowed;
};

/* Starts the registry's timer on loop. */
int resume_registry_new(struct resume_registry **out, uv_loop_t *loop,
                        const struct resume_limits *lim);
/* Closes the timer; the memory goes in its close callback (keep running the
 * loop). Entries must have been freed. NULL is safe. */
void resume_registry_close(struct resume_registry *r);
/* The largest grace a request may ask for (0 = resumable streams off). */
uint32_t resume_registry_grace_ms(const struct resume_registry *r);
/* Ends every detached entry's grace now (drain, shutdown). */
void resume_registry_expire_all(struct resume_registry *r);
/* The resumable entry of a job id, or NULL. */
struct resume_entry *resume_registry_find(struct resume_registry *r, const char *job_id,
                                          size_t len);
void resume_registry_stats(const struct resume_registry *r, struct resume_stats *st);

/* An entry for a new job (job_id at most RESUME_JOB_ID_MAX - 1 bytes). grace_ms > 0 (capped
 * at the registry's) makes it resumable: registered and journaling. */
void resume_entry_init(struct resume_entry *e, struct resume_registry *r, const char *job_id,
                       size_t job_id_len, enum sse_mode mode, uint32_t grace_ms,
                       resume_expire_fn expire, void *ctx);
/* Leaves the registry and frees the journal. */
void resume_entry_free(struct resume_entry *e);

/* Formats the job's next frame (that of sse_frame_append with an
 * "id: <job>:<index>" line before its blank line) into out (replacing its contents) and journals it when
 * resumable. A journal over its bounds is dropped and the entry stops being
 * resumable (its connection's drop then cancels as usual). terminal marks
 * the job's last frame. */
int resume_entry_frame(struct resume_entry *e, struct http_buf *out, const char *type,
                       const char *json, size_t len, bool terminal);

/* The connection dropped: true when the entry is resumable and now waits
 * for a reader (its grace counts from now); false when the caller must
 * cancel as before. */
bool resume_entry_detach(struct resume_entry *e);

/* A reader asks for the frames after Last-Event-ID (hdr NULL: from the
 * first frame). On success *from is the first frame index to send, else a
 * negative code: LLORCH_EINVAL (malformed, or another job's id),
 * LLORCH_ERANGE (past the last frame). */
int resume_entry_parse_last_id(const struct resume_entry *e, const char *hdr, size_t len,
                               uint64_t *from);
/* The reader is attached: the bytes of frames from..end to send first
 * (pointers into the journal, valid until the next frame), counted as a
 * resume and replayed frames. */
void resume_entry_attach(struct resume_entry *e, uint64_t from, const char **data,
                         size_t *len);

#endif
