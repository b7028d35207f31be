/* i64map.h - a small open-addressing hash map from int64 keys to uint32 values, private to
 * the dataset library (subject_id / hadm_id lookups during extraction). Keys must not be
 * INT64_MIN (the empty marker). Grows at 50% load. */
#ifndef MOEH_I64MAP_H
#define MOEH_I64MAP_H

#include "moeh_common.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    int64_t *keys;
    uint32_t *vals;
    size_t cap, n; /* cap is a power of two */
} moeh_i64map_t;

static inline size_t moeh_i64map_slot(const moeh_i64map_t *m, int64_t k)
{
    uint64_t h = (uint64_t)k * 0x9E3779B97F4A7C15ull;
    size_t i = (size_t)(h >> 17) & (m->cap - 1);
    while (m->keys[i] != INT64_MIN && m->keys[i] != k)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static inline void moeh_i64map_free(moeh_i64map_t *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = NULL, m->vals = NULL, m->cap = m->n = 0;
}

MOEH_WUR static inline int moeh_i64map_init(moeh_i64map_t *m, size_t expect)
{
    size_t cap = 64;
    while (cap < expect * 2)
        cap *= 2;
    m->keys = malloc(cap * sizeof *m->keys);
    m->vals = malloc(cap * sizeof *m->vals);
    m->cap = cap, m->n = 0;
    if (!m->keys || !m->vals) {
        moeh_i64map_free(m);
        return -ENOMEM;
    }
    for (size_t i = 0; i < cap; i++)
        m->keys[i] = INT64_MIN;
    return 0;
}

/* Inserts or overwrites. 0 or -ENOMEM. */
MOEH_WUR static inline int moeh_i64map_put(moeh_i64map_t *m, int64_t k, uint32_t v)
{
    if ((m->n + 1) * 2 > m->cap) {
        moeh_i64map_t g;
        if (moeh_i64map_init(&g, m->cap) != 0) return -ENOMEM;
        for (size_t i = 0; i < m->cap; i++)
            if (m->keys[i] != INT64_MIN) {
                size_t s = moeh_i64map_slot(&g, m->keys[i]);
                g.keys[s] = m->keys[i], g.vals[s] = m->vals[i], g.n++;
            }
        moeh_i64map_free(m);
        *m = g;
    }
    size_t s = moeh_i64map_slot(m, k);
    if (m->keys[s] == INT64_MIN) m->n++;
    m->keys[s] = k, m->vals[s] = v;
    return 0;
}

/* 1 and *v if present, else 0. */
static inline int moeh_i64map_get(const moeh_i64map_t *m, int64_t k, uint32_t *v)
{
    if (!m->cap) return 0;
    size_t s = moeh_i64map_slot(m, k);
    if (m->keys[s] == INT64_MIN) return 0;
    *v = m->vals[s];
    return 1;
}

#endif
