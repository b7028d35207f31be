/* main.c - moeh: the researcher's and the site's tool (dispatches to subcommands). */
#include "sim_commands.h"

#include "moeh_common.h" /* MOEH_EXIT_* */
#include "moeh_opts.h"   /* moeh_nearest_name */

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} cmd_t;

static const cmd_t k_cmds[] = {
    {"run", moeh_sim_cmd_run, "run a whole federation on this machine (the default command)"},
    {"synth", moeh_sim_cmd_synth, "write a synthetic MIMIC-IV (raw tables, notes, CXR, truth)"},
    {"extract", moeh_sim_cmd_extract, "extract the cohort from MIMIC-IV into a dataset"},
    {"split", moeh_sim_cmd_split, "split a dataset into sites (whole subjects per site)"},
    {"train", moeh_sim_cmd_train, "train centrally on datasets (the federation's reference)"},
    {"report", moeh_sim_cmd_report, "write the HTML report of a run directory"},
    {"predict", moeh_sim_cmd_predict, "score a dataset's admissions with a model file (CSV)"},
    {"status", moeh_sim_cmd_status, "where a coordinator is (its --out/status.json)"},
};

void moeh_sim_unknown_option(const char *cmd, const char *arg, const char *const *opts, size_t n)
{
    const char *typed = arg;
    while (*typed == '-')
        typed++;
    const char *near = moeh_nearest_name(typed, opts, n);
    fprintf(stderr, "moeh %s: unknown option '%s' (%s%s%ssee moeh %s --help)\n", cmd, arg,
            near ? "did you mean --" : "", near ? near : "", near ? "? " : "", cmd);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: moeh [COMMAND] [OPTIONS]\n\n"
               "The moeh tool for researchers and sites: make and split datasets, run a whole\n"
               "federation on this machine, train centrally, score admissions with a model file,\n"
               "report on a run and watch a coordinator. A deployment's daemons are\n"
               "moeh-coordinator and moeh-site-agent (docs/deployment.md).\n\ncommands:\n");
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        fprintf(f, "  %-8s %s\n", k_cmds[i].name, k_cmds[i].help);
    fprintf(f, "\nWith no command, runs `moeh run` with its defaults.\n"
               "`moeh COMMAND --help` describes each command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-') {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            usage(stdout);
            return 0;
        }
        if (argc >= 2 && !strcmp(argv[1], "--version")) {
            printf("moeh %s\n", MOEH_VERSION);
            return 0;
        }
        /* options without a command go to `run` */
        argv[0] = "run";
        return moeh_sim_cmd_run(argc, argv);
    }
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        if (!strcmp(argv[1], k_cmds[i].name)) return k_cmds[i].fn(argc - 1, argv + 1);
    const char *names[sizeof k_cmds / sizeof k_cmds[0]];
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        names[i] = k_cmds[i].name;
    const char *near = moeh_nearest_name(argv[1], names, sizeof names / sizeof names[0]);
    fprintf(stderr, "moeh: unknown command '%s'%s%s%s\n\n", argv[1], near ? " (did you mean " : "",
            near ? near : "", near ? "?)" : "");
    usage(stderr);
    return MOEH_EXIT_USAGE;
}
