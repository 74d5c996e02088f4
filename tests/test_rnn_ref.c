/* test_rnn_ref.c - the recurrent layers against PyTorch (tests/rnn_ref.py):
   nn.LSTM and nn.GRU with 2 layers, bidirectional, batch_first, on
   sequences of different lengths (pack_padded_sequence) from initial
   states, and nn.LSTMCell / nn.GRUCell over three steps. PyTorch writes its
   state_dict as safetensors and attnvae loads it by name with av_model_load
   ("enc.lstm.weight_ih_l0", ...), so names, layouts and gate orders must
   all agree. Outputs must be within 1e-5, gradients (inputs, initial states,
   every weight) within 1e-4, of the largest value of the float64 reference.

   usage: test_rnn_ref [script [workdir]]   (defaults tests/rnn_ref.py, build)
   The interpreter is $ATTNVAE_PYTHON, else python3. Without python3 or
   torch the test prints "skipped: ..." and counts nothing. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"

enum { B = 4, T = 6, I = 5, H = 8, LAYERS = 2, STATES = 2 * LAYERS * B * H, CELL_STEPS = 3 };
#define FWD_TOL 1e-5
#define GRAD_TOL 1e-4

static av_st_file *ref;
static double worst[2];         /* worst error / largest value: forward, gradients */
static char worst_what[2][96];

/* a tensor of the reference file into the step, shape checked */
static av_tensor *ref_tensor(av_ctx *c, const char *name, int n) {
    int i = av_st_find(ref, name);
    av_tensor *t = av_zeros(c, 1, n);
    if (i < 0 || av_st_numel(ref, i) != n || av_st_read(ref, i, t->data, n) != 0) {
        CHECK(0, "reference %s: missing or not %d values", name, n);
        return NULL;
    }
    return t;
}

/* max |got - want| <= tol * max |want| */
static void compare(av_ctx *c, const char *name, const float *got, int n, int is_grad) {
    av_tensor *want = ref_tensor(c, name, n);
    double mx = 0, err = 0;
    int i, k = is_grad != 0;
    if (!want) return;
    if (!got) { CHECK(0, "%s: attnvae gave no values", name); return; }
    for (i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want->data[i]);
        if (fabs(want->data[i]) > mx) mx = fabs(want->data[i]);
        if (d > err || d != d) err = d;
    }
    CHECK(mx > 0 && err <= (k ? GRAD_TOL : FWD_TOL) * mx, "%s: max error %.3g, largest value %.3g (%s)", name, err, mx,
          k ? "gradient" : "forward");
    if (mx > 0 && err / mx > worst[k]) {
        worst[k] = err / mx;
        snprintf(worst_what[k], sizeof worst_what[k], "%s", name);
    }
}

static av_tensor *weighted_sum(av_ctx *c, av_tensor *y, av_tensor *r) {
    return av_sum_all(c, av_mul(c, y, av_reshape_shape(c, r, y->ndim, y->shape)));
}

/* every parameter gradient of a module against "<kind>.d.<name without prefix>" */
static void compare_param_grads(av_ctx *c, av_model *m, const char *prefix, const char *kind) {
    int p;
    size_t len = strlen(prefix);
    for (p = 0; p < av_model_count(m); p++) {
        av_tensor *w = av_model_param(m, p);
        char name[160];
        if (strncmp(w->name, prefix, len) != 0) continue;
        snprintf(name, sizeof name, "%s.d.%s", kind, w->name + len);
        compare(c, name, w->grad, w->size, 1);
    }
}

static void check_rnn(av_ctx *c, av_model *m, const av_rnn *r, const char *kind, const char *prefix) {
    av_tensor *x = ref_tensor(c, "in.x", B * T * I), *h0 = ref_tensor(c, "in.h0", STATES);
    av_tensor *c0 = ref_tensor(c, "in.c0", STATES), *lens = ref_tensor(c, "in.lengths", B);
    av_tensor *y, *h_n, *c_n = NULL, *loss;
    int lengths[B], b, lstm = r->kind == AV_LSTM;
    char name[64];
    if (!x || !h0 || !c0 || !lens) return;
    for (b = 0; b < B; b++) lengths[b] = (int)lens->data[b];
    x = av_reshape(c, x, 3, B, T, I);
    h0 = av_reshape(c, h0, 3, 2 * LAYERS, B, H);
    c0 = av_reshape(c, c0, 3, 2 * LAYERS, B, H);
    av_requires_grad(c, x);
    av_requires_grad(c, h0);
    av_requires_grad(c, c0);
    av_model_zero_grad(m);
    y = av_rnn_forward(c, r, x, h0, lstm ? c0 : NULL, lengths, &h_n, lstm ? &c_n : NULL);
    loss = av_add(c, weighted_sum(c, y, ref_tensor(c, "in.ry", B * T * 2 * H)), weighted_sum(c, h_n, ref_tensor(c, "in.rh", STATES)));
    if (lstm) loss = av_add(c, loss, weighted_sum(c, c_n, ref_tensor(c, "in.rc", STATES)));
    av_backward(c, loss);
    snprintf(name, sizeof name, "%s.y", kind); compare(c, name, y->data, y->size, 0);
    snprintf(name, sizeof name, "%s.h_n", kind); compare(c, name, h_n->data, h_n->size, 0);
    snprintf(name, sizeof name, "%s.dx", kind); compare(c, name, x->grad, x->size, 1);
    snprintf(name, sizeof name, "%s.dh0", kind); compare(c, name, h0->grad, h0->size, 1);
    if (lstm) {
        compare(c, "lstm.c_n", c_n->data, c_n->size, 0);
        compare(c, "lstm.dc0", c0->grad, c0->size, 1);
    }
    compare_param_grads(c, m, prefix, kind);
}

/* CELL_STEPS steps from zero states; each h weighted by a row block of rh */
static void check_cell(av_ctx *c, av_model *m, const av_rnn_cell *cell, const char *kind, const char *prefix) {
    av_tensor *x = ref_tensor(c, "in.xc", CELL_STEPS * B * I), *rh = ref_tensor(c, "in.rh", STATES);
    av_tensor *rc = ref_tensor(c, "in.rc", STATES), *h = NULL, *cs = NULL, *hs[CELL_STEPS], *loss = NULL, *all;
    int s;
    char name[64];
    if (!x || !rh || !rc) return;
    x = av_reshape(c, x, 3, CELL_STEPS, B, I);
    av_requires_grad(c, x);
    av_model_zero_grad(m);
    for (s = 0; s < CELL_STEPS; s++) {
        av_tensor *xs = av_reshape(c, av_slice(c, x, 0, s, s + 1), 2, B, I), *term;
        if (cell->kind == AV_LSTM) av_lstm_cell(c, cell, xs, h, cs, &h, &cs);
        else h = av_gru_cell(c, cell, xs, h);
        hs[s] = av_reshape(c, h, 3, 1, B, H);
        term = weighted_sum(c, h, av_slice(c, av_reshape(c, rh, 2, 2 * LAYERS, B * H), 0, s, s + 1));
        loss = loss ? av_add(c, loss, term) : term;
    }
    if (cell->kind == AV_LSTM) {
        loss = av_add(c, loss, weighted_sum(c, cs, av_slice(c, av_reshape(c, rc, 2, 2 * LAYERS, B * H), 0, 0, 1)));
        compare(c, "lstm_cell.c", cs->data, cs->size, 0);
    }
    av_backward(c, loss);
    all = av_concat(c, hs, CELL_STEPS, 0);
    snprintf(name, sizeof name, "%s.h", kind); compare(c, name, all->data, all->size, 0);
    snprintf(name, sizeof name, "%s.dx", kind); compare(c, name, x->grad, x->size, 1);
    compare_param_grads(c, m, prefix, kind);
}

int main(int argc, char **argv) {
    const char *script = argc > 1 ? argv[1] : "tests/rnn_ref.py", *dir = argc > 2 ? argv[2] : "build";
    const char *py = getenv("ATTNVAE_PYTHON");
    char weights[512], ref_path[512], skip_path[512], cmd[2048], line[256];
    av_model *m;
    av_rnn lstm, gru;
    av_rnn_cell lstm_cell, gru_cell;
    av_ctx *c;
    FILE *f;
    int rc;
    if (!py || !*py) py = "python3";
    snprintf(weights, sizeof weights, "%.400s/rnn_weights.safetensors", dir);
    snprintf(ref_path, sizeof ref_path, "%.400s/rnn_ref.safetensors", dir);
    snprintf(skip_path, sizeof skip_path, "%.400s/rnn_ref.skip", dir);
    remove(weights); remove(ref_path); remove(skip_path);
    snprintf(cmd, sizeof cmd, "%.400s %.600s %.500s", py, script, dir);
    fflush(stdout);
    rc = system(cmd);
    if ((f = fopen(skip_path, "r")) != NULL) {
        if (!fgets(line, sizeof line, f)) line[0] = 0;
        fclose(f);
        remove(skip_path);
        printf("skipped: python3-torch missing (%s)\n", line);
        return t_summary();
    }
    if (rc != 0) {
        snprintf(cmd, sizeof cmd, "%.400s -c pass 2>/dev/null", py);
        if (system(cmd) != 0) { printf("skipped: %s missing\n", py); return t_summary(); }
        CHECK(0, "%s exited with status %d", script, rc);
        return t_summary();
    }

    m = av_model_new(1);
    lstm = av_lstm_new(m, "enc.lstm", I, H, LAYERS, 1, 0.0f);
    gru = av_gru_new(m, "enc.gru", I, H, LAYERS, 1, 0.0f);
    lstm_cell = av_lstm_cell_new(m, "dec.lstm_cell", I, H);
    gru_cell = av_gru_cell_new(m, "dec.gru_cell", I, H);
    rc = av_model_load(m, weights);
    CHECK(rc == 0, "av_model_load of PyTorch's state_dict: %s", av_error());
    rc |= av_st_open(ref_path, &ref);
    CHECK(ref != NULL, "cannot open %s: %s", ref_path, av_error());
    if (rc == 0) {
        c = av_ctx_new();
        check_rnn(c, m, &lstm, "lstm", "enc.lstm.");
        av_ctx_reset(c);
        check_rnn(c, m, &gru, "gru", "enc.gru.");
        av_ctx_reset(c);
        check_cell(c, m, &lstm_cell, "lstm_cell", "dec.lstm_cell.");
        av_ctx_reset(c);
        check_cell(c, m, &gru_cell, "gru_cell", "dec.gru_cell.");
        av_ctx_free(c);
        printf("info: worst error against PyTorch, relative to the largest reference value: forward %.2e (%s), "
               "gradients %.2e (%s)\n", worst[0], worst_what[0], worst[1], worst_what[1]);
    }
    av_st_close(ref);
    av_model_free(m);
    remove(weights);
    remove(ref_path);
    return t_summary();
}
