/* test_hostile.c - a hostile admitted key against a real moeh-coordinator process with the three
 * real agents (issue 13): it floods one-byte messages from a connection with a tiny receive
 * buffer that never reads (finding 1: every Error reply used to block the loop for the 2 s send
 * timeout until honest agents gave up), and it sends 1,000 Hellos while TRAIN is open and counts
 * the bytes it gets back (finding 8: a full model per Hello). Where the attacker never says
 * Hello, the run's final model must equal a clean run's byte for byte. The same defences
 * in-process on the fake clock: test_hostile_core.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

#include <stdlib.h>

/* Finding 1: while the honest federation runs, one admitted key (no Hello) floods one-byte
 * messages and reads nothing. The run completes, its final model is the clean run's, and its
 * time stays within a bound of the clean run's. */
static void test_hostile_flood_unread(void **state)
{
    fixture_t *f = *state;
    register_site_x(f); /* in both runs: the registry is all that differs from a clean run */
    int64_t t0 = moeh_now_ms();
    run_all(f, "clean", "2", NULL);
    int64_t clean_ms = moeh_now_ms() - t0;
    char clean[300];
    snprintf(clean, sizeof clean, "%s", f->out);

    snprintf(f->out, sizeof f->out, "%s/attacked", f->dir);
    t0 = moeh_now_ms();
    moeh_proc_t *c =
        start_coordinator_ex2(f, "2", "3", "3", NULL, "coordinator-attacked.log", NULL);
    moeh_proc_t *a[N_SITES];
    start_all_agents(f, a, NULL);
    void *ctx = zmq_ctx_new();
    void *s = fed_flood_socket(f, ctx);
    uint64_t sent = 0, full = 0;
    const char byte = 0x5a;
    while (moeh_proc_wait(c, 0) == -ETIMEDOUT) {
        assert_true(moeh_now_ms() - t0 < 120000);
        for (int i = 0; i < 1000; i++) {
            if (zmq_send(s, &byte, 1, ZMQ_DONTWAIT) == 1) {
                sent++;
            } else {
                full++;
                zmq_pollitem_t it = {.socket = s, .events = ZMQ_POLLOUT};
                zmq_poll(&it, 1, 1);
            }
        }
    }
    int64_t attacked_ms = moeh_now_ms() - t0;
    zmq_close(s);
    zmq_ctx_term(ctx);
    print_message("flood of %llu one-byte messages (%llu times the queue was full), never read: "
                  "run %.1f s vs %.1f s clean\n",
                  (unsigned long long)sent, (unsigned long long)full, attacked_ms / 1000.0,
                  clean_ms / 1000.0);
    assert_int_equal(moeh_proc_exit_code(c), 0);
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 10000, 0);
    assert_true(sent > 10000); /* the attack took place */
    char log[400];
    snprintf(log, sizeof log, "%s/coordinator-attacked.log", f->logs);
    assert_true(file_contains(log, "over its rate of Error reply messages"));
    assert_false(file_contains(log, "rejoined")); /* no honest agent timed out */
    assert_true(attacked_ms < 3 * clean_ms + 20000);
    assert_same_model(clean, f->out);
}

/* Bytes of every message waiting on r's socket, read for up to ms (heartbeats included). */
static uint64_t read_bytes_for(rogue_t *r, int ms, uint64_t *n_msgs)
{
    uint64_t bytes = 0;
    int64_t end = moeh_now_ms() + ms;
    while (moeh_now_ms() < end) {
        zmq_pollitem_t it = {.socket = r->sock, .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 50);
        zmq_msg_t m;
        zmq_msg_init(&m);
        while (zmq_msg_recv(&m, r->sock, ZMQ_DONTWAIT) >= 0) {
            bytes += zmq_msg_size(&m);
            *n_msgs += !zmq_msg_more(&m);
        }
        zmq_msg_close(&m);
    }
    return bytes;
}

/* Finding 8: 1,000 Hellos while TRAIN is open. The key gets at most one more model and a
 * bounded number of Welcomes (the Hello bucket); the run completes. */
static void test_hostile_hello_amplification(void **state)
{
    fixture_t *f = *state;
    rogue_t r;
    moeh_proc_t *a[N_SITES];
    char log[400];
    moeh_proc_t *c = rogue_join(f, &r, NULL, a, log, sizeof log);
    moeh_msg_t m;
    for (;;) { /* STATS: zeros; then wait for TRAIN */
        assert_int_equal(rogue_next_alive(&r, &m), 0);
        if (m.env->type == MOEH__MSG_TYPE__ROUND_START &&
            m.env->round_start->task == MOEH__ROUND_TASK__STATS) {
            moeh_msg_clear(&m);
            rogue_send_zero_stats(&r);
            continue;
        }
        int train = m.env->type == MOEH__MSG_TYPE__ROUND_START &&
                    m.env->round_start->task == MOEH__ROUND_TASK__TRAIN;
        moeh_msg_clear(&m);
        if (train) break;
    }
    uint64_t model_bytes = 4 * r.lim.n_params, n_msgs = 0;
    Moeh__Envelope env;
    Moeh__Hello h;
    rogue_t probe; /* only for site-x's Hello envelope: its own socket is closed at once */
    rogue_connect(f, &probe, "tcp://127.0.0.1:1", &env, &h);
    zmq_close(probe.sock);
    zmq_ctx_term(probe.ctx);
    int64_t t0 = moeh_now_ms();
    for (int i = 0; i < 1000; i++)
        assert_int_equal(moeh_wire_send(r.sock, NULL, 0, &env, NULL, 0), 0);
    uint64_t bytes = read_bytes_for(&r, 3000, &n_msgs);
    print_message("1000 Hellos during TRAIN in %.2f s: %llu bytes back in %llu messages (model "
                  "%llu bytes; before: one model per Hello, %.1f MB)\n",
                  (moeh_now_ms() - t0) / 1000.0 - 3.0, (unsigned long long)bytes,
                  (unsigned long long)n_msgs, (unsigned long long)model_bytes,
                  1000.0 * (double)model_bytes / 1e6);
    assert_true(bytes < 2 * model_bytes + 256 * 1024);
    rogue_leave(&r);
    wait_run(c, a);
    assert_true(file_contains(log, "over its rate of Hello messages"));
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_hostile_flood_unread), FED_TEST(test_hostile_hello_amplification))
