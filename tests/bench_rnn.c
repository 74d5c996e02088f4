/* One training step (forward and backward) of an LSTM: 2 layers, input 256,
   hidden 256, batch 32, 64 steps, batch first, the input needing a
   gradient too; the loss is a fixed weighting of every output. Prints the
   best wall-clock time of `steps` steps after one warm-up step, the GEMM
   rate that time means (per layer 2 products of B T x 256 x 1024 forward,
   4 backward) and the best processor time of the process per step (on a
   shared machine the time it was not descheduled, all threads summed).
   tests/bench_rnn.py is the same step in PyTorch; tests/bench_rnn.sh runs
   both, alternating.
   Usage: bench_rnn [threads [steps]] */
#define _POSIX_C_SOURCE 199309L
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"

#include <stdio.h>
#include <time.h>

enum { B = 32, T = 64, IN = 256, H = 256, LAYERS = 2 };

static double seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1, steps = argc > 2 ? atoi(argv[2]) : 10, s;
    av_model *m = av_model_new(1);
    av_rnn lstm = av_lstm_new(m, "lstm", IN, H, LAYERS, 0, 0.0f);
    av_ctx *c = av_ctx_new();
    float *x = (float *)malloc(sizeof(float) * B * T * IN), *r = (float *)malloc(sizeof(float) * B * T * H);
    double best = 1e30, best_cpu = 1e30, flops = 2.0 * B * T * 4 * H * (IN + H) * LAYERS * 3;
    av_rng rng;
    av_rng_seed(&rng, 7);
    for (s = 0; s < B * T * IN; s++) x[s] = av_rng_normal(&rng);
    for (s = 0; s < B * T * H; s++) r[s] = av_rng_normal(&rng);
    av_set_num_threads(threads);
    for (s = 0; s <= steps; s++) {
        double t0 = seconds(CLOCK_MONOTONIC), c0 = seconds(CLOCK_PROCESS_CPUTIME_ID), dt, dc;
        av_tensor *xt, *y;
        av_ctx_reset(c);
        av_model_zero_grad(m);
        xt = av_wrap(c, x, 3, B, T, IN);
        av_requires_grad(c, xt);
        y = av_rnn_forward(c, &lstm, xt, NULL, NULL, NULL, NULL, NULL);
        av_backward(c, av_sum_all(c, av_mul(c, y, av_wrap(c, r, 3, B, T, H))));
        dt = seconds(CLOCK_MONOTONIC) - t0;
        dc = seconds(CLOCK_PROCESS_CPUTIME_ID) - c0;
        if (s > 0 && dt < best) best = dt;
        if (s > 0 && dc < best_cpu) best_cpu = dc;
    }
    printf("attnvae lstm: %d threads, %s, best of %d steps: %.2f ms/step (%.0f GFLOP/s), processor %.2f ms/step\n",
           av_get_num_threads(), av_isa_name(av_get_isa()), steps, best * 1e3, flops / best * 1e-9, best_cpu * 1e3);
    printf("summary: {\"ms_per_step\": %.3f, \"cpu_ms_per_step\": %.3f}\n", best * 1e3, best_cpu * 1e3);
    av_ctx_free(c);
    av_model_free(m);
    free(x);
    free(r);
    return 0;
}
