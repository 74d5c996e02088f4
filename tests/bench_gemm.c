/* av_sgemm against OpenBLAS's cblas_sgemm, side by side in one run, on 1 and
   2 threads, each figure in GFLOP/s and as a share of the measured FMA peak
   (of one core on 1 thread, of two on 2 threads).

   OpenBLAS must run at its best: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE force
   an older kernel on newer CPUs (e.g. Haswell's AVX2 kernel on Zen 5), so
   make bench runs this program with both unset (only OpenBLAS reads them).
   The machine is shared, so the two libraries alternate round by round and
   each keeps its best round.
   Usage: bench_gemm [isa [rows]]   e.g. bench_gemm avx2, or
   bench_gemm avx512 x64x   for the rows whose label contains "x64x". */
#define _POSIX_C_SOURCE 199309L
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"

#include "bench_peak.h"
#include <cblas.h>

char *openblas_get_corename(void);
char *openblas_get_config(void);

/* Each library runs B_BLOCKS blocks of ~B_BLOCK_SECONDS, alternating with
   the other; a block is a series of short rounds (the call repeated for at
   least B_ROUND_SECONDS) and the best round of all counts. Short rounds are
   the ones that another process on the machine leaves alone. */
#define B_BLOCKS 5
#define B_BLOCK_SECONDS 0.05
#define B_ROUND_SECONDS 0.002

static void b_sleep(double seconds) {
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

/* The 1-minute load average (Linux), or "?". */
static void b_load_average(char *buf, size_t size) {
    FILE *f = fopen("/proc/loadavg", "r");
    snprintf(buf, size, "?");
    if (f && fscanf(f, "%31s", buf) != 1) snprintf(buf, size, "?");
    if (f) fclose(f);
}

/* ---- timing ---- */
typedef struct {
    const char *op; /* "NN", "NT" or "TN": transposes of A and B */
    int M, N, K;
    const float *A, *B;
    float *C;
} b_case;

static void b_run(const b_case *c, int blas) {
    int ta = c->op[0] == 'T', tb = c->op[1] == 'T';
    int lda = ta ? c->M : c->K, ldb = tb ? c->K : c->N;
    if (blas)
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                    tb ? CblasTrans : CblasNoTrans, c->M, c->N, c->K, 1.0f,
                    c->A, lda, c->B, ldb, 0.0f, c->C, c->N);
    else
        av_sgemm(ta, tb, c->M, c->N, c->K, 1.0f, c->A, lda, c->B, ldb, 0.0f,
                 c->C, c->N);
}

/* Best GFLOP/s of each library (gf[0] av_sgemm, gf[1] OpenBLAS) over
   B_BLOCKS blocks each, alternating; after each pair of blocks the FMA peak
   of the ISA in use runs for ~10 ms, so the peak is seen under the same
   load. Idle OpenBLAS workers keep spinning for ~0.1 s after a threaded
   call and would steal the cores from av_sgemm, so a block after one waits
   that long first. */
static void b_measure(const b_case *c, float *C_av, float *C_blas, int threads,
                      double gf[2]) {
    static int blas_spinning; /* the last block ran OpenBLAS threaded */
    double flops = 2.0 * c->M * c->N * c->K;
    int reps[2], lib, block, r;
    b_case cc = *c;
    av_set_num_threads(threads);
    openblas_set_num_threads(threads);
    for (lib = 0; lib < 2; lib++) { /* warm up, and size a round */
        double t0, dt;
        cc.C = lib ? C_blas : C_av;
        b_run(&cc, lib);
        t0 = b_now();
        b_run(&cc, lib);
        dt = b_now() - t0;
        reps[lib] = 1;
        while (reps[lib] * dt < B_ROUND_SECONDS) reps[lib] *= 2;
        gf[lib] = 0;
    }
    for (block = 0; block < B_BLOCKS; block++) {
        for (lib = 0; lib < 2; lib++) {
            double start;
            b_sleep(blas_spinning ? 0.15 : 0.01);
            cc.C = lib ? C_blas : C_av;
            start = b_now();
            do {
                double t0 = b_now(), dt;
                for (r = 0; r < reps[lib]; r++) b_run(&cc, lib);
                dt = b_now() - t0;
                if (flops * reps[lib] / dt * 1e-9 > gf[lib]) gf[lib] = flops * reps[lib] / dt * 1e-9;
            } while (b_now() - start < B_BLOCK_SECONDS);
            blas_spinning = lib == 1 && threads > 1;
        }
        b_update_peak(av_get_isa(), 10);
    }
}

int main(int argc, char **argv) {
    /* The table's shapes: square sizes, the VAE's layers (x W and x W^T),
       then attention with head size 64 over T = 256..2048: Q K^T (T x T x 64
       NT; its backward dO V^T too), P V and dS K (T x 64 x T NN), and
       P^T dO and dS^T Q (T x 64 x T TN). */
    static const struct { int M, N, K; const char *op; } shapes[] = {
        {64, 64, 64, "NN"},       {128, 128, 128, "NN"},   {256, 256, 256, "NN"},
        {512, 512, 512, "NN"},    {1024, 1024, 1024, "NN"}, {1024, 1024, 1024, "NT"},
        {2048, 2048, 2048, "NN"}, {128, 1024, 64, "NN"},   {1024, 1024, 64, "NN"},
        {64, 1024, 1024, "NN"},   {784, 512, 256, "NN"},   {784, 512, 256, "NT"},
        {128, 400, 784, "NN"},    {128, 400, 784, "NT"},
        {256, 256, 64, "NT"},     {256, 64, 256, "NN"},    {256, 64, 256, "TN"},
        {512, 512, 64, "NT"},     {512, 64, 512, "NN"},    {512, 64, 512, "TN"},
        {1024, 1024, 64, "NT"},   {1024, 64, 1024, "NN"},  {1024, 64, 1024, "TN"},
        {2048, 2048, 64, "NT"},   {2048, 64, 2048, "NN"},  {2048, 64, 2048, "TN"}};
    enum { NSHAPES = sizeof shapes / sizeof *shapes };
    double gf[NSHAPES][2][2], err[NSHAPES], peak, min_ratio[2] = {1e9, 1e9}, min_share = 1e9;
    int ran[NSHAPES] = {0}, s, t, lib, isa, peak_isa;
    char load[32];
    float *A, *B, *C, *Cref;
    size_t i, max = (size_t)2048 * 2048;
    if (argc > 1) {
        for (isa = AV_ISA_SCALAR; isa <= AV_ISA_NEON; isa++)
            if (!strcmp(argv[1], av_isa_name(isa)) && av_set_isa(isa) == 0) break;
        if (isa > AV_ISA_NEON) return fprintf(stderr, "unknown or unsupported isa %s\n", argv[1]), 1;
    }
    isa = av_get_isa();
    b_load_average(load, sizeof load);
    printf("OpenBLAS: core %s; %s\n", openblas_get_corename(), openblas_get_config());
    if (getenv("OPENBLAS_CORETYPE") || getenv("OPENBLAS_L2_SIZE"))
        printf("WARNING: OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE is set, so OpenBLAS may not run "
               "at its best (unset both: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)\n");
    printf("measuring; the table comes at the end (about two minutes)\n");
    fflush(stdout);
    A = (float *)malloc(max * sizeof(float));
    B = (float *)malloc(max * sizeof(float));
    C = (float *)malloc(max * sizeof(float));
    Cref = (float *)malloc(max * sizeof(float));
    for (i = 0; i < max; i++) {
        A[i] = (float)((i * 7919 % 1000) / 500.0 - 1.0);
        B[i] = (float)((i * 104729 % 1000) / 500.0 - 1.0);
    }
    b_update_peak(AV_ISA_AVX512, 100); /* then more after each pair of blocks */
    b_update_peak(AV_ISA_AVX2, 100);
    for (s = 0; s < NSHAPES; s++) {
        b_case c;
        double scale = 0;
        char label[40];
        c.op = shapes[s].op, c.M = shapes[s].M, c.N = shapes[s].N, c.K = shapes[s].K;
        c.A = A, c.B = B;
        snprintf(label, sizeof label, "%dx%dx%d %s", c.M, c.N, c.K, c.op);
        if (argc > 2 && !strstr(label, argv[2])) continue;
        for (t = 0; t < 2; t++) b_measure(&c, C, Cref, t + 1, gf[s][t]);
        err[s] = 0;
        for (i = 0; i < (size_t)c.M * c.N; i++) {
            if (fabs((double)C[i] - Cref[i]) > err[s]) err[s] = fabs((double)C[i] - Cref[i]);
            if (fabs(Cref[i]) > scale) scale = fabs(Cref[i]);
        }
        err[s] /= scale;
        ran[s] = 1;
    }
    b_update_peak(AV_ISA_AVX512, 100);
    b_update_peak(AV_ISA_AVX2, 100);
    /* Shares are of the ISA in use; the scalar path is measured against
       the best vector peak, the distance to what the core can do. */
    peak_isa = b_peak[isa] > 0 ? isa : b_peak[AV_ISA_AVX512] > 0 ? AV_ISA_AVX512 : AV_ISA_AVX2;
    peak = b_peak[peak_isa];
    printf("FMA peak of one core (independent FMA chains, best 1-ms piece of the run): "
           "avx512 %.1f GFLOP/s, avx2 %.1f GFLOP/s\n", b_peak[AV_ISA_AVX512], b_peak[AV_ISA_AVX2]);
    printf("av_sgemm (%s) vs OpenBLAS cblas_sgemm in GFLOP/s: the best %.0f-ms round of %d blocks of\n"
           "%.0f ms each, the two alternating block by block (the machine is shared; load average\n"
           "%s at the start); %%pk: share of the %s peak (x2 on 2 threads)\n",
           av_isa_name(isa), B_ROUND_SECONDS * 1e3, B_BLOCKS, B_BLOCK_SECONDS * 1e3, load,
           av_isa_name(peak_isa));
    printf("%-19s | %7s %4s %7s %4s %5s | %7s %4s %7s %4s %5s | %s\n", "M x N x K op",
           "av 1t", "%pk", "blas 1t", "%pk", "ratio", "av 2t", "%pk", "blas 2t",
           "%pk", "ratio", "rel err");
    for (s = 0; s < NSHAPES; s++) {
        char label[40], share[2][2][8];
        if (!ran[s]) continue;
        snprintf(label, sizeof label, "%dx%dx%d %s", shapes[s].M, shapes[s].N, shapes[s].K, shapes[s].op);
        for (t = 0; t < 2; t++) {
            for (lib = 0; lib < 2; lib++)
                if (peak > 0)
                    snprintf(share[t][lib], sizeof share[t][lib], "%3.0f%%",
                             100 * gf[s][t][lib] / (peak * (t + 1)));
                else
                    snprintf(share[t][lib], sizeof share[t][lib], "  - ");
            if (gf[s][t][0] / gf[s][t][1] < min_ratio[t]) min_ratio[t] = gf[s][t][0] / gf[s][t][1];
        }
        if (shapes[s].M == shapes[s].N && shapes[s].N == shapes[s].K && shapes[s].M >= 256 &&
            peak > 0 && gf[s][0][0] / peak < min_share)
            min_share = gf[s][0][0] / peak;
        printf("%-19s | %7.1f %4s %7.1f %4s %5.2f | %7.1f %4s %7.1f %4s %5.2f | %.1e%s\n",
               label, gf[s][0][0], share[0][0], gf[s][0][1], share[0][1], gf[s][0][0] / gf[s][0][1],
               gf[s][1][0], share[1][0], gf[s][1][1], share[1][1], gf[s][1][0] / gf[s][1][1],
               err[s], err[s] > 1e-4 ? "  MISMATCH" : "");
    }
    printf("lowest ratio av/blas: %.2f on 1 thread, %.2f on 2 threads", min_ratio[0], min_ratio[1]);
    if (min_share < 1e9) printf("; lowest share of peak at 256^3..2048^3 on 1 thread: %.0f%%", 100 * min_share);
    printf("\n");
    free(A), free(B), free(C), free(Cref);
    return 0;
}
