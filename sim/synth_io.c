/* synth_io.c - the synthetic MIMIC-IV's buffered gzip table writer, path helper and
 * truth.json (see synth_io.h). */
#include "synth_io.h"
#include "synth_het.h"

#include "moeh_json_file.h"

#include <math.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* snprintf for paths: the result is checked by the callers through moeh_mkdir_p/fopen;
 * truncation is reported as an empty string, which those calls reject. */
void synth_pathf(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) out[0] = '\0';
}

static int tw_flush(tw_t *w, moeh_err_t *err)
{
    if (w->len && gzwrite(w->g, w->buf, (unsigned)w->len) != (int)w->len)
        return moeh_errf(err, -EIO, "%s: write failed", w->path);
    w->len = 0;
    return 0;
}

int tw_open(tw_t *w, const char *dir, const char *name, int level, const char *header,
            moeh_err_t *err)
{
    memset(w, 0, sizeof *w);
    int rc;
    if ((rc = moeh_mkdir_p(dir, err))) return rc;
    synth_pathf(w->path, sizeof w->path, "%s/%s", dir, name);
    char mode[8];
    snprintf(mode, sizeof mode, "wb%d", level);
    w->cap = (size_t)1 << 20;
    if (!(w->buf = malloc(w->cap))) return moeh_errf(err, -ENOMEM, "out of memory");
    if (!(w->g = gzopen(w->path, mode)))
        return moeh_errf(err, -EIO, "%s: cannot create: %s", w->path, strerror(errno));
    gzbuffer(w->g, 1 << 20);
    size_t hl = strlen(header);
    memcpy(w->buf, header, hl);
    w->len = hl;
    return 0;
}

/* Appends one formatted row (rows must be < 64 KiB). */
int tw_row(tw_t *w, moeh_err_t *err, const char *fmt, ...)
{
    if (w->cap - w->len < 65536) {
        int rc = tw_flush(w, err);
        if (rc) return rc;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->buf + w->len, w->cap - w->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= w->cap - w->len)
        return moeh_errf(err, -EOVERFLOW, "%s: row too long", w->path);
    w->len += (size_t)n;
    w->rows++;
    return 0;
}

int tw_close(tw_t *w, moeh_err_t *err)
{
    int rc = 0;
    if (w->g) {
        rc = tw_flush(w, err);
        if (gzclose(w->g) != Z_OK && !rc) rc = moeh_errf(err, -EIO, "%s: close failed", w->path);
    }
    free(w->buf);
    w->g = NULL, w->buf = NULL;
    return rc;
}

/* An AUROC to 4 decimals, as truth.json has always shown it (NaN stays NaN: cJSON writes null). */
static double dec4(double v)
{
    return round(v * 1e4) / 1e4;
}

/* Writes path (truth.json) from st with cJSON: the counts and oracle AUROCs per task (the
 * schema's names) and modality, and for the heterogeneous profile the modality-limited
 * oracle and the cohort per patient kind and hospital. 0 or a negative errno (err set). */
int synth_write_truth(const char *path, const moeh_synth_opts_t *o, const moeh_synth_stats_t *st,
                      bool het, moeh_err_t *err)
{
    static const char *const what[] = {"positives", "labelled", "oracle_auroc", "modalities"};
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed); /* exact, not 2^53 */
    cJSON *j = cJSON_CreateObject();
    bool ok = j && cJSON_AddStringToObject(j, "generator", "moeh synth") &&
              cJSON_AddRawToObject(j, "seed", seed) &&
              cJSON_AddNumberToObject(j, "cohort", (double)st->cohort) &&
              cJSON_AddNumberToObject(j, "subjects", (double)st->subjects) &&
              cJSON_AddNumberToObject(j, "admissions", (double)st->admissions);
    for (int w = 0; ok && w < 4; w++) {
        cJSON *x = cJSON_AddObjectToObject(j, what[w]);
        ok = x != NULL;
        for (int k = 0, nk = w == 3 ? MOEH_N_MODS : MOEH_N_TASKS; ok && k < nk; k++) {
            double v = w == 0   ? (double)st->positives[k]
                       : w == 1 ? (double)st->labelled[k]
                       : w == 2 ? dec4(st->oracle_auroc[k])
                                : (double)st->avail[k];
            ok = cJSON_AddNumberToObject(x, w == 3 ? moeh_mod_names[k] : moeh_task_names[k], v);
        }
    }
    if (ok && het) {
        cJSON *lim = NULL, *kinds = NULL, *hosp = NULL;
        ok = cJSON_AddStringToObject(j, "profile", "heterogeneous") &&
             (lim = cJSON_AddObjectToObject(j, "limited_oracle_auroc")) &&
             (kinds = cJSON_AddObjectToObject(j, "kinds")) &&
             (hosp = cJSON_AddArrayToObject(j, "hospitals"));
        for (int k = 0; ok && k < MOEH_N_TASKS; k++)
            ok = cJSON_AddNumberToObject(lim, moeh_task_names[k], dec4(st->limited_auroc[k]));
        for (int k = 0; ok && k < HET_N_KINDS; k++) {
            char key[2] = {het_kind_letter[k], '\0'};
            ok = cJSON_AddNumberToObject(kinds, key, (double)st->kind_n[k]);
        }
        for (int k = 0; ok && k < HET_N_HOSP; k++) {
            cJSON *n = cJSON_CreateNumber((double)st->hosp_n[k]);
            ok = n && cJSON_AddItemToArray(hosp, n);
        }
    }
    int rc = ok ? moeh_json_write_file(path, j, err)
                : moeh_errf(err, -ENOMEM, "synth: out of memory writing %s", path);
    cJSON_Delete(j);
    return rc;
}
