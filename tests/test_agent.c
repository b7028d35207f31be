/* test_agent.c - the site agent's in-process interface (site-agent/moeh_agent.h) and its
 * test-only fault interface (moeh_agent_testing.h):
 *  - --fault-kill-secagg-at values parsed into a task and round, malformed ones refused with
 *    the faults left as they were;
 *  - moeh_agent_run / moeh_agent_run_faulty refuse a configuration without a valid site id or
 *    a dataset before touching the network, saying which option is wrong. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_agent.h"
#include "moeh_agent_testing.h"

#include <string.h>

static void test_parse_secagg_at(void **state)
{
    (void)state;
    moeh_agent_faults_t f = {0};
    assert_int_equal(moeh_agent_faults_parse_secagg_at(&f, "stats"), 0);
    assert_int_equal(f.kill_secagg_task, MOEH__ROUND_TASK__STATS);
    assert_int_equal(f.kill_secagg_at, 0);
    assert_int_equal(moeh_agent_faults_parse_secagg_at(&f, "eval:3"), 0);
    assert_int_equal(f.kill_secagg_task, MOEH__ROUND_TASK__EVALUATE);
    assert_int_equal(f.kill_secagg_at, 3);
    assert_int_equal(moeh_agent_faults_parse_secagg_at(&f, "train:12"), 0);
    assert_int_equal(f.kill_secagg_task, MOEH__ROUND_TASK__TRAIN);
    assert_int_equal(f.kill_secagg_at, 12);
    /* the other faults are not touched */
    assert_int_equal(f.kill_round, 0);
    assert_int_equal(f.kill_secagg_round, 0);
    assert_int_equal(f.kill_upload_round, 0);

    const char *bad[] = {"",        "stat",     "statsx",   "eval",   "eval:",    "eval:0",
                         "train:0", "train:3x", "train:3 ", "eval:x", "upload:2", "Eval:2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        moeh_agent_faults_t g = {
            .kill_round = 9, .kill_secagg_task = MOEH__ROUND_TASK__TRAIN, .kill_secagg_at = 4};
        assert_int_equal(moeh_agent_faults_parse_secagg_at(&g, bad[i]), -EINVAL);
        assert_int_equal(g.kill_round, 9);
        assert_int_equal(g.kill_secagg_task, MOEH__ROUND_TASK__TRAIN);
        assert_int_equal(g.kill_secagg_at, 4);
    }
}

static void test_run_refuses_bad_config(void **state)
{
    (void)state;
    volatile sig_atomic_t stop = 0;
    moeh_agent_cfg_t cfg;
    moeh_agent_cfg_defaults(&cfg);
    assert_string_equal(cfg.connect, "tcp://127.0.0.1:7400");
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_agent_run(&cfg, &stop, &err), -EINVAL); /* no site id */
    assert_non_null(strstr(err.msg, "--site-id"));
    cfg.site_id = "-bad"; /* option-like ids are refused */
    memset(&err, 0, sizeof err);
    assert_int_equal(moeh_agent_run(&cfg, &stop, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "--site-id"));
    cfg.site_id = "site-a";
    memset(&err, 0, sizeof err);
    moeh_agent_faults_t f = {.kill_round = 1};
    assert_int_equal(moeh_agent_run_faulty(&cfg, &f, &stop, &err), -EINVAL); /* no dataset */
    assert_non_null(strstr(err.msg, "--dataset"));
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_parse_secagg_at),
               cmocka_unit_test(test_run_refuses_bad_config))
