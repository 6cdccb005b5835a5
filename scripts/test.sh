#!/usr/bin/env bash
# Installs everything the tests need, builds mqnet_fast._C in place and runs the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m mqnet_fast.info
python -m pytest tests -q "$@"
