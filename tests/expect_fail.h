/* expect_fail.h - programming errors under test. Include after attnvae.h
   and test.h. EXPECT_FAIL(what, stmt, needle1, needle2) runs stmt with an
   abort handler that jumps back here, and checks that an error was reported
   and that its message holds both needles (op names, shapes). Messages still
   go to stderr. */
#ifndef AV_EXPECT_FAIL_H
#define AV_EXPECT_FAIL_H
#include <setjmp.h>

static jmp_buf ef_jmp;
static char ef_msg[600];
static void ef_on_abort(const char *msg) {
    strncpy(ef_msg, msg, sizeof ef_msg - 1);
    ef_msg[sizeof ef_msg - 1] = 0;
    longjmp(ef_jmp, 1);
}

#define EXPECT_FAIL(what, stmt, needle1, needle2)                                                       \
    do {                                                                                                \
        ef_msg[0] = 0;                                                                                  \
        av_set_abort_handler(ef_on_abort);                                                              \
        if (setjmp(ef_jmp) == 0) {                                                                      \
            stmt;                                                                                       \
            CHECK(0, "%s: no error reported", what);                                                    \
        } else {                                                                                        \
            CHECK(strstr(ef_msg, needle1) && strstr(ef_msg, needle2), "%s: message \"%s\" lacks \"%s\" / \"%s\"", \
                  what, ef_msg, needle1, needle2);                                                      \
        }                                                                                               \
        av_set_abort_handler(NULL);                                                                     \
    } while (0)
#endif
