"""GPU benchmark of the four ops at the sizes of issue 4, each against the best plain-PyTorch
formulation measured in the same run on the same GPU. Writes JSON and a markdown table.

    python benchmarks/gpu/gpu_bench.py --out DIR [--quick] [--only kcenter,kcenter_prune,nearest,badge,mlp,small]
        [--nearest-tune DIR/nearest-tune.json]

Baselines (plain PyTorch, no Python loop over rows):
- k-center: per pick one matmul-free pass: d2 = |x|^2 - 2 x c + |c|^2 via torch.mv, a running minimum
  and torch.argmax (one read of x per pick, like the kernel), timed on 50 picks and scaled.
- nearest: chunked torch.matmul of the normalized rows (bf16 tensor cores) + max, 8192 queries per chunk.
- BADGE: the same update with two torch.mv passes and torch.cumsum/searchsorted sampling, on 50 picks, scaled.
- MLP: eager torch (two linear layers with clamped weights, sigmoid), timed as whole calls and as device
  time alone (both sides replayed from CUDA graphs; the Triton kernel's rows per program are swept).
Each op is timed with the Triton backend and, where _C was built with CUDA, the CUDA-source backend;
the faster one per op is what "auto" should pick (record it in mqnet_fast/ops/_backends.py, AUTO).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from mqnet_fast import compiled_backends, ops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import GPU_PEAKS, cuda_time, graph_time  # noqa: E402

BACKENDS = ["triton"] + (["cuda"] if "cuda" in compiled_backends() else [])

def kcenter_baseline(x, labeled, picks):
    sq = (x.float() ** 2).sum(1)
    min_d2 = torch.full_like(sq, float("inf"))
    for j in labeled.tolist():
        min_d2 = torch.minimum(min_d2, sq - 2 * torch.mv(x, x[j]).float() + sq[j])
    eligible = torch.ones_like(sq, dtype=torch.bool)
    eligible[labeled] = False
    for _ in range(picks):
        c = torch.argmax(torch.where(eligible, min_d2, float("-inf")))
        eligible[c] = False
        min_d2 = torch.minimum(min_d2, sq - 2 * torch.mv(x, x[c]).float() + sq[c])
    return min_d2


def nearest_baseline(q, k, chunk=8192):
    kn = torch.nn.functional.normalize(k.float(), dim=1).to(k.dtype)
    values = []
    for start in range(0, q.shape[0], chunk):
        qn = torch.nn.functional.normalize(q[start:start + chunk].float(), dim=1).to(q.dtype)
        values.append((qn @ kn.T).max(1).values)
    return torch.cat(values)


def badge_baseline(probs, feats, picks):
    a = torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).float() - probs
    g = (a * a).sum(1) * (feats.float() ** 2).sum(1)
    d2 = torch.full_like(g, float("inf"))
    c = torch.argmax(g)
    u = torch.rand(picks, dtype=torch.float64, device=probs.device)
    for step in range(picks):
        dist = (g + g[c] - 2 * torch.mv(a, a[c]) * torch.mv(feats, feats[c]).float()).clamp_min(0)
        d2 = torch.minimum(d2, dist)
        d2[c] = 0
        cum = torch.cumsum(d2.double(), 0)
        c = torch.searchsorted(cum, (u[step] * cum[-1]).view(1))[0].clamp_max(len(g) - 1)
    return d2


def mlp_baseline(z, w, b, mean, std):
    h = torch.sigmoid(torch.nn.functional.linear((z - mean) / std, w[0].clamp_min(0), b[0]))
    return torch.nn.functional.linear(h, w[1].clamp_min(0), b[1]).squeeze(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", default=None, help="comma-separated subset of kcenter,kcenter_prune,nearest,badge,mlp,small")
    parser.add_argument("--nearest-tune", default=None,
                        help="nearest-tune.json of benchmarks/gpu/gpu_tune_nearest.py: time nearest with its fastest tiles")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in GPU_PEAKS.items() if k in name), None)
    scale = 10 if args.quick else 1
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []

    def record(op, size, kernel_s, baseline_s, backend="triton", **extra):
        rows.append(dict(op=op, backend=backend, size=size, kernel_s=kernel_s, baseline_s=baseline_s,
                         speedup=baseline_s / kernel_s, **extra))
        print(json.dumps(rows[-1]), flush=True)

    kcenter_baseline_s = {}  # the plain-PyTorch k-center time of bench_kcenter, reused by bench_kcenter_prune

    def bench_kcenter():
        # k-center: N=1M, d=512, bf16, 1000 labeled, 1000 picks
        n, d, picks, n_lab = 1_000_000 // scale, 512, 1000 // scale, 1000 // scale
        x = torch.randn(n, d, device=dev, generator=g).to(torch.bfloat16)
        labeled = torch.randperm(n, device=dev, generator=g)[:n_lab]
        base_picks = min(50, picks)
        t_base = cuda_time(lambda: kcenter_baseline(x, labeled, base_picks), repeat=1)
        t_base_lab = cuda_time(lambda: kcenter_baseline(x, labeled, 0), repeat=1)
        base_per_pick = (t_base - t_base_lab) / base_picks
        bytes_per_pick = n * d * 2
        for backend in BACKENDS:
            ops.kcenter_greedy(x[:5000], labeled[:10] % 5000, 10, backend=backend)  # compile / warm up
            t_init = cuda_time(lambda: ops.kcenter_greedy(x, labeled, 1, backend=backend), repeat=2)
            t_all = cuda_time(lambda: ops.kcenter_greedy(x, labeled, picks, backend=backend), repeat=2)
            per_pick = (t_all - t_init) / (picks - 1)
            kcenter_baseline_s[backend] = t_base_lab + base_per_pick * picks
            record("kcenter_greedy", f"N={n} d={d} bf16 L={n_lab} b={picks}", t_all,
                   t_base_lab + base_per_pick * picks, backend, per_pick_s=per_pick, baseline_per_pick_s=base_per_pick,
                   hbm_fraction=(bytes_per_pick / per_pick / 1e9 / peak["hbm_gbs"]) if peak else None)

    def bench_kcenter_prune():
        # the Triton k-center with and without triangle-inequality pruning (mqnet_fast/ops/kcenter_greedy_triton.py,
        # prune=True gives the same results), on Gaussian rows (little to prune: what it costs) and on the
        # clustered mixture of benchmarks/ops/data.py (what it gains); the plain-PyTorch baseline is the one
        # timed on the Gaussian rows (a torch.mv per pick costs the same whatever the values)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))  # benchmarks/ops/data.py
        from data import clustered
        from mqnet_fast.ops import kcenter_greedy_triton as kc

        n, d, picks, n_lab = 1_000_000 // scale, 512, 1000 // scale, 1000 // scale
        gen = torch.Generator(device=dev).manual_seed(0)
        labeled = torch.randperm(n, device=dev, generator=gen)[:n_lab]
        excluded = torch.zeros(n, dtype=torch.bool, device=dev)
        base = kcenter_baseline_s.get("triton")
        for name in ("gaussian", "clustered"):
            if name == "gaussian":
                x = torch.randn(n, d, device=dev, generator=gen).to(torch.bfloat16)
            else:
                x = clustered(n, d, device=dev)[0].to(torch.bfloat16)
            for prune in (False, True):  # compile / warm up
                kc.run(x[:5000], labeled[:10] % 5000, 10, excluded[:5000], prune)
            timed = {}
            for prune in (False, True):
                t_init = cuda_time(lambda: kc.run(x, labeled, 1, excluded, prune), repeat=2)
                t_all = cuda_time(lambda: kc.run(x, labeled, picks, excluded, prune), repeat=2)
                timed[prune] = (t_all, (t_all - t_init) / (picks - 1))
            skipped = torch.zeros(picks, dtype=torch.int64, device=dev)
            pruned = kc.run(x, labeled, picks, excluded, True, skipped)
            plain = kc.run(x, labeled, picks, excluded, False)
            same = all(torch.equal(a, b) for a, b in zip(pruned, plain))
            for prune in (False, True):
                record("kcenter_greedy", f"{name} N={n} d={d} bf16 L={n_lab} b={picks}", timed[prune][0],
                       base if base is not None else float("nan"), f"triton prune={prune}",
                       per_pick_s=timed[prune][1], vs_unpruned=timed[False][0] / timed[prune][0],
                       skipped_fraction=(skipped.sum().item() / (n * picks)) if prune else None,
                       same_result_as_unpruned=same if prune else None)

    def bench_nearest():
        # nearest: N=1M x M=50k x d=128, bf16
        n, m, d = 1_000_000 // scale, 50_000 // scale, 128
        q = torch.randn(n, d, device=dev, generator=g).to(torch.bfloat16)
        k = torch.randn(m, d, device=dev, generator=g).to(torch.bfloat16)
        t_base = cuda_time(lambda: nearest_baseline(q, k))
        flops = 2.0 * n * m * d
        tiles = {}
        from mqnet_fast import _triton

        if args.nearest_tune and Path(args.nearest_tune).exists():
            from gpu_tune_nearest import describe, tuned_config

            swept = [r for r in json.loads(Path(args.nearest_tune).read_text())["rows"] if "ms" in r and r["same_indices"]]
            if swept:
                fastest = min(swept, key=lambda r: r["ms"])["config"]
                _triton.kernel_module("nearest").TUNED_CONFIG = tuned_config(fastest)
                tiles = dict(tiles=describe(fastest))
        for backend in BACKENDS:
            ops.nearest(q[:1000], k[:1000], backend=backend)
            t_kernel = cuda_time(lambda: ops.nearest(q, k, backend=backend))
            record("nearest", f"N={n} M={m} d={d} bf16 cosine", t_kernel, t_base, backend,
                   tflops=flops / t_kernel / 1e12,
                   tensor_core_fraction=(flops / t_kernel / 1e12 / peak["bf16_tflops"]) if peak else None,
                   **(tiles if backend == "triton" else {}))
        _triton.kernel_module("nearest").TUNED_CONFIG = None  # the swept tiles were for this size and dtype

    def bench_badge():
        # BADGE: N=1M, C=100, d=512, k=1000 (features in bf16)
        n, c, d, kk = 1_000_000 // scale, 100, 512, 1000 // scale
        probs = torch.softmax(torch.randn(n, c, device=dev, generator=g) * 3, 1)
        feats = torch.randn(n, d, device=dev, generator=g).to(torch.bfloat16)
        base_picks = min(50, kk)
        t_base = cuda_time(lambda: badge_baseline(probs, feats, base_picks), repeat=1) * kk / base_picks
        for backend in BACKENDS:
            ops.badge_kmeanspp(probs[:2000], feats[:2000], 5, backend=backend)
            t_kernel = cuda_time(lambda: ops.badge_kmeanspp(probs, feats, kk, generator=torch.Generator().manual_seed(0),
                                                            backend=backend), repeat=2)
            record("badge_kmeanspp", f"N={n} C={c} d={d} k={kk} (feats bf16)", t_kernel, t_base, backend)

    def bench_mlp():
        # MLP: N=1M, 2 -> 64 -> 1
        from mqnet_fast import _triton

        n = 1_000_000
        z = torch.randn(n, 2, device=dev, generator=g)
        w = [torch.randn(64, 2, device=dev, generator=g), torch.randn(1, 64, device=dev, generator=g)]
        b = [torch.randn(64, device=dev, generator=g), torch.randn(1, device=dev, generator=g)]
        mean, std = z.mean(0), z.std(0)
        # device time alone (no host launch overhead): each side captured in a CUDA graph of 20 calls;
        # the Triton kernel's rows per program and warps are swept, the op below runs with the fastest
        module = _triton.kernel_module("nonneg_mlp_score")
        out, flags = torch.empty(n, device=dev), torch.zeros(1, dtype=torch.int32, device=dev)

        def kernel():
            module._launch(module._nonneg_mlp_score_kernel, z, w[0], b[0], w[1], b[1], mean, std, True, out, flags)

        t_base_graph = graph_time(lambda: mlp_baseline(z, w, b, mean, std))
        best = None
        for rows_per_program, warps in ((128, 4), (256, 4), (512, 4), (1024, 4), (512, 8), (1024, 8), (2048, 8)):
            module.TUNED_CONFIG = dict(BLOCK_ROWS=rows_per_program, num_warps=warps)
            t = graph_time(kernel)
            print(f"mlp kernel BLOCK_ROWS={rows_per_program} num_warps={warps}: {t * 1e6:.1f} us", flush=True)
            if best is None or t < best[0]:
                best = (t, rows_per_program, warps)
        module.TUNED_CONFIG = dict(BLOCK_ROWS=best[1], num_warps=best[2])
        tiles = f"BLOCK_ROWS={best[1]} w{best[2]}"
        record("nonneg_mlp_score (device time, graph)", f"N={n} hidden=64", best[0], t_base_graph, "triton", tiles=tiles)
        # whole op calls, host overhead and input checks included, against eager PyTorch's wall time
        t_base = cuda_time(lambda: mlp_baseline(z, w, b, mean, std), repeat=10)
        for backend in BACKENDS:
            ops.nonneg_mlp_score(z, w, b, mean=mean, std=std, backend=backend)
            t_kernel = cuda_time(lambda: ops.nonneg_mlp_score(z, w, b, mean=mean, std=std, backend=backend), repeat=10)
            record("nonneg_mlp_score", f"N={n} hidden=64", t_kernel, t_base, backend,
                   **(dict(tiles=tiles) if backend == "triton" else {}))
        module.TUNED_CONFIG = None


    def bench_small():
        # both GPU backends at issue 2's (CPU-scale) sizes in float32, so that "auto" can be chosen per size:
        # k-center N=50k d=512 L=1000 b=1000; nearest 50k x 5k x 128; BADGE N=50k C=10 d=512 k=1000; MLP N=10k
        n, d = 50_000, 512
        x = torch.randn(n, d, device=dev, generator=g)
        labeled = torch.randperm(n, device=dev, generator=g)[:1000]
        t_base = cuda_time(lambda: kcenter_baseline(x, labeled, 1000), repeat=2)
        for backend in BACKENDS:
            ops.kcenter_greedy(x, labeled, 10, backend=backend)
            t = cuda_time(lambda: ops.kcenter_greedy(x, labeled, 1000, backend=backend), repeat=3)
            record("kcenter_greedy", f"N={n} d={d} fp32 L=1000 b=1000", t, t_base, backend)
        q, k = torch.randn(n, 128, device=dev, generator=g), torch.randn(5000, 128, device=dev, generator=g)
        for dtype in (torch.float32, torch.bfloat16):
            qd, kd = q.to(dtype), k.to(dtype)
            t_base = cuda_time(lambda: nearest_baseline(qd, kd), repeat=5)
            for backend in BACKENDS:
                ops.nearest(qd, kd, backend=backend)
                t = cuda_time(lambda: ops.nearest(qd, kd, backend=backend), repeat=5)
                record("nearest", f"N={n} M=5000 d=128 {str(dtype).removeprefix('torch.')} cosine", t, t_base, backend)
        probs = torch.softmax(torch.randn(n, 10, device=dev, generator=g) * 3, 1)
        t_base = cuda_time(lambda: badge_baseline(probs, x, 1000), repeat=2)
        for backend in BACKENDS:
            ops.badge_kmeanspp(probs, x, 10, backend=backend)
            t = cuda_time(lambda: ops.badge_kmeanspp(probs, x, 1000, generator=torch.Generator().manual_seed(0),
                                                     backend=backend), repeat=3)
            record("badge_kmeanspp", f"N={n} C=10 d={d} k=1000 fp32", t, t_base, backend)
        z = torch.randn(10_000, 2, device=dev, generator=g)
        w = [torch.randn(64, 2, device=dev, generator=g), torch.randn(1, 64, device=dev, generator=g)]
        b = [torch.randn(64, device=dev, generator=g), torch.randn(1, device=dev, generator=g)]
        mean, std = z.mean(0), z.std(0)
        t_base = cuda_time(lambda: mlp_baseline(z, w, b, mean, std), repeat=10)
        for backend in BACKENDS:
            ops.nonneg_mlp_score(z, w, b, mean=mean, std=std, backend=backend)
            t = cuda_time(lambda: ops.nonneg_mlp_score(z, w, b, mean=mean, std=std, backend=backend), repeat=10)
            record("nonneg_mlp_score", "N=10000 hidden=64", t, t_base, backend)

    for section in (bench_kcenter, bench_kcenter_prune, bench_nearest, bench_badge, bench_mlp, bench_small):
        if args.only and section.__name__.removeprefix("bench_") not in args.only.split(","):
            continue
        try:
            section()
        except Exception as err:  # one failing op must not lose the others' figures
            traceback.print_exc()
            rows.append(dict(op=section.__name__, backend='-', size='-', kernel_s=float('nan'), baseline_s=float('nan'),
                             speedup=float('nan'), error=f'{type(err).__name__}: {err}'[:200]))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(device=name, torch=torch.__version__, quick=args.quick, date=time.strftime("%Y-%m-%d"))
    (out / "gpu-bench.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    lines = [f"GPU: {name}, torch {torch.__version__}", "",
             "| op | backend | size | mqnet-fast | plain PyTorch | speedup | notes |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                          if k not in ("op", "backend", "size", "kernel_s", "baseline_s", "speedup") and v is not None)
        lines.append(f"| {r['op']} | {r['backend']} | {r['size']} | {r['kernel_s'] * 1e3:.1f} ms | {r['baseline_s'] * 1e3:.1f} ms | "
                     f"{r['speedup']:.1f}x | {notes} |")
    (out / "gpu-bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
