/* extract_streams.c - passes 2 and 3 of the cohort extraction (see extract.c): the event tables
 * (chartevents, labevents) streamed row by row into per-admission hourly accumulators, then
 * means, forward fill and hours since the last observation; the radiology notes and the
 * MIMIC-CXR metadata streamed for rows inside a cohort window, one image decoded per
 * admission. Memory is bounded by the cohort, not by the size of the tables. */
#include "extract_ctx.h"

#include <math.h>
#include <string.h>

typedef struct {
    int32_t idx;     /* cohort row */
    int64_t time;    /* charttime */
    int64_t seq;     /* tie-break: order in the file */
    size_t off, len; /* into the token pool */
} note_rec_t;

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
    moeh_progress_t m = {0};
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
    table_begin(&m, r);
    while ((rc = table_next(c, r, &m, NULL, &e, err)) > 0) {
        if ((++rows & 0xfff) == 0) table_tick(&m, r);
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
    if (rc < 0) goto out;
    table_done(&m, r, rows);
    c->st->event_bytes += moeh_csv_bytes(r);
    if (lab)
        c->st->lab_rows = rows;
    else
        c->st->chart_rows = rows;
out:
    moeh_progress_cancel(&m);
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
        /* the last four static features: height, height observed, weight, weight observed */
        float *s = ds->static_x + j * ds->f_static + (ds->f_static - 4);
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
    moeh_progress_t m = {0};
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
    int cnid = moeh_csv_col(r, "note_id"); /* the key of --note-embeddings */
    if (c->emb[0].path && cnid < 0) {
        rc = moeh_errf(err, -EBADMSG,
                       "%s:1: no column 'note_id' (--note-embeddings are keyed "
                       "by it)",
                       p);
        goto out;
    }
    c->st->have_notes = true;
    uint64_t rows = 0;
    table_begin(&m, r);
    while ((rc = table_next(c, r, &m, NULL, &e, err)) > 0) {
        if ((++rows & 0xfff) == 0) table_tick(&m, r);
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
        if (c->emb[0].path) { /* this note's vector joins its admission's mean */
            moeh_csv_field_t nid = moeh_csv_field(r, (size_t)cnid);
            emb_add(c, 0, (size_t)j, nid.p, nid.len, "note_id");
        }
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
    if (rc < 0) goto out;
    table_done(&m, r, rows);
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
    moeh_progress_cancel(&m);
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
    moeh_progress_t m = {0};
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
    uint64_t rows = 0;
    table_begin(&m, r);
    while ((rc = table_next(c, r, &m, &rows, &e, err)) > 0) {
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
        if (c->emb[1].path) { /* vectors: every AP/PA image of the window, no decoding */
            moeh_csv_field_t did = moeh_csv_field(r, (size_t)ci[0]);
            emb_add(c, 1, (size_t)j, did.p, did.len, "dicom_id");
            continue;
        }
        char dicom[72];
        moeh_csv_copy(moeh_csv_field(r, (size_t)ci[0]), dicom, sizeof dicom);
        if (t > pick[j].time || (t == pick[j].time && strcmp(dicom, pick[j].dicom) > 0)) {
            pick[j].time = t, pick[j].study = study;
            memcpy(pick[j].dicom, dicom, sizeof dicom);
        }
    }
    if (rc < 0) goto out;
    table_done(&m, r, rows);
    if (c->emb[1].path) { /* emb_finish sets the availability */
        rc = 0;
        goto out;
    }
    size_t S = c->o->img_size, missing = 0, bad = 0, done = 0, n_pick = 0, tried = 0;
    for (size_t j = 0; j < c->n; j++)
        n_pick += pick[j].time != INT64_MIN;
    moeh_progress_begin(&m, "chest X-ray images", n_pick, "images");
    for (size_t j = 0; j < c->n; j++) {
        if (pick[j].time == INT64_MIN) continue;
        moeh_progress_update(&m, tried++);
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
        done++;
    }
    moeh_progress_update(&m, tried);
    char note[64];
    snprintf(note, sizeof note, "%zu decoded", done);
    moeh_progress_end(&m, note);
    if (missing || bad)
        MOEH_WARN("chest X-rays: %zu selected images missing, %zu unreadable", missing, bad);
    rc = 0;
out:
    moeh_progress_cancel(&m);
    free(pick);
    moeh_csv_destroy(&r);
    return rc;
}

int moeh_extract_streams(ctx_t *c, moeh_err_t *err)
{
    char p[PATH_MAX];
    int rc;
    if ((rc = build_luts(c, err))) return rc;
    for (int k = 0; k < 2; k++)
        if (c->emb[k].path && (rc = emb_attach(c, k, err))) return rc;
    size_t cells = c->n * MOEH_DS_T * c->vm.n_vars;
    c->sum = c->ds->ts_value; /* zeroed by moeh_dataset_create */
    c->cnt = calloc(cells ? cells : 1, sizeof *c->cnt);
    if (!c->cnt) return moeh_errf(err, -ENOMEM, "out of memory for %zu hourly cells", cells);
    path2(p, sizeof p, c->o->mimic_dir, "icu/d_items.csv.gz");
    if (file_exists(p)) check_dictionary(c, p, "chartevents");
    path2(p, sizeof p, c->o->mimic_dir, "hosp/d_labitems.csv.gz");
    if (file_exists(p)) check_dictionary(c, p, "labevents");
    path2(p, sizeof p, c->o->mimic_dir, "icu/chartevents.csv.gz");
    if ((rc = stream_events(c, p, false, &c->st->have_vitals, err))) return rc;
    path2(p, sizeof p, c->o->mimic_dir, "hosp/labevents.csv.gz");
    if ((rc = stream_events(c, p, true, &c->st->have_labs, err))) return rc;
    finish_series(c);
    if (c->o->note_dir && (rc = load_notes(c, err))) return rc;
    if (!c->o->note_dir) MOEH_WARN("no --note directory: notes are absent");
    if (c->emb[0].path && (rc = emb_finish(c, 0, err))) return rc;
    if (c->o->cxr_dir && (rc = load_cxr(c, err))) return rc;
    if (!c->o->cxr_dir) MOEH_WARN("no --cxr directory: chest X-rays are absent");
    if (c->emb[1].path && (rc = emb_finish(c, 1, err))) return rc;
    return 0;
}
