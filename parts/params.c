/* ======================================================================= */
/* parameters                                                              */
/* ======================================================================= */
/* Each parameter is a malloc'd tensor (stable address) with its gradient;
   the optimizer's moment buffers sit beside it, made on first use. */
struct av_model {
    av_tensor **params;
    float **m, **v;   /* optimizer state per parameter (NULL until needed) */
    int n, cap;
    av_rng rng;
    long step;
};

AVDEF av_model *av_model_new(uint64_t seed) {
    av_model *m = (av_model *)AV_MALLOC(sizeof(av_model));
    if (!m) av__fail("out of memory allocating a model");
    memset(m, 0, sizeof *m);
    av_rng_seed(&m->rng, seed);
    return m;
}

AVDEF void av_model_free(av_model *m) {
    int i;
    if (!m) return;
    for (i = 0; i < m->n; i++) {
        AV_FREE((void *)m->params[i]->name);
        AV_FREE(m->params[i]->data);
        AV_FREE(m->params[i]->grad);
        AV_FREE(m->params[i]);
        AV_FREE(m->m[i]);
        AV_FREE(m->v[i]);
    }
    AV_FREE(m->params); AV_FREE(m->m); AV_FREE(m->v);
    AV_FREE(m);
}

static void *av__xcalloc(size_t count, size_t size, const char *what) {
    size_t bytes = count * size;
    void *p = AV_MALLOC(bytes ? bytes : 1);
    if (!p) av__fail("out of memory allocating %s", what);
    memset(p, 0, bytes);
    return p;
}

static void av__init_values(av_rng *rng, av_tensor *t, int init, float arg) {
    int fan_in = 1, fan_out = t->ndim ? t->shape[0] : 1, i;
    float bound = 0, std = 0;
    for (i = 1; i < t->ndim; i++) { fan_in *= t->shape[i]; if (i >= 2) fan_out *= t->shape[i]; }
    if (t->ndim < 2) fan_in = fan_out;
    switch (init) {
    case AV_INIT_ZEROS: break;
    case AV_INIT_ONES: for (i = 0; i < t->size; i++) t->data[i] = 1.0f; return;
    case AV_INIT_NORMAL: std = arg; break;
    case AV_INIT_UNIFORM: bound = arg; break;
    case AV_INIT_XAVIER_UNIFORM: bound = (arg > 0 ? arg : 1.0f) * sqrtf(6.0f / (float)(fan_in + fan_out)); break;
    case AV_INIT_XAVIER_NORMAL: std = (arg > 0 ? arg : 1.0f) * sqrtf(2.0f / (float)(fan_in + fan_out)); break;
    case AV_INIT_KAIMING_UNIFORM: bound = sqrtf(6.0f / (float)fan_in); break;
    case AV_INIT_KAIMING_NORMAL: std = sqrtf(2.0f / (float)fan_in); break;
    case AV_INIT_TORCH_LINEAR: bound = 1.0f / sqrtf((float)fan_in); break;
    default: av__fail("av_param: unknown init %d for '%s'", init, t->name);
    }
    for (i = 0; i < t->size; i++)
        t->data[i] = std > 0 ? std * av_rng_normal(rng) : bound * (2.0f * av_rng_uniform(rng) - 1.0f);
}

static av_tensor *av__param_shape(av_model *m, const char *name, int init, float arg, int ndim, const int *shape) {
    av_tensor *t;
    size_t len = strlen(name);
    int i;
    if (av_model_find(m, name)) av__fail("av_param: a parameter named '%s' exists already", name);
    if (ndim < 0 || ndim > AV_MAX_DIMS) av__fail("av_param: '%s' has %d dimensions (at most %d)", name, ndim, AV_MAX_DIMS);
    if (m->n == m->cap) {
        int cap = m->cap ? 2 * m->cap : 16;
        m->params = (av_tensor **)AV_REALLOC(m->params, (size_t)cap * sizeof(av_tensor *));
        m->m = (float **)AV_REALLOC(m->m, (size_t)cap * sizeof(float *));
        m->v = (float **)AV_REALLOC(m->v, (size_t)cap * sizeof(float *));
        if (!m->params || !m->m || !m->v) av__fail("out of memory growing the parameter list");
        m->cap = cap;
    }
    t = (av_tensor *)av__xcalloc(1, sizeof(av_tensor), "a parameter");
    t->ndim = ndim;
    t->size = 1;
    for (i = 0; i < ndim; i++) {
        if (shape[i] < 0) av__fail("av_param: '%s' has a negative size", name);
        t->shape[i] = shape[i];
        t->size *= shape[i];
    }
    t->name = (const char *)memcpy(av__xcalloc(len + 1, 1, "a parameter name"), name, len + 1);
    t->data = (float *)av__xcalloc((size_t)t->size, sizeof(float), "parameter values");
    t->grad = (float *)av__xcalloc((size_t)t->size, sizeof(float), "parameter gradients");
    t->requires_grad = 1;
    av__init_values(&m->rng, t, init, arg);
    m->params[m->n] = t;
    m->m[m->n] = m->v[m->n] = NULL;
    m->n++;
    return t;
}

AVDEF av_tensor *av_param(av_model *m, const char *name, int init, float init_arg, int ndim, ...) {
    int shape[AV_MAX_DIMS];
    va_list ap;
    va_start(ap, ndim);
    av__read_shape(ndim, ap, shape, "av_param");
    va_end(ap);
    return av__param_shape(m, name, init, init_arg, ndim, shape);
}

AVDEF int av_model_count(const av_model *m) { return m->n; }
AVDEF av_tensor *av_model_param(const av_model *m, int i) { return i >= 0 && i < m->n ? m->params[i] : NULL; }
AVDEF long av_model_step(const av_model *m) { return m->step; }

AVDEF av_tensor *av_model_find(const av_model *m, const char *name) {
    int i;
    for (i = 0; i < m->n; i++)
        if (strcmp(m->params[i]->name, name) == 0) return m->params[i];
    return NULL;
}

AVDEF long av_model_num_values(const av_model *m) {
    long total = 0;
    int i;
    for (i = 0; i < m->n; i++) total += m->params[i]->size;
    return total;
}

AVDEF void av_model_zero_grad(av_model *m) {
    int i;
    for (i = 0; i < m->n; i++) memset(m->params[i]->grad, 0, (size_t)m->params[i]->size * sizeof(float));
}

/* ======================================================================= */
/* layers                                                                  */
/* ======================================================================= */
/* "<prefix>.<suffix>" into buf: sublayer parameter names */
#define AV__NAME_MAX 256
static const char *av__subname(char *buf, const char *prefix, const char *suffix) {
    size_t a = strlen(prefix), b = strlen(suffix);
    if (a + b + 2 > AV__NAME_MAX) av__fail("parameter name '%s.%s' is too long", prefix, suffix);
    memcpy(buf, prefix, a);
    buf[a] = '.';
    memcpy(buf + a + 1, suffix, b + 1);
    return buf;
}

AVDEF av_linear_layer av_linear_layer_new(av_model *m, const char *name, int in, int out, int bias) {
    av_linear_layer l;
    char buf[AV__NAME_MAX];
    l.weight = av_param(m, av__subname(buf, name, "weight"), AV_INIT_TORCH_LINEAR, 0, 2, out, in);
    l.bias = NULL;
    if (bias) l.bias = av_param(m, av__subname(buf, name, "bias"), AV_INIT_UNIFORM, 1.0f / sqrtf((float)(in ? in : 1)), 1, out);
    return l;
}

AVDEF av_tensor *av_linear_forward(av_ctx *c, const av_linear_layer *l, av_tensor *x) {
    return av_linear(c, x, l->weight, l->bias);
}

AVDEF av_tensor *av_activate(av_ctx *c, av_tensor *x, int activation) {
    switch (activation) {
    case AV_ACT_NONE: return x;
    case AV_ACT_RELU: return av_relu(c, x);
    case AV_ACT_TANH: return av_tanh(c, x);
    case AV_ACT_SIGMOID: return av_sigmoid(c, x);
    case AV_ACT_GELU: return av_gelu(c, x);
    case AV_ACT_LEAKY_RELU: return av_leaky_relu(c, x, 0.01f);
    default: av__fail("av_activate: unknown activation %d", activation);
    }
    return x;
}

AVDEF av_mlp av_mlp_new(av_model *m, const char *name, int n_layers, const int *sizes, int activation) {
    av_mlp net;
    char buf[AV__NAME_MAX], index[16];
    int i;
    if (n_layers < 1 || n_layers > AV_MLP_MAX_LAYERS) av__fail("av_mlp_new: %d layers (1 to %d)", n_layers, AV_MLP_MAX_LAYERS);
    memset(&net, 0, sizeof net);
    net.n_layers = n_layers;
    net.activation = activation;
    for (i = 0; i < n_layers; i++) {
        snprintf(index, sizeof index, "%d", i);
        net.layers[i] = av_linear_layer_new(m, av__subname(buf, name, index), sizes[i], sizes[i + 1], 1);
    }
    return net;
}

AVDEF av_tensor *av_mlp_forward(av_ctx *c, const av_mlp *net, av_tensor *x) {
    int i;
    for (i = 0; i < net->n_layers; i++) {
        x = av_linear_forward(c, &net->layers[i], x);
        if (i + 1 < net->n_layers) x = av_activate(c, x, net->activation);
    }
    return x;
}

/* ======================================================================= */
/* optimizers and schedules                                                */
/* ======================================================================= */
AVDEF av_optim av_sgd(float lr, float momentum, float weight_decay) {
    av_optim o;
    memset(&o, 0, sizeof o);
    o.kind = AV_OPT_SGD; o.lr = lr; o.momentum = momentum; o.weight_decay = weight_decay;
    return o;
}

AVDEF av_optim av_adam(float lr) {
    av_optim o;
    memset(&o, 0, sizeof o);
    o.kind = AV_OPT_ADAM; o.lr = lr; o.beta1 = 0.9f; o.beta2 = 0.999f; o.eps = 1e-8f;
    return o;
}

AVDEF av_optim av_adamw(float lr, float weight_decay) {
    av_optim o = av_adam(lr);
    o.kind = AV_OPT_ADAMW;
    o.weight_decay = weight_decay;
    return o;
}

/* PyTorch's update rules, so runs can be compared step for step:
   SGD:   g += wd p; v = mu v + g; p -= lr v          (v = g when mu = 0)
   Adam:  g += wd p; m, v moments; p -= lr mhat / (sqrt(vhat) + eps)
   AdamW: p -= lr wd p, then Adam without the L2 term. */
AVDEF int av_optim_step(av_model *m, const av_optim *o) {
    int i, j;
    double bc1, bc2;
    for (i = 0; i < m->n; i++)
        for (j = 0; j < m->params[i]->size; j++)
            if (!isfinite(m->params[i]->grad[j]))
                return av__set_error(AV_ERR_NAN, "av_optim_step: gradient of '%s' is not finite (%g at %d); step skipped",
                                     m->params[i]->name, (double)m->params[i]->grad[j], j);
    m->step++;
    bc1 = 1.0 - pow(o->beta1, (double)m->step);
    bc2 = 1.0 - pow(o->beta2, (double)m->step);
    for (i = 0; i < m->n; i++) {
        av_tensor *t = m->params[i];
        float *p = t->data, *g = t->grad, wd = o->weight_decay, lr = o->lr;
        if (!m->m[i]) m->m[i] = (float *)av__xcalloc((size_t)t->size, sizeof(float), "optimizer state");
        if (o->kind == AV_OPT_SGD) {
            float *vel = m->m[i], mu = o->momentum;
            AV__PAR(t->size)
            for (j = 0; j < t->size; j++) {
                float gj = g[j] + wd * p[j];
                vel[j] = mu * vel[j] + gj;
                p[j] -= lr * (mu != 0.0f ? vel[j] : gj);
            }
            continue;
        }
        if (!m->v[i]) m->v[i] = (float *)av__xcalloc((size_t)t->size, sizeof(float), "optimizer state");
        {
            float *mm = m->m[i], *vv = m->v[i], b1 = o->beta1, b2 = o->beta2;
            float step_size = (float)(lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
            int decoupled = o->kind == AV_OPT_ADAMW;
            AV__PAR(t->size)
            for (j = 0; j < t->size; j++) {
                float gj = g[j] + (decoupled ? 0.0f : wd * p[j]);
                if (decoupled) p[j] -= lr * wd * p[j];
                mm[j] = b1 * mm[j] + (1.0f - b1) * gj;
                vv[j] = b2 * vv[j] + (1.0f - b2) * gj * gj;
                p[j] -= step_size * mm[j] / (sqrtf(vv[j]) * inv_sqrt_bc2 + o->eps);
            }
        }
    }
    return AV_OK;
}

AVDEF float av_grad_norm(const av_model *m) {
    double ss = 0;
    int i, j;
    for (i = 0; i < m->n; i++)
        for (j = 0; j < m->params[i]->size; j++) ss += (double)m->params[i]->grad[j] * m->params[i]->grad[j];
    return (float)sqrt(ss);
}

AVDEF float av_clip_grad_norm(av_model *m, float max_norm) {
    float norm = av_grad_norm(m);
    int i, j;
    if (norm > max_norm) {
        float s = max_norm / (norm + 1e-6f); /* PyTorch's epsilon */
        for (i = 0; i < m->n; i++)
            for (j = 0; j < m->params[i]->size; j++) m->params[i]->grad[j] *= s;
    }
    return norm;
}

AVDEF float av_lr_warmup_cosine(long step, long warmup, long total, float lr_max, float lr_min) {
    double progress;
    if (step < warmup) return lr_max * (float)(step + 1) / (float)warmup;
    progress = total > warmup ? (double)(step - warmup) / (double)(total - warmup) : 1.0;
    if (progress > 1.0) progress = 1.0;
    return lr_min + (lr_max - lr_min) * (float)(0.5 * (1.0 + cos(3.14159265358979323846 * progress)));
}
