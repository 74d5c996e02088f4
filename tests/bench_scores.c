/* bench_scores.c - additive (Bahdanau) scores: the fused av_additive_scores
   against the same scores composed from plain ops (a broadcast add
   [B,Tq,1,A] + [B,1,Tk,A], tanh, a product with v), forward alone and
   forward + backward, on 1 and on 2 threads, at a decoder's sizes: all steps
   at once (teacher forcing), one step (Tq = 1), and a longer sequence.
   Prints milliseconds per call (the median of the repetitions) and the
   speed-up; both give the same scores (checked here to 1e-5). */
#define _POSIX_C_SOURCE 199309L
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static av_tensor *composed(av_ctx *c, av_tensor *q, av_tensor *k, av_tensor *v) {
    int B = q->shape[0], Tq = q->shape[1], Tk = k->shape[1], A = q->shape[2];
    av_tensor *pre = av_add(c, av_reshape(c, q, 4, B, Tq, 1, A), av_reshape(c, k, 4, B, 1, Tk, A));
    return av_reshape(c, av_linear(c, av_tanh(c, pre), v, NULL), 3, B, Tq, Tk);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* median milliseconds of one call (fused or composed, with or without backward) */
static double run(int fused, int backward, int B, int Tq, int Tk, int A, int reps, float *check) {
    av_ctx *c = av_ctx_new();
    double t[64];
    int r;
    for (r = 0; r < reps + 1; r++) {
        av_tensor *q, *k, *v, *s;
        double t0;
        av_ctx_reset(c);
        av_ctx_seed(c, 7);
        q = av_randn(c, 0, 1, 3, B, Tq, A);
        k = av_randn(c, 0, 1, 3, B, Tk, A);
        v = av_randn(c, 0, 0.2f, 2, 1, A);
        if (backward) { av_requires_grad(c, q); av_requires_grad(c, k); av_requires_grad(c, v); }
        t0 = now();
        s = fused ? av_additive_scores(c, q, k, v) : composed(c, q, k, v);
        if (backward) av_backward(c, av_sum_all(c, s));
        if (r) t[r - 1] = 1e3 * (now() - t0); /* the first call warms the arena */
        if (check && r == reps) memcpy(check, s->data, sizeof(float) * (size_t)s->size);
    }
    av_ctx_free(c);
    qsort(t, (size_t)reps, sizeof t[0], cmp);
    return t[reps / 2];
}

int main(void) {
    static const int sizes[][4] = {{64, 10, 30, 64}, {64, 1, 30, 64}, {32, 50, 50, 128}};
    int s, threads, backward;
    printf("isa %s; milliseconds per call (median)\n", av_isa_name(av_get_isa()));
    for (s = 0; s < 3; s++) {
        int B = sizes[s][0], Tq = sizes[s][1], Tk = sizes[s][2], A = sizes[s][3], n = B * Tq * Tk, i;
        float *a = (float *)malloc(sizeof(float) * (size_t)n), *b = (float *)malloc(sizeof(float) * (size_t)n);
        double worst = 0;
        int reps = (double)n * A > 5e6 ? 9 : 31;
        run(1, 0, B, Tq, Tk, A, 1, a);
        run(0, 0, B, Tq, Tk, A, 1, b);
        for (i = 0; i < n; i++) worst = fabs((double)a[i] - b[i]) > worst ? fabs((double)a[i] - b[i]) : worst;
        printf("B %d Tq %d Tk %d A %d (fused vs composed: largest difference %.1g)%s\n", B, Tq, Tk, A, worst,
               worst > 1e-5 ? "  MISMATCH" : "");
        for (threads = 1; threads <= 2; threads++) {
            av_set_num_threads(threads);
            for (backward = 0; backward < 2; backward++) {
                double f = run(1, backward, B, Tq, Tk, A, reps, NULL), p = run(0, backward, B, Tq, Tk, A, reps, NULL);
                printf("  %d thread%s %-18s fused %8.3f  composed %8.3f  speed-up %5.1fx\n", threads, threads > 1 ? "s" : " ",
                       backward ? "forward+backward" : "forward", f, p, p / f);
            }
        }
        free(a);
        free(b);
    }
    return 0;
}
