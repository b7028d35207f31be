/* test_monitor.c - key diagnosis (issue 12 item 5), with the real binaries over CURVE: an agent
 * given a wrong --server-key does not reconnect forever; it exits 3 (refused) within a few
 * seconds with a message naming the key problem: another key than the coordinator's (the
 * coordinator drops the handshake it cannot decrypt, seen by the socket monitor), or the
 * site's own public key (found before connecting). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

/* Starts site-1's agent with server_pub as --server-key; returns its log path in log. */
static moeh_proc_t *agent_with_server_key(fixture_t *f, const char *server_pub, char *log,
                                          size_t cap)
{
    char ds[400], key[400], pub[400], out[400];
    snprintf(ds, sizeof ds, "%s/site-1", f->data);
    snprintf(out, sizeof out, "%s/site-out/site-1", f->dir);
    snprintf(key, sizeof key, "%s/site-1.key", f->keys);
    snprintf(pub, sizeof pub, "%s/%s", f->keys, server_pub);
    snprintf(log, cap, "%s/agent.log", f->logs);
    char *opts[] = {"--give-up-ms", "30000", NULL};
    moeh_proc_t *p = &f->procs[f->n_procs++];
    moeh_err_t err = {0};
    int rc = moeh_localfed_start_agent(p, f->bin, f->endpoint, "site-1", ds, out, key, pub, opts,
                                       log, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    return p;
}

static void test_wrong_server_key_named(void **state)
{
    fixture_t *f = *state;
    char log[400];
    start_coordinator_ex(f, "1", "1", "1", NULL, "coordinator.log");
    int64_t t0 = moeh_now_ms();
    moeh_proc_t *a = agent_with_server_key(f, "site-2.pub", log, sizeof log);
    wait_exit(a, 20000, MOEH_EXIT_REFUSED);
    assert_true(moeh_now_ms() - t0 < 8000); /* not the 30 s of --give-up-ms */
    assert_true(file_contains(log, "closed the connection during the CURVE handshake"));
    assert_true(file_contains(log, "site-2.pub is not that coordinator's public key"));
}

static void test_own_key_as_server_key_named(void **state)
{
    fixture_t *f = *state;
    char log[400];
    start_coordinator_ex(f, "1", "1", "1", NULL, "coordinator.log");
    moeh_proc_t *a = agent_with_server_key(f, "site-1.pub", log, sizeof log);
    wait_exit(a, 20000, MOEH_EXIT_REFUSED);
    assert_true(file_contains(log, "site-1.pub is this site's own public key"));
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_wrong_server_key_named),
                    FED_TEST(test_own_key_as_server_key_named))
