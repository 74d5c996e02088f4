/* A 3x3 convolution (padding 1, bias) forward + backward (dx, dW, db):
   milliseconds of the best round (at least 3 rounds and 1 second) and
   GFLOP/s (3 products of 2 B Cout Cin 9 Ho Wo each).
     bench_conv B Cin Cout H stride threads     prints one JSON line
   tests/bench_conv.sh runs the table against PyTorch. */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    int B, Cin, Cout, H, stride, threads, reps = 0, Ho;
    double best = 1e30, fwd_best = 1e30, start, flops;
    av_conv_opts o;
    av_ctx *c;
    if (argc != 7) {
        fprintf(stderr, "usage: bench_conv B Cin Cout H stride threads\n");
        return 2;
    }
    B = atoi(argv[1]); Cin = atoi(argv[2]); Cout = atoi(argv[3]); H = atoi(argv[4]);
    stride = atoi(argv[5]); threads = atoi(argv[6]);
    if (B < 1 || Cin < 1 || Cout < 1 || H < 1 || stride < 1 || threads < 1) {
        fprintf(stderr, "bench_conv: every argument must be >= 1\n");
        return 2;
    }
    av_set_num_threads(threads);
    o = av_conv_opts_square(stride, 1, 1, 1);
    Ho = (H - 1) / stride + 1;
    flops = 3.0 * 2.0 * B * Cout * Cin * 9.0 * Ho * Ho;
    c = av_ctx_new();
    start = now();
    while (reps < 3 || (now() - start < 1.0 && reps < 50)) {
        av_tensor *x, *w, *b, *y;
        double t0, t1, t2;
        av_ctx_reset(c);
        av_ctx_seed(c, 1);
        x = av_rand(c, -1, 1, 4, B, Cin, H, H);
        w = av_rand(c, -0.1f, 0.1f, 4, Cout, Cin, 3, 3);
        b = av_rand(c, -0.1f, 0.1f, 1, Cout);
        av_requires_grad(c, x); av_requires_grad(c, w); av_requires_grad(c, b);
        t0 = now();
        y = av_conv2d(c, x, w, b, &o);
        t1 = now();
        av_backward(c, av_sum_all(c, y));
        t2 = now();
        if (t2 - t0 < best) best = t2 - t0;
        if (t1 - t0 < fwd_best) fwd_best = t1 - t0;
        reps++;
    }
    printf("{\"impl\": \"attnvae\", \"isa\": \"%s\", \"B\": %d, \"Cin\": %d, \"Cout\": %d, \"H\": %d, \"stride\": %d, "
           "\"threads\": %d, \"ms\": %.2f, \"fwd_ms\": %.2f, \"gflops\": %.1f}\n",
           av_isa_name(av_get_isa()), B, Cin, Cout, H, stride, threads, 1e3 * best, 1e3 * fwd_best, flops / best * 1e-9);
    av_ctx_free(c);
    return 0;
}
