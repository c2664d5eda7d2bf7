/* What the checkpoint writer (data/checkpoint_write.c) and reader (data/checkpoint_read.c) share:
 * the names inside the file (docs/checkpoint.md) and the tensor checksum. Internal to data/. */
#ifndef BRAID_DATA_CHECKPOINT_INTERNAL_H
#define BRAID_DATA_CHECKPOINT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

/* Every tensor dataset carries its CRC-32 (zlib's, the same as Python's zlib.crc32) of the bytes
 * as stored: little-endian, row-major. */
#define CKPT_CRC_ATTR "crc32"

/* Large tensors are checksummed in pieces on all threads, the pieces' CRCs then joined in order
 * with crc32_combine: the same value, in a fraction of the time a save or load spends on it. */
uint32_t ckpt_crc32(const void *data, size_t nbytes);

/* "(384,1152)", "()" for a scalar: shapes in messages */
const char *ckpt_shape_words(int ndim, const int64_t *shape, char *buf, size_t size);

/* Longest label we put in front of messages: "checkpoint <path>" */
#define CKPT_LABEL_MAX 4200

#endif
