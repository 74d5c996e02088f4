/* test_scores.c - learned-score attention (additive/Bahdanau, Luong dot,
   general and concat), attention pooling and hard attention. Forward values
   against double-precision references written here (on every GEMM and
   vector-math path), finite differences for every op and module (with
   additive masks, lengths and fully masked rows), the modules step by step
   against all steps at once, their parameter names, the samplers' draws
   against softmax (chi-square), REINFORCE unbiased on a problem whose
   gradient is known (within standard errors), its variance cut by a
   baseline, the straight-through estimator's bias told apart, shape
   errors, and, built with OpenMP, the same bits on 1 and 2 threads. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "gradcheck.h"
#include "expect_fail.h"
#include "philox_ref.h"

static int quick; /* AV_TEST_QUICK=1 (valgrind): fewer draws, the same checks */

/* ---- comparison ---- */
/* |got - want| <= tol * max(largest |want|, 1e-2) everywhere, no NaN */
static void check_close_d(const char *what, const float *got, const double *want, int n, double tol) {
    double scale = 1e-2, worst = 0;
    int i, at = 0, nan = 0;
    for (i = 0; i < n; i++) scale = fabs(want[i]) > scale ? fabs(want[i]) : scale;
    for (i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (got[i] != got[i]) nan = 1;
        if (e > worst) { worst = e; at = i; }
    }
    CHECK(!nan && worst <= tol * scale, "%s: differs by %.3g at %d (largest %.3g, tolerance %.1g relative)%s", what,
          worst, at, scale, tol, nan ? ", NaN" : "");
}

static float *rnd(int n, double lo, double hi) {
    float *p = (float *)malloc(sizeof(float) * (size_t)(n + 1));
    gc_fill(p, n, lo, hi);
    return p;
}

/* ---- references, in double ---- */
static double *to_double(const float *p, int n) {
    double *d = (double *)malloc(sizeof(double) * (size_t)(n + 1));
    int i;
    for (i = 0; i < n; i++) d[i] = p[i];
    return d;
}

static void ref_additive(int B, int Tq, int Tk, int A, const double *q, const double *k, const float *v, double *s) {
    int b, i, j, a;
    for (b = 0; b < B; b++)
        for (i = 0; i < Tq; i++)
            for (j = 0; j < Tk; j++) {
                double acc = 0;
                for (a = 0; a < A; a++) acc += v[a] * tanh(q[((size_t)b * Tq + i) * A + a] + k[((size_t)b * Tk + j) * A + a]);
                s[((size_t)b * Tq + i) * Tk + j] = acc;
            }
}

/* the same from float inputs */
static void ref_additive_f(int B, int Tq, int Tk, int A, const float *q, const float *k, const float *v, double *s) {
    double *qd = to_double(q, B * Tq * A), *kd = to_double(k, B * Tk * A);
    ref_additive(B, Tq, Tk, A, qd, kd, v, s);
    free(qd);
    free(kd);
}

static void ref_dot(int B, int Tq, int Tk, int D, const float *q, const float *k, double *s) {
    int b, i, j, d;
    for (b = 0; b < B; b++)
        for (i = 0; i < Tq; i++)
            for (j = 0; j < Tk; j++) {
                double acc = 0;
                for (d = 0; d < D; d++) acc += (double)q[((size_t)b * Tq + i) * D + d] * k[((size_t)b * Tk + j) * D + d];
                s[((size_t)b * Tq + i) * Tk + j] = acc;
            }
}

/* softmax over the first len entries that are not -inf; zeros elsewhere */
static void ref_softmax_row(const double *x, int len, int T, double *y) {
    double mx = -INFINITY, sum = 0;
    int j;
    for (j = 0; j < len; j++) mx = x[j] > mx ? x[j] : mx;
    for (j = 0; j < T; j++) {
        y[j] = j < len && mx != -INFINITY ? exp(x[j] - mx) : 0.0;
        sum += y[j];
    }
    for (j = 0; j < T; j++) y[j] = sum > 0 ? y[j] / sum : 0.0;
}

/* Masks for the references: key mask [B, Tk] (or NULL), query mask
   [B, Tq, Tk] (or NULL), lengths (or NULL), added to scores s in place. */
static void ref_mask(int B, int Tq, int Tk, const float *key_mask, const float *query_mask, const int *lengths, double *s) {
    int b, i, j;
    for (b = 0; b < B; b++)
        for (i = 0; i < Tq; i++)
            for (j = 0; j < Tk; j++) {
                double *x = s + ((size_t)b * Tq + i) * Tk + j;
                if (key_mask) *x += key_mask[(size_t)b * Tk + j];
                if (query_mask) *x += query_mask[((size_t)b * Tq + i) * Tk + j];
                if (lengths && j >= lengths[b]) *x = -INFINITY;
            }
}

/* weights and context [B, Tq, Dv] from masked scores */
static void ref_attend(int B, int Tq, int Tk, int Dv, const double *s, const float *values, double *w, double *ctx) {
    int b, i, j, d;
    for (b = 0; b < B; b++)
        for (i = 0; i < Tq; i++) {
            size_t row = (size_t)b * Tq + i;
            ref_softmax_row(s + row * Tk, Tk, Tk, w + row * Tk);
            for (d = 0; d < Dv; d++) {
                double acc = 0;
                for (j = 0; j < Tk; j++) acc += w[row * Tk + j] * values[((size_t)b * Tk + j) * Dv + d];
                ctx[row * Dv + d] = acc;
            }
        }
}

/* y[r, o] = sum_i W[o, i] x[r, i] (+ bias[o]), W [out, ld] read from column col0 */
static void ref_linear(int R, int in, int out, const float *x, const float *W, int ld, int col0, const float *bias,
                       double *y) {
    int r, o, i;
    for (r = 0; r < R; r++)
        for (o = 0; o < out; o++) {
            double acc = bias ? bias[o] : 0.0;
            for (i = 0; i < in; i++) acc += (double)W[(size_t)o * ld + col0 + i] * x[(size_t)r * in + i];
            y[(size_t)r * out + o] = acc;
        }
}

static int all_zero(const float *p, int n) {
    int i;
    for (i = 0; i < n; i++)
        if (p[i] != 0.0f) return 0;
    return 1;
}

/* ---- additive scores: values on every path ---- */
static void additive_values(void) {
    static const int sizes[][5] = {/* B, Tq, Tk, A, large inputs */
                                   {2, 3, 5, 7, 0}, {1, 1, 9, 16, 0}, {3, 4, 6, 33, 0}, {2, 5, 70, 64, 0},
                                   {1, 2, 3, 1, 0}, {2, 2, 11, 19, 1}};
    int t;
    for (t = 0; t < (int)(sizeof sizes / sizeof sizes[0]); t++) {
        int B = sizes[t][0], Tq = sizes[t][1], Tk = sizes[t][2], A = sizes[t][3];
        double span = sizes[t][4] ? 30.0 : 1.5; /* |q + k| past 40: the sigmoid's scalar lanes */
        float *q = rnd(B * Tq * A, -span, span), *k = rnd(B * Tk * A, -span, span), *v = rnd(A, -1, 1);
        double *ref = (double *)malloc(sizeof(double) * (size_t)(B * Tq * Tk));
        av_ctx *c = av_ctx_new();
        av_tensor *s;
        char what[96];
        ref_additive_f(B, Tq, Tk, A, q, k, v, ref);
        s = av_additive_scores(c, av_from(c, q, 3, B, Tq, A), av_from(c, k, 3, B, Tk, A), av_from(c, v, 1, A));
        snprintf(what, sizeof what, "additive scores B %d Tq %d Tk %d A %d%s", B, Tq, Tk, A, sizes[t][4] ? " (large)" : "");
        CHECK(s->ndim == 3 && s->shape[0] == B && s->shape[1] == Tq && s->shape[2] == Tk, "%s: shape", what);
        check_close_d(what, s->data, ref, B * Tq * Tk, 2e-6);
        /* v as nn.Linear(A, 1)'s weight [1, A] gives the same bits */
        {
            av_tensor *s2 = av_additive_scores(c, av_from(c, q, 3, B, Tq, A), av_from(c, k, 3, B, Tk, A), av_from(c, v, 2, 1, A));
            CHECK(memcmp(s->data, s2->data, sizeof(float) * (size_t)s->size) == 0, "%s: v [1, A] differs from v [A]", what);
        }
        av_ctx_free(c);
        free(q); free(k); free(v); free(ref);
    }
}

/* The fused op against the computation the issue describes, from plain
   ops: a broadcast add [B, Tq, 1, A] + [B, 1, Tk, A], tanh, the product
   with v; forward and every gradient. */
static void fused_vs_composed(void) {
    enum { B = 3, Tq = 4, Tk = 9, A = 19 };
    float *q = rnd(B * Tq * A, -1.5, 1.5), *k = rnd(B * Tk * A, -1.5, 1.5), *v = rnd(A, -1, 1), *r = rnd(B * Tq * Tk, -1, 1);
    av_ctx *c = av_ctx_new();
    av_tensor *x[2][3], *s[2];
    double *want;
    int p, i;
    for (p = 0; p < 2; p++) {
        x[p][0] = av_from(c, q, 3, B, Tq, A);
        x[p][1] = av_from(c, k, 3, B, Tk, A);
        x[p][2] = av_from(c, v, 2, 1, A);
        for (i = 0; i < 3; i++) av_requires_grad(c, x[p][i]);
    }
    s[0] = av_additive_scores(c, x[0][0], x[0][1], x[0][2]);
    s[1] = av_add(c, av_reshape(c, x[1][0], 4, B, Tq, 1, A), av_reshape(c, x[1][1], 4, B, 1, Tk, A));
    s[1] = av_reshape(c, av_linear(c, av_tanh(c, s[1]), x[1][2], NULL), 3, B, Tq, Tk);
    for (p = 0; p < 2; p++) av_backward(c, av_sum_all(c, av_mul(c, s[p], av_from(c, r, 3, B, Tq, Tk))));
    for (i = 0; i < 4; i++) {
        static const char *const names[4] = {"fused vs composed: scores", "fused vs composed: dq", "fused vs composed: dk",
                                              "fused vs composed: dv"};
        const float *got = i ? x[0][i - 1]->grad : s[0]->data, *ref = i ? x[1][i - 1]->grad : s[1]->data;
        int n = i ? x[0][i - 1]->size : s[0]->size, j;
        want = (double *)malloc(sizeof(double) * (size_t)n);
        for (j = 0; j < n; j++) want[j] = ref[j];
        check_close_d(names[i], got, want, n, 1e-5);
        free(want);
    }
    av_ctx_free(c);
    free(q); free(k); free(v); free(r);
}

/* ---- masked softmax and av_attend: values ---- */
static void masked_softmax_values(void) {
    enum { B = 3, Tq = 4, T = 6 };
    static const int lengths[B] = {6, 2, 0};
    float *x = rnd(B * Tq * T, -3, 3);
    double xd[B * Tq * T], ref[B * Tq * T];
    av_ctx *c = av_ctx_new();
    av_tensor *y;
    int i, b, r;
    x[1] = x[9] = -INFINITY;                         /* single hidden entries */
    for (i = 0; i < T; i++) x[2 * T + i] = -INFINITY; /* batch 0, row 2: nothing visible */
    for (i = 0; i < B * Tq * T; i++) xd[i] = x[i];
    for (r = 0; r < B * Tq; r++) ref_softmax_row(xd + r * T, lengths[r / Tq], T, ref + r * T);
    y = av_masked_softmax(c, av_from(c, x, 3, B, Tq, T), lengths);
    check_close_d("masked softmax with lengths", y->data, ref, B * Tq * T, 1e-6);
    CHECK(all_zero(y->data + 2 * T, T) && all_zero(y->data + 2 * Tq * T, Tq * T), "rows that see nothing are exactly 0");
    for (b = 0; b < B * Tq; b++) { /* each row sums to 1 or is empty */
        double sum = 0;
        for (i = 0; i < T; i++) sum += y->data[b * T + i];
        CHECK(fabs(sum - 1) < 1e-6 || sum == 0, "masked softmax row %d sums to %g", b, sum);
    }
    /* without lengths, 2-D */
    for (r = 0; r < B * Tq; r++) ref_softmax_row(xd + r * T, T, T, ref + r * T);
    y = av_masked_softmax(c, av_from(c, x, 2, B * Tq, T), NULL);
    check_close_d("masked softmax, -inf entries only", y->data, ref, B * Tq * T, 1e-6);
    av_ctx_free(c);
    free(x);
}

/* av_attend, av_additive_attention and av_dot_attention with every mask form */
enum { M_NONE, M_KEY, M_KEY4, M_QUERY, M_LENGTHS, M_KEY_AND_LENGTHS, M_COUNT };
static const char *const mask_names[M_COUNT] = {"no mask", "key mask [B,Tk]", "av_key_padding_mask [B,1,1,Tk]",
                                                "query mask [B,Tq,Tk] with a hidden row", "lengths", "key mask and lengths"};

typedef struct attend_case { int B, Tq, Tk, A, Dv, form, which; } attend_case; /* which: 0 attend, 1 additive, 2 dot */
static const int case_lengths[3] = {5, 0, 3}; /* batch 1 sees nothing */

static void attend_masks(av_ctx *c, const attend_case *k, const float *key_mask, const float *query_mask,
                         av_tensor **mask, const int **lengths) {
    *mask = NULL;
    *lengths = NULL;
    if (k->form == M_KEY || k->form == M_KEY_AND_LENGTHS) *mask = av_from(c, key_mask, 2, k->B, k->Tk);
    if (k->form == M_KEY4) *mask = av_key_padding_mask(c, case_lengths, k->B, k->Tk);
    if (k->form == M_QUERY) *mask = av_from(c, query_mask, 3, k->B, k->Tq, k->Tk);
    if (k->form == M_LENGTHS || k->form == M_KEY_AND_LENGTHS) *lengths = case_lengths;
}

static void make_masks(const attend_case *k, float **key_mask, float **query_mask) {
    int j;
    *key_mask = rnd(k->B * k->Tk, -1, 1);
    (*key_mask)[1] = -INFINITY; /* one hidden key */
    *query_mask = rnd(k->B * k->Tq * k->Tk, -1, 1);
    for (j = 0; j < k->Tk; j++) (*query_mask)[k->Tk + j] = -INFINITY; /* batch 0, query 1 sees nothing */
}

static void attend_values(void) {
    int form, which;
    for (which = 0; which < 3; which++)
        for (form = 0; form < M_COUNT; form++) {
            attend_case k = {3, 4, 6, 5, 3, 0, 0};
            int D = k.A, n_s = k.B * k.Tq * k.Tk, n_c = k.B * k.Tq * k.Dv, i;
            float *q = rnd(k.B * k.Tq * D, -1, 1), *kk = rnd(k.B * k.Tk * D, -1, 1), *v = rnd(k.A, -1, 1);
            float *values = rnd(k.B * k.Tk * k.Dv, -1, 1), *scores = rnd(n_s, -2, 2), *key_mask, *query_mask;
            double *s = (double *)malloc(sizeof(double) * (size_t)n_s), *w = (double *)malloc(sizeof(double) * (size_t)n_s);
            double *ctx = (double *)malloc(sizeof(double) * (size_t)n_c);
            av_ctx *c = av_ctx_new();
            av_tensor *mask, *out, *wt, *tq, *tk, *tv, *tvals;
            const int *lengths;
            float key4[3 * 6];
            char what[160];
            k.form = form;
            k.which = which;
            make_masks(&k, &key_mask, &query_mask);
            attend_masks(c, &k, key_mask, query_mask, &mask, &lengths);
            if (which == 0) for (i = 0; i < n_s; i++) s[i] = scores[i];
            if (which == 1) ref_additive_f(k.B, k.Tq, k.Tk, k.A, q, kk, v, s);
            if (which == 2) ref_dot(k.B, k.Tq, k.Tk, D, q, kk, s);
            if (form == M_KEY4) memcpy(key4, mask->data, sizeof key4);
            ref_mask(k.B, k.Tq, k.Tk, form == M_KEY || form == M_KEY_AND_LENGTHS ? key_mask : form == M_KEY4 ? key4 : NULL,
                     form == M_QUERY ? query_mask : NULL, lengths, s);
            ref_attend(k.B, k.Tq, k.Tk, k.Dv, s, values, w, ctx);
            tq = av_from(c, q, 3, k.B, k.Tq, D); tk = av_from(c, kk, 3, k.B, k.Tk, D); tv = av_from(c, v, 1, k.A);
            tvals = av_from(c, values, 3, k.B, k.Tk, k.Dv);
            if (which == 0) out = av_attend(c, av_from(c, scores, 3, k.B, k.Tq, k.Tk), tvals, mask, lengths, &wt);
            else if (which == 1) out = av_additive_attention(c, tq, tk, tv, tvals, mask, lengths, &wt);
            else out = av_dot_attention(c, tq, tk, tvals, mask, lengths, &wt);
            snprintf(what, sizeof what, "%s, %s", which == 0 ? "av_attend" : which == 1 ? "av_additive_attention" : "av_dot_attention",
                     mask_names[form]);
            CHECK(out->ndim == 3 && out->shape[2] == k.Dv && wt->ndim == 3 && wt->shape[2] == k.Tk, "%s: shapes", what);
            check_close_d(what, out->data, ctx, n_c, 1e-5);
            check_close_d(what, wt->data, w, n_s, 1e-5);
            if (form == M_QUERY)
                CHECK(all_zero(wt->data + k.Tk, k.Tk) && all_zero(out->data + k.Dv, k.Dv), "%s: the hidden row is exactly 0", what);
            if (lengths)
                CHECK(all_zero(wt->data + k.Tq * k.Tk, k.Tq * k.Tk) && all_zero(out->data + k.Tq * k.Dv, k.Tq * k.Dv),
                      "%s: length 0 gives exact zeros", what);
            av_ctx_free(c);
            free(q); free(kk); free(v); free(values); free(scores); free(key_mask); free(query_mask);
            free(s); free(w); free(ctx);
        }
}

/* ---- finite differences through the ops ---- */
static av_tensor *fwd_additive(av_ctx *c, av_tensor **in, void *u) {
    (void)u;
    return av_additive_scores(c, in[0], in[1], in[2]);
}

static void gradcheck_additive(void) {
    float *q = rnd(2 * 3 * 5, -1.5, 1.5), *k = rnd(2 * 4 * 5, -1.5, 1.5), *v = rnd(5, -1, 1);
    gc_input in[3];
    in[0] = gc_in(q, 1, 3, 2, 3, 5);
    in[1] = gc_in(k, 1, 3, 2, 4, 5);
    in[2] = gc_in(v, 1, 1, 5);
    gc_check("additive scores, v [A]", fwd_additive, NULL, 3, in);
    in[2] = gc_in(v, 1, 2, 1, 5);
    gc_check("additive scores, v [1, A]", fwd_additive, NULL, 3, in);
    in[0].check = 0; /* only some inputs need a gradient */
    gc_check("additive scores, q constant", fwd_additive, NULL, 3, in);
    free(q); free(k); free(v);
}

static av_tensor *fwd_masked_softmax(av_ctx *c, av_tensor **in, void *u) {
    return av_masked_softmax(c, av_add(c, in[0], in[1]), (const int *)u);
}

static void gradcheck_masked_softmax(void) {
    static const int lengths[3] = {5, 2, 0};
    float *x = rnd(3 * 2 * 5, -2, 2), *mask = rnd(3 * 2 * 5, -1, 1);
    gc_input in[2];
    int j;
    mask[3] = -INFINITY;
    for (j = 0; j < 5; j++) mask[5 + j] = -INFINITY; /* batch 0, row 1: nothing visible */
    in[0] = gc_in(x, 1, 3, 3, 2, 5);
    in[1] = gc_in(mask, 0, 3, 3, 2, 5);
    gc_check("masked softmax, -inf entries and lengths (one 0)", fwd_masked_softmax, (void *)lengths, 2, in);
    gc_check("masked softmax, -inf entries", fwd_masked_softmax, NULL, 2, in);
    free(x); free(mask);
}

/* inputs: 0 q (or the scores), 1 k, 2 v, 3 values, 4 key mask, 5 query mask;
   the output: context and weights side by side, so both pass gradients */
static av_tensor *fwd_attend(av_ctx *c, av_tensor **in, void *u) {
    const attend_case *k = (const attend_case *)u;
    av_tensor *mask = NULL, *w, *out, *both[2];
    const int *lengths = NULL;
    if (k->form == M_KEY || k->form == M_KEY_AND_LENGTHS) mask = in[4];
    if (k->form == M_KEY4) mask = av_key_padding_mask(c, case_lengths, k->B, k->Tk);
    if (k->form == M_QUERY) mask = in[5];
    if (k->form == M_LENGTHS || k->form == M_KEY_AND_LENGTHS) lengths = case_lengths;
    if (k->which == 0) out = av_attend(c, in[0], in[3], mask, lengths, &w);
    else if (k->which == 1) out = av_additive_attention(c, in[0], in[1], in[2], in[3], mask, lengths, &w);
    else out = av_dot_attention(c, in[0], in[1], in[3], mask, lengths, &w);
    both[0] = out;
    both[1] = w;
    return av_concat(c, both, 2, 2);
}

static void gradcheck_attend(void) {
    int which, form;
    for (which = 0; which < 3; which++)
        for (form = 0; form < M_COUNT; form++) {
            attend_case k = {3, 4, 6, 5, 3, 0, 0};
            float *q = rnd(k.B * k.Tq * (which ? k.A : k.Tk), -1, 1), *kk = rnd(k.B * k.Tk * k.A, -1, 1), *v = rnd(k.A, -1, 1);
            float *values = rnd(k.B * k.Tk * k.Dv, -1, 1), *key_mask, *query_mask;
            gc_input in[6];
            char what[160];
            k.form = form;
            k.which = which;
            make_masks(&k, &key_mask, &query_mask);
            in[0] = which ? gc_in(q, 1, 3, k.B, k.Tq, k.A) : gc_in(q, 1, 3, k.B, k.Tq, k.Tk);
            in[1] = gc_in(kk, which != 0, 3, k.B, k.Tk, k.A);
            in[2] = gc_in(v, which == 1, 1, k.A);
            in[3] = gc_in(values, 1, 3, k.B, k.Tk, k.Dv);
            in[4] = gc_in(key_mask, 0, 2, k.B, k.Tk);
            in[5] = gc_in(query_mask, 0, 3, k.B, k.Tq, k.Tk);
            snprintf(what, sizeof what, "%s, %s", which == 0 ? "av_attend" : which == 1 ? "av_additive_attention" : "av_dot_attention",
                     mask_names[form]);
            gc_check(what, fwd_attend, &k, 6, in);
            free(q); free(kk); free(v); free(values); free(key_mask); free(query_mask);
        }
}

/* a learned mask gets its gradient too (through av_attend's add) */
static av_tensor *fwd_attend_learned_mask(av_ctx *c, av_tensor **in, void *u) {
    (void)u;
    return av_attend(c, in[0], in[1], in[2], NULL, NULL);
}

static void gradcheck_learned_mask(void) {
    float *s = rnd(2 * 3 * 4, -1, 1), *values = rnd(2 * 4 * 3, -1, 1), *mask = rnd(2 * 4, -1, 1);
    gc_input in[3];
    in[0] = gc_in(s, 1, 3, 2, 3, 4);
    in[1] = gc_in(values, 1, 3, 2, 4, 3);
    in[2] = gc_in(mask, 1, 2, 2, 4);
    gc_check("av_attend, a learned key mask [B, Tk]", fwd_attend_learned_mask, NULL, 3, in);
    in[2] = gc_in(mask, 1, 4, 2, 1, 1, 4);
    gc_check("av_attend, a learned key mask [B, 1, 1, Tk]", fwd_attend_learned_mask, NULL, 3, in);
    free(s); free(values); free(mask);
}

/* ---- the modules ---- */
static const char *const score_names[4] = {"additive (Bahdanau)", "Luong dot", "Luong general", "Luong concat"};

typedef struct mod_case { int score, B, Tq, Tk, Dq, Dk, A, form; } mod_case; /* form: M_NONE .. M_KEY_AND_LENGTHS, not M_QUERY */

/* The module's parameters in a fixed order (the gradcheck's too). */
static int mod_slots(av_attention *a, av_tensor **slot[5]) {
    int n = 0;
    if (a->score == AV_SCORE_ADDITIVE) {
        slot[n++] = &a->W1.weight; slot[n++] = &a->W1.bias;
        slot[n++] = &a->W2.weight; slot[n++] = &a->W2.bias;
    }
    if (a->score == AV_SCORE_GENERAL || a->score == AV_SCORE_CONCAT) { slot[n++] = &a->W.weight; slot[n++] = &a->W.bias; }
    if (a->score == AV_SCORE_ADDITIVE || a->score == AV_SCORE_CONCAT) slot[n++] = &a->v.weight;
    return n;
}

/* masked scores [B, Tq, Tk] in double, straight from the parameters */
static void ref_module_scores(const mod_case *k, const av_attention *a, const float *q, const float *h, const float *key_mask,
                              const int *lengths, double *s) {
    int B = k->B, Tq = k->Tq, Tk = k->Tk, Dq = k->Dq, Dk = k->Dk, A = k->A, b, i, j, e;
    double *kp = (double *)malloc(sizeof(double) * (size_t)(B * Tk * (Dq > A ? Dq : A) + 1));
    double *qp = (double *)malloc(sizeof(double) * (size_t)(B * Tq * (A ? A : 1) + 1));
    if (k->score == AV_SCORE_DOT) ref_dot(B, Tq, Tk, Dq, q, h, s);
    if (k->score == AV_SCORE_GENERAL) { /* h_dec . (W h_enc + b) */
        ref_linear(B * Tk, Dk, Dq, h, a->W.weight->data, Dk, 0, a->W.bias->data, kp);
        for (b = 0; b < B; b++)
            for (i = 0; i < Tq; i++)
                for (j = 0; j < Tk; j++) {
                    double acc = 0;
                    for (e = 0; e < Dq; e++) acc += q[((size_t)b * Tq + i) * Dq + e] * kp[((size_t)b * Tk + j) * Dq + e];
                    s[((size_t)b * Tq + i) * Tk + j] = acc;
                }
    }
    if (k->score == AV_SCORE_ADDITIVE) { /* v . tanh(W1 h_enc + b1 + W2 h_dec + b2) */
        ref_linear(B * Tk, Dk, A, h, a->W1.weight->data, Dk, 0, a->W1.bias->data, kp);
        ref_linear(B * Tq, Dq, A, q, a->W2.weight->data, Dq, 0, a->W2.bias->data, qp);
        ref_additive(B, Tq, Tk, A, qp, kp, a->v.weight->data, s);
    }
    if (k->score == AV_SCORE_CONCAT) { /* v . tanh(W [h_dec; h_enc] + b) */
        ref_linear(B * Tk, Dk, A, h, a->W.weight->data, Dq + Dk, Dq, a->W.bias->data, kp);
        ref_linear(B * Tq, Dq, A, q, a->W.weight->data, Dq + Dk, 0, NULL, qp);
        ref_additive(B, Tq, Tk, A, qp, kp, a->v.weight->data, s);
    }
    ref_mask(B, Tq, Tk, key_mask, NULL, lengths, s);
    free(kp);
    free(qp);
}

static void mod_masks(av_ctx *c, const mod_case *k, av_tensor *key_mask, av_tensor **mask, const int **lengths) {
    *mask = k->form == M_KEY || k->form == M_KEY_AND_LENGTHS ? key_mask
            : k->form == M_KEY4 ? av_key_padding_mask(c, case_lengths, k->B, k->Tk) : NULL;
    *lengths = k->form == M_LENGTHS || k->form == M_KEY_AND_LENGTHS ? case_lengths : NULL;
}

static mod_case mod_case_of(int score, int form) {
    mod_case k;
    k.score = score; k.B = 3; k.Tq = 4; k.Tk = 6; k.Dq = 5; k.Dk = score == AV_SCORE_DOT ? 5 : 7; k.form = form;
    k.A = score == AV_SCORE_ADDITIVE || score == AV_SCORE_CONCAT ? 6 : 0;
    return k;
}

/* Against the reference, all steps at once and step by step. */
static void module_values(void) {
    int score, form;
    for (score = AV_SCORE_ADDITIVE; score <= AV_SCORE_CONCAT; score++)
        for (form = 0; form < M_COUNT; form++) {
            mod_case k = mod_case_of(score, form);
            av_model *m = av_model_new(11 + score);
            av_attention a = av_attention_new(m, "attn", score, k.Dq, k.Dk, k.A, 1);
            int n_s = k.B * k.Tq * k.Tk, n_c = k.B * k.Tq * k.Dk, t, b;
            float *q = rnd(k.B * k.Tq * k.Dq, -1, 1), *h = rnd(k.B * k.Tk * k.Dk, -1, 1), *km = rnd(k.B * k.Tk, -1, 1), key4[3 * 6];
            double *s = (double *)malloc(sizeof(double) * (size_t)n_s), *w = (double *)malloc(sizeof(double) * (size_t)n_s);
            double *ctx = (double *)malloc(sizeof(double) * (size_t)n_c);
            av_ctx *c = av_ctx_new();
            av_tensor *mask, *tq, *out, *wt;
            av_attn_memory mem;
            const int *lengths;
            char what[160];
            if (form == M_QUERY) goto next; /* a memory's masks are per key */
            km[2] = -INFINITY;
            tq = av_from(c, q, 3, k.B, k.Tq, k.Dq);
            mod_masks(c, &k, av_from(c, km, 2, k.B, k.Tk), &mask, &lengths);
            if (form == M_KEY4) memcpy(key4, mask->data, sizeof key4);
            ref_module_scores(&k, &a, q, h, form == M_KEY4 ? key4 : mask ? km : NULL, lengths, s);
            ref_attend(k.B, k.Tq, k.Tk, k.Dk, s, h, w, ctx);
            mem = av_attention_memory(c, &a, av_from(c, h, 3, k.B, k.Tk, k.Dk), mask, lengths);
            out = av_attention_forward(c, &a, &mem, tq, &wt);
            snprintf(what, sizeof what, "%s, %s", score_names[score], mask_names[form]);
            check_close_d(what, out->data, ctx, n_c, 1e-5);
            check_close_d(what, wt->data, w, n_s, 1e-5);
            if (lengths) CHECK(all_zero(out->data + k.Tq * k.Dk, k.Tq * k.Dk), "%s: length 0 gives a zero context", what);
            /* a decoder stepping: query [B, Dq] at each step */
            for (t = 0; t < k.Tq; t++) {
                float step[3 * 5];
                av_tensor *o1, *w1, *s1;
                for (b = 0; b < k.B; b++) memcpy(step + b * k.Dq, q + ((size_t)b * k.Tq + t) * k.Dq, sizeof(float) * (size_t)k.Dq);
                o1 = av_attention_forward(c, &a, &mem, av_from(c, step, 2, k.B, k.Dq), &w1);
                s1 = av_attention_scores(c, &a, &mem, av_from(c, step, 2, k.B, k.Dq));
                CHECK(o1->ndim == 2 && o1->shape[0] == k.B && o1->shape[1] == k.Dk && w1->ndim == 2 && w1->shape[1] == k.Tk &&
                      s1->ndim == 2 && s1->shape[1] == k.Tk, "%s: step shapes", what);
                for (b = 0; b < k.B; b++) {
                    char sw[200];
                    double want_c[7], want_w[6], want_s[6];
                    int d;
                    for (d = 0; d < k.Dk; d++) want_c[d] = ctx[((size_t)b * k.Tq + t) * k.Dk + d];
                    for (d = 0; d < k.Tk; d++) {
                        want_w[d] = w[((size_t)b * k.Tq + t) * k.Tk + d];
                        want_s[d] = s[((size_t)b * k.Tq + t) * k.Tk + d];
                    }
                    snprintf(sw, sizeof sw, "%s, step %d, batch %d", what, t, b);
                    check_close_d(sw, o1->data + b * k.Dk, want_c, k.Dk, 1e-5);
                    check_close_d(sw, w1->data + b * k.Tk, want_w, k.Tk, 1e-5);
                    for (d = 0; d < k.Tk; d++) /* the scores: -inf exactly where masked */
                        if (want_s[d] == -INFINITY) CHECK(s1->data[b * k.Tk + d] == -INFINITY, "%s: score %d not -inf", sw, d);
                        else CHECK_CLOSE(s1->data[b * k.Tk + d], want_s[d], 1e-5, 1e-5, sw);
                }
            }
        next:
            av_ctx_free(c);
            av_model_free(m);
            free(q); free(h); free(km); free(s); free(w); free(ctx);
        }
}

/* inputs: 0 query, 1 values, 2 key mask, 3.. the parameters (mod_slots order) */
static av_tensor *fwd_module(av_ctx *c, av_tensor **in, void *u) {
    const mod_case *k = (const mod_case *)u;
    av_attention a;
    av_tensor **slot[5], *mask, *w, *both[2];
    const int *lengths;
    av_attn_memory mem;
    int n, i;
    memset(&a, 0, sizeof a);
    a.score = k->score; a.query_dim = k->Dq; a.key_dim = k->Dk; a.attn_dim = k->A;
    n = mod_slots(&a, slot);
    for (i = 0; i < n; i++) *slot[i] = in[3 + i];
    mod_masks(c, k, in[2], &mask, &lengths);
    mem = av_attention_memory(c, &a, in[1], mask, lengths);
    both[0] = av_attention_forward(c, &a, &mem, in[0], &w);
    both[1] = w;
    return av_concat(c, both, 2, in[0]->ndim - 1);
}

static void gradcheck_modules(void) {
    int score, form, query2d;
    for (score = AV_SCORE_ADDITIVE; score <= AV_SCORE_CONCAT; score++)
        for (form = 0; form < M_COUNT; form++)
            for (query2d = 0; query2d < 2; query2d++) {
                mod_case k = mod_case_of(score, form);
                av_model *m = av_model_new(3);
                av_attention a = av_attention_new(m, "attn", score, k.Dq, k.Dk, k.A, 1);
                av_tensor **slot[5];
                float *q = rnd(k.B * k.Tq * k.Dq, -1, 1), *h = rnd(k.B * k.Tk * k.Dk, -1, 1), *km = rnd(k.B * k.Tk, -1, 1);
                gc_input in[8];
                int n = mod_slots(&a, slot), i;
                char what[160];
                if (form == M_QUERY || (query2d && form != M_KEY_AND_LENGTHS)) goto next;
                km[2] = -INFINITY;
                in[0] = query2d ? gc_in(q, 1, 2, k.B, k.Dq) : gc_in(q, 1, 3, k.B, k.Tq, k.Dq);
                in[1] = gc_in(h, 1, 3, k.B, k.Tk, k.Dk);
                in[2] = gc_in(km, 0, 2, k.B, k.Tk);
                for (i = 0; i < n; i++) {
                    av_tensor *p = *slot[i];
                    in[3 + i] = p->ndim == 1 ? gc_in(p->data, 1, 1, p->shape[0]) : gc_in(p->data, 1, 2, p->shape[0], p->shape[1]);
                }
                snprintf(what, sizeof what, "module %s, %s%s", score_names[score], mask_names[form], query2d ? ", one step" : "");
                gc_check(what, fwd_module, &k, 3 + n, in);
            next:
                av_model_free(m);
                free(q); free(h); free(km);
            }
}

/* names, shapes and PyTorch's nn.Linear initialisation */
static void module_names(void) {
    av_model *m = av_model_new(1);
    av_tensor *t;
    double bound;
    int i, ok = 1;
    av_attention_new(m, "bahdanau", AV_SCORE_ADDITIVE, 12, 10, 8, 1);
    av_attention_new(m, "general", AV_SCORE_GENERAL, 12, 10, 0, 0);
    av_attention_new(m, "concat", AV_SCORE_CONCAT, 12, 10, 8, 1);
    av_attention_new(m, "dot", AV_SCORE_DOT, 10, 10, 0, 1);
    av_attn_pool_new(m, "pool", 10, 4);
#define HAS(name, d0, d1)                                                                                           \
    t = av_model_find(m, name);                                                                                     \
    CHECK(t && (d1 ? t->ndim == 2 && t->shape[1] == d1 : t->ndim == 1) && t->shape[0] == d0, "%s [%d,%d]", name, d0, d1);
    HAS("bahdanau.W1.weight", 8, 10) HAS("bahdanau.W1.bias", 8, 0) HAS("bahdanau.W2.weight", 8, 12)
    HAS("bahdanau.W2.bias", 8, 0) HAS("bahdanau.v.weight", 1, 8)
    HAS("general.W.weight", 12, 10)
    HAS("concat.W.weight", 8, 22) HAS("concat.W.bias", 8, 0) HAS("concat.v.weight", 1, 8)
    HAS("pool.W.weight", 4, 10) HAS("pool.W.bias", 4, 0) HAS("pool.v.weight", 1, 4)
#undef HAS
    CHECK(!av_model_find(m, "bahdanau.v.bias") && !av_model_find(m, "general.W.bias") && !av_model_find(m, "pool.v.bias"),
          "no v bias; bias 0 means none");
    CHECK(av_model_count(m) == 12, "%d parameters (5 + 1 + 3 + 3: the dot score has none), want 12", av_model_count(m));
    t = av_model_find(m, "concat.W.weight"); /* nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in 22 */
    bound = 1.0 / sqrt(22.0);
    for (i = 0; i < t->size; i++) ok &= fabs(t->data[i]) <= bound;
    CHECK(ok, "concat.W.weight within nn.Linear's bound %g", bound);
    av_model_free(m);
}

/* ---- attention pooling ---- */
static void ref_pool(int B, int T, int D, int A, const float *h, const float *W, const float *bW, const float *v,
                     const int *lengths, double *w, double *pooled) {
    double *u = (double *)malloc(sizeof(double) * (size_t)(B * T * A)), *s = (double *)malloc(sizeof(double) * (size_t)(B * T));
    int b, t, a, d;
    ref_linear(B * T, D, A, h, W, D, 0, bW, u);
    for (b = 0; b < B; b++)
        for (t = 0; t < T; t++) {
            double acc = 0;
            for (a = 0; a < A; a++) acc += v[a] * tanh(u[((size_t)b * T + t) * A + a]);
            s[b * T + t] = acc;
        }
    for (b = 0; b < B; b++) {
        ref_softmax_row(s + b * T, lengths ? lengths[b] : T, T, w + b * T);
        for (d = 0; d < D; d++) {
            double acc = 0;
            for (t = 0; t < T; t++) acc += w[b * T + t] * h[((size_t)b * T + t) * D + d];
            pooled[b * D + d] = acc;
        }
    }
    free(u);
    free(s);
}

static av_tensor *fwd_pool(av_ctx *c, av_tensor **in, void *u) {
    av_attn_pool p;
    av_tensor *w, *both[2];
    p.W.weight = in[1]; p.W.bias = in[2]; p.v.weight = in[3]; p.v.bias = NULL;
    both[0] = av_attn_pool_forward(c, &p, in[0], (const int *)u, &w);
    both[1] = w;
    return av_concat(c, both, 2, 1);
}

static void pool_tests(void) {
    enum { B = 3, T = 6, D = 5, A = 4 };
    static const int lengths[B] = {6, 3, 0};
    av_model *m = av_model_new(2);
    av_attn_pool p = av_attn_pool_new(m, "pool", D, A);
    float *h = rnd(B * T * D, -1, 1);
    double w[B * T], pooled[B * D];
    av_ctx *c = av_ctx_new();
    av_tensor *out, *wt;
    gc_input in[4];
    int with;
    for (with = 0; with < 2; with++) {
        const int *len = with ? lengths : NULL;
        ref_pool(B, T, D, A, h, p.W.weight->data, p.W.bias->data, p.v.weight->data, len, w, pooled);
        out = av_attn_pool_forward(c, &p, av_from(c, h, 3, B, T, D), len, &wt);
        CHECK(out->ndim == 2 && out->shape[0] == B && out->shape[1] == D && wt->ndim == 2 && wt->shape[1] == T, "pool shapes");
        check_close_d(with ? "attention pooling, lengths" : "attention pooling", out->data, pooled, B * D, 1e-5);
        check_close_d(with ? "attention pooling weights, lengths" : "attention pooling weights", wt->data, w, B * T, 1e-5);
    }
    CHECK(all_zero(out->data + 2 * D, D) && all_zero(wt->data + 2 * T, T), "pooling over length 0 gives zeros");
    in[0] = gc_in(h, 1, 3, B, T, D);
    in[1] = gc_in(p.W.weight->data, 1, 2, A, D);
    in[2] = gc_in(p.W.bias->data, 1, 1, A);
    in[3] = gc_in(p.v.weight->data, 1, 2, 1, A);
    gc_check("attention pooling, lengths (one 0)", fwd_pool, (void *)lengths, 4, in);
    gc_check("attention pooling, no lengths", fwd_pool, NULL, 4, in);
    av_ctx_free(c);
    av_model_free(m);
    free(h);
}

/* ---- hard attention ---- */
static void argmax_tests(void) {
    enum { R = 4, K = 5, Dv = 3 };
    float x[R * K], r_data[R * Dv];
    int idx[R], want[R], i, j, ok = 1;
    av_ctx *c = av_ctx_new();
    av_tensor *logits, *values, *sel, *ctx, *r;
    gc_fill(x, R * K, -2, 2);
    x[K + 1] = x[K + 3] = 3.0f;                        /* a tie: the first wins */
    for (j = 0; j < K; j++) x[2 * K + j] = -INFINITY;   /* nothing to select */
    for (j = 0; j < K; j++) x[3 * K + j] = j == 4 ? -7.0f : -INFINITY;
    for (i = 0; i < R; i++) {
        float best = -INFINITY;
        want[i] = -1;
        for (j = 0; j < K; j++)
            if (x[i * K + j] > best) { best = x[i * K + j]; want[i] = j; }
    }
    logits = av_from(c, x, 2, R, K);
    values = av_rand(c, -1, 1, 2, K, Dv);
    av_requires_grad(c, logits);
    av_requires_grad(c, values);
    sel = av_argmax_onehot(c, logits, idx);
    for (i = 0; i < R; i++) {
        ok &= idx[i] == want[i];
        for (j = 0; j < K; j++) ok &= sel->data[i * K + j] == (j == want[i] ? 1.0f : 0.0f);
    }
    CHECK(ok && want[1] == 1 && want[2] == -1 && want[3] == 4, "argmax: index and one-hot (tie, empty row, one key)");
    CHECK(!sel->requires_grad, "argmax selection is a constant");
    /* the values get their gradient through the product, the logits none */
    ctx = av_matmul(c, sel, values, 0, 0);
    gc_fill(r_data, R * Dv, -1, 1);
    r = av_from(c, r_data, 2, R, Dv);
    av_backward(c, av_sum_all(c, av_mul(c, ctx, r)));
    CHECK(logits->grad == NULL, "argmax passes no gradient to the logits");
    for (j = 0, ok = 1; j < K; j++) {
        int d;
        for (d = 0; d < Dv; d++) {
            float want_g = 0;
            for (i = 0; i < R; i++) want_g += want[i] == j ? r_data[i * Dv + d] : 0.0f;
            ok &= values->grad && fabsf(values->grad[j * Dv + d] - want_g) < 1e-6f;
        }
    }
    CHECK(ok, "the selected values get the context's gradient");
    sel = av_categorical_sample(c, logits, NULL);
    CHECK(!sel->requires_grad, "a categorical sample is a constant");
    av_ctx_free(c);
}

/* Upper tail of chi-square with an even number df of degrees of freedom:
   exp(-x/2) sum_{i < df/2} (x/2)^i / i! */
static double chi2_sf_even(double x, int df) {
    double term = 1, sum = 0;
    int i;
    for (i = 0; i < df / 2; i++) {
        sum += term;
        term *= x / 2 / (i + 1);
    }
    return exp(-x / 2) * sum;
}

static double chi2_stat(const long *count, const double *p, int K, long N) {
    double x2 = 0;
    int j;
    for (j = 0; j < K; j++)
        if (p[j] > 0) x2 += (count[j] - N * p[j]) * (count[j] - N * p[j]) / (N * p[j]);
    return x2;
}

static void softmax_d(const double *x, int K, double *p) { ref_softmax_row(x, K, K, p); }

/* Draws from av_categorical_sample and the hard Gumbel-softmax at several
   temperatures: frequencies match softmax(logits) (chi-square, 4 degrees
   of freedom), never a masked key; the same test rejects softmax(logits /
   tau), so it can tell. */
static void sampler_frequencies(void) {
    enum { K = 6 };
    static const double theta[K] = {0.3, -1.0, 1.1, -INFINITY, 0.0, 0.6};
    static const float taus[4] = {0, 0.5f, 1.0f, 2.5f}; /* 0: av_categorical_sample */
    long N = quick ? 20000 : 200000, count[K];
    double p[K], p_tau[K], scaled[K];
    float *x = (float *)malloc(sizeof(float) * (size_t)(N * K));
    int *idx = (int *)malloc(sizeof(int) * (size_t)N), s, j;
    long r;
    av_ctx *c = av_ctx_new();
    softmax_d(theta, K, p);
    for (r = 0; r < N * K; r++) x[r] = (float)theta[r % K];
    for (s = 0; s < 4; s++) {
        av_tensor *sel;
        double x2, pv;
        int ok = 1;
        av_ctx_reset(c);
        av_ctx_seed(c, 1000 + (uint64_t)s);
        sel = taus[s] == 0 ? av_categorical_sample(c, av_wrap(c, x, 2, (int)N, K), idx)
                           : av_gumbel_softmax(c, av_wrap(c, x, 2, (int)N, K), taus[s], 1, idx);
        memset(count, 0, sizeof count);
        for (r = 0; r < N; r++) {
            count[idx[r]]++;
            for (j = 0; j < K; j++) ok &= sel->data[r * K + j] == (j == idx[r] ? 1.0f : 0.0f);
        }
        CHECK(ok, "sampler %d: the one-hot agrees with the indices", s);
        CHECK(count[3] == 0, "sampler %d: the masked key was drawn %ld times", s, count[3]);
        x2 = chi2_stat(count, p, K, N);
        pv = chi2_sf_even(x2, 4);
        CHECK(pv > 1e-4, "%s tau %g: %ld draws against softmax: chi-square %.2f, p-value %.2g", taus[s] == 0 ? "categorical" : "gumbel hard",
              (double)taus[s], N, x2, pv);
        if (taus[s] != 0 && taus[s] != 1) { /* power: the wrong distribution is rejected */
            for (j = 0; j < K; j++) scaled[j] = theta[j] / taus[s];
            softmax_d(scaled, K, p_tau);
            x2 = chi2_stat(count, p_tau, K, N);
            CHECK(chi2_sf_even(x2, 4) < 1e-6, "tau %g: softmax(logits/tau) not rejected (chi-square %.2f)", (double)taus[s], x2);
        }
    }
    av_ctx_free(c);
    free(x);
    free(idx);
}

/* The soft sample against softmax((x + g)/tau) in double, g rebuilt from
   the documented Philox draws (stream offset 0 after seeding); the straight-through forward is the
   one-hot of its argmax and its backward is the soft sample's, bit for bit. */
static void gumbel_soft_and_straight_through(void) {
    enum { R = 5, K = 7 };
    float x[R * K], rr[R * K];
    double ref[R * K], z[K];
    int idx_soft[R], idx_hard[R], i, j, ok = 1;
    float tau = 0.7f;
    av_ctx *c1 = av_ctx_new(), *c2 = av_ctx_new();
    av_tensor *x1, *x2, *soft, *hard;
    gc_fill(x, R * K, -2, 2);
    gc_fill(rr, R * K, -1, 1);
    x[3] = -INFINITY;
    for (j = 0; j < K; j++) x[2 * K + j] = -INFINITY; /* row 2 selects nothing */
    av_ctx_seed(c1, 77);
    av_ctx_seed(c2, 77);
    x1 = av_from(c1, x, 2, R, K);
    x2 = av_from(c2, x, 2, R, K);
    av_requires_grad(c1, x1);
    av_requires_grad(c2, x2);
    soft = av_gumbel_softmax(c1, x1, tau, 0, idx_soft);
    hard = av_gumbel_softmax(c2, x2, tau, 1, idx_hard);
    for (i = 0; i < R; i++) {
        for (j = 0; j < K; j++) {
            double u = ref_uniform(77, 0, (uint64_t)(i * K + j)) + 0.5 / 16777216.0;
            z[j] = (x[i * K + j] - log(-log(u))) / tau;
        }
        ref_softmax_row(z, K, K, ref + i * K);
    }
    check_close_d("gumbel-softmax soft sample", soft->data, ref, R * K, 1e-5);
    for (i = 0; i < R; i++) {
        int best = -1;
        double bv = 0;
        for (j = 0; j < K; j++)
            if (ref[i * K + j] > bv) { bv = ref[i * K + j]; best = j; }
        ok &= idx_soft[i] == best && idx_hard[i] == best;
        for (j = 0; j < K; j++) ok &= hard->data[i * K + j] == (j == best ? 1.0f : 0.0f);
    }
    CHECK(ok && idx_hard[2] == -1, "straight-through forward: the one-hot of the soft sample's argmax");
    av_backward(c1, av_sum_all(c1, av_mul(c1, soft, av_from(c1, rr, 2, R, K))));
    av_backward(c2, av_sum_all(c2, av_mul(c2, hard, av_from(c2, rr, 2, R, K))));
    CHECK(memcmp(x1->grad, x2->grad, sizeof x) == 0, "straight-through backward equals the soft sample's gradient");
    CHECK(all_zero(x1->grad + 2 * K, K), "a row that selects nothing passes no gradient");
    av_ctx_free(c1);
    av_ctx_free(c2);
}

typedef struct gumbel_case { float tau; } gumbel_case;
static av_tensor *fwd_gumbel(av_ctx *c, av_tensor **in, void *u) {
    return av_gumbel_softmax(c, av_add(c, in[0], in[1]), ((const gumbel_case *)u)->tau, 0, NULL);
}

static const int lp_index[4] = {1, 4, -1, 0};
static av_tensor *fwd_log_prob(av_ctx *c, av_tensor **in, void *u) {
    (void)u;
    return av_categorical_log_prob(c, av_add(c, in[0], in[1]), lp_index);
}

typedef struct reinforce_case { const float *cost; float baseline; } reinforce_case;
static av_tensor *fwd_reinforce(av_ctx *c, av_tensor **in, void *u) {
    const reinforce_case *k = (const reinforce_case *)u;
    return av_reinforce_loss(c, in[0], k->cost, k->baseline);
}

static void gradcheck_hard(void) {
    float x[4 * 5], mask[4 * 5], lp[6], cost[6];
    double want_lp[4], want_loss = 0;
    gc_input in[2];
    gumbel_case g;
    reinforce_case rc;
    av_ctx *c = av_ctx_new();
    av_tensor *t;
    int i, j;
    gc_fill(x, 20, -2, 2);
    gc_fill(mask, 20, -1, 1);
    mask[2] = -INFINITY;
    for (j = 0; j < 5; j++) mask[10 + j] = -INFINITY; /* row 2: nothing visible */
    in[0] = gc_in(x, 1, 2, 4, 5);
    in[1] = gc_in(mask, 0, 2, 4, 5);
    for (i = 0; i < 3; i++) {
        char what[64];
        static const float taus[3] = {0.5f, 1.0f, 2.0f};
        g.tau = taus[i];
        snprintf(what, sizeof what, "gumbel-softmax soft, tau %g", (double)g.tau);
        gc_check(what, fwd_gumbel, &g, 2, in);
    }
    /* log-probabilities: values, then gradients */
    for (i = 0; i < 4; i++) {
        double mx = -INFINITY, sum = 0;
        for (j = 0; j < 5; j++) mx = (double)x[i * 5 + j] + mask[i * 5 + j] > mx ? (double)x[i * 5 + j] + mask[i * 5 + j] : mx;
        for (j = 0; j < 5; j++) sum += exp((double)x[i * 5 + j] + mask[i * 5 + j] - mx);
        want_lp[i] = lp_index[i] < 0 ? 0 : (double)x[i * 5 + lp_index[i]] + mask[i * 5 + lp_index[i]] - mx - log(sum);
    }
    t = av_categorical_log_prob(c, av_add(c, av_from(c, x, 2, 4, 5), av_from(c, mask, 2, 4, 5)), lp_index);
    CHECK(t->ndim == 1 && t->shape[0] == 4, "log_prob shape [rows]");
    check_close_d("categorical log-probabilities", t->data, want_lp, 4, 1e-6);
    gc_check("categorical log_prob (a masked key, an empty row)", fwd_log_prob, NULL, 2, in);
    /* the REINFORCE surrogate: value and gradient */
    gc_fill(lp, 6, -3, 0);
    gc_fill(cost, 6, 0, 5);
    rc.cost = cost;
    rc.baseline = 2.0f;
    for (i = 0; i < 6; i++) want_loss += ((double)cost[i] - 2.0) * lp[i] / 6;
    t = av_reinforce_loss(c, av_from(c, lp, 2, 2, 3), cost, 2.0f);
    CHECK(t->ndim == 0, "reinforce loss is a scalar");
    CHECK_CLOSE(av_item(t), want_loss, 1e-6, 1e-6, "reinforce loss value");
    in[0] = gc_in(lp, 1, 2, 2, 3);
    gc_check("reinforce loss", fwd_reinforce, &rc, 1, in);
    av_ctx_free(c);
}

static void baseline_tests(void) {
    static const float b1[3] = {1, 2, 3}, b2[1] = {4}, b3[2] = {0, 0};
    av_baseline b = av_baseline_new(0.75);
    CHECK(b.value == 0 && b.count == 0, "a new baseline is 0");
    av_baseline_update(&b, b1, 3);
    CHECK_CLOSE(b.value, 2.0, 1e-12, 0, "the first batch's mean");
    av_baseline_update(&b, b2, 1);
    CHECK_CLOSE(b.value, 0.75 * 2 + 0.25 * 4, 1e-12, 0, "moving average, step 2");
    av_baseline_update(&b, b3, 2);
    CHECK_CLOSE(b.value, 0.75 * 2.5, 1e-12, 0, "moving average, step 3");
    av_baseline_update(&b, b3, 0);
    CHECK(b.count == 3 && b.value == 0.75 * 2.5, "an empty batch changes nothing");
}

/* ---- REINFORCE against the exact gradient ----
   d/dθ E_{k ~ softmax(θ)}[f_k] = p (f - E f) exactly. Each row of a [N, K]
   leaf holding θ gets one single-sample estimate (times 1/N from the mean
   in av_reinforce_loss); their mean must match within 4 standard errors. */
enum { RK = 4 };
static const double r_theta[RK] = {0.5, -0.3, 1.2, 0.0};
static const double r_f[RK] = {13.0, 11.0, 8.0, 10.5}; /* an offset of 10: the baseline matters */

/* mean and variance per component of N single-sample estimates;
   estimator 0: REINFORCE with baseline b, 1: straight-through Gumbel (tau 1) */
static void estimate(av_ctx *c, int N, int estimator, float b, uint64_t seed, double *mean, double *var) {
    float *x = (float *)malloc(sizeof(float) * (size_t)(N * RK)), *cost = (float *)malloc(sizeof(float) * (size_t)N);
    float f[RK];
    int *idx = (int *)malloc(sizeof(int) * (size_t)N), r, j;
    av_tensor *logits, *loss;
    av_ctx_reset(c);
    av_ctx_seed(c, seed);
    for (r = 0; r < N * RK; r++) x[r] = (float)r_theta[r % RK];
    for (j = 0; j < RK; j++) f[j] = (float)r_f[j];
    logits = av_from(c, x, 2, N, RK);
    av_requires_grad(c, logits);
    if (estimator == 0) {
        av_categorical_sample(c, logits, idx);
        for (r = 0; r < N; r++) cost[r] = f[idx[r]];
        loss = av_reinforce_loss(c, av_categorical_log_prob(c, logits, idx), cost, b);
    } else { /* the cost f . y of the straight-through sample, averaged */
        av_tensor *y = av_gumbel_softmax(c, logits, 1.0f, 1, NULL);
        loss = av_scale(c, av_sum_all(c, av_mul(c, y, av_from(c, f, 1, RK))), 1.0f / (float)N);
    }
    av_backward(c, loss);
    for (j = 0; j < RK; j++) {
        double s = 0, ss = 0;
        for (r = 0; r < N; r++) {
            double e = (double)logits->grad[r * RK + j] * N;
            s += e;
            ss += e * e;
        }
        mean[j] = s / N;
        var[j] = (ss - s * s / N) / (N - 1);
    }
    free(x); free(cost); free(idx);
}

static void reinforce_unbiased(void) {
    int N = quick ? 20000 : 100000, j, within = 1, within_b = 1;
    double p[RK], ef = 0, exact[RK], m0[RK], v0[RK], m1[RK], v1[RK], m2[RK], v2[RK], sum_v0 = 0, sum_v1 = 0, worst_st = 0;
    double biggest = 0, worst_se = 0;
    av_baseline bl = av_baseline_new(0.5);
    av_ctx *c = av_ctx_new();
    int batch;
    softmax_d(r_theta, RK, p);
    for (j = 0; j < RK; j++) ef += p[j] * r_f[j];
    for (j = 0; j < RK; j++) {
        exact[j] = p[j] * (r_f[j] - ef);
        biggest = fabs(exact[j]) > biggest ? fabs(exact[j]) : biggest;
    }
    /* without a baseline */
    estimate(c, N, 0, 0.0f, 21, m0, v0);
    for (j = 0; j < RK; j++) {
        double se = sqrt(v0[j] / N);
        within &= fabs(m0[j] - exact[j]) <= 4 * se;
        worst_se = se > worst_se ? se : worst_se;
        sum_v0 += v0[j];
    }
    CHECK(within, "REINFORCE, no baseline: mean of %d estimates within 4 standard errors of p (f - Ef)", N);
    CHECK(4 * worst_se < 0.25 * biggest, "the check resolves a quarter of the gradient (4 SE = %.3g, gradient %.3g)",
          4 * worst_se, biggest);
    /* a moving-average baseline from earlier, independent batches */
    for (batch = 0; batch < 3; batch++) {
        float cost[1000];
        int idx[1000], r;
        float th[RK];
        av_tensor *t;
        av_ctx_reset(c);
        av_ctx_seed(c, 500 + (uint64_t)batch);
        for (j = 0; j < RK; j++) th[j] = (float)r_theta[j];
        t = av_zeros(c, 2, 1000, RK);
        for (r = 0; r < 1000 * RK; r++) t->data[r] = th[r % RK];
        av_categorical_sample(c, t, idx);
        for (r = 0; r < 1000; r++) cost[r] = (float)r_f[idx[r]];
        av_baseline_update(&bl, cost, 1000);
    }
    estimate(c, N, 0, (float)bl.value, 22, m1, v1);
    for (j = 0; j < RK; j++) {
        within_b &= fabs(m1[j] - exact[j]) <= 4 * sqrt(v1[j] / N);
        sum_v1 += v1[j];
    }
    CHECK(within_b, "REINFORCE with the baseline %.3f (E f = %.3f): still within 4 standard errors", bl.value, ef);
    CHECK(sum_v1 < 0.1 * sum_v0, "the baseline cuts the variance: %.3g against %.3g without", sum_v1, sum_v0);
    printf("info: REINFORCE variance per estimate %.3g without a baseline, %.3g with (baseline %.3f, E f %.3f)\n", sum_v0,
           sum_v1, bl.value, ef);
    /* straight-through Gumbel on the same problem: biased, and the same check sees it */
    estimate(c, N, 1, 0.0f, 23, m2, v2);
    for (j = 0; j < RK; j++) {
        double z = fabs(m2[j] - exact[j]) / sqrt(v2[j] / N);
        worst_st = z > worst_st ? z : worst_st;
    }
    CHECK(worst_st > 8, "straight-through Gumbel's bias shows: %.1f standard errors off", worst_st);
    printf("info: straight-through Gumbel (tau 1) mean gradient [%.3f %.3f %.3f %.3f], exact [%.3f %.3f %.3f %.3f]\n", m2[0],
           m2[1], m2[2], m2[3], exact[0], exact[1], exact[2], exact[3]);
    av_ctx_free(c);
}

/* Hard attention through the module, as a decoder step uses it: the
   argmax of the scores is the argmax of the soft weights, its context is
   that key's value (zeros for a query that sees nothing), and the
   straight-through selection trains the score's parameters with the soft
   sample's gradient. */
static void module_hard_attention(void) {
    enum { B = 3, Tk = 6, Dq = 5, Dk = 7, A = 4 };
    av_model *m = av_model_new(9);
    av_attention a = av_attention_new(m, "attn", AV_SCORE_ADDITIVE, Dq, Dk, A, 1);
    float *q = rnd(B * Dq, -1, 1), *h = rnd(B * Tk * Dk, -1, 1), *r = rnd(B * Dk, -1, 1), *grads[2][3];
    int idx[B], b, j, ok = 1, hard, p;
    av_ctx *c = av_ctx_new();
    av_attn_memory mem = av_attention_memory(c, &a, av_from(c, h, 3, B, Tk, Dk), NULL, case_lengths);
    av_tensor *w, *sel, *ctx, *params[3];
    params[0] = a.W1.weight; params[1] = a.W2.weight; params[2] = a.v.weight;
    av_attention_forward(c, &a, &mem, av_from(c, q, 2, B, Dq), &w);
    sel = av_argmax_onehot(c, av_attention_scores(c, &a, &mem, av_from(c, q, 2, B, Dq)), idx);
    ctx = av_attention_context(c, &mem, sel);
    for (b = 0; b < B; b++) {
        int best = -1;
        float bw = 0;
        for (j = 0; j < Tk; j++)
            if (w->data[b * Tk + j] > bw) { bw = w->data[b * Tk + j]; best = j; }
        ok &= idx[b] == best;
        for (j = 0; j < Dk; j++) ok &= ctx->data[b * Dk + j] == (best < 0 ? 0.0f : h[((size_t)b * Tk + best) * Dk + j]);
    }
    CHECK(ok && idx[1] == -1, "module argmax: the soft weights' argmax, its value as the context, nothing for length 0");
    for (hard = 0; hard < 2; hard++) {
        av_ctx_reset(c);
        av_ctx_seed(c, 31);
        av_model_zero_grad(m);
        mem = av_attention_memory(c, &a, av_from(c, h, 3, B, Tk, Dk), NULL, case_lengths);
        sel = av_gumbel_softmax(c, av_attention_scores(c, &a, &mem, av_from(c, q, 2, B, Dq)), 0.5f, hard, NULL);
        ctx = av_attention_context(c, &mem, sel);
        av_backward(c, av_sum_all(c, av_mul(c, ctx, av_from(c, r, 2, B, Dk))));
        for (p = 0; p < 3; p++) {
            grads[hard][p] = (float *)malloc(sizeof(float) * (size_t)params[p]->size);
            memcpy(grads[hard][p], params[p]->grad, sizeof(float) * (size_t)params[p]->size);
        }
    }
    for (p = 0; p < 3; p++) {
        CHECK(memcmp(grads[0][p], grads[1][p], sizeof(float) * (size_t)params[p]->size) == 0 && !all_zero(grads[1][p], params[p]->size),
              "module straight-through: parameter %d gets the soft sample's gradient", p);
        free(grads[0][p]);
        free(grads[1][p]);
    }
    av_ctx_free(c);
    av_model_free(m);
    free(q); free(h); free(r);
}

/* ---- errors name the op and the shapes ---- */
static void shape_errors(void) {
    av_ctx *c = av_ctx_new();
    av_model *m = av_model_new(1);
    av_attention bahdanau = av_attention_new(m, "b", AV_SCORE_ADDITIVE, 6, 5, 4, 1);
    av_attn_pool pool = av_attn_pool_new(m, "p", 5, 3);
    av_tensor *q = av_zeros(c, 3, 2, 3, 4), *k = av_zeros(c, 3, 2, 7, 4), *v = av_zeros(c, 1, 4), *vals = av_zeros(c, 3, 2, 7, 3);
    av_tensor *s = av_zeros(c, 3, 2, 3, 7), *w;
    av_attn_memory mem;
    static const int bad_len[2] = {3, 8}, bad_idx[2] = {0, 5}, ok_len[2] = {7, 7};
    int idx[2];
    EXPECT_FAIL("additive q k", av_additive_scores(c, q, av_zeros(c, 3, 2, 7, 5), v), "av_additive_scores", "[2,7,5]");
    EXPECT_FAIL("additive batch", av_additive_scores(c, q, av_zeros(c, 3, 3, 7, 4), v), "av_additive_scores", "[3,7,4]");
    EXPECT_FAIL("additive rank", av_additive_scores(c, av_zeros(c, 2, 3, 4), k, v), "av_additive_scores", "[3,4]");
    EXPECT_FAIL("additive v", av_additive_scores(c, q, k, av_zeros(c, 1, 5)), "av_additive_scores", "[5]");
    EXPECT_FAIL("additive v [2, A]", av_additive_scores(c, q, k, av_zeros(c, 2, 2, 4)), "av_additive_scores", "[2,4]");
    EXPECT_FAIL("masked softmax lengths", av_masked_softmax(c, s, bad_len), "av_masked_softmax", "8");
    EXPECT_FAIL("masked softmax lengths, 1-D", av_masked_softmax(c, av_zeros(c, 1, 4), ok_len), "av_masked_softmax", "[4]");
    EXPECT_FAIL("attend values", av_attend(c, s, av_zeros(c, 3, 2, 6, 3), NULL, NULL, &w), "av_attend", "[2,6,3]");
    EXPECT_FAIL("attend mask", av_attend(c, s, vals, av_zeros(c, 2, 2, 6), NULL, &w), "av_attend", "[2,6]");
    EXPECT_FAIL("attend mask [B,Tq,Tk]", av_attend(c, s, vals, av_zeros(c, 3, 2, 4, 7), NULL, &w), "av_attend", "[2,4,7]");
    EXPECT_FAIL("additive attention values", av_additive_attention(c, q, k, v, av_zeros(c, 3, 2, 8, 3), NULL, NULL, &w),
                "av_additive_attention", "[2,8,3]");
    EXPECT_FAIL("dot attention keys", av_dot_attention(c, q, av_zeros(c, 3, 2, 7, 5), vals, NULL, NULL, &w),
                "av_dot_attention", "[2,7,5]");
    EXPECT_FAIL("memory values", av_attention_memory(c, &bahdanau, av_zeros(c, 3, 2, 7, 4), NULL, NULL), "av_attention_memory",
                "[2,7,4]");
    EXPECT_FAIL("memory mask", av_attention_memory(c, &bahdanau, av_zeros(c, 3, 2, 7, 5), av_zeros(c, 2, 2, 6), NULL),
                "av_attention_memory", "[2,6]");
    mem = av_attention_memory(c, &bahdanau, av_zeros(c, 3, 2, 7, 5), NULL, NULL);
    EXPECT_FAIL("forward query width", av_attention_forward(c, &bahdanau, &mem, av_zeros(c, 2, 2, 5), &w), "av_attention_forward",
                "[2,5]");
    EXPECT_FAIL("forward query batch", av_attention_forward(c, &bahdanau, &mem, av_zeros(c, 3, 3, 1, 6), &w),
                "av_attention_forward", "[3,1,6]");
    EXPECT_FAIL("scores query", av_attention_scores(c, &bahdanau, &mem, av_zeros(c, 1, 6)), "av_attention_scores", "[6]");
    EXPECT_FAIL("context weights", av_attention_context(c, &mem, av_zeros(c, 2, 2, 6)), "av_attention_context", "[2,6]");
    EXPECT_FAIL("pool h", av_attn_pool_forward(c, &pool, av_zeros(c, 3, 2, 7, 4), NULL, &w), "av_attn_pool_forward", "[2,7,4]");
    EXPECT_FAIL("new dims", av_attention_new(m, "x", AV_SCORE_DOT, 6, 5, 0, 0), "av_attention_new", "6");
    EXPECT_FAIL("new attn_dim", av_attention_new(m, "x", AV_SCORE_CONCAT, 6, 5, 0, 0), "av_attention_new", "attn_dim 0");
    EXPECT_FAIL("new score", av_attention_new(m, "x", 9, 6, 5, 4, 0), "av_attention_new", "9");
    EXPECT_FAIL("gumbel tau", av_gumbel_softmax(c, s, 0.0f, 1, idx), "av_gumbel_softmax", "tau");
    EXPECT_FAIL("log_prob index", av_categorical_log_prob(c, av_zeros(c, 2, 2, 5), bad_idx), "av_categorical_log_prob", "index 5");
    EXPECT_FAIL("baseline decay", av_baseline_new(1.0), "av_baseline_new", "decay");
    av_model_free(m);
    av_ctx_free(c);
}

/* ---- threads: 1 and 2 give the same bits ---- */
static void threads_agree(void) {
#ifdef _OPENMP
    enum { B = 8, Tq = 16, Tk = 64, A = 96 };
    float *q = rnd(B * Tq * A, -1, 1), *k = rnd(B * Tk * A, -1, 1), *v = rnd(A, -1, 1), *r = rnd(B * Tq * Tk, -1, 1);
    float *res[2][4];
    int t, i, sizes[4] = {B * Tq * Tk, B * Tq * A, B * Tk * A, A};
    av_set_num_threads(2);
    CHECK(av__threads_for(3.0 * B * Tq * Tk * A, B * Tq) == 2 && av__threads_for(4.0 * B * Tq * Tk * A, B) == 2,
          "the sizes here run on 2 threads");
    for (t = 0; t < 2; t++) {
        av_ctx *c = av_ctx_new();
        av_tensor *tq = av_from(c, q, 3, B, Tq, A), *tk = av_from(c, k, 3, B, Tk, A), *tv = av_from(c, v, 1, A), *s, *all[4];
        av_set_num_threads(t + 1);
        av_requires_grad(c, tq); av_requires_grad(c, tk); av_requires_grad(c, tv);
        s = av_additive_scores(c, tq, tk, tv);
        av_backward(c, av_sum_all(c, av_mul(c, s, av_from(c, r, 3, B, Tq, Tk))));
        all[0] = s; all[1] = tq; all[2] = tk; all[3] = tv;
        for (i = 0; i < 4; i++) {
            res[t][i] = (float *)malloc(sizeof(float) * (size_t)sizes[i]);
            memcpy(res[t][i], i ? all[i]->grad : all[i]->data, sizeof(float) * (size_t)sizes[i]);
        }
        av_ctx_free(c);
    }
    for (i = 0; i < 4; i++) {
        static const char *const names[4] = {"scores", "dq", "dk", "dv"};
        CHECK(memcmp(res[0][i], res[1][i], sizeof(float) * (size_t)sizes[i]) == 0, "additive %s differ between 1 and 2 threads", names[i]);
        free(res[0][i]);
        free(res[1][i]);
    }
    av_set_num_threads(0);
    free(q); free(k); free(v); free(r);
#endif
}

int main(void) {
    int isa;
    quick = getenv("AV_TEST_QUICK") && atoi(getenv("AV_TEST_QUICK"));
    gc_seed(4242);
    for (isa = AV_ISA_SCALAR; isa <= AV_ISA_NEON; isa++) { /* values on every GEMM and vector-math path */
        if (!av_isa_supported(isa)) continue;
        av_set_isa(isa);
        printf("isa %s\n", av_isa_name(isa));
        additive_values();
        masked_softmax_values();
        attend_values();
        module_values();
    }
    av_set_isa(AV_ISA_AUTO);
    fused_vs_composed();
    gradcheck_additive();
    gradcheck_masked_softmax();
    gradcheck_attend();
    gradcheck_learned_mask();
    gradcheck_modules();
    module_names();
    pool_tests();
    argmax_tests();
    sampler_frequencies();
    gumbel_soft_and_straight_through();
    module_hard_attention();
    gradcheck_hard();
    baseline_tests();
    reinforce_unbiased();
    shape_errors();
    threads_agree();
    printf("info: worst gradcheck error %.2f of its tolerance (%s)\n", gc_worst_ratio, gc_worst_what);
    return t_summary();
}
