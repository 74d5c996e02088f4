/* An MLP classifier on Fashion-MNIST: 784-512-256-10, ReLU, Adam.

     ./build/mlp_fashion [flags]          (--help lists them, with defaults and ranges)

   Prints the training loss and the test accuracy each epoch and saves the
   weights to --out. --load MODEL starts from saved weights: alone it only
   evaluates, with --epochs N it trains N more epochs (Adam starts afresh). */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "common.h"

typedef struct mlp { av_linear_layer fc1, fc2, fc3; } mlp;

static av_tensor *mlp_forward(av_ctx *c, const mlp *net, av_tensor *x) {
    av_tensor *h = av_relu(c, av_linear_forward(c, &net->fc1, x));
    h = av_relu(c, av_linear_forward(c, &net->fc2, h));
    return av_linear_forward(c, &net->fc3, h);
}

/* Fraction of the first n test images classified right, without a tape. */
static double evaluate(av_ctx *c, const mlp *net, const ex_dataset *test, int n, int batch, float *xb) {
    int correct = 0, start, prev = av_set_grad_enabled(c, 0);
    for (start = 0; start < n; start += batch) {
        int count = n - start < batch ? n - start : batch, i, j;
        av_tensor *logits;
        av_ctx_reset(c);
        ex_gather(test, NULL, start, count, xb, NULL);
        logits = mlp_forward(c, net, av_wrap(c, xb, 2, count, test->dim));
        for (i = 0; i < count; i++) {
            const float *row = logits->data + i * EX_CLASSES;
            int best = 0;
            for (j = 1; j < EX_CLASSES; j++) best = row[j] > row[best] ? j : best;
            correct += best == test->y[start + i];
        }
    }
    av_set_grad_enabled(c, prev);
    return (double)correct / n;
}

int main(int argc, char **argv) {
    const char *data, *out, *load;
    int epochs, batch, seed, quick;
    float lr;
    ex_flag flags[] = {
        EX_STRING_FLAG("data", &data, "data/fashion", "directory of the four Fashion-MNIST IDX files"),
        EX_STRING_FLAG("out", &out, "mlp_fashion.safetensors", "model file to save"),
        EX_STRING_FLAG("load", &load, NULL, "start from this model file; alone, only evaluate"),
        EX_INT_FLAG("epochs", &epochs, "2", 0, 1000, "training epochs; 1 with --quick, 0 with --load, unless given"),
        EX_INT_FLAG("batch", &batch, "100", 1, 8192, "images per training step"),
        EX_FLOAT_FLAG("lr", &lr, "1e-3", 1e-7, 1, "Adam learning rate"),
        EX_INT_FLAG("seed", &seed, "1", 0, 2147483647, "seed of the initial weights and of the shuffling"),
        EX_SWITCH_FLAG("quick", &quick, "a short run for tests: at most 6000 training and 2000 test images"),
    };
    ex_dataset train, test;
    av_model *model;
    av_ctx *c;
    mlp net;
    av_optim opt;
    int *order, *yb, epoch, n_train, n_test, rc = 0, status;
    float *xb;
    double acc = 0, t0 = ex_now();

    status = ex_parse(argc, argv, "Trains an MLP classifier on Fashion-MNIST.", flags, EX_COUNT(flags));
    if (status >= 0) return status;
    if (!ex_given(flags, EX_COUNT(flags), "epochs")) epochs = load ? 0 : quick ? 1 : epochs;
    if (ex_load_fashion(data, &train, &test)) return 1;
    if (epochs > 0 && ex_out_file(out)) {
        ex_dataset_free(&train); ex_dataset_free(&test);
        return 1;
    }
    n_train = quick && train.n > 6000 ? 6000 : train.n;
    n_test = quick && test.n > 2000 ? 2000 : test.n;
    model = av_model_new((uint64_t)seed);
    c = av_ctx_new();
    opt = av_adam(lr);
    net.fc1 = av_linear_layer_new(model, "fc1", train.dim, 512, 1);
    net.fc2 = av_linear_layer_new(model, "fc2", 512, 256, 1);
    net.fc3 = av_linear_layer_new(model, "fc3", 256, EX_CLASSES, 1);
    order = (int *)malloc((size_t)train.n * sizeof(int));
    xb = (float *)malloc((size_t)batch * train.dim * sizeof(float));
    yb = (int *)malloc((size_t)batch * sizeof(int));
    if (!order || !xb || !yb) { fprintf(stderr, "error: out of memory\n"); rc = 1; }
    printf("mlp_fashion: %d train / %d test images, %ld parameters, gemm path %s\n", n_train, n_test,
           av_model_num_values(model), av_isa_name(av_get_isa()));
    if (!rc && load) {
        if ((rc = av_model_load(model, load)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else printf("loaded %s\n", load);
    }

    for (epoch = 1; epoch <= epochs && !rc; epoch++) {
        double loss_sum = 0;
        int steps = 0, start;
        ex_shuffle(order, train.n, av_ctx_rng(c));
        for (start = 0; start < n_train && !rc; start += batch, steps++) {
            int count = n_train - start < batch ? n_train - start : batch;
            av_tensor *loss;
            char info[64];
            av_ctx_reset(c);
            ex_gather(&train, order, start, count, xb, yb);
            loss = av_cross_entropy(c, mlp_forward(c, &net, av_wrap(c, xb, 2, count, train.dim)), yb, AV_MEAN);
            av_model_zero_grad(model);
            av_backward(c, loss);
            if ((rc = av_optim_step(model, &opt)) != 0) fprintf(stderr, "\nerror: %s\n", av_error());
            loss_sum += av_item(loss) * count;
            snprintf(info, sizeof info, "loss %.4f", loss_sum / (start + count));
            if (steps % 20 == 0 || start + count >= n_train) ex_progress("train", start + count, n_train, info);
        }
        if (rc) break;
        acc = evaluate(c, &net, &test, n_test, batch, xb);
        printf("epoch %d  train loss %.4f  test accuracy %.2f%%  (%.1f s)\n", epoch, loss_sum / n_train, 100 * acc,
               ex_now() - t0);
    }
    if (!rc && epochs == 0) {
        acc = evaluate(c, &net, &test, n_test, batch, xb);
        printf("test accuracy %.2f%% on %d images\n", 100 * acc, n_test);
    }
    if (!rc && epochs > 0) {
        if ((rc = av_model_save(model, out)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else printf("saved %s\n", out);
    }
    if (!rc) printf("summary: {\"test_accuracy\": %.4f, \"epochs\": %d, \"seconds\": %.1f}\n", acc, epochs, ex_now() - t0);
    free(order); free(xb); free(yb);
    ex_dataset_free(&train); ex_dataset_free(&test);
    av_ctx_free(c);
    av_model_free(model);
    return rc ? 1 : 0;
}
