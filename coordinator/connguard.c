/* connguard.c - caps the coordinator's TCP connections and their inbound bytes from outside
 * libzmq (see moeh_connguard.h). */
#define _GNU_SOURCE
#include "moeh_connguard.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    int fd;
    struct sockaddr_storage peer; /* tells a reused descriptor from the connection it was */
    int64_t first_seen;
    uint64_t rx;         /* bytes the peer has sent (TCP_INFO) at the last scan */
    uint64_t delta;      /* ... since the scan before */
    double tokens;       /* its budget left */
    int shut;            /* shut down by us: libzmq closes it soon */
    int noted;           /* a message was noted for it in the scan that found it (pending) */
    int64_t last_msg;    /* when it last delivered a message (moeh_connguard_note); 0: never */
    int64_t last_active; /* when it last got MOEH_CONNGUARD_ACTIVE_BYTES further */
    uint64_t rx_mark;    /* rx at last_active */
    /* bytes libzmq holds for it, unread: rx - base - read (moeh_connguard_note) */
    uint64_t base; /* rx when the coordinator had last read all it had (a fresh count) */
    uint64_t read; /* bytes of the messages read since, with their framing */
    int msg_seen;  /* a message was read since base was set */
    char key[MOEH_CONNGUARD_KEY_MAX + 1]; /* the site key of its messages ("": none yet) */
} conn_t;

/* A message noted for a connection the last scan did not see (accepted since). */
typedef struct {
    int fd;
    struct sockaddr_storage peer;
    int64_t at;
    uint64_t read;
    char key[MOEH_CONNGUARD_KEY_MAX + 1];
} pending_t;

enum { N_PENDING = 64 }; /* more are dropped: the connection's next message notes it again */

struct moeh_connguard {
    moeh_connguard_cfg_t cfg;
    uint16_t port; /* network byte order */
    DIR *fds;      /* /proc/self/fd, opened once so that a scan needs no new descriptor */
    conn_t *conn, *next;
    size_t n, cap;
    int64_t last_scan, last_log;
    uint64_t unlogged;
    int drained; /* the socket had no message left, and none was read since (drained/note) */
    pending_t pend[N_PENDING];
    size_t n_pend;
    moeh_connguard_stats_t st;
};

int moeh_connguard_create(const moeh_connguard_cfg_t *cfg, const char *endpoint,
                          moeh_connguard_t **out, moeh_err_t *err)
{
    *out = NULL;
    const char *colon = endpoint ? strrchr(endpoint, ':') : NULL;
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!endpoint || strncmp(endpoint, "tcp://", 6) != 0 || !colon || !end || *end || port <= 0 ||
        port > 65535)
        return moeh_errf(err, -EINVAL, "connection guard: %s is not a bound tcp endpoint",
                         endpoint ? endpoint : "(none)");
    moeh_connguard_t *g = calloc(1, sizeof *g);
    if (!g) return moeh_errf(err, -ENOMEM, "out of memory");
    g->cfg = *cfg;
    if (g->cfg.interval_ms < 10) g->cfg.interval_ms = 10;
    g->port = htons((uint16_t)port);
    g->last_scan = g->last_log = INT64_MIN / 2;
    if (!(g->fds = opendir("/proc/self/fd"))) {
        int e = errno;
        free(g);
        return moeh_errf(err, -ENOTSUP, "connection guard: /proc/self/fd: %s", strerror(e));
    }
    *out = g;
    return 0;
}

void moeh_connguard_destroy(moeh_connguard_t **self_p)
{
    if (!self_p || !*self_p) return;
    moeh_connguard_t *g = *self_p;
    if (g->fds) closedir(g->fds);
    free(g->conn);
    free(g->next);
    free(g);
    *self_p = NULL;
}

void moeh_connguard_min_budget(moeh_connguard_t *g, uint64_t burst_bytes, uint64_t total_bytes)
{
    if (g->cfg.burst_bytes && burst_bytes > g->cfg.burst_bytes) g->cfg.burst_bytes = burst_bytes;
    if (g->cfg.total_bytes && total_bytes > g->cfg.total_bytes) g->cfg.total_bytes = total_bytes;
}

moeh_connguard_stats_t moeh_connguard_stats(const moeh_connguard_t *g)
{
    return g->st;
}

/* "ADDR:PORT" of a peer. */
static void peer_name(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    char a[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s->sin_addr, a, sizeof a);
        port = ntohs(s->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s->sin6_addr, a, sizeof a);
        port = ntohs(s->sin6_port);
    }
    snprintf(buf, cap, "%s:%u", a, port);
}

static int same_peer(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return 0;
    if (a->ss_family == AF_INET) return memcmp(a, b, sizeof(struct sockaddr_in)) == 0;
    return memcmp(a, b, sizeof(struct sockaddr_in6)) == 0;
}

/* 1 if fd is a TCP connection accepted on the guard's port (its peer in *peer). */
static int accepted_here(const moeh_connguard_t *g, int fd, struct sockaddr_storage *peer)
{
    struct sockaddr_storage me;
    socklen_t len = sizeof me;
    if (getsockname(fd, (struct sockaddr *)&me, &len) != 0) return 0; /* not a socket */
    uint16_t port = me.ss_family == AF_INET    ? ((struct sockaddr_in *)&me)->sin_port
                    : me.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&me)->sin6_port
                                               : 0;
    if (port != g->port) return 0;
    memset(peer, 0, sizeof *peer);
    len = sizeof *peer;
    return getpeername(fd, (struct sockaddr *)peer, &len) == 0; /* the listener has none */
}

/* Shuts c down if it is still the connection it was; says why (rate-limited: one line a
 * second, the rest counted). */
static int shut(moeh_connguard_t *g, conn_t *c, int64_t now, const char *why)
{
    struct sockaddr_storage p;
    if (c->shut || !accepted_here(g, c->fd, &p) || !same_peer(&p, &c->peer)) return 0;
    if (shutdown(c->fd, SHUT_RDWR) != 0) return 0;
    c->shut = 1;
    if (now - g->last_log >= 1000) {
        char name[INET6_ADDRSTRLEN + 8];
        peer_name(&c->peer, name, sizeof name);
        MOEH_WARN("connection from %s shut down: %s (%llu bytes in the last %u ms; %u "
                  "connections)%s",
                  name, why, (unsigned long long)c->delta, g->cfg.interval_ms, g->st.conns,
                  g->unlogged ? "; more shut down since the last such line" : "");
        g->last_log = now;
        g->unlogged = 0;
    } else {
        g->unlogged++;
    }
    return 1;
}

/* The previous scan's entry for fd in g->conn (sorted by fd), or NULL. */
static conn_t *previous(const moeh_connguard_t *g, int fd)
{
    size_t lo = 0, hi = g->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g->conn[mid].fd < fd)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < g->n && g->conn[lo].fd == fd ? &g->conn[lo] : NULL;
}

/* The order in which connections over the cap go: those whose peers sent the fewest bytes (a
 * TCP connection that never spoke, then idle ones), the newest first among equals. */
static int quietest_first(const void *a, const void *b)
{
    const conn_t *x = *(const conn_t *const *)a, *y = *(const conn_t *const *)b;
    if (x->rx != y->rx) return x->rx < y->rx ? -1 : 1;
    if (x->first_seen != y->first_seen) return x->first_seen > y->first_seen ? -1 : 1;
    return x->fd > y->fd ? -1 : x->fd < y->fd;
}

/* Bytes c's peer sent that the coordinator has not read: what libzmq holds for it. */
static uint64_t unread(const conn_t *c)
{
    return c->rx - c->base > c->read ? c->rx - c->base - c->read : 0;
}

static int by_fd(const void *a, const void *b)
{
    const conn_t *x = a, *y = b;
    return (x->fd > y->fd) - (x->fd < y->fd);
}

/* Keeps the newest of c's key's connections (accepted last; c among equals) and shuts the
 * others down. Returns how many. */
static int one_per_key(moeh_connguard_t *g, conn_t *c, int64_t now)
{
    if (!c->key[0]) return 0;
    char why[MOEH_CONNGUARD_KEY_MAX + 64];
    snprintf(why, sizeof why, "replaced by a newer connection of site key '%s'", c->key);
    int n = 0;
    for (size_t i = 0; i < g->n && !c->shut; i++) {
        conn_t *o = &g->conn[i];
        if (o == c || o->shut || strcmp(o->key, c->key) != 0) continue;
        conn_t *old = o->first_seen > c->first_seen ? c : o; /* c's message was a leftover */
        if (shut(g, old, now, why)) {
            g->st.shut_dup++;
            n++;
        }
        old->shut = 1;
    }
    return n;
}

void moeh_connguard_set_msg_bytes(moeh_connguard_t *g, uint64_t msg_bytes)
{
    g->cfg.msg_bytes = msg_bytes;
}

void moeh_connguard_drained(moeh_connguard_t *g)
{
    g->drained = 1;
}

int moeh_connguard_note(moeh_connguard_t *g, int fd, const char *key, uint64_t bytes,
                        uint32_t parts, int64_t now)
{
    struct sockaddr_storage p;
    g->drained = 0; /* a message read since the socket was found empty: maybe more behind it */
    if (fd < 0 || !accepted_here(g, fd, &p)) return 0;
    /* what it took on the wire: the payload and, per part, ZMTP's and CURVE's framing */
    const uint64_t wire = bytes + (uint64_t)parts * MOEH_CONNGUARD_PART_OVERHEAD;
    conn_t *c = previous(g, fd);
    if (c && same_peer(&c->peer, &p)) {
        c->read += wire;
        c->msg_seen = 1;
        if (!key) return 0; /* not a well-formed message: its bytes only */
        c->last_msg = now;
        if (key[0]) snprintf(c->key, sizeof c->key, "%s", key);
        return one_per_key(g, c, now);
    }
    /* accepted since the last scan: that scan applies it; it is the newest of its key */
    size_t k = 0;
    while (k < g->n_pend && g->pend[k].fd != fd)
        k++;
    if (k == N_PENDING) return 0;
    pending_t *q = &g->pend[k];
    if (k == g->n_pend) {
        g->n_pend++;
        memset(q, 0, sizeof *q);
    }
    q->fd = fd;
    q->peer = p;
    q->read += wire;
    if (!key) return 0;
    q->at = now;
    snprintf(q->key, sizeof q->key, "%s", key);
    int n = 0;
    for (size_t i = 0; q->key[0] && i < g->n; i++) {
        conn_t *o = &g->conn[i];
        if (!o->shut && strcmp(o->key, q->key) == 0 &&
            shut(g, o, now, "replaced by a newer connection of the same site key")) {
            g->st.shut_dup++;
            n++;
        }
    }
    return n;
}

int moeh_connguard_tick(moeh_connguard_t *g, int64_t now)
{
    if (now - g->last_scan < (int64_t)g->cfg.interval_ms) return 0;
    double dt = g->last_scan < 0 ? 0 : (double)(now - g->last_scan) / 1000.0;
    /* a scan that comes late means the loop was busy (aggregation, a checkpoint): messages
     * waited in libzmq's queue unnoted, so that time does not count as idle */
    int64_t late = g->last_scan < 0 ? 0 : now - g->last_scan - 2 * (int64_t)g->cfg.interval_ms;
    for (size_t i = 0; late > 0 && i < g->n; i++) {
        if (g->conn[i].last_msg) g->conn[i].last_msg += late;
        g->conn[i].last_active += late;
    }
    g->last_scan = now;
    size_t n = 0;
    int self = dirfd(g->fds), n_shut = 0;
    rewinddir(g->fds);
    struct dirent *de;
    while ((de = readdir(g->fds)) != NULL) {
        char *end;
        long fd = strtol(de->d_name, &end, 10);
        if (*end || end == de->d_name || fd == self) continue;
        struct sockaddr_storage peer;
        if (!accepted_here(g, (int)fd, &peer)) continue;
        struct tcp_info ti;
        socklen_t tl = sizeof ti;
        memset(&ti, 0, sizeof ti);
        if (getsockopt((int)fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) != 0) continue;
        if (n == g->cap) {
            size_t cap = g->cap ? 2 * g->cap : 64;
            conn_t *a = realloc(g->next, cap * sizeof *a), *b;
            if (!a) break; /* keep what we have: the next scan tries again */
            g->next = a;
            if (!(b = realloc(g->conn, cap * sizeof *b))) break;
            g->conn = b;
            g->cap = cap;
        }
        conn_t *c = &g->next[n++];
        const conn_t *was = previous(g, (int)fd);
        uint64_t rx = ti.tcpi_bytes_received;
        if (was && same_peer(&was->peer, &peer) && rx >= was->rx) {
            *c = *was;
            c->delta = rx - was->rx;
            c->tokens += dt * (double)g->cfg.burst_bytes / 8.0;
            if (c->tokens > (double)g->cfg.burst_bytes) c->tokens = (double)g->cfg.burst_bytes;
        } else { /* a new connection (or a reused descriptor) */
            *c = (conn_t){.fd = (int)fd,
                          .peer = peer,
                          .first_seen = now,
                          .delta = rx,
                          .tokens = (double)g->cfg.burst_bytes,
                          .last_active = now,
                          .rx_mark = rx};
            for (size_t k = 0; k < g->n_pend; k++)
                if (g->pend[k].fd == (int)fd && same_peer(&g->pend[k].peer, &peer)) {
                    c->last_msg = g->pend[k].at;
                    memcpy(c->key, g->pend[k].key, sizeof c->key);
                    c->noted = g->pend[k].at != 0;
                    c->read = g->pend[k].read;
                    c->msg_seen = 1;
                }
        }
        c->rx = rx;
        /* the coordinator has just read every message there was: what this peer sent up to
         * now is read or still in transit (one message at most), so count afresh from here;
         * only if it was read from (a message of a peer that sends nothing else never ends) */
        if (g->drained && c->msg_seen) {
            c->base = rx;
            c->read = 0;
            c->msg_seen = 0;
        }
        if (rx - c->rx_mark >= MOEH_CONNGUARD_ACTIVE_BYTES) { /* a message in transit */
            c->last_active = now;
            c->rx_mark = rx;
        }
        c->tokens -= (double)c->delta;
        if (c->delta > g->st.max_conn_rx) g->st.max_conn_rx = c->delta;
    }
    g->drained = 0;
    if (n > 1) /* procfs lists in order; keep it certain (and g->next is NULL before the first) */
        qsort(g->next, n, sizeof *g->next, by_fd);
    conn_t *t = g->conn;
    g->conn = g->next;
    g->next = t;
    g->n = n;
    g->n_pend = 0;
    for (size_t i = 0; i < n; i++) /* keys first seen on connections accepted since */
        if (g->conn[i].noted) {
            g->conn[i].noted = 0;
            n_shut += one_per_key(g, &g->conn[i], now);
        }
    uint32_t live = 0;
    for (size_t i = 0; i < n; i++)
        live += !g->conn[i].shut;
    g->st.conns = live;
    if (live > g->st.most_conns) g->st.most_conns = live;
    /* one connection over its own budget */
    for (size_t i = 0; g->cfg.burst_bytes && i < n; i++)
        if (g->conn[i].tokens < 0 && shut(g, &g->conn[i], now, "over its inbound byte budget")) {
            g->st.shut_budget++;
            n_shut++;
        }
    /* more than one message's worth without a message: libzmq holds it all until the last part */
    for (size_t i = 0; g->cfg.msg_bytes && i < n; i++) {
        conn_t *c = &g->conn[i];
        uint64_t held = unread(c);
        if (c->shut || held <= g->cfg.msg_bytes) continue;
        char why[200];
        snprintf(why, sizeof why,
                 "%llu bytes sent and not read: more than one message in transit (at most %llu)",
                 (unsigned long long)held, (unsigned long long)g->cfg.msg_bytes);
        if (shut(g, c, now, why)) {
            g->st.shut_msg++;
            n_shut++;
        }
    }
    /* all together holding more than total_bytes sent and not read (what libzmq buffers for
     * all of them): the connection holding the most goes first. This bounds memory, not rate:
     * a common rate budget shut honest sites down at 100 of them (issue 14), whose uploads
     * together arrive faster than any one peer may send but are read as they come. */
    if (g->cfg.total_bytes) {
        uint64_t held = 0;
        for (size_t i = 0; i < n; i++)
            if (!g->conn[i].shut) held += unread(&g->conn[i]);
        while (held > g->cfg.total_bytes) {
            conn_t *big = NULL;
            for (size_t i = 0; i < n; i++)
                if (!g->conn[i].shut && unread(&g->conn[i]) &&
                    (!big || unread(&g->conn[i]) > unread(big)))
                    big = &g->conn[i];
            if (!big) break;
            char why[200];
            snprintf(why, sizeof why,
                     "all connections together hold %llu bytes sent and not read (at most %llu); "
                     "this one the most, %llu",
                     (unsigned long long)held, (unsigned long long)g->cfg.total_bytes,
                     (unsigned long long)unread(big));
            if (shut(g, big, now, why)) {
                g->st.shut_total++;
                n_shut++;
            }
            big->shut = 1; /* (also if it had just gone): its bytes leave with it */
            held -= unread(big);
        }
    }
    /* no message for idle_ms, and too few bytes for one in transit */
    for (size_t i = 0; g->cfg.idle_ms && i < n; i++) {
        conn_t *c = &g->conn[i];
        int64_t since = c->last_msg > c->last_active ? c->last_msg : c->last_active;
        if (c->shut || now - since <= (int64_t)g->cfg.idle_ms) continue;
        char why[96];
        snprintf(why, sizeof why, "no message for %.1f s%s", (double)(now - since) / 1000.0,
                 c->last_msg ? "" : " since it connected");
        if (shut(g, c, now, why)) {
            g->st.shut_idle++;
            n_shut++;
        }
    }
    /* too many connections: the quietest go */
    live = 0;
    for (size_t i = 0; i < n; i++)
        live += !g->conn[i].shut;
    if (g->cfg.max_conns && live > g->cfg.max_conns) {
        conn_t **order = malloc(n * sizeof *order);
        if (order) {
            size_t k = 0;
            for (size_t i = 0; i < n; i++)
                if (!g->conn[i].shut) order[k++] = &g->conn[i];
            qsort(order, k, sizeof *order, quietest_first);
            for (size_t i = 0; i < k && live > g->cfg.max_conns; i++)
                if (shut(g, order[i], now, "more connections than --max-connections")) {
                    g->st.shut_cap++;
                    n_shut++;
                    live--;
                }
            free(order);
        }
    }
    return n_shut;
}
