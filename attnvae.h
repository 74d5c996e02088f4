/* attnvae.h - attention models and variational autoencoders in one C header.
   v0.1.0, public domain or MIT (see the end of the file). Needs libc and libm.

   USE
     In exactly one .c file:           #define ATTNVAE_IMPLEMENTATION
                                       #include "attnvae.h"
     Everywhere else just #include "attnvae.h". C99 or later, or C++11.
     Build with -O2 (add -fopenmp for threads) and link -lm.

   QUICK START: a two-layer classifier, trained with Adam
     av_model *m = av_model_new(42);                 // named parameters
     av_linear_layer fc1 = av_linear_layer_new(m, "fc1", 784, 256, 1);
     av_linear_layer fc2 = av_linear_layer_new(m, "fc2", 256, 10, 1);
     av_optim adam = av_adam(1e-3);
     av_ctx *c = av_ctx_new();                       // one training step's memory
     for (step = 0; step < steps; step++) {
         av_ctx_reset(c);                            // frees the last step at once
         av_tensor *x = av_wrap(c, images, 2, batch, 784);
         av_tensor *h = av_relu(c, av_linear_forward(c, &fc1, x));
         av_tensor *loss = av_cross_entropy(c, av_linear_forward(c, &fc2, h), labels, AV_MEAN);
         av_model_zero_grad(m);
         av_backward(c, loss);                       // gradients into the parameters
         if (av_optim_step(m, &adam)) { fprintf(stderr, "%s\n", av_error()); break; }
     }
     if (av_model_save(m, "model.safetensors")) fprintf(stderr, "%s\n", av_error());
     av_ctx_free(c); av_model_free(m);

   HOW IT WORKS
     Tensors are fp32, row-major, contiguous, up to 4 dimensions. A tensor made
     by an op lives in the step arena of an av_ctx; av_ctx_reset() frees every
     tensor of the step in O(1) and keeps the memory, so a steady training loop
     never calls malloc. Each op whose input needs a gradient appends itself to
     the context's tape (define-by-run: C loops over time steps or decoding just
     work); av_backward() walks the tape in reverse. av_set_grad_enabled(c, 0)
     runs inference without a tape. Parameters live in an av_model, outside the
     arena, with their gradients and optimizer state, under unique names;
     buffers (av_buffer: state that is not trained, such as running
     statistics) live beside them, saved and loaded but never optimized.
     Parameter groups scale the learning rate and weight decay per parameter.
     Matrix products (av_sgemm) pack into one buffer per calling thread,
     which only grows (OpenMP workers use slices of it), so steady state
     makes no allocations. av_gemm_release() frees the calling thread's
     buffer: call it before a thread of yours that ran ops exits, or to give
     the memory back after a very large product.

     Randomness drawn per element (dropout masks, attention dropout,
     av_rand, av_randn, the eps of av_reparameterize, the Gumbel noise of
     categorical samples) comes from Philox4x32-10, a counter-based
     generator: each such op call takes a fresh stream from its context
     (key = the seed of av_ctx_seed, offset = the number of streams taken
     since) and element e of the call gets draw e of the stream, computed
     from (key, offset, e) alone. So values do not depend on threads or on
     the order of work, dropout's backward redraws its mask instead of
     storing it, and the tiled attention redraws the naive path's mask
     (RNG 2 in [1 core] has the formula). The sequential xoshiro256** generator of
     av_ctx_rng() serves the caller (shuffling) and sampled decoding;
     av_model_new(seed) has its own for initial values.

     Threads (-fopenmp) run the GEMM and the loops of the ops: elementwise,
     rows (softmax, norms, losses), reductions, scatters. Work is cut into
     pieces fixed by the shapes alone (4096 values, blocks of 16 or 256
     columns, rows), never by the thread count; partial sums are kept in
     double and added in a fixed order, and repeated indices (broadcast
     gradients, embedding rows) are summed by one owner each. So results are
     bit-identical on any number of threads. A loop uses threads from 32768
     values of work (costly values count more): 4 times the size from which
     starting threads pays for an add (tests/bench_steps.c measures it).

   ERRORS
     Outside data (files, data sets, a non-finite gradient) never crashes: the
     function returns a negative AV_ERR_* code and av_error() says what is
     wrong. Out of memory for a size that a caller or a file chooses is such
     an error too (AV_ERR_NOMEM): av_param and av_buffer return NULL and the
     model keeps the error (av_model_error), so it refuses to train or be
     saved. Programming errors (shapes that do not fit, an id out of range,
     a tensor without a name) print the op and the shapes, call the handler
     set with av_set_abort_handler() if any, then AV_ASSERT and abort().

   OPTIONS (define before including the implementation)
     ATTNVAE_STATIC         every function static, for a private copy
     ATTNVAE_NO_SIMD        scalar kernels only
     AV_MALLOC(n), AV_REALLOC(p, n), AV_FREE(p)   the allocator
     AV_ASSERT(x)           the assertion used before abort()
     ATTNVAE_MPI            data-parallel training over MPI ([10 mpi]); the
                            header then includes <mpi.h> (build with mpicc,
                            or pkg-config --cflags --libs ompi-c). Without
                            it nothing here needs MPI.
     At run time: av_set_isa() or ATTNVAE_ISA=scalar|avx2|avx512|neon picks the
     GEMM and vector-math path (x86 paths are chosen by cpuid, no -march needed;
     NEON at compile time); av_set_num_threads() or OMP_NUM_THREADS sets threads with -fopenmp.

   CONTENTS
     Declarations and code follow the same order. Each section has a tag that
     marks both its declaration banner and its implementation banner, so one
     grep ("\[3.2 elementwise\]") finds both.
     [1 core]       errors (av_error, per thread), RNGs (sequential xoshiro,
                    counter-based Philox), context and step arena,
                    tensors (av_zeros ... av_wrap, and their _shape forms),
                    tape recording
     [2 kernels]    2.1 gemm: av_sgemm, ISA choice (av_set_isa), threads
                    2.2 vmath: SIMD exp/log/sigmoid/softplus/relu/Adam loops
                    2.3 attention: block products on packed panels, the
                        online softmax of the tiled attention
     [3 ops]        3.1 shape: reshape permute transpose slice concat embedding
                    3.2 elementwise: add sub mul div scale add_scalar exp log
                        sqrt square tanh sigmoid relu leaky_relu gelu softplus
                        dropout
                    3.3 reduce: sum mean max (an axis, or _all) logsumexp
                    3.4 matmul: matmul (batched, transposes) linear
                    3.5 norm: softmax log_softmax layer_norm
                    3.6 attention: sdpa (tiled) sdpa_weights (naive) masks;
                        learned scores: additive_scores (fused)
                        masked_softmax attend additive_attention
                        dot_attention; hard attention: argmax_onehot
                        categorical_sample gumbel_softmax
                        categorical_log_prob reinforce_loss av_baseline
                    3.7 conv: conv2d conv_transpose2d (GEMMs), max_pool2d
                        avg_pool2d adaptive_avg_pool2d, upsample_nearest2d
                        upsample_bilinear2d, batch_norm group_norm
                        spectral_norm
                    3.8 recurrent: rnn_layer (one LSTM or GRU layer, BPTT)
                    3.9 losses: mse_loss cross_entropy bce_with_logits
     [4 autodiff]   av_backward av_requires_grad av_detach
     [5 model]      av_model, av_param and av_buffer (named, initialised),
                    find, zero_grad, parameter groups (av_model_add_group)
     [6 layers]     av_linear_layer av_mlp av_activate; av_mha (multi-head
                    attention with a KV cache); layer norm, embedding,
                    positional encodings; Transformer encoder and decoder
                    layers and stacks, nn.Transformer, cached decoding;
                    av_autoencoder; av_attention (Bahdanau, Luong
                    dot/general/concat, over a memory made once per
                    batch); av_attn_pool (attention pooling); av_rnn
                    (av_lstm_new av_gru_new) and av_rnn_cell (LSTM, GRU);
                    nn.Conv2d and nn.ConvTranspose2d (av_conv2d_layer),
                    spectral_norm, nn.BatchNorm2d (running statistics as
                    buffers), nn.GroupNorm; attention for images:
                    av_self_attn2d (SAGAN, gamma-gated, maps [B, N, N]),
                    av_spatial_attn (CBAM), av_channel_attn (squeeze-and-
                    excitation); av_conv_block, av_res_block (projection
                    shortcut), av_attention_net (config, attention maps,
                    features, an attention switch for ablations)
     [7 toolkits]   VAE: gaussian head, reparameterize, KL, likelihoods, ELBO,
                    IWAE (an estimate, and a loss to train), av_vae around
                    any encoder and decoder
     [8 optim]      av_sgd av_adam av_adamw av_optim_step, clipping, schedules,
                    optimizer state by name (av_optim_state_get/_set)
     [9 io]         JSON, safetensors (av_st_*: F32, F16, BF16, F64), IDX, model
                    and checkpoint files
     [10 mpi]       data parallelism: av_sampler (a sharded epoch order,
                    always compiled); with ATTNVAE_MPI, av_mpi: broadcast
                    from rank 0, gradients averaged in buckets overlapped
                    with backward (av_mpi_backward), saves from rank 0

   ADDING AN OP (see av_slice in [3.1 shape] for a small complete one)
     1. Declare it in its section of the declarations, with its shapes.
     2. In the same section of the code write, in this order: a comment (the
        shapes, what is saved, the maths of the gradient in one line); a
        typed struct of the op's arguments if it has any; the backward; then
        the forward. The forward first calls av__live(c, "av_name", inputs)
        (it refuses tensors of a finished step before anything is allocated
        over them), checks shapes (av__fail_shapes names the op and both
        shapes), computes its output, then calls
            n = av__record(c, "av_name", av__name_backward, out, n_in, in...);
        (av__record_n for several outputs or a list of inputs) and, if n is
        not NULL, keeps its arguments with n->args = AV__KEEP(c, args) and any
        buffer it computed for backward in n->saved, both in the arena.
     3. The backward reads n->in[i], n->out[k] (their ->grad are allocated and
        zeroed for it), adds into av__in_grad(n, i) when that is not NULL,
        and never overwrites a gradient (inputs can be shared).
     4. Threads: AV__PAR(work) goes before a loop whose iterations write
        disjoint outputs; sums use AV__SUM (or partials of fixed chunks added
        in order); randomness is drawn by index from av_ctx_philox's stream.
     5. Test it: a finite-difference check (tests/gradcheck.h), values
        against a double-precision reference, and its shape-error message;
        if threaded, 1 against 2 threads in tests/test_threads.c.
*/
#ifndef ATTNVAE_H
#define ATTNVAE_H

#define ATTNVAE_VERSION "0.1.0"
#define ATTNVAE_VERSION_MAJOR 0
#define ATTNVAE_VERSION_MINOR 1
#define ATTNVAE_VERSION_PATCH 0

#include <stddef.h>
#include <stdint.h>
#ifdef ATTNVAE_MPI
/* MPI's C API only: the C++ bindings are deprecated (include <mpi.h>
   before this header to keep them). */
#if defined(__cplusplus) && !defined(OMPI_SKIP_MPICXX)
#define OMPI_SKIP_MPICXX 1
#endif
#if defined(__cplusplus) && !defined(MPICH_SKIP_MPICXX)
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#endif

#ifdef ATTNVAE_STATIC
#define AVAPI static
#else
#define AVAPI extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================= */
/* [1 core] errors, RNG, context, tensors                                   */
/* ======================================================================= */
/* ---- errors ---- */
/* Functions that touch outside data return 0 (AV_OK) or a negative code,
   and keep a message for av_error(). */
enum {
    AV_OK = 0,
    AV_ERR_IO = -1,      /* open/read/write/rename failed */
    AV_ERR_FORMAT = -2,  /* file is corrupt, truncated or not what it claims */
    AV_ERR_MISMATCH = -3,/* file is valid but does not fit the model */
    AV_ERR_NOMEM = -4,
    AV_ERR_ARG = -5,     /* bad argument from the caller */
    AV_ERR_NAN = -6      /* a loss or gradient is not finite */
};
AVAPI const char *av_error(void);        /* message of this thread's last error */
AVAPI int av_error_code(void);
AVAPI void av_clear_error(void);
/* Programming errors (shape mismatch) print a message naming the op and the
   shapes, then call this handler (default: abort()). If it returns, abort(). */
typedef void (*av_abort_fn)(const char *message);
AVAPI void av_set_abort_handler(av_abort_fn fn);

/* ---- RNG 1: xoshiro256**, sequential (shuffles, parameter initialisation) ---- */
typedef struct av_rng { uint64_t s[4]; } av_rng;
AVAPI void av_rng_seed(av_rng *r, uint64_t seed);
AVAPI uint64_t av_rng_u64(av_rng *r);
AVAPI float av_rng_uniform(av_rng *r);            /* [0, 1) */
AVAPI float av_rng_normal(av_rng *r);             /* N(0, 1) */

/* ---- RNG 2: Philox4x32-10, counter-based (dropout, av_rand, av_randn, eps) ----
   Philox4x32-10 (Salmon et al., SC11; PyTorch's generator on CUDA) maps a
   128-bit counter and a 64-bit key to 128 random bits,
   so a draw is computed from its index alone, in any order, on any thread.
   A stream is a key and an offset (av_ctx_philox hands them out). Draw e
   of a stream (e = 0, 1, ...: an element's flat row-major index, e.g.
   ((b H + h) T + i) T + j for attention weights [B, H, T, T]) is word
   l = e % 4 of the block
       w = av_philox4x32({k, k >> 32, offset, offset >> 32}, key), k = e / 4
   (32-bit halves, low first): the uniform av_u32_uniform(w[l]), or the
   normal av_u32_normal(w[l & 2], w[(l & 2) + 1], l & 1), so lanes 0 and 1
   share the Box-Muller pair w[0], w[1], and lanes 2 and 3 w[2], w[3]. */
AVAPI void av_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);
AVAPI float av_u32_uniform(uint32_t u);           /* (u >> 8) 2^-24: [0, 1) in 2^24 steps */
/* Box-Muller: sqrt(-2 ln((u1 + 1) 2^-32)) times cos (odd == 0) or sin
   (odd == 1) of 2 pi u2 2^-32, in double; odd 0 and 1 give two independent
   N(0, 1) (|z| <= 6.7). */
AVAPI float av_u32_normal(uint32_t u1, uint32_t u2, int odd);
typedef struct av_philox { uint32_t key[2]; uint64_t offset; } av_philox;
AVAPI void av_philox_block(const av_philox *s, uint64_t block, uint32_t out[4]); /* draws 4 block .. 4 block + 3 */
AVAPI float av_philox_uniform(const av_philox *s, uint64_t e);   /* draw e, in [0, 1) */
AVAPI float av_philox_normal(const av_philox *s, uint64_t e);    /* draw e, N(0, 1) */

/* ---- tensors and the context ---- */
#define AV_MAX_DIMS 4
typedef struct av_tensor {
    int ndim;                 /* 0..4; a 0-d tensor is a scalar */
    int shape[AV_MAX_DIMS];
    int size;                 /* number of elements */
    float *data;              /* row-major, contiguous */
    float *grad;              /* same layout; NULL until backward needs it */
    int requires_grad;        /* takes part in autodiff */
    const char *name;         /* parameters only */
    uint64_t gen;             /* the step that made it (0: a parameter); ops refuse stale ones */
} av_tensor;

/* A context owns one step: an arena for tensors, the tape, both RNGs and
   the mode flags. av_ctx_reset() frees everything the step made in O(1). */
typedef struct av_ctx av_ctx;
AVAPI av_ctx *av_ctx_new(void);
AVAPI void av_ctx_free(av_ctx *c);
AVAPI void av_ctx_reset(av_ctx *c);
/* Seeds the sequential RNG and the Philox key {seed, seed >> 32}, and sets
   the Philox offset to 0 (a new context is seeded with 0x5eed). */
AVAPI void av_ctx_seed(av_ctx *c, uint64_t seed);
AVAPI av_rng *av_ctx_rng(av_ctx *c);              /* the sequential RNG, for the caller's use */
/* A fresh Philox stream: the key and the current offset, then the offset
   goes up by one. Each random op takes one per call (resets keep the
   offset), so a kernel given the same stream redraws any element. */
AVAPI av_philox av_ctx_philox(av_ctx *c);
AVAPI int av_set_grad_enabled(av_ctx *c, int enabled); /* returns previous */
AVAPI int av_set_training(av_ctx *c, int training);    /* dropout on/off; returns previous */
AVAPI void *av_ctx_alloc(av_ctx *c, size_t bytes);     /* step scratch, 64-byte aligned */
AVAPI size_t av_ctx_peak_bytes(const av_ctx *c);       /* largest step so far */
/* A mark remembers the arena and tape; rewinding frees all made since,
   e.g. between samples of an estimate inside one step. */
typedef struct av_mark { void *chunk; size_t used, step_bytes; int n_tape; } av_mark;
AVAPI av_mark av_ctx_mark(const av_ctx *c);
AVAPI void av_ctx_rewind(av_ctx *c, av_mark mark);

/* Creation, in the step arena. Shapes are ndim then the sizes, or in the
   _shape forms ndim and an array (for table-driven code and bindings). A
   tensor of a finished step (after av_ctx_reset) is refused by every op.
   av_rand (lo + (hi - lo) u) and av_randn (mean + std z) take a fresh
   Philox stream: element e is draw e. */
AVAPI av_tensor *av_zeros(av_ctx *c, int ndim, ...);
AVAPI av_tensor *av_ones(av_ctx *c, int ndim, ...);
AVAPI av_tensor *av_full(av_ctx *c, float value, int ndim, ...);
AVAPI av_tensor *av_randn(av_ctx *c, float mean, float std, int ndim, ...);
AVAPI av_tensor *av_rand(av_ctx *c, float lo, float hi, int ndim, ...);
AVAPI av_tensor *av_from(av_ctx *c, const float *data, int ndim, ...);  /* copies */
AVAPI av_tensor *av_wrap(av_ctx *c, float *data, int ndim, ...);        /* no copy */
AVAPI av_tensor *av_zeros_shape(av_ctx *c, int ndim, const int *shape);
AVAPI av_tensor *av_ones_shape(av_ctx *c, int ndim, const int *shape);
AVAPI av_tensor *av_full_shape(av_ctx *c, float value, int ndim, const int *shape);
AVAPI av_tensor *av_randn_shape(av_ctx *c, float mean, float std, int ndim, const int *shape);
AVAPI av_tensor *av_rand_shape(av_ctx *c, float lo, float hi, int ndim, const int *shape);
AVAPI av_tensor *av_from_shape(av_ctx *c, const float *data, int ndim, const int *shape);
AVAPI av_tensor *av_wrap_shape(av_ctx *c, float *data, int ndim, const int *shape);
AVAPI av_tensor *av_scalar(av_ctx *c, float value);
AVAPI float av_item(const av_tensor *t);               /* data[0] */
AVAPI int av_same_shape(const av_tensor *a, const av_tensor *b);
AVAPI void av_print(const char *label, const av_tensor *t);

/* ======================================================================= */
/* [2 kernels] GEMM, instruction sets, threads                              */
/* ======================================================================= */
/* ---- [2.1 gemm] ---------------------------------------------------- */
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

/* Threads used by av_sgemm and the ops when built with OpenMP (n <= 0
   restores the OpenMP default). Results do not depend on it. Without
   OpenMP everything runs on one thread. */
AVAPI void av_set_num_threads(int n);
AVAPI int av_get_num_threads(void);

/* ======================================================================= */
/* [3 ops] each records itself on the tape when an input needs a gradient   */
/* ======================================================================= */
/* Shape errors abort with a message naming the op and the shapes. */
/* ---- [2.2 vmath]: the vector loops behind the ops; no public API ----- */
/* ---- [2.3 attention]: the tiles of av_sdpa; no public API ------------ */

/* ---- [3.1 shape] views, copies, gathers --------------------------------- */
AVAPI av_tensor *av_reshape(av_ctx *c, av_tensor *x, int ndim, ...);   /* a view; one size may be -1 */
AVAPI av_tensor *av_reshape_shape(av_ctx *c, av_tensor *x, int ndim, const int *shape);
AVAPI av_tensor *av_permute(av_ctx *c, av_tensor *x, const int *perm);
AVAPI av_tensor *av_transpose(av_ctx *c, av_tensor *x, int axis0, int axis1);
AVAPI av_tensor *av_slice(av_ctx *c, av_tensor *x, int axis, int start, int end); /* a view if contiguous */
AVAPI av_tensor *av_concat(av_ctx *c, av_tensor *const *xs, int n, int axis);
/* rows of table [V, D] picked by ids[n]: [n, D] */
AVAPI av_tensor *av_embedding(av_ctx *c, av_tensor *table, const int *ids, int n);
/* ---- [3.2 elementwise] with NumPy broadcasting -------------------------- */

AVAPI av_tensor *av_add(av_ctx *c, av_tensor *a, av_tensor *b);
AVAPI av_tensor *av_sub(av_ctx *c, av_tensor *a, av_tensor *b);
AVAPI av_tensor *av_mul(av_ctx *c, av_tensor *a, av_tensor *b);
AVAPI av_tensor *av_div(av_ctx *c, av_tensor *a, av_tensor *b);
AVAPI av_tensor *av_scale(av_ctx *c, av_tensor *x, float s);
AVAPI av_tensor *av_add_scalar(av_ctx *c, av_tensor *x, float s);
AVAPI av_tensor *av_exp(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_log(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_sqrt(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_square(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_tanh(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_sigmoid(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_relu(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_leaky_relu(av_ctx *c, av_tensor *x, float slope);
AVAPI av_tensor *av_gelu(av_ctx *c, av_tensor *x);      /* exact, with erf */
AVAPI av_tensor *av_softplus(av_ctx *c, av_tensor *x);  /* log(1 + e^x), stable */
/* Zeroes each value with probability p (Philox draw e of a fresh stream
   below p) and scales the rest by 1/(1-p); the identity when not training
   or p == 0. Backward redraws the mask from the stream. */
AVAPI av_tensor *av_dropout(av_ctx *c, av_tensor *x, float p);
/* ---- [3.3 reduce] over one axis (keepdim keeps it as size 1) or over all --- */
/* The mean of an empty axis is NaN, as in PyTorch; the max of one is an error. */
AVAPI av_tensor *av_sum(av_ctx *c, av_tensor *x, int axis, int keepdim);
AVAPI av_tensor *av_mean(av_ctx *c, av_tensor *x, int axis, int keepdim);
AVAPI av_tensor *av_max(av_ctx *c, av_tensor *x, int axis, int keepdim);
AVAPI av_tensor *av_sum_all(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_mean_all(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_max_all(av_ctx *c, av_tensor *x);
/* log sum_i exp(x_i) over an axis, stable (the max is taken out first, the
   sum kept in double). An empty axis or one that is all -inf gives -inf, a
   +inf entry +inf, a NaN NaN. Gradient: softmax along the axis,
   exp(x_i - out), so -inf entries get 0; a result of -inf passes no
   gradient at all (0 rather than the NaN of -inf - -inf). */
AVAPI av_tensor *av_logsumexp(av_ctx *c, av_tensor *x, int axis, int keepdim);
/* ---- [3.4 matmul]  ------------------------------------------------------ */
/* a [..., M, K] (or [..., K, M] with trans_a) times b [..., K, N]
   (or [..., N, K] with trans_b); b may be 2-D and shared by every batch. */
AVAPI av_tensor *av_matmul(av_ctx *c, av_tensor *a, av_tensor *b, int trans_a, int trans_b);
/* y = x wᵀ + b, x [..., in], w [out, in] (PyTorch layout), b [out] or NULL */
AVAPI av_tensor *av_linear(av_ctx *c, av_tensor *x, av_tensor *w, av_tensor *b);
/* ---- [3.5 norm] softmax and normalisation, over the last axis ----------- */
AVAPI av_tensor *av_softmax(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_log_softmax(av_ctx *c, av_tensor *x);
/* gamma and beta are [n] or NULL (then 1 and 0) */
AVAPI av_tensor *av_layer_norm(av_ctx *c, av_tensor *x, av_tensor *gamma, av_tensor *beta, float eps);
/* ---- [3.6 attention] scaled dot-product attention ----------------------- */
/* softmax(q kᵀ scale + mask) v.
   q [B, H, Tq, D], k [B, H, Tk, D], v [B, H, Tk, Dv]  ->  [B, H, Tq, Dv]
   (fewer leading dims are fine: [H, T, D], [T, D]).
   mask: NULL, or additive and broadcastable to [B, H, Tq, Tk] (-INFINITY
   hides a key); it gets a gradient if it requires one.
   is_causal: query i sees keys j <= i + (Tk - Tq) (bottom-right aligned, so
   that a KV-cached decoder step with Tq = 1 sees every cached key).
   dropout_p: on the attention weights, in training mode only.
   scale: 0 means 1/sqrt(D).
   A query that sees no key gets zeros and passes no gradient, never NaN.
   av_sdpa is tiled ("flash"): memory grows linearly with T, blocks that
   causality hides are skipped, the backward recomputes the weights, and
   dropout masks are regenerated from a counter-based generator, so nothing
   Tq x Tk is ever stored. Threads split the work over (batch, head, query
   block) and the result is the same for any number of threads. */
AVAPI av_tensor *av_sdpa(av_ctx *c, av_tensor *q, av_tensor *k, av_tensor *v,
                         av_tensor *mask, int is_causal, float dropout_p, float scale);
/* The same attention, also returning the weights [B, H, Tq, Tk] in *weights,
   for inspection and heatmaps (it stores the T×T matrix; the weights may
   take part in a loss). The naive path: no dropout. */
AVAPI av_tensor *av_sdpa_weights(av_ctx *c, av_tensor *q, av_tensor *k, av_tensor *v,
                                 av_tensor *mask, int is_causal, float scale,
                                 av_tensor **weights);
/* Additive masks: [B, 1, 1, Tk] hiding keys j >= lengths[b] (sequences of
   different lengths in one batch), and [Tq, Tk] hiding j > i + (Tk - Tq). */
AVAPI av_tensor *av_key_padding_mask(av_ctx *c, const int *lengths, int B, int Tk);
AVAPI av_tensor *av_causal_mask(av_ctx *c, int Tq, int Tk);
/* ---- learned scores: additive (Bahdanau) and multiplicative (Luong) ---- */
/* Attention of queries over keys with scores that are not q kᵀ/sqrt(D):
   batch first, queries [B, Tq, .], keys and values [B, Tk, .]. The modules
   av_attention and av_attn_pool in [6 layers] are built from these.
   av_additive_scores: s[b,i,j] = sum_a v[a] tanh(q[b,i,a] + k[b,j,a]),
   q [B, Tq, A] (W2 h_dec), k [B, Tk, A] (W1 h_enc, projected once), v [A]
   or [1, A] (nn.Linear(A, 1)'s weight) -> [B, Tq, Tk]. One fused op for
   every (query, key) pair: no loop over positions and no [B, Tq, Tk, A]
   buffer (the backward recomputes the tanh a query row at a time). Threads
   split the rows and give the same bits on any number of threads. */
AVAPI av_tensor *av_additive_scores(av_ctx *c, av_tensor *q, av_tensor *k, av_tensor *v);
/* Softmax over the last axis of x [B, ..., T] that leaves out the entries
   j >= lengths[b] (lengths NULL: none) and the entries equal to -INFINITY:
   they get 0. A row with nothing left gets zeros and passes no gradient,
   never NaN. */
AVAPI av_tensor *av_masked_softmax(av_ctx *c, av_tensor *x, const int *lengths);
/* Scores [B, Tq, Tk] to the context weights · values [B, Tq, Dv], values
   [B, Tk, Dv]; the weights av_masked_softmax(scores + mask, lengths)
   [B, Tq, Tk] go to *weights if it is not NULL. mask: NULL, additive per key
   ([B, Tk], or av_key_padding_mask's [B, 1, 1, Tk] as it comes) or per query
   and key [B, Tq, Tk]; lengths: NULL or B lengths in [0, Tk]. A query that
   sees no key gets a zero context and zero weights. */
AVAPI av_tensor *av_attend(av_ctx *c, av_tensor *scores, av_tensor *values, av_tensor *mask, const int *lengths,
                           av_tensor **weights);
/* av_attend of additive scores (Bahdanau; Luong concat with q and k the
   two halves of W [h_dec; h_enc]), and of dot scores q kᵀ, q [B, Tq, D],
   keys [B, Tk, D], unscaled (Luong dot; general with keys = W h_enc). */
AVAPI av_tensor *av_additive_attention(av_ctx *c, av_tensor *q, av_tensor *k, av_tensor *v, av_tensor *values,
                                       av_tensor *mask, const int *lengths, av_tensor **weights);
AVAPI av_tensor *av_dot_attention(av_ctx *c, av_tensor *q, av_tensor *keys, av_tensor *values, av_tensor *mask,
                                  const int *lengths, av_tensor **weights);
/* ---- hard attention: one key per query -------------------------------- */
/* Each op takes logits [..., K] (scores over K keys, -INFINITY where
   masked), works row by row, and returns a one-hot selection [..., K]; if
   index is not NULL it also writes the chosen key of each row there
   (int[rows]). A row whose logits are all -INFINITY selects nothing: zeros
   and index -1. The context is then av_matmul(selection, values) (or
   av_attention_context). Random draws come from the context's counter-
   based generator (av_ctx_seed): the same seed gives the same keys.
   av_argmax_onehot: the largest logit (the first of ties), for inference.
     The selection is a constant: no gradient reaches the logits (the
     values still get theirs through the product).
   av_categorical_sample: a key drawn from softmax(logits) (Gumbel-max: the
     argmax of logits + Gumbel(0, 1) noise). A constant too: train the
     logits with REINFORCE, below.
   av_gumbel_softmax: the relaxed sample y = softmax((logits + g) / tau),
     g Gumbel(0, 1), tau > 0. hard = 0 returns y, differentiable. hard = 1 is
     straight-through: the forward returns the one-hot of the argmax of
     (logits + g) / tau, a draw from softmax(logits) whatever tau, and the
     backward passes the gradient that y would have had.
   Two estimators of d/dθ E_{k ~ softmax(θ)}[f(k)], for a cost f:
   - straight-through Gumbel-softmax: df/dy at the one-hot sample times
     dy/dθ of the relaxed y. One backward pass and low variance, but
     biased: its mean is not dE f/dθ, so more samples do not remove the
     error (test_scores measures it). A lower tau brings y nearer the
     one-hot (less bias) but dy/dθ grows like 1/tau (more variance).
   - REINFORCE (score function): (f(k) - b) d log p(k)/dθ. Unbiased for any
     baseline b that does not depend on the sample k (E[d log p(k)/dθ] =
     0), but its variance grows with (f - b)^2: a baseline near E f cuts it.
   REINFORCE in a training step, for a cost per row to minimise (for a
   reward to maximise pass -reward):
     sel  = av_categorical_sample(c, logits, idx);            int idx[rows]
     logp = av_categorical_log_prob(c, logits, idx);          [rows]
     ... the task's loss from sel, and cost[r] its value per row ...
     loss = av_add(c, task_loss, av_reinforce_loss(c, logp, cost, (float)bl.value));
     av_backward(c, loss); av_baseline_update(&bl, cost, rows);
   The task loss keeps its own (pathwise) gradient; the REINFORCE term adds
   the gradient through the choice of keys. */
AVAPI av_tensor *av_argmax_onehot(av_ctx *c, av_tensor *logits, int *index);
AVAPI av_tensor *av_categorical_sample(av_ctx *c, av_tensor *logits, int *index);
AVAPI av_tensor *av_gumbel_softmax(av_ctx *c, av_tensor *logits, float tau, int hard, int *index);
/* log softmax(logits)[index] per row: [...] (logits' shape without the last
   axis), differentiable: d/dlogits = e_k - p. index[r] = -1 (only for a row
   with every logit -INFINITY) gives 0 and no gradient. */
AVAPI av_tensor *av_categorical_log_prob(av_ctx *c, av_tensor *logits, const int *index);
/* The REINFORCE surrogate (1/n) sum_r (cost[r] - baseline) log_prob[r], n =
   log_prob's size: a scalar whose gradient is the score-function estimate
   of the gradient of the mean expected cost. cost is data (n floats). */
AVAPI av_tensor *av_reinforce_loss(av_ctx *c, av_tensor *log_prob, const float *cost, float baseline);
/* A moving-average baseline: value = decay value + (1 - decay) mean(cost),
   starting at the mean of the first batch (0 before it). Read value for a
   batch before updating with that batch's costs, so that it stays
   independent of the batch's samples and REINFORCE stays unbiased. */
typedef struct av_baseline { double value, decay; long count; } av_baseline;
AVAPI av_baseline av_baseline_new(double decay);   /* decay in [0, 1), e.g. 0.9 */
AVAPI void av_baseline_update(av_baseline *b, const float *cost, int n);
/* ---- [3.7 conv] convolutions, pooling, resizing, channel norms --------- */
/* Images are NCHW, [B, C, H, W], as PyTorch's. Each op below takes the
   sizes and rules of the torch.nn.functional op of the same name. */
/* stride, padding, dilation and output_padding per axis (h, w); 0 in
   stride, dilation or groups means 1. NULL options: stride 1, no padding. */
typedef struct av_conv_opts {
    int stride[2], padding[2], dilation[2], output_padding[2];
    int groups;
} av_conv_opts;
/* the same value on both axes, output_padding 0 */
AVAPI av_conv_opts av_conv_opts_square(int stride, int padding, int dilation, int groups);
/* x [B, Cin, H, W], w [Cout, Cin/groups, kh, kw], b [Cout] or NULL ->
   [B, Cout, Ho, Wo], Ho = (H + 2 padding - dilation (kh - 1) - 1) / stride + 1.
   Runs on the GEMM micro-kernels (no im2col copy); threads split the batch,
   and the result is the same for any number of threads. */
AVAPI av_tensor *av_conv2d(av_ctx *c, av_tensor *x, av_tensor *w, av_tensor *b, const av_conv_opts *opts);
/* The adjoint of av_conv2d (the gradient of its input): x [B, Cin, H, W],
   w [Cin, Cout/groups, kh, kw], b [Cout] or NULL -> [B, Cout, Ho, Wo],
   Ho = (H - 1) stride - 2 padding + dilation (kh - 1) + output_padding + 1;
   output_padding < stride or < dilation. */
AVAPI av_tensor *av_conv_transpose2d(av_ctx *c, av_tensor *x, av_tensor *w, av_tensor *b, const av_conv_opts *opts);
/* Square windows of kernel x kernel, every stride (0: kernel), padding at
   most kernel / 2, floor sizes: Ho = (H + 2 padding - kernel) / stride + 1.
   max pools over the window without its padding; avg divides by kernel^2
   when count_include_pad (PyTorch's default), else by the window's pixels. */
AVAPI av_tensor *av_max_pool2d(av_ctx *c, av_tensor *x, int kernel, int stride, int padding);
AVAPI av_tensor *av_avg_pool2d(av_ctx *c, av_tensor *x, int kernel, int stride, int padding, int count_include_pad);
/* output (i, j) averages rows floor(i H / out_h) .. ceil((i + 1) H / out_h) (likewise columns) */
AVAPI av_tensor *av_adaptive_avg_pool2d(av_ctx *c, av_tensor *x, int out_h, int out_w);
/* F.interpolate(x, size=(out_h, out_w)) in mode "nearest", or "bilinear"
   with align_corners=False */
AVAPI av_tensor *av_upsample_nearest2d(av_ctx *c, av_tensor *x, int out_h, int out_w);
AVAPI av_tensor *av_upsample_bilinear2d(av_ctx *c, av_tensor *x, int out_h, int out_w);
/* F.batch_norm over axis 1 of x [B, C, ...] (statistics over every other
   axis). In training (av_set_training): the batch's mean and biased
   variance normalise, and running_mean and running_var (if not NULL) move by
   momentum toward the mean and the unbiased variance. In eval: the running
   statistics normalise (they must be given). weight, bias [C] or NULL. */
AVAPI av_tensor *av_batch_norm(av_ctx *c, av_tensor *x, av_tensor *running_mean, av_tensor *running_var,
                               av_tensor *weight, av_tensor *bias, float momentum, float eps);
/* F.group_norm: x [B, C, ...], C split into num_groups sets of channels,
   each normalised per example; weight, bias [C] or NULL. */
AVAPI av_tensor *av_group_norm(av_ctx *c, av_tensor *x, int num_groups, av_tensor *weight, av_tensor *bias, float eps);
/* w / sigma, sigma = u^T W v for W = w as a matrix with rows along axis
   dim; u [shape[dim]] and v [the rest] are buffers. In training n_power
   power iterations first update them: v = normalize(W^T u), u =
   normalize(W v), normalize(x) = x / max(|x|, eps). The gradient treats u
   and v as constants (torch.nn.utils.spectral_norm's). */
AVAPI av_tensor *av_spectral_norm(av_ctx *c, av_tensor *w, av_tensor *u, av_tensor *v, int dim, int n_power, float eps);
/* ---- [3.8 recurrent] one LSTM or GRU layer over whole sequences ---------- */
/* One layer in one direction over a batch of sequences, as one tape node:
   backward runs backpropagation through time inside it. Gates, layouts and
   maths are PyTorch's (nn.LSTM, nn.GRU); G = 4H for an LSTM, 3H for a GRU:
     x [B, T, in] (batch first), w_ih [G, in], w_hh [G, H], b_ih and b_hh [G]
     (either may be NULL);
     AV_LSTM gates i f g o: i, f, o = sigmoid, g = tanh of W_ih x + b_ih + W_hh h + b_hh,
       c' = f c + i g, h' = o tanh(c');
     AV_GRU gates r z n: r, z = sigmoid(W_ih x + b_ih + W_hh h + b_hh),
       n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h.
   h0 (and c0, LSTM only) [B, H] start the state, NULL for zeros.
   lengths[B] (each 0..T), or NULL for all T: sequence b runs over steps
   0 .. lengths[b]-1, or from lengths[b]-1 down to 0 when reverse. Its
   padded steps leave the state as it is, output zeros and pass no gradient
   (PyTorch's packed sequences).
   Returns y [B, T, H], the hidden state after each step; *h_n (and *c_n)
   get the final state [B, H] of each sequence (either pointer may be NULL).
   Cost: one GEMM for the input projection of all steps, one per step for
   the recurrence (split in a few column panels), the gate maths in one
   vectorised pass per step; backward likewise, plus one GEMM each for dx,
   dW_ih and dW_hh over all steps. Keeps (G + 3H + in) B T floats for
   backward ((G + 2H) B T for a GRU). */
enum { AV_LSTM = 0, AV_GRU = 1 };
typedef struct av_rnn_weights { av_tensor *w_ih, *w_hh, *b_ih, *b_hh; } av_rnn_weights;
AVAPI av_tensor *av_rnn_layer(av_ctx *c, int kind, av_tensor *x, const av_rnn_weights *w, av_tensor *h0,
                              av_tensor *c0, const int *lengths, int reverse, av_tensor **h_n, av_tensor **c_n);
/* ---- [3.9 losses]  ------------------------------------------------------ */
/* reduction AV_MEAN averages over elements (rows for cross-entropy), AV_SUM adds */
enum { AV_MEAN = 0, AV_SUM = 1 };
AVAPI av_tensor *av_mse_loss(av_ctx *c, av_tensor *pred, av_tensor *target, int reduction);
AVAPI av_tensor *av_cross_entropy(av_ctx *c, av_tensor *logits, const int *labels, int reduction);
AVAPI av_tensor *av_bce_with_logits(av_ctx *c, av_tensor *logits, av_tensor *target, int reduction);

/* ======================================================================= */
/* [4 autodiff] the tape, backward                                          */
/* ======================================================================= */
/* Runs the tape backward from a scalar loss; gradients accumulate into
   every tensor that requires them (parameters included). */
AVAPI void av_backward(av_ctx *c, av_tensor *loss);
AVAPI void av_requires_grad(av_ctx *c, av_tensor *t);  /* make t a leaf with a gradient */
AVAPI av_tensor *av_detach(av_ctx *c, av_tensor *x);   /* same data, no gradient */

/* ======================================================================= */
/* [5 model] parameters, buffers, parameter groups                          */
/* ======================================================================= */
/* An av_model owns named tensors of two kinds, in one name space:
   - parameters (av_param) are trained: each has a gradient (requires_grad
     1), optimizer state beside it, and a parameter group;
   - buffers (av_buffer) are state that is not trained, such as BatchNorm's
     running statistics: requires_grad 0 and grad NULL. Optimizers,
     zero_grad, clipping and the gradient norm skip them; nothing decays
     them. Code that uses them updates their data itself.
   Both are saved, loaded (and checkpointed) by name and found by
   av_model_find. Every tensor, and its data, keeps its address for the
   model's life: loads copy into it.
   A name is non-empty, unique among parameters and buffers, not
   "__metadata__" (safetensors keeps it) and does not start with "optim.m."
   or "optim.v." (checkpoints keep those); anything else is a programming
   error. Out of memory is not: av_param and av_buffer then return NULL
   with av_error() set, and the model keeps the error (av_model_error), so
   that av_optim_step, the saves and the loads refuse such a model. */
enum {
    AV_INIT_ZEROS, AV_INIT_ONES, AV_INIT_NORMAL,      /* NORMAL: std = init_arg */
    AV_INIT_UNIFORM,                                  /* U(-init_arg, init_arg) */
    AV_INIT_XAVIER_UNIFORM, AV_INIT_XAVIER_NORMAL,
    AV_INIT_KAIMING_UNIFORM, AV_INIT_KAIMING_NORMAL,  /* gain sqrt(2): ReLU */
    /* XAVIER_*: gain = init_arg (0 means 1); KAIMING_*: init_arg ignored */
    AV_INIT_TORCH_LINEAR                              /* U(±1/sqrt(fan_in)), PyTorch's default */
};
typedef struct av_model av_model;
AVAPI av_model *av_model_new(uint64_t seed);  /* NULL if out of memory */
AVAPI void av_model_free(av_model *m);
/* Fan-in is the product of all sizes but the first (PyTorch's [out, in, ...]). */
AVAPI av_tensor *av_param(av_model *m, const char *name, int init, float init_arg, int ndim, ...);
AVAPI av_tensor *av_param_shape(av_model *m, const char *name, int init, float init_arg, int ndim, const int *shape);
/* Buffers start from the same inits (zeros, ones, normal...). */
AVAPI av_tensor *av_buffer(av_model *m, const char *name, int init, float init_arg, int ndim, ...);
AVAPI av_tensor *av_buffer_shape(av_model *m, const char *name, int init, float init_arg, int ndim, const int *shape);
/* 0, or the first error (AV_ERR_NOMEM) that made av_param or av_buffer fail */
AVAPI int av_model_error(const av_model *m);
AVAPI int av_model_count(const av_model *m);              /* parameters, in order of creation */
AVAPI av_tensor *av_model_param(const av_model *m, int i);
AVAPI int av_model_buffer_count(const av_model *m);       /* buffers, in order of creation */
AVAPI av_tensor *av_model_buffer(const av_model *m, int i);
AVAPI av_tensor *av_model_find(const av_model *m, const char *name); /* a parameter or a buffer */
AVAPI long av_model_num_values(const av_model *m);        /* values of the parameters */
AVAPI void av_model_zero_grad(av_model *m);
AVAPI long av_model_step(const av_model *m);  /* optimizer steps taken */

/* Parameter groups, as PyTorch's param_groups: a group multiplies the
   optimizer's learning rate and weight decay for its parameters. Every
   parameter starts in group 0, whose scales are 1 and 1. The usual
   Transformer rule, no weight decay on biases and norm weights:
       int nd = av_model_add_group(m, 1.0, 0.0);
       for (i = 0; i < av_model_count(m); i++)
           if (av_model_param(m, i)->ndim < 2) av_param_set_group(m, av_model_param(m, i), nd);
   or by name, av_model_set_group(m, "*.bias", nd). Groups belong to the
   code that builds the model: files do not store them. */
/* a new group's id (1, 2, ...); AV_ERR_ARG unless both scales are finite
   and >= 0; AV_ERR_NOMEM */
AVAPI int av_model_add_group(av_model *m, double lr_scale, double decay_scale);
/* av_param_set_group moves parameter p (returns 0); av_model_set_group
   moves every parameter whose name matches pattern, where '*' matches any
   run of characters and '?' any one (returns how many). AV_ERR_ARG for an
   unknown group, or a p that is not a parameter of m. */
AVAPI int av_param_set_group(av_model *m, const av_tensor *p, int group);
AVAPI int av_model_set_group(av_model *m, const char *pattern, int group);

/* ======================================================================= */
/* [6 layers] modules named and laid out as PyTorch's                       */
/* ======================================================================= */

typedef struct av_linear_layer { av_tensor *weight, *bias; } av_linear_layer;
/* parameters "<name>.weight" [out, in] and "<name>.bias" [out] (if bias) */
AVAPI av_linear_layer av_linear_layer_new(av_model *m, const char *name, int in, int out, int bias);
AVAPI av_tensor *av_linear_forward(av_ctx *c, const av_linear_layer *l, av_tensor *x);

enum { AV_ACT_NONE, AV_ACT_RELU, AV_ACT_TANH, AV_ACT_SIGMOID, AV_ACT_GELU, AV_ACT_LEAKY_RELU };
AVAPI av_tensor *av_activate(av_ctx *c, av_tensor *x, int activation); /* leaky slope 0.01 */
/* A stack of linear layers "<name>.<i>" with an activation between them
   (none after the last). sizes has n_layers + 1 entries. */
#define AV_MLP_MAX_LAYERS 16
typedef struct av_mlp { int n_layers, activation; av_linear_layer layers[AV_MLP_MAX_LAYERS]; } av_mlp;
AVAPI av_mlp av_mlp_new(av_model *m, const char *name, int n_layers, const int *sizes, int activation);
AVAPI av_tensor *av_mlp_forward(av_ctx *c, const av_mlp *net, av_tensor *x);

/* Multi-head attention, PyTorch's nn.MultiheadAttention: parameters
   "<name>.in_proj_weight" [3E, E] and "<name>.in_proj_bias" [3E] (if bias),
   "<name>.out_proj.weight" [E, E], "<name>.out_proj.bias" [E]; when kdim or
   vdim differ from E, "<name>.q_proj_weight" [E, E], "<name>.k_proj_weight"
   [E, kdim] and "<name>.v_proj_weight" [E, vdim] replace in_proj_weight.
   PyTorch's initialisation; a state_dict saved as safetensors loads by name.
   kdim, vdim 0 mean E. dropout acts on the attention weights in training. */
typedef struct av_mha {
    int embed_dim, num_heads, kdim, vdim;
    float dropout;
    av_tensor *in_proj_weight, *in_proj_bias;                 /* packed form */
    av_tensor *q_proj_weight, *k_proj_weight, *v_proj_weight; /* separate form (kdim or vdim != E) */
    av_linear_layer out_proj;
} av_mha;
AVAPI av_mha av_mha_new(av_model *m, const char *name, int embed_dim, int num_heads, int kdim, int vdim, int bias,
                        float dropout);
/* Batch first: query [B, Tq, E], key [B, Tk, kdim], value [B, Tk, vdim]
   ([T, E] without a batch) -> [B, Tq, E]. Self-attention passes one tensor
   three times (one projection then serves q, k and v). key_padding_mask:
   NULL or additive [B, Tk] (av_key_padding_mask gives one, reshape it to
   [B, Tk]); attn_mask: NULL or additive, broadcastable to [B, H, Tq, Tk].
   weights: NULL, or receives the weights of every head [B, H, Tq, Tk] (then
   the naive path runs; av_mean over axis 1 gives PyTorch's average). */
AVAPI av_tensor *av_mha_forward(av_ctx *c, const av_mha *a, av_tensor *query, av_tensor *key, av_tensor *value,
                                av_tensor *key_padding_mask, av_tensor *attn_mask, int is_causal, av_tensor **weights);
/* A KV cache for decoding one step at a time (inference: no gradient
   flows into what it holds). It owns its memory and grows as needed. */
typedef struct av_kv_cache {
    int batch, heads, head_dim, capacity, length;
    float *k, *v;   /* [batch, heads, capacity, head_dim] */
} av_kv_cache;
AVAPI int av_kv_cache_init(av_kv_cache *kv, const av_mha *a, int batch, int capacity); /* 0 or AV_ERR_NOMEM */
AVAPI void av_kv_cache_free(av_kv_cache *kv);
AVAPI void av_kv_cache_clear(av_kv_cache *kv);   /* length 0, memory kept */
/* Self-attention step: x [B, T, E] (often T = 1); x's keys and values are
   appended, then its queries attend causally to everything cached. Step by
   step this equals av_mha_forward(x, x, x, is_causal = 1) on the whole
   sequence. Returns [B, T, E]. */
AVAPI av_tensor *av_mha_step(av_ctx *c, const av_mha *a, av_tensor *x, av_kv_cache *kv, av_tensor **weights);
/* Cross-attention: the cache holds memory's keys and values (computed once
   by av_kv_cache_set_memory); av_mha_attend_cache attends query to them. */
AVAPI int av_kv_cache_set_memory(av_ctx *c, const av_mha *a, av_tensor *memory, av_kv_cache *kv);
AVAPI av_tensor *av_mha_attend_cache(av_ctx *c, const av_mha *a, av_tensor *query, const av_kv_cache *kv,
                                     av_tensor *key_padding_mask, av_tensor **weights);

/* nn.LayerNorm over the last axis: "<name>.weight" (ones), "<name>.bias" (zeros). */
typedef struct av_layer_norm_layer { av_tensor *weight, *bias; float eps; } av_layer_norm_layer;
AVAPI av_layer_norm_layer av_layer_norm_new(av_model *m, const char *name, int dim, float eps);
AVAPI av_tensor *av_layer_norm_forward(av_ctx *c, const av_layer_norm_layer *l, av_tensor *x);

/* nn.Embedding: "<name>.weight" [num, dim], N(0, 1) as PyTorch's. ids are
   B x T row-major; the result is [B, T, dim] ([T, dim] when B is 0). */
typedef struct av_embedding_layer { av_tensor *weight; } av_embedding_layer;
AVAPI av_embedding_layer av_embedding_new(av_model *m, const char *name, int num, int dim);
AVAPI av_tensor *av_embedding_forward(av_ctx *c, const av_embedding_layer *e, const int *ids, int B, int T);

/* Positional encodings. Sinusoidal (Vaswani et al.): row p holds
   sin(p / 10000^(2i/d)) at column 2i and cos(...) at 2i + 1, for positions
   start .. start + T - 1: [T, d], a constant. Learned: an av_embedding_layer
   of positions, av_embedding_forward of the ids start.. */
AVAPI av_tensor *av_sinusoidal_positions(av_ctx *c, int T, int d, int start);

/* Transformer layers, as PyTorch's nn.TransformerEncoderLayer,
   nn.TransformerDecoderLayer, nn.TransformerEncoder/Decoder and
   nn.Transformer, batch first: x [B, T, d_model]. Parameter names:
     encoder layer "<name>.self_attn.*" (av_mha), "<name>.linear1.*" [ff, d],
       "<name>.linear2.*" [d, ff], "<name>.norm1.*", "<name>.norm2.*";
     decoder layer adds "<name>.multihead_attn.*" and "<name>.norm3.*";
     stacks "<name>.layers.<i>.*" and "<name>.norm.*" (the final norm);
     nn.Transformer "<name>.encoder.*" and "<name>.decoder.*", each with a
       final norm.
   A state_dict that PyTorch saved as safetensors loads by name.
   norm_first 0 is post-LN (x = norm(x + f(x))), 1 pre-LN (x = x + f(norm(x))).
   Dropout (in training) follows PyTorch: on the attention weights, after
   the feed-forward's activation, and on each branch before its residual. */
typedef struct av_transformer_config {
    int d_model, nhead, dim_feedforward;
    float dropout;        /* PyTorch's default: 0.1 */
    int activation;       /* AV_ACT_RELU (default) or AV_ACT_GELU */
    float layer_norm_eps; /* 1e-5 */
    int norm_first;       /* 0: post-LN (default), 1: pre-LN */
} av_transformer_config;
/* PyTorch's defaults: dim_feedforward 2048, dropout 0.1, relu, eps 1e-5, post-LN */
AVAPI av_transformer_config av_transformer_defaults(int d_model, int nhead);

typedef struct av_encoder_layer {
    av_transformer_config cfg;
    av_mha self_attn;
    av_linear_layer linear1, linear2;
    av_layer_norm_layer norm1, norm2;
} av_encoder_layer;
typedef struct av_decoder_layer {
    av_transformer_config cfg;
    av_mha self_attn, multihead_attn;
    av_linear_layer linear1, linear2;
    av_layer_norm_layer norm1, norm2, norm3;
} av_decoder_layer;
AVAPI av_encoder_layer av_encoder_layer_new(av_model *m, const char *name, const av_transformer_config *cfg);
AVAPI av_decoder_layer av_decoder_layer_new(av_model *m, const char *name, const av_transformer_config *cfg);
/* Masks are additive (NULL for none): mask broadcastable to [B, H, T, T],
   key_padding_mask [B, T] (av_key_padding_mask reshaped), is_causal as
   av_sdpa's. The decoder layer takes the target's and the memory's. */
AVAPI av_tensor *av_encoder_layer_forward(av_ctx *c, const av_encoder_layer *l, av_tensor *x, av_tensor *mask,
                                          av_tensor *key_padding_mask, int is_causal);
AVAPI av_tensor *av_decoder_layer_forward(av_ctx *c, const av_decoder_layer *l, av_tensor *x, av_tensor *memory,
                                          av_tensor *tgt_mask, av_tensor *tgt_key_padding_mask, int tgt_is_causal,
                                          av_tensor *memory_mask, av_tensor *memory_key_padding_mask);

#define AV_MAX_TRANSFORMER_LAYERS 24
typedef struct av_transformer_encoder {
    int num_layers;
    av_encoder_layer layers[AV_MAX_TRANSFORMER_LAYERS];
    av_layer_norm_layer norm; /* weight NULL: no final norm */
} av_transformer_encoder;
typedef struct av_transformer_decoder {
    int num_layers;
    av_decoder_layer layers[AV_MAX_TRANSFORMER_LAYERS];
    av_layer_norm_layer norm;
} av_transformer_decoder;
AVAPI av_transformer_encoder av_transformer_encoder_new(av_model *m, const char *name, const av_transformer_config *cfg,
                                                        int num_layers, int final_norm);
AVAPI av_transformer_decoder av_transformer_decoder_new(av_model *m, const char *name, const av_transformer_config *cfg,
                                                        int num_layers, int final_norm);
AVAPI av_tensor *av_transformer_encoder_forward(av_ctx *c, const av_transformer_encoder *e, av_tensor *x, av_tensor *mask,
                                                av_tensor *key_padding_mask, int is_causal);
AVAPI av_tensor *av_transformer_decoder_forward(av_ctx *c, const av_transformer_decoder *d, av_tensor *x, av_tensor *memory,
                                                av_tensor *tgt_mask, av_tensor *tgt_key_padding_mask, int tgt_is_causal,
                                                av_tensor *memory_mask, av_tensor *memory_key_padding_mask);

/* nn.Transformer: an encoder and a decoder stack, each with a final norm. */
typedef struct av_transformer { av_transformer_encoder encoder; av_transformer_decoder decoder; } av_transformer;
AVAPI av_transformer av_transformer_new(av_model *m, const char *name, const av_transformer_config *cfg,
                                        int num_encoder_layers, int num_decoder_layers);
/* src [B, S, d], tgt [B, T, d] -> [B, T, d]. Unlike nn.Transformer's
   defaults, the target attends causally to itself, and the source's padding
   mask also hides the memory's padding from the decoder (what a translation
   model wants; PyTorch takes tgt_mask and memory_key_padding_mask apart). */
AVAPI av_tensor *av_transformer_forward(av_ctx *c, const av_transformer *t, av_tensor *src, av_tensor *tgt,
                                        av_tensor *src_key_padding_mask, av_tensor *tgt_key_padding_mask);

/* Decoding a step at a time with KV caches, for the decoder stack: one self-
   attention cache and one memory cache per layer (inference). Step by step,
   av_transformer_decoder_step equals av_transformer_decoder_forward with a
   causal target on the whole sequence. */
typedef struct av_decoder_cache {
    int num_layers;
    av_kv_cache self_kv[AV_MAX_TRANSFORMER_LAYERS], memory_kv[AV_MAX_TRANSFORMER_LAYERS];
} av_decoder_cache;
AVAPI int av_decoder_cache_init(av_decoder_cache *dc, const av_transformer_decoder *d, int batch, int capacity);
AVAPI void av_decoder_cache_free(av_decoder_cache *dc);
AVAPI int av_decoder_cache_set_memory(av_ctx *c, av_decoder_cache *dc, const av_transformer_decoder *d, av_tensor *memory);
/* x [B, T_new, d] -> [B, T_new, d] */
AVAPI av_tensor *av_transformer_decoder_step(av_ctx *c, const av_transformer_decoder *d, av_tensor *x, av_decoder_cache *dc,
                                             av_tensor *memory_key_padding_mask);

/* ---- convolutions and normalisation layers ---- */
/* torch.nn.utils.spectral_norm of a parameter: "<p>" becomes "<p>_orig",
   with buffers "<p>_u" [shape[dim]] and "<p>_v" [the rest] (PyTorch's
   names), u and v drawn N(0, 1) and normalised. dim: 0, or 1 for a
   transposed convolution's weight; PyTorch's defaults: 1 power
   iteration, eps 1e-12. */
typedef struct av_spectral_norm_layer {
    av_tensor *weight_orig, *weight_u, *weight_v;
    int dim, n_power_iterations;
    float eps;
} av_spectral_norm_layer;
AVAPI av_spectral_norm_layer av_spectral_norm_new(av_model *m, av_tensor *weight, int dim, int n_power_iterations, float eps);
/* the normalised weight (power iterations in training only) */
AVAPI av_tensor *av_spectral_norm_forward(av_ctx *c, const av_spectral_norm_layer *sn);

/* nn.Conv2d: "<name>.weight" [out, in/groups, kh, kw] and "<name>.bias"
   [out] (if bias), both U(±1/sqrt(in/groups kh kw)) as PyTorch's;
   nn.ConvTranspose2d: weight [in, out/groups, kh, kw], fan-in
   out/groups kh kw. opts as av_conv2d's (NULL: defaults). */
typedef struct av_conv2d_layer {
    av_tensor *weight, *bias;
    av_conv_opts opts;
    int transposed;
    av_spectral_norm_layer sn;      /* weight_orig not NULL: spectral_norm applied */
} av_conv2d_layer;
AVAPI av_conv2d_layer av_conv2d_new(av_model *m, const char *name, int in, int out, int kh, int kw,
                                    const av_conv_opts *opts, int bias);
AVAPI av_conv2d_layer av_conv_transpose2d_new(av_model *m, const char *name, int in, int out, int kh, int kw,
                                              const av_conv_opts *opts, int bias);
/* spectral_norm(conv): the weight becomes "<name>.weight_orig" (defaults) */
AVAPI void av_conv2d_spectral_norm(av_model *m, av_conv2d_layer *l);
AVAPI av_tensor *av_conv2d_forward(av_ctx *c, const av_conv2d_layer *l, av_tensor *x);

/* nn.BatchNorm2d (or 1d on [B, C] and [B, C, L]): "<name>.weight" (ones),
   "<name>.bias" (zeros), buffers "<name>.running_mean" (zeros),
   "<name>.running_var" (ones) and "<name>.num_batches_tracked" (a float
   scalar, exact to 2^24; PyTorch's is int64: write it as F32). Training
   (av_set_training) normalises by the batch and updates the buffers, with
   num_batches_tracked + 1; eval normalises by the running statistics.
   PyTorch's defaults: eps 1e-5, momentum 0.1. */
typedef struct av_batch_norm_layer {
    av_tensor *weight, *bias, *running_mean, *running_var, *num_batches_tracked;
    float eps, momentum;
} av_batch_norm_layer;
AVAPI av_batch_norm_layer av_batch_norm_new(av_model *m, const char *name, int num_features, float eps, float momentum);
AVAPI av_tensor *av_batch_norm_forward(av_ctx *c, const av_batch_norm_layer *l, av_tensor *x);

/* nn.GroupNorm: "<name>.weight" (ones) and "<name>.bias" (zeros) [C]. */
typedef struct av_group_norm_layer { av_tensor *weight, *bias; int num_groups; float eps; } av_group_norm_layer;
AVAPI av_group_norm_layer av_group_norm_new(av_model *m, const char *name, int num_groups, int num_channels, float eps);
AVAPI av_tensor *av_group_norm_forward(av_ctx *c, const av_group_norm_layer *l, av_tensor *x);

/* ---- attention for images ---- */
/* SAGAN self-attention (Zhang et al. 2019), gated by gamma, over the
   N = H W positions of x [B, C, H, W]:
     q = query(x), k = key(x) [B, C/reduction, N], v = value(x) [B, C, N]
       (1x1 convolutions with bias),
     a[b, i, j] = softmax over j of q_i . k_j   (scale 1: SAGAN has no 1/sqrt(d)),
     o_i = sum_j a[b, i, j] v_j,   out = gamma o + x,
   gamma [1] a parameter starting at 0, so the block starts as the identity.
   Names: "<name>.query.weight" [C/r, C, 1, 1] and ".bias", "<name>.key.*"
   (the same shapes), "<name>.value.*" [C, C, 1, 1], "<name>.gamma" [1]. The
   paper's g, f and h are query, key and value (s_ij = f(x_i)^T g(x_j) with
   the softmax over i for output j); the common PyTorch implementation calls
   them query_conv, key_conv and value_conv (rename those to load its
   state_dict). Like that implementation, no output convolution follows o
   (the paper's v). reduction: 8 in SAGAN; C/reduction must be >= 1. */
typedef struct av_self_attn2d { av_conv2d_layer query, key, value; av_tensor *gamma; } av_self_attn2d;
AVAPI av_self_attn2d av_self_attn2d_new(av_model *m, const char *name, int channels, int reduction);
/* spectral_norm on the three convolutions (as SAGAN's generator and discriminator) */
AVAPI void av_self_attn2d_spectral_norm(av_model *m, av_self_attn2d *l);
/* x [B, C, H, W] -> [B, C, H, W] over av_sdpa (tiled: nothing N x N is
   kept). attn not NULL: the naive av_sdpa_weights path, and *attn gets the
   weights [B, N, N], rows summing to 1: row i is the query position (row
   i / W, column i % W) and its N entries weigh the key positions in the
   same row-major order. So where pixel (py, px) of image b looks is the
   H x W image at attn->data + ((size_t)b N + py W + px) N. */
AVAPI av_tensor *av_self_attn2d_forward(av_ctx *c, const av_self_attn2d *l, av_tensor *x, av_tensor **attn);

/* Spatial attention (CBAM, Woo et al. 2018): the max and the mean over the
   channels [B, 2, H, W] (in that order, as CBAM's ChannelPool), a kernel x
   kernel convolution to one channel (padding kernel / 2, no bias), a
   sigmoid: the map [B, 1, H, W], and out = x map. "<name>.conv.weight"
   [1, 2, k, k]. kernel: odd, 0 means 7 (CBAM's). */
typedef struct av_spatial_attn { av_conv2d_layer conv; } av_spatial_attn;
AVAPI av_spatial_attn av_spatial_attn_new(av_model *m, const char *name, int kernel);
/* *map (if not NULL) gets the gate [B, 1, H, W] */
AVAPI av_tensor *av_spatial_attn_forward(av_ctx *c, const av_spatial_attn *l, av_tensor *x, av_tensor **map);

/* Channel attention, squeeze-and-excitation (Hu et al. 2018), as
   torchvision.ops.SqueezeExcitation: s = sigmoid(fc2(relu(fc1(mean over
   H, W of x)))) [B, C], out = x s. fc1 and fc2 are 1x1 convolutions with
   bias: "<name>.fc1.weight" [C/r, C, 1, 1], "<name>.fc2.weight" [C, C/r,
   1, 1]; C/reduction must be >= 1. */
typedef struct av_channel_attn { av_conv2d_layer fc1, fc2; } av_channel_attn;
AVAPI av_channel_attn av_channel_attn_new(av_model *m, const char *name, int channels, int reduction);
/* *weights (if not NULL) gets s [B, C] */
AVAPI av_tensor *av_channel_attn_forward(av_ctx *c, const av_channel_attn *l, av_tensor *x, av_tensor **weights);

/* ---- convolutional blocks ---- */
/* conv3x3 (padding 1) - BatchNorm2d - ReLU: "<name>.conv.weight" [out, in,
   3, 3] and "<name>.bn.*". The convolutions of the blocks have no bias: the
   batch norm's shift replaces it (as torchvision's ResNet). */
typedef struct av_conv_block { av_conv2d_layer conv; av_batch_norm_layer bn; } av_conv_block;
AVAPI av_conv_block av_conv_block_new(av_model *m, const char *name, int in, int out);
AVAPI av_tensor *av_conv_block_forward(av_ctx *c, const av_conv_block *b, av_tensor *x);

/* A residual block (ResNet's basic block): relu(bn2(conv2(relu(bn1(conv1
   x)))) + shortcut(x)), conv1 3x3 with the stride, conv2 3x3; the shortcut
   is x, or a projection, a 1x1 convolution with the stride and a
   BatchNorm2d, when stride != 1 or in != out. Names "<name>.conv1",
   "<name>.bn1", "<name>.conv2", "<name>.bn2", "<name>.shortcut.0" (conv)
   and "<name>.shortcut.1" (bn), as nn.Sequential numbers them. */
typedef struct av_res_block {
    av_conv2d_layer conv1, conv2, shortcut_conv; /* shortcut_conv.weight NULL: the identity */
    av_batch_norm_layer bn1, bn2, shortcut_bn;
} av_res_block;
AVAPI av_res_block av_res_block_new(av_model *m, const char *name, int in, int out, int stride);
AVAPI av_tensor *av_res_block_forward(av_ctx *c, const av_res_block *b, av_tensor *x);

/* The AttentionNet classifier: a ConvBlock stem "<name>.stem" at full
   resolution; stages "<name>.layer<s+1>.<i>" of ResBlocks, the first of
   each with stride 2; SAGAN self-attention "<name>.sagan" after stage
   sagan_stage and spatial attention "<name>.spatial" after spatial_stage
   (SAGAN first if both follow the same stage); global average pooling (the
   features) and "<name>.fc" (nn.Linear) to the logits. attention 0 builds
   the same net without its attention blocks (no parameters made for them),
   for ablations. */
#define AV_ATTNET_MAX_STAGES 4
#define AV_ATTNET_MAX_BLOCKS 4
typedef struct av_attention_net_config {
    int in_channels, num_classes;
    int stem_channels;
    int num_stages;
    int channels[AV_ATTNET_MAX_STAGES], blocks[AV_ATTNET_MAX_STAGES];
    int sagan_stage, spatial_stage;  /* stage index, or -1 for none */
    int sagan_reduction, spatial_kernel;
    int attention;                   /* 1: attention blocks on; 0: off (ablation) */
} av_attention_net_config;
/* For 1 x 28 x 28 Fashion-MNIST: stem 32 at 28x28, stages of one ResBlock,
   64 at 14x14 then 128 at 7x7, SAGAN (reduction 8) after the first
   stage (196 positions), spatial attention (7x7) after the second, 10
   classes. */
AVAPI av_attention_net_config av_attention_net_defaults(void);
typedef struct av_attention_net {
    av_attention_net_config cfg;
    av_conv_block stem;
    av_res_block stages[AV_ATTNET_MAX_STAGES][AV_ATTNET_MAX_BLOCKS];
    av_self_attn2d sagan;     /* query.weight NULL when absent */
    av_spatial_attn spatial;  /* conv.weight NULL when absent */
    av_linear_layer fc;
} av_attention_net;
/* The attention maps of a forward pass, to draw: sagan [B, N, N] over the
   N = sagan_h sagan_w positions where the block sits (as
   av_self_attn2d_forward's), spatial [B, 1, H, W]; NULL when the net has
   no such block. */
typedef struct av_attention_net_maps { av_tensor *sagan, *spatial; int sagan_h, sagan_w; } av_attention_net_maps;
AVAPI av_attention_net av_attention_net_new(av_model *m, const char *name, const av_attention_net_config *cfg);
/* x [B, in_channels, H, W] -> logits [B, num_classes]. maps: NULL, or
   filled (then the SAGAN block runs the naive path to return its weights). */
AVAPI av_tensor *av_attention_net_forward(av_ctx *c, const av_attention_net *net, av_tensor *x, av_attention_net_maps *maps);
/* the pooled features before fc, [B, channels of the last stage] */
AVAPI av_tensor *av_attention_net_features(av_ctx *c, const av_attention_net *net, av_tensor *x, av_attention_net_maps *maps);

/* A plain autoencoder: encoder MLP sizes[0] -> ... -> sizes[n] (the code),
   decoder the mirror image back to sizes[0]; parameters "<name>.enc.*" and
   "<name>.dec.*". The activation also follows the code layer. The decoder
   output is raw (logits or means): pair it with av_bernoulli_nll or
   av_gaussian_nll below. */
typedef struct av_autoencoder { av_mlp encoder, decoder; int activation; } av_autoencoder;
AVAPI av_autoencoder av_autoencoder_new(av_model *m, const char *name, int n_layers, const int *sizes, int activation);
AVAPI av_tensor *av_autoencoder_forward(av_ctx *c, const av_autoencoder *ae, av_tensor *x, av_tensor **code);

/* Attention of a decoder over an encoder's outputs with learned scores
   (Bahdanau 2015; Luong 2015), a query at a time (a decoder stepping) or
   for all steps at once (teacher forcing). score is one of
     AV_SCORE_ADDITIVE  Bahdanau, vᵀ tanh(W1 h_enc + W2 h_dec): parameters
                        "<name>.W1.weight" [A, key_dim], "<name>.W2.weight"
                        [A, query_dim], "<name>.v.weight" [1, A]
     AV_SCORE_DOT       Luong dot, h_decᵀ h_enc (query_dim = key_dim): none
     AV_SCORE_GENERAL   Luong general, h_decᵀ W h_enc: "<name>.W.weight"
                        [query_dim, key_dim]
     AV_SCORE_CONCAT    Luong concat, vᵀ tanh(W [h_dec; h_enc]):
                        "<name>.W.weight" [A, query_dim + key_dim] (h_dec's
                        columns first), "<name>.v.weight" [1, A]
   with A = attn_dim (0 for dot and general). Each W is an nn.Linear, in
   PyTorch's layout and initialisation; with bias, W1, W2 and W also have
   "<name>.<W>.bias" [out]. v has no bias: it would add one number to every
   score, which the softmax cancels (drop a v.bias from a PyTorch state_dict). */
enum { AV_SCORE_ADDITIVE, AV_SCORE_DOT, AV_SCORE_GENERAL, AV_SCORE_CONCAT };
typedef struct av_attention {
    int score, query_dim, key_dim, attn_dim;
    av_linear_layer W1, W2, W, v;   /* the ones the score uses; the others NULL */
} av_attention;
AVAPI av_attention av_attention_new(av_model *m, const char *name, int score, int query_dim, int key_dim,
                                    int attn_dim, int bias);
/* The encoder's side, made once per batch: its outputs h_enc [B, Tk,
   key_dim] (the values), their projection (W1 h_enc, W h_enc, or the key
   half of the concat; the values for dot) and one additive mask [B, 1, Tk]
   from mask and lengths (as av_attend's; either or both may be NULL). It
   lives in the step arena, like the tensors it holds. */
typedef struct av_attn_memory { av_tensor *values, *keys, *mask; } av_attn_memory;
AVAPI av_attn_memory av_attention_memory(av_ctx *c, const av_attention *a, av_tensor *values, av_tensor *mask,
                                         const int *lengths);
/* query h_dec [B, query_dim] (one step) or [B, Tq, query_dim]: the context
   [B, key_dim] or [B, Tq, key_dim], with the weights [B, Tk] or [B, Tq, Tk]
   in *weights if it is not NULL. A query whose keys are all masked gets a
   zero context. */
AVAPI av_tensor *av_attention_forward(av_ctx *c, const av_attention *a, const av_attn_memory *mem, av_tensor *query,
                                      av_tensor **weights);
/* The pieces of av_attention_forward, for hard attention: the scores as
   logits ([B, Tk] or [B, Tq, Tk], -INFINITY where masked) for
   av_argmax_onehot, av_categorical_sample or av_gumbel_softmax, and the
   context of any weights or selection of that shape. */
AVAPI av_tensor *av_attention_scores(av_ctx *c, const av_attention *a, const av_attn_memory *mem, av_tensor *query);
AVAPI av_tensor *av_attention_context(av_ctx *c, const av_attn_memory *mem, av_tensor *weights);

/* Attention pooling, e.g. a classifier over an LSTM's outputs h [B, T,
   dim]: scores vᵀ tanh(W h_t + b), weights α = softmax over t < lengths[b]
   (lengths NULL: all T), pooled Σ_t α_t h_t [B, dim]; α [B, T] goes to
   *weights if it is not NULL. Parameters "<name>.W.weight" [A, dim],
   "<name>.W.bias" [A], "<name>.v.weight" [1, A], nn.Linear's. */
typedef struct av_attn_pool { av_linear_layer W, v; } av_attn_pool;
AVAPI av_attn_pool av_attn_pool_new(av_model *m, const char *name, int dim, int attn_dim);
AVAPI av_tensor *av_attn_pool_forward(av_ctx *c, const av_attn_pool *p, av_tensor *h, const int *lengths,
                                      av_tensor **weights);
/* LSTM and GRU as nn.LSTM / nn.GRU with batch_first=True, built from
   av_rnn_layer (gates and maths in [3.8 recurrent]). Parameters, created in
   PyTorch's order so a state_dict saved as safetensors loads by name:
     "<name>.weight_ih_l<k>" [G, in_k], "<name>.weight_hh_l<k>" [G, H],
     "<name>.bias_ih_l<k>" [G], "<name>.bias_hh_l<k>" [G],
   and the same ending in "_reverse" for the reverse direction when
   bidirectional; G = 4H (LSTM) or 3H (GRU), in_0 = input_size, in_k = D H
   above (D = 2 directions when bidirectional, else 1). All start
   U(-1/sqrt(H), 1/sqrt(H)), as in PyTorch. dropout (0 <= p < 1) applies to
   the output of every layer but the last, in training mode only. */
#define AV_RNN_MAX_LAYERS 8
typedef struct av_rnn {
    int kind, input_size, hidden_size, num_layers, num_directions;
    float dropout;
    av_rnn_weights w[AV_RNN_MAX_LAYERS][2]; /* [layer][direction] */
} av_rnn;
AVAPI av_rnn av_lstm_new(av_model *m, const char *name, int input_size, int hidden_size, int num_layers,
                         int bidirectional, float dropout);
AVAPI av_rnn av_gru_new(av_model *m, const char *name, int input_size, int hidden_size, int num_layers,
                        int bidirectional, float dropout);
/* x [B, T, input_size]; h0 (and c0, LSTM only) [num_layers D, B, H] or NULL
   for zeros; lengths[B] (0..T) or NULL, as in av_rnn_layer. Returns y
   [B, T, D H], the last layer's states, forward half then reverse half;
   *h_n (and *c_n) get the final states [num_layers D, B, H] in PyTorch's
   order (layer 0 forward, layer 0 reverse, layer 1 forward, ...); either
   pointer may be NULL. Padded steps of y are zeros. */
AVAPI av_tensor *av_rnn_forward(av_ctx *c, const av_rnn *r, av_tensor *x, av_tensor *h0, av_tensor *c0,
                                const int *lengths, av_tensor **h_n, av_tensor **c_n);

/* Single cells for models that run one step at a time (decoders), as
   nn.LSTMCell / nn.GRUCell: parameters "<name>.weight_ih" [G, in],
   "<name>.weight_hh" [G, H], "<name>.bias_ih" and "<name>.bias_hh" [G].
   x [B, in]; h, c_prev [B, H] or NULL for zeros; h_out, c_out [B, H].
   One step is av_rnn_layer over T = 1: one tape node with both outputs. */
typedef struct av_rnn_cell { int kind, input_size, hidden_size; av_rnn_weights w; } av_rnn_cell;
AVAPI av_rnn_cell av_lstm_cell_new(av_model *m, const char *name, int input_size, int hidden_size);
AVAPI av_rnn_cell av_gru_cell_new(av_model *m, const char *name, int input_size, int hidden_size);
AVAPI void av_lstm_cell(av_ctx *c, const av_rnn_cell *cell, av_tensor *x, av_tensor *h, av_tensor *c_prev,
                        av_tensor **h_out, av_tensor **c_out);
AVAPI av_tensor *av_gru_cell(av_ctx *c, const av_rnn_cell *cell, av_tensor *x, av_tensor *h);

/* ======================================================================= */
/* [7 toolkits] VAE                                                         */
/* ======================================================================= */
/* Pieces that fit any encoder and decoder: the encoder ends in a Gaussian
   head (mu, logvar), z comes from the reparameterization, the decoder gives
   likelihood parameters, and the per-example terms make the ELBO. All
   per-example terms sum over every axis but the first, in nats. */
typedef struct av_gaussian_head { av_linear_layer mu, logvar; } av_gaussian_head;
/* parameters "<name>.mu.*" and "<name>.logvar.*" */
AVAPI av_gaussian_head av_gaussian_head_new(av_model *m, const char *name, int in, int latent);
AVAPI void av_gaussian_head_forward(av_ctx *c, const av_gaussian_head *g, av_tensor *h,
                                    av_tensor **mu, av_tensor **logvar);
/* z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): Philox normal draws of a
   fresh stream, draw e for element e */
AVAPI av_tensor *av_reparameterize(av_ctx *c, av_tensor *mu, av_tensor *logvar);
/* The same with the caller's eps (mu's shape), e.g. another framework's
   draws; the gradient goes to mu and logvar only, and eps must stay as it
   is until av_backward. av_reparameterize(c, mu, logvar) is exactly this
   with eps = av_randn(c, 0, 1, mu's shape): draw eps that way to keep it. */
AVAPI av_tensor *av_reparameterize_eps(av_ctx *c, av_tensor *mu, av_tensor *logvar, const av_tensor *eps);
/* KL(N(mu, e^logvar) || N(0, I)) per example: [B] */
AVAPI av_tensor *av_kl_std_normal(av_ctx *c, av_tensor *mu, av_tensor *logvar);
/* -log Bernoulli(x | sigmoid(logits)) per example, x in [0, 1]: [B] */
AVAPI av_tensor *av_bernoulli_nll(av_ctx *c, av_tensor *logits, av_tensor *x);
/* -log N(x | mean, e^logvar) per example: [B]. logvar broadcasts against
   mean: a constant tensor gives a fixed variance, a parameter a learned one. */
AVAPI av_tensor *av_gaussian_nll(av_ctx *c, av_tensor *mean, av_tensor *logvar, av_tensor *x);
/* log N(z | mu, e^logvar) per example: [B]; mu and logvar NULL mean N(0, I) */
AVAPI av_tensor *av_gaussian_log_prob(av_ctx *c, av_tensor *z, av_tensor *mu, av_tensor *logvar);
/* mean over the batch of nll + beta kl: the negative ELBO in nats per example */
AVAPI av_tensor *av_neg_elbo(av_ctx *c, av_tensor *nll, av_tensor *kl, float beta);
/* KL warm-up: beta_max * min(1, step / warmup_steps) */
AVAPI float av_kl_warmup(long step, long warmup_steps, float beta_max);
/* Importance-weighted estimate of log p(x) per example (IWAE, k samples from
   q = N(mu, e^logvar)): log (1/k) sum_j p(x|z_j) p(z_j) / q(z_j|x). nll gives
   -log p(x|z) per example: [B]. Runs without a tape; writes log_px[B]. */
typedef av_tensor *(*av_nll_fn)(av_ctx *c, av_tensor *z, av_tensor *x, void *user);
AVAPI void av_iwae_log_px(av_ctx *c, av_tensor *x, av_tensor *mu, av_tensor *logvar, int k,
                          av_nll_fn nll, void *user, double *log_px);
AVAPI double av_log_mean_exp(const double *v, int n);   /* log((1/n) sum e^v), stable */
/* The IWAE bound as a loss to train on (Burda et al. 2016): the batch mean
   of -log (1/k) sum_j p(x, z_j) / q(z_j | x). The k samples z_j = mu +
   sigma eps_j go through nll as one batch of k*B rows (row j*B + b is
   sample j of example b, x repeated), so the decoder runs once. It is
   differentiable in mu, logvar and all that nll uses; k = 1 is the ELBO
   with a one-sample KL. bound, if not NULL, gets the per-example bound
   log (1/k) sum_j w_j: [B]. The eps come from the context's RNG in the
   order av_iwae_log_px draws them. */
AVAPI av_tensor *av_iwae_loss(av_ctx *c, av_tensor *x, av_tensor *mu, av_tensor *logvar, int k, av_nll_fn nll,
                              void *user, av_tensor **bound);
/* rows z0 + t (z1 - z0) for t = 0, 1/(steps-1), ..., 1: [steps, D] */
AVAPI av_tensor *av_interpolate(av_ctx *c, const float *z0, const float *z1, int dim, int steps);

/* A whole VAE around any encoder and decoder, given as callbacks: the
   encoder maps x [B, ...] to features [B, F], a Gaussian head makes mu and
   logvar, the decoder maps z [B, latent] to likelihood parameters with x's
   element count per example: logits for AV_BERNOULLI, means for
   AV_GAUSSIAN (log-variance x_logvar, a parameter to learn it, or NULL for
   the constant fixed_logvar). Parameters of the head: "<name>.head.*". */
enum { AV_BERNOULLI, AV_GAUSSIAN };
typedef av_tensor *(*av_net_fn)(av_ctx *c, av_tensor *in, void *user);
typedef struct av_vae {
    av_net_fn encoder, decoder;
    void *user;               /* passed to both callbacks */
    av_gaussian_head head;
    int latent, likelihood;
    av_tensor *x_logvar;
    float fixed_logvar;
} av_vae;
AVAPI av_vae av_vae_new(av_model *m, const char *name, int features, int latent, av_net_fn encoder,
                        av_net_fn decoder, void *user, int likelihood);
AVAPI void av_vae_encode(av_ctx *c, const av_vae *v, av_tensor *x, av_tensor **mu, av_tensor **logvar);
/* -log p(x | z) per example: [B] */
AVAPI av_tensor *av_vae_nll(av_ctx *c, const av_vae *v, av_tensor *z, av_tensor *x);
/* the batch's negative ELBO (beta-weighted, nats per example); nll and kl
   per example are returned through the pointers when not NULL */
AVAPI av_tensor *av_vae_loss(av_ctx *c, const av_vae *v, av_tensor *x, float beta, av_tensor **nll, av_tensor **kl);
/* data-space means: of p(x | mu(x)), of p(x | z) for n prior draws, and
   along the line between the latent means of x's two examples ([steps, D]) */
AVAPI av_tensor *av_vae_reconstruct(av_ctx *c, const av_vae *v, av_tensor *x);
AVAPI av_tensor *av_vae_sample(av_ctx *c, const av_vae *v, int n);
AVAPI av_tensor *av_vae_interpolate(av_ctx *c, const av_vae *v, av_tensor *x, int steps);
/* IWAE estimate of log p(x) per example with k samples: writes log_px[B] */
AVAPI void av_vae_iwae(av_ctx *c, const av_vae *v, av_tensor *x, int k, double *log_px);
/* av_iwae_loss of the VAE: the k-sample IWAE objective to train on */
AVAPI av_tensor *av_vae_iwae_loss(av_ctx *c, const av_vae *v, av_tensor *x, int k, av_tensor **bound);

/* ---- [7 toolkits] decoding: greedy, beam search, sampling ---- */
/* A model to decode from. step() takes one new token per row and returns
   the logits of the next token [rows, vocab], advancing the model's own
   state (its KV caches: av_decoder_cache, av_kv_cache); reorder() makes row
   r of the state a copy of row rows[r] (beam search reorders its beams'
   histories; av_kv_cache_reorder does it for a cache). Decoding runs
   without a tape and frees each step's tensors. */
typedef struct av_decoder {
    av_tensor *(*step)(av_ctx *c, const int *tokens, int rows, void *state);
    void (*reorder)(void *state, const int *rows, int n);
    void *state;
} av_decoder;
/* Row r of the cache takes the contents of row rows[r] (any order, repeats allowed). */
AVAPI void av_kv_cache_reorder(av_kv_cache *kv, const int *rows, int n);
AVAPI void av_decoder_cache_reorder(av_decoder_cache *dc, const int *rows, int n);
/* Greedy: B rows start from bos and take the most likely token each step
   until eos (kept) or max_len tokens. out [B, max_len], -1 after the end;
   lengths[B] counts the tokens, eos included. */
AVAPI int av_decode_greedy(av_ctx *c, const av_decoder *d, int B, int bos, int eos, int max_len, int *out, int *lengths);
/* Beam search of width `beam` for one sequence; the model's state must hold
   `beam` rows (e.g. its memory repeated). A hypothesis ends at eos or at
   max_len; its score is its log-probability divided by length^length_penalty
   (length in tokens, eos included; 0 for none). Width 1 is greedy. Writes the
   best hypothesis to out[max_len] (-1 after its end) and returns its length;
   *score gets its score. */
AVAPI int av_decode_beam(av_ctx *c, const av_decoder *d, int beam, int bos, int eos, int max_len, float length_penalty,
                         int *out, float *score);
/* One token from logits [V]: temperature 0 takes the argmax; otherwise the
   softmax of logits / temperature, cut to the top_k most likely (0: no cut)
   and to the smallest set whose probability reaches top_p (1: no cut),
   renormalised, sampled with the generator. AV_ERR_NOMEM (negative) if the
   V-sized scratch cannot be had. */
AVAPI int av_sample_logits(const float *logits, int V, float temperature, int top_k, float top_p, av_rng *rng);
/* Like greedy, with each token sampled by av_sample_logits from the
   context's generator. Both return 0, or AV_ERR_NOMEM. */
AVAPI int av_decode_sample(av_ctx *c, const av_decoder *d, int B, int bos, int eos, int max_len, float temperature,
                           int top_k, float top_p, int *out, int *lengths);


/* ======================================================================= */
/* [8 optim] optimizers, schedules, clipping                                */
/* ======================================================================= */

/* The hyperparameters are doubles, as PyTorch's Python floats are: 1 - beta
   and lr / (1 - beta^t) are computed in double, then applied in float. */
enum { AV_OPT_SGD, AV_OPT_ADAM, AV_OPT_ADAMW };
typedef struct av_optim {
    int kind;
    double lr, momentum, beta1, beta2, eps, weight_decay;
} av_optim;
AVAPI av_optim av_sgd(double lr, double momentum, double weight_decay);
AVAPI av_optim av_adam(double lr);                     /* betas 0.9/0.999, eps 1e-8 */
AVAPI av_optim av_adamw(double lr, double weight_decay);
/* One update of every parameter from its gradient (buffers are skipped),
   with its group's scales; does not zero grads. Refused, with nothing
   changed, when: a gradient is NaN or infinite (AV_ERR_NAN, the message
   names the parameter: a bad batch loses nothing); a hyperparameter is out
   of range (AV_ERR_ARG): lr, weight_decay and eps must be finite and >= 0
   (also times a group's scales), momentum in [0, 1], betas in [0, 1); the
   model lost a tensor to out of memory (its av_model_error) or the state
   cannot be allocated (AV_ERR_NOMEM); the step count is at AV_MAX_STEP
   (AV_ERR_ARG).
   Updates are deterministic: the same on any number of threads. */
#define AV_MAX_STEP 1000000000L /* a billion: step + 1 fits even a 32-bit long */
AVAPI int av_optim_step(av_model *m, const av_optim *opt);
/* Returns the norm before clipping; grads are scaled by max_norm / (norm +
   1e-6) when the norm is above max_norm (PyTorch's rule). max_norm must be
   >= 0 (a programming error otherwise). The sum runs in double, in a fixed
   order. */
AVAPI float av_clip_grad_norm(av_model *m, float max_norm);
AVAPI float av_grad_norm(const av_model *m);
/* step < warmup: lr_max (step+1)/warmup; then lr_min + (lr_max-lr_min)(1+cos(pi p))/2
   with p = (step-warmup)/(total-warmup) clamped to [0, 1]. */
AVAPI double av_lr_warmup_cosine(long step, long warmup, long total, double lr_max, double lr_min);

/* Optimizer state by parameter name, e.g. to move it from or to PyTorch:
   AV_STATE_M is Adam's exp_avg and SGD's momentum_buffer, AV_STATE_V Adam's
   exp_avg_sq (SGD without momentum keeps none). n must be the parameter's
   size. State that no step has made yet reads as zeros (what the first
   step starts from). Errors: AV_ERR_ARG
   (no parameter of that name, a buffer, a bad which or n), AV_ERR_NOMEM. */
enum { AV_STATE_M = 0, AV_STATE_V = 1 };
AVAPI int av_optim_state_get(const av_model *m, const char *name, int which, float *dst, int n);
AVAPI int av_optim_state_set(av_model *m, const char *name, int which, const float *src, int n);
/* Sets the step count (0..AV_MAX_STEP, else AV_ERR_ARG): Adam's bias
   correction uses it, so state set by name comes with its step. */
AVAPI int av_model_set_step(av_model *m, long step);

/* ======================================================================= */
/* [9 io] safetensors, IDX, model and checkpoint files                      */
/* ======================================================================= */

/* safetensors: u64 little-endian header length N, N bytes of JSON
   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
    "__metadata__": {"key": "value", ..}}, then the data section, raw
   little-endian values. Offsets are relative to the data section, and the
   tensors must cover it exactly: no gaps, no overlap, no trailing bytes.
   Dtypes F32, F16, BF16 and F64 are read, as float: F16 and BF16 exactly
   (subnormals, infinities, NaN payloads; a signalling F16 NaN turns quiet),
   F64 rounded to nearest (beyond float range: +-inf). Other dtypes, a dim
   above INT_MAX and a tensor of more than INT_MAX elements are refused. */
#define AV_ST_MAX_DIMS 8
enum { AV_DTYPE_F32 = 0, AV_DTYPE_F16, AV_DTYPE_BF16, AV_DTYPE_F64 }; /* how a tensor is stored */

typedef struct av_st_item {
    const char *name;   /* UTF-8, unique, not "__metadata__" */
    int ndim;           /* 0 (a scalar) .. AV_ST_MAX_DIMS */
    const int *shape;   /* ndim entries >= 0, at most INT_MAX elements */
    const float *data;  /* numel floats; may be NULL when numel == 0 */
    int dtype;          /* AV_DTYPE_*; 0 (zero-initialised) is F32. F16 and BF16
                           round to nearest even (too large: +-inf), NaN stays
                           NaN with its sign */
} av_st_item;

/* Writes the tensors (data in item order) plus n_meta string pairs (unique
   keys) to a new file "<path>.tmp.<pid>.<n>", created exclusively so that
   saves running at once never share one; flushes it to disk (fsync), renames
   it over path and flushes the directory. After a crash path holds the old
   file or the new one, whole. On failure the tmp file is removed and path
   is left untouched; only a process killed mid-save leaves its tmp file
   (remove stale "<path>.tmp.*" files when no save runs). */
AVAPI int av_st_save(const char *path, const av_st_item *items, int n_items,
                     const char *const *meta_keys,
                     const char *const *meta_values, int n_meta);

/* av_st_open reads the header length, the header (at most 100 MB), checks
   that the file's size is exactly what the header describes, and only then
   reads the data section into memory: nothing is read or allocated beyond
   the file's real size. A file without a size (pipe, device) is refused. On
   failure *out is NULL and av_error() names the file and the problem.
   Tensors are indexed in header order. Getters return NULL / -1 for a bad
   index. */
typedef struct av_st_file av_st_file;
AVAPI int av_st_open(const char *path, av_st_file **out);
AVAPI void av_st_close(av_st_file *f);
AVAPI int av_st_count(const av_st_file *f);
AVAPI const char *av_st_name(const av_st_file *f, int i);
AVAPI int av_st_find(const av_st_file *f, const char *name); /* index or -1 */
AVAPI int av_st_ndim(const av_st_file *f, int i);
AVAPI const int *av_st_shape(const av_st_file *f, int i);
AVAPI int64_t av_st_numel(const av_st_file *f, int i);
AVAPI int av_st_dtype(const av_st_file *f, int i);  /* AV_DTYPE_* as stored, or -1 */
/* Copies tensor i into dst as float; n must equal its numel (else AV_ERR_MISMATCH). */
AVAPI int av_st_read(const av_st_file *f, int i, float *dst, int64_t n);
/* Value of a __metadata__ key, or NULL. */
AVAPI const char *av_st_meta(const av_st_file *f, const char *key);

/* IDX (MNIST-style, uncompressed): bytes 0,0,type,ndim; ndim big-endian u32
   dims; big-endian data. Types 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32,
   0x0D f32, 0x0E f64; values are converted to float (f64 rounds to nearest,
   out of float range becomes +-inf). The file's size must be exactly what
   the header says ("truncated" or "trailing bytes" otherwise); it is checked
   before anything is allocated, so a file without a size (pipe, device) is
   refused. dims[ndim..3] are 0. */
typedef struct av_idx {
    int ndim;
    int dims[4];
    int64_t count;  /* product of dims */
    float *data;
} av_idx;
AVAPI int av_idx_load(const char *path, av_idx *out);
AVAPI void av_idx_free(av_idx *x);

/* ---- model files ---- */
/* Parameters and buffers as safetensors, by name. A load checks every name
   and shape first (the message names the file's shape and the model's) and
   leaves the model untouched on any error; then it copies into the
   tensors' own data, so pointers taken before stay valid. A model that
   lost a tensor to out of memory (av_model_error) is not saved or loaded. */
AVAPI int av_model_save(const av_model *m, const char *path);
AVAPI int av_model_load(av_model *m, const char *path);
/* Checkpoint: also the optimizer state ("optim.m.<name>", "optim.v.<name>")
   and the step (metadata "step": decimal digits only, at most AV_MAX_STEP),
   so training resumes exactly. State missing from the file restarts from
   zero. */
AVAPI int av_checkpoint_save(const av_model *m, const char *path);
AVAPI int av_checkpoint_load(av_model *m, const char *path);

/* ======================================================================= */
/* [10 mpi] data parallelism: a sharded sampler; av_mpi over MPI            */
/* ======================================================================= */
/* Data-parallel training runs one process (a rank) per core or machine,
   each with a whole copy of the model. Every step each rank takes its own
   part of the global batch, the ranks average their gradients, and each
   takes the same optimizer step, so the copies stay identical. It trains
   the model one process would train on the whole global batch, up to the
   order of float sums.

   The sampler is plain C (no MPI): each epoch a permutation of the n
   examples drawn from (seed, epoch) alone, so every rank draws the same one.
   Step s takes the global batch perm[s G .. s G + G) (G = batch * size; the
   last one is shorter if G does not divide n), and rank r its r-th part:
   of a global batch of T examples, rows r T / size .. (r + 1) T / size
   (rounded down), so parts differ by one example at most (and may be empty
   when T < size). With size 1 it is a plain shuffled sampler. */
typedef struct av_sampler {
    int n, batch, rank, size; /* examples, examples per rank and step, this rank, ranks */
    uint64_t seed;
    long epoch;
    int *perm;                /* this epoch's order of the examples */
} av_sampler;
/* This rank's part of a global batch: examples index[0 .. count), which are
   rows offset .. offset + count of the global batch of total examples
   (e.g. give them the Philox draws from offset * row_width on, the draws of
   those rows in one process). */
typedef struct av_shard { const int *index; int count, offset, total; } av_shard;
/* Draws epoch 0's order: 0, or AV_ERR_NOMEM. n >= 0, batch >= 1, size >= 1,
   0 <= rank < size and batch * size <= INT_MAX, else a programming error. */
AVAPI int av_sampler_init(av_sampler *s, int n, int batch, int rank, int size, uint64_t seed);
AVAPI void av_sampler_free(av_sampler *s);
AVAPI void av_sampler_set_epoch(av_sampler *s, long epoch); /* draws that epoch's order */
AVAPI int av_sampler_steps(const av_sampler *s);            /* global batches per epoch */
AVAPI av_shard av_sampler_shard(const av_sampler *s, int step); /* 0 <= step < steps */

#ifdef ATTNVAE_MPI
/* Over MPI. Every function here is collective: all ranks of the
   communicator call it, in the same order (MPI_THREAD_FUNNELED suffices:
   call them from the thread that initialised MPI). They return the same
   code on every rank: 0, or a negative AV_ERR_* with the message of the
   lowest failing rank, "rank R: ...", in av_error() (MPI errors themselves
   abort the job unless the communicator was set to return them).

   A training step:
       av_model_zero_grad(m);
       loss = ... this rank's part of the global batch (count examples) ...;
       av_mpi_backward(d, c, loss, count);      // gradients of the global batch
       av_optim_step(m, &opt);                  // the same step on every rank
   av_mpi_backward runs av_backward and averages the gradients over the
   ranks, weighting each rank's by its count: for a loss that is a mean
   over the rank's count examples, the result is the gradient of the mean
   over the global batch. Gradients travel in buckets of about bucket_bytes
   (one MPI_Iallreduce each). The tape runs backward from its last node to
   its first, so a parameter's gradient is complete once the earliest node
   that reads it has run; a bucket starts as soon as all of its gradients
   are complete, while backward goes on with the nodes before, and buckets
   start in a fixed order, the same on every rank. That order is the order
   in which gradients completed on rank 0's first av_mpi_backward (reverse
   creation order if av_mpi_allreduce_grads comes first).
   A rank with no examples in a step zeroes its gradients and calls
   av_mpi_allreduce_grads(d, 0) instead. For gradient accumulation, call
   av_backward on all but the last micro-batch and av_mpi_backward on the
   last, with the rank's count of all of them.

   The model m must be built the same way on every rank: av_mpi_new checks
   the names and shapes and refuses models that differ. m must stay alive
   and gain no tensors while d is used. */
typedef struct av_mpi av_mpi;
#define AV_MPI_BUCKET_BYTES ((size_t)2 << 20) /* bucket_bytes 0: about 2 MB a bucket */
/* NULL on every rank if any fails (models that differ, out of memory) */
AVAPI av_mpi *av_mpi_new(av_model *m, MPI_Comm comm, size_t bucket_bytes);
AVAPI void av_mpi_free(av_mpi *d); /* not collective */
AVAPI int av_mpi_rank(const av_mpi *d);
AVAPI int av_mpi_size(const av_mpi *d);
/* Makes every rank's model a copy of rank 0's: parameters, buffers, the
   optimizer state and the step count. Call it once before training. */
AVAPI int av_mpi_broadcast(av_mpi *d);
/* av_backward(c, loss), then the weighted average of the ranks' gradients;
   count >= 0 (all counts 0: the gradients become 0). */
AVAPI int av_mpi_backward(av_mpi *d, av_ctx *c, av_tensor *loss, int count);
/* The same average of the gradients as they are, without a backward pass. */
AVAPI int av_mpi_allreduce_grads(av_mpi *d, int count);
/* Rank 0 alone writes the file (only its path is used); every rank gets
   its result. The loads read the file on rank 0 and broadcast the model
   (as av_mpi_broadcast), so the other ranks need no copy of it. */
AVAPI int av_mpi_model_save(av_mpi *d, const char *path);
AVAPI int av_mpi_checkpoint_save(av_mpi *d, const char *path);
AVAPI int av_mpi_model_load(av_mpi *d, const char *path);
AVAPI int av_mpi_checkpoint_load(av_mpi *d, const char *path);
/* Whether every rank is fine, e.g. after loading its data: each passes its
   own ok; returns -1 when all are, else the lowest rank that is not (the
   same on every rank), so all stop together instead of some waiting
   forever in the next collective. */
AVAPI int av_mpi_check(MPI_Comm comm, int ok);
#endif /* ATTNVAE_MPI */


#ifdef __cplusplus
}
#endif
#endif /* ATTNVAE_H */

/* ======================================================================= */
#ifdef ATTNVAE_IMPLEMENTATION
#ifndef ATTNVAE_IMPLEMENTATION_DONE
#define ATTNVAE_IMPLEMENTATION_DONE

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(AV_MALLOC) && defined(AV_REALLOC) && defined(AV_FREE)
/* the caller's allocator */
#elif !defined(AV_MALLOC) && !defined(AV_REALLOC) && !defined(AV_FREE)
#define AV_MALLOC(sz) malloc(sz)
#define AV_REALLOC(p, sz) realloc(p, sz)
#define AV_FREE(p) free(p)
#else
#error "attnvae: define all of AV_MALLOC, AV_REALLOC and AV_FREE, or none of them"
#endif
#ifndef AV_ASSERT
#include <assert.h>
#define AV_ASSERT(x) assert(x)
#endif

/* OpenMP is optional: without -fopenmp the pragmas vanish. */
#ifdef _OPENMP
#include <omp.h>
#define AV_OMP(x) _Pragma(#x)
#else
#define AV_OMP(x)
#endif
/* Threads. A loop over independent items, each writing outputs of its own,
   runs on av_get_num_threads() threads once its work n pays for starting
   them. n counts values, weighted for costly ones (in float adds, ~0.3 ns).
   Measured (bench_steps): 2 threads start and join in ~1 us, so adds pay
   from ~7000 values; from AV__PAR_MIN, 4 times that, they gain 1.6x. Sums
   are cut into chunks fixed by the shapes alone, each summed by one thread,
   and the chunk sums added in chunk order: no result depends on the thread
   count. */
#define AV__PAR_MIN 32768
#define AV__PAR(n) AV_OMP(omp parallel for schedule(static) num_threads(av_get_num_threads()) if ((n) > AV__PAR_MIN))
#define AV__VCHUNK 4096 /* values in a piece of an elementwise loop or a sum */
#define AV__COLS 16     /* columns per owner where rows add into shared rows */
/* total = the sum of TERM, a double expression of i, over i in [0, n):
   chunks of AV__VCHUNK are summed on threads, then added in chunk order. */
#define AV__SUM(c, n, i, TERM, total)                                                              \
    do {                                                                                           \
        int ch_, chunks_ = ((n) + AV__VCHUNK - 1) / AV__VCHUNK;                                    \
        double *part_ = (double *)av__arena_alloc(&(c)->arena, (size_t)chunks_ * sizeof(double));  \
        AV__PAR((long)(n))                                                                         \
        for (ch_ = 0; ch_ < chunks_; ch_++) {                                                      \
            double acc_ = 0;                                                                       \
            int i, end_ = ch_ * AV__VCHUNK + AV__MIN(AV__VCHUNK, (n) - ch_ * AV__VCHUNK);          \
            for (i = ch_ * AV__VCHUNK; i < end_; i++) acc_ += (TERM);                              \
            part_[ch_] = acc_;                                                                     \
        }                                                                                          \
        for ((total) = 0, ch_ = 0; ch_ < chunks_; ch_++) (total) += part_[ch_];                    \
    } while (0)

/* Per-thread state: the error message, the GEMM's packing space. */
#if defined(__GNUC__) || defined(__clang__)
#define AV__THREAD_LOCAL __thread
#elif defined(_MSC_VER)
#define AV__THREAD_LOCAL __declspec(thread)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define AV__THREAD_LOCAL _Thread_local
#else
#define AV__THREAD_LOCAL /* one error message and packing buffer per process */
#endif

/* The error paths end in abort(). */
#if defined(__GNUC__) || defined(__clang__)
#define AV__NORETURN __attribute__((noreturn))
#elif defined(_MSC_VER)
#define AV__NORETURN __declspec(noreturn)
#else
#define AV__NORETURN
#endif

/* A compile-time check (C99 has no static_assert). */
#define AV__STATIC_ASSERT(cond, name) typedef char av__static_assert_##name[(cond) ? 1 : -1]

#ifdef ATTNVAE_STATIC
#if defined(__GNUC__) || defined(__clang__)
#define AVDEF static __attribute__((unused))
#else
#define AVDEF static
#endif
#else
#define AVDEF
#endif

/* ======================================================================= */
/* [1 core] errors, RNG, arena, context, tensors, tape recording        */
/* ======================================================================= */
/* ---- errors ---------------------------------------------------------- */
static AV__THREAD_LOCAL char av__errbuf[512];
static AV__THREAD_LOCAL int av__errcode;
static av_abort_fn av__abort_fn;

AVDEF const char *av_error(void) { return av__errbuf; }
AVDEF int av_error_code(void) { return av__errcode; }
AVDEF void av_clear_error(void) { av__errbuf[0] = 0; av__errcode = 0; }
AVDEF void av_set_abort_handler(av_abort_fn fn) { av__abort_fn = fn; }

#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 2, 3)))
#endif
static int av__set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(av__errbuf, sizeof av__errbuf, fmt, ap);
    va_end(ap);
    av__errcode = code;
    return code;
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 1, 2)))
#endif
AV__NORETURN static void av__fail(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "attnvae: %s\n", msg);
    if (av__abort_fn) av__abort_fn(msg);
    AV_ASSERT(0 && "attnvae: programming error (see the message above)");
    abort();
}

/* ---- RNG ---- */
/* xoshiro256** seeded through splitmix64: fast, 256-bit state, reproducible. */
static uint64_t av__rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

AVDEF void av_rng_seed(av_rng *r, uint64_t seed) {
    int i;
    for (i = 0; i < 4; i++) {
        uint64_t z = (seed += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        r->s[i] = z ^ (z >> 31);
    }
}

AVDEF uint64_t av_rng_u64(av_rng *r) {
    uint64_t *s = r->s, result = av__rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = av__rotl(s[3], 45);
    return result;
}

AVDEF float av_rng_uniform(av_rng *r) { return (float)(av_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

AVDEF float av_rng_normal(av_rng *r) {
    /* Box-Muller; u1 in (0, 1] keeps the log finite. */
    double u1 = ((double)(av_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(av_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* Philox4x32-10: each round multiplies words 0 and 2 by constants, swaps
   the halves of the products into new positions and mixes in the key; the
   key steps by the golden-ratio constants between rounds. */
AVDEF void av_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t x0 = counter[0], x1 = counter[1], x2 = counter[2], x3 = counter[3], k0 = key[0], k1 = key[1];
    int round;
    for (round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * x0, p2 = (uint64_t)0xCD9E8D57u * x2;
        x0 = (uint32_t)(p2 >> 32) ^ x1 ^ k0;
        x1 = (uint32_t)p2;
        x2 = (uint32_t)(p0 >> 32) ^ x3 ^ k1;
        x3 = (uint32_t)p0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = x0; out[1] = x1; out[2] = x2; out[3] = x3;
}

AVDEF float av_u32_uniform(uint32_t u) { return (float)(u >> 8) * (1.0f / 16777216.0f); }

AVDEF float av_u32_normal(uint32_t u1, uint32_t u2, int odd) {
    double r = sqrt(-2.0 * log(((double)u1 + 1.0) * (1.0 / 4294967296.0)));
    double angle = 6.283185307179586 * ((double)u2 * (1.0 / 4294967296.0));
    return (float)(r * (odd ? sin(angle) : cos(angle)));
}

AVDEF void av_philox_block(const av_philox *s, uint64_t block, uint32_t out[4]) {
    uint32_t counter[4];
    counter[0] = (uint32_t)block;
    counter[1] = (uint32_t)(block >> 32);
    counter[2] = (uint32_t)s->offset;
    counter[3] = (uint32_t)(s->offset >> 32);
    av_philox4x32(counter, s->key, out);
}

AVDEF float av_philox_uniform(const av_philox *s, uint64_t e) {
    uint32_t w[4];
    av_philox_block(s, e >> 2, w);
    return av_u32_uniform(w[e & 3]);
}

/* lane l of a block's words w as a normal: its pair's cosine or sine */
static float av__lane_normal(const uint32_t *w, int l) { return av_u32_normal(w[l & 2], w[(l & 2) + 1], l & 1); }

AVDEF float av_philox_normal(const av_philox *s, uint64_t e) {
    uint32_t w[4];
    av_philox_block(s, e >> 2, w);
    return av__lane_normal(w, (int)(e & 3));
}

/* ---- the step arena ---- */
/* Chunks are kept across resets; a reset that saw more than one chunk merges
   them into one big enough for the whole step, so steady state never mallocs. */
typedef struct av__chunk { struct av__chunk *next; size_t size, used; } av__chunk;
typedef struct av__arena { av__chunk *head; size_t step_bytes, step_high, peak_bytes; } av__arena;

#define AV__ALIGN 64

static av__chunk *av__chunk_new(size_t size) {
    av__chunk *k = (av__chunk *)AV_MALLOC(sizeof(av__chunk) + AV__ALIGN + size);
    if (!k) av__fail("out of memory allocating a %lu-byte arena chunk", (unsigned long)size);
    k->next = NULL; k->size = size; k->used = 0;
    return k;
}

static void *av__arena_alloc(av__arena *a, size_t bytes) {
    av__chunk *k = a->head;
    uintptr_t base, p;
    bytes = (bytes + AV__ALIGN - 1) & ~(size_t)(AV__ALIGN - 1);
    if (!k || k->used + bytes > k->size) {
        size_t size = k ? k->size * 2 : ((size_t)1 << 20);
        while (size < bytes) size *= 2;
        k = av__chunk_new(size);
        k->next = a->head;
        a->head = k;
    }
    base = ((uintptr_t)(k + 1) + AV__ALIGN - 1) & ~(uintptr_t)(AV__ALIGN - 1);
    p = base + k->used;
    k->used += bytes;
    a->step_bytes += bytes;
    if (a->step_bytes > a->step_high) a->step_high = a->step_bytes;
    if (a->step_bytes > a->peak_bytes) a->peak_bytes = a->step_bytes;
    return (void *)p;
}

static void *av__arena_copy(av__arena *a, const void *src, size_t bytes) {
    void *p = av__arena_alloc(a, bytes);
    if (bytes) memcpy(p, src, bytes);
    return p;
}

static void av__arena_free_chunks(av__chunk *k) {
    while (k) { av__chunk *next = k->next; AV_FREE(k); k = next; }
}

static void av__arena_reset(av__arena *a) {
    if (a->head && (a->head->next || a->head->size < a->step_high)) {
        size_t total = 0;
        av__chunk *k;
        for (k = a->head; k; k = k->next) total += k->size;
        av__arena_free_chunks(a->head);
        a->head = av__chunk_new(total > a->step_high ? total : a->step_high);
    }
    if (a->head) a->head->used = 0;
    a->step_bytes = a->step_high = 0;
}

/* ---- context and tensors ---- */
typedef struct av__node av__node;
typedef void (*av__backward_fn)(av_ctx *c, av__node *n);

/* One tape entry. args is the op's own argument struct (each op defines
   one); saved holds buffers that forward computed for backward. */
struct av__node {
    const char *op;           /* "av_add": messages from backward name the op */
    av__backward_fn backward;
    av_tensor **out, **in;    /* any number of each; an input may be NULL */
    int n_out, n_in;
    void *args, *saved;
};

/* gen: a context id (high 32 bits) and its step count (low), stamped on
   every tensor the step makes, so an op can tell a freed tensor. */
struct av_ctx {
    av__arena arena;
    av__node **tape;
    int n_tape, cap_tape;
    av_rng rng;
    av_philox philox;         /* the next stream */
    int grad_enabled, training;
    uint64_t gen;
};

static uint64_t av__next_ctx_id(void) {
    static uint64_t next;
#if defined(__GNUC__) || defined(__clang__)
    return __atomic_add_fetch(&next, 1, __ATOMIC_RELAXED);
#else
    return ++next;
#endif
}

AVDEF av_ctx *av_ctx_new(void) {
    av_ctx *c = (av_ctx *)AV_MALLOC(sizeof(av_ctx));
    if (!c) av__fail("out of memory allocating a context");
    memset(c, 0, sizeof *c);
    c->grad_enabled = 1;
    c->training = 1;
    c->gen = av__next_ctx_id() << 32 | 1;
    av_ctx_seed(c, 0x5eed);
    return c;
}

AVDEF void av_ctx_free(av_ctx *c) {
    if (!c) return;
    av__arena_free_chunks(c->arena.head);
    AV_FREE(c->tape);
    AV_FREE(c);
}

AVDEF void av_ctx_reset(av_ctx *c) {
    av__arena_reset(&c->arena);
    c->n_tape = 0;
    c->gen++;
}
AVDEF void av_ctx_seed(av_ctx *c, uint64_t seed) {
    av_rng_seed(&c->rng, seed);
    c->philox.key[0] = (uint32_t)seed;
    c->philox.key[1] = (uint32_t)(seed >> 32);
    c->philox.offset = 0;
}
AVDEF av_rng *av_ctx_rng(av_ctx *c) { return &c->rng; }
AVDEF av_philox av_ctx_philox(av_ctx *c) {
    av_philox s = c->philox;
    c->philox.offset++;
    return s;
}
AVDEF void *av_ctx_alloc(av_ctx *c, size_t bytes) { return av__arena_alloc(&c->arena, bytes); }
AVDEF size_t av_ctx_peak_bytes(const av_ctx *c) { return c->arena.peak_bytes; }

AVDEF av_mark av_ctx_mark(const av_ctx *c) {
    av_mark m;
    m.chunk = c->arena.head;
    m.used = c->arena.head ? c->arena.head->used : 0;
    m.step_bytes = c->arena.step_bytes;
    m.n_tape = c->n_tape;
    return m;
}

AVDEF void av_ctx_rewind(av_ctx *c, av_mark m) {
    /* chunks opened after the mark go; the next reset sizes one chunk for the peak */
    while (c->arena.head && (void *)c->arena.head != m.chunk) {
        av__chunk *next = c->arena.head->next;
        AV_FREE(c->arena.head);
        c->arena.head = next;
    }
    if (c->arena.head) c->arena.head->used = m.used;
    c->arena.step_bytes = m.step_bytes;
    c->n_tape = m.n_tape;
}

AVDEF int av_set_grad_enabled(av_ctx *c, int enabled) {
    int prev = c->grad_enabled;
    c->grad_enabled = enabled != 0;
    return prev;
}

AVDEF int av_set_training(av_ctx *c, int training) {
    int prev = c->training;
    c->training = training != 0;
    return prev;
}

/* "[2,3,4]" for messages */
static const char *av__shape_str(const av_tensor *t, char *buf, size_t cap) {
    size_t len = 0;
    int i;
    len += (size_t)snprintf(buf, cap, "[");
    for (i = 0; i < t->ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, i ? ",%d" : "%d", t->shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

AV__NORETURN static void av__fail_shapes(const char *op, const char *why, const av_tensor *a, const av_tensor *b) {
    char sa[64], sb[64];
    if (b) av__fail("%s: %s: shapes %s and %s", op, why, av__shape_str(a, sa, sizeof sa), av__shape_str(b, sb, sizeof sb));
    av__fail("%s: %s: shape %s", op, why, av__shape_str(a, sa, sizeof sa));
}

/* Zeroes t and gives it a checked shape and size (who names the caller). */
static void av__set_shape(av_tensor *t, int ndim, const int *shape, const char *who) {
    long size = 1;
    int i;
    if (ndim < 0 || ndim > AV_MAX_DIMS) av__fail("%s: %d dimensions (at most %d)", who, ndim, AV_MAX_DIMS);
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    for (i = 0; i < ndim; i++) {
        if (shape[i] < 0) av__fail("%s: negative size %d in dimension %d", who, shape[i], i);
        t->shape[i] = shape[i];
        size *= shape[i];
        if (size > 0x7fffffffL) av__fail("%s: tensor too large", who);
    }
    t->size = (int)size;
}

/* A tensor in the arena without data: views and wrapped buffers set it. */
static av_tensor *av__tensor_header(av_ctx *c, int ndim, const int *shape, const char *op) {
    av_tensor *t = (av_tensor *)av__arena_alloc(&c->arena, sizeof(av_tensor));
    av__set_shape(t, ndim, shape, op);
    t->gen = c->gen;
    return t;
}

static av_tensor *av__tensor_empty(av_ctx *c, int ndim, const int *shape, const char *op) {
    av_tensor *t = av__tensor_header(c, ndim, shape, op);
    t->data = (float *)av__arena_alloc(&c->arena, (size_t)t->size * sizeof(float));
    return t;
}

static void av__read_shape(int ndim, va_list ap, int *shape, const char *op) {
    int i;
    if (ndim < 0 || ndim > AV_MAX_DIMS) av__fail("%s: %d dimensions (at most %d)", op, ndim, AV_MAX_DIMS);
    for (i = 0; i < ndim; i++) shape[i] = va_arg(ap, int);
}

/* Reads the sizes after the argument `last` into int shape[AV_MAX_DIMS]. */
#define AV__VA_SHAPE(shape, ndim, last, op)     \
    do {                                        \
        va_list ap_;                            \
        va_start(ap_, last);                    \
        av__read_shape(ndim, ap_, shape, op);   \
        va_end(ap_);                            \
    } while (0)

static av_tensor *av__filled(av_ctx *c, int ndim, const int *shape, float v, const char *op) {
    av_tensor *t = av__tensor_empty(c, ndim, shape, op);
    int i;
    for (i = 0; i < t->size; i++) t->data[i] = v;
    return t;
}

AVDEF av_tensor *av_zeros_shape(av_ctx *c, int ndim, const int *shape) { return av__filled(c, ndim, shape, 0.0f, "av_zeros"); }
AVDEF av_tensor *av_ones_shape(av_ctx *c, int ndim, const int *shape) { return av__filled(c, ndim, shape, 1.0f, "av_ones"); }
AVDEF av_tensor *av_full_shape(av_ctx *c, float value, int ndim, const int *shape) {
    return av__filled(c, ndim, shape, value, "av_full");
}

/* Fills dst[0..n) with shift + scale d, d draws 0..n-1 of a fresh Philox
   stream (normals or uniforms). Blocks of 4 draws go to threads. */
static void av__philox_fill(av_ctx *c, float *dst, int n, int normal, float shift, float scale) {
    av_philox s = av_ctx_philox(c);
    int blk, nb = (n + 3) / 4;
    AV__PAR((long)n * (normal ? 64 : 8)) /* the work of a normal: ~64 adds */
    for (blk = 0; blk < nb; blk++) {
        uint32_t w[4];
        int l;
        av_philox_block(&s, (uint64_t)blk, w);
        for (l = 0; l < 4 && 4 * blk + l < n; l++)
            dst[4 * blk + l] = shift + scale * (normal ? av__lane_normal(w, l) : av_u32_uniform(w[l]));
    }
}

AVDEF av_tensor *av_randn_shape(av_ctx *c, float mean, float std, int ndim, const int *shape) {
    av_tensor *t = av__tensor_empty(c, ndim, shape, "av_randn");
    av__philox_fill(c, t->data, t->size, 1, mean, std);
    return t;
}

AVDEF av_tensor *av_rand_shape(av_ctx *c, float lo, float hi, int ndim, const int *shape) {
    av_tensor *t = av__tensor_empty(c, ndim, shape, "av_rand");
    av__philox_fill(c, t->data, t->size, 0, lo, hi - lo);
    return t;
}

AVDEF av_tensor *av_from_shape(av_ctx *c, const float *data, int ndim, const int *shape) {
    av_tensor *t = av__tensor_empty(c, ndim, shape, "av_from");
    if (t->size) memcpy(t->data, data, (size_t)t->size * sizeof(float));
    return t;
}

AVDEF av_tensor *av_wrap_shape(av_ctx *c, float *data, int ndim, const int *shape) {
    av_tensor *t = av__tensor_header(c, ndim, shape, "av_wrap");
    t->data = data;
    return t;
}

AVDEF av_tensor *av_zeros(av_ctx *c, int ndim, ...) {
    int s[AV_MAX_DIMS];
    AV__VA_SHAPE(s, ndim, ndim, "av_zeros");
    return av_zeros_shape(c, ndim, s);
}

AVDEF av_tensor *av_ones(av_ctx *c, int ndim, ...) {
    int s[AV_MAX_DIMS];
    AV__VA_SHAPE(s, ndim, ndim, "av_ones");
    return av_ones_shape(c, ndim, s);
}

AVDEF av_tensor *av_full(av_ctx *c, float value, int ndim, ...) {
    int s[AV_MAX_DIMS];
    AV__VA_SHAPE(s, ndim, ndim, "av_full");
    return av_full_shape(c, value, ndim, s);
}

AVDEF av_tensor *av_randn(av_ctx *c, float mean, float std, int ndim, ...) {
    int s[AV_MAX_DIMS];
    AV__VA_SHAPE(s, ndim, ndim, "av_randn");
    return av_randn_shape(c, mean, std, ndim, s);
}

AVDEF av_tensor *av_rand(av_ctx *c, float lo, float hi, int ndim, ...) {
    int s[AV_MAX_DIMS];
    AV__VA_SHAPE(s, ndim, ndim, "av_rand");
    return av_rand_shape(c, lo, hi, ndim, s);
}

AVDEF av_tensor *av_from(av_ctx *c, const float *data, int ndim, ...) {
    int s[AV_MAX_DIMS];
    AV__VA_SHAPE(s, ndim, ndim, "av_from");
    return av_from_shape(c, data, ndim, s);
}

AVDEF av_tensor *av_wrap(av_ctx *c, float *data, int ndim, ...) {
    int s[AV_MAX_DIMS];
    AV__VA_SHAPE(s, ndim, ndim, "av_wrap");
    return av_wrap_shape(c, data, ndim, s);
}

AVDEF av_tensor *av_scalar(av_ctx *c, float value) {
    av_tensor *t = av__tensor_empty(c, 0, NULL, "av_scalar");
    t->data[0] = value;
    return t;
}

AVDEF float av_item(const av_tensor *t) { return t->data[0]; }

AVDEF int av_same_shape(const av_tensor *a, const av_tensor *b) {
    int i;
    if (a->ndim != b->ndim) return 0;
    for (i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

AVDEF void av_print(const char *label, const av_tensor *t) {
    char s[64];
    int i, n = t->size < 16 ? t->size : 16;
    printf("%s %s:", label ? label : "tensor", av__shape_str(t, s, sizeof s));
    for (i = 0; i < n; i++) printf(" %.6g", t->data[i]);
    printf(t->size > n ? " ...\n" : "\n");
}

/* ---- the tape: recording ---- */
/* Every op calls av__record once its outputs exist: it refuses inputs from
   an earlier step, and when grad mode is on and an input needs a gradient it
   appends a node (NULL otherwise). Inputs may be NULL (an absent bias). */
static void av__check_live(const av_ctx *c, const av_tensor *t, const char *op, int i) {
    if (t && t->gen && (t->gen >> 32) == (c->gen >> 32) && t->gen != c->gen)
        av__fail("%s: input %d is a tensor of an earlier step, freed by av_ctx_reset (make tensors after the reset)", op, i);
}

/* Every op checks its inputs first, before it allocates: after a reset the
   arena hands out the same memory again and would overwrite a stale header. */
static void av__live(const av_ctx *c, const char *op, const av_tensor *a, const av_tensor *b, const av_tensor *d) {
    av__check_live(c, a, op, 0);
    av__check_live(c, b, op, 1);
    av__check_live(c, d, op, 2);
}

static av__node *av__record_n(av_ctx *c, const char *op, av__backward_fn fn, av_tensor *const *out, int n_out,
                              av_tensor *const *in, int n_in) {
    av__node *n;
    int i, wants = 0;
    for (i = 0; i < n_in; i++) {
        av__check_live(c, in[i], op, i);
        wants |= in[i] && in[i]->requires_grad;
    }
    if (!wants || !c->grad_enabled) return NULL;
    n = (av__node *)av__arena_alloc(&c->arena, sizeof(av__node));
    memset(n, 0, sizeof *n);
    n->op = op;
    n->backward = fn;
    n->n_out = n_out;
    n->n_in = n_in;
    n->out = (av_tensor **)av__arena_copy(&c->arena, out, (size_t)n_out * sizeof(av_tensor *));
    n->in = (av_tensor **)av__arena_copy(&c->arena, in, (size_t)n_in * sizeof(av_tensor *));
    if (c->n_tape == c->cap_tape) {
        /* the tape array survives resets, so this grows only in the first steps */
        int cap = c->cap_tape ? 2 * c->cap_tape : 256;
        av__node **tape = (av__node **)AV_REALLOC(c->tape, (size_t)cap * sizeof(av__node *));
        if (!tape) av__fail("%s: out of memory growing the tape to %d entries", op, cap);
        c->tape = tape;
        c->cap_tape = cap;
    }
    c->tape[c->n_tape++] = n;
    for (i = 0; i < n_out; i++) out[i]->requires_grad = 1;
    return n;
}

/* av__record(c, op, backward, out, n_in, in0, in1, ...): one output */
#define AV__MAX_VARARG_IN 8
static av__node *av__record(av_ctx *c, const char *op, av__backward_fn fn, av_tensor *out, int n_in, ...) {
    av_tensor *in[AV__MAX_VARARG_IN];
    va_list ap;
    int i;
    if (n_in > AV__MAX_VARARG_IN) av__fail("%s: %d inputs (av__record takes %d; use av__record_n)", op, n_in, AV__MAX_VARARG_IN);
    va_start(ap, n_in);
    for (i = 0; i < n_in; i++) in[i] = va_arg(ap, av_tensor *);
    va_end(ap);
    return av__record_n(c, op, fn, &out, 1, in, n_in);
}

/* An op's argument struct, copied into the arena for its backward:
   if (n) n->args = AV__KEEP(c, args); */
#define AV__KEEP(c, args) av__arena_copy(&(c)->arena, &(args), sizeof(args))

/* The gradient buffer of t, zeroed on first use. */
static float *av__grad(av_ctx *c, av_tensor *t) {
    if (!t->grad) {
        t->grad = (float *)av__arena_alloc(&c->arena, (size_t)t->size * sizeof(float));
        memset(t->grad, 0, (size_t)t->size * sizeof(float));
    }
    return t->grad;
}

/* The gradient of input i if it needs one, else NULL. */
static float *av__in_grad(av__node *n, int i) {
    return n->in[i] && n->in[i]->requires_grad ? n->in[i]->grad : NULL;
}

static av_tensor *av__like(av_ctx *c, const av_tensor *x, const char *op) {
    return av__tensor_empty(c, x->ndim, x->shape, op);
}

static int av__axis(const av_tensor *x, int axis, const char *op) {
    if (axis < 0) axis += x->ndim;
    if (axis < 0 || axis >= x->ndim) {
        char s[64];
        av__fail("%s: axis out of range for shape %s", op, av__shape_str(x, s, sizeof s));
    }
    return axis;
}

/* Sizes before, at and after an axis: the tensor seen as [outer, n, inner]. */
static void av__split_axis(const av_tensor *x, int axis, int *outer, int *n, int *inner) {
    int i;
    *outer = 1; *inner = 1;
    for (i = 0; i < axis; i++) *outer *= x->shape[i];
    for (i = axis + 1; i < x->ndim; i++) *inner *= x->shape[i];
    *n = x->shape[axis];
}

/* ======================================================================= */
/* [2 kernels] GEMM, vector math                                        */
/* ======================================================================= */
/* ======================================================================= */
/* [2.1 gemm] GEMM: packing, micro-kernels, ISA choice, threads         */
/* ======================================================================= */
/* ---- GEMM ------------------------------------------------------------ */
/* Goto/BLIS scheme. C is cut into blocks of mc rows; for each kc-deep slice
   of K the block's rows of op(A) form MR-row micro-panels and op(B), nc
   columns at a time, NR-column micro-panels; one register-blocked
   micro-kernel per ISA computes each MR x NR tile of C, an A micro-panel
   staying in L1 while the B chunk's micro-panels (kept in L2) stream past.
   Packing (element (i,k) at k*MR + i, (k,j) at k*NR + j) absorbs transposes
   and strides and zero-pads ragged edges. Where it would only copy, the
   kernels read in place instead: an untransposed A (the "rows" kernels),
   and an untransposed B whose kc rows span little memory. Edge tiles are
   stored through masks. Threads each take a rectangle of C and pack their
   own operands, so they never wait on each other. */

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

/* Computes an MR x NR tile of alpha * op(A) * op(B) over kc steps and
   stores its first m rows and n columns as C = tile + beta * C (an edge
   tile has m < MR or n < NR); beta == 0 never reads C. Element (i, k) of
   op(A) is at a[i + k*as] (as == MR for a packed micro-panel); a "rows"
   kernel reads an untransposed A in place, (i, k) at a[i*as + k]. Row k of
   op(B) starts at b + k*ldb: ldb == NR when packed, or B's own stride when
   read in place. */
typedef void (*av__ukernel)(int kc, const float *a, int as, const float *b, int ldb,
                            float *c, int ldc, int m, int n, float alpha, float beta);
/* dst[k*R + r] = src[r*ld + k] for 8 source lines r and the first
   kc - kc % 8 steps k; returns that count. */
typedef int (*av__transpose8_fn)(float *dst, int R, const float *src, size_t ld, int kc);

typedef struct {
    av__ukernel kernel;
    av__ukernel kernel_rows;      /* NULL: A is always packed */
    av__transpose8_fn transpose8; /* NULL: packing transposes 4 lines at a time */
    int mr, nr; /* micro-tile shape */
    int kc;     /* K slice: an mr x kc A micro-panel fits in L1 */
    int nc;     /* B chunk: kc x nc floats stay in L2; a multiple of nr */
    int mc;     /* rows of A packed at once (L3 or memory: A is re-read
                   only once per B chunk); a multiple of mr */
} av__gemm_impl;

#define AV__MAX_TILE (8 * 32) /* largest mr * nr, for a whole tile on the stack */

/* The kernels unroll their rows with these: X(i) for each row i. */
#define AV__ROWS6(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define AV__ROWS8(X) AV__ROWS6(X) X(6) X(7)

/* ---- micro-kernels ---- */
static void av__kernel_scalar(int kc, const float *a, int as, const float *b, int ldb,
                              float *c, int ldc, int m, int n, float alpha, float beta) {
    float acc[4][8] = {{0}};
    int i, j, k;
    for (k = 0; k < kc; k++, a += as, b += ldb)
        for (i = 0; i < 4; i++)
            for (j = 0; j < 8; j++) acc[i][j] += a[i] * b[j];
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++)
            c[i * ldc + j] = alpha * acc[i][j] +
                             (beta == 0 ? 0.0f : beta * c[i * ldc + j]);
}

#ifdef AV__X86
/* Both x86 kernels share one body: MR rows of two W-float vectors of C,
   one broadcast of A per row and k; AV__V* name the ISA's vector ops. A's
   element (i, k) is at a[i*ARS + k*AKS]; constant strides fold into the
   addressing. Edge tiles store through masks. */
#define AV__KDECL(i) AV__VEC c##i##0 = AV__VZERO(), c##i##1 = c##i##0;
#define AV__KFMA(i)                                                         \
    {                                                                       \
        AV__VEC ai = AV__VSET1(a[(i) * ars + (size_t)k * aks]);             \
        c##i##0 = AV__VFMA(ai, b0, c##i##0);                                \
        c##i##1 = AV__VFMA(ai, b1, c##i##1);                                \
    }
#define AV__KSTORE(i)                                                       \
    if (i < m) {                                                            \
        float *ci = c + i * ldc;                                            \
        AV__VEC r0 = c##i##0, r1 = c##i##1;                                 \
        if (alpha != 1) r0 = AV__VMUL(va, r0), r1 = AV__VMUL(va, r1);       \
        if (n == 2 * AV__W) {                                               \
            if (beta != 0) {                                                \
                r0 = AV__VFMA(vb, AV__VLOAD(ci), r0);                       \
                r1 = AV__VFMA(vb, AV__VLOAD(ci + AV__W), r1);               \
            }                                                               \
            AV__VSTORE(ci, r0);                                             \
            AV__VSTORE(ci + AV__W, r1);                                     \
        } else {                                                            \
            if (beta != 0) {                                                \
                r0 = AV__VFMA(vb, AV__VLOADM(ci, mask0), r0);               \
                r1 = AV__VFMA(vb, AV__VLOADM(ci + AV__W, mask1), r1);       \
            }                                                               \
            AV__VSTOREM(ci, mask0, r0);                                     \
            AV__VSTOREM(ci + AV__W, mask1, r1);                             \
        }                                                                   \
    }
#define AV__KSTORE_PLAIN(i)                                                 \
    AV__VSTORE(c + i * ldc, c##i##0);                                       \
    AV__VSTORE(c + i * ldc + AV__W, c##i##1);
#define AV__KERNEL_BODY(MR, ROWS, ARS, AKS)                                 \
    const size_t ars = (ARS), aks = (AKS);                                  \
    AV__VEC va = AV__VSET1(alpha), vb = AV__VSET1(beta);                    \
    AV__VMASK mask0 = AV__VMASK_FIRST(n < AV__W ? n : AV__W);              \
    AV__VMASK mask1 = AV__VMASK_FIRST(n > AV__W ? n - AV__W : 0);          \
    int k;                                                                  \
    ROWS(AV__KDECL)                                                         \
    for (k = 0; k < kc; k++, b += ldb) {                                    \
        AV__VEC b0 = AV__VLOAD(b), b1 = AV__VLOAD(b + AV__W);               \
        ROWS(AV__KFMA)                                                      \
    }                                                                       \
    if (m == MR && n == 2 * AV__W && alpha == 1 && beta == 0) {             \
        ROWS(AV__KSTORE_PLAIN) /* the common tile, without a test per row */ \
    } else {                                                                \
        ROWS(AV__KSTORE)                                                    \
    }
/* Defines NAME (A packed, or any as) and NAME##_rows (A's rows in place). */
#define AV__KERNELS(TARGET, NAME, MR, ROWS)                                           \
    TARGET static void NAME(int kc, const float *a, int as, const float *b, int ldb,  \
                            float *c, int ldc, int m, int n, float alpha,             \
                            float beta) {                                             \
        AV__KERNEL_BODY(MR, ROWS, 1, as)                                              \
    }                                                                                 \
    TARGET static void NAME##_rows(int kc, const float *a, int as, const float *b,    \
                                   int ldb, float *c, int ldc, int m, int n,          \
                                   float alpha, float beta) {                         \
        AV__KERNEL_BODY(MR, ROWS, as, 1)                                              \
    }

/* 6 x 16: twelve ymm accumulators + two B vectors + one broadcast = 15 of
   the 16 registers. av__kernel_avx2, av__kernel_avx2_rows: */
#define AV__VEC __m256
#define AV__W 8
#define AV__VZERO() _mm256_setzero_ps()
#define AV__VSET1(x) _mm256_set1_ps(x)
#define AV__VLOAD(p) _mm256_loadu_ps(p)
#define AV__VSTORE(p, v) _mm256_storeu_ps(p, v)
#define AV__VMUL(x, y) _mm256_mul_ps(x, y)
#define AV__VFMA(x, y, z) _mm256_fmadd_ps(x, y, z)
#define AV__VMASK __m256i /* the first n lanes: */
#define AV__VMASK_FIRST(n) \
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define AV__VLOADM(p, mask) _mm256_maskload_ps(p, mask)
#define AV__VSTOREM(p, mask, v) _mm256_maskstore_ps(p, mask, v)
AV__KERNELS(AV__TARGET_AVX2, av__kernel_avx2, 6, AV__ROWS6)
#undef AV__VEC
#undef AV__W
#undef AV__VZERO
#undef AV__VSET1
#undef AV__VLOAD
#undef AV__VSTORE
#undef AV__VMUL
#undef AV__VFMA
#undef AV__VMASK
#undef AV__VMASK_FIRST
#undef AV__VLOADM
#undef AV__VSTOREM

/* 8 x 32: sixteen zmm accumulators, two B vectors, one A broadcast; sixteen
   chains cover the FMA latency times two pipes. On Zen 4 (512-bit FMAs as
   two 256-bit halves) 8x32, 4x64, 12x32 and 6x64 all run at the FMA limit
   for large sizes; on Zen 5 (two full 512-bit pipes) 8x32 runs at ~98% of
   the FMA peak from K = 64 up. 8x32 wastes least on ragged edges of common
   shapes. av__kernel_avx512, av__kernel_avx512_rows: */
#define AV__VEC __m512
#define AV__W 16
#define AV__VZERO() _mm512_setzero_ps()
#define AV__VSET1(x) _mm512_set1_ps(x)
#define AV__VLOAD(p) _mm512_loadu_ps(p)
#define AV__VSTORE(p, v) _mm512_storeu_ps(p, v)
#define AV__VMUL(x, y) _mm512_mul_ps(x, y)
#define AV__VFMA(x, y, z) _mm512_fmadd_ps(x, y, z)
#define AV__VMASK __mmask16
#define AV__VMASK_FIRST(n) ((__mmask16)((1u << (n)) - 1))
#define AV__VLOADM(p, mask) _mm512_maskz_loadu_ps(mask, p)
#define AV__VSTOREM(p, mask, v) _mm512_mask_storeu_ps(p, mask, v)
AV__KERNELS(AV__TARGET_AVX512, av__kernel_avx512, 8, AV__ROWS8)
#undef AV__VEC
#undef AV__W
#undef AV__VZERO
#undef AV__VSET1
#undef AV__VLOAD
#undef AV__VSTORE
#undef AV__VMUL
#undef AV__VFMA
#undef AV__VMASK
#undef AV__VMASK_FIRST
#undef AV__VLOADM
#undef AV__VSTOREM

/* 8 x 8 transposes with AVX: two rounds of unpack/shuffle within 128-bit
   lanes, then one exchange of lanes. */
AV__TARGET_AVX2 static int av__transpose8_avx2(float *dst, int R, const float *src,
                                               size_t ld, int kc) {
    int k;
    for (k = 0; k + 8 <= kc; k += 8, dst += 8 * R) {
        const float *s = src + k;
        __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ld),
               r2 = _mm256_loadu_ps(s + 2 * ld), r3 = _mm256_loadu_ps(s + 3 * ld),
               r4 = _mm256_loadu_ps(s + 4 * ld), r5 = _mm256_loadu_ps(s + 5 * ld),
               r6 = _mm256_loadu_ps(s + 6 * ld), r7 = _mm256_loadu_ps(s + 7 * ld);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
               t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
               t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
               t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee),
               u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee),
               u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee),
               u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
        _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(dst + R, _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(dst + 2 * R, _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(dst + 3 * R, _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(dst + 4 * R, _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(dst + 5 * R, _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(dst + 6 * R, _mm256_permute2f128_ps(u2, u6, 0x31));
        _mm256_storeu_ps(dst + 7 * R, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    return k;
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
/* 8 x 12: 24 accumulators, two A and three B vectors of the 32 registers.
   An edge tile is stored through a full tile on the stack. */
static void av__kernel_neon(int kc, const float *a, int as, const float *b, int ldb,
                            float *c, int ldc, int m, int n, float alpha, float beta) {
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
    float tile[8 * 12], *cc = c;
    int k, i, j, ldcc = ldc;
    float betac = beta;
    AV__ROWS8(AV__DECL)
    for (k = 0; k < kc; k++, a += as, b += ldb) {
        float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4);
        float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4),
                    b2 = vld1q_f32(b + 8);
        AV__ROWS8(AV__FMA)
    }
    if (m < 8 || n < 12) c = tile, ldc = 12, beta = 0;
    AV__ROWS8(AV__STORE)
    if (c != tile) return;
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++)
            cc[i * ldcc + j] = tile[i * 12 + j] + (betac == 0 ? 0.0f : betac * cc[i * ldcc + j]);
#undef AV__DECL
#undef AV__FMA
#undef AV__STORE1
#undef AV__STORE
}
#endif /* AV__NEON */

/* ---- ISA selection ---- */
static const av__gemm_impl *av__impl_for(int isa) {
    static const av__gemm_impl scalar = {av__kernel_scalar, NULL, NULL, 4, 8, 256, 128, 960};
#ifdef AV__X86
    static const av__gemm_impl avx2 = {av__kernel_avx2, av__kernel_avx2_rows,
                                       av__transpose8_avx2, 6, 16, 256, 128, 1020};
    static const av__gemm_impl avx512 = {av__kernel_avx512, av__kernel_avx512_rows,
                                         av__transpose8_avx2, 8, 32, 512, 192, 1024};
    if (isa == AV_ISA_AVX2) return &avx2;
    if (isa == AV_ISA_AVX512) return &avx512;
#endif
#ifdef AV__NEON
    static const av__gemm_impl neon = {av__kernel_neon, NULL, NULL, 8, 12, 256, 240, 960};
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
        if (env && *env) {
            while (isa <= AV_ISA_NEON && strcmp(env, av_isa_name(isa))) isa++;
            if (isa > AV_ISA_NEON)
                fprintf(stderr, "attnvae: ATTNVAE_ISA=%s is not one of scalar, avx2, avx512, neon; using %s\n",
                        env, av_isa_name(av__best_isa()));
            else if (!av_isa_supported(isa))
                fprintf(stderr, "attnvae: ATTNVAE_ISA=%s is not supported by this CPU or build; using %s\n",
                        env, av_isa_name(av__best_isa()));
        }
        if (!env || !*env || isa > AV_ISA_NEON || !av_isa_supported(isa)) isa = av__best_isa();
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
#define AV__MIN(a, b) ((a) < (b) ? (a) : (b))

/* Asks for the line at p (never faults, even past the end of an array). */
#if defined(__GNUC__) || defined(__clang__)
#define AV__PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define AV__PREFETCH(p) ((void)(p))
#endif

/* dst[k*R + r] = src[k*ld + r] for r < R and k < kc, fetching the rows 8
   steps ahead: far apart in memory, they would wait on it otherwise. A
   constant R makes each row's copy a few inlined 16-byte moves: the cases
   cover every micro-tile side. */
static void av__copy_rows(float *dst, int R, const float *src, size_t ld, int kc) {
    int k;
#define AV__COPY_ROWS_OF(W)                                                 \
    case W:                                                                 \
        for (k = 0; k < kc; k++, dst += W, src += ld) {                     \
            AV__PREFETCH((uintptr_t)src + 8 * ld * sizeof(float));          \
            memcpy(dst, src, W * sizeof(float));                            \
        }                                                                   \
        return;
    switch (R) {
        AV__COPY_ROWS_OF(4) AV__COPY_ROWS_OF(6) AV__COPY_ROWS_OF(8)
        AV__COPY_ROWS_OF(12) AV__COPY_ROWS_OF(16) AV__COPY_ROWS_OF(32)
    }
#undef AV__COPY_ROWS_OF
    for (k = 0; k < kc; k++, dst += R, src += ld) memcpy(dst, src, (size_t)R * sizeof(float));
}

/* One micro-panel from rows <= R source lines: dst[k*R + r] = src[r*ld + k]
   over kc steps, zero for rows <= r < R. 8 lines at a time are transposed
   by t8 if given, 4 by SSE or NEON, the rest one by one. */
static void av__pack_lines(float *dst, int R, const float *src, size_t ld,
                           int rows, int kc, av__transpose8_fn t8) {
    int r = 0, k, i;
    for (; t8 && r + 8 <= rows; r += 8) {
        const float *s = src + r * ld;
        float *d = dst + r;
        for (k = t8(d, R, s, ld, kc); k < kc; k++)
            for (i = 0; i < 8; i++) d[(size_t)k * R + i] = s[i * ld + k];
    }
    for (; r + 4 <= rows; r += 4) { /* transpose 4 source lines */
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

/* Packs rows 0..rows-1 of op(X) over kc steps into consecutive R-row
   micro-panels: panel p holds dst[p*R*kc + k*R + r] = op(X)(p*R + r, k),
   zero past the last row. Element (r, k) is at src[k*ld + r] when runs
   along r are contiguous, else at src[r*ld + k]. */
static void av__pack(float *dst, int R, const float *src, size_t ld,
                     int along_r, int rows, int kc, av__transpose8_fn t8) {
    const size_t panel = (size_t)R * kc;
    int k, p, np = (rows + R - 1) / R;
    if (!along_r) {
        for (p = 0; p < np; p++)
            av__pack_lines(dst + p * panel, R, src + (size_t)p * R * ld, ld,
                           AV__MIN(rows - p * R, R), kc, t8);
        return;
    }
    /* All panels 8 steps at a time: each step's source is a long run of
       memory (which hardware prefetchers follow), read once. A ragged last
       panel is copied row by row and padded with zeros. */
    for (k = 0; k < kc; k += 8)
        for (p = 0; p < np; p++) {
            float *d = dst + p * panel + (size_t)k * R;
            const float *s = src + k * ld + (size_t)p * R;
            int steps = AV__MIN(kc - k, 8), n = rows - p * R, i, r;
            if (n >= R) {
                av__copy_rows(d, R, s, ld, steps);
                continue;
            }
            for (i = 0; i < steps; i++, d += R, s += ld) {
                for (r = 0; r < n; r++) d[r] = s[r];
                for (; r < R; r++) d[r] = 0;
            }
        }
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
    int direct_a, direct_b; /* full micro-panels read in place, not packed */
} av__gemm_job;

#define AV__DIRECT_B_SPAN (8 << 10) /* floats: 32 KB */
/* With at most this many rows of C, and B's rows under 4 KB apart, a span
   of up to 512 KB (measured on Zen 5: 2 KB apart, B in place was faster up
   to 128 rows; 4 KB apart, packed B was faster from 32 rows). */
#define AV__DIRECT_B_ROWS 128
#define AV__DIRECT_B_FEW_ROWS_SPAN (1 << 17)

/* Rows [i0,i1) x columns [j0,j1) of C, single-threaded, with private
   packing buffers Ap (mc x kc) and Bp (kc x nc). Micro-panels are found by
   offset (rows i at Ap + i*kc, columns j at Bp + j*kc): no divisions on the
   way to the kernels, which small products would feel. */
static void av__gemm_block(const av__gemm_job *g, int i0, int i1, int j0,
                           int j1, float *Ap, float *Bp) {
    const av__gemm_impl *im = g->im;
    const int MR = im->mr, NR = im->nr, ldc = g->ldc;
    const float alpha = g->alpha;
    int ic, pc, jc, i, j;
    for (ic = i0; ic < i1; ic += im->mc) {
        int mc = AV__MIN(i1 - ic, im->mc);
        for (pc = 0; pc < g->K; pc += im->kc) {
            int kc = AV__MIN(g->K - pc, im->kc);
            float beta = pc == 0 ? g->beta : 1.0f;
            if (!g->direct_a)
                av__pack(Ap, MR, g->transA ? g->A + pc * g->lda + ic : g->A + ic * g->lda + pc,
                         g->lda, g->transA, mc, kc, im->transpose8);
            /* Each B chunk is packed right before use so it is hot in L2;
               then each A micro-panel sits in L1 while the chunk's B
               micro-panels stream past it. */
            for (jc = j0; jc < j1; jc += im->nc) {
                int nc = AV__MIN(j1 - jc, im->nc), ldb = NR;
                const float *b = Bp; /* columns j at b + j*b_step */
                size_t b_step = kc;
                if (g->direct_b)
                    b = g->B + pc * g->ldb + jc, b_step = 1, ldb = (int)g->ldb;
                else
                    av__pack(Bp, NR, g->transB ? g->B + jc * g->ldb + pc : g->B + pc * g->ldb + jc,
                             g->ldb, !g->transB, nc, kc, im->transpose8);
                for (i = 0; i < mc; i += MR) {
                    int m = AV__MIN(mc - i, MR), as = MR;
                    const float *a = Ap + (size_t)i * kc;
                    float *c = g->C + (size_t)(ic + i) * ldc + jc;
                    av__ukernel kernel = im->kernel;
                    if (g->direct_a) { /* a ragged micro-panel is packed at its first use */
                        const float *rows = g->A + (size_t)(ic + i) * g->lda + pc;
                        if (m == MR)
                            a = rows, as = (int)g->lda, kernel = im->kernel_rows;
                        else if (jc == j0)
                            av__pack(Ap + (size_t)i * kc, MR, rows, g->lda, 0, m, kc, NULL);
                    }
                    for (j = 0; j + NR <= nc; j += NR)
                        kernel(kc, a, as, b + j * b_step, ldb, c + j, ldc, m, NR, alpha, beta);
                    if (j < nc) { /* ragged: packed, at its first use if B is read in place */
                        if (g->direct_b && i == 0)
                            av__pack(Bp + (size_t)j * kc, NR, g->B + pc * g->ldb + jc + j, g->ldb, 1,
                                     nc - j, kc, NULL);
                        kernel(kc, a, as, Bp + (size_t)j * kc, NR, c + j, ldc, m, nc - j, alpha, beta);
                    }
                }
            }
        }
    }
}

/* Packing space: one buffer per calling thread that only grows, so steady
   state makes no allocations; worker threads get slices of the caller's. */
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
    int nt = 1, ti = 1, tj = 1, mp = 0, np = 0;
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
    /* An untransposed A is read in place by the rows kernel: packing it
       would transpose. An untransposed B whose kc rows span little memory
       stays in L1 anyway; over a longer span its stripes would conflict in
       cache, and packing wins, unless C has so few rows that packing would
       cost more than it saves (an RNN step: [3.8 recurrent] relies on this
       for its W_hh^T panels). */
    g.direct_a = !transA && im->kernel_rows;
    g.direct_b = !transB && (size_t)AV__MIN(K, im->kc) * ldb <=
                                (M <= AV__DIRECT_B_ROWS && ldb < 1024 ? AV__DIRECT_B_FEW_ROWS_SPAN : AV__DIRECT_B_SPAN);
#ifdef _OPENMP
    /* Threads pay off past ~100^3 multiply-adds, and never nest. Each takes
       a ti x tj share of C and packs its own operands: no barriers, and
       packed data never crosses cores. Split to minimise what each thread
       reads of A and B, a packed operand counting twice. */
    if ((double)M * N * K >= 1e6 && !omp_in_parallel()) {
        int n = av_get_num_threads(), t;
        double best = 0, wa = g.direct_a ? 1 : 2, wb = g.direct_b ? 1 : 2;
        mp = (M + im->mr - 1) / im->mr, np = (N + im->nr - 1) / im->nr; /* micro-panels */
        for (t = 1; t <= n; t++)
            if (n % t == 0 && t <= mp && n / t <= np &&
                (!best || wa * M / t + wb * N * t / n < best))
                best = wa * M / t + wb * N * t / n, ti = t, tj = n / t;
        nt = ti * tj;
    }
#endif
    /* Per-thread buffers, each rounded to 64 bytes. */
    a_floats = (size_t)AV__MIN(M + im->mr - 1, im->mc) * AV__MIN(K, im->kc);
    b_floats = (size_t)AV__MIN(N + im->nr - 1, im->nc) * AV__MIN(K, im->kc);
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

/* ======================================================================= */
/* [2.2 vmath] vector math for the elementwise hot loops                */
/* ======================================================================= */
/* ---- vector math for the elementwise hot loops ---- */
/* After the GEMM, a VAE step spends its time in softplus and sigmoid over
   the decoder's logits and in the Adam update. Their SIMD forms use
   exp(x) = 2^n e^r (n = round(x / ln2), |r| <= ln2/2, degree-6 Taylor
   polynomial: relative error ~2e-7) and log1p(t) = 2 atanh(t / (2 + t)) as
   an odd series (exact to float rounding on [0, 1], and for tiny t). Lanes
   with |x| > 80, where e^-|x| leaves the normal range, go the scalar way. */
static float av__sigmoidf(float v) {
    /* both branches avoid overflow of expf */
    if (v >= 0) return 1.0f / (1.0f + expf(-v));
    { float e = expf(v); return e / (1.0f + e); }
}

/* Adam's update of n values. The caller computes in double and rounds once:
   c1 = 1 - b1, c2 = 1 - b2, step_size = lr / bc1, sqrt_bc2 = sqrt(bc2);
   l2 = wd for Adam (else 0), keep = 1 - lr wd for AdamW (else 1). */
typedef struct av__adam_args { float b1, c1, b2, c2, step_size, sqrt_bc2, eps, l2, keep; } av__adam_args;

static void av__adam_scalar(float *p, const float *g, float *m, float *v, int n, const av__adam_args *a) {
    int j;
    for (j = 0; j < n; j++) {
        float gj = g[j] + a->l2 * p[j];
        p[j] *= a->keep;
        m[j] = a->b1 * m[j] + a->c1 * gj;
        v[j] = a->b2 * v[j] + a->c2 * gj * gj;
        p[j] -= a->step_size * m[j] / (sqrtf(v[j]) / a->sqrt_bc2 + a->eps);
    }
}

/* softplus(x) = max(x, 0) + rest(x), rest(x) = log(1 + e^-|x|): callers add
   max(x, 0) themselves so that terms like max(x, 0) - x t cancel exactly. */
static void av__softplus_rest_scalar(const float *x, float *y, int n) {
    int i;
    for (i = 0; i < n; i++) y[i] = log1pf(expf(-fabsf(x[i])));
}

static void av__sigmoid_scalar(const float *x, float *y, int n) {
    int i;
    for (i = 0; i < n; i++) y[i] = av__sigmoidf(x[i]);
}

static void av__relu_scalar(const float *x, float *y, int n) {
    int i;
    for (i = 0; i < n; i++) y[i] = x[i] > 0 || x[i] != x[i] ? x[i] : 0.0f;
}

static void av__relu_grad_scalar(const float *x, const float *g, float *gx, int n) {
    int i;
    for (i = 0; i < n; i++) gx[i] += x[i] > 0 ? g[i] : 0.0f;
}

static int av__nonfinite_scalar(const float *x, int n) {
    int i;
    for (i = 0; i < n; i++)
        if (!isfinite(x[i])) return 1;
    return 0;
}

#if defined(AV__X86) || defined(AV__NEON)
/* One body for every width: V is the vector type, P the intrinsic prefix
   (NEON's intrinsics go by x86's names through the av__neon_ shims below). */
/* Runs BLOCK (W values from x + i_ into y + i_) over n values; the tail goes
   through zero-padded copies in_/out_ with TAIL_BLOCK, so a value gets the
   same result wherever it sits in the array. */
#define AV__VBLOCKS(W, n, BLOCK, TAIL_BLOCK)                                     \
    int i_;                                                                      \
    for (i_ = 0; i_ + W <= n; i_ += W) BLOCK;                                    \
    if (i_ < n) {                                                                \
        float in_[W] = {0}, out_[W];                                             \
        memcpy(in_, x + i_, (size_t)(n - i_) * sizeof(float));                   \
        TAIL_BLOCK;                                                              \
        memcpy(y + i_, out_, (size_t)(n - i_) * sizeof(float));                  \
    }

/* AV__VMATH defines, for vector width W (8: AVX2, 16: AVX-512, 4: NEON):
   av__exp_neg_W av__log1p_unit_W av__softplus_rest_block_W av__sigmoid_block_W
   av__softplus_rest_W av__sigmoid_W av__adam_block_W av__adam_W av__relu_W
   av__relu_grad_W av__nonfinite_W */
#define AV__VMATH(TARGET, V, P, W, ROUND, SQRT, MAX, EXP2N, ANY, BLEND_NEG, ADD_WHERE_POS)                                 \
    TARGET static V av__exp_neg_##W(V x) { /* e^x for x in [-80, 0] */                     \
        V n = ROUND(P##_mul_ps(x, P##_set1_ps(1.44269504f)),                                \
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);                 \
        V r = P##_fnmadd_ps(n, P##_set1_ps(0.693359375f), x), q;                            \
        r = P##_fnmadd_ps(n, P##_set1_ps(-2.12194440e-4f), r);                              \
        q = P##_fmadd_ps(P##_set1_ps(1.0f / 720), r, P##_set1_ps(1.0f / 120));               \
        q = P##_fmadd_ps(q, r, P##_set1_ps(1.0f / 24));                                     \
        q = P##_fmadd_ps(q, r, P##_set1_ps(1.0f / 6));                                      \
        q = P##_fmadd_ps(q, r, P##_set1_ps(0.5f));                                          \
        q = P##_fmadd_ps(q, r, P##_set1_ps(1.0f));                                          \
        q = P##_fmadd_ps(q, r, P##_set1_ps(1.0f));                                          \
        return EXP2N(q, n);                                                                  \
    }                                                                                        \
    TARGET static V av__log1p_unit_##W(V t) { /* log(1 + t), t in [0, 1] */                \
        V s = P##_div_ps(t, P##_add_ps(P##_set1_ps(2.0f), t)), s2 = P##_mul_ps(s, s), q;     \
        q = P##_fmadd_ps(s2, P##_set1_ps(1.0f / 13), P##_set1_ps(1.0f / 11));                \
        q = P##_fmadd_ps(q, s2, P##_set1_ps(1.0f / 9));                                     \
        q = P##_fmadd_ps(q, s2, P##_set1_ps(1.0f / 7));                                     \
        q = P##_fmadd_ps(q, s2, P##_set1_ps(1.0f / 5));                                     \
        q = P##_fmadd_ps(q, s2, P##_set1_ps(1.0f / 3));                                     \
        q = P##_mul_ps(q, s2);                                                               \
        s = P##_add_ps(s, s);                                                                \
        return P##_fmadd_ps(s, q, s);                                                        \
    }                                                                                        \
    /* W values at a time; lanes with |x| > 80 are redone by the scalar code */              \
    TARGET static void av__softplus_rest_block_##W(const float *x, float *y) {              \
        V a = P##_andnot_ps(P##_set1_ps(-0.0f), P##_loadu_ps(x));                            \
        int k;                                                                               \
        P##_storeu_ps(y, av__log1p_unit_##W(av__exp_neg_##W(P##_sub_ps(P##_setzero_ps(), a)))); \
        if (ANY(a, P##_set1_ps(80.0f), _CMP_GT_OQ))                                          \
            for (k = 0; k < W; k++)                                                          \
                if (fabsf(x[k]) > 80.0f) av__softplus_rest_scalar(x + k, y + k, 1);          \
    }                                                                                        \
    TARGET static void av__sigmoid_block_##W(const float *x, float *y) {                    \
        V v = P##_loadu_ps(x), a = P##_andnot_ps(P##_set1_ps(-0.0f), v), t, s;               \
        int k;                                                                               \
        t = av__exp_neg_##W(P##_sub_ps(P##_setzero_ps(), a));                                \
        s = P##_div_ps(P##_set1_ps(1.0f), P##_add_ps(P##_set1_ps(1.0f), t));                 \
        P##_storeu_ps(y, BLEND_NEG(v, s, P##_mul_ps(t, s))); /* x < 0: e^x/(1+e^x) */        \
        if (ANY(a, P##_set1_ps(80.0f), _CMP_GT_OQ))                                          \
            for (k = 0; k < W; k++)                                                          \
                if (fabsf(x[k]) > 80.0f) av__sigmoid_scalar(x + k, y + k, 1);                \
    }                                                                                        \
    TARGET static void av__softplus_rest_##W(const float *x, float *y, int n) {             \
        AV__VBLOCKS(W, n, av__softplus_rest_block_##W(x + i_, y + i_), av__softplus_rest_block_##W(in_, out_)) \
    }                                                                                        \
    TARGET static void av__sigmoid_##W(const float *x, float *y, int n) {                   \
        AV__VBLOCKS(W, n, av__sigmoid_block_##W(x + i_, y + i_), av__sigmoid_block_##W(in_, out_)) \
    }                                                                                        \
    TARGET static void av__adam_block_##W(float *p, const float *g, float *m, float *v,     \
                                         const av__adam_args *a) {                           \
        V pj = P##_loadu_ps(p), gj = P##_fmadd_ps(P##_set1_ps(a->l2), pj, P##_loadu_ps(g));   \
        V mj = P##_fmadd_ps(P##_set1_ps(a->b1), P##_loadu_ps(m), P##_mul_ps(P##_set1_ps(a->c1), gj)); \
        V vj = P##_fmadd_ps(P##_set1_ps(a->b2), P##_loadu_ps(v),                             \
                            P##_mul_ps(P##_mul_ps(P##_set1_ps(a->c2), gj), gj));             \
        V den = P##_add_ps(P##_div_ps(SQRT(vj), P##_set1_ps(a->sqrt_bc2)), P##_set1_ps(a->eps)); \
        pj = P##_mul_ps(pj, P##_set1_ps(a->keep));                                           \
        P##_storeu_ps(p, P##_sub_ps(pj, P##_div_ps(P##_mul_ps(P##_set1_ps(a->step_size), mj), den))); \
        P##_storeu_ps(m, mj);                                                                \
        P##_storeu_ps(v, vj);                                                                \
    }                                                                                        \
    TARGET static void av__adam_##W(float *p, const float *g, float *m, float *v, int n,     \
                                   const av__adam_args *a) {                                 \
        int i_;                                                                              \
        for (i_ = 0; i_ + W <= n; i_ += W) av__adam_block_##W(p + i_, g + i_, m + i_, v + i_, a); \
        if (i_ < n) { /* the tail through zero-padded copies, like the other values */      \
            float tp[W] = {0}, tg[W] = {0}, tm[W] = {0}, tv[W] = {0};                        \
            size_t bytes = (size_t)(n - i_) * sizeof(float);                                 \
            memcpy(tp, p + i_, bytes); memcpy(tg, g + i_, bytes);                            \
            memcpy(tm, m + i_, bytes); memcpy(tv, v + i_, bytes);                            \
            av__adam_block_##W(tp, tg, tm, tv, a);                                           \
            memcpy(p + i_, tp, bytes); memcpy(m + i_, tm, bytes); memcpy(v + i_, tv, bytes); \
        }                                                                                    \
    }                                                                                        \
    TARGET static void av__relu_##W(const float *x, float *y, int n) {                      \
        int i = 0; /* max(0, x) returns x when x is NaN: NaN propagates */                   \
        for (; i + W <= n; i += W) P##_storeu_ps(y + i, MAX(P##_setzero_ps(), P##_loadu_ps(x + i))); \
        av__relu_scalar(x + i, y + i, n - i);                                                \
    }                                                                                        \
    TARGET static void av__relu_grad_##W(const float *x, const float *g, float *gx, int n) { \
        int i = 0;                                                                           \
        for (; i + W <= n; i += W)                                                           \
            P##_storeu_ps(gx + i, ADD_WHERE_POS(P##_loadu_ps(gx + i), P##_loadu_ps(g + i), P##_loadu_ps(x + i))); \
        av__relu_grad_scalar(x + i, g + i, gx + i, n - i);                                   \
    }                                                                                        \
    TARGET static int av__nonfinite_##W(const float *x, int n) { /* x - x is NaN for inf, NaN */ \
        int i = 0;                                                                           \
        for (; i + W <= n; i += W) {                                                         \
            V d = P##_loadu_ps(x + i);                                                       \
            d = P##_sub_ps(d, d);                                                            \
            if (ANY(d, d, _CMP_UNORD_Q)) return 1;                                           \
        }                                                                                    \
        return av__nonfinite_scalar(x + i, n - i);                                           \
    }
#endif

#ifdef AV__X86
/* maskz forms: GCC 12 in C++ warns about the undefined source of the plain ones */
#define AV__ALL16 ((__mmask16)0xffff)
#define AV__ROUND_512(x, mode) _mm512_maskz_roundscale_ps(AV__ALL16, x, mode)
#define AV__SQRT_512(x) _mm512_maskz_sqrt_ps(AV__ALL16, x)
#define AV__MAX_512(a, b) _mm512_maskz_max_ps(AV__ALL16, a, b)
#define AV__EXP2N_512(q, n) _mm512_maskz_scalef_ps(AV__ALL16, q, n)
#define AV__ANY_512(a, b, pred) _mm512_cmp_ps_mask(a, b, pred)
#define AV__ADD_WHERE_POS_512(acc, g, x) _mm512_mask_add_ps(acc, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), acc, g)
#define AV__BLEND_NEG_512(v, pos, neg) _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), pos, neg)
AV__VMATH(AV__TARGET_AVX512, __m512, _mm512, 16, AV__ROUND_512, AV__SQRT_512, AV__MAX_512, AV__EXP2N_512, AV__ANY_512, AV__BLEND_NEG_512, AV__ADD_WHERE_POS_512)

/* 2^n by building the exponent bits: n is in [-116, 0] here */
#define AV__EXP2N_256(q, n) \
    _mm256_mul_ps(q, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)))
#define AV__ANY_256(a, b, pred) _mm256_movemask_ps(_mm256_cmp_ps(a, b, pred))
#define AV__ADD_WHERE_POS_256(acc, g, x) _mm256_add_ps(acc, _mm256_and_ps(g, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ)))
#define AV__BLEND_NEG_256(v, pos, neg) _mm256_blendv_ps(pos, neg, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ))
AV__VMATH(AV__TARGET_AVX2, __m256, _mm256, 8, _mm256_round_ps, _mm256_sqrt_ps, _mm256_max_ps, AV__EXP2N_256, AV__ANY_256, AV__BLEND_NEG_256, AV__ADD_WHERE_POS_256)
#elif defined(AV__NEON)
/* x86's intrinsics as NEON ones, on 4 floats, so that the bodies above
   compile unchanged: fmadd(a, b, c) = a b + c and fnmadd = c - a b, both
   fused as on x86; andnot(a, b) = ~a & b. */
#define av__neon_loadu_ps vld1q_f32
#define av__neon_storeu_ps vst1q_f32
#define av__neon_set1_ps vdupq_n_f32
#define av__neon_setzero_ps() vdupq_n_f32(0.0f)
#define av__neon_add_ps vaddq_f32
#define av__neon_sub_ps vsubq_f32
#define av__neon_mul_ps vmulq_f32
#define av__neon_div_ps vdivq_f32
#define av__neon_fmadd_ps(a, b, c) vfmaq_f32(c, a, b)
#define av__neon_fnmadd_ps(a, b, c) vfmsq_f32(c, a, b)
#define av__neon_andnot_ps(a, b) vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(b), vreinterpretq_u32_f32(a)))
#define AV__NEON_ROUND(x, mode) vrndnq_f32(x) /* to nearest, ties to even: x86's mode */
/* x86's max: a > b ? a : b, so that NaN and the order of the operands act as there */
#define AV__NEON_MAX(a, b) vbslq_f32(vcgtq_f32(a, b), a, b)
#define AV__NEON_EXP2N(q, n) \
    vmulq_f32(q, vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23)))
/* any lane of the comparison pred (the two x86 predicates used above) */
#define AV__NEON_ANY(a, b, pred) (vmaxvq_u32(AV__NEON_CMP##pred(a, b)) != 0)
#define AV__NEON_CMP_CMP_GT_OQ(a, b) vcgtq_f32(a, b)
#define AV__NEON_CMP_CMP_UNORD_Q(a, b) vmvnq_u32(vandq_u32(vceqq_f32(a, a), vceqq_f32(b, b)))
#define AV__NEON_ADD_WHERE_POS(acc, g, x) \
    vaddq_f32(acc, vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(g), vcgtq_f32(x, vdupq_n_f32(0.0f)))))
#define AV__NEON_BLEND_NEG(v, pos, neg) vbslq_f32(vcltq_f32(v, vdupq_n_f32(0.0f)), neg, pos)
AV__VMATH(, float32x4_t, av__neon, 4, AV__NEON_ROUND, vsqrtq_f32, AV__NEON_MAX, AV__NEON_EXP2N, AV__NEON_ANY, AV__NEON_BLEND_NEG, AV__NEON_ADD_WHERE_POS)
#endif

#ifdef AV__X86
#define AV__VDISPATCH(isa, name, ...)                                     \
    do {                                                                  \
        if (isa == AV_ISA_AVX512) av__##name##_16(__VA_ARGS__);           \
        else if (isa == AV_ISA_AVX2) av__##name##_8(__VA_ARGS__);         \
        else av__##name##_scalar(__VA_ARGS__);                            \
    } while (0)
#elif defined(AV__NEON)
#define AV__VDISPATCH(isa, name, ...)                                     \
    do {                                                                  \
        if (isa == AV_ISA_NEON) av__##name##_4(__VA_ARGS__);              \
        else av__##name##_scalar(__VA_ARGS__);                            \
    } while (0)
#else
#define AV__VDISPATCH(isa, name, ...) av__##name##_scalar(__VA_ARGS__)
#endif
/* Array entry points: chunks go to threads, each chunk to the ISA's path.
   The path is read before the threads start: its first read initialises it. */
#define AV__VLOOP(n, ...)                                                 \
    do {                                                                  \
        int i_, isa_ = av_get_isa();                                      \
        (void)isa_;                                                       \
        AV__PAR(n)                                                        \
        for (i_ = 0; i_ < (n); i_ += AV__VCHUNK) AV__VDISPATCH(isa_, __VA_ARGS__); \
    } while (0)

static void av__softplus_rest_array(const float *x, float *y, int n) {
    AV__VLOOP(n, softplus_rest, x + i_, y + i_, AV__MIN(AV__VCHUNK, n - i_));
}

static void av__sigmoid_array(const float *x, float *y, int n) {
    AV__VLOOP(n, sigmoid, x + i_, y + i_, AV__MIN(AV__VCHUNK, n - i_));
}

static void av__relu_array(const float *x, float *y, int n) {
    AV__VLOOP(n, relu, x + i_, y + i_, AV__MIN(AV__VCHUNK, n - i_));
}

static void av__relu_grad_array(const float *x, const float *g, float *gx, int n) {
    AV__VLOOP(n, relu_grad, x + i_, g + i_, gx + i_, AV__MIN(AV__VCHUNK, n - i_));
}

/* 1 if any of x[0..n) is inf or NaN */
static int av__nonfinite(const float *x, int n) {
#ifdef AV__X86
    int isa = av_get_isa();
    if (isa == AV_ISA_AVX512) return av__nonfinite_16(x, n);
    if (isa == AV_ISA_AVX2) return av__nonfinite_8(x, n);
#elif defined(AV__NEON)
    if (av_get_isa() == AV_ISA_NEON) return av__nonfinite_4(x, n);
#endif
    return av__nonfinite_scalar(x, n);
}

static void av__adam_array(float *p, const float *g, float *m, float *v, int n, const av__adam_args *a) {
    AV__VLOOP(n, adam, p + i_, g + i_, m + i_, v + i_, AV__MIN(AV__VCHUNK, n - i_), a);
}

/* ======================================================================= */
/* [2.3 attention] tiles of the tiled ("flash") attention in [3.6]         */
/* ======================================================================= */
/* The tiled attention works on blocks of the score matrix kept transposed:
   St[j][i] = score of key j for query i, so every softmax statistic (the
   running max, the sum, the log-sum-exp) is a vector over queries and the
   per-row work of the softmax becomes plain vertical SIMD, with no
   horizontal reductions. The block products run on the GEMM's
   micro-kernels over operands packed once per head. */

/* C (M x N) = alpha A B + beta C from operands in micro-panel form: A's panel
   p (rows p*MR..) starts at A + p*a_step, its element (i, k) at k*as + i (as
   is MR when packed; a larger one reads A's columns in place), or with the
   rows kernel at i*as + k (A's rows in place); B's panel q (columns q*NR..)
   starts at B + q*b_step, its row k at k*ldb (ldb is NR when packed, or a
   buffer's own stride). The kernels store edge tiles only inside M x N; A
   and B must hold whole panels. */
static void av__gemm_panels(const av__gemm_impl *im, av__ukernel kernel, int M, int N, int kc, const float *A,
                            size_t a_step, int as, const float *B, size_t b_step, int ldb, float *C, int ldc,
                            float alpha, float beta) {
    int MR = im->mr, NR = im->nr, i, j;
    for (i = 0; i < M; i += MR) {
        const float *a = A + (size_t)(i / MR) * a_step;
        int m = AV__MIN(MR, M - i);
        for (j = 0; j < N; j += NR) {
            const float *b = B + (size_t)(j / NR) * b_step;
            kernel(kc, a, as, b, ldb, C + (size_t)i * ldc + j, ldc, m, AV__MIN(NR, N - j), alpha, beta);
        }
    }
}

/* Micro-panels of height P cut from X (R x cols, row stride ld), zero-padded
   to P. By rows: panel p holds rows p*P.., element (r, k) at k*P + r for
   k < cols; panels are P*cols apart. By columns: panel p holds columns p*P..,
   element (c, k) at k*P + c for k < R; panels are P*R apart. */
static void av__panels_by_rows(float *dst, int P, const float *X, int R, int cols, size_t ld) {
    av__pack(dst, P, X, ld, 0, R, cols, av__impl_for(av_get_isa())->transpose8);
}

/* (A plain copy of P floats per k: memcpy of a constant 32 bytes is inlined,
   where a call per short run would cost more than the copy.) */
static void av__panels_by_cols(float *dst, int P, const float *X, int R, int cols, size_t ld) {
    int p, k, j;
    for (p = 0; p * P < cols; p++) {
        int n = AV__MIN(P, cols - p * P);
        for (k = 0; k < R; k++) {
            const float *s = X + (size_t)k * ld + (size_t)p * P;
            float *d = dst + ((size_t)p * R + k) * P;
            for (j = 0; j + 8 <= n; j += 8) memcpy(d + j, s + j, 8 * sizeof(float));
            for (; j < n; j++) d[j] = s[j];
            for (; j < P; j++) d[j] = 0.0f;
        }
    }
}

/* Operands of av__gemm_panels that stay put for a head: A's row panel p at
   a + p*step, read by kernel with stride as; B's panel q at b + q*step,
   its row k at k*ldb. Offsets along k: A + k0*as (rows kernel: A + k0),
   B + k0*ldb. */
typedef struct av__aop { av__ukernel kernel; const float *a; size_t step; int as; } av__aop;
typedef struct av__bop { const float *b; size_t step; int ldb; } av__bop;

/* X's rows as A (i over X's R rows, k over its cols): read in place by the
   rows kernel when the panels are whole, else packed into pack. */
static av__aop av__aop_rows(const av__gemm_impl *im, const float *X, int R, int cols, size_t ld, float *pack) {
    av__aop o;
    if (im->kernel_rows && R % im->mr == 0) {
        o.kernel = im->kernel_rows, o.a = X, o.step = (size_t)im->mr * ld, o.as = (int)ld;
        return o;
    }
    av__panels_by_rows(pack, im->mr, X, R, cols, ld);
    o.kernel = im->kernel, o.a = pack, o.step = (size_t)im->mr * cols, o.as = im->mr;
    return o;
}

/* X^T as A (i over X's cols, k over its R rows): read in place when the
   panels are whole, else packed into pack. */
static av__aop av__aop_cols(const av__gemm_impl *im, const float *X, int R, int cols, size_t ld, float *pack) {
    av__aop o;
    o.kernel = im->kernel;
    if (cols % im->mr == 0) {
        o.a = X, o.step = (size_t)im->mr, o.as = (int)ld;
        return o;
    }
    av__panels_by_cols(pack, im->mr, X, R, cols, ld);
    o.a = pack, o.step = (size_t)im->mr * R, o.as = im->mr;
    return o;
}

/* X as B (k over X's R rows, columns j): read in place when the panels are
   whole, else packed into pack. */
static av__bop av__bop_rows(const av__gemm_impl *im, const float *X, int R, int cols, size_t ld, float *pack) {
    av__bop o;
    if (cols % im->nr == 0) {
        o.b = X, o.step = (size_t)im->nr, o.ldb = (int)ld;
        return o;
    }
    av__panels_by_cols(pack, im->nr, X, R, cols, ld);
    o.b = pack, o.step = (size_t)im->nr * R, o.ldb = im->nr;
    return o;
}

/* The softmax steps on a block St (bk rows of keys j, n columns of queries i,
   row stride ld; n is a multiple of the vector width). exp of x <= 0 is 0
   below -80 (e^-80 is below float precision next to the row's largest term).
     online:  m' = max(m, max_j St), alpha = e^(m - m'), St = e^(St - m'),
              l = l alpha + sum_j St, m = m'      (forward, block by block)
     scale:   rows of Ot (D x n) times alpha      (the output's rescaling)
   and on a block S in the plain layout (rows of queries, n keys):
     probs:   S = e^(S - lse)                     (backward's recomputation)
     dscores: dS = P (dS - delta)                 (softmax's backward)
   A column with no visible key keeps m = -inf and gets zeros, never NaN. */
static float av__expz(float x) { return x < -80.0f ? 0.0f : expf(x); }

static void av__attn_online_scalar(float *St, int ld, int bk, int n, float *m, float *l, float *alpha) {
    int i, j;
    for (i = 0; i < n; i++) {
        float mx = m[i], ms, s = 0;
        for (j = 0; j < bk; j++) mx = St[(size_t)j * ld + i] > mx ? St[(size_t)j * ld + i] : mx;
        ms = mx == -INFINITY ? 0.0f : mx;
        alpha[i] = av__expz(m[i] - ms);
        for (j = 0; j < bk; j++) {
            float p = av__expz(St[(size_t)j * ld + i] - ms);
            St[(size_t)j * ld + i] = p;
            s += p;
        }
        l[i] = l[i] * alpha[i] + s;
        m[i] = mx;
    }
}

static void av__attn_probs_rows_scalar(float *S, int ld, int rows, int n, const float *lse) {
    int i, j;
    for (i = 0; i < rows; i++) {
        float L = lse[i] == -INFINITY ? INFINITY : lse[i];
        for (j = 0; j < n; j++) S[(size_t)i * ld + j] = av__expz(S[(size_t)i * ld + j] - L);
    }
}

static void av__attn_dscores_rows_scalar(float *dS, const float *P, int ld, int rows, int n, const float *delta) {
    int i, j;
    for (i = 0; i < rows; i++)
        for (j = 0; j < n; j++) dS[(size_t)i * ld + j] = P[(size_t)i * ld + j] * (dS[(size_t)i * ld + j] - delta[i]);
}

static void av__attn_scale_scalar(float *Ot, int ld, int rows, int n, const float *alpha) {
    int i, r;
    for (r = 0; r < rows; r++)
        for (i = 0; i < n; i++) Ot[(size_t)r * ld + i] *= alpha[i];
}

#if defined(AV__X86) || defined(AV__NEON)
/* AV__ATTN_VEC defines, for vector width W (8: AVX2, 16: AVX-512, 4: NEON):
   av__attn_expz_W av__attn_online_W av__attn_scale_W av__attn_probs_rows_W
   av__attn_dscores_rows_W. MAX is the ISA's max; GE80(x) is a lane mask of x >= -80, KEEP(v, mask) keeps
   the masked lanes and zeroes the others, NOT_NEG_INF(x) is x with -inf
   lanes set to 0, NEG_INF_TO_INF(x) is x with -inf lanes set to +inf. */
#define AV__ATTN_VEC(TARGET, V, P, W, MAX, MASK_T, GE80, KEEP, NOT_NEG_INF, NEG_INF_TO_INF)                      \
    TARGET static V av__attn_expz_##W(V x) {                                                       \
        MASK_T keep = GE80(x);                                                                     \
        return KEEP(av__exp_neg_##W(MAX(x, P##_set1_ps(-80.0f))), keep);                   \
    }                                                                                              \
    TARGET static void av__attn_online_##W(float *St, int ld, int bk, int n, float *m, float *l,   \
                                           float *alpha) {                                         \
        int i, j;                                                                                  \
        for (i = 0; i < n; i += W) {                                                               \
            V mo = P##_loadu_ps(m + i), mx = mo, ms, a, s = P##_setzero_ps();                      \
            for (j = 0; j < bk; j++) mx = MAX(mx, P##_loadu_ps(St + (size_t)j * ld + i));   \
            ms = NOT_NEG_INF(mx);                                                                  \
            a = av__attn_expz_##W(P##_sub_ps(mo, ms));                                             \
            for (j = 0; j < bk; j++) {                                                             \
                float *row = St + (size_t)j * ld + i;                                              \
                V p = av__attn_expz_##W(P##_sub_ps(P##_loadu_ps(row), ms));                        \
                P##_storeu_ps(row, p);                                                             \
                s = P##_add_ps(s, p);                                                              \
            }                                                                                      \
            P##_storeu_ps(l + i, P##_add_ps(P##_mul_ps(P##_loadu_ps(l + i), a), s));               \
            P##_storeu_ps(alpha + i, a);                                                           \
            P##_storeu_ps(m + i, mx);                                                              \
        }                                                                                          \
    }                                                                                              \
    TARGET static void av__attn_probs_rows_##W(float *S, int ld, int rows, int n, const float *lse) { \
        int i, j;                                                                                  \
        for (i = 0; i < rows; i++) {                                                               \
            V L = NEG_INF_TO_INF(P##_set1_ps(lse[i]));                                             \
            float *row = S + (size_t)i * ld;                                                       \
            for (j = 0; j < n; j += W)                                                             \
                P##_storeu_ps(row + j, av__attn_expz_##W(P##_sub_ps(P##_loadu_ps(row + j), L)));   \
        }                                                                                          \
    }                                                                                              \
    TARGET static void av__attn_dscores_rows_##W(float *dS, const float *Pr, int ld, int rows, int n, \
                                                 const float *delta) {                             \
        int i, j;                                                                                  \
        for (i = 0; i < rows; i++) {                                                               \
            V d = P##_set1_ps(delta[i]);                                                           \
            for (j = 0; j < n; j += W) {                                                           \
                size_t at = (size_t)i * ld + j;                                                    \
                P##_storeu_ps(dS + at, P##_mul_ps(P##_loadu_ps(Pr + at), P##_sub_ps(P##_loadu_ps(dS + at), d))); \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    TARGET static void av__attn_scale_##W(float *Ot, int ld, int rows, int n, const float *alpha) { \
        int i, r;                                                                                  \
        for (r = 0; r < rows; r++)                                                                 \
            for (i = 0; i < n; i += W) {                                                           \
                float *o = Ot + (size_t)r * ld + i;                                                \
                P##_storeu_ps(o, P##_mul_ps(P##_loadu_ps(o), P##_loadu_ps(alpha + i)));            \
            }                                                                                      \
    }
#endif

#ifdef AV__X86
#define AV__GE80_512(x) _mm512_cmp_ps_mask(x, _mm512_set1_ps(-80.0f), _CMP_GE_OQ)
#define AV__KEEP_512(v, k) _mm512_maskz_mov_ps(k, v)
#define AV__NOT_NEG_INF_512(x) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ), x)
#define AV__NEG_INF_TO_INF_512(x) \
    _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ), _mm512_set1_ps(INFINITY))
AV__ATTN_VEC(AV__TARGET_AVX512, __m512, _mm512, 16, AV__MAX_512, __mmask16, AV__GE80_512, AV__KEEP_512, AV__NOT_NEG_INF_512,
             AV__NEG_INF_TO_INF_512)

#define AV__GE80_256(x) _mm256_cmp_ps(x, _mm256_set1_ps(-80.0f), _CMP_GE_OQ)
#define AV__KEEP_256(v, k) _mm256_and_ps(v, k)
#define AV__NOT_NEG_INF_256(x) _mm256_and_ps(x, _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ))
#define AV__NEG_INF_TO_INF_256(x) \
    _mm256_blendv_ps(x, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ))
AV__ATTN_VEC(AV__TARGET_AVX2, __m256, _mm256, 8, _mm256_max_ps, __m256, AV__GE80_256, AV__KEEP_256, AV__NOT_NEG_INF_256,
             AV__NEG_INF_TO_INF_256)
#elif defined(AV__NEON)
/* as the AVX2 forms: NOT_NEG_INF zeroes NaN lanes too (x86's _CMP_NEQ_OQ is false on NaN) */
#define AV__GE80_NEON(x) vcgeq_f32(x, vdupq_n_f32(-80.0f))
#define AV__KEEP_NEON(v, k) vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), k))
#define AV__NOT_NEG_INF_NEON(x) AV__KEEP_NEON(x, vcgtq_f32(x, vdupq_n_f32(-INFINITY)))
#define AV__NEG_INF_TO_INF_NEON(x) vbslq_f32(vceqq_f32(x, vdupq_n_f32(-INFINITY)), vdupq_n_f32(INFINITY), x)
AV__ATTN_VEC(, float32x4_t, av__neon, 4, AV__NEON_MAX, uint32x4_t, AV__GE80_NEON, AV__KEEP_NEON, AV__NOT_NEG_INF_NEON,
             AV__NEG_INF_TO_INF_NEON)
#endif

/* ======================================================================= */
/* [3 ops] forward and backward of every op, side by side               */
/* ======================================================================= */
/* ======================================================================= */
/* [3.1 shape] reshape, permute, transpose, slice, concat, embedding    */
/* ======================================================================= */
static void av__add_into(float *dst, const float *src, int n) {
    int i;
    for (i = 0; i < n; i++) dst[i] += src[i];
}

/* reshape shares the data; its gradient is the output's, element for element */
static void av__reshape_backward(av_ctx *c, av__node *n) {
    (void)c;
    av__add_into(n->in[0]->grad, n->out[0]->grad, n->out[0]->size);
}

AVDEF av_tensor *av_reshape_shape(av_ctx *c, av_tensor *x, int ndim, const int *shape_in) {
    av_tensor *t;
    int i, infer = -1, known = 1, shape[AV_MAX_DIMS];
    av__live(c, "av_reshape", x, NULL, NULL);
    if (ndim < 0 || ndim > AV_MAX_DIMS) av__fail("av_reshape: %d dimensions (at most %d)", ndim, AV_MAX_DIMS);
    for (i = 0; i < ndim; i++) {
        shape[i] = shape_in[i];
        if (shape[i] == -1 && infer < 0) infer = i;
        else if (shape[i] < 0) av__fail("av_reshape: bad size %d", shape[i]);
        else known *= shape[i];
    }
    if (infer >= 0) shape[infer] = known ? x->size / known : 0;
    t = av__tensor_header(c, ndim, shape, "av_reshape");
    if (t->size != x->size) av__fail_shapes("av_reshape", "element counts differ", x, t);
    t->data = x->data;
    av__record(c, "av_reshape", av__reshape_backward, t, 1, x);
    return t;
}

AVDEF av_tensor *av_reshape(av_ctx *c, av_tensor *x, int ndim, ...) {
    int shape[AV_MAX_DIMS];
    AV__VA_SHAPE(shape, ndim, ndim, "av_reshape");
    return av_reshape_shape(c, x, ndim, shape);
}

/* permute: out index o maps to x offset sum(o[i] * xstride[perm[i]]) */
typedef struct av__permute_args { int perm[AV_MAX_DIMS]; } av__permute_args;
AV__STATIC_ASSERT(AV_MAX_DIMS == 4, permute_loops_over_4_dims);

static void av__permute_run(const av__permute_args *a, const av_tensor *x, const av_tensor *out, int backward) {
    int d[4] = {1, 1, 1, 1}, s[4] = {0, 0, 0, 0}, xstride[AV_MAX_DIMS], i, pad = 4 - x->ndim;
    int i0, i1, i2, i3, o = 0;
    const int *perm = a->perm;
    for (i = x->ndim - 1, xstride[x->ndim ? x->ndim - 1 : 0] = 1; i > 0; i--) xstride[i - 1] = xstride[i] * x->shape[i];
    for (i = 0; i < x->ndim; i++) { d[pad + i] = out->shape[i]; s[pad + i] = xstride[perm[i]]; }
    for (i0 = 0; i0 < d[0]; i0++)
        for (i1 = 0; i1 < d[1]; i1++)
            for (i2 = 0; i2 < d[2]; i2++) {
                int base = i0 * s[0] + i1 * s[1] + i2 * s[2];
                if (backward)
                    for (i3 = 0; i3 < d[3]; i3++) x->grad[base + i3 * s[3]] += out->grad[o++];
                else
                    for (i3 = 0; i3 < d[3]; i3++) out->data[o++] = x->data[base + i3 * s[3]];
            }
}

static void av__permute_backward(av_ctx *c, av__node *n) {
    (void)c;
    av__permute_run((const av__permute_args *)n->args, n->in[0], n->out[0], 1);
}

AVDEF av_tensor *av_permute(av_ctx *c, av_tensor *x, const int *perm) {
    int shape[AV_MAX_DIMS], seen = 0, i;
    av__permute_args a;
    av_tensor *out;
    av__node *n;
    av__live(c, "av_permute", x, NULL, NULL);
    for (i = 0; i < x->ndim; i++) {
        if (perm[i] < 0 || perm[i] >= x->ndim || (seen & (1 << perm[i])))
            av__fail_shapes("av_permute", "not a permutation of the axes", x, NULL);
        seen |= 1 << perm[i];
        shape[i] = x->shape[perm[i]];
        a.perm[i] = perm[i];
    }
    out = av__tensor_empty(c, x->ndim, shape, "av_permute");
    av__permute_run(&a, x, out, 0);
    n = av__record(c, "av_permute", av__permute_backward, out, 1, x);
    if (n) n->args = AV__KEEP(c, a);
    return out;
}

AVDEF av_tensor *av_transpose(av_ctx *c, av_tensor *x, int axis0, int axis1) {
    int perm[AV_MAX_DIMS], i;
    axis0 = av__axis(x, axis0, "av_transpose");
    axis1 = av__axis(x, axis1, "av_transpose");
    for (i = 0; i < x->ndim; i++) perm[i] = i;
    perm[axis0] = axis1;
    perm[axis1] = axis0;
    return av_permute(c, x, perm);
}

/* The tensor `big` seen as [outer, n_big, inner] holds `small`, seen as
   [outer, n_small, inner], at offset `at` along the middle axis. */
enum { AV__GATHER, AV__GATHER_ADD, AV__SCATTER_ADD };
static void av__blocks(float *big, int n_big, int at, float *small, int n_small, int outer, int inner, int how) {
    int o, i, len = n_small * inner;
    for (o = 0; o < outer; o++) {
        float *b = big + ((size_t)o * n_big + at) * inner, *s = small + (size_t)o * len;
        if (how == AV__GATHER) memcpy(s, b, (size_t)len * sizeof(float));
        else if (how == AV__GATHER_ADD) for (i = 0; i < len; i++) s[i] += b[i];
        else for (i = 0; i < len; i++) b[i] += s[i];
    }
}

/* x seen as [outer, n_x, inner]; the output is [outer, len, inner] from start */
typedef struct av__slice_args { int outer, n_x, inner, start, len; } av__slice_args;

static void av__slice_backward(av_ctx *c, av__node *n) {
    const av__slice_args *a = (const av__slice_args *)n->args;
    (void)c;
    av__blocks(n->in[0]->grad, a->n_x, a->start, n->out[0]->grad, a->len, a->outer, a->inner, AV__SCATTER_ADD);
}

AVDEF av_tensor *av_slice(av_ctx *c, av_tensor *x, int axis, int start, int end) {
    int shape[AV_MAX_DIMS], i;
    av__slice_args a;
    av_tensor *out;
    av__node *n;
    av__live(c, "av_slice", x, NULL, NULL);
    axis = av__axis(x, axis, "av_slice");
    av__split_axis(x, axis, &a.outer, &a.n_x, &a.inner);
    if (start < 0) start += a.n_x;
    if (end < 0) end += a.n_x;
    if (start < 0 || end > a.n_x || start > end) {
        char s[64];
        av__fail("av_slice: range [%d, %d) outside axis %d of shape %s", start, end, axis, av__shape_str(x, s, sizeof s));
    }
    a.start = start;
    a.len = end - start;
    for (i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[axis] = a.len;
    if (a.outer == 1) { /* one contiguous block: a view, as reshape is */
        out = av__tensor_header(c, x->ndim, shape, "av_slice");
        out->data = x->data + (size_t)a.start * a.inner;
    } else {
        out = av__tensor_empty(c, x->ndim, shape, "av_slice");
        av__blocks(x->data, a.n_x, a.start, out->data, a.len, a.outer, a.inner, AV__GATHER);
    }
    n = av__record(c, "av_slice", av__slice_backward, out, 1, x);
    if (n) n->args = AV__KEEP(c, a);
    return out;
}

typedef struct av__concat_args { int axis; } av__concat_args;

static void av__concat_backward(av_ctx *c, av__node *n) {
    int k, at = 0, axis = ((const av__concat_args *)n->args)->axis, outer, n_out, inner;
    (void)c;
    av__split_axis(n->out[0], axis, &outer, &n_out, &inner);
    for (k = 0; k < n->n_in; k++) {
        int len = n->in[k]->shape[axis];
        if (n->in[k]->requires_grad)
            av__blocks(n->out[0]->grad, n_out, at, n->in[k]->grad, len, outer, inner, AV__GATHER_ADD);
        at += len;
    }
}

AVDEF av_tensor *av_concat(av_ctx *c, av_tensor *const *xs, int n_xs, int axis) {
    int k, i, shape[AV_MAX_DIMS], at = 0, outer, n_out, inner;
    av__concat_args a;
    av_tensor *out;
    av__node *n;
    if (n_xs < 1) av__fail("av_concat: no tensors");
    for (k = 0; k < n_xs; k++) av__check_live(c, xs[k], "av_concat", k);
    axis = av__axis(xs[0], axis, "av_concat");
    for (i = 0; i < xs[0]->ndim; i++) shape[i] = xs[0]->shape[i];
    shape[axis] = 0;
    for (k = 0; k < n_xs; k++) {
        if (xs[k]->ndim != xs[0]->ndim) av__fail_shapes("av_concat", "ranks differ", xs[0], xs[k]);
        for (i = 0; i < xs[0]->ndim; i++)
            if (i != axis && xs[k]->shape[i] != xs[0]->shape[i]) av__fail_shapes("av_concat", "sizes differ off the axis", xs[0], xs[k]);
        shape[axis] += xs[k]->shape[axis];
    }
    out = av__tensor_empty(c, xs[0]->ndim, shape, "av_concat");
    av__split_axis(out, axis, &outer, &n_out, &inner);
    memset(out->data, 0, (size_t)out->size * sizeof(float));
    for (k = 0; k < n_xs; k++) {
        av__blocks(out->data, n_out, at, xs[k]->data, xs[k]->shape[axis], outer, inner, AV__SCATTER_ADD);
        at += xs[k]->shape[axis];
    }
    a.axis = axis;
    n = av__record_n(c, "av_concat", av__concat_backward, &out, 1, xs, n_xs);
    if (n) n->args = AV__KEEP(c, a);
    return out;
}

/* Row i of the gradient adds into row ids[i] of the table's. Ids repeat, so
   threads own blocks of AV__COLS columns and add all rows in order: no
   races, and the sums of the one-thread order. */
static void av__embedding_backward(av_ctx *c, av__node *n) {
    int D = n->in[0]->shape[1], count = n->out[0]->shape[0], blk;
    const int *ids = (const int *)n->saved;
    (void)c;
    AV__PAR((long)count * D)
    for (blk = 0; blk < (D + AV__COLS - 1) / AV__COLS; blk++) {
        int j0 = blk * AV__COLS, j1 = AV__MIN(j0 + AV__COLS, D), i, j;
        for (i = 0; i < count; i++) {
            float *dst = n->in[0]->grad + (size_t)ids[i] * D;
            const float *src = n->out[0]->grad + (size_t)i * D;
            for (j = j0; j < j1; j++) dst[j] += src[j];
        }
    }
}

AVDEF av_tensor *av_embedding(av_ctx *c, av_tensor *table, const int *ids, int count) {
    int shape[2], D, i, *saved;
    av_tensor *out;
    av__node *n;
    av__live(c, "av_embedding", table, NULL, NULL);
    if (table->ndim != 2) av__fail_shapes("av_embedding", "table must be [vocab, dim]", table, NULL);
    D = table->shape[1];
    shape[0] = count;
    shape[1] = D;
    out = av__tensor_empty(c, 2, shape, "av_embedding");
    saved = (int *)av__arena_alloc(&c->arena, (size_t)(count ? count : 1) * sizeof(int));
    for (i = 0; i < count; i++) {
        if (ids[i] < 0 || ids[i] >= table->shape[0])
            av__fail("av_embedding: id %d at position %d outside the table's %d rows", ids[i], i, table->shape[0]);
        saved[i] = ids[i];
        memcpy(out->data + (size_t)i * D, table->data + (size_t)ids[i] * D, (size_t)D * sizeof(float));
    }
    n = av__record(c, "av_embedding", av__embedding_backward, out, 1, table);
    if (n) n->saved = saved;
    return out;
}

/* ======================================================================= */
/* [3.2 elementwise] unary, binary with broadcasting, dropout           */
/* ======================================================================= */
static float av__geluf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678f)); }
static float av__gelu_grad(float v) {
    return 0.5f * (1.0f + erff(v * 0.70710678f)) + v * 0.39894228f * expf(-0.5f * v * v);
}

/* The argument of a unary op (scale's factor, leaky_relu's slope). */
typedef struct av__unary_args { float a; } av__unary_args;

/* Defines op NAME with forward FWD (of input v and argument a) and its
   derivative DER (of v, output y and a), side by side: the functions
   av__NAME and av__NAME_backward. */
#define AV__UNARY(NAME, FWD, DER)                                            \
    static void av__##NAME##_backward(av_ctx *c, av__node *n) {              \
        const float *x_ = n->in[0]->data, *y_ = n->out[0]->data, *g_ = n->out[0]->grad; \
        float *gx_ = n->in[0]->grad, a = ((const av__unary_args *)n->args)->a; \
        int i_;                                                              \
        (void)c; (void)a; (void)y_;                                          \
        AV__PAR(n->out[0]->size)                                        \
        for (i_ = 0; i_ < n->out[0]->size; i_++) {                              \
            float v = x_[i_], y = y_[i_];                                    \
            (void)v; (void)y;                                                \
            gx_[i_] += g_[i_] * (DER);                                       \
        }                                                                    \
    }                                                                        \
    static av_tensor *av__##NAME(av_ctx *c, av_tensor *x, float a) {         \
        av_tensor *out;                                                      \
        av__unary_args args_;                                                \
        av__node *n_;                                                        \
        int i_;                                                              \
        av__live(c, "av_" #NAME, x, NULL, NULL);                             \
        out = av__like(c, x, "av_" #NAME);                                   \
        args_.a = a;                                                         \
        AV__PAR(x->size)                                             \
        for (i_ = 0; i_ < x->size; i_++) {                                   \
            float v = x->data[i_];                                           \
            out->data[i_] = (FWD);                                           \
        }                                                                    \
        n_ = av__record(c, "av_" #NAME, av__##NAME##_backward, out, 1, x);       \
        if (n_) n_->args = AV__KEEP(c, args_);                               \
        return out;                                                          \
    }

AV__UNARY(scale, v * a, a)
AV__UNARY(add_scalar, v + a, 1.0f)
AV__UNARY(exp, expf(v), y)
AV__UNARY(log, logf(v), 1.0f / v)
AV__UNARY(sqrt, sqrtf(v), 0.5f / y)
AV__UNARY(square, v * v, 2.0f * v)
AV__UNARY(tanh, tanhf(v), 1.0f - y * y)
AV__UNARY(leaky_relu, v > 0 ? v : a * v, v > 0 ? 1.0f : a)
AV__UNARY(gelu, av__geluf(v), av__gelu_grad(v))

AVDEF av_tensor *av_scale(av_ctx *c, av_tensor *x, float s) { return av__scale(c, x, s); }
AVDEF av_tensor *av_add_scalar(av_ctx *c, av_tensor *x, float s) { return av__add_scalar(c, x, s); }
AVDEF av_tensor *av_exp(av_ctx *c, av_tensor *x) { return av__exp(c, x, 0); }
AVDEF av_tensor *av_log(av_ctx *c, av_tensor *x) { return av__log(c, x, 0); }
AVDEF av_tensor *av_sqrt(av_ctx *c, av_tensor *x) { return av__sqrt(c, x, 0); }
AVDEF av_tensor *av_square(av_ctx *c, av_tensor *x) { return av__square(c, x, 0); }
AVDEF av_tensor *av_tanh(av_ctx *c, av_tensor *x) { return av__tanh(c, x, 0); }
/* sigmoid and softplus use the vector math: dsigmoid = y (1 - y), dsoftplus = sigmoid(x) */
static void av__sigmoid_backward(av_ctx *c, av__node *n) {
    const float *y = n->out[0]->data, *g = n->out[0]->grad;
    int i;
    (void)c;
    AV__PAR(n->out[0]->size)
    for (i = 0; i < n->out[0]->size; i++) n->in[0]->grad[i] += g[i] * y[i] * (1.0f - y[i]);
}

AVDEF av_tensor *av_sigmoid(av_ctx *c, av_tensor *x) {
    av_tensor *out;
    av__live(c, "av_sigmoid", x, NULL, NULL);
    out = av__like(c, x, "av_sigmoid");
    av__sigmoid_array(x->data, out->data, x->size);
    av__record(c, "av_sigmoid", av__sigmoid_backward, out, 1, x);
    return out;
}

static void av__softplus_backward(av_ctx *c, av__node *n) {
    float *sig = (float *)av__arena_alloc(&c->arena, (size_t)n->out[0]->size * sizeof(float));
    int i;
    av__sigmoid_array(n->in[0]->data, sig, n->out[0]->size);
    AV__PAR(n->out[0]->size)
    for (i = 0; i < n->out[0]->size; i++) n->in[0]->grad[i] += n->out[0]->grad[i] * sig[i];
}

AVDEF av_tensor *av_softplus(av_ctx *c, av_tensor *x) {
    av_tensor *out;
    int i;
    av__live(c, "av_softplus", x, NULL, NULL);
    out = av__like(c, x, "av_softplus");
    av__softplus_rest_array(x->data, out->data, x->size);
    AV__PAR(x->size)
    for (i = 0; i < x->size; i++) out->data[i] += x->data[i] > 0 ? x->data[i] : 0.0f;
    av__record(c, "av_softplus", av__softplus_backward, out, 1, x);
    return out;
}

/* relu: vectorised, since half of a layer's inputs are negative and branches mispredict */
static void av__relu_backward(av_ctx *c, av__node *n) {
    (void)c;
    av__relu_grad_array(n->in[0]->data, n->out[0]->grad, n->in[0]->grad, n->out[0]->size);
}

AVDEF av_tensor *av_relu(av_ctx *c, av_tensor *x) {
    av_tensor *out;
    av__live(c, "av_relu", x, NULL, NULL);
    out = av__like(c, x, "av_relu");
    av__relu_array(x->data, out->data, x->size);
    av__record(c, "av_relu", av__relu_backward, out, 1, x);
    return out;
}
AVDEF av_tensor *av_leaky_relu(av_ctx *c, av_tensor *x, float slope) { return av__leaky_relu(c, x, slope); }
AVDEF av_tensor *av_gelu(av_ctx *c, av_tensor *x) { return av__gelu(c, x, 0); }

enum { AV__ADD, AV__SUB, AV__MUL, AV__DIV };

/* Both operands right-aligned to 4-D; a stride of 0 repeats an element. */
AV__STATIC_ASSERT(AV_MAX_DIMS == 4, broadcasting_works_in_4_dims);
typedef struct av__bcast { int d[4], sa[4], sb[4]; } av__bcast;

static void av__strides4(const av_tensor *t, const int *out_d, int *s) {
    int i, stride = 1, pad = 4 - t->ndim;
    for (i = 3; i >= 0; i--) {
        int size = i >= pad ? t->shape[i - pad] : 1;
        s[i] = (size == 1 && out_d[i] != 1) ? 0 : stride;
        stride *= size;
    }
}

static av__bcast av__bcast_plan(const char *op, const av_tensor *a, const av_tensor *b, int *shape, int *ndim) {
    av__bcast p;
    int i, pa = 4 - a->ndim, pb = 4 - b->ndim;
    *ndim = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (i = 0; i < 4; i++) {
        int da = i >= pa ? a->shape[i - pa] : 1, db = i >= pb ? b->shape[i - pb] : 1;
        if (da != db && da != 1 && db != 1) av__fail_shapes(op, "cannot broadcast", a, b);
        p.d[i] = da == 1 ? db : da;
    }
    for (i = 0; i < *ndim; i++) shape[i] = p.d[4 - *ndim + i];
    if (av_same_shape(a, b)) { /* one flat row */
        p.d[0] = p.d[1] = p.d[2] = 1;
        p.d[3] = a->size;
        p.sa[0] = p.sa[1] = p.sa[2] = p.sb[0] = p.sb[1] = p.sb[2] = 0;
        p.sa[3] = p.sb[3] = 1;
        return p;
    }
    av__strides4(a, p.d, p.sa);
    av__strides4(b, p.d, p.sb);
    return p;
}

/* One row of n outputs: y = a op b. */
static void av__binary_row(int op, int n, const float *a, int sa, const float *b, int sb, float *y) {
    int j;
    switch (op) {
    case AV__ADD: for (j = 0; j < n; j++) y[j] = a[j * sa] + b[j * sb]; break;
    case AV__SUB: for (j = 0; j < n; j++) y[j] = a[j * sa] - b[j * sb]; break;
    case AV__MUL: for (j = 0; j < n; j++) y[j] = a[j * sa] * b[j * sb]; break;
    default:      for (j = 0; j < n; j++) y[j] = a[j * sa] / b[j * sb]; break;
    }
}

/* One row of the gradient of operand wrt (0: a, 1: b), added into gx[0..n):
   d(a+b) = (1, 1); d(a-b) = (1, -1); d(ab) = (b, a); d(a/b) = (1/b, -y/b) */
static void av__binary_grad_row(int op, int wrt, int n, const float *a, int sa, const float *b, int sb,
                                const float *y, const float *g, float *gx) {
    int j;
    switch (2 * op + wrt) {
    case 2 * AV__SUB + 1: for (j = 0; j < n; j++) gx[j] -= g[j]; break;
    case 2 * AV__MUL:     for (j = 0; j < n; j++) gx[j] += g[j] * b[j * sb]; break;
    case 2 * AV__MUL + 1: for (j = 0; j < n; j++) gx[j] += g[j] * a[j * sa]; break;
    case 2 * AV__DIV:     for (j = 0; j < n; j++) gx[j] += g[j] / b[j * sb]; break;
    case 2 * AV__DIV + 1: for (j = 0; j < n; j++) gx[j] -= g[j] * y[j] / b[j * sb]; break;
    default:              for (j = 0; j < n; j++) gx[j] += g[j]; break; /* add, and a of sub */
    }
}

/* Offset of row r (of d[0] d[1] d[2] rows of d[3]) in an operand of strides s. */
static size_t av__row_at(const av__bcast *p, const int *s, int r) {
    return (size_t)(r / p->d[2] / p->d[1]) * s[0] + (size_t)(r / p->d[2] % p->d[1]) * s[1] + (size_t)(r % p->d[2]) * s[2];
}

/* Values j0 .. j0 + len of output row r: y = a op b when gx is NULL, else
   the gradient of operand wrt added into gx[0..len). */
static void av__binary_piece(const av__bcast *p, int op, const av_tensor *a, const av_tensor *b, const av_tensor *y,
                             int r, int j0, int len, int wrt, float *gx) {
    const float *pa = a->data + av__row_at(p, p->sa, r) + (size_t)j0 * p->sa[3];
    const float *pb = b->data + av__row_at(p, p->sb, r) + (size_t)j0 * p->sb[3];
    size_t at = (size_t)r * p->d[3] + j0;
    if (gx) av__binary_grad_row(op, wrt, len, pa, p->sa[3], pb, p->sb[3], y->data + at, y->grad + at, gx);
    else av__binary_row(op, len, pa, p->sa[3], pb, p->sb[3], y->data + at);
}

/* Forward, or the gradient of an operand the size of y: threads take pieces
   of AV__VCHUNK values of a row. */
static void av__binary_pieces(const av__bcast *p, int op, const av_tensor *a, const av_tensor *b, const av_tensor *y,
                              int wrt, float *gx) {
    int rows = p->d[0] * p->d[1] * p->d[2], n = p->d[3], pieces = (n + AV__VCHUNK - 1) / AV__VCHUNK, it;
    AV__PAR((long)rows * n)
    for (it = 0; it < rows * pieces; it++) {
        int r = it / pieces, j0 = it % pieces * AV__VCHUNK;
        av__binary_piece(p, op, a, b, y, r, j0, AV__MIN(AV__VCHUNK, n - j0), wrt, gx ? gx + (size_t)r * n + j0 : NULL);
    }
}

/* The gradient gx of a broadcast operand sums over the rows and columns it
   repeats along, without races and in an order fixed by the shapes:
   - repeated over rows only: threads own blocks of columns (AV__COLS or a
     multiple, at most 16 blocks) and add the rows in order (the one-thread
     order);
   - repeated along rows: each row's sum in double, then the sums added
     in row order. */
static void av__binary_grad_broadcast(av_ctx *c, const av__bcast *p, int op, int wrt, const av_tensor *a,
                                      const av_tensor *b, const av_tensor *y, float *gx) {
    int rows = p->d[0] * p->d[1] * p->d[2], n = p->d[3], r, blk;
    const int *s = wrt ? p->sb : p->sa;
    if (s[3] != 0) {
        int cols = AV__COLS * ((n + 16 * AV__COLS - 1) / (16 * AV__COLS));
        AV__PAR((long)rows * n)
        for (blk = 0; blk < (n + cols - 1) / cols; blk++) {
            int j0 = blk * cols, row;
            for (row = 0; row < rows; row++)
                av__binary_piece(p, op, a, b, y, row, j0, AV__MIN(cols, n - j0), wrt, gx + av__row_at(p, s, row) + j0);
        }
    } else {
        double *sums = (double *)av__arena_alloc(&c->arena, (size_t)rows * sizeof(double));
        AV__PAR((long)rows * n)
        for (r = 0; r < rows; r++) {
            float part[AV__VCHUNK];
            double acc = 0;
            int j0, j;
            for (j0 = 0; j0 < n; j0 += AV__VCHUNK) {
                int len = AV__MIN(AV__VCHUNK, n - j0);
                memset(part, 0, (size_t)len * sizeof(float));
                av__binary_piece(p, op, a, b, y, r, j0, len, wrt, part);
                for (j = 0; j < len; j++) acc += part[j];
            }
            sums[r] = acc;
        }
        for (r = 0; r < rows; r++) gx[av__row_at(p, s, r)] += (float)sums[r];
    }
}

typedef struct av__binary_args { int op; av__bcast plan; } av__binary_args;

static void av__binary_backward(av_ctx *c, av__node *n) {
    const av__binary_args *a = (const av__binary_args *)n->args;
    int k;
    for (k = 0; k < 2; k++) {
        float *gx = av__in_grad(n, k);
        if (!gx) continue;
        if (n->in[k]->size == n->out[0]->size) av__binary_pieces(&a->plan, a->op, n->in[0], n->in[1], n->out[0], k, gx);
        else av__binary_grad_broadcast(c, &a->plan, a->op, k, n->in[0], n->in[1], n->out[0], gx);
    }
}

static av_tensor *av__binary(av_ctx *c, int op, av_tensor *a, av_tensor *b, const char *name) {
    int shape[AV_MAX_DIMS], ndim;
    av__binary_args args;
    av_tensor *out;
    av__node *n;
    av__live(c, name, a, b, NULL);
    args.op = op;
    args.plan = av__bcast_plan(name, a, b, shape, &ndim);
    out = av__tensor_empty(c, ndim, shape, name);
    av__binary_pieces(&args.plan, op, a, b, out, 0, NULL);
    n = av__record(c, name, av__binary_backward, out, 2, a, b);
    if (n) n->args = AV__KEEP(c, args);
    return out;
}

AVDEF av_tensor *av_add(av_ctx *c, av_tensor *a, av_tensor *b) { return av__binary(c, AV__ADD, a, b, "av_add"); }
AVDEF av_tensor *av_sub(av_ctx *c, av_tensor *a, av_tensor *b) { return av__binary(c, AV__SUB, a, b, "av_sub"); }
AVDEF av_tensor *av_mul(av_ctx *c, av_tensor *a, av_tensor *b) { return av__binary(c, AV__MUL, a, b, "av_mul"); }
AVDEF av_tensor *av_div(av_ctx *c, av_tensor *a, av_tensor *b) { return av__binary(c, AV__DIV, a, b, "av_div"); }

/* dropout: y = x m, dx = g m, with m = 1/(1-p) where draw e of the op's
   Philox stream is >= p, else 0. Backward redraws m from the stream (saved
   in the arguments) instead of keeping a mask. */
typedef struct av__dropout_args { av_philox stream; float p; } av__dropout_args;

/* dst = src m (forward), or dst += src m (backward) */
static void av__dropout_run(const av__dropout_args *a, const float *src, float *dst, int n, int backward) {
    float keep = 1.0f / (1.0f - a->p);
    int blk, nb = (n + 3) / 4;
    AV__PAR((long)n * 8) /* a draw: ~8 adds */
    for (blk = 0; blk < nb; blk++) {
        uint32_t w[4];
        int l, e;
        av_philox_block(&a->stream, (uint64_t)blk, w);
        for (l = 0, e = 4 * blk; l < 4 && e < n; l++, e++) {
            float v = src[e] * (av_u32_uniform(w[l]) >= a->p ? keep : 0.0f);
            dst[e] = backward ? dst[e] + v : v;
        }
    }
}

static void av__dropout_backward(av_ctx *c, av__node *n) {
    (void)c;
    av__dropout_run((const av__dropout_args *)n->args, n->out[0]->grad, n->in[0]->grad, n->out[0]->size, 1);
}

AVDEF av_tensor *av_dropout(av_ctx *c, av_tensor *x, float p) {
    av__dropout_args a;
    av_tensor *out;
    av__node *n;
    av__live(c, "av_dropout", x, NULL, NULL);
    if (!(p >= 0.0f && p < 1.0f)) av__fail("av_dropout: p = %g must be in [0, 1)", (double)p);
    if (!c->training || p == 0.0f) return x;
    a.stream = av_ctx_philox(c);
    a.p = p;
    out = av__like(c, x, "av_dropout");
    av__dropout_run(&a, x->data, out->data, x->size, 0);
    n = av__record(c, "av_dropout", av__dropout_backward, out, 1, x);
    if (n) n->args = AV__KEEP(c, a);
    return out;
}

/* ======================================================================= */
/* [3.3 reduce] sum, mean, max                                          */
/* ======================================================================= */
static av_tensor *av__reduced(av_ctx *c, const av_tensor *x, int axis, int keepdim, const char *op) {
    int shape[AV_MAX_DIMS], i, nd = 0;
    for (i = 0; i < x->ndim; i++) {
        if (i != axis) shape[nd++] = x->shape[i];
        else if (keepdim) shape[nd++] = 1;
    }
    return av__tensor_empty(c, nd, shape, op);
}

/* x seen as [outer, len, inner], reduced over len; scale is 1 (sum) or 1/len (mean) */
typedef struct av__reduce_args { int outer, len, inner; float scale; } av__reduce_args;

/* The reduction runs in work items (o, slice of AV__VCHUNK positions along
   the axis, block of AV__RCOLS columns), each on one thread. A sum adds in
   double, then its slices in slice order; a max keeps the first maximum,
   and NaN only when it comes first (as one scan from the start would).
   With one slice the items write out (and arg, for max) directly; with
   more, per-slice sums or indices go to scratch and are combined in order. */
#define AV__RCOLS 256
static void av__reduce_run(av_ctx *c, const float *x, const av__reduce_args *a, float *out, int *arg) {
    int outer = a->outer, len = a->len, inner = a->inner, it, j;
    int slices = len > AV__VCHUNK ? (len + AV__VCHUNK - 1) / AV__VCHUNK : 1, blocks = (inner + AV__RCOLS - 1) / AV__RCOLS;
    size_t n_out = (size_t)outer * inner, n_part = slices > 1 ? n_out * slices : 0;
    double *sums = arg ? NULL : (double *)av__arena_alloc(&c->arena, n_part * sizeof(double));
    int *firsts = arg ? (int *)av__arena_alloc(&c->arena, n_part * sizeof(int)) : NULL;
    AV__PAR((long)n_out * len)
    for (it = 0; it < outer * slices * blocks; it++) {
        int o = it / (slices * blocks), sl = it / blocks % slices, i0 = it % blocks * AV__RCOLS;
        int i1 = AV__MIN(inner, i0 + AV__RCOLS), k0 = sl * AV__VCHUNK, k1 = AV__MIN(len, k0 + AV__VCHUNK), k, i;
        const float *xo = x + (size_t)o * len * inner;
        size_t part = ((size_t)o * slices + sl) * inner, at = (size_t)o * inner;
        if (arg) {
            for (i = i0; i < i1; i++) { /* column i of the slice */
                int best = -1;
                float top = 0;
                for (k = k0; k < k1; k++) {
                    float v = xo[(size_t)k * inner + i];
                    if (best < 0 ? (k == 0 || v == v) : v > top) {
                        best = k;
                        top = v;
                    }
                }
                if (slices > 1) {
                    firsts[part + i] = best;
                } else {
                    arg[at + i] = best;
                    out[at + i] = top;
                }
            }
        } else {
            double acc[AV__RCOLS];
            for (i = i0; i < i1; i++) acc[i - i0] = 0;
            if (inner == 1)
                for (k = k0; k < k1; k++) acc[0] += xo[k];
            else
                for (k = k0; k < k1; k++)
                    for (i = i0; i < i1; i++) acc[i - i0] += xo[(size_t)k * inner + i];
            for (i = i0; i < i1; i++) {
                if (slices > 1) sums[part + i] = acc[i - i0];
                else out[at + i] = (float)(acc[i - i0] * a->scale);
            }
        }
    }
    if (slices == 1) return;
    AV__PAR((long)n_part)
    for (j = 0; j < (int)n_out; j++) {
        int o = j / inner, i = j % inner, sl;
        const float *xo = x + (size_t)o * len * inner + i;
        size_t part = (size_t)o * slices * inner + i;
        if (arg) {
            int b = firsts[part];
            for (sl = 1; sl < slices; sl++) {
                int k = firsts[part + (size_t)sl * inner];
                if (k >= 0 && xo[(size_t)k * inner] > xo[(size_t)b * inner]) b = k;
            }
            arg[j] = b;
            out[j] = xo[(size_t)b * inner];
        } else {
            double total = 0;
            for (sl = 0; sl < slices; sl++) total += sums[part + (size_t)sl * inner];
            out[j] = (float)(total * a->scale);
        }
    }
}

static void av__sum_backward(av_ctx *c, av__node *n) {
    const av__reduce_args *a = (const av__reduce_args *)n->args;
    int inner = a->inner, len = a->len, slices = (len + AV__VCHUNK - 1) / AV__VCHUNK, it;
    float s = a->scale;
    (void)c;
    AV__PAR((long)a->outer * len * inner)
    for (it = 0; it < a->outer * slices; it++) { /* positions k0 .. k1 of outer o */
        int o = it / slices, k0 = it % slices * AV__VCHUNK, k1 = AV__MIN(len, k0 + AV__VCHUNK), k, i;
        const float *g = n->out[0]->grad + (size_t)o * inner;
        float *gx = n->in[0]->grad + (size_t)o * len * inner;
        if (inner == 1) { /* a broadcast of one value: s g[0] as the general loop computes it */
            float v = s * g[0];
            for (k = k0; k < k1; k++) gx[k] += v;
        } else {
            for (k = k0; k < k1; k++)
                for (i = 0; i < inner; i++) gx[(size_t)k * inner + i] += s * g[i];
        }
    }
}

static av_tensor *av__sum_scaled(av_ctx *c, av_tensor *x, int axis, int keepdim, int mean, const char *op) {
    av__reduce_args a;
    av_tensor *out;
    av__node *n;
    av__live(c, op, x, NULL, NULL);
    axis = av__axis(x, axis, op);
    av__split_axis(x, axis, &a.outer, &a.len, &a.inner);
    a.scale = !mean ? 1.0f : a.len ? 1.0f / (float)a.len : NAN; /* the mean of nothing is NaN, as in PyTorch */
    out = av__reduced(c, x, axis, keepdim, op);
    av__reduce_run(c, x->data, &a, out->data, NULL);
    n = av__record(c, op, av__sum_backward, out, 1, x);
    if (n) n->args = AV__KEEP(c, a);
    return out;
}

AVDEF av_tensor *av_sum(av_ctx *c, av_tensor *x, int axis, int keepdim) { return av__sum_scaled(c, x, axis, keepdim, 0, "av_sum"); }
AVDEF av_tensor *av_mean(av_ctx *c, av_tensor *x, int axis, int keepdim) { return av__sum_scaled(c, x, axis, keepdim, 1, "av_mean"); }

/* max: the gradient goes to the first maximum, whose index is saved */
static void av__max_backward(av_ctx *c, av__node *n) {
    const av__reduce_args *a = (const av__reduce_args *)n->args;
    int len = a->len, inner = a->inner, j;
    const int *arg = (const int *)n->saved;
    (void)c;
    AV__PAR(n->out[0]->size)
    for (j = 0; j < n->out[0]->size; j++) /* output (o, i) = j */
        n->in[0]->grad[((size_t)(j / inner) * len + arg[j]) * inner + j % inner] += n->out[0]->grad[j];
}

AVDEF av_tensor *av_max(av_ctx *c, av_tensor *x, int axis, int keepdim) {
    av__reduce_args a;
    av_tensor *out;
    av__node *n;
    int *arg;
    av__live(c, "av_max", x, NULL, NULL);
    axis = av__axis(x, axis, "av_max");
    av__split_axis(x, axis, &a.outer, &a.len, &a.inner);
    if (a.len == 0) av__fail_shapes("av_max", "empty axis", x, NULL);
    a.scale = 1.0f;
    out = av__reduced(c, x, axis, keepdim, "av_max");
    arg = (int *)av__arena_alloc(&c->arena, (size_t)out->size * sizeof(int));
    av__reduce_run(c, x->data, &a, out->data, arg);
    n = av__record(c, "av_max", av__max_backward, out, 1, x);
    if (n) {
        n->args = AV__KEEP(c, a);
        n->saved = arg;
    }
    return out;
}

/* logsumexp: out = m + log sum_k e^(x_k - m), m the row's max, in double; the
   rows' results are saved in double. dx_k = g e^(x_k - out) (softmax); rows
   with out = -inf pass nothing (their x_k - out would be NaN). */
static void av__logsumexp_backward(av_ctx *c, av__node *n) {
    const av__reduce_args *a = (const av__reduce_args *)n->args;
    const double *lse = (const double *)n->saved;
    int outer = a->outer, len = a->len, inner = a->inner, o, k, i;
    (void)c;
    for (o = 0; o < outer; o++)
        for (i = 0; i < inner; i++) {
            size_t j = (size_t)o * inner + i;
            const float *xs = n->in[0]->data + (size_t)o * len * inner + i;
            float *gx = n->in[0]->grad + (size_t)o * len * inner + i, g = n->out[0]->grad[j];
            if (lse[j] == -INFINITY) continue;
            for (k = 0; k < len; k++) gx[(size_t)k * inner] += (float)(g * exp((double)xs[(size_t)k * inner] - lse[j]));
        }
}

AVDEF av_tensor *av_logsumexp(av_ctx *c, av_tensor *x, int axis, int keepdim) {
    int outer, len, inner, o, k, i;
    double *lse;
    av_tensor *out;
    av__node *n;
    av__live(c, "av_logsumexp", x, NULL, NULL);
    axis = av__axis(x, axis, "av_logsumexp");
    av__split_axis(x, axis, &outer, &len, &inner);
    out = av__reduced(c, x, axis, keepdim, "av_logsumexp");
    lse = (double *)av__arena_alloc(&c->arena, (size_t)out->size * sizeof(double));
    for (o = 0; o < outer; o++)
        for (i = 0; i < inner; i++) {
            const float *xs = x->data + (size_t)o * len * inner + i;
            double m = -INFINITY, sum = 0;
            for (k = 0; k < len; k++) { /* a NaN sticks in m */
                double v = xs[(size_t)k * inner];
                if (v > m || v != v) m = v;
            }
            if (isfinite(m)) {
                for (k = 0; k < len; k++) sum += exp((double)xs[(size_t)k * inner] - m);
                m += log(sum);
            }
            lse[(size_t)o * inner + i] = m; /* -inf (nothing but -inf), +inf or NaN as they are */
            out->data[(size_t)o * inner + i] = (float)m;
        }
    n = av__record(c, "av_logsumexp", av__logsumexp_backward, out, 1, x);
    if (n) {
        av__reduce_args a;
        a.outer = outer; a.len = len; a.inner = inner; a.scale = 1.0f;
        n->args = AV__KEEP(c, a);
        n->saved = lse;
    }
    return out;
}

static av_tensor *av__flat(av_ctx *c, av_tensor *x) { int n = x->size; return av_reshape_shape(c, x, 1, &n); }
AVDEF av_tensor *av_sum_all(av_ctx *c, av_tensor *x) { return av_sum(c, av__flat(c, x), 0, 0); }
AVDEF av_tensor *av_mean_all(av_ctx *c, av_tensor *x) { return av_mean(c, av__flat(c, x), 0, 0); }
AVDEF av_tensor *av_max_all(av_ctx *c, av_tensor *x) { return av_max(c, av__flat(c, x), 0, 0); }

/* ======================================================================= */
/* [3.4 matmul] batched matmul, linear                                  */
/* ======================================================================= */
/* matmul geometry, from the shapes and transposes: also the op's arguments */
typedef struct av__mm { int batch, M, N, K, shared_b, ta, tb; } av__mm;

static av__mm av__mm_plan(const av_tensor *a, const av_tensor *b, int ta, int tb) {
    av__mm g;
    int i, K2;
    if (a->ndim < 2 || b->ndim < 2) av__fail_shapes("av_matmul", "operands must be at least 2-D", a, b);
    g.ta = ta != 0; g.tb = tb != 0;
    g.M = a->shape[a->ndim - (g.ta ? 1 : 2)];
    g.K = a->shape[a->ndim - (g.ta ? 2 : 1)];
    K2 = b->shape[b->ndim - (g.tb ? 1 : 2)];
    g.N = b->shape[b->ndim - (g.tb ? 2 : 1)];
    if (g.K != K2) av__fail_shapes("av_matmul", "inner dimensions differ", a, b);
    g.shared_b = b->ndim == 2;
    if (!g.shared_b) {
        if (a->ndim != b->ndim) av__fail_shapes("av_matmul", "batch ranks differ", a, b);
        for (i = 0; i < a->ndim - 2; i++)
            if (a->shape[i] != b->shape[i]) av__fail_shapes("av_matmul", "batch sizes differ", a, b);
    }
    g.batch = 1;
    for (i = 0; i < a->ndim - 2; i++) g.batch *= a->shape[i];
    return g;
}

static void av__matmul_backward(av_ctx *c, av__node *n) {
    av__mm g = *(const av__mm *)n->args;
    const float *A = n->in[0]->data, *B = n->in[1]->data, *dC = n->out[0]->grad;
    float *dA = av__in_grad(n, 0), *dB = av__in_grad(n, 1);
    int M = g.M, N = g.N, K = g.K, lda = g.ta ? M : K, ldb = g.tb ? K : N, bi, batch = g.batch;
    size_t sa = (size_t)M * K, sb = g.shared_b ? 0 : (size_t)K * N, sc = (size_t)M * N;
    (void)c;
    if (g.shared_b && !g.ta) { M *= batch; batch = 1; } /* rows of all batches in one product */
    for (bi = 0; bi < batch; bi++) {
        const float *a = A + bi * sa, *b = B + bi * sb, *dc = dC + bi * sc;
        /* C = op(A) op(B): dop(A) = dC op(B)ᵀ, dop(B) = op(A)ᵀ dC, then undo each transpose */
        if (dA) {
            float *da = dA + bi * sa;
            if (!g.ta) av_sgemm(0, !g.tb, M, K, N, 1.0f, dc, N, b, ldb, 1.0f, da, K);
            else av_sgemm(g.tb, 1, K, M, N, 1.0f, b, ldb, dc, N, 1.0f, da, M);
        }
        if (dB) {
            float *db = dB + bi * sb;
            if (!g.tb) av_sgemm(!g.ta, 0, K, N, M, 1.0f, a, lda, dc, N, 1.0f, db, N);
            else av_sgemm(1, g.ta, N, K, M, 1.0f, dc, N, a, lda, 1.0f, db, K);
        }
    }
}

AVDEF av_tensor *av_matmul(av_ctx *c, av_tensor *a, av_tensor *b, int trans_a, int trans_b) {
    av__mm g;
    int shape[AV_MAX_DIMS], i, M, batch, bi;
    av_tensor *out;
    av__node *n;
    av__live(c, "av_matmul", a, b, NULL);
    g = av__mm_plan(a, b, trans_a, trans_b);
    M = g.M;
    batch = g.batch;
    for (i = 0; i < a->ndim - 2; i++) shape[i] = a->shape[i];
    shape[a->ndim - 2] = g.M;
    shape[a->ndim - 1] = g.N;
    out = av__tensor_empty(c, a->ndim, shape, "av_matmul");
    if (g.shared_b && !g.ta) { M *= batch; batch = 1; }
    for (bi = 0; bi < batch; bi++)
        av_sgemm(g.ta, g.tb, M, g.N, g.K, 1.0f, a->data + (size_t)bi * g.M * g.K, g.ta ? g.M : g.K,
                 b->data + (g.shared_b ? 0 : (size_t)bi * g.K * g.N), g.tb ? g.K : g.N, 0.0f,
                 out->data + (size_t)bi * g.M * g.N, g.N);
    n = av__record(c, "av_matmul", av__matmul_backward, out, 2, a, b);
    if (n) n->args = AV__KEEP(c, g);
    return out;
}

/* linear: y[R, out] = x[R, in] wᵀ + b */
/* the rows of x [..., in]: the product of its leading sizes (x may be empty) */
static int av__leading(const av_tensor *x) {
    int r = 1, i;
    for (i = 0; i + 1 < x->ndim; i++) r *= x->shape[i];
    return r;
}

static void av__linear_backward(av_ctx *c, av__node *n) {
    const av_tensor *x = n->in[0], *w = n->in[1];
    int in = w->shape[1], outn = w->shape[0], R = av__leading(x), r, j;
    const float *dy = n->out[0]->grad;
    float *dx = av__in_grad(n, 0), *dw = av__in_grad(n, 1), *db = av__in_grad(n, 2);
    (void)c;
    if (dx) av_sgemm(0, 0, R, in, outn, 1.0f, dy, outn, w->data, in, 1.0f, dx, in);
    if (dw) av_sgemm(1, 0, outn, in, R, 1.0f, dy, outn, x->data, in, 1.0f, dw, in);
    if (db)
        for (r = 0; r < R; r++)
            for (j = 0; j < outn; j++) db[j] += dy[(size_t)r * outn + j];
}

AVDEF av_tensor *av_linear(av_ctx *c, av_tensor *x, av_tensor *w, av_tensor *b) {
    int shape[AV_MAX_DIMS], in, outn, R, r, i;
    av_tensor *out;
    av__live(c, "av_linear", x, w, b);
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
        av__fail_shapes("av_linear", "x must be [..., in] and w [out, in]", x, w);
    in = w->shape[1];
    outn = w->shape[0];
    if (b && (b->ndim != 1 || b->shape[0] != outn)) av__fail_shapes("av_linear", "bias must be [out]", w, b);
    for (i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[x->ndim - 1] = outn;
    out = av__tensor_empty(c, x->ndim, shape, "av_linear");
    R = av__leading(x);
    if (b)
        for (r = 0; r < R; r++) memcpy(out->data + (size_t)r * outn, b->data, (size_t)outn * sizeof(float));
    av_sgemm(0, 1, R, outn, in, 1.0f, x->data, in, w->data, in, b ? 1.0f : 0.0f, out->data, outn);
    av__record(c, "av_linear", av__linear_backward, out, 3, x, w, b);
    return out;
}

/* ======================================================================= */
/* [3.5 norm] softmax, log-softmax, layer norm                          */
/* ======================================================================= */
static int av__rows(const av_tensor *x, int *n, const char *op) {
    if (x->ndim < 1) av__fail_shapes(op, "needs at least one axis", x, NULL);
    *n = x->shape[x->ndim - 1];
    return *n ? x->size / *n : 0;
}

/* softmax y: dx = y (g - <g, y>); log_softmax y: dx = g - e^y sum(g) */
typedef struct av__softmax_args { int log_form; } av__softmax_args;

static void av__softmax_backward(av_ctx *c, av__node *n) {
    int len, R = av__rows(n->out[0], &len, n->op), r, log_form = ((const av__softmax_args *)n->args)->log_form;
    (void)c;
    AV__PAR((long)R * len)
    for (r = 0; r < R; r++) {
        int j;
        const float *y = n->out[0]->data + (size_t)r * len, *g = n->out[0]->grad + (size_t)r * len;
        float *gx = n->in[0]->grad + (size_t)r * len;
        double acc = 0;
        if (log_form) {
            for (j = 0; j < len; j++) acc += g[j];
            for (j = 0; j < len; j++) gx[j] += g[j] - expf(y[j]) * (float)acc;
        } else {
            for (j = 0; j < len; j++) acc += (double)g[j] * y[j];
            for (j = 0; j < len; j++) gx[j] += y[j] * (g[j] - (float)acc);
        }
    }
}

/* Stable: subtract the row maximum before exponentiating. */
static av_tensor *av__softmax_any(av_ctx *c, av_tensor *x, int log_form) {
    const char *op = log_form ? "av_log_softmax" : "av_softmax";
    int len, R, r;
    av_tensor *out;
    av__node *n;
    av__live(c, op, x, NULL, NULL);
    R = av__rows(x, &len, op);
    out = av__like(c, x, op);
    AV__PAR((long)R * len)
    for (r = 0; r < R; r++) {
        int j;
        const float *xs = x->data + (size_t)r * len;
        float *y = out->data + (size_t)r * len, mx = xs[0];
        double sum = 0;
        for (j = 1; j < len; j++) mx = xs[j] > mx ? xs[j] : mx;
        for (j = 0; j < len; j++) { y[j] = expf(xs[j] - mx); sum += y[j]; }
        if (log_form) {
            float log_sum = (float)log(sum); /* x - (mx + log_sum) would round at the size of x */
            for (j = 0; j < len; j++) y[j] = (xs[j] - mx) - log_sum;
        } else {
            float inv = (float)(1.0 / sum);
            for (j = 0; j < len; j++) y[j] *= inv;
        }
    }
    n = av__record(c, op, av__softmax_backward, out, 1, x);
    if (n) {
        av__softmax_args a;
        a.log_form = log_form;
        n->args = AV__KEEP(c, a);
    }
    return out;
}

AVDEF av_tensor *av_softmax(av_ctx *c, av_tensor *x) { return av__softmax_any(c, x, 0); }
AVDEF av_tensor *av_log_softmax(av_ctx *c, av_tensor *x) { return av__softmax_any(c, x, 1); }

/* y = (x - mean) * rstd * gamma + beta; saved: mean and rstd per row.
   dx by rows; dgamma and dbeta sum over rows: threads own blocks of
   AV__COLS columns and add the rows in order, in double. */
static void av__layer_norm_backward(av_ctx *c, av__node *n) {
    int len, R = av__rows(n->out[0], &len, "av_layer_norm"), r, blk;
    const float *stats = (const float *)n->saved, *gamma = n->in[1] ? n->in[1]->data : NULL;
    const float *xs = n->in[0]->data, *gs = n->out[0]->grad;
    float *gx = av__in_grad(n, 0), *ggamma = av__in_grad(n, 1), *gbeta = av__in_grad(n, 2);
    (void)c;
    if (gx) {
        AV__PAR((long)R * len)
        for (r = 0; r < R; r++) {
            const float *x = xs + (size_t)r * len, *g = gs + (size_t)r * len;
            float mean = stats[2 * r], rstd = stats[2 * r + 1], md, mdx, *gxr = gx + (size_t)r * len;
            double sum_d = 0, sum_dx = 0;
            int j;
            for (j = 0; j < len; j++) {
                float xhat = (x[j] - mean) * rstd, d = g[j] * (gamma ? gamma[j] : 1.0f);
                sum_d += d;
                sum_dx += (double)d * xhat;
            }
            md = (float)(sum_d / len);
            mdx = (float)(sum_dx / len);
            for (j = 0; j < len; j++) {
                float xhat = (x[j] - mean) * rstd, d = g[j] * (gamma ? gamma[j] : 1.0f);
                gxr[j] += rstd * (d - md - xhat * mdx);
            }
        }
    }
    if (!ggamma && !gbeta) return;
    AV__PAR((long)R * len)
    for (blk = 0; blk < (len + AV__COLS - 1) / AV__COLS; blk++) {
        double sg[AV__COLS] = {0}, sb[AV__COLS] = {0};
        int j0 = blk * AV__COLS, j1 = AV__MIN(len, j0 + AV__COLS), row, j;
        for (row = 0; row < R; row++) {
            const float *x = xs + (size_t)row * len, *g = gs + (size_t)row * len;
            for (j = j0; j < j1; j++) {
                sg[j - j0] += (double)g[j] * ((x[j] - stats[2 * row]) * stats[2 * row + 1]);
                sb[j - j0] += g[j];
            }
        }
        for (j = j0; j < j1; j++) {
            if (ggamma) ggamma[j] += (float)sg[j - j0];
            if (gbeta) gbeta[j] += (float)sb[j - j0];
        }
    }
}

AVDEF av_tensor *av_layer_norm(av_ctx *c, av_tensor *x, av_tensor *gamma, av_tensor *beta, float eps) {
    int len, R, r;
    av_tensor *out;
    float *stats;
    av__node *n;
    av__live(c, "av_layer_norm", x, gamma, beta);
    R = av__rows(x, &len, "av_layer_norm");
    out = av__like(c, x, "av_layer_norm");
    stats = (float *)av__arena_alloc(&c->arena, (size_t)(2 * R + 1) * sizeof(float));
    if (gamma && (gamma->size != len)) av__fail_shapes("av_layer_norm", "gamma must match the last axis", x, gamma);
    if (beta && (beta->size != len)) av__fail_shapes("av_layer_norm", "beta must match the last axis", x, beta);
    AV__PAR((long)R * len)
    for (r = 0; r < R; r++) {
        int j;
        const float *xs = x->data + (size_t)r * len;
        float *y = out->data + (size_t)r * len, mean, rstd;
        double s = 0, ss = 0;
        for (j = 0; j < len; j++) s += xs[j];
        mean = (float)(s / len);
        for (j = 0; j < len; j++) ss += (double)(xs[j] - mean) * (xs[j] - mean);
        rstd = (float)(1.0 / sqrt(ss / len + eps));
        for (j = 0; j < len; j++)
            y[j] = (xs[j] - mean) * rstd * (gamma ? gamma->data[j] : 1.0f) + (beta ? beta->data[j] : 0.0f);
        stats[2 * r] = mean;
        stats[2 * r + 1] = rstd;
    }
    n = av__record(c, "av_layer_norm", av__layer_norm_backward, out, 3, x, gamma, beta);
    if (n) n->saved = stats;
    return out;
}

/* ======================================================================= */
/* [3.6 attention] scaled dot-product attention, tiled and naive           */
/* ======================================================================= */
/* Where head (b, h) of an operand lies: element (b, h, i, d) at
   off + b*sb + h*sh + i*ld + d. av_sdpa's [B, H, T, D] tensors are one case;
   the multi-head layer reads q, k and v straight out of its projections
   ([B, T, 3E], head h at column h*Dh) and a KV cache out of its buffers. */
typedef struct av__heads { size_t off, sb, sh; int ld; } av__heads;

static av__heads av__heads_of(size_t off, size_t sb, size_t sh, int ld) {
    av__heads v;
    v.off = off; v.sb = sb; v.sh = sh; v.ld = ld;
    return v;
}

/* One call's geometry: B x H heads of Tq queries and Tk keys; the mask's
   element (b, h, i, j) at b*mb + h*mh + i*mi + j*mj (0 where it broadcasts). */
typedef struct av__sdpa_geom {
    int B, H, Tq, Tk, D, Dv;
    int causal, offset;         /* query i sees keys j <= i + offset (= Tk - Tq) */
    float scale, dropout;       /* dropout is 0 outside training */
    long mb, mh, mi, mj;        /* mask strides */
    av__heads q, k, v, o;       /* o: the output, and the output's gradient */
    av_philox stream;           /* dropout: weight e of [B,H,Tq,Tk] is Philox draw e of the stream */
} av__sdpa_geom;

typedef struct av__sdpa_args { av__sdpa_geom g; } av__sdpa_args;

static const float *av__head(const float *base, const av__heads *v, int bh, int H) {
    return base + v->off + (size_t)(bh / H) * v->sb + (size_t)(bh % H) * v->sh;
}
static float *av__head_w(float *base, const av__heads *v, int bh, int H) {
    return base + v->off + (size_t)(bh / H) * v->sb + (size_t)(bh % H) * v->sh;
}

static int av__sdpa_hidden(const av__sdpa_geom *g, int i, int j) { return g->causal && j > i + g->offset; }

/* dropout of weight (bh, i, j): kept with probability 1 - p, from a
   counter-based draw, so the tiled and naive paths and forward and
   backward agree (and av_dropout of the weights, given the stream) */
static int av__sdpa_kept(const av__sdpa_geom *g, int bh, int i, int j) {
    uint64_t e = ((uint64_t)bh * (uint64_t)g->Tq + (uint64_t)i) * (uint64_t)g->Tk + (uint64_t)j;
    return av_philox_uniform(&g->stream, e) >= g->dropout;
}

/* Sizes, options and the mask's strides; the views are the caller's. */
static void av__sdpa_setup(av_ctx *c, av__sdpa_geom *g, const char *op, const av_tensor *mask, int causal,
                           float dropout, float scale) {
    int i, dims[4], mshape[4];
    long stride, *strides[4];
    if (!(dropout >= 0.0f && dropout < 1.0f)) av__fail("%s: dropout_p = %g must be in [0, 1)", op, (double)dropout);
    if (!(scale >= 0.0f) || isinf(scale)) av__fail("%s: scale = %g must be finite and >= 0", op, (double)scale);
    g->causal = causal != 0;
    g->offset = g->Tk - g->Tq;
    g->scale = scale != 0.0f ? scale : 1.0f / sqrtf((float)(g->D ? g->D : 1));
    g->dropout = c->training ? dropout : 0.0f;
    g->mb = g->mh = g->mi = g->mj = 0;
    if (g->dropout > 0.0f) g->stream = av_ctx_philox(c);
    if (!mask) return;
    /* right-aligned against [B, H, Tq, Tk] */
    dims[0] = g->B; dims[1] = g->H; dims[2] = g->Tq; dims[3] = g->Tk;
    strides[0] = &g->mb; strides[1] = &g->mh; strides[2] = &g->mi; strides[3] = &g->mj;
    if (mask->ndim > 4) av__fail_shapes(op, "the mask has more than 4 dimensions", mask, NULL);
    for (i = 0; i < 4; i++) mshape[i] = i < 4 - mask->ndim ? 1 : mask->shape[i - (4 - mask->ndim)];
    for (i = 3, stride = 1; i >= 0; i--) {
        if (mshape[i] != 1 && mshape[i] != dims[i]) {
            char s[64];
            av__fail("%s: the mask %s does not broadcast to [B, H, Tq, Tk] = [%d,%d,%d,%d]", op,
                     av__shape_str(mask, s, sizeof s), g->B, g->H, g->Tq, g->Tk);
        }
        *strides[i] = mshape[i] == 1 ? 0 : stride;
        stride *= mshape[i];
    }
}

/* av_sdpa's operands: [B, H, T, D] (or [H, T, D], [T, D]), contiguous. */
static av__sdpa_geom av__sdpa_plan(av_ctx *c, const char *op, const av_tensor *q, const av_tensor *k,
                                   const av_tensor *v, const av_tensor *mask, int causal, float dropout,
                                   float scale) {
    av__sdpa_geom g;
    int i, lead = q->ndim - 2;
    memset(&g, 0, sizeof g);
    if (q->ndim < 2 || k->ndim != q->ndim || v->ndim != q->ndim)
        av__fail_shapes(op, "q, k and v need the same rank, 2 to 4 ([B,H,T,D], [H,T,D] or [T,D])", q, k);
    for (i = 0; i < lead; i++)
        if (k->shape[i] != q->shape[i] || v->shape[i] != q->shape[i])
            av__fail_shapes(op, "q, k and v need the same leading sizes", q, k->shape[i] != q->shape[i] ? k : v);
    g.B = lead == 2 ? q->shape[0] : 1;
    g.H = lead >= 1 ? q->shape[lead - 1] : 1;
    g.Tq = q->shape[lead];
    g.D = q->shape[lead + 1];
    g.Tk = k->shape[lead];
    g.Dv = v->shape[lead + 1];
    if (k->shape[lead + 1] != g.D) av__fail_shapes(op, "q and k need the same last size", q, k);
    if (v->shape[lead] != g.Tk) av__fail_shapes(op, "k and v need the same length", k, v);
    g.q = av__heads_of(0, (size_t)g.H * g.Tq * g.D, (size_t)g.Tq * g.D, g.D);
    g.k = av__heads_of(0, (size_t)g.H * g.Tk * g.D, (size_t)g.Tk * g.D, g.D);
    g.v = av__heads_of(0, (size_t)g.H * g.Tk * g.Dv, (size_t)g.Tk * g.Dv, g.Dv);
    g.o = av__heads_of(0, (size_t)g.H * g.Tq * g.Dv, (size_t)g.Tq * g.Dv, g.Dv);
    av__sdpa_setup(c, &g, op, mask, causal, dropout, scale);
    return g;
}

/* ---- the tiled path ----------------------------------------------------
   Blocks of BQ queries by BK keys. The forward (FlashAttention-2's
   algorithm 1) keeps per query a running max m and sum l, rescales its
   output block as m grows, and saves lse = m + log l. The backward
   (algorithm 2) recomputes each block's weights from lse, and with
   delta = rowsum(dO o O) gets dS = P o (dP - delta) without any Tq x Tk
   buffer. Blocks that causality hides entirely are skipped. */
typedef struct av__flash {
    const av__gemm_impl *im;
    int isa, BQ, BK;
    const av__sdpa_geom *g;
} av__flash;

static av__flash av__flash_plan(const av__sdpa_geom *g) {
    av__flash f;
    f.isa = av_get_isa();
    f.im = av__impl_for(f.isa);
    f.BQ = 2 * f.im->nr >= 64 ? 2 * f.im->nr : 4 * f.im->nr; /* a multiple of NR: whole B panels */
    f.BK = 8 * f.im->mr;                                      /* a multiple of MR: whole A panels */
    f.g = g;
    return f;
}

static int av__round_up(int n, int m) { return (n + m - 1) / m * m; }

/* Scores of keys [j0, j0+bk) for queries [i0, i0+nq): the mask added and
   hidden or padding entries set to -inf, in St (bk x n, n >= nq). */
static void av__flash_mask(const av__flash *f, float *St, int bk, int n, int j0, int i0, int nq, const float *mb) {
    const av__sdpa_geom *g = f->g;
    int j, i;
    for (j = 0; j < bk; j++) {
        float *row = St + (size_t)j * f->BQ;
        int jg = j0 + j, hidden = g->causal ? jg - g->offset - i0 : 0; /* queries i < hidden do not see jg */
        if (mb) {
            const float *mrow = mb + jg * g->mj;
            for (i = 0; i < nq; i++) row[i] += mrow[(i0 + i) * g->mi];
        }
        for (i = 0; i < AV__MIN(hidden, nq); i++) row[i] = -INFINITY;
        for (i = nq; i < n; i++) row[i] = -INFINITY;
    }
}

/* The first key block past what query block [i0, i0+nq) may see. */
static int av__flash_key_end(const av__flash *f, int i0, int nq) {
    const av__sdpa_geom *g = f->g;
    long last = g->causal ? (long)i0 + nq - 1 + g->offset : (long)g->Tk - 1;
    return last < 0 ? 0 : (int)AV__MIN(last + 1, (long)g->Tk);
}

/* In a block where query i (of nq) sees key j (of bk) if j <= i + d: the
   keys that queries [a, a+m) see are [0, av__flash_keys_seen), and the
   queries that see key b are [av__flash_first_query, nq). */
static int av__flash_keys_seen(long d, int a, int m, int bk) {
    long e = (long)a + m + d;
    return e < 0 ? 0 : e > bk ? bk : (int)e;
}

static int av__flash_first_query(long d, int b, int nq) {
    long i = (long)b - d;
    return i < 0 ? 0 : i > nq ? nq : (int)i;
}

/* Per head: K as A (rows j, k over D) and V^T as A (rows over Dv, k over
   j), read in place or packed once and shared by the query blocks. */
static size_t av__flash_kv_floats(const av__flash *f) {
    const av__sdpa_geom *g = f->g;
    int MR = f->im->mr;
    return (size_t)av__round_up(g->Tk, MR) * g->D + (size_t)av__round_up(g->Dv, MR) * g->Tk;
}

static void av__flash_forward_block(const av__flash *f, int bh, int qb, const float *q, const av__aop *K,
                                    const av__aop *Vt, const float *mb, float *out, float *lse, float *scratch) {
    const av__sdpa_geom *g = f->g;
    const av__gemm_impl *im = f->im;
    int MR = im->mr, NR = im->nr, BQ = f->BQ, BK = f->BK, i0 = qb * BQ, j0, i, n, nq, j_end;
    float *Qb = scratch, *St = Qb + (size_t)BQ * g->D, *Ot = St + (size_t)BK * BQ;
    float *m = Ot + (size_t)g->Dv * BQ, *l = m + BQ, *alpha = l + BQ;
    nq = AV__MIN(BQ, g->Tq - i0);
    n = av__round_up(nq, NR);
    j_end = av__flash_key_end(f, i0, nq);
    av__panels_by_rows(Qb, NR, q + (size_t)i0 * g->q.ld, nq, g->D, (size_t)g->q.ld);
    for (i = 0; i < n; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
    memset(Ot, 0, (size_t)g->Dv * BQ * sizeof(float));
    for (j0 = 0; j0 < j_end; j0 += BK) {
        int bk = AV__MIN(BK, g->Tk - j0), b, c;
        long d = g->causal ? (long)i0 + g->offset - j0 : (long)bk; /* key j sees query i if j <= i + d */
        /* St = scale K_j Q_i^T, a row panel at a time without the tiles that
           causality hides; then mask, causality and the online softmax */
        for (b = 0; b < bk; b += MR) {
            int c0 = av__flash_first_query(d, b, nq) / NR * NR;
            av__gemm_panels(im, K->kernel, AV__MIN(MR, bk - b), n - c0, g->D, K->a + (size_t)((j0 + b) / MR) * K->step,
                            K->step, K->as, Qb + (size_t)c0 * g->D, (size_t)NR * g->D, NR, St + (size_t)b * BQ + c0, BQ,
                            g->scale, 0.0f);
        }
        av__flash_mask(f, St, bk, n, j0, i0, nq, mb);
        AV__VDISPATCH(f->isa, attn_online, St, BQ, bk, n, m, l, alpha);
        AV__VDISPATCH(f->isa, attn_scale, Ot, BQ, g->Dv, n, alpha);
        if (g->dropout > 0.0f) {
            int j, ii;
            float keep = 1.0f / (1.0f - g->dropout);
            for (j = 0; j < bk; j++)
                for (ii = 0; ii < nq; ii++) St[(size_t)j * BQ + ii] *= av__sdpa_kept(g, bh, i0 + ii, j0 + j) ? keep : 0.0f;
        }
        /* Ot += V_j^T P_j^T, St read in place as whole B panels, k over the
           keys each panel's queries see */
        for (c = 0; c < n; c += NR) {
            int seen = av__flash_keys_seen(d, c, NR, bk);
            if (seen)
                av__gemm_panels(im, Vt->kernel, g->Dv, NR, seen, Vt->a + (size_t)j0 * Vt->as, Vt->step, Vt->as, St + c,
                                (size_t)NR, BQ, Ot + c, BQ, 1.0f, 1.0f);
        }
    }
    for (i = 0; i < nq; i++) {
        int d;
        float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        float *o = out + (size_t)(i0 + i) * g->o.ld;
        for (d = 0; d < g->Dv; d++) o[d] = Ot[(size_t)d * BQ + i] * inv;
        lse[i0 + i] = l[i] > 0.0f ? m[i] + logf(l[i]) : -INFINITY;
    }
}

static void av__flash_forward(av_ctx *c, const av__flash *f, const float *q, const float *k, const float *v,
                              const float *mask, float *out, float *lse) {
    const av__sdpa_geom *g = f->g;
    int BH = g->B * g->H, nqb = (g->Tq + f->BQ - 1) / f->BQ, items = BH * nqb, nt = 1, MR = f->im->mr, t;
    size_t kv = av__flash_kv_floats(f);
    size_t per_thread = (size_t)f->BQ * g->D + (size_t)f->BK * f->BQ + (size_t)g->Dv * f->BQ + 3 * (size_t)f->BQ;
    float *packs = (float *)av__arena_alloc(&c->arena, (size_t)BH * kv * sizeof(float)), *scratch;
    av__aop *ops = (av__aop *)av__arena_alloc(&c->arena, 2 * (size_t)BH * sizeof(av__aop)); /* K, V^T per head */
#ifdef _OPENMP
    if (!omp_in_parallel() && (double)g->Tq * g->Tk * (g->D + g->Dv) * BH > 2e6) nt = av_get_num_threads();
#endif
    scratch = (float *)av__arena_alloc(&c->arena, (size_t)nt * per_thread * sizeof(float));
    AV_OMP(omp parallel for num_threads(nt) schedule(static) if (nt > 1))
    for (t = 0; t < BH; t++) {
        float *Kp = packs + (size_t)t * kv;
        ops[2 * t] = av__aop_rows(f->im, av__head(k, &g->k, t, g->H), g->Tk, g->D, (size_t)g->k.ld, Kp);
        ops[2 * t + 1] = av__aop_cols(f->im, av__head(v, &g->v, t, g->H), g->Tk, g->Dv, (size_t)g->v.ld,
                                      Kp + (size_t)av__round_up(g->Tk, MR) * g->D);
    }
    /* Work items are (head, query block); each is computed the same way
       whichever thread takes it, so the result does not depend on threads. */
    AV_OMP(omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1))
    for (t = 0; t < items; t++) {
        int bh = t / nqb, qb = t % nqb, b = bh / g->H, h = bh % g->H, me = 0;
#ifdef _OPENMP
        me = omp_get_thread_num();
#endif
        av__flash_forward_block(f, bh, qb, av__head(q, &g->q, bh, g->H), &ops[2 * bh], &ops[2 * bh + 1],
                                mask ? mask + b * g->mb + h * g->mh : NULL, av__head_w(out, &g->o, bh, g->H),
                                lse + (size_t)bh * g->Tq, scratch + (size_t)me * per_thread);
    }
}

/* The backward works on blocks in the plain layout, S[i][j] (queries by
   keys): its per-row statistics lse and delta are scalars per row. The
   kernels read P and dS in place: their columns as A panels of P^T and dS^T
   (for dV and dK), their rows with the rows kernel (for dQ = dS K; packed
   where an ISA has none). Blocks are whole micro-panels both ways: a
   multiple of lcm(MR, NR), which av__flash_bwd_cols also rounds keys to. */
static int av__flash_bwd_cols(const av__flash *f, int keys) {
    int a = f->im->mr, b = f->im->nr, l = a;
    while (l % b) l += a; /* lcm(MR, NR) */
    return (keys + l - 1) / l * l;
}

static int av__flash_bwd_block(const av__flash *f) { return av__flash_bwd_cols(f, 64); }

/* Everything one head's backward packs, and its block buffers. */
typedef struct av__flash_bwd {
    float *Qa, *dOa;        /* A panels of Q and dO (rows: queries; k over D, Dv), if packed */
    float *Kb, *Vb;         /* B panels of K^T and V^T (columns: keys; k over D, Dv) */
    float *Kc, *Qc, *dOc;   /* B panels of K, Q and dO (k over keys or queries), if packed */
    float *S, *dS, *Pd, *Ap; /* one block's P, dP then dS, dropped P; dS packed (no rows kernel) */
    float *dmask;           /* this head's mask gradient, or NULL */
} av__flash_bwd;

static size_t av__flash_bwd_floats(const av__flash *f, size_t mask_floats) {
    const av__sdpa_geom *g = f->g;
    int MR = f->im->mr, NR = f->im->nr, BB = av__flash_bwd_block(f);
    size_t tq = (size_t)av__round_up(g->Tq, MR), tk = (size_t)av__round_up(g->Tk, NR);
    return tq * g->D + tq * g->Dv + tk * g->D + tk * g->Dv                       /* Qa dOa Kb Vb */
           + (size_t)av__round_up(g->D, NR) * (g->Tk + g->Tq) + (size_t)av__round_up(g->Dv, NR) * g->Tq /* Kc Qc dOc */
           + 4 * (size_t)BB * BB + mask_floats;
}

static av__flash_bwd av__flash_bwd_layout(const av__flash *f, float *p) {
    const av__sdpa_geom *g = f->g;
    int MR = f->im->mr, NR = f->im->nr, BB = av__flash_bwd_block(f);
    size_t tq = (size_t)av__round_up(g->Tq, MR), tk = (size_t)av__round_up(g->Tk, NR);
    av__flash_bwd w;
    w.Qa = p; p += tq * g->D;
    w.dOa = p; p += tq * g->Dv;
    w.Kb = p; p += tk * g->D;
    w.Vb = p; p += tk * g->Dv;
    w.Kc = p; p += (size_t)av__round_up(g->D, NR) * g->Tk;
    w.Qc = p; p += (size_t)av__round_up(g->D, NR) * g->Tq;
    w.dOc = p; p += (size_t)av__round_up(g->Dv, NR) * g->Tq;
    w.S = p; p += (size_t)BB * BB;
    w.dS = p; p += (size_t)BB * BB;
    w.Pd = p; p += (size_t)BB * BB;
    w.Ap = p; p += (size_t)BB * BB;
    w.dmask = p;
    return w;
}

/* Scores of queries [i0, i0+nq) for keys [j0, j0+bk) in S (rows i, ld BB):
   the mask added, and hidden or padding keys (up to n) set to -inf. */
static void av__flash_mask_rows(const av__sdpa_geom *g, float *S, int ld, int nq, int n, int i0, int j0, int bk,
                                const float *mb) {
    int i, j;
    for (i = 0; i < nq; i++) {
        float *row = S + (size_t)i * ld;
        int see = g->causal ? i0 + i + g->offset - j0 + 1 : bk; /* keys j0 + j with j < see are visible */
        if (mb) {
            const float *mrow = mb + (i0 + i) * g->mi + j0 * g->mj;
            for (j = 0; j < bk; j++) row[j] += mrow[j * g->mj];
        }
        for (j = see < 0 ? 0 : see; j < n; j++) row[j] = -INFINITY;
        for (j = bk; j < n; j++) row[j] = -INFINITY;
    }
}

/* One head: key blocks outer (dK_j, dV_j accumulate over query blocks in
   order), query blocks inner (dQ_i accumulates over key blocks in order). */
static void av__flash_backward_head(const av__flash *f, int bh, const float *q, const float *k, const float *v,
                                    const float *dO, const float *lse, const float *delta, const float *mb,
                                    float *dq, float *dk, float *dv, av__flash_bwd *w) {
    const av__sdpa_geom *g = f->g;
    const av__gemm_impl *im = f->im;
    int MR = im->mr, NR = im->nr, BB = av__flash_bwd_block(f), j0, i0, i, j;
    int mask_cols = g->mj ? g->Tk : 1;
    float keep = g->dropout > 0.0f ? 1.0f / (1.0f - g->dropout) : 1.0f;
    av__aop Qa = av__aop_rows(im, q, g->Tq, g->D, (size_t)g->q.ld, w->Qa);
    av__aop dOa = av__aop_rows(im, dO, g->Tq, g->Dv, (size_t)g->o.ld, w->dOa);
    av__bop Kc = av__bop_rows(im, k, g->Tk, g->D, (size_t)g->k.ld, w->Kc);
    av__bop Qc = av__bop_rows(im, q, g->Tq, g->D, (size_t)g->q.ld, w->Qc);
    av__bop dOc = av__bop_rows(im, dO, g->Tq, g->Dv, (size_t)g->o.ld, w->dOc);
    av__panels_by_rows(w->Kb, NR, k, g->Tk, g->D, (size_t)g->k.ld);
    av__panels_by_rows(w->Vb, NR, v, g->Tk, g->Dv, (size_t)g->v.ld);
    for (j0 = 0; j0 < g->Tk; j0 += BB) {
        int bk = AV__MIN(BB, g->Tk - j0), n = av__flash_bwd_cols(f, bk);
        for (i0 = 0; i0 < g->Tq; i0 += BB) {
            int nq = AV__MIN(BB, g->Tq - i0), a, b;
            long d = g->causal ? (long)i0 + g->offset - j0 : (long)bk; /* key j sees query i if j <= i + d */
            const float *P = w->S;
            if (av__flash_key_end(f, i0, nq) <= j0) continue; /* hidden by causality */
            /* P = exp(scale Q_i K_j^T + mask - lse) and dP = dO_i V_j^T, a row
               panel at a time: tiles that causality hides are skipped (dP's
               zeroed) */
            for (a = 0; a < nq; a += MR) {
                int m = AV__MIN(MR, nq - a), cols = AV__MIN(n, av__round_up(av__flash_keys_seen(d, a, m, bk), NR));
                av__gemm_panels(im, Qa.kernel, m, cols, g->D, Qa.a + (size_t)((i0 + a) / MR) * Qa.step, Qa.step, Qa.as,
                                w->Kb + (size_t)j0 * g->D, (size_t)NR * g->D, NR, w->S + (size_t)a * BB, BB, g->scale, 0.0f);
                av__gemm_panels(im, dOa.kernel, m, cols, g->Dv, dOa.a + (size_t)((i0 + a) / MR) * dOa.step, dOa.step,
                                dOa.as, w->Vb + (size_t)j0 * g->Dv, (size_t)NR * g->Dv, NR, w->dS + (size_t)a * BB, BB, 1.0f,
                                0.0f);
                for (i = a; i < a + m; i++) memset(w->dS + (size_t)i * BB + cols, 0, (size_t)(n - cols) * sizeof(float));
            }
            av__flash_mask_rows(g, w->S, BB, nq, n, i0, j0, bk, mb);
            AV__VDISPATCH(f->isa, attn_probs_rows, w->S, BB, nq, n, lse + i0);
            if (g->dropout > 0.0f) { /* dP and the P that reached V carry the dropout mask */
                for (i = 0; i < nq; i++)
                    for (j = 0; j < n; j++) { /* Pd's padding columns 0, as P's */
                        float s = j < bk && av__sdpa_kept(g, bh, i0 + i, j0 + j) ? keep : 0.0f;
                        w->dS[(size_t)i * BB + j] *= s;
                        w->Pd[(size_t)i * BB + j] = w->S[(size_t)i * BB + j] * s;
                    }
                P = w->Pd;
            }
            /* dV_j += P^T dO_i: P's columns read in place, k over the queries
               that see the panel's keys */
            for (b = 0; b < bk; b += MR) {
                int from = av__flash_first_query(d, b, nq);
                if (from < nq)
                    av__gemm_panels(im, im->kernel, AV__MIN(MR, bk - b), g->Dv, nq - from, P + b + (size_t)from * BB,
                                    (size_t)MR, BB, dOc.b + (size_t)(i0 + from) * dOc.ldb, dOc.step, dOc.ldb,
                                    dv + (size_t)(j0 + b) * g->v.ld, g->v.ld, 1.0f, 1.0f);
            }
            /* dS = P (dP - delta) */
            AV__VDISPATCH(f->isa, attn_dscores_rows, w->dS, w->S, BB, nq, n, delta + i0);
            if (w->dmask)
                for (i = 0; i < nq; i++)
                    for (j = 0; j < bk; j++)
                        w->dmask[(g->mi ? (size_t)(i0 + i) * mask_cols : 0) + (g->mj ? (size_t)(j0 + j) : 0)] +=
                            w->dS[(size_t)i * BB + j];
            /* dK_j += scale dS^T Q_i: dS's columns read in place, as P's */
            for (b = 0; b < bk; b += MR) {
                int from = av__flash_first_query(d, b, nq);
                if (from < nq)
                    av__gemm_panels(im, im->kernel, AV__MIN(MR, bk - b), g->D, nq - from, w->dS + b + (size_t)from * BB,
                                    (size_t)MR, BB, Qc.b + (size_t)(i0 + from) * Qc.ldb, Qc.step, Qc.ldb,
                                    dk + (size_t)(j0 + b) * g->k.ld, g->k.ld, g->scale, 1.0f);
            }
            /* dQ_i += scale dS K_j, k over the keys the panel's queries see: dS's
               rows read in place (the rows of a ragged last panel zeroed), or packed */
            if (im->kernel_rows)
                for (i = nq; i < av__round_up(nq, MR); i++) memset(w->dS + (size_t)i * BB, 0, (size_t)bk * sizeof(float));
            else
                av__panels_by_rows(w->Ap, MR, w->dS, nq, bk, (size_t)BB);
            for (a = 0; a < nq; a += MR) {
                int m = AV__MIN(MR, nq - a), seen = av__flash_keys_seen(d, a, m, bk);
                if (!seen) continue;
                if (im->kernel_rows)
                    av__gemm_panels(im, im->kernel_rows, m, g->D, seen, w->dS + (size_t)a * BB, (size_t)MR * BB, BB,
                                    Kc.b + (size_t)j0 * Kc.ldb, Kc.step, Kc.ldb, dq + (size_t)(i0 + a) * g->q.ld, g->q.ld,
                                    g->scale, 1.0f);
                else
                    av__gemm_panels(im, im->kernel, m, g->D, seen, w->Ap + (size_t)a * bk, (size_t)MR * bk, MR,
                                    Kc.b + (size_t)j0 * Kc.ldb, Kc.step, Kc.ldb, dq + (size_t)(i0 + a) * g->q.ld, g->q.ld,
                                    g->scale, 1.0f);
            }
        }
    }
}

static void av__flash_backward(av_ctx *c, const av__flash *f, const float *q, const float *k, const float *v,
                               const float *mask, const float *out, const float *dO, const float *lse, float *dq,
                               float *dk, float *dv, float *dmask) {
    const av__sdpa_geom *g = f->g;
    int BH = g->B * g->H, nt = 1, t, i;
    size_t mask_floats = dmask ? (size_t)(g->mi ? g->Tq : 1) * (g->mj ? g->Tk : 1) : 0;
    size_t per_head = av__flash_bwd_floats(f, mask_floats);
    float *delta = (float *)av__arena_alloc(&c->arena, ((size_t)BH * g->Tq + 1) * sizeof(float)), *scratch, *dmasks;
#ifdef _OPENMP
    if (!omp_in_parallel() && BH > 1 && (double)g->Tq * g->Tk * (g->D + g->Dv) * BH > 2e6)
        nt = AV__MIN(av_get_num_threads(), BH);
#endif
    for (t = 0; t < BH; t++) /* delta = rowsum(dO o O) */
        for (i = 0; i < g->Tq; i++) {
            const float *o = av__head(out, &g->o, t, g->H) + (size_t)i * g->o.ld;
            const float *d_o = av__head(dO, &g->o, t, g->H) + (size_t)i * g->o.ld;
            double s = 0;
            int d;
            for (d = 0; d < g->Dv; d++) s += (double)d_o[d] * o[d];
            delta[(size_t)t * g->Tq + i] = (float)s;
        }
    scratch = (float *)av__arena_alloc(&c->arena, (size_t)nt * per_head * sizeof(float));
    dmasks = dmask ? (float *)av__arena_alloc(&c->arena, (size_t)BH * mask_floats * sizeof(float)) : NULL;
    if (dmasks) memset(dmasks, 0, (size_t)BH * mask_floats * sizeof(float));
    /* One head per work item: no two threads write the same gradient. */
    AV_OMP(omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1))
    for (t = 0; t < BH; t++) {
        int b = t / g->H, h = t % g->H, me = 0;
        av__flash_bwd w;
#ifdef _OPENMP
        me = omp_get_thread_num();
#endif
        w = av__flash_bwd_layout(f, scratch + (size_t)me * per_head);
        w.dmask = dmasks ? dmasks + (size_t)t * mask_floats : NULL;
        av__flash_backward_head(f, t, av__head(q, &g->q, t, g->H), av__head(k, &g->k, t, g->H),
                                av__head(v, &g->v, t, g->H), av__head(dO, &g->o, t, g->H), lse + (size_t)t * g->Tq,
                                delta + (size_t)t * g->Tq, mask ? mask + b * g->mb + h * g->mh : NULL,
                                av__head_w(dq, &g->q, t, g->H), av__head_w(dk, &g->k, t, g->H),
                                av__head_w(dv, &g->v, t, g->H), &w);
    }
    if (dmasks) /* heads that share mask entries add in head order */
        for (t = 0; t < BH; t++) {
            float *dst = dmask + (t / g->H) * g->mb + (t % g->H) * g->mh;
            const float *src = dmasks + (size_t)t * mask_floats;
            int qi, kj, cols = g->mj ? g->Tk : 1;
            for (qi = 0; qi < (g->mi ? g->Tq : 1); qi++)
                for (kj = 0; kj < cols; kj++) dst[qi * g->mi + kj * g->mj] += src[(size_t)qi * cols + kj];
        }
}

/* Inputs that need no gradient get one in scratch: simpler than a variant
   of the kernel for each subset. */
static float *av__grad_or_scratch(av_ctx *c, av__node *n, int i) {
    float *gr = av__in_grad(n, i);
    if (gr) return gr;
    gr = (float *)av__arena_alloc(&c->arena, (size_t)n->in[i]->size * sizeof(float));
    memset(gr, 0, (size_t)n->in[i]->size * sizeof(float));
    return gr;
}

/* inputs q, k, v (one tensor may serve several), mask; saved: lse [B, H, Tq] */
static void av__flash_backward_op(av_ctx *c, av__node *n) {
    const av__sdpa_args *a = (const av__sdpa_args *)n->args;
    av__flash f = av__flash_plan(&a->g);
    av_tensor *mask = n->in[3];
    av__flash_backward(c, &f, n->in[0]->data, n->in[1]->data, n->in[2]->data, mask ? mask->data : NULL,
                       n->out[0]->data, n->out[0]->grad, (const float *)n->saved, av__grad_or_scratch(c, n, 0),
                       av__grad_or_scratch(c, n, 1), av__grad_or_scratch(c, n, 2), av__in_grad(n, 3));
}

/* ---- the naive path ----------------------------------------------------
   Per head, as written in textbooks (and llm.c): S = scale Q K^T + mask,
   P = softmax(S) (the weights, an output), O = dropout(P) V; backward
   dP = dO V^T (+ the weights' own gradient), dS = P o (dP - rowsum(P o dP)),
   dQ = scale dS K, dK = scale dS^T Q, dV = dropout(P)^T dO. It stores the
   B x H x Tq x Tk weights. */
static float av__sdpa_drop_scale(const av__sdpa_geom *g, int bh, int i, int j) {
    return g->dropout > 0.0f ? (av__sdpa_kept(g, bh, i, j) ? 1.0f / (1.0f - g->dropout) : 0.0f) : 1.0f;
}

static void av__naive_backward_op(av_ctx *c, av__node *n) {
    const av__sdpa_geom *g = &((const av__sdpa_args *)n->args)->g;
    const float *P = n->out[1]->data, *dW = n->out[1]->grad, *dO = n->out[0]->grad;
    const float *qd = n->in[0]->data, *kd = n->in[1]->data, *vd = n->in[2]->data;
    float *dq = av__in_grad(n, 0), *dk = av__in_grad(n, 1), *dv = av__in_grad(n, 2), *dmask = av__in_grad(n, 3);
    float *dP = (float *)av__arena_alloc(&c->arena, ((size_t)g->Tq * g->Tk + 1) * sizeof(float));
    float *Pd = (float *)av__arena_alloc(&c->arena, ((size_t)g->Tq * g->Tk + 1) * sizeof(float));
    int bh, i, j, TT = g->Tq * g->Tk;
    for (bh = 0; bh < g->B * g->H; bh++) {
        const float *p = P + (size_t)bh * TT, *q = av__head(qd, &g->q, bh, g->H), *k = av__head(kd, &g->k, bh, g->H);
        const float *v = av__head(vd, &g->v, bh, g->H), *dout = av__head(dO, &g->o, bh, g->H);
        for (i = 0; i < g->Tq; i++)
            for (j = 0; j < g->Tk; j++) Pd[(size_t)i * g->Tk + j] = p[(size_t)i * g->Tk + j] * av__sdpa_drop_scale(g, bh, i, j);
        if (dv)
            av_sgemm(1, 0, g->Tk, g->Dv, g->Tq, 1.0f, Pd, g->Tk, dout, g->o.ld, 1.0f, av__head_w(dv, &g->v, bh, g->H), g->v.ld);
        av_sgemm(0, 1, g->Tq, g->Tk, g->Dv, 1.0f, dout, g->o.ld, v, g->v.ld, 0.0f, dP, g->Tk);
        for (i = 0; i < g->Tq; i++) { /* dS = P (dP - <P, dP>), in place */
            float *d = dP + (size_t)i * g->Tk;
            const float *pr = p + (size_t)i * g->Tk, *dw = dW + (size_t)bh * TT + (size_t)i * g->Tk;
            double dot = 0;
            for (j = 0; j < g->Tk; j++) {
                d[j] = d[j] * av__sdpa_drop_scale(g, bh, i, j) + dw[j];
                dot += (double)pr[j] * d[j];
            }
            for (j = 0; j < g->Tk; j++) d[j] = pr[j] * (d[j] - (float)dot);
        }
        if (dq) av_sgemm(0, 0, g->Tq, g->D, g->Tk, g->scale, dP, g->Tk, k, g->k.ld, 1.0f, av__head_w(dq, &g->q, bh, g->H), g->q.ld);
        if (dk) av_sgemm(1, 0, g->Tk, g->D, g->Tq, g->scale, dP, g->Tk, q, g->q.ld, 1.0f, av__head_w(dk, &g->k, bh, g->H), g->k.ld);
        if (dmask) {
            float *dm = dmask + (bh / g->H) * g->mb + (bh % g->H) * g->mh;
            for (i = 0; i < g->Tq; i++)
                for (j = 0; j < g->Tk; j++) dm[i * g->mi + j * g->mj] += dP[(size_t)i * g->Tk + j];
        }
    }
}

static void av__naive_forward(av_ctx *c, const av__sdpa_geom *g, const float *qd, const float *kd, const float *vd,
                              const float *mask, float *out, float *W) {
    int bh, i, j, TT = g->Tq * g->Tk;
    float *Pd = (float *)av__arena_alloc(&c->arena, ((size_t)TT + 1) * sizeof(float));
    for (bh = 0; bh < g->B * g->H; bh++) {
        float *p = W + (size_t)bh * TT;
        const float *mb = mask ? mask + (bh / g->H) * g->mb + (bh % g->H) * g->mh : NULL;
        av_sgemm(0, 1, g->Tq, g->Tk, g->D, g->scale, av__head(qd, &g->q, bh, g->H), g->q.ld, av__head(kd, &g->k, bh, g->H),
                 g->k.ld, 0.0f, p, g->Tk);
        for (i = 0; i < g->Tq; i++) {
            float *s = p + (size_t)i * g->Tk, mx = -INFINITY;
            double sum = 0;
            for (j = 0; j < g->Tk; j++) {
                if (mb) s[j] += mb[i * g->mi + j * g->mj];
                if (av__sdpa_hidden(g, i, j)) s[j] = -INFINITY;
                mx = s[j] > mx ? s[j] : mx;
            }
            for (j = 0; j < g->Tk; j++) { /* a row with no visible key stays all zero */
                s[j] = mx == -INFINITY ? 0.0f : expf(s[j] - mx);
                sum += s[j];
            }
            for (j = 0; j < g->Tk; j++) {
                s[j] = sum > 0 ? (float)(s[j] / sum) : 0.0f;
                Pd[(size_t)i * g->Tk + j] = s[j] * av__sdpa_drop_scale(g, bh, i, j);
            }
        }
        av_sgemm(0, 0, g->Tq, g->Dv, g->Tk, 1.0f, Pd, g->Tk, av__head(vd, &g->v, bh, g->H), g->v.ld, 0.0f,
                 av__head_w(out, &g->o, bh, g->H), g->o.ld);
    }
}

/* The attention op on views of q, k and v (which may be one tensor) into
   out, already shaped by the caller: tiled, or naive with the weights
   [B, H, Tq, Tk] as a second output. */
static av_tensor *av__attend(av_ctx *c, const char *op, const av__sdpa_geom *g, av_tensor *q, av_tensor *k, av_tensor *v,
                             av_tensor *mask, av_tensor *out, av_tensor **weights) {
    av__sdpa_args a;
    av_tensor *outs[2], *in[4];
    av__node *n;
    a.g = *g;
    in[0] = q; in[1] = k; in[2] = v; in[3] = mask;
    outs[0] = out;
    if (weights) {
        int shape[4];
        shape[0] = g->B; shape[1] = g->H; shape[2] = g->Tq; shape[3] = g->Tk;
        outs[1] = *weights = av__tensor_empty(c, 4, shape, op);
        av__naive_forward(c, g, q->data, k->data, v->data, mask ? mask->data : NULL, out->data, outs[1]->data);
        n = av__record_n(c, op, av__naive_backward_op, outs, 2, in, 4);
    } else {
        av__flash f = av__flash_plan(g);
        float *lse = (float *)av__arena_alloc(&c->arena, ((size_t)g->B * g->H * g->Tq + 1) * sizeof(float));
        av__flash_forward(c, &f, q->data, k->data, v->data, mask ? mask->data : NULL, out->data, lse);
        n = av__record_n(c, op, av__flash_backward_op, outs, 1, in, 4);
        if (n) n->saved = lse;
    }
    if (n) n->args = AV__KEEP(c, a);
    return out;
}

/* The output of av_sdpa: q's shape with Dv last. */
static av_tensor *av__sdpa_output(av_ctx *c, const av_tensor *q, int Dv, const char *op) {
    int shape[AV_MAX_DIMS], i;
    for (i = 0; i < q->ndim; i++) shape[i] = q->shape[i];
    shape[q->ndim - 1] = Dv;
    return av__tensor_empty(c, q->ndim, shape, op);
}

/* tiled, or naive with the weights (and then dropout too, for the layers and the tests) */
static av_tensor *av__sdpa_any(av_ctx *c, const char *op, av_tensor *q, av_tensor *k, av_tensor *v, av_tensor *mask,
                               int is_causal, float dropout_p, float scale, av_tensor **weights) {
    av__sdpa_geom g;
    av_tensor *w = NULL, *out;
    av__live(c, op, q, k, v);
    av__check_live(c, mask, op, 3);
    g = av__sdpa_plan(c, op, q, k, v, mask, is_causal, dropout_p, scale);
    out = av__attend(c, op, &g, q, k, v, mask, av__sdpa_output(c, q, g.Dv, op), weights ? &w : NULL);
    if (weights) /* the weights in q's rank: [B,H,Tq,Tk], [H,Tq,Tk] or [Tq,Tk] */
        *weights = q->ndim == 4 ? w : av_reshape_shape(c, w, q->ndim, w->shape + (4 - q->ndim));
    return out;
}

static av_tensor *av__sdpa_naive(av_ctx *c, av_tensor *q, av_tensor *k, av_tensor *v, av_tensor *mask, int is_causal,
                                 float dropout_p, float scale, av_tensor **weights) {
    return av__sdpa_any(c, "av_sdpa_weights", q, k, v, mask, is_causal, dropout_p, scale, weights);
}

AVDEF av_tensor *av_sdpa(av_ctx *c, av_tensor *q, av_tensor *k, av_tensor *v, av_tensor *mask, int is_causal,
                         float dropout_p, float scale) {
    return av__sdpa_any(c, "av_sdpa", q, k, v, mask, is_causal, dropout_p, scale, NULL);
}

AVDEF av_tensor *av_sdpa_weights(av_ctx *c, av_tensor *q, av_tensor *k, av_tensor *v, av_tensor *mask, int is_causal,
                                 float scale, av_tensor **weights) {
    av_tensor *w;
    av_tensor *out = av__sdpa_naive(c, q, k, v, mask, is_causal, 0.0f, scale, &w);
    if (weights) *weights = w;
    return out;
}

/* ---- masks ---- */
AVDEF av_tensor *av_key_padding_mask(av_ctx *c, const int *lengths, int B, int Tk) {
    int shape[4], b, j;
    av_tensor *m;
    shape[0] = B; shape[1] = 1; shape[2] = 1; shape[3] = Tk;
    m = av__tensor_empty(c, 4, shape, "av_key_padding_mask");
    for (b = 0; b < B; b++) {
        if (lengths[b] < 0 || lengths[b] > Tk)
            av__fail("av_key_padding_mask: length %d of sequence %d outside [0, %d]", lengths[b], b, Tk);
        for (j = 0; j < Tk; j++) m->data[(size_t)b * Tk + j] = j < lengths[b] ? 0.0f : -INFINITY;
    }
    return m;
}

AVDEF av_tensor *av_causal_mask(av_ctx *c, int Tq, int Tk) {
    int shape[2], i, j;
    av_tensor *m;
    shape[0] = Tq; shape[1] = Tk;
    m = av__tensor_empty(c, 2, shape, "av_causal_mask");
    for (i = 0; i < Tq; i++)
        for (j = 0; j < Tk; j++) m->data[(size_t)i * Tk + j] = j <= i + (Tk - Tq) ? 0.0f : -INFINITY;
    return m;
}

/* ---- learned scores: additive (Bahdanau) and multiplicative (Luong) ---- */
/* Threads for `items` independent work items costing `work` FLOPs in all:
   one unless OpenMP is on, no parallel region is running already, there
   are two items or more and the work is worth a fork. */
static int av__threads_for(double work, int items) {
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && items > 1 && work > 2e6) nt = AV__MIN(av_get_num_threads(), items); /* as av_sdpa */
#endif
    (void)work;
    (void)items;
    return nt;
}

static int av__thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* additive scores: s[b,i,j] = sum_a v[a] t[a], t = tanh(q[b,i] + k[b,j]);
   q [B,Tq,A], k [B,Tk,A], v [A] -> [B,Tq,Tk]. Nothing is saved: backward
   recomputes t one query row at a time. With u = g[b,i,j] v (1 - t^2):
   dq[b,i] += sum_j u, dk[b,j] += sum_i u, dv += sum_{b,i,j} g[b,i,j] t. */
typedef struct av__additive_args { int B, Tq, Tk, A; } av__additive_args;

/* t = tanh(q + k_j) for the Tk keys of one query, as 2 sigmoid(2x) - 1
   through the vector sigmoid of [2.2]; pre and t hold Tk*A floats each
   (the sigmoid reads its input again for lanes past |x| > 80: not in place). */
static void av__additive_tanh(int isa, const float *q, const float *k, int Tk, int A, float *pre, float *t) {
    int j, a, n = Tk * A;
    (void)isa; /* one path only without x86 SIMD */
    for (j = 0; j < Tk; j++)
        for (a = 0; a < A; a++) pre[j * A + a] = 2.0f * (q[a] + k[j * A + a]);
    AV__VDISPATCH(isa, sigmoid, pre, t, n);
    for (j = 0; j < n; j++) t[j] = 2.0f * t[j] - 1.0f;
}

/* The batch is split between threads: dk[b] and dv's partial sum dvb[b]
   belong to one of them, and dvb adds up in batch order afterwards. */
static void av__additive_backward(av_ctx *c, av__node *n) {
    const av__additive_args *s = (const av__additive_args *)n->args;
    int B = s->B, Tq = s->Tq, Tk = s->Tk, A = s->A, isa = av_get_isa(), b;
    int nt = av__threads_for(4.0 * B * Tq * Tk * A, B);
    const float *q = n->in[0]->data, *k = n->in[1]->data, *v = n->in[2]->data, *g = n->out[0]->grad;
    float *dq = av__in_grad(n, 0), *dk = av__in_grad(n, 1), *dv = av__in_grad(n, 2);
    size_t per_thread = 2 * (size_t)Tk * A + (size_t)A;
    float *scratch = (float *)av__arena_alloc(&c->arena, ((size_t)nt * per_thread + 1) * sizeof(float));
    float *dvb = dv ? (float *)av__arena_alloc(&c->arena, ((size_t)B * A + 1) * sizeof(float)) : NULL;
    if (dvb) memset(dvb, 0, (size_t)B * A * sizeof(float));
    AV_OMP(omp parallel for num_threads(nt) schedule(static) if (nt > 1))
    for (b = 0; b < B; b++) {
        float *pre = scratch + (size_t)av__thread_id() * per_thread, *t = pre + (size_t)Tk * A, *u = t + (size_t)Tk * A;
        int i, j, a;
        for (i = 0; i < Tq; i++) {
            size_t row = (size_t)b * Tq + i;
            av__additive_tanh(isa, q + row * A, k + (size_t)b * Tk * A, Tk, A, pre, t);
            for (j = 0; j < Tk; j++) {
                float gj = g[row * Tk + j];
                const float *tj = t + (size_t)j * A;
                if (gj == 0.0f) continue; /* masked keys, mostly */
                for (a = 0; a < A; a++) u[a] = gj * v[a] * (1.0f - tj[a] * tj[a]);
                if (dq) for (a = 0; a < A; a++) dq[row * A + a] += u[a];
                if (dk) for (a = 0; a < A; a++) dk[((size_t)b * Tk + j) * A + a] += u[a];
                if (dvb) for (a = 0; a < A; a++) dvb[(size_t)b * A + a] += gj * tj[a];
            }
        }
    }
    if (dvb)
        for (b = 0; b < B; b++) av__add_into(dv, dvb + (size_t)b * A, A);
}

AVDEF av_tensor *av_additive_scores(av_ctx *c, av_tensor *q, av_tensor *k, av_tensor *v) {
    static const char *op = "av_additive_scores";
    int shape[3], B, Tq, Tk, A, isa = av_get_isa(), nt, row;
    av__additive_args s;
    av_tensor *out;
    av__node *n;
    float *scratch;
    av__live(c, op, q, k, v);
    if (q->ndim != 3 || k->ndim != 3 || k->shape[0] != q->shape[0] || k->shape[2] != q->shape[2])
        av__fail_shapes(op, "q must be [B, Tq, A] and k [B, Tk, A]", q, k);
    B = q->shape[0]; Tq = q->shape[1]; Tk = k->shape[1]; A = q->shape[2];
    if ((v->ndim != 1 && !(v->ndim == 2 && v->shape[0] == 1)) || v->size != A)
        av__fail_shapes(op, "v must be [A] or [1, A], A the last size of q", v, q);
    shape[0] = B; shape[1] = Tq; shape[2] = Tk;
    out = av__tensor_empty(c, 3, shape, op);
    nt = av__threads_for(3.0 * B * Tq * Tk * A, B * Tq);
    scratch = (float *)av__arena_alloc(&c->arena, ((size_t)nt * 2 * Tk * A + 1) * sizeof(float));
    /* one query row per work item, each computed the same way on any thread */
    AV_OMP(omp parallel for num_threads(nt) schedule(static) if (nt > 1))
    for (row = 0; row < B * Tq; row++) {
        float *pre = scratch + (size_t)av__thread_id() * 2 * Tk * A, *t = pre + (size_t)Tk * A;
        int j, a;
        av__additive_tanh(isa, q->data + (size_t)row * A, k->data + (size_t)(row / Tq) * Tk * A, Tk, A, pre, t);
        for (j = 0; j < Tk; j++) {
            const float *tj = t + (size_t)j * A;
            float acc = 0.0f;
            for (a = 0; a < A; a++) acc += v->data[a] * tj[a];
            out->data[(size_t)row * Tk + j] = acc;
        }
    }
    s.B = B; s.Tq = Tq; s.Tk = Tk; s.A = A;
    n = av__record(c, op, av__additive_backward, out, 3, q, k, v);
    if (n) n->args = AV__KEEP(c, s);
    return out;
}

/* Softmax of the first len entries of x into y, leaving out -inf entries;
   y[len..T) = 0. A row with nothing left is all zeros. y may be x. */
static void av__softmax_visible(const float *x, float *y, int len, int T) {
    float mx = -INFINITY, inv;
    double sum = 0;
    int j;
    for (j = 0; j < len; j++) mx = x[j] > mx ? x[j] : mx;
    for (j = 0; j < len; j++) {
        y[j] = mx == -INFINITY ? 0.0f : expf(x[j] - mx);
        sum += y[j];
    }
    inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
    for (j = 0; j < len; j++) y[j] *= inv;
    for (j = len; j < T; j++) y[j] = 0.0f;
}

/* masked softmax: the forward leaves hidden entries at 0; the backward is
   av_softmax's, dx = y (g - <g, y>), which is 0 wherever y is */
AVDEF av_tensor *av_masked_softmax(av_ctx *c, av_tensor *x, const int *lengths) {
    static const char *op = "av_masked_softmax";
    int T, R, r, per_b = 1;
    av_tensor *out;
    av__node *n;
    av__live(c, op, x, NULL, NULL);
    R = av__rows(x, &T, op);
    if (lengths) {
        int b;
        if (x->ndim < 2) av__fail_shapes(op, "lengths need a batch axis: x must be [B, ..., T]", x, NULL);
        for (b = 0; b < x->shape[0]; b++)
            if (lengths[b] < 0 || lengths[b] > T) av__fail("%s: length %d of sequence %d outside [0, %d]", op, lengths[b], b, T);
        per_b = x->shape[0] ? R / x->shape[0] : 1;
    }
    out = av__like(c, x, op);
    for (r = 0; r < R; r++)
        av__softmax_visible(x->data + (size_t)r * T, out->data + (size_t)r * T, lengths ? lengths[r / per_b] : T, T);
    n = av__record(c, op, av__softmax_backward, out, 1, x);
    if (n) {
        av__softmax_args a;
        a.log_form = 0;
        n->args = AV__KEEP(c, a);
    }
    return out;
}

/* A mask for scores [B, Tq, Tk]: per key (B x Tk values, B first, Tk last,
   ones between) as a [B, 1, Tk] view, or per query [B, Tq, Tk] as it is
   (Tq < 0: per key only). */
static av_tensor *av__scores_mask(av_ctx *c, const char *op, av_tensor *mask, int B, int Tq, int Tk) {
    int i, ones = 1;
    char s[64];
    if (!mask) return NULL;
    for (i = 1; i + 1 < mask->ndim; i++) ones &= mask->shape[i] == 1;
    if (mask->ndim >= 2 && ones && mask->shape[0] == B && mask->shape[mask->ndim - 1] == Tk)
        return av_reshape(c, mask, 3, B, 1, Tk);
    if (Tq >= 0 && mask->ndim == 3 && mask->shape[0] == B && mask->shape[1] == Tq && mask->shape[2] == Tk) return mask;
    if (Tq >= 0)
        av__fail("%s: the mask %s must be [B, Tk] = [%d,%d] (or [B,1,1,Tk]) or [B, Tq, Tk] = [%d,%d,%d]", op,
                 av__shape_str(mask, s, sizeof s), B, Tk, B, Tq, Tk);
    av__fail("%s: the mask %s must be [B, Tk] = [%d,%d] (or [B,1,1,Tk])", op, av__shape_str(mask, s, sizeof s), B, Tk);
}

/* scores, mask and lengths to weights, then the weighted sum of values */
static av_tensor *av__attend_scores(av_ctx *c, const char *op, av_tensor *scores, av_tensor *values, av_tensor *mask,
                             const int *lengths, av_tensor **weights) {
    av_tensor *w;
    if (scores->ndim != 3 || values->ndim != 3 || values->shape[0] != scores->shape[0] ||
        values->shape[1] != scores->shape[2])
        av__fail_shapes(op, "scores must be [B, Tq, Tk] and values [B, Tk, Dv]", scores, values);
    mask = av__scores_mask(c, op, mask, scores->shape[0], scores->shape[1], scores->shape[2]);
    w = av_masked_softmax(c, mask ? av_add(c, scores, mask) : scores, lengths);
    if (weights) *weights = w;
    return av_matmul(c, w, values, 0, 0);
}

AVDEF av_tensor *av_attend(av_ctx *c, av_tensor *scores, av_tensor *values, av_tensor *mask, const int *lengths,
                           av_tensor **weights) {
    av__live(c, "av_attend", scores, values, mask);
    return av__attend_scores(c, "av_attend", scores, values, mask, lengths, weights);
}

AVDEF av_tensor *av_additive_attention(av_ctx *c, av_tensor *q, av_tensor *k, av_tensor *v, av_tensor *values,
                                       av_tensor *mask, const int *lengths, av_tensor **weights) {
    static const char *op = "av_additive_attention";
    av__live(c, op, q, k, v);
    av__live(c, op, values, mask, NULL);
    return av__attend_scores(c, op, av_additive_scores(c, q, k, v), values, mask, lengths, weights);
}

AVDEF av_tensor *av_dot_attention(av_ctx *c, av_tensor *q, av_tensor *keys, av_tensor *values, av_tensor *mask,
                                  const int *lengths, av_tensor **weights) {
    static const char *op = "av_dot_attention";
    av__live(c, op, q, keys, values);
    av__check_live(c, mask, op, 3);
    if (q->ndim != 3 || keys->ndim != 3 || keys->shape[0] != q->shape[0] || keys->shape[2] != q->shape[2])
        av__fail_shapes(op, "q must be [B, Tq, D] and keys [B, Tk, D]", q, keys);
    return av__attend_scores(c, op, av_matmul(c, q, keys, 0, 1), values, mask, lengths, weights);
}

/* ---- hard attention: one key per query -------------------------------- */
/* Gumbel(0, 1) noise, n values: -log(-log u) with u Philox uniform draw i
   of a fresh stream moved half a step off 0, in (0, 1), so the noise lies
   in [-2.85, 17.3] (the tails past it weigh < 1e-7). */
static float *av__gumbel_noise(av_ctx *c, int n) {
    av_philox s = av_ctx_philox(c);
    float *g = (float *)av__arena_alloc(&c->arena, ((size_t)n + 1) * sizeof(float));
    int i;
    for (i = 0; i < n; i++) {
        double u = (double)av_philox_uniform(&s, (uint64_t)i) + 0.5 / 16777216.0;
        g[i] = (float)-log(-log(u));
    }
    return g;
}

/* The one-hot of each row's largest x (+ noise, when not NULL), the first
   of ties; a row of -inf selects nothing (zeros, index -1). onehot or
   index may be NULL. */
static void av__select_rows(const float *x, const float *noise, int R, int K, float *onehot, int *index) {
    int r, j;
    for (r = 0; r < R; r++) {
        const float *xr = x + (size_t)r * K, *nr = noise ? noise + (size_t)r * K : NULL;
        float best = -INFINITY;
        int at = -1;
        for (j = 0; j < K; j++) {
            float z = nr ? xr[j] + nr[j] : xr[j];
            if (z > best) { best = z; at = j; }
        }
        for (j = 0; onehot && j < K; j++) onehot[(size_t)r * K + j] = j == at ? 1.0f : 0.0f;
        if (index) index[r] = at;
    }
}

/* A selection without a gradient: argmax of the logits, or of logits + noise */
static av_tensor *av__select(av_ctx *c, const char *op, av_tensor *logits, int sample, int *index) {
    int K, R;
    av_tensor *out;
    av__live(c, op, logits, NULL, NULL);
    R = av__rows(logits, &K, op);
    out = av__like(c, logits, op);
    av__select_rows(logits->data, sample ? av__gumbel_noise(c, logits->size) : NULL, R, K, out->data, index);
    return out;
}

AVDEF av_tensor *av_argmax_onehot(av_ctx *c, av_tensor *logits, int *index) {
    return av__select(c, "av_argmax_onehot", logits, 0, index);
}

AVDEF av_tensor *av_categorical_sample(av_ctx *c, av_tensor *logits, int *index) {
    return av__select(c, "av_categorical_sample", logits, 1, index);
}

/* Gumbel-softmax: y = softmax((x + g) / tau) per row, saved; the output is
   y, or (hard) the one-hot of its argmax. Backward, in both cases the soft
   sample's: dx = (1/tau) y (dout - <dout, y>). */
typedef struct av__gumbel_args { float tau; } av__gumbel_args;

static void av__gumbel_softmax_backward(av_ctx *c, av__node *n) {
    float inv_tau = 1.0f / ((const av__gumbel_args *)n->args)->tau;
    const float *y = (const float *)n->saved, *g = n->out[0]->grad;
    int K, R = av__rows(n->out[0], &K, n->op), r, j;
    (void)c;
    for (r = 0; r < R; r++) {
        const float *yr = y + (size_t)r * K, *gr = g + (size_t)r * K;
        float *dx = n->in[0]->grad + (size_t)r * K;
        double dot = 0;
        for (j = 0; j < K; j++) dot += (double)gr[j] * yr[j];
        for (j = 0; j < K; j++) dx[j] += inv_tau * yr[j] * (gr[j] - (float)dot);
    }
}

AVDEF av_tensor *av_gumbel_softmax(av_ctx *c, av_tensor *logits, float tau, int hard, int *index) {
    static const char *op = "av_gumbel_softmax";
    int K, R, i, r;
    av__gumbel_args a;
    av_tensor *out;
    float *y, *noise;
    av__node *n;
    av__live(c, op, logits, NULL, NULL);
    if (!(tau > 0.0f) || isinf(tau)) av__fail("%s: tau = %g must be finite and > 0", op, (double)tau);
    R = av__rows(logits, &K, op);
    out = av__like(c, logits, op);
    noise = av__gumbel_noise(c, logits->size);
    y = hard ? (float *)av__arena_alloc(&c->arena, ((size_t)logits->size + 1) * sizeof(float)) : out->data;
    for (i = 0; i < logits->size; i++) y[i] = (logits->data[i] + noise[i]) / tau;
    av__select_rows(y, NULL, R, K, hard ? out->data : NULL, index);
    for (r = 0; r < R; r++) av__softmax_visible(y + (size_t)r * K, y + (size_t)r * K, K, K);
    n = av__record(c, op, av__gumbel_softmax_backward, out, 1, logits);
    if (n) {
        a.tau = tau;
        n->args = AV__KEEP(c, a);
        n->saved = y;
    }
    return out;
}

/* log p[r] = x[r, k] - lse[r], lse over the row's finite logits (saved);
   backward: dx[r, j] += dout[r] (δ_jk - exp(x[r, j] - lse[r])) */
typedef struct av__log_prob_args { const int *index; } av__log_prob_args;

static void av__log_prob_backward(av_ctx *c, av__node *n) {
    const int *index = ((const av__log_prob_args *)n->args)->index;
    const float *lse = (const float *)n->saved, *g = n->out[0]->grad;
    int K, R = av__rows(n->in[0], &K, n->op), r, j;
    (void)c;
    for (r = 0; r < R; r++) {
        const float *x = n->in[0]->data + (size_t)r * K;
        float *dx = n->in[0]->grad + (size_t)r * K;
        if (index[r] < 0) continue;
        for (j = 0; j < K; j++) dx[j] -= g[r] * expf(x[j] - lse[r]);
        dx[index[r]] += g[r];
    }
}

AVDEF av_tensor *av_categorical_log_prob(av_ctx *c, av_tensor *logits, const int *index) {
    static const char *op = "av_categorical_log_prob";
    int K, R, r, j, *kept;
    av__log_prob_args a;
    av_tensor *out;
    float *lse;
    av__node *n;
    av__live(c, op, logits, NULL, NULL);
    R = av__rows(logits, &K, op);
    out = av__reduced(c, logits, logits->ndim - 1, 0, op);
    lse = (float *)av__arena_alloc(&c->arena, ((size_t)R + 1) * sizeof(float));
    kept = (int *)av__arena_alloc(&c->arena, ((size_t)R + 1) * sizeof(int));
    for (r = 0; r < R; r++) {
        const float *x = logits->data + (size_t)r * K;
        float mx = -INFINITY;
        double sum = 0;
        for (j = 0; j < K; j++) mx = x[j] > mx ? x[j] : mx;
        if (index[r] < -1 || index[r] >= K || (index[r] == -1) != (mx == -INFINITY) ||
            (index[r] >= 0 && x[index[r]] == -INFINITY))
            av__fail("%s: row %d: index %d is not a key of nonzero probability among %d (-1 only when all are masked)",
                     op, r, index[r], K);
        for (j = 0; j < K && index[r] >= 0; j++) sum += expf(x[j] - mx);
        lse[r] = index[r] >= 0 ? mx + (float)log(sum) : 0.0f;
        out->data[r] = index[r] >= 0 ? (x[index[r]] - mx) - (float)log(sum) : 0.0f;
        kept[r] = index[r];
    }
    n = av__record(c, op, av__log_prob_backward, out, 1, logits);
    if (n) {
        a.index = kept;
        n->args = AV__KEEP(c, a);
        n->saved = lse;
    }
    return out;
}

AVDEF av_tensor *av_reinforce_loss(av_ctx *c, av_tensor *log_prob, const float *cost, float baseline) {
    av_tensor *advantage;
    int i;
    av__live(c, "av_reinforce_loss", log_prob, NULL, NULL);
    advantage = av__like(c, log_prob, "av_reinforce_loss");
    for (i = 0; i < log_prob->size; i++) advantage->data[i] = cost[i] - baseline;
    return av_mean_all(c, av_mul(c, log_prob, advantage));
}

AVDEF av_baseline av_baseline_new(double decay) {
    av_baseline b;
    if (!(decay >= 0.0 && decay < 1.0)) av__fail("av_baseline_new: decay %g must be in [0, 1)", decay);
    b.value = 0.0;
    b.decay = decay;
    b.count = 0;
    return b;
}

AVDEF void av_baseline_update(av_baseline *b, const float *cost, int n) {
    double mean = 0;
    int i;
    if (n <= 0) return;
    for (i = 0; i < n; i++) mean += cost[i];
    mean /= n;
    b->value = b->count ? b->decay * b->value + (1.0 - b->decay) * mean : mean;
    b->count++;
}

/* ======================================================================= */
/* [3.7 conv] convolutions, pooling, resizing, channel normalisation      */
/* ======================================================================= */
/* ---- convolutions ----------------------------------------------------
   Both convolutions are one geometry seen from conv2d's side: an image X
   [B, Cx, H, W], the other side Y [B, Cy, Ho, Wo] and the weight [Cy,
   Cx/groups, kh, kw]. av_conv2d reads X and writes Y; av_conv_transpose2d
   reads Y and writes X. Three products cover both ops, forward and
   backward, per image and group g, each a sum over the kernel's taps
   t = (ky, kx) of a matrix product on the GEMM's micro-kernels:
     unfold:  Y_g += sum_t W_g,t X_g,t           conv2d forward, transposed dx
     fold:    X_g,t += W_g,t^T Y_g  (each t)     conv2d dx, transposed forward
     weight:  dW_g,t += Y_g X_g,t^T              both weight gradients
   where W_g,t [Cy/g, Cx/g] is tap t of the weight and X_g,t [Cx/g, outputs]
   holds, for every output, the pixel that tap t reads.

   X_g,t is a plain strided matrix, so the kernels read it in place (no
   im2col copy): the zero-padded image is cut by stride phase into planes,
   plane (c, py, px) holding the padded pixels (r sh + py, q sw + px), Hv + 1
   rows of Wv (then zeros: slack for the runs below). Output (oy, ox) reads
   tap (ky, kx) in plane (c, ky dh % sh, kx dw % sw) at row oy + ky dh / sh,
   column ox + kx dw / sw. Numbering outputs q = oy Wv + ox over rows of
   Wv >= Wo columns (the "virtual" columns ox >= Wo are computed and
   dropped), the pixels of tap t for all outputs are one run of each
   channel's plane. A read past the end of a row lands in the next row's
   left padding, so a row need not hold its own right padding (av__conv_wv):
   3x3 kernels with padding 1 waste one column per row, not two. Then X_g,t
   is X_g,t is the planes at a fixed offset, with the channel
   stride as its row stride, for any stride, padding and dilation. The
   weight product reads it transposed (channels last), from one transposed
   copy of the planes per image. Y is widened to rows of Wv with zeros in
   the virtual columns wherever it is an operand, so they add nothing. */
typedef struct av__conv {
    int B, groups, Cx, H, W, Cy, Ho, Wo;
    int kh, kw, sh, sw, ph, pw, dh, dw;
    int Hv, Wv; /* phase planes: Hv + 1 rows of Wv, then slack */
} av__conv;

#define AV__CONV_RUNS 8 /* weight gradients: partial sums over at most 8 runs of images, fixed by B */

/* What one call's images share: the ISA's tiles, sizes, the taps' offsets
   and the weight packed as A panels of MR rows (zero-padded):
     wa (unfold)  per group, tap, panel of output channels: [cx][MR]
     wt (fold)    per group, tap, panel of input channels:  [cy][MR] */
typedef struct av__conv_kit {
    const av__conv *g;
    const av__gemm_impl *im;
    int T, cx, cy, Nv, Nvp;    /* taps, channels per group, outputs, outputs rounded up to NR */
    size_t PS, CS;             /* floats per phase plane, per channel (all its phases) */
    const size_t *tap;         /* tap t's run: phase plane * PS + row * Wv + column */
    const float *wa, *wt;
} av__conv_kit;

static int av__conv_panels(int n, int P) { return (n + P - 1) / P; }

/* Columns q of a plane row read padded column q sw + px: image column
   q sw + px - pw, inside the image for q in [lo, hi). */
static void av__conv_cols(const av__conv *g, int px, int *lo, int *hi) {
    *lo = 0;
    while (*lo < g->Wv && *lo * g->sw + px - g->pw < 0) ++*lo;
    *hi = *lo;
    while (*hi < g->Wv && *hi * g->sw + px - g->pw < g->W) ++*hi;
}

/* The phase planes of one image x [Cx, H, W] (every float written). */
static void av__conv_planes(const av__conv_kit *k, const float *x, float *planes) {
    const av__conv *g = k->g;
    int c, py, px, r, q, lo, hi;
    for (c = 0; c < g->Cx; c++)
        for (py = 0; py < g->sh; py++)
            for (px = 0; px < g->sw; px++) {
                float *p = planes + c * k->CS + (size_t)(py * g->sw + px) * k->PS;
                av__conv_cols(g, px, &lo, &hi);
                for (r = 0; r < g->Hv; r++, p += g->Wv) {
                    int iy = r * g->sh + py - g->ph;
                    const float *row;
                    if (iy < 0 || iy >= g->H) {
                        memset(p, 0, (size_t)g->Wv * sizeof(float));
                        continue;
                    }
                    row = x + ((size_t)c * g->H + iy) * g->W + lo * g->sw + px - g->pw;
                    memset(p, 0, (size_t)lo * sizeof(float));
                    if (g->sw == 1) memcpy(p + lo, row, (size_t)(hi - lo) * sizeof(float));
                    else for (q = lo; q < hi; q++) p[q] = row[(q - lo) * g->sw];
                    memset(p + hi, 0, (size_t)(g->Wv - hi) * sizeof(float));
                }
                memset(p, 0, (k->PS - (size_t)g->Hv * g->Wv) * sizeof(float));
            }
}

/* x [Cx, H, W] += the planes' image pixels (the adjoint of av__conv_planes). */
static void av__conv_unplanes(const av__conv_kit *k, const float *planes, float *x) {
    const av__conv *g = k->g;
    int c, py, px, r, q;
    for (c = 0; c < g->Cx; c++)
        for (py = 0; py < g->sh; py++)
            for (px = 0; px < g->sw; px++) {
                const float *p = planes + c * k->CS + (size_t)(py * g->sw + px) * k->PS;
                for (r = 0; r < g->Hv; r++, p += g->Wv) {
                    int iy = r * g->sh + py - g->ph;
                    float *row = x + ((size_t)c * g->H + iy) * g->W;
                    if (iy < 0 || iy >= g->H) continue;
                    for (q = 0; q < g->Wv; q++) {
                        int ix = q * g->sw + px - g->pw;
                        if (ix >= 0 && ix < g->W) row[ix] += p[q];
                    }
                }
            }
}

/* Y's channels of one image [Cy, Ho, Wo] in rows of Wv: yv [Cy, Nvp], zeros
   in the virtual columns and past Nv. */
static void av__conv_widen(const av__conv_kit *k, const float *y, float *yv) {
    const av__conv *g = k->g;
    int c, r;
    for (c = 0; c < g->Cy; c++) {
        float *row = yv + (size_t)c * k->Nvp;
        for (r = 0; r < g->Ho; r++, row += g->Wv) {
            memcpy(row, y + ((size_t)c * g->Ho + r) * g->Wo, (size_t)g->Wo * sizeof(float));
            memset(row + g->Wo, 0, (size_t)(g->Wv - g->Wo) * sizeof(float));
        }
        memset(row, 0, (size_t)(k->Nvp - k->Nv) * sizeof(float));
    }
}

/* unfold: y [cy, Ho, Wo] += sum_t W_t X_t, tile by tile of MR output
   channels and NR outputs; the taps accumulate in the tile, whose real
   columns then go to y. With assign, y = bias (this group's, or 0) + the
   sum instead: every value of y is written once. planes: this group's
   channels. */
static void av__conv_unfold(const av__conv_kit *k, int grp, const float *planes, float *y, int assign, const float *bias) {
    const av__conv *g = k->g;
    const av__gemm_impl *im = k->im;
    int MR = im->mr, NR = im->nr, np = av__conv_panels(k->cy, MR), q0, i0, t, j, r;
    for (q0 = 0; q0 < k->Nv; q0 += NR) {
        long at[32]; /* where column j lands in y's plane, or -1 (NR <= 32) */
        int n = AV__MIN(NR, k->Nv - q0);
        for (j = 0; j < n; j++) at[j] = (q0 + j) % g->Wv < g->Wo ? (long)((q0 + j) / g->Wv) * g->Wo + (q0 + j) % g->Wv : -1;
        for (i0 = 0; i0 < k->cy; i0 += MR) {
            float tile[AV__MAX_TILE];
            for (t = 0; t < k->T; t++)
                im->kernel(k->cx, k->wa + ((size_t)(grp * k->T + t) * np + i0 / MR) * MR * k->cx, MR, planes + k->tap[t] + q0,
                           (int)k->CS, tile, NR, MR, NR, 1.0f, t ? 1.0f : 0.0f);
            for (r = 0; r < AV__MIN(MR, k->cy - i0); r++) {
                float *yr = y + (size_t)(i0 + r) * g->Ho * g->Wo, b0 = bias ? bias[i0 + r] : 0.0f;
                for (j = 0; j < n; j++)
                    if (at[j] >= 0) yr[at[j]] = tile[r * NR + j] + (assign ? b0 : yr[at[j]]);
            }
        }
    }
}

/* fold: the planes of this group's channels += W_t^T Y for each tap t,
   each product added at the tap's run. yv: this group's rows of Y. Taps
   go one after another over all outputs, so no tile overlaps the one
   written just before it. */
static void av__conv_fold(const av__conv_kit *k, int grp, const float *yv, float *planes) {
    const av__gemm_impl *im = k->im;
    int MR = im->mr, NR = im->nr, np = av__conv_panels(k->cx, MR), i0, t, q0;
    for (i0 = 0; i0 < k->cx; i0 += MR)
        for (t = 0; t < k->T; t++) {
            const float *a = k->wt + ((size_t)(grp * k->T + t) * np + i0 / MR) * MR * k->cy;
            for (q0 = 0; q0 < k->Nv; q0 += NR)
                im->kernel(k->cy, a, MR, yv + q0, k->Nvp, planes + (size_t)i0 * k->CS + k->tap[t] + q0, (int)k->CS,
                           AV__MIN(MR, k->cx - i0), AV__MIN(NR, k->Nv - q0), 1.0f, 1.0f);
        }
}

/* weight: dw [T][cy][cx] (this group's, tap-major) += Y X_t^T for each tap.
   ya: Y's rows as A panels over the outputs (MR rows, panels MR Nv apart);
   planes_t: the planes transposed, [CS][Cx] (+ NR floats of slack), read
   from this group's first channel with the row stride Cx. */
static void av__conv_weight(const av__conv_kit *k, const float *ya, const float *planes_t, float *dw) {
    const av__gemm_impl *im = k->im;
    int MR = im->mr, NR = im->nr, Cx = k->g->Cx, t, qb, i0, j0;
    for (t = 0; t < k->T; t++)
        for (qb = 0; qb < k->Nv; qb += im->kc) {
            int kc = AV__MIN(im->kc, k->Nv - qb);
            for (i0 = 0; i0 < k->cy; i0 += MR)
                for (j0 = 0; j0 < k->cx; j0 += NR)
                    im->kernel(kc, ya + (size_t)i0 * k->Nv + (size_t)qb * MR, MR, planes_t + (k->tap[t] + qb) * Cx + j0, Cx,
                               dw + ((size_t)t * k->cy + i0) * k->cx + j0, k->cx, AV__MIN(MR, k->cy - i0),
                               AV__MIN(NR, k->cx - j0), 1.0f, 1.0f);
        }
}

/* One product's operands and outputs (NULL: not wanted). */
typedef struct av__conv_job {
    const float *w;    /* [Cy, Cx/groups, kh, kw] */
    const float *x;    /* X (for y_out and dw) */
    const float *y;    /* Y (for x_out and dw) */
    float *y_out;      /* Y += unfold, or with y_assign Y = y_bias (or 0) + unfold */
    int y_assign;
    const float *y_bias;
    float *x_out;      /* X += fold */
    float *dw;         /* dW += weight */
} av__conv_job;

/* One thread's scratch: X's planes, their transpose, Y widened and as A panels. */
typedef struct av__conv_work { float *planes, *planes_t, *yv, *ya; } av__conv_work;

/* The floats of one thread's scratch; with w, its parts laid out from base. */
static size_t av__conv_work_floats(const av__conv_kit *k, av__conv_work *w, float *base) {
    const av__conv *g = k->g;
    size_t sizes[4], total = 0;
    int i;
    sizes[0] = (size_t)g->Cx * k->CS;
    sizes[1] = (size_t)g->Cx * k->CS + (size_t)k->im->nr;
    sizes[2] = (size_t)g->Cy * k->Nvp;
    sizes[3] = (size_t)g->groups * av__conv_panels(k->cy, k->im->mr) * k->im->mr * k->Nv;
    for (i = 0; i < 4; i++) {
        if (w) *(i == 0 ? &w->planes : i == 1 ? &w->planes_t : i == 2 ? &w->yv : &w->ya) = base + total;
        total += (sizes[i] + 15) / 16 * 16;
    }
    return total;
}

/* Image b: the products asked for. dw is the partial sum of this image's
   run, tap-major: [group][T][cy][cx]. */
static void av__conv_image(const av__conv_kit *k, const av__conv_job *j, int b, float *dw, const av__conv_work *s) {
    const av__conv *g = k->g;
    size_t xs = (size_t)g->Cx * g->H * g->W, ys = (size_t)g->Cy * g->Ho * g->Wo;
    int MR = k->im->mr, grp;
    if (j->y_out || dw) av__conv_planes(k, j->x + b * xs, s->planes);
    if (dw) { /* the planes transposed, and Y as A panels over the outputs */
        av__pack(s->planes_t, g->Cx, s->planes, k->CS, 0, g->Cx, (int)k->CS, k->im->transpose8);
        memset(s->planes_t + (size_t)g->Cx * k->CS, 0, (size_t)k->im->nr * sizeof(float));
    }
    if (j->x_out || dw) av__conv_widen(k, j->y + b * ys, s->yv);
    for (grp = 0; grp < g->groups; grp++) {
        const float *yv = s->yv + (size_t)grp * k->cy * k->Nvp;
        float *ya = s->ya + (size_t)grp * av__conv_panels(k->cy, MR) * MR * k->Nv;
        if (j->y_out)
            av__conv_unfold(k, grp, s->planes + (size_t)grp * k->cx * k->CS, j->y_out + b * ys + (size_t)grp * k->cy * g->Ho * g->Wo,
                            j->y_assign, j->y_bias ? j->y_bias + (size_t)grp * k->cy : NULL);
        if (dw) {
            av__panels_by_rows(ya, MR, yv, k->cy, k->Nv, (size_t)k->Nvp);
            av__conv_weight(k, ya, s->planes_t + (size_t)grp * k->cx, dw + (size_t)grp * k->T * k->cy * k->cx);
        }
    }
    if (!j->x_out) return;
    memset(s->planes, 0, (size_t)g->Cx * k->CS * sizeof(float)); /* now X's gradient, or output */
    for (grp = 0; grp < g->groups; grp++)
        av__conv_fold(k, grp, s->yv + (size_t)grp * k->cy * k->Nvp, s->planes + (size_t)grp * k->cx * k->CS);
    av__conv_unplanes(k, s->planes, j->x_out + b * xs);
}

/* The shared part of a call: taps and the packed weight, in the arena. */
static av__conv_kit av__conv_kit_new(av_ctx *c, const av__conv *g, const float *w) {
    av__conv_kit k;
    int MR, NR, t, grp, p, i, r, npy, npx, e;
    size_t *tap;
    float *wa, *wt;
    k.g = g;
    k.im = av__impl_for(av_get_isa());
    MR = k.im->mr;
    NR = k.im->nr;
    k.T = g->kh * g->kw;
    k.cx = g->Cx / g->groups;
    k.cy = g->Cy / g->groups;
    k.Nv = g->Ho * g->Wv;
    k.Nvp = av__conv_panels(k.Nv, NR) * NR;
    k.PS = (size_t)(g->Hv + 1) * g->Wv + (size_t)NR;
    k.CS = (size_t)g->sh * g->sw * k.PS;
    tap = (size_t *)av__arena_alloc(&c->arena, (size_t)k.T * sizeof(size_t));
    for (t = 0; t < k.T; t++) {
        int ky = t / g->kw, kx = t % g->kw;
        tap[t] = (size_t)(ky * g->dh % g->sh * g->sw + kx * g->dw % g->sw) * k.PS +
                 (size_t)(ky * g->dh / g->sh) * g->Wv + (size_t)(kx * g->dw / g->sw);
    }
    k.tap = tap;
    npy = av__conv_panels(k.cy, MR);
    npx = av__conv_panels(k.cx, MR);
    wa = (float *)av__arena_alloc(&c->arena, ((size_t)g->groups * k.T * npy * MR * k.cx + 1) * sizeof(float));
    wt = (float *)av__arena_alloc(&c->arena, ((size_t)g->groups * k.T * npx * MR * k.cy + 1) * sizeof(float));
    for (grp = 0; grp < g->groups; grp++)
        for (t = 0; t < k.T; t++) {
            float *pa = wa + (size_t)(grp * k.T + t) * npy * MR * k.cx, *pt = wt + (size_t)(grp * k.T + t) * npx * MR * k.cy;
            for (p = 0; p < npy; p++) /* rows: output channels p MR + r, k over input channels i */
                for (i = 0; i < k.cx; i++)
                    for (r = 0; r < MR; r++) {
                        e = p * MR + r;
                        *pa++ = e < k.cy ? w[((size_t)(grp * k.cy + e) * k.cx + i) * k.T + t] : 0.0f;
                    }
            for (p = 0; p < npx; p++) /* rows: input channels p MR + r, k over output channels i */
                for (i = 0; i < k.cy; i++)
                    for (r = 0; r < MR; r++) {
                        e = p * MR + r;
                        *pt++ = e < k.cx ? w[((size_t)(grp * k.cy + i) * k.cx + e) * k.T + t] : 0.0f;
                    }
        }
    k.wa = wa;
    k.wt = wt;
    return k;
}

/* Every image; threads take runs of images (one image per run without
   dw). Weight gradients sum per run, tap-major, then over the runs in
   order into dW's layout: the runs depend on B alone, so any number of
   threads gives the same bits. */
static void av__conv_run(av_ctx *c, const av__conv *g, const av__conv_job *j) {
    av__conv_kit k;
    int runs = j->dw ? AV__MIN(g->B, AV__CONV_RUNS) : g->B, nt = 1, t;
    size_t per, wn = (size_t)g->Cy * (g->Cx / g->groups) * g->kh * g->kw, i;
    float *partial = NULL, *scratch;
    if (g->B == 0) return;
    k = av__conv_kit_new(c, g, j->w);
    per = av__conv_work_floats(&k, NULL, NULL);
#ifdef _OPENMP
    if (runs > 1 && !omp_in_parallel() && 2.0 * g->B * g->Cy * k.cx * k.T * k.Nv > 1e6)
        nt = AV__MIN(av_get_num_threads(), runs);
#endif
    if (j->dw) {
        partial = (float *)av__arena_alloc(&c->arena, (size_t)runs * wn * sizeof(float));
        memset(partial, 0, (size_t)runs * wn * sizeof(float));
    }
    scratch = (float *)av__arena_alloc(&c->arena, (size_t)nt * per * sizeof(float));
    AV_OMP(omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1))
    for (t = 0; t < runs; t++) {
        av__conv_work s;
        int b, me = 0;
#ifdef _OPENMP
        me = omp_get_thread_num();
#endif
        av__conv_work_floats(&k, &s, scratch + (size_t)me * per);
        for (b = t * g->B / runs; b < (t + 1) * g->B / runs; b++)
            av__conv_image(&k, j, b, partial ? partial + (size_t)t * wn : NULL, &s);
    }
    if (partial) /* [group][T][cy][cx] -> [group][cy][cx][T] */
        for (i = 0; i < wn; i++) {
            size_t tap = i % k.T, e = i / k.T, ci = e % k.cx, co = e / k.cx % k.cy, grp = e / k.cx / k.cy;
            size_t from = ((grp * k.T + tap) * k.cy + co) * k.cx + ci;
            float sum = 0;
            for (t = 0; t < runs; t++) sum += partial[(size_t)t * wn + from];
            j->dw[i] += sum;
        }
}

/* t [B, C, n] = bias[c], or 0 */
static void av__fill_channels(float *t, int B, int C, int n, const float *bias) {
    int b, ch, i;
    for (b = 0; b < B; b++)
        for (ch = 0; ch < C; ch++) {
            float *p = t + ((size_t)b * C + ch) * n, v = bias ? bias[ch] : 0.0f;
            for (i = 0; i < n; i++) p[i] = v;
        }
}

/* db[c] += sum of g [B, C, n] over b and n: each run of n in 8 float
   lanes (the compiler vectorizes a fixed 8), the runs in double */
static void av__channel_sums(const float *g, int B, int C, int n, float *db) {
    int ch;
    AV__PAR((long)B * C * n)
    for (ch = 0; ch < C; ch++) {
        double s = 0;
        int b, i, l;
        for (b = 0; b < B; b++) {
            const float *p = g + ((size_t)b * C + ch) * n;
            float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (i = 0; i + 8 <= n; i += 8)
                for (l = 0; l < 8; l++) lane[l] += p[i + l];
            for (; i < n; i++) lane[0] += p[i];
            for (l = 0; l < 8; l++) s += lane[l];
        }
        db[ch] += (float)s;
    }
}

static av_conv_opts av__conv_defaults(const av_conv_opts *o) {
    av_conv_opts d;
    int i;
    memset(&d, 0, sizeof d);
    if (o) d = *o;
    for (i = 0; i < 2; i++) {
        if (!d.stride[i]) d.stride[i] = 1;
        if (!d.dilation[i]) d.dilation[i] = 1;
    }
    if (!d.groups) d.groups = 1;
    return d;
}

/* The plane width: Wo + (kw - 1) dw / sw holds every read in its own row;
   fewer columns do when each read past the row's end (i) falls on right
   padding and (ii) lands on the next row's left padding (L columns of
   phase px): Wv sw + px - pw >= W, and Wo - 1 + rx_max(px) - Wv < L(px). */
static int av__conv_wv(const av__conv *g) {
    int wv = g->Wo, px, kx;
    for (px = 0; px < g->sw; px++) {
        int reach = -1, left = g->pw > px ? (g->pw - px + g->sw - 1) / g->sw : 0, own, wrap;
        for (kx = 0; kx < g->kw; kx++)
            if (kx * g->dw % g->sw == px && kx * g->dw / g->sw > reach) reach = kx * g->dw / g->sw;
        own = (g->W + g->pw - px + g->sw - 1) / g->sw;
        wrap = reach >= 0 ? g->Wo + reach - left : 0;
        wv = wv > own ? wv : own;
        wv = wv > wrap ? wv : wrap;
    }
    return AV__MIN(wv, g->Wo + (g->kw - 1) * g->dw / g->sw);
}

/* The geometry of av_conv2d (transposed 0) or av_conv_transpose2d, checked. */
static av__conv av__conv_plan(const char *op, const av_tensor *x, const av_tensor *w, const av_tensor *b,
                              const av_conv_opts *opts, int transposed) {
    av_conv_opts o = av__conv_defaults(opts);
    av__conv g;
    int i, size[2], out[2], k[2], G = o.groups;
    memset(&g, 0, sizeof g);
    if (x->ndim != 4) av__fail_shapes(op, "x must be [B, C, H, W]", x, NULL);
    if (w->ndim != 4) av__fail_shapes(op, transposed ? "w must be [Cin, Cout/groups, kh, kw]" : "w must be [Cout, Cin/groups, kh, kw]", w, NULL);
    for (i = 0; i < 2; i++)
        if (o.stride[i] < 1 || o.dilation[i] < 1 || o.padding[i] < 0 || o.output_padding[i] < 0)
            av__fail("%s: stride (%d, %d) and dilation (%d, %d) must be >= 1, padding (%d, %d) and output_padding "
                     "(%d, %d) >= 0", op, o.stride[0], o.stride[1], o.dilation[0], o.dilation[1], o.padding[0],
                     o.padding[1], o.output_padding[0], o.output_padding[1]);
    if (G < 1) av__fail("%s: groups %d must be >= 1", op, G);
    k[0] = w->shape[2]; k[1] = w->shape[3];
    if (!transposed) {
        if (o.output_padding[0] || o.output_padding[1]) av__fail("%s: output_padding is for av_conv_transpose2d", op);
        if (w->shape[0] % G || x->shape[1] != w->shape[1] * G)
            av__fail_shapes(op, "x's channels must be w's dim 1 times groups, and w's dim 0 a multiple of groups", x, w);
        g.Cx = x->shape[1]; g.Cy = w->shape[0];
    } else {
        for (i = 0; i < 2; i++)
            if (o.output_padding[i] >= o.stride[i] && o.output_padding[i] >= o.dilation[i])
                av__fail("%s: output_padding (%d, %d) must be smaller than stride (%d, %d) or dilation (%d, %d)", op,
                         o.output_padding[0], o.output_padding[1], o.stride[0], o.stride[1], o.dilation[0], o.dilation[1]);
        if (w->shape[0] % G || x->shape[1] != w->shape[0])
            av__fail_shapes(op, "x's channels must be w's dim 0, a multiple of groups", x, w);
        g.Cx = w->shape[1] * G; g.Cy = w->shape[0];
    }
    if (b && (b->ndim != 1 || b->shape[0] != (transposed ? g.Cx : g.Cy)))
        av__fail_shapes(op, "bias must be [Cout]", w, b);
    for (i = 0; i < 2; i++) {
        long span = (long)o.dilation[i] * (k[i] - 1) + 1, n;
        size[i] = x->shape[2 + i];
        if (!transposed) n = size[i] + 2L * o.padding[i] - span; /* Ho - 1 = n / stride */
        else n = (long)(size[i] - 1) * o.stride[i] - 2L * o.padding[i] + span + o.output_padding[i] - 1;
        if (k[i] < 1 || n < 0 || (transposed && size[i] < 1) || n / (transposed ? 1 : o.stride[i]) >= 0x7fffffffL)
            av__fail_shapes(op, transposed ? "the output would be empty" : "the kernel is larger than the padded input", x, w);
        out[i] = (int)(transposed ? n + 1 : n / o.stride[i] + 1);
    }
    g.B = x->shape[0]; g.groups = G;
    g.H = transposed ? out[0] : size[0]; g.W = transposed ? out[1] : size[1];
    g.Ho = transposed ? size[0] : out[0]; g.Wo = transposed ? size[1] : out[1];
    g.kh = k[0]; g.kw = k[1];
    g.sh = o.stride[0]; g.sw = o.stride[1];
    g.ph = o.padding[0]; g.pw = o.padding[1];
    g.dh = o.dilation[0]; g.dw = o.dilation[1];
    g.Hv = g.Ho + (g.kh - 1) * g.dh / g.sh;
    g.Wv = av__conv_wv(&g);
    return g;
}

/* conv2d: in x, w, b; dx = fold(W^T dY), dW = dY unfold(X)^T, db = sums of dY */
static void av__conv2d_backward(av_ctx *c, av__node *n) {
    const av__conv *g = (const av__conv *)n->args;
    av__conv_job j;
    float *db = av__in_grad(n, 2);
    memset(&j, 0, sizeof j);
    j.w = n->in[1]->data;
    j.y = n->out[0]->grad;
    j.x_out = av__in_grad(n, 0);
    j.dw = av__in_grad(n, 1);
    j.x = j.dw ? n->in[0]->data : NULL;
    if (j.x_out || j.dw) av__conv_run(c, g, &j);
    if (db) av__channel_sums(n->out[0]->grad, g->B, g->Cy, g->Ho * g->Wo, db);
}

AVDEF av_tensor *av_conv2d(av_ctx *c, av_tensor *x, av_tensor *w, av_tensor *b, const av_conv_opts *opts) {
    av__conv g;
    av__conv_job j;
    av_tensor *out;
    av__node *n;
    int shape[4];
    av__live(c, "av_conv2d", x, w, b);
    g = av__conv_plan("av_conv2d", x, w, b, opts, 0);
    shape[0] = g.B; shape[1] = g.Cy; shape[2] = g.Ho; shape[3] = g.Wo;
    out = av__tensor_empty(c, 4, shape, "av_conv2d");
    memset(&j, 0, sizeof j);
    j.w = w->data;
    j.x = x->data;
    j.y_out = out->data;
    j.y_assign = 1;
    j.y_bias = b ? b->data : NULL;
    av__conv_run(c, &g, &j);
    n = av__record(c, "av_conv2d", av__conv2d_backward, out, 3, x, w, b);
    if (n) n->args = AV__KEEP(c, g);
    return out;
}

/* conv_transpose2d: in x (Y's side), w, b; dx = W unfold(dY), dW = x unfold(dY)^T, db = sums of dY */
static void av__conv_transpose2d_backward(av_ctx *c, av__node *n) {
    const av__conv *g = (const av__conv *)n->args;
    av__conv_job j;
    float *db = av__in_grad(n, 2);
    memset(&j, 0, sizeof j);
    j.w = n->in[1]->data;
    j.x = n->out[0]->grad;
    j.y_out = av__in_grad(n, 0);
    j.dw = av__in_grad(n, 1);
    j.y = n->in[0]->data;
    if (j.y_out || j.dw) av__conv_run(c, g, &j);
    if (db) av__channel_sums(n->out[0]->grad, g->B, g->Cx, g->H * g->W, db);
}

AVDEF av_tensor *av_conv_transpose2d(av_ctx *c, av_tensor *x, av_tensor *w, av_tensor *b, const av_conv_opts *opts) {
    av__conv g;
    av__conv_job j;
    av_tensor *out;
    av__node *n;
    int shape[4];
    av__live(c, "av_conv_transpose2d", x, w, b);
    g = av__conv_plan("av_conv_transpose2d", x, w, b, opts, 1);
    shape[0] = g.B; shape[1] = g.Cx; shape[2] = g.H; shape[3] = g.W;
    out = av__tensor_empty(c, 4, shape, "av_conv_transpose2d");
    av__fill_channels(out->data, g.B, g.Cx, g.H * g.W, b ? b->data : NULL);
    memset(&j, 0, sizeof j);
    j.w = w->data;
    j.y = x->data;
    j.x_out = out->data;
    av__conv_run(c, &g, &j);
    n = av__record(c, "av_conv_transpose2d", av__conv_transpose2d_backward, out, 3, x, w, b);
    if (n) n->args = AV__KEEP(c, g);
    return out;
}

/* ---- pooling ---------------------------------------------------------
   Windows per output row and column: [start, end) clipped to the image,
   and the count PyTorch divides by when padding counts (the window clipped
   to the padded image only). Max pooling saves the index of each window's
   first largest value (or last NaN, as PyTorch) and routes the gradient
   there; average pooling spreads it evenly. */
typedef struct av__window { int start, end, padded; } av__window;
typedef struct av__pool {
    int planes, H, W, Ho, Wo, count_include_pad;
    const av__window *wy, *wx;
} av__pool;

/* kernel, stride, padding along an axis of n: PyTorch's windows */
static av__window *av__windows(av_ctx *c, int n, int out, int kernel, int stride, int padding, int adaptive) {
    av__window *w = (av__window *)av__arena_alloc(&c->arena, (size_t)(out + 1) * sizeof(av__window));
    int o;
    for (o = 0; o < out; o++) {
        int start = adaptive ? (int)((long)o * n / out) : o * stride - padding;
        int end = adaptive ? (int)((((long)o + 1) * n + out - 1) / out) : AV__MIN(start + kernel, n + padding);
        w[o].padded = end - start;
        w[o].start = start < 0 ? 0 : start;
        w[o].end = AV__MIN(end, n);
    }
    return w;
}

/* x [B, C, H, W] as planes, and the output's shape */
static av__pool av__pool_plan(av_ctx *c, const char *op, const av_tensor *x, int kernel, int stride, int padding,
                              int out_h, int out_w, int adaptive) {
    av__pool p;
    memset(&p, 0, sizeof p);
    if (x->ndim != 4) av__fail_shapes(op, "x must be [B, C, H, W]", x, NULL);
    p.planes = x->shape[0] * x->shape[1];
    p.H = x->shape[2];
    p.W = x->shape[3];
    if (adaptive) {
        if (out_h < 1 || out_w < 1 || p.H < 1 || p.W < 1)
            av__fail("%s: output size (%d, %d) must be >= 1 and the input not empty (x is %dx%d)", op, out_h, out_w, p.H, p.W);
        p.Ho = out_h;
        p.Wo = out_w;
    } else {
        if (kernel < 1 || stride < 1 || padding < 0 || 2 * padding > kernel)
            av__fail("%s: kernel %d and stride %d must be >= 1, padding %d between 0 and kernel / 2", op, kernel, stride, padding);
        if (p.H + 2 * padding < kernel || p.W + 2 * padding < kernel) av__fail_shapes(op, "the kernel is larger than the padded input", x, NULL);
        p.Ho = (p.H + 2 * padding - kernel) / stride + 1;
        p.Wo = (p.W + 2 * padding - kernel) / stride + 1;
    }
    p.wy = av__windows(c, p.H, p.Ho, kernel, stride, padding, adaptive);
    p.wx = av__windows(c, p.W, p.Wo, kernel, stride, padding, adaptive);
    return p;
}

static av_tensor *av__pool_out(av_ctx *c, const av_tensor *x, const av__pool *p, const char *op) {
    int shape[4];
    shape[0] = x->shape[0]; shape[1] = x->shape[1]; shape[2] = p->Ho; shape[3] = p->Wo;
    return av__tensor_empty(c, 4, shape, op);
}

static void av__max_pool_backward(av_ctx *c, av__node *n) {
    const av__pool *p = (const av__pool *)n->args;
    const int *arg = (const int *)n->saved;
    int pl, o, per = p->Ho * p->Wo;
    (void)c;
    AV__PAR((long)p->planes * per)
    for (pl = 0; pl < p->planes; pl++)
        for (o = 0; o < per; o++)
            n->in[0]->grad[(size_t)pl * p->H * p->W + arg[(size_t)pl * per + o]] += n->out[0]->grad[(size_t)pl * per + o];
}

AVDEF av_tensor *av_max_pool2d(av_ctx *c, av_tensor *x, int kernel, int stride, int padding) {
    av__pool p;
    av_tensor *out;
    av__node *n;
    int *arg, pl, per;
    av__live(c, "av_max_pool2d", x, NULL, NULL);
    p = av__pool_plan(c, "av_max_pool2d", x, kernel, stride ? stride : kernel, padding, 0, 0, 0);
    out = av__pool_out(c, x, &p, "av_max_pool2d");
    per = p.Ho * p.Wo;
    arg = (int *)av__arena_alloc(&c->arena, ((size_t)out->size + 1) * sizeof(int));
    AV__PAR((long)p.planes * per * kernel * kernel)
    for (pl = 0; pl < p.planes; pl++) {
        const float *xp = x->data + (size_t)pl * p.H * p.W;
        int oy, ox, iy, ix;
        for (oy = 0; oy < p.Ho; oy++)
            for (ox = 0; ox < p.Wo; ox++) {
                const av__window *wy = &p.wy[oy], *wx = &p.wx[ox];
                int best = wy->start * p.W + wx->start;
                for (iy = wy->start; iy < wy->end; iy++)
                    for (ix = wx->start; ix < wx->end; ix++) {
                        float v = xp[iy * p.W + ix];
                        if (v > xp[best] || v != v) best = iy * p.W + ix;
                    }
                out->data[(size_t)pl * per + oy * p.Wo + ox] = xp[best];
                arg[(size_t)pl * per + oy * p.Wo + ox] = best;
            }
    }
    n = av__record(c, "av_max_pool2d", av__max_pool_backward, out, 1, x);
    if (n) {
        n->args = AV__KEEP(c, p);
        n->saved = arg;
    }
    return out;
}

/* the divisor of output (oy, ox) */
static float av__pool_count(const av__pool *p, int oy, int ox) {
    const av__window *wy = &p->wy[oy], *wx = &p->wx[ox];
    return p->count_include_pad ? (float)(wy->padded * wx->padded)
                                : (float)((wy->end - wy->start) * (wx->end - wx->start));
}

static void av__avg_pool_backward(av_ctx *c, av__node *n) {
    const av__pool *p = (const av__pool *)n->args;
    int pl;
    (void)c;
    AV__PAR((long)p->planes * p->H * p->W)
    for (pl = 0; pl < p->planes; pl++) {
        float *gx = n->in[0]->grad + (size_t)pl * p->H * p->W;
        const float *g = n->out[0]->grad + (size_t)pl * p->Ho * p->Wo;
        int oy, ox, iy, ix;
        for (oy = 0; oy < p->Ho; oy++)
            for (ox = 0; ox < p->Wo; ox++) {
                float d = g[oy * p->Wo + ox] / av__pool_count(p, oy, ox);
                for (iy = p->wy[oy].start; iy < p->wy[oy].end; iy++)
                    for (ix = p->wx[ox].start; ix < p->wx[ox].end; ix++) gx[iy * p->W + ix] += d;
            }
    }
}

static av_tensor *av__avg_pool(av_ctx *c, const char *op, av_tensor *x, const av__pool *p) {
    av_tensor *out;
    av__node *n;
    int pl;
    out = av__pool_out(c, x, p, op);
    AV__PAR((long)p->planes * p->H * p->W)
    for (pl = 0; pl < p->planes; pl++) {
        const float *xp = x->data + (size_t)pl * p->H * p->W;
        int oy, ox, iy, ix;
        for (oy = 0; oy < p->Ho; oy++)
            for (ox = 0; ox < p->Wo; ox++) {
                double s = 0;
                for (iy = p->wy[oy].start; iy < p->wy[oy].end; iy++)
                    for (ix = p->wx[ox].start; ix < p->wx[ox].end; ix++) s += xp[iy * p->W + ix];
                out->data[(size_t)pl * p->Ho * p->Wo + oy * p->Wo + ox] = (float)(s / av__pool_count(p, oy, ox));
            }
    }
    n = av__record(c, op, av__avg_pool_backward, out, 1, x);
    if (n) n->args = AV__KEEP(c, *p);
    return out;
}

AVDEF av_tensor *av_avg_pool2d(av_ctx *c, av_tensor *x, int kernel, int stride, int padding, int count_include_pad) {
    av__pool p;
    av__live(c, "av_avg_pool2d", x, NULL, NULL);
    p = av__pool_plan(c, "av_avg_pool2d", x, kernel, stride ? stride : kernel, padding, 0, 0, 0);
    p.count_include_pad = count_include_pad != 0;
    return av__avg_pool(c, "av_avg_pool2d", x, &p);
}

AVDEF av_tensor *av_adaptive_avg_pool2d(av_ctx *c, av_tensor *x, int out_h, int out_w) {
    av__pool p;
    av__live(c, "av_adaptive_avg_pool2d", x, NULL, NULL);
    p = av__pool_plan(c, "av_adaptive_avg_pool2d", x, 0, 0, 0, out_h, out_w, 1);
    return av__avg_pool(c, "av_adaptive_avg_pool2d", x, &p);
}

/* ---- resizing --------------------------------------------------------
   Each output row (column) reads two source rows i0, i1 with weights l0,
   l1, from PyTorch's rules (scale = in / out, in float):
     nearest:  i0 = min(floor(o scale), in - 1)
     bilinear (align_corners false): s = max(scale (o + 0.5) - 0.5, 0),
               i0 = floor(s), i1 = min(i0 + 1, in - 1), l1 = s - i0, l0 = 1 - l1
   y = l0y (l0x x[i0y][i0x] + l1x x[i0y][i1x]) + l1y (...); nearest copies
   x[i0y][i0x]. The backward adds g times the same weights. */
typedef struct av__tap { int i0, i1; float l0, l1; } av__tap;
typedef struct av__resize { int planes, H, W, Ho, Wo, bilinear; const av__tap *ty, *tx; } av__resize;

static av__tap *av__taps(av_ctx *c, int in, int out, int bilinear) {
    av__tap *t = (av__tap *)av__arena_alloc(&c->arena, (size_t)(out + 1) * sizeof(av__tap));
    float scale = (float)in / (float)out;
    int o;
    for (o = 0; o < out; o++) {
        if (bilinear) {
            float s = scale * ((float)o + 0.5f) - 0.5f;
            if (s < 0) s = 0;
            t[o].i0 = (int)s;
            t[o].i1 = t[o].i0 + (t[o].i0 < in - 1);
            t[o].l1 = s - (float)t[o].i0;
            t[o].l0 = 1.0f - t[o].l1;
        } else {
            t[o].i0 = t[o].i1 = AV__MIN((int)floorf((float)o * scale), in - 1);
            t[o].l0 = 1.0f;
            t[o].l1 = 0.0f;
        }
    }
    return t;
}

static void av__resize_backward(av_ctx *c, av__node *n) {
    const av__resize *r = (const av__resize *)n->args;
    int pl;
    (void)c;
    AV__PAR((long)r->planes * r->Ho * r->Wo)
    for (pl = 0; pl < r->planes; pl++) {
        float *gx = n->in[0]->grad + (size_t)pl * r->H * r->W;
        const float *g = n->out[0]->grad + (size_t)pl * r->Ho * r->Wo;
        int oy, ox;
        for (oy = 0; oy < r->Ho; oy++)
            for (ox = 0; ox < r->Wo; ox++) {
                const av__tap *ty = &r->ty[oy], *tx = &r->tx[ox];
                float d = g[oy * r->Wo + ox];
                if (!r->bilinear) {
                    gx[ty->i0 * r->W + tx->i0] += d;
                    continue;
                }
                gx[ty->i0 * r->W + tx->i0] += d * ty->l0 * tx->l0;
                gx[ty->i0 * r->W + tx->i1] += d * ty->l0 * tx->l1;
                gx[ty->i1 * r->W + tx->i0] += d * ty->l1 * tx->l0;
                gx[ty->i1 * r->W + tx->i1] += d * ty->l1 * tx->l1;
            }
    }
}

static av_tensor *av__resize_op(av_ctx *c, const char *op, av_tensor *x, int out_h, int out_w, int bilinear) {
    av__resize r;
    av_tensor *out;
    av__node *n;
    int shape[4], pl;
    av__live(c, op, x, NULL, NULL);
    if (x->ndim != 4) av__fail_shapes(op, "x must be [B, C, H, W]", x, NULL);
    if (out_h < 1 || out_w < 1 || x->shape[2] < 1 || x->shape[3] < 1)
        av__fail("%s: output size (%d, %d) must be >= 1 and the input not empty (x is %dx%d)", op, out_h, out_w,
                 x->shape[2], x->shape[3]);
    r.planes = x->shape[0] * x->shape[1];
    r.H = x->shape[2]; r.W = x->shape[3];
    r.Ho = out_h; r.Wo = out_w;
    r.bilinear = bilinear;
    r.ty = av__taps(c, r.H, r.Ho, bilinear);
    r.tx = av__taps(c, r.W, r.Wo, bilinear);
    shape[0] = x->shape[0]; shape[1] = x->shape[1]; shape[2] = out_h; shape[3] = out_w;
    out = av__tensor_empty(c, 4, shape, op);
    AV__PAR((long)r.planes * r.Ho * r.Wo)
    for (pl = 0; pl < r.planes; pl++) {
        const float *xp = x->data + (size_t)pl * r.H * r.W;
        float *y = out->data + (size_t)pl * r.Ho * r.Wo;
        int oy, ox;
        for (oy = 0; oy < r.Ho; oy++) {
            const float *x0 = xp + r.ty[oy].i0 * r.W, *x1 = xp + r.ty[oy].i1 * r.W;
            for (ox = 0; ox < r.Wo; ox++) {
                const av__tap *tx = &r.tx[ox];
                y[oy * r.Wo + ox] = !bilinear ? x0[tx->i0]
                                              : r.ty[oy].l0 * (tx->l0 * x0[tx->i0] + tx->l1 * x0[tx->i1]) +
                                                    r.ty[oy].l1 * (tx->l0 * x1[tx->i0] + tx->l1 * x1[tx->i1]);
            }
        }
    }
    n = av__record(c, op, av__resize_backward, out, 1, x);
    if (n) n->args = AV__KEEP(c, r);
    return out;
}

AVDEF av_tensor *av_upsample_nearest2d(av_ctx *c, av_tensor *x, int out_h, int out_w) {
    return av__resize_op(c, "av_upsample_nearest2d", x, out_h, out_w, 0);
}
AVDEF av_tensor *av_upsample_bilinear2d(av_ctx *c, av_tensor *x, int out_h, int out_w) {
    return av__resize_op(c, "av_upsample_bilinear2d", x, out_h, out_w, 1);
}

/* ---- channel normalisation -------------------------------------------
   Batch and group norm normalise sets of values with their mean and
   biased variance: xhat = (x - mean) rstd, rstd = 1 / sqrt(var + eps),
   y = xhat weight[c] + bias[c]. Over a set of n values with d = g weight:
     dx = rstd (d - mean(d) - xhat mean(d xhat)),
   or dx = rstd d when the statistics are constants (batch norm in eval).
   dweight[c] = sum g xhat, dbias[c] = sum g, over b and the positions.
   Saved: mean and rstd per set. x [B, C, *] (any rank >= 2: C is axis 1). */
typedef struct av__norm_args {
    int B, C, inner, groups; /* sets: (b, group) for group norm, channels for batch norm (groups 0) */
    int frozen;              /* batch norm in eval: constant statistics */
} av__norm_args;

static void av__norm_dims(const char *op, const av_tensor *x, const av_tensor *w, const av_tensor *b, av__norm_args *a) {
    int i;
    if (x->ndim < 2) av__fail_shapes(op, "x must be [B, C, ...]", x, NULL);
    a->B = x->shape[0];
    a->C = x->shape[1];
    for (i = 2, a->inner = 1; i < x->ndim; i++) a->inner *= x->shape[i];
    if (w && (w->ndim != 1 || w->shape[0] != a->C)) av__fail_shapes(op, "weight must be [C]", x, w);
    if (b && (b->ndim != 1 || b->shape[0] != a->C)) av__fail_shapes(op, "bias must be [C]", x, b);
}

/* Where channel ch of image b starts: inner floats at (b C + ch) inner. */
static size_t av__chan(const av__norm_args *a, int b, int ch) { return ((size_t)b * a->C + ch) * a->inner; }

/* y for channel ch of image b from the set's mean and rstd */
static void av__norm_apply(const av__norm_args *a, const float *x, float *y, int b, int ch, float mean, float rstd,
                           const av_tensor *w, const av_tensor *bias) {
    const float *xs = x + av__chan(a, b, ch);
    float *ys = y + av__chan(a, b, ch), s = rstd * (w ? w->data[ch] : 1.0f), o = bias ? bias->data[ch] : 0.0f;
    int i;
    for (i = 0; i < a->inner; i++) ys[i] = (xs[i] - mean) * s + o;
}

/* dweight and dbias: per channel, over images in order */
static void av__norm_affine_grads(const av__node *n, const av__norm_args *a, float *dw, float *db) {
    const float *stats = (const float *)n->saved, *x = n->in[0]->data, *g = n->out[0]->grad;
    int ch;
    AV__PAR((long)a->B * a->C * a->inner)
    for (ch = 0; ch < a->C; ch++) {
        double sw = 0, sb = 0;
        int b, i;
        for (b = 0; b < a->B; b++) {
            int set = a->groups ? b * a->groups + ch / (a->C / a->groups) : ch;
            const float *xs = x + av__chan(a, b, ch), *gs = g + av__chan(a, b, ch);
            float mean = stats[2 * set], rstd = stats[2 * set + 1];
            for (i = 0; i < a->inner; i++) {
                sw += (double)gs[i] * ((xs[i] - mean) * rstd);
                sb += gs[i];
            }
        }
        if (dw) dw[ch] += (float)sw;
        if (db) db[ch] += (float)sb;
    }
}

/* dx of one set: channels [c0, c0 + nc) of images [b0, b0 + nb); w the weight or NULL */
static void av__norm_set_dx(const av__node *n, const av__norm_args *a, const float *w, int set, int b0, int nb, int c0,
                            int nc) {
    const float *stats = (const float *)n->saved, *x = n->in[0]->data, *g = n->out[0]->grad;
    float *gx = n->in[0]->grad, mean = stats[2 * set], rstd = stats[2 * set + 1], md = 0, mdx = 0;
    int b, ch, i;
    if (!a->frozen) {
        double sd = 0, sdx = 0, count = (double)nb * nc * a->inner;
        for (b = b0; b < b0 + nb; b++)
            for (ch = c0; ch < c0 + nc; ch++) {
                const float *xs = x + av__chan(a, b, ch), *gs = g + av__chan(a, b, ch);
                float wc = w ? w[ch] : 1.0f;
                for (i = 0; i < a->inner; i++) {
                    double d = (double)gs[i] * wc;
                    sd += d;
                    sdx += d * ((xs[i] - mean) * rstd);
                }
            }
        md = (float)(sd / count);
        mdx = (float)(sdx / count);
    }
    for (b = b0; b < b0 + nb; b++)
        for (ch = c0; ch < c0 + nc; ch++) {
            const float *xs = x + av__chan(a, b, ch), *gs = g + av__chan(a, b, ch);
            float *gxs = gx + av__chan(a, b, ch), wc = w ? w[ch] : 1.0f;
            for (i = 0; i < a->inner; i++) gxs[i] += rstd * (gs[i] * wc - md - (xs[i] - mean) * rstd * mdx);
        }
}

/* mean and variance (biased) of a set, in double */
static void av__norm_set_stats(const av__norm_args *a, const float *x, int b0, int nb, int c0, int nc, double *mean,
                               double *var) {
    double s = 0, ss = 0, count = (double)nb * nc * a->inner;
    int b, ch, i;
    for (b = b0; b < b0 + nb; b++)
        for (ch = c0; ch < c0 + nc; ch++)
            for (i = 0; i < a->inner; i++) s += x[av__chan(a, b, ch) + i];
    *mean = s / count;
    for (b = b0; b < b0 + nb; b++)
        for (ch = c0; ch < c0 + nc; ch++)
            for (i = 0; i < a->inner; i++) {
                double d = x[av__chan(a, b, ch) + i] - *mean;
                ss += d * d;
            }
    *var = ss / count;
}

/* inputs x, running_mean, running_var, weight, bias */
static void av__batch_norm_backward(av_ctx *c, av__node *n) {
    const av__norm_args *a = (const av__norm_args *)n->args;
    int ch;
    (void)c;
    if (n->in[0]->requires_grad) {
        AV__PAR((long)a->B * a->C * a->inner)
        for (ch = 0; ch < a->C; ch++) av__norm_set_dx(n, a, n->in[3] ? n->in[3]->data : NULL, ch, 0, a->B, ch, 1);
    }
    if (av__in_grad(n, 3) || av__in_grad(n, 4)) av__norm_affine_grads(n, a, av__in_grad(n, 3), av__in_grad(n, 4));
}

AVDEF av_tensor *av_batch_norm(av_ctx *c, av_tensor *x, av_tensor *running_mean, av_tensor *running_var,
                               av_tensor *weight, av_tensor *bias, float momentum, float eps) {
    static const char *op = "av_batch_norm";
    av__norm_args a;
    av_tensor *out, *in[5];
    float *stats;
    av__node *n;
    int ch;
    av__live(c, op, x, running_mean, running_var);
    av__live(c, op, weight, bias, NULL);
    memset(&a, 0, sizeof a);
    av__norm_dims(op, x, weight, bias, &a);
    if (!running_mean != !running_var) av__fail("%s: give both running_mean and running_var, or neither", op);
    if (running_mean && (running_mean->size != a.C || running_var->size != a.C))
        av__fail_shapes(op, "running statistics must have C values", x, running_mean->size != a.C ? running_mean : running_var);
    if (!(momentum >= 0.0f && momentum <= 1.0f) || !(eps >= 0.0f))
        av__fail("%s: momentum %g must be in [0, 1] and eps %g >= 0", op, (double)momentum, (double)eps);
    a.frozen = !c->training;
    if (a.frozen && !running_mean) av__fail("%s: eval mode needs the running statistics", op);
    if (!a.frozen && (long)a.B * a.inner < 2) av__fail_shapes(op, "training needs more than one value per channel", x, NULL);
    out = av__like(c, x, op);
    stats = (float *)av__arena_alloc(&c->arena, (size_t)(2 * a.C + 1) * sizeof(float));
    AV__PAR((long)a.B * a.C * a.inner)
    for (ch = 0; ch < a.C; ch++) {
        double mean, var;
        int b;
        if (a.frozen) {
            mean = running_mean->data[ch];
            var = running_var->data[ch];
        } else {
            double count = (double)a.B * a.inner;
            av__norm_set_stats(&a, x->data, 0, a.B, ch, 1, &mean, &var);
            if (running_mean) {
                running_mean->data[ch] = (float)((1.0 - momentum) * running_mean->data[ch] + momentum * mean);
                running_var->data[ch] = (float)((1.0 - momentum) * running_var->data[ch] + momentum * var * count / (count - 1));
            }
        }
        stats[2 * ch] = (float)mean;
        stats[2 * ch + 1] = (float)(1.0 / sqrt(var + eps));
        for (b = 0; b < a.B; b++) av__norm_apply(&a, x->data, out->data, b, ch, stats[2 * ch], stats[2 * ch + 1], weight, bias);
    }
    in[0] = x; in[1] = running_mean; in[2] = running_var; in[3] = weight; in[4] = bias;
    n = av__record_n(c, op, av__batch_norm_backward, &out, 1, in, 5);
    if (n) {
        n->args = AV__KEEP(c, a);
        n->saved = stats;
    }
    return out;
}

/* inputs x, weight, bias; sets (b, group) */
static void av__group_norm_backward(av_ctx *c, av__node *n) {
    const av__norm_args *a = (const av__norm_args *)n->args;
    int set, per = a->C / a->groups;
    (void)c;
    if (n->in[0]->requires_grad) {
        AV__PAR((long)a->B * a->C * a->inner)
        for (set = 0; set < a->B * a->groups; set++)
            av__norm_set_dx(n, a, n->in[1] ? n->in[1]->data : NULL, set, set / a->groups, 1, set % a->groups * per, per);
    }
    if (av__in_grad(n, 1) || av__in_grad(n, 2)) av__norm_affine_grads(n, a, av__in_grad(n, 1), av__in_grad(n, 2));
}

AVDEF av_tensor *av_group_norm(av_ctx *c, av_tensor *x, int num_groups, av_tensor *weight, av_tensor *bias, float eps) {
    static const char *op = "av_group_norm";
    av__norm_args a;
    av_tensor *out;
    float *stats;
    av__node *n;
    int set, per;
    av__live(c, op, x, weight, bias);
    memset(&a, 0, sizeof a);
    av__norm_dims(op, x, weight, bias, &a);
    if (num_groups < 1 || a.C % num_groups) {
        char s[64];
        av__fail("%s: %d groups do not divide the %d channels of x %s", op, num_groups, a.C, av__shape_str(x, s, sizeof s));
    }
    if (!(eps >= 0.0f)) av__fail("%s: eps %g must be >= 0", op, (double)eps);
    a.groups = num_groups;
    per = a.C / num_groups;
    out = av__like(c, x, op);
    stats = (float *)av__arena_alloc(&c->arena, ((size_t)2 * a.B * num_groups + 1) * sizeof(float));
    AV__PAR((long)a.B * a.C * a.inner)
    for (set = 0; set < a.B * num_groups; set++) {
        int b = set / num_groups, c0 = set % num_groups * per, ch;
        double mean, var;
        av__norm_set_stats(&a, x->data, b, 1, c0, per, &mean, &var);
        stats[2 * set] = (float)mean;
        stats[2 * set + 1] = (float)(1.0 / sqrt(var + eps));
        for (ch = c0; ch < c0 + per; ch++) av__norm_apply(&a, x->data, out->data, b, ch, stats[2 * set], stats[2 * set + 1], weight, bias);
    }
    n = av__record(c, op, av__group_norm_backward, out, 3, x, weight, bias);
    if (n) {
        n->args = AV__KEEP(c, a);
        n->saved = stats;
    }
    return out;
}

/* ---- spectral normalisation ------------------------------------------
   W seen as a matrix with rows along axis dim: element (r, a T + t) at
   (a R + r) T + t, R = shape[dim], T the sizes after dim, A those before.
   sigma = u^T W v; in training, first n_power power iterations
   v = normalize(W^T u), u = normalize(W v) (x / max(|x|, eps)) update the
   buffers u [R] and v [A T]. The output W / sigma; u and v are constants
   for the gradient, as in PyTorch:
     dW = g / sigma - (sum(g o W) / sigma^2) u v^T.
   Saved: sigma, u and v as used. */
typedef struct av__sn_args { int A, R, T; float sigma; } av__sn_args;

/* acc = W in ([R]), or W^T in ([A T]) when transposed */
static void av__sn_mv(const av__sn_args *s, const float *w, const float *in, double *acc, int transposed) {
    int a, r, t, n = transposed ? s->A * s->T : s->R;
    memset(acc, 0, (size_t)n * sizeof(double));
    for (a = 0; a < s->A; a++)
        for (r = 0; r < s->R; r++)
            for (t = 0; t < s->T; t++) {
                double wv = w[((size_t)a * s->R + r) * s->T + t];
                if (transposed) acc[(size_t)a * s->T + t] += wv * in[r];
                else acc[r] += wv * in[(size_t)a * s->T + t];
            }
}

/* out = acc / max(|acc|, eps) */
static void av__sn_normalize(const double *acc, int n, float eps, float *out) {
    double norm = 0;
    int i;
    for (i = 0; i < n; i++) norm += acc[i] * acc[i];
    norm = sqrt(norm) > eps ? sqrt(norm) : eps;
    for (i = 0; i < n; i++) out[i] = (float)(acc[i] / norm);
}

static void av__spectral_norm_backward(av_ctx *c, av__node *n) {
    const av__sn_args *s = (const av__sn_args *)n->args;
    const float *u = (const float *)n->saved, *v = u + s->R, *w = n->in[0]->data, *g = n->out[0]->grad;
    float *gw = n->in[0]->grad, k;
    double dot = 0;
    int a, r, t, size = n->in[0]->size, i;
    (void)c;
    for (i = 0; i < size; i++) dot += (double)g[i] * w[i];
    k = (float)(dot / ((double)s->sigma * s->sigma));
    for (a = 0; a < s->A; a++)
        for (r = 0; r < s->R; r++)
            for (t = 0; t < s->T; t++) {
                size_t e = ((size_t)a * s->R + r) * s->T + t;
                gw[e] += g[e] / s->sigma - k * u[r] * v[(size_t)a * s->T + t];
            }
}

AVDEF av_tensor *av_spectral_norm(av_ctx *c, av_tensor *w, av_tensor *u, av_tensor *v, int dim, int n_power, float eps) {
    static const char *op = "av_spectral_norm";
    av__sn_args s;
    av_tensor *out;
    av__node *n;
    float *uv;
    double *acc, sigma = 0;
    int i, it;
    av__live(c, op, w, u, v);
    if (dim < 0 || dim >= w->ndim) av__fail_shapes(op, "dim must be an axis of w", w, NULL);
    if (n_power < 0 || !(eps > 0.0f)) av__fail("%s: n_power %d must be >= 0 and eps %g > 0", op, n_power, (double)eps);
    s.R = w->shape[dim];
    for (i = 0, s.A = 1; i < dim; i++) s.A *= w->shape[i];
    for (i = dim + 1, s.T = 1; i < w->ndim; i++) s.T *= w->shape[i];
    if (u->size != s.R || v->size != s.A * s.T || s.R == 0 || v->size == 0)
        av__fail_shapes(op, "u must have shape[dim] values and v the rest of w", w, u->size != s.R ? u : v);
    acc = (double *)av__arena_alloc(&c->arena, (size_t)(s.R > v->size ? s.R : v->size) * sizeof(double));
    if (c->training)
        for (it = 0; it < n_power; it++) {
            av__sn_mv(&s, w->data, u->data, acc, 1);
            av__sn_normalize(acc, v->size, eps, v->data);
            av__sn_mv(&s, w->data, v->data, acc, 0);
            av__sn_normalize(acc, s.R, eps, u->data);
        }
    av__sn_mv(&s, w->data, v->data, acc, 0);
    for (i = 0; i < s.R; i++) sigma += acc[i] * u->data[i];
    s.sigma = (float)sigma;
    out = av__like(c, w, op);
    for (i = 0; i < w->size; i++) out->data[i] = w->data[i] / s.sigma;
    n = av__record(c, op, av__spectral_norm_backward, out, 1, w);
    if (n) { /* u and v as used: a later forward may move the buffers */
        uv = (float *)av__arena_alloc(&c->arena, (size_t)(s.R + v->size) * sizeof(float));
        memcpy(uv, u->data, (size_t)s.R * sizeof(float));
        memcpy(uv + s.R, v->data, (size_t)v->size * sizeof(float));
        n->args = AV__KEEP(c, s);
        n->saved = uv;
    }
    return out;
}

/* ======================================================================= */
/* [3.8 recurrent] LSTM and GRU layers over whole sequences, BPTT       */
/* ======================================================================= */
/* Buffers of one layer, rows in x's order (row b T + t: sequence b, step t):
     gates [B T, G]  x W_ihᵀ for every step at once; each step adds its
                     recurrent part and the step pass overwrites the row with
                     the gate activations backward needs (i f g o, or r z n)
     h_prev [B T, H] the state each step started from (c_prev: the LSTM's cell);
                     an LSTM keeps x beside it, rows [h_prev | x] of H + in,
                     so one GEMM gives dW_hh and dW_ih together
     aux [B T, H]    LSTM: tanh(c'); GRU: W_hn h + b_hn
   Steps run in processing order s = 0 .. T-1, at time t = s (t = T-1-s when
   reverse); sequence b is active at t < lengths[b]. tanh(v) = 2 sigmoid(2v)
   - 1, so the vector sigmoid of [2.2 vmath] does all the activations.
   Backward walks the steps the other way: one pass per step turns dh (and
   dc) into the gate gradients, one GEMM per step takes dh back through W_hh,
   then one GEMM each over all steps gives dW_hh and dW_ih (one for both
   in an LSTM, whose gates have the same gradient through either) and dx. */
typedef struct av__rnn_args { int kind, reverse, B, T, I, H; const int *lengths; } av__rnn_args;
typedef struct av__rnn_saved { float *gates, *h_prev, *c_prev, *aux; int h_prev_ld; } av__rnn_saved;

/* The step pass goes parallel over the batch, on av_sgemm's threads, from
   this many gate values; each row's result is the same on any thread. */
#define AV__RNN_PAR_MIN 16384
static int av__rnn_threads(long gate_values) { return gate_values >= AV__RNN_PAR_MIN ? av_get_num_threads() : 1; }

static int av__rnn_len(const av__rnn_args *a, int b) { return a->lengths ? a->lengths[b] : a->T; }
static int av__rnn_time(const av__rnn_args *a, int s) { return a->reverse ? a->T - 1 - s : s; }

/* ---- the step passes ---- */
/* Each loop below is written once, with + - * on values of type V that
   AV__LD loads and AV__ST stores, W floats at a time. AV__RNN_PASSES
   compiles them for float (the scalar path, and every tail) and, as
   GCC/Clang vector types, for 8 floats (AVX2), 16 (AVX-512) or 4 (NEON).
   Each function continues from index j and returns where it stopped. */
#define AV__LD(V, p) (*(const V *)(p))
#define AV__ST(V, p, v) (*(V *)(p) = (v))

/* LSTM, forward: a = (a + bias) scale (scale 2 on the g gate, for tanh) */
#define AV__RNN_AFFINE(V, W)                                                     \
    for (; j + (W) <= n; j += (W))                                               \
        AV__ST(V, a + j, (AV__LD(V, a + j) + AV__LD(V, bias + j)) * AV__LD(V, scale + j));
/* after the sigmoid: g = tanh, c' = f c + i g, then 2 c' for tanh(c') */
#define AV__LSTM_CELL(V, W)                                                      \
    for (; j + (W) <= H; j += (W)) {                                             \
        V g = 2.0f * AV__LD(V, a + 2 * H + j) - 1.0f;                            \
        V c_new = AV__LD(V, a + H + j) * AV__LD(V, cs + j) + AV__LD(V, a + j) * g; \
        AV__ST(V, a + 2 * H + j, g);                                             \
        AV__ST(V, cs + j, c_new);                                                \
        AV__ST(V, tanh_c + j, 2.0f * c_new);                                     \
    }
/* after the sigmoid of 2 c': h' = o tanh(c') */
#define AV__LSTM_OUT(V, W)                                                       \
    for (; j + (W) <= H; j += (W)) {                                             \
        V tc = 2.0f * AV__LD(V, tanh_c + j) - 1.0f, h_new = AV__LD(V, o + j) * tc; \
        AV__ST(V, tanh_c + j, tc);                                               \
        AV__ST(V, h + j, h_new);                                                 \
        AV__ST(V, y + j, h_new);                                                 \
    }
/* GRU, forward: r and z before the sigmoid, over 2H values (bias = b_ih + b_hh) */
#define AV__GRU_GATES(V, W)                                                      \
    for (; j + (W) <= n; j += (W))                                               \
        AV__ST(V, a + j, AV__LD(V, a + j) + AV__LD(V, hh + j) + AV__LD(V, bias + j));
/* n before the sigmoid, doubled for tanh: 2 (W_in x + b_in + r (W_hn h + b_hn)) */
#define AV__GRU_NEW(V, W)                                                        \
    for (; j + (W) <= H; j += (W)) {                                             \
        V hn = AV__LD(V, hh + 2 * H + j) + AV__LD(V, b_hh + 2 * H + j);          \
        AV__ST(V, hh_n + j, hn);                                                 \
        AV__ST(V, a + 2 * H + j,                                                 \
               2.0f * (AV__LD(V, a + 2 * H + j) + AV__LD(V, b_ih + 2 * H + j) + AV__LD(V, a + j) * hn)); \
    }
/* after the sigmoid: n = tanh, h' = n + z (h - n) */
#define AV__GRU_OUT(V, W)                                                        \
    for (; j + (W) <= H; j += (W)) {                                             \
        V n_ = 2.0f * AV__LD(V, a + 2 * H + j) - 1.0f;                           \
        V h_new = n_ + AV__LD(V, a + H + j) * (AV__LD(V, h + j) - n_);           \
        AV__ST(V, a + 2 * H + j, n_);                                            \
        AV__ST(V, h + j, h_new);                                                 \
        AV__ST(V, y + j, h_new);                                                 \
    }
/* LSTM, backward: from the gradients of the step's output state (dh from
   the next step, dy from the output) and cell (dc), the gate gradients dg
   and the cell's gradient before the step (into dc) */
#define AV__LSTM_BACKWARD(V, W)                                                  \
    for (; j + (W) <= H; j += (W)) {                                             \
        V i = AV__LD(V, a + j), f = AV__LD(V, a + H + j), g = AV__LD(V, a + 2 * H + j); \
        V o = AV__LD(V, a + 3 * H + j), tc = AV__LD(V, tanh_c + j);            \
        V dhj = AV__LD(V, dh + j) + AV__LD(V, dy + j);                           \
        V dct = AV__LD(V, dc + j) + dhj * o * (1.0f - tc * tc);                 \
        AV__ST(V, dg + j, dct * g * i * (1.0f - i));                             \
        AV__ST(V, dg + H + j, dct * AV__LD(V, c_prev + j) * f * (1.0f - f));     \
        AV__ST(V, dg + 2 * H + j, dct * i * (1.0f - g * g));                     \
        AV__ST(V, dg + 3 * H + j, dhj * tc * o * (1.0f - o));                    \
        AV__ST(V, dc + j, dct * f);                                              \
    }
/* GRU, backward: gate gradients through W_ih (dgx) and W_hh (dgh; they
   differ in n), and the part of dh_prev that skips W_hh */
#define AV__GRU_BACKWARD(V, W)                                                   \
    for (; j + (W) <= H; j += (W)) {                                             \
        V r = AV__LD(V, a + j), z = AV__LD(V, a + H + j), n_ = AV__LD(V, a + 2 * H + j); \
        V dhj = AV__LD(V, dh + j) + AV__LD(V, dy + j);                           \
        V dn = dhj * (1.0f - z) * (1.0f - n_ * n_);                              \
        V dz = dhj * (AV__LD(V, h_prev + j) - n_) * z * (1.0f - z);             \
        V dr = dn * AV__LD(V, hh_n + j) * r * (1.0f - r);                        \
        AV__ST(V, dgx + j, dr);                                                  \
        AV__ST(V, dgh + j, dr);                                                  \
        AV__ST(V, dgx + H + j, dz);                                              \
        AV__ST(V, dgh + H + j, dz);                                              \
        AV__ST(V, dgx + 2 * H + j, dn);                                          \
        AV__ST(V, dgh + 2 * H + j, dn * r);                                      \
        AV__ST(V, dh_prev + j, dhj * z);                                         \
    }
/* dst += src */
#define AV__RNN_ACCUMULATE(V, W)                                                 \
    for (; j + (W) <= n; j += (W)) AV__ST(V, dst + j, AV__LD(V, dst + j) + AV__LD(V, src + j));

/* av__rnn_affine_W av__lstm_cell_W av__lstm_out_W av__gru_gates_W
   av__gru_new_W av__gru_out_W av__lstm_backward_W av__gru_backward_W
   av__rnn_accumulate_W, for W = 1 (scalar), 8 and 16 (x86) or 4 (NEON) */
#define AV__RNN_PASSES(TARGET, V, W)                                                                          \
    TARGET static int av__rnn_affine_##W(int j, int n, float *a, const float *bias, const float *scale) {    \
        AV__RNN_AFFINE(V, W) return j;                                                                        \
    }                                                                                                         \
    TARGET static int av__lstm_cell_##W(int j, int H, float *a, float *cs, float *tanh_c) {                   \
        AV__LSTM_CELL(V, W) return j;                                                                         \
    }                                                                                                         \
    TARGET static int av__lstm_out_##W(int j, int H, const float *o, float *tanh_c, float *h, float *y) {     \
        AV__LSTM_OUT(V, W) return j;                                                                          \
    }                                                                                                         \
    TARGET static int av__gru_gates_##W(int j, int n, float *a, const float *hh, const float *bias) {         \
        AV__GRU_GATES(V, W) return j;                                                                         \
    }                                                                                                         \
    TARGET static int av__gru_new_##W(int j, int H, float *a, const float *hh, const float *b_ih,             \
                                      const float *b_hh, float *hh_n) {                                       \
        AV__GRU_NEW(V, W) return j;                                                                           \
    }                                                                                                         \
    TARGET static int av__gru_out_##W(int j, int H, float *a, float *h, float *y) {                           \
        AV__GRU_OUT(V, W) return j;                                                                           \
    }                                                                                                         \
    TARGET static int av__lstm_backward_##W(int j, int H, const float *a, const float *c_prev,                \
                                            const float *tanh_c, const float *dh, const float *dy, float *dc, \
                                            float *dg) {                                                      \
        AV__LSTM_BACKWARD(V, W) return j;                                                                     \
    }                                                                                                         \
    TARGET static int av__gru_backward_##W(int j, int H, const float *a, const float *h_prev,                 \
                                           const float *hh_n, const float *dh, const float *dy, float *dgx,   \
                                           float *dgh, float *dh_prev) {                                      \
        AV__GRU_BACKWARD(V, W) return j;                                                                      \
    }                                                                                                         \
    TARGET static int av__rnn_accumulate_##W(int j, int n, float *dst, const float *src) {                    \
        AV__RNN_ACCUMULATE(V, W) return j;                                                                    \
    }

AV__RNN_PASSES(, float, 1)
#ifdef AV__X86
typedef float av__f8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef float av__f16 __attribute__((vector_size(64), aligned(4), may_alias));
AV__RNN_PASSES(AV__TARGET_AVX2, av__f8, 8)
AV__RNN_PASSES(AV__TARGET_AVX512, av__f16, 16)
/* runs pass NAME on the widest path of isa, then the scalar tail */
#define AV__RNN_RUN(isa, NAME, ...)                                               \
    do {                                                                          \
        int j_ = isa == AV_ISA_AVX512 ? av__##NAME##_16(0, __VA_ARGS__)           \
                 : isa == AV_ISA_AVX2 ? av__##NAME##_8(0, __VA_ARGS__) : 0;       \
        av__##NAME##_1(j_, __VA_ARGS__);                                          \
    } while (0)
#elif defined(AV__NEON)
typedef float av__f4 __attribute__((vector_size(16), aligned(4), may_alias));
AV__RNN_PASSES(, av__f4, 4)
#define AV__RNN_RUN(isa, NAME, ...)                                               \
    do {                                                                          \
        int j_ = isa == AV_ISA_NEON ? av__##NAME##_4(0, __VA_ARGS__) : 0;         \
        av__##NAME##_1(j_, __VA_ARGS__);                                          \
    } while (0)
#else
#define AV__RNN_RUN(isa, NAME, ...) ((void)(isa), (void)av__##NAME##_1(0, __VA_ARGS__))
#endif

static void av__rnn_sigmoid(int isa, float *v, int n) {
    (void)isa;
    AV__VDISPATCH(isa, sigmoid, v, v, n);
}

/* One LSTM step of one sequence: a holds the gate pre-activations without
   bias; h and cs the state, updated in place. */
static void av__lstm_step(int isa, int H, float *a, const float *bias, const float *scale, float *h, float *cs,
                          float *h_prev, float *c_prev, float *tanh_c, float *y) {
    memcpy(h_prev, h, (size_t)H * sizeof(float));
    memcpy(c_prev, cs, (size_t)H * sizeof(float));
    AV__RNN_RUN(isa, rnn_affine, 4 * H, a, bias, scale);
    av__rnn_sigmoid(isa, a, 4 * H);
    AV__RNN_RUN(isa, lstm_cell, H, a, cs, tanh_c);
    av__rnn_sigmoid(isa, tanh_c, H);
    AV__RNN_RUN(isa, lstm_out, H, a + 3 * H, tanh_c, h, y);
}

/* One GRU step: a holds x W_ihᵀ, hh holds h W_hhᵀ (both without bias);
   bias_rz = b_ih + b_hh. */
static void av__gru_step(int isa, int H, float *a, const float *hh, const float *bias_rz, const float *b_ih,
                         const float *b_hh, float *h, float *h_prev, float *hh_n, float *y) {
    memcpy(h_prev, h, (size_t)H * sizeof(float));
    AV__RNN_RUN(isa, gru_gates, 2 * H, a, hh, bias_rz);
    av__rnn_sigmoid(isa, a, 2 * H);
    AV__RNN_RUN(isa, gru_new, H, a, hh, b_ih, b_hh, hh_n);
    av__rnn_sigmoid(isa, a + 2 * H, H);
    AV__RNN_RUN(isa, gru_out, H, a, h, y);
}

/* h W_hhᵀ for the B rows of h, into out (row stride ldo). W_hhᵀ is kept in
   column panels [H, width]: av_sgemm reads a B of up to 2^17 floats per K
   slice in place (its direct-B case, for few rows of C) instead of packing
   all of W_hh at every step. The widest such panel, a multiple of 64
   columns, keeps the calls (and thread forks) per step few. */
static int av__rnn_panel_width(int G, int H) {
    int width = ((1 << 17) / (H > 0 ? H : 1)) / 64 * 64;
    return width < 64 ? 64 : width > G ? G : width;
}

static float *av__rnn_panels(av_ctx *c, const float *w_hh, int G, int H, int panel) {
    float *p = (float *)av__arena_alloc(&c->arena, (size_t)G * H * sizeof(float));
    int p0, j0, j, k;
    for (p0 = 0; p0 < G; p0 += panel) {
        int width = AV__MIN(panel, G - p0);
        float *dst = p + (size_t)p0 * H;
        for (j0 = 0; j0 < width; j0 += 16) /* 16 rows of W_hh at a time stay in L1 */
            for (k = 0; k < H; k++)
                for (j = j0; j < AV__MIN(j0 + 16, width); j++) dst[(size_t)k * width + j] = w_hh[(size_t)(p0 + j) * H + k];
    }
    return p;
}

static void av__rnn_recurrent(const float *h, int B, int H, const float *panels, int G, int panel, float beta,
                              float *out, int ldo) {
    int p0;
    for (p0 = 0; p0 < G; p0 += panel) {
        int width = AV__MIN(panel, G - p0);
        av_sgemm(0, 0, B, width, H, 1.0f, h, H, panels + (size_t)p0 * H, width, beta, out + p0, ldo);
    }
}

/* b0 + b1 over n values; either may be NULL */
static float *av__rnn_bias(av_ctx *c, const av_tensor *b0, const av_tensor *b1, int n) {
    float *sum = (float *)av__arena_alloc(&c->arena, (size_t)n * sizeof(float));
    int j;
    for (j = 0; j < n; j++) sum[j] = (b0 ? b0->data[j] : 0.0f) + (b1 ? b1->data[j] : 0.0f);
    return sum;
}

static void av__rnn_backward(av_ctx *c, av__node *n) {
    const av__rnn_args *a = (const av__rnn_args *)n->args;
    const av__rnn_saved *sv = (const av__rnn_saved *)n->saved;
    const int B = a->B, T = a->T, I = a->I, H = a->H, lstm = a->kind == AV_LSTM, G = (lstm ? 4 : 3) * H;
    const size_t rows = (size_t)B * T;
    const float *dy = n->out[0]->grad, *w_ih = n->in[1]->data, *w_hh = n->in[2]->data;
    float *dx = av__in_grad(n, 0), *dw_ih = av__in_grad(n, 1), *dw_hh = av__in_grad(n, 2);
    float *db_ih = av__in_grad(n, 3), *db_hh = av__in_grad(n, 4), *dh0 = av__in_grad(n, 5);
    float *dc0 = lstm ? av__in_grad(n, 6) : NULL;
    float *dgx = (float *)av__arena_alloc(&c->arena, rows * G * sizeof(float));
    float *dgh = lstm ? dgx : (float *)av__arena_alloc(&c->arena, rows * G * sizeof(float));
    float *dh = (float *)av__arena_alloc(&c->arena, (size_t)B * H * 2 * sizeof(float)), *dh_next = dh + (size_t)B * H;
    /* the bias gradients, summed per sequence as the steps go (each row has
       one owner whatever the threads), then over the batch in order */
    float *dbx = (float *)av__arena_alloc(&c->arena, (size_t)B * G * sizeof(float));
    float *dbh = lstm ? dbx : (float *)av__arena_alloc(&c->arena, (size_t)B * G * sizeof(float));
    float *dc = NULL;
    int s, b, nt = av__rnn_threads((long)B * G), isa = av_get_isa();
    (void)nt; /* without OpenMP */
    memcpy(dh, n->out[1]->grad, (size_t)B * H * sizeof(float));
    memset(dbx, 0, (size_t)B * G * sizeof(float));
    memset(dbh, 0, (size_t)B * G * sizeof(float));
    if (lstm) dc = (float *)av__arena_copy(&c->arena, n->out[2]->grad, (size_t)B * H * sizeof(float));
    for (s = T - 1; s >= 0; s--) {
        const int t = av__rnn_time(a, s);
        float *swap;
        AV_OMP(omp parallel for num_threads(nt) schedule(static) if (nt > 1))
        for (b = 0; b < B; b++) {
            size_t row = (size_t)b * T + t;
            float *dhb = dh + (size_t)b * H, *dhn = dh_next + (size_t)b * H;
            if (t >= av__rnn_len(a, b)) { /* padded: nothing changes, nothing flows */
                memset(dgx + row * G, 0, (size_t)G * sizeof(float));
                if (!lstm) memset(dgh + row * G, 0, (size_t)G * sizeof(float));
                memcpy(dhn, dhb, (size_t)H * sizeof(float));
                continue;
            }
            if (lstm) {
                AV__RNN_RUN(isa, lstm_backward, H, sv->gates + row * G, sv->c_prev + row * H, sv->aux + row * H, dhb,
                            dy + row * H, dc + (size_t)b * H, dgx + row * G);
                memset(dhn, 0, (size_t)H * sizeof(float));
            } else {
                AV__RNN_RUN(isa, gru_backward, H, sv->gates + row * G, sv->h_prev + row * sv->h_prev_ld, sv->aux + row * H, dhb,
                            dy + row * H, dgx + row * G, dgh + row * G, dhn);
                AV__RNN_RUN(isa, rnn_accumulate, G, dbh + (size_t)b * G, dgh + row * G);
            }
            AV__RNN_RUN(isa, rnn_accumulate, G, dbx + (size_t)b * G, dgx + row * G);
        }
        /* padded rows of dgh are zero, so their carried dh passes unchanged */
        av_sgemm(0, 0, B, H, G, 1.0f, dgh + (size_t)t * G, T * G, w_hh, H, 1.0f, dh_next, H);
        swap = dh; dh = dh_next; dh_next = swap;
    }
    if (dh0) AV__RNN_RUN(isa, rnn_accumulate, B * H, dh0, dh);
    if (dc0) AV__RNN_RUN(isa, rnn_accumulate, B * H, dc0, dc);
    if (lstm && dw_hh && dw_ih) { /* dgxᵀ [h_prev | x], then split */
        float *dw = (float *)av__arena_alloc(&c->arena, (size_t)G * (H + I) * sizeof(float));
        int g;
        av_sgemm(1, 0, G, H + I, (int)rows, 1.0f, dgx, G, sv->h_prev, H + I, 0.0f, dw, H + I);
        for (g = 0; g < G; g++) {
            AV__RNN_RUN(isa, rnn_accumulate, H, dw_hh + (size_t)g * H, dw + (size_t)g * (H + I));
            AV__RNN_RUN(isa, rnn_accumulate, I, dw_ih + (size_t)g * I, dw + (size_t)g * (H + I) + H);
        }
    } else {
        if (dw_hh) av_sgemm(1, 0, G, H, (int)rows, 1.0f, dgh, G, sv->h_prev, sv->h_prev_ld, 1.0f, dw_hh, H);
        if (dw_ih) av_sgemm(1, 0, G, I, (int)rows, 1.0f, dgx, G, n->in[0]->data, I, 1.0f, dw_ih, I);
    }
    if (dx) av_sgemm(0, 0, (int)rows, I, G, 1.0f, dgx, G, w_ih, I, 1.0f, dx, I);
    for (b = 0; b < B; b++) {
        if (db_ih) AV__RNN_RUN(isa, rnn_accumulate, G, db_ih, dbx + (size_t)b * G);
        if (db_hh) AV__RNN_RUN(isa, rnn_accumulate, G, db_hh, dbh + (size_t)b * G);
    }
}

static void av__rnn_check(int kind, const av_tensor *x, const av_rnn_weights *w, const av_tensor *h0,
                          const av_tensor *c0, const int *lengths) {
    const char *op = "av_rnn_layer";
    int H, G, i;
    if (kind != AV_LSTM && kind != AV_GRU) av__fail("%s: unknown kind %d (AV_LSTM or AV_GRU)", op, kind);
    if (x->ndim != 3) av__fail_shapes(op, "x must be [B, T, in]", x, NULL);
    if (!w->w_ih || !w->w_hh) av__fail("%s: w_ih and w_hh are required", op);
    if (w->w_hh->ndim != 2) av__fail_shapes(op, "w_hh must be [G, H]", w->w_hh, NULL);
    H = w->w_hh->shape[1];
    G = (kind == AV_LSTM ? 4 : 3) * H;
    if (w->w_hh->shape[0] != G)
        av__fail_shapes(op, kind == AV_LSTM ? "w_hh must be [4H, H]" : "w_hh must be [3H, H]", w->w_hh, NULL);
    if (w->w_ih->ndim != 2 || w->w_ih->shape[0] != G || w->w_ih->shape[1] != x->shape[2])
        av__fail_shapes(op, "w_ih must be [G, in] for x [B, T, in]", w->w_ih, x);
    if (w->b_ih && (w->b_ih->ndim != 1 || w->b_ih->shape[0] != G)) av__fail_shapes(op, "b_ih must be [G]", w->b_ih, w->w_hh);
    if (w->b_hh && (w->b_hh->ndim != 1 || w->b_hh->shape[0] != G)) av__fail_shapes(op, "b_hh must be [G]", w->b_hh, w->w_hh);
    if (h0 && (h0->ndim != 2 || h0->shape[0] != x->shape[0] || h0->shape[1] != H))
        av__fail_shapes(op, "h0 must be [B, H]", h0, w->w_hh);
    if (c0 && kind == AV_GRU) av__fail("%s: a GRU has no cell state c0", op);
    if (c0 && (c0->ndim != 2 || c0->shape[0] != x->shape[0] || c0->shape[1] != H))
        av__fail_shapes(op, "c0 must be [B, H]", c0, w->w_hh);
    for (i = 0; lengths && i < x->shape[0]; i++)
        if (lengths[i] < 0 || lengths[i] > x->shape[1])
            av__fail("%s: lengths[%d] = %d outside 0..%d (T of x)", op, i, lengths[i], x->shape[1]);
}

AVDEF av_tensor *av_rnn_layer(av_ctx *c, int kind, av_tensor *x, const av_rnn_weights *w, av_tensor *h0,
                              av_tensor *c0, const int *lengths, int reverse, av_tensor **h_n, av_tensor **c_n) {
    av__rnn_args a;
    av__rnn_saved sv;
    av_tensor *out[3], *in[7];
    av__node *n;
    float *bias, *scale = NULL, *b_ih = NULL, *b_hh = NULL, *hh = NULL, *panels, *h, *cs = NULL;
    int shape[3], state_shape[2], G, H, s, b, j, nt, panel, lstm = kind == AV_LSTM, isa = av_get_isa();
    size_t rows;
    av__rnn_check(kind, x, w, h0, c0, lengths);
    a.kind = kind; a.reverse = reverse != 0;
    a.B = x->shape[0]; a.T = x->shape[1]; a.I = x->shape[2]; a.H = H = w->w_hh->shape[1];
    a.lengths = lengths ? (const int *)av__arena_copy(&c->arena, lengths, (size_t)a.B * sizeof(int)) : NULL;
    G = (lstm ? 4 : 3) * H;
    nt = av__rnn_threads((long)a.B * G);
    (void)nt;
    rows = (size_t)a.B * a.T;
    shape[0] = state_shape[0] = a.B; shape[1] = a.T; shape[2] = state_shape[1] = H;
    out[0] = av__tensor_empty(c, 3, shape, "av_rnn_layer");
    out[1] = av__filled(c, 2, state_shape, 0.0f, "av_rnn_layer"); /* the running state */
    if (h0) memcpy(out[1]->data, h0->data, (size_t)a.B * H * sizeof(float));
    h = out[1]->data;
    bias = av__rnn_bias(c, w->b_ih, w->b_hh, G);
    if (lstm) {
        out[2] = av__filled(c, 2, state_shape, 0.0f, "av_rnn_layer");
        if (c0) memcpy(out[2]->data, c0->data, (size_t)a.B * H * sizeof(float));
        cs = out[2]->data;
        scale = (float *)av__arena_alloc(&c->arena, (size_t)G * sizeof(float));
        for (j = 0; j < G; j++) scale[j] = j >= 2 * H && j < 3 * H ? 2.0f : 1.0f; /* tanh(v) = 2 sigmoid(2v) - 1 */
    } else {
        b_ih = av__rnn_bias(c, w->b_ih, NULL, G);
        b_hh = av__rnn_bias(c, w->b_hh, NULL, G);
        hh = (float *)av__arena_alloc(&c->arena, (size_t)a.B * G * sizeof(float));
    }
    sv.gates = (float *)av__arena_alloc(&c->arena, rows * G * sizeof(float));
    sv.h_prev_ld = lstm ? H + a.I : H;
    sv.h_prev = (float *)av__arena_alloc(&c->arena, rows * sv.h_prev_ld * sizeof(float));
    for (j = 0; lstm && j < (int)rows; j++)
        memcpy(sv.h_prev + (size_t)j * sv.h_prev_ld + H, x->data + (size_t)j * a.I, (size_t)a.I * sizeof(float));
    sv.c_prev = lstm ? (float *)av__arena_alloc(&c->arena, rows * H * sizeof(float)) : NULL;
    sv.aux = (float *)av__arena_alloc(&c->arena, rows * H * sizeof(float));
    panel = av__rnn_panel_width(G, H);
    panels = av__rnn_panels(c, w->w_hh->data, G, H, panel);
    av_sgemm(0, 1, (int)rows, G, a.I, 1.0f, x->data, a.I, w->w_ih->data, a.I, 0.0f, sv.gates, G);
    for (s = 0; s < a.T; s++) {
        const int t = av__rnn_time(&a, s);
        if (lstm) av__rnn_recurrent(h, a.B, H, panels, G, panel, 1.0f, sv.gates + (size_t)t * G, a.T * G);
        else av__rnn_recurrent(h, a.B, H, panels, G, panel, 0.0f, hh, G);
        AV_OMP(omp parallel for num_threads(nt) schedule(static) if (nt > 1))
        for (b = 0; b < a.B; b++) {
            size_t row = (size_t)b * a.T + t, at = row * H;
            float *hb = h + (size_t)b * H, *y = out[0]->data + at, *h_prev = sv.h_prev + row * sv.h_prev_ld;
            if (t >= av__rnn_len(&a, b)) { /* padded: the state stays, the output is zero */
                memcpy(h_prev, hb, (size_t)H * sizeof(float));
                memset(y, 0, (size_t)H * sizeof(float));
            } else if (lstm) {
                av__lstm_step(isa, H, sv.gates + row * G, bias, scale, hb, cs + (size_t)b * H, h_prev,
                              sv.c_prev + at, sv.aux + at, y);
            } else {
                av__gru_step(isa, H, sv.gates + row * G, hh + (size_t)b * G, bias, b_ih, b_hh, hb, h_prev,
                             sv.aux + at, y);
            }
        }
    }
    in[0] = x; in[1] = w->w_ih; in[2] = w->w_hh; in[3] = w->b_ih; in[4] = w->b_hh; in[5] = h0; in[6] = c0;
    n = av__record_n(c, "av_rnn_layer", av__rnn_backward, out, lstm ? 3 : 2, in, lstm ? 7 : 6);
    if (n) {
        n->args = AV__KEEP(c, a);
        n->saved = AV__KEEP(c, sv);
    }
    if (h_n) *h_n = out[1];
    if (c_n) *c_n = lstm ? out[2] : NULL;
    return out[0];
}

/* ======================================================================= */
/* [3.9 losses] mse, cross-entropy, BCE with logits                     */
/* ======================================================================= */
/* The factor of a loss's reduction: the mean of nothing is NaN, as in PyTorch. */
static float av__reduce_scale(int reduction, int count) {
    return reduction == AV_SUM ? 1.0f : count ? 1.0f / (float)count : NAN;
}

/* A loss's arguments: the reduction's factor, and the labels of cross-entropy. */
typedef struct av__loss_args { float scale; const int *labels; } av__loss_args;

static av__loss_args av__loss(float scale, const int *labels) {
    av__loss_args a;
    a.scale = scale;
    a.labels = labels;
    return a;
}

/* mse: mean or sum of (p - t)^2 */
static void av__mse_backward(av_ctx *c, av__node *n) {
    float s = 2.0f * ((const av__loss_args *)n->args)->scale * n->out[0]->grad[0];
    float *gp = av__in_grad(n, 0), *gt = av__in_grad(n, 1);
    int i;
    (void)c;
    AV__PAR(n->in[0]->size)
    for (i = 0; i < n->in[0]->size; i++) {
        float d = s * (n->in[0]->data[i] - n->in[1]->data[i]);
        if (gp) gp[i] += d;
        if (gt) gt[i] -= d;
    }
}

static double av__square_diff(float a, float b) { return ((double)a - b) * ((double)a - b); }

AVDEF av_tensor *av_mse_loss(av_ctx *c, av_tensor *pred, av_tensor *target, int reduction) {
    av_tensor *out;
    double acc;
    float s = av__reduce_scale(reduction, pred->size);
    av__node *n;
    av__live(c, "av_mse_loss", pred, target, NULL);
    out = av__tensor_empty(c, 0, NULL, "av_mse_loss");
    if (!av_same_shape(pred, target)) av__fail_shapes("av_mse_loss", "shapes differ", pred, target);
    AV__SUM(c, pred->size, i, av__square_diff(pred->data[i], target->data[i]), acc);
    out->data[0] = (float)(acc * s);
    n = av__record(c, "av_mse_loss", av__mse_backward, out, 2, pred, target);
    if (n) {
        av__loss_args a = av__loss(s, NULL);
        n->args = AV__KEEP(c, a);
    }
    return out;
}

/* cross-entropy from logits: log-sum-exp minus the label's logit; saved: softmax.
   Rows run on threads; their losses add in row order. */
static void av__cross_entropy_backward(av_ctx *c, av__node *n) {
    const av__loss_args *a = (const av__loss_args *)n->args;
    int len, R = av__rows(n->in[0], &len, n->op), r;
    const float *prob = (const float *)n->saved;
    const int *labels = a->labels;
    float s = a->scale * n->out[0]->grad[0];
    (void)c;
    AV__PAR((long)R * len)
    for (r = 0; r < R; r++) {
        float *gx = n->in[0]->grad + (size_t)r * len;
        int j;
        for (j = 0; j < len; j++) gx[j] += s * prob[(size_t)r * len + j];
        gx[labels[r]] -= s;
    }
}

AVDEF av_tensor *av_cross_entropy(av_ctx *c, av_tensor *logits, const int *labels, int reduction) {
    int len, R, r;
    av_tensor *out;
    float *prob, s;
    double *row_loss, total = 0;
    av__node *n;
    av__live(c, "av_cross_entropy", logits, NULL, NULL);
    R = av__rows(logits, &len, "av_cross_entropy");
    out = av__tensor_empty(c, 0, NULL, "av_cross_entropy");
    prob = (float *)av__arena_alloc(&c->arena, (size_t)R * len * sizeof(float));
    row_loss = (double *)av__arena_alloc(&c->arena, (size_t)R * sizeof(double));
    s = av__reduce_scale(reduction, R);
    for (r = 0; r < R; r++)
        if (labels[r] < 0 || labels[r] >= len)
            av__fail("av_cross_entropy: label %d of row %d outside [0, %d)", labels[r], r, len);
    AV__PAR((long)R * len)
    for (r = 0; r < R; r++) {
        const float *x = logits->data + (size_t)r * len;
        float *p = prob + (size_t)r * len, mx = x[0];
        double sum = 0;
        int j;
        for (j = 1; j < len; j++) mx = x[j] > mx ? x[j] : mx;
        for (j = 0; j < len; j++) { p[j] = expf(x[j] - mx); sum += p[j]; }
        for (j = 0; j < len; j++) p[j] = (float)(p[j] / sum);
        row_loss[r] = mx + log(sum) - x[labels[r]];
    }
    for (r = 0; r < R; r++) total += row_loss[r];
    out->data[0] = (float)(total * s);
    n = av__record(c, "av_cross_entropy", av__cross_entropy_backward, out, 1, logits);
    if (n) {
        av__loss_args a = av__loss(s, (const int *)av__arena_copy(&c->arena, labels, (size_t)R * sizeof(int)));
        n->args = AV__KEEP(c, a);
        n->saved = prob;
    }
    return out;
}

/* BCE with logits, stable: max(x,0) - x t + log(1 + e^-|x|); dx = sigmoid(x) - t, dt = -x */
static void av__bce_backward(av_ctx *c, av__node *n) {
    float s = ((const av__loss_args *)n->args)->scale * n->out[0]->grad[0];
    float *gx = av__in_grad(n, 0), *gt = av__in_grad(n, 1), *sig;
    const float *x = n->in[0]->data, *t = n->in[1]->data;
    int i, size = n->in[0]->size;
    if (gx) {
        sig = (float *)av__arena_alloc(&c->arena, (size_t)size * sizeof(float));
        av__sigmoid_array(x, sig, size);
        AV__PAR(size)
        for (i = 0; i < size; i++) gx[i] += s * (sig[i] - t[i]);
    }
    if (gt) {
        AV__PAR(size)
        for (i = 0; i < size; i++) gt[i] -= s * x[i];
    }
}

AVDEF av_tensor *av_bce_with_logits(av_ctx *c, av_tensor *logits, av_tensor *target, int reduction) {
    av_tensor *out;
    const float *x = logits->data, *t = target->data;
    float s = av__reduce_scale(reduction, logits->size);
    double acc;
    av__node *n;
    float *sp;
    av__live(c, "av_bce_with_logits", logits, target, NULL);
    out = av__tensor_empty(c, 0, NULL, "av_bce_with_logits");
    if (!av_same_shape(logits, target)) av__fail_shapes("av_bce_with_logits", "shapes differ", logits, target);
    sp = (float *)av__arena_alloc(&c->arena, (size_t)logits->size * sizeof(float));
    av__softplus_rest_array(x, sp, logits->size);
    AV__SUM(c, logits->size, i, ((x[i] > 0 ? x[i] : 0.0f) - x[i] * t[i]) + sp[i], acc);
    out->data[0] = (float)(acc * s);
    n = av__record(c, "av_bce_with_logits", av__bce_backward, out, 2, logits, target);
    if (n) {
        av__loss_args a = av__loss(s, NULL);
        n->args = AV__KEEP(c, a);
    }
    return out;
}

/* ======================================================================= */
/* [4 autodiff] backward, detach                                        */
/* ======================================================================= */
/* Runs the tape from its last node to its first; after each node i (run or
   skipped), after(user, i) if given: [10 mpi] starts sending the gradients
   that node i completed. */
static void av__backward_run(av_ctx *c, av_tensor *loss, void (*after)(void *user, int i), void *user) {
    int i, k, flowed;
    av__check_live(c, loss, "av_backward (the loss)", 0);
    if (loss->size != 1) av__fail_shapes("av_backward", "loss must have one element", loss, NULL);
    if (!loss->requires_grad) av__fail("av_backward: the loss does not depend on anything that requires a gradient");
    /* Intermediate gradients restart from zero, so a second backward over the
       same graph adds exactly one more gradient to the leaves. */
    for (i = 0; i < c->n_tape; i++)
        for (k = 0; k < c->tape[i]->n_out; k++) {
            av_tensor *t = c->tape[i]->out[k];
            if (t->grad) memset(t->grad, 0, (size_t)t->size * sizeof(float));
        }
    av__grad(c, loss)[0] = 1.0f;
    for (i = c->n_tape - 1; i >= 0; i--) {
        av__node *n = c->tape[i];
        for (k = 0, flowed = 0; k < n->n_out; k++) flowed |= n->out[k]->grad != NULL;
        if (flowed) { /* else nothing flowed into this op */
            for (k = 0; k < n->n_out; k++) av__grad(c, n->out[k]); /* unused outputs: zero */
            for (k = 0; k < n->n_in; k++)
                if (n->in[k] && n->in[k]->requires_grad) av__grad(c, n->in[k]);
            n->backward(c, n);
        }
        if (after) after(user, i);
    }
}

AVDEF void av_backward(av_ctx *c, av_tensor *loss) { av__backward_run(c, loss, NULL, NULL); }

AVDEF void av_requires_grad(av_ctx *c, av_tensor *t) {
    av__check_live(c, t, "av_requires_grad", 0);
    t->requires_grad = 1;
}

AVDEF av_tensor *av_detach(av_ctx *c, av_tensor *x) {
    av_tensor *t = (av_tensor *)av__arena_alloc(&c->arena, sizeof(av_tensor));
    av__check_live(c, x, "av_detach", 0);
    *t = *x;
    t->gen = c->gen;
    t->grad = NULL;
    t->requires_grad = 0;
    t->name = NULL;
    return t;
}

/* ======================================================================= */
/* [5 model] parameters, buffers, parameter groups                      */
/* ======================================================================= */
/* Each tensor is malloc'd (a stable address) with its data; a parameter
   also has its gradient, its optimizer state (made on first use) and its
   group. Parameters and buffers sit in two lists; an index k over both,
   parameters first, serves the code that treats them alike. */
typedef struct av__entry {
    av_tensor *t;
    char *name;      /* t->name, owned here */
    float *state[2]; /* AV_STATE_M, AV_STATE_V: NULL until needed */
    int group;
} av__entry;
typedef struct av__list { av__entry *e; int n, cap; } av__list;
typedef struct av__group { double lr_scale, decay_scale; } av__group;

struct av_model {
    av__list params, buffers;
    av__group *groups; /* groups 1..n_groups; group 0 has scales 1 and 1 */
    int n_groups;
    av_rng rng;
    long step;
    int error;         /* the first failure of av_param or av_buffer, kept */
    char error_msg[sizeof av__errbuf];
};

/* Names that checkpoints give to optimizer state: "optim.m.<name>", "optim.v.<name>". */
static const char *const av__state_prefix[2] = {"optim.m.", "optim.v."};
#define AV__STATE_PREFIX_LEN 8

static int av__n_entries(const av_model *m) { return m->params.n + m->buffers.n; }
static av__entry *av__entry_at(const av_model *m, int k) {
    return k < m->params.n ? &m->params.e[k] : &m->buffers.e[k - m->params.n];
}

/* index k of the tensor named name, or -1 */
static int av__find(const av_model *m, const char *name) {
    int k;
    for (k = 0; name && k < av__n_entries(m); k++)
        if (strcmp(av__entry_at(m, k)->t->name, name) == 0) return k;
    return -1;
}

AVDEF av_model *av_model_new(uint64_t seed) {
    av_model *m = (av_model *)AV_MALLOC(sizeof(av_model));
    if (!m) {
        av__set_error(AV_ERR_NOMEM, "av_model_new: out of memory");
        return NULL;
    }
    memset(m, 0, sizeof *m);
    av_rng_seed(&m->rng, seed);
    return m;
}

/* Frees a tensor of the model with its data. A buffer's grad, if
   av_requires_grad gave it one, lives in a step arena and is not ours. */
static void av__tensor_free(av_tensor *t, int is_param) {
    if (!t) return;
    AV_FREE(t->data);
    if (is_param) AV_FREE(t->grad);
    AV_FREE(t);
}

AVDEF void av_model_free(av_model *m) {
    int k;
    if (!m) return;
    for (k = 0; k < av__n_entries(m); k++) {
        av__entry *e = av__entry_at(m, k);
        av__tensor_free(e->t, k < m->params.n);
        AV_FREE(e->name);
        AV_FREE(e->state[0]);
        AV_FREE(e->state[1]);
    }
    AV_FREE(m->params.e);
    AV_FREE(m->buffers.e);
    AV_FREE(m->groups);
    AV_FREE(m);
}

AVDEF int av_model_error(const av_model *m) { return m->error; }

static void av__init_values(av_rng *rng, av_tensor *t, int init, float arg) {
    int fan_in = 1, fan_out = t->ndim ? t->shape[0] : 1, i;
    float bound = 0, std = 0;
    for (i = 1; i < t->ndim; i++) { fan_in *= t->shape[i]; if (i >= 2) fan_out *= t->shape[i]; }
    if (t->ndim < 2) fan_in = fan_out;
    switch (init) {
    case AV_INIT_ZEROS: return;
    case AV_INIT_ONES: for (i = 0; i < t->size; i++) t->data[i] = 1.0f; return;
    case AV_INIT_NORMAL: std = arg; break;
    case AV_INIT_UNIFORM: bound = arg; break;
    case AV_INIT_XAVIER_UNIFORM: bound = (arg > 0 ? arg : 1.0f) * sqrtf(6.0f / (float)(fan_in + fan_out)); break;
    case AV_INIT_XAVIER_NORMAL: std = (arg > 0 ? arg : 1.0f) * sqrtf(2.0f / (float)(fan_in + fan_out)); break;
    case AV_INIT_KAIMING_UNIFORM: bound = sqrtf(6.0f / (float)fan_in); break;
    case AV_INIT_KAIMING_NORMAL: std = sqrtf(2.0f / (float)fan_in); break;
    case AV_INIT_TORCH_LINEAR: bound = 1.0f / sqrtf((float)fan_in); break;
    }
    for (i = 0; i < t->size; i++)
        t->data[i] = std > 0 ? std * av_rng_normal(rng) : bound * (2.0f * av_rng_uniform(rng) - 1.0f);
}

/* Programming errors in a new tensor's name (who is "av_param" or "av_buffer"). */
static void av__check_name(const av_model *m, const char *name, const char *who) {
    int k;
    if (!m) av__fail("%s: the model is NULL", who);
    if (!name || !*name) av__fail("%s: a tensor needs a name, got %s", who, name ? "\"\"" : "NULL");
    if (strcmp(name, "__metadata__") == 0) av__fail("%s: the name \"__metadata__\" is reserved by safetensors", who);
    for (k = 0; k < 2; k++)
        if (strncmp(name, av__state_prefix[k], AV__STATE_PREFIX_LEN) == 0)
            av__fail("%s: '%s': names starting with \"%s\" are reserved for optimizer state in checkpoints", who, name,
                     av__state_prefix[k]);
    if (av__find(m, name) >= 0) av__fail("%s: a tensor named '%s' exists already", who, name);
}

/* count * size zeroed bytes, or NULL */
static void *av__alloc_zeros(size_t count, size_t size) {
    size_t bytes = count * size;
    void *p = size && count > SIZE_MAX / size ? NULL : AV_MALLOC(bytes ? bytes : 1);
    if (p) memset(p, 0, bytes);
    return p;
}

/* A new parameter (is_param) or buffer. Out of memory returns NULL, sets
   av_error() and keeps the first such error in the model. */
static av_tensor *av__model_tensor(av_model *m, const char *name, int init, float arg, int ndim, const int *shape,
                                   int is_param) {
    const char *who = is_param ? "av_param" : "av_buffer";
    av__list *l;
    av_tensor *t, head;
    char label[300], *copy;
    av__check_name(m, name, who);
    snprintf(label, sizeof label, "%s '%s'", who, name);
    if (init < AV_INIT_ZEROS || init > AV_INIT_TORCH_LINEAR) av__fail("%s: unknown init %d", label, init);
    av__set_shape(&head, ndim, shape, label);
    l = is_param ? &m->params : &m->buffers;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        av__entry *e = (av__entry *)AV_REALLOC(l->e, (size_t)cap * sizeof *e);
        if (e) { l->e = e; l->cap = cap; }
    }
    copy = (char *)AV_MALLOC(strlen(name) + 1);
    t = (av_tensor *)AV_MALLOC(sizeof *t);
    if (t) {
        *t = head;
        t->data = (float *)av__alloc_zeros((size_t)t->size, sizeof(float));
        t->grad = is_param ? (float *)av__alloc_zeros((size_t)t->size, sizeof(float)) : NULL;
    }
    if (l->n == l->cap || !copy || !t || !t->data || (is_param && !t->grad)) {
        AV_FREE(copy);
        av__tensor_free(t, 1);
        av__set_error(AV_ERR_NOMEM, "%s: out of memory for %d values", label, head.size);
        if (!m->error) {
            m->error = AV_ERR_NOMEM;
            memcpy(m->error_msg, av__errbuf, sizeof m->error_msg);
        }
        return NULL;
    }
    memcpy(copy, name, strlen(name) + 1);
    t->name = copy;
    t->requires_grad = is_param;
    av__init_values(&m->rng, t, init, arg);
    memset(&l->e[l->n], 0, sizeof l->e[l->n]);
    l->e[l->n].t = t;
    l->e[l->n++].name = copy;
    return t;
}

AVDEF av_tensor *av_param_shape(av_model *m, const char *name, int init, float arg, int ndim, const int *shape) {
    return av__model_tensor(m, name, init, arg, ndim, shape, 1);
}

AVDEF av_tensor *av_buffer_shape(av_model *m, const char *name, int init, float arg, int ndim, const int *shape) {
    return av__model_tensor(m, name, init, arg, ndim, shape, 0);
}

AVDEF av_tensor *av_param(av_model *m, const char *name, int init, float init_arg, int ndim, ...) {
    int shape[AV_MAX_DIMS];
    AV__VA_SHAPE(shape, ndim, ndim, "av_param");
    return av_param_shape(m, name, init, init_arg, ndim, shape);
}

AVDEF av_tensor *av_buffer(av_model *m, const char *name, int init, float init_arg, int ndim, ...) {
    int shape[AV_MAX_DIMS];
    AV__VA_SHAPE(shape, ndim, ndim, "av_buffer");
    return av_buffer_shape(m, name, init, init_arg, ndim, shape);
}

AVDEF int av_model_count(const av_model *m) { return m->params.n; }
AVDEF av_tensor *av_model_param(const av_model *m, int i) { return i >= 0 && i < m->params.n ? m->params.e[i].t : NULL; }
AVDEF int av_model_buffer_count(const av_model *m) { return m->buffers.n; }
AVDEF av_tensor *av_model_buffer(const av_model *m, int i) { return i >= 0 && i < m->buffers.n ? m->buffers.e[i].t : NULL; }
AVDEF long av_model_step(const av_model *m) { return m->step; }

AVDEF av_tensor *av_model_find(const av_model *m, const char *name) {
    int k = av__find(m, name);
    return k < 0 ? NULL : av__entry_at(m, k)->t;
}

AVDEF long av_model_num_values(const av_model *m) {
    long total = 0;
    int i;
    for (i = 0; i < m->params.n; i++) total += m->params.e[i].t->size;
    return total;
}

AVDEF void av_model_zero_grad(av_model *m) {
    int i;
    for (i = 0; i < m->params.n; i++) memset(m->params.e[i].t->grad, 0, (size_t)m->params.e[i].t->size * sizeof(float));
}

/* ---- parameter groups ---- */
AVDEF int av_model_add_group(av_model *m, double lr_scale, double decay_scale) {
    av__group *g;
    if (!(isfinite(lr_scale) && lr_scale >= 0 && isfinite(decay_scale) && decay_scale >= 0))
        return av__set_error(AV_ERR_ARG, "av_model_add_group: scales must be finite and >= 0 (lr_scale %g, decay_scale %g)",
                             lr_scale, decay_scale);
    g = (av__group *)AV_REALLOC(m->groups, (size_t)(m->n_groups + 1) * sizeof *g);
    if (!g) return av__set_error(AV_ERR_NOMEM, "av_model_add_group: out of memory");
    m->groups = g;
    g[m->n_groups].lr_scale = lr_scale;
    g[m->n_groups].decay_scale = decay_scale;
    return ++m->n_groups;
}

static int av__check_group(const av_model *m, int group, const char *who) {
    if (group >= 0 && group <= m->n_groups) return AV_OK;
    return av__set_error(AV_ERR_ARG, "%s: no group %d (this model has groups 0 to %d)", who, group, m->n_groups);
}

AVDEF int av_param_set_group(av_model *m, const av_tensor *p, int group) {
    int i, rc = av__check_group(m, group, "av_param_set_group");
    if (rc) return rc;
    for (i = 0; i < m->params.n; i++)
        if (m->params.e[i].t == p) {
            m->params.e[i].group = group;
            return AV_OK;
        }
    return av__set_error(AV_ERR_ARG, "av_param_set_group: '%s' is not a parameter of this model",
                         p && p->name ? p->name : "the tensor");
}

/* 1 if s matches pattern: '*' any run of characters, '?' any one. On a
   mismatch the last '*' takes one more character and matching resumes. */
static int av__glob(const char *pattern, const char *s) {
    const char *star = NULL, *resume = NULL;
    while (*s) {
        if (*pattern == '*') { star = pattern++; resume = s; }
        else if (*pattern == '?' || *pattern == *s) { pattern++; s++; }
        else if (star) { pattern = star + 1; s = ++resume; }
        else return 0;
    }
    while (*pattern == '*') pattern++;
    return *pattern == 0;
}

AVDEF int av_model_set_group(av_model *m, const char *pattern, int group) {
    int i, moved = 0, rc = av__check_group(m, group, "av_model_set_group");
    if (rc) return rc;
    if (!pattern) return av__set_error(AV_ERR_ARG, "av_model_set_group: the pattern is NULL");
    for (i = 0; i < m->params.n; i++)
        if (av__glob(pattern, m->params.e[i].t->name)) {
            m->params.e[i].group = group;
            moved++;
        }
    return moved;
}

/* ======================================================================= */
/* [6 layers] linear, mlp, autoencoder                                  */
/* ======================================================================= */
/* "<prefix>.<suffix>" into buf: sublayer parameter names */
#define AV__NAME_MAX 256
static const char *av__subname(char *buf, const char *prefix, const char *suffix) {
    size_t a = strlen(prefix), b = strlen(suffix);
    if (a + b + 2 > AV__NAME_MAX) av__fail("parameter name '%s.%s' is too long", prefix, suffix);
    memcpy(buf, prefix, a);
    buf[a] = '.';
    memcpy(buf + a + 1, suffix, b + 1);
    return buf;
}

AVDEF av_linear_layer av_linear_layer_new(av_model *m, const char *name, int in, int out, int bias) {
    av_linear_layer l;
    char buf[AV__NAME_MAX];
    l.weight = av_param(m, av__subname(buf, name, "weight"), AV_INIT_TORCH_LINEAR, 0, 2, out, in);
    l.bias = NULL;
    if (bias) l.bias = av_param(m, av__subname(buf, name, "bias"), AV_INIT_UNIFORM, 1.0f / sqrtf((float)(in ? in : 1)), 1, out);
    return l;
}

AVDEF av_tensor *av_linear_forward(av_ctx *c, const av_linear_layer *l, av_tensor *x) {
    return av_linear(c, x, l->weight, l->bias);
}

AVDEF av_tensor *av_activate(av_ctx *c, av_tensor *x, int activation) {
    switch (activation) {
    case AV_ACT_NONE: return x;
    case AV_ACT_RELU: return av_relu(c, x);
    case AV_ACT_TANH: return av_tanh(c, x);
    case AV_ACT_SIGMOID: return av_sigmoid(c, x);
    case AV_ACT_GELU: return av_gelu(c, x);
    case AV_ACT_LEAKY_RELU: return av_leaky_relu(c, x, 0.01f);
    default: av__fail("av_activate: unknown activation %d", activation);
    }
    return x;
}

AVDEF av_mlp av_mlp_new(av_model *m, const char *name, int n_layers, const int *sizes, int activation) {
    av_mlp net;
    char buf[AV__NAME_MAX], index[16];
    int i;
    if (n_layers < 1 || n_layers > AV_MLP_MAX_LAYERS) av__fail("av_mlp_new: %d layers (1 to %d)", n_layers, AV_MLP_MAX_LAYERS);
    memset(&net, 0, sizeof net);
    net.n_layers = n_layers;
    net.activation = activation;
    for (i = 0; i < n_layers; i++) {
        snprintf(index, sizeof index, "%d", i);
        net.layers[i] = av_linear_layer_new(m, av__subname(buf, name, index), sizes[i], sizes[i + 1], 1);
    }
    return net;
}

AVDEF av_tensor *av_mlp_forward(av_ctx *c, const av_mlp *net, av_tensor *x) {
    int i;
    for (i = 0; i < net->n_layers; i++) {
        x = av_linear_forward(c, &net->layers[i], x);
        if (i + 1 < net->n_layers) x = av_activate(c, x, net->activation);
    }
    return x;
}


/* ---- multi-head attention ---- */
AVDEF av_mha av_mha_new(av_model *m, const char *name, int embed_dim, int num_heads, int kdim, int vdim, int bias,
                        float dropout) {
    av_mha a;
    char buf[AV__NAME_MAX];
    int E = embed_dim;
    memset(&a, 0, sizeof a);
    if (E <= 0 || num_heads <= 0 || E % num_heads)
        av__fail("av_mha_new: embed_dim %d must be a positive multiple of num_heads %d", E, num_heads);
    if (kdim < 0 || vdim < 0) av__fail("av_mha_new: kdim %d and vdim %d must be >= 0 (0: embed_dim)", kdim, vdim);
    if (!(dropout >= 0.0f && dropout < 1.0f)) av__fail("av_mha_new: dropout %g must be in [0, 1)", (double)dropout);
    a.embed_dim = E;
    a.num_heads = num_heads;
    a.kdim = kdim ? kdim : E;
    a.vdim = vdim ? vdim : E;
    a.dropout = dropout;
    /* PyTorch: xavier_uniform_ on the projections, zero biases */
    if (a.kdim == E && a.vdim == E) {
        a.in_proj_weight = av_param(m, av__subname(buf, name, "in_proj_weight"), AV_INIT_XAVIER_UNIFORM, 0, 2, 3 * E, E);
    } else {
        a.q_proj_weight = av_param(m, av__subname(buf, name, "q_proj_weight"), AV_INIT_XAVIER_UNIFORM, 0, 2, E, E);
        a.k_proj_weight = av_param(m, av__subname(buf, name, "k_proj_weight"), AV_INIT_XAVIER_UNIFORM, 0, 2, E, a.kdim);
        a.v_proj_weight = av_param(m, av__subname(buf, name, "v_proj_weight"), AV_INIT_XAVIER_UNIFORM, 0, 2, E, a.vdim);
    }
    if (bias) a.in_proj_bias = av_param(m, av__subname(buf, name, "in_proj_bias"), AV_INIT_ZEROS, 0, 1, 3 * E);
    a.out_proj = av_linear_layer_new(m, av__subname(buf, name, "out_proj"), E, E, bias);
    if (a.out_proj.bias) memset(a.out_proj.bias->data, 0, (size_t)E * sizeof(float));
    return a;
}

/* The projection of x by parts [part, part + n) of (q, k, v): one product
   for several parts when the weight is packed. */
static av_tensor *av__mha_project(av_ctx *c, const av_mha *a, av_tensor *x, int part, int n) {
    int E = a->embed_dim;
    av_tensor *w, *b = NULL;
    if (a->in_proj_weight) w = av_slice(c, a->in_proj_weight, 0, part * E, (part + n) * E);
    else w = part == 0 ? a->q_proj_weight : part == 1 ? a->k_proj_weight : a->v_proj_weight;
    if (a->in_proj_bias) b = av_slice(c, a->in_proj_bias, 0, part * E, (part + n) * E);
    return av_linear(c, x, w, b);
}

/* B and T of x [B, T, width] or [T, width] (then B = 1). */
static void av__mha_dims(const av_tensor *x, int width, int *B, int *T, const char *op, const char *what) {
    if ((x->ndim != 3 && x->ndim != 2) || x->shape[x->ndim - 1] != width) {
        char s[64];
        av__fail("%s: %s %s must be [B, T, %d] or [T, %d]", op, what, av__shape_str(x, s, sizeof s), width, width);
    }
    *B = x->ndim == 3 ? x->shape[0] : 1;
    *T = x->shape[x->ndim - 2];
}

/* The heads' output [B, Tq, E] (in query's rank), head h in columns h*Dh.. */
static av_tensor *av__mha_out(av_ctx *c, const av_mha *a, const av_tensor *query, av__sdpa_geom *g) {
    int shape[3], E = a->embed_dim;
    shape[0] = g->B; shape[1] = g->Tq; shape[2] = E;
    g->o = av__heads_of(0, (size_t)g->Tq * E, (size_t)g->D, E);
    return query->ndim == 3 ? av__tensor_empty(c, 3, shape, "av_mha") : av__tensor_empty(c, 2, shape + 1, "av_mha");
}

/* key_padding_mask [B, Tk] and attn_mask as one additive mask. */
static av_tensor *av__mha_mask(av_ctx *c, av_tensor *kpm, av_tensor *attn_mask, int B, int Tk) {
    if (!kpm) return attn_mask;
    if (kpm->ndim != 2 || kpm->shape[0] != B || kpm->shape[1] != Tk) {
        char s[64];
        av__fail("av_mha_forward: key_padding_mask %s must be [B, Tk] = [%d,%d]", av__shape_str(kpm, s, sizeof s), B, Tk);
    }
    kpm = av_reshape(c, kpm, 4, B, 1, 1, Tk);
    return attn_mask ? av_add(c, kpm, attn_mask) : kpm;
}

static void av__mha_geom(av__sdpa_geom *g, const av_mha *a, int B, int Tq, int Tk) {
    memset(g, 0, sizeof *g);
    g->B = B;
    g->H = a->num_heads;
    g->Tq = Tq;
    g->Tk = Tk;
    g->D = g->Dv = a->embed_dim / a->num_heads;
}

AVDEF av_tensor *av_mha_forward(av_ctx *c, const av_mha *a, av_tensor *query, av_tensor *key, av_tensor *value,
                                av_tensor *key_padding_mask, av_tensor *attn_mask, int is_causal, av_tensor **weights) {
    static const char *op = "av_mha_forward";
    int E = a->embed_dim, B, Tq, Bk, Tk, Bv, Tv, Dh = E / a->num_heads;
    av_tensor *qp, *kp, *vp, *mask, *out, *w = NULL;
    av__sdpa_geom g;
    av__live(c, op, query, key, value);
    av__live(c, op, key_padding_mask, attn_mask, NULL);
    av__mha_dims(query, E, &B, &Tq, op, "query");
    av__mha_dims(key, a->kdim, &Bk, &Tk, op, "key");
    av__mha_dims(value, a->vdim, &Bv, &Tv, op, "value");
    if (Bk != B || Bv != B || Tv != Tk || key->ndim != query->ndim || value->ndim != query->ndim)
        av__fail_shapes(op, "query, key and value need one batch size, and key and value one length", query,
                        Tv != Tk ? value : key);
    av__mha_geom(&g, a, B, Tq, Tk);
    if (query == key && key == value && a->in_proj_weight) { /* self-attention: one product */
        qp = kp = vp = av__mha_project(c, a, query, 0, 3);
        g.q = av__heads_of(0, (size_t)Tq * 3 * E, (size_t)Dh, 3 * E);
        g.k = av__heads_of((size_t)E, (size_t)Tk * 3 * E, (size_t)Dh, 3 * E);
        g.v = av__heads_of((size_t)2 * E, (size_t)Tk * 3 * E, (size_t)Dh, 3 * E);
    } else {
        qp = av__mha_project(c, a, query, 0, 1);
        g.q = av__heads_of(0, (size_t)Tq * E, (size_t)Dh, E);
        if (key == value && a->in_proj_weight) { /* keys and values from one memory: one product */
            kp = vp = av__mha_project(c, a, key, 1, 2);
            g.k = av__heads_of(0, (size_t)Tk * 2 * E, (size_t)Dh, 2 * E);
            g.v = av__heads_of((size_t)E, (size_t)Tk * 2 * E, (size_t)Dh, 2 * E);
        } else {
            kp = av__mha_project(c, a, key, 1, 1);
            vp = av__mha_project(c, a, value, 2, 1);
            g.k = g.v = av__heads_of(0, (size_t)Tk * E, (size_t)Dh, E);
        }
    }
    out = av__mha_out(c, a, query, &g);
    mask = av__mha_mask(c, key_padding_mask, attn_mask, B, Tk);
    av__sdpa_setup(c, &g, op, mask, is_causal, a->dropout, 0.0f);
    av__attend(c, op, &g, qp, kp, vp, mask, out, weights ? &w : NULL);
    if (weights) *weights = w;
    return av_linear_forward(c, &a->out_proj, out);
}

/* ---- the KV cache ---- */
AVDEF int av_kv_cache_init(av_kv_cache *kv, const av_mha *a, int batch, int capacity) {
    size_t n = (size_t)batch * a->num_heads * (size_t)(capacity > 0 ? capacity : 1) * (size_t)(a->embed_dim / a->num_heads);
    memset(kv, 0, sizeof *kv);
    if (batch < 1 || capacity < 0) return av__set_error(AV_ERR_ARG, "av_kv_cache_init: batch %d, capacity %d", batch, capacity);
    kv->batch = batch;
    kv->heads = a->num_heads;
    kv->head_dim = a->embed_dim / a->num_heads;
    kv->capacity = capacity > 0 ? capacity : 1;
    kv->k = (float *)AV_MALLOC(n * sizeof(float));
    kv->v = (float *)AV_MALLOC(n * sizeof(float));
    if (!kv->k || !kv->v) {
        av_kv_cache_free(kv);
        return av__set_error(AV_ERR_NOMEM, "av_kv_cache_init: out of memory for %lu values", (unsigned long)(2 * n));
    }
    return AV_OK;
}

AVDEF void av_kv_cache_free(av_kv_cache *kv) {
    AV_FREE(kv->k);
    AV_FREE(kv->v);
    memset(kv, 0, sizeof *kv);
}

AVDEF void av_kv_cache_clear(av_kv_cache *kv) { kv->length = 0; }

/* Room for `need` positions: the buffers grow by doubling, each head's rows moved. */
static void av__kv_reserve(av_kv_cache *kv, int need) {
    int cap = kv->capacity, bh, which;
    size_t dh = (size_t)kv->head_dim;
    if (need <= cap) return;
    while (cap < need) cap *= 2;
    for (which = 0; which < 2; which++) {
        float **buf = which ? &kv->v : &kv->k;
        float *grown = (float *)AV_MALLOC((size_t)kv->batch * kv->heads * (size_t)cap * dh * sizeof(float));
        if (!grown) av__fail("av_mha_step: out of memory growing the KV cache to %d positions", cap);
        for (bh = 0; bh < kv->batch * kv->heads; bh++)
            memcpy(grown + (size_t)bh * cap * dh, *buf + (size_t)bh * kv->capacity * dh, (size_t)kv->length * dh * sizeof(float));
        AV_FREE(*buf);
        *buf = grown;
    }
    kv->capacity = cap;
}

/* Copies T rows of keys and values (row r of batch b at src + (b*T + r)*ld,
   head h at column h*Dh) to the cache's positions length.. */
static void av__kv_append(av_kv_cache *kv, const float *k, const float *v, int T, int ld) {
    int b, h, r;
    size_t dh = (size_t)kv->head_dim;
    for (b = 0; b < kv->batch; b++)
        for (h = 0; h < kv->heads; h++)
            for (r = 0; r < T; r++) {
                size_t at = (((size_t)b * kv->heads + h) * kv->capacity + kv->length + r) * dh;
                size_t from = ((size_t)b * T + r) * ld + h * dh;
                memcpy(kv->k + at, k + from, dh * sizeof(float));
                memcpy(kv->v + at, v + from, dh * sizeof(float));
            }
    kv->length += T;
}

static void av__kv_check(const av_kv_cache *kv, const av_mha *a, int B, const char *op) {
    if (!kv->k || kv->batch != B || kv->heads != a->num_heads || kv->head_dim != a->embed_dim / a->num_heads)
        av__fail("%s: the cache (batch %d, %d heads of %d) does not fit this layer and input (batch %d, %d heads of %d)",
                 op, kv->batch, kv->heads, kv->head_dim, B, a->num_heads, a->embed_dim / a->num_heads);
}

/* Attention of the rows of qp (views in g) to the cache's keys and values. */
static av_tensor *av__mha_attend_kv(av_ctx *c, const av_mha *a, const char *op, av__sdpa_geom *g, av_tensor *qp,
                                    av_tensor *query, const av_kv_cache *kv, av_tensor *mask, int causal,
                                    av_tensor **weights) {
    int n = kv->batch * kv->heads * kv->capacity * kv->head_dim;
    size_t sh = (size_t)kv->capacity * kv->head_dim;
    av_tensor *kt = av_wrap(c, kv->k, 1, n), *vt = av_wrap(c, kv->v, 1, n), *out, *w = NULL;
    g->Tk = kv->length;
    g->k = g->v = av__heads_of(0, sh * kv->heads, sh, kv->head_dim);
    out = av__mha_out(c, a, query, g);
    av__sdpa_setup(c, g, op, mask, causal, a->dropout, 0.0f);
    av__attend(c, op, g, qp, kt, vt, mask, out, weights ? &w : NULL);
    if (weights) *weights = w;
    return av_linear_forward(c, &a->out_proj, out);
}

AVDEF av_tensor *av_mha_step(av_ctx *c, const av_mha *a, av_tensor *x, av_kv_cache *kv, av_tensor **weights) {
    static const char *op = "av_mha_step";
    int E = a->embed_dim, B, T;
    av_tensor *p;
    av__sdpa_geom g;
    av__live(c, op, x, NULL, NULL);
    if (!a->in_proj_weight) av__fail("%s: self-attention needs kdim = vdim = embed_dim", op);
    av__mha_dims(x, E, &B, &T, op, "x");
    av__kv_check(kv, a, B, op);
    p = av__mha_project(c, a, x, 0, 3);
    av__kv_reserve(kv, kv->length + T);
    av__kv_append(kv, p->data + E, p->data + 2 * E, T, 3 * E);
    av__mha_geom(&g, a, B, T, kv->length);
    g.q = av__heads_of(0, (size_t)T * 3 * E, (size_t)g.D, 3 * E);
    return av__mha_attend_kv(c, a, op, &g, p, x, kv, NULL, 1, weights);
}

AVDEF int av_kv_cache_set_memory(av_ctx *c, const av_mha *a, av_tensor *memory, av_kv_cache *kv) {
    static const char *op = "av_kv_cache_set_memory";
    int B, T, prev = av_set_grad_enabled(c, 0);
    av_tensor *k, *v;
    av__live(c, op, memory, NULL, NULL);
    if (a->kdim != a->vdim) av__fail("%s: one memory needs kdim = vdim", op);
    av__mha_dims(memory, a->kdim, &B, &T, op, "memory");
    av__kv_check(kv, a, B, op);
    if (a->in_proj_weight) k = v = av__mha_project(c, a, memory, 1, 2);
    else {
        k = av__mha_project(c, a, memory, 1, 1);
        v = av__mha_project(c, a, memory, 2, 1);
    }
    kv->length = 0;
    av__kv_reserve(kv, T);
    av__kv_append(kv, k->data, v->data + (k == v ? a->embed_dim : 0), T, k == v ? 2 * a->embed_dim : a->embed_dim);
    av_set_grad_enabled(c, prev);
    return AV_OK;
}

AVDEF av_tensor *av_mha_attend_cache(av_ctx *c, const av_mha *a, av_tensor *query, const av_kv_cache *kv,
                                     av_tensor *key_padding_mask, av_tensor **weights) {
    static const char *op = "av_mha_attend_cache";
    int E = a->embed_dim, B, T;
    av_tensor *qp;
    av__sdpa_geom g;
    av__live(c, op, query, key_padding_mask, NULL);
    av__mha_dims(query, E, &B, &T, op, "query");
    av__kv_check(kv, a, B, op);
    qp = av__mha_project(c, a, query, 0, 1);
    av__mha_geom(&g, a, B, T, kv->length);
    g.q = av__heads_of(0, (size_t)T * E, (size_t)g.D, E);
    return av__mha_attend_kv(c, a, op, &g, qp, query, kv, av__mha_mask(c, key_padding_mask, NULL, B, kv->length), 0,
                             weights);
}

/* ---- layer norm, embedding, positions ---- */
AVDEF av_layer_norm_layer av_layer_norm_new(av_model *m, const char *name, int dim, float eps) {
    av_layer_norm_layer l;
    char buf[AV__NAME_MAX];
    l.weight = av_param(m, av__subname(buf, name, "weight"), AV_INIT_ONES, 0, 1, dim);
    l.bias = av_param(m, av__subname(buf, name, "bias"), AV_INIT_ZEROS, 0, 1, dim);
    l.eps = eps;
    return l;
}

AVDEF av_tensor *av_layer_norm_forward(av_ctx *c, const av_layer_norm_layer *l, av_tensor *x) {
    return av_layer_norm(c, x, l->weight, l->bias, l->eps);
}

AVDEF av_embedding_layer av_embedding_new(av_model *m, const char *name, int num, int dim) {
    av_embedding_layer e;
    char buf[AV__NAME_MAX];
    e.weight = av_param(m, av__subname(buf, name, "weight"), AV_INIT_NORMAL, 1.0f, 2, num, dim);
    return e;
}

AVDEF av_tensor *av_embedding_forward(av_ctx *c, const av_embedding_layer *e, const int *ids, int B, int T) {
    av_tensor *x = av_embedding(c, e->weight, ids, (B ? B : 1) * T);
    return B ? av_reshape(c, x, 3, B, T, e->weight->shape[1]) : x;
}

AVDEF av_tensor *av_sinusoidal_positions(av_ctx *c, int T, int d, int start) {
    int shape[2], p, i;
    av_tensor *pe;
    shape[0] = T;
    shape[1] = d;
    pe = av__tensor_empty(c, 2, shape, "av_sinusoidal_positions");
    for (p = 0; p < T; p++)
        for (i = 0; i < d; i++) {
            double angle = (double)(start + p) / pow(10000.0, (double)(i - i % 2) / (double)d);
            pe->data[(size_t)p * d + i] = (float)(i % 2 ? cos(angle) : sin(angle));
        }
    return pe;
}

/* ---- Transformer layers ---- */
AVDEF av_transformer_config av_transformer_defaults(int d_model, int nhead) {
    av_transformer_config cfg;
    cfg.d_model = d_model;
    cfg.nhead = nhead;
    cfg.dim_feedforward = 2048;
    cfg.dropout = 0.1f;
    cfg.activation = AV_ACT_RELU;
    cfg.layer_norm_eps = 1e-5f;
    cfg.norm_first = 0;
    return cfg;
}

static void av__transformer_check(const av_transformer_config *cfg, const char *op) {
    if (cfg->d_model <= 0 || cfg->nhead <= 0 || cfg->d_model % cfg->nhead || cfg->dim_feedforward <= 0)
        av__fail("%s: d_model %d must be a positive multiple of nhead %d, dim_feedforward %d positive", op, cfg->d_model,
                 cfg->nhead, cfg->dim_feedforward);
    if (cfg->activation != AV_ACT_RELU && cfg->activation != AV_ACT_GELU)
        av__fail("%s: activation %d must be AV_ACT_RELU or AV_ACT_GELU", op, cfg->activation);
}

/* the feed-forward block and the norms shared by both layers; `first` names norm1.. */
static void av__ffn_new(av_model *m, const char *name, const av_transformer_config *cfg, av_linear_layer *linear1,
                        av_linear_layer *linear2) {
    char buf[AV__NAME_MAX];
    *linear1 = av_linear_layer_new(m, av__subname(buf, name, "linear1"), cfg->d_model, cfg->dim_feedforward, 1);
    *linear2 = av_linear_layer_new(m, av__subname(buf, name, "linear2"), cfg->dim_feedforward, cfg->d_model, 1);
}

AVDEF av_encoder_layer av_encoder_layer_new(av_model *m, const char *name, const av_transformer_config *cfg) {
    av_encoder_layer l;
    char buf[AV__NAME_MAX];
    av__transformer_check(cfg, "av_encoder_layer_new");
    l.cfg = *cfg;
    l.self_attn = av_mha_new(m, av__subname(buf, name, "self_attn"), cfg->d_model, cfg->nhead, 0, 0, 1, cfg->dropout);
    av__ffn_new(m, name, cfg, &l.linear1, &l.linear2);
    l.norm1 = av_layer_norm_new(m, av__subname(buf, name, "norm1"), cfg->d_model, cfg->layer_norm_eps);
    l.norm2 = av_layer_norm_new(m, av__subname(buf, name, "norm2"), cfg->d_model, cfg->layer_norm_eps);
    return l;
}

AVDEF av_decoder_layer av_decoder_layer_new(av_model *m, const char *name, const av_transformer_config *cfg) {
    av_decoder_layer l;
    char buf[AV__NAME_MAX];
    av__transformer_check(cfg, "av_decoder_layer_new");
    l.cfg = *cfg;
    l.self_attn = av_mha_new(m, av__subname(buf, name, "self_attn"), cfg->d_model, cfg->nhead, 0, 0, 1, cfg->dropout);
    l.multihead_attn = av_mha_new(m, av__subname(buf, name, "multihead_attn"), cfg->d_model, cfg->nhead, 0, 0, 1, cfg->dropout);
    av__ffn_new(m, name, cfg, &l.linear1, &l.linear2);
    l.norm1 = av_layer_norm_new(m, av__subname(buf, name, "norm1"), cfg->d_model, cfg->layer_norm_eps);
    l.norm2 = av_layer_norm_new(m, av__subname(buf, name, "norm2"), cfg->d_model, cfg->layer_norm_eps);
    l.norm3 = av_layer_norm_new(m, av__subname(buf, name, "norm3"), cfg->d_model, cfg->layer_norm_eps);
    return l;
}

/* linear2(dropout(activation(linear1(x)))) */
static av_tensor *av__ffn(av_ctx *c, const av_transformer_config *cfg, const av_linear_layer *linear1,
                          const av_linear_layer *linear2, av_tensor *x) {
    av_tensor *h = av_activate(c, av_linear_forward(c, linear1, x), cfg->activation);
    return av_linear_forward(c, linear2, av_dropout(c, h, cfg->dropout));
}

/* One sublayer with its residual: x + dropout(f(norm(x))) before, norm(x + dropout(f(x))) after. */
static av_tensor *av__residual(av_ctx *c, const av_transformer_config *cfg, const av_layer_norm_layer *norm, av_tensor *x,
                               av_tensor *f_out) {
    av_tensor *y = av_add(c, x, av_dropout(c, f_out, cfg->dropout));
    return cfg->norm_first ? y : av_layer_norm_forward(c, norm, y);
}
#define AV__SUBLAYER_IN(cfg, norm, x) ((cfg)->norm_first ? av_layer_norm_forward(c, norm, x) : (x))

AVDEF av_tensor *av_encoder_layer_forward(av_ctx *c, const av_encoder_layer *l, av_tensor *x, av_tensor *mask,
                                          av_tensor *key_padding_mask, int is_causal) {
    const av_transformer_config *cfg = &l->cfg;
    av_tensor *h = AV__SUBLAYER_IN(cfg, &l->norm1, x);
    x = av__residual(c, cfg, &l->norm1, x, av_mha_forward(c, &l->self_attn, h, h, h, key_padding_mask, mask, is_causal, NULL));
    h = AV__SUBLAYER_IN(cfg, &l->norm2, x);
    return av__residual(c, cfg, &l->norm2, x, av__ffn(c, cfg, &l->linear1, &l->linear2, h));
}

/* The decoder layer; with a cache (dc_self, dc_memory) its attentions read
   and extend it instead of taking all of x and the memory. */
static av_tensor *av__decoder_layer(av_ctx *c, const av_decoder_layer *l, av_tensor *x, av_tensor *memory, av_tensor *tgt_mask,
                                    av_tensor *tgt_kpm, int tgt_is_causal, av_tensor *memory_mask, av_tensor *memory_kpm,
                                    av_kv_cache *self_kv, const av_kv_cache *memory_kv) {
    const av_transformer_config *cfg = &l->cfg;
    av_tensor *h = AV__SUBLAYER_IN(cfg, &l->norm1, x), *a;
    a = self_kv ? av_mha_step(c, &l->self_attn, h, self_kv, NULL)
                : av_mha_forward(c, &l->self_attn, h, h, h, tgt_kpm, tgt_mask, tgt_is_causal, NULL);
    x = av__residual(c, cfg, &l->norm1, x, a);
    h = AV__SUBLAYER_IN(cfg, &l->norm2, x);
    a = memory_kv ? av_mha_attend_cache(c, &l->multihead_attn, h, memory_kv, memory_kpm, NULL)
                  : av_mha_forward(c, &l->multihead_attn, h, memory, memory, memory_kpm, memory_mask, 0, NULL);
    x = av__residual(c, cfg, &l->norm2, x, a);
    h = AV__SUBLAYER_IN(cfg, &l->norm3, x);
    return av__residual(c, cfg, &l->norm3, x, av__ffn(c, cfg, &l->linear1, &l->linear2, h));
}

AVDEF av_tensor *av_decoder_layer_forward(av_ctx *c, const av_decoder_layer *l, av_tensor *x, av_tensor *memory,
                                          av_tensor *tgt_mask, av_tensor *tgt_key_padding_mask, int tgt_is_causal,
                                          av_tensor *memory_mask, av_tensor *memory_key_padding_mask) {
    return av__decoder_layer(c, l, x, memory, tgt_mask, tgt_key_padding_mask, tgt_is_causal, memory_mask,
                             memory_key_padding_mask, NULL, NULL);
}

static void av__stack_check(int num_layers, const char *op) {
    if (num_layers < 1 || num_layers > AV_MAX_TRANSFORMER_LAYERS)
        av__fail("%s: %d layers (1 to %d)", op, num_layers, AV_MAX_TRANSFORMER_LAYERS);
}

/* "<name>.layers.<i>" */
static const char *av__layer_name(char *buf, const char *name, int i) {
    char index[32], layers[AV__NAME_MAX];
    snprintf(index, sizeof index, "%d", i);
    return av__subname(buf, av__subname(layers, name, "layers"), index);
}

AVDEF av_transformer_encoder av_transformer_encoder_new(av_model *m, const char *name, const av_transformer_config *cfg,
                                                        int num_layers, int final_norm) {
    av_transformer_encoder e;
    char buf[AV__NAME_MAX];
    int i;
    av__stack_check(num_layers, "av_transformer_encoder_new");
    memset(&e, 0, sizeof e);
    e.num_layers = num_layers;
    for (i = 0; i < num_layers; i++) e.layers[i] = av_encoder_layer_new(m, av__layer_name(buf, name, i), cfg);
    if (final_norm) e.norm = av_layer_norm_new(m, av__subname(buf, name, "norm"), cfg->d_model, cfg->layer_norm_eps);
    return e;
}

AVDEF av_transformer_decoder av_transformer_decoder_new(av_model *m, const char *name, const av_transformer_config *cfg,
                                                        int num_layers, int final_norm) {
    av_transformer_decoder d;
    char buf[AV__NAME_MAX];
    int i;
    av__stack_check(num_layers, "av_transformer_decoder_new");
    memset(&d, 0, sizeof d);
    d.num_layers = num_layers;
    for (i = 0; i < num_layers; i++) d.layers[i] = av_decoder_layer_new(m, av__layer_name(buf, name, i), cfg);
    if (final_norm) d.norm = av_layer_norm_new(m, av__subname(buf, name, "norm"), cfg->d_model, cfg->layer_norm_eps);
    return d;
}

static av_tensor *av__final_norm(av_ctx *c, const av_layer_norm_layer *norm, av_tensor *x) {
    return norm->weight ? av_layer_norm_forward(c, norm, x) : x;
}

AVDEF av_tensor *av_transformer_encoder_forward(av_ctx *c, const av_transformer_encoder *e, av_tensor *x, av_tensor *mask,
                                                av_tensor *key_padding_mask, int is_causal) {
    int i;
    for (i = 0; i < e->num_layers; i++) x = av_encoder_layer_forward(c, &e->layers[i], x, mask, key_padding_mask, is_causal);
    return av__final_norm(c, &e->norm, x);
}

AVDEF av_tensor *av_transformer_decoder_forward(av_ctx *c, const av_transformer_decoder *d, av_tensor *x, av_tensor *memory,
                                                av_tensor *tgt_mask, av_tensor *tgt_key_padding_mask, int tgt_is_causal,
                                                av_tensor *memory_mask, av_tensor *memory_key_padding_mask) {
    int i;
    for (i = 0; i < d->num_layers; i++)
        x = av__decoder_layer(c, &d->layers[i], x, memory, tgt_mask, tgt_key_padding_mask, tgt_is_causal, memory_mask,
                              memory_key_padding_mask, NULL, NULL);
    return av__final_norm(c, &d->norm, x);
}

AVDEF av_transformer av_transformer_new(av_model *m, const char *name, const av_transformer_config *cfg,
                                        int num_encoder_layers, int num_decoder_layers) {
    av_transformer t;
    char buf[AV__NAME_MAX];
    t.encoder = av_transformer_encoder_new(m, av__subname(buf, name, "encoder"), cfg, num_encoder_layers, 1);
    t.decoder = av_transformer_decoder_new(m, av__subname(buf, name, "decoder"), cfg, num_decoder_layers, 1);
    return t;
}

AVDEF av_tensor *av_transformer_forward(av_ctx *c, const av_transformer *t, av_tensor *src, av_tensor *tgt,
                                        av_tensor *src_key_padding_mask, av_tensor *tgt_key_padding_mask) {
    av_tensor *memory = av_transformer_encoder_forward(c, &t->encoder, src, NULL, src_key_padding_mask, 0);
    return av_transformer_decoder_forward(c, &t->decoder, tgt, memory, NULL, tgt_key_padding_mask, 1, NULL,
                                          src_key_padding_mask);
}

/* ---- decoding with caches ---- */
AVDEF int av_decoder_cache_init(av_decoder_cache *dc, const av_transformer_decoder *d, int batch, int capacity) {
    int i, rc = AV_OK;
    memset(dc, 0, sizeof *dc);
    for (i = 0; i < d->num_layers && !rc; i++) {
        rc = av_kv_cache_init(&dc->self_kv[i], &d->layers[i].self_attn, batch, capacity);
        if (!rc) rc = av_kv_cache_init(&dc->memory_kv[i], &d->layers[i].multihead_attn, batch, capacity);
        dc->num_layers = i + 1;
    }
    if (rc) av_decoder_cache_free(dc);
    return rc;
}

AVDEF void av_decoder_cache_free(av_decoder_cache *dc) {
    int i;
    for (i = 0; i < dc->num_layers; i++) {
        av_kv_cache_free(&dc->self_kv[i]);
        av_kv_cache_free(&dc->memory_kv[i]);
    }
    dc->num_layers = 0;
}

AVDEF int av_decoder_cache_set_memory(av_ctx *c, av_decoder_cache *dc, const av_transformer_decoder *d, av_tensor *memory) {
    int i, rc = AV_OK;
    if (dc->num_layers != d->num_layers)
        return av__set_error(AV_ERR_ARG, "av_decoder_cache_set_memory: the cache has %d layers, the decoder %d",
                             dc->num_layers, d->num_layers);
    for (i = 0; i < d->num_layers && !rc; i++) {
        rc = av_kv_cache_set_memory(c, &d->layers[i].multihead_attn, memory, &dc->memory_kv[i]);
        av_kv_cache_clear(&dc->self_kv[i]);
    }
    return rc;
}

AVDEF av_tensor *av_transformer_decoder_step(av_ctx *c, const av_transformer_decoder *d, av_tensor *x, av_decoder_cache *dc,
                                             av_tensor *memory_key_padding_mask) {
    int i;
    if (dc->num_layers != d->num_layers)
        av__fail("av_transformer_decoder_step: the cache has %d layers, the decoder %d", dc->num_layers, d->num_layers);
    for (i = 0; i < d->num_layers; i++)
        x = av__decoder_layer(c, &d->layers[i], x, NULL, NULL, NULL, 1, NULL, memory_key_padding_mask, &dc->self_kv[i],
                              &dc->memory_kv[i]);
    return av__final_norm(c, &d->norm, x);
}

/* ---- learned-score attention (Bahdanau, Luong) and attention pooling ---- */
AVDEF av_attention av_attention_new(av_model *m, const char *name, int score, int query_dim, int key_dim,
                                    int attn_dim, int bias) {
    static const char *op = "av_attention_new";
    av_attention a;
    char buf[AV__NAME_MAX];
    int additive = score == AV_SCORE_ADDITIVE || score == AV_SCORE_CONCAT;
    memset(&a, 0, sizeof a);
    if (score < AV_SCORE_ADDITIVE || score > AV_SCORE_CONCAT) av__fail("%s: unknown score %d", op, score);
    if (query_dim <= 0 || key_dim <= 0 || (additive ? attn_dim <= 0 : attn_dim != 0))
        av__fail("%s: query_dim %d, key_dim %d, attn_dim %d (attn_dim > 0 for additive and concat scores, else 0)", op,
                 query_dim, key_dim, attn_dim);
    if (score == AV_SCORE_DOT && query_dim != key_dim)
        av__fail("%s: dot scores need query_dim %d = key_dim %d", op, query_dim, key_dim);
    a.score = score;
    a.query_dim = query_dim;
    a.key_dim = key_dim;
    a.attn_dim = attn_dim;
    if (score == AV_SCORE_ADDITIVE) {
        a.W1 = av_linear_layer_new(m, av__subname(buf, name, "W1"), key_dim, attn_dim, bias);
        a.W2 = av_linear_layer_new(m, av__subname(buf, name, "W2"), query_dim, attn_dim, bias);
    }
    if (score == AV_SCORE_GENERAL) a.W = av_linear_layer_new(m, av__subname(buf, name, "W"), key_dim, query_dim, bias);
    if (score == AV_SCORE_CONCAT) a.W = av_linear_layer_new(m, av__subname(buf, name, "W"), query_dim + key_dim, attn_dim, bias);
    if (additive) a.v = av_linear_layer_new(m, av__subname(buf, name, "v"), attn_dim, 1, 0);
    return a;
}

AVDEF av_attn_memory av_attention_memory(av_ctx *c, const av_attention *a, av_tensor *values, av_tensor *mask,
                                         const int *lengths) {
    static const char *op = "av_attention_memory";
    av_attn_memory mem;
    int B, Tk;
    av__live(c, op, values, mask, NULL);
    if (values->ndim != 3 || values->shape[2] != a->key_dim) {
        char s[64];
        av__fail("%s: values %s must be [B, Tk, key_dim = %d]", op, av__shape_str(values, s, sizeof s), a->key_dim);
    }
    B = values->shape[0];
    Tk = values->shape[1];
    mem.values = values;
    if (a->score == AV_SCORE_ADDITIVE) mem.keys = av_linear_forward(c, &a->W1, values);
    else if (a->score == AV_SCORE_GENERAL) mem.keys = av_linear_forward(c, &a->W, values);
    else if (a->score == AV_SCORE_CONCAT) /* W [h_dec; h_enc] = W_dec h_dec + W_enc h_enc: the keys are W_enc h_enc + b */
        mem.keys = av_linear(c, values, av_slice(c, a->W.weight, 1, a->query_dim, a->query_dim + a->key_dim), a->W.bias);
    else mem.keys = values;
    mem.mask = av__scores_mask(c, op, mask, B, -1, Tk);
    if (lengths) {
        av_tensor *hide = av_reshape(c, av_key_padding_mask(c, lengths, B, Tk), 3, B, 1, Tk);
        mem.mask = mem.mask ? av_add(c, mem.mask, hide) : hide;
    }
    return mem;
}

/* Masked scores of query [B, Dq] or [B, Tq, Dq]: [B, Tk] or [B, Tq, Tk]. */
static av_tensor *av__attention_scores(av_ctx *c, const av_attention *a, const av_attn_memory *mem, av_tensor *query,
                                       const char *op) {
    int B = mem->values->shape[0];
    av_tensor *q, *s;
    av__live(c, op, query, mem->keys, mem->mask);
    if ((query->ndim != 2 && query->ndim != 3) || query->shape[0] != B || query->shape[query->ndim - 1] != a->query_dim) {
        char sq[64];
        av__fail("%s: query %s must be [B, query_dim] or [B, Tq, query_dim] with B = %d (the memory's), query_dim = %d",
                 op, av__shape_str(query, sq, sizeof sq), B, a->query_dim);
    }
    q = query->ndim == 3 ? query : av_reshape(c, query, 3, B, 1, a->query_dim);
    if (a->score == AV_SCORE_ADDITIVE) s = av_additive_scores(c, av_linear_forward(c, &a->W2, q), mem->keys, a->v.weight);
    else if (a->score == AV_SCORE_CONCAT)
        s = av_additive_scores(c, av_linear(c, q, av_slice(c, a->W.weight, 1, 0, a->query_dim), NULL), mem->keys, a->v.weight);
    else s = av_matmul(c, q, mem->keys, 0, 1);
    if (mem->mask) s = av_add(c, s, mem->mask);
    return query->ndim == 3 ? s : av_reshape(c, s, 2, B, s->shape[2]);
}

AVDEF av_tensor *av_attention_scores(av_ctx *c, const av_attention *a, const av_attn_memory *mem, av_tensor *query) {
    return av__attention_scores(c, a, mem, query, "av_attention_scores");
}

AVDEF av_tensor *av_attention_context(av_ctx *c, const av_attn_memory *mem, av_tensor *weights) {
    static const char *op = "av_attention_context";
    int B = mem->values->shape[0], Tk = mem->values->shape[1];
    av_tensor *ctx;
    av__live(c, op, weights, mem->values, NULL);
    if ((weights->ndim != 2 && weights->ndim != 3) || weights->shape[0] != B || weights->shape[weights->ndim - 1] != Tk)
        av__fail_shapes(op, "weights must be [B, Tk] or [B, Tq, Tk] for the memory's values [B, Tk, Dv]", weights,
                        mem->values);
    if (weights->ndim == 3) return av_matmul(c, weights, mem->values, 0, 0);
    ctx = av_matmul(c, av_reshape(c, weights, 3, B, 1, Tk), mem->values, 0, 0);
    return av_reshape(c, ctx, 2, B, ctx->shape[2]);
}

AVDEF av_tensor *av_attention_forward(av_ctx *c, const av_attention *a, const av_attn_memory *mem, av_tensor *query,
                                      av_tensor **weights) {
    av_tensor *w = av_masked_softmax(c, av__attention_scores(c, a, mem, query, "av_attention_forward"), NULL);
    if (weights) *weights = w;
    return av_attention_context(c, mem, w);
}

AVDEF av_attn_pool av_attn_pool_new(av_model *m, const char *name, int dim, int attn_dim) {
    av_attn_pool p;
    char buf[AV__NAME_MAX];
    if (dim <= 0 || attn_dim <= 0) av__fail("av_attn_pool_new: dim %d and attn_dim %d must be > 0", dim, attn_dim);
    p.W = av_linear_layer_new(m, av__subname(buf, name, "W"), dim, attn_dim, 1);
    p.v = av_linear_layer_new(m, av__subname(buf, name, "v"), attn_dim, 1, 0);
    return p;
}

AVDEF av_tensor *av_attn_pool_forward(av_ctx *c, const av_attn_pool *p, av_tensor *h, const int *lengths,
                                      av_tensor **weights) {
    static const char *op = "av_attn_pool_forward";
    int B, T, D = p->W.weight->shape[1];
    av_tensor *scores, *w, *pooled;
    av__live(c, op, h, NULL, NULL);
    if (h->ndim != 3 || h->shape[2] != D) {
        char s[64];
        av__fail("%s: h %s must be [B, T, dim = %d]", op, av__shape_str(h, s, sizeof s), D);
    }
    B = h->shape[0];
    T = h->shape[1];
    scores = av_linear_forward(c, &p->v, av_tanh(c, av_linear_forward(c, &p->W, h)));  /* [B, T, 1] */
    w = av_masked_softmax(c, av_reshape(c, scores, 3, B, 1, T), lengths);
    pooled = av_matmul(c, w, h, 0, 0);
    if (weights) *weights = av_reshape(c, w, 2, B, T);
    return av_reshape(c, pooled, 2, B, D);
}

/* ---- convolutions and normalisation layers ---- */
AVDEF av_conv_opts av_conv_opts_square(int stride, int padding, int dilation, int groups) {
    av_conv_opts o;
    int i;
    memset(&o, 0, sizeof o);
    for (i = 0; i < 2; i++) {
        o.stride[i] = stride;
        o.padding[i] = padding;
        o.dilation[i] = dilation;
    }
    o.groups = groups;
    return o;
}

/* x / max(|x|, eps), in place */
static void av__normalize(float *x, int n, float eps) {
    double norm = 0;
    int i;
    for (i = 0; i < n; i++) norm += (double)x[i] * x[i];
    norm = sqrt(norm) > eps ? sqrt(norm) : eps;
    for (i = 0; i < n; i++) x[i] = (float)(x[i] / norm);
}

AVDEF av_spectral_norm_layer av_spectral_norm_new(av_model *m, av_tensor *weight, int dim, int n_power_iterations, float eps) {
    static const char *who = "av_spectral_norm_new";
    av_spectral_norm_layer sn;
    char base[AV__NAME_MAX], name[AV__NAME_MAX + 8], *copy;
    av__entry *e;
    int k = weight && weight->name ? av__find(m, weight->name) : -1;
    memset(&sn, 0, sizeof sn);
    if (k < 0 || k >= m->params.n || av__entry_at(m, k)->t != weight) av__fail("%s: the weight is not a parameter of this model", who);
    if (dim < 0 || dim >= weight->ndim || weight->shape[dim] == 0 || weight->size == 0)
        av__fail_shapes(who, "dim must be an axis of a non-empty weight", weight, NULL);
    if (n_power_iterations < 0 || !(eps > 0.0f)) av__fail("%s: n_power_iterations %d must be >= 0 and eps %g > 0", who,
                                                          n_power_iterations, (double)eps);
    e = av__entry_at(m, k);
    snprintf(base, sizeof base, "%s", e->name);
    snprintf(name, sizeof name, "%s_orig", base);
    av__check_name(m, name, who);
    copy = (char *)AV_MALLOC(strlen(name) + 1);
    if (!copy) {
        av__set_error(AV_ERR_NOMEM, "%s: out of memory renaming '%s'", who, base);
        if (!m->error) {
            m->error = AV_ERR_NOMEM;
            memcpy(m->error_msg, av__errbuf, sizeof m->error_msg);
        }
        return sn;
    }
    memcpy(copy, name, strlen(name) + 1);
    AV_FREE(e->name);
    e->name = copy;
    weight->name = copy;
    sn.weight_orig = weight;
    sn.dim = dim;
    sn.n_power_iterations = n_power_iterations;
    sn.eps = eps;
    snprintf(name, sizeof name, "%s_u", base);
    sn.weight_u = av_buffer(m, name, AV_INIT_NORMAL, 1.0f, 1, weight->shape[dim]);
    snprintf(name, sizeof name, "%s_v", base);
    sn.weight_v = av_buffer(m, name, AV_INIT_NORMAL, 1.0f, 1, weight->size / weight->shape[dim]);
    if (sn.weight_u) av__normalize(sn.weight_u->data, sn.weight_u->size, eps);
    if (sn.weight_v) av__normalize(sn.weight_v->data, sn.weight_v->size, eps);
    return sn;
}

AVDEF av_tensor *av_spectral_norm_forward(av_ctx *c, const av_spectral_norm_layer *sn) {
    return av_spectral_norm(c, sn->weight_orig, sn->weight_u, sn->weight_v, sn->dim, sn->n_power_iterations, sn->eps);
}

static av_conv2d_layer av__conv_layer(av_model *m, const char *name, int in, int out, int kh, int kw,
                                      const av_conv_opts *opts, int bias, int transposed) {
    av_conv2d_layer l;
    char buf[AV__NAME_MAX];
    int G;
    memset(&l, 0, sizeof l);
    l.opts = av__conv_defaults(opts);
    l.transposed = transposed;
    G = l.opts.groups;
    if (in < 1 || out < 1 || kh < 1 || kw < 1 || G < 1 || in % G || out % G)
        av__fail("%s '%s': channels in %d and out %d must be positive multiples of groups %d, the kernel %dx%d positive",
                 transposed ? "av_conv_transpose2d_new" : "av_conv2d_new", name, in, out, G, kh, kw);
    /* PyTorch: kaiming_uniform_(a = sqrt(5)), U(±1/sqrt(fan_in)) for the bias too */
    if (transposed) l.weight = av_param(m, av__subname(buf, name, "weight"), AV_INIT_TORCH_LINEAR, 0, 4, in, out / G, kh, kw);
    else l.weight = av_param(m, av__subname(buf, name, "weight"), AV_INIT_TORCH_LINEAR, 0, 4, out, in / G, kh, kw);
    if (bias)
        l.bias = av_param(m, av__subname(buf, name, "bias"), AV_INIT_UNIFORM,
                          1.0f / sqrtf((float)((transposed ? out : in) / G * kh * kw)), 1, out);
    return l;
}

AVDEF av_conv2d_layer av_conv2d_new(av_model *m, const char *name, int in, int out, int kh, int kw,
                                    const av_conv_opts *opts, int bias) {
    return av__conv_layer(m, name, in, out, kh, kw, opts, bias, 0);
}

AVDEF av_conv2d_layer av_conv_transpose2d_new(av_model *m, const char *name, int in, int out, int kh, int kw,
                                              const av_conv_opts *opts, int bias) {
    return av__conv_layer(m, name, in, out, kh, kw, opts, bias, 1);
}

AVDEF void av_conv2d_spectral_norm(av_model *m, av_conv2d_layer *l) {
    l->sn = av_spectral_norm_new(m, l->weight, l->transposed, 1, 1e-12f);
}

AVDEF av_tensor *av_conv2d_forward(av_ctx *c, const av_conv2d_layer *l, av_tensor *x) {
    av_tensor *w = l->sn.weight_orig ? av_spectral_norm_forward(c, &l->sn) : l->weight;
    return l->transposed ? av_conv_transpose2d(c, x, w, l->bias, &l->opts) : av_conv2d(c, x, w, l->bias, &l->opts);
}

AVDEF av_batch_norm_layer av_batch_norm_new(av_model *m, const char *name, int num_features, float eps, float momentum) {
    av_batch_norm_layer l;
    char buf[AV__NAME_MAX];
    int C = num_features;
    l.weight = av_param(m, av__subname(buf, name, "weight"), AV_INIT_ONES, 0, 1, C);
    l.bias = av_param(m, av__subname(buf, name, "bias"), AV_INIT_ZEROS, 0, 1, C);
    l.running_mean = av_buffer(m, av__subname(buf, name, "running_mean"), AV_INIT_ZEROS, 0, 1, C);
    l.running_var = av_buffer(m, av__subname(buf, name, "running_var"), AV_INIT_ONES, 0, 1, C);
    l.num_batches_tracked = av_buffer(m, av__subname(buf, name, "num_batches_tracked"), AV_INIT_ZEROS, 0, 0);
    l.eps = eps;
    l.momentum = momentum;
    return l;
}

AVDEF av_tensor *av_batch_norm_forward(av_ctx *c, const av_batch_norm_layer *l, av_tensor *x) {
    av_tensor *y = av_batch_norm(c, x, l->running_mean, l->running_var, l->weight, l->bias, l->momentum, l->eps);
    if (c->training) l->num_batches_tracked->data[0] += 1.0f;
    return y;
}

AVDEF av_group_norm_layer av_group_norm_new(av_model *m, const char *name, int num_groups, int num_channels, float eps) {
    av_group_norm_layer l;
    char buf[AV__NAME_MAX];
    l.weight = av_param(m, av__subname(buf, name, "weight"), AV_INIT_ONES, 0, 1, num_channels);
    l.bias = av_param(m, av__subname(buf, name, "bias"), AV_INIT_ZEROS, 0, 1, num_channels);
    l.num_groups = num_groups;
    l.eps = eps;
    return l;
}

AVDEF av_tensor *av_group_norm_forward(av_ctx *c, const av_group_norm_layer *l, av_tensor *x) {
    return av_group_norm(c, x, l->num_groups, l->weight, l->bias, l->eps);
}

/* ---- attention for images ---- */
/* x must be [B, C, H, W] */
static void av__check_image(const char *op, const av_tensor *x, int C) {
    if (x->ndim != 4 || x->shape[1] != C) {
        char s[64];
        av__fail("%s: x %s must be [B, C = %d, H, W]", op, av__shape_str(x, s, sizeof s), C);
    }
}

/* channels / reduction, which must be >= 1 */
static int av__reduced_channels(const char *op, const char *name, int channels, int reduction) {
    if (channels < 1 || reduction < 1 || channels / reduction < 1)
        av__fail("%s '%s': channels %d / reduction %d must be >= 1", op, name, channels, reduction);
    return channels / reduction;
}

AVDEF av_self_attn2d av_self_attn2d_new(av_model *m, const char *name, int channels, int reduction) {
    av_self_attn2d l;
    char buf[AV__NAME_MAX];
    int d = av__reduced_channels("av_self_attn2d_new", name, channels, reduction);
    l.query = av_conv2d_new(m, av__subname(buf, name, "query"), channels, d, 1, 1, NULL, 1);
    l.key = av_conv2d_new(m, av__subname(buf, name, "key"), channels, d, 1, 1, NULL, 1);
    l.value = av_conv2d_new(m, av__subname(buf, name, "value"), channels, channels, 1, 1, NULL, 1);
    l.gamma = av_param(m, av__subname(buf, name, "gamma"), AV_INIT_ZEROS, 0, 1, 1);
    return l;
}

AVDEF void av_self_attn2d_spectral_norm(av_model *m, av_self_attn2d *l) {
    av_conv2d_spectral_norm(m, &l->query);
    av_conv2d_spectral_norm(m, &l->key);
    av_conv2d_spectral_norm(m, &l->value);
}

/* a 1x1 convolution's output [B, C', H, W] as [B, N, C'], positions as rows */
static av_tensor *av__positions(av_ctx *c, const av_conv2d_layer *conv, av_tensor *x) {
    av_tensor *y = av_conv2d_forward(c, conv, x);
    return av_transpose(c, av_reshape(c, y, 3, y->shape[0], y->shape[1], y->shape[2] * y->shape[3]), 1, 2);
}

AVDEF av_tensor *av_self_attn2d_forward(av_ctx *c, const av_self_attn2d *l, av_tensor *x, av_tensor **attn) {
    static const char *op = "av_self_attn2d_forward";
    int C = l->value.weight->shape[0], B, H, W;
    av_tensor *q, *k, *v, *o;
    av__live(c, op, x, NULL, NULL);
    av__check_image(op, x, C);
    B = x->shape[0];
    H = x->shape[2];
    W = x->shape[3];
    q = av__positions(c, &l->query, x);
    k = av__positions(c, &l->key, x);
    v = av__positions(c, &l->value, x);
    o = attn ? av_sdpa_weights(c, q, k, v, NULL, 0, 1.0f, attn) : av_sdpa(c, q, k, v, NULL, 0, 0.0f, 1.0f);
    o = av_reshape(c, av_transpose(c, o, 1, 2), 4, B, C, H, W);
    return av_add(c, av_mul(c, l->gamma, o), x);
}

AVDEF av_spatial_attn av_spatial_attn_new(av_model *m, const char *name, int kernel) {
    av_spatial_attn l;
    av_conv_opts o;
    char buf[AV__NAME_MAX];
    if (kernel == 0) kernel = 7;
    if (kernel < 0 || kernel % 2 == 0) av__fail("av_spatial_attn_new '%s': kernel %d must be odd (0: 7)", name, kernel);
    o = av_conv_opts_square(1, kernel / 2, 1, 1);
    l.conv = av_conv2d_new(m, av__subname(buf, name, "conv"), 2, 1, kernel, kernel, &o, 0);
    return l;
}

AVDEF av_tensor *av_spatial_attn_forward(av_ctx *c, const av_spatial_attn *l, av_tensor *x, av_tensor **map) {
    static const char *op = "av_spatial_attn_forward";
    av_tensor *pooled[2], *gate;
    av__live(c, op, x, NULL, NULL);
    if (x->ndim != 4 || x->shape[1] < 1) av__fail_shapes(op, "x must be [B, C >= 1, H, W]", x, NULL);
    pooled[0] = av_max(c, x, 1, 1);
    pooled[1] = av_mean(c, x, 1, 1);
    gate = av_sigmoid(c, av_conv2d_forward(c, &l->conv, av_concat(c, pooled, 2, 1)));
    if (map) *map = gate;
    return av_mul(c, x, gate);
}

AVDEF av_channel_attn av_channel_attn_new(av_model *m, const char *name, int channels, int reduction) {
    av_channel_attn l;
    char buf[AV__NAME_MAX];
    int d = av__reduced_channels("av_channel_attn_new", name, channels, reduction);
    l.fc1 = av_conv2d_new(m, av__subname(buf, name, "fc1"), channels, d, 1, 1, NULL, 1);
    l.fc2 = av_conv2d_new(m, av__subname(buf, name, "fc2"), d, channels, 1, 1, NULL, 1);
    return l;
}

AVDEF av_tensor *av_channel_attn_forward(av_ctx *c, const av_channel_attn *l, av_tensor *x, av_tensor **weights) {
    static const char *op = "av_channel_attn_forward";
    av_tensor *s;
    av__live(c, op, x, NULL, NULL);
    av__check_image(op, x, l->fc1.weight->shape[1]);
    s = av_relu(c, av_conv2d_forward(c, &l->fc1, av_adaptive_avg_pool2d(c, x, 1, 1)));
    s = av_sigmoid(c, av_conv2d_forward(c, &l->fc2, s)); /* [B, C, 1, 1] */
    if (weights) *weights = av_reshape(c, s, 2, s->shape[0], s->shape[1]);
    return av_mul(c, x, s);
}

/* ---- convolutional blocks ---- */
/* conv (no bias) "<name>.<conv>" and BatchNorm2d "<name>.<bn>" (PyTorch's defaults) */
static void av__conv_bn(av_model *m, const char *name, const char *conv, const char *bn, int in, int out, int k, int stride,
                        av_conv2d_layer *cl, av_batch_norm_layer *bl) {
    char buf[AV__NAME_MAX];
    av_conv_opts o = av_conv_opts_square(stride, k / 2, 1, 1);
    *cl = av_conv2d_new(m, av__subname(buf, name, conv), in, out, k, k, &o, 0);
    *bl = av_batch_norm_new(m, av__subname(buf, name, bn), out, 1e-5f, 0.1f);
}

AVDEF av_conv_block av_conv_block_new(av_model *m, const char *name, int in, int out) {
    av_conv_block b;
    av__conv_bn(m, name, "conv", "bn", in, out, 3, 1, &b.conv, &b.bn);
    return b;
}

AVDEF av_tensor *av_conv_block_forward(av_ctx *c, const av_conv_block *b, av_tensor *x) {
    return av_relu(c, av_batch_norm_forward(c, &b->bn, av_conv2d_forward(c, &b->conv, x)));
}

AVDEF av_res_block av_res_block_new(av_model *m, const char *name, int in, int out, int stride) {
    av_res_block b;
    memset(&b, 0, sizeof b);
    if (stride < 1) av__fail("av_res_block_new '%s': stride %d must be >= 1", name, stride);
    av__conv_bn(m, name, "conv1", "bn1", in, out, 3, stride, &b.conv1, &b.bn1);
    av__conv_bn(m, name, "conv2", "bn2", out, out, 3, 1, &b.conv2, &b.bn2);
    if (stride != 1 || in != out) av__conv_bn(m, name, "shortcut.0", "shortcut.1", in, out, 1, stride, &b.shortcut_conv, &b.shortcut_bn);
    return b;
}

AVDEF av_tensor *av_res_block_forward(av_ctx *c, const av_res_block *b, av_tensor *x) {
    av_tensor *h = av_relu(c, av_batch_norm_forward(c, &b->bn1, av_conv2d_forward(c, &b->conv1, x)));
    av_tensor *s = x;
    h = av_batch_norm_forward(c, &b->bn2, av_conv2d_forward(c, &b->conv2, h));
    if (b->shortcut_conv.weight) s = av_batch_norm_forward(c, &b->shortcut_bn, av_conv2d_forward(c, &b->shortcut_conv, x));
    return av_relu(c, av_add(c, h, s));
}

AVDEF av_attention_net_config av_attention_net_defaults(void) {
    av_attention_net_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.in_channels = 1;
    cfg.num_classes = 10;
    cfg.stem_channels = 32;
    cfg.num_stages = 2;
    cfg.channels[0] = 64;
    cfg.channels[1] = 128;
    cfg.blocks[0] = cfg.blocks[1] = 1;
    cfg.sagan_stage = 0;
    cfg.spatial_stage = 1;
    cfg.sagan_reduction = 8;
    cfg.spatial_kernel = 7;
    cfg.attention = 1;
    return cfg;
}

AVDEF av_attention_net av_attention_net_new(av_model *m, const char *name, const av_attention_net_config *cfg) {
    static const char *op = "av_attention_net_new";
    av_attention_net net;
    char buf[AV__NAME_MAX], leaf[32];
    int s, i, in;
    memset(&net, 0, sizeof net);
    net.cfg = *cfg;
    if (cfg->in_channels < 1 || cfg->num_classes < 1 || cfg->stem_channels < 1 || cfg->num_stages < 1 ||
        cfg->num_stages > AV_ATTNET_MAX_STAGES || cfg->sagan_stage < -1 || cfg->sagan_stage >= cfg->num_stages ||
        cfg->spatial_stage < -1 || cfg->spatial_stage >= cfg->num_stages)
        av__fail("%s '%s': in_channels %d, num_classes %d, stem_channels %d must be >= 1, num_stages %d in 1..%d, "
                 "sagan_stage %d and spatial_stage %d in -1..num_stages-1",
                 op, name, cfg->in_channels, cfg->num_classes, cfg->stem_channels, cfg->num_stages, AV_ATTNET_MAX_STAGES,
                 cfg->sagan_stage, cfg->spatial_stage);
    for (s = 0; s < cfg->num_stages; s++)
        if (cfg->channels[s] < 1 || cfg->blocks[s] < 1 || cfg->blocks[s] > AV_ATTNET_MAX_BLOCKS)
            av__fail("%s '%s': stage %d has %d channels and %d blocks (channels >= 1, blocks 1..%d)", op, name, s,
                     cfg->channels[s], cfg->blocks[s], AV_ATTNET_MAX_BLOCKS);
    net.stem = av_conv_block_new(m, av__subname(buf, name, "stem"), cfg->in_channels, cfg->stem_channels);
    in = cfg->stem_channels;
    for (s = 0; s < cfg->num_stages; s++) {
        for (i = 0; i < cfg->blocks[s]; i++) {
            snprintf(leaf, sizeof leaf, "layer%d.%d", s + 1, i);
            net.stages[s][i] = av_res_block_new(m, av__subname(buf, name, leaf), in, cfg->channels[s], i == 0 ? 2 : 1);
            in = cfg->channels[s];
        }
        if (cfg->attention && s == cfg->sagan_stage)
            net.sagan = av_self_attn2d_new(m, av__subname(buf, name, "sagan"), in, cfg->sagan_reduction);
        if (cfg->attention && s == cfg->spatial_stage)
            net.spatial = av_spatial_attn_new(m, av__subname(buf, name, "spatial"), cfg->spatial_kernel);
    }
    net.fc = av_linear_layer_new(m, av__subname(buf, name, "fc"), in, cfg->num_classes, 1);
    return net;
}

AVDEF av_tensor *av_attention_net_features(av_ctx *c, const av_attention_net *net, av_tensor *x, av_attention_net_maps *maps) {
    static const char *op = "av_attention_net_features";
    const av_attention_net_config *cfg = &net->cfg;
    int s, i;
    av__live(c, op, x, NULL, NULL);
    av__check_image(op, x, cfg->in_channels);
    if (maps) memset(maps, 0, sizeof *maps);
    x = av_conv_block_forward(c, &net->stem, x);
    for (s = 0; s < cfg->num_stages; s++) {
        for (i = 0; i < cfg->blocks[s]; i++) x = av_res_block_forward(c, &net->stages[s][i], x);
        if (net->sagan.query.weight && s == cfg->sagan_stage) {
            if (maps) {
                maps->sagan_h = x->shape[2];
                maps->sagan_w = x->shape[3];
            }
            x = av_self_attn2d_forward(c, &net->sagan, x, maps ? &maps->sagan : NULL);
        }
        if (net->spatial.conv.weight && s == cfg->spatial_stage)
            x = av_spatial_attn_forward(c, &net->spatial, x, maps ? &maps->spatial : NULL);
    }
    x = av_adaptive_avg_pool2d(c, x, 1, 1);
    return av_reshape(c, x, 2, x->shape[0], x->shape[1]);
}

AVDEF av_tensor *av_attention_net_forward(av_ctx *c, const av_attention_net *net, av_tensor *x, av_attention_net_maps *maps) {
    return av_linear_forward(c, &net->fc, av_attention_net_features(c, net, x, maps));
}

AVDEF av_autoencoder av_autoencoder_new(av_model *m, const char *name, int n_layers, const int *sizes, int activation) {
    av_autoencoder ae;
    int mirror[AV_MLP_MAX_LAYERS + 1], i;
    char buf[AV__NAME_MAX];
    if (n_layers < 1 || n_layers > AV_MLP_MAX_LAYERS) av__fail("av_autoencoder_new: %d layers (1 to %d)", n_layers, AV_MLP_MAX_LAYERS);
    for (i = 0; i <= n_layers; i++) mirror[i] = sizes[n_layers - i];
    ae.encoder = av_mlp_new(m, av__subname(buf, name, "enc"), n_layers, sizes, activation);
    ae.decoder = av_mlp_new(m, av__subname(buf, name, "dec"), n_layers, mirror, activation);
    ae.activation = activation;
    return ae;
}

AVDEF av_tensor *av_autoencoder_forward(av_ctx *c, const av_autoencoder *ae, av_tensor *x, av_tensor **code) {
    av_tensor *z = av_activate(c, av_mlp_forward(c, &ae->encoder, x), ae->activation);
    if (code) *code = z;
    return av_mlp_forward(c, &ae->decoder, z);
}

/* ---- LSTM and GRU ---- */
/* "weight_ih<suffix>" ... "bias_hh<suffix>" under name, PyTorch's order and init */
static av_rnn_weights av__rnn_weights_new(av_model *m, const char *name, const char *suffix, int kind, int in, int H) {
    static const char *const leaves[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
    av_tensor **slots[4];
    av_rnn_weights w;
    char buf[AV__NAME_MAX], leaf[64];
    int k, G = (kind == AV_LSTM ? 4 : 3) * H, shape[2];
    float bound = H > 0 ? 1.0f / sqrtf((float)H) : 0.0f;
    slots[0] = &w.w_ih; slots[1] = &w.w_hh; slots[2] = &w.b_ih; slots[3] = &w.b_hh;
    for (k = 0; k < 4; k++) {
        shape[0] = G;
        shape[1] = k == 0 ? in : H;
        snprintf(leaf, sizeof leaf, "%s%s", leaves[k], suffix);
        *slots[k] = av_param_shape(m, av__subname(buf, name, leaf), AV_INIT_UNIFORM, bound, k < 2 ? 2 : 1, shape);
    }
    return w;
}

static av_rnn av__rnn_new(av_model *m, const char *name, int kind, int input_size, int hidden_size, int num_layers,
                          int bidirectional, float dropout) {
    av_rnn r;
    char suffix[32];
    int l, d;
    if (num_layers < 1 || num_layers > AV_RNN_MAX_LAYERS)
        av__fail("%s: %d layers (1 to %d)", kind == AV_LSTM ? "av_lstm_new" : "av_gru_new", num_layers, AV_RNN_MAX_LAYERS);
    if (input_size < 1 || hidden_size < 1 || !(dropout >= 0.0f && dropout < 1.0f))
        av__fail("%s: input_size %d, hidden_size %d (both >= 1), dropout %g (0 <= p < 1)",
                 kind == AV_LSTM ? "av_lstm_new" : "av_gru_new", input_size, hidden_size, (double)dropout);
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.input_size = input_size;
    r.hidden_size = hidden_size;
    r.num_layers = num_layers;
    r.num_directions = bidirectional ? 2 : 1;
    r.dropout = dropout;
    for (l = 0; l < num_layers; l++)
        for (d = 0; d < r.num_directions; d++) {
            snprintf(suffix, sizeof suffix, "_l%d%s", l, d ? "_reverse" : "");
            r.w[l][d] = av__rnn_weights_new(m, name, suffix, kind, l ? r.num_directions * hidden_size : input_size,
                                            hidden_size);
        }
    return r;
}

AVDEF av_rnn av_lstm_new(av_model *m, const char *name, int input_size, int hidden_size, int num_layers,
                         int bidirectional, float dropout) {
    return av__rnn_new(m, name, AV_LSTM, input_size, hidden_size, num_layers, bidirectional, dropout);
}

AVDEF av_rnn av_gru_new(av_model *m, const char *name, int input_size, int hidden_size, int num_layers,
                        int bidirectional, float dropout) {
    return av__rnn_new(m, name, AV_GRU, input_size, hidden_size, num_layers, bidirectional, dropout);
}

/* state k [B, H] of a [layers D, B, H] tensor, or NULL */
static av_tensor *av__rnn_state_at(av_ctx *c, av_tensor *states, int k) {
    if (!states) return NULL;
    return av_reshape(c, av_slice(c, states, 0, k, k + 1), 2, states->shape[1], states->shape[2]);
}

/* n states [B, H] stacked into [n, B, H] */
static av_tensor *av__rnn_stack(av_ctx *c, av_tensor *const *states, int n) {
    av_tensor *rows[2 * AV_RNN_MAX_LAYERS];
    int k;
    for (k = 0; k < n; k++) rows[k] = av_reshape(c, states[k], 3, 1, states[k]->shape[0], states[k]->shape[1]);
    return av_concat(c, rows, n, 0);
}

AVDEF av_tensor *av_rnn_forward(av_ctx *c, const av_rnn *r, av_tensor *x, av_tensor *h0, av_tensor *c0,
                                const int *lengths, av_tensor **h_n, av_tensor **c_n) {
    const char *op = "av_rnn_forward";
    av_tensor *hs[2 * AV_RNN_MAX_LAYERS], *cs[2 * AV_RNN_MAX_LAYERS], *ys[2], *in = x;
    int D = r->num_directions, L = r->num_layers, l, d, k;
    if (x->ndim != 3 || x->shape[2] != r->input_size) av__fail_shapes(op, "x must be [B, T, input_size]", x, r->w[0][0].w_ih);
    for (k = 0; k < 2; k++) {
        const av_tensor *s = k ? c0 : h0;
        if (s && (s->ndim != 3 || s->shape[0] != L * D || s->shape[1] != x->shape[0] || s->shape[2] != r->hidden_size))
            av__fail_shapes(op, k ? "c0 must be [layers D, B, H]" : "h0 must be [layers D, B, H]", s, x);
    }
    if (c0 && r->kind != AV_LSTM) av__fail("%s: a GRU has no cell state c0", op);
    for (l = 0; l < L; l++) {
        for (d = 0; d < D; d++) {
            k = l * D + d;
            ys[d] = av_rnn_layer(c, r->kind, in, &r->w[l][d], av__rnn_state_at(c, h0, k), av__rnn_state_at(c, c0, k),
                                 lengths, d, &hs[k], &cs[k]);
        }
        in = D == 2 ? av_concat(c, ys, 2, 2) : ys[0];
        if (l + 1 < L) in = av_dropout(c, in, r->dropout);
    }
    if (h_n) *h_n = av__rnn_stack(c, hs, L * D);
    if (c_n) *c_n = r->kind == AV_LSTM ? av__rnn_stack(c, cs, L * D) : NULL;
    return in;
}

static av_rnn_cell av__rnn_cell_new(av_model *m, const char *name, int kind, int input_size, int hidden_size) {
    av_rnn_cell cell;
    if (input_size < 1 || hidden_size < 1)
        av__fail("%s: input_size %d, hidden_size %d (both >= 1)", kind == AV_LSTM ? "av_lstm_cell_new" : "av_gru_cell_new",
                 input_size, hidden_size);
    cell.kind = kind;
    cell.input_size = input_size;
    cell.hidden_size = hidden_size;
    cell.w = av__rnn_weights_new(m, name, "", kind, input_size, hidden_size);
    return cell;
}

AVDEF av_rnn_cell av_lstm_cell_new(av_model *m, const char *name, int input_size, int hidden_size) {
    return av__rnn_cell_new(m, name, AV_LSTM, input_size, hidden_size);
}

AVDEF av_rnn_cell av_gru_cell_new(av_model *m, const char *name, int input_size, int hidden_size) {
    return av__rnn_cell_new(m, name, AV_GRU, input_size, hidden_size);
}

/* one step: av_rnn_layer over x seen as [B, 1, in] */
static av_tensor *av__rnn_cell_step(av_ctx *c, const av_rnn_cell *cell, int kind, av_tensor *x, av_tensor *h,
                                    av_tensor *c_prev, av_tensor **c_out) {
    const char *op = kind == AV_LSTM ? "av_lstm_cell" : "av_gru_cell";
    av_tensor *h_out;
    if (cell->kind != kind) av__fail("%s: the cell was made by %s", op, kind == AV_LSTM ? "av_gru_cell_new" : "av_lstm_cell_new");
    if (x->ndim != 2 || x->shape[1] != cell->input_size) av__fail_shapes(op, "x must be [B, input_size]", x, cell->w.w_ih);
    av_rnn_layer(c, kind, av_reshape(c, x, 3, x->shape[0], 1, x->shape[1]), &cell->w, h, c_prev, NULL, 0, &h_out, c_out);
    return h_out;
}

AVDEF void av_lstm_cell(av_ctx *c, const av_rnn_cell *cell, av_tensor *x, av_tensor *h, av_tensor *c_prev,
                        av_tensor **h_out, av_tensor **c_out) {
    av_tensor *h_next = av__rnn_cell_step(c, cell, AV_LSTM, x, h, c_prev, c_out);
    if (h_out) *h_out = h_next;
}

AVDEF av_tensor *av_gru_cell(av_ctx *c, const av_rnn_cell *cell, av_tensor *x, av_tensor *h) {
    return av__rnn_cell_step(c, cell, AV_GRU, x, h, NULL, NULL);
}

/* ======================================================================= */
/* [7 toolkits] VAE                                                     */
/* ======================================================================= */
AVDEF av_gaussian_head av_gaussian_head_new(av_model *m, const char *name, int in, int latent) {
    av_gaussian_head g;
    char buf[AV__NAME_MAX];
    g.mu = av_linear_layer_new(m, av__subname(buf, name, "mu"), in, latent, 1);
    g.logvar = av_linear_layer_new(m, av__subname(buf, name, "logvar"), in, latent, 1);
    return g;
}

AVDEF void av_gaussian_head_forward(av_ctx *c, const av_gaussian_head *g, av_tensor *h, av_tensor **mu, av_tensor **logvar) {
    *mu = av_linear_forward(c, &g->mu, h);
    *logvar = av_linear_forward(c, &g->logvar, h);
}

/* Rows of a [B, ...] tensor: B and the per-example width. */
static int av__examples(const av_tensor *x, int *width, const char *op) {
    if (x->ndim < 1) av__fail_shapes(op, "needs a batch axis", x, NULL);
    *width = x->shape[0] ? x->size / x->shape[0] : 0;
    return x->shape[0];
}

/* z = mu + sigma eps, sigma = exp(logvar/2): dmu = g, dlogvar = g eps sigma / 2;
   saved: eps (the caller's data, or a draw in the arena) */
static void av__reparameterize_backward(av_ctx *c, av__node *n) {
    const float *eps = (const float *)n->saved, *lv = n->in[1]->data, *g = n->out[0]->grad;
    float *gmu = av__in_grad(n, 0), *glv = av__in_grad(n, 1);
    int i;
    (void)c;
    AV__PAR(n->out[0]->size)
    for (i = 0; i < n->out[0]->size; i++) {
        if (gmu) gmu[i] += g[i];
        if (glv) glv[i] += g[i] * eps[i] * 0.5f * expf(0.5f * lv[i]);
    }
}

static av_tensor *av__reparameterize(av_ctx *c, av_tensor *mu, av_tensor *logvar, const av_tensor *eps, const char *op) {
    av_tensor *z;
    av__node *n;
    int i;
    av__live(c, op, mu, logvar, eps);
    if (!av_same_shape(mu, logvar)) av__fail_shapes(op, "mu and logvar differ", mu, logvar);
    if (!av_same_shape(mu, eps)) av__fail_shapes(op, "mu and eps differ", mu, eps);
    z = av__like(c, mu, op);
    AV__PAR(mu->size)
    for (i = 0; i < mu->size; i++) z->data[i] = mu->data[i] + expf(0.5f * logvar->data[i]) * eps->data[i];
    n = av__record(c, op, av__reparameterize_backward, z, 2, mu, logvar);
    if (n) n->saved = eps->data;
    return z;
}

AVDEF av_tensor *av_reparameterize_eps(av_ctx *c, av_tensor *mu, av_tensor *logvar, const av_tensor *eps) {
    return av__reparameterize(c, mu, logvar, eps, "av_reparameterize_eps");
}

AVDEF av_tensor *av_reparameterize(av_ctx *c, av_tensor *mu, av_tensor *logvar) {
    av__live(c, "av_reparameterize", mu, logvar, NULL);
    return av__reparameterize(c, mu, logvar, av_randn_shape(c, 0.0f, 1.0f, mu->ndim, mu->shape), "av_reparameterize");
}

/* KL = sum (mu^2 + e^lv - 1 - lv) / 2: dmu = g mu, dlv = g (e^lv - 1) / 2 */
static void av__kl_backward(av_ctx *c, av__node *n) {
    int w, B = av__examples(n->in[0], &w, "av_kl_std_normal"), b;
    float *gmu = av__in_grad(n, 0), *glv = av__in_grad(n, 1);
    (void)c;
    AV__PAR((long)B * w)
    for (b = 0; b < B; b++) {
        int j;
        float g = n->out[0]->grad[b];
        for (j = 0; j < w; j++) {
            size_t i = (size_t)b * w + j;
            if (gmu) gmu[i] += g * n->in[0]->data[i];
            if (glv) glv[i] += g * 0.5f * (expf(n->in[1]->data[i]) - 1.0f);
        }
    }
}

AVDEF av_tensor *av_kl_std_normal(av_ctx *c, av_tensor *mu, av_tensor *logvar) {
    int w, B = av__examples(mu, &w, "av_kl_std_normal"), b;
    av_tensor *out;
    av__live(c, "av_kl_std_normal", mu, logvar, NULL);
    if (!av_same_shape(mu, logvar)) av__fail_shapes("av_kl_std_normal", "mu and logvar differ", mu, logvar);
    out = av__tensor_empty(c, 1, &B, "av_kl_std_normal");
    AV__PAR((long)B * w)
    for (b = 0; b < B; b++) {
        int j;
        double kl = 0;
        for (j = 0; j < w; j++) {
            float m = mu->data[(size_t)b * w + j], lv = logvar->data[(size_t)b * w + j];
            kl += 0.5 * ((double)m * m + exp((double)lv) - 1.0 - lv);
        }
        out->data[b] = (float)kl;
    }
    av__record(c, "av_kl_std_normal", av__kl_backward, out, 2, mu, logvar);
    return out;
}

/* Bernoulli NLL from logits, stable BCE per element: dlogits = g (sigmoid - x), dx = -g logits */
static void av__bernoulli_backward(av_ctx *c, av__node *n) {
    int w, B = av__examples(n->in[0], &w, "av_bernoulli_nll"), b;
    float *gl = av__in_grad(n, 0), *gx = av__in_grad(n, 1), *sig = NULL;
    if (gl) {
        sig = (float *)av__arena_alloc(&c->arena, (size_t)n->in[0]->size * sizeof(float));
        av__sigmoid_array(n->in[0]->data, sig, n->in[0]->size);
    }
    AV__PAR((long)B * w)
    for (b = 0; b < B; b++) {
        size_t at = (size_t)b * w;
        const float *l = n->in[0]->data + at, *x = n->in[1]->data + at;
        float g = n->out[0]->grad[b];
        int j;
        if (gl) for (j = 0; j < w; j++) gl[at + j] += g * (sig[at + j] - x[j]);
        if (gx) for (j = 0; j < w; j++) gx[at + j] -= g * l[j];
    }
}

AVDEF av_tensor *av_bernoulli_nll(av_ctx *c, av_tensor *logits, av_tensor *x) {
    int w, B = av__examples(logits, &w, "av_bernoulli_nll"), b;
    av_tensor *out;
    float *sp;
    av__live(c, "av_bernoulli_nll", logits, x, NULL);
    if (!av_same_shape(logits, x)) av__fail_shapes("av_bernoulli_nll", "logits and x differ", logits, x);
    out = av__tensor_empty(c, 1, &B, "av_bernoulli_nll");
    sp = (float *)av__arena_alloc(&c->arena, (size_t)logits->size * sizeof(float));
    av__softplus_rest_array(logits->data, sp, logits->size);
    AV__PAR((long)B * w)
    for (b = 0; b < B; b++) { /* softplus(l) - l x */
        size_t at = (size_t)b * w;
        const float *l = logits->data + at, *xs = x->data + at;
        double acc = 0;
        int j;
        for (j = 0; j < w; j++) acc += ((l[j] > 0 ? l[j] : 0.0f) - l[j] * xs[j]) + sp[at + j];
        out->data[b] = (float)acc;
    }
    av__record(c, "av_bernoulli_nll", av__bernoulli_backward, out, 2, logits, x);
    return out;
}

/* -log N(x | mean, e^lv) = (log 2pi + lv + (x - mean)^2 e^-lv) / 2, summed per example;
   composed from ops so logvar may be fixed, learned or broadcast. */
static av_tensor *av__gaussian_nll(av_ctx *c, av_tensor *mean, av_tensor *logvar, av_tensor *x, const char *op) {
    av_tensor *terms = av_square(c, mean ? av_sub(c, x, mean) : x);
    int w, B = av__examples(x, &w, op);
    if (mean && !av_same_shape(mean, x)) av__fail_shapes(op, "shapes differ", mean, x);
    if (logvar) terms = av_add(c, av_mul(c, terms, av_exp(c, av_scale(c, logvar, -1.0f))), logvar);
    terms = av_add_scalar(c, terms, 1.8378770664093453f); /* log 2pi */
    return av_scale(c, av_sum(c, av_reshape(c, terms, 2, B, w), 1, 0), 0.5f);
}

AVDEF av_tensor *av_gaussian_nll(av_ctx *c, av_tensor *mean, av_tensor *logvar, av_tensor *x) {
    return av__gaussian_nll(c, mean, logvar, x, "av_gaussian_nll");
}

AVDEF av_tensor *av_gaussian_log_prob(av_ctx *c, av_tensor *z, av_tensor *mu, av_tensor *logvar) {
    return av_scale(c, av__gaussian_nll(c, mu, logvar, z, "av_gaussian_log_prob"), -1.0f);
}

AVDEF av_tensor *av_neg_elbo(av_ctx *c, av_tensor *nll, av_tensor *kl, float beta) {
    if (!av_same_shape(nll, kl) || nll->ndim != 1) av__fail_shapes("av_neg_elbo", "nll and kl must both be [B]", nll, kl);
    return av_mean_all(c, beta == 1.0f ? av_add(c, nll, kl) : av_add(c, nll, av_scale(c, kl, beta)));
}

AVDEF float av_kl_warmup(long step, long warmup_steps, float beta_max) {
    if (warmup_steps <= 0 || step >= warmup_steps) return beta_max;
    if (step <= 0) return 0.0f;
    return beta_max * (float)step / (float)warmup_steps;
}

AVDEF double av_log_mean_exp(const double *v, int n) {
    double mx, sum = 0;
    int i;
    if (n < 1) av__fail("av_log_mean_exp: no values");
    mx = v[0];
    for (i = 1; i < n; i++) mx = v[i] > mx ? v[i] : mx;
    if (isinf(mx)) return mx;
    for (i = 0; i < n; i++) sum += exp(v[i] - mx);
    return mx + log(sum / n);
}

/* log w = log p(z) - log q(z | x) - nll(z, x) for z drawn from q = N(mu, e^logvar): [B] */
static av_tensor *av__iwae_log_weights(av_ctx *c, av_tensor *x, av_tensor *mu, av_tensor *logvar, av_nll_fn nll,
                                       void *user, const char *op) {
    av_tensor *z = av_reparameterize(c, mu, logvar), *nll_x = nll(c, z, x, user);
    av_tensor *log_ratio = av_sub(c, av_gaussian_log_prob(c, z, NULL, NULL), av_gaussian_log_prob(c, z, mu, logvar));
    if (nll_x->size != mu->shape[0]) av__fail_shapes(op, "nll must return one value per example", nll_x, mu);
    return av_sub(c, log_ratio, av_reshape_shape(c, nll_x, 1, &nll_x->size));
}

AVDEF void av_iwae_log_px(av_ctx *c, av_tensor *x, av_tensor *mu, av_tensor *logvar, int k, av_nll_fn nll, void *user,
                          double *log_px) {
    int B = mu->shape[0], j, b, prev;
    double *logw, *row;
    if (k < 1) av__fail("av_iwae_log_px: k = %d samples", k);
    av__live(c, "av_iwae_log_px", x, mu, logvar);
    prev = av_set_grad_enabled(c, 0);
    logw = (double *)av__arena_alloc(&c->arena, (size_t)k * B * sizeof(double));
    for (j = 0; j < k; j++) { /* one sample at a time: memory stays that of one batch */
        av_mark mark = av_ctx_mark(c);
        av_tensor *lw = av__iwae_log_weights(c, x, mu, logvar, nll, user, "av_iwae_log_px");
        for (b = 0; b < B; b++) logw[(size_t)b * k + j] = lw->data[b];
        av_ctx_rewind(c, mark);
    }
    for (b = 0, row = logw; b < B; b++, row += k) log_px[b] = av_log_mean_exp(row, k);
    av_set_grad_enabled(c, prev);
}

/* x [B, ...] as k copies one after the other: [k B, ...]; the backward adds the copies up */
static av_tensor *av__repeat_rows(av_ctx *c, av_tensor *x, int k, const char *op) {
    int w, B = av__examples(x, &w, op), shape[AV_MAX_DIMS];
    av_tensor *tiled;
    if (k == 1) return x;
    tiled = av_add(c, av_zeros(c, 3, k, B, w), av_reshape(c, x, 3, 1, B, w));
    memcpy(shape, x->shape, sizeof shape);
    shape[0] = k * B;
    return av_reshape_shape(c, tiled, x->ndim, shape);
}

AVDEF av_tensor *av_iwae_loss(av_ctx *c, av_tensor *x, av_tensor *mu, av_tensor *logvar, int k, av_nll_fn nll,
                              void *user, av_tensor **bound) {
    int w, B;
    av_tensor *logw, *b;
    av__live(c, "av_iwae_loss", x, mu, logvar);
    B = av__examples(mu, &w, "av_iwae_loss");
    if (k < 1) av__fail("av_iwae_loss: k = %d samples (at least 1)", k);
    if (x->ndim < 1 || x->shape[0] != B) av__fail_shapes("av_iwae_loss", "x and mu differ in batch size", x, mu);
    logw = av__iwae_log_weights(c, av__repeat_rows(c, x, k, "av_iwae_loss"), av__repeat_rows(c, mu, k, "av_iwae_loss"),
                                av__repeat_rows(c, logvar, k, "av_iwae_loss"), nll, user, "av_iwae_loss");
    b = av_add_scalar(c, av_logsumexp(c, av_reshape(c, logw, 2, k, B), 0, 0), -(float)log((double)k));
    if (bound) *bound = b;
    return av_scale(c, av_mean_all(c, b), -1.0f);
}

AVDEF av_tensor *av_interpolate(av_ctx *c, const float *z0, const float *z1, int dim, int steps) {
    int shape[2], i, j;
    av_tensor *out;
    shape[0] = steps;
    shape[1] = dim;
    out = av__tensor_empty(c, 2, shape, "av_interpolate");
    for (i = 0; i < steps; i++) {
        float t = steps > 1 ? (float)i / (float)(steps - 1) : 0.0f;
        for (j = 0; j < dim; j++) out->data[(size_t)i * dim + j] = (1.0f - t) * z0[j] + t * z1[j]; /* exact at both ends */
    }
    return out;
}

AVDEF av_vae av_vae_new(av_model *m, const char *name, int features, int latent, av_net_fn encoder, av_net_fn decoder,
                        void *user, int likelihood) {
    av_vae v;
    char buf[AV__NAME_MAX];
    memset(&v, 0, sizeof v);
    v.encoder = encoder;
    v.decoder = decoder;
    v.user = user;
    v.head = av_gaussian_head_new(m, av__subname(buf, name, "head"), features, latent);
    v.latent = latent;
    v.likelihood = likelihood;
    return v;
}

AVDEF void av_vae_encode(av_ctx *c, const av_vae *v, av_tensor *x, av_tensor **mu, av_tensor **logvar) {
    av_gaussian_head_forward(c, &v->head, v->encoder(c, x, v->user), mu, logvar);
}

/* decoder output laid out like x */
static av_tensor *av__vae_decode(av_ctx *c, const av_vae *v, av_tensor *z, const av_tensor *like) {
    av_tensor *out = v->decoder(c, z, v->user);
    if (!like) return out;
    if (out->size != like->size) av__fail_shapes("av_vae: decoder output", "does not match x", out, like);
    return av_same_shape(out, like) ? out : av_reshape_shape(c, out, like->ndim, like->shape);
}

AVDEF av_tensor *av_vae_nll(av_ctx *c, const av_vae *v, av_tensor *z, av_tensor *x) {
    av_tensor *params = av__vae_decode(c, v, z, x);
    if (v->likelihood == AV_BERNOULLI) return av_bernoulli_nll(c, params, x);
    return av_gaussian_nll(c, params, v->x_logvar ? v->x_logvar : av_scalar(c, v->fixed_logvar), x);
}

AVDEF av_tensor *av_vae_loss(av_ctx *c, const av_vae *v, av_tensor *x, float beta, av_tensor **nll, av_tensor **kl) {
    av_tensor *mu, *logvar, *rec, *div;
    av_vae_encode(c, v, x, &mu, &logvar);
    rec = av_vae_nll(c, v, av_reparameterize(c, mu, logvar), x);
    div = av_kl_std_normal(c, mu, logvar);
    if (nll) *nll = rec;
    if (kl) *kl = div;
    return av_neg_elbo(c, rec, div, beta);
}

/* the mean of p(x | z): sigmoid of logits, or the Gaussian mean itself */
static av_tensor *av__vae_mean(av_ctx *c, const av_vae *v, av_tensor *z) {
    av_tensor *out = av__vae_decode(c, v, z, NULL);
    return v->likelihood == AV_BERNOULLI ? av_sigmoid(c, out) : out;
}

AVDEF av_tensor *av_vae_reconstruct(av_ctx *c, const av_vae *v, av_tensor *x) {
    av_tensor *mu, *logvar;
    av_vae_encode(c, v, x, &mu, &logvar);
    return av__vae_mean(c, v, mu);
}

AVDEF av_tensor *av_vae_sample(av_ctx *c, const av_vae *v, int n) {
    return av__vae_mean(c, v, av_randn(c, 0.0f, 1.0f, 2, n, v->latent));
}

AVDEF av_tensor *av_vae_interpolate(av_ctx *c, const av_vae *v, av_tensor *x, int steps) {
    av_tensor *mu, *logvar;
    if (x->ndim < 1 || x->shape[0] != 2) av__fail_shapes("av_vae_interpolate", "x must hold two examples", x, NULL);
    av_vae_encode(c, v, x, &mu, &logvar);
    return av__vae_mean(c, v, av_interpolate(c, mu->data, mu->data + v->latent, v->latent, steps));
}

static av_tensor *av__vae_nll_cb(av_ctx *c, av_tensor *z, av_tensor *x, void *user) {
    return av_vae_nll(c, (const av_vae *)user, z, x);
}

AVDEF void av_vae_iwae(av_ctx *c, const av_vae *v, av_tensor *x, int k, double *log_px) {
    av_tensor *mu, *logvar;
    int prev = av_set_grad_enabled(c, 0);
    av_vae_encode(c, v, x, &mu, &logvar);
    av_iwae_log_px(c, x, mu, logvar, k, av__vae_nll_cb, (void *)(uintptr_t)v, log_px);
    av_set_grad_enabled(c, prev);
}

AVDEF av_tensor *av_vae_iwae_loss(av_ctx *c, const av_vae *v, av_tensor *x, int k, av_tensor **bound) {
    av_tensor *mu, *logvar;
    av_vae_encode(c, v, x, &mu, &logvar);
    return av_iwae_loss(c, x, mu, logvar, k, av__vae_nll_cb, (void *)(uintptr_t)v, bound);
}

/* ---- decoding ---- */
AVDEF void av_kv_cache_reorder(av_kv_cache *kv, const int *rows, int n) {
    size_t per = (size_t)kv->heads * kv->capacity * kv->head_dim, used = (size_t)kv->length * kv->head_dim;
    float *k, *v;
    int r, h;
    if (n != kv->batch) av__fail("av_kv_cache_reorder: %d rows for a cache of batch %d", n, kv->batch);
    for (r = 0; r < n; r++)
        if (rows[r] < 0 || rows[r] >= n) av__fail("av_kv_cache_reorder: row %d is %d, outside [0, %d)", r, rows[r], n);
    k = (float *)AV_MALLOC(per * (size_t)n * sizeof(float));
    v = (float *)AV_MALLOC(per * (size_t)n * sizeof(float));
    if (!k || !v) av__fail("av_kv_cache_reorder: out of memory for %lu values", (unsigned long)(2 * per * (size_t)n));
    for (r = 0; r < n; r++) /* only the filled part of each head is copied */
        for (h = 0; h < kv->heads; h++) {
            size_t to = (size_t)r * per + (size_t)h * kv->capacity * kv->head_dim;
            size_t from = (size_t)rows[r] * per + (size_t)h * kv->capacity * kv->head_dim;
            memcpy(k + to, kv->k + from, used * sizeof(float));
            memcpy(v + to, kv->v + from, used * sizeof(float));
        }
    AV_FREE(kv->k);
    AV_FREE(kv->v);
    kv->k = k;
    kv->v = v;
}

AVDEF void av_decoder_cache_reorder(av_decoder_cache *dc, const int *rows, int n) {
    int i;
    for (i = 0; i < dc->num_layers; i++) {
        av_kv_cache_reorder(&dc->self_kv[i], rows, n);
        av_kv_cache_reorder(&dc->memory_kv[i], rows, n);
    }
}

/* One step of the model: logits [rows, V], copied out so the step's tensors can go. */
static const float *av__decode_step(av_ctx *c, const av_decoder *d, const int *tokens, int rows, int *V) {
    av_tensor *logits = d->step(c, tokens, rows, d->state);
    if (logits->ndim < 1 || logits->size != rows * logits->shape[logits->ndim - 1])
        av__fail_shapes("av_decode: step", "must return logits [rows, vocab]", logits, NULL);
    *V = logits->shape[logits->ndim - 1];
    return logits->data;
}

static int av__argmax(const float *x, int n) {
    int i, best = 0;
    for (i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Greedy or sampled decoding of B rows; a row that ended keeps feeding eos
   (the batch steps together) and its outputs are ignored. */
static int av__decode_rows(av_ctx *c, const av_decoder *d, int B, int bos, int eos, int max_len, float temperature,
                           int top_k, float top_p, int sample, int *out, int *lengths) {
    int prev_grad = av_set_grad_enabled(c, 0), prev_train = av_set_training(c, 0), t, b, V, live = B, rc = AV_OK;
    int *tokens = (int *)av_ctx_alloc(c, (size_t)B * 2 * sizeof(int)), *done = tokens + B;
    av_mark mark = av_ctx_mark(c);
    for (b = 0; b < B; b++) { tokens[b] = bos; done[b] = 0; lengths[b] = 0; }
    for (b = 0; b < B * max_len; b++) out[b] = -1;
    for (t = 0; t < max_len && live && !rc; t++) {
        const float *logits = av__decode_step(c, d, tokens, B, &V);
        for (b = 0; b < B && !rc; b++) {
            int tok;
            if (done[b]) { tokens[b] = eos; continue; }
            tok = sample ? av_sample_logits(logits + (size_t)b * V, V, temperature, top_k, top_p, av_ctx_rng(c))
                         : av__argmax(logits + (size_t)b * V, V);
            if (tok < 0) { rc = tok; break; }
            out[(size_t)b * max_len + t] = tokens[b] = tok;
            lengths[b] = t + 1;
            if (tok == eos) { done[b] = 1; live--; }
        }
        av_ctx_rewind(c, mark);
    }
    av_set_grad_enabled(c, prev_grad);
    av_set_training(c, prev_train);
    return rc;
}


/* log-softmax of one row, in double */
static void av__log_softmax_row(const float *x, int V, double *out) {
    double mx = x[0], sum = 0;
    int v;
    for (v = 1; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    for (v = 0; v < V; v++) sum += exp((double)x[v] - mx);
    for (v = 0; v < V; v++) out[v] = (double)x[v] - mx - log(sum);
}

static double av__beam_norm(double logp, int len, float length_penalty) {
    return length_penalty == 0.0f ? logp : logp / pow((double)len, (double)length_penalty);
}

/* Beam search. Each step ranks every live beam's continuations by
   log-probability; going down the ranking, a continuation that is eos (or
   reaches max_len) finishes if it ranks among the first `beam`, and the
   others fill the `beam` live beams. The search stops when `beam`
   hypotheses are finished and the best live beam, scored at its current
   length, cannot beat the worst of them (Hugging Face's rule); so width 1
   is exactly greedy. */
static void av__beam_offer(double s, int b, int v, int n, double *cs, int *cb, int *cv) {
    int k = n - 1;
    if (!(s > cs[k])) return;
    while (k > 0 && s > cs[k - 1]) {
        cs[k] = cs[k - 1]; cb[k] = cb[k - 1]; cv[k] = cv[k - 1];
        k--;
    }
    cs[k] = s; cb[k] = b; cv[k] = v;
}

AVDEF int av_decode_beam(av_ctx *c, const av_decoder *d, int beam, int bos, int eos, int max_len, float length_penalty,
                         int *out, float *score) {
    int prev_grad = av_set_grad_enabled(c, 0), prev_train = av_set_training(c, 0), t, b, V = 0, i, n_done = 0, best = 0;
    int *tokens, *parents, *hist, *new_hist, *done_hist, *done_len, *cb, *cv;
    double *logp, *new_logp, *done_score, *row = NULL, *cs;
    av_mark mark;
    if (beam < 1 || max_len < 1) av__fail("av_decode_beam: beam %d and max_len %d must be >= 1", beam, max_len);
    /* the search's own arrays sit in the context, before the steps' mark */
    tokens = (int *)av_ctx_alloc(c, (size_t)beam * (7 + 3 * (size_t)max_len) * sizeof(int));
    parents = tokens + beam;
    done_len = parents + beam;
    cb = done_len + beam;                  /* 2 beam candidates: at most beam of them are eos */
    cv = cb + 2 * beam;
    hist = cv + 2 * beam;                  /* [beam, max_len] */
    new_hist = hist + (size_t)beam * max_len;
    done_hist = new_hist + (size_t)beam * max_len;
    logp = (double *)av_ctx_alloc(c, (size_t)beam * 5 * sizeof(double));
    new_logp = logp + beam;
    done_score = new_logp + beam;
    cs = done_score + beam;
    for (b = 0; b < beam; b++) { tokens[b] = bos; logp[b] = b ? -INFINITY : 0.0; } /* one live beam at first */
    mark = av_ctx_mark(c);
    for (t = 0; t < max_len; t++) {
        const float *logits = av__decode_step(c, d, tokens, beam, &V);
        int n_live = 0, rank;
        row = (double *)av_ctx_alloc(c, (size_t)V * sizeof(double));
        for (i = 0; i < 2 * beam; i++) cs[i] = -INFINITY;
        for (b = 0; b < beam; b++) {
            int v;
            if (logp[b] == -INFINITY) continue;
            av__log_softmax_row(logits + (size_t)b * V, V, row);
            for (v = 0; v < V; v++) av__beam_offer(logp[b] + row[v], b, v, 2 * beam, cs, cb, cv);
        }
        for (rank = 0; rank < 2 * beam && n_live < beam && cs[rank] > -INFINITY; rank++) {
            int from = cb[rank], v = cv[rank], slot;
            if (v == eos || t == max_len - 1) {
                double norm = av__beam_norm(cs[rank], t + 1, length_penalty);
                if (rank >= beam) continue; /* eos below the first `beam` continuations */
                slot = n_done < beam ? n_done++ : -1;
                if (slot < 0) { /* replace the worst finished one if this is better */
                    int k;
                    for (k = 1, slot = 0; k < beam; k++)
                        if (done_score[k] < done_score[slot]) slot = k;
                    if (norm <= done_score[slot]) continue;
                }
                done_score[slot] = norm;
                done_len[slot] = t + 1;
                memcpy(done_hist + (size_t)slot * max_len, hist + (size_t)from * max_len, (size_t)t * sizeof(int));
                done_hist[(size_t)slot * max_len + t] = v;
                continue;
            }
            parents[n_live] = from;
            new_logp[n_live] = cs[rank];
            tokens[n_live] = v;
            memcpy(new_hist + (size_t)n_live * max_len, hist + (size_t)from * max_len, (size_t)t * sizeof(int));
            new_hist[(size_t)n_live * max_len + t] = v;
            n_live++;
        }
        for (i = n_live; i < beam; i++) { /* fewer live continuations than beams: empty beams */
            parents[i] = 0;
            new_logp[i] = -INFINITY;
            tokens[i] = eos;
        }
        memcpy(hist, new_hist, (size_t)beam * max_len * sizeof(int));
        memcpy(logp, new_logp, (size_t)beam * sizeof(double));
        av_ctx_rewind(c, mark);
        if (!n_live) break;
        if (n_done == beam) {
            double worst = done_score[0];
            for (i = 1; i < beam; i++) worst = done_score[i] < worst ? done_score[i] : worst;
            if (av__beam_norm(logp[0], t + 1, length_penalty) <= worst) break; /* logp[0] is the best live */
        }
        d->reorder(d->state, parents, beam);
    }
    for (i = 1; i < n_done; i++)
        if (done_score[i] > done_score[best]) best = i;
    for (i = 0; i < max_len; i++) out[i] = i < done_len[best] ? done_hist[(size_t)best * max_len + i] : -1;
    if (score) *score = (float)done_score[best];
    i = done_len[best];
    av_set_grad_enabled(c, prev_grad);
    av_set_training(c, prev_train);
    return i;
}

AVDEF int av_sample_logits(const float *logits, int V, float temperature, int top_k, float top_p, av_rng *rng) {
    double *p, total = 0, u, mx;
    int *order, i, keep, pick;
    if (V < 1) av__fail("av_sample_logits: %d logits", V);
    if (!(temperature >= 0.0f) || top_k < 0 || !(top_p > 0.0f && top_p <= 1.0f))
        av__fail("av_sample_logits: temperature %g >= 0, top_k %d >= 0 and top_p %g in (0, 1] are needed",
                 (double)temperature, top_k, (double)top_p);
    if (temperature == 0.0f) return av__argmax(logits, V);
    p = (double *)AV_MALLOC((size_t)V * sizeof(double));
    order = (int *)AV_MALLOC((size_t)V * sizeof(int));
    if (!p || !order) {
        AV_FREE(p);
        AV_FREE(order);
        return av__set_error(AV_ERR_NOMEM, "av_sample_logits: out of memory for %d logits", V);
    }
    mx = logits[av__argmax(logits, V)];
    for (i = 0; i < V; i++) {
        p[i] = exp(((double)logits[i] - mx) / temperature);
        order[i] = i;
        total += p[i];
    }
    /* most likely first (insertion sort: vocabularies here are small; stable for ties) */
    for (i = 1; i < V; i++) {
        int k = i, o = order[i];
        while (k > 0 && p[order[k - 1]] < p[o]) { order[k] = order[k - 1]; k--; }
        order[k] = o;
    }
    keep = top_k > 0 && top_k < V ? top_k : V;
    if (top_p < 1.0f) { /* the smallest prefix whose probability reaches top_p */
        double cum = 0;
        for (i = 0; i < keep; i++) {
            cum += p[order[i]] / total;
            if (cum >= top_p) { keep = i + 1; break; }
        }
    }
    for (i = 0, total = 0; i < keep; i++) total += p[order[i]];
    u = (double)av_rng_uniform(rng) * total;
    for (pick = 0; pick < keep - 1 && u >= p[order[pick]]; pick++) u -= p[order[pick]];
    i = order[pick];
    AV_FREE(p);
    AV_FREE(order);
    return i;
}

AVDEF int av_decode_greedy(av_ctx *c, const av_decoder *d, int B, int bos, int eos, int max_len, int *out, int *lengths) {
    return av__decode_rows(c, d, B, bos, eos, max_len, 0.0f, 0, 1.0f, 0, out, lengths);
}

AVDEF int av_decode_sample(av_ctx *c, const av_decoder *d, int B, int bos, int eos, int max_len, float temperature,
                           int top_k, float top_p, int *out, int *lengths) {
    return av__decode_rows(c, d, B, bos, eos, max_len, temperature, top_k, top_p, 1, out, lengths);
}


/* ======================================================================= */
/* [8 optim] optimizers, schedules, clipping                            */
/* ======================================================================= */
#include <float.h>

AVDEF av_optim av_sgd(double lr, double momentum, double weight_decay) {
    av_optim o;
    memset(&o, 0, sizeof o);
    o.kind = AV_OPT_SGD; o.lr = lr; o.momentum = momentum; o.weight_decay = weight_decay;
    return o;
}

AVDEF av_optim av_adam(double lr) {
    av_optim o;
    memset(&o, 0, sizeof o);
    o.kind = AV_OPT_ADAM; o.lr = lr; o.beta1 = 0.9; o.beta2 = 0.999; o.eps = 1e-8;
    return o;
}

AVDEF av_optim av_adamw(double lr, double weight_decay) {
    av_optim o = av_adam(lr);
    o.kind = AV_OPT_ADAMW;
    o.weight_decay = weight_decay;
    return o;
}

/* The state buffer `which` of a parameter, zeroed when made; NULL if out of memory. */
static float *av__state(av__entry *e, int which) {
    if (!e->state[which]) e->state[which] = (float *)av__alloc_zeros((size_t)e->t->size, sizeof(float));
    return e->state[which];
}

/* AV_OK if 0 <= x <= hi (x < hi when open), else AV_ERR_ARG; NaN fails. */
static int av__check_hyper(const char *what, double x, double hi, int open, const char *range) {
    if (x >= 0 && (open ? x < hi : x <= hi)) return AV_OK;
    return av__set_error(AV_ERR_ARG, "av_optim_step: %s is %g, must be %s; step refused", what, x, range);
}

/* Everything that can refuse a step, checked before anything changes. */
static int av__optim_check(const av_model *m, const av_optim *o) {
    int i, j, rc;
    if (m->error) return av__set_error(m->error, "av_optim_step: the model is incomplete (%s); step refused", m->error_msg);
    if (o->kind != AV_OPT_SGD && o->kind != AV_OPT_ADAM && o->kind != AV_OPT_ADAMW)
        return av__set_error(AV_ERR_ARG, "av_optim_step: unknown optimizer kind %d", o->kind);
    if ((rc = av__check_hyper("lr", o->lr, FLT_MAX, 0, "finite and >= 0")) ||
        (rc = av__check_hyper("weight_decay", o->weight_decay, FLT_MAX, 0, "finite and >= 0")))
        return rc;
    if (o->kind == AV_OPT_SGD) rc = av__check_hyper("momentum", o->momentum, 1, 0, "in [0, 1]");
    else if (!(rc = av__check_hyper("beta1", o->beta1, 1, 1, "in [0, 1)")) &&
             !(rc = av__check_hyper("beta2", o->beta2, 1, 1, "in [0, 1)")))
        rc = av__check_hyper("eps", o->eps, FLT_MAX, 0, "finite and >= 0");
    if (rc) return rc;
    for (i = 0; i < m->n_groups; i++)
        if (o->lr * m->groups[i].lr_scale > FLT_MAX || o->weight_decay * m->groups[i].decay_scale > FLT_MAX)
            return av__set_error(AV_ERR_ARG, "av_optim_step: group %d's scales (%g, %g) make lr %g or weight_decay %g too large",
                                 i + 1, m->groups[i].lr_scale, m->groups[i].decay_scale, o->lr, o->weight_decay);
    if (m->step >= AV_MAX_STEP)
        return av__set_error(AV_ERR_ARG, "av_optim_step: the step count is at its limit (%ld)", AV_MAX_STEP);
    for (i = 0; i < m->params.n; i++) {
        const av_tensor *t = m->params.e[i].t;
        int bad = av__nonfinite(t->grad, t->size);
        for (j = 0; bad && j < t->size; j++)
            if (!isfinite(t->grad[j]))
                return av__set_error(AV_ERR_NAN, "av_optim_step: gradient of '%s' is not finite (%g at %d); step skipped",
                                     t->name, (double)t->grad[j], j);
    }
    return AV_OK;
}

/* SGD as PyTorch: d = g + wd p; with momentum v = mu v + d, d = v; p -= lr d. */
static void av__sgd_update(float *p, const float *g, float *vel, int n, float lr, float wd, float mu) {
    int j;
    AV__PAR(n)
    for (j = 0; j < n; j++) {
        float d = g[j] + wd * p[j];
        if (vel) d = vel[j] = mu * vel[j] + d;
        p[j] -= lr * d;
    }
}

/* PyTorch's update rules, so runs can be compared step for step; lr and wd
   are the group's (the optimizer's times the group's scales):
   SGD:   see av__sgd_update (no state without momentum)
   Adam:  g += wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
          p -= lr/bc1 m / (sqrt(v)/sqrt(bc2) + eps), bc = 1 - b^step
   AdamW: p *= 1 - lr wd, then Adam without the L2 term. */
AVDEF int av_optim_step(av_model *m, const av_optim *o) {
    int i, k, rc = av__optim_check(m, o), n_state = o->kind != AV_OPT_SGD ? 2 : o->momentum != 0;
    double bc1, bc2;
    if (rc) return rc;
    for (i = 0; i < m->params.n; i++)
        for (k = 0; k < n_state; k++)
            if (!av__state(&m->params.e[i], k))
                return av__set_error(AV_ERR_NOMEM, "av_optim_step: out of memory for the optimizer state of '%s' (%d values); step refused",
                                     m->params.e[i].t->name, m->params.e[i].t->size);
    m->step++;
    bc1 = 1.0 - pow(o->beta1, (double)m->step);
    bc2 = 1.0 - pow(o->beta2, (double)m->step);
    for (i = 0; i < m->params.n; i++) {
        av__entry *e = &m->params.e[i];
        av_tensor *t = e->t;
        double lr = o->lr, wd = o->weight_decay;
        if (e->group > 0) {
            lr *= m->groups[e->group - 1].lr_scale;
            wd *= m->groups[e->group - 1].decay_scale;
        }
        if (o->kind == AV_OPT_SGD) {
            av__sgd_update(t->data, t->grad, e->state[0], t->size, (float)lr, (float)wd, (float)o->momentum);
        } else {
            av__adam_args a;
            int decoupled = o->kind == AV_OPT_ADAMW;
            a.b1 = (float)o->beta1; a.c1 = (float)(1.0 - o->beta1);
            a.b2 = (float)o->beta2; a.c2 = (float)(1.0 - o->beta2);
            a.eps = (float)o->eps;
            a.step_size = (float)(lr / bc1);
            a.sqrt_bc2 = (float)sqrt(bc2);
            a.l2 = decoupled ? 0.0f : (float)wd;
            a.keep = decoupled ? (float)(1.0 - lr * wd) : 1.0f;
            av__adam_array(t->data, t->grad, e->state[0], e->state[1], t->size, &a);
        }
    }
    return AV_OK;
}

AVDEF float av_grad_norm(const av_model *m) {
    double ss = 0;
    int i, j;
    for (i = 0; i < m->params.n; i++) {
        const av_tensor *t = m->params.e[i].t;
        for (j = 0; j < t->size; j++) ss += (double)t->grad[j] * t->grad[j];
    }
    return (float)sqrt(ss);
}

AVDEF float av_clip_grad_norm(av_model *m, float max_norm) {
    float norm;
    int i, j;
    if (!(max_norm >= 0)) av__fail("av_clip_grad_norm: max_norm is %g, must be >= 0", (double)max_norm);
    norm = av_grad_norm(m);
    if (norm > max_norm) {
        float s = max_norm / (norm + 1e-6f); /* PyTorch's epsilon */
        for (i = 0; i < m->params.n; i++) {
            av_tensor *t = m->params.e[i].t;
            AV__PAR(t->size)
            for (j = 0; j < t->size; j++) t->grad[j] *= s;
        }
    }
    return norm;
}

AVDEF double av_lr_warmup_cosine(long step, long warmup, long total, double lr_max, double lr_min) {
    double progress;
    if (step < warmup) return lr_max * (double)(step + 1) / (double)warmup;
    progress = total > warmup ? (double)(step - warmup) / (double)(total - warmup) : 1.0;
    if (progress > 1.0) progress = 1.0;
    return lr_min + (lr_max - lr_min) * 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
}

/* ---- optimizer state by name ---- */
/* The parameter entry for state access, or NULL with AV_ERR_ARG set. */
static av__entry *av__state_entry(const av_model *m, const char *name, int which, const void *buf, int n, const char *who) {
    int k = av__find(m, name);
    if (k < 0) av__set_error(AV_ERR_ARG, "%s: no parameter named '%s'", who, name ? name : "(NULL)");
    else if (k >= m->params.n) av__set_error(AV_ERR_ARG, "%s: '%s' is a buffer; buffers have no optimizer state", who, name);
    else if (which != AV_STATE_M && which != AV_STATE_V)
        av__set_error(AV_ERR_ARG, "%s: which is %d (AV_STATE_M or AV_STATE_V)", who, which);
    else if (n != m->params.e[k].t->size || !buf)
        av__set_error(AV_ERR_ARG, "%s: '%s' has %d values; got n = %d%s", who, name, m->params.e[k].t->size, n,
                      buf ? "" : " and a NULL buffer");
    else return &m->params.e[k];
    return NULL;
}

AVDEF int av_optim_state_get(const av_model *m, const char *name, int which, float *dst, int n) {
    const av__entry *e = av__state_entry(m, name, which, dst, n, "av_optim_state_get");
    if (!e) return AV_ERR_ARG;
    if (e->state[which]) memcpy(dst, e->state[which], (size_t)n * sizeof(float));
    else memset(dst, 0, (size_t)n * sizeof(float));
    return AV_OK;
}

AVDEF int av_optim_state_set(av_model *m, const char *name, int which, const float *src, int n) {
    av__entry *e = av__state_entry(m, name, which, src, n, "av_optim_state_set");
    if (!e) return AV_ERR_ARG;
    if (!av__state(e, which))
        return av__set_error(AV_ERR_NOMEM, "av_optim_state_set: out of memory for the state of '%s' (%d values)", name, n);
    memcpy(e->state[which], src, (size_t)n * sizeof(float));
    return AV_OK;
}

AVDEF int av_model_set_step(av_model *m, long step) {
    if (step < 0 || step > AV_MAX_STEP)
        return av__set_error(AV_ERR_ARG, "av_model_set_step: step %ld is outside 0..%ld", step, AV_MAX_STEP);
    m->step = step;
    return AV_OK;
}

/* ======================================================================= */
/* [9 io] JSON, safetensors, IDX, model and checkpoint files            */
/* ======================================================================= */
/* ---- file I/O: safetensors and IDX ----------------------------------- */
#include <errno.h>
#include <float.h>
#include <limits.h>

#define AV__ST_MAX_HEADER 100000000ull /* same cap as the reference reader */
#define AV__JSON_MAX_DEPTH 64          /* safetensors needs 3; stops bombs */

/* ---- the system's side of durable saves --------------------------------
   A save creates its temporary file exclusively (no other writer can have
   it), writes it, flushes it to disk, renames it over the target and
   flushes the directory. The same few calls on POSIX and Windows; plain C
   can neither create exclusively nor flush, and does what it can. */
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <unistd.h>
typedef int av__wfile;
static int av__os_create(const char *p, av__wfile *w) {
    return (*w = open(p, O_WRONLY | O_CREAT | O_EXCL, 0666)) < 0 ? -1 : 0;
}
static int av__os_write(av__wfile w, const void *b, size_t n) {
    const char *p = (const char *)b;
    while (n) {
        long k = (long)write(w, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}
static int av__os_close(av__wfile w, int sync) {
    int ok = !sync || fsync(w) == 0;
    return close(w) == 0 && ok ? 0 : -1;
}
static long av__os_pid(void) { return (long)getpid(); }
/* The renamed entry reaches the disk with its directory; best effort, as
   some file systems cannot flush a directory. */
static int av__os_replace(const char *tmp, const char *path, const char *dir) {
    int fd;
    if (rename(tmp, path) != 0) return -1;
    if ((fd = open(dir, O_RDONLY)) >= 0) {
        (void)fsync(fd); /* on failure the file is in place all the same */
        close(fd);
    }
    return 0;
}
#elif defined(_WIN32)
#include <fcntl.h>
#include <io.h>
#include <process.h>
#include <sys/stat.h>
#include <windows.h>
typedef int av__wfile;
static int av__os_create(const char *p, av__wfile *w) {
    return (*w = _open(p, _O_WRONLY | _O_CREAT | _O_EXCL | _O_BINARY, _S_IREAD | _S_IWRITE)) < 0 ? -1 : 0;
}
static int av__os_write(av__wfile w, const void *b, size_t n) {
    return _write(w, b, (unsigned)n) == (int)n ? 0 : -1;
}
static int av__os_close(av__wfile w, int sync) {
    int ok = !sync || _commit(w) == 0; /* FlushFileBuffers */
    return _close(w) == 0 && ok ? 0 : -1;
}
static long av__os_pid(void) { return (long)_getpid(); }
static int av__os_replace(const char *tmp, const char *path, const char *dir) {
    (void)dir; /* write-through moves flush the directory */
    if (MoveFileExA(tmp, path, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) return 0;
    errno = EACCES;
    return -1;
}
#else
typedef FILE *av__wfile;
static int av__os_create(const char *p, av__wfile *w) { return (*w = fopen(p, "wb")) ? 0 : -1; }
static int av__os_write(av__wfile w, const void *b, size_t n) { return fwrite(b, 1, n, w) == n ? 0 : -1; }
static int av__os_close(av__wfile w, int sync) {
    int ok = !sync || fflush(w) == 0;
    return fclose(w) == 0 && ok ? 0 : -1;
}
static long av__os_pid(void) { return 0; }
static int av__os_replace(const char *tmp, const char *path, const char *dir) {
    (void)dir;
    return rename(tmp, path);
}
#endif

/* The size of an open file, or -1 when it has none (a pipe, a device). */
static int64_t av__file_size(FILE *fp) {
#ifdef _WIN32
    int64_t here = _ftelli64(fp), end;
    if (here < 0 || _fseeki64(fp, 0, SEEK_END) != 0) return -1;
    end = _ftelli64(fp);
    return _fseeki64(fp, here, SEEK_SET) != 0 || end < here ? -1 : end;
#else
    long here = ftell(fp), end;
    if (here < 0 || fseek(fp, 0, SEEK_END) != 0) return -1;
    end = ftell(fp);
    return fseek(fp, here, SEEK_SET) != 0 || end < here ? -1 : (int64_t)end;
#endif
}

/* Reads n bytes at the file's position into fresh memory (*out). A short
   read is an I/O error or a file that shrank ("truncated"). */
static int av__read_fresh(FILE *fp, size_t n, unsigned char **out, const char *path, const char *what) {
    unsigned char *b = (unsigned char *)AV_MALLOC(n ? n : 1);
    *out = NULL;
    if (!b)
        return av__set_error(AV_ERR_NOMEM, "%s: out of memory for %s (%lu bytes)", path, what,
                             (unsigned long)n);
    if (fread(b, 1, n, fp) != n) {
        int bad = ferror(fp), err = errno;
        AV_FREE(b);
        return bad ? av__set_error(AV_ERR_IO, "%s: read error in %s (%s)", path, what, strerror(err))
                   : av__set_error(AV_ERR_FORMAT, "%s: truncated file (in %s)", path, what);
    }
    *out = b;
    return AV_OK;
}

/* ---- number formats ------------------------------------------------------
   Values are assembled from bytes, which is correct on any host (big-endian
   needs no special case) and never reads unaligned. */
static uint64_t av__le(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    while (bytes--) v = v << 8 | p[bytes];
    return v;
}
static void av__put_le(unsigned char *p, uint64_t v, int bytes) {
    int i;
    for (i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> 8 * i);
}
static float av__f32_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t av__bits_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* double -> float, rounded to nearest: at or past FLT_MAX + half an ulp the
   result is +-inf (a plain cast of such a value is undefined in C). */
static float av__f64_to_f32(double d) {
    const double inf_from = (double)FLT_MAX + 10141204801825835211973625643008.0; /* + 2^103 */
    if (d > FLT_MAX || d < -FLT_MAX) {
        float big = fabs(d) < inf_from ? FLT_MAX : HUGE_VALF;
        return d < 0 ? -big : big;
    }
    return (float)d;
}
/* IEEE half -> float: exact. A NaN keeps its payload and turns quiet. */
static float av__f16_to_f32(uint32_t h) {
    uint32_t sign = (h & 0x8000) << 16, e = h >> 10 & 0x1f, m = h & 0x3ff;
    if (e == 0) { /* zero or subnormal: m * 2^-24 */
        float f = (float)m * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    if (e == 31) return av__f32_bits(sign | 0x7f800000 | m << 13 | (m ? 0x400000 : 0));
    return av__f32_bits(sign | (e + 112) << 23 | m << 13);
}
/* float -> IEEE half, rounded to nearest even; at or past 65520: +-inf;
   NaN: the quiet NaN with the same sign. */
static uint32_t av__f32_to_f16(float f) {
    uint32_t u = av__bits_f32(f), sign = u >> 16 & 0x8000, a = u & 0x7fffffff, m, r, shift, rest, half;
    if (a > 0x7f800000) return sign | 0x7e00;
    if (a >= 0x477ff000) return sign | 0x7c00;
    if (a >= 0x38800000) /* a normal half: drop 13 bits, rebias the exponent by 112 */
        return sign | (a + 0xfff + (a >> 13 & 1) - 0x38000000) >> 13;
    if (a <= 0x33000000) return sign; /* at most 2^-25: rounds to zero */
    /* a subnormal half: the value in units of 2^-24, rounded */
    m = (a & 0x7fffff) | 0x800000;
    shift = 126 - (a >> 23);
    r = m >> shift;
    rest = m & ((1u << shift) - 1);
    half = 1u << (shift - 1);
    return sign | (r + (rest > half || (rest == half && (r & 1))));
}
/* bfloat16 is the top half of a float: widening is exact, narrowing
   rounds to nearest even; NaN: the quiet NaN with the same sign. */
static float av__bf16_to_f32(uint32_t h) { return av__f32_bits(h << 16); }
static uint32_t av__f32_to_bf16(float f) {
    uint32_t u = av__bits_f32(f);
    if ((u & 0x7fffffff) > 0x7f800000) return (u >> 16 & 0x8000) | 0x7fc0;
    return (u + 0x7fff + (u >> 16 & 1)) >> 16;
}

/* The safetensors dtypes, in AV_DTYPE_* order. */
static const char *const av__dtype_name[4] = {"F32", "F16", "BF16", "F64"};
static const int av__dtype_size[4] = {4, 2, 2, 8};

/* Element p of a little-endian array of the dtype, as a float. */
static float av__st_load(const unsigned char *p, int dtype) {
    uint64_t w;
    double d;
    switch (dtype) {
    case AV_DTYPE_F16: return av__f16_to_f32((uint32_t)av__le(p, 2));
    case AV_DTYPE_BF16: return av__bf16_to_f32((uint32_t)av__le(p, 2));
    case AV_DTYPE_F64: w = av__le(p, 8); memcpy(&d, &w, 8); return av__f64_to_f32(d);
    default: return av__f32_bits((uint32_t)av__le(p, 4));
    }
}
/* Stores v at p in the dtype, little-endian. */
static void av__st_store(unsigned char *p, int dtype, float v) {
    uint64_t w;
    double d = v;
    switch (dtype) {
    case AV_DTYPE_F16: av__put_le(p, av__f32_to_f16(v), 2); break;
    case AV_DTYPE_BF16: av__put_le(p, av__f32_to_bf16(v), 2); break;
    case AV_DTYPE_F64: memcpy(&w, &d, 8); av__put_le(p, w, 8); break;
    default: av__put_le(p, av__bits_f32(v), 4);
    }
}

/* Element count of a shape, or -1 above INT_MAX (what attnvae can index).
   Any zero dim makes it 0, however large the others. */
static int64_t av__st_numel(int ndim, const int *shape) {
    int64_t n = 1;
    int d, zero = 0;
    for (d = 0; d < ndim; d++) {
        if (shape[d] == 0) zero = 1;
        else if (n <= INT_MAX) n *= shape[d]; /* < 2^62: no overflow */
    }
    return zero ? 0 : n > INT_MAX ? -1 : n;
}

/* Sorts names and returns one that appears twice, or NULL. */
static int av__cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}
static const char *av__duplicate(const char **names, int n) {
    int i;
    qsort(names, (size_t)n, sizeof *names, av__cmp_str);
    for (i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    return NULL;
}

/* ---- a strict JSON parser ----------------------------------------------
   Parses into a flat token array (containers followed by their children).
   Strings are unescaped in place (an escape never grows), NUL-terminated,
   and then point into the caller's buffer. */
enum { AV__J_NULL, AV__J_BOOL, AV__J_NUM, AV__J_STR, AV__J_ARR, AV__J_OBJ };
typedef struct av__json_tok {
    int type;
    int n;    /* members (object) or items (array) */
    int next; /* index of the token after this subtree */
    int len;  /* number: length of its text */
    char *s;  /* string (unescaped, NUL-terminated) or number text */
} av__json_tok;
typedef struct av__json {
    char *p, *start, *end;
    av__json_tok *tok;
    int n, cap, nomem;
    const char *err; /* first error; p then points at it */
} av__json;

static int av__json_fail(av__json *j, const char *msg) {
    if (!j->err) j->err = msg;
    return -1;
}
static void av__json_ws(av__json *j) {
    while (j->p < j->end &&
           (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}
/* skips whitespace, then reports whether c comes next */
static int av__json_at(av__json *j, char c) {
    av__json_ws(j);
    return j->p < j->end && *j->p == c;
}
/* after av__json_at failed: say why */
static int av__json_expected(av__json *j, const char *msg) {
    return av__json_fail(j, j->p == j->end ? "unexpected end of JSON" : msg);
}
static int av__json_digit(const char *p, const char *end) {
    return p < end && *p >= '0' && *p <= '9';
}
static int av__json_new(av__json *j, int type) {
    av__json_tok *t;
    if (j->n == j->cap) {
        int cap = j->cap ? j->cap * 2 : 64;
        t = (av__json_tok *)AV_REALLOC(j->tok, (size_t)cap * sizeof *t);
        if (!t) { j->nomem = 1; return av__json_fail(j, "out of memory"); }
        j->tok = t;
        j->cap = cap;
    }
    t = &j->tok[j->n];
    memset(t, 0, sizeof *t);
    t->type = type;
    t->next = j->n + 1;
    return j->n++;
}

/* Length of the valid UTF-8 sequence at p (first byte >= 0x80), or 0. */
static int av__json_utf8(const char *s, const char *end) {
    const unsigned char *p = (const unsigned char *)s;
    int k, i;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (p[0] >= 0xC2 && p[0] <= 0xDF) k = 2;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF) k = 3;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4) k = 4;
    else return 0;
    if (end - s < k) return 0;
    if (p[0] == 0xE0) lo = 0xA0;      /* overlong */
    if (p[0] == 0xED) hi = 0x9F;      /* surrogates */
    if (p[0] == 0xF0) lo = 0x90;      /* overlong */
    if (p[0] == 0xF4) hi = 0x8F;      /* above U+10FFFF */
    if (p[1] < lo || p[1] > hi) return 0;
    for (i = 2; i < k; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return k;
}

static long av__json_hex4(const char *p, const char *end) {
    long v = 0;
    int i;
    if (end - p < 4) return -1;
    for (i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Decodes the escape at j->p (a backslash) into *w; advances both. */
static int av__json_escape(av__json *j, char **w) {
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *e = j->end - j->p >= 2 && j->p[1] ? strchr(from, j->p[1]) : NULL;
    char *o = *w;
    long cp, lo;
    if (e) { *o = to[e - from]; *w = o + 1; j->p += 2; return 0; }
    if (j->end - j->p < 2 || j->p[1] != 'u')
        return av__json_fail(j, "invalid escape in string");
    cp = av__json_hex4(j->p + 2, j->end);
    if (cp < 0) return av__json_fail(j, "invalid \\u escape");
    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return av__json_fail(j, "unpaired surrogate in \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) { /* needs a low surrogate next */
        lo = j->end - j->p >= 8 && j->p[6] == '\\' && j->p[7] == 'u'
                 ? av__json_hex4(j->p + 8, j->end) : -1;
        if (lo < 0xDC00 || lo > 0xDFFF)
            return av__json_fail(j, "unpaired surrogate in \\u escape");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        j->p += 6;
    }
    if (cp == 0) return av__json_fail(j, "\\u0000 is not allowed in strings");
    j->p += 6;
    if (cp < 0x80) *o++ = (char)cp;
    else if (cp < 0x800) {
        *o++ = (char)(0xC0 | cp >> 6);
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | cp >> 12);
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | cp >> 18);
        *o++ = (char)(0x80 | (cp >> 12 & 0x3F));
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    *w = o;
    return 0;
}

static int av__json_string(av__json *j) {
    int t = av__json_new(j, AV__J_STR), k;
    char *s = j->p + 1, *w = s;
    if (t < 0) return -1;
    j->p = s;
    for (;;) {
        unsigned char c;
        if (j->p == j->end) return av__json_fail(j, "unterminated string");
        c = (unsigned char)*j->p;
        if (c == '"') break;
        if (c < 0x20) return av__json_fail(j, "control character in string");
        if (c == '\\') {
            if (av__json_escape(j, &w) < 0) return -1;
        } else if (c < 0x80) {
            *w++ = *j->p++;
        } else {
            if (!(k = av__json_utf8(j->p, j->end)))
                return av__json_fail(j, "invalid UTF-8 in string");
            memmove(w, j->p, (size_t)k);
            w += k;
            j->p += k;
        }
    }
    *w = 0; /* w <= the closing quote, so this stays inside the string */
    j->p++;
    j->tok[t].s = s;
    return t;
}

static int av__json_number(av__json *j) {
    char *p = j->p, *e = j->end;
    int t;
    if (p < e && *p == '-') p++;
    if (!av__json_digit(p, e)) return av__json_fail(j, "unexpected character");
    if (*p == '0') p++; /* no leading zeros: "01" fails at the caller */
    else while (av__json_digit(p, e)) p++;
    if (p < e && *p == '.') {
        if (!av__json_digit(++p, e)) { j->p = p; return av__json_fail(j, "digit expected after '.'"); }
        while (av__json_digit(p, e)) p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (!av__json_digit(p, e)) { j->p = p; return av__json_fail(j, "digit expected in exponent"); }
        while (av__json_digit(p, e)) p++;
    }
    if ((t = av__json_new(j, AV__J_NUM)) < 0) return -1;
    j->tok[t].s = j->p;
    j->tok[t].len = (int)(p - j->p);
    j->p = p;
    return t;
}

static int av__json_literal(av__json *j, const char *word, int type) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return av__json_fail(j, "unexpected character");
    j->p += n;
    return av__json_new(j, type);
}

static int av__json_value(av__json *j, int depth);

static int av__json_container(av__json *j, int depth) {
    int obj = *j->p == '{', n = 0;
    char close = obj ? '}' : ']';
    int t = av__json_new(j, obj ? AV__J_OBJ : AV__J_ARR);
    if (t < 0) return -1;
    j->p++;
    if (av__json_at(j, close)) j->p++;
    else for (;;) {
        if (obj) {
            if (!av__json_at(j, '"')) return av__json_expected(j, "expected a string key");
            if (av__json_string(j) < 0) return -1;
            if (!av__json_at(j, ':')) return av__json_expected(j, "expected ':'");
            j->p++;
        }
        if (av__json_value(j, depth + 1) < 0) return -1;
        n++;
        if (av__json_at(j, ',')) { j->p++; continue; }
        if (av__json_at(j, close)) { j->p++; break; }
        return av__json_expected(j, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    j->tok[t].n = n;
    j->tok[t].next = j->n;
    return t;
}

static int av__json_value(av__json *j, int depth) {
    av__json_ws(j);
    if (j->p == j->end) return av__json_fail(j, "unexpected end of JSON");
    switch (*j->p) {
    case '{': case '[':
        if (depth >= AV__JSON_MAX_DEPTH) return av__json_fail(j, "nesting too deep");
        return av__json_container(j, depth);
    case '"': return av__json_string(j);
    case 't': return av__json_literal(j, "true", AV__J_BOOL);
    case 'f': return av__json_literal(j, "false", AV__J_BOOL);
    case 'n': return av__json_literal(j, "null", AV__J_NULL);
    default: return av__json_number(j);
    }
}

/* Parses s[0..len) as one JSON value with optional surrounding whitespace. */
static int av__json_parse(av__json *j, char *s, size_t len) {
    memset(j, 0, sizeof *j);
    j->start = j->p = s;
    j->end = s + len;
    if (av__json_value(j, 0) < 0) return -1;
    av__json_ws(j);
    if (j->p != j->end) return av__json_fail(j, "trailing characters after the JSON value");
    return 0;
}

/* A number token as a non-negative integer, or -1 (negative, fractional,
   exponent, too large, or not a number). */
static int64_t av__json_uint(const av__json_tok *t) {
    int64_t v = 0;
    int i;
    if (t->type != AV__J_NUM) return -1;
    for (i = 0; i < t->len; i++) {
        int d = t->s[i] - '0';
        if (d < 0 || d > 9 || v > (INT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    return v;
}

/* ---- safetensors reading --------------------------------------------- */
typedef struct av__st_tensor {
    const char *name;
    int ndim, dtype;
    int shape[AV_ST_MAX_DIMS];
    int64_t numel, begin, end; /* offsets in the data section */
} av__st_tensor;
typedef struct av__st_pair { const char *key, *value; } av__st_pair;

struct av_st_file {
    unsigned char *header;      /* the JSON; names and metadata point into it */
    unsigned char *data;        /* the data section */
    int n, n_meta;
    av__st_tensor *t;           /* header order */
    av__st_tensor **by_name;    /* sorted, for av_st_find */
    av__st_pair *meta;          /* sorted by key, for av_st_meta */
};

static int av__st_cmp_name(const void *a, const void *b) {
    return strcmp((*(av__st_tensor *const *)a)->name, (*(av__st_tensor *const *)b)->name);
}
static int av__st_cmp_key(const void *key, const void *b) {
    return strcmp((const char *)key, (*(av__st_tensor *const *)b)->name);
}
static int av__st_cmp_offset(const void *a, const void *b) {
    const av__st_tensor *x = *(av__st_tensor *const *)a, *y = *(av__st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}
static int av__st_cmp_pair(const void *a, const void *b) {
    return strcmp(((const av__st_pair *)a)->key, ((const av__st_pair *)b)->key);
}

/* AV_ERR_FORMAT with a message that starts "path: tensor 'name': " */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 3, 4)))
#endif
static int av__st_bad(const char *path, const char *name, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return av__set_error(AV_ERR_FORMAT, "%s: tensor '%.60s': %s", path, name, msg);
}

/* Reads the shape or data_offsets array at token a into v[0..max). */
static int av__st_ints(const av__json *j, int a, int64_t *v, int max,
                       const char *path, const char *name, const char *field) {
    const av__json_tok *t = &j->tok[a];
    int i, k;
    if (t->type != AV__J_ARR || t->n > max)
        return av__st_bad(path, name, "'%s' must be an array of at most %d integers", field, max);
    for (i = 0, k = a + 1; i < t->n; i++, k = j->tok[k].next) {
        const av__json_tok *e = &j->tok[k];
        if (e->type != AV__J_NUM)
            return av__st_bad(path, name, "%s[%d] is not a number", field, i);
        if ((v[i] = av__json_uint(e)) < 0)
            return av__st_bad(path, name, "%s[%d] is %.*s, not a non-negative integer", field, i,
                              e->len > 40 ? 40 : e->len, e->s);
    }
    return AV_OK;
}

/* Fills t from the tensor entry at token v; checks its fields and size. */
static int av__st_tensor_parse(const av__json *j, int v, const char *path,
                               int64_t data_len, av__st_tensor *t) {
    static const char *const fields[3] = {"dtype", "shape", "data_offsets"};
    int seen = 0, m, k, f, rc;
    int64_t off[2] = {0, 0}, shape[AV_ST_MAX_DIMS];
    if (j->tok[v].type != AV__J_OBJ)
        return av__st_bad(path, t->name, "entry is not an object");
    for (m = 0, k = v + 1; m < j->tok[v].n; m++, k = j->tok[k + 1].next) {
        const av__json_tok *val = &j->tok[k + 1];
        for (f = 0; f < 3 && strcmp(j->tok[k].s, fields[f]) != 0; f++) {}
        if (f == 3)
            return av__st_bad(path, t->name, "unknown field '%.40s'", j->tok[k].s);
        if (seen & 1 << f)
            return av__st_bad(path, t->name, "duplicate field '%s'", fields[f]);
        seen |= 1 << f;
        if (f == 0) {
            if (val->type != AV__J_STR) return av__st_bad(path, t->name, "dtype is not a string");
            for (t->dtype = 0; t->dtype < 4 && strcmp(val->s, av__dtype_name[t->dtype]) != 0; t->dtype++) {}
            if (t->dtype == 4)
                return av__st_bad(path, t->name, "dtype \"%.20s\" is not supported (F32, F16, BF16 and F64 are)",
                                  val->s);
        }
        if (f == 1) {
            if ((rc = av__st_ints(j, k + 1, shape, AV_ST_MAX_DIMS, path, t->name, "shape"))) return rc;
            for (t->ndim = 0; t->ndim < val->n; t->ndim++) {
                if (shape[t->ndim] > INT_MAX)
                    return av__st_bad(path, t->name, "shape[%d] is %lld: too large for attnvae (at most %d)",
                                      t->ndim, (long long)shape[t->ndim], INT_MAX);
                t->shape[t->ndim] = (int)shape[t->ndim];
            }
        }
        if (f == 2) {
            if ((rc = av__st_ints(j, k + 1, off, 2, path, t->name, "data_offsets"))) return rc;
            if (val->n != 2)
                return av__st_bad(path, t->name, "data_offsets needs 2 entries, has %d", val->n);
        }
    }
    for (f = 0; f < 3; f++)
        if (!(seen & 1 << f))
            return av__st_bad(path, t->name, "missing '%s'", fields[f]);
    if ((t->numel = av__st_numel(t->ndim, t->shape)) < 0)
        return av__st_bad(path, t->name, "more than %d elements: too large for attnvae", INT_MAX);
    t->begin = off[0];
    t->end = off[1];
    if (t->begin > t->end)
        return av__st_bad(path, t->name, "data_offsets begin %lld > end %lld",
                          (long long)t->begin, (long long)t->end);
    if (t->end > data_len)
        return av__st_bad(path, t->name,
                          "data_offsets end %lld is past the data section (%lld bytes; truncated?)",
                          (long long)t->end, (long long)data_len);
    if (t->numel * av__dtype_size[t->dtype] != t->end - t->begin)
        return av__st_bad(path, t->name, "shape needs %lld bytes but data_offsets span %lld",
                          (long long)(t->numel * av__dtype_size[t->dtype]), (long long)(t->end - t->begin));
    return AV_OK;
}

/* Keeps the __metadata__ pairs sorted by key: duplicates meet, and
   av_st_meta finds a key in log time. */
static int av__st_meta_parse(av_st_file *f, const av__json *j, int v, const char *path) {
    int m, k;
    if (j->tok[v].type != AV__J_OBJ)
        return av__set_error(AV_ERR_FORMAT, "%s: __metadata__ is not an object", path);
    f->meta = (av__st_pair *)AV_MALLOC(sizeof *f->meta * (size_t)(j->tok[v].n + 1));
    if (!f->meta) return av__set_error(AV_ERR_NOMEM, "%s: out of memory for the metadata", path);
    for (m = 0, k = v + 1; m < j->tok[v].n; m++, k = j->tok[k + 1].next) {
        if (j->tok[k + 1].type != AV__J_STR)
            return av__set_error(AV_ERR_FORMAT, "%s: __metadata__ value of '%.40s' is not a string",
                                 path, j->tok[k].s);
        f->meta[m].key = j->tok[k].s;
        f->meta[m].value = j->tok[k + 1].s;
    }
    f->n_meta = j->tok[v].n;
    qsort(f->meta, (size_t)f->n_meta, sizeof *f->meta, av__st_cmp_pair);
    for (m = 1; m < f->n_meta; m++)
        if (strcmp(f->meta[m - 1].key, f->meta[m].key) == 0)
            return av__set_error(AV_ERR_FORMAT, "%s: duplicate __metadata__ key '%.40s'", path, f->meta[m].key);
    return AV_OK;
}

/* Interprets the parsed header and checks that the tensors tile the data
   section, data_len bytes, exactly. */
static int av__st_layout(av_st_file *f, const av__json *j, const char *path, int64_t data_len) {
    int m, k, i, rc, has_meta = 0;
    int64_t pos = 0;
    av__st_tensor **order;
    if (j->tok[0].type != AV__J_OBJ)
        return av__set_error(AV_ERR_FORMAT, "%s: header is not a JSON object", path);
    f->t = (av__st_tensor *)AV_MALLOC(sizeof *f->t * (size_t)(j->tok[0].n + 1));
    f->by_name = (av__st_tensor **)AV_MALLOC(sizeof *f->by_name * (size_t)(j->tok[0].n + 1));
    if (!f->t || !f->by_name) return av__set_error(AV_ERR_NOMEM, "%s: out of memory for the tensor list", path);
    for (m = 0, k = 1; m < j->tok[0].n; m++, k = j->tok[k + 1].next) {
        if (strcmp(j->tok[k].s, "__metadata__") == 0) {
            if (has_meta++) return av__set_error(AV_ERR_FORMAT, "%s: duplicate __metadata__", path);
            if ((rc = av__st_meta_parse(f, j, k + 1, path))) return rc;
            continue;
        }
        memset(&f->t[f->n], 0, sizeof *f->t);
        f->t[f->n].name = j->tok[k].s;
        if ((rc = av__st_tensor_parse(j, k + 1, path, data_len, &f->t[f->n]))) return rc;
        f->by_name[f->n] = &f->t[f->n];
        f->n++;
    }
    qsort(f->by_name, (size_t)f->n, sizeof *f->by_name, av__st_cmp_name);
    for (i = 1; i < f->n; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
            return av__set_error(AV_ERR_FORMAT, "%s: duplicate tensor name '%.60s'",
                                 path, f->by_name[i]->name);
    /* The tensors, sorted by offset, must tile the data section exactly. */
    order = (av__st_tensor **)AV_MALLOC(sizeof *order * (size_t)(f->n + 1));
    if (!order) return av__set_error(AV_ERR_NOMEM, "%s: out of memory for the tensor list", path);
    memcpy(order, f->by_name, sizeof *order * (size_t)f->n);
    qsort(order, (size_t)f->n, sizeof *order, av__st_cmp_offset);
    for (i = 0; i < f->n && order[i]->begin == pos; i++) pos = order[i]->end;
    rc = AV_OK;
    if (i < f->n && order[i]->begin > pos)
        rc = av__set_error(AV_ERR_FORMAT, "%s: gap in the data section: bytes %lld..%lld belong to no tensor",
                           path, (long long)pos, (long long)order[i]->begin);
    else if (i < f->n) /* begin < pos, and i > 0 since pos starts at 0 */
        rc = av__set_error(AV_ERR_FORMAT, "%s: tensor '%.60s' overlaps tensor '%.60s'",
                           path, order[i]->name, order[i - 1]->name);
    else if (pos != data_len)
        rc = av__set_error(AV_ERR_FORMAT, "%s: data section has %lld bytes, tensors cover only %lld",
                           path, (long long)data_len, (long long)pos);
    AV_FREE(order);
    return rc;
}

/* Reads a safetensors file from fp: the length, the header, and only when
   the header describes the file's size exactly, the data. */
static int av__st_read_file(FILE *fp, const char *path, av_st_file **out) {
    unsigned char len8[8];
    size_t got = fread(len8, 1, 8, fp);
    uint64_t hlen;
    int64_t size, data_len;
    av__json j;
    av_st_file *f;
    int rc;
    if (got != 8) {
        if (ferror(fp)) return av__set_error(AV_ERR_IO, "%s: read error (%s)", path, strerror(errno));
        return av__set_error(AV_ERR_FORMAT, "%s: file too short (%lu bytes) to hold the header length",
                             path, (unsigned long)got);
    }
    hlen = av__le(len8, 8);
    if (hlen > AV__ST_MAX_HEADER)
        return av__set_error(AV_ERR_FORMAT, "%s: header length %llu is over the 100 MB limit",
                             path, (unsigned long long)hlen);
    if ((size = av__file_size(fp)) < 8) /* we read 8 bytes, so that size is made up */
        return av__set_error(AV_ERR_IO, "%s: cannot tell the file's size (not a regular file?)", path);
    if (hlen > (uint64_t)(size - 8))
        return av__set_error(AV_ERR_FORMAT, "%s: header length %llu is past the end of the file (%lld bytes)",
                             path, (unsigned long long)hlen, (long long)size);
    data_len = size - 8 - (int64_t)hlen;
    if (!(f = (av_st_file *)AV_MALLOC(sizeof *f))) return av__set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    memset(f, 0, sizeof *f);
    if ((rc = av__read_fresh(fp, (size_t)hlen, &f->header, path, "the header"))) {
        av_st_close(f);
        return rc;
    }
    if (av__json_parse(&j, (char *)f->header, (size_t)hlen) < 0)
        rc = av__set_error(j.nomem ? AV_ERR_NOMEM : AV_ERR_FORMAT, "%s: bad JSON header at byte %ld: %s",
                           path, (long)(j.p - j.start), j.err);
    else
        rc = av__st_layout(f, &j, path, data_len);
    AV_FREE(j.tok);
    if (!rc && (uint64_t)data_len > SIZE_MAX)
        rc = av__set_error(AV_ERR_NOMEM, "%s: the data section (%lld bytes) does not fit in memory",
                           path, (long long)data_len);
    if (!rc) rc = av__read_fresh(fp, (size_t)data_len, &f->data, path, "the data section");
    if (rc) av_st_close(f);
    else *out = f;
    return rc;
}

AVDEF int av_st_open(const char *path, av_st_file **out) {
    FILE *fp;
    int rc;
    if (!out) return av__set_error(AV_ERR_ARG, "av_st_open: out is NULL");
    *out = NULL;
    if (!path) return av__set_error(AV_ERR_ARG, "av_st_open: path is NULL");
    if (!(fp = fopen(path, "rb"))) return av__set_error(AV_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    rc = av__st_read_file(fp, path, out);
    fclose(fp);
    return rc;
}

AVDEF void av_st_close(av_st_file *f) {
    if (!f) return;
    AV_FREE(f->header);
    AV_FREE(f->data);
    AV_FREE(f->t);
    AV_FREE(f->by_name);
    AV_FREE(f->meta);
    AV_FREE(f);
}

static const av__st_tensor *av__st_get(const av_st_file *f, int i) {
    return f && i >= 0 && i < f->n ? &f->t[i] : NULL;
}
AVDEF int av_st_count(const av_st_file *f) { return f ? f->n : 0; }
AVDEF const char *av_st_name(const av_st_file *f, int i) {
    const av__st_tensor *t = av__st_get(f, i);
    return t ? t->name : NULL;
}
AVDEF int av_st_ndim(const av_st_file *f, int i) {
    const av__st_tensor *t = av__st_get(f, i);
    return t ? t->ndim : -1;
}
AVDEF const int *av_st_shape(const av_st_file *f, int i) {
    const av__st_tensor *t = av__st_get(f, i);
    return t ? t->shape : NULL;
}
AVDEF int64_t av_st_numel(const av_st_file *f, int i) {
    const av__st_tensor *t = av__st_get(f, i);
    return t ? t->numel : -1;
}
AVDEF int av_st_dtype(const av_st_file *f, int i) {
    const av__st_tensor *t = av__st_get(f, i);
    return t ? t->dtype : -1;
}
AVDEF int av_st_find(const av_st_file *f, const char *name) {
    av__st_tensor **hit;
    if (!f || !name || !f->n) return -1;
    hit = (av__st_tensor **)bsearch(name, f->by_name, (size_t)f->n, sizeof *f->by_name, av__st_cmp_key);
    return hit ? (int)(*hit - f->t) : -1;
}
AVDEF int av_st_read(const av_st_file *f, int i, float *dst, int64_t n) {
    const av__st_tensor *t = av__st_get(f, i);
    int64_t k;
    int size;
    if (!t || (!dst && n > 0)) return av__set_error(AV_ERR_ARG, "av_st_read: bad tensor index %d or NULL dst",
                                                    i);
    if (n != t->numel)
        return av__set_error(AV_ERR_MISMATCH, "tensor '%.60s' has %lld elements, caller expects %lld",
                             t->name, (long long)t->numel, (long long)n);
    size = av__dtype_size[t->dtype];
    for (k = 0; k < n; k++) dst[k] = av__st_load(f->data + t->begin + size * k, t->dtype);
    return AV_OK;
}
AVDEF const char *av_st_meta(const av_st_file *f, const char *key) {
    av__st_pair want, *hit;
    if (!f || !key || !f->n_meta) return NULL;
    want.key = key;
    want.value = NULL;
    hit = (av__st_pair *)bsearch(&want, f->meta, (size_t)f->n_meta, sizeof *f->meta, av__st_cmp_pair);
    return hit ? hit->value : NULL;
}

/* ---- safetensors writing --------------------------------------------- */
typedef struct av__st_buf { char *p; size_t n, cap; int oom; } av__st_buf;

static void av__st_put(av__st_buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;
        while (cap < b->n + n + 1) cap *= 2;
        if (!(p = (char *)AV_REALLOC(b->p, cap))) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void av__st_puts(av__st_buf *b, const char *s) { av__st_put(b, s, strlen(s)); }
static void av__st_put_int(av__st_buf *b, long long v) {
    char t[32];
    sprintf(t, "%lld", v);
    av__st_puts(b, t);
}
/* JSON string; the bytes must already be valid UTF-8 */
static void av__st_put_str(av__st_buf *b, const char *s) {
    char t[8];
    av__st_puts(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { t[0] = '\\'; t[1] = (char)c; av__st_put(b, t, 2); }
        else if (c < 0x20) { sprintf(t, "\\u%04x", c); av__st_puts(b, t); }
        else av__st_put(b, s, 1);
    }
    av__st_puts(b, "\"");
}
static int av__st_utf8_ok(const char *s) {
    const char *end = s + strlen(s);
    int k;
    for (; s < end; s += k)
        if (!(k = (unsigned char)*s < 0x80 ? 1 : av__json_utf8(s, end))) return 0;
    return 1;
}

/* Checks the caller's arguments; computes each item's numel. */
static int av__st_check_items(const av_st_item *items, int n_items, int64_t *numel,
                              const char *const *keys, const char *const *vals, int n_meta) {
    int i, d;
    int64_t total = 0;
    const char **names, *dup;
    if (n_items < 0 || n_meta < 0 || (n_items && !items) || (n_meta && (!keys || !vals)))
        return av__set_error(AV_ERR_ARG, "av_st_save: bad item or metadata arrays");
    for (i = 0; i < n_meta; i++)
        if (!keys[i] || !vals[i] || !av__st_utf8_ok(keys[i]) || !av__st_utf8_ok(vals[i]))
            return av__set_error(AV_ERR_ARG, "av_st_save: metadata %d is NULL or not UTF-8", i);
    for (i = 0; i < n_items; i++) {
        const av_st_item *it = &items[i];
        if (!it->name || !av__st_utf8_ok(it->name) || strcmp(it->name, "__metadata__") == 0)
            return av__set_error(AV_ERR_ARG, "av_st_save: item %d has a NULL, non-UTF-8 or reserved name", i);
        if (it->ndim < 0 || it->ndim > AV_ST_MAX_DIMS || (it->ndim && !it->shape))
            return av__set_error(AV_ERR_ARG, "av_st_save: '%s': bad ndim %d or NULL shape",
                                 it->name, it->ndim);
        if ((unsigned)it->dtype > AV_DTYPE_F64)
            return av__set_error(AV_ERR_ARG, "av_st_save: '%s': unknown dtype %d", it->name, it->dtype);
        for (d = 0; d < it->ndim; d++)
            if (it->shape[d] < 0)
                return av__set_error(AV_ERR_ARG, "av_st_save: '%s': negative dim", it->name);
        if ((numel[i] = av__st_numel(it->ndim, it->shape)) < 0)
            return av__set_error(AV_ERR_ARG, "av_st_save: '%s': more than %d elements: too large for attnvae",
                                 it->name, INT_MAX);
        if (numel[i] && !it->data)
            return av__set_error(AV_ERR_ARG, "av_st_save: '%s': NULL data", it->name);
        total += numel[i] * av__dtype_size[it->dtype];
        if (total > INT64_MAX / 2)
            return av__set_error(AV_ERR_ARG, "av_st_save: total data size overflows");
    }
    /* names and keys must be unique: sorted copies show duplicates */
    names = (const char **)AV_MALLOC(sizeof *names * (size_t)(n_items > n_meta ? n_items + 1 : n_meta + 1));
    if (!names) return av__set_error(AV_ERR_NOMEM, "av_st_save: out of memory");
    for (i = 0; i < n_items; i++) names[i] = items[i].name;
    if ((dup = av__duplicate(names, n_items)) != NULL)
        av__set_error(AV_ERR_ARG, "av_st_save: duplicate name '%s'", dup);
    else if (n_meta) {
        memcpy(names, keys, sizeof *names * (size_t)n_meta);
        if ((dup = av__duplicate(names, n_meta)) != NULL)
            av__set_error(AV_ERR_ARG, "av_st_save: duplicate metadata key '%s'", dup);
    }
    AV_FREE(names);
    return dup ? AV_ERR_ARG : AV_OK;
}

/* Writes the length, the header and the data to w; returns 0 on success. */
static int av__st_write(av__wfile w, const av__st_buf *h, const av_st_item *items, int n_items,
                        const int64_t *numel) {
    unsigned char chunk[16384];
    int i, size;
    int64_t k, c, e;
    av__put_le(chunk, h->n, 8);
    if (av__os_write(w, chunk, 8) || av__os_write(w, h->p, h->n)) return -1;
    for (i = 0; i < n_items; i++) {
        size = av__dtype_size[items[i].dtype];
        for (k = 0; k < numel[i]; k += c) {
            c = numel[i] - k < (int64_t)sizeof chunk / size ? numel[i] - k : (int64_t)sizeof chunk / size;
            for (e = 0; e < c; e++) av__st_store(chunk + size * e, items[i].dtype, items[i].data[k + e]);
            if (av__os_write(w, chunk, (size_t)(size * c))) return -1;
        }
    }
    return 0;
}

/* The JSON header: metadata first, then tensors in item order, contiguous,
   padded with spaces so that the data section is 8-byte aligned. */
static void av__st_header(av__st_buf *h, const av_st_item *items, int n_items, const int64_t *numel,
                          const char *const *keys, const char *const *vals, int n_meta) {
    int i, d;
    int64_t off = 0;
    av__st_puts(h, "{");
    if (n_meta) {
        av__st_puts(h, "\"__metadata__\":{");
        for (i = 0; i < n_meta; i++) {
            if (i) av__st_puts(h, ",");
            av__st_put_str(h, keys[i]);
            av__st_puts(h, ":");
            av__st_put_str(h, vals[i]);
        }
        av__st_puts(h, n_items ? "}," : "}");
    }
    for (i = 0; i < n_items; i++) {
        if (i) av__st_puts(h, ",");
        av__st_put_str(h, items[i].name);
        av__st_puts(h, ":{\"dtype\":\"");
        av__st_puts(h, av__dtype_name[items[i].dtype]);
        av__st_puts(h, "\",\"shape\":[");
        for (d = 0; d < items[i].ndim; d++) {
            if (d) av__st_puts(h, ",");
            av__st_put_int(h, items[i].shape[d]);
        }
        av__st_puts(h, "],\"data_offsets\":[");
        av__st_put_int(h, off);
        av__st_puts(h, ",");
        off += numel[i] * av__dtype_size[items[i].dtype];
        av__st_put_int(h, off);
        av__st_puts(h, "]}");
    }
    av__st_puts(h, "}");
    av__st_put(h, "       ", (8 - h->n % 8) % 8); /* once: out of memory, n stops growing */
}

static AV__THREAD_LOCAL unsigned long av__tmp_serial; /* tmp names of this thread */

AVDEF int av_st_save(const char *path, const av_st_item *items, int n_items,
                     const char *const *meta_keys, const char *const *meta_values, int n_meta) {
    av__st_buf h;
    int64_t *numel;
    char *tmp = NULL, *dir = NULL;
    const char *slash;
    av__wfile w;
    int rc, tries;
    if (!path) return av__set_error(AV_ERR_ARG, "av_st_save: path is NULL");
    numel = (int64_t *)AV_MALLOC(sizeof *numel * (size_t)(n_items > 0 ? n_items : 1));
    if (!numel) return av__set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    if ((rc = av__st_check_items(items, n_items, numel, meta_keys, meta_values, n_meta))) {
        AV_FREE(numel);
        return rc;
    }
    memset(&h, 0, sizeof h);
    av__st_header(&h, items, n_items, numel, meta_keys, meta_values, n_meta);
    if (!h.oom) {
        tmp = (char *)AV_MALLOC(strlen(path) + 48);
        dir = (char *)AV_MALLOC(strlen(path) + 2);
    }
    if (!tmp || !dir) rc = av__set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    else {
        /* the directory whose entry the rename changes */
        slash = strrchr(path, '/');
        if (!slash) strcpy(dir, ".");
        else {
            memcpy(dir, path, (size_t)(slash - path) + (slash == path));
            dir[(slash - path) + (slash == path)] = 0;
        }
        for (tries = 0;; tries++) { /* a name no file has: another writer's stays its own */
            sprintf(tmp, "%s.tmp.%ld.%lu", path, av__os_pid(), ++av__tmp_serial);
            if (av__os_create(tmp, &w) == 0) break;
            if (errno != EEXIST || tries == 100) {
                rc = av__set_error(AV_ERR_IO, "%s: cannot create (%s)", tmp, strerror(errno));
                break;
            }
        }
        if (!rc) {
            if (av__st_write(w, &h, items, n_items, numel))
                rc = av__set_error(AV_ERR_IO, "%s: write failed (%s)", tmp, strerror(errno));
            if (av__os_close(w, !rc) && !rc)
                rc = av__set_error(AV_ERR_IO, "%s: flush to disk failed (%s)", tmp, strerror(errno));
            if (!rc && av__os_replace(tmp, path, dir) != 0)
                rc = av__set_error(AV_ERR_IO, "%s: cannot rename %s over it (%s)",
                                   path, tmp, strerror(errno));
            if (rc) remove(tmp); /* only a file we created ourselves */
        }
    }
    AV_FREE(dir);
    AV_FREE(tmp);
    AV_FREE(h.p);
    AV_FREE(numel);
    return rc;
}

/* ---- IDX ------------------------------------------------------------- */
static int av__idx_size(int type) {
    switch (type) {
    case 0x08: case 0x09: return 1;
    case 0x0B: return 2;
    case 0x0C: case 0x0D: return 4;
    case 0x0E: return 8;
    default: return 0;
    }
}
static uint64_t av__be(const unsigned char *p, int bytes) {
    uint64_t v = 0;
    int i;
    for (i = 0; i < bytes; i++) v = v << 8 | p[i];
    return v;
}
static float av__idx_value(const unsigned char *p, int type) {
    uint64_t w;
    double d;
    switch (type) {
    case 0x08: return (float)p[0];
    /* signed: flip the sign bit, then subtract its weight */
    case 0x09: return (float)(int)(p[0] ^ 0x80) - 128;
    case 0x0B: return (float)((long)(av__be(p, 2) ^ 0x8000) - 0x8000);
    case 0x0C: return (float)((double)(av__be(p, 4) ^ 0x80000000u) - 2147483648.0);
    case 0x0D: return av__f32_bits((uint32_t)av__be(p, 4));
    default: /* 0x0E */
        w = av__be(p, 8);
        memcpy(&d, &w, 8);
        return av__f64_to_f32(d);
    }
}
/* A short read: an I/O error or a truncated file. */
static int av__idx_short(FILE *fp, const char *path, const char *what) {
    if (ferror(fp)) return av__set_error(AV_ERR_IO, "%s: read error in %s", path, what);
    return av__set_error(AV_ERR_FORMAT, "%s: truncated file (in %s)", path, what);
}

/* Reads the header, checks the file's size against it, then reads the data. */
static int av__idx_read(FILE *fp, const char *path, av_idx *x) {
    unsigned char hd[16], chunk[8192];
    int type, size, i;
    int64_t k, c, per, file_size, data_len, header;
    if (fread(hd, 1, 4, fp) != 4) return av__idx_short(fp, path, "the magic number");
    if (hd[0] || hd[1])
        return av__set_error(AV_ERR_FORMAT,
                             "%s: bad IDX magic %02x %02x %02x %02x (first two bytes must be 0)",
                             path, hd[0], hd[1], hd[2], hd[3]);
    type = hd[2];
    if (!(size = av__idx_size(type)))
        return av__set_error(AV_ERR_FORMAT, "%s: unknown IDX type code 0x%02x", path, type);
    x->ndim = hd[3];
    if (x->ndim < 1 || x->ndim > 4)
        return av__set_error(AV_ERR_FORMAT, "%s: IDX has %d dims (1..4 supported)", path, x->ndim);
    if (fread(hd, 4, (size_t)x->ndim, fp) != (size_t)x->ndim) return av__idx_short(fp, path, "the dims");
    x->count = 1;
    for (i = 0; i < x->ndim; i++) {
        uint32_t d = (uint32_t)av__be(hd + 4 * i, 4);
        if (d == 0 || d > INT_MAX)
            return av__set_error(AV_ERR_FORMAT, "%s: IDX dim %d is %lu (must be 1..%d)",
                                 path, i, (unsigned long)d, INT_MAX);
        if (x->count > INT64_MAX / 8 / (int64_t)d)
            return av__set_error(AV_ERR_FORMAT, "%s: IDX dims are too large", path);
        x->dims[i] = (int)d;
        x->count *= d;
    }
    header = 4 + 4 * x->ndim;
    data_len = x->count * size;
    if ((file_size = av__file_size(fp)) < header)
        return av__set_error(AV_ERR_IO, "%s: cannot tell the file's size (not a regular file?)", path);
    if (file_size - header < data_len)
        return av__set_error(AV_ERR_FORMAT, "%s: truncated file (%lld bytes of data, the dims need %lld)",
                             path, (long long)(file_size - header), (long long)data_len);
    if (file_size - header > data_len)
        return av__set_error(AV_ERR_FORMAT, "%s: trailing bytes after %lld values (%lld bytes of data, "
                             "the dims need %lld)", path, (long long)x->count,
                             (long long)(file_size - header), (long long)data_len);
    if ((uint64_t)x->count > SIZE_MAX / sizeof(float) ||
        !(x->data = (float *)AV_MALLOC((size_t)x->count * sizeof(float))))
        return av__set_error(AV_ERR_NOMEM, "%s: out of memory for %lld values", path, (long long)x->count);
    per = (int64_t)sizeof chunk / size;
    for (k = 0; k < x->count; k += c) {
        c = x->count - k < per ? x->count - k : per;
        if (fread(chunk, (size_t)size, (size_t)c, fp) != (size_t)c)
            return av__idx_short(fp, path, "the data"); /* it shrank since we looked */
        for (i = 0; i < c; i++) x->data[k + i] = av__idx_value(chunk + i * size, type);
    }
    return AV_OK;
}

AVDEF int av_idx_load(const char *path, av_idx *out) {
    FILE *fp;
    int rc;
    if (!out || !path) return av__set_error(AV_ERR_ARG, "av_idx_load: NULL argument");
    memset(out, 0, sizeof *out);
    if (!(fp = fopen(path, "rb"))) return av__set_error(AV_ERR_IO, "%s: cannot open (%s)",
                                                        path, strerror(errno));
    rc = av__idx_read(fp, path, out);
    fclose(fp);
    if (rc) av_idx_free(out);
    return rc;
}

AVDEF void av_idx_free(av_idx *x) {
    if (!x) return;
    AV_FREE(x->data);
    memset(x, 0, sizeof *x);
}

/* ---- model files ---- */
/* Parameters and buffers are stored under their names; a checkpoint adds
   each parameter's optimizer state under av__state_prefix + its name, and
   the step as metadata. */

/* A model that lost a tensor to out of memory is neither saved nor loaded. */
static int av__model_usable(const av_model *m, const char *who, const char *path) {
    if (!path) return av__set_error(AV_ERR_ARG, "%s: the path is NULL", who);
    if (!m->error) return AV_OK;
    return av__set_error(m->error, "%s: %s: refused: the model is incomplete (%s)", who, path, m->error_msg);
}

static int av__model_write(const av_model *m, const char *path, int with_state) {
    const char *who = with_state ? "av_checkpoint_save" : "av_model_save";
    const char *keys[3] = {"format", "version", "step"}, *values[3];
    int n_all = av__n_entries(m), n = 0, k, s, rc;
    size_t names_len = 1, used = 0;
    char step[32], *names;
    av_st_item *items;
    if ((rc = av__model_usable(m, who, path))) return rc;
    for (k = 0; with_state && k < m->params.n; k++) names_len += 2 * (AV__STATE_PREFIX_LEN + strlen(m->params.e[k].t->name) + 1);
    items = (av_st_item *)AV_MALLOC(((size_t)n_all + 2 * (size_t)m->params.n + 1) * sizeof *items);
    names = (char *)AV_MALLOC(names_len); /* every state name, one after the other */
    if (!items || !names) {
        AV_FREE(items);
        AV_FREE(names);
        return av__set_error(AV_ERR_NOMEM, "%s: %s: out of memory", who, path);
    }
    for (k = 0; k < n_all; k++) {
        const av__entry *e = av__entry_at(m, k);
        const av_tensor *t = e->t;
        for (s = 0; s < 3; s++) {
            const float *data = s == 0 ? t->data : with_state ? e->state[s - 1] : NULL;
            size_t len = strlen(t->name) + 1;
            if (!data) continue;
            items[n].name = t->name;
            if (s > 0) {
                memcpy(names + used, av__state_prefix[s - 1], AV__STATE_PREFIX_LEN);
                memcpy(names + used + AV__STATE_PREFIX_LEN, t->name, len);
                items[n].name = names + used;
                used += AV__STATE_PREFIX_LEN + len;
            }
            items[n].ndim = t->ndim;
            items[n].shape = t->shape;
            items[n].data = data;
            items[n].dtype = AV_DTYPE_F32;
            n++;
        }
    }
    snprintf(step, sizeof step, "%ld", m->step);
    values[0] = with_state ? "attnvae-checkpoint" : "attnvae-model";
    values[1] = ATTNVAE_VERSION;
    values[2] = step;
    rc = av_st_save(path, items, n, keys, values, with_state ? 3 : 2);
    AV_FREE(names);
    AV_FREE(items);
    return rc;
}

AVDEF int av_model_save(const av_model *m, const char *path) { return av__model_write(m, path, 0); }
AVDEF int av_checkpoint_save(const av_model *m, const char *path) { return av__model_write(m, path, 1); }

/* A checkpoint's "step": decimal digits only (no sign, no spaces), at most
   AV_MAX_STEP, so that step + 1 never overflows; -1 otherwise. */
static long av__parse_step(const char *s) {
    long v = 0;
    if (!s || !*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (AV_MAX_STEP - (*s - '0')) / 10) return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

/* AV_OK if file tensor i has t's shape, else a message with both shapes. */
static int av__check_file_shape(const av_st_file *f, int i, const av_tensor *t, const char *path) {
    const int *dims = av_st_shape(f, i);
    int nd = av_st_ndim(f, i), d, len;
    char fs[24 * AV_ST_MAX_DIMS + 4], ms[64];
    for (d = 0; nd == t->ndim && d < nd && dims[d] == t->shape[d]; d++) {}
    if (nd == t->ndim && d == nd) return AV_OK;
    len = snprintf(fs, sizeof fs, "[");
    for (d = 0; d < nd; d++) len += snprintf(fs + len, sizeof fs - (size_t)len, d ? ",%lld" : "%lld", (long long)dims[d]);
    snprintf(fs + len, sizeof fs - (size_t)len, "]");
    return av__set_error(AV_ERR_MISMATCH, "%s: tensor '%s' has shape %s in the file but %s in the model", path,
                         av_st_name(f, i), fs, av__shape_str(t, ms, sizeof ms));
}

/* The error for the first file tensor the model has no place for. */
static int av__unexpected_tensor(const av_model *m, const av_st_file *f, const char *path, int with_state) {
    int i, s;
    for (i = 0; i < av_st_count(f); i++) {
        const char *name = av_st_name(f, i);
        int known = av__find(m, name) >= 0;
        for (s = 0; with_state && !known && s < 2; s++) {
            int k = strncmp(name, av__state_prefix[s], AV__STATE_PREFIX_LEN) == 0 ? av__find(m, name + AV__STATE_PREFIX_LEN) : -1;
            known = k >= 0 && k < m->params.n; /* state of a parameter */
        }
        if (!known) return av__set_error(AV_ERR_MISMATCH, "%s: unexpected tensor '%s' (not in the model)", path, name);
    }
    return AV_OK;
}

/* Checks the whole file against the model (names, shapes, the step) and
   makes the state buffers it fills before changing anything; then copies
   into the tensors' own buffers, which cannot fail. */
static int av__model_read(av_model *m, const char *path, int with_state) {
    const char *who = with_state ? "av_checkpoint_load" : "av_model_load";
    av_st_file *f = NULL;
    int n_all = av__n_entries(m), found = 0, k, s, i, rc;
    int *where = NULL;  /* per entry: file index of its value, m and v, or -1 */
    char *name = NULL;  /* room for a prefixed name */
    size_t longest = 0;
    long step = 0;
    if ((rc = av__model_usable(m, who, path)) || (rc = av_st_open(path, &f))) return rc;
    for (k = 0; k < n_all; k++)
        if (strlen(av__entry_at(m, k)->t->name) > longest) longest = strlen(av__entry_at(m, k)->t->name);
    where = (int *)AV_MALLOC((3 * (size_t)n_all + 1) * sizeof(int));
    name = (char *)AV_MALLOC(AV__STATE_PREFIX_LEN + longest + 1);
    if (!where || !name) rc = av__set_error(AV_ERR_NOMEM, "%s: %s: out of memory", who, path);
    for (k = 0; !rc && k < n_all; k++) {
        const av_tensor *t = av__entry_at(m, k)->t;
        for (s = 0; !rc && s < 3; s++) {
            where[3 * k + s] = -1;
            if (s > 0 && (!with_state || k >= m->params.n)) continue;
            if (s == 0) strcpy(name, t->name);
            else {
                memcpy(name, av__state_prefix[s - 1], AV__STATE_PREFIX_LEN);
                strcpy(name + AV__STATE_PREFIX_LEN, t->name);
            }
            if ((i = av_st_find(f, name)) < 0) {
                if (s == 0) rc = av__set_error(AV_ERR_MISMATCH, "%s: missing tensor '%s'", path, name);
                continue;
            }
            if (!(rc = av__check_file_shape(f, i, t, path))) {
                where[3 * k + s] = i;
                found++;
            }
        }
    }
    if (!rc && found < av_st_count(f)) rc = av__unexpected_tensor(m, f, path, with_state);
    if (!rc && with_state && (step = av__parse_step(av_st_meta(f, "step"))) < 0)
        rc = av__set_error(AV_ERR_FORMAT, "%s: checkpoint has no valid \"step\" in its metadata (decimal digits, at most %ld)",
                           path, AV_MAX_STEP);
    for (k = 0; !rc && k < m->params.n; k++)
        for (s = 1; !rc && s < 3; s++)
            if (where[3 * k + s] >= 0 && !av__state(&m->params.e[k], s - 1))
                rc = av__set_error(AV_ERR_NOMEM, "%s: %s: out of memory for optimizer state", who, path);
    for (k = 0; !rc && k < n_all; k++) {
        av__entry *e = av__entry_at(m, k);
        for (s = 0; s < 3; s++) {
            float *dst = s == 0 ? e->t->data : e->state[s - 1];
            if (where[3 * k + s] >= 0) av_st_read(f, where[3 * k + s], dst, e->t->size);
            else if (with_state && s > 0 && dst) memset(dst, 0, (size_t)e->t->size * sizeof(float)); /* not in the file */
        }
    }
    if (!rc && with_state) m->step = step;
    av_st_close(f);
    AV_FREE(where);
    AV_FREE(name);
    return rc;
}

AVDEF int av_model_load(av_model *m, const char *path) { return av__model_read(m, path, 0); }
AVDEF int av_checkpoint_load(av_model *m, const char *path) { return av__model_read(m, path, 1); }

/* ======================================================================= */
/* [10 mpi] data parallelism: the sharded sampler; av_mpi over MPI      */
/* ======================================================================= */
#include <limits.h>

/* ---- the sharded sampler ---- */
AVDEF void av_sampler_set_epoch(av_sampler *s, long epoch) {
    av_rng rng;
    int i;
    /* the seed and the epoch alone pick the order, so every rank draws the same */
    av_rng_seed(&rng, s->seed ^ ((uint64_t)epoch * 0xd1b54a32d192ed03ULL));
    s->epoch = epoch;
    for (i = 0; i < s->n; i++) s->perm[i] = i;
    for (i = s->n - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)(av_rng_u64(&rng) % (uint64_t)(i + 1)), t = s->perm[i];
        s->perm[i] = s->perm[j];
        s->perm[j] = t;
    }
}

AVDEF int av_sampler_init(av_sampler *s, int n, int batch, int rank, int size, uint64_t seed) {
    if (n < 0 || batch < 1 || size < 1 || rank < 0 || rank >= size || (long long)batch * size > INT_MAX)
        av__fail("av_sampler_init: n %d, batch %d, rank %d, size %d (need n >= 0, batch >= 1, 0 <= rank < size, "
                 "batch * size <= INT_MAX)", n, batch, rank, size);
    memset(s, 0, sizeof *s);
    if (!(s->perm = (int *)av__alloc_zeros((size_t)n, sizeof(int))))
        return av__set_error(AV_ERR_NOMEM, "av_sampler_init: out of memory for the order of %d examples", n);
    s->n = n;
    s->batch = batch;
    s->rank = rank;
    s->size = size;
    s->seed = seed;
    av_sampler_set_epoch(s, 0);
    return AV_OK;
}

AVDEF void av_sampler_free(av_sampler *s) {
    AV_FREE(s->perm);
    s->perm = NULL;
}

AVDEF int av_sampler_steps(const av_sampler *s) {
    long long global = (long long)s->batch * s->size;
    return (int)((s->n + global - 1) / global);
}

AVDEF av_shard av_sampler_shard(const av_sampler *s, int step) {
    av_shard sh;
    int global = s->batch * s->size, start;
    if (step < 0 || step >= av_sampler_steps(s))
        av__fail("av_sampler_shard: step %d is outside 0..%d", step, av_sampler_steps(s) - 1);
    start = step * global; /* < n */
    sh.total = s->n - start < global ? s->n - start : global;
    sh.offset = (int)((long long)s->rank * sh.total / s->size);
    sh.count = (int)((long long)(s->rank + 1) * sh.total / s->size) - sh.offset;
    sh.index = s->perm + start + sh.offset;
    return sh;
}

#ifdef ATTNVAE_MPI
/* ---- av_mpi ---- */
/* A parameter and a sort key: its address (to find it on the tape), or
   when it completes (to order the buckets). */
typedef struct av__mpi_key { uint64_t key; int param; } av__mpi_key;

struct av_mpi {
    MPI_Comm comm;
    int rank, size;
    av_model *model;
    size_t bucket_bytes;
    int n_params, planned;
    av__mpi_key *by_address;  /* the parameters sorted by address */
    av__mpi_key *keys;        /* scratch for the plan */
    int *first_use;           /* per parameter: the first tape node that reads it */
    int *order;               /* the parameters, bucket after bucket */
    int n_buckets, *first;    /* bucket b holds order[first[b] .. first[b + 1]) */
    size_t *offset;           /* and buf[offset[b] .. offset[b + 1]): its gradients, then its count */
    int *ready_at;            /* bucket b is complete once backward has run node ready_at[b] */
    MPI_Request *req;
    float *buf;
    unsigned char *has_state; /* av_mpi_broadcast: which optimizer state rank 0 has */
    int launched;             /* buckets sent in the current reduction */
    float count;              /* this rank's weight in it */
    int error;                /* its first failure */
};

/* AV_OK, or AV_ERR_IO with MPI's message (for a communicator that returns
   errors instead of aborting, MPI's default). */
static int av__mpi_rc(int rc, const char *who) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (rc == MPI_SUCCESS) return AV_OK;
    MPI_Error_string(rc, msg, &len);
    return av__set_error(AV_ERR_IO, "%s: MPI error: %s", who, msg);
}

AVDEF int av_mpi_check(MPI_Comm comm, int ok) {
    int rank = 0, size = 1, mine, lowest;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    mine = ok ? size : rank;
    if (MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS) return rank;
    return lowest == size ? -1 : lowest;
}

/* Each rank's code -> the lowest failing rank's code and message ("rank R:
   ...") on every rank, or AV_OK if none failed. */
static int av__mpi_agree(MPI_Comm comm, int rc) {
    int bad = av_mpi_check(comm, rc == AV_OK), rank = 0;
    char msg[sizeof av__errbuf + 32];
    if (bad < 0) return AV_OK;
    MPI_Comm_rank(comm, &rank);
    if (rank == bad) {
        snprintf(msg, sizeof msg, "rank %d: %s", rank, av__errbuf);
        memcpy(av__errbuf, msg, sizeof av__errbuf - 1);
    }
    if (MPI_Bcast(&rc, 1, MPI_INT, bad, comm) != MPI_SUCCESS ||
        MPI_Bcast(av__errbuf, (int)sizeof av__errbuf, MPI_CHAR, bad, comm) != MPI_SUCCESS)
        return av__set_error(AV_ERR_IO, "rank %d failed, and MPI could not say why", bad);
    av__errcode = rc;
    return rc;
}

static int av__mpi_key_cmp(const void *a, const void *b) {
    uint64_t x = ((const av__mpi_key *)a)->key, y = ((const av__mpi_key *)b)->key;
    return x < y ? -1 : x > y;
}

/* FNV-1a over the names and shapes of every tensor of the model */
static uint64_t av__mpi_fingerprint(const av_model *m) {
    uint64_t h = 0xcbf29ce484222325ULL;
    int k, d;
    const char *p;
    for (k = 0; k < av__n_entries(m); k++) {
        const av_tensor *t = av__entry_at(m, k)->t;
        int dims[AV_MAX_DIMS + 2];
        dims[0] = k < m->params.n; /* a parameter or a buffer */
        dims[1] = t->ndim;
        for (d = 0; d < t->ndim; d++) dims[d + 2] = t->shape[d];
        for (p = t->name;; p++) { /* with its terminating 0 */
            h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
            if (!*p) break;
        }
        for (d = 0; d < t->ndim + 2; d++) h = (h ^ (uint32_t)dims[d]) * 0x100000001b3ULL;
    }
    return h;
}

AVDEF void av_mpi_free(av_mpi *d) {
    if (!d) return;
    AV_FREE(d->by_address);
    AV_FREE(d->keys);
    AV_FREE(d->first_use);
    AV_FREE(d->order);
    AV_FREE(d->first);
    AV_FREE(d->offset);
    AV_FREE(d->ready_at);
    AV_FREE(d->req);
    AV_FREE(d->buf);
    AV_FREE(d->has_state);
    AV_FREE(d);
}

AVDEF av_mpi *av_mpi_new(av_model *m, MPI_Comm comm, size_t bucket_bytes) {
    av_mpi *d = (av_mpi *)av__alloc_zeros(1, sizeof(av_mpi));
    int P, k, rc = AV_OK;
    size_t values = 0;
    uint64_t mine[2], all[2];
    if (!m) av__fail("av_mpi_new: the model is NULL");
    P = m->params.n;
    for (k = 0; k < P; k++) values += (size_t)m->params.e[k].t->size + 1; /* and a count per bucket at most */
    if (d) {
        d->comm = comm;
        d->model = m;
        d->n_params = P;
        d->bucket_bytes = bucket_bytes ? bucket_bytes : AV_MPI_BUCKET_BYTES;
        MPI_Comm_rank(comm, &d->rank);
        MPI_Comm_size(comm, &d->size);
        d->by_address = (av__mpi_key *)av__alloc_zeros((size_t)P, sizeof(av__mpi_key));
        d->keys = (av__mpi_key *)av__alloc_zeros((size_t)P, sizeof(av__mpi_key));
        d->first_use = (int *)av__alloc_zeros((size_t)P, sizeof(int));
        d->order = (int *)av__alloc_zeros((size_t)P, sizeof(int));
        d->first = (int *)av__alloc_zeros((size_t)P + 1, sizeof(int));
        d->offset = (size_t *)av__alloc_zeros((size_t)P + 1, sizeof(size_t));
        d->ready_at = (int *)av__alloc_zeros((size_t)P, sizeof(int));
        d->req = (MPI_Request *)av__alloc_zeros((size_t)P, sizeof(MPI_Request));
        d->buf = (float *)av__alloc_zeros(values, sizeof(float));
        d->has_state = (unsigned char *)av__alloc_zeros(2 * (size_t)P, 1);
    }
    if (!d || !d->by_address || !d->keys || !d->first_use || !d->order || !d->first || !d->offset || !d->ready_at ||
        !d->req || !d->buf || !d->has_state)
        rc = av__set_error(AV_ERR_NOMEM, "av_mpi_new: out of memory for %lu gradient values", (unsigned long)values);
    for (k = 0; !rc && k < P; k++) {
        d->by_address[k].key = (uint64_t)(uintptr_t)m->params.e[k].t;
        d->by_address[k].param = k;
    }
    if (!rc) qsort(d->by_address, (size_t)P, sizeof(av__mpi_key), av__mpi_key_cmp);
    /* equal fingerprints on all ranks: max(h) == min(h) == ~max(~h) */
    mine[0] = av__mpi_fingerprint(m);
    mine[1] = ~mine[0];
    if (MPI_Allreduce(mine, all, 2, MPI_UINT64_T, MPI_MAX, comm) != MPI_SUCCESS)
        rc = av__set_error(AV_ERR_IO, "av_mpi_new: MPI_Allreduce failed");
    else if (!rc && all[0] != ~all[1])
        rc = av__set_error(AV_ERR_MISMATCH, "av_mpi_new: the ranks' models differ (names or shapes of their tensors)");
    if (av__mpi_agree(comm, rc)) {
        av_mpi_free(d);
        return NULL;
    }
    return d;
}

AVDEF int av_mpi_rank(const av_mpi *d) { return d->rank; }
AVDEF int av_mpi_size(const av_mpi *d) { return d->size; }

/* Makes the buckets from d->order as rank 0 has it, so they are the same on
   every rank: parameters in that order, a bucket closing when the next one
   would take it past bucket_bytes. */
static int av__mpi_plan(av_mpi *d) {
    size_t at = 0, bytes = 0;
    int i, b, rc = av__mpi_rc(MPI_Bcast(d->order, d->n_params, MPI_INT, 0, d->comm), "av_mpi (the bucket plan)");
    if (rc) return rc;
    d->n_buckets = 0;
    for (i = 0; i < d->n_params; i++) {
        size_t size = (size_t)d->model->params.e[d->order[i]].t->size;
        if (i == 0 || (bytes > 0 && bytes + size * sizeof(float) > d->bucket_bytes)) {
            if (i > 0) at++; /* the count of the bucket before */
            d->first[d->n_buckets] = i;
            d->offset[d->n_buckets++] = at;
            bytes = 0;
        }
        at += size;
        bytes += size * sizeof(float);
    }
    d->first[d->n_buckets] = d->n_params;
    d->offset[d->n_buckets] = d->n_buckets ? at + 1 : 0;
    for (b = 0; b < d->n_buckets; b++)
        if (d->offset[b + 1] - d->offset[b] > INT_MAX)
            return av__set_error(AV_ERR_ARG, "av_mpi: a bucket of %lu values is more than MPI counts (make bucket_bytes smaller)",
                                 (unsigned long)(d->offset[b + 1] - d->offset[b]));
    d->planned = 1;
    return AV_OK;
}

/* Starts a reduction with this rank's weight count. */
static void av__mpi_start(av_mpi *d, int count, const char *who) {
    int b;
    if (count < 0) av__fail("%s: count %d (the examples this rank's loss averages over) is negative", who, count);
    if (d->model->params.n != d->n_params)
        av__fail("%s: the model has %d parameters, %d at av_mpi_new", who, d->model->params.n, d->n_params);
    d->count = (float)count;
    d->launched = 0;
    d->error = AV_OK;
    for (b = 0; b < d->n_params; b++) d->req[b] = MPI_REQUEST_NULL;
}

/* dst = src * scale */
static void av__mpi_scale(float *dst, const float *src, int n, float scale) {
    int j;
    AV__PAR(n)
    for (j = 0; j < n; j++) dst[j] = src[j] * scale;
}

/* dst = src / total, or 0 when no rank had examples */
static void av__mpi_average(float *dst, const float *src, int n, float total) {
    int j;
    if (!(total > 0)) {
        memset(dst, 0, (size_t)n * sizeof(float));
        return;
    }
    AV__PAR(n)
    for (j = 0; j < n; j++) dst[j] = src[j] / total;
}

/* Sends bucket b: its gradients times this rank's count, then the count. */
static void av__mpi_launch(av_mpi *d, int b) {
    float *dst = d->buf + d->offset[b];
    int i;
    for (i = d->first[b]; i < d->first[b + 1]; i++) {
        const av_tensor *t = d->model->params.e[d->order[i]].t;
        av__mpi_scale(dst, t->grad, t->size, d->count);
        dst += t->size;
    }
    *dst = d->count;
    if (!d->error)
        d->error = av__mpi_rc(MPI_Iallreduce(MPI_IN_PLACE, d->buf + d->offset[b], (int)(d->offset[b + 1] - d->offset[b]),
                                             MPI_FLOAT, MPI_SUM, d->comm, &d->req[b]), "av_mpi (a gradient bucket)");
}

/* Waits for every bucket; gradient = sum of count * gradient / sum of counts. */
static int av__mpi_finish(av_mpi *d) {
    int b, i;
    if (!d->error) d->error = av__mpi_rc(MPI_Waitall(d->n_buckets, d->req, MPI_STATUSES_IGNORE), "av_mpi (the gradients)");
    for (b = 0; !d->error && b < d->n_buckets; b++) {
        const float *src = d->buf + d->offset[b];
        float total = d->buf[d->offset[b + 1] - 1];
        for (i = d->first[b]; i < d->first[b + 1]; i++) {
            av_tensor *t = d->model->params.e[d->order[i]].t;
            av__mpi_average(t->grad, src, t->size, total);
            src += t->size;
        }
    }
    return d->error;
}

AVDEF int av_mpi_allreduce_grads(av_mpi *d, int count) {
    int b, p, rc;
    av__mpi_start(d, count, "av_mpi_allreduce_grads");
    if (!d->planned) {
        for (p = 0; p < d->n_params; p++) d->order[p] = d->n_params - 1 - p; /* reverse creation order */
        if ((rc = av__mpi_plan(d))) return rc;
    }
    for (b = 0; b < d->n_buckets; b++) av__mpi_launch(d, b);
    return av__mpi_finish(d);
}

/* Called by backward after tape node i: sends, in bucket order, the
   buckets that are complete, and lets MPI move the ones in flight. */
static void av__mpi_after_node(void *user, int i) {
    av_mpi *d = (av_mpi *)user;
    int done;
    while (d->launched < d->n_buckets && d->ready_at[d->launched] >= i) av__mpi_launch(d, d->launched++);
    if (d->launched && !d->error)
        d->error = av__mpi_rc(MPI_Testall(d->launched, d->req, &done, MPI_STATUSES_IGNORE), "av_mpi (the gradients)");
}

AVDEF int av_mpi_backward(av_mpi *d, av_ctx *c, av_tensor *loss, int count) {
    int i, k, p, b, rc;
    av__mpi_start(d, count, "av_mpi_backward");
    /* first_use[p]: the earliest node that reads p; backward completes p's
       gradient when it has run that node (n_tape: p is not on the tape) */
    for (p = 0; p < d->n_params; p++) d->first_use[p] = c->n_tape;
    for (i = c->n_tape - 1; i >= 0; i--)
        for (k = 0; k < c->tape[i]->n_in; k++) {
            av__mpi_key key, *hit;
            key.key = (uint64_t)(uintptr_t)c->tape[i]->in[k];
            key.param = 0;
            hit = (av__mpi_key *)bsearch(&key, d->by_address, (size_t)d->n_params, sizeof key, av__mpi_key_cmp);
            if (hit) d->first_use[hit->param] = i;
        }
    if (!d->planned) { /* buckets in the order gradients complete: latest first use first */
        for (p = 0; p < d->n_params; p++) {
            d->keys[p].key = ((uint64_t)(c->n_tape - d->first_use[p]) << 32) | (uint32_t)(d->n_params - 1 - p);
            d->keys[p].param = p;
        }
        qsort(d->keys, (size_t)d->n_params, sizeof(av__mpi_key), av__mpi_key_cmp);
        for (p = 0; p < d->n_params; p++) d->order[p] = d->keys[p].param;
        if ((rc = av__mpi_plan(d))) return rc;
    }
    for (b = 0; b < d->n_buckets; b++) {
        d->ready_at[b] = c->n_tape;
        for (i = d->first[b]; i < d->first[b + 1]; i++)
            if (d->first_use[d->order[i]] < d->ready_at[b]) d->ready_at[b] = d->first_use[d->order[i]];
    }
    av__backward_run(c, loss, av__mpi_after_node, d);
    while (d->launched < d->n_buckets) av__mpi_launch(d, d->launched++); /* an empty tape calls no av__mpi_after_node */
    return av__mpi_finish(d);
}

AVDEF int av_mpi_broadcast(av_mpi *d) {
    av_model *m = d->model;
    int k, s, rc;
    long step = m->step;
    if (m->params.n != d->n_params)
        av__fail("av_mpi_broadcast: the model has %d parameters, %d at av_mpi_new", m->params.n, d->n_params);
    for (k = 0; k < m->params.n; k++)
        for (s = 0; s < 2; s++) d->has_state[2 * k + s] = m->params.e[k].state[s] != NULL;
    rc = av__mpi_rc(MPI_Bcast(d->has_state, 2 * m->params.n, MPI_UNSIGNED_CHAR, 0, d->comm), "av_mpi_broadcast");
    for (k = 0; !rc && k < m->params.n; k++)
        for (s = 0; !rc && s < 2; s++)
            if (d->has_state[2 * k + s] && !av__state(&m->params.e[k], s))
                rc = av__set_error(AV_ERR_NOMEM, "av_mpi_broadcast: out of memory for the optimizer state of '%s'",
                                   m->params.e[k].t->name);
    if ((rc = av__mpi_agree(d->comm, rc))) return rc;
    for (k = 0; !rc && k < av__n_entries(m); k++) {
        av__entry *e = av__entry_at(m, k);
        rc = av__mpi_rc(MPI_Bcast(e->t->data, e->t->size, MPI_FLOAT, 0, d->comm), "av_mpi_broadcast");
        for (s = 0; !rc && k < m->params.n && s < 2; s++) {
            if (d->has_state[2 * k + s])
                rc = av__mpi_rc(MPI_Bcast(e->state[s], e->t->size, MPI_FLOAT, 0, d->comm), "av_mpi_broadcast");
            else if (e->state[s]) /* rank 0 has none yet: zeros, what a first step starts from */
                memset(e->state[s], 0, (size_t)e->t->size * sizeof(float));
        }
    }
    if (!rc) rc = av__mpi_rc(MPI_Bcast(&step, 1, MPI_LONG, 0, d->comm), "av_mpi_broadcast");
    if (!rc) m->step = step;
    return rc;
}

/* Rank 0 writes or reads the file; every rank gets its result. */
static int av__mpi_save(av_mpi *d, const char *path, int with_state) {
    return av__mpi_agree(d->comm, d->rank == 0 ? av__model_write(d->model, path, with_state) : AV_OK);
}

static int av__mpi_load(av_mpi *d, const char *path, int with_state) {
    int rc = av__mpi_agree(d->comm, d->rank == 0 ? av__model_read(d->model, path, with_state) : AV_OK);
    return rc ? rc : av_mpi_broadcast(d);
}

AVDEF int av_mpi_model_save(av_mpi *d, const char *path) { return av__mpi_save(d, path, 0); }
AVDEF int av_mpi_checkpoint_save(av_mpi *d, const char *path) { return av__mpi_save(d, path, 1); }
AVDEF int av_mpi_model_load(av_mpi *d, const char *path) { return av__mpi_load(d, path, 0); }
AVDEF int av_mpi_checkpoint_load(av_mpi *d, const char *path) { return av__mpi_load(d, path, 1); }
#endif /* ATTNVAE_MPI */

#endif /* ATTNVAE_IMPLEMENTATION_DONE */
#endif /* ATTNVAE_IMPLEMENTATION */

/*
------------------------------------------------------------------------------
This software is available under 2 licenses -- choose whichever you prefer.
------------------------------------------------------------------------------
ALTERNATIVE A - MIT License
Copyright (c) 2026 the attnvae authors
Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the "Software"), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies
of the Software, and to permit persons to whom the Software is furnished to do
so, subject to the following conditions:
The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
------------------------------------------------------------------------------
ALTERNATIVE B - Public Domain (www.unlicense.org)
This is free and unencumbered software released into the public domain.
Anyone is free to copy, modify, publish, use, compile, sell, or distribute this
software, either in source code form or as a compiled binary, for any purpose,
commercial or non-commercial, and by any means.
In jurisdictions that recognize copyright laws, the author or authors of this
software dedicate any and all copyright interest in the software to the public
domain. We make this dedication for the benefit of the public at large and to
the detriment of our heirs and successors. We intend this dedication to be an
overt act of relinquishment in perpetuity of all present and future rights to
this software under copyright law.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN
ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
------------------------------------------------------------------------------
*/
