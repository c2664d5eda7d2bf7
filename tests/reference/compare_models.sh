#!/bin/sh
# compare_models.sh VARIANT MODEL_GRADS WORKDIR: braid's loss and gradients against PyTorch's for
# one model variant of models_ref.py (gpt, gpt_nobias, llama). Exit 0 when all are within
# tolerance, 1 when not, 77 (CTest: skipped) when /usr/bin/python3 lacks torch or h5py.
set -eu
if [ $# -ne 3 ]; then
    echo "usage: compare_models.sh VARIANT MODEL_GRADS WORKDIR" >&2
    exit 2
fi
variant=$1
driver=$2
work=$3
here=$(cd "$(dirname "$0")" && pwd)
python=/usr/bin/python3

if ! "$python" -c 'import torch, h5py' >/dev/null 2>&1; then
    echo "SKIPPED: PyTorch or h5py not installed for /usr/bin/python3"
    exit 77
fi
mkdir -p "$work"
rm -f "$work/weights.h5" "$work/ref.h5" "$work/out.h5"
"$python" "$here/models_ref.py" --make "$variant" "$work"
model_args=$("$python" "$here/models_ref.py" --args "$variant")
# shellcheck disable=SC2086 # model_args is a list of flags
"$driver" $model_args "$work/weights.h5" "$work/ref.h5" "$work/out.h5"
exec "$python" "$here/models_ref.py" --compare "$variant" "$work"
