/* synth_fixture.h - the test fixture several suites share: a small synthetic MIMIC-IV written
 * under DIR/raw (moeh_synth) and extracted into a dataset in memory (moeh_extract). */
#ifndef MOEH_TEST_SYNTH_FIXTURE_H
#define MOEH_TEST_SYNTH_FIXTURE_H

#include "moeh_extract.h"
#include "moeh_synth.h"

#include <stdio.h>

/* 0, or a negative code with err. The caller owns *out (moeh_dataset_destroy). */
static inline int moeh_test_synth_cohort(const char *dir, size_t admissions, uint64_t seed,
                                         moeh_dataset_t **out, moeh_err_t *err)
{
    char raw[1100], mimic[1200], note[1200], cxr[1200];
    snprintf(raw, sizeof raw, "%s/raw", dir);
    snprintf(mimic, sizeof mimic, "%s/mimic", raw);
    snprintf(note, sizeof note, "%s/note", raw);
    snprintf(cxr, sizeof cxr, "%s/cxr", raw);
    moeh_log_configure(MOEH_LOG_WARN, "test", NULL, NULL);
    moeh_synth_opts_t so;
    moeh_synth_opts_default(&so);
    so.admissions = admissions;
    so.seed = seed;
    moeh_synth_stats_t sst;
    moeh_extract_opts_t eo;
    moeh_extract_opts_default(&eo);
    eo.mimic_dir = mimic, eo.note_dir = note, eo.cxr_dir = cxr;
    moeh_extract_stats_t est;
    int rc = moeh_synth(&so, raw, &sst, err);
    return rc ? rc : moeh_extract(&eo, out, &est, err);
}

#endif
