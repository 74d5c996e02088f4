/* libFuzzer target (make fuzz): the IDX reader on any bytes, read from
   memory as a file. An accepted file has dims whose product is its count;
   a refused one leaves nothing allocated and says why, naming the file. */
#define _POSIX_C_SOURCE 200809L /* fmemopen */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include <stdlib.h>

#define REQUIRE(cond) do { if (!(cond)) { fprintf(stderr, "fuzz_idx: %s\n", #cond); abort(); } } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FILE *fp = fmemopen((void *)(uintptr_t)data, size, "rb");
    av_idx x;
    int rc, i;
    int64_t count = 1;
    double sum = 0;
    if (!fp) return 0;
    memset(&x, 0, sizeof x);
    rc = av__idx_read(fp, "fuzz-input", &x);
    fclose(fp);
    if (rc != AV_OK) {
        REQUIRE(rc == AV_ERR_FORMAT || rc == AV_ERR_IO || rc == AV_ERR_NOMEM);
        REQUIRE(strstr(av_error(), "fuzz-input") != NULL);
        av_idx_free(&x);
        return 0;
    }
    REQUIRE(x.ndim >= 1 && x.ndim <= 4 && x.data);
    for (i = 0; i < x.ndim; i++) count *= x.dims[i];
    REQUIRE(count == x.count && (size_t)count < size);
    for (i = 0; i < x.count; i++) sum += x.data[i]; /* every value was written */
    (void)sum;
    av_idx_free(&x);
    return 0;
}
