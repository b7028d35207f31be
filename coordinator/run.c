/* run.c - moeh_coord_run(): the coordinator's ROUTER socket, CURVE and ZAP, the registry and its
 * reload, the clock and the stop flag, around the state machine of moeh_coord_core.h. One
 * thread owns the socket and the core; ZAP requests are answered by a second (moeh_keys.h). */
#include "moeh_coord_core.h"
#include "moeh_coord_status.h"
#include "moeh_coordinator_testing.h"

#include "moeh_connguard.h"
#include "moeh_keys.h"
#include "moeh_monitor.h"
#include "moeh_progress.h"
#include "moeh_stream.h"
#include "moeh_wire.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zmq.h>

/* The outbound budget of one peer: messages queued for it and not yet taken by its connection
 * (a broadcast model is one reference-counted copy shared by every queue). */
#define MOEH_COORD_SNDHWM 1000
/* A TCP connection must complete its ZMTP/CURVE handshake within this (libzmq's default: 30 s):
 * an idle unauthenticated connection holds a descriptor this long at most. */
#define MOEH_COORD_HANDSHAKE_MS 5000

typedef struct {
    const moeh_coord_cfg_t *cfg;
    const moeh_coord_faults_t *faults;
    void *zctx, *router;
    moeh_zap_t *zap;
    moeh_monitor_t *mon; /* the ROUTER's handshakes (CURVE only) */
    moeh_hslog_t *hslog; /* failed handshakes per peer address, for the log */
    moeh_keypair_t *kp;
    moeh_coord_io_t io;
    moeh_coord_core_t *core;
    moeh_connguard_t *guard;          /* NULL if the endpoint is not tcp or there is no procfs */
    uint64_t guard_msg_bytes;         /* the guard's msg_bytes as last set (0: none) */
    uint64_t nofile;                  /* RLIMIT_NOFILE after raise_nofile */
    char run_id[64];                  /* OUT/status.json */
    moeh_coord_status_mark_t st_mark; /* what the last status.json said */
    int st_failed;                    /* a failed write was logged (once) */
    moeh_coord_eta_t eta;             /* the run's ETA from the rounds timed here */
    moeh_coord_progress_t pg;         /* where the run was at the last look (progress_step) */
    int64_t phase_t0;                 /* when that phase was first seen */
} run_t;

/* Descriptors open now (/proc/self/fd; 32 if it cannot be read). */
static uint64_t open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 32;
    uint64_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* The connection guard (moeh_connguard.h) on the bound endpoint ep; without one (not tcp, no
 * procfs) the run goes on with a warning. */
static void guard_start(run_t *r, const char *ep)
{
    const moeh_coord_cfg_t *cfg = r->cfg;
    moeh_connguard_cfg_t g = {.max_conns = cfg->max_connections,
                              .burst_bytes = (uint64_t)cfg->conn_budget_mb << 20,
                              .total_bytes = (uint64_t)cfg->conn_budget_mb << 22,
                              .interval_ms = 50,
                              .idle_ms = cfg->heartbeat_timeout_ms < UINT32_MAX / 2
                                             ? 2 * cfg->heartbeat_timeout_ms
                                             : UINT32_MAX};
    if (!g.max_conns) { /* keep 64 descriptors free beside those open now (ZeroMQ's, the log) */
        uint64_t used = open_fds(), keep = 64 + used;
        uint64_t n = r->nofile > 2 * keep ? r->nofile - keep : r->nofile / 2;
        g.max_conns = n < UINT32_MAX ? (uint32_t)n : UINT32_MAX;
    }
    moeh_err_t err = {0};
    if (moeh_connguard_create(&g, ep, &r->guard, &err) != 0) {
        MOEH_WARN("no connection guard (connections and their bytes are not capped): %s", err.msg);
        return;
    }
    MOEH_INFO("connections: at most %u at once, one per site key, %u MiB inbound each at once, "
              "%u MiB sent and not read by all together, closed after %.1f s without a message",
              g.max_conns, cfg->conn_budget_mb, 4 * cfg->conn_budget_mb, g.idle_ms / 1000.0);
}

/* The guard's scan (every 50 ms), with budgets of at least twice the largest legitimate
 * message once the model is known. */
static void guard_tick(run_t *r)
{
    if (!r->guard) return;
    const moeh_wire_limits_t *lim = moeh_coord_core_limits(r->core);
    uint64_t m = moeh_wire_max_tensor_bytes(lim);
    if (m) moeh_connguard_min_budget(r->guard, 2 * m + (1u << 20), 4 * (2 * m + (1u << 20)));
    /* one message in transit per connection: with granted uploads (in chunks) the largest
     * whole message and a window of chunks, else a whole update (before the model is known,
     * no message may carry a tensor); twice that, as a message may wait in libzmq's queue
     * behind another while the loop is busy */
    uint64_t one = !m                     ? moeh_stream_max_unstreamed_bytes(NULL)
                   : r->cfg->upload_slots ? moeh_stream_max_unstreamed_bytes(lim)
                                          : MOEH_MAX_HEADER_BYTES + m;
    if (r->cfg->conn_budget_mb && 2 * one + (1u << 20) != r->guard_msg_bytes) {
        r->guard_msg_bytes = 2 * one + (1u << 20);
        moeh_connguard_set_msg_bytes(r->guard, r->guard_msg_bytes);
        MOEH_INFO("connections: closed with more than %.1f MiB sent and not read (one message "
                  "in transit)",
                  (double)r->guard_msg_bytes / (1 << 20));
    }
    moeh_connguard_tick(r->guard, moeh_now_ms());
}

/* OUT/status.json (moeh_coord_status.h): when the phase, the round or the admitted sites
 * changed, or replies did and the last write is a second old; always when state is set. */
static void status_update(run_t *r, const char *state, const char *reason)
{
    moeh_coord_status_mark_t m = moeh_coord_status_mark(r->core);
    int64_t now = moeh_now_ms();
    const moeh_coord_status_mark_t *o = &r->st_mark;
    int changed = m.phase != o->phase || m.round != o->round || m.admitted != o->admitted;
    if (!state && !changed && (m.replied == o->replied || now - o->written_at < 1000)) return;
    m.written_at = now;
    r->st_mark = m;
    moeh_err_t err = {0};
    double eta = state ? (!strcmp(state, "finished") ? 0 : -1)
                       : moeh_coord_eta_s(&r->eta, r->pg.round, r->pg.rounds, r->pg.phase, now);
    if (moeh_coord_status_write(r->core, r->run_id, state, reason, eta, &err) != 0) {
        if (!r->st_failed) MOEH_WARN("status not written (the run goes on): %s", err.msg);
        r->st_failed = 1;
    }
}

static int is_open(int phase)
{
    return phase == MOEH_COORD_STATS || phase == MOEH_COORD_TRAIN || phase == MOEH_COORD_VALIDATE ||
           phase == MOEH_COORD_EVAL;
}

/* Progress (moeh_progress.h), called after the messages are read and before the tick that may
 * close the phase, so that r->pg holds the phase's final counts when it closes; and after the
 * tick. A phase that closed gets one info line with its counts and the run's ETA; on a
 * terminal the status line is redrawn as sites report. */
static void progress_step(run_t *r, int before_tick)
{
    moeh_coord_progress_t p;
    moeh_coord_status_progress(r->core, &p);
    int64_t now = moeh_now_ms();
    const moeh_coord_progress_t *o = &r->pg;
    char eta[24];
    if (p.phase != o->phase || p.round != o->round) { /* o's phase closed (or a new start) */
        moeh_coord_eta_observe(&r->eta, p.round, p.phase, now);
        if (is_open(o->phase)) {
            char el[32];
            moeh_progress_fmt_elapsed(el, sizeof el, (double)(now - r->phase_t0) / 1000.0);
            moeh_progress_fmt_eta(eta, sizeof eta,
                                  moeh_coord_eta_s(&r->eta, p.round, p.rounds, p.phase, now));
            if (o->phase == MOEH_COORD_STATS)
                MOEH_INFO("STATS: %u/%u sites reported in %s, %s", o->replied, o->participants, el,
                          eta);
            else
                MOEH_INFO("round %u/%u %s: %u/%u sites reported in %s, %s", o->round, o->rounds,
                          moeh_coord_phase_label(o->phase), o->replied, o->participants, el, eta);
        }
        r->phase_t0 = now;
    }
    r->pg = p;
    if (!moeh_progress_on_terminal()) return;
    /* the round's table line goes to stdout when its last phase (VALIDATE, or EVAL without
     * validation) closes: not onto our line */
    if (before_tick && (p.phase == MOEH_COORD_EVAL || p.phase == MOEH_COORD_VALIDATE) &&
        r->cfg->print_table && isatty(1))
        moeh_progress_line_clear();
    if (before_tick) return;
    moeh_progress_fmt_eta(eta, sizeof eta,
                          moeh_coord_eta_s(&r->eta, p.round, p.rounds, p.phase, now));
    if (p.phase == MOEH_COORD_WAIT)
        moeh_progress_line("waiting for sites: %u/%u joined", p.admitted, p.wait_target);
    else if (p.phase == MOEH_COORD_STATS)
        moeh_progress_line("STATS: %u/%u sites reported", p.replied, p.participants);
    else if (is_open(p.phase))
        moeh_progress_line("round %u/%u %s: %u/%u sites reported, %s", p.round, p.rounds,
                           moeh_coord_phase_label(p.phase), p.replied, p.participants, eta);
}

/* Sends never wait (ZMQ_SNDTIMEO 0 on the ROUTER, with ROUTER_MANDATORY): a peer whose queue
 * holds MOEH_COORD_SNDHWM unread messages gets -EAGAIN for the whole message (the ROUTER checks
 * its pipe on the routing-id part only, so nothing half-sent is queued), and the core treats
 * the peer as over its outbound budget. */
static int io_send(void *ctx, const uint8_t *rid, size_t rid_len, Moeh__Envelope *env,
                   const moeh_frame_t *frames, size_t n_frames)
{
    run_t *r = ctx;
    return moeh_wire_send(r->router, rid, rid_len, env, frames, n_frames);
}

/* Raises the soft RLIMIT_NOFILE to the hard limit, so that idle connections (each one a file
 * descriptor) do not take the descriptors the checkpoint and log files need; says the limit. */
static uint64_t raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
    rlim_t was = rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) rl.rlim_cur = was;
    }
    MOEH_INFO("open files: up to %llu (RLIMIT_NOFILE, was %llu)", (unsigned long long)rl.rlim_cur,
              (unsigned long long)was);
    return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
}

static int io_registered(void *ctx, const char *site_id)
{
    run_t *r = ctx;
    return moeh_zap_has_site(r->zap, site_id);
}

/* registry [limits] (none in --insecure runs, which have no registry) */
static void io_site_limits(void *ctx, const char *site_id, uint64_t *max_train, uint64_t *max_test)
{
    run_t *r = ctx;
    *max_train = *max_test = 0;
    if (r->zap && moeh_zap_site_limits(r->zap, site_id, max_train, max_test) != 0)
        *max_train = *max_test = 0;
}

/* registry [limits] MAX_VAL (0: none) */
static void io_site_val_limit(void *ctx, const char *site_id, uint64_t *max_val)
{
    run_t *r = ctx;
    *max_val = r->zap ? moeh_zap_site_val_limit(r->zap, site_id) : 0;
}

static void io_round_saved(void *ctx, uint32_t round)
{
    run_t *r = ctx;
    if (r->faults && r->faults->kill_after_round && round == r->faults->kill_after_round) {
        MOEH_WARN("fault injection: killing myself after round %u", round);
        raise(SIGKILL);
    }
}

/* Re-reads the registry (SIGHUP): added keys are admitted from now on; sites whose key was
 * removed are told and dropped at once, also on connections they already hold. A registry
 * that does not load leaves the current one in force. */
static void reload_registry(run_t *r)
{
    moeh_registry_t reg;
    moeh_err_t err = {0};
    if (moeh_registry_load(r->cfg->registry_path, &reg, &err) != 0) {
        MOEH_ERROR("registry not reloaded, the current one stays in force: %s", err.msg);
        return;
    }
    size_t n = reg.n;
    moeh_zap_replace_registry(r->zap, &reg);
    MOEH_INFO("registry reloaded from %s: %zu sites", r->cfg->registry_path, n);
    moeh_coord_core_registry_changed(r->core, moeh_now_ms());
}

/* Watches the ROUTER's handshakes (moeh_monitor.h), so that failed ones are logged per peer. */
static int monitor_start(run_t *r, moeh_err_t *err)
{
    if (!(r->hslog = malloc(sizeof *r->hslog)))
        return moeh_errf(err, -ENOMEM, "socket monitor: out of memory");
    moeh_hslog_init(r->hslog, r->faults ? r->faults->hslog_window_ms : 0);
    return moeh_monitor_start(r->zctx, r->router,
                              ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED |
                                  ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                  ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                              &r->mon, err);
}

/* Logs failed handshakes, rate-limited per peer address; reads at most 256 events a turn, so
 * that a flood of connections does not hold up the run. */
static void monitor_drain(run_t *r)
{
    char line[512];
    moeh_mon_event_t ev;
    int64_t now = moeh_now_ms();
    for (int budget = 0; r->mon && budget < 256; budget++) {
        int rc = moeh_monitor_next(r->mon, &ev);
        if (rc < 0) MOEH_DEBUG("socket monitor: %s", moeh_strerror(rc));
        if (rc <= 0) break;
        if (moeh_hslog_event(r->hslog, &ev, now, line, sizeof line)) MOEH_WARN("%s", line);
    }
    while (r->hslog && moeh_hslog_flush(r->hslog, now, line, sizeof line))
        MOEH_WARN("%s", line);
}

/* The socket, CURVE and ZAP; *registered is the number of sites in the registry. */
static int open_socket(run_t *r, uint32_t *registered, moeh_err_t *err)
{
    const moeh_coord_cfg_t *cfg = r->cfg;
    int rc;
    *registered = 0;
    if (!(r->zctx = zmq_ctx_new()))
        return moeh_errf(err, -ENOMEM, "cannot create a ZeroMQ context");
    if (!cfg->insecure) {
        if (!cfg->registry_path || !cfg->key_path)
            return moeh_errf(err, -EINVAL,
                             "a site registry (--registry) and the coordinator's "
                             "key (--key) are required (or --insecure for tests)");
        if ((rc = moeh_crypto_init())) return moeh_errf(err, rc, "libsodium failed to initialise");
        moeh_registry_t reg;
        if ((rc = moeh_registry_load(cfg->registry_path, &reg, err))) return rc;
        if (reg.n == 0) {
            moeh_registry_free(&reg);
            return moeh_errf(err, -EINVAL, "%s: no site is registered under [sites]",
                             cfg->registry_path);
        }
        if (cfg->secagg && reg.n < 3 && !cfg->secagg_allow_2) {
            moeh_registry_free(&reg);
            return moeh_errf(err, -EINVAL,
                             "%s registers %zu site(s): secure aggregation needs at least 3 "
                             "(with 2, each site can subtract its own update from the sum and "
                             "learn the other's); register more sites, or accept that with "
                             "--secagg-allow-2, or run in clear with --no-secagg",
                             cfg->registry_path, reg.n);
        }
        *registered = (uint32_t)reg.n;
        if ((rc = moeh_keypair_read(cfg->key_path, &r->kp, err))) {
            moeh_registry_free(&reg);
            return rc;
        }
        /* a site's key pair given as the coordinator's: every handshake would then fail as a
         * wrong server key at the sites; say which file it is instead */
        uint8_t own[32];
        for (size_t i = 0; zmq_z85_decode(own, r->kp->public_z85) && i < reg.n; i++)
            if (memcmp(own, reg.entries[i].key, sizeof own) == 0) {
                moeh_errf(err, -ENOKEY,
                          "--key %s holds the public key %s registers for site '%s': that is a "
                          "site's key pair; the coordinator's own is made with moeh-keygen "
                          "coordinator (coordinator.key)",
                          cfg->key_path, cfg->registry_path, reg.entries[i].site_id);
                moeh_registry_free(&reg);
                return -ENOKEY;
            }
        if ((rc = moeh_zap_start(r->zctx, &reg, &r->zap))) {
            moeh_registry_free(&reg);
            return moeh_errf(err, rc, "cannot start the ZAP handler: %s", moeh_strerror(rc));
        }
    }
    if (!(r->router = zmq_socket(r->zctx, ZMQ_ROUTER)))
        return moeh_errf(err, -zmq_errno(), "cannot create a socket");
    /* never wait on a peer (sndtimeo 0); at most MOEH_COORD_SNDHWM messages queued per peer;
     * ZMTP heartbeats close a connection whose peer answers no PING (a dead host, or a peer
     * that stopped reading so that our PING never reaches it) */
    int one = 1, linger = 0, sndtimeo = 0, sndhwm = MOEH_COORD_SNDHWM;
    /* (ZMTP carries the TTL in deciseconds, 16 bits) */
    int hb_ivl = (int)(cfg->heartbeat_ms < 6553500 ? cfg->heartbeat_ms : 6553500);
    int hb_timeout =
        (int)(cfg->heartbeat_timeout_ms < 6553500 ? cfg->heartbeat_timeout_ms : 6553500);
    int hb_ttl = hb_timeout;
    int64_t maxmsg = MOEH_WIRE_MAX_PART_BYTES;   /* per part: tensors travel in parts */
    int handshake_ivl = MOEH_COORD_HANDSHAKE_MS; /* a connection that never completes CURVE */
    if (zmq_setsockopt(r->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) ||
        zmq_setsockopt(r->router, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(r->router, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) ||
        zmq_setsockopt(r->router, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm) ||
        zmq_setsockopt(r->router, ZMQ_HEARTBEAT_IVL, &hb_ivl, sizeof hb_ivl) ||
        zmq_setsockopt(r->router, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout) ||
        zmq_setsockopt(r->router, ZMQ_HEARTBEAT_TTL, &hb_ttl, sizeof hb_ttl) ||
        zmq_setsockopt(r->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        zmq_setsockopt(r->router, ZMQ_HANDSHAKE_IVL, &handshake_ivl, sizeof handshake_ivl))
        return moeh_errf(err, -zmq_errno(), "socket options: %s", zmq_strerror(zmq_errno()));
    if (!cfg->insecure && (rc = moeh_curve_server(r->router, r->kp)))
        return moeh_errf(err, rc, "CURVE set-up failed: %s", moeh_strerror(rc));
    if (!cfg->insecure && (rc = monitor_start(r, err))) return rc;
    if (zmq_bind(r->router, cfg->bind) != 0)
        return moeh_errf(err, -zmq_errno(), "cannot bind %s: %s", cfg->bind,
                         zmq_strerror(zmq_errno()));
    return 0;
}

/* Says where it listens (log, and --ready-fd). */
static int announce(run_t *r, uint32_t wait_target, moeh_err_t *err)
{
    const moeh_coord_cfg_t *cfg = r->cfg;
    char ep[256];
    size_t eplen = sizeof ep;
    if (zmq_getsockopt(r->router, ZMQ_LAST_ENDPOINT, ep, &eplen) != 0)
        return moeh_errf(err, -zmq_errno(), "cannot read the bound endpoint: %s",
                         zmq_strerror(zmq_errno()));
    guard_start(r, ep);
    MOEH_INFO("listening on %s (%s); waiting for %u sites", ep,
              cfg->insecure ? "INSECURE: no encryption, no admission control" : "CURVE",
              wait_target);
    if (cfg->ready_fd >= 0) {
        dprintf(cfg->ready_fd, "%s\n", ep);
        close(cfg->ready_fd);
    }
    return 0;
}

/* Reads up to 256 waiting messages into the core. 0 or the core's fatal code. The guard scans
 * on the way too (every 16 messages, if its interval has passed): a loop slowed by a flood of
 * messages must not let what waits unread behind them grow for longer than that. */
static int drain(run_t *r, moeh_err_t *fatal)
{
    for (int budget = 0; budget < 256; budget++) {
        if (budget % 16 == 15) guard_tick(r);
        moeh_msg_t m;
        moeh_err_t err = {0};
        int rc = moeh_wire_recv(r->router, 1, moeh_coord_core_limits(r->core), &m, &err);
        if (rc == -EAGAIN) {
            moeh_msg_clear(&m);
            if (r->guard) moeh_connguard_drained(r->guard);
            return 0;
        }
        if (r->guard)
            moeh_connguard_note(r->guard, m.src_fd, rc ? NULL : m.peer, m.wire_bytes, m.wire_parts,
                                moeh_now_ms());
        if (rc)
            moeh_coord_core_on_bad_message(r->core, &m, rc, err.msg, moeh_now_ms());
        else
            rc = moeh_coord_core_on_message(r->core, &m, moeh_now_ms(), fatal);
        moeh_msg_clear(&m);
        if (fatal->msg[0]) return rc ? rc : -EIO;
    }
    return 0;
}

/* The end of a finished run (final.c): the final model goes to the sites; heartbeats, Hellos
 * of sites that rejoin and their acknowledgements are served until every site holds it or
 * --final-wait is over. A signal ends the wait early (the run stays finished). */
static void deliver_final(run_t *r, volatile sig_atomic_t *stop)
{
    moeh_err_t fatal = {0};
    moeh_coord_core_final_begin(r->core, moeh_now_ms());
    while (!moeh_coord_core_final_done(r->core, moeh_now_ms())) {
        if (*stop) {
            MOEH_WARN("stopped while sending the final model: sites without it are told the run "
                      "finished (their agents exit with an error)");
            return;
        }
        zmq_pollitem_t it = {.socket = r->router, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 50) < 0 && zmq_errno() != EINTR) return;
        if (drain(r, &fatal) != 0 || moeh_coord_core_tick(r->core, moeh_now_ms(), &fatal) != 0) {
            MOEH_ERROR("while sending the final model: %s", fatal.msg);
            return;
        }
    }
}

/* rc: the run's result. Only a finished run says FINISHED (agents then exit 0); a signal or a
 * failure says PAUSED with the reason, and agents keep reconnecting for a resumed run. */
static void teardown(run_t *r, int rc, const moeh_err_t *err)
{
    moeh_progress_line_clear();
    if (r->core && r->run_id[0]) {
        if (rc == 0)
            status_update(r, "finished", NULL);
        else
            status_update(r, "paused", err->msg[0] ? err->msg : "coordinator stopped");
    }
    moeh_monitor_stop(&r->mon); /* before its socket closes */
    free(r->hslog);
    r->hslog = NULL;
    if (r->router) {
        if (r->core) {
            if (rc == 0)
                moeh_coord_core_bye_all(r->core, MOEH__BYE_STATUS__BYE_STATUS_FINISHED,
                                        "run finished");
            else
                moeh_coord_core_bye_all(r->core, MOEH__BYE_STATUS__BYE_STATUS_PAUSED,
                                        err->msg[0] ? err->msg : "coordinator stopped");
        }
        /* let the byes go out (linger was 0 so that nothing else blocks), at most 1 s */
        int linger = 1000;
        zmq_setsockopt(r->router, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(r->router);
    }
    moeh_connguard_destroy(&r->guard);
    moeh_zap_destroy(&r->zap);
    if (r->zctx) zmq_ctx_term(r->zctx);
    moeh_keypair_destroy(&r->kp);
    moeh_coord_core_destroy(&r->core);
}

int moeh_coord_run_faulty(const moeh_coord_cfg_t *cfg, const moeh_coord_faults_t *faults,
                          volatile sig_atomic_t *stop, moeh_err_t *err)
{
    run_t r = {.cfg = cfg, .faults = faults};
    r.io = (moeh_coord_io_t){.send = io_send,
                             .registered = io_registered,
                             .site_limits = io_site_limits,
                             .site_val_limit = io_site_val_limit,
                             .round_saved = io_round_saved,
                             .ctx = &r};
    moeh_err_t fatal = {0};
    uint32_t registered;
    r.nofile = raise_nofile();
    /* descriptors kept back for the checkpoint, status and model files: connections cannot take
     * them, whatever ZeroMQ accepts between two scans of the connection guard */
    if (moeh_fd_reserve(8) < 8) MOEH_WARN("could not set aside 8 descriptors for the run's files");
    moeh_coord_replay_t *replay = NULL;
    int rc = 0;
    if (faults && faults->replay_metrics &&
        (rc = moeh_coord_replay_load(faults->replay_metrics, &replay, err)) != 0)
        return rc;
    rc = moeh_coord_core_create(cfg, &r.io, &r.core, err);
    if (!rc && replay) {
        moeh_coord_core_set_replay(r.core, replay);
        MOEH_WARN("replaying the participation recorded in %s (a test run)",
                  faults->replay_metrics);
    }
    if (rc || (rc = open_socket(&r, &registered, err))) goto out;
    moeh_coord_core_start(r.core, registered, moeh_now_ms());
    if ((rc = announce(&r, moeh_coord_core_wait_target(r.core), err))) goto out;
    moeh_coord_status_run_id(cfg->out_dir, cfg->resume, r.run_id, sizeof r.run_id);
    r.st_mark.phase = -1; /* nothing written yet */
    r.pg.phase = -1;
    progress_step(&r, 0);
    status_update(&r, NULL, NULL);
    while (!*stop && moeh_coord_core_phase(r.core) != MOEH_COORD_DONE) {
        zmq_pollitem_t it[2] = {
            {.socket = r.router, .events = ZMQ_POLLIN},
            {.socket = r.mon ? moeh_monitor_socket(r.mon) : NULL, .events = ZMQ_POLLIN}};
        if (zmq_poll(it, r.mon ? 2 : 1, 50) < 0 && zmq_errno() != EINTR) {
            rc = moeh_errf(err, -zmq_errno(), "poll failed: %s", zmq_strerror(zmq_errno()));
            goto out;
        }
        if (cfg->reload && *cfg->reload) {
            *cfg->reload = 0;
            if (r.zap) reload_registry(&r);
        }
        monitor_drain(&r); /* first: a failed connection's address is soon gone */
        if (drain(&r, &fatal) != 0) break;
        guard_tick(&r); /* right after a drain: a fresh count of what each peer has unread */
        progress_step(&r, 1);
        if (moeh_coord_core_tick(r.core, moeh_now_ms(), &fatal) != 0) break;
        progress_step(&r, 0);
        status_update(&r, NULL, NULL);
    }
    moeh_progress_line_clear(); /* the final tables go to stdout */
    if (fatal.msg[0]) {
        rc = moeh_errf(err, -ETIMEDOUT, "%s", fatal.msg);
        goto out;
    }
    if (*stop && moeh_coord_core_phase(r.core) != MOEH_COORD_DONE) {
        rc = moeh_errf(err, -EINTR, "stopped by a signal during round %u",
                       moeh_coord_core_round(r.core));
        goto out;
    }
    rc = moeh_coord_core_finish(r.core, err);
    if (rc == 0) deliver_final(&r, stop);
out:
    teardown(&r, rc, err);
    moeh_coord_replay_destroy(&replay);
    (void)moeh_fd_reserve(0);
    return rc;
}

int moeh_coord_run(const moeh_coord_cfg_t *cfg, volatile sig_atomic_t *stop, moeh_err_t *err)
{
    return moeh_coord_run_faulty(cfg, NULL, stop, err);
}
