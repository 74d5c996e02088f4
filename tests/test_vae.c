/* test_vae.c - tests of the VAE section of attnvae.h.

   Every check compares the library against an independent reference
   computed here in double precision (or by PyTorch, see torch_vae.py):
     1. finite-difference gradient checks of every differentiable VAE piece
        and of an encoder -> Gaussian head -> reparameterize -> decoder model;
     2. closed forms (KL, Bernoulli / Gaussian NLL, log-mean-exp, warm-up,
        interpolation) and the statistics of the reparameterization;
     3. a linear-Gaussian "VAE" whose log p(x), posterior and ELBO are exact:
        ELBO <= log p(x), IWAE estimates rising with k towards log p(x), and
        IWAE with the exact posterior as q equal to log p(x) per sample;
     4. a cross-check of loss and every gradient against PyTorch, with the
        weights, data and noise carried through safetensors files.

   Usage (from the repository root): build/test_vae [TMPDIR]
   TMPDIR (default build/vae_tmp) receives the files exchanged with
   tests/torch_vae.py. Prints failures, a few info lines and the summary. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"

#include <float.h>
#include <math.h>
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
    av_tensor *t = av_new_shape(c, fc->var_ndim[i], fc->var_shape[i]);
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
    Rt = av_new_shape(c, out->ndim, out->shape);
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
            fd_elements++;
            if (!(err <= tol)) {
                CHECK(0, "%s: dL/d%s[%d]: autodiff %.8g, numeric %.8g (tol %.2g)", fc->what, fc->var_name[i], j, ana[i][j],
                      num, tol);
            } else {
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
    printf("info: %d gradient elements checked by finite differences; worst |err|/tol %.3f (%s)\n", fd_elements,
           fd_worst_ratio, fd_worst_what);
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
    CHECK_CLOSE(kl->data[0], 0.5 * (M_E - 1.0), 0, 1e-7, "KL(N(1, e) || N(0, 1))");
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
    /* KL >= 0 with equality only at the prior; tiny logvar: e^lv - 1 - lv ~ lv^2/2 stays accurate */
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
        char what[64];
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
    av_rng copy;
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
    /* eps is the context RNG's normal stream, in element order */
    av_ctx_seed(c, 99);
    copy = *av_ctx_rng(c);
    z2 = av_reparameterize(c, mt, lt);
    for (i = 0; i < 3000; i++) {
        double e = av_rng_normal(&copy), want = mu[i % D] + exp(0.5 * lv[i % D]) * e;
        stream &= fabs(z2->data[i] - want) <= 1e-6 * (1 + fabs(want));
    }
    CHECK(stream, "reparameterize: z is not mu + exp(lv/2) * (the ctx RNG's normals in order)");
}
