/* moeh_safetensors.h - checkpoints as safetensors (https://github.com/huggingface/safetensors):
 * u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, ...,
 * "__metadata__": {string: string}}, then the raw little-endian tensor data. Every parameter of
 * a moeh_params_t is written as F32 under its own name, so the file loads in PyTorch with
 * safetensors.torch.load_file(); the model config travels in the metadata. */
#ifndef MOEH_SAFETENSORS_H
#define MOEH_SAFETENSORS_H

#include "moeh_moe.h"
#include "moeh_params.h"

struct cJSON;

/* The largest header either reader accepts. */
#define MOEH_SAFETENSORS_MAX_HEADER (64u << 20)

/* The two halves of every safetensors file this project writes or reads (checkpoints here,
 * the model file of train/moeh_modelfile.h):
 * moeh_safetensors_pack lays out a file: the 8-byte length, the header (the JSON object root,
 * padded with spaces to a multiple of 8) and room for data_len bytes of tensor data, which the
 * caller copies to *data before writing *buf (*total bytes; the caller frees *buf). 0 or
 * -ENOMEM.
 * moeh_safetensors_parse splits the bytes of a file (buf, len, read from path) into its parsed
 * header (*root, a JSON object: the caller deletes it) and its data (*data, *dlen bytes): the
 * header must fit the file and MOEH_SAFETENSORS_MAX_HEADER, and only padding (spaces or NULs)
 * may follow its JSON object. 0 or -EINVAL with err naming path and what is wrong. */
int moeh_safetensors_pack(const struct cJSON *root, size_t data_len, char **buf, size_t *total,
                          char **data) MOEH_WUR;
int moeh_safetensors_parse(const char *path, const char *buf, size_t len, struct cJSON **root,
                           const char **data, size_t *dlen, moeh_err_t *err) MOEH_WUR;

/* Writes p's parameters (p->w) to path atomically. meta_keys/meta_vals: n_meta string pairs
 * stored in "__metadata__" (may be 0). 0 or a negative errno code (message in err). */
int moeh_safetensors_save(const moeh_params_t *p, const char *path, const char *const *meta_keys,
                          const char *const *meta_vals, size_t n_meta, moeh_err_t *err);

/* Reads path into p->w. The file must hold exactly p's tensors: same names, shapes, dtype F32,
 * finite values; otherwise -EINVAL and err lists what differs (missing, unexpected, shape,
 * dtype), and p is left unchanged. If meta_json is non-NULL it receives the "__metadata__"
 * object as a JSON string (caller frees), or NULL when the file has none. */
int moeh_safetensors_load(moeh_params_t *p, const char *path, char **meta_json, moeh_err_t *err);

/* Model checkpoint: the parameters plus "moeh_config" (the canonical JSON of the config,
 * moeh_moe_cfg_to_json) and "moeh_spec_hash" metadata. */
int moeh_moe_save(moeh_moe_t *m, const char *path, moeh_err_t *err);
/* Loads a checkpoint written by moeh_moe_save (or any file with the same tensors) into m;
 * if the file carries a moeh_config that differs from m's, -EINVAL says which fields. */
int moeh_moe_load(moeh_moe_t *m, const char *path, moeh_err_t *err);

#endif
