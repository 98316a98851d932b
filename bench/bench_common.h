/* Helpers shared by the benchmarks in bench/ (see bench_common.c). */
#ifndef LLORCH_BENCH_COMMON_H
#define LLORCH_BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Seconds on the monotonic clock. */
double bench_now_s(void);
/* CPU model name and the ISA flags that matter here (" avx2 fma ..."). */
void bench_cpu_model(char *out, size_t cap, char *flags, size_t fcap);
/* Last-level cache bytes, 0 when unknown. */
uint64_t bench_llc_bytes(void);
/* n floats in [-1, 1) from a fixed LCG (malloc'd), or NULL. */
float *bench_rand_floats(int64_t n, uint64_t seed);

struct tpool;

/* The read bandwidth roofline: n tasks of chunk bytes (a multiple of 128)
 * of a 32-byte aligned buffer, streamed with 256-bit loads by the pool's
 * workers (the caller alone when pool is NULL). */
struct bench_bw {
    struct tpool *pool;
    const uint8_t *buf;
    int64_t chunk; /* bytes per task */
    int64_t n;     /* tasks per pass */
    int prefetch;  /* bytes ahead, 0: none */
    uint64_t sink[64 * 8];
};
/* One pass over the n chunks. */
void bench_bw_pass(struct bench_bw *c);
/* Passes for at least min_s, plain then with a software prefetch 512 bytes
 * ahead (as oneDNN's kernels do); the better rate in bytes per second. */
double bench_bw_trial(struct bench_bw *c, double min_s);

#endif
