/* gradcheck.h - finite-difference gradient checks for attnvae ops.
   Include after tests/test.h and attnvae.h.

   gc_check(what, fwd, user, n, inputs) builds the graph  out = fwd(inputs),
   reduces it to the scalar  L = sum_i R_i out_i  with a fixed random R (every
   output element matters, and with a different weight), runs av_backward and
   compares the gradient of every checked input with central differences of L:

       n_j = (L(x + h e_j) - L(x - h e_j)) / (h+ + h-)

   where L is evaluated in double from the fp32 outputs of a fresh forward pass
   (av_ctx_reset, same RNG seed, grad mode off), and h+ / h- are the actual
   float perturbations ((float)(x+h) - x), so the rounding of x+h to float
   does not bias the quotient.

   Tolerance, per element:  |a - n| <= atol + rtol |n| + noise_j

   * truncation: the central difference errs by h^2/6 |L'''|. With the
     default h = 1e-2 and O(1) inputs (|L'''| of a few units for the smooth
     ops here, e.g. 16 for log at x = 0.5 or 96|a| for a/b at b = 0.5 where
     L' = 4|a|) this is <= 1.7e-5 |L'''|: below atol = 1e-4, or (log:
     1.3e-4 |L'|, a/b: 4e-4 |L'|) at least 5x inside rtol = 2e-3.
   * rounding: the forward is fp32. Outputs that do not depend on x_j are
     bit-identical in both evaluations and cancel exactly (the double sum of
     L adds no error worth counting). Each output that does depend on x_j
     carries a rounding error of at most a few ulps of its size, at most
     GC_ULPS * FLT_EPSILON * |out_k| with GC_ULPS = 16 (a chain of a few
     fp32 operations, plus some cancellation inside reductions), in each of
     the two evaluations; divided by 2h that gives
         noise_j = GC_ULPS * FLT_EPSILON * S_j / h,
         S_j = sum over outputs k that changed of |R_k| max(|out+_k|, |out-_k|).
     For an elementwise op with |out| ~ 1 that is 1.9e-4; for a row of 8
     outputs ~ 1.5e-3.
   A wrong gradient misses by a fraction of |n| that is O(1) (a lost term, a
   wrong broadcast reduction, a sign, a 1/N against 1/(N-1)); with
   rtol = 2e-3 any error above ~0.5% of a gradient of size >= 0.05 fails.
   Measured on x86-64 (scalar, AVX2 and AVX-512 GEMM; gcc, clang, g++):
   the worst element uses 17% of its tolerance (test_ops prints this).
   gc_selftest() in test_ops.c checks that a gradient wrong by 3-6% is
   caught, by hiding part of a function from autodiff with av_detach.

   Kinks: callers keep relu/leaky_relu inputs at |x| >= 0.1 and max inputs
   distinct by >= 0.05, both >> h, so no perturbation crosses a kink;
   sqrt/log/div-denominator inputs are >= 0.5. */
#ifndef AV_GRADCHECK_H
#define AV_GRADCHECK_H

#include <float.h>
#include <stdarg.h>

#if defined(__GNUC__) || defined(__clang__)
#define GC_MAYBE_UNUSED __attribute__((unused)) /* not every test uses every helper */
#else
#define GC_MAYBE_UNUSED
#endif

#define GC_MAX_IN 24
#define GC_ULPS 16.0
#define GC_H 1e-2
#define GC_ATOL 1e-4
#define GC_RTOL 2e-3
#define GC_SEED 0x9e3779b9u

typedef av_tensor *(*gc_fwd_fn)(av_ctx *c, av_tensor **in, void *user);

typedef struct gc_input {
    int ndim;
    int shape[AV_MAX_DIMS];
    const float *data; /* initial values, size = prod(shape) */
    int check;         /* 1: requires grad, gradient checked; 0: constant */
} gc_input;

/* gc_in(data, check, ndim, sizes...) */
static gc_input gc_in(const float *data, int check, int ndim, ...) {
    gc_input g;
    va_list ap;
    int i;
    memset(&g, 0, sizeof g);
    g.ndim = ndim;
    g.data = data;
    g.check = check;
    va_start(ap, ndim);
    for (i = 0; i < ndim; i++) g.shape[i] = va_arg(ap, int);
    va_end(ap);
    return g;
}

/* ---- a small RNG of the tests' own (splitmix64), independent of the library */
static uint64_t gc_rng_state = 12345;
static uint64_t gc_u64(void) {
    uint64_t z = (gc_rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static double gc_unif(void) { return (double)(gc_u64() >> 11) * (1.0 / 9007199254740992.0); }
static void gc_seed(uint64_t s) { gc_rng_state = s; }

/* uniform in [lo, hi) */
static void gc_fill(float *dst, int n, double lo, double hi) {
    int i;
    for (i = 0; i < n; i++) dst[i] = (float)(lo + (hi - lo) * gc_unif());
}
/* random sign, magnitude in [lo, hi): keeps values away from 0 */
GC_MAYBE_UNUSED static void gc_fill_away(float *dst, int n, double lo, double hi) {
    int i;
    for (i = 0; i < n; i++) {
        double m = lo + (hi - lo) * gc_unif();
        dst[i] = (float)(gc_u64() & 1 ? m : -m);
    }
}
/* n distinct values lo + (hi-lo) k/(n-1), shuffled: no ties, spacing known */
GC_MAYBE_UNUSED static void gc_fill_distinct(float *dst, int n, double lo, double hi) {
    int i;
    for (i = 0; i < n; i++) dst[i] = (float)(n > 1 ? lo + (hi - lo) * i / (n - 1) : lo);
    for (i = n - 1; i > 0; i--) {
        int j = (int)(gc_u64() % (uint64_t)(i + 1));
        float t = dst[i]; dst[i] = dst[j]; dst[j] = t;
    }
}

static av_tensor *gc_make(av_ctx *c, int ndim, const int *s, const float *data) {
    switch (ndim) {
    case 0: return av_from(c, data, 0);
    case 1: return av_from(c, data, 1, s[0]);
    case 2: return av_from(c, data, 2, s[0], s[1]);
    case 3: return av_from(c, data, 3, s[0], s[1], s[2]);
    default: return av_from(c, data, 4, s[0], s[1], s[2], s[3]);
    }
}

static int gc_numel(const gc_input *g) {
    int i, n = 1;
    for (i = 0; i < g->ndim; i++) n *= g->shape[i];
    return n;
}

/* One forward pass without gradients; returns L and copies the outputs. */
static double gc_eval(av_ctx *c, gc_fwd_fn fwd, void *user, int n_in, const gc_input *in,
                      float *const *vals, const float *R, int nout, double *outv) {
    av_tensor *x[GC_MAX_IN], *out;
    double L = 0;
    int i, prev;
    av_ctx_reset(c);
    av_ctx_seed(c, GC_SEED);
    prev = av_set_grad_enabled(c, 0);
    for (i = 0; i < n_in; i++) x[i] = gc_make(c, in[i].ndim, in[i].shape, vals[i]);
    out = fwd(c, x, user);
    av_set_grad_enabled(c, prev);
    if (out->size != nout) return NAN;
    for (i = 0; i < nout; i++) {
        outv[i] = out->data[i];
        L += (double)R[i] * out->data[i];
    }
    return L;
}

/* worst |a - n| / tolerance seen over all checks, for an info line */
static double gc_worst_ratio;
static char gc_worst_what[128];

/* Returns the number of elements whose gradient is off (each one is a CHECK
   failure unless quiet). Also fails when a checked input gets no gradient or
   a constant input gets one. */
static int gc_check_ex(const char *what, gc_fwd_fn fwd, void *user, int n_in, const gc_input *in,
                       double h, double atol, double rtol, int quiet) {
    av_ctx *c = av_ctx_new();
    av_tensor *x[GC_MAX_IN], *out, *Rt, *loss;
    float *vals[GC_MAX_IN], *R;
    double *ana[GC_MAX_IN], *base, *op, *om, L0 = 0;
    int i, j, k, nout, bad = 0;

    if (n_in > GC_MAX_IN) { CHECK(0, "%s: too many inputs", what); av_ctx_free(c); return 1; }
    for (i = 0; i < n_in; i++) {
        int n = gc_numel(&in[i]);
        vals[i] = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
        ana[i] = (double *)malloc((size_t)(n ? n : 1) * sizeof(double));
        memcpy(vals[i], in[i].data, (size_t)n * sizeof(float));
    }

    /* analytic gradients */
    av_ctx_seed(c, GC_SEED);
    for (i = 0; i < n_in; i++) {
        x[i] = gc_make(c, in[i].ndim, in[i].shape, vals[i]);
        if (in[i].check) av_requires_grad(c, x[i]);
    }
    out = fwd(c, x, user);
    nout = out->size;
    R = (float *)malloc((size_t)(nout ? nout : 1) * sizeof(float));
    base = (double *)malloc((size_t)(nout ? nout : 1) * sizeof(double) * 3);
    op = base + nout;
    om = op + nout;
    for (k = 0; k < nout; k++) {
        double r = 0.25 + 0.75 * gc_unif(); /* |R| in [0.25, 1), random sign */
        R[k] = (float)(gc_u64() & 1 ? r : -r);
        base[k] = out->data[k];
        L0 += (double)R[k] * out->data[k];
    }
    Rt = av_zeros_shape(c, out->ndim, out->shape);
    memcpy(Rt->data, R, (size_t)nout * sizeof(float));
    loss = av_sum_all(c, av_mul(c, out, Rt));
    CHECK(loss->size == 1 && loss->ndim == 0, "%s: sum_all gave ndim %d size %d", what, loss->ndim, loss->size);
    CHECK(fabs(av_item(loss) - L0) <= 1e-5 * (1 + fabs(L0)), "%s: graph loss %.9g, double %.9g", what, av_item(loss), L0);
    CHECK(out->requires_grad, "%s: output does not require grad", what);
    if (!out->requires_grad) goto done;
    av_backward(c, loss);
    for (i = 0; i < n_in; i++) {
        int n = gc_numel(&in[i]);
        if (!in[i].check) {
            CHECK(x[i]->grad == NULL, "%s: constant input %d got a gradient buffer", what, i);
            continue;
        }
        if (!x[i]->grad) {
            CHECK(0, "%s: input %d has no gradient", what, i);
            bad++;
            for (j = 0; j < n; j++) ana[i][j] = NAN;
            continue;
        }
        for (j = 0; j < n; j++) ana[i][j] = x[i]->grad[j];
    }

    /* the no-grad forward must give the same outputs, bit for bit */
    {
        double Lb = gc_eval(c, fwd, user, n_in, in, vals, R, nout, op);
        int same = Lb == Lb;
        for (k = 0; same && k < nout; k++) same = op[k] == base[k] || (base[k] != base[k] && op[k] != op[k]);
        CHECK(same, "%s: forward with grad mode off differs from forward with grad", what);
    }

    /* numeric gradients */
    for (i = 0; i < n_in; i++) {
        int n = gc_numel(&in[i]);
        if (!in[i].check) continue;
        for (j = 0; j < n; j++) {
            float x0 = vals[i][j], xp = (float)(x0 + h), xm = (float)(x0 - h);
            double Lp, Lm, num, tol, S = 0, err;
            vals[i][j] = xp;
            Lp = gc_eval(c, fwd, user, n_in, in, vals, R, nout, op);
            vals[i][j] = xm;
            Lm = gc_eval(c, fwd, user, n_in, in, vals, R, nout, om);
            vals[i][j] = x0;
            num = (Lp - Lm) / ((double)xp - (double)xm);
            for (k = 0; k < nout; k++)
                if (op[k] != om[k]) S += fabs(R[k]) * (fabs(op[k]) > fabs(om[k]) ? fabs(op[k]) : fabs(om[k]));
            tol = atol + rtol * fabs(num) + GC_ULPS * FLT_EPSILON * S / h;
            err = fabs(ana[i][j] - num);
            if (!(err <= tol)) {
                bad++;
                if (!quiet) CHECK(0, "%s: d/d in%d[%d]: autodiff %.7g, numeric %.7g (tol %.2g)", what, i, j, ana[i][j], num, tol);
            } else {
                if (!quiet) t_passed++;
                if (!quiet && err / tol > gc_worst_ratio) {
                    gc_worst_ratio = err / tol;
                    snprintf(gc_worst_what, sizeof gc_worst_what, "%s in%d[%d]", what, i, j);
                }
            }
        }
    }
done:
    for (i = 0; i < n_in; i++) { free(vals[i]); free(ana[i]); }
    free(R);
    free(base);
    av_ctx_free(c);
    return bad;
}

static int gc_check(const char *what, gc_fwd_fn fwd, void *user, int n_in, const gc_input *in) {
    return gc_check_ex(what, fwd, user, n_in, in, GC_H, GC_ATOL, GC_RTOL, 0);
}

#endif
