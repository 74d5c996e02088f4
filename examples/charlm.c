/* A character-level language model on real text (issue #8).

     ./build/charlm [flags]               (--help lists them, with defaults and ranges)
     ./build/charlm --load out/charlm/charlm.safetensors --prompt "Life is"

   Two architectures (--arch):
     transformer  a causal Transformer, GPT-style: byte embedding times
                  sqrt(d) plus sinusoidal positions, pre-LN encoder layers
                  (nn.TransformerEncoderLayer, norm_first, GELU) with causal
                  self-attention, a final norm, and the output projection
                  tied to the embedding (one parameter used twice);
     lstm         an LSTM whose output at step t attends causally to its
                  outputs at steps <= t (seed 002): y = W [h_t; attn_t].
   The vocabulary is the 256 byte values: any file trains as it is (UTF-8
   text costs one prediction per byte), so bits per character are bits per
   byte; the default text, Debian's fortunes, is ASCII but for 90 bytes.

   Validation is the last --val-frac of each file. Training samples windows
   of --context + 1 bytes from the rest, at offsets that a counter-based hash
   of (seed, step, row) picks: tests/charlm_torch.py draws the same windows,
   and a run resumed from its checkpoint (--resume) continues exactly.

   After training: validation bits per character, a sample continuing
   --prompt, and generation speed at --gen-context tokens of context, with
   the KV cache (one new position per step: av_mha_step per layer) and
   without it (the whole context recomputed for each token); the two must
   give the same logits. --load MODEL only evaluates and generates.

   Data parallel: "mpirun -np R ./build/charlm --mpi" trains on R ranks,
   rank r on rows r x --batch .. of each step's R x --batch windows, and
   rank 0 alone validates, generates and writes files. Every rank needs the
   text; a model file is read by rank 0. Dropout draws the masks of rows 0..
   on every rank, so with --dropout 0 the ranks train what one process
   trains with --batch R x batch (up to the order of float sums), and with
   dropout the same only statistically. */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include <dirent.h>
#include "common.h"

#define VOCAB 256
#define MAX_TEXT (1L << 30)
#define DEFAULT_TEXT "/usr/share/games/fortunes"

/* ---- the text ------------------------------------------------------------ */
typedef struct corpus { unsigned char *train, *val; long n_train, n_val; int files; } corpus;

/* Appends n bytes to *buf (length *len, capacity *cap); 0 or -1. */
static int append(unsigned char **buf, long *len, long *cap, const unsigned char *src, long n) {
    if (n == 0) return 0; /* an empty file: no buffer yet, and memcpy wants one */
    if (*len + n > *cap) {
        long grown = (*len + n) * 2 + 4096;
        unsigned char *p = (unsigned char *)realloc(*buf, (size_t)grown);
        if (!p) return -1;
        *buf = p;
        *cap = grown;
    }
    memcpy(*buf + *len, src, (size_t)n);
    *len += n;
    return 0;
}

/* Reads one file and adds it to the corpus: its last val_frac (at least 2
   bytes of a file of 4 or more) to validation, the rest to training. */
static int add_file(corpus *cp, long *cap_train, long *cap_val, const char *path, float val_frac) {
    FILE *f = fopen(path, "rb");
    unsigned char *data = NULL;
    long n = 0, cap = 0, v;
    unsigned char chunk[65536];
    size_t got;
    if (!f) {
        fprintf(stderr, "error: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (cp->n_train + cp->n_val + n + (long)got > MAX_TEXT || append(&data, &n, &cap, chunk, (long)got)) {
            fprintf(stderr, "error: %s: more text than %ld bytes, or out of memory\n", path, MAX_TEXT);
            fclose(f);
            free(data);
            return -1;
        }
    if (ferror(f)) {
        fprintf(stderr, "error: cannot read %s: %s\n", path, strerror(errno));
        fclose(f);
        free(data);
        return -1;
    }
    fclose(f);
    v = n < 4 ? 0 : (long)(n * (double)val_frac) < 2 ? 2 : (long)(n * (double)val_frac);
    if (append(&cp->train, &cp->n_train, cap_train, data, n - v) || append(&cp->val, &cp->n_val, cap_val, data + n - v, v)) {
        fprintf(stderr, "error: out of memory reading %s\n", path);
        free(data);
        return -1;
    }
    cp->files++;
    free(data);
    return 0;
}

static int by_name(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static int ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && strcmp(s + n - k, tail) == 0;
}

/* A file, or every plain file of a directory in name order (fortune's
   directories: leaving out hidden files and the .dat and .u8 indexes). */
static int load_text(const char *path, float val_frac, corpus *cp) {
    struct stat st;
    long cap_train = 0, cap_val = 0;
    int rc = 0;
    memset(cp, 0, sizeof *cp);
    if (stat(path, &st) != 0) {
        fprintf(stderr, "error: cannot read %s: %s\n", path, strerror(errno));
        if (strcmp(path, DEFAULT_TEXT) == 0)
            fprintf(stderr, "  The default text is Debian's fortunes package: make deps (or apt-get install fortunes),\n"
                            "  or pass --text FILE with any text file (or a directory of them).\n");
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        DIR *dir = opendir(path);
        struct dirent *e;
        char **names = NULL, full[4096];
        int n = 0, cap = 0, i;
        if (!dir) {
            fprintf(stderr, "error: cannot read directory %s: %s\n", path, strerror(errno));
            return -1;
        }
        while (!rc && (e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.' || ends_with(e->d_name, ".dat") || ends_with(e->d_name, ".u8")) continue;
            snprintf(full, sizeof full, "%s/%s", path, e->d_name);
            if (stat(full, &st) != 0 || !S_ISREG(st.st_mode)) continue;
            if (n == cap) {
                char **grown = (char **)realloc(names, (size_t)(cap = 2 * cap + 16) * sizeof *names);
                if (!grown) { rc = -1; break; }
                names = grown;
            }
            if (!(names[n] = (char *)malloc(strlen(full) + 1))) { rc = -1; break; }
            strcpy(names[n++], full);
        }
        closedir(dir);
        if (rc) fprintf(stderr, "error: out of memory listing %s\n", path);
        qsort(names, (size_t)n, sizeof *names, by_name);
        for (i = 0; i < n; i++) {
            if (!rc) rc = add_file(cp, &cap_train, &cap_val, names[i], val_frac);
            free(names[i]);
        }
        free(names);
    } else {
        rc = add_file(cp, &cap_train, &cap_val, path, val_frac);
    }
    if (!rc && (cp->n_train < 2 || cp->n_val < 2)) {
        fprintf(stderr, "error: %s: too little text (%ld bytes in %d files): training and validation need 2 bytes "
                        "each, so at least one file of 4 bytes or more\n", path, cp->n_train + cp->n_val, cp->files);
        rc = -1;
    }
    if (rc) {
        free(cp->train);
        free(cp->val);
        memset(cp, 0, sizeof *cp);
    }
    return rc;
}

/* The start of window `row` of training step `step`: splitmix64 of a counter
   (tests/charlm_torch.py computes the same). */
static long window_start(uint64_t seed, long step, int batch, int row, long range) {
    uint64_t x = (seed << 40) + (uint64_t)step * (uint64_t)batch + (uint64_t)row + 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return (long)((x ^ (x >> 31)) % (uint64_t)range);
}

/* ---- the model ----------------------------------------------------------- */
enum { ARCH_TRANSFORMER, ARCH_LSTM };
static const char *const arch_names[2] = {"transformer", "lstm"};
enum { CFG_ARCH, CFG_D, CFG_LAYERS, CFG_HEADS, CFG_FF, CFG_ACT, CFG_CONTEXT, CFG_N }; /* the "config" buffer */

typedef struct charlm {
    int cfg[CFG_N];
    av_tensor *emb;                 /* "tok_emb.weight" [256, d] */
    av_transformer_encoder enc;     /* transformer */
    av_rnn lstm;                    /* lstm: the LSTM, its attention and the output layer */
    av_mha attn;
    av_linear_layer out;
    float *pe;                      /* sinusoidal positions 0 .. pe_rows - 1, made once */
    int pe_rows;
} charlm;

/* The model of cfg; its config goes in a buffer, so a file says what it holds. */
static void charlm_new(av_model *m, charlm *lm, const int *cfg, float dropout) {
    int d = cfg[CFG_D], i;
    av_tensor *config = av_buffer(m, "config", AV_INIT_ZEROS, 0, 1, CFG_N);
    memset(lm, 0, sizeof *lm);
    memcpy(lm->cfg, cfg, sizeof lm->cfg);
    for (i = 0; config && i < CFG_N; i++) config->data[i] = (float)cfg[i];
    if (cfg[CFG_ARCH] == ARCH_TRANSFORMER) {
        av_transformer_config tc = av_transformer_defaults(d, cfg[CFG_HEADS]);
        tc.dim_feedforward = cfg[CFG_FF];
        tc.dropout = dropout;
        tc.activation = cfg[CFG_ACT];
        tc.norm_first = 1;
        /* N(0, 1/d): times sqrt(d) at the input, unit scale; tied, logits of unit scale */
        lm->emb = av_param(m, "tok_emb.weight", AV_INIT_NORMAL, 1.0f / sqrtf((float)d), 2, VOCAB, d);
        lm->enc = av_transformer_encoder_new(m, "encoder", &tc, cfg[CFG_LAYERS], 1);
    } else {
        lm->emb = av_param(m, "tok_emb.weight", AV_INIT_NORMAL, 1.0f, 2, VOCAB, d);
        lm->lstm = av_lstm_new(m, "lstm", d, d, cfg[CFG_LAYERS], 0, dropout);
        lm->attn = av_mha_new(m, "attn", d, cfg[CFG_HEADS], 0, 0, 1, dropout);
        lm->out = av_linear_layer_new(m, "out", 2 * d, VOCAB, 1);
    }
}

/* The table of positions 0 .. rows - 1 (0, or -1 out of memory) */
static int charlm_positions(charlm *lm, int rows) {
    av_ctx *c = av_ctx_new();
    size_t n = (size_t)rows * lm->cfg[CFG_D];
    lm->pe = (float *)malloc(n * sizeof(float));
    if (c && lm->pe) memcpy(lm->pe, av_sinusoidal_positions(c, rows, lm->cfg[CFG_D], 0)->data, n * sizeof(float));
    lm->pe_rows = c && lm->pe ? rows : 0;
    av_ctx_free(c);
    return lm->pe_rows ? 0 : -1;
}

/* The bytes of positions start.. as vectors [B, T, d] */
static av_tensor *embed(av_ctx *c, const charlm *lm, const int *ids, int B, int T, int start) {
    int d = lm->cfg[CFG_D];
    av_tensor *x = av_reshape(c, av_embedding(c, lm->emb, ids, B * T), 3, B, T, d);
    if (lm->cfg[CFG_ARCH] != ARCH_TRANSFORMER) return x;
    return av_add(c, av_scale(c, x, sqrtf((float)d)),
                  start + T <= lm->pe_rows ? av_wrap(c, lm->pe + (size_t)start * d, 2, T, d)
                                           : av_sinusoidal_positions(c, T, d, start));
}

/* The recurrent state of a stepping LSTM: h and c [layers, 1, d] */
typedef struct lstm_state { float *h, *c; } lstm_state;

/* Logits [B, T, 256] of the next byte after each of ids [B, T]. With kv (one
   cache per layer, or the LSTM's attention cache and its state) the T bytes
   continue what the caches hold; without, they start at position 0. */
static av_tensor *charlm_forward(av_ctx *c, const charlm *lm, const int *ids, int B, int T, av_kv_cache *kv,
                                 lstm_state *st) {
    av_tensor *x = embed(c, lm, ids, B, T, kv ? kv[0].length : 0), *h, *parts[2];
    int i, L = lm->cfg[CFG_LAYERS], d = lm->cfg[CFG_D];
    if (lm->cfg[CFG_ARCH] == ARCH_TRANSFORMER) {
        if (!kv) x = av_transformer_encoder_forward(c, &lm->enc, x, NULL, NULL, 1);
        for (i = 0; kv && i < L; i++) { /* the pre-LN layer, its self-attention reading and extending the cache */
            const av_encoder_layer *l = &lm->enc.layers[i];
            x = av_add(c, x, av_mha_step(c, &l->self_attn, av_layer_norm_forward(c, &l->norm1, x), &kv[i], NULL));
            h = av_activate(c, av_linear_forward(c, &l->linear1, av_layer_norm_forward(c, &l->norm2, x)), l->cfg.activation);
            x = av_add(c, x, av_linear_forward(c, &l->linear2, h));
        }
        if (kv) x = av_layer_norm_forward(c, &lm->enc.norm, x);
        return av_linear(c, x, lm->emb, NULL); /* the embedding again, as the output projection */
    }
    if (!kv) {
        h = av_rnn_forward(c, &lm->lstm, x, NULL, NULL, NULL, NULL, NULL);
        parts[1] = av_mha_forward(c, &lm->attn, h, h, h, NULL, NULL, 1, NULL);
    } else {
        av_tensor *hn, *cn;
        h = av_rnn_forward(c, &lm->lstm, x, av_wrap(c, st->h, 3, L, 1, d), av_wrap(c, st->c, 3, L, 1, d), NULL, &hn, &cn);
        memcpy(st->h, hn->data, (size_t)L * d * sizeof(float));
        memcpy(st->c, cn->data, (size_t)L * d * sizeof(float));
        parts[1] = av_mha_step(c, &lm->attn, h, kv, NULL);
    }
    parts[0] = h;
    return av_linear_forward(c, &lm->out, av_concat(c, parts, 2, 2));
}

/* The architecture written in a model file (its "config" buffer), checked. */
static int read_config(const char *path, int *cfg) {
    av_st_file *f;
    float v[CFG_N];
    int i, k, rc = av_st_open(path, &f);
    if (rc) {
        fprintf(stderr, "error: %s\n", av_error());
        return -1;
    }
    k = av_st_find(f, "config");
    rc = k < 0 || av_st_read(f, k, v, CFG_N) != 0;
    av_st_close(f);
    for (i = 0; !rc && i < CFG_N; i++) {
        cfg[i] = (int)v[i];
        rc = !(v[i] >= 0 && v[i] <= 1e6 && v[i] == cfg[i]);
    }
    if (!rc)
        rc = cfg[CFG_ARCH] > ARCH_LSTM || cfg[CFG_D] < 1 || cfg[CFG_LAYERS] < 1 || cfg[CFG_HEADS] < 1 ||
             cfg[CFG_D] % cfg[CFG_HEADS] || cfg[CFG_FF] < 1 || cfg[CFG_CONTEXT] < 1 ||
             (cfg[CFG_ACT] != AV_ACT_RELU && cfg[CFG_ACT] != AV_ACT_GELU) ||
             cfg[CFG_LAYERS] > (cfg[CFG_ARCH] == ARCH_LSTM ? AV_RNN_MAX_LAYERS : AV_MAX_TRANSFORMER_LAYERS);
    if (rc) fprintf(stderr, "error: %s: not a charlm model (no valid \"config\" tensor of %d values)\n", path, CFG_N);
    return rc ? -1 : 0;
}

/* ---- training and evaluation --------------------------------------------- */
/* Mean cross-entropy (nats per byte) of predicting ids[1..] from ids[..T-1], B windows of T + 1 bytes. */
static av_tensor *window_loss(av_ctx *c, const charlm *lm, const unsigned char *const *win, int B, int T, int *ids,
                              int *targets) {
    int b, t;
    for (b = 0; b < B; b++)
        for (t = 0; t < T; t++) {
            ids[b * T + t] = win[b][t];
            targets[b * T + t] = win[b][t + 1];
        }
    return av_cross_entropy(c, av_reshape(c, charlm_forward(c, lm, ids, B, T, NULL, NULL), 2, B * T, VOCAB), targets,
                            AV_MEAN);
}

/* Bits per byte over the first `limit` targets of the validation text (0:
   all), in consecutive windows of T targets, B at a time. */
static double evaluate(av_ctx *c, const charlm *lm, const corpus *cp, int B, int T, long limit, int *ids, int *targets) {
    const unsigned char **win = (const unsigned char **)malloc((size_t)B * sizeof *win);
    long n = cp->n_val - 1, start = 0, done;
    double nats = 0;
    int prev = av_set_grad_enabled(c, 0), prev_train = av_set_training(c, 0);
    if (limit > 0 && limit < n) n = limit;
    for (done = 0; win && done < n;) {
        int len = n - start < T ? (int)(n - start) : T, rows = 0;
        while (rows < B && start < n && n - start >= len) { /* full windows together; a short last one alone */
            win[rows++] = cp->val + start;
            start += len;
        }
        av_ctx_reset(c);
        nats += (double)av_item(window_loss(c, lm, win, rows, len, ids, targets)) * rows * len;
        done += (long)rows * len;
    }
    free(win);
    av_set_grad_enabled(c, prev);
    av_set_training(c, prev_train);
    return win ? nats / (double)n / log(2.0) : NAN;
}

/* ---- generation ---------------------------------------------------------- */
/* An av_decoder over the model. With the cache each step runs the new byte
   alone (av_mha_step appends its keys and values); without, each step runs
   the model over the whole history again. A history longer than `window`
   restarts: the cached decoder from its last window/2 bytes, the other
   keeps the last window bytes. With a trace, each step's logits are kept
   there too (trace_cap steps at most). */
typedef struct generator {
    const charlm *lm;
    int cached, window, n, cap, *hist;
    av_kv_cache kv[AV_MAX_TRANSFORMER_LAYERS];
    lstm_state st;
    float *trace;
    int traced, trace_cap;
} generator;

static int generator_init(generator *g, const charlm *lm, int cached, int window, int capacity) {
    int i, n_kv = lm->cfg[CFG_ARCH] == ARCH_TRANSFORMER ? lm->cfg[CFG_LAYERS] : 1, rc = 0;
    size_t state = (size_t)lm->cfg[CFG_LAYERS] * lm->cfg[CFG_D];
    memset(g, 0, sizeof *g);
    g->lm = lm;
    g->cached = cached;
    g->window = window;
    g->cap = capacity;
    g->hist = (int *)malloc((size_t)capacity * sizeof(int));
    g->st.h = (float *)calloc(state, sizeof(float));
    g->st.c = (float *)calloc(state, sizeof(float));
    for (i = 0; i < n_kv && !rc; i++)
        rc = av_kv_cache_init(&g->kv[i], lm->cfg[CFG_ARCH] == ARCH_TRANSFORMER ? &lm->enc.layers[i].self_attn : &lm->attn,
                              1, cached ? window : 1);
    return rc || !g->hist || !g->st.h || !g->st.c ? -1 : 0;
}

static void generator_free(generator *g) {
    int i;
    for (i = 0; i < AV_MAX_TRANSFORMER_LAYERS; i++) av_kv_cache_free(&g->kv[i]);
    free(g->hist);
    free(g->st.h);
    free(g->st.c);
}

/* Runs n bytes of the history from `from` through the model (the caches
   continue or, without them, start afresh), keeping the last logits. */
static av_tensor *run(av_ctx *c, generator *g, int from, int n) {
    av_tensor *logits = charlm_forward(c, g->lm, g->hist + from, 1, n, g->cached ? g->kv : NULL, &g->st);
    if (g->trace && g->traced < g->trace_cap)
        memcpy(g->trace + (size_t)VOCAB * g->traced++, logits->data + (size_t)(n - 1) * VOCAB, VOCAB * sizeof(float));
    return av_slice(c, av_reshape(c, logits, 2, n, VOCAB), 0, n - 1, n);
}

/* Adds n bytes to the history and returns the logits [1, 256] of the next. */
static av_tensor *feed(av_ctx *c, generator *g, const int *tokens, int n) {
    int i, layers = g->lm->cfg[CFG_ARCH] == ARCH_TRANSFORMER ? g->lm->cfg[CFG_LAYERS] : 1, d = g->lm->cfg[CFG_D];
    if (g->n + n > g->cap) { /* keep the last window bytes */
        int keep = g->window < g->n ? g->window : g->n;
        memmove(g->hist, g->hist + g->n - keep, (size_t)keep * sizeof(int));
        g->n = keep;
    }
    memcpy(g->hist + g->n, tokens, (size_t)n * sizeof(int));
    g->n += n;
    if (!g->cached) {
        int from = g->n > g->window ? g->n - g->window : 0;
        return run(c, g, from, g->n - from);
    }
    if (g->kv[0].length + n <= g->window) return run(c, g, g->n - n, n);
    for (i = 0; i < layers; i++) av_kv_cache_clear(&g->kv[i]); /* restart from the last window/2 bytes */
    memset(g->st.h, 0, (size_t)g->lm->cfg[CFG_LAYERS] * d * sizeof(float));
    memset(g->st.c, 0, (size_t)g->lm->cfg[CFG_LAYERS] * d * sizeof(float));
    n = n > g->window / 2 ? n : g->window / 2; /* the new bytes at least, the window at most */
    n = n > g->window ? g->window : n > g->n ? g->n : n;
    return run(c, g, g->n - n, n);
}

static av_tensor *generator_step(av_ctx *c, const int *tokens, int rows, void *state) {
    return feed(c, (generator *)state, tokens, rows);
}

/* Feeds the prompt but its last byte, which starts the sampling. */
static void prefill(av_ctx *c, generator *g, const int *prompt, int n) {
    int prev = av_set_grad_enabled(c, 0);
    av_ctx_reset(c);
    if (n > 1) feed(c, g, prompt, n - 1);
    av_ctx_reset(c);
    av_set_grad_enabled(c, prev);
}

/* Samples `length` bytes after `last` into out; 0 or an AV_ERR_* code.
   sampling: temperature, top-k, top-p. */
static int sample_after(av_ctx *c, generator *g, int last, int length, const float *sampling, int *out) {
    av_decoder d;
    int len;
    d.step = generator_step;
    d.reorder = NULL;
    d.state = g;
    return av_decode_sample(c, &d, 1, last, -1, length, sampling[0], (int)sampling[1], sampling[2], out, &len);
}

/* Prints bytes, with control characters other than newline and tab shown as '?'. */
static void print_text(const char *label, const int *a, int na, const int *b, int nb) {
    int i;
    printf("%s", label);
    for (i = 0; i < na + nb; i++) {
        int ch = i < na ? a[i] : b[i - na];
        putchar(ch == '\n' || ch == '\t' || ch >= 32 ? ch : '?');
    }
    printf("\n");
}

/* Generation speed at `context` bytes of context: the history is filled with
   context - n bytes of `fill` (cycled), then n bytes are sampled and timed.
   Returns bytes per second; the sampled bytes go to out, each step's logits
   to trace (n + 1 rows: the fill's last, then one per sampled byte). */
static double gen_speed(av_ctx *c, const charlm *lm, int cached, int context, int n, const unsigned char *fill,
                        long n_fill, uint64_t seed, const float *sampling, int *out, float *trace) {
    generator g;
    int *start = (int *)malloc((size_t)context * sizeof(int)), i, rc = generator_init(&g, lm, cached, context, context);
    double t0, seconds;
    if (!start || rc) {
        fprintf(stderr, "error: out of memory for generation\n");
        free(start);
        generator_free(&g);
        return -1;
    }
    for (i = 0; i < context; i++) start[i] = fill[i % n_fill];
    g.trace = trace;
    g.trace_cap = n + 1;
    av_set_grad_enabled(c, 0);
    av_ctx_reset(c); /* one pass over the whole context, so that no timed step grows the step memory */
    charlm_forward(c, lm, start, 1, context, NULL, NULL);
    av_ctx_reset(c);
    av_ctx_seed(c, seed);
    prefill(c, &g, start, context - n);
    t0 = ex_now();
    rc = sample_after(c, &g, start[context - n - 1], n, sampling, out);
    seconds = ex_now() - t0;
    generator_free(&g);
    free(start);
    return rc ? -1 : n / seconds;
}

int main(int argc, char **argv) {
    const char *text, *arch, *activation, *out_dir, *load, *resume, *prompt;
    int steps, batch, context, d_model, layers, heads, ff, warmup, eval_every, ckpt_every, seed, length, top_k;
    int gen_context, gen_tokens, quick, use_mpi;
    float dropout, lr, clip, val_frac, temperature, top_p;
    ex_flag flags[] = {
        EX_STRING_FLAG("text", &text, DEFAULT_TEXT, "a text file, or a directory of them, to learn"),
        EX_STRING_FLAG("arch", &arch, "transformer", "transformer or lstm (an LSTM attending to its past outputs)"),
        EX_STRING_FLAG("out", &out_dir, "out/charlm", "directory for charlm.safetensors and checkpoint.safetensors"),
        EX_STRING_FLAG("load", &load, NULL, "a saved model: evaluate it and continue --prompt, no training"),
        EX_STRING_FLAG("resume", &resume, NULL, "a checkpoint: train on from its step (parameters, Adam, step)"),
        EX_INT_FLAG("steps", &steps, "2000", 0, 100000000, "training steps in all (a resumed run counts its past steps)"),
        EX_INT_FLAG("batch", &batch, "16", 1, 4096, "windows per training step"),
        EX_INT_FLAG("context", &context, "256", 1, 8192, "bytes per training window, and the generation window"),
        EX_INT_FLAG("d-model", &d_model, "128", 1, 4096, "width of the embedding and of each layer"),
        EX_INT_FLAG("layers", &layers, "4", 1, AV_MAX_TRANSFORMER_LAYERS, "Transformer layers, or LSTM layers (8 at most)"),
        EX_INT_FLAG("heads", &heads, "4", 1, 256, "attention heads (they divide --d-model)"),
        EX_INT_FLAG("ff", &ff, "512", 1, 65536, "width of the Transformer's feed-forward layers"),
        EX_STRING_FLAG("activation", &activation, "relu", "the feed-forward layers' activation: relu or gelu"),
        EX_FLOAT_FLAG("dropout", &dropout, "0", 0, 0.9, "dropout in training"),
        EX_FLOAT_FLAG("lr", &lr, "2e-3", 1e-7, 1, "peak Adam learning rate (warm-up, then cosine to a tenth)"),
        EX_INT_FLAG("warmup", &warmup, "100", 0, 100000000, "warm-up steps"),
        EX_FLOAT_FLAG("clip", &clip, "1", 0, 1e6, "gradient norm clipping (0: none)"),
        EX_FLOAT_FLAG("val-frac", &val_frac, "0.1", 0, 0.5, "fraction of each file held out for validation"),
        EX_INT_FLAG("eval-every", &eval_every, "500", 1, 100000000, "steps between validations on 32768 bytes"),
        EX_INT_FLAG("ckpt-every", &ckpt_every, "1000", 1, 100000000, "steps between checkpoints (one also at the end)"),
        EX_INT_FLAG("seed", &seed, "1", 0, 16777215, "seed of the weights, the windows and the sampling"),
        EX_STRING_FLAG("prompt", &prompt, "Life is", "text to continue"),
        EX_INT_FLAG("length", &length, "400", 1, 1000000, "bytes to generate"),
        EX_FLOAT_FLAG("temperature", &temperature, "0.8", 0, 100, "sampling temperature (0: the most likely byte)"),
        EX_INT_FLAG("top-k", &top_k, "0", 0, VOCAB, "sample from the k most likely bytes (0: all)"),
        EX_FLOAT_FLAG("top-p", &top_p, "0.95", 0.001, 1, "sample from the most likely bytes that make up this probability"),
        EX_INT_FLAG("gen-context", &gen_context, "512", 2, 65536, "context at which generation speed is measured"),
        EX_INT_FLAG("gen-tokens", &gen_tokens, "64", 1, 65535, "bytes timed at that context (less than --gen-context)"),
        EX_SWITCH_FLAG("quick", &quick, "a short run for tests: a small model, 40 steps, 8192 bytes of validation text"),
        EX_SWITCH_FLAG("mpi", &use_mpi, "data parallel over the ranks of mpirun, each on --batch windows a step"),
    };
    const int n_flags = EX_COUNT(flags);
    static const char *const model_flags[] = {"arch", "d-model", "layers", "heads", "ff", "activation", "context"};
    int cfg[CFG_N], status, rc = 0, T, i, *ids = NULL, *targets = NULL, *prompt_ids = NULL, n_prompt, *sample = NULL;
    int *gen_out[2] = {NULL, NULL}, agree = 0, ok;
    float *trace[2] = {NULL, NULL}, sampling[3];
    const unsigned char **win = NULL;
    long step = 0, start_step = 0;
    double val_bpc = NAN, train_seconds = 0, train_cpu_seconds = 0, tokens_per_s = 0, speed[2] = {0, 0}, max_diff = 0, max_logit = 0;
    char model_path[1100], ckpt_path[1100];
    corpus cp;
    av_model *m = NULL;
    av_ctx *c = NULL;
    av_optim opt;
    av_sampler sampler;
    ex_dp dp;
    charlm lm;

    status = ex_parse(argc, argv, "Trains a character-level language model on text and generates from it.", flags, n_flags);
    if (status >= 0) return status;
    if (quick) { /* a small model for seconds of training, unless given */
        const char *names[] = {"steps", "d-model", "layers", "ff", "context", "batch", "length", "gen-tokens", "warmup"};
        int *vars[] = {&steps, &d_model, &layers, &ff, &context, &batch, &length, &gen_tokens, &warmup};
        const int values[] = {40, 64, 2, 256, 64, 8, 120, 16, 10};
        for (i = 0; i < 9; i++)
            if (!ex_given(flags, n_flags, names[i])) *vars[i] = values[i];
    }
    cfg[CFG_ARCH] = strcmp(arch, "transformer") == 0 ? ARCH_TRANSFORMER : strcmp(arch, "lstm") == 0 ? ARCH_LSTM : -1;
    cfg[CFG_ACT] = strcmp(activation, "relu") == 0 ? AV_ACT_RELU : strcmp(activation, "gelu") == 0 ? AV_ACT_GELU : -1;
    if (cfg[CFG_ARCH] < 0 || cfg[CFG_ACT] < 0) {
        fprintf(stderr, "charlm: %s '%s' is not %s\n", cfg[CFG_ARCH] < 0 ? "--arch:" : "--activation:",
                cfg[CFG_ARCH] < 0 ? arch : activation, cfg[CFG_ARCH] < 0 ? "transformer or lstm" : "relu or gelu");
        return 2;
    }
    if (d_model % heads || (cfg[CFG_ARCH] == ARCH_LSTM && layers > AV_RNN_MAX_LAYERS) || gen_tokens >= gen_context) {
        fprintf(stderr, "charlm: --heads %d must divide --d-model %d, an LSTM has at most %d --layers, and --gen-tokens %d "
                        "must be less than --gen-context %d\n", heads, d_model, AV_RNN_MAX_LAYERS, gen_tokens, gen_context);
        return 2;
    }
    if (load && (resume || ex_given(flags, n_flags, "steps"))) {
        fprintf(stderr, "charlm: --load only evaluates and generates; --resume CHECKPOINT trains on\n");
        return 2;
    }
    cfg[CFG_D] = d_model;
    cfg[CFG_LAYERS] = layers;
    cfg[CFG_HEADS] = heads;
    cfg[CFG_FF] = ff;
    cfg[CFG_CONTEXT] = context;
    if ((status = ex_dp_start(&dp, use_mpi, &argc, &argv)) != 0) return status;
    /* rank 0 reads the file; the sum of its config and the others' zeros gives it to every rank */
    ok = !(load || resume) || dp.rank > 0 || read_config(load ? load : resume, cfg) == 0;
    if (!ex_dp_all_ok(&dp, ok, "read its model file")) {
        ex_dp_stop(&dp);
        return 1;
    }
    if (load || resume) {
        double shared[CFG_N];
        for (i = 0; i < CFG_N; i++) shared[i] = dp.rank == 0 ? cfg[i] : 0;
        ex_dp_sum(&dp, shared, CFG_N);
        for (i = 0; i < CFG_N; i++) cfg[i] = (int)shared[i];
    }
    for (i = 0; (load || resume) && i < 7; i++)
        if (ex_given(flags, n_flags, model_flags[i]))
            fprintf(stderr, "note: --%s is ignored: the model comes from %s\n", model_flags[i], load ? load : resume);

    /* every rank reads the text (and must have the same); only rank 0 writes */
    ok = load_text(text, val_frac, &cp) == 0;
    if (!ok && load && !ex_given(flags, n_flags, "text")) {
        fprintf(stderr, "note: no validation without the text; generating only\n");
        ok = 1;
    }
    if (!ex_dp_all_ok(&dp, ok, "load its text") ||
        !ex_dp_all_ok(&dp, load || dp.rank > 0 || ex_out_dir(out_dir) == 0, "write files")) {
        free(cp.train);
        free(cp.val);
        ex_dp_stop(&dp);
        return 1;
    }
    T = cp.n_train && cfg[CFG_CONTEXT] > cp.n_train - 1 ? (int)(cp.n_train - 1) : cfg[CFG_CONTEXT];
    if (!load) {
        if (T < cfg[CFG_CONTEXT]) printf("note: the text is short: windows of %d bytes, not %d\n", T, cfg[CFG_CONTEXT]);
        cfg[CFG_CONTEXT] = T;
    }
    snprintf(model_path, sizeof model_path, "%s/charlm.safetensors", out_dir);
    snprintf(ckpt_path, sizeof ckpt_path, "%s/checkpoint.safetensors", out_dir);

    m = av_model_new((uint64_t)seed);
    c = av_ctx_new();
    if (!m || !c) {
        fprintf(stderr, "error: out of memory\n");
        ex_dp_abort(&dp);
        ex_dp_stop(&dp);
        return 1;
    }
    memset(&sampler, 0, sizeof sampler);
    charlm_new(m, &lm, cfg, dropout);
    ids = (int *)malloc((size_t)batch * T * sizeof(int) + 1);
    targets = (int *)malloc((size_t)batch * T * sizeof(int) + 1);
    win = (const unsigned char **)malloc((size_t)batch * sizeof *win);
    if (charlm_positions(&lm, cfg[CFG_CONTEXT] > gen_context ? cfg[CFG_CONTEXT] : gen_context) || av_model_error(m) ||
        !ids || !targets || !win || av_sampler_init(&sampler, batch * dp.size, batch, dp.rank, dp.size, 0) != 0) {
        fprintf(stderr, "error: out of memory for the model or a batch of %d x %d\n", batch, T);
        rc = 1;
    }
    if (!ex_dp_all_ok(&dp, !rc, "allocate its memory") || ex_dp_attach(&dp, m) != 0) {
        rc = 1;
    } else if (load || resume) {
        if ((rc = ex_dp_load(&dp, m, load ? load : resume, !load)) != 0)
            fprintf(stderr, "error: %s\n", av_error());
        else if (load)
            printf("loaded %s\n", load);
        else
            printf("resumed %s at step %ld\n", resume, start_step = av_model_step(m));
    }
    if (load) steps = 0;
    printf("charlm: %s, d %d, %d layers, %d heads%s, %ld parameters; %ld training and %ld validation bytes from %d "
           "files; gemm path %s, %d threads\n",
           arch_names[cfg[CFG_ARCH]], cfg[CFG_D], cfg[CFG_LAYERS], cfg[CFG_HEADS],
           cfg[CFG_ARCH] == ARCH_TRANSFORMER ? ", tied embedding" : "", av_model_num_values(m), cp.n_train, cp.n_val,
           cp.files, av_isa_name(av_get_isa()), av_get_num_threads());
    if (dp.on) printf("%d ranks x %d windows a step\n", dp.size, batch);

    /* ---- training ---- */
    opt = av_adam(lr);
    av_set_training(c, 1);
    for (step = start_step; step < steps && !rc; step++) {
        av_shard sh = av_sampler_shard(&sampler, 0); /* this rank's rows of the step's global batch */
        double t0 = ex_now(), nats, bpc;
        clock_t cpu0 = clock();
        av_tensor *loss;
        int b;
        av_ctx_reset(c);
        /* dropout's masks by step: a resumed run continues exactly (each rank
           takes the same stream: the masks of rows 0.., see the top comment) */
        av_ctx_seed(c, ((uint64_t)seed << 32) + (uint64_t)step);
        for (b = 0; b < sh.count; b++)
            win[b] = cp.train + window_start((uint64_t)seed, step, sh.total, sh.offset + b, cp.n_train - T);
        loss = window_loss(c, &lm, win, sh.count, T, ids, targets);
        av_model_zero_grad(m);
        rc = ex_dp_backward(&dp, c, loss, sh.count);
        if (!rc && clip > 0) av_clip_grad_norm(m, clip);
        opt.lr = av_lr_warmup_cosine(step, warmup, steps, lr, lr / 10);
        if (rc || (rc = av_optim_step(m, &opt)) != 0) {
            fprintf(stderr, "\nerror: step %ld: %s\n", step, av_error());
            ex_dp_abort(&dp);
            break;
        }
        train_seconds += ex_now() - t0;
        train_cpu_seconds += (double)(clock() - cpu0) / CLOCKS_PER_SEC;
        nats = (double)av_item(loss) * sh.count; /* the global batch's mean, for the printed bpc */
        ex_dp_sum(&dp, &nats, 1);
        bpc = nats / sh.total / log(2.0);
        if (dp.rank == 0 && ((step + 1) % eval_every == 0 || step + 1 == steps)) {
            double v = evaluate(c, &lm, &cp, batch, T, 32768, ids, targets);
            printf("step %6ld  train bpc %.3f  val bpc %.3f (first 32768 bytes)  %.0f tokens/s\n", step + 1, bpc, v,
                   (double)(step + 1 - start_step) * sh.total * T / train_seconds);
            fflush(stdout);
        }
        if (((step + 1) % ckpt_every == 0 || step + 1 == steps) && (rc = ex_dp_save(&dp, m, ckpt_path, 1)) != 0)
            fprintf(stderr, "error: %s\n", av_error());
        if (step % 10 == 0 || step + 1 == steps) {
            char info[64];
            snprintf(info, sizeof info, "step %ld bpc %.3f", step + 1, bpc);
            ex_progress("train", (int)(step + 1), steps, info);
        }
    }
    av_set_training(c, 0);
    if (step > start_step) tokens_per_s = (double)(step - start_step) * batch * dp.size * T / train_seconds;
    if (!rc && step > start_step) {
        if ((rc = ex_dp_save(&dp, m, model_path, 0)) != 0) fprintf(stderr, "error: %s\n", av_error());
        else printf("saved %s and %s\n", model_path, ckpt_path);
    }

    /* ---- validation, a sample and generation speed: on rank 0 alone ---- */
    if (!rc && dp.rank == 0 && cp.n_val) {
        long n = quick && cp.n_val - 1 > 8192 ? 8192 : cp.n_val - 1;
        val_bpc = evaluate(c, &lm, &cp, batch, T, n, ids, targets);
        printf("validation: %.4f bits per byte on %ld bytes\n", val_bpc, n);
        if (!isfinite(val_bpc)) {
            fprintf(stderr, "error: the validation loss is not finite: the model is broken\n");
            rc = 1;
        }
    }

    /* ---- a sample ---- */
    n_prompt = (int)strlen(prompt);
    prompt_ids = (int *)malloc((size_t)n_prompt * sizeof(int));
    sample = (int *)malloc((size_t)length * sizeof(int));
    sampling[0] = temperature;
    sampling[1] = (float)top_k;
    sampling[2] = top_p;
    if (!rc && dp.rank == 0 && (!prompt_ids || !sample)) {
        fprintf(stderr, "error: out of memory for the sample\n");
        rc = 1;
    }
    if (!rc && dp.rank == 0) {
        generator g;
        for (i = 0; i < n_prompt; i++) prompt_ids[i] = (unsigned char)prompt[i];
        av_ctx_seed(c, (uint64_t)seed + 2);
        if (!(rc = generator_init(&g, &lm, 1, cfg[CFG_CONTEXT], cfg[CFG_CONTEXT] + n_prompt + 1))) {
            prefill(c, &g, prompt_ids, n_prompt);
            rc = sample_after(c, &g, prompt_ids[n_prompt - 1], length, sampling, sample);
        }
        if (rc) {
            fprintf(stderr, "error: out of memory generating\n");
            rc = 1;
        } else {
            printf("sample (temperature %g, top-k %d, top-p %g):\n", (double)temperature, top_k, (double)top_p);
            print_text("", prompt_ids, n_prompt, sample, length);
        }
        generator_free(&g);
    }

    /* ---- generation speed, with the cache and without ---- */
    for (i = 0; i < 2 && !rc && dp.rank == 0; i++) {
        gen_out[i] = (int *)malloc((size_t)gen_tokens * sizeof(int));
        trace[i] = (float *)malloc((size_t)(gen_tokens + 1) * VOCAB * sizeof(float));
        speed[i] = gen_out[i] && trace[i] ? gen_speed(c, &lm, !i, gen_context, gen_tokens,
                                                      cp.n_val ? cp.val : (const unsigned char *)prompt,
                                                      cp.n_val ? cp.n_val : n_prompt, (uint64_t)seed + 3, sampling,
                                                      gen_out[i], trace[i]) : -1;
        if (speed[i] < 0) {
            fprintf(stderr, "error: out of memory measuring generation\n");
            rc = 1;
        }
    }
    if (!rc && dp.rank == 0) {
        int k, j;
        while (agree < gen_tokens && gen_out[0][agree] == gen_out[1][agree]) agree++;
        for (k = 0; k <= agree && k <= gen_tokens; k++) /* logits from the same history */
            for (j = 0; j < VOCAB; j++) {
                double a = trace[0][(size_t)k * VOCAB + j], b = trace[1][(size_t)k * VOCAB + j];
                max_diff = fabs(a - b) > max_diff ? fabs(a - b) : max_diff;
                max_logit = fabs(b) > max_logit ? fabs(b) : max_logit;
            }
        printf("generation at %d bytes of context: %.1f bytes/s with the KV cache, %.1f recomputing (%.1fx); "
               "%d of %d sampled bytes agree, logits differ by %.2g at most (largest %.3g)\n",
               gen_context, speed[0], speed[1], speed[0] / speed[1], agree, gen_tokens, max_diff, max_logit);
        if (!(max_diff <= 1e-4 * (1 + max_logit))) {
            fprintf(stderr, "error: cached and recomputed logits differ by %g\n", max_diff);
            rc = 1;
        }
    }
    if (!rc && dp.rank == 0)
        printf("summary: {\"arch\": \"%s\", \"val_bpc\": %.4f, \"train_tokens_per_s\": %.0f, \"gen_tokens_per_s_cache\": "
               "%.1f, \"gen_tokens_per_s_nocache\": %.1f, \"train_tokens_per_cpu_s\": %.0f, \"gen_context\": %d, \"cache_speedup\": %.1f, \"steps\": %ld, "
               "\"batch\": %d, \"context\": %d, \"params\": %ld, \"threads\": %d, \"ranks\": %d}\n",
               arch_names[cfg[CFG_ARCH]], val_bpc, tokens_per_s, speed[0], speed[1],
               step > start_step ? (double)(step - start_step) * batch * T / train_cpu_seconds : 0.0, gen_context, speed[0] / speed[1],
               step, batch, T, av_model_num_values(m), av_get_num_threads(), dp.size);
    for (i = 0; i < 2; i++) {
        free(gen_out[i]);
        free(trace[i]);
    }
    av_sampler_free(&sampler);
    ex_dp_stop(&dp);
    free(prompt_ids);
    free(sample);
    free(ids);
    free(targets);
    free(win);
    free(cp.train);
    free(cp.val);
    free(lm.pe);
    av_ctx_free(c);
    av_model_free(m);
    return rc ? 1 : 0;
}
