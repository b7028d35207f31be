/* opts.c - one table for flags and INI keys (see moeh_opts.h). */
#include "moeh_opts.h"

#include <ini.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

static const moeh_opt_t *find(const moeh_opts_t *o, const char *name)
{
    for (size_t i = 0; i < o->n_opts; i++)
        if (strcmp(o->opts[i].name, name) == 0) return &o->opts[i];
    return NULL;
}

/* Edit distance (insert, delete, substitute) between two short option names. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[65];
    if (la > 64 || lb > 64) return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

/* ", did you mean --NAME?" for the closest option within a third of the name's length (at
 * least 1, at most 3 edits), or a prefix match; "" if none. */
static void suggest(const moeh_opts_t *o, const char *name, char *out, size_t cap)
{
    const char *best = NULL;
    size_t best_d = SIZE_MAX, len = strlen(name), limit = len / 3 < 1 ? 1 : len / 3;
    if (limit > 3) limit = 3;
    for (size_t i = 0; i < o->n_opts; i++) {
        size_t d = edit_distance(name, o->opts[i].name);
        if (len >= 3 && !strncmp(o->opts[i].name, name, len)) d = 1; /* a prefix of it */
        if (d < best_d) best_d = d, best = o->opts[i].name;
    }
    if (best && best_d <= limit)
        snprintf(out, cap, "; did you mean --%s?", best);
    else
        out[0] = '\0';
}

static int set_value(moeh_opts_t *o, const moeh_opt_t *opt, const char *val, int from_file,
                     char *why, size_t why_len)
{
    char *end = NULL;
    errno = 0;
    size_t idx = (size_t)(opt - o->opts);
    if (idx < MOEH_OPTS_MAX) o->seen[idx] = 1;
    switch (opt->type) {
    case MOEH_OPT_STR: {
        const char *v = val;
        if (from_file) {
            if (o->n_owned == o->cap_owned) {
                size_t cap = o->cap_owned ? 2 * o->cap_owned : 8;
                char **n = realloc(o->owned, cap * sizeof *n);
                if (!n) return snprintf(why, why_len, "out of memory"), -ENOMEM;
                o->owned = n;
                o->cap_owned = cap;
            }
            char *d = strdup(val);
            if (!d) return snprintf(why, why_len, "out of memory"), -ENOMEM;
            o->owned[o->n_owned++] = d;
            v = d;
        }
        *(const char **)opt->ptr = v;
        return 0;
    }
    case MOEH_OPT_U32:
    case MOEH_OPT_U64: {
        if (val[0] == '-') goto bad_num;
        unsigned long long x = strtoull(val, &end, 10);
        if (errno || end == val || *end || (opt->type == MOEH_OPT_U32 && x > UINT32_MAX))
            goto bad_num;
        if (opt->type == MOEH_OPT_U32)
            *(uint32_t *)opt->ptr = (uint32_t)x;
        else
            *(uint64_t *)opt->ptr = x;
        return 0;
    bad_num:
        snprintf(why, why_len, "'%s' is not a non-negative integer%s", val,
                 opt->type == MOEH_OPT_U32 ? " below 2^32" : "");
        return -EINVAL;
    }
    case MOEH_OPT_F32: {
        float x = strtof(val, &end);
        if (errno || end == val || *end || !isfinite(x)) {
            snprintf(why, why_len, "'%s' is not a finite number", val);
            return -EINVAL;
        }
        *(float *)opt->ptr = x;
        return 0;
    }
    case MOEH_OPT_F64: {
        double x = strtod(val, &end);
        if (errno || end == val || *end || !isfinite(x)) {
            snprintf(why, why_len, "'%s' is not a finite number", val);
            return -EINVAL;
        }
        *(double *)opt->ptr = x;
        return 0;
    }
    case MOEH_OPT_DURATION: {
        double x = strtod(val, &end), unit = 1000;
        if (!errno && end != val && isfinite(x) && x >= 0) {
            if (!strcmp(end, "ms"))
                unit = 1;
            else if (!strcmp(end, "s") || !*end)
                unit = 1000;
            else if (!strcmp(end, "m"))
                unit = 60000;
            else if (!strcmp(end, "h"))
                unit = 3600000;
            else
                unit = -1;
            if (unit > 0 && x * unit <= UINT32_MAX) {
                *(uint32_t *)opt->ptr = (uint32_t)llround(x * unit);
                return 0;
            }
        }
        snprintf(why, why_len,
                 "'%s' is not a duration (a number with ms, s, m or h, e.g. 90s or 6h; at most "
                 "49 days)",
                 val);
        return -EINVAL;
    }
    case MOEH_OPT_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes")) {
            *(int *)opt->ptr = 1;
        } else if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no")) {
            *(int *)opt->ptr = 0;
        } else {
            snprintf(why, why_len, "'%s' is not a boolean (true/false/1/0/yes/no)", val);
            return -EINVAL;
        }
        return 0;
    }
    return -EINVAL;
}

typedef struct {
    moeh_opts_t *o;
    char why[256];
    unsigned char in_file[MOEH_OPTS_MAX]; /* keys this file set already */
} ini_ctx_t;

static int opts_ini_handler(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx_t *c = user;
    (void)section;
    const moeh_opt_t *opt = find(c->o, name);
    if (!opt || !strcmp(name, "config")) {
        char hint[96];
        suggest(c->o, name, hint, sizeof hint);
        snprintf(c->why, sizeof c->why, "unknown option '%s'%s (see %s --help)", name, hint,
                 c->o->prog);
        return 0;
    }
    size_t idx = (size_t)(opt - c->o->opts);
    if (idx < MOEH_OPTS_MAX && c->in_file[idx]++) { /* the last would win silently */
        snprintf(c->why, sizeof c->why,
                 "'%s' is set a second time in this file (remove one of the two)", name);
        return 0;
    }
    char why[200];
    if (set_value(c->o, opt, value, 1, why, sizeof why) != 0) {
        snprintf(c->why, sizeof c->why, "%s: %s", name, why);
        return 0;
    }
    return 1;
}

void moeh_opts_print_help(const moeh_opts_t *o, FILE *f)
{
    fprintf(f, "%s\n\noptions (each may also be set as 'name = value' in a --config INI file):\n",
            o->synopsis);
    for (size_t i = 0; i < o->n_opts; i++) {
        const moeh_opt_t *opt = &o->opts[i];
        char flag[64], def[96] = "";
        static const char *meta[] = {"STR", "N", "N", "X", "", "X", "TIME"};
        snprintf(flag, sizeof flag, "--%s %s", opt->name, meta[opt->type]);
        switch (opt->type) {
        case MOEH_OPT_STR:
            if (*(const char **)opt->ptr)
                snprintf(def, sizeof def, " (default: %s)", *(const char **)opt->ptr);
            break;
        case MOEH_OPT_U32: /* UINT32_MAX means "not set" in the tables: no number to show */
            if (*(uint32_t *)opt->ptr != UINT32_MAX)
                snprintf(def, sizeof def, " (default: %u)", *(uint32_t *)opt->ptr);
            break;
        case MOEH_OPT_U64:
            if (*(uint64_t *)opt->ptr != UINT64_MAX)
                snprintf(def, sizeof def, " (default: %llu)",
                         (unsigned long long)*(uint64_t *)opt->ptr);
            break;
        case MOEH_OPT_F32:
            snprintf(def, sizeof def, " (default: %g)", (double)*(float *)opt->ptr);
            break;
        case MOEH_OPT_F64:
            snprintf(def, sizeof def, " (default: %g)", *(double *)opt->ptr);
            break;
        case MOEH_OPT_DURATION: {
            uint32_t ms = *(uint32_t *)opt->ptr;
            if (ms % 3600000 == 0 && ms)
                snprintf(def, sizeof def, " (default: %uh)", ms / 3600000);
            else if (ms % 60000 == 0 && ms)
                snprintf(def, sizeof def, " (default: %um)", ms / 60000);
            else if (ms % 1000 == 0)
                snprintf(def, sizeof def, " (default: %us)", ms / 1000);
            else
                snprintf(def, sizeof def, " (default: %ums)", ms);
            break;
        }
        case MOEH_OPT_BOOL:
            snprintf(flag, sizeof flag, "--[no-]%s", opt->name);
            snprintf(def, sizeof def, " (default: %s)", *(int *)opt->ptr ? "on" : "off");
            break;
        }
        fprintf(f, "  %-26s %s%s\n", flag, opt->help, def);
    }
    fprintf(f, "  %-26s %s\n  %-26s %s\n  %-26s %s\n", "--config FILE",
            "read options from an INI file first", "--help", "print this help and exit",
            "--version", "print the version and exit");
}

int moeh_opts_parse(moeh_opts_t *o, int argc, char **argv, moeh_err_t *err)
{
    if (o->n_opts > MOEH_OPTS_MAX)
        return moeh_errf(err, -EINVAL, "%s: more than %d options in one table", o->prog,
                         MOEH_OPTS_MAX);
    /* Pass 1: --help, --version, --config (so that flags override the file). */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            moeh_opts_print_help(o, stdout);
            return 1;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("%s %s\n", o->prog, MOEH_VERSION);
            return 1;
        }
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") != 0) continue;
        if (i + 1 >= argc) return moeh_errf(err, -EINVAL, "--config needs a file name");
        ini_ctx_t c = {.o = o};
        int line = ini_parse(argv[i + 1], opts_ini_handler, &c);
        if (line < 0) return moeh_errf(err, -EINVAL, "%s: cannot open config file", argv[i + 1]);
        if (line > 0)
            return moeh_errf(err, -EINVAL, "%s:%d: %s", argv[i + 1], line,
                             c.why[0] ? c.why : "syntax error (expected 'name = value')");
    }
    /* Pass 2: flags. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0)
            return moeh_errf(err, -EINVAL, "unexpected argument '%s' (see %s --help)", a, o->prog);
        const char *name = a + 2, *val = NULL;
        char buf[64];
        const char *eq = strchr(name, '=');
        if (eq) { /* --name=value */
            size_t l = (size_t)(eq - name);
            if (l >= sizeof buf) return moeh_errf(err, -EINVAL, "unknown option '%s'", a);
            memcpy(buf, name, l);
            buf[l] = '\0';
            name = buf;
            val = eq + 1;
        }
        if (!strcmp(name, "config")) {
            i += val ? 0 : 1;
            continue;
        }
        const moeh_opt_t *opt = find(o, name);
        if (!opt && !strncmp(name, "no-", 3) && !val) { /* --no-X: boolean X off */
            const moeh_opt_t *neg = find(o, name + 3);
            if (neg && neg->type == MOEH_OPT_BOOL) {
                *(int *)neg->ptr = 0;
                if ((size_t)(neg - o->opts) < MOEH_OPTS_MAX) o->seen[neg - o->opts] = 1;
                continue;
            }
        }
        if (!opt) {
            char hint[96];
            suggest(o, name, hint, sizeof hint);
            return moeh_errf(err, -EINVAL, "unknown option '%s'%s (see %s --help)", a, hint,
                             o->prog);
        }
        if (opt->type == MOEH_OPT_BOOL && !val) {
            *(int *)opt->ptr = 1;
            if ((size_t)(opt - o->opts) < MOEH_OPTS_MAX) o->seen[opt - o->opts] = 1;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc) return moeh_errf(err, -EINVAL, "--%s needs a value", name);
            val = argv[++i];
        }
        char why[200];
        if (set_value(o, opt, val, 0, why, sizeof why) != 0)
            return moeh_errf(err, -EINVAL, "--%s: %s", name, why);
    }
    return 0;
}

int moeh_opts_seen(const moeh_opts_t *o, const void *ptr)
{
    for (size_t i = 0; i < o->n_opts && i < MOEH_OPTS_MAX; i++)
        if (o->opts[i].ptr == ptr) return o->seen[i];
    return 0;
}

void moeh_opts_free(moeh_opts_t *o)
{
    for (size_t i = 0; i < o->n_owned; i++)
        free(o->owned[i]);
    free(o->owned);
    o->owned = NULL;
    o->n_owned = o->cap_owned = 0;
}

int moeh_opts_main(moeh_opts_t *o, int argc, char **argv, const char *const *log_level,
                   const char *log_prefix)
{
    moeh_err_t err = {0};
    int rc = moeh_opts_parse(o, argc, argv, &err);
    if (rc == 1) {
        moeh_opts_free(o);
        return 0;
    }
    if (rc) {
        fprintf(stderr, "%s: %s\n", o->prog, err.msg);
        moeh_opts_free(o);
        return 2;
    }
    moeh_log_level_t lvl;
    if (moeh_log_parse_level(*log_level, &lvl)) {
        fprintf(stderr, "%s: --log-level: '%s' is not debug, info, warn or error\n", o->prog,
                *log_level);
        moeh_opts_free(o);
        return 2;
    }
    moeh_log_configure(lvl, log_prefix, NULL, NULL);
    return -1;
}

void moeh_install_signals(void (*handler)(int), int with_hup)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (with_hup) sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}
