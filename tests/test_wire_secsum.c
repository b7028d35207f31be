/* test_wire_secsum.c - proto/wire_secsum.c, the wire's side of secure sums: negotiated limits
 * become fed/'s dimensions field by field, round tasks become phases (an unknown task none),
 * and the length of a task's vector is fed/'s length of that phase: 0 before negotiation and
 * for an unknown task. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_wire.h"

static void test_dims_and_phases(void **state)
{
    (void)state;
    const moeh_wire_limits_t lim = {.n_params = 1000003,
                                    .n_groups = 13,
                                    .n_tasks = 3,
                                    .eval_bins = 100,
                                    .n_norm = 68,
                                    .n_experts = 7};
    moeh_secsum_dims_t d = moeh_wire_secsum_dims(&lim);
    assert_int_equal(d.n_params, 1000003);
    assert_int_equal(d.n_groups, 13);
    assert_int_equal(d.n_tasks, 3);
    assert_int_equal(d.eval_bins, 100);
    assert_int_equal(d.n_norm, 68);
    assert_int_equal(d.n_experts, 7);

    assert_int_equal(moeh_wire_secsum_phase(MOEH__ROUND_TASK__TRAIN), MOEH_SECSUM_TRAIN);
    assert_int_equal(moeh_wire_secsum_phase(MOEH__ROUND_TASK__STATS), MOEH_SECSUM_STATS);
    assert_int_equal(moeh_wire_secsum_phase(MOEH__ROUND_TASK__EVALUATE), MOEH_SECSUM_EVALUATE);
    assert_int_equal(moeh_wire_secsum_phase(MOEH__ROUND_TASK__TASK_UNSPECIFIED), MOEH_SECSUM_NONE);
    assert_int_equal(moeh_wire_secsum_phase((Moeh__RoundTask)99), MOEH_SECSUM_NONE);

    assert_int_equal(moeh_wire_secsum_phase(MOEH__ROUND_TASK__VALIDATE), MOEH_SECSUM_VALIDATE);
    const Moeh__RoundTask tasks[] = {MOEH__ROUND_TASK__TRAIN, MOEH__ROUND_TASK__STATS,
                                     MOEH__ROUND_TASK__EVALUATE, MOEH__ROUND_TASK__VALIDATE};
    const moeh_secsum_phase_t phases[] = {MOEH_SECSUM_TRAIN, MOEH_SECSUM_STATS,
                                          MOEH_SECSUM_EVALUATE, MOEH_SECSUM_VALIDATE};
    const moeh_wire_limits_t none = {0};
    /* VALIDATE (protocol 9): the test split's EVALUATE vector, then the validation split's */
    assert_int_equal(moeh_wire_secsum_len(&lim, MOEH__ROUND_TASK__VALIDATE),
                     2 * moeh_wire_secsum_len(&lim, MOEH__ROUND_TASK__EVALUATE));
    for (size_t k = 0; k < 4; k++) {
        size_t len = moeh_wire_secsum_len(&lim, tasks[k]);
        assert_true(len > 0);
        assert_int_equal(len, moeh_secsum_len(d, phases[k]));
        assert_int_equal(moeh_wire_secsum_len(&none, tasks[k]), 0); /* not negotiated yet */
    }
    /* TRAIN: the update words, then three values */
    assert_int_equal(moeh_wire_secsum_len(&lim, MOEH__ROUND_TASK__TRAIN),
                     1000003 + 13 + MOEH_SECSUM_TRAIN_VALUES * MOEH_SECSUM_FIX_WORDS);
    assert_int_equal(moeh_wire_secsum_len(&lim, MOEH__ROUND_TASK__TASK_UNSPECIFIED), 0);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_dims_and_phases))
