/* moeh_connguard.h - the bounds on the coordinator's TCP connections that ZeroMQ does not give
 * (issue 13, findings 2 and 3; docs/security.md "Descriptors and memory").
 *
 * libzmq accepts every TCP connection to a ROUTER (each one a file descriptor) and buffers every
 * part of a multipart message before the application sees the first (its pipe high-water mark
 * counts whole messages; ZMQ_MAXMSGSIZE bounds one part), and it has no call that closes one
 * ROUTER peer. The guard does what it can from outside: every interval_ms it lists the
 * process's descriptors (/proc/self/fd), finds the TCP connections accepted on the listening
 * port, reads from the kernel (TCP_INFO) how many bytes each peer has sent, and shuts down
 * (shutdown(2): libzmq then sees the connection end and frees what it holds for it)
 *   - a connection whose inbound bytes exceed its token bucket (burst_bytes, refilled at
 *     burst_bytes / 8 per second): what libzmq can buffer for one peer is bounded by what the
 *     peer sent;
 *   - the connection that sent the most in the last interval while all connections together
 *     exceed their common bucket (total_bytes, refilled at total_bytes / 8 per second);
 *   - the connections beyond max_conns whose peers sent the fewest bytes (one that never
 *     spoke first; the newest among equals), so that descriptors stay for the checkpoint,
 *     status and log files, and honest sites that exchange data keep theirs;
 *   - every connection of a site key but its newest, once the newest has delivered a message
 *     (the coordinator tells the guard which connection each message came from:
 *     moeh_connguard_note), so that one key holds one connection;
 *   - a connection that delivered no message for idle_ms while its peer sent less than
 *     MOEH_CONNGUARD_ACTIVE_BYTES (a peer that only answers ZeroMQ's heartbeats, or never
 *     gets past its handshake or its first message); an honest agent heartbeats every second
 *     and a long upload moves bytes.
 * Linux only (procfs, TCP_INFO); elsewhere create returns -ENOTSUP. Not thread-safe: called by
 * the thread that owns the ROUTER. */
#ifndef MOEH_CONNGUARD_H
#define MOEH_CONNGUARD_H

#include "moeh_common.h"

#include <stdint.h>

typedef struct {
    uint32_t max_conns;   /* accepted connections kept; 0: no cap */
    uint64_t burst_bytes; /* one connection's inbound budget; 0: no per-connection budget */
    uint64_t total_bytes; /* all connections' inbound budget; 0: none */
    uint32_t interval_ms; /* between two scans (>= 10) */
    uint32_t idle_ms;     /* a connection without a message for this long goes; 0: never */
} moeh_connguard_cfg_t;

/* Inbound bytes within idle_ms that keep a connection without messages alive (a message in
 * transit); a ZeroMQ heartbeat answer is under 100 bytes. */
#define MOEH_CONNGUARD_ACTIVE_BYTES (16u << 10)
/* Longest site key the guard tells apart (longer ones are compared on this prefix). */
#define MOEH_CONNGUARD_KEY_MAX 64u

typedef struct {
    uint32_t conns;       /* accepted connections at the last scan */
    uint32_t most_conns;  /* most at any scan */
    uint64_t shut_cap;    /* connections shut down: over max_conns */
    uint64_t shut_budget; /* ... over their own budget */
    uint64_t shut_total;  /* ... over the common budget */
    uint64_t shut_dup;    /* ... replaced by a newer connection of the same key */
    uint64_t shut_idle;   /* ... without a message for idle_ms */
    uint64_t max_conn_rx; /* most bytes one connection sent within one interval */
} moeh_connguard_stats_t;

typedef struct moeh_connguard moeh_connguard_t;

/* A guard for the connections accepted on `endpoint` (a bound "tcp://ADDR:PORT", as
 * ZMQ_LAST_ENDPOINT gives it). 0, -EINVAL (not a tcp endpoint), -ENOTSUP (no procfs),
 * -ENOMEM; caller owns *out: moeh_connguard_destroy(&g). */
int moeh_connguard_create(const moeh_connguard_cfg_t *cfg, const char *endpoint,
                          moeh_connguard_t **out, moeh_err_t *err)
    __attribute__((warn_unused_result));
void moeh_connguard_destroy(moeh_connguard_t **self_p); /* NULL-safe; sets *self_p = NULL */
/* Raises the per-connection and total budgets to at least `bytes` (e.g. twice the largest
 * legitimate message once the model is known); never lowers them. */
void moeh_connguard_min_budget(moeh_connguard_t *g, uint64_t burst_bytes, uint64_t total_bytes);
/* Scans if interval_ms passed since the last scan (now_ms on any monotonic clock); returns the
 * number of connections shut down by this call. Logs each shutdown (rate-limited). */
int moeh_connguard_tick(moeh_connguard_t *g, int64_t now_ms);
/* Tells the guard that connection fd (ZMQ_SRCFD of a received message; ignored if < 0)
 * delivered a well-formed message at now_ms from the site key `key` ("" or NULL: none, as
 * without CURVE). Shuts down the key's other connections (those accepted earlier; logged) and
 * returns how many. */
int moeh_connguard_note(moeh_connguard_t *g, int fd, const char *key, int64_t now_ms);
moeh_connguard_stats_t moeh_connguard_stats(const moeh_connguard_t *g);

#endif
