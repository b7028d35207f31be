/* robust.c - the coordinator core's defences against poisoned statistics, updates and
 * evaluations (coord_internal.h; the checks themselves are the pure functions of
 * moeh_bounds.h and moeh_aggregate.h; docs/security.md says what each defends against, with
 * and without secure aggregation). */
#include "coord_internal.h"

#include "moeh_bounds.h"
#include "moeh_secsum.h"

#include <math.h>
#include <string.h>

void coord_bounds_refresh(coord_t *c)
{
    uint64_t *v = calloc(2 * (c->n_sites + 1), sizeof *v), *scratch = v + c->n_sites + 1;
    size_t n = 0;
    for (size_t i = 0; i < c->n_sites; i++) {
        site_t *s = &c->sites[i];
        s->reg_train = s->reg_test = s->reg_val = 0;
        if (c->io->site_limits) c->io->site_limits(c->io->ctx, s->id, &s->reg_train, &s->reg_test);
        if (c->io->site_val_limit) c->io->site_val_limit(c->io->ctx, s->id, &s->reg_val);
        if (v && s->admitted) v[n++] = i;
    }
    if (!v) { /* out of memory: keep the medians of the last refresh */
        MOEH_WARN("out of memory for the medians of the declared rows; the last ones stay");
        return;
    }
    uint64_t *decl = calloc(n + 1, sizeof *decl);
    if (decl) {
        for (size_t k = 0; k < n; k++)
            decl[k] = c->sites[v[k]].n_train;
        c->med_train = moeh_bounds_median(decl, n, scratch);
        for (size_t k = 0; k < n; k++)
            decl[k] = c->sites[v[k]].n_eval;
        c->med_eval = moeh_bounds_median(decl, n, scratch);
        for (size_t k = 0; k < n; k++)
            decl[k] = c->sites[v[k]].n_val;
        c->med_val = moeh_bounds_median(decl, n, scratch);
    }
    free(decl);
    free(v);
}

uint64_t coord_cap_train(const coord_t *c, const site_t *s)
{
    return moeh_bounds_count_cap(s->n_train, s->reg_train, c->med_train, c->cfg->count_cap);
}

uint64_t coord_cap_eval(const coord_t *c, const site_t *s, int val)
{
    /* the validation figures are bounded by the rows the site declared for that split (Hello
     * n_val), the test figures by its test rows (n_eval), capped */
    if (val) return moeh_bounds_count_cap(s->n_val, s->reg_val, c->med_val, c->cfg->count_cap);
    return moeh_bounds_count_cap(s->n_eval, s->reg_test, c->med_eval, c->cfg->count_cap);
}

static moeh_stats_bounds_t stats_bounds(const coord_t *c, uint64_t max_rows)
{
    return (moeh_stats_bounds_t){.n_norm = c->n_norm,
                                 .n_static = c->mcfg.n_static,
                                 .n_steps = (uint32_t)c->mcfg.n_steps,
                                 .max_rows = max_rows,
                                 .max_abs = c->cfg->stats_max_abs};
}

int coord_check_stats(const coord_t *c, const site_t *s, const double *stats, char *what,
                      size_t what_len)
{
    const moeh_stats_bounds_t b = stats_bounds(c, coord_cap_train(c, s));
    return moeh_bounds_stats_check(stats, &b, what, what_len);
}

int coord_check_eval(const coord_t *c, const site_t *s, int val, const void *hist_words,
                     const uint32_t *combo_rows, uint64_t n_labels, char *what, size_t what_len)
{
    uint64_t rows[MOEH_N_COMBOS];
    for (size_t k = 0; k < MOEH_N_COMBOS; k++)
        rows[k] = combo_rows[k];
    const moeh_eval_bounds_t b = {.n_tasks = (size_t)c->mcfg.n_tasks,
                                  .bins = c->cfg->eval_bins,
                                  .max_rows = coord_cap_eval(c, s, val),
                                  .split = val ? "validation" : "test"};
    return moeh_bounds_eval_check(hist_words, rows, n_labels, &b, what, what_len);
}

int coord_check_update_header(const coord_t *c, const site_t *s, double train_loss,
                              uint64_t n_samples, char *what, size_t what_len)
{
    return moeh_bounds_train_header_check(train_loss, n_samples, coord_cap_train(c, s), what,
                                          what_len);
}

int coord_check_sa_sum(coord_t *c, char *what, size_t what_len)
{
    uint64_t train = 0, eval[2] = {0, 0}, n = 0, weight = 0; /* eval: test, validation rows */
    for (size_t i = 0; i < c->n_sites; i++) {
        const site_t *s = &c->sites[i];
        if (!s->sa_in || !s->replied) continue; /* survivors: their masked vector was summed */
        train += coord_cap_train(c, s);
        eval[0] += coord_cap_eval(c, s, 0);
        eval[1] += coord_cap_eval(c, s, 1);
        weight += s->w_phase;
        n++;
    }
    if (c->phase == PH_STATS) {
        moeh_secsum_stats_get(c->vsum, c->n_norm, c->stats_sum); /* finish_stats decodes again */
        const moeh_stats_bounds_t b = stats_bounds(c, train);
        return moeh_bounds_stats_check(c->stats_sum, &b, what, what_len);
    }
    if (c->phase == PH_TRAIN)
        return moeh_bounds_weight_sum_check(c->vsum + c->p->n, c->p->n_groups,
                                            c->unit_weight ? n : weight, what, what_len);
    /* EVALUATE: the test split's vector; VALIDATE: then the validation split's (moeh_secsum.h) */
    const size_t le = moeh_wire_secsum_len(&c->lim, MOEH__ROUND_TASK__EVALUATE);
    const int splits = c->phase == PH_VAL ? 2 : c->phase == PH_EVAL ? 1 : 0;
    for (int k = 0; k < splits; k++) {
        double loss;
        uint64_t n_labels;
        moeh_secsum_eval_get(c->vsum + k * le, moeh_wire_secsum_dims(&c->lim), c->hist, c->gate_sum,
                             c->combo_rows, &loss, &n_labels);
        const moeh_eval_bounds_t b = {.n_tasks = (size_t)c->mcfg.n_tasks,
                                      .bins = c->cfg->eval_bins,
                                      .max_rows = eval[k],
                                      .split = k ? "validation" : "test"};
        int rc =
            moeh_bounds_eval_check(c->vsum + k * le, c->combo_rows, n_labels, &b, what, what_len);
        if (rc) return rc;
    }
    return 0;
}

int coord_keeps_updates(const coord_t *c)
{
    return moeh_strategy_per_site(c->sopt.kind) || c->cfg->norm_bound > 0;
}

void coord_take_update(coord_t *c, const void *words)
{
    const size_t n = c->p->n, G = c->p->n_groups;
    if (moeh_strategy_per_site(c->sopt.kind)) {
        /* keep this site's own delta: the trimmed mean and the median need every site's value */
        moeh_update_decode(&c->agg, words, c->quant_scale, c->site_delta + c->n_slots * n,
                           c->site_w + c->n_slots * G);
        c->n_slots++;
    } else if (c->cfg->norm_bound > 0) { /* kept as words; summed once the median is known */
        memcpy(c->site_delta + c->n_slots * n, words, n * sizeof(uint32_t));
        memcpy(c->site_w + c->n_slots * G, (const uint8_t *)words + 4 * n, G * sizeof(uint32_t));
        c->n_slots++;
        return;
    }
    moeh_fedavg_add(&c->agg, words);
}

void coord_robust_close_train(coord_t *c)
{
    const size_t n = c->p->n, G = c->p->n_groups, S = c->n_slots;
    if (c->sopt.kind == MOEH_STRATEGY_TRIMMED) {
        size_t un = moeh_trimmed_untrimmed_groups(&c->agg, c->site_w, S, c->cfg->trim);
        if (un)
            MOEH_WARN("round %u: trimmed mean (--trim %g): %zu of %zu parameter groups were "
                      "trained by fewer than %.0f sites and are averaged untrimmed; "
                      "--strategy median or --norm-bound bound them",
                      c->round, (double)c->cfg->trim, un, G, ceil(1.0 / c->cfg->trim));
    }
    if (!(c->cfg->norm_bound > 0) || S == 0) return;
    double *norms = calloc(3 * S, sizeof *norms);
    if (!norms) { /* cannot bound: refuse to sum unbounded updates rather than trust them */
        MOEH_ERROR("round %u: out of memory for the norm bound; the round's updates are dropped",
                   c->round);
        c->n_slots = 0;
        return;
    }
    double *factors = norms + S, *scratch = norms + 2 * S, median = 0, most = 0;
    const int per_site = moeh_strategy_per_site(c->sopt.kind);
    for (size_t s = 0; s < S; s++) {
        norms[s] = per_site ? moeh_delta_norm(c->site_delta + s * n, n)
                            : moeh_update_norm(&c->agg, c->site_delta + s * n, c->site_w + s * G,
                                               c->quant_scale);
        if (norms[s] > most) most = norms[s];
    }
    size_t clipped =
        moeh_norm_bound_factors(norms, S, c->cfg->norm_bound, factors, &median, scratch);
    for (size_t s = 0; s < S; s++) {
        if (per_site) {
            float f = (float)factors[s];
            for (size_t i = 0; factors[s] < 1.0 && i < n; i++)
                c->site_delta[s * n + i] *= f;
        } else {
            moeh_fedavg_add_scaled(&c->agg, c->site_delta + s * n, c->site_w + s * G, factors[s]);
        }
    }
    if (clipped)
        MOEH_WARN("round %u: norm bound: %zu of %zu updates scaled down to %g x the median norm "
                  "%.4g (largest %.4g)",
                  c->round, clipped, S, (double)c->cfg->norm_bound, median, most);
    else
        MOEH_INFO("round %u: norm bound: median update norm %.4g, largest %.4g: none scaled",
                  c->round, median, most);
    free(norms);
}
