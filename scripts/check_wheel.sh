#!/usr/bin/env bash
# Builds an sdist of mqnet-fast from this tree and a wheel from that sdist alone (so a file the sdist
# lacks, or one left over in build/, cannot hide), installs it into a fresh virtual environment that does
# not see the source tree, and checks it there: every subpackage imports, `mqnet-fast info`, a
# one-round digits experiment and `mqnet-fast select` run. The fresh environment reuses the
# packages of the calling one (torch and the rest) through a path file, so nothing is downloaded.
# Run from the environment scripts/install.sh set up; CI runs it (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "check_wheel: building the sdist, then the wheel from the sdist alone"
python setup.py -q sdist -d "$tmp/sdist" >"$tmp/build.log" 2>&1 || { tail -40 "$tmp/build.log"; exit 1; }
MAX_JOBS="${MAX_JOBS:-2}" python -m pip wheel -q --no-build-isolation --no-deps -w "$tmp/dist" "$tmp"/sdist/*.tar.gz \
    >>"$tmp/build.log" 2>&1 || { tail -40 "$tmp/build.log"; exit 1; }
wheel=$(ls "$tmp"/dist/mqnet_fast-*.whl)
# Where torch is installed, installing mqnet-fast keeps it: pip plans to install the wheel alone.
python -m pip install -q --dry-run --no-index --report "$tmp/plan.json" "$wheel"
python - "$tmp/plan.json" <<'PY'
import json, sys
planned = [item["metadata"]["name"] for item in json.load(open(sys.argv[1]))["install"]]
assert set(planned) <= {"mqnet-fast"}, f"installing the wheel would also install {planned}"
print("check_wheel: installing it where torch is keeps that torch (pip plans mqnet-fast alone)")
PY
python -m venv "$tmp/venv"
site_new=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site_old=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$site_old" > "$site_new/_check_wheel_deps.pth"  # torch & co.; its .pth files (the editable install) are not run
"$tmp/venv/bin/python" -m pip install -q --no-deps --no-index "$wheel"
cd "$tmp"
export PYTHONPATH= MQNET_FAST_CACHE="$tmp/cache"
"$tmp/venv/bin/python" - "$src" "$site_new" <<'PY'
import importlib, os, pkgutil, sys
src, site = sys.argv[1], sys.argv[2]
assert not any(os.path.realpath(p or ".") == os.path.realpath(src) for p in sys.path), f"{src} is on sys.path"
import mqnet_fast
assert mqnet_fast.__file__.startswith(site), f"mqnet_fast imported from {mqnet_fast.__file__}, not the wheel"
assert mqnet_fast.has_compiled(), "the wheel's mqnet_fast._C does not load"
info = mqnet_fast.build_info()
assert info is not None and info.get("cpu_features") is not None and "cpu" in info["backends"], \
    f"the wheel's build record is missing or incomplete: {info}"
names = [m.name for m in pkgutil.walk_packages(mqnet_fast.__path__, "mqnet_fast.") if m.name != "mqnet_fast.__main__"]
for name in names:
    module = importlib.import_module(name)
    assert module.__file__.startswith(site), f"{name} imported from {module.__file__}"
subpackages = {n for n in names if hasattr(importlib.import_module(n), "__path__")}
want = {"mqnet_fast." + s for s in ("experiment", "ops", "models", "reference", "scores", "strategies", "training")}
assert want <= subpackages, f"subpackages missing from the wheel: {sorted(want - subpackages)}"
print(f"check_wheel: {len(names)} modules import from the wheel, build {mqnet_fast.build_info()}")
PY
"$tmp/venv/bin/mqnet-fast" info
"$tmp/venv/bin/mqnet-fast" run --quiet --dataset digits --noise 0.6 --split 4:6 --budget 20 --rounds 1 \
    --strategies conf,random --seeds 0 --jobs 2 --run-dir "$tmp/run" --report
"$tmp/venv/bin/python" - <<'PY'
import numpy as np
rng = np.random.default_rng(0)
np.savez("pool.npz", feats=rng.normal(size=(200, 8)).astype("float32"), labeled=np.arange(10))
PY
"$tmp/venv/bin/mqnet-fast" select --embeddings pool.npz --strategy coreset --budget 5 --out picks.csv
test "$(wc -l < picks.csv)" -eq 6  # a header and the 5 picks
echo "check_wheel: the wheel works outside the source tree"
