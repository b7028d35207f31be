/* test_corpus.c - every seed of the wire fuzzer's corpus (tests/fuzz/corpus/wire) is a valid
 * message for the current protocol, so the fuzzer starts from accepted inputs and the corpus
 * cannot silently fall behind a protocol change. Regenerate it with make_corpus
 * (docs/security.md) when this fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "fuzz/fuzz_input.h"

#include <dirent.h>
#include <string.h>

static void test_every_wire_seed_decodes(void **state)
{
    const char *src = getenv("MOEH_SOURCE_DIR");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/wire", src ? src : "..");
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    size_t n = 0;
    int seen_type[32] = {0};
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char path[1400], *buf = NULL;
        size_t len = 0;
        moeh_err_t err = {0};
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        assert_int_equal(moeh_file_read_all(path, 1 << 20, &buf, &len, &err), 0);
        fuzz_msg_t m;
        fuzz_split((const uint8_t *)buf, len, &m);
        Moeh__Envelope *e = NULL;
        int rc = moeh_wire_decode(&k_fuzz_limits, m.hdr, m.hdr_len, m.frames, m.n_frames, &e, &err);
        if (rc) print_error("%s: %s\n", de->d_name, err.msg);
        assert_int_equal(rc, 0);
        assert_true(e->type > 0 && e->type < 32);
        seen_type[e->type] = 1;
        moeh__envelope__free_unpacked(e, NULL);
        free(buf);
        n++;
    }
    closedir(d);
    /* one seed at least of every message type */
    for (int t = MOEH__MSG_TYPE__HELLO; t <= MOEH__MSG_TYPE__UPLOAD_CREDIT; t++) {
        if (!seen_type[t]) print_error("no seed of type %d (%s)\n", t, moeh_msg_type_name(t));
        assert_true(seen_type[t]);
    }
    assert_true(n >= 14);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_every_wire_seed_decodes))
