/* ======================================================================= */
/* model files                                                             */
/* ======================================================================= */
/* Parameters are stored under their names; a checkpoint adds the optimizer
   moments as "optim.m.<name>" / "optim.v.<name>" and the step as metadata. */
static const char *const av__state_prefix[2] = {"optim.m.", "optim.v."};

static int av__model_write(const av_model *m, const char *path, int with_state) {
    int n = 0, i, k, rc;
    char step[32], **names = NULL;
    const char *keys[3] = {"format", "version", "step"}, *values[3];
    av_st_item *items = (av_st_item *)av__xcalloc((size_t)m->n * 3 + 1, sizeof(av_st_item), "a save list");
    if (with_state) names = (char **)av__xcalloc((size_t)m->n * 2 + 1, sizeof(char *), "a save list");
    for (i = 0; i < m->n; i++) {
        const av_tensor *t = m->params[i];
        items[n].name = t->name; items[n].ndim = t->ndim; items[n].shape = t->shape; items[n].data = t->data;
        n++;
        for (k = 0; with_state && k < 2; k++) {
            const float *state = k ? m->v[i] : m->m[i];
            size_t len = strlen(av__state_prefix[k]) + strlen(t->name) + 1;
            if (!state) continue;
            names[2 * i + k] = (char *)av__xcalloc(len, 1, "a state name");
            snprintf(names[2 * i + k], len, "%s%s", av__state_prefix[k], t->name);
            items[n].name = names[2 * i + k]; items[n].ndim = t->ndim; items[n].shape = t->shape;
            items[n].data = state;
            n++;
        }
    }
    snprintf(step, sizeof step, "%ld", m->step);
    values[0] = with_state ? "attnvae-checkpoint" : "attnvae-model";
    values[1] = ATTNVAE_VERSION;
    values[2] = step;
    rc = av_st_save(path, items, n, keys, values, with_state ? 3 : 2);
    for (i = 0; with_state && i < 2 * m->n; i++) AV_FREE(names[i]);
    AV_FREE(names);
    AV_FREE(items);
    return rc;
}

AVDEF int av_model_save(const av_model *m, const char *path) { return av__model_write(m, path, 0); }
AVDEF int av_checkpoint_save(const av_model *m, const char *path) { return av__model_write(m, path, 1); }

/* Which model tensor (and which slot: 0 value, 1 m, 2 v) a file entry fills, or -1. */
static int av__model_slot(const av_model *m, const char *name, int with_state, int *slot) {
    int i, k;
    for (i = 0; i < m->n; i++)
        if (strcmp(name, m->params[i]->name) == 0) { *slot = 0; return i; }
    for (k = 0; with_state && k < 2; k++) {
        size_t len = strlen(av__state_prefix[k]);
        if (strncmp(name, av__state_prefix[k], len) != 0) continue;
        for (i = 0; i < m->n; i++)
            if (strcmp(name + len, m->params[i]->name) == 0) { *slot = k + 1; return i; }
    }
    return -1;
}

/* Reads everything into fresh buffers first; the model changes only if the
   whole file fits it. */
static int av__model_read(av_model *m, const char *path, int with_state) {
    av_st_file *f = NULL;
    float **fresh;
    int rc = av_st_open(path, &f), i, k, slot, count;
    long step = 0;
    if (rc) return rc;
    count = av_st_count(f);
    fresh = (float **)av__xcalloc((size_t)m->n * 3 + 1, sizeof(float *), "a load list");
    for (i = 0; i < count && !rc; i++) {
        const char *name = av_st_name(f, i);
        int p = av__model_slot(m, name, with_state, &slot), d;
        const av_tensor *t;
        if (p < 0) { rc = av__set_error(AV_ERR_MISMATCH, "%s: unexpected tensor '%s' (not in the model)", path, name); break; }
        t = m->params[p];
        if (av_st_ndim(f, i) != t->ndim) rc = 1;
        for (d = 0; !rc && d < t->ndim; d++) rc = av_st_shape(f, i)[d] != t->shape[d];
        if (rc) {
            char s[64];
            rc = av__set_error(AV_ERR_MISMATCH, "%s: tensor '%s' has a different shape from the model's %s", path, name,
                               av__shape_str(t, s, sizeof s));
            break;
        }
        fresh[3 * p + slot] = (float *)av__xcalloc((size_t)t->size, sizeof(float), "loaded values");
        rc = av_st_read(f, i, fresh[3 * p + slot], t->size);
    }
    for (i = 0; i < m->n && !rc; i++)
        if (!fresh[3 * i]) rc = av__set_error(AV_ERR_MISMATCH, "%s: missing tensor '%s'", path, m->params[i]->name);
    if (!rc && with_state) {
        const char *s = av_st_meta(f, "step");
        char *end = NULL;
        step = s ? strtol(s, &end, 10) : -1;
        if (!s || end == s || *end || step < 0)
            rc = av__set_error(AV_ERR_FORMAT, "%s: checkpoint has no valid \"step\" in its metadata", path);
    }
    av_st_close(f);
    for (i = 0; i < m->n; i++)
        for (k = 0; k < 3; k++) {
            float **dst = k == 0 ? &m->params[i]->data : k == 1 ? &m->m[i] : &m->v[i];
            float *src = fresh[3 * i + k];
            if (rc || (!src && (k == 0 || !with_state))) { AV_FREE(src); continue; }
            AV_FREE(*dst); /* state missing from the checkpoint restarts from zero */
            *dst = src;
        }
    if (!rc && with_state) m->step = step;
    AV_FREE(fresh);
    return rc;
}

AVDEF int av_model_load(av_model *m, const char *path) { return av__model_read(m, path, 0); }
AVDEF int av_checkpoint_load(av_model *m, const char *path) { return av__model_read(m, path, 1); }
