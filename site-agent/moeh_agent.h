/* moeh_agent.h - moeh-site-agent as a library: joins the coordinator, trains the global model on
 * the site's own data when asked, evaluates it as score histograms, and never sends a record.
 *
 * One thread owns the DEALER socket. Heartbeats go out every heartbeat interval, also during
 * local training (the training loop services the socket between minibatches) and while a
 * training update waits for the coordinator's grant to upload it. If the
 * coordinator is silent for too long the agent drops the connection and re-registers with
 * exponential backoff; if the coordinator refuses its key the agent stops with a clear error. */
#ifndef MOEH_AGENT_H
#define MOEH_AGENT_H

#include "moeh_common.h"

#include <signal.h>

typedef struct {
    const char *connect; /* coordinator endpoint, e.g. tcp://127.0.0.1:7400 */
    const char *site_id;
    const char *dataset_dir;
    const char *out_dir;    /* what the site keeps: model.safetensors, local_metrics.jsonl */
    const char *key_path;   /* this site's .key */
    const char *server_key; /* the coordinator's .pub (pinned) */
    int insecure;
    uint32_t silence_timeout_ms; /* coordinator silent this long: reconnect */
    uint32_t backoff_max_ms;
    uint32_t give_up_ms; /* never welcomed after this long: fail (0 = never) */
} moeh_agent_cfg_t;

/* Fills cfg with the defaults (every pointer NULL except connect). */
void moeh_agent_cfg_defaults(moeh_agent_cfg_t *cfg);

/* Runs the agent until the coordinator ends the run, *stop is set or a fatal error. Borrows cfg
 * for the whole run. 0 when the coordinator said the run is over; -EINTR if *stop; -EACCES if
 * the coordinator refused this site's key or id, or --key and --server-key hold the same
 * public key; -ENOKEY if a key file cannot serve (missing, unreadable, the wrong kind: a
 * configuration error, found before connecting); -EINVAL for a missing or bad option; other
 * negative codes, each with err->msg. */
int moeh_agent_run(const moeh_agent_cfg_t *cfg, volatile sig_atomic_t *stop, moeh_err_t *err)
    __attribute__((warn_unused_result));

#endif
