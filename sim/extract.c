/* extract.c - the MIMIC-IV cohort of DESIGN §3.1 as a dataset (§3.2).
 *
 * Pass 1 reads the small tables whole (patients, admissions, icustays), builds the cohort and
 * its labels. Pass 2 streams the event tables (chartevents, labevents) row by row into
 * per-admission hourly accumulators, so memory is O(cohort x 48 x F), independent of the
 * size of chartevents. Pass 3 streams radiology notes and the CXR metadata, keeping only
 * rows inside a cohort window, then decodes one image per admission. Every step that lacks
 * its table warns and leaves that modality absent. */
#include "moeh_extract.h"
#include "i64map.h"
#include "moeh_csv.h"

#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#define HOUR 3600
#define WINDOW (MOEH_DS_T * HOUR)
#define MAX_REPORTED 20

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

/* ---- extraction context ---------------------------------------------------------------- */
typedef struct {
    int64_t subject, hadm, admit, disch, death, t0;
    int32_t admit_year, type, ins, race, unit;
    int8_t expire, icu;
} adm_t;

typedef struct {
    int32_t anchor_age, anchor_year;
    int8_t female;
} pat_t;

typedef struct {
    int32_t idx;     /* cohort row */
    int64_t time;    /* charttime */
    int64_t seq;     /* tie-break: order in the file */
    size_t off, len; /* into the token pool */
} note_rec_t;

typedef struct {
    const moeh_extract_opts_t *o;
    moeh_extract_stats_t *st;
    moeh_varmap_t vm;
    pat_t *pats;
    moeh_i64map_t pat_map, adm_map, cohort_hadm, cohort_subj;
    adm_t *adms;
    size_t n_adms;
    int32_t *cohort; /* adms index per cohort row */
    size_t n;
    float *sum; /* hourly sums: the dataset's ts_value, turned into means in place */
    uint16_t *cnt;
    int32_t *lut_chart, *lut_lab; /* itemid -> varmap row or -1 */
    size_t lut_chart_n, lut_lab_n;
    moeh_dataset_t *ds;
} ctx_t;

static int path2(char *out, size_t cap, const char *a, const char *b)
{
    int n = snprintf(out, cap, "%s/%s", a, b);
    return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

static bool file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Handles a malformed row: reports it (the first MAX_REPORTED) and returns 0 to skip, or the
 * error if --strict. */
static int malformed(ctx_t *c, int rc, moeh_err_t *e, moeh_err_t *err)
{
    c->st->malformed++;
    if (c->o->strict) {
        *err = *e;
        return rc;
    }
    if (c->st->malformed <= MAX_REPORTED) MOEH_WARN("skipping malformed row: %s", e->msg);
    if (c->st->malformed == MAX_REPORTED)
        MOEH_WARN("(further malformed rows are counted, not shown)");
    return 0;
}

/* Required columns by name into idx[]. */
static int cols(moeh_csv_t *r, const char *const *names, int *idx, size_t n, moeh_err_t *err)
{
    for (size_t i = 0; i < n; i++)
        if ((idx[i] = moeh_csv_require_col(r, names[i], err)) < 0) return idx[i];
    return 0;
}

static void progress(const moeh_csv_t *r, const char *what, uint64_t rows, int64_t t_start,
                     int64_t *t_last, bool final)
{
    int64_t now = moeh_now_ms();
    if (!final && now - *t_last < 2000) return;
    *t_last = now;
    double s = (double)(now - t_start) / 1000.0, mb = (double)moeh_csv_bytes(r) / 1e6;
    MOEH_INFO("%s: %.0f MB, %.2f M rows, %.0f MB/s, %.2f M rows/s%s", what, mb, (double)rows / 1e6,
              s > 0 ? mb / s : 0.0, s > 0 ? (double)rows / 1e6 / s : 0.0, final ? " (done)" : "");
}

static int load_patients(ctx_t *c, const char *dir, moeh_err_t *err)
{
    char p[PATH_MAX];
    moeh_csv_t *r = NULL;
    moeh_err_t e = {0};
    int rc, ci[4];
    size_t cap = 0, n = 0;
    static const char *const names[] = {"subject_id", "gender", "anchor_age", "anchor_year"};
    if ((rc = path2(p, sizeof p, dir, "hosp/patients.csv.gz")) ||
        (rc = moeh_csv_open(p, &r, err)) || (rc = cols(r, names, ci, 4, err)) ||
        (rc = moeh_i64map_init(&c->pat_map, 1024)))
        goto out;
    while ((rc = moeh_csv_next(r, &e)) != 0) {
        if (rc < 0) {
            if (rc != -EBADMSG || (rc = malformed(c, rc, &e, err))) goto out;
            continue;
        }
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
out:
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
    while ((rc = moeh_csv_next(r, &e)) != 0) {
        if (rc < 0) {
            if (rc != -EBADMSG || (rc = malformed(c, rc, &e, err))) goto out;
            continue;
        }
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
out:
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
    static const char *const names[] = {"hadm_id", "first_careunit", "intime"};
    if ((rc = path2(p, sizeof p, dir, "icu/icustays.csv.gz")) || (rc = moeh_csv_open(p, &r, err)) ||
        (rc = cols(r, names, ci, 3, err)))
        goto out;
    while ((rc = moeh_csv_next(r, &e)) != 0) {
        if (rc < 0) {
            if (rc != -EBADMSG || (rc = malformed(c, rc, &e, err))) goto out;
            continue;
        }
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
out:
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

/* The cohort row of an event: by hadm_id, or (hadm_id empty) the subject's admission whose
 * window contains t. -1 if none; sets *h to the hour bin. */
static int find_row(const ctx_t *c, int64_t hadm, bool have_hadm, int64_t subject, int64_t t,
                    int *h)
{
    uint32_t j;
    if (have_hadm) {
        if (!moeh_i64map_get(&c->cohort_hadm, hadm, &j)) return -1;
        int64_t d = t - c->adms[c->cohort[j]].t0;
        if (d < 0 || d >= WINDOW) return -1;
        *h = (int)(d / HOUR);
        return (int)j;
    }
    if (!moeh_i64map_get(&c->cohort_subj, subject, &j)) return -1;
    for (; j < c->n && c->ds->ids[2 * j] == subject; j++) {
        int64_t d = t - c->adms[c->cohort[j]].t0;
        if (d >= 0 && d < WINDOW) {
            *h = (int)(d / HOUR);
            return (int)j;
        }
    }
    return -1;
}

static int build_luts(ctx_t *c, moeh_err_t *err)
{
    int32_t mx = 0;
    for (size_t k = 0; k < c->vm.n_rows; k++)
        if (c->vm.rows[k].itemid > mx) mx = c->vm.rows[k].itemid;
    c->lut_chart_n = c->lut_lab_n = (size_t)mx + 1;
    c->lut_chart = malloc(c->lut_chart_n * sizeof *c->lut_chart);
    c->lut_lab = malloc(c->lut_lab_n * sizeof *c->lut_lab);
    if (!c->lut_chart || !c->lut_lab) return moeh_errf(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i <= (size_t)mx; i++)
        c->lut_chart[i] = c->lut_lab[i] = -1;
    for (size_t k = 0; k < c->vm.n_rows; k++) {
        bool lab = !strcmp(c->vm.rows[k].table, "labevents");
        (lab ? c->lut_lab : c->lut_chart)[c->vm.rows[k].itemid] = (int32_t)k;
    }
    return 0;
}

/* Warns about map rows whose itemid is absent from the dictionary or labelled otherwise. */
static void check_dictionary(ctx_t *c, const char *path, const char *table)
{
    moeh_csv_t *r = NULL;
    moeh_err_t e = {0};
    if (moeh_csv_open(path, &r, &e)) {
        MOEH_WARN("cannot check the variable map against %s: %s", path, e.msg);
        return;
    }
    int ci = moeh_csv_col(r, "itemid"), cl = moeh_csv_col(r, "label");
    bool *seen = calloc(c->vm.n_rows + 1, 1);
    while (ci >= 0 && cl >= 0 && seen && moeh_csv_next(r, &e) == 1) {
        int64_t id;
        if (moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci), &id)) continue;
        for (size_t k = 0; k < c->vm.n_rows; k++) {
            const moeh_varmap_row_t *w = &c->vm.rows[k];
            if (w->itemid != id || strcmp(w->table, table)) continue;
            seen[k] = true;
            if (!moeh_csv_eq(moeh_csv_field(r, (size_t)cl), w->label)) {
                char got[96];
                MOEH_WARN("variable map: itemid %d is '%s' in %s, the map expects '%s'", (int)id,
                          moeh_csv_copy(moeh_csv_field(r, (size_t)cl), got, sizeof got), path,
                          w->label);
            }
        }
    }
    for (size_t k = 0; seen && k < c->vm.n_rows; k++)
        if (!seen[k] && !strcmp(c->vm.rows[k].table, table))
            MOEH_WARN("variable map: itemid %d (%s) is not in %s", (int)c->vm.rows[k].itemid,
                      c->vm.rows[k].name, path);
    free(seen);
    moeh_csv_destroy(&r);
}

/* Streams one event table into the hourly accumulators. *present = false if it is absent. */
static int stream_events(ctx_t *c, const char *path, bool lab, bool *present, moeh_err_t *err)
{
    moeh_csv_t *r = NULL;
    moeh_err_t e = {0};
    int rc, ci[5];
    static const char *const names[] = {"subject_id", "hadm_id", "itemid", "charttime", "valuenum"};
    *present = false;
    rc = moeh_csv_open(path, &r, &e);
    if (rc == -ENOENT) {
        MOEH_WARN("%s is missing: %s are absent (%s)", path,
                  lab ? "laboratory values" : "vital signs", "the cohort is still built");
        return 0;
    }
    if (rc) {
        *err = e;
        return rc;
    }
    if ((rc = cols(r, names, ci, 5, err))) goto out;
    *present = true;
    const int32_t *lut = lab ? c->lut_lab : c->lut_chart;
    const size_t lut_n = lab ? c->lut_lab_n : c->lut_chart_n;
    const size_t F = c->vm.n_vars;
    uint64_t rows = 0;
    int64_t t_start = moeh_now_ms(), t_last = t_start;
    const char *what = lab ? "labevents" : "chartevents";
    while ((rc = moeh_csv_next(r, &e)) != 0) {
        if (rc < 0) {
            if (rc != -EBADMSG || (rc = malformed(c, rc, &e, err))) goto out;
            continue;
        }
        if ((++rows & 0xffff) == 0) progress(r, what, rows, t_start, &t_last, false);
        int64_t item, hadm = 0, subj = 0, t;
        if (moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[2]), &item)) {
            moeh_csv_field_error(r, (size_t)ci[2], &e, "expected an integer itemid");
            if ((rc = malformed(c, -EBADMSG, &e, err))) goto out;
            continue;
        }
        if (item < 0 || (size_t)item >= lut_n || lut[item] < 0) continue;
        int hr = moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[1]), &hadm);
        if (hr == -ENODATA && lab)
            hr = moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[0]), &subj) ? -EBADMSG : 1;
        int col = hr < 0 ? ci[1] : ci[3];
        if (hr < 0 || moeh_csv_parse_time(moeh_csv_field(r, (size_t)ci[3]), &t)) {
            moeh_csv_field_error(r, (size_t)col, &e, "missing or malformed value");
            if ((rc = malformed(c, -EBADMSG, &e, err))) goto out;
            continue;
        }
        int h;
        int j = find_row(c, hadm, hr == 0, subj, t, &h);
        if (j < 0) continue;
        double v;
        int vr = moeh_csv_parse_f64(moeh_csv_field(r, (size_t)ci[4]), &v);
        if (vr == -ENODATA) continue; /* a text-only result */
        if (vr) {
            moeh_csv_field_error(r, (size_t)ci[4], &e, "expected a number");
            if ((rc = malformed(c, -EBADMSG, &e, err))) goto out;
            continue;
        }
        const moeh_varmap_row_t *w = &c->vm.rows[lut[item]];
        v = v * w->mul + w->add;
        if (!(v >= w->lo && v <= w->hi)) {
            c->st->out_of_range++;
            continue;
        }
        size_t k = ((size_t)j * MOEH_DS_T + (size_t)h) * F + (size_t)w->var;
        if (c->cnt[k] < UINT16_MAX) {
            c->sum[k] += (float)v;
            c->cnt[k]++;
        }
        c->st->used_rows++;
    }
    progress(r, what, rows, t_start, &t_last, true);
    c->st->event_bytes += moeh_csv_bytes(r);
    if (lab)
        c->st->lab_rows = rows;
    else
        c->st->chart_rows = rows;
out:
    moeh_csv_destroy(&r);
    return rc;
}

/* Means, forward fill, deltas; height and weight into the static features. */
static void finish_series(ctx_t *c)
{
    moeh_dataset_t *ds = c->ds;
    const size_t F = c->vm.n_vars, T = MOEH_DS_T;
    int v_height = -1, v_weight = -1;
    for (size_t v = 0; v < F; v++) {
        if (!strcmp(c->vm.var_names[v], "height")) v_height = (int)v;
        if (!strcmp(c->vm.var_names[v], "weight")) v_weight = (int)v;
    }
    for (size_t j = 0; j < c->n; j++) {
        for (size_t v = 0; v < F; v++) {
            float last = NAN;
            int last_t = -1;
            for (size_t t = 0; t < T; t++) {
                size_t k = (j * T + t) * F + v;
                if (c->cnt[k]) {
                    last = c->sum[k] / (float)c->cnt[k];
                    last_t = (int)t;
                    ds->ts_mask[k] = 1;
                }
                ds->ts_value[k] = last;
                ds->ts_delta[k] = (float)((int)t - last_t);
            }
        }
        float *s = ds->static_x + j * F_STATIC + (F_STATIC - 4);
        int vs[2] = {v_height, v_weight};
        for (int q = 0; q < 2; q++) {
            if (vs[q] < 0) continue;
            for (size_t t = 0; t < T; t++) {
                size_t k = (j * T + t) * F + (size_t)vs[q];
                if (ds->ts_mask[k]) {
                    s[2 * q] = ds->ts_value[k];
                    s[2 * q + 1] = 1;
                    break;
                }
            }
        }
    }
}

static int cmp_note(const void *x, const void *y)
{
    const note_rec_t *a = x, *b = y;
    if (a->idx != b->idx) return a->idx < b->idx ? -1 : 1;
    if (a->time != b->time) return a->time < b->time ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static int load_notes(ctx_t *c, moeh_err_t *err)
{
    char p[PATH_MAX];
    moeh_csv_t *r = NULL;
    moeh_err_t e = {0};
    int rc, ci[4];
    note_rec_t *recs = NULL;
    int32_t *pool = NULL;
    size_t nrec = 0, rcap = 0, npool = 0, pcap = 0;
    static const char *const names[] = {"subject_id", "hadm_id", "charttime", "text"};
    if ((rc = path2(p, sizeof p, c->o->note_dir, "note/radiology.csv.gz")))
        return moeh_errf(err, rc, "path too long");
    if (!file_exists(p)) path2(p, sizeof p, c->o->note_dir, "radiology.csv.gz");
    rc = moeh_csv_open(p, &r, &e);
    if (rc == -ENOENT) {
        MOEH_WARN("%s is missing: notes are absent", p);
        return 0;
    }
    if (rc) {
        *err = e;
        return rc;
    }
    if ((rc = cols(r, names, ci, 4, err))) goto out;
    c->st->have_notes = true;
    uint64_t rows = 0;
    int64_t t_start = moeh_now_ms(), t_last = t_start;
    while ((rc = moeh_csv_next(r, &e)) != 0) {
        if (rc < 0) {
            if (rc != -EBADMSG || (rc = malformed(c, rc, &e, err))) goto out;
            continue;
        }
        if ((++rows & 0xfff) == 0) progress(r, "radiology notes", rows, t_start, &t_last, false);
        int64_t subj, hadm = 0, t;
        int hr = moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[1]), &hadm);
        if (moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[0]), &subj) || (hr && hr != -ENODATA) ||
            moeh_csv_parse_time(moeh_csv_field(r, (size_t)ci[2]), &t)) {
            moeh_csv_field_error(r, (size_t)ci[2], &e,
                                 "malformed subject_id, hadm_id or charttime");
            if ((rc = malformed(c, -EBADMSG, &e, err))) goto out;
            continue;
        }
        int h, j = find_row(c, hadm, hr == 0, subj, t, &h);
        if (j < 0) continue;
        if (nrec == rcap) {
            rcap = rcap ? rcap * 2 : 1024;
            note_rec_t *nr = realloc(recs, rcap * sizeof *nr);
            if (!nr) {
                rc = moeh_errf(err, -ENOMEM, "notes: out of memory");
                goto out;
            }
            recs = nr;
        }
        size_t before = npool;
        moeh_csv_field_t tx = moeh_csv_field(r, (size_t)ci[3]);
        if (moeh_tokenize(tx.p, tx.len, &pool, &npool, &pcap)) {
            rc = moeh_errf(err, -ENOMEM, "notes: out of memory");
            goto out;
        }
        recs[nrec++] = (note_rec_t){j, t, (int64_t)rows, before, npool - before};
    }
    progress(r, "radiology notes", rows, t_start, &t_last, true);
    qsort(recs, nrec, sizeof *recs, cmp_note);
    int32_t *tok = malloc(npool ? npool * sizeof *tok : 1);
    if (!tok) {
        rc = moeh_errf(err, -ENOMEM, "notes: out of memory");
        goto out;
    }
    size_t pos = 0, k = 0;
    for (size_t j = 0; j < c->n; j++) {
        c->ds->note_offsets[j] = (int64_t)pos;
        bool any = false;
        for (; k < nrec && recs[k].idx == (int32_t)j; k++) {
            memcpy(tok + pos, pool + recs[k].off, recs[k].len * sizeof *tok);
            pos += recs[k].len;
            any = true;
        }
        c->ds->avail[3 * j + MOEH_MOD_NOTES] = any;
    }
    c->ds->note_offsets[c->n] = (int64_t)pos;
    rc = moeh_dataset_set_tokens(c->ds, tok, pos, err);
    free(tok);
out:
    free(recs);
    free(pool);
    moeh_csv_destroy(&r);
    return rc;
}

typedef struct {
    int64_t time;
    int64_t study;
    char dicom[72];
} cxr_pick_t;

static int load_cxr(ctx_t *c, moeh_err_t *err)
{
    char p[PATH_MAX];
    moeh_csv_t *r = NULL;
    moeh_err_t e = {0};
    int rc, ci[5];
    static const char *const names[] = {"dicom_id", "subject_id", "study_id", "StudyDate",
                                        "StudyTime"};
    cxr_pick_t *pick = calloc(c->n + 1, sizeof *pick);
    if (!pick) return moeh_errf(err, -ENOMEM, "cxr: out of memory");
    for (size_t j = 0; j < c->n; j++)
        pick[j].time = INT64_MIN;
    if ((rc = path2(p, sizeof p, c->o->cxr_dir, "mimic-cxr-2.0.0-metadata.csv.gz"))) goto out;
    rc = moeh_csv_open(p, &r, &e);
    if (rc == -ENOENT) {
        MOEH_WARN("%s is missing: chest X-rays are absent", p);
        rc = 0;
        goto out;
    }
    if (rc) {
        *err = e;
        goto out;
    }
    if ((rc = cols(r, names, ci, 5, err))) goto out;
    int cv = moeh_csv_col(r, "ViewPosition");
    if (cv < 0) {
        rc = moeh_errf(err, -EBADMSG, "%s:1: no column 'ViewPosition'", p);
        goto out;
    }
    c->st->have_cxr = true;
    while ((rc = moeh_csv_next(r, &e)) != 0) {
        if (rc < 0) {
            if (rc != -EBADMSG || (rc = malformed(c, rc, &e, err))) goto out;
            continue;
        }
        moeh_csv_field_t vp = moeh_csv_field(r, (size_t)cv);
        if (!moeh_csv_eq(vp, "AP") && !moeh_csv_eq(vp, "PA")) continue;
        int64_t subj, study, date;
        double tm;
        if (moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[1]), &subj) ||
            moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[2]), &study) ||
            moeh_csv_parse_i64(moeh_csv_field(r, (size_t)ci[3]), &date) ||
            moeh_csv_parse_f64(moeh_csv_field(r, (size_t)ci[4]), &tm) || date < 10000101 ||
            tm < 0 || tm >= 240000) {
            moeh_csv_field_error(r, (size_t)ci[3], &e, "malformed subject, study, date or time");
            if ((rc = malformed(c, -EBADMSG, &e, err))) goto out;
            continue;
        }
        int64_t hhmmss = (int64_t)tm;
        int64_t t = moeh_days_from_civil(date / 10000, (unsigned)(date / 100 % 100),
                                         (unsigned)(date % 100)) *
                        86400 +
                    hhmmss / 10000 * 3600 + hhmmss / 100 % 100 * 60 + hhmmss % 100;
        int h, j = find_row(c, 0, false, subj, t, &h);
        if (j < 0) continue;
        char dicom[72];
        moeh_csv_copy(moeh_csv_field(r, (size_t)ci[0]), dicom, sizeof dicom);
        if (t > pick[j].time || (t == pick[j].time && strcmp(dicom, pick[j].dicom) > 0)) {
            pick[j].time = t, pick[j].study = study;
            memcpy(pick[j].dicom, dicom, sizeof dicom);
        }
    }
    size_t S = c->o->img_size, missing = 0, bad = 0, done = 0;
    int64_t t_last = moeh_now_ms();
    for (size_t j = 0; j < c->n; j++) {
        if (pick[j].time == INT64_MIN) continue;
        long long subj = (long long)c->ds->ids[2 * j];
        char rel[256];
        snprintf(rel, sizeof rel, "files/p%02lld/p%lld/s%lld/%s.jpg", subj / 1000000, subj,
                 (long long)pick[j].study, pick[j].dicom);
        path2(p, sizeof p, c->o->cxr_dir, rel);
        if (!file_exists(p)) { /* a PNG copy is accepted under the same name */
            size_t l = strlen(p);
            memcpy(p + l - 4, ".png", 5);
        }
        moeh_err_t ie = {0};
        int irc = moeh_image_load_gray(p, S, c->ds->images + j * S * S, &ie);
        if (irc == -ENOENT) {
            if (missing++ < MAX_REPORTED) MOEH_WARN("CXR image missing: %s", rel);
            continue;
        }
        if (irc) {
            if (bad++ < MAX_REPORTED) MOEH_WARN("CXR image unreadable: %s", ie.msg);
            memset(c->ds->images + j * S * S, 0, S * S);
            continue;
        }
        c->ds->avail[3 * j + MOEH_MOD_IMG] = 1;
        if (++done % 256 == 0 && moeh_now_ms() - t_last > 2000) {
            t_last = moeh_now_ms();
            MOEH_INFO("chest X-rays: %zu images decoded", done);
        }
    }
    if (missing || bad)
        MOEH_WARN("chest X-rays: %zu selected images missing, %zu unreadable", missing, bad);
    rc = 0;
out:
    free(pick);
    moeh_csv_destroy(&r);
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
    cJSON *x = ds->extra = cJSON_CreateObject();
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
    char p[PATH_MAX];
    *out = NULL;
    c.o = o;
    c.st = st ? st : &dummy;
    memset(c.st, 0, sizeof *c.st);
    if (o->img_size < 8 || o->img_size > 1024)
        return moeh_errf(err, -EINVAL, "image size %zu out of range [8, 1024]", o->img_size);
    if ((rc = moeh_varmap_load(o->var_map, &c.vm, err))) return rc;
    if ((rc = load_patients(&c, o->mimic_dir, err)) ||
        (rc = load_admissions(&c, o->mimic_dir, err)) ||
        (rc = load_icustays(&c, o->mimic_dir, err)) || (rc = build_cohort(&c, err)))
        goto out;
    MOEH_INFO("cohort: %zu admissions, %zu with an ICU stay, %zu adults, %zu in hospital and "
              "alive at t0+48h (%zu subjects)",
              c.st->admissions, c.st->with_icu, c.st->adult, c.st->cohort, c.st->subjects);
    if ((rc = build_luts(&c, err))) goto out;
    size_t cells = c.n * MOEH_DS_T * c.vm.n_vars;
    c.sum = c.ds->ts_value; /* zeroed by moeh_dataset_create */
    c.cnt = calloc(cells ? cells : 1, sizeof *c.cnt);
    if (!c.cnt) {
        rc = moeh_errf(err, -ENOMEM, "out of memory for %zu hourly cells", cells);
        goto out;
    }
    path2(p, sizeof p, o->mimic_dir, "icu/d_items.csv.gz");
    if (file_exists(p)) check_dictionary(&c, p, "chartevents");
    path2(p, sizeof p, o->mimic_dir, "hosp/d_labitems.csv.gz");
    if (file_exists(p)) check_dictionary(&c, p, "labevents");
    path2(p, sizeof p, o->mimic_dir, "icu/chartevents.csv.gz");
    if ((rc = stream_events(&c, p, false, &c.st->have_vitals, err))) goto out;
    path2(p, sizeof p, o->mimic_dir, "hosp/labevents.csv.gz");
    if ((rc = stream_events(&c, p, true, &c.st->have_labs, err))) goto out;
    finish_series(&c);
    if (o->note_dir && (rc = load_notes(&c, err))) goto out;
    if (!o->note_dir) MOEH_WARN("no --note directory: notes are absent");
    if (o->cxr_dir && (rc = load_cxr(&c, err))) goto out;
    if (!o->cxr_dir) MOEH_WARN("no --cxr directory: chest X-rays are absent");
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
    return rc;
}
