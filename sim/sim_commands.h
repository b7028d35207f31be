/* sim_commands.h - the subcommands of moeh. Each takes (argc, argv) with argv[0] = the
 * subcommand name, prints its own --help, and returns a process exit code (0 ok, 1 runtime
 * failure, 2 usage error). To add one: declare it here and add a row to k_cmds in main.c. */
#ifndef MOEH_SIM_COMMANDS_H
#define MOEH_SIM_COMMANDS_H

#include "moeh_moe.h"
#include "moeh_opts.h"

#include <stdio.h>

int moeh_sim_cmd_run(int argc, char **argv);     /* run.c: a whole federation on loopback */
int moeh_sim_cmd_extract(int argc, char **argv); /* cmd_extract.c: MIMIC-IV -> dataset */
int moeh_sim_cmd_synth(int argc, char **argv);   /* cmd_synth.c: synthetic MIMIC-IV */
int moeh_sim_cmd_split(int argc, char **argv);   /* cmd_split.c: dataset -> sites */
int moeh_sim_cmd_train(int argc, char **argv);   /* cmd_train.c: centralised training */
int moeh_sim_cmd_report(int argc, char **argv);  /* cmd_report.c: a run's HTML report */
int moeh_sim_cmd_predict(int argc, char **argv); /* cmd_predict.c: score with a model file */
int moeh_sim_cmd_status(int argc, char **argv);  /* cmd_status.c: a coordinator's status */

/* "moeh CMD: unknown option '--x' (did you mean --y? see moeh CMD --help)" on stderr, the
 * nearest of opts[0..n) (names without dashes) suggested if one is near; for the commands that
 * parse their few options by hand (report, status). main.c. */
void moeh_sim_unknown_option(const char *cmd, const char *arg, const char *const *opts, size_t n);

/* Writes RUN_DIR's report.html (out_file NULL) or out_file; the report script's exit code. */
int moeh_sim_report(const char *run_dir, const char *out_file);

/* ---- the command line of a subcommand -------------------------------------------------------
 * MOEH_SIM_OPTS: the parser's frame for the subcommand PROG ("moeh split"), USAGE (the start of
 * its --help text) and OPTS (an array of moeh_opt_t, not a pointer); moeh_opts_parse it.
 * moeh_sim_usage_error ends a subcommand whose command line was refused: "PROG: message" on
 * stderr, po freed, MOEH_EXIT_USAGE (2) returned. moeh_sim_failed ends one that failed at its
 * work: the same line (rc's text where err holds no message), MOEH_EXIT_ERROR (1) returned. */
#define MOEH_SIM_OPTS(PROG, USAGE, OPTS)                                                           \
    ((moeh_opts_t){.prog = (PROG),                                                                 \
                   .synopsis = (USAGE),                                                            \
                   .opts = (OPTS),                                                                 \
                   .n_opts = sizeof(OPTS) / sizeof(OPTS)[0]})

static inline int moeh_sim_usage_error(moeh_opts_t *po, const moeh_err_t *err)
{
    fprintf(stderr, "%s: %s\n", po->prog, err->msg);
    moeh_opts_free(po);
    return MOEH_EXIT_USAGE;
}

static inline int moeh_sim_failed(moeh_opts_t *po, int rc, const moeh_err_t *err)
{
    fprintf(stderr, "%s: %s\n", po->prog, err->msg[0] ? err->msg : moeh_strerror(rc));
    moeh_opts_free(po);
    return MOEH_EXIT_ERROR;
}

/* The model moeh trains by default (run and train alike): DESIGN's MoE-Health, narrower
 * (d = 64, 2^14 note buckets) to suit a laptop; data shapes 0 (the datasets give them). */
static inline moeh_moe_cfg_t moeh_sim_model_defaults(void)
{
    moeh_moe_cfg_t mc = moeh_moe_defaults(0, 0);
    mc.d_emb = 64, mc.d_hidden = 64, mc.note_buckets = 16384;
    return mc;
}

#endif
