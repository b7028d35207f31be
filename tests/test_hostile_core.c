/* test_hostile_core.c - the coordinator core's defences against a hostile admitted key (issue
 * 13, findings 1, 2 and 8), driven in-process with the fake transport and clock of
 * coord_util.h: Hello and Error replies are rate-limited per key (token buckets on the core's
 * clock), a Hello in mid-phase earns the model at most once per phase, a peer whose queue is
 * full (the transport says -EAGAIN) is dropped without touching the honest sites' round, and a
 * checkpoint that cannot be written is written again after the next round. The same attacks
 * against a real coordinator process: test_hostile.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "coord_util.h"

#include <sys/stat.h>
#include <unistd.h>

static size_t count_to(const fx_t *f, const char *rid, Moeh__MsgType type)
{
    size_t n = 0;
    for (size_t i = 0; i < f->n_sent; i++)
        n += !strcmp(f->sent[i].rid, rid) && f->sent[i].env->type == type;
    return n;
}

/* 1,000 Hellos from one key in 7 s while TRAIN is open (finding 8): at most one more model,
 * and no more Welcomes than the Hello bucket holds (burst 4, then one per 2 s). */
static void test_hello_flood_earns_one_model(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    join_and_stats(f);
    size_t starts = count_to(f, f->site[0].rid, MOEH__MSG_TYPE__ROUND_START);
    size_t welcomes = count_to(f, f->site[0].rid, MOEH__MSG_TYPE__WELCOME);
    int64_t t0 = f->now;
    for (int i = 0; i < 1000; i++) {
        Moeh__Hello h;
        Moeh__Envelope env = hello_env(&h, f, 0);
        f->now = t0 + i * 7; /* 7 s in all */
        assert_int_equal(deliver(f, 0, &env, NULL, 0), 0);
    }
    size_t more_starts = count_to(f, f->site[0].rid, MOEH__MSG_TYPE__ROUND_START) - starts;
    size_t more_welcomes = count_to(f, f->site[0].rid, MOEH__MSG_TYPE__WELCOME) - welcomes;
    print_message("1000 Hellos in 7 s: %zu Welcomes, %zu RoundStarts (models)\n", more_welcomes,
                  more_starts);
    assert_true(more_starts <= 1);
    assert_true(more_welcomes >= 1 && more_welcomes <= 4 + 4); /* burst + 7 s at 0.5/s */
    /* the honest sites are untouched: the phase closes with all three */
    uint64_t v = moeh_coord_core_model_version(f->core);
    for (int k = 0; k < N_SITES; k++)
        assert_int_equal(send_update(f, k, 1, v, (uint32_t)f->site[k].n_train), 0);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
    /* a new phase: a Hello may earn the model again */
    f->now += 10000;
    starts = count_to(f, f->site[0].rid, MOEH__MSG_TYPE__ROUND_START);
    Moeh__Hello h;
    Moeh__Envelope env = hello_env(&h, f, 0);
    assert_int_equal(deliver(f, 0, &env, NULL, 0), 0);
    assert_int_equal(count_to(f, f->site[0].rid, MOEH__MSG_TYPE__ROUND_START), starts + 1);
}

/* Error replies per key: a burst of 20, then 5 per second; the flood is neither answered nor
 * logged past that (finding 1: every reply to a flood was a blocking send). */
static void test_error_replies_rate_limited(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
    env.type = MOEH__MSG_TYPE__HEARTBEAT;
    env.body_case = MOEH__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    for (int i = 0; i < 1000; i++) /* not admitted: each one earns an Error, if any */
        assert_int_equal(deliver_from(f, "flood", "site-1", &env, NULL, 0), 0);
    assert_int_equal(count_to(f, "flood", MOEH__MSG_TYPE__ERROR), 20);
    f->now += 1000;
    for (int i = 0; i < 1000; i++)
        assert_int_equal(deliver_from(f, "flood", "site-1", &env, NULL, 0), 0);
    assert_int_equal(count_to(f, "flood", MOEH__MSG_TYPE__ERROR), 25);
    /* the bucket is the key's: another connection of the same key shares it ... */
    assert_int_equal(deliver_from(f, "flood-2", "site-1", &env, NULL, 0), 0);
    assert_int_equal(count_to(f, "flood-2", MOEH__MSG_TYPE__ERROR), 0);
    /* ... and another key is answered */
    assert_int_equal(deliver_from(f, "other", "site-2", &env, NULL, 0), 0);
    last_error(f, "other", -EPERM);
}

/* A transport whose queue to one peer is full: the core's sends to it fail with -EAGAIN. */
static moeh_coord_io_t g_real_io;
static const char *g_full_rid;
static int full_send(void *ctx, const uint8_t *rid, size_t rid_len, Moeh__Envelope *env,
                     const moeh_frame_t *frames, size_t n_frames)
{
    if (g_full_rid && rid_len == strlen(g_full_rid) && !memcmp(rid, g_full_rid, rid_len))
        return -EAGAIN;
    return g_real_io.send(ctx, rid, rid_len, env, frames, n_frames);
}

/* A site that does not read (its queue is full) is dropped; the others finish the phase at
 * once, without waiting for it or for any send timeout. */
static void test_full_queue_drops_the_peer(void **state)
{
    fx_t *f = *state;
    fx_create(f, NULL);
    join_and_stats(f);
    g_real_io = f->io;
    g_full_rid = f->site[2].rid;
    f->io.send = full_send;
    tick(f, 200); /* a heartbeat to every site: site-3's queue is full */
    assert_false(moeh_coord_core_admitted(f->core, "site-3"));
    assert_true(moeh_coord_core_admitted(f->core, "site-1"));
    uint64_t v = moeh_coord_core_model_version(f->core);
    for (int k = 0; k < 2; k++)
        assert_int_equal(send_update(f, k, 1, v, (uint32_t)f->site[k].n_train), 0);
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
    f->io.send = g_real_io.send;
    g_full_rid = NULL;
}

static void slot_1(moeh_coord_cfg_t *c)
{
    c->upload_slots = 1;
    c->heartbeat_timeout_ms = 500; /* also the grant's lifetime from its last chunk */
    c->model.d_emb = 32;           /* an update of more chunks than the credit window */
    c->model.d_hidden = 64;
    c->model.note_buckets = 4096;
}

/* Finding 3 in the protocol (protocol 7): a granted upload travels in chunks under credit.
 * Refused: a chunk from a site without a grant, a granted update sent whole (libzmq would
 * have held it whole), a chunk of another round's stream, a chunk out of order, a chunk 0
 * declaring more than the model's update. A stream cut off by a fresh chunk 0 starts over,
 * and the honest chunked uploads close the phase; the credits keep 8 chunks in flight. */
static void test_granted_upload_in_chunks(void **state)
{
    fx_t *f = *state;
    fx_create(f, slot_1);
    join_and_stats(f);
    uint64_t v = moeh_coord_core_model_version(f->core);
    const Moeh__RoundStart *rs = round_start(f, 0, 1, MOEH__ROUND_TASK__TRAIN);
    assert_true(rs->grant_uploads);
    const moeh_params_t *p = moeh_coord_core_params(f->core);
    uint32_t *words = update_words(f, 0, rs->config, (uint32_t)f->site[0].n_train, 0);
    Moeh__Update u;
    Moeh__Envelope env = update_env(&u, 1, v);
    moeh_frame_t fr = {
        .name = "update", .dtype = MOEH__DTYPE__U32, .data = words, .count = p->n + p->n_groups};
    moeh_stream_tx_t tx = {0};
    assert_int_equal(moeh_stream_tx_begin(&tx, 2, &env, &fr, 1), 0); /* round 1's */
    const uint32_t n_chunks = tx.n_chunks;
    assert_true(n_chunks > MOEH_STREAM_WINDOW); /* the credit matters */
    Moeh__Envelope ce;
    Moeh__UploadChunk ch;
    /* no grant yet */
    assert_true(moeh_stream_tx_next(&tx, &ce, &ch));
    assert_int_equal(deliver(f, 0, &ce, NULL, 0), 0);
    assert_non_null(strstr(last_error(f, f->site[0].rid, -ESTALE), "no upload slot is granted"));
    upload_ready(f, 0, 1, v);
    assert_non_null(last_to(f, f->site[0].rid, MOEH__MSG_TYPE__UPLOAD_GRANT));
    /* the update whole */
    f->whole_uploads = 1;
    assert_int_equal(deliver(f, 0, &env, &fr, 1), 0);
    assert_non_null(strstr(last_error(f, f->site[0].rid, -EBADMSG), "travels in upload_chunks"));
    f->whole_uploads = 0;
    /* another round's stream */
    ch.stream = 3;
    assert_int_equal(deliver(f, 0, &ce, NULL, 0), 0);
    assert_non_null(strstr(last_error(f, f->site[0].rid, -ESTALE), "expected this round's"));
    ch.stream = 2;
    /* a chunk 0 declaring more than an update of this model (a fresh message of its own) */
    uint64_t huge[2] = {100, 4 * (uint64_t)(p->n + p->n_groups) + 1000000};
    Moeh__UploadChunk big = ch;
    big.part_bytes = huge;
    big.n_chunks =
        (uint32_t)((huge[0] + huge[1] + MOEH_STREAM_CHUNK_BYTES - 1) / MOEH_STREAM_CHUNK_BYTES);
    Moeh__Envelope be;
    moeh_env_upload_chunk(&be, &big);
    int rc = deliver(f, 0, &be, NULL, 0);
    assert_true(rc == 0 || rc == -EBADMSG); /* the decoder or the receiver refuses it */
    assert_true(f->n_sent > 0 && f->sent[f->n_sent - 1].env->type == MOEH__MSG_TYPE__ERROR);
    /* chunk 0 and then chunk 2: out of order */
    assert_int_equal(deliver(f, 0, &ce, NULL, 0), 0);
    const Moeh__Envelope *cr = last_to(f, f->site[0].rid, MOEH__MSG_TYPE__UPLOAD_CREDIT);
    assert_non_null(cr);
    assert_int_equal(cr->upload_credit->up_to, 1 + MOEH_STREAM_WINDOW);
    assert_true(moeh_stream_tx_next(&tx, &ce, &ch)); /* chunk 1, skipped */
    assert_true(moeh_stream_tx_next(&tx, &ce, &ch)); /* chunk 2 */
    assert_int_equal(deliver(f, 0, &ce, NULL, 0), 0);
    assert_non_null(strstr(last_error(f, f->site[0].rid, -EBADMSG), "expected chunk 1"));
    moeh_stream_tx_clear(&tx);
    /* the honest upload (coord_util sends it in chunks under the credits) closes the phase
     * with the others' */
    free(words);
    size_t sent0 = f->n_sent;
    assert_int_equal(send_update(f, 0, 1, v, (uint32_t)f->site[0].n_train), 0);
    size_t credits = count_to(f, f->site[0].rid, MOEH__MSG_TYPE__UPLOAD_CREDIT);
    print_message("an update of %zu words in %u chunks of %u bytes: %zu messages back, %zu "
                  "credits to site-1 in all\n",
                  p->n + p->n_groups, n_chunks, MOEH_STREAM_CHUNK_BYTES, f->n_sent - sent0,
                  credits);
    for (int k = 1; k < N_SITES; k++) {
        upload_ready(f, k, 1, v);
        assert_non_null(last_to(f, f->site[k].rid, MOEH__MSG_TYPE__UPLOAD_GRANT));
        assert_int_equal(send_update(f, k, 1, v, (uint32_t)f->site[k].n_train), 0);
    }
    tick(f, 10);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_EVAL);
}

static void two_rounds(moeh_coord_cfg_t *c)
{
    c->rounds = 2;
}

static void train_and_eval(fx_t *f, uint32_t round)
{
    uint64_t v = moeh_coord_core_model_version(f->core);
    for (int k = 0; k < N_SITES; k++) {
        round_start(f, k, round, MOEH__ROUND_TASK__TRAIN);
        assert_int_equal(send_update(f, k, round, v, (uint32_t)f->site[k].n_train), 0);
    }
    tick(f, 10);
    for (int k = 0; k < N_SITES; k++) {
        round_start(f, k, round, MOEH__ROUND_TASK__EVALUATE);
        send_eval(f, k, round, v + 1, 20);
    }
    tick(f, 10);
}

/* A checkpoint that cannot be written (here: a directory is in its way) does not end the run:
 * it is written again after the next round (finding 2: "Too many open files" ended it). */
static void test_checkpoint_write_retried(void **state)
{
    fx_t *f = *state;
    fx_create(f, two_rounds);
    char ck[400], in[420];
    snprintf(ck, sizeof ck, "%s/checkpoint.moeh", f->dir);
    snprintf(in, sizeof in, "%s/x", ck);
    assert_int_equal(mkdir(ck, 0700), 0);
    FILE *fp = fopen(in, "w");
    assert_non_null(fp);
    fclose(fp);
    join_and_stats(f);
    train_and_eval(f, 1);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_TRAIN);
    assert_int_equal(moeh_coord_core_round(f->core), 2);
    assert_int_equal(f->saved_round, 0); /* not saved */
    assert_int_equal(unlink(in), 0);
    assert_int_equal(rmdir(ck), 0);
    train_and_eval(f, 2);
    assert_int_equal(moeh_coord_core_phase(f->core), MOEH_COORD_DONE);
    assert_int_equal(f->saved_round, 2);
    struct stat st;
    assert_int_equal(stat(ck, &st), 0);
    assert_true(S_ISREG(st.st_mode));
}

MOEH_TEST_MAIN(
    NULL, NULL,
    cmocka_unit_test_setup_teardown(test_hello_flood_earns_one_model, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_error_replies_rate_limited, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_full_queue_drops_the_peer, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_granted_upload_in_chunks, fx_setup, fx_teardown),
    cmocka_unit_test_setup_teardown(test_checkpoint_write_retried, fx_setup, fx_teardown))
