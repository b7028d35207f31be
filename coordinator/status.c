/* status.c - OUT/status.json (moeh_coord_status.h), built with cJSON from the core's state.
 * Times are wall-clock UTC (ISO 8601); the core keeps monotonic ones, converted here. */
#include "coord_internal.h"
#include "moeh_coord_status.h"
#include "moeh_dp_ledger.h"
#include "moeh_json_file.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

moeh_coord_status_mark_t moeh_coord_status_mark(const moeh_coord_core_t *c)
{
    moeh_coord_status_mark_t m = {.phase = (int)c->phase, .round = c->round};
    for (size_t i = 0; i < c->n_sites; i++) {
        m.admitted += c->sites[i].admitted != 0;
        m.replied += c->sites[i].replied != 0;
    }
    return m;
}

void moeh_coord_status_progress(const moeh_coord_core_t *c, moeh_coord_progress_t *out)
{
    *out = (moeh_coord_progress_t){.phase = (int)c->phase,
                                   .round = c->round,
                                   .rounds = c->cfg->rounds,
                                   .participants = c->n_participants,
                                   .replied = c->n_replied,
                                   .admitted = coord_n_admitted(c),
                                   .wait_target = c->wait_target,
                                   .selected_round = c->cfg->validate ? c->sel_round : 0,
                                   .selected_value = NAN};
    if (out->selected_round) out->selected_value = c->sel_value;
}

const char *moeh_coord_phase_label(int phase)
{
    return phase == PH_WAIT    ? "WAIT"
           : phase == PH_STATS ? "STATS"
           : phase == PH_TRAIN ? "TRAIN"
           : phase == PH_VAL   ? "VALIDATE"
           : phase == PH_EVAL  ? "EVAL"
                               : "DONE";
}

static int in_round(int phase)
{
    return phase == PH_TRAIN || phase == PH_VAL || phase == PH_EVAL;
}

void moeh_coord_eta_observe(moeh_coord_eta_t *e, uint32_t round, int phase, int64_t now)
{
    if (phase == PH_DONE || (in_round(phase) && round != e->cur_round)) {
        /* the round under way ended (timed only if its start was seen, and it is the next) */
        if (e->cur_round && (phase == PH_DONE || round == e->cur_round + 1)) {
            e->sum_ms += now - e->t_start;
            e->n_done++;
        }
        e->cur_round = phase == PH_DONE ? 0 : round;
        e->t_start = now;
    }
}

double moeh_coord_eta_s(const moeh_coord_eta_t *e, uint32_t round, uint32_t rounds, int phase,
                        int64_t now)
{
    if (phase == PH_DONE) return 0;
    if (!e->n_done) return -1;
    double mean = (double)e->sum_ms / e->n_done / 1000.0;
    /* rounds after this one, and what is left of this one (none while waiting, or in the
     * statistics phase, before round `round + 1`) */
    double left = round < rounds ? (double)(rounds - round) * mean : 0;
    if (in_round(phase) && e->cur_round == round && round > 0) {
        double ran = (double)(now - e->t_start) / 1000.0;
        left += mean > ran ? mean - ran : 0;
    }
    return left;
}

/* A monotonic time (ms) as wall-clock ISO 8601 UTC. */
static void iso_time(int64_t mono_ms, char *out, size_t cap)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t wall_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    wall_ms += mono_ms - moeh_now_ms();
    time_t s = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char day[32];
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, cap, "%.24s.%03uZ", day, (unsigned)(wall_ms % 1000));
}

static const char *phase_state(phase_t ph)
{
    return ph == PH_WAIT    ? "waiting"
           : ph == PH_STATS ? "statistics"
           : ph == PH_TRAIN ? "train"
           : ph == PH_EVAL  ? "eval"
           : ph == PH_VAL   ? "validate"
                            : "done";
}

static cJSON *build(const coord_t *c, const char *run_id, const char *state, const char *reason,
                    double eta_s)
{
    char t[40];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "version", MOEH_STATUS_VERSION);
    cJSON_AddStringToObject(j, "run_id", run_id);
    iso_time(moeh_now_ms(), t, sizeof t);
    cJSON_AddStringToObject(j, "updated", t);
    cJSON_AddNumberToObject(j, "pid", (double)getpid());
    cJSON_AddStringToObject(j, "state", state ? state : phase_state(c->phase));
    if (reason)
        cJSON_AddStringToObject(j, "reason", reason);
    else
        cJSON_AddNullToObject(j, "reason");
    cJSON_AddStringToObject(j, "phase", phase_state(c->phase));
    cJSON_AddNumberToObject(j, "round", c->round);
    cJSON_AddNumberToObject(j, "rounds", c->cfg->rounds);
    cJSON_AddNumberToObject(j, "quorum", c->cfg->min_sites);
    int open =
        c->phase == PH_STATS || c->phase == PH_TRAIN || c->phase == PH_VAL || c->phase == PH_EVAL;
    if (open && !state) {
        iso_time(c->phase_deadline, t, sizeof t);
        cJSON_AddStringToObject(j, "deadline", t);
    } else {
        cJSON_AddNullToObject(j, "deadline");
    }
    if (eta_s >= 0)
        cJSON_AddNumberToObject(j, "eta_s", round(eta_s));
    else
        cJSON_AddNullToObject(j, "eta_s");
    /* model selection (select.c): the best validated round so far, and its validation score */
    if (c->cfg->validate) {
        cJSON_AddStringToObject(j, "selected_by", coord_select_key(c));
    } else {
        cJSON_AddNullToObject(j, "selected_by");
    }
    if (c->cfg->validate && c->sel_round && !isnan(c->sel_value)) {
        cJSON_AddNumberToObject(j, "selected_round", c->sel_round);
        cJSON_AddNumberToObject(j, "selected_value", round(c->sel_value * 1e6) / 1e6);
    } else {
        cJSON_AddNullToObject(j, "selected_round");
        cJSON_AddNullToObject(j, "selected_value");
    }
    if (c->dp) {
        double eps, eps_coord;
        moeh_dp_ledger_epsilons(&c->ledger, coord_dp_most_seen(c), &eps, &eps_coord);
        cJSON_AddNumberToObject(j, "epsilon", eps);
        cJSON_AddNumberToObject(j, "epsilon_coordinator", eps_coord);
    } else {
        cJSON_AddNullToObject(j, "epsilon");
        cJSON_AddNullToObject(j, "epsilon_coordinator");
    }
    uint32_t admitted = 0, replied = 0;
    cJSON *sites = cJSON_AddArrayToObject(j, "sites");
    for (size_t i = 0; i < c->n_sites; i++) {
        const site_t *s = &c->sites[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", s->id);
        cJSON_AddBoolToObject(o, "admitted", s->admitted != 0);
        cJSON_AddBoolToObject(o, "participant", open && s->participant);
        cJSON_AddBoolToObject(o, "replied", open && s->replied);
        iso_time(s->last_seen, t, sizeof t);
        cJSON_AddStringToObject(o, "last_seen", t);
        cJSON_AddItemToArray(sites, o);
        admitted += s->admitted != 0;
        replied += open && s->replied;
    }
    cJSON_AddNumberToObject(j, "sites_admitted", admitted);
    cJSON_AddNumberToObject(j, "sites_reporting", replied);
    return j;
}

int moeh_coord_status_write(const moeh_coord_core_t *c, const char *run_id, const char *state,
                            const char *reason, double eta_s, moeh_err_t *err)
{
    char path[4096];
    if (moeh_path_join(path, sizeof path, c->cfg->out_dir, MOEH_STATUS_FILE))
        return moeh_errf(err, -ENAMETOOLONG, "%s/%s: path too long", c->cfg->out_dir,
                         MOEH_STATUS_FILE);
    cJSON *j = build(c, run_id, state, reason, eta_s);
    int rc =
        j ? moeh_json_write_file(path, j, err) : moeh_errf(err, -ENOMEM, "%s: out of memory", path);
    cJSON_Delete(j);
    return rc;
}

void moeh_coord_status_run_id(const char *out_dir, int resume, char *out, size_t cap)
{
    char path[4096], *text = NULL;
    size_t len;
    moeh_err_t err = {0};
    if (resume && moeh_path_join(path, sizeof path, out_dir, MOEH_STATUS_FILE) == 0 &&
        moeh_file_read_all(path, 1 << 22, &text, &len, &err) == 0) {
        cJSON *j = cJSON_Parse(text);
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(j, "run_id"));
        if (id && *id && strlen(id) < cap) {
            snprintf(out, cap, "%s", id);
            cJSON_Delete(j);
            free(text);
            return;
        }
        cJSON_Delete(j);
    }
    free(text);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char day[32];
    strftime(day, sizeof day, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(out, cap, "%.24s-%ld", day, (long)getpid());
}
