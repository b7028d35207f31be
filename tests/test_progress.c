/* test_progress.c - the progress meter (common/progress.c): the formats of ETA, rate, amount and
 * elapsed time; off a terminal a step writes exactly one summary line and never '\r'; in
 * terminal mode (forced) lines are redrawn with '\r' and a percent, at most 10 a second, and a
 * log line is preceded by a line clear; the ETA waits for a second of data and then follows the
 * smoothed rate. The clock is a test clock: nothing here depends on the machine's speed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_common.h"
#include "moeh_progress.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int64_t g_now;
static int64_t test_clock(void)
{
    return g_now;
}

/* stderr goes to a temporary file while a test runs; capture_end returns what was written. */
static int g_saved = -1;
static FILE *g_tmp;

static void capture_begin(int terminal)
{
    fflush(stderr);
    g_tmp = tmpfile();
    assert_non_null(g_tmp);
    g_saved = dup(2);
    assert_true(g_saved >= 0);
    assert_true(dup2(fileno(g_tmp), 2) >= 0);
    g_now = 1000000;
    moeh_progress_testing(terminal, test_clock);
    moeh_log_configure(MOEH_LOG_INFO, "t", NULL, NULL);
}

static char *capture_end(void)
{
    fflush(stderr);
    assert_true(dup2(g_saved, 2) >= 0);
    close(g_saved);
    long n = ftell(g_tmp);
    assert_true(n >= 0);
    char *buf = calloc((size_t)n + 1, 1);
    assert_non_null(buf);
    rewind(g_tmp);
    assert_int_equal(fread(buf, 1, (size_t)n, g_tmp), (size_t)n);
    fclose(g_tmp);
    moeh_progress_testing(-1, NULL);
    return buf;
}

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static void test_formats(void **state)
{
    (void)state;
    char b[64];
    assert_string_equal(moeh_progress_fmt_eta(b, sizeof b, -1), "ETA ?");
    assert_string_equal(moeh_progress_fmt_eta(b, sizeof b, 0.0 / 0.0), "ETA ?");
    assert_string_equal(moeh_progress_fmt_eta(b, sizeof b, 0), "ETA 0s");
    assert_string_equal(moeh_progress_fmt_eta(b, sizeof b, 42.4), "ETA 42s");
    assert_string_equal(moeh_progress_fmt_eta(b, sizeof b, 65), "ETA 1m05s");
    assert_string_equal(moeh_progress_fmt_eta(b, sizeof b, 250), "ETA 4m10s");
    assert_string_equal(moeh_progress_fmt_eta(b, sizeof b, 7380), "ETA 2h03m");
    assert_string_equal(moeh_progress_fmt_eta(b, sizeof b, 1e7), "ETA >99h");
    assert_string_equal(moeh_progress_fmt_amount(b, sizeof b, 12.3 * 1048576, MOEH_PROGRESS_BYTES),
                        "12.3 MiB");
    assert_string_equal(moeh_progress_fmt_amount(b, sizeof b, 2048, MOEH_PROGRESS_BYTES), "2 KiB");
    assert_string_equal(moeh_progress_fmt_amount(b, sizeof b, 1234, "rows"), "1234 rows");
    assert_string_equal(moeh_progress_fmt_amount(b, sizeof b, 12345, "rows"), "12.3 k rows");
    assert_string_equal(moeh_progress_fmt_amount(b, sizeof b, 4.56e6, "rows"), "4.56 M rows");
    assert_string_equal(moeh_progress_fmt_rate(b, sizeof b, 5.9 * 1048576, MOEH_PROGRESS_BYTES),
                        "5.9 MiB/s");
    assert_string_equal(moeh_progress_fmt_rate(b, sizeof b, 2048, MOEH_PROGRESS_BYTES), "2 KiB/s");
    assert_string_equal(moeh_progress_fmt_rate(b, sizeof b, 300, "admissions"), "300 admissions/s");
    assert_string_equal(moeh_progress_fmt_elapsed(b, sizeof b, 0.42), "0.42 s");
    assert_string_equal(moeh_progress_fmt_elapsed(b, sizeof b, 12.34), "12.3 s");
    assert_string_equal(moeh_progress_fmt_elapsed(b, sizeof b, 245), "4m05s");
    assert_string_equal(moeh_progress_fmt_elapsed(b, sizeof b, 3720), "1h02m");
}

/* What stderr shows (on a terminal or not) of a step over 100 MiB at 10 MiB/s, an update every
 * 50 ms, with a log line halfway. The caller frees it. */
static char *run_step(int terminal)
{
    const uint64_t total = 100u << 20;
    moeh_progress_t p;
    capture_begin(terminal);
    moeh_progress_begin(&p, "hosp/labevents.csv.gz", total, MOEH_PROGRESS_BYTES);
    for (int i = 1; i <= 200; i++) {
        g_now += 50;
        moeh_progress_update(&p, (uint64_t)i * (total / 200));
        if (i == 100) MOEH_WARN("a line from elsewhere");
    }
    moeh_progress_end(&p, "1000 rows");
    return capture_end();
}

static void test_not_a_terminal_one_line(void **state)
{
    (void)state;
    char *out = run_step(0);
    assert_null(strchr(out, '\r'));
    assert_null(strstr(out, "\033["));
    assert_int_equal(count(out, "\n"), 2); /* the warning and the summary, nothing else */
    assert_int_equal(count(out, "hosp/labevents.csv.gz"), 1);
    assert_non_null(
        strstr(out, "hosp/labevents.csv.gz: 100.0 MiB in 10.0 s (10.0 MiB/s); 1000 rows\n"));
    assert_null(strstr(out, "%"));
    free(out);
}

static void test_terminal_redraws(void **state)
{
    (void)state;
    char *out = run_step(1);
    /* 10 s of updates every 50 ms: at most one redraw per 100 ms (+ the one after the log) */
    int draws = count(out, "\rhosp/labevents.csv.gz: ");
    assert_true(draws >= 50 && draws <= 102);
    /* drawn again right after the log line (update 101 of 200) */
    assert_non_null(
        strstr(out, "\rhosp/labevents.csv.gz:  50% 50.5/100.0 MiB, 10.0 MiB/s, ETA 5s"));
    assert_non_null(strstr(out, "\rhosp/labevents.csv.gz:   0% 0.5/100.0 MiB, 10.0 MiB/s, ETA ?"));
    /* the log line comes after a clear of the drawn line, on a line of its own */
    const char *w = strstr(out, "warn: a line from elsewhere");
    assert_non_null(w);
    const char *line_start = w;
    while (line_start > out && line_start[-1] != '\n' && line_start[-1] != 'K')
        line_start--;
    assert_true(line_start - out >= 4);
    assert_memory_equal(line_start - 4, "\r\033[K", 4);
    assert_true(isdigit((unsigned char)line_start[0])); /* the time of the log line */
    /* after the log line the meter is drawn again */
    assert_non_null(strstr(w, "\rhosp/labevents.csv.gz:  "));
    /* the end clears the line and logs the summary once */
    assert_int_equal(count(out, "hosp/labevents.csv.gz: 100.0 MiB in 10.0 s"), 1);
    const char *sum = strstr(out, "hosp/labevents.csv.gz: 100.0 MiB in");
    assert_true(sum - out > 0);
    free(out);
}

static void test_eta_follows_the_rate(void **state)
{
    (void)state;
    moeh_progress_t p;
    capture_begin(0);
    moeh_progress_begin(&p, "synth", 1000, "admissions");
    assert_true(moeh_progress_eta(&p) < 0); /* nothing yet */
    g_now += 500;
    moeh_progress_update(&p, 50);
    assert_true(moeh_progress_eta(&p) < 0); /* less than a second */
    g_now += 500;
    moeh_progress_update(&p, 100); /* 100/s */
    assert_true(fabs(moeh_progress_eta(&p) - 9.0) < 0.01);
    for (int i = 0; i < 80; i++) { /* then 20/s for 20 s: the estimate moves towards it */
        g_now += 250;
        moeh_progress_update(&p, 100 + (uint64_t)(i + 1) * 5);
    }
    double eta = moeh_progress_eta(&p), exact = (1000.0 - 500.0) / 20.0;
    assert_true(eta > 0.8 * exact && eta < 1.25 * exact);
    moeh_progress_cancel(&p);
    char *out = capture_end();
    assert_string_equal(out, ""); /* cancelled: no summary */
    free(out);
}

static void test_status_line(void **state)
{
    (void)state;
    capture_begin(0);
    moeh_progress_line("round %d/%d TRAIN: %d/%d sites reported, ETA ?", 1, 3, 2, 4);
    moeh_progress_line_clear();
    char *out = capture_end();
    assert_string_equal(out, ""); /* off a terminal a status line writes nothing */
    free(out);
    capture_begin(1);
    moeh_progress_line("round %d/%d TRAIN: %d/%d sites reported, ETA ?", 1, 3, 2, 4);
    moeh_progress_line("round %d/%d TRAIN: %d/%d sites reported, ETA ?", 1, 3, 2, 4); /* same */
    g_now += 100;
    moeh_progress_line("round %d/%d TRAIN: %d/%d sites reported, ETA ?", 1, 3, 3, 4);
    MOEH_INFO("site x joined");
    moeh_progress_line("round %d/%d TRAIN: %d/%d sites reported, ETA ?", 1, 3, 3, 4);
    moeh_progress_line_clear();
    out = capture_end();
    assert_int_equal(count(out, "\rround 1/3 TRAIN: 2/4 sites reported, ETA ?\033[K"), 1);
    assert_int_equal(count(out, "\rround 1/3 TRAIN: 3/4 sites reported, ETA ?\033[K"), 2);
    assert_non_null(strstr(out, "\r\033[K"));
    const char *log = strstr(out, "info: site x joined\n");
    assert_non_null(log);
    assert_non_null(strstr(log, "\rround 1/3 TRAIN: 3/4")); /* drawn again after the log */
    free(out);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_formats),
               cmocka_unit_test(test_not_a_terminal_one_line),
               cmocka_unit_test(test_terminal_redraws), cmocka_unit_test(test_eta_follows_the_rate),
               cmocka_unit_test(test_status_line))
