/* fuzz_npy.c - libFuzzer target for the .npy parser that every dataset array goes through. */
#include "moeh_npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moeh_npy_t a;
    moeh_err_t err = {0};
    if (moeh_npy_parse(data, size, "fuzz", -1, 0, &a, &err) == 0) {
        /* the parsed shape accounts for exactly the bytes after the header */
        size_t bytes = moeh_npy_numel(&a) * moeh_dtype_size(a.dtype);
        MOEH_ASSERT(bytes <= size);
        moeh_npy_free(&a);
    } else {
        MOEH_ASSERT(err.msg[0] != '\0');
    }
    return 0;
}
