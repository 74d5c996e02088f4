/* The Fréchet distance between two sets of feature vectors (FID, Heusel et
   al. 2017, when the features are Inception's; sagan_fashion uses its
   classifier's): each set is summarised by its mean mu and covariance S,
   and
     d^2 = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2),
   the squared 2-Wasserstein distance between Gaussians of those moments.
   S1 S2 is not symmetric, but it is similar to sqrt(S1) S2 sqrt(S1), which
   is symmetric and positive semi-definite, so
     tr sqrt(S1 S2) = sum of sqrt(eigenvalues of sqrt(S1) S2 sqrt(S1)),
   and sqrt(S1) comes from an eigendecomposition too. Both use the cyclic
   Jacobi method, in double. Example-only code; tests/test_examples.c checks
   it against closed forms. */
#ifndef AV_EXAMPLES_FID_H
#define AV_EXAMPLES_FID_H
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Eigenvalues (into values[n]) and eigenvectors (the columns of vectors,
   n x n row-major) of the symmetric n x n matrix a, which is destroyed:
   cyclic Jacobi rotations until the off-diagonal part is negligible. */
static inline void ex_sym_eigen(double *a, int n, double *values, double *vectors) {
    int sweep, p, q, k;
    for (p = 0; p < n; p++)
        for (q = 0; q < n; q++) vectors[(size_t)p * n + q] = p == q;
    for (sweep = 0; sweep < 100; sweep++) {
        double off = 0, diag = 0;
        for (p = 0; p < n; p++) {
            diag += a[(size_t)p * n + p] * a[(size_t)p * n + p];
            for (q = p + 1; q < n; q++) off += a[(size_t)p * n + q] * a[(size_t)p * n + q];
        }
        if (off <= 1e-30 * diag || off == 0) break;
        for (p = 0; p < n - 1; p++)
            for (q = p + 1; q < n; q++) {
                double apq = a[(size_t)p * n + q], theta, t, cs, sn;
                if (apq == 0) continue;
                /* the rotation in the (p, q) plane that zeroes a[p][q] */
                theta = (a[(size_t)q * n + q] - a[(size_t)p * n + p]) / (2 * apq);
                t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                cs = 1 / sqrt(t * t + 1);
                sn = t * cs;
                for (k = 0; k < n; k++) { /* columns p and q: a R */
                    double akp = a[(size_t)k * n + p], akq = a[(size_t)k * n + q];
                    a[(size_t)k * n + p] = cs * akp - sn * akq;
                    a[(size_t)k * n + q] = sn * akp + cs * akq;
                }
                for (k = 0; k < n; k++) { /* rows p and q: R^T (a R) */
                    double apk = a[(size_t)p * n + k], aqk = a[(size_t)q * n + k];
                    a[(size_t)p * n + k] = cs * apk - sn * aqk;
                    a[(size_t)q * n + k] = sn * apk + cs * aqk;
                }
                for (k = 0; k < n; k++) { /* the eigenvectors: V R */
                    double vkp = vectors[(size_t)k * n + p], vkq = vectors[(size_t)k * n + q];
                    vectors[(size_t)k * n + p] = cs * vkp - sn * vkq;
                    vectors[(size_t)k * n + q] = sn * vkp + cs * vkq;
                }
            }
    }
    for (p = 0; p < n; p++) values[p] = a[(size_t)p * n + p];
}

/* tr sqrt(s1 s2) for symmetric positive semi-definite n x n matrices
   (eigenvalues that rounding makes slightly negative count as 0).
   Returns NAN if out of memory. */
static inline double ex_trace_sqrt_product(const double *s1, const double *s2, int n) {
    size_t nn = (size_t)n * n;
    double *work = (double *)malloc(4 * nn * sizeof(double)), *values = (double *)malloc((size_t)n * sizeof(double));
    double *vec, *root, *tmp, sum = 0;
    int i, j, k;
    if (!work || !values) { free(work); free(values); return NAN; }
    vec = work + nn; root = work + 2 * nn; tmp = work + 3 * nn;
    /* root = sqrt(s1) = V diag(sqrt(l)) V^T */
    memcpy(work, s1, nn * sizeof(double));
    ex_sym_eigen(work, n, values, vec);
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) {
            double r = 0;
            for (k = 0; k < n; k++) r += vec[(size_t)i * n + k] * sqrt(values[k] > 0 ? values[k] : 0) * vec[(size_t)j * n + k];
            root[(size_t)i * n + j] = r;
        }
    /* work = root s2 root, symmetrised against rounding */
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) {
            double r = 0;
            for (k = 0; k < n; k++) r += root[(size_t)i * n + k] * s2[(size_t)k * n + j];
            tmp[(size_t)i * n + j] = r;
        }
    for (i = 0; i < n; i++)
        for (j = 0; j < n; j++) {
            double r = 0;
            for (k = 0; k < n; k++) r += tmp[(size_t)i * n + k] * root[(size_t)k * n + j];
            work[(size_t)i * n + j] = r;
        }
    for (i = 0; i < n; i++)
        for (j = 0; j < i; j++)
            work[(size_t)i * n + j] = work[(size_t)j * n + i] = 0.5 * (work[(size_t)i * n + j] + work[(size_t)j * n + i]);
    ex_sym_eigen(work, n, values, vec);
    for (i = 0; i < n; i++) sum += sqrt(values[i] > 0 ? values[i] : 0);
    free(work);
    free(values);
    return sum;
}

/* The mean [d] and covariance [d x d] (divided by n - 1, or by 1 for one
   row) of n rows of d features, in double. */
static inline void ex_feature_stats(const float *rows, int n, int d, double *mean, double *cov) {
    int r, i, j;
    memset(mean, 0, (size_t)d * sizeof(double));
    memset(cov, 0, (size_t)d * d * sizeof(double));
    for (r = 0; r < n; r++)
        for (i = 0; i < d; i++) mean[i] += rows[(size_t)r * d + i];
    for (i = 0; i < d; i++) mean[i] /= n > 0 ? n : 1;
    for (r = 0; r < n; r++)
        for (i = 0; i < d; i++) {
            double di = rows[(size_t)r * d + i] - mean[i];
            for (j = 0; j <= i; j++) cov[(size_t)i * d + j] += di * (rows[(size_t)r * d + j] - mean[j]);
        }
    for (i = 0; i < d; i++)
        for (j = 0; j <= i; j++) cov[(size_t)i * d + j] = cov[(size_t)j * d + i] = cov[(size_t)i * d + j] / (n > 1 ? n - 1 : 1);
}

/* The Fréchet distance between Gaussians N(mu1, s1) and N(mu2, s2) in d dimensions. */
static inline double ex_frechet_distance(const double *mu1, const double *s1, const double *mu2, const double *s2, int d) {
    double dist = 0;
    int i;
    for (i = 0; i < d; i++)
        dist += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]) + s1[(size_t)i * d + i] + s2[(size_t)i * d + i];
    return dist - 2 * ex_trace_sqrt_product(s1, s2, d);
}
#endif
