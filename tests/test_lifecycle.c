/* test_lifecycle.c - paused is not finished (issue 12, item 4), with the real binaries:
 *  - the coordinator interrupted (SIGINT) mid-run exits 130 and tells the sites the run is
 *    paused; the agents keep reconnecting, rejoin the coordinator started again with --resume
 *    (without being restarted themselves), and exit 0 only when the run finished;
 *  - an agent that is not re-admitted within --give-up-ms after a pause exits 4 (gave up),
 *    saying so; one that never reaches a coordinator the same.
 * Exit codes: common/moeh_common.h (MOEH_EXIT_*), docs/operations.md. Helpers: fed_util.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fed_util.h"

static void start_agents(fixture_t *f, moeh_proc_t **a, const char *give_up_ms)
{
    char *opts[] = {"--silence-timeout-ms", "1500", "--backoff-max-ms", "1000", "--give-up-ms",
                    (char *)give_up_ms,     NULL};
    start_all_agents(f, a, opts);
}

static void test_interrupted_run_pauses_and_resumes(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *a[N_SITES];
    moeh_proc_t *c1 = start_coordinator_ex(f, "4", "3", "3", NULL, "coordinator-1.log");
    char endpoint[256];
    snprintf(endpoint, sizeof endpoint, "%s", f->endpoint);
    start_agents(f, a, "60000");
    wait_log_of(f, c1, "coordinator-1.log", "round 2 done");
    moeh_proc_signal(c1, SIGINT);
    wait_exit(c1, 10000, MOEH_EXIT_INTERRUPTED);
    for (int k = 0; k < N_SITES; k++) { /* each agent heard the pause and is still there */
        char log[64];
        snprintf(log, sizeof log, "site-%d-as-site-%d.log", k + 1, k + 1);
        wait_log_of(f, a[k], log, "the coordinator paused the run");
        assert_int_equal(moeh_proc_wait(a[k], 0), -ETIMEDOUT);
    }
    char *resume[] = {"--resume", NULL};
    moeh_proc_t *c2 =
        start_coordinator_ex2(f, "4", "3", "3", endpoint, "coordinator-2.log", resume);
    assert_string_equal(f->endpoint, endpoint);
    wait_run(c2, a); /* the coordinator and the same three agents exit 0 */
    assert_round_sites(f, "3333", -1);
    assert_true(log_contains(f, "site-1-as-site-1.log", "the coordinator says the run finished"));
}

static void test_agent_gives_up_after_pause(void **state)
{
    fixture_t *f = *state;
    moeh_proc_t *a[N_SITES];
    moeh_proc_t *c = start_coordinator_ex(f, "50", "3", "3", NULL, "coordinator.log");
    start_agents(f, a, "2000");
    wait_log_of(f, c, "coordinator.log", "round 1 done");
    moeh_proc_signal(c, SIGTERM);
    wait_exit(c, 10000, MOEH_EXIT_INTERRUPTED);
    int64_t t0 = moeh_now_ms();
    for (int k = 0; k < N_SITES; k++)
        wait_exit(a[k], 20000, MOEH_EXIT_GAVE_UP);
    assert_true(moeh_now_ms() - t0 < 15000);
    const char *log = "site-2-as-site-2.log";
    assert_true(log_contains(f, log, "the coordinator paused the run"));
    assert_true(log_contains(f, log, "not re-admitted by tcp://127.0.0.1:"));
    assert_true(log_contains(f, log, "within 2.0 s (--give-up-ms)"));
}

/* Nobody listens: the agent gives up (4), not an error (1) and not success. */
static void test_agent_gives_up_without_coordinator(void **state)
{
    fixture_t *f = *state;
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:9"); /* discard: nothing there */
    char *opts[] = {"--give-up-ms", "1000", NULL};
    moeh_proc_t *a = start_agent(f, "site-1", "site-1", "site-1", opts);
    wait_exit(a, 20000, MOEH_EXIT_GAVE_UP);
    assert_true(
        log_contains(f, "site-1-as-site-1.log", "not admitted by tcp://127.0.0.1:9 within 1.0 s"));
}

MOEH_TEST_MAIN_INIT(fed_main_init(), fed_group_setup, fed_group_teardown,
                    FED_TEST(test_interrupted_run_pauses_and_resumes),
                    FED_TEST(test_agent_gives_up_after_pause),
                    FED_TEST(test_agent_gives_up_without_coordinator))
