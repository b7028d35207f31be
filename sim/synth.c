/* synth.c - the synthetic MIMIC-IV generator (see moeh_synth.h and docs/synthetic.md).
 *
 * Subjects are generated one after the other; each draws from its own random stream, so a
 * subject's data depends only on (seed, subject number). Every table is written as it goes
 * through a buffered gzip writer, so memory stays small at any scale. The latent state of an
 * admission is five standard normals: s (overall severity), h (haemodynamic: vitals), k
 * (renal/metabolic: labs), n (a condition only the report text states) and m (lung
 * involvement: mainly the image). The true risks are logistic in them; labels are drawn
 * from the risks and then the timestamps are laid out to make the labels true. */
#include "moeh_synth.h"
#include "moeh_csv.h"
#include "moeh_hist.h"
#include "moeh_progress.h"
#include "synth_het.h"
#include "synth_io.h"

#include <limits.h>
#include <math.h>
#include <string.h>
#include <turbojpeg.h>
#include <xxhash.h>
#include <zlib.h>

#define HOUR 3600
#define DAY 86400

/* ---- time and random helpers --------------------------------------------------------- */
static void civil(int64_t t, int *y, int *mo, int *d, int *h, int *mi, int *s)
{
    int64_t days = t >= 0 ? t / DAY : (t - DAY + 1) / DAY, sec = t - days * DAY;
    int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097, yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *mo = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*mo <= 2));
    *h = (int)(sec / 3600), *mi = (int)(sec / 60 % 60), *s = (int)(sec % 60);
}

/* "YYYY-MM-DD HH:MM:SS" into out (20 bytes) */
static const char *fmt_time(char *out, int64_t t)
{
    int y, mo, d, h, mi, s;
    civil(t, &y, &mo, &d, &h, &mi, &s);
    /* the moduli bound each field to its width (they are already in range for t >= 0) */
    snprintf(out, 20, "%04u-%02u-%02u %02u:%02u:%02u", (unsigned)y % 10000u, (unsigned)mo % 100u,
             (unsigned)d % 100u, (unsigned)h % 100u, (unsigned)mi % 100u, (unsigned)s % 100u);
    return out;
}

static int year_of(int64_t t)
{
    int y, mo, d, h, mi, s;
    civil(t, &y, &mo, &d, &h, &mi, &s);
    return y;
}

static double U(moeh_rng_t *r, double a, double b)
{
    return a + (b - a) * moeh_rng_uniform(r);
}

static bool P(moeh_rng_t *r, double p)
{
    return moeh_rng_uniform(r) < p;
}

static double N(moeh_rng_t *r)
{
    return moeh_rng_normal(r);
}

static double sigm(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

static double clamp(double x, double a, double b)
{
    return x < a ? a : x > b ? b : x;
}

/* ---- the generative model ------------------------------------------------------------- */
typedef struct {
    double s, h, k, n, m;
} latent_t;

/* True risk per task (docs/synthetic.md, "Labels"). */
static void true_risk(const latent_t *z, double age, double risk[3])
{
    double a = (age - 65.0) / 15.0;
    risk[0] = sigm(-2.4 + 0.9 * z->s + 0.7 * z->h + 0.6 * z->k + 0.7 * z->n + 0.7 * z->m + 0.3 * a);
    risk[1] = sigm(-0.3 + 0.7 * z->s + 0.4 * z->h + 0.7 * z->k + 0.3 * z->n + 0.6 * z->m);
    risk[2] = sigm(-1.8 + 0.3 * z->s + 0.3 * z->k + 0.8 * z->n + 0.3 * z->m);
}

typedef struct {
    const moeh_synth_opts_t *o;
    moeh_synth_stats_t *st;
    tw_t pat, adm, icu, chart, lab, note, cxr;
    FILE *truth;
    char cxr_dir[PATH_MAX];
    tjhandle tj;
    uint8_t *img;
    int64_t next_hadm, next_stay, next_labevent, next_specimen, next_study;
    double *risk;         /* cohort x 3 */
    double *risk_lim;     /* cohort x 3, the modality-limited oracle (heterogeneous profile) */
    uint8_t *label;       /* cohort x 3, 2 = masked */
    const het_adm_t *het; /* the current admission's kind and hospital; NULL: homogeneous */
} gen_t;

typedef struct {
    int itemid;
    const char *label, *abbr, *unit, *category;
} item_t;

static const item_t k_chart_items[] = {
    {220045, "Heart Rate", "HR", "bpm", "Routine Vital Signs"},
    {220179, "Non Invasive Blood Pressure systolic", "NBPs", "mmHg", "Routine Vital Signs"},
    {220180, "Non Invasive Blood Pressure diastolic", "NBPd", "mmHg", "Routine Vital Signs"},
    {220181, "Non Invasive Blood Pressure mean", "NBPm", "mmHg", "Routine Vital Signs"},
    {220050, "Arterial Blood Pressure systolic", "ABPs", "mmHg", "Routine Vital Signs"},
    {220051, "Arterial Blood Pressure diastolic", "ABPd", "mmHg", "Routine Vital Signs"},
    {220052, "Arterial Blood Pressure mean", "ABPm", "mmHg", "Routine Vital Signs"},
    {220210, "Respiratory Rate", "RR", "insp/min", "Respiratory"},
    {224690, "Respiratory Rate (Total)", "Respiratory Rate (Total)", "insp/min", "Respiratory"},
    {223761, "Temperature Fahrenheit", "Temperature F",
     "\xc2\xb0"
     "F",
     "Routine Vital Signs"},
    {223762, "Temperature Celsius", "Temperature C",
     "\xc2\xb0"
     "C",
     "Routine Vital Signs"},
    {220277, "O2 saturation pulseoxymetry", "SpO2", "%", "Respiratory"},
    {220739, "GCS - Eye Opening", "Eye Opening", "", "Neurological"},
    {223900, "GCS - Verbal Response", "Verbal Response", "", "Neurological"},
    {223901, "GCS - Motor Response", "Motor Response", "", "Neurological"},
    {223835, "Inspired O2 Fraction", "FiO2", "", "Respiratory"},
    {225664, "Glucose finger stick (range 70-100)", "Glucose FS (range 70 -100)", "", "Labs"},
    {220621, "Glucose (serum)", "Glucose (serum)", "", "Labs"},
    {226537, "Glucose (whole blood)", "Glucose (whole blood)", "", "Labs"},
    {226512, "Admission Weight (Kg)", "Admission Weight (Kg)", "kg", "General"},
    {224639, "Daily Weight", "Daily Weight", "kg", "General"},
    {226730, "Height (cm)", "Height (cm)", "cm", "General"},
    {220048, "Heart Rhythm", "Heart Rhythm", "", "Routine Vital Signs"},
    {220046, "Heart rate Alarm - High", "HR Alarm - High", "bpm", "Alarms"},
    {224641, "Alarms On", "Alarms On", "", "Alarms"},
};

typedef struct {
    int itemid;
    const char *label, *fluid, *category, *unit;
} lab_t;

static const lab_t k_labs[] = {
    {50912, "Creatinine", "Blood", "Chemistry", "mg/dL"},
    {51006, "Urea Nitrogen", "Blood", "Chemistry", "mg/dL"},
    {50983, "Sodium", "Blood", "Chemistry", "mEq/L"},
    {50971, "Potassium", "Blood", "Chemistry", "mEq/L"},
    {50902, "Chloride", "Blood", "Chemistry", "mEq/L"},
    {50882, "Bicarbonate", "Blood", "Chemistry", "mEq/L"},
    {50868, "Anion Gap", "Blood", "Chemistry", "mEq/L"},
    {50931, "Glucose", "Blood", "Chemistry", "mg/dL"},
    {51222, "Hemoglobin", "Blood", "Hematology", "g/dL"},
    {51221, "Hematocrit", "Blood", "Hematology", "%"},
    {51265, "Platelet Count", "Blood", "Hematology", "K/uL"},
    {51301, "White Blood Cells", "Blood", "Hematology", "K/uL"},
    {50813, "Lactate", "Blood", "Blood Gas", "mmol/L"},
    {50820, "pH", "Blood", "Blood Gas", "units"},
    {50960, "Magnesium", "Blood", "Chemistry", "mg/dL"},
    {50893, "Calcium, Total", "Blood", "Chemistry", "mg/dL"},
    {50970, "Phosphate", "Blood", "Chemistry", "mg/dL"},
    {50885, "Bilirubin, Total", "Blood", "Chemistry", "mg/dL"},
    {51237, "INR(PT)", "Blood", "Hematology", ""},
    {51300, "WBC Count", "Blood", "Hematology", "K/uL"},
};
#define N_LABS (sizeof k_labs / sizeof k_labs[0])

static int write_dictionaries(const char *dir, int level, moeh_err_t *err)
{
    tw_t w;
    char d[PATH_MAX];
    int rc;
    synth_pathf(d, sizeof d, "%s/icu", dir);
    if ((rc = tw_open(&w, d, "d_items.csv.gz", level,
                      "itemid,label,abbreviation,linksto,category,unitname,param_type,"
                      "lownormalvalue,highnormalvalue\n",
                      err)))
        goto out;
    for (size_t i = 0; i < sizeof k_chart_items / sizeof k_chart_items[0]; i++) {
        const item_t *it = &k_chart_items[i];
        if ((rc = tw_row(&w, err, "%d,%s,%s,chartevents,%s,%s,Numeric,,\n", it->itemid, it->label,
                         it->abbr, it->category, it->unit)))
            goto out;
    }
    if ((rc = tw_close(&w, err))) goto out;
    synth_pathf(d, sizeof d, "%s/hosp", dir);
    if ((rc = tw_open(&w, d, "d_labitems.csv.gz", level, "itemid,label,fluid,category\n", err)))
        goto out;
    for (size_t i = 0; i < N_LABS; i++) {
        const lab_t *l = &k_labs[i];
        bool q = strchr(l->label, ',') != NULL;
        if ((rc = tw_row(&w, err, "%d,%s%s%s,%s,%s\n", l->itemid, q ? "\"" : "", l->label,
                         q ? "\"" : "", l->fluid, l->category)))
            goto out;
    }
    rc = tw_close(&w, err);
out:
    tw_close(&w, err);
    return rc;
}

/* one vital-sign row */
static int chart_row(gen_t *g, int64_t subj, int64_t hadm, int64_t stay, int64_t t, int item,
                     double v, int decimals, const char *uom, moeh_err_t *err)
{
    char ct[20], stt[20];
    fmt_time(ct, t);
    fmt_time(stt, t + 600);
    return tw_row(&g->chart, err, "%lld,%lld,%lld,%d,%s,%s,%d,%.*f,%.*f,%s,0\n", (long long)subj,
                  (long long)hadm, (long long)stay, 10000 + (int)(t / HOUR % 97), ct, stt, item,
                  decimals, v, decimals, v, uom);
}

static int gen_chart(gen_t *g, moeh_rng_t *r, const latent_t *z, int64_t subj, int64_t hadm,
                     int64_t stay, int64_t t0, int64_t end, moeh_err_t *err)
{
    int rc = 0;
    double off = g->het ? het_chart_offset(g->het->hospital) : 0.0;
    double drift = 0, p_meas = sigm(0.4 + off + 1.0 * z->s),
           weight = clamp(80 + 15 * N(r), 40, 180);
    bool arterial = P(r, sigm(-0.5 + z->s)), temp_f = P(r, 0.6), o2 = z->m > 0.3;
    if ((rc = chart_row(g, subj, hadm, stay, t0 + (int64_t)U(r, 600, 5400), 226512, weight, 1, "kg",
                        err)))
        return rc;
    if (P(r, 0.7) && (rc = chart_row(g, subj, hadm, stay, t0 + (int64_t)U(r, 600, 7200), 226730,
                                     clamp(170 + 10 * N(r), 140, 210), 0, "cm", err)))
        return rc;
    for (int64_t hs = t0 - 3 * HOUR; hs < end; hs += HOUR) {
        drift = 0.85 * drift + 0.35 * N(r);
        int64_t t = hs + (int64_t)U(r, 0, 3599);
        if (P(r, p_meas)) {
            double hr = 86 + 13 * z->h + 4 * z->s + 4 * drift + 6 * N(r);
            double sbp = 121 - 15 * z->h - 3 * z->s - 3 * drift + 9 * N(r);
            double dbp = 64 - 7 * z->h + 6 * N(r);
            double mbp = (sbp + 2 * dbp) / 3 + 2 * N(r);
            if ((rc = chart_row(g, subj, hadm, stay, t, 220045, clamp(hr, 25, 220), 0, "bpm", err)))
                return rc;
            int ids = arterial ? 220050 : 220179;
            if ((rc =
                     chart_row(g, subj, hadm, stay, t, ids, clamp(sbp, 40, 250), 0, "mmHg", err)) ||
                (rc = chart_row(g, subj, hadm, stay, t, ids + 1, clamp(dbp, 15, 150), 0, "mmHg",
                                err)) ||
                (rc = chart_row(g, subj, hadm, stay, t, ids + 2, clamp(mbp, 20, 200), 0, "mmHg",
                                err)))
                return rc;
            double rr = 18 + 3 * z->s + 2 * z->m + 1.5 * drift + 3 * N(r);
            if ((rc = chart_row(g, subj, hadm, stay, t + 60, P(r, 0.8) ? 220210 : 224690,
                                clamp(rr, 4, 60), 0, "insp/min", err)))
                return rc;
            double spo2 = 97.5 - 2.2 * z->m - 0.8 * z->s + 1.5 * N(r);
            if ((rc = chart_row(g, subj, hadm, stay, t + 120, 220277, clamp(spo2, 60, 100), 0, "%",
                                err)))
                return rc;
            /* unmapped rows that the extractor must skip (text values, alarms) */
            char ct[20];
            fmt_time(ct, t);
            if ((rc = tw_row(&g->chart, err,
                             "%lld,%lld,%lld,,%s,%s,220048,\"SR (Sinus Rhythm), regular\",,,0\n",
                             (long long)subj, (long long)hadm, (long long)stay, ct, ct)) ||
                (rc = chart_row(g, subj, hadm, stay, t, 220046, 120, 0, "bpm", err)))
                return rc;
        }
        if (P(r, 0.25 + 0.3 * p_meas)) {
            double c = 37.0 + 0.35 * z->s + 0.2 * drift + 0.35 * N(r);
            if ((rc = temp_f ? chart_row(g, subj, hadm, stay, t + 300, 223761, c * 9 / 5 + 32, 1,
                                         "\xc2\xb0"
                                         "F",
                                         err)
                             : chart_row(g, subj, hadm, stay, t + 300, 223762, c, 1,
                                         "\xc2\xb0"
                                         "C",
                                         err)))
                return rc;
        }
        if (((hs - t0) / HOUR) % 4 == 0) {
            double gcs = 1.5 * fmax(z->s, 0) + 0.5 * N(r);
            if ((rc = chart_row(g, subj, hadm, stay, t + 400, 220739, clamp(round(4 - gcs), 1, 4),
                                0, "", err)) ||
                (rc = chart_row(g, subj, hadm, stay, t + 400, 223900,
                                clamp(round(5 - 1.4 * gcs), 1, 5), 0, "", err)) ||
                (rc = chart_row(g, subj, hadm, stay, t + 400, 223901, clamp(round(6 - gcs), 1, 6),
                                0, "", err)))
                return rc;
            if (o2 && (rc = chart_row(g, subj, hadm, stay, t + 500, 223835,
                                      clamp(35 + 20 * z->m + 5 * N(r), 21, 100), 0, "", err)))
                return rc;
        }
        if (((hs - t0) / HOUR) % 6 == 1 &&
            (rc = chart_row(g, subj, hadm, stay, t + 700, P(r, 0.7) ? 225664 : 220621,
                            clamp(130 + 25 * z->s + 20 * N(r), 40, 600), 0, "mg/dL", err)))
            return rc;
        if (((hs - t0) / HOUR) % 24 == 5 && (rc = chart_row(g, subj, hadm, stay, t + 800, 224639,
                                                            weight + 0.5 * N(r), 1, "kg", err)))
            return rc;
    }
    return 0;
}

/* lab value for k_labs[i] given the latent state */
static double lab_value(moeh_rng_t *r, const latent_t *z, size_t i, double *panel)
{
    switch (k_labs[i].itemid) {
    case 50912:
        return clamp(exp(0.05 + 0.5 * z->k + 0.12 * z->s + 0.15 * N(r)), 0.2, 25);
    case 51006:
        return clamp(16 * exp(0.45 * z->k + 0.1 * z->s + 0.2 * N(r)), 2, 250);
    case 50983:
        return panel[0] = clamp(139 + 3 * N(r), 115, 170);
    case 50971:
        return clamp(4.2 + 0.4 * z->k + 0.35 * N(r), 2, 9);
    case 50902:
        return panel[1] = clamp(103 + 3 * N(r), 80, 130);
    case 50882:
        return panel[2] = clamp(24 - 2.5 * z->k - 1.2 * z->s + 2 * N(r), 5, 45);
    case 50868:
        return panel[0] - panel[1] - panel[2];
    case 50931:
        return clamp(130 + 22 * z->s + 25 * N(r), 40, 800);
    case 51222:
        return panel[3] = clamp(11 - 0.7 * z->s - 0.3 * z->k + 1.1 * N(r), 4, 19);
    case 51221:
        return clamp(panel[3] * 3 + 1.5 * N(r), 12, 60);
    case 51265:
        return clamp(220 - 45 * z->s + 50 * N(r), 5, 900);
    case 51301:
    case 51300:
        return clamp(9 + 3 * z->s + 2.5 * N(r), 0.2, 80);
    case 50813:
        return clamp(exp(0.3 + 0.35 * z->s + 0.25 * z->h + 0.25 * N(r)), 0.3, 20);
    case 50820:
        return clamp(7.40 - 0.04 * z->k - 0.02 * z->s + 0.04 * N(r), 6.8, 7.7);
    case 50960:
        return clamp(2.0 + 0.15 * z->k + 0.2 * N(r), 0.8, 5);
    case 50893:
        return clamp(8.6 - 0.2 * z->k + 0.5 * N(r), 5, 13);
    case 50970:
        return clamp(3.5 + 0.7 * z->k + 0.6 * N(r), 0.8, 12);
    case 50885:
        return clamp(exp(-0.4 + 0.35 * z->s + 0.5 * N(r)), 0.1, 40);
    case 51237:
        return clamp(1.15 + 0.2 * z->s + 0.12 * N(r), 0.8, 8);
    }
    return 0;
}

static int gen_labs(gen_t *g, moeh_rng_t *r, const latent_t *z, int64_t subj, int64_t hadm,
                    int64_t admit, int64_t t0, int64_t end, moeh_err_t *err)
{
    int rc;
    bool sick = z->s > 0.5;
    int64_t first = t0 - (int64_t)U(r, 1, 6) * HOUR;
    for (int64_t t = first > admit ? first : admit; t < end;
         t += (int64_t)(sick ? U(r, 4, 6) : U(r, 8, 14)) * HOUR + (int64_t)U(r, 0, 1800)) {
        double panel[4] = {139, 103, 24, 11};
        int64_t spec = g->next_specimen++;
        bool no_hadm = P(r, 0.1), gas = P(r, sick ? 0.8 : 0.3);
        char ct[20], stt[20];
        fmt_time(ct, t);
        fmt_time(stt, t + 2 * HOUR);
        for (size_t i = 0; i < N_LABS; i++) {
            int id = k_labs[i].itemid;
            if ((id == 50813 || id == 50820) && !gas) continue;
            if (id == 51300 || !P(r, 0.93)) continue;
            double v = lab_value(r, z, i, panel);
            const char *unit = k_labs[i].unit;
            if (id == 50912 && g->het && het_creat_umol(g->het->hospital))
                v *= 88.4, unit = "umol/L"; /* a site reporting creatinine in SI units */
            char hadm_s[24] = "";
            if (!no_hadm) snprintf(hadm_s, sizeof hadm_s, "%lld", (long long)hadm);
            const char *comment = "";
            if (P(r, 0.01))
                comment = "\"Hemolyzed; \"\"see note\"\",\nvalue verified, repeat requested\"";
            int dec = v < 10 ? 2 : 1;
            if ((rc = tw_row(&g->lab, err, "%lld,%lld,%s,%lld,%d,P%d,%s,%s,%.*f,%.*f,%s,,,,%s,%s\n",
                             (long long)g->next_labevent++, (long long)subj, hadm_s,
                             (long long)spec, id, (int)(spec % 900), ct, stt, dec, v, dec, v, unit,
                             sick ? "STAT" : "ROUTINE", comment)))
                return rc;
        }
        /* a text-only result (empty valuenum) */
        if ((rc = tw_row(&g->lab, err, "%lld,%lld,%lld,%lld,51237,,%s,%s,___,,,,,,ROUTINE,\n",
                         (long long)g->next_labevent++, (long long)subj, (long long)hadm,
                         (long long)spec, ct, stt)))
            return rc;
    }
    return 0;
}

static const char *pick(moeh_rng_t *r, const char *const *v, size_t n)
{
    return v[(size_t)(moeh_rng_uniform(r) * (double)n) % n];
}

/* A radiology report whose phrases follow the latent state (docs/synthetic.md, "Notes"). */
static void report_text(moeh_rng_t *r, const latent_t *z, char *out, size_t cap)
{
    static const char *const ind[] = {"shortness of breath", "fever, evaluate for pneumonia",
                                      "line placement", "hypoxia", "chest pain, \"r/o\" effusion"};
    char f[1024] = "";
    size_t k = 0;
#define ADD(s) k += (size_t)snprintf(f + k, sizeof f - k, "%s ", (s))
    if (z->m > 1.0 && P(r, 0.85))
        ADD("Diffuse bilateral airspace opacities, worse at the bases.");
    else if (z->m > 0.3 && P(r, 0.7))
        ADD("Patchy opacity at the right lung base, possibly atelectasis or pneumonia.");
    else if (P(r, 0.8))
        ADD("The lungs are clear without focal consolidation.");
    if (z->h > 0.8 && P(r, 0.6))
        ADD("The cardiac silhouette is enlarged.");
    else
        ADD("Heart size is normal.");
    if (z->n > 1.0 && P(r, 0.85))
        ADD("Multiple pulmonary nodules, consistent with known metastatic disease.");
    else if (z->n > 0.3 && P(r, 0.7))
        ADD("Stable mass in the left upper lobe; history of malignancy, follow-up advised.");
    else if (z->n < -0.5 && P(r, 0.5))
        ADD("No evidence of malignancy.");
    if (z->s > 1.0 && P(r, 0.6)) ADD("Endotracheal tube terminates 4 cm above the carina.");
    if (P(r, 0.5)) ADD("No pneumothorax.");
#undef ADD
    snprintf(out, cap,
             "EXAMINATION:  CHEST (PORTABLE AP)\n\nINDICATION:  %s\n\nCOMPARISON:  None.\n\n"
             "FINDINGS:\n\n%s\n\nIMPRESSION:\n\n%s",
             pick(r, ind, 5), f,
             z->m > 1.0 || z->n > 1.0 ? "Findings as above, communicated to the team."
                                      : "As above.");
}

/* writes s with every '"' doubled */
static size_t csv_escape(char *out, size_t cap, const char *s)
{
    size_t k = 0;
    for (; *s && k + 2 < cap; s++) {
        if (*s == '"') out[k++] = '"';
        out[k++] = *s;
    }
    out[k] = '\0';
    return k;
}

static int gen_notes(gen_t *g, moeh_rng_t *r, const latent_t *z, int64_t subj, int64_t hadm,
                     int64_t admit, int64_t t0, int64_t disch, double p, int *seq, bool *in_window,
                     moeh_err_t *err)
{
    int rc;
    char text[2048], esc[4200], ct[20], stt[20], hadm_s[24];
    *in_window = false;
    for (int i = 0; i < 4; i++) {
        int64_t t;
        if (i < 2) {
            if (!P(r, i == 0 ? p : p * 0.5)) continue;
            t = t0 + (int64_t)U(r, 0, fmin(47.9 * HOUR, (double)(disch - t0)));
            *in_window = true;
        } else if (i == 2) { /* after the window, still in this admission */
            if (!P(r, 0.25) || disch <= t0 + 49 * HOUR) continue;
            t = t0 + 49 * HOUR + (int64_t)U(r, 0, (double)(disch - t0 - 49 * HOUR));
        } else { /* before it (e.g. in the ED), still in this admission */
            if (!P(r, 0.15)) continue;
            t = admit + (int64_t)U(r, 0, (double)(t0 - admit - 1));
        }
        report_text(r, z, text, sizeof text);
        csv_escape(esc, sizeof esc, text);
        fmt_time(ct, t);
        fmt_time(stt, t + (int64_t)U(r, 1800, 7200));
        hadm_s[0] = '\0';
        if (!P(r, 0.2)) snprintf(hadm_s, sizeof hadm_s, "%lld", (long long)hadm);
        int sq = (*seq)++;
        if ((rc = tw_row(&g->note, err, "%lld-RR-%d,%lld,%s,RR,%d,%s,%s,\"%s\"\n", (long long)subj,
                         sq, (long long)subj, hadm_s, sq, ct, stt, esc)))
            return rc;
        g->st->notes++;
    }
    return 0;
}

/* A synthetic frontal chest radiograph (S x S gray): body, lungs, heart whose width follows
 * h, lung opacity that follows m, tubes when s is high, noise. */
static void draw_cxr(moeh_rng_t *r, const latent_t *z, bool lateral, bool alt, uint8_t *img,
                     size_t S)
{
    double op = sigm(2.5 * (z->m - 0.3)), heart = 0.2 + 0.05 * clamp(z->h, -2, 3);
    double bx[6], by[6], br[6];
    for (int i = 0; i < 6; i++)
        bx[i] = U(r, -0.7, 0.7), by[i] = U(r, -0.2, 0.8), br[i] = U(r, 0.1, 0.3);
    bool tube = z->s > 1.0 && P(r, 0.7);
    double gain = U(r, 0.9, 1.1), off = U(r, -10, 10), noise = 6;
    if (alt) /* another acquisition (heterogeneous profile, one hospital) */
        gain = 0.55 + 0.5 * (gain - 0.9), off = 40 + 0.5 * off, noise = 14;
    for (size_t y = 0; y < S; y++)
        for (size_t x = 0; x < S; x++) {
            double u = ((double)x + 0.5) / (double)S * 2 - 1,
                   v = ((double)y + 0.5) / (double)S * 2 - 1;
            double val = 30;
            if (u * u / 0.81 + v * v / 0.9 < 1) val = 125;
            for (int side = -1; side <= 1; side += 2) {
                double lu = (u - side * 0.38) / 0.27, lv = (v + 0.05) / 0.58;
                if (!lateral && lu * lu + lv * lv < 1) {
                    double cloud = 0;
                    for (int i = 0; i < 6; i++) {
                        double du = u - bx[i], dv = v - by[i];
                        cloud += exp(-(du * du + dv * dv) / (br[i] * br[i]));
                    }
                    val = 55 + 75 * op * clamp(0.4 + cloud * (0.5 + 0.5 * v), 0, 1.5);
                }
            }
            double hu = (u - 0.08) / (heart + 0.02), hv = (v - 0.28) / 0.24;
            if (hu * hu + hv * hv < 1) val = 160;
            if (tube && fabs(u - 0.02) < 0.012 && v < 0.1) val = 235;
            val = gain * val + off + noise * N(r);
            img[y * S + x] = (uint8_t)clamp(val, 0, 255);
        }
}

static int gen_cxr(gen_t *g, moeh_rng_t *r, const latent_t *z, int64_t subj, int64_t admit,
                   int64_t t0, int64_t disch, double p, bool *in_window, moeh_err_t *err)
{
    *in_window = false;
    for (int i = 0; i < 3; i++) {
        int64_t t;
        double span = fmin(47.9 * HOUR, (double)(disch - t0));
        if (i == 0 && P(r, p))
            t = t0 + (int64_t)U(r, 0, span), *in_window = true;
        else if (i == 1 && *in_window && P(r, 0.3))
            t = t0 + (int64_t)U(r, 0, span);
        else if (i == 2 && P(r, 0.2)) /* before the window (e.g. in the ED): not selected */
            t = admit + (int64_t)U(r, 0, (double)(t0 - admit - 1));
        else
            continue;
        int64_t study = g->next_study++;
        int y, mo, d, h, mi, s;
        civil(t, &y, &mo, &d, &h, &mi, &s);
        for (int view = 0; view < 2; view++) {
            if (view == 1 && !P(r, 0.4)) continue;
            const char *vp = view ? "LL" : (z->s > 0.5 ? "AP" : "PA");
            char dicom[48];
            uint64_t a = moeh_rng_u64(r), b = moeh_rng_u64(r);
            snprintf(dicom, sizeof dicom, "%08llx-%08llx-%08llx-%08llx-%08llx",
                     (unsigned long long)(a >> 32), (unsigned long long)(a & 0xffffffff),
                     (unsigned long long)(b >> 32), (unsigned long long)(b & 0xffffffff),
                     (unsigned long long)(study & 0xffffffff));
            size_t S = g->o->img_px;
            int rc = tw_row(&g->cxr, err,
                            "%s,%lld,%lld,CHEST (PORTABLE AP),%s,%zu,%zu,%04d%02d%02d,%d.%03d,"
                            "CHEST (PORTABLE AP),%s,Erect\n",
                            dicom, (long long)subj, (long long)study, vp, S, S, y, mo, d,
                            h * 10000 + mi * 100 + s, (int)(moeh_rng_u64(r) % 1000),
                            view ? "lateral" : "antero-posterior");
            if (rc) return rc;
            if (!g->o->images) continue;
            /* the pixels draw from their own stream, so --no-images changes nothing else */
            moeh_rng_t ir;
            uint64_t ikey[3] = {g->o->seed, (uint64_t)study, (uint64_t)view};
            moeh_rng_seed(&ir, XXH64(ikey, sizeof ikey, 1));
            draw_cxr(&ir, z, view == 1, g->het && het_cxr_alt(g->het->hospital), g->img, S);
            unsigned char *jpg = NULL;
            unsigned long jl = 0;
            if (tjCompress2(g->tj, g->img, (int)S, 0, (int)S, TJPF_GRAY, &jpg, &jl, TJSAMP_GRAY, 90,
                            0) != 0)
                return moeh_errf(err, -EIO, "JPEG encoding failed: %s", tjGetErrorStr2(g->tj));
            char dir[PATH_MAX], path[PATH_MAX + 64];
            synth_pathf(dir, sizeof dir, "%s/files/p%02lld/p%lld/s%lld", g->cxr_dir,
                        (long long)(subj / 1000000), (long long)subj, (long long)study);
            if ((rc = moeh_mkdir_p(dir, err)) == 0) {
                synth_pathf(path, sizeof path, "%s/%s.jpg", dir, dicom);
                FILE *f = fopen(path, "wb");
                if (!f || fwrite(jpg, 1, jl, f) != jl)
                    rc = moeh_errf(err, -EIO, "%s: cannot write", path);
                if (f && fclose(f) != 0 && !rc) rc = moeh_errf(err, -EIO, "%s: cannot write", path);
            }
            tjFree(jpg);
            if (rc) return rc;
            g->st->cxr_images++;
        }
    }
    return 0;
}

/* Notes and X-rays of one ICU admission. Homogeneous: independent draws, sicker patients and
 * lung involvement get more of both. Heterogeneous: the X-ray first (kind, unit, admission
 * type, s, m), then a report that exists mostly with imaging (docs/synthetic.md). */
static int gen_modalities(gen_t *g, moeh_rng_t *r, const latent_t *z, const het_adm_t *het,
                          int64_t subj, int64_t hadm, int64_t admit, int64_t t0, int64_t disch,
                          int *seq, bool *has_notes, bool *has_cxr, moeh_err_t *err)
{
    int rc;
    if (!het) {
        if ((rc = gen_notes(g, r, z, subj, hadm, admit, t0, disch,
                            sigm(-0.6 + 0.8 * z->s + 0.8 * z->m), seq, has_notes, err)))
            return rc;
        return gen_cxr(g, r, z, subj, admit, t0, disch, sigm(-0.6 + 1.0 * z->s + 0.8 * z->m),
                       has_cxr, err);
    }
    double zv[5] = {z->s, z->h, z->k, z->n, z->m};
    if ((rc = gen_cxr(g, r, z, subj, admit, t0, disch, het_p_cxr(het, zv), has_cxr, err)))
        return rc;
    return gen_notes(g, r, z, subj, hadm, admit, t0, disch, het_p_note(*has_cxr, zv), seq,
                     has_notes, err);
}

static const char *const k_types[] = {
    "EW EMER.",    "URGENT", "ELECTIVE", "OBSERVATION ADMIT", "SURGICAL SAME DAY ADMISSION",
    "DIRECT EMER."};
static const char *const k_ins[] = {"Medicare", "Medicaid", "Other", "Private"};
static const char *const k_race[] = {"WHITE",
                                     "WHITE - OTHER EUROPEAN",
                                     "BLACK/AFRICAN AMERICAN",
                                     "HISPANIC/LATINO - PUERTO RICAN",
                                     "ASIAN - CHINESE",
                                     "UNKNOWN",
                                     "OTHER"};
static const char *const k_units[] = {"Medical Intensive Care Unit (MICU)",
                                      "Surgical Intensive Care Unit (SICU)",
                                      "Medical/Surgical Intensive Care Unit (MICU/SICU)",
                                      "Cardiac Vascular Intensive Care Unit (CVICU)",
                                      "Coronary Care Unit (CCU)",
                                      "Trauma SICU (TSICU)"};

/* Generates one subject and all its admissions. *cohort_left counts down. */
static int gen_subject(gen_t *g, uint64_t subj_no, size_t *cohort_left, moeh_err_t *err)
{
    moeh_rng_t rr, *r = &rr;
    uint64_t key[2] = {g->o->seed, subj_no};
    moeh_rng_seed(r, XXH64(key, sizeof key, 0));
    int rc;
    int64_t subj = 10000000 + (int64_t)subj_no;
    bool female = P(r, 0.45);
    int anchor_age = P(r, 0.03) ? 16 + (int)U(r, 0, 2) : 18 + (int)U(r, 0, 73);
    int anchor_year = 2110 + (int)U(r, 0, 70);
    int64_t t = moeh_days_from_civil(anchor_year, 1, 1) * DAY + (int64_t)U(r, 0, 700 * DAY);
    const char *race = pick(r, k_race, 7), *ins = pick(r, k_ins, 4);
    bool died = false, het = g->o->profile == MOEH_SYNTH_HETEROGENEOUS;
    int hospital = het ? het_hospital(r) : 0;
    char a1[20], a2[20], a3[20];
    g->st->subjects++;
    int seq = 1; /* note_seq, per subject */
    for (int adm_no = 0; !died; adm_no++) {
        /* after 8 admissions, or once the cohort is complete, only an admission owed to a
         * readmission label is written (no ICU stay, nothing after it) */
        bool last_forced = *cohort_left == 0 || adm_no >= 8;
        int64_t hadm = g->next_hadm++, admit = t;
        int age = anchor_age + year_of(admit) - anchor_year;
        bool icu = !last_forced && !P(r, 0.10), short_stay = icu && P(r, 0.06);
        latent_t z = {N(r), N(r), N(r), N(r), N(r)};
        double risk[3], zv[5];
        het_adm_t ha = {0};
        if (het) {
            zv[0] = z.s, zv[1] = z.h, zv[2] = z.k, zv[3] = z.n, zv[4] = z.m;
            het_admission(r, hospital, &ha, zv);
            z = (latent_t){zv[0], zv[1], zv[2], zv[3], zv[4]};
            het_risk(ha.kind, zv, age, risk);
            g->het = &ha;
        } else {
            true_risk(&z, age, risk);
        }
        bool in_cohort = icu && !short_stay && age >= 18;
        const char *reason = !icu         ? "no_icu"
                             : short_stay ? "short_stay"
                             : age < 18   ? "minor"
                                          : "cohort";
        int64_t t0 = 0, disch, death = 0;
        int lab[3] = {0, 0, 0};
        bool expire = false;
        if (!icu) {
            disch = admit + (int64_t)U(r, 1 * DAY, 6 * DAY);
        } else {
            t0 = admit + (int64_t)U(r, 0.5 * HOUR, 24 * HOUR);
            if (short_stay) {
                disch = t0 + (int64_t)U(r, 6 * HOUR, 40 * HOUR);
                expire = P(r, 0.3);
            } else {
                for (int k = 0; k < 3; k++)
                    lab[k] = P(r, risk[k]);
                expire = lab[0];
                if (lab[1])
                    disch = admit + 7 * DAY + (int64_t)U(r, HOUR, 20 * DAY);
                else
                    disch = t0 + 49 * HOUR +
                            (int64_t)U(r, 0, (double)(admit + 7 * DAY - HOUR - t0 - 49 * HOUR));
            }
            if (expire) death = disch, died = true;
        }
        /* the gap to the next admission, consistent with the readmission label */
        int64_t gap = -1;
        if (!died) {
            if (icu && !short_stay)
                gap = lab[2] ? (int64_t)U(r, HOUR, 29.5 * DAY)
                             : (P(r, 0.5) ? -1 : (int64_t)U(r, 31 * DAY, 700 * DAY));
            else
                gap = P(r, 0.6) ? -1 : (int64_t)U(r, 1 * DAY, 400 * DAY);
        }
        if (in_cohort) {
            (*cohort_left)--;
            if (*cohort_left == 0 && !lab[2])
                gap = -1; /* the generation ends here; no readmission is owed */
        }
        if (last_forced) gap = -1;
        /* tables */
        const char *type = !icu  ? "OBSERVATION ADMIT"
                           : het ? k_types[ha.type]
                                 : pick(r, k_types, 6);
        if (adm_no == 0 && (rc = tw_row(&g->pat, err, "%lld,%s,%d,%d,%d - %d,%s\n", (long long)subj,
                                        female ? "F" : "M", anchor_age, anchor_year,
                                        anchor_year - 1, anchor_year + 1, "")))
            return rc;
        if ((rc = tw_row(&g->adm, err,
                         "%lld,%lld,%s,%s,%s,%s,P%03d,EMERGENCY ROOM,%s,%s,ENGLISH,%s,%s,,,%d\n",
                         (long long)subj, (long long)hadm, fmt_time(a1, admit), fmt_time(a2, disch),
                         death ? fmt_time(a3, death) : "", type, (int)(hadm % 1000),
                         expire ? "DIED" : "HOME", ins, P(r, 0.5) ? "MARRIED" : "SINGLE", race,
                         expire ? 1 : 0)))
            return rc;
        g->st->admissions++;
        bool has_notes = false, has_cxr = false;
        if (icu) {
            int64_t stay = g->next_stay++;
            int64_t out = short_stay
                              ? disch - 1800
                              : (int64_t)fmin((double)(disch - HOUR),
                                              (double)(t0 + (int64_t)U(r, 2 * DAY, 12 * DAY)));
            const char *unit = het ? k_units[ha.unit] : pick(r, k_units, 6);
            /* a later second ICU stay, written first: t0 is the earliest intime */
            if (out + 13 * HOUR < disch && P(r, 0.1)) {
                int64_t in2 = out + 12 * HOUR;
                if ((rc = tw_row(&g->icu, err, "%lld,%lld,%lld,%s,%s,%s,%s,%.4f\n", (long long)subj,
                                 (long long)hadm, (long long)g->next_stay++, "Neuro Stepdown",
                                 "Neuro Stepdown", fmt_time(a1, in2), fmt_time(a2, disch - 600),
                                 (double)(disch - 600 - in2) / DAY)))
                    return rc;
                g->st->icu_stays++;
            }
            if ((rc = tw_row(&g->icu, err, "%lld,%lld,%lld,%s,%s,%s,%s,%.4f\n", (long long)subj,
                             (long long)hadm, (long long)stay, unit, unit, fmt_time(a1, t0),
                             fmt_time(a2, out), (double)(out - t0) / DAY)))
                return rc;
            g->st->icu_stays++;
            double span = fmax(52.0 * HOUR, g->o->chart_days * DAY);
            int64_t end = (int64_t)fmin((double)out, (double)t0 + span);
            if ((rc = gen_chart(g, r, &z, subj, hadm, stay, t0, end, err)) ||
                (rc = gen_labs(g, r, &z, subj, hadm, admit, t0,
                               (int64_t)fmin((double)disch, (double)t0 + span), err)) ||
                (rc = gen_modalities(g, r, &z, het ? &ha : NULL, subj, hadm, admit, t0, disch, &seq,
                                     &has_notes, &has_cxr, err)))
                return rc;
        }
        fprintf(g->truth, "%lld,%lld,%d,%s,%s,%s,%d,%.4f,%.4f,%.4f,%.4f,%.4f,%.6f,%.6f,%.6f,",
                (long long)subj, (long long)hadm, in_cohort, reason, fmt_time(a1, admit),
                icu ? fmt_time(a2, t0) : "", age, z.s, z.h, z.k, z.n, z.m, risk[0], risk[1],
                risk[2]);
        if (in_cohort)
            fprintf(g->truth, "%d,%d,%d,%d,%d", lab[0], lab[1], expire ? -1 : lab[2], has_notes,
                    has_cxr);
        else
            fprintf(g->truth, ",,,%d,%d", has_notes, has_cxr);
        double lim[3] = {0, 0, 0};
        if (het) {
            het_limited_risk(ha.kind, zv, age, has_notes, has_cxr, lim);
            fprintf(g->truth, ",%d,%c,%.6f,%.6f,%.6f", hospital, het_kind_letter[ha.kind], lim[0],
                    lim[1], lim[2]);
        }
        fputc('\n', g->truth);
        g->het = NULL;
        if (in_cohort) {
            size_t c = g->st->cohort++;
            for (int k = 0; k < 3; k++) {
                g->risk[3 * c + (size_t)k] = risk[k];
                g->risk_lim[3 * c + (size_t)k] = lim[k];
                g->label[3 * c + (size_t)k] = (k == 2 && expire) ? 2 : (uint8_t)lab[k];
            }
            g->st->avail[0]++;
            g->st->avail[1] += has_notes;
            g->st->avail[2] += has_cxr;
            if (het) g->st->kind_n[ha.kind]++, g->st->hosp_n[hospital]++;
        }
        if (gap < 0) break;
        t = disch + gap;
    }
    return 0;
}

void moeh_synth_opts_default(moeh_synth_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->admissions = 1000;
    o->seed = 1;
    o->img_px = 256;
    o->images = true;
    o->gz_level = 1;
}

int moeh_synth(const moeh_synth_opts_t *o, const char *dir, moeh_synth_stats_t *st, moeh_err_t *err)
{
    gen_t g = {0};
    moeh_synth_stats_t dummy;
    char d[PATH_MAX];
    int rc, lv = o->gz_level;
    double *sc = NULL;
    uint8_t *lb = NULL;
    moeh_progress_t meter = {0}; /* cohort admissions generated */
    g.o = o;
    g.st = st ? st : &dummy;
    memset(g.st, 0, sizeof *g.st);
    g.next_hadm = 20000000, g.next_stay = 30000000, g.next_labevent = 1, g.next_specimen = 1;
    g.next_study = 50000000;
    if (o->admissions == 0 || o->img_px < 16 || o->img_px > 2048 || lv < 1 || lv > 9)
        return moeh_errf(err, -EINVAL,
                         "synth: admissions >= 1, image size 16..2048, gzip level 1..9");
    bool het = o->profile == MOEH_SYNTH_HETEROGENEOUS;
    if (o->profile != MOEH_SYNTH_HOMOGENEOUS && !het)
        return moeh_errf(err, -EINVAL, "synth: unknown profile %d", (int)o->profile);
    g.risk = malloc(o->admissions * 3 * sizeof *g.risk);
    g.risk_lim = malloc(o->admissions * 3 * sizeof *g.risk_lim);
    g.label = malloc(o->admissions * 3);
    g.img = malloc(o->img_px * o->img_px);
    if (!g.risk || !g.risk_lim || !g.label || !g.img) {
        rc = moeh_errf(err, -ENOMEM, "synth: out of memory");
        goto out;
    }
    if (!(g.tj = tjInitCompress())) {
        rc = moeh_errf(err, -ENOMEM, "synth: cannot start the JPEG encoder");
        goto out;
    }
    synth_pathf(g.cxr_dir, sizeof g.cxr_dir, "%s/cxr", dir);
    synth_pathf(d, sizeof d, "%s/mimic", dir);
    if ((rc = write_dictionaries(d, lv, err))) goto out;
    synth_pathf(d, sizeof d, "%s/mimic/hosp", dir);
    if ((rc = tw_open(&g.pat, d, "patients.csv.gz", lv,
                      "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod\n", err)) ||
        (rc = tw_open(&g.adm, d, "admissions.csv.gz", lv,
                      "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,"
                      "admit_provider_id,admission_location,discharge_location,insurance,language,"
                      "marital_status,race,edregtime,edouttime,hospital_expire_flag\n",
                      err)) ||
        (rc = tw_open(&g.lab, d, "labevents.csv.gz", lv,
                      "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,"
                      "charttime,storetime,value,valuenum,valueuom,ref_range_lower,"
                      "ref_range_upper,flag,priority,comments\n",
                      err)))
        goto out;
    synth_pathf(d, sizeof d, "%s/mimic/icu", dir);
    if ((rc =
             tw_open(&g.icu, d, "icustays.csv.gz", lv,
                     "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los\n",
                     err)) ||
        (rc = tw_open(&g.chart, d, "chartevents.csv.gz", lv,
                      "subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,"
                      "valuenum,valueuom,warning\n",
                      err)))
        goto out;
    synth_pathf(d, sizeof d, "%s/note/note", dir);
    if ((rc = tw_open(&g.note, d, "radiology.csv.gz", lv,
                      "note_id,subject_id,hadm_id,note_type,note_seq,charttime,storetime,text\n",
                      err)) ||
        (rc = tw_open(&g.cxr, g.cxr_dir, "mimic-cxr-2.0.0-metadata.csv.gz", lv,
                      "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,"
                      "ViewPosition,Rows,Columns,StudyDate,StudyTime,"
                      "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                      "PatientOrientationCodeSequence_CodeMeaning\n",
                      err)))
        goto out;
    synth_pathf(d, sizeof d, "%s/truth.csv", dir);
    if (!(g.truth = fopen(d, "w"))) {
        rc = moeh_errf(err, -errno, "%s: %s", d, strerror(errno));
        goto out;
    }
    fprintf(g.truth, "subject_id,hadm_id,in_cohort,reason,admittime,t0,age,severity,hemodynamic,"
                     "renal,notes_only,lung");
    for (int t = 0; t < 2 * MOEH_N_TASKS; t++) /* risk_<task>..., label_<task>... */
        fprintf(g.truth, ",%s_%s", t < MOEH_N_TASKS ? "risk" : "label",
                moeh_task_names[t % MOEH_N_TASKS]);
    fprintf(g.truth, ",has_notes,has_cxr");
    if (het) {
        fprintf(g.truth, ",hospital,kind");
        for (int t = 0; t < MOEH_N_TASKS; t++)
            fprintf(g.truth, ",risk_limited_%s", moeh_task_names[t]);
    }
    fprintf(g.truth, "\n");
    size_t left = o->admissions;
    moeh_progress_begin(&meter, "synth", o->admissions, "admissions");
    for (uint64_t k = 0; left > 0; k++) {
        if ((rc = gen_subject(&g, k, &left, err))) goto out;
        moeh_progress_update(&meter, g.st->cohort);
    }
    {
        char note[96];
        snprintf(note, sizeof note, "%zu subjects, %.2f M chart rows", g.st->subjects,
                 (double)g.chart.rows / 1e6);
        moeh_progress_end(&meter, note);
    }
    g.st->chart_rows = g.chart.rows;
    g.st->lab_rows = g.lab.rows;
    /* oracle AUROC: the true risk as the score */
    size_t n = g.st->cohort;
    sc = malloc((n + 1) * sizeof *sc);
    lb = malloc(n + 1);
    if (!sc || !lb) {
        rc = moeh_errf(err, -ENOMEM, "synth: out of memory");
        goto out;
    }
    for (int k = 0; k < MOEH_N_TASKS; k++) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (g.label[3 * i + (size_t)k] != 2) {
                sc[m] = g.risk[3 * i + (size_t)k];
                lb[m++] = g.label[3 * i + (size_t)k];
                g.st->positives[k] += g.label[3 * i + (size_t)k];
            }
        g.st->labelled[k] = m;
        if ((rc = moeh_hist_auroc_exact(sc, lb, m, &g.st->oracle_auroc[k]))) {
            moeh_errf(err, rc, "synth: out of memory");
            goto out;
        }
        if (!het) continue;
        for (size_t i = 0, j = 0; i < n; i++)
            if (g.label[3 * i + (size_t)k] != 2) sc[j++] = g.risk_lim[3 * i + (size_t)k];
        if ((rc = moeh_hist_auroc_exact(sc, lb, m, &g.st->limited_auroc[k]))) {
            moeh_errf(err, rc, "synth: out of memory");
            goto out;
        }
    }
    synth_pathf(d, sizeof d, "%s/truth.json", dir);
    rc = synth_write_truth(d, o, g.st, het, err);
out : {
    moeh_progress_cancel(&meter); /* a failure: the line goes without a summary */
    moeh_err_t e2 = {0};
    tw_t *all[] = {&g.pat, &g.adm, &g.icu, &g.chart, &g.lab, &g.note, &g.cxr};
    for (size_t i = 0; i < 7; i++) {
        int c = tw_close(all[i], &e2);
        if (c && !rc) rc = c, *err = e2;
    }
}
    if (g.truth && fclose(g.truth) != 0 && !rc)
        rc = moeh_errf(err, -EIO, "truth.csv: write failed");
    if (g.tj) tjDestroy(g.tj);
    free(g.risk);
    free(g.risk_lim);
    free(g.label);
    free(g.img);
    free(sc);
    free(lb);
    return rc;
}
