/* extract.c - the MIMIC-IV cohort of DESIGN §3.1 as a dataset (§3.2).
 *
 * Pass 1 reads the small tables whole (patients, admissions, icustays), builds the cohort and
 * its labels. Pass 2 streams the event tables (chartevents, labevents) row by row into
 * per-admission hourly accumulators, so memory is O(cohort x 48 x F), independent of the
 * size of chartevents. Pass 3 streams radiology notes and the CXR metadata, keeping only
 * rows inside a cohort window, then decodes one image per admission. Every step that lacks
 * its table warns and leaves that modality absent.
 *
 * This file: the static-feature categories, the variable map, the note tokenizer, pass 1 (the
 * cohort and its labels), the dataset's meta.json and the driver, moeh_extract(). Passes 2 and 3
 * are in extract_streams.c; the context both share is in extract_ctx.h. */
#include "extract_ctx.h"

#include <math.h>
#include <string.h>
#include <xxhash.h>

/* ---- categories of the static features ---------------------------------------------- */
static const char *const k_adm_types[] = {"AMBULATORY OBSERVATION",
                                          "DIRECT EMER.",
                                          "DIRECT OBSERVATION",
                                          "ELECTIVE",
                                          "EU OBSERVATION",
                                          "EW EMER.",
                                          "OBSERVATION ADMIT",
                                          "SURGICAL SAME DAY ADMISSION",
                                          "URGENT"};
static const char *const k_insurance[] = {"Medicare", "Medicaid", "Private", "Other"};
static const char *const k_races[] = {"WHITE", "BLACK", "HISPANIC", "ASIAN", "OTHER", "UNKNOWN"};
static const char *const k_careunits[] = {"Medical Intensive Care Unit (MICU)",
                                          "Surgical Intensive Care Unit (SICU)",
                                          "Medical/Surgical Intensive Care Unit (MICU/SICU)",
                                          "Cardiac Vascular Intensive Care Unit (CVICU)",
                                          "Coronary Care Unit (CCU)",
                                          "Trauma SICU (TSICU)",
                                          "Neuro Surgical Intensive Care Unit (Neuro SICU)",
                                          "Neuro Intermediate",
                                          "Neuro Stepdown",
                                          "OTHER"};
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define N_ADM_TYPES NELEM(k_adm_types)
#define N_INS NELEM(k_insurance)
#define N_RACES NELEM(k_races)
#define N_UNITS NELEM(k_careunits)
/* age, sex_female, one-hots, height_cm, height_obs, weight_kg, weight_obs */
#define F_STATIC (2 + N_ADM_TYPES + N_INS + N_RACES + N_UNITS + 4)

static int cat_index(moeh_csv_field_t f, const char *const *cats, size_t n, int other)
{
    for (size_t i = 0; i < n; i++)
        if (moeh_csv_eq(f, cats[i])) return (int)i;
    return other;
}

static bool starts(moeh_csv_field_t f, const char *p)
{
    size_t n = strlen(p);
    return f.len >= n && !memcmp(f.p, p, n);
}

static int race_group(moeh_csv_field_t f)
{
    if (starts(f, "WHITE") || starts(f, "PORTUGUESE")) return 0;
    if (starts(f, "BLACK")) return 1;
    if (starts(f, "HISPANIC") || starts(f, "SOUTH AMERICAN")) return 2;
    if (starts(f, "ASIAN")) return 3;
    if (f.len == 0 || starts(f, "UNKNOWN") || starts(f, "UNABLE TO OBTAIN") ||
        starts(f, "PATIENT DECLINED"))
        return 5;
    return 4;
}

/* ---- variable map ---------------------------------------------------------------------- */
extern const unsigned char moeh_varmap_csv[];
extern const size_t moeh_varmap_csv_len;

const char *moeh_varmap_default_text(void)
{
    return (const char *)moeh_varmap_csv;
}

void moeh_varmap_free(moeh_varmap_t *m)
{
    free(m->rows);
    free(m->var_names);
    free(m->var_units);
    memset(m, 0, sizeof *m);
}

int moeh_varmap_load(const char *path_or_null, moeh_varmap_t *out, moeh_err_t *err)
{
    memset(out, 0, sizeof *out);
    char *file = NULL, *text = NULL;
    size_t len = 0;
    moeh_csv_t *r = NULL;
    int rc;
    const char *name = path_or_null ? path_or_null : "<shipped variables.csv>";
    if (path_or_null) {
        if ((rc = moeh_file_read_all(path_or_null, (size_t)16 << 20, &file, &len, err))) return rc;
    } else {
        len = moeh_varmap_csv_len;
    }
    const char *src = path_or_null ? file : (const char *)moeh_varmap_csv;
    if (!(text = malloc(len + 1))) {
        rc = moeh_errf(err, -ENOMEM, "%s: out of memory", name);
        goto out;
    }
    /* comment lines become blank lines (skipped by the reader; line numbers stay right) */
    size_t tl = 0;
    for (size_t i = 0; i < len;) {
        size_t e = i;
        while (e < len && src[e] != '\n')
            e++;
        if (src[i] != '#') {
            memcpy(text + tl, src + i, e - i);
            tl += e - i;
        }
        if (e < len) text[tl++] = '\n';
        i = e + 1;
    }
    len = tl;
    if ((rc = moeh_csv_open_mem(name, text, len, &r, err))) goto out;
    int c[9];
    static const char *cols[9] = {"name", "table", "itemid", "unit", "mul",
                                  "add",  "lo",    "hi",     "label"};
    for (int i = 0; i < 9; i++)
        if ((c[i] = moeh_csv_require_col(r, cols[i], err)) < 0) {
            rc = c[i];
            goto out;
        }
    size_t cap = 0;
    while ((rc = moeh_csv_next(r, err)) == 1) {
        if (moeh_csv_field(r, 0).len == 0) continue;
        if (out->n_rows == cap) {
            cap = cap ? cap * 2 : 64;
            moeh_varmap_row_t *nr = realloc(out->rows, cap * sizeof *nr);
            if (!nr) {
                rc = moeh_errf(err, -ENOMEM, "%s: out of memory", name);
                goto out;
            }
            out->rows = nr;
        }
        moeh_varmap_row_t *w = &out->rows[out->n_rows];
        memset(w, 0, sizeof *w);
        moeh_csv_copy(moeh_csv_field(r, (size_t)c[0]), w->name, sizeof w->name);
        moeh_csv_copy(moeh_csv_field(r, (size_t)c[1]), w->table, sizeof w->table);
        moeh_csv_copy(moeh_csv_field(r, (size_t)c[3]), w->unit, sizeof w->unit);
        moeh_csv_copy(moeh_csv_field(r, (size_t)c[8]), w->label, sizeof w->label);
        int64_t id;
        if (moeh_csv_parse_i64(moeh_csv_field(r, (size_t)c[2]), &id) || id < 0 || id > 10000000) {
            rc = moeh_csv_field_error(r, (size_t)c[2], err, "expected an itemid");
            goto out;
        }
        w->itemid = (int32_t)id;
        double *dst[4] = {&w->mul, &w->add, &w->lo, &w->hi};
        for (int k = 0; k < 4; k++)
            if (moeh_csv_parse_f64(moeh_csv_field(r, (size_t)c[4 + k]), dst[k])) {
                rc = moeh_csv_field_error(r, (size_t)c[4 + k], err, "expected a number");
                goto out;
            }
        if (strcmp(w->table, "chartevents") && strcmp(w->table, "labevents")) {
            rc = moeh_csv_field_error(r, (size_t)c[1], err,
                                      "table must be chartevents or labevents");
            goto out;
        }
        w->var = -1;
        for (size_t k = 0; k < out->n_rows; k++)
            if (!strcmp(out->rows[k].name, w->name)) w->var = out->rows[k].var;
        if (w->var < 0) w->var = (int)out->n_vars++;
        out->n_rows++;
    }
    if (rc < 0) goto out;
    if (out->n_vars == 0) {
        rc = moeh_errf(err, -EBADMSG, "%s: no variables", name);
        goto out;
    }
    out->var_names = calloc(out->n_vars, sizeof *out->var_names);
    out->var_units = calloc(out->n_vars, sizeof *out->var_units);
    if (!out->var_names || !out->var_units) {
        rc = moeh_errf(err, -ENOMEM, "%s: out of memory", name);
        goto out;
    }
    for (size_t k = out->n_rows; k-- > 0;) {
        memcpy(out->var_names[out->rows[k].var], out->rows[k].name, 32);
        memcpy(out->var_units[out->rows[k].var], out->rows[k].unit, 16);
    }
    rc = 0;
out:
    if (rc) moeh_varmap_free(out);
    moeh_csv_destroy(&r);
    free(text);
    free(file);
    return rc;
}

/* ---- tokenizer ----------------------------------------------------------------------- */
int32_t moeh_token_id(const char *tok, size_t len)
{
    return (int32_t)(XXH64(tok, len, 0) & 0x7fffffffu);
}

int moeh_tokenize(const char *text, size_t len, int32_t **tok, size_t *n, size_t *cap)
{
    char w[64];
    size_t i = 0;
    while (i < len) {
        while (i < len &&
               !((text[i] >= 'a' && text[i] <= 'z') || (text[i] >= 'A' && text[i] <= 'Z') ||
                 (text[i] >= '0' && text[i] <= '9')))
            i++;
        size_t k = 0, start = i;
        while (i < len &&
               ((text[i] >= 'a' && text[i] <= 'z') || (text[i] >= 'A' && text[i] <= 'Z') ||
                (text[i] >= '0' && text[i] <= '9'))) {
            if (k < sizeof w)
                w[k++] = (char)(text[i] >= 'A' && text[i] <= 'Z' ? text[i] + 32 : text[i]);
            i++;
        }
        if (i == start) break;
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 1024;
            int32_t *nt = realloc(*tok, nc * sizeof *nt);
            if (!nt) return -ENOMEM;
            *tok = nt, *cap = nc;
        }
        (*tok)[(*n)++] = moeh_token_id(w, k);
    }
    return 0;
}

static int load_patients(ctx_t *c, const char *dir, moeh_err_t *err)
{
    char p[PATH_MAX];
    moeh_csv_t *r = NULL;
    moeh_err_t e = {0};
    int rc, ci[4];
    size_t cap = 0, n = 0;
    moeh_progress_t m = {0};
    uint64_t rows = 0;
    static const char *const names[] = {"subject_id", "gender", "anchor_age", "anchor_year"};
    if ((rc = path2(p, sizeof p, dir, "hosp/patients.csv.gz")) ||
        (rc = moeh_csv_open(p, &r, err)) || (rc = cols(r, names, ci, 4, err)) ||
        (rc = moeh_i64map_init(&c->pat_map, 1024)))
        goto out;
    table_begin(&m, r);
    while ((rc = table_next(c, r, &m, &rows, &e, err)) > 0) {
        int64_t sid, age, year;
        if (moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[0]), &sid) ||
            moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[2]), &age) ||
            moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[3]), &year)) {
            moeh_csv_field_error(r, 0, &e, "expected integer subject_id, anchor_age, anchor_year");
            if ((rc = malformed(c, -EBADMSG, &e, err))) goto out;
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            pat_t *np = realloc(c->pats, cap * sizeof *np);
            if (!np) {
                rc = -ENOMEM;
                goto out;
            }
            c->pats = np;
        }
        c->pats[n] = (pat_t){(int32_t)age, (int32_t)year,
                             (int8_t)moeh_csv_eq(moeh_csv_field(r, (size_t)ci[1]), "F")};
        if ((rc = moeh_i64map_put(&c->pat_map, sid, (uint32_t)n++))) goto out;
    }
    if (rc < 0) goto out;
    table_done(&m, r, rows);
out:
    moeh_progress_cancel(&m); /* after a failure: the line goes, without a summary */
    if (rc == -ENOMEM) moeh_errf(err, rc, "patients: out of memory");
    moeh_csv_destroy(&r);
    return rc;
}

static int load_admissions(ctx_t *c, const char *dir, moeh_err_t *err)
{
    char p[PATH_MAX];
    moeh_csv_t *r = NULL;
    moeh_err_t e = {0};
    int rc, ci[9];
    size_t cap = 0;
    moeh_progress_t m = {0};
    uint64_t rows = 0;
    static const char *const names[] = {"subject_id", "hadm_id",   "admittime",
                                        "dischtime",  "deathtime", "admission_type",
                                        "insurance",  "race",      "hospital_expire_flag"};
    if ((rc = path2(p, sizeof p, dir, "hosp/admissions.csv.gz")) ||
        (rc = moeh_csv_open(p, &r, err)))
        goto out;
    /* MIMIC-IV v1 called the race column "ethnicity" */
    static const char *const names_v1[] = {"subject_id", "hadm_id",   "admittime",
                                           "dischtime",  "deathtime", "admission_type",
                                           "insurance",  "ethnicity", "hospital_expire_flag"};
    bool v1 = moeh_csv_col(r, "race") < 0 && moeh_csv_col(r, "ethnicity") >= 0;
    if ((rc = cols(r, v1 ? names_v1 : names, ci, 9, err))) goto out;
    if ((rc = moeh_i64map_init(&c->adm_map, 1024))) goto out;
    table_begin(&m, r);
    while ((rc = table_next(c, r, &m, &rows, &e, err)) > 0) {
        adm_t a = {0};
        int64_t flag = 0;
        moeh_csv_field_t fa = moeh_csv_field(r, (size_t)ci[2]);
        int bad = -1;
        if (moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[0]), &a.subject))
            bad = 0;
        else if (moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[1]), &a.hadm))
            bad = 1;
        else if (moeh_csv_parse_time(fa, &a.admit))
            bad = 2;
        else if (moeh_csv_parse_time(moeh_csv_field(r, (size_t)ci[3]), &a.disch))
            bad = 3;
        else if (moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[8]), &flag) || flag < 0 ||
                 flag > 1)
            bad = 8;
        if (bad >= 0) {
            moeh_csv_field_error(r, (size_t)ci[bad], &e, "missing or malformed value");
            if ((rc = malformed(c, -EBADMSG, &e, err))) goto out;
            continue;
        }
        int drc = moeh_csv_parse_time(moeh_csv_field(r, (size_t)ci[4]), &a.death);
        if (drc == -ENODATA)
            a.death = INT64_MAX;
        else if (drc) {
            moeh_csv_field_error(r, (size_t)ci[4], &e, "malformed deathtime");
            if ((rc = malformed(c, -EBADMSG, &e, err))) goto out;
            a.death = INT64_MAX;
        }
        a.admit_year = (int32_t)((fa.p[0] - '0') * 1000 + (fa.p[1] - '0') * 100 +
                                 (fa.p[2] - '0') * 10 + (fa.p[3] - '0'));
        a.type = cat_index(moeh_csv_field(r, (size_t)ci[5]), k_adm_types, N_ADM_TYPES, -1);
        a.ins = cat_index(moeh_csv_field(r, (size_t)ci[6]), k_insurance, N_INS, (int)N_INS - 1);
        a.race = race_group(moeh_csv_field(r, (size_t)ci[7]));
        a.expire = (int8_t)flag;
        a.unit = -1;
        a.t0 = INT64_MAX;
        if (c->n_adms == cap) {
            cap = cap ? 2 * cap : 1024;
            adm_t *na = realloc(c->adms, cap * sizeof *na);
            if (!na) {
                rc = -ENOMEM;
                goto out;
            }
            c->adms = na;
        }
        c->adms[c->n_adms] = a;
        if ((rc = moeh_i64map_put(&c->adm_map, a.hadm, (uint32_t)c->n_adms++))) goto out;
    }
    if (rc < 0) goto out;
    table_done(&m, r, rows);
out:
    moeh_progress_cancel(&m);
    if (rc == -ENOMEM) moeh_errf(err, rc, "admissions: out of memory");
    moeh_csv_destroy(&r);
    return rc;
}

static int load_icustays(ctx_t *c, const char *dir, moeh_err_t *err)
{
    char p[PATH_MAX];
    moeh_csv_t *r = NULL;
    moeh_err_t e = {0};
    int rc, ci[3];
    moeh_progress_t m = {0};
    uint64_t rows = 0;
    static const char *const names[] = {"hadm_id", "first_careunit", "intime"};
    if ((rc = path2(p, sizeof p, dir, "icu/icustays.csv.gz")) || (rc = moeh_csv_open(p, &r, err)) ||
        (rc = cols(r, names, ci, 3, err)))
        goto out;
    table_begin(&m, r);
    while ((rc = table_next(c, r, &m, &rows, &e, err)) > 0) {
        int64_t hadm, in;
        uint32_t ai;
        if (moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[0]), &hadm) ||
            moeh_csv_parse_time(moeh_csv_field(r, (size_t)ci[2]), &in)) {
            moeh_csv_field_error(r, (size_t)ci[2], &e, "malformed hadm_id or intime");
            if ((rc = malformed(c, -EBADMSG, &e, err))) goto out;
            continue;
        }
        if (!moeh_i64map_get(&c->adm_map, hadm, &ai)) continue;
        adm_t *a = &c->adms[ai];
        a->icu = 1;
        if (in < a->t0) {
            a->t0 = in;
            a->unit =
                cat_index(moeh_csv_field(r, (size_t)ci[1]), k_careunits, N_UNITS, (int)N_UNITS - 1);
        }
    }
    if (rc < 0) goto out;
    table_done(&m, r, rows);
out:
    moeh_progress_cancel(&m);
    moeh_csv_destroy(&r);
    return rc;
}

/* Sort records carry their keys, so no comparison needs outside state. */
typedef struct {
    int64_t subject, key2, hadm;
    int32_t idx;
} sort_rec_t;

static int cmp_rec(const void *x, const void *y)
{
    const sort_rec_t *a = x, *b = y;
    if (a->subject != b->subject) return a->subject < b->subject ? -1 : 1;
    if (a->key2 != b->key2) return a->key2 < b->key2 ? -1 : 1;
    return a->hadm < b->hadm ? -1 : a->hadm > b->hadm;
}

/* Sorts idx[0..n) (indices into adms) by (subject, admittime or nothing, hadm). */
static int sort_adms(const adm_t *adms, int32_t *idx, size_t n, bool by_admit)
{
    sort_rec_t *r = malloc((n + 1) * sizeof *r);
    if (!r) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const adm_t *a = &adms[idx[i]];
        r[i] = (sort_rec_t){a->subject, by_admit ? a->admit : 0, a->hadm, idx[i]};
    }
    qsort(r, n, sizeof *r, cmp_rec);
    for (size_t i = 0; i < n; i++)
        idx[i] = r[i].idx;
    free(r);
    return 0;
}

/* Selects the cohort, computes labels and static features, allocates the dataset. */
static int build_cohort(ctx_t *c, moeh_err_t *err)
{
    int rc = -ENOMEM;
    int32_t *order = malloc((c->n_adms + 1) * sizeof *order);
    int64_t *next_admit = malloc((c->n_adms + 1) * sizeof *next_admit);
    c->cohort = malloc((c->n_adms + 1) * sizeof *c->cohort);
    if (!order || !next_admit || !c->cohort) goto out;
    for (size_t i = 0; i < c->n_adms; i++)
        order[i] = (int32_t)i;
    if (sort_adms(c->adms, order, c->n_adms, true)) goto out;
    for (size_t k = 0; k < c->n_adms; k++) {
        const adm_t *a = &c->adms[order[k]];
        next_admit[order[k]] = (k + 1 < c->n_adms && c->adms[order[k + 1]].subject == a->subject)
                                   ? c->adms[order[k + 1]].admit
                                   : INT64_MAX;
    }
    size_t missing_pat = 0;
    c->st->admissions = c->n_adms;
    for (size_t i = 0; i < c->n_adms; i++) {
        const adm_t *a = &c->adms[i];
        if (!a->icu) continue;
        c->st->with_icu++;
        uint32_t pi;
        if (!moeh_i64map_get(&c->pat_map, a->subject, &pi)) {
            missing_pat++;
            continue;
        }
        int age = c->pats[pi].anchor_age + a->admit_year - c->pats[pi].anchor_year;
        if (age < 18) continue;
        c->st->adult++;
        int64_t end = a->t0 + WINDOW;
        if (a->disch < end || a->death < end) continue;
        c->st->alive_48h++;
        c->cohort[c->n++] = (int32_t)i;
    }
    if (missing_pat) MOEH_WARN("%zu ICU admissions have no row in patients: left out", missing_pat);
    if (sort_adms(c->adms, c->cohort, c->n, false)) goto out;
    c->st->cohort = c->n;
    if ((rc = moeh_dataset_create(c->n, F_STATIC, c->vm.n_vars, c->o->img_size, &c->ds, err)))
        goto out;
    rc = -ENOMEM;
    if (moeh_i64map_init(&c->cohort_hadm, c->n) || moeh_i64map_init(&c->cohort_subj, c->n))
        goto out;
    moeh_dataset_t *ds = c->ds;
    for (size_t j = 0; j < c->n; j++) {
        const adm_t *a = &c->adms[c->cohort[j]];
        uint32_t pi = 0;
        moeh_i64map_get(&c->pat_map, a->subject, &pi);
        ds->ids[2 * j] = a->subject;
        ds->ids[2 * j + 1] = a->hadm;
        if (moeh_i64map_put(&c->cohort_hadm, a->hadm, (uint32_t)j)) goto out;
        uint32_t first;
        if (!moeh_i64map_get(&c->cohort_subj, a->subject, &first)) {
            if (moeh_i64map_put(&c->cohort_subj, a->subject, (uint32_t)j)) goto out;
            c->st->subjects++;
        }
        float *lab = ds->labels + 3 * j;
        uint8_t *lm = ds->label_mask + 3 * j;
        lab[0] = (float)a->expire, lm[0] = 1;
        lab[1] = (a->disch - a->admit) > 7 * 86400 ? 1.0f : 0.0f, lm[1] = 1;
        if (a->expire) {
            lab[2] = 0, lm[2] = 0;
        } else {
            int64_t nx = next_admit[c->cohort[j]];
            lab[2] = (nx != INT64_MAX && nx - a->disch <= 30 * 86400) ? 1.0f : 0.0f, lm[2] = 1;
        }
        for (int t = 0; t < 3; t++)
            c->st->labelled[t] += lm[t], c->st->positives[t] += (size_t)lab[t];
        float *s = ds->static_x + j * F_STATIC;
        s[0] = (float)(c->pats[pi].anchor_age + a->admit_year - c->pats[pi].anchor_year);
        s[1] = (float)c->pats[pi].female;
        size_t o = 2;
        if (a->type >= 0) s[o + (size_t)a->type] = 1;
        o += N_ADM_TYPES;
        s[o + (size_t)a->ins] = 1, o += N_INS;
        s[o + (size_t)a->race] = 1, o += N_RACES;
        s[o + (size_t)a->unit] = 1, o += N_UNITS;
        ds->avail[3 * j + MOEH_MOD_EHR] = 1; /* static EHR is always there */
        ds->note_offsets[j] = 0;
    }
    rc = 0;
out:
    if (rc == -ENOMEM) moeh_errf(err, rc, "cohort: out of memory");
    free(order);
    free(next_admit);
    return rc;
}

void moeh_assign_split(moeh_dataset_t *ds, double val_frac, double test_frac, uint64_t seed)
{
    for (size_t i = 0; i < ds->n; i++) {
        uint64_t k[2] = {seed, (uint64_t)ds->ids[2 * i]};
        double u = (double)(XXH64(k, sizeof k, 0x6d6f6568) >> 11) * 0x1.0p-53;
        ds->split[i] = u < test_frac              ? MOEH_SPLIT_TEST
                       : u < test_frac + val_frac ? MOEH_SPLIT_VAL
                                                  : MOEH_SPLIT_TRAIN;
    }
}

void moeh_extract_opts_default(moeh_extract_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->img_size = 64;
    o->val_frac = 0.1;
    o->test_frac = 0.2;
    o->seed = 1;
}

static int set_meta(ctx_t *c, moeh_err_t *err)
{
    moeh_dataset_t *ds = c->ds;
    const char *snames[F_STATIC];
    char buf[F_STATIC][96];
    size_t k = 0;
    snames[k++] = "age";
    snames[k++] = "sex_female";
    const char *const *groups[4] = {k_adm_types, k_insurance, k_races, k_careunits};
    const size_t gn[4] = {N_ADM_TYPES, N_INS, N_RACES, N_UNITS};
    const char *gp[4] = {"admission_type", "insurance", "race", "first_careunit"};
    for (int g = 0; g < 4; g++)
        for (size_t i = 0; i < gn[g]; i++, k++) {
            snprintf(buf[k], sizeof buf[k], "%s=%s", gp[g], groups[g][i]);
            snames[k] = buf[k];
        }
    snames[k++] = "height_cm";
    snames[k++] = "height_obs";
    snames[k++] = "weight_kg";
    snames[k++] = "weight_obs";
    MOEH_ASSERT(k == F_STATIC);
    const char **tn = malloc(c->vm.n_vars * sizeof *tn), **tu = malloc(c->vm.n_vars * sizeof *tu);
    if (!tn || !tu) {
        free(tn), free(tu);
        return moeh_errf(err, -ENOMEM, "out of memory");
    }
    for (size_t v = 0; v < c->vm.n_vars; v++)
        tn[v] = c->vm.var_names[v], tu[v] = c->vm.var_units[v];
    int rc = moeh_dataset_set_names(ds, snames, tn, tu, err);
    free(tn), free(tu);
    if (rc) return rc;
    cJSON *x = ds->extra ? ds->extra : (ds->extra = cJSON_CreateObject()); /* may hold embeddings */
    if (!x) return moeh_errf(err, -ENOMEM, "out of memory");
    cJSON *src = cJSON_AddObjectToObject(x, "source");
    cJSON_AddStringToObject(src, "kind", "mimic-iv");
    cJSON_AddStringToObject(src, "mimic", c->o->mimic_dir);
    cJSON_AddStringToObject(src, "note", c->o->note_dir ? c->o->note_dir : "");
    cJSON_AddStringToObject(src, "cxr", c->o->cxr_dir ? c->o->cxr_dir : "");
    cJSON *co = cJSON_AddObjectToObject(x, "cohort");
    const moeh_extract_stats_t *s = c->st;
    cJSON_AddNumberToObject(co, "admissions", (double)s->admissions);
    cJSON_AddNumberToObject(co, "with_icu_stay", (double)s->with_icu);
    cJSON_AddNumberToObject(co, "adult", (double)s->adult);
    cJSON_AddNumberToObject(co, "in_hospital_alive_at_48h", (double)s->alive_48h);
    cJSON_AddNumberToObject(co, "cohort", (double)s->cohort);
    cJSON_AddNumberToObject(co, "subjects", (double)s->subjects);
    for (int t = 0; t < 3; t++) {
        char key[64];
        snprintf(key, sizeof key, "positives_%s", moeh_task_names[t]);
        cJSON_AddNumberToObject(co, key, (double)s->positives[t]);
        snprintf(key, sizeof key, "labelled_%s", moeh_task_names[t]);
        cJSON_AddNumberToObject(co, key, (double)s->labelled[t]);
    }
    cJSON *mods = cJSON_AddObjectToObject(x, "modalities_present");
    cJSON_AddBoolToObject(mods, "vitals", s->have_vitals);
    cJSON_AddBoolToObject(mods, "labs", s->have_labs);
    cJSON_AddBoolToObject(mods, "notes", s->have_notes);
    cJSON_AddBoolToObject(mods, "cxr", s->have_cxr);
    cJSON *vm = cJSON_AddArrayToObject(x, "variable_map");
    for (size_t i = 0; i < c->vm.n_rows; i++) {
        const moeh_varmap_row_t *w = &c->vm.rows[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", w->name);
        cJSON_AddStringToObject(o, "table", w->table);
        cJSON_AddNumberToObject(o, "itemid", w->itemid);
        cJSON_AddStringToObject(o, "unit", w->unit);
        cJSON_AddNumberToObject(o, "mul", w->mul);
        cJSON_AddNumberToObject(o, "add", w->add);
        cJSON_AddNumberToObject(o, "lo", w->lo);
        cJSON_AddNumberToObject(o, "hi", w->hi);
        cJSON_AddItemToArray(vm, o);
    }
    cJSON_AddStringToObject(x, "note_tokenizer",
                            "ASCII alphanumeric runs, lower-cased; id = xxh64(token) & 0x7fffffff");
    cJSON_AddStringToObject(x, "image_preprocessing",
                            "grayscale, centre crop to square, box filter to image_size");
    return 0;
}

int moeh_extract(const moeh_extract_opts_t *o, moeh_dataset_t **out, moeh_extract_stats_t *st,
                 moeh_err_t *err)
{
    ctx_t c = {0};
    moeh_extract_stats_t dummy;
    int rc;
    *out = NULL;
    c.o = o;
    c.st = st ? st : &dummy;
    memset(c.st, 0, sizeof *c.st);
    if (o->img_size < 8 || o->img_size > 1024)
        return moeh_errf(err, -EINVAL, "image size %zu out of range [8, 1024]", o->img_size);
    /* precomputed vectors (extract_embed.c): checked before the long passes */
    c.emb[0].path = o->note_emb, c.emb[1].path = o->cxr_emb;
    if ((o->note_emb && !o->note_dir) || (o->cxr_emb && !o->cxr_dir))
        return moeh_errf(err, -EINVAL,
                         "%s needs %s: its table maps each %s to an admission and a time",
                         o->note_emb && !o->note_dir ? "--note-embeddings" : "--cxr-embeddings",
                         o->note_emb && !o->note_dir ? "--note DIR" : "--cxr DIR",
                         o->note_emb && !o->note_dir ? "note_id" : "dicom_id");
    for (int k = 0; k < 2; k++)
        if (c.emb[k].path && (rc = emb_load(&c, k, err))) goto out;
    /* end of precomputed vectors */
    if ((rc = moeh_varmap_load(o->var_map, &c.vm, err))) goto out;
    if ((rc = load_patients(&c, o->mimic_dir, err)) ||
        (rc = load_admissions(&c, o->mimic_dir, err)) ||
        (rc = load_icustays(&c, o->mimic_dir, err)) || (rc = build_cohort(&c, err)))
        goto out;
    MOEH_INFO("cohort: %zu admissions, %zu with an ICU stay, %zu adults, %zu in hospital and "
              "alive at t0+48h (%zu subjects)",
              c.st->admissions, c.st->with_icu, c.st->adult, c.st->cohort, c.st->subjects);
    if ((rc = moeh_extract_streams(&c, err))) goto out;
    for (size_t j = 0; j < c.n; j++)
        for (int m = 0; m < 3; m++)
            c.st->avail[m] += c.ds->avail[3 * j + m];
    if (c.st->out_of_range)
        MOEH_INFO("%llu values outside their plausible range were dropped",
                  (unsigned long long)c.st->out_of_range);
    if (c.st->malformed)
        MOEH_WARN("%llu malformed rows were skipped", (unsigned long long)c.st->malformed);
    moeh_assign_split(c.ds, o->val_frac, o->test_frac, o->seed);
    if ((rc = set_meta(&c, err))) goto out;
    *out = c.ds;
    c.ds = NULL;
out:
    moeh_dataset_destroy(&c.ds);
    moeh_varmap_free(&c.vm);
    free(c.pats);
    free(c.adms);
    free(c.cohort);
    free(c.cnt);
    free(c.lut_chart);
    free(c.lut_lab);
    moeh_i64map_free(&c.pat_map);
    moeh_i64map_free(&c.adm_map);
    moeh_i64map_free(&c.cohort_hadm);
    moeh_i64map_free(&c.cohort_subj);
    emb_free(&c.emb[0]);
    emb_free(&c.emb[1]);
    return rc;
}
