/* The AttentionNet classifier (seed 004) on Fashion-MNIST: a ConvBlock stem,
   two stages of ResBlocks, SAGAN self-attention after the first stage and
   spatial attention after the second, global average pooling and a linear
   layer; trained with SGD (momentum, weight decay, warm-up then cosine) on
   randomly cropped and flipped images.

     ./build/cnn_attention_fashion [flags]   (--help lists them, with defaults and ranges)

   Prints the training loss and the test accuracy each epoch, saves the
   model to --out (out/cnn_attention_fashion.safetensors) after each epoch,
   and draws test images with their attention maps (--maps). --no-attention then trains the
   same net without its attention blocks, from the same seed on the same
   batches, and reports both accuracies. --load MODEL starts from saved
   weights: alone it only evaluates, with --epochs N it trains N more. */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "common.h"

/* The net: widths and attention positions, as other programs (the GAN's
   Fréchet distance) must rebuild it to load the saved model. */
static av_attention_net_config net_config(int attention) {
    av_attention_net_config cfg = av_attention_net_defaults();
    cfg.stem_channels = 32;          /* 28 x 28 */
    cfg.num_stages = 2;
    cfg.channels[0] = 64;            /* 14 x 14, then SAGAN over its 196 positions */
    cfg.channels[1] = 128;           /* 7 x 7, then spatial attention */
    cfg.blocks[0] = cfg.blocks[1] = 1;
    cfg.sagan_stage = 0;
    cfg.spatial_stage = 1;
    cfg.sagan_reduction = 8;
    cfg.spatial_kernel = 7;
    cfg.attention = attention;
    return cfg;
}

typedef struct settings {
    const ex_dataset *train, *test;
    int n_train, n_test, epochs, batch, pad, seed;
    float lr, weight_decay, warmup;
} settings;

/* Random crop and flip of one h x w image: shifted by dy, dx in
   -pad..pad (the pixels that come in are 0, as a crop of the zero-padded
   image), then mirrored left to right with probability 1/2. */
static void augment(const float *src, float *dst, int h, int w, int pad, av_rng *rng) {
    int dy = (int)(av_rng_u64(rng) % (uint64_t)(2 * pad + 1)) - pad;
    int dx = (int)(av_rng_u64(rng) % (uint64_t)(2 * pad + 1)) - pad;
    int flip = (int)(av_rng_u64(rng) & 1), y, x;
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++) {
            int sy = y + dy, sx = (flip ? w - 1 - x : x) + dx;
            dst[y * w + x] = sy >= 0 && sy < h && sx >= 0 && sx < w ? src[sy * w + sx] : 0.0f;
        }
}

/* Makes the directory of path (mkdir -p) and checks that path can be written. */
static int out_path(const char *path) {
    char dir[1024];
    const char *slash = strrchr(path, '/');
    size_t len = slash ? (size_t)(slash - path) : 0;
    if (len > 0 && len < sizeof dir) {
        memcpy(dir, path, len);
        dir[len] = 0;
        if (ex_out_dir(dir)) return -1;
    }
    return ex_out_file(path);
}

static int argmax(const float *row, int n) {
    int best = 0, j;
    for (j = 1; j < n; j++) best = row[j] > row[best] ? j : best;
    return best;
}

/* Fraction of the first n test images classified right: eval mode (batch
   norm on its running statistics), no tape. */
static double evaluate(av_ctx *c, const av_attention_net *net, const ex_dataset *test, int n, int batch, float *xb) {
    int correct = 0, start, grad = av_set_grad_enabled(c, 0), training = av_set_training(c, 0);
    for (start = 0; start < n; start += batch) {
        int count = n - start < batch ? n - start : batch, i;
        av_tensor *logits;
        av_ctx_reset(c);
        ex_gather(test, NULL, start, count, xb, NULL);
        logits = av_attention_net_forward(c, net, av_wrap(c, xb, 4, count, 1, test->h, test->w), NULL);
        for (i = 0; i < count; i++) correct += argmax(logits->data + i * EX_CLASSES, EX_CLASSES) == test->y[start + i];
    }
    av_set_grad_enabled(c, grad);
    av_set_training(c, training);
    return (double)correct / n;
}

/* "hot" colours for t in [0, 1]: black, red, yellow, white */
static void heat(float t, float rgb[3]) {
    int k;
    for (k = 0; k < 3; k++) {
        float v = 3 * t - (float)k;
        rgb[k] = v < 0 ? 0 : v > 1 ? 1 : v;
    }
}

/* Draws image (h x w, in [0, 1]) scaled by s at (x0, y0), blended half and
   half with map (h x w, stretched from its minimum to its maximum) in hot
   colours; map NULL draws the image alone. */
static void draw_cell(unsigned char *rgb, int width, int x0, int y0, int s, const float *image, const float *map, int h, int w) {
    float lo = map ? map[0] : 0, hi = lo, col[3] = {0, 0, 0};
    int y, x, k;
    for (k = 0; map && k < h * w; k++) {
        lo = map[k] < lo ? map[k] : lo;
        hi = map[k] > hi ? map[k] : hi;
    }
    for (y = 0; y < h * s; y++)
        for (x = 0; x < w * s; x++) {
            int at = (y / s) * w + x / s;
            unsigned char *px = rgb + ((size_t)(y0 + y) * width + x0 + x) * 3;
            if (map) heat(hi > lo ? (map[at] - lo) / (hi - lo) : 0, col);
            for (k = 0; k < 3; k++) {
                float v = map ? 0.5f * image[at] + 0.5f * col[k] : image[at];
                px[k] = (unsigned char)(255.0f * (v < 0 ? 0 : v > 1 ? 1 : v) + 0.5f);
            }
        }
}

/* Test images in three rows: the image with its predicted class (green when
   right, red when wrong, the true class under a wrong one); the spatial
   attention map; and the SAGAN weights of one query position (the cross:
   where the spatial map is highest) over all positions. Maps are upsampled
   bilinearly to the image's size. */
static int write_maps(const char *path, av_ctx *c, const av_attention_net *net, const ex_dataset *test, int n) {
    static const unsigned char white[3] = {255, 255, 255}, green[3] = {90, 220, 90}, red[3] = {255, 90, 90},
                               cyan[3] = {0, 255, 255};
    static const char *const rows[3] = {"input", "spatial", "SAGAN"};
    const int s = 3, gap = 6, left = 8 * EX_ADVANCE + gap, head = 2 * (EX_GLYPH_H + 3) + 2;
    int h = test->h, w = test->w, cw = w * s, ch = h * s, width = left + n * (cw + gap), height = 3 * (head + ch) + gap;
    int i, rc, grad, training;
    unsigned char *rgb = (unsigned char *)calloc((size_t)width * height * 3, 1);
    float *xb = (float *)malloc((size_t)n * h * w * sizeof(float));
    av_attention_net_maps maps;
    av_tensor *logits, *spatial, *sagan;
    if (!xb || !rgb) {
        free(xb);
        free(rgb);
        fprintf(stderr, "error: %s: out of memory\n", path);
        return -1;
    }
    grad = av_set_grad_enabled(c, 0);
    training = av_set_training(c, 0);
    av_ctx_reset(c);
    ex_gather(test, NULL, 0, n, xb, NULL);
    logits = av_attention_net_forward(c, net, av_wrap(c, xb, 4, n, 1, h, w), &maps);
    spatial = av_upsample_bilinear2d(c, maps.spatial, h, w);
    for (i = 0; i < 3; i++) ex_draw_text(rgb, width, height, 2, i * (head + ch) + head + ch / 2 - 4, rows[i], white, 1);
    for (i = 0; i < n; i++) {
        const float *image = xb + (size_t)i * h * w, *sp = maps.spatial->data + (size_t)i * maps.spatial->size / n;
        int pred = argmax(logits->data + i * EX_CLASSES, EX_CLASSES), truth = test->y[i];
        int x0 = left + i * (cw + gap), N = maps.sagan_h * maps.sagan_w, sh = maps.spatial->shape[2],
            sw = maps.spatial->shape[3], q = argmax(sp, sh * sw), qy = (2 * (q / sw) + 1) * maps.sagan_h / (2 * sh),
            qx = (2 * (q % sw) + 1) * maps.sagan_w / (2 * sw), cy, cx;
        ex_draw_text(rgb, width, height, x0, 2, ex_class_names[pred], pred == truth ? green : red, 1);
        if (pred != truth) ex_draw_text(rgb, width, height, x0, 2 + EX_GLYPH_H + 3, ex_class_names[truth], white, 1);
        draw_cell(rgb, width, x0, head, s, image, NULL, h, w);
        draw_cell(rgb, width, x0, 2 * head + ch, s, image, spatial->data + (size_t)i * h * w, h, w);
        /* the query's row of weights over the key positions, as an image */
        sagan = av_upsample_bilinear2d(c, av_wrap(c, maps.sagan->data + ((size_t)i * N + (size_t)qy * maps.sagan_w + qx) * N,
                                                  4, 1, 1, maps.sagan_h, maps.sagan_w), h, w);
        draw_cell(rgb, width, x0, 3 * head + 2 * ch, s, image, sagan->data, h, w);
        cy = 3 * head + 2 * ch + (int)((qy + 0.5) * ch / maps.sagan_h);
        cx = x0 + (int)((qx + 0.5) * cw / maps.sagan_w);
        ex_fill_rect(rgb, width, height, cx - 4, cy, 9, 1, cyan);
        ex_fill_rect(rgb, width, height, cx, cy - 4, 1, 9, cyan);
    }
    av_set_grad_enabled(c, grad);
    av_set_training(c, training);
    rc = stbi_write_png(path, width, height, 3, rgb, width * 3) ? 0 : -1;
    if (rc) fprintf(stderr, "error: cannot write %s\n", path);
    free(xb);
    free(rgb);
    return rc;
}

/* Trains (epochs > 0) and evaluates one net; *acc gets its test accuracy.
   load: a model file to start from, or NULL; save: where to save it after
   each epoch, or NULL. Returns 0, or -1 after printing why. */
static int run(const char *title, const settings *st, int attention, const char *load, const char *save,
               const char *maps_path, double *acc, double *images_per_s) {
    const ex_dataset *train = st->train, *test = st->test;
    av_attention_net_config cfg = net_config(attention);
    av_model *model = av_model_new((uint64_t)st->seed);
    av_ctx *c = av_ctx_new();
    av_attention_net net;
    av_optim opt = av_sgd(st->lr, 0.9, st->weight_decay);
    int *order = (int *)malloc((size_t)train->n * sizeof(int)), *yb = (int *)malloc((size_t)st->batch * sizeof(int));
    float *xb = (float *)malloc((size_t)st->batch * train->dim * sizeof(float));
    long steps_per_epoch = (st->n_train + st->batch - 1) / st->batch, step = 0;
    long total = steps_per_epoch * st->epochs, warmup = (long)(st->warmup * steps_per_epoch);
    int epoch, rc = 0;
    double t0 = ex_now(), train_seconds = 0;

    if (!model || !c || !order || !yb || !xb) {
        fprintf(stderr, "error: out of memory\n");
        rc = -1;
        goto done;
    }
    av_ctx_seed(c, (uint64_t)st->seed); /* the same batches and crops for the ablation */
    net = av_attention_net_new(model, "net", &cfg);
    printf("%s: %d train / %d test images, %ld parameters, gemm path %s, %d thread(s)\n", title, st->n_train, st->n_test,
           av_model_num_values(model), av_isa_name(av_get_isa()), av_get_num_threads());
    if (load) {
        if (av_model_load(model, load) != 0) {
            fprintf(stderr, "error: %s\n", av_error());
            rc = -1;
            goto done;
        }
        printf("loaded %s\n", load);
    }
    for (epoch = 1; epoch <= st->epochs && !rc; epoch++) {
        double loss_sum = 0, t_epoch = ex_now();
        int start, correct = 0;
        av_set_training(c, 1);
        ex_shuffle(order, train->n, av_ctx_rng(c));
        for (start = 0; start < st->n_train; start += st->batch, step++) {
            int count = st->n_train - start < st->batch ? st->n_train - start : st->batch, i;
            av_tensor *logits, *loss;
            char info[96];
            for (i = 0; i < count; i++) {
                int r = order[start + i];
                augment(train->x + (size_t)r * train->dim, xb + (size_t)i * train->dim, train->h, train->w, st->pad,
                        av_ctx_rng(c));
                yb[i] = train->y[r];
            }
            av_ctx_reset(c);
            logits = av_attention_net_forward(c, &net, av_wrap(c, xb, 4, count, 1, train->h, train->w), NULL);
            loss = av_cross_entropy(c, logits, yb, AV_MEAN);
            av_model_zero_grad(model);
            av_backward(c, loss);
            opt.lr = av_lr_warmup_cosine(step, warmup, total, st->lr, 0.0);
            if (av_optim_step(model, &opt) != 0) {
                fprintf(stderr, "\nerror: %s\n", av_error());
                rc = -1;
                break;
            }
            for (i = 0; i < count; i++) correct += argmax(logits->data + i * EX_CLASSES, EX_CLASSES) == yb[i];
            loss_sum += av_item(loss) * count;
            snprintf(info, sizeof info, "loss %.4f  acc %.2f%%  lr %.4f", loss_sum / (start + count),
                     100.0 * correct / (start + count), opt.lr);
            if (step % 20 == 0 || start + count >= st->n_train) ex_progress("train", start + count, st->n_train, info);
        }
        if (rc) break;
        train_seconds += ex_now() - t_epoch;
        *acc = evaluate(c, &net, test, st->n_test, st->batch, xb);
        printf("epoch %2d  train loss %.4f  train accuracy %.2f%%  test accuracy %.2f%%  (%.1f s, cpu %.1f s)\n", epoch,
               loss_sum / st->n_train, 100.0 * correct / st->n_train, 100 * *acc, ex_now() - t0,
               (double)clock() / CLOCKS_PER_SEC);
        fflush(stdout);
        if (save && av_model_save(model, save) != 0) { /* every epoch: a stopped run keeps its last one */
            fprintf(stderr, "error: %s\n", av_error());
            rc = -1;
        }
    }
    *images_per_s = train_seconds > 0 ? (double)st->n_train * st->epochs / train_seconds : 0;
    if (!rc && st->epochs == 0) {
        *acc = evaluate(c, &net, test, st->n_test, st->batch, xb);
        printf("test accuracy %.2f%% on %d images\n", 100 * *acc, st->n_test);
    }
    if (!rc && save && st->epochs > 0) printf("saved %s\n", save);
    if (!rc && maps_path) {
        if ((rc = write_maps(maps_path, c, &net, test, st->n_test < 8 ? st->n_test : 8)) == 0)
            printf("pictures: %s\n", maps_path);
    }
done:
    free(order);
    free(yb);
    free(xb);
    av_ctx_free(c);
    av_model_free(model);
    return rc;
}

int main(int argc, char **argv) {
    const char *data, *out, *maps, *load;
    int quick, ablation, status, rc;
    settings st;
    ex_flag flags[] = {
        EX_STRING_FLAG("data", &data, "data/fashion", "directory of the four Fashion-MNIST IDX files"),
        EX_STRING_FLAG("out", &out, "out/cnn_attention_fashion.safetensors", "model file to save"),
        EX_STRING_FLAG("maps", &maps, "out/cnn_attention_maps.png", "PNG of test images and their attention maps"),
        EX_STRING_FLAG("load", &load, NULL, "start from this model file; alone, only evaluate"),
        EX_INT_FLAG("epochs", &st.epochs, "10", 0, 1000, "training epochs; 1 with --quick, 0 with --load, unless given"),
        EX_INT_FLAG("batch", &st.batch, "128", 1, 4096, "images per training step"),
        EX_FLOAT_FLAG("lr", &st.lr, "0.1", 1e-6, 10, "peak SGD learning rate (momentum 0.9)"),
        EX_FLOAT_FLAG("weight-decay", &st.weight_decay, "5e-4", 0, 1, "SGD weight decay"),
        EX_FLOAT_FLAG("warmup", &st.warmup, "1", 0, 100, "epochs of linear warm-up before the cosine decay"),
        EX_INT_FLAG("pad", &st.pad, "2", 0, 4, "random crops shift images by up to this many pixels"),
        EX_INT_FLAG("seed", &st.seed, "1", 0, 2147483647, "seed of the initial weights, the shuffling and the crops"),
        EX_SWITCH_FLAG("no-attention", &ablation, "also train the same net without its attention blocks, and report both"),
        EX_SWITCH_FLAG("quick", &quick, "a short run for tests: at most 2000 training and 1000 test images"),
    };
    ex_dataset train, test;
    double acc = 0, acc_ablation = 0, speed = 0, speed_ablation = 0, t0 = ex_now(), cpu0 = (double)clock();

    status = ex_parse(argc, argv, "Trains the AttentionNet CNN classifier on Fashion-MNIST.", flags, EX_COUNT(flags));
    if (status >= 0) return status;
    if (!ex_given(flags, EX_COUNT(flags), "epochs")) st.epochs = load ? 0 : quick ? 1 : st.epochs;
    if (ablation && st.epochs == 0) {
        fprintf(stderr, "%s: --no-attention trains a second net: it needs --epochs 1 or more\n", ex__program(argv[0]));
        return 2;
    }
    if (ex_load_fashion(data, &train, &test)) return 1;
    if ((st.epochs > 0 && out_path(out)) || out_path(maps)) {
        ex_dataset_free(&train);
        ex_dataset_free(&test);
        return 1;
    }
    st.train = &train;
    st.test = &test;
    st.n_train = quick && train.n > 2000 ? 2000 : train.n;
    st.n_test = quick && test.n > 1000 ? 1000 : test.n;
    rc = run("cnn_attention_fashion", &st, 1, load, out, maps, &acc, &speed);
    if (!rc && ablation) rc = run("without attention", &st, 0, NULL, NULL, NULL, &acc_ablation, &speed_ablation);
    if (!rc) {
        printf("test accuracy %.2f%%", 100 * acc);
        if (ablation) printf(", without attention %.2f%%", 100 * acc_ablation);
        printf("\nsummary: {\"test_acc\": %.4f", acc);
        if (ablation) printf(", \"test_acc_no_attention\": %.4f", acc_ablation);
        printf(", \"epochs\": %d", st.epochs);
        if (st.epochs > 0) printf(", \"train_images_per_s\": %.0f", speed);
        if (ablation) printf(", \"train_images_per_s_no_attention\": %.0f", speed_ablation);
        printf(", \"seconds\": %.1f, \"cpu_seconds\": %.1f}\n", ex_now() - t0, ((double)clock() - cpu0) / CLOCKS_PER_SEC);
    }
    ex_dataset_free(&train);
    ex_dataset_free(&test);
    return rc ? 1 : 0;
}
