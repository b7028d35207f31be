/* log.c - the process-wide log sink (configured once in main, before threads start). */
#include "moeh_common.h"

#include <string.h>
#include <time.h>

static moeh_log_level_t g_level = MOEH_LOG_INFO;
static moeh_log_fn g_fn;
static void *g_ud;
static char g_prefix[64] = "moeh";

void moeh_log_configure(moeh_log_level_t min_level, const char *prefix, moeh_log_fn fn, void *ud)
{
    g_level = min_level;
    g_fn = fn;
    g_ud = ud;
    if (prefix) snprintf(g_prefix, sizeof g_prefix, "%s", prefix);
}

moeh_log_level_t moeh_log_level(void)
{
    return g_level;
}

int moeh_log_parse_level(const char *s, moeh_log_level_t *out)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (moeh_log_level_t)i;
            return 0;
        }
    return -EINVAL;
}

void moeh_log_emit(moeh_log_level_t lvl, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_fn) {
        g_fn(g_ud, lvl, msg);
        return;
    }
    static const char *tag[] = {"debug", "info", "warn", "error"};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%02d:%02d:%02d.%03ld %s %s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, g_prefix, tag[lvl], msg);
}

int64_t moeh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* xoshiro256** seeded through splitmix64 (Blackman & Vigna). */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void moeh_rng_seed(moeh_rng_t *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t moeh_rng_u64(moeh_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double moeh_rng_uniform(moeh_rng_t *r)
{
    return (double)(moeh_rng_u64(r) >> 11) * 0x1.0p-53;
}

double moeh_rng_normal(moeh_rng_t *r)
{
    /* Box-Muller; u1 in (0, 1] so log is finite. */
    double u1 = 1.0 - moeh_rng_uniform(r), u2 = moeh_rng_uniform(r);
    return __builtin_sqrt(-2.0 * __builtin_log(u1)) * __builtin_cos(6.283185307179586 * u2);
}
