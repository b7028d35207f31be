/* test_csv.c - the streaming CSV reader: quoting, embedded newlines and commas, CRLF, gzip
 * (single and multi-member), rows longer than the buffer, errors with file:line:column, and
 * the field parsers (integers, decimals, MIMIC timestamps). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include "test_util.h"

#include "moeh_csv.h"

#include <stdbool.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

MOEH_TEST_DIR_FIXTURE("csv")

static void write_plain(const char *path, const char *s, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(s, 1, n, f), n);
    fclose(f);
}

/* writes s as a gzip file; with members > 1 it is cut into that many gzip members */
static void write_gz(const char *path, const char *s, size_t n, int members)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fclose(f);
    size_t step = (n + (size_t)members - 1) / (size_t)members;
    for (size_t off = 0; off < n; off += step) {
        gzFile g = gzopen(path, "ab");
        assert_non_null(g);
        size_t k = n - off < step ? n - off : step;
        assert_int_equal(gzwrite(g, s + off, (unsigned)k), (int)k);
        gzclose(g);
    }
}

static const char k_tricky[] = "subject_id,text,value\r\n"
                               "1,plain,1.5\r\n"
                               "2,\"with, comma\",2\n"
                               "3,\"multi\nline\n\"\"quoted\"\" text\",-3.25\n"
                               "4,,\n"
                               "5,\"\",7e2\n"
                               "6,last,8"; /* no final newline */

static void check_tricky(const char *path)
{
    moeh_err_t err = {0};
    moeh_csv_t *r;
    assert_int_equal(moeh_csv_open(path, &r, &err), 0);
    assert_int_equal(moeh_csv_ncols(r), 3);
    assert_int_equal(moeh_csv_col(r, "text"), 1);
    assert_int_equal(moeh_csv_col(r, "nope"), -1);
    const char *texts[] = {"plain", "with, comma", "multi\nline\n\"quoted\" text", "", "", "last"};
    const double vals[] = {1.5, 2, -3.25, 0, 700, 8};
    const uint64_t lines[] = {2, 3, 4, 7, 8, 9};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(moeh_csv_next(r, &err), 1);
        int64_t id;
        assert_int_equal(moeh_csv_parse_i64(moeh_csv_field(r, 0), &id), 0);
        assert_int_equal(id, i + 1);
        moeh_csv_field_t t = moeh_csv_field(r, 1);
        assert_int_equal(t.len, strlen(texts[i]));
        assert_memory_equal(t.p, texts[i], t.len);
        double v;
        if (i == 3)
            assert_int_equal(moeh_csv_parse_f64(moeh_csv_field(r, 2), &v), -ENODATA);
        else {
            assert_int_equal(moeh_csv_parse_f64(moeh_csv_field(r, 2), &v), 0);
            assert_true(v == vals[i]);
        }
        assert_int_equal(moeh_csv_line(r), lines[i]);
    }
    assert_int_equal(moeh_csv_next(r, &err), 0);
    assert_int_equal(moeh_csv_next(r, &err), 0);
    moeh_csv_destroy(&r);
    assert_null(r);
    moeh_csv_destroy(&r);   /* NULL-safe */
    moeh_csv_destroy(NULL); /* and so is a NULL handle */
}

static void test_quoting_plain_and_gzip(void **state)
{
    char p[512];
    snprintf(p, sizeof p, "%s/t.csv", g_dir);
    write_plain(p, k_tricky, strlen(k_tricky));
    check_tricky(p);
    snprintf(p, sizeof p, "%s/t.csv.gz", g_dir);
    write_gz(p, k_tricky, strlen(k_tricky), 1);
    check_tricky(p);
    write_gz(p, k_tricky, strlen(k_tricky), 4); /* members split mid-row and mid-quote */
    check_tricky(p);
}

/* many rows, some with quoted fields longer than the 4 MiB initial buffer */
static void test_long_rows_and_refill(void **state)
{
    size_t big = (size_t)6 << 20, n = 20000;
    size_t cap = big * 2 + n * 64 + 64;
    char *s = malloc(cap);
    assert_non_null(s);
    size_t len = (size_t)sprintf(s, "a,b\n");
    for (size_t i = 0; i < n; i++) {
        if (i == 100 || i == 15000) {
            len += (size_t)sprintf(s + len, "%zu,\"", i);
            for (size_t k = 0; k < big; k++)
                s[len++] = (k % 1000 == 999) ? '\n' : (k % 7 == 0 ? ',' : 'x');
            len += (size_t)sprintf(s + len, "\"\n");
        } else {
            len += (size_t)sprintf(s + len, "%zu,row %zu\n", i, i);
        }
    }
    char p[512];
    snprintf(p, sizeof p, "%s/long.csv.gz", g_dir);
    write_gz(p, s, len, 3);
    free(s);
    moeh_err_t err = {0};
    moeh_csv_t *r;
    assert_int_equal(moeh_csv_open(p, &r, &err), 0);
    uint64_t line = 2;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(moeh_csv_next(r, &err), 1);
        int64_t id;
        assert_int_equal(moeh_csv_parse_i64(moeh_csv_field(r, 0), &id), 0);
        assert_int_equal((size_t)id, i);
        assert_int_equal(moeh_csv_line(r), line);
        if (i == 100 || i == 15000) {
            assert_int_equal(moeh_csv_field(r, 1).len, big);
            line += big / 1000 + 1;
        } else {
            line++;
        }
    }
    assert_int_equal(moeh_csv_next(r, &err), 0);
    assert_true(moeh_csv_bytes(r) == (uint64_t)len);
    moeh_csv_destroy(&r);
}

/* Random tables (empty, plain, comma, quote, newline fields; random quoting of plain fields;
 * LF or CRLF; a BOM) over 10 MB, so rows straddle buffer refills and gzip members. */
static void test_random_roundtrip(void **state)
{
    moeh_rng_t r;
    moeh_rng_seed(&r, 42);
    const size_t C = 5, R = 120000;
    size_t cap = (size_t)64 << 20, len = 0, fcap = R * C;
    char *s = malloc(cap), *want = malloc((size_t)48 << 20);
    size_t *wofs = malloc((fcap + 1) * sizeof *wofs), wl = 0;
    assert_true(s && want && wofs);
    len += (size_t)sprintf(s, "\xef\xbb\xbf"
                              "c0,c1,c2,c3,c4\n");
    static const char *const pieces[] = {"a", "bc", ",", "\"", "\n", "x y", "123", "-4.5"};
    for (size_t i = 0; i < R; i++) {
        bool crlf = moeh_rng_uniform(&r) < 0.3;
        for (size_t c = 0; c < C; c++) {
            char f[64];
            size_t fl = 0, np = (size_t)(moeh_rng_u64(&r) % 5);
            bool special = false;
            for (size_t k = 0; k < np; k++) {
                const char *pc = pieces[moeh_rng_u64(&r) % 8];
                special |= strpbrk(pc, ",\"\n") != NULL;
                fl += (size_t)sprintf(f + fl, "%s", pc);
            }
            wofs[i * C + c] = wl;
            memcpy(want + wl, f, fl);
            wl += fl;
            bool quote = special || moeh_rng_uniform(&r) < 0.1;
            if (quote) s[len++] = '"';
            for (size_t k = 0; k < fl; k++) {
                if (f[k] == '"') s[len++] = '"';
                s[len++] = f[k];
            }
            if (quote) s[len++] = '"';
            if (c + 1 < C) s[len++] = ',';
        }
        if (crlf) s[len++] = '\r';
        s[len++] = '\n';
    }
    wofs[R * C] = wl;
    char p[512];
    snprintf(p, sizeof p, "%s/random.csv.gz", g_dir);
    write_gz(p, s, len, 7);
    moeh_err_t err = {0};
    moeh_csv_t *rd;
    assert_int_equal(moeh_csv_open(p, &rd, &err), 0);
    assert_int_equal(moeh_csv_col(rd, "c0"), 0); /* the BOM is not part of the name */
    for (size_t i = 0; i < R; i++) {
        int rc = moeh_csv_next(rd, &err);
        if (rc != 1) fail_msg("row %zu: %d %s", i, rc, err.msg);
        for (size_t c = 0; c < C; c++) {
            moeh_csv_field_t f = moeh_csv_field(rd, c);
            size_t wlen = wofs[i * C + c + 1] - wofs[i * C + c];
            if (f.len != wlen || memcmp(f.p, want + wofs[i * C + c], wlen))
                fail_msg("row %zu col %zu differs", i, c);
        }
    }
    assert_int_equal(moeh_csv_next(rd, &err), 0);
    assert_true(moeh_csv_bytes(rd) == (uint64_t)len);
    moeh_csv_destroy(&rd);
    free(s);
    free(want);
    free(wofs);
}

/* Garbage in: random mixes of the characters that matter never crash the reader, and every
 * error names the file (run under ASan in CI). */
static void test_garbage(void **state)
{
    moeh_rng_t r;
    moeh_rng_seed(&r, 7);
    static const char alphabet[] = ",\"\n\ra1";
    char p[512], buf[3000];
    snprintf(p, sizeof p, "%s/garbage.csv", g_dir);
    for (int it = 0; it < 300; it++) {
        size_t n = (size_t)(moeh_rng_u64(&r) % sizeof buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = alphabet[moeh_rng_u64(&r) % (sizeof alphabet - 1)];
        write_plain(p, buf, n);
        moeh_err_t err = {0};
        moeh_csv_t *rd;
        int rc = moeh_csv_open(p, &rd, &err);
        if (rc) {
            assert_non_null(strstr(err.msg, "garbage.csv"));
            continue;
        }
        for (int k = 0; k < 5000 && (rc = moeh_csv_next(rd, &err)) != 0; k++) {
            if (rc < 0)
                assert_non_null(strstr(err.msg, "garbage.csv:"));
            else
                for (size_t c = 0; c < moeh_csv_ncols(rd); c++)
                    (void)moeh_csv_field(rd, c);
        }
        moeh_csv_destroy(&rd);
    }
}

static void test_errors(void **state)
{
    char p[512];
    moeh_err_t err = {0};
    moeh_csv_t *r;
    snprintf(p, sizeof p, "%s/missing.csv.gz", g_dir);
    assert_int_equal(moeh_csv_open(p, &r, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "missing.csv.gz"));

    const char *bad = "a,b,c\n1,2,3\n4,5\n6,\"x\"y,7\n8,9,10\n11,\"unterminated,12\n";
    snprintf(p, sizeof p, "%s/bad.csv", g_dir);
    write_plain(p, bad, strlen(bad));
    assert_int_equal(moeh_csv_open(p, &r, &err), 0);
    assert_int_equal(moeh_csv_next(r, &err), 1);
    assert_int_equal(moeh_csv_next(r, &err), -EBADMSG); /* too few fields */
    assert_non_null(strstr(err.msg, "bad.csv:3:"));
    assert_non_null(strstr(err.msg, "2 fields"));
    assert_int_equal(moeh_csv_next(r, &err), -EBADMSG); /* junk after a closing quote */
    assert_non_null(strstr(err.msg, "bad.csv:4:2"));
    assert_int_equal(moeh_csv_next(r, &err), 1); /* the reader carries on */
    assert_true(moeh_csv_eq(moeh_csv_field(r, 2), "10"));
    assert_int_equal(moeh_csv_next(r, &err), -EBADMSG);
    assert_non_null(strstr(err.msg, "bad.csv:6:2: unterminated"));
    assert_int_equal(moeh_csv_next(r, &err), 0);
    assert_int_equal(moeh_csv_field_error(r, 1, &err, "bad value"), -EBADMSG);
    moeh_csv_destroy(&r);

    snprintf(p, sizeof p, "%s/trunc.csv.gz", g_dir);
    write_gz(p, k_tricky, strlen(k_tricky), 1);
    assert_int_equal(truncate(p, 30), 0);
    int rc = moeh_csv_open(p, &r, &err);
    if (rc == 0) {
        while ((rc = moeh_csv_next(r, &err)) == 1)
            ;
        moeh_csv_destroy(&r);
    }
    assert_int_equal(rc, -EBADMSG);
    assert_non_null(strstr(err.msg, "trunc.csv.gz"));
}

static void test_parsers(void **state)
{
    int64_t t;
    moeh_csv_field_t f = {"1970-01-01 00:00:00", 19};
    assert_int_equal(moeh_csv_parse_time(f, &t), 0);
    assert_int_equal(t, 0);
    f = (moeh_csv_field_t){"2000-03-01 01:02:03", 19};
    assert_int_equal(moeh_csv_parse_time(f, &t), 0);
    assert_int_equal(t, 951872523);
    f = (moeh_csv_field_t){"2180-07-23 21:45:00", 19}; /* MIMIC's shifted years */
    assert_int_equal(moeh_csv_parse_time(f, &t), 0);
    assert_int_equal(t, 6644670300LL);
    f = (moeh_csv_field_t){"2180-07-23", 10};
    assert_int_equal(moeh_csv_parse_time(f, &t), 0);
    assert_int_equal(t, 6644592000LL);
    f = (moeh_csv_field_t){"2180-13-23 21:45:00", 19};
    assert_int_equal(moeh_csv_parse_time(f, &t), -EBADMSG);
    double v;
    f = (moeh_csv_field_t){"-0.125", 6};
    assert_int_equal(moeh_csv_parse_f64(f, &v), 0);
    assert_true(v == -0.125);
    f = (moeh_csv_field_t){"1.5e-3", 6};
    assert_int_equal(moeh_csv_parse_f64(f, &v), 0);
    assert_true(v == 1.5e-3);
    f = (moeh_csv_field_t){"12abc", 5};
    assert_int_equal(moeh_csv_parse_f64(f, &v), -EBADMSG);
    f = (moeh_csv_field_t){"98.60000000000000000001", 23};
    assert_int_equal(moeh_csv_parse_f64(f, &v), 0);
    assert_true(v > 98.59 && v < 98.61);
    int64_t i;
    f = (moeh_csv_field_t){"12x", 3};
    assert_int_equal(moeh_csv_parse_i64(f, &i), -EBADMSG);
    f = (moeh_csv_field_t){"", 0};
    assert_int_equal(moeh_csv_parse_i64(f, &i), -ENODATA);
}

MOEH_TEST_MAIN(setup, teardown, cmocka_unit_test(test_quoting_plain_and_gzip),
               cmocka_unit_test(test_long_rows_and_refill), cmocka_unit_test(test_random_roundtrip),
               cmocka_unit_test(test_errors), cmocka_unit_test(test_garbage),
               cmocka_unit_test(test_parsers))
