/* zap.c - the ZAP (ZeroMQ Authentication Protocol, RFC 27) handler thread: admits a CURVE
 * client only if its public key is in the site registry, and names it by its site id (the
 * "User-Id" of every message it sends afterwards). Everything else is refused with 400; a
 * registered key over its handshake budget (MOEH_ZAP_HS_BURST) is told to try later (500).
 *
 * The handler never stops on a failure while it is running: a request it cannot read is
 * dropped, a reply it cannot send is logged, and if that leaves its REP socket in the middle
 * of a reply the socket is replaced by a fresh one on the same endpoint. It ends when it is
 * destroyed or the ZeroMQ context terminates. */
#include "moeh_keys.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01" /* RFC 27 */

struct moeh_zap {
    void *ctx, *sock; /* sock: NULL while a replacement could not be opened */
    pthread_t thread;
    pthread_mutex_t lock; /* guards reg */
    moeh_registry_t reg;
    atomic_int stop;
    atomic_uint_fast64_t refused, deferred;
    /* handshake budgets per site key (the handler thread's alone) */
    struct hs_budget {
        char site[65];
        double tokens;
        int64_t at;
    } * hs;
    size_t n_hs, cap_hs;
    int64_t deferred_logged; /* when "try later" was last logged; unlogged: since then */
    uint64_t deferred_unlogged;
};

/* 1 if site may complete one more handshake now (and takes it), 0 if it is over its budget
 * (MOEH_ZAP_HS_BURST). A site the table cannot grow for is let through. */
static int hs_take(moeh_zap_t *z, const char *site)
{
    int64_t now = moeh_now_ms();
    struct hs_budget *b = NULL;
    for (size_t i = 0; i < z->n_hs && !b; i++)
        if (strcmp(z->hs[i].site, site) == 0) b = &z->hs[i];
    if (!b) {
        if (z->n_hs == z->cap_hs) {
            size_t cap = z->cap_hs ? 2 * z->cap_hs : 16;
            struct hs_budget *a = realloc(z->hs, cap * sizeof *a);
            if (!a) return 1;
            z->hs = a;
            z->cap_hs = cap;
        }
        b = &z->hs[z->n_hs++];
        snprintf(b->site, sizeof b->site, "%s", site);
        b->tokens = MOEH_ZAP_HS_BURST;
        b->at = now;
    }
    b->tokens += (double)(now - b->at) / 1000.0 * MOEH_ZAP_HS_PER_S;
    if (b->tokens > MOEH_ZAP_HS_BURST) b->tokens = MOEH_ZAP_HS_BURST;
    b->at = now;
    if (b->tokens < 1.0) return 0;
    b->tokens -= 1.0;
    return 1;
}

/* Opens the handler's REP socket on ZAP_ENDPOINT: 0 or -errno. */
static int open_socket(void *ctx, void **out)
{
    int linger = 0, rc = 0;
    void *sock = zmq_socket(ctx, ZMQ_REP);
    if (!sock) return -zmq_errno();
    if (zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(sock, ZAP_ENDPOINT) != 0) {
        rc = -zmq_errno();
        MOEH_ASSERT(zmq_close(sock) == 0);
        return rc;
    }
    *out = sock;
    return 0;
}

/* One part of a reply, sent again if a signal interrupted it: 0 or -errno. */
static int send_part(void *sock, const void *data, size_t len, int flags)
{
    while (zmq_send(sock, data, len, flags) < 0)
        if (zmq_errno() != EINTR) return -zmq_errno();
    return 0;
}

/* Sends the six parts of a reply; stops at the first part that cannot be sent. 0 or -errno. */
static int send_reply(void *sock, const void *req_id, size_t id_len, const char *status,
                      const char *text, const char *user)
{
    int rc = send_part(sock, "1.0", 3, ZMQ_SNDMORE);
    if (!rc) rc = send_part(sock, req_id, id_len, ZMQ_SNDMORE);
    if (!rc) rc = send_part(sock, status, strlen(status), ZMQ_SNDMORE);
    if (!rc) rc = send_part(sock, text, strlen(text), ZMQ_SNDMORE);
    if (!rc) rc = send_part(sock, user, strlen(user), ZMQ_SNDMORE);
    if (!rc) rc = send_part(sock, "", 0, 0);
    return rc;
}

/* Handles one request: version, request id, domain, address, identity, mechanism, creds...
 * Every request received is answered, a malformed one with 400 (a REP socket takes no new
 * request before it has replied). 0, or -errno if the reply could not be sent (the socket
 * may then be mid-reply). */
static int handle_request(moeh_zap_t *z)
{
    zmq_msg_t f[7];
    size_t n = 0;
    int more = 1, rc = 0;
    const char *status = "400", *text = "", *user = "";
    while (more) {
        zmq_msg_t tmp, *p = n < 7 ? &f[n] : &tmp;
        MOEH_ASSERT(zmq_msg_init(p) == 0); /* cannot fail: no allocation */
        if (zmq_msg_recv(p, z->sock, 0) < 0) {
            MOEH_ASSERT(zmq_msg_close(p) == 0);
            break;
        }
        more = zmq_msg_more(p);
        if (p == &tmp)
            MOEH_ASSERT(zmq_msg_close(p) == 0);
        else
            n++;
    }
    if (n == 0) return 0; /* nothing received: the socket still waits for a request */
    if (n < 6) {
        MOEH_WARN("ZAP: refused a malformed request (%zu frames)", n);
        text = "malformed request";
        if (n >= 2)
            rc = send_reply(z->sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), status, text, user);
        else
            rc = send_reply(z->sock, "", 0, status, text, user);
        if (rc) MOEH_WARN("ZAP: cannot answer a malformed request: %s", zmq_strerror(-rc));
        goto out;
    }
    char addr[64] = "?";
    size_t al = zmq_msg_size(&f[3]) < sizeof addr - 1 ? zmq_msg_size(&f[3]) : sizeof addr - 1;
    memcpy(addr, zmq_msg_data(&f[3]), al);
    addr[al] = '\0';
    int is_curve = zmq_msg_size(&f[5]) == 5 && memcmp(zmq_msg_data(&f[5]), "CURVE", 5) == 0;
    char site[65];
    if (!is_curve || n < 7 || zmq_msg_size(&f[6]) != 32) {
        atomic_fetch_add(&z->refused, 1);
        MOEH_WARN("refused a connection from %s: not a CURVE client", addr);
        text = "CURVE required";
    } else if (moeh_zap_lookup(z, zmq_msg_data(&f[6]), site) != 0) {
        char z85[41] = "?";
        if (!zmq_z85_encode(z85, zmq_msg_data(&f[6]), 32)) snprintf(z85, sizeof z85, "?");
        atomic_fetch_add(&z->refused, 1);
        MOEH_WARN("refused a connection from %s: public key %.8s... is not in the site registry",
                  addr, z85);
        text = "unknown key";
    } else if (!hs_take(z, site)) {
        atomic_fetch_add(&z->deferred, 1);
        int64_t now = moeh_now_ms();
        if (now - z->deferred_logged >= 1000) {
            MOEH_WARN("site %s (from %s): more than %d connections at once or %.0f a second: "
                      "told to try later%s",
                      site, addr, MOEH_ZAP_HS_BURST, MOEH_ZAP_HS_PER_S,
                      z->deferred_unlogged ? " (and others since the last such line)" : "");
            z->deferred_logged = now;
            z->deferred_unlogged = 0;
        } else {
            z->deferred_unlogged++;
        }
        status = "500", text = "too many connections of this key: try later";
    } else {
        MOEH_DEBUG("admitted site %s from %s", site, addr);
        status = "200", text = "OK", user = site;
    }
    if ((rc = send_reply(z->sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), status, text, user)) !=
        0)
        MOEH_WARN("ZAP: cannot answer the connection from %s (%s %s): %s", addr, status, text,
                  zmq_strerror(-rc));
out:
    for (size_t i = 0; i < n; i++)
        MOEH_ASSERT(zmq_msg_close(&f[i]) == 0);
    return rc;
}

/* After a reply failed part-way, the REP socket expects the rest of that reply and would
 * refuse every request: it is replaced by a fresh socket on the same endpoint. 0 or -errno
 * (z->sock is then the old socket, or NULL if it was closed). */
static int reopen_socket(moeh_zap_t *z)
{
    if (z->sock) {
        if (zmq_unbind(z->sock, ZAP_ENDPOINT) != 0 && zmq_errno() != ENOENT) return -zmq_errno();
        MOEH_ASSERT(zmq_close(z->sock) == 0);
        z->sock = NULL;
    }
    return open_socket(z->ctx, &z->sock);
}

static void *zap_main(void *arg)
{
    moeh_zap_t *z = arg;
    int broken = 0, logged = 0; /* broken: a reply failed part-way, the socket is replaced */
    while (!atomic_load(&z->stop)) {
        if (broken) {
            int rc = reopen_socket(z);
            if (rc == -ETERM) break; /* the context is going away */
            if (rc) {
                if (!logged++)
                    MOEH_ERROR("ZAP: cannot replace the handler's socket (trying again): %s",
                               zmq_strerror(-rc));
                if (zmq_poll(NULL, 0, 100) < 0 && zmq_errno() == ETERM) break;
                continue;
            }
            MOEH_WARN("ZAP: the handler's socket was replaced after a failed reply");
            broken = logged = 0;
        }
        zmq_pollitem_t it = {.socket = z->sock, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&it, 1, 100);
        if (rc < 0) {
            int e = zmq_errno();
            if (e == ETERM) break;
            if (e != EINTR) MOEH_WARN("ZAP: poll failed: %s", zmq_strerror(e));
            continue;
        }
        if (rc > 0 && (rc = handle_request(z)) != 0) {
            if (rc == -ETERM) break;
            broken = 1;
        }
    }
    return NULL;
}

int moeh_zap_start(void *ctx, moeh_registry_t *reg, moeh_zap_t **out)
{
    moeh_zap_t *z = calloc(1, sizeof *z);
    if (!z) return -ENOMEM;
    int rc = pthread_mutex_init(&z->lock, NULL);
    if (rc != 0) {
        free(z);
        return -rc;
    }
    z->ctx = ctx;
    if ((rc = open_socket(ctx, &z->sock)) != 0) goto fail;
    z->reg = *reg;
    memset(reg, 0, sizeof *reg);
    if (pthread_create(&z->thread, NULL, zap_main, z) != 0) {
        *reg = z->reg; /* give it back */
        memset(&z->reg, 0, sizeof z->reg);
        rc = -EAGAIN;
        goto fail;
    }
    *out = z;
    return 0;
fail:
    if (z->sock) MOEH_ASSERT(zmq_close(z->sock) == 0);
    pthread_mutex_destroy(&z->lock);
    free(z);
    return rc;
}

void moeh_zap_replace_registry(moeh_zap_t *z, moeh_registry_t *reg)
{
    pthread_mutex_lock(&z->lock);
    moeh_registry_t old = z->reg;
    z->reg = *reg;
    pthread_mutex_unlock(&z->lock);
    memset(reg, 0, sizeof *reg);
    moeh_registry_free(&old);
}

int moeh_zap_lookup(moeh_zap_t *z, const uint8_t key[32], char *out)
{
    pthread_mutex_lock(&z->lock);
    const char *id = moeh_registry_lookup(&z->reg, key);
    if (id) snprintf(out, 65, "%s", id);
    pthread_mutex_unlock(&z->lock);
    return id ? 0 : -ENOENT;
}

int moeh_zap_has_site(moeh_zap_t *z, const char *site_id)
{
    int found = 0;
    pthread_mutex_lock(&z->lock);
    for (size_t i = 0; i < z->reg.n && !found; i++)
        found = strcmp(z->reg.entries[i].site_id, site_id) == 0;
    pthread_mutex_unlock(&z->lock);
    return found;
}

int moeh_zap_site_limits(moeh_zap_t *z, const char *site_id, uint64_t *max_train,
                         uint64_t *max_test)
{
    uint64_t max_val; /* moeh_zap_site_val_limit asks for it */
    pthread_mutex_lock(&z->lock);
    int rc = moeh_registry_limits(&z->reg, site_id, max_train, max_test, &max_val);
    pthread_mutex_unlock(&z->lock);
    return rc;
}

uint64_t moeh_zap_site_val_limit(moeh_zap_t *z, const char *site_id)
{
    uint64_t mt, me, mv;
    pthread_mutex_lock(&z->lock);
    if (moeh_registry_limits(&z->reg, site_id, &mt, &me, &mv) != 0) mv = 0;
    pthread_mutex_unlock(&z->lock);
    return mv;
}

size_t moeh_zap_n_sites(moeh_zap_t *z)
{
    pthread_mutex_lock(&z->lock);
    size_t n = z->reg.n;
    pthread_mutex_unlock(&z->lock);
    return n;
}

uint64_t moeh_zap_refused(moeh_zap_t *z)
{
    return atomic_load(&z->refused);
}

uint64_t moeh_zap_deferred(moeh_zap_t *z)
{
    return atomic_load(&z->deferred);
}

void moeh_zap_destroy(moeh_zap_t **self_p)
{
    if (!self_p || !*self_p) return;
    moeh_zap_t *z = *self_p;
    atomic_store(&z->stop, 1);
    MOEH_ASSERT(pthread_join(z->thread, NULL) == 0);
    if (z->sock) MOEH_ASSERT(zmq_close(z->sock) == 0);
    moeh_registry_free(&z->reg);
    pthread_mutex_destroy(&z->lock);
    free(z->hs);
    free(z);
    *self_p = NULL;
}
