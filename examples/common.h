/* Helpers shared by the examples: flags, a progress bar, timing and the
   Fashion-MNIST loader. Example-only code; the library does not need it. */
#ifndef AV_EXAMPLES_COMMON_H
#define AV_EXAMPLES_COMMON_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../attnvae.h"

/* --name value flags; ex_flag for bare switches */
static inline const char *ex_arg(int argc, char **argv, const char *name, const char *fallback) {
    int i;
    for (i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return fallback;
}
static inline int ex_arg_int(int argc, char **argv, const char *name, int fallback) {
    const char *s = ex_arg(argc, argv, name, NULL);
    return s ? atoi(s) : fallback;
}
static inline float ex_arg_float(int argc, char **argv, const char *name, float fallback) {
    const char *s = ex_arg(argc, argv, name, NULL);
    return s ? (float)atof(s) : fallback;
}
static inline int ex_flag(int argc, char **argv, const char *name) {
    int i;
    for (i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0) return 1;
    return 0;
}

static inline double ex_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A one-line bar on stderr, redrawn in place on a terminal; in logs only
   the finished line is printed, so CI output stays short. */
static inline void ex_progress(const char *label, int done, int total, const char *info) {
    int width = 30, filled = total ? (int)((long)width * done / total) : width, i;
    int tty = isatty(2);
    if (!tty && done < total) return;
    fprintf(stderr, "%s%-10s [", tty ? "\r" : "", label);
    for (i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %3d%% %s", total ? (int)(100L * done / total) : 100, info ? info : "");
    if (done >= total) fputc('\n', stderr);
    fflush(stderr);
}

/* mkdir -p */
static inline int ex_mkdirs(const char *dir) {
    char buf[1024];
    size_t i, len = strlen(dir);
    struct stat st;
    if (len >= sizeof buf) return -1;
    memcpy(buf, dir, len + 1);
    for (i = 1; i <= len; i++)
        if (buf[i] == '/' || buf[i] == 0) {
            char keep = buf[i];
            buf[i] = 0;
            if (stat(buf, &st) != 0 && mkdir(buf, 0755) != 0) {
                fprintf(stderr, "error: cannot create directory %s\n", buf);
                return -1;
            }
            buf[i] = keep;
        }
    return 0;
}

/* Fashion-MNIST as floats in [0, 1] and int labels. */
typedef struct ex_dataset { int n, dim; float *x; int *y; } ex_dataset;

static inline void ex_dataset_free(ex_dataset *d) { free(d->x); free(d->y); }

/* 0, or -1 with the reason in why[cap]. */
static inline int ex_load_split(const char *dir, const char *images, const char *labels, ex_dataset *out, char *why,
                                size_t cap) {
    char path[1024];
    av_idx xi, yi;
    int i;
    snprintf(path, sizeof path, "%s/%s", dir, images);
    if (av_idx_load(path, &xi)) { snprintf(why, cap, "%s", av_error()); return -1; }
    snprintf(path, sizeof path, "%s/%s", dir, labels);
    if (av_idx_load(path, &yi)) { snprintf(why, cap, "%s", av_error()); av_idx_free(&xi); return -1; }
    if (xi.ndim != 3 || yi.ndim != 1 || xi.dims[0] != yi.dims[0]) {
        snprintf(why, cap, "%s (%d dimensions, %d items) and %s (%d dimensions, %d items) do not match: "
                 "images are [n, rows, cols], labels [n]", images, xi.ndim, xi.dims[0], labels, yi.ndim, yi.dims[0]);
        av_idx_free(&xi); av_idx_free(&yi);
        return -1;
    }
    out->n = xi.dims[0];
    out->dim = xi.dims[1] * xi.dims[2];
    out->x = xi.data; /* take ownership of the float buffer */
    for (i = 0; i < (int)xi.count; i++) out->x[i] /= 255.0f;
    out->y = (int *)malloc((size_t)out->n * sizeof(int));
    for (i = 0; i < out->n; i++) out->y[i] = (int)yi.data[i];
    av_idx_free(&yi);
    return 0;
}

/* Loads the four uncompressed IDX files from dir, or explains how to get them. */
static inline int ex_load_fashion(const char *dir, ex_dataset *train, ex_dataset *test) {
    char why[600];
    if (ex_load_split(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", train, why, sizeof why) == 0) {
        if (ex_load_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", test, why, sizeof why) == 0) return 0;
        ex_dataset_free(train);
    }
    fprintf(stderr,
            "error: cannot load Fashion-MNIST from '%s': %s\n"
            "  Get it with:  make data   (installs Debian's dataset-fashion-mnist if needed\n"
            "                and unpacks it into data/fashion), or pass --data DIR with the\n"
            "                four uncompressed IDX files.\n",
            dir, why);
    return -1;
}

/* Shuffled index order for an epoch. */
static inline void ex_shuffle(int *order, int n, av_rng *rng) {
    int i;
    for (i = 0; i < n; i++) order[i] = i;
    for (i = n - 1; i > 0; i--) {
        int j = (int)(av_rng_u64(rng) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* Copies the rows order[start..start+count) into a batch buffer. */
static inline void ex_gather(const ex_dataset *d, const int *order, int start, int count, float *x, int *y) {
    int i;
    for (i = 0; i < count; i++) {
        int r = order ? order[start + i] : start + i;
        memcpy(x + (size_t)i * d->dim, d->x + (size_t)r * d->dim, (size_t)d->dim * sizeof(float));
        if (y) y[i] = d->y[r];
    }
}
#endif

/* ---- pictures (stb_image_write from Debian's libstb-dev) --------------- */
#ifndef EX_NO_PNG
#include <stb/stb_image_write.h>

/* Writes n grayscale h×w images (values in [0,1]) as a rows×cols grid with
   a 1-pixel gap; returns 0 on success. */
static inline int ex_write_grid(const char *path, const float *images, int n, int rows, int cols, int h, int w) {
    int W = cols * (w + 1) + 1, H = rows * (h + 1) + 1, i, y, x, ok;
    unsigned char *pix = (unsigned char *)calloc((size_t)W * H, 1);
    for (i = 0; i < n && i < rows * cols; i++) {
        int r0 = 1 + (i / cols) * (h + 1), c0 = 1 + (i % cols) * (w + 1);
        for (y = 0; y < h; y++)
            for (x = 0; x < w; x++) {
                float v = images[(size_t)i * h * w + y * w + x];
                v = v < 0 ? 0 : v > 1 ? 1 : v;
                pix[(size_t)(r0 + y) * W + c0 + x] = (unsigned char)(255.0f * v + 0.5f);
            }
    }
    ok = stbi_write_png(path, W, H, 1, pix, W);
    free(pix);
    if (!ok) fprintf(stderr, "error: cannot write %s\n", path);
    return ok ? 0 : -1;
}

/* 32 images above their 32 reconstructions, as 4 row pairs of 8: an 8×8 grid of 28×28. */
static inline int ex_write_pairs(const char *path, const float *originals, const float *recons, int dim) {
    float *grid = (float *)malloc((size_t)64 * dim * sizeof(float));
    int i, j, rc;
    for (i = 0; i < 4; i++)
        for (j = 0; j < 8; j++) {
            memcpy(grid + (size_t)(16 * i + j) * dim, originals + (size_t)(8 * i + j) * dim, (size_t)dim * sizeof(float));
            memcpy(grid + (size_t)(16 * i + 8 + j) * dim, recons + (size_t)(8 * i + j) * dim, (size_t)dim * sizeof(float));
        }
    rc = ex_write_grid(path, grid, 64, 8, 8, 28, 28);
    free(grid);
    return rc;
}

/* A size×size scatter plot of 2-D points coloured by label (0..9). */
static inline int ex_write_scatter(const char *path, const float *xy, const int *labels, int n, int size) {
    static const unsigned char palette[10][3] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40},
                                                 {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127},
                                                 {188, 189, 34}, {23, 190, 207}};
    float lo[2] = {1e30f, 1e30f}, hi[2] = {-1e30f, -1e30f};
    unsigned char *pix = (unsigned char *)malloc((size_t)size * size * 3);
    int i, k, ok;
    memset(pix, 255, (size_t)size * size * 3);
    for (i = 0; i < n; i++)
        for (k = 0; k < 2; k++) {
            lo[k] = xy[2 * i + k] < lo[k] ? xy[2 * i + k] : lo[k];
            hi[k] = xy[2 * i + k] > hi[k] ? xy[2 * i + k] : hi[k];
        }
    for (i = 0; i < n; i++) {
        int px = (int)((xy[2 * i] - lo[0]) / (hi[0] - lo[0] + 1e-9f) * (size - 3)) + 1;
        int py = (int)((hi[1] - xy[2 * i + 1]) / (hi[1] - lo[1] + 1e-9f) * (size - 3)) + 1, dy, dx;
        for (dy = -1; dy <= 1; dy++)
            for (dx = -1; dx <= 1; dx++)
                memcpy(pix + ((size_t)(py + dy) * size + px + dx) * 3, palette[labels[i] % 10], 3);
    }
    ok = stbi_write_png(path, size, size, 3, pix, size * 3);
    free(pix);
    if (!ok) fprintf(stderr, "error: cannot write %s\n", path);
    return ok ? 0 : -1;
}
#endif
