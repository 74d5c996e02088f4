/* File I/O tests: safetensors round trips, a fixture written by
   tests/make_safetensors.py, corrupt files, atomic saves, a small fuzz pass
   and IDX files.
   usage: test_io [python-fixture [tmp-dir]]   (defaults in main; the tmp
   dir must exist) */
#define _POSIX_C_SOURCE 200809L /* mkdir, symlink, lstat for atomicity tests */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#if defined(__unix__) || defined(__APPLE__)
#include <sys/stat.h>
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
    CHECK(!exists(tpath("c_written.safetensors.tmp")), "tmp file left behind");
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
          av_st_numel(f, FX_N) == -1, "getters with bad index");
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

static void test_python_fixture(const char *path) {
    av_st_file *f = NULL;
    int rc = av_st_open(path, &f);
    CHECK(rc == AV_OK, "python fixture %s: %s (run tests/make_safetensors.py write)", path, av_error());
    if (!f) return;
    fx_check(f, 0, "python fixture");
    av_st_close(f);
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
    {"dtype_f16", "{\"w\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "\"F16\""},
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
    {"shape_overflow", "{\"w\":" T_ENTRY("[4294967296,4294967296,4294967296]", "[0,4]") "}", 4, "overflow"},
    {"bytes_overflow", "{\"w\":" T_ENTRY("[2305843009213693952]", "[0,4]") "}", 4, "overflow"},
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
}

/* ---- atomic saves ---------------------------------------------------- */
static void test_atomic(void) {
    char path[512], tmp[512];
    static const int shape[2] = {2, 2};
    static const float one[4] = {1, 2, 3, 4}, two[4] = {5, 6, 7, 8};
    av_st_item it = {"w", 2, shape, one}, bad = {NULL, 0, NULL, NULL};
    unsigned char *old, *now;
    size_t n_old, n_now;
    av_st_file *f = NULL;
    float v[4] = {0, 0, 0, 0};
    int rc;
    strcpy(path, tpath("atomic.safetensors")); /* tpath's buffers get reused */
    strcpy(tmp, tpath("atomic.safetensors.tmp"));
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
        CHECK(av_st_save(path, twice, 2, NULL, NULL, 0) == AV_ERR_ARG && has(av_error(), "duplicate"),
              "duplicate names: %s", av_error());
    }
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 1) == AV_ERR_ARG, "NULL metadata arrays accepted");

    /* a missing directory: IO error naming the path, nothing created */
    rc = av_st_save(tpath("no_such_dir/x.safetensors"), &it, 1, NULL, NULL, 0);
    CHECK(rc == AV_ERR_IO && has(av_error(), "no_such_dir"), "missing dir: rc %d (%s)", rc, av_error());
    CHECK(!exists(tpath("no_such_dir/x.safetensors.tmp")), "missing dir: tmp exists");
#ifdef T_POSIX
    {
        struct stat st;
        it.data = two;
        /* tmp path is a directory: fopen fails, the directory must survive */
        CHECK(mkdir(tmp, 0755) == 0, "mkdir %s", tmp);
        CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_ERR_IO && has(av_error(), "cannot create"),
              "tmp is a dir: %s", av_error());
        CHECK(stat(tmp, &st) == 0 && S_ISDIR(st.st_mode), "tmp directory was removed");
        rmdir(tmp);
#ifdef __linux__
        /* tmp path leads to /dev/full: the write fails, the link is removed */
        if (symlink("/dev/full", tmp) == 0) {
            CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_ERR_IO && has(av_error(), "failed"),
                  "/dev/full: %s", av_error());
            CHECK(lstat(tmp, &st) != 0, "/dev/full: tmp left behind");
            unlink(tmp);
        }
#endif
        /* the target is a non-empty directory: rename fails, tmp removed */
        CHECK(mkdir(tpath("dir.safetensors"), 0755) == 0, "mkdir dir.safetensors");
        write_bytes(tpath("dir.safetensors/keep"), "x", 1);
        CHECK(av_st_save(tpath("dir.safetensors"), &it, 1, NULL, NULL, 0) == AV_ERR_IO &&
              has(av_error(), "rename"), "rename over dir: %s", av_error());
        CHECK(!exists(tpath("dir.safetensors.tmp")), "rename failure left tmp");
        remove(tpath("dir.safetensors/keep"));
        rmdir(tpath("dir.safetensors"));
    }
#endif
    now = read_bytes(path, &n_now);
    CHECK(old && now && n_old == n_now && memcmp(old, now, n_old) == 0, "old file changed by failed saves");
    CHECK(!exists(tmp), "tmp file left behind");
    free(old);
    free(now);

    /* a successful save replaces the file */
    it.data = two;
    CHECK(av_st_save(path, &it, 1, NULL, NULL, 0) == AV_OK, "overwrite: %s", av_error());
    CHECK(av_st_open(path, &f) == AV_OK && av_st_read(f, 0, v, 4) == AV_OK && v[0] == 5 && v[3] == 8,
          "overwrite: reads %g %g", v[0], v[3]);
    av_st_close(f);
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
static void expect_idx_bad(const char *name, int code, const char *want) {
    av_idx x;
    int rc = av_idx_load(tpath(name), &x);
    CHECK(rc == code && x.data == NULL && x.ndim == 0, "idx %s: rc %d", name, rc);
    CHECK(has(av_error(), want) && has(av_error(), name), "idx %s: message \"%s\" lacks \"%s\"",
          name, av_error(), want);
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
    }
}

int main(int argc, char **argv) {
    const char *fixture = "build/fixture_py.safetensors";
    int i, k = 0;
    for (i = 1; i < argc; i++) /* options such as --quick do not apply here */
        if (strncmp(argv[i], "--", 2) != 0) {
            if (k++ == 0) fixture = argv[i];
            else tmp_dir = argv[i];
        }
    test_roundtrip();
    test_python_fixture(fixture);
    test_corrupt();
    test_atomic();
    test_fuzz();
    test_idx();
    return t_summary();
}
