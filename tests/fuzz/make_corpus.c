/* make_corpus.c - writes the fuzzers' seed corpus: one valid message of every type in the
 * fuzz_input.h layout, chunked uploads in fuzz_stream.c's layout, valid .npy files, a registry
 * and a key file. Run once to regenerate
 * tests/fuzz/corpus/ (see docs/security.md):  make_corpus tests/fuzz/corpus */
#include "fuzz_input.h"
#include "moeh_keys.h"
#include "moeh_npy.h"
#include "moeh_secagg.h"
#include "moeh_secsum.h"
#include "moeh_stream.h"

#include <string.h>

static void put(const char *dir, const char *sub, const char *name, const void *d, size_t n)
{
    char path[1024];
    moeh_err_t err = {0};
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    MOEH_ASSERT(moeh_mkdir_p(path, &err) == 0);
    snprintf(path, sizeof path, "%s/%s/%s", dir, sub, name);
    MOEH_ASSERT(moeh_file_write_atomic(path, d, n, &err) == 0);
}

/* Encodes env + frames in the fuzz layout and writes it as wire/NAME. */
static void put_msg(const char *dir, const char *name, Moeh__Envelope *env,
                    const moeh_frame_t *frames, size_t nf)
{
    uint8_t *hdr = NULL, out[16384];
    size_t hlen = 0, pos = 1;
    MOEH_ASSERT(moeh_wire_pack(env, frames, nf, &hdr, &hlen) == 0);
    out[0] = (uint8_t)nf;
    for (size_t i = 0; i < nf; i++) {
        size_t l = frames[i].count * moeh_wire_dtype_size(frames[i].dtype);
        out[pos++] = (uint8_t)(l & 0xff);
        out[pos++] = (uint8_t)(l >> 8);
    }
    for (size_t i = 0; i < nf; i++) {
        size_t l = frames[i].count * moeh_wire_dtype_size(frames[i].dtype);
        memcpy(out + pos, frames[i].data, l);
        pos += l;
    }
    memcpy(out + pos, hdr, hlen);
    pos += hlen;
    free(hdr);
    put(dir, "wire", name, out, pos);
}

/* Appends env packed as one record of fuzz_stream.c's layout: a u16 length, then the header. */
static void put_rec(uint8_t *out, size_t *pos, size_t cap, Moeh__Envelope *env)
{
    uint8_t *hdr = NULL;
    size_t hlen = 0;
    MOEH_ASSERT(moeh_wire_pack(env, NULL, 0, &hdr, &hlen) == 0);
    MOEH_ASSERT(hlen <= 0xffff && *pos + 2 + hlen <= cap);
    out[(*pos)++] = (uint8_t)(hlen & 0xff);
    out[(*pos)++] = (uint8_t)(hlen >> 8);
    memcpy(out + *pos, hdr, hlen);
    *pos += hlen;
    free(hdr);
}

/* Appends chunks first..end-1 of env + frames sent by the real sender as stream `stream`. */
static void put_chunks(uint8_t *out, size_t *pos, size_t cap, uint64_t stream, Moeh__Envelope *env,
                       const moeh_frame_t *frames, size_t nf, uint32_t first, uint32_t end)
{
    moeh_stream_tx_t t = {0};
    MOEH_ASSERT(moeh_stream_tx_begin(&t, stream, env, frames, nf) == 0);
    MOEH_ASSERT(moeh_stream_tx_credit(&t, stream, UINT32_MAX) == 0);
    Moeh__Envelope ce;
    Moeh__UploadChunk ch;
    for (uint32_t i = 0; moeh_stream_tx_next(&t, &ce, &ch); i++)
        if (i >= first && i < end) put_rec(out, pos, cap, &ce);
    moeh_stream_tx_clear(&t);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    const moeh_wire_limits_t *L = &k_fuzz_limits;
    float params[16];
    for (int i = 0; i < 16; i++)
        params[i] = 0.25f * (float)(i - 8);
    uint32_t update[18] = {1, 2, 3, 0xffffffffu, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 40, 40};
    uint32_t hist[8 * 3 * 2 * 8] = {0};
    hist[0] = 2, hist[9] = 3, hist[20] = 1; /* slice 0: every row */
    hist[48 * 7 + 9] = 3;                   /* slice 7: combination EHR + notes + image */
    float norm[8] = {0, 1, 2, 3, 1, 1, 2, 0.5f}, gate[7 * 7] = {0};
    gate[6 * 7 + 6] = 3.0f;
    uint32_t combo_rows[7] = {0, 0, 0, 0, 0, 0, 3};
    double stats[12] = {10, 5, 7, 0, 0, 0, 3, 3, 3, 1, 2, 4};

    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Hello h = MOEH__HELLO__INIT;
    Moeh__ComboCount cc = MOEH__COMBO_COUNT__INIT, *ccp = &cc;
    h.site_id = "site-1", h.n_train = 40, h.n_eval = 10, h.n_val = 8, h.n_features = 2;
    h.n_vars = 2, h.n_steps = 48, h.img_size = 64;
    cc.combo = 7, cc.count = 50, h.n_combos = 1, h.combos = &ccp;
    env.type = MOEH__MSG_TYPE__HELLO, env.body_case = MOEH__ENVELOPE__BODY_HELLO, env.hello = &h;
    put_msg(dir, "hello", &env, NULL, 0);

    Moeh__Envelope e2 = MOEH__ENVELOPE__INIT;
    Moeh__Welcome w = MOEH__WELCOME__INIT;
    Moeh__ModelSpec ms = MOEH__MODEL_SPEC__INIT;
    /* the model's canonical JSON (moeh_moe_cfg_to_json) of a small MoE-Health */
    ms.config_json =
        "{\"arch\":0,\"d_emb\":8,\"d_hidden\":8,\"n_static\":2,\"n_vars\":2,\"n_steps\":48,"
        "\"note_buckets\":256,\"note_dim\":0,\"img_size\":64,\"img_dim\":0,\"cnn_ch\":[4,8,16],"
        "\"n_tasks\":3,\"top_k\":0,\"temperature\":1,\"lambda_lb\":0.01,\"gate_sup\":1,"
        "\"gate_sup_joint\":0,\"dropout\":0,\"missing_init\":0.02,\"pos_weight\":[0,0,0,0,0,0,0,0],"
        "\"max_batch\":16,"
        "\"threads\":0,\"seed\":\"1\"}";
    ms.n_tasks = 3, ms.n_experts = 7, ms.n_norm = L->n_norm;
    ms.n_params = L->n_params, ms.n_groups = L->n_groups, ms.spec_hash = 42;
    w.site_id = "site-1", w.model = &ms, w.heartbeat_ms = 1000, w.eval_bins = L->eval_bins;
    e2.type = MOEH__MSG_TYPE__WELCOME, e2.body_case = MOEH__ENVELOPE__BODY_WELCOME;
    e2.welcome = &w;
    put_msg(dir, "welcome", &e2, NULL, 0);

    Moeh__Envelope e3 = MOEH__ENVELOPE__INIT;
    Moeh__RoundStart rs = MOEH__ROUND_START__INIT;
    Moeh__RoundConfig rc = MOEH__ROUND_CONFIG__INIT;
    rc.local_epochs = 1, rc.batch_size = 8, rc.lr = 0.01f, rc.clip = 1.0f;
    rc.delta_clip = 1.0f, rc.quant_scale = 65536.0;
    rs.round = 1, rs.model_version = 0, rs.task = MOEH__ROUND_TASK__TRAIN, rs.deadline_ms = 1000;
    rs.config = &rc;
    e3.type = MOEH__MSG_TYPE__ROUND_START, e3.body_case = MOEH__ENVELOPE__BODY_ROUND_START;
    e3.round_start = &rs;
    moeh_frame_t fp[2] = {
        {.name = "params", .dtype = MOEH__DTYPE__F32, .data = params, .count = L->n_params},
        {.name = "norm", .dtype = MOEH__DTYPE__F32, .data = norm, .count = 2 * L->n_norm}};
    put_msg(dir, "round_start", &e3, fp, 2);
    rs.model_held = 1; /* protocol 8: the site holds the model of this version */
    rs.task = MOEH__ROUND_TASK__EVALUATE;
    put_msg(dir, "round_start_held", &e3, NULL, 0);
    rs.model_held = 0;
    rs.task = MOEH__ROUND_TASK__STATS;
    put_msg(dir, "round_start_stats", &e3, NULL, 0);

    Moeh__Envelope e4 = MOEH__ENVELOPE__INIT;
    Moeh__Update u = MOEH__UPDATE__INIT;
    u.round = 1, u.model_version = 0, u.train_loss = 0.5, u.n_samples = 40, u.steps = 5;
    e4.type = MOEH__MSG_TYPE__UPDATE, e4.body_case = MOEH__ENVELOPE__BODY_UPDATE, e4.update = &u;
    moeh_frame_t fu = {.name = "update",
                       .dtype = MOEH__DTYPE__U32,
                       .data = update,
                       .count = L->n_params + L->n_groups};
    put_msg(dir, "update", &e4, &fu, 1);

    Moeh__Envelope e5 = MOEH__ENVELOPE__INIT;
    Moeh__EvalResult ev = MOEH__EVAL_RESULT__INIT;
    ev.round = 1, ev.model_version = 1, ev.loss_sum = 3.0, ev.n_labels = 6, ev.n_tasks = 3;
    ev.n_bins = L->eval_bins;
    ev.n_combo_rows = 7, ev.combo_rows = combo_rows;
    e5.type = MOEH__MSG_TYPE__EVAL_RESULT, e5.body_case = MOEH__ENVELOPE__BODY_EVAL_RESULT;
    e5.eval_result = &ev;
    moeh_frame_t fh[2] = {
        {.name = "hist", .dtype = MOEH__DTYPE__U32, .data = hist, .count = 8 * 48},
        {.name = "gate", .dtype = MOEH__DTYPE__F32, .data = gate, .count = 7 * 7}};
    put_msg(dir, "eval_result", &e5, fh, 2);
    /* the answer to VALIDATE (protocol 9): the validation split's figures nested, four frames */
    Moeh__EvalResult evv = ev;
    evv.round = 0, evv.model_version = 0;
    ev.validation = &evv;
    moeh_frame_t fv[4] = {
        fh[0],
        fh[1],
        {.name = "val_hist", .dtype = MOEH__DTYPE__U32, .data = hist, .count = 8 * 48},
        {.name = "val_gate", .dtype = MOEH__DTYPE__F32, .data = gate, .count = 7 * 7}};
    put_msg(dir, "eval_result_validate", &e5, fv, 4);
    ev.validation = NULL;

    Moeh__Envelope e9 = MOEH__ENVELOPE__INIT;
    Moeh__StatsResult sr = MOEH__STATS_RESULT__INIT;
    sr.n_rows = 10;
    e9.type = MOEH__MSG_TYPE__STATS_RESULT, e9.body_case = MOEH__ENVELOPE__BODY_STATS_RESULT;
    e9.stats_result = &sr;
    moeh_frame_t fs = {.name = "stats", .dtype = MOEH__DTYPE__F64, .data = stats, .count = 12};
    put_msg(dir, "stats_result", &e9, &fs, 1);

    Moeh__Envelope e6 = MOEH__ENVELOPE__INIT;
    Moeh__Error er = MOEH__ERROR__INIT;
    er.code = -22, er.message = "bad things";
    e6.type = MOEH__MSG_TYPE__ERROR, e6.body_case = MOEH__ENVELOPE__BODY_ERROR, e6.error = &er;
    put_msg(dir, "error", &e6, NULL, 0);
    Moeh__Envelope e7 = MOEH__ENVELOPE__INIT;
    Moeh__Heartbeat hb = MOEH__HEARTBEAT__INIT;
    hb.seq = 7;
    e7.type = MOEH__MSG_TYPE__HEARTBEAT, e7.body_case = MOEH__ENVELOPE__BODY_HEARTBEAT;
    e7.heartbeat = &hb;
    put_msg(dir, "heartbeat", &e7, NULL, 0);
    Moeh__Envelope e8 = MOEH__ENVELOPE__INIT;
    Moeh__Bye by = MOEH__BYE__INIT;
    by.reason = "done";
    by.status = MOEH__BYE_STATUS__BYE_STATUS_FINISHED;
    e8.type = MOEH__MSG_TYPE__BYE, e8.body_case = MOEH__ENVELOPE__BODY_BYE, e8.bye = &by;
    put_msg(dir, "bye", &e8, NULL, 0);

    /* granted uploads: a TRAIN RoundStart that asks for them, the announcement and the grant */
    rs.task = MOEH__ROUND_TASK__TRAIN, rs.grant_uploads = 1;
    put_msg(dir, "round_start_grant", &e3, fp, 2);
    rs.grant_uploads = 0;
    Moeh__Envelope e16 = MOEH__ENVELOPE__INIT;
    Moeh__UploadReady ur = MOEH__UPLOAD_READY__INIT;
    ur.round = 1, ur.model_version = 0, ur.session = 0x5ec5ec;
    e16.type = MOEH__MSG_TYPE__UPLOAD_READY, e16.body_case = MOEH__ENVELOPE__BODY_UPLOAD_READY;
    e16.upload_ready = &ur;
    put_msg(dir, "upload_ready", &e16, NULL, 0);
    Moeh__Envelope e17 = MOEH__ENVELOPE__INIT;
    Moeh__UploadGrant ug = MOEH__UPLOAD_GRANT__INIT;
    ug.round = 1, ug.model_version = 0;
    e17.type = MOEH__MSG_TYPE__UPLOAD_GRANT, e17.body_case = MOEH__ENVELOPE__BODY_UPLOAD_GRANT;
    e17.upload_grant = &ug;
    put_msg(dir, "upload_grant", &e17, NULL, 0);
    /* a granted upload in chunks (protocol 7): a first chunk (all of a small message) and a
     * credit */
    uint8_t piece[64];
    for (size_t i = 0; i < sizeof piece; i++)
        piece[i] = (uint8_t)(i * 13);
    uint64_t part_bytes[2] = {16, sizeof piece - 16};
    Moeh__Envelope e20;
    Moeh__UploadChunk uc = MOEH__UPLOAD_CHUNK__INIT;
    uc.stream = 1, uc.index = 0, uc.n_chunks = 1;
    uc.n_part_bytes = 2, uc.part_bytes = part_bytes;
    uc.data.data = piece, uc.data.len = sizeof piece;
    moeh_env_upload_chunk(&e20, &uc);
    put_msg(dir, "upload_chunk", &e20, NULL, 0);
    Moeh__Envelope e21;
    Moeh__UploadCredit ucr = MOEH__UPLOAD_CREDIT__INIT;
    ucr.stream = 1, ucr.up_to = 9;
    moeh_env_upload_credit(&e21, &ucr);
    put_msg(dir, "upload_credit", &e21, NULL, 0);
    /* the end of a run (protocol 5): a model file (any bytes: the agent's model-file reader
     * checks them, the decoder their size) and its acknowledgement */
    uint8_t file[100], sha[MOEH_WIRE_SHA256_BYTES];
    for (size_t i = 0; i < sizeof file; i++)
        file[i] = (uint8_t)(i * 7);
    memset(sha, 0x5a, sizeof sha);
    Moeh__Envelope e18;
    Moeh__FinalModel fm = MOEH__FINAL_MODEL__INIT;
    fm.rounds = 3, fm.selected_round = 2, fm.model_version = 3, fm.n_bytes = sizeof file;
    fm.sha256.data = sha, fm.sha256.len = sizeof sha, fm.spec_hash = 0x1234;
    moeh_env_final_model(&e18, &fm);
    moeh_frame_t ff = {
        .name = "model_file", .dtype = MOEH__DTYPE__U8, .data = file, .count = sizeof file};
    put_msg(dir, "final_model", &e18, &ff, 1);
    Moeh__Envelope e19;
    Moeh__FinalAck fa = MOEH__FINAL_ACK__INIT;
    fa.model_version = 3, fa.sha256.data = sha, fa.sha256.len = sizeof sha, fa.message = "";
    moeh_env_final_ack(&e19, &fa);
    put_msg(dir, "final_ack", &e19, NULL, 0);

    /* secure aggregation: RoundStart{TRAIN} with parameters, a masked update, and the five
     * secagg messages (the bytes need not be real keys: the decoder checks only their form) */
    Moeh__SecaggParams sp = MOEH__SECAGG_PARAMS__INIT;
    sp.session = 0x5ec5ec, sp.n = 3, sp.t = 2, sp.graph_seed = 11, sp.id = 1;
    rs.task = MOEH__ROUND_TASK__TRAIN, rs.secagg = &sp;
    put_msg(dir, "round_start_secagg", &e3, fp, 2);
    u.secagg_session = 0x5ec5ec;
    put_msg(dir, "update_masked", &e4, &fu, 1);
    uint8_t pk[2][MOEH_SECAGG_KEY_BYTES], ct[MOEH_SECAGG_SHARE_CT_BYTES];
    for (size_t i = 0; i < MOEH_SECAGG_KEY_BYTES; i++)
        pk[0][i] = (uint8_t)(3 * i + 1), pk[1][i] = (uint8_t)(5 * i + 2);
    for (size_t i = 0; i < sizeof ct; i++)
        ct[i] = (uint8_t)(7 * i);
    ProtobufCBinaryData c_pk = {MOEH_SECAGG_KEY_BYTES, pk[0]},
                        s_pk = {MOEH_SECAGG_KEY_BYTES, pk[1]};

    Moeh__Envelope e10 = MOEH__ENVELOPE__INIT;
    Moeh__SecaggAdvertise ad = MOEH__SECAGG_ADVERTISE__INIT;
    ad.session = sp.session, ad.c_pk = c_pk, ad.s_pk = s_pk;
    e10.type = MOEH__MSG_TYPE__SECAGG_ADVERTISE;
    e10.body_case = MOEH__ENVELOPE__BODY_SECAGG_ADVERTISE, e10.secagg_advertise = &ad;
    put_msg(dir, "secagg_advertise", &e10, NULL, 0);

    Moeh__Envelope e11 = MOEH__ENVELOPE__INIT;
    Moeh__SecaggKeys ks = MOEH__SECAGG_KEYS__INIT;
    Moeh__SecaggKey key[3], *keyp[3];
    for (uint32_t i = 0; i < 3; i++) {
        moeh__secagg_key__init(&key[i]);
        key[i].id = i, key[i].c_pk = c_pk, key[i].s_pk = s_pk, keyp[i] = &key[i];
    }
    ks.session = sp.session, ks.n_keys = 3, ks.keys = keyp;
    e11.type = MOEH__MSG_TYPE__SECAGG_KEYS;
    e11.body_case = MOEH__ENVELOPE__BODY_SECAGG_KEYS, e11.secagg_keys = &ks;
    put_msg(dir, "secagg_keys", &e11, NULL, 0);

    Moeh__Envelope e12 = MOEH__ENVELOPE__INIT;
    Moeh__SecaggShares sh = MOEH__SECAGG_SHARES__INIT;
    Moeh__SecaggCipher ci[2], *cip[2];
    uint32_t u2[3] = {0, 1, 2};
    for (uint32_t i = 0; i < 2; i++) {
        moeh__secagg_cipher__init(&ci[i]);
        ci[i].peer = 2 * i, ci[i].ct = (ProtobufCBinaryData){sizeof ct, ct}, cip[i] = &ci[i];
    }
    sh.session = sp.session, sh.n_ciphers = 2, sh.ciphers = cip;
    e12.type = MOEH__MSG_TYPE__SECAGG_SHARES;
    e12.body_case = MOEH__ENVELOPE__BODY_SECAGG_SHARES, e12.secagg_shares = &sh;
    put_msg(dir, "secagg_shares", &e12, NULL, 0);
    sh.n_u2 = 3, sh.u2 = u2;
    put_msg(dir, "secagg_shares_forwarded", &e12, NULL, 0);

    Moeh__Envelope e13 = MOEH__ENVELOPE__INIT;
    Moeh__SecaggUnmask um = MOEH__SECAGG_UNMASK__INIT;
    uint32_t surv[2] = {0, 1}, drop[1] = {2};
    um.session = sp.session, um.n_survivors = 2, um.survivors = surv;
    um.n_dropped = 1, um.dropped = drop;
    e13.type = MOEH__MSG_TYPE__SECAGG_UNMASK;
    e13.body_case = MOEH__ENVELOPE__BODY_SECAGG_UNMASK, e13.secagg_unmask = &um;
    put_msg(dir, "secagg_unmask", &e13, NULL, 0);

    Moeh__Envelope e14 = MOEH__ENVELOPE__INIT;
    Moeh__SecaggReveal rv = MOEH__SECAGG_REVEAL__INIT;
    Moeh__SecaggShare xs[3], *xp[3];
    uint64_t y[3][MOEH_SECAGG_SHARE_ELEMS];
    for (uint32_t i = 0; i < 3; i++) {
        moeh__secagg_share__init(&xs[i]);
        for (size_t k = 0; k < MOEH_SECAGG_SHARE_ELEMS; k++)
            y[i][k] = (MOEH_SECAGG_PRIME / 7) * (k + 1) + i;
        xs[i].owner = i;
        xs[i].kind = i == 2 ? MOEH__SECAGG_KIND__SECAGG_S : MOEH__SECAGG_KIND__SECAGG_B;
        xs[i].n_y = MOEH_SECAGG_SHARE_ELEMS, xs[i].y = y[i], xp[i] = &xs[i];
    }
    rv.session = sp.session, rv.n_shares = 3, rv.shares = xp;
    e14.type = MOEH__MSG_TYPE__SECAGG_REVEAL;
    e14.body_case = MOEH__ENVELOPE__BODY_SECAGG_REVEAL, e14.secagg_reveal = &rv;
    put_msg(dir, "secagg_reveal", &e14, NULL, 0);

    /* a masked vector of each phase (secsum.h), and a secure STATS RoundStart */
    static uint32_t mw[4096];
    for (size_t i = 0; i < sizeof mw / sizeof mw[0]; i++)
        mw[i] = 0x9e3779b9u * (uint32_t)(i + 1);
    const struct {
        const char *name;
        Moeh__RoundTask task;
    } ph[4] = {{"secagg_masked_train", MOEH__ROUND_TASK__TRAIN},
               {"secagg_masked_stats", MOEH__ROUND_TASK__STATS},
               {"secagg_masked_eval", MOEH__ROUND_TASK__EVALUATE},
               {"secagg_masked_validate", MOEH__ROUND_TASK__VALIDATE}};
    for (int k = 0; k < 4; k++) {
        Moeh__Envelope e15 = MOEH__ENVELOPE__INIT;
        Moeh__SecaggMasked sm = MOEH__SECAGG_MASKED__INIT;
        sm.session = sp.session, sm.round = 3, sm.model_version = 8, sm.task = ph[k].task;
        e15.type = MOEH__MSG_TYPE__SECAGG_MASKED;
        e15.body_case = MOEH__ENVELOPE__BODY_SECAGG_MASKED, e15.secagg_masked = &sm;
        moeh_frame_t mf = {.name = "masked",
                           .dtype = MOEH__DTYPE__U32,
                           .data = mw,
                           .count = moeh_wire_secsum_len(&k_fuzz_limits, ph[k].task)};
        MOEH_ASSERT(mf.count > 0 && mf.count <= sizeof mw / sizeof mw[0]);
        put_msg(dir, ph[k].name, &e15, &mf, 1);
    }
    rs.task = MOEH__ROUND_TASK__STATS;
    put_msg(dir, "round_start_stats_secagg", &e3, NULL, 0);

    /* chunked uploads (fuzz_stream): an Update and a TRAIN masked vector in one chunk each (a
     * credit, which the receiver does not take, in between), a SecaggKeys of the most keys in
     * two chunks, a stream restarted by another's chunk 0, and a chunk out of place */
    static uint8_t st[256 * 1024];
    size_t sp_len = 0;
    Moeh__Envelope es;
    Moeh__Update us = MOEH__UPDATE__INIT;
    us.round = 1, us.model_version = 0, us.train_loss = 0.5, us.n_samples = 40, us.steps = 5;
    moeh_env_update(&es, &us);
    Moeh__Envelope ec;
    Moeh__UploadCredit cr = MOEH__UPLOAD_CREDIT__INIT;
    cr.stream = 1, cr.up_to = 9;
    moeh_env_upload_credit(&ec, &cr);
    put_chunks(st, &sp_len, sizeof st, 1, &es, &fu, 1, 0, UINT32_MAX);
    put(dir, "stream", "update", st, sp_len);
    Moeh__Envelope em;
    Moeh__SecaggMasked smt = MOEH__SECAGG_MASKED__INIT;
    smt.session = sp.session, smt.round = 3, smt.model_version = 8;
    smt.task = MOEH__ROUND_TASK__TRAIN;
    moeh_env_secagg_masked(&em, &smt);
    moeh_frame_t mft = {.name = "masked",
                        .dtype = MOEH__DTYPE__U32,
                        .data = mw,
                        .count = moeh_wire_secsum_len(L, MOEH__ROUND_TASK__TRAIN)};
    put_rec(st, &sp_len, sizeof st, &ec);
    put_chunks(st, &sp_len, sizeof st, 2, &em, &mft, 1, 0, UINT32_MAX);
    put(dir, "stream", "update_masked", st, sp_len);
    static Moeh__SecaggKey mk[MOEH_WIRE_SECAGG_MAX];
    static Moeh__SecaggKey *mkp[MOEH_WIRE_SECAGG_MAX];
    for (uint32_t i = 0; i < MOEH_WIRE_SECAGG_MAX; i++) {
        moeh__secagg_key__init(&mk[i]);
        mk[i].id = i, mk[i].c_pk = c_pk, mk[i].s_pk = s_pk, mkp[i] = &mk[i];
    }
    Moeh__Envelope ek;
    Moeh__SecaggKeys mks = MOEH__SECAGG_KEYS__INIT;
    mks.session = sp.session, mks.n_keys = MOEH_WIRE_SECAGG_MAX, mks.keys = mkp;
    moeh_env_secagg_keys(&ek, &mks);
    sp_len = 0;
    put_chunks(st, &sp_len, sizeof st, 3, &ek, NULL, 0, 0, UINT32_MAX);
    put(dir, "stream", "secagg_keys", st, sp_len);
    sp_len = 0;
    put_chunks(st, &sp_len, sizeof st, 4, &ek, NULL, 0, 0, 1);
    put_chunks(st, &sp_len, sizeof st, 5, &es, &fu, 1, 0, UINT32_MAX);
    put(dir, "stream", "restart", st, sp_len);
    sp_len = 0;
    put_chunks(st, &sp_len, sizeof st, 6, &ek, NULL, 0, 1, UINT32_MAX);
    put_chunks(st, &sp_len, sizeof st, 7, &es, &fu, 1, 0, UINT32_MAX);
    put(dir, "stream", "out_of_place", st, sp_len);

    /* .npy seeds, written through the real writer then copied into the corpus */
    char path[1024];
    moeh_err_t err = {0};
    size_t s2[2] = {2, 3}, s1[1] = {5};
    uint8_t b[5] = {0, 1, 2, 1, 0};
    snprintf(path, sizeof path, "%s/a.npy.tmp", dir);
    char *buf;
    size_t len;
    MOEH_ASSERT(moeh_npy_write(path, MOEH_DT_F32, 2, s2, params, &err) == 0);
    MOEH_ASSERT(moeh_file_read_all(path, 1 << 20, &buf, &len, &err) == 0);
    put(dir, "npy", "f32_2x3", buf, len);
    free(buf);
    MOEH_ASSERT(moeh_npy_write(path, MOEH_DT_U8, 1, s1, b, &err) == 0);
    MOEH_ASSERT(moeh_file_read_all(path, 1 << 20, &buf, &len, &err) == 0);
    put(dir, "npy", "u8_5", buf, len);
    free(buf);
    remove(path);

    /* registry (byte 0 even) and key file (byte 0 odd) seeds */
    moeh_keypair_t *kp = NULL;
    MOEH_ASSERT(moeh_crypto_init() == 0 && moeh_keypair_generate(&kp) == 0);
    char text[512];
    int n = snprintf(text, sizeof text, "%c# registry\n[sites]\nsite-1 = %s\n", 0, kp->public_z85);
    put(dir, "keys", "registry", text, (size_t)n);
    n = snprintf(text, sizeof text, "%c[limits]\nsite-1 = 800,200\n[sites]\nsite-1 = %s\n", 0,
                 kp->public_z85);
    put(dir, "keys", "registry_limits", text, (size_t)n);
    n = snprintf(text, sizeof text, "%c[limits]\nsite-1 = 800,200,150\n[sites]\nsite-1 = %s\n", 0,
                 kp->public_z85); /* with MAX_VAL */
    put(dir, "keys", "registry_limits_val", text, (size_t)n);
    n = snprintf(text, sizeof text, "%cpublic-key = %s\nsecret-key = %s\n", 1, kp->public_z85,
                 kp->secret_z85);
    put(dir, "keys", "keyfile", text, (size_t)n);
    moeh_keypair_destroy(&kp);
    return 0;
}
