/* data_main.c - moeh-sim-data: a temporary stand-alone binary for the data subcommands
 * (extract, synth, split) until they are reached through moeh-sim itself. */
#include "sim_commands.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"extract", moeh_sim_cmd_extract}, {"synth", moeh_sim_cmd_synth},
                {"split", moeh_sim_cmd_split}};
    if (argc >= 2)
        for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
            if (!strcmp(argv[1], cmds[i].name))
                return cmds[i].fn(argc - 1, argv + 1);
    fprintf(argc >= 2 && strcmp(argv[1], "--help") ? stderr : stdout,
            "usage: moeh-sim-data extract|synth|split [OPTIONS] (--help on each)\n");
    return argc >= 2 && !strcmp(argv[1], "--help") ? 0 : 2;
}
