/* Time to open and index GGUF files (default: the shared vocab-only files,
 * whose 150k-string arrays dominate): min and mean over repeated opens,
 * against the 50 ms budget. Prints figures; never asserts. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "gguf.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void bench(const char *path, int reps)
{
    double min = 1e30, sum = 0;
    for (int i = 0; i < reps; i++) {
        char err[512];
        struct gguf_file *f;
        double t0 = now_ms();
        if (gguf_open(&f, path, err, sizeof err)) {
            printf("%s: %s\n", path, err);
            return;
        }
        double dt = now_ms() - t0;
        gguf_close(f);
        min = dt < min ? dt : min;
        sum += dt;
    }
    printf("%-50s open min %7.2f ms  mean %7.2f ms  (%.2fx of the 50 ms budget)\n", path, min,
           sum / reps, min / 50.0);
}

int main(int argc, char **argv)
{
    const char *shared = getenv("LLORCH_SHARED");
    char a[512], b[512];
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            bench(argv[i], 20);
        return 0;
    }
    snprintf(a, sizeof a, "%s/vocab/qwen2-vocab.gguf", shared ? shared : "../shared");
    snprintf(b, sizeof b, "%s/vocab/llama3-vocab.gguf", shared ? shared : "../shared");
    bench(a, 20);
    bench(b, 20);
    return 0;
}
