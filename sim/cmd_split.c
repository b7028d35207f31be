/* cmd_split.c - `moeh-sim split`: a dataset into virtual hospitals (docs/data.md, "Sites"). */
#include "moeh_split.h"
#include "sim_commands.h"

#include <getopt.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: moeh-sim split --dataset D --sites SPEC --out DIR\n"
        "                      [--alpha A] [--skew-by mortality|los|readmit|careunit]\n"
        "                      [--val F] [--test F] [--seed N] [--no-verify]\n\n"
        "Assigns whole subjects to sites and writes DIR/<site>/ (one dataset each, with a\n"
        "subject-grouped train/val/test split inside the site) and DIR/summary.tsv.\n\n"
        "  --sites SPEC  NAME:SHARE[:MODS],... e.g. A:0.5:ehr+notes+img,B:0.3:ehr+img,C:0.2:ehr\n"
        "                (SHARE: share of admissions; MODS: the modalities the site has at\n"
        "                all, default all), or 'careunit': one site per first ICU care unit\n"
        "  --alpha A     case-mix skew: per stratum, site proportions ~ Dirichlet(A*K*shares);\n"
        "                small A = very different sites; 0 (default) = no skew\n"
        "  --skew-by S   strata for --alpha: a task's label (default mortality) or careunit\n"
        "  --val, --test split fractions inside each site (default 0.1, 0.2)\n"
        "  --seed N      default 1\n"
        "  --no-verify   do not check the input arrays' checksums\n");
}

int moeh_sim_cmd_split(int argc, char **argv)
{
    moeh_split_opts_t o;
    moeh_split_opts_default(&o);
    const char *in = NULL, *out = NULL, *spec = NULL;
    bool verify = true;
    static const struct option lo[] = {{"dataset", required_argument, 0, 'd'},
                                       {"sites", required_argument, 0, 'S'},
                                       {"out", required_argument, 0, 'o'},
                                       {"alpha", required_argument, 0, 'a'},
                                       {"skew-by", required_argument, 0, 'k'},
                                       {"val", required_argument, 0, 'V'},
                                       {"test", required_argument, 0, 'T'},
                                       {"seed", required_argument, 0, 's'},
                                       {"no-verify", no_argument, 0, 'n'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case 'd':
            in = optarg;
            break;
        case 'S':
            spec = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'a':
            o.alpha = atof(optarg);
            break;
        case 'k':
            if (!strcmp(optarg, "mortality"))
                o.skew_by = 0;
            else if (!strcmp(optarg, "los"))
                o.skew_by = 1;
            else if (!strcmp(optarg, "readmit"))
                o.skew_by = 2;
            else if (!strcmp(optarg, "careunit"))
                o.skew_by = -1;
            else {
                fprintf(stderr, "moeh-sim split: --skew-by: unknown '%s'\n", optarg);
                return 2;
            }
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
        case 'n':
            verify = false;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    moeh_err_t err = {0};
    if (!in || !out || !spec || optind != argc || o.alpha < 0 || o.val_frac < 0 ||
        o.test_frac < 0 || o.val_frac + o.test_frac > 1) {
        fprintf(stderr, "moeh-sim split: --dataset, --sites and --out are required\n\n");
        usage(stderr);
        return 2;
    }
    if (moeh_split_parse_sites(spec, &o, &err)) {
        fprintf(stderr, "moeh-sim split: %s\n", err.msg);
        return 2;
    }
    moeh_dataset_t *ds = NULL;
    int rc = moeh_dataset_open(in, verify, &ds, &err);
    if (!rc) rc = moeh_split_write(ds, &o, out, stdout, &err);
    moeh_dataset_free(&ds);
    if (rc) {
        fprintf(stderr, "moeh-sim split: %s\n", err.msg[0] ? err.msg : moeh_strerror(rc));
        return 1;
    }
    return 0;
}
