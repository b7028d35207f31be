/* monitor.c - the socket monitor, its events classified, the endpoint probe and the server's
 * rate-limited log of failed handshakes (see moeh_monitor.h). */
#include "moeh_monitor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

struct moeh_monitor {
    void *sock; /* the watched socket (not owned) */
    void *pair; /* the PAIR end that receives its events */
};

int moeh_monitor_start(void *zctx, void *sock, int events, moeh_monitor_t **out, moeh_err_t *err)
{
    *out = NULL;
    moeh_monitor_t *m = calloc(1, sizeof *m);
    if (!m) return moeh_errf(err, -ENOMEM, "socket monitor: out of memory");
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char ep[96]; /* unique in the context: an endpoint can linger after its monitor stopped */
    snprintf(ep, sizeof ep, "inproc://moeh-monitor-%p-%lld-%ld", (void *)m, (long long)ts.tv_sec,
             ts.tv_nsec);
    int linger = 0;
    if (zmq_socket_monitor(sock, ep, events) != 0) {
        int rc = -zmq_errno();
        free(m);
        return moeh_errf(err, rc, "socket monitor: %s", zmq_strerror(-rc));
    }
    m->sock = sock;
    if (!(m->pair = zmq_socket(zctx, ZMQ_PAIR)) ||
        zmq_setsockopt(m->pair, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(m->pair, ep) != 0) {
        int rc = -zmq_errno();
        moeh_monitor_stop(&m);
        return moeh_errf(err, rc, "socket monitor: %s", zmq_strerror(-rc));
    }
    *out = m;
    return 0;
}

void moeh_monitor_stop(moeh_monitor_t **self_p)
{
    moeh_monitor_t *m = *self_p;
    if (!m) return;
    if (zmq_socket_monitor(m->sock, NULL, 0) != 0)
        MOEH_DEBUG("stopping the socket monitor: %s", zmq_strerror(zmq_errno()));
    if (m->pair) MOEH_ASSERT(zmq_close(m->pair) == 0); /* fails only for a bad handle */
    free(m);
    *self_p = NULL;
}

void *moeh_monitor_socket(const moeh_monitor_t *m)
{
    return m->pair;
}

void moeh_monitor_decode(const void *frame1, size_t len1, const char *addr, size_t addr_len,
                         moeh_mon_event_t *ev)
{
    memset(ev, 0, sizeof *ev);
    ev->fd = -1;
    if (len1 >= 6) {
        memcpy(&ev->event, frame1, 2);
        memcpy(&ev->value, (const char *)frame1 + 2, 4);
    }
    if (addr_len >= sizeof ev->endpoint) addr_len = sizeof ev->endpoint - 1;
    if (addr) memcpy(ev->endpoint, addr, addr_len);
    switch (ev->event) {
    case ZMQ_EVENT_CONNECTED:
        ev->kind = MOEH_MON_CONNECTED, ev->fd = (int)ev->value;
        break;
    case ZMQ_EVENT_ACCEPTED:
        ev->kind = MOEH_MON_ACCEPTED, ev->fd = (int)ev->value;
        break;
    case ZMQ_EVENT_DISCONNECTED:
        ev->kind = MOEH_MON_DISCONNECTED, ev->fd = (int)ev->value;
        break;
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        ev->kind = MOEH_MON_HANDSHAKE_OK;
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: /* value: the ZAP status code (RFC 27) */
        ev->kind = ev->value == 500 ? MOEH_MON_AUTH_LATER : MOEH_MON_AUTH_REFUSED;
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        ev->kind = MOEH_MON_HANDSHAKE_ERR;
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        ev->kind = ev->value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC        ? MOEH_MON_WRONG_KEY
                   : ev->value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH ? MOEH_MON_NOT_CURVE
                                                                             : MOEH_MON_PROTOCOL;
        break;
    default:
        ev->kind = MOEH_MON_OTHER;
    }
}

/* "tcp://IP:PORT" of the peer of descriptor fd, or "" when it is gone. */
static void peer_of(int fd, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "";
    out[0] = '\0';
    if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &len) != 0) return;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        snprintf(out, cap, "tcp://%s:%u", ip, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        snprintf(out, cap, "tcp://[%s]:%u", ip, ntohs(a->sin6_port));
    }
}

int moeh_monitor_next(moeh_monitor_t *m, moeh_mon_event_t *ev)
{
    zmq_msg_t f1, f2;
    MOEH_ASSERT(zmq_msg_init(&f1) == 0); /* cannot fail: no allocation */
    if (zmq_msg_recv(&f1, m->pair, ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        MOEH_ASSERT(zmq_msg_close(&f1) == 0);
        return e == EAGAIN || e == EINTR ? 0 : -e;
    }
    int more = zmq_msg_more(&f1);
    MOEH_ASSERT(zmq_msg_init(&f2) == 0);
    if (more && zmq_msg_recv(&f2, m->pair, 0) < 0) /* the address: part of the same event */
        MOEH_DEBUG("socket monitor: %s", zmq_strerror(zmq_errno()));
    moeh_monitor_decode(zmq_msg_data(&f1), zmq_msg_size(&f1), zmq_msg_data(&f2), zmq_msg_size(&f2),
                        ev);
    MOEH_ASSERT(zmq_msg_close(&f1) == 0 && zmq_msg_close(&f2) == 0);
    /* as early as the event is read: a connection that fails its handshake is closed soon */
    if (ev->kind == MOEH_MON_ACCEPTED) peer_of(ev->fd, ev->peer, sizeof ev->peer);
    return 1;
}

/* ---- the probe --------------------------------------------------------------------------- */

/* Splits tcp://HOST:PORT (HOST may be [v6]) into host and port. 0 or -EINVAL. */
static int split_tcp(const char *ep, char *host, size_t hcap, char *port, size_t pcap)
{
    if (strncmp(ep, "tcp://", 6) != 0) return -EINVAL;
    const char *h = ep + 6, *semi = strchr(h, ';'); /* "src;dst": the destination */
    if (semi) h = semi + 1;
    const char *colon = strrchr(h, ':');
    if (!colon || !colon[1]) return -EINVAL;
    size_t hl = (size_t)(colon - h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') h++, hl -= 2;
    if (hl == 0 || hl >= hcap || strlen(colon + 1) >= pcap) return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    snprintf(port, pcap, "%s", colon + 1);
    return 0;
}

/* Connects fd to one of the addresses within the time left; 0 or -errno. */
static int connect_within(int fd, const struct addrinfo *ai, int64_t deadline)
{
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return 0;
    if (errno != EINPROGRESS) return -errno;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int64_t left = deadline - moeh_now_ms();
    if (left <= 0 || poll(&p, 1, (int)left) <= 0) return -ETIMEDOUT;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) return -errno;
    return -soerr;
}

/* The first bytes, printable (others as \xNN), for a message. */
static void printable(const unsigned char *b, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && i < 24 && o + 5 < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, b[i] >= 0x20 && b[i] < 0x7f ? "%c" : "\\x%02x",
                              b[i]);
    out[o < cap ? o : cap - 1] = '\0';
}

moeh_probe_t moeh_monitor_probe(const char *endpoint, int timeout_ms, char *what, size_t cap)
{
    char host[256], port[16];
    what[0] = '\0';
    if (split_tcp(endpoint, host, sizeof host, port, sizeof port) != 0) {
        snprintf(what, cap, "not a tcp:// endpoint");
        return MOEH_PROBE_UNSUPPORTED;
    }
    int64_t t0 = moeh_now_ms(), deadline = t0 + timeout_ms;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        snprintf(what, cap, "%s: %s", host, gai_strerror(gai));
        return MOEH_PROBE_UNREACHABLE;
    }
    int fd = -1, rc = -EHOSTUNREACH;
    for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        if ((rc = connect_within(fd, ai, deadline)) != 0) close(fd), fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(what, cap, "%s", strerror(-rc));
        return MOEH_PROBE_UNREACHABLE;
    }
    /* ZMTP 3.0 greeting of a CURVE client: signature, version, mechanism, as-server, filler.
     * First the signature and the major version only: a ZeroMQ peer answers them with its whole
     * greeting, while all 64 bytes would let it refuse our mechanism and reset the connection
     * before we read its own. A peer silent for half the time gets the rest, and an empty line
     * (an HTTP server answers that). */
    unsigned char g[68] = {0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0};
    memcpy(g + 12, "CURVE", 5);
    memcpy(g + 64, "\r\n\r\n", 4);
    ssize_t w = send(fd, g, 11, MSG_NOSIGNAL);
    int64_t half = moeh_now_ms() + timeout_ms / 2;
    int more_sent = 0;
    unsigned char b[64];
    size_t n = 0;
    int eof = w < 0;
    while (n < sizeof b && !eof) {
        if (n >= 12 && (b[0] != 0xff || !(b[9] & 1))) break; /* not ZMTP: enough seen */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int64_t now = moeh_now_ms(), until = n == 0 && !more_sent ? half : deadline;
        if (now >= until && until == half) { /* silent so far: the rest, then wait again */
            more_sent = 1;
            w = send(fd, g + 11, sizeof g - 11, MSG_NOSIGNAL);
            (void)w; /* a peer that hung up is seen by recv */
            continue;
        }
        if (now >= until || poll(&p, 1, (int)(until - now)) < 0) break;
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t r = recv(fd, b + n, sizeof b - n, 0);
        if (r > 0)
            n += (size_t)r;
        else if (r == 0 || (errno != EAGAIN && errno != EINTR))
            eof = 1;
    }
    close(fd);
    if (n == 0 && !eof) { /* libzmq greets on accept: this is no ZeroMQ peer (or a frozen one) */
        snprintf(what, cap, "no byte in %.1f s", (double)(moeh_now_ms() - t0) / 1e3);
        return MOEH_PROBE_SILENT;
    }
    if (n == 0) return MOEH_PROBE_HUNG_UP;
    if (b[0] != 0xff || (n >= 10 && !(b[9] & 1))) {
        printable(b, n, what, cap);
        return MOEH_PROBE_NOT_ZMTP;
    }
    if (n < 32) { /* a ZMTP signature and no mechanism (yet): an old or stalled peer */
        snprintf(what, cap, "a ZMTP greeting cut short after %zu bytes", n);
        return n >= 11 && b[10] < 3 ? MOEH_PROBE_OTHER_MECH : MOEH_PROBE_CUT_SHORT;
    }
    char mech[21];
    memcpy(mech, b + 12, 20);
    mech[20] = '\0';
    snprintf(what, cap, "%s", mech[0] ? mech : "(none)");
    return strcmp(mech, "CURVE") == 0 ? MOEH_PROBE_CURVE : MOEH_PROBE_OTHER_MECH;
}

/* ---- the server's log of failed handshakes ------------------------------------------------ */

void moeh_hslog_init(moeh_hslog_t *t, int64_t window_ms)
{
    memset(t, 0, sizeof *t);
    t->window_ms = window_ms > 0 ? window_ms : 60000;
    for (size_t i = 0; i < sizeof t->conn / sizeof t->conn[0]; i++)
        t->conn[i].fd = -1;
}

static const char *why(int kind)
{
    switch (kind) {
    case MOEH_MON_WRONG_KEY:
        return "a site with the wrong coordinator key: its Hello is boxed for another public key";
    case MOEH_MON_NOT_CURVE:
        return "not a CURVE client: a ZeroMQ peer without encryption, or a site with --insecure";
    case MOEH_MON_HANDSHAKE_ERR:
        return "the connection failed during the handshake";
    default:
        return "a ZMTP protocol error";
    }
}

/* The IP of "tcp://IP:PORT" or "tcp://[IP]:PORT"; "unknown" for "". */
static void ip_of(const char *peer, char *ip, size_t cap)
{
    const char *h = strncmp(peer, "tcp://", 6) == 0 ? peer + 6 : peer;
    const char *colon = strrchr(h, ':');
    size_t n = colon ? (size_t)(colon - h) : strlen(h);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') h++, n -= 2;
    if (n == 0) {
        snprintf(ip, cap, "unknown");
        return;
    }
    if (n >= cap) n = cap - 1;
    memcpy(ip, h, n);
    ip[n] = '\0';
}

static void summary(moeh_hslog_entry_t *e, int64_t now, char *line, size_t cap)
{
    snprintf(line, cap, "%s: %u CURVE handshake%s failed in the last %lld s (%s)",
             e->peer[0] ? e->peer : "an unknown address", e->pending, e->pending == 1 ? "" : "s",
             (long long)((now - e->last_line + 500) / 1000), why(e->kind));
    e->pending = 0;
    e->last_line = now;
}

int moeh_hslog_note(moeh_hslog_t *t, const char *peer, int kind, int64_t now, char *line,
                    size_t cap)
{
    char ip[48];
    ip_of(peer, ip, sizeof ip);
    moeh_hslog_entry_t *e = NULL;
    for (size_t i = 0; i < t->n && !e; i++)
        if (t->e[i].kind == kind && strcmp(t->e[i].ip, ip) == 0) e = &t->e[i];
    int fresh = !e || (e->pending == 0 && now - e->last_seen >= t->window_ms);
    if (!e) {
        if (t->n < MOEH_HSLOG_CAP) {
            e = &t->e[t->n++];
        } else { /* full: the least recently seen makes room */
            e = &t->e[0];
            for (size_t i = 1; i < t->n; i++)
                if (t->e[i].last_seen < e->last_seen) e = &t->e[i];
            t->evicted++;
        }
        memset(e, 0, sizeof *e);
        snprintf(e->ip, sizeof e->ip, "%s", ip);
        e->kind = kind;
    }
    snprintf(e->peer, sizeof e->peer, "%s", peer);
    e->last_seen = now;
    if (fresh) {
        e->pending = 0;
        e->last_line = now;
        snprintf(line, cap,
                 "%s: CURVE handshake failed (%s); further failures of this kind from %s are "
                 "counted and logged at most once per %lld s",
                 peer[0] ? peer : "an unknown address", why(kind),
                 peer[0] ? ip
                         : "unknown addresses (connections closed before their address "
                           "was read)",
                 (long long)(t->window_ms / 1000));
        return 1;
    }
    e->pending++;
    if (now - e->last_line < t->window_ms) return 0;
    summary(e, now, line, cap);
    return 1;
}

int moeh_hslog_flush(moeh_hslog_t *t, int64_t now, char *line, size_t cap)
{
    for (size_t i = 0; i < t->n; i++) {
        moeh_hslog_entry_t *e = &t->e[i];
        if (e->pending && now - e->last_line >= t->window_ms) {
            summary(e, now, line, cap);
            return 1;
        }
    }
    return 0;
}

int moeh_hslog_event(moeh_hslog_t *t, const moeh_mon_event_t *ev, int64_t now, char *line,
                     size_t cap)
{
    const size_t nconn = sizeof t->conn / sizeof t->conn[0];
    switch (ev->kind) {
    case MOEH_MON_ACCEPTED: /* a ring: the newest entry of a descriptor is its live connection */
        t->conn[t->conn_next].fd = ev->fd;
        snprintf(t->conn[t->conn_next].peer, sizeof t->conn[0].peer, "%s", ev->peer);
        t->conn_next = (t->conn_next + 1) % nconn;
        return 0;
    case MOEH_MON_WRONG_KEY:
    case MOEH_MON_NOT_CURVE:
    case MOEH_MON_PROTOCOL:
    case MOEH_MON_HANDSHAKE_ERR:
        /* the DISCONNECTED of the same connection follows at once (one I/O thread) */
        t->pending_kind = ev->kind;
        return 0;
    case MOEH_MON_DISCONNECTED: {
        const char *peer = "";
        for (size_t k = 1; k <= nconn; k++) {
            size_t i = (t->conn_next + nconn - k) % nconn;
            if (t->conn[i].fd == ev->fd) {
                peer = t->conn[i].peer;
                t->conn[i].fd = -1; /* closed: the number may be reused */
                break;
            }
        }
        int kind = t->pending_kind;
        t->pending_kind = 0;
        return kind ? moeh_hslog_note(t, peer, kind, now, line, cap) : 0;
    }
    default:
        return 0;
    }
}
