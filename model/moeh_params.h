/* moeh_params.h - the parameter store: one contiguous buffer each for parameters, gradients
 * and the two AdamW moments, with named views (name, offset, shape) tagged by aggregation group.
 *
 * Build phase: moeh_params_add() declares tensors; moeh_params_finalize() lays them out
 * group-major (each group is one contiguous range [group_off, group_off + group_len), so the
 * federation can aggregate a group as one slice) and allocates the four buffers, zeroed.
 * After finalize the layout never changes: forward/backward/optimiser code keeps raw pointers. */
#ifndef MOEH_PARAMS_H
#define MOEH_PARAMS_H

#include "moeh_common.h"

#define MOEH_PARAM_NAME_MAX 64
#define MOEH_GROUP_NAME_MAX 32
#define MOEH_MAX_GROUPS 32
#define MOEH_PARAM_MAX_DIMS 4

typedef struct {
    char name[MOEH_PARAM_NAME_MAX];
    uint32_t group;
    size_t offset; /* in floats, valid after finalize */
    size_t numel;
    size_t ndim;
    size_t shape[MOEH_PARAM_MAX_DIMS];
} moeh_param_view_t;

typedef struct {
    size_t n;             /* total floats */
    float *w, *g, *m, *v; /* parameters, gradients, AdamW first and second moments */
    size_t n_views, cap_views;
    moeh_param_view_t *views;
    size_t n_groups;
    char group_names[MOEH_MAX_GROUPS][MOEH_GROUP_NAME_MAX];
    size_t group_off[MOEH_MAX_GROUPS], group_len[MOEH_MAX_GROUPS];
    int finalized;
} moeh_params_t;

/* Initialises an empty store (no allocation yet). */
void moeh_params_init(moeh_params_t *p);
/* Frees everything the store owns; safe on an initialised or already-freed store. */
void moeh_params_free(moeh_params_t *p);

/* Declares a tensor of the given shape in the named group (created on first use).
 * Returns the view index (>= 0) or -EINVAL / -ENOMEM / -ENOSPC (too many groups). */
int moeh_params_add(moeh_params_t *p, const char *name, const char *group, size_t ndim,
                    const size_t *shape);
/* Lays out and allocates the buffers (64-byte aligned, zeroed). 0 or -ENOMEM. */
int moeh_params_finalize(moeh_params_t *p);

/* Pointers into the buffers for view i (after finalize). */
static inline float *moeh_params_w(const moeh_params_t *p, int i)
{
    return p->w + p->views[i].offset;
}
static inline float *moeh_params_g(const moeh_params_t *p, int i)
{
    return p->g + p->views[i].offset;
}

/* Index of the view or group with that name, or -ENOENT. */
int moeh_params_find(const moeh_params_t *p, const char *name);
int moeh_params_group_index(const moeh_params_t *p, const char *group);

/* 64-bit hash of the layout (names, groups, shapes, order): two stores with the same hash
 * can exchange flat parameter vectors. */
uint64_t moeh_params_spec_hash(const moeh_params_t *p);

void moeh_params_zero_grad(moeh_params_t *p);

/* AdamW (decoupled weight decay, Loshchilov & Hutter 2019) over the whole flat buffer.
 * step is 1-based. If clip > 0, gradients are first scaled so their global L2 norm <= clip. */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay, clip;
} moeh_adamw_cfg_t;
moeh_adamw_cfg_t moeh_adamw_defaults(void);
void moeh_adamw_step(moeh_params_t *p, const moeh_adamw_cfg_t *cfg, uint64_t step);
/* Resets the moments (after the parameters were replaced by a new global model). */
void moeh_adamw_reset(moeh_params_t *p);

#endif
