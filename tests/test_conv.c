/* test_conv.c - [3.7 conv] and the convolution and normalisation layers:
   forward values and gradients against naive double-precision loops written
   here (the 7-deep convolution loop lives in this file, not in the
   library), central finite differences for every op (tests/gradcheck.h),
   batch norm's running statistics across steps, train and eval, buffers
   that optimizers leave alone and files keep, spectral norm's power
   iteration, the layers' names, shapes and initial ranges, shape errors,
   and, built with OpenMP, the same bits on 1 and 2 threads.
   usage: test_conv [workdir]   (default build) */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "gradcheck.h"
#include "expect_fail.h"
#include "check_close.h"

/* ======================================================================= */
/* helpers                                                                 */
/* ======================================================================= */
static const char *work_dir = "build"; /* argv[1]: where a model file may be written */

static float *rnd(int n, double lo, double hi) {
    float *p = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
    gc_fill(p, n, lo, hi);
    return p;
}


static int same_bits(const float *a, const float *b, int n) { return n == 0 || memcmp(a, b, (size_t)n * sizeof(float)) == 0; }

/* sum(y * r) with a fixed r: every output matters */
static av_tensor *weighted(av_ctx *c, av_tensor *y, const float *r) {
    return av_sum_all(c, av_mul(c, y, av_from_shape(c, r, y->ndim, y->shape)));
}

/* ======================================================================= */
/* convolutions: the naive loops                                            */
/* ======================================================================= */
typedef struct conv_case {
    const char *name;
    int transposed, B, Cin, Cout, H, W, kh, kw;
    int sh, sw, ph, pw, dh, dw, oph, opw, groups, bias;
} conv_case;

static av_conv_opts opts_of(const conv_case *k) {
    av_conv_opts o;
    memset(&o, 0, sizeof o);
    o.stride[0] = k->sh; o.stride[1] = k->sw;
    o.padding[0] = k->ph; o.padding[1] = k->pw;
    o.dilation[0] = k->dh; o.dilation[1] = k->dw;
    o.output_padding[0] = k->oph; o.output_padding[1] = k->opw;
    o.groups = k->groups;
    return o;
}

/* output sizes, from the formulas in PyTorch's documentation */
static void out_size(const conv_case *k, int *Ho, int *Wo) {
    if (!k->transposed) {
        *Ho = (k->H + 2 * k->ph - k->dh * (k->kh - 1) - 1) / k->sh + 1;
        *Wo = (k->W + 2 * k->pw - k->dw * (k->kw - 1) - 1) / k->sw + 1;
    } else {
        *Ho = (k->H - 1) * k->sh - 2 * k->ph + k->dh * (k->kh - 1) + k->oph + 1;
        *Wo = (k->W - 1) * k->sw - 2 * k->pw + k->dw * (k->kw - 1) + k->opw + 1;
    }
}

static int w_size(const conv_case *k) {
    return k->transposed ? k->Cin * (k->Cout / k->groups) * k->kh * k->kw : k->Cout * (k->Cin / k->groups) * k->kh * k->kw;
}

/* y = conv(x, w) + b and, given dy, dx dw db of sum(y dy), in double.
   conv2d: y[b][co][oy][ox] += x[b][g Cin/G + ci][oy sh - ph + ky dh][ox sw - pw + kx dw] w[co][ci][ky][kx];
   transposed: x[b][ci][iy][ix] w[ci][co][ky][kx] lands on y[b][g Cout/G + co][iy sh - ph + ky dh][...]. */
static void conv_ref(const conv_case *k, const float *x, const float *w, const float *bias, const float *dy, double *y,
                     double *dx, double *dw, double *db) {
    int Ho, Wo, b, i, o, ky, kx, p, q, G = k->groups, cin_g = k->Cin / G, cout_g = k->Cout / G;
    out_size(k, &Ho, &Wo);
    memset(y, 0, sizeof(double) * (size_t)k->B * k->Cout * Ho * Wo);
    if (dy) {
        memset(dx, 0, sizeof(double) * (size_t)k->B * k->Cin * k->H * k->W);
        memset(dw, 0, sizeof(double) * (size_t)w_size(k));
        memset(db, 0, sizeof(double) * (size_t)k->Cout);
    }
    for (b = 0; b < k->B; b++)
        for (o = 0; o < k->Cout; o++)
            for (p = 0; p < Ho * Wo; p++) {
                size_t yi = ((size_t)b * k->Cout + o) * Ho * Wo + p;
                y[yi] = bias ? bias[o] : 0.0;
                if (dy) db[o] += dy[yi];
            }
    for (b = 0; b < k->B; b++)
        for (i = 0; i < k->Cin; i++)
            for (o = 0; o < k->Cout; o++) {
                int g = k->transposed ? i / cin_g : o / cout_g;
                if (g != (k->transposed ? o / cout_g : i / cin_g)) continue;
                for (ky = 0; ky < k->kh; ky++)
                    for (kx = 0; kx < k->kw; kx++) {
                        size_t wi = k->transposed ? (((size_t)i * cout_g + o % cout_g) * k->kh + ky) * k->kw + kx
                                                  : (((size_t)o * cin_g + i % cin_g) * k->kh + ky) * k->kw + kx;
                        /* the small side's positions (p, q) meet the big side's (p s - pad + k d) */
                        int Hs = k->transposed ? k->H : Ho, Ws = k->transposed ? k->W : Wo;
                        int Hb = k->transposed ? Ho : k->H, Wb = k->transposed ? Wo : k->W;
                        for (p = 0; p < Hs; p++)
                            for (q = 0; q < Ws; q++) {
                                int bp = p * k->sh - k->ph + ky * k->dh, bq = q * k->sw - k->pw + kx * k->dw;
                                size_t si, bi, xi, yi;
                                if (bp < 0 || bp >= Hb || bq < 0 || bq >= Wb) continue;
                                si = (size_t)p * Ws + q;
                                bi = (size_t)bp * Wb + bq;
                                xi = ((size_t)b * k->Cin + i) * k->H * k->W + (k->transposed ? si : bi);
                                yi = ((size_t)b * k->Cout + o) * Ho * Wo + (k->transposed ? bi : si);
                                y[yi] += (double)x[xi] * w[wi];
                                if (dy) {
                                    dx[xi] += (double)dy[yi] * w[wi];
                                    dw[wi] += (double)dy[yi] * x[xi];
                                }
                            }
                    }
            }
}

static av_tensor *run_conv(av_ctx *c, const conv_case *k, av_tensor *x, av_tensor *w, av_tensor *b) {
    av_conv_opts o = opts_of(k);
    return k->transposed ? av_conv_transpose2d(c, x, w, b, &o) : av_conv2d(c, x, w, b, &o);
}

static const conv_case conv_cases[] = {
    /* name                                 T  B Cin Cout H  W kh kw sh sw ph pw dh dw op op  G bias */
    {"3x3 pad 1",                           0, 2, 3, 4, 7, 6, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1},
    {"3x2 stride (2,1) pad (1,0) groups 2", 0, 2, 4, 6, 7, 8, 3, 2, 2, 1, 1, 0, 1, 1, 0, 0, 2, 1},
    {"dilation 2 pad 2, no bias",           0, 1, 2, 3, 9, 7, 3, 3, 1, 1, 2, 2, 2, 2, 0, 0, 1, 0},
    {"1x1",                                 0, 3, 4, 5, 5, 5, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1},
    {"depthwise stride 3 dilation 2",       0, 2, 4, 4, 8, 7, 3, 3, 3, 3, 1, 1, 2, 2, 0, 0, 4, 1},
    {"kernel near the image size",          0, 1, 2, 2, 5, 6, 5, 4, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1},
    {"stride (2,3) pad (0,2) dilation (1,2)",0, 2, 3, 2, 9, 10, 2, 3, 2, 3, 0, 2, 1, 2, 0, 0, 1, 1},
    {"stride 2 odd size, groups 3",         0, 2, 6, 3, 7, 9, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 3, 0},
    {"T: 3x3 stride 2 output_padding 1",    1, 2, 3, 4, 4, 5, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1},
    {"T: groups 2 dilation (1,2) op (1,0)", 1, 2, 4, 6, 3, 4, 3, 3, 2, 2, 0, 0, 1, 2, 1, 0, 2, 1},
    {"T: op 1 from dilation 2, stride 1",   1, 1, 2, 2, 5, 5, 4, 4, 1, 1, 1, 1, 2, 2, 1, 1, 1, 0},
    {"T: stride 3 op 2 groups 2",           1, 2, 4, 2, 4, 3, 2, 2, 3, 3, 1, 1, 1, 1, 2, 2, 2, 1},
    {"T: 1x1 pad 0",                        1, 2, 3, 2, 3, 4, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1},
};
#define N_CONV ((int)(sizeof conv_cases / sizeof conv_cases[0]))

static av_tensor *fwd_conv(av_ctx *c, av_tensor **in, void *u) {
    const conv_case *k = (const conv_case *)u;
    return run_conv(c, k, in[0], in[1], k->bias ? in[2] : NULL);
}

static void gc_conv(const conv_case *k) {
    int nx = k->B * k->Cin * k->H * k->W;
    float *x = rnd(nx, -1, 1), *w = rnd(w_size(k), -1, 1), *b = rnd(k->Cout, -1, 1);
    gc_input in[3];
    char what[160];
    in[0] = gc_in(x, 1, 4, k->B, k->Cin, k->H, k->W);
    in[1] = k->transposed ? gc_in(w, 1, 4, k->Cin, k->Cout / k->groups, k->kh, k->kw)
                          : gc_in(w, 1, 4, k->Cout, k->Cin / k->groups, k->kh, k->kw);
    in[2] = gc_in(b, 1, 1, k->Cout);
    snprintf(what, sizeof what, "grad %s %s", k->transposed ? "conv_transpose2d" : "conv2d", k->name);
    gc_check(what, fwd_conv, (void *)k, k->bias ? 3 : 2, in);
    /* one operand at a time: the backward computes only what is asked */
    in[1].check = 0;
    in[2].check = 0;
    snprintf(what, sizeof what, "grad %s %s, x only", k->transposed ? "conv_transpose2d" : "conv2d", k->name);
    gc_check(what, fwd_conv, (void *)k, k->bias ? 3 : 2, in);
    in[0].check = 0;
    in[1].check = 1;
    snprintf(what, sizeof what, "grad %s %s, w only", k->transposed ? "conv_transpose2d" : "conv2d", k->name);
    gc_check(what, fwd_conv, (void *)k, k->bias ? 3 : 2, in);
    free(x); free(w); free(b);
}

/* forward and every gradient against conv_ref */
static void ref_conv(const conv_case *k, double tol) {
    av_ctx *c = av_ctx_new();
    int Ho, Wo, nx = k->B * k->Cin * k->H * k->W, nw = w_size(k), ny;
    float *xd, *wd, *bd, *dy;
    double *y, *dx, *dw, *db;
    av_tensor *x, *w, *b, *out;
    char what[200];
    out_size(k, &Ho, &Wo);
    ny = k->B * k->Cout * Ho * Wo;
    xd = rnd(nx, -1, 1); wd = rnd(nw, -1, 1); bd = rnd(k->Cout, -1, 1); dy = rnd(ny, -1, 1);
    y = (double *)malloc(sizeof(double) * (size_t)(ny + 1));
    dx = (double *)malloc(sizeof(double) * (size_t)(nx + 1));
    dw = (double *)malloc(sizeof(double) * (size_t)(nw + 1));
    db = (double *)malloc(sizeof(double) * (size_t)(k->Cout + 1));
    conv_ref(k, xd, wd, k->bias ? bd : NULL, dy, y, dx, dw, db);
    x = av_from(c, xd, 4, k->B, k->Cin, k->H, k->W);
    w = k->transposed ? av_from(c, wd, 4, k->Cin, k->Cout / k->groups, k->kh, k->kw)
                      : av_from(c, wd, 4, k->Cout, k->Cin / k->groups, k->kh, k->kw);
    b = k->bias ? av_from(c, bd, 1, k->Cout) : NULL;
    av_requires_grad(c, x); av_requires_grad(c, w);
    if (b) av_requires_grad(c, b);
    out = run_conv(c, k, x, w, b);
    CHECK(out->ndim == 4 && out->shape[0] == k->B && out->shape[1] == k->Cout && out->shape[2] == Ho && out->shape[3] == Wo,
          "%s: output [%d,%d,%d,%d], want [%d,%d,%d,%d]", k->name, out->shape[0], out->shape[1], out->shape[2],
          out->shape[3], k->B, k->Cout, Ho, Wo);
    if (out->size == ny) {
        av_backward(c, weighted(c, out, dy));
        snprintf(what, sizeof what, "%s %s: forward vs naive", k->transposed ? "conv_transpose2d" : "conv2d", k->name);
        check_close(what, out->data, y, ny, tol);
        snprintf(what, sizeof what, "%s %s: dx vs naive", k->transposed ? "conv_transpose2d" : "conv2d", k->name);
        check_close(what, x->grad, dx, nx, tol);
        snprintf(what, sizeof what, "%s %s: dw vs naive", k->transposed ? "conv_transpose2d" : "conv2d", k->name);
        check_close(what, w->grad, dw, nw, tol);
        if (b) {
            snprintf(what, sizeof what, "%s %s: db vs naive", k->transposed ? "conv_transpose2d" : "conv2d", k->name);
            check_close(what, b->grad, db, k->Cout, tol);
        }
    }
    free(xd); free(wd); free(bd); free(dy); free(y); free(dx); free(dw); free(db);
    av_ctx_free(c);
}

static void test_conv(void) {
    /* larger: several runs of images for dW (B > 8), channels that fill
       micro-tiles, a band of rows smaller than the image (K Wv Ho > 2^19) */
    static const conv_case big[] = {
        {"B 11, 16 -> 24 channels, 12x10", 0, 11, 16, 24, 12, 10, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1},
        {"stride 2, 32 -> 40, groups 4", 0, 9, 32, 40, 14, 15, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 4, 1},
        {"64 channels 32x32: bands of rows", 0, 2, 64, 4, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1},
        {"T: B 10, 24 -> 16, stride 2", 1, 10, 24, 16, 7, 6, 4, 4, 2, 2, 1, 1, 1, 1, 0, 0, 1, 1},
        {"T: 64 -> 4 channels 32x32: bands", 1, 2, 64, 4, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1},
    };
    int i;
    for (i = 0; i < N_CONV; i++) {
        gc_conv(&conv_cases[i]);
        ref_conv(&conv_cases[i], 1e-5);
    }
    for (i = 0; i < (int)(sizeof big / sizeof big[0]); i++) ref_conv(&big[i], 1e-5);
}

/* ======================================================================= */
/* pooling and resizing                                                     */
/* ======================================================================= */
enum { MAXP, AVGP, AVGP_NOPAD, ADAPTIVE, NEAREST, BILINEAR };
typedef struct pool_case { const char *name; int kind, B, C, H, W, k, s, p, oh, ow; } pool_case;

static const pool_case pool_cases[] = {
    {"max k3 s2 p1", MAXP, 2, 3, 7, 6, 3, 2, 1, 0, 0},
    {"max k2 (stride = kernel)", MAXP, 1, 2, 6, 5, 2, 0, 0, 0, 0},
    {"max k3 s1 p1 odd", MAXP, 2, 2, 5, 7, 3, 1, 1, 0, 0},
    {"max k4 s3 p2", MAXP, 1, 2, 9, 8, 4, 3, 2, 0, 0},
    {"avg k3 s2 p1", AVGP, 2, 3, 7, 6, 3, 2, 1, 0, 0},
    {"avg k2", AVGP, 1, 2, 6, 5, 2, 0, 0, 0, 0},
    {"avg k3 s2 p1 without pad count", AVGP_NOPAD, 2, 2, 7, 8, 3, 2, 1, 0, 0},
    {"avg k4 s3 p2 without pad count", AVGP_NOPAD, 1, 2, 9, 8, 4, 3, 2, 0, 0},
    {"adaptive 7x5 -> 3x2", ADAPTIVE, 2, 2, 7, 5, 0, 0, 0, 3, 2},
    {"adaptive 4x3 -> 6x5 (overlapping)", ADAPTIVE, 1, 2, 4, 3, 0, 0, 0, 6, 5},
    {"adaptive 5x6 -> 1x1", ADAPTIVE, 2, 3, 5, 6, 0, 0, 0, 1, 1},
    {"nearest 3x4 -> 7x9", NEAREST, 2, 2, 3, 4, 0, 0, 0, 7, 9},
    {"nearest 4x3 -> 8x6", NEAREST, 1, 2, 4, 3, 0, 0, 0, 8, 6},
    {"nearest 6x5 -> 4x3", NEAREST, 1, 2, 6, 5, 0, 0, 0, 4, 3},
    {"bilinear 3x4 -> 7x9", BILINEAR, 2, 2, 3, 4, 0, 0, 0, 7, 9},
    {"bilinear 4x4 -> 8x8", BILINEAR, 1, 2, 4, 4, 0, 0, 0, 8, 8},
    {"bilinear 6x5 -> 4x3", BILINEAR, 1, 2, 6, 5, 0, 0, 0, 4, 3},
    {"bilinear 3x5 -> 3x5", BILINEAR, 1, 1, 3, 5, 0, 0, 0, 3, 5},
};
#define N_POOL ((int)(sizeof pool_cases / sizeof pool_cases[0]))

static av_tensor *run_pool(av_ctx *c, const pool_case *k, av_tensor *x) {
    switch (k->kind) {
    case MAXP: return av_max_pool2d(c, x, k->k, k->s, k->p);
    case AVGP: return av_avg_pool2d(c, x, k->k, k->s, k->p, 1);
    case AVGP_NOPAD: return av_avg_pool2d(c, x, k->k, k->s, k->p, 0);
    case ADAPTIVE: return av_adaptive_avg_pool2d(c, x, k->oh, k->ow);
    case NEAREST: return av_upsample_nearest2d(c, x, k->oh, k->ow);
    default: return av_upsample_bilinear2d(c, x, k->oh, k->ow);
    }
}

static av_tensor *fwd_pool(av_ctx *c, av_tensor **in, void *u) { return run_pool(c, (const pool_case *)u, in[0]); }

/* the source pixels and weights of output index o along an axis of n (out outputs) */
static int taps_ref(const pool_case *k, int n, int out, int o, int *idx, double *wt) {
    int cnt = 0, i, s = k->s ? k->s : k->k;
    if (k->kind == MAXP || k->kind == AVGP || k->kind == AVGP_NOPAD) {
        for (i = o * s - k->p; i < o * s - k->p + k->k; i++)
            if (i >= 0 && i < n) { idx[cnt] = i; wt[cnt++] = 1.0; }
    } else if (k->kind == ADAPTIVE) {
        int a = (int)floor((double)o * n / out), b = (int)ceil((double)(o + 1) * n / out);
        for (i = a; i < b; i++) { idx[cnt] = i; wt[cnt++] = 1.0 / (b - a); }
    } else if (k->kind == NEAREST) {
        idx[0] = (int)floor((double)o * n / out);
        wt[0] = 1.0;
        cnt = 1;
    } else {
        double src = ((double)o + 0.5) * n / out - 0.5;
        int i0;
        if (src < 0) src = 0;
        i0 = (int)floor(src);
        idx[0] = i0; wt[0] = 1.0 - (src - i0);
        idx[1] = i0 + 1 < n ? i0 + 1 : i0; wt[1] = src - i0;
        cnt = 2;
    }
    return cnt;
}

/* y and dx of sum(y dy) straight from each op's definition */
static void pool_ref(const pool_case *k, const float *x, const float *dy, int Ho, int Wo, double *y, double *dx) {
    int pl, oy, ox, a, b, ty[64], tx[64], ny, nx;
    double wy[64], wx[64];
    memset(dx, 0, sizeof(double) * (size_t)k->B * k->C * k->H * k->W);
    for (pl = 0; pl < k->B * k->C; pl++)
        for (oy = 0; oy < Ho; oy++)
            for (ox = 0; ox < Wo; ox++) {
                const float *xp = x + (size_t)pl * k->H * k->W;
                double *dxp = dx + (size_t)pl * k->H * k->W, v = 0, g = dy[((size_t)pl * Ho + oy) * Wo + ox];
                int best = -1;
                ny = taps_ref(k, k->H, Ho, oy, ty, wy);
                nx = taps_ref(k, k->W, Wo, ox, tx, wx);
                for (a = 0; a < ny; a++)
                    for (b = 0; b < nx; b++) {
                        int at = ty[a] * k->W + tx[b];
                        if (k->kind == MAXP) {
                            if (best < 0 || xp[at] > xp[best]) best = at;
                        } else {
                            double scale = k->kind == AVGP ? 1.0 / (k->k * k->k) : k->kind == AVGP_NOPAD ? 1.0 / (ny * nx) : wy[a] * wx[b];
                            v += scale * xp[at];
                            dxp[at] += scale * g;
                        }
                    }
                if (k->kind == MAXP) {
                    v = xp[best];
                    dxp[best] += g;
                }
                y[((size_t)pl * Ho + oy) * Wo + ox] = v;
            }
}

static void test_pool(void) {
    int i;
    for (i = 0; i < N_POOL; i++) {
        const pool_case *k = &pool_cases[i];
        int n = k->B * k->C * k->H * k->W, Ho, Wo, ny, s = k->s ? k->s : k->k;
        float *xd = (float *)malloc(sizeof(float) * (size_t)n), *dy;
        double *y, *dx;
        av_ctx *c = av_ctx_new();
        av_tensor *x, *out;
        gc_input in[1];
        char what[160];
        /* distinct values 0.06 apart: no tie, no perturbation crosses another value */
        gc_fill_distinct(xd, n, -0.03 * n, 0.03 * n);
        if (k->kind == MAXP || k->kind == AVGP || k->kind == AVGP_NOPAD) {
            Ho = (k->H + 2 * k->p - k->k) / s + 1;
            Wo = (k->W + 2 * k->p - k->k) / s + 1;
        } else {
            Ho = k->oh;
            Wo = k->ow;
        }
        ny = k->B * k->C * Ho * Wo;
        dy = rnd(ny, -1, 1);
        y = (double *)malloc(sizeof(double) * (size_t)ny);
        dx = (double *)malloc(sizeof(double) * (size_t)n);
        pool_ref(k, xd, dy, Ho, Wo, y, dx);
        x = av_from(c, xd, 4, k->B, k->C, k->H, k->W);
        av_requires_grad(c, x);
        out = run_pool(c, k, x);
        CHECK(out->ndim == 4 && out->shape[2] == Ho && out->shape[3] == Wo, "%s: output %dx%d, want %dx%d", k->name,
              out->shape[2], out->shape[3], Ho, Wo);
        if (out->size == ny) {
            av_backward(c, weighted(c, out, dy));
            snprintf(what, sizeof what, "%s: forward vs naive", k->name);
            check_close(what, out->data, y, ny, 1e-6);
            snprintf(what, sizeof what, "%s: dx vs naive", k->name);
            check_close(what, x->grad, dx, n, 1e-6);
        }
        in[0] = gc_in(xd, 1, 4, k->B, k->C, k->H, k->W);
        snprintf(what, sizeof what, "grad %s", k->name);
        gc_check(what, fwd_pool, (void *)k, 1, in);
        free(xd); free(dy); free(y); free(dx);
        av_ctx_free(c);
    }
}

/* ======================================================================= */
/* batch norm and group norm                                                */
/* ======================================================================= */
/* per set (channel for batch norm, (b, group) for group norm): mean, biased
   var, y = (x - mean) / sqrt(var + eps) w + b */
static void norm_ref(const float *x, int B, int C, int inner, int groups, const float *w, const float *bias, double eps,
                     const double *fixed_mean, const double *fixed_var, double *y, double *mean_out, double *var_out) {
    int sets = groups ? B * groups : C, s, b, ch, i;
    for (s = 0; s < sets; s++) {
        int b0 = groups ? s / groups : 0, nb = groups ? 1 : B, c0 = groups ? s % groups * (C / groups) : s;
        int nc = groups ? C / groups : 1;
        double sum = 0, ss = 0, n = (double)nb * nc * inner, mean, var;
        for (b = b0; b < b0 + nb; b++)
            for (ch = c0; ch < c0 + nc; ch++)
                for (i = 0; i < inner; i++) sum += x[((size_t)b * C + ch) * inner + i];
        mean = sum / n;
        for (b = b0; b < b0 + nb; b++)
            for (ch = c0; ch < c0 + nc; ch++)
                for (i = 0; i < inner; i++) {
                    double d = x[((size_t)b * C + ch) * inner + i] - mean;
                    ss += d * d;
                }
        var = ss / n;
        if (mean_out) { mean_out[s] = mean; var_out[s] = var; }
        if (fixed_mean) { mean = fixed_mean[s]; var = fixed_var[s]; }
        for (b = b0; b < b0 + nb; b++)
            for (ch = c0; ch < c0 + nc; ch++)
                for (i = 0; i < inner; i++) {
                    size_t e = ((size_t)b * C + ch) * inner + i;
                    y[e] = (x[e] - mean) / sqrt(var + eps) * (w ? w[ch] : 1.0) + (bias ? bias[ch] : 0.0);
                }
    }
}

typedef struct norm_case { const char *name; int ndim, B, C, H, W, groups, affine, eval; } norm_case;

static av_tensor *fwd_norm(av_ctx *c, av_tensor **in, void *u) {
    const norm_case *k = (const norm_case *)u;
    av_tensor *w = k->affine ? in[1] : NULL, *b = k->affine ? in[2] : NULL;
    av_set_training(c, !k->eval);
    if (k->groups) return av_group_norm(c, in[0], k->groups, w, b, 1e-5f);
    return av_batch_norm(c, in[0], k->eval ? in[3] : NULL, k->eval ? in[4] : NULL, w, b, 0.1f, 1e-5f);
}

static void test_norm_grads(void) {
    static const norm_case cases[] = {
        {"batch_norm [4,3,3,2] training", 4, 4, 3, 3, 2, 0, 1, 0},
        {"batch_norm [5,4] training, no affine", 2, 5, 4, 1, 1, 0, 0, 0},
        {"batch_norm [3,2,5] training", 3, 3, 2, 5, 1, 0, 1, 0},
        {"batch_norm [3,3,2,2] eval", 4, 3, 3, 2, 2, 0, 1, 1},
        {"group_norm [2,6,3,2] 3 groups", 4, 2, 6, 3, 2, 3, 1, 0},
        {"group_norm [2,4,5] 1 group", 3, 2, 4, 5, 1, 1, 1, 0},
        {"group_norm [3,4,2,2] 4 groups, no affine", 4, 3, 4, 2, 2, 4, 0, 0},
    };
    int i;
    for (i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        const norm_case *k = &cases[i];
        int n = k->B * k->C * k->H * k->W;
        float *x = rnd(n, -2, 2), *w = rnd(k->C, 0.5, 1.5), *b = rnd(k->C, -1, 1), *rm = rnd(k->C, -0.5, 0.5),
              *rv = rnd(k->C, 0.5, 2);
        gc_input in[5];
        char what[160];
        in[0] = k->ndim == 4 ? gc_in(x, 1, 4, k->B, k->C, k->H, k->W)
                : k->ndim == 3 ? gc_in(x, 1, 3, k->B, k->C, k->H) : gc_in(x, 1, 2, k->B, k->C);
        in[1] = gc_in(w, k->affine, 1, k->C);
        in[2] = gc_in(b, k->affine, 1, k->C);
        in[3] = gc_in(rm, 0, 1, k->C);
        in[4] = gc_in(rv, 0, 1, k->C);
        snprintf(what, sizeof what, "grad %s", k->name);
        gc_check(what, fwd_norm, (void *)k, 5, in);
        free(x); free(w); free(b); free(rm); free(rv);
    }
}

/* batch norm: values and running statistics over a few training steps,
   then eval with them; the layer's buffers and num_batches_tracked;
   buffers left alone by an optimizer with weight decay, kept by a file */
static void test_batch_norm_steps(void) {
    enum { B = 6, C = 3, H = 4, W = 5, STEPS = 3 };
    int n = B * C * H * W, step, i;
    av_model *m = av_model_new(1);
    av_batch_norm_layer bn = av_batch_norm_new(m, "bn", C, 1e-5f, 0.1f);
    av_ctx *c = av_ctx_new();
    double rm[C], rv[C], mean[C], var[C], *y = (double *)malloc(sizeof(double) * n);
    float *xd = (float *)malloc(sizeof(float) * n), wd[C], bd[C], saved[2 * C];
    av_optim sgd = av_sgd(0.1, 0.9, 0.5);
    av_tensor *out;
    char what[120];
    CHECK(av_model_count(m) == 2 && av_model_buffer_count(m) == 3, "batch norm: %d parameters and %d buffers",
          av_model_count(m), av_model_buffer_count(m));
    CHECK(av_model_find(m, "bn.running_mean") == bn.running_mean && av_model_find(m, "bn.running_var") == bn.running_var &&
              av_model_find(m, "bn.num_batches_tracked") == bn.num_batches_tracked && bn.num_batches_tracked->ndim == 0,
          "batch norm: buffer names");
    for (i = 0; i < C; i++) {
        rm[i] = 0; rv[i] = 1;
        CHECK(bn.running_mean->data[i] == 0 && bn.running_var->data[i] == 1 && bn.weight->data[i] == 1 && bn.bias->data[i] == 0,
              "batch norm: initial values of channel %d", i);
        bn.weight->data[i] = wd[i] = (float)(0.5 + 0.3 * i);
        bn.bias->data[i] = bd[i] = (float)(0.2 * i - 0.1);
    }
    for (step = 0; step < STEPS; step++) {
        gc_fill(xd, n, -1.0 + step, 2.0 + 0.5 * step);
        av_ctx_reset(c);
        out = av_batch_norm_forward(c, &bn, av_from(c, xd, 4, B, C, H, W));
        norm_ref(xd, B, C, H * W, 0, wd, bd, 1e-5, NULL, NULL, y, mean, var);
        snprintf(what, sizeof what, "batch norm training step %d", step);
        check_close(what, out->data, y, n, 1e-5);
        for (i = 0; i < C; i++) {
            rm[i] = 0.9 * rm[i] + 0.1 * mean[i];
            rv[i] = 0.9 * rv[i] + 0.1 * var[i] * (B * H * W) / (B * H * W - 1.0); /* unbiased */
        }
        check_close("running_mean", bn.running_mean->data, rm, C, 1e-6);
        check_close("running_var (unbiased variance)", bn.running_var->data, rv, C, 1e-6);
        /* the optimizer steps parameters only: buffers keep their values */
        av_backward(c, av_sum_all(c, av_mul(c, out, out)));
        memcpy(saved, bn.running_mean->data, sizeof(float) * C);
        memcpy(saved + C, bn.running_var->data, sizeof(float) * C);
        CHECK(av_optim_step(m, &sgd) == 0, "sgd: %s", av_error());
        CHECK(same_bits(saved, bn.running_mean->data, C) && same_bits(saved + C, bn.running_var->data, C) &&
                  bn.running_mean->grad == NULL,
              "an optimizer step with weight decay changed the running statistics");
        memcpy(wd, bn.weight->data, sizeof wd);
        memcpy(bd, bn.bias->data, sizeof bd);
    }
    CHECK(bn.num_batches_tracked->data[0] == STEPS, "num_batches_tracked %g after %d steps", bn.num_batches_tracked->data[0], STEPS);
    /* eval: the running statistics, nothing moves */
    av_ctx_reset(c);
    av_set_training(c, 0);
    memcpy(saved, bn.running_mean->data, sizeof(float) * C);
    out = av_batch_norm_forward(c, &bn, av_from(c, xd, 4, B, C, H, W));
    norm_ref(xd, B, C, H * W, 0, wd, bd, 1e-5, rm, rv, y, mean, var);
    check_close("batch norm eval uses the running statistics", out->data, y, n, 1e-5);
    CHECK(same_bits(saved, bn.running_mean->data, C) && bn.num_batches_tracked->data[0] == STEPS,
          "batch norm eval moved the running statistics or the count");
    /* saved and loaded by name, into a fresh model */
    {
        av_model *m2 = av_model_new(2);
        av_batch_norm_layer bn2 = av_batch_norm_new(m2, "bn", C, 1e-5f, 0.1f);
        char path[600];
        snprintf(path, sizeof path, "%.400s/test_conv_bn.safetensors", work_dir);
        CHECK(av_model_save(m, path) == 0, "save: %s", av_error());
        CHECK(av_model_load(m2, path) == 0, "load: %s", av_error());
        CHECK(same_bits(bn.running_mean->data, bn2.running_mean->data, C) &&
                  same_bits(bn.running_var->data, bn2.running_var->data, C) &&
                  bn2.num_batches_tracked->data[0] == STEPS && same_bits(bn.weight->data, bn2.weight->data, C),
              "batch norm buffers through a file");
        remove(path);
        av_model_free(m2);
    }
    /* without running statistics: batch statistics even in eval is refused */
    EXPECT_FAIL("batch norm eval without running stats", av_batch_norm(c, av_from(c, xd, 4, B, C, H, W), NULL, NULL, NULL, NULL, 0.1f, 1e-5f),
                "av_batch_norm", "running statistics");
    av_set_training(c, 1);
    EXPECT_FAIL("batch norm training on one value per channel", av_batch_norm(c, av_zeros(c, 2, 1, 3), NULL, NULL, NULL, NULL, 0.1f, 1e-5f),
                "av_batch_norm", "[1,3]");
    free(y); free(xd);
    av_ctx_free(c);
    av_model_free(m);
}

static void test_group_norm_values(void) {
    enum { B = 3, C = 6, H = 5, W = 4, G = 2 };
    int n = B * C * H * W;
    av_model *m = av_model_new(3);
    av_group_norm_layer gn = av_group_norm_new(m, "gn", G, C, 1e-5f);
    av_ctx *c = av_ctx_new();
    float *xd = rnd(n, -3, 1), wd[C], bd[C];
    double *y = (double *)malloc(sizeof(double) * n);
    av_tensor *out;
    int i;
    CHECK(av_model_find(m, "gn.weight") == gn.weight && av_model_find(m, "gn.bias") == gn.bias && av_model_buffer_count(m) == 0,
          "group norm: names");
    for (i = 0; i < C; i++) {
        gn.weight->data[i] = wd[i] = (float)(1.0 + 0.1 * i);
        gn.bias->data[i] = bd[i] = (float)(0.05 * i);
    }
    out = av_group_norm_forward(c, &gn, av_from(c, xd, 4, B, C, H, W));
    norm_ref(xd, B, C, H * W, G, wd, bd, 1e-5, NULL, NULL, y, NULL, NULL);
    check_close("group norm vs naive", out->data, y, n, 1e-5);
    av_set_training(c, 0);
    out = av_group_norm_forward(c, &gn, av_from(c, xd, 4, B, C, H, W));
    check_close("group norm in eval: the same", out->data, y, n, 1e-5);
    EXPECT_FAIL("group norm groups", av_group_norm(c, av_from(c, xd, 4, B, C, H, W), 4, NULL, NULL, 1e-5f), "av_group_norm",
                "4 groups do not divide the 6 channels");
    EXPECT_FAIL("group norm weight", av_group_norm(c, av_from(c, xd, 4, B, C, H, W), 2, av_zeros(c, 1, 4), NULL, 1e-5f),
                "av_group_norm", "[4]");
    free(xd); free(y);
    av_ctx_free(c);
    av_model_free(m);
}

/* ======================================================================= */
/* spectral norm                                                            */
/* ======================================================================= */
/* W as [R, rest] with rows along dim (0 or 1 for a 4-d w) */
static double sn_w(const float *w, const int *shape, int dim, int r, int col) {
    int T = shape[2] * shape[3];
    if (dim == 0) return w[(size_t)r * shape[1] * T + col];
    return w[((size_t)(col / T) * shape[1] + r) * T + col % T];
}

/* power iterations and sigma in double */
static double sn_ref(const float *w, const int *shape, int dim, int iters, double *u, double *v) {
    int R = shape[dim], N = shape[0] * shape[1] * shape[2] * shape[3] / R, r, j, it;
    double sigma = 0, norm;
    for (it = 0; it < iters; it++) {
        for (norm = 0, j = 0; j < N; j++) {
            for (v[j] = 0, r = 0; r < R; r++) v[j] += sn_w(w, shape, dim, r, j) * u[r];
            norm += v[j] * v[j];
        }
        for (j = 0; j < N; j++) v[j] /= sqrt(norm);
        for (norm = 0, r = 0; r < R; r++) {
            for (u[r] = 0, j = 0; j < N; j++) u[r] += sn_w(w, shape, dim, r, j) * v[j];
            norm += u[r] * u[r];
        }
        for (r = 0; r < R; r++) u[r] /= sqrt(norm);
    }
    for (r = 0; r < R; r++)
        for (j = 0; j < N; j++) sigma += u[r] * sn_w(w, shape, dim, r, j) * v[j];
    return sigma;
}

typedef struct sn_case { int dim, conv; } sn_case;

/* eval mode: u and v constants; conv: the normalised weight in a convolution */
static av_tensor *fwd_sn(av_ctx *c, av_tensor **in, void *u) {
    const sn_case *k = (const sn_case *)u;
    av_tensor *w;
    av_set_training(c, 0);
    w = av_spectral_norm(c, in[0], in[1], in[2], k->dim, 1, 1e-12f);
    if (!k->conv) return w;
    return k->dim ? av_conv_transpose2d(c, in[3], w, NULL, NULL) : av_conv2d(c, in[3], w, NULL, NULL);
}

static void test_spectral_norm(void) {
    static const int shape[4] = {4, 3, 2, 2};
    int dim, step, i, n = 48;
    for (dim = 0; dim < 2; dim++) {
        av_model *m = av_model_new(5);
        av_conv2d_layer l = dim ? av_conv_transpose2d_new(m, "up", 4, 3, 2, 2, NULL, 1) : av_conv2d_new(m, "d.conv", 3, 4, 2, 2, NULL, 1);
        const char *base = dim ? "up.weight" : "d.conv.weight";
        av_ctx *c = av_ctx_new();
        int R = shape[dim], N = n / R;
        double u[4], v[16], sigma, *want = (double *)malloc(sizeof(double) * n), norm;
        char name[64];
        av_tensor *w;
        sn_case k;
        float *xd = rnd(2 * (dim ? 4 : 3) * 9, -1, 1), ud[4], vd[16];
        gc_input in[4];
        av_conv2d_spectral_norm(m, &l);
        snprintf(name, sizeof name, "%s_orig", base);
        CHECK(av_model_find(m, name) == l.weight && l.sn.weight_orig == l.weight && !strcmp(l.weight->name, name),
              "spectral norm: the weight is now %s", l.weight->name);
        snprintf(name, sizeof name, "%s_u", base);
        CHECK(av_model_find(m, name) == l.sn.weight_u && l.sn.weight_u->size == R && !l.sn.weight_u->requires_grad, "%s", name);
        snprintf(name, sizeof name, "%s_v", base);
        CHECK(av_model_find(m, name) == l.sn.weight_v && l.sn.weight_v->size == N, "%s", name);
        CHECK(av_model_find(m, base) == NULL && av_model_count(m) == 2 && av_model_buffer_count(m) == 2,
              "spectral norm: %d parameters, %d buffers", av_model_count(m), av_model_buffer_count(m));
        for (norm = 0, i = 0; i < R; i++) norm += (double)l.sn.weight_u->data[i] * l.sn.weight_u->data[i];
        CHECK(fabs(norm - 1) < 1e-5, "spectral norm: u starts normalised (|u|^2 = %g)", norm);
        for (i = 0; i < R; i++) u[i] = l.sn.weight_u->data[i];
        for (i = 0; i < N; i++) v[i] = l.sn.weight_v->data[i];
        /* training: one power iteration per forward, from the buffers */
        for (step = 0; step < 3; step++) {
            av_ctx_reset(c);
            w = av_spectral_norm_forward(c, &l.sn);
            sigma = sn_ref(l.weight->data, shape, dim, 1, u, v);
            for (i = 0; i < n; i++) want[i] = l.weight->data[i] / sigma;
            check_close(dim ? "spectral norm dim 1: W / sigma in training" : "spectral norm: W / sigma in training", w->data, want, n, 1e-5);
            check_close("spectral norm: u after the power iteration", l.sn.weight_u->data, u, R, 1e-5);
            check_close("spectral norm: v after the power iteration", l.sn.weight_v->data, v, N, 1e-5);
        }
        /* eval: no iteration */
        av_ctx_reset(c);
        av_set_training(c, 0);
        memcpy(ud, l.sn.weight_u->data, sizeof(float) * R);
        w = av_spectral_norm_forward(c, &l.sn);
        sigma = sn_ref(l.weight->data, shape, dim, 0, u, v);
        for (i = 0; i < n; i++) want[i] = l.weight->data[i] / sigma;
        check_close("spectral norm: eval uses u and v as they are", w->data, want, n, 1e-5);
        CHECK(same_bits(ud, l.sn.weight_u->data, R), "spectral norm: eval moved u");
        /* the layer runs the normalised weight */
        w = av_conv2d_forward(c, &l, av_from(c, xd, 4, 2, dim ? 4 : 3, 3, 3));
        CHECK(w->shape[1] == (dim ? 3 : 4), "spectral norm conv output channels %d", w->shape[1]);
        /* gradients (u, v constants) */
        memcpy(vd, l.sn.weight_v->data, sizeof(float) * N);
        k.dim = dim;
        k.conv = 0;
        in[0] = gc_in(l.weight->data, 1, 4, 4, 3, 2, 2);
        in[1] = gc_in(ud, 0, 1, R);
        in[2] = gc_in(vd, 0, 1, N);
        in[3] = gc_in(xd, 0, 4, 2, dim ? 4 : 3, 3, 3);
        gc_check(dim ? "grad spectral_norm dim 1" : "grad spectral_norm dim 0", fwd_sn, &k, 3, in);
        k.conv = 1;
        in[3].check = 1;
        gc_check(dim ? "grad conv_transpose2d(x, spectral_norm(w))" : "grad conv2d(x, spectral_norm(w))", fwd_sn, &k, 4, in);
        free(want); free(xd);
        av_ctx_free(c);
        av_model_free(m);
    }
}

/* ======================================================================= */
/* layers, errors, threads                                                  */
/* ======================================================================= */
static void test_layers(void) {
    av_model *m = av_model_new(7);
    av_conv_opts o = av_conv_opts_square(2, 1, 1, 2);
    av_conv2d_layer a = av_conv2d_new(m, "enc.0", 4, 6, 3, 3, &o, 1);
    av_conv2d_layer t = av_conv_transpose2d_new(m, "dec.0", 6, 4, 4, 4, &o, 1);
    av_conv2d_layer n = av_conv2d_new(m, "head", 6, 1, 1, 1, NULL, 0);
    av_ctx *c = av_ctx_new();
    av_tensor *x, *y;
    int i, in_range = 1;
    float bound;
    CHECK(a.weight->ndim == 4 && a.weight->shape[0] == 6 && a.weight->shape[1] == 2 && a.weight->shape[2] == 3 &&
              av_model_find(m, "enc.0.weight") == a.weight && av_model_find(m, "enc.0.bias") == a.bias && a.bias->size == 6,
          "nn.Conv2d names and layout");
    CHECK(t.weight->shape[0] == 6 && t.weight->shape[1] == 2 && t.weight->shape[2] == 4 && t.bias->size == 4 &&
              av_model_find(m, "dec.0.weight") == t.weight,
          "nn.ConvTranspose2d layout [in, out/groups, kh, kw]");
    CHECK(n.bias == NULL && av_model_find(m, "head.bias") == NULL && n.opts.stride[0] == 1 && n.opts.groups == 1,
          "a conv without bias, default options");
    /* PyTorch's init: U(±1/sqrt(fan_in)), fan_in = in/groups kh kw (transposed: out/groups kh kw) */
    bound = 1.0f / sqrtf(2 * 9);
    for (i = 0; i < a.weight->size; i++) in_range &= fabsf(a.weight->data[i]) <= bound;
    for (i = 0; i < a.bias->size; i++) in_range &= fabsf(a.bias->data[i]) <= bound;
    bound = 1.0f / sqrtf(2 * 16);
    for (i = 0; i < t.weight->size; i++) in_range &= fabsf(t.weight->data[i]) <= bound;
    CHECK(in_range, "conv init within U(±1/sqrt(fan_in))");
    x = av_randn(c, 0, 1, 4, 2, 4, 9, 8);
    y = av_conv2d_forward(c, &a, x);
    CHECK(y->shape[1] == 6 && y->shape[2] == 5 && y->shape[3] == 4, "conv layer output [%d,%d,%d,%d]", y->shape[0], y->shape[1],
          y->shape[2], y->shape[3]);
    y = av_conv2d_forward(c, &t, y);
    CHECK(y->shape[1] == 4 && y->shape[2] == 10 && y->shape[3] == 8, "conv transpose layer output [%d,%d,%d,%d]", y->shape[0],
          y->shape[1], y->shape[2], y->shape[3]);
    av_ctx_free(c);
    av_model_free(m);
}

static void test_errors(void) {
    av_ctx *c = av_ctx_new();
    av_tensor *x = av_zeros(c, 4, 2, 4, 5, 5), *w = av_zeros(c, 4, 6, 2, 3, 3), *x3 = av_zeros(c, 3, 4, 5, 5);
    av_conv_opts o = av_conv_opts_square(1, 0, 1, 2), bad;
    EXPECT_FAIL("conv2d rank", av_conv2d(c, x3, w, NULL, NULL), "av_conv2d", "[4,5,5]");
    EXPECT_FAIL("conv2d channels", av_conv2d(c, x, w, NULL, NULL), "av_conv2d", "[2,4,5,5] and [6,2,3,3]");
    EXPECT_FAIL("conv2d bias", av_conv2d(c, x, w, av_zeros(c, 1, 5), &o), "av_conv2d", "bias must be [Cout]");
    EXPECT_FAIL("conv2d kernel too large", av_conv2d(c, x, av_zeros(c, 4, 6, 2, 7, 3), NULL, &o), "av_conv2d",
                "kernel is larger than the padded input");
    bad = o;
    bad.stride[1] = -1;
    EXPECT_FAIL("conv2d stride", av_conv2d(c, x, w, NULL, &bad), "av_conv2d", "stride (1, -1)");
    bad = o;
    bad.groups = 3;
    EXPECT_FAIL("conv2d groups", av_conv2d(c, x, w, NULL, &bad), "av_conv2d", "[6,2,3,3]");
    bad = o;
    bad.output_padding[0] = 1;
    EXPECT_FAIL("conv2d output_padding", av_conv2d(c, x, w, NULL, &bad), "av_conv2d", "output_padding");
    bad = av_conv_opts_square(2, 0, 1, 1);
    bad.output_padding[0] = 2;
    EXPECT_FAIL("conv_transpose2d output_padding", av_conv_transpose2d(c, x, av_zeros(c, 4, 4, 3, 3, 3), NULL, &bad),
                "av_conv_transpose2d", "output_padding (2, 0) must be smaller than stride (2, 2)");
    EXPECT_FAIL("conv_transpose2d channels", av_conv_transpose2d(c, x, w, NULL, NULL), "av_conv_transpose2d", "[6,2,3,3]");
    EXPECT_FAIL("max pool padding", av_max_pool2d(c, x, 2, 2, 2), "av_max_pool2d", "padding 2");
    EXPECT_FAIL("max pool rank", av_max_pool2d(c, x3, 2, 2, 0), "av_max_pool2d", "[4,5,5]");
    EXPECT_FAIL("avg pool kernel", av_avg_pool2d(c, x, 8, 1, 1, 1), "av_avg_pool2d", "[2,4,5,5]");
    EXPECT_FAIL("adaptive size", av_adaptive_avg_pool2d(c, x, 0, 2), "av_adaptive_avg_pool2d", "(0, 2)");
    EXPECT_FAIL("upsample size", av_upsample_bilinear2d(c, x, 3, -1), "av_upsample_bilinear2d", "(3, -1)");
    EXPECT_FAIL("upsample rank", av_upsample_nearest2d(c, x3, 3, 3), "av_upsample_nearest2d", "[4,5,5]");
    EXPECT_FAIL("batch norm weight", av_batch_norm(c, x, NULL, NULL, av_zeros(c, 1, 3), NULL, 0.1f, 1e-5f), "av_batch_norm", "[3]");
    EXPECT_FAIL("spectral norm u size", av_spectral_norm(c, w, av_zeros(c, 1, 5), av_zeros(c, 1, 18), 0, 1, 1e-12f),
                "av_spectral_norm", "[6,2,3,3] and [5]");
    EXPECT_FAIL("batch norm momentum", av_batch_norm(c, x, NULL, NULL, NULL, NULL, 1.5f, 1e-5f), "av_batch_norm", "momentum 1.5");
    av_ctx_free(c);
}

/* empty batches and empty channels go through, with empty or zero gradients */
static void test_empty(void) {
    av_ctx *c = av_ctx_new();
    av_conv_opts o = av_conv_opts_square(2, 1, 1, 1);
    av_tensor *x = av_zeros(c, 4, 0, 3, 5, 5), *w = av_ones(c, 4, 4, 3, 3, 3), *b = av_ones(c, 1, 4), *y, *z;
    av_tensor *xc = av_ones(c, 4, 2, 0, 5, 5), *wc = av_ones(c, 4, 4, 0, 3, 3);
    av_requires_grad(c, x); av_requires_grad(c, w); av_requires_grad(c, b);
    y = av_conv2d(c, x, w, b, &o);
    z = av_conv_transpose2d(c, y, w, NULL, &o);
    z = av_add(c, av_max_pool2d(c, z, 3, 2, 1), av_avg_pool2d(c, z, 3, 2, 1, 1));
    z = av_group_norm(c, av_upsample_bilinear2d(c, av_adaptive_avg_pool2d(c, z, 2, 2), 3, 3), 3, NULL, NULL, 1e-5f);
    CHECK(y->size == 0 && y->shape[1] == 4 && y->shape[2] == 3 && z->size == 0, "empty batch: shapes [%d,%d,%d,%d]", y->shape[0],
          y->shape[1], y->shape[2], y->shape[3]);
    av_backward(c, av_add(c, av_sum_all(c, z), av_sum_all(c, b)));
    CHECK(w->grad && w->grad[0] == 0 && b->grad && b->grad[0] == 1, "empty batch: dw %g, db %g", w->grad ? w->grad[0] : -1.0,
          b->grad ? b->grad[0] : -1.0);
    y = av_conv2d(c, xc, wc, b, &o); /* no input channels: the bias alone */
    CHECK(y->size == 2 * 4 * 3 * 3 && y->data[0] == 1 && y->data[y->size - 1] == 1, "no input channels: %d values, first %g",
          y->size, y->data[0]);
    av_ctx_free(c);
}

#ifdef _OPENMP
/* conv2d, conv_transpose2d (forward and every gradient), pooling and the
   norms on 1 and 2 threads: the same bits */
static void run_threads_case(int threads, int transposed, float **res, int *sizes) {
    av_ctx *c = av_ctx_new();
    av_conv_opts o = av_conv_opts_square(transposed ? 2 : 1, 1, 1, 1);
    av_tensor *x, *w, *b, *y, *p, *loss;
    int k = 0;
    av_set_num_threads(threads);
    gc_seed(99);
    x = av_zeros(c, 4, 20, 16, 12, 12);
    w = av_zeros(c, 4, 16, 16, 3, 3);
    b = av_zeros(c, 1, 16);
    gc_fill(x->data, x->size, -1, 1); gc_fill(w->data, w->size, -1, 1); gc_fill(b->data, b->size, -1, 1);
    av_requires_grad(c, x); av_requires_grad(c, w); av_requires_grad(c, b);
    y = transposed ? av_conv_transpose2d(c, x, w, b, &o) : av_conv2d(c, x, w, b, &o);
    p = av_max_pool2d(c, av_batch_norm(c, y, NULL, NULL, NULL, NULL, 0.1f, 1e-5f), 3, 2, 1);
    p = av_add(c, av_avg_pool2d(c, p, 2, 1, 1, 1), av_upsample_bilinear2d(c, av_group_norm(c, p, 4, NULL, NULL, 1e-5f),
                                                                        p->shape[2] + 1, p->shape[3] + 1));
    loss = av_sum_all(c, av_mul(c, p, p));
    av_backward(c, loss);
    res[k] = (float *)malloc(sizeof(float) * (size_t)y->size); memcpy(res[k], y->data, sizeof(float) * y->size); sizes[k++] = y->size;
    res[k] = (float *)malloc(sizeof(float) * (size_t)x->size); memcpy(res[k], x->grad, sizeof(float) * x->size); sizes[k++] = x->size;
    res[k] = (float *)malloc(sizeof(float) * (size_t)w->size); memcpy(res[k], w->grad, sizeof(float) * w->size); sizes[k++] = w->size;
    res[k] = (float *)malloc(sizeof(float) * (size_t)b->size); memcpy(res[k], b->grad, sizeof(float) * b->size); sizes[k++] = b->size;
    av_set_num_threads(0);
    av_ctx_free(c);
}

static void test_threads(void) {
    static const char *const names[4] = {"output", "dx", "dw", "db"};
    int transposed, i;
    for (transposed = 0; transposed < 2; transposed++) {
        float *one[4], *two[4];
        int n1[4], n2[4];
        run_threads_case(1, transposed, one, n1);
        run_threads_case(2, transposed, two, n2);
        for (i = 0; i < 4; i++) {
            CHECK(n1[i] == n2[i] && same_bits(one[i], two[i], n1[i]), "%s %s: 1 and 2 threads differ",
                  transposed ? "conv_transpose2d" : "conv2d", names[i]);
            free(one[i]); free(two[i]);
        }
    }
    printf("info: conv, pooling and norms bit-identical on 1 and 2 threads (OpenMP, %d available)\n", omp_get_max_threads());
}
#endif

int main(int argc, char **argv) {
    if (argc > 1) work_dir = argv[1];
    gc_seed(2024);
    test_conv();
    test_pool();
    test_norm_grads();
    test_batch_norm_steps();
    test_group_norm_values();
    test_spectral_norm();
    test_layers();
    test_errors();
    test_empty();
#ifdef _OPENMP
    test_threads();
#endif
    printf("info: GEMM on the %s path; worst gradient check used %.0f%% of its tolerance (%s)\n", av_isa_name(av_get_isa()),
           100 * gc_worst_ratio, gc_worst_what);
    return t_summary();
}
