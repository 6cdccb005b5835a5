#!/usr/bin/env bash
# One-shot GPU verification (issue 4), for a CUDA machine without network (torch, triton, pybind11,
# pytest, hypothesis, pytest-benchmark preinstalled): builds the extension, runs the GPU and Triton
# tests, then the GPU benchmark. Results go to $OUT (default benchmarks/results/gpu): device.txt,
# build.txt, tests.txt, nearest-tune.json (tile sweep; the bench times nearest with its fastest tiles),
# gpu-bench.json/.md, timing.txt. Meant to finish within 8 minutes on one GPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt" 2>&1
start=$(date +%s)
MAX_JOBS="${MAX_JOBS:-16}" MQNET_FAST_CUDA_ARCH="${MQNET_FAST_CUDA_ARCH:-9.0}" \
    "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.txt" 2>&1 \
    || { echo "build failed"; tail -40 "$OUT/build.txt"; }
echo "build: $(( $(date +%s) - start )) s" | tee -a "$OUT/timing.txt"
"$PY" -m mqnet_fast.info
timeout 170 "$PY" -m pytest tests/test_cuda_kernels.py tests/test_triton.py -q --maxfail=20 -p no:cacheprovider \
    > "$OUT/tests.txt" 2>&1
echo "tests rc=$? ($(tail -1 "$OUT/tests.txt"))" | tee -a "$OUT/timing.txt"
grep -E "^(FAILED|ERROR)" "$OUT/tests.txt" | head -30
timeout 110 "$PY" benchmarks/gpu/gpu_tune_nearest.py --out "$OUT" 2>&1 | grep -v Warning
echo "nearest tile sweep rc=$? ($(date +%s))" | tee -a "$OUT/timing.txt"
timeout 220 "$PY" benchmarks/gpu/gpu_bench.py --out "$OUT" --nearest-tune "$OUT/nearest-tune.json" 2>&1
echo "total: $(( $(date +%s) - start )) s" | tee -a "$OUT/timing.txt"
