"""Compiles every Triton kernel of mqnet_fast.ops (<op>_triton.py) for an H100/H200 (sm_90) ahead of time, with
the launch configurations the host wrappers use on a GPU, without a GPU. Run by
tests/test_triton_compile.py in a process without TRITON_INTERPRET (under the interpreter the
kernels are not JIT functions). Prints one JSON line per kernel variant: {"name", "error"}, error
None when it compiled."""
from __future__ import annotations

import json
import traceback
from types import SimpleNamespace

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mqnet_fast.ops import badge_kmeanspp_triton as badge
from mqnet_fast.ops import kcenter_greedy_triton as kcenter
from mqnet_fast.ops import nearest_triton as nearest
from mqnet_fast.ops import nonneg_mlp_score_triton as mlp

TARGET = GPUTarget("cuda", 90, 32)
LAUNCH_OPTIONS = ("num_warps", "num_stages")


def compile_kernel(fn, arg_types: dict, config: dict, divisible_by_16: tuple = ()):
    """fn compiled with the pointer/float argument types in arg_types (other arguments i32), the
    constexprs and launch options in config, and the arguments named in divisible_by_16 marked so
    (as Triton's launcher specializes aligned pointers, sizes and strides at run time)."""
    signature = {p.name: "constexpr" if p.is_constexpr else arg_types.get(p.name, "i32") for p in fn.params}
    constexprs = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
    options = {k: v for k, v in config.items() if k in LAUNCH_OPTIONS}
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.params) if p.name in divisible_by_16}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                          target=TARGET, options=options)


def variants():
    """(name, kernel, argument types, constexprs and launch options)."""
    for x_type, acc, acc_type in (("*bf16", tl.float32, "*fp32"), ("*fp32", tl.float32, "*fp32"),
                                  ("*fp64", tl.float64, "*fp64")):
        types = dict(x_ptr=x_type, center_ptr="*i64", min_d2_ptr=acc_type, eligible_ptr="*i8",
                     block_val_ptr=acc_type, block_idx_ptr="*i64", assign_ptr="*i32", center_d2_ptr=acc_type,
                     skipped_ptr="*i64", delta="fp32", centers_ptr="*i64", picks_ptr="*i64",
                     radii_ptr=acc_type)
        blocks = dict(ACC=acc, BLOCK_N=64, BLOCK_D=128)
        for has_center, prune, count in ((False, False, False), (True, False, False), (True, True, True)):
            yield (f"kcenter update {x_type} center={has_center} prune={prune}", kcenter._update_argmax_kernel, types,
                   dict(HAS_CENTER=has_center, PRUNE=prune, COUNT_SKIPPED=count, **blocks))
        yield f"kcenter center distances {x_type}", kcenter._center_distances_kernel, types, blocks
        if acc == tl.float32:  # the float32 labeled init's exact distances of its candidate pairs
            pair_types = dict(x_ptr=x_type, rows_ptr="*i64", centers_ptr="*i64", out_ptr="*fp32")
            yield f"kcenter pair distances {x_type}", kcenter._pair_distances_kernel, pair_types, blocks
        yield f"kcenter pick {acc_type}", kcenter._pick_kernel, types, dict(BLOCK=1024)
    for dtype, q_type in ((torch.bfloat16, "*bf16"), (torch.float16, "*fp16"), (torch.float32, "*fp32")):
        for dim in (128, 512):  # query tile resident / loop over d
            config = nearest.launch_config(SimpleNamespace(shape=(1 << 20, dim), is_cuda=True, dtype=dtype))
            for l2 in (False, True):
                for defer in (False, True):  # DEFER: a tile-sweep option
                    yield (f"nearest {q_type} d={dim} l2={l2} defer={defer}", nearest._nearest_kernel,
                           dict(q_ptr=q_type, k_ptr=q_type, qq_ptr="*fp32", kk_ptr="*fp32", values_ptr="*fp32",
                                indices_ptr="*i64"),
                           dict(config, L2=l2, IEEE=dtype == torch.float32, DEFER=defer))
    launch = badge.launch_config(torch.device("cuda"))
    for h_type in ("*bf16", "*fp32"):
        types = dict(a_ptr="*fp32", h_ptr=h_type, g_ptr="*fp32", hnorm_ptr="*fp32", d2_ptr="*fp32",
                     picks_ptr="*i64", block_sums_ptr="*fp64", slack="fp32", picked_ptr="*i8",
                     uniforms_ptr="*fp64")
        yield (f"badge update {h_type}", badge._update_kernel, types,
               dict(BLOCK_N=launch["BLOCK_N"], BLOCK_C=128, BLOCK_D=128, num_warps=launch["num_warps"]))
    yield "badge sample", badge._sample_kernel, types, launch
    types = {name: "*fp32" for name in ("z_ptr", "mean_ptr", "std_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr",
                                        "out_ptr")}
    types["flags_ptr"] = "*i32"
    for k, hidden, standardize in ((2, 64, True), (2, 64, False), (3, 10, True)):
        yield (f"mlp k={k} hidden={hidden} standardize={standardize}", mlp._nonneg_mlp_score_kernel, types,
               dict(K=k, K_PAD=triton.next_power_of_2(k), HIDDEN=hidden, HIDDEN_PAD=triton.next_power_of_2(hidden),
                    STANDARDIZE=standardize, **mlp.launch_config()))


def main():
    for name, fn, types, config in variants():
        try:
            compile_kernel(fn, types, config)
            error = None
        except Exception:  # report every variant, not just the first failure
            error = traceback.format_exc(limit=-3)
        print(json.dumps(dict(name=name, error=error)), flush=True)


if __name__ == "__main__":
    main()
