/* The canonical MLP VAE on Fashion-MNIST (as PyTorch's examples/vae):
   784-400-20-400-784, ReLU, Bernoulli decoder, Adam 1e-3, batch 128.

     ./build/vae_fashion [--data data/fashion] [--epochs 10] [--latent 20] [--hidden 400]
                         [--beta 1] [--kl-warmup STEPS] [--batch 128] [--lr 1e-3] [--seed 1]
                         [--iwae-k 100] [--out out/vae] [--load MODEL] [--quick]

   Prints train and test -ELBO (nats per image) each epoch, then the IWAE
   estimate of the test NLL, and writes samples, reconstructions and
   interpolations (plus the 2-D manifold and latent scatter with --latent 2). */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include <sys/stat.h>
#include "common.h"

/* The networks; the library's av_vae holds the Gaussian head and does the rest. */
typedef struct nets { av_mlp enc, dec; } nets;

static av_tensor *encoder(av_ctx *c, av_tensor *x, void *user) {
    return av_relu(c, av_mlp_forward(c, &((nets *)user)->enc, x));
}

static av_tensor *decoder(av_ctx *c, av_tensor *z, void *user) { /* Bernoulli logits */
    return av_mlp_forward(c, &((nets *)user)->dec, z);
}

static av_vae vae_new(av_model *m, nets *n, int dim, int hidden, int latent) {
    int enc_sizes[2], dec_sizes[3];
    enc_sizes[0] = dim; enc_sizes[1] = hidden;
    dec_sizes[0] = latent; dec_sizes[1] = hidden; dec_sizes[2] = dim;
    n->enc = av_mlp_new(m, "enc", 1, enc_sizes, AV_ACT_RELU);
    n->dec = av_mlp_new(m, "dec", 2, dec_sizes, AV_ACT_RELU);
    return av_vae_new(m, "vae", hidden, latent, encoder, decoder, n, AV_BERNOULLI);
}

/* -ELBO of a batch (mean over examples); adds the summed terms to totals */
static av_tensor *vae_loss(av_ctx *c, const av_vae *v, av_tensor *x, float beta, double *nll_sum, double *kl_sum) {
    av_tensor *nll, *kl, *loss = av_vae_loss(c, v, x, beta, &nll, &kl);
    int i;
    for (i = 0; i < nll->size; i++) { *nll_sum += nll->data[i]; *kl_sum += kl->data[i]; }
    return loss;
}

/* mean -ELBO (beta = 1) and, if k > 0, the IWAE NLL over the first n test images */
static void evaluate(av_ctx *c, const av_vae *v, const ex_dataset *test, int n, int batch, int k, float *xb,
                     double *neg_elbo, double *iwae_nll) {
    double nll = 0, kl = 0, log_px_sum = 0, *log_px = (double *)malloc((size_t)batch * sizeof(double));
    int start, prev = av_set_grad_enabled(c, 0), i;
    for (start = 0; start < n; start += batch) {
        int count = n - start < batch ? n - start : batch;
        av_tensor *x;
        av_ctx_reset(c);
        ex_gather(test, NULL, start, count, xb, NULL);
        x = av_wrap(c, xb, 2, count, test->dim);
        vae_loss(c, v, x, 1.0f, &nll, &kl);
        if (k > 0) {
            av_vae_iwae(c, v, x, k, log_px);
            for (i = 0; i < count; i++) log_px_sum += log_px[i];
            ex_progress("iwae", start + count, n, "");
        }
    }
    *neg_elbo = (nll + kl) / n;
    *iwae_nll = k > 0 ? -log_px_sum / n : 0;
    av_set_grad_enabled(c, prev);
    free(log_px);
}

static void copy_rows(float *dst, const av_tensor *t) { memcpy(dst, t->data, (size_t)t->size * sizeof(float)); }

static int write_pictures(av_ctx *c, const av_vae *v, const ex_dataset *test, const char *dir, float *xb) {
    char path[1024];
    int dim = test->dim, i, j, rc = 0, prev = av_set_grad_enabled(c, 0);
    float *grid = (float *)malloc((size_t)400 * dim * sizeof(float));
    av_tensor *recon;

    av_ctx_reset(c);
    copy_rows(grid, av_vae_sample(c, v, 64));
    snprintf(path, sizeof path, "%s/samples.png", dir);
    rc |= ex_write_grid(path, grid, 64, 8, 8, 28, 28);

    ex_gather(test, NULL, 0, 32, xb, NULL);
    recon = av_vae_reconstruct(c, v, av_wrap(c, xb, 2, 32, dim));
    snprintf(path, sizeof path, "%s/reconstructions.png", dir);
    rc |= ex_write_pairs(path, xb, recon->data, dim);

    /* 8 rows, each from one test image to the next in 10 steps */
    for (i = 0; i < 8; i++)
        copy_rows(grid + (size_t)10 * i * dim, av_vae_interpolate(c, v, av_wrap(c, xb + (size_t)2 * i * dim, 2, 2, dim), 10));
    snprintf(path, sizeof path, "%s/interpolations.png", dir);
    rc |= ex_write_grid(path, grid, 80, 8, 10, 28, 28);

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
        copy_rows(grid, av_sigmoid(c, v->decoder(c, plane, v->user)));
        snprintf(path, sizeof path, "%s/manifold.png", dir);
        rc |= ex_write_grid(path, grid, 400, 20, 20, 28, 28);
        for (start = 0; start < n; start += 500) {
            int count = n - start < 500 ? n - start : 500;
            av_ctx_reset(c);
            ex_gather(test, NULL, start, count, xb, NULL);
            av_vae_encode(c, v, av_wrap(c, xb, 2, count, dim), &mu, &logvar);
            memcpy(zs + (size_t)2 * start, mu->data, (size_t)2 * count * sizeof(float));
        }
        snprintf(path, sizeof path, "%s/latent_scatter.png", dir);
        rc |= ex_write_scatter(path, zs, test->y, n, 512);
        free(zs);
    }
    av_set_grad_enabled(c, prev);
    free(grid);
    return rc;
}

int main(int argc, char **argv) {
    const char *data = ex_arg(argc, argv, "--data", "data/fashion");
    const char *out_dir = ex_arg(argc, argv, "--out", "out/vae");
    const char *load = ex_arg(argc, argv, "--load", NULL);
    int quick = ex_flag(argc, argv, "--quick");
    int epochs = ex_arg_int(argc, argv, "--epochs", quick ? 1 : 10);
    int latent = ex_arg_int(argc, argv, "--latent", 20), hidden = ex_arg_int(argc, argv, "--hidden", 400);
    int batch = ex_arg_int(argc, argv, "--batch", 128), k = ex_arg_int(argc, argv, "--iwae-k", quick ? 10 : 100);
    long warmup = ex_arg_int(argc, argv, "--kl-warmup", 0);
    float beta = ex_arg_float(argc, argv, "--beta", 1.0f);
    av_optim opt = av_adam(ex_arg_float(argc, argv, "--lr", 1e-3f));
    ex_dataset train, test;
    av_model *model;
    av_ctx *c;
    av_vae v;
    nets net;
    int *order, epoch, n_train, n_test, rc = 0;
    float *xb;
    double neg_elbo = 0, iwae_nll = 0, img_per_s = 0, t_train = 0;
    char path[1024];

    if (ex_load_fashion(data, &train, &test)) return 1;
    n_train = quick ? 6016 : train.n;
    n_test = quick ? 1000 : test.n;
    if (ex_mkdirs(out_dir)) return 1;
    model = av_model_new((uint64_t)ex_arg_int(argc, argv, "--seed", 1));
    c = av_ctx_new();
    av_ctx_seed(c, (uint64_t)ex_arg_int(argc, argv, "--seed", 1) + 1);
    v = vae_new(model, &net, train.dim, hidden, latent);
    order = (int *)malloc((size_t)train.n * sizeof(int));
    xb = (float *)malloc((size_t)(batch > 500 ? batch : 500) * train.dim * sizeof(float));
    printf("vae_fashion: %d-%d-%d-%d-%d, %ld parameters, beta %g, gemm path %s\n", train.dim, hidden, latent, hidden,
           train.dim, av_model_num_values(model), (double)beta, av_isa_name(av_get_isa()));

    if (load) {
        if ((rc = av_model_load(model, load)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else printf("loaded %s\n", load);
        epochs = 0;
    }
    for (epoch = 1; epoch <= epochs && !rc; epoch++) {
        double nll = 0, kl = 0, t0 = ex_now(), test_elbo, unused;
        int start, seen = 0;
        ex_shuffle(order, train.n, av_ctx_rng(c));
        for (start = 0; start < n_train && !rc; start += batch) {
            int count = n_train - start < batch ? n_train - start : batch;
            char info[64];
            av_tensor *loss;
            av_ctx_reset(c);
            ex_gather(&train, order, start, count, xb, NULL);
            loss = vae_loss(c, &v, av_wrap(c, xb, 2, count, train.dim), av_kl_warmup(av_model_step(model), warmup, beta),
                            &nll, &kl);
            av_model_zero_grad(model);
            av_backward(c, loss);
            if ((rc = av_optim_step(model, &opt)) != 0) fprintf(stderr, "\nerror: %s\n", av_error());
            seen += count;
            snprintf(info, sizeof info, "-elbo %.1f", (nll + kl) / seen);
            if ((start / batch) % 25 == 0 || start + count >= n_train) ex_progress("train", seen, n_train, info);
        }
        t_train += ex_now() - t0;
        img_per_s = (double)n_train * epoch / t_train;
        evaluate(c, &v, &test, n_test, 500, 0, xb, &test_elbo, &unused);
        printf("epoch %2d  train -elbo %.2f (rec %.2f + kl %.2f)  test -elbo %.2f nats/image  %.0f img/s\n", epoch,
               (nll + kl) / seen, nll / seen, kl / seen, test_elbo, (double)seen / (ex_now() - t0));
        fflush(stdout);
    }
    if (!rc) {
        evaluate(c, &v, &test, n_test, 100, k, xb, &neg_elbo, &iwae_nll);
        printf("test -elbo %.2f nats/image, IWAE (k=%d) NLL %.2f nats/image on %d images\n", neg_elbo, k, iwae_nll, n_test);
        if (!load) {
            snprintf(path, sizeof path, "%s/vae.safetensors", out_dir);
            if ((rc = av_model_save(model, path)) != 0) fprintf(stderr, "error: %s\n", av_error());
            else printf("saved %s\n", path);
        }
        if (!rc && (rc = write_pictures(c, &v, &test, out_dir, xb)) == 0)
            printf("pictures: %s/samples.png %s/reconstructions.png %s/interpolations.png%s\n", out_dir, out_dir,
                   out_dir, latent == 2 ? " manifold.png latent_scatter.png" : "");
    }
    printf("summary: {\"test_neg_elbo\": %.3f, \"iwae_nll\": %.3f, \"iwae_k\": %d, \"img_per_s\": %.0f, \"epochs\": %d, "
           "\"latent\": %d, \"beta\": %g}\n",
           neg_elbo, iwae_nll, k, img_per_s, epochs, latent, (double)beta);
    free(order); free(xb);
    ex_dataset_free(&train); ex_dataset_free(&test);
    av_ctx_free(c);
    av_model_free(model);
    return rc ? 1 : 0;
}
