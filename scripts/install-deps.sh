#!/usr/bin/env bash
# Installs braid's build and test dependencies from Debian/Ubuntu packages (needs root or sudo).
# Skips apt-get entirely when everything is already installed.
set -euo pipefail

packages=(
  build-essential cmake pkg-config   # C11 toolchain and build
  libopenblas-dev                    # sgemm for the CPU backend
  check libsubunit-dev               # unit tests (Check)
  libyaml-dev                        # job configs
  libopenmpi-dev openmpi-bin         # MPI (ranks, collectives; parallel HDF5 needs it)
  libhdf5-openmpi-dev                # checkpoints (parallel HDF5)
  libpcre2-dev                       # GPT-2 tokenizer's Unicode pre-split regex
  libjansson-dev                     # GPT-2 tokenizer's encoder.json
  zlib1g-dev                         # CRC-32 of checkpoint tensors (zlib; HDF5 links it already)
)
# PyTorch and h5py are used only by reference tests and benchmarks, never by braid itself.
if [ "${BRAID_REFERENCE_DEPS:-0}" = 1 ]; then
  packages+=(python3-torch python3-h5py python3-numpy)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
echo "install-deps: installing ${missing[*]}"
"${sudo_cmd[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
