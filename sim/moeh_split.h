/* moeh_split.h - splitting a dataset into virtual hospitals (DESIGN §3.4; docs/data.md).
 *
 * Whole subjects go to one site. A site has a share of the admissions, the set of
 * modalities it has at all (a site without a PACS has no X-rays: its img column is dropped),
 * and, with alpha > 0, a case-mix skew: for each stratum (subjects grouped by a label or by
 * first care unit) the sites' proportions are drawn from Dirichlet(alpha * K * shares), so
 * small alpha gives sites very different case mixes (Hsu et al. 2019, "Measuring the effects
 * of non-identical data distribution"), then rescaled (iterative proportional fitting) so that
 * site sizes still follow the shares. Inside each site a subject-grouped train/val/test
 * split is drawn. Real MIMIC-IV sites can follow first_careunit instead ("careunit"). */
#ifndef MOEH_SPLIT_H
#define MOEH_SPLIT_H

#include "moeh_dataset.h"

#define MOEH_MAX_SITES 256

typedef struct {
    char name[32];
    double share;  /* > 0; shares are normalised */
    unsigned mods; /* bit m = modality m (ehr 1, notes 2, img 4) */
} moeh_site_spec_t;

typedef struct {
    moeh_site_spec_t sites[MOEH_MAX_SITES];
    size_t n_sites;
    int by_careunit; /* one site per first_careunit (static one-hot), all modalities */
    double alpha;    /* 0: no skew */
    int skew_by;     /* task index 0..2, or -1: first care unit */
    double val_frac, test_frac;
    uint64_t seed;
    /* one site per generator hospital (moeh synth --profile heterogeneous): subject -> site,
     * sorted by subject; set by moeh_split_load_hospitals, freed by moeh_split_opts_free */
    int64_t *hosp_subj;
    uint32_t *hosp_of;
    size_t n_hosp_subj;
} moeh_split_opts_t;

void moeh_split_opts_default(moeh_split_opts_t *o);

/* Parses "careunit" or "NAME:SHARE[:MODS],..." with MODS like "ehr+notes+img" (default all).
 * 0 or -EINVAL with the offending part in err. */
int moeh_split_parse_sites(const char *spec, moeh_split_opts_t *o, moeh_err_t *err) MOEH_WUR;

/* Reads the subject_id and hospital columns of a synthetic truth.csv and sets one site per
 * hospital (named hosp0, hosp1, ..., all modalities). 0 or an error naming file, line, field. */
int moeh_split_load_hospitals(const char *truth_csv, moeh_split_opts_t *o,
                              moeh_err_t *err) MOEH_WUR;
void moeh_split_opts_free(moeh_split_opts_t *o);

/* Assigns each row of ds to a site: site_of[i] < n_sites (by_careunit: sites are filled in
 * from the care units present, names set in o). 0, -EINVAL or -ENOMEM. */
int moeh_split_assign(const moeh_dataset_t *ds, moeh_split_opts_t *o, uint32_t *site_of,
                      moeh_err_t *err) MOEH_WUR;

/* Assigns, writes DIR/<site>/ (a dataset each, split set inside the site) and
 * DIR/summary.tsv, and prints the summary table to out (may be NULL). */
int moeh_split_write(const moeh_dataset_t *ds, moeh_split_opts_t *o, const char *dir, FILE *out,
                     moeh_err_t *err) MOEH_WUR;

#endif
