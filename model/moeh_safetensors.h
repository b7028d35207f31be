/* moeh_safetensors.h - checkpoints as safetensors (https://github.com/huggingface/safetensors):
 * u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, ...,
 * "__metadata__": {string: string}}, then the raw little-endian tensor data. Every parameter of
 * a moeh_params_t is written as F32 under its own name, so the file loads in PyTorch with
 * safetensors.torch.load_file(); the model config travels in the metadata. */
#ifndef MOEH_SAFETENSORS_H
#define MOEH_SAFETENSORS_H

#include "moeh_moe.h"
#include "moeh_params.h"

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
