/* test_core.c - the tape and the context: op names on nodes, nodes with
   several outputs, refusal of tensors from a finished step, per-thread
   errors, the array forms of the shape functions, and zero-size tensors
   through every op (forward values against closed forms, backward). */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "gradcheck.h"
#include "expect_fail.h"
#include <pthread.h>

/* ---- 1. every node names its op ---- */
static void node_names(void) {
    static const char *const want[] = {"av_add", "av_matmul", "av_relu", "av_reshape", "av_sum", "av_mul", "av_reshape", "av_sum"};
    av_ctx *c = av_ctx_new();
    av_tensor *x = av_ones(c, 2, 3, 4), *w = av_ones(c, 2, 4, 2), *y;
    int i, n = (int)(sizeof want / sizeof want[0]);
    av_requires_grad(c, x);
    y = av_relu(c, av_matmul(c, av_add(c, x, x), w, 0, 0));
    y = av_sum_all(c, av_mul(c, av_sum_all(c, y), av_scalar(c, 2.0f)));
    CHECK(c->n_tape == n, "tape has %d nodes, want %d", c->n_tape, n);
    for (i = 0; i < c->n_tape && i < n; i++)
        CHECK(strcmp(c->tape[i]->op, want[i]) == 0, "node %d is '%s', want '%s'", i, c->tape[i]->op, want[i]);
    av_ctx_free(c);
}

/* ---- 2. a node with two outputs: halves of x, the first doubled, the second squared ---- */
static void halves_backward(av_ctx *c, av__node *n) {
    int h = n->out[0]->size, i;
    float *gx = n->in[0]->grad;
    (void)c;
    for (i = 0; i < h; i++) gx[i] += 2.0f * n->out[0]->grad[i];
    for (i = 0; i < h; i++) gx[h + i] += 2.0f * n->in[0]->data[h + i] * n->out[1]->grad[i];
}

static void halves(av_ctx *c, av_tensor *x, av_tensor **a, av_tensor **b) {
    int h = x->size / 2, i;
    av_tensor *out[2];
    out[0] = *a = av_zeros(c, 1, h);
    out[1] = *b = av_zeros(c, 1, h);
    for (i = 0; i < h; i++) {
        (*a)->data[i] = 2.0f * x->data[i];
        (*b)->data[i] = x->data[h + i] * x->data[h + i];
    }
    av__record_n(c, "halves", halves_backward, out, 2, &x, 1);
}

static av_tensor *fwd_first_half(av_ctx *c, av_tensor **in, void *u) {
    av_tensor *a, *b;
    (void)u;
    halves(c, in[0], &a, &b);
    return av_exp(c, a);
}
static av_tensor *fwd_second_half(av_ctx *c, av_tensor **in, void *u) {
    av_tensor *a, *b;
    (void)u;
    halves(c, in[0], &a, &b);
    return av_tanh(c, b);
}
static av_tensor *fwd_both_halves(av_ctx *c, av_tensor **in, void *u) {
    av_tensor *a, *b;
    (void)u;
    halves(c, in[0], &a, &b);
    return av_mul(c, a, b);
}

static void multi_output(void) {
    float x[10];
    gc_input in;
    gc_fill(x, 10, -1.0, 1.0);
    in = gc_in(x, 1, 1, 10);
    gc_check("two outputs, first used", fwd_first_half, NULL, 1, &in);
    gc_check("two outputs, second used", fwd_second_half, NULL, 1, &in);
    gc_check("two outputs, both used", fwd_both_halves, NULL, 1, &in);
}

/* ---- 3. tensors of a finished step are refused; other contexts' are not ---- */
static void stale_tensors(void) {
    av_ctx *c = av_ctx_new(), *other = av_ctx_new();
    av_tensor *x = av_ones(c, 1, 3), *loss, *y;
    av_requires_grad(c, x);
    loss = av_sum_all(c, av_exp(c, x));
    av_ctx_reset(c);
    EXPECT_FAIL("op on a stale tensor", av_exp(c, x), "earlier step", "");
    EXPECT_FAIL("backward of a stale loss", av_backward(c, loss), "earlier step", "");
    EXPECT_FAIL("detach of a stale tensor", av_detach(c, x), "earlier step", "");
    x = av_ones(c, 1, 3); /* the new step's tensors work */
    y = av_exp(c, x);
    CHECK(fabs(y->data[2] - exp(1.0)) < 1e-6, "exp after reset: %g", (double)y->data[2]);
    av_ctx_reset(other);
    av_ctx_reset(other);
    y = av_exp(other, x); /* a live tensor of another context */
    CHECK(fabs(y->data[0] - exp(1.0)) < 1e-6, "cross-context exp: %g", (double)y->data[0]);
    av_ctx_free(other);
    av_ctx_free(c);
}

/* ---- 4. errors are per thread ---- */
static void *fail_in_thread(void *arg) {
    av_idx x;
    int rc = av_idx_load("/nonexistent/thread-B.idx", &x);
    *(int *)arg = rc != 0 && strstr(av_error(), "thread-B") != NULL;
    return NULL;
}

static void per_thread_errors(void) {
    pthread_t t;
    av_idx x;
    int b_ok = 0;
    CHECK(av_idx_load("/nonexistent/thread-A.idx", &x) != 0, "loading a missing file succeeded");
    CHECK(strstr(av_error(), "thread-A") != NULL, "main thread's error: %s", av_error());
    CHECK(pthread_create(&t, NULL, fail_in_thread, &b_ok) == 0, "pthread_create");
    pthread_join(t, NULL);
    CHECK(b_ok, "the second thread did not see its own error");
    CHECK(strstr(av_error(), "thread-A") != NULL, "main thread's error after the other failed: %s", av_error());
}

/* ---- 5. array shapes equal variadic ones ---- */
static int same_tensor(const av_tensor *a, const av_tensor *b) {
    return av_same_shape(a, b) && (a->size == 0 || memcmp(a->data, b->data, (size_t)a->size * sizeof(float)) == 0);
}

static void array_shapes(void) {
    static const int shape[3] = {2, 3, 4};
    float d[24];
    av_ctx *c = av_ctx_new();
    av_model *m1 = av_model_new(7), *m2 = av_model_new(7);
    int i;
    for (i = 0; i < 24; i++) d[i] = (float)i;
    CHECK(same_tensor(av_zeros(c, 3, 2, 3, 4), av_zeros_shape(c, 3, shape)), "zeros");
    CHECK(same_tensor(av_ones(c, 3, 2, 3, 4), av_ones_shape(c, 3, shape)), "ones");
    CHECK(same_tensor(av_full(c, 2.5f, 3, 2, 3, 4), av_full_shape(c, 2.5f, 3, shape)), "full");
    CHECK(same_tensor(av_from(c, d, 3, 2, 3, 4), av_from_shape(c, d, 3, shape)), "from");
    CHECK(same_tensor(av_wrap(c, d, 3, 2, 3, 4), av_wrap_shape(c, d, 3, shape)), "wrap");
    av_ctx_seed(c, 5);
    {
        av_tensor *a = av_randn(c, 1.0f, 2.0f, 3, 2, 3, 4), *u = av_rand(c, -1.0f, 3.0f, 3, 2, 3, 4), *b, *v;
        av_ctx_seed(c, 5);
        b = av_randn_shape(c, 1.0f, 2.0f, 3, shape);
        v = av_rand_shape(c, -1.0f, 3.0f, 3, shape);
        CHECK(same_tensor(a, b) && same_tensor(u, v), "randn/rand with the same seed");
    }
    {
        static const int flat[2] = {6, -1};
        av_tensor *x = av_from(c, d, 3, 2, 3, 4), *r = av_reshape_shape(c, x, 2, flat);
        CHECK(r->ndim == 2 && r->shape[0] == 6 && r->shape[1] == 4 && r->data == x->data, "reshape_shape");
    }
    CHECK(same_tensor(av_param(m1, "w", AV_INIT_XAVIER_UNIFORM, 0, 3, 2, 3, 4),
                      av_param_shape(m2, "w", AV_INIT_XAVIER_UNIFORM, 0, 3, shape)), "param");
    av_model_free(m1);
    av_model_free(m2);
    av_ctx_free(c);
}

/* ---- 6. zero-size tensors through every op ---- */
static void backward_runs(av_ctx *c, av_tensor *y, av_tensor *x, const char *what) {
    av_tensor *loss = av_sum_all(c, y);
    av_backward(c, loss);
    CHECK(x->grad != NULL, "%s: no gradient buffer for the input", what);
    CHECK(loss->data[0] == 0.0f, "%s: sum of an empty output is %g", what, (double)loss->data[0]);
}

static void zero_size(void) {
    av_ctx *c = av_ctx_new();
    av_tensor *x = av_zeros(c, 2, 0, 3), *y, *e;
    static const int perm[2] = {1, 0};
    int ids[1] = {0};
    av_requires_grad(c, x);
#define UNARY_EMPTY(op)                                                                     \
    y = op;                                                                                 \
    CHECK(y->size == 0 && y->ndim == 2 && y->shape[0] == 0 && y->shape[1] == 3, #op " shape"); \
    backward_runs(c, y, x, #op);                                                            \
    av_ctx_reset(c);                                                                        \
    x = av_zeros(c, 2, 0, 3);                                                               \
    av_requires_grad(c, x);
    UNARY_EMPTY(av_exp(c, x))
    UNARY_EMPTY(av_relu(c, x))
    UNARY_EMPTY(av_sigmoid(c, x))
    UNARY_EMPTY(av_softplus(c, x))
    UNARY_EMPTY(av_gelu(c, x))
    UNARY_EMPTY(av_scale(c, x, 3.0f))
    UNARY_EMPTY(av_add(c, x, av_ones(c, 1, 3)))
    UNARY_EMPTY(av_mul(c, x, av_ones(c, 2, 1, 3)))
    UNARY_EMPTY(av_softmax(c, x))
    UNARY_EMPTY(av_log_softmax(c, x))
    UNARY_EMPTY(av_layer_norm(c, x, NULL, NULL, 1e-5f))
    UNARY_EMPTY(av_dropout(c, x, 0.5f))
    UNARY_EMPTY(av_slice(c, x, 1, 1, 3); CHECK(y->shape[1] == 2, "slice width"); y = av_reshape(c, y, 2, 0, 3))
    UNARY_EMPTY(av_transpose(c, av_permute(c, x, perm), 0, 1))
    UNARY_EMPTY(av_reshape(c, x, 2, -1, 3))
    UNARY_EMPTY(av_matmul(c, x, av_ones(c, 2, 3, 3), 0, 0))
    UNARY_EMPTY(av_linear(c, x, av_ones(c, 2, 3, 3), av_ones(c, 1, 3)))
    {
        av_tensor *xs[2];
        xs[0] = x;
        xs[1] = av_zeros(c, 2, 0, 3);
        UNARY_EMPTY(av_slice(c, av_concat(c, xs, 2, 1), 1, 0, 3))
    }
#undef UNARY_EMPTY
    /* reductions: the sum of nothing is 0, the mean NaN (as in PyTorch), the max an error */
    y = av_sum(c, x, 0, 0);
    CHECK(y->size == 3 && y->data[0] == 0.0f && y->data[2] == 0.0f, "sum over an empty axis");
    backward_runs(c, av_sum(c, x, 1, 0), x, "sum over a full axis of an empty tensor");
    y = av_mean(c, x, 0, 0);
    CHECK(y->size == 3 && isnan(y->data[0]) && isnan(y->data[2]), "mean over an empty axis: %g", (double)y->data[0]);
    CHECK(isnan(av_mean_all(c, x)->data[0]), "mean_all of an empty tensor");
    CHECK(isnan(av_mse_loss(c, x, x, AV_MEAN)->data[0]), "mse mean of nothing");
    CHECK(av_mse_loss(c, x, x, AV_SUM)->data[0] == 0.0f, "mse sum of nothing");
    CHECK(av_bce_with_logits(c, x, x, AV_SUM)->data[0] == 0.0f, "bce sum of nothing");
    CHECK(av_cross_entropy(c, x, ids, AV_SUM)->data[0] == 0.0f, "cross-entropy of no rows");
    EXPECT_FAIL("max over an empty axis", av_max(c, x, 0, 0), "empty axis", "");
    /* linear with zero inputs: the output is the bias, and the bias gets the gradient */
    {
        float bias[2] = {0.5f, -2.0f};
        av_tensor *w = av_zeros(c, 2, 2, 0), *b = av_from(c, bias, 1, 2), *out;
        e = av_zeros(c, 2, 3, 0);
        av_requires_grad(c, b);
        av_requires_grad(c, w);
        out = av_linear(c, e, w, b);
        CHECK(out->ndim == 2 && out->shape[0] == 3 && out->shape[1] == 2, "linear in=0 shape");
        CHECK(out->data[0] == 0.5f && out->data[5] == -2.0f, "linear in=0 gives the bias: %g %g", (double)out->data[0], (double)out->data[5]);
        av_backward(c, av_sum_all(c, out));
        CHECK(b->grad && b->grad[0] == 3.0f && b->grad[1] == 3.0f, "linear in=0 bias gradient");
    }
    av_ctx_free(c);
}

int main(void) {
    gc_seed(4242);
    node_names();
    multi_output();
    stale_tensors();
    per_thread_errors();
    array_shapes();
    zero_size();
    return t_summary();
}
