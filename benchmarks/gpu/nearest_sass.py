"""What the nearest-set kernel's key-tile loop costs in sm_90 machine code, without a GPU: compiles
mqnet_fast/ops/nearest_triton.py ahead of time (tests/triton_aot.py) for bf16, d=128, cosine, with the
per-tile reduction and with DEFER, and prints per configuration the registers per thread and the
SASS instructions of the loop that holds the tensor-core MMAs (one key tile per iteration, per warp).
Needs Triton's bundled cuobjdump; run without TRITON_INTERPRET.

    python benchmarks/gpu/nearest_sass.py
"""
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).parents[2] / "tests"))
import triton  # noqa: E402
from triton_aot import compile_kernel  # noqa: E402

from mqnet_fast.ops import nearest_triton  # noqa: E402

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
TYPES = dict(q_ptr="*bf16", k_ptr="*bf16", qq_ptr="*fp32", kk_ptr="*fp32", values_ptr="*fp32", indices_ptr="*i64")
ALIGNED = ("q_ptr", "k_ptr", "qq_ptr", "kk_ptr", "values_ptr", "indices_ptr", "dim", "stride_q", "stride_k")
CONFIGS = [(128, 64, 8, 4), (64, 128, 4, 3)]  # BLOCK_M, BLOCK_N, num_warps, num_stages: the H100 sweep's best two


def cuobjdump(kernel, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        return subprocess.run([str(CUOBJDUMP), flag, cubin.name], capture_output=True, text=True, check=True).stdout


def mma_loop(sass: str) -> list[str]:
    """The instructions from a backward branch's target to the branch, for the first loop holding HGMMA."""
    code = [(int(m.group(1), 16), m.group(2)) for m in
            (re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in sass.splitlines()) if m]
    position = {address: i for i, (address, _) in enumerate(code)}
    for i, (address, text) in enumerate(code):
        target = re.search(r"BRA.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address and int(target.group(1), 16) in position:
            body = [t for _, t in code[position[int(target.group(1), 16)]:i + 1]]
            if any("HGMMA" in t for t in body):
                return body
    raise RuntimeError("no loop with HGMMA found")


def main():
    for block_m, block_n, warps, stages in CONFIGS:
        for defer in (False, True):
            kernel = compile_kernel(nearest_triton._nearest_kernel, TYPES,
                                    dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=128, num_warps=warps,
                                         num_stages=stages, DEFER=defer, Q_RESIDENT=True, L2=False, IEEE=False),
                                    ALIGNED)
            registers = re.search(r"REG:(\d+)", cuobjdump(kernel, "--dump-resource-usage")).group(1)
            loop = mma_loop(cuobjdump(kernel, "-sass"))
            opcodes = Counter(t.split()[1 if t.startswith("@") else 0].split(".")[0] for t in loop)
            print(f"{block_m}x{block_n} w{warps} s{stages} {'deferred ' if defer else 'per-tile '}: "
                  f"{registers} registers, {len(loop)} instructions per key tile per warp "
                  f"({', '.join(f'{op} {n}' for op, n in opcodes.most_common(4))})")


if __name__ == "__main__":
    main()
