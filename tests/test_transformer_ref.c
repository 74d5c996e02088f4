/* test_transformer_ref.c - the Transformer layers against PyTorch in float64
   (tests/transformer_ref.py), with PyTorch's weights loaded by name.

   enc     av_transformer_encoder (2 layers and a final norm) against
           nn.TransformerEncoder(batch_first=True): post- and pre-LN, ReLU
           and GELU, 3 and 4 heads, a layer norm eps of 1e-2 once; PyTorch's
           bool src_key_padding_mask (ours: additive, av_key_padding_mask
           reshaped to [B, T]), explicit float masks of 2 and 3 dims with
           -inf entries, causality (ours: is_causal; PyTorch 1.13's: a mask).
   dec     av_transformer_decoder (2 layers and a final norm) against
           nn.TransformerDecoder: the same variants, with target and memory
           key padding, a causal target, float tgt_mask and memory_mask.
   tf      av_transformer_forward against nn.Transformer (2 + 2 layers, both
           final norms) with a causal tgt_mask, the source's key padding for
           the source and the memory, the target's for the target.
   kv      av_transformer_decoder_step, a token at a time (and after a
           3-token prompt), against the decoder's full causal forward.
   decode  a small translation model (embeddings plus sinusoidal positions,
           nn.Transformer, a linear head) decoded greedily: av_decode_greedy
           through av_transformer_decoder_step and the decoder's caches,
           against PyTorch running the whole prefix through the decoder at
           each step: the tokens, where each row ends (eos), the logits of
           every step; av_decode_beam of width 1: row 0's tokens and score.
   Also av_transformer_defaults against PyTorch's constructor defaults.

   The script draws every parameter anew (biases, norm weights, and the
   layers of a stack all differ, so a part in the wrong place shows), writes
   the state_dict as safetensors, and this program loads it into the model
   built by av_transformer_*_new with av_model_load, which requires every
   name and shape to match. Compared: forward values and the gradients of
   sum(y r) for every input and every parameter (read back by name). Flow
   and errors as tests/pyref.h says: within 1e-5 (forward) and 1e-4
   (gradients) of the largest reference value, no NaN. An info line per
   group prints the worst errors.

   usage: test_transformer_ref [script [workdir]]
          (defaults tests/transformer_ref.py, build)
   The interpreter is $ATTNVAE_PYTHON, else python3. Without python3 or
   torch the test prints "skipped: ..." and counts nothing. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "pyref.h"

enum { G_ENC, G_DEC, G_TF, G_KV, G_DECODE, N_GROUPS };
static const char *const group_name[N_GROUPS] = {"enc", "dec", "tf", "kv", "decode"};

enum { ENCODER, DECODER, TRANSFORMER, SEQ2SEQ }; /* as in the script */
enum { NO_MASK, MASK_2D, MASK_3D };              /* float masks [T, S], or PyTorch's [B*H, T, S] */

typedef struct tf_case {
    const char *name;       /* the module's path in PyTorch: the prefix of its parameters */
    int kind, d, H, ff, norm_first, activation;
    float eps;
    int B, T, S;            /* T: the encoder's input or the target; S: the memory or the source */
    int causal;             /* the encoder's is_causal, the decoder's tgt_is_causal (nn.Transformer: always) */
    int mask, memory_mask;  /* the float src or tgt mask, the float memory mask */
    int lengths[2];         /* key padding of the encoder's input or the target; 0: none */
    int mem_lengths[2];     /* key padding of the memory (decoder) or the source; 0: none */
    int steps;              /* decoder: also decoded through av_transformer_decoder_step */
} tf_case;

#define RELU AV_ACT_RELU
#define GELU AV_ACT_GELU
static const tf_case cases[] = {
    {"post_relu.encoder", ENCODER, 16, 4, 32, 0, RELU, 1e-5f, 2, 7, 0, 0, MASK_2D, NO_MASK, {7, 4}, {0, 0}, 0},
    {"pre_gelu.encoder", ENCODER, 16, 4, 32, 1, GELU, 1e-5f, 2, 9, 0, 1, MASK_2D, NO_MASK, {9, 5}, {0, 0}, 0},
    {"post_gelu.encoder", ENCODER, 12, 3, 20, 0, GELU, 1e-2f, 2, 6, 0, 1, NO_MASK, NO_MASK, {0, 0}, {0, 0}, 0},
    {"pre_relu.encoder", ENCODER, 16, 2, 24, 1, RELU, 1e-5f, 2, 8, 0, 0, MASK_3D, NO_MASK, {8, 3}, {0, 0}, 0},
    {"post_relu.decoder", DECODER, 16, 4, 32, 0, RELU, 1e-5f, 2, 7, 9, 1, MASK_2D, MASK_2D, {7, 5}, {9, 4}, 0},
    {"pre_gelu.decoder", DECODER, 16, 4, 32, 1, GELU, 1e-5f, 2, 6, 8, 0, MASK_3D, MASK_3D, {6, 3}, {8, 8}, 0},
    {"post_gelu.decoder", DECODER, 12, 3, 20, 0, GELU, 1e-2f, 2, 5, 7, 1, NO_MASK, NO_MASK, {0, 0}, {7, 2}, 1},
    {"pre_relu.decoder", DECODER, 16, 4, 32, 1, RELU, 1e-5f, 2, 9, 6, 1, NO_MASK, NO_MASK, {0, 0}, {6, 4}, 1},
    {"post.transformer", TRANSFORMER, 16, 4, 32, 0, RELU, 1e-5f, 2, 6, 8, 1, NO_MASK, NO_MASK, {6, 4}, {8, 5}, 0},
    {"pre.transformer", TRANSFORMER, 12, 2, 24, 1, GELU, 1e-5f, 2, 7, 5, 1, NO_MASK, NO_MASK, {0, 0}, {5, 3}, 0},
    {"s2s", SEQ2SEQ, 16, 2, 32, 1, GELU, 1e-5f, 2, 8, 8, 1, NO_MASK, NO_MASK, {0, 0}, {8, 5}, 0},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))
#define VOCAB 11
#define BOS 1
#define LENGTH_PENALTY 0.6f

/* ---- inputs ---- */
/* a float mask [T, S] or [B*H, T, S] in [-1, 1), -inf on some keys but never
   on key 0, which no padding and no causality hides: no query loses every key */
static void draw_mask(const tf_case *k, const char *field, int kind, int S) {
    int shape[3], e;
    named *m;
    if (kind == NO_MASK) return;
    shape[0] = k->B * k->H; shape[1] = k->T; shape[2] = S;
    m = draw(k->name, field, -1, 1, kind == MASK_3D ? 3 : 2, kind == MASK_3D ? shape : shape + 1);
    for (e = 0; e < m->n; e++) {
        int j = e % S, i = e / S % k->T;
        if (j > 0 && (i + 2 * j) % 5 == 0) m->v[e] = -INFINITY;
    }
}

static void put_ints(const char *cs, const char *field, const int *v, int n) {
    named *x = add_input(cs, field, 1, &n);
    int i;
    for (i = 0; i < n; i++) x->v[i] = v[i];
}

static void draw_case(const tf_case *k) {
    int shape[3], n = 8, i;
    double *v = add_input(k->name, "cfg", 1, &n)->v;
    v[0] = k->kind; v[1] = k->d; v[2] = k->H; v[3] = k->ff;
    v[4] = k->norm_first; v[5] = k->activation == GELU; v[6] = k->eps; v[7] = k->causal;
    if (k->mem_lengths[0]) put_ints(k->name, "mem_lengths", k->mem_lengths, k->B);
    if (k->kind == SEQ2SEQ) {
        named *src;
        n = 4;
        v = add_input(k->name, "decode", 1, &n)->v;
        v[0] = VOCAB; v[1] = k->T; v[2] = BOS; v[3] = LENGTH_PENALTY;
        shape[0] = k->B; shape[1] = k->S;
        src = add_input(k->name, "src_tokens", 2, shape);
        for (i = 0; i < src->n; i++) src->v[i] = (int)unif(0, VOCAB);
        return;
    }
    shape[0] = k->B; shape[1] = k->T; shape[2] = k->d;
    draw(k->name, "x", -1.5, 1.5, 3, shape);
    draw(k->name, "r", -1, 1, 3, shape);
    shape[1] = k->S;
    if (k->kind == DECODER) draw(k->name, "memory", -1.5, 1.5, 3, shape);
    if (k->kind == TRANSFORMER) draw(k->name, "src", -1.5, 1.5, 3, shape);
    if (k->lengths[0]) put_ints(k->name, "lengths", k->lengths, k->B);
    draw_mask(k, "mask", k->mask, k->T);
    draw_mask(k, "memory_mask", k->memory_mask, k->S);
}

/* ---- the model, its weights loaded from PyTorch's state_dict ---- */
typedef struct tf_model {
    av_model *m;
    av_transformer_encoder enc;
    av_transformer_decoder dec;
    av_transformer tf;
    av_embedding_layer src_emb, tgt_emb; /* SEQ2SEQ: around tf */
    av_linear_layer out;
} tf_model;

static const char *work_dir;

static void safetensors_path(char *path, size_t size, const tf_case *k) {
    snprintf(path, size, "%.400s/transformer_ref.%s.safetensors", work_dir, k->name);
}

static av_transformer_config cfg_of(const tf_case *k) {
    av_transformer_config cfg = av_transformer_defaults(k->d, k->H);
    cfg.dim_feedforward = k->ff;
    cfg.dropout = 0.0f;
    cfg.activation = k->activation;
    cfg.layer_norm_eps = k->eps;
    cfg.norm_first = k->norm_first;
    return cfg;
}

/* 0 when the load failed (said so) */
static int load(const tf_case *k, tf_model *tm) {
    av_transformer_config cfg = cfg_of(k);
    char path[600], name[160];
    int rc;
    memset(tm, 0, sizeof *tm);
    tm->m = av_model_new(1);
    if (k->kind == ENCODER) tm->enc = av_transformer_encoder_new(tm->m, k->name, &cfg, 2, 1);
    if (k->kind == DECODER) tm->dec = av_transformer_decoder_new(tm->m, k->name, &cfg, 2, 1);
    if (k->kind == TRANSFORMER) tm->tf = av_transformer_new(tm->m, k->name, &cfg, 2, 2);
    if (k->kind == SEQ2SEQ) {
        snprintf(name, sizeof name, "%s.src_emb", k->name);
        tm->src_emb = av_embedding_new(tm->m, name, VOCAB, k->d);
        snprintf(name, sizeof name, "%s.tgt_emb", k->name);
        tm->tgt_emb = av_embedding_new(tm->m, name, VOCAB, k->d);
        snprintf(name, sizeof name, "%s.tf", k->name);
        tm->tf = av_transformer_new(tm->m, name, &cfg, 2, 2);
        snprintf(name, sizeof name, "%s.out", k->name);
        tm->out = av_linear_layer_new(tm->m, name, k->d, VOCAB, 1);
    }
    safetensors_path(path, sizeof path, k);
    rc = av_model_load(tm->m, path);
    CHECK(rc == 0, "%s: av_model_load of PyTorch's state_dict: %s", k->name, av_error());
    if (rc) av_model_free(tm->m);
    return rc == 0;
}

/* additive key padding [B, T] from lengths, NULL when there are none */
static av_tensor *key_padding(av_ctx *c, const int *lengths, int B, int T) {
    return lengths[0] ? av_reshape(c, av_key_padding_mask(c, lengths, B, T), 2, B, T) : NULL;
}

/* the float mask "<case>:<field>", [T, S] or [B, H, T, S] */
static av_tensor *float_mask(av_ctx *c, const tf_case *k, const char *field) {
    av_tensor *m = input(c, k->name, field, 0);
    return m && m->ndim == 3 ? av_reshape(c, m, 4, k->B, k->H, m->shape[1], m->shape[2]) : m;
}

/* ---- the layers: forward and every gradient ---- */
static void check_layers(av_ctx *c, const tf_case *k) {
    static const char *const leaves[3] = {"x", "memory", "src"};
    int group = k->kind == ENCODER ? G_ENC : k->kind == DECODER ? G_DEC : G_TF, i;
    tf_model tm;
    av_tensor *in[3], *y;
    if (!load(k, &tm)) return;
    for (i = 0; i < 3; i++) in[i] = input(c, k->name, leaves[i], 1);
    if (k->kind == ENCODER)
        y = av_transformer_encoder_forward(c, &tm.enc, in[0], float_mask(c, k, "mask"),
                                           key_padding(c, k->lengths, k->B, k->T), k->causal);
    else if (k->kind == DECODER)
        y = av_transformer_decoder_forward(c, &tm.dec, in[0], in[1], float_mask(c, k, "mask"),
                                           key_padding(c, k->lengths, k->B, k->T), k->causal,
                                           float_mask(c, k, "memory_mask"),
                                           key_padding(c, k->mem_lengths, k->B, k->S));
    else
        y = av_transformer_forward(c, &tm.tf, in[2], in[0], key_padding(c, k->mem_lengths, k->B, k->S),
                                   key_padding(c, k->lengths, k->B, k->T));
    av_backward(c, weighted_sum(c, y, input(c, k->name, "r", 0)));
    compare(group, FWD, k->name, "y", NULL, y->data, y->size, 0);
    for (i = 0; i < 3; i++)
        if (in[i]) compare_grad(group, k->name, NULL, leaves[i], in[i]);
    for (i = 0; i < av_model_count(tm.m); i++) {
        av_tensor *p = av_model_param(tm.m, i);
        compare_grad(group, k->name, NULL, p->name, p);
    }
    av_ctx_reset(c);
    av_model_free(tm.m);
}

/* ---- the decoder a step at a time through its caches ---- */
/* A prompt of `prompt` tokens, then one at a time, a fresh step each time;
   the caches start with room for 2 positions, so they must grow. */
static void check_steps(av_ctx *c, const tf_case *k) {
    tf_model tm;
    int prompt, b;
    size_t row = (size_t)k->d * sizeof(float);
    float *Y = (float *)malloc((size_t)k->B * k->T * row);
    int prev_grad = av_set_grad_enabled(c, 0);
    for (prompt = 1; prompt <= 3 && load(k, &tm); prompt += 2) {
        av_decoder_cache dc;
        int t, n;
        char note[96];
        CHECK(av_decoder_cache_init(&dc, &tm.dec, k->B, 2) == 0, "av_decoder_cache_init: %s", av_error());
        CHECK(av_decoder_cache_set_memory(c, &dc, &tm.dec, input(c, k->name, "memory", 0)) == 0,
              "av_decoder_cache_set_memory: %s", av_error());
        av_ctx_reset(c);
        for (t = 0; t < k->T; t += n) {
            av_tensor *x, *y;
            n = t ? 1 : prompt;
            x = av_slice(c, input(c, k->name, "x", 0), 1, t, t + n);
            y = av_transformer_decoder_step(c, &tm.dec, x, &dc, key_padding(c, k->mem_lengths, k->B, k->S));
            for (b = 0; b < k->B; b++) memcpy(Y + ((size_t)b * k->T + t) * k->d, y->data + (size_t)b * n * k->d, n * row);
            av_ctx_reset(c);
        }
        CHECK(dc.self_kv[1].length == k->T, "%s: the last layer's cache holds %d positions, not %d", k->name,
              dc.self_kv[1].length, k->T);
        snprintf(note, sizeof note, "(av_transformer_decoder_step: a %d-token prompt, then 1 at a time)", prompt);
        compare(G_KV, FWD, k->name, "y", note, Y, k->B * k->T * k->d, 0);
        av_decoder_cache_free(&dc);
        av_model_free(tm.m);
    }
    av_set_grad_enabled(c, prev_grad);
    free(Y);
}

/* ---- greedy decoding of the translation model ---- */
typedef struct s2s_state {
    const tf_case *k;
    const tf_model *tm;
    av_decoder_cache cache;
    int pos;
    float *logits; /* [rows, max_len, VOCAB]: what each step returned */
} s2s_state;

/* embeddings plus positions, through the decoder's caches and the head */
static av_tensor *s2s_step(av_ctx *c, const int *tokens, int rows, void *state) {
    s2s_state *s = (s2s_state *)state;
    const tf_case *k = s->k;
    av_tensor *x, *y;
    int b;
    x = av_add(c, av_embedding_forward(c, &s->tm->tgt_emb, tokens, rows, 1), av_sinusoidal_positions(c, 1, k->d, s->pos));
    y = av_transformer_decoder_step(c, &s->tm->tf.decoder, x, &s->cache, key_padding(c, k->mem_lengths, rows, k->S));
    y = av_reshape(c, av_linear_forward(c, &s->tm->out, y), 2, rows, VOCAB);
    for (b = 0; b < rows && s->pos < k->T; b++)
        memcpy(s->logits + ((size_t)b * k->T + s->pos) * VOCAB, y->data + (size_t)b * VOCAB, VOCAB * sizeof(float));
    s->pos++;
    return y;
}

static void s2s_reorder(void *state, const int *rows, int n) {
    av_decoder_cache_reorder(&((s2s_state *)state)->cache, rows, n);
}

/* the encoder's output for the first `rows` sequences into the caches */
static void s2s_start(av_ctx *c, s2s_state *s, int rows) {
    const tf_case *k = s->k;
    const named *src = lookup(&inputs, k->name, "src_tokens");
    int *ids = (int *)malloc((size_t)src->n * sizeof(int)), i;
    av_tensor *x, *memory;
    for (i = 0; i < src->n; i++) ids[i] = (int)src->v[i];
    x = av_add(c, av_embedding_forward(c, &s->tm->src_emb, ids, k->B, k->S), av_sinusoidal_positions(c, k->S, k->d, 0));
    memory = av_transformer_encoder_forward(c, &s->tm->tf.encoder, x, NULL, key_padding(c, k->mem_lengths, k->B, k->S), 0);
    CHECK(av_decoder_cache_init(&s->cache, &s->tm->tf.decoder, rows, 2) == 0, "av_decoder_cache_init: %s", av_error());
    CHECK(av_decoder_cache_set_memory(c, &s->cache, &s->tm->tf.decoder, av_slice(c, memory, 0, 0, rows)) == 0,
          "av_decoder_cache_set_memory: %s", av_error());
    av_ctx_reset(c);
    s->pos = 0;
    free(ids);
}

/* tokens[0..n) against PyTorch's row `row`, which ends after ref_len tokens */
static int same_tokens(const int *tokens, int n, const named *ref, int row, int ref_len) {
    int t, same = n == ref_len;
    for (t = 0; same && t < n; t++) same = tokens[t] == (int)ref->v[row * ref->shape[1] + t];
    return same;
}

static void check_decode(av_ctx *c, const tf_case *k) {
    const named *ref_tokens = lookup(&refs, k->name, "tokens"), *ref_logits = lookup(&refs, k->name, "logits");
    const named *ref_lengths = lookup(&refs, k->name, "lengths"), *ref_eos = lookup(&refs, k->name, "eos");
    const named *gap = lookup(&refs, k->name, "gap"), *score = lookup(&refs, k->name, "beam_score");
    size_t per_row = (size_t)k->T * VOCAB;
    float *logits = (float *)calloc((size_t)k->B * per_row, sizeof(float)), beam_score = 0;
    float *got = (float *)calloc((size_t)k->B * per_row, sizeof(float));
    double *want = (double *)calloc((size_t)k->B * per_row, sizeof(double));
    int *out = (int *)calloc((size_t)k->B * k->T, sizeof(int)), lengths[2], b, t, n = 0, eos, beam_len;
    tf_model tm;
    s2s_state s;
    av_decoder d;
    if (!ref_tokens || !ref_logits || !ref_lengths || !ref_eos || !gap || !score) {
        CHECK(0, "%s: no decoding from PyTorch", k->name);
    } else if (load(k, &tm)) {
        eos = (int)ref_eos->v[0];
        /* float32 errors of ~1e-6 cannot change an argmax won by more than 1e-3 */
        CHECK(gap->v[0] > 1e-3, "%s: PyTorch's top two logits are %.3g apart at some step: too close to compare tokens",
              k->name, gap->v[0]);
        /* the decoding the script chose: a row goes on after the other ended */
        CHECK(ref_lengths->v[0] != ref_lengths->v[1] && ref_lengths->v[0] < k->T, "%s: PyTorch's rows end after %g and %g tokens",
              k->name, ref_lengths->v[0], ref_lengths->v[1]);
        printf("info: decode: eos %d, PyTorch's rows end after %g and %g of %d tokens, top two logits >= %.3f apart\n",
               eos, ref_lengths->v[0], ref_lengths->v[1], k->T, gap->v[0]);
        memset(&s, 0, sizeof s);
        s.k = k; s.tm = &tm; s.logits = logits;
        d.step = s2s_step; d.reorder = s2s_reorder; d.state = &s;
        s2s_start(c, &s, k->B);
        CHECK(av_decode_greedy(c, &d, k->B, BOS, eos, k->T, out, lengths) == 0, "av_decode_greedy: %s", av_error());
        av_decoder_cache_free(&s.cache);
        for (b = 0; b < k->B; b++) {
            int ref_len = (int)ref_lengths->v[b];
            CHECK(same_tokens(out + b * k->T, lengths[b], ref_tokens, b, ref_len),
                  "%s: av_decode_greedy's row %d (%d tokens) differs from PyTorch's (%d tokens, eos %d)", k->name, b,
                  lengths[b], ref_len, eos);
            for (t = 0; t < lengths[b] && t < ref_len; t++, n++) { /* the steps the row took */
                int v;
                for (v = 0; v < VOCAB; v++) {
                    got[(size_t)n * VOCAB + v] = logits[b * per_row + (size_t)t * VOCAB + v];
                    want[(size_t)n * VOCAB + v] = ref_logits->v[b * per_row + (size_t)t * VOCAB + v];
                }
            }
        }
        compare_values(G_DECODE, FWD, "s2s:logits (av_decode_greedy, every step each row took)", got, want, n * VOCAB, 0);
        /* width 1 on row 0 alone: the same tokens, scored by their log-probability */
        s2s_start(c, &s, 1);
        beam_len = av_decode_beam(c, &d, 1, BOS, eos, k->T, LENGTH_PENALTY, out, &beam_score);
        av_decoder_cache_free(&s.cache);
        CHECK(same_tokens(out, beam_len, ref_tokens, 0, (int)ref_lengths->v[0]),
              "%s: av_decode_beam of width 1 gives %d tokens, not PyTorch's greedy %d", k->name, beam_len,
              (int)ref_lengths->v[0]);
        compare_values(G_DECODE, FWD, "s2s:beam_score (av_decode_beam, width 1)", &beam_score, score->v, 1, 0);
        av_model_free(tm.m);
    }
    free(logits);
    free(got);
    free(want);
    free(out);
}

/* ---- av_transformer_defaults: PyTorch's defaults ---- */
static void check_defaults(void) {
    av_transformer_config cfg = av_transformer_defaults(8, 2);
    const named *want = lookup(&refs, "defaults", "values");
    if (!want || want->n != 5) {
        CHECK(0, "no defaults from PyTorch");
        return;
    }
    CHECK(cfg.dim_feedforward == (int)want->v[0] && cfg.dropout == (float)want->v[1] &&
              cfg.layer_norm_eps == (float)want->v[2] && cfg.norm_first == (int)want->v[3] &&
              (cfg.activation == AV_ACT_RELU) == (int)want->v[4] && cfg.d_model == 8 && cfg.nhead == 2,
          "av_transformer_defaults: dim_feedforward %d, dropout %g, eps %g, norm_first %d, activation %d; PyTorch's: "
          "%g, %g, %g, %g, relu %g", cfg.dim_feedforward, (double)cfg.dropout, (double)cfg.layer_norm_eps,
          cfg.norm_first, cfg.activation, want->v[0], want->v[1], want->v[2], want->v[3], want->v[4]);
}

int main(int argc, char **argv) {
    const char *script = argc > 1 ? argv[1] : "tests/transformer_ref.py";
    char in[512], out[512], path[600];
    int i;
    rs = 0x7f0a3c5du;
    work_dir = argc > 2 ? argv[2] : "build";
    snprintf(in, sizeof in, "%.400s/transformer_ref_in.txt", work_dir);
    snprintf(out, sizeof out, "%.400s/transformer_ref_out.txt", work_dir);
    for (i = 0; i < N_CASES; i++) draw_case(&cases[i]);
    if (write_table(&inputs, in) != 0) CHECK(0, "cannot write %s", in);
    else if (run_script(script, in, out)) {
        av_ctx *c = av_ctx_new();
        check_defaults();
        for (i = 0; i < N_CASES; i++) {
            if (cases[i].kind == SEQ2SEQ) check_decode(c, &cases[i]);
            else check_layers(c, &cases[i]);
            if (cases[i].steps) check_steps(c, &cases[i]);
        }
        av_ctx_free(c);
        print_worst(group_name, N_GROUPS);
    }
    for (i = 0; i < N_CASES; i++) {
        safetensors_path(path, sizeof path, &cases[i]);
        remove(path);
    }
    remove(in);
    remove(out);
    free_table(&inputs);
    free_table(&refs);
    return t_summary();
}
