/* test_transformer.c - Transformer layers: finite-difference checks of the
   encoder and decoder layers (post- and pre-LN, ReLU and GELU, masks) with
   every parameter among the checked inputs; cached decoding against full
   recomputation; the sinusoidal table against its closed form; parameter
   names as PyTorch's; weight tying (one table as embedding and output
   projection) under finite differences. PyTorch's own layers are compared in
   tests/test_transformer_ref.c. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "gradcheck.h"

/* ---- layers whose parameters are gradcheck inputs ---- */
typedef struct layer_case { int d, H, ff, norm_first, activation, decoder, masks; } layer_case;

/* in[0] x [2, T, d], in[1] memory [2, S, d], then the parameters in order */
static int n_params(const layer_case *k) { return k->decoder ? 18 : 12; }

static void param_shapes(const layer_case *k, int i, int *ndim, int *shape) {
    /* mha: in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias; ffn: 4; norms: 2 each */
    int d = k->d, ff = k->ff, mha = k->decoder ? 8 : 4;
    if (i < mha) {
        int j = i % 4;
        *ndim = j == 0 || j == 2 ? 2 : 1;
        shape[0] = j == 0 ? 3 * d : j == 1 ? 3 * d : d;
        shape[1] = d;
        return;
    }
    i -= mha;
    if (i < 4) {
        *ndim = i % 2 == 0 ? 2 : 1;
        shape[0] = i == 0 ? ff : i == 1 ? ff : d;
        shape[1] = i == 0 ? d : ff;
        return;
    }
    *ndim = 1;
    shape[0] = d;
}

static av_mha mha_of(av_tensor **p, int d, int H) {
    av_mha a;
    memset(&a, 0, sizeof a);
    a.embed_dim = d; a.num_heads = H; a.kdim = a.vdim = d;
    a.in_proj_weight = p[0]; a.in_proj_bias = p[1]; a.out_proj.weight = p[2]; a.out_proj.bias = p[3];
    return a;
}

static av_transformer_config cfg_of(const layer_case *k) {
    av_transformer_config cfg = av_transformer_defaults(k->d, k->H);
    cfg.dim_feedforward = k->ff;
    cfg.dropout = 0.0f;
    cfg.activation = k->activation;
    cfg.norm_first = k->norm_first;
    return cfg;
}

static av_tensor *fwd_layer(av_ctx *c, av_tensor **in, void *u) {
    const layer_case *k = (const layer_case *)u;
    av_tensor **p = in + 2, *kpm = NULL, *mkpm = NULL;
    static const int lengths[2] = {5, 3}, mem_lengths[2] = {4, 6};
    av_transformer_config cfg = cfg_of(k);
    int T = in[0]->shape[1], S = in[1]->shape[1];
    if (k->masks) {
        kpm = av_reshape(c, av_key_padding_mask(c, lengths, 2, T), 2, 2, T);
        mkpm = av_reshape(c, av_key_padding_mask(c, mem_lengths, 2, S), 2, 2, S);
    }
    if (!k->decoder) {
        av_encoder_layer l;
        l.cfg = cfg;
        l.self_attn = mha_of(p, k->d, k->H);
        l.linear1.weight = p[4]; l.linear1.bias = p[5]; l.linear2.weight = p[6]; l.linear2.bias = p[7];
        l.norm1.weight = p[8]; l.norm1.bias = p[9]; l.norm2.weight = p[10]; l.norm2.bias = p[11];
        l.norm1.eps = l.norm2.eps = cfg.layer_norm_eps;
        return av_encoder_layer_forward(c, &l, in[0], NULL, kpm, k->masks);
    } else {
        av_decoder_layer l;
        l.cfg = cfg;
        l.self_attn = mha_of(p, k->d, k->H);
        l.multihead_attn = mha_of(p + 4, k->d, k->H);
        l.linear1.weight = p[8]; l.linear1.bias = p[9]; l.linear2.weight = p[10]; l.linear2.bias = p[11];
        l.norm1.weight = p[12]; l.norm1.bias = p[13]; l.norm2.weight = p[14]; l.norm2.bias = p[15];
        l.norm3.weight = p[16]; l.norm3.bias = p[17];
        l.norm1.eps = l.norm2.eps = l.norm3.eps = cfg.layer_norm_eps;
        return av_decoder_layer_forward(c, &l, in[0], in[1], NULL, kpm, 1, NULL, mkpm);
    }
}

static void layer_gradchecks(void) {
    static const layer_case cases[] = {
        {8, 2, 12, 0, AV_ACT_RELU, 0, 0}, {8, 2, 12, 1, AV_ACT_GELU, 0, 1},
        {8, 2, 12, 0, AV_ACT_GELU, 1, 1}, {6, 3, 10, 1, AV_ACT_GELU, 1, 0}};
    /* GELU: a ReLU inside a layer has kinks a finite difference can cross */
    int ci, i;
    for (ci = 0; ci < 4; ci++) {
        const layer_case *k = &cases[ci];
        gc_input in[GC_MAX_IN];
        float *buf[GC_MAX_IN];
        char what[128];
        int n = 2 + n_params(k), T = 5, S = 6;
        for (i = 0; i < n; i++) {
            int shape[2] = {0, 0}, nd = 3, size;
            if (i >= 2) param_shapes(k, i - 2, &nd, shape);
            size = i == 0 ? 2 * T * k->d : i == 1 ? 2 * S * k->d : nd == 2 ? shape[0] * shape[1] : shape[0];
            buf[i] = (float *)malloc(sizeof(float) * (size_t)size);
            gc_fill(buf[i], size, -0.7, 0.7);
            if (i >= 2 && nd == 1 && shape[0] == k->d && i - 2 >= n_params(k) - (k->decoder ? 6 : 4))
                gc_fill(buf[i], size, 0.5, 1.5); /* the norms' weights near 1 */
            if (i == 0) in[i] = gc_in(buf[i], 1, 3, 2, T, k->d);
            else if (i == 1) in[i] = gc_in(buf[i], k->decoder, 3, 2, S, k->d);
            else if (nd == 2) in[i] = gc_in(buf[i], 1, 2, shape[0], shape[1]);
            else in[i] = gc_in(buf[i], 1, 1, shape[0]);
        }
        snprintf(what, sizeof what, "%s layer d %d %s %s%s", k->decoder ? "decoder" : "encoder", k->d,
                 k->norm_first ? "pre-LN" : "post-LN", k->activation == AV_ACT_GELU ? "gelu" : "relu",
                 k->masks ? " with padding masks" : "");
        gc_check(what, fwd_layer, (void *)k, n, in);
        for (i = 0; i < n; i++) free(buf[i]);
    }
}

/* ---- names are PyTorch's ---- */
static void names(void) {
    static const char *const want[] = {
        "tf.encoder.layers.0.self_attn.in_proj_weight", "tf.encoder.layers.0.self_attn.in_proj_bias",
        "tf.encoder.layers.0.self_attn.out_proj.weight", "tf.encoder.layers.0.self_attn.out_proj.bias",
        "tf.encoder.layers.0.linear1.weight", "tf.encoder.layers.0.linear1.bias", "tf.encoder.layers.0.linear2.weight",
        "tf.encoder.layers.0.linear2.bias", "tf.encoder.layers.0.norm1.weight", "tf.encoder.layers.0.norm1.bias",
        "tf.encoder.layers.0.norm2.weight", "tf.encoder.layers.0.norm2.bias", "tf.encoder.layers.1.norm2.bias",
        "tf.encoder.norm.weight", "tf.encoder.norm.bias", "tf.decoder.layers.0.multihead_attn.in_proj_weight",
        "tf.decoder.layers.1.norm3.weight", "tf.decoder.norm.bias"};
    av_model *m = av_model_new(1);
    av_transformer_config cfg = av_transformer_defaults(16, 4);
    av_transformer t;
    av_tensor *l1;
    int i;
    cfg.dim_feedforward = 32;
    t = av_transformer_new(m, "tf", &cfg, 2, 2);
    (void)t;
    for (i = 0; i < (int)(sizeof want / sizeof want[0]); i++) CHECK(av_model_find(m, want[i]) != NULL, "no parameter '%s'", want[i]);
    l1 = av_model_find(m, "tf.decoder.layers.1.linear1.weight");
    CHECK(l1 && l1->shape[0] == 32 && l1->shape[1] == 16, "linear1.weight is [dim_feedforward, d_model]");
    CHECK(av_model_count(m) == 2 * 12 + 2 + 2 * 18 + 2, "nn.Transformer(2, 2) has %d tensors here", av_model_count(m));
    av_model_free(m);
}

/* ---- the sinusoidal table ---- */
static void positions(void) {
    av_ctx *c = av_ctx_new();
    av_tensor *pe = av_sinusoidal_positions(c, 7, 10, 3);
    int p, i, ok = 1;
    for (p = 0; p < 7; p++)
        for (i = 0; i < 10; i++) {
            double angle = (p + 3) / pow(10000.0, 2.0 * (i / 2) / 10.0);
            ok &= fabs(pe->data[p * 10 + i] - (i % 2 ? cos(angle) : sin(angle))) < 1e-6;
        }
    CHECK(ok && pe->shape[0] == 7 && pe->shape[1] == 10, "sinusoidal positions against the closed form");
    av_ctx_free(c);
}

/* ---- cached decoding equals the full decoder ---- */
static void cached_decoding(void) {
    av_model *m = av_model_new(9);
    av_transformer_config cfg = av_transformer_defaults(16, 4);
    av_transformer_decoder d;
    av_decoder_cache dc;
    av_ctx *c = av_ctx_new();
    int B = 2, T = 11, S = 9, t, b, norm_first;
    float *want = (float *)malloc(sizeof(float) * (size_t)(B * T * 16)), *got = (float *)malloc(sizeof(float) * (size_t)(B * T * 16));
    float *x = (float *)malloc(sizeof(float) * (size_t)(B * T * 16)), *mem = (float *)malloc(sizeof(float) * (size_t)(B * S * 16));
    static const int lengths[2] = {9, 5};
    cfg.dim_feedforward = 24;
    gc_fill(x, B * T * 16, -1, 1);
    gc_fill(mem, B * S * 16, -1, 1);
    av_set_grad_enabled(c, 0);
    av_set_training(c, 0); /* inference: no dropout */
    for (norm_first = 0; norm_first < 2; norm_first++) {
        double worst = 0;
        int i;
        cfg.norm_first = norm_first;
        d = av_transformer_decoder_new(m, norm_first ? "pre" : "post", &cfg, 3, 1);
        {
            av_tensor *xt = av_from(c, x, 3, B, T, 16), *mt = av_from(c, mem, 3, B, S, 16);
            av_tensor *kpm = av_reshape(c, av_key_padding_mask(c, lengths, 2, S), 2, 2, S);
            av_tensor *y = av_transformer_decoder_forward(c, &d, xt, mt, NULL, NULL, 1, NULL, kpm);
            memcpy(want, y->data, sizeof(float) * (size_t)y->size);
        }
        CHECK(av_decoder_cache_init(&dc, &d, B, 2) == 0, "cache init");
        av_ctx_reset(c);
        CHECK(av_decoder_cache_set_memory(c, &dc, &d, av_from(c, mem, 3, B, S, 16)) == 0, "set memory");
        for (t = 0; t < T; t++) {
            float step[2 * 16];
            av_tensor *y;
            av_ctx_reset(c);
            for (b = 0; b < B; b++) memcpy(step + b * 16, x + ((size_t)b * T + t) * 16, sizeof(float) * 16);
            y = av_transformer_decoder_step(c, &d, av_from(c, step, 3, B, 1, 16), &dc,
                                            av_reshape(c, av_key_padding_mask(c, lengths, 2, S), 2, 2, S));
            for (b = 0; b < B; b++) memcpy(got + ((size_t)b * T + t) * 16, y->data + b * 16, sizeof(float) * 16);
        }
        for (i = 0; i < B * T * 16; i++) worst = fabs(got[i] - want[i]) > worst ? fabs(got[i] - want[i]) : worst;
        CHECK(worst < 1e-5, "%s: cached decoding differs from the full decoder by %g", norm_first ? "pre-LN" : "post-LN", worst);
        av_decoder_cache_free(&dc);
    }
    free(want); free(got); free(x); free(mem);
    av_ctx_free(c);
    av_model_free(m);
}

/* ---- weight tying: one table as the embedding and the output projection ---- */
static av_tensor *fwd_tied(av_ctx *c, av_tensor **in, void *u) {
    static const int ids[6] = {0, 3, 2, 3, 1, 4};
    av_tensor *table = in[0], *h;
    (void)u;
    h = av_tanh(c, av_embedding(c, table, ids, 6)); /* [6, D] */
    return av_linear(c, h, table, NULL);           /* logits [6, V] with the same table */
}

static void weight_tying(void) {
    float t[5 * 4];
    gc_input in;
    gc_fill(t, 20, -1, 1);
    in = gc_in(t, 1, 2, 5, 4);
    gc_check("weight tying: embedding and output projection share a table", fwd_tied, NULL, 1, &in);
}

int main(void) {
    gc_seed(2718);
    layer_gradchecks();
    names();
    positions();
    cached_decoding();
    weight_tying();
    printf("info: worst gradcheck error %.2f of its tolerance (%s)\n", gc_worst_ratio, gc_worst_what);
    return t_summary();
}
