/* Loading cuBLASLt at run time (core/cuda/cublaslt.h says why). */
#include <dlfcn.h>
#include <stdio.h>

#include "core/cuda/cublaslt.h"

#ifndef BRAID_CUBLASLT_SONAME
#define BRAID_CUBLASLT_SONAME "libcublasLt.so"
#endif

struct bt_cublaslt_api bt_cublaslt;

template <typename F> static bool entry(void *lib, const char *name, F *out) {
    *out = (F)dlsym(lib, name);
    return *out != nullptr;
}

bool bt_cublaslt_load(char *why, size_t size) {
    static bool loaded;
    if (loaded) return true;
    /* the loader's search path first (LD_LIBRARY_PATH, ld.so.cache), then the toolkit braid was
     * built with, then any version */
    void *lib = dlopen(BRAID_CUBLASLT_SONAME, RTLD_NOW | RTLD_LOCAL);
    char first[512];
    snprintf(first, sizeof first, "%s", lib ? "" : dlerror());
#ifdef BRAID_CUBLASLT_DIR
    if (!lib) lib = dlopen(BRAID_CUBLASLT_DIR "/" BRAID_CUBLASLT_SONAME, RTLD_NOW | RTLD_LOCAL);
#endif
    if (!lib) lib = dlopen("libcublasLt.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(why, size, "cannot load cuBLASLt: %s", first);
        return false;
    }
    struct bt_cublaslt_api a;
    const char *missing = nullptr;
#define ENTRY(name)                                                                                \
    if (!missing && !entry(lib, "cublasLt" #name, &a.name)) missing = "cublasLt" #name
    ENTRY(Create);
    ENTRY(Destroy);
    ENTRY(GetStatusString);
    ENTRY(Matmul);
    ENTRY(MatmulAlgoGetHeuristic);
    ENTRY(MatmulDescCreate);
    ENTRY(MatmulDescDestroy);
    ENTRY(MatmulDescSetAttribute);
    ENTRY(MatmulPreferenceCreate);
    ENTRY(MatmulPreferenceDestroy);
    ENTRY(MatmulPreferenceSetAttribute);
    ENTRY(MatrixLayoutCreate);
    ENTRY(MatrixLayoutDestroy);
    ENTRY(MatrixLayoutSetAttribute);
#undef ENTRY
    if (missing) {
        snprintf(why, size, "cuBLASLt (%s) has no %s", BRAID_CUBLASLT_SONAME, missing);
        dlclose(lib);
        return false;
    }
    bt_cublaslt = a;
    loaded = true;
    return true;
}
