/* err.c - error codes, messages and the always-on assertion. */
#include "moeh_common.h"

#include <string.h>

int moeh_errf(moeh_err_t *err, int rc, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return rc;
}

const char *moeh_strerror(int rc)
{
    if (rc == 0) return "success";
    return strerror(rc < 0 ? -rc : rc);
}

void moeh_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "moeh: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}
