/* moeh_stream.h - a granted upload in chunks under the receiver's credit (protocol 7).
 *
 * libzmq holds every part of a multipart message before the application sees any, so a large
 * message is memory the receiver cannot refuse in time. A granted upload (a phase's reply: an
 * Update, EvalResult, StatsResult or SecaggMasked) therefore travels as single-part UploadChunk
 * messages of at most MOEH_STREAM_CHUNK_BYTES: the whole message it would have been (its packed
 * header, then each frame's bytes) cut into pieces. The sender sends the first MOEH_STREAM_WINDOW
 * chunks and then only what the receiver's UploadCredit {up_to} allows; the receiver credits a
 * chunk once it has copied it, so at most the window is in flight per upload. The receiver
 * allocates the whole only once the first chunk has declared a size within the negotiated model's
 * (moeh_stream_max_bytes), and decodes it with moeh_wire_decode when the last chunk is in.
 *
 * The sender and the receiver here hold no socket: moeh_stream_tx_next hands out the next
 * chunk to send, moeh_stream_rx_put takes one; the callers send and reply. */
#ifndef MOEH_STREAM_H
#define MOEH_STREAM_H

#include "moeh_wire.h"

#define MOEH_STREAM_CHUNK_BYTES (32u * 1024u) /* fits a header of MOEH_MAX_HEADER_BYTES */
#define MOEH_STREAM_WINDOW 8u                 /* chunks in flight: 256 KiB */

/* The largest stream under lim: a header and the largest reply's words (an Update, a masked
 * vector, an EvalResult or StatsResult); 0 before a model is negotiated. Pure. */
uint64_t moeh_stream_max_bytes(const moeh_wire_limits_t *lim);

/* The most bytes a site may have in transit to the coordinator at once under lim when its
 * uploads are granted (so in chunks): the largest message it sends whole (an EvalResult,
 * StatsResult or their masked vectors, a header of MOEH_MAX_HEADER_BYTES) plus a window of
 * chunks; before a model is negotiated (lim NULL or empty), a header and a window. Pure. */
uint64_t moeh_stream_max_unstreamed_bytes(const moeh_wire_limits_t *lim);

/* The sender's side of one upload. Zero-initialised: idle. */
typedef struct {
    uint8_t *buf; /* header then frames, back to back */
    size_t len;
    uint64_t stream;
    uint32_t n_parts;
    uint64_t part_bytes[1 + MOEH_MAX_FRAMES];
    uint32_t n_chunks, next, credit; /* chunks below credit may go; next is the next to go */
} moeh_stream_tx_t;

/* Packs env and frames (not shared ones) into t as stream `stream` (non-zero) with the first
 * window of credit. 0, -EINVAL, -ENOMEM or -EMSGSIZE (moeh_wire_pack). t is cleared first. */
int moeh_stream_tx_begin(moeh_stream_tx_t *t, uint64_t stream, Moeh__Envelope *env,
                         const moeh_frame_t *frames, size_t n_frames)
    __attribute__((warn_unused_result));
/* 1 while t holds a stream with chunks left to send, whether or not credit allows them. */
int moeh_stream_tx_active(const moeh_stream_tx_t *t);
/* An UploadCredit for t's stream: raises the credit (never lowers it). 0, or -ESTALE if it
 * names another stream (ignored). */
int moeh_stream_tx_credit(moeh_stream_tx_t *t, uint64_t stream, uint32_t up_to);
/* If the credit allows the next chunk, makes *env (with *ch, both the caller's) that chunk,
 * borrowing t's bytes, advances and returns 1; 0 if none may go now. */
int moeh_stream_tx_next(moeh_stream_tx_t *t, Moeh__Envelope *env, Moeh__UploadChunk *ch);
/* Frees and idles t. */
void moeh_stream_tx_clear(moeh_stream_tx_t *t);

/* The receiver's side of one upload. Zero-initialised: idle. */
typedef struct {
    uint8_t *buf;
    size_t len, got;
    uint64_t stream;
    uint32_t n_parts;
    uint64_t part_bytes[1 + MOEH_MAX_FRAMES];
    uint32_t n_chunks, next;
} moeh_stream_rx_t;

/* Takes chunk ch (decoded by moeh_wire_decode, so its fields are individually in range): a
 * chunk 0 starts a stream (dropping any stream r held), any other must be the next of r's
 * stream. Returns 1 when the stream is complete (then moeh_stream_rx_decode), 0 if more are
 * due (*credit_up_to: what to credit), or -EBADMSG / -EMSGSIZE / -ENOMEM with err saying why
 * (r is then cleared). max_bytes: moeh_stream_max_bytes of the receiver's limits. The receiver
 * credits each chunk as it takes it, in order, so a chunk it takes is always within its
 * credit: what the credit bounds is what waits unread in ZeroMQ's queue, which the
 * coordinator's connection guard bounds in bytes (moeh_connguard.h). */
int moeh_stream_rx_put(moeh_stream_rx_t *r, const Moeh__UploadChunk *ch, uint64_t max_bytes,
                       uint32_t *credit_up_to, moeh_err_t *err) __attribute__((warn_unused_result));
/* Decodes a complete stream as moeh_wire_decode does into *env; frames point into r's buffer
 * (valid until moeh_stream_rx_clear). 0 or moeh_wire_decode's codes. */
int moeh_stream_rx_decode(const moeh_stream_rx_t *r, const moeh_wire_limits_t *lim,
                          Moeh__Envelope **env, moeh_iov_t frames[MOEH_MAX_FRAMES],
                          size_t *n_frames, moeh_err_t *err) __attribute__((warn_unused_result));
/* 1 while r holds a stream (complete or not). */
int moeh_stream_rx_active(const moeh_stream_rx_t *r);
void moeh_stream_rx_clear(moeh_stream_rx_t *r);

#endif
