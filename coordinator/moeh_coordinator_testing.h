/* moeh_coordinator_testing.h - fault injection for the multi-process tests only; not part of
 * the coordinator's interface (moeh_coordinator.h). */
#ifndef MOEH_COORDINATOR_TESTING_H
#define MOEH_COORDINATOR_TESTING_H

#include "moeh_coordinator.h"

typedef struct {
    uint32_t kill_after_round; /* SIGKILL this process once round N is checkpointed (0: off) */
} moeh_coord_faults_t;

/* moeh_coord_run() with faults injected (faults may be NULL: none). */
int moeh_coord_run_faulty(const moeh_coord_cfg_t *cfg, const moeh_coord_faults_t *faults,
                          volatile sig_atomic_t *stop, moeh_err_t *err)
    __attribute__((warn_unused_result));

#endif
