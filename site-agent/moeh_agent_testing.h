/* moeh_agent_testing.h - TESTS ONLY: fault injection in moeh-site-agent, for the multi-process
 * tests (tests/test_federation.c and test_fed_*.c run the binary with --fault-kill-*). A
 * deployment never includes this header; the public configuration (moeh_agent.h) has no such
 * knobs.
 *
 * Each fault makes the agent SIGKILL itself at one point of the protocol, so that the
 * coordinator sees a site vanish exactly there. A zero field is off. */
#ifndef MOEH_AGENT_TESTING_H
#define MOEH_AGENT_TESTING_H

#include "moeh.pb-c.h"
#include "moeh_agent.h"

typedef struct {
    uint32_t kill_round;              /* on receiving the RoundStart{TRAIN} of this round */
    uint32_t kill_work_round;         /* when this round's training starts (under secure
                                       * aggregation after its shares went out: keys first) */
    uint32_t kill_secagg_round;       /* in this round's TRAIN secure aggregation, after sending
                                       * its shares and before its masked vector */
    Moeh__RoundTask kill_secagg_task; /* the same in the secure aggregation of this task ... */
    uint32_t kill_secagg_at;          /* ... and round (STATS: 0) */
    uint32_t kill_upload_round;       /* on receiving this round's UploadGrant, before sending
                                       * its update */
    int kill_final;                   /* on receiving the FinalModel, before storing it */
} moeh_agent_faults_t;

/* Parses a --fault-kill-secagg-at value into f->kill_secagg_task and f->kill_secagg_at:
 * "stats" (round 0), "eval:N" (the round's EVALUATE or VALIDATE) or "train:N" (N >= 1, nothing
 * after it). 0, or -EINVAL with f
 * unchanged. */
int moeh_agent_faults_parse_secagg_at(moeh_agent_faults_t *f, const char *spec)
    __attribute__((warn_unused_result));

/* moeh_agent_run with these faults injected (NULL: none; moeh_agent_run is this with NULL).
 * Same returns. */
int moeh_agent_run_faulty(const moeh_agent_cfg_t *cfg, const moeh_agent_faults_t *faults,
                          volatile sig_atomic_t *stop, moeh_err_t *err)
    __attribute__((warn_unused_result));

#endif
