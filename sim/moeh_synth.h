/* moeh_synth.h - the synthetic MIMIC-IV (DESIGN §3.3; the generative model is in
 * docs/synthetic.md). Writes the raw layout that `moeh extract` reads:
 *   DIR/mimic/hosp/{patients,admissions,labevents,d_labitems}.csv.gz
 *   DIR/mimic/icu/{icustays,chartevents,d_items}.csv.gz
 *   DIR/note/note/radiology.csv.gz
 *   DIR/cxr/mimic-cxr-2.0.0-metadata.csv.gz + DIR/cxr/files/pXX/pSUBJECT/sSTUDY/DICOM.jpg
 *   DIR/truth.csv (one row per admission: cohort membership, latent state, true risks,
 *   labels, intended modalities) and DIR/truth.json (counts and oracle AUROC per task).
 * Deterministic in (seed, options): each subject draws from its own stream seeded by
 * (seed, subject number). */
#ifndef MOEH_SYNTH_H
#define MOEH_SYNTH_H

#include "moeh_common.h"
#include "moeh_dataset.h"

#include <stdbool.h>

typedef enum {
    MOEH_SYNTH_HOMOGENEOUS = 0, /* one risk function, availability from severity and lungs */
    MOEH_SYNTH_HETEROGENEOUS,   /* kinds, informative availability, site shift */
} moeh_synth_profile_t;

typedef struct {
    moeh_synth_profile_t profile; /* docs/synthetic.md; default homogeneous */
    size_t admissions;            /* cohort admissions to generate (others are added around them) */
    uint64_t seed;
    double chart_days; /* chart vitals over max(52 h, this many days) of the ICU stay */
    size_t img_px;     /* side of the written JPEGs (default 256) */
    bool images;       /* write JPEG files (the metadata is always written) */
    int gz_level;      /* 1..9, default 1 */
} moeh_synth_opts_t;

typedef struct {
    size_t subjects, admissions, cohort, icu_stays;
    uint64_t chart_rows, lab_rows, notes, cxr_images;
    size_t positives[MOEH_N_TASKS], labelled[MOEH_N_TASKS], avail[MOEH_N_MODS];
    double oracle_auroc[MOEH_N_TASKS];
    /* heterogeneous profile only: the modality-limited oracle, cohort per kind and hospital */
    double limited_auroc[MOEH_N_TASKS];
    size_t kind_n[3], hosp_n[4];
} moeh_synth_stats_t;

void moeh_synth_opts_default(moeh_synth_opts_t *o);

/* Generates the database under dir (created). 0 or a negative errno code (message in err). */
int moeh_synth(const moeh_synth_opts_t *o, const char *dir, moeh_synth_stats_t *st,
               moeh_err_t *err) MOEH_WUR;

#endif
