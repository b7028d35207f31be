/* moeh_keys.h - CURVE key pairs and files, the coordinator's site registry, socket security set-up
 * and the ZAP handler that admits only registered public keys.
 *
 * Files (INI syntax, read with inih; errors name file and line):
 *   NAME.key   (mode 0600)  public-key = <Z85>  secret-key = <Z85>
 *   NAME.pub                public-key = <Z85>
 *   registry                [sites]  SITE_ID = <Z85 public key>   (one line per admitted site)
 *                           [limits] SITE_ID = MAX_TRAIN,MAX_TEST   (optional: the most training
 *                                    and test rows the consortium accepts from the site; 0 = no
 *                                    registered limit; the site must be under [sites])
 * Secret keys live in sodium_malloc'd memory and are wiped when freed. */
#ifndef MOEH_KEYS_H
#define MOEH_KEYS_H

#include "moeh_common.h"

#define MOEH_Z85_KEY_LEN 40

typedef struct {
    char public_z85[MOEH_Z85_KEY_LEN + 1];
    char secret_z85[MOEH_Z85_KEY_LEN + 1];
} moeh_keypair_t;

/* libsodium must be initialised once per process: 0 or -EIO. */
int moeh_crypto_init(void) __attribute__((warn_unused_result));

/* New key pair in secure memory. Caller owns *out: moeh_keypair_destroy(&kp). */
int moeh_keypair_generate(moeh_keypair_t **out) __attribute__((warn_unused_result));
void moeh_keypair_destroy(moeh_keypair_t **self_p);
/* Writes BASE.key (0600) and BASE.pub, each atomically. */
int moeh_keypair_write(const moeh_keypair_t *kp, const char *base, moeh_err_t *err)
    __attribute__((warn_unused_result));
/* Reads a .key file (public + secret). */
int moeh_keypair_read(const char *path, moeh_keypair_t **out, moeh_err_t *err)
    __attribute__((warn_unused_result));
/* Parses the text of a .key file (name only labels messages); for tests and fuzzing. */
int moeh_keypair_parse(const char *text, const char *name, moeh_keypair_t **out, moeh_err_t *err)
    __attribute__((warn_unused_result));
/* Reads the public key of a .pub or .key file into out (MOEH_Z85_KEY_LEN + 1 bytes). */
int moeh_pubkey_read(const char *path, char *out, moeh_err_t *err)
    __attribute__((warn_unused_result));
/* 1 if s is a Z85 encoding of a 32-byte key. */
int moeh_z85_key_valid(const char *s);

/* ---- the site registry --------------------------------------------------------------- */
typedef struct {
    char site_id[65];
    uint8_t key[32];
    uint64_t max_train, max_test, max_val; /* [limits]: registered row caps (0: none) */
} moeh_registry_entry_t;

typedef struct {
    size_t n;
    moeh_registry_entry_t *entries;
} moeh_registry_t;

/* Loads a registry file; duplicate ids or keys, bad ids or keys are errors with file:line.
 * Caller frees with moeh_registry_free. */
int moeh_registry_load(const char *path, moeh_registry_t *out, moeh_err_t *err)
    __attribute__((warn_unused_result));
/* The same from text in memory (name labels messages). */
int moeh_registry_parse(const char *text, const char *name, moeh_registry_t *out, moeh_err_t *err)
    __attribute__((warn_unused_result));
void moeh_registry_free(moeh_registry_t *r);
/* The site id registered for a 32-byte public key, or NULL. */
const char *moeh_registry_lookup(const moeh_registry_t *r, const uint8_t key[32]);
/* The registered row limits of a site's training, test and validation splits ([limits]; 0
 * where none): 0, or -ENOENT (all 0) if the site is not registered. */
int moeh_registry_limits(const moeh_registry_t *r, const char *site_id, uint64_t *max_train,
                         uint64_t *max_test, uint64_t *max_val) __attribute__((warn_unused_result));

/* ---- sockets --------------------------------------------------------------------------- */
/* Server side: CURVE server with kp; the ZAP domain "moeh". */
int moeh_curve_server(void *sock, const moeh_keypair_t *kp) __attribute__((warn_unused_result));
/* Client side: own kp and the server's public key (pinned). */
int moeh_curve_client(void *sock, const moeh_keypair_t *kp, const char *server_public_z85)
    __attribute__((warn_unused_result));

/* ---- ZAP admission ------------------------------------------------------------------- */
/* Handshakes one site key may complete: MOEH_ZAP_HS_BURST at once, then MOEH_ZAP_HS_PER_S a
 * second; beyond, ZAP answers 500 with "too many connections of this key: try later" (the
 * client gets an ERROR, libzmq closes the connection at once and the client's ZeroMQ
 * reconnects; moeh-site-agent logs it and goes on). Not 300, RFC 27's temporary failure:
 * libzmq 4.3 then drops the client without a word, which an agent must read as a wrong server
 * key, and holds the connection until the handshake timeout. An agent reconnects far less
 * often; a key that opens silent connections (each closed by the coordinator's idle timeout)
 * holds at most BURST + PER_S x (idle time) of them. */
#define MOEH_ZAP_HS_BURST 16
#define MOEH_ZAP_HS_PER_S 1.0

typedef struct moeh_zap moeh_zap_t;
/* Starts the ZAP handler thread on ctx, taking ownership of *reg (it is moved, *reg is
 * zeroed). Must be started before any CURVE server socket binds. */
int moeh_zap_start(void *ctx, moeh_registry_t *reg, moeh_zap_t **out)
    __attribute__((warn_unused_result));
/* Replaces the registry (e.g. on SIGHUP); takes ownership of *reg. Thread-safe. */
void moeh_zap_replace_registry(moeh_zap_t *z, moeh_registry_t *reg);
/* Copies the registered id of key into out (65 bytes); 0 or -ENOENT. Thread-safe. */
int moeh_zap_lookup(moeh_zap_t *z, const uint8_t key[32], char *out)
    __attribute__((warn_unused_result));
/* 1 if a site with that id is in the current registry. Thread-safe. */
int moeh_zap_has_site(moeh_zap_t *z, const char *site_id);
/* moeh_registry_limits on the current registry. Thread-safe. */
int moeh_zap_site_limits(moeh_zap_t *z, const char *site_id, uint64_t *max_train,
                         uint64_t *max_test) __attribute__((warn_unused_result));
/* The registered MAX_VAL of a site (0: none, or not registered). Thread-safe. */
uint64_t moeh_zap_site_val_limit(moeh_zap_t *z, const char *site_id);
/* Number of sites in the current registry. Thread-safe. */
size_t moeh_zap_n_sites(moeh_zap_t *z);
/* Number of connections refused so far. */
uint64_t moeh_zap_refused(moeh_zap_t *z);
/* Handshakes answered "try later" (MOEH_ZAP_HS_BURST) so far. Thread-safe. */
uint64_t moeh_zap_deferred(moeh_zap_t *z);
/* Stops the handler thread and frees everything, the registry included. NULL-safe (self_p or
 * *self_p NULL: nothing); sets *self_p to NULL. */
void moeh_zap_destroy(moeh_zap_t **self_p);

#endif
