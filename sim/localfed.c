/* localfed.c - keys, coordinator and agents of a local federation (see localfed.h). */
#include "moeh_localfed.h"

#include "moeh_keys.h"
#include "moeh_wire.h"

#include <string.h>
#include <unistd.h>

int moeh_localfed_keys(const char *dir, const char *const *names, size_t n_sites, moeh_err_t *err)
{
    int rc;
    char base[4096];
    moeh_keypair_t *kp = NULL;
    if ((rc = moeh_crypto_init())) return moeh_errf(err, rc, "libsodium failed to initialise");
    if ((rc = moeh_mkdir_p(dir, err))) return rc;
    size_t cap = 64 + n_sites * 128, len = 0;
    char *reg = malloc(cap);
    if (!reg) return moeh_errf(err, -ENOMEM, "out of memory");
    len += (size_t)snprintf(reg, cap, "# moeh site registry: SITE_ID = public key\n[sites]\n");
    for (size_t k = 0; k <= n_sites; k++) {
        if (k > 0 && !moeh_site_id_valid(names[k - 1])) {
            rc = moeh_errf(err, -EINVAL, "site name '%s' is not a valid site id", names[k - 1]);
            goto out;
        }
        if ((rc = moeh_keypair_generate(&kp))) {
            moeh_errf(err, rc, "key generation failed: %s", moeh_strerror(rc));
            goto out;
        }
        if (k == 0)
            snprintf(base, sizeof base, "%s/coordinator", dir);
        else
            snprintf(base, sizeof base, "%s/%s", dir, names[k - 1]);
        if ((rc = moeh_keypair_write(kp, base, err))) goto out;
        if (k > 0)
            len +=
                (size_t)snprintf(reg + len, cap - len, "%s = %s\n", names[k - 1], kp->public_z85);
        moeh_keypair_destroy(&kp);
    }
    snprintf(base, sizeof base, "%s/registry.ini", dir);
    rc = moeh_file_write_atomic(base, reg, len, err);
out:
    moeh_keypair_destroy(&kp);
    free(reg);
    return rc;
}

#define MAX_ARGS 96

static int append_extra(char **argv, int n, char *const extra[])
{
    for (int i = 0; extra && extra[i] && n < MAX_ARGS - 1; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return n;
}

int moeh_localfed_start_coordinator(moeh_proc_t *p, const char *bin_dir, char *const extra[],
                                    const char *out_path, const char *log_path, char *endpoint,
                                    size_t cap, moeh_err_t *err)
{
    char exe[4096], fdarg[16];
    int pfd[2];
    snprintf(exe, sizeof exe, "%s/moeh-coordinator", bin_dir);
    if (pipe(pfd) != 0) return moeh_errf(err, -errno, "pipe failed");
    snprintf(fdarg, sizeof fdarg, "%d", pfd[1]);
    char *argv[MAX_ARGS] = {exe, "--bind", "tcp://127.0.0.1:*", "--ready-fd", fdarg};
    append_extra(argv, 5, extra);
    int rc = moeh_proc_spawn(p, "coordinator", argv, out_path, log_path, pfd[1], err);
    close(pfd[1]);
    if (rc) {
        close(pfd[0]);
        return rc;
    }
    rc = moeh_read_line(pfd[0], endpoint, cap, 10000);
    close(pfd[0]);
    if (rc) {
        moeh_proc_stop(p, 2000);
        return moeh_errf(err, rc, "the coordinator did not start (exit code %d); see %s",
                         moeh_proc_exit_code(p), log_path ? log_path : "its output");
    }
    return 0;
}

int moeh_localfed_start_agent(moeh_proc_t *p, const char *bin_dir, const char *endpoint,
                              const char *site_id, const char *dataset, const char *out_dir,
                              const char *key_path, const char *server_pub, char *const extra[],
                              const char *log_path, moeh_err_t *err)
{
    char exe[4096];
    snprintf(exe, sizeof exe, "%s/moeh-site-agent", bin_dir);
    char *argv[MAX_ARGS] = {
        exe,         "--connect",     (char *)endpoint, "--site-id",    (char *)site_id,
        "--dataset", (char *)dataset, "--out",          (char *)out_dir};
    int n = 9;
    if (key_path) {
        argv[n++] = "--key";
        argv[n++] = (char *)key_path;
        argv[n++] = "--server-key";
        argv[n++] = (char *)server_pub;
    } else {
        argv[n++] = "--insecure";
    }
    append_extra(argv, n, extra);
    return moeh_proc_spawn(p, site_id, argv, log_path, log_path, -1, err);
}
