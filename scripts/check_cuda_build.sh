#!/usr/bin/env bash
# Compiles the CUDA kernels (csrc/cuda/*.cu) into a throw-away build, so that a machine without a GPU
# (where `pip install` skips them) still proves they compile. CI runs it (.ci/run); it needs a CUDA
# toolkit (nvcc) and skips with a message without one (fails instead with REQUIRE_CUDA_BUILD=1, as
# CI sets). MQNET_FAST_CUDA_ARCH picks the architectures (default 9.0).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c 'import sys; from torch.utils.cpp_extension import CUDA_HOME; sys.exit(CUDA_HOME is None)'; then
    echo "check_cuda_build: no CUDA toolkit found; the .cu kernels were not compiled" >&2
    [ "${REQUIRE_CUDA_BUILD:-0}" = 1 ] && exit 1  # CI: a skipped check is a failed one
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
MQNET_FAST_WITH_CUDA=1 MAX_JOBS="${MAX_JOBS:-2}" python setup.py -q build_ext --build-temp "$tmp/temp" \
    --build-lib "$tmp/lib" >"$tmp/build.log" 2>&1 || { tail -60 "$tmp/build.log"; exit 1; }
python - "$tmp/lib/mqnet_fast/_build_info.json" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
assert "cuda" in info["backends"], info
print(f"check_cuda_build: the CUDA kernels compile for sm {info['cuda_arch']} (CUDA {info['cuda']})")
PY
echo "check_cuda_build: $(( $(date +%s) - start )) s"
