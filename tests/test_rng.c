/* test_rng.c - the counter-based RNG of attnvae.h and what draws from it.

   1. av_philox4x32 against the known answers of Random123's kat_vectors
      (and so is the tests' own copy in philox_ref.h, used below);
   2. the documented draws: uniforms and Box-Muller normals from words
      (closed forms), and draw e of a stream from (key, offset, e) alone,
      rebuilt by philox_ref.h: av_philox_*, av_rand, av_randn, the offsets
      each op takes from the context;
   3. dropout: the mask is the documented one, its frequency binomial
      (5 standard deviations: a false alarm has probability ~6e-7), lanes
      independent, backward uses the same mask without storing one, and
      the modes that make it the identity.
   Statistical bounds are 5 standard deviations of the exact distribution. */
#include <stdlib.h>
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"
#include "philox_ref.h"

static int quick(void) { return getenv("AV_TEST_QUICK") && atoi(getenv("AV_TEST_QUICK")); }

/* K successes in n Bernoulli(q) trials: within 5 standard deviations */
static void check_binomial(long k, long n, double q, const char *what) {
    double sd = sqrt(n * q * (1 - q));
    CHECK(fabs(k - n * q) <= 5 * sd, "%s: %ld of %ld, expected %.1f +- %.1f (5 sd)", what, k, n, n * q, 5 * sd);
}

/* ---- 1. known answers ---- */
static void test_kat(void) {
    static const uint32_t kat[3][10] = { /* counter[4], key[2], output[4] */
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
         0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
         0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
    int v, i;
    for (v = 0; v < 3; v++) {
        uint32_t out[4], ref[4];
        av_philox4x32(kat[v], kat[v] + 4, out);
        ref_philox(kat[v], kat[v] + 4, ref);
        for (i = 0; i < 4; i++) {
            CHECK(out[i] == kat[v][6 + i], "philox4x32-10 kat %d word %d: %08x, want %08x", v, i, (unsigned)out[i], (unsigned)kat[v][6 + i]);
            CHECK(ref[i] == kat[v][6 + i], "the tests' philox kat %d word %d: %08x, want %08x", v, i, (unsigned)ref[i], (unsigned)kat[v][6 + i]);
        }
    }
}

/* ---- 2. draws ---- */
static void test_word_conversions(void) {
    /* uniforms: the top 24 bits over 2^24 */
    CHECK(av_u32_uniform(0) == 0.0f && av_u32_uniform(0xff) == 0.0f, "uniform of words below 2^8 is 0");
    CHECK(av_u32_uniform(0x100) == ldexpf(1.0f, -24), "uniform of 2^8 is 2^-24");
    CHECK(av_u32_uniform(0x80000000u) == 0.5f, "uniform of 2^31 is 1/2");
    CHECK(av_u32_uniform(0xffffffffu) == 1.0f - ldexpf(1.0f, -24), "uniform of the largest word is 1 - 2^-24 < 1");
    /* normals: u1 = (w1 + 1) 2^-32, u2 = w2 2^-32 */
    CHECK(av_u32_normal(0xffffffffu, 12345, 0) == 0.0f, "u1 = 1 gives radius 0");
    CHECK_CLOSE(av_u32_normal(0x3fffffff, 0, 0), sqrt(-2 * log(0.25)), 0, 1e-7, "u1 = 1/4, u2 = 0: cos 0 = 1");
    CHECK(av_u32_normal(0x3fffffff, 0, 1) == 0.0f, "u2 = 0: sin 0 = 0");
    CHECK_CLOSE(av_u32_normal(0x3fffffff, 0x40000000, 1), sqrt(-2 * log(0.25)), 0, 1e-7, "u2 = 1/4: sin(pi/2) = 1");
    CHECK_CLOSE(av_u32_normal(0x3fffffff, 0x40000000, 0), 0, 1e-7, 0, "u2 = 1/4: cos(pi/2) = 0");
    CHECK_CLOSE(av_u32_normal(0, 0, 0), sqrt(64 * log(2.0)), 0, 1e-7, "the smallest u1, 2^-32: the largest radius");
}

/* Stream indexing: draw e from (key, offset, e) alone, e past 2^32 too. */
static void test_streams(void) {
    av_ctx *c = av_ctx_new();
    static const uint64_t seeds[3] = {0, 42, 0x123456789abcdef0ULL};
    static const uint64_t es[8] = {0, 1, 2, 3, 4, 7, (1ULL << 34) + 5, 0xfffffffffffffULL};
    int s, k;
    for (s = 0; s < 3; s++) {
        av_philox st, st2;
        av_ctx_seed(c, seeds[s]);
        st = av_ctx_philox(c);
        st2 = av_ctx_philox(c);
        CHECK(st.key[0] == (uint32_t)seeds[s] && st.key[1] == (uint32_t)(seeds[s] >> 32) && st.offset == 0,
              "av_ctx_seed(%llx): key %08x %08x offset %llu", (unsigned long long)seeds[s], (unsigned)st.key[1],
              (unsigned)st.key[0], (unsigned long long)st.offset);
        CHECK(st2.offset == 1 && st2.key[0] == st.key[0] && st2.key[1] == st.key[1], "the next stream has offset 1, the same key");
        av_ctx_reset(c);
        CHECK(av_ctx_philox(c).offset == 2, "av_ctx_reset keeps the offset");
        st.offset = 77;
        for (k = 0; k < 8; k++) {
            uint32_t w[4], r[4];
            av_philox_block(&st, es[k] / 4, w);
            ref_block(seeds[s], 77, es[k], r);
            CHECK(!memcmp(w, r, sizeof w), "av_philox_block %llu", (unsigned long long)(es[k] / 4));
            CHECK(av_philox_uniform(&st, es[k]) == (float)ref_uniform(seeds[s], 77, es[k]), "av_philox_uniform draw %llu",
                  (unsigned long long)es[k]);
            CHECK(av_philox_normal(&st, es[k]) == (float)ref_normal(seeds[s], 77, es[k]), "av_philox_normal draw %llu: %.9g, want %.9g",
                  (unsigned long long)es[k], av_philox_normal(&st, es[k]), ref_normal(seeds[s], 77, es[k]));
        }
    }
    av_ctx_free(c);
}

/* av_rand and av_randn: each call a stream; element e is draw e. Then the
   distributions over many draws. */
static void test_rand_randn(void) {
    av_ctx *c = av_ctx_new();
    int n = quick() ? 1 << 14 : 1 << 20, i, l, same = 1, bins[16] = {0};
    double s1[4] = {0}, s2[4] = {0}, s01 = 0, in1 = 0, in2 = 0;
    av_tensor *u, *z;
    av_ctx_seed(c, 2024);
    u = av_rand(c, -1.5f, 2.5f, 2, 3, 7);
    z = av_randn(c, 0.5f, 3.0f, 3, 2, 3, 3);
    for (i = 0; i < u->size; i++) same &= u->data[i] == -1.5f + 4.0f * (float)ref_uniform(2024, 0, (uint64_t)i);
    CHECK(same, "av_rand: element e is lo + (hi - lo) u_e, u_e draw e of stream offset 0");
    for (i = 0, same = 1; i < z->size; i++) same &= z->data[i] == 0.5f + 3.0f * (float)ref_normal(2024, 1, (uint64_t)i);
    CHECK(same, "av_randn: element e is mean + std z_e, z_e draw e of stream offset 1");
    CHECK(av_ctx_philox(c).offset == 2, "av_rand and av_randn take one stream each");

    u = av_rand(c, 0.0f, 1.0f, 1, n);
    for (i = 0; i < n; i++) bins[(int)(u->data[i] * 16)]++;
    for (i = 0; i < 16; i++) check_binomial(bins[i], n, 1.0 / 16, "av_rand: values in a sixteenth of [0, 1)");
    z = av_randn(c, 0.0f, 1.0f, 1, n);
    for (i = 0; i < n; i++) {
        double v = z->data[i];
        s1[i % 4] += v;
        s2[i % 4] += v * v;
        if (i % 2 == 0) s01 += v * z->data[i + 1];
        in1 += fabs(v) < 1;
        in2 += fabs(v) < 2;
    }
    for (l = 0; l < 4; l++) { /* each lane: mean 0 (SE 1/sqrt(m)), E z^2 = 1 (SE sqrt(2/m)) */
        int m = n / 4;
        CHECK(fabs(s1[l] / m) <= 5 / sqrt(m), "av_randn lane %d mean %g", l, s1[l] / m);
        CHECK(fabs(s2[l] / m - 1) <= 5 * sqrt(2.0 / m), "av_randn lane %d mean square %g", l, s2[l] / m);
    }
    /* the cosine and sine of one pair are uncorrelated: E z0 z1 = 0, SE 1/sqrt(n/2) */
    CHECK(fabs(s01 / (n / 2)) <= 5 / sqrt(n / 2.0), "av_randn: lanes of a pair correlate (%g)", s01 / (n / 2));
    check_binomial((long)in1, n, 0.682689492137086, "av_randn: |z| < 1");
    check_binomial((long)in2, n, 0.954499736103642, "av_randn: |z| < 2");
    av_ctx_free(c);
}

/* ---- 3. dropout ---- */
static void test_dropout(void) {
    static const float ps[3] = {0.1f, 0.5f, 0.9f};
    av_ctx *c = av_ctx_new();
    int n = quick() ? 1 << 14 : 1 << 20, k, i;
    float *x = (float *)malloc((size_t)n * sizeof(float)), *r = (float *)malloc((size_t)n * sizeof(float));
    for (i = 0; i < n; i++) {
        x[i] = (float)((i % 7 + 1) * (i % 2 ? -0.25 : 0.5)); /* never 0: a kept value is never 0 */
        r[i] = (float)(1 + i % 5);
    }
    for (k = 0; k < 3; k++) {
        float p = ps[k], keep = 1.0f / (1.0f - p);
        /* P(u >= p) for u = j 2^-24, j uniform in [0, 2^24) */
        double q = 1.0 - ceil((double)p * 16777216.0) / 16777216.0;
        long kept = 0, lane[4] = {0}, pairs = 0, across = 0;
        int same = 1, grad_same = 1;
        char what[96];
        av_tensor *xt, *y, *loss;
        av_mark before;
        av_ctx_reset(c);
        av_ctx_seed(c, 1000 + k);
        xt = av_from(c, x, 2, n / 64, 64);
        av_requires_grad(c, xt);
        before = av_ctx_mark(c);
        y = av_dropout(c, xt, p);
        /* the op keeps no mask: its output, the node and its arguments only */
        CHECK(av_ctx_mark(c).step_bytes - before.step_bytes < (size_t)n * sizeof(float) + 1024,
              "dropout p=%g took %lu bytes for %d values: it stores a mask", (double)p,
              (unsigned long)(av_ctx_mark(c).step_bytes - before.step_bytes), n);
        for (i = 0; i < n; i++) {
            int in = ref_uniform(1000 + k, 0, (uint64_t)i) >= p;
            same &= y->data[i] == (in ? x[i] * keep : 0.0f);
            kept += in;
            lane[i % 4] += in;
            if (i % 2 == 0) pairs += in && y->data[i + 1] != 0;
            if (i % 4 == 3 && i + 1 < n) across += in && y->data[i + 1] != 0;
        }
        CHECK(same, "dropout p=%g: y is x / (1-p) where draw e of stream offset 0 is >= p, else 0", (double)p);
        snprintf(what, sizeof what, "dropout p=%g kept", (double)p);
        check_binomial(kept, n, q, what);
        for (i = 0; i < 4; i++) check_binomial(lane[i], n / 4, q, "dropout kept in one lane");
        check_binomial(pairs, n / 2, q * q, "dropout: both of a pair of words kept");
        check_binomial(across, n / 4 - 1, q * q, "dropout: the last draw of a block and the next kept");
        /* backward redraws the same mask: d/dx sum(r y) = r m */
        loss = av_sum_all(c, av_mul(c, y, av_from(c, r, 2, n / 64, 64)));
        av_backward(c, loss);
        for (i = 0; i < n; i++) grad_same &= xt->grad[i] == r[i] * (y->data[i] != 0 ? keep : 0.0f);
        CHECK(grad_same, "dropout p=%g: the gradient uses another mask than forward", (double)p);
    }
    {   /* each call takes the next stream; the same seed gives the same masks */
        av_tensor *xt, *y1, *y2, *y3;
        int other = 0, again = 1;
        av_ctx_reset(c);
        av_ctx_seed(c, 5);
        xt = av_from(c, x, 1, 4096);
        y1 = av_dropout(c, xt, 0.5f);
        y2 = av_dropout(c, xt, 0.5f);
        for (i = 0; i < 4096; i++) other += (y1->data[i] != 0) != (y2->data[i] != 0);
        check_binomial(other, 4096, 0.5, "dropout: masks of two calls differ in");
        for (i = 0; i < 4096; i++) again &= (y2->data[i] != 0) == (ref_uniform(5, 1, (uint64_t)i) >= 0.5);
        CHECK(again, "dropout: the second call draws from stream offset 1");
        av_ctx_seed(c, 5);
        y3 = av_dropout(c, xt, 0.5f);
        CHECK(!memcmp(y1->data, y3->data, 4096 * sizeof(float)), "dropout: the same seed gave another mask");
        /* the identity takes no stream */
        av_ctx_seed(c, 5);
        av_set_training(c, 0);
        CHECK(av_dropout(c, xt, 0.5f) == xt, "dropout in eval mode is not the identity");
        av_set_training(c, 1);
        CHECK(av_dropout(c, xt, 0.0f) == xt, "dropout with p = 0 is not the identity");
        CHECK(av_ctx_philox(c).offset == 0, "the identity took a stream");
    }
    free(x);
    free(r);
    av_ctx_free(c);
}

int main(void) {
    test_kat();
    test_word_conversions();
    test_streams();
    test_rand_randn();
    test_dropout();
    return t_summary();
}
