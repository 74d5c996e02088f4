/* test_attention.c - scaled dot-product attention: the tiled av_sdpa and the
   naive av_sdpa_weights against a double-precision reference written here,
   against each other (forward to 1e-5 and gradients to 1e-4 of the largest
   reference value) over ranks, odd lengths, lengths off the block size,
   Tq != Tk, D != Dv, every broadcast shape of the mask, causality and fully
   masked rows; finite-difference checks of both paths (with dropout, and
   with a mask that takes a gradient); the mask helpers; shape errors; and,
   built with OpenMP, bit-identical results on 1 and 2 threads. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "gradcheck.h"
#include "expect_fail.h"
#include "philox_ref.h"

typedef struct cfg {
    int ndim, B, H, Tq, Tk, D, Dv, causal;
    int mask_ndim, mask_shape[4]; /* mask_ndim 0: no mask */
    int hide;                     /* mask entries set to -inf: every 3rd key, and a whole row */
    float dropout, scale;
} cfg;

static void shape_of(const cfg *k, int T, int last, int *shape) {
    int lead = k->ndim - 2;
    if (lead == 2) { shape[0] = k->B; shape[1] = k->H; }
    if (lead == 1) shape[0] = k->H;
    shape[lead] = T;
    shape[lead + 1] = last;
}

static int mask_numel(const cfg *k) {
    int i, n = 1;
    for (i = 0; i < k->mask_ndim; i++) n *= k->mask_shape[i];
    return n;
}

/* mask value at (b, h, i, j) by broadcasting, for the reference */
static double mask_at(const cfg *k, const float *m, int b, int h, int i, int j) {
    int idx[4], full[4], s, d, off = 0;
    full[0] = b; full[1] = h; full[2] = i; full[3] = j;
    for (d = 0; d < 4; d++) idx[d] = d < 4 - k->mask_ndim ? 0 : full[d];
    for (d = 4 - k->mask_ndim, s = 1; d < 4; d++) {
        int size = k->mask_shape[d - (4 - k->mask_ndim)];
        (void)s;
        off = off * size + (size == 1 ? 0 : idx[d]);
    }
    return m[off];
}

/* ---- the reference: double precision, plain loops ---- */
static void reference(const cfg *k, const float *q, const float *kk, const float *v, const float *m, double *out) {
    int b, h, i, j, d;
    double scale = k->scale ? k->scale : 1.0 / sqrt((double)k->D);
    double *p = (double *)malloc(sizeof(double) * (size_t)(k->Tk ? k->Tk : 1));
    for (b = 0; b < k->B; b++)
        for (h = 0; h < k->H; h++) {
            int bh = b * k->H + h;
            const float *qh = q + (size_t)bh * k->Tq * k->D, *kh = kk + (size_t)bh * k->Tk * k->D;
            const float *vh = v + (size_t)bh * k->Tk * k->Dv;
            for (i = 0; i < k->Tq; i++) {
                double mx = -INFINITY, sum = 0;
                for (j = 0; j < k->Tk; j++) {
                    double s = 0;
                    for (d = 0; d < k->D; d++) s += (double)qh[i * k->D + d] * kh[j * k->D + d];
                    s *= scale;
                    if (m) s += mask_at(k, m, b, h, i, j);
                    if (k->causal && j > i + (k->Tk - k->Tq)) s = -INFINITY;
                    p[j] = s;
                    if (s > mx) mx = s;
                }
                for (j = 0; j < k->Tk; j++) {
                    p[j] = mx == -INFINITY ? 0 : exp(p[j] - mx);
                    sum += p[j];
                }
                for (d = 0; d < k->Dv; d++) {
                    double o = 0;
                    for (j = 0; j < k->Tk; j++) o += (sum > 0 ? p[j] / sum : 0) * vh[j * k->Dv + d];
                    out[((size_t)bh * k->Tq + i) * k->Dv + d] = o;
                }
            }
        }
    free(p);
}

/* ---- data ---- */
typedef struct data { float *q, *k, *v, *m; int nq, nk, nv, nm; } data;

static data make_data(const cfg *k) {
    data x;
    int i;
    x.nq = k->B * k->H * k->Tq * k->D;
    x.nk = k->B * k->H * k->Tk * k->D;
    x.nv = k->B * k->H * k->Tk * k->Dv;
    x.nm = k->mask_ndim ? mask_numel(k) : 0;
    x.q = (float *)malloc(sizeof(float) * (size_t)(x.nq + 1));
    x.k = (float *)malloc(sizeof(float) * (size_t)(x.nk + 1));
    x.v = (float *)malloc(sizeof(float) * (size_t)(x.nv + 1));
    x.m = (float *)malloc(sizeof(float) * (size_t)(x.nm + 1));
    gc_fill(x.q, x.nq, -1.5, 1.5);
    gc_fill(x.k, x.nk, -1.5, 1.5);
    gc_fill(x.v, x.nv, -1.0, 1.0);
    gc_fill(x.m, x.nm, -2.0, 2.0);
    if (k->hide && x.nm) {
        int cols = k->mask_shape[k->mask_ndim - 1];
        for (i = 0; i < x.nm; i++)
            if (i % cols % 3 == 1) x.m[i] = -INFINITY;
        if (k->mask_ndim >= 2 && k->mask_shape[k->mask_ndim - 2] > 1) /* a whole row hidden */
            for (i = 0; i < cols; i++) x.m[cols + i] = -INFINITY;
    }
    return x;
}

static void free_data(data *x) { free(x->q); free(x->k); free(x->v); free(x->m); }

static av_tensor *make(av_ctx *c, const cfg *k, const float *d, int T, int last) {
    int shape[4];
    shape_of(k, T, last, shape);
    return av_from_shape(c, d, k->ndim, shape);
}

static av_tensor *make_mask(av_ctx *c, const cfg *k, const float *m) {
    return k->mask_ndim ? av_from_shape(c, m, k->mask_ndim, k->mask_shape) : NULL;
}

/* ---- the comparison of the two paths and the reference ---- */
static double max_abs(const float *a, int n) {
    double m = 0;
    int i;
    for (i = 0; i < n; i++) m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* |got - want| <= rtol * the largest |want|. Where the exact answer is 0
   (one key: dq = dk = 0; a mask constant along a row has no gradient) both
   sides are sums of O(1) terms that cancel, and their rounding (~1e-7) is
   all that is left: the scale is then taken as 1e-2, not 0. */
static void check_close(const char *what, const char *name, const float *got, const float *want, int n, double rtol) {
    double scale = max_abs(want, n) > 1e-2 ? max_abs(want, n) : 1e-2, worst = 0;
    int i, at = 0, nan = 0;
    for (i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (got[i] != got[i]) nan = 1;
        if (e > worst) { worst = e; at = i; }
    }
    CHECK(!nan && worst <= rtol * scale, "%s: %s differs by %.3g at %d (largest %.3g, tolerance %.1g relative)",
          what, name, worst, at, scale, rtol);
}

static void compare_paths(const char *what, const cfg *k) {
    data x = make_data(k);
    av_ctx *c = av_ctx_new();
    av_tensor *q1, *k1, *v1, *m1, *o1, *q2, *k2, *v2, *m2, *o2, *w, *r;
    double *ref = (double *)malloc(sizeof(double) * (size_t)(k->B * k->H * k->Tq * k->Dv + 1));
    float *reff, *dq, *dk, *dv, *dm = NULL;
    int n_out = k->B * k->H * k->Tq * k->Dv, i, nan = 0;
    reference(k, x.q, x.k, x.v, k->mask_ndim ? x.m : NULL, ref);
    reff = (float *)malloc(sizeof(float) * (size_t)(n_out + 1));
    for (i = 0; i < n_out; i++) reff[i] = (float)ref[i];

    /* tiled */
    q1 = make(c, k, x.q, k->Tq, k->D); k1 = make(c, k, x.k, k->Tk, k->D); v1 = make(c, k, x.v, k->Tk, k->Dv);
    m1 = make_mask(c, k, x.m);
    av_requires_grad(c, q1); av_requires_grad(c, k1); av_requires_grad(c, v1);
    if (m1 && !k->hide) av_requires_grad(c, m1);
    o1 = av_sdpa(c, q1, k1, v1, m1, k->causal, 0.0f, k->scale);
    CHECK(o1->size == n_out, "%s: output has %d elements, want %d", what, o1->size, n_out);
    check_close(what, "tiled forward vs double", o1->data, reff, n_out, 1e-5);
    /* naive */
    q2 = make(c, k, x.q, k->Tq, k->D); k2 = make(c, k, x.k, k->Tk, k->D); v2 = make(c, k, x.v, k->Tk, k->Dv);
    m2 = make_mask(c, k, x.m);
    av_requires_grad(c, q2); av_requires_grad(c, k2); av_requires_grad(c, v2);
    if (m2 && !k->hide) av_requires_grad(c, m2);
    o2 = av_sdpa_weights(c, q2, k2, v2, m2, k->causal, k->scale, &w);
    check_close(what, "naive forward vs double", o2->data, reff, n_out, 1e-5);
    CHECK(w->size == k->B * k->H * k->Tq * k->Tk, "%s: weights have %d elements", what, w->size);
    for (i = 0; i < w->size; i++) nan |= w->data[i] != w->data[i];
    CHECK(!nan, "%s: NaN in the weights", what);
    /* gradients of sum(R o out) through both, the same R */
    r = av_zeros_shape(c, o1->ndim, o1->shape);
    gc_fill(r->data, r->size, -1.0, 1.0);
    av_backward(c, av_sum_all(c, av_mul(c, o1, r)));
    dq = q1->grad; dk = k1->grad; dv = v1->grad;
    if (m1 && !k->hide) dm = m1->grad;
    av_backward(c, av_sum_all(c, av_mul(c, o2, r)));
    check_close(what, "dq tiled vs naive", dq, q2->grad, x.nq, 1e-4);
    check_close(what, "dk tiled vs naive", dk, k2->grad, x.nk, 1e-4);
    check_close(what, "dv tiled vs naive", dv, v2->grad, x.nv, 1e-4);
    if (dm) check_close(what, "dmask tiled vs naive", dm, m2->grad, x.nm, 1e-4);
    for (i = 0; i < x.nq; i++) nan |= dq[i] != dq[i];
    for (i = 0; i < x.nk; i++) nan |= dk[i] != dk[i];
    CHECK(!nan, "%s: NaN in the tiled gradients", what);
    free(ref); free(reff);
    free_data(&x);
    av_ctx_free(c);
}

static cfg base(int ndim, int B, int H, int Tq, int Tk, int D, int Dv, int causal) {
    cfg k;
    memset(&k, 0, sizeof k);
    k.ndim = ndim; k.B = B; k.H = H; k.Tq = Tq; k.Tk = Tk; k.D = D; k.Dv = Dv; k.causal = causal;
    return k;
}

static cfg with_mask(cfg k, int nd, int m0, int m1, int m2, int m3, int hide) {
    k.mask_ndim = nd;
    k.mask_shape[0] = m0; k.mask_shape[1] = m1; k.mask_shape[2] = m2; k.mask_shape[3] = m3;
    k.hide = hide;
    return k;
}

static void paths_agree(void) {
    static const int lengths[] = {1, 2, 7, 33, 64, 65, 97, 130, 200};
    char what[160];
    int a, causal;
    cfg k;
    /* one head pair, lengths on and off the block sizes (32 to 96 here) */
    for (a = 0; a < 9; a++)
        for (causal = 0; causal < 2; causal++) {
            k = base(4, 1, 2, lengths[a], lengths[a], 24, 24, causal);
            snprintf(what, sizeof what, "T=%d causal %d", lengths[a], causal);
            compare_paths(what, &k);
        }
    /* Tq != Tk both ways (causal: bottom-right aligned; Tq > Tk leaves rows that see nothing) */
    for (causal = 0; causal < 2; causal++) {
        k = base(4, 2, 3, 5, 70, 16, 16, causal);   compare_paths(causal ? "Tq 5 Tk 70 causal" : "Tq 5 Tk 70", &k);
        k = base(4, 2, 3, 70, 5, 16, 16, causal);   compare_paths(causal ? "Tq 70 Tk 5 causal" : "Tq 70 Tk 5", &k);
        k = base(3, 1, 2, 1, 130, 32, 8, causal);   compare_paths(causal ? "Tq 1 Tk 130 causal (a cached decoder step)" : "Tq 1 Tk 130", &k);
        k = base(4, 1, 1, 131, 67, 8, 8, causal);   compare_paths(causal ? "Tq 131 Tk 67 causal" : "Tq 131 Tk 67", &k);
    }
    /* D != Dv, sizes off the micro-panels, every rank */
    k = base(4, 1, 2, 50, 50, 40, 24, 1);  compare_paths("D 40 Dv 24", &k);
    k = base(4, 1, 2, 50, 40, 7, 3, 0);    compare_paths("D 7 Dv 3", &k);
    k = base(4, 1, 2, 66, 66, 64, 64, 1);  compare_paths("D 64 Dv 64", &k);
    k = base(4, 1, 1, 45, 45, 1, 65, 0);   compare_paths("D 1 Dv 65", &k);
    k = base(2, 1, 1, 90, 90, 20, 12, 1);  compare_paths("rank 2 [T, D]", &k);
    k = base(3, 1, 3, 90, 77, 20, 12, 0);  compare_paths("rank 3 [H, T, D]", &k);
    k = base(4, 3, 2, 35, 35, 9, 9, 0);    k.scale = 0.3f; compare_paths("an explicit scale", &k);
    /* masks of every broadcast shape, learned (a gradient) or hiding keys and whole rows */
    {
        int B = 2, H = 3, Tq = 37, Tk = 70, hide;
        for (hide = 0; hide < 2; hide++)
            for (causal = 0; causal < 2; causal++) {
                const char *tag = hide ? (causal ? "hiding, causal" : "hiding") : (causal ? "learned, causal" : "learned");
#define MASKED(nd, m0, m1, m2, m3, name)                                                  \
    k = with_mask(base(4, B, H, Tq, Tk, 16, 8, causal), nd, m0, m1, m2, m3, hide);        \
    snprintf(what, sizeof what, "mask %s (%s)", name, tag);                                \
    compare_paths(what, &k);
                MASKED(1, Tk, 0, 0, 0, "[Tk]")
                MASKED(2, Tq, Tk, 0, 0, "[Tq,Tk]")
                MASKED(2, Tq, 1, 0, 0, "[Tq,1]")
                MASKED(3, 1, Tq, Tk, 0, "[1,Tq,Tk]")
                MASKED(3, H, 1, Tk, 0, "[H,1,Tk]")
                MASKED(4, B, 1, 1, Tk, "[B,1,1,Tk]")
                MASKED(4, B, 1, Tq, Tk, "[B,1,Tq,Tk]")
                MASKED(4, 1, H, Tq, 1, "[1,H,Tq,1]")
                MASKED(4, B, H, Tq, Tk, "[B,H,Tq,Tk]")
#undef MASKED
            }
    }
}

/* ---- finite differences through each path ---- */
typedef struct gc_user { const cfg *k; int naive; } gc_user;

static av_tensor *fwd_attention(av_ctx *c, av_tensor **in, void *u) {
    const gc_user *g = (const gc_user *)u;
    av_tensor *mask = g->k->mask_ndim ? in[3] : NULL, *w;
    if (g->naive) return av__sdpa_naive(c, in[0], in[1], in[2], mask, g->k->causal, g->k->dropout, g->k->scale, &w);
    return av_sdpa(c, in[0], in[1], in[2], mask, g->k->causal, g->k->dropout, g->k->scale);
}

static void gradcheck_one(const char *what, const cfg *k, int naive) {
    data x = make_data(k);
    gc_input in[4];
    gc_user u;
    int shape[4], n = 3;
    u.k = k;
    u.naive = naive;
    shape_of(k, k->Tq, k->D, shape);
    in[0] = gc_in(x.q, 1, 0); in[0].ndim = k->ndim; memcpy(in[0].shape, shape, sizeof shape);
    shape_of(k, k->Tk, k->D, shape);
    in[1] = gc_in(x.k, 1, 0); in[1].ndim = k->ndim; memcpy(in[1].shape, shape, sizeof shape);
    shape_of(k, k->Tk, k->Dv, shape);
    in[2] = gc_in(x.v, 1, 0); in[2].ndim = k->ndim; memcpy(in[2].shape, shape, sizeof shape);
    if (k->mask_ndim) {
        in[3] = gc_in(x.m, !k->hide, 0);
        in[3].ndim = k->mask_ndim;
        memcpy(in[3].shape, k->mask_shape, sizeof k->mask_shape);
        n = 4;
    }
    gc_check(what, fwd_attention, &u, n, in);
    free_data(&x);
}

static void gradchecks(void) {
    cfg k;
    int naive;
    for (naive = 0; naive < 2; naive++) {
        const char *p = naive ? "naive" : "tiled";
        char what[120];
        k = base(4, 1, 2, 9, 9, 5, 4, 0);
        snprintf(what, sizeof what, "%s sdpa", p); gradcheck_one(what, &k, naive);
        k = base(4, 1, 2, 9, 13, 5, 4, 1);
        snprintf(what, sizeof what, "%s sdpa causal Tq<Tk", p); gradcheck_one(what, &k, naive);
        k = base(4, 1, 1, 11, 4, 3, 2, 1);
        snprintf(what, sizeof what, "%s sdpa causal Tq>Tk (rows that see nothing)", p); gradcheck_one(what, &k, naive);
        k = with_mask(base(4, 2, 2, 6, 7, 4, 3, 0), 4, 2, 1, 6, 7, 0);
        snprintf(what, sizeof what, "%s sdpa, learned mask [B,1,Tq,Tk]", p); gradcheck_one(what, &k, naive);
        k = with_mask(base(4, 2, 2, 6, 7, 4, 3, 1), 2, 6, 7, 0, 0, 1);
        snprintf(what, sizeof what, "%s sdpa, hiding mask, causal", p); gradcheck_one(what, &k, naive);
        k = base(4, 1, 2, 8, 8, 4, 4, 1);
        k.dropout = 0.3f;
        snprintf(what, sizeof what, "%s sdpa with dropout 0.3 (the mask regenerated)", p); gradcheck_one(what, &k, naive);
    }
}

/* ---- dropout: both paths draw the same mask, at the right rate ---- */
static void dropout_paths(void) {
    cfg k = base(4, 2, 2, 70, 90, 16, 16, 1);
    data x;
    av_ctx *c = av_ctx_new();
    av_tensor *q, *kk, *v, *o1, *o2, *w;
    av__sdpa_geom g;
    long kept = 0, total = 0;
    int i, j, same = 1;
    double p = 0.25, sd;
    k.dropout = (float)p;
    x = make_data(&k);
    av_ctx_seed(c, 99);
    q = make(c, &k, x.q, k.Tq, k.D); kk = make(c, &k, x.k, k.Tk, k.D); v = make(c, &k, x.v, k.Tk, k.Dv);
    o1 = av_sdpa(c, q, kk, v, NULL, 1, k.dropout, 0.0f);
    av_ctx_seed(c, 99);
    o2 = av__sdpa_naive(c, q, kk, v, NULL, 1, k.dropout, 0.0f, &w);
    check_close("dropout 0.25", "tiled vs naive, same seed", o1->data, o2->data, o1->size, 1e-5);
    av_set_training(c, 0);
    o1 = av_sdpa(c, q, kk, v, NULL, 1, k.dropout, 0.0f);
    o2 = av_sdpa(c, q, kk, v, NULL, 1, 0.0f, 0.0f);
    CHECK(memcmp(o1->data, o2->data, (size_t)o1->size * sizeof(float)) == 0, "dropout acts outside training");
    /* the keep rate: a binomial count within 5 standard deviations */
    memset(&g, 0, sizeof g);
    g.Tq = 300; g.Tk = 300; g.dropout = (float)p; g.stream.key[0] = 12345; g.stream.offset = 7;
    for (i = 0; i < g.Tq; i++)
        for (j = 0; j < g.Tk; j++, total++) {
            int in = av__sdpa_kept(&g, 1, i, j);
            kept += in;
            /* the documented draw: weight (bh, i, j) is Philox draw (bh Tq + i) Tk + j */
            same &= in == (ref_uniform(12345, 7, (uint64_t)((300 + i) * 300 + j)) >= p);
        }
    sd = sqrt(total * p * (1 - p));
    CHECK(fabs((double)kept - total * (1 - p)) < 5 * sd, "kept %ld of %ld, expected %.0f +- %.0f", kept, total, total * (1 - p), 5 * sd);
    CHECK(same, "the dropout mask is not Philox draw (bh Tq + i) Tk + j of the stream");
    free_data(&x);
    av_ctx_free(c);
}

/* ---- the mask helpers ---- */
static void mask_helpers(void) {
    static const int lengths[3] = {4, 0, 6};
    av_ctx *c = av_ctx_new();
    av_tensor *m = av_key_padding_mask(c, lengths, 3, 6), *cm = av_causal_mask(c, 3, 5);
    int b, i, j, ok = 1;
    CHECK(m->ndim == 4 && m->shape[0] == 3 && m->shape[1] == 1 && m->shape[2] == 1 && m->shape[3] == 6, "key padding mask shape");
    for (b = 0; b < 3; b++)
        for (j = 0; j < 6; j++) ok &= m->data[b * 6 + j] == (j < lengths[b] ? 0.0f : -INFINITY);
    CHECK(ok, "key padding mask values");
    for (i = 0, ok = 1; i < 3; i++)
        for (j = 0; j < 5; j++) ok &= cm->data[i * 5 + j] == (j <= i + 2 ? 0.0f : -INFINITY);
    CHECK(ok, "causal mask values (bottom-right)");
    {   /* the explicit causal mask gives what is_causal gives */
        cfg k = base(3, 1, 2, 40, 75, 8, 8, 0);
        data x = make_data(&k);
        av_tensor *q = make(c, &k, x.q, k.Tq, k.D), *kk = make(c, &k, x.k, k.Tk, k.D), *v = make(c, &k, x.v, k.Tk, k.Dv);
        av_tensor *o1 = av_sdpa(c, q, kk, v, av_causal_mask(c, 40, 75), 0, 0.0f, 0.0f);
        av_tensor *o2 = av_sdpa(c, q, kk, v, NULL, 1, 0.0f, 0.0f);
        check_close("causal mask", "mask vs is_causal", o1->data, o2->data, o1->size, 1e-6);
        free_data(&x);
    }
    av_ctx_free(c);
}

/* ---- shape errors name the op and the shapes ---- */
static void shape_errors(void) {
    av_ctx *c = av_ctx_new();
    av_tensor *q = av_zeros(c, 3, 2, 5, 4), *k = av_zeros(c, 3, 2, 6, 4), *v = av_zeros(c, 3, 2, 6, 3), *w;
    int bad_len[2] = {3, 9};
    EXPECT_FAIL("q k width", av_sdpa(c, q, av_zeros(c, 3, 2, 6, 5), v, NULL, 0, 0, 0), "av_sdpa", "[2,6,5]");
    EXPECT_FAIL("k v length", av_sdpa(c, q, k, av_zeros(c, 3, 2, 7, 3), NULL, 0, 0, 0), "av_sdpa", "[2,7,3]");
    EXPECT_FAIL("ranks", av_sdpa(c, q, av_zeros(c, 2, 6, 4), v, NULL, 0, 0, 0), "av_sdpa", "[6,4]");
    EXPECT_FAIL("heads", av_sdpa_weights(c, q, av_zeros(c, 3, 3, 6, 4), av_zeros(c, 3, 3, 6, 3), NULL, 0, 0, &w), "av_sdpa_weights", "[3,6,4]");
    EXPECT_FAIL("mask", av_sdpa(c, q, k, v, av_zeros(c, 2, 5, 5), 0, 0, 0), "av_sdpa", "[5,5]");
    EXPECT_FAIL("dropout", av_sdpa(c, q, k, v, NULL, 0, 1.0f, 0), "av_sdpa", "dropout");
    EXPECT_FAIL("lengths", av_key_padding_mask(c, bad_len, 2, 6), "av_key_padding_mask", "9");
    av_ctx_free(c);
}


/* ---- multi-head attention ---- */
/* The layer with its weights taken from gradcheck inputs: in[3..6] are
   in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias. */
typedef struct mha_case { int E, H, self, kv_same, causal, with_kpm, with_weights; float dropout; } mha_case;

static av_mha mha_from(av_tensor **in, const mha_case *m) {
    av_mha a;
    memset(&a, 0, sizeof a);
    a.embed_dim = m->E; a.num_heads = m->H; a.kdim = a.vdim = m->E; a.dropout = m->dropout;
    a.in_proj_weight = in[3]; a.in_proj_bias = in[4];
    a.out_proj.weight = in[5]; a.out_proj.bias = in[6];
    return a;
}

static av_tensor *fwd_mha(av_ctx *c, av_tensor **in, void *u) {
    const mha_case *m = (const mha_case *)u;
    av_mha a = mha_from(in, m);
    static const int lengths[2] = {5, 3};
    av_tensor *kpm = m->with_kpm ? av_reshape(c, av_key_padding_mask(c, lengths, 2, in[1]->shape[1]), 2, 2, in[1]->shape[1]) : NULL;
    av_tensor *w = NULL, *y;
    av_tensor *key = m->self ? in[0] : in[1], *value = m->self ? in[0] : m->kv_same ? in[1] : in[2];
    y = av_mha_forward(c, &a, in[0], key, value, kpm, NULL, m->causal, m->with_weights ? &w : NULL);
    if (w) y = av_add(c, y, av_sum_all(c, av_square(c, w))); /* the weights pass a gradient too */
    return y;
}

/* The same layer composed from plain ops: linear, permute, av_sdpa_weights. */
static av_tensor *heads(av_ctx *c, av_tensor *x, int H) {
    static const int perm[4] = {0, 2, 1, 3};
    return av_permute(c, av_reshape(c, x, 4, x->shape[0], x->shape[1], H, x->shape[2] / H), perm);
}

static av_tensor *fwd_mha_composed(av_ctx *c, av_tensor **in, void *u) {
    const mha_case *m = (const mha_case *)u;
    static const int perm[4] = {0, 2, 1, 3}, lengths[2] = {5, 3};
    int E = m->E;
    av_tensor *key = m->self ? in[0] : in[1], *value = m->self ? in[0] : m->kv_same ? in[1] : in[2], *w, *y, *kpm = NULL;
    av_tensor *q = av_linear(c, in[0], av_slice(c, in[3], 0, 0, E), av_slice(c, in[4], 0, 0, E));
    av_tensor *k = av_linear(c, key, av_slice(c, in[3], 0, E, 2 * E), av_slice(c, in[4], 0, E, 2 * E));
    av_tensor *v = av_linear(c, value, av_slice(c, in[3], 0, 2 * E, 3 * E), av_slice(c, in[4], 0, 2 * E, 3 * E));
    if (m->with_kpm) kpm = av_key_padding_mask(c, lengths, 2, in[1]->shape[1]);
    y = av__sdpa_naive(c, heads(c, q, m->H), heads(c, k, m->H), heads(c, v, m->H), kpm, m->causal, m->dropout, 0.0f, &w);
    y = av_reshape(c, av_permute(c, y, perm), 3, q->shape[0], q->shape[1], E);
    y = av_linear(c, y, in[5], in[6]);
    if (m->with_weights) y = av_add(c, y, av_sum_all(c, av_square(c, w)));
    return y;
}

static void mha_inputs(gc_input *in, float **buf, const mha_case *m, int Tq, int Tk) {
    int E = m->E, i, sizes[7];
    sizes[0] = 2 * Tq * E; sizes[1] = 2 * Tk * E; sizes[2] = 2 * Tk * E;
    sizes[3] = 3 * E * E; sizes[4] = 3 * E; sizes[5] = E * E; sizes[6] = E;
    for (i = 0; i < 7; i++) {
        buf[i] = (float *)malloc(sizeof(float) * (size_t)sizes[i]);
        gc_fill(buf[i], sizes[i], -0.8, 0.8);
    }
    in[0] = gc_in(buf[0], 1, 3, 2, Tq, E);
    in[1] = gc_in(buf[1], 1, 3, 2, Tk, E);
    in[2] = gc_in(buf[2], 1, 3, 2, Tk, E);
    in[3] = gc_in(buf[3], 1, 2, 3 * E, E);
    in[4] = gc_in(buf[4], 1, 1, 3 * E);
    in[5] = gc_in(buf[5], 1, 2, E, E);
    in[6] = gc_in(buf[6], 1, 1, E);
    if (m->self || m->kv_same) in[2].check = 0; /* unused */
    if (m->self) in[1].check = 0;
}

static void mha_tests(void) {
    static const mha_case cases[] = {
        {8, 2, 1, 0, 0, 0, 0, 0.0f}, {8, 2, 1, 0, 1, 0, 0, 0.0f}, {8, 4, 0, 1, 0, 1, 0, 0.0f},
        {8, 2, 0, 0, 0, 1, 1, 0.0f}, {6, 3, 1, 0, 1, 0, 1, 0.0f}, {8, 2, 1, 0, 1, 0, 0, 0.25f},
        {8, 2, 0, 1, 0, 1, 1, 0.25f}};
    int ci;
    for (ci = 0; ci < (int)(sizeof cases / sizeof cases[0]); ci++) {
        const mha_case *m = &cases[ci];
        int Tq = 5, Tk = m->self ? 5 : 7, i, j;
        float *buf[7];
        gc_input in[7];
        char what[160];
        snprintf(what, sizeof what, "mha E %d H %d %s%s%s%s%s", m->E, m->H, m->self ? "self" : m->kv_same ? "cross (k = v)" : "cross",
                 m->causal ? " causal" : "", m->with_kpm ? " key padding" : "", m->with_weights ? " weights" : "",
                 m->dropout > 0 ? " dropout" : "");
        mha_inputs(in, buf, m, Tq, Tk);
        gc_check(what, fwd_mha, (void *)m, 7, in);
        /* against the layer composed from plain ops, forward and every gradient */
        {
            av_ctx *c = av_ctx_new();
            av_tensor *x1[7], *x2[7], *y1, *y2, *r;
            for (j = 0; j < 7; j++) {
                x1[j] = gc_make(c, in[j].ndim, in[j].shape, buf[j]);
                x2[j] = gc_make(c, in[j].ndim, in[j].shape, buf[j]);
                av_requires_grad(c, x1[j]);
                av_requires_grad(c, x2[j]);
            }
            av_ctx_seed(c, 3);
            y1 = fwd_mha(c, x1, (void *)m);
            av_ctx_seed(c, 3);
            y2 = fwd_mha_composed(c, x2, (void *)m);
            check_close(what, "layer vs composed ops", y1->data, y2->data, y1->size, 1e-5);
            r = av_zeros_shape(c, y1->ndim, y1->shape);
            gc_fill(r->data, r->size, -1, 1);
            av_backward(c, av_sum_all(c, av_mul(c, y1, r)));
            av_backward(c, av_sum_all(c, av_mul(c, y2, r)));
            for (j = 0; j < 7; j++) {
                static const char *const names[7] = {"d query", "d key", "d value", "d in_proj_weight", "d in_proj_bias",
                                                     "d out_proj.weight", "d out_proj.bias"};
                if (x1[j]->grad && x2[j]->grad) check_close(what, names[j], x1[j]->grad, x2[j]->grad, x1[j]->size, 1e-4);
            }
            av_ctx_free(c);
        }
        for (i = 0; i < 7; i++) free(buf[i]);
    }
}

/* Parameter names and shapes are PyTorch's. */
static void mha_names(void) {
    av_model *m = av_model_new(1);
    av_mha a = av_mha_new(m, "attn", 16, 4, 0, 0, 1, 0.0f), b = av_mha_new(m, "cross", 16, 2, 12, 10, 0, 0.0f);
    av_tensor *t;
    int zero = 1, i;
    (void)a;
    (void)b;
    t = av_model_find(m, "attn.in_proj_weight");
    CHECK(t && t->ndim == 2 && t->shape[0] == 48 && t->shape[1] == 16, "attn.in_proj_weight [48,16]");
    t = av_model_find(m, "attn.in_proj_bias");
    CHECK(t && t->ndim == 1 && t->shape[0] == 48, "attn.in_proj_bias [48]");
    for (i = 0; t && i < t->size; i++) zero &= t->data[i] == 0.0f;
    CHECK(zero, "in_proj_bias starts at zero, as PyTorch's");
    CHECK(av_model_find(m, "attn.out_proj.weight") && av_model_find(m, "attn.out_proj.bias"), "attn.out_proj.*");
    t = av_model_find(m, "cross.k_proj_weight");
    CHECK(t && t->shape[0] == 16 && t->shape[1] == 12, "cross.k_proj_weight [16,12]");
    t = av_model_find(m, "cross.v_proj_weight");
    CHECK(t && t->shape[0] == 16 && t->shape[1] == 10, "cross.v_proj_weight [16,10]");
    CHECK(av_model_find(m, "cross.q_proj_weight") && !av_model_find(m, "cross.in_proj_weight") && !av_model_find(m, "cross.in_proj_bias"),
          "separate projections, no bias");
    t = av_model_find(m, "attn.in_proj_weight");
    {   /* xavier_uniform over [3E, E]: bound sqrt(6 / (E + 3E)) */
        double bound = sqrt(6.0 / 64.0), mx = 0;
        for (i = 0; i < t->size; i++) mx = fabs(t->data[i]) > mx ? fabs(t->data[i]) : mx;
        CHECK(mx <= bound && mx > 0.9 * bound, "in_proj_weight init: max %g, bound %g", mx, bound);
    }
    av_model_free(m);
}

/* Decoding with the KV cache equals recomputing the whole sequence. */
static void kv_cache(void) {
    av_model *m = av_model_new(5);
    av_mha a = av_mha_new(m, "attn", 16, 4, 0, 0, 1, 0.0f);
    av_ctx *c = av_ctx_new();
    av_kv_cache kv;
    int B = 2, T = 37, t, E = 16;
    float *x = (float *)malloc(sizeof(float) * (size_t)(B * T * E)), *full, *stepped;
    av_tensor *xt, *y;
    gc_fill(x, B * T * E, -1, 1);
    av_set_grad_enabled(c, 0);
    xt = av_from(c, x, 3, B, T, E);
    y = av_mha_forward(c, &a, xt, xt, xt, NULL, NULL, 1, NULL);
    full = (float *)malloc(sizeof(float) * (size_t)y->size);
    memcpy(full, y->data, sizeof(float) * (size_t)y->size);
    stepped = (float *)malloc(sizeof(float) * (size_t)y->size);
    CHECK(av_kv_cache_init(&kv, &a, B, 1) == 0, "cache init");  /* capacity 1: it must grow */
    for (t = 0; t < T; t++) {
        float step[2 * 16];
        int b;
        av_tensor *xs, *ys;
        av_ctx_reset(c);
        for (b = 0; b < B; b++) memcpy(step + b * E, x + ((size_t)b * T + t) * E, sizeof(float) * (size_t)E);
        xs = av_from(c, step, 3, B, 1, E);
        ys = av_mha_step(c, &a, xs, &kv, NULL);
        for (b = 0; b < B; b++) memcpy(stepped + ((size_t)b * T + t) * E, ys->data + b * E, sizeof(float) * (size_t)E);
    }
    CHECK(kv.length == T && kv.capacity >= T, "cache length %d capacity %d", kv.length, kv.capacity);
    check_close("kv cache", "token by token vs full causal", stepped, full, B * T * E, 1e-5);
    /* a 20-token prompt in one step, then the rest one by one */
    av_kv_cache_clear(&kv);
    memset(stepped, 0, sizeof(float) * (size_t)(B * T * E));
    for (t = 0; t < T; t = t ? t + 1 : 20) {
        int len = t ? 1 : 20, b;
        av_tensor *xs, *ys;
        av_ctx_reset(c);
        xs = av_slice(c, av_from(c, x, 3, B, T, E), 1, t, t + len);
        ys = av_mha_step(c, &a, xs, &kv, NULL);
        for (b = 0; b < B; b++)
            memcpy(stepped + ((size_t)b * T + t) * E, ys->data + (size_t)b * len * E, sizeof(float) * (size_t)(len * E));
    }
    CHECK(kv.length == T, "cache length after a prompt and steps: %d", kv.length);
    check_close("kv cache", "a prompt in one step, then token by token", stepped, full, B * T * E, 1e-5);
    /* cross-attention from a cached memory equals the layer on (query, memory, memory) */
    {
        static const int lengths[2] = {9, 4};
        av_tensor *mem, *q, *want, *got, *kpm;
        av_ctx_reset(c);
        mem = av_rand(c, -1, 1, 3, B, 9, E);
        q = av_rand(c, -1, 1, 3, B, 3, E);
        kpm = av_reshape(c, av_key_padding_mask(c, lengths, 2, 9), 2, 2, 9);
        want = av_mha_forward(c, &a, q, mem, mem, kpm, NULL, 0, NULL);
        CHECK(av_kv_cache_set_memory(c, &a, mem, &kv) == 0 && kv.length == 9, "set memory");
        got = av_mha_attend_cache(c, &a, q, &kv, kpm, NULL);
        check_close("kv cache", "cross-attention to a cached memory", got->data, want->data, got->size, 1e-5);
    }
    av_kv_cache_free(&kv);
    free(x); free(full); free(stepped);
    av_ctx_free(c);
    av_model_free(m);
}

/* ---- threads: 1 and 2 give the same bits ---- */
static void threads_agree(void) {
#ifdef _OPENMP
    cfg k = with_mask(base(4, 1, 3, 300, 300, 64, 48, 1), 4, 1, 1, 1, 300, 0);
    data x = make_data(&k);
    float *res[2][5];
    int t, i, sizes[5];
    for (t = 0; t < 2; t++) {
        av_ctx *c = av_ctx_new();
        av_tensor *q = make(c, &k, x.q, k.Tq, k.D), *kk = make(c, &k, x.k, k.Tk, k.D), *v = make(c, &k, x.v, k.Tk, k.Dv);
        av_tensor *m = make_mask(c, &k, x.m), *o, *r;
        av_tensor *all[5];
        av_set_num_threads(t + 1);
        av_requires_grad(c, q); av_requires_grad(c, kk); av_requires_grad(c, v); av_requires_grad(c, m);
        av_ctx_seed(c, 5);
        o = av_sdpa(c, q, kk, v, m, 1, 0.1f, 0.0f);
        r = av_zeros_shape(c, o->ndim, o->shape);
        gc_seed(31);
        gc_fill(r->data, r->size, -1, 1);
        av_backward(c, av_sum_all(c, av_mul(c, o, r)));
        all[0] = o; all[1] = q; all[2] = kk; all[3] = v; all[4] = m;
        for (i = 0; i < 5; i++) {
            const float *src = i == 0 ? all[i]->data : all[i]->grad;
            sizes[i] = all[i]->size;
            res[t][i] = (float *)malloc(sizeof(float) * (size_t)sizes[i]);
            memcpy(res[t][i], src, sizeof(float) * (size_t)sizes[i]);
        }
        av_ctx_free(c);
    }
    for (i = 0; i < 5; i++) {
        static const char *const names[5] = {"output", "dq", "dk", "dv", "dmask"};
        CHECK(memcmp(res[0][i], res[1][i], sizeof(float) * (size_t)sizes[i]) == 0, "%s differs between 1 and 2 threads", names[i]);
        free(res[0][i]);
        free(res[1][i]);
    }
    av_set_num_threads(0);
    free_data(&x);
#endif
}

int main(void) {
    int isa;
    gc_seed(777);
    for (isa = AV_ISA_SCALAR; isa <= AV_ISA_NEON; isa++) {
        if (!av_isa_supported(isa)) continue;
        av_set_isa(isa);
        printf("isa %s\n", av_isa_name(isa));
        paths_agree();
        mask_helpers();
    }
    av_set_isa(AV_ISA_AUTO);
    gradchecks();
    mha_tests();
    mha_names();
    kv_cache();
    dropout_paths();
    shape_errors();
    threads_agree();
    printf("info: worst gradcheck error %.2f of its tolerance (%s)\n", gc_worst_ratio, gc_worst_what);
    return t_summary();
}
