/* cmd_synth.c - `moeh-sim synth`: a synthetic MIMIC-IV with known truth (docs/synthetic.md). */
#include "moeh_synth.h"
#include "sim_commands.h"

#include <getopt.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: moeh-sim synth --admissions N --seed S --out DIR\n"
        "                      [--chart-days D] [--image-px P] [--no-images] [--gzip-level L]\n\n"
        "Writes a synthetic database in the raw MIMIC-IV layout (docs/synthetic.md):\n"
        "  DIR/mimic (hosp/, icu/), DIR/note (note/radiology.csv.gz), DIR/cxr (metadata +\n"
        "  files/.../DICOM.jpg), DIR/truth.csv (true risk, labels, latent state per\n"
        "  admission) and DIR/truth.json (counts, oracle AUROC per task).\n"
        "Then: moeh-sim extract --mimic DIR/mimic --note DIR/note --cxr DIR/cxr --out DS\n\n"
        "  --admissions N  cohort admissions to generate (default 1000); admissions that\n"
        "                  the cohort excludes are generated around them\n"
        "  --seed S        random seed (default 1); output is a function of (S, options)\n"
        "  --chart-days D  chart vitals over max(52 h, D days) of each ICU stay (default 0);\n"
        "                  raise it for multi-GB chartevents benchmarks\n"
        "  --image-px P    side of the written JPEGs (default 256)\n"
        "  --no-images     write the CXR metadata but no JPEG files\n"
        "  --gzip-level L  1..9 (default 1)\n");
}

int moeh_sim_cmd_synth(int argc, char **argv)
{
    moeh_synth_opts_t o;
    moeh_synth_opts_default(&o);
    const char *out = NULL;
    static const struct option lo[] = {{"admissions", required_argument, 0, 'n'},
                                       {"seed", required_argument, 0, 's'},
                                       {"out", required_argument, 0, 'o'},
                                       {"chart-days", required_argument, 0, 'c'},
                                       {"image-px", required_argument, 0, 'p'},
                                       {"no-images", no_argument, 0, 'x'},
                                       {"gzip-level", required_argument, 0, 'z'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case 'n':
            o.admissions = (size_t)strtoull(optarg, NULL, 10);
            break;
        case 's':
            o.seed = strtoull(optarg, NULL, 10);
            break;
        case 'o':
            out = optarg;
            break;
        case 'c':
            o.chart_days = atof(optarg);
            break;
        case 'p':
            o.img_px = (size_t)strtoul(optarg, NULL, 10);
            break;
        case 'x':
            o.images = false;
            break;
        case 'z':
            o.gz_level = atoi(optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!out || optind != argc || o.admissions == 0) {
        fprintf(stderr, "moeh-sim synth: --out is required and --admissions must be >= 1\n\n");
        usage(stderr);
        return 2;
    }
    moeh_err_t err = {0};
    moeh_synth_stats_t st;
    int64_t t = moeh_now_ms();
    int rc = moeh_synth(&o, out, &st, &err);
    if (rc) {
        fprintf(stderr, "moeh-sim synth: %s\n", err.msg[0] ? err.msg : moeh_strerror(rc));
        return 1;
    }
    printf("synthetic MIMIC-IV in %s (%.1f s): %zu subjects, %zu admissions, %zu ICU stays, "
           "cohort %zu\n",
           out, (double)(moeh_now_ms() - t) / 1000, st.subjects, st.admissions, st.icu_stays,
           st.cohort);
    printf("  rows: chartevents %llu, labevents %llu; %llu notes, %llu CXR images\n",
           (unsigned long long)st.chart_rows, (unsigned long long)st.lab_rows,
           (unsigned long long)st.notes, (unsigned long long)st.cxr_images);
    for (int k = 0; k < MOEH_DS_TASKS; k++)
        printf("  %-12s %zu positive of %zu, oracle AUROC %.4f\n", moeh_ds_task_names[k],
               st.positives[k], st.labelled[k], st.oracle_auroc[k]);
    printf("  modalities in the window: notes %zu, cxr %zu of %zu\n", st.avail[1], st.avail[2],
           st.avail[0]);
    return 0;
}
