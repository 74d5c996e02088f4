/* Helpers shared by the examples: flags, a progress bar, timing, output
   checks, the Fashion-MNIST loader, a bitmap font and PNG pictures.
   Example-only code; the library does not need it.

   Exit status of every example: 0 the run finished (and printed its
   "summary: {...}" line), 1 the run failed (data missing or bad, output not
   writable, a model file that does not fit, a loss that is not finite),
   2 the command line is wrong. A failed run prints no summary line. */
#ifndef AV_EXAMPLES_COMMON_H
#define AV_EXAMPLES_COMMON_H
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../attnvae.h"

/* ---- flags ---------------------------------------------------------------
   One table per example. "--name value" sets a number or a string, "--name"
   alone a switch. A value must be whole ("1e-3x" is refused) and inside the
   flag's range; NaN and infinities never are. ex_parse sets the defaults,
   reads argv, prints the table for --help, and explains any mistake. */
enum { EX_INT, EX_FLOAT, EX_STRING, EX_SWITCH };
typedef struct ex_flag {
    const char *name;   /* without the leading "--" */
    int type;
    void *value;        /* int *, float *, const char ** or (a switch) int * */
    const char *def;    /* the default as it would be typed; NULL for a switch */
    double lo, hi;      /* the accepted range of a number, inclusive */
    const char *help;
    int given;          /* set by ex_parse: the flag was on the command line */
} ex_flag;
/* Table rows; the conditional expression makes the compiler check the pointer's type. */
#define EX_INT_FLAG(name, ptr, def, lo, hi, help) {name, EX_INT, (void *)(1 ? (ptr) : (int *)0), def, lo, hi, help, 0}
#define EX_FLOAT_FLAG(name, ptr, def, lo, hi, help) {name, EX_FLOAT, (void *)(1 ? (ptr) : (float *)0), def, lo, hi, help, 0}
#define EX_STRING_FLAG(name, ptr, def, help) {name, EX_STRING, (void *)(1 ? (ptr) : (const char **)0), def, 0, 0, help, 0}
#define EX_SWITCH_FLAG(name, ptr, help) {name, EX_SWITCH, (void *)(1 ? (ptr) : (int *)0), NULL, 0, 0, help, 0}
#define EX_COUNT(table) ((int)(sizeof(table) / sizeof((table)[0])))

static inline const char *ex__program(const char *argv0) {
    const char *slash = strrchr(argv0, '/');
    return slash ? slash + 1 : argv0;
}

/* Stores text as f's value; 0, or -1 after saying what is wrong. */
static inline int ex__set(const char *prog, ex_flag *f, const char *text) {
    char *end;
    double v;
    if (f->type == EX_STRING) {
        if (!*text) { fprintf(stderr, "%s: --%s: empty value\n", prog, f->name); return -1; }
        *(const char **)f->value = text;
        return 0;
    }
    errno = 0;
    v = f->type == EX_INT ? (double)strtol(text, &end, 10) : strtod(text, &end);
    if (end == text || *end || isspace((unsigned char)*text)) {
        fprintf(stderr, "%s: --%s: '%s' is not %s\n", prog, f->name, text, f->type == EX_INT ? "an integer" : "a number");
        return -1;
    }
    if (errno == ERANGE || !(v >= f->lo && v <= f->hi)) { /* also refuses NaN */
        fprintf(stderr, "%s: --%s: %s is out of range (%.10g to %.10g)\n", prog, f->name, text, f->lo, f->hi);
        return -1;
    }
    if (f->type == EX_INT) *(int *)f->value = (int)v;
    else *(float *)f->value = (float)v;
    return 0;
}

static inline void ex__usage(const char *prog, const char *about, const ex_flag *flags, int n) {
    static const char *const metavar[] = {" N", " X", " STR", ""};
    int i;
    printf("usage: %s [flags]\n%s\n\nflags:\n", prog, about);
    for (i = 0; i < n; i++) {
        const ex_flag *f = &flags[i];
        char left[64];
        snprintf(left, sizeof left, "--%s%s", f->name, metavar[f->type]);
        printf("  %-20s %s", left, f->help);
        if (f->type == EX_INT || f->type == EX_FLOAT) printf(" (default %s; %.10g to %.10g)\n", f->def, f->lo, f->hi);
        else if (f->type == EX_STRING) printf(" (default %s)\n", f->def ? f->def : "none");
        else printf("\n");
    }
    printf("  %-20s %s\n\nexit status: 0 done, 1 the run failed, 2 a bad command line\n", "--help", "this text");
}

/* Returns -1 to go on, else the status to exit with: 0 after --help, 2
   after a mistake (the message names the flag). */
static inline int ex_parse(int argc, char **argv, const char *about, ex_flag *flags, int n) {
    const char *prog = ex__program(argc > 0 ? argv[0] : "example");
    int i, k;
    for (k = 0; k < n; k++) {
        flags[k].given = 0;
        if (flags[k].type == EX_SWITCH) *(int *)flags[k].value = 0;
        else if (flags[k].type == EX_STRING && !flags[k].def) *(const char **)flags[k].value = NULL;
        else if (ex__set(prog, &flags[k], flags[k].def)) return 2; /* a bad table */
    }
    for (i = 1; i < argc; i++) {
        const char *arg = argv[i];
        ex_flag *f = NULL;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            ex__usage(prog, about, flags, n);
            return 0;
        }
        for (k = 0; k < n && !f; k++)
            if (arg[0] == '-' && arg[1] == '-' && strcmp(arg + 2, flags[k].name) == 0) f = &flags[k];
        if (!f) {
            fprintf(stderr, "%s: unknown %s '%s' (try --help)\n", prog, arg[0] == '-' ? "flag" : "argument", arg);
            return 2;
        }
        f->given = 1;
        if (f->type == EX_SWITCH) {
            *(int *)f->value = 1;
        } else if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0) {
            fprintf(stderr, "%s: --%s needs a value (try --help)\n", prog, f->name);
            return 2;
        } else if (ex__set(prog, f, argv[++i])) {
            return 2;
        }
    }
    return -1;
}

/* Whether the flag called name was on the command line. */
static inline int ex_given(const ex_flag *flags, int n, const char *name) {
    int k;
    for (k = 0; k < n; k++)
        if (strcmp(flags[k].name, name) == 0) return flags[k].given;
    return 0;
}

/* ---- time and progress -------------------------------------------------- */
static inline double ex_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int ex__quiet; /* ranks other than 0 of an --mpi run draw no bars */

/* A one-line bar on stderr, redrawn in place on a terminal; in logs only
   the finished line is printed, so CI output stays short. */
static inline void ex_progress(const char *label, int done, int total, const char *info) {
    int width = 30, filled = total ? (int)((long)width * done / total) : width, i;
    int tty = isatty(2);
    if (ex__quiet || (!tty && done < total)) return;
    fprintf(stderr, "%s%-10s [", tty ? "\r" : "", label);
    for (i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %3d%% %s", total ? (int)(100L * done / total) : 100, info ? info : "");
    if (done >= total) fputc('\n', stderr);
    fflush(stderr);
}

/* ---- output paths, checked before any training -------------------------- */
/* Whether a new file can be made in dir: makes one and removes it. */
static inline int ex__dir_takes_files(const char *dir) {
    char probe[1100];
    int fd;
    snprintf(probe, sizeof probe, "%s/.ex_probe_%ld", dir, (long)getpid());
    if ((fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0600)) < 0) return 0;
    close(fd);
    unlink(probe);
    return 1;
}

/* mkdir -p dir, then checks that files can be written in it. */
static inline int ex_out_dir(const char *dir) {
    char buf[1024];
    size_t i, len = strlen(dir);
    struct stat st;
    if (len == 0 || len >= sizeof buf) {
        fprintf(stderr, "error: output directory '%s': empty or too long a name\n", dir);
        return -1;
    }
    memcpy(buf, dir, len + 1);
    for (i = 1; i <= len; i++)
        if (buf[i] == '/' || buf[i] == 0) {
            char keep = buf[i];
            buf[i] = 0;
            if (stat(buf, &st) != 0 && mkdir(buf, 0755) != 0) {
                fprintf(stderr, "error: cannot create directory %s: %s\n", buf, strerror(errno));
                return -1;
            }
            buf[i] = keep;
        }
    errno = 0;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || !ex__dir_takes_files(dir)) {
        fprintf(stderr, "error: cannot write files in %s: %s\n", dir, errno ? strerror(errno) : "not a directory");
        return -1;
    }
    return 0;
}

/* Checks that the file path can be written (a save makes a new file in its directory, then renames it). */
static inline int ex_out_file(const char *path) {
    char dir[1024] = ".";
    const char *slash = strrchr(path, '/');
    struct stat st;
    if (slash) { /* "name" is in ".", "/name" in "/" */
        size_t len = slash == path ? 1 : (size_t)(slash - path);
        if (len >= sizeof dir) {
            fprintf(stderr, "error: cannot write %s: too long a name\n", path);
            return -1;
        }
        memcpy(dir, path, len);
        dir[len] = 0;
    }
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        fprintf(stderr, "error: cannot write %s: it is a directory\n", path);
        return -1;
    }
    errno = 0;
    if (!ex__dir_takes_files(dir)) {
        fprintf(stderr, "error: cannot write %s: %s\n", path, errno ? strerror(errno) : "directory not writable");
        return -1;
    }
    return 0;
}

/* ---- Fashion-MNIST ---------------------------------------------------------- */
#define EX_CLASSES 10
static const char *const ex_class_names[EX_CLASSES] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};

/* n images of h x w pixels as floats in [0, 1] (dim = h w each), labels 0..EX_CLASSES-1 */
typedef struct ex_dataset { int n, h, w, dim; float *x; int *y; } ex_dataset;

static inline void ex_dataset_free(ex_dataset *d) {
    free(d->x);
    free(d->y);
    memset(d, 0, sizeof *d);
}

/* Loads and checks one split: 0, 1 when a file cannot be read (missing), -1 when the data are bad. */
static inline int ex_load_split(const char *dir, const char *images, const char *labels, ex_dataset *out) {
    char ipath[1024], lpath[1024], why[2300] = "";
    av_idx xi, yi;
    int64_t i;
    int rc;
    memset(out, 0, sizeof *out);
    memset(&yi, 0, sizeof yi);
    snprintf(ipath, sizeof ipath, "%s/%s", dir, images);
    snprintf(lpath, sizeof lpath, "%s/%s", dir, labels);
    if ((rc = av_idx_load(ipath, &xi)) != 0 || (rc = av_idx_load(lpath, &yi)) != 0) {
        fprintf(stderr, "error: %s\n", av_error());
        av_idx_free(&xi);
        return rc == AV_ERR_IO ? 1 : -1;
    }
    if (xi.ndim != 3 || yi.ndim != 1 || xi.dims[0] != yi.dims[0])
        snprintf(why, sizeof why, "%s: %s (%d dimensions, %d items) and %s (%d dimensions, %d items) do not match: "
                 "images are [n, rows, cols], labels [n]", dir, images, xi.ndim, xi.dims[0], labels, yi.ndim, yi.dims[0]);
    for (i = 0; !why[0] && i < xi.count; i++)
        if (!(xi.data[i] >= 0 && xi.data[i] <= 255))
            snprintf(why, sizeof why, "%s: pixel %lld is %g, not in 0..255", ipath, (long long)i, (double)xi.data[i]);
    for (i = 0; !why[0] && i < yi.count; i++)
        if (!(yi.data[i] >= 0 && yi.data[i] < EX_CLASSES && yi.data[i] == (int)yi.data[i]))
            snprintf(why, sizeof why, "%s: label %lld is %g, not a class 0..%d", lpath, (long long)i, (double)yi.data[i],
                     EX_CLASSES - 1);
    if (!why[0] && !(out->y = (int *)malloc((size_t)yi.count * sizeof(int))))
        snprintf(why, sizeof why, "%s: out of memory", lpath);
    if (why[0]) {
        fprintf(stderr, "error: %s\n", why);
        av_idx_free(&xi);
        av_idx_free(&yi);
        free(out->y);
        out->y = NULL;
        return -1;
    }
    out->n = xi.dims[0];
    out->h = xi.dims[1];
    out->w = xi.dims[2];
    out->dim = out->h * out->w;
    out->x = xi.data; /* takes over the float buffer */
    for (i = 0; i < xi.count; i++) out->x[i] /= 255.0f;
    for (i = 0; i < out->n; i++) out->y[i] = (int)yi.data[i];
    av_idx_free(&yi);
    return 0;
}

/* Loads the four uncompressed IDX files from dir, or explains how to get them. */
static inline int ex_load_fashion(const char *dir, ex_dataset *train, ex_dataset *test) {
    int rc = ex_load_split(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", train);
    memset(test, 0, sizeof *test);
    if (rc == 0 && (rc = ex_load_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", test)) == 0) {
        if (train->h == test->h && train->w == test->w) return 0;
        fprintf(stderr, "error: %s: training images are %dx%d but test images %dx%d\n", dir, train->h, train->w, test->h,
                test->w);
    }
    if (rc > 0)
        fprintf(stderr, "  Get Fashion-MNIST with:  make data   (installs Debian's dataset-fashion-mnist if needed\n"
                        "  and unpacks it into data/fashion), or pass --data DIR with the four uncompressed IDX files.\n");
    ex_dataset_free(train);
    ex_dataset_free(test);
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

/* Copies the rows order[start..start+count) (or start..start+count) into a batch buffer. */
static inline void ex_gather(const ex_dataset *d, const int *order, int start, int count, float *x, int *y) {
    int i;
    for (i = 0; i < count; i++) {
        int r = order ? order[start + i] : start + i;
        memcpy(x + (size_t)i * d->dim, d->x + (size_t)r * d->dim, (size_t)d->dim * sizeof(float));
        if (y) y[i] = d->y[r];
    }
}

/* ---- data parallel: --mpi ----------------------------------------------------
   Built with ATTNVAE_MPI (the Makefile builds vae_fashion and charlm so),
   an example run as "mpirun -np R example --mpi" trains on R ranks: each takes its
   part of every global batch of R x --batch examples (av_sampler) and the
   library's av_mpi averages the gradients, so it trains what one process
   would with --batch R x batch. Rank 0 alone prints, draws and writes
   files. Without --mpi, or built without MPI, the same calls run one
   process and never touch MPI. An example adopts --mpi with: a switch flag;
   ex_dp_start after ex_parse; ex_dp_all_ok after loading its data;
   ex_dp_attach once the model exists; an av_sampler on dp.rank, dp.size;
   ex_dp_backward for av_backward; ex_dp_sum for printed totals;
   ex_dp_save / ex_dp_load, and dp.rank == 0 around other writes;
   ex_dp_abort on a failure one rank alone may see; ex_dp_stop at the end;
   and its name in the Makefile's MPI_EXAMPLES. */
typedef struct ex_dp {
    int rank, size, on; /* on: MPI is running (--mpi) */
#ifdef ATTNVAE_MPI
    av_mpi *mpi;        /* the model's, from ex_dp_attach */
#endif
} ex_dp;

/* Starts MPI for --mpi: 0, or 2 (a bad command line) in a build without MPI. */
static inline int ex_dp_start(ex_dp *dp, int use_mpi, int *argc, char ***argv) {
    memset(dp, 0, sizeof *dp);
    dp->size = 1;
    if (!use_mpi) return 0;
#ifdef ATTNVAE_MPI
    {
        int provided, null_fd;
        MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided); /* OpenMP threads make no MPI calls */
        MPI_Comm_rank(MPI_COMM_WORLD, &dp->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &dp->size);
        dp->on = 1;
        if (dp->rank > 0 && (null_fd = open("/dev/null", O_WRONLY)) >= 0) { /* rank 0 speaks for all */
            fflush(stdout);
            dup2(null_fd, 1);
            close(null_fd);
            ex__quiet = 1;
        }
        return 0;
    }
#else
    (void)argc;
    fprintf(stderr, "%s: --mpi: built without MPI (build with -DATTNVAE_MPI and mpicc, as the Makefile does)\n",
            ex__program((*argv)[0]));
    return 2;
#endif
}

/* Whether every rank is fine (ok on this one); a rank that is not has said
   why, and rank 0 names the first such for the others. */
static inline int ex_dp_all_ok(const ex_dp *dp, int ok, const char *what) {
    int bad = ok ? -1 : dp->rank;
#ifdef ATTNVAE_MPI
    if (dp->on) bad = av_mpi_check(MPI_COMM_WORLD, ok);
#endif
    if (bad >= 0 && bad != dp->rank && dp->rank == 0)
        fprintf(stderr, "error: rank %d could not %s; every rank stops\n", bad, what);
    return bad < 0;
}

/* Makes every rank's model rank 0's (the same init, or what rank 0 loaded): 0 or -1. */
static inline int ex_dp_attach(ex_dp *dp, av_model *model) {
#ifdef ATTNVAE_MPI
    if (dp->on && (!(dp->mpi = av_mpi_new(model, MPI_COMM_WORLD, 0)) || av_mpi_broadcast(dp->mpi) != 0)) {
        if (dp->rank == 0) fprintf(stderr, "error: %s\n", av_error());
        return -1;
    }
#else
    (void)dp;
    (void)model;
#endif
    return 0;
}

/* Backward from this rank's loss, a mean over its count examples, then
   the gradients of the global batch on every rank. A rank without examples
   passes loss NULL (and count 0) with zeroed gradients. */
static inline int ex_dp_backward(ex_dp *dp, av_ctx *c, av_tensor *loss, int count) {
#ifdef ATTNVAE_MPI
    if (dp->on) return loss ? av_mpi_backward(dp->mpi, c, loss, count) : av_mpi_allreduce_grads(dp->mpi, 0);
#else
    (void)dp;
    (void)count;
#endif
    if (loss) av_backward(c, loss);
    return 0;
}

/* Rows first..first+rows of a [total, cols] tensor of normals from stream
   s, draw e for element e as av_randn draws them: a rank's share of the
   noise one process would draw for the whole global batch (av_shard's
   offset and count), e.g. the eps of av_reparameterize_eps. */
static inline av_tensor *ex_dp_randn(av_ctx *c, const av_philox *s, int first, int rows, int cols) {
    av_tensor *t = av_zeros(c, 2, rows, cols);
    int i;
    for (i = 0; i < t->size; i++) t->data[i] = av_philox_normal(s, (uint64_t)first * (uint64_t)cols + (uint64_t)i);
    return t;
}

/* Sums n values over the ranks, in place (statistics to print). */
static inline void ex_dp_sum(const ex_dp *dp, double *values, int n) {
#ifdef ATTNVAE_MPI
    if (dp->on) MPI_Allreduce(MPI_IN_PLACE, values, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)dp;
    (void)values;
    (void)n;
#endif
}

/* Rank 0 reads the model file (with checkpoint 1, a checkpoint: with the
   optimizer state and the step) and every rank gets the model; 0 or the error. */
static inline int ex_dp_load(ex_dp *dp, av_model *model, const char *path, int checkpoint) {
#ifdef ATTNVAE_MPI
    if (dp->on) return checkpoint ? av_mpi_checkpoint_load(dp->mpi, path) : av_mpi_model_load(dp->mpi, path);
#else
    (void)dp;
#endif
    return checkpoint ? av_checkpoint_load(model, path) : av_model_load(model, path);
}

/* Rank 0 writes the model file (or the checkpoint); every rank gets the result. */
static inline int ex_dp_save(ex_dp *dp, av_model *model, const char *path, int checkpoint) {
#ifdef ATTNVAE_MPI
    if (dp->on) return checkpoint ? av_mpi_checkpoint_save(dp->mpi, path) : av_mpi_model_save(dp->mpi, path);
#else
    (void)dp;
#endif
    return checkpoint ? av_checkpoint_save(model, path) : av_model_save(model, path);
}

/* A failure that other ranks may not share stops them all, rather than
   leaving them waiting in their next collective. */
static inline void ex_dp_abort(const ex_dp *dp) {
#ifdef ATTNVAE_MPI
    if (dp->on && dp->size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
#else
    (void)dp;
#endif
}

static inline void ex_dp_stop(ex_dp *dp) {
#ifdef ATTNVAE_MPI
    if (dp->on) {
        av_mpi_free(dp->mpi);
        MPI_Finalize();
    }
#endif
    memset(dp, 0, sizeof *dp);
}

/* ---- drawing on RGB buffers ------------------------------------------------- */
/* Fills the w x h rectangle at (x, y) with color; what falls outside is clipped. */
static inline void ex_fill_rect(unsigned char *rgb, int width, int height, int x, int y, int w, int h,
                                const unsigned char color[3]) {
    int x0 = x < 0 ? 0 : x, y0 = y < 0 ? 0 : y, x1 = x + w > width ? width : x + w, y1 = y + h > height ? height : y + h;
    int px, py;
    for (py = y0; py < y1; py++)
        for (px = x0; px < x1; px++) memcpy(rgb + ((size_t)py * width + px) * 3, color, 3);
}

/* A 5x7 font: printable ASCII (32..126), then a box for any other character.
   Each glyph is 7 rows, top first; bit 4 is the leftmost of its 5 columns. */
#define EX_GLYPH_W 5
#define EX_GLYPH_H 7
#define EX_ADVANCE 6 /* a glyph and a column of space */
static const unsigned char ex_font[96][EX_GLYPH_H] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* ' ' */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04}, /* '!' */
    {0x0a, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00}, /* '"' */
    {0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a}, /* '#' */
    {0x04, 0x0f, 0x14, 0x0e, 0x05, 0x1e, 0x04}, /* '$' */
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}, /* '%' */
    {0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d}, /* '&' */
    {0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00}, /* '\'' */
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}, /* '(' */
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}, /* ')' */
    {0x00, 0x04, 0x15, 0x0e, 0x15, 0x04, 0x00}, /* '*' */
    {0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00}, /* '+' */
    {0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08}, /* ',' */
    {0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00}, /* '-' */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c}, /* '.' */
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}, /* '/' */
    {0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e}, /* '0' */
    {0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e}, /* '1' */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f}, /* '2' */
    {0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e}, /* '3' */
    {0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02}, /* '4' */
    {0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e}, /* '5' */
    {0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e}, /* '6' */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}, /* '7' */
    {0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e}, /* '8' */
    {0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c}, /* '9' */
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00}, /* ':' */
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x04, 0x08}, /* ';' */
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}, /* '<' */
    {0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00}, /* '=' */
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}, /* '>' */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}, /* '?' */
    {0x0e, 0x11, 0x01, 0x0d, 0x15, 0x15, 0x0e}, /* '@' */
    {0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11}, /* 'A' */
    {0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e}, /* 'B' */
    {0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e}, /* 'C' */
    {0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c}, /* 'D' */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f}, /* 'E' */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10}, /* 'F' */
    {0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f}, /* 'G' */
    {0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11}, /* 'H' */
    {0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e}, /* 'I' */
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c}, /* 'J' */
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}, /* 'K' */
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f}, /* 'L' */
    {0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11}, /* 'M' */
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}, /* 'N' */
    {0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e}, /* 'O' */
    {0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10}, /* 'P' */
    {0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d}, /* 'Q' */
    {0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11}, /* 'R' */
    {0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e}, /* 'S' */
    {0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, /* 'T' */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e}, /* 'U' */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04}, /* 'V' */
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a}, /* 'W' */
    {0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11}, /* 'X' */
    {0x11, 0x11, 0x0a, 0x04, 0x04, 0x04, 0x04}, /* 'Y' */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f}, /* 'Z' */
    {0x0e, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0e}, /* '[' */
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00}, /* '\\' */
    {0x0e, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0e}, /* ']' */
    {0x04, 0x0a, 0x11, 0x00, 0x00, 0x00, 0x00}, /* '^' */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f}, /* '_' */
    {0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00}, /* '`' */
    {0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f}, /* 'a' */
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e}, /* 'b' */
    {0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e}, /* 'c' */
    {0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f}, /* 'd' */
    {0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e}, /* 'e' */
    {0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08}, /* 'f' */
    {0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e}, /* 'g' */
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}, /* 'h' */
    {0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e}, /* 'i' */
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0c}, /* 'j' */
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}, /* 'k' */
    {0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e}, /* 'l' */
    {0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11}, /* 'm' */
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}, /* 'n' */
    {0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e}, /* 'o' */
    {0x00, 0x00, 0x1e, 0x11, 0x1e, 0x10, 0x10}, /* 'p' */
    {0x00, 0x00, 0x0d, 0x13, 0x0f, 0x01, 0x01}, /* 'q' */
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}, /* 'r' */
    {0x00, 0x00, 0x0e, 0x10, 0x0e, 0x01, 0x1e}, /* 's' */
    {0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06}, /* 't' */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d}, /* 'u' */
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04}, /* 'v' */
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a}, /* 'w' */
    {0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11}, /* 'x' */
    {0x00, 0x00, 0x11, 0x11, 0x0f, 0x01, 0x0e}, /* 'y' */
    {0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f}, /* 'z' */
    {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02}, /* '{' */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, /* '|' */
    {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08}, /* '}' */
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00}, /* '~' */
    {0x1f, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1f}, /* box */
};

/* The glyph of the character at *s, and *s moved past it: a UTF-8
   sequence is one character (a box), so text lines up with code points. */
static inline const unsigned char *ex_next_glyph(const char **s) {
    unsigned char ch = (unsigned char)*(*s)++;
    if (ch >= 32 && ch < 127) return ex_font[ch - 32];
    if (ch >= 0xC0)
        while (((unsigned char)**s & 0xC0) == 0x80) (*s)++;
    return ex_font[95];
}

/* Width in pixels of text drawn at scale. */
static inline int ex_text_width(const char *text, int scale) {
    int n = 0;
    while (*text) {
        ex_next_glyph(&text);
        n++;
    }
    return n ? (n * EX_ADVANCE - 1) * scale : 0;
}

/* Draws UTF-8 text with its top-left corner at (x, y) onto an RGB image of
   width x height, each font pixel a scale x scale square of color, clipped
   at the edges. Returns the x where the next character would go. */
static inline int ex_draw_text(unsigned char *rgb, int width, int height, int x, int y, const char *text,
                               const unsigned char color[3], int scale) {
    while (*text) {
        const unsigned char *glyph = ex_next_glyph(&text);
        int row, col;
        for (row = 0; row < EX_GLYPH_H; row++)
            for (col = 0; col < EX_GLYPH_W; col++)
                if (glyph[row] >> (EX_GLYPH_W - 1 - col) & 1)
                    ex_fill_rect(rgb, width, height, x + col * scale, y + row * scale, scale, scale, color);
        x += EX_ADVANCE * scale;
    }
    return x;
}
#endif

/* ---- pictures (stb_image_write from Debian's libstb-dev) --------------- */
#if !defined(EX_NO_PNG) && !defined(AV_EXAMPLES_PNG)
#define AV_EXAMPLES_PNG
#include <stb/stb_image_write.h>

static inline int ex__write_png(const char *path, int w, int h, int channels, const unsigned char *pix) {
    if (pix && stbi_write_png(path, w, h, channels, pix, w * channels)) return 0;
    fprintf(stderr, "error: cannot write %s\n", path);
    return -1;
}

/* Writes n grayscale h x w images (values in [0,1]) as a rows x cols grid with
   a 1-pixel gap; returns 0 on success. */
static inline int ex_write_grid(const char *path, const float *images, int n, int rows, int cols, int h, int w) {
    int W = cols * (w + 1) + 1, H = rows * (h + 1) + 1, i, y, x, rc;
    unsigned char *pix = (unsigned char *)calloc((size_t)W * H, 1);
    for (i = 0; pix && i < n && i < rows * cols; i++) {
        int r0 = 1 + (i / cols) * (h + 1), c0 = 1 + (i % cols) * (w + 1);
        for (y = 0; y < h; y++)
            for (x = 0; x < w; x++) {
                float v = images[(size_t)i * h * w + (size_t)y * w + x];
                v = v > 0 ? (v < 1 ? v : 1) : 0; /* NaN is drawn black */
                pix[(size_t)(r0 + y) * W + c0 + x] = (unsigned char)(255.0f * v + 0.5f);
            }
    }
    rc = ex__write_png(path, W, H, 1, pix);
    free(pix);
    return rc;
}

/* Up to 32 images above their reconstructions, in row pairs of (up to) 8. */
static inline int ex_write_pairs(const char *path, const float *originals, const float *recons, int n, int h, int w) {
    int dim = h * w, cols, pairs, i, rc;
    float *grid;
    n = n < 32 ? n : 32;
    cols = n < 8 ? n : 8;
    pairs = (n + 7) / 8;
    grid = (float *)calloc((size_t)2 * cols * pairs * dim, sizeof(float));
    if (!grid) return ex__write_png(path, 0, 0, 1, NULL);
    for (i = 0; i < n; i++) {
        int at = 2 * cols * (i / cols) + i % cols; /* cell of the original; its reconstruction is a row below */
        memcpy(grid + (size_t)at * dim, originals + (size_t)i * dim, (size_t)dim * sizeof(float));
        memcpy(grid + (size_t)(at + cols) * dim, recons + (size_t)i * dim, (size_t)dim * sizeof(float));
    }
    rc = ex_write_grid(path, grid, 2 * cols * pairs, 2 * pairs, cols, h, w);
    free(grid);
    return rc;
}

/* A scatter plot of n 2-D points coloured by label (0..9) in a size x size
   square, with a legend of the ten class names in their colours to its
   right (names NULL: no legend). Points that are not finite are left out. */
static inline int ex_write_scatter(const char *path, const float *xy, const int *labels, int n, int size,
                                   const char *const *names) {
    static const unsigned char palette[10][3] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40},
                                                 {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127},
                                                 {188, 189, 34}, {23, 190, 207}};
    const int scale = 2, line = 12 * scale;
    double lo[2] = {0, 0}, hi[2] = {0, 0};
    int legend = 0, width, height = size, i, k, finite = 0, rc;
    unsigned char *pix;
    for (i = 0; names && i < 10; i++) {
        int w = ex_text_width(names[i], scale) + 2 * line;
        legend = w > legend ? w : legend;
        height = height > (i + 1) * line + line / 2 ? height : (i + 1) * line + line / 2;
    }
    width = size + legend;
    if (!(pix = (unsigned char *)malloc((size_t)width * height * 3))) return ex__write_png(path, 0, 0, 3, NULL);
    memset(pix, 255, (size_t)width * height * 3);
    for (i = 0; i < n; i++) {
        if (!isfinite(xy[2 * i]) || !isfinite(xy[2 * i + 1])) continue;
        for (k = 0; k < 2; k++) {
            lo[k] = finite && lo[k] < xy[2 * i + k] ? lo[k] : xy[2 * i + k];
            hi[k] = finite && hi[k] > xy[2 * i + k] ? hi[k] : xy[2 * i + k];
        }
        finite++;
    }
    for (i = 0; i < n; i++) {
        double fx, fy;
        if (!isfinite(xy[2 * i]) || !isfinite(xy[2 * i + 1])) continue;
        fx = hi[0] > lo[0] ? (xy[2 * i] - lo[0]) / (hi[0] - lo[0]) : 0.5; /* in [0, 1] */
        fy = hi[1] > lo[1] ? (hi[1] - xy[2 * i + 1]) / (hi[1] - lo[1]) : 0.5;
        ex_fill_rect(pix, width, height, (int)(fx * (size - 3)), (int)(fy * (size - 3)), 3, 3, palette[(unsigned)labels[i] % 10]);
    }
    for (i = 0; names && i < 10; i++) {
        int y = line / 2 + i * line;
        ex_fill_rect(pix, width, height, size + line / 2, y, 7 * scale, 7 * scale, palette[i]);
        ex_draw_text(pix, width, height, size + 3 * line / 2, y, names[i], palette[i], scale);
    }
    if (finite < n) fprintf(stderr, "note: %s: %d of %d points are not finite and are left out\n", path, n - finite, n);
    rc = ex__write_png(path, width, height, 3, pix);
    free(pix);
    return rc;
}
#endif
