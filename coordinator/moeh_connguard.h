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
 *   - the connection with the most bytes sent and not read (below) while all connections
 *     together hold more than total_bytes so: what libzmq buffers for all peers together
 *     (memory, not rate: honest sites' uploads are read as they come, however many sites);
 *   - the connections beyond max_conns whose peers sent the fewest bytes (one that never
 *     spoke first; the newest among equals), so that descriptors stay for the checkpoint,
 *     status and log files, and honest sites that exchange data keep theirs;
 *   - every connection of a site key but its newest, once the newest has delivered a message
 *     (the coordinator tells the guard which connection each message came from:
 *     moeh_connguard_note), so that one key holds one connection;
 *   - a connection with more than msg_bytes sent and not read: the bytes the kernel says its
 *     peer sent, less those of the messages the coordinator read from it (moeh_connguard_note
 *     with each message's size), counted afresh whenever the coordinator has read every
 *     message there was (moeh_connguard_drained). That is what libzmq holds for it: a message
 *     in transit, which libzmq holds whole before the coordinator sees any of it, and the
 *     complete messages queued behind. An honest site has at most its largest whole message
 *     and a window of upload chunks in transit (moeh_stream.h,
 *     moeh_stream_max_unstreamed_bytes); a peer that floods chunks past its credit, or one
 *     large multipart message, is over it within a scan;
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
    uint64_t total_bytes; /* all connections' bytes sent and not read; 0: no bound */
    uint32_t interval_ms; /* between two scans (>= 10) */
    uint32_t idle_ms;     /* a connection without a message for this long goes; 0: never */
    uint64_t msg_bytes;   /* most bytes sent and not read (in transit); 0: no bound */
} moeh_connguard_cfg_t;

/* Inbound bytes within idle_ms that keep a connection without messages alive (a message in
 * transit); a ZeroMQ heartbeat answer is under 100 bytes. */
#define MOEH_CONNGUARD_ACTIVE_BYTES (16u << 10)
/* Framing per ZeroMQ part counted on top of its payload (CURVE's MESSAGE command: 33 bytes, and
 * ZMTP's frame header: up to 9); an over-count only delays the unread rule until the next
 * fresh count. */
#define MOEH_CONNGUARD_PART_OVERHEAD 64u
/* Longest site key the guard tells apart (longer ones are compared on this prefix). */
#define MOEH_CONNGUARD_KEY_MAX 64u

typedef struct {
    uint32_t conns;       /* accepted connections at the last scan */
    uint32_t most_conns;  /* most at any scan */
    uint64_t shut_cap;    /* connections shut down: over max_conns */
    uint64_t shut_budget; /* ... over their own budget */
    uint64_t shut_total;  /* ... holding the most while all held over total_bytes */
    uint64_t shut_dup;    /* ... replaced by a newer connection of the same key */
    uint64_t shut_idle;   /* ... without a message for idle_ms */
    uint64_t shut_msg;    /* ... over msg_bytes sent and not read */
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
/* Sets msg_bytes (0: no bound), e.g. once the model, and so the largest message, is known. */
void moeh_connguard_set_msg_bytes(moeh_connguard_t *g, uint64_t msg_bytes);
/* Scans if interval_ms passed since the last scan (now_ms on any monotonic clock); returns the
 * number of connections shut down by this call. Logs each shutdown (rate-limited). */
int moeh_connguard_tick(moeh_connguard_t *g, int64_t now_ms);
/* Tells the guard that the coordinator read a message of `bytes` bytes in `parts` parts (its
 * routing id aside) from connection fd (ZMQ_SRCFD; ignored if < 0) at now_ms. If it was
 * well-formed, key is the site key it came from ("": none, as without CURVE): the guard then
 * shuts down the key's other connections (those accepted earlier; logged) and returns how
 * many. key NULL: a message that could not be decoded, counted as read only. */
int moeh_connguard_note(moeh_connguard_t *g, int fd, const char *key, uint64_t bytes,
                        uint32_t parts, int64_t now_ms);
/* Tells the guard that the coordinator has just read every message there was (the ROUTER said
 * EAGAIN): the next scan counts each connection that was read from afresh, unless a message
 * is read (moeh_connguard_note) before it. */
void moeh_connguard_drained(moeh_connguard_t *g);
moeh_connguard_stats_t moeh_connguard_stats(const moeh_connguard_t *g);

#endif
