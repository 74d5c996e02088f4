/* ---- file I/O: safetensors and IDX ----------------------------------- */
#include <errno.h>
#include <float.h>
#include <limits.h>

#define AV__ST_MAX_HEADER 100000000ull /* same cap as the reference reader */
#define AV__JSON_MAX_DEPTH 64          /* safetensors needs 3; stops bombs */

/* Byte order: values are assembled from bytes, which is correct on any host
   (so big-endian hosts need no special case) and never reads unaligned. */
static uint32_t av__st_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}
static float av__st_f32(const unsigned char *p) {
    uint32_t u = av__st_le32(p);
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/* ---- a strict JSON parser ----------------------------------------------
   Parses into a flat token array (containers followed by their children).
   Strings are unescaped in place (an escape never grows), NUL-terminated,
   and then point into the caller's buffer. */
enum { AV__J_NULL, AV__J_BOOL, AV__J_NUM, AV__J_STR, AV__J_ARR, AV__J_OBJ };
typedef struct av__json_tok {
    int type;
    int n;    /* members (object) or items (array) */
    int next; /* index of the token after this subtree */
    int len;  /* number: length of its text */
    char *s;  /* string (unescaped, NUL-terminated) or number text */
} av__json_tok;
typedef struct av__json {
    char *p, *start, *end;
    av__json_tok *tok;
    int n, cap, nomem;
    const char *err; /* first error; p then points at it */
} av__json;

static int av__json_fail(av__json *j, const char *msg) {
    if (!j->err) j->err = msg;
    return -1;
}
static void av__json_ws(av__json *j) {
    while (j->p < j->end &&
           (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}
/* skips whitespace, then reports whether c comes next */
static int av__json_at(av__json *j, char c) {
    av__json_ws(j);
    return j->p < j->end && *j->p == c;
}
/* after av__json_at failed: say why */
static int av__json_expected(av__json *j, const char *msg) {
    return av__json_fail(j, j->p == j->end ? "unexpected end of JSON" : msg);
}
static int av__json_digit(const char *p, const char *end) {
    return p < end && *p >= '0' && *p <= '9';
}
static int av__json_new(av__json *j, int type) {
    av__json_tok *t;
    if (j->n == j->cap) {
        int cap = j->cap ? j->cap * 2 : 64;
        t = (av__json_tok *)AV_REALLOC(j->tok, (size_t)cap * sizeof *t);
        if (!t) { j->nomem = 1; return av__json_fail(j, "out of memory"); }
        j->tok = t;
        j->cap = cap;
    }
    t = &j->tok[j->n];
    memset(t, 0, sizeof *t);
    t->type = type;
    t->next = j->n + 1;
    return j->n++;
}

/* Length of the valid UTF-8 sequence at p (first byte >= 0x80), or 0. */
static int av__json_utf8(const char *s, const char *end) {
    const unsigned char *p = (const unsigned char *)s;
    int k, i;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (p[0] >= 0xC2 && p[0] <= 0xDF) k = 2;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF) k = 3;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4) k = 4;
    else return 0;
    if (end - s < k) return 0;
    if (p[0] == 0xE0) lo = 0xA0;      /* overlong */
    if (p[0] == 0xED) hi = 0x9F;      /* surrogates */
    if (p[0] == 0xF0) lo = 0x90;      /* overlong */
    if (p[0] == 0xF4) hi = 0x8F;      /* above U+10FFFF */
    if (p[1] < lo || p[1] > hi) return 0;
    for (i = 2; i < k; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return k;
}

static long av__json_hex4(const char *p, const char *end) {
    long v = 0;
    int i;
    if (end - p < 4) return -1;
    for (i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Decodes the escape at j->p (a backslash) into *w; advances both. */
static int av__json_escape(av__json *j, char **w) {
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *e = j->end - j->p >= 2 && j->p[1] ? strchr(from, j->p[1]) : NULL;
    char *o = *w;
    long cp, lo;
    if (e) { *o = to[e - from]; *w = o + 1; j->p += 2; return 0; }
    if (j->end - j->p < 2 || j->p[1] != 'u')
        return av__json_fail(j, "invalid escape in string");
    cp = av__json_hex4(j->p + 2, j->end);
    if (cp < 0) return av__json_fail(j, "invalid \\u escape");
    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return av__json_fail(j, "unpaired surrogate in \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) { /* needs a low surrogate next */
        lo = j->end - j->p >= 8 && j->p[6] == '\\' && j->p[7] == 'u'
                 ? av__json_hex4(j->p + 8, j->end) : -1;
        if (lo < 0xDC00 || lo > 0xDFFF)
            return av__json_fail(j, "unpaired surrogate in \\u escape");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        j->p += 6;
    }
    if (cp == 0) return av__json_fail(j, "\\u0000 is not allowed in strings");
    j->p += 6;
    if (cp < 0x80) *o++ = (char)cp;
    else if (cp < 0x800) {
        *o++ = (char)(0xC0 | cp >> 6);
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | cp >> 12);
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | cp >> 18);
        *o++ = (char)(0x80 | (cp >> 12 & 0x3F));
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    *w = o;
    return 0;
}

static int av__json_string(av__json *j) {
    int t = av__json_new(j, AV__J_STR), k;
    char *s = j->p + 1, *w = s;
    if (t < 0) return -1;
    j->p = s;
    for (;;) {
        unsigned char c;
        if (j->p == j->end) return av__json_fail(j, "unterminated string");
        c = (unsigned char)*j->p;
        if (c == '"') break;
        if (c < 0x20) return av__json_fail(j, "control character in string");
        if (c == '\\') {
            if (av__json_escape(j, &w) < 0) return -1;
        } else if (c < 0x80) {
            *w++ = *j->p++;
        } else {
            if (!(k = av__json_utf8(j->p, j->end)))
                return av__json_fail(j, "invalid UTF-8 in string");
            memmove(w, j->p, (size_t)k);
            w += k;
            j->p += k;
        }
    }
    *w = 0; /* w <= the closing quote, so this stays inside the string */
    j->p++;
    j->tok[t].s = s;
    return t;
}

static int av__json_number(av__json *j) {
    char *p = j->p, *e = j->end;
    int t;
    if (p < e && *p == '-') p++;
    if (!av__json_digit(p, e)) return av__json_fail(j, "unexpected character");
    if (*p == '0') p++; /* no leading zeros: "01" fails at the caller */
    else while (av__json_digit(p, e)) p++;
    if (p < e && *p == '.') {
        if (!av__json_digit(++p, e)) { j->p = p; return av__json_fail(j, "digit expected after '.'"); }
        while (av__json_digit(p, e)) p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (!av__json_digit(p, e)) { j->p = p; return av__json_fail(j, "digit expected in exponent"); }
        while (av__json_digit(p, e)) p++;
    }
    if ((t = av__json_new(j, AV__J_NUM)) < 0) return -1;
    j->tok[t].s = j->p;
    j->tok[t].len = (int)(p - j->p);
    j->p = p;
    return t;
}

static int av__json_literal(av__json *j, const char *word, int type) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return av__json_fail(j, "unexpected character");
    j->p += n;
    return av__json_new(j, type);
}

static int av__json_value(av__json *j, int depth);

static int av__json_container(av__json *j, int depth) {
    int obj = *j->p == '{', n = 0;
    char close = obj ? '}' : ']';
    int t = av__json_new(j, obj ? AV__J_OBJ : AV__J_ARR);
    if (t < 0) return -1;
    j->p++;
    if (av__json_at(j, close)) j->p++;
    else for (;;) {
        if (obj) {
            if (!av__json_at(j, '"')) return av__json_expected(j, "expected a string key");
            if (av__json_string(j) < 0) return -1;
            if (!av__json_at(j, ':')) return av__json_expected(j, "expected ':'");
            j->p++;
        }
        if (av__json_value(j, depth + 1) < 0) return -1;
        n++;
        if (av__json_at(j, ',')) { j->p++; continue; }
        if (av__json_at(j, close)) { j->p++; break; }
        return av__json_expected(j, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    j->tok[t].n = n;
    j->tok[t].next = j->n;
    return t;
}

static int av__json_value(av__json *j, int depth) {
    av__json_ws(j);
    if (j->p == j->end) return av__json_fail(j, "unexpected end of JSON");
    switch (*j->p) {
    case '{': case '[':
        if (depth >= AV__JSON_MAX_DEPTH) return av__json_fail(j, "nesting too deep");
        return av__json_container(j, depth);
    case '"': return av__json_string(j);
    case 't': return av__json_literal(j, "true", AV__J_BOOL);
    case 'f': return av__json_literal(j, "false", AV__J_BOOL);
    case 'n': return av__json_literal(j, "null", AV__J_NULL);
    default: return av__json_number(j);
    }
}

/* Parses s[0..len) as one JSON value with optional surrounding whitespace. */
static int av__json_parse(av__json *j, char *s, size_t len) {
    memset(j, 0, sizeof *j);
    j->start = j->p = s;
    j->end = s + len;
    if (av__json_value(j, 0) < 0) return -1;
    av__json_ws(j);
    if (j->p != j->end) return av__json_fail(j, "trailing characters after the JSON value");
    return 0;
}

/* A number token as a non-negative integer, or -1 (negative, fractional,
   exponent, too large, or not a number). */
static int64_t av__json_uint(const av__json_tok *t) {
    int64_t v = 0;
    int i;
    if (t->type != AV__J_NUM) return -1;
    for (i = 0; i < t->len; i++) {
        int d = t->s[i] - '0';
        if (d < 0 || d > 9 || v > (INT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    return v;
}

/* ---- safetensors reading --------------------------------------------- */
typedef struct av__st_tensor {
    const char *name;
    int ndim;
    int64_t shape[AV_ST_MAX_DIMS];
    int64_t numel, begin, end;
    const unsigned char *data;
} av__st_tensor;

struct av_st_file {
    unsigned char *buf;         /* the whole file; names point into it */
    int n, n_meta;
    av__st_tensor *t;           /* header order */
    av__st_tensor **by_name;    /* sorted, for av_st_find */
    const char **meta;          /* n_meta (key, value) pairs */
};

/* Reads a whole file into memory (fine for our model sizes). */
static int av__st_slurp(const char *path, unsigned char **out, size_t *len) {
    FILE *fp = fopen(path, "rb");
    unsigned char *b = NULL, *nb;
    size_t n = 0, cap = 0, want, got;
    int bad, err;
    if (!fp) return av__set_error(AV_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    errno = 0;
    do {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            nb = cap > n ? (unsigned char *)AV_REALLOC(b, cap) : NULL;
            if (!nb) {
                AV_FREE(b);
                fclose(fp);
                return av__set_error(AV_ERR_NOMEM, "%s: out of memory reading the file", path);
            }
            b = nb;
        }
        want = cap - n;
        got = fread(b + n, 1, want, fp);
        n += got;
    } while (got == want); /* a short read means end of file or error */
    bad = ferror(fp);
    err = errno;
    fclose(fp);
    if (bad) {
        AV_FREE(b);
        return av__set_error(AV_ERR_IO, "%s: read error (%s)", path, err ? strerror(err) : "unknown");
    }
    *out = b;
    *len = n;
    return AV_OK;
}

static int av__st_cmp_name(const void *a, const void *b) {
    return strcmp((*(av__st_tensor *const *)a)->name, (*(av__st_tensor *const *)b)->name);
}
static int av__st_cmp_key(const void *key, const void *b) {
    return strcmp((const char *)key, (*(av__st_tensor *const *)b)->name);
}
static int av__st_cmp_offset(const void *a, const void *b) {
    const av__st_tensor *x = *(av__st_tensor *const *)a, *y = *(av__st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* AV_ERR_FORMAT with a message that starts "path: tensor 'name': " */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 3, 4)))
#endif
static int av__st_bad(const char *path, const char *name, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return av__set_error(AV_ERR_FORMAT, "%s: tensor '%.60s': %s", path, name, msg);
}

/* Reads the shape or data_offsets array at token a into v[0..max). */
static int av__st_ints(const av__json *j, int a, int64_t *v, int max,
                       const char *path, const char *name, const char *field) {
    const av__json_tok *t = &j->tok[a];
    int i, k;
    if (t->type != AV__J_ARR || t->n > max)
        return av__st_bad(path, name, "'%s' must be an array of at most %d integers", field, max);
    for (i = 0, k = a + 1; i < t->n; i++, k = j->tok[k].next) {
        const av__json_tok *e = &j->tok[k];
        if (e->type != AV__J_NUM)
            return av__st_bad(path, name, "%s[%d] is not a number", field, i);
        if ((v[i] = av__json_uint(e)) < 0)
            return av__st_bad(path, name, "%s[%d] is %.*s, not a non-negative integer", field, i,
                              e->len > 40 ? 40 : e->len, e->s);
    }
    return AV_OK;
}

/* Fills t from the tensor entry at token v; checks its fields and size. */
static int av__st_tensor_parse(const av__json *j, int v, const char *path,
                               int64_t data_len, av__st_tensor *t) {
    static const char *const fields[3] = {"dtype", "shape", "data_offsets"};
    int seen = 0, m, k, f, rc;
    int64_t off[2] = {0, 0};
    if (j->tok[v].type != AV__J_OBJ)
        return av__st_bad(path, t->name, "entry is not an object");
    for (m = 0, k = v + 1; m < j->tok[v].n; m++, k = j->tok[k + 1].next) {
        const av__json_tok *val = &j->tok[k + 1];
        for (f = 0; f < 3 && strcmp(j->tok[k].s, fields[f]) != 0; f++) {}
        if (f == 3)
            return av__st_bad(path, t->name, "unknown field '%.40s'", j->tok[k].s);
        if (seen & 1 << f)
            return av__st_bad(path, t->name, "duplicate field '%s'", fields[f]);
        seen |= 1 << f;
        if (f == 0 && val->type != AV__J_STR)
            return av__st_bad(path, t->name, "dtype is not a string");
        if (f == 0 && strcmp(val->s, "F32") != 0)
            return av__st_bad(path, t->name, "dtype \"%.20s\" is not supported (only F32)", val->s);
        if (f == 1) {
            if ((rc = av__st_ints(j, k + 1, t->shape, AV_ST_MAX_DIMS, path, t->name, "shape"))) return rc;
            t->ndim = val->n;
        }
        if (f == 2) {
            if ((rc = av__st_ints(j, k + 1, off, 2, path, t->name, "data_offsets"))) return rc;
            if (val->n != 2)
                return av__st_bad(path, t->name, "data_offsets needs 2 entries, has %d", val->n);
        }
    }
    for (f = 0; f < 3; f++)
        if (!(seen & 1 << f))
            return av__st_bad(path, t->name, "missing '%s'", fields[f]);
    t->numel = 1; /* checked so that numel * 4 cannot overflow either */
    for (f = 0; f < t->ndim; f++) {
        if (t->shape[f] && t->numel > INT64_MAX / 4 / t->shape[f])
            return av__st_bad(path, t->name, "shape is too large (overflow)");
        t->numel *= t->shape[f];
    }
    t->begin = off[0];
    t->end = off[1];
    if (t->begin > t->end)
        return av__st_bad(path, t->name, "data_offsets begin %lld > end %lld",
                          (long long)t->begin, (long long)t->end);
    if (t->end > data_len)
        return av__st_bad(path, t->name,
                          "data_offsets end %lld is past the data section (%lld bytes; truncated?)",
                          (long long)t->end, (long long)data_len);
    if (t->numel * 4 != t->end - t->begin)
        return av__st_bad(path, t->name, "shape needs %lld bytes but data_offsets span %lld",
                          (long long)(t->numel * 4), (long long)(t->end - t->begin));
    return AV_OK;
}

static int av__st_meta_parse(av_st_file *f, const av__json *j, int v, const char *path) {
    int m, k, q;
    if (j->tok[v].type != AV__J_OBJ)
        return av__set_error(AV_ERR_FORMAT, "%s: __metadata__ is not an object", path);
    f->meta = (const char **)AV_MALLOC(sizeof(char *) * 2 * (size_t)(j->tok[v].n + 1));
    if (!f->meta) return av__set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    for (m = 0, k = v + 1; m < j->tok[v].n; m++, k = j->tok[k + 1].next) {
        if (j->tok[k + 1].type != AV__J_STR)
            return av__set_error(AV_ERR_FORMAT, "%s: __metadata__ value of '%.40s' is not a string",
                                 path, j->tok[k].s);
        for (q = 0; q < m; q++) /* metadata is small: quadratic is fine */
            if (strcmp(f->meta[2 * q], j->tok[k].s) == 0)
                return av__set_error(AV_ERR_FORMAT, "%s: duplicate __metadata__ key '%.40s'",
                                     path, j->tok[k].s);
        f->meta[2 * m] = j->tok[k].s;
        f->meta[2 * m + 1] = j->tok[k + 1].s;
    }
    f->n_meta = j->tok[v].n;
    return AV_OK;
}

/* Interprets the parsed header and checks the data layout. */
static int av__st_layout(av_st_file *f, const av__json *j, const char *path,
                         const unsigned char *data, int64_t data_len) {
    int m, k, i, rc, has_meta = 0;
    int64_t pos = 0;
    av__st_tensor **order;
    if (j->tok[0].type != AV__J_OBJ)
        return av__set_error(AV_ERR_FORMAT, "%s: header is not a JSON object", path);
    f->t = (av__st_tensor *)AV_MALLOC(sizeof *f->t * (size_t)(j->tok[0].n + 1));
    f->by_name = (av__st_tensor **)AV_MALLOC(sizeof *f->by_name * (size_t)(j->tok[0].n + 1));
    if (!f->t || !f->by_name) return av__set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    for (m = 0, k = 1; m < j->tok[0].n; m++, k = j->tok[k + 1].next) {
        if (strcmp(j->tok[k].s, "__metadata__") == 0) {
            if (has_meta++) return av__set_error(AV_ERR_FORMAT, "%s: duplicate __metadata__", path);
            if ((rc = av__st_meta_parse(f, j, k + 1, path))) return rc;
            continue;
        }
        memset(&f->t[f->n], 0, sizeof *f->t);
        f->t[f->n].name = j->tok[k].s;
        if ((rc = av__st_tensor_parse(j, k + 1, path, data_len, &f->t[f->n]))) return rc;
        f->t[f->n].data = data + f->t[f->n].begin;
        f->by_name[f->n] = &f->t[f->n];
        f->n++;
    }
    qsort(f->by_name, (size_t)f->n, sizeof *f->by_name, av__st_cmp_name);
    for (i = 1; i < f->n; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
            return av__set_error(AV_ERR_FORMAT, "%s: duplicate tensor name '%.60s'",
                                 path, f->by_name[i]->name);
    /* The tensors, sorted by offset, must tile the data section exactly. */
    order = (av__st_tensor **)AV_MALLOC(sizeof *order * (size_t)(f->n + 1));
    if (!order) return av__set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    memcpy(order, f->by_name, sizeof *order * (size_t)f->n);
    qsort(order, (size_t)f->n, sizeof *order, av__st_cmp_offset);
    for (i = 0; i < f->n && order[i]->begin == pos; i++) pos = order[i]->end;
    rc = AV_OK;
    if (i < f->n && order[i]->begin > pos)
        rc = av__set_error(AV_ERR_FORMAT, "%s: gap in the data section: bytes %lld..%lld belong to no tensor",
                           path, (long long)pos, (long long)order[i]->begin);
    else if (i < f->n) /* begin < pos, and i > 0 since pos starts at 0 */
        rc = av__set_error(AV_ERR_FORMAT, "%s: tensor '%.60s' overlaps tensor '%.60s'",
                           path, order[i]->name, order[i - 1]->name);
    else if (pos != data_len)
        rc = av__set_error(AV_ERR_FORMAT, "%s: data section has %lld bytes, tensors cover only %lld",
                           path, (long long)data_len, (long long)pos);
    AV_FREE(order);
    return rc;
}

AVDEF int av_st_open(const char *path, av_st_file **out) {
    unsigned char *buf = NULL;
    size_t len = 0;
    uint64_t hlen;
    av__json j;
    av_st_file *f;
    int rc;
    if (!out) return av__set_error(AV_ERR_ARG, "av_st_open: out is NULL");
    *out = NULL;
    if (!path) return av__set_error(AV_ERR_ARG, "av_st_open: path is NULL");
    if ((rc = av__st_slurp(path, &buf, &len))) return rc;
    if (len < 8) {
        AV_FREE(buf);
        return av__set_error(AV_ERR_FORMAT, "%s: file too short (%lu bytes) to hold the header length",
                             path, (unsigned long)len);
    }
    hlen = (uint64_t)av__st_le32(buf) | (uint64_t)av__st_le32(buf + 4) << 32;
    if (hlen > AV__ST_MAX_HEADER || hlen > len - 8) {
        AV_FREE(buf);
        return av__set_error(AV_ERR_FORMAT, "%s: header length %llu is %s (file has %lu bytes)", path,
                             (unsigned long long)hlen,
                             hlen > AV__ST_MAX_HEADER ? "over the 100 MB limit" : "past the end of the file",
                             (unsigned long)len);
    }
    f = (av_st_file *)AV_MALLOC(sizeof *f);
    if (!f) {
        AV_FREE(buf);
        return av__set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    }
    memset(f, 0, sizeof *f);
    f->buf = buf;
    if (av__json_parse(&j, (char *)buf + 8, (size_t)hlen) < 0)
        rc = av__set_error(j.nomem ? AV_ERR_NOMEM : AV_ERR_FORMAT, "%s: bad JSON header at byte %ld: %s",
                           path, (long)(j.p - j.start), j.err);
    else
        rc = av__st_layout(f, &j, path, buf + 8 + hlen, (int64_t)(len - 8 - hlen));
    AV_FREE(j.tok);
    if (rc) {
        av_st_close(f);
        return rc;
    }
    *out = f;
    return AV_OK;
}

AVDEF void av_st_close(av_st_file *f) {
    if (!f) return;
    AV_FREE(f->buf);
    AV_FREE(f->t);
    AV_FREE(f->by_name);
    AV_FREE((void *)f->meta);
    AV_FREE(f);
}

static const av__st_tensor *av__st_get(const av_st_file *f, int i) {
    return f && i >= 0 && i < f->n ? &f->t[i] : NULL;
}
AVDEF int av_st_count(const av_st_file *f) { return f ? f->n : 0; }
AVDEF const char *av_st_name(const av_st_file *f, int i) {
    const av__st_tensor *t = av__st_get(f, i);
    return t ? t->name : NULL;
}
AVDEF int av_st_ndim(const av_st_file *f, int i) {
    const av__st_tensor *t = av__st_get(f, i);
    return t ? t->ndim : -1;
}
AVDEF const int64_t *av_st_shape(const av_st_file *f, int i) {
    const av__st_tensor *t = av__st_get(f, i);
    return t ? t->shape : NULL;
}
AVDEF int64_t av_st_numel(const av_st_file *f, int i) {
    const av__st_tensor *t = av__st_get(f, i);
    return t ? t->numel : -1;
}
AVDEF int av_st_find(const av_st_file *f, const char *name) {
    av__st_tensor **hit;
    if (!f || !name || !f->n) return -1;
    hit = (av__st_tensor **)bsearch(name, f->by_name, (size_t)f->n, sizeof *f->by_name, av__st_cmp_key);
    return hit ? (int)(*hit - f->t) : -1;
}
AVDEF int av_st_read(const av_st_file *f, int i, float *dst, int64_t n) {
    const av__st_tensor *t = av__st_get(f, i);
    int64_t k;
    if (!t || (!dst && n > 0)) return av__set_error(AV_ERR_ARG, "av_st_read: bad tensor index %d or NULL dst",
                                                    i);
    if (n != t->numel)
        return av__set_error(AV_ERR_MISMATCH, "tensor '%.60s' has %lld elements, caller expects %lld",
                             t->name, (long long)t->numel, (long long)n);
    for (k = 0; k < n; k++) dst[k] = av__st_f32(t->data + 4 * k);
    return AV_OK;
}
AVDEF const char *av_st_meta(const av_st_file *f, const char *key) {
    int i;
    for (i = 0; f && key && i < f->n_meta; i++)
        if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
    return NULL;
}

/* ---- safetensors writing --------------------------------------------- */
typedef struct av__st_buf { char *p; size_t n, cap; int oom; } av__st_buf;

static void av__st_put(av__st_buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;
        while (cap < b->n + n + 1) cap *= 2;
        if (!(p = (char *)AV_REALLOC(b->p, cap))) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void av__st_puts(av__st_buf *b, const char *s) { av__st_put(b, s, strlen(s)); }
static void av__st_put_int(av__st_buf *b, long long v) {
    char t[32];
    sprintf(t, "%lld", v);
    av__st_puts(b, t);
}
/* JSON string; the bytes must already be valid UTF-8 */
static void av__st_put_str(av__st_buf *b, const char *s) {
    char t[8];
    av__st_puts(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { t[0] = '\\'; t[1] = (char)c; av__st_put(b, t, 2); }
        else if (c < 0x20) { sprintf(t, "\\u%04x", c); av__st_puts(b, t); }
        else av__st_put(b, s, 1);
    }
    av__st_puts(b, "\"");
}
static int av__st_utf8_ok(const char *s) {
    const char *end = s + strlen(s);
    int k;
    for (; s < end; s += k)
        if (!(k = (unsigned char)*s < 0x80 ? 1 : av__json_utf8(s, end))) return 0;
    return 1;
}

/* Checks the caller's arguments; computes each item's numel. */
static int av__st_check_items(const av_st_item *items, int n_items, int64_t *numel,
                              const char *const *keys, const char *const *vals, int n_meta) {
    int i, d;
    int64_t total = 0;
    if (n_items < 0 || n_meta < 0 || (n_items && !items) || (n_meta && (!keys || !vals)))
        return av__set_error(AV_ERR_ARG, "av_st_save: bad item or metadata arrays");
    for (i = 0; i < n_meta; i++)
        if (!keys[i] || !vals[i] || !av__st_utf8_ok(keys[i]) || !av__st_utf8_ok(vals[i]))
            return av__set_error(AV_ERR_ARG, "av_st_save: metadata %d is NULL or not UTF-8", i);
    for (i = 0; i < n_items; i++) {
        const av_st_item *it = &items[i];
        if (!it->name || !av__st_utf8_ok(it->name) || strcmp(it->name, "__metadata__") == 0)
            return av__set_error(AV_ERR_ARG, "av_st_save: item %d has a NULL, non-UTF-8 or reserved name", i);
        if (it->ndim < 0 || it->ndim > AV_ST_MAX_DIMS || (it->ndim && !it->shape))
            return av__set_error(AV_ERR_ARG, "av_st_save: '%s': bad ndim %d or NULL shape",
                                 it->name, it->ndim);
        for (numel[i] = 1, d = 0; d < it->ndim; d++) {
            if (it->shape[d] < 0)
                return av__set_error(AV_ERR_ARG, "av_st_save: '%s': negative dim", it->name);
            if (it->shape[d] && numel[i] > INT64_MAX / 4 / it->shape[d])
                return av__set_error(AV_ERR_ARG, "av_st_save: '%s': shape overflows", it->name);
            numel[i] *= it->shape[d];
        }
        if (numel[i] && !it->data)
            return av__set_error(AV_ERR_ARG, "av_st_save: '%s': NULL data", it->name);
        if (total > INT64_MAX - 4 * numel[i])
            return av__set_error(AV_ERR_ARG, "av_st_save: total data size overflows");
        total += 4 * numel[i];
        for (d = 0; d < i; d++)
            if (strcmp(items[d].name, it->name) == 0)
                return av__set_error(AV_ERR_ARG, "av_st_save: duplicate name '%s'", it->name);
    }
    return AV_OK;
}

/* Writes everything to fp; returns 0 on any failed write. */
static int av__st_write(FILE *fp, const av__st_buf *h, const av_st_item *items, int n_items,
                        const int64_t *numel) {
    unsigned char chunk[4096];
    int i, b;
    int64_t k, c, e;
    uint32_t u;
    uint64_t hlen = h->n;
    for (b = 0; b < 8; b++) chunk[b] = (unsigned char)(hlen >> 8 * b);
    if (fwrite(chunk, 1, 8, fp) != 8 || fwrite(h->p, 1, h->n, fp) != h->n) return 0;
    for (i = 0; i < n_items; i++)
        for (k = 0; k < numel[i]; k += c) {
            c = numel[i] - k < 1024 ? numel[i] - k : 1024;
            for (e = 0; e < c; e++) {
                memcpy(&u, &items[i].data[k + e], 4);
                for (b = 0; b < 4; b++) chunk[4 * e + b] = (unsigned char)(u >> 8 * b);
            }
            if (fwrite(chunk, 1, (size_t)(4 * c), fp) != (size_t)(4 * c)) return 0;
        }
    return fflush(fp) == 0 && !ferror(fp);
}

AVDEF int av_st_save(const char *path, const av_st_item *items, int n_items,
                     const char *const *meta_keys, const char *const *meta_values, int n_meta) {
    av__st_buf h;
    int64_t *numel, off = 0;
    char *tmp = NULL;
    FILE *fp;
    int i, d, rc, ok;
    if (!path) return av__set_error(AV_ERR_ARG, "av_st_save: path is NULL");
    numel = (int64_t *)AV_MALLOC(sizeof *numel * (size_t)(n_items > 0 ? n_items : 1));
    if (!numel) return av__set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    if ((rc = av__st_check_items(items, n_items, numel, meta_keys, meta_values, n_meta))) {
        AV_FREE(numel);
        return rc;
    }
    /* Header: metadata first, then tensors in item order, contiguous. */
    memset(&h, 0, sizeof h);
    av__st_puts(&h, "{");
    if (n_meta) {
        av__st_puts(&h, "\"__metadata__\":{");
        for (i = 0; i < n_meta; i++) {
            if (i) av__st_puts(&h, ",");
            av__st_put_str(&h, meta_keys[i]);
            av__st_puts(&h, ":");
            av__st_put_str(&h, meta_values[i]);
        }
        av__st_puts(&h, n_items ? "}," : "}");
    }
    for (i = 0; i < n_items; i++) {
        if (i) av__st_puts(&h, ",");
        av__st_put_str(&h, items[i].name);
        av__st_puts(&h, ":{\"dtype\":\"F32\",\"shape\":[");
        for (d = 0; d < items[i].ndim; d++) {
            if (d) av__st_puts(&h, ",");
            av__st_put_int(&h, items[i].shape[d]);
        }
        av__st_puts(&h, "],\"data_offsets\":[");
        av__st_put_int(&h, off);
        av__st_puts(&h, ",");
        off += 4 * numel[i];
        av__st_put_int(&h, off);
        av__st_puts(&h, "]}");
    }
    av__st_puts(&h, "}");
    while ((8 + h.n) % 8) av__st_puts(&h, " "); /* align the data section */
    if (!h.oom) tmp = (char *)AV_MALLOC(strlen(path) + 5);
    if (!tmp) rc = av__set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    else {
        sprintf(tmp, "%s.tmp", path);
        if (!(fp = fopen(tmp, "wb"))) {
            rc = av__set_error(AV_ERR_IO, "%s: cannot create (%s)", tmp, strerror(errno));
        } else {
            ok = av__st_write(fp, &h, items, n_items, numel);
            if (!ok) rc = av__set_error(AV_ERR_IO, "%s: write failed (%s)", tmp, strerror(errno));
            if (fclose(fp) != 0 && ok)
                rc = av__set_error(AV_ERR_IO, "%s: close failed (%s)", tmp, strerror(errno));
            if (!rc && rename(tmp, path) != 0)
                rc = av__set_error(AV_ERR_IO, "%s: cannot rename %s over it (%s)",
                                   path, tmp, strerror(errno));
            if (rc) remove(tmp); /* only a file we created ourselves */
        }
    }
    AV_FREE(tmp);
    AV_FREE(h.p);
    AV_FREE(numel);
    return rc;
}

/* ---- IDX ------------------------------------------------------------- */
static uint32_t av__idx_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static int av__idx_size(int type) {
    switch (type) {
    case 0x08: case 0x09: return 1;
    case 0x0B: return 2;
    case 0x0C: case 0x0D: return 4;
    case 0x0E: return 8;
    default: return 0;
    }
}
static float av__idx_value(const unsigned char *p, int type) {
    uint32_t u;
    uint64_t w;
    float f;
    double d;
    switch (type) {
    case 0x08: return (float)p[0];
    case 0x09: return (float)(p[0] < 128 ? p[0] : p[0] - 256);
    case 0x0B: u = (uint32_t)p[0] << 8 | p[1]; return (float)(u < 32768 ? (long)u : (long)u - 65536);
    case 0x0C: u = av__idx_be32(p); return (float)(u < 0x80000000u ? (double)u : (double)u - 4294967296.0);
    case 0x0D: u = av__idx_be32(p); memcpy(&f, &u, 4); return f;
    default: /* 0x0E; out-of-range doubles would be undefined as float */
        w = (uint64_t)av__idx_be32(p) << 32 | av__idx_be32(p + 4);
        memcpy(&d, &w, 8);
        return d > FLT_MAX ? HUGE_VALF : d < -FLT_MAX ? -HUGE_VALF : (float)d;
    }
}
/* A short read: an I/O error or a truncated file. */
static int av__idx_short(FILE *fp, const char *path, const char *what) {
    if (ferror(fp)) return av__set_error(AV_ERR_IO, "%s: read error in %s", path, what);
    return av__set_error(AV_ERR_FORMAT, "%s: truncated file (in %s)", path, what);
}

static int av__idx_read(FILE *fp, const char *path, av_idx *x) {
    unsigned char hd[16], chunk[8192];
    int type, size, i;
    int64_t k, c, per;
    if (fread(hd, 1, 4, fp) != 4) return av__idx_short(fp, path, "the magic number");
    if (hd[0] || hd[1])
        return av__set_error(AV_ERR_FORMAT,
                             "%s: bad IDX magic %02x %02x %02x %02x (first two bytes must be 0)",
                             path, hd[0], hd[1], hd[2], hd[3]);
    type = hd[2];
    if (!(size = av__idx_size(type)))
        return av__set_error(AV_ERR_FORMAT, "%s: unknown IDX type code 0x%02x", path, type);
    x->ndim = hd[3];
    if (x->ndim < 1 || x->ndim > 4)
        return av__set_error(AV_ERR_FORMAT, "%s: IDX has %d dims (1..4 supported)", path, x->ndim);
    if (fread(hd, 4, (size_t)x->ndim, fp) != (size_t)x->ndim) return av__idx_short(fp, path, "the dims");
    x->count = 1;
    for (i = 0; i < x->ndim; i++) {
        uint32_t d = av__idx_be32(hd + 4 * i);
        if (d == 0 || d > INT_MAX)
            return av__set_error(AV_ERR_FORMAT, "%s: IDX dim %d is %lu (must be 1..%d)",
                                 path, i, (unsigned long)d, INT_MAX);
        if (x->count > INT64_MAX / 8 / (int64_t)d || (uint64_t)(x->count * d) > SIZE_MAX / sizeof(float))
            return av__set_error(AV_ERR_FORMAT, "%s: IDX dims are too large", path);
        x->dims[i] = (int)d;
        x->count *= d;
    }
    if (!(x->data = (float *)AV_MALLOC((size_t)x->count * sizeof(float))))
        return av__set_error(AV_ERR_NOMEM, "%s: out of memory for %lld values", path, (long long)x->count);
    per = (int64_t)sizeof chunk / size;
    for (k = 0; k < x->count; k += c) {
        c = x->count - k < per ? x->count - k : per;
        if (fread(chunk, (size_t)size, (size_t)c, fp) != (size_t)c)
            return av__idx_short(fp, path, "the data");
        for (i = 0; i < c; i++) x->data[k + i] = av__idx_value(chunk + i * size, type);
    }
    if (fgetc(fp) != EOF)
        return av__set_error(AV_ERR_FORMAT, "%s: trailing bytes after %lld values",
                             path, (long long)x->count);
    if (ferror(fp)) return av__set_error(AV_ERR_IO, "%s: read error", path);
    return AV_OK;
}

AVDEF int av_idx_load(const char *path, av_idx *out) {
    FILE *fp;
    int rc;
    if (!out || !path) return av__set_error(AV_ERR_ARG, "av_idx_load: NULL argument");
    memset(out, 0, sizeof *out);
    if (!(fp = fopen(path, "rb"))) return av__set_error(AV_ERR_IO, "%s: cannot open (%s)",
                                                        path, strerror(errno));
    rc = av__idx_read(fp, path, out);
    fclose(fp);
    if (rc) av_idx_free(out);
    return rc;
}

AVDEF void av_idx_free(av_idx *x) {
    if (!x) return;
    AV_FREE(x->data);
    memset(x, 0, sizeof *x);
}
