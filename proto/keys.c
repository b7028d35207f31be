/* keys.c - key files, the site registry and CURVE socket set-up (see moeh_keys.h). */
#include "moeh_keys.h"

#include "moeh_wire.h"

#include <ini.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

int moeh_crypto_init(void)
{
    return sodium_init() < 0 ? -EIO : 0;
}

int moeh_z85_key_valid(const char *s)
{
    uint8_t k[32];
    return strlen(s) == MOEH_Z85_KEY_LEN && zmq_z85_decode(k, s) != NULL;
}

int moeh_keypair_generate(moeh_keypair_t **out)
{
    moeh_keypair_t *kp = sodium_malloc(sizeof *kp);
    if (!kp) return -ENOMEM;
    if (zmq_curve_keypair(kp->public_z85, kp->secret_z85) != 0) {
        sodium_free(kp);
        return -ENOTSUP; /* libzmq built without CURVE */
    }
    *out = kp;
    return 0;
}

void moeh_keypair_destroy(moeh_keypair_t **self_p)
{
    if (!self_p || !*self_p) return;
    sodium_free(*self_p); /* wipes before unmapping */
    *self_p = NULL;
}

int moeh_keypair_write(const moeh_keypair_t *kp, const char *base, moeh_err_t *err)
{
    char path[4096], *buf = sodium_malloc(512);
    int rc;
    if (!buf) return moeh_errf(err, -ENOMEM, "out of memory");
    int n = snprintf(buf, 512,
                     "# moeh CURVE key pair: keep this file secret (mode 0600)\n"
                     "public-key = %s\nsecret-key = %s\n",
                     kp->public_z85, kp->secret_z85);
    snprintf(path, sizeof path, "%s.key", base);
    /* create the file 0600 from the start: no window in which the secret is readable */
    mode_t old = umask(077);
    rc = moeh_file_write_atomic(path, buf, (size_t)n, err);
    umask(old);
    sodium_free(buf);
    if (rc) return rc;
    char pub[256];
    n = snprintf(pub, sizeof pub, "# moeh CURVE public key\npublic-key = %s\n", kp->public_z85);
    snprintf(path, sizeof path, "%s.pub", base);
    return moeh_file_write_atomic(path, pub, (size_t)n, err);
}

typedef struct {
    moeh_keypair_t *kp;
    int have_pub, have_sec, bad_line;
    const char *bad_what;
} keyfile_ctx_t;

static int keyfile_handler(void *user, const char *section, const char *name, const char *value)
{
    keyfile_ctx_t *c = user;
    if (c->bad_what) /* inih goes on after an error and reports the first one's line */
        return 0;
    if (section[0] != '\0') {
        c->bad_what = "unexpected [section]";
        return 0;
    }
    if (strcmp(name, "public-key") == 0) {
        if (!moeh_z85_key_valid(value)) {
            c->bad_what = "public-key is not a 40-character Z85 key";
            return 0;
        }
        memcpy(c->kp->public_z85, value, MOEH_Z85_KEY_LEN + 1);
        c->have_pub = 1;
    } else if (strcmp(name, "secret-key") == 0) {
        if (!moeh_z85_key_valid(value)) {
            c->bad_what = "secret-key is not a 40-character Z85 key";
            return 0;
        }
        memcpy(c->kp->secret_z85, value, MOEH_Z85_KEY_LEN + 1);
        c->have_sec = 1;
    } else {
        c->bad_what = "unknown field (expected public-key or secret-key)";
        return 0;
    }
    return 1;
}

/* Parses a key file from path, or from text if it is non-NULL (path then only names it). */
static int read_keyfile(const char *path, const char *text, moeh_keypair_t *kp, int need_secret,
                        moeh_err_t *err)
{
    keyfile_ctx_t c = {.kp = kp};
    int line =
        text ? ini_parse_string(text, keyfile_handler, &c) : ini_parse(path, keyfile_handler, &c);
    if (line < 0) return moeh_errf(err, -ENOENT, "%s: cannot open key file", path);
    if (line > 0)
        return moeh_errf(err, -EINVAL, "%s:%d: %s", path, line,
                         c.bad_what ? c.bad_what : "syntax error");
    if (!need_secret && c.have_sec) /* e.g. coordinator.key given as --server-key */
        return moeh_errf(err, -EINVAL,
                         "%s: holds a secret-key, so it is a key pair file (.key), not a public "
                         "key: give the matching .pub file (public-key only) here, and keep the "
                         ".key file on its owner's machine",
                         path);
    if (!c.have_pub || (need_secret && !c.have_sec))
        return moeh_errf(err, -EINVAL, "%s: missing %s", path,
                         c.have_pub ? "secret-key (is this a .pub file?)" : "public-key");
    if (need_secret) { /* the public half must be the one the secret half derives */
        uint8_t sec[32], pub[32], derived[32];
        int ok = zmq_z85_decode(sec, kp->secret_z85) && zmq_z85_decode(pub, kp->public_z85) &&
                 crypto_scalarmult_base(derived, sec) == 0 && sodium_memcmp(derived, pub, 32) == 0;
        sodium_memzero(sec, sizeof sec);
        sodium_memzero(derived, sizeof derived);
        if (!ok)
            return moeh_errf(err, -EINVAL,
                             "%s: public-key and secret-key do not belong together (the public "
                             "key is not the one the secret key derives); regenerate the pair "
                             "with moeh-keygen",
                             path);
    }
    return 0;
}

int moeh_keypair_parse(const char *text, const char *name, moeh_keypair_t **out, moeh_err_t *err)
{
    moeh_keypair_t *kp = sodium_malloc(sizeof *kp);
    if (!kp) return moeh_errf(err, -ENOMEM, "out of memory");
    int rc = read_keyfile(name, text, kp, 1, err);
    if (rc) {
        sodium_free(kp);
        return rc;
    }
    *out = kp;
    return 0;
}

int moeh_keypair_read(const char *path, moeh_keypair_t **out, moeh_err_t *err)
{
    moeh_keypair_t *kp = sodium_malloc(sizeof *kp);
    if (!kp) return moeh_errf(err, -ENOMEM, "out of memory");
    int rc = read_keyfile(path, NULL, kp, 1, err);
    if (rc) {
        sodium_free(kp);
        return rc;
    }
    struct stat st;
    if (stat(path, &st) == 0 && (st.st_mode & 077))
        MOEH_WARN("%s: secret key file is readable by others (chmod 600 it)", path);
    *out = kp;
    return 0;
}

int moeh_pubkey_read(const char *path, char *out, moeh_err_t *err)
{
    moeh_keypair_t *kp = sodium_malloc(sizeof *kp);
    if (!kp) return moeh_errf(err, -ENOMEM, "out of memory");
    int rc = read_keyfile(path, NULL, kp, 0, err);
    if (!rc) memcpy(out, kp->public_z85, MOEH_Z85_KEY_LEN + 1);
    sodium_free(kp);
    return rc;
}

/* A [limits] line, applied to its [sites] entry once the whole file is read (the sections
 * may come in any order). */
typedef struct {
    char site_id[65];
    uint64_t max_train, max_test, max_val;
} reg_limit_t;

typedef struct {
    moeh_registry_t *r;
    size_t cap;
    char what[160];
    reg_limit_t *limits;
    size_t n_limits, cap_limits;
} reg_ctx_t;

/* "N" as a count: decimal digits only, below 2^53 (0: no limit). 0 or -EINVAL. */
static int parse_count(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 16) return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v >= (1ull << 53)) return -EINVAL;
    *out = v;
    return 0;
}

/* [limits]  SITE_ID = MAX_TRAIN,MAX_TEST[,MAX_VAL]: the most training, test and validation
 * rows the consortium accepts from the site (0 or no MAX_VAL: no registered limit for that
 * count). */
static int limits_line(reg_ctx_t *c, const char *name, const char *value)
{
    const char *comma = strchr(value, ','), *comma2 = comma ? strchr(comma + 1, ',') : NULL;
    const char *end_test = comma2 ? comma2 : (comma ? comma + strlen(comma) : NULL);
    uint64_t mt = 0, me = 0, mv = 0;
    if (!moeh_site_id_valid(name)) {
        snprintf(c->what, sizeof c->what, "site id '%.64s' must be 1-64 of [A-Za-z0-9._-]", name);
        return 0;
    }
    if (!comma || parse_count(value, (size_t)(comma - value), &mt) ||
        parse_count(comma + 1, (size_t)(end_test - (comma + 1)), &me) ||
        (comma2 && parse_count(comma2 + 1, strlen(comma2 + 1), &mv))) {
        snprintf(c->what, sizeof c->what,
                 "limits of site %s: expected MAX_TRAIN,MAX_TEST[,MAX_VAL] (row counts below "
                 "2^53, 0 for no limit)",
                 name);
        return 0;
    }
    for (size_t i = 0; i < c->n_limits; i++)
        if (strcmp(c->limits[i].site_id, name) == 0) {
            snprintf(c->what, sizeof c->what, "limits of site %s are listed twice", name);
            return 0;
        }
    if (c->n_limits == c->cap_limits) {
        size_t cap = c->cap_limits ? 2 * c->cap_limits : 8;
        reg_limit_t *l = realloc(c->limits, cap * sizeof *l);
        if (!l) {
            snprintf(c->what, sizeof c->what, "out of memory");
            return 0;
        }
        c->limits = l;
        c->cap_limits = cap;
    }
    reg_limit_t *l = &c->limits[c->n_limits++];
    snprintf(l->site_id, sizeof l->site_id, "%s", name);
    l->max_train = mt;
    l->max_test = me;
    l->max_val = mv;
    return 1;
}

static int registry_handler(void *user, const char *section, const char *name, const char *value)
{
    reg_ctx_t *c = user;
    if (c->what[0]) /* inih goes on after an error and reports the first one's line */
        return 0;
    if (strcmp(section, "limits") == 0) return limits_line(c, name, value);
    if (strcmp(section, "sites") != 0) {
        snprintf(c->what, sizeof c->what, "entries must be under [sites] (or [limits])");
        return 0;
    }
    if (!moeh_site_id_valid(name)) {
        snprintf(c->what, sizeof c->what, "site id '%.64s' must be 1-64 of [A-Za-z0-9._-]", name);
        return 0;
    }
    uint8_t key[32];
    if (strlen(value) != MOEH_Z85_KEY_LEN || !zmq_z85_decode(key, value)) {
        snprintf(c->what, sizeof c->what, "site %s: value is not a 40-character Z85 public key",
                 name);
        return 0;
    }
    moeh_registry_t *r = c->r;
    for (size_t i = 0; i < r->n; i++) {
        if (strcmp(r->entries[i].site_id, name) == 0) {
            snprintf(c->what, sizeof c->what, "site %s is listed twice", name);
            return 0;
        }
        if (sodium_memcmp(r->entries[i].key, key, 32) == 0) {
            snprintf(c->what, sizeof c->what, "site %s has the same key as site %s", name,
                     r->entries[i].site_id);
            return 0;
        }
    }
    if (r->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 8;
        moeh_registry_entry_t *e = realloc(r->entries, cap * sizeof *e);
        if (!e) {
            snprintf(c->what, sizeof c->what, "out of memory");
            return 0;
        }
        r->entries = e;
        c->cap = cap;
    }
    snprintf(r->entries[r->n].site_id, sizeof r->entries[r->n].site_id, "%s", name);
    memcpy(r->entries[r->n].key, key, 32);
    r->entries[r->n].max_train = r->entries[r->n].max_test = 0; /* [limits] may set them */
    r->entries[r->n].max_val = 0;
    r->n++;
    return 1;
}

static int registry_finish(int line, const char *name, reg_ctx_t *c, moeh_registry_t *out,
                           moeh_err_t *err)
{
    for (size_t i = 0; line == 0 && i < c->n_limits; i++) {
        const reg_limit_t *l = &c->limits[i];
        moeh_registry_entry_t *e = NULL;
        for (size_t j = 0; j < out->n && !e; j++)
            if (strcmp(out->entries[j].site_id, l->site_id) == 0) e = &out->entries[j];
        if (!e) {
            moeh_errf(err, -EINVAL, "%s: [limits] names site %s, which is not under [sites]", name,
                      l->site_id);
            line = -2;
            break;
        }
        e->max_train = l->max_train;
        e->max_test = l->max_test;
        e->max_val = l->max_val;
    }
    free(c->limits);
    if (line == -2) {
        moeh_registry_free(out);
        return -EINVAL;
    }
    if (line < 0) return moeh_errf(err, -ENOENT, "%s: cannot open site registry", name);
    if (line > 0) {
        moeh_errf(err, -EINVAL, "%s:%d: %s", name, line, c->what[0] ? c->what : "syntax error");
        moeh_registry_free(out);
        return -EINVAL;
    }
    return 0;
}

int moeh_registry_load(const char *path, moeh_registry_t *out, moeh_err_t *err)
{
    memset(out, 0, sizeof *out);
    reg_ctx_t c = {.r = out};
    return registry_finish(ini_parse(path, registry_handler, &c), path, &c, out, err);
}

int moeh_registry_parse(const char *text, const char *name, moeh_registry_t *out, moeh_err_t *err)
{
    memset(out, 0, sizeof *out);
    reg_ctx_t c = {.r = out};
    return registry_finish(ini_parse_string(text, registry_handler, &c), name, &c, out, err);
}

void moeh_registry_free(moeh_registry_t *r)
{
    if (!r) return;
    free(r->entries);
    memset(r, 0, sizeof *r);
}

const char *moeh_registry_lookup(const moeh_registry_t *r, const uint8_t key[32])
{
    for (size_t i = 0; i < r->n; i++)
        if (sodium_memcmp(r->entries[i].key, key, 32) == 0) return r->entries[i].site_id;
    return NULL;
}

int moeh_registry_limits(const moeh_registry_t *r, const char *site_id, uint64_t *max_train,
                         uint64_t *max_test, uint64_t *max_val)
{
    *max_train = *max_test = *max_val = 0;
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->entries[i].site_id, site_id) == 0) {
            *max_train = r->entries[i].max_train;
            *max_test = r->entries[i].max_test;
            *max_val = r->entries[i].max_val;
            return 0;
        }
    return -ENOENT;
}

int moeh_curve_server(void *sock, const moeh_keypair_t *kp)
{
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp->secret_z85, MOEH_Z85_KEY_LEN + 1) ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "moeh", 4))
        return -zmq_errno();
    return 0;
}

int moeh_curve_client(void *sock, const moeh_keypair_t *kp, const char *server_public_z85)
{
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_public_z85, MOEH_Z85_KEY_LEN + 1) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, kp->public_z85, MOEH_Z85_KEY_LEN + 1) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp->secret_z85, MOEH_Z85_KEY_LEN + 1))
        return -zmq_errno();
    return 0;
}
