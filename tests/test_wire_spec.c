/* test_wire_spec.c - the model spec on the wire (ModelSpec, protocol 3). A Welcome carries the
 * model's canonical JSON and the layout counts the wire needs to size tensors. The wire checks
 * only that the JSON is a non-empty, bounded, NUL-free UTF-8 text of the right protobuf type
 * and that the counts are in range: a configuration breaking a layer limit passes the wire. The
 * agent then refuses a Welcome whose spec the model library refuses, naming the field, and is
 * admitted with a valid one (a fake coordinator on a ROUTER socket, the real moeh_agent_run). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "wire_util.h"

#include "moeh_agent.h"
#include "moeh_dataset.h"
#include "moeh_moe.h"

#include <errno.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the wire ------------------------------------------------------------------------------ */

static char g_text[MOEH_WIRE_MAX_CONFIG_JSON + 2];

/* A config_json of n bytes of 'j'. */
static void welcome_json_len(msg_t *m, size_t n)
{
    mk_welcome(m);
    memset(g_text, 'j', n);
    g_text[n] = '\0';
    m->spec.config_json = g_text;
}

static void c_json_too_long(msg_t *m)
{
    welcome_json_len(m, MOEH_WIRE_MAX_CONFIG_JSON + 1);
}

static void c_json_at_limit(msg_t *m)
{
    welcome_json_len(m, MOEH_WIRE_MAX_CONFIG_JSON);
}

static void c_json_empty(msg_t *m)
{
    welcome_json_len(m, 0);
}

#define WELCOME_JSON(name, text)                                                                   \
    static void name(msg_t *m)                                                                     \
    {                                                                                              \
        mk_welcome(m);                                                                             \
        m->spec.config_json = (char *)(text);                                                      \
    }
WELCOME_JSON(c_utf8_continuation, "{\"a\":\"\x80\"}")
WELCOME_JSON(c_utf8_overlong, "{\"a\":\"\xc0\xaf\"}")
WELCOME_JSON(c_utf8_surrogate, "{\"a\":\"\xed\xa0\x80\"}")
WELCOME_JSON(c_utf8_truncated, "{\"a\":\"\xe2\x82")
WELCOME_JSON(c_utf8_too_big, "\xf4\x90\x80\x80")
WELCOME_JSON(c_utf8_five_bytes, "\xf8\x88\x80\x80\x80")
WELCOME_JSON(c_utf8_ff, "{\xff}")
WELCOME_JSON(c_utf8_valid, "{\"note\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e\"}")
/* the canonical JSON of a config that breaks layer limits (top_k 9, d_emb 0, 4 CNN channels)
 * and is not even complete: not the wire's business */
WELCOME_JSON(c_layer_limits_pass,
             "{\"arch\":0,\"d_emb\":0,\"top_k\":9,\"cnn_ch\":[1,2,3,4],\"temperature\":-1}")

#define WELCOME_MUT(name, body)                                                                    \
    static void name(msg_t *m)                                                                     \
    {                                                                                              \
        mk_welcome(m);                                                                             \
        body;                                                                                      \
    }
WELCOME_MUT(c_tasks0, m->spec.n_tasks = 0)
WELCOME_MUT(c_tasks9, m->spec.n_tasks = MOEH_WIRE_MAX_TASKS + 1)
WELCOME_MUT(c_tasks8, m->spec.n_tasks = MOEH_WIRE_MAX_TASKS)
WELCOME_MUT(c_experts0, m->spec.n_experts = 0)
WELCOME_MUT(c_experts8, m->spec.n_experts = MOEH_N_COMBOS + 1)
WELCOME_MUT(c_norm_big, m->spec.n_norm = (1u << 21) + 1)
WELCOME_MUT(c_params0, m->spec.n_params = 0)
WELCOME_MUT(c_groups33, m->spec.n_groups = 33)

static const wire_case_t k_spec_cases[] = {
    {"config_json one byte too long", c_json_too_long, &k_lim, -EBADMSG,
     "welcome.model.config_json: longer than 4096 bytes"},
    {"config_json at the limit", c_json_at_limit, &k_lim, 0, NULL},
    {"config_json empty", c_json_empty, &k_lim, -EBADMSG, "welcome.model.config_json: empty"},
    {"lone continuation byte", c_utf8_continuation, &k_lim, -EBADMSG,
     "welcome.model.config_json: invalid UTF-8 at byte 6"},
    {"overlong '/'", c_utf8_overlong, &k_lim, -EBADMSG, "invalid UTF-8 at byte 6"},
    {"UTF-16 surrogate", c_utf8_surrogate, &k_lim, -EBADMSG, "invalid UTF-8 at byte 6"},
    {"truncated sequence", c_utf8_truncated, &k_lim, -EBADMSG, "invalid UTF-8 at byte 6"},
    {"above U+10FFFF", c_utf8_too_big, &k_lim, -EBADMSG, "invalid UTF-8 at byte 0"},
    {"5-byte form", c_utf8_five_bytes, &k_lim, -EBADMSG, "invalid UTF-8 at byte 0"},
    {"0xff", c_utf8_ff, &k_lim, -EBADMSG, "invalid UTF-8 at byte 1"},
    {"2-, 3- and 4-byte characters", c_utf8_valid, &k_lim, 0, NULL},
    {"layer limits are the model's", c_layer_limits_pass, &k_lim, 0, NULL},
    {"also before negotiation", c_layer_limits_pass, &k_none, 0, NULL},
    {"n_tasks 0", c_tasks0, &k_lim, -EBADMSG, "welcome.model.n_tasks: 0, expected 1..8"},
    {"n_tasks 9", c_tasks9, &k_lim, -EBADMSG, "welcome.model.n_tasks: 9"},
    {"n_tasks 8", c_tasks8, &k_lim, 0, NULL},
    {"n_experts 0", c_experts0, &k_lim, -EBADMSG, "welcome.model.n_experts: 0, expected 1..7"},
    {"n_experts 8", c_experts8, &k_lim, -EBADMSG, "welcome.model.n_experts: 8"},
    {"n_norm over 2^21", c_norm_big, &k_lim, -EBADMSG, "welcome.model.n_norm: 2097153"},
    {"n_params 0", c_params0, &k_lim, -EBADMSG, "n_params 1..2^28"},
    {"n_groups 33", c_groups33, &k_lim, -EBADMSG, "n_groups 1..32"},
};

static void test_welcome_spec_checks(void **state)
{
    WIRE_RUN_CASES(k_spec_cases);
}

/* The encoded Welcome of mk_welcome with config_json "abXcd", and the offset of its 'X'. */
static uint8_t *welcome_bytes(msg_t *m, size_t *len, size_t *x_at)
{
    mk_welcome(m);
    m->spec.config_json = "abXcd";
    uint8_t *hdr = NULL;
    assert_int_equal(moeh_wire_pack(&m->env, NULL, 0, &hdr, len), 0);
    uint8_t *x = memchr(hdr, 'X', *len);
    assert_non_null(x);
    *x_at = (size_t)(x - hdr);
    assert_memory_equal(hdr + *x_at - 5,
                        "\xc2\x01\x05"
                        "ab",
                        5); /* field 24, 5 bytes */
    return hdr;
}

/* What protobuf-c cannot tell a C string: a NUL inside it (the decoder would cut the text
 * there), and a config_json that is not a length-delimited field at all. */
static void test_welcome_spec_bytes(void **state)
{
    msg_t m;
    size_t len, x;
    uint8_t *hdr = welcome_bytes(&m, &len, &x);
    Moeh__Envelope *e = NULL;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_wire_decode(&k_lim, hdr, len, NULL, 0, &e, &err), 0); /* control */
    assert_string_equal(e->welcome->model->config_json, "abXcd");
    moeh__envelope__free_unpacked(e, NULL);
    hdr[x] = '\0';
    check_reject_raw(&k_lim, hdr, len, NULL, 0, -EBADMSG, "welcome: a string holds a NUL byte");
    /* field 24 as a varint (wire type 0) of the same length: "ab" becomes the varint's bytes */
    hdr[x] = 'X';
    hdr[x - 5] = 0xc0, hdr[x - 3] = 0x80, hdr[x - 2] = 0x80, hdr[x - 1] = 0x80, hdr[x] = 0x01;
    memcpy(hdr + x + 1, "\x20\x03", 2); /* "cd" -> n_tasks = 3, keeping the length */
    check_reject_raw(&k_lim, hdr, len, NULL, 0, -EBADMSG, "not a valid moeh.Envelope");
    free(hdr);
}

/* ---- the agent ----------------------------------------------------------------------------- */

typedef struct {
    void *ctx, *router;
    const char *config_json;
    Moeh__ModelSpec spec;
    int hello_seen, sent;
} fake_coord_t;

/* The fake coordinator's thread: waits for the agent's Hello (up to 10 s), answers with a
 * Welcome carrying f->spec, then a Bye (which ends an admitted agent's run with 0). */
static void *fake_coord(void *arg)
{
    fake_coord_t *f = arg;
    moeh_msg_t m;
    memset(&m, 0, sizeof m);
    for (int i = 0; i < 200 && !f->hello_seen; i++) {
        zmq_pollitem_t it = {.socket = f->router, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 50) <= 0) continue;
        moeh_err_t err = {{0}};
        if (moeh_wire_recv(f->router, 1, &k_none, &m, &err) == 0 &&
            m.env->type == MOEH__MSG_TYPE__HELLO) {
            f->hello_seen = 1;
            break;
        }
        moeh_msg_clear(&m);
    }
    if (!f->hello_seen) return NULL;
    Moeh__Envelope env = MOEH__ENVELOPE__INIT;
    Moeh__Welcome w = MOEH__WELCOME__INIT;
    w.site_id = "site-A", w.model = &f->spec, w.heartbeat_ms = 1000, w.eval_bins = 10;
    env.type = MOEH__MSG_TYPE__WELCOME, env.body_case = MOEH__ENVELOPE__BODY_WELCOME;
    env.welcome = &w;
    int rc = moeh_wire_send(f->router, m.routing_id, m.routing_id_len, &env, NULL, 0);
    if (rc == 0)
        rc = moeh_wire_send_simple(f->router, m.routing_id, m.routing_id_len, MOEH__MSG_TYPE__BYE,
                                   "that was all", MOEH__BYE_STATUS__BYE_STATUS_FINISHED);
    f->sent = rc == 0;
    moeh_msg_clear(&m);
    return NULL;
}

static char g_dir[256];

/* A small dataset (6 EHR rows: 3 static features, 2 hourly variables, 8 px images). */
static void write_dataset(const char *dir)
{
    moeh_dataset_t *ds = NULL;
    moeh_err_t err = {{0}};
    assert_int_equal(moeh_dataset_create(6, 3, 2, 8, &ds, &err), 0);
    for (size_t i = 0; i < ds->n; i++) {
        ds->ids[2 * i] = (int64_t)i + 1, ds->ids[2 * i + 1] = (int64_t)i + 100;
        ds->avail[i * MOEH_N_MODS] = 1;
        for (size_t t = 0; t < MOEH_N_TASKS; t++)
            ds->label_mask[i * MOEH_N_TASKS + t] = 1, ds->labels[i * MOEH_N_TASKS + t] = i % 2;
    }
    assert_int_equal(moeh_dataset_write(ds, dir, &err), 0);
    moeh_dataset_destroy(&ds);
}

/* The model both sides build from cfg, as the coordinator describes it. */
static void describe(const moeh_moe_cfg_t *cfg, Moeh__ModelSpec *spec)
{
    moeh_moe_t *model = NULL;
    assert_int_equal(moeh_moe_create(cfg, &model, NULL), 0);
    moeh_params_t *p = moeh_moe_params(model);
    moeh__model_spec__init(spec);
    spec->spec_hash = moeh_params_spec_hash(p);
    spec->n_params = p->n;
    spec->n_groups = (uint32_t)p->n_groups;
    spec->n_experts = (uint32_t)moeh_moe_n_experts(model);
    spec->n_norm = (uint32_t)(cfg->n_static + cfg->n_vars);
    spec->n_tasks = (uint32_t)cfg->n_tasks;
    moeh_moe_destroy(&model);
}

/* Runs the agent against a fake coordinator that welcomes it with config_json (and the layout
 * of `layout`). Returns the agent's code; err gets its message. */
static int run_agent(const char *config_json, const moeh_moe_cfg_t *layout, moeh_err_t *err)
{
    fake_coord_t f = {0};
    describe(layout, &f.spec);
    f.spec.config_json = (char *)config_json;
    f.ctx = zmq_ctx_new();
    assert_non_null(f.ctx);
    f.router = zmq_socket(f.ctx, ZMQ_ROUTER);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(f.router, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_bind(f.router, "tcp://127.0.0.1:*"), 0);
    char endpoint[256];
    size_t el = sizeof endpoint;
    assert_int_equal(zmq_getsockopt(f.router, ZMQ_LAST_ENDPOINT, endpoint, &el), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, fake_coord, &f), 0);
    moeh_agent_cfg_t ac;
    moeh_agent_cfg_defaults(&ac);
    ac.connect = endpoint, ac.site_id = "site-A", ac.dataset_dir = g_dir, ac.insecure = 1;
    ac.give_up_ms = 15000;
    char out[300]; /* what the site keeps (its local metrics) */
    snprintf(out, sizeof out, "%s/site-out", g_dir);
    assert_true(mkdir(out, 0700) == 0 || errno == EEXIST);
    ac.out_dir = out;
    volatile sig_atomic_t stop = 0;
    int rc = moeh_agent_run(&ac, &stop, err);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_true(f.hello_seen && f.sent);
    zmq_close(f.router);
    zmq_ctx_term(f.ctx);
    return rc;
}

static moeh_moe_cfg_t agent_cfg(void)
{
    moeh_moe_cfg_t c = moeh_moe_defaults(3, 2);
    c.d_emb = 4, c.d_hidden = 4, c.note_buckets = 64, c.img_size = 8, c.max_batch = 8;
    c.cnn_ch[0] = 2, c.cnn_ch[1] = 2, c.cnn_ch[2] = 2;
    return c;
}

/* A valid spec: the agent builds the model, is admitted and goes on to the end of the run: the
 * fake coordinator's Bye FINISHED comes without the final model, which the agent refuses
 * (-EPROTO, "did not get the final model") rather than a spec error. */
static void test_agent_accepts_valid_spec(void **state)
{
    moeh_moe_cfg_t c = agent_cfg();
    char *js = NULL;
    assert_int_equal(moeh_moe_cfg_to_json(&c, &js, NULL), 0);
    moeh_err_t err = {{0}};
    int rc = run_agent(js, &c, &err);
    if (!strstr(err.msg, "did not get the final model")) print_error("agent: %s\n", err.msg);
    assert_int_equal(rc, -EPROTO);
    assert_non_null(strstr(err.msg, "did not get the final model"));
    assert_null(strstr(err.msg, "model spec"));
    free(js);
}

/* A spec the model library refuses: the agent stops at the Welcome (-EPROTO), naming the
 * field, and never builds a model; the same for JSON it cannot parse. */
static void test_agent_refuses_invalid_spec(void **state)
{
    moeh_moe_cfg_t c = agent_cfg(), bad = c;
    bad.top_k = 9; /* the wire lets it through: only the model knows MoE has 7 experts */
    char *js = NULL;
    assert_int_equal(moeh_moe_cfg_to_json(&bad, &js, NULL), 0);
    moeh_err_t err = {{0}};
    assert_int_equal(run_agent(js, &c, &err), -EPROTO);
    if (!strstr(err.msg, "top_k = 9")) print_error("agent: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "the coordinator's model spec is refused"));
    assert_non_null(strstr(err.msg, "top_k = 9, expected 0..7"));
    free(js);
    /* a key this agent does not know (e.g. a newer coordinator's hyperparameter) */
    assert_int_equal(moeh_moe_cfg_to_json(&c, &js, NULL), 0);
    char *more = malloc(strlen(js) + 32);
    assert_non_null(more);
    snprintf(more, strlen(js) + 32, "{\"d_expert2\":3,%s", js + 1);
    assert_int_equal(run_agent(more, &c, &err), -EPROTO);
    assert_non_null(strstr(err.msg, "unknown key \"d_expert2\""));
    free(more);
    free(js);
}

static int setup(void **state)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/moeh_test_wire_spec.%d", (int)getpid());
    moeh_log_configure(MOEH_LOG_ERROR, "test", NULL, NULL);
    write_dataset(g_dir);
    return 0;
}

static int teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_welcome_spec_checks),
               cmocka_unit_test(test_welcome_spec_bytes),
               cmocka_unit_test(test_agent_accepts_valid_spec),
               cmocka_unit_test(test_agent_refuses_invalid_spec))
