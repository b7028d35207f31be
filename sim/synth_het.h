/* synth_het.h - the heterogeneous profile of the synthetic MIMIC-IV (internal to sim/synth*.c;
 * every number is stated, with its reason, in docs/synthetic.md "The heterogeneous profile"):
 * patient kinds with their own outcome functions, informative availability, site shift. */
#ifndef MOEH_SYNTH_HET_H
#define MOEH_SYNTH_HET_H

#include "moeh_common.h"

#include <stdbool.h>

#define HET_N_HOSP 4
#define HET_N_KINDS 3 /* respiratory, surgical, cardiac */

typedef struct {
    int hospital; /* 0..HET_N_HOSP-1, per subject */
    int kind;     /* 0 R, 1 S, 2 C */
    int unit;     /* index into synth.c's k_units (6 ICU units) */
    int type;     /* index into synth.c's k_types (6 admission types) */
} het_adm_t;

extern const char het_kind_letter[HET_N_KINDS];

/* The subject's hospital (draws one uniform). */
int het_hospital(moeh_rng_t *r);
/* Draws the admission's kind from the hospital's case mix, then its care unit and admission
 * type; shifts the latents z = {s, h, k, n, m} by the kind's means. */
void het_admission(moeh_rng_t *r, int hospital, het_adm_t *a, double z[5]);
/* The kind's true risk per task (mortality, long stay, readmission). */
void het_risk(int kind, const double z[5], double age, double risk[3]);
/* The modality-limited oracle: het_risk with n (no notes) / m (no X-ray) at the kind's mean. */
void het_limited_risk(int kind, const double z[5], double age, bool notes, bool cxr,
                      double risk[3]);
/* P(an X-ray study in the window) and P(a report in the window given the X-ray or not). */
double het_p_cxr(const het_adm_t *a, const double z[5]);
double het_p_note(bool cxr, const double z[5]);
/* Hourly vital-sign charting offset of the hospital (added to 0.4 + s inside the sigmoid). */
double het_chart_offset(int hospital);
/* Site quirks: creatinine in umol/L at hospital 1; another X-ray acquisition at hospital 2. */
static inline bool het_creat_umol(int hospital)
{
    return hospital == 1;
}
static inline bool het_cxr_alt(int hospital)
{
    return hospital == 2;
}

#endif
