/* A self-attention GAN (SAGAN, Zhang et al. 2019) on Fashion-MNIST:

     generator      z [128] -> linear 4C (H/4) (W/4) BN ReLU
                    -> transposed conv 4x4/2 (2C) BN ReLU -> self-attention
                    -> transposed conv 4x4/2 (1) tanh
     discriminator  x -> conv 4x4/2 (C) LReLU -> self-attention
                    -> conv 4x4/2 (2C) LReLU -> conv 3x3 (4C) LReLU -> linear 1

   Spectral norm on every weight of both (the self-attention's too), the
   hinge loss, Adam with beta1 0, beta2 0.9 and the two time-scale rule
   (the discriminator learns 4 times faster), as SAGAN. The self-attention
   blocks (gamma-gated, starting as the identity) sit at H/2 x W/2: 196
   positions for Fashion-MNIST.

     ./build/sagan_fashion [flags]        (--help lists them)

   Writes OUT/samples_epoch<N>.png (the same 64 latent vectors each epoch)
   and OUT/samples.png, saves OUT/generator.safetensors and
   OUT/discriminator.safetensors, then reports Fréchet distances (FID) on
   the pooled features of the AttentionNet classifier, all against the test
   set: of the GAN's samples ("fid"), of the MLP VAE's prior samples
   ("fid_vae") and of as many training images ("fid_test_floor", the floor:
   real images of another split). The classifier is --fid-net
   (cnn_attention_fashion's saved model) if that file exists, else a small
   AttentionNet trained here once (on 20000 images) and kept as
   OUT/fid_net_small.safetensors.
   The VAE is --vae (vae_fashion's saved model) if it exists, else one
   trained here once and kept as OUT/vae.safetensors. --load DIR starts
   from the two saved models in DIR: alone it only samples and measures,
   with --epochs N it trains N more epochs (Adam starts afresh). */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "vae_common.h"
#include "fid.h"

#define Z_DIM 128
#define GRID 64 /* samples in each picture */

/* A linear layer with spectral norm on its weight. */
typedef struct sn_linear { av_linear_layer lin; av_spectral_norm_layer sn; } sn_linear;

static sn_linear sn_linear_new(av_model *m, const char *name, int in, int out) {
    sn_linear l;
    l.lin = av_linear_layer_new(m, name, in, out, 1);
    l.sn = av_spectral_norm_new(m, l.lin.weight, 0, 1, 1e-12f);
    return l;
}

static av_tensor *sn_linear_forward(av_ctx *c, const sn_linear *l, av_tensor *x) {
    return av_linear(c, x, av_spectral_norm_forward(c, &l->sn), l->lin.bias);
}

/* ---- the two networks ---------------------------------------------------- */
typedef struct generator {
    sn_linear fc;
    av_batch_norm_layer bn0, bn1;
    av_conv2d_layer up1, up2;
    av_self_attn2d attn;
    int ch, h, w;
} generator;

typedef struct discriminator {
    av_conv2d_layer conv1, conv2, conv3;
    av_self_attn2d attn;
    sn_linear fc;
} discriminator;

static av_conv2d_layer sn_conv(av_model *m, const char *name, int in, int out, int k, int stride, int padding,
                               int transposed) {
    av_conv_opts o = av_conv_opts_square(stride, padding, 1, 1);
    av_conv2d_layer l = transposed ? av_conv_transpose2d_new(m, name, in, out, k, k, &o, 1)
                                   : av_conv2d_new(m, name, in, out, k, k, &o, 1);
    av_conv2d_spectral_norm(m, &l);
    return l;
}

static generator generator_new(av_model *m, int ch, int h, int w) {
    generator g;
    g.ch = ch;
    g.h = h;
    g.w = w;
    g.fc = sn_linear_new(m, "fc", Z_DIM, 4 * ch * (h / 4) * (w / 4));
    g.bn0 = av_batch_norm_new(m, "bn0", 4 * ch, 1e-5f, 0.1f);
    g.up1 = sn_conv(m, "up1", 4 * ch, 2 * ch, 4, 2, 1, 1);
    g.bn1 = av_batch_norm_new(m, "bn1", 2 * ch, 1e-5f, 0.1f);
    g.attn = av_self_attn2d_new(m, "attn", 2 * ch, 8);
    av_self_attn2d_spectral_norm(m, &g.attn);
    g.up2 = sn_conv(m, "up2", 2 * ch, 1, 4, 2, 1, 1);
    return g;
}

/* z [B, Z_DIM] -> images [B, 1, H, W] in [-1, 1] */
static av_tensor *generate(av_ctx *c, const generator *g, av_tensor *z) {
    av_tensor *y = av_reshape(c, sn_linear_forward(c, &g->fc, z), 4, z->shape[0], 4 * g->ch, g->h / 4, g->w / 4);
    y = av_relu(c, av_batch_norm_forward(c, &g->bn0, y));
    y = av_relu(c, av_batch_norm_forward(c, &g->bn1, av_conv2d_forward(c, &g->up1, y)));
    y = av_self_attn2d_forward(c, &g->attn, y, NULL);
    return av_tanh(c, av_conv2d_forward(c, &g->up2, y));
}

static discriminator discriminator_new(av_model *m, int ch, int h, int w) {
    discriminator d;
    d.conv1 = sn_conv(m, "conv1", 1, ch, 4, 2, 1, 0);
    d.attn = av_self_attn2d_new(m, "attn", ch, 8);
    av_self_attn2d_spectral_norm(m, &d.attn);
    d.conv2 = sn_conv(m, "conv2", ch, 2 * ch, 4, 2, 1, 0);
    d.conv3 = sn_conv(m, "conv3", 2 * ch, 4 * ch, 3, 1, 1, 0);
    d.fc = sn_linear_new(m, "fc", 4 * ch * (h / 4) * (w / 4), 1);
    return d;
}

/* images [B, 1, H, W] -> scores [B, 1] */
static av_tensor *discriminate(av_ctx *c, const discriminator *d, av_tensor *x) {
    av_tensor *y = av_leaky_relu(c, av_conv2d_forward(c, &d->conv1, x), 0.1f);
    y = av_self_attn2d_forward(c, &d->attn, y, NULL);
    y = av_leaky_relu(c, av_conv2d_forward(c, &d->conv2, y), 0.1f);
    y = av_leaky_relu(c, av_conv2d_forward(c, &d->conv3, y), 0.1f);
    return sn_linear_forward(c, &d->fc, av_reshape(c, y, 2, x->shape[0], -1));
}

/* mean of relu(1 + sign s) over the scores s: the hinge loss's terms */
static av_tensor *hinge(av_ctx *c, av_tensor *scores, float sign) {
    return av_mean_all(c, av_relu(c, av_add_scalar(c, av_scale(c, scores, sign), 1.0f)));
}

/* ---- pictures and samples ------------------------------------------------ */
/* n generator images in [0, 1] into out (n * H * W floats), from z (n x Z_DIM
   or NULL: fresh noise); eval mode (batch norm's running statistics), no tape. */
static void sample_images(av_ctx *c, const generator *g, const float *z, int n, float *out) {
    int prev = av_set_grad_enabled(c, 0), was_training = av_set_training(c, 0), start, i;
    for (start = 0; start < n; start += 500) {
        int count = n - start < 500 ? n - start : 500;
        av_tensor *noise, *x;
        av_ctx_reset(c);
        noise = z ? av_wrap(c, (float *)(z + (size_t)start * Z_DIM), 2, count, Z_DIM)
                  : av_randn(c, 0.0f, 1.0f, 2, count, Z_DIM);
        x = generate(c, g, noise);
        for (i = 0; i < x->size; i++) out[(size_t)start * g->h * g->w + i] = 0.5f * (x->data[i] + 1.0f);
    }
    av_set_training(c, was_training);
    av_set_grad_enabled(c, prev);
}

/* n prior samples of the VAE (the means of p(x | z)) into out */
static void vae_images(av_ctx *c, const av_vae *v, int n, int dim, float *out) {
    int prev = av_set_grad_enabled(c, 0), start;
    for (start = 0; start < n; start += 500) {
        int count = n - start < 500 ? n - start : 500;
        av_ctx_reset(c);
        memcpy(out + (size_t)start * dim, av_vae_sample(c, v, count)->data, (size_t)count * dim * sizeof(float));
    }
    av_set_grad_enabled(c, prev);
}

/* ---- the feature net and the VAE: loaded, or trained here once ----------- */
static int file_exists(const char *path) { return access(path, R_OK) == 0; }

/* Loads path into m: 0, or 1 after saying why not. */
static int load_model(av_model *m, const char *path, const char *what) {
    if (av_model_load(m, path) != 0) {
        fprintf(stderr, "error: %s: %s\n", what, av_error());
        return 1;
    }
    printf("%s: loaded %s\n", what, path);
    return 0;
}

/* The small AttentionNet trained when cnn_attention_fashion's is missing. */
static av_attention_net_config small_net_config(void) {
    av_attention_net_config cfg = av_attention_net_defaults();
    cfg.stem_channels = 16;
    cfg.channels[0] = 32;
    cfg.channels[1] = 64;
    return cfg;
}

/* One epoch of Adam on n training images, then the test accuracy. */
static int train_feature_net(av_ctx *c, av_model *m, const av_attention_net *net, const ex_dataset *train,
                             const ex_dataset *test, int n, int n_test, int *order, float *xb) {
    av_optim opt = av_adam(2e-3);
    int start, correct = 0, labels[500], rc = 0, i, j, batch = 128;
    ex_shuffle(order, train->n, av_ctx_rng(c));
    for (start = 0; start < n && !rc; start += batch) {
        int count = n - start < batch ? n - start : batch;
        av_tensor *x, *loss;
        av_ctx_reset(c);
        ex_gather(train, order, start, count, xb, labels);
        x = av_wrap(c, xb, 4, count, 1, train->h, train->w);
        loss = av_cross_entropy(c, av_attention_net_forward(c, net, x, NULL), labels, AV_MEAN);
        av_model_zero_grad(m);
        av_backward(c, loss);
        if ((rc = av_optim_step(m, &opt)) != 0) fprintf(stderr, "\nerror: %s\n", av_error());
        if ((start / batch) % 20 == 0 || start + count >= n) ex_progress("fid net", start + count, n, "");
    }
    {
        int prev = av_set_grad_enabled(c, 0), was_training = av_set_training(c, 0);
        for (start = 0; start < n_test && !rc; start += 500) {
            int count = n_test - start < 500 ? n_test - start : 500;
            av_tensor *logits;
            av_ctx_reset(c);
            ex_gather(test, NULL, start, count, xb, labels);
            logits = av_attention_net_forward(c, net, av_wrap(c, xb, 4, count, 1, test->h, test->w), NULL);
            for (i = 0; i < count; i++) {
                int best = 0;
                for (j = 1; j < 10; j++) best = logits->data[i * 10 + j] > logits->data[i * 10 + best] ? j : best;
                correct += best == labels[i];
            }
        }
        av_set_training(c, was_training);
        av_set_grad_enabled(c, prev);
    }
    if (!rc) printf("fid net: trained 1 epoch on %d images, test accuracy %.4f\n", n, (double)correct / n_test);
    return rc ? 1 : 0;
}

/* Gaussian statistics of the feature net's pooled features of n images (n x H x W in [0, 1]). */
static void image_stats(av_ctx *c, const av_attention_net *net, const float *images, int n, int h, int w, int d,
                        float *features, double *mean, double *cov) {
    int prev = av_set_grad_enabled(c, 0), was_training = av_set_training(c, 0), start;
    for (start = 0; start < n; start += 250) {
        int count = n - start < 250 ? n - start : 250;
        av_tensor *x, *f;
        av_ctx_reset(c);
        x = av_wrap(c, (float *)(images + (size_t)start * h * w), 4, count, 1, h, w);
        f = av_attention_net_features(c, net, x, NULL);
        memcpy(features + (size_t)start * d, f->data, (size_t)count * d * sizeof(float));
    }
    ex_feature_stats(features, n, d, mean, cov);
    av_set_training(c, was_training);
    av_set_grad_enabled(c, prev);
}

/* process CPU time (all threads), seconds */
static double cpu_seconds(void) { return (double)clock() / CLOCKS_PER_SEC; }

int main(int argc, char **argv) {
    const char *data, *out_dir, *load, *fid_net_path, *vae_path;
    int epochs, channels, batch, n_fid, vae_epochs, seed, quick;
    float lr_g, lr_d;
    ex_flag flags[] = {
        EX_STRING_FLAG("data", &data, "data/fashion", "directory of the four Fashion-MNIST IDX files"),
        EX_STRING_FLAG("out", &out_dir, "out/sagan", "directory for the models and the pictures"),
        EX_STRING_FLAG("load", &load, NULL, "start from generator.safetensors (and discriminator.safetensors to "
                       "train on) in this directory; alone, only sample and measure"),
        EX_INT_FLAG("epochs", &epochs, "5", 0, 1000, "training epochs; 1 with --quick, 0 with --load, unless given"),
        EX_INT_FLAG("channels", &channels, "32", 1, 256, "C: the discriminator's first width (the generator's last is 2C)"),
        EX_INT_FLAG("batch", &batch, "64", 1, 4096, "real images per step"),
        EX_FLOAT_FLAG("lr-g", &lr_g, "1e-4", 1e-7, 1, "the generator's Adam learning rate"),
        EX_FLOAT_FLAG("lr-d", &lr_d, "4e-4", 1e-7, 1, "the discriminator's Adam learning rate"),
        EX_INT_FLAG("fid-images", &n_fid, "10000", 2, 60000, "images in each set of the Fréchet distances; 500 with --quick"),
        EX_STRING_FLAG("fid-net", &fid_net_path, "out/cnn_attention_fashion.safetensors",
                       "the AttentionNet whose features the distances use, if this file exists"),
        EX_STRING_FLAG("vae", &vae_path, "out/vae/vae.safetensors", "vae_fashion's model (latent 20, hidden 400), if "
                       "this file exists"),
        EX_INT_FLAG("vae-epochs", &vae_epochs, "10", 1, 1000, "epochs of the VAE trained when there is none; 1 with --quick"),
        EX_INT_FLAG("seed", &seed, "1", 0, 2147483647, "seed of the initial weights and of the noise"),
        EX_SWITCH_FLAG("quick", &quick, "a short run for tests: at most 1024 training images, small sets"),
    };
    ex_dataset train, test;
    av_model *gen_model = NULL, *disc_model = NULL, *net_model = NULL, *vae_model = NULL;
    av_ctx *c = NULL;
    av_optim opt_g, opt_d;
    generator g;
    discriminator d;
    av_attention_net net;
    av_attention_net_config net_cfg;
    av_vae vae;
    ex_mlp_vae_nets vae_nets;
    int *order = NULL, epoch, n_train, dim, d_feat, rc = 0, status, small_net, i;
    float *xb = NULL, *fixed_z = NULL, *images = NULL, *features = NULL;
    double *mu_test = NULL, *cov_test = NULL, *mu = NULL, *cov = NULL, fid = 0, fid_vae = 0, fid_floor = 0;
    double img_per_s = 0, t_train = 0, cpu0 = cpu_seconds(), wall0 = ex_now();
    char path[1100], fallback[1100];

    status = ex_parse(argc, argv, "Trains a self-attention GAN on Fashion-MNIST and measures its Fréchet distance.",
                      flags, EX_COUNT(flags));
    if (status >= 0) return status;
    if (!ex_given(flags, EX_COUNT(flags), "epochs")) epochs = load ? 0 : quick ? 1 : epochs;
    if (quick && !ex_given(flags, EX_COUNT(flags), "fid-images")) n_fid = 500;
    if (quick && !ex_given(flags, EX_COUNT(flags), "vae-epochs")) vae_epochs = 1;
    if (ex_load_fashion(data, &train, &test)) return 1;
    if (train.h % 4 || train.w % 4) {
        fprintf(stderr, "error: %s: the images are %dx%d; these networks need sides that are multiples of 4\n", data,
                train.h, train.w);
        rc = 1;
    }
    if (!rc && ex_out_dir(out_dir)) rc = 1;
    if (rc) {
        ex_dataset_free(&train); ex_dataset_free(&test);
        return 1;
    }
    dim = train.dim;
    n_train = quick && train.n > 1024 ? 1024 : train.n;
    if (batch > n_train) batch = n_train; /* at least one step an epoch */
    if (n_fid > test.n) n_fid = test.n;
    if (n_fid > train.n) n_fid = train.n;
    gen_model = av_model_new((uint64_t)seed);
    disc_model = av_model_new((uint64_t)seed + 1);
    c = av_ctx_new();
    av_ctx_seed(c, (uint64_t)seed + 2);
    g = generator_new(gen_model, channels, train.h, train.w);
    d = discriminator_new(disc_model, channels, train.h, train.w);
    opt_g = av_adam(lr_g);
    opt_d = av_adam(lr_d);
    opt_g.beta1 = opt_d.beta1 = 0.0;
    opt_g.beta2 = opt_d.beta2 = 0.9;
    order = (int *)malloc((size_t)train.n * sizeof(int));
    xb = (float *)malloc((size_t)(2 * batch > 500 ? 2 * batch : 500) * dim * sizeof(float));
    fixed_z = (float *)malloc((size_t)GRID * Z_DIM * sizeof(float));
    images = (float *)malloc((size_t)(n_fid > GRID ? n_fid : GRID) * dim * sizeof(float));
    if (!order || !xb || !fixed_z || !images) { fprintf(stderr, "error: out of memory\n"); rc = 1; }
    for (i = 0; !rc && i < GRID * Z_DIM; i++) fixed_z[i] = av_rng_normal(av_ctx_rng(c));
    printf("sagan_fashion: generator %ld and discriminator %ld parameters, %d train images, gemm path %s, %d threads\n",
           av_model_num_values(gen_model), av_model_num_values(disc_model), n_train, av_isa_name(av_get_isa()),
           av_get_num_threads());
    if (!rc && load) {
        snprintf(path, sizeof path, "%s/generator.safetensors", load);
        rc = load_model(gen_model, path, "generator");
        snprintf(path, sizeof path, "%s/discriminator.safetensors", load);
        if (!rc && epochs > 0) rc = load_model(disc_model, path, "discriminator");
    }

    for (epoch = 1; epoch <= epochs && !rc; epoch++) {
        double loss_d_sum = 0, loss_g_sum = 0, t0 = ex_now(), seconds;
        int start, steps = 0;
        ex_shuffle(order, train.n, av_ctx_rng(c));
        for (start = 0; start + batch <= n_train && !rc; start += batch) {
            av_tensor *real, *fake, *both[2], *scores, *loss;
            char info[80];
            /* the discriminator: hinge loss on real images and on the generator's (no gradient into it) */
            av_ctx_reset(c);
            ex_gather(&train, order, start, batch, xb, NULL);
            for (i = 0; i < batch * dim; i++) xb[i] = 2.0f * xb[i] - 1.0f;
            real = av_wrap(c, xb, 4, batch, 1, train.h, train.w);
            av_set_grad_enabled(c, 0);
            fake = generate(c, &g, av_randn(c, 0.0f, 1.0f, 2, batch, Z_DIM));
            av_set_grad_enabled(c, 1);
            both[0] = real;
            both[1] = fake;
            scores = discriminate(c, &d, av_concat(c, both, 2, 0));
            loss = av_add(c, hinge(c, av_slice(c, scores, 0, 0, batch), -1.0f),
                          hinge(c, av_slice(c, scores, 0, batch, 2 * batch), 1.0f));
            loss_d_sum += loss->data[0];
            av_model_zero_grad(disc_model);
            av_backward(c, loss);
            if ((rc = av_optim_step(disc_model, &opt_d)) != 0) { fprintf(stderr, "\nerror: %s\n", av_error()); break; }
            /* the generator: -mean D(G(z)), through the discriminator (its gradients are dropped) */
            av_ctx_reset(c);
            loss = av_scale(c, av_mean_all(c, discriminate(c, &d, generate(c, &g, av_randn(c, 0.0f, 1.0f, 2, batch, Z_DIM)))),
                            -1.0f);
            loss_g_sum += loss->data[0];
            av_model_zero_grad(gen_model);
            av_backward(c, loss);
            if ((rc = av_optim_step(gen_model, &opt_g)) != 0) { fprintf(stderr, "\nerror: %s\n", av_error()); break; }
            steps++;
            snprintf(info, sizeof info, "loss d %.3f g %.3f", loss_d_sum / steps, loss_g_sum / steps);
            if (steps % 10 == 0 || start + 2 * batch > n_train) ex_progress("train", start + batch, n_train, info);
        }
        if (rc) break;
        seconds = ex_now() - t0;
        t_train += seconds;
        img_per_s = (double)steps * batch * epoch / t_train;
        sample_images(c, &g, fixed_z, GRID, images);
        snprintf(path, sizeof path, "%s/samples_epoch%02d.png", out_dir, epoch);
        if (ex_write_grid(path, images, GRID, 8, 8, train.h, train.w)) rc = 1;
        printf("epoch %2d  loss d %.4f g %.4f  gamma g %.3f d %.3f  %.0f img/s  %s\n", epoch, loss_d_sum / steps,
               loss_g_sum / steps, (double)g.attn.gamma->data[0], (double)d.attn.gamma->data[0], steps * batch / seconds,
               path);
        fflush(stdout);
    }
    if (!rc && epochs > 0) {
        snprintf(path, sizeof path, "%s/generator.safetensors", out_dir);
        if ((rc = av_model_save(gen_model, path)) == 0) {
            snprintf(path, sizeof path, "%s/discriminator.safetensors", out_dir);
            rc = av_model_save(disc_model, path);
        }
        if (rc) fprintf(stderr, "error: %s\n", av_error());
        else printf("saved %s/generator.safetensors and discriminator.safetensors\n", out_dir);
    }
    if (!rc) {
        sample_images(c, &g, fixed_z, GRID, images);
        snprintf(path, sizeof path, "%s/samples.png", out_dir);
        if ((rc = ex_write_grid(path, images, GRID, 8, 8, train.h, train.w)) == 0) printf("pictures: %s\n", path);
    }

    /* the feature net: cnn_attention_fashion's, or a small one of our own */
    small_net = !file_exists(fid_net_path);
    net_cfg = small_net ? small_net_config() : av_attention_net_defaults();
    net_model = av_model_new((uint64_t)seed + 3);
    net = av_attention_net_new(net_model, "net", &net_cfg);
    snprintf(fallback, sizeof fallback, "%s/fid_net_small.safetensors", out_dir);
    if (!rc && !small_net) rc = load_model(net_model, fid_net_path, "fid net");
    else if (!rc && file_exists(fallback)) rc = load_model(net_model, fallback, "fid net (small)");
    else if (!rc) {
        printf("fid net: %s is missing (build/cnn_attention_fashion makes it); training a small AttentionNet\n",
               fid_net_path);
        int n_net = train.n < (quick ? 2048 : 20000) ? train.n : quick ? 2048 : 20000;
        rc = train_feature_net(c, net_model, &net, &train, &test, n_net, quick && test.n > 500 ? 500 : test.n, order, xb);
        if (!rc && (rc = av_model_save(net_model, fallback)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else if (!rc) printf("saved %s\n", fallback);
    }

    /* the MLP VAE: vae_fashion's, or one trained here */
    vae_model = av_model_new((uint64_t)seed + 4);
    vae = ex_mlp_vae_new(vae_model, &vae_nets, dim, 400, 20);
    snprintf(fallback, sizeof fallback, "%s/vae.safetensors", out_dir);
    if (!rc && file_exists(vae_path)) rc = load_model(vae_model, vae_path, "vae");
    else if (!rc && file_exists(fallback)) rc = load_model(vae_model, fallback, "vae");
    else if (!rc) {
        av_optim adam = av_adam(1e-3);
        printf("vae: %s is missing (build/vae_fashion makes it); training the MLP VAE for %d epochs\n", vae_path,
               vae_epochs);
        for (epoch = 1; epoch <= vae_epochs && !rc; epoch++) {
            double rec = 0, kl = 0;
            int start;
            ex_shuffle(order, train.n, av_ctx_rng(c));
            for (start = 0; start < n_train && !rc; start += 128) {
                int count = n_train - start < 128 ? n_train - start : 128;
                av_tensor *loss;
                av_ctx_reset(c);
                ex_gather(&train, order, start, count, xb, NULL);
                loss = ex_vae_batch_loss(c, &vae, av_wrap(c, xb, 2, count, dim), 0, 1.0f, &rec, &kl);
                av_model_zero_grad(vae_model);
                av_backward(c, loss);
                if ((rc = av_optim_step(vae_model, &adam)) != 0) fprintf(stderr, "error: %s\n", av_error());
            }
            ex_progress("vae", epoch, vae_epochs, "");
        }
        if (!rc && (rc = av_model_save(vae_model, fallback)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else if (!rc) printf("saved %s\n", fallback);
    }

    /* the distances, each set of n_fid images against the first n_fid test images */
    d_feat = net_cfg.channels[net_cfg.num_stages - 1];
    features = (float *)malloc((size_t)n_fid * d_feat * sizeof(float));
    mu_test = (double *)malloc((size_t)d_feat * sizeof(double));
    mu = (double *)malloc((size_t)d_feat * sizeof(double));
    cov_test = (double *)malloc((size_t)d_feat * d_feat * sizeof(double));
    cov = (double *)malloc((size_t)d_feat * d_feat * sizeof(double));
    if (!rc && (!features || !mu_test || !mu || !cov_test || !cov)) { fprintf(stderr, "error: out of memory\n"); rc = 1; }
    if (!rc) {
        image_stats(c, &net, test.x, n_fid, train.h, train.w, d_feat, features, mu_test, cov_test);
        image_stats(c, &net, train.x, n_fid, train.h, train.w, d_feat, features, mu, cov);
        fid_floor = ex_frechet_distance(mu, cov, mu_test, cov_test, d_feat);
        sample_images(c, &g, NULL, n_fid, images);
        image_stats(c, &net, images, n_fid, train.h, train.w, d_feat, features, mu, cov);
        fid = ex_frechet_distance(mu, cov, mu_test, cov_test, d_feat);
        vae_images(c, &vae, n_fid, dim, images);
        image_stats(c, &net, images, n_fid, train.h, train.w, d_feat, features, mu, cov);
        fid_vae = ex_frechet_distance(mu, cov, mu_test, cov_test, d_feat);
        printf("Fréchet distances on %d-feature %s AttentionNet, %d images each against the test set: GAN %.3f, "
               "MLP VAE %.3f, training images (the floor) %.3f\n", d_feat, small_net ? "small" : "cnn_attention_fashion",
               n_fid, fid, fid_vae, fid_floor);
        if (!isfinite(fid) || !isfinite(fid_vae) || !isfinite(fid_floor)) {
            fprintf(stderr, "error: a distance is not finite: a model is broken\n");
            rc = 1;
        }
    }
    if (!rc)
        printf("summary: {\"fid\": %.4f, \"fid_test_floor\": %.4f, \"fid_vae\": %.4f, \"fid_images\": %d, "
               "\"fid_net\": \"%s\", \"img_per_s\": %.0f, \"epochs\": %d, \"seconds\": %.1f, \"cpu_seconds\": %.1f}\n",
               fid, fid_floor, fid_vae, n_fid, small_net ? "small" : "cnn_attention_fashion", img_per_s, epochs,
               ex_now() - wall0, cpu_seconds() - cpu0);
    free(order); free(xb); free(fixed_z); free(images); free(features);
    free(mu_test); free(mu); free(cov_test); free(cov);
    ex_dataset_free(&train);
    ex_dataset_free(&test);
    av_ctx_free(c);
    av_model_free(gen_model);
    av_model_free(disc_model);
    av_model_free(net_model);
    av_model_free(vae_model);
    return rc ? 1 : 0;
}
