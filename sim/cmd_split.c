/* cmd_split.c - `moeh-sim split` (placeholder until site splits land). */
#include "sim_commands.h"

#include <stdio.h>

int moeh_sim_cmd_split(int argc, char **argv)
{
    fprintf(stderr, "moeh-sim split: not implemented yet\n");
    return 1;
}
