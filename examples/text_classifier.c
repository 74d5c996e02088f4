/* Which file of the Debian fortunes package does a fortune come from? A
   bidirectional LSTM reads its words and attention pooling picks the ones
   that decide; a bag-of-words logistic regression, trained in the same run
   on the same split, is the baseline to beat.

     ./build/text_classifier [flags]              train both, report test accuracy
     ./build/text_classifier --load MODEL         classify each line of standard input

   Data: each file of --data (/usr/share/games/fortunes, from Debian's
   fortunes package) named in --categories is a class; entries are
   separated by lines holding a single '%'. An entry found twice is kept
   once, and dropped when two categories share it. Each category (of 10
   entries or more) is split 70/10/20 into train, validation and test with
   a fixed seed, so every run sees the same split.
   Tokens: words (letters, digits and inner apostrophes, lowercased; UTF-8
   letters count) and single punctuation marks. The vocabulary holds the
   tokens seen at least --min-count times in the text the word vectors
   learn from (below), or with --pretrain-epochs 0 in the training split;
   the others read as <unk>. An entry keeps its first --max-len tokens.
   Word vectors: skip-gram with negative sampling on every fortune file in
   --data but the validation and test entries, then copied into the
   model's embedding.
   Model: embedding -> BiLSTM -> attention pooling (scores vᵀ tanh(W h_t),
   softmax over the entry's tokens, pooled Σ α_t h_t) -> linear, dropout on
   the embeddings and on the pooled vector, Adam; the epoch with the best
   validation accuracy is kept. Baseline: a linear layer over the set of
   known tokens an entry holds; its L2 strength and epoch are chosen on the
   validation split.
   Output: test accuracy of both, the three most-attended tokens of a few
   test entries, --png (those entries shaded by attention weight), and the
   model with its vocabulary and categories in --out (safetensors). */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include "common.h"
#include <dirent.h>

#define MAX_CATEGORIES 32
#define MAX_NAME 64            /* bytes of a category name, NUL included */
#define MAX_TOKEN 32           /* bytes of a token, NUL included; longer words are cut */
#define SPLIT_SEED 20240521u   /* the train/validation/test split never changes */
#define MIN_ENTRIES 10         /* of a category: a tenth to validation, a fifth to test */
#define SHOWN 6                /* test entries whose attention is printed and drawn */
#define TOP 3                  /* most-attended tokens printed per entry */
#define DEFAULT_CATEGORIES "art,computers,food,law,science"

enum { TRAIN, VAL, TEST };

static void *xalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "error: out of memory\n");
        exit(1);
    }
    return p;
}

static void *xrealloc(void *p, size_t n) {
    if (!(p = realloc(p, n ? n : 1))) {
        fprintf(stderr, "error: out of memory\n");
        exit(1);
    }
    return p;
}

/* 64-bit FNV-1a of a string: hash table slots and per-category split seeds. */
static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603u;
    while (*s) h = (h ^ (unsigned char)*s++) * 1099511628211u;
    return h;
}

/* Sorting: by key then value (length buckets, the vocabulary by count), or
   by text first (finding duplicate entries). */
typedef struct keyed { long key; int value; const char *text; } keyed;
static int by_key(const void *a, const void *b) {
    const keyed *x = (const keyed *)a, *y = (const keyed *)b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->value > y->value) - (x->value < y->value);
}
static int by_string(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static int by_text(const void *a, const void *b) {
    int t = strcmp(((const keyed *)a)->text, ((const keyed *)b)->text);
    return t ? t : by_key(a, b);
}

/* ---- tokens ----------------------------------------------------------------- */
/* Length of the valid UTF-8 sequence of 2 to 4 bytes at p, else 0. */
static int utf8_letter(const unsigned char *p) {
    int n = p[0] >= 0xC2 && p[0] <= 0xDF ? 2 : p[0] >= 0xE0 && p[0] <= 0xEF ? 3 : p[0] >= 0xF0 && p[0] <= 0xF4 ? 4 : 0;
    int i;
    for (i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    if ((p[0] == 0xE0 && p[1] < 0xA0) || (p[0] == 0xED && p[1] >= 0xA0) || /* overlong, surrogate */
        (p[0] == 0xF0 && p[1] < 0x90) || (p[0] == 0xF4 && p[1] >= 0x90))   /* overlong, past U+10FFFF */
        return 0;
    return n;
}

/* Bytes of the word character at p (an ASCII letter or digit, or a UTF-8 letter), else 0. */
static int word_char(const unsigned char *p) { return *p < 128 ? isalnum(*p) != 0 : utf8_letter(p); }

/* The next token of the text at *s, lowercased into tok[MAX_TOKEN]: a word
   (word characters, with apostrophes between them) or one punctuation
   mark. Spaces, control characters and bytes that are not UTF-8 separate
   tokens. Returns the token's length, 0 at the end of the text. */
static int next_token(const char **s, char *tok) {
    const unsigned char *p = (const unsigned char *)*s;
    int len = 0, k, i;
    while (*p && !word_char(p) && !(*p > 32 && *p < 127)) p++;
    if (*p && !word_char(p)) {
        tok[len++] = (char)*p++;
    } else {
        while ((k = word_char(p)) > 0 || (*p == '\'' && len && word_char(p + 1))) {
            k = k ? k : 1;
            if (len + k < MAX_TOKEN) /* a long word is cut at a character boundary */
                for (i = 0; i < k; i++) tok[len++] = (char)tolower(p[i]);
            p += k;
        }
    }
    tok[len] = 0;
    *s = (const char *)p;
    return len;
}

/* ---- vocabulary: tokens and their ids, found through a hash table ---------- */
typedef struct vocab {
    int n, cap, n_slots;
    char (*word)[MAX_TOKEN];
    int *count;
    int *slot; /* n_slots (a power of 2): id + 1 of the word hashed there, 0 if empty */
} vocab;

static void vocab_free(vocab *v) {
    free(v->word);
    free(v->count);
    free(v->slot);
    memset(v, 0, sizeof *v);
}

static int vocab_find(const vocab *v, const char *w) {
    size_t mask = (size_t)v->n_slots - 1, i;
    if (!v->n_slots) return -1;
    for (i = hash_str(w) & mask; v->slot[i]; i = (i + 1) & mask)
        if (strcmp(v->word[v->slot[i] - 1], w) == 0) return v->slot[i] - 1;
    return -1;
}

static void vocab_slot(vocab *v, int id) {
    size_t mask = (size_t)v->n_slots - 1, i;
    for (i = hash_str(v->word[id]) & mask; v->slot[i]; i = (i + 1) & mask) {}
    v->slot[i] = id + 1;
}

/* Adds w, or counts it once more; returns its id. */
static int vocab_add(vocab *v, const char *w) {
    int id = vocab_find(v, w), i;
    if (id >= 0) {
        v->count[id]++;
        return id;
    }
    if (2 * (v->n + 1) > v->n_slots) { /* keep the table at most half full */
        free(v->slot);
        v->n_slots = v->n_slots ? 2 * v->n_slots : 1024;
        v->slot = (int *)xalloc((size_t)v->n_slots * sizeof(int));
        for (i = 0; i < v->n; i++) vocab_slot(v, i);
    }
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 1024;
        v->word = (char(*)[MAX_TOKEN])xrealloc(v->word, (size_t)v->cap * MAX_TOKEN);
        v->count = (int *)xrealloc(v->count, (size_t)v->cap * sizeof(int));
    }
    snprintf(v->word[v->n], MAX_TOKEN, "%s", w);
    v->count[v->n] = 1;
    vocab_slot(v, v->n);
    return v->n++;
}

/* ---- the corpus: entries, labels, the split -------------------------------- */
typedef struct doc {
    const char *text;  /* inside its file's buffer */
    int label, len;    /* len: tokens kept, at most max_len */
    int *ids;
} doc;

typedef struct corpus {
    int n_classes, n_docs, cap, n_files;
    char names[MAX_CATEGORIES][MAX_NAME];
    char **files;                 /* the files' text, which the docs point into */
    doc *docs;
    int *part[3], count[3];       /* doc indices of train, validation, test */
} corpus;

static void corpus_free(corpus *cp) {
    int i;
    for (i = 0; i < cp->n_docs; i++) free(cp->docs[i].ids);
    for (i = 0; i < cp->n_files; i++) free(cp->files[i]);
    free(cp->files);
    for (i = 0; i < 3; i++) free(cp->part[i]);
    free(cp->docs);
    memset(cp, 0, sizeof *cp);
}

/* Splits a comma-separated list into names: 2 to MAX_CATEGORIES distinct
   ones of letters, digits, '-', '_' and '.' (not first). Returns the count,
   or -1 after saying what is wrong. */
static int parse_categories(const char *list, char names[][MAX_NAME]) {
    int n = 0, len, i;
    const char *s = list;
    while (1) {
        len = (int)strcspn(s, ",");
        if (n == MAX_CATEGORIES) {
            fprintf(stderr, "error: --categories: more than %d categories\n", MAX_CATEGORIES);
            return -1;
        }
        if (len == 0 || len >= MAX_NAME || s[0] == '.') {
            fprintf(stderr, "error: --categories: '%.*s' is not a category name\n", len, s);
            return -1;
        }
        for (i = 0; i < len; i++)
            if (!(isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '_' || s[i] == '.')) {
                fprintf(stderr, "error: --categories: '%.*s' is not a category name (letters, digits, '-', '_', '.')\n",
                        len, s);
                return -1;
            }
        memcpy(names[n], s, (size_t)len);
        names[n][len] = 0;
        for (i = 0; i < n; i++)
            if (strcmp(names[i], names[n]) == 0) {
                fprintf(stderr, "error: --categories: '%s' is named twice\n", names[n]);
                return -1;
            }
        n++;
        if (!s[len]) break;
        s += len + 1;
    }
    if (n < 2) fprintf(stderr, "error: --categories: name at least two categories\n");
    return n < 2 ? -1 : n;
}

/* The whole file as a string (NUL bytes become spaces), or NULL with errno set. */
static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    size_t n = 0, cap = 65536, got, i;
    char *buf;
    int err;
    if (!f) return NULL;
    buf = (char *)xalloc(cap);
    while ((got = fread(buf + n, 1, cap - 1 - n, f)) > 0)
        if ((n += got) == cap - 1) buf = (char *)xrealloc(buf, cap *= 2);
    err = ferror(f) ? (errno ? errno : EIO) : 0;
    fclose(f);
    if (err) {
        free(buf);
        errno = err;
        return NULL;
    }
    for (i = 0; i < n; i++) buf[i] = buf[i] ? buf[i] : ' ';
    buf[n] = 0;
    return buf;
}

static int has_token(const char *text) {
    char tok[MAX_TOKEN];
    return next_token(&text, tok) > 0;
}

/* Adds text as a doc of class label if it holds a token. */
static void add_doc(corpus *cp, const char *text, int label) {
    if (!has_token(text)) return;
    if (cp->n_docs == cp->cap) cp->docs = (doc *)xrealloc(cp->docs, (size_t)(cp->cap = 2 * cp->cap + 256) * sizeof(doc));
    memset(&cp->docs[cp->n_docs], 0, sizeof(doc));
    cp->docs[cp->n_docs].text = text;
    cp->docs[cp->n_docs++].label = label;
}

/* Keeps text as one of the corpus's files and cuts it into entries at the
   lines holding a single '%' ("%\r" too); each entry that holds a token
   becomes a doc of class label. */
static void add_entries(corpus *cp, char *text, int label) {
    char *line, *start = text, *next;
    cp->files = (char **)xrealloc(cp->files, (size_t)(cp->n_files + 1) * sizeof(char *));
    cp->files[cp->n_files++] = text;
    for (line = text; *line; line = next) {
        size_t len = strcspn(line, "\n");
        next = line + len + (line[len] == '\n');
        if (line[0] == '%' && (len == 1 || (len == 2 && line[1] == '\r'))) {
            *line = 0; /* ends the entry before this line */
            add_doc(cp, start, label);
            start = next;
        }
    }
    add_doc(cp, start, label);
}

/* The text lowercased, its whitespace runs made one space: what two copies
   of an entry share. */
static char *dedupe_key(const char *text) {
    char *key = (char *)xalloc(strlen(text) + 1), *k = key;
    for (; *text; text++) {
        if (isspace((unsigned char)*text)) {
            if (k > key && k[-1] != ' ') *k++ = ' ';
        } else {
            *k++ = (char)tolower((unsigned char)*text);
        }
    }
    k -= k > key && k[-1] == ' ';
    *k = 0;
    return key;
}

/* Keeps one copy of each entry, and none of an entry that two categories
   share; the docs keep their order. */
static void dedupe(corpus *cp, int *repeated, int *shared) {
    keyed *by = (keyed *)xalloc((size_t)cp->n_docs * sizeof(keyed));
    char *keep = (char *)xalloc((size_t)cp->n_docs);
    int i, j, n = 0;
    for (i = 0; i < cp->n_docs; i++) {
        by[i].text = dedupe_key(cp->docs[i].text);
        by[i].key = cp->docs[i].label;
        by[i].value = i;
    }
    qsort(by, (size_t)cp->n_docs, sizeof *by, by_text); /* copies together, each class's first copy first */
    *repeated = *shared = 0;
    for (i = 0; i < cp->n_docs; i = j) {
        for (j = i + 1; j < cp->n_docs && strcmp(by[j].text, by[i].text) == 0; j++) {}
        if (by[i].key == by[j - 1].key) {
            keep[by[i].value] = 1;
            *repeated += j - i - 1;
        } else {
            *shared += j - i;
        }
    }
    for (i = 0; i < cp->n_docs; i++) {
        free((char *)by[i].text);
        if (keep[i]) cp->docs[n++] = cp->docs[i];
    }
    cp->n_docs = n;
    free(by);
    free(keep);
}

/* Each category's docs, shuffled by a generator seeded from SPLIT_SEED and
   its name: a tenth for validation, a fifth for test, the rest to train.
   Then each part is shuffled, so that its first n docs are a fair sample. */
static void split(corpus *cp) {
    int *mine = (int *)xalloc((size_t)cp->n_docs * sizeof(int)), *order = (int *)xalloc((size_t)cp->n_docs * sizeof(int));
    int c, i, p, n;
    av_rng rng;
    for (p = 0; p < 3; p++) cp->part[p] = (int *)xalloc((size_t)cp->n_docs * sizeof(int));
    for (c = 0; c < cp->n_classes; c++) {
        for (n = i = 0; i < cp->n_docs; i++)
            if (cp->docs[i].label == c) mine[n++] = i;
        av_rng_seed(&rng, SPLIT_SEED ^ hash_str(cp->names[c]));
        ex_shuffle(order, n, &rng);
        for (i = 0; i < n; i++) {
            p = i < n / 10 ? VAL : i < n / 10 + n / 5 ? TEST : TRAIN;
            cp->part[p][cp->count[p]++] = mine[order[i]];
        }
    }
    av_rng_seed(&rng, SPLIT_SEED);
    for (p = 0; p < 3; p++) {
        ex_shuffle(order, cp->count[p], &rng);
        for (i = 0; i < cp->count[p]; i++) mine[i] = cp->part[p][order[i]];
        memcpy(cp->part[p], mine, (size_t)cp->count[p] * sizeof(int));
    }
    free(mine);
    free(order);
}

/* Reads the categories' files from dir, dedupes and splits; 0, or -1 after
   saying what is wrong (and how to get the data when it is missing). */
static int load_corpus(const char *dir, const char *list, corpus *cp) {
    int c, repeated, shared, per_class[MAX_CATEGORIES] = {0}, i;
    char path[1200], *text;
    memset(cp, 0, sizeof *cp);
    if ((cp->n_classes = parse_categories(list, cp->names)) < 0) return -1;
    for (c = 0; c < cp->n_classes; c++) {
        snprintf(path, sizeof path, "%s/%s", dir, cp->names[c]);
        if (!(text = read_text(path))) {
            fprintf(stderr, "error: cannot read %s: %s\n", path, strerror(errno));
            if (errno == ENOENT)
                fprintf(stderr, "  The fortunes come from Debian's fortunes package: make deps (or apt-get install\n"
                                "  fortunes) installs them in /usr/share/games/fortunes; or pass --data DIR.\n");
            return -1;
        }
        add_entries(cp, text, c);
    }
    dedupe(cp, &repeated, &shared);
    for (i = 0; i < cp->n_docs; i++) per_class[cp->docs[i].label]++;
    for (c = 0; c < cp->n_classes; c++)
        if (per_class[c] < MIN_ENTRIES) { /* so that each is in validation once and in test twice */
            fprintf(stderr, "error: %s/%s holds %d entries (after dropping repeats), fewer than the %d a category needs "
                            "(fortune files separate entries with lines of a single '%%')\n",
                    dir, cp->names[c], per_class[c], MIN_ENTRIES);
            return -1;
        }
    split(cp);
    printf("data: %d entries in %d categories (%d repeats and %d entries that categories share dropped)\n",
           cp->n_docs, cp->n_classes, repeated, shared);
    for (c = 0; c < cp->n_classes; c++) printf("%s%s %d", c ? ", " : "  ", cp->names[c], per_class[c]);
    printf("\n");
    return 0;
}

/* The vocabulary: "<unk>" (id 0), then the tokens seen at least min_count
   times in the first limit tokens of docs idx[0..n) (idx NULL: the first
   n docs), the most frequent first (ties: the first seen first). */
static void build_vocab(const doc *docs, const int *idx, int n, int limit, int min_count, vocab *out) {
    vocab all;
    keyed *order;
    char tok[MAX_TOKEN];
    int i, t, kept = 0;
    memset(&all, 0, sizeof all);
    memset(out, 0, sizeof *out);
    for (i = 0; i < n; i++) {
        const char *s = docs[idx ? idx[i] : i].text;
        for (t = 0; t < limit && next_token(&s, tok); t++) vocab_add(&all, tok);
    }
    order = (keyed *)xalloc((size_t)all.n * sizeof(keyed));
    for (i = 0; i < all.n; i++)
        if (all.count[i] >= min_count) {
            order[kept].key = -all.count[i];
            order[kept++].value = i;
        }
    qsort(order, (size_t)kept, sizeof *order, by_key);
    vocab_add(out, "<unk>"); /* never a token: '<' is one by itself */
    for (i = 0; i < kept; i++) vocab_add(out, all.word[order[i].value]);
    free(order);
    vocab_free(&all);
}

/* The ids of text's first max_len tokens (0 for unknown ones) into ids;
   returns how many. */
static int encode(const vocab *v, const char *text, int max_len, int *ids) {
    char tok[MAX_TOKEN];
    int n = 0, id;
    while (n < max_len && next_token(&text, tok)) ids[n++] = (id = vocab_find(v, tok)) > 0 ? id : 0;
    return n;
}

/* The token strings of text's first max_len tokens; returns how many. */
static int tokens_of(const char *text, char (*toks)[MAX_TOKEN], int max_len) {
    int n = 0;
    while (n < max_len && next_token(&text, toks[n])) n++;
    return n;
}

/* ---- pretraining: word vectors from all the fortune files ----------------------- */
/* The entries of every fortune file in dir (regular files whose name has no
   '.', so not the .dat indexes) except copies of a validation or test doc
   of cp: unlabeled text, to learn word vectors from. 0, or -1 after saying
   what is wrong. */
static int load_unlabeled(const char *dir, const corpus *cp, corpus *u) {
    int n_held = cp->count[VAL] + cp->count[TEST], n_names = 0, i, k, p;
    keyed *held = (keyed *)xalloc((size_t)n_held * sizeof(keyed)), probe;
    char **names = NULL, path[1200], *text;
    struct dirent *e;
    struct stat st;
    DIR *d = opendir(dir);
    memset(u, 0, sizeof *u);
    if (!d) {
        fprintf(stderr, "error: cannot list %s: %s\n", dir, strerror(errno));
        free(held);
        return -1;
    }
    while ((e = readdir(d)) != NULL)
        if (!strchr(e->d_name, '.')) {
            names = (char **)xrealloc(names, (size_t)(n_names + 1) * sizeof(char *));
            names[n_names] = (char *)xalloc(strlen(e->d_name) + 1);
            strcpy(names[n_names++], e->d_name);
        }
    closedir(d);
    qsort(names, (size_t)n_names, sizeof *names, by_string); /* the same order on every machine */
    for (i = 0; i < n_names; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && (text = read_text(path)) != NULL) add_entries(u, text, -1);
        free(names[i]);
    }
    free(names);
    for (n_held = 0, p = VAL; p <= TEST; p++) /* the held-out docs' keys, sorted */
        for (i = 0; i < cp->count[p]; i++) {
            held[n_held].key = held[n_held].value = 0;
            held[n_held++].text = dedupe_key(cp->docs[cp->part[p][i]].text);
        }
    qsort(held, (size_t)n_held, sizeof *held, by_text);
    probe.key = probe.value = 0;
    for (i = k = 0; i < u->n_docs; i++) {
        probe.text = dedupe_key(u->docs[i].text);
        if (!bsearch(&probe, held, (size_t)n_held, sizeof *held, by_text)) u->docs[k++] = u->docs[i];
        free((char *)probe.text);
    }
    u->n_docs = k;
    for (i = 0; i < n_held; i++) free((char *)held[i].text);
    free(held);
    return 0;
}

#define SG_WINDOW 5       /* context: up to this many tokens on each side */
#define SG_NEGATIVES 5    /* words drawn from unigram^0.75 per pair */
#define SG_PAIRS 4096     /* (word, context) pairs per step */
#define SG_MAX_DOC 1024   /* tokens of an entry kept after subsampling (the rest are not used) */
#define SG_SUBSAMPLE 1e-3 /* frequent words are kept with chance about sqrt(this / frequency) */

/* One Adam step of skip-gram with negative sampling on n pairs: the input
   vector of words[i] scores targets[i (K + 1)] (a context word, label 1)
   and the K negatives after it (label 0) by dot products; the loss is
   their binary cross-entropy, summed per pair and averaged. */
static int sg_step(av_ctx *c, av_model *m, av_tensor *in, av_tensor *out, const int *words, const int *targets, int n,
                   const float *labels, const av_optim *opt) {
    const int K1 = SG_NEGATIVES + 1, E = in->shape[1];
    av_tensor *u = av_reshape(c, av_embedding(c, in, words, n), 3, n, E, 1);
    av_tensor *o = av_reshape(c, av_embedding(c, out, targets, n * K1), 3, n, K1, E);
    av_tensor *scores = av_matmul(c, o, u, 0, 0); /* [n, K + 1, 1] */
    av_tensor *loss = av_scale(c, av_bce_with_logits(c, scores, av_wrap(c, (float *)labels, 3, n, K1, 1), AV_SUM),
                               1.0f / n);
    av_model_zero_grad(m);
    av_backward(c, loss);
    return av_optim_step(m, opt);
}

/* Skip-gram with negative sampling (Mikolov et al. 2013) over the docs of
   u: a word's vector learns to tell the words around it from random ones.
   Writes the learned vectors, scaled to unit standard deviation like
   nn.Embedding's N(0, 1), into embed [vocab, dim]. 0, or -1 after a failed
   step. */
static int pretrain(av_ctx *c, const corpus *u, const vocab *v, av_tensor *embed, int epochs, long max_tokens, int seed) {
    const int V = embed->shape[0], E = embed->shape[1], K1 = SG_NEGATIVES + 1;
    av_model *m = av_model_new((uint64_t)seed);
    av_tensor *in = av_param(m, "in", AV_INIT_UNIFORM, 0.5f / E, 2, V, E), *out = av_param(m, "out", AV_INIT_ZEROS, 0, 2, V, E);
    av_optim opt = av_adam(2e-3);
    av_rng *rng = av_ctx_rng(c);
    long n_tok = 0, total = 0, i, j, at, steps = 0;
    int *stream, *start, *order, *words = (int *)xalloc(SG_PAIRS * sizeof(int)), *targets = (int *)xalloc((size_t)SG_PAIRS * K1 * sizeof(int));
    int epoch, k, n = 0, d, rc = 0, id;
    double *count = (double *)xalloc((size_t)V * sizeof(double)), *cdf = (double *)xalloc((size_t)V * sizeof(double)), sum, sq;
    float *labels = (float *)xalloc((size_t)SG_PAIRS * K1 * sizeof(float));
    char tok[MAX_TOKEN];
    if (av_model_error(m)) {
        fprintf(stderr, "error: %s\n", av_error());
        av_model_free(m);
        return -1;
    }
    /* the known tokens of each doc, one stream; start[d] is where doc d begins */
    for (d = 0; d < u->n_docs; d++) {
        const char *s = u->docs[d].text;
        while (next_token(&s, tok)) n_tok++;
    }
    stream = (int *)xalloc((size_t)n_tok * sizeof(int));
    start = (int *)xalloc(((size_t)u->n_docs + 1) * sizeof(int));
    order = (int *)xalloc((size_t)u->n_docs * sizeof(int));
    for (d = 0; d < u->n_docs; d++) {
        const char *s = u->docs[d].text;
        start[d] = (int)total;
        while (next_token(&s, tok) && total < max_tokens)
            if ((id = vocab_find(v, tok)) > 0) {
                stream[total++] = id;
                count[id]++;
            }
    }
    start[u->n_docs] = (int)total;
    for (sum = 0, k = 0; k < V; k++) cdf[k] = sum += pow(count[k], 0.75); /* negatives ~ count^0.75 */
    for (i = 0; i < SG_PAIRS * K1; i++) labels[i] = i % K1 == 0;
    printf("pretraining word vectors: skip-gram on %ld tokens of %d entries from every fortune file\n", total, u->n_docs);
    for (epoch = 1; epoch <= epochs && !rc && total; epoch++) {
        ex_shuffle(order, u->n_docs, rng);
        for (d = 0; d < u->n_docs && !rc; d++) {
            int lo = start[order[d]], hi = start[order[d] + 1], kept[SG_MAX_DOC], m_kept = 0;
            for (at = lo; at < hi && m_kept < SG_MAX_DOC; at++) { /* subsampling, then windows over what is kept */
                double f = count[stream[at]] / (double)total;
                if (av_rng_uniform(rng) < (sqrt(f / SG_SUBSAMPLE) + 1) * SG_SUBSAMPLE / f) kept[m_kept++] = stream[at];
            }
            for (i = 0; i < m_kept && !rc; i++) {
                int b = 1 + (int)(av_rng_u64(rng) % SG_WINDOW);
                for (j = i - b; j <= i + b && !rc; j++) {
                    if (j < 0 || j >= m_kept || j == i) continue;
                    words[n] = kept[i];
                    targets[n * K1] = kept[j];
                    for (k = 1; k < K1; k++) { /* a draw from the cdf by bisection */
                        double r = av_rng_uniform(rng) * sum;
                        int a = 0, z = V - 1;
                        while (a < z) {
                            int mid = (a + z) / 2;
                            if (cdf[mid] > r) z = mid;
                            else a = mid + 1;
                        }
                        targets[n * K1 + k] = a;
                    }
                    if (++n == SG_PAIRS) {
                        av_ctx_reset(c);
                        if ((rc = sg_step(c, m, in, out, words, targets, n, labels, &opt)) != 0)
                            fprintf(stderr, "\nerror: %s\n", av_error());
                        n = 0;
                        steps++;
                    }
                }
            }
            if (d % 200 == 0 || d == u->n_docs - 1) {
                char label[32];
                snprintf(label, sizeof label, "vectors %d", epoch);
                ex_progress(label, d + 1, u->n_docs, "");
            }
        }
    }
    for (sq = 0, i = 0; i < (long)V * E; i++) sq += (double)in->data[i] * in->data[i];
    for (i = 0; i < (long)V * E && sq > 0; i++) embed->data[i] = (float)(in->data[i] / sqrt(sq / ((double)V * E)));
    printf("  %ld steps of %d pairs\n", steps, SG_PAIRS);
    av_model_free(m);
    free(stream);
    free(start);
    free(order);
    free(words);
    free(targets);
    free(count);
    free(cdf);
    free(labels);
    return rc ? -1 : 0;
}

/* ---- batches ------------------------------------------------------------------ */
typedef struct batch {
    int *ids;     /* [n, T] row-major, 0 after each doc's end */
    int *lengths, *labels;
    float *mask;  /* the baseline's: 1 where ids holds a token */
} batch;

static batch batch_new(int size, int max_len) {
    batch b;
    b.ids = (int *)xalloc((size_t)size * max_len * sizeof(int));
    b.lengths = (int *)xalloc((size_t)size * sizeof(int));
    b.labels = (int *)xalloc((size_t)size * sizeof(int));
    b.mask = (float *)xalloc((size_t)size * max_len * sizeof(float));
    return b;
}

static void batch_free(batch *b) {
    free(b->ids);
    free(b->lengths);
    free(b->labels);
    free(b->mask);
}

/* The docs idx[0..n) padded to the longest, T; returns T. */
static int gather(const doc *docs, const int *idx, int n, batch *b) {
    int i, T = 1;
    for (i = 0; i < n; i++) T = docs[idx[i]].len > T ? docs[idx[i]].len : T;
    for (i = 0; i < n; i++) {
        const doc *d = &docs[idx[i]];
        memcpy(b->ids + (size_t)i * T, d->ids, (size_t)d->len * sizeof(int));
        memset(b->ids + (size_t)i * T + d->len, 0, (size_t)(T - d->len) * sizeof(int));
        b->lengths[i] = d->len;
        b->labels[i] = d->label;
    }
    return T;
}

/* The docs idx[0..n) in batches of about equal lengths: sorted by length
   within runs of 16 batches (so that an epoch still mixes), written back to
   idx. */
static void sort_by_length(const doc *docs, int *idx, int n, int batch_size) {
    int run = 16 * batch_size, start, i;
    keyed *by = (keyed *)xalloc((size_t)(n > 0 && n < run ? n : run) * sizeof(keyed));
    for (start = 0; start < n; start += run) {
        int count = n - start < run ? n - start : run;
        for (i = 0; i < count; i++) {
            by[i].key = docs[idx[start + i]].len;
            by[i].value = idx[start + i];
        }
        qsort(by, (size_t)count, sizeof *by, by_key);
        for (i = 0; i < count; i++) idx[start + i] = by[i].value;
    }
    free(by);
}

/* ---- the classifier: embedding, BiLSTM, attention pooling, linear ------------- */
typedef struct sizes { int vocab, classes, embed, hidden, attn, max_len; } sizes;
typedef struct classifier {
    av_embedding_layer embed;
    av_rnn lstm;
    av_attn_pool pool;
    av_linear_layer out;
    float dropout, word_dropout; /* in training: on the embeddings and the pooled vector; tokens read as <unk> */
} classifier;

static classifier classifier_new(av_model *m, const sizes *s, float dropout, float word_dropout) {
    classifier net;
    net.embed = av_embedding_new(m, "embed", s->vocab, s->embed);
    net.lstm = av_lstm_new(m, "lstm", s->embed, s->hidden, 1, 1, 0.0f);
    net.pool = av_attn_pool_new(m, "pool", 2 * s->hidden, s->attn);
    net.out = av_linear_layer_new(m, "out", 2 * s->hidden, s->classes, 1);
    net.dropout = dropout;
    net.word_dropout = word_dropout;
    return net;
}

/* Logits [n, classes] of a batch of T steps; the attention weights [n, T] go to *weights if it is not NULL. */
static av_tensor *classifier_forward(av_ctx *c, const classifier *net, const batch *b, int n, int T,
                                     av_tensor **weights) {
    av_tensor *x = av_dropout(c, av_embedding_forward(c, &net->embed, b->ids, n, T), net->dropout);
    av_tensor *h = av_rnn_forward(c, &net->lstm, x, NULL, NULL, b->lengths, NULL, NULL); /* [n, T, 2 hidden] */
    av_tensor *pooled = av_attn_pool_forward(c, &net->pool, h, b->lengths, weights);
    return av_linear_forward(c, &net->out, av_dropout(c, pooled, net->dropout));
}

/* Classifies docs idx[0..n) without a tape or dropout: the most likely
   class of each in pred[n] (its probability in prob[n] if not NULL) and,
   if weights is not NULL, its attention weights (max_len per doc, zero
   after its length). Returns the accuracy. */
static double classify(av_ctx *c, const classifier *net, const doc *docs, const int *idx, int n, int batch_size,
                       int max_len, batch *b, int *pred, float *prob, float *weights) {
    int *order = (int *)xalloc((size_t)n * sizeof(int)), *where = (int *)xalloc((size_t)n * sizeof(int));
    int start, i, k, correct = 0, was_training = av_set_training(c, 0), had_grad = av_set_grad_enabled(c, 0);
    keyed *by = (keyed *)xalloc((size_t)n * sizeof(keyed));
    for (i = 0; i < n; i++) { /* by length, so that batches carry little padding */
        by[i].key = docs[idx[i]].len;
        by[i].value = i;
    }
    qsort(by, (size_t)n, sizeof *by, by_key);
    for (i = 0; i < n; i++) {
        where[i] = by[i].value;
        order[i] = idx[by[i].value];
    }
    for (start = 0; start < n; start += batch_size) {
        int count = n - start < batch_size ? n - start : batch_size, T;
        av_tensor *w, *p;
        av_ctx_reset(c);
        T = gather(docs, order + start, count, b);
        p = av_softmax(c, classifier_forward(c, net, b, count, T, &w));
        for (i = 0; i < count; i++) {
            const float *row = p->data + (size_t)i * p->shape[1];
            int best = 0, at = where[start + i];
            for (k = 1; k < p->shape[1]; k++) best = row[k] > row[best] ? k : best;
            pred[at] = best;
            if (prob) prob[at] = row[best];
            correct += best == b->labels[i];
            for (k = 0; weights && k < max_len; k++) weights[(size_t)at * max_len + k] = k < T ? w->data[(size_t)i * T + k] : 0;
        }
    }
    av_set_training(c, was_training);
    av_set_grad_enabled(c, had_grad);
    free(order);
    free(where);
    free(by);
    return n ? (double)correct / n : 0;
}

/* Copies every parameter of m into buf, or back from it. */
static void snapshot(av_model *m, float *buf, int restore) {
    int i;
    for (i = 0; i < av_model_count(m); i++) {
        av_tensor *p = av_model_param(m, i);
        if (restore) memcpy(p->data, buf, (size_t)p->size * sizeof(float));
        else memcpy(buf, p->data, (size_t)p->size * sizeof(float));
        buf += p->size;
    }
}

/* One epoch over the training docs, in shuffled batches of about equal
   lengths. Returns the mean loss, or -1 after a failed step (message printed). */
static double train_epoch(av_ctx *c, av_model *m, const classifier *net, const av_optim *opt, const corpus *cp,
                          int n_train, int batch_size, batch *b, const char *label) {
    int n_batches = (n_train + batch_size - 1) / batch_size, k, i, done = 0;
    int *order = (int *)xalloc((size_t)n_train * sizeof(int)), *visit = (int *)xalloc((size_t)n_batches * sizeof(int));
    double loss_sum = 0;
    ex_shuffle(order, n_train, av_ctx_rng(c));
    for (k = 0; k < n_train; k++) order[k] = cp->part[TRAIN][order[k]];
    sort_by_length(cp->docs, order, n_train, batch_size);
    ex_shuffle(visit, n_batches, av_ctx_rng(c));
    for (k = 0; k < n_batches; k++) {
        int start = visit[k] * batch_size, count = n_train - start < batch_size ? n_train - start : batch_size, T;
        av_tensor *loss;
        char info[64];
        av_ctx_reset(c);
        T = gather(cp->docs, order + start, count, b);
        for (i = 0; i < count * T; i++)
            if (av_rng_uniform(av_ctx_rng(c)) < net->word_dropout) b->ids[i] = 0;
        loss = av_cross_entropy(c, classifier_forward(c, net, b, count, T, NULL), b->labels, AV_MEAN);
        av_model_zero_grad(m);
        av_backward(c, loss);
        av_clip_grad_norm(m, 5.0f);
        if (av_optim_step(m, opt)) {
            fprintf(stderr, "\nerror: %s\n", av_error());
            loss_sum = -1;
            break;
        }
        loss_sum += av_item(loss) * count;
        done += count;
        snprintf(info, sizeof info, "loss %.4f", loss_sum / done);
        if (k % 10 == 0 || k == n_batches - 1) ex_progress(label, done, n_train, info);
    }
    free(order);
    free(visit);
    return loss_sum < 0 ? -1 : loss_sum / n_train;
}

/* ---- the baseline: logistic regression on the set of tokens ------------------- */
typedef struct bow { av_tensor *weight, *bias; } bow; /* weight [vocab, classes]: a row per token */

static int by_int(const void *a, const void *b) { return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b); }

/* Logits [n, classes] of docs idx[0..n): the bias plus the rows of the
   distinct known tokens each holds. */
static av_tensor *bow_forward(av_ctx *c, const bow *net, const doc *docs, const int *idx, int n, int max_len, batch *b) {
    int i, k, U = 1;
    for (i = 0; i < n; i++) { /* each doc's distinct known ids, first at stride max_len */
        const doc *d = &docs[idx[i]];
        int *row = b->ids + (size_t)i * max_len, m = 0;
        for (k = 0; k < d->len; k++)
            if (d->ids[k]) row[m++] = d->ids[k];
        qsort(row, (size_t)m, sizeof *row, by_int);
        for (b->lengths[i] = 0, k = 0; k < m; k++)
            if (k == 0 || row[k] != row[k - 1]) row[b->lengths[i]++] = row[k];
        U = b->lengths[i] > U ? b->lengths[i] : U;
    }
    for (i = 0; i < n; i++) /* then at stride U (never past a row not yet moved) */
        for (k = 0; k < U; k++) {
            int in = k < b->lengths[i];
            b->ids[(size_t)i * U + k] = in ? b->ids[(size_t)i * max_len + k] : 0;
            b->mask[(size_t)i * U + k] = (float)in;
        }
    {
        av_tensor *rows = av_reshape(c, av_embedding(c, net->weight, b->ids, n * U), 3, n, U, net->weight->shape[1]);
        av_tensor *sum = av_sum(c, av_mul(c, rows, av_wrap(c, b->mask, 3, n, U, 1)), 1, 0);
        return av_add(c, sum, net->bias);
    }
}

static double bow_accuracy(av_ctx *c, const bow *net, const corpus *cp, int part, int n, int max_len, batch *b,
                           int batch_size) {
    int start, i, k, correct = 0, had_grad = av_set_grad_enabled(c, 0);
    for (start = 0; start < n; start += batch_size) {
        int count = n - start < batch_size ? n - start : batch_size;
        const int *idx = cp->part[part] + start;
        av_tensor *logits;
        av_ctx_reset(c);
        logits = bow_forward(c, net, cp->docs, idx, count, max_len, b);
        for (i = 0; i < count; i++) {
            const float *row = logits->data + (size_t)i * cp->n_classes;
            int best = 0;
            for (k = 1; k < cp->n_classes; k++) best = row[k] > row[best] ? k : best;
            correct += best == cp->docs[idx[i]].label;
        }
    }
    av_set_grad_enabled(c, had_grad);
    return n ? (double)correct / n : 0;
}

/* Trains the baseline with Adam once per L2 strength of a small grid and
   keeps the strength and epoch of the best validation accuracy. Returns
   the test accuracy of those weights (-1 after a failed step); the
   validation accuracy goes to *val_acc. */
static double run_baseline(av_ctx *c, const corpus *cp, const int *n_part, int vocab_size, int max_len, int epochs,
                           int seed, batch *b, double *val_acc) {
    static const float l2[] = {0.0f, 1e-5f, 1e-4f, 1e-3f};
    const int batch_size = 64;
    av_optim adam = av_adam(1e-2);
    av_model *m = NULL;
    bow net;
    float *best = (float *)xalloc(((size_t)vocab_size + 1) * cp->n_classes * sizeof(float));
    int *order = (int *)xalloc((size_t)n_part[TRAIN] * sizeof(int)), g, epoch, start, i, best_g = 0, best_epoch = 0;
    double test = -1, acc;
    *val_acc = -1;
    for (g = 0; g < (int)(sizeof l2 / sizeof l2[0]); g++) {
        av_model_free(m);
        m = av_model_new((uint64_t)seed);
        net.weight = av_param(m, "weight", AV_INIT_ZEROS, 0, 2, vocab_size, cp->n_classes);
        net.bias = av_param(m, "bias", AV_INIT_ZEROS, 0, 1, cp->n_classes);
        if (av_model_error(m)) {
            fprintf(stderr, "error: %s\n", av_error());
            goto done;
        }
        for (epoch = 1; epoch <= epochs; epoch++) {
            ex_shuffle(order, n_part[TRAIN], av_ctx_rng(c));
            for (i = 0; i < n_part[TRAIN]; i++) order[i] = cp->part[TRAIN][order[i]];
            for (start = 0; start < n_part[TRAIN]; start += batch_size) {
                int count = n_part[TRAIN] - start < batch_size ? n_part[TRAIN] - start : batch_size;
                av_tensor *loss;
                av_ctx_reset(c);
                for (i = 0; i < count; i++) b->labels[i] = cp->docs[order[start + i]].label;
                loss = av_cross_entropy(c, bow_forward(c, &net, cp->docs, order + start, count, max_len, b), b->labels,
                                        AV_MEAN);
                if (l2[g] > 0) loss = av_add(c, loss, av_scale(c, av_sum_all(c, av_square(c, net.weight)), l2[g]));
                av_model_zero_grad(m);
                av_backward(c, loss);
                if (av_optim_step(m, &adam)) {
                    fprintf(stderr, "error: %s\n", av_error());
                    goto done;
                }
            }
            if ((acc = bow_accuracy(c, &net, cp, VAL, n_part[VAL], max_len, b, batch_size)) > *val_acc) {
                *val_acc = acc;
                best_g = g;
                best_epoch = epoch;
                snapshot(m, best, 0);
            }
        }
        ex_progress("baseline", g + 1, (int)(sizeof l2 / sizeof l2[0]), "");
    }
    snapshot(m, best, 1);
    test = bow_accuracy(c, &net, cp, TEST, n_part[TEST], max_len, b, batch_size);
    printf("baseline (bag of words, logistic regression): L2 %g, epoch %d: validation %.2f%%, test %.2f%%\n",
           (double)l2[best_g], best_epoch, 100 * *val_acc, 100 * test);
done:
    av_model_free(m);
    free(best);
    free(order);
    return test;
}

/* ---- attention: the most-attended tokens, and a picture ------------------------ */
/* Positions of the k largest of w[0..n), largest first (ties: the first);
   returns how many, min(k, n). */
static int top_k(const float *w, int n, int k, int *top) {
    int i, j, m = 0;
    for (i = 0; i < n; i++) {
        j = m < k ? m++ : k; /* the slot after the last */
        for (; j > 0 && w[top[j - 1]] < w[i]; j--)
            if (j < k) top[j] = top[j - 1];
        if (j < k) top[j] = i;
    }
    return m;
}

static void print_top(const float *w, int n, char (*toks)[MAX_TOKEN]) {
    int top[TOP], m = top_k(w, n, TOP, top), i;
    for (i = 0; i < m; i++) printf("%s%s %.2f", i ? ", " : "", toks[top[i]], (double)w[top[i]]);
}

#define PNG_SCALE 2
#define PNG_COLS 72                          /* characters per line */
#define PNG_LINE (12 * PNG_SCALE)
#define PNG_MARGIN (8 * PNG_SCALE)
#define PNG_WIDTH (2 * PNG_MARGIN + PNG_COLS * EX_ADVANCE * PNG_SCALE)

/* Lays out the docs: a line naming the true and the predicted category,
   then the tokens, wrapped, each on a background whose shade is in
   proportion to its attention weight (the doc's largest: full shade).
   rgb NULL only measures. Returns the height in pixels. */
static int draw_attention(unsigned char *rgb, int height, const corpus *cp, const int *docs, int n, const int *pred,
                          const float *weights, int max_len, char (*toks)[MAX_TOKEN]) {
    static const unsigned char black[3] = {0, 0, 0}, grey[3] = {90, 90, 90}, right[3] = {0, 120, 0},
                               wrong[3] = {190, 0, 0}, full[3] = {253, 141, 60};
    const int S = PNG_SCALE, W = PNG_WIDTH;
    int y = PNG_MARGIN, i, t, k;
    char head[3 * MAX_NAME];
    if (rgb) ex_draw_text(rgb, W, height, PNG_MARGIN, y, "attention pooling over a BiLSTM: the darker, the more attended",
                          grey, S);
    y += 2 * PNG_LINE;
    for (i = 0; i < n; i++) {
        const doc *d = &cp->docs[docs[i]];
        const float *w = weights + (size_t)i * max_len;
        float most = 0;
        int x = PNG_MARGIN, len = tokens_of(d->text, toks, d->len);
        snprintf(head, sizeof head, "%s -> predicted %s", cp->names[d->label], cp->names[pred[i]]);
        if (rgb) ex_draw_text(rgb, W, height, PNG_MARGIN, y, head, pred[i] == d->label ? right : wrong, S);
        y += PNG_LINE;
        for (t = 0; t < len; t++) most = w[t] > most ? w[t] : most;
        for (t = 0; t < len; t++) {
            int tw = ex_text_width(toks[t], S);
            unsigned char shade[3];
            if (x + tw > W - PNG_MARGIN && x > PNG_MARGIN) {
                x = PNG_MARGIN;
                y += PNG_LINE;
            }
            for (k = 0; k < 3; k++) shade[k] = (unsigned char)(255 - (most > 0 ? w[t] / most : 0) * (255 - full[k]) + 0.5f);
            if (rgb) {
                ex_fill_rect(rgb, W, height, x - S, y - 2 * S, tw + 2 * S, 11 * S, shade);
                ex_draw_text(rgb, W, height, x, y, toks[t], black, S);
            }
            x += tw + EX_ADVANCE * S;
        }
        y += 2 * PNG_LINE;
    }
    return y;
}

static int write_attention_png(const char *path, const corpus *cp, const int *docs, int n, const int *pred,
                               const float *weights, int max_len) {
    char (*toks)[MAX_TOKEN] = (char(*)[MAX_TOKEN])xalloc((size_t)max_len * MAX_TOKEN);
    int height = draw_attention(NULL, 0, cp, docs, n, pred, weights, max_len, toks), rc;
    unsigned char *rgb = (unsigned char *)xalloc((size_t)PNG_WIDTH * height * 3);
    memset(rgb, 255, (size_t)PNG_WIDTH * height * 3);
    draw_attention(rgb, height, cp, docs, n, pred, weights, max_len, toks);
    rc = ex__write_png(path, PNG_WIDTH, height, 3, rgb);
    free(rgb);
    free(toks);
    return rc;
}

/* ---- model files: the weights, and as metadata what reading text needs -------- */
static const char *const meta_keys[] = {"format", "categories", "vocab", "embed", "hidden", "attn", "max_len"};
#define N_META 7
#define FORMAT "attnvae-text-classifier"

/* The n strings at base, stride bytes apart, joined by sep. */
static char *join(const char *base, size_t stride, int n, char sep) {
    size_t len = 1, at = 0;
    char *s;
    int i;
    for (i = 0; i < n; i++) len += strlen(base + i * stride) + 1;
    s = (char *)xalloc(len);
    for (i = 0; i < n; i++) at += (size_t)sprintf(s + at, "%s%c", base + i * stride, sep);
    s[at ? at - 1 : 0] = 0;
    return s;
}

static int save_model(const char *path, av_model *m, const corpus *cp, const vocab *v, const sizes *s) {
    int n = av_model_count(m), i, rc;
    av_st_item *items = (av_st_item *)xalloc((size_t)n * sizeof *items);
    char *cats = join(cp->names[0], MAX_NAME, cp->n_classes, ','), *words = join(v->word[0], MAX_TOKEN, v->n, '\n');
    char nums[4][16];
    const char *values[N_META];
    for (i = 0; i < n; i++) {
        av_tensor *p = av_model_param(m, i);
        items[i].name = p->name;
        items[i].ndim = p->ndim;
        items[i].shape = p->shape;
        items[i].data = p->data;
        items[i].dtype = AV_DTYPE_F32;
    }
    snprintf(nums[0], sizeof nums[0], "%d", s->embed);
    snprintf(nums[1], sizeof nums[1], "%d", s->hidden);
    snprintf(nums[2], sizeof nums[2], "%d", s->attn);
    snprintf(nums[3], sizeof nums[3], "%d", s->max_len);
    values[0] = FORMAT;
    values[1] = cats;
    values[2] = words;
    for (i = 0; i < 4; i++) values[3 + i] = nums[i];
    if ((rc = av_st_save(path, items, n, meta_keys, values, N_META)) != 0) fprintf(stderr, "error: %s\n", av_error());
    free(items);
    free(cats);
    free(words);
    return rc;
}

/* A whole number in [1, hi], or -1. */
static int parse_size(const char *text, int hi) {
    char *end;
    long v;
    errno = 0;
    v = strtol(text, &end, 10);
    return end != text && !*end && !errno && isdigit((unsigned char)*text) && v >= 1 && v <= hi ? (int)v : -1;
}

/* Reads a file that save_model wrote: the sizes, categories and vocabulary
   from its metadata, then the weights by name. 0, or -1 after saying what
   is wrong. */
static int load_model(const char *path, av_model **m, classifier *net, sizes *s, corpus *cp, vocab *v) {
    av_st_file *f;
    const char *meta[N_META], *w;
    int k, *size[4], limit[4] = {1024, 1024, 1024, 10000}, rc = 0;
    char tok[MAX_TOKEN];
    size[0] = &s->embed;
    size[1] = &s->hidden;
    size[2] = &s->attn;
    size[3] = &s->max_len;
    memset(v, 0, sizeof *v);
    memset(cp, 0, sizeof *cp);
    if (av_st_open(path, &f)) {
        fprintf(stderr, "error: %s\n", av_error());
        return -1;
    }
    for (k = 0; k < N_META && !rc; k++)
        if (!(meta[k] = av_st_meta(f, meta_keys[k]))) {
            fprintf(stderr, "error: %s: not a text_classifier model (no \"%s\" in its metadata)\n", path, meta_keys[k]);
            rc = -1;
        }
    if (!rc && strcmp(meta[0], FORMAT) != 0) {
        fprintf(stderr, "error: %s: format \"%s\", not \"%s\"\n", path, meta[0], FORMAT);
        rc = -1;
    }
    for (k = 0; k < 4 && !rc; k++)
        if ((*size[k] = parse_size(meta[3 + k], limit[k])) < 0) {
            fprintf(stderr, "error: %s: \"%s\" is \"%s\", not a size from 1 to %d\n", path, meta_keys[3 + k], meta[3 + k],
                    limit[k]);
            rc = -1;
        }
    if (!rc && (cp->n_classes = parse_categories(meta[1], cp->names)) < 0) {
        fprintf(stderr, "error: %s: its categories are not valid\n", path);
        rc = -1;
    }
    for (w = meta[2]; !rc && *w; w += k + (w[k] == '\n')) { /* one token per line, "<unk>" first */
        k = (int)strcspn(w, "\n");
        snprintf(tok, sizeof tok, "%.*s", k, w);
        if (k == 0 || k >= MAX_TOKEN || (v->n == 0) != (strcmp(tok, "<unk>") == 0) || vocab_find(v, tok) >= 0) {
            fprintf(stderr, "error: %s: vocabulary entry %d ('%.20s') is empty, too long, repeated or misplaced\n", path,
                    v->n, tok);
            rc = -1;
        } else {
            vocab_add(v, tok);
        }
    }
    av_st_close(f);
    if (!rc && v->n == 0) {
        fprintf(stderr, "error: %s: empty vocabulary\n", path);
        rc = -1;
    }
    if (rc) return -1;
    s->vocab = v->n;
    s->classes = cp->n_classes;
    *m = av_model_new(0);
    *net = classifier_new(*m, s, 0.0f, 0.0f);
    if (av_model_error(*m) || av_model_load(*m, path)) {
        fprintf(stderr, "error: %s\n", av_error());
        return -1;
    }
    return 0;
}

/* Classifies each line of standard input: its category and that class's
   probability, then its most-attended tokens. Returns the lines read. */
static int classify_lines(av_ctx *c, const classifier *net, const sizes *s, const vocab *v, const corpus *cp, batch *b) {
    char *line = NULL, (*toks)[MAX_TOKEN] = (char(*)[MAX_TOKEN])xalloc((size_t)s->max_len * MAX_TOKEN);
    float *w = (float *)xalloc((size_t)s->max_len * sizeof(float)), prob;
    size_t cap = 0;
    int zero = 0, pred, n = 0;
    doc d;
    memset(&d, 0, sizeof d);
    d.ids = (int *)xalloc((size_t)s->max_len * sizeof(int));
    while (getline(&line, &cap, stdin) >= 0) {
        n++;
        d.text = line;
        if (!(d.len = encode(v, line, s->max_len, d.ids))) {
            printf("-  (no words)\n");
            continue;
        }
        classify(c, net, &d, &zero, 1, 1, s->max_len, b, &pred, &prob, w);
        tokens_of(line, toks, d.len);
        printf("%s %.2f  ", cp->names[pred], (double)prob);
        print_top(w, d.len, toks);
        printf("\n");
        fflush(stdout);
    }
    free(line);
    free(toks);
    free(w);
    free(d.ids);
    return n;
}

/* The first SHOWN test docs of 8 to 40 tokens. */
static int pick_shown(const corpus *cp, int n_test, int *shown) {
    int i, n = 0;
    for (i = 0; i < n_test && n < SHOWN; i++)
        if (cp->docs[cp->part[TEST][i]].len >= 8 && cp->docs[cp->part[TEST][i]].len <= 40) shown[n++] = cp->part[TEST][i];
    return n;
}

int main(int argc, char **argv) {
    const char *data, *categories, *out, *png, *load;
    int epochs, batch_size, min_count, seed, quick, pretrain_epochs;
    float lr, dropout, word_dropout;
    sizes s;
    ex_flag flags[] = {
        EX_STRING_FLAG("data", &data, "/usr/share/games/fortunes", "directory of the fortune files"),
        EX_STRING_FLAG("categories", &categories, DEFAULT_CATEGORIES, "fortune files to tell apart, comma-separated"),
        EX_STRING_FLAG("out", &out, "text_classifier.safetensors", "model file to save, with its vocabulary"),
        EX_STRING_FLAG("png", &png, "text_attention.png", "picture of test entries shaded by attention"),
        EX_STRING_FLAG("load", &load, NULL, "classify each line of standard input with this model; no training"),
        EX_INT_FLAG("epochs", &epochs, "20", 1, 1000, "BiLSTM training epochs; 2 with --quick unless given"),
        EX_INT_FLAG("batch", &batch_size, "32", 1, 1024, "entries per training step"),
        EX_FLOAT_FLAG("lr", &lr, "3e-3", 1e-6, 1, "Adam learning rate"),
        EX_INT_FLAG("embed", &s.embed, "64", 1, 1024, "word embedding size"),
        EX_INT_FLAG("hidden", &s.hidden, "64", 1, 1024, "LSTM state size per direction"),
        EX_INT_FLAG("attn", &s.attn, "64", 1, 1024, "hidden size of the attention scores"),
        EX_FLOAT_FLAG("dropout", &dropout, "0.5", 0, 0.95, "dropout on the embeddings and on the pooled vector"),
        EX_FLOAT_FLAG("word-dropout", &word_dropout, "0", 0, 0.95, "chance that a training token reads as <unk>"),
        EX_INT_FLAG("max-len", &s.max_len, "200", 1, 10000, "tokens kept of each entry"),
        EX_INT_FLAG("min-count", &min_count, "2", 1, 1000000,
                    "times a token must occur to get an id: in the word vectors' text, else in training"),
        EX_INT_FLAG("pretrain-epochs", &pretrain_epochs, "3", 0, 100,
                    "skip-gram epochs of word vectors on every fortune file but the held-out entries (0: none)"),
        EX_INT_FLAG("seed", &seed, "1", 0, 2147483647, "seed of the weights, dropout and shuffling (not of the split)"),
        EX_SWITCH_FLAG("quick", &quick,
                       "a short run for tests: 2 epochs on at most 600 training entries, word vectors from 20000 tokens"),
    };
    corpus cp, unlabeled;
    vocab v;
    av_model *m = NULL;
    av_ctx *c;
    classifier net;
    av_optim opt;
    batch b;
    int n_part[3], i, epoch, best_epoch = 0, status, rc = 0, *pred = NULL, shown[SHOWN], n_shown;
    double t0 = ex_now(), val_acc = -1, acc, test_acc = 0, base_val = 0, base_test = 0, loss;
    float *best = NULL, *weights = NULL;
    char label[32];

    status = ex_parse(argc, argv,
                      "Classifies fortunes by their file (category) with a BiLSTM and attention pooling, against a\n"
                      "bag-of-words logistic regression; with --load, classifies the lines of standard input.",
                      flags, EX_COUNT(flags));
    if (status >= 0) return status;
    memset(&cp, 0, sizeof cp); /* freed on every failure, even before it is loaded */
    memset(&unlabeled, 0, sizeof unlabeled);
    c = av_ctx_new();
    av_ctx_seed(c, (uint64_t)seed);

    if (load) { /* classify standard input */
        int lines;
        if (load_model(load, &m, &net, &s, &cp, &v)) {
            av_model_free(m);
            vocab_free(&v);
            av_ctx_free(c);
            return 1;
        }
        b = batch_new(1, s.max_len);
        fprintf(stderr, "loaded %s: %d categories, %d tokens; reading lines from standard input\n", load, cp.n_classes,
                v.n);
        lines = classify_lines(c, &net, &s, &v, &cp, &b);
        printf("summary: {\"lines\": %d}\n", lines);
        batch_free(&b);
        av_model_free(m);
        vocab_free(&v);
        av_ctx_free(c);
        return 0;
    }

    if (!ex_given(flags, EX_COUNT(flags), "epochs") && quick) epochs = 2;
    if (ex_out_file(out) || ex_out_file(png) || load_corpus(data, categories, &cp) ||
        (pretrain_epochs > 0 && load_unlabeled(data, &cp, &unlabeled))) {
        corpus_free(&cp);
        corpus_free(&unlabeled);
        av_ctx_free(c);
        return 1;
    }
    for (i = 0; i < 3; i++) n_part[i] = quick && cp.count[i] > (i == TRAIN ? 600 : 150) ? (i == TRAIN ? 600 : 150) : cp.count[i];
    if (pretrain_epochs > 0) build_vocab(unlabeled.docs, NULL, unlabeled.n_docs, INT_MAX, min_count, &v);
    else build_vocab(cp.docs, cp.part[TRAIN], n_part[TRAIN], s.max_len, min_count, &v);
    for (i = 0; i < cp.n_docs; i++) {
        cp.docs[i].ids = (int *)xalloc((size_t)s.max_len * sizeof(int));
        cp.docs[i].len = encode(&v, cp.docs[i].text, s.max_len, cp.docs[i].ids);
    }
    s.vocab = v.n;
    s.classes = cp.n_classes;
    printf("split: %d train, %d validation, %d test entries%s; vocabulary %d tokens (<unk> and those seen %d+ times in %s)\n",
           n_part[TRAIN], n_part[VAL], n_part[TEST], quick ? " (--quick)" : "", v.n, min_count,
           pretrain_epochs > 0 ? "all fortune files but the held-out entries" : "the training entries");
    b = batch_new(batch_size > 64 ? batch_size : 64, s.max_len);

    base_test = run_baseline(c, &cp, n_part, v.n, s.max_len, quick ? 5 : 30, seed, &b, &base_val);
    if (base_test < 0) rc = 1;

    m = av_model_new((uint64_t)seed);
    net = classifier_new(m, &s, dropout, word_dropout);
    opt = av_adam(lr);
    if (!rc && av_model_error(m)) {
        fprintf(stderr, "error: %s\n", av_error());
        rc = 1;
    }
    if (!rc && pretrain_epochs > 0 &&
        pretrain(c, &unlabeled, &v, net.embed.weight, pretrain_epochs, quick ? 20000L : LONG_MAX, seed))
        rc = 1;
    if (!rc) printf("BiLSTM + attention pooling: %ld parameters, gemm path %s\n", av_model_num_values(m),
                    av_isa_name(av_get_isa()));
    best = (float *)xalloc((size_t)av_model_num_values(m) * sizeof(float));
    pred = (int *)xalloc((size_t)cp.n_docs * sizeof(int));
    for (epoch = 1; epoch <= epochs && !rc; epoch++) {
        snprintf(label, sizeof label, "epoch %d", epoch);
        if ((loss = train_epoch(c, m, &net, &opt, &cp, n_part[TRAIN], batch_size, &b, label)) < 0) {
            rc = 1;
            break;
        }
        acc = classify(c, &net, cp.docs, cp.part[VAL], n_part[VAL], 64, s.max_len, &b, pred, NULL, NULL);
        if (acc > val_acc) {
            val_acc = acc;
            best_epoch = epoch;
            snapshot(m, best, 0);
        }
        printf("epoch %2d  train loss %.4f  validation accuracy %.2f%%%s  (%.1f s)\n", epoch, loss, 100 * acc,
               best_epoch == epoch ? " (best)" : "", ex_now() - t0);
    }
    if (!rc) {
        snapshot(m, best, 1);
        test_acc = classify(c, &net, cp.docs, cp.part[TEST], n_part[TEST], 64, s.max_len, &b, pred, NULL, NULL);
        printf("test accuracy on %d entries: BiLSTM + attention %.2f%% (epoch %d), bag-of-words baseline %.2f%%\n",
               n_part[TEST], 100 * test_acc, best_epoch, 100 * base_test);

        n_shown = pick_shown(&cp, n_part[TEST], shown);
        weights = (float *)xalloc((size_t)SHOWN * s.max_len * sizeof(float));
        classify(c, &net, cp.docs, shown, n_shown, 64, s.max_len, &b, pred, NULL, weights);
        printf("the %d most-attended tokens of some test entries:\n", TOP);
        for (i = 0; i < n_shown; i++) {
            const doc *d = &cp.docs[shown[i]];
            char (*toks)[MAX_TOKEN] = (char(*)[MAX_TOKEN])xalloc((size_t)d->len * MAX_TOKEN);
            int t, n_tok = tokens_of(d->text, toks, d->len);
            printf("  %s -> %s: \"", cp.names[d->label], cp.names[pred[i]]);
            for (t = 0; t < n_tok && t < 16; t++) printf("%s%s", t ? " " : "", toks[t]);
            printf("%s\"\n      ", n_tok > 16 ? " ..." : "");
            print_top(weights + (size_t)i * s.max_len, n_tok, toks);
            printf("\n");
            free(toks);
        }
        if (write_attention_png(png, &cp, shown, n_shown, pred, weights, s.max_len) == 0) printf("picture: %s\n", png);
        else rc = 1;
    }
    if (!rc && save_model(out, m, &cp, &v, &s) == 0) printf("saved %s\n", out);
    else rc = 1;
    if (!rc)
        printf("summary: {\"test_acc\": %.4f, \"baseline_test_acc\": %.4f, \"val_acc\": %.4f, \"baseline_val_acc\": %.4f, "
               "\"best_epoch\": %d, \"epochs\": %d, \"categories\": %d, \"train\": %d, \"val\": %d, \"test\": %d, "
               "\"vocab\": %d, \"seconds\": %.1f}\n",
               test_acc, base_test, val_acc, base_val, best_epoch, epochs, cp.n_classes, n_part[TRAIN], n_part[VAL],
               n_part[TEST], v.n, ex_now() - t0);
    free(best);
    free(pred);
    free(weights);
    batch_free(&b);
    vocab_free(&v);
    corpus_free(&cp);
    corpus_free(&unlabeled);
    av_model_free(m);
    av_ctx_free(c);
    return rc;
}
