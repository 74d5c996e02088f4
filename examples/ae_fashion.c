/* A plain autoencoder on Fashion-MNIST: 784-256-32-256-784, ReLU, trained
   with the Bernoulli likelihood (binary cross-entropy), Adam.

     ./build/ae_fashion [flags]           (--help lists them, with defaults and ranges)

   Prints the train and test reconstruction loss (nats per image) each epoch,
   saves OUT/ae.safetensors and writes test images above their
   reconstructions. --load MODEL starts from saved weights: alone it only
   evaluates and draws, with --epochs N it trains N more epochs (Adam starts
   afresh). */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "common.h"

/* mean reconstruction NLL over the first n test images, without a tape */
static double test_loss(av_ctx *c, const av_autoencoder *ae, const ex_dataset *test, int n, float *xb) {
    double sum = 0;
    int start, i, prev = av_set_grad_enabled(c, 0);
    for (start = 0; start < n; start += 500) {
        int count = n - start < 500 ? n - start : 500;
        av_tensor *x, *nll;
        av_ctx_reset(c);
        ex_gather(test, NULL, start, count, xb, NULL);
        x = av_wrap(c, xb, 2, count, test->dim);
        nll = av_bernoulli_nll(c, av_autoencoder_forward(c, ae, x, NULL), x);
        for (i = 0; i < count; i++) sum += nll->data[i];
    }
    av_set_grad_enabled(c, prev);
    return sum / n;
}

int main(int argc, char **argv) {
    const char *data, *out_dir, *load;
    int epochs, code, hidden, batch, seed, quick;
    float lr;
    ex_flag flags[] = {
        EX_STRING_FLAG("data", &data, "data/fashion", "directory of the four Fashion-MNIST IDX files"),
        EX_STRING_FLAG("out", &out_dir, "out/ae", "directory for ae.safetensors and the picture"),
        EX_STRING_FLAG("load", &load, NULL, "start from this model file; alone, only evaluate and draw"),
        EX_INT_FLAG("epochs", &epochs, "5", 0, 1000, "training epochs; 1 with --quick, 0 with --load, unless given"),
        EX_INT_FLAG("code", &code, "32", 1, 4096, "size of the code between encoder and decoder"),
        EX_INT_FLAG("hidden", &hidden, "256", 1, 8192, "hidden units in the encoder and the decoder"),
        EX_INT_FLAG("batch", &batch, "128", 1, 8192, "images per training step"),
        EX_FLOAT_FLAG("lr", &lr, "1e-3", 1e-7, 1, "Adam learning rate"),
        EX_INT_FLAG("seed", &seed, "1", 0, 2147483647, "seed of the initial weights and of the shuffling"),
        EX_SWITCH_FLAG("quick", &quick, "a short run for tests: at most 6016 training and 1000 test images"),
    };
    int sizes[3], *order, epoch, n_train, n_test, shown, rc = 0, status, i;
    ex_dataset train, test;
    av_autoencoder ae;
    av_model *model;
    av_optim opt;
    av_ctx *c;
    float *xb;
    double loss = 0, t0 = ex_now();
    char path[1100];

    status = ex_parse(argc, argv, "Trains an autoencoder on Fashion-MNIST.", flags, EX_COUNT(flags));
    if (status >= 0) return status;
    if (!ex_given(flags, EX_COUNT(flags), "epochs")) epochs = load ? 0 : quick ? 1 : epochs;
    if (ex_load_fashion(data, &train, &test)) return 1;
    if (ex_out_dir(out_dir)) {
        ex_dataset_free(&train); ex_dataset_free(&test);
        return 1;
    }
    n_train = quick && train.n > 6016 ? 6016 : train.n;
    n_test = quick && test.n > 1000 ? 1000 : test.n;
    sizes[0] = train.dim;
    sizes[1] = hidden;
    sizes[2] = code;
    model = av_model_new((uint64_t)seed);
    c = av_ctx_new();
    opt = av_adam(lr);
    ae = av_autoencoder_new(model, "ae", 2, sizes, AV_ACT_RELU);
    order = (int *)malloc((size_t)train.n * sizeof(int));
    xb = (float *)malloc((size_t)(batch > 500 ? batch : 500) * train.dim * sizeof(float));
    if (!order || !xb) { fprintf(stderr, "error: out of memory\n"); rc = 1; }
    printf("ae_fashion: %d-%d-%d-%d-%d, %ld parameters, %d train / %d test images\n", sizes[0], sizes[1], sizes[2],
           sizes[1], sizes[0], av_model_num_values(model), n_train, n_test);
    if (!rc && load) {
        if ((rc = av_model_load(model, load)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else printf("loaded %s\n", load);
    }

    for (epoch = 1; epoch <= epochs && !rc; epoch++) {
        double sum = 0;
        int start, seen = 0;
        ex_shuffle(order, train.n, av_ctx_rng(c));
        for (start = 0; start < n_train && !rc; start += batch) {
            int count = n_train - start < batch ? n_train - start : batch;
            av_tensor *x, *nll;
            char info[64];
            av_ctx_reset(c);
            ex_gather(&train, order, start, count, xb, NULL);
            x = av_wrap(c, xb, 2, count, train.dim);
            nll = av_bernoulli_nll(c, av_autoencoder_forward(c, &ae, x, NULL), x);
            av_model_zero_grad(model);
            av_backward(c, av_mean_all(c, nll));
            if ((rc = av_optim_step(model, &opt)) != 0) fprintf(stderr, "\nerror: %s\n", av_error());
            for (i = 0; i < count; i++) sum += nll->data[i];
            seen += count;
            snprintf(info, sizeof info, "loss %.1f", sum / seen);
            if ((start / batch) % 25 == 0 || start + count >= n_train) ex_progress("train", seen, n_train, info);
        }
        if (rc) break;
        loss = test_loss(c, &ae, &test, n_test, xb);
        printf("epoch %d  train %.2f  test %.2f nats/image  (%.1f s)\n", epoch, sum / seen, loss, ex_now() - t0);
    }
    if (!rc && epochs == 0) {
        loss = test_loss(c, &ae, &test, n_test, xb);
        printf("test %.2f nats/image on %d images\n", loss, n_test);
    }
    if (!rc && !isfinite(loss)) {
        fprintf(stderr, "error: the test loss is not finite: the model is broken\n");
        rc = 1;
    }
    if (!rc && epochs > 0) {
        snprintf(path, sizeof path, "%s/ae.safetensors", out_dir);
        if ((rc = av_model_save(model, path)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else printf("saved %s\n", path);
    }
    if (!rc) {
        av_tensor *recon;
        shown = test.n < 32 ? test.n : 32;
        av_ctx_reset(c);
        ex_gather(&test, NULL, 0, shown, xb, NULL);
        recon = av_sigmoid(c, av_autoencoder_forward(c, &ae, av_wrap(c, xb, 2, shown, train.dim), NULL));
        snprintf(path, sizeof path, "%s/reconstructions.png", out_dir);
        if ((rc = ex_write_pairs(path, xb, recon->data, shown, test.h, test.w)) == 0) printf("pictures: %s\n", path);
    }
    if (!rc) printf("summary: {\"test_recon_nll\": %.3f, \"epochs\": %d, \"seconds\": %.1f}\n", loss, epochs, ex_now() - t0);
    free(order); free(xb);
    ex_dataset_free(&train); ex_dataset_free(&test);
    av_ctx_free(c);
    av_model_free(model);
    return rc ? 1 : 0;
}
