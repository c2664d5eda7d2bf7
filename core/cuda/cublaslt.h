/* cuBLASLt, loaded on first use (dlopen) rather than linked: the library is half a gigabyte, and
 * linking it made every braid process, CPU-only ones included, take ~0.2 s longer to start. The
 * .cu files that call cuBLASLt include this after <cublasLt.h>; its macros turn each call into a
 * call through the table that bt_cublaslt_load fills. */
#ifndef BRAID_CORE_CUDA_CUBLASLT_H
#define BRAID_CORE_CUDA_CUBLASLT_H

#include <cublasLt.h>
#include <stddef.h>

struct bt_cublaslt_api {
    decltype(&cublasLtCreate) Create;
    decltype(&cublasLtDestroy) Destroy;
    decltype(&cublasLtGetStatusString) GetStatusString;
    decltype(&cublasLtMatmul) Matmul;
    decltype(&cublasLtMatmulAlgoGetHeuristic) MatmulAlgoGetHeuristic;
    decltype(&cublasLtMatmulDescCreate) MatmulDescCreate;
    decltype(&cublasLtMatmulDescDestroy) MatmulDescDestroy;
    decltype(&cublasLtMatmulDescSetAttribute) MatmulDescSetAttribute;
    decltype(&cublasLtMatmulPreferenceCreate) MatmulPreferenceCreate;
    decltype(&cublasLtMatmulPreferenceDestroy) MatmulPreferenceDestroy;
    decltype(&cublasLtMatmulPreferenceSetAttribute) MatmulPreferenceSetAttribute;
    decltype(&cublasLtMatrixLayoutCreate) MatrixLayoutCreate;
    decltype(&cublasLtMatrixLayoutDestroy) MatrixLayoutDestroy;
    decltype(&cublasLtMatrixLayoutSetAttribute) MatrixLayoutSetAttribute;
};
extern struct bt_cublaslt_api bt_cublaslt;

/* Loads the library and every entry (once); false with the reason ("libcublasLt.so.13: cannot
 * open shared object file") in why. */
bool bt_cublaslt_load(char *why, size_t size);

#define cublasLtCreate bt_cublaslt.Create
#define cublasLtDestroy bt_cublaslt.Destroy
#define cublasLtGetStatusString bt_cublaslt.GetStatusString
#define cublasLtMatmul bt_cublaslt.Matmul
#define cublasLtMatmulAlgoGetHeuristic bt_cublaslt.MatmulAlgoGetHeuristic
#define cublasLtMatmulDescCreate bt_cublaslt.MatmulDescCreate
#define cublasLtMatmulDescDestroy bt_cublaslt.MatmulDescDestroy
#define cublasLtMatmulDescSetAttribute bt_cublaslt.MatmulDescSetAttribute
#define cublasLtMatmulPreferenceCreate bt_cublaslt.MatmulPreferenceCreate
#define cublasLtMatmulPreferenceDestroy bt_cublaslt.MatmulPreferenceDestroy
#define cublasLtMatmulPreferenceSetAttribute bt_cublaslt.MatmulPreferenceSetAttribute
#define cublasLtMatrixLayoutCreate bt_cublaslt.MatrixLayoutCreate
#define cublasLtMatrixLayoutDestroy bt_cublaslt.MatrixLayoutDestroy
#define cublasLtMatrixLayoutSetAttribute bt_cublaslt.MatrixLayoutSetAttribute

#endif
