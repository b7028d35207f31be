/* test_monitor.c - key and address diagnosis (issue 12 item 5), with the real binaries over
 * CURVE: an agent given a wrong --server-key does not reconnect forever; it exits 3 (refused)
 * within a few seconds with a message naming the key problem: another key than the
 * coordinator's (the coordinator drops the handshake it cannot decrypt, seen by the socket
 * monitor), or the site's own public key (found before connecting). An agent pointed at a
 * plain ZeroMQ peer or at a TCP server that is not ZeroMQ (answering garbage, or nothing at
 * all) says so. The coordinator logs failed
 * handshakes per peer address, once and then in summaries (proto/moeh_monitor.h); the table
 * behind that is tested with a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

#include "moeh_monitor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

/* Starts site-1's agent with server_pub as --server-key, connecting to endpoint, with the
 * options opts (NULL-terminated; NULL: --give-up-ms 30000); returns its log path in log. */
static moeh_proc_t *agent_at_opts(fixture_t *f, const char *endpoint, const char *server_pub,
                                  char **opts, char *log, size_t cap)
{
    char ds[400], key[400], pub[400], out[400];
    snprintf(ds, sizeof ds, "%s/site-1", f->data);
    snprintf(out, sizeof out, "%s/site-out/site-1", f->dir);
    snprintf(key, sizeof key, "%s/site-1.key", f->keys);
    snprintf(pub, sizeof pub, "%s/%s", f->keys, server_pub);
    snprintf(log, cap, "%s/agent.log", f->logs);
    char *dflt[] = {"--give-up-ms", "30000", NULL};
    moeh_proc_t *p = &f->procs[f->n_procs++];
    moeh_err_t err = {0};
    int rc = moeh_localfed_start_agent(p, f->bin, endpoint, "site-1", ds, out, key, pub,
                                       opts ? opts : dflt, log, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    return p;
}

static moeh_proc_t *agent_at(fixture_t *f, const char *endpoint, const char *server_pub, char *log,
                             size_t cap)
{
    return agent_at_opts(f, endpoint, server_pub, NULL, log, cap);
}

static moeh_proc_t *agent_with_server_key(fixture_t *f, const char *server_pub, char *log,
                                          size_t cap)
{
    return agent_at(f, f->endpoint, server_pub, log, cap);
}

static void test_wrong_server_key_named(void **state)
{
    fixture_t *f = *state;
    char log[400];
    start_coordinator_ex(f, "1", "1", "1", NULL, "coordinator.log");
    int64_t t0 = moeh_now_ms();
    moeh_proc_t *a = agent_with_server_key(f, "site-2.pub", log, sizeof log);
    wait_exit(a, 40000, MOEH_EXIT_REFUSED);
    /* well before the 30 s of --give-up-ms (the exit code says refused, not gave up); loose,
     * as agents start slowly on a loaded CI machine (a bound of 8 s failed once under ctest -j2) */
    assert_true(moeh_now_ms() - t0 < 25000);
    assert_true(file_contains(log, "closed the connection during the CURVE handshake"));
    assert_true(file_contains(log, "site-2.pub is not that coordinator's public key"));
}

static void test_own_key_as_server_key_named(void **state)
{
    fixture_t *f = *state;
    char log[400];
    start_coordinator_ex(f, "1", "1", "1", NULL, "coordinator.log");
    moeh_proc_t *a = agent_with_server_key(f, "site-1.pub", log, sizeof log);
    wait_exit(a, 40000, MOEH_EXIT_REFUSED);
    assert_true(file_contains(log, "site-1.pub hold the same public key"));
}

/* A plain ZeroMQ ROUTER (no CURVE): the agent says the peer does not speak CURVE. */
static void test_plain_zmq_peer_named(void **state)
{
    fixture_t *f = *state;
    char log[400], ep[256];
    size_t len = sizeof ep;
    void *ctx = zmq_ctx_new(), *r = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_bind(r, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep, &len), 0);
    int64_t t0 = moeh_now_ms();
    moeh_proc_t *a = agent_at(f, ep, "coordinator.pub", log, sizeof log);
    wait_exit(a, 40000, MOEH_EXIT_REFUSED);
    assert_true(moeh_now_ms() - t0 < 25000);
    assert_true(file_contains(log, "does not speak CURVE"));
    assert_false(file_contains(log, "is not that coordinator's public key"));
    zmq_close(r);
    zmq_ctx_term(ctx);
}

typedef struct {
    int lfd;
    volatile int stop;
} garbage_srv_t;

/* Accepts connections and answers each with an HTTP error, then hangs up. */
static void *garbage_main(void *arg)
{
    garbage_srv_t *g = arg;
    static const char reply[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    while (!g->stop) {
        struct pollfd p = {.fd = g->lfd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        int c = accept(g->lfd, NULL, NULL);
        if (c < 0) continue;
        if (send(c, reply, sizeof reply - 1, MSG_NOSIGNAL) < 0) perror("garbage server");
        usleep(20000);
        close(c);
    }
    return NULL;
}

/* A TCP server on a free loopback port (its endpoint in ep), run by main_fn in thread *th. */
static void serve_loopback(garbage_srv_t *g, void *(*main_fn)(void *), pthread_t *th, char *ep,
                           size_t cap)
{
    *g = (garbage_srv_t){.lfd = socket(AF_INET, SOCK_STREAM, 0)};
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_true(g->lfd >= 0);
    assert_int_equal(bind(g->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(g->lfd, 16), 0);
    assert_int_equal(getsockname(g->lfd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(ep, cap, "tcp://127.0.0.1:%u", ntohs(sa.sin_port));
    assert_int_equal(pthread_create(th, NULL, main_fn, g), 0);
}

/* A TCP server that is not ZeroMQ: the agent says so and quotes what it answered. */
static void test_not_zmq_peer_named(void **state)
{
    fixture_t *f = *state;
    char log[400], ep[64];
    garbage_srv_t g;
    pthread_t th;
    serve_loopback(&g, garbage_main, &th, ep, sizeof ep);
    int64_t t0 = moeh_now_ms();
    moeh_proc_t *a = agent_at(f, ep, "coordinator.pub", log, sizeof log);
    wait_exit(a, 40000, MOEH_EXIT_REFUSED);
    assert_true(moeh_now_ms() - t0 < 25000);
    g.stop = 1;
    pthread_join(th, NULL);
    close(g.lfd);
    assert_true(file_contains(log, "is not a ZeroMQ peer"));
    assert_true(file_contains(log, "HTTP/1.1 400"));
    /* what the probe concludes, directly */
    char what[128];
    assert_int_equal(moeh_monitor_probe("tcp://127.0.0.1:1", 1000, what, sizeof what),
                     MOEH_PROBE_UNREACHABLE);
    assert_int_equal(moeh_monitor_probe("ipc:///tmp/x", 1000, what, sizeof what),
                     MOEH_PROBE_UNSUPPORTED);
}

/* Accepts connections and keeps them open without sending a byte (a server that waits for its
 * client to speak first, such as an HTTP server that has no full request line yet). */
static void *silent_main(void *arg)
{
    garbage_srv_t *g = arg;
    int held[64], n = 0;
    while (!g->stop) {
        struct pollfd p = {.fd = g->lfd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        int c = accept(g->lfd, NULL, NULL);
        if (c < 0) continue;
        if (n < 64)
            held[n++] = c;
        else
            close(c);
    }
    while (n > 0)
        close(held[--n]);
    return NULL;
}

/* A TCP server that accepts and never speaks: the probe says it is silent within its timeout,
 * and the agent, which libzmq would keep in its 30 s handshake past every silence timeout (it
 * logged "no word from the coordinator" for ever), names it. It does not exit 3 for it: a
 * black-holing proxy or firewall in front of a coordinator looks the same, and the site must
 * rejoin once that ends; --give-up-ms ends the wait (exit 4). */
static void test_silent_peer_named(void **state)
{
    fixture_t *f = *state;
    char log[400], ep[64], what[128];
    garbage_srv_t g;
    pthread_t th;
    serve_loopback(&g, silent_main, &th, ep, sizeof ep);
    int64_t t0 = moeh_now_ms();
    assert_int_equal(moeh_monitor_probe(ep, 1000, what, sizeof what), MOEH_PROBE_SILENT);
    int64_t took = moeh_now_ms() - t0;
    assert_true(took >= 900 && took < 10000); /* its 1 s timeout, not a hang */
    assert_non_null(strstr(what, "no byte in"));
    char *opts[] = {"--give-up-ms", "20000", "--silence-timeout-ms", "2000", NULL};
    t0 = moeh_now_ms();
    moeh_proc_t *a = agent_at_opts(f, ep, "coordinator.pub", opts, log, sizeof log);
    wait_exit(a, 60000, MOEH_EXIT_GAVE_UP);
    assert_true(moeh_now_ms() - t0 >= 19000); /* it kept trying until --give-up-ms */
    g.stop = 1;
    pthread_join(th, NULL);
    close(g.lfd);
    assert_true(file_contains(log, "is not a ZeroMQ peer, or the coordinator is unreachable "
                                   "behind a proxy or firewall"));
    assert_true(file_contains(log, "accepts connections and sends nothing"));
}

/* Lines of path containing every one of the needles (NULL-terminated); *summed (if not NULL)
 * gets the sum of the counts N of "N CURVE handshake(s) failed" in them. */
static int count_lines_sum(const char *path, const char *const *needles, unsigned *summed)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, fp)) {
        int all = 1;
        for (size_t i = 0; needles[i]; i++)
            all &= strstr(line, needles[i]) != NULL;
        n += all;
        const char *p = strstr(line, " CURVE handshake");
        unsigned k = 0;
        if (all && summed && p) {
            while (p > line && p[-1] >= '0' && p[-1] <= '9')
                p--;
            if (sscanf(p, "%u CURVE handshake", &k) == 1) *summed += k;
        }
    }
    fclose(fp);
    return n;
}

static int count_lines(const char *path, const char *const *needles)
{
    return count_lines_sum(path, needles, NULL);
}

/* A client with a wrong server key (reconnecting every 100 ms) and plain ZeroMQ clients against
 * a real coordinator: each kind is logged once with the peer's address, then summed up once per
 * window (1 s here, --fault-hslog-window). */
static void test_coordinator_logs_failed_handshakes(void **state)
{
    fixture_t *f = *state;
    char *more[] = {"--fault-hslog-window", "1s", NULL};
    moeh_proc_t *c = start_coordinator_ex2(f, "1", "1", "1", NULL, "coordinator.log", more);
    char clog[400], pub[41], sec[41], wrong_pub[41], wrong_sec[41];
    snprintf(clog, sizeof clog, "%s/coordinator.log", f->logs);
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    assert_int_equal(zmq_curve_keypair(wrong_pub, wrong_sec), 0);
    void *ctx = zmq_ctx_new();
    void *w = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, ivl = 100;
    assert_int_equal(zmq_setsockopt(w, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_setsockopt(w, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl), 0);
    assert_int_equal(zmq_setsockopt(w, ZMQ_CURVE_SERVERKEY, wrong_pub, 40), 0);
    assert_int_equal(zmq_setsockopt(w, ZMQ_CURVE_PUBLICKEY, pub, 40), 0);
    assert_int_equal(zmq_setsockopt(w, ZMQ_CURVE_SECRETKEY, sec, 40), 0);
    assert_int_equal(zmq_connect(w, f->endpoint), 0);
    for (int i = 0; i < 6; i++) { /* plain clients: one attempt each, 400 ms apart */
        void *p = zmq_socket(ctx, ZMQ_DEALER);
        assert_int_equal(zmq_setsockopt(p, ZMQ_LINGER, &linger, sizeof linger), 0);
        assert_int_equal(zmq_connect(p, f->endpoint), 0);
        usleep(400000);
        zmq_close(p);
    }
    usleep(300000);
    zmq_close(w);
    zmq_ctx_term(ctx);
    usleep(1500000); /* a window passes: the last summaries are written */
    moeh_proc_stop(c, 5000);
    static const char *const wrong_first[] = {"tcp://127.0.0.1:", "CURVE handshake failed (",
                                              "wrong coordinator key", NULL};
    /* a first line names the address, or "an unknown address" when the client closed before
     * its address was read */
    static const char *const plain_first[] = {"CURVE handshake failed (", "not a CURVE client",
                                              NULL};
    static const char *const wrong_sum[] = {"tcp://127.0.0.1:", "CURVE handshakes failed in the",
                                            "wrong coordinator key", NULL};
    static const char *const plain_any[] = {"CURVE handshake", "not a CURVE client", NULL};
    static const char *const any[] = {"CURVE handshake", NULL};
    unsigned summed = 0; /* failures counted in the summaries: many more than the lines */
    int n_any = count_lines(clog, any), n_wsum = count_lines_sum(clog, wrong_sum, &summed);
    /* a kind quiet for a whole window (the plain clients come 400 ms apart, more under load)
     * starts again with a first line: one or two of each */
    int n_wfirst = count_lines(clog, wrong_first), n_pfirst = count_lines(clog, plain_first);
    /* six plain clients make at least one plain line. Under load (CI, the sanitizers) a client
     * that closes before the server reads its greeting is classed "failed during the handshake"
     * instead, so not every plain client is a plain line, and the first may be from an unknown
     * address (seen in CI 2026-12-06: one line for six clients). */
    int n_plain = count_lines(clog, plain_any);
    if (n_wfirst < 1 || n_wfirst > 2 || n_pfirst < 1 || n_pfirst > 4 || n_wsum < 1 || n_wsum > 4 ||
        n_plain < 1 || n_any > 20 || summed < 2 * (unsigned)n_wsum) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "grep -i handshake '%s' >&2", clog);
        if (system(cmd) != 0) print_error("no handshake line in %s\n", clog);
        fail_msg("expected one first line per kind and a few summaries (%d lines; %d summaries "
                 "of the wrong key summing %u failures)",
                 n_any, n_wsum, summed);
    }
}

/* The table behind those lines, with a fake clock: first line at once, then summaries at most
 * once per window, per (IP, kind); bounded, the least recently seen evicted. */
static void test_hslog_rate_limit(void **state)
{
    (void)state;
    moeh_hslog_t *t = malloc(sizeof *t);
    assert_non_null(t);
    moeh_hslog_init(t, 60000);
    char line[512];
    assert_int_equal(
        moeh_hslog_note(t, "tcp://10.0.0.5:51234", MOEH_MON_WRONG_KEY, 1000, line, sizeof line), 1);
    assert_non_null(strstr(line, "tcp://10.0.0.5:51234: CURVE handshake failed (a site with"));
    int logged = 0;
    for (int i = 0; i < 37; i++) /* other source ports, same IP: counted */
        logged += moeh_hslog_note(t, "tcp://10.0.0.5:40000", MOEH_MON_WRONG_KEY, 2000 + i * 100,
                                  line, sizeof line);
    assert_int_equal(logged, 0);
    assert_int_equal(moeh_hslog_flush(t, 30000, line, sizeof line), 0);
    assert_int_equal(moeh_hslog_flush(t, 61000, line, sizeof line), 1);
    assert_non_null(strstr(line, "37 CURVE handshakes failed in the last 60 s (a site with"));
    assert_int_equal(moeh_hslog_flush(t, 62000, line, sizeof line), 0);
    /* another kind from the same IP is its own entry */
    assert_int_equal(
        moeh_hslog_note(t, "tcp://10.0.0.5:1", MOEH_MON_NOT_CURVE, 62000, line, sizeof line), 1);
    assert_non_null(strstr(line, "not a CURVE client"));
    /* many addresses: bounded, the oldest evicted, each new one logged once */
    for (int i = 0; i < MOEH_HSLOG_CAP + 10; i++) {
        char peer[64];
        snprintf(peer, sizeof peer, "tcp://192.168.%d.%d:5", i / 250, i % 250);
        assert_int_equal(moeh_hslog_note(t, peer, MOEH_MON_WRONG_KEY, 70000 + i, line, sizeof line),
                         1);
    }
    assert_int_equal(t->n, MOEH_HSLOG_CAP);
    assert_true(t->evicted >= 10);
    /* after a quiet window, a failure is news again */
    assert_int_equal(
        moeh_hslog_note(t, "tcp://192.168.1.9:7", MOEH_MON_WRONG_KEY, 500000, line, sizeof line),
        1);
    assert_non_null(strstr(line, "CURVE handshake failed ("));
    /* the event stream of a server: ACCEPTED(fd) .. failure .. DISCONNECTED(fd) */
    moeh_hslog_init(t, 60000);
    moeh_mon_event_t ev = {.kind = MOEH_MON_ACCEPTED, .fd = 9, .peer = "tcp://10.1.2.3:999"};
    assert_int_equal(moeh_hslog_event(t, &ev, 1, line, sizeof line), 0);
    ev = (moeh_mon_event_t){.kind = MOEH_MON_NOT_CURVE, .fd = -1};
    assert_int_equal(moeh_hslog_event(t, &ev, 2, line, sizeof line), 0);
    ev = (moeh_mon_event_t){.kind = MOEH_MON_DISCONNECTED, .fd = 9};
    assert_int_equal(moeh_hslog_event(t, &ev, 3, line, sizeof line), 1);
    assert_non_null(strstr(line, "tcp://10.1.2.3:999: CURVE handshake failed (not a CURVE"));
    /* a clean disconnection is not a failure */
    ev = (moeh_mon_event_t){.kind = MOEH_MON_DISCONNECTED, .fd = 9};
    assert_int_equal(moeh_hslog_event(t, &ev, 4, line, sizeof line), 0);
    free(t);
}

/* Raw monitor frames decoded and classified. */
static void test_monitor_decode(void **state)
{
    (void)state;
    unsigned char fr[6];
    uint16_t e = ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL;
    uint32_t v = ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH;
    memcpy(fr, &e, 2), memcpy(fr + 2, &v, 4);
    moeh_mon_event_t ev;
    moeh_monitor_decode(fr, sizeof fr, "tcp://1.2.3.4:5", 15, &ev);
    assert_int_equal(ev.kind, MOEH_MON_NOT_CURVE);
    assert_string_equal(ev.endpoint, "tcp://1.2.3.4:5");
    v = ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC;
    memcpy(fr + 2, &v, 4);
    moeh_monitor_decode(fr, sizeof fr, NULL, 0, &ev);
    assert_int_equal(ev.kind, MOEH_MON_WRONG_KEY);
    e = ZMQ_EVENT_ACCEPTED, v = 17;
    memcpy(fr, &e, 2), memcpy(fr + 2, &v, 4);
    moeh_monitor_decode(fr, sizeof fr, NULL, 0, &ev);
    assert_int_equal(ev.kind, MOEH_MON_ACCEPTED);
    assert_int_equal(ev.fd, 17);
    /* ZAP's status: 400 refuses the key (the agent stops), 500 is the handshake budget's "try
     * later" (the agent logs it and its ZeroMQ reconnects) */
    e = ZMQ_EVENT_HANDSHAKE_FAILED_AUTH, v = 400;
    memcpy(fr, &e, 2), memcpy(fr + 2, &v, 4);
    moeh_monitor_decode(fr, sizeof fr, NULL, 0, &ev);
    assert_int_equal(ev.kind, MOEH_MON_AUTH_REFUSED);
    v = 500;
    memcpy(fr + 2, &v, 4);
    moeh_monitor_decode(fr, sizeof fr, NULL, 0, &ev);
    assert_int_equal(ev.kind, MOEH_MON_AUTH_LATER);
    moeh_monitor_decode(fr, 3, NULL, 0, &ev); /* short: nothing */
    assert_int_equal(ev.kind, MOEH_MON_OTHER);
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    cmocka_unit_test(test_monitor_decode), cmocka_unit_test(test_hslog_rate_limit),
                    FED_TEST(test_wrong_server_key_named),
                    FED_TEST(test_own_key_as_server_key_named), FED_TEST(test_plain_zmq_peer_named),
                    FED_TEST(test_not_zmq_peer_named), FED_TEST(test_silent_peer_named),
                    FED_TEST(test_coordinator_logs_failed_handshakes))
