/* test_common.c - npy round trips and rejection, atomic writes, RNG determinism, the option
 * table (flags, --config INI, checked numbers, which options were given), the descriptor
 * reserve. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_common.h"
#include "moeh_opts.h"
#include "moeh_npy.h"

#include <fcntl.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <math.h>

MOEH_TEST_DIR_FIXTURE("common")

static void test_npy_roundtrip(void **state)
{
    char path[512];
    moeh_err_t err = {0};
    snprintf(path, sizeof path, "%s/a.npy", g_dir);
    float data[6] = {1, -2, 3.5f, 4, 5, 6e-7f};
    size_t shape[2] = {2, 3};
    assert_int_equal(moeh_npy_write(path, MOEH_DT_F32, 2, shape, data, &err), 0);
    moeh_npy_t a;
    assert_int_equal(moeh_npy_read(path, MOEH_DT_F32, 2, &a, &err), 0);
    assert_int_equal(a.shape[0], 2);
    assert_int_equal(a.shape[1], 3);
    assert_memory_equal(a.data, data, sizeof data);
    moeh_npy_free(&a);

    /* 1-D u8, and the header is 64-byte aligned as numpy writes it */
    uint8_t b[5] = {0, 1, 2, 3, 255};
    size_t s1[1] = {5};
    assert_int_equal(moeh_npy_write(path, MOEH_DT_U8, 1, s1, b, &err), 0);
    char *raw;
    size_t len;
    assert_int_equal(moeh_file_read_all(path, 1 << 20, &raw, &len, &err), 0);
    assert_int_equal((len - 5) % 64, 0);
    assert_non_null(strstr(raw + 10, "'shape': (5,)"));
    free(raw);
    assert_int_equal(moeh_npy_read(path, MOEH_DT_U8, 1, &a, &err), 0);
    assert_memory_equal(a.data, b, 5);
    moeh_npy_free(&a);

    /* wrong dtype and wrong rank are reported with the file name */
    assert_int_equal(moeh_npy_read(path, MOEH_DT_F32, 1, &a, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "dtype |u1, expected <f4"));
    assert_int_equal(moeh_npy_read(path, MOEH_DT_U8, 2, &a, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "rank 1, expected 2"));
}

static void test_npy_rejects_truncated(void **state)
{
    char path[512];
    moeh_err_t err = {0};
    snprintf(path, sizeof path, "%s/t.npy", g_dir);
    float data[4] = {1, 2, 3, 4};
    size_t shape[1] = {4};
    assert_int_equal(moeh_npy_write(path, MOEH_DT_F32, 1, shape, data, &err), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(truncate(path, st.st_size - 6), 0); /* cut into the data */
    moeh_npy_t a;
    assert_int_equal(moeh_npy_read(path, -1, 0, &a, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "need 16"));
    assert_int_equal(moeh_file_write_atomic(path, "garbage!!!!!", 12, &err), 0);
    assert_int_equal(moeh_npy_read(path, -1, 0, &a, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "bad magic"));
}

static void test_atomic_write_replaces(void **state)
{
    char path[512];
    moeh_err_t err = {0};
    snprintf(path, sizeof path, "%s/f.txt", g_dir);
    assert_int_equal(moeh_file_write_atomic(path, "one", 3, &err), 0);
    assert_int_equal(moeh_file_write_atomic(path, "second", 6, &err), 0);
    char *buf;
    size_t len;
    assert_int_equal(moeh_file_read_all(path, 100, &buf, &len, &err), 0);
    assert_int_equal(len, 6);
    assert_string_equal(buf, "second");
    free(buf);
    assert_int_equal(moeh_file_read_all(path, 3, &buf, &len, &err), -EFBIG);
    /* no temporary file is left behind */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_int_not_equal(access(tmp, F_OK), 0);
    /* a directory that does not exist is an error with the path in it */
    snprintf(path, sizeof path, "%s/no/such/dir/f", g_dir);
    assert_int_equal(moeh_file_write_atomic(path, "x", 1, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "no/such/dir"));
}

/* Opens /dev/null until the descriptor table is full; returns how many it opened. */
static int fill_fd_table(int *fds, int cap)
{
    int n = 0;
    while (n < cap) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            assert_true(errno == EMFILE || errno == ENFILE);
            break;
        }
        fds[n++] = fd;
    }
    assert_int_not_equal(n, cap); /* the table did fill */
    return n;
}

/* The descriptor reserve: with the table full (a peer's connections took every descriptor), a
 * checkpoint-style write and read still succeed; without a reserve they fail with EMFILE. */
static void test_fd_reserve_full_table(void **state)
{
    struct rlimit was, lim;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &was), 0);
    int fds[512], n = 0, m = 0;
    lim = was;
    lim.rlim_cur = 0;
    for (int fd = 0; fd < 65536; fd++) /* the highest descriptor open now, plus room */
        if (fcntl(fd, F_GETFD) != -1) lim.rlim_cur = (rlim_t)fd + 1;
    lim.rlim_cur += 64;
    if (was.rlim_cur != RLIM_INFINITY && lim.rlim_cur > was.rlim_cur) skip();
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);

    assert_int_equal(moeh_fd_reserve(4), 4);
    n = fill_fd_table(fds, 512);
    char path[512];
    moeh_err_t err = {0};
    snprintf(path, sizeof path, "%s/ckpt", g_dir);
    assert_int_equal(moeh_file_write_atomic(path, "state", 5, &err), 0);
    char *buf;
    size_t len;
    assert_int_equal(moeh_file_read_all(path, 100, &buf, &len, &err), 0);
    assert_string_equal(buf, "state");
    free(buf);
    assert_int_equal(moeh_fd_reserve(4), 4); /* taken back after each file */

    assert_int_equal(moeh_fd_reserve(0), 0); /* no reserve: the freed slots are taken ... */
    m = fill_fd_table(fds + n, 512 - n);
    assert_int_equal(m, 4);
    assert_int_equal(moeh_file_write_atomic(path, "later", 5, &err), -EMFILE); /* ... and fail */
    assert_non_null(strstr(err.msg, "ckpt"));
    assert_int_equal(moeh_file_read_all(path, 100, &buf, &len, &err), -EMFILE);

    for (int i = 0; i < n + m; i++)
        close(fds[i]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &was), 0);
    assert_int_equal(moeh_file_read_all(path, 100, &buf, &len, &err), 0);
    assert_string_equal(buf, "state"); /* the failed write left the file alone */
    free(buf);
}

static void test_rng(void **state)
{
    moeh_rng_t a, b;
    moeh_rng_seed(&a, 42);
    moeh_rng_seed(&b, 42);
    double sum = 0, sq = 0;
    for (int i = 0; i < 100000; i++) {
        assert_true(moeh_rng_u64(&a) == moeh_rng_u64(&b));
        double z = moeh_rng_normal(&a);
        (void)moeh_rng_normal(&b);
        sum += z;
        sq += z * z;
    }
    assert_true(fabs(sum / 100000) < 0.02);
    assert_true(fabs(sq / 100000 - 1.0) < 0.02);
}

/* flags override the --config file; numbers are parsed whole; moeh_opts_seen tells a given
 * option from a default */
static void test_opts(void **state)
{
    char ini[300];
    snprintf(ini, sizeof ini, "%s/o.ini", g_dir);
    assert_int_equal(
        moeh_test_put(g_dir, "o.ini", "[x]\nrounds = 5\nname = from-file\nrate = 0.25\n"), 0);
    uint32_t rounds = 8, warm = 3;
    double rate = 1.0;
    const char *name = "default";
    int flag = 0;
    const moeh_opt_t opts[] = {
        {"rounds", MOEH_OPT_U32, &rounds, "r"}, {"warm", MOEH_OPT_U32, &warm, "w"},
        {"rate", MOEH_OPT_F64, &rate, "x"},     {"name", MOEH_OPT_STR, &name, "n"},
        {"flag", MOEH_OPT_BOOL, &flag, "f"},
    };
    moeh_opts_t o = {.prog = "t", .synopsis = "t", .opts = opts, .n_opts = 5};
    char *argv[] = {"t", "--config", ini, "--rounds", "7", "--flag", NULL};
    moeh_err_t err = {0};
    assert_int_equal(moeh_opts_parse(&o, 6, argv, &err), 0);
    assert_int_equal(rounds, 7); /* the flag wins over the file */
    assert_string_equal(name, "from-file");
    assert_true(rate == 0.25 && flag == 1 && warm == 3);
    assert_true(moeh_opts_seen(&o, &rounds) && moeh_opts_seen(&o, &name) &&
                moeh_opts_seen(&o, &rate) && moeh_opts_seen(&o, &flag));
    assert_false(moeh_opts_seen(&o, &warm)); /* left at its default */
    moeh_opts_free(&o);
    moeh_opts_t o2 = {.prog = "t", .synopsis = "t", .opts = opts, .n_opts = 5};
    char *bad[] = {"t", "--rate", "0.5x", NULL};
    assert_int_equal(moeh_opts_parse(&o2, 3, bad, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "--rate: '0.5x' is not a finite number"));
    char *neg[] = {"t", "--warm", "-1", NULL};
    assert_int_equal(moeh_opts_parse(&o2, 3, neg, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "not a non-negative integer"));
    moeh_opts_free(&o2);
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_npy_roundtrip),
               cmocka_unit_test(test_npy_rejects_truncated),
               cmocka_unit_test(test_atomic_write_replaces),
               cmocka_unit_test(test_fd_reserve_full_table), cmocka_unit_test(test_rng),
               cmocka_unit_test(test_opts))
