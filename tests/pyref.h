/* pyref.h - the C half of a cross-check against PyTorch in float64, shared
   by test_attn_ref.c and test_transformer_ref.c. Include after attnvae.h
   and test.h.

   Flow: the test draws every input into `inputs` (named arrays
   "<case>:<field>"), writes them as text, runs the Python script
   (run_script), which writes its float64 results back in the same format
   (read into `refs`) and the modules' state_dicts as safetensors; then the
   test runs attnvae and compares (compare, compare_grad).

   Error of an array: max |attnvae - torch| / max |torch|, at most FWD_TOL
   for forward values and GRAD_TOL for gradients. A reference that is zero up
   to its own float64 rounding (largest value below ZERO_REF; e.g. the
   gradient of a mask constant along the keys, which softmax ignores) is
   measured against 1 instead: inputs and upstream gradients lie in
   [-1.5, 1.5] and weights are O(1), so 1 is the size of the terms that
   cancel to give that zero. compare() with rows: where PyTorch gives NaN in
   a row (a query that sees no key), attnvae must give exactly 0; without
   rows, a NaN fails. Each test keeps the worst error per group of checks
   (print_worst). */
#ifndef AV_PYREF_H
#define AV_PYREF_H

#define FWD_TOL 1e-5
#define GRAD_TOL 1e-4
#define ZERO_REF 1e-12

/* ---- the tests' own RNG (splitmix64); each test seeds rs ---- */
static uint64_t rs;
static double unif(double lo, double hi) {
    uint64_t z = (rs += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return lo + (hi - lo) * (double)((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- named arrays: the inputs drawn here, the script's results ---- */
typedef struct named { char name[128]; int ndim, shape[4], n; double *v; } named;
typedef struct table { named *a; int n, cap; } table;
static table inputs, refs;

static named *add(table *t, const char *name, int ndim, const int *shape) {
    named *x;
    int i;
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->a = (named *)realloc(t->a, (size_t)t->cap * sizeof(named));
        if (!t->a) { printf("out of memory\n"); exit(1); }
    }
    x = &t->a[t->n++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = ndim;
    for (i = 0, x->n = 1; i < ndim; i++) x->n *= x->shape[i] = shape[i];
    x->v = (double *)calloc((size_t)x->n + 1, sizeof(double));
    return x;
}

static void free_table(table *t) {
    int i;
    for (i = 0; i < t->n; i++) free(t->a[i].v);
    free(t->a);
    memset(t, 0, sizeof *t);
}

static const named *lookup(const table *t, const char *cs, const char *field) {
    char name[128];
    int i;
    snprintf(name, sizeof name, "%s:%s", cs, field);
    for (i = 0; i < t->n; i++)
        if (strcmp(t->a[i].name, name) == 0) return &t->a[i];
    return NULL;
}

/* An input "<case>:<field>", zeros. */
static named *add_input(const char *cs, const char *field, int ndim, const int *shape) {
    char name[128];
    snprintf(name, sizeof name, "%s:%s", cs, field);
    return add(&inputs, name, ndim, shape);
}

/* An input of float values uniform in [lo, hi). */
static named *draw(const char *cs, const char *field, double lo, double hi, int ndim, const int *shape) {
    named *x = add_input(cs, field, ndim, shape);
    int i;
    for (i = 0; i < x->n; i++) x->v[i] = (float)unif(lo, hi);
    return x;
}

/* "name ndim d0 .. dk", then the values; %.9g gives each float back exactly */
static int write_table(const table *t, const char *path) {
    FILE *f = fopen(path, "w");
    int i, j;
    if (!f) return -1;
    for (i = 0; i < t->n; i++) {
        const named *x = &t->a[i];
        fprintf(f, "%s %d", x->name, x->ndim);
        for (j = 0; j < x->ndim; j++) fprintf(f, " %d", x->shape[j]);
        fprintf(f, "\n");
        for (j = 0; j < x->n; j++) fprintf(f, j ? " %.9g" : "%.9g", x->v[j]);
        fprintf(f, "\n");
    }
    return fclose(f);
}

static int read_table(table *t, const char *path) {
    FILE *f = fopen(path, "r");
    char name[128];
    int ndim, shape[4], i, ok = 1;
    if (!f) return -1;
    while (ok && fscanf(f, "%127s %d", name, &ndim) == 2) {
        named *x;
        ok = ndim >= 0 && ndim <= 4;
        for (i = 0; ok && i < ndim; i++) ok = fscanf(f, "%d", &shape[i]) == 1 && shape[i] >= 0;
        if (!ok) break;
        x = add(t, name, ndim, shape);
        for (i = 0; ok && i < x->n; i++) ok = fscanf(f, "%lf", &x->v[i]) == 1;
    }
    ok = ok && feof(f);
    fclose(f);
    return ok ? 0 : -1;
}

static av_tensor *tensor_of(av_ctx *c, const named *x, int requires_grad) {
    av_tensor *t = av_zeros_shape(c, x->ndim, x->shape);
    int i;
    for (i = 0; i < x->n; i++) t->data[i] = (float)x->v[i];
    if (requires_grad) av_requires_grad(c, t);
    return t;
}

/* the input "<case>:<field>" as a tensor, NULL if there is none */
static av_tensor *input(av_ctx *c, const char *cs, const char *field, int requires_grad) {
    const named *x = lookup(&inputs, cs, field);
    return x ? tensor_of(c, x, requires_grad) : NULL;
}

/* sum(y * r), r reshaped to y's shape */
static av_tensor *weighted_sum(av_ctx *c, av_tensor *y, av_tensor *r) {
    return av_sum_all(c, av_mul(c, y, av_reshape_shape(c, r, y->ndim, y->shape)));
}

/* ---- comparison ---- */
enum { FWD, GRAD };
#define MAX_GROUPS 8
static double worst[MAX_GROUPS][2];
static char worst_at[MAX_GROUPS][2][200];

/* got[n] against want[n] in rows of `row` values. A row where want has a
   NaN (PyTorch's result for a query that sees no key) must be exactly 0 in
   got; row 0 allows no NaN. Returns the number of such rows. */
static int compare_values(int group, int kind, const char *what, const float *got, const double *want, int n, int row) {
    double largest = 0, err = 0, scale, tol = kind == GRAD ? GRAD_TOL : FWD_TOL;
    int r, i, rows = row ? n / row : 1, len = row ? row : n, dead = 0, nonzero = 0;
    for (r = 0; r < rows; r++) {
        const double *w = want + (size_t)r * len;
        const float *g = got + (size_t)r * len;
        int has_nan = 0;
        for (i = 0; i < len; i++) has_nan |= w[i] != w[i];
        if (has_nan && row) {
            dead++;
            for (i = 0; i < len; i++) nonzero += g[i] != 0.0f;
            continue;
        }
        for (i = 0; i < len; i++) {
            double d = fabs((double)g[i] - w[i]);
            if (fabs(w[i]) > largest) largest = fabs(w[i]);
            if (!(d <= err)) err = d == d ? d : INFINITY;
        }
    }
    scale = largest > ZERO_REF ? largest : 1.0;
    CHECK(err <= tol * scale, "%s: max error %.3g, largest value %.3g (%s, tolerance %g of it)", what, err, largest,
          kind == GRAD ? "gradient" : "forward", tol);
    if (dead) CHECK(nonzero == 0, "%s: %d values not 0 in the %d rows where PyTorch gives NaN", what, nonzero, dead);
    if (err / scale > worst[group][kind]) {
        worst[group][kind] = err / scale;
        snprintf(worst_at[group][kind], sizeof worst_at[group][kind], "%s", what);
    }
    return dead;
}

/* got against the reference "<case>:<field>"; note says how got was made */
static int compare(int group, int kind, const char *cs, const char *field, const char *note, const float *got, int n,
                   int row) {
    const named *want = lookup(&refs, cs, field);
    char what[200];
    snprintf(what, sizeof what, "%s:%s%s%s", cs, field, note ? " " : "", note ? note : "");
    if (!want || want->n != n || !got) {
        CHECK(0, "%s: %s", what, !want ? "no reference from PyTorch" : !got ? "attnvae gave nothing" : "sizes differ");
        return 0;
    }
    return compare_values(group, kind, what, got, want->v, n, row);
}

/* t's gradient against "<case>:<path>.d.<name>", or "<case>:d.<name>" when path is NULL */
static void compare_grad(int group, const char *cs, const char *path, const char *name, const av_tensor *t) {
    char field[200];
    snprintf(field, sizeof field, "%s%sd.%s", path ? path : "", path ? "." : "", name);
    compare(group, GRAD, cs, field, NULL, t->grad, t->size, 0);
}

/* One info line per group: the worst errors and where they are. */
static void print_worst(const char *const *group_name, int n_groups) {
    int g;
    printf("info: GEMM and attention tiles on the %s path\n", av_isa_name(av_get_isa()));
    for (g = 0; g < n_groups; g++)
        printf("info: %-4s worst error against PyTorch, relative to the largest reference value: forward %.2e (%s)"
               ", gradients %.2e (%s)\n", group_name[g], worst[g][FWD], worst_at[g][FWD][0] ? worst_at[g][FWD] : "none",
               worst[g][GRAD], worst_at[g][GRAD][0] ? worst_at[g][GRAD] : "none: inference");
}

/* ---- the script ---- */
/* Runs `<python> script in out` ($ATTNVAE_PYTHON, else python3) and reads
   out into refs. 1: results in refs; 0: skipped or failed (said so). */
static int run_script(const char *script, const char *in, const char *out) {
    const char *py = getenv("ATTNVAE_PYTHON");
    char cmd[2048], first[256];
    FILE *f;
    int rc;
    if (!py || !*py) py = "python3";
    remove(out);
    snprintf(cmd, sizeof cmd, "%.400s %.600s %.500s %.500s", py, script, in, out);
    fflush(stdout);
    rc = system(cmd);
    f = fopen(out, "r");
    if (!f) {
        snprintf(cmd, sizeof cmd, "%.400s -c pass 2>/dev/null", py);
        if (system(cmd) != 0) printf("skipped: %s missing\n", py);
        else CHECK(0, "%s failed (status %d) without output", script, rc);
        return 0;
    }
    if (!fgets(first, sizeof first, f)) first[0] = 0;
    fclose(f);
    first[strcspn(first, "\r\n")] = 0;
    if (strncmp(first, "skip", 4) == 0) {
        printf("skipped: python3-torch missing (%s)\n", first + 5);
        return 0;
    }
    CHECK(rc == 0, "%s exited with status %d", script, rc);
    if (rc == 0 && read_table(&refs, out) != 0) CHECK(0, "cannot parse %s", out);
    return rc == 0 && refs.n > 0;
}
#endif
