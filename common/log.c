/* log.c - the process-wide log sink (configured once in main, before threads start).
 *
 * Where lines go: the --log-file (append; reopened at the next line after
 * moeh_log_request_reopen(), which a SIGHUP handler may call, so that logrotate can move the
 * file away), else stderr. Under systemd (JOURNAL_STREAM names our stderr) each line starts
 * with the syslog priority "<N>" that journald reads, and no time (journald adds its own).
 * Control characters in a message (which may quote a peer: a site id, a Bye reason) are
 * written as \xNN, so a line can neither forge another line nor send terminal escapes.
 * A progress line drawn on a terminal (moeh_progress.h) is cleared before a line goes to
 * stderr, under the progress module's lock, so that the two never share a line. */
#include "moeh_common.h"
#include "moeh_progress.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static moeh_log_level_t g_level = MOEH_LOG_INFO;
static moeh_log_fn g_fn;
static void *g_ud;
static char g_prefix[64] = "moeh";
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* the file and its reopening */
static FILE *g_file;
static char g_file_path[4096];
static volatile sig_atomic_t g_reopen;

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

/* NULL with *rc and err set on failure. */
static FILE *open_append(const char *path, int *rc, moeh_err_t *err)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        int e = errno;
        *rc = moeh_errf(err, -e, "--log-file %s: cannot open for appending: %s", path, strerror(e));
        return NULL;
    }
    FILE *f = fdopen(fd, "a");
    if (!f) {
        *rc = moeh_errf(err, -ENOMEM, "--log-file %s: out of memory", path);
        close(fd);
        return NULL;
    }
    setvbuf(f, NULL, _IOLBF, 0); /* every line reaches the file (tail -f, a crash) */
    return f;
}

int moeh_log_open_file(const char *path, moeh_err_t *err)
{
    if (strlen(path) >= sizeof g_file_path)
        return moeh_errf(err, -ENAMETOOLONG, "--log-file %s: path too long", path);
    int rc = 0;
    FILE *f = open_append(path, &rc, err);
    if (!f) return rc;
    pthread_mutex_lock(&g_mu);
    if (g_file) fclose(g_file);
    g_file = f;
    snprintf(g_file_path, sizeof g_file_path, "%s", path);
    pthread_mutex_unlock(&g_mu);
    return 0;
}

void moeh_log_close_file(void)
{
    pthread_mutex_lock(&g_mu);
    if (g_file) fclose(g_file);
    g_file = NULL;
    g_file_path[0] = '\0';
    pthread_mutex_unlock(&g_mu);
}

int moeh_log_writes_file(void)
{
    pthread_mutex_lock(&g_mu);
    int f = g_file != NULL;
    pthread_mutex_unlock(&g_mu);
    return f;
}

void moeh_log_request_reopen(void)
{
    g_reopen = 1;
}

/* JOURNAL_STREAM is "DEV:INODE" of the stream systemd connected to our stderr; only when
 * stderr still is that stream is the output read by journald (sd_journal_stream_fd(3)). */
int moeh_log_to_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(2, &st) != 0) return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

size_t moeh_log_sanitize(char *out, size_t cap, const char *in)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (!cap) return 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        if (*p >= 0x20 && *p != 0x7f) {
            if (o + 1 >= cap) break;
            out[o++] = (char)*p;
        } else {
            if (o + 4 >= cap) break;
            out[o++] = '\\', out[o++] = 'x', out[o++] = hex[*p >> 4], out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return o;
}

void moeh_log_emit(moeh_log_level_t lvl, const char *fmt, ...)
{
    char raw[1024], msg[4 * sizeof raw];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    moeh_log_sanitize(msg, sizeof msg, raw);
    if (g_fn) {
        g_fn(g_ud, lvl, msg);
        return;
    }
    static const char *tag[] = {"debug", "info", "warn", "error"};
    static const int prio[] = {7, 6, 4, 3}; /* syslog: debug, info, warning, err */
    pthread_mutex_lock(&g_mu);
    if (g_reopen && g_file) { /* after SIGHUP: logrotate moved the file; a new one */
        g_reopen = 0;
        moeh_err_t err = {0};
        int rc = 0;
        FILE *f = open_append(g_file_path, &rc, &err);
        if (f) {
            fclose(g_file);
            g_file = f;
        } else { /* keep writing to the old one and say so there */
            fprintf(g_file, "%s warn: log file not reopened: %s\n", g_prefix, err.msg);
        }
    }
    FILE *out = g_file ? g_file : stderr;
    if (out == stderr) moeh_progress_log_begin(); /* clears a progress line drawn there */
    if (!g_file && moeh_log_to_journal()) {
        fprintf(out, "<%d>%s %s: %s\n", prio[lvl], g_prefix, tag[lvl], msg);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        if (g_file) /* a file outlives the day: the date too */
            fprintf(out, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: %s\n", tm.tm_year + 1900,
                    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                    ts.tv_nsec / 1000000, g_prefix, tag[lvl], msg);
        else
            fprintf(out, "%02d:%02d:%02d.%03ld %s %s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
                    ts.tv_nsec / 1000000, g_prefix, tag[lvl], msg);
    }
    if (out == stderr) moeh_progress_log_end();
    pthread_mutex_unlock(&g_mu);
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
