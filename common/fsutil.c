/* fsutil.c - atomic file writes, whole-file reads and directory helpers. */
#include "moeh_common.h"

#include <fcntl.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int moeh_path_join(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

int moeh_mkdir_p(const char *path, moeh_err_t *err)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return moeh_errf(err, -ENAMETOOLONG, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return moeh_errf(err, -errno, "%s: cannot create directory: %s", buf,
                                 strerror(errno));
            *p = c;
            if (c == '\0') break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return moeh_errf(err, -ENOTDIR, "%s: exists and is not a directory", path);
    return 0;
}

static int reserve_fd[MOEH_FD_RESERVE_MAX];
static unsigned reserve_held, reserve_want;

static void reserve_refill(void)
{
    while (reserve_held < reserve_want) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0) break; /* still full: the next file closed tries again */
        reserve_fd[reserve_held++] = fd;
    }
}

int moeh_fd_reserve(unsigned n)
{
    reserve_want = n < MOEH_FD_RESERVE_MAX ? n : MOEH_FD_RESERVE_MAX;
    while (reserve_held > reserve_want)
        close(reserve_fd[--reserve_held]);
    reserve_refill();
    return (int)reserve_held;
}

/* open(2) that falls back on the reserve when the descriptor table is full */
static int open_reserved(const char *path, int flags, mode_t mode)
{
    for (;;) {
        int fd = open(path, flags, mode);
        if (fd >= 0 || (errno != EMFILE && errno != ENFILE) || !reserve_held) return fd;
        close(reserve_fd[--reserve_held]);
    }
}

int moeh_file_write_atomic(const char *path, const void *data, size_t len, moeh_err_t *err)
{
    char tmp[4096];
    int rc = 0, fd = -1;
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return moeh_errf(err, -ENAMETOOLONG, "%s: path too long", path);
    fd = open_reserved(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return moeh_errf(err, -errno, "%s: cannot create: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR) continue;
            rc = moeh_errf(err, -errno, "%s: write failed: %s", tmp, strerror(errno));
            goto out;
        }
        p += n;
        left -= (size_t)n;
    }
    if (fsync(fd) != 0) {
        rc = moeh_errf(err, -errno, "%s: fsync failed: %s", tmp, strerror(errno));
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = moeh_errf(err, -errno, "%s: close failed: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = moeh_errf(err, -errno, "%s: rename failed: %s", path, strerror(errno));
        goto out;
    }
    /* Make the rename itself durable. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    int dfd = open_reserved(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
out:
    if (fd >= 0) close(fd);
    if (rc != 0) unlink(tmp);
    reserve_refill();
    return rc;
}

int moeh_file_read_all(const char *path, size_t max_len, char **out, size_t *len_out,
                       moeh_err_t *err)
{
    int rc = 0;
    char *buf = NULL;
    int fd = open_reserved(path, O_RDONLY | O_CLOEXEC, 0);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        rc = moeh_errf(err, -errno, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        reserve_refill();
        return rc;
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        rc = moeh_errf(err, -EIO, "%s: cannot seek", path);
        goto out;
    }
    long sz = ftell(f);
    if (sz < 0 || (size_t)sz > max_len) {
        rc = moeh_errf(err, -EFBIG, "%s: size %ld exceeds the limit of %zu bytes", path, sz,
                       max_len);
        goto out;
    }
    rewind(f);
    buf = malloc((size_t)sz + 1);
    if (!buf) {
        rc = moeh_errf(err, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        rc = moeh_errf(err, -EIO, "%s: short read", path);
        goto out;
    }
    buf[sz] = '\0';
    *out = buf;
    buf = NULL;
    if (len_out) *len_out = (size_t)sz;
out:
    free(buf);
    fclose(f);
    reserve_refill();
    return rc;
}
