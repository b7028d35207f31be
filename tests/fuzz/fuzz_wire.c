/* fuzz_wire.c - libFuzzer target for moeh_wire_decode(), the one decoder of every message
 * either side receives. Any input must be refused or accepted without a crash, a leak or
 * undefined behaviour; an accepted message must re-pack to a header that decodes again. */
#include "fuzz_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_msg_t m;
    fuzz_split(data, size, &m);
    Moeh__Envelope *env = NULL;
    moeh_err_t err = {0};
    int rc = moeh_wire_decode(&k_fuzz_limits, m.hdr, m.hdr_len, m.frames, m.n_frames, &env, &err);
    if (rc == 0) {
        MOEH_ASSERT(env != NULL);
        /* what was accepted must survive a re-encode and a second decode */
        moeh_frame_t frames[MOEH_MAX_FRAMES];
        for (size_t i = 0; i < env->n_frames; i++)
            frames[i] = (moeh_frame_t){.name = env->frames[i]->name,
                                       .dtype = env->frames[i]->dtype,
                                       .data = m.frames[i].data,
                                       .count = env->frames[i]->count};
        size_t nf = env->n_frames;
        uint8_t *buf = NULL;
        size_t len = 0;
        Moeh__FrameDesc **saved = env->frames;
        MOEH_ASSERT(moeh_wire_pack(env, frames, nf, &buf, &len) == 0);
        env->frames = saved;
        env->n_frames = nf;
        Moeh__Envelope *again = NULL;
        MOEH_ASSERT(moeh_wire_decode(&k_fuzz_limits, buf, len, m.frames, nf, &again, &err) == 0);
        moeh__envelope__free_unpacked(again, NULL);
        free(buf);
        moeh__envelope__free_unpacked(env, NULL);
    } else {
        MOEH_ASSERT(env == NULL && err.msg[0] != '\0');
    }
    return 0;
}
