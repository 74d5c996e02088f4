/* test_alloc.c - out of memory in the model, the optimizer and the model
   files, through a failing allocator (AV_MALLOC, AV_REALLOC and AV_FREE
   defined together): sizes that come from the caller's shapes or from a
   file give AV_ERR_NOMEM, never an abort, and lose nothing. Every
   allocation is counted, so each test also checks for leaks.
   Built with ATTNVAE_STATIC too, so that a -Wall -O2 -Werror build of a
   file that calls the model loader stays clean with static functions. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* The allocator: refuses blocks over t_limit bytes, and the t_fail_at-th
   call from now (counting from 0) when t_fail_at >= 0. */
static size_t t_limit = (size_t)1 << 26;
static long t_fail_at = -1, t_calls, t_live;
static int t_refuse(size_t n) { return n > t_limit || (t_fail_at >= 0 && t_calls++ == t_fail_at); }
static void *t_malloc(size_t n) {
    void *p = t_refuse(n) ? NULL : malloc(n);
    t_live += p != NULL;
    return p;
}
static void *t_realloc(void *p, size_t n) {
    void *q = t_refuse(n) ? NULL : realloc(p, n);
    t_live += q && !p;
    return q;
}
static void t_free(void *p) {
    t_live -= p != NULL;
    free(p);
}
static void t_fail_from_now(long k) { t_fail_at = k; t_calls = 0; }

#define ATTNVAE_STATIC
#define AV_MALLOC(n) t_malloc(n)
#define AV_REALLOC(p, n) t_realloc(p, n)
#define AV_FREE(p) t_free(p)
#define ATTNVAE_IMPLEMENTATION
#include "../attnvae.h"
#include "test.h"

static const char *dir = "build";
static char path_buf[3][512];
static const char *tpath(int k, const char *name) {
    snprintf(path_buf[k], sizeof path_buf[k], "%s/%s", dir, name);
    return path_buf[k];
}
static int exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

static av_model *small_model(void) {
    av_model *m = av_model_new(1);
    av_param(m, "fc.weight", AV_INIT_TORCH_LINEAR, 0, 2, 3, 4);
    av_param(m, "fc.bias", AV_INIT_UNIFORM, 0.5f, 1, 3);
    av_buffer(m, "bn.running_mean", AV_INIT_NORMAL, 1.0f, 1, 3);
    return m;
}

static int same_values(const av_model *a, const av_model *b) {
    int i, ok = av_model_count(a) == av_model_count(b) && av_model_buffer_count(a) == av_model_buffer_count(b);
    for (i = 0; ok && i < av_model_count(a) + av_model_buffer_count(a); i++) {
        const av_tensor *p = i < av_model_count(a) ? av_model_param(a, i) : av_model_buffer(a, i - av_model_count(a));
        const av_tensor *q = av_model_find(b, p->name);
        ok = q && q->size == p->size && !memcmp(p->data, q->data, (size_t)p->size * sizeof(float));
    }
    return ok;
}

static void set_grads(av_model *m, float v) {
    int i, j;
    for (i = 0; i < av_model_count(m); i++)
        for (j = 0; j < av_model_param(m, i)->size; j++) av_model_param(m, i)->grad[j] = v * (float)(j + 1);
}

/* A shape too large for memory: NULL, a message, and a model that refuses
   to train or be written or read, naming the lost tensor. */
static void test_too_large(int buffer) {
    const char *file = tpath(0, "alloc_big.safetensors"), *kind = buffer ? "av_buffer" : "av_param";
    long live0 = t_live;
    av_model *m = small_model();
    av_tensor *t;
    av_optim o = av_adam(0.01);
    long live = t_live;
    int rc;
    remove(file);
    av_clear_error();
    t = buffer ? av_buffer(m, "huge", AV_INIT_ZEROS, 0, 2, 100000, 1000) : av_param(m, "huge", AV_INIT_ZEROS, 0, 2, 100000, 1000);
    CHECK(t == NULL && av_error_code() == AV_ERR_NOMEM, "%s of 400 MB: %p, error %d", kind, (void *)t, av_error_code());
    CHECK(strstr(av_error(), kind) && strstr(av_error(), "'huge'") && strstr(av_error(), "out of memory"),
          "%s: message \"%s\"", kind, av_error());
    CHECK(av_model_error(m) == AV_ERR_NOMEM && av_model_find(m, "huge") == NULL && av_model_count(m) == 2 &&
          av_model_buffer_count(m) == 1 && t_live == live, "%s: the model after a failed tensor", kind);
    set_grads(m, 0.1f);
    rc = av_optim_step(m, &o);
    CHECK(rc == AV_ERR_NOMEM && strstr(av_error(), "av_optim_step") && strstr(av_error(), "'huge'") && av_model_step(m) == 0,
          "%s: step: rc %d \"%s\"", kind, rc, av_error());
    rc = av_model_save(m, file);
    CHECK(rc == AV_ERR_NOMEM && strstr(av_error(), "'huge'") && !exists(file), "%s: save: rc %d \"%s\"", kind, rc, av_error());
    rc = av_checkpoint_save(m, file);
    CHECK(rc == AV_ERR_NOMEM && !exists(file), "%s: checkpoint save: rc %d \"%s\"", kind, rc, av_error());
    rc = av_model_load(m, file);
    CHECK(rc == AV_ERR_NOMEM && strstr(av_error(), "'huge'"), "%s: load: rc %d \"%s\"", kind, rc, av_error());
    /* the first error stays; later tensors still work */
    CHECK(av_param(m, "later", AV_INIT_ONES, 0, 1, 2) != NULL && av_model_error(m) == AV_ERR_NOMEM, "%s: a later tensor", kind);
    av_model_free(m);
    CHECK(t_live == live0, "%s: %ld blocks leaked", kind, t_live - live0);
}

/* Each allocation of av_param / av_buffer failing in turn, with the 17th
   tensor (the list grows): NULL and AV_ERR_NOMEM, the tensors made before
   untouched, no leak. */
static void test_each_allocation(int buffer) {
    long live0 = t_live, k;
    int failures = 0, i;
    for (k = 0;; k++) {
        av_model *m = av_model_new(7), *ref = av_model_new(7);
        av_tensor *t;
        char name[32];
        for (i = 0; i < 16; i++) {
            snprintf(name, sizeof name, "p%d", i);
            av_param(m, name, AV_INIT_NORMAL, 1.0f, 1, 5);
            av_param(ref, name, AV_INIT_NORMAL, 1.0f, 1, 5);
        }
        t_fail_from_now(k);
        t = buffer ? av_buffer(m, "new", AV_INIT_ONES, 0, 2, 5, 7) : av_param(m, "new", AV_INIT_ONES, 0, 2, 5, 7);
        t_fail_from_now(-1);
        if (t) {
            CHECK(t->size == 35 && t->data[34] == 1.0f && av_model_error(m) == AV_OK && av_model_find(m, "new") == t,
                  "the tensor made once memory was there");
            av_model_free(m);
            av_model_free(ref);
            break;
        }
        failures++;
        CHECK(av_error_code() == AV_ERR_NOMEM && av_model_error(m) == AV_ERR_NOMEM && same_values(m, ref),
              "allocation %ld failing: error %d (%s)", k, av_error_code(), av_error());
        av_model_free(m);
        av_model_free(ref);
        CHECK(t_live == live0, "allocation %ld failing: %ld blocks leaked", k, t_live - live0);
    }
    CHECK(failures >= (buffer ? 4 : 5), "only %d allocations could fail", failures);
}

static void test_small_allocations(void) {
    av_model *m;
    float st[3] = {1, 2, 3};
    t_fail_from_now(0);
    m = av_model_new(1);
    t_fail_from_now(-1);
    CHECK(m == NULL && av_error_code() == AV_ERR_NOMEM, "av_model_new out of memory: %p", (void *)m);
    m = small_model();
    t_fail_from_now(0);
    CHECK(av_model_add_group(m, 1, 0) == AV_ERR_NOMEM, "av_model_add_group out of memory: %s", av_error());
    t_fail_from_now(0);
    CHECK(av_optim_state_set(m, "fc.bias", AV_STATE_M, st, 3) == AV_ERR_NOMEM, "av_optim_state_set out of memory: %s",
          av_error());
    t_fail_from_now(-1);
    CHECK(av_model_add_group(m, 1, 0) == 1 && av_optim_state_set(m, "fc.bias", AV_STATE_M, st, 3) == AV_OK,
          "after memory came back: %s", av_error());
    av_model_free(m);
}

/* The optimizer's state is made on the first step: each of its allocations
   failing refuses the step and changes nothing; a step that then succeeds
   gives what a run that never failed gives, bit for bit. */
static void test_step_state(int kind) {
    long live0 = t_live, k;
    av_model *ref = small_model(), *untouched = small_model(), *m = NULL;
    av_optim o = kind == AV_OPT_SGD ? av_sgd(0.1, 0.9, 0.01) : av_adamw(0.01, 0.1);
    int rc, failures = 0;
    set_grads(ref, 0.5f);
    CHECK(av_optim_step(ref, &o) == AV_OK && av_optim_step(ref, &o) == AV_OK, "reference steps: %s", av_error());
    for (k = 0;; k++) {
        av_model_free(m);
        m = small_model();
        set_grads(m, 0.5f);
        t_fail_from_now(k);
        rc = av_optim_step(m, &o);
        t_fail_from_now(-1);
        if (rc == AV_OK) break;
        failures++;
        CHECK(rc == AV_ERR_NOMEM && strstr(av_error(), "optimizer state") && av_model_step(m) == 0 && same_values(m, untouched),
              "state allocation %ld failing: rc %d (%s)", k, rc, av_error());
        CHECK(av_optim_step(m, &o) == AV_OK && av_optim_step(m, &o) == AV_OK && same_values(m, ref),
              "steps after a failed one differ from a clean run");
    }
    CHECK(failures == (kind == AV_OPT_SGD ? 2 : 4), "%d state allocations failed, want one per state buffer", failures);
    av_model_free(m);
    av_model_free(ref);
    av_model_free(untouched);
    CHECK(t_live == live0, "step state: %ld blocks leaked", t_live - live0);
}

/* Saves: each allocation failing in turn gives an error and no file (nor a
   temporary one); loads: an error and an untouched model. */
static void test_files(int with_state) {
    const char *file = tpath(0, "alloc_model.safetensors"), *tmp = tpath(1, "alloc_model.safetensors.tmp");
    long live0 = t_live, k;
    av_model *src = small_model(), *dst = av_model_new(99), *untouched = av_model_new(99);
    av_optim o = av_adam(0.01);
    int rc, failures;
    av_model *both[2];
    int i;
    both[0] = dst;
    both[1] = untouched;
    for (i = 0; i < 2; i++) {
        av_param(both[i], "fc.weight", AV_INIT_ZEROS, 0, 2, 3, 4);
        av_param(both[i], "fc.bias", AV_INIT_ZEROS, 0, 1, 3);
        av_buffer(both[i], "bn.running_mean", AV_INIT_ZEROS, 0, 1, 3);
    }
    set_grads(src, 0.25f);
    av_optim_step(src, &o);
    av_optim_step(src, &o);
    /* the first two allocations are the list of tensors and their names;
       av_st_save's own are tested with it */
    for (k = 0; k < 2; k++) {
        remove(file);
        t_fail_from_now(k);
        rc = with_state ? av_checkpoint_save(src, file) : av_model_save(src, file);
        t_fail_from_now(-1);
        CHECK(rc == AV_ERR_NOMEM && !exists(file) && !exists(tmp), "save, allocation %ld failing: rc %d (%s)", k, rc, av_error());
    }
    rc = with_state ? av_checkpoint_save(src, file) : av_model_save(src, file);
    CHECK(rc == AV_OK, "save: %s", av_error());
    for (k = 0, failures = 0;; k++) {
        t_fail_from_now(k);
        rc = with_state ? av_checkpoint_load(dst, file) : av_model_load(dst, file);
        t_fail_from_now(-1);
        if (rc == AV_OK) break;
        failures++;
        CHECK(rc == AV_ERR_NOMEM && same_values(dst, untouched) && av_model_step(dst) == 0,
              "load, allocation %ld failing: rc %d (%s)", k, rc, av_error());
    }
    CHECK(failures >= (with_state ? 4 : 2), "load: %d allocations could fail", failures);
    CHECK(same_values(dst, src) && av_model_step(dst) == (with_state ? 2 : 0), "the load that succeeded");
    if (with_state) { /* the loaded state continues the run exactly */
        set_grads(dst, 0.25f);
        av_optim_step(src, &o);
        av_optim_step(dst, &o);
        CHECK(same_values(dst, src), "resumed after failed checkpoint loads");
    }
    remove(file);
    av_model_free(src);
    av_model_free(dst);
    av_model_free(untouched);
    CHECK(t_live == live0, "files: %ld blocks leaked", t_live - live0);
}

int main(int argc, char **argv) {
    if (argc > 1) dir = argv[1];
    test_too_large(0);
    test_too_large(1);
    test_each_allocation(0);
    test_each_allocation(1);
    test_small_allocations();
    test_step_state(AV_OPT_SGD);
    test_step_state(AV_OPT_ADAMW);
    test_files(0);
    test_files(1);
    CHECK(t_live == 0, "%ld blocks still allocated at the end", t_live);
    return t_summary();
}
