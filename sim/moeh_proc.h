/* moeh_proc.h - starting, watching and reaping the processes of a local federation (moeh run
 * and the multi-process tests). Waits use pidfds and poll(): no sleep is a synchronisation. */
#ifndef MOEH_PROC_H
#define MOEH_PROC_H

#include "moeh_common.h"

#include <sys/types.h>

typedef struct {
    pid_t pid; /* 0 when not running (never started or reaped) */
    int pidfd;
    int status; /* wait status once reaped */
    char name[64];
} moeh_proc_t;

/* Starts argv[0] (a path) with argv. stdout goes to out_path (NULL: inherited), stderr to
 * err_path (NULL: inherited). pass_fd (>= 0) stays open in the child; every other inherited
 * descriptor above 2 is closed. 0 or a negative code with err. */
int moeh_proc_spawn(moeh_proc_t *p, const char *name, char *const argv[], const char *out_path,
                    const char *err_path, int pass_fd, moeh_err_t *err);
/* Waits up to timeout_ms (-1: forever) for p to exit: 0 (reaped, status set) or -ETIMEDOUT. */
int moeh_proc_wait(moeh_proc_t *p, int timeout_ms);
/* Sends sig if still running. */
void moeh_proc_signal(moeh_proc_t *p, int sig);
/* SIGTERM, wait up to grace_ms, then SIGKILL and reap. Safe on a reaped process. */
void moeh_proc_stop(moeh_proc_t *p, int grace_ms);
/* Exit code if it exited normally, 128 + signal if killed, -1 if not reaped. */
int moeh_proc_exit_code(const moeh_proc_t *p);

/* Reads one '\n'-terminated line from fd within timeout_ms (the newline is stripped).
 * 0, -ETIMEDOUT, or -EPIPE if the writer closed first. */
int moeh_read_line(int fd, char *buf, size_t cap, int timeout_ms);

/* Directory of the running executable (where the sibling binaries are), into out. */
int moeh_self_dir(char *out, size_t cap);

#endif
