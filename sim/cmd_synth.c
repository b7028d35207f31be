/* cmd_synth.c - `moeh synth`: a synthetic MIMIC-IV with known truth (docs/synthetic.md). */
#include "moeh_synth.h"
#include "sim_commands.h"

#include "moeh_opts.h"
#include <string.h>

static const char k_usage[] =
    "usage: moeh synth --out DIR [--admissions N] [--seed S] [OPTIONS]\n\n"
    "Writes a synthetic database in the raw MIMIC-IV layout (docs/synthetic.md):\n"
    "DIR/mimic (hosp/, icu/), DIR/note (note/radiology.csv.gz), DIR/cxr (metadata +\n"
    "files/.../DICOM.jpg), DIR/truth.csv (true risk, labels, latent state per admission)\n"
    "and DIR/truth.json (counts, oracle AUROC per task).\n"
    "Then: moeh extract --mimic DIR/mimic --note DIR/note --cxr DIR/cxr --out DS\n"
    "Exit status: 0 ok, 1 failure, 2 usage error.";

int moeh_sim_cmd_synth(int argc, char **argv)
{
    moeh_synth_opts_t o;
    moeh_synth_opts_default(&o);
    const char *out = NULL;
    uint64_t admissions = o.admissions, img_px = o.img_px;
    uint32_t gz_level = (uint32_t)o.gz_level;
    int no_images = !o.images;
    const char *profile = "homogeneous";
    const moeh_opt_t opts[] = {
        {"admissions", MOEH_OPT_U64, &admissions,
         "cohort admissions to generate (those the cohort excludes are added around them)"},
        {"seed", MOEH_OPT_U64, &o.seed, "random seed; the output is a function of (seed, options)"},
        {"out", MOEH_OPT_STR, &out, "output directory [required]"},
        {"chart-days", MOEH_OPT_F64, &o.chart_days,
         "chart vitals over max(52 h, this many days) of each ICU stay (raise for benchmarks)"},
        {"image-px", MOEH_OPT_U64, &img_px, "side of the written JPEGs"},
        {"no-images", MOEH_OPT_BOOL, &no_images, "write the CXR metadata but no JPEG files"},
        {"gzip-level", MOEH_OPT_U32, &gz_level, "gzip level of the CSV files, 1..9"},
        {"profile", MOEH_OPT_STR, &profile,
         "homogeneous (default) or heterogeneous: patient kinds with their own outcome "
         "functions, informative availability, site shift (docs/synthetic.md)"},
    };
    moeh_opts_t po = MOEH_SIM_OPTS("moeh synth", k_usage, opts);
    moeh_err_t err = {0};
    int rc = moeh_opts_parse(&po, argc, argv, &err);
    if (rc == 1) return 0;
    if (!rc && !out) rc = moeh_errf(&err, -EINVAL, "--out is required (moeh synth --help)");
    if (!rc && (admissions == 0 || admissions > ((uint64_t)1 << 32)))
        rc = moeh_errf(&err, -EINVAL, "--admissions %llu: expected 1..2^32",
                       (unsigned long long)admissions);
    if (!rc && (gz_level < 1 || gz_level > 9))
        rc = moeh_errf(&err, -EINVAL, "--gzip-level %u: expected 1..9", gz_level);
    if (!rc && (img_px < 8 || img_px > 4096))
        rc = moeh_errf(&err, -EINVAL, "--image-px %llu: expected 8..4096",
                       (unsigned long long)img_px);
    if (!rc && strcmp(profile, "homogeneous") && strcmp(profile, "heterogeneous"))
        rc = moeh_errf(&err, -EINVAL, "--profile %s: expected homogeneous or heterogeneous",
                       profile);
    if (!rc && !strcmp(profile, "heterogeneous")) o.profile = MOEH_SYNTH_HETEROGENEOUS;
    if (!rc && (o.chart_days < 0 || o.chart_days > 365))
        rc = moeh_errf(&err, -EINVAL, "--chart-days %g: expected 0..365", o.chart_days);
    if (rc) return moeh_sim_usage_error(&po, &err);
    o.admissions = (size_t)admissions, o.img_px = (size_t)img_px, o.gz_level = (int)gz_level;
    o.images = !no_images;
    moeh_synth_stats_t st;
    int64_t t = moeh_now_ms();
    rc = moeh_synth(&o, out, &st, &err);
    if (rc) return moeh_sim_failed(&po, rc, &err);
    printf("synthetic MIMIC-IV in %s (%.1f s): %zu subjects, %zu admissions, %zu ICU stays, "
           "cohort %zu\n",
           out, (double)(moeh_now_ms() - t) / 1000, st.subjects, st.admissions, st.icu_stays,
           st.cohort);
    printf("  rows: chartevents %llu, labevents %llu; %llu notes, %llu CXR images\n",
           (unsigned long long)st.chart_rows, (unsigned long long)st.lab_rows,
           (unsigned long long)st.notes, (unsigned long long)st.cxr_images);
    for (int k = 0; k < MOEH_N_TASKS; k++)
        printf("  %-12s %zu positive of %zu, oracle AUROC %.4f\n", moeh_task_names[k],
               st.positives[k], st.labelled[k], st.oracle_auroc[k]);
    printf("  modalities in the window: notes %zu, cxr %zu of %zu\n", st.avail[1], st.avail[2],
           st.avail[0]);
    if (o.profile == MOEH_SYNTH_HETEROGENEOUS) {
        for (int k = 0; k < MOEH_N_TASKS; k++)
            printf("  %-12s modality-limited oracle AUROC %.4f\n", moeh_task_names[k],
                   st.limited_auroc[k]);
        printf("  kinds R/S/C %zu/%zu/%zu; hospitals %zu/%zu/%zu/%zu\n", st.kind_n[0], st.kind_n[1],
               st.kind_n[2], st.hosp_n[0], st.hosp_n[1], st.hosp_n[2], st.hosp_n[3]);
    }
    moeh_opts_free(&po);
    return 0;
}
