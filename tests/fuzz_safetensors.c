/* libFuzzer target (make fuzz): the safetensors reader on any bytes, read
   from memory as a file. Whatever it accepts must be whole: every tensor
   readable, names found again, counts within attnvae's limits; and written
   back with av_st_save in the same dtypes, it must read back the same
   (NaN as NaN of the same sign). Whatever it refuses must say why, naming
   the file. */
#define _POSIX_C_SOURCE 200809L /* fmemopen, getpid */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#define REQUIRE(cond) do { if (!(cond)) { fprintf(stderr, "fuzz_safetensors: %s\n", #cond); abort(); } } while (0)

static int same(float a, float b) {
    return isnan(a) ? isnan(b) && !signbit(a) == !signbit(b) : memcmp(&a, &b, sizeof a) == 0;
}

/* Saves what was read (items: names, shapes, dtypes, values of f) and
   checks that the file reads back the same. */
static void round_trip(const av_st_file *f, const av_st_item *items) {
    char path[64];
    av_st_file *g = NULL;
    int i, j, d;
    int64_t k;
    snprintf(path, sizeof path, "/tmp/fuzz_safetensors.%ld", (long)getpid());
    REQUIRE(av_st_save(path, items, av_st_count(f), NULL, NULL, 0) == AV_OK);
    REQUIRE(av_st_open(path, &g) == AV_OK && av_st_count(g) == av_st_count(f));
    for (i = 0; i < av_st_count(f); i++) {
        int64_t n = av_st_numel(f, i);
        float *v = (float *)malloc(sizeof(float) * (size_t)(n + 1));
        j = av_st_find(g, items[i].name);
        REQUIRE(j == i && av_st_dtype(g, j) == items[i].dtype && av_st_ndim(g, j) == items[i].ndim);
        for (d = 0; d < items[i].ndim; d++) REQUIRE(av_st_shape(g, j)[d] == items[i].shape[d]);
        REQUIRE(v && av_st_read(g, j, v, n) == AV_OK);
        for (k = 0; k < n; k++) REQUIRE(same(items[i].data[k], v[k]));
        free(v);
    }
    av_st_close(g);
    remove(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FILE *fp = fmemopen((void *)(uintptr_t)data, size, "rb");
    av_st_file *f = NULL;
    av_st_item *items;
    int rc, i, d;
    if (!fp) return 0;
    rc = av__st_read_file(fp, "fuzz-input", &f);
    fclose(fp);
    if (rc != AV_OK) {
        REQUIRE(f == NULL && (rc == AV_ERR_FORMAT || rc == AV_ERR_IO || rc == AV_ERR_NOMEM));
        REQUIRE(strstr(av_error(), "fuzz-input") != NULL);
        return 0;
    }
    items = (av_st_item *)calloc((size_t)av_st_count(f) + 1, sizeof *items);
    REQUIRE(items);
    for (i = 0; i < av_st_count(f); i++) {
        int64_t n = av_st_numel(f, i), prod = 1;
        float *v;
        const int *shape = av_st_shape(f, i);
        items[i].name = av_st_name(f, i);
        items[i].ndim = av_st_ndim(f, i);
        items[i].shape = shape;
        items[i].dtype = av_st_dtype(f, i);
        REQUIRE(n >= 0 && n <= INT_MAX && av_st_dtype(f, i) >= 0 && av_st_dtype(f, i) <= AV_DTYPE_F64);
        REQUIRE(av_st_ndim(f, i) >= 0 && av_st_ndim(f, i) <= AV_ST_MAX_DIMS);
        for (d = 0; d < av_st_ndim(f, i); d++) {
            REQUIRE(shape[d] >= 0);
            prod = shape[d] == 0 || prod == 0 ? 0 : prod * shape[d] > INT_MAX ? INT_MAX + 1LL : prod * shape[d];
        }
        REQUIRE(prod == n);
        REQUIRE(av_st_find(f, av_st_name(f, i)) == i);
        (void)av_st_meta(f, av_st_name(f, i));
        v = (float *)malloc(sizeof(float) * (size_t)(n + 1));
        REQUIRE(v && av_st_read(f, i, v, n) == AV_OK);
        REQUIRE(n == 0 || av_st_read(f, i, v, n - 1) == AV_ERR_MISMATCH);
        items[i].data = v;
    }
    round_trip(f, items);
    for (i = 0; i < av_st_count(f); i++) free((void *)(uintptr_t)items[i].data);
    free(items);
    REQUIRE(av_st_find(f, "") == -1 || av_st_name(f, av_st_find(f, ""))[0] == 0);
    (void)av_st_meta(f, "format");
    (void)av_st_meta(f, "");
    av_st_close(f);
    return 0;
}
