/* test_imgattn.c - attention for images and the convolutional blocks of
   [6 layers]: SAGAN self-attention against a naive double-precision loop
   written here (output and attention weights, on the tiled and the naive
   path), central finite differences of every module (tests/gradcheck.h),
   batch norm in training mode, names and shapes as PyTorch's, the
   AttentionNet (maps, features, the ablation) and the shape errors.
   usage: test_imgattn */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "gradcheck.h"
#include "expect_fail.h"
#include "check_close.h"

/* ======================================================================= */
/* helpers                                                                 */
/* ======================================================================= */

/* Every parameter pointer of the module copy (a struct of size bytes) that
   is model m's parameter i now points to in[1 + i] (in[0] is the input):
   the gradient check then perturbs the module's parameters as inputs. */
static void bind_params(void *module, size_t size, const av_model *m, av_tensor **in) {
    size_t off;
    int i;
    for (off = 0; off + sizeof(av_tensor *) <= size; off += sizeof(av_tensor *)) {
        av_tensor *p;
        memcpy(&p, (char *)module + off, sizeof p);
        for (i = 0; p && i < av_model_count(m); i++)
            if (p == av_model_param(m, i)) {
                memcpy((char *)module + off, &in[1 + i], sizeof p);
                break;
            }
    }
}

/* gradient check inputs: x, then every parameter of m in order */
static int param_inputs(const av_model *m, gc_input *in) {
    int i, n = av_model_count(m);
    for (i = 0; i < n; i++) {
        const av_tensor *p = av_model_param(m, i);
        memset(&in[1 + i], 0, sizeof in[1 + i]);
        in[1 + i].ndim = p->ndim;
        memcpy(in[1 + i].shape, p->shape, sizeof p->shape);
        in[1 + i].data = p->data;
        in[1 + i].check = 1;
    }
    return 1 + n;
}

/* the module under a gradient check; out and its second output (a map)
   flattened and joined when maps is set, so the maps' gradients count too */
enum { K_SAGAN, K_SPATIAL, K_CHANNEL, K_CONV_BLOCK, K_RES_BLOCK };
typedef struct mod_case {
    int kind, maps;
    const av_model *m;
    union { av_self_attn2d sagan; av_spatial_attn spatial; av_channel_attn channel; av_conv_block conv; av_res_block res; } mod;
} mod_case;

static av_tensor *fwd_module(av_ctx *c, av_tensor **in, void *u) {
    const mod_case *k = (const mod_case *)u;
    mod_case b = *k;
    av_tensor *y = NULL, *map = NULL, *parts[2];
    av_tensor **pmap = k->maps ? &map : NULL;
    av_set_training(c, 1);
    bind_params(&b.mod, sizeof b.mod, k->m, in);
    switch (k->kind) {
    case K_SAGAN: y = av_self_attn2d_forward(c, &b.mod.sagan, in[0], pmap); break;
    case K_SPATIAL: y = av_spatial_attn_forward(c, &b.mod.spatial, in[0], pmap); break;
    case K_CHANNEL: y = av_channel_attn_forward(c, &b.mod.channel, in[0], pmap); break;
    case K_CONV_BLOCK: y = av_conv_block_forward(c, &b.mod.conv, in[0]); break;
    default: y = av_res_block_forward(c, &b.mod.res, in[0]); break;
    }
    if (!map) return y;
    parts[0] = av_reshape(c, y, 1, y->size);
    parts[1] = av_reshape(c, map, 1, map->size);
    return av_concat(c, parts, 2, 0);
}

static void run_gradcheck(const char *what, mod_case *k, const float *x, int B, int C, int H, int W) {
    gc_input in[GC_MAX_IN];
    int n = param_inputs(k->m, in);
    in[0] = gc_in(x, 1, 4, B, C, H, W);
    gc_check(what, fwd_module, k, n, in);
}

/* ======================================================================= */
/* SAGAN self-attention                                                     */
/* ======================================================================= */
/* 1x1 convolution in double: y[o][p] = b[o] + sum_i w[o][i] x[i][p] */
static void conv1x1_ref(const float *x, int Cin, int N, const float *w, const float *b, int Cout, double *y) {
    int o, i, p;
    for (o = 0; o < Cout; o++)
        for (p = 0; p < N; p++) {
            double s = b[o];
            for (i = 0; i < Cin; i++) s += (double)w[o * Cin + i] * x[(size_t)i * N + p];
            y[(size_t)o * N + p] = s;
        }
}

/* out = gamma o + x, o_i = sum_j softmax_j(q_i . k_j) v_j; attn [B, N, N] */
static void sagan_ref(const av_self_attn2d *l, const float *x, int B, int C, int H, int W, double *out, double *attn) {
    int d = l->query.weight->shape[0], N = H * W, b, i, j, ch;
    double *q = (double *)malloc(sizeof(double) * d * N), *k = (double *)malloc(sizeof(double) * d * N);
    double *v = (double *)malloc(sizeof(double) * C * N), *s = (double *)malloc(sizeof(double) * N);
    for (b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * C * N;
        conv1x1_ref(xb, C, N, l->query.weight->data, l->query.bias->data, d, q);
        conv1x1_ref(xb, C, N, l->key.weight->data, l->key.bias->data, d, k);
        conv1x1_ref(xb, C, N, l->value.weight->data, l->value.bias->data, C, v);
        for (i = 0; i < N; i++) {
            double top = -INFINITY, sum = 0;
            for (j = 0; j < N; j++) {
                for (s[j] = 0, ch = 0; ch < d; ch++) s[j] += q[ch * N + i] * k[ch * N + j];
                top = s[j] > top ? s[j] : top;
            }
            for (j = 0; j < N; j++) sum += (s[j] = exp(s[j] - top));
            for (j = 0; j < N; j++) attn[((size_t)b * N + i) * N + j] = s[j] / sum;
            for (ch = 0; ch < C; ch++) {
                double o = 0;
                for (j = 0; j < N; j++) o += s[j] / sum * v[ch * N + j];
                out[((size_t)b * C + ch) * N + i] = l->gamma->data[0] * o + xb[(size_t)ch * N + i];
            }
        }
    }
    free(q); free(k); free(v); free(s);
}

static void fill_params(av_model *m, double lo, double hi) {
    int i;
    for (i = 0; i < av_model_count(m); i++) gc_fill(av_model_param(m, i)->data, av_model_param(m, i)->size, lo, hi);
}

static void test_sagan(void) {
    enum { B = 2, C = 16, H = 5, W = 6, N = H * W };
    av_model *m = av_model_new(3);
    av_self_attn2d l = av_self_attn2d_new(m, "attn", C, 8);
    av_ctx *c = av_ctx_new();
    float *x = (float *)malloc(sizeof(float) * B * C * N);
    double *want = (double *)malloc(sizeof(double) * B * C * N), *wattn = (double *)malloc(sizeof(double) * B * N * N);
    av_tensor *y, *a, *y2;
    double rows = 0;
    int i;
    mod_case k;
    CHECK(l.query.weight->shape[0] == 2 && l.query.weight->shape[1] == C && l.query.weight->shape[2] == 1 &&
              l.value.weight->shape[0] == C && av_model_find(m, "attn.query.weight") == l.query.weight &&
              av_model_find(m, "attn.query.bias") == l.query.bias && av_model_find(m, "attn.key.weight") == l.key.weight &&
              av_model_find(m, "attn.value.bias") == l.value.bias && av_model_find(m, "attn.gamma") == l.gamma &&
              l.gamma->size == 1 && av_model_count(m) == 7,
          "SAGAN names and shapes");
    gc_fill(x, B * C * N, -1, 1);
    y = av_self_attn2d_forward(c, &l, av_from(c, x, 4, B, C, H, W), NULL);
    CHECK(l.gamma->data[0] == 0 && memcmp(y->data, x, sizeof(float) * B * C * N) == 0, "SAGAN starts as the identity (gamma 0)");

    /* values against the double loop, on both paths */
    fill_params(m, -0.5, 0.5);
    l.gamma->data[0] = 0.8f;
    sagan_ref(&l, x, B, C, H, W, want, wattn);
    av_ctx_reset(c);
    y = av_self_attn2d_forward(c, &l, av_from(c, x, 4, B, C, H, W), NULL);
    y2 = av_self_attn2d_forward(c, &l, av_from(c, x, 4, B, C, H, W), &a);
    check_close("SAGAN output (tiled av_sdpa) vs double loop", y->data, want, B * C * N, 1e-5);
    check_close("SAGAN output (naive, with weights) vs double loop", y2->data, want, B * C * N, 1e-5);
    CHECK(a->ndim == 3 && a->shape[0] == B && a->shape[1] == N && a->shape[2] == N, "SAGAN weights [B, N, N]: ndim %d [%d,%d,%d]",
          a->ndim, a->shape[0], a->shape[1], a->ndim > 2 ? a->shape[2] : 0);
    check_close("SAGAN weights vs double loop", a->data, wattn, B * N * N, 1e-5);
    for (i = 0; i < N; i++) rows += a->data[(size_t)(N + 7) * N + i];
    CHECK(fabs(rows - 1) < 1e-5, "SAGAN weights: a row sums to %g", rows);

    /* gradients, on both paths (the weights' own gradients too) */
    gc_seed(11);
    fill_params(m, -0.7, 0.7);
    l.gamma->data[0] = 0.7f;
    memset(&k, 0, sizeof k);
    k.kind = K_SAGAN;
    k.m = m;
    k.mod.sagan = l;
    run_gradcheck("grad SAGAN [2,16,3,4] (av_sdpa)", &k, x, 2, 16, 3, 4);
    k.maps = 1;
    run_gradcheck("grad SAGAN [2,16,3,4] and its weights (av_sdpa_weights)", &k, x, 2, 16, 3, 4);

    /* spectral norm on the three convolutions: PyTorch's names */
    av_self_attn2d_spectral_norm(m, &l);
    CHECK(av_model_find(m, "attn.query.weight_orig") == l.query.weight && av_model_find(m, "attn.key.weight_u") &&
              av_model_find(m, "attn.value.weight_v") && av_model_find(m, "attn.value.weight") == NULL &&
              l.value.sn.weight_orig == l.value.weight && av_model_buffer_count(m) == 6,
          "SAGAN spectral norm: weight_orig, weight_u, weight_v");
    av_ctx_reset(c);
    y = av_self_attn2d_forward(c, &l, av_from(c, x, 4, B, C, H, W), NULL);
    CHECK(y->shape[1] == C && y->data[0] == y->data[0], "SAGAN with spectral norm runs");
    free(x); free(want); free(wattn);
    av_ctx_free(c);
    av_model_free(m);
}

/* ======================================================================= */
/* spatial and channel attention                                            */
/* ======================================================================= */
/* CBAM's gate in double: sigmoid(conv([max_c x; mean_c x])) */
static void spatial_ref(const float *x, const float *w, int k, int B, int C, int H, int W, double *map) {
    int b, y, xx, ch, i, j, ci, p = k / 2;
    for (b = 0; b < B; b++)
        for (y = 0; y < H; y++)
            for (xx = 0; xx < W; xx++) {
                double s = 0;
                for (i = 0; i < k; i++)
                    for (j = 0; j < k; j++) {
                        int yy = y + i - p, xs = xx + j - p;
                        double top = -INFINITY, mean = 0;
                        if (yy < 0 || yy >= H || xs < 0 || xs >= W) continue;
                        for (ch = 0; ch < C; ch++) {
                            double v = x[(((size_t)b * C + ch) * H + yy) * W + xs];
                            top = v > top ? v : top;
                            mean += v / C;
                        }
                        for (ci = 0; ci < 2; ci++) s += w[(ci * k + i) * k + j] * (ci == 0 ? top : mean);
                    }
                map[((size_t)b * H + y) * W + xx] = 1 / (1 + exp(-s));
            }
}

static void test_spatial(void) {
    enum { B = 2, C = 4, H = 5, W = 5 };
    av_model *m = av_model_new(4);
    av_spatial_attn l = av_spatial_attn_new(m, "sa", 0);
    av_ctx *c = av_ctx_new();
    float x[B * C * H * W];
    double want[B * H * W], wy[B * C * H * W];
    av_tensor *y, *map;
    int i;
    mod_case k;
    CHECK(l.conv.weight->shape[0] == 1 && l.conv.weight->shape[1] == 2 && l.conv.weight->shape[2] == 7 && !l.conv.bias &&
              av_model_find(m, "sa.conv.weight") == l.conv.weight && l.conv.opts.padding[0] == 3,
          "spatial attention: conv [1, 2, 7, 7], padding 3, no bias");
    /* distinct values 0.03 apart: no perturbation changes a channel's max */
    gc_fill_distinct(x, B * C * H * W, -3, 3);
    y = av_spatial_attn_forward(c, &l, av_from(c, x, 4, B, C, H, W), &map);
    spatial_ref(x, l.conv.weight->data, 7, B, C, H, W, want);
    check_close("spatial attention map vs double loop", map->data, want, B * H * W, 1e-5);
    for (i = 0; i < B * C * H * W; i++) wy[i] = x[i] * want[(i / (C * H * W)) * H * W + i % (H * W)];
    check_close("spatial attention output x map", y->data, wy, B * C * H * W, 1e-5);
    CHECK(map->ndim == 4 && map->shape[1] == 1 && map->shape[2] == H, "spatial map [B, 1, H, W]");
    av_model_free(m);

    m = av_model_new(5);
    memset(&k, 0, sizeof k);
    k.kind = K_SPATIAL;
    k.m = m;
    k.mod.spatial = av_spatial_attn_new(m, "sa", 3);
    fill_params(m, -1, 1);
    run_gradcheck("grad spatial attention 3x3 [2,4,5,5]", &k, x, B, C, H, W);
    k.maps = 1;
    run_gradcheck("grad spatial attention 3x3 [2,4,5,5] and its map", &k, x, B, C, H, W);
    av_ctx_free(c);
    av_model_free(m);
}

/* SE in double: s = sigmoid(W2 relu(W1 mean + b1) + b2) */
static void channel_ref(const av_channel_attn *l, const float *x, int B, int C, int HW, double *s) {
    int d = l->fc1.weight->shape[0], b, i, j, p;
    for (b = 0; b < B; b++) {
        double mean[16], h[16];
        for (i = 0; i < C; i++) {
            for (mean[i] = 0, p = 0; p < HW; p++) mean[i] += x[((size_t)b * C + i) * HW + p];
            mean[i] /= HW;
        }
        for (j = 0; j < d; j++) {
            for (h[j] = l->fc1.bias->data[j], i = 0; i < C; i++) h[j] += l->fc1.weight->data[j * C + i] * mean[i];
            h[j] = h[j] > 0 ? h[j] : 0;
        }
        for (i = 0; i < C; i++) {
            double z = l->fc2.bias->data[i];
            for (j = 0; j < d; j++) z += l->fc2.weight->data[i * d + j] * h[j];
            s[b * C + i] = 1 / (1 + exp(-z));
        }
    }
}

static void test_channel(void) {
    enum { B = 3, C = 6, H = 3, W = 4 };
    av_model *m = av_model_new(6);
    av_channel_attn l = av_channel_attn_new(m, "se", C, 2);
    av_ctx *c = av_ctx_new();
    float x[B * C * H * W];
    double want[B * C];
    av_tensor *s;
    int j;
    mod_case k;
    CHECK(l.fc1.weight->shape[0] == 3 && l.fc1.weight->shape[1] == C && l.fc1.weight->shape[2] == 1 &&
              l.fc2.weight->shape[0] == C && l.fc2.weight->shape[1] == 3 && av_model_find(m, "se.fc1.bias") == l.fc1.bias &&
              av_model_find(m, "se.fc2.weight") == l.fc2.weight,
          "channel attention: torchvision's SqueezeExcitation names and shapes");
    gc_fill(x, B * C * H * W, -1, 1);
    av_channel_attn_forward(c, &l, av_from(c, x, 4, B, C, H, W), &s);
    channel_ref(&l, x, B, C, H * W, want);
    CHECK(s->ndim == 2 && s->shape[0] == B && s->shape[1] == C, "channel weights [B, C]");
    check_close("channel attention weights vs double loop", s->data, want, B * C, 1e-5);
    /* ReLU inputs kept >= 0.2 from the kink: |W1 mean| <= 0.3 C = 1.8 < |b1| = 2 */
    fill_params(m, -0.3, 0.3);
    for (j = 0; j < 3; j++) l.fc1.bias->data[j] = j % 2 ? -2.0f : 2.0f;
    memset(&k, 0, sizeof k);
    k.kind = K_CHANNEL;
    k.m = m;
    k.mod.channel = l;
    k.maps = 1;
    run_gradcheck("grad channel attention [3,6,3,4] and its weights", &k, x, B, C, H, W);
    av_ctx_free(c);
    av_model_free(m);
}

/* ======================================================================= */
/* blocks                                                                   */
/* ======================================================================= */
/* Batch norm in training keeps every ReLU input away from its kink: with n
   values per channel |x̂| <= sqrt(n - 1), so weight in [0.2, 0.5] and bias
   +-4 (the sign alternating over channels, the same for a residual's two
   branches) give |weight x̂ + bias| >= 4 - 0.5 sqrt(n - 1) > 1 for n <= 36,
   and adding an input in [-1, 1] leaves > 0.1. Half the channels pass,
   half are cut. */
static void set_bn(av_batch_norm_layer *bn) {
    int i;
    for (i = 0; i < bn->weight->size; i++) {
        bn->weight->data[i] = (float)(0.2 + 0.3 * gc_unif());
        bn->bias->data[i] = i % 2 ? -4.0f : 4.0f;
    }
}

static void test_blocks(void) {
    av_model *m = av_model_new(8);
    av_conv_block cb = av_conv_block_new(m, "cb", 3, 4);
    float x[2 * 4 * 6 * 6];
    av_ctx *c = av_ctx_new();
    av_tensor *y;
    mod_case k;
    gc_fill(x, 2 * 4 * 6 * 6, -1, 1);
    CHECK(cb.conv.weight->shape[0] == 4 && cb.conv.weight->shape[1] == 3 && cb.conv.weight->shape[2] == 3 && !cb.conv.bias &&
              cb.conv.opts.padding[0] == 1 && av_model_find(m, "cb.conv.weight") && av_model_find(m, "cb.bn.running_var"),
          "conv block: conv 3x3 without bias, bn");
    fill_params(m, -1, 1);
    set_bn(&cb.bn);
    memset(&k, 0, sizeof k);
    k.kind = K_CONV_BLOCK;
    k.m = m;
    k.mod.conv = cb;
    run_gradcheck("grad conv block [2,3,3,4] (batch norm training)", &k, x, 2, 3, 3, 4);
    av_model_free(m);

    /* a projection shortcut (stride 2, 3 -> 4 channels), then the identity */
    m = av_model_new(9);
    k.mod.res = av_res_block_new(m, "rb", 3, 4, 2);
    CHECK(k.mod.res.shortcut_conv.weight && k.mod.res.shortcut_conv.weight->shape[2] == 1 &&
              k.mod.res.shortcut_conv.opts.stride[0] == 2 && k.mod.res.conv1.opts.stride[0] == 2 &&
              k.mod.res.conv2.opts.stride[0] == 1 && av_model_find(m, "rb.shortcut.0.weight") &&
              av_model_find(m, "rb.shortcut.1.running_mean") && av_model_find(m, "rb.bn2.bias") && av_model_count(m) == 9,
          "res block with a projection: names and strides");
    y = av_res_block_forward(c, &k.mod.res, av_zeros(c, 4, 2, 3, 7, 7));
    CHECK(y->shape[1] == 4 && y->shape[2] == 4 && y->shape[3] == 4, "res block stride 2: 7x7 -> %dx%d", y->shape[2], y->shape[3]);
    fill_params(m, -1, 1);
    set_bn(&k.mod.res.bn1);
    set_bn(&k.mod.res.bn2);
    set_bn(&k.mod.res.shortcut_bn);
    k.kind = K_RES_BLOCK;
    k.m = m;
    run_gradcheck("grad res block, projection shortcut [2,3,5,5] stride 2", &k, x, 2, 3, 5, 5);
    av_model_free(m);
    m = av_model_new(10);
    k.mod.res = av_res_block_new(m, "rb", 4, 4, 1);
    CHECK(k.mod.res.shortcut_conv.weight == NULL && av_model_count(m) == 6, "res block, same shape: the identity shortcut");
    fill_params(m, -1, 1);
    set_bn(&k.mod.res.bn1);
    set_bn(&k.mod.res.bn2);
    k.m = m;
    run_gradcheck("grad res block, identity shortcut [2,4,3,3]", &k, x, 2, 4, 3, 3);
    av_ctx_free(c);
    av_model_free(m);
}

/* ======================================================================= */
/* AttentionNet                                                             */
/* ======================================================================= */
static int count_prefix(const av_model *m, const char *prefix) {
    int i, n = 0;
    for (i = 0; i < av_model_count(m); i++) n += strncmp(av_model_param(m, i)->name, prefix, strlen(prefix)) == 0;
    return n;
}

static void test_attention_net(void) {
    enum { B = 3 };
    av_attention_net_config cfg = av_attention_net_defaults();
    av_model *m = av_model_new(12), *m0 = av_model_new(12);
    av_attention_net net = av_attention_net_new(m, "net", &cfg), plain;
    av_ctx *c = av_ctx_new();
    av_attention_net_maps maps, maps2;
    av_tensor *x, *logits, *feat, *again, *tiled;
    float *img = (float *)malloc(sizeof(float) * B * 28 * 28);
    double lo = 1, hi = 0, rows = 0;
    int i, same = 1;
    CHECK(cfg.in_channels == 1 && cfg.num_classes == 10 && cfg.attention == 1 && cfg.sagan_stage >= 0 && cfg.spatial_stage >= 0,
          "AttentionNet defaults: Fashion-MNIST, attention on");
    CHECK(av_model_find(m, "net.stem.conv.weight") && av_model_find(m, "net.layer1.0.conv1.weight") &&
              av_model_find(m, "net.layer2.0.shortcut.1.weight") && av_model_find(m, "net.sagan.gamma") &&
              av_model_find(m, "net.spatial.conv.weight") && av_model_find(m, "net.fc.weight"),
          "AttentionNet names");
    gc_fill(img, B * 28 * 28, 0, 1);
    x = av_from(c, img, 4, B, 1, 28, 28);
    net.sagan.gamma->data[0] = 0.5f; /* let the SAGAN block act */
    logits = av_attention_net_forward(c, &net, x, &maps);
    feat = av_attention_net_features(c, &net, x, &maps2);
    again = av_linear_forward(c, &net.fc, feat);
    tiled = av_attention_net_forward(c, &net, x, NULL);
    CHECK(logits->ndim == 2 && logits->shape[0] == B && logits->shape[1] == 10, "AttentionNet logits [B, 10]");
    CHECK(feat->ndim == 2 && feat->shape[1] == cfg.channels[cfg.num_stages - 1], "AttentionNet features [B, %d]",
          feat->shape[1]);
    for (i = 0; i < logits->size; i++) same &= again->data[i] == logits->data[i];
    CHECK(same, "AttentionNet: logits = fc(features)");
    for (same = 1, i = 0; i < logits->size; i++) same &= fabsf(tiled->data[i] - logits->data[i]) <= 1e-5f * (1 + fabsf(logits->data[i]));
    CHECK(same, "AttentionNet: the tiled path (no maps) gives the same logits");
    CHECK(maps.sagan && maps.sagan_h == 14 && maps.sagan_w == 14 && maps.sagan->shape[0] == B &&
              maps.sagan->shape[1] == 196 && maps.sagan->shape[2] == 196,
          "AttentionNet SAGAN map [B, 196, 196] at 14x14");
    CHECK(maps.spatial && maps.spatial->shape[1] == 1 && maps.spatial->shape[2] == 7 && maps.spatial->shape[3] == 7,
          "AttentionNet spatial map [B, 1, 7, 7]");
    for (i = 0; maps.spatial && i < maps.spatial->size; i++) {
        lo = maps.spatial->data[i] < lo ? maps.spatial->data[i] : lo;
        hi = maps.spatial->data[i] > hi ? maps.spatial->data[i] : hi;
    }
    for (i = 0; maps.sagan && i < 196; i++) rows += maps.sagan->data[196 * 196 + 5 * 196 + i];
    CHECK(lo > 0 && hi < 1 && fabs(rows - 1) < 1e-5, "AttentionNet maps: gate in (%g, %g), a SAGAN row sums to %g", lo, hi, rows);

    /* the ablation: the same net without the attention blocks */
    cfg.attention = 0;
    plain = av_attention_net_new(m0, "net", &cfg);
    CHECK(count_prefix(m0, "net.sagan") == 0 && count_prefix(m0, "net.spatial") == 0 &&
              av_model_count(m0) == av_model_count(m) - 8 && plain.sagan.query.weight == NULL,
          "AttentionNet --no-attention: no attention parameters (%d against %d)", av_model_count(m0), av_model_count(m));
    logits = av_attention_net_forward(c, &plain, x, &maps);
    CHECK(logits->shape[1] == 10 && maps.sagan == NULL && maps.spatial == NULL, "AttentionNet without attention: no maps");
    free(img);
    av_ctx_free(c);
    av_model_free(m);
    av_model_free(m0);
}

static void test_errors(void) {
    av_model *m = av_model_new(1);
    av_ctx *c = av_ctx_new();
    av_self_attn2d sa = av_self_attn2d_new(m, "a", 8, 8);
    av_channel_attn se = av_channel_attn_new(m, "se", 8, 4);
    av_attention_net_config cfg = av_attention_net_defaults();
    av_tensor *x = av_zeros(c, 4, 2, 6, 4, 4);
    EXPECT_FAIL("SAGAN channels", av_self_attn2d_forward(c, &sa, x, NULL), "av_self_attn2d_forward", "[2,6,4,4]");
    EXPECT_FAIL("SAGAN reduction", av_self_attn2d_new(m, "b", 4, 8), "av_self_attn2d_new", "channels 4 / reduction 8");
    EXPECT_FAIL("SE channels", av_channel_attn_forward(c, &se, x, NULL), "av_channel_attn_forward", "C = 8");
    EXPECT_FAIL("spatial kernel", av_spatial_attn_new(m, "s", 4), "av_spatial_attn_new", "kernel 4");
    EXPECT_FAIL("res block stride", av_res_block_new(m, "r", 4, 4, 0), "av_res_block_new", "stride 0");
    cfg.sagan_stage = 2;
    EXPECT_FAIL("AttentionNet stage", av_attention_net_new(m, "n", &cfg), "av_attention_net_new", "sagan_stage 2");
    av_ctx_free(c);
    av_model_free(m);
}

int main(void) {
    gc_seed(2025);
    test_sagan();
    test_spatial();
    test_channel();
    test_blocks();
    test_attention_net();
    test_errors();
    printf("info: worst gradient check used %.0f%% of its tolerance (%s)\n", 100 * gc_worst_ratio, gc_worst_what);
    return t_summary();
}
