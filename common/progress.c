/* progress.c - meters and a status line on stderr (moeh_progress.h).
 *
 * The line drawn is process state: its text (to draw it again after a log line cleared it),
 * whether it is on the screen now, and when it was last drawn, under one mutex. log.c takes
 * that mutex around every line it writes to stderr (moeh_progress_log_begin/end), so that a
 * line drawn by one thread never lands in the middle of another thread's log line.
 *
 * The rate of a meter is smoothed exponentially over samples at least 250 ms apart, with a
 * time constant of 5 s: it follows a change of speed (a table whose rows grow longer) within
 * seconds and does not jump with each block read. The ETA is the amount left over that rate. */
#include "moeh_progress.h"
#include "moeh_common.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define DRAW_MS 100     /* at most 10 redraws a second */
#define SAMPLE_MS 250   /* rate samples at least this far apart */
#define TAU_MS 5000.0   /* time constant of the smoothed rate */
#define ETA_MIN_MS 1000 /* no ETA before a second of data */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_mode = -1;   /* -1 undecided, 0 plain, 1 terminal */
static int g_forced = -1; /* moeh_progress_testing */
static int64_t (*g_clock)(void);
static char g_text[512]; /* the line drawn (or to draw again) */
static int g_shown;      /* it is on the screen now */
static int64_t g_drawn_at;
static unsigned g_cols; /* terminal width (0: unknown) */

static int64_t now_ms(void)
{
    return g_clock ? g_clock() : moeh_now_ms();
}

/* The mode from the process (or the test's choice); *cols: the terminal's width, 0 unknown. */
static int decide(int forced, unsigned *cols)
{
    *cols = 0;
    if (forced >= 0) return forced;
    const char *term = getenv("TERM");
    int tty = isatty(2) && !moeh_log_writes_file() && !moeh_log_to_journal() &&
              !(term && !strcmp(term, "dumb"));
    struct winsize ws;
    if (tty && ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) *cols = ws.ws_col;
    return tty;
}

/* Decides the mode again (not under g_mu: log.c's lock is taken before ours, in log_begin). */
static int redecide(void)
{
    pthread_mutex_lock(&g_mu);
    int forced = g_forced;
    pthread_mutex_unlock(&g_mu);
    unsigned cols;
    int m = decide(forced, &cols);
    pthread_mutex_lock(&g_mu);
    g_mode = m, g_cols = cols;
    pthread_mutex_unlock(&g_mu);
    return m;
}

int moeh_progress_on_terminal(void)
{
    pthread_mutex_lock(&g_mu);
    int m = g_mode;
    pthread_mutex_unlock(&g_mu);
    return m >= 0 ? m : redecide();
}

void moeh_progress_testing(int terminal, int64_t (*clock_ms)(void))
{
    pthread_mutex_lock(&g_mu);
    g_forced = terminal;
    g_mode = -1;
    g_clock = clock_ms;
    g_text[0] = '\0';
    g_shown = 0;
    g_drawn_at = 0;
    pthread_mutex_unlock(&g_mu);
}

/* ---- the line (g_mu held) ------------------------------------------------------------------ */

static void clear_locked(void)
{
    if (!g_shown) return;
    fputs("\r\033[K", stderr);
    fflush(stderr);
    g_shown = 0;
}

/* Draws text (truncated to the terminal's width, so that it never wraps). */
static void draw_locked(const char *text, int64_t now)
{
    if (text != g_text) snprintf(g_text, sizeof g_text, "%s", text);
    size_t n = strlen(g_text);
    if (g_cols > 1 && n > g_cols - 1) n = g_cols - 1;
    fprintf(stderr, "\r%.*s\033[K", (int)n, g_text);
    fflush(stderr);
    g_shown = 1;
    g_drawn_at = now;
}

void moeh_progress_log_begin(void)
{
    pthread_mutex_lock(&g_mu);
    clear_locked(); /* the owner draws it again at its next update */
}

void moeh_progress_log_end(void)
{
    pthread_mutex_unlock(&g_mu);
}

void moeh_progress_line(const char *fmt, ...)
{
    if (!moeh_progress_on_terminal()) return;
    char text[sizeof g_text];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&g_mu);
    int64_t now = now_ms();
    int same = g_shown && !strcmp(text, g_text);
    if (!same && (!g_shown || now - g_drawn_at >= DRAW_MS))
        draw_locked(text, now);
    else if (!same) /* too soon: keep the text, the next call draws it */
        snprintf(g_text, sizeof g_text, "%s", text);
    pthread_mutex_unlock(&g_mu);
}

void moeh_progress_line_clear(void)
{
    pthread_mutex_lock(&g_mu);
    clear_locked();
    g_text[0] = '\0';
    pthread_mutex_unlock(&g_mu);
}

/* ---- formatting ------------------------------------------------------------------------------ */

static int is_bytes(const char *unit)
{
    return !unit || !strcmp(unit, MOEH_PROGRESS_BYTES);
}

/* t seconds, 60 or more, after prefix: "4m05s" under an hour, else "1h02m". */
static void fmt_minutes(char *out, size_t cap, const char *prefix, unsigned long t)
{
    if (t < 3600)
        snprintf(out, cap, "%s%lum%02lus", prefix, t / 60, t % 60);
    else
        snprintf(out, cap, "%s%luh%02lum", prefix, t / 3600, t / 60 % 60);
}

char *moeh_progress_fmt_eta(char *out, size_t cap, double s)
{
    if (!(s >= 0)) /* negative or NaN */
        snprintf(out, cap, "ETA ?");
    else if (s >= 99.5 * 3600)
        snprintf(out, cap, "ETA >99h");
    else {
        unsigned long t = (unsigned long)(s + 0.5);
        if (t < 60)
            snprintf(out, cap, "ETA %lus", t);
        else
            fmt_minutes(out, cap, "ETA ", t);
    }
    return out;
}

char *moeh_progress_fmt_elapsed(char *out, size_t cap, double s)
{
    if (!(s >= 0)) s = 0;
    unsigned long t = (unsigned long)(s + 0.5);
    if (s < 9.995)
        snprintf(out, cap, "%.2f s", s);
    else if (s < 60)
        snprintf(out, cap, "%.1f s", s);
    else
        fmt_minutes(out, cap, "", t);
    return out;
}

/* A count as "1234", "12.3 k", "4.56 M" (a space before the unit is the caller's). */
static void fmt_count(char *out, size_t cap, double v)
{
    if (v < 9999.5)
        snprintf(out, cap, "%.0f", v);
    else if (v < 999.95e3)
        snprintf(out, cap, "%.1f k", v / 1e3);
    else if (v < 999.995e6)
        snprintf(out, cap, "%.2f M", v / 1e6);
    else
        snprintf(out, cap, "%.2f G", v / 1e9);
}

/* An amount of unit followed by suffix ("" or "/s"). */
static char *fmt_amount(char *out, size_t cap, double v, const char *unit, const char *suffix)
{
    if (is_bytes(unit)) {
        if (v < 1048576.0)
            snprintf(out, cap, "%.0f KiB%s", v / 1024.0, suffix);
        else
            snprintf(out, cap, "%.1f MiB%s", v / 1048576.0, suffix);
    } else {
        char n[32];
        fmt_count(n, sizeof n, v);
        snprintf(out, cap, "%s %s%s", n, unit, suffix);
    }
    return out;
}

char *moeh_progress_fmt_amount(char *out, size_t cap, double v, const char *unit)
{
    return fmt_amount(out, cap, v, unit, "");
}

char *moeh_progress_fmt_rate(char *out, size_t cap, double per_s, const char *unit)
{
    return fmt_amount(out, cap, per_s >= 0 ? per_s : 0, unit, "/s");
}

/* ---- meters ---------------------------------------------------------------------------------- */

void moeh_progress_begin(moeh_progress_t *p, const char *label, uint64_t total, const char *unit)
{
    memset(p, 0, sizeof *p);
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    snprintf(p->unit, sizeof p->unit, "%s", unit ? unit : MOEH_PROGRESS_BYTES);
    p->total = total;
    redecide(); /* again: --log-file may have been opened since */
    pthread_mutex_lock(&g_mu);
    p->t0 = p->t_sample = now_ms();
    pthread_mutex_unlock(&g_mu);
    p->active = 1;
}

double moeh_progress_eta(const moeh_progress_t *p)
{
    if (!p->active || p->total == 0 || p->done == 0 || p->rate <= 0 ||
        p->t_sample - p->t0 < ETA_MIN_MS)
        return -1;
    return (double)(p->total - p->done) / p->rate;
}

/* The meter's line: "label:  42% 118.2/281.0 MiB, 55.1 MiB/s, ETA 3s". */
static void meter_text(const moeh_progress_t *p, int64_t now, char *out, size_t cap)
{
    char amt[112], tot[48], rate[48], eta[24];
    double elapsed = (double)(now - p->t0) / 1000.0;
    double r = p->rate > 0 ? p->rate : elapsed > 0 ? (double)p->done / elapsed : 0;
    if (r > 0 || now - p->t0 >= 10)
        moeh_progress_fmt_rate(rate, sizeof rate, r, p->unit);
    else /* no time has passed: no rate yet */
        snprintf(rate, sizeof rate, "? %s/s", is_bytes(p->unit) ? "MiB" : p->unit);
    moeh_progress_fmt_eta(eta, sizeof eta, moeh_progress_eta(p));
    if (p->total) {
        moeh_progress_fmt_amount(tot, sizeof tot, (double)p->total, p->unit);
        if (is_bytes(p->unit) && p->total < 1048576) /* in the total's unit */
            snprintf(amt, sizeof amt, "%.0f/%s", (double)p->done / 1024.0, tot);
        else if (is_bytes(p->unit))
            snprintf(amt, sizeof amt, "%.1f/%s", (double)p->done / 1048576.0, tot);
        else
            snprintf(amt, sizeof amt, "%llu/%s", (unsigned long long)p->done, tot);
        snprintf(out, cap, "%s: %3.0f%% %s, %s, %s", p->label,
                 floor(100.0 * (double)p->done / (double)p->total), amt, rate, eta);
    } else {
        moeh_progress_fmt_amount(amt, sizeof amt, (double)p->done, p->unit);
        snprintf(out, cap, "%s: %s, %s", p->label, amt, rate);
    }
}

void moeh_progress_update(moeh_progress_t *p, uint64_t done)
{
    if (!p->active) return;
    if (p->total && done > p->total) done = p->total;
    if (done < p->done) done = p->done;
    p->done = done;
    int64_t now = now_ms();
    int64_t dt = now - p->t_sample;
    if (dt >= SAMPLE_MS) {
        double inst = (double)(done - p->done_sample) * 1000.0 / (double)dt;
        if (p->rate <= 0) /* the first estimate: the mean since the start */
            p->rate = (double)done * 1000.0 / (double)(now - p->t0);
        else
            p->rate += (1.0 - exp(-(double)dt / TAU_MS)) * (inst - p->rate);
        p->t_sample = now;
        p->done_sample = done;
    }
    pthread_mutex_lock(&g_mu);
    if (g_mode == 1 && (!g_shown || now - g_drawn_at >= DRAW_MS)) {
        char text[sizeof g_text];
        meter_text(p, now, text, sizeof text);
        draw_locked(text, now);
    }
    pthread_mutex_unlock(&g_mu);
}

void moeh_progress_cancel(moeh_progress_t *p)
{
    if (!p->active) return;
    p->active = 0;
    moeh_progress_line_clear();
}

void moeh_progress_end(moeh_progress_t *p, const char *note)
{
    if (!p->active) return;
    p->active = 0;
    pthread_mutex_lock(&g_mu);
    clear_locked();
    g_text[0] = '\0';
    int64_t now = now_ms();
    pthread_mutex_unlock(&g_mu);
    uint64_t amount = p->done ? p->done : p->total;
    double s = (double)(now - p->t0) / 1000.0;
    char amt[48], el[32], rate[48];
    moeh_progress_fmt_amount(amt, sizeof amt, (double)amount, p->unit);
    moeh_progress_fmt_elapsed(el, sizeof el, s);
    moeh_progress_fmt_rate(rate, sizeof rate, s > 0 ? (double)amount / s : 0, p->unit);
    if (s > 0)
        MOEH_INFO("%s: %s in %s (%s)%s%s", p->label, amt, el, rate, note ? "; " : "",
                  note ? note : "");
    else
        MOEH_INFO("%s: %s in %s%s%s", p->label, amt, el, note ? "; " : "", note ? note : "");
}
