/* test_mpi.c - tests of [10 mpi]: the sharded sampler and data-parallel
   training over MPI. Run on 2 or more ranks:
       mpirun --oversubscribe -np 2 build/test_mpi TMPDIR

   1. The sampler: each epoch's order is a permutation drawn from (seed,
      epoch) alone, whatever the rank and the number of ranks; the ranks'
      parts of a step, in rank order, are exactly that step's global batch,
      which is the batch one process takes with the whole global batch.
   2. av_mpi_check and av_mpi_new: the lowest failing rank, on every rank;
      models that differ are refused on every rank.
   3. av_mpi_broadcast: every rank ends with rank 0's parameters, buffers,
      optimizer state and step, checked against a copy of rank 0's model
      that each rank builds itself.
   4. One step: R ranks with B examples each give the gradients (and, after
      one SGD step, the parameters) of one process with the R B examples, to
      the tolerance of fp32 sums in another order (derived at
      grad_tolerance), for several bucket sizes, the blocking path, and
      ranks with unequal or zero counts. A double-precision reference gives
      the size of each sum. Control: a rank's own gradient, not averaged,
      is far outside the tolerance, so the tolerance can fail.
   5. Overlap: with one parameter per bucket, the first buckets go out
      while backward has not yet reached the first layer; one bucket in
      all with the default size (MPI_Iallreduce is counted through MPI's
      profiling interface).
   6. Every rank holds bit-identical parameters after 20 Adam steps on
      different data.
   7. Saves from rank 0 only, loads on rank 0 broadcast to all, and errors
      reported on every rank. */
#define ATTNVAE_MPI
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rank, size;
static const char *tmpdir = "build/mpi_tmp";

/* ---- the tests' own generator (splitmix64), independent of the library ---- */
static uint64_t tr_state = 0x5eed5eedULL;
static double tr_uniform(void) { /* [-1, 1) */
    uint64_t z = (tr_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) / 4503599627370496.0 - 1.0;
}

/* ---- 1. the sampler ---- */
static int is_permutation(const int *p, int n) {
    int *seen = (int *)calloc((size_t)n + 1, sizeof(int)), i, ok = 1;
    for (i = 0; i < n; i++) {
        if (p[i] < 0 || p[i] >= n || seen[p[i]]) ok = 0;
        else seen[p[i]] = 1;
    }
    free(seen);
    return ok;
}

static void test_sampler(void) {
    const int n = 37, batch = 4;
    av_sampler one, s;
    int ranks, r, step, epoch, differs = 0, moved = 0, i;
    for (epoch = 0; epoch < 3; epoch++) {
        /* one process with the whole global batch is the reference */
        for (ranks = 1; ranks <= 4; ranks++) {
            CHECK(av_sampler_init(&one, n, batch * ranks, 0, 1, 7) == 0, "sampler init");
            av_sampler_set_epoch(&one, epoch);
            CHECK(is_permutation(one.perm, n), "epoch %d: not a permutation", epoch);
            CHECK(av_sampler_steps(&one) == (n + batch * ranks - 1) / (batch * ranks), "steps for %d ranks", ranks);
            for (r = 0; r < ranks; r++) {
                CHECK(av_sampler_init(&s, n, batch, r, ranks, 7) == 0, "sampler init");
                av_sampler_set_epoch(&s, epoch);
                CHECK(memcmp(s.perm, one.perm, n * sizeof(int)) == 0, "epoch %d: rank %d of %d draws another order", epoch,
                      r, ranks);
                CHECK(av_sampler_steps(&s) == av_sampler_steps(&one), "steps differ");
                for (step = 0; step < av_sampler_steps(&s); step++) {
                    av_shard g = av_sampler_shard(&one, step), p = av_sampler_shard(&s, step);
                    int lo = r * g.total / ranks, hi = (r + 1) * g.total / ranks;
                    CHECK(g.count == g.total && g.offset == 0, "one process takes its whole batch");
                    CHECK(p.total == g.total && p.offset == lo && p.count == hi - lo,
                          "epoch %d step %d rank %d/%d: offset %d count %d total %d, want %d %d %d", epoch, step, r, ranks,
                          p.offset, p.count, p.total, lo, hi - lo, g.total);
                    CHECK(p.index == g.index - one.perm + s.perm + lo, "rank %d's part is not rows %d.. of the global batch",
                          r, lo);
                    CHECK(memcmp(p.index, g.index + lo, (size_t)p.count * sizeof(int)) == 0, "part differs");
                }
                av_sampler_free(&s);
            }
            av_sampler_free(&one);
        }
    }
    /* the order moves examples, changes with the epoch and the seed, and comes back with them */
    CHECK(av_sampler_init(&one, n, batch, 0, 1, 7) == 0 && av_sampler_init(&s, n, batch, 0, 1, 7) == 0, "init");
    for (i = 0; i < n; i++) moved += one.perm[i] != i;
    av_sampler_set_epoch(&s, 1);
    for (i = 0; i < n; i++) differs += one.perm[i] != s.perm[i];
    CHECK(moved > n / 2 && differs > n / 2, "order: %d of %d moved, %d differ between epochs", moved, n, differs);
    av_sampler_set_epoch(&s, 0);
    CHECK(memcmp(one.perm, s.perm, n * sizeof(int)) == 0, "epoch 0 again gives another order");
    av_sampler_free(&s);
    CHECK(av_sampler_init(&s, n, batch, 0, 1, 8) == 0, "init");
    for (i = 0, differs = 0; i < n; i++) differs += one.perm[i] != s.perm[i];
    CHECK(differs > n / 2, "seeds 7 and 8: only %d of %d differ", differs, n);
    av_sampler_free(&s);
    av_sampler_free(&one);
    /* more ranks than examples: empty parts (rows r 3 / 5 .. (r + 1) 3 / 5); no examples: no steps */
    CHECK(av_sampler_init(&s, 3, 1, 0, 5, 1) == 0, "init");
    CHECK(av_sampler_shard(&s, 0).count == 0 && av_sampler_shard(&s, 0).total == 3, "rank 0 of 5 with 3 examples");
    av_sampler_free(&s);
    CHECK(av_sampler_init(&s, 0, 4, 0, 2, 1) == 0 && av_sampler_steps(&s) == 0, "no examples: steps");
    av_sampler_free(&s);
    /* the real ranks draw the same order as rank 0 */
    CHECK(av_sampler_init(&s, 1000, 8, rank, size, 99) == 0, "init");
    av_sampler_set_epoch(&s, 5);
    {
        int *root = (int *)malloc(1000 * sizeof(int));
        memcpy(root, s.perm, 1000 * sizeof(int));
        MPI_Bcast(root, 1000, MPI_INT, 0, MPI_COMM_WORLD);
        CHECK(memcmp(root, s.perm, 1000 * sizeof(int)) == 0, "rank %d's order differs from rank 0's", rank);
        free(root);
    }
    av_sampler_free(&s);
}

/* ---- 2. agreement ---- */
static void test_check(void) {
    int r;
    CHECK(av_mpi_check(MPI_COMM_WORLD, 1) == -1, "all fine");
    CHECK(av_mpi_check(MPI_COMM_WORLD, rank != size - 1) == size - 1, "the last rank fails");
    CHECK(av_mpi_check(MPI_COMM_WORLD, rank == 0) == (size > 1 ? 1 : -1), "all but rank 0 fail");
    CHECK(av_mpi_check(MPI_COMM_WORLD, 0) == 0, "all fail");
    for (r = 0; r < size; r++) CHECK(av_mpi_check(MPI_COMM_WORLD, rank != r) == r, "rank %d fails", r);
}

/* ---- the test model ---- */
#define D 6  /* inputs */
#define H 10 /* hidden */
#define O 3  /* outputs */
#define B 8  /* examples per rank (a power of two, see grad_tolerance) */
/* y = l3(h3), h3 = tanh(l2(h2)), h2 = tanh(l2(h1)), h1 = tanh(l1(x)): l2 is
   used twice, so its gradient is complete only after its earlier use. A
   parameter "unused" never is, and a buffer "stats" is not trained. */
typedef struct net { av_model *m; av_linear_layer l1, l2, l3; av_tensor *unused, *stats; } net;
#define NPARAM 7 /* l1.weight l1.bias l2.weight l2.bias unused l3.weight l3.bias */

static net net_new(uint64_t seed) {
    net n;
    n.m = av_model_new(seed);
    n.l1 = av_linear_layer_new(n.m, "l1", D, H, 1);
    n.l2 = av_linear_layer_new(n.m, "l2", H, H, 1);
    n.unused = av_param(n.m, "unused", AV_INIT_NORMAL, 1.0f, 1, 3);
    n.l3 = av_linear_layer_new(n.m, "l3", H, O, 1);
    n.stats = av_buffer(n.m, "stats", AV_INIT_NORMAL, 1.0f, 1, 4);
    return n;
}

/* mean squared error of rows x[0 .. rows) against t */
static av_tensor *net_loss(av_ctx *c, const net *n, const float *x, const float *t, int rows) {
    av_tensor *h = av_tanh(c, av_linear_forward(c, &n->l1, av_from(c, x, 2, rows, D)));
    h = av_tanh(c, av_linear_forward(c, &n->l2, h));
    h = av_tanh(c, av_linear_forward(c, &n->l2, h));
    return av_mse_loss(c, av_linear_forward(c, &n->l3, h), av_from(c, t, 2, rows, O), AV_MEAN);
}

/* The gradient of the mean loss over rows in double, per parameter (in
   the model's order), and S = the sum over the examples of |each example's
   term|, the size of the sum that gradient is. */
static void net_reference(const net *n, const float *x, const float *t, int rows, double **g, double **s) {
    const float *W1 = n->l1.weight->data, *b1 = n->l1.bias->data, *W2 = n->l2.weight->data, *b2 = n->l2.bias->data;
    const float *W3 = n->l3.weight->data, *b3 = n->l3.bias->data;
    double h[4][H], dy[O], da[H], dh[H];
    int e, i, j, k, layer;
    for (k = 0; k < NPARAM; k++) {
        memset(g[k], 0, (size_t)av_model_param(n->m, k)->size * sizeof(double));
        memset(s[k], 0, (size_t)av_model_param(n->m, k)->size * sizeof(double));
    }
    for (e = 0; e < rows; e++) {
        const float *xe = x + e * D;
        for (i = 0; i < H; i++) {
            double a = b1[i];
            for (j = 0; j < D; j++) a += (double)W1[i * D + j] * xe[j];
            h[1][i] = tanh(a);
        }
        for (layer = 2; layer <= 3; layer++)
            for (i = 0; i < H; i++) {
                double a = b2[i];
                for (j = 0; j < H; j++) a += (double)W2[i * H + j] * h[layer - 1][j];
                h[layer][i] = tanh(a);
            }
        for (i = 0; i < O; i++) {
            double y = b3[i];
            for (j = 0; j < H; j++) y += (double)W3[i * H + j] * h[3][j];
            dy[i] = 2.0 * (y - t[e * O + i]) / ((double)rows * O);
            g[6][i] += dy[i];
            s[6][i] += fabs(dy[i]);
            for (j = 0; j < H; j++) {
                g[5][i * H + j] += dy[i] * h[3][j];
                s[5][i * H + j] += fabs(dy[i] * h[3][j]);
            }
        }
        for (j = 0; j < H; j++) {
            dh[j] = 0;
            for (i = 0; i < O; i++) dh[j] += (double)W3[i * H + j] * dy[i];
        }
        for (layer = 3; layer >= 1; layer--) { /* da = dh tanh'; into l2 (layers 3, 2) or l1 */
            int in = layer == 1 ? D : H, wi = layer == 1 ? 0 : 2;
            for (i = 0; i < H; i++) da[i] = dh[i] * (1.0 - h[layer][i] * h[layer][i]);
            for (i = 0; i < H; i++) {
                g[wi + 1][i] += da[i];
                s[wi + 1][i] += fabs(da[i]);
                for (j = 0; j < in; j++) {
                    double a = layer == 1 ? xe[j] : h[layer - 1][j];
                    g[wi][i * in + j] += da[i] * a;
                    s[wi][i * in + j] += fabs(da[i] * a);
                }
            }
            for (j = 0; layer > 1 && j < H; j++) {
                dh[j] = 0;
                for (i = 0; i < H; i++) dh[j] += (double)W2[i * H + j] * da[i];
            }
        }
    }
}

/* The tolerance of a gradient element whose exact value is a sum of
   per-example terms with sum S = sum |term| over n terms at most.
   One process sums the R B terms of each element in one order; R ranks sum
   B each, MPI adds the R partial sums and divides by the total count. With
   B a power of two the per-example factors are the same floats in both
   (scaling a float by a power of two is exact: the mean's 1/(B O) is
   exactly twice 1/(2 B O), and each row's forward does not depend on the
   other rows), so both results are fp32 sums of the same terms in two
   orders. Each lies within gamma_n S of the exact sum (gamma_n = n u / (1 -
   n u), u = 2^-24: the bound for a float sum or dot product of n terms in
   any order, with or without FMA), so they differ by at most 2 gamma_n S.
   n counts every term: l2's weight gets 2 R B (its two uses). extra_u adds
   a relative error per term (unequal counts scale each rank's terms by
   count / total, not a power of two: see test_unequal_counts). */
static double grad_tolerance(double S, int n, double extra_u) {
    const double u = 1.0 / 16777216.0, gamma = n * u / (1 - n * u);
    return 2.0 * (gamma + extra_u * u) * S;
}

/* The largest |got - want| / tolerance over a parameter (0 when all fit exactly). */
static double worst_ratio(const float *got, const float *want, const double *S, int size, int n, double extra_u) {
    double worst = 0;
    int i;
    for (i = 0; i < size; i++) {
        double diff = fabs((double)got[i] - want[i]), tol = grad_tolerance(S[i], n, extra_u);
        double r = diff == 0 ? 0 : tol > 0 ? diff / tol : INFINITY;
        if (!(r <= worst)) worst = r; /* NaN counts as the worst */
    }
    return worst;
}

typedef struct data { float *x, *t; int rows; } data;

static data data_new(int rows) {
    data d;
    int i;
    d.rows = rows;
    d.x = (float *)malloc((size_t)rows * D * sizeof(float));
    d.t = (float *)malloc((size_t)rows * O * sizeof(float));
    for (i = 0; i < rows * D; i++) d.x[i] = (float)(2.0 * tr_uniform());
    for (i = 0; i < rows * O; i++) d.t[i] = (float)tr_uniform();
    return d;
}

static void data_free(data *d) { free(d->x); free(d->t); }

/* Copies every parameter's gradient (order of the model) into grads. */
static void save_grads(const av_model *m, float **grads) {
    int k;
    for (k = 0; k < av_model_count(m); k++)
        memcpy(grads[k], av_model_param(m, k)->grad, (size_t)av_model_param(m, k)->size * sizeof(float));
}

static float **grads_new(const av_model *m) {
    float **g = (float **)malloc(NPARAM * sizeof(float *));
    int k;
    for (k = 0; k < NPARAM; k++) g[k] = (float *)malloc((size_t)av_model_param(m, k)->size * sizeof(float));
    return g;
}

static void grads_free(float **g) {
    int k;
    for (k = 0; k < NPARAM; k++) free(g[k]);
    free(g);
}

/* ---- 5. counting MPI_Iallreduce through the profiling interface ---- */
static int iallreduce_calls, calls_before_l1; /* calls, and those made before l1's gradient had any value */
static const av_tensor *watch_l1;
#ifdef __cplusplus
extern "C"
#endif
int MPI_Iallreduce(const void *sendbuf, void *recvbuf, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm,
                   MPI_Request *req) {
    int i, touched = 0;
    iallreduce_calls++;
    for (i = 0; watch_l1 && i < watch_l1->size; i++) touched |= watch_l1->grad[i] != 0;
    calls_before_l1 += watch_l1 && !touched;
    return PMPI_Iallreduce(sendbuf, recvbuf, count, type, op, comm, req);
}

/* ---- 4. one step: R ranks x B against 1 process x R B ---- */
/* bucket_bytes 0 (default), 1 (a bucket per parameter) or in between;
   blocking: av_mpi_allreduce_grads after av_backward. */
static void one_step(size_t bucket_bytes, int blocking) {
    const float lr = 0.5f;
    const int N = B * size;
    net dist = net_new(11), ref = net_new(11);
    av_ctx *c = av_ctx_new();
    av_mpi *d = av_mpi_new(dist.m, MPI_COMM_WORLD, bucket_bytes);
    data all;
    double *g64[NPARAM], *S[NPARAM], worst = 0, worst_ref = 0, worst_own = 0, worst_param = 0;
    float **own, **before;
    av_optim sgd = av_sgd(lr, 0, 0);
    int k, i, rc;
    tr_state = 0xda7a; /* the same data on every rank */
    all = data_new(N);
    CHECK(d != NULL, "av_mpi_new: %s", av_error());
    if (!d) return;
    own = grads_new(dist.m);
    before = grads_new(dist.m);
    for (k = 0; k < NPARAM; k++) {
        g64[k] = (double *)malloc((size_t)av_model_param(ref.m, k)->size * sizeof(double));
        S[k] = (double *)malloc((size_t)av_model_param(ref.m, k)->size * sizeof(double));
    }
    net_reference(&ref, all.x, all.t, N, g64, S);

    /* one process, all N rows */
    av_model_zero_grad(ref.m);
    av_backward(c, net_loss(c, &ref, all.x, all.t, N));
    for (k = 0; k < NPARAM; k++) { /* the reference itself: fp32 against double, loosely (forward errors) */
        const av_tensor *p = av_model_param(ref.m, k);
        for (i = 0; i < p->size; i++)
            if (!(fabs(p->grad[i] - g64[k][i]) <= 1e-4 * S[k][i] + 1e-12)) worst_ref = INFINITY;
    }
    CHECK(worst_ref == 0, "the fp32 gradient of one process is not the double reference's: the test is broken");
    /* this rank's own B rows, not averaged: the control */
    av_ctx_reset(c);
    av_model_zero_grad(dist.m);
    av_backward(c, net_loss(c, &dist, all.x + rank * B * D, all.t + rank * B * O, B));
    save_grads(dist.m, own);
    /* R ranks: rows rank B .. rank B + B */
    av_ctx_reset(c);
    av_model_zero_grad(dist.m);
    watch_l1 = dist.l1.weight;
    iallreduce_calls = calls_before_l1 = 0;
    if (blocking) {
        av_backward(c, net_loss(c, &dist, all.x + rank * B * D, all.t + rank * B * O, B));
        rc = av_mpi_allreduce_grads(d, B);
    } else {
        rc = av_mpi_backward(d, c, net_loss(c, &dist, all.x + rank * B * D, all.t + rank * B * O, B), B);
    }
    watch_l1 = NULL;
    CHECK(rc == 0, "reduction: %s", av_error());
    for (k = 0; k < NPARAM; k++) {
        const av_tensor *p = av_model_param(dist.m, k), *q = av_model_param(ref.m, k);
        int n = (p == dist.l2.weight || p == dist.l2.bias ? 2 : 1) * N;
        double r = worst_ratio(p->grad, q->grad, S[k], p->size, n, 0), r_own = worst_ratio(own[k], q->grad, S[k], p->size, n, 0);
        if (r > worst) worst = r;
        if (r_own > worst_own) worst_own = r_own;
        CHECK(r <= 1, "bucket_bytes %lu%s: %s's gradient is %.3g tolerances from one process's", (unsigned long)bucket_bytes,
              blocking ? " blocking" : "", p->name, r);
    }
    CHECK(size == 1 || worst_own > 1e3, "control: a rank's own gradient is only %.3g tolerances away", worst_own);
    for (i = 0; i < 3; i++) CHECK(dist.unused->grad[i] == 0, "the unused parameter got a gradient");
    /* how the buckets went out */
    if (!blocking && bucket_bytes == 1) {
        CHECK(iallreduce_calls == NPARAM, "a bucket per parameter: %d MPI_Iallreduce calls, want %d", iallreduce_calls, NPARAM);
        CHECK(calls_before_l1 >= NPARAM - 2, "overlap: only %d buckets went out before backward reached l1", calls_before_l1);
        CHECK(calls_before_l1 < NPARAM, "l1's bucket went out before l1's gradient was there");
    }
    if (bucket_bytes == 0) CHECK(iallreduce_calls == 1, "default buckets: %d MPI_Iallreduce calls, want 1", iallreduce_calls);
    /* one SGD step on each: the parameters differ by lr times the gradients' difference, plus roundings */
    for (k = 0; k < NPARAM; k++) memcpy(before[k], av_model_param(dist.m, k)->data, av_model_param(dist.m, k)->size * sizeof(float));
    CHECK(av_optim_step(dist.m, &sgd) == 0 && av_optim_step(ref.m, &sgd) == 0, "sgd step");
    for (k = 0; k < NPARAM; k++) {
        const av_tensor *p = av_model_param(dist.m, k), *q = av_model_param(ref.m, k);
        int n = (p == dist.l2.weight || p == dist.l2.bias ? 2 : 1) * N;
        for (i = 0; i < p->size; i++) {
            const double u = 1.0 / 16777216.0;
            double tol = lr * grad_tolerance(S[k][i], n, 0) + 4 * u * (lr * fabs(q->grad[i]) + fabs(q->data[i]));
            double diff = fabs((double)p->data[i] - q->data[i]);
            if (diff > tol * worst_param || (diff > 0 && tol == 0)) worst_param = tol > 0 ? diff / tol : INFINITY;
        }
        if (p != dist.unused) CHECK(memcmp(before[k], p->data, p->size * sizeof(float)) != 0, "%s did not move", p->name);
    }
    CHECK(worst_param <= 1, "after one SGD step the parameters are %.3g tolerances apart", worst_param);
    if (rank == 0)
        printf("info: one step, %d ranks x %d vs 1 x %d, bucket_bytes %lu%s: worst gradient %.3g tolerances, "
               "parameters %.3g (a rank's own gradient: %.3g)\n", size, B, N, (unsigned long)bucket_bytes,
               blocking ? " (blocking)" : "", worst, worst_param, worst_own);
    for (k = 0; k < NPARAM; k++) { free(g64[k]); free(S[k]); }
    grads_free(own);
    grads_free(before);
    data_free(&all);
    av_mpi_free(d);
    av_ctx_free(c);
    av_model_free(dist.m);
    av_model_free(ref.m);
}

/* Ranks with unequal counts (rank r: 2 r + 3 examples; rank 1 none when
   zero_rank): the weighted average is the gradient of the mean over all.
   One linear layer, so each term is (its row's scaled residual) x input:
   1/(count O) is no longer a power of two apart from 1/(N O), and each
   term carries up to 2 roundings in either computation (the mean's scale,
   its product) and the distributed one 2 more (times count, over the
   total): extra_u = 4 on top of the reordered sum. Control: the plain
   average of the ranks' gradients (count 1 each) is far outside. */
static void test_unequal_counts(int zero_rank) {
    int *counts = (int *)malloc((size_t)size * sizeof(int)), *first = (int *)malloc((size_t)size * sizeof(int));
    int N = 0, r, k, i, mine = 0;
    av_model *m = av_model_new(5), *ref = av_model_new(5), *plain = av_model_new(5);
    av_linear_layer l = av_linear_layer_new(m, "lin", D, O, 1), lr = av_linear_layer_new(ref, "lin", D, O, 1),
                    lp = av_linear_layer_new(plain, "lin", D, O, 1);
    av_mpi *d = av_mpi_new(m, MPI_COMM_WORLD, 0), *dp = av_mpi_new(plain, MPI_COMM_WORLD, 0);
    av_ctx *c = av_ctx_new();
    data all;
    double g[O * D + O], S[O * D + O], worst = 0, worst_plain = 0;
    for (r = 0; r < size; r++) {
        counts[r] = zero_rank && r == 1 ? 0 : 2 * r + 3;
        first[r] = N;
        N += counts[r];
        if (r == rank) mine = counts[r];
    }
    tr_state = 0xc0de;
    all = data_new(N);
    memset(g, 0, sizeof g);
    memset(S, 0, sizeof S);
    for (i = 0; i < N; i++) { /* the double reference of the mean over all N */
        for (r = 0; r < O; r++) {
            double y = l.bias->data[r], dy;
            for (k = 0; k < D; k++) y += (double)l.weight->data[r * D + k] * all.x[i * D + k];
            dy = 2.0 * (y - all.t[i * O + r]) / ((double)N * O);
            for (k = 0; k < D; k++) {
                g[r * D + k] += dy * all.x[i * D + k];
                S[r * D + k] += fabs(dy * all.x[i * D + k]);
            }
            g[O * D + r] += dy;
            S[O * D + r] += fabs(dy);
        }
    }
    av_model_zero_grad(ref);
    av_backward(c, av_mse_loss(c, av_linear_forward(c, &lr, av_from(c, all.x, 2, N, D)), av_from(c, all.t, 2, N, O), AV_MEAN));
    for (k = 0; k < O * D + O; k++) { /* the reference itself, loosely */
        const float *got = k < O * D ? lr.weight->grad + k : lr.bias->grad + k - O * D;
        CHECK(fabs(*got - g[k]) <= 1e-4 * S[k] + 1e-12, "the fp32 gradient of one process is not the double reference's");
    }
    /* each rank its rows; a rank without rows reduces its zeroed gradients */
    av_ctx_reset(c);
    av_model_zero_grad(m);
    av_model_zero_grad(plain);
    if (mine > 0) {
        av_tensor *x = av_from(c, all.x + first[rank] * D, 2, mine, D), *t = av_from(c, all.t + first[rank] * O, 2, mine, O);
        CHECK(av_mpi_backward(d, c, av_mse_loss(c, av_linear_forward(c, &l, x), t, AV_MEAN), mine) == 0, "%s", av_error());
        CHECK(av_mpi_backward(dp, c, av_mse_loss(c, av_linear_forward(c, &lp, x), t, AV_MEAN), 1) == 0, "%s", av_error());
    } else {
        CHECK(av_mpi_allreduce_grads(d, 0) == 0 && av_mpi_allreduce_grads(dp, 0) == 0, "%s", av_error());
    }
    for (k = 0; k < 2; k++) {
        const av_tensor *p = av_model_param(m, k), *q = av_model_param(ref, k), *pp = av_model_param(plain, k);
        const double *s = k == 0 ? S : S + O * D;
        double w = worst_ratio(p->grad, q->grad, s, p->size, N, 4), wp = worst_ratio(pp->grad, q->grad, s, p->size, N, 4);
        worst = w > worst ? w : worst;
        worst_plain = wp > worst_plain ? wp : worst_plain;
    }
    CHECK(worst <= 1, "counts%s: the weighted gradient is %.3g tolerances from one process's", zero_rank ? " with 0" : "",
          worst);
    CHECK(size == 1 || zero_rank || worst_plain > 10, "control: the plain average is only %.3g tolerances away", worst_plain);
    if (rank == 0)
        printf("info: unequal counts%s (N = %d): worst %.3g tolerances (plain average: %.3g)\n", zero_rank ? " with 0" : "", N,
               worst, worst_plain);
    free(counts);
    free(first);
    data_free(&all);
    av_mpi_free(d);
    av_mpi_free(dp);
    av_ctx_free(c);
    av_model_free(m);
    av_model_free(ref);
    av_model_free(plain);
}

/* All counts 0: the gradients become 0 rather than 0/0. */
static void test_all_zero_counts(void) {
    net n = net_new(3);
    av_mpi *d = av_mpi_new(n.m, MPI_COMM_WORLD, 1);
    int k, i, nonzero = 0;
    for (k = 0; k < NPARAM; k++)
        for (i = 0; i < av_model_param(n.m, k)->size; i++) av_model_param(n.m, k)->grad[i] = 1.0f;
    CHECK(av_mpi_allreduce_grads(d, 0) == 0, "%s", av_error());
    for (k = 0; k < NPARAM; k++)
        for (i = 0; i < av_model_param(n.m, k)->size; i++) nonzero += av_model_param(n.m, k)->grad[i] != 0;
    CHECK(nonzero == 0, "all counts 0: %d gradients are not 0", nonzero);
    av_mpi_free(d);
    av_model_free(n.m);
}

/* ---- 2. models that differ ---- */
static void test_mismatch(void) {
    av_model *m = av_model_new(1);
    av_mpi *d;
    av_linear_layer_new(m, "a", 4, rank == size - 1 ? 5 : 4, 1); /* the last rank's shape differs */
    d = av_mpi_new(m, MPI_COMM_WORLD, 0);
    CHECK(size == 1 || (d == NULL && av_error_code() == AV_ERR_MISMATCH && strstr(av_error(), "models differ")),
          "shapes that differ: %s", d ? "accepted" : av_error());
    av_mpi_free(d);
    av_model_free(m);
    m = av_model_new(1);
    av_linear_layer_new(m, rank == size - 1 ? "b" : "a", 4, 4, 1); /* names that differ */
    d = av_mpi_new(m, MPI_COMM_WORLD, 0);
    CHECK(size == 1 || (d == NULL && av_error_code() == AV_ERR_MISMATCH), "names that differ: %s", d ? "accepted" : av_error());
    av_mpi_free(d);
    av_model_free(m);
}

/* ---- 3. broadcast, 7. saves and loads ---- */
/* rank 0's model as rank 0 makes it: seed 100, a buffer of 7s, one Adam step (state and step 1) */
static net rank_model(int r) {
    net n = net_new(100 + (uint64_t)r);
    av_optim adam = av_adam(0.01);
    int k, i;
    for (i = 0; i < 4; i++) n.stats->data[i] = 7.0f + (float)r;
    if (r == 0) {
        for (k = 0; k < NPARAM; k++)
            for (i = 0; i < av_model_param(n.m, k)->size; i++) av_model_param(n.m, k)->grad[i] = 0.01f * (float)(i % 7) - 0.02f;
        av_optim_step(n.m, &adam);
    }
    return n;
}

/* 1 if a and b have bit-identical parameters, buffers, optimizer state and step */
static int same_model(const av_model *a, const av_model *b) {
    int k, s, same = av_model_step(a) == av_model_step(b);
    for (k = 0; k < av_model_count(a); k++) {
        const av_tensor *p = av_model_param(a, k);
        float *x = (float *)malloc(p->size * sizeof(float)), *y = (float *)malloc(p->size * sizeof(float));
        same &= memcmp(p->data, av_model_param(b, k)->data, p->size * sizeof(float)) == 0;
        for (s = 0; s < 2; s++) {
            av_optim_state_get(a, p->name, s, x, p->size);
            av_optim_state_get(b, p->name, s, y, p->size);
            same &= memcmp(x, y, p->size * sizeof(float)) == 0;
        }
        free(x);
        free(y);
    }
    for (k = 0; k < av_model_buffer_count(a); k++)
        same &= memcmp(av_model_buffer(a, k)->data, av_model_buffer(b, k)->data, av_model_buffer(a, k)->size * sizeof(float)) == 0;
    return same;
}

static void test_broadcast(void) {
    net mine = rank_model(rank), want = rank_model(0);
    av_mpi *d = av_mpi_new(mine.m, MPI_COMM_WORLD, 0);
    CHECK(d != NULL, "%s", av_error());
    CHECK(size == 1 || rank == 0 || !same_model(mine.m, want.m), "the models are equal before the broadcast");
    CHECK(av_mpi_broadcast(d) == 0, "%s", av_error());
    CHECK(same_model(mine.m, want.m), "rank %d's model is not rank 0's after the broadcast", rank);
    av_mpi_free(d);
    av_model_free(mine.m);
    av_model_free(want.m);
}

static void test_save_load(void) {
    char path[1024], bad[1100], mine_path[1100];
    net mine = rank_model(rank), want = rank_model(0), fresh = net_new(55), other = net_new(56);
    av_mpi *d = av_mpi_new(mine.m, MPI_COMM_WORLD, 0), *df;
    snprintf(path, sizeof path, "%s/ckpt.safetensors", tmpdir);
    snprintf(mine_path, sizeof mine_path, "%s/rank%d.safetensors", tmpdir, rank);
    snprintf(bad, sizeof bad, "%s/no/such/dir/ckpt.safetensors", tmpdir);
    if (rank == 0) remove(path);
    MPI_Barrier(MPI_COMM_WORLD);
    /* only rank 0's path is used: the others name one that cannot be written */
    CHECK(av_mpi_checkpoint_save(d, rank == 0 ? path : bad) == 0, "checkpoint save: %s", av_error());
    CHECK(av_checkpoint_load(fresh.m, path) == 0, "reading rank 0's checkpoint: %s", av_error());
    CHECK(same_model(fresh.m, want.m), "the checkpoint does not hold rank 0's model");
    /* a failure on rank 0 is every rank's, with rank 0's message */
    CHECK(av_mpi_model_save(d, rank == 0 ? bad : path) == AV_ERR_IO && strncmp(av_error(), "rank 0: ", 8) == 0 &&
              strstr(av_error(), "no/such/dir"),
          "a failed save: code %d, '%s'", av_error_code(), av_error());
    /* loads: rank 0 reads, every rank gets the model (the others name no file) */
    df = av_mpi_new(other.m, MPI_COMM_WORLD, 0);
    CHECK(av_mpi_checkpoint_load(df, rank == 0 ? path : NULL) == 0, "checkpoint load: %s", av_error());
    CHECK(same_model(other.m, want.m), "rank %d: the loaded checkpoint is not rank 0's model", rank);
    CHECK(av_mpi_model_load(df, rank == 0 ? bad : NULL) == AV_ERR_IO && strncmp(av_error(), "rank 0: ", 8) == 0,
          "a failed load: code %d, '%s'", av_error_code(), av_error());
    CHECK(same_model(other.m, want.m), "a failed load changed the model");
    /* a model save by rank 0 writes no optimizer state; no other rank writes */
    CHECK(av_mpi_model_save(d, rank == 0 ? mine_path : bad) == 0, "model save: %s", av_error());
    MPI_Barrier(MPI_COMM_WORLD);
    {
        FILE *f = fopen(mine_path, "rb");
        CHECK((f != NULL) == (rank == 0), "rank %d: %s %s", rank, mine_path, f ? "exists" : "is missing");
        if (f) fclose(f);
    }
    av_mpi_free(d);
    av_mpi_free(df);
    av_model_free(mine.m);
    av_model_free(want.m);
    av_model_free(fresh.m);
    av_model_free(other.m);
}

/* ---- 6. identical parameters after N steps ---- */
static void test_identical_after_steps(void) {
    const int steps = 20, n_examples = 4 * B * size;
    net n = net_new(21 + (uint64_t)rank); /* different starts: the broadcast makes them equal */
    av_ctx *c = av_ctx_new();
    av_mpi *d = av_mpi_new(n.m, MPI_COMM_WORLD, 200);
    av_optim adam = av_adam(0.01);
    av_sampler s;
    data all;
    float *start, *root;
    int step, k, differ = 0, moved = 0, total = 0;
    tr_state = 0xfeed;
    all = data_new(n_examples);
    CHECK(av_mpi_broadcast(d) == 0, "%s", av_error());
    for (k = 0; k < NPARAM; k++) total += av_model_param(n.m, k)->size;
    start = (float *)malloc(total * sizeof(float));
    root = (float *)malloc(total * sizeof(float));
    for (k = 0, total = 0; k < NPARAM; total += av_model_param(n.m, k)->size, k++)
        memcpy(start + total, av_model_param(n.m, k)->data, av_model_param(n.m, k)->size * sizeof(float));
    CHECK(av_sampler_init(&s, n_examples, B, rank, size, 3) == 0, "sampler");
    for (step = 0; step < steps; step++) {
        av_shard sh;
        float *x, *t;
        int i;
        if (step % av_sampler_steps(&s) == 0) av_sampler_set_epoch(&s, step / av_sampler_steps(&s));
        sh = av_sampler_shard(&s, step % av_sampler_steps(&s));
        x = (float *)malloc((size_t)sh.count * D * sizeof(float) + 1);
        t = (float *)malloc((size_t)sh.count * O * sizeof(float) + 1);
        for (i = 0; i < sh.count; i++) {
            memcpy(x + i * D, all.x + sh.index[i] * D, D * sizeof(float));
            memcpy(t + i * O, all.t + sh.index[i] * O, O * sizeof(float));
        }
        av_ctx_reset(c);
        av_model_zero_grad(n.m);
        CHECK(av_mpi_backward(d, c, net_loss(c, &n, x, t, sh.count), sh.count) == 0, "%s", av_error());
        CHECK(av_optim_step(n.m, &adam) == 0, "%s", av_error());
        free(x);
        free(t);
    }
    for (k = 0, total = 0; k < NPARAM; total += av_model_param(n.m, k)->size, k++) {
        const av_tensor *p = av_model_param(n.m, k);
        int i;
        memcpy(root + total, p->data, p->size * sizeof(float));
        for (i = 0; i < p->size; i++) moved += p->data[i] != start[total + i];
    }
    MPI_Bcast(root, total, MPI_FLOAT, 0, MPI_COMM_WORLD); /* rank 0's values, by plain MPI */
    for (k = 0, total = 0; k < NPARAM; total += av_model_param(n.m, k)->size, k++)
        differ += memcmp(root + total, av_model_param(n.m, k)->data, av_model_param(n.m, k)->size * sizeof(float)) != 0;
    CHECK(differ == 0, "rank %d: %d parameters differ from rank 0's after %d steps", rank, differ, steps);
    CHECK(moved > total / 2, "only %d of %d values moved in %d steps", moved, total, steps);
    free(start);
    free(root);
    av_sampler_free(&s);
    data_free(&all);
    av_mpi_free(d);
    av_ctx_free(c);
    av_model_free(n.m);
}

int main(int argc, char **argv) {
    int counts[2], totals[2];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc > 1) tmpdir = argv[1];
    test_sampler();
    test_check();
    test_mismatch();
    one_step(0, 0);
    one_step(1, 0);
    one_step(200, 0);
    one_step(0, 1);
    one_step(1, 1);
    test_unequal_counts(0);
    test_unequal_counts(1);
    test_all_zero_counts();
    test_broadcast();
    test_save_load();
    test_identical_after_steps();
    counts[0] = t_passed;
    counts[1] = t_failed;
    MPI_Allreduce(counts, totals, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    t_passed = totals[0]; /* every rank's checks, summed up by rank 0 */
    t_failed = totals[1];
    if (rank == 0) printf("info: %d ranks\n", size);
    MPI_Finalize();
    return rank == 0 ? t_summary() : t_failed ? 1 : 0;
}
