/* keygen_main.c - moeh-keygen: writes a CURVE key pair as NAME.key (secret, 0600) and
 * NAME.pub, and prints the registry line for a site. */
#include "moeh_keys.h"
#include "moeh_wire.h"

#include <getopt.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: moeh-keygen [--site ID] BASE\n\n"
               "Writes a new CURVE key pair: BASE.key (public + secret, mode 0600; stays on this\n"
               "machine) and BASE.pub (public; give it to the other side).\n"
               "With --site ID, also prints the line to add under [sites] in the coordinator's\n"
               "site registry.\n\n"
               "  --site ID   the site id this key belongs to (1-64 of [A-Za-z0-9._-])\n"
               "  --force     overwrite existing files\n"
               "  --help      this text\n  --version   print the version\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"site", required_argument, 0, 's'},
                                         {"force", no_argument, 0, 'f'},
                                         {"help", no_argument, 0, 'h'},
                                         {"version", no_argument, 0, 'V'},
                                         {0, 0, 0, 0}};
    const char *site = NULL;
    int force = 0, c;
    while ((c = getopt_long(argc, argv, "s:fh", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            site = optarg;
            break;
        case 'f':
            force = 1;
            break;
        case 'h':
            usage(stdout);
            return MOEH_EXIT_FINISHED;
        case 'V':
            printf("moeh-keygen %s\n", MOEH_VERSION);
            return MOEH_EXIT_FINISHED;
        default:
            usage(stderr);
            return MOEH_EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return MOEH_EXIT_USAGE;
    }
    const char *base = argv[optind];
    char path[4096];
    snprintf(path, sizeof path, "%s.key", base);
    FILE *exists = fopen(path, "r");
    if (exists && !force) {
        fclose(exists);
        fprintf(stderr, "moeh-keygen: %s exists (use --force to overwrite)\n", path);
        return MOEH_EXIT_ERROR;
    }
    if (exists) fclose(exists);
    if (site) {
        if (!moeh_site_id_valid(site)) {
            fprintf(stderr, "moeh-keygen: --site '%s': expected 1-64 of [A-Za-z0-9._-]\n", site);
            return MOEH_EXIT_USAGE;
        }
    }
    if (moeh_crypto_init() != 0) {
        fprintf(stderr, "moeh-keygen: libsodium failed to initialise\n");
        return MOEH_EXIT_ERROR;
    }
    moeh_keypair_t *kp = NULL;
    moeh_err_t err = {0};
    int rc = moeh_keypair_generate(&kp);
    if (rc) {
        fprintf(stderr, "moeh-keygen: %s\n", moeh_strerror(rc));
        return MOEH_EXIT_ERROR;
    }
    rc = moeh_keypair_write(kp, base, &err);
    if (rc) {
        fprintf(stderr, "moeh-keygen: %s\n", err.msg);
        moeh_keypair_destroy(&kp);
        return MOEH_EXIT_ERROR;
    }
    printf("wrote %s.key and %s.pub\n", base, base);
    if (site) printf("registry line ([sites]):\n%s = %s\n", site, kp->public_z85);
    moeh_keypair_destroy(&kp);
    return MOEH_EXIT_FINISHED;
}
