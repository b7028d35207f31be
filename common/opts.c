/* opts.c - one table for flags and INI keys (see moeh_opts.h). */
#include "moeh_opts.h"

#include <ctype.h>
#include <ini.h>
#include <math.h>
#include <signal.h>
#include <string.h>

static const moeh_opt_t *find(const moeh_opts_t *o, const char *name)
{
    for (size_t i = 0; i < o->n_opts; i++)
        if (strcmp(o->opts[i].name, name) == 0) return &o->opts[i];
    return NULL;
}

unsigned moeh_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    unsigned row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        unsigned diag = row[0]; /* d[i-1][j-1] */
        row[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned up = row[j]; /* d[i-1][j] */
            unsigned best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb] > 99 ? 99 : row[lb];
}

/* Whether cand is nearer to typed than the best so far (*best_d edits, *best_p characters of
 * common prefix; start at 3 and 0), updating them if so: within 2 edits and fewer edits than
 * typed has characters; of equal distances the longer common prefix wins (--rond is nearer to
 * --rounds than to --bind, both 2 edits away). */
static int nearer(const char *typed, const char *cand, unsigned *best_d, size_t *best_p)
{
    unsigned d = moeh_edit_distance(typed, cand);
    size_t p = 0;
    while (typed[p] && typed[p] == cand[p])
        p++;
    if (d > 2 || d >= strlen(typed)) return 0;
    if (d > *best_d || (d == *best_d && p <= *best_p)) return 0;
    *best_d = d, *best_p = p;
    return 1;
}

const char *moeh_nearest_name(const char *typed, const char *const *names, size_t n)
{
    const char *best = NULL;
    unsigned best_d = 3;
    size_t best_p = 0;
    for (size_t i = 0; i < n; i++)
        if (nearer(typed, names[i], &best_d, &best_p)) best = names[i];
    return best;
}

/* " (did you mean --NAME?)" for the nearest option (nearer()), or "" */
static void did_you_mean(const moeh_opts_t *o, const char *typed, char *out, size_t out_len)
{
    const char *best = NULL;
    unsigned best_d = 3;
    size_t best_p = 0;
    int best_no = 0;
    for (size_t i = 0; i < o->n_opts; i++) {
        for (int no = 0; no < 2; no++) {
            char cand[80];
            if (no && o->opts[i].type != MOEH_OPT_BOOL) continue;
            snprintf(cand, sizeof cand, "%s%s", no ? "no-" : "", o->opts[i].name);
            if (nearer(typed, cand, &best_d, &best_p)) {
                best = o->opts[i].name;
                best_no = no;
            }
        }
    }
    if (best)
        snprintf(out, out_len, "did you mean --%s%s? ", best_no ? "no-" : "", best);
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
    case MOEH_OPT_DURATION:
        if (moeh_parse_duration_ms(val, (uint32_t *)opt->ptr) != 0) {
            snprintf(why, why_len,
                     "'%s' is not a duration: expected a number and a unit, ms, s, m or h "
                     "(e.g. 90s, 30m, 6h; at most 49 days)",
                     val);
            return -EINVAL;
        }
        return 0;
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
    const char *path;
    unsigned char in_file[MOEH_OPTS_MAX]; /* this file set opts[i] already */
    char why[320];
} ini_ctx_t;

/* The first line of `path` that sets `key` (for "given twice" errors), or 0. */
static int first_line_of_key(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[1024];
    int line = 0, found = 0;
    size_t kl = strlen(key);
    while (!found && fgets(buf, sizeof buf, f)) {
        line++;
        const char *p = buf;
        while (isspace((unsigned char)*p))
            p++;
        if (strncmp(p, key, kl) != 0) continue;
        p += kl;
        while (*p == ' ' || *p == '\t')
            p++;
        found = *p == '=' || *p == ':';
    }
    fclose(f);
    return found ? line : 0;
}

static int opts_ini_handler(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx_t *c = user;
    const moeh_opt_t *opt = find(c->o, name);
    if (!opt || !strcmp(name, "config")) {
        char hint[120];
        did_you_mean(c->o, name, hint, sizeof hint);
        if (hint[0]) { /* "did you mean --x? " -> "did you mean 'x'?" for a file */
            const moeh_opt_t *near = NULL;
            unsigned best_d = 3;
            size_t best_p = 0;
            for (size_t i = 0; i < c->o->n_opts; i++)
                if (nearer(name, c->o->opts[i].name, &best_d, &best_p)) near = &c->o->opts[i];
            if (near) snprintf(hint, sizeof hint, "did you mean '%s'? ", near->name);
        }
        snprintf(c->why, sizeof c->why, "unknown option '%s' (%ssee %s --help)", name, hint,
                 c->o->prog);
        return 0;
    }
    size_t idx = (size_t)(opt - c->o->opts);
    if (idx < MOEH_OPTS_MAX && c->in_file[idx]) {
        int first = first_line_of_key(c->path, name);
        if (first > 0)
            snprintf(c->why, sizeof c->why,
                     "'%s' is set twice (first on line %d): remove one of the two", name, first);
        else
            snprintf(c->why, sizeof c->why, "'%s' is set twice: remove one of the two", name);
        return 0;
    }
    if (idx < MOEH_OPTS_MAX) c->in_file[idx] = 1;
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
        char flag[64], def[128] = "";
        static const char *meta[] = {"STR", "N", "N", "X", "", "X", "TIME"};
        snprintf(flag, sizeof flag, "--%s %s", opt->name, meta[opt->type]);
        int required = 0;
        for (size_t r = 0; o->required && o->required[r]; r++)
            required |= o->required[r] == opt->ptr;
        /* the maximum of an integer is a "not set" sentinel: never print it as a number */
        switch (opt->type) {
        case MOEH_OPT_STR:
            if (*(const char **)opt->ptr)
                snprintf(def, sizeof def, " (default: %s)", *(const char **)opt->ptr);
            else if (!required)
                snprintf(def, sizeof def, " (default: none)");
            break;
        case MOEH_OPT_U32:
            if (*(uint32_t *)opt->ptr == UINT32_MAX)
                snprintf(def, sizeof def, " (default: none)");
            else
                snprintf(def, sizeof def, " (default: %u)", *(uint32_t *)opt->ptr);
            break;
        case MOEH_OPT_U64:
            if (*(uint64_t *)opt->ptr == UINT64_MAX)
                snprintf(def, sizeof def, " (default: none)");
            else
                snprintf(def, sizeof def, " (default: %llu)",
                         (unsigned long long)*(uint64_t *)opt->ptr);
            break;
        case MOEH_OPT_DURATION: {
            uint32_t ms = *(uint32_t *)opt->ptr;
            if (ms && ms % 3600000u == 0)
                snprintf(def, sizeof def, " (default: %uh)", ms / 3600000u);
            else if (ms && ms % 60000u == 0)
                snprintf(def, sizeof def, " (default: %um)", ms / 60000u);
            else if (ms % 1000u == 0)
                snprintf(def, sizeof def, " (default: %us)", ms / 1000u);
            else
                snprintf(def, sizeof def, " (default: %ums)", ms);
            break;
        }
        case MOEH_OPT_F32:
            snprintf(def, sizeof def, " (default: %g)", (double)*(float *)opt->ptr);
            break;
        case MOEH_OPT_F64:
            snprintf(def, sizeof def, " (default: %g)", *(double *)opt->ptr);
            break;
        case MOEH_OPT_BOOL:
            if (*(int *)opt->ptr) snprintf(def, sizeof def, " (default: on; --no-%s)", opt->name);
            break;
        }
        if (required) snprintf(def, sizeof def, " (required)");
        /* the help may say it in words already */
        if (strstr(opt->help, "(default") || strstr(opt->help, "[required]")) def[0] = '\0';
        fprintf(f, "  %-26s %s%s\n", flag, opt->help, def);
    }
    fprintf(f, "  %-26s %s\n  %-26s %s\n  %-26s %s\n", "--config FILE",
            "read options from an INI file first", "--help", "print this help and exit",
            "--version", "print the version and exit");
    fprintf(f, "a boolean --NAME is turned off by --no-NAME; usage errors exit with status 2\n");
}

/* A table in which one word means two things is a programming error (the first entry would
 * win silently, the second's pointer never set): names it and aborts. The words are each
 * option's name, --no-NAME of a boolean, and the parser's own config, help and version. */
static void check_table(const moeh_opts_t *o)
{
    static const char *const own[] = {"config", "help", "version"};
    for (size_t i = 0; i < o->n_opts; i++) {
        const char *name = o->opts[i].name, *clash = NULL;
        MOEH_ASSERT(name && name[0] && strncmp(name, "--", 2) != 0);
        for (size_t j = 0; j < i && !clash; j++)
            if (!strcmp(name, o->opts[j].name)) clash = "twice";
        for (size_t j = 0; j < o->n_opts && !clash; j++)
            if (o->opts[j].type == MOEH_OPT_BOOL && !strncmp(name, "no-", 3) &&
                !strcmp(name + 3, o->opts[j].name))
                clash = "and the boolean it negates";
        for (size_t k = 0; k < sizeof own / sizeof own[0] && !clash; k++)
            if (!strcmp(name, own[k])) clash = "although the parser itself takes it";
        if (!clash) continue;
        fprintf(stderr, "%s: bug: the option table lists --%s %s (entry %zu of %zu)\n", o->prog,
                name, clash, i + 1, o->n_opts);
        moeh_assert_fail("every option name in a table is unique", __FILE__, __LINE__);
    }
}

/* The end of the options in argv: the index of "--", or argc. */
static int options_end(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--")) return i;
    return argc;
}

/* Collects one positional argument; 0 or -EINVAL with err set. */
static int add_arg(moeh_opts_t *o, const char *a, moeh_err_t *err)
{
    if (o->max_args == 0)
        return moeh_errf(err, -EINVAL, "unexpected argument '%s' (see %s --help)", a, o->prog);
    if (o->n_args >= o->max_args || o->n_args >= MOEH_OPTS_MAX_ARGS)
        return moeh_errf(err, -EINVAL, "unexpected argument '%s': %s takes %zu %s (see --help)", a,
                         o->prog, o->max_args, o->args_name ? o->args_name : "argument(s)");
    o->args[o->n_args++] = a;
    return 0;
}

int moeh_opts_parse(moeh_opts_t *o, int argc, char **argv, moeh_err_t *err)
{
    if (o->n_opts > MOEH_OPTS_MAX)
        return moeh_errf(err, -EINVAL, "%s: more than %d options in one table", o->prog,
                         MOEH_OPTS_MAX);
    check_table(o);
    o->n_args = 0;
    const int end = options_end(argc, argv); /* words after "--" are positional */
    /* Pass 1: --help, --version, --config (so that flags override the file). */
    for (int i = 1; i < end; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            moeh_opts_print_help(o, stdout);
            return 1;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("%s %s\n", o->prog, MOEH_VERSION);
            return 1;
        }
    }
    for (int i = 1; i < end; i++) {
        if (strcmp(argv[i], "--config") != 0) continue;
        if (i + 1 >= end) return moeh_errf(err, -EINVAL, "--config needs a file name");
        ini_ctx_t c = {.o = o, .path = argv[i + 1]};
        int line = ini_parse(argv[i + 1], opts_ini_handler, &c);
        if (line < 0) return moeh_errf(err, -EINVAL, "%s: cannot open config file", argv[i + 1]);
        if (line > 0)
            return moeh_errf(err, -EINVAL, "%s:%d: %s", argv[i + 1], line,
                             c.why[0] ? c.why : "syntax error (expected 'name = value')");
    }
    /* Pass 2: flags and positional arguments. */
    for (int i = 1; i < end; i++) {
        const char *a = argv[i];
        if (a[0] == '-' && a[1] != '-' && a[1])
            return moeh_errf(err, -EINVAL,
                             "unknown option '%s' (options are --NAME; see %s --help)", a, o->prog);
        if (strncmp(a, "--", 2) != 0) {
            if (add_arg(o, a, err) != 0) return -EINVAL;
            continue;
        }
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
        int negated = 0;
        if (!opt && !strncmp(name, "no-", 3)) { /* --no-NAME turns a boolean off */
            opt = find(o, name + 3);
            if (opt && opt->type != MOEH_OPT_BOOL)
                return moeh_errf(err, -EINVAL, "--%s: --%s is not a boolean (it takes a value)",
                                 name, opt->name);
            if (opt && val)
                return moeh_errf(err, -EINVAL, "--%s takes no value (got '%s')", name, val);
            negated = opt != NULL;
        }
        if (!opt) {
            char hint[120];
            did_you_mean(o, name, hint, sizeof hint);
            return moeh_errf(err, -EINVAL, "unknown option '%s' (%ssee %s --help)", a, hint,
                             o->prog);
        }
        if (opt->type == MOEH_OPT_BOOL && !val) {
            *(int *)opt->ptr = !negated;
            if ((size_t)(opt - o->opts) < MOEH_OPTS_MAX) o->seen[opt - o->opts] = 1;
            continue;
        }
        if (!val) {
            if (i + 1 >= end) return moeh_errf(err, -EINVAL, "--%s needs a value", name);
            val = argv[++i];
        }
        char why[200];
        if (set_value(o, opt, val, 0, why, sizeof why) != 0)
            return moeh_errf(err, -EINVAL, "--%s: %s", name, why);
    }
    for (int i = end + 1; i < argc; i++)
        if (add_arg(o, argv[i], err) != 0) return -EINVAL;
    /* required options, in the order of the list */
    for (size_t r = 0; o->required && o->required[r]; r++) {
        for (size_t i = 0; i < o->n_opts && i < MOEH_OPTS_MAX; i++) {
            if (o->opts[i].ptr != o->required[r] || o->seen[i]) continue;
            return moeh_errf(err, -EINVAL, "missing required option --%s (%s; see %s --help)",
                             o->opts[i].name, o->opts[i].help, o->prog);
        }
    }
    return 0;
}

int moeh_opts_check_endpoint(const char *opt, const char *val, const char *example_host,
                             moeh_err_t *err)
{
    const char *sep = strstr(val, "://");
    if (!sep) {
        const char *colon = strrchr(val, ':');
        const char *port = colon ? colon + 1 : val;
        if (*port && strspn(port, "0123456789") == strlen(port))
            return moeh_errf(err, -EINVAL,
                             "--%s '%s': not a ZeroMQ endpoint; expected tcp://HOST:PORT, e.g. "
                             "tcp://%.*s:%s",
                             opt, val, colon ? (int)(colon - val) : (int)strlen(example_host),
                             colon ? val : example_host, port);
        return moeh_errf(err, -EINVAL,
                         "--%s '%s': not a ZeroMQ endpoint; expected tcp://HOST:PORT, e.g. "
                         "tcp://%s:7400",
                         opt, val, example_host);
    }
    if (!strncmp(val, "tcp://", 6)) {
        const char *hp = sep + 3, *colon = strrchr(hp, ':'), *rb = strrchr(hp, ']');
        if (colon && rb && colon < rb) colon = NULL; /* inside [v6]: no port */
        if (!colon)                                  /* the whole rest is the host */
            return moeh_errf(err, -EINVAL,
                             "--%s '%s': a tcp endpoint needs a port: tcp://HOST:PORT, e.g. "
                             "tcp://%s:7400",
                             opt, val, *hp ? hp : example_host);
        const char *port = colon + 1;
        int hl = colon > hp ? (int)(colon - hp) : (int)strlen(example_host);
        const char *host = colon > hp ? hp : example_host;
        char *end = NULL;
        unsigned long n = strtoul(port, &end, 10);
        int ok =
            !strcmp(port, "*") || (*port >= '0' && *port <= '9' && !*end && n >= 1 && n <= 65535);
        if (!ok)
            return moeh_errf(err, -EINVAL,
                             "--%s '%s': %s%s%s: tcp://HOST:PORT with a port 1..65535 (or * to "
                             "bind any), e.g. tcp://%.*s:7400",
                             opt, val, *port ? "'" : "no port after the ':'", port,
                             *port ? "' is not a port" : "", hl, host);
    }
    return 0;
}

int moeh_parse_duration_ms(const char *s, uint32_t *ms)
{
    char *end = NULL;
    errno = 0;
    if (!*s || *s == '-' || isspace((unsigned char)*s)) return -EINVAL;
    double x = strtod(s, &end);
    if (errno || end == s || !isfinite(x) || x < 0) return -EINVAL;
    double unit;
    if (!strcmp(end, "ms"))
        unit = 1;
    else if (!strcmp(end, "s"))
        unit = 1e3;
    else if (!strcmp(end, "m"))
        unit = 60e3;
    else if (!strcmp(end, "h"))
        unit = 3600e3;
    else if (!*end && x == 0)
        unit = 0;
    else
        return -EINVAL;
    double v = x * unit;
    if (v > (double)UINT32_MAX) return -EINVAL;
    *ms = (uint32_t)(v + 0.5);
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
    if (!log_level) return -1; /* a program that logs nothing of its own */
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
