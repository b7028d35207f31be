/* moeh_wire.h - the one decoding layer for everything that arrives over ZeroMQ, and the matching
 * encoder.
 *
 * A message is [routing id (ROUTER side only)] [Envelope] [raw frame]*. moeh_wire_decode()
 * caps the header size before unpacking, checks the protocol version, the type/body match,
 * every count, length and enum, the number, names, dtypes and sizes of the raw frames against
 * what was negotiated (moeh_wire_limits_t), and that every float is finite. It is pure: on bad
 * input it returns a negative code with a message and touches nothing else. Session checks
 * (round ids, model versions, who may send what) belong to the coordinator and agent. */
#ifndef MOEH_WIRE_H
#define MOEH_WIRE_H

#include "moeh.pb-c.h"
#include "moeh_common.h"
#include "moeh_schema.h"
#include "moeh_secsum.h"

/* 6: Hello.n_val; 7: UploadChunk, UploadCredit; 8: RoundStart.model_held; 9: VALIDATE evaluates
 * the test split too (EvalResult.validation), masks from AES-256-CTR; 10: shares sealed under
 * session keys drawn from the sites' long-lived share keys (fed/moeh_secagg.h) */
#define MOEH_PROTOCOL_VERSION 10u
/* Most rows a Hello may declare per split (n_train, n_eval, n_val): exact as a double, as the
 * registry's [limits] (moeh_keys.h) */
#define MOEH_WIRE_MAX_ROWS ((1ull << 53) - 1)
#define MOEH_MAX_HEADER_BYTES (64u * 1024u)
#define MOEH_MAX_FRAMES 4u
#define MOEH_MAX_PARAMS (1u << 28) /* 1 GiB of float32 */
/* A tensor frame travels in consecutive ZeroMQ parts of MOEH_WIRE_CHUNK_BYTES, the last one
 * shorter (an empty frame: one empty part); moeh_wire_recv joins them. CURVE encrypts and
 * decrypts part by part, so a connection holds one encrypted part of a large tensor at a time
 * instead of a whole encrypted copy: broadcasting the model to S sites costs S parts of
 * memory, not S models (docs/performance.md). 32 KiB since protocol 7 (128 KiB before: 100
 * sites then held 13 MB of encrypted parts while the model went out). */
#define MOEH_WIRE_CHUNK_BYTES (32u * 1024u)
/* Largest ZeroMQ part (ZMQ_MAXMSGSIZE of every moeh socket): a header or one part of a frame,
 * plus room for CURVE's framing (ZeroMQ checks the encrypted size: 33 bytes more). A peer
 * sending a larger part is disconnected by ZeroMQ before that part is buffered. ZeroMQ still
 * holds every part of a multipart message before the application sees it, so the whole
 * message is bounded only by the part count (MOEH_WIRE_MAX_PARTS x this size); the receiver
 * refuses a header that declares more tensor bytes than the negotiated model allows before
 * joining any part (moeh_wire_recv). */
#define MOEH_WIRE_MAX_PART_BYTES                                                                   \
    (1024u + (MOEH_WIRE_CHUNK_BYTES > MOEH_MAX_HEADER_BYTES ? MOEH_WIRE_CHUNK_BYTES                \
                                                            : MOEH_MAX_HEADER_BYTES))
/* Most parts of one message: routing id + envelope + MOEH_MAX_FRAMES frames of up to
 * MOEH_MAX_PARAMS 8-byte elements. More are drained and refused. */
#define MOEH_WIRE_MAX_PARTS                                                                        \
    (2u + MOEH_MAX_FRAMES * (uint32_t)((8ull * MOEH_MAX_PARAMS) / MOEH_WIRE_CHUNK_BYTES))
#define MOEH_MAX_STRING 1024u
/* Longest ModelSpec.config_json (the model's canonical JSON is about 400 bytes). */
#define MOEH_WIRE_MAX_CONFIG_JSON 4096u
#define MOEH_SITE_ID_MAX 64u
/* Largest secure-aggregation session on the wire: the key list and the shares a site sends
 * (one 96-byte ciphertext per peer) must fit in one header of MOEH_MAX_HEADER_BYTES. */
#define MOEH_WIRE_SECAGG_MAX 512u
/* DP-FedAvg in RoundConfig (fed/moeh_dp.h): largest noise multiplier and calibration count m. */
#define MOEH_WIRE_DP_MAX_NOISE 1000.0
#define MOEH_WIRE_DP_MAX_SITES 65536u
/* FinalModel: the model file's bytes beyond its tensors (the safetensors header: the model
 * config, tensor table, names, units and provenance; about 10 KiB for the default model). The
 * frame may hold at most 4 x (n_params + 2 x n_norm) + this many bytes. */
#define MOEH_WIRE_MODELFILE_META_MAX (32u * 1024u)
/* The largest model file a FinalModel may carry under these limits (0: not negotiated). */
#define MOEH_WIRE_MODELFILE_MAX(lim)                                                               \
    ((lim)->n_params                                                                               \
         ? 4u * ((lim)->n_params + 2u * (uint64_t)(lim)->n_norm) + MOEH_WIRE_MODELFILE_META_MAX    \
         : 0u)
#define MOEH_WIRE_SHA256_BYTES 32u

/* What the receiver has negotiated. Zero fields mean "not negotiated yet": any message that
 * would need them (tensors, per-group weights, histograms) is refused. */
typedef struct {
    uint64_t n_params;
    uint32_t n_groups;
    uint32_t n_tasks;
    uint32_t eval_bins;
    uint32_t n_norm;    /* normalisation features (static + hourly variables) */
    uint32_t n_experts; /* columns of the gate sums */
} moeh_wire_limits_t;

/* The secure-sum dimensions (fed/moeh_secsum.h) these limits negotiate. Pure. */
moeh_secsum_dims_t moeh_wire_secsum_dims(const moeh_wire_limits_t *lim);
/* The secure-sum phase of a round task (MOEH_SECSUM_NONE for an unknown task). Pure. */
moeh_secsum_phase_t moeh_wire_secsum_phase(Moeh__RoundTask task);
/* Words of the vector `task` sums under lim (moeh_secsum_len); 0 if lim does not define it
 * (not negotiated yet, or an unknown task). Pure. */
size_t moeh_wire_secsum_len(const moeh_wire_limits_t *lim, Moeh__RoundTask task);

/* ---- envelope builders ------------------------------------------------------------------
 * moeh_env_<body>(env, body) (re)initialises *env as the message carrying `body` (borrowed:
 * it must outlive every use of env): it sets env->type, env->body_case and the body pointer
 * together, so that they cannot disagree. One per message type:
 *   moeh_env_hello, moeh_env_welcome, moeh_env_round_start, moeh_env_update,
 *   moeh_env_eval_result, moeh_env_heartbeat, moeh_env_error, moeh_env_bye,
 *   moeh_env_stats_result, moeh_env_secagg_advertise, moeh_env_secagg_keys,
 *   moeh_env_secagg_shares, moeh_env_secagg_unmask, moeh_env_secagg_reveal,
 *   moeh_env_secagg_masked, moeh_env_upload_ready, moeh_env_upload_grant,
 *   moeh_env_final_model, moeh_env_final_ack, moeh_env_upload_chunk, moeh_env_upload_credit.
 * E.g.  Moeh__Envelope env; Moeh__Bye bye = MOEH__BYE__INIT; moeh_env_bye(&env, &bye);
 * protocol_version and the frame descriptions are filled in by moeh_wire_pack/send. */
#define MOEH_ENV_BUILDER_(field, Body, TYPE)                                                       \
    static inline void moeh_env_##field(Moeh__Envelope *env, Moeh__##Body *body)                   \
    {                                                                                              \
        moeh__envelope__init(env);                                                                 \
        env->type = MOEH__MSG_TYPE__##TYPE;                                                        \
        env->body_case = MOEH__ENVELOPE__BODY_##TYPE;                                              \
        env->field = body;                                                                         \
    }
MOEH_ENV_BUILDER_(hello, Hello, HELLO)
MOEH_ENV_BUILDER_(welcome, Welcome, WELCOME)
MOEH_ENV_BUILDER_(round_start, RoundStart, ROUND_START)
MOEH_ENV_BUILDER_(update, Update, UPDATE)
MOEH_ENV_BUILDER_(eval_result, EvalResult, EVAL_RESULT)
MOEH_ENV_BUILDER_(heartbeat, Heartbeat, HEARTBEAT)
MOEH_ENV_BUILDER_(error, Error, ERROR)
MOEH_ENV_BUILDER_(bye, Bye, BYE)
MOEH_ENV_BUILDER_(stats_result, StatsResult, STATS_RESULT)
MOEH_ENV_BUILDER_(secagg_advertise, SecaggAdvertise, SECAGG_ADVERTISE)
MOEH_ENV_BUILDER_(secagg_keys, SecaggKeys, SECAGG_KEYS)
MOEH_ENV_BUILDER_(secagg_shares, SecaggShares, SECAGG_SHARES)
MOEH_ENV_BUILDER_(secagg_unmask, SecaggUnmask, SECAGG_UNMASK)
MOEH_ENV_BUILDER_(secagg_reveal, SecaggReveal, SECAGG_REVEAL)
MOEH_ENV_BUILDER_(secagg_masked, SecaggMasked, SECAGG_MASKED)
MOEH_ENV_BUILDER_(upload_ready, UploadReady, UPLOAD_READY)
MOEH_ENV_BUILDER_(upload_grant, UploadGrant, UPLOAD_GRANT)
MOEH_ENV_BUILDER_(final_model, FinalModel, FINAL_MODEL)
MOEH_ENV_BUILDER_(final_ack, FinalAck, FINAL_ACK)
MOEH_ENV_BUILDER_(upload_chunk, UploadChunk, UPLOAD_CHUNK)
MOEH_ENV_BUILDER_(upload_credit, UploadCredit, UPLOAD_CREDIT)
#undef MOEH_ENV_BUILDER_
/* Most tasks (label columns) a histogram or label count may carry. */
#define MOEH_WIRE_MAX_TASKS 8u

/* A raw frame: borrowed bytes. */
typedef struct {
    const void *data;
    size_t len;
} moeh_iov_t;

/* A tensor frame to send: name, dtype, element count and bytes (borrowed). If `shared` is
 * set (a moeh_shared_frame_t), its bytes are sent instead of `data`, without a copy. */
typedef struct {
    const char *name;
    Moeh__DType dtype;
    const void *data;
    uint64_t count;
    const struct moeh_shared_frame *shared;
} moeh_frame_t;

/* One copy of a frame's bytes that any number of sends share (ZeroMQ reference-counts it), so
 * broadcasting a model to S sites queues one copy, not S. */
typedef struct moeh_shared_frame moeh_shared_frame_t;
/* Copies len bytes once. 0 or -ENOMEM. Caller frees with moeh_shared_frame_destroy (sends
 * still queued keep their reference, so it may be destroyed right after sending). */
int moeh_shared_frame_create(const void *data, size_t len, moeh_shared_frame_t **out)
    __attribute__((warn_unused_result));
void moeh_shared_frame_destroy(moeh_shared_frame_t **self_p);

/* A decoded message. env and the frames stay valid until moeh_msg_clear(). */
typedef struct {
    Moeh__Envelope *env;
    size_t n_frames;
    moeh_iov_t frames[MOEH_MAX_FRAMES];
    char peer[MOEH_SITE_ID_MAX + 1]; /* ZAP-authenticated site id ("" if none) */
    uint8_t routing_id[256];
    size_t routing_id_len;
    int src_fd; /* the descriptor of the connection it came on (ZMQ_SRCFD), -1 if unknown */
    uint64_t wire_bytes; /* bytes of its parts as received (whatever decoding then said) */
    uint32_t wire_parts; /* ... and their number (both without a ROUTER's routing id) */
    /* owned ZeroMQ message parts backing the frames (opaque to users) */
    void *parts_storage;
} moeh_msg_t;

/* Pure validation of one message: header bytes + raw frames. On success *out owns a freshly
 * unpacked Envelope (free with moeh__envelope__free_unpacked(env, NULL)). On failure returns
 * -EMSGSIZE (too big), -EPROTO (wrong protocol version), -EBADMSG (anything malformed) or
 * -ERANGE (a non-finite float), with err->msg saying which field and what was expected. */
/* Bytes per element of a DType (f32/u32 4, f64 8, u8 1), 0 for any other value. */
size_t moeh_wire_dtype_size(int dtype);

int moeh_wire_decode(const moeh_wire_limits_t *lim, const void *hdr, size_t hdr_len,
                     const moeh_iov_t *frames, size_t n_frames, Moeh__Envelope **out,
                     moeh_err_t *err) __attribute__((warn_unused_result));

/* Packs env (its protocol_version and frames are filled in here from `frames`) into a
 * malloc'd buffer the caller frees. 0, -EINVAL (more than MOEH_MAX_FRAMES frames), -ENOMEM
 * or -EMSGSIZE (header over MOEH_MAX_HEADER_BYTES). */
int moeh_wire_pack(Moeh__Envelope *env, const moeh_frame_t *frames, size_t n_frames,
                   uint8_t **buf_out, size_t *len_out) __attribute__((warn_unused_result));

/* Sends [routing_id]? envelope frames... on sock, each frame in parts of MOEH_WIRE_CHUNK_BYTES.
 * 0 or a negative code (-EAGAIN if it would block past the socket's send timeout,
 * -EHOSTUNREACH if a ROUTER peer is gone). */
int moeh_wire_send(void *sock, const uint8_t *routing_id, size_t routing_id_len,
                   Moeh__Envelope *env, const moeh_frame_t *frames, size_t n_frames)
    __attribute__((warn_unused_result));

/* Receives one whole multipart message (non-blocking: -EAGAIN if none is ready), joins each
 * tensor frame's parts (they must be split exactly as moeh_wire_send splits them: -EBADMSG
 * otherwise, -EMSGSIZE for more parts than the header describes) and decodes it.
 * With_routing_id is set on ROUTER sockets. A message with too many parts is drained and
 * refused. On a decode failure the routing id and peer are still filled in (so the caller can
 * reply with an Error) and the code is returned; msg must be cleared in every case. */
int moeh_wire_recv(void *sock, int with_routing_id, const moeh_wire_limits_t *lim, moeh_msg_t *msg,
                   moeh_err_t *err) __attribute__((warn_unused_result));
void moeh_msg_clear(moeh_msg_t *msg);
/* The most tensor bytes one received message may declare under lim (twice the largest frame
 * set moeh_wire_decode accepts, plus slack); 0 before a model is negotiated. Pure. */
uint64_t moeh_wire_max_tensor_bytes(const moeh_wire_limits_t *lim);

/* Makes *env the Error {code, message} (cut to MOEH_MAX_STRING bytes, copied into buf); env,
 * e and buf are the caller's and must outlive every use of env. */
static inline void moeh_wire_error_env(Moeh__Envelope *env, Moeh__Error *e,
                                       char buf[MOEH_MAX_STRING + 1], int code, const char *message)
{
    moeh__error__init(e);
    snprintf(buf, MOEH_MAX_STRING + 1, "%s", message);
    e->code = code;
    e->message = buf;
    moeh_env_error(env, e);
}

/* Convenience: send an Error (message cut to MOEH_MAX_STRING bytes), or a Heartbeat (seq) or
 * a Bye (text; NULL: "", with seq as its Moeh__ByeStatus, 0: LEFT) with send_simple, with no
 * frames. moeh_wire_send's returns; send_simple: -EINVAL (nothing sent) for any other type. */
int moeh_wire_send_error(void *sock, const uint8_t *rid, size_t rid_len, int code,
                         const char *message) __attribute__((warn_unused_result));
int moeh_wire_send_simple(void *sock, const uint8_t *rid, size_t rid_len, Moeh__MsgType type,
                          const char *text, uint64_t seq) __attribute__((warn_unused_result));

/* The lower-case name of a message type ("hello", ...), "unknown" if none; static storage. */
const char *moeh_msg_type_name(int type);

/* Site ids: 1..64 characters from [A-Za-z0-9._-], not starting with '.' or '-'. */
int moeh_site_id_valid(const char *s);

#endif
