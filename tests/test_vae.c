/* test_vae.c - tests of the VAE section of attnvae.h.

   Every check compares the library against an independent reference
   computed here in double precision (or by PyTorch, see torch_vae.py):
     1. finite-difference gradient checks of every differentiable VAE piece
        and of an encoder -> Gaussian head -> reparameterize -> decoder model;
     2. closed forms (KL, Bernoulli / Gaussian NLL, log-mean-exp, warm-up,
        interpolation) and the statistics of the reparameterization;
     3. a linear-Gaussian "VAE" whose log p(x), posterior and ELBO are exact:
        ELBO <= log p(x), IWAE estimates rising with k towards log p(x), and
        IWAE with the exact posterior as q equal to log p(x) per sample; the
        trainable IWAE bound (av_iwae_loss) likewise, and rebuilt from the
        RNG stream; then av_logsumexp against double precision,
        av_reparameterize_eps against its formula, and finite-difference
        checks of both and of the IWAE loss through a model;
     4. a cross-check of loss and every gradient against PyTorch, with the
        weights, data and noise carried through safetensors files.

   Usage (from the repository root): build/test_vae [TMPDIR]
   TMPDIR (default build/vae_tmp) receives the files exchanged with
   tests/torch_vae.py. Prints failures, a few info lines and the summary. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "philox_ref.h"

#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LOG_2PI 1.8378770664093454836

/* ---- the tests' own RNG (splitmix64 + Box-Muller), independent of the library */
static uint64_t tr_state = 0x1234567ULL;
static uint64_t tr_u64(void) {
    uint64_t z = (tr_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static double tr_unif(void) { return ((double)(tr_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static double tr_in(double lo, double hi) { return lo + (hi - lo) * tr_unif(); }
static double tr_normal(void) { return sqrt(-2.0 * log(tr_unif())) * cos(6.283185307179586 * tr_unif()); }
static void tr_fill(float *dst, int n, double lo, double hi) {
    int i;
    for (i = 0; i < n; i++) dst[i] = (float)tr_in(lo, hi);
}

static double sq(double v) { return v * v; }

/* ======================================================================= */
/* 1. finite-difference gradient checks                                    */
/* ======================================================================= */
/* A case has up to FD_MAX_VARS variables (float arrays, perturbed in
   place). Its forward builds the graph from them and returns an output
   `out`; the scalar checked is L = sum_k R_k out_k with fixed random
   weights R_k (|R_k| in [0.5, 1.5), random sign), so every output element
   counts with its own weight. Autodiff: av_backward of sum(out * R).
   Numeric: central differences of L evaluated in double from the fp32
   outputs of fresh forwards (ctx reset and reseeded with FD_SEED before
   every evaluation, so the eps of av_reparameterize is the same each time),
   using the actual float steps xp - xm.

   Tolerance per element: |autodiff - numeric| <= FD_ATOL + FD_RTOL |numeric| + noise.
   * Truncation of the central difference: h^2/6 |L'''|. Inputs are O(1)
     (logvar in [-1.5, 1], logits in [-4, 4]) so |L'''| / |L'| is at most a few
     units (e^{+-lv}, softplus, tanh), and h = 1e-2 gives a relative error
     <= 1.7e-5 * few << FD_RTOL = 1e-3; where L' is tiny the absolute
     truncation h^2/6 |L'''| <= 2e-5 * 0.1 (softplus''' <= 0.1) < FD_ATOL.
   * fp32 rounding: each output that changes carries at most FD_ULPS ulps
     (FLT_EPSILON |out_k| each; a short chain of fp32 ops and a per-row fp32
     sum of a few non-negative terms) in each of the two evaluations, so the
     difference quotient errs by at most
         noise = FD_ULPS * FLT_EPSILON * S / h,  S = sum_k |R_k| |out_k|
     over the outputs that changed (~ eps |L| / h as the usual estimate).
     Outputs that do not depend on the perturbed element are bit-identical
     and cancel exactly.
   A wrong gradient (lost term, sign, factor 1/2, wrong broadcast reduction)
   is off by O(100%) and fails by orders of magnitude. */
#define FD_MAX_VARS 40
#define FD_H 1e-2
#define FD_RTOL 1e-3
#define FD_ATOL 1e-5
#define FD_ULPS 8.0
#define FD_SEED 0xfdfdULL

typedef struct fd_case fd_case;
typedef av_tensor *(*fd_fwd)(av_ctx *c, fd_case *fc, int grad);
struct fd_case {
    const char *what;
    fd_fwd fwd;
    int n_vars;
    float *var[FD_MAX_VARS];        /* values, perturbed in place */
    int var_n[FD_MAX_VARS];
    int var_ndim[FD_MAX_VARS];
    int var_shape[FD_MAX_VARS][AV_MAX_DIMS];
    const char *var_name[FD_MAX_VARS];
    av_tensor *var_t[FD_MAX_VARS];  /* where the gradient of var i lands (set by fwd or preset) */
    void *user;
};

static double fd_worst_ratio;
static char fd_worst_what[160];
static int fd_elements;
static int fd_quiet, fd_bad; /* quiet: count mismatches in fd_bad instead of failing */

static void fd_init(fd_case *fc, const char *what, fd_fwd fwd, void *user) {
    memset(fc, 0, sizeof *fc);
    fc->what = what;
    fc->fwd = fwd;
    fc->user = user;
}

/* fd_var(fc, name, data, ndim, sizes...) */
static void fd_var(fd_case *fc, const char *name, float *data, int ndim, ...) {
    int i = fc->n_vars++, k, n = 1;
    va_list ap;
    va_start(ap, ndim);
    for (k = 0; k < ndim; k++) { fc->var_shape[i][k] = va_arg(ap, int); n *= fc->var_shape[i][k]; }
    va_end(ap);
    fc->var[i] = data;
    fc->var_n[i] = n;
    fc->var_ndim[i] = ndim;
    fc->var_name[i] = name;
}

/* A model parameter as a variable: perturbed in its own storage. */
static void fd_param(fd_case *fc, av_tensor *p) {
    int i = fc->n_vars++;
    fc->var[i] = p->data;
    fc->var_n[i] = p->size;
    fc->var_ndim[i] = -1;
    fc->var_name[i] = p->name;
    fc->var_t[i] = p;
}

/* The tensor of variable i for this forward (a leaf that requires grad when grad). */
static av_tensor *fd_leaf(av_ctx *c, fd_case *fc, int i, int grad) {
    av_tensor *t = av_zeros_shape(c, fc->var_ndim[i], fc->var_shape[i]);
    memcpy(t->data, fc->var[i], (size_t)fc->var_n[i] * sizeof(float));
    if (grad) av_requires_grad(c, t);
    fc->var_t[i] = t;
    return t;
}

static double fd_eval(av_ctx *c, fd_case *fc, const float *R, int nout, float *outv) {
    av_tensor *out;
    double L = 0;
    int k, prev;
    av_ctx_reset(c);
    av_ctx_seed(c, FD_SEED);
    prev = av_set_grad_enabled(c, 0);
    out = fc->fwd(c, fc, 0);
    av_set_grad_enabled(c, prev);
    if (out->size != nout) return NAN;
    for (k = 0; k < nout; k++) {
        outv[k] = out->data[k];
        L += (double)R[k] * out->data[k];
    }
    return L;
}

static void fd_run(fd_case *fc) {
    av_ctx *c = av_ctx_new();
    av_tensor *out, *Rt, *loss;
    double *ana[FD_MAX_VARS], L0 = 0;
    float *R, *op, *om;
    int i, j, k, nout;

    av_ctx_seed(c, FD_SEED);
    out = fc->fwd(c, fc, 1);
    nout = out->size;
    R = (float *)malloc((size_t)nout * 3 * sizeof(float));
    op = R + nout;
    om = op + nout;
    Rt = av_zeros_shape(c, out->ndim, out->shape);
    for (k = 0; k < nout; k++) {
        double r = tr_in(0.5, 1.5);
        R[k] = (float)(tr_u64() & 1 ? r : -r);
        Rt->data[k] = R[k];
        L0 += (double)R[k] * out->data[k];
    }
    loss = av_sum_all(c, av_mul(c, out, Rt));
    CHECK(fabs(av_item(loss) - L0) <= 1e-5 * (1 + fabs(L0)), "%s: graph loss %.9g vs double %.9g", fc->what,
          (double)av_item(loss), L0);
    CHECK(out->requires_grad, "%s: output does not require grad", fc->what);
    for (i = 0; i < fc->n_vars; i++) {
        ana[i] = (double *)malloc((size_t)fc->var_n[i] * sizeof(double));
        if (fc->var_t[i] && fc->var_t[i]->grad) memset(fc->var_t[i]->grad, 0, (size_t)fc->var_n[i] * sizeof(float));
    }
    if (out->requires_grad) av_backward(c, loss);
    for (i = 0; i < fc->n_vars; i++) {
        const float *g = fc->var_t[i] ? fc->var_t[i]->grad : NULL;
        CHECK(g != NULL, "%s: %s got no gradient", fc->what, fc->var_name[i]);
        for (j = 0; j < fc->var_n[i]; j++) ana[i][j] = g ? g[j] : NAN;
    }

    /* the forward with grad mode off gives the same outputs (the numeric side uses it) */
    {
        float *base = (float *)malloc((size_t)nout * sizeof(float));
        int same = 1;
        for (k = 0; k < nout; k++) base[k] = out->data[k];
        fd_eval(c, fc, R, nout, op);
        for (k = 0; k < nout; k++) same &= op[k] == base[k];
        CHECK(same, "%s: forward without grad differs from the forward with grad", fc->what);
        free(base);
    }

    for (i = 0; i < fc->n_vars; i++)
        for (j = 0; j < fc->var_n[i]; j++) {
            float x0 = fc->var[i][j], xp = (float)(x0 + FD_H), xm = (float)(x0 - FD_H);
            double Lp, Lm, num, S = 0, tol, err, step = (double)xp - (double)xm;
            fc->var[i][j] = xp;
            Lp = fd_eval(c, fc, R, nout, op);
            fc->var[i][j] = xm;
            Lm = fd_eval(c, fc, R, nout, om);
            fc->var[i][j] = x0;
            num = (Lp - Lm) / step;
            for (k = 0; k < nout; k++)
                if (op[k] != om[k]) S += fabs(R[k]) * (fabs(op[k]) > fabs(om[k]) ? fabs(op[k]) : fabs(om[k]));
            tol = FD_ATOL + FD_RTOL * fabs(num) + FD_ULPS * FLT_EPSILON * S / (0.5 * step);
            err = fabs(ana[i][j] - num);
            if (fd_quiet) {
                fd_bad += !(err <= tol);
            } else if (!(err <= tol)) {
                fd_elements++;
                CHECK(0, "%s: dL/d%s[%d]: autodiff %.8g, numeric %.8g (tol %.2g)", fc->what, fc->var_name[i], j, ana[i][j],
                      num, tol);
            } else {
                fd_elements++;
                t_passed++;
                if (err / tol > fd_worst_ratio) {
                    fd_worst_ratio = err / tol;
                    snprintf(fd_worst_what, sizeof fd_worst_what, "%s d/d%s[%d]", fc->what, fc->var_name[i], j);
                }
            }
        }
    for (i = 0; i < fc->n_vars; i++) free(ana[i]);
    free(R);
    av_ctx_free(c);
}

/* ---- forwards of the single-function cases ---- */
static av_tensor *fwd_reparam(av_ctx *c, fd_case *fc, int grad) {
    return av_reparameterize(c, fd_leaf(c, fc, 0, grad), fd_leaf(c, fc, 1, grad));
}
/* reparameterize inside a nonlinear function: the gradient has to pass through z */
static av_tensor *fwd_reparam_tanh(av_ctx *c, fd_case *fc, int grad) {
    return av_tanh(c, av_reparameterize(c, fd_leaf(c, fc, 0, grad), fd_leaf(c, fc, 1, grad)));
}
static av_tensor *fwd_kl(av_ctx *c, fd_case *fc, int grad) {
    return av_kl_std_normal(c, fd_leaf(c, fc, 0, grad), fd_leaf(c, fc, 1, grad));
}
static av_tensor *fwd_bern(av_ctx *c, fd_case *fc, int grad) {
    return av_bernoulli_nll(c, fd_leaf(c, fc, 0, grad), fd_leaf(c, fc, 1, grad));
}
/* vars: mean, x, logvar */
static av_tensor *fwd_gnll(av_ctx *c, fd_case *fc, int grad) {
    av_tensor *mean = fd_leaf(c, fc, 0, grad), *x = fd_leaf(c, fc, 1, grad), *lv = fd_leaf(c, fc, 2, grad);
    return av_gaussian_nll(c, mean, lv, x);
}
/* vars: z, mu, logvar (or z only) */
static av_tensor *fwd_glp(av_ctx *c, fd_case *fc, int grad) {
    av_tensor *z = fd_leaf(c, fc, 0, grad);
    if (fc->n_vars == 1) return av_gaussian_log_prob(c, z, NULL, NULL);
    return av_gaussian_log_prob(c, z, fd_leaf(c, fc, 1, grad), fd_leaf(c, fc, 2, grad));
}
static float fd_beta;
static av_tensor *fwd_elbo_leaves(av_ctx *c, fd_case *fc, int grad) {
    return av_neg_elbo(c, fd_leaf(c, fc, 0, grad), fd_leaf(c, fc, 1, grad), fd_beta);
}
/* vars: logits, x, mu, logvar -> neg ELBO(bernoulli, kl, beta) */
static av_tensor *fwd_elbo_parts(av_ctx *c, fd_case *fc, int grad) {
    av_tensor *nll = av_bernoulli_nll(c, fd_leaf(c, fc, 0, grad), fd_leaf(c, fc, 1, grad));
    av_tensor *kl = av_kl_std_normal(c, fd_leaf(c, fc, 2, grad), fd_leaf(c, fc, 3, grad));
    return av_neg_elbo(c, nll, kl, fd_beta);
}

/* Self-test of the checker: KL plus 0.03 sum(mu^2) with one factor of the
   extra term hidden from autodiff by av_detach. The autodiff gradient of the
   extra term is then 0.03 mu instead of 0.06 mu: wrong by 0.03 |mu|, a few
   percent of d KL / d mu = mu. The checker must flag it. */
static av_tensor *fwd_kl_wrong(av_ctx *c, fd_case *fc, int grad) {
    av_tensor *mu = fd_leaf(c, fc, 0, grad), *kl = av_kl_std_normal(c, mu, fd_leaf(c, fc, 1, grad));
    av_tensor *extra = av_sum(c, av_mul(c, mu, av_detach(c, mu)), 1, 0);
    return av_add(c, kl, av_scale(c, extra, 0.03f));
}

/* ---- end-to-end model: x -> tanh(enc) -> head -> reparameterize -> dec ---- */
typedef struct e2e {
    av_mlp enc, dec;
    av_gaussian_head head;
    av_tensor *dec_logvar; /* NULL: Bernoulli decoder; else learned Gaussian variance [D] */
    const float *x;
    int B, D;
} e2e;

static av_tensor *fwd_e2e(av_ctx *c, fd_case *fc, int grad) {
    e2e *u = (e2e *)fc->user;
    av_tensor *x = av_from(c, u->x, 2, u->B, u->D), *h, *mu, *lv, *z, *out, *nll;
    (void)grad;
    h = av_tanh(c, av_mlp_forward(c, &u->enc, x));
    av_gaussian_head_forward(c, &u->head, h, &mu, &lv);
    z = av_reparameterize(c, mu, lv);
    out = av_mlp_forward(c, &u->dec, z);
    nll = u->dec_logvar ? av_gaussian_nll(c, out, u->dec_logvar, x) : av_bernoulli_nll(c, out, x);
    return av_add(c, nll, av_kl_std_normal(c, mu, lv)); /* per example [B] */
}

static double ref_bce(double l, double x);

/* plain autoencoder: per-example Bernoulli NLL of its reconstruction (tanh keeps it smooth) */
typedef struct ae_case { av_autoencoder ae; const float *x; int B, D; } ae_case;
static av_tensor *fwd_ae(av_ctx *c, fd_case *fc, int grad) {
    ae_case *u = (ae_case *)fc->user;
    av_tensor *x = av_from(c, u->x, 2, u->B, u->D);
    (void)grad;
    return av_bernoulli_nll(c, av_autoencoder_forward(c, &u->ae, x, NULL), x);
}

/* The SIMD softplus/sigmoid behind av_bernoulli_nll and its gradient, on
   every ISA path, over logits from -90 to 90 (so lanes cross the |x| > 80
   scalar fallback), against double precision. Tolerance: the vector exp and
   log1p are within a few ulp, and the per-row sum of 257 terms in double adds
   nothing, so 2e-6 relative (about 16 ulp) plus 1e-6 absolute suffices. */
static void test_simd_paths(void) {
    enum { B = 3, W = 257 };
    static float logits[B * W], x[B * W];
    int isa, i, prev = av_get_isa();
    uint64_t saved_state = tr_state; /* later tests keep their random data */
    for (i = 0; i < B * W; i++) {
        logits[i] = (float)(-90.0 + 180.0 * i / (B * W - 1));
        x[i] = (float)tr_unif();
    }
    for (isa = AV_ISA_SCALAR; isa <= AV_ISA_NEON; isa++) {
        av_ctx *c;
        av_tensor *l, *nll;
        int b;
        if (!av_isa_supported(isa)) continue;
        av_set_isa(isa);
        c = av_ctx_new();
        l = av_from(c, logits, 2, B, W);
        av_requires_grad(c, l);
        nll = av_bernoulli_nll(c, l, av_from(c, x, 2, B, W));
        av_backward(c, av_sum_all(c, nll));
        for (b = 0; b < B; b++) {
            double want = 0;
            for (i = b * W; i < (b + 1) * W; i++) want += ref_bce(logits[i], x[i]);
            CHECK_CLOSE(nll->data[b], want, 1e-6, 2e-6, av_isa_name(isa));
        }
        for (i = 0; i < B * W; i++) {
            double sig = 1.0 / (1.0 + exp(-(double)logits[i]));
            CHECK_CLOSE(l->grad[i], sig - x[i], 1e-7, 2e-6, av_isa_name(isa));
        }
        /* a value's sigmoid and softplus do not depend on where it sits in the array
           (SIMD body or tail), so compositions of the same values agree exactly */
        {
            av_tensor *all = av_from(c, logits + 100, 1, 37), *sg = av_sigmoid(c, all), *sp = av_softplus(c, all);
            int same = 1;
            for (i = 0; i < 37; i++) {
                av_tensor *one = av_from(c, logits + 100 + i, 1, 1);
                same &= av_sigmoid(c, one)->data[0] == sg->data[i] && av_softplus(c, one)->data[0] == sp->data[i];
            }
            CHECK(same, "sigmoid/softplus of a value depends on its position in the array on %s", av_isa_name(isa));
        }
        /* relu and its gradient on the same path; NaN must propagate */
        {
            av_tensor *r, *xr = av_from(c, logits, 2, B, W);
            av_model *m = av_model_new(1);
            av_tensor *p = av_param(m, "p", AV_INIT_ZEROS, 0, 1, 1);
            xr->data[5] = NAN;
            av_requires_grad(c, xr);
            r = av_relu(c, xr);
            av_backward(c, av_sum_all(c, av_mul(c, av_from(c, x, 2, B, W), r)));
            for (i = 0; i < B * W; i++) {
                if (i == 5) continue;
                CHECK(r->data[i] == (logits[i] > 0 ? logits[i] : 0.0f), "relu %s [%d]", av_isa_name(isa), i);
                CHECK(xr->grad[i] == (logits[i] > 0 ? x[i] : 0.0f), "relu grad %s [%d]", av_isa_name(isa), i);
            }
            CHECK(isnan(r->data[5]), "relu(NaN) = %g on %s, want NaN", r->data[5], av_isa_name(isa));
            /* a non-finite gradient anywhere stops the optimizer, which changes nothing */
            p->grad[0] = 1.0f;
            {
                av_optim adam = av_adam(0.1f);
                float before = p->data[0];
                av_model_param(m, 0)->grad[0] = INFINITY;
                CHECK(av_optim_step(m, &adam) == AV_ERR_NAN && p->data[0] == before && av_model_step(m) == 0,
                      "optimizer took a step with an infinite gradient on %s", av_isa_name(isa));
            }
            av_model_free(m);
        }
        av_ctx_free(c);
    }
    av_set_isa(prev);
    tr_state = saved_state;
}

/* av_vae is the pieces put together: each of its functions must equal the
   same composition written out here, bit for bit (same ops, same RNG draws). */
typedef struct vae_nets { av_mlp enc, dec; } vae_nets;
static av_tensor *tv_enc(av_ctx *c, av_tensor *x, void *user) {
    return av_tanh(c, av_mlp_forward(c, &((vae_nets *)user)->enc, x));
}
static av_tensor *tv_dec(av_ctx *c, av_tensor *z, void *user) {
    return av_mlp_forward(c, &((vae_nets *)user)->dec, z);
}
static av_tensor *tv_bernoulli_nll(av_ctx *c, av_tensor *z, av_tensor *x, void *user) {
    return av_bernoulli_nll(c, tv_dec(c, z, user), x);
}
static int same_tensor(const av_tensor *a, const av_tensor *b) {
    return a->size == b->size && memcmp(a->data, b->data, (size_t)a->size * sizeof(float)) == 0;
}

static av_tensor *fwd_vae_gauss(av_ctx *c, fd_case *fc, int grad) {
    av_vae *v = (av_vae *)fc->user;
    static const float x[8] = {0.3f, -0.2f, 0.8f, 0.1f, -0.5f, 0.4f, 0.9f, -0.7f};
    av_tensor *nll;
    (void)grad;
    av_ctx_seed(c, 5);
    av_vae_loss(c, v, av_from(c, x, 2, 2, 4), 0.5f, &nll, NULL);
    return nll;
}

static void test_vae_struct(void) {
    int enc_sizes[2] = {4, 5}, dec_sizes[2] = {3, 4}, i, form;
    float x[8];
    double log_a[2], log_b[2];
    vae_nets nets;
    av_model *m = av_model_new(21);
    av_ctx *c = av_ctx_new();
    av_vae v;
    av_tensor *xt, *mu, *lv, *z, *loss, *want, *nll, *kl, *got;
    nets.enc = av_mlp_new(m, "enc", 1, enc_sizes, AV_ACT_TANH);
    nets.dec = av_mlp_new(m, "dec", 1, dec_sizes, AV_ACT_TANH);
    v = av_vae_new(m, "vae", 5, 3, tv_enc, tv_dec, &nets, AV_BERNOULLI);
    CHECK(av_model_find(m, "vae.head.mu.weight") && av_model_find(m, "vae.head.logvar.bias"), "av_vae head names");
    tr_fill(x, 8, 0, 1);
    for (form = 0; form < 2; form++) {
        v.likelihood = form ? AV_GAUSSIAN : AV_BERNOULLI;
        v.fixed_logvar = -0.5f;
        av_ctx_reset(c);
        av_ctx_seed(c, 9);
        xt = av_from(c, x, 3, 2, 1, 4); /* decoder output [2, 4] is laid out like x */
        loss = av_vae_loss(c, &v, xt, 0.7f, &nll, &kl);
        av_ctx_seed(c, 9);
        av_gaussian_head_forward(c, &v.head, tv_enc(c, xt, &nets), &mu, &lv);
        z = av_reparameterize(c, mu, lv);
        got = av_reshape(c, tv_dec(c, z, &nets), 3, 2, 1, 4);
        got = form ? av_gaussian_nll(c, got, av_scalar(c, -0.5f), xt) : av_bernoulli_nll(c, got, xt);
        want = av_neg_elbo(c, got, av_kl_std_normal(c, mu, lv), 0.7f);
        CHECK(same_tensor(loss, want) && same_tensor(nll, got), "av_vae_loss (%s) differs from its pieces",
              form ? "Gaussian" : "Bernoulli");
    }
    v.likelihood = AV_BERNOULLI;
    av_ctx_reset(c);
    xt = av_from(c, x, 2, 2, 4);
    got = av_vae_reconstruct(c, &v, xt);
    av_gaussian_head_forward(c, &v.head, tv_enc(c, xt, &nets), &mu, &lv);
    CHECK(same_tensor(got, av_sigmoid(c, tv_dec(c, mu, &nets))), "av_vae_reconstruct != sigmoid(decoder(mu))");
    /* the ends of an interpolation are the two reconstructions */
    want = av_vae_interpolate(c, &v, xt, 5);
    CHECK(want->shape[0] == 5 && memcmp(want->data, got->data, 4 * sizeof(float)) == 0 &&
              memcmp(want->data + 16, got->data + 4, 4 * sizeof(float)) == 0,
          "av_vae_interpolate ends differ from the reconstructions");
    av_ctx_seed(c, 3);
    got = av_vae_sample(c, &v, 6);
    av_ctx_seed(c, 3);
    CHECK(got->shape[0] == 6 && same_tensor(got, av_sigmoid(c, tv_dec(c, av_randn(c, 0, 1, 2, 6, 3), &nets))),
          "av_vae_sample != sigmoid(decoder(prior draws))");
    av_set_grad_enabled(c, 0);
    av_ctx_seed(c, 4);
    av_vae_iwae(c, &v, xt, 20, log_a);
    av_gaussian_head_forward(c, &v.head, tv_enc(c, xt, &nets), &mu, &lv);
    av_ctx_seed(c, 4);
    av_iwae_log_px(c, xt, mu, lv, 20, tv_bernoulli_nll, &nets, log_b);
    CHECK(log_a[0] == log_b[0] && log_a[1] == log_b[1], "av_vae_iwae %g %g != av_iwae_log_px %g %g", log_a[0],
          log_a[1], log_b[0], log_b[1]);
    av_ctx_free(c);
    /* a learned Gaussian variance gets its gradient through av_vae_loss */
    {
        fd_case fc;
        v.likelihood = AV_GAUSSIAN;
        v.x_logvar = av_param(m, "vae.x_logvar", AV_INIT_UNIFORM, 0.3f, 1, 4);
        c = av_ctx_new();
        av_ctx_seed(c, 8);
        xt = av_from(c, x, 2, 2, 4);
        av_vae_loss(c, &v, xt, 1.0f, &nll, NULL);
        av_ctx_seed(c, 8);
        av_gaussian_head_forward(c, &v.head, tv_enc(c, xt, &nets), &mu, &lv);
        got = av_gaussian_nll(c, tv_dec(c, av_reparameterize(c, mu, lv), &nets), v.x_logvar, xt);
        CHECK(same_tensor(nll, got), "av_vae_nll does not use the learned x_logvar");
        av_ctx_free(c);
        fd_init(&fc, "av_vae_loss (learned Gaussian variance)", fwd_vae_gauss, &v);
        for (i = 0; i < av_model_count(m); i++) fd_param(&fc, av_model_param(m, i));
        fd_run(&fc);
    }
    av_model_free(m);
}

/* The autoencoder is its encoder, the activation, then the mirrored decoder. */
static void test_autoencoder(void) {
    int sizes[3] = {5, 4, 2}, i, j;
    float x[15];
    fd_case fc;
    ae_case u;
    av_model *m = av_model_new(11);
    av_ctx *c = av_ctx_new();
    av_tensor *code, *out;
    u.ae = av_autoencoder_new(m, "ae", 2, sizes, AV_ACT_TANH);
    CHECK(av_model_count(m) == 8, "autoencoder has %d parameter tensors, want 8", av_model_count(m));
    CHECK(av_model_find(m, "ae.enc.1.weight") && av_model_find(m, "ae.enc.1.weight")->shape[0] == 2 &&
              av_model_find(m, "ae.dec.0.weight") && av_model_find(m, "ae.dec.0.weight")->shape[1] == 2 &&
              av_model_find(m, "ae.dec.1.weight")->shape[0] == 5,
          "autoencoder parameter names or mirrored shapes are wrong");
    tr_fill(x, 15, 0, 1);
    out = av_autoencoder_forward(c, &u.ae, av_from(c, x, 2, 3, 5), &code);
    CHECK(out->ndim == 2 && out->shape[0] == 3 && out->shape[1] == 5 && code->shape[1] == 2, "autoencoder shapes");
    /* the same computation written out in double */
    for (i = 0; i < 3; i++) {
        double hid[4], z[2], hid2[4];
        int k, l;
        for (k = 0; k < 4; k++) {
            const av_tensor *w = av_model_find(m, "ae.enc.0.weight"), *bb = av_model_find(m, "ae.enc.0.bias");
            double acc = bb->data[k];
            for (l = 0; l < 5; l++) acc += (double)w->data[k * 5 + l] * x[i * 5 + l];
            hid[k] = tanh(acc);
        }
        for (k = 0; k < 2; k++) {
            const av_tensor *w = av_model_find(m, "ae.enc.1.weight"), *bb = av_model_find(m, "ae.enc.1.bias");
            double acc = bb->data[k];
            for (l = 0; l < 4; l++) acc += (double)w->data[k * 4 + l] * hid[l];
            z[k] = tanh(acc);
            CHECK_CLOSE(code->data[i * 2 + k], z[k], 1e-6, 1e-5, "autoencoder code");
        }
        for (k = 0; k < 4; k++) {
            const av_tensor *w = av_model_find(m, "ae.dec.0.weight"), *bb = av_model_find(m, "ae.dec.0.bias");
            double acc = bb->data[k];
            for (l = 0; l < 2; l++) acc += (double)w->data[k * 2 + l] * z[l];
            hid2[k] = tanh(acc);
        }
        for (j = 0; j < 5; j++) {
            const av_tensor *w = av_model_find(m, "ae.dec.1.weight"), *bb = av_model_find(m, "ae.dec.1.bias");
            double acc = bb->data[j];
            for (l = 0; l < 4; l++) acc += (double)w->data[j * 4 + l] * hid2[l];
            CHECK_CLOSE(out->data[i * 5 + j], acc, 1e-6, 1e-5, "autoencoder output");
        }
    }
    av_ctx_free(c);
    u.x = x;
    u.B = 3;
    u.D = 5;
    fd_init(&fc, "av_autoencoder (Bernoulli)", fwd_ae, &u);
    for (i = 0; i < av_model_count(m); i++) fd_param(&fc, av_model_param(m, i));
    fd_run(&fc);
    av_model_free(m);
}

static void test_gradients(void) {
    fd_case fc;
    float mu[12], lv[12], a[24], b[24], m3[12], x3[12], lv3[12], lvD[4], lv0[1];
    float nll4[4], kl4[4], lg[18], xb[18], mu6[6], lv6[6];
    int form;

    tr_fill(mu, 12, -1, 1);
    tr_fill(lv, 12, -1.5, 1);
    fd_init(&fc, "av_reparameterize", fwd_reparam, NULL);
    fd_var(&fc, "mu", mu, 2, 3, 4);
    fd_var(&fc, "logvar", lv, 2, 3, 4);
    fd_run(&fc);
    fd_init(&fc, "tanh(av_reparameterize)", fwd_reparam_tanh, NULL);
    fd_var(&fc, "mu", mu, 2, 3, 4);
    fd_var(&fc, "logvar", lv, 2, 3, 4);
    fd_run(&fc);

    tr_fill(a, 15, -1.5, 1.5);
    tr_fill(b, 15, -1.5, 1);
    fd_init(&fc, "av_kl_std_normal", fwd_kl, NULL);
    fd_var(&fc, "mu", a, 2, 3, 5);
    fd_var(&fc, "logvar", b, 2, 3, 5);
    fd_run(&fc);
    /* 3-D input: the sum runs over both trailing axes */
    tr_fill(a, 24, -1.5, 1.5);
    tr_fill(b, 24, -1.5, 1);
    fd_init(&fc, "av_kl_std_normal [2,3,4]", fwd_kl, NULL);
    fd_var(&fc, "mu", a, 3, 2, 3, 4);
    fd_var(&fc, "logvar", b, 3, 2, 3, 4);
    fd_run(&fc);

    tr_fill(a, 18, -4, 4);
    tr_fill(b, 18, 0, 1);
    fd_init(&fc, "av_bernoulli_nll", fwd_bern, NULL);
    fd_var(&fc, "logits", a, 2, 3, 6);
    fd_var(&fc, "x", b, 2, 3, 6);
    fd_run(&fc);

    tr_fill(m3, 12, -1.5, 1.5);
    tr_fill(x3, 12, -1.5, 1.5);
    tr_fill(lv3, 12, -1, 1);
    tr_fill(lvD, 4, -1, 1);
    lv0[0] = 0.3f;
    for (form = 0; form < 3; form++) {
        fd_init(&fc, form == 0 ? "av_gaussian_nll logvar [B,D]" : form == 1 ? "av_gaussian_nll logvar [D]" : "av_gaussian_nll logvar 0-d",
                fwd_gnll, NULL);
        fd_var(&fc, "mean", m3, 2, 3, 4);
        fd_var(&fc, "x", x3, 2, 3, 4);
        if (form == 0) fd_var(&fc, "logvar", lv3, 2, 3, 4);
        else if (form == 1) fd_var(&fc, "logvar", lvD, 1, 4);
        else fd_var(&fc, "logvar", lv0, 0);
        fd_run(&fc);
    }

    fd_init(&fc, "av_gaussian_log_prob", fwd_glp, NULL);
    fd_var(&fc, "z", x3, 2, 3, 4);
    fd_var(&fc, "mu", m3, 2, 3, 4);
    fd_var(&fc, "logvar", lv3, 2, 3, 4);
    fd_run(&fc);
    fd_init(&fc, "av_gaussian_log_prob(NULL, NULL)", fwd_glp, NULL);
    fd_var(&fc, "z", x3, 2, 3, 4);
    fd_run(&fc);

    tr_fill(nll4, 4, 1, 10);
    tr_fill(kl4, 4, 0, 3);
    fd_beta = 0.37f;
    fd_init(&fc, "av_neg_elbo beta 0.37", fwd_elbo_leaves, NULL);
    fd_var(&fc, "nll", nll4, 1, 4);
    fd_var(&fc, "kl", kl4, 1, 4);
    fd_run(&fc);
    tr_fill(lg, 18, -3, 3);
    tr_fill(xb, 18, 0, 1);
    tr_fill(mu6, 6, -1, 1);
    tr_fill(lv6, 6, -1, 1);
    for (form = 0; form < 2; form++) {
        fd_beta = form ? 1.0f : 2.5f; /* beta == 1 takes a different path inside */
        fd_init(&fc, form ? "av_neg_elbo(bernoulli, kl, 1)" : "av_neg_elbo(bernoulli, kl, 2.5)", fwd_elbo_parts, NULL);
        fd_var(&fc, "logits", lg, 2, 3, 6);
        fd_var(&fc, "x", xb, 2, 3, 6);
        fd_var(&fc, "mu", mu6, 2, 3, 2);
        fd_var(&fc, "logvar", lv6, 2, 3, 2);
        fd_run(&fc);
    }

    /* end to end through the model parameters, Bernoulli and learned-variance Gaussian decoders */
    for (form = 0; form < 2; form++) {
        av_model *m = av_model_new(77 + form);
        e2e u;
        int enc_sizes[2], dec_sizes[3], i;
        float x[3 * 5];
        enc_sizes[0] = 5; enc_sizes[1] = 6;
        dec_sizes[0] = 2; dec_sizes[1] = 6; dec_sizes[2] = 5;
        memset(&u, 0, sizeof u);
        u.enc = av_mlp_new(m, "enc", 1, enc_sizes, AV_ACT_TANH);
        u.head = av_gaussian_head_new(m, "head", 6, 2);
        u.dec = av_mlp_new(m, "dec", 2, dec_sizes, AV_ACT_TANH);
        if (form) {
            u.dec_logvar = av_param(m, "dec.logvar", AV_INIT_UNIFORM, 0.5f, 1, 5);
            tr_fill(x, 15, -1.5, 1.5);
        } else {
            tr_fill(x, 15, 0, 1);
        }
        u.x = x;
        u.B = 3;
        u.D = 5;
        fd_init(&fc, form ? "model (Gaussian decoder)" : "model (Bernoulli decoder)", fwd_e2e, &u);
        for (i = 0; i < av_model_count(m); i++) fd_param(&fc, av_model_param(m, i));
        fd_run(&fc);
        av_model_free(m);
    }
    /* the checker catches a gradient that is off by a few percent */
    tr_fill(a, 15, 0.5, 1.5);
    tr_fill(b, 15, -1, 1);
    fd_init(&fc, "self-test", fwd_kl_wrong, NULL);
    fd_var(&fc, "mu", a, 2, 3, 5);
    fd_var(&fc, "logvar", b, 2, 3, 5);
    fd_quiet = 1;
    fd_bad = 0;
    fd_run(&fc);
    fd_quiet = 0;
    CHECK(fd_bad == 15, "FD self-test: a gradient 3%% off was caught in %d of 15 elements", fd_bad);
}

/* ======================================================================= */
/* 2. closed forms                                                         */
/* ======================================================================= */
static void test_kl_closed_form(av_ctx *c) {
    float mu[2 * 3 * 4], lv[2 * 3 * 4], hm[3] = {1.0f, 0.0f, -2.0f}, hl[3] = {1.0f, 0.0f, 0.0f};
    av_tensor *kl;
    int b, j;
    av_ctx_reset(c);
    /* hand-derived: mu = 1, sigma^2 = e: 0.5 (1 + e - 1 - 1) = (e - 1) / 2; mu = 0, sigma = 1: 0;
       mu = -2, sigma = 1: 0.5 * 4 = 2 */
    kl = av_kl_std_normal(c, av_from(c, hm, 2, 3, 1), av_from(c, hl, 2, 3, 1));
    CHECK(kl->ndim == 1 && kl->shape[0] == 3, "kl: output shape is not [B]");
    CHECK_CLOSE(kl->data[0], 0.5 * (exp(1.0) - 1.0), 0, 1e-7, "KL(N(1, e) || N(0, 1))");
    CHECK(kl->data[1] == 0.0f, "KL(N(0, 1) || N(0, 1)) = %.9g, want exactly 0", (double)kl->data[1]);
    CHECK_CLOSE(kl->data[2], 2.0, 0, 1e-7, "KL(N(-2, 1) || N(0, 1))");
    /* random [2, 3, 4]: per example sum over the 12 trailing elements */
    tr_fill(mu, 24, -2, 2);
    tr_fill(lv, 24, -3, 2);
    kl = av_kl_std_normal(c, av_from(c, mu, 3, 2, 3, 4), av_from(c, lv, 3, 2, 3, 4));
    CHECK(kl->ndim == 1 && kl->shape[0] == 2, "kl [2,3,4]: output shape is not [2]");
    for (b = 0; b < 2; b++) {
        double want = 0;
        for (j = 0; j < 12; j++) {
            double m = mu[b * 12 + j], l = lv[b * 12 + j];
            want += 0.5 * (m * m + exp(l) - 1 - l);
        }
        CHECK_CLOSE(kl->data[b], want, 1e-6, 1e-6, "KL [2,3,4] vs 0.5 sum(mu^2 + s^2 - 1 - log s^2)");
    }
    /* tiny logvar: e^lv - 1 - lv ~ lv^2 / 2 = 5e-7 must survive the cancellation
       (the sum is in double; an fp32 e^lv, off by up to 6e-8, would miss by ~5%) */
    {
        float m0 = 0, l0 = 1e-3f;
        kl = av_kl_std_normal(c, av_from(c, &m0, 2, 1, 1), av_from(c, &l0, 2, 1, 1));
        CHECK_CLOSE(kl->data[0], 0.5 * (exp((double)l0) - 1 - (double)l0), 0, 1e-3, "KL with logvar 1e-3 (cancellation)");
    }
}

/* -log Bernoulli(x | sigmoid(l)) = log(1 + e^l) - l x, evaluated without overflow or cancellation */
static double ref_bce(double l, double x) {
    return l > 0 ? (1 - x) * l + log1p(exp(-l)) : -l * x + log1p(exp(l));
}

static void test_bernoulli_closed_form(av_ctx *c) {
    /* one element per example so each value is visible */
    float L[8] = {100, 100, -100, -100, 1000, 1000, -1000, -1000}, X[8] = {1, 0, 1, 0, 1, 0, 1, 0};
    float lg[3 * 7], xs[3 * 7];
    av_tensor *l, *x, *nll, *loss;
    int i, b, j, finite = 1;
    av_ctx_reset(c);
    l = av_from(c, L, 2, 8, 1);
    x = av_from(c, X, 2, 8, 1);
    av_requires_grad(c, l);
    av_requires_grad(c, x);
    nll = av_bernoulli_nll(c, l, x);
    for (i = 0; i < 8; i++) {
        double want = ref_bce(L[i], X[i]);
        char what[160];
        snprintf(what, sizeof what, "bernoulli nll logit %g x %g", (double)L[i], (double)X[i]);
        CHECK(isfinite(nll->data[i]) && nll->data[i] >= 0, "%s: %g is not finite and >= 0", what, (double)nll->data[i]);
        /* logit 100, x 1: e^-100 = 3.7e-44, zero at any sensible scale */
        CHECK_CLOSE(nll->data[i], want, 1e-30, 1e-7, what);
    }
    loss = av_sum_all(c, nll);
    av_backward(c, loss);
    for (i = 0; i < 8; i++) {
        double sig = 1.0 / (1.0 + exp(-(double)L[i]));
        finite &= isfinite(l->grad[i]) && isfinite(x->grad[i]);
        CHECK_CLOSE(l->grad[i], sig - X[i], 1e-7, 0, "bernoulli d/dlogit at an extreme logit");
        CHECK_CLOSE(x->grad[i], -L[i], 0, 1e-7, "bernoulli d/dx at an extreme logit");
    }
    CHECK(finite, "bernoulli gradients at extreme logits are not finite");
    /* moderate logits, fractional x: vs the naive -x log p - (1-x) log(1-p) in double */
    av_ctx_reset(c);
    tr_fill(lg, 21, -6, 6);
    tr_fill(xs, 21, 0, 1);
    nll = av_bernoulli_nll(c, av_from(c, lg, 2, 3, 7), av_from(c, xs, 2, 3, 7));
    for (b = 0; b < 3; b++) {
        double want = 0;
        for (j = 0; j < 7; j++) {
            double p = 1.0 / (1.0 + exp(-(double)lg[b * 7 + j])), xv = xs[b * 7 + j];
            want += -xv * log(p) - (1 - xv) * log(1 - p);
        }
        CHECK_CLOSE(nll->data[b], want, 1e-6, 2e-6, "bernoulli nll vs -x log p - (1-x) log(1-p)");
    }
}

static void test_gaussian_closed_form(av_ctx *c) {
    float m[3 * 4], x[3 * 4], lv[3 * 4], z[2 * 3];
    av_tensor *out;
    int form, b, j;
    tr_fill(m, 12, -2, 2);
    tr_fill(x, 12, -2, 2);
    tr_fill(lv, 12, -2, 2);
    for (form = 0; form < 3; form++) {
        av_tensor *lvt;
        av_ctx_reset(c);
        lvt = form == 0 ? av_from(c, lv, 2, 3, 4) : form == 1 ? av_from(c, lv, 1, 4) : av_from(c, lv, 0);
        out = av_gaussian_nll(c, av_from(c, m, 2, 3, 4), lvt, av_from(c, x, 2, 3, 4));
        CHECK(out->ndim == 1 && out->shape[0] == 3, "gaussian nll: output shape is not [B]");
        for (b = 0; b < 3; b++) {
            double want = 0, mag = 0;
            for (j = 0; j < 4; j++) {
                double l = form == 0 ? lv[b * 4 + j] : form == 1 ? lv[j] : lv[0];
                double t = 0.5 * (LOG_2PI + l + sq((double)x[b * 4 + j] - m[b * 4 + j]) * exp(-l));
                want += t;
                mag += fabs(t);
            }
            /* fp32 op chain: a few ulps of the largest terms */
            CHECK_CLOSE(out->data[b], want, 1e-6 * mag, 0, form == 0 ? "gaussian nll logvar [B,D] vs formula"
                        : form == 1 ? "gaussian nll logvar [D] vs formula" : "gaussian nll 0-d logvar vs formula");
        }
        /* log prob is its negative */
        out = av_gaussian_log_prob(c, av_from(c, x, 2, 3, 4), av_from(c, m, 2, 3, 4), lvt);
        for (b = 0; b < 3; b++) {
            double want = 0;
            for (j = 0; j < 4; j++) {
                double l = form == 0 ? lv[b * 4 + j] : form == 1 ? lv[j] : lv[0];
                want -= 0.5 * (LOG_2PI + l + sq((double)x[b * 4 + j] - m[b * 4 + j]) * exp(-l));
            }
            CHECK_CLOSE(out->data[b], want, 2e-5, 2e-6, "gaussian log prob vs formula");
        }
    }
    /* standard normal: NULL mu and logvar; a hand value: z = 0 in 3 dims gives -1.5 log 2pi */
    av_ctx_reset(c);
    tr_fill(z, 6, -3, 3);
    z[3] = z[4] = z[5] = 0;
    out = av_gaussian_log_prob(c, av_from(c, z, 2, 2, 3), NULL, NULL);
    CHECK_CLOSE(out->data[0], -0.5 * (3 * LOG_2PI + sq(z[0]) + sq(z[1]) + sq(z[2])), 1e-6, 1e-6, "log N(z | 0, I)");
    CHECK_CLOSE(out->data[1], -1.5 * LOG_2PI, 0, 1e-7, "log N(0 | 0, I_3) = -1.5 log 2pi");
    /* neg ELBO: mean over the batch of nll + beta kl */
    {
        float nll[5] = {3.5f, 7.25f, 1.0f, 0.5f, 12.0f}, kl[5] = {0.5f, 2.0f, 0.25f, 3.0f, 1.5f};
        float betas[3] = {1.0f, 0.37f, 0.0f};
        int k;
        for (k = 0; k < 3; k++) {
            double want = 0;
            av_tensor *e = av_neg_elbo(c, av_from(c, nll, 1, 5), av_from(c, kl, 1, 5), betas[k]);
            for (j = 0; j < 5; j++) want += (nll[j] + (double)betas[k] * kl[j]) / 5;
            CHECK(e->size == 1, "neg elbo: not a scalar");
            CHECK_CLOSE(av_item(e), want, 0, 1e-6, "neg elbo = mean(nll + beta kl)");
        }
    }
}

static double naive_lme(const double *v, int n) {
    double s = 0;
    int i;
    for (i = 0; i < n; i++) s += exp(v[i]);
    return log(s / n);
}

static void test_log_mean_exp(void) {
    double big[2] = {1000, 1000}, neg[2] = {-1000, -1000}, mix[6] = {1, 2, 3, -50, 10, 0.5};
    double shifted[6], one = -7.25, ninf[3] = {-INFINITY, 0, -INFINITY}, allninf[2] = {-INFINITY, -INFINITY};
    double huge[2] = {1000, 1000 + log(3.0)}, v[200];
    int i;
    CHECK_CLOSE(av_log_mean_exp(big, 2), 1000.0, 0, 1e-15, "log_mean_exp(1000, 1000)");
    CHECK_CLOSE(av_log_mean_exp(neg, 2), -1000.0, 0, 1e-15, "log_mean_exp(-1000, -1000)");
    CHECK_CLOSE(av_log_mean_exp(huge, 2), 1000 + log(2.0), 0, 1e-15, "log_mean_exp(1000, 1000 + log 3) = 1000 + log 2");
    CHECK_CLOSE(av_log_mean_exp(mix, 6), naive_lme(mix, 6), 0, 1e-14, "log_mean_exp mixed magnitudes vs naive");
    /* shift invariance: lme(v + s) = lme(v) + s, tested where the naive form overflows */
    for (i = 0; i < 6; i++) shifted[i] = mix[i] + 800;
    CHECK_CLOSE(av_log_mean_exp(shifted, 6), naive_lme(mix, 6) + 800, 0, 1e-14, "log_mean_exp(v + 800) = lme(v) + 800");
    for (i = 0; i < 6; i++) shifted[i] = mix[i] - 900;
    CHECK_CLOSE(av_log_mean_exp(shifted, 6), naive_lme(mix, 6) - 900, 0, 1e-14, "log_mean_exp(v - 900) = lme(v) - 900");
    CHECK(av_log_mean_exp(&one, 1) == one, "log_mean_exp of one value is that value");
    CHECK_CLOSE(av_log_mean_exp(ninf, 3), log(1.0 / 3.0), 0, 1e-15, "log_mean_exp(-inf, 0, -inf) = log 1/3");
    CHECK(av_log_mean_exp(allninf, 2) == -INFINITY, "log_mean_exp(-inf, -inf) = %g, want -inf", av_log_mean_exp(allninf, 2));
    for (i = 0; i < 200; i++) v[i] = tr_in(-30, 30);
    CHECK_CLOSE(av_log_mean_exp(v, 200), naive_lme(v, 200), 0, 1e-13, "log_mean_exp of 200 values in [-30, 30]");
}

static void test_warmup_interpolate(av_ctx *c) {
    long steps[6] = {0, 1, 25, 99, 100, 1000};
    float z0[4] = {1.0f, -2.0f, 0.5f, 3.0f}, z1[4] = {-1.0f, 4.0f, 0.5f, 0.0f}, r0[3], r1[3];
    av_tensor *t;
    int i, j, exact0 = 1, exact1 = 1;
    for (i = 0; i < 6; i++) {
        double want = 2.5 * (steps[i] < 100 ? (double)steps[i] / 100.0 : 1.0);
        CHECK_CLOSE(av_kl_warmup(steps[i], 100, 2.5f), want, 0, 1e-6, "kl warmup 2.5 min(1, step/100)");
    }
    CHECK(av_kl_warmup(0, 100, 1.0f) == 0.0f, "kl warmup at step 0 is not 0");
    CHECK(av_kl_warmup(5, 0, 0.7f) == 0.7f, "kl warmup with no warm-up steps is not beta_max");

    av_ctx_reset(c);
    t = av_interpolate(c, z0, z1, 4, 5);
    CHECK(t->ndim == 2 && t->shape[0] == 5 && t->shape[1] == 4, "interpolate: shape is not [5, 4]");
    for (i = 0; i < 5; i++)
        for (j = 0; j < 4; j++) {
            double tt = i / 4.0, want = z0[j] + tt * ((double)z1[j] - z0[j]);
            CHECK_CLOSE(t->data[i * 4 + j], want, 1e-6, 1e-6, "interpolate rows z0 + t (z1 - z0)");
        }
    for (j = 0; j < 4; j++) {
        exact0 &= t->data[j] == z0[j];
        exact1 &= t->data[16 + j] == z1[j];
    }
    CHECK(exact0, "interpolate: first row is not exactly z0");
    CHECK(exact1, "interpolate: last row is not exactly z1 (values exact in binary)");
    t = av_interpolate(c, z0, z1, 4, 3); /* midpoint of dyadic values is exact */
    for (j = 0; j < 4; j++) CHECK(t->data[4 + j] == 0.5f * (z0[j] + z1[j]), "interpolate midpoint %d", j);
    t = av_interpolate(c, z0, z1, 4, 1);
    CHECK(t->shape[0] == 1 && memcmp(t->data, z0, sizeof z0) == 0, "interpolate with 1 step is not z0");
    tr_fill(r0, 3, -3, 3);
    tr_fill(r1, 3, -3, 3);
    t = av_interpolate(c, r0, r1, 3, 11);
    for (i = 0; i < 11; i++)
        for (j = 0; j < 3; j++)
            CHECK_CLOSE(t->data[i * 3 + j], r0[j] + (i / 10.0) * ((double)r1[j] - r0[j]), 3e-6, 0, "interpolate random endpoints");
}

/* With N draws, the sample mean has standard error sigma / sqrt(N) and the
   sample standard deviation ~ sigma / sqrt(2N) (normal data); a fraction p
   has sqrt(p (1-p) / N). Tolerance 5 standard errors: a false alarm has
   probability ~6e-7 per check (and the seed is fixed anyway). */
static void test_reparam_stats(av_ctx *c) {
    enum { N = 200000, D = 3 };
    float mu[D] = {0.5f, -2.0f, 3.0f}, lv[D] = {0.0f, 1.0f, -2.0f};
    av_tensor *mt, *lt, *z, *z2;
    int i, j, same = 1, differ = 0, stream = 1;
    av_ctx_reset(c);
    mt = av_zeros(c, 2, N, D);
    lt = av_zeros(c, 2, N, D);
    for (i = 0; i < N; i++)
        for (j = 0; j < D; j++) { mt->data[i * D + j] = mu[j]; lt->data[i * D + j] = lv[j]; }
    av_ctx_seed(c, 2024);
    z = av_reparameterize(c, mt, lt);
    for (j = 0; j < D; j++) {
        double s1 = 0, s2 = 0, sd = exp(0.5 * lv[j]), mean, var, in1 = 0, in2 = 0;
        char what[80];
        for (i = 0; i < N; i++) {
            double v = z->data[i * D + j], e = (v - mu[j]) / sd;
            s1 += v;
            s2 += v * v;
            in1 += fabs(e) < 1;
            in2 += fabs(e) < 2;
        }
        mean = s1 / N;
        var = s2 / N - mean * mean;
        snprintf(what, sizeof what, "reparam dim %d sample mean (mu %g)", j, (double)mu[j]);
        CHECK_CLOSE(mean, mu[j], 5 * sd / sqrt((double)N), 0, what);
        snprintf(what, sizeof what, "reparam dim %d sample std (exp(lv/2) = %g)", j, sd);
        CHECK_CLOSE(sqrt(var), sd, 5 * sd / sqrt(2.0 * N), 0, what);
        CHECK_CLOSE(in1 / N, 0.682689492, 5 * sqrt(0.6827 * 0.3173 / N), 0, "reparam P(|eps| < 1)");
        CHECK_CLOSE(in2 / N, 0.954499736, 5 * sqrt(0.9545 * 0.0455 / N), 0, "reparam P(|eps| < 2)");
    }
    /* same seed, same z; another seed, other z */
    av_ctx_seed(c, 2024);
    z2 = av_reparameterize(c, mt, lt);
    for (i = 0; i < 64; i++) same &= z2->data[i] == z->data[i];
    CHECK(same, "reparameterize: same seed gave different z");
    av_ctx_seed(c, 2025);
    z2 = av_reparameterize(c, mt, lt);
    for (i = 0; i < 64; i++) differ += z2->data[i] != z->data[i];
    CHECK(differ > 60, "reparameterize: another seed gave the same z");
    /* eps of element e is Philox draw e of the op's stream (offset 0 after seeding) */
    av_ctx_seed(c, 99);
    z2 = av_reparameterize(c, mt, lt);
    for (i = 0; i < 3000; i++) {
        double e = ref_normal(99, 0, (uint64_t)i), want = mu[i % D] + exp(0.5 * lv[i % D]) * e;
        stream &= fabs(z2->data[i] - want) <= 1e-6 * (1 + fabs(want));
    }
    CHECK(stream, "reparameterize: z is not mu + exp(lv/2) * (Philox normal draw e of stream offset 0)");
}

/* ======================================================================= */
/* 3. linear-Gaussian VAE with an exact log p(x)                           */
/* ======================================================================= */
/* prior z ~ N(0, I_2), decoder p(x | z) = N(W z + b, s2 I_3). Then
     p(x)     = N(b, W W^T + s2 I)                     (Cholesky below)
     p(z | x) = N(m, S), S = (I + W^T W / s2)^-1, m = S W^T (x - b) / s2
   and for q = N(mq, diag vq)
     ELBO = -D/2 log(2 pi s2) - (|x - W mq - b|^2 + sum_ik W_ik^2 vq_k) / (2 s2)
            - d/2 log 2pi - (|mq|^2 + sum vq) / 2 + sum_k (log(2 pi e vq_k)) / 2
          = log p(x) - KL(q || p(z | x)).
   Everything in double from the float values the library sees. */
#define LG_D 3
#define LG_Z 2
typedef struct lg_model {
    float W[LG_D * LG_Z]; /* [D, d] row-major: av_linear's [out, in] */
    float b[LG_D];
    float lvx;            /* log s2 */
} lg_model;

static av_tensor *lg_nll(av_ctx *c, av_tensor *z, av_tensor *x, void *user) {
    const lg_model *g = (const lg_model *)user;
    av_tensor *W = av_from(c, g->W, 2, LG_D, LG_Z), *b = av_from(c, g->b, 1, LG_D);
    return av_gaussian_nll(c, av_linear(c, z, W, b), av_scalar(c, g->lvx), x);
}

static double lg_log_px(const lg_model *g, const double *x) {
    double C[LG_D][LG_D], L[LG_D][LG_D], y[LG_D], s2 = exp((double)g->lvx), logdet = 0, quad = 0;
    int i, j, k;
    for (i = 0; i < LG_D; i++)
        for (j = 0; j < LG_D; j++) {
            C[i][j] = i == j ? s2 : 0;
            for (k = 0; k < LG_Z; k++) C[i][j] += (double)g->W[i * LG_Z + k] * g->W[j * LG_Z + k];
            L[i][j] = 0;
        }
    for (j = 0; j < LG_D; j++) {
        double d = C[j][j];
        for (k = 0; k < j; k++) d -= L[j][k] * L[j][k];
        L[j][j] = sqrt(d);
        for (i = j + 1; i < LG_D; i++) {
            double v = C[i][j];
            for (k = 0; k < j; k++) v -= L[i][k] * L[j][k];
            L[i][j] = v / L[j][j];
        }
    }
    for (i = 0; i < LG_D; i++) {
        double v = x[i] - g->b[i];
        for (k = 0; k < i; k++) v -= L[i][k] * y[k];
        y[i] = v / L[i][i];
        quad += y[i] * y[i];
        logdet += 2 * log(L[i][i]);
    }
    return -0.5 * (LG_D * LOG_2PI + logdet + quad);
}

static void lg_posterior(const lg_model *g, const double *x, double *m, double S[2][2]) {
    double s2 = exp((double)g->lvx), P[2][2], det, r[2] = {0, 0};
    int i, j, k;
    for (i = 0; i < 2; i++)
        for (j = 0; j < 2; j++) {
            P[i][j] = i == j;
            for (k = 0; k < LG_D; k++) P[i][j] += (double)g->W[k * LG_Z + i] * g->W[k * LG_Z + j] / s2;
        }
    det = P[0][0] * P[1][1] - P[0][1] * P[1][0];
    S[0][0] = P[1][1] / det; S[1][1] = P[0][0] / det;
    S[0][1] = -P[0][1] / det; S[1][0] = -P[1][0] / det;
    for (k = 0; k < LG_D; k++)
        for (i = 0; i < 2; i++) r[i] += (double)g->W[k * LG_Z + i] * (x[k] - g->b[k]) / s2;
    m[0] = S[0][0] * r[0] + S[0][1] * r[1];
    m[1] = S[1][0] * r[0] + S[1][1] * r[1];
}

static double lg_elbo(const lg_model *g, const double *x, const double *mq, const double *vq) {
    double s2 = exp((double)g->lvx), res = 0, tr = 0, rec, prior, ent = 0;
    int i, k;
    for (i = 0; i < LG_D; i++) {
        double mean = g->b[i];
        for (k = 0; k < LG_Z; k++) {
            mean += (double)g->W[i * LG_Z + k] * mq[k];
            tr += sq(g->W[i * LG_Z + k]) * vq[k];
        }
        res += sq(x[i] - mean);
    }
    rec = -0.5 * LG_D * (LOG_2PI + log(s2)) - 0.5 * (res + tr) / s2;
    prior = -0.5 * LG_Z * LOG_2PI - 0.5 * (sq(mq[0]) + sq(mq[1]) + vq[0] + vq[1]);
    for (k = 0; k < LG_Z; k++) ent += 0.5 * (LOG_2PI + 1 + log(vq[k]));
    return rec + prior + ent;
}

/* KL(N(mq, diag vq) || N(m, S)) */
static double lg_kl_q_post(const double *mq, const double *vq, const double *m, double S[2][2]) {
    double detS = S[0][0] * S[1][1] - S[0][1] * S[1][0], P[2][2], d0 = m[0] - mq[0], d1 = m[1] - mq[1];
    P[0][0] = S[1][1] / detS; P[1][1] = S[0][0] / detS; P[0][1] = P[1][0] = -S[0][1] / detS;
    return 0.5 * (P[0][0] * vq[0] + P[1][1] * vq[1] + P[0][0] * d0 * d0 + 2 * P[0][1] * d0 * d1 + P[1][1] * d1 * d1 - 2 +
                  log(detS) - log(vq[0]) - log(vq[1]));
}

static double ref_lme(const double *v, int n) {
    double mx = v[0], s = 0;
    int i;
    for (i = 1; i < n; i++) if (v[i] > mx) mx = v[i];
    for (i = 0; i < n; i++) s += exp(v[i] - mx);
    return mx + log(s / n);
}

/* log N(v | mean, var) for one coordinate */
static double ref_lognormal(double v, double mean, double var) { return -0.5 * (LOG_2PI + log(var) + sq(v - mean) / var); }

#define LG_NX 4
static void test_linear_gaussian(av_ctx *c) {
    /* orthogonal columns (1.5, .75, -.75) . (1, -1, 1) = 0: posterior covariance diagonal */
    static const float Wo[LG_D * LG_Z] = {1.5f, 1.0f, 0.75f, -1.0f, -0.75f, 1.0f};
    static const float Wn[LG_D * LG_Z] = {1.2f, 0.3f, -0.4f, 0.9f, 0.7f, -0.5f};
    static const float bb[LG_D] = {0.2f, -0.1f, 0.4f};
    static const int ks[4] = {1, 10, 100, 1000};
    enum { REP = 400 };
    lg_model go, gn;
    double X[LG_NX][LG_D], logpx[LG_NX], m[2], S[2][2], mq[LG_NX][2], vq[LG_NX][2], elbo[LG_NX];
    double mean_k[4][LG_NX], se_k[4][LG_NX];
    double *lp = (double *)malloc(sizeof(double) * LG_NX * REP);
    int i, j, b, r, ki;

    memcpy(go.W, Wo, sizeof Wo); memcpy(go.b, bb, sizeof bb); go.lvx = (float)log(0.25);
    memcpy(gn.W, Wn, sizeof Wn); memcpy(gn.b, bb, sizeof bb); gn.lvx = (float)log(0.25);
    /* data from the non-orthogonal model, the last point an outlier */
    for (b = 0; b < LG_NX; b++) {
        double z0 = tr_normal(), z1 = tr_normal();
        for (i = 0; i < LG_D; i++)
            X[b][i] = Wn[i * 2] * z0 + Wn[i * 2 + 1] * z1 + bb[i] + 0.5 * tr_normal();
    }
    X[LG_NX - 1][0] = 3; X[LG_NX - 1][1] = -3; X[LG_NX - 1][2] = 3;
    for (b = 0; b < LG_NX; b++)
        for (i = 0; i < LG_D; i++) X[b][i] = (float)X[b][i]; /* the library sees floats */

    /* (a) a deliberately worse diagonal q: mean shifted, variances 2 S_ii.
       Weights p(z|x)/q(z) stay bounded iff S^-1 - diag(1/vq) is PSD (checked),
       so the IWAE estimates have finite variance. */
    for (b = 0; b < LG_NX; b++) {
        double kl, P00, P01, P11;
        logpx[b] = lg_log_px(&gn, X[b]);
        lg_posterior(&gn, X[b], m, S);
        mq[b][0] = (float)(m[0] + 0.3); mq[b][1] = (float)(m[1] - 0.2);
        vq[b][0] = exp((double)(float)log(2 * S[0][0]));
        vq[b][1] = exp((double)(float)log(2 * S[1][1]));
        elbo[b] = lg_elbo(&gn, X[b], mq[b], vq[b]);
        kl = lg_kl_q_post(mq[b], vq[b], m, S);
        /* reference self-consistency: ELBO + KL(q || posterior) = log p(x) */
        CHECK_CLOSE(elbo[b] + kl, logpx[b], 1e-10, 1e-12, "reference: ELBO + KL(q||p(z|x)) = log p(x)");
        CHECK(elbo[b] < logpx[b] && kl > 0.1, "ELBO %g not below log p(x) %g by KL %g", elbo[b], logpx[b], kl);
        {
            double det = S[0][0] * S[1][1] - S[0][1] * S[1][0];
            P00 = S[1][1] / det - 1 / vq[b][0]; P11 = S[0][0] / det - 1 / vq[b][1]; P01 = -S[0][1] / det;
            CHECK(P00 > 0 && P00 * P11 - P01 * P01 > 0, "reference: IWAE weights would be unbounded");
        }
    }

    /* Monte-Carlo ELBO from the library's pieces (reparameterize, Gaussian
       NLL, analytic KL) vs the closed form: within 5 standard errors. */
    for (b = 0; b < LG_NX; b++) {
        enum { N = 20000 };
        av_tensor *mu, *lv, *x, *z, *nll, *kl, *ne;
        double s1 = 0, s2 = 0, mean, se;
        av_ctx_reset(c);
        mu = av_zeros(c, 2, N, 2); lv = av_zeros(c, 2, N, 2); x = av_zeros(c, 2, N, 3);
        for (i = 0; i < N; i++) {
            for (j = 0; j < 2; j++) { mu->data[i * 2 + j] = (float)mq[b][j]; lv->data[i * 2 + j] = (float)log(vq[b][j]); }
            for (j = 0; j < 3; j++) x->data[i * 3 + j] = (float)X[b][j];
        }
        av_ctx_seed(c, 500 + b);
        z = av_reparameterize(c, mu, lv);
        nll = lg_nll(c, z, x, &gn);
        kl = av_kl_std_normal(c, mu, lv);
        for (i = 0; i < N; i++) {
            double e = -((double)nll->data[i] + kl->data[i]);
            s1 += e;
            s2 += e * e;
        }
        mean = s1 / N;
        se = sqrt((s2 / N - mean * mean) / N);
        CHECK_CLOSE(mean, elbo[b], 5 * se + 1e-4, 0, "Monte-Carlo ELBO (library terms) vs closed form");
        CHECK(mean <= logpx[b] + 5 * se, "Monte-Carlo ELBO %g above log p(x) %g", mean, logpx[b]);
        ne = av_neg_elbo(c, nll, kl, 1.0f);
        CHECK_CLOSE(-av_item(ne), mean, 0, 1e-5, "av_neg_elbo = -(mean ELBO sample)");
    }

    /* iwae internals, exactly: rebuild every log-weight from the Philox
       normals (sample k draws from stream offset k, [B, d] in row-major
       order) and average in double */
    {
        enum { K = 3 };
        av_tensor *mu, *lv, *x;
        double got[LG_NX], lw[K];
        float eps[K][LG_NX][2];
        int k;
        av_ctx_reset(c);
        mu = av_zeros(c, 2, LG_NX, 2); lv = av_zeros(c, 2, LG_NX, 2); x = av_zeros(c, 2, LG_NX, 3);
        for (b = 0; b < LG_NX; b++) {
            for (j = 0; j < 2; j++) { mu->data[b * 2 + j] = (float)mq[b][j]; lv->data[b * 2 + j] = (float)log(vq[b][j]); }
            for (j = 0; j < 3; j++) x->data[b * 3 + j] = (float)X[b][j];
        }
        av_ctx_seed(c, 4242);
        for (k = 0; k < K; k++)
            for (b = 0; b < LG_NX; b++)
                for (j = 0; j < 2; j++) eps[k][b][j] = (float)ref_normal(4242, (uint64_t)k, (uint64_t)(b * 2 + j));
        av_iwae_log_px(c, x, mu, lv, K, lg_nll, &gn, got);
        for (b = 0; b < LG_NX; b++) {
            for (k = 0; k < K; k++) {
                double z[2], s2 = exp((double)gn.lvx), w = 0;
                for (j = 0; j < 2; j++) {
                    double var = exp((double)lv->data[b * 2 + j]);
                    z[j] = mu->data[b * 2 + j] + sqrt(var) * eps[k][b][j];
                    w += ref_lognormal(z[j], 0, 1) - ref_lognormal(z[j], mu->data[b * 2 + j], var);
                }
                for (i = 0; i < LG_D; i++)
                    w += ref_lognormal(X[b][i], gn.b[i] + gn.W[i * 2] * z[0] + gn.W[i * 2 + 1] * z[1], s2);
                lw[k] = w;
            }
            CHECK_CLOSE(got[b], ref_lme(lw, K), 1e-4, 1e-6, "iwae k=3 vs log-weights rebuilt from the RNG stream");
        }
    }

    /* (b) IWAE with k = 1, 10, 100, 1000: REP independent estimates per x
       (the batch holds each x REP = 400 times). E[L_k] is non-decreasing in k and
       bounded by log p(x); the averages carry Monte-Carlo error SE = sd/sqrt(REP).
       Tolerances: 4 SE (one-sided normal tail 3e-5) plus 1e-4 for the fp32
       log-weights (terms of ~10 nats, a few ulps each). */
    {
        int n = LG_NX * REP;
        av_tensor *mu, *lv, *x;
        av_ctx_reset(c);
        mu = av_zeros(c, 2, n, 2); lv = av_zeros(c, 2, n, 2); x = av_zeros(c, 2, n, 3);
        for (r = 0; r < REP; r++)
            for (b = 0; b < LG_NX; b++) {
                int row = r * LG_NX + b;
                for (j = 0; j < 2; j++) { mu->data[row * 2 + j] = (float)mq[b][j]; lv->data[row * 2 + j] = (float)log(vq[b][j]); }
                for (j = 0; j < 3; j++) x->data[row * 3 + j] = (float)X[b][j];
            }
        for (ki = 0; ki < 4; ki++) {
            int prev;
            av_ctx_seed(c, 1000 + ki);
            prev = av_set_grad_enabled(c, 1);
            av_iwae_log_px(c, x, mu, lv, ks[ki], lg_nll, &gn, lp);
            CHECK(av_set_grad_enabled(c, prev) == 1, "av_iwae_log_px did not restore grad mode");
            for (b = 0; b < LG_NX; b++) {
                double s1 = 0, s2 = 0;
                for (r = 0; r < REP; r++) { s1 += lp[r * LG_NX + b]; s2 += sq(lp[r * LG_NX + b]); }
                mean_k[ki][b] = s1 / REP;
                se_k[ki][b] = sqrt((s2 / REP - sq(s1 / REP)) / (REP - 1));
            }
        }
        for (b = 0; b < LG_NX; b++) {
            printf("info: IWAE x%d: exact log p(x) %.4f, ELBO %.4f; k=1 %.4f±%.4f k=10 %.4f±%.4f k=100 %.4f±%.4f k=1000 %.4f±%.4f\n",
                   b, logpx[b], elbo[b], mean_k[0][b], se_k[0][b], mean_k[1][b], se_k[1][b], mean_k[2][b], se_k[2][b],
                   mean_k[3][b], se_k[3][b]);
            CHECK_CLOSE(mean_k[0][b], elbo[b], 5 * se_k[0][b] + 1e-4, 0, "IWAE k=1 averages to the ELBO");
            for (ki = 0; ki < 4; ki++)
                CHECK(mean_k[ki][b] <= logpx[b] + 4 * se_k[ki][b] + 1e-4,
                      "IWAE k=%d x%d: mean %.5f exceeds log p(x) %.5f by more than 4 SE (%.5f)", ks[ki], b,
                      mean_k[ki][b], logpx[b], se_k[ki][b]);
            for (ki = 1; ki < 4; ki++)
                CHECK(mean_k[ki][b] >= mean_k[ki - 1][b] - 4 * sqrt(sq(se_k[ki][b]) + sq(se_k[ki - 1][b])) - 1e-4,
                      "IWAE x%d: k=%d mean %.5f below k=%d mean %.5f", b, ks[ki], mean_k[ki][b], ks[ki - 1], mean_k[ki - 1][b]);
            /* the gain from k = 1 to 1000 is real: many standard errors */
            CHECK(mean_k[3][b] - mean_k[0][b] > 4 * sqrt(sq(se_k[3][b]) + sq(se_k[0][b])),
                  "IWAE x%d: k=1000 (%.5f) not significantly above k=1 (%.5f)", b, mean_k[3][b], mean_k[0][b]);
            /* bias ~ Var(w)/(2k p^2): at k = 1000 the gap is a small fraction of the ELBO's */
            CHECK(logpx[b] - mean_k[3][b] < 0.1 * (logpx[b] - elbo[b]),
                  "IWAE x%d: k=1000 gap %.5f not < 0.1 x ELBO gap %.5f", b, logpx[b] - mean_k[3][b], logpx[b] - elbo[b]);
        }
    }

    /* (b2) the trainable IWAE bound, av_iwae_loss: k samples batched as k*B
       rows. Its per-example bound, rebuilt in double from the Philox
       normals of one stream (row j*B + b is sample j of example b), then on REP
       copies of each x: E[bound] rises with k, stays below log p(x) and is
       the closed-form ELBO at k = 1 (tolerances as in (b)). */
    {
        enum { K = 3 };
        static const int kt[3] = {1, 5, 50};
        int n = LG_NX * REP;
        double mk[3][LG_NX], sk[3][LG_NX];
        av_tensor *mu, *lv, *x, *bound, *loss;
        av_ctx_reset(c);
        mu = av_zeros(c, 2, LG_NX, 2); lv = av_zeros(c, 2, LG_NX, 2); x = av_zeros(c, 2, LG_NX, 3);
        for (b = 0; b < LG_NX; b++) {
            for (j = 0; j < 2; j++) { mu->data[b * 2 + j] = (float)mq[b][j]; lv->data[b * 2 + j] = (float)log(vq[b][j]); }
            for (j = 0; j < 3; j++) x->data[b * 3 + j] = (float)X[b][j];
        }
        av_ctx_seed(c, 4343);
        loss = av_iwae_loss(c, x, mu, lv, K, lg_nll, &gn, &bound);
        CHECK(bound->ndim == 1 && bound->shape[0] == LG_NX && loss->ndim == 0, "av_iwae_loss: bound not [B] or loss not a scalar");
        {
            double eps[K][LG_NX][2], lw[K], mean = 0;
            int k;
            for (k = 0; k < K; k++)
                for (b = 0; b < LG_NX; b++)
                    for (j = 0; j < 2; j++) eps[k][b][j] = ref_normal(4343, 0, (uint64_t)((k * LG_NX + b) * 2 + j));
            for (b = 0; b < LG_NX; b++) {
                for (k = 0; k < K; k++) {
                    double z[2], s2 = exp((double)gn.lvx), w = 0;
                    for (j = 0; j < 2; j++) {
                        double var = exp((double)lv->data[b * 2 + j]);
                        z[j] = mu->data[b * 2 + j] + sqrt(var) * eps[k][b][j];
                        w += ref_lognormal(z[j], 0, 1) - ref_lognormal(z[j], mu->data[b * 2 + j], var);
                    }
                    for (i = 0; i < LG_D; i++)
                        w += ref_lognormal(X[b][i], gn.b[i] + gn.W[i * 2] * z[0] + gn.W[i * 2 + 1] * z[1], s2);
                    lw[k] = w;
                }
                CHECK_CLOSE(bound->data[b], ref_lme(lw, K), 1e-4, 1e-6, "av_iwae_loss k=3 bound vs log-weights rebuilt from the RNG stream");
                mean += ref_lme(lw, K) / LG_NX;
            }
            CHECK_CLOSE(av_item(loss), -mean, 1e-4, 1e-6, "av_iwae_loss = -(batch mean of the bound)");
        }
        av_ctx_reset(c);
        mu = av_zeros(c, 2, n, 2); lv = av_zeros(c, 2, n, 2); x = av_zeros(c, 2, n, 3);
        for (r = 0; r < REP; r++)
            for (b = 0; b < LG_NX; b++) {
                int row = r * LG_NX + b;
                for (j = 0; j < 2; j++) { mu->data[row * 2 + j] = (float)mq[b][j]; lv->data[row * 2 + j] = (float)log(vq[b][j]); }
                for (j = 0; j < 3; j++) x->data[row * 3 + j] = (float)X[b][j];
            }
        for (ki = 0; ki < 3; ki++) {
            av_mark mark = av_ctx_mark(c);
            av_ctx_seed(c, 2000 + ki);
            av_iwae_loss(c, x, mu, lv, kt[ki], lg_nll, &gn, &bound);
            for (b = 0; b < LG_NX; b++) {
                double s1 = 0, s2 = 0;
                for (r = 0; r < REP; r++) { s1 += bound->data[r * LG_NX + b]; s2 += sq(bound->data[r * LG_NX + b]); }
                mk[ki][b] = s1 / REP;
                sk[ki][b] = sqrt((s2 / REP - sq(s1 / REP)) / (REP - 1));
            }
            av_ctx_rewind(c, mark);
        }
        for (b = 0; b < LG_NX; b++) {
            printf("info: IWAE loss x%d: exact log p(x) %.4f, ELBO %.4f; bound k=1 %.4f±%.4f k=5 %.4f±%.4f k=50 %.4f±%.4f\n", b,
                   logpx[b], elbo[b], mk[0][b], sk[0][b], mk[1][b], sk[1][b], mk[2][b], sk[2][b]);
            CHECK_CLOSE(mk[0][b], elbo[b], 5 * sk[0][b] + 1e-4, 0, "av_iwae_loss k=1 averages to the closed-form ELBO");
            for (ki = 0; ki < 3; ki++)
                CHECK(mk[ki][b] <= logpx[b] + 4 * sk[ki][b] + 1e-4, "av_iwae_loss k=%d x%d: bound %.5f above log p(x) %.5f",
                      kt[ki], b, mk[ki][b], logpx[b]);
            for (ki = 1; ki < 3; ki++)
                CHECK(mk[ki][b] > mk[ki - 1][b] + 2 * sqrt(sq(sk[ki][b]) + sq(sk[ki - 1][b])),
                      "av_iwae_loss x%d: k=%d bound %.5f not clearly above k=%d bound %.5f", b, kt[ki], mk[ki][b],
                      kt[ki - 1], mk[ki - 1][b]);
        }
    }

    /* (c) q = the exact posterior (diagonal, W has orthogonal columns): the
       weight p(x, z) / q(z | x) = p(x) for every z, so every IWAE estimate,
       even with k = 1, is log p(x) up to fp32 rounding of the log-weight terms
       (|terms| <~ 30 nats, ~16 ulps each: < 1e-4). A q off by 0.05 in the mean
       gives estimates that spread by > 1e-2: the check is sharp. */
    {
        int n = LG_NX * 8, kk;
        double worst = 0, spread_bad = 0;
        av_tensor *mu, *lv, *x;
        for (b = 0; b < LG_NX; b++) logpx[b] = lg_log_px(&go, X[b]);
        for (kk = 0; kk < 3; kk++) {
            av_ctx_reset(c);
            mu = av_zeros(c, 2, n, 2); lv = av_zeros(c, 2, n, 2); x = av_zeros(c, 2, n, 3);
            for (r = 0; r < 8; r++)
                for (b = 0; b < LG_NX; b++) {
                    int row = r * LG_NX + b;
                    lg_posterior(&go, X[b], m, S);
                    if (r == 0 && kk == 0)
                        CHECK(fabs(S[0][1]) < 1e-15, "reference: posterior covariance is not diagonal (%g)", S[0][1]);
                    for (j = 0; j < 2; j++) {
                        mu->data[row * 2 + j] = (float)(m[j] + (kk == 2 ? 0.05 : 0.0));
                        lv->data[row * 2 + j] = (float)log(S[j][j]);
                    }
                    for (j = 0; j < 3; j++) x->data[row * 3 + j] = (float)X[b][j];
                }
            av_ctx_seed(c, 77 + kk);
            av_iwae_log_px(c, x, mu, lv, kk == 1 ? 50 : 1, lg_nll, &go, lp);
            for (i = 0; i < n; i++) {
                double d = fabs(lp[i] - logpx[i % LG_NX]);
                if (kk < 2) {
                    CHECK_CLOSE(lp[i], logpx[i % LG_NX], 1e-4, 0, kk ? "IWAE k=50, exact posterior q = log p(x)" : "IWAE k=1, exact posterior q = log p(x)");
                    if (d > worst) worst = d;
                } else if (d > spread_bad) {
                    spread_bad = d;
                }
            }
        }
        CHECK(spread_bad > 1e-2, "IWAE with a slightly wrong q should vary (max dev %g)", spread_bad);
        printf("info: IWAE with the exact posterior: max |estimate - log p(x)| = %.2e (k = 1 and 50); with mu off by 0.05: %.2e\n",
               worst, spread_bad);
    }
    free(lp);
}

/* ======================================================================= */
/* 3b. logsumexp, a caller's eps, the trainable IWAE loss                  */
/* ======================================================================= */
static int lse_axis, lse_keepdim;
static av_tensor *fwd_lse(av_ctx *c, fd_case *fc, int grad) {
    return av_logsumexp(c, fd_leaf(c, fc, 0, grad), lse_axis, lse_keepdim);
}

/* log sum exp in double, the plain way after taking out the max (values are finite) */
static double ref_lse(const float *x, int n, int stride) {
    double m = x[0], s = 0;
    int k;
    for (k = 1; k < n; k++) m = x[(size_t)k * stride] > m ? x[(size_t)k * stride] : m;
    for (k = 0; k < n; k++) s += exp(x[(size_t)k * stride] - m);
    return m + log(s);
}

/* Programming errors are caught through the abort handler. */
static jmp_buf t_jmp;
static char t_msg[600];
static void t_on_abort(const char *m) {
    strncpy(t_msg, m, sizeof t_msg - 1);
    t_msg[sizeof t_msg - 1] = 0;
    longjmp(t_jmp, 1);
}
#define EXPECT_ABORT(what, stmt, s1, s2)                                                                     \
    do {                                                                                                     \
        t_msg[0] = 0;                                                                                        \
        if (setjmp(t_jmp) == 0) {                                                                            \
            stmt;                                                                                            \
            CHECK(0, "%s: no error reported", what);                                                         \
        } else {                                                                                             \
            CHECK(strstr(t_msg, s1) && strstr(t_msg, s2), "%s: message \"%s\" lacks %s / %s", what, t_msg, s1, s2); \
        }                                                                                                    \
    } while (0)

static void test_logsumexp(av_ctx *c) {
    static const int shape[3] = {3, 4, 5};
    float x[60], shifted[60], inf_rows[3 * 4];
    av_tensor *t, *out, *w;
    int axis, keepdim, o, i, k, fail, form;
    fd_case fc;
    tr_fill(x, 60, -5, 5);
    /* every axis, both keepdims: values against double precision, with the
       inputs as they are and shifted by +-1000 (where e^x overflows or
       vanishes in fp32 and in double) */
    for (form = 0; form < 3; form++) {
        double shift = form == 0 ? 0 : form == 1 ? 1000 : -1000;
        for (i = 0; i < 60; i++) shifted[i] = (float)(x[i] + shift);
        for (axis = -1; axis < 3; axis++)
            for (keepdim = 0; keepdim < 2; keepdim++) {
                int a = axis < 0 ? 2 : axis, outer = 1, inner = 1, nd = keepdim ? 3 : 2;
                for (i = 0; i < a; i++) outer *= shape[i];
                for (i = a + 1; i < 3; i++) inner *= shape[i];
                av_ctx_reset(c);
                out = av_logsumexp(c, av_from_shape(c, shifted, 3, shape), axis, keepdim);
                CHECK(out->ndim == nd && out->size == outer * inner && (!keepdim || out->shape[a] == 1),
                      "logsumexp axis %d keepdim %d: output shape", axis, keepdim);
                fail = 0;
                for (o = 0; o < outer; o++)
                    for (i = 0; i < inner; i++) {
                        double want = ref_lse(shifted + (size_t)o * shape[a] * inner + i, shape[a], inner);
                        /* the fp32 result of a double computation: half an ulp, and up to 1000 */
                        fail += !(fabs(out->data[o * inner + i] - want) <= 1e-7 * fabs(want) + 1e-7);
                    }
                CHECK(!fail, "logsumexp axis %d keepdim %d shift %g: %d values off the double reference", axis,
                      keepdim, shift, fail);
            }
    }
    /* -inf entries count for nothing; a row of -inf gives -inf; an empty axis -inf; NaN and +inf propagate */
    for (i = 0; i < 12; i++) inf_rows[i] = -INFINITY;
    inf_rows[1] = 0.0f; inf_rows[3] = (float)log(2.0);   /* row 0: -inf 0 -inf log2: log 3 */
    inf_rows[8] = NAN; inf_rows[9] = 1.0f;               /* row 2: NaN 1 -inf -inf: NaN */
    av_ctx_reset(c);
    t = av_from(c, inf_rows, 2, 3, 4);
    av_requires_grad(c, t);
    out = av_logsumexp(c, t, 1, 0);
    CHECK_CLOSE(out->data[0], log(3.0), 0, 1e-7, "logsumexp(-inf, 0, -inf, log 2) = log 3");
    CHECK(out->data[1] == -INFINITY, "logsumexp of a row of -inf = %g, want -inf", (double)out->data[1]);
    CHECK(isnan(out->data[2]), "logsumexp with a NaN = %g, want NaN", (double)out->data[2]);
    /* gradient: softmax for row 0 (0 at -inf), nothing (not NaN) for the -inf row */
    w = av_zeros(c, 1, 2);
    w->data[0] = 2.0f; w->data[1] = 3.0f;
    av_backward(c, av_sum_all(c, av_mul(c, av_slice(c, out, 0, 0, 2), w)));
    CHECK(t->grad[0] == 0 && t->grad[2] == 0, "logsumexp: -inf entries got gradient %g %g", (double)t->grad[0], (double)t->grad[2]);
    CHECK_CLOSE(t->grad[1], 2.0 / 3.0, 0, 1e-6, "logsumexp gradient = softmax: 2 * 1/3");
    CHECK_CLOSE(t->grad[3], 4.0 / 3.0, 0, 1e-6, "logsumexp gradient = softmax: 2 * 2/3");
    for (i = 4, k = 0; i < 8; i++) k += t->grad[i] != 0;
    CHECK(k == 0, "logsumexp: a row of -inf passed %d nonzero (or NaN) gradients", k);
    av_ctx_reset(c);
    inf_rows[0] = INFINITY; inf_rows[1] = 5.0f;
    out = av_logsumexp(c, av_from(c, inf_rows, 2, 1, 2), 1, 0);
    CHECK(out->data[0] == INFINITY, "logsumexp(+inf, 5) = %g, want +inf", (double)out->data[0]);
    out = av_logsumexp(c, av_zeros(c, 2, 2, 0), 1, 1);
    CHECK(out->ndim == 2 && out->shape[0] == 2 && out->shape[1] == 1 && out->data[0] == -INFINITY && out->data[1] == -INFINITY,
          "logsumexp over an empty axis is not [2,1] of -inf");
    /* finite differences over each axis */
    for (axis = -1; axis < 3; axis++) {
        static const char *names[4] = {"av_logsumexp axis -1 keepdim", "av_logsumexp axis 0", "av_logsumexp axis 1 keepdim", "av_logsumexp axis 2"};
        lse_axis = axis;
        lse_keepdim = !(axis & 1);
        fd_init(&fc, names[axis + 1], fwd_lse, NULL);
        fd_var(&fc, "x", x, 3, 3, 4, 5);
        fd_run(&fc);
    }
    av_ctx_reset(c);
    av_set_abort_handler(t_on_abort);
    EXPECT_ABORT("logsumexp axis 2 of [2,3]", av_logsumexp(c, av_zeros(c, 2, 2, 3), 2, 0), "av_logsumexp", "[2,3]");
    av_set_abort_handler(NULL);
}

/* vars mu, logvar; the eps is a constant of the case */
static const float *re_eps;
static av_tensor *fwd_reparam_eps(av_ctx *c, fd_case *fc, int grad) {
    av_tensor *mu = fd_leaf(c, fc, 0, grad);
    return av_reparameterize_eps(c, mu, fd_leaf(c, fc, 1, grad), av_from(c, re_eps, 2, mu->shape[0], mu->shape[1]));
}

static void test_reparameterize_eps(av_ctx *c) {
    float mu[12], lv[12], eps[12];
    av_tensor *mt, *lt, *et, *z, *z2, *z3;
    int i, same = 1;
    fd_case fc;
    tr_fill(mu, 12, -1, 1);
    tr_fill(lv, 12, -1.5, 1);
    for (i = 0; i < 12; i++) eps[i] = (float)tr_normal();
    av_ctx_reset(c);
    mt = av_from(c, mu, 2, 3, 4); lt = av_from(c, lv, 2, 3, 4); et = av_from(c, eps, 2, 3, 4);
    av_requires_grad(c, mt); av_requires_grad(c, lt); av_requires_grad(c, et);
    z = av_reparameterize_eps(c, mt, lt, et);
    for (i = 0; i < 12; i++)
        CHECK_CLOSE(z->data[i], mu[i] + exp(0.5 * lv[i]) * eps[i], 1e-6, 1e-6, "av_reparameterize_eps: z = mu + exp(lv/2) eps");
    av_backward(c, av_sum_all(c, z));
    for (i = 0; i < 12; i++) {
        CHECK_CLOSE(mt->grad[i], 1.0, 0, 0, "d sum z / d mu = 1");
        CHECK_CLOSE(lt->grad[i], 0.5 * eps[i] * exp(0.5 * lv[i]), 1e-7, 1e-6, "d sum z / d logvar = eps sigma / 2");
    }
    CHECK(et->grad == NULL, "av_reparameterize_eps: a gradient reached eps");
    /* av_reparameterize is av_reparameterize_eps with eps = av_randn, bit for bit */
    av_ctx_seed(c, 606);
    z2 = av_reparameterize(c, mt, lt);
    av_ctx_seed(c, 606);
    z3 = av_reparameterize_eps(c, mt, lt, av_randn(c, 0, 1, 2, 3, 4));
    for (i = 0; i < 12; i++) same &= z2->data[i] == z3->data[i];
    CHECK(same, "av_reparameterize differs from av_reparameterize_eps(av_randn) with the same seed");
    re_eps = eps;
    fd_init(&fc, "av_reparameterize_eps", fwd_reparam_eps, NULL);
    fd_var(&fc, "mu", mu, 2, 3, 4);
    fd_var(&fc, "logvar", lv, 2, 3, 4);
    fd_run(&fc);
    av_ctx_reset(c);
    av_set_abort_handler(t_on_abort);
    EXPECT_ABORT("reparameterize_eps shapes", av_reparameterize_eps(c, av_zeros(c, 2, 3, 4), av_zeros(c, 2, 3, 4), av_zeros(c, 2, 4, 3)),
                 "av_reparameterize_eps", "[4,3]");
    av_set_abort_handler(NULL);
}

/* a tiny av_vae and its IWAE-3 bound per example, for finite differences */
static av_tensor *fwd_vae_iwae(av_ctx *c, fd_case *fc, int grad) {
    av_vae *v = (av_vae *)fc->user;
    static const float x[8] = {0.3f, 0.2f, 0.8f, 0.1f, 0.5f, 0.4f, 0.9f, 0.7f};
    av_tensor *bound;
    (void)grad;
    av_vae_iwae_loss(c, v, av_from(c, x, 2, 2, 4), 3, &bound);
    return bound;
}
/* vars mu, logvar of the linear-Gaussian model's q; IWAE-4 bound per example */
static av_tensor *fwd_lg_iwae(av_ctx *c, fd_case *fc, int grad) {
    static const float x[6] = {0.5f, -1.0f, 1.5f, 2.0f, 0.3f, -0.7f};
    av_tensor *bound;
    av_iwae_loss(c, av_from(c, x, 2, 2, 3), fd_leaf(c, fc, 0, grad), fd_leaf(c, fc, 1, grad), 4, lg_nll, fc->user, &bound);
    return bound;
}

static void test_iwae_loss(av_ctx *c) {
    int enc_sizes[2] = {4, 5}, dec_sizes[2] = {3, 4}, i, j, b;
    float x[8], mu4[4], lv4[4];
    vae_nets nets;
    av_model *m = av_model_new(31);
    av_vae v;
    av_tensor *xt, *mu, *lv, *nll, *bound, *loss, *loss2;
    fd_case fc;
    lg_model g;
    nets.enc = av_mlp_new(m, "enc", 1, enc_sizes, AV_ACT_TANH);
    nets.dec = av_mlp_new(m, "dec", 1, dec_sizes, AV_ACT_TANH);
    v = av_vae_new(m, "vae", 5, 3, tv_enc, tv_dec, &nets, AV_BERNOULLI);
    tr_fill(x, 8, 0, 1);

    /* k = 1 is the ELBO with the same eps, its KL taken from that one sample:
       bound = -nll(z) + log N(z | 0, I) - log N(z | mu, sigma^2)
             = -nll(z) + sum_j (eps_j^2 + logvar_j - z_j^2) / 2,
       with nll(z) from av_vae_loss under the same seed (the same z) */
    av_ctx_reset(c);
    xt = av_from(c, x, 2, 2, 4);
    av_ctx_seed(c, 12);
    loss = av_vae_iwae_loss(c, &v, xt, 1, &bound);
    av_ctx_seed(c, 12);
    av_vae_loss(c, &v, xt, 1.0f, &nll, NULL);
    av_vae_encode(c, &v, xt, &mu, &lv);
    for (b = 0; b < 2; b++) {
        double want = -(double)nll->data[b];
        for (j = 0; j < 3; j++) {
            double e = ref_normal(12, 0, (uint64_t)(b * 3 + j)), l = lv->data[b * 3 + j], z = mu->data[b * 3 + j] + exp(0.5 * l) * e;
            want += 0.5 * (e * e + l - z * z);
        }
        CHECK_CLOSE(bound->data[b], want, 1e-5, 1e-6, "IWAE k=1 = -nll - (log q - log p) of the ELBO's own z");
    }
    CHECK_CLOSE(av_item(loss), -0.5 * ((double)bound->data[0] + bound->data[1]), 0, 1e-6, "IWAE loss = -mean bound");
    /* av_vae_iwae_loss is av_iwae_loss on the VAE's pieces, bit for bit */
    av_ctx_seed(c, 13);
    loss = av_vae_iwae_loss(c, &v, xt, 7, NULL);
    av_ctx_seed(c, 13);
    av_vae_encode(c, &v, xt, &mu, &lv);
    loss2 = av_iwae_loss(c, xt, mu, lv, 7, tv_bernoulli_nll, &nets, NULL);
    CHECK(av_item(loss) == av_item(loss2), "av_vae_iwae_loss %.9g != av_iwae_loss %.9g", (double)av_item(loss), (double)av_item(loss2));

    /* gradients through k = 3 samples, every parameter */
    fd_init(&fc, "av_vae_iwae_loss k=3 (bound per example)", fwd_vae_iwae, &v);
    for (i = 0; i < av_model_count(m); i++) fd_param(&fc, av_model_param(m, i));
    fd_run(&fc);
    /* and w.r.t. q's mu and logvar, with a Gaussian decoder */
    for (i = 0; i < LG_D * LG_Z; i++) g.W[i] = (float)tr_in(-1, 1);
    for (i = 0; i < LG_D; i++) g.b[i] = (float)tr_in(-0.5, 0.5);
    g.lvx = -0.5f;
    tr_fill(mu4, 4, -1, 1);
    tr_fill(lv4, 4, -1.5, 0.5);
    fd_init(&fc, "av_iwae_loss k=4 d/d(mu, logvar)", fwd_lg_iwae, &g);
    fd_var(&fc, "mu", mu4, 2, 2, 2);
    fd_var(&fc, "logvar", lv4, 2, 2, 2);
    fd_run(&fc);

    av_ctx_reset(c);
    av_set_abort_handler(t_on_abort);
    EXPECT_ABORT("iwae k=0", av_vae_iwae_loss(c, &v, av_from(c, x, 2, 2, 4), 0, NULL), "av_iwae_loss", "k = 0");
    av_ctx_reset(c);
    EXPECT_ABORT("iwae batch", av_iwae_loss(c, av_from(c, x, 2, 2, 4), av_zeros(c, 2, 1, 3), av_zeros(c, 2, 1, 3), 2,
                                            tv_bernoulli_nll, &nets, NULL), "av_iwae_loss", "[2,4]");
    av_set_abort_handler(NULL);
    av_model_free(m);
}

/* ======================================================================= */
/* 4. PyTorch cross-check                                                  */
/* ======================================================================= */
#define TV_B 16
#define TV_IN 12
#define TV_H 8
#define TV_Z 3
#define TV_EPS_SEED 31337ULL
#define TV_LR 0.1f
#ifndef VAE_PYTHON
#define VAE_PYTHON "/usr/bin/python3" /* Debian's, with python3-torch */
#endif

static int file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

/* Compare n values against PyTorch's (double precision, stored as F32).
   fp32 rounding in C: each value is a sum/product chain over at most
   B * 12 = 192 terms of the tensor's own scale, so its error is at most a
   few times 1e-6 of that scale (random-walk ~ sqrt(192) * 6e-8 ~ 1e-6; the
   F32 storage of the reference adds 6e-8). Tolerance per element:
   1e-5 * (|ref| + max |ref| over the tensor): relative for large elements,
   scaled to the tensor for small ones that come out of cancellation. */
static void tv_compare(const av_st_file *f, const char *name, const float *got, int n, double *worst) {
    int i = av_st_find(f, name), j;
    float *ref;
    double scale = 0;
    if (i < 0 || av_st_numel(f, i) != n) {
        CHECK(0, "torch output '%s' missing or of the wrong size", name);
        return;
    }
    ref = (float *)malloc((size_t)n * sizeof(float));
    CHECK(av_st_read(f, i, ref, n) == AV_OK, "reading '%s': %s", name, av_error());
    for (j = 0; j < n; j++) scale = fabs(ref[j]) > scale ? fabs(ref[j]) : scale;
    for (j = 0; j < n; j++) {
        double err = fabs((double)got[j] - ref[j]), tol = 1e-5 * (fabs(ref[j]) + scale);
        char what[160];
        snprintf(what, sizeof what, "vs torch: %s[%d]", name, j);
        CHECK_CLOSE(got[j], ref[j], 1e-5 * scale, 1e-5, what);
        if (err / tol > *worst) *worst = err / tol;
    }
    free(ref);
}

typedef struct tv_net { av_mlp enc, dec; av_gaussian_head head; } tv_net;

static tv_net tv_build(av_model *m) {
    tv_net n;
    int enc_sizes[2], dec_sizes[3];
    enc_sizes[0] = TV_IN; enc_sizes[1] = TV_H;
    dec_sizes[0] = TV_Z; dec_sizes[1] = TV_H; dec_sizes[2] = TV_IN;
    n.enc = av_mlp_new(m, "enc", 1, enc_sizes, AV_ACT_RELU);
    n.head = av_gaussian_head_new(m, "head", TV_H, TV_Z);
    n.dec = av_mlp_new(m, "dec", 2, dec_sizes, AV_ACT_RELU);
    return n;
}

typedef struct tv_out { av_tensor *mu, *lv, *z, *logits, *nll, *kl, *loss; double margin; } tv_out;

/* 12-8-3-8-12 ReLU VAE, Bernoulli decoder, loss = mean(sum BCE + KL).
   eps NULL: z from av_reparameterize (ctx seeded with TV_EPS_SEED); else
   z = mu + exp(lv / 2) * eps, composed from ops (composed = 1) or by
   av_reparameterize_eps (composed = 0). */
static tv_out tv_forward(av_ctx *c, const tv_net *n, const float *x, const float *eps, int composed) {
    tv_out o;
    av_tensor *xt = av_from(c, x, 2, TV_B, TV_IN), *pre1, *pre2;
    int i;
    av_ctx_seed(c, TV_EPS_SEED);
    pre1 = av_mlp_forward(c, &n->enc, xt);
    av_gaussian_head_forward(c, &n->head, av_relu(c, pre1), &o.mu, &o.lv);
    if (!eps) o.z = av_reparameterize(c, o.mu, o.lv);
    else if (composed) o.z = av_add(c, o.mu, av_mul(c, av_exp(c, av_scale(c, o.lv, 0.5f)), av_from(c, eps, 2, TV_B, TV_Z)));
    else o.z = av_reparameterize_eps(c, o.mu, o.lv, av_from(c, eps, 2, TV_B, TV_Z));
    o.logits = av_mlp_forward(c, &n->dec, o.z);
    o.nll = av_bernoulli_nll(c, o.logits, xt);
    o.kl = av_kl_std_normal(c, o.mu, o.lv);
    o.loss = av_neg_elbo(c, o.nll, o.kl, 1.0f);
    /* distance of the ReLU inputs from the kink (decides whether fp32 vs
       fp64 could disagree on a ReLU derivative) */
    pre2 = av_linear_forward(c, &n->dec.layers[0], av_detach(c, o.z));
    o.margin = 1e30;
    for (i = 0; i < pre1->size; i++) o.margin = fabs(pre1->data[i]) < o.margin ? fabs(pre1->data[i]) : o.margin;
    for (i = 0; i < pre2->size; i++) o.margin = fabs(pre2->data[i]) < o.margin ? fabs(pre2->data[i]) : o.margin;
    return o;
}

static void test_torch(av_ctx *c, const char *dir) {
    char path[512], cmd[1200];
    av_model *m, *m2;
    tv_net net;
    tv_out o;
    float x[TV_B * TV_IN], eps[TV_B * TV_Z], **g1;
    av_st_item items[2];
    int shape_x[2], shape_e[2], i, j, rc, np, form;
    av_st_file *f = NULL;
    double worst = 0;

    if (system(VAE_PYTHON " -c 'import torch' >/dev/null 2>&1") != 0) {
        printf("skipped: python3-torch not installed\n");
        return;
    }
    if (!file_exists("tests/torch_vae.py")) {
        CHECK(0, "tests/torch_vae.py not found: run the test from the repository root");
        return;
    }
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    CHECK(system(cmd) == 0, "cannot create %s", dir);

    m = av_model_new(2718);
    net = tv_build(m);
    np = av_model_count(m);
    /* x: half binary images, half intensities in [0, 1] */
    for (i = 0; i < TV_B * TV_IN; i++) x[i] = i < TV_B * TV_IN / 2 ? (float)(tr_unif() < 0.4) : (float)tr_unif();
    /* the eps av_reparameterize will draw: Philox normals of stream offset 0 after seeding */
    for (i = 0; i < TV_B * TV_Z; i++) eps[i] = (float)ref_normal(TV_EPS_SEED, 0, (uint64_t)i);

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(av_model_save(m, path) == AV_OK, "av_model_save %s: %s", path, av_error());
    shape_x[0] = TV_B; shape_x[1] = TV_IN;
    shape_e[0] = TV_B; shape_e[1] = TV_Z;
    memset(items, 0, sizeof items); /* dtype 0: F32 */
    items[0].name = "x"; items[0].ndim = 2; items[0].shape = shape_x; items[0].data = x;
    items[1].name = "eps"; items[1].ndim = 2; items[1].shape = shape_e; items[1].data = eps;
    snprintf(path, sizeof path, "%s/data.safetensors", dir);
    CHECK(av_st_save(path, items, 2, NULL, NULL, 0) == AV_OK, "av_st_save %s: %s", path, av_error());

    snprintf(cmd, sizeof cmd, VAE_PYTHON " tests/torch_vae.py '%s'", dir);
    rc = system(cmd);
    CHECK(rc == 0, "tests/torch_vae.py failed (status %d)", rc);
    snprintf(path, sizeof path, "%s/torch_out.safetensors", dir);
    if (rc != 0 || av_st_open(path, &f) != AV_OK) {
        CHECK(0, "cannot read %s: %s", path, av_error());
        av_model_free(m);
        return;
    }

    /* the library's own path: av_reparameterize with the ctx seeded */
    av_ctx_reset(c);
    av_model_zero_grad(m);
    g1 = (float **)malloc(sizeof(float *) * (size_t)np);
    for (i = 0; i < np; i++) g1[i] = (float *)malloc(sizeof(float) * (size_t)av_model_param(m, i)->size);
    /* twice: z drawn by av_reparameterize, then the file's eps handed to
       av_reparameterize_eps as a caller's eps (the way to match another
       framework's draws) */
    for (form = 0; form < 2; form++) {
        av_ctx_reset(c);
        av_model_zero_grad(m);
        o = tv_forward(c, &net, x, form ? eps : NULL, 0);
        av_backward(c, o.loss);
        CHECK(o.margin > 1e-3, "test data: a ReLU input is %g from the kink (fp32 vs fp64 could differ)", o.margin);
        tv_compare(f, "mu", o.mu->data, o.mu->size, &worst);
        tv_compare(f, "logvar", o.lv->data, o.lv->size, &worst);
        tv_compare(f, "z", o.z->data, o.z->size, &worst);
        tv_compare(f, "logits", o.logits->data, o.logits->size, &worst);
        tv_compare(f, "nll", o.nll->data, o.nll->size, &worst);
        tv_compare(f, "kl", o.kl->data, o.kl->size, &worst);
        tv_compare(f, "loss", o.loss->data, 1, &worst);
        for (i = 0; i < np; i++) {
            av_tensor *p = av_model_param(m, i);
            char name[160];
            snprintf(name, sizeof name, "grad.%s", p->name);
            tv_compare(f, name, p->grad, p->size, &worst);
            if (!form) memcpy(g1[i], p->grad, sizeof(float) * (size_t)p->size);
        }
    }
    av_st_close(f);
    /* the last pass used av_reparameterize_eps; the gradients below compare with av_reparameterize's */
    av_ctx_reset(c);
    av_model_zero_grad(m);
    o = tv_forward(c, &net, x, NULL, 0);
    printf("info: torch cross-check: loss %.6f, %d parameter tensors (%ld values); worst |err|/tol %.3f\n",
           (double)av_item(o.loss), np, av_model_num_values(m), worst);

    /* the same loss with z composed from ops and eps as a constant: same z,
       same gradients (eps rebuilt from the documented Philox draws) */
    {
        av_tensor *z_rep = o.z;
        float zr[TV_B * TV_Z];
        tv_out o2;
        memcpy(zr, z_rep->data, sizeof zr);
        av_ctx_reset(c);
        av_model_zero_grad(m);
        o2 = tv_forward(c, &net, x, eps, 1);
        av_backward(c, o2.loss);
        for (i = 0; i < TV_B * TV_Z; i++)
            CHECK_CLOSE(o2.z->data[i], zr[i], 1e-6, 1e-6, "z from av_reparameterize vs mu + exp(lv/2) eps from ops");
        for (i = 0; i < np; i++) {
            av_tensor *p = av_model_param(m, i);
            double scale = 0;
            for (j = 0; j < p->size; j++) scale = fabs(g1[i][j]) > scale ? fabs(g1[i][j]) : scale;
            for (j = 0; j < p->size; j++)
                CHECK_CLOSE(p->grad[j], g1[i][j], 1e-6 * scale, 1e-6, "gradient via av_reparameterize vs composed ops");
        }
    }

    /* Python's SGD step p - lr g_torch, written by its own safetensors writer,
       loads into a fresh model of the same architecture via av_model_load and
       matches p - lr g_C */
    m2 = av_model_new(1);
    tv_build(m2);
    snprintf(path, sizeof path, "%s/sgd.safetensors", dir);
    rc = av_model_load(m2, path);
    CHECK(rc == AV_OK, "av_model_load of the PyTorch-written %s: %s", path, av_error());
    for (i = 0; rc == AV_OK && i < np; i++) {
        av_tensor *p = av_model_param(m, i), *q = av_model_find(m2, p->name);
        double scale = 0;
        CHECK(q != NULL && q->size == p->size, "sgd file: parameter %s", p->name);
        if (!q) continue;
        for (j = 0; j < p->size; j++) scale = fabs(p->data[j]) > scale ? fabs(p->data[j]) : scale;
        for (j = 0; j < p->size; j++)
            CHECK_CLOSE(q->data[j], p->data[j] - TV_LR * g1[i][j], 1e-6 * scale + 1e-5 * TV_LR * fabs(g1[i][j]), 1e-6,
                        "torch SGD step loaded with av_model_load");
    }
    for (i = 0; i < np; i++) free(g1[i]);
    free(g1);
    av_model_free(m2);
    av_model_free(m);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "build/vae_tmp";
    clock_t t0 = clock();
    av_ctx *c = av_ctx_new();

    test_gradients();
    test_autoencoder();
    test_simd_paths();
    test_vae_struct();
    test_kl_closed_form(c);
    test_bernoulli_closed_form(c);
    test_gaussian_closed_form(c);
    test_log_mean_exp();
    test_warmup_interpolate(c);
    test_reparam_stats(c);
    test_linear_gaussian(c);
    test_logsumexp(c);
    test_reparameterize_eps(c);
    test_iwae_loss(c);
    printf("info: %d gradient elements checked by finite differences; worst |err|/tol %.3f (%s)\n", fd_elements,
           fd_worst_ratio, fd_worst_what);
    test_torch(c, dir);

    av_ctx_free(c);
    printf("info: test_vae CPU time %.2f s\n", (double)(clock() - t0) / CLOCKS_PER_SEC);
    return t_summary();
}
