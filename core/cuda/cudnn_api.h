/* cuDNN, loaded on first use (dlopen) rather than linked, as cuBLASLt is (cublaslt.h): a braid
 * process that never runs cuDNN's attention neither pays for loading it nor needs it installed.
 * The .cu files that call cuDNN include this after <cudnn.h>; its macros turn each call into a
 * call through the table that bt_cudnn_load fills. Only the backend (graph) API and the handle
 * calls are used. */
#ifndef BRAID_CORE_CUDA_CUDNN_API_H
#define BRAID_CORE_CUDA_CUDNN_API_H

#include <cudnn.h>
#include <stddef.h>

struct bt_cudnn_api {
    decltype(&cudnnGetVersion) GetVersion;
    decltype(&cudnnGetErrorString) GetErrorString;
    decltype(&cudnnGetLastErrorString) GetLastErrorString;
    decltype(&cudnnCreate) Create;
    decltype(&cudnnDestroy) Destroy;
    decltype(&cudnnSetStream) SetStream;
    decltype(&cudnnBackendCreateDescriptor) BackendCreateDescriptor;
    decltype(&cudnnBackendDestroyDescriptor) BackendDestroyDescriptor;
    decltype(&cudnnBackendSetAttribute) BackendSetAttribute;
    decltype(&cudnnBackendGetAttribute) BackendGetAttribute;
    decltype(&cudnnBackendFinalize) BackendFinalize;
    decltype(&cudnnBackendExecute) BackendExecute;
};
extern struct bt_cudnn_api bt_cudnn;

/* Loads the library and every entry (once); false with the reason ("libcudnn.so.9: cannot open
 * shared object file") in why. Needs no GPU: descriptors can be built and checked without one. */
bool bt_cudnn_load(char *why, size_t size);

#define cudnnGetVersion bt_cudnn.GetVersion
#define cudnnGetErrorString bt_cudnn.GetErrorString
#define cudnnGetLastErrorString bt_cudnn.GetLastErrorString
#define cudnnCreate bt_cudnn.Create
#define cudnnDestroy bt_cudnn.Destroy
#define cudnnSetStream bt_cudnn.SetStream
#define cudnnBackendCreateDescriptor bt_cudnn.BackendCreateDescriptor
#define cudnnBackendDestroyDescriptor bt_cudnn.BackendDestroyDescriptor
#define cudnnBackendSetAttribute bt_cudnn.BackendSetAttribute
#define cudnnBackendGetAttribute bt_cudnn.BackendGetAttribute
#define cudnnBackendFinalize bt_cudnn.BackendFinalize
#define cudnnBackendExecute bt_cudnn.BackendExecute

#endif
