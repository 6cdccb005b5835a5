#!/usr/bin/env bash
# The main job: installs mqnet-fast, then compares MQ-Net (the paper's configuration: CSI purity,
# learning-loss informativeness), RANDOM, CONF, CORESET, BADGE and LL on an open-set split of the
# embedded digits dataset (4 IN classes : 6 OOD, noise 0.6, 5 rounds of 20 queries, one seed), the
# runs in parallel processes (--jobs, one per core up to 2: on 2 cores 2 x 1 thread), and prints the
# table, the plot path and how long it took. Rerunning resumes / reuses the results.
# Extra arguments go to `mqnet-fast run` (e.g. --seeds 0,1,2 --run-dir runs/other).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/install.sh
installed=$(date +%s)
jobs=$(python -c 'import os; print(max(1, min(2, len(os.sched_getaffinity(0)))))')
python -m mqnet_fast run --dataset digits --noise 0.6 --split 4:6 --budget 20 --rounds 5 \
    --strategies mqnet,random,conf,coreset,badge,ll --seeds 0 --jobs "$jobs" --run-dir runs/digits-demo --report "$@"
end=$(date +%s)
echo "demo: $((end - start)) s in all: install and build $((installed - start)) s, experiment $((end - installed)) s" \
     "($(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores)"
