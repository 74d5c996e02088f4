/* File I/O tests: safetensors round trips in every dtype, fixtures written
   by tests/make_safetensors.py with PyTorch, corrupt and unbounded input,
   atomic and durable saves (a writer killed at random moments), allocation
   failures, a small fuzz pass and IDX files.
   usage: test_io [tmp-dir]   (default build/io_tmp; it must exist and hold
   the fixtures py.safetensors and py_dtypes.safetensors) */
#define _XOPEN_SOURCE 700 /* POSIX: mkdir, fork, kill, pipe, readlink, realpath, setrlimit */
#include <stdlib.h>

/* Every allocation of the library goes through these: a test can see the
   largest request, count the blocks still live, and make request number
   t_alloc_fail (counted from t_alloc_n = 0) fail. */
static size_t t_alloc_max;
static long t_alloc_live, t_alloc_n, t_alloc_fail = -1;
static void *t_malloc(size_t n) {
    void *p;
    if (n > t_alloc_max) t_alloc_max = n;
    if (t_alloc_n++ == t_alloc_fail) return NULL;
    if ((p = malloc(n)) != NULL) t_alloc_live++;
    return p;
}
static void *t_realloc(void *old, size_t n) {
    if (!old) return t_malloc(n);
    if (n > t_alloc_max) t_alloc_max = n;
    if (t_alloc_n++ == t_alloc_fail) return NULL;
    return realloc(old, n);
}
static void t_free(void *p) {
    if (p) t_alloc_live--;
    free(p);
}
#define AV_MALLOC(n) t_malloc(n)
#define AV_REALLOC(p, n) t_realloc(p, n)
#define AV_FREE(p) t_free(p)

#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include <time.h>
#if defined(__unix__) || defined(__APPLE__)
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#define T_POSIX 1
#endif

static const char *tmp_dir = "build/io_tmp";

static const char *tpath(const char *name) {
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", tmp_dir, name);
    return p;
}
static int write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    int ok = fp && fwrite(data, 1, n, fp) == n;
    if (fp && fclose(fp) != 0) ok = 0;
    return ok;
}
static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    unsigned char *b = NULL;
    long len;
    *n = 0;
    if (!fp) return NULL;
    if (fseek(fp, 0, SEEK_END) == 0 && (len = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
        b = (unsigned char *)malloc((size_t)len + 1);
        if (b && fread(b, 1, (size_t)len, fp) == (size_t)len) *n = (size_t)len;
        else { free(b); b = NULL; }
    }
    fclose(fp);
    return b;
}
static int exists(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (fp) fclose(fp);
    return fp != NULL;
}
static int has(const char *s, const char *sub) { return s && strstr(s, sub) != NULL; }

/* Temporary files of saves to tmp_dir/name ("name.tmp..."); removes them
   when told to. Returns how many there were (0 without POSIX). */
static int stray_tmp(const char *name, int remove_them) {
    int n = 0;
#ifdef T_POSIX
    char prefix[256];
    DIR *d = opendir(tmp_dir);
    struct dirent *e;
    snprintf(prefix, sizeof prefix, "%s.tmp", name);
    while (d && (e = readdir(d)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
            n++;
            if (remove_them) remove(tpath(e->d_name));
        }
    if (d) closedir(d);
#else
    (void)name;
    (void)remove_them;
#endif
    return n;
}

/* ---- the shared fixture (same as tests/make_safetensors.py) ---------- */
#define FX_N 6
static const char *const fx_names[FX_N] = {"alpha", "beta.weight", "scalar", "conv", "empty", "uni\xc3\xa9"};
static const int fx_ndim[FX_N] = {2, 1, 0, 4, 2, 1};
static const int fx_shape[FX_N][4] = {{2, 3}, {4}, {0}, {2, 1, 2, 3}, {0, 4}, {1}};
static const char *const fx_keys[3] = {"format", "quote", "caf\xc3\xa9"};
static const char *const fx_vals[3] = {"pt", "say \"hi\"\n", "na\xc3\xafve \xf0\x9f\x98\x80"};

static float fx_value(int t, int i) {
    switch (t) {
    case 0: return i * 0.5f - 1;
    case 1: return (i + 1) * 1.25f;
    case 2: return 3.25f;
    case 3: return (i - 6) / 8.0f;
    default: return 42.0f;
    }
}
static int fx_numel(int t) {
    int n = 1, d;
    for (d = 0; d < fx_ndim[t]; d++) n *= fx_shape[t][d];
    return n;
}

/* Saves the fixture with av_st_save (the Python script checks this file). */
static int fx_save(const char *path) {
    static float data[FX_N][12];
    av_st_item items[FX_N];
    int t, i;
    memset(items, 0, sizeof items);
    for (t = 0; t < FX_N; t++) {
        for (i = 0; i < fx_numel(t); i++) data[t][i] = fx_value(t, i);
        items[t].name = fx_names[t];
        items[t].ndim = fx_ndim[t];
        items[t].shape = fx_shape[t];
        items[t].data = data[t];
    }
    return av_st_save(path, items, FX_N, fx_keys, fx_vals, 3);
}

/* Checks a loaded fixture; in_order: tensors indexed in fixture order. */
static void fx_check(const av_st_file *f, int in_order, const char *what) {
    float buf[16];
    int t, i, d, k;
    CHECK(av_st_count(f) == FX_N, "%s: count %d", what, av_st_count(f));
    for (t = 0; t < FX_N; t++) {
        k = av_st_find(f, fx_names[t]);
        CHECK(k >= 0, "%s: tensor %s not found", what, fx_names[t]);
        if (k < 0) continue;
        if (in_order) CHECK(k == t, "%s: %s at index %d", what, fx_names[t], k);
        CHECK(strcmp(av_st_name(f, k), fx_names[t]) == 0, "%s: name %s", what, av_st_name(f, k));
        CHECK(av_st_ndim(f, k) == fx_ndim[t], "%s: %s ndim %d", what, fx_names[t], av_st_ndim(f, k));
        for (d = 0; d < fx_ndim[t]; d++)
            CHECK(av_st_shape(f, k)[d] == fx_shape[t][d], "%s: %s dim %d", what, fx_names[t], d);
        CHECK(av_st_numel(f, k) == fx_numel(t), "%s: %s numel", what, fx_names[t]);
        CHECK(av_st_read(f, k, buf, fx_numel(t)) == AV_OK, "%s: read %s: %s", what, fx_names[t], av_error());
        for (i = 0; i < fx_numel(t); i++)
            CHECK(buf[i] == fx_value(t, i), "%s: %s[%d] = %g, want %g", what, fx_names[t], i, buf[i],
                  fx_value(t, i));
    }
    for (t = 0; t < 3; t++) {
        const char *m = av_st_meta(f, fx_keys[t]);
        CHECK(m && strcmp(m, fx_vals[t]) == 0, "%s: metadata %s = %s", what, fx_keys[t], m ? m : "(null)");
    }
    CHECK(av_st_meta(f, "nope") == NULL, "%s: missing meta key found", what);
    CHECK(av_st_find(f, "nope") == -1, "%s: missing tensor found", what);
}

static void test_roundtrip(void) {
    const char *path = tpath("c_written.safetensors");
    av_st_file *f = NULL;
    float buf[8];
    unsigned char *raw;
    size_t n;
    int rc = fx_save(path);
    CHECK(rc == AV_OK, "save: %s", av_error());
    CHECK(stray_tmp("c_written.safetensors", 0) == 0, "tmp file left behind");
    raw = read_bytes(path, &n);
    CHECK(raw && n >= 8 && (8 + (raw[0] | raw[1] << 8)) % 8 == 0, "data section not 8-byte aligned");
    free(raw);
    rc = av_st_open(path, &f);
    CHECK(rc == AV_OK && f, "open: %s", av_error());
    if (!f) return;
    fx_check(f, 1, "round trip");
    /* wrong sizes and indices are caller errors, not crashes */
    CHECK(av_st_read(f, 0, buf, 5) == AV_ERR_MISMATCH && has(av_error(), "alpha"),
          "short read: %s", av_error());
    CHECK(av_st_read(f, FX_N, buf, 1) == AV_ERR_ARG, "bad index read");
    CHECK(av_st_read(f, -1, buf, 1) == AV_ERR_ARG, "negative index read");
    CHECK(av_st_name(f, FX_N) == NULL && av_st_ndim(f, -1) == -1 && av_st_shape(f, 99) == NULL &&
          av_st_numel(f, FX_N) == -1 && av_st_dtype(f, FX_N) == -1, "getters with bad index");
    CHECK(av_st_dtype(f, 0) == AV_DTYPE_F32, "default dtype %d", av_st_dtype(f, 0));
    av_st_close(f);
    av_st_close(NULL);

    /* no tensors, no metadata */
    CHECK(av_st_save(tpath("empty.safetensors"), NULL, 0, NULL, NULL, 0) == AV_OK,
          "save empty: %s", av_error());
    CHECK(av_st_open(tpath("empty.safetensors"), &f) == AV_OK, "open empty: %s", av_error());
    CHECK(av_st_count(f) == 0 && av_st_find(f, "x") == -1 && av_st_meta(f, "x") == NULL,
          "empty file contents");
    av_st_close(f);
}

static void test_python_fixture(void) {
    const char *path = tpath("py.safetensors");
    av_st_file *f = NULL;
    int rc = av_st_open(path, &f);
    CHECK(rc == AV_OK, "python fixture %s: %s (run tests/make_safetensors.py write)", path, av_error());
    if (!f) return;
    fx_check(f, 0, "python fixture");
    av_st_close(f);
}

/* ---- dtypes -------------------------------------------------------------- */
static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float bitsf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* Reads tensor `name` of f as float (NULL if missing or unreadable); n gets its numel. */
static float *read_all(const av_st_file *f, const char *name, int64_t *n) {
    int i = av_st_find(f, name);
    float *v;
    *n = i < 0 ? 0 : av_st_numel(f, i);
    v = (float *)malloc(sizeof(float) * (size_t)(*n + 1));
    if (i < 0 || av_st_read(f, i, v, *n) != AV_OK) {
        free(v);
        return NULL;
    }
    return v;
}

/* PyTorch wrote (tests/make_safetensors.py) every F16 and every BF16 bit
   pattern, F64 values that round or leave float's range, and small tensors
   of each dtype; "<name>.want" is torch's own conversion to F32. Reading
   must agree with it bit for bit. */
static void test_dtypes_python(void) {
    static const char *const names[6] = {"f16_all", "bf16_all", "f64_values", "bf16_scalar", "f16_matrix",
                                         "f64_matrix"};
    static const int dtypes[6] = {AV_DTYPE_F16, AV_DTYPE_BF16, AV_DTYPE_F64, AV_DTYPE_BF16, AV_DTYPE_F16,
                                  AV_DTYPE_F64};
    const char *path = tpath("py_dtypes.safetensors");
    av_st_file *f = NULL;
    int t, d, i, w;
    int64_t n, nw, k, bad;
    float *got, *want;
    CHECK(av_st_open(path, &f) == AV_OK, "%s: %s (run tests/make_safetensors.py write)", path, av_error());
    if (!f) return;
    for (t = 0; t < 6; t++) {
        char wname[64];
        snprintf(wname, sizeof wname, "%s.want", names[t]);
        i = av_st_find(f, names[t]);
        w = av_st_find(f, wname);
        CHECK(i >= 0 && w >= 0, "py_dtypes: %s or its .want missing", names[t]);
        if (i < 0 || w < 0) continue;
        CHECK(av_st_dtype(f, i) == dtypes[t] && av_st_dtype(f, w) == AV_DTYPE_F32, "py_dtypes: %s dtype %d",
              names[t], av_st_dtype(f, i));
        CHECK(av_st_ndim(f, i) == av_st_ndim(f, w), "py_dtypes: %s ndim", names[t]);
        for (d = 0; d < av_st_ndim(f, i) && d < av_st_ndim(f, w); d++)
            CHECK(av_st_shape(f, i)[d] == av_st_shape(f, w)[d], "py_dtypes: %s shape[%d]", names[t], d);
        got = read_all(f, names[t], &n);
        want = read_all(f, wname, &nw);
        CHECK(got && want && n == nw && n > 0, "py_dtypes: reading %s: %s", names[t], av_error());
        for (k = 0, bad = 0; got && want && k < n && n == nw; k++)
            if (fbits(got[k]) != fbits(want[k]) && bad++ == 0)
                printf("FAIL py_dtypes: %s[%lld] reads as %08lx, torch says %08lx\n", names[t], (long long)k,
                       (unsigned long)fbits(got[k]), (unsigned long)fbits(want[k]));
        CHECK(bad == 0, "py_dtypes: %s: %lld of %lld values differ from torch", names[t], (long long)bad,
              (long long)n);
        free(got);
        free(want);
    }
    /* Written back as F16 and BF16, the exact values give torch's patterns:
       element k of f16_all and bf16_all is pattern k. NaN: any quiet NaN of
       the same sign. */
    for (t = 0; t < 2; t++) {
        const char *out = tpath(t ? "c_bf16_all.safetensors" : "c_f16_all.safetensors");
        av_st_item it;
        unsigned char *raw;
        size_t len;
        int shape[1], sized;
        want = read_all(f, names[t], &n);
        if (!want) continue;
        memset(&it, 0, sizeof it);
        shape[0] = (int)n;
        it.name = "x"; it.ndim = 1; it.shape = shape; it.data = want; it.dtype = dtypes[t];
        CHECK(av_st_save(out, &it, 1, NULL, NULL, 0) == AV_OK, "save %s: %s", out, av_error());
        raw = read_bytes(out, &len);
        sized = raw && len == 8 + (size_t)(raw[0] | raw[1] << 8) + 2 * (size_t)n; /* header < 64 KB */
        CHECK(sized, "%s: size %lu", out, (unsigned long)len);
        for (k = 0, bad = 0; sized && k < n; k++) {
            const unsigned char *p = raw + len - 2 * n + 2 * k;
            uint32_t pat = (uint32_t)(p[0] | p[1] << 8), exp_mask = t ? 0x7f80 : 0x7c00;
            int ok = isnan(want[k]) ? (pat & exp_mask) == exp_mask && (pat & ~exp_mask & 0x7fff) &&
                                          (pat & 0x8000) == (k & 0x8000)
                                    : pat == (uint32_t)k;
            if (!ok && bad++ == 0)
                printf("FAIL %s: pattern %04llx written as %04lx\n", out, (long long)k, (unsigned long)pat);
        }
        CHECK(bad == 0, "%s: %lld patterns differ", out, (long long)bad);
        free(raw);
        free(want);
    }
    av_st_close(f);
}

/* The values that tests/make_safetensors.py check converts with torch and
   compares with the F16, BF16 and F64 tensors written here: edge cases, then
   random patterns, many of them in F16's range or exactly halfway. */
#define DT_N 100000
static void dt_fill(float *v) {
    static const uint32_t edge[] = {
        0x00000000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001, 0x7f800001, 0xff812345,
        0x7f7fffff, 0xff7fffff, 0x7f7f7fff, 0x7f7f8000, 0x7f7f8001, 0x7f7e8000, 0x477fe000, 0x477fefff,
        0x477ff000, 0x477ff001, 0xc77ff000, 0x47800000, 0x38800000, 0x387fffff, 0x387ff000, 0x387fe000,
        0x33800000, 0x33000000, 0x33000001, 0x337fffff, 0x33c00000, 0x34200000, 0x34400000, 0xb3000000,
        0x00000001, 0x007fffff, 0x80400000, 0x00008000, 0x00018000, 0x3f800000, 0x3f801000, 0x3f803000,
        0x3f801001, 0x3f808000, 0x3f818000, 0x3f808001, 0x3f7fffff, 0xbf7fffff, 0x3dcccccd, 0x3eaaaaab};
    const int n_edge = (int)(sizeof edge / sizeof edge[0]);
    uint32_t seed = 2024, u, half_range;
    int i;
    for (i = 0; i < DT_N; i++) {
        seed = seed * 1664525u + 1013904223u;
        u = seed ^ (seed >> 15) * 2654435761u;
        half_range = (u & 0x807fffff) | (96 + u % 48) << 23; /* exponents around F16's */
        v[i] = i < n_edge ? bitsf(edge[i])
             : i % 4 == 0 ? bitsf(u)                                   /* anything, NaNs too */
             : i % 4 == 1 ? bitsf(half_range)
             : i % 4 == 2 ? bitsf((half_range & ~0x1fffu) | 0x1000)    /* F16 ties */
                          : bitsf((u & 0xffff0000u) | 0x8000);         /* BF16 ties */
    }
}

/* Is back src rounded to nearest in a format with `mant` fraction bits,
   smallest normal exponent emin and largest finite value max? Checked in
   double: within half a unit in the last place (ties either way; that the
   tie goes to even is checked against torch in Python), +-inf at or past
   max plus half a unit, zeros keep their sign, NaN stays NaN with its sign. */
static int rounded_ok(float src, float back, int mant, int emin, double max) {
    double s = src, b = back, ulp;
    int e;
    if (isnan(src)) return isnan(back) && !signbit(src) == !signbit(back);
    frexp(fabs(s) < max ? s : max, &e); /* leading bit 2^(e-1) */
    ulp = ldexp(1.0, (e - 1 < emin ? emin : e - 1) - mant);
    if (fabs(s) >= max + ulp / 2) return isinf(back) && !signbit(src) == !signbit(back);
    return fabs(b - s) <= ulp / 2 && !signbit(src) == !signbit(back);
}

/* Writes c_dtypes.safetensors (the same values in each dtype) for the
   Python check, and reads it back. */
static void test_dtypes_written(void) {
    static const char *const names[4] = {"source", "source.f16", "source.bf16", "source.f64"};
    static const char *const keys[1] = {"what"}, *const vals[1] = {"dtype test"};
    const char *path = tpath("c_dtypes.safetensors");
    float *src = (float *)malloc(sizeof(float) * DT_N), *back = (float *)malloc(sizeof(float) * DT_N);
    av_st_item items[4];
    av_st_file *f = NULL;
    int shape[2] = {DT_N / 100, 100}, t, k, bad, ok;
    dt_fill(src);
    memset(items, 0, sizeof items);
    for (t = 0; t < 4; t++) {
        items[t].name = names[t];
        items[t].ndim = 2;
        items[t].shape = shape;
        items[t].data = src;
        items[t].dtype = t; /* F32, F16, BF16, F64 */
    }
    CHECK(av_st_save(path, items, 4, keys, vals, 1) == AV_OK, "save %s: %s", path, av_error());
    CHECK(av_st_open(path, &f) == AV_OK, "open %s: %s", path, av_error());
    for (t = 0; f && t < 4; t++) {
        CHECK(av_st_dtype(f, t) == t && av_st_ndim(f, t) == 2 && av_st_shape(f, t)[0] == DT_N / 100 &&
              av_st_numel(f, t) == DT_N, "c_dtypes: %s: dtype %d", names[t], av_st_dtype(f, t));
        CHECK(av_st_read(f, t, back, DT_N) == AV_OK, "c_dtypes: read %s: %s", names[t], av_error());
        for (k = 0, bad = 0; k < DT_N; k++) {
            if (t == 1) ok = rounded_ok(src[k], back[k], 10, -14, 65504.0);
            else if (t == 2) ok = rounded_ok(src[k], back[k], 7, -126, ldexp(255.0, 120));
            else ok = isnan(src[k]) ? isnan(back[k]) && !signbit(src[k]) == !signbit(back[k])
                                    : fbits(src[k]) == fbits(back[k]);
            if (!ok && bad++ == 0)
                printf("FAIL c_dtypes: %s[%d]: %08lx (%.9g) came back as %08lx (%.9g)\n", names[t], k,
                       (unsigned long)fbits(src[k]), src[k], (unsigned long)fbits(back[k]), back[k]);
        }
        CHECK(bad == 0, "c_dtypes: %s: %d values came back wrong", names[t], bad);
    }
    CHECK(f && strcmp(av_st_meta(f, "what"), "dtype test") == 0, "c_dtypes: metadata");
    av_st_close(f);
    free(src);
    free(back);
}

/* A BF16 file loads into a model as floats (av_model_load reads through av_st_read). */
static void test_dtype_model(void) {
    const char *path = tpath("bf16_model.safetensors");
    av_model *m = av_model_new(1);
    av_tensor *w = av_param(m, "w", AV_INIT_ZEROS, 0, 2, 3, 4);
    float values[12];
    int shape[2] = {3, 4}, i;
    av_st_item it;
    for (i = 0; i < 12; i++) values[i] = (float)(i - 5) * 0.375f; /* exact in BF16 */
    memset(&it, 0, sizeof it);
    it.name = "w"; it.ndim = 2; it.shape = shape; it.data = values; it.dtype = AV_DTYPE_BF16;
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_OK, "bf16 model save: %s", av_error());
    CHECK(av_model_load(m, path) == AV_OK, "bf16 model load: %s", av_error());
    for (i = 0; i < 12; i++) CHECK(w->data[i] == values[i], "bf16 model: w[%d] = %g", i, w->data[i]);
    av_model_free(m);
}

/* ---- corrupt files --------------------------------------------------- */
/* Writes an 8-byte header length, the JSON, then `data` zero bytes. */
static void write_st(const char *path, uint64_t hlen, const char *json, size_t jlen, size_t data) {
    unsigned char *b = (unsigned char *)calloc(8 + jlen + data + 1, 1);
    int i;
    for (i = 0; i < 8; i++) b[i] = (unsigned char)(hlen >> 8 * i);
    memcpy(b + 8, json, jlen);
    write_bytes(path, b, 8 + jlen + data);
    free(b);
}

static void expect_bad(const char *name, int code, const char *want) {
    const char *path = tpath(name);
    av_st_file *f = (av_st_file *)&f; /* must be reset to NULL */
    int rc;
    av_clear_error();
    rc = av_st_open(path, &f);
    CHECK(rc == code && f == NULL, "%s: rc %d, want %d (%s)", name, rc, code, av_error());
    CHECK(has(av_error(), want) && has(av_error(), name), "%s: message \"%s\" lacks \"%s\" or the path",
          name, av_error(), want);
}

#define T_ENTRY(shape, offs) "{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":" offs "}"
static const struct { const char *file, *json; int data; const char *want; } bad_json[] = {
    {"json_empty", "", 0, "unexpected end"},
    {"json_open", "{", 0, "unexpected end"},
    {"json_open_key", "{\"a\":", 0, "unexpected end"},
    {"json_trailing", "{} x", 0, "trailing characters"},
    {"json_two_values", "{}{}", 0, "trailing characters"},
    {"json_trailing_comma", "{\"a\":" T_ENTRY("[1]", "[0,4]") ",}", 4, "string key"},
    {"json_array_comma", "{\"a\":" T_ENTRY("[1,]", "[0,4]") "}", 4, "unexpected character"},
    {"json_missing_comma", "{\"a\":{\"dtype\":\"F32\" \"shape\":[1]}}", 0, "expected ',' or '}'"},
    {"json_missing_bracket", "{\"a\":{\"shape\":[1}}", 0, "expected ',' or ']'"},
    {"json_unterminated", "{\"a", 0, "unterminated string"},
    {"json_bad_escape", "{\"a\\q\":1}", 0, "invalid escape"},
    {"json_bad_u", "{\"a\\u12G4\":1}", 0, "invalid \\u escape"},
    {"json_short_u", "{\"a\\u12", 0, "invalid \\u escape"},
    {"json_high_surrogate", "{\"a\\ud800\":1}", 0, "unpaired surrogate"},
    {"json_low_surrogate", "{\"a\\udc00\":1}", 0, "unpaired surrogate"},
    {"json_nul_escape", "{\"a\\u0000\":1}", 0, "\\u0000"},
    {"json_control", "{\"a\tb\":1}", 0, "control character"},
    {"json_bad_utf8", "{\"a\xff\":1}", 0, "invalid UTF-8"},
    {"json_overlong_utf8", "{\"\xc0\xaf\":1}", 0, "invalid UTF-8"},
    {"json_cut_utf8", "{\"\xe2\x82\":1}", 0, "invalid UTF-8"},
    {"json_single_quotes", "{'a':1}", 0, "string key"},
    {"json_bare_key", "{a:1}", 0, "string key"},
    {"json_leading_zero", "{\"a\":01}", 0, "expected ',' or '}'"},
    {"json_missing_colon", "{\"a\" 1}", 0, "expected ':'"},
    {"json_bad_literal", "{\"a\":tru}", 0, "unexpected character"},
    {"json_bad_fraction", "{\"a\":1.}", 0, "after '.'"},
    {"json_bad_exponent", "{\"a\":1e+}", 0, "exponent"},
    {"json_plus_number", "{\"a\":+1}", 0, "unexpected character"},
    {"not_object", "[]", 0, "not a JSON object"},
    /* syntax fine (fractions, exponents, literals parse), content not */
    {"unknown_field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],"
                      "\"x\":[1.5e-3,-0,0.25E+2,true,false,null,{},\"\\u00e9\\n\"]}}",
     4, "unknown field 'x'"},
    {"entry_not_object", "{\"a\":[1]}", 0, "not an object"},
    {"dtype_i32", "{\"w\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "\"I32\" is not supported"},
    {"dtype_lower", "{\"w\":{\"dtype\":\"f16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "\"f16\""},
    {"dtype_f16_size", "{\"w\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     "needs 4 bytes"},
    {"dtype_bf16_size", "{\"w\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,12]}}", 12,
     "needs 6 bytes"},
    {"dtype_f64_size", "{\"w\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     "needs 16 bytes"},
    {"dtype_number", "{\"w\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     "dtype is not a string"},
    {"dup_field", "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "duplicate field 'dtype'"},
    {"missing_offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "missing 'data_offsets'"},
    {"missing_dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "missing 'dtype'"},
    {"missing_shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "missing 'shape'"},
    {"shape_mismatch", "{\"w\":" T_ENTRY("[2,3]", "[0,20]") "}", 20, "needs 24 bytes"},
    {"negative_shape", "{\"w\":" T_ENTRY("[-1]", "[0,0]") "}", 0, "is -1, not a non-negative integer"},
    {"fraction_shape", "{\"w\":" T_ENTRY("[1.5]", "[0,4]") "}", 4, "is 1.5, not"},
    {"string_shape", "{\"w\":" T_ENTRY("[\"2\"]", "[0,8]") "}", 8, "shape[0] is not a number"},
    {"shape_not_array", "{\"w\":" T_ENTRY("2", "[0,8]") "}", 8, "must be an array"},
    {"too_many_dims", "{\"w\":" T_ENTRY("[1,1,1,1,1,1,1,1,1]", "[0,4]") "}", 4, "at most 8"},
    {"shape_overflow", "{\"w\":" T_ENTRY("[4294967296,4294967296,4294967296]", "[0,4]") "}", 4,
     "shape[0] is 4294967296: too large for attnvae"},
    {"bytes_overflow", "{\"w\":" T_ENTRY("[2305843009213693952]", "[0,4]") "}", 4, "too large for attnvae"},
    /* no elements, but a dim that an int cannot hold */
    {"dim_over_int_empty", "{\"w\":" T_ENTRY("[4294967296,0]", "[0,0]") "}", 0,
     "shape[0] is 4294967296: too large for attnvae"},
    {"dim_over_int", "{\"w\":" T_ENTRY("[2147483648]", "[0,0]") "}", 0, "shape[0] is 2147483648"},
    {"numel_over_int", "{\"w\":" T_ENTRY("[65536,32768]", "[0,0]") "}", 0,
     "more than 2147483647 elements: too large for attnvae"},
    {"numel_over_int3", "{\"w\":" T_ENTRY("[2,2147483647,2147483647]", "[0,0]") "}", 0,
     "more than 2147483647 elements"},
    {"huge_integer", "{\"w\":" T_ENTRY("[1]", "[0,99999999999999999999]") "}", 4, "not a non-negative"},
    {"offsets_three", "{\"w\":" T_ENTRY("[1]", "[0,4,8]") "}", 4, "at most 2"},
    {"offsets_one", "{\"w\":" T_ENTRY("[1]", "[4]") "}", 4, "needs 2 entries"},
    {"offsets_past_end", "{\"w\":" T_ENTRY("[2]", "[0,8]") "}", 4, "past the data section"},
    {"begin_after_end", "{\"w\":" T_ENTRY("[0]", "[8,4]") "}", 8, "begin 8 > end 4"},
    {"overlap", "{\"a\":" T_ENTRY("[2]", "[0,8]") ",\"b\":" T_ENTRY("[2]", "[4,12]") "}", 12, "overlaps"},
    {"gap", "{\"a\":" T_ENTRY("[1]", "[0,4]") ",\"b\":" T_ENTRY("[1]", "[8,12]") "}", 12, "gap in the data"},
    {"leading_gap", "{\"a\":" T_ENTRY("[1]", "[4,8]") "}", 8, "gap in the data"},
    {"uncovered_tail", "{\"a\":" T_ENTRY("[1]", "[0,4]") "}", 8, "cover only 4"},
    {"dup_name", "{\"a\":" T_ENTRY("[1]", "[0,4]") ",\"a\":" T_ENTRY("[1]", "[4,8]") "}", 8,
     "duplicate tensor name 'a'"},
    {"meta_not_string", "{\"__metadata__\":{\"k\":1}}", 0, "value of 'k' is not a string"},
    {"meta_not_object", "{\"__metadata__\":\"x\"}", 0, "__metadata__ is not an object"},
    {"meta_dup_key", "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "duplicate __metadata__ key 'k'"},
    {"meta_twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate __metadata__"},
};

static void test_corrupt(void) {
    static const char good[] = "{\"a\":" T_ENTRY("[2]", "[0,8]") "}";
    size_t i, n;
    char *bomb;
    av_st_file *f = NULL;
    unsigned char *raw;
    for (i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
        size_t len = strlen(bad_json[i].json);
        write_st(tpath(bad_json[i].file), len, bad_json[i].json, len, (size_t)bad_json[i].data);
        expect_bad(bad_json[i].file, AV_ERR_FORMAT, bad_json[i].want);
    }
    /* depth bomb: 100000 nested arrays must not recurse that deep */
    bomb = (char *)malloc(200010);
    strcpy(bomb, "{\"a\":");
    memset(bomb + 5, '[', 100000);
    memset(bomb + 100005, ']', 100000);
    strcpy(bomb + 200005, "}");
    write_st(tpath("depth_bomb"), 200006, bomb, 200006, 0);
    expect_bad("depth_bomb", AV_ERR_FORMAT, "nesting too deep");
    free(bomb);
    /* header length field */
    write_bytes(tpath("empty_file"), "", 0);
    expect_bad("empty_file", AV_ERR_FORMAT, "too short");
    write_bytes(tpath("short_length"), "\x02\0\0", 3);
    expect_bad("short_length", AV_ERR_FORMAT, "too short");
    write_st(tpath("length_past_end"), 1000, good, sizeof good - 1, 8);
    expect_bad("length_past_end", AV_ERR_FORMAT, "past the end of the file");
    write_st(tpath("length_huge"), (uint64_t)1 << 40, good, sizeof good - 1, 8);
    expect_bad("length_huge", AV_ERR_FORMAT, "100 MB");
    write_st(tpath("length_max"), ~(uint64_t)0, good, sizeof good - 1, 8);
    expect_bad("length_max", AV_ERR_FORMAT, "100 MB");
    write_st(tpath("length_short"), sizeof good - 3, good, sizeof good - 1, 8);
    expect_bad("length_short", AV_ERR_FORMAT, "bad JSON");
    /* truncated data: the valid file minus its last byte */
    write_st(tpath("truncated_data"), sizeof good - 1, good, sizeof good - 1, 7);
    expect_bad("truncated_data", AV_ERR_FORMAT, "past the data section");
    expect_bad("does_not_exist", AV_ERR_IO, "cannot open");
    CHECK(av_st_open(tmp_dir, &f) == AV_ERR_IO && f == NULL && has(av_error(), "read error"),
          "opening a directory: %s", av_error());
    CHECK(av_st_open(NULL, NULL) == AV_ERR_ARG, "NULL arguments");

    /* valid oddities: whitespace padding, zero-size tensors, \u names */
    raw = (unsigned char *)" \t\r\n{ \"z\" : {\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                           "\"\\u00e9\\ud83d\\ude00\":" T_ENTRY("[]", "[0,4]") ","
                           "\"y\":" T_ENTRY("[0,5]", "[4,4]") ",\"__metadata__\":{}}\n    ";
    n = strlen((const char *)raw);
    write_st(tpath("valid_odd"), n, (const char *)raw, n, 4);
    {
        float v = 1;
        CHECK(av_st_open(tpath("valid_odd"), &f) == AV_OK, "valid_odd: %s", av_error());
        CHECK(av_st_count(f) == 3 && av_st_find(f, "\xc3\xa9\xf0\x9f\x98\x80") == 1 &&
              av_st_ndim(f, 1) == 0 && av_st_numel(f, 0) == 0 && av_st_numel(f, 2) == 0, "valid_odd contents");
        CHECK(av_st_read(f, 1, &v, 1) == AV_OK && v == 0, "valid_odd value %g", v);
        CHECK(av_st_read(f, 0, NULL, 0) == AV_OK, "zero-size read");
        av_st_close(f);
    }
    /* dims up to INT_MAX are fine when another dim is 0 */
    raw = (unsigned char *)"{\"w\":" T_ENTRY("[2147483647,0,2147483647]", "[0,0]") "}";
    n = strlen((const char *)raw);
    write_st(tpath("big_empty"), n, (const char *)raw, n, 0);
    CHECK(av_st_open(tpath("big_empty"), &f) == AV_OK && av_st_numel(f, 0) == 0 &&
          av_st_shape(f, 0)[0] == 2147483647 && av_st_shape(f, 0)[2] == 2147483647, "big_empty: %s", av_error());
    av_st_close(f);
}

/* ---- input that must not be read to its end ------------------------------ */
#ifdef T_POSIX
static int st_open_close(const char *path) {
    av_st_file *f = NULL;
    int rc = av_st_open(path, &f);
    av_st_close(f);
    return rc;
}
#endif
#if defined(__linux__)
/* Opens, through /dev/fd, a pipe fed by a child with `head` then zeros
   without end; runs open_fn on it, then stops the child. */
static int open_endless_pipe(const void *head, size_t n, int (*open_fn)(const char *)) {
    static char zeros[65536];
    char name[64];
    int fds[2], rc;
    pid_t pid;
    if (pipe(fds) != 0) return -100;
    if ((pid = fork()) == 0) {
        close(fds[0]);
        if (write(fds[1], head, n) < 0) _exit(0);
        for (;;)
            if (write(fds[1], zeros, sizeof zeros) < 0) _exit(0);
    }
    close(fds[1]);
    snprintf(name, sizeof name, "/dev/fd/%d", fds[0]);
    rc = open_fn(name);
    close(fds[0]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return rc;
}
static int idx_open_free(const char *path) {
    av_idx x;
    int rc = av_idx_load(path, &x);
    av_idx_free(&x);
    return rc;
}
#endif

static void test_unbounded(void) {
    static const char good[] = "{\"a\":" T_ENTRY("[2]", "[0,8]") "}";
    const char *path;
    FILE *fp;
    /* a header length under the cap in a small file: refused from the file's
       size, before the header is allocated */
    write_st(tpath("length_99mb"), 99999999, good, sizeof good - 1, 8);
    t_alloc_max = 0;
    expect_bad("length_99mb", AV_ERR_FORMAT, "past the end of the file");
    CHECK(t_alloc_max < 65536, "length_99mb: asked for %lu bytes", (unsigned long)t_alloc_max);
    /* 256 MB of trailing bytes (a sparse file): refused from the header and
       the file's size, before any of them is read */
    path = tpath("trailing_256mb");
    write_st(path, sizeof good - 1, good, sizeof good - 1, 8);
    if ((fp = fopen(path, "r+b")) != NULL) {
        CHECK(fseek(fp, 256L << 20, SEEK_SET) == 0 && fputc(1, fp) == 1, "cannot grow %s", path);
        fclose(fp);
    }
    t_alloc_max = 0;
    expect_bad("trailing_256mb", AV_ERR_FORMAT, "tensors cover only 8");
    CHECK(t_alloc_max < 65536, "trailing_256mb: asked for %lu bytes", (unsigned long)t_alloc_max);
    remove(path);
#ifdef T_POSIX
    { /* devices and pipes have no size: refused, never read to the end */
        int rc;
        t_alloc_max = 0;
        rc = st_open_close("/dev/zero");
        CHECK(rc == AV_ERR_IO && has(av_error(), "not a regular file") && t_alloc_max < 65536,
              "/dev/zero: rc %d (%s), asked for %lu bytes", rc, av_error(), (unsigned long)t_alloc_max);
    }
#endif
#ifdef __linux__
    {
        unsigned char head[8 + sizeof good];
        size_t i;
        int rc;
        for (i = 0; i < 8; i++) head[i] = (unsigned char)((sizeof good - 1) >> 8 * i);
        memcpy(head + 8, good, sizeof good - 1);
        t_alloc_max = 0;
        rc = open_endless_pipe(head, 8 + sizeof good - 1, st_open_close);
        CHECK(rc == AV_ERR_IO && has(av_error(), "not a regular file") && t_alloc_max < 65536,
              "endless pipe: rc %d (%s), asked for %lu bytes", rc, av_error(), (unsigned long)t_alloc_max);
        /* an IDX header for 1000 bytes, then zeros without end */
        memcpy(head, "\0\0\x08\x01\0\0\x03\xe8", 8);
        rc = open_endless_pipe(head, 8, idx_open_free);
        CHECK(rc == AV_ERR_IO && has(av_error(), "not a regular file") && t_alloc_max < 65536,
              "endless IDX pipe: rc %d (%s)", rc, av_error());
    }
#endif
}

/* ---- many metadata keys ---------------------------------------------------- */
/* 200000 keys, in shuffled order: all found (in well under a second; the
   time is printed, not checked), and one key given twice is refused. */
static void test_meta_many(void) {
    enum { N = 200000 };
    char *json = (char *)malloc((size_t)N * 40 + 64), *p;
    const char *path = tpath("meta_many");
    static const int probe[4] = {0, 1, 123457, N - 1};
    char key[32], want[32];
    av_st_file *f = NULL;
    clock_t t0;
    int i, dup, rc;
    for (dup = 0; dup < 2; dup++) {
        p = json + sprintf(json, "{\"__metadata__\":{");
        for (i = 0; i < N; i++) { /* i * 7919 mod N visits every key once */
            int k = dup && i == N - 1 ? 77 : (int)((long)i * 7919 % N);
            p += sprintf(p, "%s\"key%06d\":\"value %d\"", i ? "," : "", k, k);
        }
        p += sprintf(p, "}}");
        write_st(path, (uint64_t)(p - json), json, (size_t)(p - json), 0);
        t0 = clock();
        rc = av_st_open(path, &f);
        if (!dup) {
            printf("info: a header with %d metadata keys opened in %.3f s\n", N,
                   (double)(clock() - t0) / CLOCKS_PER_SEC);
            CHECK(rc == AV_OK, "meta_many: %s", av_error());
            for (i = 0; f && i < 4; i++) {
                const char *v;
                snprintf(key, sizeof key, "key%06d", probe[i]);
                snprintf(want, sizeof want, "value %d", probe[i]);
                v = av_st_meta(f, key);
                CHECK(v && strcmp(v, want) == 0, "meta_many: %s = %s", key, v ? v : "(null)");
            }
            CHECK(av_st_meta(f, "key200000") == NULL && av_st_meta(f, "key") == NULL &&
                  av_st_meta(f, "") == NULL, "meta_many: a missing key was found");
        } else {
            CHECK(rc == AV_ERR_FORMAT && has(av_error(), "duplicate __metadata__ key 'key000077'"),
                  "meta_many duplicate: rc %d: %s", rc, av_error());
        }
        av_st_close(f);
        f = NULL;
    }
    free(json);
}

/* ---- atomic saves ---------------------------------------------------- */
static void test_atomic(void) {
    char path[512];
    static const int shape[2] = {2, 2}, huge[2] = {65536, 32768}, negative[1] = {-1};
    static const float one[4] = {1, 2, 3, 4}, two[4] = {5, 6, 7, 8};
    static const char *const keys[2] = {"k", "k"}, *const vals[2] = {"a", "b"};
    av_st_item it, bad;
    unsigned char *old, *now;
    size_t n_old, n_now;
    av_st_file *f = NULL;
    float v[4] = {0, 0, 0, 0};
    int rc;
    memset(&it, 0, sizeof it);
    memset(&bad, 0, sizeof bad);
    it.name = "w"; it.ndim = 2; it.shape = shape; it.data = one;
    strcpy(path, tpath("atomic.safetensors")); /* tpath's buffers get reused */
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_OK, "atomic: first save: %s", av_error());
    old = read_bytes(path, &n_old);

    /* bad arguments are caught before anything is written */
    CHECK(av_st_save(path, &bad, 1, NULL, NULL, 0) == AV_ERR_ARG && has(av_error(), "item 0"),
          "NULL name: %s", av_error());
    it.name = "__metadata__";
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_ERR_ARG, "reserved name accepted");
    it.name = "bad\xff";
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_ERR_ARG, "non-UTF-8 name accepted");
    it.name = "w";
    {
        av_st_item twice[2];
        twice[0] = twice[1] = it;
        CHECK(av_st_save(path, twice, 2, NULL, NULL, 0) == AV_ERR_ARG && has(av_error(), "duplicate name 'w'"),
              "duplicate names: %s", av_error());
    }
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 1) == AV_ERR_ARG, "NULL metadata arrays accepted");
    CHECK(av_st_save(path, &it, 1, keys, vals, 2) == AV_ERR_ARG && has(av_error(), "duplicate metadata key 'k'"),
          "duplicate metadata keys: %s", av_error());
    it.dtype = 4;
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_ERR_ARG && has(av_error(), "unknown dtype 4"),
          "dtype 4: %s", av_error());
    it.dtype = -1;
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_ERR_ARG && has(av_error(), "unknown dtype -1"),
          "dtype -1: %s", av_error());
    it.dtype = AV_DTYPE_F32;
    it.shape = huge;
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_ERR_ARG && has(av_error(), "too large for attnvae"),
          "2^31 elements: %s", av_error());
    it.ndim = 1;
    it.shape = negative;
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_ERR_ARG && has(av_error(), "negative"),
          "negative dim: %s", av_error());
    it.ndim = 2;
    it.shape = shape;

    /* a missing directory: IO error naming the path, nothing created */
    rc = av_st_save(tpath("no_such_dir/x.safetensors"), &it, 1, NULL, NULL, 0);
    CHECK(rc == AV_ERR_IO && has(av_error(), "no_such_dir") && has(av_error(), "cannot create"),
          "missing dir: rc %d (%s)", rc, av_error());
#ifdef T_POSIX
    {
        struct rlimit lim, was;
        it.data = two;
        /* a write fails (the file size limit): the tmp file is removed */
        signal(SIGXFSZ, SIG_IGN);
        if (getrlimit(RLIMIT_FSIZE, &was) == 0) {
            lim = was;
            lim.rlim_cur = 64;
            CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0, "setrlimit");
            rc = av_st_save(path, &it, 1, NULL, NULL, 0);
            setrlimit(RLIMIT_FSIZE, &was);
            CHECK(rc == AV_ERR_IO && has(av_error(), "write failed"), "size limit: rc %d (%s)", rc, av_error());
        }
        signal(SIGXFSZ, SIG_DFL);
        /* the target is a non-empty directory: rename fails, tmp removed */
        CHECK(mkdir(tpath("dir.safetensors"), 0755) == 0, "mkdir dir.safetensors");
        write_bytes(tpath("dir.safetensors/keep"), "x", 1);
        CHECK(av_st_save(tpath("dir.safetensors"), &it, 1, NULL, NULL, 0) == AV_ERR_IO &&
              has(av_error(), "rename"), "rename over dir: %s", av_error());
        CHECK(stray_tmp("dir.safetensors", 1) == 0, "rename failure left tmp");
        remove(tpath("dir.safetensors/keep"));
        rmdir(tpath("dir.safetensors"));
    }
#endif
    now = read_bytes(path, &n_now);
    CHECK(old && now && n_old == n_now && memcmp(old, now, n_old) == 0, "old file changed by failed saves");
    CHECK(stray_tmp("atomic.safetensors", 1) == 0, "tmp file left behind");
    free(old);
    free(now);

    /* a successful save replaces the file */
    it.data = two;
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_OK, "overwrite: %s", av_error());
    CHECK(av_st_open(path, &f) == AV_OK && av_st_read(f, 0, v, 4) == AV_OK && v[0] == 5 && v[3] == 8,
          "overwrite: reads %g %g", v[0], v[3]);
    av_st_close(f);
}

/* ---- durable saves --------------------------------------------------------- */
#ifdef __linux__
/* The library's fsync calls come here (a program's own definition wins over
   libc's): each is logged with the path its descriptor leads to and the
   size that the save's target has at that moment. The tests need no
   durability, so it returns at once. */
static char t_sync_path[4][512];
static long t_sync_target_size[4];
static int t_syncs;
static const char *t_sync_target;
#ifdef __cplusplus
extern "C"
#endif
int fsync(int fd) {
    char link[64];
    struct stat st;
    ssize_t n;
    if (t_syncs < 4) {
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        n = readlink(link, t_sync_path[t_syncs], sizeof t_sync_path[0] - 1);
        t_sync_path[t_syncs][n > 0 ? n : 0] = 0;
        t_sync_target_size[t_syncs] = t_sync_target && stat(t_sync_target, &st) == 0 ? (long)st.st_size : -1;
    }
    t_syncs++;
    return 0;
}

/* A save flushes its tmp file while it still has the tmp name (before the
   rename), then the directory once the target has its new contents. Its tmp
   name is its own: a file at the old shared name "<path>.tmp" is left alone. */
static void test_durable(void) {
    char path[512], shared[512], dir[512], prefix[600];
    static const int shape[1] = {3};
    static const float v[3] = {1, 2, 3};
    av_st_item it;
    size_t n;
    unsigned char *raw, *kept;
    memset(&it, 0, sizeof it);
    it.name = "w"; it.ndim = 1; it.shape = shape; it.data = v;
    strcpy(path, tpath("durable.safetensors"));
    strcpy(shared, tpath("durable.safetensors.tmp"));
    remove(path);
    write_bytes(shared, "keep", 4);
    CHECK(realpath(tmp_dir, dir) != NULL, "realpath %s", tmp_dir);
    snprintf(prefix, sizeof prefix, "%s/durable.safetensors.tmp.%ld.", dir, (long)getpid());
    t_sync_target = path;
    t_syncs = 0;
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_OK, "durable save: %s", av_error());
    t_sync_target = NULL;
    raw = read_bytes(path, &n);
    CHECK(t_syncs == 2, "durable: %d fsync calls, want 2 (the file, the directory)", t_syncs);
    CHECK(strncmp(t_sync_path[0], prefix, strlen(prefix)) == 0 && t_sync_target_size[0] == -1,
          "durable: first fsync of '%s' (target size %ld), want the tmp file %s* before the rename",
          t_sync_path[0], t_sync_target_size[0], prefix);
    CHECK(strcmp(t_sync_path[1], dir) == 0 && raw && t_sync_target_size[1] == (long)n,
          "durable: second fsync of '%s' (target size %ld), want the directory %s after the rename",
          t_sync_path[1], t_sync_target_size[1], dir);
    kept = read_bytes(shared, &n);
    CHECK(kept && n == 4 && memcmp(kept, "keep", 4) == 0, "durable: %s was overwritten", shared);
    remove(shared);
    CHECK(stray_tmp("durable.safetensors", 0) == 0, "durable: tmp left");
    free(raw);
    free(kept);
}
#endif

#ifdef T_POSIX
/* Two writers save checkpoints to one file at once, each version with its
   own values; the parent kills both with SIGKILL at a random moment, 50
   times. Each time the file must load and hold one whole version. A writer
   killed mid-save leaves its tmp file (documented); the parent removes it. */
#define KILL_N 4096
static void kill_fill(av_model *m, long version) {
    av_tensor *w = av_model_find(m, "w");
    int i;
    for (i = 0; i < KILL_N; i++) w->data[i] = (float)((version * 7919 + i) % 65521);
    av_model_find(m, "version")->data[0] = (float)version;
}
static void test_kill(void) {
    char path[512];
    av_model *m = av_model_new(1), *got = av_model_new(2);
    int round, k, i, bad, cut = 0, status, completed = 0, n_tmp;
    long version, last = 0;
    uint32_t seed = 99;
    pid_t pid[2];
    struct timespec pause;
    av_param(m, "w", AV_INIT_ZEROS, 0, 1, KILL_N);
    av_param(m, "version", AV_INIT_ZEROS, 0, 1, 1);
    av_param(got, "w", AV_INIT_ZEROS, 0, 1, KILL_N);
    av_param(got, "version", AV_INIT_ZEROS, 0, 1, 1);
    strcpy(path, tpath("kill.safetensors"));
    stray_tmp("kill.safetensors", 1);
    kill_fill(m, 0);
    CHECK(av_checkpoint_save(m, path) == AV_OK, "kill: first save: %s", av_error());
    for (round = 0; round < 50; round++) {
        fflush(stdout); /* the writers must not print the parent's buffer again */
        for (k = 0; k < 2; k++)
            if ((pid[k] = fork()) == 0) {
                for (version = 1; version < 100000; version++) {
                    kill_fill(m, round * 300000L + (k + 1) * 100000L + version);
                    if (av_checkpoint_save(m, path) != AV_OK) {
                        printf("FAIL kill: writer %d: %s\n", k, av_error());
                        fflush(stdout);
                        _exit(1);
                    }
                }
                _exit(0);
            }
        seed = seed * 1664525u + 1013904223u;
        pause.tv_sec = 0;
        pause.tv_nsec = (long)(seed >> 8) % 3000000; /* 0 to 3 ms */
        nanosleep(&pause, NULL);
        for (k = 0; k < 2; k++) {
            kill(pid[k], SIGKILL);
            CHECK(waitpid(pid[k], &status, 0) == pid[k] && WIFSIGNALED(status),
                  "kill: writer %d ended by itself (status %d)", k, status);
        }
        if (av_checkpoint_load(got, path) != AV_OK) {
            CHECK(0, "kill: round %d: the file does not load: %s", round, av_error());
            continue;
        }
        version = (long)av_model_find(got, "version")->data[0];
        for (i = 0, bad = 0; i < KILL_N; i++)
            bad += av_model_find(got, "w")->data[i] != (float)((version * 7919 + i) % 65521);
        CHECK(bad == 0, "kill: round %d: version %ld has %d wrong values", round, version, bad);
        /* a save of this round, or the file as the last round left it */
        CHECK(version / 300000 == round || version == last, "kill: round %d: version %ld was never saved",
              round, version);
        completed += version / 300000 == round;
        last = version;
        n_tmp = stray_tmp("kill.safetensors", 1);
        CHECK(n_tmp <= 2, "kill: round %d: %d tmp files", round, n_tmp);
        cut += n_tmp > 0;
    }
    printf("info: 2 writers killed 50 times: %d times mid-save (tmp file left), %d times the file held "
           "a version of that round\n", cut, completed);
    av_model_free(m);
    av_model_free(got);
}
#endif

/* ---- out of memory ------------------------------------------------------- */
/* Makes each allocation of a call fail in turn: the call must return
   AV_ERR_NOMEM with a message, leak nothing, and leave no file behind. */
static void test_nomem(void) {
    const char *path = tpath("c_written.safetensors"), *idx = tpath("u8.idx");
    char out[512];
    int call, rc;
    long k, live;
    av_st_file *f;
    av_idx x;
    strcpy(out, tpath("nomem.safetensors"));
    remove(out);
    for (call = 0; call < 3; call++)
        for (k = 0;; k++) {
            live = t_alloc_live;
            t_alloc_n = 0;
            t_alloc_fail = k;
            f = NULL;
            rc = call == 0 ? av_st_open(path, &f) : call == 1 ? fx_save(out) : av_idx_load(idx, &x);
            t_alloc_fail = -1;
            if (t_alloc_n <= k) { /* every allocation has failed once */
                CHECK(rc == AV_OK, "nomem: call %d without failures: %s", call, av_error());
                av_st_close(f);
                if (call == 2) av_idx_free(&x);
                break;
            }
            CHECK(rc == AV_ERR_NOMEM && has(av_error(), "out of memory"),
                  "nomem: call %d, allocation %ld failed: rc %d (%s)", call, k, rc, av_error());
            CHECK(t_alloc_live == live, "nomem: call %d, allocation %ld failed: %ld blocks leaked", call, k,
                  t_alloc_live - live);
            CHECK(call != 1 || (!exists(out) && stray_tmp("nomem.safetensors", 1) == 0),
                  "nomem: a failed save left a file");
        }
    remove(out);
}

/* ---- fuzz: mutate and truncate a valid file -------------------------- */
/* Opens path twice; both results must agree, and a success must be usable,
   a failure must carry a message naming the file. Returns 1 if opened. */
static int fuzz_open(const char *path, int *bad) {
    av_st_file *f = NULL, *g = NULL;
    int rc = av_st_open(path, &f), rc2 = av_st_open(path, &g), i;
    av_st_close(g);
    if (rc != rc2 || (rc != AV_OK && (rc != AV_ERR_FORMAT || !has(av_error(), path) || f))) {
        if (!*bad) printf("fuzz: %s: rc %d/%d: %s\n", path, rc, rc2, av_error());
        ++*bad;
    }
    for (i = 0; rc == AV_OK && i < av_st_count(f); i++) {
        int64_t n = av_st_numel(f, i);
        float *buf = (float *)malloc((size_t)n * sizeof(float) + 1);
        if (av_st_read(f, i, buf, n) != AV_OK || av_st_find(f, av_st_name(f, i)) != i) ++*bad;
        free(buf);
    }
    av_st_close(f);
    return rc == AV_OK;
}

static void test_fuzz(void) {
    static const unsigned char repl[] = {0,   ' ', '"', '\\', '{', '}', '[', ']', ',',
                                         ':', '0', '9', '-', 'e',  'x', 0x80, 0xff};
    static const int s1[1] = {3}, s4[4] = {1, 2, 1, 2};
    static const float d[4] = {1, 2, 3, 4};
    const char *src = tpath("fuzz_src.safetensors"), *dst = tpath("fuzz.safetensors");
    static const char *const mk[1] = {"k"}, *const mv[1] = {"v\\\""};
    av_st_item items[3];
    unsigned char *raw, *mut;
    size_t n, hdr, pos, r, len;
    int bad = 0, ok = 0, tried = 0;
    uint32_t seed = 12345;
    memset(items, 0, sizeof items);
    items[0].name = "a"; items[0].ndim = 1; items[0].shape = s1; items[0].data = d;
    items[1].name = "s"; items[1].ndim = 0; items[1].shape = NULL; items[1].data = d;
    items[2].name = "c"; items[2].ndim = 4; items[2].shape = s4; items[2].data = d;
    CHECK(av_st_save(src, items, 3, mk, mv, 1) == AV_OK, "fuzz source: %s", av_error());
    raw = read_bytes(src, &n);
    if (!raw) return;
    mut = (unsigned char *)malloc(n);
    hdr = 8 + (raw[0] | (size_t)raw[1] << 8);
    for (pos = 0; pos < hdr; pos++)
        for (r = 0; r <= sizeof repl; r++) {
            memcpy(mut, raw, n);
            mut[pos] = r < sizeof repl ? repl[r] : (unsigned char)(raw[pos] ^ 1);
            if (mut[pos] == raw[pos]) continue;
            write_bytes(dst, mut, n);
            ok += fuzz_open(dst, &bad);
            tried++;
        }
    for (r = 0; r < 3000; r++) { /* a few random bytes at once, fixed seed */
        int k, m = 1 + (int)(r % 4);
        memcpy(mut, raw, n);
        for (k = 0; k < m; k++) {
            seed = seed * 1664525u + 1013904223u;
            pos = (seed >> 8) % hdr;
            seed = seed * 1664525u + 1013904223u;
            mut[pos] = (unsigned char)(seed >> 24);
        }
        write_bytes(dst, mut, n);
        ok += fuzz_open(dst, &bad);
        tried++;
    }
    CHECK(bad == 0, "fuzz: %d of %d mutations misbehaved", bad, tried);
    CHECK(ok < tried, "fuzz: every mutation was accepted (%d)", ok);
    for (len = 0, bad = 0; len < n; len++) { /* every truncation must fail */
        write_bytes(dst, raw, len);
        if (fuzz_open(dst, &bad)) bad++;
    }
    CHECK(bad == 0, "fuzz: %d truncations misbehaved", bad);
    free(mut);
    free(raw);
}

/* ---- IDX ------------------------------------------------------------- */
static void write_idx(const char *name, int type, int ndim, const uint32_t *dims, const void *data,
                      size_t bytes) {
    unsigned char b[256];
    int i;
    b[0] = 0; b[1] = 0; b[2] = (unsigned char)type; b[3] = (unsigned char)ndim;
    for (i = 0; i < ndim; i++) {
        b[4 + 4 * i] = (unsigned char)(dims[i] >> 24);
        b[5 + 4 * i] = (unsigned char)(dims[i] >> 16);
        b[6 + 4 * i] = (unsigned char)(dims[i] >> 8);
        b[7 + 4 * i] = (unsigned char)dims[i];
    }
    memcpy(b + 4 + 4 * ndim, data, bytes);
    write_bytes(tpath(name), b, 4 + 4 * (size_t)ndim + bytes);
}
/* big-endian bytes of a 32-bit or 64-bit pattern */
static void put_be(unsigned char *p, uint64_t v, int n) {
    int i;
    for (i = 0; i < n; i++) p[i] = (unsigned char)(v >> 8 * (n - 1 - i));
}
static void expect_idx_bad_path(const char *path, int code, const char *want) {
    av_idx x;
    int rc = av_idx_load(path, &x);
    CHECK(rc == code && x.data == NULL && x.ndim == 0, "idx %s: rc %d", path, rc);
    CHECK(has(av_error(), want) && has(av_error(), path), "idx %s: message \"%s\" lacks \"%s\"",
          path, av_error(), want);
}

static void expect_idx_bad(const char *name, int code, const char *want) {
    expect_idx_bad_path(tpath(name), code, want);
}

static void test_idx(void) {
    static const uint32_t d3[3] = {2, 3, 4}, d1[1] = {4}, d2[2] = {2, 2};
    unsigned char u8[24], b[64];
    av_idx x;
    int i;
    uint32_t u;
    for (i = 0; i < 24; i++) u8[i] = (unsigned char)(i * 10);
    write_idx("u8.idx", 0x08, 3, d3, u8, 24);
    CHECK(av_idx_load(tpath("u8.idx"), &x) == AV_OK, "u8: %s", av_error());
    CHECK(x.ndim == 3 && x.dims[0] == 2 && x.dims[1] == 3 && x.dims[2] == 4 && x.dims[3] == 0 &&
          x.count == 24, "u8 dims");
    for (i = 0; i < 24 && x.data; i++) CHECK(x.data[i] == i * 10, "u8[%d] = %g", i, x.data[i]);
    av_idx_free(&x);
    av_idx_free(&x); /* freeing twice is harmless */

    { /* i8, i16, i32: sign handling */
        static const unsigned char i8[4] = {0x80, 0xff, 0, 0x7f};
        static const float w8[4] = {-128, -1, 0, 127}, w16[4] = {-32768, -2, 300, 32767},
                           w32[4] = {-2147483648.0f, -5, 70000, 2147483647.0f};
        write_idx("i8.idx", 0x09, 1, d1, i8, 4);
        CHECK(av_idx_load(tpath("i8.idx"), &x) == AV_OK, "i8: %s", av_error());
        for (i = 0; i < 4 && x.data; i++) CHECK(x.data[i] == w8[i], "i8[%d] = %g", i, x.data[i]);
        av_idx_free(&x);
        for (i = 0; i < 4; i++) put_be(b + 2 * i, (uint16_t)(int16_t)w16[i], 2);
        write_idx("i16.idx", 0x0B, 1, d1, b, 8);
        CHECK(av_idx_load(tpath("i16.idx"), &x) == AV_OK, "i16: %s", av_error());
        for (i = 0; i < 4 && x.data; i++) CHECK(x.data[i] == w16[i], "i16[%d] = %g", i, x.data[i]);
        av_idx_free(&x);
        put_be(b, 0x80000000u, 4); put_be(b + 4, (uint32_t)-5, 4);
        put_be(b + 8, 70000, 4); put_be(b + 12, 0x7fffffffu, 4);
        write_idx("i32.idx", 0x0C, 1, d1, b, 16);
        CHECK(av_idx_load(tpath("i32.idx"), &x) == AV_OK, "i32: %s", av_error());
        for (i = 0; i < 4 && x.data; i++) CHECK(x.data[i] == w32[i], "i32[%d] = %g", i, x.data[i]);
        av_idx_free(&x);
    }
    { /* f32 and f64, big-endian */
        static const float f[4] = {1.5f, -2.25f, 1e-3f, 3e38f};
        static const double g[4] = {0.1, -1e300, 1e300, 2.5};
        uint64_t w;
        for (i = 0; i < 4; i++) { memcpy(&u, &f[i], 4); put_be(b + 4 * i, u, 4); }
        write_idx("f32.idx", 0x0D, 2, d2, b, 16);
        CHECK(av_idx_load(tpath("f32.idx"), &x) == AV_OK && x.ndim == 2, "f32: %s", av_error());
        for (i = 0; i < 4 && x.data; i++) CHECK(x.data[i] == f[i], "f32[%d] = %g", i, x.data[i]);
        av_idx_free(&x);
        for (i = 0; i < 4; i++) { memcpy(&w, &g[i], 8); put_be(b + 8 * i, w, 8); }
        write_idx("f64.idx", 0x0E, 1, d1, b, 32);
        CHECK(av_idx_load(tpath("f64.idx"), &x) == AV_OK, "f64: %s", av_error());
        CHECK(x.data && x.data[0] == 0.1f && isinf(x.data[1]) && x.data[1] < 0 && isinf(x.data[2]) &&
              x.data[3] == 2.5f, "f64 values");
        av_idx_free(&x);
    }
    { /* corrupt variants */
        static const uint32_t zero[1] = {0}, big[1] = {0x80000000u}, five[5] = {1, 1, 1, 1, 1},
                              huge[4] = {0x7fffffff, 0x7fffffff, 0x7fffffff, 4};
        unsigned char raw[40] = {1, 0, 8, 1, 0, 0, 0, 1, 7};
        write_bytes(tpath("magic.idx"), raw, 9);
        expect_idx_bad("magic.idx", AV_ERR_FORMAT, "magic");
        write_idx("type.idx", 0x0A, 1, d1, u8, 4);
        expect_idx_bad("type.idx", AV_ERR_FORMAT, "type code 0x0a");
        write_idx("ndim0.idx", 0x08, 0, d1, u8, 4);
        expect_idx_bad("ndim0.idx", AV_ERR_FORMAT, "0 dims");
        write_idx("ndim5.idx", 0x08, 5, five, u8, 1);
        expect_idx_bad("ndim5.idx", AV_ERR_FORMAT, "5 dims");
        write_idx("dim0.idx", 0x08, 1, zero, u8, 0);
        expect_idx_bad("dim0.idx", AV_ERR_FORMAT, "dim 0 is 0");
        write_idx("dimbig.idx", 0x08, 1, big, u8, 4);
        expect_idx_bad("dimbig.idx", AV_ERR_FORMAT, "dim 0 is 2147483648");
        write_idx("overflow.idx", 0x0E, 4, huge, u8, 4);
        expect_idx_bad("overflow.idx", AV_ERR_FORMAT, "too large");
        write_idx("short.idx", 0x08, 3, d3, u8, 23);
        expect_idx_bad("short.idx", AV_ERR_FORMAT, "truncated");
        write_idx("short_f32.idx", 0x0D, 2, d2, b, 15);
        expect_idx_bad("short_f32.idx", AV_ERR_FORMAT, "truncated");
        write_idx("long.idx", 0x08, 1, d1, u8, 5);
        expect_idx_bad("long.idx", AV_ERR_FORMAT, "trailing bytes");
        raw[0] = 0; raw[3] = 2;
        write_bytes(tpath("cutdims.idx"), raw, 6);
        expect_idx_bad("cutdims.idx", AV_ERR_FORMAT, "truncated file (in the dims)");
        write_bytes(tpath("empty.idx"), raw, 0);
        expect_idx_bad("empty.idx", AV_ERR_FORMAT, "truncated file (in the magic");
        expect_idx_bad("missing.idx", AV_ERR_IO, "cannot open");
        /* sizes come from the file, not from the dims: an 8-byte file once
           asked for 8 GiB and a 12-byte one for 2 TiB */
        write_bytes(tpath("asks_8g.idx"), "\0\0\x0d\x01\x7f\xff\xff\xff", 8);
        t_alloc_max = 0;
        expect_idx_bad("asks_8g.idx", AV_ERR_FORMAT, "truncated file (0 bytes of data, the dims need 8589934588)");
        CHECK(t_alloc_max < 65536, "asks_8g.idx: asked for %lu bytes", (unsigned long)t_alloc_max);
        write_bytes(tpath("asks_2t.idx"), "\0\0\x08\x02\x7f\xff\xff\xff\0\0\x01\0", 12);
        t_alloc_max = 0;
        expect_idx_bad("asks_2t.idx", AV_ERR_FORMAT, "truncated");
        CHECK(t_alloc_max < 65536, "asks_2t.idx: asked for %lu bytes", (unsigned long)t_alloc_max);
#ifdef T_POSIX
        expect_idx_bad_path("/dev/zero", AV_ERR_FORMAT, "unknown IDX type code 0x00");
#endif
    }
}

int main(int argc, char **argv) {
    int i;
    for (i = 1; i < argc; i++) /* options such as --quick do not apply here */
        if (strncmp(argv[i], "--", 2) != 0) tmp_dir = argv[i];
    test_roundtrip();
    test_python_fixture();
    test_dtypes_python();
    test_dtypes_written();
    test_dtype_model();
    test_corrupt();
    test_unbounded();
    test_meta_many();
    test_atomic();
#ifdef __linux__
    test_durable();
#endif
#ifdef T_POSIX
    test_kill();
#endif
    test_fuzz();
    test_idx();
    test_nomem();
    return t_summary();
}
