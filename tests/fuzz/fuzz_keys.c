/* fuzz_keys.c - libFuzzer target for the site registry and key file parsers (INI text).
 * Byte 0 chooses the parser; the rest is the file's text. */
#include "moeh_keys.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        MOEH_ASSERT(moeh_crypto_init() == 0);
        init = 1;
    }
    if (size == 0) return 0;
    char *text = malloc(size);
    MOEH_ASSERT(text);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    moeh_err_t err = {0};
    if (data[0] & 1) {
        moeh_keypair_t *kp = NULL;
        if (moeh_keypair_parse(text, "fuzz.key", &kp, &err) == 0) {
            MOEH_ASSERT(moeh_z85_key_valid(kp->public_z85) && moeh_z85_key_valid(kp->secret_z85));
            moeh_keypair_destroy(&kp);
        }
    } else {
        moeh_registry_t r;
        if (moeh_registry_parse(text, "fuzz.ini", &r, &err) == 0) {
            for (size_t i = 0; i < r.n; i++) /* every entry is findable by its key */
                MOEH_ASSERT(moeh_registry_lookup(&r, r.entries[i].key) != NULL);
            moeh_registry_free(&r);
        } else {
            MOEH_ASSERT(err.msg[0] != '\0');
        }
    }
    free(text);
    return 0;
}
