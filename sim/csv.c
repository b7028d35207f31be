/* csv.c - streaming gzip CSV reader (see moeh_csv.h).
 *
 * Two layers: a byte source (plain read(2), or read(2) + ISA-L inflate, multi-member aware,
 * running in a producer thread that fills a ring of blocks) that fills one growable buffer,
 * and a row parser over that buffer. A row is parsed in place;
 * if it runs past the end of the buffered bytes, the partial row is moved to the front, more
 * bytes are read, and the row is parsed again from its start (so field views never point
 * into memory that moved). Unquoted fields point into the buffer; quoted fields are
 * unescaped into a scratch buffer. Rows without any '"' take a memchr fast path. */
#include "moeh_csv.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#ifdef MOEH_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif

#define CSV_BUF_INIT ((size_t)4 << 20)
#define CSV_IN_SIZE ((size_t)1 << 20)
#define CSV_NBLK 4 /* inflated blocks in flight between the two threads */
#define CSV_BLK ((size_t)4 << 20)

/* A gzip input is inflated by a producer thread into a ring of blocks while the caller's
 * thread parses, so inflate and parsing overlap on two cores. Only the producer touches the
 * inflate state; the ring is guarded by mu. */
typedef struct {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *blk[CSV_NBLK];
    size_t len[CSV_NBLK];
    uint64_t zend[CSV_NBLK]; /* compressed bytes inflated up to the end of each block */
    bool full[CSV_NBLK];
    size_t head, tail, off; /* consumer block, producer block, consumer offset in head */
    bool stop, done, started;
    int rc;
    moeh_err_t err;
} csv_pipe_t;

struct moeh_csv {
    char path[PATH_MAX];
    int fd;
    bool gz, src_eof, z_done;
#ifdef MOEH_HAVE_ISAL
    struct inflate_state zs;
#else
    z_stream zs;
#endif
    unsigned char *in;
    size_t in_len, in_pos;
    uint64_t file_size;
    uint64_t raw_read;     /* producer: compressed bytes read from the file */
    uint64_t zprev, zcons; /* consumer: compressed position of the head block's start, of the
                            * last byte taken (interpolated within a block) */

    char *buf;
    size_t cap, pos, end;
    bool eof; /* the source has no more bytes */
    csv_pipe_t pipe;

    char *scratch;
    size_t scap, slen;

    moeh_csv_field_t *f;
    size_t *soff; /* for quoted fields: offset into scratch, or SIZE_MAX */
    size_t fcap, nf;

    char **names;
    size_t ncols;
    uint64_t line, row_line, bytes_in; /* bytes_in: uncompressed bytes put into buf */
};

/* ---- byte source --------------------------------------------------------------------- */

/* Reads raw (compressed) bytes into r->in. 0 ok (maybe 0 bytes at EOF), -EIO on error. */
static int src_read_raw(moeh_csv_t *r)
{
    if (r->in_pos < r->in_len || r->src_eof) return 0;
    ssize_t n;
    do
        n = read(r->fd, r->in, CSV_IN_SIZE);
    while (n < 0 && errno == EINTR);
    if (n < 0) return -EIO;
    r->in_len = (size_t)n, r->in_pos = 0;
    r->raw_read += (uint64_t)n;
    if (n == 0) r->src_eof = true;
    return 0;
}

/* Produces up to cap bytes at dst. Returns bytes produced (0 only at end), or -EIO/-EBADMSG. */
static ssize_t src_produce(moeh_csv_t *r, char *dst, size_t cap, moeh_err_t *err)
{
    if (!r->gz) {
        ssize_t n;
        do
            n = read(r->fd, dst, cap);
        while (n < 0 && errno == EINTR);
        if (n < 0) return moeh_errf(err, -EIO, "%s: read failed: %s", r->path, strerror(errno));
        return n;
    }
    size_t produced = 0;
    while (produced < cap) {
        if (src_read_raw(r) != 0)
            return moeh_errf(err, -EIO, "%s: read failed: %s", r->path, strerror(errno));
        if (r->in_pos == r->in_len && r->src_eof) {
            if (!r->z_done) return moeh_errf(err, -EBADMSG, "%s: truncated gzip stream", r->path);
            break;
        }
        if (r->z_done) { /* another gzip member follows */
#ifdef MOEH_HAVE_ISAL
            isal_inflate_reset(&r->zs);
            r->zs.crc_flag = ISAL_GZIP;
#else
            inflateReset(&r->zs);
#endif
            r->z_done = false;
        }
#ifdef MOEH_HAVE_ISAL
        r->zs.next_in = r->in + r->in_pos;
        r->zs.avail_in = (uint32_t)(r->in_len - r->in_pos);
        r->zs.next_out = (uint8_t *)dst + produced;
        r->zs.avail_out = (uint32_t)(cap - produced);
        int zrc = isal_inflate(&r->zs);
        size_t used = (size_t)(r->zs.next_in - (r->in + r->in_pos));
        size_t out = (size_t)(r->zs.next_out - ((uint8_t *)dst + produced));
        if (zrc < 0)
            return moeh_errf(err, -EBADMSG, "%s: corrupt gzip data (isal %d)", r->path, zrc);
        if (r->zs.block_state == ISAL_BLOCK_FINISH) r->z_done = true;
#else
        r->zs.next_in = r->in + r->in_pos;
        r->zs.avail_in = (uInt)(r->in_len - r->in_pos);
        r->zs.next_out = (Bytef *)dst + produced;
        r->zs.avail_out = (uInt)(cap - produced);
        int zrc = inflate(&r->zs, Z_NO_FLUSH);
        size_t used = (size_t)(r->zs.next_in - (r->in + r->in_pos));
        size_t out = (size_t)(r->zs.next_out - ((Bytef *)dst + produced));
        if (zrc == Z_STREAM_END)
            r->z_done = true;
        else if (zrc != Z_OK && zrc != Z_BUF_ERROR)
            return moeh_errf(err, -EBADMSG, "%s: corrupt gzip data (%s)", r->path,
                             r->zs.msg ? r->zs.msg : "inflate error");
#endif
        r->in_pos += used;
        produced += out;
        if (out == 0 && used == 0 && !r->z_done && r->in_pos < r->in_len)
            return moeh_errf(err, -EBADMSG, "%s: inflate made no progress", r->path);
    }
    return (ssize_t)produced;
}

static void *producer(void *arg)
{
    moeh_csv_t *r = arg;
    csv_pipe_t *q = &r->pipe;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (q->full[q->tail] && !q->stop)
            pthread_cond_wait(&q->cv, &q->mu);
        bool stop = q->stop;
        size_t t = q->tail;
        pthread_mutex_unlock(&q->mu);
        if (stop) break;
        moeh_err_t e = {0};
        ssize_t n = src_produce(r, q->blk[t], CSV_BLK, &e);
        pthread_mutex_lock(&q->mu);
        if (n < 0) {
            q->rc = (int)n;
            q->err = e;
            q->done = true;
        } else {
            q->len[t] = (size_t)n;
            q->zend[t] = r->raw_read - (r->in_len - r->in_pos);
            q->full[t] = true;
            q->tail = (t + 1) % CSV_NBLK;
            q->done = n == 0;
        }
        bool done = q->done;
        pthread_cond_broadcast(&q->cv);
        pthread_mutex_unlock(&q->mu);
        if (done) break;
    }
    return NULL;
}

/* Consumer side: copies up to cap inflated bytes to dst. Bytes copied, 0 at the end, <0 on
 * an inflate error (message in err). */
static ssize_t pipe_read(moeh_csv_t *r, char *dst, size_t cap, moeh_err_t *err)
{
    csv_pipe_t *q = &r->pipe;
    pthread_mutex_lock(&q->mu);
    while (!q->full[q->head] && !q->done)
        pthread_cond_wait(&q->cv, &q->mu);
    if (!q->full[q->head]) {
        int rc = q->rc;
        if (rc < 0) *err = q->err;
        pthread_mutex_unlock(&q->mu);
        return rc;
    }
    size_t h = q->head, len = q->len[h], off = q->off;
    pthread_mutex_unlock(&q->mu);
    if (len == 0) return 0; /* the end-of-input block stays in place */
    size_t k = len - off < cap ? len - off : cap;
    memcpy(dst, q->blk[h] + off, k); /* the producer does not touch a full block */
    pthread_mutex_lock(&q->mu);
    q->off += k;
    r->zcons =
        r->zprev + (uint64_t)((double)(q->zend[h] - r->zprev) * (double)q->off / (double)len);
    if (q->off == len) {
        r->zprev = r->zcons = q->zend[h];
        q->full[h] = false;
        q->off = 0;
        q->head = (h + 1) % CSV_NBLK;
        pthread_cond_broadcast(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
    return (ssize_t)k;
}

static int pipe_start(moeh_csv_t *r, moeh_err_t *err)
{
    csv_pipe_t *q = &r->pipe;
    for (int i = 0; i < CSV_NBLK; i++)
        if (!(q->blk[i] = malloc(CSV_BLK)))
            return moeh_errf(err, -ENOMEM, "%s: out of memory", r->path);
    if (pthread_mutex_init(&q->mu, NULL) || pthread_cond_init(&q->cv, NULL))
        return moeh_errf(err, -ENOMEM, "%s: cannot create a mutex", r->path);
    if (pthread_create(&q->th, NULL, producer, r) != 0) {
        pthread_cond_destroy(&q->cv);
        pthread_mutex_destroy(&q->mu);
        return moeh_errf(err, -EAGAIN, "%s: cannot start the inflate thread", r->path);
    }
    q->started = true;
    return 0;
}

static void pipe_stop(moeh_csv_t *r)
{
    csv_pipe_t *q = &r->pipe;
    if (q->started) {
        pthread_mutex_lock(&q->mu);
        q->stop = true;
        pthread_cond_broadcast(&q->cv);
        pthread_mutex_unlock(&q->mu);
        pthread_join(q->th, NULL);
        pthread_cond_destroy(&q->cv);
        pthread_mutex_destroy(&q->mu);
        q->started = false;
    }
    for (int i = 0; i < CSV_NBLK; i++) {
        free(q->blk[i]);
        q->blk[i] = NULL;
    }
}

/* Keeps buf[pos,end), moves it to the front and appends more bytes (growing the buffer if it
 * is full). 1 if bytes were added, 0 at end of input, <0 on error. */
static int fill(moeh_csv_t *r, moeh_err_t *err)
{
    if (r->eof) return 0;
    if (r->pos > 0) {
        memmove(r->buf, r->buf + r->pos, r->end - r->pos);
        r->end -= r->pos, r->pos = 0;
    }
    if (r->end == r->cap) {
        size_t ncap = r->cap * 2;
        char *nb = realloc(r->buf, ncap + 1);
        if (!nb)
            return moeh_errf(err, -ENOMEM, "%s: out of memory for a %zu-byte row", r->path, ncap);
        r->buf = nb, r->cap = ncap;
    }
    ssize_t n = r->pipe.started ? pipe_read(r, r->buf + r->end, r->cap - r->end, err)
                                : src_produce(r, r->buf + r->end, r->cap - r->end, err);
    if (n < 0) return (int)n;
    if (n == 0) {
        r->eof = true;
        return 0;
    }
    r->end += (size_t)n;
    r->bytes_in += (uint64_t)n;
    return 1;
}

/* ---- row parser ---------------------------------------------------------------------- */

static int push_field(moeh_csv_t *r, const char *p, size_t len, size_t soff, moeh_err_t *err)
{
    if (r->nf == r->fcap) {
        size_t nc = r->fcap ? r->fcap * 2 : 32;
        moeh_csv_field_t *nf = realloc(r->f, nc * sizeof *nf);
        if (!nf) return moeh_errf(err, -ENOMEM, "%s: out of memory", r->path);
        r->f = nf;
        size_t *ns = realloc(r->soff, nc * sizeof *ns);
        if (!ns) return moeh_errf(err, -ENOMEM, "%s: out of memory", r->path);
        r->soff = ns, r->fcap = nc;
    }
    r->f[r->nf].p = p;
    r->f[r->nf].len = len;
    r->soff[r->nf] = soff;
    r->nf++;
    return 0;
}

static int scratch_append(moeh_csv_t *r, const char *p, size_t n, moeh_err_t *err)
{
    if (n == 0) return 0;
    if (r->slen + n > r->scap) {
        size_t nc = r->scap ? r->scap : 4096;
        while (nc < r->slen + n)
            nc *= 2;
        char *ns = realloc(r->scratch, nc);
        if (!ns) return moeh_errf(err, -ENOMEM, "%s: out of memory", r->path);
        r->scratch = ns, r->scap = nc;
    }
    memcpy(r->scratch + r->slen, p, n);
    r->slen += n;
    return 0;
}

enum { ROW_OK = 1, ROW_MORE = 2, ROW_BAD = 3 };

/* Parses one row at buf[pos]. ROW_OK (pos advanced), ROW_MORE (need more bytes; nothing
 * consumed), ROW_BAD (message in err, row consumed) or <0 on memory error. */
static int parse_row(moeh_csv_t *r, moeh_err_t *err)
{
    char *p = r->buf + r->pos, *e = r->buf + r->end;
    r->nf = 0;
    r->slen = 0;
    /* fast path: the whole row is in the buffer and has no quote */
    char *nl = memchr(p, '\n', (size_t)(e - p));
    if (nl && !memchr(p, '"', (size_t)(nl - p))) {
        char *le = (nl > p && nl[-1] == '\r') ? nl - 1 : nl;
        char *s = p;
        for (;;) {
            char *c = memchr(s, ',', (size_t)(le - s));
            if (!c) {
                if (push_field(r, s, (size_t)(le - s), SIZE_MAX, err)) return -ENOMEM;
                break;
            }
            if (push_field(r, s, (size_t)(c - s), SIZE_MAX, err)) return -ENOMEM;
            s = c + 1;
        }
        r->pos = (size_t)(nl + 1 - r->buf);
        r->row_line = r->line;
        r->line++;
        return ROW_OK;
    }
    /* general path */
    uint64_t lines = 0;
    char *s = p;
    for (;;) { /* one field per iteration */
        if (s < e && *s == '"') {
            size_t soff = r->slen;
            char *q = s + 1;
            for (;;) {
                char *qq = memchr(q, '"', (size_t)(e - q));
                if (!qq) {
                    if (!r->eof) return ROW_MORE;
                    moeh_errf(err, -EBADMSG, "%s:%llu:%zu: unterminated quoted field", r->path,
                              (unsigned long long)r->line, r->nf + 1);
                    r->pos = r->end;
                    r->line += lines + 1;
                    return ROW_BAD;
                }
                for (char *t = q; t < qq; t++)
                    lines += (*t == '\n');
                if (scratch_append(r, q, (size_t)(qq - q), err)) return -ENOMEM;
                if (qq + 1 == e && !r->eof)
                    return ROW_MORE; /* "" or end of field? need the next byte */
                if (qq + 1 < e && qq[1] == '"') {
                    if (scratch_append(r, "\"", 1, err)) return -ENOMEM;
                    q = qq + 2;
                    continue;
                }
                s = qq + 1;
                break;
            }
            if (push_field(r, NULL, r->slen - soff, soff, err)) return -ENOMEM;
            if (s < e && *s == '\r' && s + 1 < e && s[1] == '\n')
                s++;
            else if (s + 1 == e && *s == '\r' && !r->eof)
                return ROW_MORE;
            if (s == e && !r->eof) return ROW_MORE;
            if (s == e || *s == '\n') {
                r->pos = (size_t)(s == e ? s - r->buf : s + 1 - r->buf);
                break;
            }
            if (*s == ',') {
                s++;
                continue;
            }
            moeh_errf(err, -EBADMSG, "%s:%llu:%zu: unexpected '%c' after a closing quote", r->path,
                      (unsigned long long)r->line, r->nf, *s);
            char *skip = memchr(s, '\n', (size_t)(e - s));
            r->pos = skip ? (size_t)(skip + 1 - r->buf) : r->end;
            r->line += lines + 1;
            return ROW_BAD;
        }
        /* unquoted field: up to ',' or '\n' */
        char *t = s;
        while (t < e && *t != ',' && *t != '\n')
            t++;
        if (t == e && !r->eof) return ROW_MORE;
        size_t len = (size_t)(t - s);
        if ((t == e || *t == '\n') && len > 0 && s[len - 1] == '\r') len--;
        if (push_field(r, s, len, SIZE_MAX, err)) return -ENOMEM;
        if (t < e && *t == ',') {
            s = t + 1;
            continue;
        }
        r->pos = (size_t)(t == e ? t - r->buf : t + 1 - r->buf);
        break;
    }
    for (size_t i = 0; i < r->nf; i++)
        if (r->soff[i] != SIZE_MAX) r->f[i].p = r->scratch ? r->scratch + r->soff[i] : "";
    r->row_line = r->line;
    r->line += lines + 1;
    return ROW_OK;
}

/* 1 row, 0 eof, <0 error; ROW_BAD becomes -EBADMSG. Does not check the field count. */
static int next_raw(moeh_csv_t *r, moeh_err_t *err)
{
    for (;;) {
        if (r->pos == r->end) {
            int rc = fill(r, err);
            if (rc < 0) return rc;
            if (rc == 0) return 0;
        }
        int rc = parse_row(r, err);
        if (rc == ROW_OK) return 1;
        if (rc == ROW_BAD) return -EBADMSG;
        if (rc < 0) return rc;
        rc = fill(r, err); /* ROW_MORE */
        if (rc < 0) return rc;
        /* rc == 0: eof now set, parse again to finish the last row */
    }
}

int moeh_csv_next(moeh_csv_t *r, moeh_err_t *err)
{
    int rc;
    /* skip blank lines (e.g. a trailing "\n\n") */
    do {
        rc = next_raw(r, err);
    } while (rc == 1 && r->nf == 1 && r->f[0].len == 0 && r->ncols > 1);
    if (rc == 1 && r->nf != r->ncols) {
        return moeh_errf(err, -EBADMSG, "%s:%llu:%zu: row has %zu fields, the header has %zu",
                         r->path, (unsigned long long)r->row_line,
                         r->nf < r->ncols ? r->nf : r->ncols + 1, r->nf, r->ncols);
    }
    return rc;
}

int moeh_csv_open(const char *path, moeh_csv_t **out, moeh_err_t *err)
{
    *out = NULL;
    int rc = -ENOMEM;
    moeh_csv_t *r = calloc(1, sizeof *r);
    if (!r) return moeh_errf(err, -ENOMEM, "%s: out of memory", path);
    r->fd = -1;
    snprintf(r->path, sizeof r->path, "%s", path);
    size_t pl = strlen(path);
    r->gz = pl > 3 && strcmp(path + pl - 3, ".gz") == 0;
    r->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0) {
        rc = moeh_errf(err, -errno, "%s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(r->fd, &st) == 0) r->file_size = (uint64_t)st.st_size;
#ifdef POSIX_FADV_SEQUENTIAL
    posix_fadvise(r->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    r->cap = CSV_BUF_INIT;
    if (!(r->buf = malloc(r->cap + 1))) goto fail; /* rc is -ENOMEM */
    if (r->gz) {
        if (!(r->in = malloc(CSV_IN_SIZE))) goto fail; /* rc is -ENOMEM */
#ifdef MOEH_HAVE_ISAL
        isal_inflate_init(&r->zs);
        r->zs.crc_flag = ISAL_GZIP;
#else
        if (inflateInit2(&r->zs, 15 + 16) != Z_OK) goto fail; /* rc is -ENOMEM */
#endif
        if ((rc = pipe_start(r, err)) != 0) goto fail;
    }
    r->line = 1;
    do /* blank lines before the header are skipped */
        rc = next_raw(r, err);
    while (rc == 1 && r->nf == 1 && r->f[0].len == 0);
    if (rc < 0) goto fail;
    if (rc == 0) {
        rc = moeh_errf(err, -EBADMSG, "%s: empty file, expected a header row", path);
        goto fail;
    }
    r->ncols = r->nf;
    rc = -ENOMEM;
    if (!(r->names = calloc(r->ncols, sizeof *r->names))) goto fail;
    for (size_t i = 0; i < r->ncols; i++) {
        if (!(r->names[i] = malloc(r->f[i].len + 1))) goto fail; /* rc is -ENOMEM */
        memcpy(r->names[i], r->f[i].p, r->f[i].len);
        r->names[i][r->f[i].len] = '\0';
    }
    /* a UTF-8 byte order mark before the first name is not part of it */
    if (r->ncols && !strncmp(r->names[0], "\xef\xbb\xbf", 3))
        memmove(r->names[0], r->names[0] + 3, strlen(r->names[0]) - 2);
    *out = r;
    return 0;
fail:
    if (rc == -ENOMEM) moeh_errf(err, rc, "%s: out of memory", path);
    moeh_csv_destroy(&r);
    return rc;
}

int moeh_csv_open_mem(const char *name, const char *data, size_t len, moeh_csv_t **out,
                      moeh_err_t *err)
{
    *out = NULL;
    int rc;
    moeh_csv_t *r = calloc(1, sizeof *r);
    if (!r || !(r->buf = malloc(len + 1))) {
        free(r);
        return moeh_errf(err, -ENOMEM, "%s: out of memory", name);
    }
    r->fd = -1;
    snprintf(r->path, sizeof r->path, "%s", name);
    memcpy(r->buf, data, len);
    r->cap = len ? len : 1, r->end = len, r->eof = true, r->line = 1, r->bytes_in = len;
    do
        rc = next_raw(r, err);
    while (rc == 1 && r->nf == 1 && r->f[0].len == 0);
    if (rc <= 0) {
        if (rc == 0) rc = moeh_errf(err, -EBADMSG, "%s: empty, expected a header row", name);
        moeh_csv_destroy(&r);
        return rc;
    }
    r->ncols = r->nf;
    if (!(r->names = calloc(r->ncols, sizeof *r->names))) {
        moeh_csv_destroy(&r);
        return moeh_errf(err, -ENOMEM, "%s: out of memory", name);
    }
    for (size_t i = 0; i < r->ncols; i++) {
        if (!(r->names[i] = strndup(r->f[i].p, r->f[i].len))) {
            moeh_csv_destroy(&r);
            return moeh_errf(err, -ENOMEM, "%s: out of memory", name);
        }
    }
    *out = r;
    return 0;
}

void moeh_csv_destroy(moeh_csv_t **self_p)
{
    if (!self_p || !*self_p) return;
    moeh_csv_t *r = *self_p;
    pipe_stop(r); /* before the inflate state goes */
    if (r->gz && r->in) {
#ifndef MOEH_HAVE_ISAL
        inflateEnd(&r->zs);
#endif
    }
    if (r->fd >= 0) close(r->fd);
    if (r->names)
        for (size_t i = 0; i < r->ncols; i++)
            free(r->names[i]);
    free(r->names);
    free(r->in);
    free(r->buf);
    free(r->scratch);
    free(r->f);
    free(r->soff);
    free(r);
    *self_p = NULL;
}

size_t moeh_csv_ncols(const moeh_csv_t *r)
{
    return r->ncols;
}

int moeh_csv_col(const moeh_csv_t *r, const char *name)
{
    for (size_t i = 0; i < r->ncols; i++)
        if (!strcmp(r->names[i], name)) return (int)i;
    return -1;
}

int moeh_csv_require_col(const moeh_csv_t *r, const char *name, moeh_err_t *err)
{
    int c = moeh_csv_col(r, name);
    if (c < 0) return moeh_errf(err, -EBADMSG, "%s:1: no column '%s' in the header", r->path, name);
    return c;
}

moeh_csv_field_t moeh_csv_field(const moeh_csv_t *r, size_t i)
{
    MOEH_ASSERT(i < r->nf);
    return r->f[i];
}

uint64_t moeh_csv_line(const moeh_csv_t *r)
{
    return r->row_line;
}

const char *moeh_csv_path(const moeh_csv_t *r)
{
    return r->path;
}

uint64_t moeh_csv_bytes(const moeh_csv_t *r)
{
    return r->bytes_in - (r->end - r->pos);
}

uint64_t moeh_csv_raw_bytes(const moeh_csv_t *r)
{
    return r->gz ? r->zcons : r->bytes_in;
}

uint64_t moeh_csv_file_size(const moeh_csv_t *r)
{
    return r->file_size;
}

int moeh_csv_field_error(const moeh_csv_t *r, size_t col, moeh_err_t *err, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return moeh_errf(err, -EBADMSG, "%s:%llu:%zu (%s): %s", r->path,
                     (unsigned long long)r->row_line, col + 1, col < r->ncols ? r->names[col] : "?",
                     msg);
}

/* ---- field parsers ------------------------------------------------------------------- */

int moeh_csv_parse_i64(moeh_csv_field_t f, int64_t *out)
{
    if (f.len == 0) return -ENODATA;
    size_t i = 0;
    bool neg = false;
    if (f.p[0] == '-' || f.p[0] == '+') neg = f.p[0] == '-', i = 1;
    if (i == f.len || f.len - i > 18) return -EBADMSG;
    int64_t v = 0;
    for (; i < f.len; i++) {
        unsigned d = (unsigned)(f.p[i] - '0');
        if (d > 9) return -EBADMSG;
        v = v * 10 + d;
    }
    *out = neg ? -v : v;
    return 0;
}

static const double k_pow10[] = {1e0, 1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,
                                 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17};

int moeh_csv_parse_f64(moeh_csv_field_t f, double *out)
{
    if (f.len == 0) return -ENODATA;
    /* fast path: [-]digits[.digits] with at most 17 significant digits */
    size_t i = 0;
    bool neg = false;
    if (f.p[0] == '-' || f.p[0] == '+') neg = f.p[0] == '-', i = 1;
    uint64_t mant = 0;
    int nd = 0, frac = 0;
    bool dot = false, any = false;
    for (; i < f.len; i++) {
        char c = f.p[i];
        if (c >= '0' && c <= '9') {
            any = true;
            if (nd < 17) {
                mant = mant * 10 + (uint64_t)(c - '0');
                if (mant) nd++;
                if (dot) frac++;
            } else if (!dot) {
                break; /* too many digits: slow path */
            }
        } else if (c == '.' && !dot) {
            dot = true;
        } else {
            break;
        }
    }
    if (i == f.len && any) {
        double v = (double)mant / k_pow10[frac];
        *out = neg ? -v : v;
        return 0;
    }
    char tmp[64];
    if (f.len >= sizeof tmp) return -EBADMSG;
    memcpy(tmp, f.p, f.len);
    tmp[f.len] = '\0';
    char *end;
    double v = strtod(tmp, &end);
    if (end != tmp + f.len || end == tmp) return -EBADMSG;
    *out = v;
    return 0;
}

int64_t moeh_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    /* shift the year to start in March so that the leap day is the last day of a year */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int digits(const char *p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        unsigned d = (unsigned)(p[i] - '0');
        if (d > 9) return -1;
        v = v * 10 + (int)d;
    }
    *out = v;
    return 0;
}

int moeh_csv_parse_time(moeh_csv_field_t f, int64_t *out)
{
    if (f.len == 0) return -ENODATA;
    int y, mo, d, h = 0, mi = 0, s = 0;
    const char *p = f.p;
    if (f.len < 10 || p[4] != '-' || p[7] != '-' || digits(p, 4, &y) || digits(p + 5, 2, &mo) ||
        digits(p + 8, 2, &d) || mo < 1 || mo > 12 || d < 1 || d > 31)
        return -EBADMSG;
    if (f.len > 10) {
        if (f.len < 19 || (p[10] != ' ' && p[10] != 'T') || p[13] != ':' || p[16] != ':' ||
            digits(p + 11, 2, &h) || digits(p + 14, 2, &mi) || digits(p + 17, 2, &s) || h > 23 ||
            mi > 59 || s > 60)
            return -EBADMSG;
        if (f.len > 19 && p[19] != '.') return -EBADMSG;
    }
    *out = moeh_days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + s;
    return 0;
}

char *moeh_csv_copy(moeh_csv_field_t f, char *out, size_t cap)
{
    size_t n = f.len < cap - 1 ? f.len : cap - 1;
    memcpy(out, f.p, n);
    out[n] = '\0';
    return out;
}

bool moeh_csv_eq(moeh_csv_field_t f, const char *s)
{
    size_t n = strlen(s);
    return f.len == n && memcmp(f.p, s, n) == 0;
}
