/* attnvae.h - attention models and variational autoencoders in one C header.
   (development skeleton: the manual is written at the top when sections land)
*/
#ifndef ATTNVAE_H
#define ATTNVAE_H

#define ATTNVAE_VERSION "0.1.0"
#define ATTNVAE_VERSION_MAJOR 0
#define ATTNVAE_VERSION_MINOR 1
#define ATTNVAE_VERSION_PATCH 0

#include <stddef.h>
#include <stdint.h>

#ifdef ATTNVAE_STATIC
#define AVAPI static
#else
#define AVAPI extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ---------------------------------------------------------- */
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
AVAPI const char *av_error(void);        /* message of the last error */
AVAPI int av_error_code(void);
AVAPI void av_clear_error(void);
/* Programming errors (shape mismatch) print a message naming the op and the
   shapes, then call this handler (default: abort()). If it returns, abort(). */
typedef void (*av_abort_fn)(const char *message);
AVAPI void av_set_abort_handler(av_abort_fn fn);

#include "parts/gemm_api.h"

/* ---- RNG: xoshiro128+-style generator, seeded, reproducible --------- */
typedef struct av_rng { uint64_t s[4]; } av_rng;
AVAPI void av_rng_seed(av_rng *r, uint64_t seed);
AVAPI uint64_t av_rng_u64(av_rng *r);
AVAPI float av_rng_uniform(av_rng *r);            /* [0, 1) */
AVAPI float av_rng_normal(av_rng *r);             /* N(0, 1) */

/* ---- tensors --------------------------------------------------------- */
#define AV_MAX_DIMS 4
typedef struct av_tensor {
    int ndim;                 /* 0..4; a 0-d tensor is a scalar */
    int shape[AV_MAX_DIMS];
    int size;                 /* number of elements */
    float *data;              /* row-major, contiguous */
    float *grad;              /* same layout; NULL until backward needs it */
    int requires_grad;        /* takes part in autodiff */
    const char *name;         /* parameters only */
} av_tensor;

/* A context owns one step: an arena for tensors, the tape, an RNG and the
   mode flags. av_ctx_reset() frees everything the step made in O(1). */
typedef struct av_ctx av_ctx;
AVAPI av_ctx *av_ctx_new(void);
AVAPI void av_ctx_free(av_ctx *c);
AVAPI void av_ctx_reset(av_ctx *c);
AVAPI void av_ctx_seed(av_ctx *c, uint64_t seed);
AVAPI av_rng *av_ctx_rng(av_ctx *c);
AVAPI int av_set_grad_enabled(av_ctx *c, int enabled); /* returns previous */
AVAPI int av_set_training(av_ctx *c, int training);    /* dropout on/off; returns previous */
AVAPI void *av_ctx_alloc(av_ctx *c, size_t bytes);     /* step scratch, 64-byte aligned */
AVAPI size_t av_ctx_peak_bytes(const av_ctx *c);       /* largest step so far */
/* A mark remembers the arena and tape; rewinding frees all made since,
   e.g. between samples of an estimate inside one step. */
typedef struct av_mark { void *chunk; size_t used, step_bytes; int n_tape; } av_mark;
AVAPI av_mark av_ctx_mark(const av_ctx *c);
AVAPI void av_ctx_rewind(av_ctx *c, av_mark mark);

/* Creation (in the step arena). Shapes are given as ndim then the sizes. */
AVAPI av_tensor *av_zeros(av_ctx *c, int ndim, ...);
AVAPI av_tensor *av_ones(av_ctx *c, int ndim, ...);
AVAPI av_tensor *av_full(av_ctx *c, float value, int ndim, ...);
AVAPI av_tensor *av_randn(av_ctx *c, float mean, float std, int ndim, ...);
AVAPI av_tensor *av_rand(av_ctx *c, float lo, float hi, int ndim, ...);
AVAPI av_tensor *av_from(av_ctx *c, const float *data, int ndim, ...);  /* copies */
AVAPI av_tensor *av_wrap(av_ctx *c, float *data, int ndim, ...);        /* no copy */
AVAPI av_tensor *av_new_shape(av_ctx *c, int ndim, const int *shape);   /* zeros */
AVAPI av_tensor *av_scalar(av_ctx *c, float value);
AVAPI void av_requires_grad(av_ctx *c, av_tensor *t);  /* make t a leaf with a gradient */
AVAPI av_tensor *av_detach(av_ctx *c, av_tensor *x);   /* same data, no gradient */
AVAPI float av_item(const av_tensor *t);               /* data[0] */
AVAPI int av_same_shape(const av_tensor *a, const av_tensor *b);
AVAPI void av_print(const char *label, const av_tensor *t);

/* ---- ops: every op records itself on the tape when an input needs a
   gradient and grad mode is on. Shape errors abort with a message. ----- */
/* shape */
AVAPI av_tensor *av_reshape(av_ctx *c, av_tensor *x, int ndim, ...);   /* one size may be -1 */
AVAPI av_tensor *av_permute(av_ctx *c, av_tensor *x, const int *perm);
AVAPI av_tensor *av_transpose(av_ctx *c, av_tensor *x, int axis0, int axis1);
AVAPI av_tensor *av_slice(av_ctx *c, av_tensor *x, int axis, int start, int end);
AVAPI av_tensor *av_concat(av_ctx *c, av_tensor *const *xs, int n, int axis);
/* elementwise, with numpy broadcasting */
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
/* reductions: over one axis (keepdim keeps it as size 1) or over all */
AVAPI av_tensor *av_sum(av_ctx *c, av_tensor *x, int axis, int keepdim);
AVAPI av_tensor *av_mean(av_ctx *c, av_tensor *x, int axis, int keepdim);
AVAPI av_tensor *av_max(av_ctx *c, av_tensor *x, int axis, int keepdim);
AVAPI av_tensor *av_sum_all(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_mean_all(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_max_all(av_ctx *c, av_tensor *x);
/* matrices: a [..., M, K] (or [..., K, M] with trans_a) times b [..., K, N]
   (or [..., N, K] with trans_b); b may be 2-D and shared by every batch. */
AVAPI av_tensor *av_matmul(av_ctx *c, av_tensor *a, av_tensor *b, int trans_a, int trans_b);
/* y = x wᵀ + b, x [..., in], w [out, in] (PyTorch layout), b [out] or NULL */
AVAPI av_tensor *av_linear(av_ctx *c, av_tensor *x, av_tensor *w, av_tensor *b);
/* last axis */
AVAPI av_tensor *av_softmax(av_ctx *c, av_tensor *x);
AVAPI av_tensor *av_log_softmax(av_ctx *c, av_tensor *x);
/* gamma and beta are [n] or NULL (then 1 and 0) */
AVAPI av_tensor *av_layer_norm(av_ctx *c, av_tensor *x, av_tensor *gamma, av_tensor *beta, float eps);
/* rows of table [V, D] picked by ids[n]: [n, D] */
AVAPI av_tensor *av_embedding(av_ctx *c, av_tensor *table, const int *ids, int n);
AVAPI av_tensor *av_dropout(av_ctx *c, av_tensor *x, float p); /* identity unless training */
/* losses; reduction AV_MEAN averages over elements (rows for cross-entropy), AV_SUM adds */
enum { AV_MEAN = 0, AV_SUM = 1 };
AVAPI av_tensor *av_mse_loss(av_ctx *c, av_tensor *pred, av_tensor *target, int reduction);
AVAPI av_tensor *av_cross_entropy(av_ctx *c, av_tensor *logits, const int *labels, int reduction);
AVAPI av_tensor *av_bce_with_logits(av_ctx *c, av_tensor *logits, av_tensor *target, int reduction);

/* Runs the tape backward from a scalar loss; gradients accumulate into
   every tensor that requires them (parameters included). */
AVAPI void av_backward(av_ctx *c, av_tensor *loss);

/* ---- parameters: a named store with gradients and optimizer state ----- */
enum {
    AV_INIT_ZEROS, AV_INIT_ONES, AV_INIT_NORMAL,      /* NORMAL: std = init_arg */
    AV_INIT_UNIFORM,                                  /* U(-init_arg, init_arg) */
    AV_INIT_XAVIER_UNIFORM, AV_INIT_XAVIER_NORMAL,
    AV_INIT_KAIMING_UNIFORM, AV_INIT_KAIMING_NORMAL,  /* gain sqrt(2): ReLU */
    /* XAVIER_*: gain = init_arg (0 means 1); KAIMING_*: init_arg ignored */
    AV_INIT_TORCH_LINEAR                              /* U(±1/sqrt(fan_in)), PyTorch's default */
};
typedef struct av_model av_model;
AVAPI av_model *av_model_new(uint64_t seed);
AVAPI void av_model_free(av_model *m);
/* Fan-in is the product of all sizes but the first (PyTorch's [out, in, ...]). */
AVAPI av_tensor *av_param(av_model *m, const char *name, int init, float init_arg, int ndim, ...);
AVAPI int av_model_count(const av_model *m);
AVAPI av_tensor *av_model_param(const av_model *m, int i);
AVAPI av_tensor *av_model_find(const av_model *m, const char *name);
AVAPI long av_model_num_values(const av_model *m);
AVAPI void av_model_zero_grad(av_model *m);
AVAPI long av_model_step(const av_model *m);  /* optimizer steps taken */

/* ---- layers ---------------------------------------------------------- */
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

/* ---- VAE --------------------------------------------------------------
   Pieces that fit any encoder and decoder: the encoder ends in a Gaussian
   head (mu, logvar), z comes from the reparameterization, the decoder gives
   likelihood parameters, and the per-example terms make the ELBO. All
   per-example terms sum over every axis but the first, in nats. */
typedef struct av_gaussian_head { av_linear_layer mu, logvar; } av_gaussian_head;
/* parameters "<name>.mu.*" and "<name>.logvar.*" */
AVAPI av_gaussian_head av_gaussian_head_new(av_model *m, const char *name, int in, int latent);
AVAPI void av_gaussian_head_forward(av_ctx *c, const av_gaussian_head *g, av_tensor *h,
                                    av_tensor **mu, av_tensor **logvar);
/* z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from the context's RNG */
AVAPI av_tensor *av_reparameterize(av_ctx *c, av_tensor *mu, av_tensor *logvar);
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
/* rows z0 + t (z1 - z0) for t = 0, 1/(steps-1), ..., 1: [steps, D] */
AVAPI av_tensor *av_interpolate(av_ctx *c, const float *z0, const float *z1, int dim, int steps);

/* ---- optimizers ------------------------------------------------------ */
enum { AV_OPT_SGD, AV_OPT_ADAM, AV_OPT_ADAMW };
typedef struct av_optim {
    int kind;
    float lr, momentum, beta1, beta2, eps, weight_decay;
} av_optim;
AVAPI av_optim av_sgd(float lr, float momentum, float weight_decay);
AVAPI av_optim av_adam(float lr);                      /* betas 0.9/0.999, eps 1e-8 */
AVAPI av_optim av_adamw(float lr, float weight_decay);
/* One update of every parameter from its gradient; does not zero grads.
   If any gradient is NaN or infinite nothing changes and AV_ERR_NAN is
   returned (with a message naming the parameter): a bad batch loses nothing. */
AVAPI int av_optim_step(av_model *m, const av_optim *opt);
AVAPI float av_clip_grad_norm(av_model *m, float max_norm);  /* returns norm before clipping */
AVAPI float av_grad_norm(const av_model *m);
/* step < warmup: lr_max (step+1)/warmup; then lr_min + (lr_max-lr_min)(1+cos(pi p))/2
   with p = (step-warmup)/(total-warmup) clamped to [0, 1]. */
AVAPI float av_lr_warmup_cosine(long step, long warmup, long total, float lr_max, float lr_min);

/* ---- model files ----------------------------------------------------- */
/* Parameters as safetensors. Load checks every name and shape and leaves
   the model untouched on any error. */
AVAPI int av_model_save(const av_model *m, const char *path);
AVAPI int av_model_load(av_model *m, const char *path);
/* Checkpoint: parameters, optimizer state and step, so training resumes exactly. */
AVAPI int av_checkpoint_save(const av_model *m, const char *path);
AVAPI int av_checkpoint_load(av_model *m, const char *path);

#include "parts/io_api.h"

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

#ifndef AV_MALLOC
#define AV_MALLOC(sz) malloc(sz)
#define AV_REALLOC(p, sz) realloc(p, sz)
#define AV_FREE(p) free(p)
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
/* loops over n independent items go parallel when n is worth a fork */
#define AV__PAR(n) AV_OMP(omp parallel for schedule(static) if ((n) > 32768))

#ifdef ATTNVAE_STATIC
#if defined(__GNUC__) || defined(__clang__)
#define AVDEF static __attribute__((unused))
#else
#define AVDEF static
#endif
#else
#define AVDEF
#endif

/* ---- errors ---------------------------------------------------------- */
static char av__errbuf[512];
static int av__errcode;
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
static void av__fail(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "attnvae: %s\n", msg);
    if (av__abort_fn) av__abort_fn(msg);
    abort();
}

#include "parts/core.c"
#include "parts/gemm.c"
#include "parts/ops.c"
#include "parts/params.c"
#include "parts/vae.c"
#include "parts/io.c"
#include "parts/model_io.c"

#endif /* ATTNVAE_IMPLEMENTATION_DONE */
#endif /* ATTNVAE_IMPLEMENTATION */
