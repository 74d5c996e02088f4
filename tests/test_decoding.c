/* test_decoding.c - greedy decoding, beam search and sampling:
   - a toy model whose logits depend on each row's whole history (so beam
     search must reorder its state right): greedy against an independent
     argmax chain, beam width 1 against greedy, and a wide beam against an
     exhaustive search of every sequence, with and without a length penalty;
   - a Transformer decoder with KV caches: beam search with the caches
     (reordered by av_decoder_cache_reorder) against the same search that
     recomputes the whole decoder every step;
   - sampling: temperature 0 and top-k 1 are the argmax, and the frequencies
     of many draws match the (cut, renormalised) softmax by a chi-square test. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"

#define V 5
#define EOS 0
#define BOS 1
#define MAXLEN 5
#define MAXROWS 128

/* ---- the toy model: logits = table[hash of the row's history][v] ---- */
typedef struct toy { uint64_t hash[MAXROWS]; float table[97][V]; int calls; } toy;

static uint64_t mix(uint64_t h, int tok) { return (h ^ (uint64_t)(tok + 11)) * 0x9e3779b97f4a7c15ULL + 7; }

static av_tensor *toy_step(av_ctx *c, const int *tokens, int rows, void *state) {
    toy *m = (toy *)state;
    av_tensor *out = av_zeros(c, 2, rows, V);
    int r;
    for (r = 0; r < rows; r++) {
        m->hash[r] = mix(m->hash[r], tokens[r]);
        memcpy(out->data + r * V, m->table[m->hash[r] % 97], sizeof(float) * V);
    }
    m->calls++;
    return out;
}

static void toy_reorder(void *state, const int *rows, int n) {
    toy *m = (toy *)state;
    uint64_t h[MAXROWS];
    int r;
    for (r = 0; r < n; r++) h[r] = m->hash[rows[r]];
    memcpy(m->hash, h, sizeof(uint64_t) * (size_t)n);
}

static void toy_init(toy *m, int rows, uint64_t seed) {
    int i, v;
    av_rng rng;
    av_rng_seed(&rng, seed);
    for (i = 0; i < 97; i++)
        for (v = 0; v < V; v++) m->table[i][v] = 3.0f * (av_rng_uniform(&rng) - 0.5f);
    for (i = 0; i < rows; i++) m->hash[i] = 0;
    m->calls = 0;
}

/* log-softmax of the toy's logits after a given history (from scratch) */
static double toy_logp(const toy *m, const int *hist, int len, int v) {
    uint64_t h = 0;
    double mx = -1e30, sum = 0;
    int i;
    const float *row;
    h = mix(h, BOS);
    for (i = 0; i < len; i++) h = mix(h, hist[i]);
    row = m->table[h % 97];
    for (i = 0; i < V; i++) mx = row[i] > mx ? row[i] : mx;
    for (i = 0; i < V; i++) sum += exp(row[i] - mx);
    return row[v] - mx - log(sum);
}

/* every sequence ending at eos or at MAXLEN: the best score */
static void exhaustive(const toy *m, int *hist, int len, double logp, float lp, double *best, int *best_hist, int *best_len) {
    int v;
    for (v = 0; v < V; v++) {
        double s = logp + toy_logp(m, hist, len, v), norm;
        hist[len] = v;
        if (v == EOS || len + 1 == MAXLEN) {
            norm = lp == 0.0f ? s : s / pow(len + 1.0, lp);
            if (norm > *best) {
                *best = norm;
                *best_len = len + 1;
                memcpy(best_hist, hist, sizeof(int) * (size_t)(len + 1));
            }
        } else {
            exhaustive(m, hist, len + 1, s, lp, best, best_hist, best_len);
        }
    }
}

static void toy_tests(void) {
    av_ctx *c = av_ctx_new();
    toy m;
    av_decoder d;
    int seed, out[MAXROWS * MAXLEN], lengths[MAXROWS], beam_out[MAXLEN], i;
    d.step = toy_step;
    d.reorder = toy_reorder;
    d.state = &m;
    for (seed = 0; seed < 40; seed++) {
        float lp;
        /* greedy against the argmax chain computed here */
        int hist[MAXLEN], len = 0, ok = 1;
        toy_init(&m, 3, (uint64_t)seed);
        av_decode_greedy(c, &d, 3, BOS, EOS, MAXLEN, out, lengths);
        while (len < MAXLEN) {
            int v, arg = 0;
            for (v = 1; v < V; v++)
                if (toy_logp(&m, hist, len, v) > toy_logp(&m, hist, len, arg)) arg = v;
            hist[len++] = arg;
            if (arg == EOS) break;
        }
        for (i = 0; i < 3; i++) {
            ok &= lengths[i] == len && memcmp(out + i * MAXLEN, hist, sizeof(int) * (size_t)len) == 0;
            ok &= len == MAXLEN || out[i * MAXLEN + len] == -1;
        }
        CHECK(ok, "seed %d: greedy differs from the argmax chain", seed);
        for (lp = 0.0f; lp <= 1.0f; lp += 1.0f) {
            double best = -1e30, score_d;
            int best_hist[MAXLEN], scratch[MAXLEN], best_len = 0, blen;
            float score;
            /* width 1 is greedy */
            toy_init(&m, 1, (uint64_t)seed);
            blen = av_decode_beam(c, &d, 1, BOS, EOS, MAXLEN, lp, beam_out, &score);
            CHECK(blen == len && memcmp(beam_out, hist, sizeof(int) * (size_t)len) == 0,
                  "seed %d lp %g: beam width 1 (%d tokens) differs from greedy (%d)", seed, (double)lp, blen, len);
            /* a beam as wide as the tree is exhaustive */
            toy_init(&m, MAXROWS, (uint64_t)seed);
            blen = av_decode_beam(c, &d, 125, BOS, EOS, MAXLEN, lp, beam_out, &score);
            exhaustive(&m, scratch, 0, 0.0, lp, &best, best_hist, &best_len);
            score_d = score;
            CHECK(blen == best_len && memcmp(beam_out, best_hist, sizeof(int) * (size_t)best_len) == 0 && fabs(score_d - best) < 1e-5,
                  "seed %d lp %g: wide beam found %d tokens score %g, exhaustive search %d tokens score %g", seed, (double)lp,
                  blen, score_d, best_len, best);
        }
    }
    av_ctx_free(c);
}

/* ---- a Transformer decoder: cached beam search against recomputation ---- */
typedef struct tf_state {
    const av_transformer_decoder *dec;
    const av_embedding_layer *emb;
    const av_linear_layer *proj;
    av_decoder_cache *cache;  /* NULL: recompute from the histories */
    av_tensor *memory_data;   /* [rows, S, d], persistent copy */
    float *memory;
    int S, d, rows, len;
    int hist[8][16];
} tf_state;

static av_tensor *tf_step(av_ctx *c, const int *tokens, int rows, void *state) {
    tf_state *s = (tf_state *)state;
    int r, t, ids[8 * 16] = {0};
    av_tensor *x, *y;
    for (r = 0; r < rows; r++) s->hist[r][s->len] = tokens[r];
    s->len++;
    if (s->cache) {
        x = av_add(c, av_embedding_forward(c, s->emb, tokens, rows, 1), av_sinusoidal_positions(c, 1, s->d, s->len - 1));
        y = av_transformer_decoder_step(c, s->dec, x, s->cache, NULL);
    } else {
        for (r = 0; r < rows; r++)
            for (t = 0; t < s->len; t++) ids[r * s->len + t] = s->hist[r][t];
        x = av_add(c, av_embedding_forward(c, s->emb, ids, rows, s->len), av_sinusoidal_positions(c, s->len, s->d, 0));
        y = av_transformer_decoder_forward(c, s->dec, x, av_from(c, s->memory, 3, rows, s->S, s->d), NULL, NULL, 1, NULL, NULL);
        y = av_slice(c, y, 1, s->len - 1, s->len);
    }
    return av_reshape(c, av_linear_forward(c, s->proj, y), 2, rows, s->proj->weight->shape[0]);
}

static void tf_reorder(void *state, const int *rows, int n) {
    tf_state *s = (tf_state *)state;
    int h[8][16], r;
    for (r = 0; r < n; r++) memcpy(h[r], s->hist[rows[r]], sizeof h[r]);
    memcpy(s->hist, h, sizeof(int) * 16 * (size_t)n);
    if (s->cache) av_decoder_cache_reorder(s->cache, rows, n);
}

static void transformer_beam(void) {
    av_model *m = av_model_new(21);
    av_transformer_config cfg = av_transformer_defaults(16, 2);
    av_transformer_decoder dec;
    av_embedding_layer emb;
    av_linear_layer proj;
    av_decoder_cache cache;
    av_ctx *c = av_ctx_new();
    tf_state s;
    av_decoder d;
    int beam = 4, S = 6, r, out1[12], out2[12], n1, n2, g_out[4 * 12], g_len[4];
    float score1, score2, *mem = (float *)malloc(sizeof(float) * (size_t)(beam * S * 16));
    cfg.dim_feedforward = 32;
    dec = av_transformer_decoder_new(m, "dec", &cfg, 2, 1);
    emb = av_embedding_new(m, "emb", 7, 16);
    proj = av_linear_layer_new(m, "proj", 16, 7, 1);
    {   /* one memory, repeated for the beams */
        av_rng rng;
        av_rng_seed(&rng, 4);
        for (r = 0; r < S * 16; r++) mem[r] = av_rng_normal(&rng);
        for (r = 1; r < beam; r++) memcpy(mem + r * S * 16, mem, sizeof(float) * (size_t)(S * 16));
    }
    memset(&s, 0, sizeof s);
    s.dec = &dec; s.emb = &emb; s.proj = &proj; s.memory = mem; s.S = S; s.d = 16; s.rows = beam;
    d.step = tf_step;
    d.reorder = tf_reorder;
    d.state = &s;
    /* recomputation */
    s.cache = NULL;
    s.len = 0;
    n1 = av_decode_beam(c, &d, beam, 1, 0, 12, 0.6f, out1, &score1);
    /* the caches */
    CHECK(av_decoder_cache_init(&cache, &dec, beam, 4) == 0, "cache init");
    av_set_training(c, 0);
    av_decoder_cache_set_memory(c, &cache, &dec, av_from(c, mem, 3, beam, S, 16));
    s.cache = &cache;
    s.len = 0;
    n2 = av_decode_beam(c, &d, beam, 1, 0, 12, 0.6f, out2, &score2);
    CHECK(n1 == n2 && memcmp(out1, out2, sizeof(int) * (size_t)n1) == 0 && fabs(score1 - score2) < 1e-4,
          "cached beam search (%d tokens, %g) differs from recomputation (%d tokens, %g)", n2, (double)score2, n1, (double)score1);
    /* width 1 with caches equals greedy with caches */
    av_decoder_cache_free(&cache);
    CHECK(av_decoder_cache_init(&cache, &dec, 1, 4) == 0, "cache init");
    av_decoder_cache_set_memory(c, &cache, &dec, av_from(c, mem, 3, 1, S, 16));
    s.len = 0;
    n1 = av_decode_beam(c, &d, 1, 1, 0, 12, 0.6f, out1, &score1);
    av_decoder_cache_free(&cache);
    CHECK(av_decoder_cache_init(&cache, &dec, 1, 4) == 0, "cache init");
    av_decoder_cache_set_memory(c, &cache, &dec, av_from(c, mem, 3, 1, S, 16));
    s.len = 0;
    av_decode_greedy(c, &d, 1, 1, 0, 12, g_out, g_len);
    CHECK(n1 == g_len[0] && memcmp(out1, g_out, sizeof(int) * (size_t)n1) == 0, "Transformer: beam 1 differs from greedy");
    av_decoder_cache_free(&cache);
    free(mem);
    av_ctx_free(c);
    av_model_free(m);
}

/* ---- sampling ---- */
/* chi-square of counts against probabilities over the support; the 99.9%
   point for k - 1 degrees of freedom by the Wilson-Hilferty approximation */
static int chi_square_ok(const long *count, const double *p, int k, long n, double *stat) {
    double x = 0, df = k - 1, z = 3.09, crit;
    int i;
    for (i = 0; i < k; i++) x += (count[i] - n * p[i]) * (count[i] - n * p[i]) / (n * p[i]);
    crit = df * pow(1 - 2 / (9 * df) + z * sqrt(2 / (9 * df)), 3);
    *stat = x;
    return x < crit;
}

static void sampling(void) {
    static const float logits[6] = {0.5f, 2.0f, -1.0f, 1.2f, 0.0f, 1.9f};
    av_rng rng;
    long count[6], n = 200000;
    double p[6], stat, total;
    int i, order[6] = {1, 5, 3, 0, 4, 2};
    av_rng_seed(&rng, 77);
    CHECK(av_sample_logits(logits, 6, 0.0f, 0, 1.0f, &rng) == 1, "temperature 0 is the argmax");
    CHECK(av_sample_logits(logits, 6, 1.0f, 1, 1.0f, &rng) == 1, "top-k 1 is the argmax");
#define DRAW(temp, k, topp)                                                                    \
    memset(count, 0, sizeof count);                                                            \
    for (i = 0; i < n; i++) count[av_sample_logits(logits, 6, temp, k, topp, &rng)]++;
    /* the full softmax at temperature 0.7 */
    DRAW(0.7f, 0, 1.0f)
    for (i = 0, total = 0; i < 6; i++) total += p[i] = exp(logits[i] / 0.7);
    for (i = 0; i < 6; i++) p[i] /= total;
    CHECK(chi_square_ok(count, p, 6, n, &stat), "temperature 0.7: chi-square %g", stat);
    /* top-k 3: only the three largest, renormalised */
    DRAW(1.0f, 3, 1.0f)
    {
        long c3[3];
        double p3[3];
        for (i = 0, total = 0; i < 3; i++) total += p3[i] = exp(logits[order[i]]);
        for (i = 0; i < 3; i++) { p3[i] /= total; c3[i] = count[order[i]]; }
        CHECK(count[order[3]] + count[order[4]] + count[order[5]] == 0, "top-k 3 sampled outside the top 3");
        CHECK(chi_square_ok(c3, p3, 3, n, &stat), "top-k 3: chi-square %g", stat);
    }
    /* top-p 0.8: the smallest prefix of the sorted probabilities reaching 0.8 */
    DRAW(1.0f, 0, 0.8f)
    {
        double full[6], cum = 0, pk[6];
        long ck[6];
        int k = 0;
        for (i = 0, total = 0; i < 6; i++) total += full[i] = exp(logits[i]);
        while (cum < 0.8) cum += full[order[k++]] / total;
        for (i = 0, total = 0; i < k; i++) total += pk[i] = full[order[i]];
        for (i = 0; i < k; i++) { pk[i] /= total; ck[i] = count[order[i]]; }
        for (i = k; i < 6; i++) CHECK(count[order[i]] == 0, "top-p 0.8 sampled token %d outside the nucleus of %d", order[i], k);
        CHECK(chi_square_ok(ck, pk, k, n, &stat), "top-p 0.8 (%d tokens): chi-square %g", k, stat);
    }
#undef DRAW
}

int main(void) {
    toy_tests();
    transformer_beam();
    sampling();
    return t_summary();
}
