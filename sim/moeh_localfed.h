/* moeh_localfed.h - building blocks of a federation on one machine: key files and registry,
 * starting the coordinator (reading back its endpoint) and the agents as real processes.
 * Used by `moeh run` and by the multi-process tests. */
#ifndef MOEH_LOCALFED_H
#define MOEH_LOCALFED_H

#include "moeh_proc.h"

/* Writes DIR/coordinator.{key,pub}, DIR/NAME.{key,pub} for every site name and
 * DIR/registry.ini admitting those sites. 0 or a negative code with err. */
int moeh_localfed_keys(const char *dir, const char *const *names, size_t n_sites, moeh_err_t *err)
    __attribute__((warn_unused_result));

/* Starts BIN_DIR/moeh-coordinator bound to tcp://127.0.0.1:(any port) with the extra
 * arguments (NULL-terminated, may be NULL), stderr to log_path and stdout to out_path
 * (NULL: inherited), and waits up to 10 s for the endpoint it bound (written to endpoint, cap
 * bytes). 0 (the caller reaps *p later: moeh_proc_stop) or a negative code with err (nothing
 * left running). */
int moeh_localfed_start_coordinator(moeh_proc_t *p, const char *bin_dir, char *const extra[],
                                    const char *out_path, const char *log_path, char *endpoint,
                                    size_t cap, moeh_err_t *err)
    __attribute__((warn_unused_result));

/* Starts BIN_DIR/moeh-site-agent for site_id on dataset, keeping its final model and local
 * metrics in out_dir (--out), connecting to endpoint; with keys (key_path, server_pub) or, if
 * key_path is NULL, --insecure. Extra args may be NULL. 0 (the caller reaps *p later:
 * moeh_proc_stop) or a negative code with err (nothing started). */
int moeh_localfed_start_agent(moeh_proc_t *p, const char *bin_dir, const char *endpoint,
                              const char *site_id, const char *dataset, const char *out_dir,
                              const char *key_path, const char *server_pub, char *const extra[],
                              const char *log_path, moeh_err_t *err)
    __attribute__((warn_unused_result));

#endif
