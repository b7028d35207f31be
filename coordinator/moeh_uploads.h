/* moeh_uploads.h - the granted-uploads scheduler of a TRAIN phase (--upload-slots G > 0;
 * docs/architecture.md).
 *
 * A site whose update is ready announces it (UploadReady) instead of sending it; at most G sites
 * hold a grant at a time, given first come first served, and the next one is granted when an
 * upload was read, the granted site is gone or its grant expired (unused for timeout_ms). An
 * upload without a grant is refused. So the coordinator buffers at most G updates whatever the
 * number of sites. Sites are named by their index in the caller's site table; the scheduler
 * owns only the upload state of each. The caller sends the grants. Not thread-safe. */
#ifndef MOEH_UPLOADS_H
#define MOEH_UPLOADS_H

#include <stddef.h>
#include <stdint.h>

#define MOEH_UPLOADS_WUR __attribute__((warn_unused_result))

typedef enum {
    MOEH_UP_NONE,    /* nothing announced (or its upload was read) */
    MOEH_UP_READY,   /* announced, waiting for a slot */
    MOEH_UP_GRANTED, /* holds a slot until its upload arrives, it is gone or the grant expires */
    MOEH_UP_EXPIRED  /* did not use its grant in time: its upload is refused this phase */
} moeh_upload_state_t;

typedef struct moeh_uploads moeh_uploads_t;

/* A scheduler of `slots` grants (0: uploads are not granted, every take succeeds) for sites
 * 0..max_sites-1. 0, -EINVAL or -ENOMEM; caller owns *out: moeh_uploads_destroy(&u). */
int moeh_uploads_create(uint32_t slots, uint32_t timeout_ms, size_t max_sites,
                        moeh_uploads_t **out) MOEH_UPLOADS_WUR;
/* NULL-safe; sets *self_p = NULL. */
void moeh_uploads_destroy(moeh_uploads_t **self_p);
/* A new phase: every site back to NONE, no slot in use, counters cleared. */
void moeh_uploads_reset(moeh_uploads_t *u);
uint32_t moeh_uploads_slots(const moeh_uploads_t *u);
moeh_upload_state_t moeh_uploads_state(const moeh_uploads_t *u, size_t site);
/* Site announced its upload (state NONE -> READY; the caller checked the state). */
void moeh_uploads_ready(moeh_uploads_t *u, size_t site);
/* If a slot is free and a READY site for which alive(ctx, site) is non-zero waits, grants the
 * earliest announced one at time now and returns its index; else -1. The caller sends the
 * grant and calls again until -1. */
long moeh_uploads_grant_next(moeh_uploads_t *u, int64_t now, int (*alive)(void *ctx, size_t site),
                             void *ctx);
/* Frees the slot site holds, or takes it out of the queue (state NONE). */
void moeh_uploads_release(moeh_uploads_t *u, size_t site);
/* A new connection of site: its upload is announced again, unless its grant expired this phase
 * (it stays expired). 1 if it held a slot (now released), else 0. */
int moeh_uploads_rejoin(moeh_uploads_t *u, size_t site);
/* A chunk of site's granted upload arrived at now: its grant runs timeout_ms from now. */
void moeh_uploads_touch(moeh_uploads_t *u, size_t site, int64_t now);
/* One grant unused for longer than timeout_ms at time now: marks it EXPIRED, frees its slot and
 * returns its site; -1 if none. Call until -1. */
long moeh_uploads_expire_next(moeh_uploads_t *u, int64_t now);
/* An upload from site arrives: 0 if it may be taken (a grant, now used up and its slot freed,
 * or uploads are not granted), -EACCES if site holds no grant. */
int moeh_uploads_take(moeh_uploads_t *u, size_t site) MOEH_UPLOADS_WUR;
/* Slots in use now, the most in use at once and the grants expired, this phase. */
void moeh_uploads_counts(const moeh_uploads_t *u, uint32_t *in_use, uint32_t *max_in_use,
                         uint32_t *expired);

#endif
