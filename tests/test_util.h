/* test_util.h - helpers shared by the tests: a per-test temporary directory under /tmp and
 * its removal (without a shell). */
#ifndef MOEH_TEST_UTIL_H
#define MOEH_TEST_UTIL_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

/* Creates /tmp/moeh_test_NAME_XXXXXX into buf (cap bytes). 0 or -1. */
static inline int moeh_test_tmpdir(char *buf, size_t cap, const char *name)
{
    if (snprintf(buf, cap, "/tmp/moeh_test_%s_XXXXXX", name) >= (int)cap) return -1;
    return mkdtemp(buf) ? 0 : -1;
}

static inline int moeh_test_rm_one(const char *path, const struct stat *st, int flag,
                                   struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Removes dir and everything under it (symlinks are removed, not followed). 0 or -1. */
static inline int moeh_test_rmtree(const char *dir)
{
    return nftw(dir, moeh_test_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
