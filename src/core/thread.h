/* Which thread may run a function. libuv's internals assert their state and
 * thread; ours do the same: an object records the thread that owns it when
 * it starts (the loop thread for loop-bound objects, the step driver for the
 * scheduler's driver-side state), and every function that only that thread
 * may run begins with LLORCH_ASSERT_ON_LOOP() or LLORCH_ASSERT_ON_DRIVER().
 * The asserts compile out under NDEBUG (release builds), as assert() does;
 * the ASan build and the unit tests keep them. docs/THREADS.md lists the
 * threads and every channel between them. */
#ifndef LLORCH_THREAD_H
#define LLORCH_THREAD_H

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>

struct llorch_thread {
    pthread_t id;
    bool set;                     /* false until recorded: nothing is checked */
};

/* Records the calling thread as the owner. */
static inline void llorch_thread_record(struct llorch_thread *t)
{
    t->id = pthread_self();
    t->set = true;
}

/* True on the owning thread, or when no owner was recorded yet. */
static inline bool llorch_thread_is_current(const struct llorch_thread *t)
{
    return !t->set || pthread_equal(t->id, pthread_self());
}

/* True off the owning thread (always before it was recorded). */
static inline bool llorch_thread_is_other(const struct llorch_thread *t)
{
    return !t->set || !pthread_equal(t->id, pthread_self());
}

/* t is the object's recorded loop thread. */
#define LLORCH_ASSERT_ON_LOOP(t) assert(llorch_thread_is_current(t))
/* t is the scheduler's recorded step-driver thread. */
#define LLORCH_ASSERT_ON_DRIVER(t) assert(llorch_thread_is_current(t))
/* Anywhere but t's thread (e.g. the loop side of the scheduler). */
#define LLORCH_ASSERT_OFF_THREAD(t) assert(llorch_thread_is_other(t))

#endif
