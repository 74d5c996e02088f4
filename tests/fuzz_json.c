/* libFuzzer target (make fuzz): the JSON parser of the safetensors header on
   any bytes. A parse that succeeds must give a well-formed token tree: each
   container's children fill exactly the tokens up to its `next`, strings
   are NUL-terminated inside the input and valid UTF-8, numbers lie inside
   the input. */
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include <stdlib.h>

#define REQUIRE(cond) do { if (!(cond)) { fprintf(stderr, "fuzz_json: %s\n", #cond); abort(); } } while (0)

/* Checks the subtree at token t; returns the token after it. */
static int check_tree(const av__json *j, int t, const char *buf, size_t size) {
    const av__json_tok *k = &j->tok[t];
    int c = t + 1, i;
    REQUIRE(t < j->n && k->next > t && k->next <= j->n);
    switch (k->type) {
    case AV__J_STR:
        REQUIRE(k->s >= buf && k->s + strlen(k->s) < buf + size && av__st_utf8_ok(k->s));
        break;
    case AV__J_NUM:
        REQUIRE(k->len > 0 && k->s >= buf && k->s + k->len <= buf + size);
        break;
    case AV__J_ARR: case AV__J_OBJ:
        for (i = 0; i < k->n; i++) {
            if (k->type == AV__J_OBJ) {
                REQUIRE(j->tok[c].type == AV__J_STR);
                c = check_tree(j, c, buf, size);
            }
            c = check_tree(j, c, buf, size);
        }
        break;
    default:
        REQUIRE(k->type == AV__J_NULL || k->type == AV__J_BOOL);
    }
    REQUIRE(c == k->next);
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = (char *)malloc(size + 1);
    av__json j;
    if (!buf) return 0;
    memcpy(buf, data, size);
    if (av__json_parse(&j, buf, size) == 0) {
        REQUIRE(j.n > 0 && check_tree(&j, 0, buf, size) == j.n);
    } else {
        REQUIRE(j.err != NULL && j.p >= j.start && j.p <= j.end);
    }
    free(j.tok);
    free(buf);
    return 0;
}
