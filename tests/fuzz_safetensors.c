/* libFuzzer target (make fuzz): the safetensors reader on any bytes, read
   from memory as a file. Whatever it accepts must be whole: every tensor
   readable, names found again, counts within attnvae's limits; whatever it
   refuses must say why, naming the file. */
#define _POSIX_C_SOURCE 200809L /* fmemopen */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include <limits.h>
#include <stdlib.h>

#define REQUIRE(cond) do { if (!(cond)) { fprintf(stderr, "fuzz_safetensors: %s\n", #cond); abort(); } } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FILE *fp = fmemopen((void *)(uintptr_t)data, size, "rb");
    av_st_file *f = NULL;
    int rc, i, d;
    if (!fp) return 0;
    rc = av__st_read_file(fp, "fuzz-input", &f);
    fclose(fp);
    if (rc != AV_OK) {
        REQUIRE(f == NULL && (rc == AV_ERR_FORMAT || rc == AV_ERR_IO || rc == AV_ERR_NOMEM));
        REQUIRE(strstr(av_error(), "fuzz-input") != NULL);
        return 0;
    }
    for (i = 0; i < av_st_count(f); i++) {
        int64_t n = av_st_numel(f, i), prod = 1;
        float *v;
        const int *shape = av_st_shape(f, i);
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
        free(v);
    }
    REQUIRE(av_st_find(f, "") == -1 || av_st_name(f, av_st_find(f, ""))[0] == 0);
    (void)av_st_meta(f, "format");
    (void)av_st_meta(f, "");
    av_st_close(f);
    return 0;
}
