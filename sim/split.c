/* split.c - whole-subject site assignment with modality sets and Dirichlet case-mix skew,
 * subject-grouped splits inside each site, and the summary table (see moeh_split.h). */
#include "moeh_split.h"
#include "moeh_extract.h"

#include <limits.h>
#include <math.h>
#include <string.h>

void moeh_split_opts_default(moeh_split_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->skew_by = MOEH_TASK_MORTALITY;
    o->val_frac = 0.1;
    o->test_frac = 0.2;
    o->seed = 1;
}

void moeh_split_opts_free(moeh_split_opts_t *o)
{
    free(o->hosp_subj);
    free(o->hosp_of);
    o->hosp_subj = NULL, o->hosp_of = NULL, o->n_hosp_subj = 0;
}

static int cmp_subj(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int moeh_split_load_hospitals(const char *path, moeh_split_opts_t *o, moeh_err_t *err)
{
    FILE *f = fopen(path, "r");
    if (!f) return moeh_errf(err, -errno, "%s: %s", path, strerror(errno));
    char line[4096];
    int rc = 0, c_subj = -1, c_hosp = -1;
    size_t cap = 0, n = 0, lineno = 1;
    int64_t(*pairs)[2] = NULL; /* subject, hospital */
    uint32_t max_h = 0;
    moeh_split_opts_free(o);
    if (!fgets(line, sizeof line, f)) {
        rc = moeh_errf(err, -EINVAL, "%s: empty file", path);
        goto out;
    }
    line[strcspn(line, "\r\n")] = '\0';
    int col = 0;
    for (char *save = NULL, *t = strtok_r(line, ",", &save); t;
         t = strtok_r(NULL, ",", &save), col++) {
        if (!strcmp(t, "subject_id")) c_subj = col;
        if (!strcmp(t, "hospital")) c_hosp = col;
    }
    if (c_subj < 0 || c_hosp < 0) {
        rc = moeh_errf(err, -EINVAL,
                       "%s:1: no %s column (expected a truth.csv of moeh synth --profile "
                       "heterogeneous)",
                       path, c_subj < 0 ? "subject_id" : "hospital");
        goto out;
    }
    while (fgets(line, sizeof line, f)) {
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        int64_t v[2] = {-1, -1};
        col = 0;
        for (char *p = line, *q;; p = q + 1, col++) {
            q = strchr(p, ',');
            if (col == c_subj || col == c_hosp) {
                char *end;
                long long x = strtoll(p, &end, 10);
                if (end == p || (*end && *end != ',') || x < 0 ||
                    (col == c_hosp && x >= MOEH_MAX_SITES)) {
                    rc = moeh_errf(err, -EINVAL, "%s:%zu: field %s: expected %s", path, lineno,
                                   col == c_subj ? "subject_id" : "hospital",
                                   col == c_subj ? "an integer >= 0" : "an integer 0..255");
                    goto out;
                }
                v[col == c_hosp] = x;
            }
            if (!q) break;
        }
        if (v[0] < 0 || v[1] < 0) {
            rc = moeh_errf(err, -EINVAL, "%s:%zu: missing subject_id or hospital", path, lineno);
            goto out;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            void *np = realloc(pairs, cap * sizeof *pairs);
            if (!np) {
                rc = moeh_errf(err, -ENOMEM, "out of memory");
                goto out;
            }
            pairs = np;
        }
        pairs[n][0] = v[0], pairs[n][1] = v[1];
        if ((uint32_t)v[1] > max_h) max_h = (uint32_t)v[1];
        n++;
    }
    qsort(pairs, n, sizeof *pairs, cmp_subj); /* the subject is the first member */
    o->hosp_subj = malloc((n + 1) * sizeof *o->hosp_subj);
    o->hosp_of = malloc((n + 1) * sizeof *o->hosp_of);
    if (!o->hosp_subj || !o->hosp_of) {
        rc = moeh_errf(err, -ENOMEM, "out of memory");
        goto out;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && o->hosp_subj[m - 1] == pairs[i][0]) {
            if (o->hosp_of[m - 1] != (uint32_t)pairs[i][1]) {
                rc = moeh_errf(err, -EINVAL, "%s: subject %lld is at two hospitals", path,
                               (long long)pairs[i][0]);
                goto out;
            }
            continue;
        }
        o->hosp_subj[m] = pairs[i][0], o->hosp_of[m++] = (uint32_t)pairs[i][1];
    }
    o->n_hosp_subj = m;
    o->by_careunit = 0;
    o->n_sites = max_h + 1;
    for (uint32_t h = 0; h <= max_h; h++) {
        snprintf(o->sites[h].name, sizeof o->sites[h].name, "hosp%u", h);
        o->sites[h].share = 1;
        o->sites[h].mods = (1u << MOEH_N_MODS) - 1;
    }
out:
    if (rc) moeh_split_opts_free(o);
    free(pairs);
    fclose(f);
    return rc;
}

int moeh_split_parse_sites(const char *spec, moeh_split_opts_t *o, moeh_err_t *err)
{
    o->n_sites = 0;
    o->by_careunit = 0;
    if (!strcmp(spec, "careunit")) {
        o->by_careunit = 1;
        return 0;
    }
    char buf[4096];
    if (strlen(spec) >= sizeof buf) return moeh_errf(err, -EINVAL, "--sites: too long");
    strcpy(buf, spec);
    char *save = NULL;
    for (char *part = strtok_r(buf, ",", &save); part; part = strtok_r(NULL, ",", &save)) {
        if (o->n_sites == MOEH_MAX_SITES)
            return moeh_errf(err, -EINVAL, "--sites: at most %d sites", MOEH_MAX_SITES);
        moeh_site_spec_t *s = &o->sites[o->n_sites];
        char *c1 = strchr(part, ':');
        if (!c1 || c1 == part || (size_t)(c1 - part) >= sizeof s->name)
            return moeh_errf(err, -EINVAL, "--sites: '%s' is not NAME:SHARE[:MODS]", part);
        *c1 = '\0';
        snprintf(s->name, sizeof s->name, "%s", part);
        for (char *q = s->name; *q; q++)
            if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') ||
                  (*q >= '0' && *q <= '9') || *q == '_' || *q == '-'))
                return moeh_errf(err, -EINVAL, "--sites: site name '%s': use [A-Za-z0-9_-]",
                                 s->name);
        char *c2 = strchr(c1 + 1, ':'), *end;
        if (c2) *c2 = '\0';
        s->share = strtod(c1 + 1, &end);
        if (end == c1 + 1 || *end || !(s->share > 0))
            return moeh_errf(err, -EINVAL, "--sites: share of '%s' must be a number > 0", s->name);
        s->mods = (1u << MOEH_N_MODS) - 1; /* all */
        if (c2) {
            s->mods = 0;
            char *save2 = NULL;
            for (char *m = strtok_r(c2 + 1, "+", &save2); m; m = strtok_r(NULL, "+", &save2)) {
                int k = -1;
                for (int i = 0; i < MOEH_N_MODS; i++)
                    if (!strcmp(m, moeh_mod_names[i])) k = i;
                if (k < 0)
                    return moeh_errf(err, -EINVAL,
                                     "--sites: site '%s': unknown modality '%s' (ehr, notes, img)",
                                     s->name, m);
                s->mods |= 1u << k;
            }
        }
        for (size_t i = 0; i < o->n_sites; i++)
            if (!strcmp(o->sites[i].name, s->name))
                return moeh_errf(err, -EINVAL, "--sites: site '%s' given twice", s->name);
        o->n_sites++;
    }
    if (o->n_sites == 0) return moeh_errf(err, -EINVAL, "--sites: no site");
    return 0;
}

/* Gamma(a, 1) by Marsaglia and Tsang (2000); a < 1 through Gamma(a + 1) * U^(1/a). */
static double gamma_draw(moeh_rng_t *r, double a)
{
    if (a < 1) {
        double u = moeh_rng_uniform(r);
        return gamma_draw(r, a + 1) * pow(u > 0 ? u : 1e-300, 1 / a);
    }
    double d = a - 1.0 / 3, c = 1 / sqrt(9 * d);
    for (;;) {
        double x = moeh_rng_normal(r), v = 1 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = moeh_rng_uniform(r);
        if (log(u > 0 ? u : 1e-300) < 0.5 * x * x + d - d * v + d * log(v)) return d * v;
    }
}

/* the careunit one-hot block of the static features: first column and count */
static int careunit_columns(const moeh_dataset_t *ds, size_t *first, size_t *count)
{
    *count = 0;
    for (size_t f = 0; f < ds->f_static; f++)
        if (ds->static_names && !strncmp(ds->static_names[f], "first_careunit=", 15)) {
            if (!*count) *first = f;
            (*count)++;
        }
    return *count ? 0 : -ENOENT;
}

static int careunit_of(const moeh_dataset_t *ds, size_t row, size_t first, size_t count)
{
    for (size_t k = 0; k < count; k++)
        if (ds->static_x[row * ds->f_static + first + k] > 0.5f) return (int)k;
    return (int)count - 1;
}

int moeh_split_assign(const moeh_dataset_t *ds, moeh_split_opts_t *o, uint32_t *site_of,
                      moeh_err_t *err)
{
    int rc = -ENOMEM;
    size_t n = ds->n, n_subj = 0, cu_first = 0, cu_count = 0;
    size_t *start = malloc((n + 1) * sizeof *start), *order = malloc((n + 1) * sizeof *order);
    int *stratum = malloc((n + 1) * sizeof *stratum);
    double *have = NULL, *target = NULL;
    if (!start || !order || !stratum) goto out; /* rc is -ENOMEM */
    /* subjects are runs of equal ids[:,0] (rows are sorted by subject) */
    for (size_t i = 0; i < n; i++) {
        if (i && ds->ids[2 * i] < ds->ids[2 * (i - 1)]) {
            rc = moeh_errf(err, -EINVAL, "dataset rows are not sorted by subject_id (row %zu)", i);
            goto out;
        }
        if (i == 0 || ds->ids[2 * i] != ds->ids[2 * (i - 1)]) start[n_subj++] = i;
    }
    start[n_subj] = n;
    if (o->n_hosp_subj) { /* the generator's hospitals */
        for (size_t i = 0; i < n; i++) {
            const int64_t *hit = bsearch(&ds->ids[2 * i], o->hosp_subj, o->n_hosp_subj,
                                         sizeof *o->hosp_subj, cmp_subj);
            if (!hit) {
                rc = moeh_errf(err, -EINVAL, "subject %lld (row %zu) is not in the truth file",
                               (long long)ds->ids[2 * i], i);
                goto out;
            }
            site_of[i] = o->hosp_of[hit - o->hosp_subj];
        }
        rc = 0;
        goto out;
    }
    bool need_cu = o->by_careunit || (o->alpha > 0 && o->skew_by < 0);
    if (need_cu && careunit_columns(ds, &cu_first, &cu_count)) {
        rc = moeh_errf(err, -EINVAL, "the dataset has no first_careunit=... static features");
        goto out;
    }
    if (o->by_careunit) {
        /* natural sites: one per care unit present, named after it */
        size_t cnt[MOEH_MAX_SITES] = {0};
        int map[MOEH_MAX_SITES];
        for (size_t s = 0; s < n_subj; s++)
            cnt[careunit_of(ds, start[s], cu_first, cu_count) % MOEH_MAX_SITES]++;
        o->n_sites = 0;
        for (size_t k = 0; k < cu_count && k < MOEH_MAX_SITES; k++) {
            map[k] = -1;
            if (!cnt[k]) continue;
            moeh_site_spec_t *sp = &o->sites[o->n_sites];
            const char *nm = ds->static_names[cu_first + k] + 15, *paren = strrchr(nm, '(');
            char name[32];
            snprintf(name, sizeof name, "%s", paren ? paren + 1 : nm);
            size_t j = 0;
            for (size_t q = 0; name[q] && j + 1 < sizeof sp->name; q++) {
                char ch = name[q];
                if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9'))
                    sp->name[j++] = ch;
                else if (ch != ')' && j && sp->name[j - 1] != '_')
                    sp->name[j++] = '_';
            }
            while (j && sp->name[j - 1] == '_')
                j--;
            sp->name[j] = '\0';
            sp->share = (double)cnt[k];
            sp->mods = (1u << MOEH_N_MODS) - 1;
            map[k] = (int)o->n_sites++;
        }
        for (size_t s = 0; s < n_subj; s++)
            for (size_t i = start[s]; i < start[s + 1]; i++)
                site_of[i] = (uint32_t)map[careunit_of(ds, start[s], cu_first, cu_count)];
        rc = 0;
        goto out;
    }
    const size_t K = o->n_sites;
    double tot_share = 0;
    for (size_t k = 0; k < K; k++)
        tot_share += o->sites[k].share;
    /* strata: a subject's label (positive in any of its admissions) or first care unit */
    int n_strata = 1;
    for (size_t s = 0; s < n_subj; s++) {
        int st = 0;
        if (o->alpha > 0 && o->skew_by >= 0) {
            for (size_t i = start[s]; i < start[s + 1]; i++)
                st |= ds->label_mask[MOEH_N_TASKS * i + (size_t)o->skew_by] &&
                      ds->labels[MOEH_N_TASKS * i + (size_t)o->skew_by] > 0.5f;
            n_strata = 2;
        } else if (o->alpha > 0) {
            st = careunit_of(ds, start[s], cu_first, cu_count);
            n_strata = (int)cu_count;
        }
        stratum[s] = st;
    }
    have = calloc((size_t)n_strata * K, sizeof *have);
    target = calloc((size_t)n_strata * K, sizeof *target);
    if (!have || !target) goto out; /* rc is -ENOMEM */
    moeh_rng_t r;
    moeh_rng_seed(&r, o->seed ^ 0x73706c6974ull);
    /* target admissions per (stratum, site) */
    for (int st = 0; st < n_strata; st++) {
        double adm = 0, p[MOEH_MAX_SITES], ps = 0;
        for (size_t s = 0; s < n_subj; s++)
            if (stratum[s] == st) adm += (double)(start[s + 1] - start[s]);
        for (size_t k = 0; k < K; k++) {
            double share = o->sites[k].share / tot_share;
            p[k] = o->alpha > 0 ? gamma_draw(&r, o->alpha * (double)K * share) : share;
            ps += p[k];
        }
        for (size_t k = 0; k < K; k++)
            target[(size_t)st * K + k] = adm * p[k] / (ps > 0 ? ps : 1);
    }
    /* iterative proportional fitting: keep each stratum's total and bring each site's total
     * back to its share, so the skew changes the case mix, not the sizes */
    double n_adm = (double)n;
    for (int it = 0; it < 200 && o->alpha > 0; it++) {
        for (size_t k = 0; k < K; k++) {
            double col = 0;
            for (int st = 0; st < n_strata; st++)
                col += target[(size_t)st * K + k];
            double want = n_adm * o->sites[k].share / tot_share;
            for (int st = 0; st < n_strata && col > 0; st++)
                target[(size_t)st * K + k] *= want / col;
        }
        for (int st = 0; st < n_strata; st++) {
            double row = 0, adm = 0;
            for (size_t k = 0; k < K; k++)
                row += target[(size_t)st * K + k];
            for (size_t s = 0; s < n_subj; s++)
                if (stratum[s] == st) adm += (double)(start[s + 1] - start[s]);
            for (size_t k = 0; k < K && row > 0; k++)
                target[(size_t)st * K + k] *= adm / row;
        }
    }
    /* subjects in random order, each to the site furthest below its target */
    for (size_t s = 0; s < n_subj; s++)
        order[s] = s;
    for (size_t s = n_subj; s > 1; s--) {
        size_t j = (size_t)(moeh_rng_u64(&r) % s), t = order[s - 1];
        order[s - 1] = order[j], order[j] = t;
    }
    for (size_t q = 0; q < n_subj; q++) {
        size_t s = order[q], best = 0;
        const double *tg = target + (size_t)stratum[s] * K;
        double *hv = have + (size_t)stratum[s] * K, best_def = -INFINITY;
        for (size_t k = 0; k < K; k++) {
            double def = tg[k] - hv[k];
            if (def > best_def) best_def = def, best = k;
        }
        hv[best] += (double)(start[s + 1] - start[s]);
        for (size_t i = start[s]; i < start[s + 1]; i++)
            site_of[i] = (uint32_t)best;
    }
    rc = 0;
out:
    if (rc == -ENOMEM) moeh_errf(err, rc, "split: out of memory");
    free(start);
    free(order);
    free(stratum);
    free(have);
    free(target);
    return rc;
}

int moeh_split_write(const moeh_dataset_t *ds, moeh_split_opts_t *o, const char *dir, FILE *out,
                     moeh_err_t *err)
{
    int rc;
    uint32_t *site_of = malloc((ds->n + 1) * sizeof *site_of);
    size_t *idx = malloc((ds->n + 1) * sizeof *idx);
    char *table = NULL;
    size_t tlen = 0, tcap = 0;
    moeh_dataset_t *sub = NULL;
    if (!site_of || !idx) {
        rc = moeh_errf(err, -ENOMEM, "split: out of memory");
        goto out;
    }
    if ((rc = moeh_split_assign(ds, o, site_of, err)) || (rc = moeh_mkdir_p(dir, err))) goto out;
    FILE *mem = open_memstream(&table, &tcap);
    if (!mem) {
        rc = moeh_errf(err, -ENOMEM, "split: out of memory");
        goto out;
    }
    fprintf(mem, "site\tmodalities\tsubjects\tadmissions\ttrain\tval\ttest");
    for (int t = 0; t < MOEH_N_TASKS; t++)
        fprintf(mem, "\tprev_%s", moeh_task_names[t]);
    for (int c = 0; c < MOEH_N_COMBOS; c++)
        fprintf(mem, "\tn_%s", moeh_combo_names[c]);
    fprintf(mem, "\n");
    for (size_t k = 0; k < o->n_sites && !rc; k++) {
        size_t m = 0, subj = 0, parts[3] = {0}, pos[MOEH_N_TASKS] = {0}, lab[MOEH_N_TASKS] = {0},
               combo[MOEH_N_COMBOS + 1];
        for (size_t i = 0; i < ds->n; i++)
            if (site_of[i] == k) {
                if (!m || ds->ids[2 * i] != ds->ids[2 * idx[m - 1]]) subj++;
                idx[m++] = i;
            }
        if ((rc = moeh_dataset_subset(ds, idx, m, o->sites[k].mods, &sub, err))) break;
        uint64_t sseed = o->seed * 1000003u + k;
        moeh_assign_split(sub, o->val_frac, o->test_frac, sseed);
        for (size_t i = 0; i < m; i++) {
            parts[sub->split[i]]++;
            for (size_t t = 0; t < MOEH_N_TASKS; t++) {
                size_t at = MOEH_N_TASKS * i + t;
                lab[t] += sub->label_mask[at];
                pos[t] += sub->label_mask[at] && sub->labels[at] > 0.5f;
            }
        }
        moeh_dataset_combo_counts(sub, combo);
        char mods[32] = "";
        for (int q = 0; q < MOEH_N_MODS; q++)
            if (o->sites[k].mods >> q & 1u)
                snprintf(mods + strlen(mods), sizeof mods - strlen(mods), "%s%s",
                         mods[0] ? "+" : "", moeh_mod_names[q]);
        fprintf(mem, "%s\t%s\t%zu\t%zu\t%zu\t%zu\t%zu", o->sites[k].name, mods, subj, m, parts[0],
                parts[1], parts[2]);
        for (int t = 0; t < MOEH_N_TASKS; t++)
            fprintf(mem, "\t%.4f", lab[t] ? (double)pos[t] / (double)lab[t] : 0.0);
        for (int c = 0; c < MOEH_N_COMBOS; c++)
            fprintf(mem, "\t%zu", combo[c + 1]);
        fprintf(mem, "\n");
        if (!sub->extra) sub->extra = cJSON_CreateObject();
        cJSON_DeleteItemFromObject(sub->extra, "site");
        cJSON *js = cJSON_AddObjectToObject(sub->extra, "site");
        cJSON_AddStringToObject(js, "name", o->sites[k].name);
        cJSON_AddStringToObject(js, "modalities", mods);
        cJSON_AddNumberToObject(js, "index", (double)k);
        cJSON_AddNumberToObject(js, "of_sites", (double)o->n_sites);
        cJSON_AddNumberToObject(js, "alpha", o->alpha);
        cJSON_AddNumberToObject(js, "seed", (double)o->seed);
        char sd[PATH_MAX];
        if (snprintf(sd, sizeof sd, "%s/%s", dir, o->sites[k].name) >= (int)sizeof sd)
            rc = moeh_errf(err, -ENAMETOOLONG, "%s: path too long", dir);
        else
            rc = moeh_dataset_write(sub, sd, err);
        moeh_dataset_destroy(&sub);
    }
    fclose(mem);
    tlen = table ? strlen(table) : 0;
    if (!rc) {
        char p[PATH_MAX];
        if (snprintf(p, sizeof p, "%s/summary.tsv", dir) >= (int)sizeof p)
            rc = moeh_errf(err, -ENAMETOOLONG, "%s: path too long", dir);
        else
            rc = moeh_file_write_atomic(p, table, tlen, err);
    }
    if (!rc && out) fwrite(table, 1, tlen, out);
out:
    moeh_dataset_destroy(&sub);
    free(table);
    free(site_of);
    free(idx);
    return rc;
}
