"""What a portable build of mqnet_fast._C costs against a native one, and the fused MLP's CPU paths
against eager PyTorch, in one run on this machine.

A portable build (-march=x86-64-v3, the default) runs on any AVX2 CPU and picks the fused MLP's
AVX-512 or AVX2 path at run time; a native build (MQNET_FAST_CPU_ARCH=native) may also let the
compiler vectorize the other kernels with AVX-512. This script builds the native variant into a
temporary copy of the package, then times every compiled op on both builds, alternating builds
round by round (the machines are shared and noisy: the ratios are what to read), and times
the MLP's paths (MQNET_FAST_CPU_ISA=avx512|avx2|generic) against eager PyTorch. An AVX2-only
machine is emulated for the MLP rows marked "(as AVX2)": the AVX2 path against eager PyTorch
restricted to AVX2 (ATEN_CPU_CAPABILITY=avx2); the microarchitecture stays this machine's.

    python benchmarks/ops/cpu_build_bench.py [--rounds 5] [--out benchmarks/results/cpu-build.md]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout

# one subprocess per (build, ISA cap, ATen capability): each prints {case: seconds}
WORKER = r'''
import json, sys, torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[4])  # benchmarks/timing.py
from timing import best_of
import mqnet_fast
from mqnet_fast import ops, reference
assert mqnet_fast.__file__.startswith(sys.argv[1]), mqnet_fast.__file__
torch.set_num_threads(int(sys.argv[2]))
which = sys.argv[3].split("|")
g = torch.Generator().manual_seed(0)
cases = {}
x = torch.randn(20_000, 256, generator=g)
cases["kcenter_greedy 20k x 256, 200 picks"] = lambda: ops.kcenter_greedy(x, torch.arange(100), 200, backend="cpp")
q, k = torch.randn(20_000, 128, generator=g), torch.randn(5_000, 128, generator=g)
cases["nearest 20k x 5k x 128 (l2)"] = lambda: ops.nearest(q, k, metric="l2", backend="cpp")
probs = torch.softmax(torch.randn(20_000, 10, generator=g), 1)
feats = torch.randn(20_000, 256, generator=g)
cases["badge_kmeanspp 20k, 10 x 256, 100 picks"] = lambda: ops.badge_kmeanspp(
    probs, feats, 100, generator=torch.Generator().manual_seed(1), backend="cpp")
ground, cand = torch.randn(4_000, 64, generator=g), torch.randn(4_000, 64, generator=g)
lo, hi = torch.zeros(4_000), torch.full((4_000,), 5.0)
cases["fl_gains 4k x 4k x 64"] = lambda: ops.fl_gains(ground, cand, lo, hi, backend="cpp")
z = torch.rand(1_000_000, 2, generator=g)
w = [torch.randn(64, 2, generator=g), torch.randn(1, 64, generator=g)]
b = [torch.randn(64, generator=g), torch.randn(1, generator=g)]
kw = dict(mean=z.mean(0), std=z.std(0))
cases["nonneg_mlp_score 1M, 2 -> 64 -> 1"] = lambda: ops.nonneg_mlp_score(z, w, b, **kw, backend="cpp")
cases["nonneg_mlp_score 1M, eager PyTorch"] = lambda: ops.nonneg_mlp_score(z, w, b, **kw, backend="torch")
zt, tt = torch.rand(2_000, 2, generator=g), torch.rand(2_000, generator=g)
batches = torch.randint(0, 2_000, (2_000, 32), generator=g)
w0 = [torch.rand(64, 2, generator=g), torch.rand(1, 64, generator=g)]
b0 = [torch.zeros(64), torch.zeros(1)]
cases["nonneg_mlp_rank_train 2k steps x 32"] = lambda: ops.nonneg_mlp_rank_train(
    zt, tt, batches, torch.full((2_000,), 1e-3), w0, b0, backend="cpp")
out = {}
for name in which:
    fn = cases[name]
    fn()
    out[name] = best_of(fn)
print(json.dumps(out))
'''

BUILD_CASES = ["kcenter_greedy 20k x 256, 200 picks", "nearest 20k x 5k x 128 (l2)",
               "badge_kmeanspp 20k, 10 x 256, 100 picks", "fl_gains 4k x 4k x 64",
               "nonneg_mlp_score 1M, 2 -> 64 -> 1", "nonneg_mlp_rank_train 2k steps x 32"]
MLP, EAGER = "nonneg_mlp_score 1M, 2 -> 64 -> 1", "nonneg_mlp_score 1M, eager PyTorch"


def build_native(into: Path) -> Path:
    """A copy of the package with _C built by MQNET_FAST_CPU_ARCH=native, under `into`."""
    src = into / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "runs", ".venv", "*.so",
                                                            "__pycache__", ".cache", "_build_info.json"))
    env = dict(os.environ, MQNET_FAST_CPU_ARCH="native", MQNET_FAST_WITH_CUDA="0", MAX_JOBS="2")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return src


def run(path: Path, threads: int, cases: list[str], env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER, str(path), str(threads), "|".join(cases),
                           str(Path(__file__).resolve().parents[1])],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the timing worker failed ({path}, {env}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in out.splitlines() if line.startswith("Flags")), "")
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return f"{name}, {isa}, {os.cpu_count()} cores"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu-build.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        native = build_native(Path(tmp))
        times = {key: {c: [] for c in BUILD_CASES} for key in ("portable", "native")}
        paths = {key: [] for key in ("avx512", "avx2", "generic", "eager", "eager (as AVX2)", "avx2 (as AVX2)")}
        for r in range(args.rounds):
            order = [("portable", ROOT), ("native", native)]
            for key, path in (order if r % 2 == 0 else order[::-1]):
                for case, t in run(path, args.threads, BUILD_CASES).items():
                    times[key][case].append(t)
            for isa in ("avx512", "avx2", "generic"):
                paths[isa].append(run(ROOT, args.threads, [MLP], {"MQNET_FAST_CPU_ISA": isa})[MLP])
            paths["eager"].append(run(ROOT, args.threads, [EAGER])[EAGER])
            as_avx2 = run(ROOT, args.threads, [MLP, EAGER], {"MQNET_FAST_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2"})
            paths["avx2 (as AVX2)"].append(as_avx2[MLP])
            paths["eager (as AVX2)"].append(as_avx2[EAGER])
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    lines = ["# Portable vs native build, and the fused MLP's CPU paths",
             "", f"`python benchmarks/ops/cpu_build_bench.py --rounds {args.rounds}` on {cpu_name()} "
             f"({args.threads} threads); best of 3 calls per round, median over {args.rounds} rounds, builds alternated.",
             "", "| op | portable (ms) | native (ms) | native / portable |", "|---|---:|---:|---:|"]
    for case in BUILD_CASES:
        p, n = median(times["portable"][case]) * 1e3, median(times["native"][case]) * 1e3
        lines.append(f"| {case} | {p:.1f} | {n:.1f} | {n / p:.2f} |")
    lines += ["", "Fused MLP score, 1M rows, 2 -> 64 -> 1, portable build, by path (MQNET_FAST_CPU_ISA):", "",
              "| path | ms | eager PyTorch / path |", "|---|---:|---:|"]
    eager = median(paths["eager"])
    for isa in ("avx512", "avx2", "generic"):
        t = median(paths[isa])
        lines.append(f"| {isa} | {t * 1e3:.1f} | {eager / t:.1f}x |")
    t, e = median(paths["avx2 (as AVX2)"]), median(paths["eager (as AVX2)"])
    lines.append(f"| avx2, eager with ATEN_CPU_CAPABILITY=avx2 (as AVX2) | {t * 1e3:.1f} | {e / t:.1f}x |")
    lines.append(f"| eager PyTorch (default ATen) | {eager * 1e3:.1f} | 1.0x |")
    lines.append(f"| eager PyTorch (ATEN_CPU_CAPABILITY=avx2) | {e * 1e3:.1f} | |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
