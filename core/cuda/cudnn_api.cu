/* Loading cuDNN at run time (core/cuda/cudnn_api.h says why). */
#include <dlfcn.h>
#include <stdio.h>

#include "core/cuda/cudnn_api.h"

#ifndef BRAID_CUDNN_SONAME
#define BRAID_CUDNN_SONAME "libcudnn.so"
#endif

struct bt_cudnn_api bt_cudnn;

template <typename F> static bool entry(void *lib, const char *name, F *out) {
    *out = (F)dlsym(lib, name);
    return *out != nullptr;
}

bool bt_cudnn_load(char *why, size_t size) {
    static bool loaded;
    if (loaded) return true;
    /* the loader's search path first, then the directory CMake found cuDNN in, then any version */
    void *lib = dlopen(BRAID_CUDNN_SONAME, RTLD_NOW | RTLD_LOCAL);
    char first[512];
    snprintf(first, sizeof first, "%s", lib ? "" : dlerror());
#ifdef BRAID_CUDNN_DIR
    if (!lib) lib = dlopen(BRAID_CUDNN_DIR "/" BRAID_CUDNN_SONAME, RTLD_NOW | RTLD_LOCAL);
#endif
    if (!lib) lib = dlopen("libcudnn.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(why, size, "cannot load cuDNN: %s", first);
        return false;
    }
    struct bt_cudnn_api a;
    const char *missing = nullptr;
#define ENTRY(name)                                                                                \
    if (!missing && !entry(lib, "cudnn" #name, &a.name)) missing = "cudnn" #name
    ENTRY(GetVersion);
    ENTRY(GetErrorString);
    ENTRY(GetLastErrorString);
    ENTRY(Create);
    ENTRY(Destroy);
    ENTRY(SetStream);
    ENTRY(BackendCreateDescriptor);
    ENTRY(BackendDestroyDescriptor);
    ENTRY(BackendSetAttribute);
    ENTRY(BackendGetAttribute);
    ENTRY(BackendFinalize);
    ENTRY(BackendExecute);
#undef ENTRY
    if (missing) {
        snprintf(why, size, "cuDNN (%s) has no %s", BRAID_CUDNN_SONAME, missing);
        dlclose(lib);
        return false;
    }
    bt_cudnn = a;
    loaded = true;
    return true;
}
