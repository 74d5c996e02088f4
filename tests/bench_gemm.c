/* GFLOP/s of av_sgemm vs OpenBLAS cblas_sgemm, both measured in this run,
   on 1 and 2 threads. Best of several runs (the machine is shared).
   Usage: bench_gemm [isa]   e.g. bench_gemm avx2 */
#define _POSIX_C_SOURCE 199309L
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"

#include <cblas.h>
#include <time.h>

static double b_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    int ta, tb, M, N, K;
    const float *A, *B;
    float *C;
} b_case;

static void b_run(const b_case *c, int blas) {
    int lda = c->ta ? c->M : c->K, ldb = c->tb ? c->K : c->N;
    if (blas)
        cblas_sgemm(CblasRowMajor, c->ta ? CblasTrans : CblasNoTrans,
                    c->tb ? CblasTrans : CblasNoTrans, c->M, c->N, c->K, 1.0f,
                    c->A, lda, c->B, ldb, 0.0f, c->C, c->N);
    else
        av_sgemm(c->ta, c->tb, c->M, c->N, c->K, 1.0f, c->A, lda, c->B, ldb,
                 0.0f, c->C, c->N);
}

/* Best GFLOP/s over 7 rounds of >= 40 ms each (after one warm-up call).
   Starts with a pause: idle OpenMP and OpenBLAS workers spin for a while
   after their last call and would steal the cores from the other library. */
static double b_gflops(const b_case *c, int blas) {
    double flops = 2.0 * c->M * c->N * c->K, best = 0;
    struct timespec pause = {0, 200000000};
    int round, reps = 1, r;
    nanosleep(&pause, NULL);
    b_run(c, blas);
    for (round = 0; round < 7; round++) {
        double t0 = b_now(), dt;
        for (r = 0; r < reps; r++) b_run(c, blas);
        dt = b_now() - t0;
        if (flops * reps / dt > best) best = flops * reps / dt;
        for (dt /= reps; reps * dt < 0.04;) reps *= 2;
    }
    return best * 1e-9;
}

int main(int argc, char **argv) {
    static const int shapes[][3] = {
        {64, 64, 64},     {128, 128, 128},   {256, 256, 256},
        {512, 512, 512},  {1024, 1024, 1024}, {2048, 2048, 2048},
        {128, 1024, 64},  {1024, 1024, 64},  {64, 1024, 1024},
        {784, 512, 256},  {128, 400, 784}};
    int nshapes = (int)(sizeof shapes / sizeof *shapes), s, t, threads;
    float *A, *B, *C, *Cref;
    size_t i, max = (size_t)2048 * 2048;
    if (argc > 1) {
        int isa;
        for (isa = AV_ISA_SCALAR; isa <= AV_ISA_NEON; isa++)
            if (!strcmp(argv[1], av_isa_name(isa)) && av_set_isa(isa) == 0) break;
        if (isa > AV_ISA_NEON) return fprintf(stderr, "unknown isa %s\n", argv[1]), 1;
    }
    A = (float *)malloc(max * sizeof(float));
    B = (float *)malloc(max * sizeof(float));
    C = (float *)malloc(max * sizeof(float));
    Cref = (float *)malloc(max * sizeof(float));
    for (i = 0; i < max; i++) {
        A[i] = (float)((i * 7919 % 1000) / 500.0 - 1.0);
        B[i] = (float)((i * 104729 % 1000) / 500.0 - 1.0);
    }
    printf("av_sgemm (%s) vs OpenBLAS cblas_sgemm, GFLOP/s\n",
           av_isa_name(av_get_isa()));
    printf("%-22s %9s %9s %6s   %9s %9s %6s   %s\n", "M x N x K (op)", "av 1t",
           "blas 1t", "ratio", "av 2t", "blas 2t", "ratio", "max rel err");
    for (s = 0; s < nshapes; s++)
        for (t = 0; t < 2; t++) {
            b_case c;
            double res[2][2], err = 0, scale = 0;
            char label[40];
            int n;
            /* NN for all shapes; A*B^T (as in the VAE's x*W^T) for a few. */
            if (t == 1 && s != 4 && s != 9 && s != 10) continue;
            c.ta = 0, c.tb = t, c.M = shapes[s][0], c.N = shapes[s][1];
            c.K = shapes[s][2], c.A = A, c.B = B;
            for (threads = 1; threads <= 2; threads++) {
                av_set_num_threads(threads);
                openblas_set_num_threads(threads);
                c.C = Cref;
                res[threads - 1][1] = b_gflops(&c, 1);
                c.C = C;
                res[threads - 1][0] = b_gflops(&c, 0);
            }
            for (n = 0; n < c.M * c.N; n++) {
                double d = fabs((double)C[n] - Cref[n]);
                if (d > err) err = d;
                if (fabs(Cref[n]) > scale) scale = fabs(Cref[n]);
            }
            snprintf(label, sizeof label, "%dx%dx%d (%s)", c.M, c.N, c.K,
                     t ? "NT" : "NN");
            printf("%-22s %9.1f %9.1f %6.2f   %9.1f %9.1f %6.2f   %.1e%s\n",
                   label, res[0][0], res[0][1], res[0][0] / res[0][1],
                   res[1][0], res[1][1], res[1][0] / res[1][1], err / scale,
                   err / scale > 1e-4 ? "  MISMATCH" : "");
        }
    free(A), free(B), free(C), free(Cref);
    return 0;
}
