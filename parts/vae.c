/* ======================================================================= */
/* VAE                                                                     */
/* ======================================================================= */
AVDEF av_gaussian_head av_gaussian_head_new(av_model *m, const char *name, int in, int latent) {
    av_gaussian_head g;
    char buf[AV__NAME_MAX];
    g.mu = av_linear_layer_new(m, av__subname(buf, name, "mu"), in, latent, 1);
    g.logvar = av_linear_layer_new(m, av__subname(buf, name, "logvar"), in, latent, 1);
    return g;
}

AVDEF void av_gaussian_head_forward(av_ctx *c, const av_gaussian_head *g, av_tensor *h, av_tensor **mu, av_tensor **logvar) {
    *mu = av_linear_forward(c, &g->mu, h);
    *logvar = av_linear_forward(c, &g->logvar, h);
}

/* Rows of a [B, ...] tensor: B and the per-example width. */
static int av__examples(const av_tensor *x, int *width, const char *op) {
    if (x->ndim < 1) av__fail_shapes(op, "needs a batch axis", x, NULL);
    *width = x->shape[0] ? x->size / x->shape[0] : 0;
    return x->shape[0];
}

/* z = mu + sigma eps, sigma = exp(logvar/2): dmu = g, dlogvar = g eps sigma / 2 */
static void av__reparameterize_backward(av_ctx *c, av__node *n) {
    const float *eps = (const float *)n->saved, *lv = n->in[1]->data, *g = n->out->grad;
    float *gmu = av__in_grad(n, 0), *glv = av__in_grad(n, 1);
    int i;
    (void)c;
    for (i = 0; i < n->out->size; i++) {
        if (gmu) gmu[i] += g[i];
        if (glv) glv[i] += g[i] * eps[i] * 0.5f * expf(0.5f * lv[i]);
    }
}

AVDEF av_tensor *av_reparameterize(av_ctx *c, av_tensor *mu, av_tensor *logvar) {
    av_tensor *z;
    float *eps;
    av__node *n;
    int i;
    if (!av_same_shape(mu, logvar)) av__fail_shapes("av_reparameterize", "mu and logvar differ", mu, logvar);
    z = av__like(c, mu, "av_reparameterize");
    eps = (float *)av__arena_alloc(&c->arena, (size_t)mu->size * sizeof(float));
    for (i = 0; i < mu->size; i++) {
        eps[i] = av_rng_normal(&c->rng);
        z->data[i] = mu->data[i] + expf(0.5f * logvar->data[i]) * eps[i];
    }
    n = av__record(c, z, av__reparameterize_backward, mu, logvar, NULL);
    if (n) n->saved = eps;
    return z;
}

/* KL = sum (mu^2 + e^lv - 1 - lv) / 2: dmu = g mu, dlv = g (e^lv - 1) / 2 */
static void av__kl_backward(av_ctx *c, av__node *n) {
    int w, B = av__examples(n->in[0], &w, "av_kl_std_normal"), b;
    float *gmu = av__in_grad(n, 0), *glv = av__in_grad(n, 1);
    (void)c;
    AV__PAR((long)B * w)
    for (b = 0; b < B; b++) {
        int j;
        float g = n->out->grad[b];
        for (j = 0; j < w; j++) {
            size_t i = (size_t)b * w + j;
            if (gmu) gmu[i] += g * n->in[0]->data[i];
            if (glv) glv[i] += g * 0.5f * (expf(n->in[1]->data[i]) - 1.0f);
        }
    }
}

AVDEF av_tensor *av_kl_std_normal(av_ctx *c, av_tensor *mu, av_tensor *logvar) {
    int w, B = av__examples(mu, &w, "av_kl_std_normal"), b;
    av_tensor *out;
    if (!av_same_shape(mu, logvar)) av__fail_shapes("av_kl_std_normal", "mu and logvar differ", mu, logvar);
    out = av__tensor_empty(c, 1, &B, "av_kl_std_normal");
    AV__PAR((long)B * w)
    for (b = 0; b < B; b++) {
        int j;
        double kl = 0;
        for (j = 0; j < w; j++) {
            float m = mu->data[(size_t)b * w + j], lv = logvar->data[(size_t)b * w + j];
            kl += 0.5 * ((double)m * m + exp((double)lv) - 1.0 - lv);
        }
        out->data[b] = (float)kl;
    }
    av__record(c, out, av__kl_backward, mu, logvar, NULL);
    return out;
}

/* Bernoulli NLL from logits, stable BCE per element: dlogits = g (sigmoid - x), dx = -g logits */
static void av__bernoulli_backward(av_ctx *c, av__node *n) {
    int w, B = av__examples(n->in[0], &w, "av_bernoulli_nll"), b;
    float *gl = av__in_grad(n, 0), *gx = av__in_grad(n, 1);
    (void)c;
    AV__PAR((long)B * w)
    for (b = 0; b < B; b++) {
        int j;
        const float *l = n->in[0]->data + (size_t)b * w, *x = n->in[1]->data + (size_t)b * w;
        float g = n->out->grad[b];
        for (j = 0; j < w; j++) {
            if (gl) gl[(size_t)b * w + j] += g * (av__sigmoidf(l[j]) - x[j]);
            if (gx) gx[(size_t)b * w + j] -= g * l[j];
        }
    }
}

AVDEF av_tensor *av_bernoulli_nll(av_ctx *c, av_tensor *logits, av_tensor *x) {
    int w, B = av__examples(logits, &w, "av_bernoulli_nll"), b;
    av_tensor *out;
    if (!av_same_shape(logits, x)) av__fail_shapes("av_bernoulli_nll", "logits and x differ", logits, x);
    out = av__tensor_empty(c, 1, &B, "av_bernoulli_nll");
    AV__PAR((long)B * w)
    for (b = 0; b < B; b++) {
        int j;
        const float *l = logits->data + (size_t)b * w, *xs = x->data + (size_t)b * w;
        double acc = 0;
        for (j = 0; j < w; j++) acc += (l[j] > 0 ? l[j] : 0.0f) - l[j] * xs[j] + log1pf(expf(-fabsf(l[j])));
        out->data[b] = (float)acc;
    }
    av__record(c, out, av__bernoulli_backward, logits, x, NULL);
    return out;
}

/* -log N(x | mean, e^lv) = (log 2pi + lv + (x - mean)^2 e^-lv) / 2, summed per example;
   composed from ops so logvar may be fixed, learned or broadcast. */
static av_tensor *av__gaussian_nll(av_ctx *c, av_tensor *mean, av_tensor *logvar, av_tensor *x, const char *op) {
    av_tensor *terms = av_square(c, mean ? av_sub(c, x, mean) : x);
    int w, B = av__examples(x, &w, op);
    if (mean && !av_same_shape(mean, x)) av__fail_shapes(op, "shapes differ", mean, x);
    if (logvar) terms = av_add(c, av_mul(c, terms, av_exp(c, av_scale(c, logvar, -1.0f))), logvar);
    terms = av_add_scalar(c, terms, 1.8378770664093453f); /* log 2pi */
    return av_scale(c, av_sum(c, av_reshape(c, terms, 2, B, w), 1, 0), 0.5f);
}

AVDEF av_tensor *av_gaussian_nll(av_ctx *c, av_tensor *mean, av_tensor *logvar, av_tensor *x) {
    return av__gaussian_nll(c, mean, logvar, x, "av_gaussian_nll");
}

AVDEF av_tensor *av_gaussian_log_prob(av_ctx *c, av_tensor *z, av_tensor *mu, av_tensor *logvar) {
    return av_scale(c, av__gaussian_nll(c, mu, logvar, z, "av_gaussian_log_prob"), -1.0f);
}

AVDEF av_tensor *av_neg_elbo(av_ctx *c, av_tensor *nll, av_tensor *kl, float beta) {
    if (!av_same_shape(nll, kl) || nll->ndim != 1) av__fail_shapes("av_neg_elbo", "nll and kl must both be [B]", nll, kl);
    return av_mean_all(c, beta == 1.0f ? av_add(c, nll, kl) : av_add(c, nll, av_scale(c, kl, beta)));
}

AVDEF float av_kl_warmup(long step, long warmup_steps, float beta_max) {
    if (warmup_steps <= 0 || step >= warmup_steps) return beta_max;
    if (step <= 0) return 0.0f;
    return beta_max * (float)step / (float)warmup_steps;
}

AVDEF double av_log_mean_exp(const double *v, int n) {
    double mx, sum = 0;
    int i;
    if (n < 1) av__fail("av_log_mean_exp: no values");
    mx = v[0];
    for (i = 1; i < n; i++) mx = v[i] > mx ? v[i] : mx;
    if (isinf(mx)) return mx;
    for (i = 0; i < n; i++) sum += exp(v[i] - mx);
    return mx + log(sum / n);
}

AVDEF void av_iwae_log_px(av_ctx *c, av_tensor *x, av_tensor *mu, av_tensor *logvar, int k, av_nll_fn nll, void *user,
                          double *log_px) {
    int B = mu->shape[0], j, b, prev = av_set_grad_enabled(c, 0);
    double *logw = (double *)av__arena_alloc(&c->arena, (size_t)k * B * sizeof(double)), *row;
    if (k < 1) av__fail("av_iwae_log_px: k = %d samples", k);
    for (j = 0; j < k; j++) {
        av_mark mark = av_ctx_mark(c);
        av_tensor *z = av_reparameterize(c, mu, logvar);
        av_tensor *log_pz = av_gaussian_log_prob(c, z, NULL, NULL), *log_qz = av_gaussian_log_prob(c, z, mu, logvar);
        av_tensor *nll_x = nll(c, z, x, user);
        if (nll_x->size != B) av__fail_shapes("av_iwae_log_px", "nll must return one value per example", nll_x, mu);
        for (b = 0; b < B; b++)
            logw[(size_t)b * k + j] = -(double)nll_x->data[b] + log_pz->data[b] - log_qz->data[b];
        av_ctx_rewind(c, mark);
    }
    for (b = 0, row = logw; b < B; b++, row += k) log_px[b] = av_log_mean_exp(row, k);
    av_set_grad_enabled(c, prev);
}

AVDEF av_tensor *av_interpolate(av_ctx *c, const float *z0, const float *z1, int dim, int steps) {
    int shape[2], i, j;
    av_tensor *out;
    shape[0] = steps;
    shape[1] = dim;
    out = av__tensor_empty(c, 2, shape, "av_interpolate");
    for (i = 0; i < steps; i++) {
        float t = steps > 1 ? (float)i / (float)(steps - 1) : 0.0f;
        for (j = 0; j < dim; j++) out->data[(size_t)i * dim + j] = (1.0f - t) * z0[j] + t * z1[j]; /* exact at both ends */
    }
    return out;
}
