/* cmd_extract.c - `moeh extract`: MIMIC-IV (+ Note, + CXR-JPG) to a dataset directory. */
#include "moeh_extract.h"
#include "moeh_opts.h"
#include "sim_commands.h"

#include <string.h>

static const char k_usage[] =
    "usage: moeh extract --mimic DIR [--note DIR] [--cxr DIR] --out DATASET "
    "[--note-embeddings X.npy] [--cxr-embeddings Y.npy] [OPTIONS]\n\nBuilds the "
    "cohort of docs/data.md from MIMIC-IV as PhysioNet "
    "publishes it and\nwrites a dataset directory (.npy arrays + meta.json). A "
    "missing event table or modality\ndirectory is a warning and leaves that "
    "modality absent. With --note-embeddings / --cxr-embeddings the\n"
    "dataset also holds note_vec.npy / img_vec.npy for the model's precomputed-"
    "vector inputs\n(docs/data.md section 5.1). Exit status: 0 ok, 1 failure,\n2 "
    "usage error.";

int moeh_sim_cmd_extract(int argc, char **argv)
{
    moeh_extract_opts_t o;
    moeh_extract_opts_default(&o);
    const char *out = NULL, *log_level = NULL;
    uint64_t img_size = o.img_size;
    int strict = o.strict;
    const moeh_opt_t opts[] = {
        {"mimic", MOEH_OPT_STR, &o.mimic_dir,
         "MIMIC-IV root holding hosp/ and icu/ (*.csv.gz) [required]"},
        {"note", MOEH_OPT_STR, &o.note_dir, "MIMIC-IV-Note root holding note/radiology.csv.gz"},
        {"cxr", MOEH_OPT_STR, &o.cxr_dir,
         "MIMIC-CXR-JPG root: mimic-cxr-2.0.0-metadata.csv.gz and files/"},
        {"out", MOEH_OPT_STR, &out, "output dataset directory (created) [required]"},
        {"variables", MOEH_OPT_STR, &o.var_map,
         "variable map (default: the shipped sim/variables.csv)"},
        {"image-size", MOEH_OPT_U64, &img_size, "images are S x S grayscale"},
        {"strict", MOEH_OPT_BOOL, &strict,
         "a malformed row is fatal (default: reported and skipped), and so is a vector that "
         "matches no note or image of the cohort (default: counted in a warning)"},
        {"val", MOEH_OPT_F64, &o.val_frac, "subject-grouped validation fraction"},
        {"test", MOEH_OPT_F64, &o.test_frac, "subject-grouped test fraction"},
        {"seed", MOEH_OPT_U64, &o.seed, "seed of the split"},
        {"note-embeddings", MOEH_OPT_STR, &o.note_emb,
         "precomputed note vectors X.npy ((K,D) float32) + X.ids.txt (note_id per row) [+ "
         "X.json]; needs --note; an admission gets the mean of its notes' vectors"},
        {"cxr-embeddings", MOEH_OPT_STR, &o.cxr_emb,
         "precomputed X-ray vectors X.npy + X.ids.txt (dicom_id per row) [+ X.json]; needs "
         "--cxr (metadata only: no JPEG is decoded); the mean over the window's AP/PA images"},
        {"log-level", MOEH_OPT_STR, &log_level, "debug, info, warn or error"},
    };
    moeh_opts_t po = MOEH_SIM_OPTS("moeh extract", k_usage, opts);
    moeh_err_t err = {0};
    int rc = moeh_opts_parse(&po, argc, argv, &err);
    if (rc == 1) return 0;
    if (!rc && (!o.mimic_dir || !out))
        rc = moeh_errf(&err, -EINVAL, "--mimic and --out are required (moeh extract --help)");
    if (!rc && (o.val_frac < 0 || o.test_frac < 0 || o.val_frac + o.test_frac > 1))
        rc =
            moeh_errf(&err, -EINVAL, "--val %g, --test %g: expected fractions >= 0 with a sum <= 1",
                      o.val_frac, o.test_frac);
    if (!rc && (img_size < 8 || img_size > 1024))
        rc = moeh_errf(&err, -EINVAL, "--image-size %llu: expected 8..1024",
                       (unsigned long long)img_size);
    moeh_log_level_t l;
    if (!rc && log_level && moeh_log_parse_level(log_level, &l))
        rc = moeh_errf(&err, -EINVAL, "--log-level %s: expected debug, info, warn or error",
                       log_level);
    if (rc) return moeh_sim_usage_error(&po, &err);
    if (log_level) moeh_log_configure(l, "moeh", NULL, NULL);
    o.img_size = (size_t)img_size, o.strict = strict;
    moeh_dataset_t *ds = NULL;
    moeh_extract_stats_t st;
    rc = moeh_extract(&o, &ds, &st, &err);
    if (rc == 0) rc = moeh_dataset_write(ds, out, &err);
    moeh_dataset_destroy(&ds);
    if (rc) return moeh_sim_failed(&po, rc, &err);
    printf("cohort %zu admissions (%zu subjects) -> %s\n", st.cohort, st.subjects, out);
    for (int t = 0; t < MOEH_N_TASKS; t++)
        printf("  %-12s %zu positive of %zu labelled\n", moeh_task_names[t], st.positives[t],
               st.labelled[t]);
    printf("  modalities   ehr %zu, notes %zu, img %zu\n", st.avail[0], st.avail[1], st.avail[2]);
    if (o.note_emb)
        printf("  note vectors %zu admissions (%zu vectors unused)\n", st.vec_rows[0],
               st.vec_unused[0]);
    if (o.cxr_emb)
        printf("  x-ray vectors %zu admissions (%zu vectors unused)\n", st.vec_rows[1],
               st.vec_unused[1]);
    moeh_opts_free(&po);
    return 0;
}
