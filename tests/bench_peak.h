/* The benchmarks' clock and FMA peak of one core, shared by
   bench_gemm.c and bench_attention.c (include after attnvae.h). The peak is
   the best of many ~1-ms pieces: short pieces are the ones that other
   processes on a shared machine leave alone. */
#ifndef BENCH_PEAK_H
#define BENCH_PEAK_H
#include <stdio.h>
#include <time.h>

static double b_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Independent chains of vector FMAs, more than latency x throughput (4
   cycles x 2 pipes on Zen 4/5 and recent Intel cores) so the pipes never
   wait: 16 for AVX-512 (32 registers), 12 for AVX2 (16 registers; more would
   spill). Returns a sum of the chains so nothing is optimised away. */
#define B_CHAINS12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define B_CHAINS16(X) B_CHAINS12(X) X(12) X(13) X(14) X(15)
#define B_DECL(i) VEC a##i = SET1(1.0f + (i) * 0.01f);
#define B_STEP(i) a##i = FMA(a##i, x, y);
#define B_SUM(i) s = ADD(s, a##i);
#define B_FMA_CHAINS(CHAINS, n)                                           \
    VEC x = SET1(0.999999f), y = SET1(1e-7f), s = SET1(0.0f);             \
    long it;                                                              \
    CHAINS(B_DECL)                                                        \
    for (it = 0; it < (n); it++) { CHAINS(B_STEP) }                       \
    CHAINS(B_SUM)                                                         \
    return FIRST(s);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define VEC __m512
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define FIRST(v) _mm_cvtss_f32(_mm512_castps512_ps128(v))
__attribute__((target("avx512f"))) static float b_fma_avx512(long n) { B_FMA_CHAINS(B_CHAINS16, n) }
#undef VEC
#undef SET1
#undef FMA
#undef ADD
#undef FIRST
#define VEC __m256
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define FIRST(v) _mm_cvtss_f32(_mm256_castps256_ps128(v))
__attribute__((target("avx2,fma"))) static float b_fma_avx2(long n) { B_FMA_CHAINS(B_CHAINS12, n) }
#undef VEC
#undef SET1
#undef FMA
#undef ADD
#undef FIRST

/* GFLOP/s of the chains for an ISA over n steps; 0 if the CPU lacks it. */
static double b_fma_gflops(int isa, long n) {
    const double flops = isa == AV_ISA_AVX512 ? 2.0 * 16 * 16 * n : 2.0 * 12 * 8 * n;
    double t0, dt;
    volatile float sink;
    if ((isa != AV_ISA_AVX512 && isa != AV_ISA_AVX2) || !av_isa_supported(isa)) return 0;
    t0 = b_now();
    sink = isa == AV_ISA_AVX512 ? b_fma_avx512(n) : b_fma_avx2(n);
    dt = b_now() - t0;
    (void)sink;
    return flops / dt * 1e-9;
}
#else
static double b_fma_gflops(int isa, long n) { (void)isa, (void)n; return 0; }
#endif

/* The best FMA peak seen so far for each ISA, GFLOP/s (index: AV_ISA_*). */
static double b_peak[AV_ISA_NEON + 1];

/* Runs the FMA chains of isa `pieces` times for ~1 ms; keeps the best. */
static void b_update_peak(int isa, int pieces) {
    while (pieces-- > 0) {
        double gf = b_fma_gflops(isa, 400000);
        if (gf > b_peak[isa]) b_peak[isa] = gf;
    }
}

#endif
