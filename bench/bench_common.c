/* Machine facts and small helpers every benchmark prints or uses: a
 * monotonic clock, the CPU model and ISA flags, the last-level cache size
 * (sysfs, else CPUID, since VMs often hide one), deterministic test data. */
#include "bench_common.h"

#include <cpuid.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <immintrin.h>

#include "tpool.h"
#include "util.h"

double bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void bench_cpu_model(char *out, size_t cap, char *flags, size_t fcap)
{
    snprintf(out, cap, "unknown");
    flags[0] = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    static const char *want[] = {"avx2",        "fma",         "avx512f",  "avx512bw",
                                 "avx512vl",    "avx512_vnni", "avx512_bf16", "avx_vnni",
                                 "avx512_fp16", "amx_tile",    "amx_bf16", "amx_int8"};
    char line[8192];
    bool got_model = false, got_flags = false;
    while (fgets(line, sizeof(line), f) && !(got_model && got_flags)) {
        if (!got_model && strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c) {
                c += 2;
                c[strcspn(c, "\n")] = 0;
                snprintf(out, cap, "%s", c);
                got_model = true;
            }
        } else if (!got_flags && strncmp(line, "flags", 5) == 0) {
            size_t used = 0;
            for (size_t i = 0; i < LLORCH_ARRAY_SIZE(want); i++) {
                char pat[64];
                snprintf(pat, sizeof(pat), " %s ", want[i]);
                line[strcspn(line, "\n")] = ' ';
                if (strstr(line, pat) && used + strlen(want[i]) + 2 < fcap)
                    used += (size_t)snprintf(flags + used, fcap - used, "%s%s", used ? " " : "",
                                             want[i]);
            }
            got_flags = true;
        }
    }
    fclose(f);
}

/* Last-level cache size: sysfs, else CPUID (leaf 4 on Intel, 0x8000001D
 * on AMD, then AMD's legacy 0x80000006), since VMs often hide one or two. */
uint64_t bench_llc_bytes(void)
{
    uint64_t best = 0;
    for (int idx = 0; idx < 8; idx++) {
        char path[96], buf[32] = {0};
        snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu0/cache/index%d/size", idx);
        FILE *f = fopen(path, "r");
        if (!f)
            break;
        if (fgets(buf, sizeof(buf), f)) {
            char *end;
            uint64_t v = strtoull(buf, &end, 10);
            v *= *end == 'M' ? (1u << 20) : *end == 'K' ? 1024u : 1u;
            best = v > best ? v : best;
        }
        fclose(f);
    }
    if (best)
        return best;
    unsigned a, b, c, d;
    unsigned leaves[2] = {4, 0x8000001D};
    for (int l = 0; l < 2 && !best; l++) {
        unsigned max = l == 0 ? __get_cpuid_max(0, NULL) : __get_cpuid_max(0x80000000, NULL);
        if (max < leaves[l])
            continue;
        for (unsigned sub = 0; sub < 16; sub++) {
            __cpuid_count(leaves[l], sub, a, b, c, d);
            if ((a & 0x1f) == 0)
                break;
            uint64_t ways = ((b >> 22) & 0x3ff) + 1, parts = ((b >> 12) & 0x3ff) + 1;
            uint64_t line = (b & 0xfff) + 1, sets = (uint64_t)c + 1;
            uint64_t size = ways * parts * line * sets;
            best = size > best ? size : best;
        }
    }
    if (!best && __get_cpuid_max(0x80000000, NULL) >= 0x80000006) {
        __cpuid(0x80000006, a, b, c, d);
        best = (uint64_t)(d >> 18) * 512 * 1024; /* L3 in 512 KiB units */
        if (!best)
            best = (uint64_t)(c >> 16) * 1024; /* L2 in KiB */
    }
    return best;
}

float *bench_rand_floats(int64_t n, uint64_t seed)
{
    float *a = malloc(sizeof(float) * (size_t)n);
    if (!a)
        return NULL;
    uint64_t s = seed * 2654435761u + 1;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        a[i] = (float)((double)(s >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
    }
    return a;
}

static void bench_bw_task(void *vctx, int64_t b, int64_t e, int worker)
{
    struct bench_bw *c = vctx;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = b; i < e; i++) {
        const __m256i *p = (const __m256i *)(const void *)(c->buf + i * c->chunk);
        const int64_t n = c->chunk / 32;
        for (int64_t j = 0; j < n; j += 4) {
            if (c->prefetch) /* may run past the chunk: prefetches do not fault */
                _mm_prefetch((const char *)(p + j) + c->prefetch, _MM_HINT_T0);
            a0 = _mm256_xor_si256(a0, _mm256_load_si256(p + j));
            a1 = _mm256_xor_si256(a1, _mm256_load_si256(p + j + 1));
            a2 = _mm256_xor_si256(a2, _mm256_load_si256(p + j + 2));
            a3 = _mm256_xor_si256(a3, _mm256_load_si256(p + j + 3));
        }
    }
    a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    c->sink[(worker % 64) * 8] ^= (uint64_t)_mm256_extract_epi64(a0, 0);
}

void bench_bw_pass(struct bench_bw *c)
{
    if (c->pool)
        tpool_parallel_for(c->pool, c->n, 1, bench_bw_task, c);
    else
        bench_bw_task(c, 0, c->n, 0);
}

double bench_bw_trial(struct bench_bw *c, double min_s)
{
    double best = 0;
    for (int pf = 0; pf < 2; pf++) {
        c->prefetch = pf ? 512 : 0;
        double t0 = bench_now_s(), dt;
        int passes = 0;
        do {
            bench_bw_pass(c);
            passes++;
            dt = bench_now_s() - t0;
        } while (dt < min_s);
        best = LLORCH_MAX(best, (double)passes * (double)(c->n * c->chunk) / dt);
    }
    return best;
}
