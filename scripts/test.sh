#!/usr/bin/env bash
# Installs everything the tests need (torch, build tools, test tools), builds mqnet_fast._C in place
# and runs the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" ninja numpy tqdm \
    pytest hypothesis pytest-benchmark scikit-learn
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --no-build-isolation --no-deps -e .
python -m mqnet_fast.info
python -m pytest tests -q "$@"
