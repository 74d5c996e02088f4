/* test_torch_ref.c - forward values and gradients of attnvae against
   PyTorch (float64) through tests/torch_ref.py: an MLP with softmax
   cross-entropy, layer norm, gelu, softmax/log_softmax, bce_with_logits,
   mse, attention, three steps of SGD/Adam/AdamW, and five steps of each
   with two parameter groups (values and optimizer state).

   usage: test_torch_ref [script [workdir]]   (defaults tests/torch_ref.py, build)
   The interpreter is $ATTNVAE_PYTHON, else python3. Without python3 or
   torch the test prints "skipped: ..." and counts nothing. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"

/* ---- the tests' own RNG (splitmix64) ---- */
static uint64_t rs = 0x1234567u;
static double unif(void) {
    uint64_t z = (rs += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (double)((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0);
}
static void fill(float *d, int n, double lo, double hi) {
    int i;
    for (i = 0; i < n; i++) d[i] = (float)(lo + (hi - lo) * unif());
}

/* ---- inputs written for the script, results kept for comparison ---- */
static FILE *fin;
static void put(const char *name, const float *v, int ndim, int d0, int d1, int d2) {
    int i, n = 1, s[3];
    s[0] = d0; s[1] = d1; s[2] = d2;
    fprintf(fin, "%s %d", name, ndim);
    for (i = 0; i < ndim; i++) { fprintf(fin, " %d", s[i]); n *= s[i]; }
    fprintf(fin, "\n");
    for (i = 0; i < n; i++) fprintf(fin, i ? " %.9g" : "%.9g", v[i]);
    fprintf(fin, "\n");
}

#define MAX_RES 64
typedef struct { char name[40]; int n; double *v; double atol, rtol; } result;
static result mine[MAX_RES];
static int n_mine;

/* tolerance: fp32 against fp64, a few 1e-6 relative per op, so
   |a - b| <= rtol |b| + atol (1 + max|b| over the array) */
static void keep(const char *name, const float *v, int n, double atol, double rtol) {
    result *r = &mine[n_mine++];
    int i;
    snprintf(r->name, sizeof r->name, "%s", name);
    r->n = n;
    r->v = (double *)malloc((size_t)n * sizeof(double));
    for (i = 0; i < n; i++) r->v[i] = v[i];
    r->atol = atol;
    r->rtol = rtol;
}

static av_tensor *leaf(av_ctx *c, const float *v, int ndim, int d0, int d1, int d2) {
    av_tensor *t = ndim == 1 ? av_from(c, v, 1, d0) : ndim == 2 ? av_from(c, v, 2, d0, d1) : av_from(c, v, 3, d0, d1, d2);
    av_requires_grad(c, t);
    return t;
}

static av_tensor *weighted_sum(av_ctx *c, av_tensor *y, const float *r) {
    av_tensor *rt = av_zeros_shape(c, y->ndim, y->shape);
    memcpy(rt->data, r, (size_t)y->size * sizeof(float));
    return av_sum_all(c, av_mul(c, y, rt));
}

#define TA 2e-5
#define TR 1e-4

static void compute_all(void) {
    av_ctx *c = av_ctx_new();
    static float x[80], w1[160], b1[16], w2[80], b2[5], lab[8], r[64];
    static const int labels[8] = {0, 4, 2, 2, 1, 3, 0, 4};
    int i, red;

    /* MLP + cross-entropy */
    fill(x, 80, -2, 2); fill(w1, 160, -0.3, 0.3); fill(b1, 16, -0.3, 0.3); fill(w2, 80, -0.3, 0.3); fill(b2, 5, -0.3, 0.3);
    for (i = 0; i < 8; i++) lab[i] = (float)labels[i];
    put("mlp.x", x, 2, 8, 10, 0); put("mlp.w1", w1, 2, 16, 10, 0); put("mlp.b1", b1, 1, 16, 0, 0);
    put("mlp.w2", w2, 2, 5, 16, 0); put("mlp.b2", b2, 1, 5, 0, 0); put("mlp.labels", lab, 1, 8, 0, 0);
    for (red = 0; red < 2; red++) {
        av_tensor *tx = leaf(c, x, 2, 8, 10, 0), *tw1 = leaf(c, w1, 2, 16, 10, 0), *tb1 = leaf(c, b1, 1, 16, 0, 0);
        av_tensor *tw2 = leaf(c, w2, 2, 5, 16, 0), *tb2 = leaf(c, b2, 1, 5, 0, 0), *loss;
        const char *p = red == AV_MEAN ? "mlp_mean." : "mlp_sum.";
        char nm[40];
        loss = av_cross_entropy(c, av_linear(c, av_gelu(c, av_linear(c, tx, tw1, tb1)), tw2, tb2), labels, red);
        av_backward(c, loss);
        sprintf(nm, "%sloss", p); keep(nm, loss->data, 1, TA, TR);
        sprintf(nm, "%sdx", p); keep(nm, tx->grad, 80, TA, TR);
        sprintf(nm, "%sdw1", p); keep(nm, tw1->grad, 160, TA, TR);
        sprintf(nm, "%sdb1", p); keep(nm, tb1->grad, 16, TA, TR);
        sprintf(nm, "%sdw2", p); keep(nm, tw2->grad, 80, TA, TR);
        sprintf(nm, "%sdb2", p); keep(nm, tb2->grad, 5, TA, TR);
        av_ctx_reset(c);
    }

    {   /* layer norm */
        float lx[48], g[12], b[12];
        av_tensor *tx, *tg, *tb, *y;
        fill(lx, 48, -3, 3);
        for (i = 12; i < 24; i++) lx[i] += 10.0f; /* an offset row */
        fill(g, 12, 0.5, 1.5); fill(b, 12, -1, 1); fill(r, 48, -1, 1);
        put("ln.x", lx, 2, 4, 12, 0); put("ln.g", g, 1, 12, 0, 0); put("ln.b", b, 1, 12, 0, 0); put("ln.r", r, 2, 4, 12, 0);
        tx = leaf(c, lx, 2, 4, 12, 0); tg = leaf(c, g, 1, 12, 0, 0); tb = leaf(c, b, 1, 12, 0, 0);
        y = av_layer_norm(c, tx, tg, tb, 1e-5f);
        keep("ln.y", y->data, 48, TA, TR);
        av_backward(c, weighted_sum(c, y, r));
        keep("ln.dx", tx->grad, 48, TA, TR); keep("ln.dg", tg->grad, 12, TA, TR); keep("ln.db", tb->grad, 12, TA, TR);
        av_ctx_reset(c);
    }

    {   /* gelu over [-6, 6] */
        float gx[64];
        av_tensor *tx, *y;
        fill(gx, 64, -6, 6); fill(r, 64, -1, 1);
        put("gelu.x", gx, 1, 64, 0, 0); put("gelu.r", r, 1, 64, 0, 0);
        tx = leaf(c, gx, 1, 64, 0, 0);
        y = av_gelu(c, tx);
        keep("gelu.y", y->data, 64, 1e-6, 1e-5);
        av_backward(c, weighted_sum(c, y, r));
        keep("gelu.dx", tx->grad, 64, 1e-6, 1e-5);
        av_ctx_reset(c);
    }

    {   /* softmax / log_softmax, one row of large logits */
        float sx[21];
        int k;
        fill(sx, 21, -3, 3); fill(r, 21, -1, 1);
        for (i = 7; i < 14; i++) sx[i] += 80.0f;
        put("sm.x", sx, 2, 3, 7, 0); put("sm.r", r, 2, 3, 7, 0);
        for (k = 0; k < 2; k++) {
            av_tensor *tx = leaf(c, sx, 2, 3, 7, 0), *y = k ? av_log_softmax(c, tx) : av_softmax(c, tx);
            keep(k ? "log_softmax.y" : "softmax.y", y->data, 21, TA, TR);
            av_backward(c, weighted_sum(c, y, r));
            keep(k ? "log_softmax.dx" : "softmax.dx", tx->grad, 21, TA, TR);
            av_ctx_reset(c);
        }
    }

    {   /* bce with logits, incl. |x| = 30 */
        float bx[21], bt[21];
        fill(bx, 21, -4, 4); fill(bt, 21, 0, 1);
        bx[0] = 30.0f; bx[1] = -30.0f; bx[2] = 0.0f; bt[3] = 1.0f; bt[4] = 0.0f;
        put("bce.x", bx, 2, 3, 7, 0); put("bce.t", bt, 2, 3, 7, 0);
        for (red = 0; red < 2; red++) {
            av_tensor *tx = leaf(c, bx, 2, 3, 7, 0), *tt = leaf(c, bt, 2, 3, 7, 0), *loss = av_bce_with_logits(c, tx, tt, red);
            av_backward(c, loss);
            keep(red ? "bce_sum.loss" : "bce_mean.loss", loss->data, 1, TA, TR);
            keep(red ? "bce_sum.dx" : "bce_mean.dx", tx->grad, 21, TA, TR);
            keep(red ? "bce_sum.dt" : "bce_mean.dt", tt->grad, 21, TA, TR);
            av_ctx_reset(c);
        }
    }

    {   /* mse (mean) */
        float mp[10], mt[10];
        av_tensor *tp, *tt, *loss;
        fill(mp, 10, -2, 2); fill(mt, 10, -2, 2);
        put("mse.p", mp, 2, 2, 5, 0); put("mse.t", mt, 2, 2, 5, 0);
        tp = leaf(c, mp, 2, 2, 5, 0); tt = leaf(c, mt, 2, 2, 5, 0);
        loss = av_mse_loss(c, tp, tt, AV_MEAN);
        av_backward(c, loss);
        keep("mse.loss", loss->data, 1, TA, TR); keep("mse.dp", tp->grad, 10, TA, TR); keep("mse.dt", tt->grad, 10, TA, TR);
        av_ctx_reset(c);
    }

    {   /* attention [2, 4, 8] */
        float q[64], k[64], v[64];
        av_tensor *tq, *tk, *tv, *y;
        fill(q, 64, -1.5, 1.5); fill(k, 64, -1.5, 1.5); fill(v, 64, -1.5, 1.5); fill(r, 64, -1, 1);
        put("att.q", q, 3, 2, 4, 8); put("att.k", k, 3, 2, 4, 8); put("att.v", v, 3, 2, 4, 8); put("att.r", r, 3, 2, 4, 8);
        tq = leaf(c, q, 3, 2, 4, 8); tk = leaf(c, k, 3, 2, 4, 8); tv = leaf(c, v, 3, 2, 4, 8);
        y = av_matmul(c, av_softmax(c, av_scale(c, av_matmul(c, tq, tk, 0, 1), 1.0f / sqrtf(8.0f))), tv, 0, 0);
        keep("att.y", y->data, 64, TA, TR);
        av_backward(c, weighted_sum(c, y, r));
        keep("att.dq", tq->grad, 64, TA, TR); keep("att.dk", tk->grad, 64, TA, TR); keep("att.dv", tv->grad, 64, TA, TR);
        av_ctx_reset(c);
    }

    {   /* optimizers: 3 steps; element 4's gradient is tiny (eps matters) */
        static const float p0[6] = {0.5f, -1.25f, 2.0f, 0.75f, -0.3f, 1.1f};
        static const float gs[18] = {0.1f, -0.4f, 1.5f, -2.0f, 1e-7f, 0.0f, -0.3f, 0.2f, 1.0f, 0.5f, -2e-7f, 0.0f,
                                     0.05f, -0.6f, -0.7f, 1.2f, 1e-7f, 0.0f};
        int k, s;
        put("opt.p0", p0, 1, 6, 0, 0);
        put("opt.g", gs, 2, 3, 6, 0);
        for (k = 0; k < 3; k++) {
            av_model *m = av_model_new(1);
            av_tensor *p = av_param(m, "p", AV_INIT_ZEROS, 0, 1, 6);
            av_optim o = k == 0 ? av_sgd(0.05f, 0.9f, 0.01f) : k == 1 ? av_adam(0.01f) : av_adamw(0.01f, 0.1f);
            memcpy(p->data, p0, sizeof p0);
            for (s = 0; s < 3; s++) {
                av_model_zero_grad(m);
                av_backward(c, av_sum_all(c, av_mul(c, p, av_from(c, gs + 6 * s, 1, 6))));
                av_ctx_reset(c);
                av_optim_step(m, &o);
            }
            keep(k == 0 ? "opt_sgd.p" : k == 1 ? "opt_adam.p" : "opt_adamw.p", p->data, 6, 1e-6, 1e-6);
            av_model_free(m);
        }
    }

    {   /* two parameter groups over 5 steps, the bias with half the lr and no
           weight decay; the values and the state, read by name. The state
           holds to 1e-6 relative (v only if 1 - beta2 is computed in double). */
        static const char *const kinds[3] = {"sgd", "adam", "adamw"};
        float w0[6], b0[3], gw[30], gb[15], st[6];
        int k, s, t;
        fill(w0, 6, -1, 1); fill(b0, 3, -1, 1); fill(gw, 30, -2, 2); fill(gb, 15, -1, 1);
        for (s = 0; s < 5; s++) gw[6 * s + 4] *= 1e-6f; /* where eps matters */
        put("grp.w0", w0, 2, 2, 3, 0); put("grp.b0", b0, 1, 3, 0, 0);
        put("grp.gw", gw, 2, 5, 6, 0); put("grp.gb", gb, 2, 5, 3, 0);
        for (k = 0; k < 3; k++) {
            av_model *m = av_model_new(1);
            av_tensor *w = av_param(m, "w", AV_INIT_ZEROS, 0, 2, 2, 3), *b = av_param(m, "b", AV_INIT_ZEROS, 0, 1, 3);
            av_optim o = k == 0 ? av_sgd(0.05, 0.9, 0.01) : k == 1 ? av_adam(0.01) : av_adamw(0.01, 0.1);
            char nm[40];
            if (k == 1) o.weight_decay = 0.01; /* Adam's L2 */
            memcpy(w->data, w0, sizeof w0);
            memcpy(b->data, b0, sizeof b0);
            av_param_set_group(m, b, av_model_add_group(m, 0.5, 0.0));
            for (s = 0; s < 5; s++) {
                memcpy(w->grad, gw + 6 * s, sizeof w0);
                memcpy(b->grad, gb + 3 * s, sizeof b0);
                av_optim_step(m, &o);
            }
            sprintf(nm, "grp_%s.w", kinds[k]); keep(nm, w->data, 6, 1e-6, 1e-6);
            sprintf(nm, "grp_%s.b", kinds[k]); keep(nm, b->data, 3, 1e-6, 1e-6);
            for (t = 0; t < (k ? 2 : 1); t++) {
                av_optim_state_get(m, "w", t, st, 6);
                sprintf(nm, "grp_%s.%sw", kinds[k], t ? "v" : "m"); keep(nm, st, 6, t ? 0 : 1e-7, 1e-6);
                av_optim_state_get(m, "b", t, st, 3);
                sprintf(nm, "grp_%s.%sb", kinds[k], t ? "v" : "m"); keep(nm, st, 3, t ? 0 : 1e-7, 1e-6);
            }
            av_model_free(m);
        }
    }
    av_ctx_free(c);
}

static int compare(const char *path) {
    FILE *f = fopen(path, "r");
    char name[64];
    int seen = 0, i, k, one, n;
    if (!f) return -1;
    while (fscanf(f, "%63s %d %d", name, &one, &n) == 3) {
        double *v = (double *)malloc((size_t)(n ? n : 1) * sizeof(double));
        result *r = NULL;
        for (i = 0; i < n; i++)
            if (fscanf(f, "%lf", &v[i]) != 1) { free(v); fclose(f); CHECK(0, "torch output truncated at %s", name); return 0; }
        for (k = 0; k < n_mine; k++)
            if (strcmp(mine[k].name, name) == 0) r = &mine[k];
        if (!r) { CHECK(0, "torch output %s has no counterpart", name); free(v); continue; }
        seen++;
        if (r->n != n) CHECK(0, "%s: %d values from torch, %d here", name, n, r->n);
        else {
            double mx = 0;
            int bad = -1;
            for (i = 0; i < n; i++) mx = fabs(v[i]) > mx ? fabs(v[i]) : mx;
            for (i = 0; i < n && bad < 0; i++)
                if (!(fabs(r->v[i] - v[i]) <= r->atol * (1 + mx) + r->rtol * fabs(v[i]))) bad = i;
            if (bad >= 0) CHECK(0, "%s[%d]: attnvae %.9g, torch %.9g", name, bad, r->v[bad], v[bad]);
            else t_passed++;
        }
        free(v);
    }
    fclose(f);
    CHECK(seen == n_mine, "torch gave %d of %d results", seen, n_mine);
    return 0;
}

int main(int argc, char **argv) {
    const char *script = argc > 1 ? argv[1] : "tests/torch_ref.py", *dir = argc > 2 ? argv[2] : "build";
    const char *py = getenv("ATTNVAE_PYTHON");
    char in[512], out[512], cmd[2048], first[256];
    FILE *f;
    int rc, k;
    if (!py || !*py) py = "python3";
    sprintf(in, "%.400s/torch_ref_in.txt", dir);
    sprintf(out, "%.400s/torch_ref_out.txt", dir);
    fin = fopen(in, "w");
    if (!fin) { CHECK(0, "cannot write %s", in); return t_summary(); }
    compute_all();
    fclose(fin);
    remove(out);
    sprintf(cmd, "%.400s %.600s %.500s %.500s", py, script, in, out);
    fflush(stdout);
    rc = system(cmd);
    f = fopen(out, "r");
    if (!f) {
        sprintf(cmd, "%.400s -c pass 2>/dev/null", py);
        if (system(cmd) != 0) printf("skipped: %s missing\n", py);
        else CHECK(0, "%s failed (status %d) without output", script, rc);
    } else {
        first[0] = 0;
        if (!fgets(first, sizeof first, f)) first[0] = 0;
        fclose(f);
        first[strcspn(first, "\r\n")] = 0;
        if (strncmp(first, "skip", 4) == 0) printf("skipped: python3-torch missing (%s)\n", first + 5);
        else {
            CHECK(rc == 0, "%s exited with status %d", script, rc);
            compare(out);
        }
    }
    for (k = 0; k < n_mine; k++) free(mine[k].v);
    remove(in);
    remove(out);
    return t_summary();
}
