#!/usr/bin/env bash
# Installs what mqnet-fast needs (torch 2.14.1 + torchvision 0.29.1, which work on these machines,
# build and test tools) and builds mqnet_fast._C in place. Used by scripts/test.sh and scripts/demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" setuptools wheel ninja numpy tqdm scikit-learn matplotlib pillow \
    pandas pytest hypothesis pytest-benchmark
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --no-build-isolation --no-deps -e .
