/* test_faultproxy.c - moeh-faultproxy against an echo server on 127.0.0.1.
 *
 * Each test starts an echo server (a forked process, one child per connection) and the proxy
 * binary ($MOEH_BIN_DIR/moeh-faultproxy) in front of it, then measures through the proxy: the
 * round trip under delay + jitter, the throughput under a rate cap, the reset of a connection,
 * bytes held by a black hole and delivered after it, backpressure with a small buffer, byte
 * order, and the command line. Every process is killed and reaped in the teardown, also when an
 * assertion fails. Timing bounds leave room for a loaded 2-core machine. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "../cmocka_main.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    pid_t echo_pid, proxy_pid;
    int echo_port, proxy_port;
    int64_t proxy_started_ms;
} fx_t;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the echo server ------------------------------------------------------------------------ */

static void echo_conn(int fd)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w <= 0) _exit(0);
            off += w;
        }
    }
    _exit(0);
}

/* Starts the echo server in its own process group; returns its pid, port in *port. */
static pid_t echo_start(int *port)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(lfd, 16), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a test that died */
        setpgid(0, 0);
        signal(SIGCHLD, SIG_IGN); /* no zombies from the per-connection children */
        for (;;) {
            int fd = accept(lfd, NULL, NULL);
            if (fd < 0) continue;
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (fork() == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(lfd);
                echo_conn(fd);
            }
            close(fd);
        }
    }
    setpgid(pid, pid);
    close(lfd);
    return pid;
}

/* ---- the proxy ------------------------------------------------------------------------------ */

static const char *proxy_path(void)
{
    static char path[4096];
    const char *dir = getenv("MOEH_BIN_DIR");
    snprintf(path, sizeof path, "%s/moeh-faultproxy", dir ? dir : "bin");
    return path;
}

/* Runs the proxy with these fault options (NULL-terminated) in front of port target; waits
 * for its --ready-fd line and returns its pid, its port in *port. */
static pid_t proxy_start(int target, int *port, const char *const *faults)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    char tgt[64], fdarg[16];
    snprintf(tgt, sizeof tgt, "127.0.0.1:%d", target);
    snprintf(fdarg, sizeof fdarg, "%d", pfd[1]);
    const char *argv[40] = {proxy_path(), "--listen",   "127.0.0.1:0", "--target",
                            tgt,          "--ready-fd", fdarg};
    int n = 7;
    for (int i = 0; faults && faults[i] && n < 38; i++)
        argv[n++] = faults[i];
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(pfd[0]);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    char line[128] = {0};
    size_t got = 0;
    struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
    while (got < sizeof line - 1 && !memchr(line, '\n', got)) {
        if (poll(&pf, 1, 5000) <= 0) break;
        ssize_t r = read(pfd[0], line + got, sizeof line - 1 - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(pfd[0]);
    const char *colon = strrchr(line, ':');
    if (!colon) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("the proxy did not report its address (got '%s')", line);
    }
    *port = atoi(colon + 1);
    return pid;
}

static int fx_setup_with(void **state, const char *const *faults)
{
    fx_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->echo_pid = echo_start(&f->echo_port);
    f->proxy_started_ms = now_ms();
    f->proxy_pid = proxy_start(f->echo_port, &f->proxy_port, faults);
    *state = f;
    return 0;
}

/* Stops the proxy with SIGTERM (it must exit 0) and kills the echo server's group. */
static int fx_teardown(void **state)
{
    fx_t *f = *state;
    int status = 0, proxy_ok = 1;
    if (f->proxy_pid > 0) {
        kill(f->proxy_pid, SIGTERM);
        int64_t until = now_ms() + 5000;
        pid_t w;
        while ((w = waitpid(f->proxy_pid, &status, WNOHANG)) == 0 && now_ms() < until)
            usleep(10000);
        if (w == 0) {
            kill(f->proxy_pid, SIGKILL);
            waitpid(f->proxy_pid, &status, 0);
            proxy_ok = 0;
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            proxy_ok = 0;
        }
    }
    if (f->echo_pid > 0) {
        kill(-f->echo_pid, SIGKILL);
        waitpid(f->echo_pid, NULL, 0);
    }
    free(f);
    return proxy_ok ? 0 : -1; /* a proxy that does not stop cleanly on SIGTERM fails */
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Reads exactly n bytes within timeout_ms; returns the bytes read (< n on timeout/EOF), or
 * -errno on an error. */
static ssize_t read_full(int fd, void *buf, size_t n, int timeout_ms)
{
    size_t got = 0;
    int64_t until = now_ms() + timeout_ms;
    while (got < n) {
        int left = (int)(until - now_ms());
        if (left <= 0) break;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, left) <= 0) break;
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0) return -errno;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static void write_full(int fd, const void *buf, size_t n)
{
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, (const char *)buf + off, n - off);
        assert_true(w > 0);
        off += (size_t)w;
    }
}

static uint8_t pattern(size_t i)
{
    uint32_t x = (uint32_t)i * 2654435761u;
    return (uint8_t)(x >> 24);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static int setup_delay(void **state)
{
    const char *const f[] = {"--delay-ms", "100", "--jitter-ms", "20", NULL};
    return fx_setup_with(state, f);
}

/* Round trips of 16 bytes: each direction is held 100 +/- 20 ms, so 160..240 ms plus a little. */
static void test_delay(void **state)
{
    fx_t *f = *state;
    int fd = connect_to(f->proxy_port);
    double sum = 0, lo = 1e9, hi = 0;
    const int n = 12;
    for (int i = 0; i < n; i++) {
        char msg[16], back[16];
        snprintf(msg, sizeof msg, "ping %010d", i);
        double t = now_s();
        write_full(fd, msg, 16);
        assert_int_equal(read_full(fd, back, 16, 3000), 16);
        double rtt = (now_s() - t) * 1000;
        assert_memory_equal(msg, back, 16);
        sum += rtt;
        lo = rtt < lo ? rtt : lo;
        hi = rtt > hi ? rtt : hi;
    }
    print_message("delay 100 +/- 20 ms each way: round trip min %.1f mean %.1f max %.1f ms\n", lo,
                  sum / n, hi);
    assert_true(lo >= 159.0);         /* never early: the bound that matters */
    assert_true(hi <= 240.0 + 100.0); /* late only by scheduling on a loaded machine */
    assert_true(sum / n >= 170.0 && sum / n <= 250.0);
    close(fd);
}

/* 300 numbered messages written 1 ms apart through the jitter come back in order. */
static void test_order_under_jitter(void **state)
{
    fx_t *f = *state;
    int fd = connect_to(f->proxy_port);
    char all[300 * 8 + 1], back[300 * 8]; /* + 1: room for the last message's NUL */
    for (int i = 0; i < 300; i++) {
        snprintf(all + 8 * i, 9, "%07d|", i);
        write_full(fd, all + 8 * i, 8);
        usleep(1000);
    }
    assert_int_equal(read_full(fd, back, sizeof back, 5000), (ssize_t)sizeof back);
    assert_memory_equal(all, back, sizeof back);
    close(fd);
}

static int setup_rate(void **state)
{
    const char *const f[] = {"--rate-kbit", "16000", NULL}; /* 2,000,000 bytes/s */
    return fx_setup_with(state, f);
}

/* 4 MB echoed through a 16 Mbit/s cap in each direction: about 2 s, the bytes in order. */
static void test_rate(void **state)
{
    fx_t *f = *state;
    const size_t total = 4000000;
    uint8_t *out = malloc(total), *in = malloc(total);
    assert_non_null(out);
    assert_non_null(in);
    for (size_t i = 0; i < total; i++)
        out[i] = pattern(i);
    int fd = connect_to(f->proxy_port);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    size_t sent = 0, got = 0;
    double t0 = now_s(), t_first = 0;
    while (got < total && now_s() - t0 < 20) {
        struct pollfd pf = {.fd = fd, .events = POLLIN | (sent < total ? POLLOUT : 0)};
        poll(&pf, 1, 1000);
        if (sent < total && (pf.revents & POLLOUT)) {
            ssize_t w = write(fd, out + sent, total - sent);
            if (w > 0) sent += (size_t)w;
        }
        if (pf.revents & POLLIN) {
            ssize_t r = read(fd, in + got, total - got);
            assert_true(r > 0);
            if (got == 0) t_first = now_s();
            got += (size_t)r;
        }
    }
    double secs = now_s() - t_first;
    assert_int_equal(got, total);
    assert_memory_equal(out, in, total);
    double kbit = (double)total * 8 / 1000 / secs;
    print_message("rate cap 16000 kbit/s: %zu bytes echoed in %.2f s = %.0f kbit/s\n", total, secs,
                  kbit);
    /* The cap is a bound, asserted; how close the proxy comes to it depends on the machine's
     * load (10.8 of 16 Mbit/s once with a benchmark running beside it), so the lower side is only
     * that every byte arrived within the 20 s above (>= 1.6 Mbit/s). */
    assert_true(kbit <= 16000 * 1.05);
    close(fd);
    free(out);
    free(in);
}

static int setup_reset(void **state)
{
    const char *const f[] = {"--reset-every-ms", "400", NULL};
    return fx_setup_with(state, f);
}

/* A connection works, then is reset (ECONNRESET, not EOF) 400 ms after it was accepted; a new
 * connection works again. */
static void test_reset(void **state)
{
    fx_t *f = *state;
    for (int k = 0; k < 2; k++) {
        int64_t t0 = now_ms();
        int fd = connect_to(f->proxy_port);
        char back[5];
        write_full(fd, "hello", 5);
        assert_int_equal(read_full(fd, back, 5, 2000), 5);
        assert_memory_equal(back, "hello", 5);
        ssize_t r = read_full(fd, back, 1, 3000);
        int64_t dt = now_ms() - t0;
        print_message("connection %d reset after %lld ms (read: %zd)\n", k, (long long)dt, r);
        assert_int_equal(r, -ECONNRESET);
        assert_true(dt >= 390 && dt <= 1500);
        close(fd);
    }
}

static int setup_plain(void **state)
{
    return fx_setup_with(state, NULL);
}

/* SIGUSR1: bytes sent in a black hole do not arrive and the connection stays open; SIGUSR2:
 * they arrive, in order, and the connection keeps working. */
static void test_blackhole_signals(void **state)
{
    fx_t *f = *state;
    int fd = connect_to(f->proxy_port);
    char back[64];
    write_full(fd, "before", 6);
    assert_int_equal(read_full(fd, back, 6, 2000), 6);
    kill(f->proxy_pid, SIGUSR1);
    usleep(100000); /* the proxy reads its signalfd; nothing here can observe it sooner */
    write_full(fd, "during-1", 8);
    write_full(fd, "during-2", 8);
    assert_int_equal(read_full(fd, back, 16, 700), 0); /* nothing comes back, no EOF */
    /* a connection made during the black hole is accepted but not served */
    int fd2 = connect_to(f->proxy_port);
    write_full(fd2, "late", 4);
    assert_int_equal(read_full(fd2, back, 4, 300), 0);
    int64_t t = now_ms();
    kill(f->proxy_pid, SIGUSR2);
    assert_int_equal(read_full(fd, back, 16, 2000), 16);
    print_message("black-holed bytes delivered %lld ms after SIGUSR2\n", (long long)(now_ms() - t));
    assert_memory_equal(back, "during-1during-2", 16);
    assert_int_equal(read_full(fd2, back, 4, 2000), 4);
    assert_memory_equal(back, "late", 4);
    write_full(fd, "after", 5);
    assert_int_equal(read_full(fd, back, 5, 2000), 5);
    assert_memory_equal(back, "after", 5);
    close(fd);
    close(fd2);
}

static int setup_bh_schedule(void **state)
{
    const char *const f[] = {"--blackhole-at-ms", "200", "--blackhole-for-ms", "1000", NULL};
    return fx_setup_with(state, f);
}

/* --blackhole-at-ms 200 --blackhole-for-ms 1000: a message sent at ~400 ms comes back at
 * ~1200 ms after the proxy started. */
static void test_blackhole_schedule(void **state)
{
    fx_t *f = *state;
    int fd = connect_to(f->proxy_port);
    int64_t wait = f->proxy_started_ms + 400 - now_ms();
    if (wait > 0) usleep((useconds_t)wait * 1000);
    write_full(fd, "scheduled", 9);
    char back[9];
    assert_int_equal(read_full(fd, back, 9, 4000), 9);
    int64_t at = now_ms() - f->proxy_started_ms;
    print_message("sent at ~400 ms, echoed at %lld ms after the proxy started\n", (long long)at);
    assert_memory_equal(back, "scheduled", 9);
    assert_true(at >= 1150 && at <= 2500);
    close(fd);
}

static int setup_backpressure(void **state)
{
    const char *const f[] = {"--buffer-kb", "64", NULL};
    return fx_setup_with(state, f);
}

/* In a black hole the proxy buffers at most --buffer-kb and then stops reading: the sender
 * blocks (EAGAIN) after a bounded amount; everything arrives in order afterwards. */
static void test_backpressure(void **state)
{
    fx_t *f = *state;
    int fd = connect_to(f->proxy_port);
    int small = 65536;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    kill(f->proxy_pid, SIGUSR1);
    usleep(100000);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    const size_t cap = 64u << 20;
    uint8_t *out = malloc(cap);
    assert_non_null(out);
    for (size_t i = 0; i < cap; i++)
        out[i] = pattern(i);
    size_t sent = 0;
    int64_t idle_since = now_ms();
    while (sent < cap && now_ms() - idle_since < 500) {
        ssize_t w = write(fd, out + sent, cap - sent > 65536 ? 65536 : cap - sent);
        if (w > 0) {
            sent += (size_t)w;
            idle_since = now_ms();
        } else {
            usleep(5000);
        }
    }
    print_message("black hole, 64 KiB proxy buffer: the sender stalled after %zu bytes\n", sent);
    assert_true(sent < cap); /* it stalled: the proxy stopped reading */
    kill(f->proxy_pid, SIGUSR2);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    /* drain the echo while writing the rest would deadlock on small buffers: read it all */
    uint8_t *in = malloc(sent);
    assert_non_null(in);
    assert_int_equal(read_full(fd, in, sent, 10000), (ssize_t)sent);
    assert_memory_equal(out, in, sent);
    close(fd);
    free(out);
    free(in);
}

/* ---- the command line ----------------------------------------------------------------------- */

static int run_cli(const char *const *args, char *out, size_t cap)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    const char *argv[16] = {proxy_path()};
    int n = 1;
    for (int i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        close(pfd[0]);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    ssize_t got = read_full(pfd[0], out, cap - 1, 5000);
    out[got > 0 ? got : 0] = 0;
    close(pfd[0]);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void test_cli(void **state)
{
    (void)state;
    char out[8192];
    const char *const help[] = {"--help", NULL};
    assert_int_equal(run_cli(help, out, sizeof out), 0);
    assert_non_null(strstr(out, "--blackhole-at-ms"));
    const char *const none[] = {NULL};
    assert_int_equal(run_cli(none, out, sizeof out), 2);
    assert_non_null(strstr(out, "--listen and --target are required"));
    const char *const jit[] = {"--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--delay-ms",
                               "10",       "--jitter-ms", "20",       NULL};
    assert_int_equal(run_cli(jit, out, sizeof out), 2);
    assert_non_null(strstr(out, "exceeds its delay"));
    const char *const bad[] = {"--listen",    "127.0.0.1:0", "--target", "127.0.0.1:9",
                               "--rate-kbit", "fast",        NULL};
    assert_int_equal(run_cli(bad, out, sizeof out), 2);
    assert_non_null(strstr(out, "--rate-kbit wants a whole number"));
    const char *const addr[] = {"--listen", "127.0.0.1", "--target", "127.0.0.1:9", NULL};
    assert_int_equal(run_cli(addr, out, sizeof out), 2);
    assert_non_null(strstr(out, "HOST:PORT"));
    const char *const unk[] = {"--frobnicate", NULL};
    assert_int_equal(run_cli(unk, out, sizeof out), 2);
    assert_non_null(strstr(out, "unknown option"));
}

/* A target that refuses: the client sees its connection reset, the proxy keeps running. */
static void test_target_refuses(void **state)
{
    (void)state;
    int dead_port;
    pid_t echo = echo_start(&dead_port);
    kill(-echo, SIGKILL);
    waitpid(echo, NULL, 0);
    usleep(50000);
    int port;
    pid_t px = proxy_start(dead_port, &port, NULL);
    int fd = connect_to(port);
    char c;
    ssize_t r = read_full(fd, &c, 1, 2000);
    assert_true(r == -ECONNRESET || r == 0);
    close(fd);
    kill(px, SIGTERM);
    int status;
    waitpid(px, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* A client that sends and then resets its connection during a black hole: when the black hole
 * ends, the target gets the bytes first, then the reset (ECONNRESET), as over a real path. */
static void test_reset_passed_on_after_data(void **state)
{
    (void)state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(lfd, 4), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
    int port;
    pid_t px = proxy_start(ntohs(a.sin_port), &port, NULL);
    int fd = connect_to(port);
    struct pollfd pf = {.fd = lfd, .events = POLLIN};
    assert_int_equal(poll(&pf, 1, 3000), 1);
    int tfd = accept(lfd, NULL, NULL);
    assert_true(tfd >= 0);
    kill(px, SIGUSR1);
    usleep(100000);
    write_full(fd, "last words", 10);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd); /* RST */
    usleep(200000);
    char back[16];
    assert_int_equal(read_full(tfd, back, 10, 300), 0); /* held by the black hole */
    kill(px, SIGUSR2);
    assert_int_equal(read_full(tfd, back, 10, 2000), 10);
    assert_memory_equal(back, "last words", 10);
    assert_int_equal(read_full(tfd, back, 1, 2000), -ECONNRESET);
    close(tfd);
    close(lfd);
    kill(px, SIGTERM);
    int status;
    waitpid(px, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

MOEH_TEST_MAIN_INIT(
    signal(SIGPIPE, SIG_IGN), NULL, NULL, cmocka_unit_test(test_cli),
    cmocka_unit_test(test_target_refuses), cmocka_unit_test(test_reset_passed_on_after_data),
    cmocka_unit_test_setup_teardown(test_delay, setup_delay, fx_teardown),
    cmocka_unit_test_setup_teardown(test_order_under_jitter, setup_delay, fx_teardown),
    cmocka_unit_test_setup_teardown(test_rate, setup_rate, fx_teardown),
    cmocka_unit_test_setup_teardown(test_reset, setup_reset, fx_teardown),
    cmocka_unit_test_setup_teardown(test_blackhole_signals, setup_plain, fx_teardown),
    cmocka_unit_test_setup_teardown(test_blackhole_schedule, setup_bh_schedule, fx_teardown),
    cmocka_unit_test_setup_teardown(test_backpressure, setup_backpressure, fx_teardown))
