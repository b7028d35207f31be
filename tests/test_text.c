/* test_text.c - the notes tokenizer: token boundaries, case folding, the id sequence against
 * XXH64 of the grams written out by hand, truncation, determinism. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "moeh_text.h"

#include <string.h>
#include <xxhash.h>

static uint32_t h(const char *gram, uint32_t buckets)
{
    return (uint32_t)(XXH64(gram, strlen(gram), MOEH_TEXT_HASH_SEED) % buckets);
}

static void test_ngrams(void **state)
{
    const char *t = "No acute\tCardio-pulmonary process.";
    uint32_t ids[16];
    size_t n = moeh_text_hash_ngrams(ids, 16, t, strlen(t), 1000);
    /* tokens: no, acute, cardio, pulmonary, process -> 5 unigrams + 4 bigrams */
    assert_int_equal(n, 9);
    const char *grams[9] = {"1:no",
                            "1:acute",
                            "2:no acute",
                            "1:cardio",
                            "2:acute cardio",
                            "1:pulmonary",
                            "2:cardio pulmonary",
                            "1:process",
                            "2:pulmonary process"};
    for (int i = 0; i < 9; i++)
        assert_int_equal(ids[i], h(grams[i], 1000));
    /* truncated output still reports the full count */
    uint32_t few[3];
    assert_int_equal(moeh_text_hash_ngrams(few, 3, t, strlen(t), 1000), 9);
    assert_memory_equal(few, ids, sizeof few);
    assert_int_equal(moeh_text_hash_ngrams(NULL, 0, t, strlen(t), 1000), 9);
    /* empty and separator-only text, UTF-8 bytes separate tokens */
    assert_int_equal(moeh_text_hash_ngrams(ids, 16, "", 0, 1000), 0);
    assert_int_equal(moeh_text_hash_ngrams(ids, 16, " ,;\n", 4, 1000), 0);
    const char *u = "caf\xc3\xa9 ok";
    assert_int_equal(moeh_text_hash_ngrams(ids, 16, u, strlen(u), 1000), 3);
    assert_int_equal(ids[0], h("1:caf", 1000));
    /* long tokens are cut at MOEH_TOKEN_MAX bytes */
    char longw[80];
    memset(longw, 'a', 79);
    longw[79] = 0;
    assert_int_equal(moeh_text_hash_ngrams(ids, 16, longw, 79, 1u << 16), 1);
    char cut[MOEH_TOKEN_MAX + 3] = "1:";
    memset(cut + 2, 'a', MOEH_TOKEN_MAX);
    cut[2 + MOEH_TOKEN_MAX] = 0;
    assert_int_equal(ids[0], h(cut, 1u << 16));
    /* every id is in range */
    n = moeh_text_hash_ngrams(ids, 16, t, strlen(t), 7);
    for (size_t i = 0; i < n; i++)
        assert_true(ids[i] < 7);
}

MOEH_TEST_MAIN(NULL, NULL, cmocka_unit_test(test_ngrams))
