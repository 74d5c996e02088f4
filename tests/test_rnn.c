/* test_rnn.c - the recurrent layers of attnvae.h: av_rnn_layer (LSTM and
   GRU, both directions, initial states, sequences of different lengths),
   the av_rnn module (stacked, bidirectional) and the single cells.
   Gradients against central finite differences (tests/gradcheck.h), forward
   values against a naive double-precision implementation written here,
   padded steps exactly inert, PyTorch's initialisation bounds, results that
   do not depend on the thread count, and the shape-error messages.
   tests/test_rnn_ref.c compares against PyTorch itself. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "gradcheck.h"
#include "expect_fail.h"

/* ======================================================================= */
/* a naive double-precision LSTM / GRU layer, straight from the equations   */
/* ======================================================================= */
static double sigm(double v) { return 1.0 / (1.0 + exp(-v)); }

/* x [B, T, I]; weights as in PyTorch; h0, c0 [B, H] or NULL; lengths or
   NULL. Writes y [B, T, H], hn and cn [B, H] (cn: LSTM only). */
typedef struct ref_weights { const float *w_ih, *w_hh, *b_ih, *b_hh; } ref_weights;

static void ref_layer(int kind, int B, int T, int I, int H, const double *x, const ref_weights *w, const double *h0,
                      const double *c0, const int *lengths, int reverse, double *y, double *hn, double *cn) {
    int G = (kind == AV_LSTM ? 4 : 3) * H, b, s, j, k;
    double *gx = (double *)malloc((size_t)G * sizeof(double)), *gh = (double *)malloc((size_t)G * sizeof(double));
    double *h = (double *)malloc((size_t)H * sizeof(double)), *cs = (double *)malloc((size_t)H * sizeof(double));
    for (b = 0; b < B; b++) {
        int len = lengths ? lengths[b] : T;
        for (j = 0; j < H; j++) {
            h[j] = h0 ? h0[b * H + j] : 0.0;
            cs[j] = c0 ? c0[b * H + j] : 0.0;
        }
        for (s = 0; s < T; s++) {
            int t = reverse ? T - 1 - s : s;
            double *yt = y + ((size_t)b * T + t) * H;
            if (t >= len) {
                for (j = 0; j < H; j++) yt[j] = 0.0;
                continue;
            }
            for (j = 0; j < G; j++) {
                gx[j] = w->b_ih ? w->b_ih[j] : 0.0;
                gh[j] = w->b_hh ? w->b_hh[j] : 0.0;
                for (k = 0; k < I; k++) gx[j] += (double)w->w_ih[j * I + k] * x[((size_t)b * T + t) * I + k];
                for (k = 0; k < H; k++) gh[j] += (double)w->w_hh[j * H + k] * h[k];
            }
            for (j = 0; j < H; j++) {
                if (kind == AV_LSTM) {
                    double i = sigm(gx[j] + gh[j]), f = sigm(gx[H + j] + gh[H + j]);
                    double g = tanh(gx[2 * H + j] + gh[2 * H + j]), o = sigm(gx[3 * H + j] + gh[3 * H + j]);
                    cs[j] = f * cs[j] + i * g;
                    yt[j] = o * tanh(cs[j]);
                } else {
                    double r = sigm(gx[j] + gh[j]), z = sigm(gx[H + j] + gh[H + j]);
                    double n = tanh(gx[2 * H + j] + r * gh[2 * H + j]);
                    yt[j] = (1 - z) * n + z * h[j];
                }
            }
            for (j = 0; j < H; j++) h[j] = yt[j];
        }
        for (j = 0; j < H; j++) {
            hn[b * H + j] = h[j];
            if (cn) cn[b * H + j] = cs[j];
        }
    }
    free(gx); free(gh); free(h); free(cs);
}

/* Forward tolerance: the states are O(1); each gate adds up a dot product
   of in + H terms in fp32, whose rounding grows as the square root of its
   length (measured: 4e-6 at in + H = 261 after 4 steps). */
static double fwd_tol(int in, int H) {
    double t = 2e-6 * sqrt((in + H) / 8.0);
    return t > 2e-6 ? t : 2e-6;
}

/* |got - want| <= atol for every element; one CHECK */
static void check_close(const char *what, const float *got, const double *want, int n, double atol) {
    int i, bad = -1;
    for (i = 0; i < n && bad < 0; i++)
        if (!(fabs(got[i] - want[i]) <= atol)) bad = i;
    if (bad >= 0) CHECK(0, "%s: [%d] got %.9g want %.9g", what, bad, got[bad], want[bad]);
    else t_passed++;
}

static double *to_double(const float *v, int n) {
    double *d = (double *)malloc((size_t)(n ? n : 1) * sizeof(double));
    int i;
    for (i = 0; i < n; i++) d[i] = v[i];
    return d;
}

static av_tensor *flat(av_ctx *c, av_tensor *t) { return av_reshape(c, t, 1, t->size); }

/* ======================================================================= */
/* 1. the layer op: gradients and values                                   */
/* ======================================================================= */
typedef struct layer_case {
    int kind, B, T, I, H, reverse, with_state, biases, values_only, fixed_w_ih;
    const int *lengths;
} layer_case;

/* inputs: x, w_ih, w_hh, b_ih, b_hh, h0, c0; output: y, h_n, c_n flattened */
static av_tensor *fwd_layer(av_ctx *c, av_tensor **in, void *u) {
    const layer_case *lc = (const layer_case *)u;
    av_rnn_weights w;
    av_tensor *h_n, *c_n, *y, *parts[3];
    int lstm = lc->kind == AV_LSTM;
    w.w_ih = in[1]; w.w_hh = in[2];
    w.b_ih = lc->biases ? in[3] : NULL;
    w.b_hh = lc->biases ? in[4] : NULL;
    y = av_rnn_layer(c, lc->kind, in[0], &w, lc->with_state ? in[5] : NULL, lc->with_state && lstm ? in[6] : NULL,
                     lc->lengths, lc->reverse, &h_n, &c_n);
    parts[0] = flat(c, y);
    parts[1] = flat(c, h_n);
    if (lstm) parts[2] = flat(c, c_n);
    return av_concat(c, parts, lstm ? 3 : 2, 0);
}

static void layer_case_run(const layer_case *lc, const char *label) {
    int G = (lc->kind == AV_LSTM ? 4 : 3) * lc->H, B = lc->B, T = lc->T, I = lc->I, H = lc->H;
    int nx = B * T * I, n_in = lc->kind == AV_LSTM ? 7 : 6, i, b, t;
    float *x = (float *)malloc((size_t)nx * sizeof(float)), *wih = (float *)malloc((size_t)G * I * sizeof(float));
    float *whh = (float *)malloc((size_t)G * H * sizeof(float)), *bih = (float *)malloc((size_t)G * sizeof(float));
    float *bhh = (float *)malloc((size_t)G * sizeof(float)), *h0 = (float *)malloc((size_t)B * H * sizeof(float));
    float *c0 = (float *)malloc((size_t)B * H * sizeof(float));
    gc_input in[7];
    char what[200];
    gc_fill_distinct(x, nx, -1, 1);     /* no two steps alike: a mixed-up step shows */
    gc_fill(wih, G * I, -0.8, 0.8);
    gc_fill(whh, G * H, -0.8, 0.8);
    gc_fill(bih, G, -0.5, 0.5);
    gc_fill(bhh, G, -0.5, 0.5);
    gc_fill_away(h0, B * H, 0.2, 0.8);  /* a dropped initial state shows */
    gc_fill_away(c0, B * H, 0.2, 1);
    in[0] = gc_in(x, 1, 3, B, T, I);
    in[1] = gc_in(wih, !lc->fixed_w_ih, 2, G, I);
    in[2] = gc_in(whh, 1, 2, G, H);
    in[3] = gc_in(bih, lc->biases, 1, G);
    in[4] = gc_in(bhh, lc->biases, 1, G);
    in[5] = gc_in(h0, lc->with_state, 2, B, H);
    in[6] = gc_in(c0, lc->with_state, 2, B, H);
    snprintf(what, sizeof what, "grad av_rnn_layer %s", label);
    if (!lc->values_only) gc_check(what, fwd_layer, (void *)lc, n_in, in);

    {   /* values against the double reference; padded steps exactly inert */
        av_ctx *c = av_ctx_new();
        av_tensor *tin[7], *out, *loss;
        double *xd = to_double(x, nx), *h0d = to_double(h0, B * H), *c0d = to_double(c0, B * H);
        double *y = (double *)malloc((size_t)B * T * H * sizeof(double)), *hn = (double *)malloc((size_t)B * H * sizeof(double));
        double *cn = (double *)malloc((size_t)B * H * sizeof(double));
        ref_weights rw;
        int ok = 1;
        rw.w_ih = wih; rw.w_hh = whh;
        rw.b_ih = lc->biases ? bih : NULL;
        rw.b_hh = lc->biases ? bhh : NULL;
        ref_layer(lc->kind, B, T, I, H, xd, &rw, lc->with_state ? h0d : NULL, lc->with_state ? c0d : NULL, lc->lengths,
                  lc->reverse, y, hn, lc->kind == AV_LSTM ? cn : NULL);
        for (i = 0; i < n_in; i++) {
            tin[i] = gc_make(c, in[i].ndim, in[i].shape, in[i].data);
            if (in[i].check || i == 0) av_requires_grad(c, tin[i]);
        }
        out = fwd_layer(c, tin, (void *)lc);
        snprintf(what, sizeof what, "av_rnn_layer %s: y", label);
        check_close(what, out->data, y, B * T * H, fwd_tol(I, H));
        snprintf(what, sizeof what, "av_rnn_layer %s: h_n", label);
        check_close(what, out->data + B * T * H, hn, B * H, fwd_tol(I, H));
        if (lc->kind == AV_LSTM) {
            snprintf(what, sizeof what, "av_rnn_layer %s: c_n", label);
            check_close(what, out->data + B * T * H + B * H, cn, B * H, fwd_tol(I, H));
        }
        loss = av_sum_all(c, av_square(c, out));
        av_backward(c, loss);
        for (b = 0; b < B; b++)
            for (t = lc->lengths ? lc->lengths[b] : T; t < T; t++)
                for (i = 0; i < I; i++) ok &= tin[0]->grad[((size_t)b * T + t) * I + i] == 0.0f;
        snprintf(what, sizeof what, "av_rnn_layer %s: padded inputs get exactly zero gradient", label);
        CHECK(ok, "%s", what);
        free(xd); free(h0d); free(c0d); free(y); free(hn); free(cn);
        av_ctx_free(c);
    }
    free(x); free(wih); free(whh); free(bih); free(bhh); free(h0); free(c0);
}

static void layer_tests(void) {
    static const int lengths[3] = {4, 1, 3}, with_empty[3] = {0, 4, 2};
    layer_case lc;
    int kind, reverse, state;
    char label[120];
    for (kind = 0; kind < 2; kind++)
        for (reverse = 0; reverse < 2; reverse++)
            for (state = 0; state < 2; state++) {
                const char *name = kind == AV_LSTM ? "lstm" : "gru";
                memset(&lc, 0, sizeof lc);
                lc.kind = kind; lc.B = 3; lc.T = 4; lc.I = 3; lc.H = 2;
                lc.reverse = reverse; lc.with_state = state; lc.biases = 1;
                snprintf(label, sizeof label, "%s%s%s", name, reverse ? " reverse" : "", state ? " h0" : "");
                layer_case_run(&lc, label);
                lc.lengths = lengths;
                snprintf(label, sizeof label, "%s%s%s lengths 4,1,3", name, reverse ? " reverse" : "", state ? " h0" : "");
                layer_case_run(&lc, label);
            }
    for (kind = 0; kind < 2; kind++) {
        memset(&lc, 0, sizeof lc);
        lc.kind = kind; lc.B = 3; lc.T = 4; lc.I = 2; lc.H = 3; lc.with_state = 1;
        lc.lengths = with_empty; /* a sequence of length 0: h_n = h0 */
        snprintf(label, sizeof label, "%s no biases, lengths 0,4,2", kind == AV_LSTM ? "lstm" : "gru");
        layer_case_run(&lc, label);
        lc.biases = 1; lc.T = 1; lc.lengths = NULL; lc.B = 2; lc.H = 4;
        snprintf(label, sizeof label, "%s T=1", kind == AV_LSTM ? "lstm" : "gru");
        layer_case_run(&lc, label);
        /* W_ih fixed: dW_hh alone (an LSTM's own GEMM for it) */
        lc.fixed_w_ih = 1;
        snprintf(label, sizeof label, "%s T=1 W_ih fixed", kind == AV_LSTM ? "lstm" : "gru");
        layer_case_run(&lc, label);
        lc.fixed_w_ih = 0;
        /* H = 19: the 16- and 8-wide passes and their scalar tails */
        lc.T = 4; lc.B = 3; lc.H = 19; lc.reverse = 1; lc.lengths = lengths;
        snprintf(label, sizeof label, "%s H=19 reverse lengths 4,1,3", kind == AV_LSTM ? "lstm" : "gru");
        layer_case_run(&lc, label);
        /* H = 256: W_hhᵀ in column panels of 512 (G = 1024, or 768: a narrower last one) */
        lc.H = 256; lc.I = 5; lc.values_only = 1;
        snprintf(label, sizeof label, "%s H=256 reverse lengths 4,1,3", kind == AV_LSTM ? "lstm" : "gru");
        layer_case_run(&lc, label);
    }
}

/* ======================================================================= */
/* 2. the module: stacked, bidirectional, states, lengths                  */
/* ======================================================================= */
/* The module's parameters become views of one checked input theta, so
   gradcheck sees every weight of every layer and direction. */
typedef struct module_case {
    av_rnn net;           /* shapes from a model; weights replaced per call */
    int B, T, with_state;
    const int *lengths;
} module_case;

static int module_param_count(const av_rnn *r) {
    int l, d, total = 0;
    for (l = 0; l < r->num_layers; l++)
        for (d = 0; d < r->num_directions; d++)
            total += r->w[l][d].w_ih->size + r->w[l][d].w_hh->size + r->w[l][d].b_ih->size + r->w[l][d].b_hh->size;
    return total;
}

static av_tensor *view_of(av_ctx *c, av_tensor *theta, int *at, const av_tensor *like) {
    av_tensor *v = av_slice(c, theta, 0, *at, *at + like->size);
    *at += like->size;
    return av_reshape_shape(c, v, like->ndim, like->shape);
}

/* inputs: x, theta, h0, c0; output: y, h_n, c_n flattened */
static av_tensor *fwd_module(av_ctx *c, av_tensor **in, void *u) {
    const module_case *mc = (const module_case *)u;
    av_rnn net = mc->net;
    av_tensor *y, *h_n, *c_n, *parts[3];
    int l, d, at = 0, lstm = net.kind == AV_LSTM;
    for (l = 0; l < net.num_layers; l++)
        for (d = 0; d < net.num_directions; d++) {
            av_rnn_weights *w = &net.w[l][d];
            w->w_ih = view_of(c, in[1], &at, w->w_ih);
            w->w_hh = view_of(c, in[1], &at, w->w_hh);
            w->b_ih = view_of(c, in[1], &at, w->b_ih);
            w->b_hh = view_of(c, in[1], &at, w->b_hh);
        }
    y = av_rnn_forward(c, &net, in[0], mc->with_state ? in[2] : NULL, mc->with_state && lstm ? in[3] : NULL,
                       mc->lengths, &h_n, &c_n);
    parts[0] = flat(c, y);
    parts[1] = flat(c, h_n);
    if (lstm) parts[2] = flat(c, c_n);
    return av_concat(c, parts, lstm ? 3 : 2, 0);
}

/* the module's forward in double, layer by layer, from the reference layer */
static void ref_module(const av_rnn *r, int B, int T, const double *x, const double *h0, const double *c0,
                       const int *lengths, double *y, double *hn, double *cn) {
    int H = r->hidden_size, D = r->num_directions, l, d, b, t, j, in_size = r->input_size;
    double *in = (double *)malloc((size_t)B * T * in_size * sizeof(double));
    double *yd = (double *)malloc((size_t)B * T * H * sizeof(double));
    memcpy(in, x, (size_t)B * T * in_size * sizeof(double));
    for (l = 0; l < r->num_layers; l++) {
        double *out = (double *)malloc((size_t)B * T * D * H * sizeof(double));
        for (d = 0; d < D; d++) {
            int k = l * D + d;
            ref_weights w;
            w.w_ih = r->w[l][d].w_ih->data; w.w_hh = r->w[l][d].w_hh->data;
            w.b_ih = r->w[l][d].b_ih->data; w.b_hh = r->w[l][d].b_hh->data;
            ref_layer(r->kind, B, T, in_size, H, in, &w, h0 ? h0 + (size_t)k * B * H : NULL,
                      c0 ? c0 + (size_t)k * B * H : NULL, lengths, d, yd, hn + (size_t)k * B * H,
                      cn ? cn + (size_t)k * B * H : NULL);
            for (b = 0; b < B; b++)
                for (t = 0; t < T; t++)
                    for (j = 0; j < H; j++) out[(((size_t)b * T + t) * D + d) * H + j] = yd[((size_t)b * T + t) * H + j];
        }
        free(in);
        in = out;
        in_size = D * H;
    }
    memcpy(y, in, (size_t)B * T * D * H * sizeof(double));
    free(in);
    free(yd);
}

static void module_case_run(int kind, int layers, int bidirectional, int with_state, const int *lengths, const char *label) {
    av_model *m = av_model_new(7);
    module_case mc;
    const int B = 3, T = 4, I = 3, H = 2;
    int D = bidirectional ? 2 : 1, P, S = layers * D * B * H, l, d, at = 0, k;
    float *x, *theta, *h0, *c0;
    gc_input in[4];
    char what[200];
    memset(&mc, 0, sizeof mc);
    mc.net = kind == AV_LSTM ? av_lstm_new(m, "rnn", I, H, layers, bidirectional, 0.3f)
                             : av_gru_new(m, "rnn", I, H, layers, bidirectional, 0.3f);
    mc.B = B; mc.T = T; mc.with_state = with_state; mc.lengths = lengths;
    P = module_param_count(&mc.net);
    x = (float *)malloc((size_t)B * T * I * sizeof(float));
    theta = (float *)malloc((size_t)P * sizeof(float));
    h0 = (float *)malloc((size_t)S * sizeof(float));
    c0 = (float *)malloc((size_t)S * sizeof(float));
    gc_fill(x, B * T * I, -1, 1);
    gc_fill(theta, P, -0.8, 0.8);
    gc_fill(h0, S, -0.8, 0.8);
    gc_fill(c0, S, -1, 1);
    in[0] = gc_in(x, 1, 3, B, T, I);
    in[1] = gc_in(theta, 1, 1, P);
    in[2] = gc_in(h0, with_state, 3, layers * D, B, H);
    in[3] = gc_in(c0, with_state, 3, layers * D, B, H);
    snprintf(what, sizeof what, "grad av_rnn_forward %s", label);
    gc_check(what, fwd_module, &mc, kind == AV_LSTM ? 4 : 3, in);

    {   /* values: theta into the model's parameters, then the double reference */
        av_ctx *c = av_ctx_new();
        av_tensor *y, *h_n, *c_n, *xt = av_from(c, x, 3, B, T, I);
        double *xd = to_double(x, B * T * I), *h0d = to_double(h0, S), *c0d = to_double(c0, S);
        double *yr = (double *)malloc((size_t)B * T * D * H * sizeof(double)), *hn = (double *)malloc((size_t)S * sizeof(double));
        double *cn = (double *)malloc((size_t)S * sizeof(double));
        for (l = 0; l < layers; l++)
            for (d = 0; d < D; d++) {
                av_tensor *ws[4];
                ws[0] = mc.net.w[l][d].w_ih; ws[1] = mc.net.w[l][d].w_hh; ws[2] = mc.net.w[l][d].b_ih; ws[3] = mc.net.w[l][d].b_hh;
                for (k = 0; k < 4; k++) {
                    memcpy(ws[k]->data, theta + at, (size_t)ws[k]->size * sizeof(float));
                    at += ws[k]->size;
                }
            }
        av_set_training(c, 0); /* dropout is off outside training */
        y = av_rnn_forward(c, &mc.net, xt, with_state ? av_from(c, h0, 3, layers * D, B, H) : NULL,
                           with_state && kind == AV_LSTM ? av_from(c, c0, 3, layers * D, B, H) : NULL, lengths, &h_n, &c_n);
        ref_module(&mc.net, B, T, xd, with_state ? h0d : NULL, with_state ? c0d : NULL, lengths, yr, hn,
                   kind == AV_LSTM ? cn : NULL);
        CHECK(y->ndim == 3 && y->shape[0] == B && y->shape[1] == T && y->shape[2] == D * H, "%s: y shape", label);
        CHECK(h_n->ndim == 3 && h_n->shape[0] == layers * D && h_n->shape[1] == B && h_n->shape[2] == H, "%s: h_n shape", label);
        snprintf(what, sizeof what, "av_rnn_forward %s: y", label);
        check_close(what, y->data, yr, B * T * D * H, fwd_tol(D * H, H));
        snprintf(what, sizeof what, "av_rnn_forward %s: h_n", label);
        check_close(what, h_n->data, hn, S, fwd_tol(D * H, H));
        if (kind == AV_LSTM) {
            snprintf(what, sizeof what, "av_rnn_forward %s: c_n", label);
            check_close(what, c_n->data, cn, S, fwd_tol(D * H, H));
        } else {
            CHECK(c_n == NULL, "%s: a GRU gave a cell state", label);
        }
        free(xd); free(h0d); free(c0d); free(yr); free(hn); free(cn);
        av_ctx_free(c);
    }
    free(x); free(theta); free(h0); free(c0);
    av_model_free(m);
}

static void module_tests(void) {
    static const int lengths[3] = {2, 4, 1};
    int kind;
    for (kind = 0; kind < 2; kind++) {
        const char *name = kind == AV_LSTM ? "lstm" : "gru";
        char label[120];
        snprintf(label, sizeof label, "%s 1 layer", name);
        module_case_run(kind, 1, 0, 0, NULL, label);
        snprintf(label, sizeof label, "%s 2 layers", name);
        module_case_run(kind, 2, 0, 1, NULL, label);
        snprintf(label, sizeof label, "%s 1 layer bidirectional h0 lengths", name);
        module_case_run(kind, 1, 1, 1, lengths, label);
        snprintf(label, sizeof label, "%s 2 layers bidirectional h0 lengths", name);
        module_case_run(kind, 2, 1, 1, lengths, label);
        snprintf(label, sizeof label, "%s 2 layers bidirectional", name);
        module_case_run(kind, 2, 1, 0, NULL, label);
    }
}

/* ======================================================================= */
/* 3. cells                                                                */
/* ======================================================================= */
typedef struct cell_case { av_rnn_cell cell; int steps; } cell_case;

/* inputs: x [B, I], w_ih, w_hh, b_ih, b_hh, h, c; several steps from x,
   feeding the state back (a decoder); output: every h, the last c */
static av_tensor *fwd_cell(av_ctx *c, av_tensor **in, void *u) {
    const cell_case *cc = (const cell_case *)u;
    av_rnn_cell cell = cc->cell;
    av_tensor *h = in[5], *cs = in[6], *parts[8];
    int s, n = 0;
    cell.w.w_ih = in[1]; cell.w.w_hh = in[2]; cell.w.b_ih = in[3]; cell.w.b_hh = in[4];
    for (s = 0; s < cc->steps; s++) {
        if (cell.kind == AV_LSTM) av_lstm_cell(c, &cell, in[0], h, cs, &h, &cs);
        else h = av_gru_cell(c, &cell, in[0], h);
        parts[n++] = flat(c, h);
    }
    if (cell.kind == AV_LSTM) parts[n++] = flat(c, cs);
    return av_concat(c, parts, n, 0);
}

static void cell_tests(void) {
    int kind;
    for (kind = 0; kind < 2; kind++) {
        av_model *m = av_model_new(3);
        cell_case cc;
        const int B = 3, I = 4, H = 3, G = (kind == AV_LSTM ? 4 : 3) * H;
        float x[12], wih[48], whh[36], bih[12], bhh[12], h[9], cs[9];
        gc_input in[7];
        char what[120];
        const char *name = kind == AV_LSTM ? "lstm" : "gru";
        cc.cell = kind == AV_LSTM ? av_lstm_cell_new(m, "cell", I, H) : av_gru_cell_new(m, "cell", I, H);
        cc.steps = 3;
        gc_fill(x, B * I, -1, 1);
        gc_fill(wih, G * I, -0.8, 0.8);
        gc_fill(whh, G * H, -0.8, 0.8);
        gc_fill(bih, G, -0.5, 0.5);
        gc_fill(bhh, G, -0.5, 0.5);
        gc_fill(h, B * H, -0.8, 0.8);
        gc_fill(cs, B * H, -1, 1);
        in[0] = gc_in(x, 1, 2, B, I);
        in[1] = gc_in(wih, 1, 2, G, I);
        in[2] = gc_in(whh, 1, 2, G, H);
        in[3] = gc_in(bih, 1, 1, G);
        in[4] = gc_in(bhh, 1, 1, G);
        in[5] = gc_in(h, 1, 2, B, H);
        in[6] = gc_in(cs, 1, 2, B, H);
        snprintf(what, sizeof what, "grad av_%s_cell, 3 steps", name);
        gc_check(what, fwd_cell, &cc, kind == AV_LSTM ? 7 : 6, in);

        {   /* one step against the double reference; names as nn.LSTMCell */
            av_ctx *c = av_ctx_new();
            av_tensor *ho = NULL, *co = NULL;
            double xd[12], hd[9], cd[9], y[9], hn[9], cn[9];
            ref_weights rw;
            int i;
            for (i = 0; i < B * I; i++) xd[i] = x[i];
            for (i = 0; i < B * H; i++) { hd[i] = h[i]; cd[i] = cs[i]; }
            memcpy(cc.cell.w.w_ih->data, wih, sizeof(float) * G * I);
            memcpy(cc.cell.w.w_hh->data, whh, sizeof(float) * G * H);
            memcpy(cc.cell.w.b_ih->data, bih, sizeof(float) * G);
            memcpy(cc.cell.w.b_hh->data, bhh, sizeof(float) * G);
            rw.w_ih = wih; rw.w_hh = whh; rw.b_ih = bih; rw.b_hh = bhh;
            ref_layer(kind, B, 1, I, H, xd, &rw, hd, kind == AV_LSTM ? cd : NULL, NULL, 0, y, hn, kind == AV_LSTM ? cn : NULL);
            if (kind == AV_LSTM) av_lstm_cell(c, &cc.cell, av_from(c, x, 2, B, I), av_from(c, h, 2, B, H), av_from(c, cs, 2, B, H), &ho, &co);
            else ho = av_gru_cell(c, &cc.cell, av_from(c, x, 2, B, I), av_from(c, h, 2, B, H));
            CHECK(ho->ndim == 2 && ho->shape[0] == B && ho->shape[1] == H, "%s cell: h shape", name);
            snprintf(what, sizeof what, "av_%s_cell: h", name);
            check_close(what, ho->data, hn, B * H, fwd_tol(I, H));
            if (kind == AV_LSTM) {
                snprintf(what, sizeof what, "av_%s_cell: c", name);
                check_close(what, co->data, cn, B * H, fwd_tol(I, H));
            }
            CHECK(av_model_find(m, "cell.weight_ih") && av_model_find(m, "cell.weight_hh") && av_model_find(m, "cell.bias_ih") &&
                      av_model_find(m, "cell.bias_hh") && av_model_count(m) == 4,
                  "%s cell: parameter names are not nn.%sCell's", name, kind == AV_LSTM ? "LSTM" : "GRU");
            av_ctx_reset(c);
            /* NULL states mean zeros */
            {
                av_tensor *h_zero, *h_null, *x_t = av_from(c, x, 2, B, I);
                if (kind == AV_LSTM) {
                    av_lstm_cell(c, &cc.cell, x_t, av_zeros(c, 2, B, H), av_zeros(c, 2, B, H), &h_zero, NULL);
                    av_lstm_cell(c, &cc.cell, x_t, NULL, NULL, &h_null, NULL);
                } else {
                    h_zero = av_gru_cell(c, &cc.cell, x_t, av_zeros(c, 2, B, H));
                    h_null = av_gru_cell(c, &cc.cell, x_t, NULL);
                }
                CHECK(memcmp(h_zero->data, h_null->data, sizeof(float) * B * H) == 0, "%s cell: NULL state is not zeros", name);
            }
            av_ctx_free(c);
        }
        av_model_free(m);
    }
}

/* ======================================================================= */
/* 4. parameters, dropout, repeated backward, threads                      */
/* ======================================================================= */
static void parameter_tests(void) {
    av_model *m = av_model_new(11);
    static const char *const names[] = {
        "enc.lstm.weight_ih_l0", "enc.lstm.weight_hh_l0", "enc.lstm.bias_ih_l0", "enc.lstm.bias_hh_l0",
        "enc.lstm.weight_ih_l0_reverse", "enc.lstm.weight_hh_l0_reverse", "enc.lstm.bias_ih_l0_reverse",
        "enc.lstm.bias_hh_l0_reverse", "enc.lstm.weight_ih_l1", "enc.lstm.weight_hh_l1", "enc.lstm.bias_ih_l1",
        "enc.lstm.bias_hh_l1", "enc.lstm.weight_ih_l1_reverse", "enc.lstm.weight_hh_l1_reverse",
        "enc.lstm.bias_ih_l1_reverse", "enc.lstm.bias_hh_l1_reverse"};
    static const int rows[16] = {64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64};
    static const int cols[16] = {5, 16, 0, 0, 5, 16, 0, 0, 32, 16, 0, 0, 32, 16, 0, 0};
    av_rnn r = av_lstm_new(m, "enc.lstm", 5, 16, 2, 1, 0.0f);
    av_rnn g = av_gru_new(m, "enc.gru", 5, 16, 1, 0, 0.0f);
    int i, j, ok = 1, order = 1;
    double bound = 1.0 / sqrt(16.0), mx = 0;
    (void)r;
    for (i = 0; i < 16; i++) {
        av_tensor *t = av_model_param(m, i);
        order &= strcmp(t->name, names[i]) == 0;
        ok &= t->ndim == (cols[i] ? 2 : 1) && t->shape[0] == rows[i] && (!cols[i] || t->shape[1] == cols[i]);
        for (j = 0; j < t->size; j++) {
            ok &= fabs(t->data[j]) <= bound;
            if (fabs(t->data[j]) > mx) mx = fabs(t->data[j]);
        }
    }
    CHECK(order, "LSTM parameters are not named and ordered as nn.LSTM's state_dict");
    CHECK(ok, "LSTM parameter shapes or U(-1/sqrt(H), 1/sqrt(H)) bounds wrong");
    CHECK(mx > 0.95 * bound, "LSTM init does not fill U(-1/sqrt(H), 1/sqrt(H)): max |w| %g of %g", mx, bound);
    CHECK(g.w[0][0].w_ih->shape[0] == 48 && g.w[0][0].w_hh->shape[0] == 48 && g.w[0][0].b_hh->shape[0] == 48 &&
              av_model_find(m, "enc.gru.weight_hh_l0") == g.w[0][0].w_hh && av_model_count(m) == 20,
          "GRU parameters are not [3H, ...] under nn.GRU's names");
    av_model_free(m);
}

/* dropout between layers: off in eval mode, on in training, and the
   training forward equals the layers run by hand with av_dropout */
static void dropout_tests(void) {
    av_model *m = av_model_new(5);
    av_rnn r = av_lstm_new(m, "rnn", 3, 4, 2, 0, 0.5f);
    av_ctx *c = av_ctx_new();
    float x[2 * 5 * 3];
    av_tensor *y_eval, *y_train, *y_hand, *mid;
    av_rnn one = r;
    gc_fill(x, 30, -1, 1);
    av_set_training(c, 0);
    y_eval = av_rnn_forward(c, &r, av_from(c, x, 3, 2, 5, 3), NULL, NULL, NULL, NULL, NULL);
    av_set_training(c, 1);
    av_ctx_seed(c, 99);
    y_train = av_rnn_forward(c, &r, av_from(c, x, 3, 2, 5, 3), NULL, NULL, NULL, NULL, NULL);
    av_ctx_seed(c, 99);
    one.num_layers = 1;
    mid = av_dropout(c, av_rnn_forward(c, &one, av_from(c, x, 3, 2, 5, 3), NULL, NULL, NULL, NULL, NULL), 0.5f);
    y_hand = av_rnn_layer(c, AV_LSTM, mid, &r.w[1][0], NULL, NULL, NULL, 0, NULL, NULL);
    CHECK(memcmp(y_train->data, y_hand->data, sizeof(float) * 40) == 0, "training forward is not layer, av_dropout, layer");
    CHECK(memcmp(y_train->data, y_eval->data, sizeof(float) * 40) != 0, "dropout changed nothing in training mode");
    av_set_training(c, 0);
    y_hand = av_rnn_layer(c, AV_LSTM, av_rnn_forward(c, &one, av_from(c, x, 3, 2, 5, 3), NULL, NULL, NULL, NULL, NULL),
                          &r.w[1][0], NULL, NULL, NULL, 0, NULL, NULL);
    CHECK(memcmp(y_eval->data, y_hand->data, sizeof(float) * 40) == 0, "eval forward applies dropout");
    av_ctx_free(c);
    av_model_free(m);
}

/* backward twice over one graph adds the gradient twice (saved buffers
   are not overwritten by the first backward) */
static void repeated_backward_test(void) {
    av_model *m = av_model_new(9);
    av_rnn r = av_gru_new(m, "rnn", 3, 4, 1, 1, 0.0f);
    av_ctx *c = av_ctx_new();
    float x[2 * 3 * 3], *once;
    av_tensor *loss;
    int i, ok = 1, n = r.w[0][1].w_hh->size;
    static const int lengths[2] = {3, 2};
    gc_fill(x, 18, -1, 1);
    loss = av_sum_all(c, av_square(c, av_rnn_forward(c, &r, av_from(c, x, 3, 2, 3, 3), NULL, NULL, lengths, NULL, NULL)));
    av_backward(c, loss);
    once = (float *)malloc((size_t)n * sizeof(float));
    memcpy(once, r.w[0][1].w_hh->grad, (size_t)n * sizeof(float));
    av_backward(c, loss);
    for (i = 0; i < n; i++) ok &= fabsf(r.w[0][1].w_hh->grad[i] - 2 * once[i]) <= 1e-6f * (1 + fabsf(once[i]));
    CHECK(ok, "second backward over one graph did not add the same gradient again");
    free(once);
    av_ctx_free(c);
    av_model_free(m);
}

/* empty batches and empty sequences: the right shapes, h_n = h0, and
   gradients that pass h_n's straight back to h0 */
static void zero_size_test(void) {
    av_model *m = av_model_new(4);
    av_rnn r = av_lstm_new(m, "rnn", 3, 2, 1, 1, 0.0f);
    av_ctx *c = av_ctx_new();
    int b;
    for (b = 0; b < 2; b++) {
        int B = b ? 2 : 0, T = b ? 0 : 3, i, ok = 1;
        av_tensor *h0 = av_full(c, 0.5f, 3, 2, B, 2), *c0 = av_full(c, -0.25f, 3, 2, B, 2), *h_n, *c_n, *y;
        av_requires_grad(c, h0);
        av_requires_grad(c, c0);
        y = av_rnn_forward(c, &r, av_zeros(c, 3, B, T, 3), h0, c0, NULL, &h_n, &c_n);
        CHECK(y->ndim == 3 && y->shape[0] == B && y->shape[1] == T && y->shape[2] == 4 && h_n->size == 4 * B,
              "B=%d T=%d: output shapes", B, T);
        for (i = 0; i < h_n->size; i++) ok &= h_n->data[i] == 0.5f && c_n->data[i] == -0.25f;
        CHECK(ok, "T=0: final states are not the initial ones");
        if (B) {
            av_backward(c, av_add(c, av_sum_all(c, h_n), av_sum_all(c, av_scale(c, c_n, 2.0f))));
            for (i = 0; i < h0->size; i++) ok &= h0->grad[i] == 1.0f && c0->grad[i] == 2.0f;
            CHECK(ok, "T=0: gradients do not pass from the final states to the initial ones");
        }
        av_ctx_reset(c);
    }
    av_ctx_free(c);
    av_model_free(m);
}

/* 1 and 2 threads give the same bits, forward and backward (the step pass
   goes parallel over the batch at these sizes; see test_rnn_omp) */
static void thread_test(void) {
    const int B = 24, T = 6, I = 32, H = 256;
    int kind, threads;
    for (kind = 0; kind < 2; kind++) {
        float *res[2];
        size_t n = 0;
        for (threads = 1; threads <= 2; threads++) {
            av_model *m = av_model_new(21);
            av_rnn r = kind == AV_LSTM ? av_lstm_new(m, "rnn", I, H, 1, 1, 0.0f) : av_gru_new(m, "rnn", I, H, 1, 1, 0.0f);
            static const int lengths[24] = {6, 5, 4, 3, 2, 1, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6};
            av_ctx *c = av_ctx_new();
            av_tensor *x = av_randn(c, 0, 1, 3, B, T, I), *y, *h_n;
            size_t at = 0;
            int p;
            av_set_num_threads(threads);
            av_requires_grad(c, x);
            y = av_rnn_forward(c, &r, x, NULL, NULL, lengths, &h_n, NULL);
            av_backward(c, av_add(c, av_sum_all(c, av_square(c, y)), av_sum_all(c, h_n)));
            n = (size_t)y->size + x->size;
            for (p = 0; p < av_model_count(m); p++) n += (size_t)av_model_param(m, p)->size;
            res[threads - 1] = (float *)malloc(n * sizeof(float));
            memcpy(res[threads - 1], y->data, sizeof(float) * y->size); at += (size_t)y->size;
            memcpy(res[threads - 1] + at, x->grad, sizeof(float) * x->size); at += (size_t)x->size;
            for (p = 0; p < av_model_count(m); p++) {
                av_tensor *w = av_model_param(m, p);
                memcpy(res[threads - 1] + at, w->grad, sizeof(float) * w->size);
                at += (size_t)w->size;
            }
            av_ctx_free(c);
            av_model_free(m);
        }
        av_set_num_threads(0);
        CHECK(memcmp(res[0], res[1], n * sizeof(float)) == 0, "%s: 1 and 2 threads differ (max threads here %d)",
              kind == AV_LSTM ? "lstm" : "gru", av_get_num_threads());
        free(res[0]);
        free(res[1]);
    }
}

/* ======================================================================= */
/* 5. shape errors                                                         */
/* ======================================================================= */
static void shape_errors(void) {
    av_model *m = av_model_new(1);
    av_rnn lstm = av_lstm_new(m, "lstm", 3, 2, 2, 1, 0.0f), gru = av_gru_new(m, "gru", 3, 2, 1, 0, 0.0f);
    av_rnn_cell cell = av_gru_cell_new(m, "cell", 3, 2);
    av_ctx *c = av_ctx_new();
    static const int bad_len[2] = {2, 5};
    printf("(the next messages on stderr are expected)\n");
    fflush(stdout);
    EXPECT_FAIL("layer x 2-d", av_rnn_layer(c, AV_LSTM, av_zeros(c, 2, 4, 3), &lstm.w[0][0], NULL, NULL, NULL, 0, NULL, NULL),
                 "av_rnn_layer", "[4,3]");
    EXPECT_FAIL("layer w_ih in", av_rnn_layer(c, AV_LSTM, av_zeros(c, 3, 2, 4, 5), &lstm.w[0][0], NULL, NULL, NULL, 0, NULL, NULL),
                 "av_rnn_layer", "[8,3]");
    EXPECT_FAIL("layer kind", av_rnn_layer(c, AV_GRU, av_zeros(c, 3, 2, 4, 3), &lstm.w[0][0], NULL, NULL, NULL, 0, NULL, NULL),
                 "w_hh must be [3H, H]", "[8,2]");
    EXPECT_FAIL("layer h0", av_rnn_layer(c, AV_LSTM, av_zeros(c, 3, 2, 4, 3), &lstm.w[0][0], av_zeros(c, 2, 3, 2), NULL, NULL, 0, NULL, NULL),
                 "h0 must be [B, H]", "[3,2]");
    EXPECT_FAIL("layer lengths", av_rnn_layer(c, AV_LSTM, av_zeros(c, 3, 2, 4, 3), &lstm.w[0][0], NULL, NULL, bad_len, 0, NULL, NULL),
                 "lengths[1] = 5", "0..4");
    EXPECT_FAIL("gru c0", av_rnn_layer(c, AV_GRU, av_zeros(c, 3, 2, 4, 3), &gru.w[0][0], NULL, av_zeros(c, 2, 2, 2), NULL, 0, NULL, NULL),
                 "av_rnn_layer", "c0");
    EXPECT_FAIL("module x", av_rnn_forward(c, &lstm, av_zeros(c, 3, 2, 4, 5), NULL, NULL, NULL, NULL, NULL), "av_rnn_forward", "[2,4,5]");
    EXPECT_FAIL("module h0", av_rnn_forward(c, &lstm, av_zeros(c, 3, 2, 4, 3), av_zeros(c, 3, 2, 2, 2), NULL, NULL, NULL, NULL),
                 "h0 must be [layers D, B, H]", "[2,2,2]");
    EXPECT_FAIL("cell kind", av_lstm_cell(c, &cell, av_zeros(c, 2, 2, 3), NULL, NULL, NULL, NULL), "av_lstm_cell", "av_gru_cell_new");
    EXPECT_FAIL("cell x", av_gru_cell(c, &cell, av_zeros(c, 2, 2, 4), NULL), "av_gru_cell", "[2,4]");
    EXPECT_FAIL("layers", av_lstm_new(m, "deep", 3, 2, AV_RNN_MAX_LAYERS + 1, 0, 0.0f), "av_lstm_new", "layers");
    av_ctx_free(c);
    av_model_free(m);
}

int main(void) {
    gc_seed(20260607);
    layer_tests();
    module_tests();
    cell_tests();
    parameter_tests();
    dropout_tests();
    repeated_backward_test();
    zero_size_test();
    thread_test();
    shape_errors();
    printf("info: worst gradcheck error %.2f of its tolerance (%s)\n", gc_worst_ratio, gc_worst_what);
    return t_summary();
}
