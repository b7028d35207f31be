/* test_connguard.c - the connection guard's common bound (coordinator/moeh_connguard.h), in
 * process on real loopback connections and a fake clock: many honest connections whose bytes
 * are read as they come are never shut down however fast they send together (issue 14: a
 * common rate budget shut honest sites at 100 of them), and when connections together hold
 * more than total_bytes sent and not read, the one holding the most goes first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_connguard.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { MAX_CONNS = 100 };

typedef struct {
    int lfd;
    char endpoint[64];
    int client[MAX_CONNS], server[MAX_CONNS];
    size_t n;
} net_t;

static void net_open(net_t *t, size_t n)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    t->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(t->lfd >= 0);
    assert_int_equal(bind(t->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(t->lfd, MAX_CONNS), 0);
    assert_int_equal(getsockname(t->lfd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(t->endpoint, sizeof t->endpoint, "tcp://127.0.0.1:%u", ntohs(sa.sin_port));
    assert_true(n <= MAX_CONNS);
    t->n = n;
    for (size_t i = 0; i < n; i++) {
        t->client[i] = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(t->client[i] >= 0);
        assert_int_equal(connect(t->client[i], (struct sockaddr *)&sa, sizeof sa), 0);
        t->server[i] = accept(t->lfd, NULL, NULL);
        assert_true(t->server[i] >= 0);
    }
}

static void net_close(net_t *t)
{
    for (size_t i = 0; i < t->n; i++) {
        close(t->client[i]);
        close(t->server[i]);
    }
    close(t->lfd);
}

/* The kernel's count of bytes received on fd. */
static uint64_t received(int fd)
{
    struct tcp_info ti;
    socklen_t tl = sizeof ti;
    memset(&ti, 0, sizeof ti);
    assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl), 0);
    return ti.tcpi_bytes_received;
}

/* Sends `bytes` from client i and waits until the server side has received them all. */
static void send_all(net_t *t, size_t i, size_t bytes)
{
    static char buf[64 << 10];
    uint64_t want = received(t->server[i]) + bytes;
    while (bytes) {
        size_t k = bytes < sizeof buf ? bytes : sizeof buf;
        ssize_t w = send(t->client[i], buf, k, MSG_NOSIGNAL);
        assert_true(w > 0);
        bytes -= (size_t)w;
    }
    for (int tries = 0; received(t->server[i]) < want && tries < 2000; tries++)
        usleep(1000);
    assert_true(received(t->server[i]) >= want);
}

/* Reads everything waiting on server connection i; returns the byte count. */
static size_t read_all(net_t *t, size_t i)
{
    static char buf[64 << 10];
    size_t got = 0;
    for (;;) {
        ssize_t r = recv(t->server[i], buf, sizeof buf, MSG_DONTWAIT);
        if (r <= 0) break;
        got += (size_t)r;
    }
    return got;
}

/* 1 if the guard shut server connection i down (its client then reads end of file). */
static int was_shut(net_t *t, size_t i)
{
    char c;
    return recv(t->client[i], &c, 1, MSG_DONTWAIT) == 0;
}

/* n loopback connections and a guard over them with this common bound, ticked once at now. */
static moeh_connguard_t *guard_open(net_t *t, size_t n, uint64_t total_bytes, int64_t now)
{
    net_open(t, n);
    moeh_connguard_cfg_t cfg = {.total_bytes = total_bytes, .interval_ms = 10};
    moeh_connguard_t *g = NULL;
    moeh_err_t err = {0};
    assert_int_equal(moeh_connguard_create(&cfg, t->endpoint, &g, &err), 0);
    assert_int_equal(moeh_connguard_tick(g, now), 0);
    return g;
}

/* 100 connections each sending 64 KiB a "round" of 3.5 s, read and noted as messages: 1.8 MB/s
 * together, over 3 times what a 4 MiB common bucket refilled over 8 s would allow, and never
 * more than 64 KiB held at once. None is shut down. */
static void test_many_honest_connections_kept(void **state)
{
    (void)state;
    net_t t;
    int64_t now = 1000;
    moeh_connguard_t *g = guard_open(&t, 100, 4u << 20, now);
    assert_int_equal(moeh_connguard_stats(g).conns, 100);
    for (int round = 0; round < 10; round++) {
        for (size_t i = 0; i < t.n; i++) {
            send_all(&t, i, 64 << 10);
            char key[32];
            snprintf(key, sizeof key, "site-%zu", i);
            size_t got = read_all(&t, i);
            assert_int_equal(got, 64 << 10);
            moeh_connguard_note(g, t.server[i], key, got, 0, now);
        }
        moeh_connguard_drained(g);
        now += 3500;
        assert_int_equal(moeh_connguard_tick(g, now), 0);
    }
    moeh_connguard_stats_t st = moeh_connguard_stats(g);
    assert_int_equal(st.shut_total, 0);
    assert_int_equal(st.conns, 100);
    for (size_t i = 0; i < t.n; i++)
        assert_false(was_shut(&t, i));
    moeh_connguard_destroy(&g);
    assert_null(g);
    net_close(&t);
}

/* Three connections hold 20, 30 and 40 KiB unread (90 KiB) against a common bound of 64 KiB,
 * beside one whose bytes are read: the 40 KiB one goes (50 KiB left, within the bound), the
 * others stay. */
static void test_most_unread_shut_first(void **state)
{
    (void)state;
    net_t t;
    int64_t now = 1000;
    moeh_connguard_t *g = guard_open(&t, 4, 64u << 10, now);
    send_all(&t, 0, 30 << 10);
    send_all(&t, 1, 40 << 10);
    send_all(&t, 2, 20 << 10);
    send_all(&t, 3, 100 << 10); /* read and noted: holds nothing */
    size_t got = read_all(&t, 3);
    moeh_connguard_note(g, t.server[3], "honest", got, 0, now);
    now += 100;
    assert_int_equal(moeh_connguard_tick(g, now), 1);
    moeh_connguard_stats_t st = moeh_connguard_stats(g);
    assert_int_equal(st.shut_total, 1);
    assert_false(was_shut(&t, 0));
    assert_true(was_shut(&t, 1));
    assert_false(was_shut(&t, 2));
    assert_false(was_shut(&t, 3));
    /* the next scan finds the rest within the bound */
    now += 100;
    assert_int_equal(moeh_connguard_tick(g, now), 0);
    moeh_connguard_destroy(&g);
    net_close(&t);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_many_honest_connections_kept),
               cmocka_unit_test(test_most_unread_shut_first))
