/* test_conv_ref.c - convolutions, pooling, resizing and the channel norms
   against PyTorch in float64 (tests/conv_ref.py).

   conv  av_conv2d_layer against nn.Conv2d (3x3 padded, strided, dilated,
         grouped, depthwise, rectangular and asymmetric options, no bias)
         and nn.ConvTranspose2d (stride with output_padding, groups,
         dilation): output and the gradients of x, weight and bias.
   norm  av_batch_norm_layer against nn.BatchNorm2d ([B, C, H, W]) and
         nn.BatchNorm1d ([B, C]): three training steps (outputs, gradients)
         from running statistics and num_batches_tracked loaded from the
         file, the buffers after them, then eval; av_group_norm_layer
         against nn.GroupNorm.
   sn    av_conv2d_spectral_norm against spectral_norm(nn.Conv2d) and
         spectral_norm(nn.ConvTranspose2d) (dim 1): two training steps
         (outputs, gradients of x, weight_orig and bias), u and v after
         them, then eval.
   pool  max_pool2d, avg_pool2d (count_include_pad both ways),
         adaptive_avg_pool2d, interpolate nearest and bilinear
         (align_corners=False) to larger, smaller and odd sizes: output and
         the gradient of x.
   img   av_self_attn2d against SAGAN self-attention as the common PyTorch
         code writes it (output, weights [B, N, N] on both paths, all
         gradients), and with spectral_norm on its convolutions (training
         steps, buffers, eval); av_res_block against a ResNet basic block
         with a projection shortcut and with the identity, batch norm
         training steps then eval; av_channel_attn against
         torchvision.ops.SqueezeExcitation's maths and names; a small
         av_attention_net (stem, ResBlocks, SAGAN, spatial attention, fc)
         through training steps and eval.
   Modules are loaded by name from the state_dict that the script saves
   as safetensors (num_batches_tracked written as F32).

   Errors as in tests/pyref.h: max |attnvae - torch| / max |torch|, at most
   1e-5 for forward values and buffers and 1e-4 for gradients; an info line
   per group prints the worst.

   usage: test_conv_ref [script [workdir]]   (defaults tests/conv_ref.py, build)
   The interpreter is $ATTNVAE_PYTHON, else python3. Without python3 or
   torch the test prints "skipped: ..." and counts nothing. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "pyref.h"

enum { G_CONV, G_NORM, G_SN, G_POOL, G_IMG, N_GROUPS };
static const char *const group_name[N_GROUPS] = {"conv", "norm", "sn", "pool", "img"};
static const char *work_dir;

static named *cfg_of(const char *cs, int n, const int *v) {
    named *x = add_input(cs, "cfg", 1, &n);
    int i;
    for (i = 0; i < n; i++) x->v[i] = v[i];
    return x;
}

/* A model holding one module, loaded from PyTorch's state_dict by name. */
static av_model *load(const char *cs, av_model *m) {
    char path[600];
    int rc;
    snprintf(path, sizeof path, "%.400s/conv_ref.%s.safetensors", work_dir, cs);
    rc = av_model_load(m, path);
    CHECK(rc == 0, "%s: av_model_load of PyTorch's state_dict: %s", cs, av_error());
    remove(path);
    if (rc) { av_model_free(m); return NULL; }
    return m;
}

/* forward of x and r "<x>", "<r>" through f, then y, dx and every parameter's gradient against "<tag>.*" */
typedef av_tensor *(*module_fn)(av_ctx *c, const void *layer, av_tensor *x);
static void step(av_ctx *c, int group, const char *cs, const char *tag, av_model *m, module_fn f, const void *layer,
                 const char *xf, const char *rf) {
    av_tensor *x = input(c, cs, xf, 1), *y;
    char field[200];
    int p;
    av_model_zero_grad(m);
    y = f(c, layer, x);
    av_backward(c, weighted_sum(c, y, input(c, cs, rf, 0)));
    snprintf(field, sizeof field, "%s.y", tag);
    compare(group, FWD, cs, field, NULL, y->data, y->size, 0);
    snprintf(field, sizeof field, "%s.d.x", tag);
    compare(group, GRAD, cs, field, NULL, x->grad, x->size, 0);
    for (p = 0; p < av_model_count(m); p++)
        compare_grad(group, cs, tag, av_model_param(m, p)->name + strlen(cs) + 1, av_model_param(m, p));
    av_ctx_reset(c);
}

/* ======================================================================= */
/* conv                                                                     */
/* ======================================================================= */
typedef struct conv_case {
    const char *name;   /* the module's path in PyTorch */
    int t, B, cin, cout, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oph, opw, groups, bias;
} conv_case;

static const conv_case conv_cases[] = {
    {"stem", 0, 2, 1, 8, 12, 12, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1},
    {"block.conv1", 0, 2, 8, 8, 9, 9, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0},
    {"down.0", 0, 3, 8, 16, 11, 10, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 1, 1},
    {"dilated", 0, 2, 4, 6, 13, 11, 3, 3, 1, 1, 2, 2, 2, 2, 0, 0, 2, 1},
    {"depthwise", 0, 2, 6, 6, 8, 9, 5, 5, 2, 1, 2, 2, 1, 1, 0, 0, 6, 1},
    {"odd.rect", 0, 2, 3, 5, 10, 13, 2, 4, 3, 2, 0, 3, 1, 2, 0, 0, 1, 1},
    {"proj", 0, 2, 12, 4, 7, 7, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1},
    {"up.0", 1, 2, 8, 6, 5, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1},
    {"up.grouped", 1, 2, 6, 4, 4, 5, 4, 3, 2, 3, 1, 0, 1, 2, 1, 2, 2, 1},
    {"up.dilated", 1, 1, 4, 4, 6, 6, 3, 3, 1, 1, 1, 1, 2, 2, 1, 1, 1, 0},
};
#define N_CONV ((int)(sizeof conv_cases / sizeof conv_cases[0]))

static void draw_conv(const conv_case *k) {
    int cfg[16], shape[4], Ho, Wo;
    cfg[0] = 1; cfg[1] = k->t; cfg[2] = k->cin; cfg[3] = k->cout; cfg[4] = k->kh; cfg[5] = k->kw;
    cfg[6] = k->sh; cfg[7] = k->sw; cfg[8] = k->ph; cfg[9] = k->pw; cfg[10] = k->dh; cfg[11] = k->dw;
    cfg[12] = k->oph; cfg[13] = k->opw; cfg[14] = k->groups; cfg[15] = k->bias;
    cfg_of(k->name, 16, cfg);
    shape[0] = k->B; shape[1] = k->cin; shape[2] = k->H; shape[3] = k->W;
    draw(k->name, "x", -1.5, 1.5, 4, shape);
    if (k->t) {
        Ho = (k->H - 1) * k->sh - 2 * k->ph + k->dh * (k->kh - 1) + k->oph + 1;
        Wo = (k->W - 1) * k->sw - 2 * k->pw + k->dw * (k->kw - 1) + k->opw + 1;
    } else {
        Ho = (k->H + 2 * k->ph - k->dh * (k->kh - 1) - 1) / k->sh + 1;
        Wo = (k->W + 2 * k->pw - k->dw * (k->kw - 1) - 1) / k->sw + 1;
    }
    shape[1] = k->cout; shape[2] = Ho; shape[3] = Wo;
    draw(k->name, "r", -1, 1, 4, shape);
}

static av_tensor *conv_fwd(av_ctx *c, const void *l, av_tensor *x) { return av_conv2d_forward(c, (const av_conv2d_layer *)l, x); }

static void check_conv(av_ctx *c, const conv_case *k) {
    av_model *m = av_model_new(1);
    av_conv_opts o;
    av_conv2d_layer l;
    memset(&o, 0, sizeof o);
    o.stride[0] = k->sh; o.stride[1] = k->sw; o.padding[0] = k->ph; o.padding[1] = k->pw;
    o.dilation[0] = k->dh; o.dilation[1] = k->dw; o.output_padding[0] = k->oph; o.output_padding[1] = k->opw;
    o.groups = k->groups;
    l = k->t ? av_conv_transpose2d_new(m, k->name, k->cin, k->cout, k->kh, k->kw, &o, k->bias)
             : av_conv2d_new(m, k->name, k->cin, k->cout, k->kh, k->kw, &o, k->bias);
    if (!load(k->name, m)) return;
    step(c, G_CONV, k->name, "s0", m, conv_fwd, &l, "x", "r");
    av_model_free(m);
}

/* ======================================================================= */
/* norm and sn: training steps, buffers, eval                               */
/* ======================================================================= */
enum { BN_STEPS = 3, SN_STEPS = 2 };

static void draw_steps(const char *cs, int steps, int ndim, const int *xs, const int *ys) {
    char f[16];
    int i;
    for (i = 0; i <= steps; i++) {
        if (i < steps) snprintf(f, sizeof f, "x%d", i); else snprintf(f, sizeof f, "x_eval");
        draw(cs, f, -1.5 + 0.5 * i, 1.0 + i, ndim, xs); /* the batch statistics move between steps */
        if (i < steps) snprintf(f, sizeof f, "r%d", i); else snprintf(f, sizeof f, "r_eval");
        draw(cs, f, -1, 1, ndim, ys);
    }
}

/* training steps, the buffers after them, eval */
static void run_steps(av_ctx *c, int group, const char *cs, int steps, av_model *m, module_fn f, const void *layer) {
    char tag[16], xf[16], rf[16], field[200];
    int i;
    av_set_training(c, 1);
    for (i = 0; i < steps; i++) {
        snprintf(tag, sizeof tag, "s%d", i); snprintf(xf, sizeof xf, "x%d", i); snprintf(rf, sizeof rf, "r%d", i);
        step(c, group, cs, tag, m, f, layer, xf, rf);
    }
    for (i = 0; i < av_model_buffer_count(m); i++) {
        av_tensor *b = av_model_buffer(m, i);
        snprintf(field, sizeof field, "after.%s", b->name + strlen(cs) + 1);
        compare(group, FWD, cs, field, NULL, b->data, b->size, 0);
    }
    av_set_training(c, 0);
    step(c, group, cs, "eval", m, f, layer, "x_eval", "r_eval");
    av_set_training(c, 1);
}

typedef struct norm_case { const char *name; int kind, ndim, B, C, H, W, groups; } norm_case; /* kind 2 bn, 3 gn */
static const norm_case norm_cases[] = {
    {"features.bn1", 2, 4, 4, 6, 5, 3, 0},
    {"head.bn", 2, 2, 7, 5, 1, 1, 0},
    {"gn", 3, 4, 3, 8, 4, 5, 4},
    {"gn.one", 3, 4, 2, 6, 3, 3, 1},
};
#define N_NORM ((int)(sizeof norm_cases / sizeof norm_cases[0]))

static void draw_norm(const norm_case *k) {
    int cfg[3], shape[4];
    cfg[0] = k->kind; cfg[1] = k->kind == 2 ? k->C : k->groups; cfg[2] = k->kind == 2 ? k->ndim : k->C;
    cfg_of(k->name, 3, cfg);
    shape[0] = k->B; shape[1] = k->C; shape[2] = k->H; shape[3] = k->W;
    if (k->kind == 2) draw_steps(k->name, BN_STEPS, k->ndim, shape, shape);
    else {
        draw(k->name, "x", -2, 1, k->ndim, shape);
        draw(k->name, "r", -1, 1, k->ndim, shape);
    }
}

static av_tensor *bn_fwd(av_ctx *c, const void *l, av_tensor *x) { return av_batch_norm_forward(c, (const av_batch_norm_layer *)l, x); }
static av_tensor *gn_fwd(av_ctx *c, const void *l, av_tensor *x) { return av_group_norm_forward(c, (const av_group_norm_layer *)l, x); }

static void check_norm(av_ctx *c, const norm_case *k) {
    av_model *m = av_model_new(1);
    av_batch_norm_layer bn;
    av_group_norm_layer gn;
    if (k->kind == 2) bn = av_batch_norm_new(m, k->name, k->C, 1e-5f, 0.1f);
    else gn = av_group_norm_new(m, k->name, k->groups, k->C, 1e-5f);
    if (!load(k->name, m)) return;
    if (k->kind == 2) {
        CHECK(bn.num_batches_tracked->data[0] == 5, "%s: num_batches_tracked %g loaded, PyTorch's 5", k->name,
              bn.num_batches_tracked->data[0]);
        run_steps(c, G_NORM, k->name, BN_STEPS, m, bn_fwd, &bn);
    } else {
        step(c, G_NORM, k->name, "s0", m, gn_fwd, &gn, "x", "r");
    }
    av_model_free(m);
}

typedef struct sn_case { const char *name; int t, B, cin, cout, H, k, s, p; } sn_case;
static const sn_case sn_cases[] = {
    {"disc.conv1", 0, 2, 3, 6, 8, 3, 2, 1},
    {"gen.up", 1, 2, 6, 4, 4, 4, 2, 1},
};
#define N_SN ((int)(sizeof sn_cases / sizeof sn_cases[0]))

static void draw_sn(const sn_case *k) {
    int cfg[7], xs[4], ys[4], Ho;
    cfg[0] = 4; cfg[1] = k->t; cfg[2] = k->cin; cfg[3] = k->cout; cfg[4] = k->k; cfg[5] = k->s; cfg[6] = k->p;
    cfg_of(k->name, 7, cfg);
    Ho = k->t ? (k->H - 1) * k->s - 2 * k->p + k->k : (k->H + 2 * k->p - k->k) / k->s + 1;
    xs[0] = ys[0] = k->B; xs[1] = k->cin; xs[2] = xs[3] = k->H;
    ys[1] = k->cout; ys[2] = ys[3] = Ho;
    draw_steps(k->name, SN_STEPS, 4, xs, ys);
}

static void check_sn(av_ctx *c, const sn_case *k) {
    av_model *m = av_model_new(1);
    av_conv_opts o = av_conv_opts_square(k->s, k->p, 1, 1);
    av_conv2d_layer l = k->t ? av_conv_transpose2d_new(m, k->name, k->cin, k->cout, k->k, k->k, &o, 1)
                             : av_conv2d_new(m, k->name, k->cin, k->cout, k->k, k->k, &o, 1);
    av_conv2d_spectral_norm(m, &l);
    if (!load(k->name, m)) return;
    run_steps(c, G_SN, k->name, SN_STEPS, m, conv_fwd, &l);
    av_model_free(m);
}

/* ======================================================================= */
/* pool                                                                     */
/* ======================================================================= */
typedef struct pool_case { const char *name; int op, B, C, H, W, k, s, p, oh, ow; } pool_case;
static const pool_case pool_cases[] = {
    {"max.k3s2p1", 0, 2, 3, 9, 8, 3, 2, 1, 0, 0},
    {"max.k2", 0, 2, 2, 7, 6, 2, 2, 0, 0, 0},
    {"max.k4s3p2", 0, 1, 2, 10, 11, 4, 3, 2, 0, 0},
    {"avg.k3s2p1", 1, 2, 3, 9, 8, 3, 2, 1, 0, 0},
    {"avg.k2s1", 1, 1, 2, 5, 6, 2, 1, 0, 0, 0},
    {"avg.nopad.k3s2p1", 2, 2, 2, 7, 9, 3, 2, 1, 0, 0},
    {"adaptive.7x5to3x2", 3, 2, 2, 7, 5, 0, 0, 0, 3, 2},
    {"adaptive.4x3to6x5", 3, 1, 2, 4, 3, 0, 0, 0, 6, 5},
    {"nearest.3x4to7x9", 4, 2, 2, 3, 4, 0, 0, 0, 7, 9},
    {"nearest.4to8", 4, 1, 2, 4, 4, 0, 0, 0, 8, 8},
    {"nearest.7x6to3x4", 4, 1, 2, 7, 6, 0, 0, 0, 3, 4},
    {"bilinear.3x4to7x9", 5, 2, 2, 3, 4, 0, 0, 0, 7, 9},
    {"bilinear.7x7to14x14", 5, 1, 3, 7, 7, 0, 0, 0, 14, 14},
    {"bilinear.9x7to4x5", 5, 1, 2, 9, 7, 0, 0, 0, 4, 5},
};
#define N_POOL ((int)(sizeof pool_cases / sizeof pool_cases[0]))

static void pool_out(const pool_case *k, int *Ho, int *Wo) {
    if (k->op <= 2) {
        *Ho = (k->H + 2 * k->p - k->k) / k->s + 1;
        *Wo = (k->W + 2 * k->p - k->k) / k->s + 1;
    } else {
        *Ho = k->oh;
        *Wo = k->ow;
    }
}

static void draw_pool(const pool_case *k) {
    int cfg[7], shape[4];
    named *x;
    cfg[0] = 5; cfg[1] = k->op; cfg[2] = k->k; cfg[3] = k->s; cfg[4] = k->p; cfg[5] = k->oh; cfg[6] = k->ow;
    cfg_of(k->name, 7, cfg);
    shape[0] = k->B; shape[1] = k->C; shape[2] = k->H; shape[3] = k->W;
    x = draw(k->name, "x", -1.5, 1.5, 4, shape);
    if (k->op == 0) { /* max: distinct values, so PyTorch and attnvae pick the same element */
        int i;
        for (i = 0; i < x->n; i++) x->v[i] = (float)(x->v[i] + 4.0 * i / x->n);
    }
    pool_out(k, &shape[2], &shape[3]);
    draw(k->name, "r", -1, 1, 4, shape);
}

static void check_pool(av_ctx *c, const pool_case *k) {
    av_tensor *x = input(c, k->name, "x", 1), *y;
    switch (k->op) {
    case 0: y = av_max_pool2d(c, x, k->k, k->s, k->p); break;
    case 1: y = av_avg_pool2d(c, x, k->k, k->s, k->p, 1); break;
    case 2: y = av_avg_pool2d(c, x, k->k, k->s, k->p, 0); break;
    case 3: y = av_adaptive_avg_pool2d(c, x, k->oh, k->ow); break;
    case 4: y = av_upsample_nearest2d(c, x, k->oh, k->ow); break;
    default: y = av_upsample_bilinear2d(c, x, k->oh, k->ow); break;
    }
    av_backward(c, weighted_sum(c, y, input(c, k->name, "r", 0)));
    compare(G_POOL, FWD, k->name, "y", NULL, y->data, y->size, 0);
    compare(G_POOL, GRAD, k->name, "d.x", NULL, x->grad, x->size, 0);
    av_ctx_reset(c);
}

/* ======================================================================= */
/* img: attention for images, blocks, AttentionNet                          */
/* ======================================================================= */
enum { K_SAGAN = 6, K_RES = 7, K_NET = 8, K_SE = 9 };
typedef struct img_case {
    const char *name;
    int kind, B, C, H, W;
    int a, b, c; /* sagan: reduction, spectral norm; res: out, stride; se: reduction */
} img_case;
static const img_case img_cases[] = {
    {"sagan", K_SAGAN, 2, 16, 5, 6, 8, 0, 0},
    {"disc.attn", K_SAGAN, 2, 8, 4, 4, 4, 1, 0},
    {"res.proj", K_RES, 3, 4, 7, 7, 6, 2, 0},
    {"res.id", K_RES, 2, 6, 5, 5, 6, 1, 0},
    {"se", K_SE, 3, 8, 4, 5, 4, 0, 0},
    {"net", K_NET, 4, 1, 12, 12, 0, 0, 0},
};
#define N_IMG ((int)(sizeof img_cases / sizeof img_cases[0]))

/* the AttentionNet of case "net": 12x12 -> 6x6 (SAGAN) -> 3x3 (spatial) */
static av_attention_net_config small_net(void) {
    av_attention_net_config cfg = av_attention_net_defaults();
    cfg.stem_channels = 8;
    cfg.channels[0] = 8;
    cfg.channels[1] = 16;
    cfg.sagan_reduction = 4;
    cfg.spatial_kernel = 3;
    return cfg;
}

static int img_steps(const img_case *k) {
    return k->kind == K_SAGAN ? (k->b ? SN_STEPS : 0) : k->kind == K_SE ? 0 : BN_STEPS;
}

static void draw_img(const img_case *k) {
    int cfg[16], n = 0, xs[4], ys[4];
    xs[0] = ys[0] = k->B; xs[1] = ys[1] = k->C; xs[2] = ys[2] = k->H; xs[3] = ys[3] = k->W;
    cfg[n++] = k->kind;
    if (k->kind == K_SAGAN || k->kind == K_SE) {
        cfg[n++] = k->C;
        cfg[n++] = k->kind == K_SE ? k->C / k->a : k->a;
        if (k->kind == K_SAGAN) cfg[n++] = k->b;
    } else if (k->kind == K_RES) {
        cfg[n++] = k->C; cfg[n++] = k->a; cfg[n++] = k->b;
        ys[1] = k->a; ys[2] = (k->H - 1) / k->b + 1; ys[3] = (k->W - 1) / k->b + 1;
    } else {
        av_attention_net_config g = small_net();
        int s;
        cfg[n++] = g.in_channels; cfg[n++] = g.num_classes; cfg[n++] = g.stem_channels; cfg[n++] = g.num_stages;
        for (s = 0; s < g.num_stages; s++) cfg[n++] = g.channels[s];
        for (s = 0; s < g.num_stages; s++) cfg[n++] = g.blocks[s];
        cfg[n++] = g.sagan_stage; cfg[n++] = g.spatial_stage; cfg[n++] = g.sagan_reduction; cfg[n++] = g.spatial_kernel;
        ys[1] = g.num_classes;
    }
    cfg_of(k->name, n, cfg);
    if (k->kind == K_NET) { /* images [B, 1, H, W], logits [B, classes] */
        char f[16];
        int i;
        for (i = 0; i <= BN_STEPS; i++) {
            if (i < BN_STEPS) snprintf(f, sizeof f, "x%d", i); else snprintf(f, sizeof f, "x_eval");
            draw(k->name, f, -1.5 + 0.5 * i, 1.0 + i, 4, xs);
            if (i < BN_STEPS) snprintf(f, sizeof f, "r%d", i); else snprintf(f, sizeof f, "r_eval");
            draw(k->name, f, -1, 1, 2, ys);
        }
    } else if (img_steps(k)) draw_steps(k->name, img_steps(k), 4, xs, ys);
    else {
        draw(k->name, "x", -1.5, 1.5, 4, xs);
        draw(k->name, "r", -1, 1, 4, ys);
    }
}

/* set: sagan_fwd runs the naive path and checks its weights against "<case>:s0.attn" */
static const char *attn_case;
static av_tensor *sagan_fwd(av_ctx *c, const void *l, av_tensor *x) {
    av_tensor *a, *y;
    if (!attn_case) return av_self_attn2d_forward(c, (const av_self_attn2d *)l, x, NULL);
    y = av_self_attn2d_forward(c, (const av_self_attn2d *)l, x, &a);
    compare(G_IMG, FWD, attn_case, "s0.attn", "(av_sdpa_weights)", a->data, a->size, 0);
    return y;
}
static av_tensor *res_fwd(av_ctx *c, const void *l, av_tensor *x) { return av_res_block_forward(c, (const av_res_block *)l, x); }
static av_tensor *se_fwd(av_ctx *c, const void *l, av_tensor *x) { return av_channel_attn_forward(c, (const av_channel_attn *)l, x, NULL); }
static av_tensor *net_fwd(av_ctx *c, const void *l, av_tensor *x) {
    return av_attention_net_forward(c, (const av_attention_net *)l, x, NULL);
}

static void check_img(av_ctx *c, const img_case *k) {
    av_model *m = av_model_new(1);
    av_attention_net_config cfg = small_net();
    av_self_attn2d sa;
    av_res_block rb;
    av_channel_attn se;
    av_attention_net net;
    if (k->kind == K_SAGAN) {
        sa = av_self_attn2d_new(m, k->name, k->C, k->a);
        if (k->b) av_self_attn2d_spectral_norm(m, &sa);
    } else if (k->kind == K_RES) rb = av_res_block_new(m, k->name, k->C, k->a, k->b);
    else if (k->kind == K_SE) se = av_channel_attn_new(m, k->name, k->C, k->a);
    else net = av_attention_net_new(m, k->name, &cfg);
    if (!load(k->name, m)) return;
    if (k->kind == K_SAGAN && !k->b) {
        step(c, G_IMG, k->name, "s0", m, sagan_fwd, &sa, "x", "r");
        attn_case = k->name;
        step(c, G_IMG, k->name, "s0", m, sagan_fwd, &sa, "x", "r");
        attn_case = NULL;
    } else if (k->kind == K_SAGAN) run_steps(c, G_IMG, k->name, SN_STEPS, m, sagan_fwd, &sa);
    else if (k->kind == K_RES) run_steps(c, G_IMG, k->name, BN_STEPS, m, res_fwd, &rb);
    else if (k->kind == K_SE) step(c, G_IMG, k->name, "s0", m, se_fwd, &se, "x", "r");
    else run_steps(c, G_IMG, k->name, BN_STEPS, m, net_fwd, &net);
    av_model_free(m);
}

int main(int argc, char **argv) {
    const char *script = argc > 1 ? argv[1] : "tests/conv_ref.py";
    char in[512], out[512];
    int i;
    rs = 0xc0ffee11u;
    work_dir = argc > 2 ? argv[2] : "build";
    snprintf(in, sizeof in, "%.400s/conv_ref_in.txt", work_dir);
    snprintf(out, sizeof out, "%.400s/conv_ref_out.txt", work_dir);
    for (i = 0; i < N_CONV; i++) draw_conv(&conv_cases[i]);
    for (i = 0; i < N_NORM; i++) draw_norm(&norm_cases[i]);
    for (i = 0; i < N_SN; i++) draw_sn(&sn_cases[i]);
    for (i = 0; i < N_POOL; i++) draw_pool(&pool_cases[i]);
    for (i = 0; i < N_IMG; i++) draw_img(&img_cases[i]);
    if (write_table(&inputs, in) != 0) CHECK(0, "cannot write %s", in);
    else if (run_script(script, in, out)) {
        av_ctx *c = av_ctx_new();
        for (i = 0; i < N_CONV; i++) check_conv(c, &conv_cases[i]);
        for (i = 0; i < N_NORM; i++) check_norm(c, &norm_cases[i]);
        for (i = 0; i < N_SN; i++) check_sn(c, &sn_cases[i]);
        for (i = 0; i < N_POOL; i++) check_pool(c, &pool_cases[i]);
        for (i = 0; i < N_IMG; i++) check_img(c, &img_cases[i]);
        av_ctx_free(c);
        print_worst(group_name, N_GROUPS);
    }
    remove(in);
    remove(out);
    free_table(&inputs);
    free_table(&refs);
    return t_summary();
}
