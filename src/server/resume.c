/* Resumable streams: frame ids, per-job frame journals under two byte
 * bounds, and the registry of detached jobs with one timer that ends their
 * grace. An id is "<job id>:<frame index>" with the job id's bytes that SSE
 * or the separator cannot carry (controls, space, '%', ':', DEL) escaped as
 * %XX, so that an id line is one line and splits at its last ':'. */
#include "resume.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/error.h"
#include "sched.h"
#include "util.h"

_Static_assert(RESUME_JOB_ID_MAX == SCHED_JOB_ID_MAX, "job ids as the scheduler's");

#define RESUME_TICK_MS 20u /* expiry resolution while any entry is detached */

struct resume_registry {
    uv_loop_t *loop;
    uv_timer_t timer;
    struct resume_limits lim;
    struct llorch_queue entries;
    struct resume_stats st;
    bool ticking;
};

LLORCH_API int resume_registry_new(struct resume_registry **out, uv_loop_t *loop,
                        const struct resume_limits *lim)
{
    *out = NULL;
    struct resume_registry *r = calloc(1, sizeof(*r));
    if (!r)
        return LLORCH_ENOMEM;
    r->loop = loop;
    r->lim = *lim;
    llorch_queue_init(&r->entries);
    if (uv_timer_init(loop, &r->timer) != 0) {
        free(r);
        return LLORCH_EUV;
    }
    r->timer.data = r;
    *out = r;
    return 0;
}

static void registry_closed(uv_handle_t *h)
{
    free(h->data);
}

LLORCH_API void resume_registry_close(struct resume_registry *r)
{
    if (!r)
        return;
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, registry_closed);
}

LLORCH_API uint32_t resume_registry_grace_ms(const struct resume_registry *r)
{
    return r ? r->lim.grace_ms : 0;
}

LLORCH_API void resume_registry_stats(const struct resume_registry *r, struct resume_stats *st)
{
    *st = r->st;
}

/* Takes e out of the registry: no longer resumable, journal freed. */
static void entry_unregister(struct resume_entry *e)
{
    struct resume_registry *r = e->reg;
    if (!e->resumable)
        return;
    e->resumable = false;
    llorch_queue_remove(&e->node);
    r->st.entries--;
    if (e->detached) {
        e->detached = false;
        r->st.detached--;
    }
    r->st.bytes -= e->journal.len;
    http_buf_free(&e->journal);
    free(e->ends);
    e->ends = NULL;
    e->n_journal = e->ends_cap = 0;
}

static void expire_one(struct resume_registry *r, struct resume_entry *e)
{
    entry_unregister(e);
    r->st.expired++;
    e->expire(e->expire_ctx, e);
}

static void tick(uv_timer_t *t)
{
    struct resume_registry *r = t->data;
    uint64_t now = uv_now(r->loop);
    struct llorch_queue *q, *tmp;
    llorch_queue_foreach_safe(q, tmp, &r->entries) {
        struct resume_entry *e = llorch_container_of(q, struct resume_entry, node);
        if (e->detached && now >= e->deadline)
            expire_one(r, e);
    }
    if (r->st.detached == 0) {
        uv_timer_stop(&r->timer);
        r->ticking = false;
    }
}

LLORCH_API void resume_registry_expire_all(struct resume_registry *r)
{
    if (!r)
        return;
    struct llorch_queue *q, *tmp;
    llorch_queue_foreach_safe(q, tmp, &r->entries) {
        struct resume_entry *e = llorch_container_of(q, struct resume_entry, node);
        if (e->detached)
            expire_one(r, e);
    }
    /* attached ones may still detach: their grace is now none */
    r->lim.grace_ms = 0;
    llorch_queue_foreach(q, &r->entries) {
        llorch_container_of(q, struct resume_entry, node)->grace_ms = 0;
    }
}

struct resume_entry *resume_registry_find(struct resume_registry *r, const char *job_id,
                                          size_t len)
{
    if (!r)
        return NULL;
    struct llorch_queue *q;
    llorch_queue_foreach(q, &r->entries) {
        struct resume_entry *e = llorch_container_of(q, struct resume_entry, node);
        if (e->job_id_len == len && memcmp(e->job_id, job_id, len) == 0)
            return e;
    }
    return NULL;
}

static bool id_byte_escaped(unsigned char c)
{
    return c <= 0x20 || c == 0x7f || c == '%' || c == ':';
}

LLORCH_API void resume_entry_init(struct resume_entry *e, struct resume_registry *r, const char *job_id,
                       size_t job_id_len, enum sse_mode mode, uint32_t grace_ms,
                       resume_expire_fn expire, void *ctx)
{
    memset(e, 0, sizeof(*e));
    e->reg = r;
    e->expire = expire;
    e->expire_ctx = ctx;
    e->with_ids = true;
    e->mode = mode;
    llorch_queue_init(&e->node);
    e->job_id_len = LLORCH_MIN(job_id_len, sizeof(e->job_id) - 1);
    memcpy(e->job_id, job_id, e->job_id_len);
    size_t n = 0;
    for (size_t i = 0; i < e->job_id_len; i++) {
        unsigned char c = (unsigned char)e->job_id[i];
        if (id_byte_escaped(c))
            n += (size_t)snprintf(e->id_prefix + n, sizeof(e->id_prefix) - n, "%%%02X", c);
        else
            e->id_prefix[n++] = (char)c;
    }
    e->id_prefix[n++] = ':';
    e->id_prefix_len = n;
    if (r && grace_ms > 0 && r->lim.grace_ms > 0) {
        e->grace_ms = LLORCH_MIN(grace_ms, r->lim.grace_ms);
        e->resumable = true;
        llorch_queue_insert_tail(&r->entries, &e->node);
        r->st.entries++;
    }
}

LLORCH_API void resume_entry_free(struct resume_entry *e)
{
    entry_unregister(e);
}

static int journal_add(struct resume_entry *e, const char *frame, size_t len)
{
    struct resume_registry *r = e->reg;
    if (e->journal.len + len > r->lim.job_bytes || r->st.bytes + len > r->lim.total_bytes)
        return LLORCH_EFULL;
    if (e->n_journal == e->ends_cap) {
        uint64_t cap = e->ends_cap ? e->ends_cap * 2 : 32;
        uint64_t *p = realloc(e->ends, cap * sizeof(*p));
        if (!p)
            return LLORCH_ENOMEM;
        e->ends = p;
        e->ends_cap = cap;
    }
    int rc = http_buf_append(&e->journal, frame, len);
    if (rc)
        return rc;
    e->ends[e->n_journal++] = e->journal.len;
    r->st.bytes += len;
    return 0;
}

LLORCH_API int resume_entry_frame(struct resume_entry *e, struct http_buf *out, const char *type,
                       const char *json, size_t len, bool terminal)
{
    /* The id line goes last ("event:", "data:", "id:", blank line): field
     * order does not matter to SSE, and data-mode clients look for frames
     * that begin with "data: ". */
    out->len = 0;
    int rc = sse_frame_append(out, e->mode, type, json, len);
    if (!rc && e->with_ids) {
        out->len--; /* the blank line comes after the id */
        rc = http_buf_append(out, "id: ", 4);
    }
    if (!rc && e->with_ids)
        rc = http_buf_append(out, e->id_prefix, e->id_prefix_len);
    if (!rc && e->with_ids)
        rc = http_buf_printf(out, "%llu\n\n", (unsigned long long)e->next_index);
    if (rc)
        return rc;
    e->next_index++;
    if (e->resumable) {
        if (journal_add(e, out->data, out->len) != 0) {
            /* over a bound: this job can no longer be replayed exactly; a
             * detached one is ended now, as a dropped connection would */
            struct resume_registry *r = e->reg;
            bool detached = e->detached;
            r->st.overflowed++;
            entry_unregister(e);
            if (detached)
                e->expire(e->expire_ctx, e);
        } else if (terminal) {
            e->ended = true;
        }
    }
    return 0;
}

LLORCH_API bool resume_entry_detach(struct resume_entry *e)
{
    struct resume_registry *r = e->reg;
    if (!e->resumable || e->detached || e->grace_ms == 0)
        return false;
    e->detached = true;
    r->st.detached++;
    e->deadline = uv_now(r->loop) + e->grace_ms;
    if (!r->ticking) {
        r->ticking = true;
        uv_timer_start(&r->timer, tick, RESUME_TICK_MS, RESUME_TICK_MS);
    }
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

LLORCH_API int resume_entry_parse_last_id(const struct resume_entry *e, const char *hdr, size_t len,
                               uint64_t *from)
{
    *from = 0;
    if (!hdr)
        return 0;
    while (len && (hdr[0] == ' ' || hdr[0] == '\t'))
        hdr++, len--;
    while (len && (hdr[len - 1] == ' ' || hdr[len - 1] == '\t'))
        len--;
    const char *colon = NULL;
    for (size_t i = len; i > 0; i--) {
        if (hdr[i - 1] == ':') {
            colon = hdr + i - 1;
            break;
        }
    }
    if (!colon)
        return LLORCH_EINVAL;
    /* the job part, escapes decoded, must be this job's id */
    size_t jl = (size_t)(colon - hdr), n = 0;
    for (size_t i = 0; i < jl; i++) {
        char c = hdr[i];
        if (c == '%') {
            if (i + 2 >= jl || hexval(hdr[i + 1]) < 0 || hexval(hdr[i + 2]) < 0)
                return LLORCH_EINVAL;
            c = (char)(hexval(hdr[i + 1]) * 16 + hexval(hdr[i + 2]));
            i += 2;
        }
        if (n >= e->job_id_len || e->job_id[n] != c)
            return LLORCH_EINVAL;
        n++;
    }
    if (n != e->job_id_len)
        return LLORCH_EINVAL;
    const char *d = colon + 1;
    size_t dl = len - jl - 1;
    if (dl == 0 || dl > 20)
        return LLORCH_EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < dl; i++) {
        if (d[i] < '0' || d[i] > '9')
            return LLORCH_EINVAL;
        uint64_t nv = v * 10 + (uint64_t)(d[i] - '0');
        if (nv / 10 != v)
            return LLORCH_EINVAL;
        v = nv;
    }
    if (v >= e->next_index)
        return LLORCH_ERANGE;
    *from = v + 1;
    return 0;
}

LLORCH_API void resume_entry_attach(struct resume_entry *e, uint64_t from, const char **data, size_t *len)
{
    struct resume_registry *r = e->reg;
    *data = NULL;
    *len = 0;
    if (e->detached) {
        e->detached = false;
        r->st.detached--;
    }
    r->st.resumes++;
    if (!e->resumable || from >= e->n_journal)
        return;
    uint64_t start = from ? e->ends[from - 1] : 0;
    *data = e->journal.data + start;
    *len = e->journal.len - start;
    r->st.replayed_frames += e->n_journal - from;
}
