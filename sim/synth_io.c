/* synth_io.c - the synthetic MIMIC-IV's buffered gzip table writer and path helper (see
 * synth_io.h). */
#include "synth_io.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* snprintf for paths: the result is checked by the callers through moeh_mkdir_p/fopen;
 * truncation is reported as an empty string, which those calls reject. */
void synth_pathf(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) out[0] = '\0';
}

static int tw_flush(tw_t *w, moeh_err_t *err)
{
    if (w->len && gzwrite(w->g, w->buf, (unsigned)w->len) != (int)w->len)
        return moeh_errf(err, -EIO, "%s: write failed", w->path);
    w->len = 0;
    return 0;
}

int tw_open(tw_t *w, const char *dir, const char *name, int level, const char *header,
            moeh_err_t *err)
{
    memset(w, 0, sizeof *w);
    int rc;
    if ((rc = moeh_mkdir_p(dir, err))) return rc;
    synth_pathf(w->path, sizeof w->path, "%s/%s", dir, name);
    char mode[8];
    snprintf(mode, sizeof mode, "wb%d", level);
    w->cap = (size_t)1 << 20;
    if (!(w->buf = malloc(w->cap))) return moeh_errf(err, -ENOMEM, "out of memory");
    if (!(w->g = gzopen(w->path, mode)))
        return moeh_errf(err, -EIO, "%s: cannot create: %s", w->path, strerror(errno));
    gzbuffer(w->g, 1 << 20);
    size_t hl = strlen(header);
    memcpy(w->buf, header, hl);
    w->len = hl;
    return 0;
}

/* Appends one formatted row (rows must be < 64 KiB). */
int tw_row(tw_t *w, moeh_err_t *err, const char *fmt, ...)
{
    if (w->cap - w->len < 65536) {
        int rc = tw_flush(w, err);
        if (rc) return rc;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->buf + w->len, w->cap - w->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= w->cap - w->len)
        return moeh_errf(err, -EOVERFLOW, "%s: row too long", w->path);
    w->len += (size_t)n;
    w->rows++;
    return 0;
}

int tw_close(tw_t *w, moeh_err_t *err)
{
    int rc = 0;
    if (w->g) {
        rc = tw_flush(w, err);
        if (gzclose(w->g) != Z_OK && !rc) rc = moeh_errf(err, -EIO, "%s: close failed", w->path);
    }
    free(w->buf);
    w->g = NULL, w->buf = NULL;
    return rc;
}
