/* bench/extract.c - extraction throughput of `moeh extract` against a pandas pipeline
 * doing the same cohort and hourly binning (bench/extract_pandas.py), on the same synthetic
 * chartevents + labevents, in the same run. Each side runs in its own child process so that
 * its peak RSS is its own (wait4). Prints MB/s of uncompressed CSV, rows/s, peak RSS, the
 * ratio, and checks that both found the same observed cells and the same sum of means.
 *
 * usage: bench_extract --db DIR/mimic [--python /usr/bin/python3] [--script PATH]
 *        (make DIR with: moeh synth --admissions N --chart-days D --no-images --out DIR) */
#include "moeh_extract.h"

#include <getopt.h>
#include <math.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    double seconds, sum_means;
    uint64_t rows, bytes, cells, cohort;
    long maxrss_kb;
    int ok;
} result_t;

static double now_s(void)
{
    return (double)moeh_now_ms() / 1000.0;
}

/* child: C extraction; writes a result_t to fd */
static int run_c(const char *db, int fd)
{
    moeh_extract_opts_t o;
    moeh_extract_opts_default(&o);
    o.mimic_dir = db;
    moeh_dataset_t *ds = NULL;
    moeh_extract_stats_t st;
    moeh_err_t err = {0};
    result_t r = {0};
    double t = now_s();
    int rc = moeh_extract(&o, &ds, &st, &err);
    r.seconds = now_s() - t;
    if (rc) {
        fprintf(stderr, "bench_extract: %s\n", err.msg);
    } else {
        r.ok = 1;
        r.rows = st.chart_rows + st.lab_rows;
        r.bytes = st.event_bytes;
        r.cohort = ds->n;
        size_t nc = ds->n * ds->t * ds->f_ts;
        for (size_t i = 0; i < nc; i++)
            if (ds->ts_mask[i] != 0) {
                r.cells++;
                r.sum_means += ds->ts_value[i];
            }
    }
    moeh_dataset_destroy(&ds);
    return write(fd, &r, sizeof r) == (ssize_t)sizeof r ? 0 : 1;
}

int main(int argc, char **argv)
{
    const char *db = NULL, *py = "/usr/bin/python3", *script = NULL;
    static const struct option lo[] = {{"db", required_argument, 0, 'd'},
                                       {"python", required_argument, 0, 'p'},
                                       {"script", required_argument, 0, 's'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case 'd':
            db = optarg;
            break;
        case 'p':
            py = optarg;
            break;
        case 's':
            script = optarg;
            break;
        case 'h':
            printf(
                "usage: bench_extract --db MIMIC_DIR [--python PY] [--script extract_pandas.py]\n");
            return 0;
        default:
            return 2;
        }
    }
    if (!db) {
        fprintf(stderr, "usage: bench_extract --db MIMIC_DIR [--python PY] [--script PATH]\n");
        return 2;
    }
    char script_buf[4096], var_buf[4096];
    if (!script) {
        snprintf(script_buf, sizeof script_buf, "%s/bench/extract_pandas.py", MOEH_SOURCE_DIR);
        script = script_buf;
    }
    snprintf(var_buf, sizeof var_buf, "%s/sim/variables.csv", MOEH_SOURCE_DIR);
    moeh_log_configure(MOEH_LOG_WARN, "bench", NULL, NULL);

    /* C, in a child */
    result_t c = {0};
    int pfd[2];
    if (pipe(pfd)) return 1;
    struct rusage ru;
    int status;
    double t = now_s();
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        _exit(run_c(db, pfd[1]));
    }
    close(pfd[1]);
    if (read(pfd[0], &c, sizeof c) != (ssize_t)sizeof c) c.ok = 0;
    close(pfd[0]);
    wait4(pid, &status, 0, &ru);
    double c_wall = now_s() - t;
    c.maxrss_kb = ru.ru_maxrss;
    if (!c.ok || !WIFEXITED(status) || WEXITSTATUS(status)) {
        fprintf(stderr, "bench_extract: the C extraction failed\n");
        return 1;
    }

    /* pandas, in a child */
    if (pipe(pfd)) return 1;
    t = now_s();
    pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        dup2(pfd[1], 1);
        execl(py, py, script, db, var_buf, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char out[4096] = "";
    size_t ol = 0;
    ssize_t k;
    while ((k = read(pfd[0], out + ol, sizeof out - 1 - ol)) > 0)
        ol += (size_t)k;
    out[ol] = '\0';
    close(pfd[0]);
    wait4(pid, &status, 0, &ru);
    double p_wall = now_s() - t;
    if (!WIFEXITED(status) || WEXITSTATUS(status)) {
        fprintf(stderr, "bench_extract: the pandas reference failed (exit %d): %s\n",
                WIFEXITED(status) ? WEXITSTATUS(status) : -1, out);
        return 1;
    }
    cJSON *js = cJSON_Parse(out);
    double p_cells = cJSON_GetNumberValue(cJSON_GetObjectItem(js, "cells"));
    double p_sum = cJSON_GetNumberValue(cJSON_GetObjectItem(js, "sum_of_means"));
    double p_rows = cJSON_GetNumberValue(cJSON_GetObjectItem(js, "rows"));
    cJSON_Delete(js);

    double mb = (double)c.bytes / 1e6;
    printf("input: %s: chartevents + labevents, %.0f MB uncompressed CSV, %.1f M rows; "
           "cohort %llu admissions\n",
           db, mb, (double)c.rows / 1e6, (unsigned long long)c.cohort);
    printf("%-8s %9s %9s %10s %12s %12s\n", "impl", "wall s", "MB/s", "M rows/s", "peak RSS MB",
           "cells");
    printf("%-8s %9.2f %9.1f %10.2f %12.1f %12llu\n", "moeh C", c_wall, mb / c_wall,
           (double)c.rows / 1e6 / c_wall, (double)c.maxrss_kb / 1024, (unsigned long long)c.cells);
    printf("%-8s %9.2f %9.1f %10.2f %12.1f %12.0f\n", "pandas", p_wall, mb / p_wall,
           p_rows / 1e6 / p_wall, (double)ru.ru_maxrss / 1024, p_cells);
    printf("speed-up: %.1fx (target >= 5x)\n", p_wall / c_wall);
    int same = (double)c.cells == p_cells && (double)c.rows == p_rows &&
               fabs(c.sum_means - p_sum) <= 1e-5 * fabs(p_sum);
    printf("same result: %s (sum of hourly means C %.6g, pandas %.6g)\n", same ? "yes" : "NO",
           c.sum_means, p_sum);
    return same ? 0 : 1;
}
