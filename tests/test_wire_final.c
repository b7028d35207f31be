/* test_wire_final.c - the decoder's checks of the end-of-run messages (protocol 5): FinalModel
 * carries one U8 frame "model_file" of n_bytes bytes, at most the model's tensors plus
 * MOEH_WIRE_MODELFILE_META_MAX, a 32-byte SHA-256, and only once a model was negotiated;
 * FinalAck carries a 32-byte digest when it says the file was stored, and no positive code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"
#include "moeh_wire.h"

#include <string.h>

static const moeh_wire_limits_t k_lim = {
    .n_params = 1000, .n_groups = 2, .n_tasks = 3, .eval_bins = 8, .n_norm = 10, .n_experts = 7};

static uint8_t g_file[8192], g_sha[64];

/* Packs env with a model_file frame of `frame_len` bytes (dtype dt) and decodes it under lim:
 * the decoder's return, its message in why. */
static int decode(const moeh_wire_limits_t *lim, Moeh__Envelope *env, size_t frame_len, int dt,
                  char *why, size_t cap)
{
    moeh_frame_t f = {
        .name = "model_file", .dtype = (Moeh__DType)dt, .data = g_file, .count = frame_len};
    if (dt == MOEH__DTYPE__U32) f.count = frame_len / 4;
    uint8_t *hdr = NULL;
    size_t hlen = 0;
    size_t nf = frame_len ? 1 : 0;
    assert_int_equal(moeh_wire_pack(env, &f, nf, &hdr, &hlen), 0);
    moeh_iov_t iov = {g_file, frame_len};
    Moeh__Envelope *out = NULL;
    moeh_err_t err = {0};
    int rc = moeh_wire_decode(lim, hdr, hlen, &iov, nf, &out, &err);
    snprintf(why, cap, "%s", err.msg);
    if (out) moeh__envelope__free_unpacked(out, NULL);
    free(hdr);
    return rc;
}

static void final_model(Moeh__Envelope *env, Moeh__FinalModel *fm, uint64_t n_bytes, size_t sha_len)
{
    moeh__final_model__init(fm);
    fm->rounds = 5, fm->selected_round = 3, fm->model_version = 5, fm->n_bytes = n_bytes;
    fm->sha256.data = g_sha, fm->sha256.len = sha_len;
    moeh_env_final_model(env, fm);
}

static void test_final_model(void **state)
{
    (void)state;
    Moeh__Envelope env;
    Moeh__FinalModel fm;
    char why[512];
    final_model(&env, &fm, 5000, 32);
    assert_int_equal(decode(&k_lim, &env, 5000, MOEH__DTYPE__U8, why, sizeof why), 0);
    /* an odd size is fine: bytes */
    final_model(&env, &fm, 4999, 32);
    assert_int_equal(decode(&k_lim, &env, 4999, MOEH__DTYPE__U8, why, sizeof why), 0);
    /* a digest of another length */
    final_model(&env, &fm, 5000, 31);
    assert_int_equal(decode(&k_lim, &env, 5000, MOEH__DTYPE__U8, why, sizeof why), -EBADMSG);
    assert_non_null(strstr(why, "final_model.sha256: 31 bytes, expected 32"));
    /* the frame disagrees with n_bytes */
    final_model(&env, &fm, 5000, 32);
    assert_int_equal(decode(&k_lim, &env, 4000, MOEH__DTYPE__U8, why, sizeof why), -EBADMSG);
    assert_non_null(strstr(why, "frame 'model_file' has 4000 elements, expected 5000"));
    /* words, not bytes */
    assert_int_equal(decode(&k_lim, &env, 5000, MOEH__DTYPE__U32, why, sizeof why), -EBADMSG);
    assert_non_null(strstr(why, "expected 'model_file'"));
    /* no frame */
    assert_int_equal(decode(&k_lim, &env, 0, MOEH__DTYPE__U8, why, sizeof why), -EBADMSG);
    /* larger than the model can be: 4 x (1000 + 2 x 10) + 32 KiB */
    const uint64_t cap = MOEH_WIRE_MODELFILE_MAX(&k_lim);
    assert_int_equal(cap, 4 * (1000 + 20) + MOEH_WIRE_MODELFILE_META_MAX);
    final_model(&env, &fm, cap + 1, 32);
    assert_int_equal(decode(&k_lim, &env, 0, MOEH__DTYPE__U8, why, sizeof why), -EBADMSG);
    assert_non_null(strstr(why, "final_model.n_bytes"));
    /* before any model was negotiated */
    const moeh_wire_limits_t none = {0};
    final_model(&env, &fm, 5000, 32);
    assert_int_equal(decode(&none, &env, 0, MOEH__DTYPE__U8, why, sizeof why), -EBADMSG);
    assert_non_null(strstr(why, "before the model was negotiated"));
}

static void test_final_ack(void **state)
{
    (void)state;
    Moeh__Envelope env;
    Moeh__FinalAck a = MOEH__FINAL_ACK__INIT;
    char why[512];
    a.model_version = 5, a.sha256.data = g_sha, a.sha256.len = 32, a.message = "";
    moeh_env_final_ack(&env, &a);
    assert_int_equal(decode(&k_lim, &env, 0, MOEH__DTYPE__U8, why, sizeof why), 0);
    a.sha256.len = 0; /* "stored" needs the digest of what was stored */
    assert_int_equal(decode(&k_lim, &env, 0, MOEH__DTYPE__U8, why, sizeof why), -EBADMSG);
    assert_non_null(strstr(why, "final_ack.sha256: 0 bytes, expected 32"));
    a.code = -ENOSPC, a.message = "disk full"; /* a failure may say why without a digest */
    assert_int_equal(decode(&k_lim, &env, 0, MOEH__DTYPE__U8, why, sizeof why), 0);
    a.code = 5;
    assert_int_equal(decode(&k_lim, &env, 0, MOEH__DTYPE__U8, why, sizeof why), -EBADMSG);
    assert_non_null(strstr(why, "final_ack.code: 5"));
    assert_string_equal(moeh_msg_type_name(MOEH__MSG_TYPE__FINAL_ACK), "final_ack");
    assert_int_equal(moeh_wire_dtype_size(MOEH__DTYPE__U8), 1);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_final_model), cmocka_unit_test(test_final_ack))
