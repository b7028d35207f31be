/* test_keys.c - CURVE key files, the site registry and ZAP admission (proto/keys.c, zap.c).
 * In a fresh mkdtemp directory: a generated key pair written with moeh_keypair_write() reads
 * back identical, its .key file is mode 0600 and its .pub file yields the public key but is
 * refused as a key pair; Z85 key validation; a three-site registry loads and maps each key to
 * its site (and an unknown key to nothing), while a duplicate id, a repeated key, a bad key, a
 * bad site id or an entry outside [sites] is refused with "path:line" and a missing file with
 * -ENOENT. The ZAP handler answers raw RFC 27 requests (refusals, admission by site id, a
 * truncated request refused without stopping it). Finally a real ZeroMQ CURVE connection over
 * loopback TCP: a ROUTER behind the ZAP handler receives a registered dealer's message with its
 * site id as User-Id, and nothing at all from a dealer whose key is not registered, which is
 * counted as refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_keys.h"

#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

static char g_dir[256];

static int setup(void **state)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/moeh_test_keys_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    return moeh_crypto_init();
}

static int teardown(void **state)
{
    return moeh_test_rmtree(g_dir);
}

static void path_in(char *out, size_t cap, const char *name)
{
    assert_true((size_t)snprintf(out, cap, "%s/%s", g_dir, name) < cap);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static void test_keypair_files(void **state)
{
    moeh_keypair_t *kp = NULL, *back = NULL, *other = NULL;
    moeh_err_t err = {{0}};
    char base[512], keyf[600], pubf[600];
    path_in(base, sizeof base, "node1");
    snprintf(keyf, sizeof keyf, "%s.key", base);
    snprintf(pubf, sizeof pubf, "%s.pub", base);

    assert_int_equal(moeh_keypair_generate(&kp), 0);
    assert_non_null(kp);
    assert_int_equal(strlen(kp->public_z85), MOEH_Z85_KEY_LEN);
    assert_int_equal(strlen(kp->secret_z85), MOEH_Z85_KEY_LEN);
    assert_true(moeh_z85_key_valid(kp->public_z85));
    assert_true(moeh_z85_key_valid(kp->secret_z85));
    assert_string_not_equal(kp->public_z85, kp->secret_z85);
    /* two generated pairs differ */
    assert_int_equal(moeh_keypair_generate(&other), 0);
    assert_string_not_equal(kp->public_z85, other->public_z85);
    assert_string_not_equal(kp->secret_z85, other->secret_z85);

    assert_int_equal(moeh_keypair_write(kp, base, &err), 0);
    struct stat st;
    assert_int_equal(stat(keyf, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(pubf, &st), 0);
    assert_int_equal(st.st_mode & 077 & ~(mode_t)044, 0); /* .pub: nobody else may write */

    assert_int_equal(moeh_keypair_read(keyf, &back, &err), 0);
    assert_non_null(back);
    assert_string_equal(back->public_z85, kp->public_z85);
    assert_string_equal(back->secret_z85, kp->secret_z85);
    moeh_keypair_destroy(&back);
    assert_null(back);

    char pub[MOEH_Z85_KEY_LEN + 1];
    memset(pub, 'x', sizeof pub);
    assert_int_equal(moeh_pubkey_read(pubf, pub, &err), 0);
    assert_string_equal(pub, kp->public_z85);
    /* a .key file where a public key belongs (coordinator.key as --server-key) is refused,
     * naming the file and what it is */
    memset(&err, 0, sizeof err);
    assert_int_equal(moeh_pubkey_read(keyf, pub, &err), -EINVAL);
    assert_non_null(strstr(err.msg, keyf));
    assert_non_null(strstr(err.msg, "holds a secret-key"));
    /* the .pub file must not contain the secret */
    FILE *f = fopen(pubf, "r");
    assert_non_null(f);
    char buf[512] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    assert_true(n > 0);
    assert_null(strstr(buf, kp->secret_z85));
    assert_null(strstr(buf, "secret"));

    /* a .pub is not a key pair */
    memset(&err, 0, sizeof err);
    assert_int_equal(moeh_keypair_read(pubf, &back, &err), -EINVAL);
    assert_null(back);
    assert_non_null(strstr(err.msg, "secret-key"));
    assert_non_null(strstr(err.msg, pubf));

    /* overwriting keeps the mode */
    assert_int_equal(moeh_keypair_write(other, base, &err), 0);
    assert_int_equal(stat(keyf, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(moeh_keypair_read(keyf, &back, &err), 0);
    assert_string_equal(back->secret_z85, other->secret_z85);
    moeh_keypair_destroy(&back);

    moeh_keypair_destroy(&kp);
    moeh_keypair_destroy(&other);
    assert_null(kp);
    moeh_keypair_destroy(&kp); /* idempotent */
    moeh_keypair_destroy(NULL);
}

static void test_keyfile_errors(void **state)
{
    moeh_keypair_t *kp = NULL, *gen = NULL;
    moeh_err_t err = {{0}};
    char path[512], text[512];
    assert_int_equal(moeh_keypair_generate(&gen), 0);

    path_in(path, sizeof path, "missing.key");
    assert_int_equal(moeh_keypair_read(path, &kp, &err), -ENOENT);
    assert_non_null(strstr(err.msg, path));
    assert_null(kp);
    char pub[MOEH_Z85_KEY_LEN + 1];
    assert_int_equal(moeh_pubkey_read(path, pub, &err), -ENOENT);

    /* bad secret on line 3 */
    path_in(path, sizeof path, "bad.key");
    snprintf(text, sizeof text, "# comment\npublic-key = %s\nsecret-key = tooshort\n",
             gen->public_z85);
    write_text(path, text);
    memset(&err, 0, sizeof err);
    assert_int_equal(moeh_keypair_read(path, &kp, &err), -EINVAL);
    assert_null(kp);
    char want[600];
    snprintf(want, sizeof want, "%s:3:", path);
    assert_non_null(strstr(err.msg, want));
    assert_non_null(strstr(err.msg, "secret-key"));

    /* unknown field on line 1 */
    snprintf(text, sizeof text, "colour = blue\npublic-key = %s\nsecret-key = %s\n",
             gen->public_z85, gen->secret_z85);
    write_text(path, text);
    assert_int_equal(moeh_keypair_read(path, &kp, &err), -EINVAL);
    snprintf(want, sizeof want, "%s:1:", path);
    assert_non_null(strstr(err.msg, want));

    /* halves that do not belong together (the public key of another pair) */
    moeh_keypair_t *other = NULL;
    assert_int_equal(moeh_keypair_generate(&other), 0);
    snprintf(text, sizeof text, "public-key = %s\nsecret-key = %s\n", other->public_z85,
             gen->secret_z85);
    moeh_keypair_destroy(&other);
    write_text(path, text);
    memset(&err, 0, sizeof err);
    assert_int_equal(moeh_keypair_read(path, &kp, &err), -EINVAL);
    assert_null(kp);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "do not belong together"));

    /* a public key alone */
    snprintf(text, sizeof text, "public-key = %s\n", gen->public_z85);
    write_text(path, text);
    assert_int_equal(moeh_keypair_read(path, &kp, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "secret-key"));
    assert_int_equal(moeh_pubkey_read(path, pub, &err), 0);
    assert_string_equal(pub, gen->public_z85);

    /* a secret key alone: not even a public key */
    snprintf(text, sizeof text, "secret-key = %s\n", gen->secret_z85);
    write_text(path, text);
    assert_int_equal(moeh_pubkey_read(path, pub, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "public-key"));

    moeh_keypair_destroy(&gen);
}

/* inih goes on parsing after a handler error and returns the line of the first one, so the
 * handler must keep the description of the first error too. */
static void test_keyfile_first_error_wins(void **state)
{
    moeh_keypair_t *kp = NULL, *gen = NULL;
    moeh_err_t err = {{0}};
    char path[512], text[512], want[600];
    assert_int_equal(moeh_keypair_generate(&gen), 0);
    path_in(path, sizeof path, "two-errors.key");
    snprintf(text, sizeof text, "colour = blue\npublic-key = %s\n[extra]\nsecret-key = %s\n",
             gen->public_z85, gen->secret_z85);
    moeh_keypair_destroy(&gen); /* before any assertion: a failure leaks nothing */
    write_text(path, text);
    assert_int_equal(moeh_keypair_read(path, &kp, &err), -EINVAL);
    assert_null(kp);
    snprintf(want, sizeof want, "%s:1: unknown field", path);
    if (!strstr(err.msg, want)) print_error("expected '%s', got '%s'\n", want, err.msg);
    assert_non_null(strstr(err.msg, want));
}

static void test_z85_valid(void **state)
{
    moeh_keypair_t *kp = NULL;
    assert_int_equal(moeh_keypair_generate(&kp), 0);
    assert_true(moeh_z85_key_valid(kp->public_z85));
    /* the libzmq test vector (RFC 32) */
    assert_true(moeh_z85_key_valid("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"));
    char s[64];
    snprintf(s, sizeof s, "%s", kp->public_z85);
    s[39] = '\0'; /* 39 characters */
    assert_false(moeh_z85_key_valid(s));
    snprintf(s, sizeof s, "%sA", kp->public_z85); /* 41 */
    assert_false(moeh_z85_key_valid(s));
    assert_false(moeh_z85_key_valid(""));
    snprintf(s, sizeof s, "%s", kp->public_z85);
    s[17] = '~'; /* not in the Z85 alphabet */
    assert_false(moeh_z85_key_valid(s));
    s[17] = ' ';
    assert_false(moeh_z85_key_valid(s));
    memset(s, '%', 40); /* valid characters, but each group exceeds 2^32 */
    s[40] = '\0';
    assert_false(moeh_z85_key_valid(s));
    moeh_keypair_destroy(&kp);
}

/* ---- registry ------------------------------------------------------------------------ */

typedef struct {
    moeh_keypair_t *kp[4];
    uint8_t raw[4][32];
} keys4_t;

static void keys4_make(keys4_t *k)
{
    for (int i = 0; i < 4; i++) {
        assert_int_equal(moeh_keypair_generate(&k->kp[i]), 0);
        assert_non_null(zmq_z85_decode(k->raw[i], k->kp[i]->public_z85));
    }
}

static void keys4_free(keys4_t *k)
{
    for (int i = 0; i < 4; i++)
        moeh_keypair_destroy(&k->kp[i]);
}

static void test_registry_ok(void **state)
{
    keys4_t k;
    keys4_make(&k);
    char path[512], text[1024];
    path_in(path, sizeof path, "registry");
    snprintf(text, sizeof text,
             "# admitted sites\n"
             "[sites]\n"
             "hospital-a = %s\n"
             "Hospital_B.2=%s\n"
             "\n"
             "; another comment\n"
             "c = %s\n",
             k.kp[0]->public_z85, k.kp[1]->public_z85, k.kp[2]->public_z85);
    write_text(path, text);
    moeh_registry_t r;
    moeh_err_t err = {{0}};
    int rc = moeh_registry_load(path, &r, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(r.n, 3);
    assert_string_equal(moeh_registry_lookup(&r, k.raw[0]), "hospital-a");
    assert_string_equal(moeh_registry_lookup(&r, k.raw[1]), "Hospital_B.2");
    assert_string_equal(moeh_registry_lookup(&r, k.raw[2]), "c");
    assert_null(moeh_registry_lookup(&r, k.raw[3]));
    uint8_t almost[32];
    memcpy(almost, k.raw[0], 32);
    almost[31] ^= 1;
    assert_null(moeh_registry_lookup(&r, almost));
    moeh_registry_free(&r);
    assert_int_equal(r.n, 0);
    assert_null(r.entries);
    moeh_registry_free(&r); /* idempotent */

    /* an empty registry admits nobody */
    write_text(path, "[sites]\n");
    assert_int_equal(moeh_registry_load(path, &r, &err), 0);
    assert_int_equal(r.n, 0);
    assert_null(moeh_registry_lookup(&r, k.raw[0]));
    moeh_registry_free(&r);

    /* many sites (the array grows) */
    char *big = malloc(64 * 80);
    assert_non_null(big);
    size_t off = (size_t)sprintf(big, "[sites]\n");
    moeh_keypair_t *many[40];
    for (int i = 0; i < 40; i++) {
        assert_int_equal(moeh_keypair_generate(&many[i]), 0);
        off += (size_t)sprintf(big + off, "s%02d = %s\n", i, many[i]->public_z85);
    }
    write_text(path, big);
    assert_int_equal(moeh_registry_load(path, &r, &err), 0);
    assert_int_equal(r.n, 40);
    for (int i = 0; i < 40; i++) {
        uint8_t raw[32];
        char id[8];
        assert_non_null(zmq_z85_decode(raw, many[i]->public_z85));
        snprintf(id, sizeof id, "s%02d", i);
        assert_string_equal(moeh_registry_lookup(&r, raw), id);
        moeh_keypair_destroy(&many[i]);
    }
    moeh_registry_free(&r);
    free(big);
    keys4_free(&k);
}

/* Writes text to the registry file and expects -EINVAL with "path:line" and `what`. */
static void expect_registry_error(const char *text, int line, const char *what)
{
    char path[512], want[600];
    path_in(path, sizeof path, "registry.bad");
    write_text(path, text);
    moeh_registry_t r = {.n = 99};
    moeh_err_t err = {{0}};
    int rc = moeh_registry_load(path, &r, &err);
    snprintf(want, sizeof want, "%s:%d: ", path, line);
    if (rc != -EINVAL || !strstr(err.msg, want) || !strstr(err.msg, what))
        print_error("expected '%s...%s', got %d '%s'\n", want, what, rc, err.msg);
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err.msg, want));
    assert_non_null(strstr(err.msg, what));
    assert_int_equal(r.n, 0); /* nothing half-loaded */
    assert_null(r.entries);
}

/* Two errors: the message must give the line *and* the description of the first one. */
static void test_registry_first_error_wins(void **state)
{
    keys4_t k;
    keys4_make(&k);
    char text[1024];
    snprintf(text, sizeof text, "[sites]\nsite-a = %s\nsite-a = %s\nsite-b = short\n",
             k.kp[0]->public_z85, k.kp[1]->public_z85);
    keys4_free(&k); /* before any assertion: a failure leaks nothing */
    expect_registry_error(text, 3, "site site-a is listed twice");
}

static void test_registry_errors(void **state)
{
    keys4_t k;
    keys4_make(&k);
    const char *a = k.kp[0]->public_z85, *b = k.kp[1]->public_z85, *c = k.kp[2]->public_z85;
    char text[1024];

    snprintf(text, sizeof text, "[sites]\nsite-a = %s\nsite-b = %s\nsite-a = %s\n", a, b, c);
    expect_registry_error(text, 4, "site site-a is listed twice");

    snprintf(text, sizeof text, "[sites]\nsite-a = %s\nsite-b = %s\nsite-c = %s\n", a, b, a);
    expect_registry_error(text, 4, "site site-c has the same key as site site-a");

    snprintf(text, sizeof text, "[sites]\nsite-a = %s\nsite-b = %.39s\n", a, b);
    expect_registry_error(text, 3, "site site-b: value is not a 40-character Z85 public key");

    snprintf(text, sizeof text, "[sites]\nsite-a = %s\nsite-b = %.39s~\n", a, b);
    expect_registry_error(text, 3, "site site-b: value is not");

    snprintf(text, sizeof text, "[sites]\nsite-a = \n");
    expect_registry_error(text, 2, "site site-a: value is not");

    snprintf(text, sizeof text, "[sites]\nsite-a = %s\nbad/id = %s\n", a, b);
    expect_registry_error(text, 3, "site id 'bad/id'");

    char longid[70];
    memset(longid, 'L', 65);
    longid[65] = '\0';
    snprintf(text, sizeof text, "[sites]\n%s = %s\n", longid, a);
    expect_registry_error(text, 2, "must be 1-64");

    snprintf(text, sizeof text, "site-a = %s\n[sites]\nsite-b = %s\n", a, b);
    expect_registry_error(text, 1, "entries must be under [sites]");

    snprintf(text, sizeof text, "[sites]\nsite-a = %s\n[other]\nsite-b = %s\n", a, b);
    expect_registry_error(text, 4, "entries must be under [sites]");

    snprintf(text, sizeof text, "[sites]\nsite-a = %s\nno equals sign here\n", a);
    expect_registry_error(text, 3, "");

    keys4_free(&k);

    char path[512];
    path_in(path, sizeof path, "no-such-registry");
    moeh_registry_t r;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_registry_load(path, &r, &err), -ENOENT);
    assert_non_null(strstr(err.msg, path));
    assert_int_equal(r.n, 0);
}

/* ---- ZAP over a real CURVE connection ------------------------------------------------- */

static void *dealer_to(void *ctx, const moeh_keypair_t *kp, const char *server_pub,
                       const char *endpoint)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(s);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(moeh_curve_client(s, kp, server_pub), 0);
    assert_int_equal(zmq_connect(s, endpoint), 0);
    return s;
}

static void test_zap_admission(void **state)
{
    keys4_t k; /* 0: server, 1: registered site, 2: stranger, 3: admitted later */
    keys4_make(&k);
    char text[512];
    snprintf(text, sizeof text, "[sites]\nsite-one = %s\n", k.kp[1]->public_z85);
    char path[512];
    path_in(path, sizeof path, "zap.registry");
    write_text(path, text);
    moeh_registry_t reg;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_registry_load(path, &reg, &err), 0);

    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    moeh_zap_t *zap = NULL;
    assert_int_equal(moeh_zap_start(ctx, &reg, &zap), 0);
    assert_non_null(zap);
    assert_int_equal(reg.n, 0); /* moved */
    assert_null(reg.entries);
    char id[65];
    assert_int_equal(moeh_zap_lookup(zap, k.raw[1], id), 0);
    assert_string_equal(id, "site-one");
    assert_int_equal(moeh_zap_lookup(zap, k.raw[2], id), -ENOENT);
    assert_int_equal(moeh_zap_refused(zap), 0);

    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    assert_non_null(router);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(moeh_curve_server(router, k.kp[0]), 0);
    assert_int_equal(zmq_bind(router, "tcp://127.0.0.1:*"), 0);
    char ep[256];
    size_t epl = sizeof ep;
    assert_int_equal(zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &epl), 0);

    /* the registered site gets through, named by its site id */
    void *good = dealer_to(ctx, k.kp[1], k.kp[0]->public_z85, ep);
    assert_int_equal(zmq_send(good, "hello", 5, 0), 5);
    zmq_pollitem_t it = {.socket = router, .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
    zmq_msg_t rid, body;
    zmq_msg_init(&rid);
    zmq_msg_init(&body);
    assert_true(zmq_msg_recv(&rid, router, 0) > 0);
    assert_true(zmq_msg_more(&rid));
    assert_int_equal(zmq_msg_recv(&body, router, 0), 5);
    assert_memory_equal(zmq_msg_data(&body), "hello", 5);
    const char *uid = zmq_msg_gets(&body, "User-Id");
    assert_non_null(uid);
    assert_string_equal(uid, "site-one");
    zmq_msg_close(&rid);
    zmq_msg_close(&body);
    assert_int_equal(moeh_zap_refused(zap), 0);

    /* a stranger is refused: nothing arrives, the refusal is counted */
    void *bad = dealer_to(ctx, k.kp[2], k.kp[0]->public_z85, ep);
    assert_int_equal(zmq_send(bad, "let me in", 9, ZMQ_DONTWAIT), 9);
    assert_int_equal(zmq_poll(&it, 1, 1000), 0);
    assert_true(moeh_zap_refused(zap) >= 1);

    /* a client that pins the wrong server key never gets anything through either */
    void *wrong = dealer_to(ctx, k.kp[1], k.kp[3]->public_z85, ep);
    assert_int_equal(zmq_send(wrong, "x", 1, ZMQ_DONTWAIT), 1);
    assert_int_equal(zmq_poll(&it, 1, 300), 0);

    /* replacing the registry changes who is known */
    snprintf(text, sizeof text, "[sites]\nsite-three = %s\n", k.kp[3]->public_z85);
    write_text(path, text);
    assert_int_equal(moeh_registry_load(path, &reg, &err), 0);
    moeh_zap_replace_registry(zap, &reg);
    assert_int_equal(reg.n, 0);
    assert_int_equal(moeh_zap_lookup(zap, k.raw[1], id), -ENOENT);
    assert_int_equal(moeh_zap_lookup(zap, k.raw[3], id), 0);
    assert_string_equal(id, "site-three");
    void *late = dealer_to(ctx, k.kp[3], k.kp[0]->public_z85, ep);
    assert_int_equal(zmq_send(late, "hi", 2, 0), 2);
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
    zmq_msg_init(&rid);
    zmq_msg_init(&body);
    assert_true(zmq_msg_recv(&rid, router, 0) > 0);
    assert_int_equal(zmq_msg_recv(&body, router, 0), 2);
    uid = zmq_msg_gets(&body, "User-Id");
    assert_non_null(uid);
    assert_string_equal(uid, "site-three");
    zmq_msg_close(&rid);
    zmq_msg_close(&body);

    assert_int_equal(zmq_close(good), 0);
    assert_int_equal(zmq_close(bad), 0);
    assert_int_equal(zmq_close(wrong), 0);
    assert_int_equal(zmq_close(late), 0);
    assert_int_equal(zmq_close(router), 0);
    moeh_zap_destroy(&zap);
    assert_null(zap);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    keys4_free(&k);
}

/* ---- the ZAP handler, driven with raw RFC 27 requests --------------------------------- */

/* Sends one ZAP request (n_creds credential frames after the mechanism) from a DEALER. */
static void zap_request(void *d, const char *req_id, const char *mech, const void *const *creds,
                        const size_t *cred_len, size_t n_creds)
{
    const char *head[] = {"", "1.0", req_id, "moeh", "127.0.0.1", "", mech};
    for (size_t i = 0; i < 7; i++)
        assert_int_equal(
            zmq_send(d, head[i], strlen(head[i]), i + 1 < 7 || n_creds ? ZMQ_SNDMORE : 0),
            (int)strlen(head[i]));
    for (size_t i = 0; i < n_creds; i++)
        assert_int_equal(zmq_send(d, creds[i], cred_len[i], i + 1 < n_creds ? ZMQ_SNDMORE : 0),
                         (int)cred_len[i]);
}

/* Receives the reply to req_id: checks version and request id, returns status and user id. */
static void zap_reply(void *d, const char *req_id, char *status, char *text, char *user)
{
    zmq_pollitem_t it = {.socket = d, .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
    char buf[7][128];
    int more = 1;
    size_t n = 0;
    for (; more; n++) {
        assert_true(n < 7);
        int len = zmq_recv(d, buf[n], sizeof buf[n] - 1, 0);
        assert_true(len >= 0 && len < (int)sizeof buf[n]);
        buf[n][len] = '\0';
        int m = 0;
        size_t ml = sizeof m;
        assert_int_equal(zmq_getsockopt(d, ZMQ_RCVMORE, &m, &ml), 0);
        more = m;
    }
    assert_int_equal(n, 7); /* delimiter, version, id, status, text, user, metadata */
    assert_string_equal(buf[0], "");
    assert_string_equal(buf[1], "1.0");
    assert_string_equal(buf[2], req_id);
    strcpy(status, buf[3]);
    strcpy(text, buf[4]);
    strcpy(user, buf[5]);
}

/* The registry's [limits] through the ZAP handler, as moeh-coordinator's run.c asks for them
 * (io_site_limits, io_site_val_limit), before and after a reload. */
static void test_zap_limits(void **state)
{
    (void)state;
    keys4_t k;
    keys4_make(&k);
    char text[1024];
    snprintf(text, sizeof text,
             "[sites]\nsite-one = %s\nsite-two = %s\n[limits]\nsite-one = 800,200,150\n"
             "site-two = 700,100\n",
             k.kp[1]->public_z85, k.kp[2]->public_z85);
    moeh_registry_t reg;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_registry_parse(text, "limits", &reg, &err), 0);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    moeh_zap_t *zap = NULL;
    assert_int_equal(moeh_zap_start(ctx, &reg, &zap), 0);
    uint64_t mt = 1, me = 1;
    assert_int_equal(moeh_zap_site_limits(zap, "site-one", &mt, &me), 0);
    assert_true(mt == 800 && me == 200);
    assert_true(moeh_zap_site_val_limit(zap, "site-one") == 150);
    assert_int_equal(moeh_zap_site_limits(zap, "site-two", &mt, &me), 0);
    assert_true(mt == 700 && me == 100);
    assert_true(moeh_zap_site_val_limit(zap, "site-two") == 0);   /* MAX_VAL left out: none */
    assert_true(moeh_zap_site_val_limit(zap, "site-three") == 0); /* not registered */

    /* a reload replaces the limits */
    snprintf(text, sizeof text, "[sites]\nsite-one = %s\n[limits]\nsite-one = 80,20,15\n",
             k.kp[1]->public_z85);
    assert_int_equal(moeh_registry_parse(text, "limits", &reg, &err), 0);
    moeh_zap_replace_registry(zap, &reg);
    assert_true(moeh_zap_site_val_limit(zap, "site-one") == 15);
    assert_true(moeh_zap_site_val_limit(zap, "site-two") == 0);
    moeh_zap_destroy(&zap);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    keys4_free(&k);
}

/* A ZAP handler on a new context for the registry `text`, and a DEALER connected to its RFC 27
 * endpoint to send it raw requests. */
static void zap_harness(const char *text, const char *name, void **ctx, moeh_zap_t **zap, void **d)
{
    moeh_registry_t reg;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_registry_parse(text, name, &reg, &err), 0);
    *ctx = zmq_ctx_new();
    assert_non_null(*ctx);
    *zap = NULL;
    assert_int_equal(moeh_zap_start(*ctx, &reg, zap), 0);
    *d = zmq_socket(*ctx, ZMQ_DEALER);
    assert_non_null(*d);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(*d, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_connect(*d, "inproc://zeromq.zap.01"), 0);
}

static void test_zap_requests(void **state)
{
    keys4_t k;
    keys4_make(&k);
    char text[512];
    snprintf(text, sizeof text, "[sites]\nsite-one = %s\n", k.kp[1]->public_z85);
    void *ctx, *d;
    moeh_zap_t *zap;
    zap_harness(text, "zap", &ctx, &zap, &d);
    char status[128], msg[128], user[128];

    /* not CURVE: refused */
    zap_request(d, "r1", "NULL", NULL, NULL, 0);
    zap_reply(d, "r1", status, msg, user);
    assert_string_equal(status, "400");
    assert_string_equal(msg, "CURVE required");
    assert_string_equal(user, "");
    assert_int_equal(moeh_zap_refused(zap), 1);

    /* a truncated request is refused, not counted as a connection, and the handler carries
     * on (its REP socket must answer before it can take the next request) */
    assert_int_equal(zmq_send(d, "", 0, ZMQ_SNDMORE), 0);
    assert_int_equal(zmq_send(d, "1.0", 3, ZMQ_SNDMORE), 3);
    assert_int_equal(zmq_send(d, "r2", 2, 0), 2);
    zap_reply(d, "r2", status, msg, user);
    assert_string_equal(status, "400");
    assert_string_equal(msg, "malformed request");
    assert_int_equal(moeh_zap_refused(zap), 1);

    /* the registered key: admitted and named */
    const void *cred[2] = {k.raw[1], "extra"};
    const size_t cl[2] = {32, 5};
    zap_request(d, "r3", "CURVE", cred, cl, 1);
    zap_reply(d, "r3", status, msg, user);
    assert_string_equal(status, "200");
    assert_string_equal(user, "site-one");

    /* frames beyond the key are ignored */
    zap_request(d, "r4", "CURVE", cred, cl, 2);
    zap_reply(d, "r4", status, msg, user);
    assert_string_equal(status, "200");
    assert_string_equal(user, "site-one");

    /* an unknown key, and a key of the wrong length */
    const void *stranger[1] = {k.raw[2]};
    zap_request(d, "r5", "CURVE", stranger, cl, 1);
    zap_reply(d, "r5", status, msg, user);
    assert_string_equal(status, "400");
    assert_string_equal(msg, "unknown key");
    assert_string_equal(user, "");
    const size_t short_len[1] = {31};
    zap_request(d, "r6", "CURVE", cred, short_len, 1);
    zap_reply(d, "r6", status, msg, user);
    assert_string_equal(status, "400");
    assert_int_equal(moeh_zap_refused(zap), 3);

    assert_int_equal(zmq_close(d), 0);
    moeh_zap_destroy(&zap);
    assert_null(zap);
    moeh_zap_destroy(&zap); /* NULL-safe */
    moeh_zap_destroy(NULL);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    keys4_free(&k);
}

/* The handshake budget per key (MOEH_ZAP_HS_BURST at once, MOEH_ZAP_HS_PER_S a second): a
 * burst of requests for one key is admitted up to the budget, the rest are told to try later
 * (500, not 400: the agent reads 400 as "key not registered"); another key has its own
 * budget; after a second the key gets about one more. */
static void test_zap_handshake_budget(void **state)
{
    (void)state;
    keys4_t k;
    keys4_make(&k);
    char text[512];
    snprintf(text, sizeof text, "[sites]\nsite-one = %s\nsite-two = %s\n", k.kp[1]->public_z85,
             k.kp[2]->public_z85);
    void *ctx, *d;
    moeh_zap_t *zap;
    zap_harness(text, "budget", &ctx, &zap, &d);
    char status[128], msg[128], user[128], id[16];
    const void *one[1] = {k.raw[1]}, *two[1] = {k.raw[2]};
    const size_t cl[1] = {32};
    int ok = 0, later = 0;
    for (int i = 0; i < MOEH_ZAP_HS_BURST + 8; i++) { /* well within a second */
        snprintf(id, sizeof id, "b%d", i);
        zap_request(d, id, "CURVE", one, cl, 1);
        zap_reply(d, id, status, msg, user);
        if (strcmp(status, "200") == 0) {
            ok++;
            assert_string_equal(user, "site-one");
        } else {
            later++;
            assert_string_equal(status, "500");
            assert_non_null(strstr(msg, "try later"));
            assert_string_equal(user, "");
        }
    }
    assert_true(ok >= MOEH_ZAP_HS_BURST && ok <= MOEH_ZAP_HS_BURST + 1); /* (+1: a refill) */
    assert_int_equal(later, MOEH_ZAP_HS_BURST + 8 - ok);
    assert_int_equal((int)moeh_zap_deferred(zap), later);
    assert_int_equal(moeh_zap_refused(zap), 0);   /* deferred, not refused */
    zap_request(d, "other", "CURVE", two, cl, 1); /* its own budget */
    zap_reply(d, "other", status, msg, user);
    assert_string_equal(status, "200");
    assert_string_equal(user, "site-two");
    usleep(1200000); /* MOEH_ZAP_HS_PER_S = 1: one more handshake */
    zap_request(d, "again", "CURVE", one, cl, 1);
    zap_reply(d, "again", status, msg, user);
    assert_string_equal(status, "200");
    assert_int_equal(zmq_close(d), 0);
    moeh_zap_destroy(&zap);
    assert_int_equal(zmq_ctx_term(ctx), 0);
    keys4_free(&k);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test_setup_teardown(test_keypair_files, setup, teardown),
               cmocka_unit_test_setup_teardown(test_keyfile_errors, setup, teardown),
               cmocka_unit_test_setup_teardown(test_keyfile_first_error_wins, setup, teardown),
               cmocka_unit_test_setup_teardown(test_z85_valid, setup, teardown),
               cmocka_unit_test_setup_teardown(test_registry_ok, setup, teardown),
               cmocka_unit_test_setup_teardown(test_registry_errors, setup, teardown),
               cmocka_unit_test_setup_teardown(test_registry_first_error_wins, setup, teardown),
               cmocka_unit_test_setup_teardown(test_zap_admission, setup, teardown),
               cmocka_unit_test_setup_teardown(test_zap_requests, setup, teardown),
               cmocka_unit_test_setup_teardown(test_zap_limits, setup, teardown),
               cmocka_unit_test_setup_teardown(test_zap_handshake_budget, setup, teardown))
