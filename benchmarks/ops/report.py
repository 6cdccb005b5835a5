"""Turns a pytest-benchmark JSON into the README's table: each kernel's time and its ratios against
the baselines measured in the same run.

    python -m pytest benchmarks --benchmark-json=benchmarks/results/cpu.json
    python benchmarks/ops/report.py benchmarks/results/cpu.json
"""
import json
import platform
import sys

import torch


MLP_FLOP_PER_ROW = 2 * (2 * 64 + 64) + 64 * (16 + 4)  # see benchmarks/ops/test_bench_mlp.py


def main(*paths):
    """Reads one or more JSON files; a later file's entries replace an earlier one's."""
    data = json.load(open(paths[0]))
    by_name = {b["fullname"]: b for p in paths for b in json.load(open(p))["benchmarks"]}
    data["benchmarks"] = list(by_name.values())
    t = {b["fullname"].split("::")[-1]: b["stats"]["min"] for b in data["benchmarks"]}
    extra = {b["fullname"].split("::")[-1]: b.get("extra_info", {}) for b in data["benchmarks"]}
    rows = []
    for kind in ("gaussian", "clustered", "cifar"):
        if f"test_kcenter_cpp[{kind}]" not in t:
            continue
        ours, init = t[f"test_kcenter_cpp[{kind}]"], t[f"test_kcenter_cpp_init_only[{kind}]"]
        info = extra[f"test_kcenter_cdist_baseline[{kind}]"]
        base = info["init_s"] + (t[f"test_kcenter_cdist_baseline[{kind}]"] - info["init_s"]) / info["picks"] * 1000
        read = t[f"test_kcenter_read_of_x[{kind}]"]
        per_pick = (ours - init) / 1000
        rows.append((f"k-center, {kind}", f"{ours:.2f} s (init {init:.2f} s, {per_pick * 1e3:.2f} ms/pick)",
                     f"cdist baseline {base:.1f} s (extrapolated from {info['picks']} picks): **{base / ours:.0f}x**; "
                     f"per pick {per_pick / read:.2f}x one read of x ({read * 1e3:.2f} ms)"))
    for classes in (10, 100):
        for kind in ("gaussian", "clustered", "cifar"):
            key = f"[{kind}-C{classes}]"
            if f"test_badge_cpp{key}" not in t:
                continue
            ours = t[f"test_badge_cpp{key}"]
            picks = extra[f"test_badge_picks_baseline{key}"]["picks"]
            per_pick = t[f"test_badge_picks_baseline{key}"] / picks
            base = t[f"test_badge_materialize_baseline{key}"] + per_pick * 1000
            rows.append((f"BADGE k-means++, C={classes}, {kind}", f"{ours:.2f} s",
                         f"materialized baseline {base:.0f} s (extrapolated from {picks} picks): **{base / ours:.0f}x**"))
    mm = t["test_nearest_bare_matmul"]
    loop = t["test_nearest_per_query_loop"] / extra["test_nearest_per_query_loop"]["queries"] * 50_000
    for metric in ("cosine", "l2"):
        ours = t[f"test_nearest_cpp[{metric}]"]
        rows.append((f"nearest ({metric})", f"{ours * 1e3:.0f} ms",
                     f"{ours / mm:.2f}x a bare matmul ({mm * 1e3:.0f} ms); per-query loop {loop:.0f} s "
                     f"(extrapolated): **{loop / ours:.0f}x**"))
    ours, eager = t["test_mlp_cpp"], t["test_mlp_eager_torch"]
    rate = extra["test_mlp_sgemm_rate"]["flop"] / t["test_mlp_sgemm_rate"]
    floor = MLP_FLOP_PER_ROW * 1_000_000 / rate
    rows.append(("non-negative MLP, N=1M, hidden 64", f"{ours * 1e3:.1f} ms",
                 f"eager PyTorch {eager * 1e3:.0f} ms: **{eager / ours:.1f}x**; {ours / floor:.2f}x the compute "
                 f"floor ({floor * 1e3:.1f} ms = {MLP_FLOP_PER_ROW} flop/row at the SGEMM rate {rate / 1e9:.0f} GFLOP/s)"))
    print(f"Machine: {data['machine_info'].get('cpu', {}).get('brand_raw', platform.processor())}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, best of the rounds.\n")
    print("| op | mqnet-fast (cpp) | against baselines in the same run |")
    print("|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
