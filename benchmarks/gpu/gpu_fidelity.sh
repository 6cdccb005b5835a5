#!/usr/bin/env bash
# The paper's CIFAR-10 protocol at a reduced schedule, in one device window (issue 12), for a CUDA machine
# without network (torch, triton, pytest preinstalled). In order, each step bounded by a timeout so that
# a slow one leaves the others' results:
#   1. build the extension (sm_90);
#   2. time the target model's training iteration and its breakdown, and N runs sharing the GPU
#      (benchmarks/gpu/train_step_bench.py -> train-step.json);
#   3. one seed of MQ-Net (the paper's configuration: CSI purity, LL informativeness, z-scores, the
#      published code's Phi and top-b query),
#      CONF, RANDOM and CORESET on the shared CIFAR-10 (../shared/data/cifar10-jpeg.tar.gz), 4:6
#      split, 60% noise, ROUNDS rounds of 500, ITERS iterations per round, a CSI encoder of
#      ENC_EPOCHS epochs trained once on the pool; the report beside Tables 8 and 10
#      (benchmarks/engine/fidelity_report.py -> fidelity.md, results.csv);
#   4. the kernel defaults left open, briefly: k-center's pruning and the GPU backends at small sizes
#      (gpu-bench.json/.md), nearest's tile sweep with DEFER (nearest-tune.json).
# Everything is written to $STAGE and packed, after every step, into $OUT/fidelity.tgz (the device tool
# brings back only a few files; a step cut off at its limit leaves the steps before it packed);
# checkpoints and caches stay in $WORK. Step limits add up to 480 s (one device command: 600 s at most).
# The device machine has no ../shared: carry a copy of the CIFAR archive inside the checkout (a
# git-ignored folder) and point DATA at it.
#
#   DATA=data-carry/cifar10-jpeg.tar.gz OUT=... bash benchmarks/gpu/gpu_fidelity.sh   # on the GPU (<= 8 minutes)
#   OUT=... bash benchmarks/gpu/gpu_fidelity.sh --smoke    # CPU, digits, tiny sizes: checks every step runs
#
# The full protocol (hours per strategy and seed until training is faster):
#   mqnet-fast run --dataset imagefolder:../shared/data/cifar10-jpeg.tar.gz --noise 0.6 \
#       --strategies mqnet,conf,random,coreset,badge,ll --seeds 0,1,2 --budget 500 --rounds 10 \
#       --iterations 20000 --encoder-epochs 1000 --run-dir runs/cifar10-60
set -uo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
FINAL="${OUT:-benchmarks/results/fidelity}"
WORK="${WORK:-$(mktemp -d)}"
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT="$WORK/stage"
mkdir -p "$FINAL" "$OUT"
export PYTHONUNBUFFERED=1 MQNET_FAST_CACHE="$WORK/cache" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
pack() { tar czf "$FINAL/fidelity.tgz.part" -C "$OUT" . && mv "$FINAL/fidelity.tgz.part" "$FINAL/fidelity.tgz"; }
stamp() { echo "$1: $(( $(date +%s) - start )) s" | tee -a "$OUT/timing.txt"; pack; }

if [ "$SMOKE" = 1 ]; then
    DATASET=digits; ROUNDS=2; BUDGET=10; ITERS=3; ENC_EPOCHS=1; WIDTH=4; DEVICE=cpu; RUN_LIMIT=300
    BENCH_ARGS=(--smoke)
    echo "cpu (smoke)" > "$OUT/device.txt"
else
    DATA="${DATA:-../shared/data/cifar10-jpeg.tar.gz}"
    if [ ! -f "$DATA" ]; then
        echo "DATA=$DATA is not there: carry the CIFAR archive inside the checkout and set DATA" | tee "$OUT/fidelity.md"
        pack; exit 1
    fi
    DATASET="imagefolder:$DATA"
    # 12 encoder epochs: the CSI warm-up is 10 epochs, so 10 would end at the peak lr without any decay
    ROUNDS="${ROUNDS:-3}"; BUDGET=500; ITERS="${ITERS:-1000}"; ENC_EPOCHS="${ENC_EPOCHS:-12}"; WIDTH=64
    DEVICE=cuda; RUN_LIMIT="${RUN_LIMIT:-270}"
    BENCH_ARGS=(--device cuda --iterations 200 --jobs 4)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt" 2>&1
    MAX_JOBS="${MAX_JOBS:-16}" MQNET_FAST_CUDA_ARCH="${MQNET_FAST_CUDA_ARCH:-9.0}" timeout 90 \
        "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.txt" 2>&1 \
        || { echo "build failed"; tail -40 "$OUT/build.txt"; }
    stamp build
fi
DEVICE_NAME="$(tail -n +2 "$OUT/device.txt" | head -1 | cut -d, -f1)"
DEVICE_NAME="${DEVICE_NAME:-$(head -1 "$OUT/device.txt")}"
"$PY" -m mqnet_fast info > "$OUT/info.txt" 2>&1

timeout 60 "$PY" benchmarks/gpu/train_step_bench.py "${BENCH_ARGS[@]}" --out "$OUT" > "$OUT/train-step.txt" 2>&1
echo "train-step bench rc=$?" | tee -a "$OUT/timing.txt"
stamp train-step

# MQ-Net (whose round 0 trains the CSI encoder) and the baselines as two processes sharing the device,
# so that the baselines are not left waiting behind the encoder. As the paper ran them: MQ-Net with the
# published code's Phi (fresh each round, trained on the last query, top-b), the loss module only where
# a strategy uses it (--loss-module auto), CORESET seeded with the labeled IN examples.
run_part() {  # name strategies [options...]
    local name="$1" strategies="$2"
    shift 2
    timeout "$RUN_LIMIT" "$PY" -m mqnet_fast run --dataset "$DATASET" --split 4:6 --noise 0.6 \
        --strategies "$strategies" --seeds 0 --budget "$BUDGET" --rounds "$ROUNDS" \
        --iterations "$ITERS" --encoder-epochs "$ENC_EPOCHS" --width "$WIDTH" --device "$DEVICE" \
        --loss-module auto "$@" --run-dir "$WORK/run-$name" --quiet > "$OUT/run-$name.txt" 2>&1
    echo "fidelity run $name rc=$? (124: stopped at ${RUN_LIMIT} s; the rounds done are reported)" >> "$OUT/timing.txt"
}
run_part mqnet mqnet --meta-init fresh --meta-optimizer code --meta-history last --selection top &
run_part baselines conf,random,coreset --coreset-centers in &
wait
stamp fidelity-run
dirs=()
for part in mqnet baselines; do
    if [ -f "$WORK/run-$part/results.csv" ]; then
        cp "$WORK/run-$part/results.csv" "$OUT/results-$part.csv"
        cp "$WORK/run-$part/experiment.json" "$OUT/experiment.json"
        dirs+=("$WORK/run-$part")
    fi
done
if [ "${#dirs[@]}" -gt 0 ]; then
    "$PY" benchmarks/engine/fidelity_report.py "${dirs[@]}" --device "$DEVICE_NAME" --out "$OUT/fidelity.md"
else
    echo "no round completed; see run-*.txt" | tee "$OUT/fidelity.md"
fi
pack

if [ "$SMOKE" = 0 ]; then
    timeout 30 "$PY" benchmarks/gpu/gpu_tune_nearest.py --out "$OUT" > "$OUT/nearest-tune.txt" 2>&1
    echo "nearest tile sweep rc=$?" | tee -a "$OUT/timing.txt"
    timeout 30 "$PY" benchmarks/gpu/gpu_bench.py --out "$OUT" --only kcenter,kcenter_prune,small \
        --nearest-tune "$OUT/nearest-tune.json" > "$OUT/gpu-bench.txt" 2>&1
    echo "kernel bench rc=$?" | tee -a "$OUT/timing.txt"
fi
stamp total
cp "$OUT/fidelity.md" "$OUT/timing.txt" "$FINAL/" 2>/dev/null
[ -z "${KEEP_WORK:-}" ] && rm -rf "$WORK"
exit 0
