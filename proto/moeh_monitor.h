/* moeh_monitor.h - what happens to a socket's connections: the ZeroMQ socket monitor (an inproc
 * PAIR fed by zmq_socket_monitor), its events decoded and classified for key diagnosis
 * (issue 12 item 5), a probe that tells what listens at a tcp:// endpoint, and a bounded,
 * rate-limited tally of failed handshakes per peer address for a server's log.
 *
 * Who sees what (libzmq 4.3):
 *   - a CURVE server gets HANDSHAKE_FAILED_PROTOCOL (CRYPTOGRAPHIC) from a client that boxed
 *     its Hello for another key, and (MECHANISM_MISMATCH) from a plain ZeroMQ client; a non-ZMTP
 *     peer is only accepted and disconnected. The event's address is the server's own bound
 *     endpoint, so the peer's address comes from the ACCEPTED event's descriptor (getpeername),
 *     matched to the DISCONNECTED event of the same descriptor;
 *   - a CURVE client whose server cannot open its Hello is disconnected without a word (the
 *     same as a non-ZMTP peer that hangs up), so moeh_monitor_probe() asks the peer what it is.
 * One thread owns a monitor, like the socket it watches. */
#ifndef MOEH_MONITOR_H
#define MOEH_MONITOR_H

#include "moeh_common.h"

#include <stdint.h>

typedef enum {
    MOEH_MON_OTHER = 0,     /* an event nobody here acts on */
    MOEH_MON_CONNECTED,     /* client: the TCP connection is up, the handshake starts */
    MOEH_MON_ACCEPTED,      /* server: a connection was accepted (fd, peer) */
    MOEH_MON_HANDSHAKE_OK,  /* the ZMTP/CURVE handshake succeeded */
    MOEH_MON_AUTH_REFUSED,  /* ZAP refused the peer's key (value: the ZAP status code) */
    MOEH_MON_AUTH_LATER,    /* ZAP said "try later" (500: too many handshakes, moeh_keys.h) */
    MOEH_MON_WRONG_KEY,     /* a CURVE box did not open: the client used another server key */
    MOEH_MON_NOT_CURVE,     /* the peer speaks ZMTP with another security mechanism */
    MOEH_MON_PROTOCOL,      /* another ZMTP protocol error (value: ZMQ_PROTOCOL_ERROR_*) */
    MOEH_MON_HANDSHAKE_ERR, /* the handshake failed at the socket level (value: errno) */
    MOEH_MON_DISCONNECTED   /* a connection closed (fd) */
} moeh_mon_kind_t;

typedef struct {
    moeh_mon_kind_t kind;
    uint16_t event; /* ZMQ_EVENT_* */
    uint32_t value; /* the event's value: a descriptor, an errno or a protocol error code */
    int fd;         /* ACCEPTED, CONNECTED, DISCONNECTED: the connection's descriptor; else -1 */
    char endpoint[256]; /* the event's address (a server's is its own bound endpoint) */
    char peer[64];      /* ACCEPTED: "tcp://IP:PORT" of the peer, or "" if it was already gone */
} moeh_mon_event_t;

typedef struct moeh_monitor moeh_monitor_t;

/* Starts monitoring `sock` (created in context zctx) for the ZMQ_EVENT_* bits in `events`.
 * 0 or a negative errno with err set. Caller owns *out: moeh_monitor_stop(&m) before closing
 * sock. */
int moeh_monitor_start(void *zctx, void *sock, int events, moeh_monitor_t **out,
                       moeh_err_t *err) MOEH_WUR;
/* Stops monitoring and closes the PAIR socket. NULL-safe; sets *self_p = NULL. */
void moeh_monitor_stop(moeh_monitor_t **self_p);
/* The PAIR socket, to wait on with zmq_poll (ZMQ_POLLIN). */
void *moeh_monitor_socket(const moeh_monitor_t *m);
/* Reads one event without waiting: 1 (ev filled), 0 (none waiting), or a negative errno. */
int moeh_monitor_next(moeh_monitor_t *m, moeh_mon_event_t *ev) MOEH_WUR;
/* Decodes one raw monitor event (the first frame: 2-byte event, 4-byte value; the second: the
 * address) into ev; peer is left empty. For tests of the classification. */
void moeh_monitor_decode(const void *frame1, size_t len1, const char *addr, size_t addr_len,
                         moeh_mon_event_t *ev);

/* What listens at an endpoint (moeh_monitor_probe). */
typedef enum {
    MOEH_PROBE_CURVE = 0,   /* a ZeroMQ peer offering CURVE */
    MOEH_PROBE_OTHER_MECH,  /* a ZeroMQ peer with another mechanism (NULL, PLAIN): no CURVE */
    MOEH_PROBE_NOT_ZMTP,    /* it answered bytes that are not a ZMTP 3 greeting */
    MOEH_PROBE_SILENT,      /* it accepted the connection and sent no byte before the timeout:
                             * not a ZeroMQ peer, which sends its greeting as soon as it accepts
                             * (unless the process is frozen or starved) */
    MOEH_PROBE_CUT_SHORT,   /* a ZMTP signature, then silence: a stalled ZeroMQ peer */
    MOEH_PROBE_HUNG_UP,     /* it accepted the connection and closed it without a byte */
    MOEH_PROBE_UNREACHABLE, /* no connection (refused, no route, no such host) */
    MOEH_PROBE_UNSUPPORTED  /* not a tcp:// endpoint: nothing probed */
} moeh_probe_t;

/* Connects to a tcp://HOST:PORT endpoint, sends a ZMTP 3.0 greeting as a CURVE client and
 * reads the peer's greeting, within timeout_ms overall (it blocks that long at most). Returns
 * the verdict; what (cap bytes) gets a short description: the mechanism the peer offered, the
 * first bytes it sent (printable), how long it stayed silent, or the connection error. */
moeh_probe_t moeh_monitor_probe(const char *endpoint, int timeout_ms, char *what, size_t cap);

/* A server's log of failed handshakes, per peer IP and kind of failure (wrong key, not CURVE,
 * other), bounded: at most MOEH_HSLOG_CAP entries, the least recently seen evicted. The first
 * failure of an (IP, kind) gives a log line at once; later ones are counted and summed up in
 * at most one line per entry per window. */
#define MOEH_HSLOG_CAP 256

typedef struct {
    char ip[48];      /* "10.0.0.5" or "unknown" */
    char peer[64];    /* the last failed connection's tcp://IP:PORT */
    int kind;         /* moeh_mon_kind_t of the failure */
    uint32_t pending; /* failures since the last line */
    int64_t last_line, last_seen;
} moeh_hslog_entry_t;

typedef struct {
    moeh_hslog_entry_t e[MOEH_HSLOG_CAP];
    size_t n;
    int64_t window_ms; /* at most one summary per entry per window (60000 by default) */
    uint64_t evicted;  /* entries dropped to make room */
    /* the server's descriptors between ACCEPTED and DISCONNECTED: fd -> peer */
    struct {
        int fd;
        char peer[64];
    } conn[1024];
    size_t conn_next;
    int pending_kind; /* a handshake failure waiting for its DISCONNECTED (0: none) */
} moeh_hslog_t;

/* window_ms 0: 60000. */
void moeh_hslog_init(moeh_hslog_t *t, int64_t window_ms);
/* Feeds one monitor event of a server socket at time now (ms). Returns 1 and writes a line to
 * log (cap bytes) when the event completes a failed handshake that is to be logged now; else 0.
 */
int moeh_hslog_event(moeh_hslog_t *t, const moeh_mon_event_t *ev, int64_t now, char *line,
                     size_t cap);
/* Records one failed handshake of `kind` from `peer` ("tcp://IP:PORT", or "" if unknown).
 * Returns 1 with a line to log now, else 0. */
int moeh_hslog_note(moeh_hslog_t *t, const char *peer, int kind, int64_t now, char *line,
                    size_t cap);
/* Call now and then: returns 1 with one summary line for an entry whose window has passed with
 * failures pending (call again until it returns 0), else 0. */
int moeh_hslog_flush(moeh_hslog_t *t, int64_t now, char *line, size_t cap);

#endif
