/* test_stream.c - a granted upload in chunks (proto/stream.c): an Update cut by the sender
 * (moeh_stream_tx_*) under the credit window, each chunk packed with moeh_wire_pack() and
 * decoded with moeh_wire_decode() as it would travel, reassembled by the receiver
 * (moeh_stream_rx_put) and decoded back equal to the original, at sizes of several chunks, one
 * chunk and a multiple of the chunk; the receiver refusing what does not continue its stream or
 * does not fit the model, with the documented code, a message naming the field and the
 * receiver left idle; a credit for another stream; and the wire rules of UploadChunk and
 * UploadCredit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_stream.h"
#include "wire_util.h"

#include <stdlib.h>

#define STREAM_ID 7u

/* wire_util's model, but with n_params parameters. */
static moeh_wire_limits_t lim_of(uint64_t n_params)
{
    return (moeh_wire_limits_t){n_params, N_GROUPS, N_TASKS, N_BINS, N_NORM, N_EXPERTS};
}

static uint32_t chunks_for(size_t bytes)
{
    return (uint32_t)((bytes + MOEH_STREAM_CHUNK_BYTES - 1) / MOEH_STREAM_CHUNK_BYTES);
}

/* An Update of a model of n_params parameters: its envelope, the "update" frame and the
 * packed sizes. */
typedef struct {
    Moeh__Envelope env;
    Moeh__Update upd;
    uint32_t *words;
    moeh_frame_t frame;
    moeh_wire_limits_t lim;
    size_t hdr_len, total; /* the packed header; header + frame bytes */
} big_update_t;

static void big_update_free(big_update_t *b)
{
    free(b->words);
    b->words = NULL;
}

static void mk_big_update(big_update_t *b, uint64_t n_params, uint64_t n_samples)
{
    memset(b, 0, sizeof *b);
    b->lim = lim_of(n_params);
    const uint64_t n = n_params + N_GROUPS;
    b->words = malloc(n * sizeof *b->words);
    assert_non_null(b->words);
    for (uint64_t i = 0; i < n; i++)
        b->words[i] = 0x9e3779b9u * (uint32_t)(i + 1);
    moeh__update__init(&b->upd);
    b->upd.round = 3;
    b->upd.model_version = 8;
    b->upd.train_loss = 0.6931;
    b->upd.n_samples = n_samples;
    b->upd.steps = 4;
    moeh_env_update(&b->env, &b->upd);
    b->frame = (moeh_frame_t){"update", MOEH__DTYPE__U32, b->words, n, NULL};
    uint8_t *hdr = NULL;
    assert_int_equal(moeh_wire_pack(&b->env, &b->frame, 1, &hdr, &b->hdr_len), 0);
    free(hdr);
    b->total = b->hdr_len + 4 * n;
}

/* An Update whose header and frame come to exactly `total` bytes: the parameter count sets
 * the frame (4 bytes a word), n_samples (varints of 1 to 4 bytes) the header's length mod 4. */
static void mk_update_of_total(big_update_t *b, size_t total)
{
    static const uint64_t samples[] = {1, 200, 40000, 3000000};
    for (uint64_t np = total / 4 - N_GROUPS; np > total / 4 - N_GROUPS - 64; np--)
        for (size_t s = 0; s < sizeof samples / sizeof samples[0]; s++) {
            mk_big_update(b, np, samples[s]);
            if (b->total == total) return;
            big_update_free(b);
        }
    fail_msg("no Update of exactly %zu bytes", total);
}

/* Packs env (a chunk or a credit) as it would be sent; *hdr is malloc'd. */
static void pack_env(Moeh__Envelope *env, uint8_t **hdr, size_t *len)
{
    *hdr = NULL;
    assert_int_equal(moeh_wire_pack(env, NULL, 0, hdr, len), 0);
    assert_true(*len <= MOEH_MAX_HEADER_BYTES);
}

/* Decodes a packed chunk under lim (it must pass) and puts it into r. */
static int put_packed(moeh_stream_rx_t *r, const moeh_wire_limits_t *lim, const uint8_t *hdr,
                      size_t len, uint32_t *up, moeh_err_t *err)
{
    Moeh__Envelope *e = NULL;
    moeh_err_t derr = {{0}};
    int rc = moeh_wire_decode(lim, hdr, len, NULL, 0, &e, &derr);
    if (rc) print_error("the chunk did not decode: %d %s\n", rc, derr.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(e->type, MOEH__MSG_TYPE__UPLOAD_CHUNK);
    assert_non_null(e->upload_chunk);
    *up = 0xdeadbeefu;
    rc = moeh_stream_rx_put(r, e->upload_chunk, moeh_stream_max_bytes(lim), up, err);
    moeh__envelope__free_unpacked(e, NULL);
    return rc;
}

/* Packs chunk ch, decodes it under lim and puts it into r. */
static int put_chunk(moeh_stream_rx_t *r, const moeh_wire_limits_t *lim,
                     const Moeh__UploadChunk *ch, uint32_t *up, moeh_err_t *err)
{
    Moeh__Envelope env;
    Moeh__UploadChunk copy = *ch;
    moeh_env_upload_chunk(&env, &copy);
    uint8_t *hdr;
    size_t len;
    pack_env(&env, &hdr, &len);
    int rc = put_packed(r, lim, hdr, len, up, err);
    free(hdr);
    return rc;
}

/* The decoded stream must be b's Update, field for field and byte for byte. */
static void check_decoded(const moeh_stream_rx_t *r, const big_update_t *b)
{
    Moeh__Envelope *e = NULL;
    moeh_iov_t frames[MOEH_MAX_FRAMES];
    size_t nf = 99;
    moeh_err_t err = {{0}};
    int rc = moeh_stream_rx_decode(r, &b->lim, &e, frames, &nf, &err);
    if (rc) print_error("rx_decode: %d %s\n", rc, err.msg);
    assert_int_equal(rc, 0);
    assert_non_null(e);
    assert_int_equal(e->protocol_version, MOEH_PROTOCOL_VERSION);
    assert_int_equal(e->type, MOEH__MSG_TYPE__UPDATE);
    assert_int_equal(e->body_case, MOEH__ENVELOPE__BODY_UPDATE);
    const Moeh__Update *u = e->update;
    assert_int_equal(u->round, b->upd.round);
    assert_int_equal(u->model_version, b->upd.model_version);
    assert_true(u->train_loss == b->upd.train_loss);
    assert_int_equal(u->n_samples, b->upd.n_samples);
    assert_int_equal(u->steps, b->upd.steps);
    assert_int_equal(u->secagg_session, 0);
    assert_int_equal(e->n_frames, 1);
    assert_string_equal(e->frames[0]->name, "update");
    assert_int_equal(e->frames[0]->dtype, MOEH__DTYPE__U32);
    assert_int_equal(e->frames[0]->count, b->frame.count);
    assert_int_equal(nf, 1);
    assert_int_equal(frames[0].len, 4 * b->frame.count);
    assert_memory_equal(frames[0].data, b->words, 4 * b->frame.count);
    moeh__envelope__free_unpacked(e, NULL);
}

/* Sends b through a sender and a receiver as the peers would: the sender gives what its credit
 * allows (then nothing more), each chunk is packed, decoded under b's limits and put into the
 * receiver, and the receiver's credit is given back to the sender; the receiver's stream must
 * decode to b. */
static void stream_through(const big_update_t *b)
{
    moeh_stream_tx_t t = {0};
    moeh_stream_rx_t r = {0};
    assert_int_equal(moeh_stream_tx_begin(&t, STREAM_ID, (Moeh__Envelope *)&b->env, &b->frame, 1),
                     0);
    assert_true(moeh_stream_tx_active(&t));
    const uint32_t n = chunks_for(b->total);
    uint8_t **wire = calloc(n, sizeof *wire);
    size_t *wlen = calloc(n, sizeof *wlen);
    assert_non_null(wire);
    assert_non_null(wlen);
    uint32_t sent = 0, got = 0, credit = MOEH_STREAM_WINDOW;
    size_t bytes = 0;
    int done = 0;
    while (!done) {
        /* the sender sends all its credit allows, and then nothing */
        Moeh__Envelope env;
        Moeh__UploadChunk ch;
        while (moeh_stream_tx_next(&t, &env, &ch)) {
            assert_true(sent < n);
            assert_true(sent < credit);
            assert_int_equal(env.type, MOEH__MSG_TYPE__UPLOAD_CHUNK);
            assert_ptr_equal(env.upload_chunk, &ch);
            assert_int_equal(ch.stream, STREAM_ID);
            assert_int_equal(ch.index, sent);
            assert_int_equal(ch.n_chunks, n);
            assert_int_equal(ch.data.len, sent + 1 < n
                                              ? MOEH_STREAM_CHUNK_BYTES
                                              : b->total - (size_t)sent * MOEH_STREAM_CHUNK_BYTES);
            if (sent == 0) {
                assert_int_equal(ch.n_part_bytes, 2);
                assert_int_equal(ch.part_bytes[0], b->hdr_len);
                assert_int_equal(ch.part_bytes[1], 4 * b->frame.count);
            } else {
                assert_int_equal(ch.n_part_bytes, 0);
            }
            bytes += ch.data.len;
            pack_env(&env, &wire[sent], &wlen[sent]);
            sent++;
        }
        assert_int_equal(sent, credit < n ? credit : n);
        assert_int_equal(moeh_stream_tx_next(&t, &env, &ch), 0); /* still nothing */
        assert_int_equal(moeh_stream_tx_active(&t), sent < n);
        /* the receiver takes what arrived, crediting each chunk back */
        assert_true(got < sent);
        while (got < sent) {
            uint32_t up;
            moeh_err_t err = {{0}};
            int rc = put_packed(&r, &b->lim, wire[got], wlen[got], &up, &err);
            if (rc < 0) print_error("rx_put chunk %u: %d %s\n", got, rc, err.msg);
            free(wire[got]);
            wire[got] = NULL;
            got++;
            assert_true(moeh_stream_rx_active(&r));
            if (got == n) {
                assert_int_equal(rc, 1);
                assert_int_equal(got, sent);
                done = 1;
                break;
            }
            assert_int_equal(rc, 0);
            assert_int_equal(up, got + MOEH_STREAM_WINDOW < n ? got + MOEH_STREAM_WINDOW : n);
            assert_int_equal(moeh_stream_tx_credit(&t, STREAM_ID, up), 0);
            if (up > credit) credit = up;
        }
    }
    assert_int_equal(sent, n);
    assert_int_equal(bytes, b->total);
    assert_false(moeh_stream_tx_active(&t));
    check_decoded(&r, b);
    check_decoded(&r, b); /* the frames stay the receiver's until it is cleared */
    moeh_stream_rx_clear(&r);
    assert_false(moeh_stream_rx_active(&r));
    moeh_stream_tx_clear(&t);
    assert_false(moeh_stream_tx_active(&t));
    free(wire);
    free(wlen);
}

static void test_max_bytes(void **state)
{
    assert_int_equal(moeh_stream_max_bytes(NULL), 0);
    assert_int_equal(moeh_stream_max_bytes(&k_none), 0);
    assert_int_equal(moeh_stream_max_bytes(&k_groups_only), 0);
    const uint64_t sizes[] = {N_PARAMS, 30000, 100000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        moeh_wire_limits_t lim = lim_of(sizes[i]);
        uint64_t words = sizes[i] + N_GROUPS;
        uint64_t masked = moeh_wire_secsum_len(&lim, MOEH__ROUND_TASK__TRAIN);
        assert_true(masked > 0);
        if (masked > words) words = masked;
        /* every phase's reply travels in chunks (protocol 7): the largest of them all */
        const Moeh__RoundTask others[] = {MOEH__ROUND_TASK__EVALUATE, MOEH__ROUND_TASK__VALIDATE,
                                          MOEH__ROUND_TASK__STATS};
        for (size_t k = 0; k < 3; k++)
            if (moeh_wire_secsum_len(&lim, others[k]) > words)
                words = moeh_wire_secsum_len(&lim, others[k]);
        uint64_t eval = (uint64_t)MOEH_N_SLICES * lim.n_tasks * 2 * lim.eval_bins +
                        (uint64_t)MOEH_N_COMBOS * lim.n_experts;
        if (eval > words) words = eval;
        if (6 * (uint64_t)lim.n_norm > words) words = 6 * (uint64_t)lim.n_norm;
        assert_int_equal(moeh_stream_max_bytes(&lim), MOEH_MAX_HEADER_BYTES + 4 * words);
    }
}

/* Several chunks, more than the window, the last one partial. */
static void test_roundtrip_several_chunks(void **state)
{
    big_update_t b;
    mk_big_update(&b, 100000, 100);
    assert_true(b.total % MOEH_STREAM_CHUNK_BYTES != 0);
    assert_true(chunks_for(b.total) > MOEH_STREAM_WINDOW + 1);
    stream_through(&b);
    big_update_free(&b);
    /* fewer chunks than the window, the last one partial */
    mk_big_update(&b, 30000, 100);
    assert_true(b.total % MOEH_STREAM_CHUNK_BYTES != 0);
    assert_true(chunks_for(b.total) > 1 && chunks_for(b.total) < MOEH_STREAM_WINDOW);
    stream_through(&b);
    big_update_free(&b);
    /* a small model: one partial chunk */
    mk_big_update(&b, N_PARAMS, 100);
    assert_true(b.total < MOEH_STREAM_CHUNK_BYTES);
    stream_through(&b);
    big_update_free(&b);
}

static void test_roundtrip_one_chunk(void **state)
{
    big_update_t b;
    mk_update_of_total(&b, MOEH_STREAM_CHUNK_BYTES);
    assert_int_equal(chunks_for(b.total), 1);
    stream_through(&b);
    big_update_free(&b);
    mk_update_of_total(&b, MOEH_STREAM_CHUNK_BYTES + 1); /* one byte more: two chunks */
    assert_int_equal(chunks_for(b.total), 2);
    stream_through(&b);
    big_update_free(&b);
}

static void test_roundtrip_multiple_of_chunk(void **state)
{
    big_update_t b;
    mk_update_of_total(&b, 3 * MOEH_STREAM_CHUNK_BYTES);
    assert_int_equal(chunks_for(b.total), 3);
    stream_through(&b);
    big_update_free(&b);
    /* exactly the window, then twice the window and one more: credit at the boundaries */
    mk_update_of_total(&b, MOEH_STREAM_WINDOW * MOEH_STREAM_CHUNK_BYTES);
    stream_through(&b);
    big_update_free(&b);
    mk_update_of_total(&b, (2 * MOEH_STREAM_WINDOW + 1) * MOEH_STREAM_CHUNK_BYTES);
    stream_through(&b);
    big_update_free(&b);
}

/* The chunks of one Update, all taken from a sender at once (their data is the sender's). */
typedef struct {
    big_update_t b;
    moeh_stream_tx_t t;
    Moeh__Envelope env[32];
    Moeh__UploadChunk ch[32];
    uint32_t n;
    uint64_t max_bytes;
} chunks_t;

static void mk_chunks(chunks_t *c, uint64_t n_params, uint64_t n_samples)
{
    memset(c, 0, sizeof *c);
    mk_big_update(&c->b, n_params, n_samples);
    c->max_bytes = moeh_stream_max_bytes(&c->b.lim);
    assert_int_equal(moeh_stream_tx_begin(&c->t, STREAM_ID, &c->b.env, &c->b.frame, 1), 0);
    c->n = chunks_for(c->b.total);
    assert_true(c->n <= 32);
    assert_int_equal(moeh_stream_tx_credit(&c->t, STREAM_ID, c->n), 0);
    for (uint32_t i = 0; i < c->n; i++)
        assert_int_equal(moeh_stream_tx_next(&c->t, &c->env[i], &c->ch[i]), 1);
}

static void chunks_free(chunks_t *c)
{
    moeh_stream_tx_clear(&c->t);
    big_update_free(&c->b);
}

/* rx_put of ch must refuse with code and a message saying needle, and leave r idle. */
static void check_put_refused(moeh_stream_rx_t *r, const moeh_wire_limits_t *lim,
                              const Moeh__UploadChunk *ch, int code, const char *needle)
{
    uint32_t up;
    moeh_err_t err = {{0}};
    int rc = put_chunk(r, lim, ch, &up, &err);
    if (rc != code || !strstr(err.msg, needle))
        print_error("expected %d mentioning '%s', got %d: '%s'\n", code, needle, rc, err.msg);
    assert_int_equal(rc, code);
    assert_non_null(strstr(err.msg, needle));
    assert_int_equal(up, 0);
    assert_false(moeh_stream_rx_active(r));
    moeh_stream_rx_t idle = {0};
    assert_memory_equal(r, &idle, sizeof idle);
}

static void put_ok(moeh_stream_rx_t *r, const moeh_wire_limits_t *lim, const Moeh__UploadChunk *ch,
                   int want)
{
    uint32_t up;
    moeh_err_t err = {{0}};
    int rc = put_chunk(r, lim, ch, &up, &err);
    if (rc != want) print_error("rx_put chunk %u: %d %s\n", ch->index, rc, err.msg);
    assert_int_equal(rc, want);
    assert_true(moeh_stream_rx_active(r));
}

static void test_refuse_sequence(void **state)
{
    chunks_t c;
    mk_chunks(&c, 30000, 100);
    const moeh_wire_limits_t *lim = &c.b.lim;
    assert_int_equal(c.n, 4);
    char want[256];
    moeh_stream_rx_t r = {0};

    /* a chunk skipped */
    put_ok(&r, lim, &c.ch[0], 0);
    check_put_refused(&r, lim, &c.ch[2], -EBADMSG,
                      "upload_chunk: chunk 2 of 4 of stream 7, expected chunk 1 of 4 of stream 7");
    /* the receiver is idle: the rest of the stream is refused too */
    check_put_refused(&r, lim, &c.ch[1], -EBADMSG,
                      "upload_chunk: chunk 1 of 4 of stream 7, expected chunk 0");

    /* a chunk of another stream */
    put_ok(&r, lim, &c.ch[0], 0);
    put_ok(&r, lim, &c.ch[1], 0);
    Moeh__UploadChunk other = c.ch[2];
    other.stream = STREAM_ID + 1;
    check_put_refused(&r, lim, &other, -EBADMSG,
                      "upload_chunk: chunk 2 of 4 of stream 8, expected chunk 2 of 4 of stream 7");

    /* a chunk repeated */
    put_ok(&r, lim, &c.ch[0], 0);
    put_ok(&r, lim, &c.ch[1], 0);
    check_put_refused(&r, lim, &c.ch[1], -EBADMSG, "chunk 1 of 4 of stream 7, expected chunk 2");

    /* a chunk with another count than its stream's */
    put_ok(&r, lim, &c.ch[0], 0);
    other = c.ch[1];
    other.n_chunks = 5;
    check_put_refused(&r, lim, &other, -EBADMSG, "chunk 1 of 5 of stream 7, expected chunk 1 of 4");

    /* no stream started (a fresh receiver, and one whose stream was cleared) */
    check_put_refused(&r, lim, &c.ch[1], -EBADMSG, "upload_chunk: chunk 1 of 4 of stream 7");
    put_ok(&r, lim, &c.ch[0], 0);
    moeh_stream_rx_clear(&r);
    check_put_refused(&r, lim, &c.ch[3], -EBADMSG, "upload_chunk: chunk 3 of 4 of stream 7");

    /* a last chunk one byte short, and one byte long */
    for (uint32_t i = 0; i < 3; i++)
        put_ok(&r, lim, &c.ch[i], 0);
    const size_t last = c.b.total - 3 * (size_t)MOEH_STREAM_CHUNK_BYTES;
    assert_true(last > 1 && last < MOEH_STREAM_CHUNK_BYTES);
    other = c.ch[3];
    other.data.len = last - 1;
    snprintf(want, sizeof want, "upload_chunk 3: %zu bytes, expected %zu", last - 1, last);
    check_put_refused(&r, lim, &other, -EBADMSG, want);
    for (uint32_t i = 0; i < 3; i++)
        put_ok(&r, lim, &c.ch[i], 0);
    uint8_t *longer = malloc(last + 1);
    assert_non_null(longer);
    memcpy(longer, c.ch[3].data.data, last);
    longer[last] = 0x5a;
    other.data.data = longer;
    other.data.len = last + 1;
    snprintf(want, sizeof want, "upload_chunk 3: %zu bytes, expected %zu", last + 1, last);
    check_put_refused(&r, lim, &other, -EBADMSG, want);
    free(longer);

    /* after every refusal, the whole stream goes through */
    for (uint32_t i = 0; i < c.n; i++)
        put_ok(&r, lim, &c.ch[i], i + 1 == c.n);
    check_decoded(&r, &c.b);
    moeh_stream_rx_clear(&r);
    chunks_free(&c);
}

static void test_refuse_first_chunk(void **state)
{
    chunks_t c;
    mk_chunks(&c, 30000, 100);
    const moeh_wire_limits_t *lim = &c.b.lim;
    const uint64_t max = c.max_bytes, hlen = c.b.hdr_len;
    char want[256];
    moeh_stream_rx_t r = {0};
    uint64_t pb[1 + MOEH_MAX_FRAMES];
    Moeh__UploadChunk first = c.ch[0];
    first.part_bytes = pb;

    /* one byte more in all than the model allows (each part within it) */
    pb[0] = hlen, pb[1] = max - hlen + 1;
    snprintf(want, sizeof want,
             "upload_chunk: a header of %llu bytes and %llu bytes in all; expected a header of "
             "1..%u bytes and at most %llu in all for this model",
             (unsigned long long)hlen, (unsigned long long)(max + 1), MOEH_MAX_HEADER_BYTES,
             (unsigned long long)max);
    check_put_refused(&r, lim, &first, -EMSGSIZE, want);
    /* the model's most, declared over several frames, is taken */
    pb[0] = hlen, pb[1] = (max - hlen) / 2, pb[2] = max - hlen - pb[1];
    first.n_part_bytes = 3;
    first.n_chunks = chunks_for(max);
    put_ok(&r, lim, &first, 0);
    moeh_stream_rx_clear(&r);
    /* each part over it, so that the sum cannot wrap */
    pb[0] = hlen, pb[1] = max + 1, pb[2] = UINT64_MAX - max;
    check_put_refused(&r, lim, &first, -EMSGSIZE, "upload_chunk.part_bytes[1]: ");
    first.n_part_bytes = 2;

    /* a header part over MOEH_MAX_HEADER_BYTES, and an empty one */
    first.n_chunks = c.n;
    pb[0] = MOEH_MAX_HEADER_BYTES + 1, pb[1] = 4 * c.b.frame.count;
    snprintf(want, sizeof want, "upload_chunk: a header of %u bytes", MOEH_MAX_HEADER_BYTES + 1);
    check_put_refused(&r, lim, &first, -EMSGSIZE, want);
    pb[0] = 0, pb[1] = c.b.total;
    check_put_refused(&r, lim, &first, -EMSGSIZE, "upload_chunk: a header of 0 bytes");

    /* a chunk count that is not the declared total's */
    pb[0] = hlen, pb[1] = 4 * c.b.frame.count;
    first.n_chunks = c.n + 1;
    snprintf(want, sizeof want, "upload_chunk.n_chunks: %u for %zu bytes, expected %u", c.n + 1,
             c.b.total, c.n);
    check_put_refused(&r, lim, &first, -EBADMSG, want);
    first.n_chunks = c.n - 1;
    snprintf(want, sizeof want, "upload_chunk.n_chunks: %u for %zu bytes, expected %u", c.n - 1,
             c.b.total, c.n);
    check_put_refused(&r, lim, &first, -EBADMSG, want);

    /* the only chunk of a one-chunk stream, one byte longer and one byte shorter than its
     * declared total */
    pb[0] = hlen, pb[1] = MOEH_STREAM_CHUNK_BYTES - hlen - 1;
    first.n_chunks = 1;
    check_put_refused(&r, lim, &first, -EBADMSG, "upload_chunk 0: 32768 bytes, expected 32767");
    pb[1] = MOEH_STREAM_CHUNK_BYTES - hlen;
    first.data.len = MOEH_STREAM_CHUNK_BYTES - 1;
    check_put_refused(&r, lim, &first, -EBADMSG, "upload_chunk 0: 32767 bytes, expected 32768");
    first.data.len = MOEH_STREAM_CHUNK_BYTES;

    /* a refusal after part of a stream clears it too */
    put_ok(&r, lim, &c.ch[0], 0);
    put_ok(&r, lim, &c.ch[1], 0);
    pb[0] = MOEH_MAX_HEADER_BYTES + 1, pb[1] = 4;
    first.n_chunks = c.n;
    check_put_refused(&r, lim, &first, -EMSGSIZE, "upload_chunk: a header of 65537 bytes");

    for (uint32_t i = 0; i < c.n; i++)
        put_ok(&r, lim, &c.ch[i], i + 1 == c.n);
    check_decoded(&r, &c.b);
    moeh_stream_rx_clear(&r);
    chunks_free(&c);
}

/* A chunk 0 drops the stream in progress and starts over. */
static void test_restart(void **state)
{
    chunks_t c, d;
    mk_chunks(&c, 30000, 100);
    mk_chunks(&d, 30000, 200); /* another Update of the same size */
    const moeh_wire_limits_t *lim = &c.b.lim;
    moeh_stream_rx_t r = {0};
    /* the same stream again, from the start */
    put_ok(&r, lim, &c.ch[0], 0);
    put_ok(&r, lim, &c.ch[1], 0);
    for (uint32_t i = 0; i < c.n; i++)
        put_ok(&r, lim, &c.ch[i], i + 1 == c.n);
    check_decoded(&r, &c.b);
    /* a complete stream, then a new one of another id */
    for (uint32_t i = 0; i < d.n; i++) {
        d.ch[i].stream = STREAM_ID + 5;
        put_ok(&r, lim, &d.ch[i], i + 1 == d.n);
        assert_int_equal(r.stream, STREAM_ID + 5);
    }
    check_decoded(&r, &d.b);
    /* part of one, then a whole other; the first's chunks no longer fit */
    put_ok(&r, lim, &d.ch[0], 0);
    put_ok(&r, lim, &d.ch[1], 0);
    put_ok(&r, lim, &c.ch[0], 0);
    assert_int_equal(r.stream, STREAM_ID);
    check_put_refused(&r, lim, &d.ch[2], -EBADMSG,
                      "of stream 12, expected chunk 1 of 4 of stream 7");
    for (uint32_t i = 0; i < c.n; i++)
        put_ok(&r, lim, &c.ch[i], i + 1 == c.n);
    check_decoded(&r, &c.b);
    moeh_stream_rx_clear(&r);
    moeh_stream_rx_clear(&r); /* twice: idle */
    assert_false(moeh_stream_rx_active(&r));
    chunks_free(&c);
    chunks_free(&d);
}

/* A stream not yet complete does not decode. */
static void test_decode_incomplete(void **state)
{
    chunks_t c;
    mk_chunks(&c, 30000, 100);
    moeh_stream_rx_t r = {0};
    Moeh__Envelope *e = (Moeh__Envelope *)&r;
    moeh_iov_t frames[MOEH_MAX_FRAMES];
    size_t nf = 99;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_stream_rx_decode(&r, &c.b.lim, &e, frames, &nf, &err), -EBADMSG);
    assert_null(e);
    assert_int_equal(nf, 0);
    assert_non_null(strstr(err.msg, "not complete"));
    put_ok(&r, &c.b.lim, &c.ch[0], 0);
    e = (Moeh__Envelope *)&r;
    err.msg[0] = '\0';
    assert_int_equal(moeh_stream_rx_decode(&r, &c.b.lim, &e, frames, &nf, &err), -EBADMSG);
    assert_null(e);
    assert_non_null(strstr(err.msg, "not complete"));
    assert_true(moeh_stream_rx_active(&r));
    moeh_stream_rx_clear(&r);
    chunks_free(&c);
}

static void test_credit(void **state)
{
    big_update_t b;
    mk_big_update(&b, 100000, 100);
    const uint32_t n = chunks_for(b.total);
    assert_true(n > MOEH_STREAM_WINDOW + 2);
    moeh_stream_tx_t t = {0};
    /* an idle sender takes no credit */
    assert_int_equal(moeh_stream_tx_credit(&t, STREAM_ID, 3), -ESTALE);
    assert_int_equal(moeh_stream_tx_begin(&t, 0, &b.env, &b.frame, 1), -EINVAL);
    assert_false(moeh_stream_tx_active(&t));
    assert_int_equal(moeh_stream_tx_begin(&t, STREAM_ID, &b.env, &b.frame, 1), 0);
    Moeh__Envelope env;
    Moeh__UploadChunk ch;
    for (uint32_t i = 0; i < MOEH_STREAM_WINDOW; i++) {
        assert_int_equal(moeh_stream_tx_next(&t, &env, &ch), 1);
        assert_int_equal(ch.index, i);
        if (i == 2) /* a late, lower credit does not take back the window */
            assert_int_equal(moeh_stream_tx_credit(&t, STREAM_ID, 1), 0);
    }
    assert_int_equal(moeh_stream_tx_next(&t, &env, &ch), 0);
    /* a credit for another stream is stale and changes nothing */
    moeh_stream_tx_t before;
    memcpy(&before, &t, sizeof t);
    assert_int_equal(moeh_stream_tx_credit(&t, STREAM_ID + 1, n), -ESTALE);
    assert_int_equal(moeh_stream_tx_credit(&t, 0, n), -ESTALE);
    assert_memory_equal(&t, &before, sizeof t);
    assert_int_equal(moeh_stream_tx_next(&t, &env, &ch), 0);
    assert_true(moeh_stream_tx_active(&t));
    /* a lower credit does not lower it; a higher one lets exactly that many more go */
    assert_int_equal(moeh_stream_tx_credit(&t, STREAM_ID, 2), 0);
    assert_int_equal(moeh_stream_tx_next(&t, &env, &ch), 0);
    assert_int_equal(moeh_stream_tx_credit(&t, STREAM_ID, MOEH_STREAM_WINDOW + 2), 0);
    assert_int_equal(moeh_stream_tx_next(&t, &env, &ch), 1);
    assert_int_equal(ch.index, MOEH_STREAM_WINDOW);
    assert_int_equal(moeh_stream_tx_next(&t, &env, &ch), 1);
    assert_int_equal(ch.index, MOEH_STREAM_WINDOW + 1);
    assert_int_equal(moeh_stream_tx_next(&t, &env, &ch), 0);
    /* credit beyond the end lets the rest go, and no more */
    assert_int_equal(moeh_stream_tx_credit(&t, STREAM_ID, n + 100), 0);
    for (uint32_t i = MOEH_STREAM_WINDOW + 2; i < n; i++) {
        assert_int_equal(moeh_stream_tx_next(&t, &env, &ch), 1);
        assert_int_equal(ch.index, i);
    }
    assert_int_equal(moeh_stream_tx_next(&t, &env, &ch), 0);
    assert_false(moeh_stream_tx_active(&t));
    moeh_stream_tx_clear(&t);
    assert_int_equal(moeh_stream_tx_credit(&t, STREAM_ID, n), -ESTALE);
    big_update_free(&b);
}

/* UploadChunk and UploadCredit on the wire, under wire_util's small model (k_lim). */
static void mk_chunk_env(Moeh__Envelope *env, Moeh__UploadChunk *ch, uint8_t *data, size_t len,
                         uint32_t index, uint32_t n_chunks, uint64_t *pb, size_t n_pb)
{
    moeh__upload_chunk__init(ch);
    ch->stream = STREAM_ID;
    ch->index = index;
    ch->n_chunks = n_chunks;
    ch->data.data = data;
    ch->data.len = len;
    ch->n_part_bytes = n_pb;
    ch->part_bytes = pb;
    moeh_env_upload_chunk(env, ch);
}

static void check_env_reject(Moeh__Envelope *env, const moeh_wire_limits_t *lim, const char *needle)
{
    uint8_t *hdr;
    size_t len;
    pack_env(env, &hdr, &len);
    check_reject_raw(lim, hdr, len, NULL, 0, -EBADMSG, needle);
    free(hdr);
}

static void check_env_accept(Moeh__Envelope *env, const moeh_wire_limits_t *lim)
{
    uint8_t *hdr;
    size_t len;
    pack_env(env, &hdr, &len);
    Moeh__Envelope *e = NULL;
    moeh_err_t err = {{0}};
    int rc = moeh_wire_decode(lim, hdr, len, NULL, 0, &e, &err);
    if (rc) print_error("unexpected rejection %d: %s\n", rc, err.msg);
    assert_int_equal(rc, 0);
    assert_non_null(e);
    moeh__envelope__free_unpacked(e, NULL);
    free(hdr);
}

static void test_wire_upload_chunk(void **state)
{
    static uint8_t data[MOEH_STREAM_CHUNK_BYTES + 1];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 31);
    const uint64_t most = moeh_stream_max_bytes(&k_lim);
    const uint32_t max_chunks = chunks_for(most);
    assert_true(max_chunks >= 2);
    uint64_t pb[2 + MOEH_MAX_FRAMES] = {100, 40000, 0, 0, 0, 0};
    Moeh__Envelope env;
    Moeh__UploadChunk ch;
    char want[256];

    /* valid: a first chunk, a middle one, a short last one, a single chunk */
    mk_chunk_env(&env, &ch, data, MOEH_STREAM_CHUNK_BYTES, 0, 2, pb, 2);
    check_env_accept(&env, &k_lim);
    mk_chunk_env(&env, &ch, data, MOEH_STREAM_CHUNK_BYTES, 1, 3, NULL, 0);
    check_env_accept(&env, &k_lim);
    mk_chunk_env(&env, &ch, data, 1, 1, 2, NULL, 0);
    check_env_accept(&env, &k_lim);
    mk_chunk_env(&env, &ch, data, 200, 0, 1, pb, 1 + MOEH_MAX_FRAMES);
    check_env_accept(&env, &k_lim);
    mk_chunk_env(&env, &ch, data, MOEH_STREAM_CHUNK_BYTES, max_chunks - 1, max_chunks, NULL, 0);
    check_env_accept(&env, &k_lim);

    /* before the model is negotiated */
    mk_chunk_env(&env, &ch, data, MOEH_STREAM_CHUNK_BYTES, 0, 2, pb, 2);
    check_env_reject(&env, &k_none, "upload_chunk: before the model was negotiated");
    check_env_reject(&env, &k_groups_only, "upload_chunk: before the model was negotiated");
    /* stream 0 */
    ch.stream = 0;
    check_env_reject(&env, &k_lim, "upload_chunk.stream: must be non-zero");
    /* data longer than a chunk (the last chunk, the only one) */
    mk_chunk_env(&env, &ch, data, MOEH_STREAM_CHUNK_BYTES + 1, 1, 2, NULL, 0);
    check_env_reject(&env, &k_lim, "upload_chunk.data: 32769 bytes in chunk 1 of 2");
    mk_chunk_env(&env, &ch, data, MOEH_STREAM_CHUNK_BYTES + 1, 0, 1, pb, 2);
    check_env_reject(&env, &k_lim, "upload_chunk.data: 32769 bytes in chunk 0 of 1");
    /* a chunk before the last shorter than a chunk */
    mk_chunk_env(&env, &ch, data, MOEH_STREAM_CHUNK_BYTES - 1, 0, 2, pb, 2);
    check_env_reject(&env, &k_lim, "upload_chunk.data: 32767 bytes in chunk 0 of 2");
    mk_chunk_env(&env, &ch, data, 10, 1, 3, NULL, 0);
    check_env_reject(&env, &k_lim, "upload_chunk.data: 10 bytes in chunk 1 of 3");
    /* an empty chunk */
    mk_chunk_env(&env, &ch, data, 0, 1, 2, NULL, 0);
    check_env_reject(&env, &k_lim, "upload_chunk.data: 0 bytes in chunk 1 of 2");
    /* part_bytes on a chunk after the first; none, or too many, on the first */
    mk_chunk_env(&env, &ch, data, 1, 1, 2, pb, 2);
    check_env_reject(&env, &k_lim, "upload_chunk.part_bytes: 2 entries in chunk 1");
    mk_chunk_env(&env, &ch, data, 1, 1, 2, pb, 1);
    check_env_reject(&env, &k_lim, "upload_chunk.part_bytes: 1 entries in chunk 1");
    mk_chunk_env(&env, &ch, data, 200, 0, 1, NULL, 0);
    check_env_reject(&env, &k_lim, "upload_chunk.part_bytes: 0 entries in chunk 0");
    mk_chunk_env(&env, &ch, data, 200, 0, 1, pb, 2 + MOEH_MAX_FRAMES);
    check_env_reject(&env, &k_lim, "upload_chunk.part_bytes: 6 entries in chunk 0");
    /* an index past the count, no chunks, more chunks than the model's most */
    mk_chunk_env(&env, &ch, data, 1, 2, 2, NULL, 0);
    snprintf(want, sizeof want, "upload_chunk: chunk 2 of 2, expected 1..%u chunks", max_chunks);
    check_env_reject(&env, &k_lim, want);
    mk_chunk_env(&env, &ch, data, 1, 0, 0, pb, 2);
    check_env_reject(&env, &k_lim, "upload_chunk: chunk 0 of 0");
    mk_chunk_env(&env, &ch, data, 1, max_chunks, max_chunks + 1, NULL, 0);
    snprintf(want, sizeof want, "upload_chunk: chunk %u of %u, expected 1..%u chunks", max_chunks,
             max_chunks + 1, max_chunks);
    check_env_reject(&env, &k_lim, want);
}

static void test_wire_upload_credit(void **state)
{
    Moeh__Envelope env;
    Moeh__UploadCredit cr = MOEH__UPLOAD_CREDIT__INIT;
    cr.stream = STREAM_ID;
    cr.up_to = 9;
    moeh_env_upload_credit(&env, &cr);
    check_env_accept(&env, &k_lim);
    cr.up_to = UINT32_MAX;
    check_env_accept(&env, &k_lim);
    cr.up_to = 0;
    check_env_reject(&env, &k_lim, "upload_credit: stream and up_to must be non-zero");
    cr.up_to = 9;
    cr.stream = 0;
    check_env_reject(&env, &k_lim, "upload_credit: stream and up_to must be non-zero");
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_max_bytes),
               cmocka_unit_test(test_roundtrip_several_chunks),
               cmocka_unit_test(test_roundtrip_one_chunk),
               cmocka_unit_test(test_roundtrip_multiple_of_chunk),
               cmocka_unit_test(test_refuse_sequence), cmocka_unit_test(test_refuse_first_chunk),
               cmocka_unit_test(test_restart), cmocka_unit_test(test_decode_incomplete),
               cmocka_unit_test(test_credit), cmocka_unit_test(test_wire_upload_chunk),
               cmocka_unit_test(test_wire_upload_credit))
