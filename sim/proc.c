/* proc.c - process helpers for local federations (see proc.h). */
#include "moeh_proc.h"

#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int redirect(const char *path, int target)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    int rc = dup2(fd, target);
    close(fd);
    return rc < 0 ? -1 : 0;
}

int moeh_proc_spawn(moeh_proc_t *p, const char *name, char *const argv[], const char *out_path,
                    const char *err_path, int pass_fd, moeh_err_t *err)
{
    memset(p, 0, sizeof *p);
    p->pidfd = -1;
    snprintf(p->name, sizeof p->name, "%s", name);
    if (access(argv[0], X_OK) != 0)
        return moeh_errf(err, -ENOENT, "%s: not found or not executable", argv[0]);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return moeh_errf(err, -errno, "fork failed: %s", strerror(errno));
    if (pid == 0) {
        if ((out_path && redirect(out_path, 1)) || (err_path && redirect(err_path, 2))) _exit(126);
        long maxfd = sysconf(_SC_OPEN_MAX);
        for (int fd = 3; fd < (maxfd > 0 && maxfd < 65536 ? maxfd : 1024); fd++)
            if (fd != pass_fd) close(fd);
        signal(SIGPIPE, SIG_DFL);
        execv(argv[0], argv);
        _exit(127);
    }
    p->pid = pid;
    p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    return 0;
}

static void reap(moeh_proc_t *p)
{
    int st;
    if (waitpid(p->pid, &st, 0) == p->pid) p->status = st;
    if (p->pidfd >= 0) close(p->pidfd);
    p->pidfd = -1;
    p->pid = 0;
}

int moeh_proc_wait(moeh_proc_t *p, int timeout_ms)
{
    if (p->pid == 0) return 0;
    if (p->pidfd >= 0) {
        struct pollfd pf = {.fd = p->pidfd, .events = POLLIN};
        int rc;
        do {
            rc = poll(&pf, 1, timeout_ms);
        } while (rc < 0 && errno == EINTR);
        if (rc == 0) return -ETIMEDOUT;
        reap(p);
        return 0;
    }
    /* no pidfd (old kernel): poll waitpid in 10 ms steps */
    int64_t end = timeout_ms < 0 ? INT64_MAX : moeh_now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            p->status = st;
            p->pid = 0;
            return 0;
        }
        if (moeh_now_ms() >= end) return -ETIMEDOUT;
        poll(NULL, 0, 10);
    }
}

void moeh_proc_signal(moeh_proc_t *p, int sig)
{
    if (p->pid > 0) kill(p->pid, sig);
}

void moeh_proc_stop(moeh_proc_t *p, int grace_ms)
{
    if (p->pid == 0) return;
    moeh_proc_signal(p, SIGTERM);
    if (moeh_proc_wait(p, grace_ms) == 0) return;
    moeh_proc_signal(p, SIGKILL);
    moeh_proc_wait(p, -1);
}

int moeh_proc_exit_code(const moeh_proc_t *p)
{
    if (p->pid != 0) return -1;
    if (WIFEXITED(p->status)) return WEXITSTATUS(p->status);
    if (WIFSIGNALED(p->status)) return 128 + WTERMSIG(p->status);
    return -1;
}

int moeh_read_line(int fd, char *buf, size_t cap, int timeout_ms)
{
    size_t n = 0;
    int64_t end = moeh_now_ms() + timeout_ms;
    while (n + 1 < cap) {
        int64_t left = end - moeh_now_ms();
        if (left <= 0) return -ETIMEDOUT;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int rc = poll(&pf, 1, (int)left);
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0) return -ETIMEDOUT;
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0) return -EPIPE;
        if (buf[n] == '\n') {
            buf[n] = '\0';
            return 0;
        }
        n++;
    }
    buf[n] = '\0';
    return 0;
}

int moeh_self_dir(char *out, size_t cap)
{
    char path[4096];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0) return -errno;
    path[n] = '\0';
    if ((size_t)snprintf(out, cap, "%s", dirname(path)) >= cap) return -ENAMETOOLONG;
    return 0;
}
