/* cmd_extract.c - `moeh-sim extract`: MIMIC-IV (+ Note, + CXR-JPG) to a dataset directory. */
#include "moeh_extract.h"
#include "sim_commands.h"

#include <getopt.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: moeh-sim extract --mimic DIR [--note DIR] [--cxr DIR] --out DATASET\n"
               "                        [--variables FILE] [--image-size S] [--strict]\n"
               "                        [--val F] [--test F] [--seed N] [--log-level L]\n\n"
               "Builds the cohort of docs/data.md from MIMIC-IV as PhysioNet publishes it and\n"
               "writes a dataset directory (.npy arrays + meta.json).\n\n"
               "  --mimic DIR       MIMIC-IV root holding hosp/ and icu/ (*.csv.gz)\n"
               "  --note DIR        MIMIC-IV-Note root holding note/radiology.csv.gz (optional)\n"
               "  --cxr DIR         MIMIC-CXR-JPG root: mimic-cxr-2.0.0-metadata.csv.gz, files/\n"
               "  --out DATASET     output directory (created)\n"
               "  --variables FILE  variable map (default: the shipped sim/variables.csv)\n"
               "  --image-size S    images are S x S grayscale (default 64)\n"
               "  --strict          a malformed row is fatal (default: reported and skipped)\n"
               "  --val F, --test F subject-grouped split fractions (default 0.1, 0.2)\n"
               "  --seed N          seed of the split (default 1)\n\n"
               "A missing event table or modality directory is a warning and leaves that\n"
               "modality absent. Exit status: 0 ok, 1 failure, 2 usage error.\n");
}

int moeh_sim_cmd_extract(int argc, char **argv)
{
    moeh_extract_opts_t o;
    moeh_extract_opts_default(&o);
    const char *out = NULL;
    static const struct option lo[] = {{"mimic", required_argument, 0, 'm'},
                                       {"note", required_argument, 0, 'n'},
                                       {"cxr", required_argument, 0, 'c'},
                                       {"out", required_argument, 0, 'o'},
                                       {"variables", required_argument, 0, 'v'},
                                       {"image-size", required_argument, 0, 'S'},
                                       {"strict", no_argument, 0, 'x'},
                                       {"val", required_argument, 0, 'V'},
                                       {"test", required_argument, 0, 'T'},
                                       {"seed", required_argument, 0, 's'},
                                       {"log-level", required_argument, 0, 'L'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case 'm':
            o.mimic_dir = optarg;
            break;
        case 'n':
            o.note_dir = optarg;
            break;
        case 'c':
            o.cxr_dir = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'v':
            o.var_map = optarg;
            break;
        case 'S':
            o.img_size = (size_t)strtoul(optarg, NULL, 10);
            break;
        case 'x':
            o.strict = true;
            break;
        case 'V':
            o.val_frac = atof(optarg);
            break;
        case 'T':
            o.test_frac = atof(optarg);
            break;
        case 's':
            o.seed = strtoull(optarg, NULL, 10);
            break;
        case 'L': {
            moeh_log_level_t l;
            if (moeh_log_parse_level(optarg, &l)) {
                fprintf(stderr, "moeh-sim extract: bad --log-level '%s'\n", optarg);
                return 2;
            }
            moeh_log_configure(l, "moeh-sim", NULL, NULL);
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!o.mimic_dir || !out || optind != argc || o.val_frac < 0 || o.test_frac < 0 ||
        o.val_frac + o.test_frac > 1) {
        fprintf(stderr, "moeh-sim extract: --mimic and --out are required; fractions in [0,1]\n\n");
        usage(stderr);
        return 2;
    }
    moeh_err_t err = {0};
    moeh_dataset_t *ds = NULL;
    moeh_extract_stats_t st;
    int rc = moeh_extract(&o, &ds, &st, &err);
    if (rc == 0) rc = moeh_dataset_write(ds, out, &err);
    moeh_dataset_free(&ds);
    if (rc) {
        fprintf(stderr, "moeh-sim extract: %s\n", err.msg[0] ? err.msg : moeh_strerror(rc));
        return 1;
    }
    printf("cohort %zu admissions (%zu subjects) -> %s\n", st.cohort, st.subjects, out);
    for (int t = 0; t < MOEH_DS_TASKS; t++)
        printf("  %-12s %zu positive of %zu labelled\n", moeh_ds_task_names[t], st.positives[t],
               st.labelled[t]);
    printf("  modalities   ehr %zu, notes %zu, img %zu\n", st.avail[0], st.avail[1], st.avail[2]);
    return 0;
}
