/* uploads.c - the granted-uploads scheduler (see moeh_uploads.h). */
#include "moeh_uploads.h"

#include "moeh_common.h"

#include <errno.h>
#include <stdlib.h>

typedef struct {
    moeh_upload_state_t state;
    uint64_t ready_seq; /* order of its UploadReady (grants go first come first served) */
    int64_t granted_at;
} upload_t;

struct moeh_uploads {
    uint32_t slots, timeout_ms;
    uint32_t granted, max_granted, expired; /* slots in use, most at once, grants expired */
    uint64_t seq;
    size_t cap, hi; /* sites 0..hi-1 have ever been touched */
    upload_t *site;
};

int moeh_uploads_create(uint32_t slots, uint32_t timeout_ms, size_t max_sites, moeh_uploads_t **out)
{
    *out = NULL;
    if (max_sites == 0) return -EINVAL;
    moeh_uploads_t *u = calloc(1, sizeof *u);
    if (!u || !(u->site = calloc(max_sites, sizeof *u->site))) {
        free(u);
        return -ENOMEM;
    }
    u->slots = slots;
    u->timeout_ms = timeout_ms;
    u->cap = max_sites;
    *out = u;
    return 0;
}

void moeh_uploads_destroy(moeh_uploads_t **self_p)
{
    if (!self_p || !*self_p) return;
    free((*self_p)->site);
    free(*self_p);
    *self_p = NULL;
}

void moeh_uploads_reset(moeh_uploads_t *u)
{
    for (size_t i = 0; i < u->hi; i++)
        u->site[i].state = MOEH_UP_NONE;
    u->granted = u->max_granted = u->expired = 0;
}

uint32_t moeh_uploads_slots(const moeh_uploads_t *u)
{
    return u->slots;
}

moeh_upload_state_t moeh_uploads_state(const moeh_uploads_t *u, size_t site)
{
    MOEH_ASSERT(site < u->cap);
    return site < u->hi ? u->site[site].state : MOEH_UP_NONE;
}

void moeh_uploads_ready(moeh_uploads_t *u, size_t site)
{
    MOEH_ASSERT(site < u->cap);
    if (site >= u->hi) u->hi = site + 1;
    u->site[site].state = MOEH_UP_READY;
    u->site[site].ready_seq = ++u->seq;
}

long moeh_uploads_grant_next(moeh_uploads_t *u, int64_t now, int (*alive)(void *ctx, size_t site),
                             void *ctx)
{
    if (u->granted >= u->slots) return -1;
    long next = -1;
    for (size_t i = 0; i < u->hi; i++) {
        const upload_t *s = &u->site[i];
        if (s->state == MOEH_UP_READY && alive(ctx, i) &&
            (next < 0 || s->ready_seq < u->site[next].ready_seq))
            next = (long)i;
    }
    if (next < 0) return -1;
    u->site[next].state = MOEH_UP_GRANTED;
    u->site[next].granted_at = now;
    u->granted++;
    if (u->granted > u->max_granted) u->max_granted = u->granted;
    return next;
}

void moeh_uploads_release(moeh_uploads_t *u, size_t site)
{
    if (site >= u->hi) return;
    if (u->site[site].state == MOEH_UP_GRANTED) {
        MOEH_ASSERT(u->granted > 0);
        u->granted--;
    }
    u->site[site].state = MOEH_UP_NONE;
}

int moeh_uploads_rejoin(moeh_uploads_t *u, size_t site)
{
    moeh_upload_state_t was = moeh_uploads_state(u, site);
    moeh_uploads_release(u, site);
    if (was == MOEH_UP_EXPIRED) u->site[site].state = MOEH_UP_EXPIRED;
    return was == MOEH_UP_GRANTED;
}

void moeh_uploads_touch(moeh_uploads_t *u, size_t site, int64_t now)
{
    if (moeh_uploads_state(u, site) == MOEH_UP_GRANTED) u->site[site].granted_at = now;
}

long moeh_uploads_expire_next(moeh_uploads_t *u, int64_t now)
{
    if (!u->granted) return -1;
    for (size_t i = 0; i < u->hi; i++) {
        upload_t *s = &u->site[i];
        if (s->state != MOEH_UP_GRANTED || now - s->granted_at <= (int64_t)u->timeout_ms) continue;
        moeh_uploads_release(u, i);
        s->state = MOEH_UP_EXPIRED;
        u->expired++;
        return (long)i;
    }
    return -1;
}

int moeh_uploads_take(moeh_uploads_t *u, size_t site)
{
    if (!u->slots) return 0;
    if (moeh_uploads_state(u, site) != MOEH_UP_GRANTED) return -EACCES;
    moeh_uploads_release(u, site);
    return 0;
}

void moeh_uploads_counts(const moeh_uploads_t *u, uint32_t *in_use, uint32_t *max_in_use,
                         uint32_t *expired)
{
    *in_use = u->granted;
    *max_in_use = u->max_granted;
    *expired = u->expired;
}
