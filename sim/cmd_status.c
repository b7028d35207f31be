/* cmd_status.c - `moeh status DIR [--json]`: where the coordinator writing into DIR is, from
 * DIR/status.json (coordinator/status.c; fields in docs/operations.md), for people or as JSON. */
#include "sim_commands.h"

#include "moeh_progress.h"

#include <cjson/cJSON.h>
#include <string.h>
#include <time.h>

static const char k_help[] =
    "usage: moeh status DIR [--json]\n\n"
    "Prints where the coordinator whose --out is DIR is: run id, state and phase, round,\n"
    "quorum, phase deadline, ETA (from the rounds it timed), sites admitted and reporting\n"
    "with the time each was last heard, the round selected so far by validation and epsilon\n"
    "(DP). It reads DIR/status.json, which the coordinator\n"
    "rewrites atomically at every change; a coordinator that ended says finished or paused.\n\n"
    "  --json   print the status as one JSON document (for scripts and monitoring)\n"
    "  --help   this text\n\n"
    "Exit codes: 0 the status was printed, 1 it could not be read, 2 usage error.\n";

static const char *str(const cJSON *j, const char *k, const char *dflt)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(j, k));
    return s ? s : dflt;
}

static double num(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(j, k);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static void print_human(const cJSON *j)
{
    printf("run %s: %s", str(j, "run_id", "?"), str(j, "state", "?"));
    const char *reason = str(j, "reason", NULL);
    if (reason) printf(" (%s)", reason);
    printf("\n  round %.0f of %.0f, phase %s, quorum %.0f\n", num(j, "round"), num(j, "rounds"),
           str(j, "phase", "?"), num(j, "quorum"));
    printf("  updated %s by pid %.0f\n", str(j, "updated", "?"), num(j, "pid"));
    printf("  phase deadline %s\n", str(j, "deadline", "-"));
    double sel = num(j, "selected_round"), eps = num(j, "epsilon"), eta = num(j, "eta_s");
    char eta_text[24];
    printf("  %s\n", moeh_progress_fmt_eta(eta_text, sizeof eta_text, eta));
    if (sel >= 0)
        printf("  selected round %.0f so far (%s %.4f)\n", sel, str(j, "selected_by", "?"),
               num(j, "selected_value"));
    else
        printf("  selected round - (%s)\n",
               str(j, "selected_by", NULL) ? "no round validated yet" : "no validation");
    if (eps >= 0)
        printf("  DP epsilon %.4f (against the coordinator %.4f)\n", eps,
               num(j, "epsilon_coordinator"));
    else
        printf("  DP epsilon - (no DP)\n");
    printf("  sites: %.0f admitted, %.0f reporting in this phase\n", num(j, "sites_admitted"),
           num(j, "sites_reporting"));
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItem(j, "sites"))
    {
        printf("    %-24s %-12s %-9s last seen %s\n", str(s, "id", "?"),
               cJSON_IsTrue(cJSON_GetObjectItem(s, "admitted")) ? "admitted" : "gone",
               cJSON_IsTrue(cJSON_GetObjectItem(s, "replied"))       ? "replied"
               : cJSON_IsTrue(cJSON_GetObjectItem(s, "participant")) ? "waiting"
                                                                     : "-",
               str(s, "last_seen", "?"));
    }
}

int moeh_sim_cmd_status(int argc, char **argv)
{
    const char *dir = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(k_help, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (argv[i][0] == '-') {
            static const char *const opts[] = {"json", "help"};
            moeh_sim_unknown_option("status", argv[i], opts, 2);
            return 2;
        } else if (dir) {
            fprintf(stderr, "moeh status: unexpected argument '%s'\n\n%s", argv[i], k_help);
            return 2;
        } else {
            dir = argv[i];
        }
    }
    if (!dir) {
        fprintf(stderr, "moeh status: the run directory (the coordinator's --out) is missing\n\n%s",
                k_help);
        return 2;
    }
    char path[4096], *text = NULL;
    size_t len;
    moeh_err_t err = {0};
    if (moeh_path_join(path, sizeof path, dir, "status.json")) {
        fprintf(stderr, "moeh status: %s: path too long\n", dir);
        return 1;
    }
    if (moeh_file_read_all(path, 1 << 24, &text, &len, &err) != 0) {
        fprintf(stderr,
                "moeh status: %s\n(no coordinator has written a status into %s: is it the "
                "coordinator's --out?)\n",
                err.msg, dir);
        return 1;
    }
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(j) || !cJSON_IsString(cJSON_GetObjectItem(j, "run_id"))) {
        fprintf(stderr,
                "moeh status: %s: not a coordinator status (expected a JSON object "
                "with \"run_id\")\n",
                path);
        cJSON_Delete(j);
        return 1;
    }
    if (json) {
        char *out = cJSON_PrintUnformatted(j);
        if (out) puts(out);
        free(out);
    } else {
        print_human(j);
    }
    cJSON_Delete(j);
    return 0;
}
