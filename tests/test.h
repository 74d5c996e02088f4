/* Tiny test harness shared by the test programs. Each program prints one
   line per failure and ends with "N passed, M failed"; `make test` sums them. */
#ifndef AV_TEST_H
#define AV_TEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_passed, t_failed;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) t_passed++;                                              \
        else {                                                             \
            t_failed++;                                                    \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                    \
            printf(__VA_ARGS__);                                           \
            printf("\n");                                                  \
        }                                                                  \
    } while (0)

/* |got - want| <= atol + rtol*|want| */
#define CHECK_CLOSE(got, want, atol, rtol, what)                           \
    do {                                                                   \
        double g_ = (got), w_ = (want);                                    \
        CHECK(fabs(g_ - w_) <= (atol) + (rtol) * fabs(w_),                 \
              "%s: got %.9g want %.9g", (what), g_, w_);                   \
    } while (0)

static int t_summary(void) {
    printf("%d passed, %d failed\n", t_passed, t_failed);
    return t_failed ? 1 : 0;
}
#endif
