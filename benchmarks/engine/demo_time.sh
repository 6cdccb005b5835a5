#!/usr/bin/env bash
# Times the demo's experiment (scripts/demo.sh without the install) from a cold encoder cache, in a
# temporary run directory. Usage:
#   bash benchmarks/engine/demo_time.sh [--avx2] [--jobs N] [--tree DIR]
# --avx2 caps oneDNN, ATen and mqnet-fast's kernels to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2,
# ATEN_CPU_CAPABILITY=avx2, MQNET_FAST_CPU_ISA=avx2): the instruction set of an AVX2-only machine on
# this one (not its clock or microarchitecture). --jobs N (default 2; 1 leaves the option out, as an
# older tree without it needs). --tree DIR runs the mqnet_fast package of another checkout (e.g. a
# git worktree of an earlier commit, with this tree's built _C copied into its mqnet_fast/).
set -euo pipefail
jobs=2 tree=""
while [ $# -gt 0 ]; do
    case "$1" in
        --avx2) export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MQNET_FAST_CPU_ISA=avx2 ;;
        --jobs) jobs="$2"; shift ;;
        --tree) tree="$2"; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
extra=()
[ "$jobs" -gt 1 ] && extra=(--jobs "$jobs")
start=$(date +%s)
MQNET_FAST_CACHE="$tmp/cache" PYTHONPATH="$tree" python -m mqnet_fast run --quiet --dataset digits --noise 0.6 \
    --split 4:6 --budget 20 --rounds 5 --strategies mqnet,random,conf,coreset,badge,ll --seeds 0 \
    --run-dir "$tmp/run" --report "${extra[@]}"
echo "demo_time: experiment $(( $(date +%s) - start )) s (jobs $jobs, ISA cap ${MQNET_FAST_CPU_ISA:-none}," \
     "tree ${tree:-this}; $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores)"
