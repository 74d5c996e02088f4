/* ======================================================================= */
/* RNG                                                                     */
/* ======================================================================= */
/* xoshiro256** seeded through splitmix64: fast, 256-bit state, reproducible. */
static uint64_t av__rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

AVDEF void av_rng_seed(av_rng *r, uint64_t seed) {
    int i;
    for (i = 0; i < 4; i++) {
        uint64_t z = (seed += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        r->s[i] = z ^ (z >> 31);
    }
}

AVDEF uint64_t av_rng_u64(av_rng *r) {
    uint64_t *s = r->s, result = av__rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = av__rotl(s[3], 45);
    return result;
}

AVDEF float av_rng_uniform(av_rng *r) { return (float)(av_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

AVDEF float av_rng_normal(av_rng *r) {
    /* Box-Muller; u1 in (0, 1] keeps the log finite. */
    double u1 = ((double)(av_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(av_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ======================================================================= */
/* memory: the step arena                                                  */
/* ======================================================================= */
/* Chunks are kept across resets; a reset that saw more than one chunk merges
   them into one big enough for the whole step, so steady state never mallocs. */
typedef struct av__chunk { struct av__chunk *next; size_t size, used; } av__chunk;
typedef struct av__arena { av__chunk *head; size_t step_bytes, step_high, peak_bytes; } av__arena;

#define AV__ALIGN 64

static av__chunk *av__chunk_new(size_t size) {
    av__chunk *k = (av__chunk *)AV_MALLOC(sizeof(av__chunk) + AV__ALIGN + size);
    if (!k) av__fail("out of memory allocating a %lu-byte arena chunk", (unsigned long)size);
    k->next = NULL; k->size = size; k->used = 0;
    return k;
}

static void *av__arena_alloc(av__arena *a, size_t bytes) {
    av__chunk *k = a->head;
    uintptr_t base, p;
    bytes = (bytes + AV__ALIGN - 1) & ~(size_t)(AV__ALIGN - 1);
    if (!k || k->used + bytes > k->size) {
        size_t size = k ? k->size * 2 : ((size_t)1 << 20);
        while (size < bytes) size *= 2;
        k = av__chunk_new(size);
        k->next = a->head;
        a->head = k;
    }
    base = ((uintptr_t)(k + 1) + AV__ALIGN - 1) & ~(uintptr_t)(AV__ALIGN - 1);
    p = base + k->used;
    k->used += bytes;
    a->step_bytes += bytes;
    if (a->step_bytes > a->step_high) a->step_high = a->step_bytes;
    if (a->step_bytes > a->peak_bytes) a->peak_bytes = a->step_bytes;
    return (void *)p;
}

static void av__arena_free_chunks(av__chunk *k) {
    while (k) { av__chunk *next = k->next; AV_FREE(k); k = next; }
}

static void av__arena_reset(av__arena *a) {
    if (a->head && (a->head->next || a->head->size < a->step_high)) {
        size_t total = 0;
        av__chunk *k;
        for (k = a->head; k; k = k->next) total += k->size;
        av__arena_free_chunks(a->head);
        a->head = av__chunk_new(total > a->step_high ? total : a->step_high);
    }
    if (a->head) a->head->used = 0;
    a->step_bytes = a->step_high = 0;
}

/* ======================================================================= */
/* tensors                                                                 */
/* ======================================================================= */
typedef struct av__node av__node;
typedef void (*av__backward_fn)(av_ctx *c, av__node *n);

/* One tape entry: the op's output, its inputs, and what backward needs. */
struct av__node {
    av__backward_fn backward;
    av_tensor *out;
    av_tensor **in;
    int n_in;
    int iarg[AV_MAX_DIMS + 2];
    float farg[2];
    void *saved;
};

struct av_ctx {
    av__arena arena;
    av__node **tape;
    int n_tape, cap_tape;
    av_rng rng;
    int grad_enabled, training;
};

AVDEF av_ctx *av_ctx_new(void) {
    av_ctx *c = (av_ctx *)AV_MALLOC(sizeof(av_ctx));
    if (!c) av__fail("out of memory allocating a context");
    memset(c, 0, sizeof *c);
    c->grad_enabled = 1;
    c->training = 1;
    av_rng_seed(&c->rng, 0x5eed);
    return c;
}

AVDEF void av_ctx_free(av_ctx *c) {
    if (!c) return;
    av__arena_free_chunks(c->arena.head);
    AV_FREE(c->tape);
    AV_FREE(c);
}

AVDEF void av_ctx_reset(av_ctx *c) { av__arena_reset(&c->arena); c->n_tape = 0; }
AVDEF void av_ctx_seed(av_ctx *c, uint64_t seed) { av_rng_seed(&c->rng, seed); }
AVDEF av_rng *av_ctx_rng(av_ctx *c) { return &c->rng; }
AVDEF void *av_ctx_alloc(av_ctx *c, size_t bytes) { return av__arena_alloc(&c->arena, bytes); }
AVDEF size_t av_ctx_peak_bytes(const av_ctx *c) { return c->arena.peak_bytes; }

AVDEF av_mark av_ctx_mark(const av_ctx *c) {
    av_mark m;
    m.chunk = c->arena.head;
    m.used = c->arena.head ? c->arena.head->used : 0;
    m.step_bytes = c->arena.step_bytes;
    m.n_tape = c->n_tape;
    return m;
}

AVDEF void av_ctx_rewind(av_ctx *c, av_mark m) {
    /* chunks opened after the mark go; the next reset sizes one chunk for the peak */
    while (c->arena.head && (void *)c->arena.head != m.chunk) {
        av__chunk *next = c->arena.head->next;
        AV_FREE(c->arena.head);
        c->arena.head = next;
    }
    if (c->arena.head) c->arena.head->used = m.used;
    c->arena.step_bytes = m.step_bytes;
    c->n_tape = m.n_tape;
}

AVDEF int av_set_grad_enabled(av_ctx *c, int enabled) {
    int prev = c->grad_enabled;
    c->grad_enabled = enabled != 0;
    return prev;
}

AVDEF int av_set_training(av_ctx *c, int training) {
    int prev = c->training;
    c->training = training != 0;
    return prev;
}

/* "[2,3,4]" for messages */
static const char *av__shape_str(const av_tensor *t, char *buf, size_t cap) {
    size_t len = 0;
    int i;
    len += (size_t)snprintf(buf, cap, "[");
    for (i = 0; i < t->ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, i ? ",%d" : "%d", t->shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

static void av__fail_shapes(const char *op, const char *why, const av_tensor *a, const av_tensor *b) {
    char sa[64], sb[64];
    if (b) av__fail("%s: %s: shapes %s and %s", op, why, av__shape_str(a, sa, sizeof sa), av__shape_str(b, sb, sizeof sb));
    av__fail("%s: %s: shape %s", op, why, av__shape_str(a, sa, sizeof sa));
}

static av_tensor *av__tensor_empty(av_ctx *c, int ndim, const int *shape, const char *op) {
    av_tensor *t = (av_tensor *)av__arena_alloc(&c->arena, sizeof(av_tensor));
    long size = 1;
    int i;
    if (ndim < 0 || ndim > AV_MAX_DIMS) av__fail("%s: %d dimensions (at most %d)", op, ndim, AV_MAX_DIMS);
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    for (i = 0; i < ndim; i++) {
        if (shape[i] < 0) av__fail("%s: negative size %d in dimension %d", op, shape[i], i);
        t->shape[i] = shape[i];
        size *= shape[i];
        if (size > 0x7fffffffL) av__fail("%s: tensor too large", op);
    }
    t->size = (int)size;
    t->data = (float *)av__arena_alloc(&c->arena, (size_t)t->size * sizeof(float));
    return t;
}

AVDEF av_tensor *av_new_shape(av_ctx *c, int ndim, const int *shape) {
    av_tensor *t = av__tensor_empty(c, ndim, shape, "av_new_shape");
    memset(t->data, 0, (size_t)t->size * sizeof(float));
    return t;
}

static void av__read_shape(int ndim, va_list ap, int *shape, const char *op) {
    int i;
    if (ndim < 0 || ndim > AV_MAX_DIMS) av__fail("%s: %d dimensions (at most %d)", op, ndim, AV_MAX_DIMS);
    for (i = 0; i < ndim; i++) shape[i] = va_arg(ap, int);
}

/* Reads the variadic shape and makes an uninitialised tensor. */
#define AV__NEW_FROM_VARARGS(t, c, ndim, last, op)          \
    do {                                                    \
        int shape_[AV_MAX_DIMS];                            \
        va_list ap_;                                        \
        va_start(ap_, last);                                \
        av__read_shape(ndim, ap_, shape_, op);              \
        va_end(ap_);                                        \
        t = av__tensor_empty(c, ndim, shape_, op);          \
    } while (0)

static void av__fill(av_tensor *t, float v) {
    int i;
    for (i = 0; i < t->size; i++) t->data[i] = v;
}

AVDEF av_tensor *av_zeros(av_ctx *c, int ndim, ...) {
    av_tensor *t;
    AV__NEW_FROM_VARARGS(t, c, ndim, ndim, "av_zeros");
    av__fill(t, 0.0f);
    return t;
}

AVDEF av_tensor *av_ones(av_ctx *c, int ndim, ...) {
    av_tensor *t;
    AV__NEW_FROM_VARARGS(t, c, ndim, ndim, "av_ones");
    av__fill(t, 1.0f);
    return t;
}

AVDEF av_tensor *av_full(av_ctx *c, float value, int ndim, ...) {
    av_tensor *t;
    AV__NEW_FROM_VARARGS(t, c, ndim, ndim, "av_full");
    av__fill(t, value);
    return t;
}

AVDEF av_tensor *av_randn(av_ctx *c, float mean, float std, int ndim, ...) {
    av_tensor *t;
    int i;
    AV__NEW_FROM_VARARGS(t, c, ndim, ndim, "av_randn");
    for (i = 0; i < t->size; i++) t->data[i] = mean + std * av_rng_normal(&c->rng);
    return t;
}

AVDEF av_tensor *av_rand(av_ctx *c, float lo, float hi, int ndim, ...) {
    av_tensor *t;
    int i;
    AV__NEW_FROM_VARARGS(t, c, ndim, ndim, "av_rand");
    for (i = 0; i < t->size; i++) t->data[i] = lo + (hi - lo) * av_rng_uniform(&c->rng);
    return t;
}

AVDEF av_tensor *av_from(av_ctx *c, const float *data, int ndim, ...) {
    av_tensor *t;
    AV__NEW_FROM_VARARGS(t, c, ndim, ndim, "av_from");
    if (t->size) memcpy(t->data, data, (size_t)t->size * sizeof(float));
    return t;
}

AVDEF av_tensor *av_wrap(av_ctx *c, float *data, int ndim, ...) {
    av_tensor *t = (av_tensor *)av__arena_alloc(&c->arena, sizeof(av_tensor));
    int shape[AV_MAX_DIMS], i;
    va_list ap;
    va_start(ap, ndim);
    av__read_shape(ndim, ap, shape, "av_wrap");
    va_end(ap);
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    t->size = 1;
    for (i = 0; i < ndim; i++) {
        if (shape[i] < 0) av__fail("av_wrap: negative size %d in dimension %d", shape[i], i);
        t->shape[i] = shape[i];
        t->size *= shape[i];
    }
    t->data = data;
    return t;
}

AVDEF av_tensor *av_scalar(av_ctx *c, float value) {
    av_tensor *t = av__tensor_empty(c, 0, NULL, "av_scalar");
    t->data[0] = value;
    return t;
}

AVDEF void av_requires_grad(av_ctx *c, av_tensor *t) {
    (void)c;
    t->requires_grad = 1;
}

AVDEF float av_item(const av_tensor *t) { return t->data[0]; }

AVDEF int av_same_shape(const av_tensor *a, const av_tensor *b) {
    int i;
    if (a->ndim != b->ndim) return 0;
    for (i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

AVDEF void av_print(const char *label, const av_tensor *t) {
    char s[64];
    int i, n = t->size < 16 ? t->size : 16;
    printf("%s %s:", label ? label : "tensor", av__shape_str(t, s, sizeof s));
    for (i = 0; i < n; i++) printf(" %.6g", t->data[i]);
    printf(t->size > n ? " ...\n" : "\n");
}
