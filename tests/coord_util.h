/* coord_util.h - the fixture shared by the in-process coordinator tests (test_coordinator.c,
 * test_coordinator_secagg.c): a core with a fake transport, fake clock and fake sites that
 * build real envelopes. Defined in coord_util.c, compiled into each of them. */
#ifndef MOEH_TESTS_COORD_UTIL_H
#define MOEH_TESTS_COORD_UTIL_H

#include "moeh_coord_core.h"

#include "moeh_coord_report.h"

#include "moeh_dp_ledger.h"
#include "moeh_keys.h"
#include "moeh_quant.h"
#include "moeh_schema.h"
#include "moeh_secagg.h"
#include "moeh_secsum.h"
#include "moeh_stream.h"
#include "moeh_uploads.h"
#include "moeh_wire.h"
#include "test_util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

#define N_SITES 3
#define MAX_SENT 4096

typedef struct {
    char rid[32];
    Moeh__Envelope *env; /* an unpacked copy of what the core sent */
    size_t n_frames;     /* the tensor frames that went with it */
} sent_t;

typedef struct {
    char id[16];
    char rid[32]; /* the routing id of its current connection */
    uint64_t n_train;
    uint64_t n_val; /* validation rows its Hello declares (test rows: 40) */
    moeh_secagg_client_t *sa;
} site_t;

typedef struct {
    char dir[256];
    moeh_coord_cfg_t cfg;
    moeh_coord_io_t io;
    moeh_coord_core_t *core;
    sent_t sent[MAX_SENT];
    size_t n_sent;
    const char *registry[8];
    size_t n_registry;
    uint32_t saved_round;
    int64_t now;
    site_t site[N_SITES];
    int whole_uploads; /* deliver granted uploads whole (as protocol 6 did), not in chunks */
    FILE *table;       /* set before fx_create: the core's tables go there (print_table on) */
} fx_t;

/* The last message of this type sent to rid (NULL: none). */
const Moeh__Envelope *last_to(const fx_t *f, const char *rid, Moeh__MsgType type);

size_t count_sent(const fx_t *f, Moeh__MsgType type);

/* The tensor frames that went with the last message of this type sent to rid (asserting one). */
size_t last_frames_to(const fx_t *f, const char *rid, Moeh__MsgType type);

/* The message of the last Error sent to rid, asserting there is one. */
const char *last_error(const fx_t *f, const char *rid, int want_code);

void fx_create(fx_t *f, void (*tweak)(moeh_coord_cfg_t *));

int fx_setup(void **state);

int fx_teardown(void **state);

/* Packs env (with frames) like a site would, decodes it like run.c does, and hands it to the
 * core as coming from routing id rid and authenticated peer; with granted uploads
 * (cfg.upload_slots, and not whole_uploads) an Update or a TRAIN SecaggMasked goes in chunks
 * under the core's credit, as an agent sends it. The decoder's code, or the core's. */
int deliver_from(fx_t *f, const char *rid, const char *peer, Moeh__Envelope *env,
                 const moeh_frame_t *frames, size_t n_frames);

int deliver(fx_t *f, int k, Moeh__Envelope *env, const moeh_frame_t *frames, size_t n_frames);
/* Site k announces its reply of (round, version) with a plain UploadReady (granted uploads). */
void upload_ready(fx_t *f, int k, uint32_t round, uint64_t version);

void tick(fx_t *f, int64_t advance_ms);

Moeh__Envelope hello_env(Moeh__Hello *h, const fx_t *f, int k);

void hello(fx_t *f, int k);

void heartbeat(fx_t *f, int k);

/* The RoundStart site k received last, asserting its round and task. */
const Moeh__RoundStart *round_start(const fx_t *f, int k, uint32_t round, Moeh__RoundTask task);

/* Site k's normalisation statistics: count, sum, sum of squares per feature. */
void site_stats(int k, size_t n_norm, double *st);

void send_stats(fx_t *f, int k);

/* Site k's update words for a round: every group trained with weight w. */
uint32_t *update_words(const fx_t *f, int k, const Moeh__RoundConfig *rc, uint32_t w, size_t extra);

Moeh__Envelope update_env(Moeh__Update *u, uint32_t round, uint64_t version);

/* Sends site k's update (weight w) for round/version, encoded for the TRAIN RoundStart rs;
 * the core's code. */
int send_update_for(fx_t *f, int k, const Moeh__RoundStart *rs, uint32_t round, uint64_t version,
                    uint32_t w);

/* The same for the last RoundStart site k received, which must be round's TRAIN. */
int send_update(fx_t *f, int k, uint32_t round, uint64_t version, uint32_t w);

/* Every site says Hello; the core's tick follows. */
void join_all(fx_t *f);

/* Joins every site and completes the STATS phase; TRAIN of round 1 is open afterwards. */
void join_and_stats(fx_t *f);

/* fx_create(f, tweak), then join_and_stats: the model version TRAIN of round 1 starts from. */
uint64_t fx_start(fx_t *f, void (*tweak)(moeh_coord_cfg_t *));

/* A copy of the core's current parameters (the caller frees it). */
float *fx_model_copy(const fx_t *f);

/* Every line of f->dir/metrics.jsonl, parsed, as one JSON array (the caller deletes it); a
 * missing file or a line that does not parse fails the test. */
cJSON *fx_metrics(const fx_t *f);

/* The number `key` of a metrics line (NAN when absent); its string (NULL when absent). */
double jnum(const cJSON *j, const char *key);
const char *jstr(const cJSON *j, const char *key);
/* One split's figures of a fake site's evaluation: hist (MOEH_N_SLICES, tasks, 2, eval_bins)
 * over `rows` rows, `loss` per label, every row EHR-only, zero gate weights. */
typedef struct {
    const uint32_t *hist;
    uint32_t rows;
    double loss;
} fx_split_t;
/* Site k's EvalResult of round/version: the test split's figures, and with val (not NULL) the
 * validation split's, as the answer to VALIDATE carries them (protocol 9); delivered, asserted
 * 0. deliver_eval: the test split only (the answer to EVALUATE). */
void deliver_eval_splits(fx_t *f, int k, uint32_t round, uint64_t version, const fx_split_t *test,
                         const fx_split_t *val);
void deliver_eval(fx_t *f, int k, uint32_t round, uint64_t version, const uint32_t *hist,
                  uint32_t rows, double loss);
/* Histograms of `rows` rows with every task perfectly separated (negatives in score bin 2,
 * positives in bin 7) in all rows and in combination E (the caller frees them). */
uint32_t *fx_separated_hist(const fx_t *f, uint32_t rows);
/* Site k's evaluation with fx_separated_hist's scores, loss 0.25 per label: send_eval the answer
 * to EVALUATE (test rows), send_validate the answer to VALIDATE (test and validation rows). */
void send_eval(fx_t *f, int k, uint32_t round, uint64_t version, uint32_t rows);
void send_validate(fx_t *f, int k, uint32_t round, uint64_t version, uint32_t test_rows,
                   uint32_t val_rows);

/* The expected model after sites (mask) sent site_delta() with weights n_train: the
 * hand-computed weighted mean of their deltas added to w0. */
void assert_weighted_mean(const fx_t *f, const float *w0, unsigned mask, int unweighted);

#endif
