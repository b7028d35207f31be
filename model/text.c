/* text.c - hashed uni/bi-gram tokenizer (see moeh_text.h). */
#include "moeh_text.h"

#include <string.h>
#include <xxhash.h>

static int is_word(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static uint32_t hash_gram(const char *buf, size_t n, uint32_t buckets)
{
    return (uint32_t)(XXH64(buf, n, MOEH_TEXT_HASH_SEED) % buckets);
}

size_t moeh_text_hash_ngrams(uint32_t *ids, size_t cap, const char *text, size_t len,
                             uint32_t buckets)
{
    /* gram buffer: "2:" + prev + " " + cur */
    char prev[MOEH_TOKEN_MAX], cur[MOEH_TOKEN_MAX], gram[2 * MOEH_TOKEN_MAX + 3];
    size_t np = 0, total = 0;
    int have_prev = 0;
    for (size_t i = 0; i < len;) {
        if (!is_word((unsigned char)text[i])) {
            i++;
            continue;
        }
        size_t nc = 0;
        for (; i < len && is_word((unsigned char)text[i]); i++)
            if (nc < MOEH_TOKEN_MAX) {
                unsigned char ch = (unsigned char)text[i];
                cur[nc++] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
            }
        gram[0] = '1', gram[1] = ':';
        memcpy(gram + 2, cur, nc);
        if (total < cap) ids[total] = hash_gram(gram, 2 + nc, buckets);
        total++;
        if (have_prev) {
            gram[0] = '2';
            memcpy(gram + 2, prev, np);
            gram[2 + np] = ' ';
            memcpy(gram + 3 + np, cur, nc);
            if (total < cap) ids[total] = hash_gram(gram, 3 + np + nc, buckets);
            total++;
        }
        memcpy(prev, cur, nc);
        np = nc;
        have_prev = 1;
    }
    return total;
}
