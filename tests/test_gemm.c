/* av_sgemm against a double-precision reference, on every ISA path this
   build and CPU support. `--quick` (or AV_TEST_QUICK=1) trims the sizes for
   valgrind/sanitizer runs. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"

#include <float.h>

static unsigned t_rng = 12345u;
static float t_rand(void) { /* uniform in [-1, 1) */
    t_rng = t_rng * 1664525u + 1013904223u;
    return (float)((t_rng >> 8) * (1.0 / 8388608.0) - 1.0);
}

static const char *t_case; /* description of the current case, for failures */
static int t_cases;

/* One C = alpha*op(A)*op(B) + beta*C case. pad adds to every leading
   dimension; off shifts every base pointer by that many floats (off=1 makes
   them misaligned). Returns 1 if all entries are within tolerance. */
static int t_gemm(int ta, int tb, int M, int N, int K, float alpha, float beta,
                  int pad, int off) {
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    int lda = ac + pad, ldb = bc + pad, ldc = N + pad, i, j, k, bad = 0;
    size_t na = (size_t)ar * lda + off + 1, nb = (size_t)br * ldb + off + 1,
           nc = (size_t)M * ldc + off + 1;
    float *A = (float *)malloc(na * sizeof(float));
    float *B = (float *)malloc(nb * sizeof(float));
    float *C = (float *)malloc(nc * sizeof(float));
    float *C0 = (float *)malloc(nc * sizeof(float));
    for (i = 0; i < (int)na; i++) A[i] = t_rand();
    for (i = 0; i < (int)nb; i++) B[i] = t_rand();
    for (i = 0; i < (int)nc; i++) C0[i] = beta == 0 ? NAN : t_rand();
    memcpy(C, C0, nc * sizeof(float));
    av_sgemm(ta, tb, M, N, K, alpha, A + off, lda, B + off, ldb, beta, C + off,
             ldc);
    t_cases++;
    for (i = 0; i < M; i++)
        for (j = 0; j < N; j++) {
            double dot = 0, mag = 0, want, tol;
            for (k = 0; k < K; k++) {
                double a = ta ? A[off + (size_t)k * lda + i] : A[off + (size_t)i * lda + k];
                double b = tb ? B[off + (size_t)j * ldb + k] : B[off + (size_t)k * ldb + j];
                dot += a * b;
                mag += fabs(a * b);
            }
            want = alpha * dot;
            mag *= fabs(alpha);
            if (beta != 0) {
                want += beta * (double)C0[off + (size_t)i * ldc + j];
                mag += fabs(beta * (double)C0[off + (size_t)i * ldc + j]);
            }
            /* Any order of float summation of K products, then the alpha and
               beta steps, errs by at most (K+3)*eps*sum|terms| (Higham,
               gamma_n bound to first order); 1e-30 covers mag == 0. */
            tol = (K + 3) * (double)FLT_EPSILON * mag + 1e-30;
            if (!(fabs(C[off + (size_t)i * ldc + j] - want) <= tol) && !bad++)
                CHECK(0, "%s ta=%d tb=%d M=%d N=%d K=%d alpha=%g beta=%g pad=%d "
                      "off=%d: C[%d][%d]=%.9g want %.9g tol %.3g", t_case, ta,
                      tb, M, N, K, alpha, beta, pad, off, i, j,
                      C[off + (size_t)i * ldc + j], want, tol);
        }
    /* Padding between rows and around the matrix must stay untouched. */
    for (i = 0; i < (int)nc; i++) {
        int r = (i - off) / ldc, col = (i - off) % ldc;
        int inside = i >= off && r < M && col < N;
        if (!inside && memcmp(&C[i], &C0[i], sizeof(float)) && !bad++)
            CHECK(0, "%s M=%d N=%d pad=%d: wrote outside C at %d", t_case, M,
                  N, pad, i);
    }
    if (!bad) t_passed++;
    free(A), free(B), free(C), free(C0);
    return !bad;
}

static const float t_alphas[] = {1.0f, -0.5f, 2.0f, 1.0f};
static const float t_betas[] = {0.0f, 1.0f, 0.75f, -2.0f};

/* Size sweep for the current ISA and thread count. */
static void t_sweep(int quick) {
    static const int small[] = {1, 2, 7, 16, 17, 33};
    static const int sizes[] = {1, 2, 3, 7, 15, 16, 17, 31, 33,
                                64, 65, 127, 129, 333};
    static const int others[][2] = {{13, 37}, {64, 129}, {5, 3}};
    int ns = quick ? 4 : 6, nsz = (int)(sizeof sizes / sizeof *sizes);
    int t, a, b, c, v = 0, d, s, o;
    for (t = 0; t < 4; t++) {
        int ta = t & 1, tb = t >> 1;
        /* Every combination of small shapes. */
        for (a = 0; a < ns; a++)
            for (b = 0; b < ns; b++)
                for (c = 0; c < ns; c++, v++)
                    t_gemm(ta, tb, small[a], small[b], small[c], t_alphas[v % 4],
                           t_betas[v / 4 % 4], v % 3, v % 2);
        /* Each listed size in each dimension, the other two varied. */
        for (d = 0; d < 3; d++)
            for (s = 0; s < nsz; s++)
                for (o = 0; o < (quick ? 1 : 3); o++, v++) {
                    int dims[3];
                    if (quick && s % 3) continue;
                    dims[d] = sizes[s];
                    dims[(d + 1) % 3] = others[o][0];
                    dims[(d + 2) % 3] = others[o][1];
                    t_gemm(ta, tb, dims[0], dims[1], dims[2], t_alphas[v % 4],
                           t_betas[v / 4 % 4], v % 3 * 5, v % 2);
                }
    }
    /* Several blocks along each of M (mc), N (nc) and K (kc). */
    if (!quick) {
        t_gemm(0, 0, 1030, 72, 530, 1.0f, 0.5f, 1, 1);
        t_gemm(1, 1, 1030, 72, 530, -1.0f, 0.0f, 0, 0);
    }
    t_gemm(0, 1, 5, 1500, 20, 1.0f, 0.0f, 2, 1);
    t_gemm(1, 0, 9, 40, 800, 1.0f, 0.5f, 3, 1);
}

static void t_api(void) {
    const char *env = getenv("ATTNVAE_ISA");
    int isa;
    /* Before anything else sets it: the environment chose the path (when
       it names a supported one). */
    for (isa = AV_ISA_SCALAR; env && isa <= AV_ISA_NEON; isa++)
        if (!strcmp(env, av_isa_name(isa)) && av_isa_supported(isa))
            CHECK(av_get_isa() == isa, "ATTNVAE_ISA=%s but path is %s", env,
                  av_isa_name(av_get_isa()));
    CHECK(av_isa_supported(AV_ISA_SCALAR) && av_isa_supported(AV_ISA_AUTO),
          "scalar and auto always supported");
    CHECK(av_set_isa(AV_ISA_AUTO) == 0 && av_get_isa() != AV_ISA_AUTO,
          "auto resolves to a concrete path");
    CHECK(av_set_isa(99) == AV_ERR_ARG, "unknown ISA rejected");
    for (isa = AV_ISA_SCALAR; isa <= AV_ISA_NEON; isa++)
        if (!av_isa_supported(isa))
            CHECK(av_set_isa(isa) < 0, "unsupported %s accepted", av_isa_name(isa));
    CHECK(!strcmp(av_isa_name(AV_ISA_AVX512), "avx512") &&
              !strcmp(av_isa_name(-1), "?"), "names");
}

/* Special values: zero dimensions, alpha == 0, K == 0. */
static void t_degenerate(void) {
    float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 1, 1, 1, 1, 1};
    float C[4] = {1, 2, 3, 4};
    av_sgemm(0, 0, 2, 2, 0, 1.0f, A, 1, B, 2, 3.0f, C, 2);
    CHECK(C[0] == 3 && C[3] == 12, "K=0 scales C by beta");
    av_sgemm(0, 0, 2, 2, 3, 0.0f, A, 3, B, 2, 0.0f, C, 2);
    CHECK(C[0] == 0 && C[3] == 0, "alpha=0 beta=0 zeroes C");
    C[0] = NAN;
    av_sgemm(0, 0, 0, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2);
    av_sgemm(0, 0, 2, 0, 3, 1.0f, A, 3, B, 0, 0.0f, C, 2);
    CHECK(C[0] != C[0], "M=0 or N=0 leaves C alone");
}

#ifdef _OPENMP
/* The same bits on 1 and 2 threads: threads split C on tile boundaries, by
   rows or by columns, and each element sums its products in the same order
   whatever the split. */
static void t_same_bits_on_threads(void) {
    static const int shapes[][3] = {{333, 129, 530}, {64, 1030, 200}, {1030, 72, 530}};
    int s, t;
    for (s = 0; s < 3; s++)
        for (t = 0; t < 4; t++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], i;
            int ta = t & 1, tb = t >> 1;
            float *A = (float *)malloc((size_t)M * K * sizeof(float));
            float *B = (float *)malloc((size_t)K * N * sizeof(float));
            float *C1 = (float *)malloc((size_t)M * N * sizeof(float));
            float *C2 = (float *)malloc((size_t)M * N * sizeof(float));
            for (i = 0; i < M * K; i++) A[i] = t_rand();
            for (i = 0; i < K * N; i++) B[i] = t_rand();
            av_set_num_threads(1);
            av_sgemm(ta, tb, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, 0.0f, C1, N);
            av_set_num_threads(2);
            av_sgemm(ta, tb, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, 0.0f, C2, N);
            CHECK(!memcmp(C1, C2, (size_t)M * N * sizeof(float)),
                  "%s: %dx%dx%d ta=%d tb=%d differs on 1 and 2 threads", t_case, M, N, K, ta, tb);
            free(A), free(B), free(C1), free(C2);
        }
    av_set_num_threads(0);
}
#endif

int main(int argc, char **argv) {
    int quick = (argc > 1 && !strcmp(argv[1], "--quick")) ||
                (getenv("AV_TEST_QUICK") && atoi(getenv("AV_TEST_QUICK")));
    int isa;
    t_api();
    t_degenerate();
    for (isa = AV_ISA_SCALAR; isa <= AV_ISA_NEON; isa++) {
        int before = t_cases;
        if (!av_isa_supported(isa)) continue;
        av_set_isa(isa);
        t_case = av_isa_name(isa);
        av_set_num_threads(1);
        t_sweep(quick);
#ifdef _OPENMP
        char name[64];
        av_set_num_threads(2);
        snprintf(name, sizeof name, "%s, 2 threads", av_isa_name(isa));
        t_case = name;
        t_sweep(quick);
        t_same_bits_on_threads();
#endif
        printf("isa %s: %d gemm cases\n", av_isa_name(isa), t_cases - before);
    }
    return t_summary();
}
