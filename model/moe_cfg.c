/* moe_cfg.c - the one model spec (see moeh_moe.h): defaults, the limits of every layer, the
 * canonical JSON that travels in Welcome and checkpoints, and the command-line options of the
 * hyperparameters.
 *
 * Every field of moeh_moe_cfg_t has one row in k_fields: its JSON key, its kind, its range and,
 * for a hyperparameter a user sets, its option name and help. The JSON writer, the strict JSON
 * reader, the range checks of moeh_moe_cfg_validate and the option fragment all walk that table,
 * so a new hyperparameter is a field in moeh_moe.h, a default and a row here, and its use in
 * moe*.c; the binaries and the protocol pick it up unchanged. Rules that tie fields together
 * (which arch needs which encoder) are written out in moeh_moe_cfg_validate. */
#include "moeh_moe.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

/* The option fragment hands out pointers into the struct with the option parser's types. */
_Static_assert(sizeof(size_t) == sizeof(uint64_t), "size_t fields are parsed as U64 options");
_Static_assert(sizeof(moeh_arch_t) == sizeof(uint32_t), "arch is parsed as a U32 option");

moeh_moe_cfg_t moeh_moe_defaults(size_t n_static, size_t n_vars)
{
    moeh_moe_cfg_t c;
    memset(&c, 0, sizeof c);
    c.arch = MOEH_ARCH_MOE;
    c.d_emb = 128;
    c.d_hidden = 128;
    c.n_static = n_static;
    c.n_vars = n_vars;
    c.n_steps = 48;
    c.note_buckets = 1u << 16;
    c.img_size = 64;
    c.cnn_ch[0] = 16, c.cnn_ch[1] = 32, c.cnn_ch[2] = 64;
    c.n_tasks = 3;
    c.top_k = 0;
    c.temperature = 1.0f;
    c.lambda_lb = 0.01f;
    c.gate_sup = 1.0f;
    c.dropout = 0.0f;
    c.missing_init = 0.02f;
    c.max_batch = 64;
    c.seed = 1;
    return c;
}

typedef enum {
    K_ARCH,  /* moeh_arch_t, a JSON integer */
    K_SIZE,  /* size_t, a JSON integer (count elements) */
    K_INT,   /* int, a JSON integer */
    K_FLOAT, /* float, a JSON number that reads back to the same float (count elements) */
    K_SEED,  /* uint64_t, a JSON string of decimal digits (JSON numbers stop at 2^53) */
} kind_t;

typedef struct {
    const char *key; /* JSON key and the name in messages */
    size_t off;      /* offsetof(moeh_moe_cfg_t, field) */
    kind_t kind;
    size_t count; /* 1, or the length of an array field (a JSON array) */
    double lo, hi;
    int lo_open;      /* lo itself is outside the range */
    int hi_open;      /* hi itself is outside the range */
    int runtime;      /* free to differ between a checkpoint and the model loading it */
    const char *flag; /* command-line option (NULL: not set by users: data shapes, workspace) */
    const char *help;
} field_t;

#define F(name) #name, offsetof(moeh_moe_cfg_t, name)
/* JSON key order = this order (canonical). Ranges are checked per element. */
static const field_t k_fields[] = {
    {F(arch), K_ARCH, 1, 0, MOEH_ARCH_EARLY, 0, 0, 0, "arch",
     "model: 0 MoE-Health, 1-3 unimodal EHR/notes/image, 4 joint, 5 late, 6 early fusion"},
    {F(d_emb), K_SIZE, 1, 1, 65536, 0, 0, 0, "d-emb", "embedding width of each modality"},
    {F(d_hidden), K_SIZE, 1, 1, 65536, 0, 0, 0, "d-hidden", "hidden width of experts and gate"},
    {F(n_static), K_SIZE, 1, 0, 1u << 20, 0, 0, 0, NULL, NULL},
    {F(n_vars), K_SIZE, 1, 0, 4096, 0, 0, 0, NULL, NULL},
    {F(n_steps), K_SIZE, 1, 0, 1000, 0, 0, 0, NULL, NULL},
    {F(note_buckets), K_SIZE, 1, 0, 1u << 24, 0, 0, 0, "note-buckets",
     "hashed n-gram buckets of the notes"},
    {F(note_dim), K_SIZE, 1, 0, 1u << 16, 0, 0, 0, NULL, NULL},
    {F(img_size), K_SIZE, 1, 0, 1024, 0, 0, 0, NULL, NULL},
    {F(img_dim), K_SIZE, 1, 0, 1u << 16, 0, 0, 0, NULL, NULL},
    {F(cnn_ch), K_SIZE, 3, 0, 1024, 0, 0, 0, NULL, NULL},
    {F(n_tasks), K_SIZE, 1, 1, MOEH_MAX_TASKS, 0, 0, 0, NULL, NULL},
    {F(top_k), K_SIZE, 1, 0, MOEH_MAX_EXPERTS, 0, 0, 0, "top-k", "gate top-k (0: dense softmax)"},
    {F(temperature), K_FLOAT, 1, 0, INFINITY, 1, 1, 0, "temperature", "gate softmax temperature"},
    {F(lambda_lb), K_FLOAT, 1, 0, INFINITY, 0, 1, 0, "lambda-lb",
     "load-balancing loss weight (joint training)"},
    {F(gate_sup), K_FLOAT, 1, 0, INFINITY, 0, 1, 0, "gate-sup",
     "gate supervision weight during warm-up"},
    {F(gate_sup_joint), K_FLOAT, 1, 0, INFINITY, 0, 1, 0, "gate-sup-joint",
     "gate supervision weight kept in joint training (0: none)"},
    {F(dropout), K_FLOAT, 1, 0, 1, 0, 1, 0, "dropout",
     "dropout on the expert hidden layers while training"},
    {F(missing_init), K_FLOAT, 1, 0, INFINITY, 0, 1, 0, "missing-init",
     "standard deviation of the missing-modality embeddings at initialisation"},
    {F(missing_zero), K_SIZE, 1, 0, 1, 0, 0, 0, "missing-zero",
     "ablation: 1 = an absent modality's encoding is zeros (no learnable missingness "
     "embeddings)"},
    {F(gate_no_avail), K_SIZE, 1, 0, 1, 0, 0, 0, "gate-no-avail",
     "ablation: 1 = the gate does not see the availability mask"},
    {F(pos_weight), K_FLOAT, MOEH_MAX_TASKS, 0, INFINITY, 0, 1, 0, NULL, NULL},
    {F(max_batch), K_SIZE, 1, 1, 65536, 0, 0, 1, NULL, NULL},
    {F(threads), K_INT, 1, 0, 64, 0, 0, 1, NULL, NULL},
    {F(seed), K_SEED, 1, 0, 0, 0, 0, 1, NULL, NULL},
};
#undef F
#define N_FIELDS (sizeof k_fields / sizeof k_fields[0])

/* Fields added after the spec hash was fixed (the ablations of issue 15): written to the JSON
 * only when non-zero and read as 0 when absent, so the default JSON and its hash are those of
 * the models and checkpoints made before them. */
static int optional(const field_t *f)
{
    return f->off == offsetof(moeh_moe_cfg_t, missing_zero) ||
           f->off == offsetof(moeh_moe_cfg_t, gate_no_avail);
}

static void *at(moeh_moe_cfg_t *c, const field_t *f)
{
    return (char *)c + f->off;
}

static const void *cat(const moeh_moe_cfg_t *c, const field_t *f)
{
    return (const char *)c + f->off;
}

/* Element i of field f as a double (not for K_SEED). */
static double get_num(const moeh_moe_cfg_t *c, const field_t *f, size_t i)
{
    const void *p = cat(c, f);
    switch (f->kind) {
    case K_ARCH:
        return (double)*(const moeh_arch_t *)p;
    case K_SIZE:
        return (double)((const size_t *)p)[i];
    case K_INT:
        return (double)*(const int *)p;
    case K_FLOAT:
        return (double)((const float *)p)[i];
    case K_SEED:
        break;
    }
    return 0;
}

/* ---- validation ------------------------------------------------------------------------------ */
static int out_of_range(const field_t *f, size_t i, double v, moeh_err_t *err)
{
    char name[48];
    if (f->count > 1)
        snprintf(name, sizeof name, "%s[%zu]", f->key, i);
    else
        snprintf(name, sizeof name, "%s", f->key);
    if (f->kind == K_FLOAT) {
        if (isinf(f->hi))
            return moeh_errf(err, -EINVAL, "model config: %s = %g, expected a finite number %s %g",
                             name, v, f->lo_open ? ">" : ">=", f->lo);
        return moeh_errf(err, -EINVAL, "model config: %s = %g, expected %c%g, %g%c", name, v,
                         f->lo_open ? '(' : '[', f->lo, f->hi, f->hi_open ? ')' : ']');
    }
    return moeh_errf(err, -EINVAL, "model config: %s = %.0f, expected %.0f..%.0f", name, v, f->lo,
                     f->hi);
}

static int in_range(const field_t *f, double v)
{
    if (!isfinite(v)) return 0;
    if (f->lo_open ? !(v > f->lo) : !(v >= f->lo)) return 0;
    if (f->hi_open ? !(v < f->hi) : !(v <= f->hi)) return 0;
    return 1;
}

int moeh_moe_cfg_validate(const moeh_moe_cfg_t *c, moeh_err_t *err)
{
    for (size_t k = 0; k < N_FIELDS; k++) {
        const field_t *f = &k_fields[k];
        if (f->kind == K_SEED) continue;
        for (size_t i = 0; i < f->count; i++) {
            double v = get_num(c, f, i);
            if (!in_range(f, v)) return out_of_range(f, i, v, err);
        }
    }
    uint8_t used = moeh_moe_arch_modalities(c->arch);
    if (c->gate_no_avail && c->arch != MOEH_ARCH_MOE)
        return moeh_errf(err, -EINVAL,
                         "model config: gate_no_avail = 1 needs arch 0 (MoE-Health): arch %d has "
                         "no gate",
                         (int)c->arch);
    if (c->missing_zero && c->arch == MOEH_ARCH_EARLY)
        return moeh_errf(err, -EINVAL,
                         "model config: missing_zero = 1: early fusion (arch 6) has no "
                         "missingness embeddings");
    if (c->arch == MOEH_ARCH_EARLY && c->img_size % 8)
        return moeh_errf(err, -EINVAL,
                         "model config: img_size = %zu, early fusion pools images to 8x8 and "
                         "needs a multiple of 8",
                         c->img_size);
    if ((used & 1) && (!c->n_static || !c->n_vars || !c->n_steps))
        return moeh_errf(err, -EINVAL,
                         "model config: n_static = %zu, n_vars = %zu, n_steps = %zu: the EHR "
                         "encoder needs each > 0",
                         c->n_static, c->n_vars, c->n_steps);
    if ((used & 2) && !c->note_buckets && !c->note_dim)
        return moeh_errf(err, -EINVAL,
                         "model config: note_buckets and note_dim are 0: notes need hashed "
                         "buckets or precomputed vectors");
    if ((used & 4) && c->img_size && c->img_size % 4)
        return moeh_errf(err, -EINVAL,
                         "model config: img_size = %zu, expected a multiple of 4 (64 or 128)",
                         c->img_size);
    for (int i = 0; i < 3; i++)
        if ((used & 4) && c->img_size && !c->cnn_ch[i])
            return moeh_errf(err, -EINVAL, "model config: cnn_ch[%d] = 0, the CNN needs > 0", i);
    if ((used & 4) && !c->img_size && !c->img_dim)
        return moeh_errf(err, -EINVAL,
                         "model config: img_size and img_dim are 0: images need pixels or "
                         "precomputed vectors");
    return 0;
}

int moeh_moe_cfg_validate_hyper(const moeh_moe_cfg_t *cfg, moeh_err_t *err)
{
    moeh_moe_cfg_t c = *cfg;
    c.n_static = 1, c.n_vars = 1, c.n_steps = 48, c.img_size = 64; /* stand-ins that pass */
    return moeh_moe_cfg_validate(&c, err);
}

uint8_t moeh_moe_arch_modalities(moeh_arch_t arch)
{
    switch (arch) {
    case MOEH_ARCH_UNI_EHR:
        return 1;
    case MOEH_ARCH_UNI_NOTES:
        return 2;
    case MOEH_ARCH_UNI_IMG:
        return 4;
    default:
        return 7;
    }
}

/* ---- canonical JSON -------------------------------------------------------------------------- */
/* The JSON is hashed (moeh_moe_cfg_json_hash), so its bytes are fixed: keys in k_fields' order,
 * no spaces, integers in decimal, floats as below, the seed as a string of digits. cJSON builds
 * it, but every number goes in as raw text: cJSON's own number printer (%1.15g, then %1.17g)
 * would write 0.01f as 0.0099999997764825821 and change every hash. */

/* Adds the shortest %g text (1..9 significant digits) that reads back, through strtod and a
 * cast as cJSON and then this file read it, to exactly x. 9 digits always do for a finite
 * float. NULL when out of memory. */
static cJSON *raw_float(float x)
{
    char t[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(t, sizeof t, "%.*g", prec, (double)x);
        if ((float)strtod(t, NULL) == x) break;
    }
    return cJSON_CreateRaw(t);
}

/* Element i of field f (not K_SEED) as its canonical JSON text. */
static cJSON *raw_num(const moeh_moe_cfg_t *c, const field_t *f, size_t i)
{
    char t[32];
    if (f->kind == K_FLOAT) return raw_float(((const float *)cat(c, f))[i]);
    if (f->kind == K_SIZE)
        snprintf(t, sizeof t, "%zu", ((const size_t *)cat(c, f))[i]);
    else if (f->kind == K_INT)
        snprintf(t, sizeof t, "%d", *(const int *)cat(c, f));
    else
        snprintf(t, sizeof t, "%d", (int)*(const moeh_arch_t *)cat(c, f));
    return cJSON_CreateRaw(t);
}

int moeh_moe_cfg_to_json(const moeh_moe_cfg_t *c, char **json, moeh_err_t *err)
{
    *json = NULL;
    for (size_t k = 0; k < N_FIELDS; k++) {
        const field_t *f = &k_fields[k];
        for (size_t i = 0; f->kind == K_FLOAT && i < f->count; i++)
            if (!isfinite(((const float *)cat(c, f))[i]))
                return moeh_errf(err, -EINVAL, "model config: %s is not finite", f->key);
    }
    cJSON *o = cJSON_CreateObject();
    int ok = o != NULL;
    for (size_t k = 0; ok && k < N_FIELDS; k++) {
        const field_t *f = &k_fields[k];
        if (optional(f) && get_num(c, f, 0) == 0) continue; /* default: not written */
        cJSON *v = NULL;
        if (f->kind == K_SEED) {
            char t[24];
            snprintf(t, sizeof t, "%" PRIu64, *(const uint64_t *)cat(c, f));
            v = cJSON_CreateString(t);
        } else if (f->count == 1) {
            v = raw_num(c, f, 0);
        } else if ((v = cJSON_CreateArray())) {
            for (size_t i = 0; ok && i < f->count; i++) {
                cJSON *x = raw_num(c, f, i);
                ok = x && cJSON_AddItemToArray(v, x);
                if (!ok) cJSON_Delete(x);
            }
        }
        if (!ok || !v || !cJSON_AddItemToObject(o, f->key, v)) {
            cJSON_Delete(v);
            ok = 0;
        }
    }
    char *txt = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!txt) return moeh_errf(err, -ENOMEM, "out of memory");
    /* callers free() it: a copy, in case cJSON's hooks are not malloc's */
    *json = strdup(txt);
    cJSON_free(txt);
    return *json ? 0 : moeh_errf(err, -ENOMEM, "out of memory");
}

/* One JSON number into element i of field f: an integer for integer kinds, finite for
 * floats; the range is moeh_moe_cfg_validate's business, except what the C type cannot hold. */
static int read_num(moeh_moe_cfg_t *c, const field_t *f, size_t i, const cJSON *it, moeh_err_t *err)
{
    if (!cJSON_IsNumber(it))
        return moeh_errf(err, -EINVAL, "model config: %s: expected a number%s", f->key,
                         f->count > 1 ? " in each element" : "");
    double v = it->valuedouble;
    void *p = at(c, f);
    if (f->kind == K_FLOAT) {
        if (!isfinite(v) || fabs(v) > 3.4028234663852886e38)
            return moeh_errf(err, -EINVAL, "model config: %s: %g does not fit a float", f->key, v);
        ((float *)p)[i] = (float)v;
        return 0;
    }
    double max = f->kind == K_SIZE ? 9007199254740992.0 : 2147483647.0;
    if (!(v >= 0 && v <= max) || v != floor(v))
        return moeh_errf(err, -EINVAL, "model config: %s: %g is not a non-negative integer", f->key,
                         v);
    if (f->kind == K_SIZE)
        ((size_t *)p)[i] = (size_t)v;
    else if (f->kind == K_INT)
        *(int *)p = (int)v;
    else
        *(moeh_arch_t *)p = (moeh_arch_t)(int)v;
    return 0;
}

static int read_field(moeh_moe_cfg_t *c, const field_t *f, const cJSON *it, moeh_err_t *err)
{
    if (f->kind == K_SEED) {
        const char *s = cJSON_GetStringValue(it);
        if (!s || !*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 20)
            return moeh_errf(err, -EINVAL, "model config: %s: expected a string of decimal digits",
                             f->key);
        errno = 0;
        unsigned long long v = strtoull(s, NULL, 10);
        if (errno)
            return moeh_errf(err, -EINVAL, "model config: %s: %s does not fit 64 bits", f->key, s);
        *(uint64_t *)at(c, f) = (uint64_t)v;
        return 0;
    }
    if (f->count == 1) return read_num(c, f, 0, it, err);
    if (!cJSON_IsArray(it) || (size_t)cJSON_GetArraySize(it) != f->count)
        return moeh_errf(err, -EINVAL, "model config: %s: expected an array of %zu numbers", f->key,
                         f->count);
    size_t i = 0;
    int rc;
    for (const cJSON *x = it->child; x; x = x->next, i++)
        if ((rc = read_num(c, f, i, x, err))) return rc;
    return 0;
}

int moeh_moe_cfg_from_json(const char *json, moeh_moe_cfg_t *c, moeh_err_t *err)
{
    moeh_moe_cfg_t tmp;
    memset(&tmp, 0, sizeof tmp);
    int rc = -EINVAL;
    uint8_t seen[N_FIELDS] = {0};
    cJSON *o = cJSON_ParseWithOpts(json, NULL, 1); /* nothing after the object */
    if (!o || !cJSON_IsObject(o)) {
        moeh_errf(err, rc, "model config: not a JSON object");
        goto out;
    }
    for (const cJSON *it = o->child; it; it = it->next) {
        size_t k = 0;
        while (k < N_FIELDS && strcmp(k_fields[k].key, it->string) != 0)
            k++;
        if (k == N_FIELDS) {
            moeh_errf(err, rc, "model config: unknown key \"%.64s\"", it->string);
            goto out;
        }
        if (seen[k]) {
            moeh_errf(err, rc, "model config: key \"%s\" appears twice", it->string);
            goto out;
        }
        seen[k] = 1;
        if ((rc = read_field(&tmp, &k_fields[k], it, err))) goto out;
        rc = -EINVAL;
    }
    for (size_t k = 0; k < N_FIELDS; k++)
        if (!seen[k] && !optional(&k_fields[k])) {
            moeh_errf(err, rc, "model config: missing key \"%s\"", k_fields[k].key);
            goto out;
        }
    *c = tmp;
    rc = 0;
out:
    cJSON_Delete(o);
    return rc;
}

int moeh_moe_cfg_diff(const moeh_moe_cfg_t *a, const moeh_moe_cfg_t *b, const char *a_name,
                      const char *b_name, char *out, size_t cap)
{
    int n = 0;
    size_t len = cap ? strlen(out) : 0;
    for (size_t k = 0; k < N_FIELDS; k++) {
        const field_t *f = &k_fields[k];
        if (f->runtime) continue;
        for (size_t i = 0; i < f->count; i++) {
            double x = get_num(a, f, i), y = get_num(b, f, i);
            if (x == y) continue;
            n++;
            if (len + 1 >= cap) continue;
            char name[48];
            if (f->count > 1)
                snprintf(name, sizeof name, "%s[%zu]", f->key, i);
            else
                snprintf(name, sizeof name, "%s", f->key);
            int w =
                snprintf(out + len, cap - len, " %s (%s %g, %s %g)", name, a_name, x, b_name, y);
            len = w < 0 ? cap : len + (size_t)w < cap ? len + (size_t)w : cap - 1;
        }
    }
    return n;
}

uint64_t moeh_moe_cfg_json_hash(const char *json)
{
    return XXH64(json, strlen(json), 0x6d6f6563);
}

/* ---- command-line options -------------------------------------------------------------------- */
int moeh_moe_cfg_options(moeh_moe_cfg_t *c, moeh_opt_t *opts, size_t *n, size_t cap)
{
    for (size_t k = 0; k < N_FIELDS; k++) {
        const field_t *f = &k_fields[k];
        if (!f->flag) continue;
        if (*n >= cap) return -ENOSPC;
        MOEH_ASSERT(f->count == 1 &&
                    (f->kind == K_FLOAT || f->kind == K_ARCH || f->kind == K_SIZE));
        moeh_opt_type_t t = f->kind == K_FLOAT  ? MOEH_OPT_F32
                            : f->kind == K_ARCH ? MOEH_OPT_U32
                                                : MOEH_OPT_U64;
        opts[(*n)++] = (moeh_opt_t){f->flag, t, at(c, f), f->help};
    }
    return 0;
}
