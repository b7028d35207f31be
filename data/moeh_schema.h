/* moeh_schema.h - the one table of what moeh predicts and from what: the tasks, the modalities,
 * their combinations and the evaluation slices. Dataset files, the wire, metrics.jsonl, the
 * reports and the command line all use these names, counts and indices; nothing else defines
 * them.
 *
 * A modality combination is the non-empty set of modalities an admission has, as a bit mask
 * (bit m set: modality m present) minus one: E = 0, N = 1, EN = 2, I = 3, EI = 4, NI = 5,
 * ENI = 6. Evaluation slice 0 is every row; slice 1 + c is combination c. */
#ifndef MOEH_SCHEMA_H
#define MOEH_SCHEMA_H

#define MOEH_N_TASKS 3
#define MOEH_N_MODS 3
#define MOEH_N_COMBOS 7                   /* 2^MOEH_N_MODS - 1 */
#define MOEH_N_SLICES (MOEH_N_COMBOS + 1) /* every row, then each combination */

enum { MOEH_TASK_MORTALITY = 0, MOEH_TASK_LOS7 = 1, MOEH_TASK_READMIT30 = 2 };
enum { MOEH_MOD_EHR = 0, MOEH_MOD_NOTES = 1, MOEH_MOD_IMG = 2 };

/* Short names, used as keys everywhere: "mortality", "los7", "readmit30". */
extern const char *const moeh_task_names[MOEH_N_TASKS];
/* For people: "in-hospital mortality", "length of stay > 7 days", "30-day readmission". */
extern const char *const moeh_task_titles[MOEH_N_TASKS];
/* "ehr", "notes", "img". */
extern const char *const moeh_mod_names[MOEH_N_MODS];
/* "E", "N", "EN", "I", "EI", "NI", "ENI" (E = EHR, N = notes, I = image). */
extern const char *const moeh_combo_names[MOEH_N_COMBOS];

/* Combination index of the availability flags avail[MOEH_N_MODS] (non-zero: present), or -1
 * if no modality is present. */
static inline int moeh_combo_of(const unsigned char *avail)
{
    unsigned mask = 0;
    for (unsigned m = 0; m < MOEH_N_MODS; m++)
        mask |= (avail[m] != 0) << m;
    return (int)mask - 1;
}

#endif
