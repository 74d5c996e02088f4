/* ---- GEMM ------------------------------------------------------------ */
/* Row-major single-precision matrix multiply with BLAS semantics:
     C = alpha * op(A) * op(B) + beta * C,   C is M x N, op(A) M x K, op(B) K x N
   op(X) = X when trans == 0, else X transposed; A is M x K (lda >= K) or,
   transposed, K x M (lda >= M); likewise B. beta == 0 makes C write-only
   (NaNs already in C are ignored). Any strides and alignments are accepted.
   Bad dimensions or strides are programming errors (av__fail). */
AVAPI void av_sgemm(int transA, int transB, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb,
                    float beta, float *C, int ldc);

/* Frees the calling thread's packing space (av_sgemm keeps it for reuse). */
AVAPI void av_gemm_release(void);

/* Instruction-set paths. The best supported one is chosen at first use
   unless the environment variable ATTNVAE_ISA=scalar|avx2|avx512|neon
   names another supported path. */
enum {
    AV_ISA_AUTO = 0,    /* av_set_isa: pick the best supported path */
    AV_ISA_SCALAR = 1,  /* portable C, always available */
    AV_ISA_AVX2 = 2,    /* x86-64 AVX2 + FMA (runtime detected) */
    AV_ISA_AVX512 = 3,  /* x86-64 AVX-512 F/BW/DQ/VL (runtime detected) */
    AV_ISA_NEON = 4     /* AArch64 NEON (compile time) */
};
AVAPI int av_isa_supported(int isa);  /* 1 if this build and CPU can run it */
AVAPI int av_set_isa(int isa);        /* 0, or AV_ERR_ARG if unsupported */
AVAPI int av_get_isa(void);           /* path in use (never AV_ISA_AUTO) */
AVAPI const char *av_isa_name(int isa); /* "scalar", "avx2", ... or "?" */

/* Threads used by av_sgemm when built with OpenMP (n <= 0 restores the
   OpenMP default). Without OpenMP everything runs on one thread. */
AVAPI void av_set_num_threads(int n);
AVAPI int av_get_num_threads(void);
