/* schema.c - the names of moeh_schema.h. */
#include "moeh_schema.h"

const char *const moeh_task_names[MOEH_N_TASKS] = {"mortality", "los7", "readmit30"};
const char *const moeh_task_titles[MOEH_N_TASKS] = {
    "in-hospital mortality", "length of stay > 7 days", "30-day readmission"};
const char *const moeh_mod_names[MOEH_N_MODS] = {"ehr", "notes", "img"};
const char *const moeh_combo_names[MOEH_N_COMBOS] = {"E", "N", "EN", "I", "EI", "NI", "ENI"};
