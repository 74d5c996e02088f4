/* ======================================================================= */
/* autodiff: the tape                                                      */
/* ======================================================================= */
static int av__wants_grad(const av_ctx *c, av_tensor *a, av_tensor *b, av_tensor *d) {
    return c->grad_enabled && ((a && a->requires_grad) || (b && b->requires_grad) || (d && d->requires_grad));
}

static av__node *av__push_node(av_ctx *c, av_tensor *out, av__backward_fn fn, int n_in) {
    av__node *n = (av__node *)av__arena_alloc(&c->arena, sizeof(av__node));
    memset(n, 0, sizeof *n);
    n->backward = fn;
    n->out = out;
    n->n_in = n_in;
    n->in = (av_tensor **)av__arena_alloc(&c->arena, (size_t)(n_in ? n_in : 1) * sizeof(av_tensor *));
    if (c->n_tape == c->cap_tape) {
        /* the tape array survives resets, so this grows only in the first steps */
        int cap = c->cap_tape ? 2 * c->cap_tape : 256;
        av__node **tape = (av__node **)AV_REALLOC(c->tape, (size_t)cap * sizeof(av__node *));
        if (!tape) av__fail("out of memory growing the tape to %d entries", cap);
        c->tape = tape;
        c->cap_tape = cap;
    }
    c->tape[c->n_tape++] = n;
    out->requires_grad = 1;
    return n;
}

/* Records out = op(a, b, d) if any input needs a gradient; NULL otherwise. */
static av__node *av__record(av_ctx *c, av_tensor *out, av__backward_fn fn, av_tensor *a, av_tensor *b, av_tensor *d) {
    av__node *n;
    if (!av__wants_grad(c, a, b, d)) return NULL;
    n = av__push_node(c, out, fn, 3);
    n->in[0] = a; n->in[1] = b; n->in[2] = d;
    return n;
}

/* The gradient buffer of t, zeroed on first use. */
static float *av__grad(av_ctx *c, av_tensor *t) {
    if (!t->grad) {
        t->grad = (float *)av__arena_alloc(&c->arena, (size_t)t->size * sizeof(float));
        memset(t->grad, 0, (size_t)t->size * sizeof(float));
    }
    return t->grad;
}

/* The gradient of input i if it needs one, else NULL. */
static float *av__in_grad(av__node *n, int i) {
    return n->in[i] && n->in[i]->requires_grad ? n->in[i]->grad : NULL;
}

AVDEF void av_backward(av_ctx *c, av_tensor *loss) {
    int i, k;
    if (loss->size != 1) av__fail_shapes("av_backward", "loss must have one element", loss, NULL);
    if (!loss->requires_grad) av__fail("av_backward: the loss does not depend on anything that requires a gradient");
    /* Intermediate gradients restart from zero, so a second backward over the
       same graph adds exactly one more gradient to the leaves. */
    for (i = 0; i < c->n_tape; i++)
        if (c->tape[i]->out->grad) memset(c->tape[i]->out->grad, 0, (size_t)c->tape[i]->out->size * sizeof(float));
    av__grad(c, loss)[0] = 1.0f;
    for (i = c->n_tape - 1; i >= 0; i--) {
        av__node *n = c->tape[i];
        if (!n->out->grad) continue; /* nothing flowed into this op */
        for (k = 0; k < n->n_in; k++)
            if (n->in[k] && n->in[k]->requires_grad) av__grad(c, n->in[k]);
        n->backward(c, n);
    }
}

AVDEF av_tensor *av_detach(av_ctx *c, av_tensor *x) {
    av_tensor *t = (av_tensor *)av__arena_alloc(&c->arena, sizeof(av_tensor));
    *t = *x;
    t->grad = NULL;
    t->requires_grad = 0;
    t->name = NULL;
    return t;
}

static av_tensor *av__like(av_ctx *c, const av_tensor *x, const char *op) {
    return av__tensor_empty(c, x->ndim, x->shape, op);
}

static int av__axis(const av_tensor *x, int axis, const char *op) {
    if (axis < 0) axis += x->ndim;
    if (axis < 0 || axis >= x->ndim) {
        char s[64];
        av__fail("%s: axis out of range for shape %s", op, av__shape_str(x, s, sizeof s));
    }
    return axis;
}

/* Sizes before, at and after an axis: the tensor seen as [outer, n, inner]. */
static void av__split_axis(const av_tensor *x, int axis, int *outer, int *n, int *inner) {
    int i;
    *outer = 1; *inner = 1;
    for (i = 0; i < axis; i++) *outer *= x->shape[i];
    for (i = axis + 1; i < x->ndim; i++) *inner *= x->shape[i];
    *n = x->shape[axis];
}

/* ======================================================================= */
/* shape ops                                                               */
/* ======================================================================= */
static void av__add_into(float *dst, const float *src, int n) {
    int i;
    for (i = 0; i < n; i++) dst[i] += src[i];
}

/* reshape shares the data; its gradient is the output's, element for element */
static void av__reshape_backward(av_ctx *c, av__node *n) {
    (void)c;
    av__add_into(n->in[0]->grad, n->out->grad, n->out->size);
}

static av_tensor *av__reshape(av_ctx *c, av_tensor *x, int ndim, const int *shape_in) {
    av_tensor *t = (av_tensor *)av__arena_alloc(&c->arena, sizeof(av_tensor));
    int i, infer = -1, known = 1, shape[AV_MAX_DIMS];
    if (ndim < 0 || ndim > AV_MAX_DIMS) av__fail("av_reshape: %d dimensions (at most %d)", ndim, AV_MAX_DIMS);
    for (i = 0; i < ndim; i++) {
        shape[i] = shape_in[i];
        if (shape[i] == -1 && infer < 0) infer = i;
        else if (shape[i] < 0) av__fail("av_reshape: bad size %d", shape[i]);
        else known *= shape[i];
    }
    if (infer >= 0) shape[infer] = known ? x->size / known : 0;
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    t->size = 1;
    for (i = 0; i < ndim; i++) { t->shape[i] = shape[i]; t->size *= shape[i]; }
    if (t->size != x->size) av__fail_shapes("av_reshape", "element counts differ", x, t);
    t->data = x->data;
    av__record(c, t, av__reshape_backward, x, NULL, NULL);
    return t;
}

AVDEF av_tensor *av_reshape(av_ctx *c, av_tensor *x, int ndim, ...) {
    int shape[AV_MAX_DIMS];
    va_list ap;
    va_start(ap, ndim);
    av__read_shape(ndim, ap, shape, "av_reshape");
    va_end(ap);
    return av__reshape(c, x, ndim, shape);
}

/* permute: out index o maps to x offset sum(o[i] * xstride[perm[i]]) */
static void av__permute_run(const av__node *n, const av_tensor *x, const av_tensor *out, int backward) {
    int d[4] = {1, 1, 1, 1}, s[4] = {0, 0, 0, 0}, xstride[AV_MAX_DIMS], i, pad = 4 - x->ndim;
    int i0, i1, i2, i3, o = 0;
    const int *perm = n->iarg;
    for (i = x->ndim - 1, xstride[x->ndim ? x->ndim - 1 : 0] = 1; i > 0; i--) xstride[i - 1] = xstride[i] * x->shape[i];
    for (i = 0; i < x->ndim; i++) { d[pad + i] = out->shape[i]; s[pad + i] = xstride[perm[i]]; }
    for (i0 = 0; i0 < d[0]; i0++)
        for (i1 = 0; i1 < d[1]; i1++)
            for (i2 = 0; i2 < d[2]; i2++) {
                int base = i0 * s[0] + i1 * s[1] + i2 * s[2];
                if (backward)
                    for (i3 = 0; i3 < d[3]; i3++) x->grad[base + i3 * s[3]] += out->grad[o++];
                else
                    for (i3 = 0; i3 < d[3]; i3++) out->data[o++] = x->data[base + i3 * s[3]];
            }
}

static void av__permute_backward(av_ctx *c, av__node *n) {
    (void)c;
    av__permute_run(n, n->in[0], n->out, 1);
}

AVDEF av_tensor *av_permute(av_ctx *c, av_tensor *x, const int *perm) {
    int shape[AV_MAX_DIMS], seen = 0, i;
    av_tensor *out;
    av__node tmp, *n;
    for (i = 0; i < x->ndim; i++) {
        if (perm[i] < 0 || perm[i] >= x->ndim || (seen & (1 << perm[i])))
            av__fail_shapes("av_permute", "not a permutation of the axes", x, NULL);
        seen |= 1 << perm[i];
        shape[i] = x->shape[perm[i]];
    }
    out = av__tensor_empty(c, x->ndim, shape, "av_permute");
    n = av__record(c, out, av__permute_backward, x, NULL, NULL);
    if (!n) { memset(&tmp, 0, sizeof tmp); n = &tmp; }
    for (i = 0; i < x->ndim; i++) n->iarg[i] = perm[i];
    av__permute_run(n, x, out, 0);
    return out;
}

AVDEF av_tensor *av_transpose(av_ctx *c, av_tensor *x, int axis0, int axis1) {
    int perm[AV_MAX_DIMS], i;
    axis0 = av__axis(x, axis0, "av_transpose");
    axis1 = av__axis(x, axis1, "av_transpose");
    for (i = 0; i < x->ndim; i++) perm[i] = i;
    perm[axis0] = axis1;
    perm[axis1] = axis0;
    return av_permute(c, x, perm);
}

/* The tensor `big` seen as [outer, n_big, inner] holds `small`, seen as
   [outer, n_small, inner], at offset `at` along the middle axis. */
enum { AV__GATHER, AV__GATHER_ADD, AV__SCATTER_ADD };
static void av__blocks(float *big, int n_big, int at, float *small, int n_small, int outer, int inner, int how) {
    int o, i, len = n_small * inner;
    for (o = 0; o < outer; o++) {
        float *b = big + ((size_t)o * n_big + at) * inner, *s = small + (size_t)o * len;
        if (how == AV__GATHER) memcpy(s, b, (size_t)len * sizeof(float));
        else if (how == AV__GATHER_ADD) for (i = 0; i < len; i++) s[i] += b[i];
        else for (i = 0; i < len; i++) b[i] += s[i];
    }
}

static void av__slice_backward(av_ctx *c, av__node *n) {
    (void)c;
    av__blocks(n->in[0]->grad, n->iarg[1], n->iarg[3], n->out->grad, n->iarg[4], n->iarg[0], n->iarg[2], AV__SCATTER_ADD);
}

AVDEF av_tensor *av_slice(av_ctx *c, av_tensor *x, int axis, int start, int end) {
    int outer, n_x, inner, shape[AV_MAX_DIMS], i;
    av_tensor *out;
    av__node *n;
    axis = av__axis(x, axis, "av_slice");
    av__split_axis(x, axis, &outer, &n_x, &inner);
    if (start < 0) start += n_x;
    if (end < 0) end += n_x;
    if (start < 0 || end > n_x || start > end) {
        char s[64];
        av__fail("av_slice: range [%d, %d) outside axis %d of shape %s", start, end, axis, av__shape_str(x, s, sizeof s));
    }
    for (i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[axis] = end - start;
    out = av__tensor_empty(c, x->ndim, shape, "av_slice");
    av__blocks(x->data, n_x, start, out->data, end - start, outer, inner, AV__GATHER);
    n = av__record(c, out, av__slice_backward, x, NULL, NULL);
    if (n) { n->iarg[0] = outer; n->iarg[1] = n_x; n->iarg[2] = inner; n->iarg[3] = start; n->iarg[4] = end - start; }
    return out;
}

static void av__concat_backward(av_ctx *c, av__node *n) {
    int k, at = 0, axis = n->iarg[0], outer, n_out, inner;
    (void)c;
    av__split_axis(n->out, axis, &outer, &n_out, &inner);
    for (k = 0; k < n->n_in; k++) {
        int len = n->in[k]->shape[axis];
        if (n->in[k]->requires_grad)
            av__blocks(n->out->grad, n_out, at, n->in[k]->grad, len, outer, inner, AV__GATHER_ADD);
        at += len;
    }
}

AVDEF av_tensor *av_concat(av_ctx *c, av_tensor *const *xs, int n_xs, int axis) {
    int k, i, shape[AV_MAX_DIMS], at = 0, outer, n_out, inner, grad = 0;
    av_tensor *out;
    if (n_xs < 1) av__fail("av_concat: no tensors");
    axis = av__axis(xs[0], axis, "av_concat");
    for (i = 0; i < xs[0]->ndim; i++) shape[i] = xs[0]->shape[i];
    shape[axis] = 0;
    for (k = 0; k < n_xs; k++) {
        if (xs[k]->ndim != xs[0]->ndim) av__fail_shapes("av_concat", "ranks differ", xs[0], xs[k]);
        for (i = 0; i < xs[0]->ndim; i++)
            if (i != axis && xs[k]->shape[i] != xs[0]->shape[i]) av__fail_shapes("av_concat", "sizes differ off the axis", xs[0], xs[k]);
        shape[axis] += xs[k]->shape[axis];
        grad |= xs[k]->requires_grad;
    }
    out = av__tensor_empty(c, xs[0]->ndim, shape, "av_concat");
    av__split_axis(out, axis, &outer, &n_out, &inner);
    memset(out->data, 0, (size_t)out->size * sizeof(float));
    for (k = 0; k < n_xs; k++) {
        av__blocks(out->data, n_out, at, xs[k]->data, xs[k]->shape[axis], outer, inner, AV__SCATTER_ADD);
        at += xs[k]->shape[axis];
    }
    if (grad && c->grad_enabled) {
        av__node *n = av__push_node(c, out, av__concat_backward, n_xs);
        for (k = 0; k < n_xs; k++) n->in[k] = xs[k];
        n->iarg[0] = axis;
    }
    return out;
}

/* ======================================================================= */
/* elementwise: unary                                                      */
/* ======================================================================= */
static float av__sigmoidf(float v) {
    /* both branches avoid overflow of expf */
    if (v >= 0) return 1.0f / (1.0f + expf(-v));
    { float e = expf(v); return e / (1.0f + e); }
}
static float av__softplusf(float v) { return (v > 0 ? v : 0.0f) + log1pf(expf(-fabsf(v))); }
static float av__geluf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678f)); }
static float av__gelu_grad(float v) {
    return 0.5f * (1.0f + erff(v * 0.70710678f)) + v * 0.39894228f * expf(-0.5f * v * v);
}

/* Defines op NAME with forward FWD (of input v and argument a) and its
   derivative DER (of v, output y and a), side by side. */
#define AV__UNARY(NAME, FWD, DER)                                            \
    static void av__##NAME##_backward(av_ctx *c, av__node *n) {              \
        const float *x_ = n->in[0]->data, *y_ = n->out->data, *g_ = n->out->grad; \
        float *gx_ = n->in[0]->grad, a = n->farg[0];                         \
        int i_;                                                              \
        (void)c; (void)a; (void)y_;                                          \
        AV__PAR(n->out->size)                                        \
        for (i_ = 0; i_ < n->out->size; i_++) {                              \
            float v = x_[i_], y = y_[i_];                                    \
            (void)v; (void)y;                                                \
            gx_[i_] += g_[i_] * (DER);                                       \
        }                                                                    \
    }                                                                        \
    static av_tensor *av__##NAME(av_ctx *c, av_tensor *x, float a) {         \
        av_tensor *out = av__like(c, x, "av_" #NAME);                        \
        av__node *n_;                                                        \
        int i_;                                                              \
        (void)a;                                                             \
        AV__PAR(x->size)                                             \
        for (i_ = 0; i_ < x->size; i_++) {                                   \
            float v = x->data[i_];                                           \
            out->data[i_] = (FWD);                                           \
        }                                                                    \
        n_ = av__record(c, out, av__##NAME##_backward, x, NULL, NULL);       \
        if (n_) n_->farg[0] = a;                                             \
        return out;                                                          \
    }

AV__UNARY(scale, v * a, a)
AV__UNARY(add_scalar, v + a, 1.0f)
AV__UNARY(exp, expf(v), y)
AV__UNARY(log, logf(v), 1.0f / v)
AV__UNARY(sqrt, sqrtf(v), 0.5f / y)
AV__UNARY(square, v * v, 2.0f * v)
AV__UNARY(tanh, tanhf(v), 1.0f - y * y)
AV__UNARY(sigmoid, av__sigmoidf(v), y * (1.0f - y))
AV__UNARY(relu, v > 0 ? v : 0.0f, v > 0 ? 1.0f : 0.0f)
AV__UNARY(leaky_relu, v > 0 ? v : a * v, v > 0 ? 1.0f : a)
AV__UNARY(gelu, av__geluf(v), av__gelu_grad(v))
AV__UNARY(softplus, av__softplusf(v), av__sigmoidf(v))

AVDEF av_tensor *av_scale(av_ctx *c, av_tensor *x, float s) { return av__scale(c, x, s); }
AVDEF av_tensor *av_add_scalar(av_ctx *c, av_tensor *x, float s) { return av__add_scalar(c, x, s); }
AVDEF av_tensor *av_exp(av_ctx *c, av_tensor *x) { return av__exp(c, x, 0); }
AVDEF av_tensor *av_log(av_ctx *c, av_tensor *x) { return av__log(c, x, 0); }
AVDEF av_tensor *av_sqrt(av_ctx *c, av_tensor *x) { return av__sqrt(c, x, 0); }
AVDEF av_tensor *av_square(av_ctx *c, av_tensor *x) { return av__square(c, x, 0); }
AVDEF av_tensor *av_tanh(av_ctx *c, av_tensor *x) { return av__tanh(c, x, 0); }
AVDEF av_tensor *av_sigmoid(av_ctx *c, av_tensor *x) { return av__sigmoid(c, x, 0); }
AVDEF av_tensor *av_relu(av_ctx *c, av_tensor *x) { return av__relu(c, x, 0); }
AVDEF av_tensor *av_leaky_relu(av_ctx *c, av_tensor *x, float slope) { return av__leaky_relu(c, x, slope); }
AVDEF av_tensor *av_gelu(av_ctx *c, av_tensor *x) { return av__gelu(c, x, 0); }
AVDEF av_tensor *av_softplus(av_ctx *c, av_tensor *x) { return av__softplus(c, x, 0); }

/* ======================================================================= */
/* elementwise: binary, with broadcasting                                  */
/* ======================================================================= */
enum { AV__ADD, AV__SUB, AV__MUL, AV__DIV };

/* Both operands right-aligned to 4-D; a stride of 0 repeats an element. */
typedef struct av__bcast { int d[4], sa[4], sb[4]; } av__bcast;

static void av__strides4(const av_tensor *t, const int *out_d, int *s) {
    int i, stride = 1, pad = 4 - t->ndim;
    for (i = 3; i >= 0; i--) {
        int size = i >= pad ? t->shape[i - pad] : 1;
        s[i] = (size == 1 && out_d[i] != 1) ? 0 : stride;
        stride *= size;
    }
}

static av__bcast av__bcast_plan(const char *op, const av_tensor *a, const av_tensor *b, int *shape, int *ndim) {
    av__bcast p;
    int i, pa = 4 - a->ndim, pb = 4 - b->ndim;
    *ndim = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (i = 0; i < 4; i++) {
        int da = i >= pa ? a->shape[i - pa] : 1, db = i >= pb ? b->shape[i - pb] : 1;
        if (da != db && da != 1 && db != 1) av__fail_shapes(op, "cannot broadcast", a, b);
        p.d[i] = da == 1 ? db : da;
    }
    for (i = 0; i < *ndim; i++) shape[i] = p.d[4 - *ndim + i];
    if (av_same_shape(a, b)) { /* one flat row */
        p.d[0] = p.d[1] = p.d[2] = 1;
        p.d[3] = a->size;
        p.sa[0] = p.sa[1] = p.sa[2] = p.sb[0] = p.sb[1] = p.sb[2] = 0;
        p.sa[3] = p.sb[3] = 1;
        return p;
    }
    av__strides4(a, p.d, p.sa);
    av__strides4(b, p.d, p.sb);
    return p;
}

/* One row of n outputs; forward fills y, backward adds into ga/gb (either may be NULL). */
static void av__binary_row(int op, int n, const float *a, int sa, const float *b, int sb, float *y,
                           const float *g, float *ga, float *gb) {
    int j;
    if (!g) {
        switch (op) {
        case AV__ADD: for (j = 0; j < n; j++) y[j] = a[j * sa] + b[j * sb]; break;
        case AV__SUB: for (j = 0; j < n; j++) y[j] = a[j * sa] - b[j * sb]; break;
        case AV__MUL: for (j = 0; j < n; j++) y[j] = a[j * sa] * b[j * sb]; break;
        default:      for (j = 0; j < n; j++) y[j] = a[j * sa] / b[j * sb]; break;
        }
        return;
    }
    switch (op) { /* d(a+b) = (1, 1); d(a-b) = (1, -1); d(ab) = (b, a); d(a/b) = (1/b, -y/b) */
    case AV__ADD:
        if (ga) for (j = 0; j < n; j++) ga[j * sa] += g[j];
        if (gb) for (j = 0; j < n; j++) gb[j * sb] += g[j];
        break;
    case AV__SUB:
        if (ga) for (j = 0; j < n; j++) ga[j * sa] += g[j];
        if (gb) for (j = 0; j < n; j++) gb[j * sb] -= g[j];
        break;
    case AV__MUL:
        if (ga) for (j = 0; j < n; j++) ga[j * sa] += g[j] * b[j * sb];
        if (gb) for (j = 0; j < n; j++) gb[j * sb] += g[j] * a[j * sa];
        break;
    default:
        if (ga) for (j = 0; j < n; j++) ga[j * sa] += g[j] / b[j * sb];
        if (gb) for (j = 0; j < n; j++) gb[j * sb] -= g[j] * y[j] / b[j * sb];
        break;
    }
}

static void av__binary_run(const av__bcast *p, int op, const av_tensor *a, const av_tensor *b, av_tensor *y,
                           const float *g, float *ga, float *gb) {
    int i0, i1, i2, row = 0;
    for (i0 = 0; i0 < p->d[0]; i0++)
        for (i1 = 0; i1 < p->d[1]; i1++)
            for (i2 = 0; i2 < p->d[2]; i2++, row++) {
                int oa = i0 * p->sa[0] + i1 * p->sa[1] + i2 * p->sa[2];
                int ob = i0 * p->sb[0] + i1 * p->sb[1] + i2 * p->sb[2];
                size_t oy = (size_t)row * p->d[3];
                av__binary_row(op, p->d[3], a->data + oa, p->sa[3], b->data + ob, p->sb[3], y->data + oy,
                               g ? g + oy : NULL, ga ? ga + oa : NULL, gb ? gb + ob : NULL);
            }
}

static void av__binary_backward(av_ctx *c, av__node *n) {
    av__bcast p;
    int shape[AV_MAX_DIMS], ndim;
    (void)c;
    p = av__bcast_plan("backward", n->in[0], n->in[1], shape, &ndim);
    av__binary_run(&p, n->iarg[0], n->in[0], n->in[1], n->out, n->out->grad, av__in_grad(n, 0), av__in_grad(n, 1));
}

static av_tensor *av__binary(av_ctx *c, int op, av_tensor *a, av_tensor *b, const char *name) {
    int shape[AV_MAX_DIMS], ndim;
    av__bcast p = av__bcast_plan(name, a, b, shape, &ndim);
    av_tensor *out = av__tensor_empty(c, ndim, shape, name);
    av__node *n;
    av__binary_run(&p, op, a, b, out, NULL, NULL, NULL);
    n = av__record(c, out, av__binary_backward, a, b, NULL);
    if (n) n->iarg[0] = op;
    return out;
}

AVDEF av_tensor *av_add(av_ctx *c, av_tensor *a, av_tensor *b) { return av__binary(c, AV__ADD, a, b, "av_add"); }
AVDEF av_tensor *av_sub(av_ctx *c, av_tensor *a, av_tensor *b) { return av__binary(c, AV__SUB, a, b, "av_sub"); }
AVDEF av_tensor *av_mul(av_ctx *c, av_tensor *a, av_tensor *b) { return av__binary(c, AV__MUL, a, b, "av_mul"); }
AVDEF av_tensor *av_div(av_ctx *c, av_tensor *a, av_tensor *b) { return av__binary(c, AV__DIV, a, b, "av_div"); }

/* ======================================================================= */
/* reductions                                                              */
/* ======================================================================= */
static av_tensor *av__reduced(av_ctx *c, const av_tensor *x, int axis, int keepdim, const char *op) {
    int shape[AV_MAX_DIMS], i, nd = 0;
    for (i = 0; i < x->ndim; i++) {
        if (i != axis) shape[nd++] = x->shape[i];
        else if (keepdim) shape[nd++] = 1;
    }
    return av__tensor_empty(c, nd, shape, op);
}

/* sum and mean: iarg = outer, n, inner; farg[0] = 1 or 1/n */
static void av__sum_backward(av_ctx *c, av__node *n) {
    int outer = n->iarg[0], len = n->iarg[1], inner = n->iarg[2], o, k, i;
    float s = n->farg[0];
    (void)c;
    for (o = 0; o < outer; o++)
        for (k = 0; k < len; k++) {
            float *gx = n->in[0]->grad + ((size_t)o * len + k) * inner;
            const float *g = n->out->grad + (size_t)o * inner;
            for (i = 0; i < inner; i++) gx[i] += s * g[i];
        }
}

static av_tensor *av__sum_scaled(av_ctx *c, av_tensor *x, int axis, int keepdim, int mean, const char *op) {
    int outer, len, inner, o, k, i;
    av_tensor *out;
    av__node *n;
    float s;
    axis = av__axis(x, axis, op);
    av__split_axis(x, axis, &outer, &len, &inner);
    s = mean ? 1.0f / (float)(len ? len : 1) : 1.0f;
    out = av__reduced(c, x, axis, keepdim, op);
    for (o = 0; o < outer; o++)
        for (i = 0; i < inner; i++) {
            double acc = 0; /* fp64 accumulation: long sums stay accurate */
            const float *xs = x->data + (size_t)o * len * inner + i;
            for (k = 0; k < len; k++) acc += xs[(size_t)k * inner];
            out->data[(size_t)o * inner + i] = (float)(acc * s);
        }
    n = av__record(c, out, av__sum_backward, x, NULL, NULL);
    if (n) { n->iarg[0] = outer; n->iarg[1] = len; n->iarg[2] = inner; n->farg[0] = s; }
    return out;
}

AVDEF av_tensor *av_sum(av_ctx *c, av_tensor *x, int axis, int keepdim) { return av__sum_scaled(c, x, axis, keepdim, 0, "av_sum"); }
AVDEF av_tensor *av_mean(av_ctx *c, av_tensor *x, int axis, int keepdim) { return av__sum_scaled(c, x, axis, keepdim, 1, "av_mean"); }

/* max: the gradient goes to the first maximum, whose index is saved */
static void av__max_backward(av_ctx *c, av__node *n) {
    int outer = n->iarg[0], len = n->iarg[1], inner = n->iarg[2], o, i;
    const int *arg = (const int *)n->saved;
    (void)c;
    for (o = 0; o < outer; o++)
        for (i = 0; i < inner; i++) {
            size_t j = (size_t)o * inner + i;
            n->in[0]->grad[((size_t)o * len + arg[j]) * inner + i] += n->out->grad[j];
        }
}

AVDEF av_tensor *av_max(av_ctx *c, av_tensor *x, int axis, int keepdim) {
    int outer, len, inner, o, k, i, *arg;
    av_tensor *out;
    av__node *n;
    axis = av__axis(x, axis, "av_max");
    av__split_axis(x, axis, &outer, &len, &inner);
    if (len == 0) av__fail_shapes("av_max", "empty axis", x, NULL);
    out = av__reduced(c, x, axis, keepdim, "av_max");
    arg = (int *)av__arena_alloc(&c->arena, (size_t)out->size * sizeof(int));
    for (o = 0; o < outer; o++)
        for (i = 0; i < inner; i++) {
            const float *xs = x->data + (size_t)o * len * inner + i;
            int best = 0;
            for (k = 1; k < len; k++)
                if (xs[(size_t)k * inner] > xs[(size_t)best * inner]) best = k;
            out->data[(size_t)o * inner + i] = xs[(size_t)best * inner];
            arg[(size_t)o * inner + i] = best;
        }
    n = av__record(c, out, av__max_backward, x, NULL, NULL);
    if (n) { n->iarg[0] = outer; n->iarg[1] = len; n->iarg[2] = inner; n->saved = arg; }
    return out;
}

static av_tensor *av__flat(av_ctx *c, av_tensor *x) { int n = x->size; return av__reshape(c, x, 1, &n); }
AVDEF av_tensor *av_sum_all(av_ctx *c, av_tensor *x) { return av_sum(c, av__flat(c, x), 0, 0); }
AVDEF av_tensor *av_mean_all(av_ctx *c, av_tensor *x) { return av_mean(c, av__flat(c, x), 0, 0); }
AVDEF av_tensor *av_max_all(av_ctx *c, av_tensor *x) { return av_max(c, av__flat(c, x), 0, 0); }

/* ======================================================================= */
/* matrix products                                                         */
/* ======================================================================= */
/* matmul geometry, from the shapes and transposes */
typedef struct av__mm { int batch, M, N, K, shared_b, ta, tb; } av__mm;

static av__mm av__mm_plan(const av_tensor *a, const av_tensor *b, int ta, int tb) {
    av__mm g;
    int i, K2;
    if (a->ndim < 2 || b->ndim < 2) av__fail_shapes("av_matmul", "operands must be at least 2-D", a, b);
    g.ta = ta != 0; g.tb = tb != 0;
    g.M = a->shape[a->ndim - (g.ta ? 1 : 2)];
    g.K = a->shape[a->ndim - (g.ta ? 2 : 1)];
    K2 = b->shape[b->ndim - (g.tb ? 1 : 2)];
    g.N = b->shape[b->ndim - (g.tb ? 2 : 1)];
    if (g.K != K2) av__fail_shapes("av_matmul", "inner dimensions differ", a, b);
    g.shared_b = b->ndim == 2;
    if (!g.shared_b) {
        if (a->ndim != b->ndim) av__fail_shapes("av_matmul", "batch ranks differ", a, b);
        for (i = 0; i < a->ndim - 2; i++)
            if (a->shape[i] != b->shape[i]) av__fail_shapes("av_matmul", "batch sizes differ", a, b);
    }
    g.batch = 1;
    for (i = 0; i < a->ndim - 2; i++) g.batch *= a->shape[i];
    return g;
}

static void av__matmul_backward(av_ctx *c, av__node *n) {
    av__mm g = av__mm_plan(n->in[0], n->in[1], n->iarg[0], n->iarg[1]);
    const float *A = n->in[0]->data, *B = n->in[1]->data, *dC = n->out->grad;
    float *dA = av__in_grad(n, 0), *dB = av__in_grad(n, 1);
    int M = g.M, N = g.N, K = g.K, lda = g.ta ? M : K, ldb = g.tb ? K : N, bi, batch = g.batch;
    size_t sa = (size_t)M * K, sb = g.shared_b ? 0 : (size_t)K * N, sc = (size_t)M * N;
    (void)c;
    if (g.shared_b && !g.ta) { M *= batch; batch = 1; } /* rows of all batches in one product */
    for (bi = 0; bi < batch; bi++) {
        const float *a = A + bi * sa, *b = B + bi * sb, *dc = dC + bi * sc;
        /* C = op(A) op(B): dop(A) = dC op(B)ᵀ, dop(B) = op(A)ᵀ dC, then undo each transpose */
        if (dA) {
            float *da = dA + bi * sa;
            if (!g.ta) av_sgemm(0, !g.tb, M, K, N, 1.0f, dc, N, b, ldb, 1.0f, da, K);
            else av_sgemm(g.tb, 1, K, M, N, 1.0f, b, ldb, dc, N, 1.0f, da, M);
        }
        if (dB) {
            float *db = dB + bi * sb;
            if (!g.tb) av_sgemm(!g.ta, 0, K, N, M, 1.0f, a, lda, dc, N, 1.0f, db, N);
            else av_sgemm(1, g.ta, N, K, M, 1.0f, dc, N, a, lda, 1.0f, db, K);
        }
    }
}

AVDEF av_tensor *av_matmul(av_ctx *c, av_tensor *a, av_tensor *b, int trans_a, int trans_b) {
    av__mm g = av__mm_plan(a, b, trans_a, trans_b);
    int shape[AV_MAX_DIMS], i, M = g.M, batch = g.batch, bi;
    av_tensor *out;
    av__node *n;
    for (i = 0; i < a->ndim - 2; i++) shape[i] = a->shape[i];
    shape[a->ndim - 2] = g.M;
    shape[a->ndim - 1] = g.N;
    out = av__tensor_empty(c, a->ndim, shape, "av_matmul");
    if (g.shared_b && !g.ta) { M *= batch; batch = 1; }
    for (bi = 0; bi < batch; bi++)
        av_sgemm(g.ta, g.tb, M, g.N, g.K, 1.0f, a->data + (size_t)bi * g.M * g.K, g.ta ? g.M : g.K,
                 b->data + (g.shared_b ? 0 : (size_t)bi * g.K * g.N), g.tb ? g.K : g.N, 0.0f,
                 out->data + (size_t)bi * g.M * g.N, g.N);
    n = av__record(c, out, av__matmul_backward, a, b, NULL);
    if (n) { n->iarg[0] = g.ta; n->iarg[1] = g.tb; }
    return out;
}

/* linear: y[R, out] = x[R, in] wᵀ + b */
static void av__linear_backward(av_ctx *c, av__node *n) {
    const av_tensor *x = n->in[0], *w = n->in[1];
    int in = w->shape[1], outn = w->shape[0], R = x->size / (in ? in : 1), r, j;
    const float *dy = n->out->grad;
    float *dx = av__in_grad(n, 0), *dw = av__in_grad(n, 1), *db = av__in_grad(n, 2);
    (void)c;
    if (dx) av_sgemm(0, 0, R, in, outn, 1.0f, dy, outn, w->data, in, 1.0f, dx, in);
    if (dw) av_sgemm(1, 0, outn, in, R, 1.0f, dy, outn, x->data, in, 1.0f, dw, in);
    if (db)
        for (r = 0; r < R; r++)
            for (j = 0; j < outn; j++) db[j] += dy[(size_t)r * outn + j];
}

AVDEF av_tensor *av_linear(av_ctx *c, av_tensor *x, av_tensor *w, av_tensor *b) {
    int shape[AV_MAX_DIMS], in, outn, R, r, i;
    av_tensor *out;
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
        av__fail_shapes("av_linear", "x must be [..., in] and w [out, in]", x, w);
    in = w->shape[1];
    outn = w->shape[0];
    if (b && (b->ndim != 1 || b->shape[0] != outn)) av__fail_shapes("av_linear", "bias must be [out]", w, b);
    for (i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[x->ndim - 1] = outn;
    out = av__tensor_empty(c, x->ndim, shape, "av_linear");
    R = x->size / (in ? in : 1);
    if (b)
        for (r = 0; r < R; r++) memcpy(out->data + (size_t)r * outn, b->data, (size_t)outn * sizeof(float));
    av_sgemm(0, 1, R, outn, in, 1.0f, x->data, in, w->data, in, b ? 1.0f : 0.0f, out->data, outn);
    av__record(c, out, av__linear_backward, x, w, b);
    return out;
}

/* ======================================================================= */
/* softmax, layer norm (over the last axis)                                */
/* ======================================================================= */
static int av__rows(const av_tensor *x, int *n, const char *op) {
    if (x->ndim < 1) av__fail_shapes(op, "needs at least one axis", x, NULL);
    *n = x->shape[x->ndim - 1];
    return *n ? x->size / *n : 0;
}

/* y = softmax(x); dx = y (g - <g, y>) */
static void av__softmax_backward(av_ctx *c, av__node *n) {
    int len, R = av__rows(n->out, &len, "av_softmax"), r;
    (void)c;
    AV__PAR((long)R * len)
    for (r = 0; r < R; r++) {
        int j;
        const float *y = n->out->data + (size_t)r * len, *g = n->out->grad + (size_t)r * len;
        float *gx = n->in[0]->grad + (size_t)r * len;
        double dot = 0;
        for (j = 0; j < len; j++) dot += (double)g[j] * y[j];
        for (j = 0; j < len; j++) gx[j] += y[j] * (g[j] - (float)dot);
    }
}

/* y = log_softmax(x); dx = g - softmax(x) sum(g) */
static void av__log_softmax_backward(av_ctx *c, av__node *n) {
    int len, R = av__rows(n->out, &len, "av_log_softmax"), r;
    (void)c;
    AV__PAR((long)R * len)
    for (r = 0; r < R; r++) {
        int j;
        const float *y = n->out->data + (size_t)r * len, *g = n->out->grad + (size_t)r * len;
        float *gx = n->in[0]->grad + (size_t)r * len;
        double sum = 0;
        for (j = 0; j < len; j++) sum += g[j];
        for (j = 0; j < len; j++) gx[j] += g[j] - expf(y[j]) * (float)sum;
    }
}

/* Stable: subtract the row maximum before exponentiating. */
static av_tensor *av__softmax_any(av_ctx *c, av_tensor *x, int log_form) {
    const char *op = log_form ? "av_log_softmax" : "av_softmax";
    int len, R = av__rows(x, &len, op), r;
    av_tensor *out = av__like(c, x, op);
    AV__PAR((long)R * len)
    for (r = 0; r < R; r++) {
        int j;
        const float *xs = x->data + (size_t)r * len;
        float *y = out->data + (size_t)r * len, mx = xs[0];
        double sum = 0;
        for (j = 1; j < len; j++) mx = xs[j] > mx ? xs[j] : mx;
        for (j = 0; j < len; j++) { y[j] = expf(xs[j] - mx); sum += y[j]; }
        if (log_form) {
            float log_sum = (float)log(sum); /* x - (mx + log_sum) would round at the size of x */
            for (j = 0; j < len; j++) y[j] = (xs[j] - mx) - log_sum;
        } else {
            float inv = (float)(1.0 / sum);
            for (j = 0; j < len; j++) y[j] *= inv;
        }
    }
    av__record(c, out, log_form ? av__log_softmax_backward : av__softmax_backward, x, NULL, NULL);
    return out;
}

AVDEF av_tensor *av_softmax(av_ctx *c, av_tensor *x) { return av__softmax_any(c, x, 0); }
AVDEF av_tensor *av_log_softmax(av_ctx *c, av_tensor *x) { return av__softmax_any(c, x, 1); }

/* y = (x - mean) * rstd * gamma + beta; saved: mean and rstd per row */
static void av__layer_norm_backward(av_ctx *c, av__node *n) {
    int len, R = av__rows(n->out, &len, "av_layer_norm"), r, j;
    const float *stats = (const float *)n->saved, *gamma = n->in[1] ? n->in[1]->data : NULL;
    float *gx = av__in_grad(n, 0), *ggamma = av__in_grad(n, 1), *gbeta = av__in_grad(n, 2);
    (void)c;
    for (r = 0; r < R; r++) {
        const float *x = n->in[0]->data + (size_t)r * len, *g = n->out->grad + (size_t)r * len;
        float mean = stats[2 * r], rstd = stats[2 * r + 1];
        double sum_d = 0, sum_dx = 0;
        for (j = 0; j < len; j++) {
            float xhat = (x[j] - mean) * rstd, d = g[j] * (gamma ? gamma[j] : 1.0f);
            sum_d += d;
            sum_dx += (double)d * xhat;
            if (ggamma) ggamma[j] += g[j] * xhat;
            if (gbeta) gbeta[j] += g[j];
        }
        if (gx) {
            float md = (float)(sum_d / len), mdx = (float)(sum_dx / len);
            float *gxr = gx + (size_t)r * len;
            for (j = 0; j < len; j++) {
                float xhat = (x[j] - mean) * rstd, d = g[j] * (gamma ? gamma[j] : 1.0f);
                gxr[j] += rstd * (d - md - xhat * mdx);
            }
        }
    }
}

AVDEF av_tensor *av_layer_norm(av_ctx *c, av_tensor *x, av_tensor *gamma, av_tensor *beta, float eps) {
    int len, R = av__rows(x, &len, "av_layer_norm"), r;
    av_tensor *out = av__like(c, x, "av_layer_norm");
    float *stats = (float *)av__arena_alloc(&c->arena, (size_t)(2 * R + 1) * sizeof(float));
    av__node *n;
    if (gamma && (gamma->size != len)) av__fail_shapes("av_layer_norm", "gamma must match the last axis", x, gamma);
    if (beta && (beta->size != len)) av__fail_shapes("av_layer_norm", "beta must match the last axis", x, beta);
    AV__PAR((long)R * len)
    for (r = 0; r < R; r++) {
        int j;
        const float *xs = x->data + (size_t)r * len;
        float *y = out->data + (size_t)r * len, mean, rstd;
        double s = 0, ss = 0;
        for (j = 0; j < len; j++) s += xs[j];
        mean = (float)(s / len);
        for (j = 0; j < len; j++) ss += (double)(xs[j] - mean) * (xs[j] - mean);
        rstd = (float)(1.0 / sqrt(ss / len + eps));
        for (j = 0; j < len; j++)
            y[j] = (xs[j] - mean) * rstd * (gamma ? gamma->data[j] : 1.0f) + (beta ? beta->data[j] : 0.0f);
        stats[2 * r] = mean;
        stats[2 * r + 1] = rstd;
    }
    n = av__record(c, out, av__layer_norm_backward, x, gamma, beta);
    if (n) n->saved = stats;
    return out;
}

/* ======================================================================= */
/* embedding, dropout                                                      */
/* ======================================================================= */
static void av__embedding_backward(av_ctx *c, av__node *n) {
    int D = n->in[0]->shape[1], i;
    const int *ids = (const int *)n->saved;
    (void)c;
    for (i = 0; i < n->out->shape[0]; i++)
        av__add_into(n->in[0]->grad + (size_t)ids[i] * D, n->out->grad + (size_t)i * D, D);
}

AVDEF av_tensor *av_embedding(av_ctx *c, av_tensor *table, const int *ids, int count) {
    int shape[2], D, i, *saved;
    av_tensor *out;
    av__node *n;
    if (table->ndim != 2) av__fail_shapes("av_embedding", "table must be [vocab, dim]", table, NULL);
    D = table->shape[1];
    shape[0] = count;
    shape[1] = D;
    out = av__tensor_empty(c, 2, shape, "av_embedding");
    saved = (int *)av__arena_alloc(&c->arena, (size_t)(count ? count : 1) * sizeof(int));
    for (i = 0; i < count; i++) {
        if (ids[i] < 0 || ids[i] >= table->shape[0])
            av__fail("av_embedding: id %d at position %d outside the table's %d rows", ids[i], i, table->shape[0]);
        saved[i] = ids[i];
        memcpy(out->data + (size_t)i * D, table->data + (size_t)ids[i] * D, (size_t)D * sizeof(float));
    }
    n = av__record(c, out, av__embedding_backward, table, NULL, NULL);
    if (n) n->saved = saved;
    return out;
}

/* the saved mask holds 0 or 1/(1-p), so forward and backward are one product */
static void av__dropout_backward(av_ctx *c, av__node *n) {
    const float *mask = (const float *)n->saved;
    int i;
    (void)c;
    for (i = 0; i < n->out->size; i++) n->in[0]->grad[i] += n->out->grad[i] * mask[i];
}

AVDEF av_tensor *av_dropout(av_ctx *c, av_tensor *x, float p) {
    av_tensor *out;
    float *mask, keep = 1.0f / (1.0f - p);
    av__node *n;
    int i;
    if (!(p >= 0.0f && p < 1.0f)) av__fail("av_dropout: p = %g must be in [0, 1)", (double)p);
    if (!c->training || p == 0.0f) return x;
    out = av__like(c, x, "av_dropout");
    mask = (float *)av__arena_alloc(&c->arena, (size_t)x->size * sizeof(float));
    for (i = 0; i < x->size; i++) {
        mask[i] = av_rng_uniform(&c->rng) >= p ? keep : 0.0f;
        out->data[i] = x->data[i] * mask[i];
    }
    n = av__record(c, out, av__dropout_backward, x, NULL, NULL);
    if (n) n->saved = mask;
    return out;
}

/* ======================================================================= */
/* losses                                                                  */
/* ======================================================================= */
static float av__reduce_scale(int reduction, int count) {
    return reduction == AV_SUM || count == 0 ? 1.0f : 1.0f / (float)count;
}

/* mse: mean or sum of (p - t)^2 */
static void av__mse_backward(av_ctx *c, av__node *n) {
    float s = 2.0f * n->farg[0] * n->out->grad[0], *gp = av__in_grad(n, 0), *gt = av__in_grad(n, 1);
    int i;
    (void)c;
    for (i = 0; i < n->in[0]->size; i++) {
        float d = s * (n->in[0]->data[i] - n->in[1]->data[i]);
        if (gp) gp[i] += d;
        if (gt) gt[i] -= d;
    }
}

AVDEF av_tensor *av_mse_loss(av_ctx *c, av_tensor *pred, av_tensor *target, int reduction) {
    av_tensor *out = av__tensor_empty(c, 0, NULL, "av_mse_loss");
    double acc = 0;
    float s = av__reduce_scale(reduction, pred->size);
    av__node *n;
    int i;
    if (!av_same_shape(pred, target)) av__fail_shapes("av_mse_loss", "shapes differ", pred, target);
    for (i = 0; i < pred->size; i++) {
        double d = (double)pred->data[i] - target->data[i];
        acc += d * d;
    }
    out->data[0] = (float)(acc * s);
    n = av__record(c, out, av__mse_backward, pred, target, NULL);
    if (n) n->farg[0] = s;
    return out;
}

/* cross-entropy from logits: log-sum-exp minus the label's logit; saved: softmax */
static void av__cross_entropy_backward(av_ctx *c, av__node *n) {
    int len, R = av__rows(n->in[0], &len, "av_cross_entropy"), r, j;
    const float *prob = (const float *)n->saved;
    const int *labels = (const int *)(prob + (size_t)R * len);
    float s = n->farg[0] * n->out->grad[0];
    (void)c;
    for (r = 0; r < R; r++) {
        float *gx = n->in[0]->grad + (size_t)r * len;
        for (j = 0; j < len; j++) gx[j] += s * prob[(size_t)r * len + j];
        gx[labels[r]] -= s;
    }
}

AVDEF av_tensor *av_cross_entropy(av_ctx *c, av_tensor *logits, const int *labels, int reduction) {
    int len, R = av__rows(logits, &len, "av_cross_entropy"), r, j;
    av_tensor *out = av__tensor_empty(c, 0, NULL, "av_cross_entropy");
    float *prob = (float *)av__arena_alloc(&c->arena, ((size_t)R * len + R + 1) * sizeof(float));
    int *saved_labels = (int *)(prob + (size_t)R * len);
    float s = av__reduce_scale(reduction, R);
    double total = 0;
    av__node *n;
    for (r = 0; r < R; r++) {
        const float *x = logits->data + (size_t)r * len;
        float *p = prob + (size_t)r * len, mx = x[0];
        double sum = 0;
        if (labels[r] < 0 || labels[r] >= len)
            av__fail("av_cross_entropy: label %d of row %d outside [0, %d)", labels[r], r, len);
        for (j = 1; j < len; j++) mx = x[j] > mx ? x[j] : mx;
        for (j = 0; j < len; j++) { p[j] = expf(x[j] - mx); sum += p[j]; }
        for (j = 0; j < len; j++) p[j] = (float)(p[j] / sum);
        total += mx + log(sum) - x[labels[r]];
        saved_labels[r] = labels[r];
    }
    out->data[0] = (float)(total * s);
    n = av__record(c, out, av__cross_entropy_backward, logits, NULL, NULL);
    if (n) { n->saved = prob; n->farg[0] = s; }
    return out;
}

/* BCE with logits, stable: max(x,0) - x t + log(1 + e^-|x|); dx = sigmoid(x) - t, dt = -x */
static void av__bce_backward(av_ctx *c, av__node *n) {
    float s = n->farg[0] * n->out->grad[0], *gx = av__in_grad(n, 0), *gt = av__in_grad(n, 1);
    const float *x = n->in[0]->data, *t = n->in[1]->data;
    int i;
    (void)c;
    for (i = 0; i < n->in[0]->size; i++) {
        if (gx) gx[i] += s * (av__sigmoidf(x[i]) - t[i]);
        if (gt) gt[i] -= s * x[i];
    }
}

AVDEF av_tensor *av_bce_with_logits(av_ctx *c, av_tensor *logits, av_tensor *target, int reduction) {
    av_tensor *out = av__tensor_empty(c, 0, NULL, "av_bce_with_logits");
    const float *x = logits->data, *t = target->data;
    float s = av__reduce_scale(reduction, logits->size);
    double acc = 0;
    av__node *n;
    int i;
    if (!av_same_shape(logits, target)) av__fail_shapes("av_bce_with_logits", "shapes differ", logits, target);
    for (i = 0; i < logits->size; i++)
        acc += (x[i] > 0 ? x[i] : 0.0f) - x[i] * t[i] + log1pf(expf(-fabsf(x[i])));
    out->data[0] = (float)(acc * s);
    n = av__record(c, out, av__bce_backward, logits, target, NULL);
    if (n) n->farg[0] = s;
    return out;
}
