/* fed_util.h - shared by the multi-process federation tests (test_federation.c,
 * test_fed_faults.c, test_fed_secagg.c, test_fed_dp.c): the fixture (a temporary directory per
 * test, the site datasets and keys generated once per test program in its own mkdtemp
 * directory), starting and reaping the real binaries, reading metrics.jsonl, and a rogue site
 * speaking the wire protocol by hand. Defined in fed_util.c. */
#ifndef MOEH_TESTS_FED_UTIL_H
#define MOEH_TESTS_FED_UTIL_H

#include "test_util.h"

#include "moeh_keys.h"
#include "moeh_secagg.h"
#include "moeh_secsum.h"
#include "moeh_stream.h"
#include "moeh_wire.h"
#include "moeh_localfed.h"
#include "moeh_checkpoint.h"
#include "moeh_dp.h"
#include "moeh_hist.h"
#include "moeh_moe.h"
#include "moeh_npy.h"
#include "moeh_trainer.h"
#include "moeh_split.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <zmq.h>
#include <string.h>

#define N_SITES 3
#define MAX_PROCS 20

typedef struct {
    char dir[256], data[300], keys[300], logs[300], out[300];
    char bin[2048];
    moeh_proc_t procs[MAX_PROCS];
    size_t n_procs;
    char endpoint[256];
} fixture_t;

typedef struct {
    int n_eval;
    int sites[64];
    double train_loss[64];
    double test_loss[64];
    double auroc_mean[64];
    double dp_epsilon[64], dp_epsilon_coord[64], dp_noise[64], dp_clip[64], dp_delta[64];
    int dp_rounds[64];
    int n_gone;
} metrics_t;

/* A hostile admitted site, speaking the wire protocol by hand. */
typedef struct {
    void *ctx, *sock;
    moeh_wire_limits_t lim;
} rogue_t;

/* cmocka group setup and teardown: the site datasets and keys, in a mkdtemp directory of this
 * test program. */
int fed_group_setup(void **state);
int fed_group_teardown(void **state);
/* cmocka per-test setup and teardown: the fixture_t of one test in its own directory. */
int fed_setup(void **state);
int fed_teardown(void **state);

/* Starts the coordinator; bind may be NULL (any port) and wait_sites defaults to "3". */
moeh_proc_t *start_coordinator_ex2(fixture_t *f, const char *rounds, const char *min_sites,
                                   const char *wait_sites, const char *bind, const char *log_name,
                                   char *const more[]);

moeh_proc_t *start_coordinator_ex(fixture_t *f, const char *rounds, const char *min_sites,
                                  const char *wait_sites, const char *bind, const char *log_name);

moeh_proc_t *start_coordinator(fixture_t *f, const char *rounds, const char *min_sites);

/* Starts an agent claiming site_id with the key file of key_site (so that the two may differ). */
moeh_proc_t *start_agent(fixture_t *f, const char *site_id, const char *data_site,
                         const char *key_site, char *const extra[]);

/* A number of a metrics line, NAN when absent or null. */
double jget(const cJSON *j, const char *key);

/* The number `key` of the first metrics line of `event` for `round` (any round if < 0) in
 * OUT/metrics.jsonl; NAN if there is none. */
double metric(const char *out, const char *event, int round, const char *key);

/* A securely aggregated phase summed `sites` masked vectors of `members` (the others dropped),
 * as its metrics line says. */
void assert_summed(const char *out, const char *event, int round, int sites, int members);

void read_metrics(const fixture_t *f, metrics_t *m);

/* The sites of each evaluated round of f->out, one digit a round ("33222": five rounds, three
 * sites in the first two): read_metrics's n_eval and sites[] must be exactly these, and n_gone
 * the number of sites gone (if n_gone >= 0). */
void assert_round_sites(const fixture_t *f, const char *sites, int n_gone);

/* OUT/metrics.jsonl, opened for metrics_next (the test fails if it is missing). */
FILE *metrics_open(const char *out);
/* The next line of a metrics file as a JSON object (the caller deletes it) with its "event"
 * in *ev, or NULL at the end; a line that is not such an object fails the test. */
cJSON *metrics_next(FILE *fp, char *line, size_t cap, const char **ev);

void wait_exit(moeh_proc_t *p, int timeout_ms, int want_code);

/* Starts the three agents, site `victim` (0..2) with the fault option `opt value`; waits for
 * it to die by SIGKILL, for the coordinator c to exit with coord_rc, then for the two other
 * agents to exit 0. */
void run_with_victim(fixture_t *f, moeh_proc_t *c, int victim, const char *opt, const char *value,
                     int coord_rc);

int file_contains(const char *path, const char *needle);
/* file_contains of f->logs/log_name. */
int log_contains(const fixture_t *f, const char *log_name, const char *needle);
/* How many times needle occurs in f->logs/log_name (0 if it cannot be read). */
int log_count(const fixture_t *f, const char *log_name, const char *needle);

/* The model options of every coordinator these tests start (small, fast), which a resumed
 * coordinator must repeat: a list of argv strings. */
#define FED_MODEL_ARGS                                                                             \
    "--d-emb", "16", "--d-hidden", "16", "--note-buckets", "1024", "--batch-size", "32"

/* Runs moeh-coordinator on any port of 127.0.0.1 with the test's registry and key, --out
 * f->out and `args` (NULL-terminated), logging to f->logs/log_name, and waits (20 s) for it to
 * exit with `code`: a coordinator that refuses its options or its run directory. */
void coordinator_exits(fixture_t *f, const char *log_name, char *const args[], int code);

/* Waits (at most 20 s, else the test fails) until f->logs/log_name contains needle, failing
 * at once if p exits meanwhile. */
void wait_log_of(const fixture_t *f, moeh_proc_t *p, const char *log_name, const char *needle);

/* The agent of `site` (its own key and data) logged that the coordinator paused the run and is
 * still running, waiting for a resumed coordinator; it is then stopped with SIGTERM (130). */
void stop_paused_agent(const fixture_t *f, moeh_proc_t *a, const char *site);

/* The final models of two runs (OUT/model.npy): equal byte for byte (same) or not. */
void assert_models(const char *out_a, const char *out_b, int same);
#define assert_same_model(a, b) assert_models((a), (b), 1)

void start_all_agents(fixture_t *f, moeh_proc_t **a, char *const extra[]);
void wait_run(moeh_proc_t *c, moeh_proc_t **a);

/* Runs a federation of site-1 and site-2 only (quorum 2, waiting for 2) into f->out, the
 * coordinator logging to log_name; all three exit 0. */
void run_two_sites(fixture_t *f, const char *rounds, const char *log_name);

/* Runs a federation of the three sites with the given coordinator options into f->dir/name. */
void run_all(fixture_t *f, const char *name, const char *rounds, char *const more[]);

/* Rewrites the test's registry to admit exactly the given sites (by their public keys). */
void write_registry(const fixture_t *f, const char *const *sites, size_t n);

/* Says Bye (delivered: linger 1 s) and closes r. */
void rogue_leave(rogue_t *r);

/* Registers a fourth site, "site-x", with a fresh key (the three real sites keep theirs). */
void register_site_x(fixture_t *f);

/* Connects r to endpoint over CURVE with site-x's key and builds its Hello: site-1's data
 * shapes and no training rows (weight 0: its zeros change no sum). */
void rogue_connect(fixture_t *f, rogue_t *r, const char *endpoint, Moeh__Envelope *env,
                   Moeh__Hello *h);

/* Takes r->lim from a Welcome (the message m, which is cleared). */
void rogue_welcome(rogue_t *r, moeh_msg_t *m);

/* The usual rogue test: site-x registered, the coordinator (3 rounds, quorum 2, waiting for 4
 * sites, with `extra` options) and the three real agents started, and site-x joined (Welcome
 * read). The coordinator's log path goes to log. */
/* extra (NULL-terminated, may be NULL) then --no-validate, in buf (cap entries): the options
 * of a coordinator that a scripted rogue site joins (it does not answer VALIDATE). */
char **rogue_opts(char **extra, char **buf, size_t cap);
moeh_proc_t *rogue_join(fixture_t *f, rogue_t *r, char **extra, moeh_proc_t *a[N_SITES], char *log,
                        size_t log_len);

/* Like rogue_next, but keeps the site alive with heartbeats while it waits. */
int rogue_next_alive(rogue_t *r, moeh_msg_t *m);

/* rogue_next_alive, then the message must be of `type` (the caller clears m). */
void rogue_expect(rogue_t *r, moeh_msg_t *m, Moeh__MsgType type);
/* rogue_expect of a RoundStart of `task`, which it returns (in m: the caller clears m). */
const Moeh__RoundStart *rogue_next_round(rogue_t *r, moeh_msg_t *m, Moeh__RoundTask task);

/* Sends env and expects an Error with `code` whose message contains needle (or needle2, if
 * not NULL); RoundStarts arriving first are skipped. */
void rogue_expect_reply2(rogue_t *r, Moeh__Envelope *env, const moeh_frame_t *f, size_t nf,
                         int code, const char *needle, const char *needle2);

void rogue_expect_reply(rogue_t *r, Moeh__Envelope *env, const moeh_frame_t *f, size_t nf, int code,
                        const char *needle);

/* The federation-wide rows of OUT/metrics.jsonl (stats, train, eval, task, gate; the
 * wall-clock "seconds" left out), one canonical JSON line each, in order; and the number of
 * per-site rows (site_update, site_eval) and of rows saying they are unavailable. Caller frees. */
char *global_rows(const char *out, int *site_rows, int *unavailable);

/* The global metrics of two runs are the same, value for value. */
void assert_same_global_metrics(const char *out_a, const char *out_b);

/* Sends env with its frames; with needle, then expects an Error of `code` containing it
 * (rogue_expect_reply). */
/* Sends env with its frames as a granted upload does (protocol 7): in chunks of stream
 * `stream` under the coordinator's credits, reading them (and nothing else) as it goes. */
void rogue_send_stream(rogue_t *r, uint64_t stream, Moeh__Envelope *env, const moeh_frame_t *f,
                       size_t nf);
void rogue_send_expect(rogue_t *r, Moeh__Envelope *env, const moeh_frame_t *f, size_t nf, int code,
                       const char *needle);
/* The rogue's STATS reply, a clear StatsResult accepted by the wire: all-zero sums but for the
 * first three values (first; NULL: zeros too), sent with rogue_send_expect. */
void rogue_stats(rogue_t *r, const double first[3], int code, const char *needle);
/* rogue_stats of zeros only, no reply expected. */
void rogue_send_zero_stats(rogue_t *r);

/* A test of these programs: fed_setup and fed_teardown around it. */
#define FED_TEST(fn) cmocka_unit_test_setup_teardown(fn, fed_setup, fed_teardown)

/* What every federation test program's main does first: one BLAS thread (bit-exact comparisons
 * across processes) and MOEH_TEST_FILTER (e.g. 'test_secagg*') as cmocka's test filter. */
void fed_main_init(void);

/* A DEALER of site-x's key (registered, so CURVE and ZAP admit it) on f->endpoint that keeps at
 * most one message and ~1 KiB of kernel buffer for reading, and never reads. */
void *fed_flood_socket(fixture_t *f, void *ctx);
/* The same, reconnecting reconnect_ms after its connection is closed or refused (100 above). */
void *fed_flood_socket_ivl(fixture_t *f, void *ctx, int reconnect_ms);

#endif
