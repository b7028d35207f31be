/* bench_secagg_plan - prints the SecAgg+ plan (fed/moeh_secagg_plan.h) for a range of
 * federation sizes: the k and t the coordinator picks by default and the bounds they meet; the
 * table of docs/secagg.md, "Choosing k". Usage: bench_secagg_plan [DROPOUT COLLUDE SIGMA ETA] */
#include "moeh_secagg_plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    moeh_secagg_plan_cfg_t cfg = MOEH_SECAGG_PLAN_DEFAULT;
    if (argc == 5) {
        cfg.dropout = atof(argv[1]);
        cfg.corrupt = atof(argv[2]);
        cfg.sigma = atof(argv[3]);
        cfg.eta = atof(argv[4]);
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [DROPOUT COLLUDE SIGMA ETA]\n", argv[0]);
        return 2;
    }
    printf("dropouts <= %.0f%%, colluding sites <= %.0f%%, leak <= 2^-%g, failure <= 2^-%g\n",
           100 * cfg.dropout, 100 * cfg.corrupt, cfg.sigma, cfg.eta);
    printf("%6s %5s %5s %10s %10s %8s\n", "n", "k", "t", "log2_fail", "log2_leak", "k/(n-1)");
    const unsigned ns[] = {5, 10, 20, 21, 30, 40, 60, 100, 200, 500, 1000};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        moeh_secagg_plan_t p;
        if (moeh_secagg_plan(ns[i], &cfg, &p)) {
            fprintf(stderr, "parameters out of range\n");
            return 2;
        }
        printf("%6u %5u %5u %10.1f %10.1f %8.2f\n", ns[i], p.k, p.t, p.log2_fail, p.log2_leak,
               p.k ? (double)p.k / (ns[i] - 1) : 1.0);
    }
    return 0;
}
