/* agent_final.c - what a site keeps (docs/deployment.md, "What a site keeps"):
 *
 *  - the run's final model: the coordinator's FinalModel carries the bytes of its
 *    OUT/model.safetensors; they are checked (SHA-256, the model-file reader's validation of
 *    every field, the layout hash of the model this site trained), stored atomically as
 *    --out/model.safetensors and acknowledged (FinalAck). The agent exits 0 only once it holds
 *    the file (agent.c: on_bye);
 *  - the site's own metrics, one JSON line per round in --out/local_metrics.jsonl: training
 *    loss, rows and time, its own validation and test loss and AUROC, and what left the site
 *    for each phase ("masked", "unmasked" or "not sent"). The file never leaves the site.
 *
 * One thread (the agent's); nothing here is thread-safe. */
#include "agent_int.h"
#include "moeh_evalsum.h"
#include "moeh_modelfile.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <sodium.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>

/* ---- local metrics ------------------------------------------------------------------------ */

int moeh_agent_lm_open(agent_t *a, moeh_err_t *err)
{
    char path[4096];
    int rc;
    if ((rc = moeh_mkdir_p(a->cfg->out_dir, err))) return rc;
    if (moeh_path_join(path, sizeof path, a->cfg->out_dir, "local_metrics.jsonl"))
        return moeh_errf(err, -ENAMETOOLONG, "--out %s: path too long", a->cfg->out_dir);
    if (!(a->lm_fp = fopen(path, "a")))
        return moeh_errf(err, -errno, "--out: cannot open %s for appending: %s", path,
                         strerror(errno));
    MOEH_INFO("this site's own per-round metrics go to %s; they stay at this site (nothing in it "
              "is sent to the coordinator)",
              path);
    return 0;
}

static const char *sent_name(int how)
{
    return how == 1 ? "masked" : how == 2 ? "unmasked" : "not sent";
}

/* Adds key: x, or null when x is not finite. */
static void add_num(cJSON *o, const char *key, double x)
{
    if (isfinite(x))
        cJSON_AddNumberToObject(o, key, x);
    else
        cJSON_AddNullToObject(o, key);
}

static void add_auroc(cJSON *o, const char *key, const double *auroc, uint32_t n_tasks)
{
    cJSON *t = cJSON_AddObjectToObject(o, key);
    for (uint32_t k = 0; t && k < n_tasks && k < MOEH_N_TASKS; k++)
        add_num(t, moeh_task_names[k], auroc[k]);
}

/* CPU seconds (user + system) of this process so far, every thread (the ZeroMQ I/O thread's
 * CURVE work included); NAN if unknown. */
double moeh_agent_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return NAN;
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

void moeh_agent_lm_flush(agent_t *a)
{
    agent_lm_t *r = &a->lm;
    if (!r->open || !a->lm_fp) {
        r->open = 0;
        return;
    }
    r->open = 0;
    char when[32];
    struct tm tm;
    gmtime_r(&r->started, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    cJSON *o = cJSON_CreateObject();
    if (!o) goto oom;
    cJSON_AddNumberToObject(o, "round", r->round);
    cJSON_AddStringToObject(o, "site", a->cfg->site_id);
    cJSON_AddStringToObject(o, "started", when);
    cJSON_AddStringToObject(o, "phase", !r->trained ? "none" : r->warmup ? "warmup" : "joint");
    add_num(o, "train_loss", r->trained ? r->train_loss : NAN);
    cJSON_AddNumberToObject(o, "train_rows", (double)r->train_rows);
    cJSON_AddNumberToObject(o, "train_steps", r->steps);
    add_num(o, "train_seconds", r->trained ? r->train_s : NAN);
    cJSON_AddStringToObject(o, "update", sent_name(r->sent[0]));
    add_num(o, "validation_loss", r->validated ? r->val_loss : NAN);
    cJSON_AddNumberToObject(o, "validation_rows", (double)r->val_rows);
    if (r->validated) add_auroc(o, "validation_auroc", r->val_auroc, a->lim.n_tasks);
    cJSON_AddStringToObject(o, "validation_histograms", sent_name(r->sent[1]));
    add_num(o, "test_loss", r->tested ? r->test_loss : NAN);
    cJSON_AddNumberToObject(o, "test_rows", (double)r->test_rows);
    if (r->tested) add_auroc(o, "test_auroc", r->test_auroc, a->lim.n_tasks);
    cJSON_AddStringToObject(o, "test_histograms", sent_name(r->sent[2]));
    add_num(o, "eval_seconds", r->eval_s);
    add_num(o, "train_cpu_seconds", r->train_cpu_s);
    add_num(o, "cpu_seconds", moeh_agent_cpu_s() - r->cpu0);
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!line) goto oom;
    if (fprintf(a->lm_fp, "%s\n", line) < 0 || fflush(a->lm_fp) != 0)
        MOEH_WARN("round %u: could not append to local_metrics.jsonl: %s", r->round,
                  strerror(errno));
    free(line);
    return;
oom:
    MOEH_WARN("round %u: out of memory for the local metrics line", r->round);
}

void moeh_agent_lm_round(agent_t *a, uint32_t round)
{
    if (a->lm.open && a->lm.round == round) return;
    /* the round's first RoundStart opened it (started, cpu0); the first figure recorded for
     * it (lm_train, lm_eval, lm_sent) comes here again and keeps them */
    const int same = a->lm.started != 0 && a->lm.round == round;
    const time_t started = a->lm.started;
    const double cpu0 = a->lm.cpu0;
    moeh_agent_lm_flush(a);
    memset(&a->lm, 0, sizeof a->lm);
    a->lm.round = round;
    a->lm.started = same ? started : time(NULL);
    a->lm.cpu0 = same ? cpu0 : moeh_agent_cpu_s();
    a->lm.eval_s = NAN;
    a->lm.train_cpu_s = NAN;
}

void moeh_agent_lm_train(agent_t *a, const Moeh__RoundStart *rs, const moeh_train_result_t *res,
                         double seconds, double cpu_s)
{
    agent_lm_t *r = &a->lm;
    moeh_agent_lm_round(a, rs->round);
    r->open = 1;
    r->trained = 1;
    r->warmup = rs->config && rs->config->warmup;
    r->train_loss = res->mean_loss;
    r->train_rows = res->samples;
    r->steps = res->steps;
    r->train_s = seconds;
    r->train_cpu_s = cpu_s;
}

void moeh_agent_lm_eval(agent_t *a, const Moeh__RoundStart *rs, const moeh_eval_sums_t *es, int val,
                        double seconds)
{
    agent_lm_t *r = &a->lm;
    const uint32_t T = a->lim.n_tasks, nb = a->eval_bins;
    moeh_agent_lm_round(a, rs->round);
    r->open = 1;
    uint64_t rows = 0;
    for (int k = 0; k < MOEH_N_COMBOS; k++)
        rows += es->combo_rows[k];
    double loss = es->n_labels ? es->loss_sum / (double)es->n_labels : NAN;
    double *auroc = val ? r->val_auroc : r->test_auroc;
    uint64_t *scratch = malloc(2 * (size_t)nb * sizeof(uint64_t));
    for (uint32_t t = 0; t < T && t < MOEH_N_TASKS; t++)
        auroc[t] = scratch ? moeh_eval_slice_auroc_u32(es->hist, T, nb, 0, t, scratch) : NAN;
    free(scratch);
    if (val) {
        r->validated = 1, r->val_loss = loss, r->val_rows = rows;
    } else {
        r->tested = 1, r->test_loss = loss, r->test_rows = rows;
    }
    r->eval_s = (isnan(r->eval_s) ? 0 : r->eval_s) + seconds;
}

void moeh_agent_lm_sent(agent_t *a, Moeh__RoundTask task, uint32_t round, int masked)
{
    if (!a->lm.open || a->lm.round != round) return;
    const int how = masked ? 1 : 2;
    if (task == MOEH__ROUND_TASK__TRAIN) a->lm.sent[0] = how;
    if (task == MOEH__ROUND_TASK__VALIDATE) a->lm.sent[1] = how; /* and the test split's */
    if (task == MOEH__ROUND_TASK__VALIDATE || task == MOEH__ROUND_TASK__EVALUATE)
        a->lm.sent[2] = how;
}

void moeh_agent_lm_close(agent_t *a)
{
    moeh_agent_lm_flush(a);
    if (a->lm_fp && fclose(a->lm_fp) != 0) MOEH_WARN("local_metrics.jsonl: %s", strerror(errno));
    a->lm_fp = NULL;
}

/* ---- the final model ---------------------------------------------------------------------- */

static void send_ack(agent_t *a, const Moeh__FinalModel *fm, int code, const char *message)
{
    Moeh__Envelope env;
    Moeh__FinalAck ack = MOEH__FINAL_ACK__INIT;
    ack.model_version = fm->model_version;
    ack.sha256 = fm->sha256;
    ack.code = code;
    ack.message = (char *)message;
    moeh_env_final_ack(&env, &ack);
    int rc = moeh_wire_send(a->sock, NULL, 0, &env, NULL, 0);
    if (rc) /* the coordinator sends the model again if this site reconnects */
        MOEH_WARN("could not acknowledge the final model: %s", moeh_strerror(rc));
}

/* fsync of a directory, so that a rename in it is durable. */
static int sync_dir(const char *dir, moeh_err_t *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return moeh_errf(err, -errno, "%s: %s", dir, strerror(errno));
    int rc = fsync(fd) == 0 ? 0 : moeh_errf(err, -errno, "fsync %s: %s", dir, strerror(errno));
    close(fd);
    return rc;
}

/* Checks the file's bytes and stores them as --out/model.safetensors: written to
 * model.safetensors.incoming (atomically), read back and validated there, then renamed. */
static int store_final(agent_t *a, const Moeh__FinalModel *fm, const moeh_iov_t *file, char *path,
                       size_t path_cap, moeh_err_t *err)
{
    char incoming[4096];
    uint8_t sha[MOEH_WIRE_SHA256_BYTES];
    int rc;
    crypto_hash_sha256(sha, file->data, file->len);
    if (sodium_memcmp(sha, fm->sha256.data, sizeof sha) != 0)
        return moeh_errf(err, -EBADMSG, "the model file's SHA-256 differs from the one announced");
    if (fm->spec_hash != a->spec_hash)
        return moeh_errf(err, -EPROTO,
                         "the model file's layout (spec hash %016llx) is not the one this site "
                         "trained (%016llx)",
                         (unsigned long long)fm->spec_hash, (unsigned long long)a->spec_hash);
    if (moeh_path_join(path, path_cap, a->cfg->out_dir, "model.safetensors") ||
        moeh_path_join(incoming, sizeof incoming, a->cfg->out_dir, "model.safetensors.incoming"))
        return moeh_errf(err, -ENAMETOOLONG, "--out %s: path too long", a->cfg->out_dir);
    if ((rc = moeh_file_write_atomic(incoming, file->data, file->len, err))) return rc;
    moeh_modelfile_t *mf = NULL;
    if ((rc = moeh_modelfile_read(incoming, 1, &mf, err))) goto fail;
    const uint64_t hash = mf->spec_hash;
    moeh_modelfile_destroy(&mf);
    if (hash != a->spec_hash) {
        rc = moeh_errf(err, -EPROTO, "%s: spec hash %016llx, this site's model has %016llx",
                       incoming, (unsigned long long)hash, (unsigned long long)a->spec_hash);
        goto fail;
    }
    if (rename(incoming, path) != 0) {
        rc = moeh_errf(err, -errno, "rename %s -> %s: %s", incoming, path, strerror(errno));
        goto fail;
    }
    return sync_dir(a->cfg->out_dir, err);
fail:
    unlink(incoming);
    return rc;
}

void moeh_agent_on_final(agent_t *a, const Moeh__FinalModel *fm, const moeh_msg_t *m)
{
    char path[4096];
    moeh_err_t err = {0};
    moeh_agent_lm_flush(a); /* the last round is over */
    if (a->faults.kill_final) {
        MOEH_WARN("fault injection: killing myself on receiving the final model");
        raise(SIGKILL);
    }
    int rc = store_final(a, fm, &m->frames[0], path, sizeof path, &err);
    if (rc) {
        MOEH_ERROR("the final model could not be stored: %s", err.msg);
        char why[MOEH_MAX_STRING];
        snprintf(why, sizeof why, "could not store the final model: %.900s", err.msg);
        send_ack(a, fm, rc < 0 ? rc : -EIO, why);
        moeh_agent_set_fatal(a, rc < 0 ? rc : -EIO, "the final model could not be stored: %s",
                             err.msg);
        return;
    }
    send_ack(a, fm, 0, "");
    if (!a->have_final)
        MOEH_INFO(
            "the run's model (round %u of %u, the selected one) is in %s (%llu bytes, SHA-256 "
            "%02x%02x%02x%02x...)",
            fm->selected_round, fm->rounds, path, (unsigned long long)fm->n_bytes,
            fm->sha256.data[0], fm->sha256.data[1], fm->sha256.data[2], fm->sha256.data[3]);
    a->have_final = 1;
}
