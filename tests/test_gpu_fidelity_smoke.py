"""benchmarks/gpu/gpu_fidelity.sh in its CPU smoke mode: every step the one device run takes (training-step
timing, the four-strategy open-set run, the report beside the paper's tables) runs and writes what
the device run will bring back."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_fidelity_script_smoke(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu/gpu_fidelity.sh", "--smoke"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with tarfile.open(out / "fidelity.tgz") as archive:  # everything comes back as one file
        archive.extractall(tmp_path / "got", filter="data")
    got = tmp_path / "got"
    timing = (got / "timing.txt").read_text()
    assert "train-step bench rc=0" in timing, timing
    assert "fidelity run mqnet rc=0" in timing and "fidelity run baselines rc=0" in timing, timing
    step = json.loads((got / "train-step.json").read_text())
    assert step["engine_ms"] > 0 and set(step["breakdown_ms"]) == {"augment", "forward", "backward", "step"}
    assert step["jobs"]["n"] == 2 and step["jobs"]["n_iter_per_s"] > 0
    report = (got / "fidelity.md").read_text()
    assert report == (out / "fidelity.md").read_text()
    for strategy in ("mqnet", "conf", "random", "coreset"):
        assert f"| {strategy} |" in report
    # the paper's numbers beside ours: Table 10 (last round, 60%) and Table 8 (%IN first / last)
    assert "| 89.51 |" in report and "82.8 / 35.6" in report and "37.4 / 16.3" in report
    assert len((got / "results-mqnet.csv").read_text().splitlines()) == 1 + 3  # 2 rounds + the final evaluation
    assert len((got / "results-baselines.csv").read_text().splitlines()) == 1 + 3 * 3
    assert not (tmp_path / "work").exists()  # checkpoints and caches removed, never in OUT
