/* moeh_text.h - the notes tokenizer: raw text -> hashed uni- and bi-gram ids for the
 * embedding bag of the notes encoder (moeh_moe.h, note_buckets).
 *
 * Tokens are maximal runs of ASCII letters and digits, lower-cased (every other byte, including
 * UTF-8 continuation bytes, separates tokens); tokens longer than MOEH_TOKEN_MAX bytes are cut.
 * Each token t gives id hash("1:" t) mod H and each adjacent pair (s, t) gives
 * hash("2:" s " " t) mod H, with XXH64 seeded by MOEH_TEXT_HASH_SEED, so ids are stable across
 * machines and runs. Ids are emitted in text order: unigram of token i, then the bigram
 * (i-1, i). */
#ifndef MOEH_TEXT_H
#define MOEH_TEXT_H

#include <stddef.h>
#include <stdint.h>

#define MOEH_TOKEN_MAX 32
#define MOEH_TEXT_HASH_SEED 0x6d6f6568u

/* Writes up to cap ids into ids (may be NULL when cap is 0) and returns how many the text
 * yields in total (so a return > cap means the output was truncated: call again with a larger
 * buffer, or keep the first cap). buckets must be > 0. Allocates nothing. */
size_t moeh_text_hash_ngrams(uint32_t *ids, size_t cap, const char *text, size_t len,
                             uint32_t buckets);

#endif
