/* npy.c - minimal, strict .npy reader and writer (see npy.h). */
#include "moeh_npy.h"

#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *k_descr[MOEH_DT_COUNT] = {"<f4", "|u1", "<i4", "<i8"};
static const size_t k_size[MOEH_DT_COUNT] = {4, 1, 4, 8};

size_t moeh_dtype_size(moeh_dtype_t dt)
{
    return dt < MOEH_DT_COUNT ? k_size[dt] : 0;
}

const char *moeh_dtype_name(moeh_dtype_t dt)
{
    return dt < MOEH_DT_COUNT ? k_descr[dt] : "?";
}

size_t moeh_npy_numel(const moeh_npy_t *a)
{
    size_t n = 1;
    for (size_t i = 0; i < a->ndim; i++)
        n *= a->shape[i];
    return n;
}

int moeh_npy_write(const char *path, moeh_dtype_t dt, size_t ndim, const size_t *shape,
                   const void *data, moeh_err_t *err)
{
    if (dt >= MOEH_DT_COUNT || ndim > MOEH_NPY_MAX_DIMS)
        return moeh_errf(err, -EINVAL, "%s: unsupported dtype or rank", path);
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     k_descr[dt]);
    size_t numel = 1;
    for (size_t i = 0; i < ndim; i++) {
        n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%zu%s", shape[i],
                      (ndim == 1 || i + 1 < ndim) ? ", " : "");
        numel *= shape[i];
    }
    if (ndim == 1) /* "(5, )" is valid but numpy writes "(5,)" */
        n--, hdr[n - 1] = ',';
    n += snprintf(hdr + n, sizeof hdr - (size_t)n, "), }");
    /* magic(6) + version(2) + len(2) + header, padded with spaces to a multiple of 64, '\n' */
    size_t total_hdr = 10 + (size_t)n + 1;
    size_t pad = (64 - total_hdr % 64) % 64;
    size_t hlen = (size_t)n + pad + 1;
    size_t bytes = numel * k_size[dt];
    size_t len = 10 + hlen + bytes;
    unsigned char *buf = malloc(len);
    if (!buf) return moeh_errf(err, -ENOMEM, "%s: out of memory", path);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8);
    memcpy(buf + 10, hdr, (size_t)n);
    memset(buf + 10 + n, ' ', pad);
    buf[10 + hlen - 1] = '\n';
    if (bytes) memcpy(buf + 10 + hlen, data, bytes);
    int rc = moeh_file_write_atomic(path, buf, len, err);
    free(buf);
    return rc;
}

/* Finds "'key':" in the header dict and returns a pointer just after the colon and spaces. */
static const char *dict_value(const char *hdr, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof pat, "'%s':", key);
    const char *p = strstr(hdr, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    return p;
}

/* Parses and checks the header of the .npy image buf[0,len): dtype, rank and shape, and
 * that the data after the header has exactly the size they imply. On success *off is the
 * data offset. 0 or -EBADMSG with a message naming path. */
static int parse_header(const char *path, const char *buf, size_t len, int want_dtype,
                        size_t want_ndim, moeh_dtype_t *dt_out, size_t *ndim_out, size_t *shape,
                        size_t *off_out, moeh_err_t *err)
{
    int rc = -EBADMSG;
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0)
        return moeh_errf(err, rc, "%s: not a .npy file (bad magic)", path);
    size_t hlen, off;
    if (buf[6] == 1) {
        hlen = (unsigned char)buf[8] | ((size_t)(unsigned char)buf[9] << 8);
        off = 10;
    } else if (buf[6] == 2 || buf[6] == 3) {
        if (len < 12) return moeh_errf(err, rc, "%s: truncated header", path);
        hlen = (unsigned char)buf[8] | ((size_t)(unsigned char)buf[9] << 8) |
               ((size_t)(unsigned char)buf[10] << 16) | ((size_t)(unsigned char)buf[11] << 24);
        off = 12;
    } else {
        return moeh_errf(err, rc, "%s: unsupported .npy version %d", path, buf[6]);
    }
    if (hlen > 65536 || off + hlen > len)
        return moeh_errf(err, rc, "%s: header length %zu exceeds the file", path, hlen);
    char hdr[65537];
    memcpy(hdr, buf + off, hlen);
    hdr[hlen] = '\0';
    const char *d = dict_value(hdr, "descr"), *fo = dict_value(hdr, "fortran_order"),
               *sh = dict_value(hdr, "shape");
    if (!d || !fo || !sh)
        return moeh_errf(err, rc, "%s: header lacks descr, fortran_order or shape", path);
    int dt = -1;
    for (int i = 0; i < MOEH_DT_COUNT; i++) {
        size_t l = strlen(k_descr[i]);
        if (d[0] == '\'' && strncmp(d + 1, k_descr[i], l) == 0 && d[1 + l] == '\'') dt = i;
    }
    if (dt < 0)
        return moeh_errf(err, rc, "%s: unsupported dtype %.8s (expected one of <f4 |u1 <i4 <i8)",
                         path, d);
    if (strncmp(fo, "False", 5) != 0)
        return moeh_errf(err, rc, "%s: Fortran-ordered arrays are not supported", path);
    if (*sh != '(') return moeh_errf(err, rc, "%s: malformed shape", path);
    sh++;
    size_t ndim = 0, numel = 1;
    while (*sh && *sh != ')') {
        while (*sh == ' ' || *sh == ',')
            sh++;
        if (*sh == ')') break;
        char *end;
        unsigned long long v = strtoull(sh, &end, 10);
        if (end == sh || ndim == MOEH_NPY_MAX_DIMS || v > ((size_t)1 << 40))
            return moeh_errf(err, rc, "%s: malformed or too large shape (rank <= %d)", path,
                             MOEH_NPY_MAX_DIMS);
        shape[ndim++] = (size_t)v;
        numel *= (size_t)v;
        sh = end;
    }
    if (*sh != ')') return moeh_errf(err, rc, "%s: malformed shape", path);
    if (want_dtype >= 0 && dt != want_dtype)
        return moeh_errf(err, rc, "%s: dtype %s, expected %s", path, k_descr[dt],
                         k_descr[want_dtype]);
    if (want_ndim > 0 && ndim != want_ndim)
        return moeh_errf(err, rc, "%s: rank %zu, expected %zu", path, ndim, want_ndim);
    size_t bytes = numel * k_size[dt];
    if (len - off - hlen != bytes)
        return moeh_errf(err, rc, "%s: data is %zu bytes, shape and dtype need %zu", path,
                         len - off - hlen, bytes);
    *dt_out = (moeh_dtype_t)dt;
    *ndim_out = ndim;
    *off_out = off + hlen;
    return 0;
}

int moeh_npy_parse(const void *data, size_t len, const char *path, int want_dtype, size_t want_ndim,
                   moeh_npy_t *out, moeh_err_t *err)
{
    const char *buf = data;
    size_t off = 0;
    int rc;
    memset(out, 0, sizeof *out);
    if ((rc = parse_header(path, buf, len, want_dtype, want_ndim, &out->dtype, &out->ndim,
                           out->shape, &off, err)) != 0)
        return rc;
    size_t bytes = len - off;
    out->data = malloc(bytes ? bytes : 1);
    if (!out->data) return moeh_errf(err, -ENOMEM, "%s: out of memory", path);
    memcpy(out->data, buf + off, bytes);
    return 0;
}

int moeh_npy_read(const char *path, int want_dtype, size_t want_ndim, moeh_npy_t *out,
                  moeh_err_t *err)
{
    char *buf = NULL;
    size_t len = 0;
    memset(out, 0, sizeof *out);
    int rc = moeh_file_read_all(path, (size_t)1 << 36, &buf, &len, err);
    if (rc == 0) rc = moeh_npy_parse(buf, len, path, want_dtype, want_ndim, out, err);
    free(buf);
    return rc;
}

int moeh_npy_map(const char *path, int want_dtype, size_t want_ndim, moeh_npy_map_t *out,
                 moeh_err_t *err)
{
    memset(out, 0, sizeof *out);
    int rc, fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return moeh_errf(err, -errno, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = moeh_errf(err, -errno, "%s: %s", path, strerror(errno));
        goto out;
    }
    size_t len = (size_t)st.st_size, off = 0;
    void *m = len ? mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (m == MAP_FAILED) {
        rc = len ? moeh_errf(err, -errno, "%s: mmap: %s", path, strerror(errno))
                 : moeh_errf(err, -EBADMSG, "%s: empty file, not a .npy array", path);
        goto out;
    }
    rc = parse_header(path, m, len, want_dtype, want_ndim, &out->dtype, &out->ndim, out->shape,
                      &off, err);
    if (rc != 0) {
        munmap(m, len);
        goto out;
    }
    out->map = m;
    out->map_len = len;
    out->data = (const char *)m + off;
    out->nbytes = len - off;
out:
    close(fd);
    return rc;
}

void moeh_npy_unmap(moeh_npy_map_t *m)
{
    if (!m || !m->map) return;
    munmap(m->map, m->map_len);
    memset(m, 0, sizeof *m);
}

void moeh_npy_free(moeh_npy_t *a)
{
    if (!a) return;
    free(a->data);
    a->data = NULL;
}
