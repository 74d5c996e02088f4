/* test_examples.c - tests of examples/common.h, the helpers the examples
   share: the flag parser, the data loader's checks, the output-path checks,
   the bitmap font, and the pictures (read back with stb_image); and of
   examples/fid.h, the Fréchet distance, against closed forms. Expected
   values come from the inputs written here: the font's own bit rows, pixel
   positions computed from the plot's geometry, hand-made IDX files.
   tests/examples_bad_input.sh runs the built examples themselves.

   Usage (from the repository root): build/test_examples [TMPDIR] */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "../examples/common.h"
#include "../examples/fid.h"
#include "test.h"
#include <stb/stb_image.h>

/* ---- stdout and stderr off while the helpers print their (expected) messages */
static int saved_fd[3] = {-1, -1, -1};
static void quiet(int on) {
    int fd, k;
    fflush(stdout);
    fflush(stderr);
    for (k = 1; k <= 2; k++) {
        if (on) {
            saved_fd[k] = dup(k);
            fd = open("/dev/null", O_WRONLY);
            dup2(fd, k);
            close(fd);
        } else {
            dup2(saved_fd[k], k);
            close(saved_fd[k]);
        }
    }
}

/* ======================================================================= */
/* flags                                                                   */
/* ======================================================================= */
static int f_int, f_on;
static float f_float;
static const char *f_str, *f_none;
static ex_flag f_table[] = {
    EX_INT_FLAG("n", &f_int, "10", -5, 100, "an integer"),
    EX_FLOAT_FLAG("f", &f_float, "1e-3", 0, 2, "a number"),
    EX_STRING_FLAG("s", &f_str, "dir/x", "a string"),
    EX_STRING_FLAG("load", &f_none, NULL, "a string without a default"),
    EX_SWITCH_FLAG("on", &f_on, "a switch"),
};

/* parses "prog" followed by the words of line (split at spaces; "_" is an empty word);
   the words stay until the next call, as string values point into them */
static int parse_line(const char *line) {
    static char buf[256];
    char *argv[32], *w;
    int argc = 1, rc;
    argv[0] = (char *)"/some/dir/prog";
    snprintf(buf, sizeof buf, "%s", line);
    for (w = strtok(buf, " "); w && argc < 31; w = strtok(NULL, " ")) argv[argc++] = strcmp(w, "_") == 0 ? w + 1 : w;
    argv[argc] = NULL;
    quiet(1);
    rc = ex_parse(argc, argv, "a test", f_table, EX_COUNT(f_table));
    quiet(0);
    return rc;
}

static void test_flags(void) {
    static const char *const refused[] = {
        "--n", "--n abc", "--n 3x", "--n 1e3", "--n 2.0", "--n 0x10", "--n 101", "--n -6", "--n 99999999999",
        "--n _", "--f nan", "--f inf", "--f -inf", "--f 1e-3x", "--f _", "--f 2.5", "--f -0.1", "--f 1e999",
        "--s _", "--s --on", "--n --on", "--bogus", "positional", "-n 3", "--N 3", "--on 1",
    };
    int i;
    CHECK(parse_line("") == -1, "no arguments: parse did not go on");
    CHECK(f_int == 10 && f_float == 1e-3f && strcmp(f_str, "dir/x") == 0 && f_none == NULL && f_on == 0,
          "defaults: %d %g '%s' %p %d", f_int, (double)f_float, f_str, (const void *)f_none, f_on);
    CHECK(!ex_given(f_table, EX_COUNT(f_table), "n"), "a flag not given counts as given");
    CHECK(parse_line("--n -5 --f 2 --s abc --on --load m.st") == -1, "valid flags refused");
    CHECK(f_int == -5 && f_float == 2.0f && strcmp(f_str, "abc") == 0 && strcmp(f_none, "m.st") == 0 && f_on == 1,
          "values: %d %g '%s' '%s' %d", f_int, (double)f_float, f_str, f_none, f_on);
    CHECK(ex_given(f_table, EX_COUNT(f_table), "n") && ex_given(f_table, EX_COUNT(f_table), "on") &&
              !ex_given(f_table, EX_COUNT(f_table), "nope"), "ex_given");
    CHECK(parse_line("--n 007 --f 1e-3 --n 100") == -1 && f_int == 100 && f_float == 1e-3f && f_on == 0,
          "repeats: the last wins; defaults come back on a new parse (%d %g %d)", f_int, (double)f_float, f_on);
    CHECK(parse_line("--f .5") == -1 && f_float == 0.5f, "--f .5");
    for (i = 0; i < (int)(sizeof refused / sizeof refused[0]); i++)
        CHECK(parse_line(refused[i]) == 2, "'%s' was not refused with status 2", refused[i]);
    CHECK(parse_line("--n 3 --help --bogus") == 0, "--help does not return 0");
    CHECK(parse_line("-h") == 0, "-h does not return 0");
}

/* ======================================================================= */
/* data loader                                                             */
/* ======================================================================= */
static void write_idx(const char *dir, const char *name, int type, int ndim, const int *dims, const void *data, size_t bytes) {
    char path[1024];
    unsigned char head[4 + 4 * 4];
    FILE *f;
    int i;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    head[0] = head[1] = 0;
    head[2] = (unsigned char)type;
    head[3] = (unsigned char)ndim;
    for (i = 0; i < ndim; i++) {
        head[4 + 4 * i] = (unsigned char)(dims[i] >> 24);
        head[5 + 4 * i] = (unsigned char)(dims[i] >> 16);
        head[6 + 4 * i] = (unsigned char)(dims[i] >> 8);
        head[7 + 4 * i] = (unsigned char)dims[i];
    }
    f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (!f) return;
    fwrite(head, 1, 4 + 4 * (size_t)ndim, f);
    fwrite(data, 1, bytes, f);
    fclose(f);
}

/* big-endian f32 */
static void be_floats(unsigned char *out, const float *v, int n) {
    int i;
    for (i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        out[4 * i] = (unsigned char)(u >> 24); out[4 * i + 1] = (unsigned char)(u >> 16);
        out[4 * i + 2] = (unsigned char)(u >> 8); out[4 * i + 3] = (unsigned char)u;
    }
}

/* A data set in dir: 3 training and 2 test images of 2x3 pixels; then one file spoilt as `spoil` says. */
static int load_case(const char *root, const char *spoil) {
    static const int img3[3] = {3, 2, 3}, img2[3] = {2, 2, 3}, lab3[1] = {3}, lab2[1] = {2};
    unsigned char pix[18], labels[3] = {0, 9, 4}, raw[72];
    char dir[1024], cmd[1100];
    ex_dataset train, test;
    int i, rc;
    snprintf(dir, sizeof dir, "%s/data_%s", root, spoil);
    for (i = 0; dir[i]; i++) if (dir[i] == ' ') dir[i] = '_';
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    if (system(cmd) != 0) { CHECK(0, "cannot create %s", dir); return -9; }
    for (i = 0; i < 18; i++) pix[i] = (unsigned char)(i * 15);
    write_idx(dir, "train-images-idx3-ubyte", 8, 3, img3, pix, 18);
    write_idx(dir, "train-labels-idx1-ubyte", 8, 1, lab3, labels, 3);
    write_idx(dir, "t10k-images-idx3-ubyte", 8, 3, img2, pix, 12);
    write_idx(dir, "t10k-labels-idx1-ubyte", 8, 1, lab2, labels, 2);
    if (strcmp(spoil, "label 10") == 0) {
        labels[1] = 10;
        write_idx(dir, "train-labels-idx1-ubyte", 8, 1, lab3, labels, 3);
    } else if (strcmp(spoil, "label 2.5") == 0 || strcmp(spoil, "label -1") == 0) {
        float v[3] = {0, 2.5f, 1};
        v[1] = spoil[6] == '-' ? -1.0f : 2.5f;
        be_floats(raw, v, 3);
        write_idx(dir, "t10k-labels-idx1-ubyte", 0x0D, 1, lab3, raw, 12); /* also 3 labels for 2 images */
        write_idx(dir, "t10k-images-idx3-ubyte", 8, 3, img3, pix, 18);
    } else if (strcmp(spoil, "pixel NaN") == 0 || strcmp(spoil, "pixel 256") == 0) {
        float v[18];
        for (i = 0; i < 18; i++) v[i] = (float)pix[i];
        v[17] = spoil[6] == 'N' ? NAN : 256.0f;
        be_floats(raw, v, 18);
        write_idx(dir, "train-images-idx3-ubyte", 0x0D, 3, img3, raw, 72);
    } else if (strcmp(spoil, "count") == 0) {
        write_idx(dir, "train-labels-idx1-ubyte", 8, 1, lab2, labels, 2);
    } else if (strcmp(spoil, "sizes") == 0) {
        static const int img2t[3] = {2, 3, 2};
        write_idx(dir, "t10k-images-idx3-ubyte", 8, 3, img2t, pix, 12);
    } else if (strcmp(spoil, "labels 2-D") == 0) {
        static const int lab2d[2] = {3, 1};
        write_idx(dir, "train-labels-idx1-ubyte", 8, 2, lab2d, labels, 3);
    } else if (strcmp(spoil, "images 2-D") == 0) {
        static const int img2d[2] = {3, 6};
        write_idx(dir, "train-images-idx3-ubyte", 8, 2, img2d, pix, 18);
    } else if (strcmp(spoil, "missing") == 0) {
        snprintf(cmd, sizeof cmd, "%s/t10k-labels-idx1-ubyte", dir);
        remove(cmd);
    }
    quiet(1);
    rc = ex_load_fashion(dir, &train, &test);
    quiet(0);
    if (rc == 0) {
        int ok = train.n == 3 && train.h == 2 && train.w == 3 && train.dim == 6 && test.n == 2 && test.dim == 6;
        for (i = 0; ok && i < 18; i++) ok = train.x[i] == (float)(i * 15) / 255.0f;
        for (i = 0; ok && i < 3; i++) ok = train.y[i] == labels[i];
        CHECK(ok, "the good data set loaded wrong");
        ex_dataset_free(&train);
        ex_dataset_free(&test);
    } else {
        CHECK(train.x == NULL && train.y == NULL && test.x == NULL && test.y == NULL, "%s: a refused data set left buffers", spoil);
    }
    return rc;
}

static void test_loader(const char *tmp) {
    static const char *const spoilt[] = {"label 10", "label 2.5", "label -1", "pixel NaN", "pixel 256", "count",
                                         "sizes", "labels 2-D", "images 2-D", "missing"};
    ex_dataset d;
    char dir[1024];
    int i;
    CHECK(load_case(tmp, "none") == 0, "a good data set was refused");
    for (i = 0; i < (int)(sizeof spoilt / sizeof spoilt[0]); i++)
        CHECK(load_case(tmp, spoilt[i]) == -1, "data set with %s was not refused", spoilt[i]);
    /* a missing file is told apart (the examples then explain how to get the data) */
    snprintf(dir, sizeof dir, "%s/data_missing", tmp);
    quiet(1);
    CHECK(ex_load_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", &d) == 1, "a missing file is not told apart");
    quiet(0);
}

/* ======================================================================= */
/* output paths                                                            */
/* ======================================================================= */
static int count_entries(const char *dir) {
    char cmd[1100];
    FILE *p;
    int n = -1;
    snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
    if ((p = popen(cmd, "r"))) {
        if (fscanf(p, "%d", &n) != 1) n = -1;
        pclose(p);
    }
    return n;
}

static void test_out_paths(const char *tmp) {
    char dir[1024], path[1100];
    struct stat st;
    FILE *f;
    int rc;
    snprintf(dir, sizeof dir, "%s/out/a/b", tmp);
    CHECK(ex_out_dir(dir) == 0 && stat(dir, &st) == 0 && S_ISDIR(st.st_mode), "ex_out_dir did not make %s", dir);
    CHECK(count_entries(dir) == 0, "ex_out_dir left its probe file behind");
    CHECK(ex_out_dir(dir) == 0, "ex_out_dir refuses an existing directory");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(ex_out_file(path) == 0 && count_entries(dir) == 0, "ex_out_file refuses a writable path or leaves a file");
    snprintf(path, sizeof path, "%s/plain", tmp);
    f = fopen(path, "w");
    if (f) fclose(f);
    quiet(1);
    snprintf(dir, sizeof dir, "%s/plain/sub", tmp);
    rc = ex_out_dir(dir);
    CHECK(rc == -1, "ex_out_dir under a regular file: %d", rc);
    rc = ex_out_dir(path);
    CHECK(rc == -1, "ex_out_dir on a regular file: %d", rc);
    snprintf(dir, sizeof dir, "%s/plain/m.safetensors", tmp);
    rc = ex_out_file(dir);
    CHECK(rc == -1, "ex_out_file under a regular file: %d", rc);
    rc = ex_out_file(tmp);
    CHECK(rc == -1, "ex_out_file on a directory: %d", rc);
    rc = ex_out_file("/no/such/dir/m.safetensors");
    CHECK(rc == -1, "ex_out_file in a missing directory: %d", rc);
    quiet(0);
}

/* ======================================================================= */
/* font                                                                    */
/* ======================================================================= */
static const unsigned char white[3] = {255, 255, 255};

static int glyph_bit(int glyph, int row, int col) { return ex_font[glyph][row] >> (EX_GLYPH_W - 1 - col) & 1; }

static void test_font(void) {
    enum { W = 40, H = 30 };
    unsigned char *canvas = (unsigned char *)malloc(W * H * 3), *crop;
    int ch, g, h, x, y, scale, bad, same;
    /* the table: each printable glyph differs from all others, only the space is empty */
    for (g = 0; g < 96; g++) {
        int bits = 0;
        for (y = 0; y < EX_GLYPH_H; y++) bits += ex_font[g][y] != 0 && (ex_font[g][y] >> EX_GLYPH_W) == 0;
        CHECK(g == 0 ? bits == 0 : bits > 0, "glyph %d: %d rows set (or bits beyond the 5 columns)", g, bits);
        for (h = 0; h < g; h++)
            CHECK(memcmp(ex_font[g], ex_font[h], EX_GLYPH_H) != 0, "glyphs of '%c' and '%c' are the same", 32 + g, 32 + h);
    }
    /* every character at scales 1 and 3: exactly its bits, nothing else, and the advance */
    for (scale = 1; scale <= 3; scale += 2)
        for (ch = 32; ch < 128; ch++) {
            char text[2];
            text[0] = (char)ch;
            text[1] = 0;
            memset(canvas, 0, W * H * 3);
            x = ex_draw_text(canvas, W, H, 2, 3, text, white, scale);
            bad = x != 2 + EX_ADVANCE * scale;
            for (y = 0; y < H; y++)
                for (h = 0; h < W; h++) {
                    int gx = (h - 2) / scale, gy = (y - 3) / scale, inside = h >= 2 && y >= 3 && gx < EX_GLYPH_W && gy < EX_GLYPH_H;
                    int want = inside && glyph_bit(ch == 127 ? 95 : ch - 32, gy, gx) ? 255 : 0;
                    bad += canvas[(y * W + h) * 3] != want || canvas[(y * W + h) * 3 + 2] != want;
                }
            CHECK(!bad, "character %d at scale %d: %d pixels wrong", ch, scale, bad);
        }
    /* anything but printable ASCII is one box per character; a UTF-8 sequence is one character */
    CHECK(ex_text_width("ab", 1) == 11 && ex_text_width("ab", 2) == 22 && ex_text_width("", 3) == 0, "ex_text_width");
    CHECK(ex_text_width("\xc3\xa9", 1) == 5 && ex_text_width("a\xe2\x86\x92z\t", 1) == 23, "ex_text_width of UTF-8");
    crop = (unsigned char *)malloc(W * H * 3);
    memset(canvas, 0, W * H * 3);
    memset(crop, 0, W * H * 3);
    ex_draw_text(canvas, W, H, 0, 0, "\xe2\x86\x92" "b\x01", white, 1);
    ex_draw_text(crop, W, H, 0, 0, "\x7f" "b\x7f", white, 1); /* DEL is not printable either: a box */
    CHECK(memcmp(canvas, crop, W * H * 3) == 0, "a 3-byte UTF-8 character and a control character are not boxes");
    /* clipping: a window onto a bigger canvas gets the same pixels, and nothing outside it is written */
    {
        enum { SW = 13, SH = 9, OX = 7, OY = 4 };
        unsigned char *small = (unsigned char *)malloc(SW * SH * 3 + 64);
        memset(canvas, 0, W * H * 3);
        memset(small, 0, SW * SH * 3);
        memset(small + SW * SH * 3, 0xAB, 64);
        ex_draw_text(canvas, W, H, 3, 2, "Q#9~", white, 2);
        ex_draw_text(small, SW, SH, 3 - OX, 2 - OY, "Q#9~", white, 2);
        ex_draw_text(small, SW, SH, -1000, 500, "far away", white, 4);
        same = 1;
        for (y = 0; y < SH; y++)
            for (x = 0; x < SW; x++) same &= memcmp(small + (y * SW + x) * 3, canvas + ((y + OY) * W + x + OX) * 3, 3) == 0;
        CHECK(same, "clipped text differs from the same window of unclipped text");
        for (x = 0; x < 64; x++) same &= small[SW * SH * 3 + x] == 0xAB;
        CHECK(same, "clipped text wrote past the canvas");
        free(small);
    }
    free(crop);
    free(canvas);
}

/* ======================================================================= */
/* pictures                                                                */
/* ======================================================================= */
static unsigned char *read_png(const char *path, int *w, int *h, int channels) {
    int n;
    unsigned char *p = stbi_load(path, w, h, &n, channels);
    CHECK(p != NULL, "cannot read back %s", path);
    return p;
}

static void test_grid_and_pairs(const char *tmp) {
    enum { IH = 14, IW = 14 };
    float img[40 * IH * IW], rec[40 * IH * IW];
    char path[1100];
    unsigned char *p;
    int w, h, i, y, x, bad = 0;
    for (i = 0; i < 40 * IH * IW; i++) {
        img[i] = (float)((i * 37) % 256) / 255.0f;
        rec[i] = 1.0f - img[i];
    }
    img[5] = NAN;
    img[6] = 7.0f;
    img[7] = -1.0f;
    snprintf(path, sizeof path, "%s/grid.png", tmp);
    CHECK(ex_write_grid(path, img, 3, 2, 2, IH, IW) == 0, "ex_write_grid 14x14");
    if ((p = read_png(path, &w, &h, 1))) {
        CHECK(w == 2 * (IW + 1) + 1 && h == 2 * (IH + 1) + 1, "grid of 14x14 images is %dx%d, want 31x31", w, h);
        for (i = 0; i < 4; i++)
            for (y = -1; y <= IH; y++)
                for (x = -1; x <= IW; x++) {
                    int r = 1 + (i / 2) * (IH + 1) + y, c = 1 + (i % 2) * (IW + 1) + x, want = 0;
                    float v = i < 3 && y >= 0 && x >= 0 && y < IH && x < IW ? img[(i * IH + y) * IW + x] : 0.0f;
                    want = v > 0 ? (int)(255.0f * (v < 1 ? v : 1) + 0.5f) : 0;
                    bad += p[r * w + c] != want;
                }
        CHECK(!bad, "grid: %d pixels differ from the images (gaps, empty cell, clamping)", bad);
        stbi_image_free(p);
    }
    /* pairs: n originals with their reconstructions a row below, 8 to a row, at most 32 */
    {
        static const int ns[4] = {1, 5, 9, 40};
        int k;
        for (k = 0; k < 4; k++) {
            int n = ns[k] < 32 ? ns[k] : 32, cols = n < 8 ? n : 8, rows = 2 * ((n + 7) / 8);
            snprintf(path, sizeof path, "%s/pairs%d.png", tmp, ns[k]);
            CHECK(ex_write_pairs(path, img, rec, ns[k], IH, IW) == 0, "ex_write_pairs n=%d", ns[k]);
            if (!(p = read_png(path, &w, &h, 1))) continue;
            CHECK(w == cols * (IW + 1) + 1 && h == rows * (IH + 1) + 1, "pairs n=%d: %dx%d", ns[k], w, h);
            bad = 0;
            for (i = 0; w == cols * (IW + 1) + 1 && i < n; i++) {
                int r0 = 1 + 2 * (i / 8) * (IH + 1), c0 = 1 + (i % 8) * (IW + 1);
                for (y = 0; y < IH; y++)
                    for (x = 8; x < IW; x++) { /* past the hand-set pixels 5..7 */
                        float v = img[(i * IH + y) * IW + x], u = rec[(i * IH + y) * IW + x];
                        bad += p[(r0 + y) * w + c0 + x] != (int)(255.0f * v + 0.5f);
                        bad += p[(r0 + IH + 1 + y) * w + c0 + x] != (int)(255.0f * u + 0.5f);
                    }
            }
            CHECK(!bad, "pairs n=%d: %d pixels misplaced", ns[k], bad);
            stbi_image_free(p);
        }
    }
}

static void test_scatter(const char *tmp) {
    enum { S = 64 };
    /* three finite points span the plot: x 0..10, y 0..5; the rest are not finite */
    float xy[2 * 7] = {0, 0, 10, 5, 5, 2.5f, NAN, 1, INFINITY, 0, 1, -INFINITY, NAN, NAN};
    int labels[7] = {1, 2, 13, 4, 5, 6, 7}, w, h, x, y, i, colored = 0, hits[3] = {0, 0, 0};
    char path[1100];
    unsigned char *p;
    static const unsigned char pal[10][3] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40},
                                             {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127},
                                             {188, 189, 34}, {23, 190, 207}};
    const int at[3][2] = {{0, S - 3}, {S - 3, 0}, {(int)(0.5 * (S - 3)), (int)(0.5 * (S - 3))}}, color[3] = {1, 2, 3};
    snprintf(path, sizeof path, "%s/scatter.png", tmp);
    quiet(1);
    i = ex_write_scatter(path, xy, labels, 7, S, ex_class_names);
    quiet(0);
    CHECK(i == 0, "ex_write_scatter with NaN and infinite points failed");
    if (!(p = read_png(path, &w, &h, 3))) return;
    /* the legend is ten lines of 24 pixels, taller than this plot */
    CHECK(h == 10 * 24 + 12 && w > S + ex_text_width("T-shirt/top", 2), "scatter with legend is %dx%d", w, h);
    for (y = 0; y < h; y++)
        for (x = 0; x < S; x++) {
            const unsigned char *q = p + (y * w + x) * 3;
            if (q[0] == 255 && q[1] == 255 && q[2] == 255) continue;
            colored++;
            for (i = 0; i < 3; i++)
                hits[i] += x >= at[i][0] && x < at[i][0] + 3 && y >= at[i][1] && y < at[i][1] + 3 && memcmp(q, pal[color[i]], 3) == 0;
        }
    CHECK(colored == 27 && hits[0] == 9 && hits[1] == 9 && hits[2] == 9,
          "scatter: %d coloured pixels (want 27), 3x3 dots at the corners and the middle: %d %d %d", colored, hits[0], hits[1], hits[2]);
    /* the legend: each class's swatch, then its name in its colour */
    for (i = 0; i < 10; i++) {
        int y0 = 12 + 24 * i, text = 0;
        CHECK(memcmp(p + ((y0 + 7) * w + S + 19) * 3, pal[i], 3) == 0, "legend swatch %d", i);
        for (y = y0; y < y0 + 14; y++)
            for (x = S + 36; x < w; x++) text += memcmp(p + (y * w + x) * 3, pal[i], 3) == 0;
        CHECK(text > 50, "legend name of class %d: %d pixels in its colour", i, text);
    }
    stbi_image_free(p);
    /* all points not finite, no legend: a white square */
    quiet(1);
    i = ex_write_scatter(path, xy + 6, labels, 4, S, NULL);
    quiet(0);
    CHECK(i == 0, "ex_write_scatter with no finite point failed");
    if ((p = read_png(path, &w, &h, 3))) {
        for (i = 0, colored = 0; i < w * h * 3; i++) colored += p[i] != 255;
        CHECK(w == S && h == S && colored == 0, "scatter of nothing drawable: %dx%d, %d non-white values", w, h, colored);
        stbi_image_free(p);
    }
}

/* ======================================================================= */
/* the Fréchet distance (examples/fid.h)                                   */
/* ======================================================================= */
/* q: a random n x n rotation (Gram-Schmidt on Gaussian columns) */
static void random_rotation(double *q, int n, av_rng *rng) {
    int i, j, k;
    for (i = 0; i < n * n; i++) q[i] = av_rng_normal(rng);
    for (j = 0; j < n; j++) {
        double norm = 0;
        for (k = 0; k < j; k++) {
            double dot = 0;
            for (i = 0; i < n; i++) dot += q[i * n + j] * q[i * n + k];
            for (i = 0; i < n; i++) q[i * n + j] -= dot * q[i * n + k];
        }
        for (i = 0; i < n; i++) norm += q[i * n + j] * q[i * n + j];
        for (i = 0; i < n; i++) q[i * n + j] /= sqrt(norm);
    }
}

/* s = q diag(d) q^T */
static void rotate_diagonal(double *s, const double *q, const double *d, int n) {
    int i, j, k;
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) {
            double r = 0;
            for (k = 0; k < n; k++) r += q[i * n + k] * d[k] * q[j * n + k];
            s[i * n + j] = r;
        }
}

static void test_fid(void) {
    enum { N = 24 };
    static double q[N * N], s1[N * N], s2[N * N], a[N * N], vec[N * N];
    double d1[N], d2[N], mu1[N], mu2[N], values[N], want, err;
    float rows[4 * 2] = {1, 2, 3, 2, 5, 6, 7, 10};
    av_rng rng;
    int i, j, k;
    av_rng_seed(&rng, 7);

    /* eigendecomposition: a = V diag(values) V^T with V orthonormal, for a
       matrix with known eigenvalues (two of them equal) */
    random_rotation(q, N, &rng);
    for (i = 0; i < N; i++) d1[i] = i == 3 ? 5.0 : 0.5 * i - 2;
    rotate_diagonal(s1, q, d1, N);
    memcpy(a, s1, sizeof s1);
    ex_sym_eigen(a, N, values, vec);
    for (i = 0, err = 0; i < N; i++) { /* each known eigenvalue is found once, in some order */
        double best = 1e300;
        for (j = 0; j < N; j++) best = fabs(values[j] - d1[i]) < best ? fabs(values[j] - d1[i]) : best;
        err = best > err ? best : err;
    }
    CHECK(err < 1e-10, "ex_sym_eigen: an eigenvalue is %.3g away from the nearest one found", err);
    for (i = 0, err = 0; i < N; i++)
        for (j = 0; j < N; j++) {
            double back = 0, dot = 0;
            for (k = 0; k < N; k++) {
                back += vec[i * N + k] * values[k] * vec[j * N + k];
                dot += vec[k * N + i] * vec[k * N + j];
            }
            err = fmax(err, fmax(fabs(back - s1[i * N + j]), fabs(dot - (i == j))));
        }
    CHECK(err < 1e-10, "ex_sym_eigen: V diag V^T or V^T V is %.3g off", err);

    /* diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2 */
    memset(s1, 0, sizeof s1);
    memset(s2, 0, sizeof s2);
    for (i = 0, want = 0; i < N; i++) {
        mu1[i] = av_rng_normal(&rng);
        mu2[i] = av_rng_normal(&rng);
        s1[i * N + i] = d1[i] = 0.1 + av_rng_uniform(&rng);
        s2[i * N + i] = d2[i] = i == 5 ? 0 : 0.1 + 3 * av_rng_uniform(&rng); /* one zero variance */
        want += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]) + (sqrt(d1[i]) - sqrt(d2[i])) * (sqrt(d1[i]) - sqrt(d2[i]));
    }
    CHECK_CLOSE(ex_frechet_distance(mu1, s1, mu2, s2, N), want, 1e-10, 1e-12, "Fréchet distance, diagonal covariances");

    /* covariances that commute (the same eigenvectors): tr sqrt(s1 s2) = sum
       sqrt(a_i b_i). b_5 = 0 comes out as a rounding error e ~ 1e-16 |S|, and
       sqrt(e) ~ 1e-8 is all the error allowed. */
    rotate_diagonal(s1, q, d1, N);
    rotate_diagonal(s2, q, d2, N);
    for (i = 0, want = 0; i < N; i++) want += sqrt(d1[i] * d2[i]);
    CHECK_CLOSE(ex_trace_sqrt_product(s1, s2, N), want, 1e-7, 0, "tr sqrt(S1 S2), commuting S1 and S2");

    /* 2 x 2 that do not commute: sqrt(M) of a 2 x 2 M with positive eigenvalues
       has trace sqrt(tr M + 2 sqrt(det M)), and det(S1 S2) = det S1 det S2 */
    {
        double p1[4] = {2.0, 0.7, 0.7, 1.0}, p2[4] = {0.5, -0.3, -0.3, 3.0};
        double tr12 = p1[0] * p2[0] + p1[1] * p2[2] + p1[2] * p2[1] + p1[3] * p2[3];
        double det = (p1[0] * p1[3] - p1[1] * p1[2]) * (p2[0] * p2[3] - p2[1] * p2[2]);
        CHECK_CLOSE(ex_trace_sqrt_product(p1, p2, 2), sqrt(tr12 + 2 * sqrt(det)), 1e-12, 1e-12,
                    "tr sqrt(S1 S2), 2 x 2, not commuting");
    }

    /* a set against itself is at distance 0 */
    rotate_diagonal(s1, q, d1, N);
    CHECK_CLOSE(ex_frechet_distance(mu1, s1, mu1, s1, N), 0, 1e-9, 0, "Fréchet distance of a Gaussian to itself");

    /* moments of 4 rows of 2 features, by hand: mean (4, 5), covariance
       [[20, 28], [28, 44]] / 3 (divided by n - 1) */
    ex_feature_stats(rows, 4, 2, mu1, s1);
    CHECK_CLOSE(mu1[0], 4, 1e-12, 0, "feature mean 0");
    CHECK_CLOSE(mu1[1], 5, 1e-12, 0, "feature mean 1");
    CHECK_CLOSE(s1[0], 20.0 / 3, 1e-12, 0, "feature covariance 0 0");
    CHECK_CLOSE(s1[1], 28.0 / 3, 1e-12, 0, "feature covariance 0 1");
    CHECK_CLOSE(s1[2], 28.0 / 3, 1e-12, 0, "feature covariance 1 0");
    CHECK_CLOSE(s1[3], 44.0 / 3, 1e-12, 0, "feature covariance 1 1");
}

int main(int argc, char **argv) {
    const char *tmp = argc > 1 ? argv[1] : "build/examples_tmp";
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", tmp, tmp);
    if (system(cmd) != 0) { printf("cannot create %s\n", tmp); return 1; }
    test_flags();
    test_loader(tmp);
    test_out_paths(tmp);
    test_font();
    test_grid_and_pairs(tmp);
    test_scatter(tmp);
    test_fid();
    return t_summary();
}
