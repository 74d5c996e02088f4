/* test_attn_ref.c - attention against PyTorch in float64 (tests/attn_ref.py).

   sdpa  av_sdpa (tiled) and av_sdpa_weights (naive) against
         F.softmax(q kᵀ scale + mask, -1) v: ranks 4, 3 and 2, T = 1, odd
         lengths and lengths off the 64-query block, Tq != Tk, D != Dv, an
         explicit scale; masks of several broadcast shapes with additive
         floats, -inf entries and a fully masked row, all learned (they get a
         gradient); causality as an explicit bottom-right mask on PyTorch's
         side (query i sees keys j <= i + Tk - Tq). Output, weights, and the
         gradients of q, k, v and the mask.
   mha   av_mha_forward against nn.MultiheadAttention(batch_first=True):
         self-attention, cross-attention from one memory (key = value),
         kdim and vdim != E (separate q/k/v projection weights), with and
         without bias, PyTorch's bool key_padding_mask (ours: additive, from
         av_key_padding_mask), attn_mask of 2 and 3 dims, causal, unbatched;
         output, per-head and averaged weights, and the gradients of the
         inputs and of every parameter. The weights are the PyTorch module's
         state_dict, written as safetensors by the script and loaded by name
         with av_model_load into av_mha_new(m, "<module path>", ...).
   kv    the KV cache: av_mha_step token by token (and after a 4-token
         prompt) against the full causal forward; av_kv_cache_set_memory
         and av_mha_attend_cache against cross-attention.

   Flow and errors as tests/pyref.h says: this program draws every input,
   tests/attn_ref.py computes the references in float64 and writes the
   state_dicts, this program compares: forward values within 1e-5 and
   gradients within 1e-4 of the largest reference value. Where PyTorch gives
   NaN (a query that sees no key), attnvae must give exactly 0. An info line
   per group prints the worst errors.

   usage: test_attn_ref [script [workdir]]   (defaults tests/attn_ref.py, build)
   The interpreter is $ATTNVAE_PYTHON, else python3. Without python3 or
   torch the test prints "skipped: ..." and counts nothing. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "pyref.h"

enum { G_SDPA, G_MHA, G_KV, N_GROUPS };
static const char *const group_name[N_GROUPS] = {"sdpa", "mha", "kv"};

/* ======================================================================= */
/* sdpa                                                                     */
/* ======================================================================= */
typedef struct sdpa_case {
    int ndim, B, H, Tq, Tk, D, Dv, causal;
    float scale;                  /* 0: 1/sqrt(D) */
    int mask_ndim, mask_shape[4]; /* mask_ndim 0: no mask */
    int hide;                     /* -inf on every 3rd key from the first, and on one whole row */
} sdpa_case;

static const sdpa_case sdpa_cases[] = {
    {4, 2, 3, 7, 7, 8, 8, 0, 0.0f, 0, {0}, 0},
    {3, 1, 2, 1, 1, 4, 3, 0, 0.0f, 1, {1}, 0},                /* T = 1: weights 1, dq = dk = dmask = 0 */
    {3, 1, 3, 1, 9, 8, 5, 1, 0.0f, 0, {0}, 0},                /* one causal query sees every key */
    {2, 1, 1, 65, 33, 16, 12, 0, 0.3f, 2, {65, 33}, 1},
    {4, 2, 2, 33, 97, 12, 20, 1, 0.0f, 4, {2, 1, 1, 97}, 1},  /* a key padding mask */
    {4, 2, 3, 70, 70, 8, 8, 1, 0.5f, 4, {2, 3, 70, 70}, 1},   /* query 0 sees only key 0, which is hidden */
    {4, 2, 2, 70, 40, 8, 6, 1, 0.0f, 4, {2, 1, 70, 1}, 0},    /* 30 queries see no key; the mask's gradient is 0 */
    {3, 1, 2, 130, 130, 8, 8, 1, 0.25f, 0, {0}, 0},
    {4, 1, 2, 5, 70, 16, 16, 1, 0.0f, 3, {2, 1, 70}, 1},
    {4, 2, 2, 9, 200, 8, 8, 0, 0.0f, 2, {9, 200}, 1},
    {4, 1, 2, 64, 128, 8, 8, 1, 0.0f, 2, {64, 128}, 0},      /* lengths on the block boundaries */
    {3, 1, 2, 20, 150, 16, 16, 0, 4.0f, 0, {0}, 0},           /* scores up to ~45: the online softmax rescales;
                                                                 float32 scores err by |s| eps: a few 1e-6 here,
                                                                 as in PyTorch's own float32 */
};
#define N_SDPA ((int)(sizeof sdpa_cases / sizeof sdpa_cases[0]))

/* shape of q, k or v ([B, H, T, last] in the case's rank), or of the weights */
static void sdpa_shape(const sdpa_case *k, int T, int last, int *shape) {
    int lead = k->ndim - 2;
    if (lead == 2) { shape[0] = k->B; shape[1] = k->H; }
    if (lead == 1) shape[0] = k->H;
    shape[lead] = T;
    shape[lead + 1] = last;
}

static int mask_rows(const sdpa_case *k) { return k->mask_ndim >= 2 ? k->mask_shape[k->mask_ndim - 2] : 1; }

static void draw_sdpa(int idx) {
    const sdpa_case *k = &sdpa_cases[idx];
    char cs[16];
    int shape[4];
    named *cfg;
    sprintf(cs, "sdpa%d", idx);
    shape[0] = 2;
    cfg = add_input(cs, "cfg", 1, shape);
    cfg->v[0] = k->causal;
    cfg->v[1] = k->scale;
    sdpa_shape(k, k->Tq, k->D, shape);
    draw(cs, "q", -1.5, 1.5, k->ndim, shape);
    sdpa_shape(k, k->Tk, k->D, shape);
    draw(cs, "k", -1.5, 1.5, k->ndim, shape);
    sdpa_shape(k, k->Tk, k->Dv, shape);
    draw(cs, "v", -1.5, 1.5, k->ndim, shape);
    sdpa_shape(k, k->Tq, k->Dv, shape);
    draw(cs, "r", -1, 1, k->ndim, shape);
    sdpa_shape(k, k->Tq, k->Tk, shape);
    draw(cs, "rw", -1, 1, k->ndim, shape);
    if (k->mask_ndim) {
        named *m = draw(cs, "mask", -1, 1, k->mask_ndim, k->mask_shape);
        int R = mask_rows(k), C = k->mask_shape[k->mask_ndim - 1], e;
        for (e = 0; e < m->n && k->hide; e++) {
            int col = e % C, row = e / C % R, first = e < R * C;
            if ((C > 1 && col % 3 == 0) || (R > 1 && first && row == R / 2)) m->v[e] = -INFINITY;
        }
    }
}

/* Both paths; the naive one also puts the weights into the loss. */
static void check_sdpa(av_ctx *c, int idx) {
    const sdpa_case *k = &sdpa_cases[idx];
    int naive, expect_dead = (k->hide && mask_rows(k) > 1) || (k->causal && k->Tq > k->Tk);
    char cs[16];
    sprintf(cs, "sdpa%d", idx);
    for (naive = 0; naive < 2; naive++) {
        av_tensor *q = input(c, cs, "q", 1), *kk = input(c, cs, "k", 1), *v = input(c, cs, "v", 1);
        av_tensor *mask = input(c, cs, "mask", 1), *w = NULL, *y, *loss;
        const char *path = naive ? "naive" : "tiled";
        int dead;
        if (naive) y = av_sdpa_weights(c, q, kk, v, mask, k->causal, k->scale, &w);
        else y = av_sdpa(c, q, kk, v, mask, k->causal, 0.0f, k->scale);
        loss = weighted_sum(c, y, input(c, cs, "r", 0));
        if (naive) loss = av_add(c, loss, weighted_sum(c, w, input(c, cs, "rw", 0)));
        av_backward(c, loss);
        dead = compare(G_SDPA, FWD, cs, "y", path, y->data, y->size, k->Dv);
        CHECK((dead > 0) == expect_dead, "%s %s: %d queries without a visible key, %s expected", cs, path, dead,
              expect_dead ? "some" : "none");
        if (naive) compare(G_SDPA, FWD, cs, "w", NULL, w->data, w->size, k->Tk);
        compare_grad(G_SDPA, cs, path, "q", q);
        compare_grad(G_SDPA, cs, path, "k", kk);
        compare_grad(G_SDPA, cs, path, "v", v);
        if (mask) compare_grad(G_SDPA, cs, path, "mask", mask);
        av_ctx_reset(c);
    }
}

/* ======================================================================= */
/* mha and kv                                                               */
/* ======================================================================= */
enum { SELF, MEMORY, SEPARATE }; /* query = key = value; key = value; three inputs */
enum { NO_MASK, MASK_2D, MASK_3D }; /* attn_mask [Tq, Tk], or PyTorch's [B*H, Tq, Tk] */

typedef struct mha_case {
    const char *name;  /* the module's path in PyTorch: the prefix of its parameters */
    int E, H, kdim, vdim, bias, causal;
    int batched, B, Tq, Tk, inputs, attn_mask;
    int lengths[2];    /* key lengths per sequence; 0: no key_padding_mask */
} mha_case;

static const mha_case mha_cases[] = {
    {"enc.self_attn", 16, 4, 16, 16, 1, 0, 1, 2, 7, 7, SELF, MASK_2D, {7, 4}},
    {"enc.causal_attn", 12, 2, 12, 12, 0, 1, 1, 2, 65, 65, SELF, MASK_2D, {65, 30}},
    {"dec.causal_cross", 16, 4, 16, 16, 1, 1, 1, 2, 4, 9, MEMORY, NO_MASK, {0, 0}},
    {"dec.mem_attn", 16, 2, 16, 16, 1, 0, 1, 2, 6, 9, MEMORY, MASK_3D, {9, 5}},
    {"xattn.kv", 16, 4, 6, 10, 1, 0, 1, 2, 5, 8, SEPARATE, MASK_2D, {8, 6}},
    {"xattn.shared", 12, 3, 6, 6, 0, 0, 1, 2, 4, 7, MEMORY, MASK_2D, {0, 0}},
    {"single.attn", 8, 2, 8, 8, 1, 0, 0, 1, 5, 5, SELF, NO_MASK, {4, 0}},
    /* the two below are also decoded through a KV cache */
    {"dec.self_attn", 16, 4, 16, 16, 1, 1, 1, 2, 9, 9, SELF, NO_MASK, {0, 0}},
    {"dec.cross_attn", 16, 4, 16, 16, 1, 0, 1, 2, 5, 11, MEMORY, NO_MASK, {11, 3}},
};
#define N_MHA ((int)(sizeof mha_cases / sizeof mha_cases[0]))

/* [B, T, width], or [T, width] unbatched */
static int seq_shape(const mha_case *k, int T, int width, int *shape) {
    if (!k->batched) { shape[0] = T; shape[1] = width; return 2; }
    shape[0] = k->B; shape[1] = T; shape[2] = width;
    return 3;
}

static void draw_mha(const mha_case *k) {
    int shape[4], nd, i;
    named *cfg;
    shape[0] = 6;
    cfg = add_input(k->name, "cfg", 1, shape);
    cfg->v[0] = k->E; cfg->v[1] = k->H; cfg->v[2] = k->kdim; cfg->v[3] = k->vdim;
    cfg->v[4] = k->bias; cfg->v[5] = k->causal;
    nd = seq_shape(k, k->Tq, k->E, shape);
    draw(k->name, "query", -1.5, 1.5, nd, shape);
    draw(k->name, "r", -1, 1, nd, shape);
    if (k->inputs != SELF) draw(k->name, "key", -1.5, 1.5, seq_shape(k, k->Tk, k->kdim, shape), shape);
    if (k->inputs == SEPARATE) draw(k->name, "value", -1.5, 1.5, seq_shape(k, k->Tk, k->vdim, shape), shape);
    shape[0] = k->B * k->H; shape[1] = k->Tq; shape[2] = k->Tk; /* PyTorch's weights: [B, H, Tq, Tk] or [H, Tq, Tk] */
    if (k->batched) { shape[0] = k->B; shape[1] = k->H; shape[2] = k->Tq; shape[3] = k->Tk; }
    draw(k->name, "rw", -1, 1, k->batched ? 4 : 3, shape);
    if (k->lengths[0]) {
        named *len;
        shape[0] = k->B;
        len = add_input(k->name, "lengths", 1, shape);
        for (i = 0; i < k->B; i++) len->v[i] = k->lengths[i];
    }
    shape[0] = k->B * k->H; shape[1] = k->Tq; shape[2] = k->Tk;
    if (k->attn_mask == MASK_2D) draw(k->name, "attn_mask", -1, 1, 2, shape + 1);
    if (k->attn_mask == MASK_3D) draw(k->name, "attn_mask", -1, 1, 3, shape);
}

static const char *work_dir;

/* A model with the layer, its weights loaded by name from PyTorch's state_dict. */
static av_model *load_mha(const mha_case *k, av_mha *a) {
    av_model *m = av_model_new(1);
    char path[600];
    int rc;
    *a = av_mha_new(m, k->name, k->E, k->H, k->kdim, k->vdim, k->bias, 0.0f);
    snprintf(path, sizeof path, "%.400s/attn_ref.%s.safetensors", work_dir, k->name);
    rc = av_model_load(m, path);
    CHECK(rc == 0, "%s: av_model_load of PyTorch's state_dict: %s", k->name, av_error());
    if (rc) { av_model_free(m); return NULL; }
    return m;
}

static av_tensor *key_padding(av_ctx *c, const mha_case *k) {
    return k->lengths[0] ? av_reshape(c, av_key_padding_mask(c, k->lengths, k->B, k->Tk), 2, k->B, k->Tk) : NULL;
}

/* Both paths (without weights: tiled; with: naive, the weights in the loss). */
static void check_mha(av_ctx *c, const mha_case *k) {
    av_mha a;
    av_model *m = load_mha(k, &a);
    int naive, p;
    if (!m) return;
    for (naive = 0; naive < 2; naive++) {
        av_tensor *query = input(c, k->name, "query", 1), *key = query, *value, *mask, *w = NULL, *y, *loss;
        const char *path = naive ? "naive" : "tiled";
        if (k->inputs != SELF) key = input(c, k->name, "key", 1);
        value = k->inputs == SEPARATE ? input(c, k->name, "value", 1) : key;
        mask = input(c, k->name, "attn_mask", 0);
        if (mask && mask->ndim == 3) mask = av_reshape(c, mask, 4, k->B, k->H, k->Tq, k->Tk);
        av_model_zero_grad(m);
        y = av_mha_forward(c, &a, query, key, value, key_padding(c, k), mask, k->causal, naive ? &w : NULL);
        loss = weighted_sum(c, y, input(c, k->name, "r", 0));
        if (naive) loss = av_add(c, loss, weighted_sum(c, w, input(c, k->name, "rw", 0)));
        av_backward(c, loss);
        compare(G_MHA, FWD, k->name, "y", path, y->data, y->size, k->E);
        if (naive) {
            av_tensor *avg = av_mean(c, w, 1, 0);
            compare(G_MHA, FWD, k->name, "w", NULL, w->data, w->size, k->Tk);
            compare(G_MHA, FWD, k->name, "w_avg", "(av_mean over heads)", avg->data, avg->size, k->Tk);
        }
        compare_grad(G_MHA, k->name, path, "query", query);
        if (key != query) compare_grad(G_MHA, k->name, path, "key", key);
        if (value != key) compare_grad(G_MHA, k->name, path, "value", value);
        for (p = 0; p < av_model_count(m); p++) {
            av_tensor *param = av_model_param(m, p);
            compare_grad(G_MHA, k->name, path, param->name, param);
        }
        av_ctx_reset(c);
    }
    av_model_free(m);
}

/* Copies a step's rows into the whole sequence's: y [B, n, E] to rows t..
   of Y [B, T, E]; w [B, H, n, Tk] to rows t.. of W [B, H, T, Tk_all]. */
static void place_rows(const av_tensor *y, float *Y, const av_tensor *w, float *W, int t, int T, int Tk_all) {
    int B = y->shape[0], n = y->shape[1], E = y->shape[2], b, r, bh;
    int H = w ? w->shape[1] : 0, Tk = w ? w->shape[3] : 0;
    for (b = 0; b < B; b++)
        memcpy(Y + ((size_t)b * T + t) * E, y->data + (size_t)b * n * E, (size_t)n * E * sizeof(float));
    for (bh = 0; bh < B * H; bh++)
        for (r = 0; r < n; r++)
            memcpy(W + ((size_t)bh * T + t + r) * Tk_all, w->data + ((size_t)bh * n + r) * Tk,
                   (size_t)Tk * sizeof(float));
}

/* Self-attention decoding through av_mha_step, a fresh step context each
   time: a prompt of `prompt` tokens, then one token at a time. */
static void check_kv_self(av_ctx *c, const mha_case *k) {
    av_mha a;
    av_model *m = load_mha(k, &a);
    int prompt, with_w;
    size_t ny = (size_t)k->B * k->Tq * k->E, nw = (size_t)k->B * k->H * k->Tq * k->Tk;
    float *Y = (float *)malloc(ny * sizeof(float)), *W = (float *)malloc(nw * sizeof(float));
    for (prompt = 1; m && prompt <= 4; prompt += 3)
        for (with_w = 0; with_w < 2; with_w++) {
            av_kv_cache kv;
            int t, n;
            char note[96];
            memset(W, 0, nw * sizeof(float)); /* what causality hides is 0 in PyTorch's weights too */
            CHECK(av_kv_cache_init(&kv, &a, k->B, 2) == 0, "av_kv_cache_init: %s", av_error()); /* it must grow */
            for (t = 0; t < k->Tq; t += n) {
                av_tensor *w = NULL, *y, *x;
                n = t ? 1 : prompt;
                x = av_slice(c, input(c, k->name, "query", 0), 1, t, t + n);
                y = av_mha_step(c, &a, x, &kv, with_w ? &w : NULL);
                place_rows(y, Y, w, W, t, k->Tq, k->Tk);
                av_ctx_reset(c);
            }
            CHECK(kv.length == k->Tq, "%s: the cache holds %d positions, not %d", k->name, kv.length, k->Tq);
            snprintf(note, sizeof note, "(av_mha_step: a %d-token prompt, then 1 at a time%s)", prompt,
                     with_w ? ", weights" : "");
            compare(G_KV, FWD, k->name, "y", note, Y, (int)ny, k->E);
            if (with_w) compare(G_KV, FWD, k->name, "w", note, W, (int)nw, k->Tk);
            av_kv_cache_free(&kv);
        }
    free(Y);
    free(W);
    av_model_free(m);
}

/* Cross-attention to a cached memory: all queries at once, then one at a time. */
static void check_kv_cross(av_ctx *c, const mha_case *k) {
    av_mha a;
    av_model *m = load_mha(k, &a);
    av_kv_cache kv;
    int step, t, n;
    size_t ny = (size_t)k->B * k->Tq * k->E, nw = (size_t)k->B * k->H * k->Tq * k->Tk;
    float *Y = (float *)malloc(ny * sizeof(float)), *W = (float *)malloc(nw * sizeof(float));
    if (m) {
        CHECK(av_kv_cache_init(&kv, &a, k->B, 2) == 0, "av_kv_cache_init: %s", av_error());
        CHECK(av_kv_cache_set_memory(c, &a, input(c, k->name, "key", 0), &kv) == 0 && kv.length == k->Tk,
              "av_kv_cache_set_memory: %s", av_error());
        av_ctx_reset(c);
        for (step = 0; step < 2; step++) {
            char note[96];
            for (t = 0; t < k->Tq; t += n) {
                av_tensor *w, *y;
                n = step ? 1 : k->Tq;
                y = av_mha_attend_cache(c, &a, av_slice(c, input(c, k->name, "query", 0), 1, t, t + n), &kv,
                                        key_padding(c, k), &w);
                place_rows(y, Y, w, W, t, k->Tq, k->Tk);
                av_ctx_reset(c);
            }
            snprintf(note, sizeof note, "(av_mha_attend_cache, %s)", step ? "one query at a time" : "all queries");
            compare(G_KV, FWD, k->name, "y", note, Y, (int)ny, k->E);
            compare(G_KV, FWD, k->name, "w", note, W, (int)nw, k->Tk);
        }
        av_kv_cache_free(&kv);
    }
    free(Y);
    free(W);
    av_model_free(m);
}

int main(int argc, char **argv) {
    const char *script = argc > 1 ? argv[1] : "tests/attn_ref.py";
    char in[512], out[512], path[600];
    int i;
    rs = 0x5eed0a77u;
    work_dir = argc > 2 ? argv[2] : "build";
    snprintf(in, sizeof in, "%.400s/attn_ref_in.txt", work_dir);
    snprintf(out, sizeof out, "%.400s/attn_ref_out.txt", work_dir);
    for (i = 0; i < N_SDPA; i++) draw_sdpa(i);
    for (i = 0; i < N_MHA; i++) draw_mha(&mha_cases[i]);
    if (write_table(&inputs, in) != 0) CHECK(0, "cannot write %s", in);
    else if (run_script(script, in, out)) {
        av_ctx *c = av_ctx_new();
        for (i = 0; i < N_SDPA; i++) check_sdpa(c, i);
        for (i = 0; i < N_MHA; i++) check_mha(c, &mha_cases[i]);
        check_kv_self(c, &mha_cases[N_MHA - 2]);
        check_kv_cross(c, &mha_cases[N_MHA - 1]);
        av_ctx_free(c);
        print_worst(group_name, N_GROUPS);
    }
    for (i = 0; i < N_MHA; i++) {
        snprintf(path, sizeof path, "%.400s/attn_ref.%s.safetensors", work_dir, mha_cases[i].name);
        remove(path);
    }
    remove(in);
    remove(out);
    free_table(&inputs);
    free_table(&refs);
    return t_summary();
}
