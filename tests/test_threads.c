/* test_threads.c - threads never change a result. Built with -fopenmp and
   run with OMP_NUM_THREADS=2 (make test does both).

   Every threaded op runs forward and backward on 1 and on 2 threads, on
   sizes above the thresholds where threads start (AV__PAR_MIN, checked
   here) and with ragged tails (sizes that are not multiples of the chunks,
   column blocks or Philox blocks); outputs and gradients must agree bit
   for bit. Then whole training runs, an MLP with dropout and a VAE, both
   with Adam, must end with bit-identical parameters on 1 and 2 threads. */
#include <stdlib.h>
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"

#ifdef _OPENMP
#include "gradcheck.h"

/* The work of the smallest case must reach the threaded loops. */
#define TH_MIN_SIZE (AV__PAR_MIN + 1)

/* Forward with every checked input requiring a gradient, then backward of
   sum(out * w) with fixed weights w of sizes 2^-20 to 2^20. Returns the
   output followed by the gradients, malloc'd; *len gets their count and
   *out_size the output's. */
static float *th_run(gc_fwd_fn fwd, void *user, int n_in, const gc_input *in, int threads, size_t *len, int *out_size) {
    av_ctx *c = av_ctx_new();
    av_tensor *x[GC_MAX_IN], *out, *w;
    float *res;
    size_t at;
    int i, k;
    av_set_num_threads(threads);
    av_ctx_seed(c, 77);
    for (i = 0; i < n_in; i++) {
        x[i] = gc_make(c, in[i].ndim, in[i].shape, in[i].data);
        if (in[i].check) av_requires_grad(c, x[i]);
    }
    out = fwd(c, x, user);
    w = av_zeros_shape(c, out->ndim, out->shape);
    for (k = 0; k < w->size; k++) w->data[k] = ldexpf(0.25f + (float)(k % 13) / 8.0f, k % 41 - 20); /* see th_fill_wide */
    av_backward(c, av_sum_all(c, av_mul(c, out, w)));
    *len = (size_t)out->size;
    *out_size = out->size;
    for (i = 0; i < n_in; i++) *len += in[i].check ? (size_t)x[i]->size : 0;
    res = (float *)malloc(*len * sizeof(float));
    memcpy(res, out->data, (size_t)out->size * sizeof(float));
    for (i = 0, at = (size_t)out->size; i < n_in; i++)
        if (in[i].check) {
            memcpy(res + at, x[i]->grad, (size_t)x[i]->size * sizeof(float));
            at += (size_t)x[i]->size;
        }
    av_set_num_threads(0);
    av_ctx_free(c);
    return res;
}

/* Values of all sizes, 2^-30 to 2^30 (sign, mantissa from gc_fill_distinct):
   double sums of them round, so sums added in another order differ. */
static void th_fill_wide(float *x, int n) {
    int i;
    gc_fill_distinct(x, n, -1, 1);
    for (i = 0; i < n; i++) x[i] = ldexpf(x[i], (int)(gc_u64() % 61) - 30);
}

/* Outputs and gradients on 1 and 2 threads: the same bits. */
static void th_same(const char *what, gc_fwd_fn fwd, void *user, int n_in, const gc_input *in) {
    size_t n1, n2, i, first = 0, differ = 0;
    int size1, size2, biggest;
    float *r1 = th_run(fwd, user, n_in, in, 1, &n1, &size1), *r2 = th_run(fwd, user, n_in, in, 2, &n2, &size2);
    for (i = 0, biggest = size1; i < (size_t)n_in; i++) biggest = gc_numel(&in[i]) > biggest ? gc_numel(&in[i]) : biggest;
    CHECK(biggest >= TH_MIN_SIZE, "%s: %d elements do not reach the threaded loops", what, biggest);
    for (i = 0; n1 == n2 && i < n1; i++)
        if (memcmp(r1 + i, r2 + i, sizeof(float))) first = differ++ ? first : i;
    CHECK(n1 == n2 && differ == 0, "%s: %lu of %lu values differ on 2 threads, first at %lu (%.9g vs %.9g)", what,
          (unsigned long)differ, (unsigned long)n1, (unsigned long)first, n1 ? r1[first] : 0.0, n2 ? r2[first] : 0.0);
    free(r1);
    free(r2);
}

/* ---- the ops ---- */
typedef struct { int op; float arg; } th_op;
enum { TH_SCALE, TH_ADD_SCALAR, TH_EXP, TH_LOG, TH_SQRT, TH_SQUARE, TH_TANH, TH_SIGMOID, TH_RELU, TH_LEAKY,
       TH_GELU, TH_SOFTPLUS, TH_DROPOUT, TH_ADD, TH_SUB, TH_MUL, TH_DIV, TH_N_OPS };
static const char *th_names[TH_N_OPS] = {"scale", "add_scalar", "exp", "log", "sqrt", "square", "tanh", "sigmoid",
                                          "relu", "leaky_relu", "gelu", "softplus", "dropout", "add", "sub", "mul", "div"};

static av_tensor *fwd_elementwise(av_ctx *c, av_tensor **in, void *u) {
    const th_op *o = (const th_op *)u;
    switch (o->op) {
    case TH_SCALE: return av_scale(c, in[0], o->arg);
    case TH_ADD_SCALAR: return av_add_scalar(c, in[0], o->arg);
    case TH_EXP: return av_exp(c, in[0]);
    case TH_LOG: return av_log(c, in[0]);
    case TH_SQRT: return av_sqrt(c, in[0]);
    case TH_SQUARE: return av_square(c, in[0]);
    case TH_TANH: return av_tanh(c, in[0]);
    case TH_SIGMOID: return av_sigmoid(c, in[0]);
    case TH_RELU: return av_relu(c, av_add_scalar(c, in[0], -1.0f));
    case TH_LEAKY: return av_leaky_relu(c, av_add_scalar(c, in[0], -1.0f), o->arg);
    case TH_GELU: return av_gelu(c, in[0]);
    case TH_SOFTPLUS: return av_softplus(c, av_scale(c, in[0], o->arg));
    case TH_DROPOUT: return av_dropout(c, in[0], o->arg);
    case TH_ADD: return av_add(c, in[0], in[1]);
    case TH_SUB: return av_sub(c, in[0], in[1]);
    case TH_MUL: return av_mul(c, in[0], in[1]);
    default: return av_div(c, in[0], in[1]);
    }
}

static void test_elementwise(void) {
    /* positive values, so that log, sqrt and div apply; ragged: 70001 = 17 * 4117 */
    enum { R = 17, N = 4117 };
    static float x[R * N], y[R * N], row[N], col[R], mid[3 * N];
    gc_input in[2], bin[6][2];
    const char *bin_names[6] = {"same shape", "b [1, N] over rows", "b [R, 1] along rows", "b scalar",
                                "a [R, 1] and b [1, N]", "b [B, 1, N] over [B, T, N]"};
    th_op o;
    char what[96];
    int k, b;
    gc_fill(x, R * N, 0.5, 2.0);
    gc_fill(y, R * N, 0.5, 2.0);
    gc_fill(row, N, 0.5, 2.0);
    gc_fill(col, R, 0.5, 2.0);
    gc_fill(mid, 3 * N, 0.5, 2.0);
    in[0] = gc_in(x, 1, 2, R, N);
    for (k = TH_SCALE; k <= TH_DROPOUT; k++) {
        o.op = k;
        o.arg = k == TH_DROPOUT ? 0.3f : k == TH_SOFTPLUS ? 60.0f : 0.7f; /* softplus: |x| > 80 too */
        th_same(th_names[k], fwd_elementwise, &o, 1, in);
    }
    for (b = 0; b < 6; b++) bin[b][0] = gc_in(x, 1, 2, R, N);
    bin[0][1] = gc_in(y, 1, 2, R, N);
    bin[1][1] = gc_in(row, 1, 2, 1, N);
    bin[2][1] = gc_in(col, 1, 2, R, 1);
    bin[3][1] = gc_in(y, 1, 0);
    bin[4][0] = gc_in(col, 1, 2, R, 1);
    bin[4][1] = gc_in(row, 1, 2, 1, N);
    bin[5][0] = gc_in(x, 1, 3, 3, 5, N);
    bin[5][1] = gc_in(mid, 1, 3, 3, 1, N);
    for (k = TH_ADD; k < TH_N_OPS; k++)
        for (b = 0; b < 6; b++) {
            o.op = k;
            snprintf(what, sizeof what, "%s, %s", th_names[k], bin_names[b]);
            th_same(what, fwd_elementwise, &o, 2, bin[b]);
        }
}

/* reductions: x seen as [outer, len, inner]; len past AV__VCHUNK makes
   several slices, inner past AV__RCOLS several column blocks */
typedef struct { int kind, axis; } th_reduce;
static av_tensor *fwd_reduce(av_ctx *c, av_tensor **in, void *u) {
    const th_reduce *r = (const th_reduce *)u;
    switch (r->kind) {
    case 0: return av_sum(c, in[0], r->axis, 0);
    case 1: return av_mean(c, in[0], r->axis, 1);
    case 2: return av_max(c, in[0], r->axis, 0);
    case 3: return av_sum_all(c, in[0]);
    case 4: return av_mean_all(c, in[0]);
    default: return av_max_all(c, in[0]);
    }
}

/* x [outer, len, inner] of wide values whose sums over len cancel: position
   len-1-k holds minus position k, and a middle one 0. The exact sums are 0
   while sums in double round at ~2^-52 of the partial sums, so any other
   order of adding shows in the float results. */
static void th_fill_cancelling(float *x, int outer, int len, int inner) {
    int o, k, i;
    th_fill_wide(x, outer * len * inner);
    for (o = 0; o < outer; o++)
        for (k = 0; k < (len + 1) / 2; k++)
            for (i = 0; i < inner; i++)
                x[((size_t)o * len + len - 1 - k) * inner + i] = len - 1 - k == k ? 0.0f : -x[((size_t)o * len + k) * inner + i];
}

static void test_reduce(void) {
    static float x[70001];
    static const int shapes[4][3] = {{3, 9001, 3}, {2, 5, 7001}, {70001, 1, 1}, {7, 10001, 1}};
    static const char *kinds[6] = {"sum", "mean", "max", "sum_all", "mean_all", "max_all"};
    th_reduce r;
    gc_input in[1];
    char what[96];
    int sh, k, i, j;
    {   /* the data tells orders apart: one pass vs two halves, in double */
        double one = 0, halves[2] = {0, 0};
        th_fill_cancelling(x, 1, 70001, 1);
        for (i = 0; i < 70001; i++) {
            one += x[i];
            halves[i >= 35000] += x[i];
        }
        CHECK((float)one != (float)(halves[0] + halves[1]), "cancelling data: sums in two orders agree (%g)", one);
    }
    for (sh = 0; sh < 4; sh++)
        for (k = 0; k < 6; k++)
            for (r.axis = 0; r.axis < (k < 3 ? 3 : 1); r.axis++) {
                const int *d = shapes[sh];
                int outer = 1, inner = 1;
                for (j = 0; j < r.axis; j++) outer *= d[j];
                for (j = r.axis + 1; j < 3; j++) inner *= d[j];
                r.kind = k;
                if (k >= 3) th_fill_cancelling(x, 1, d[0] * d[1] * d[2], 1);
                else th_fill_cancelling(x, outer, d[r.axis], inner);
                in[0] = gc_in(x, 1, 3, d[0], d[1], d[2]);
                snprintf(what, sizeof what, "%s axis %d of [%d, %d, %d]", kinds[k], r.axis, d[0], d[1], d[2]);
                th_same(what, fwd_reduce, &r, 1, in);
            }
}

/* softmax, log-softmax, layer norm (gamma and beta too) over the last axis */
static av_tensor *fwd_norm(av_ctx *c, av_tensor **in, void *u) {
    switch (*(const int *)u) {
    case 0: return av_softmax(c, in[0]);
    case 1: return av_log_softmax(c, in[0]);
    default: return av_layer_norm(c, in[0], in[1], in[2], 1e-5f);
    }
}

static void test_norm(void) {
    enum { R = 271, N = 259 };
    static float x[R * N], g[N], b[N];
    gc_input in[3];
    int k;
    gc_fill(x, R * N, -3, 3);
    gc_fill(g, N, 0.5, 1.5);
    gc_fill(b, N, -1, 1);
    in[0] = gc_in(x, 1, 2, R, N);
    in[1] = gc_in(g, 1, 1, N);
    in[2] = gc_in(b, 1, 1, N);
    for (k = 0; k < 3; k++) th_same(k == 0 ? "softmax" : k == 1 ? "log_softmax" : "layer_norm", fwd_norm, &k, k < 2 ? 1 : 3, in);
}

/* losses, embedding, the VAE's per-example terms and reparameterization */
typedef struct { int kind; const int *ids; int n; } th_misc;
static av_tensor *fwd_misc(av_ctx *c, av_tensor **in, void *u) {
    const th_misc *m = (const th_misc *)u;
    switch (m->kind) {
    case 0: return av_mse_loss(c, in[0], in[1], AV_MEAN);
    case 1: return av_cross_entropy(c, in[0], m->ids, AV_SUM);
    case 2: return av_bce_with_logits(c, in[0], in[1], AV_MEAN);
    case 3: return av_embedding(c, in[0], m->ids, m->n);
    case 4: return av_kl_std_normal(c, in[0], in[1]);
    case 5: return av_bernoulli_nll(c, in[0], in[1]);
    case 6: return av_reparameterize(c, in[0], in[1]);
    case 7: return av_gaussian_nll(c, in[0], in[1], in[2]);
    default: return av_add(c, av_rand(c, -1, 1, 2, 9, 7777), av_mul(c, in[0], av_randn(c, 0, 1, 2, 9, 7777)));
    }
}

static void test_misc(void) {
    enum { R = 301, N = 233, V = 97 };
    static float a[R * N], t[R * N], wide[R * N], logits[R * N], twos[R * N], table[V * N];
    static int labels[R], ids[R];
    static const char *names[9] = {"mse_loss", "cross_entropy", "bce_with_logits", "embedding", "kl_std_normal",
                                   "bernoulli_nll", "reparameterize", "gaussian_nll", "rand and randn"};
    gc_input in[3];
    th_misc m;
    int i, n_in;
    gc_fill(a, R * N, -2, 2);
    gc_fill(t, R * N, 0, 1);
    th_fill_wide(wide, R * N);
    /* BCE terms that cancel (see th_fill_cancelling): with target 2 the term
       of x is -x for x >> 0 and -2x for x << 0; position n-1-k holds -x/2 or
       -2x for x at k, |x| from 2^10 to 2^50, and the middle one 0 */
    th_fill_wide(logits, R * N);
    for (i = 0; i < R * N; i++) {
        twos[i] = 2.0f;
        logits[i] = i < R * N / 2 ? ldexpf(logits[i], 30) : i == R * N / 2 ? 0.0f : logits[R * N - 1 - i] > 0 ? -logits[R * N - 1 - i] / 2 : -2 * logits[R * N - 1 - i];
    }
    gc_fill(table, V * N, -1, 1);
    for (i = 0; i < R; i++) {
        labels[i] = (int)(gc_u64() % N);
        ids[i] = (int)(gc_u64() % 40); /* ids repeat: rows add into shared rows */
    }
    for (m.kind = 0; m.kind < 9; m.kind++) {
        m.ids = m.kind == 1 ? labels : ids;
        m.n = R;
        n_in = 2;
        in[0] = gc_in(a, 1, 2, R, N);
        in[1] = gc_in(t, 1, 2, R, N);
        in[2] = gc_in(t, 1, 2, R, N);
        switch (m.kind) {
        case 0: in[0] = gc_in(wide, 1, 2, R, N); break;
        case 1: n_in = 1; break;
        case 2: in[0] = gc_in(logits, 1, 2, R, N); in[1] = gc_in(twos, 1, 2, R, N); break;
        case 3: n_in = 1; in[0] = gc_in(table, 1, 2, V, N); break;
        case 7: n_in = 3; break;
        case 8: n_in = 1; in[0] = gc_in(a, 1, 2, 9, 7777); break;
        default: break;
        }
        th_same(names[m.kind], fwd_misc, &m, n_in, in);
    }
}

/* ---- gradients of the threaded sums, by central differences on 2
   threads: small inputs to check, outputs big enough for threads ---- */
typedef struct { int kind; const int *ids; } th_grad;
static av_tensor *fwd_grad(av_ctx *c, av_tensor **in, void *u) {
    const th_grad *g = (const th_grad *)u;
    switch (g->kind) {
    case 0: return av_mul(c, in[0], in[1]);                        /* b [1, 16] over rows */
    case 1: return av_div(c, in[0], in[1]);                        /* b [R, 1] along rows */
    case 2: return av_layer_norm(c, in[0], in[1], in[2], 1e-5f);   /* gamma, beta [16] */
    default: return av_relu(c, av_embedding(c, in[1], g->ids, 2100)); /* table [10, 16] */
    }
}

static void test_threaded_gradients(void) {
    enum { R = 2100, N = 16 };
    static float x[R * N], row[N], col[R], beta[N], table[10 * N];
    static int ids[R];
    static const char *names[4] = {"grad mul, b [1, N] over rows (2 threads)", "grad div, b [R, 1] along rows (2 threads)",
                                   "grad layer_norm gamma and beta (2 threads)", "grad embedding (2 threads)"};
    gc_input in[3];
    th_grad g;
    int i;
    CHECK(R * N >= TH_MIN_SIZE && av_get_num_threads() == 2, "the gradient checks would not run on 2 threads");
    gc_fill(x, R * N, -2, 2);
    gc_fill(row, N, 0.5, 1.5);
    gc_fill(col, R, 0.5, 1.5);
    gc_fill(beta, N, -1, 1);
    gc_fill_away(table, 10 * N, 0.1, 1); /* relu: no value near the kink */
    for (i = 0; i < R; i++) ids[i] = (int)(gc_u64() % 10);
    g.ids = ids;
    for (g.kind = 0; g.kind < 4; g.kind++) {
        in[0] = gc_in(x, 0, 2, R, N);
        in[1] = g.kind == 1 ? gc_in(col, 1, 2, R, 1) : g.kind == 3 ? gc_in(table, 1, 2, 10, N) : gc_in(row, 1, 2, 1, N);
        in[2] = gc_in(beta, 1, 1, N);
        if (g.kind == 2) in[1] = gc_in(row, 1, 1, N);
        gc_check(names[g.kind], fwd_grad, &g, g.kind == 2 ? 3 : 2, in);
    }
}

/* ---- whole training runs ---- */
/* An MLP 64-384-384-10 with ReLU and dropout, batch 128, Adam, 300 steps on
   a synthetic task (labels from a fixed random linear map of x); or a VAE
   64-384-(16)-384-64 with dropout and a Bernoulli decoder, 150 steps, on
   thermometer codes of the same x (pixel j is on when j < 64 x_0). The
   hidden layers make 128 x 384 values, enough for threads. Returns the
   parameters, concatenated, malloc'd; *count gets their number and *first,
   *last the mean loss of the first and last ten steps. */
static float *th_train(int vae, int threads, long *count, double *first, double *last) {
    enum { B = 128, IN = 64, H = 384, CLASSES = 10, HV = 384, Z = 16, DATA = 2048 };
    static float xs[DATA * IN], codes[DATA * IN], w[IN * CLASSES];
    static int ys[DATA];
    int steps = vae ? 150 : 300, step, i, j, at;
    av_model *m = av_model_new(9);
    av_ctx *c = av_ctx_new();
    av_optim adam = av_adam(1e-3f);
    av_linear_layer l1, l2, l3, l4;
    av_gaussian_head head;
    float *params;
    gc_seed(99);
    gc_fill(xs, DATA * IN, 0, 1);
    gc_fill(w, IN * CLASSES, -1, 1);
    for (i = 0; i < DATA; i++) {
        int best = 0;
        double score[CLASSES] = {0};
        for (j = 0; j < IN * CLASSES; j++) score[j % CLASSES] += (xs[i * IN + j / CLASSES] - 0.5) * w[j];
        for (j = 1; j < CLASSES; j++) best = score[j] > score[best] ? j : best;
        ys[i] = best;
        for (j = 0; j < IN; j++) codes[i * IN + j] = j < IN * xs[i * IN] ? 1.0f : 0.0f;
    }
    av_set_num_threads(threads);
    av_ctx_seed(c, 11);
    l1 = av_linear_layer_new(m, "l1", IN, vae ? HV : H, 1);
    l2 = av_linear_layer_new(m, "l2", vae ? Z : H, vae ? HV : H, 1);
    l3 = av_linear_layer_new(m, "l3", vae ? HV : H, vae ? IN : CLASSES, 1);
    l4 = av_linear_layer_new(m, "l4", 1, 1, 0); /* unused by the runs: its parameters must not move */
    head = av_gaussian_head_new(m, "head", HV, Z);
    *first = *last = 0;
    for (step = 0; step < steps; step++) {
        av_tensor *x, *loss;
        av_ctx_reset(c);
        x = av_wrap(c, (vae ? codes : xs) + (step * B) % DATA * IN, 2, B, IN);
        if (vae) {
            av_tensor *mu, *logvar, *h = av_relu(c, av_linear_forward(c, &l1, x));
            av_gaussian_head_forward(c, &head, av_dropout(c, h, 0.1f), &mu, &logvar);
            h = av_relu(c, av_linear_forward(c, &l2, av_reparameterize(c, mu, logvar)));
            loss = av_neg_elbo(c, av_bernoulli_nll(c, av_linear_forward(c, &l3, h), x), av_kl_std_normal(c, mu, logvar), 1.0f);
        } else {
            av_tensor *h = av_dropout(c, av_relu(c, av_linear_forward(c, &l1, x)), 0.2f);
            h = av_dropout(c, av_relu(c, av_linear_forward(c, &l2, h)), 0.2f);
            loss = av_cross_entropy(c, av_linear_forward(c, &l3, h), ys + (step * B) % DATA, AV_MEAN);
        }
        av_model_zero_grad(m);
        av_backward(c, loss);
        CHECK(av_optim_step(m, &adam) == AV_OK, "training step %d: %s", step, av_error());
        if (step < 10) *first += av_item(loss) / 10;
        if (step >= steps - 10) *last += av_item(loss) / 10;
    }
    (void)l4;
    *count = av_model_num_values(m);
    params = (float *)malloc((size_t)*count * sizeof(float));
    for (i = 0, at = 0; i < av_model_count(m); i++) {
        memcpy(params + at, av_model_param(m, i)->data, (size_t)av_model_param(m, i)->size * sizeof(float));
        at += av_model_param(m, i)->size;
    }
    av_set_num_threads(0);
    av_ctx_free(c);
    av_model_free(m);
    return params;
}

static void test_training(void) {
    int vae;
    for (vae = 0; vae < 2; vae++) {
        long n1, n2, i, differ = 0;
        double first1, last1, first2, last2;
        float *p1 = th_train(vae, 1, &n1, &first1, &last1), *p2 = th_train(vae, 2, &n2, &first2, &last2);
        const char *what = vae ? "VAE" : "MLP with dropout";
        for (i = 0; n1 == n2 && i < n1; i++) differ += memcmp(p1 + i, p2 + i, sizeof(float)) != 0;
        CHECK(n1 == n2 && differ == 0, "%s: %ld of %ld parameters differ after training on 1 and 2 threads", what, differ, n1);
        CHECK(first1 == first2 && last1 == last2, "%s: losses differ on 1 and 2 threads", what);
        /* it trained: the loss fell to less than half */
        CHECK(last1 < first1 / 2, "%s: loss %g over the first ten steps, %g over the last", what, first1, last1);
        printf("info: %s, %s steps: loss %.4f -> %.4f on 1 and 2 threads, %ld parameters bit-identical\n", what,
               vae ? "150" : "300", first1, last1, n1);
        free(p1);
        free(p2);
    }
}
#endif

int main(void) {
#ifdef _OPENMP
    gc_seed(4242);
    test_elementwise();
    test_reduce();
    test_norm();
    test_misc();
    test_threaded_gradients();
    test_training();
#else
    CHECK(0, "test_threads needs -fopenmp: without it there is one thread to compare");
#endif
    return t_summary();
}
