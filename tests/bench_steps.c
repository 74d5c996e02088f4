/* Training steps on 1 and 2 threads, and the 2-thread speedup, for the
   models of the examples on synthetic data of their shapes:
     VAE  784-400-20-400-784, ReLU, Bernoulli decoder, batch 128, Adam
     MLP  784-512-256-10, ReLU, dropout 0.2 after each hidden layer,
          batch 128, cross-entropy, Adam
   Best of 10 rounds of >= 0.25 s each (the machine is shared), after a
   warm-up. Both thread counts run the same steps from the same seeds.
   Then where threads start to pay (AV__PAR_MIN): the cost of starting and
   joining 2 threads, and per op its time per value on one thread and the
   size at which half of that work saves the start-up.
   Usage: bench_steps [rounds]                      (build with -fopenmp) */
#define _POSIX_C_SOURCE 199309L
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { B = 128, DIM = 784, DATA = 1024 };

static double b_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct b_model {
    int vae;
    av_model *m;
    av_ctx *c;
    av_mlp enc, dec, mlp;
    av_gaussian_head head;
    av_optim adam;
    float *x;
    int *y;
} b_model;

static b_model b_new(int vae) {
    static const int enc[2] = {DIM, 400}, dec[3] = {20, 400, DIM}, mlp[4] = {DIM, 512, 256, 10};
    b_model b;
    av_rng r;
    int i;
    memset(&b, 0, sizeof b);
    b.vae = vae;
    b.m = av_model_new(1);
    b.c = av_ctx_new();
    b.adam = av_adam(1e-3f);
    if (vae) {
        b.enc = av_mlp_new(b.m, "enc", 1, enc, AV_ACT_RELU);
        b.head = av_gaussian_head_new(b.m, "head", 400, 20);
        b.dec = av_mlp_new(b.m, "dec", 2, dec, AV_ACT_RELU);
    } else {
        b.mlp = av_mlp_new(b.m, "mlp", 3, mlp, AV_ACT_RELU);
    }
    /* images: a third of the pixels off, the rest intensities; labels 0..9 */
    b.x = (float *)malloc((size_t)DATA * DIM * sizeof(float));
    b.y = (int *)malloc(DATA * sizeof(int));
    av_rng_seed(&r, 2);
    for (i = 0; i < DATA * DIM; i++) b.x[i] = av_rng_uniform(&r) < 0.33f ? 0.0f : av_rng_uniform(&r);
    for (i = 0; i < DATA; i++) b.y[i] = (int)(av_rng_u64(&r) % 10);
    return b;
}

static void b_free(b_model *b) {
    free(b->x);
    free(b->y);
    av_ctx_free(b->c);
    av_model_free(b->m);
}

static void b_step(b_model *b, int step) {
    av_ctx *c = b->c;
    int at = step * B % DATA;
    av_tensor *x, *loss;
    av_ctx_reset(c);
    x = av_wrap(c, b->x + (size_t)at * DIM, 2, B, DIM);
    if (b->vae) {
        av_tensor *mu, *logvar, *z;
        av_gaussian_head_forward(c, &b->head, av_relu(c, av_mlp_forward(c, &b->enc, x)), &mu, &logvar);
        z = av_reparameterize(c, mu, logvar);
        loss = av_neg_elbo(c, av_bernoulli_nll(c, av_mlp_forward(c, &b->dec, z), x), av_kl_std_normal(c, mu, logvar), 1.0f);
    } else {
        const av_mlp *n = &b->mlp;
        av_tensor *h = av_dropout(c, av_relu(c, av_linear_forward(c, &n->layers[0], x)), 0.2f);
        h = av_dropout(c, av_relu(c, av_linear_forward(c, &n->layers[1], h)), 0.2f);
        loss = av_cross_entropy(c, av_linear_forward(c, &n->layers[2], h), b->y + at, AV_MEAN);
    }
    av_model_zero_grad(b->m);
    av_backward(c, loss);
    if (av_optim_step(b->m, &b->adam)) {
        fprintf(stderr, "bench_steps: %s\n", av_error());
        exit(1);
    }
}

/* best milliseconds per step over the rounds */
static double b_time(int vae, int threads, int rounds) {
    b_model b = b_new(vae);
    double best = 1e30;
    int round, step = 0, reps = 4, r;
    struct timespec pause = {0, 200000000};
    av_set_num_threads(threads);
    nanosleep(&pause, NULL); /* idle OpenMP workers of the last run stop spinning */
    for (r = 0; r < 3; r++) b_step(&b, step++);
    for (round = 0; round < rounds; round++) {
        double t0 = b_now(), dt;
        for (r = 0; r < reps; r++) b_step(&b, step++);
        dt = (b_now() - t0) / reps;
        if (dt < best) best = dt;
        while (reps * dt < 0.25) reps *= 2;
    }
    b_free(&b);
    return best * 1e3;
}

/* ---- the threshold ---- */
/* best seconds of one empty parallel loop over 2 items on 2 threads */
static double b_fork_join(void) {
    double best = 1e30;
    int round, r;
    volatile int sink = 0;
    for (round = 0; round < 200; round++) {
        double t0 = b_now(), dt;
        for (r = 0; r < 100; r++) {
            int k;
            AV_OMP(omp parallel for num_threads(2) schedule(static))
            for (k = 0; k < 2; k++) sink += 0;
        }
        dt = (b_now() - t0) / 100;
        if (dt < best) best = dt;
    }
    (void)sink;
    return best;
}

enum { B_ADD, B_EXP, B_SUM, B_DROPOUT, B_SOFTMAX, B_OPS };
static const char *b_op_names[B_OPS] = {"add", "exp", "sum_all", "dropout", "softmax (rows of 64)"};

/* best seconds per value of an op on n values (n below AV__PAR_MIN: one thread) */
static double b_op_time(int op, int n) {
    static float xa[1 << 16], xb[1 << 16];
    av_ctx *c = av_ctx_new();
    double best = 1e30;
    int round, r, i;
    for (i = 0; i < n; i++) {
        xa[i] = 0.5f + (float)(i % 100) / 100.0f;
        xb[i] = 1.5f - (float)(i % 37) / 37.0f;
    }
    av_set_grad_enabled(c, 0);
    for (round = 0; round < 20; round++) {
        double t0 = b_now(), dt;
        for (r = 0; r < 20; r++) {
            av_tensor *a, *b;
            av_ctx_reset(c);
            a = av_wrap(c, xa, 2, n / 64, 64);
            b = av_wrap(c, xb, 2, n / 64, 64);
            switch (op) {
            case B_ADD: av_add(c, a, b); break;
            case B_EXP: av_exp(c, a); break;
            case B_SUM: av_sum_all(c, a); break;
            case B_DROPOUT: av_dropout(c, a, 0.2f); break;
            default: av_softmax(c, a); break;
            }
        }
        dt = (b_now() - t0) / 20;
        if (dt < best) best = dt;
    }
    av_ctx_free(c);
    return best / n;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 10, vae;
#ifndef _OPENMP
    printf("bench_steps: built without OpenMP, one thread only\n");
#endif
    printf("training step, best of %d rounds (ms per step, lower is better; gemm path %s)\n", rounds,
           av_isa_name(av_get_isa()));
    printf("%-40s %10s %10s %8s\n", "model", "1 thread", "2 threads", "speedup");
    for (vae = 1; vae >= 0; vae--) {
        double t1 = b_time(vae, 1, rounds), t2 = b_time(vae, 2, rounds);
        printf("%-40s %10.3f %10.3f %8.2f\n",
               vae ? "VAE 784-400-20-400-784, batch 128" : "MLP 784-512-256-10 + dropout, batch 128", t1, t2, t1 / t2);
    }
#ifdef _OPENMP
    {
        double fork = b_fork_join();
        int op;
        av_set_num_threads(1);
        printf("\nthreads pay from n values where n t / 2 > the start of 2 threads, %.2f us (AV__PAR_MIN = %d)\n",
               fork * 1e6, AV__PAR_MIN);
        printf("%-24s %14s %14s\n", "op", "ns per value", "break-even n");
        for (op = 0; op < B_OPS; op++) {
            double t = b_op_time(op, AV__PAR_MIN / 2);
            printf("%-24s %14.3f %14.0f\n", b_op_names[op], t * 1e9, 2 * fork / t);
        }
        av_set_num_threads(0);
    }
#endif
    return 0;
}
