/* cmd_synth.c - `moeh-sim synth` (placeholder until the generator lands). */
#include "sim_commands.h"

#include <stdio.h>

int moeh_sim_cmd_synth(int argc, char **argv)
{
    fprintf(stderr, "moeh-sim synth: not implemented yet\n");
    return 1;
}
