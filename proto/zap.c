/* zap.c - the ZAP (ZeroMQ Authentication Protocol, RFC 27) handler thread: admits a CURVE
 * client only if its public key is in the site registry, and names it by its site id (the
 * "User-Id" of every message it sends afterwards). Everything else is refused with 400. */
#include "moeh_keys.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <zmq.h>

struct moeh_zap {
    void *sock;
    pthread_t thread;
    pthread_mutex_t lock; /* guards reg */
    moeh_registry_t reg;
    atomic_int stop;
    atomic_uint_fast64_t refused;
};

static void send_reply(void *sock, const zmq_msg_t *req_id, const char *status, const char *text,
                       const char *user)
{
    zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(sock, zmq_msg_data((zmq_msg_t *)req_id), zmq_msg_size((zmq_msg_t *)req_id),
             ZMQ_SNDMORE);
    zmq_send(sock, status, strlen(status), ZMQ_SNDMORE);
    zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(sock, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(sock, "", 0, 0);
}

/* Handles one request: version, request id, domain, address, identity, mechanism, creds... */
static void handle_request(moeh_zap_t *z)
{
    zmq_msg_t f[7];
    size_t n = 0;
    int more = 1;
    while (more) {
        zmq_msg_t tmp, *p = n < 7 ? &f[n] : &tmp;
        zmq_msg_init(p);
        if (zmq_msg_recv(p, z->sock, 0) < 0) {
            zmq_msg_close(p);
            break;
        }
        more = zmq_msg_more(p);
        if (p == &tmp)
            zmq_msg_close(p);
        else
            n++;
    }
    if (n < 6) /* not even a well-formed request: nothing to reply to */
        goto out;
    char addr[64] = "?";
    size_t al = zmq_msg_size(&f[3]) < sizeof addr - 1 ? zmq_msg_size(&f[3]) : sizeof addr - 1;
    memcpy(addr, zmq_msg_data(&f[3]), al);
    addr[al] = '\0';
    int is_curve = zmq_msg_size(&f[5]) == 5 && memcmp(zmq_msg_data(&f[5]), "CURVE", 5) == 0;
    if (!is_curve || n < 7 || zmq_msg_size(&f[6]) != 32) {
        atomic_fetch_add(&z->refused, 1);
        MOEH_WARN("refused a connection from %s: not a CURVE client", addr);
        send_reply(z->sock, &f[1], "400", "CURVE required", "");
        goto out;
    }
    char site[65];
    if (moeh_zap_lookup(z, zmq_msg_data(&f[6]), site) != 0) {
        char z85[41];
        zmq_z85_encode(z85, zmq_msg_data(&f[6]), 32);
        atomic_fetch_add(&z->refused, 1);
        MOEH_WARN("refused a connection from %s: public key %.8s... is not in the site registry",
                  addr, z85);
        send_reply(z->sock, &f[1], "400", "unknown key", "");
        goto out;
    }
    MOEH_DEBUG("admitted site %s from %s", site, addr);
    send_reply(z->sock, &f[1], "200", "OK", site);
out:
    for (size_t i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
}

static void *zap_main(void *arg)
{
    moeh_zap_t *z = arg;
    while (!atomic_load(&z->stop)) {
        zmq_pollitem_t it = {.socket = z->sock, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&it, 1, 100);
        if (rc < 0) {
            if (zmq_errno() == ETERM) break;
            continue;
        }
        if (rc > 0) handle_request(z);
    }
    return NULL;
}

int moeh_zap_start(void *ctx, moeh_registry_t *reg, moeh_zap_t **out)
{
    moeh_zap_t *z = calloc(1, sizeof *z);
    if (!z) return -ENOMEM;
    int rc = 0;
    pthread_mutex_init(&z->lock, NULL);
    z->sock = zmq_socket(ctx, ZMQ_REP);
    int linger = 0;
    if (!z->sock || zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(z->sock, "inproc://zeromq.zap.01") != 0) {
        rc = -zmq_errno();
        goto fail;
    }
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
    if (z->sock) zmq_close(z->sock);
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

void moeh_zap_destroy(moeh_zap_t **self_p)
{
    if (!self_p || !*self_p) return;
    moeh_zap_t *z = *self_p;
    atomic_store(&z->stop, 1);
    pthread_join(z->thread, NULL);
    zmq_close(z->sock);
    moeh_registry_free(&z->reg);
    pthread_mutex_destroy(&z->lock);
    free(z);
    *self_p = NULL;
}
