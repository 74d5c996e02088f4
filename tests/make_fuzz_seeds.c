/* Seed files for the fuzz targets (make fuzz), made by the library's own
   writer: safetensors of every dtype with metadata, scalars and empty
   tensors; their JSON headers; IDX files of every type. And a few edge
   cases. usage: make_fuzz_seeds DIR (writes DIR/corpus_fuzz_*) */
#define _POSIX_C_SOURCE 200809L /* mkdir */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include <sys/stat.h>

static char dir[4096];

static void put(const char *corpus, const char *name, const void *data, size_t n) {
    char path[4200];
    FILE *fp;
    snprintf(path, sizeof path, "%s/corpus_%s", dir, corpus);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/corpus_%s/%s", dir, corpus, name);
    if (!(fp = fopen(path, "wb")) || fwrite(data, 1, n, fp) != n || fclose(fp) != 0) {
        fprintf(stderr, "make_fuzz_seeds: cannot write %s\n", path);
        exit(1);
    }
}

/* Saves the items with av_st_save, then adds the file and its header. */
static void seed_st(const char *name, const av_st_item *items, int n, int with_meta) {
    static const char *const keys[2] = {"format", "caf\xc3\xa9 \"q\""}, *const vals[2] = {"pt", "\xf0\x9f\x98\x80\n"};
    char path[4200];
    unsigned char *b;
    long len;
    FILE *fp;
    size_t hlen;
    snprintf(path, sizeof path, "%s/seed.safetensors", dir);
    if (av_st_save(path, items, n, keys, vals, with_meta ? 2 : 0) != AV_OK || !(fp = fopen(path, "rb"))) {
        fprintf(stderr, "make_fuzz_seeds: %s\n", av_error());
        exit(1);
    }
    fseek(fp, 0, SEEK_END);
    len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    b = (unsigned char *)malloc((size_t)len);
    if (fread(b, 1, (size_t)len, fp) != (size_t)len) exit(1);
    fclose(fp);
    remove(path);
    put("fuzz_safetensors", name, b, (size_t)len);
    hlen = (size_t)b[0] | (size_t)b[1] << 8 | (size_t)b[2] << 16;
    put("fuzz_json", name, b + 8, hlen);
    free(b);
}

static void seed_idx(const char *name, int type, int ndim, const int *dims, int size) {
    unsigned char b[4 + 16 + 24 * 8];
    int i, count = 1;
    b[0] = 0; b[1] = 0; b[2] = (unsigned char)type; b[3] = (unsigned char)ndim;
    for (i = 0; i < ndim; i++) {
        b[4 + 4 * i] = 0; b[5 + 4 * i] = 0; b[6 + 4 * i] = 0; b[7 + 4 * i] = (unsigned char)dims[i];
        count *= dims[i];
    }
    for (i = 0; i < count * size; i++) b[4 + 4 * ndim + i] = (unsigned char)(i * 37 + 11);
    put("fuzz_idx", name, b, (size_t)(4 + 4 * ndim + count * size));
}

int main(int argc, char **argv) {
    static const int s23[2] = {2, 3}, s0[2] = {0, 4}, s4[4] = {1, 2, 1, 2};
    static const int d1[1] = {6}, d2[2] = {2, 3}, d3[3] = {2, 1, 3}, d4[4] = {1, 2, 1, 3};
    static const float v[6] = {1.5f, -0.0f, 65504.0f, 1e-7f, -3.0e38f, 0.1f};
    static const char *const json[] = {"{}", "[]", "{\"a\":[1,-2.5e+3,true,false,null,{}]}",
                                       "\"\\u00e9\\ud83d\\ude00\\n\\\"\\\\\\/\\b\\f\\r\\t\"", " [[[[]]]] ",
                                       "{\"\xc3\xa9\":\"\xf0\x9f\x98\x80\"}", "0", "-0.0e-0"};
    av_st_item items[4];
    char name[32];
    int dt, i;
    if (argc != 2) {
        fprintf(stderr, "usage: make_fuzz_seeds DIR\n");
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", argv[1]);
    memset(items, 0, sizeof items);
    items[0].name = "w"; items[0].ndim = 2; items[0].shape = s23; items[0].data = v;
    items[1].name = "scalar"; items[1].data = v + 2;
    items[2].name = "empty"; items[2].ndim = 2; items[2].shape = s0;
    items[3].name = "conv.\xc3\xa9"; items[3].ndim = 4; items[3].shape = s4; items[3].data = v + 1;
    for (dt = 0; dt < 4; dt++) { /* F32, F16, BF16, F64 */
        for (i = 0; i < 4; i++) items[i].dtype = dt;
        snprintf(name, sizeof name, "st_dtype%d", dt);
        seed_st(name, items, 4, 1);
        snprintf(name, sizeof name, "st_one_dtype%d", dt);
        seed_st(name, items, 1, 0);
    }
    items[1].dtype = AV_DTYPE_F16; items[2].dtype = AV_DTYPE_F32; items[3].dtype = AV_DTYPE_F64;
    seed_st("st_mixed", items, 4, 1);
    seed_st("st_empty", items, 0, 0);
    seed_st("st_meta_only", items, 0, 1);
    put("fuzz_safetensors", "edge_short", "\x02\0\0\0\0\0\0\0{}", 10);
    put("fuzz_safetensors", "edge_hlen_over", "\xff\xff\xff\xff\0\0\0\0{}", 10);
    for (i = 0; i < (int)(sizeof json / sizeof json[0]); i++) {
        snprintf(name, sizeof name, "json%d", i);
        put("fuzz_json", name, json[i], strlen(json[i]));
    }
    seed_idx("idx_u8", 0x08, 2, d2, 1);
    seed_idx("idx_i8", 0x09, 1, d1, 1);
    seed_idx("idx_i16", 0x0B, 3, d3, 2);
    seed_idx("idx_i32", 0x0C, 4, d4, 4);
    seed_idx("idx_f32", 0x0D, 2, d2, 4);
    seed_idx("idx_f64", 0x0E, 1, d1, 8);
    put("fuzz_idx", "edge_truncated", "\0\0\x08\x02\0\0\0\x02\0\0\0\x03\x01\x02", 14);
    return 0;
}
