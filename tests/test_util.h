/* test_util.h - helpers shared by the tests: a per-test temporary directory under /tmp and
 * its removal (without a shell), the cmocka fixture of a test file's scratch directory, writing
 * a small file, corrupting one byte of a file, decoding a hex known answer. */
#ifndef MOEH_TEST_UTIL_H
#define MOEH_TEST_UTIL_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

/* Decodes the first 2 n hex digits of hex into out (n bytes). 0 or -1 (not hex). */
static inline int moeh_test_hex(unsigned char *out, const char *hex, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (unsigned char)v;
    }
    return 0;
}

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

/* Writes text to DIR/name (created or replaced). 0 or -1. */
static inline int moeh_test_put(const char *dir, const char *name, const char *text)
{
    char path[1024];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return -1;
    FILE *fp = fopen(path, "w");
    if (!fp) return -1;
    int ok = fputs(text, fp) >= 0;
    return fclose(fp) == 0 && ok ? 0 : -1;
}

/* Overwrites the byte `back` bytes before the end of the file at path with `byte` (a
 * corrupted file). 0 or -1. */
static inline int moeh_test_poke(const char *path, long back, int byte)
{
    FILE *fp = fopen(path, "r+b");
    if (!fp) return -1;
    int ok = fseek(fp, -back, SEEK_END) == 0 && fputc(byte, fp) != EOF;
    return fclose(fp) == 0 && ok ? 0 : -1;
}

/* The fixtures outside the repository: the MIMIC-IV demo ($MOEH_DEMO_DIR) and the NIH chest
 * X-ray sample ($MOEH_CXR_SAMPLE_DIR), where the environment says, else at their place on the
 * build machine. A test that needs one skips where it is missing. */
static inline const char *moeh_test_demo_dir(void)
{
    const char *d = getenv("MOEH_DEMO_DIR");
    return d ? d : "/work/shared/data/mimic-iv-demo";
}

static inline const char *moeh_test_cxr_sample_dir(void)
{
    const char *d = getenv("MOEH_CXR_SAMPLE_DIR");
    return d ? d : "/work/shared/data/cxr-sample";
}

/* Removes dir and everything under it (symlinks are removed, not followed). 0 or -1. */
static inline int moeh_test_rmtree(const char *dir)
{
    return nftw(dir, moeh_test_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The scratch directory of a test file: MOEH_TEST_DIR_FIXTURE(NAME) defines g_dir and the group
 * fixture functions setup / teardown (for MOEH_TEST_MAIN) that create /tmp/moeh_test_NAME_XXXXXX
 * and remove it with all it holds. MOEH_TEST_FILE_FIXTURE(NAME, FILE) also sets g_path to
 * g_dir/FILE, the file the tests work on. */
#define MOEH_TEST_FILE_FIXTURE(NAME, FILE)                                                         \
    static char g_dir[256], g_path[512] __attribute__((unused));                                   \
    static int setup(void **state)                                                                 \
    {                                                                                              \
        (void)state;                                                                               \
        if (moeh_test_tmpdir(g_dir, sizeof g_dir, NAME)) return -1;                                \
        snprintf(g_path, sizeof g_path, "%s/%s", g_dir, FILE);                                     \
        return 0;                                                                                  \
    }                                                                                              \
    static int teardown(void **state)                                                              \
    {                                                                                              \
        (void)state;                                                                               \
        return moeh_test_rmtree(g_dir);                                                            \
    }
#define MOEH_TEST_DIR_FIXTURE(NAME) MOEH_TEST_FILE_FIXTURE(NAME, "")

#endif
