"""The README's MQ-Net loop (a synthetic pool of 2,000 examples, classes 0-5 IN, 6-9 OOD: 60% IN)
for 6 rounds on several pool seeds, per MQ-Net setting: %IN of each query. Checks the trap of
issue 21: after an all-OOD query Phi has nothing to learn from, and the next query must not repeat it.

    python benchmarks/engine/readme_loop_seeds.py [--seeds 0-19] [--rounds 6] [--out benchmarks/results/readme-loop.md]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import mqnet_fast

SETTINGS = {
    "defaults": {},
    "published code (fresh, code recipe, last query, top-b)": dict(meta_init="fresh", meta_optimizer="code",
                                                                  meta_history="last", selection="top"),
    "paper text (warm, lr 0.01, last query, top-b)": dict(meta_init="warm", meta_optimizer="paper",
                                                          meta_history="last", selection="top"),
    "every query (fresh, code recipe, all queries, top-b)": dict(meta_init="fresh", meta_optimizer="code",
                                                                 meta_history="all", selection="top"),
    "every query, lr 0.01": dict(meta_init="fresh", meta_optimizer="paper", meta_history="all", selection="top"),
    "every query, momentum recipe": dict(meta_init="fresh", meta_optimizer="momentum", meta_history="all",
                                         selection="top"),
}


def run(seed: int, rounds: int, options: dict) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (2000,), generator=g)
    x = torch.randn(2000, 32, generator=g) + 2 * torch.randn(10, 32, generator=g)[y]
    oracle_in = y < 6
    labeled = torch.randperm(2000, generator=g)[:100]
    mq = mqnet_fast.MQNet(purity="knn", informativeness="conf", **options)
    shares = []
    for r in range(rounds):
        ins = labeled[oracle_in[labeled]]
        torch.manual_seed(r)
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 6))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(200):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[ins]), y[ins]).backward()
            opt.step()
        with torch.no_grad():
            feats = model[:2](x)
            logits = model[2](feats)
        unlabeled = torch.ones(2000, dtype=torch.bool)
        unlabeled[labeled] = False
        pool = unlabeled.nonzero().squeeze(1)
        sel = mq.select(100, logits=logits[pool], feats=feats[pool], labeled_feats=feats[labeled],
                        labeled_is_in=oracle_in[labeled])
        picked = pool[sel.indices]
        mq.observe(sel.indices, is_in=oracle_in[picked], labels=y[picked])
        labeled = torch.cat([labeled, picked])
        shares.append(100 * float(oracle_in[picked].float().mean()))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0-19")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default="benchmarks/results/readme-loop.md")
    args = parser.parse_args()
    first, last = (int(v) for v in args.seeds.split("-"))
    seeds = range(first, last + 1)
    torch.set_num_threads(1)
    out = [f"The README's MQ-Net loop, {args.rounds} rounds of 100, pool seeds {first}-{last} "
           "(benchmarks/engine/readme_loop_seeds.py): %IN of each query, and how many seeds have a query after the first "
           "at 0% IN.", ""]
    for name, options in SETTINGS.items():
        rows = {seed: run(seed, args.rounds, options) for seed in seeds}
        trapped = [s for s, shares in rows.items() if any(v == 0 for v in shares[1:])]
        out += [f"**{name}** {options or ''}: seeds with a later query at 0% IN: {len(trapped)} of {len(rows)}"
                + (f" ({', '.join(map(str, trapped))})" if trapped else ""), "",
                "| seed | " + " | ".join(f"round {r}" for r in range(args.rounds)) + " |",
                "|---" * (args.rounds + 1) + "|"]
        out += [f"| {s} | " + " | ".join(f"{v:.0f}" for v in shares) + " |" for s, shares in rows.items()]
        out.append("")
        print("\n".join(out[-len(rows) - 5:]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
