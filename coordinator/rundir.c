/* rundir.c - the output directory belongs to one run: a new run never overwrites an earlier
 * run's state (coord_internal.h, moeh_coord_rundir_prepare). */
#include "coord_internal.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* What a run writes into its directory; the first four mean "an earlier run is here". */
/* (site-out: `moeh run`'s simulated sites keep their final model and metrics there) */
static const char *const k_run_files[] = {
    "checkpoint.moeh", "metrics.jsonl", "model.npy",         "dp_ledger.json", "config.json",
    "report.html",     "status.json",   "model.safetensors", "site-out",
};
enum { N_MARKERS = 4, N_RUN_FILES = sizeof k_run_files / sizeof k_run_files[0] };

/* 1 if dir/name exists (metrics.jsonl: and is not empty), 0 if not; negative on an error
 * other than ENOENT. */
static int present(const char *dir, const char *name, moeh_err_t *err)
{
    char path[PATH_MAX];
    struct stat st;
    if (moeh_path_join(path, sizeof path, dir, name))
        return moeh_errf(err, -ENAMETOOLONG, "%s/%s: path too long", dir, name);
    if (stat(path, &st) != 0)
        return errno == ENOENT ? 0 : moeh_errf(err, -errno, "%s: %s", path, strerror(errno));
    return strcmp(name, "metrics.jsonl") != 0 || st.st_size > 0;
}

/* Moves every run file of dir into a new dir/previous-run-<UTC time>[-N]/; *moved_to names it. */
static int move_aside(const char *dir, char *moved_to, size_t cap, moeh_err_t *err)
{
    char stamp[32], name[64], path[PATH_MAX], from[PATH_MAX], to[PATH_MAX];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    for (int n = 1;; n++) {
        if (n == 1)
            snprintf(name, sizeof name, "previous-run-%s", stamp);
        else
            snprintf(name, sizeof name, "previous-run-%s-%d", stamp, n);
        if (moeh_path_join(path, sizeof path, dir, name))
            return moeh_errf(err, -ENAMETOOLONG, "%s/%s: path too long", dir, name);
        if (mkdir(path, 0700) == 0) break;
        if (errno != EEXIST || n > 100)
            return moeh_errf(err, -errno, "%s: cannot create: %s", path, strerror(errno));
    }
    for (size_t i = 0; i < N_RUN_FILES; i++) {
        int rc = present(dir, k_run_files[i], err);
        if (rc < 0) return rc;
        if (rc == 0 && strcmp(k_run_files[i], "metrics.jsonl") != 0) continue;
        if (moeh_path_join(from, sizeof from, dir, k_run_files[i]) ||
            moeh_path_join(to, sizeof to, path, k_run_files[i]))
            return moeh_errf(err, -ENAMETOOLONG, "%s: path too long", path);
        if (rename(from, to) != 0 && errno != ENOENT)
            return moeh_errf(err, -errno, "moving %s to %s: %s", from, to, strerror(errno));
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) { /* the renames survive a crash */
        (void)fsync(dfd);
        close(dfd);
    }
    snprintf(moved_to, cap, "%s", path);
    return 0;
}

int moeh_coord_rundir_prepare(const char *dir, int resume, int new_run, moeh_err_t *err)
{
    if (resume && new_run)
        return moeh_errf(err, -EINVAL,
                         "--resume and --new-run exclude each other: continue the run in %s, or "
                         "move it aside and start a new one",
                         dir);
    char found[160] = "";
    for (size_t i = 0; i < N_MARKERS; i++) {
        int rc = present(dir, k_run_files[i], err);
        if (rc < 0) return rc;
        if (rc)
            snprintf(found + strlen(found), sizeof found - strlen(found), "%s%s",
                     found[0] ? ", " : "", k_run_files[i]);
    }
    if (resume) return 0; /* the checkpoint's own checks say what is missing */
    if (!found[0]) return 0;
    if (!new_run)
        return moeh_errf(err, -EEXIST,
                         "%s holds an earlier run (%s): --resume to continue it, or --new-run to "
                         "move its files into %s/previous-run-<time>/ and start a new run "
                         "(nothing is deleted)",
                         dir, found, dir);
    char moved[PATH_MAX];
    int rc = move_aside(dir, moved, sizeof moved, err);
    if (rc) return rc;
    MOEH_INFO("--new-run: the earlier run's files (%s and what went with them) are in %s", found,
              moved);
    return 0;
}
