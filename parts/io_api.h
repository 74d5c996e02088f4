/* ---- file I/O: safetensors (F32) and IDX ----------------------------- */
/* safetensors: u64 little-endian header length N, N bytes of JSON
   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
    "__metadata__": {"key": "value", ..}}, then the data section, raw
   little-endian floats. Offsets are relative to the data section, and the
   tensors must cover it exactly: no gaps, no overlap, no trailing bytes.
   Only F32 tensors are read and written; other dtypes are rejected. */
#define AV_ST_MAX_DIMS 8

typedef struct av_st_item {
    const char *name;   /* UTF-8, unique, not "__metadata__" */
    int ndim;           /* 0 (a scalar) .. AV_ST_MAX_DIMS */
    const int *shape;   /* ndim entries >= 0 */
    const float *data;  /* numel floats; may be NULL when numel == 0 */
} av_st_item;

/* Writes the tensors (data in item order) plus n_meta string pairs to
   "<path>.tmp", then renames it over path. On failure the tmp file is
   removed and an existing path is left untouched. */
AVAPI int av_st_save(const char *path, const av_st_item *items, int n_items,
                     const char *const *meta_keys,
                     const char *const *meta_values, int n_meta);

/* av_st_open reads the whole file into memory and validates header and
   layout; on failure *out is NULL and av_error() names the file and the
   problem. Tensors are indexed in header order. Getters return NULL / -1
   for a bad index. */
typedef struct av_st_file av_st_file;
AVAPI int av_st_open(const char *path, av_st_file **out);
AVAPI void av_st_close(av_st_file *f);
AVAPI int av_st_count(const av_st_file *f);
AVAPI const char *av_st_name(const av_st_file *f, int i);
AVAPI int av_st_find(const av_st_file *f, const char *name); /* index or -1 */
AVAPI int av_st_ndim(const av_st_file *f, int i);
AVAPI const int64_t *av_st_shape(const av_st_file *f, int i);
AVAPI int64_t av_st_numel(const av_st_file *f, int i);
/* Copies tensor i into dst; n must equal its numel (else AV_ERR_MISMATCH). */
AVAPI int av_st_read(const av_st_file *f, int i, float *dst, int64_t n);
/* Value of a __metadata__ key, or NULL. */
AVAPI const char *av_st_meta(const av_st_file *f, const char *key);

/* IDX (MNIST-style, uncompressed): bytes 0,0,type,ndim; ndim big-endian u32
   dims; big-endian data. Types 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32,
   0x0D f32, 0x0E f64; values are converted to float (f64 out of float range
   becomes +-inf). dims[ndim..3] are 0. */
typedef struct av_idx {
    int ndim;
    int dims[4];
    int64_t count;  /* product of dims */
    float *data;
} av_idx;
AVAPI int av_idx_load(const char *path, av_idx *out);
AVAPI void av_idx_free(av_idx *x);
