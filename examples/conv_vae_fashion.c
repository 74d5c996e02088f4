/* A convolutional VAE with SAGAN self-attention in its encoder and its
   decoder, on Fashion-MNIST, with a Bernoulli decoder as vae_fashion's:

     encoder  x [1, H, W] -> conv 4x4/2 (C) ReLU -> conv 4x4/2 (2C) ReLU
              -> self-attention -> linear 256 ReLU -> Gaussian head (latent)
     decoder  z -> linear 256 ReLU -> linear 2C (H/4) (W/4) ReLU -> self-attention
              -> transposed conv 4x4/2 (C) ReLU -> transposed conv 4x4/2 (1):
              Bernoulli logits

   The self-attention blocks (SAGAN, gamma-gated, over the H/4 x W/4
   positions: 49 for Fashion-MNIST) start as
   the identity (gamma = 0). --no-attention leaves them out: the ablation.

     ./build/conv_vae_fashion [flags]      (--help lists them)

   Prints train and test -ELBO (nats per image) each epoch, then the test
   -ELBO and the IWAE estimate of the test NLL (on the first --iwae-images
   test images), saves OUT/conv_vae.safetensors and writes the pictures of
   vae_fashion (samples, reconstructions, interpolations; the 2-D plots with
   --latent 2). --load MODEL: alone it only evaluates and draws, with
   --epochs N it trains N more epochs (Adam starts afresh). */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "vae_common.h"

#define FEATURES 256 /* the encoder's output and the decoder's first layer */

/* The networks around the library's av_vae (which holds the Gaussian head). */
typedef struct nets {
    av_conv2d_layer conv1, conv2, deconv1, deconv2;
    av_linear_layer enc_fc, dec_fc1, dec_fc2;
    av_self_attn2d enc_attn, dec_attn;
    int attention, channels, h, w;
} nets;

static av_tensor *encoder(av_ctx *c, av_tensor *x, void *user) {
    const nets *n = (const nets *)user;
    av_tensor *y = av_relu(c, av_conv2d_forward(c, &n->conv1, av_reshape(c, x, 4, x->shape[0], 1, n->h, n->w)));
    y = av_relu(c, av_conv2d_forward(c, &n->conv2, y));
    if (n->attention) y = av_self_attn2d_forward(c, &n->enc_attn, y, NULL);
    return av_relu(c, av_linear_forward(c, &n->enc_fc, av_reshape(c, y, 2, x->shape[0], -1)));
}

static av_tensor *decoder(av_ctx *c, av_tensor *z, void *user) { /* Bernoulli logits [B, 1, H, W] */
    const nets *n = (const nets *)user;
    av_tensor *y = av_relu(c, av_linear_forward(c, &n->dec_fc1, z));
    y = av_relu(c, av_linear_forward(c, &n->dec_fc2, y));
    y = av_reshape(c, y, 4, z->shape[0], 2 * n->channels, n->h / 4, n->w / 4);
    if (n->attention) y = av_self_attn2d_forward(c, &n->dec_attn, y, NULL);
    y = av_relu(c, av_conv2d_forward(c, &n->deconv1, y));
    return av_conv2d_forward(c, &n->deconv2, y);
}

static av_vae vae_new(av_model *m, nets *n, int h, int w, int channels, int latent, int attention) {
    av_conv_opts down = av_conv_opts_square(2, 1, 1, 1); /* 4x4 kernels, stride 2, padding 1: halves the size */
    int C = channels, flat = 2 * C * (h / 4) * (w / 4);
    n->attention = attention;
    n->channels = C;
    n->h = h;
    n->w = w;
    n->conv1 = av_conv2d_new(m, "enc.conv1", 1, C, 4, 4, &down, 1);
    n->conv2 = av_conv2d_new(m, "enc.conv2", C, 2 * C, 4, 4, &down, 1);
    n->enc_fc = av_linear_layer_new(m, "enc.fc", flat, FEATURES, 1);
    n->dec_fc1 = av_linear_layer_new(m, "dec.fc1", latent, FEATURES, 1);
    n->dec_fc2 = av_linear_layer_new(m, "dec.fc2", FEATURES, flat, 1);
    n->deconv1 = av_conv_transpose2d_new(m, "dec.deconv1", 2 * C, C, 4, 4, &down, 1);
    n->deconv2 = av_conv_transpose2d_new(m, "dec.deconv2", C, 1, 4, 4, &down, 1);
    if (attention) {
        n->enc_attn = av_self_attn2d_new(m, "enc.attn", 2 * C, 8);
        n->dec_attn = av_self_attn2d_new(m, "dec.attn", 2 * C, 8);
    }
    return av_vae_new(m, "vae", FEATURES, latent, encoder, decoder, n, AV_BERNOULLI);
}

/* process CPU time (all threads), seconds */
static double cpu_seconds(void) { return (double)clock() / CLOCKS_PER_SEC; }

int main(int argc, char **argv) {
    const char *data, *out_dir, *load;
    int epochs, latent, channels, batch, k_eval, n_iwae, seed, quick, no_attention;
    float lr;
    ex_flag flags[] = {
        EX_STRING_FLAG("data", &data, "data/fashion", "directory of the four Fashion-MNIST IDX files"),
        EX_STRING_FLAG("out", &out_dir, "out/conv_vae", "directory for conv_vae.safetensors and the pictures; "
                       "out/conv_vae_noattn with --no-attention"),
        EX_STRING_FLAG("load", &load, NULL, "start from this model file; alone, only evaluate and draw"),
        EX_INT_FLAG("epochs", &epochs, "10", 0, 1000, "training epochs; 1 with --quick, 0 with --load, unless given"),
        EX_INT_FLAG("latent", &latent, "20", 1, 1024, "latent dimensions; 2 adds a manifold and a scatter plot"),
        EX_INT_FLAG("channels", &channels, "32", 1, 512, "channels of the first convolution (the second has twice)"),
        EX_INT_FLAG("batch", &batch, "128", 1, 8192, "images per training step"),
        EX_FLOAT_FLAG("lr", &lr, "1e-3", 1e-7, 1, "Adam learning rate"),
        EX_INT_FLAG("iwae-k", &k_eval, "100", 1, 10000, "importance samples for the final test NLL; 10 with --quick"),
        EX_INT_FLAG("iwae-images", &n_iwae, "1000", 1, 10000, "test images for the IWAE NLL (the first ones)"),
        EX_SWITCH_FLAG("no-attention", &no_attention, "the ablation: the same VAE without its self-attention blocks"),
        EX_INT_FLAG("seed", &seed, "1", 0, 2147483647, "seed of the initial weights and of the noise"),
        EX_SWITCH_FLAG("quick", &quick, "a short run for tests: at most 2048 training and 500 test images"),
    };
    ex_dataset train, test;
    av_model *model = NULL;
    av_ctx *c = NULL;
    av_optim opt;
    av_vae v;
    nets net;
    int *order = NULL, epoch, n_train, n_test, rc = 0, status;
    float *xb = NULL;
    double neg_elbo = 0, iwae_nll = 0, img_per_s = 0, t_train = 0, cpu0 = cpu_seconds(), wall0 = ex_now();
    char path[1100];

    status = ex_parse(argc, argv, "Trains a convolutional VAE with self-attention on Fashion-MNIST and draws what it learned.",
                      flags, EX_COUNT(flags));
    if (status >= 0) return status;
    if (!ex_given(flags, EX_COUNT(flags), "epochs")) epochs = load ? 0 : quick ? 1 : epochs;
    if (quick && !ex_given(flags, EX_COUNT(flags), "iwae-k")) k_eval = 10;
    if (no_attention && !ex_given(flags, EX_COUNT(flags), "out")) out_dir = "out/conv_vae_noattn";
    if (ex_load_fashion(data, &train, &test)) return 1;
    if (train.h % 4 || train.w % 4) {
        fprintf(stderr, "error: %s: the images are %dx%d; this network needs sides that are multiples of 4\n", data,
                train.h, train.w);
        rc = 1;
    }
    if (!rc && ex_out_dir(out_dir)) rc = 1;
    if (rc) {
        ex_dataset_free(&train); ex_dataset_free(&test);
        return 1;
    }
    n_train = quick && train.n > 2048 ? 2048 : train.n;
    n_test = quick && test.n > 500 ? 500 : test.n;
    if (n_iwae > n_test) n_iwae = n_test;
    model = av_model_new((uint64_t)seed);
    c = av_ctx_new();
    av_ctx_seed(c, (uint64_t)seed + 1);
    opt = av_adam(lr);
    v = vae_new(model, &net, train.h, train.w, channels, latent, !no_attention);
    order = (int *)malloc((size_t)train.n * sizeof(int));
    xb = (float *)malloc((size_t)(batch > 500 ? batch : 500) * train.dim * sizeof(float));
    if (!order || !xb) { fprintf(stderr, "error: out of memory\n"); rc = 1; }
    printf("conv_vae_fashion: conv %d-%d, latent %d, self-attention %s, %ld parameters, %d train / %d test images, "
           "gemm path %s, %d threads\n", channels, 2 * channels, latent, no_attention ? "off" : "on",
           av_model_num_values(model), n_train, n_test, av_isa_name(av_get_isa()), av_get_num_threads());
    if (!rc && load) {
        if ((rc = av_model_load(model, load)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else printf("loaded %s\n", load);
    }

    for (epoch = 1; epoch <= epochs && !rc; epoch++) {
        double rec = 0, kl = 0, t0 = ex_now(), seconds, test_elbo, unused;
        int start, seen = 0;
        ex_shuffle(order, train.n, av_ctx_rng(c));
        for (start = 0; start < n_train && !rc; start += batch) {
            int count = n_train - start < batch ? n_train - start : batch;
            char info[64];
            av_tensor *loss;
            av_ctx_reset(c);
            ex_gather(&train, order, start, count, xb, NULL);
            loss = ex_vae_batch_loss(c, &v, av_wrap(c, xb, 2, count, train.dim), 0, 1.0f, &rec, &kl);
            av_model_zero_grad(model);
            av_backward(c, loss);
            if ((rc = av_optim_step(model, &opt)) != 0) fprintf(stderr, "\nerror: %s\n", av_error());
            seen += count;
            snprintf(info, sizeof info, "-elbo %.1f", (rec + kl) / seen);
            if ((start / batch) % 10 == 0 || start + count >= n_train) ex_progress("train", seen, n_train, info);
        }
        if (rc) break;
        seconds = ex_now() - t0; /* training only */
        t_train += seconds;
        img_per_s = (double)n_train * epoch / t_train;
        ex_vae_evaluate(c, &v, &test, n_test, 0, 500, 0, xb, &test_elbo, &unused);
        printf("epoch %2d  train -elbo %.2f (rec %.2f + kl %.2f)  test -elbo %.2f nats/image  %.0f img/s\n", epoch,
               (rec + kl) / seen, rec / seen, kl / seen, test_elbo, seen / seconds);
        fflush(stdout);
    }
    if (!rc) {
        ex_vae_evaluate(c, &v, &test, n_test, n_iwae, 100, k_eval, xb, &neg_elbo, &iwae_nll);
        printf("test -elbo %.2f nats/image on %d images, IWAE (k=%d) NLL %.2f nats/image on the first %d\n", neg_elbo,
               n_test, k_eval, iwae_nll, n_iwae);
        if (!isfinite(neg_elbo) || !isfinite(iwae_nll)) {
            fprintf(stderr, "error: the test loss is not finite: the model is broken\n");
            rc = 1;
        }
    }
    if (!rc && epochs > 0) {
        snprintf(path, sizeof path, "%s/conv_vae.safetensors", out_dir);
        if ((rc = av_model_save(model, path)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else printf("saved %s\n", path);
    }
    if (!rc && (rc = ex_vae_pictures(c, &v, &test, out_dir, xb)) == 0)
        printf("pictures: %s/samples.png %s/reconstructions.png %s/interpolations.png%s\n", out_dir, out_dir, out_dir,
               latent == 2 ? " manifold_2d.png latent_scatter_2d.png" : "");
    if (!rc)
        printf("summary: {\"test_neg_elbo\": %.3f, \"iwae_nll\": %.3f, \"iwae_k\": %d, \"iwae_images\": %d, "
               "\"attention\": %d, \"img_per_s\": %.0f, \"epochs\": %d, \"latent\": %d, \"seconds\": %.1f, "
               "\"cpu_seconds\": %.1f}\n",
               neg_elbo, iwae_nll, k_eval, n_iwae, !no_attention, img_per_s, epochs, latent, ex_now() - wall0,
               cpu_seconds() - cpu0);
    free(order);
    free(xb);
    ex_dataset_free(&train);
    ex_dataset_free(&test);
    av_ctx_free(c);
    av_model_free(model);
    return rc ? 1 : 0;
}
