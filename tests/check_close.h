/* A float result against a double reference, for tests/test_*.c after
   test.h: max |got - want| <= tol * max(|want|, 1e-2), one CHECK per array. */
#ifndef CHECK_CLOSE_H
#define CHECK_CLOSE_H
#include <math.h>

static void check_close(const char *what, const float *got, const double *want, int n, double tol) {
    double largest = 1e-2, worst = 0;
    int i, at = 0, nan = 0;
    for (i = 0; i < n; i++) largest = fabs(want[i]) > largest ? fabs(want[i]) : largest;
    for (i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        nan |= got[i] != got[i];
        if (e > worst) { worst = e; at = i; }
    }
    CHECK(!nan && worst <= tol * largest, "%s: off by %.3g at [%d] (got %.9g, want %.9g; largest %.3g)", what, worst, at,
          n ? got[at] : 0.0, n ? want[at] : 0.0, largest);
}

#endif
