/* HDF5 helpers for data/: one checking macro that turns a failed HDF5 call into one braid error
 * naming the HDF5 file, the call and its file:line, and the silencing of HDF5's own error printing.
 * Relies on core/error.h for the message. */
#ifndef BRAID_DATA_H5UTIL_H
#define BRAID_DATA_H5UTIL_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

/* Checks an HDF5 call returning herr_t, htri_t or hid_t: on a negative result, records
 * `<path>: HDF5 <call> failed: <HDF5's reason> (<file>:<line>)` and jumps to the caller's `fail`
 * label. Assign handles inside the call: H5_CHECK(path, file = H5Fopen(...)). */
#define H5_CHECK(path, call)                                                                       \
    do {                                                                                           \
        if ((int64_t)(call) < 0) {                                                                 \
            h5_error((path), #call, __FILE__, __LINE__);                                           \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

/* Turns off HDF5's printing of its error stack (H5Eset_auto2); errors still reach H5_CHECK. */
void h5_silence(void);

/* Records the error of a failed HDF5 call (see H5_CHECK) and clears HDF5's error stack. */
void h5_error(const char *path, const char *call, const char *src_file, int src_line);

/* HDF5's most specific reason for the last failed call ("truncated file: eof = 96, …"), into buf
 * ("" when none), and clears its error stack. */
void h5_reason(char *buf, size_t size);

/* Closes an HDF5 handle of any kind if it is valid (for `fail:` paths; never fails). */
void h5_close_quietly(hid_t id);

#endif
