/* cmd_split.c - `moeh split`: a dataset into virtual hospitals (docs/data.md, "Sites"). */
#include "moeh_split.h"
#include "moeh_opts.h"
#include "sim_commands.h"

#include <string.h>

_Static_assert(MOEH_N_TASKS == 3, "--skew-by's message lists three tasks");

static const char k_usage[] =
    "usage: moeh split --dataset D (--sites SPEC | --hospitals TRUTH.csv) --out DIR "
    "[OPTIONS]\n\n"
    "Assigns whole subjects to sites and writes DIR/<site>/ (one dataset each, "
    "with a\nsubject-grouped train/val/test split inside the site) and "
    "DIR/summary.tsv (docs/data.md).\nExit status: 0 ok, 1 failure, 2 usage "
    "error.";

int moeh_sim_cmd_split(int argc, char **argv)
{
    moeh_split_opts_t o;
    moeh_split_opts_default(&o);
    const char *in = NULL, *out = NULL, *spec = NULL, *hospitals = NULL,
               *skew = moeh_task_names[MOEH_TASK_MORTALITY];
    int no_verify = 0;
    const moeh_opt_t opts[] = {
        {"dataset", MOEH_OPT_STR, &in, "the dataset to split (moeh extract) [required]"},
        {"sites", MOEH_OPT_STR, &spec,
         "NAME:SHARE[:MODS],... e.g. A:0.5:ehr+notes+img,B:0.3:ehr+img,C:0.2:ehr (SHARE: share "
         "of admissions; MODS: the modalities the site has at all, default all), or 'careunit': "
         "one site per first ICU care unit [required]"},
        {"hospitals", MOEH_OPT_STR, &hospitals,
         "TRUTH.csv of moeh synth --profile heterogeneous: one site per generator hospital "
         "(hosp0, hosp1, ...), so the generator's site shift is the federation's; replaces "
         "--sites"},
        {"out", MOEH_OPT_STR, &out,
         "output directory: one dataset per site + summary.tsv [required]"},
        {"alpha", MOEH_OPT_F64, &o.alpha,
         "case-mix skew: per stratum, site proportions ~ Dirichlet(alpha*K*shares); small = very "
         "different sites, 0 = no skew"},
        {"skew-by", MOEH_OPT_STR, &skew,
         "strata for --alpha: mortality, los7, readmit30 (a task's label) or careunit"},
        {"val", MOEH_OPT_F64, &o.val_frac, "validation fraction inside each site"},
        {"test", MOEH_OPT_F64, &o.test_frac, "test fraction inside each site"},
        {"seed", MOEH_OPT_U64, &o.seed, "seed of the assignment and the splits"},
        {"no-verify", MOEH_OPT_BOOL, &no_verify, "do not check the input arrays' checksums"},
    };
    moeh_opts_t po = MOEH_SIM_OPTS("moeh split", k_usage, opts);
    moeh_err_t err = {0};
    int rc = moeh_opts_parse(&po, argc, argv, &err);
    if (rc == 1) return 0;
    if (!rc && (!in || !out || !spec == !hospitals))
        rc = moeh_errf(&err, -EINVAL,
                       "--dataset, --out and one of --sites / --hospitals are required (moeh "
                       "split --help)");
    if (!rc && !strcmp(skew, "careunit"))
        o.skew_by = -1;
    else if (!rc) {
        o.skew_by = -2;
        for (int t = 0; t < MOEH_N_TASKS; t++)
            if (!strcmp(skew, moeh_task_names[t])) o.skew_by = t;
        if (o.skew_by == -2)
            rc = moeh_errf(&err, -EINVAL, "--skew-by %s: expected %s, %s, %s or careunit", skew,
                           /* the schema's three tasks */
                           moeh_task_names[0], moeh_task_names[1], moeh_task_names[2]);
    }
    if (!rc && o.alpha < 0) rc = moeh_errf(&err, -EINVAL, "--alpha %g: expected >= 0", o.alpha);
    if (!rc && (o.val_frac < 0 || o.test_frac < 0 || o.val_frac + o.test_frac > 1))
        rc =
            moeh_errf(&err, -EINVAL, "--val %g, --test %g: expected fractions >= 0 with a sum <= 1",
                      o.val_frac, o.test_frac);
    if (!rc)
        rc = spec ? moeh_split_parse_sites(spec, &o, &err)
                  : moeh_split_load_hospitals(hospitals, &o, &err);
    if (rc) {
        moeh_split_opts_free(&o);
        return moeh_sim_usage_error(&po, &err);
    }
    moeh_dataset_t *ds = NULL;
    rc = moeh_dataset_open(in, !no_verify, &ds, &err);
    if (!rc) rc = moeh_split_write(ds, &o, out, stdout, &err);
    moeh_dataset_destroy(&ds);
    moeh_split_opts_free(&o);
    if (rc) return moeh_sim_failed(&po, rc, &err);
    moeh_opts_free(&po);
    return 0;
}
