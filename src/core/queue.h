/* Intrusive circular doubly linked list. A struct llorch_queue is embedded in
 * the element; the head is a sentinel node of the same type. No allocation:
 * elements move between lists (free lists, run queues, event lists) by
 * relinking. Recover the element with llorch_container_of(). */
#ifndef LLORCH_QUEUE_H
#define LLORCH_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

struct llorch_queue {
    struct llorch_queue *next;
    struct llorch_queue *prev;
};

static inline void llorch_queue_init(struct llorch_queue *q)
{
    q->next = q;
    q->prev = q;
}

static inline bool llorch_queue_empty(const struct llorch_queue *q)
{
    return q->next == q;
}

static inline struct llorch_queue *llorch_queue_head(const struct llorch_queue *q)
{
    return q->next;
}

static inline void llorch_queue_insert_tail(struct llorch_queue *h,
                                            struct llorch_queue *q)
{
    q->next = h;
    q->prev = h->prev;
    q->prev->next = q;
    h->prev = q;
}

static inline void llorch_queue_insert_head(struct llorch_queue *h,
                                            struct llorch_queue *q)
{
    q->next = h->next;
    q->prev = h;
    q->next->prev = q;
    h->next = q;
}

static inline void llorch_queue_remove(struct llorch_queue *q)
{
    q->prev->next = q->next;
    q->next->prev = q->prev;
    q->next = q;
    q->prev = q;
}

/* Moves every element of h to the tail of n, leaving h empty. */
static inline void llorch_queue_move(struct llorch_queue *h,
                                     struct llorch_queue *n)
{
    if (llorch_queue_empty(h))
        return;
    struct llorch_queue *first = h->next;
    struct llorch_queue *last = h->prev;
    first->prev = n->prev;
    n->prev->next = first;
    last->next = n;
    n->prev = last;
    llorch_queue_init(h);
}

/* Iterate; do not remove the current element inside this loop (use the
 * _safe variant for that). */
#define llorch_queue_foreach(q, h)                                             \
    for ((q) = (h)->next; (q) != (h); (q) = (q)->next)

#define llorch_queue_foreach_safe(q, tmp, h)                                   \
    for ((q) = (h)->next, (tmp) = (q)->next; (q) != (h);                       \
         (q) = (tmp), (tmp) = (q)->next)

#endif
