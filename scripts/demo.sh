#!/usr/bin/env bash
# The main job: installs mqnet-fast, then compares MQ-Net (the paper's configuration: CSI purity,
# learning-loss informativeness), RANDOM, CONF, CORESET, BADGE and LL on an open-set split of the
# embedded digits dataset (4 IN classes : 6 OOD, noise 0.6, 5 rounds of 20 queries, one seed) and
# prints the table and the plot path. Rerunning resumes / reuses the results.
# Extra arguments go to `mqnet-fast run` (e.g. --seeds 0,1,2 --run-dir runs/other).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m mqnet_fast run --dataset digits --noise 0.6 --split 4:6 --budget 20 --rounds 5 \
    --strategies mqnet,random,conf,coreset,badge,ll --seeds 0 --run-dir runs/digits-demo --report "$@"
