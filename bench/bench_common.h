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

#endif
