/* test_optim.c - optimizer updates and their state against closed forms
   computed here in double, parameter groups, refused hyperparameters,
   buffers, gradient clipping, the warmup-cosine schedule, parameter
   initialisation (bounds, statistics, reproducibility), names, and model
   files and checkpoints. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "expect_fail.h"

#define NP 6 /* values per test parameter */

/* Gradients through the public path: after zero_grad, L = sum(p * G) gives
   dL/dp = G exactly (the product's backward multiplies G by 1). */
static void set_grad(av_model *m, av_ctx *c, av_tensor *p, const float *G) {
    av_tensor *loss;
    av_model_zero_grad(m);
    av_ctx_reset(c);
    loss = av_sum_all(c, av_mul(c, p, av_from(c, G, 1, p->size)));
    av_backward(c, loss);
}

static int all_close(const float *got, const double *want, int n, double atol, double rtol, int *where) {
    int i;
    for (i = 0; i < n; i++)
        if (!(fabs(got[i] - want[i]) <= atol + rtol * fabs(want[i]))) { *where = i; return 0; }
    return 1;
}

#define CHECK_ARR(got, want, n, atol, rtol, what)                                                       \
    do {                                                                                                \
        int w_ = 0;                                                                                     \
        CHECK(all_close(got, want, n, atol, rtol, &w_), "%s: [%d] got %.9g want %.9g", what, w_,        \
              (double)(got)[w_], (want)[w_]);                                                           \
    } while (0)

static const float P0[NP] = {0.5f, -1.25f, 2.0f, 0.75f, -0.3f, 1.1f};
/* three steps of gradients; element 4 is tiny (where eps matters) and
   element 5 is zero (Adam must leave it alone) */
static const float GS[3][NP] = {
    {0.1f, -0.4f, 1.5f, -2.0f, 1e-7f, 0.0f},
    {-0.3f, 0.2f, 1.0f, 0.5f, -2e-7f, 0.0f},
    {0.05f, -0.6f, -0.7f, 1.2f, 1e-7f, 0.0f}};

static av_tensor *new_param(av_model *m, const char *name) {
    av_tensor *p = av_param(m, name, AV_INIT_ZEROS, 0, 1, NP);
    memcpy(p->data, P0, sizeof P0);
    return p;
}

static void test_sgd(void) {
    static const double lrs[3] = {0.1, 0.05, 0.2}, mus[3] = {0.0, 0.9, 0.5}, wds[3] = {0.0, 0.0, 0.01};
    int cfg;
    for (cfg = 0; cfg < 3; cfg++) {
        av_model *m = av_model_new(1);
        av_ctx *c = av_ctx_new();
        av_tensor *p = new_param(m, "p");
        av_optim o = av_sgd(lrs[cfg], mus[cfg], wds[cfg]);
        double pw[NP], v[NP];
        float state[NP];
        int s, j;
        char what[160];
        CHECK(o.kind == AV_OPT_SGD && o.lr == lrs[cfg] && o.momentum == mus[cfg] && o.weight_decay == wds[cfg], "av_sgd fields");
        for (j = 0; j < NP; j++) { pw[j] = P0[j]; v[j] = 0; }
        for (s = 0; s < 3; s++) {
            int rc;
            set_grad(m, c, p, GS[s]);
            rc = av_optim_step(m, &o);
            CHECK(rc == AV_OK, "sgd step returned %d", rc);
            /* PyTorch: g' = g + wd p; v = mu v + g' (v = g' on the first step); p -= lr v */
            for (j = 0; j < NP; j++) {
                double g = GS[s][j] + (double)wds[cfg] * pw[j];
                v[j] = s == 0 ? g : mus[cfg] * v[j] + g;
                pw[j] -= lrs[cfg] * v[j];
            }
            snprintf(what, sizeof what, "sgd lr %g mu %g wd %g step %d", lrs[cfg], mus[cfg], wds[cfg], s + 1);
            /* fp32 updates of O(1) values: a few ulps (6e-8 each) per step */
            CHECK_ARR(p->data, pw, NP, 1e-6, 1e-6, what);
            /* the momentum buffer by name: v (none without momentum: zeros) */
            CHECK(av_optim_state_get(m, "p", AV_STATE_M, state, NP) == AV_OK, "%s: state_get: %s", what, av_error());
            if (mus[cfg] == 0) for (j = 0; j < NP; j++) v[j] = 0;
            CHECK_ARR(state, v, NP, 1e-7, 1e-6, what);
            {   /* the step does not zero the gradient */
                int ok = 1;
                for (j = 0; j < NP; j++) ok &= p->grad[j] == GS[s][j];
                CHECK(ok, "%s: gradient changed by the step", what);
            }
        }
        CHECK(av_model_step(m) == 3, "sgd: av_model_step %ld, want 3", av_model_step(m));
        av_ctx_free(c);
        av_model_free(m);
    }
}

/* Adam and AdamW: values and both moments, read by name, against double
   precision. The moments hold to 1e-6 relative, which needs 1 - beta in
   double: 1.0f - 0.999f is 1.3e-5 away from 0.001. */
static void test_adam(int decoupled) {
    const double lr = 0.01, wd = decoupled ? 0.1 : 0.0, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    av_model *m = av_model_new(1);
    av_ctx *c = av_ctx_new();
    av_tensor *p = new_param(m, "p"), *q = av_param(m, "q", AV_INIT_ONES, 0, 2, 2, 3);
    av_optim o = decoupled ? av_adamw(lr, wd) : av_adam(lr);
    double pw[NP], mm[NP], vv[NP], qw[6];
    float state[NP];
    int s, j;
    char what[160];
    const char *name = decoupled ? "adamw" : "adam";
    CHECK(o.kind == (decoupled ? AV_OPT_ADAMW : AV_OPT_ADAM), "%s: kind %d", name, o.kind);
    CHECK(o.beta1 == 0.9 && o.beta2 == 0.999 && o.eps == 1e-8 && o.lr == lr && o.weight_decay == wd,
          "%s defaults: betas %.17g %.17g eps %g wd %g", name, o.beta1, o.beta2, o.eps, o.weight_decay);
    for (j = 0; j < NP; j++) { pw[j] = P0[j]; mm[j] = vv[j] = 0; }
    for (j = 0; j < 6; j++) qw[j] = 1;
    for (s = 1; s <= 3; s++) {
        double bc1 = 1 - pow(b1, s), bc2 = 1 - pow(b2, s);
        set_grad(m, c, p, GS[s - 1]); /* q gets a zero gradient */
        av_optim_step(m, &o);
        for (j = 0; j < NP; j++) {
            double g = GS[s - 1][j];
            if (decoupled) pw[j] -= lr * wd * pw[j]; /* AdamW: p -= lr wd p */
            mm[j] = b1 * mm[j] + (1 - b1) * g;
            vv[j] = b2 * vv[j] + (1 - b2) * g * g;
            /* PyTorch: p -= lr mhat / (sqrt(vhat) + eps), mhat = m/bc1, vhat = v/bc2 */
            pw[j] -= lr * (mm[j] / bc1) / (sqrt(vv[j] / bc2) + eps);
        }
        for (j = 0; j < 6; j++)
            if (decoupled) qw[j] -= lr * wd * qw[j];
        snprintf(what, sizeof what, "%s step %d", name, s);
        /* updates are ~lr = 0.01 computed in fp32: relative error ~1e-6 of
           the update plus the ulp of p; 2e-7 + 2e-6|p| is a few ulps. A
           missing bias correction moves p by ~lr, eps outside the bias
           correction moves element 4 by ~0.7 lr. */
        CHECK_ARR(p->data, pw, NP, 2e-7, 2e-6, what);
        CHECK_ARR(q->data, qw, 6, 1e-7, 1e-6, "param with zero gradient");
        /* a few float roundings per step; m's atol covers the cancellation
           in element 3 (-0.117 + 0.12) at the ulp of its terms */
        CHECK(av_optim_state_get(m, "p", AV_STATE_M, state, NP) == AV_OK, "%s: state m: %s", what, av_error());
        CHECK_ARR(state, mm, NP, 2e-8, 1e-6, "Adam's m by name");
        CHECK(av_optim_state_get(m, "p", AV_STATE_V, state, NP) == AV_OK, "%s: state v: %s", what, av_error());
        CHECK_ARR(state, vv, NP, 0, 1e-6, "Adam's v by name");
    }
    CHECK(av_model_step(m) == 3, "%s: av_model_step %ld, want 3", name, av_model_step(m));
    av_ctx_free(c);
    av_model_free(m);
}

static void test_nan_grad(void) {
    av_model *m = av_model_new(1);
    av_ctx *c = av_ctx_new();
    av_tensor *p = new_param(m, "good"), *q = new_param(m, "bad.weight");
    av_optim o = av_adam(0.1f);
    float G[NP];
    double want[NP];
    int j, rc, k;
    for (k = 0; k < 2; k++) {
        av_tensor *loss;
        memcpy(G, GS[0], sizeof G);
        G[2] = k == 0 ? (float)NAN : (float)INFINITY;
        av_model_zero_grad(m);
        av_ctx_reset(c);
        loss = av_add(c, av_sum_all(c, av_mul(c, p, av_from(c, GS[0], 1, NP))),
                      av_sum_all(c, av_mul(c, q, av_from(c, G, 1, NP))));
        av_backward(c, loss); /* q's gradient is G, with a non-finite element */
        av_clear_error();
        rc = av_optim_step(m, &o);
        CHECK(rc == AV_ERR_NAN, "%s gradient: step returned %d, want AV_ERR_NAN", k ? "inf" : "nan", rc);
        CHECK(av_error_code() == AV_ERR_NAN && strstr(av_error(), "bad.weight") != NULL,
              "non-finite gradient: error %d \"%s\" does not name the parameter", av_error_code(), av_error());
        for (j = 0; j < NP; j++) want[j] = P0[j];
        CHECK_ARR(p->data, want, NP, 0, 0, "non-finite gradient: a parameter changed");
        CHECK_ARR(q->data, want, NP, 0, 0, "non-finite gradient: the bad parameter changed");
        CHECK(av_model_step(m) == 0, "non-finite gradient: step counted (%ld)", av_model_step(m));
    }
    /* and the next good step works from unchanged state: the first Adam step is lr sign(g) */
    set_grad(m, c, p, GS[0]); /* q: zero gradient */
    rc = av_optim_step(m, &o);
    CHECK(rc == AV_OK, "good step after a bad one returned %d", rc);
    for (j = 0; j < 4; j++) want[j] = P0[j] - 0.1 * (GS[0][j] > 0 ? 1 : -1) * (fabs(GS[0][j]) / (fabs(GS[0][j]) + 1e-8));
    CHECK_ARR(p->data, want, 4, 1e-6, 1e-6, "first Adam step after a skipped one");
    av_ctx_free(c);
    av_model_free(m);
}

/* ---- a reference stepper in double, PyTorch's rules -------------------- */
typedef struct ref_state { double p[NP], m[NP], v[NP]; } ref_state;

static void ref_init(ref_state *r) {
    int j;
    for (j = 0; j < NP; j++) { r->p[j] = P0[j]; r->m[j] = r->v[j] = 0; }
}

/* step t (from 1) of kind with the group's lr and wd; mu for SGD */
static void ref_step(ref_state *r, const float *g, int kind, double lr, double wd, double mu, int t) {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    int j;
    for (j = 0; j < NP; j++) {
        double d = g[j];
        if (kind == AV_OPT_SGD) {
            d += wd * r->p[j];
            if (mu != 0) d = r->m[j] = mu * r->m[j] + d; /* the buffer starts as the first d */
            r->p[j] -= lr * d;
            continue;
        }
        if (kind == AV_OPT_ADAMW) r->p[j] -= lr * wd * r->p[j];
        else d += wd * r->p[j];
        r->m[j] = b1 * r->m[j] + (1 - b1) * d;
        r->v[j] = b2 * r->v[j] + (1 - b2) * d * d;
        r->p[j] -= lr * (r->m[j] / (1 - pow(b1, t))) / (sqrt(r->v[j] / (1 - pow(b2, t))) + eps);
    }
}

/* p's values and state against the reference (v only for Adam) */
static void check_ref(const av_model *m, const char *name, const ref_state *r, int kind, const char *what) {
    const av_tensor *p = av_model_find(m, name);
    float st[NP];
    char w[200];
    snprintf(w, sizeof w, "%s: %s values", what, name);
    CHECK_ARR(p->data, r->p, NP, 2e-7, 2e-6, w);
    snprintf(w, sizeof w, "%s: %s state m", what, name);
    CHECK(av_optim_state_get(m, name, AV_STATE_M, st, NP) == AV_OK, "%s: %s", w, av_error());
    CHECK_ARR(st, r->m, NP, 2e-8, 1e-6, w);
    if (kind == AV_OPT_SGD) return;
    snprintf(w, sizeof w, "%s: %s state v", what, name);
    CHECK(av_optim_state_get(m, name, AV_STATE_V, st, NP) == AV_OK, "%s: %s", w, av_error());
    CHECK_ARR(st, r->v, NP, 0, 1e-6, w);
}

static av_optim optim_of(int kind) {
    av_optim o = kind == AV_OPT_SGD ? av_sgd(0.1, 0.9, 0.05) : kind == AV_OPT_ADAM ? av_adam(0.01) : av_adamw(0.01, 0.1);
    if (kind == AV_OPT_ADAM) o.weight_decay = 0.05; /* L2 */
    return o;
}

/* Two groups: the weight with the optimizer's settings, the bias with half
   the learning rate and no weight decay. */
static void test_groups(void) {
    int kind;
    for (kind = AV_OPT_SGD; kind <= AV_OPT_ADAMW; kind++) {
        av_model *m = av_model_new(1);
        av_tensor *w = new_param(m, "fc.weight"), *b = new_param(m, "fc.bias");
        av_optim o = optim_of(kind);
        ref_state rw, rb;
        int nd = av_model_add_group(m, 0.5, 0.0), s;
        char what[64];
        CHECK(nd == 1, "first added group has id %d, want 1", nd);
        CHECK(av_model_set_group(m, "*.bias", nd) == 1, "set_group *.bias: %s", av_error());
        ref_init(&rw);
        ref_init(&rb);
        for (s = 1; s <= 3; s++) {
            memcpy(w->grad, GS[s - 1], sizeof GS[0]);
            memcpy(b->grad, GS[3 - s], sizeof GS[0]);
            CHECK(av_optim_step(m, &o) == AV_OK, "step: %s", av_error());
            ref_step(&rw, GS[s - 1], kind, o.lr, o.weight_decay, o.momentum, s);
            ref_step(&rb, GS[3 - s], kind, 0.5 * o.lr, 0.0, o.momentum, s);
            snprintf(what, sizeof what, "groups, kind %d, step %d", kind, s);
            check_ref(m, "fc.weight", &rw, kind, what);
            check_ref(m, "fc.bias", &rb, kind, what);
        }
        av_model_free(m);
    }
}

static void test_group_patterns(void) {
    av_model *m = av_model_new(1), *other = av_model_new(1);
    av_tensor *buf, *foreign;
    int g1, g2;
    av_param(m, "enc.fc1.weight", AV_INIT_ZEROS, 0, 1, 2);
    av_param(m, "enc.fc1.bias", AV_INIT_ZEROS, 0, 1, 2);
    av_param(m, "enc.ln.weight", AV_INIT_ZEROS, 0, 1, 2);
    av_param(m, "dec.fc.bias", AV_INIT_ZEROS, 0, 1, 2);
    av_param(m, "head", AV_INIT_ZEROS, 0, 1, 2);
    buf = av_buffer(m, "enc.bn.running_mean", AV_INIT_ZEROS, 0, 1, 2);
    foreign = av_param(other, "head", AV_INIT_ZEROS, 0, 1, 2);
    g1 = av_model_add_group(m, 1.0, 0.0);
    g2 = av_model_add_group(m, 2.0, 1.0);
    CHECK(g1 == 1 && g2 == 2, "group ids %d %d, want 1 2", g1, g2);
    CHECK(av_model_set_group(m, "*.bias", g1) == 2, "*.bias");
    CHECK(av_model_set_group(m, "enc.*", g2) == 3, "enc.* (the buffer is not a parameter)");
    CHECK(av_model_set_group(m, "enc.fc?.weight", 0) == 1, "enc.fc?.weight");
    CHECK(av_model_set_group(m, "*.weight", g1) == 2, "*.weight");
    CHECK(av_model_set_group(m, "e*c*1*", g1) == 2, "e*c*1* (backtracking)");
    CHECK(av_model_set_group(m, "*", 0) == 5, "* matches every parameter");
    CHECK(av_model_set_group(m, "head", g1) == 1 && av_model_set_group(m, "hea", g1) == 0 &&
          av_model_set_group(m, "head?", g1) == 0 && av_model_set_group(m, "head*", g1) == 1, "exact names");
    CHECK(av_model_set_group(m, "", g1) == 0 && av_model_set_group(m, "*.*.*.*", g1) == 0, "patterns that match nothing");
    CHECK(av_model_set_group(m, "*", 3) == AV_ERR_ARG && strstr(av_error(), "no group 3"), "unknown group: %s", av_error());
    CHECK(av_model_set_group(m, "*", -1) == AV_ERR_ARG, "negative group");
    CHECK(av_model_set_group(m, NULL, 0) == AV_ERR_ARG, "NULL pattern");
    CHECK(av_param_set_group(m, av_model_find(m, "head"), g2) == AV_OK, "set_group by tensor: %s", av_error());
    CHECK(av_param_set_group(m, buf, g1) == AV_ERR_ARG && strstr(av_error(), "enc.bn.running_mean"),
          "a buffer in a group: %s", av_error());
    CHECK(av_param_set_group(m, foreign, g1) == AV_ERR_ARG && strstr(av_error(), "not a parameter of this model"),
          "another model's parameter: %s", av_error());
    CHECK(av_model_add_group(m, NAN, 0) == AV_ERR_ARG && av_model_add_group(m, 1, -1) == AV_ERR_ARG &&
          av_model_add_group(m, INFINITY, 0) == AV_ERR_ARG && strstr(av_error(), "finite"),
          "bad group scales: %s", av_error());
    CHECK(av_model_add_group(m, 0, 0) == 3, "a third group");
    av_model_free(m);
    av_model_free(other);
}

/* A refused step changes nothing: values, state, step. */
static void test_refused_hyper(void) {
    static const struct { const char *what; int kind; double lr, mom, b1, b2, eps, wd; } bad[] = {
        {"lr", AV_OPT_ADAM, NAN, 0, 0.9, 0.999, 1e-8, 0},
        {"lr", AV_OPT_ADAM, INFINITY, 0, 0.9, 0.999, 1e-8, 0},
        {"lr", AV_OPT_ADAMW, -0.01, 0, 0.9, 0.999, 1e-8, 0},
        {"lr", AV_OPT_SGD, 1e39, 0, 0, 0, 0, 0}, /* beyond float */
        {"weight_decay", AV_OPT_ADAMW, 0.01, 0, 0.9, 0.999, 1e-8, NAN},
        {"weight_decay", AV_OPT_SGD, 0.01, 0, 0, 0, 0, -0.1},
        {"beta1", AV_OPT_ADAM, 0.01, 0, 1.0, 0.999, 1e-8, 0},
        {"beta1", AV_OPT_ADAM, 0.01, 0, -0.1, 0.999, 1e-8, 0},
        {"beta2", AV_OPT_ADAMW, 0.01, 0, 0.9, 1.0, 1e-8, 0},
        {"beta2", AV_OPT_ADAM, 0.01, 0, 0.9, NAN, 1e-8, 0},
        {"eps", AV_OPT_ADAM, 0.01, 0, 0.9, 0.999, -1e-8, 0},
        {"eps", AV_OPT_ADAM, 0.01, 0, 0.9, 0.999, NAN, 0},
        {"momentum", AV_OPT_SGD, 0.01, -0.5, 0, 0, 0, 0},
        {"momentum", AV_OPT_SGD, 0.01, 1.5, 0, 0, 0, 0},
        {"momentum", AV_OPT_SGD, 0.01, NAN, 0, 0, 0, 0},
        {"kind", 7, 0.01, 0, 0, 0, 0, 0},
    };
    av_model *m = av_model_new(1);
    av_tensor *p = new_param(m, "p");
    av_optim good = av_adam(0.01);
    float before[NP], m0[NP], v0[NP], st[NP];
    int i, rc;
    memcpy(p->grad, GS[0], sizeof GS[0]);
    CHECK(av_optim_step(m, &good) == AV_OK, "a first good step: %s", av_error());
    memcpy(p->grad, GS[1], sizeof GS[1]);
    memcpy(before, p->data, sizeof before);
    av_optim_state_get(m, "p", AV_STATE_M, m0, NP);
    av_optim_state_get(m, "p", AV_STATE_V, v0, NP);
    for (i = 0; i < (int)(sizeof bad / sizeof bad[0]); i++) {
        av_optim o;
        o.kind = bad[i].kind; o.lr = bad[i].lr; o.momentum = bad[i].mom; o.beta1 = bad[i].b1;
        o.beta2 = bad[i].b2; o.eps = bad[i].eps; o.weight_decay = bad[i].wd;
        av_clear_error();
        rc = av_optim_step(m, &o);
        CHECK(rc == AV_ERR_ARG && strstr(av_error(), bad[i].what), "bad %s (case %d): rc %d, \"%s\"", bad[i].what, i, rc,
              av_error());
        CHECK(memcmp(p->data, before, sizeof before) == 0 && av_model_step(m) == 1, "bad %s (case %d) changed the model",
              bad[i].what, i);
        av_optim_state_get(m, "p", AV_STATE_M, st, NP);
        CHECK(memcmp(st, m0, sizeof st) == 0, "bad %s (case %d) changed m", bad[i].what, i);
        av_optim_state_get(m, "p", AV_STATE_V, st, NP);
        CHECK(memcmp(st, v0, sizeof st) == 0, "bad %s (case %d) changed v", bad[i].what, i);
    }
    {   /* a group's scale can push lr beyond float */
        av_optim o = av_adam(1e10);
        int g = av_model_add_group(m, 1e30, 1.0);
        av_param_set_group(m, p, g);
        CHECK(av_optim_step(m, &o) == AV_ERR_ARG && strstr(av_error(), "group 1"), "lr x group scale: %s", av_error());
        av_param_set_group(m, p, 0);
    }
    /* the step count's limit */
    CHECK(av_model_set_step(m, -1) == AV_ERR_ARG && av_model_set_step(m, AV_MAX_STEP + 1) == AV_ERR_ARG,
          "set_step out of range accepted");
    CHECK(av_model_set_step(m, AV_MAX_STEP) == AV_OK, "set_step to the limit: %s", av_error());
    CHECK(av_optim_step(m, &good) == AV_ERR_ARG && strstr(av_error(), "limit") && av_model_step(m) == AV_MAX_STEP &&
          memcmp(p->data, before, sizeof before) == 0, "a step past AV_MAX_STEP: %s", av_error());
    av_model_set_step(m, 1);
    CHECK(av_optim_step(m, &good) == AV_OK && memcmp(p->data, before, sizeof before) != 0, "a good step after refusals");
    av_model_free(m);
}

/* State set by name (as when importing PyTorch's), then steps continue from it. */
static void test_state_by_name(void) {
    static const float m0[NP] = {0.02f, -0.05f, 0.1f, 0.0f, 1e-8f, -0.3f};
    static const float v0[NP] = {4e-4f, 1e-3f, 2e-3f, 0.0f, 1e-15f, 5e-2f};
    int kind;
    for (kind = AV_OPT_SGD; kind <= AV_OPT_ADAMW; kind++) {
        av_model *m = av_model_new(1);
        av_tensor *p = new_param(m, "p");
        av_optim o = optim_of(kind);
        ref_state r;
        int j;
        char what[64];
        av_buffer(m, "buf", AV_INIT_ZEROS, 0, 1, NP);
        ref_init(&r);
        for (j = 0; j < NP; j++) { r.m[j] = m0[j]; r.v[j] = v0[j]; }
        CHECK(av_optim_state_set(m, "p", AV_STATE_M, m0, NP) == AV_OK &&
              av_optim_state_set(m, "p", AV_STATE_V, v0, NP) == AV_OK && av_model_set_step(m, 4) == AV_OK,
              "state_set: %s", av_error());
        memcpy(p->grad, GS[0], sizeof GS[0]);
        CHECK(av_optim_step(m, &o) == AV_OK, "step from set state: %s", av_error());
        ref_step(&r, GS[0], kind, o.lr, o.weight_decay, o.momentum, 5);
        snprintf(what, sizeof what, "state set by name, kind %d", kind);
        check_ref(m, "p", &r, kind, what);
        av_model_free(m);
    }
    {
        av_model *m = av_model_new(1);
        float st[NP];
        new_param(m, "p");
        av_buffer(m, "buf", AV_INIT_ZEROS, 0, 1, NP);
        CHECK(av_optim_state_get(m, "p", AV_STATE_V, st, NP) == AV_OK && st[0] == 0 && st[5] == 0,
              "state before any step reads as zeros");
        CHECK(av_optim_state_get(m, "nope", AV_STATE_M, st, NP) == AV_ERR_ARG && strstr(av_error(), "'nope'"),
              "unknown name: %s", av_error());
        CHECK(av_optim_state_get(m, NULL, AV_STATE_M, st, NP) == AV_ERR_ARG, "NULL name");
        CHECK(av_optim_state_set(m, "buf", AV_STATE_M, st, NP) == AV_ERR_ARG && strstr(av_error(), "buffer"),
              "a buffer's state: %s", av_error());
        CHECK(av_optim_state_get(m, "p", 2, st, NP) == AV_ERR_ARG && strstr(av_error(), "which"), "which 2: %s", av_error());
        CHECK(av_optim_state_set(m, "p", AV_STATE_M, st, NP - 1) == AV_ERR_ARG && strstr(av_error(), "6 values"),
              "wrong n: %s", av_error());
        CHECK(av_optim_state_get(m, "p", AV_STATE_M, NULL, NP) == AV_ERR_ARG, "NULL destination");
        av_model_free(m);
    }
}

/* ---- buffers: saved with the model, never trained ------------------------ */
static void test_buffers(void) {
    const char *path = "build/test_optim_buffers.safetensors", *ckpt = "build/test_optim_buffers_ckpt.safetensors";
    static const int ushape[1] = {4000};
    static const float running[4] = {0.5f, -1.0f, 2.0f, 0.25f};
    av_model *m = av_model_new(3), *twin;
    av_ctx *c = av_ctx_new();
    av_tensor *w = av_param(m, "bn.weight", AV_INIT_ONES, 0, 1, 4);
    av_tensor *rm = av_buffer(m, "bn.running_mean", AV_INIT_ZEROS, 0, 1, 4);
    av_tensor *rv = av_buffer(m, "bn.running_var", AV_INIT_ONES, 0, 1, 4);
    av_tensor *nbt = av_buffer(m, "bn.num_batches_tracked", AV_INIT_ZEROS, 0, 0);
    av_tensor *u = av_buffer_shape(m, "sn.u", AV_INIT_NORMAL, 1.0f, 1, ushape), *y;
    av_optim o = av_adamw(0.1, 0.5);
    float keep_rv[4], wgrad[4] = {1, 2, 3, 4};
    double mean = 0, var = 0;
    av_st_file *f;
    int i, k, ok;
    CHECK(!rm->requires_grad && !rm->grad && !nbt->requires_grad && nbt->ndim == 0 && nbt->size == 1,
          "a buffer has no gradient");
    CHECK(rm->data[3] == 0 && rv->data[0] == 1 && rv->data[3] == 1 && nbt->data[0] == 0, "buffer zeros/ones init");
    for (i = 0; i < u->size; i++) mean += u->data[i];
    mean /= u->size;
    for (i = 0; i < u->size; i++) var += (u->data[i] - mean) * (u->data[i] - mean);
    var /= u->size;
    /* N(0, 1) with N = 4000: 5 standard errors */
    CHECK(fabs(mean) < 5 / sqrt(4000.0) && fabs(sqrt(var) - 1) < 5 * 0.7072 / sqrt(4000.0), "buffer normal init: mean %g std %g",
          mean, sqrt(var));
    CHECK(av_model_count(m) == 1 && av_model_param(m, 0) == w && av_model_num_values(m) == 4, "parameters exclude buffers");
    CHECK(av_model_buffer_count(m) == 4 && av_model_buffer(m, 0) == rm && av_model_buffer(m, 3) == u &&
          av_model_buffer(m, 4) == NULL && av_model_buffer(m, -1) == NULL, "the buffer list");
    CHECK(av_model_find(m, "bn.running_var") == rv && av_model_find(m, "bn.weight") == w, "av_model_find finds both kinds");
    CHECK(av_model_set_group(m, "bn.*", av_model_add_group(m, 1, 0)) == 1, "groups hold parameters only");

    /* in a graph a buffer is a constant: the parameter gets its gradient */
    memcpy(rm->data, running, sizeof running);
    y = av_mul(c, av_sub(c, av_from(c, wgrad, 1, 4), rm), w);
    av_model_zero_grad(m);
    av_backward(c, av_sum_all(c, y));
    CHECK(rm->grad == NULL && fabs(w->grad[0] - (1 - 0.5)) < 1e-7, "backward through a buffer");
    /* AdamW with weight decay, clipping, zero_grad: buffers stay as they are */
    memcpy(keep_rv, rv->data, sizeof keep_rv);
    for (k = 0; k < 3; k++) {
        memcpy(w->grad, wgrad, sizeof wgrad);
        CHECK_CLOSE(av_grad_norm(m), sqrt(30.0), 0, 1e-6, "the grad norm counts parameters only");
        av_clip_grad_norm(m, 1.0f);
        CHECK(av_optim_step(m, &o) == AV_OK, "step with buffers: %s", av_error());
        av_model_zero_grad(m);
    }
    CHECK(memcmp(rm->data, running, sizeof running) == 0 && memcmp(rv->data, keep_rv, sizeof keep_rv) == 0 &&
          nbt->data[0] == 0, "an optimizer step changed a buffer");
    CHECK(w->data[0] != 1.0f, "the parameter did not move");

    /* files: buffers go with the model; a checkpoint has no state for them */
    nbt->data[0] = 7;
    CHECK(av_model_save(m, path) == AV_OK && av_checkpoint_save(m, ckpt) == AV_OK, "save with buffers: %s", av_error());
    twin = av_model_new(4);
    av_param(twin, "bn.weight", AV_INIT_ONES, 0, 1, 4);
    av_buffer(twin, "bn.running_mean", AV_INIT_ZEROS, 0, 1, 4);
    av_buffer(twin, "bn.running_var", AV_INIT_ONES, 0, 1, 4);
    av_buffer(twin, "bn.num_batches_tracked", AV_INIT_ZEROS, 0, 0);
    CHECK(av_model_load(twin, path) == AV_ERR_MISMATCH && strstr(av_error(), "unexpected tensor 'sn.u'"),
          "a file with a buffer the model lacks: %s", av_error());
    av_buffer_shape(twin, "sn.u", AV_INIT_ZEROS, 0, 1, ushape);
    CHECK(av_checkpoint_load(twin, ckpt) == AV_OK, "checkpoint with buffers: %s", av_error());
    ok = 1;
    for (k = 0; k < av_model_buffer_count(m); k++) {
        const av_tensor *a = av_model_buffer(m, k), *b = av_model_find(twin, a->name);
        ok &= b && !memcmp(a->data, b->data, (size_t)a->size * sizeof(float));
    }
    CHECK(ok && av_model_find(twin, "bn.num_batches_tracked")->data[0] == 7, "buffers did not round-trip");
    CHECK(av_st_open(ckpt, &f) == AV_OK, "reopen: %s", av_error());
    CHECK(av_st_count(f) == 7 && av_st_find(f, "optim.m.bn.weight") >= 0 && av_st_find(f, "optim.v.bn.weight") >= 0 &&
          av_st_find(f, "bn.running_mean") >= 0 && av_st_find(f, "optim.m.bn.running_mean") < 0,
          "checkpoint holds %d tensors, want 5 values + state of the 1 parameter", av_st_count(f));
    av_st_close(f);
    av_model_free(twin);
    twin = av_model_new(4);
    av_param(twin, "bn.weight", AV_INIT_ONES, 0, 1, 4);
    av_buffer(twin, "bn.running_mean", AV_INIT_ZEROS, 0, 1, 4);
    av_buffer(twin, "bn.extra", AV_INIT_ZEROS, 0, 1, 4);
    CHECK(av_model_load(twin, path) == AV_ERR_MISMATCH && strstr(av_error(), "missing tensor 'bn.extra'"),
          "a buffer missing from the file: %s", av_error());
    av_model_free(twin);
    remove(path);
    remove(ckpt);
    av_ctx_free(c);
    av_model_free(m);
}

/* ---- names: programming errors abort with a clear message ---------------- */
static void test_names(void) {
    av_model *m = av_model_new(1);
    printf("(the lines starting with \"attnvae:\" below are expected)\n");
    fflush(stdout);
    av_param(m, "dup", AV_INIT_ZEROS, 0, 1, 2);
    EXPECT_FAIL("NULL name", av_param(m, NULL, AV_INIT_ZEROS, 0, 1, 2), "av_param", "a tensor needs a name, got NULL");
    EXPECT_FAIL("empty name", av_buffer(m, "", AV_INIT_ZEROS, 0, 1, 2), "av_buffer", "a tensor needs a name");
    EXPECT_FAIL("__metadata__", av_param(m, "__metadata__", AV_INIT_ZEROS, 0, 1, 2), "av_param", "reserved by safetensors");
    EXPECT_FAIL("checkpoint prefix", av_param(m, "optim.m.w", AV_INIT_ZEROS, 0, 1, 2), "'optim.m.w'",
                "reserved for optimizer state");
    EXPECT_FAIL("checkpoint prefix", av_buffer(m, "optim.v.w", AV_INIT_ZEROS, 0, 1, 2), "'optim.v.w'",
                "reserved for optimizer state");
    EXPECT_FAIL("duplicate", av_buffer(m, "dup", AV_INIT_ZEROS, 0, 1, 2), "av_buffer", "a tensor named 'dup' exists already");
    EXPECT_FAIL("unknown init", av_param(m, "w", 99, 0, 1, 2), "av_param 'w'", "unknown init 99");
    EXPECT_FAIL("negative size", av_param(m, "w", AV_INIT_ZEROS, 0, 2, 3, -1), "av_param 'w'", "negative size -1");
    EXPECT_FAIL("clip max_norm", av_clip_grad_norm(m, -1.0f), "av_clip_grad_norm", "max_norm is -1");
    CHECK(av_model_count(m) == 1 && av_model_buffer_count(m) == 0 && av_model_error(m) == AV_OK,
          "refused names changed the model");
    /* names that only look special are fine */
    CHECK(av_param(m, "optim.w", AV_INIT_ZEROS, 0, 1, 2) && av_param(m, "__metadata", AV_INIT_ZEROS, 0, 1, 2),
          "ordinary names refused");
    av_model_free(m);
}

static void test_clip(void) {
    av_model *m = av_model_new(1);
    av_ctx *c = av_ctx_new();
    av_tensor *a = av_param(m, "a", AV_INIT_ZEROS, 0, 2, 2, 3), *b = av_param(m, "b", AV_INIT_ZEROS, 0, 1, 4);
    static const float ga[6] = {3.0f, -4.0f, 1.0f, 0.5f, -2.0f, 0.0f}, gb[4] = {1.5f, 2.5f, -0.5f, 1.0f};
    double ss = 0, norm, s, want_a[6], want_b[4];
    float n1, n2;
    int j;
    for (j = 0; j < 6; j++) ss += (double)ga[j] * ga[j];
    for (j = 0; j < 4; j++) ss += (double)gb[j] * gb[j];
    norm = sqrt(ss);
    memcpy(a->grad, ga, sizeof ga);
    memcpy(b->grad, gb, sizeof gb);
    CHECK_CLOSE(av_grad_norm(m), norm, 0, 1e-6, "av_grad_norm over two parameters");
    /* max_norm above the norm: nothing changes */
    n1 = av_clip_grad_norm(m, 100.0f);
    CHECK_CLOSE(n1, norm, 0, 1e-6, "clip_grad_norm return (no clipping)");
    CHECK(memcmp(a->grad, ga, sizeof ga) == 0 && memcmp(b->grad, gb, sizeof gb) == 0, "clip_grad_norm changed grads below max_norm");
    /* clipping to 2: every grad scaled by 2/norm (PyTorch divides by norm + 1e-6) */
    n2 = av_clip_grad_norm(m, 2.0f);
    CHECK_CLOSE(n2, norm, 0, 1e-6, "clip_grad_norm returns the norm before clipping");
    s = 2.0 / (norm + 1e-6);
    for (j = 0; j < 6; j++) want_a[j] = ga[j] * s;
    for (j = 0; j < 4; j++) want_b[j] = gb[j] * s;
    CHECK_ARR(a->grad, want_a, 6, 1e-7, 1e-6, "clipped grads of a");
    CHECK_ARR(b->grad, want_b, 4, 1e-7, 1e-6, "clipped grads of b");
    CHECK_CLOSE(av_grad_norm(m), 2.0, 0, 2e-6, "norm after clipping");
    av_model_zero_grad(m);
    CHECK(av_grad_norm(m) == 0.0f && av_clip_grad_norm(m, 1.0f) == 0.0f, "zero grads: norm not 0");
    CHECK(a->grad[0] == 0.0f, "clipping zero grads made them nonzero (NaN?)");
    av_ctx_free(c);
    av_model_free(m);
}

static double ref_lr(long step, long warmup, long total, double lr_max, double lr_min) {
    double p;
    if (step < warmup) return lr_max * (double)(step + 1) / (double)warmup;
    p = total > warmup ? (double)(step - warmup) / (double)(total - warmup) : 1.0;
    if (p < 0) p = 0;
    if (p > 1) p = 1;
    return lr_min + (lr_max - lr_min) * 0.5 * (1 + cos(3.14159265358979323846 * p));
}

static void test_schedule(void) {
    static const long steps[] = {0, 1, 5, 9, 10, 11, 30, 55, 99, 100, 101, 1000};
    const long warmup = 10, total = 100;
    const float lr_max = 3e-3f, lr_min = 1e-5f;
    int i;
    for (i = 0; i < (int)(sizeof steps / sizeof steps[0]); i++) {
        char what[160];
        snprintf(what, sizeof what, "lr_warmup_cosine step %ld", steps[i]);
        CHECK_CLOSE(av_lr_warmup_cosine(steps[i], warmup, total, lr_max, lr_min),
                    ref_lr(steps[i], warmup, total, lr_max, lr_min), 1e-10, 1e-6, what);
    }
    /* landmarks, stated directly */
    CHECK_CLOSE(av_lr_warmup_cosine(0, 10, 100, 1.0f, 0.0f), 0.1, 0, 1e-6, "first warmup step = lr_max/warmup");
    CHECK_CLOSE(av_lr_warmup_cosine(9, 10, 100, 1.0f, 0.0f), 1.0, 0, 1e-6, "last warmup step = lr_max");
    CHECK_CLOSE(av_lr_warmup_cosine(10, 10, 100, 1.0f, 0.0f), 1.0, 0, 1e-6, "cosine starts at lr_max");
    CHECK_CLOSE(av_lr_warmup_cosine(55, 10, 100, 1.0f, 0.2f), 0.6, 0, 1e-6, "cosine midpoint = (max+min)/2");
    CHECK_CLOSE(av_lr_warmup_cosine(100, 10, 100, 1.0f, 0.2f), 0.2, 0, 1e-6, "end = lr_min");
    CHECK_CLOSE(av_lr_warmup_cosine(500, 10, 100, 1.0f, 0.2f), 0.2, 0, 1e-6, "past the end = lr_min");
    CHECK_CLOSE(av_lr_warmup_cosine(0, 0, 100, 1.0f, 0.0f), 1.0, 0, 1e-6, "no warmup: step 0 = lr_max");
    {   /* non-increasing after warmup */
        long s;
        int ok = 1;
        for (s = 10; s < 120; s++) ok &= av_lr_warmup_cosine(s + 1, 10, 100, 1.0f, 0.1f) <= av_lr_warmup_cosine(s, 10, 100, 1.0f, 0.1f);
        CHECK(ok, "schedule increases after warmup");
    }
}

/* ---- initialisation ---- */
typedef struct { double mean, std, maxabs, frac1; } stats;
static stats stats_of(const av_tensor *t, double sigma_for_frac) {
    stats s;
    double sum = 0, ss = 0;
    int i, in1 = 0;
    s.maxabs = 0;
    for (i = 0; i < t->size; i++) {
        double v = t->data[i];
        sum += v;
        ss += v * v;
        if (fabs(v) > s.maxabs) s.maxabs = fabs(v);
        if (fabs(v) < sigma_for_frac) in1++;
    }
    s.mean = sum / t->size;
    s.std = sqrt(ss / t->size - s.mean * s.mean);
    s.frac1 = (double)in1 / t->size;
    return s;
}

/* Tolerances from the sample size N, at 5 standard errors (a correct
   implementation fails with probability ~1e-6; and the seed is fixed):
   mean: SE = sigma/sqrt(N).
   std, normal: relative SE of the sample std = 1/sqrt(2N).
   std, uniform (kurtosis 1.8): relative SE = sqrt(0.8/(4N)) = 0.447/sqrt(N).
   uniform bound b: no value beyond b, and max|x| >= b(1 - 20/N) (else the
   bound is too small: P(max|x| < b(1-d)) = (1-d)^N = e^-20).
   normal shape: P(|x| < sigma) = 0.6827, SE sqrt(0.6827*0.3173/N). */
static void check_init(av_model *m, const char *name, int init, float arg, int ndim, const int *shape,
                       int uniform, double expect /* bound or std */) {
    av_tensor *t;
    stats s;
    double N, sigma;
    char what[128];
    switch (ndim) {
    case 1: t = av_param(m, name, init, arg, 1, shape[0]); break;
    case 2: t = av_param(m, name, init, arg, 2, shape[0], shape[1]); break;
    case 3: t = av_param(m, name, init, arg, 3, shape[0], shape[1], shape[2]); break;
    default: t = av_param(m, name, init, arg, 4, shape[0], shape[1], shape[2], shape[3]); break;
    }
    N = t->size;
    sigma = uniform ? expect / sqrt(3.0) : expect;
    s = stats_of(t, sigma);
    CHECK(t->requires_grad && t->name && strcmp(t->name, name) == 0, "%s: flags or name", name);
    snprintf(what, sizeof what, "%s mean", name);
    CHECK_CLOSE(s.mean, 0.0, 5 * sigma / sqrt(N), 0, what);
    snprintf(what, sizeof what, "%s std", name);
    CHECK_CLOSE(s.std, sigma, 0, 5 * (uniform ? 0.447 : 0.7072) / sqrt(N), what);
    if (uniform) {
        CHECK(s.maxabs <= expect * (1 + 1e-6), "%s: value %.9g beyond the bound %.9g", name, s.maxabs, expect);
        CHECK(s.maxabs >= expect * (1 - 20 / N), "%s: max |x| %.9g, bound %.9g: bound too small?", name, s.maxabs, expect);
    } else {
        snprintf(what, sizeof what, "%s P(|x| < std) (normal shape)", name);
        CHECK_CLOSE(s.frac1, 0.682689, 5 * sqrt(0.682689 * 0.317311 / N), 0, what);
    }
}

static void test_init(void) {
    av_model *m = av_model_new(2024);
    static const int s2[2] = {200, 300};      /* fan_in 300, fan_out 200 */
    static const int s4[4] = {16, 8, 5, 5};   /* fan_in 8*25 = 200, fan_out 16*25 = 400 */
    static const int s3[3] = {40, 30, 10};    /* fan_in 300, fan_out 400 */
    av_tensor *z, *o;
    int i, ok;
    check_init(m, "normal", AV_INIT_NORMAL, 0.5f, 2, s2, 0, 0.5);
    check_init(m, "uniform", AV_INIT_UNIFORM, 0.3f, 2, s2, 1, 0.3);
    check_init(m, "xavier_u2", AV_INIT_XAVIER_UNIFORM, 0, 2, s2, 1, sqrt(6.0 / (300 + 200)));
    check_init(m, "xavier_n2", AV_INIT_XAVIER_NORMAL, 0, 2, s2, 0, sqrt(2.0 / (300 + 200)));
    check_init(m, "kaiming_u2", AV_INIT_KAIMING_UNIFORM, 0, 2, s2, 1, sqrt(2.0) * sqrt(3.0 / 300));
    check_init(m, "kaiming_n2", AV_INIT_KAIMING_NORMAL, 0, 2, s2, 0, sqrt(2.0 / 300));
    check_init(m, "torch_linear2", AV_INIT_TORCH_LINEAR, 0, 2, s2, 1, 1.0 / sqrt(300.0));
    check_init(m, "xavier_u4", AV_INIT_XAVIER_UNIFORM, 0, 4, s4, 1, sqrt(6.0 / (200 + 400)));
    check_init(m, "xavier_n4", AV_INIT_XAVIER_NORMAL, 0, 4, s4, 0, sqrt(2.0 / (200 + 400)));
    check_init(m, "kaiming_u4", AV_INIT_KAIMING_UNIFORM, 0, 4, s4, 1, sqrt(6.0 / 200));
    check_init(m, "kaiming_n4", AV_INIT_KAIMING_NORMAL, 0, 4, s4, 0, sqrt(2.0 / 200));
    check_init(m, "torch_linear4", AV_INIT_TORCH_LINEAR, 0, 4, s4, 1, 1.0 / sqrt(200.0));
    check_init(m, "xavier_u3", AV_INIT_XAVIER_UNIFORM, 0, 3, s3, 1, sqrt(6.0 / (300 + 400)));
    check_init(m, "torch_linear3", AV_INIT_TORCH_LINEAR, 0, 3, s3, 1, 1.0 / sqrt(300.0));
    z = av_param(m, "zeros", AV_INIT_ZEROS, 0, 2, 7, 9);
    o = av_param(m, "ones", AV_INIT_ONES, 0, 3, 2, 3, 4);
    ok = 1;
    for (i = 0; i < z->size; i++) ok &= z->data[i] == 0.0f;
    for (i = 0; i < o->size; i++) ok &= o->data[i] == 1.0f;
    CHECK(ok && z->size == 63 && o->size == 24, "zeros/ones init not exact");
    ok = 1;
    for (i = 0; i < z->size; i++) ok &= z->grad == NULL || z->grad[i] == 0.0f;
    CHECK(ok, "a new parameter's gradient is not zero");

    /* the store */
    CHECK(av_model_count(m) == 16, "av_model_count %d, want 16", av_model_count(m));
    CHECK(av_model_num_values(m) == 60000L * 7 + 3200L * 5 + 12000L * 2 + 63 + 24, "av_model_num_values %ld", av_model_num_values(m));
    CHECK(av_model_find(m, "kaiming_n4") == av_model_param(m, 10), "av_model_find / av_model_param disagree (order of creation)");
    CHECK(av_model_find(m, "nope") == NULL && av_model_param(m, 16) == NULL && av_model_param(m, -1) == NULL,
          "missing names and bad indices must give NULL");
    av_model_free(m);
}

static void test_reproducible(void) {
    av_model *a = av_model_new(77), *b = av_model_new(77), *d = av_model_new(78);
    av_tensor *pa, *pb, *pd, *qa, *qb;
    pa = av_param(a, "w", AV_INIT_XAVIER_NORMAL, 0, 2, 30, 20);
    qa = av_param(a, "v", AV_INIT_KAIMING_UNIFORM, 0, 2, 10, 30);
    pb = av_param(b, "w", AV_INIT_XAVIER_NORMAL, 0, 2, 30, 20);
    qb = av_param(b, "v", AV_INIT_KAIMING_UNIFORM, 0, 2, 10, 30);
    pd = av_param(d, "w", AV_INIT_XAVIER_NORMAL, 0, 2, 30, 20);
    CHECK(memcmp(pa->data, pb->data, 600 * sizeof(float)) == 0 && memcmp(qa->data, qb->data, 300 * sizeof(float)) == 0,
          "same seed, different initial values");
    CHECK(memcmp(pa->data, pd->data, 600 * sizeof(float)) != 0, "different seeds, same initial values");
    CHECK(memcmp(pa->data, qa->data, 300 * sizeof(float)) != 0, "two parameters of one model share values");
    av_model_free(a);
    av_model_free(b);
    av_model_free(d);
    {   /* the context RNG too */
        av_rng r1, r2;
        int i, same = 1;
        av_rng_seed(&r1, 5);
        av_rng_seed(&r2, 5);
        for (i = 0; i < 100; i++) same &= av_rng_u64(&r1) == av_rng_u64(&r2);
        CHECK(same, "av_rng: same seed, different stream");
        for (i = 0, same = 1; i < 1000; i++) {
            float u = av_rng_uniform(&r1);
            same &= u >= 0.0f && u < 1.0f;
        }
        CHECK(same, "av_rng_uniform outside [0, 1)");
    }
}

static void test_layers(void) {
    av_model *m = av_model_new(9);
    av_ctx *c = av_ctx_new();
    av_linear_layer l = av_linear_layer_new(m, "enc.fc1", 5, 3, 1), nb = av_linear_layer_new(m, "enc.fc2", 3, 2, 0);
    float x[10];
    av_tensor *xt, *y1, *y2;
    int i, ok;
    CHECK(l.weight == av_model_find(m, "enc.fc1.weight") && l.bias == av_model_find(m, "enc.fc1.bias"), "linear layer names");
    CHECK(l.weight->ndim == 2 && l.weight->shape[0] == 3 && l.weight->shape[1] == 5 && l.bias->ndim == 1 && l.bias->shape[0] == 3,
          "linear layer shapes (weight [out, in], bias [out])");
    CHECK(nb.bias == NULL && av_model_find(m, "enc.fc2.bias") == NULL && av_model_count(m) == 3, "layer without bias");
    for (i = 0; i < 10; i++) x[i] = 0.1f * (float)i - 0.4f;
    xt = av_from(c, x, 2, 2, 5);
    y1 = av_linear_forward(c, &l, xt);
    y2 = av_linear(c, xt, l.weight, l.bias);
    ok = y1->size == 6 && y2->size == 6;
    for (i = 0; ok && i < 6; i++) ok &= y1->data[i] == y2->data[i];
    CHECK(ok, "av_linear_forward differs from av_linear");
    av_ctx_free(c);
    av_model_free(m);
}

/* ---- model files and checkpoints ---------------------------------------- */
/* A tiny regression net trained with AdamW; its loss and gradients are
   deterministic, so runs can be compared bit for bit. */
typedef struct tiny { av_model *m; av_linear_layer l1, l2; } tiny;

static tiny tiny_new(uint64_t seed) {
    tiny t;
    t.m = av_model_new(seed);
    t.l1 = av_linear_layer_new(t.m, "l1", 3, 5, 1);
    t.l2 = av_linear_layer_new(t.m, "l2", 5, 2, 1);
    return t;
}

static void tiny_steps(tiny *t, av_ctx *c, int steps) {
    static const float x[12] = {0.1f, -0.4f, 0.9f, 1.2f, 0.3f, -0.7f, -1.1f, 0.5f, 0.2f, 0.6f, -0.2f, 0.8f};
    static const float y[8] = {0.5f, -1.0f, 0.25f, 0.75f, -0.5f, 1.5f, 0.0f, -0.25f};
    av_optim opt = av_adamw(0.05f, 0.01f);
    int i;
    for (i = 0; i < steps; i++) {
        av_tensor *h, *loss;
        av_ctx_reset(c);
        h = av_tanh(c, av_linear_forward(c, &t->l1, av_from(c, x, 2, 4, 3)));
        loss = av_mse_loss(c, av_linear_forward(c, &t->l2, h), av_from(c, y, 2, 4, 2), AV_MEAN);
        av_model_zero_grad(t->m);
        av_backward(c, loss);
        av_optim_step(t->m, &opt);
    }
}

static int same_values(const av_model *a, const av_model *b) {
    int i;
    if (av_model_count(a) != av_model_count(b)) return 0;
    for (i = 0; i < av_model_count(a); i++) {
        const av_tensor *p = av_model_param(a, i), *q = av_model_find(b, p->name);
        if (!q || p->size != q->size || memcmp(p->data, q->data, (size_t)p->size * sizeof(float))) return 0;
    }
    return 1;
}

static void test_files(void) {
    const char *model_path = "build/test_optim_model.safetensors", *ckpt_path = "build/test_optim_ckpt.safetensors";
    av_ctx *c = av_ctx_new();
    tiny a = tiny_new(1), b = tiny_new(2), straight = tiny_new(1);
    av_model *other;
    float keep, *held, st[15];
    int rc, j;

    /* round trip: a model loads into a differently initialised twin exactly,
       into the tensors' own buffers: a pointer taken before sees the values */
    tiny_steps(&a, c, 3);
    rc = av_model_save(a.m, model_path);
    CHECK(rc == AV_OK, "av_model_save: %s", av_error());
    CHECK(!same_values(a.m, b.m), "the twin starts different");
    held = b.l1.weight->data;
    rc = av_model_load(b.m, model_path);
    CHECK(rc == AV_OK && same_values(a.m, b.m), "av_model_load round trip: %s", av_error());
    CHECK(b.l1.weight->data == held, "av_model_load replaced a tensor's data: pointers taken before dangle");

    /* resume: 3 steps, checkpoint, 4 more in a fresh model == 7 steps straight */
    rc = av_checkpoint_save(a.m, ckpt_path);
    CHECK(rc == AV_OK, "av_checkpoint_save: %s", av_error());
    av_model_free(b.m);
    b = tiny_new(99);
    held = b.l2.bias->data;
    rc = av_checkpoint_load(b.m, ckpt_path);
    CHECK(rc == AV_OK && av_model_step(b.m) == 3, "av_checkpoint_load: rc %d step %ld: %s", rc, av_model_step(b.m),
          av_error());
    CHECK(b.l2.bias->data == held && same_values(a.m, b.m), "av_checkpoint_load: values, in place");
    tiny_steps(&b, c, 4);
    tiny_steps(&straight, c, 7);
    CHECK(same_values(b.m, straight.m), "training resumed from a checkpoint differs from training straight through");
    /* a model file alone restarts the moments: the next steps differ */
    av_model_free(b.m);
    b = tiny_new(99);
    av_model_load(b.m, model_path); /* weights after 3 steps, fresh moments */
    tiny_steps(&b, c, 4);
    CHECK(!same_values(b.m, straight.m), "resuming without optimizer state matched exactly; the test cannot tell");

    /* files that do not fit the model are refused, and the model is untouched */
    other = av_model_new(3);
    av_param(other, "l1.weight", AV_INIT_ZEROS, 0, 2, 5, 3);
    keep = av_model_param(other, 0)->data[0];
    rc = av_model_load(other, model_path);
    CHECK(rc == AV_ERR_MISMATCH && strstr(av_error(), "unexpected tensor"), "extra tensors: rc %d (%s)", rc, av_error());
    CHECK(av_model_param(other, 0)->data[0] == keep, "a refused load changed the model");
    av_param(other, "l1.bias", AV_INIT_ZEROS, 0, 1, 5);
    av_param(other, "l2.weight", AV_INIT_ZEROS, 0, 2, 2, 5);
    av_param(other, "l2.bias", AV_INIT_ZEROS, 0, 1, 2);
    av_param(other, "extra", AV_INIT_ZEROS, 0, 1, 1);
    rc = av_model_load(other, model_path);
    CHECK(rc == AV_ERR_MISMATCH && strstr(av_error(), "missing tensor 'extra'"), "missing tensor: rc %d (%s)", rc,
          av_error());
    CHECK(av_model_param(other, 0)->data[0] == keep, "a refused load changed the model");
    av_model_free(other);
    other = av_model_new(3);
    av_param(other, "l1.weight", AV_INIT_ZEROS, 0, 2, 3, 5); /* transposed shape */
    av_param(other, "l1.bias", AV_INIT_ZEROS, 0, 1, 5);
    av_param(other, "l2.weight", AV_INIT_ZEROS, 0, 2, 2, 5);
    av_param(other, "l2.bias", AV_INIT_ZEROS, 0, 1, 2);
    rc = av_model_load(other, model_path);
    CHECK(rc == AV_ERR_MISMATCH && strstr(av_error(), "'l1.weight' has shape [5,3] in the file but [3,5] in the model"),
          "shape mismatch names both shapes: rc %d (%s)", rc, av_error());
    av_model_free(other);
    rc = av_model_load(a.m, "build/no/such/file.safetensors");
    CHECK(rc == AV_ERR_IO && strstr(av_error(), "no/such/file"), "missing file: rc %d (%s)", rc, av_error());
    /* a directory: the message names it and says why */
    rc = av_model_load(a.m, "build");
    CHECK(rc == AV_ERR_IO && strncmp(av_error(), "build: ", 7) == 0 && strlen(av_error()) > 12,
          "a directory: rc %d (%s)", rc, av_error());
    /* a checkpoint without optimizer state restarts the state from zero */
    other = tiny_new(5).m;
    rc = av_checkpoint_save(other, ckpt_path); /* no step taken: no state */
    CHECK(rc == AV_OK && av_optim_state_get(b.m, "l1.weight", AV_STATE_V, st, 15) == AV_OK && st[0] != 0,
          "b has state: %s", av_error());
    rc = av_checkpoint_load(b.m, ckpt_path);
    CHECK(rc == AV_OK && av_model_step(b.m) == 0, "checkpoint without state: %s", av_error());
    av_optim_state_get(b.m, "l1.weight", AV_STATE_V, st, 15);
    for (j = 0, keep = 0; j < 15; j++) keep += fabsf(st[j]);
    CHECK(keep == 0, "state absent from the checkpoint did not restart from zero");
    av_model_free(other);
    rc = av_checkpoint_load(a.m, model_path);
    CHECK(rc == AV_ERR_FORMAT && strstr(av_error(), "step"), "model file as checkpoint: rc %d (%s)", rc, av_error());

    remove(model_path);
    remove(ckpt_path);
    av_model_free(a.m);
    av_model_free(b.m);
    av_model_free(straight.m);
    av_ctx_free(c);
}

/* Copies checkpoint src to dst with another "step" in its metadata. */
static int with_step(const char *src, const char *dst, const char *step) {
    static const char *const keys[3] = {"format", "version", "step"};
    const char *values[3];
    av_st_item items[16];
    int shapes[16][AV_ST_MAX_DIMS], i, d, n, rc;
    float *data[16];
    av_st_file *f;
    if ((rc = av_st_open(src, &f))) return rc;
    memset(items, 0, sizeof items);
    n = av_st_count(f) < 16 ? av_st_count(f) : 16;
    for (i = 0; i < n; i++) {
        int64_t numel = av_st_numel(f, i);
        items[i].name = av_st_name(f, i);
        items[i].ndim = av_st_ndim(f, i);
        for (d = 0; d < items[i].ndim; d++) shapes[i][d] = (int)av_st_shape(f, i)[d];
        items[i].shape = shapes[i];
        data[i] = (float *)malloc(sizeof(float) * (numel > 0 ? (size_t)numel : 1));
        av_st_read(f, i, data[i], numel);
        items[i].data = data[i];
    }
    values[0] = av_st_meta(f, "format");
    values[1] = av_st_meta(f, "version");
    values[2] = step;
    rc = av_st_save(dst, items, n, keys, values, 3);
    for (i = 0; i < n; i++) free(data[i]);
    av_st_close(f);
    return rc;
}

/* The step in a checkpoint: digits only, at most AV_MAX_STEP, so that the
   next step cannot overflow. */
static void test_checkpoint_step(void) {
    static const char *const bad[] = {"9223372036854775807", "18446744073709551616", " +7", "+7", "7 ", " 7", "-1", "",
                                      "0x10", "1e3", "7.0", "1000000001", "99999999999"};
    const char *ckpt = "build/test_optim_step.safetensors", *edited = "build/test_optim_step2.safetensors";
    av_ctx *c = av_ctx_new();
    tiny a = tiny_new(1), b = tiny_new(2);
    av_optim opt = av_adamw(0.05, 0.01);
    float w0;
    int i, rc;
    tiny_steps(&a, c, 2);
    CHECK(av_checkpoint_save(a.m, ckpt) == AV_OK, "checkpoint: %s", av_error());
    w0 = b.l1.weight->data[0];
    for (i = 0; i < (int)(sizeof bad / sizeof bad[0]); i++) {
        CHECK(with_step(ckpt, edited, bad[i]) == AV_OK, "rewrite: %s", av_error());
        rc = av_checkpoint_load(b.m, edited);
        CHECK(rc == AV_ERR_FORMAT && strstr(av_error(), "\"step\""), "step \"%s\": rc %d (%s)", bad[i], rc, av_error());
        CHECK(av_model_step(b.m) == 0 && b.l1.weight->data[0] == w0, "step \"%s\": a refused load changed the model", bad[i]);
    }
    CHECK(with_step(ckpt, edited, "0007") == AV_OK && av_checkpoint_load(b.m, edited) == AV_OK && av_model_step(b.m) == 7,
          "step 0007: %ld (%s)", av_model_step(b.m), av_error());
    CHECK(with_step(ckpt, edited, "1000000000") == AV_OK && av_checkpoint_load(b.m, edited) == AV_OK &&
          av_model_step(b.m) == AV_MAX_STEP, "step at AV_MAX_STEP: %s", av_error());
    w0 = b.l1.weight->data[0];
    CHECK(av_optim_step(b.m, &opt) == AV_ERR_ARG && b.l1.weight->data[0] == w0, "a step past the limit: %s", av_error());
    remove(ckpt);
    remove(edited);
    av_model_free(a.m);
    av_model_free(b.m);
    av_ctx_free(c);
}

/* ---- the vector paths: a value's update does not depend on its place ---- */
/* On every path this CPU has (NEON under qemu-aarch64): Adam and AdamW on 37
   values (vector blocks and a ragged tail) against the same values rotated
   by k = 1..4 places, which moves each value to other lanes, blocks or the
   tail, must give the same bits (values and moments); a gradient that is inf or NaN at any of
   the 37 places stops the step. (Each path against double: test_adam, run
   under ATTNVAE_ISA=scalar and the vector path.) */
#define NV 37
static void test_vector_paths(void) {
    int isa, kind, k, s, j, prev = av_get_isa();
    for (isa = AV_ISA_SCALAR; isa <= AV_ISA_NEON; isa++) {
        if (!av_isa_supported(isa)) continue;
        av_set_isa(isa);
        for (kind = AV_OPT_ADAM; kind <= AV_OPT_ADAMW; kind++)
            for (k = 1; k <= 4; k++) {
                av_model *m = av_model_new(1);
                av_tensor *a = av_param(m, "a", AV_INIT_ZEROS, 0, 1, NV), *b = av_param(m, "b", AV_INIT_ZEROS, 0, 1, NV);
                av_optim o = optim_of(kind);
                int same = 1;
                for (j = 0; j < NV; j++) a->data[j] = b->data[(j + NV - k) % NV] = (float)sin(1.0 + j);
                for (s = 0; s < 3; s++) {
                    for (j = 0; j < NV; j++) a->grad[j] = b->grad[(j + NV - k) % NV] = (float)cos(0.7 * j + s);
                    av_optim_step(m, &o);
                }
                for (j = 0; j < NV; j++) same &= a->data[j] == b->data[(j + NV - k) % NV];
                for (s = AV_STATE_M; s <= AV_STATE_V; s++) { /* the moments show a rounding that p's ulp hides */
                    float sa[NV], sb[NV];
                    av_optim_state_get(m, "a", s, sa, NV);
                    av_optim_state_get(m, "b", s, sb, NV);
                    for (j = 0; j < NV; j++) same &= sa[j] == sb[(j + NV - k) % NV];
                }
                CHECK(same, "%s, optimizer %d: an update depends on the value's place (rotated by %d)", av_isa_name(isa),
                      kind, k);
                av_model_free(m);
            }
        for (j = 0; j < NV; j++) {
            av_model *m = av_model_new(1);
            av_tensor *a = av_param(m, "a", AV_INIT_ZEROS, 0, 1, NV);
            av_optim o = av_adam(0.1f);
            a->grad[j] = j % 2 ? NAN : INFINITY;
            CHECK(av_optim_step(m, &o) == AV_ERR_NAN && a->data[j] == 0.0f,
                  "%s: a non-finite gradient at %d of %d did not stop the step", av_isa_name(isa), j, NV);
            av_model_free(m);
        }
    }
    av_set_isa(prev);
}

/* ---- threads: the same update on 1 and 2 threads, bit for bit ----------- */
#ifdef _OPENMP
#include <omp.h>
#define BIG 100003 /* threaded (over 32768 values), and a ragged tail */

static av_model *big_model(int kind, int threads, float *norm) {
    av_model *m = av_model_new(11);
    av_tensor *w = av_param(m, "w", AV_INIT_NORMAL, 0.5f, 1, BIG), *b = av_param(m, "b", AV_INIT_NORMAL, 0.5f, 1, BIG);
    av_optim o = optim_of(kind);
    int s, j;
    av_model_set_group(m, "b", av_model_add_group(m, 0.5, 0.0));
    omp_set_num_threads(threads);
    for (s = 0; s < 3; s++) {
        for (j = 0; j < BIG; j++) {
            w->grad[j] = (float)sin(0.001 * j + s);
            b->grad[j] = (float)cos(0.002 * j - s);
        }
        *norm = av_clip_grad_norm(m, 10.0f);
        av_optim_step(m, &o);
    }
    return m;
}

static void test_threads(void) {
    static float s1[BIG], s2[BIG];
    int kind, i, k, ok;
    for (kind = AV_OPT_SGD; kind <= AV_OPT_ADAMW; kind++) {
        float n1, n2;
        av_model *one = big_model(kind, 1, &n1), *two = big_model(kind, 2, &n2);
        ok = n1 == n2;
        for (i = 0; i < 2; i++) {
            const av_tensor *a = av_model_param(one, i), *b = av_model_param(two, i);
            ok &= !memcmp(a->data, b->data, sizeof s1) && !memcmp(a->grad, b->grad, sizeof s1);
            for (k = 0; k < (kind == AV_OPT_SGD ? 1 : 2); k++) {
                av_optim_state_get(one, a->name, k, s1, BIG);
                av_optim_state_get(two, a->name, k, s2, BIG);
                ok &= !memcmp(s1, s2, sizeof s1);
            }
        }
        CHECK(ok, "kind %d: 1 and 2 threads differ (norms %.9g %.9g)", kind, n1, n2);
        av_model_free(one);
        av_model_free(two);
    }
    omp_set_num_threads(2);
}
#else
static void test_threads(void) {} /* the OpenMP build (test_optim_omp) runs it */
#endif

int main(void) {
    test_sgd();
    test_adam(0);
    test_adam(1);
    test_vector_paths();
    test_nan_grad();
    test_groups();
    test_group_patterns();
    test_refused_hyper();
    test_state_by_name();
    test_buffers();
    test_names();
    test_clip();
    test_schedule();
    test_init();
    test_reproducible();
    test_layers();
    test_files();
    test_checkpoint_step();
    test_threads();
    return t_summary();
}
