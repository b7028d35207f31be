/* fuzz_stream.c - libFuzzer target for the receiver of a chunked upload (proto/stream.c): a
 * sequence of messages, each decoded by moeh_wire_decode() under the fuzzers' small model
 * (k_fuzz_limits, so a stream holds at most a few chunks), every UploadChunk among them put into
 * one moeh_stream_rx_t, and each completed stream decoded with moeh_stream_rx_decode(). Any
 * input must be refused or accepted without a crash, a leak or undefined behaviour, and the
 * receiver must keep its documented state: idle after a refusal, the next credit within its
 * stream after a chunk taken.
 *
 * Input layout: records, each a little-endian u16 length then that many bytes of a header
 * (single-part: no tensor frames); a length that runs past the end is cut. The seed corpus
 * writer (make_corpus, corpus/stream) uses the same layout. */
#include "fuzz_input.h"
#include "moeh_stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void take(moeh_stream_rx_t *r, const Moeh__UploadChunk *ch, uint64_t max_bytes)
{
    uint32_t up = 0xdeadbeefu;
    moeh_err_t err = {0};
    int rc = moeh_stream_rx_put(r, ch, max_bytes, &up, &err);
    if (rc < 0) {
        MOEH_ASSERT(err.msg[0] != '\0' && up == 0 && !moeh_stream_rx_active(r));
        return;
    }
    MOEH_ASSERT(moeh_stream_rx_active(r) && r->len <= max_bytes && r->next <= r->n_chunks);
    if (rc == 0) {
        MOEH_ASSERT(up > r->next && up <= r->n_chunks && up <= r->next + MOEH_STREAM_WINDOW);
        return;
    }
    MOEH_ASSERT(rc == 1 && r->next == r->n_chunks && r->got == r->len);
    Moeh__Envelope *env = NULL;
    moeh_iov_t frames[MOEH_MAX_FRAMES];
    size_t nf = 0;
    rc = moeh_stream_rx_decode(r, &k_fuzz_limits, &env, frames, &nf, &err);
    if (rc == 0) {
        MOEH_ASSERT(env != NULL && nf == env->n_frames);
        moeh__envelope__free_unpacked(env, NULL);
    } else {
        MOEH_ASSERT(env == NULL && err.msg[0] != '\0');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint64_t max_bytes = moeh_stream_max_bytes(&k_fuzz_limits);
    moeh_stream_rx_t r = {0};
    size_t pos = 0;
    while (pos + 2 <= size) {
        size_t len = (size_t)(data[pos] | (data[pos + 1] << 8));
        pos += 2;
        if (len > size - pos) len = size - pos;
        Moeh__Envelope *env = NULL;
        moeh_err_t err = {0};
        int rc = moeh_wire_decode(&k_fuzz_limits, data + pos, len, NULL, 0, &env, &err);
        pos += len;
        if (rc) {
            MOEH_ASSERT(env == NULL && err.msg[0] != '\0');
            continue;
        }
        MOEH_ASSERT(env != NULL);
        if (env->type == MOEH__MSG_TYPE__UPLOAD_CHUNK) take(&r, env->upload_chunk, max_bytes);
        moeh__envelope__free_unpacked(env, NULL);
    }
    moeh_stream_rx_clear(&r);
    return 0;
}
