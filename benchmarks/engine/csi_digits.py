"""IN-vs-OOD AUROC of the CSI purity scores on the digits open-set split, and the encoder's training
time.

Per seed: the split of the AL demo (digits, 4 IN : 6 OOD classes, noise 0.6, budget 20), the CSI
encoder trained on the pool (EncoderConfig.for_dataset("digits") unless overridden), then for the
initial labeled set and 4 more random labeled sets growing by 20 (the 5 labeled sets the demo's 5
queries are scored from), the purity of the remaining pool examples and its AUROC for IN vs OOD
(sklearn's roc_auc_score). Scores: the registered csi, csi-ood and csi-full (through a RoundView),
the same in the other embedding layer, and raw pixels (max cosine similarity of the 0..1 pixels to
the labeled IN examples'; "raw-pixels-norm": of the normalized pixels).

    python benchmarks/engine/csi_digits.py                      # writes benchmarks/results/csi-digits.txt
    python benchmarks/engine/csi_digits.py --set epochs=10 --set width=8 --no-write   # tuning
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mqnet_fast.cache import RunCache  # noqa: E402
from mqnet_fast.data import load_digits  # noqa: E402
from mqnet_fast.experiment.split import make_open_set  # noqa: E402
from mqnet_fast.scores import csi as csi_scores  # noqa: E402
from mqnet_fast.scores import purity  # noqa: E402
from mqnet_fast.scores.knn import knn_purity  # noqa: E402
from mqnet_fast.strategies import RoundView  # noqa: E402
from mqnet_fast.training import DeviceImages  # noqa: E402
from mqnet_fast.training.contrastive import (EncoderConfig, embed, embed_rotations,  # noqa: E402
                                             load_or_train_encoder)

RESULTS = Path(__file__).resolve().parents[1] / "results" / "csi-digits.txt"
ROUNDS, BUDGET = 5, 20


def parse_value(text: str, like):
    if isinstance(like, bool):
        return text.lower() in ("1", "true", "yes")
    return type(like)(text)


def config_from(overrides: list[str]) -> EncoderConfig:
    config = EncoderConfig.for_dataset("digits")
    changes = {}
    for item in overrides:
        key, value = item.split("=", 1)
        changes[key] = parse_value(value, getattr(config, key))
    return dataclasses.replace(config, **changes)


def run_seed(data, images: DeviceImages, config: EncoderConfig, seed: int, registered: bool):
    split = make_open_set(data.train_labels, 10, 4, 0.6, BUDGET, seed)
    cache = RunCache("digits", seed, split.pool, directory=None)
    tick = time.perf_counter()
    # The registered scores look their config up by dataset; with overrides, patch that lookup.
    csi_scores.encoder_config = lambda view: config
    encoder = load_or_train_encoder(images, cache, config, show_progress=False)
    train_time = time.perf_counter() - tick

    pool = torch.from_numpy(split.pool)
    pool_np = split.pool
    flip = {"penultimate": "projection", "projection": "penultimate"}
    other, other_full = flip[csi_scores.PURITY_LAYER], flip[csi_scores.FULL_LAYER]
    other_emb = embed(encoder, images, pool, layer=other)
    other_rot = embed_rotations(encoder, images, pool, layer=other_full)
    raw = images.images[pool].flatten(1).float() / 255.0
    normalized = images.batch(pool).flatten(1)

    rng = np.random.RandomState(1000 + seed)
    labeled = np.sort(split.initial_labeled)
    per_round = []
    for r in range(ROUNDS):
        candidates = np.setdiff1d(pool_np, labeled)
        cand_rows = np.searchsorted(pool_np, candidates)
        lab_rows = np.searchsorted(pool_np, labeled)
        lab_in = split.is_in[labeled]
        truth = split.is_in[candidates]
        view = RoundView(torch.from_numpy(candidates), torch.zeros(len(candidates), 1), torch.zeros(len(candidates), 1),
                         torch.Generator().manual_seed(seed), labeled=torch.from_numpy(labeled),
                         labeled_is_in=torch.from_numpy(lab_in), images=images, cache=cache)
        scores = {name: purity(name, view) for name in ("csi", "csi-ood", "csi-full")} if registered else {}
        in_rows, ood_rows = lab_rows[lab_in], lab_rows[~lab_in]
        scores[f"csi[{other}]"] = csi_scores.csi_purity(other_emb[cand_rows], other_emb[in_rows])
        scores[f"csi-ood[{other}]"] = csi_scores.csi_ood_purity(other_emb[cand_rows], other_emb[ood_rows],
                                                                other_emb[in_rows])
        scores[f"csi-full[{other_full}]"] = csi_scores.csi_full_purity(
            other_rot.embeddings[cand_rows], other_rot.shift_logits[cand_rows],
            other_rot.embeddings[in_rows], other_rot.shift_logits[in_rows])
        scores["raw-pixels"] = knn_purity(raw[cand_rows], raw[in_rows])
        scores["raw-pixels-norm"] = knn_purity(normalized[cand_rows], normalized[in_rows])
        aurocs = {name: float(roc_auc_score(truth, s.cpu().numpy())) for name, s in scores.items()}
        per_round.append({"labeled": len(labeled), "labeled_in": int(lab_in.sum()), **aurocs})
        labeled = np.sort(np.concatenate([labeled, rng.choice(candidates, BUDGET, replace=False)]))
    return train_time, per_round


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="EncoderConfig override, key=value")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--out", default=str(RESULTS), help="where the results go (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from(args.set)
    data = load_digits()
    mean, std = DeviceImages.channel_stats(data.train_images)
    images = DeviceImages(data.train_images, mean, std, torch.device("cpu"), data.flip)

    lines = [f"# CSI purity on digits (4:6, noise 0.6, budget {BUDGET}, {ROUNDS} labeled sets of 20..{20 * ROUNDS})",
             f"# config: {config}",
             f"# csi / csi-ood layer: {csi_scores.PURITY_LAYER}; csi-full layer: {csi_scores.FULL_LAYER}",
             f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads, load average at start "
             f"{os.getloadavg()[0]:.2f}"]
    print("\n".join(lines), flush=True)
    means, times = {}, []
    for seed in [int(s) for s in args.seeds.split(",")]:
        train_time, per_round = run_seed(data, images, config, seed, registered=True)
        times.append(train_time)
        names = [k for k in per_round[0] if k not in ("labeled", "labeled_in")]
        block = [f"seed {seed}: encoder trained in {train_time:.1f} s",
                 "  labeled (IN) " + " ".join(f"{n:>22s}" for n in names)]
        for row in per_round:
            block.append(f"  {row['labeled']:4d} ({row['labeled_in']:3d}) " + " ".join(f"{row[n]:22.4f}" for n in names))
        for n in names:
            means.setdefault(n, []).append(np.mean([row[n] for row in per_round]))
        print("\n".join(block), flush=True)
        lines += block
    summary = ["mean AUROC over rounds, mean (min..max) over seeds:"]
    for n, vals in means.items():
        summary.append(f"  {n:22s} {np.mean(vals):.4f} ({np.min(vals):.4f}..{np.max(vals):.4f})")
    summary.append(f"encoder training time: mean {np.mean(times):.1f} s (per seed: "
                   + ", ".join(f"{t:.1f}" for t in times) + ")")
    print("\n".join(summary), flush=True)
    lines += summary
    if not args.no_write:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
