/* Causal attention, forward + backward, B = 1, H = 8, D = 64: milliseconds,
   GFLOP/s (the unmasked half only: 7 T^2 D per head for the five products of
   the forward and backward), CPU milliseconds of the process (all threads)
   and peak memory of av_sdpa or av_sdpa_weights; each the best round.
   One configuration per run, so that the peak resident memory is this
   configuration's alone:
     bench_attention sdpa|weights T threads    prints one JSON line
     bench_attention peak                      the FMA peak of one core (bench_peak.h)
   tests/bench_attention.sh runs the table against PyTorch. */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "bench_peak.h"
#include <sys/resource.h>

/* CPU time of the process, all threads: on one thread, the time it ran
   whatever else the machine ran meanwhile. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double max_rss_mb(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_maxrss / 1024.0; /* Linux: kilobytes */
}

int main(int argc, char **argv) {
    int T, threads, H = 8, D = 64, weights, reps = 0;
    double base, best = 1e30, fwd_best = 1e30, cpu_best = 1e30, start;
    av_ctx *c;
    if (argc == 2 && strcmp(argv[1], "peak") == 0) { /* the best of 500 pieces of ~1 ms */
        b_update_peak(av_get_isa(), 500);
        printf("{\"isa\": \"%s\", \"fma_peak_gflops\": %.1f}\n", av_isa_name(av_get_isa()), b_peak[av_get_isa()]);
        return 0;
    }
    if (argc != 4 || (strcmp(argv[1], "sdpa") && strcmp(argv[1], "weights"))) {
        fprintf(stderr, "usage: bench_attention sdpa|weights T threads | bench_attention peak\n");
        return 2;
    }
    weights = strcmp(argv[1], "weights") == 0;
    T = atoi(argv[2]);
    threads = atoi(argv[3]);
    if (T < 1 || threads < 1) {
        fprintf(stderr, "bench_attention: T and threads must be >= 1\n");
        return 2;
    }
    av_set_num_threads(threads);
    c = av_ctx_new();
    base = max_rss_mb();
    start = b_now();
    /* at least 5 rounds and 1 second; the best round is kept (the machine is shared) */
    while (reps < 5 || (b_now() - start < 1.0 && reps < 50)) {
        av_tensor *q, *k, *v, *o, *w;
        double t0, t1, t2, cpu;
        av_ctx_reset(c);
        av_ctx_seed(c, 1);
        q = av_rand(c, -1, 1, 4, 1, H, T, D);
        k = av_rand(c, -1, 1, 4, 1, H, T, D);
        v = av_rand(c, -1, 1, 4, 1, H, T, D);
        av_requires_grad(c, q); av_requires_grad(c, k); av_requires_grad(c, v);
        cpu = cpu_now();
        t0 = b_now();
        o = weights ? av_sdpa_weights(c, q, k, v, NULL, 1, 0.0f, &w) : av_sdpa(c, q, k, v, NULL, 1, 0.0f, 0.0f);
        t1 = b_now();
        av_backward(c, av_sum_all(c, o));
        t2 = b_now();
        cpu = cpu_now() - cpu;
        if (t2 - t0 < best) best = t2 - t0;
        if (cpu < cpu_best) cpu_best = cpu;
        if (t1 - t0 < fwd_best) fwd_best = t1 - t0;
        reps++;
    }
    printf("{\"impl\": \"%s\", \"T\": %d, \"threads\": %d, \"ms\": %.2f, \"fwd_ms\": %.2f, \"cpu_ms\": %.2f, "
           "\"gflops\": %.1f, \"peak_rss_mb\": %.1f, \"arena_mb\": %.1f}\n",
           argv[1], T, threads, 1e3 * best, 1e3 * fwd_best, 1e3 * cpu_best, 7.0 * T * T * D * H / best * 1e-9,
           max_rss_mb() - base, (double)av_ctx_peak_bytes(c) / 1048576.0);
    av_ctx_free(c);
    return 0;
}
