/* stream.c - a granted upload in chunks under the receiver's credit (see moeh_stream.h). */
#include "moeh_stream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Words of the largest reply other than an update: an EvalResult, a StatsResult (f64: two
 * words each) or a masked EVALUATE, VALIDATE or STATS vector. */
static uint64_t reply_words(const moeh_wire_limits_t *lim)
{
    const Moeh__RoundTask tasks[] = {MOEH__ROUND_TASK__EVALUATE, MOEH__ROUND_TASK__VALIDATE,
                                     MOEH__ROUND_TASK__STATS};
    uint64_t words = (uint64_t)MOEH_N_SLICES * lim->n_tasks * 2 * lim->eval_bins +
                     (uint64_t)MOEH_N_COMBOS * lim->n_experts;
    if (6 * (uint64_t)lim->n_norm > words) words = 6 * (uint64_t)lim->n_norm;
    for (size_t i = 0; i < sizeof tasks / sizeof *tasks; i++)
        if (moeh_wire_secsum_len(lim, tasks[i]) > words)
            words = moeh_wire_secsum_len(lim, tasks[i]);
    return words;
}

uint64_t moeh_stream_max_bytes(const moeh_wire_limits_t *lim)
{
    if (!lim || lim->n_params == 0) return 0;
    uint64_t words = lim->n_params + lim->n_groups;
    uint64_t masked = moeh_wire_secsum_len(lim, MOEH__ROUND_TASK__TRAIN);
    if (masked > words) words = masked;
    if (reply_words(lim) > words) words = reply_words(lim);
    return MOEH_MAX_HEADER_BYTES + 4 * words;
}

uint64_t moeh_stream_max_unstreamed_bytes(const moeh_wire_limits_t *lim)
{
    const uint64_t window = (uint64_t)MOEH_STREAM_WINDOW * (MOEH_STREAM_CHUNK_BYTES + 1024);
    if (!lim || lim->n_params == 0) return MOEH_MAX_HEADER_BYTES + window; /* no tensors yet */
    /* a reply pushed whole (still taken: see the coordinator's replies.c), and a window of
     * chunks, each with its header fields and ZeroMQ's and CURVE's framing */
    return MOEH_MAX_HEADER_BYTES + 4 * reply_words(lim) + window;
}

static uint32_t chunks_of(uint64_t bytes)
{
    return (uint32_t)((bytes + MOEH_STREAM_CHUNK_BYTES - 1) / MOEH_STREAM_CHUNK_BYTES);
}

int moeh_stream_tx_begin(moeh_stream_tx_t *t, uint64_t stream, Moeh__Envelope *env,
                         const moeh_frame_t *frames, size_t n_frames)
{
    moeh_stream_tx_clear(t);
    if (stream == 0 || n_frames > MOEH_MAX_FRAMES) return -EINVAL;
    uint8_t *hdr = NULL;
    size_t hlen = 0, len;
    int rc = moeh_wire_pack(env, frames, n_frames, &hdr, &hlen);
    if (rc) return rc;
    t->part_bytes[0] = len = hlen;
    for (size_t i = 0; i < n_frames; i++) {
        if (frames[i].shared) {
            free(hdr);
            return -EINVAL;
        }
        t->part_bytes[1 + i] = frames[i].count * moeh_wire_dtype_size(frames[i].dtype);
        len += t->part_bytes[1 + i];
    }
    if (!(t->buf = malloc(len))) {
        free(hdr);
        return -ENOMEM;
    }
    memcpy(t->buf, hdr, hlen);
    free(hdr);
    for (size_t i = 0, at = hlen; i < n_frames; at += t->part_bytes[1 + i], i++)
        if (t->part_bytes[1 + i]) memcpy(t->buf + at, frames[i].data, t->part_bytes[1 + i]);
    t->len = len;
    t->n_parts = (uint32_t)(1 + n_frames);
    t->stream = stream;
    t->n_chunks = chunks_of(len);
    t->credit = MOEH_STREAM_WINDOW;
    return 0;
}

int moeh_stream_tx_active(const moeh_stream_tx_t *t)
{
    return t->buf && t->next < t->n_chunks;
}

int moeh_stream_tx_credit(moeh_stream_tx_t *t, uint64_t stream, uint32_t up_to)
{
    if (!t->buf || stream != t->stream) return -ESTALE;
    if (up_to > t->credit) t->credit = up_to;
    return 0;
}

int moeh_stream_tx_next(moeh_stream_tx_t *t, Moeh__Envelope *env, Moeh__UploadChunk *ch)
{
    if (!moeh_stream_tx_active(t) || t->next >= t->credit) return 0;
    moeh__upload_chunk__init(ch);
    size_t at = (size_t)t->next * MOEH_STREAM_CHUNK_BYTES;
    ch->stream = t->stream;
    ch->index = t->next;
    ch->n_chunks = t->n_chunks;
    ch->data.data = t->buf + at;
    ch->data.len = t->len - at < MOEH_STREAM_CHUNK_BYTES ? t->len - at : MOEH_STREAM_CHUNK_BYTES;
    if (t->next == 0) {
        ch->n_part_bytes = t->n_parts;
        ch->part_bytes = t->part_bytes;
    }
    moeh_env_upload_chunk(env, ch);
    t->next++;
    return 1;
}

void moeh_stream_tx_clear(moeh_stream_tx_t *t)
{
    free(t->buf);
    memset(t, 0, sizeof *t);
}

int moeh_stream_rx_put(moeh_stream_rx_t *r, const Moeh__UploadChunk *ch, uint64_t max_bytes,
                       uint32_t *credit_up_to, moeh_err_t *err)
{
    int rc;
    *credit_up_to = 0;
    if (ch->index == 0) { /* a new stream: its first chunk says how large the whole is */
        moeh_stream_rx_clear(r);
        uint64_t total = 0;
        if (ch->n_part_bytes < 1 || ch->n_part_bytes > 1 + MOEH_MAX_FRAMES) {
            rc = moeh_errf(err, -EBADMSG, "upload_chunk.part_bytes: %zu entries, expected 1..%u",
                           ch->n_part_bytes, 1 + MOEH_MAX_FRAMES);
            goto fail;
        }
        for (size_t i = 0; i < ch->n_part_bytes; i++) {
            if (ch->part_bytes[i] > max_bytes) {
                rc = moeh_errf(err, -EMSGSIZE, "upload_chunk.part_bytes[%zu]: %llu bytes", i,
                               (unsigned long long)ch->part_bytes[i]);
                goto fail;
            }
            total += ch->part_bytes[i];
        }
        if (ch->part_bytes[0] == 0 || ch->part_bytes[0] > MOEH_MAX_HEADER_BYTES || total == 0 ||
            total > max_bytes) {
            rc = moeh_errf(err, -EMSGSIZE,
                           "upload_chunk: a header of %llu bytes and %llu bytes in all; expected "
                           "a header of 1..%u bytes and at most %llu in all for this model",
                           (unsigned long long)ch->part_bytes[0], (unsigned long long)total,
                           MOEH_MAX_HEADER_BYTES, (unsigned long long)max_bytes);
            goto fail;
        }
        if (ch->n_chunks != chunks_of(total)) {
            rc = moeh_errf(err, -EBADMSG, "upload_chunk.n_chunks: %u for %llu bytes, expected %u",
                           ch->n_chunks, (unsigned long long)total, chunks_of(total));
            goto fail;
        }
        if (!(r->buf = malloc(total))) {
            rc = moeh_errf(err, -ENOMEM, "out of memory for an upload of %llu bytes",
                           (unsigned long long)total);
            goto fail;
        }
        r->len = (size_t)total;
        r->stream = ch->stream;
        r->n_chunks = ch->n_chunks;
        r->n_parts = (uint32_t)ch->n_part_bytes;
        memcpy(r->part_bytes, ch->part_bytes, ch->n_part_bytes * sizeof *ch->part_bytes);
    } else if (!r->buf || ch->stream != r->stream || ch->index != r->next ||
               ch->index >= r->n_chunks || ch->n_chunks != r->n_chunks || ch->n_part_bytes != 0) {
        rc = moeh_errf(err, -EBADMSG,
                       "upload_chunk: chunk %u of %u of stream %llu, expected chunk %u of %u of "
                       "stream %llu (or a chunk 0)",
                       ch->index, ch->n_chunks, (unsigned long long)ch->stream, r->next,
                       r->n_chunks, (unsigned long long)r->stream);
        goto fail;
    }
    size_t at = (size_t)ch->index * MOEH_STREAM_CHUNK_BYTES;
    size_t want = r->len - at < MOEH_STREAM_CHUNK_BYTES ? r->len - at : MOEH_STREAM_CHUNK_BYTES;
    if (ch->data.len != want) {
        rc = moeh_errf(err, -EBADMSG, "upload_chunk %u: %zu bytes, expected %zu", ch->index,
                       ch->data.len, want);
        goto fail;
    }
    memcpy(r->buf + at, ch->data.data, want);
    r->got += want;
    r->next++;
    if (r->next == r->n_chunks) return 1;
    *credit_up_to = r->next + MOEH_STREAM_WINDOW;
    if (*credit_up_to > r->n_chunks) *credit_up_to = r->n_chunks;
    return 0;
fail:
    moeh_stream_rx_clear(r);
    return rc;
}

int moeh_stream_rx_decode(const moeh_stream_rx_t *r, const moeh_wire_limits_t *lim,
                          Moeh__Envelope **env, moeh_iov_t frames[MOEH_MAX_FRAMES],
                          size_t *n_frames, moeh_err_t *err)
{
    *env = NULL;
    *n_frames = 0;
    if (!r->buf || r->next != r->n_chunks)
        return moeh_errf(err, -EBADMSG, "upload: the stream is not complete");
    size_t at = (size_t)r->part_bytes[0];
    for (uint32_t i = 1; i < r->n_parts; at += (size_t)r->part_bytes[i], i++)
        frames[i - 1] = (moeh_iov_t){r->buf + at, (size_t)r->part_bytes[i]};
    *n_frames = r->n_parts - 1;
    return moeh_wire_decode(lim, r->buf, (size_t)r->part_bytes[0], frames, *n_frames, env, err);
}

int moeh_stream_rx_active(const moeh_stream_rx_t *r)
{
    return r->buf != NULL;
}

void moeh_stream_rx_clear(moeh_stream_rx_t *r)
{
    free(r->buf);
    memset(r, 0, sizeof *r);
}
