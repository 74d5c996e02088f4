/* philox_ref.h - the tests' own Philox4x32-10 and the draws the manual
   documents (attnvae.h, [1 core] RNG 2), written apart from the library so
   that tests can rebuild any draw of a stream: the generator from its
   published description (round keys computed first, applied before each
   round), the draws from the formulas in the manual, in double. The known
   answers of Random123's kat_vectors check this copy and the library's. */
#ifndef AV_PHILOX_REF_H
#define AV_PHILOX_REF_H

#include <math.h>
#include <stdint.h>

static inline void ref_philox(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t k[10][2], x[4], y[4];
    int r, i;
    k[0][0] = key[0];
    k[0][1] = key[1];
    for (r = 1; r < 10; r++) {
        k[r][0] = k[r - 1][0] + 0x9E3779B9u; /* golden ratio */
        k[r][1] = k[r - 1][1] + 0xBB67AE85u; /* sqrt(3) - 1 */
    }
    for (i = 0; i < 4; i++) x[i] = ctr[i];
    for (r = 0; r < 10; r++) {
        uint64_t a = (uint64_t)x[0] * 0xD2511F53u, b = (uint64_t)x[2] * 0xCD9E8D57u;
        y[0] = (uint32_t)(b >> 32) ^ x[1] ^ k[r][0];
        y[1] = (uint32_t)(b & 0xffffffffu);
        y[2] = (uint32_t)(a >> 32) ^ x[3] ^ k[r][1];
        y[3] = (uint32_t)(a & 0xffffffffu);
        for (i = 0; i < 4; i++) x[i] = y[i];
    }
    for (i = 0; i < 4; i++) out[i] = x[i];
}

/* The four words of the block holding draw e of stream (seed, offset). */
static inline void ref_block(uint64_t seed, uint64_t offset, uint64_t e, uint32_t w[4]) {
    uint32_t ctr[4], key[2];
    uint64_t block = e / 4;
    ctr[0] = (uint32_t)(block & 0xffffffffu);
    ctr[1] = (uint32_t)(block >> 32);
    ctr[2] = (uint32_t)(offset & 0xffffffffu);
    ctr[3] = (uint32_t)(offset >> 32);
    key[0] = (uint32_t)(seed & 0xffffffffu);
    key[1] = (uint32_t)(seed >> 32);
    ref_philox(ctr, key, w);
}

/* Draw e as a uniform: the top 24 bits of its word over 2^24. */
static inline double ref_uniform(uint64_t seed, uint64_t offset, uint64_t e) {
    uint32_t w[4];
    ref_block(seed, offset, e, w);
    return ldexp((double)(w[e % 4] >> 8), -24);
}

/* Draw e as a normal: Box-Muller on the word pair of its lane, cosine for
   even lanes and sine for odd ones. */
static inline double ref_normal(uint64_t seed, uint64_t offset, uint64_t e) {
    uint32_t w[4];
    int pair = (int)(e % 4) / 2;
    double r, angle;
    ref_block(seed, offset, e, w);
    r = sqrt(-2.0 * log(ldexp((double)w[2 * pair] + 1.0, -32)));
    angle = 2.0 * 3.14159265358979323846 * ldexp((double)w[2 * pair + 1], -32);
    return r * (e % 2 ? sin(angle) : cos(angle));
}

#endif
