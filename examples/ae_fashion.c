/* A plain autoencoder on Fashion-MNIST: 784-256-32-256-784, ReLU, trained
   with the Bernoulli likelihood (binary cross-entropy), Adam.

     ./build/ae_fashion [--data data/fashion] [--epochs 5] [--code 32] [--hidden 256]
                        [--batch 128] [--lr 1e-3] [--seed 1] [--out out/ae] [--quick]

   Prints the train and test reconstruction loss (nats per image) each epoch
   and writes originals above their reconstructions. */
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
    const char *data = ex_arg(argc, argv, "--data", "data/fashion"), *out_dir = ex_arg(argc, argv, "--out", "out/ae");
    int quick = ex_flag(argc, argv, "--quick");
    int epochs = ex_arg_int(argc, argv, "--epochs", quick ? 1 : 5), batch = ex_arg_int(argc, argv, "--batch", 128);
    int sizes[3], *order, epoch, n_train, n_test, rc = 0, i;
    av_optim opt = av_adam(ex_arg_float(argc, argv, "--lr", 1e-3f));
    ex_dataset train, test;
    av_autoencoder ae;
    av_model *model;
    av_ctx *c;
    float *xb;
    double loss = 0, t0 = ex_now();
    char path[1024];

    if (ex_load_fashion(data, &train, &test) || ex_mkdirs(out_dir)) return 1;
    n_train = quick ? 6016 : train.n;
    n_test = quick ? 1000 : test.n;
    sizes[0] = train.dim;
    sizes[1] = ex_arg_int(argc, argv, "--hidden", 256);
    sizes[2] = ex_arg_int(argc, argv, "--code", 32);
    model = av_model_new((uint64_t)ex_arg_int(argc, argv, "--seed", 1));
    c = av_ctx_new();
    ae = av_autoencoder_new(model, "ae", 2, sizes, AV_ACT_RELU);
    order = (int *)malloc((size_t)train.n * sizeof(int));
    xb = (float *)malloc((size_t)(batch > 500 ? batch : 500) * train.dim * sizeof(float));
    printf("ae_fashion: %d-%d-%d-%d-%d, %ld parameters\n", sizes[0], sizes[1], sizes[2], sizes[1], sizes[0],
           av_model_num_values(model));

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
        loss = test_loss(c, &ae, &test, n_test, xb);
        printf("epoch %d  train %.2f  test %.2f nats/image  (%.1f s)\n", epoch, sum / seen, loss, ex_now() - t0);
    }
    if (!rc) {
        av_tensor *recon;
        av_ctx_reset(c);
        ex_gather(&test, NULL, 0, 32, xb, NULL);
        recon = av_sigmoid(c, av_autoencoder_forward(c, &ae, av_wrap(c, xb, 2, 32, train.dim), NULL));
        snprintf(path, sizeof path, "%s/reconstructions.png", out_dir);
        if ((rc = ex_write_pairs(path, xb, recon->data, train.dim)) == 0) printf("pictures: %s\n", path);
    }
    printf("summary: {\"test_recon_nll\": %.3f, \"epochs\": %d, \"seconds\": %.1f}\n", loss, epochs, ex_now() - t0);
    free(order); free(xb);
    ex_dataset_free(&train); ex_dataset_free(&test);
    av_ctx_free(c);
    av_model_free(model);
    return rc ? 1 : 0;
}
