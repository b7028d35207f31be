/* moeh_json_file.h - a cJSON document written to a file the way every human-readable JSON file
 * of a run is (status.json, truth.json): indented, a final newline, atomically (temp file,
 * fsync, rename: moeh_file_write_atomic). */
#ifndef MOEH_JSON_FILE_H
#define MOEH_JSON_FILE_H

#include "moeh_common.h"

#include <cjson/cJSON.h>

/* Writes j (not NULL) to path. 0, -ENOMEM (err names path) or moeh_file_write_atomic's code. */
int moeh_json_write_file(const char *path, const cJSON *j, moeh_err_t *err)
    __attribute__((warn_unused_result));

#endif
