/* Training throughput of the AttentionNet of examples/cnn_attention_fashion.c
   (stem 32 at 28x28, ResBlocks to 64 at 14x14 and 128 at 7x7, SAGAN after the
   first stage, spatial attention after the second): one SGD step (momentum
   0.9, weight decay 5e-4) on a batch of B random 1 x 28 x 28 images, in
   training mode (batch norm on the batch's statistics).
     bench_cnn B threads [attention 1|0]    prints one JSON line
   Images per second of the best round of 5 steps (at least 3 rounds and 5
   seconds: the machine is shared). tests/bench_cnn.sh runs it beside the
   same model in PyTorch (tests/bench_cnn.py). */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    enum { STEPS = 5 };
    av_attention_net_config cfg = av_attention_net_defaults();
    av_attention_net net;
    av_model *m;
    av_ctx *c;
    av_optim opt = av_sgd(0.01, 0.9, 5e-4);
    int B, threads, rounds = 0, i, *labels;
    float *images;
    double best = 1e30, start;
    if (argc < 3 || argc > 4 || (B = atoi(argv[1])) < 1 || (threads = atoi(argv[2])) < 1) {
        fprintf(stderr, "usage: bench_cnn B threads [attention 1|0]\n");
        return 2;
    }
    cfg.attention = argc == 4 ? atoi(argv[3]) != 0 : 1;
    av_set_num_threads(threads);
    m = av_model_new(1);
    c = av_ctx_new();
    net = av_attention_net_new(m, "net", &cfg);
    images = (float *)malloc((size_t)B * 784 * sizeof(float));
    labels = (int *)malloc((size_t)B * sizeof(int));
    if (!m || !c || !images || !labels) {
        fprintf(stderr, "bench_cnn: out of memory\n");
        return 1;
    }
    for (i = 0; i < B * 784; i++) images[i] = av_rng_uniform(av_ctx_rng(c));
    for (i = 0; i < B; i++) labels[i] = i % 10;
    av_set_training(c, 1);
    start = now();
    for (rounds = -1; rounds < 3 || (now() - start < 5.0 && rounds < 50); rounds++) { /* round -1 warms up */
        double t0 = now();
        int s;
        for (s = 0; s < STEPS; s++) {
            av_tensor *logits, *loss;
            av_ctx_reset(c);
            logits = av_attention_net_forward(c, &net, av_wrap(c, images, 4, B, 1, 28, 28), NULL);
            loss = av_cross_entropy(c, logits, labels, AV_MEAN);
            av_model_zero_grad(m);
            av_backward(c, loss);
            if (av_optim_step(m, &opt)) {
                fprintf(stderr, "bench_cnn: %s\n", av_error());
                return 1;
            }
        }
        if (rounds >= 0 && now() - t0 < best) best = now() - t0;
    }
    printf("{\"impl\": \"attnvae\", \"B\": %d, \"threads\": %d, \"attention\": %d, \"params\": %ld, \"img_per_s\": %.1f}\n", B,
           threads, cfg.attention, av_model_num_values(m), STEPS * B / best);
    free(images);
    free(labels);
    av_ctx_free(c);
    av_model_free(m);
    return 0;
}
