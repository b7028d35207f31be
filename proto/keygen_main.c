/* keygen_main.c - moeh-keygen: writes a CURVE key pair as BASE.key (secret, 0600) and
 * BASE.pub, and prints the registry line for a site. Options come from the shared parser
 * (moeh_opts.h): --help, "did you mean", and exit 2 naming the option and value on every usage
 * error. */
#include "moeh_keys.h"
#include "moeh_opts.h"
#include "moeh_wire.h"

#include <stdarg.h>
#include <string.h>

static const char k_synopsis[] =
    "usage: moeh-keygen [--site ID] [--force] BASE\n\n"
    "Writes a new CURVE key pair: BASE.key (public + secret, mode 0600; stays on this\n"
    "machine) and BASE.pub (public; give it to the other side).\n"
    "With --site ID, also prints the line to add under [sites] in the coordinator's\n"
    "site registry.";

/* Prints "moeh-keygen: MESSAGE (see moeh-keygen --help)", frees the options and returns the
 * usage error's exit code. */
static int usage_error(moeh_opts_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(moeh_opts_t *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "moeh-keygen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see moeh-keygen --help)\n");
    va_end(ap);
    moeh_opts_free(o);
    return MOEH_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    const char *site = NULL;
    int force = 0;
    const moeh_opt_t opts[] = {
        {"site", MOEH_OPT_STR, &site,
         "the site id this key belongs to (1-64 of [A-Za-z0-9._-]); prints its registry line"},
        {"force", MOEH_OPT_BOOL, &force, "overwrite existing key files"},
    };
    moeh_opts_t o = {.prog = "moeh-keygen",
                     .synopsis = k_synopsis,
                     .opts = opts,
                     .n_opts = sizeof opts / sizeof opts[0],
                     .max_args = 1,
                     .args_name = "BASE (the key files' name without .key/.pub)"};
    int rc = moeh_opts_main(&o, argc, argv, NULL, NULL);
    if (rc >= 0) return rc;
    if (o.n_args != 1) return usage_error(&o, "missing BASE: the name of the key files to write");
    const char *base = o.args[0];
    char path[4096];
    if (!base[0] || base[strlen(base) - 1] == '/')
        return usage_error(
            &o, "BASE '%s': expected a file name (BASE.key and BASE.pub are written)", base);
    if (strlen(base) + sizeof ".key" > sizeof path)
        return usage_error(&o, "BASE '%.64s...': longer than a path may be", base);
    if (site && !moeh_site_id_valid(site))
        return usage_error(&o, "--site '%s': expected 1-64 of [A-Za-z0-9._-]", site);
    snprintf(path, sizeof path, "%s.key", base);
    FILE *exists = fopen(path, "r");
    if (exists) fclose(exists);
    if (exists && !force) {
        fprintf(stderr, "moeh-keygen: %s exists (use --force to overwrite)\n", path);
        moeh_opts_free(&o);
        return MOEH_EXIT_ERROR;
    }
    if (moeh_crypto_init() != 0) {
        fprintf(stderr, "moeh-keygen: libsodium failed to initialise\n");
        moeh_opts_free(&o);
        return MOEH_EXIT_ERROR;
    }
    moeh_keypair_t *kp = NULL;
    moeh_err_t err = {0};
    rc = moeh_keypair_generate(&kp);
    if (rc) {
        fprintf(stderr, "moeh-keygen: %s\n", moeh_strerror(rc));
        moeh_opts_free(&o);
        return MOEH_EXIT_ERROR;
    }
    rc = moeh_keypair_write(kp, base, &err);
    if (rc)
        fprintf(stderr, "moeh-keygen: %s\n", err.msg);
    else {
        printf("wrote %s.key and %s.pub\n", base, base);
        if (site) printf("registry line ([sites]):\n%s = %s\n", site, kp->public_z85);
    }
    moeh_keypair_destroy(&kp);
    moeh_opts_free(&o);
    return rc ? MOEH_EXIT_ERROR : MOEH_EXIT_FINISHED;
}
