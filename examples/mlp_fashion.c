/* An MLP classifier on Fashion-MNIST: 784-512-256-10, ReLU, Adam.
     ./build/mlp_fashion [--data data/fashion] [--epochs 2] [--batch 100]
                         [--lr 1e-3] [--seed 1] [--out mlp_fashion.safetensors] [--quick] */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "common.h"

typedef struct mlp { av_linear_layer fc1, fc2, fc3; } mlp;

static av_tensor *mlp_forward(av_ctx *c, const mlp *net, av_tensor *x) {
    av_tensor *h = av_relu(c, av_linear_forward(c, &net->fc1, x));
    h = av_relu(c, av_linear_forward(c, &net->fc2, h));
    return av_linear_forward(c, &net->fc3, h);
}

/* Fraction of the test set classified right, without a tape. */
static double evaluate(av_ctx *c, const mlp *net, const ex_dataset *test, int batch, float *xb, int limit) {
    int correct = 0, start, n = limit < test->n ? limit : test->n;
    int prev = av_set_grad_enabled(c, 0);
    for (start = 0; start < n; start += batch) {
        int count = n - start < batch ? n - start : batch, i, j;
        av_tensor *logits;
        av_ctx_reset(c);
        ex_gather(test, NULL, start, count, xb, NULL);
        logits = mlp_forward(c, net, av_wrap(c, xb, 2, count, test->dim));
        for (i = 0; i < count; i++) {
            const float *row = logits->data + i * 10;
            int best = 0;
            for (j = 1; j < 10; j++) best = row[j] > row[best] ? j : best;
            correct += best == test->y[start + i];
        }
    }
    av_set_grad_enabled(c, prev);
    return (double)correct / n;
}

int main(int argc, char **argv) {
    const char *dir = ex_arg(argc, argv, "--data", "data/fashion");
    const char *out = ex_arg(argc, argv, "--out", "mlp_fashion.safetensors");
    int quick = ex_flag(argc, argv, "--quick");
    int epochs = ex_arg_int(argc, argv, "--epochs", quick ? 1 : 2);
    int batch = ex_arg_int(argc, argv, "--batch", 100);
    int limit = quick ? 6000 : 1 << 30;
    float lr = ex_arg_float(argc, argv, "--lr", 1e-3f);
    ex_dataset train, test;
    av_model *model;
    av_ctx *c;
    mlp net;
    av_optim opt = av_adam(lr);
    int *order, *yb, epoch, n_train, rc = 0;
    float *xb;
    double acc = 0, t0 = ex_now();

    if (ex_load_fashion(dir, &train, &test)) return 1;
    n_train = limit < train.n ? limit : train.n;
    model = av_model_new((uint64_t)ex_arg_int(argc, argv, "--seed", 1));
    c = av_ctx_new();
    net.fc1 = av_linear_layer_new(model, "fc1", train.dim, 512, 1);
    net.fc2 = av_linear_layer_new(model, "fc2", 512, 256, 1);
    net.fc3 = av_linear_layer_new(model, "fc3", 256, 10, 1);
    order = (int *)malloc((size_t)train.n * sizeof(int));
    xb = (float *)malloc((size_t)batch * train.dim * sizeof(float));
    yb = (int *)malloc((size_t)batch * sizeof(int));
    printf("mlp_fashion: %d train / %d test images, %ld parameters, gemm path %s\n", n_train, test.n,
           av_model_num_values(model), av_isa_name(av_get_isa()));

    for (epoch = 1; epoch <= epochs && !rc; epoch++) {
        double loss_sum = 0;
        int steps = 0, start;
        ex_shuffle(order, train.n, av_ctx_rng(c));
        for (start = 0; start + batch <= n_train; start += batch, steps++) {
            av_tensor *loss;
            char info[64];
            av_ctx_reset(c);
            ex_gather(&train, order, start, batch, xb, yb);
            loss = av_cross_entropy(c, mlp_forward(c, &net, av_wrap(c, xb, 2, batch, train.dim)), yb, AV_MEAN);
            av_model_zero_grad(model);
            av_backward(c, loss);
            if ((rc = av_optim_step(model, &opt)) != 0) {
                fprintf(stderr, "\nerror: %s\n", av_error());
                break;
            }
            loss_sum += av_item(loss);
            snprintf(info, sizeof info, "loss %.4f", loss_sum / (steps + 1));
            if (steps % 20 == 0 || start + 2 * batch > n_train) ex_progress("train", start + batch, n_train, info);
        }
        acc = evaluate(c, &net, &test, batch, xb, quick ? 2000 : test.n);
        printf("epoch %d  train loss %.4f  test accuracy %.2f%%  (%.1f s)\n", epoch, loss_sum / steps, 100 * acc,
               ex_now() - t0);
    }
    if (!rc && (rc = av_model_save(model, out)) != 0) fprintf(stderr, "error: %s\n", av_error());
    if (!rc) printf("saved %s\n", out);
    printf("summary: {\"test_accuracy\": %.4f, \"epochs\": %d, \"seconds\": %.1f}\n", acc, epochs, ex_now() - t0);
    free(order); free(xb); free(yb);
    ex_dataset_free(&train); ex_dataset_free(&test);
    av_ctx_free(c);
    av_model_free(model);
    return rc ? 1 : 0;
}
