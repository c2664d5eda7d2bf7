/* The CRC-32 of checkpoint tensors (data/checkpoint_internal.h): zlib's crc32_z, split over the
 * OpenMP threads for large buffers and joined with crc32_combine. */
#include <omp.h>

#include "data/checkpoint_internal.h"

#define PIECE_MIN (8u << 20) /* below this, one thread is as fast */
#define MAX_PIECES 64

uint32_t ckpt_crc32(const void *data, size_t nbytes) {
    const Bytef *bytes = data;
    int pieces = omp_get_max_threads();
    if (pieces > MAX_PIECES) pieces = MAX_PIECES;
    if (nbytes < 2 * (size_t)PIECE_MIN || pieces < 2)
        return (uint32_t)crc32_z(0L, bytes, (z_size_t)nbytes);
    uLong crc[MAX_PIECES];
    size_t len[MAX_PIECES];
    size_t step = (nbytes + (size_t)pieces - 1) / (size_t)pieces;
#pragma omp parallel for num_threads(pieces)
    for (int i = 0; i < pieces; i++) {
        size_t start = (size_t)i * step < nbytes ? (size_t)i * step : nbytes;
        size_t end = start + step < nbytes ? start + step : nbytes;
        len[i] = end - start;
        crc[i] = crc32_z(0L, bytes + start, (z_size_t)len[i]);
    }
    uLong all = crc[0];
    for (int i = 1; i < pieces; i++)
        all = crc32_combine(all, crc[i], (z_off_t)len[i]);
    return (uint32_t)all;
}
