/* test_ops.c - ops of attnvae.h: gradients against central differences,
   forward values against naive double-precision references, autodiff
   semantics (accumulation, no-grad, detach, arena reuse) and shape errors. */
#if defined(__unix__) || defined(__APPLE__)
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <unistd.h>
#define T_HAVE_POSIX 1
#endif
#include <setjmp.h>
#include <stdlib.h>

/* Count the library's heap allocations: steady-state steps must make none. */
static long t_mallocs;
static void *t_malloc(size_t n) { t_mallocs++; return malloc(n); }
static void *t_realloc(void *p, size_t n) { t_mallocs++; return realloc(p, n); }
#define AV_MALLOC(sz) t_malloc(sz)
#define AV_REALLOC(p, sz) t_realloc(p, sz)
#define AV_FREE(p) free(p)

#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "gradcheck.h"

#define PI_D 3.14159265358979323846

/* ======================================================================= */
/* helpers                                                                 */
/* ======================================================================= */
static int shape_is(const av_tensor *t, int ndim, int d0, int d1, int d2, int d3) {
    int want[4], i;
    want[0] = d0; want[1] = d1; want[2] = d2; want[3] = d3;
    if (t->ndim != ndim) return 0;
    for (i = 0; i < ndim; i++)
        if (t->shape[i] != want[i]) return 0;
    return 1;
}

static void shape_str(const av_tensor *t, char *buf) {
    int i, len = sprintf(buf, "[");
    for (i = 0; i < t->ndim; i++) len += sprintf(buf + len, i ? ",%d" : "%d", t->shape[i]);
    sprintf(buf + len, "]");
}

#define CHECK_SHAPE(t, nd, a, b, c_, d, what)                                        \
    do {                                                                             \
        char s_[64];                                                                 \
        shape_str(t, s_);                                                            \
        CHECK(shape_is(t, nd, a, b, c_, d), "%s: shape %s, want %d-d", what, s_, nd); \
    } while (0)

/* every element of t within atol + rtol |want|; one CHECK per tensor */
static void check_vals(const char *what, const av_tensor *t, const double *want, int n, double atol, double rtol) {
    int i, bad = -1;
    if (t->size != n) { CHECK(0, "%s: %d elements, want %d", what, t->size, n); return; }
    for (i = 0; i < n && bad < 0; i++) {
        double g = t->data[i];
        if (!(fabs(g - want[i]) <= atol + rtol * fabs(want[i]))) bad = i;
    }
    if (bad >= 0) CHECK(0, "%s: [%d] got %.9g want %.9g", what, bad, t->data[bad], want[bad]);
    else t_passed++;
}

static void check_fvals(const char *what, const float *got, const double *want, int n, double atol, double rtol) {
    int i, bad = -1;
    for (i = 0; i < n && bad < 0; i++)
        if (!(fabs(got[i] - want[i]) <= atol + rtol * fabs(want[i]))) bad = i;
    if (bad >= 0) CHECK(0, "%s: [%d] got %.9g want %.9g", what, bad, got[bad], want[bad]);
    else t_passed++;
}

static av_tensor *mk(av_ctx *c, const float *d, int ndim, int d0, int d1, int d2, int d3) {
    int s[4];
    s[0] = d0; s[1] = d1; s[2] = d2; s[3] = d3;
    return gc_make(c, ndim, s, d);
}

/* ======================================================================= */
/* 0. the gradient checker itself                                          */
/* ======================================================================= */
static av_tensor *fwd_square_plus(av_ctx *c, av_tensor **in, void *u) {
    /* f(x) = x + 0.03 x^2; with detach the x^2 part is hidden from autodiff */
    av_tensor *sq = av_square(c, in[0]);
    if (u) sq = av_detach(c, sq);
    return av_add(c, in[0], av_scale(c, sq, 0.03f));
}

static void gc_selftest(void) {
    float x[12];
    gc_input in[1];
    int bad, dummy = 1;
    gc_fill_away(x, 12, 0.5, 1.0);
    in[0] = gc_in(x, 1, 2, 3, 4);
    /* correct graph: no element may fail */
    bad = gc_check_ex("selftest ok", fwd_square_plus, NULL, 1, in, GC_H, GC_ATOL, GC_RTOL, 1);
    CHECK(bad == 0, "gradcheck flags %d elements of a correct gradient", bad);
    /* autodiff gradient 1 against the true 1 + 0.06x, |x| in [0.5, 1]:
       wrong by 3..6%, every element must be caught */
    bad = gc_check_ex("selftest wrong", fwd_square_plus, &dummy, 1, in, GC_H, GC_ATOL, GC_RTOL, 1);
    CHECK(bad == 12, "gradcheck caught only %d of 12 wrong gradient elements", bad);
}

/* ======================================================================= */
/* 1. gradient checks                                                      */
/* ======================================================================= */
enum {
    U_SCALE, U_ADD_SCALAR, U_EXP, U_LOG, U_SQRT, U_SQUARE, U_TANH, U_SIGMOID, U_RELU,
    U_LEAKY, U_GELU, U_SOFTPLUS, U_SOFTMAX, U_LOG_SOFTMAX, U_COUNT
};
static const char *const unary_names[U_COUNT] = {
    "scale", "add_scalar", "exp", "log", "sqrt", "square", "tanh", "sigmoid", "relu",
    "leaky_relu", "gelu", "softplus", "softmax", "log_softmax"
};

static av_tensor *apply_unary(av_ctx *c, int kind, av_tensor *x) {
    switch (kind) {
    case U_SCALE: return av_scale(c, x, -1.7f);
    case U_ADD_SCALAR: return av_add_scalar(c, x, 0.3f);
    case U_EXP: return av_exp(c, x);
    case U_LOG: return av_log(c, x);
    case U_SQRT: return av_sqrt(c, x);
    case U_SQUARE: return av_square(c, x);
    case U_TANH: return av_tanh(c, x);
    case U_SIGMOID: return av_sigmoid(c, x);
    case U_RELU: return av_relu(c, x);
    case U_LEAKY: return av_leaky_relu(c, x, 0.1f);
    case U_GELU: return av_gelu(c, x);
    case U_SOFTPLUS: return av_softplus(c, x);
    case U_SOFTMAX: return av_softmax(c, x);
    default: return av_log_softmax(c, x);
    }
}

static av_tensor *fwd_unary(av_ctx *c, av_tensor **in, void *u) {
    return apply_unary(c, *(const int *)u, in[0]);
}

static void grad_unary(void) {
    float x[60];
    gc_input in[1];
    int kind;
    char what[160];
    for (kind = 0; kind < U_COUNT; kind++) {
        int shapes, s;
        switch (kind) {
        case U_LOG: case U_SQRT: gc_fill(x, 60, 0.5, 2.0); break;       /* away from 0 */
        case U_RELU: case U_LEAKY: gc_fill_away(x, 60, 0.1, 2.0); break; /* away from the kink */
        case U_EXP: gc_fill(x, 60, -2.0, 2.0); break;
        default: gc_fill(x, 60, -3.0, 3.0); break;
        }
        shapes = kind == U_SOFTMAX || kind == U_LOG_SOFTMAX ? 3 : 1;
        for (s = 0; s < shapes; s++) {
            if (s == 0) in[0] = gc_in(x, 1, 2, 3, 5);
            else if (s == 1) in[0] = gc_in(x, 1, 3, 2, 3, 4);
            else in[0] = gc_in(x, 1, 1, 7);
            snprintf(what, sizeof what, "grad %s shape#%d", unary_names[kind], s);
            gc_check(what, fwd_unary, &kind, 1, in);
        }
    }
    /* a 0-d input through elementwise ops */
    {
        float v = 0.7f;
        for (kind = 0; kind < U_SOFTMAX; kind++) {
            in[0] = gc_in(&v, 1, 0);
            snprintf(what, sizeof what, "grad %s 0-d", unary_names[kind]);
            gc_check(what, fwd_unary, &kind, 1, in);
        }
    }
}

/* ---- binary with broadcasting ---- */
typedef struct { int op; int same; } bin_args;
static av_tensor *fwd_binary(av_ctx *c, av_tensor **in, void *u) {
    const bin_args *a = (const bin_args *)u;
    av_tensor *y = a->same ? in[0] : in[1];
    switch (a->op) {
    case 0: return av_add(c, in[0], y);
    case 1: return av_sub(c, in[0], y);
    case 2: return av_mul(c, in[0], y);
    default: return av_div(c, in[0], y);
    }
}

static void grad_binary(void) {
    /* shapes of a and b (ndim, sizes) */
    static const int cases[][10] = {
        {3, 2, 3, 4, 0, 3, 2, 3, 4, 0}, /* same shape */
        {3, 2, 3, 4, 0, 1, 4, 0, 0, 0}, /* [2,3,4] + [4] */
        {3, 2, 3, 4, 0, 2, 3, 1, 0, 0}, /* [2,3,4] + [3,1] */
        {3, 2, 1, 4, 0, 3, 1, 3, 1, 0}, /* [2,1,4] * [1,3,1] */
        {2, 2, 3, 0, 0, 1, 1, 0, 0, 0}, /* [2,3] + [1] */
        {2, 2, 3, 0, 0, 0, 0, 0, 0, 0}, /* [2,3] + 0-d */
        {0, 0, 0, 0, 0, 2, 2, 3, 0, 0}, /* 0-d + [2,3] */
        {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, /* 0-d + 0-d */
        {1, 4, 0, 0, 0, 3, 2, 3, 4, 0}, /* [4] + [2,3,4]: broadcast on the left */
        {2, 3, 1, 0, 0, 2, 1, 4, 0, 0}, /* [3,1] + [1,4]: both expand */
        {4, 2, 3, 4, 2, 3, 3, 1, 2, 0}, /* [2,3,4,2] + [3,1,2] */
        {4, 2, 1, 3, 1, 4, 1, 2, 1, 2}  /* [2,1,3,1] + [1,2,1,2] */
    };
    static const char *const opn[4] = {"add", "sub", "mul", "div"};
    float a[64], b[64];
    gc_input in[2];
    char what[96];
    int k, op;
    for (k = 0; k < (int)(sizeof cases / sizeof cases[0]); k++) {
        const int *s = cases[k];
        for (op = 0; op < 4; op++) {
            bin_args args;
            args.op = op;
            args.same = 0;
            gc_fill(a, 64, -2.0, 2.0);
            if (op == 3) gc_fill_away(b, 64, 0.5, 1.5); /* denominators away from 0 */
            else gc_fill(b, 64, -2.0, 2.0);
            in[0] = gc_in(a, 1, s[0], s[1], s[2], s[3], s[4]);
            in[1] = gc_in(b, 1, s[5], s[6], s[7], s[8], s[9]);
            snprintf(what, sizeof what, "grad %s case %d", opn[op], k);
            gc_check(what, fwd_binary, &args, 2, in);
        }
    }
    /* one operand constant: it must get no gradient buffer */
    for (op = 0; op < 4; op++) {
        bin_args args;
        args.op = op;
        args.same = 0;
        gc_fill(a, 64, -2.0, 2.0);
        gc_fill_away(b, 64, 0.5, 1.5);
        in[0] = gc_in(a, 0, 2, 3, 4);
        in[1] = gc_in(b, 1, 1, 4);
        snprintf(what, sizeof what, "grad %s const a", opn[op]);
        gc_check(what, fwd_binary, &args, 2, in);
        in[0] = gc_in(b, 1, 2, 3, 4);
        in[1] = gc_in(a, 0, 2, 3, 1);
        snprintf(what, sizeof what, "grad %s const b", opn[op]);
        gc_check(what, fwd_binary, &args, 2, in);
    }
    /* the same tensor as both operands: both gradients must add up */
    for (op = 0; op < 4; op++) {
        bin_args args;
        args.op = op;
        args.same = 1;
        gc_fill_away(a, 64, 0.5, 1.5);
        in[0] = gc_in(a, 1, 2, 3, 4);
        snprintf(what, sizeof what, "grad %s(x, x)", opn[op]);
        gc_check(what, fwd_binary, &args, 1, in);
    }
}

/* ---- shape ops ---- */
typedef struct { int kind; int a, b, c, d; int perm[4]; } shp_args;
static av_tensor *fwd_shape(av_ctx *c, av_tensor **in, void *u) {
    const shp_args *s = (const shp_args *)u;
    switch (s->kind) {
    case 0: return av_reshape(c, in[0], 2, s->a, s->b);
    case 1: return av_square(c, av_reshape(c, in[0], 3, s->a, s->b, s->c)); /* a view feeding an op */
    case 2: return av_permute(c, in[0], s->perm);
    case 3: return av_transpose(c, in[0], s->a, s->b);
    case 4: return av_slice(c, in[0], s->a, s->b, s->c);
    case 5: return av_reshape(c, in[0], 1, -1);
    default: { /* reshape twice and use both the view and the original */
        av_tensor *v = av_reshape(c, in[0], 2, s->a, s->b);
        return av_add(c, av_mul(c, v, v), av_reshape(c, av_exp(c, in[0]), 2, s->a, s->b));
    }
    }
}

static void grad_shape_ops(void) {
    float x[120];
    gc_input in[1];
    shp_args s;
    int i, ax;
    char what[160];
    gc_fill(x, 120, -2.0, 2.0);
    memset(&s, 0, sizeof s);
    in[0] = gc_in(x, 1, 3, 2, 3, 4);
    s.kind = 0; s.a = 4; s.b = 6; gc_check("grad reshape [2,3,4]->[4,6]", fwd_shape, &s, 1, in);
    s.kind = 1; s.a = 3; s.b = 2; s.c = 4; gc_check("grad square(reshape)", fwd_shape, &s, 1, in);
    s.kind = 5; gc_check("grad reshape -1", fwd_shape, &s, 1, in);
    s.kind = 6; s.a = 6; s.b = 4; gc_check("grad view + original", fwd_shape, &s, 1, in);
    /* permutes */
    {
        static const int perms[][5] = {{2, 1, 0, 0, 0}, {3, 1, 2, 0, 0}, {3, 2, 0, 1, 0}, {4, 2, 0, 3, 1}, {4, 3, 2, 1, 0}, {4, 0, 1, 2, 3}};
        for (i = 0; i < 6; i++) {
            int nd = perms[i][0];
            s.kind = 2;
            memcpy(s.perm, perms[i] + 1, 4 * sizeof(int));
            if (nd == 2) in[0] = gc_in(x, 1, 2, 3, 5);
            else if (nd == 3) in[0] = gc_in(x, 1, 3, 2, 3, 4);
            else in[0] = gc_in(x, 1, 4, 2, 3, 4, 5);
            snprintf(what, sizeof what, "grad permute #%d", i);
            gc_check(what, fwd_shape, &s, 1, in);
        }
    }
    s.kind = 3; s.a = 0; s.b = 2; in[0] = gc_in(x, 1, 3, 2, 3, 4); gc_check("grad transpose 0,2", fwd_shape, &s, 1, in);
    s.kind = 3; s.a = 1; s.b = 0; in[0] = gc_in(x, 1, 2, 3, 5); gc_check("grad transpose 1,0", fwd_shape, &s, 1, in);
    s.kind = 3; s.a = 2; s.b = 3; in[0] = gc_in(x, 1, 4, 2, 2, 3, 5); gc_check("grad transpose 2,3 4-d", fwd_shape, &s, 1, in);
    /* slices along each axis */
    in[0] = gc_in(x, 1, 3, 4, 5, 3);
    for (ax = 0; ax < 3; ax++) {
        s.kind = 4; s.a = ax;
        s.b = 1; s.c = ax == 2 ? 2 : 3;
        snprintf(what, sizeof what, "grad slice axis %d", ax);
        gc_check(what, fwd_shape, &s, 1, in);
    }
    s.kind = 4; s.a = 1; s.b = 0; s.c = 5; gc_check("grad slice full", fwd_shape, &s, 1, in);
}

typedef struct { int n, axis; } cat_args;
static av_tensor *fwd_concat(av_ctx *c, av_tensor **in, void *u) {
    const cat_args *a = (const cat_args *)u;
    return av_concat(c, in, a->n, a->axis);
}

static void grad_concat(void) {
    float x0[40], x1[40], x2[40];
    gc_input in[3];
    cat_args a;
    gc_fill(x0, 40, -2, 2); gc_fill(x1, 40, -2, 2); gc_fill(x2, 40, -2, 2);
    a.n = 3;
    a.axis = 1;
    in[0] = gc_in(x0, 1, 3, 2, 1, 3);
    in[1] = gc_in(x1, 1, 3, 2, 4, 3);
    in[2] = gc_in(x2, 1, 3, 2, 2, 3);
    gc_check("grad concat axis 1", fwd_concat, &a, 3, in);
    in[1].check = 0; /* a constant in the middle */
    gc_check("grad concat axis 1, middle constant", fwd_concat, &a, 3, in);
    a.axis = 0;
    in[0] = gc_in(x0, 1, 3, 1, 2, 3);
    in[1] = gc_in(x1, 1, 3, 3, 2, 3);
    in[2] = gc_in(x2, 1, 3, 2, 2, 3);
    gc_check("grad concat axis 0", fwd_concat, &a, 3, in);
    a.axis = 2;
    in[0] = gc_in(x0, 1, 3, 2, 3, 1);
    in[1] = gc_in(x1, 1, 3, 2, 3, 2);
    in[2] = gc_in(x2, 1, 3, 2, 3, 3);
    gc_check("grad concat axis 2", fwd_concat, &a, 3, in);
    a.n = 1;
    a.axis = 0;
    in[0] = gc_in(x0, 1, 2, 3, 4);
    gc_check("grad concat of one", fwd_concat, &a, 1, in);
}

/* ---- reductions ---- */
typedef struct { int kind, axis, keepdim; } red_args;
static av_tensor *fwd_reduce(av_ctx *c, av_tensor **in, void *u) {
    const red_args *r = (const red_args *)u;
    switch (r->kind) {
    case 0: return av_sum(c, in[0], r->axis, r->keepdim);
    case 1: return av_mean(c, in[0], r->axis, r->keepdim);
    case 2: return av_max(c, in[0], r->axis, r->keepdim);
    case 3: return av_sum_all(c, in[0]);
    case 4: return av_mean_all(c, in[0]);
    default: return av_max_all(c, in[0]);
    }
}

static void grad_reductions(void) {
    static const char *const names[6] = {"sum", "mean", "max", "sum_all", "mean_all", "max_all"};
    float x[48];
    gc_input in[1];
    red_args r;
    char what[160];
    int shape_k;
    for (shape_k = 0; shape_k < 3; shape_k++) {
        int nd = shape_k == 0 ? 3 : shape_k == 1 ? 4 : 1, ax;
        /* distinct values spaced 4/47 > 0.08 apart: no ties for max, h = 0.01 never reorders */
        gc_fill_distinct(x, 48, -2.0, 2.0);
        if (shape_k == 0) in[0] = gc_in(x, 1, 3, 2, 3, 4);
        else if (shape_k == 1) in[0] = gc_in(x, 1, 4, 2, 2, 3, 2);
        else in[0] = gc_in(x, 1, 1, 5);
        for (r.kind = 0; r.kind < 3; r.kind++)
            for (ax = 0; ax < nd; ax++)
                for (r.keepdim = 0; r.keepdim < 2; r.keepdim++) {
                    r.axis = ax;
                    snprintf(what, sizeof what, "grad %s %d-d axis %d keepdim %d", names[r.kind], nd, ax, r.keepdim);
                    gc_check(what, fwd_reduce, &r, 1, in);
                }
        for (r.kind = 3; r.kind < 6; r.kind++) {
            snprintf(what, sizeof what, "grad %s %d-d", names[r.kind], nd);
            gc_check(what, fwd_reduce, &r, 1, in);
        }
    }
    /* the _all reductions of a 0-d tensor */
    {
        float v = 0.37f;
        in[0] = gc_in(&v, 1, 0);
        for (r.kind = 3; r.kind < 6; r.kind++) {
            snprintf(what, sizeof what, "grad %s 0-d", names[r.kind]);
            gc_check(what, fwd_reduce, &r, 1, in);
        }
    }
}

/* ---- matmul and linear ---- */
typedef struct { int ta, tb; } mm_args;
static av_tensor *fwd_matmul(av_ctx *c, av_tensor **in, void *u) {
    const mm_args *m = (const mm_args *)u;
    return av_matmul(c, in[0], in[1], m->ta, m->tb);
}

/* shapes of a and b for given batch dims (0..2), sizes M, K, N and transposes */
static void mm_shapes(int nb_a, int nb_b, const int *batch, int M, int K, int N, int ta, int tb, gc_input *ga, gc_input *gb) {
    int i;
    ga->ndim = nb_a + 2;
    for (i = 0; i < nb_a; i++) ga->shape[i] = batch[i];
    ga->shape[nb_a] = ta ? K : M;
    ga->shape[nb_a + 1] = ta ? M : K;
    gb->ndim = nb_b + 2;
    for (i = 0; i < nb_b; i++) gb->shape[i] = batch[i];
    gb->shape[nb_b] = tb ? N : K;
    gb->shape[nb_b + 1] = tb ? K : N;
}

static void grad_matmul(void) {
    float a[256], b[256];
    gc_input in[2];
    mm_args m;
    char what[96];
    int batch[2], cfg;
    batch[0] = 2; batch[1] = 2;
    gc_fill(a, 256, -1.5, 1.5);
    gc_fill(b, 256, -1.5, 1.5);
    /* 2-D [3,5]x[5,7], 3-D batched, 4-D batched, 3-D x shared 2-D, 4-D x shared 2-D */
    for (cfg = 0; cfg < 5; cfg++) {
        static const int nba[5] = {0, 1, 2, 1, 2}, nbb[5] = {0, 1, 2, 0, 0};
        static const int Ms[5] = {3, 3, 2, 3, 2}, Ks[5] = {5, 4, 3, 5, 3}, Ns[5] = {7, 2, 3, 4, 3};
        for (m.ta = 0; m.ta < 2; m.ta++)
            for (m.tb = 0; m.tb < 2; m.tb++) {
                in[0].data = a; in[0].check = 1;
                in[1].data = b; in[1].check = 1;
                mm_shapes(nba[cfg], nbb[cfg], batch, Ms[cfg], Ks[cfg], Ns[cfg], m.ta, m.tb, &in[0], &in[1]);
                snprintf(what, sizeof what, "grad matmul %d-d x %d-d ta %d tb %d", nba[cfg] + 2, nbb[cfg] + 2, m.ta, m.tb);
                gc_check(what, fwd_matmul, &m, 2, in);
            }
    }
    /* one side constant */
    m.ta = 0; m.tb = 1;
    mm_shapes(1, 0, batch, 3, 4, 5, 0, 1, &in[0], &in[1]);
    in[0].data = a; in[1].data = b;
    in[0].check = 0; in[1].check = 1;
    gc_check("grad matmul const a", fwd_matmul, &m, 2, in);
    in[0].check = 1; in[1].check = 0;
    gc_check("grad matmul const b", fwd_matmul, &m, 2, in);
}

static av_tensor *fwd_xxt(av_ctx *c, av_tensor **in, void *u) {
    (void)u;
    return av_matmul(c, in[0], in[0], 0, 1);
}

typedef struct { int bias; } lin_args;
static av_tensor *fwd_linear(av_ctx *c, av_tensor **in, void *u) {
    const lin_args *l = (const lin_args *)u;
    return av_linear(c, in[0], in[1], l->bias ? in[2] : NULL);
}

static void grad_linear(void) {
    float x[64], w[64], b[8];
    gc_input in[3];
    lin_args l;
    gc_fill(x, 64, -1.5, 1.5);
    gc_fill(w, 64, -1, 1);
    gc_fill(b, 8, -1, 1);
    in[1] = gc_in(w, 1, 2, 3, 5);
    in[2] = gc_in(b, 1, 1, 3);
    l.bias = 1;
    in[0] = gc_in(x, 1, 2, 4, 5);
    gc_check("grad linear 2-d bias", fwd_linear, &l, 3, in);
    in[0] = gc_in(x, 1, 3, 2, 3, 5);
    gc_check("grad linear 3-d bias", fwd_linear, &l, 3, in);
    in[0] = gc_in(x, 1, 1, 5);
    gc_check("grad linear 1-d bias", fwd_linear, &l, 3, in);
    l.bias = 0;
    in[0] = gc_in(x, 1, 2, 4, 5);
    gc_check("grad linear 2-d no bias", fwd_linear, &l, 2, in);
    in[0] = gc_in(x, 1, 3, 2, 3, 5);
    gc_check("grad linear 3-d no bias", fwd_linear, &l, 2, in);
    in[0] = gc_in(x, 0, 2, 4, 5);
    gc_check("grad linear 2-d const x", fwd_linear, &l, 2, in);
    {
        float y[15];
        gc_fill(y, 15, -1, 1);
        in[0] = gc_in(y, 1, 2, 3, 5);
        gc_check("grad matmul(x, x, 0, 1)", fwd_xxt, NULL, 1, in);
    }
}

/* ---- layer norm, embedding, dropout ---- */
typedef struct { int gamma, beta; } ln_args;
static av_tensor *fwd_layer_norm(av_ctx *c, av_tensor **in, void *u) {
    const ln_args *a = (const ln_args *)u;
    return av_layer_norm(c, in[0], a->gamma ? in[1] : NULL, a->beta ? in[2] : NULL, 1e-5f);
}

typedef struct { const int *ids; int n; } emb_args;
static av_tensor *fwd_embedding(av_ctx *c, av_tensor **in, void *u) {
    const emb_args *e = (const emb_args *)u;
    return av_embedding(c, in[0], e->ids, e->n);
}

static av_tensor *fwd_dropout(av_ctx *c, av_tensor **in, void *u) {
    /* the checker reseeds the context before each evaluation, so the mask
       is the same in every one */
    return av_dropout(c, in[0], *(const float *)u);
}

static void grad_norm_embed_dropout(void) {
    float x[60], g[6], b[6], table[15];
    gc_input in[3];
    ln_args ln;
    gc_fill(x, 60, -2, 2);
    gc_fill(g, 6, 0.5, 1.5);
    gc_fill(b, 6, -1, 1);
    ln.gamma = 1; ln.beta = 1;
    in[0] = gc_in(x, 1, 2, 4, 6);
    in[1] = gc_in(g, 1, 1, 6);
    in[2] = gc_in(b, 1, 1, 6);
    gc_check("grad layer_norm 2-d", fwd_layer_norm, &ln, 3, in);
    in[0] = gc_in(x, 1, 3, 2, 5, 6);
    gc_check("grad layer_norm 3-d", fwd_layer_norm, &ln, 3, in);
    in[0] = gc_in(x, 1, 1, 6);
    gc_check("grad layer_norm 1-d", fwd_layer_norm, &ln, 3, in);
    /* NULL gamma/beta: the implementation accepts them (identity affine) */
    ln.gamma = 0; ln.beta = 0;
    in[0] = gc_in(x, 1, 2, 4, 6);
    gc_check("grad layer_norm no affine", fwd_layer_norm, &ln, 1, in);
    ln.gamma = 1; ln.beta = 0;
    gc_check("grad layer_norm gamma only", fwd_layer_norm, &ln, 2, in);
    {
        static const int ids[6] = {2, 0, 2, 3, 2, 0};
        emb_args e;
        e.ids = ids;
        e.n = 6;
        gc_fill(table, 15, -1, 1);
        in[0] = gc_in(table, 1, 2, 5, 3);
        gc_check("grad embedding repeated ids", fwd_embedding, &e, 1, in);
    }
    {
        float p = 0.5f, p2 = 0.2f;
        in[0] = gc_in(x, 1, 2, 4, 10);
        gc_check("grad dropout p=0.5", fwd_dropout, &p, 1, in);
        in[0] = gc_in(x, 1, 3, 2, 3, 5);
        gc_check("grad dropout p=0.2", fwd_dropout, &p2, 1, in);
    }
}

/* ---- losses ---- */
typedef struct { int kind, reduction; const int *labels; } loss_args;
static av_tensor *fwd_loss(av_ctx *c, av_tensor **in, void *u) {
    const loss_args *l = (const loss_args *)u;
    switch (l->kind) {
    case 0: return av_mse_loss(c, in[0], in[1], l->reduction);
    case 1: return av_cross_entropy(c, in[0], l->labels, l->reduction);
    default: return av_bce_with_logits(c, in[0], in[1], l->reduction);
    }
}

static void grad_losses(void) {
    static const int labels[4] = {1, 0, 4, 4};
    float p[20], t[20], logits[20], bt[20];
    gc_input in[2];
    loss_args l;
    char what[160];
    gc_fill(p, 20, -2, 2);
    gc_fill(t, 20, -2, 2);
    gc_fill(logits, 20, -3, 3);
    gc_fill(bt, 20, 0, 1);
    l.labels = labels;
    for (l.reduction = 0; l.reduction < 2; l.reduction++) {
        const char *rn = l.reduction == AV_MEAN ? "mean" : "sum";
        l.kind = 0;
        in[0] = gc_in(p, 1, 2, 3, 4);
        in[1] = gc_in(t, 1, 2, 3, 4);
        snprintf(what, sizeof what, "grad mse %s", rn);
        gc_check(what, fwd_loss, &l, 2, in);
        in[1].check = 0;
        snprintf(what, sizeof what, "grad mse %s const target", rn);
        gc_check(what, fwd_loss, &l, 2, in);
        l.kind = 1;
        in[0] = gc_in(logits, 1, 2, 4, 5);
        snprintf(what, sizeof what, "grad cross_entropy %s", rn);
        gc_check(what, fwd_loss, &l, 1, in);
        l.kind = 2;
        in[0] = gc_in(logits, 1, 2, 4, 5);
        in[1] = gc_in(bt, 1, 2, 4, 5);
        snprintf(what, sizeof what, "grad bce_with_logits %s", rn);
        gc_check(what, fwd_loss, &l, 2, in);
        in[1].check = 0;
        snprintf(what, sizeof what, "grad bce_with_logits %s const target", rn);
        gc_check(what, fwd_loss, &l, 2, in);
    }
}

/* ---- compositions ---- */
static av_tensor *fwd_mlp(av_ctx *c, av_tensor **in, void *u) {
    /* x[4,5] -> linear(6) -> gelu -> linear(3) -> cross-entropy */
    av_tensor *h = av_gelu(c, av_linear(c, in[0], in[1], in[2]));
    return av_cross_entropy(c, av_linear(c, h, in[3], in[4]), (const int *)u, AV_MEAN);
}

static av_tensor *fwd_rnn(av_ctx *c, av_tensor **in, void *u) {
    /* x [T=4, B=2, 3]; h_t = tanh(x_t Wxᵀ + b + h_{t-1} Whᵀ); outputs of all steps */
    av_tensor *h = av_zeros(c, 2, 2, 5), *hs[4];
    int t;
    (void)u;
    for (t = 0; t < 4; t++) {
        av_tensor *xt = av_reshape(c, av_slice(c, in[0], 0, t, t + 1), 2, 2, 3);
        h = av_tanh(c, av_add(c, av_linear(c, xt, in[1], in[3]), av_linear(c, h, in[2], NULL)));
        hs[t] = h;
    }
    return av_concat(c, hs, 4, 0);
}

static av_tensor *fwd_attention(av_ctx *c, av_tensor **in, void *u) {
    /* softmax(q kᵀ / sqrt(d)) v over [B=2, heads=2, T=3, d=4], heads split by reshape/permute */
    int perm[4];
    av_tensor *q, *k, *v, *att, *y;
    (void)u;
    perm[0] = 0; perm[1] = 2; perm[2] = 1; perm[3] = 3;
    q = av_permute(c, av_reshape(c, in[0], 4, 2, 3, 2, 4), perm);
    k = av_permute(c, av_reshape(c, in[1], 4, 2, 3, 2, 4), perm);
    v = av_permute(c, av_reshape(c, in[2], 4, 2, 3, 2, 4), perm);
    att = av_softmax(c, av_scale(c, av_matmul(c, q, k, 0, 1), 0.5f));
    y = av_matmul(c, att, v, 0, 0);
    return av_reshape(c, av_permute(c, y, perm), 3, 2, 3, 8);
}

static av_tensor *fwd_vae(av_ctx *c, av_tensor **in, void *u) {
    /* z = mu + exp(logvar/2) eps; loss = mse(decode(z), x) + KL */
    av_tensor *mu = in[0], *logvar = in[1], *eps = in[2], *z, *rec, *kl;
    (void)u;
    z = av_add(c, mu, av_mul(c, av_exp(c, av_scale(c, logvar, 0.5f)), eps));
    rec = av_mse_loss(c, av_sigmoid(c, av_linear(c, z, in[3], NULL)), in[4], AV_SUM);
    kl = av_scale(c, av_sum_all(c, av_sub(c, av_add_scalar(c, logvar, 1.0f),
                                              av_add(c, av_square(c, mu), av_exp(c, logvar)))), -0.5f);
    return av_add(c, rec, kl);
}

static av_tensor *fwd_diamond(av_ctx *c, av_tensor **in, void *u) {
    /* y = exp(x) used by three consumers, x itself by two */
    av_tensor *y = av_exp(c, in[0]);
    (void)u;
    return av_add(c, av_mul(c, y, y), av_sub(c, y, av_mean(c, av_mul(c, in[0], y), 1, 1)));
}

static av_tensor *fwd_resnet_block(av_ctx *c, av_tensor **in, void *u) {
    /* x + W2 relu(W1 layer_norm(x)), dropout in between (fixed seed) */
    av_tensor *h = av_layer_norm(c, in[0], in[1], in[2], 1e-5f);
    (void)u;
    h = av_dropout(c, av_leaky_relu(c, av_linear(c, h, in[3], NULL), 0.2f), 0.25f);
    return av_add(c, in[0], av_linear(c, h, in[4], NULL));
}

static void grad_compositions(void) {
    static const int labels[4] = {2, 0, 1, 2};
    float x[64], w1[64], b1[8], w2[64], b2[8], w3[64];
    gc_input in[5];
    gc_fill(x, 64, -1.5, 1.5);
    gc_fill(w1, 64, -0.8, 0.8);
    gc_fill(b1, 8, -0.5, 0.5);
    gc_fill(w2, 64, -0.8, 0.8);
    gc_fill(b2, 8, -0.5, 0.5);
    gc_fill(w3, 64, -0.8, 0.8);
    in[0] = gc_in(x, 1, 2, 4, 5);
    in[1] = gc_in(w1, 1, 2, 6, 5);
    in[2] = gc_in(b1, 1, 1, 6);
    in[3] = gc_in(w2, 1, 2, 3, 6);
    in[4] = gc_in(b2, 1, 1, 3);
    gc_check("grad MLP + cross-entropy", fwd_mlp, (void *)labels, 5, in);

    in[0] = gc_in(x, 1, 3, 4, 2, 3);
    in[1] = gc_in(w1, 1, 2, 5, 3);
    in[2] = gc_in(w2, 1, 2, 5, 5);
    in[3] = gc_in(b1, 1, 1, 5);
    gc_check("grad RNN loop (shared weights)", fwd_rnn, NULL, 4, in);

    in[0] = gc_in(x, 1, 3, 2, 3, 8);
    in[1] = gc_in(w1, 1, 3, 2, 3, 8);
    in[2] = gc_in(w2, 1, 3, 2, 3, 8);
    gc_check("grad multi-head attention", fwd_attention, NULL, 3, in);

    in[0] = gc_in(x, 1, 2, 3, 4);
    in[1] = gc_in(b1, 1, 1, 4);    /* logvar broadcast over the batch */
    in[2] = gc_in(w3, 0, 2, 3, 4); /* eps: constant noise */
    in[3] = gc_in(w1, 1, 2, 6, 4);
    {
        float tgt[18];
        gc_fill(tgt, 18, 0, 1);
        in[4] = gc_in(tgt, 0, 2, 3, 6);
        gc_check("grad VAE reparam + KL", fwd_vae, NULL, 5, in);
    }

    in[0] = gc_in(x, 1, 2, 3, 4);
    gc_check("grad diamond graph", fwd_diamond, NULL, 1, in);

    {
        float g[6], b[6];
        gc_fill(g, 6, 0.5, 1.5);
        gc_fill(b, 6, -0.5, 0.5);
        in[0] = gc_in(x, 1, 2, 3, 6);
        in[1] = gc_in(g, 1, 1, 6);
        in[2] = gc_in(b, 1, 1, 6);
        in[3] = gc_in(w1, 1, 2, 8, 6);
        in[4] = gc_in(w2, 1, 2, 6, 8);
        gc_check("grad pre-norm residual block", fwd_resnet_block, NULL, 5, in);
    }
}

/* ======================================================================= */
/* 2. forward values against double-precision references                  */
/* ======================================================================= */
static double ref_sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }
static double ref_softplus(double x) { return (x > 0 ? x : 0) + log1p(exp(-fabs(x))); }
static double ref_gelu(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }

static void fwd_unary_values(void) {
    static const float extremes[] = {-100.0f, -30.0f, -20.0f, -10.0f, 10.0f, 20.0f, 30.0f, 100.0f};
    float x[41], pos[41];
    double want[41];
    av_ctx *c = av_ctx_new();
    av_tensor *t, *tp, *te, *y;
    int i, n = 33;
    for (i = 0; i < n; i++) x[i] = -8.0f + 0.5f * (float)i;
    for (i = 0; i < 8; i++) x[n + i] = extremes[i];
    for (i = 0; i < 41; i++) pos[i] = 0.01f * (float)exp(0.25 * i); /* 0.01 .. 220 */
    t = av_from(c, x, 1, n);       /* [-8, 8] */
    te = av_from(c, x, 1, n + 8);  /* plus extremes */
    tp = av_from(c, pos, 1, 41);
    /* Tolerances: libm-grade float functions are within a few ulp
       (rtol 4e-6); atol 1e-37 accepts any result below FLT_MIN, where
       denormals keep only a few bits. */
    for (i = 0; i < n; i++) want[i] = -1.7 * x[i];
    check_vals("scale", av_scale(c, t, -1.7f), want, n, 0, 1e-6);
    for (i = 0; i < n; i++) want[i] = x[i] + 0.3;
    check_vals("add_scalar", av_add_scalar(c, t, 0.3f), want, n, 1e-7, 1e-6);
    for (i = 0; i < n; i++) want[i] = exp(x[i]);
    check_vals("exp", av_exp(c, t), want, n, 1e-37, 4e-6);
    for (i = 0; i < 41; i++) want[i] = log(pos[i]);
    check_vals("log", av_log(c, tp), want, 41, 1e-7, 4e-6);
    for (i = 0; i < 41; i++) want[i] = sqrt(pos[i]);
    check_vals("sqrt", av_sqrt(c, tp), want, 41, 0, 4e-6);
    for (i = 0; i < n; i++) want[i] = (double)x[i] * x[i];
    check_vals("square", av_square(c, t), want, n, 0, 1e-6);
    for (i = 0; i < n + 8; i++) want[i] = tanh(x[i]);
    check_vals("tanh", av_tanh(c, te), want, n + 8, 1e-7, 4e-6);
    for (i = 0; i < n + 8; i++) want[i] = ref_sigmoid(x[i]);
    check_vals("sigmoid (incl. +-100)", av_sigmoid(c, te), want, n + 8, 1e-37, 4e-6);
    for (i = 0; i < n + 8; i++) want[i] = x[i] > 0 ? x[i] : 0;
    check_vals("relu", av_relu(c, te), want, n + 8, 0, 0);
    for (i = 0; i < n + 8; i++) want[i] = x[i] > 0 ? x[i] : 0.1 * x[i];
    check_vals("leaky_relu", av_leaky_relu(c, te, 0.1f), want, n + 8, 0, 1e-6);
    /* exact gelu: 0.5x(1 + erf(x/sqrt2)); the tanh approximation differs by
       up to ~4e-4 and fails atol 1e-6. Near x = -8 the float result is a
       difference of nearly equal terms: absolute 1e-6 is the honest bound. */
    for (i = 0; i < n + 8; i++) want[i] = ref_gelu(x[i]);
    check_vals("gelu (exact erf)", av_gelu(c, te), want, n + 8, 1e-6, 4e-6);
    /* softplus(100) = 100 exactly; softplus(-100) = 3.7e-44; softplus(-20) =
       2.06e-9 needs log1p: log(1 + e^-20) in float is 0. */
    for (i = 0; i < n + 8; i++) want[i] = ref_softplus(x[i]);
    check_vals("softplus (incl. +-100)", av_softplus(c, te), want, n + 8, 1e-37, 4e-6);
    y = av_softplus(c, av_from(c, extremes + 7, 0));
    CHECK(av_item(y) == 100.0f, "softplus(100) = %.9g, want exactly 100", av_item(y));
    av_ctx_free(c);
}

static void fwd_softmax_values(void) {
    /* rows: ordinary, huge (1000), very negative, one dominant, equal */
    static const float x[5][4] = {
        {0.5f, -1.0f, 2.0f, 0.0f},
        {1000.0f, 1001.0f, 999.0f, 1000.5f},
        {-1000.0f, -1001.0f, -999.0f, -1002.0f},
        {1000.0f, 0.0f, -1000.0f, 5.0f},
        {3.0f, 3.0f, 3.0f, 3.0f}};
    double want_s[20], want_l[20];
    av_ctx *c = av_ctx_new();
    av_tensor *t = av_from(c, &x[0][0], 2, 5, 4), *s, *l;
    int r, j;
    for (r = 0; r < 5; r++) {
        double mx = x[r][0], sum = 0;
        for (j = 1; j < 4; j++) mx = x[r][j] > mx ? x[r][j] : mx;
        for (j = 0; j < 4; j++) sum += exp(x[r][j] - mx);
        for (j = 0; j < 4; j++) {
            want_s[r * 4 + j] = exp(x[r][j] - mx) / sum;
            want_l[r * 4 + j] = x[r][j] - mx - log(sum);
        }
    }
    s = av_softmax(c, t);
    l = av_log_softmax(c, t);
    CHECK_SHAPE(s, 2, 5, 4, 0, 0, "softmax shape");
    check_vals("softmax (huge logits)", s, want_s, 20, 1e-37, 4e-6);
    /* log_softmax values reach -2000: |x| ulps of 1000 are 6e-5 */
    check_vals("log_softmax (huge logits)", l, want_l, 20, 1e-6, 4e-7);
    /* rows sum to 1 */
    for (r = 0; r < 5; r++) {
        double sum = 0;
        for (j = 0; j < 4; j++) sum += s->data[r * 4 + j];
        CHECK_CLOSE(sum, 1.0, 1e-6, 0, "softmax row sum");
    }
    /* 3-D: along the last axis only */
    {
        float y[24];
        double w[24];
        int k;
        gc_fill(y, 24, -3, 3);
        for (k = 0; k < 6; k++) {
            double sum = 0;
            for (j = 0; j < 4; j++) sum += exp(y[k * 4 + j]);
            for (j = 0; j < 4; j++) w[k * 4 + j] = exp(y[k * 4 + j]) / sum;
        }
        check_vals("softmax 3-d last axis", av_softmax(c, av_from(c, y, 3, 2, 3, 4)), w, 24, 1e-8, 4e-6);
    }
    av_ctx_free(c);
}

static void fwd_layer_norm_values(void) {
    /* rows: random, offset by 1000 (a one-pass E[x^2]-E[x]^2 variance loses
       everything here), and constant (variance 0: output = beta) */
    float x[3 * 16], g[16], b[16];
    double want[48];
    av_ctx *c = av_ctx_new();
    av_tensor *y;
    int r, j;
    const float eps = 1e-5f;
    gc_fill(x, 16, -2, 2);
    for (j = 0; j < 16; j++) x[16 + j] = 1000.0f + (float)(gc_unif() * 2 - 1);
    for (j = 0; j < 16; j++) x[32 + j] = 0.75f;
    gc_fill(g, 16, 0.5, 1.5);
    gc_fill(b, 16, -1, 1);
    for (r = 0; r < 3; r++) {
        double mean = 0, var = 0;
        for (j = 0; j < 16; j++) mean += x[r * 16 + j];
        mean /= 16;
        for (j = 0; j < 16; j++) var += (x[r * 16 + j] - mean) * (x[r * 16 + j] - mean);
        var /= 16; /* biased, as PyTorch */
        for (j = 0; j < 16; j++) want[r * 16 + j] = (x[r * 16 + j] - mean) / sqrt(var + eps) * g[j] + b[j];
    }
    y = av_layer_norm(c, av_from(c, x, 2, 3, 16), av_from(c, g, 1, 16), av_from(c, b, 1, 16), eps);
    CHECK_SHAPE(y, 2, 3, 16, 0, 0, "layer_norm shape");
    /* row 2 (offset 1000): inputs carry ulp(1000) = 6e-5 of rounding, the
       float mean another ulp: 2e-4 relative to a unit spread */
    check_fvals("layer_norm row 0", y->data, want, 16, 2e-6, 2e-6);
    check_fvals("layer_norm row offset 1000", y->data + 16, want + 16, 16, 3e-4, 0);
    check_fvals("layer_norm constant row = beta", y->data + 32, want + 32, 16, 1e-6, 0);
    av_ctx_free(c);
}

static void fwd_loss_values(void) {
    av_ctx *c = av_ctx_new();
    {   /* cross-entropy, including logits of +-1000 */
        static const float lg[3][4] = {{0.5f, -1.0f, 2.0f, 0.0f}, {1000.0f, 0.0f, -1000.0f, 3.0f}, {-50.0f, -51.0f, -49.0f, -50.0f}};
        static const int labels[3] = {2, 2, 1};
        double tot = 0;
        int r, j;
        av_tensor *t = av_from(c, &lg[0][0], 2, 3, 4), *m, *s;
        for (r = 0; r < 3; r++) {
            double mx = lg[r][0], sum = 0;
            for (j = 1; j < 4; j++) mx = lg[r][j] > mx ? lg[r][j] : mx;
            for (j = 0; j < 4; j++) sum += exp(lg[r][j] - mx);
            tot += mx + log(sum) - lg[r][labels[r]];
        }
        m = av_cross_entropy(c, t, labels, AV_MEAN);
        s = av_cross_entropy(c, t, labels, AV_SUM);
        CHECK(m->ndim == 0 && s->ndim == 0, "cross_entropy: loss not 0-d (%d, %d)", m->ndim, s->ndim);
        CHECK_CLOSE(av_item(s), tot, 1e-5, 1e-6, "cross_entropy sum (row with 2000)");
        CHECK_CLOSE(av_item(m), tot / 3, 1e-5, 1e-6, "cross_entropy mean over rows");
    }
    {   /* bce with logits at +-100, +-20, 0 and ordinary values */
        static const float x[10] = {100.0f, 100.0f, -100.0f, -100.0f, -20.0f, 20.0f, 0.0f, 1.5f, -0.7f, 3.0f};
        static const float t[10] = {1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 1.0f, 0.5f, 0.2f, 0.9f, 0.0f};
        double want[10], tot = 0;
        int i;
        av_tensor *tx = av_from(c, x, 1, 10), *tt = av_from(c, t, 1, 10), *m, *s;
        for (i = 0; i < 10; i++) {
            want[i] = ref_softplus(x[i]) - (double)x[i] * t[i];
            tot += want[i];
        }
        s = av_bce_with_logits(c, tx, tt, AV_SUM);
        m = av_bce_with_logits(c, tx, tt, AV_MEAN);
        CHECK(s->ndim == 0, "bce: loss not 0-d");
        CHECK_CLOSE(av_item(s), tot, 1e-5, 1e-6, "bce_with_logits sum (|x| = 100)");
        CHECK_CLOSE(av_item(m), tot / 10, 1e-6, 1e-6, "bce_with_logits mean");
        /* element by element, through single-element tensors: the tiny
           losses (softplus(-20) = 2.1e-9, x=100,t=1: 3.7e-44) must not be 0
           or NaN by cancellation */
        for (i = 0; i < 10; i++) {
            av_tensor *l = av_bce_with_logits(c, av_from(c, x + i, 1, 1), av_from(c, t + i, 1, 1), AV_SUM);
            char what[160];
            snprintf(what, sizeof what, "bce_with_logits(x=%g, t=%g)", x[i], t[i]);
            CHECK_CLOSE(av_item(l), want[i], 1e-37, 1e-5, what);
        }
    }
    {   /* mse */
        float p[12], t[12];
        double tot = 0;
        int i;
        gc_fill(p, 12, -2, 2);
        gc_fill(t, 12, -2, 2);
        for (i = 0; i < 12; i++) tot += ((double)p[i] - t[i]) * ((double)p[i] - t[i]);
        CHECK_CLOSE(av_item(av_mse_loss(c, av_from(c, p, 2, 3, 4), av_from(c, t, 2, 3, 4), AV_SUM)), tot, 1e-6, 1e-6, "mse sum");
        CHECK_CLOSE(av_item(av_mse_loss(c, av_from(c, p, 2, 3, 4), av_from(c, t, 2, 3, 4), AV_MEAN)), tot / 12, 1e-6, 1e-6, "mse mean");
    }
    av_ctx_free(c);
}

/* naive broadcasting: right-align, size-1 axes repeat */
static void ref_broadcast(int op, const float *a, int na, const int *sa, const float *b, int nb, const int *sb,
                          double *out, int *so, int *nout) {
    int A[4] = {1, 1, 1, 1}, B[4] = {1, 1, 1, 1}, O[4], i, i0, i1, i2, i3, k = 0;
    for (i = 0; i < na; i++) A[4 - na + i] = sa[i];
    for (i = 0; i < nb; i++) B[4 - nb + i] = sb[i];
    for (i = 0; i < 4; i++) O[i] = A[i] > B[i] ? A[i] : B[i];
    *nout = na > nb ? na : nb;
    for (i = 0; i < *nout; i++) so[i] = O[4 - *nout + i];
    for (i0 = 0; i0 < O[0]; i0++)
        for (i1 = 0; i1 < O[1]; i1++)
            for (i2 = 0; i2 < O[2]; i2++)
                for (i3 = 0; i3 < O[3]; i3++) {
                    int ia = (((i0 % A[0]) * A[1] + i1 % A[1]) * A[2] + i2 % A[2]) * A[3] + i3 % A[3];
                    int ib = (((i0 % B[0]) * B[1] + i1 % B[1]) * B[2] + i2 % B[2]) * B[3] + i3 % B[3];
                    double x = a[ia], y = b[ib];
                    out[k++] = op == 0 ? x + y : op == 1 ? x - y : op == 2 ? x * y : x / y;
                }
}

static void fwd_broadcast_values(void) {
    static const int cases[][10] = {
        {3, 2, 3, 4, 0, 1, 4, 0, 0, 0},
        {3, 2, 3, 4, 0, 2, 3, 1, 0, 0},
        {3, 2, 1, 4, 0, 3, 1, 3, 1, 0},
        {1, 4, 0, 0, 0, 3, 2, 3, 4, 0},
        {2, 3, 1, 0, 0, 2, 1, 4, 0, 0},
        {2, 2, 3, 0, 0, 0, 0, 0, 0, 0},
        {4, 2, 1, 3, 1, 4, 1, 2, 1, 2}};
    float a[64], b[64];
    double want[64];
    av_ctx *c = av_ctx_new();
    int k, op;
    gc_fill(a, 64, -2, 2);
    gc_fill_away(b, 64, 0.5, 2);
    for (k = 0; k < (int)(sizeof cases / sizeof cases[0]); k++)
        for (op = 0; op < 4; op++) {
            const int *s = cases[k];
            int so[4], nout, i, size = 1;
            av_tensor *ta = mk(c, a, s[0], s[1], s[2], s[3], s[4]), *tb = mk(c, b, s[5], s[6], s[7], s[8], s[9]), *y;
            char what[160];
            ref_broadcast(op, a, s[0], s + 1, b, s[5], s + 6, want, so, &nout);
            y = op == 0 ? av_add(c, ta, tb) : op == 1 ? av_sub(c, ta, tb) : op == 2 ? av_mul(c, ta, tb) : av_div(c, ta, tb);
            snprintf(what, sizeof what, "broadcast case %d op %d", k, op);
            CHECK(y->ndim == nout, "%s: ndim %d want %d", what, y->ndim, nout);
            for (i = 0; i < nout && i < y->ndim; i++) {
                CHECK(y->shape[i] == so[i], "%s: shape[%d] = %d want %d", what, i, y->shape[i], so[i]);
                size *= so[i];
            }
            check_vals(what, y, want, size, 0, 1e-6);
        }
    /* 0-d op 0-d is 0-d */
    {
        av_tensor *y = av_mul(c, av_scalar(c, 3.0f), av_scalar(c, -2.5f));
        CHECK(y->ndim == 0 && y->size == 1 && av_item(y) == -7.5f, "0-d * 0-d: ndim %d value %g", y->ndim, av_item(y));
    }
    av_ctx_free(c);
}

/* Long axes and wide rows: the reductions run in slices of 4096 positions
   and blocks of 256 columns, combined afterwards. Sums against double sums;
   max against one scan from the start (the first maximum; NaN only when it
   comes first), its index checked through the gradient. In the first
   shape, row 0 has in column 0 a NaN opening the second slice and its
   maximum later in that slice, in column 1 its maximum twice, in slices 0
   and 1; row 1 starts with NaN; row 2 has a whole slice of NaN. */
static void fwd_long_reductions(void) {
    static const int shapes[3][3] = {{4, 9000, 3}, {2, 5, 600}, {1, 70001, 1}};
    static float x[4 * 9000 * 3];
    av_ctx *c = av_ctx_new();
    int sh;
    for (sh = 0; sh < 3; sh++) {
        int outer = shapes[sh][0], len = shapes[sh][1], inner = shapes[sh][2], n = outer * len * inner, o, i, k;
        double *ws = (double *)malloc(sizeof(double) * (size_t)(outer * inner));
        double *wx = (double *)malloc(sizeof(double) * (size_t)(outer * inner));
        int *warg = (int *)malloc(sizeof(int) * (size_t)(outer * inner)), grad_ok = 1, max_ok = 1;
        av_tensor *t, *ys, *yx;
        char what[96];
        gc_fill(x, n, -3, 3);
        if (sh == 0) {
            x[4096 * inner] = NAN;
            x[5000 * inner] = 7.0f;
            x[100 * inner + 1] = x[5000 * inner + 1] = 7.0f;
            x[(size_t)len * inner] = NAN;                    /* row 1 starts with NaN */
            for (k = 4096; k < 8192; k++) x[(2 * (size_t)len + k) * inner] = NAN; /* row 2, a slice of NaN */
        }
        for (o = 0; o < outer; o++)
            for (i = 0; i < inner; i++) {
                double sum = 0;
                int best = 0;
                for (k = 0; k < len; k++) {
                    float v = x[((size_t)o * len + k) * inner + i];
                    sum += v;
                    if (v > x[((size_t)o * len + best) * inner + i]) best = k;
                }
                ws[o * inner + i] = sum;
                warg[o * inner + i] = best;
                wx[o * inner + i] = x[((size_t)o * len + best) * inner + i];
            }
        av_ctx_reset(c);
        t = av_from(c, x, 3, outer, len, inner);
        av_requires_grad(c, t);
        ys = av_sum(c, t, 1, 0);
        yx = av_max(c, t, 1, 0);
        snprintf(what, sizeof what, "sum over %d of [%d, %d, %d]", len, outer, len, inner);
        for (o = 0; o < outer * inner; o++) /* NaN rows give NaN sums; the others match */
            if (!(sh == 0 && o % inner == 0 && o / inner < 3)) CHECK_CLOSE(ys->data[o], ws[o], 1e-5, 1e-6, what);
        for (o = 0; o < outer * inner; o++)
            max_ok &= wx[o] == wx[o] ? yx->data[o] == (float)wx[o] : yx->data[o] != yx->data[o];
        snprintf(what, sizeof what, "max over %d of [%d, %d, %d]", len, outer, len, inner);
        CHECK(max_ok, "%s: values differ from one scan from the start", what);
        av_backward(c, av_sum_all(c, yx));
        for (o = 0; o < outer; o++)
            for (i = 0; i < inner; i++)
                for (k = 0; k < len; k++)
                    grad_ok &= t->grad[((size_t)o * len + k) * inner + i] == (k == warg[o * inner + i] ? 1.0f : 0.0f);
        CHECK(grad_ok, "%s: the gradient is not at the first maximum", what);
        free(ws);
        free(wx);
        free(warg);
    }
    av_ctx_free(c);
}

/* Sums over rows in the backward passes, at sizes with several column
   blocks or pieces (ragged), against double references: the gradient of a
   row repeated over rows [1, 600] and of a column repeated along rows
   [3, 1] (rows of 5000), of an embedding of width 40 and of layer norm's
   gamma and beta of width 40; and mse and BCE over 9001 values. */
static void fwd_long_gradients(void) {
    enum { R = 7, N = 600, L = 5000, D = 40, V = 9, M = 9001 };
    static float x[R * N], b[N], xl[3 * L], col[3], table[V * D], w[R * D], t[M], p[M];
    static const int ids[R] = {3, 1, 3, 8, 0, 3, 1};
    double want[N > L ? N : L], acc;
    av_ctx *c = av_ctx_new();
    av_tensor *xt, *bt, *gt, *bet;
    int i, j;
    gc_fill(x, R * N, -2, 2);
    gc_fill(b, N, -2, 2);
    gc_fill(xl, 3 * L, -2, 2);
    gc_fill(col, 3, 0.5, 2);
    gc_fill(table, V * D, -2, 2);
    gc_fill(w, R * D, -2, 2);
    gc_fill(t, M, 0, 1);
    gc_fill(p, M, -3, 3);
    /* d sum(x * b) / db = column sums of x */
    xt = av_from(c, x, 2, R, N);
    bt = av_from(c, b, 2, 1, N);
    av_requires_grad(c, bt);
    av_backward(c, av_sum_all(c, av_mul(c, xt, bt)));
    for (j = 0; j < N; j++)
        for (i = 0, want[j] = 0; i < R; i++) want[j] += x[i * N + j];
    check_fvals("grad of b [1, 600] repeated over rows", bt->grad, want, N, 1e-5, 1e-6);
    /* d sum(x / col) / dcol = -sum_j x / col^2, rows of 5000 */
    av_ctx_reset(c);
    xt = av_from(c, xl, 2, 3, L);
    bt = av_from(c, col, 2, 3, 1);
    av_requires_grad(c, bt);
    av_backward(c, av_sum_all(c, av_div(c, xt, bt)));
    for (i = 0; i < 3; i++) {
        for (j = 0, acc = 0; j < L; j++) acc -= (double)xl[i * L + j] / ((double)col[i] * col[i]);
        want[i] = acc;
    }
    check_fvals("grad of a column [3, 1] repeated along rows of 5000", bt->grad, want, 3, 1e-4, 1e-5);
    /* embedding: row ids[i] of the gradient sums the w rows that picked it */
    av_ctx_reset(c);
    xt = av_from(c, table, 2, V, D);
    av_requires_grad(c, xt);
    av_backward(c, av_sum_all(c, av_mul(c, av_embedding(c, xt, ids, R), av_from(c, w, 2, R, D))));
    for (j = 0; j < V * D; j++) want[j] = 0;
    for (i = 0; i < R; i++)
        for (j = 0; j < D; j++) want[ids[i] * D + j] += w[i * D + j];
    check_fvals("grad of an embedding of width 40", xt->grad, want, V * D, 1e-6, 1e-6);
    /* layer norm: dgamma = sum_r w xhat, dbeta = sum_r w */
    av_ctx_reset(c);
    xt = av_from(c, x, 2, R, D);
    gt = av_ones(c, 1, D);
    bet = av_zeros(c, 1, D);
    av_requires_grad(c, gt);
    av_requires_grad(c, bet);
    av_backward(c, av_sum_all(c, av_mul(c, av_layer_norm(c, xt, gt, bet, 1e-5f), av_from(c, w, 2, R, D))));
    for (j = 0; j < D; j++) want[j] = 0;
    for (i = 0; i < R; i++) {
        double mean = 0, var = 0;
        for (j = 0; j < D; j++) mean += x[i * D + j] / (double)D;
        for (j = 0; j < D; j++) var += (x[i * D + j] - mean) * (x[i * D + j] - mean) / D;
        for (j = 0; j < D; j++) want[j] += w[i * D + j] * (x[i * D + j] - mean) / sqrt(var + 1e-5);
    }
    check_fvals("grad of layer norm's gamma, width 40", gt->grad, want, D, 1e-5, 1e-5);
    for (j = 0; j < D; j++)
        for (i = 0, want[j] = 0; i < R; i++) want[j] += w[i * D + j];
    check_fvals("grad of layer norm's beta, width 40", bet->grad, want, D, 1e-6, 1e-6);
    /* mse and BCE over 9001 values: sums in chunks */
    av_ctx_reset(c);
    for (i = 0, acc = 0; i < M; i++) acc += ((double)p[i] - t[i]) * ((double)p[i] - t[i]);
    CHECK_CLOSE(av_item(av_mse_loss(c, av_from(c, p, 1, M), av_from(c, t, 1, M), AV_SUM)), acc, 0, 1e-6, "mse over 9001 values");
    for (i = 0, acc = 0; i < M; i++) acc += (p[i] > 0 ? p[i] : 0) - (double)p[i] * t[i] + log1p(exp(-fabs((double)p[i])));
    CHECK_CLOSE(av_item(av_bce_with_logits(c, av_from(c, p, 1, M), av_from(c, t, 1, M), AV_SUM)), acc, 0, 1e-6,
                "BCE over 9001 values");
    av_ctx_free(c);
}

static void fwd_reduction_values(void) {
    float x[120];
    av_ctx *c = av_ctx_new();
    av_tensor *t;
    int ax, kd, S[4] = {2, 3, 4, 5};
    gc_fill(x, 120, -3, 3);
    t = av_from(c, x, 4, 2, 3, 4, 5);
    for (ax = 0; ax < 4; ax++)
        for (kd = 0; kd < 2; kd++) {
            double ws[120], wm[120], wx[120];
            int outer = 1, inner = 1, n = S[ax], o, i, j, k, nd;
            av_tensor *ys, *ym, *yx;
            char what[160];
            for (i = 0; i < ax; i++) outer *= S[i];
            for (i = ax + 1; i < 4; i++) inner *= S[i];
            for (o = 0; o < outer; o++)
                for (i = 0; i < inner; i++) {
                    double s = 0, m = -1e300;
                    for (k = 0; k < n; k++) {
                        double v = x[(o * n + k) * inner + i];
                        s += v;
                        m = v > m ? v : m;
                    }
                    ws[o * inner + i] = s;
                    wm[o * inner + i] = s / n;
                    wx[o * inner + i] = m;
                }
            ys = av_sum(c, t, ax, kd);
            ym = av_mean(c, t, ax, kd);
            yx = av_max(c, t, ax, kd);
            nd = kd ? 4 : 3;
            snprintf(what, sizeof what, "reduce axis %d keepdim %d", ax, kd);
            CHECK(ys->ndim == nd && ym->ndim == nd && yx->ndim == nd, "%s: ndim %d/%d/%d want %d", what, ys->ndim, ym->ndim, yx->ndim, nd);
            for (i = 0, j = 0; i < 4; i++) {
                if (i == ax && !kd) continue;
                CHECK(ys->shape[j] == (i == ax ? 1 : S[i]) && ym->shape[j] == ys->shape[j] && yx->shape[j] == ys->shape[j],
                      "%s: shape[%d] = %d", what, j, ys->shape[j]);
                j++;
            }
            check_vals("sum", ys, ws, outer * inner, 1e-6, 1e-6);
            check_vals("mean", ym, wm, outer * inner, 1e-6, 1e-6);
            check_vals("max", yx, wx, outer * inner, 0, 0);
        }
    {
        double s = 0, m = -1e300;
        int i;
        av_tensor *ys = av_sum_all(c, t), *ym = av_mean_all(c, t), *yx = av_max_all(c, t);
        for (i = 0; i < 120; i++) { s += x[i]; m = x[i] > m ? x[i] : m; }
        CHECK(ys->ndim == 0 && ym->ndim == 0 && yx->ndim == 0, "_all reductions: not 0-d");
        CHECK_CLOSE(av_item(ys), s, 1e-5, 1e-6, "sum_all");
        CHECK_CLOSE(av_item(ym), s / 120, 1e-6, 1e-6, "mean_all");
        CHECK(av_item(yx) == (float)m, "max_all: got %g want %g", av_item(yx), m);
    }
    {   /* 1-d axis 0 without keepdim: a 0-d result */
        av_tensor *y = av_sum(c, av_from(c, x, 1, 5), 0, 0);
        CHECK(y->ndim == 0 && y->size == 1, "sum of 1-d over axis 0: ndim %d size %d", y->ndim, y->size);
    }
    {   /* a long sum stays accurate: 1e5 copies of 0.1 (float-accumulated: 1e-3 off) */
        av_tensor *y = av_sum_all(c, av_full(c, 0.1f, 1, 100000));
        CHECK_CLOSE(av_item(y), 100000 * (double)0.1f, 0, 1e-6, "sum_all of 1e5 x 0.1");
    }
    av_ctx_free(c);
}

static void fwd_matmul_values(void) {
    /* odd sizes so every kernel edge path runs: 3x5x7, 17x13x19, batched */
    static const int cfg[][6] = {
        /* nb_a, nb_b, M, K, N, (unused) */
        {0, 0, 3, 5, 7, 0}, {0, 0, 17, 13, 19, 0}, {1, 1, 3, 5, 7, 0}, {2, 2, 3, 4, 5, 0},
        {1, 0, 5, 6, 3, 0}, {2, 0, 3, 5, 4, 0}, {0, 0, 1, 1, 1, 0}, {0, 0, 40, 33, 37, 0}};
    static float a[2000], b[2000];
    double want[2000];
    av_ctx *c = av_ctx_new();
    int k, ta, tb, batch[2];
    batch[0] = 2; batch[1] = 3;
    gc_fill(a, 2000, -1, 1);
    gc_fill(b, 2000, -1, 1);
    for (k = 0; k < (int)(sizeof cfg / sizeof cfg[0]); k++)
        for (ta = 0; ta < 2; ta++)
            for (tb = 0; tb < 2; tb++) {
                gc_input ga, gb;
                int M = cfg[k][2], K = cfg[k][3], N = cfg[k][4], nbat = 1, bi, i, j, l;
                av_tensor *A, *B, *C;
                char what[80];
                mm_shapes(cfg[k][0], cfg[k][1], batch, M, K, N, ta, tb, &ga, &gb);
                for (i = 0; i < cfg[k][0]; i++) nbat *= batch[i];
                A = gc_make(c, ga.ndim, ga.shape, a);
                B = gc_make(c, gb.ndim, gb.shape, b);
                C = av_matmul(c, A, B, ta, tb);
                for (bi = 0; bi < nbat; bi++) {
                    const float *pa = a + bi * M * K, *pb = b + (cfg[k][1] ? bi * K * N : 0);
                    for (i = 0; i < M; i++)
                        for (j = 0; j < N; j++) {
                            double s = 0;
                            for (l = 0; l < K; l++)
                                s += (double)(ta ? pa[l * M + i] : pa[i * K + l]) * (tb ? pb[j * K + l] : pb[l * N + j]);
                            want[(bi * M + i) * N + j] = s;
                        }
                }
                snprintf(what, sizeof what, "matmul %d-d x %d-d %dx%dx%d ta %d tb %d", ga.ndim, gb.ndim, M, K, N, ta, tb);
                CHECK(C->ndim == ga.ndim && C->shape[C->ndim - 2] == M && C->shape[C->ndim - 1] == N, "%s: bad output shape", what);
                /* fp32 dot products of K terms in [-1,1]: error <= K ulp-ish, 1e-5 abs is ample and a wrong index is O(1) */
                check_vals(what, C, want, nbat * M * N, 1e-5 * K, 1e-5);
            }
    {   /* linear vs the same naive loops, with and without bias, 3-d input */
        float x[30], w[20], bias[4];
        double wl[24];
        int r, j, l, hb;
        gc_fill(x, 30, -1, 1);
        gc_fill(w, 20, -1, 1);
        gc_fill(bias, 4, -1, 1);
        for (hb = 0; hb < 2; hb++) {
            av_tensor *y;
            for (r = 0; r < 6; r++)
                for (j = 0; j < 4; j++) {
                    double s = hb ? bias[j] : 0;
                    for (l = 0; l < 5; l++) s += (double)x[r * 5 + l] * w[j * 5 + l];
                    wl[r * 4 + j] = s;
                }
            y = av_linear(c, av_from(c, x, 3, 2, 3, 5), av_from(c, w, 2, 4, 5), hb ? av_from(c, bias, 1, 4) : NULL);
            CHECK_SHAPE(y, 3, 2, 3, 4, 0, "linear 3-d shape");
            check_vals(hb ? "linear with bias" : "linear no bias", y, wl, 24, 1e-5, 1e-5);
        }
    }
    av_ctx_free(c);
}

static void fwd_shape_values(void) {
    float x[120];
    av_ctx *c = av_ctx_new();
    av_tensor *t;
    int i;
    for (i = 0; i < 120; i++) x[i] = (float)i;
    t = av_from(c, x, 4, 2, 3, 4, 5);
    {   /* permute: out[o] = x[idx] with idx[perm[k]] = o[k] */
        static const int perms[3][4] = {{3, 1, 0, 2}, {0, 2, 1, 3}, {3, 2, 1, 0}};
        static const int S[4] = {2, 3, 4, 5};
        int p;
        for (p = 0; p < 3; p++) {
            av_tensor *y = av_permute(c, t, perms[p]);
            double want[120];
            int o[4], os[4], ok = 1, k = 0;
            for (i = 0; i < 4; i++) os[i] = S[perms[p][i]];
            for (i = 0; i < 4; i++) ok &= y->shape[i] == os[i];
            CHECK(ok && y->ndim == 4, "permute #%d: wrong shape", p);
            for (o[0] = 0; o[0] < os[0]; o[0]++)
                for (o[1] = 0; o[1] < os[1]; o[1]++)
                    for (o[2] = 0; o[2] < os[2]; o[2]++)
                        for (o[3] = 0; o[3] < os[3]; o[3]++) {
                            int idx[4];
                            for (i = 0; i < 4; i++) idx[perms[p][i]] = o[i];
                            want[k++] = ((idx[0] * 3 + idx[1]) * 4 + idx[2]) * 5 + idx[3];
                        }
            check_vals("permute values", y, want, 120, 0, 0);
        }
    }
    {   /* transpose of [3,5] */
        av_tensor *y = av_transpose(c, av_from(c, x, 2, 3, 5), 0, 1);
        double want[15];
        int r, j;
        for (r = 0; r < 5; r++)
            for (j = 0; j < 3; j++) want[r * 3 + j] = j * 5 + r;
        CHECK_SHAPE(y, 2, 5, 3, 0, 0, "transpose shape");
        check_vals("transpose values", y, want, 15, 0, 0);
    }
    {   /* slice axis 2 of [2,3,4,5], [1,3) */
        av_tensor *y = av_slice(c, t, 2, 1, 3);
        double want[60];
        int a, b, d, e, k = 0;
        CHECK_SHAPE(y, 4, 2, 3, 2, 5, "slice shape");
        for (a = 0; a < 2; a++)
            for (b = 0; b < 3; b++)
                for (d = 1; d < 3; d++)
                    for (e = 0; e < 5; e++) want[k++] = ((a * 3 + b) * 4 + d) * 5 + e;
        check_vals("slice values", y, want, 60, 0, 0);
        y = av_slice(c, t, 3, 4, 5);
        CHECK_SHAPE(y, 4, 2, 3, 4, 1, "slice last element shape");
        y = av_slice(c, t, 0, 1, 1);
        CHECK(y->size == 0, "empty slice: size %d", y->size);
    }
    {   /* concat [2,1,2] and [2,2,2] along axis 1 */
        float p[4] = {1, 2, 3, 4}, q[8] = {10, 11, 12, 13, 14, 15, 16, 17};
        static const double want[12] = {1, 2, 10, 11, 12, 13, 3, 4, 14, 15, 16, 17};
        av_tensor *xs[2], *y;
        xs[0] = av_from(c, p, 3, 2, 1, 2);
        xs[1] = av_from(c, q, 3, 2, 2, 2);
        y = av_concat(c, xs, 2, 1);
        CHECK_SHAPE(y, 3, 2, 3, 2, 0, "concat shape");
        check_vals("concat values", y, want, 12, 0, 0);
    }
    {   /* reshape with -1, and it keeps the values in order */
        av_tensor *y = av_reshape(c, t, 3, 6, -1, 5);
        double want[120];
        CHECK_SHAPE(y, 3, 6, 4, 5, 0, "reshape -1 shape");
        for (i = 0; i < 120; i++) want[i] = i;
        check_vals("reshape values", y, want, 120, 0, 0);
        y = av_reshape(c, av_from(c, x, 1, 1), 0);
        CHECK(y->ndim == 0 && y->size == 1, "reshape [1] -> 0-d: ndim %d", y->ndim);
    }
    {   /* embedding rows */
        static const int ids[4] = {3, 0, 3, 1};
        av_tensor *y = av_embedding(c, av_from(c, x, 2, 4, 5), ids, 4);
        double want[20];
        int r, j;
        for (r = 0; r < 4; r++)
            for (j = 0; j < 5; j++) want[r * 5 + j] = ids[r] * 5 + j;
        CHECK_SHAPE(y, 2, 4, 5, 0, 0, "embedding shape");
        check_vals("embedding values", y, want, 20, 0, 0);
    }
    {   /* creation */
        av_tensor *z = av_zeros(c, 3, 2, 3, 4), *o = av_ones(c, 1, 7), *f = av_full(c, 2.5f, 2, 2, 2), *s = av_scalar(c, 4.0f);
        int ok = 1;
        for (i = 0; i < z->size; i++) ok &= z->data[i] == 0.0f;
        for (i = 0; i < o->size; i++) ok &= o->data[i] == 1.0f;
        for (i = 0; i < f->size; i++) ok &= f->data[i] == 2.5f;
        CHECK(ok && z->size == 24 && o->size == 7 && f->size == 4, "zeros/ones/full values or sizes");
        CHECK(s->ndim == 0 && s->size == 1 && av_item(s) == 4.0f, "scalar: ndim %d size %d", s->ndim, s->size);
        CHECK(!z->requires_grad && z->grad == NULL, "new tensors need no grad");
        CHECK(av_same_shape(av_zeros(c, 2, 3, 4), av_ones(c, 2, 3, 4)) && !av_same_shape(av_zeros(c, 2, 3, 4), av_zeros(c, 2, 4, 3)),
              "av_same_shape");
        {   /* av_wrap shares the caller's buffer; av_from copies */
            float buf[6] = {1, 2, 3, 4, 5, 6};
            av_tensor *w = av_wrap(c, buf, 2, 2, 3), *fr = av_from(c, buf, 2, 3, 2);
            buf[4] = 50.0f;
            CHECK(w->data == buf && w->size == 6 && w->data[4] == 50.0f && fr->data != buf && fr->data[4] == 5.0f,
                  "av_wrap must not copy, av_from must");
        }
    }
    {   /* rand / randn statistics: 1e4 samples, 5-sigma bounds */
        av_tensor *u, *nrm;
        double s = 0, ss = 0, mn = 1e9, mx = -1e9;
        int n = 10000;
        av_ctx_seed(c, 7);
        u = av_rand(c, -2.0f, 3.0f, 1, n);
        for (i = 0; i < n; i++) { s += u->data[i]; mn = u->data[i] < mn ? u->data[i] : mn; mx = u->data[i] > mx ? u->data[i] : mx; }
        CHECK(mn >= -2.0 && mx < 3.0, "av_rand outside [lo, hi): [%g, %g]", mn, mx);
        /* uniform(-2,3): mean 0.5, sd 5/sqrt(12) = 1.44, SE 0.0144 */
        CHECK_CLOSE(s / n, 0.5, 0.072, 0, "av_rand mean");
        nrm = av_randn(c, 1.0f, 2.0f, 1, n);
        s = 0;
        for (i = 0; i < n; i++) { s += nrm->data[i]; ss += (double)nrm->data[i] * nrm->data[i]; }
        /* mean SE 2/100 = 0.02; sd relative SE 1/sqrt(2n) = 0.7% */
        CHECK_CLOSE(s / n, 1.0, 0.1, 0, "av_randn mean");
        CHECK_CLOSE(sqrt(ss / n - (s / n) * (s / n)), 2.0, 0, 0.035, "av_randn std");
    }
    av_ctx_free(c);
}

/* ======================================================================= */
/* 3. autodiff semantics                                                   */
/* ======================================================================= */
static jmp_buf t_jmp;
static char t_msg[600];
static int t_aborts;
static void t_on_abort(const char *m) {
    t_aborts++;
    strncpy(t_msg, m, sizeof t_msg - 1);
    t_msg[sizeof t_msg - 1] = 0;
    longjmp(t_jmp, 1);
}

#ifdef T_HAVE_POSIX
static int t_saved_stderr = -1;
static void quiet_stderr(int on) {
    fflush(stderr);
    if (on) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd < 0) return;
        t_saved_stderr = dup(2);
        dup2(fd, 2);
        close(fd);
    } else if (t_saved_stderr >= 0) {
        dup2(t_saved_stderr, 2);
        close(t_saved_stderr);
        t_saved_stderr = -1;
    }
}
#else
static void quiet_stderr(int on) { (void)on; }
#endif

static void autodiff_semantics(void) {
    av_model *m = av_model_new(1);
    av_tensor *w = av_param(m, "w", AV_INIT_UNIFORM, 1.0f, 2, 2, 3);
    av_ctx *c = av_ctx_new();
    float G[6] = {0.5f, -1.0f, 2.0f, 0.25f, 3.0f, -0.75f};
    int i, ok;

    /* param gradients accumulate over steps until zero_grad */
    for (i = 0; i < 2; i++) {
        av_tensor *loss = av_sum_all(c, av_mul(c, w, av_from(c, G, 2, 2, 3)));
        av_backward(c, loss);
        av_ctx_reset(c);
    }
    ok = w->grad != NULL;
    for (i = 0; ok && i < 6; i++) ok &= w->grad[i] == 2 * G[i];
    CHECK(ok, "two backward passes did not accumulate 2G into the parameter grad");
    av_model_zero_grad(m);
    ok = 1;
    for (i = 0; w->grad && i < 6; i++) ok &= w->grad[i] == 0.0f;
    CHECK(ok, "av_model_zero_grad left nonzero grads");
    {   /* the grad of a parameter used twice in one graph, then once more */
        av_tensor *loss = av_sum_all(c, av_add(c, av_mul(c, w, av_from(c, G, 2, 2, 3)), av_scale(c, w, 2.0f)));
        av_backward(c, loss);
        ok = 1;
        for (i = 0; i < 6; i++) ok &= w->grad[i] == G[i] + 2.0f;
        CHECK(ok, "parameter used twice: grad not G + 2");
        av_ctx_reset(c);
    }
    av_model_zero_grad(m);

    {   /* backward twice over the same graph adds the gradient twice to leaves
           (the implementation resets intermediate gradients per pass) */
        av_tensor *x = av_from(c, G, 1, 6), *loss;
        av_requires_grad(c, x);
        loss = av_sum_all(c, av_square(c, av_tanh(c, x)));
        av_backward(c, loss);
        av_backward(c, loss);
        ok = x->grad != NULL;
        for (i = 0; ok && i < 6; i++) {
            double th = tanh(G[i]), g1 = 2 * th * (1 - th * th);
            ok &= fabs(x->grad[i] - 2 * g1) <= 1e-5 * (1 + fabs(g1));
        }
        CHECK(ok, "second backward over one graph: leaf grad is not twice the gradient");
        av_ctx_reset(c);
    }

    {   /* no-grad mode */
        av_tensor *x = av_from(c, G, 2, 2, 3), *y, *outs[8], *cat[2];
        int prev, k, n = 0;
        av_requires_grad(c, x);
        prev = av_set_grad_enabled(c, 0);
        CHECK(prev == 1, "grad mode was not on by default (prev %d)", prev);
        outs[n++] = av_exp(c, x);
        outs[n++] = av_add(c, x, w);
        outs[n++] = av_matmul(c, x, w, 0, 1);
        outs[n++] = av_linear(c, x, w, NULL);
        outs[n++] = av_layer_norm(c, x, NULL, NULL, 1e-5f);
        outs[n++] = av_sum_all(c, x);
        cat[0] = x; cat[1] = w;
        outs[n++] = av_concat(c, cat, 2, 0);
        outs[n++] = av_reshape(c, x, 1, 6);
        ok = 1;
        for (k = 0; k < n; k++) ok &= outs[k]->requires_grad == 0 && outs[k]->grad == NULL;
        CHECK(ok, "no-grad mode: an op output requires grad");
        y = outs[5];
        prev = av_set_grad_enabled(c, 1);
        CHECK(prev == 0, "av_set_grad_enabled returned %d, want 0", prev);
        av_set_abort_handler(t_on_abort);
        quiet_stderr(1);
        t_aborts = 0;
        if (setjmp(t_jmp) == 0) av_backward(c, y);
        quiet_stderr(0);
        av_set_abort_handler(NULL);
        CHECK(t_aborts == 1, "backward from a no-grad result did not report an error");
        CHECK(x->grad == NULL, "no-grad: x got a gradient");
        av_ctx_reset(c);
    }

    {   /* detach blocks the gradient; values are shared */
        av_tensor *x = av_from(c, G, 1, 6), *d, *loss;
        av_requires_grad(c, x);
        d = av_detach(c, x);
        CHECK(d->requires_grad == 0 && d->size == 6 && memcmp(d->data, x->data, 6 * sizeof(float)) == 0, "detach: values or flags");
        loss = av_sum_all(c, av_mul(c, x, d)); /* d/dx = d = x, not 2x */
        av_backward(c, loss);
        ok = x->grad != NULL;
        for (i = 0; ok && i < 6; i++) ok &= x->grad[i] == G[i];
        CHECK(ok, "detach: gradient flowed through the detached operand");
        CHECK(d->grad == NULL, "detach: the detached tensor got a gradient");
        av_ctx_reset(c);
    }

    {   /* constants get no gradient buffers, and neither do ops of constants */
        av_tensor *a = av_from(c, G, 1, 6), *b = av_from(c, G, 1, 6), *k = av_full(c, 2.0f, 1, 6), *bk, *loss;
        av_requires_grad(c, a);
        bk = av_exp(c, av_mul(c, b, k));
        CHECK(bk->requires_grad == 0, "op of constants requires grad");
        loss = av_sum_all(c, av_mul(c, a, bk));
        CHECK(loss->requires_grad == 1, "loss does not require grad");
        av_backward(c, loss);
        CHECK(a->grad != NULL && b->grad == NULL && k->grad == NULL && bk->grad == NULL, "gradient buffers on constants");
        av_ctx_reset(c);
    }

    {   /* av_ctx_alloc is 64-byte aligned; peak bytes grow with a bigger step */
        void *p1 = av_ctx_alloc(c, 3), *p2 = av_ctx_alloc(c, 100);
        CHECK(((uintptr_t)p1 & 63) == 0 && ((uintptr_t)p2 & 63) == 0, "av_ctx_alloc not 64-byte aligned");
        av_ctx_reset(c);
    }
    av_ctx_free(c);
    av_model_free(m);
}

/* A training-like step: embedding, linear + gelu, layer norm, attention-ish
   matmul big enough for the blocked GEMM, cross-entropy, backward, Adam. */
static float train_step(av_ctx *c, av_model *m, const av_optim *opt, int step) {
    static const int ids[32] = {1, 5, 2, 7, 3, 3, 0, 6, 1, 2, 4, 4, 5, 6, 7, 0, 2, 2, 1, 3, 6, 5, 4, 7, 0, 1, 2, 3, 4, 5, 6, 7};
    static const int labels[32] = {0, 1, 2, 3, 4, 5, 6, 7, 7, 6, 5, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 7, 6, 5, 4, 3, 2, 1, 0};
    av_tensor *h, *att, *logits, *loss;
    float l;
    av_ctx_seed(c, (uint64_t)step);
    h = av_embedding(c, av_model_find(m, "emb"), ids, 32);                              /* [32, 64] */
    h = av_gelu(c, av_linear(c, h, av_model_find(m, "w1"), av_model_find(m, "b1")));    /* [32, 96] */
    h = av_layer_norm(c, h, av_model_find(m, "g"), av_model_find(m, "beta"), 1e-5f);
    att = av_softmax(c, av_scale(c, av_matmul(c, h, h, 0, 1), 0.1f));                   /* [32, 32] */
    h = av_dropout(c, av_matmul(c, att, h, 0, 0), 0.1f);                                /* [32, 96] */
    logits = av_linear(c, h, av_model_find(m, "w2"), NULL);                             /* [32, 8] */
    loss = av_cross_entropy(c, logits, labels, AV_MEAN);
    av_backward(c, loss);
    l = av_item(loss);
    av_optim_step(m, opt);
    av_model_zero_grad(m);
    av_ctx_reset(c);
    return l;
}

static void arena_steady_state(void) {
    av_model *m = av_model_new(3);
    av_ctx *c = av_ctx_new();
    av_optim opt = av_adam(1e-3f);
    size_t peak[6];
    long mallocs_before;
    int s, same = 1;
    float l0, l5 = 0;
    av_param(m, "emb", AV_INIT_NORMAL, 1.0f, 2, 8, 64);
    av_param(m, "w1", AV_INIT_TORCH_LINEAR, 0, 2, 96, 64);
    av_param(m, "b1", AV_INIT_ZEROS, 0, 1, 96);
    av_param(m, "g", AV_INIT_ONES, 0, 1, 96);
    av_param(m, "beta", AV_INIT_ZEROS, 0, 1, 96);
    av_param(m, "w2", AV_INIT_TORCH_LINEAR, 0, 2, 8, 96);
    l0 = train_step(c, m, &opt, 0);
    peak[0] = av_ctx_peak_bytes(c);
    train_step(c, m, &opt, 1);
    peak[1] = av_ctx_peak_bytes(c);
    mallocs_before = t_mallocs;
    for (s = 2; s < 6; s++) {
        l5 = train_step(c, m, &opt, s);
        peak[s] = av_ctx_peak_bytes(c);
        same &= peak[s] == peak[1];
    }
    CHECK(peak[0] > 0, "peak bytes 0 after a step");
    CHECK(same, "peak bytes grow across identical steps: %lu, %lu, %lu, %lu",
          (unsigned long)peak[1], (unsigned long)peak[2], (unsigned long)peak[3], (unsigned long)peak[5]);
    CHECK(t_mallocs == mallocs_before, "steady-state steps made %ld heap allocations through AV_MALLOC/AV_REALLOC",
          t_mallocs - mallocs_before);
    CHECK(l5 < l0, "training steps did not lower the loss (%g -> %g)", l0, l5);
    av_ctx_free(c);
    av_model_free(m);
}

/* ======================================================================= */
/* 4. shape errors                                                         */
/* ======================================================================= */
/* the message, spaces removed, must contain each of the needles */
static int msg_has(const char *needle) {
    char a[600], b[128];
    int i, j;
    for (i = 0, j = 0; t_msg[i] && j < (int)sizeof a - 1; i++)
        if (t_msg[i] != ' ') a[j++] = t_msg[i];
    a[j] = 0;
    for (i = 0, j = 0; needle[i] && j < (int)sizeof b - 1; i++)
        if (needle[i] != ' ') b[j++] = needle[i];
    b[j] = 0;
    return strstr(a, b) != NULL;
}

#define EXPECT_ABORT(what, stmt, n1, n2, n3)                                              \
    do {                                                                                  \
        t_msg[0] = 0;                                                                     \
        t_aborts = 0;                                                                     \
        if (setjmp(t_jmp) == 0) {                                                         \
            stmt;                                                                         \
            CHECK(0, "%s: no error reported", what);                                      \
        } else {                                                                          \
            CHECK(t_aborts == 1, "%s: handler called %d times", what, t_aborts);           \
            CHECK(msg_has(n1) && msg_has(n2) && msg_has(n3), "%s: message \"%s\" lacks %s / %s / %s", \
                  what, t_msg, n1, n2, n3);                                               \
        }                                                                                 \
        av_ctx_reset(c);                                                                  \
    } while (0)

static void shape_errors(void) {
    av_ctx *c = av_ctx_new();
    float d[64];
    static const int bad_perm[3] = {0, 0, 1};
    static const int ids[2] = {0, 5};
    static const int labels[2] = {0, 3};
    memset(d, 0, sizeof d);
    av_set_abort_handler(t_on_abort);
    quiet_stderr(1);
    EXPECT_ABORT("add [2,3]+[4,5]", av_add(c, av_zeros(c, 2, 2, 3), av_zeros(c, 2, 4, 5)), "av_add", "[2,3]", "[4,5]");
    EXPECT_ABORT("sub [2,3]-[3]", av_sub(c, av_zeros(c, 2, 2, 3), av_zeros(c, 1, 2)), "av_sub", "[2,3]", "[2]");
    EXPECT_ABORT("mul [2,3]*[3,2]", av_mul(c, av_zeros(c, 2, 2, 3), av_zeros(c, 2, 3, 2)), "av_mul", "[2,3]", "[3,2]");
    EXPECT_ABORT("div [4,1,3]/[2,3]", av_div(c, av_zeros(c, 3, 4, 1, 3), av_zeros(c, 2, 2, 2)), "av_div", "[4,1,3]", "[2,2]");
    EXPECT_ABORT("matmul K", av_matmul(c, av_zeros(c, 2, 2, 3), av_zeros(c, 2, 4, 5), 0, 0), "av_matmul", "[2,3]", "[4,5]");
    EXPECT_ABORT("matmul K trans_b", av_matmul(c, av_zeros(c, 2, 2, 3), av_zeros(c, 2, 3, 5), 0, 1), "av_matmul", "[2,3]", "[3,5]");
    EXPECT_ABORT("matmul batch", av_matmul(c, av_zeros(c, 3, 2, 3, 4), av_zeros(c, 3, 3, 4, 5), 0, 0), "av_matmul", "[2,3,4]", "[3,4,5]");
    EXPECT_ABORT("matmul 1-d", av_matmul(c, av_zeros(c, 1, 3), av_zeros(c, 2, 3, 5), 0, 0), "av_matmul", "[3]", "[3,5]");
    EXPECT_ABORT("reshape size", av_reshape(c, av_zeros(c, 2, 2, 3), 2, 4, 2), "av_reshape", "[2,3]", "[4,2]");
    EXPECT_ABORT("reshape -1 not dividing", av_reshape(c, av_zeros(c, 2, 2, 3), 2, 4, -1), "av_reshape", "[2,3]", "");
    EXPECT_ABORT("linear in", av_linear(c, av_zeros(c, 2, 4, 5), av_zeros(c, 2, 3, 6), NULL), "av_linear", "[4,5]", "[3,6]");
    EXPECT_ABORT("linear bias", av_linear(c, av_zeros(c, 2, 4, 5), av_zeros(c, 2, 3, 5), av_zeros(c, 1, 4)), "av_linear", "[4]", "");
    {
        av_tensor *xs[2];
        xs[0] = av_zeros(c, 2, 2, 3);
        xs[1] = av_zeros(c, 2, 3, 3);
        EXPECT_ABORT("concat off-axis", av_concat(c, xs, 2, 1), "av_concat", "[2,3]", "[3,3]");
    }
    EXPECT_ABORT("slice range", av_slice(c, av_zeros(c, 2, 2, 3), 1, 1, 5), "av_slice", "[2,3]", "");
    EXPECT_ABORT("slice axis", av_slice(c, av_zeros(c, 2, 2, 3), 2, 0, 1), "av_slice", "[2,3]", "");
    EXPECT_ABORT("permute", av_permute(c, av_zeros(c, 3, 2, 3, 4), bad_perm), "av_permute", "[2,3,4]", "");
    EXPECT_ABORT("sum axis", av_sum(c, av_zeros(c, 2, 2, 3), 2, 0), "av_sum", "[2,3]", "");
    EXPECT_ABORT("layer_norm gamma", av_layer_norm(c, av_zeros(c, 2, 2, 3), av_ones(c, 1, 4), NULL, 1e-5f), "av_layer_norm", "[2,3]", "[4]");
    EXPECT_ABORT("mse shapes", av_mse_loss(c, av_zeros(c, 2, 2, 3), av_zeros(c, 2, 3, 2), AV_MEAN), "av_mse_loss", "[2,3]", "[3,2]");
    EXPECT_ABORT("bce shapes", av_bce_with_logits(c, av_zeros(c, 1, 4), av_zeros(c, 1, 5), AV_MEAN), "av_bce_with_logits", "[4]", "[5]");
    EXPECT_ABORT("embedding id", av_embedding(c, av_zeros(c, 2, 5, 3), ids, 2), "av_embedding", "5", "");
    EXPECT_ABORT("cross_entropy label", av_cross_entropy(c, av_zeros(c, 2, 2, 3), labels, AV_MEAN), "av_cross_entropy", "3", "");
    {
        av_tensor *x = av_from(c, d, 1, 3);
        av_requires_grad(c, x);
        EXPECT_ABORT("backward non-scalar", av_backward(c, av_exp(c, x)), "av_backward", "[3]", "");
    }
    EXPECT_ABORT("dropout p=1", av_dropout(c, av_zeros(c, 1, 3), 1.0f), "av_dropout", "", "");
    quiet_stderr(0);
    av_set_abort_handler(NULL);
    av_ctx_free(c);
}

int main(void) {
    gc_seed(20240601);
    gc_selftest();
    grad_unary();
    grad_binary();
    grad_shape_ops();
    grad_concat();
    grad_reductions();
    grad_matmul();
    grad_linear();
    grad_norm_embed_dropout();
    grad_losses();
    grad_compositions();
    fwd_unary_values();
    fwd_softmax_values();
    fwd_layer_norm_values();
    fwd_loss_values();
    fwd_broadcast_values();
    fwd_reduction_values();
    fwd_long_reductions();
    fwd_long_gradients();
    fwd_matmul_values();
    fwd_shape_values();
    autodiff_semantics();
    arena_steady_state();
    shape_errors();
    printf("info: worst gradcheck error %.2f of its tolerance (%s)\n", gc_worst_ratio, gc_worst_what);
    return t_summary();
}
