/* wire_secsum.c - the wire's negotiated limits and round tasks translated into fed/'s secure-sum
 * dimensions and phases (moeh_wire.h): fed/ knows nothing of the wire, so proto/ does the
 * mapping, once. Pure functions. */
#include "moeh_wire.h"

moeh_secsum_dims_t moeh_wire_secsum_dims(const moeh_wire_limits_t *lim)
{
    return (moeh_secsum_dims_t){.n_params = lim->n_params,
                                .n_groups = lim->n_groups,
                                .n_tasks = lim->n_tasks,
                                .eval_bins = lim->eval_bins,
                                .n_norm = lim->n_norm,
                                .n_experts = lim->n_experts};
}

moeh_secsum_phase_t moeh_wire_secsum_phase(Moeh__RoundTask task)
{
    switch (task) {
    case MOEH__ROUND_TASK__TRAIN:
        return MOEH_SECSUM_TRAIN;
    case MOEH__ROUND_TASK__STATS:
        return MOEH_SECSUM_STATS;
    case MOEH__ROUND_TASK__EVALUATE:
        return MOEH_SECSUM_EVALUATE;
    case MOEH__ROUND_TASK__VALIDATE: /* the test split's vector, then the validation split's */
        return MOEH_SECSUM_VALIDATE;
    default:
        return MOEH_SECSUM_NONE;
    }
}

size_t moeh_wire_secsum_len(const moeh_wire_limits_t *lim, Moeh__RoundTask task)
{
    return moeh_secsum_len(moeh_wire_secsum_dims(lim), moeh_wire_secsum_phase(task));
}
