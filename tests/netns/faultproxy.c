/* faultproxy.c - moeh-faultproxy: a userspace TCP proxy that injects network faults.
 *
 * The kernel on the CI machine has no netem qdisc, so delay, bandwidth limits, resets and
 * partitions are emulated here, at the byte-stream level: the proxy listens on an address,
 * connects each accepted client to a target, and moves bytes in both directions ("up":
 * client -> target, "down": target -> client) through a bounded buffer per direction. Faults:
 *
 *   delay + jitter  every chunk read is stamped arrival + delay + U[-jitter, +jitter] and is not
 *                   written before that time; stamps are made monotone, so order is kept;
 *   rate cap        a token bucket per direction and connection (kbit/s);
 *   resets          each connection is reset (SO_LINGER 0 -> RST on both sides) N ms after it
 *                   was accepted;
 *   black hole      nothing is forwarded in either direction, connections stay open, bytes wait
 *                   in the buffers (and once those are full, in the kernel's); new connections
 *                   are accepted but not connected onwards until the black hole ends. Toggled by
 *                   SIGUSR1 (on) / SIGUSR2 (off) or by --blackhole-at-ms / --blackhole-for-ms.
 *
 * A side that fails (RST) has the bytes it sent before delivered, then the reset passed on.
 * Backpressure: a direction stops reading from its source when its buffer is full. One thread,
 * epoll, non-blocking sockets, a signalfd; SIGTERM/SIGINT/SIGHUP close everything and exit 0.
 * This is a test tool: it is built by tests/netns_tests.cmake and is not installed. */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FP_VERSION "moeh-faultproxy 1.0"
#define FP_CHUNKS 4096 /* chunk records per direction (one per read, merged when possible) */

/* The faults of one direction. */
typedef struct {
    int64_t delay_us, jitter_us;
    uint64_t rate_bps; /* bytes per second, 0: unlimited */
} fp_dir_cfg_t;

typedef struct {
    struct sockaddr_storage listen_addr, target_addr;
    socklen_t listen_len, target_len;
    fp_dir_cfg_t dir[2]; /* 0 up (client -> target), 1 down (target -> client) */
    int64_t reset_every_us, blackhole_at_us, blackhole_for_us;
    size_t buffer_bytes, max_conns;
    uint64_t seed;
    int ready_fd, verbose;
} fp_cfg_t;

typedef struct {
    int64_t release_us;
    size_t len;
} fp_chunk_t;

struct fp_conn;

/* One direction of a connection: bytes read from src wait in a ring until released to dst. */
typedef struct {
    int dir;
    uint8_t *buf;
    size_t cap, head, len; /* ring of bytes */
    fp_chunk_t ch[FP_CHUNKS];
    size_t ch_head, ch_n; /* ring of chunk records covering the bytes in order */
    int64_t last_release; /* release stamps are monotone: order is kept */
    double tokens;        /* token bucket, bytes */
    int64_t tokens_at;    /* time of the last refill */
    bool src_eof, dst_shut, dst_blocked;
    bool rst_after; /* the source was reset: pass the reset on once the bytes before it are out */
    uint64_t bytes_in, bytes_out;
} fp_pipe_t;

/* Which fd of which connection an epoll event is for. */
typedef struct {
    struct fp_conn *c;
    int side; /* 0 client, 1 target */
} fp_ref_t;

typedef struct fp_conn {
    uint64_t id;
    int fd[2];          /* client, target (-1: not yet connected onwards) */
    uint32_t ev[2];     /* the epoll mask registered for each fd */
    bool reg[2];        /* registered with epoll (an fd with nothing to wait for is not, so that
                           a hung-up idle socket cannot spin the loop) */
    fp_ref_t ref[2];    /* epoll data */
    bool connecting;    /* the target connect is in progress */
    bool target_opened; /* a connect to the target was started (never reconnect) */
    bool dead;
    int64_t accepted_at;
    fp_pipe_t pipe[2]; /* 0 up: fd[0] -> fd[1]; 1 down: fd[1] -> fd[0] */
    struct fp_conn *next;
} fp_conn_t;

typedef struct {
    fp_cfg_t cfg;
    int ep, lfd, sfd;
    fp_ref_t lref, sref;
    fp_conn_t *conns;
    size_t n_conns;
    uint64_t next_id, rng;
    bool blackhole, stop;
    int64_t t0;
    uint64_t n_accepted, n_resets, n_refused;
} fp_t;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void fp_log(fp_t *p, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fp_log(fp_t *p, int level, const char *fmt, ...)
{
    if (level > p->cfg.verbose) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "faultproxy %.3f: ", (double)(now_us() - p->t0) / 1e6);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* xorshift64*: reproducible jitter from --seed. */
static uint64_t rng_next(fp_t *p)
{
    uint64_t x = p->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    p->rng = x;
    return x * 2685821657736338717ULL;
}

/* ---- connections ---------------------------------------------------------------------------- */

/* Closes fd so that the peer sees a RST rather than a FIN. */
static void close_rst(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* Marks c dead and closes its fds (with RST if rst); freed after the event batch. */
static void conn_close(fp_t *p, fp_conn_t *c, bool rst, const char *why)
{
    if (c->dead) return;
    c->dead = true;
    for (int s = 0; s < 2; s++) {
        if (c->fd[s] < 0) continue;
        if (c->reg[s]) epoll_ctl(p->ep, EPOLL_CTL_DEL, c->fd[s], NULL);
        c->reg[s] = false;
        if (rst)
            close_rst(c->fd[s]);
        else
            close(c->fd[s]);
        c->fd[s] = -1;
    }
    fp_log(p, 1, "conn %llu closed (%s): up %llu/%llu bytes, down %llu/%llu bytes",
           (unsigned long long)c->id, why, (unsigned long long)c->pipe[0].bytes_out,
           (unsigned long long)c->pipe[0].bytes_in, (unsigned long long)c->pipe[1].bytes_out,
           (unsigned long long)c->pipe[1].bytes_in);
}

static void conn_free_dead(fp_t *p)
{
    fp_conn_t **pp = &p->conns;
    while (*pp) {
        fp_conn_t *c = *pp;
        if (!c->dead) {
            pp = &c->next;
            continue;
        }
        *pp = c->next;
        free(c->pipe[0].buf);
        free(c->pipe[1].buf);
        free(c);
        p->n_conns--;
    }
}

/* Starts the non-blocking connect of c to the target. */
static void conn_connect(fp_t *p, fp_conn_t *c)
{
    int fd = socket(p->cfg.target_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fp_log(p, 0, "socket: %s", strerror(errno));
        conn_close(p, c, true, "no socket");
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd[1] = fd;
    c->ev[1] = 0;
    c->reg[1] = false;
    c->target_opened = true;
    if (connect(fd, (struct sockaddr *)&p->cfg.target_addr, p->cfg.target_len) == 0) {
        c->connecting = false;
    } else if (errno == EINPROGRESS) {
        c->connecting = true;
    } else {
        fp_log(p, 0, "conn %llu: connect to the target: %s", (unsigned long long)c->id,
               strerror(errno));
        conn_close(p, c, true, "connect failed");
    }
}

/* ---- one direction -------------------------------------------------------------------------- */

static int src_fd(const fp_conn_t *c, const fp_pipe_t *q)
{
    return c->fd[q->dir == 0 ? 0 : 1];
}

static int dst_fd(const fp_conn_t *c, const fp_pipe_t *q)
{
    return c->fd[q->dir == 0 ? 1 : 0];
}

static bool dst_ready(const fp_conn_t *c, const fp_pipe_t *q)
{
    return dst_fd(c, q) >= 0 && !(q->dir == 0 && c->connecting);
}

static bool pipe_can_read(const fp_conn_t *c, const fp_pipe_t *q)
{
    return !q->src_eof && src_fd(c, q) >= 0 && !(q->dir == 1 && c->connecting) && q->len < q->cap &&
           q->ch_n < FP_CHUNKS;
}

/* Reads what src has into the ring. Returns -1 on a connection error (errno set). */
static int pipe_read(fp_t *p, fp_conn_t *c, fp_pipe_t *q, int64_t now)
{
    const fp_dir_cfg_t *d = &p->cfg.dir[q->dir];
    while (pipe_can_read(c, q)) {
        size_t tail = (q->head + q->len) % q->cap;
        size_t room = q->cap - q->len;
        if (tail + room > q->cap) room = q->cap - tail;
        ssize_t n = recv(src_fd(c, q), q->buf + tail, room, 0);
        if (n == 0) {
            q->src_eof = true;
            break;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            return -1;
        }
        int64_t delay = d->delay_us;
        if (d->jitter_us > 0)
            delay += (int64_t)(rng_next(p) % (uint64_t)(2 * d->jitter_us + 1)) - d->jitter_us;
        if (delay < 0) delay = 0;
        int64_t rel = now + delay;
        if (rel < q->last_release) rel = q->last_release;
        q->last_release = rel;
        fp_chunk_t *last = q->ch_n ? &q->ch[(q->ch_head + q->ch_n - 1) % FP_CHUNKS] : NULL;
        if (last && last->release_us == rel) {
            last->len += (size_t)n;
        } else {
            q->ch[(q->ch_head + q->ch_n) % FP_CHUNKS] = (fp_chunk_t){rel, (size_t)n};
            q->ch_n++;
        }
        q->len += (size_t)n;
        q->bytes_in += (uint64_t)n;
    }
    return 0;
}

static void pipe_refill(const fp_dir_cfg_t *d, fp_pipe_t *q, int64_t now)
{
    if (!d->rate_bps) return;
    double burst = (double)d->rate_bps / 100.0; /* 10 ms worth */
    if (burst < 2048) burst = 2048;
    q->tokens += (double)(now - q->tokens_at) * (double)d->rate_bps / 1e6;
    if (q->tokens > burst) q->tokens = burst;
    q->tokens_at = now;
}

/* Bytes at the head of the ring whose release time has come. */
static size_t pipe_released(const fp_pipe_t *q, int64_t now)
{
    size_t n = 0;
    for (size_t i = 0; i < q->ch_n; i++) {
        const fp_chunk_t *ch = &q->ch[(q->ch_head + i) % FP_CHUNKS];
        if (ch->release_us > now) break;
        n += ch->len;
    }
    return n;
}

/* Writes the released bytes the rate allows. Returns -1 on a connection error (errno set). */
static int pipe_write(fp_t *p, fp_conn_t *c, fp_pipe_t *q, int64_t now)
{
    const fp_dir_cfg_t *d = &p->cfg.dir[q->dir];
    if (p->blackhole || !dst_ready(c, q) || q->dst_blocked) return 0;
    pipe_refill(d, q, now);
    size_t want = pipe_released(q, now);
    while (want > 0) {
        size_t n = want;
        if (d->rate_bps) {
            if (q->tokens < 1) break;
            if ((double)n > q->tokens) n = (size_t)q->tokens;
        }
        if (q->head + n > q->cap) n = q->cap - q->head;
        ssize_t w = send(dst_fd(c, q), q->buf + q->head, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                q->dst_blocked = true;
                break;
            }
            if (errno == EINTR) continue;
            return -1;
        }
        size_t done = (size_t)w;
        q->head = (q->head + done) % q->cap;
        q->len -= done;
        q->bytes_out += done;
        want -= done;
        if (d->rate_bps) q->tokens -= (double)done;
        while (done > 0) { /* consume chunk records */
            fp_chunk_t *ch = &q->ch[q->ch_head];
            size_t k = done < ch->len ? done : ch->len;
            ch->len -= k;
            done -= k;
            if (ch->len == 0) {
                q->ch_head = (q->ch_head + 1) % FP_CHUNKS;
                q->ch_n--;
            }
        }
        if ((size_t)w < n) {
            q->dst_blocked = true;
            break;
        }
    }
    if (q->src_eof && q->len == 0 && !q->dst_shut) {
        if (q->rst_after) {
            conn_close(p, c, true, "peer reset, passed on");
            return 0;
        }
        shutdown(dst_fd(c, q), SHUT_WR);
        q->dst_shut = true;
    }
    return 0;
}

/* The socket of one side (0 client, 1 target) failed (RST, EPIPE): it is closed; the bytes
 * that side sent before failing are still delivered to the other side, then the other side is
 * reset, as a real network would do; bytes on their way to the failed side are dropped. */
static void endpoint_failed(fp_t *p, fp_conn_t *c, int side, int err)
{
    fp_log(p, 1, "conn %llu: %s: %s", (unsigned long long)c->id, side ? "target" : "client",
           strerror(err));
    if (c->dead) return;
    if (side == 0 && !c->target_opened) { /* nothing ever went onwards */
        conn_close(p, c, false, "client failed before the target was connected");
        return;
    }
    if (c->reg[side]) epoll_ctl(p->ep, EPOLL_CTL_DEL, c->fd[side], NULL);
    c->reg[side] = false;
    close(c->fd[side]);
    c->fd[side] = -1;
    if (side == 1) c->connecting = false;
    fp_pipe_t *to = &c->pipe[side == 0 ? 1 : 0];   /* towards the failed side: dropped */
    fp_pipe_t *from = &c->pipe[side == 0 ? 0 : 1]; /* from it: drained, then the reset */
    to->len = to->head = to->ch_n = to->ch_head = 0;
    to->src_eof = to->dst_shut = true;
    to->dst_blocked = false;
    from->src_eof = true;
    from->rst_after = true;
    if (c->fd[side == 0 ? 1 : 0] < 0) conn_close(p, c, true, "both sides failed");
}

/* When this direction needs the loop again (0: not on a timer). */
static int64_t pipe_next(const fp_t *p, const fp_conn_t *c, const fp_pipe_t *q, int64_t now)
{
    if (p->blackhole || !dst_ready(c, q) || q->dst_blocked || q->ch_n == 0) return 0;
    const fp_chunk_t *ch = &q->ch[q->ch_head];
    if (ch->release_us > now) return ch->release_us;
    const fp_dir_cfg_t *d = &p->cfg.dir[q->dir];
    if (!d->rate_bps) return now;
    size_t ready = pipe_released(q, now);
    double need = ready < 1460 ? (double)ready : 1460.0;
    if (q->tokens >= need) return now;
    int64_t wait = (int64_t)((need - q->tokens) * 1e6 / (double)d->rate_bps) + 1;
    return now + wait;
}

/* ---- the loop ------------------------------------------------------------------------------- */

static void conn_update_events(fp_t *p, fp_conn_t *c)
{
    for (int s = 0; s < 2; s++) {
        if (c->fd[s] < 0) continue;
        uint32_t ev = 0;
        fp_pipe_t *out = &c->pipe[s == 0 ? 0 : 1]; /* reads from this fd */
        fp_pipe_t *in = &c->pipe[s == 0 ? 1 : 0];  /* writes to this fd */
        if (s == 1 && c->connecting) {
            ev = EPOLLOUT;
        } else {
            if (pipe_can_read(c, out)) ev |= EPOLLIN | EPOLLRDHUP;
            if (in->dst_blocked) ev |= EPOLLOUT;
        }
        struct epoll_event e = {.events = ev, .data.ptr = &c->ref[s]};
        if (ev == 0 && c->reg[s]) {
            epoll_ctl(p->ep, EPOLL_CTL_DEL, c->fd[s], NULL);
            c->reg[s] = false;
        } else if (ev != 0 && !c->reg[s]) {
            epoll_ctl(p->ep, EPOLL_CTL_ADD, c->fd[s], &e);
            c->reg[s] = true;
        } else if (ev != 0 && ev != c->ev[s]) {
            epoll_ctl(p->ep, EPOLL_CTL_MOD, c->fd[s], &e);
        }
        c->ev[s] = ev;
    }
}

/* Moves whatever can move on c now; closes it when both directions are done or on error. */
static void conn_pump(fp_t *p, fp_conn_t *c, int64_t now)
{
    if (c->dead) return;
    if (!c->target_opened && !p->blackhole) conn_connect(p, c);
    if (c->dead) return;
    for (int i = 0; i < 2; i++) { /* pipe i reads side i and writes side 1 - i */
        if (pipe_read(p, c, &c->pipe[i], now) != 0) endpoint_failed(p, c, i, errno);
        if (c->dead) return;
        if (pipe_write(p, c, &c->pipe[i], now) != 0) endpoint_failed(p, c, 1 - i, errno);
        if (c->dead) return;
    }
    if (c->pipe[0].dst_shut && c->pipe[1].dst_shut) {
        conn_close(p, c, false, "both sides closed");
        return;
    }
    conn_update_events(p, c);
}

static void accept_all(fp_t *p, int64_t now)
{
    for (;;) {
        int fd = accept4(p->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                fp_log(p, 0, "accept: %s", strerror(errno));
            return;
        }
        fp_conn_t *c = NULL;
        uint8_t *b0 = NULL, *b1 = NULL;
        if (p->n_conns >= p->cfg.max_conns || !(c = calloc(1, sizeof *c)) ||
            !(b0 = malloc(p->cfg.buffer_bytes)) || !(b1 = malloc(p->cfg.buffer_bytes))) {
            fp_log(p, 0, "refusing a connection (%s)",
                   p->n_conns >= p->cfg.max_conns ? "--max-conns reached" : "out of memory");
            free(c);
            free(b0);
            free(b1);
            close_rst(fd);
            p->n_refused++;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->id = ++p->next_id;
        c->fd[0] = fd;
        c->fd[1] = -1;
        c->accepted_at = now;
        for (int s = 0; s < 2; s++)
            c->ref[s] = (fp_ref_t){c, s};
        for (int i = 0; i < 2; i++) {
            fp_pipe_t *q = &c->pipe[i];
            q->dir = i;
            q->buf = i == 0 ? b0 : b1;
            q->cap = p->cfg.buffer_bytes;
            q->tokens_at = now;
            q->tokens = 2048;
        }
        c->next = p->conns;
        p->conns = c;
        p->n_conns++;
        p->n_accepted++;
        fp_log(p, 1, "conn %llu accepted%s", (unsigned long long)c->id,
               p->blackhole ? " (black hole: not connected onwards yet)" : "");
        conn_pump(p, c, now);
    }
}

static void set_blackhole(fp_t *p, bool on, const char *why)
{
    if (p->blackhole == on) return;
    p->blackhole = on;
    fp_log(p, 0, "black hole %s (%s)", on ? "ON" : "OFF", why);
}

static void on_signal(fp_t *p)
{
    struct signalfd_siginfo si;
    while (read(p->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGUSR1)
            set_blackhole(p, true, "SIGUSR1");
        else if (si.ssi_signo == SIGUSR2)
            set_blackhole(p, false, "SIGUSR2");
        else
            p->stop = true;
    }
}

static int run(fp_t *p)
{
    struct epoll_event evs[64];
    int64_t bh_on = p->cfg.blackhole_at_us >= 0 ? p->t0 + p->cfg.blackhole_at_us : -1;
    int64_t bh_off = bh_on >= 0 ? bh_on + p->cfg.blackhole_for_us : -1;
    while (!p->stop) {
        int64_t now = now_us();
        if (bh_on >= 0 && now >= bh_on) {
            set_blackhole(p, true, "--blackhole-at-ms");
            bh_on = -1;
        }
        if (bh_on < 0 && bh_off >= 0 && now >= bh_off) {
            set_blackhole(p, false, "--blackhole-for-ms elapsed");
            bh_off = -1;
        }
        /* Timers: resets, then whatever each direction is waiting for. */
        int64_t next = bh_on >= 0 ? bh_on : bh_off;
        for (fp_conn_t *c = p->conns; c; c = c->next) {
            if (p->cfg.reset_every_us > 0 && !c->dead) {
                int64_t at = c->accepted_at + p->cfg.reset_every_us;
                if (now >= at) {
                    p->n_resets++;
                    conn_close(p, c, true, "--reset-every-ms");
                    continue;
                }
                if (next < 0 || at < next) next = at;
            }
            conn_pump(p, c, now);
            for (int i = 0; i < 2 && !c->dead; i++) {
                int64_t t = pipe_next(p, c, &c->pipe[i], now);
                if (t > 0 && (next < 0 || t < next)) next = t;
            }
        }
        conn_free_dead(p);
        int timeout = -1;
        if (next >= 0) {
            int64_t dt = next - now_us();
            timeout = dt <= 0 ? 0 : (int)((dt + 999) / 1000);
        }
        int n = epoll_wait(p->ep, evs, 64, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            fp_log(p, 0, "epoll_wait: %s", strerror(errno));
            return -1;
        }
        now = now_us();
        for (int i = 0; i < n; i++) {
            fp_ref_t *r = evs[i].data.ptr;
            if (r == &p->lref) {
                accept_all(p, now);
                continue;
            }
            if (r == &p->sref) {
                on_signal(p);
                continue;
            }
            fp_conn_t *c = r->c;
            if (c->dead) continue;
            if (r->side == 1 && c->connecting) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    fp_log(p, 0, "conn %llu: connect to the target: %s", (unsigned long long)c->id,
                           strerror(err));
                    conn_close(p, c, true, "connect failed");
                    continue;
                }
                c->connecting = false;
                fp_log(p, 1, "conn %llu connected to the target", (unsigned long long)c->id);
            }
            if (evs[i].events & EPOLLOUT) c->pipe[r->side == 0 ? 1 : 0].dst_blocked = false;
            conn_pump(p, c, now); /* reads what the socket still holds, then its error */
            if ((evs[i].events & EPOLLERR) && !c->dead && c->fd[r->side] >= 0) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd[r->side], SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) endpoint_failed(p, c, r->side, err);
            }
        }
        conn_free_dead(p);
    }
    return 0;
}

/* ---- options -------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: moeh-faultproxy --listen HOST:PORT --target HOST:PORT [FAULTS]\n"
        "\n"
        "Forwards every TCP connection accepted on --listen to --target and injects faults\n"
        "in each direction (up: client -> target, down: target -> client). For tests: the\n"
        "kernel here has no netem.\n"
        "\n"
        "  --listen HOST:PORT       address to listen on (PORT 0: any free port)\n"
        "  --target HOST:PORT       address to forward to (numeric IPv4/IPv6 or a name)\n"
        "  --delay-ms N             hold every byte N ms after it arrives (both directions)\n"
        "  --jitter-ms N            plus a uniform offset in [-N, +N] ms per read (N <= delay);\n"
        "                           release times stay monotone, so byte order is kept\n"
        "  --rate-kbit N            token-bucket cap of each direction of each connection\n"
        "                           (kbit/s, 1 kbit = 1000 bit; 10 ms burst)\n"
        "  --up-delay-ms N, --up-jitter-ms N, --up-rate-kbit N,\n"
        "  --down-delay-ms N, --down-jitter-ms N, --down-rate-kbit N\n"
        "                           the same for one direction only (override the above)\n"
        "  --reset-every-ms N       reset each connection (RST both ways, SO_LINGER 0) N ms\n"
        "                           after it was accepted\n"
        "  --blackhole-at-ms N      start forwarding nothing N ms after start (connections\n"
        "                           stay open; bytes wait, bounded by the buffers)\n"
        "  --blackhole-for-ms N     ...and resume after N ms (default: never)\n"
        "                           SIGUSR1 starts a black hole at any time, SIGUSR2 ends it\n"
        "  --buffer-kb N            buffer of each direction of each connection (default 1024);\n"
        "                           when full, the proxy stops reading that side\n"
        "  --max-conns N            connections at a time (default 256; more are reset)\n"
        "  --seed N                 seed of the jitter (default 1)\n"
        "  --ready-fd N             write \"HOST:PORT\\n\" (the bound address) to fd N, close it\n"
        "  --verbose                log every connection (-v -v: more)\n"
        "  --help, --version\n"
        "\n"
        "SIGTERM, SIGINT or SIGHUP closes every connection and exits 0. Exit codes: 0 clean stop,\n"
        "1 runtime error, 2 bad usage.\n");
}

static int parse_u64(const char *opt, const char *s, uint64_t max, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (!s || !*s || *s == '-') goto bad;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max) goto bad;
    *out = v;
    return 0;
bad:
    fprintf(stderr, "moeh-faultproxy: --%s wants a whole number from 0 to %llu, not '%s'\n", opt,
            (unsigned long long)max, s ? s : "");
    return -1;
}

/* HOST:PORT or [V6HOST]:PORT -> sockaddr. */
static int parse_addr(const char *opt, const char *s, bool passive, struct sockaddr_storage *ss,
                      socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof host || !colon[1]) {
        fprintf(stderr, "moeh-faultproxy: --%s wants HOST:PORT, not '%s'\n", opt, s);
        return -1;
    }
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = 0;
    uint64_t port;
    if (parse_u64(opt, colon + 1, 65535, &port)) return -1;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = passive ? AI_PASSIVE | AI_NUMERICSERV : AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, colon + 1, &hints, &ai);
    if (rc) {
        fprintf(stderr, "moeh-faultproxy: --%s %s: %s\n", opt, s, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

enum {
    O_LISTEN = 256,
    O_TARGET,
    O_DELAY,
    O_JITTER,
    O_RATE,
    O_UP_DELAY,
    O_UP_JITTER,
    O_UP_RATE,
    O_DOWN_DELAY,
    O_DOWN_JITTER,
    O_DOWN_RATE,
    O_RESET,
    O_BH_AT,
    O_BH_FOR,
    O_BUFFER,
    O_MAX_CONNS,
    O_SEED,
    O_READY_FD,
    O_VERBOSE,
    O_HELP,
    O_VERSION
};

/* 0 ok, 1 --help/--version done, -1 bad usage (message printed). */
static int parse_args(fp_cfg_t *cfg, int argc, char **argv)
{
    static const struct option lo[] = {{"listen", required_argument, NULL, O_LISTEN},
                                       {"target", required_argument, NULL, O_TARGET},
                                       {"delay-ms", required_argument, NULL, O_DELAY},
                                       {"jitter-ms", required_argument, NULL, O_JITTER},
                                       {"rate-kbit", required_argument, NULL, O_RATE},
                                       {"up-delay-ms", required_argument, NULL, O_UP_DELAY},
                                       {"up-jitter-ms", required_argument, NULL, O_UP_JITTER},
                                       {"up-rate-kbit", required_argument, NULL, O_UP_RATE},
                                       {"down-delay-ms", required_argument, NULL, O_DOWN_DELAY},
                                       {"down-jitter-ms", required_argument, NULL, O_DOWN_JITTER},
                                       {"down-rate-kbit", required_argument, NULL, O_DOWN_RATE},
                                       {"reset-every-ms", required_argument, NULL, O_RESET},
                                       {"blackhole-at-ms", required_argument, NULL, O_BH_AT},
                                       {"blackhole-for-ms", required_argument, NULL, O_BH_FOR},
                                       {"buffer-kb", required_argument, NULL, O_BUFFER},
                                       {"max-conns", required_argument, NULL, O_MAX_CONNS},
                                       {"seed", required_argument, NULL, O_SEED},
                                       {"ready-fd", required_argument, NULL, O_READY_FD},
                                       {"verbose", no_argument, NULL, O_VERBOSE},
                                       {"help", no_argument, NULL, O_HELP},
                                       {"version", no_argument, NULL, O_VERSION},
                                       {NULL, 0, NULL, 0}};
    const uint64_t day_ms = 86400000ULL;
    bool have_listen = false, have_target = false, have_bh_for = false;
    /* both-direction values first, per-direction overrides after the loop */
    int64_t both[3] = {0, 0, 0}, dirv[2][3] = {{0}};
    bool dirset[2][3] = {{false}};
    uint64_t v;
    cfg->buffer_bytes = 1024 * 1024;
    cfg->max_conns = 256;
    cfg->seed = 1;
    cfg->ready_fd = -1;
    cfg->blackhole_at_us = -1;
    cfg->blackhole_for_us = INT64_MAX / 4;
    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, ":v", lo, NULL)) != -1) {
        const char *name = (o >= O_LISTEN && o <= O_VERSION) ? lo[o - O_LISTEN].name : "";
        switch (o) {
        case O_LISTEN:
            if (parse_addr(name, optarg, true, &cfg->listen_addr, &cfg->listen_len)) return -1;
            have_listen = true;
            break;
        case O_TARGET:
            if (parse_addr(name, optarg, false, &cfg->target_addr, &cfg->target_len)) return -1;
            have_target = true;
            break;
        case O_DELAY:
        case O_JITTER:
        case O_UP_DELAY:
        case O_UP_JITTER:
        case O_DOWN_DELAY:
        case O_DOWN_JITTER:
        case O_RESET:
        case O_BH_AT:
        case O_BH_FOR:
            if (parse_u64(name, optarg, day_ms, &v)) return -1;
            if (o == O_DELAY) both[0] = (int64_t)v * 1000;
            if (o == O_JITTER) both[1] = (int64_t)v * 1000;
            if (o == O_UP_DELAY || o == O_DOWN_DELAY) {
                dirv[o == O_DOWN_DELAY][0] = (int64_t)v * 1000;
                dirset[o == O_DOWN_DELAY][0] = true;
            }
            if (o == O_UP_JITTER || o == O_DOWN_JITTER) {
                dirv[o == O_DOWN_JITTER][1] = (int64_t)v * 1000;
                dirset[o == O_DOWN_JITTER][1] = true;
            }
            if (o == O_RESET) {
                if (v == 0) {
                    fprintf(stderr, "moeh-faultproxy: --reset-every-ms must be > 0\n");
                    return -1;
                }
                cfg->reset_every_us = (int64_t)v * 1000;
            }
            if (o == O_BH_AT) cfg->blackhole_at_us = (int64_t)v * 1000;
            if (o == O_BH_FOR) {
                cfg->blackhole_for_us = (int64_t)v * 1000;
                have_bh_for = true;
            }
            break;
        case O_RATE:
        case O_UP_RATE:
        case O_DOWN_RATE:
            if (parse_u64(name, optarg, 100000000ULL, &v)) return -1;
            if (o == O_RATE) both[2] = (int64_t)(v * 1000 / 8);
            if (o != O_RATE) {
                dirv[o == O_DOWN_RATE][2] = (int64_t)(v * 1000 / 8);
                dirset[o == O_DOWN_RATE][2] = true;
            }
            break;
        case O_BUFFER:
            if (parse_u64(name, optarg, 1024 * 1024, &v)) return -1;
            if (v < 4) {
                fprintf(stderr, "moeh-faultproxy: --buffer-kb must be at least 4\n");
                return -1;
            }
            cfg->buffer_bytes = (size_t)v * 1024;
            break;
        case O_MAX_CONNS:
            if (parse_u64(name, optarg, 65536, &v)) return -1;
            if (v == 0) {
                fprintf(stderr, "moeh-faultproxy: --max-conns must be > 0\n");
                return -1;
            }
            cfg->max_conns = (size_t)v;
            break;
        case O_SEED:
            if (parse_u64(name, optarg, UINT64_MAX, &v)) return -1;
            cfg->seed = v;
            break;
        case O_READY_FD:
            if (parse_u64(name, optarg, INT_MAX, &v)) return -1;
            cfg->ready_fd = (int)v;
            break;
        case 'v':
        case O_VERBOSE:
            cfg->verbose++;
            break;
        case O_HELP:
            usage(stdout);
            return 1;
        case O_VERSION:
            printf("%s\n", FP_VERSION);
            return 1;
        case ':':
            fprintf(stderr, "moeh-faultproxy: %s needs a value (see --help)\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "moeh-faultproxy: unknown option '%s' (see --help)\n",
                    argv[optind - 1]);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moeh-faultproxy: unexpected argument '%s' (see --help)\n", argv[optind]);
        return -1;
    }
    if (!have_listen || !have_target) {
        fprintf(stderr, "moeh-faultproxy: --listen and --target are required (see --help)\n");
        return -1;
    }
    if (have_bh_for && cfg->blackhole_at_us < 0) {
        fprintf(stderr, "moeh-faultproxy: --blackhole-for-ms needs --blackhole-at-ms\n");
        return -1;
    }
    for (int d = 0; d < 2; d++) {
        cfg->dir[d].delay_us = dirset[d][0] ? dirv[d][0] : both[0];
        cfg->dir[d].jitter_us = dirset[d][1] ? dirv[d][1] : both[1];
        cfg->dir[d].rate_bps = (uint64_t)(dirset[d][2] ? dirv[d][2] : both[2]);
        if (cfg->dir[d].jitter_us > cfg->dir[d].delay_us) {
            fprintf(stderr,
                    "moeh-faultproxy: the %s jitter (%lld ms) exceeds its delay (%lld ms): "
                    "the jitter is +/- around the delay\n",
                    d ? "down" : "up", (long long)(cfg->dir[d].jitter_us / 1000),
                    (long long)(cfg->dir[d].delay_us / 1000));
            return -1;
        }
    }
    return 0;
}

/* Binds the listening socket and reports the bound address. */
static int open_listener(fp_t *p)
{
    const fp_cfg_t *cfg = &p->cfg;
    int fd = socket(cfg->listen_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "moeh-faultproxy: socket: %s\n", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&cfg->listen_addr, cfg->listen_len) != 0 ||
        listen(fd, 128) != 0) {
        fprintf(stderr, "moeh-faultproxy: cannot listen on the --listen address: %s\n",
                strerror(errno));
        close(fd);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[NI_MAXHOST], serv[NI_MAXSERV], line[NI_MAXHOST + NI_MAXSERV + 8];
    getsockname(fd, (struct sockaddr *)&ss, &len);
    getnameinfo((struct sockaddr *)&ss, len, host, sizeof host, serv, sizeof serv,
                NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(line, sizeof line, ss.ss_family == AF_INET6 ? "[%s]:%s\n" : "%s:%s\n", host, serv);
    if (cfg->ready_fd >= 0) {
        size_t n = strlen(line);
        if (write(cfg->ready_fd, line, n) != (ssize_t)n) {
            fprintf(stderr, "moeh-faultproxy: --ready-fd %d: %s\n", cfg->ready_fd, strerror(errno));
            close(fd);
            return -1;
        }
        close(cfg->ready_fd);
    }
    fp_log(p, 0, "listening on %.*s", (int)strlen(line) - 1, line);
    p->lfd = fd;
    return 0;
}

int main(int argc, char **argv)
{
    fp_t p;
    memset(&p, 0, sizeof p);
    p.t0 = now_us();
    p.ep = p.lfd = p.sfd = -1;
    int rc = parse_args(&p.cfg, argc, argv);
    if (rc) return rc > 0 ? 0 : 2;
    p.rng = p.cfg.seed ? p.cfg.seed : 0x9E3779B97F4A7C15ULL;
    int exit_code = 1;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0 ||
        (p.sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
        fprintf(stderr, "moeh-faultproxy: signalfd: %s\n", strerror(errno));
        goto out;
    }
    if ((p.ep = epoll_create1(EPOLL_CLOEXEC)) < 0) {
        fprintf(stderr, "moeh-faultproxy: epoll_create1: %s\n", strerror(errno));
        goto out;
    }
    if (open_listener(&p) != 0) goto out;
    p.lref = (fp_ref_t){NULL, -1};
    p.sref = (fp_ref_t){NULL, -2};
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = &p.lref};
    struct epoll_event es = {.events = EPOLLIN, .data.ptr = &p.sref};
    if (epoll_ctl(p.ep, EPOLL_CTL_ADD, p.lfd, &e) != 0 ||
        epoll_ctl(p.ep, EPOLL_CTL_ADD, p.sfd, &es) != 0) {
        fprintf(stderr, "moeh-faultproxy: epoll_ctl: %s\n", strerror(errno));
        goto out;
    }
    if (run(&p) == 0) exit_code = 0;
    for (fp_conn_t *c = p.conns; c; c = c->next)
        conn_close(&p, c, false, "stopping");
    conn_free_dead(&p);
    fp_log(&p, 0, "stopped: %llu connections, %llu resets, %llu refused",
           (unsigned long long)p.n_accepted, (unsigned long long)p.n_resets,
           (unsigned long long)p.n_refused);
out:
    if (p.lfd >= 0) close(p.lfd);
    if (p.sfd >= 0) close(p.sfd);
    if (p.ep >= 0) close(p.ep);
    return exit_code;
}
