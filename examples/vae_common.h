/* What the VAE examples share: the MLP VAE of vae_fashion (sagan_fashion
   rebuilds it to load its saved weights), the loss of a batch, the test
   evaluation (-ELBO and the IWAE NLL) and the pictures. Example-only code. */
#ifndef AV_EXAMPLES_VAE_COMMON_H
#define AV_EXAMPLES_VAE_COMMON_H
#include "common.h"

/* The MLP VAE's networks; the library's av_vae holds the Gaussian head and does the rest. */
typedef struct ex_mlp_vae_nets { av_mlp enc, dec; } ex_mlp_vae_nets;

static inline av_tensor *ex__mlp_vae_encoder(av_ctx *c, av_tensor *x, void *user) {
    return av_relu(c, av_mlp_forward(c, &((ex_mlp_vae_nets *)user)->enc, x));
}

static inline av_tensor *ex__mlp_vae_decoder(av_ctx *c, av_tensor *z, void *user) { /* Bernoulli logits */
    return av_mlp_forward(c, &((ex_mlp_vae_nets *)user)->dec, z);
}

/* dim-hidden-latent-hidden-dim, ReLU, Bernoulli decoder: "enc.*", "dec.*", "vae.head.*" */
static inline av_vae ex_mlp_vae_new(av_model *m, ex_mlp_vae_nets *n, int dim, int hidden, int latent) {
    int enc_sizes[2], dec_sizes[3];
    enc_sizes[0] = dim; enc_sizes[1] = hidden;
    dec_sizes[0] = latent; dec_sizes[1] = hidden; dec_sizes[2] = dim;
    n->enc = av_mlp_new(m, "enc", 1, enc_sizes, AV_ACT_RELU);
    n->dec = av_mlp_new(m, "dec", 2, dec_sizes, AV_ACT_RELU);
    return av_vae_new(m, "vae", hidden, latent, ex__mlp_vae_encoder, ex__mlp_vae_decoder, n, AV_BERNOULLI);
}

/* The batch's loss: the -ELBO (beta-weighted), or with k > 0 the -IWAE-k
   bound; adds the per-example reconstruction and KL terms (for IWAE the
   whole negative bound, and no KL) to the totals. */
static inline av_tensor *ex_vae_batch_loss(av_ctx *c, const av_vae *v, av_tensor *x, int k, float beta,
                                           double *rec_sum, double *kl_sum) {
    av_tensor *nll, *kl, *loss;
    int i;
    if (k > 0) {
        loss = av_vae_iwae_loss(c, v, x, k, &nll);
        for (i = 0; i < nll->size; i++) *rec_sum -= nll->data[i];
        return loss;
    }
    loss = av_vae_loss(c, v, x, beta, &nll, &kl);
    for (i = 0; i < nll->size; i++) { *rec_sum += nll->data[i]; *kl_sum += kl->data[i]; }
    return loss;
}

/* mean -ELBO (beta = 1) over the first n test images and, if k > 0, the
   IWAE NLL over the first n_iwae of them; in eval mode (batch norm's
   running statistics), without a tape. xb holds batch images. */
static inline void ex_vae_evaluate(av_ctx *c, const av_vae *v, const ex_dataset *test, int n, int n_iwae, int batch,
                                   int k, float *xb, double *neg_elbo, double *iwae_nll) {
    double nll = 0, kl = 0, log_px_sum = 0, *log_px = (double *)malloc((size_t)batch * sizeof(double));
    int start, prev = av_set_grad_enabled(c, 0), was_training = av_set_training(c, 0), i;
    if (k <= 0) n_iwae = 0;
    for (start = 0; start < n; start += batch) {
        int count = n - start < batch ? n - start : batch;
        av_tensor *x;
        av_ctx_reset(c);
        ex_gather(test, NULL, start, count, xb, NULL);
        x = av_wrap(c, xb, 2, count, test->dim);
        ex_vae_batch_loss(c, v, x, 0, 1.0f, &nll, &kl);
        if (start < n_iwae) {
            count = n_iwae - start < count ? n_iwae - start : count;
            av_vae_iwae(c, v, av_wrap(c, xb, 2, count, test->dim), k, log_px);
            for (i = 0; i < count; i++) log_px_sum += log_px[i];
            ex_progress("iwae", start + count, n_iwae, "");
        }
    }
    *neg_elbo = (nll + kl) / n;
    *iwae_nll = n_iwae > 0 ? -log_px_sum / n_iwae : 0;
    av_set_training(c, was_training);
    av_set_grad_enabled(c, prev);
    free(log_px);
}

static inline void ex__copy_rows(float *dst, const av_tensor *t) {
    memcpy(dst, t->data, (size_t)t->size * sizeof(float));
}

/* samples.png, reconstructions.png and interpolations.png in dir (plus
   manifold_2d.png and latent_scatter_2d.png for a 2-D latent) at the data's
   image size, from as many test images as there are (up to 32); in eval
   mode. xb holds 500 images. Returns 0, or -1 after an error message. */
static inline int ex_vae_pictures(av_ctx *c, const av_vae *v, const ex_dataset *test, const char *dir, float *xb) {
    char path[1100];
    int dim = test->dim, h = test->h, w = test->w, shown = test->n < 32 ? test->n : 32, rows, i, j, rc = 0;
    int prev = av_set_grad_enabled(c, 0), was_training = av_set_training(c, 0);
    float *grid = (float *)malloc((size_t)400 * dim * sizeof(float));
    av_tensor *recon;
    if (!grid) { fprintf(stderr, "error: out of memory for the pictures\n"); return -1; }

    av_ctx_reset(c);
    ex__copy_rows(grid, av_vae_sample(c, v, 64));
    snprintf(path, sizeof path, "%s/samples.png", dir);
    rc |= ex_write_grid(path, grid, 64, 8, 8, h, w);

    ex_gather(test, NULL, 0, shown, xb, NULL);
    recon = av_vae_reconstruct(c, v, av_wrap(c, xb, 2, shown, dim));
    snprintf(path, sizeof path, "%s/reconstructions.png", dir);
    rc |= ex_write_pairs(path, xb, recon->data, shown, h, w);

    /* up to 8 rows, each from one test image to the next in 10 steps */
    if (shown == 1) memcpy(xb + dim, xb, (size_t)dim * sizeof(float)); /* one image: from itself to itself */
    rows = shown / 2 < 1 ? 1 : shown / 2 > 8 ? 8 : shown / 2;
    for (i = 0; i < rows; i++)
        ex__copy_rows(grid + (size_t)10 * i * dim,
                      av_vae_interpolate(c, v, av_wrap(c, xb + (size_t)2 * i * dim, 2, 2, dim), 10));
    snprintf(path, sizeof path, "%s/interpolations.png", dir);
    rc |= ex_write_grid(path, grid, 10 * rows, rows, 10, h, w);

    if (v->latent == 2) { /* the decoded latent plane and the test set's means */
        int n = test->n, start;
        float *zs = (float *)malloc((size_t)2 * n * sizeof(float));
        av_tensor *plane, *mu, *logvar;
        av_ctx_reset(c);
        plane = av_zeros(c, 2, 400, 2);
        for (i = 0; i < 20; i++)
            for (j = 0; j < 20; j++) {
                plane->data[2 * (20 * i + j)] = -3.0f + 6.0f * j / 19.0f;
                plane->data[2 * (20 * i + j) + 1] = 3.0f - 6.0f * i / 19.0f;
            }
        ex__copy_rows(grid, av_sigmoid(c, v->decoder(c, plane, v->user)));
        snprintf(path, sizeof path, "%s/manifold_2d.png", dir);
        rc |= ex_write_grid(path, grid, 400, 20, 20, h, w);
        for (start = 0; zs && start < n; start += 500) {
            int count = n - start < 500 ? n - start : 500;
            av_ctx_reset(c);
            ex_gather(test, NULL, start, count, xb, NULL);
            av_vae_encode(c, v, av_wrap(c, xb, 2, count, dim), &mu, &logvar);
            memcpy(zs + (size_t)2 * start, mu->data, (size_t)2 * count * sizeof(float));
        }
        snprintf(path, sizeof path, "%s/latent_scatter_2d.png", dir);
        rc |= zs ? ex_write_scatter(path, zs, test->y, n, 512, ex_class_names) : -1;
        free(zs);
    }
    av_set_training(c, was_training);
    av_set_grad_enabled(c, prev);
    free(grid);
    return rc;
}
#endif
