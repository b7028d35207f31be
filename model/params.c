/* params.c - the parameter store and AdamW (see moeh_params.h). */
#include "moeh_params.h"

#include <math.h>
#include <string.h>
#include <xxhash.h>

void moeh_params_init(moeh_params_t *p)
{
    memset(p, 0, sizeof *p);
}

void moeh_params_free(moeh_params_t *p)
{
    if (!p) return;
    free(p->w);
    free(p->g);
    free(p->m);
    free(p->v);
    free(p->views);
    moeh_params_init(p);
}

int moeh_params_group_index(const moeh_params_t *p, const char *group)
{
    for (size_t i = 0; i < p->n_groups; i++)
        if (strcmp(p->group_names[i], group) == 0) return (int)i;
    return -ENOENT;
}

int moeh_params_find(const moeh_params_t *p, const char *name)
{
    for (size_t i = 0; i < p->n_views; i++)
        if (strcmp(p->views[i].name, name) == 0) return (int)i;
    return -ENOENT;
}

int moeh_params_add(moeh_params_t *p, const char *name, const char *group, size_t ndim,
                    const size_t *shape)
{
    if (p->finalized || ndim == 0 || ndim > MOEH_PARAM_MAX_DIMS ||
        strlen(name) >= MOEH_PARAM_NAME_MAX || strlen(group) >= MOEH_GROUP_NAME_MAX ||
        moeh_params_find(p, name) >= 0)
        return -EINVAL;
    int gi = moeh_params_group_index(p, group);
    if (gi < 0) {
        if (p->n_groups == MOEH_MAX_GROUPS) return -ENOSPC;
        gi = (int)p->n_groups++;
        snprintf(p->group_names[gi], MOEH_GROUP_NAME_MAX, "%s", group);
    }
    if (p->n_views == p->cap_views) {
        size_t cap = p->cap_views ? p->cap_views * 2 : 16;
        moeh_param_view_t *nv = realloc(p->views, cap * sizeof *nv);
        if (!nv) return -ENOMEM;
        p->views = nv;
        p->cap_views = cap;
    }
    moeh_param_view_t *v = &p->views[p->n_views];
    memset(v, 0, sizeof *v);
    snprintf(v->name, sizeof v->name, "%s", name);
    v->group = (uint32_t)gi;
    v->ndim = ndim;
    v->numel = 1;
    for (size_t i = 0; i < ndim; i++) {
        if (shape[i] == 0) return -EINVAL;
        v->shape[i] = shape[i];
        v->numel *= shape[i];
    }
    return (int)p->n_views++;
}

static float *alloc_floats(size_t n)
{
    size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
    float *x = aligned_alloc(64, bytes ? bytes : 64);
    if (x) memset(x, 0, bytes ? bytes : 64);
    return x;
}

int moeh_params_finalize(moeh_params_t *p)
{
    if (p->finalized) return -EINVAL;
    size_t off = 0;
    for (size_t g = 0; g < p->n_groups; g++) {
        p->group_off[g] = off;
        for (size_t i = 0; i < p->n_views; i++)
            if (p->views[i].group == g) {
                p->views[i].offset = off;
                off += p->views[i].numel;
            }
        p->group_len[g] = off - p->group_off[g];
    }
    p->n = off;
    p->w = alloc_floats(off);
    p->g = alloc_floats(off);
    p->m = alloc_floats(off);
    p->v = alloc_floats(off);
    if (!p->w || !p->g || !p->m || !p->v) return -ENOMEM;
    p->finalized = 1;
    return 0;
}

uint64_t moeh_params_spec_hash(const moeh_params_t *p)
{
    XXH64_state_t *st = XXH64_createState();
    MOEH_ASSERT(st);
    XXH64_reset(st, 0x6d6f6568);
    for (size_t i = 0; i < p->n_views; i++) {
        const moeh_param_view_t *v = &p->views[i];
        XXH64_update(st, v->name, strlen(v->name) + 1);
        XXH64_update(st, p->group_names[v->group], strlen(p->group_names[v->group]) + 1);
        uint64_t dims[MOEH_PARAM_MAX_DIMS + 2] = {v->ndim, v->offset};
        for (size_t d = 0; d < v->ndim; d++)
            dims[2 + d] = v->shape[d];
        XXH64_update(st, dims, sizeof dims);
    }
    uint64_t h = XXH64_digest(st);
    XXH64_freeState(st);
    return h;
}

void moeh_params_zero_grad(moeh_params_t *p)
{
    memset(p->g, 0, p->n * sizeof(float));
}

moeh_adamw_cfg_t moeh_adamw_defaults(void)
{
    return (moeh_adamw_cfg_t){.lr = 1e-3f,
                              .beta1 = 0.9f,
                              .beta2 = 0.999f,
                              .eps = 1e-8f,
                              .weight_decay = 1e-2f,
                              .clip = 0.0f};
}

void moeh_adamw_reset(moeh_params_t *p)
{
    memset(p->m, 0, p->n * sizeof(float));
    memset(p->v, 0, p->n * sizeof(float));
}

void moeh_adamw_step(moeh_params_t *p, const moeh_adamw_cfg_t *c, uint64_t step)
{
    MOEH_ASSERT(step >= 1);
    float scale = 1.0f;
    if (c->clip > 0) {
        double ss = 0;
        for (size_t i = 0; i < p->n; i++)
            ss += (double)p->g[i] * p->g[i];
        double norm = sqrt(ss);
        if (norm > c->clip) scale = (float)(c->clip / norm);
    }
    float bc1 = 1.0f - powf(c->beta1, (float)step), bc2 = 1.0f - powf(c->beta2, (float)step);
    float *restrict w = p->w, *restrict m = p->m, *restrict v = p->v;
    const float *restrict g = p->g;
    for (size_t i = 0; i < p->n; i++) {
        float gi = g[i] * scale;
        m[i] = c->beta1 * m[i] + (1.0f - c->beta1) * gi;
        v[i] = c->beta2 * v[i] + (1.0f - c->beta2) * gi * gi;
        float mh = m[i] / bc1, vh = v[i] / bc2;
        w[i] -= c->lr * (mh / (sqrtf(vh) + c->eps) + c->weight_decay * w[i]);
    }
}
