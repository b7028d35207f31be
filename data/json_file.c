/* json_file.c - see moeh_json_file.h. */
#include "moeh_json_file.h"

#include <errno.h>
#include <string.h>

int moeh_json_write_file(const char *path, const cJSON *j, moeh_err_t *err)
{
    char *text = cJSON_Print(j);
    if (!text) return moeh_errf(err, -ENOMEM, "%s: out of memory", path);
    size_t len = strlen(text);
    text[len] = '\n'; /* cJSON_Print's NUL becomes the final newline */
    int rc = moeh_file_write_atomic(path, text, len + 1, err);
    cJSON_free(text);
    return rc;
}
