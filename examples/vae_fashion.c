/* The canonical MLP VAE on Fashion-MNIST (as PyTorch's examples/vae):
   784-400-20-400-784, ReLU, Bernoulli decoder, Adam 1e-3, batch 128.

     ./build/vae_fashion [flags]          (--help lists them, with defaults and ranges)

   Trains on the ELBO, or with --iwae-k-train K on the K-sample IWAE bound;
   prints train and test -ELBO (nats per image) each epoch, then the IWAE
   estimate of the test NLL; saves OUT/vae.safetensors and writes samples,
   reconstructions and interpolations (plus manifold_2d.png and
   latent_scatter_2d.png with --latent 2). --load MODEL starts from saved
   weights: alone it only evaluates and draws, with --epochs N it trains N
   more epochs (Adam starts afresh) and saves the result to OUT.

   Data parallel: "mpirun -np R ./build/vae_fashion --mpi" trains on R
   ranks, each on --batch images of every global batch of R x --batch, and
   evaluates on its share of the test images: the model one process trains
   with --batch R x batch, the same shuffles and, on the ELBO, the same
   noise: each rank takes its rows' draws of the step's Philox stream (see
   examples/common.h and [10 mpi] in attnvae.h). */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "common.h"

#define MAX_IWAE_ROWS 12800 /* k * batch rows through the decoder in one IWAE training step */

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

/* The batch's loss: the -ELBO (beta-weighted) with noise eps, or fresh
   noise when eps is NULL, or with k > 0 the -IWAE-k bound; adds the
   per-example reconstruction and KL terms (for IWAE the whole negative
   bound, and no KL) to the totals. */
static av_tensor *batch_loss(av_ctx *c, const av_vae *v, av_tensor *x, const av_tensor *eps, int k, float beta,
                             double *rec_sum, double *kl_sum) {
    av_tensor *nll, *kl, *mu, *logvar, *z;
    int i;
    if (k > 0) {
        av_tensor *loss = av_vae_iwae_loss(c, v, x, k, &nll);
        for (i = 0; i < nll->size; i++) *rec_sum -= nll->data[i];
        return loss;
    }
    av_vae_encode(c, v, x, &mu, &logvar); /* av_vae_loss, with the caller's noise */
    z = eps ? av_reparameterize_eps(c, mu, logvar, eps) : av_reparameterize(c, mu, logvar);
    nll = av_vae_nll(c, v, z, x);
    kl = av_kl_std_normal(c, mu, logvar);
    for (i = 0; i < nll->size; i++) { *rec_sum += nll->data[i]; *kl_sum += kl->data[i]; }
    return av_neg_elbo(c, nll, kl, beta);
}

/* Mean -ELBO (beta = 1) and, if k > 0, the IWAE NLL over the first n test
   images; each rank evaluates its share of them, with its own noise. */
static void evaluate(ex_dp *dp, av_ctx *c, const av_vae *v, const ex_dataset *test, int n, int batch, int k, float *xb,
                     double *neg_elbo, double *iwae_nll) {
    double sums[3] = {0, 0, 0}, *log_px = (double *)malloc((size_t)batch * sizeof(double)); /* nll, kl, -log p(x) */
    int first = (int)((long)dp->rank * n / dp->size), end = (int)((long)(dp->rank + 1) * n / dp->size);
    int start, prev = av_set_grad_enabled(c, 0), i;
    for (start = first; start < end; start += batch) {
        int count = end - start < batch ? end - start : batch;
        av_tensor *x;
        av_ctx_reset(c);
        ex_gather(test, NULL, start, count, xb, NULL);
        x = av_wrap(c, xb, 2, count, test->dim);
        batch_loss(c, v, x, NULL, 0, 1.0f, &sums[0], &sums[1]);
        if (k > 0) {
            av_vae_iwae(c, v, x, k, log_px);
            for (i = 0; i < count; i++) sums[2] -= log_px[i];
            ex_progress("iwae", start - first + count, end - first, "");
        }
    }
    ex_dp_sum(dp, sums, 3);
    *neg_elbo = (sums[0] + sums[1]) / n;
    *iwae_nll = k > 0 ? sums[2] / n : 0;
    av_set_grad_enabled(c, prev);
    free(log_px);
}

static void copy_rows(float *dst, const av_tensor *t) { memcpy(dst, t->data, (size_t)t->size * sizeof(float)); }

/* Pictures at the data's image size, from as many test images as there are (up to 32). */
static int write_pictures(av_ctx *c, const av_vae *v, const ex_dataset *test, const char *dir, float *xb) {
    char path[1100];
    int dim = test->dim, h = test->h, w = test->w, shown = test->n < 32 ? test->n : 32, rows, i, j, rc = 0;
    int prev = av_set_grad_enabled(c, 0);
    float *grid = (float *)malloc((size_t)400 * dim * sizeof(float));
    av_tensor *recon;
    if (!grid) { fprintf(stderr, "error: out of memory for the pictures\n"); return -1; }

    av_ctx_reset(c);
    copy_rows(grid, av_vae_sample(c, v, 64));
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
        copy_rows(grid + (size_t)10 * i * dim, av_vae_interpolate(c, v, av_wrap(c, xb + (size_t)2 * i * dim, 2, 2, dim), 10));
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
        copy_rows(grid, av_sigmoid(c, v->decoder(c, plane, v->user)));
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
    av_set_grad_enabled(c, prev);
    free(grid);
    return rc;
}

int main(int argc, char **argv) {
    const char *data, *out_dir, *load;
    int epochs, latent, hidden, batch, k_eval, k_train, warmup, seed, quick, use_mpi;
    float lr, beta;
    ex_flag flags[] = {
        EX_STRING_FLAG("data", &data, "data/fashion", "directory of the four Fashion-MNIST IDX files"),
        EX_STRING_FLAG("out", &out_dir, "out/vae", "directory for vae.safetensors and the pictures"),
        EX_STRING_FLAG("load", &load, NULL, "start from this model file; alone, only evaluate and draw"),
        EX_INT_FLAG("epochs", &epochs, "10", 0, 1000, "training epochs; 1 with --quick, 0 with --load, unless given"),
        EX_INT_FLAG("latent", &latent, "20", 1, 1024, "latent dimensions; 2 adds a manifold and a scatter plot"),
        EX_INT_FLAG("hidden", &hidden, "400", 1, 8192, "hidden units in the encoder and the decoder"),
        EX_INT_FLAG("batch", &batch, "128", 1, 8192, "images per training step (per rank with --mpi)"),
        EX_FLOAT_FLAG("lr", &lr, "1e-3", 1e-7, 1, "Adam learning rate"),
        EX_FLOAT_FLAG("beta", &beta, "1", 0, 1000, "weight of the KL term of the ELBO"),
        EX_INT_FLAG("kl-warmup", &warmup, "0", 0, 100000000, "steps over which the KL weight rises from 0 to beta"),
        EX_INT_FLAG("iwae-k", &k_eval, "100", 1, 10000, "importance samples for the final test NLL; 10 with --quick"),
        EX_INT_FLAG("iwae-k-train", &k_train, "0", 0, 100, "train on the IWAE bound with this many samples; 0: on the ELBO"),
        EX_INT_FLAG("seed", &seed, "1", 0, 2147483647, "seed of the initial weights, the shuffles and the noise"),
        EX_SWITCH_FLAG("quick", &quick, "a short run for tests: at most 6016 training and 1000 test images"),
        EX_SWITCH_FLAG("mpi", &use_mpi, "data parallel over the ranks of mpirun, each on --batch images a step"),
    };
    ex_dataset train, test;
    ex_dp dp;
    av_model *model = NULL;
    av_ctx *c = NULL, *ce = NULL;
    av_sampler sampler;
    av_optim opt;
    av_vae v;
    nets net;
    int epoch, n_train, n_test, rc = 0, ok;
    float *xb = NULL;
    double neg_elbo = 0, iwae_nll = 0, img_per_s = 0, t_train = 0;
    char path[1100], objective[32] = "elbo";
    int status;

    status = ex_parse(argc, argv, "Trains a VAE on Fashion-MNIST and draws what it learned.", flags, EX_COUNT(flags));
    if (status >= 0) return status;
    if (!ex_given(flags, EX_COUNT(flags), "epochs")) epochs = load ? 0 : quick ? 1 : epochs;
    if (quick && !ex_given(flags, EX_COUNT(flags), "iwae-k")) k_eval = 10;
    if (k_train && (beta != 1.0f || warmup)) {
        fprintf(stderr, "vae_fashion: --beta and --kl-warmup weight the ELBO's KL term, not the IWAE bound of --iwae-k-train\n");
        return 2;
    }
    if ((long)k_train * batch > MAX_IWAE_ROWS) {
        fprintf(stderr, "vae_fashion: --iwae-k-train %d times --batch %d is over %d decoder rows a step\n", k_train, batch,
                MAX_IWAE_ROWS);
        return 2;
    }
    if (k_train) snprintf(objective, sizeof objective, "iwae%d", k_train);
    if ((status = ex_dp_start(&dp, use_mpi, &argc, &argv)) != 0) return status;
    /* every rank reads the data; only rank 0 writes */
    ok = ex_load_fashion(data, &train, &test) == 0;
    if (!ex_dp_all_ok(&dp, ok, "load its data") || !ex_dp_all_ok(&dp, dp.rank > 0 || ex_out_dir(out_dir) == 0, "write files")) {
        ex_dataset_free(&train); ex_dataset_free(&test);
        ex_dp_stop(&dp);
        return 1;
    }
    n_train = quick && train.n > 6016 ? 6016 : train.n;
    n_test = quick && test.n > 1000 ? 1000 : test.n;
    model = av_model_new((uint64_t)seed);
    c = av_ctx_new();
    ce = av_ctx_new(); /* evaluation has its own noise: the training noise stays in step across ranks */
    av_ctx_seed(c, (uint64_t)seed + 1);
    av_ctx_seed(ce, (uint64_t)seed + 2);
    opt = av_adam(lr);
    v = vae_new(model, &net, train.dim, hidden, latent);
    xb = (float *)malloc((size_t)(batch > 500 ? batch : 500) * train.dim * sizeof(float));
    if (av_sampler_init(&sampler, n_train, batch, dp.rank, dp.size, (uint64_t)seed) != 0 || !xb) {
        fprintf(stderr, "error: out of memory\n");
        rc = 1;
    }
    if (!ex_dp_all_ok(&dp, !rc, "allocate its memory") || ex_dp_attach(&dp, model) != 0) rc = 1;
    printf("vae_fashion: %d-%d-%d-%d-%d, %ld parameters, %s, %d train / %d test images, gemm path %s", train.dim, hidden,
           latent, hidden, train.dim, av_model_num_values(model), objective, n_train, n_test, av_isa_name(av_get_isa()));
    if (dp.on) printf(", %d ranks x %d images a step", dp.size, batch);
    printf("\n");
    if (!rc && load) {
        if ((rc = ex_dp_load(&dp, model, load, 0)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else printf("loaded %s\n", load);
    }

    for (epoch = 1; epoch <= epochs && !rc; epoch++) {
        double sums[2] = {0, 0}, t0 = ex_now(), seconds, test_elbo, unused; /* rec, kl */
        int step, seen = 0, mine = 0;
        av_sampler_set_epoch(&sampler, epoch);
        for (step = 0; step < av_sampler_steps(&sampler) && !rc; step++) {
            av_shard sh = av_sampler_shard(&sampler, step);
            char info[64];
            av_tensor *loss = NULL;
            av_philox noise;
            av_ctx_reset(c);
            av_model_zero_grad(model);
            noise = av_ctx_philox(c); /* on every rank, so that the ranks' streams stay in step */
            if (sh.count > 0) {
                ex_gather(&train, sh.index, 0, sh.count, xb, NULL);
                loss = batch_loss(c, &v, av_wrap(c, xb, 2, sh.count, train.dim),
                                  k_train ? NULL : ex_dp_randn(c, &noise, sh.offset, sh.count, latent), k_train,
                                  av_kl_warmup(av_model_step(model), warmup, beta), &sums[0], &sums[1]);
            }
            rc = ex_dp_backward(&dp, c, loss, sh.count);
            if (!rc) rc = av_optim_step(model, &opt);
            if (rc) {
                fprintf(stderr, "\nerror: %s\n", av_error());
                ex_dp_abort(&dp);
            }
            seen += sh.total;
            mine += sh.count;
            snprintf(info, sizeof info, "-%s %.1f", objective, mine ? (sums[0] + sums[1]) / mine : 0.0);
            if (step % 25 == 0 || seen >= n_train) ex_progress("train", seen, n_train, info);
        }
        if (rc) break;
        seconds = ex_now() - t0; /* training only, as in the summary and make bench */
        t_train += seconds;
        img_per_s = (double)n_train * epoch / t_train;
        ex_dp_sum(&dp, sums, 2);
        evaluate(&dp, ce, &v, &test, n_test, 500, 0, xb, &test_elbo, &unused);
        if (k_train) printf("epoch %2d  train -%s %.2f", epoch, objective, sums[0] / n_train);
        else printf("epoch %2d  train -elbo %.2f (rec %.2f + kl %.2f)", epoch, (sums[0] + sums[1]) / n_train,
                    sums[0] / n_train, sums[1] / n_train);
        printf("  test -elbo %.2f nats/image  %.0f img/s\n", test_elbo, n_train / seconds);
        fflush(stdout);
    }
    if (!rc) {
        evaluate(&dp, ce, &v, &test, n_test, 100, k_eval, xb, &neg_elbo, &iwae_nll);
        printf("test -elbo %.2f nats/image, IWAE (k=%d) NLL %.2f nats/image on %d images\n", neg_elbo, k_eval, iwae_nll,
               n_test);
        if (!isfinite(neg_elbo) || !isfinite(iwae_nll)) {
            fprintf(stderr, "error: the test loss is not finite: the model is broken\n");
            rc = 1;
        }
    }
    if (!rc && epochs > 0) {
        snprintf(path, sizeof path, "%s/vae.safetensors", out_dir);
        if ((rc = ex_dp_save(&dp, model, path, 0)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else printf("saved %s\n", path);
    }
    if (!rc && dp.rank == 0 && (rc = write_pictures(c, &v, &test, out_dir, xb)) == 0)
        printf("pictures: %s/samples.png %s/reconstructions.png %s/interpolations.png%s\n", out_dir, out_dir, out_dir,
               latent == 2 ? " manifold_2d.png latent_scatter_2d.png" : "");
    if (!rc)
        printf("summary: {\"test_neg_elbo\": %.3f, \"iwae_nll\": %.3f, \"iwae_k\": %d, \"img_per_s\": %.0f, \"epochs\": %d, "
               "\"latent\": %d, \"beta\": %g, \"iwae_k_train\": %d, \"ranks\": %d}\n",
               neg_elbo, iwae_nll, k_eval, img_per_s, epochs, latent, (double)beta, k_train, dp.size);
    av_sampler_free(&sampler);
    free(xb);
    ex_dataset_free(&train);
    ex_dataset_free(&test);
    av_ctx_free(c);
    av_ctx_free(ce);
    av_model_free(model);
    ex_dp_stop(&dp);
    return rc ? 1 : 0;
}
