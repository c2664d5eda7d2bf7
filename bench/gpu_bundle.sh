#!/usr/bin/env bash
# bench/gpu_bundle.sh [BUILD_DIR]: packs what bench/gpu.sh needs on a lent GPU machine into
# gpu-bundle.tar.xz (about 13 MiB; git-ignored), since the device tool carries at most 64 MiB:
# braid, bench_gpu and the GPU test binaries built here by nvcc, and every shared library they
# load except glibc's, libstdc++/libgcc and CUDA's own (the machine has CUDA, and NCCL, cuBLASLt
# and cuDNN in its PyTorch; braid loads cuBLASLt and cuDNN with dlopen, so ldd does not list
# them, and cuDNN's half a gigabyte would not fit anyway). On the GPU machine (the device tool runs in a copy of the repo):
#   tar xJf gpu-bundle.tar.xz && bench/gpu.sh gpu-bundle 30 8
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bins=(braid bench_gpu test_gpu_ops test_gpu_comm test_cuda_math test_cuda_sdpa)
rm -rf gpu-bundle && mkdir -p gpu-bundle/bin gpu-bundle/lib
for b in "${bins[@]}"; do cp "$build/$b" gpu-bundle/bin/; done
for b in "${bins[@]}"; do ldd "$build/$b"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|libdl|libpthread|librt|ld-linux[^/]*|libcuda|libcudart|libcublas[A-Za-z]*|libnccl)\.so' |
  while read -r lib; do cp -L "$lib" gpu-bundle/lib/; done
tar cJf gpu-bundle.tar.xz gpu-bundle
rm -rf gpu-bundle
echo "gpu-bundle.tar.xz: $(du -h gpu-bundle.tar.xz | cut -f1), $(tar tJf gpu-bundle.tar.xz | grep -c '\.so') libraries"
