"""Times the Triton nearest kernel over tile configurations at issue 4's size (N=1M, M=50k, d=128,
bf16) on a GPU; the fastest goes into mqnet_fast/ops/nearest_triton.py. Writes nearest-tune.json to --out."""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

from mqnet_fast import _triton, ops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import GPU_PEAKS, cuda_time  # noqa: E402

CONFIGS = [  # BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, DEFER; BLOCK_K 128 = d: the query tile stays resident
    # around the fastest of the first H100 sweep (64x128 w4 s3 and 128x64 w8 s4, 27.4 ms)
    (64, 128, 128, 4, 3, False), (128, 64, 128, 8, 4, False), (64, 128, 128, 4, 4, False),
    (64, 256, 128, 4, 3, False), (64, 64, 128, 4, 3, False), (128, 64, 128, 8, 3, False),
    (256, 64, 128, 8, 4, False), (128, 64, 128, 4, 4, False),
    # the reduction deferred to the end (per-slot bests): ~9% fewer instructions per key tile in the
    # sm_90 SASS, but 120 registers instead of 80 at 128x64 w8 (benchmarks/gpu/nearest_sass.py; not yet timed)
    (128, 64, 128, 8, 4, True), (128, 64, 128, 8, 3, True), (64, 64, 128, 4, 3, True), (64, 128, 128, 4, 3, True),
]


def tuned_config(config) -> dict:
    """A CONFIGS entry (or a nearest-tune.json config; runs before DEFER existed have 5 entries) as
    mqnet_fast/ops/nearest_triton.py's TUNED_CONFIG."""
    bm, bn, bk, warps, stages, *rest = config
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages, DEFER=bool(rest and rest[0]))


def describe(config) -> str:
    tuned = tuned_config(config)
    return (f"{tuned['BLOCK_M']}x{tuned['BLOCK_N']}x{tuned['BLOCK_K']} w{tuned['num_warps']} s{tuned['num_stages']}"
            + (" deferred" if tuned["DEFER"] else ""))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results/gpu"))
    args = parser.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    n, m, d = 1_000_000, 50_000, 128
    q = torch.randn(n, d, device="cuda", generator=g).to(torch.bfloat16)
    k = torch.randn(m, d, device="cuda", generator=g).to(torch.bfloat16)
    module = _triton.kernel_module("nearest")
    _, reference_indices = ops.nearest(q, k, backend="triton")
    peak = next((v for key, v in GPU_PEAKS.items() if key in torch.cuda.get_device_name()), None)
    rows = []
    for config in CONFIGS:
        module.TUNED_CONFIG = tuned_config(config)
        try:
            _, indices = ops.nearest(q, k, backend="triton")
            t = cuda_time(lambda: ops.nearest(q, k, backend="triton"))
        except Exception as err:  # a tile that does not fit (shared memory, registers)
            rows.append(dict(config=list(config), error=type(err).__name__))
            print(rows[-1], flush=True)
            continue
        tflops = 2.0 * n * m * d / t / 1e12
        rows.append(dict(config=list(config), ms=t * 1e3, tflops=tflops,
                         fraction=tflops / peak["bf16_tflops"] if peak else None,
                         same_indices=bool(torch.equal(indices, reference_indices))))
        print(rows[-1], flush=True)
    module.TUNED_CONFIG = None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "nearest-tune.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                                                      rows=rows), indent=1))


if __name__ == "__main__":
    main()
