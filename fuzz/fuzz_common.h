/* What every harness shares: where the test data lives (LLORCH_SHARED, else
 * the ../shared the build was configured with) and a way to stop at once on
 * a broken invariant (a crash libFuzzer keeps as a reproducer). */
#ifndef LLORCH_FUZZ_COMMON_H
#define LLORCH_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);       \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

static inline const char *fuzz_shared_dir(void)
{
    const char *s = getenv("LLORCH_SHARED");
    return s && s[0] ? s : LLORCH_FUZZ_SHARED_DIR;
}

#endif
