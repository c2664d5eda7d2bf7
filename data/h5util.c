/* HDF5 helpers for data/ (see h5util.h): HDF5's error stack is silenced and read back into one
 * braid error message per failed call. */
#include "data/h5util.h"

#include <stdio.h>
#include <string.h>

#include "core/error.h"

void h5_silence(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

/* H5Ewalk2 callback: keeps the description of the innermost error (the first one walked
 * upward), the most specific one: "unable to open file: name = …, errno = 21, …". */
static herr_t keep_innermost(unsigned n, const H5E_error2_t *err, void *client_data) {
    char *reason = client_data;
    if (n == 0 && err->desc) {
        strncpy(reason, err->desc, 255);
        reason[255] = '\0';
    }
    return 0;
}

/* "…/braid/data/checkpoint.c" -> "data/checkpoint.c" */
static const char *short_source(const char *path) {
    const char *last = strrchr(path, '/');
    if (!last) return path;
    const char *p = last;
    while (p > path && p[-1] != '/')
        p--;
    return p > path ? p : path;
}

/* "file = H5Fopen(...)" -> "H5Fopen(...)" */
static const char *call_only(const char *call) {
    const char *paren = strchr(call, '('), *assign = strstr(call, " = ");
    return assign && paren && assign < paren ? assign + 3 : call;
}

void h5_reason(char *buf, size_t size) {
    char reason[256] = "";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost, reason);
    H5Eclear2(H5E_DEFAULT);
    for (char *p = reason; *p; p++) /* HDF5's write errors carry ctime()'s newline: one line */
        if (*p == '\n' || *p == '\r') *p = ' ';
    snprintf(buf, size, "%s", reason);
}

void h5_error(const char *path, const char *call, const char *src_file, int src_line) {
    char reason[256];
    h5_reason(reason, sizeof reason);
    bt_error("%s: HDF5 %s failed%s%s (%s:%d)", path, call_only(call), reason[0] ? ": " : "", reason,
             short_source(src_file), src_line);
}

void h5_close_quietly(hid_t id) {
    if (id < 0 || H5Iis_valid(id) <= 0) return;
    switch (H5Iget_type(id)) {
    case H5I_FILE:
        H5Fclose(id);
        break;
    case H5I_GROUP:
        H5Gclose(id);
        break;
    case H5I_DATASET:
        H5Dclose(id);
        break;
    case H5I_DATASPACE:
        H5Sclose(id);
        break;
    case H5I_DATATYPE:
        H5Tclose(id);
        break;
    case H5I_ATTR:
        H5Aclose(id);
        break;
    case H5I_GENPROP_LST:
        H5Pclose(id);
        break;
    default:
        break;
    }
    H5Eclear2(H5E_DEFAULT);
}
