/* ---- GEMM ------------------------------------------------------------ */
/* Goto/BLIS scheme. C is cut into blocks of mc rows; for each kc-deep slice
   of K the block's rows of op(A) are packed into MR-row micro-panels
   (element (i,k) at k*MR + i), then op(B), nc columns at a time, into
   NR-column micro-panels (element (k,j) at k*NR + j). Packing absorbs
   transposes and strides and zero-pads ragged edges, so one register-blocked
   micro-kernel per ISA computes every MR x NR tile of C from two contiguous
   streams: an A micro-panel stays in L1 while the B chunk's micro-panels
   (kept in L2) stream past it. Threads each take a rectangle of C and pack
   their own operands, so they never wait on each other. */

#if !defined(ATTNVAE_NO_SIMD) && (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(_M_X64) || defined(__i386__))
#define AV__X86 1
#include <cpuid.h>
#include <immintrin.h>
/* Per-function targets: the library is built without -march flags. */
#define AV__TARGET_AVX2 __attribute__((target("avx2,fma")))
#define AV__TARGET_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#elif !defined(ATTNVAE_NO_SIMD) && defined(__aarch64__) && defined(__ARM_NEON)
#define AV__NEON 1
#include <arm_neon.h>
#endif

/* Computes the MR x NR tile C = alpha * Ap * Bp + beta * C over kc steps;
   beta == 0 never reads C. Row k of the B micro-panel starts at b + k*ldb:
   ldb == NR when packed, or B's own stride when B is read in place. */
typedef void (*av__ukernel)(int kc, const float *a, const float *b, int ldb,
                            float *c, int ldc, float alpha, float beta);

typedef struct {
    av__ukernel kernel;
    int mr, nr; /* micro-tile shape */
    int kc;     /* K slice: an mr x kc A micro-panel fits in L1 */
    int nc;     /* B chunk: kc x nc floats stay in L2; a multiple of nr */
    int mc;     /* rows of A packed at once (L3 or memory: A is re-read
                   only once per B chunk); a multiple of mr */
} av__gemm_impl;

#define AV__MAX_TILE (8 * 32)  /* largest mr * nr, for edge tiles */

/* The kernels unroll their rows with these: X(i) for each row i. */
#define AV__ROWS6(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define AV__ROWS8(X) AV__ROWS6(X) X(6) X(7)

/* ---- micro-kernels ---- */
static void av__kernel_scalar(int kc, const float *a, const float *b, int ldb,
                              float *c, int ldc, float alpha, float beta) {
    float acc[4][8] = {{0}};
    int i, j, k;
    for (k = 0; k < kc; k++, a += 4, b += ldb)
        for (i = 0; i < 4; i++)
            for (j = 0; j < 8; j++) acc[i][j] += a[i] * b[j];
    for (i = 0; i < 4; i++)
        for (j = 0; j < 8; j++)
            c[i * ldc + j] = alpha * acc[i][j] +
                             (beta == 0 ? 0.0f : beta * c[i * ldc + j]);
}

#ifdef AV__X86
/* 6 x 16: twelve ymm accumulators + two B vectors + one broadcast = 15 of
   the 16 registers. */
AV__TARGET_AVX2 static void av__kernel_avx2(int kc, const float *a,
                                            const float *b, int ldb, float *c, int ldc,
                                            float alpha, float beta) {
#define AV__DECL(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = c##i##0;
#define AV__FMA(i)                                           \
    {                                                        \
        __m256 ai = _mm256_broadcast_ss(a + i);              \
        c##i##0 = _mm256_fmadd_ps(ai, b0, c##i##0);          \
        c##i##1 = _mm256_fmadd_ps(ai, b1, c##i##1);          \
    }
#define AV__STORE(i)                                                        \
    {                                                                       \
        float *ci = c + i * ldc;                                            \
        __m256 r0 = _mm256_mul_ps(va, c##i##0), r1 = _mm256_mul_ps(va, c##i##1); \
        if (beta != 0) {                                                    \
            r0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci), r0);              \
            r1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + 8), r1);          \
        }                                                                   \
        _mm256_storeu_ps(ci, r0);                                           \
        _mm256_storeu_ps(ci + 8, r1);                                       \
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    int k;
    AV__ROWS6(AV__DECL)
    for (k = 0; k < kc; k++, a += 6, b += ldb) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        AV__ROWS6(AV__FMA)
    }
    AV__ROWS6(AV__STORE)
#undef AV__DECL
#undef AV__FMA
#undef AV__STORE
}

/* 8 x 32: sixteen zmm accumulators, two B vectors, one A broadcast. On Zen 4 (512-bit FMAs issue as two 256-bit halves) 8x32, 4x64, 12x32 and
   6x64 all run at the FMA limit for large sizes; 8x32 wastes least on
   ragged edges of common shapes. */
AV__TARGET_AVX512 static void av__kernel_avx512(int kc, const float *a,
                                                const float *b, int ldb, float *c,
                                                int ldc, float alpha,
                                                float beta) {
#define AV__DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = c##i##0;
#define AV__FMA(i)                                           \
    {                                                        \
        __m512 ai = _mm512_set1_ps(a[i]);                    \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);          \
        c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1);          \
    }
#define AV__STORE(i)                                                        \
    {                                                                       \
        float *ci = c + i * ldc;                                            \
        __m512 r0 = _mm512_mul_ps(va, c##i##0), r1 = _mm512_mul_ps(va, c##i##1); \
        if (beta != 0) {                                                    \
            r0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci), r0);              \
            r1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci + 16), r1);         \
        }                                                                   \
        _mm512_storeu_ps(ci, r0);                                           \
        _mm512_storeu_ps(ci + 16, r1);                                      \
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    int k;
    AV__ROWS8(AV__DECL)
    for (k = 0; k < kc; k++, a += 8, b += ldb) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        AV__ROWS8(AV__FMA)
    }
    AV__ROWS8(AV__STORE)
#undef AV__DECL
#undef AV__FMA
#undef AV__STORE
}

/* cpuid says what the CPU has; xgetbv says whether the OS saves the
   YMM (bits 1-2) and opmask/ZMM (bits 5-7) state on context switches. */
static int av__x86_has(int isa) {
    unsigned eax, ebx, ecx, edx, xcr0_lo, xcr0_hi;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    if (!(ecx & (1u << 27)) || !(ecx & (1u << 28)) || !(ecx & (1u << 12)))
        return 0; /* OSXSAVE, AVX, FMA */
    __asm__ __volatile__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    if ((xcr0_lo & 0x6) != 0x6) return 0;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    if (!(ebx & (1u << 5))) return 0; /* AVX2 */
    if (isa == AV_ISA_AVX2) return 1;
    return (xcr0_lo & 0xe6) == 0xe6 && (ebx & (1u << 16)) && /* F */
           (ebx & (1u << 17)) && (ebx & (1u << 30)) &&        /* DQ, BW */
           (ebx & (1u << 31));                                 /* VL */
}
#endif /* AV__X86 */

#ifdef AV__NEON
/* 8 x 12: 24 accumulators, two A and three B vectors of the 32 registers. */
static void av__kernel_neon(int kc, const float *a, const float *b, int ldb, float *c,
                            int ldc, float alpha, float beta) {
#define AV__DECL(i) float32x4_t c##i##0 = vdupq_n_f32(0), c##i##1 = c##i##0, \
                                c##i##2 = c##i##0;
#define AV__FMA(i)                                                   \
    c##i##0 = vfmaq_laneq_f32(c##i##0, b0, (i) < 4 ? a0 : a1, (i) & 3); \
    c##i##1 = vfmaq_laneq_f32(c##i##1, b1, (i) < 4 ? a0 : a1, (i) & 3); \
    c##i##2 = vfmaq_laneq_f32(c##i##2, b2, (i) < 4 ? a0 : a1, (i) & 3);
#define AV__STORE1(i, j)                                            \
    {                                                               \
        float32x4_t r = vmulq_n_f32(c##i##j, alpha);                \
        if (beta != 0) r = vfmaq_n_f32(r, vld1q_f32(ci + 4 * j), beta); \
        vst1q_f32(ci + 4 * j, r);                                   \
    }
#define AV__STORE(i)                                                \
    {                                                               \
        float *ci = c + i * ldc;                                    \
        AV__STORE1(i, 0) AV__STORE1(i, 1) AV__STORE1(i, 2)          \
    }
    int k;
    AV__ROWS8(AV__DECL)
    for (k = 0; k < kc; k++, a += 8, b += ldb) {
        float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4);
        float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4),
                    b2 = vld1q_f32(b + 8);
        AV__ROWS8(AV__FMA)
    }
    AV__ROWS8(AV__STORE)
#undef AV__DECL
#undef AV__FMA
#undef AV__STORE1
#undef AV__STORE
}
#endif /* AV__NEON */

/* ---- ISA selection ---- */
static const av__gemm_impl *av__impl_for(int isa) {
    static const av__gemm_impl scalar = {av__kernel_scalar, 4, 8, 256, 128, 960};
#ifdef AV__X86
    static const av__gemm_impl avx2 = {av__kernel_avx2, 6, 16, 256, 128, 1020};
    static const av__gemm_impl avx512 = {av__kernel_avx512, 8, 32, 512, 192, 1024};
    if (isa == AV_ISA_AVX2) return &avx2;
    if (isa == AV_ISA_AVX512) return &avx512;
#endif
#ifdef AV__NEON
    static const av__gemm_impl neon = {av__kernel_neon, 8, 12, 256, 240, 960};
    if (isa == AV_ISA_NEON) return &neon;
#endif
    (void)isa;
    return &scalar;
}

static int av__isa = AV_ISA_AUTO; /* AV_ISA_AUTO until first use */

AVDEF int av_isa_supported(int isa) {
    switch (isa) {
    case AV_ISA_AUTO:
    case AV_ISA_SCALAR: return 1;
#ifdef AV__X86
    case AV_ISA_AVX2:
    case AV_ISA_AVX512: return av__x86_has(isa);
#endif
#ifdef AV__NEON
    case AV_ISA_NEON: return 1;
#endif
    default: return 0;
    }
}

AVDEF const char *av_isa_name(int isa) {
    static const char *const names[] = {"auto", "scalar", "avx2", "avx512",
                                        "neon"};
    return isa >= 0 && isa <= AV_ISA_NEON ? names[isa] : "?";
}

static int av__best_isa(void) {
    int isa;
    for (isa = AV_ISA_NEON; isa > AV_ISA_SCALAR; isa--)
        if (av_isa_supported(isa)) return isa;
    return AV_ISA_SCALAR;
}

AVDEF int av_set_isa(int isa) {
    if (isa == AV_ISA_AUTO) isa = av__best_isa();
    if (!av_isa_supported(isa))
        return av__set_error(AV_ERR_ARG, "av_set_isa: %s (%d) not supported",
                             av_isa_name(isa), isa);
    av__isa = isa;
    return 0;
}

AVDEF int av_get_isa(void) {
    if (av__isa == AV_ISA_AUTO) {
        const char *env = getenv("ATTNVAE_ISA");
        int isa = AV_ISA_SCALAR;
        if (env)
            while (isa <= AV_ISA_NEON && strcmp(env, av_isa_name(isa))) isa++;
        if (!env || !av_isa_supported(isa)) isa = av__best_isa();
        av__isa = isa;
    }
    return av__isa;
}

/* ---- threads ---- */
static int av__num_threads; /* 0: OpenMP default */

AVDEF void av_set_num_threads(int n) { av__num_threads = n > 0 ? n : 0; }

AVDEF int av_get_num_threads(void) {
#ifdef _OPENMP
    return av__num_threads ? av__num_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

/* ---- packing ---- */
/* One micro-panel: dst[k*R + r] = op(X)(r, k) for r < rows, zero for
   rows <= r < R, over kc steps. Element (r, k) is at src[k*ld + r] when
   runs along r are contiguous, else at src[r*ld + k]. */
static void av__pack(float *dst, int R, const float *src, size_t ld,
                     int along_r, int rows, int kc) {
    int r, k;
    if (along_r) {
        for (k = 0; k < kc; k++) {
            memcpy(dst + (size_t)k * R, src + k * ld, (size_t)rows * sizeof(float));
            for (r = rows; r < R; r++) dst[(size_t)k * R + r] = 0;
        }
        return;
    }
    for (r = 0; r + 4 <= rows; r += 4) { /* transpose 4 source lines */
        const float *s0 = src + r * ld, *s1 = s0 + ld, *s2 = s1 + ld,
                    *s3 = s2 + ld;
        float *d = dst + r;
        k = 0;
#if defined(AV__X86) && defined(__SSE__)
        for (; k + 4 <= kc; k += 4, d += 4 * R) {
            __m128 x0 = _mm_loadu_ps(s0 + k), x1 = _mm_loadu_ps(s1 + k),
                   x2 = _mm_loadu_ps(s2 + k), x3 = _mm_loadu_ps(s3 + k);
            _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
            _mm_storeu_ps(d, x0);
            _mm_storeu_ps(d + R, x1);
            _mm_storeu_ps(d + 2 * R, x2);
            _mm_storeu_ps(d + 3 * R, x3);
        }
#elif defined(AV__NEON)
        for (; k + 4 <= kc; k += 4, d += 4 * R) {
            float32x4x2_t t01 = vtrnq_f32(vld1q_f32(s0 + k), vld1q_f32(s1 + k));
            float32x4x2_t t23 = vtrnq_f32(vld1q_f32(s2 + k), vld1q_f32(s3 + k));
            vst1q_f32(d, vcombine_f32(vget_low_f32(t01.val[0]), vget_low_f32(t23.val[0])));
            vst1q_f32(d + R, vcombine_f32(vget_low_f32(t01.val[1]), vget_low_f32(t23.val[1])));
            vst1q_f32(d + 2 * R, vcombine_f32(vget_high_f32(t01.val[0]), vget_high_f32(t23.val[0])));
            vst1q_f32(d + 3 * R, vcombine_f32(vget_high_f32(t01.val[1]), vget_high_f32(t23.val[1])));
        }
#endif
        for (; k < kc; k++, d += R) {
            d[0] = s0[k];
            d[1] = s1[k];
            d[2] = s2[k];
            d[3] = s3[k];
        }
    }
    for (; r < rows; r++)
        for (k = 0; k < kc; k++) dst[(size_t)k * R + r] = src[r * ld + k];
    for (r = rows; r < R; r++)
        for (k = 0; k < kc; k++) dst[(size_t)k * R + r] = 0;
}

/* ---- driver ---- */
typedef struct {
    const av__gemm_impl *im;
    int K, transA, transB;
    float alpha, beta;
    const float *A, *B;
    size_t lda, ldb;
    float *C;
    int ldc;
} av__gemm_job;

#define AV__MIN(a, b) ((a) < (b) ? (a) : (b))
#define AV__DIRECT_B_ROWS 128

/* C = alpha * tile + beta * C for the m x n corner of an edge tile. */
static void av__merge_tile(float *c, int ldc, const float *tile, int nr, int m,
                           int n, float alpha, float beta) {
    int i, j;
    for (i = 0; i < m; i++, c += ldc, tile += nr)
        for (j = 0; j < n; j++)
            c[j] = alpha * tile[j] + (beta == 0 ? 0.0f : beta * c[j]);
}

/* Rows [i0,i1) x columns [j0,j1) of C, single-threaded, with private
   packing buffers Ap (mc x kc) and Bp (kc x nc). */
static void av__gemm_block(const av__gemm_job *g, int i0, int i1, int j0,
                           int j1, float *Ap, float *Bp) {
    const av__gemm_impl *im = g->im;
    const int MR = im->mr, NR = im->nr;
    /* With few rows, packing B costs more than it saves: full-width
       stripes of an untransposed B are read in place, if the rows they span
       fit in L2 (long strides also make the stripes conflict in cache). */
    const int direct_b = !g->transB && i1 - i0 <= AV__DIRECT_B_ROWS &&
                         (size_t)AV__MIN(g->K, im->kc) * g->ldb <= (128 << 10);
    int ic, pc, jc, ip, jp;
    for (ic = i0; ic < i1; ic += im->mc) {
        int mc = AV__MIN(i1 - ic, im->mc), mcp = (mc + MR - 1) / MR;
        for (pc = 0; pc < g->K; pc += im->kc) {
            int kc = AV__MIN(g->K - pc, im->kc);
            float beta = pc == 0 ? g->beta : 1.0f;
            for (ip = 0; ip < mcp; ip++) {
                size_t i = ic + (size_t)ip * MR;
                av__pack(Ap + (size_t)ip * MR * kc, MR,
                         g->transA ? g->A + pc * g->lda + i : g->A + i * g->lda + pc,
                         g->lda, g->transA, AV__MIN(mc - ip * MR, MR), kc);
            }
            /* Each B chunk is packed right before use so it is hot in L2;
               then each A micro-panel sits in L1 while the chunk's B
               micro-panels stream past it. */
            for (jc = j0; jc < j1; jc += im->nc) {
                int nc = AV__MIN(j1 - jc, im->nc), ncp = (nc + NR - 1) / NR;
                for (jp = 0; jp < ncp; jp++) {
                    size_t j = jc + (size_t)jp * NR;
                    int n = AV__MIN(nc - jp * NR, NR);
                    if (direct_b && n == NR) continue;
                    av__pack(Bp + (size_t)jp * NR * kc, NR,
                             g->transB ? g->B + j * g->ldb + pc : g->B + pc * g->ldb + j,
                             g->ldb, !g->transB, n, kc);
                }
                for (ip = 0; ip < mcp; ip++) {
                    const float *ap = Ap + (size_t)ip * MR * kc;
                    int m = AV__MIN(mc - ip * MR, MR);
                    float *c = g->C + (size_t)(ic + ip * MR) * g->ldc + jc;
                    for (jp = 0; jp < ncp; jp++, c += NR) {
                        const float *bp = Bp + (size_t)jp * NR * kc;
                        int n = AV__MIN(nc - jp * NR, NR), ldb = NR;
                        if (direct_b && n == NR) {
                            bp = g->B + pc * g->ldb + jc + jp * NR;
                            ldb = (int)g->ldb;
                        }
                        if (m == MR && n == NR) {
                            im->kernel(kc, ap, bp, ldb, c, g->ldc, g->alpha, beta);
                        } else {
                            float tile[AV__MAX_TILE];
                            im->kernel(kc, ap, bp, ldb, tile, NR, 1.0f, 0.0f);
                            av__merge_tile(c, g->ldc, tile, NR, m, n, g->alpha,
                                           beta);
                        }
                    }
                }
            }
        }
    }
}

/* Packing space: one buffer per calling thread that only grows, so steady
   state makes no allocations; worker threads get slices of the caller's. */
#if defined(__GNUC__) || defined(__clang__)
#define AV__THREAD_LOCAL __thread
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define AV__THREAD_LOCAL _Thread_local
#else
#define AV__THREAD_LOCAL /* one buffer: call av_sgemm from one thread at a time */
#endif
static AV__THREAD_LOCAL float *av__scratch;
static AV__THREAD_LOCAL size_t av__scratch_bytes;

static float *av__gemm_scratch(size_t bytes) {
    if (bytes > av__scratch_bytes) {
        AV_FREE(av__scratch);
        av__scratch = (float *)AV_MALLOC(bytes);
        if (!av__scratch) av__fail("av_sgemm: out of memory for %lu bytes of packing space", (unsigned long)bytes);
        av__scratch_bytes = bytes;
    }
    return av__scratch;
}

AVDEF void av_gemm_release(void) {
    AV_FREE(av__scratch);
    av__scratch = NULL;
    av__scratch_bytes = 0;
}

AVDEF void av_sgemm(int transA, int transB, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb,
                    float beta, float *C, int ldc) {
    av__gemm_job g;
    const av__gemm_impl *im;
    size_t a_floats, b_floats;
    float *buf, *base;
    int nt = 1, ti = 1, tj = 1, mp, np;
    if (M < 0 || N < 0 || K < 0 || lda < (transA ? M : K) ||
        ldb < (transB ? K : N) || ldc < N)
        av__fail("av_sgemm: bad shape M=%d N=%d K=%d lda=%d ldb=%d ldc=%d "
                 "transA=%d transB=%d", M, N, K, lda, ldb, ldc, transA, transB);
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == 0) { /* C = beta * C */
        int i, j;
        for (i = 0; i < M; i++)
            for (j = 0; j < N; j++)
                C[(size_t)i * ldc + j] = beta == 0 ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    im = av__impl_for(av_get_isa());
    g.im = im, g.K = K, g.transA = transA != 0, g.transB = transB != 0;
    g.alpha = alpha, g.beta = beta;
    g.A = A, g.B = B, g.lda = (size_t)lda, g.ldb = (size_t)ldb;
    g.C = C, g.ldc = ldc;
    mp = (M + im->mr - 1) / im->mr;
    np = (N + im->nr - 1) / im->nr;
#ifdef _OPENMP
    /* Threads pay off past ~100^3 multiply-adds, and never nest. Each takes
       a ti x tj share of C and packs its own operands: no barriers, and
       packed data never crosses cores. Split to minimise what each thread
       packs, M/ti + N/tj. */
    if ((double)M * N * K >= 1e6 && !omp_in_parallel()) {
        int n = av_get_num_threads(), t;
        double best = 0;
        for (t = 1; t <= n; t++)
            if (n % t == 0 && t <= mp && n / t <= np &&
                (!best || (double)M / t + (double)N * t / n < best))
                best = (double)M / t + (double)N * t / n, ti = t, tj = n / t;
        nt = ti * tj;
    }
#endif
    /* Per-thread buffers, each rounded to 64 bytes. */
    a_floats = (size_t)AV__MIN(mp, (im->mc + im->mr - 1) / im->mr) * im->mr *
               AV__MIN(K, im->kc);
    b_floats = (size_t)AV__MIN(np, im->nc / im->nr) * im->nr * AV__MIN(K, im->kc);
    a_floats = (a_floats + 15) / 16 * 16, b_floats = (b_floats + 15) / 16 * 16;
    buf = av__gemm_scratch(((a_floats + b_floats) * nt + 16) * sizeof(float));
    base = (float *)(((uintptr_t)buf + 63) & ~(uintptr_t)63);
    if (nt == 1) {
        av__gemm_block(&g, 0, M, 0, N, base, base + a_floats);
    } else {
        int t;
        AV_OMP(omp parallel for num_threads(nt) schedule(static, 1))
        for (t = 0; t < nt; t++) {
            int r = t / tj, c = t % tj;
            float *Ap = base + (a_floats + b_floats) * t;
            av__gemm_block(&g, AV__MIN(r * mp / ti * im->mr, M),
                           AV__MIN((r + 1) * mp / ti * im->mr, M),
                           AV__MIN(c * np / tj * im->nr, N),
                           AV__MIN((c + 1) * np / tj * im->nr, N), Ap,
                           Ap + a_floats);
        }
    }
}
