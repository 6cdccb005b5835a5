"""The open-set split of the MQ-Net paper (Park et al., NeurIPS 2022): which classes are IN, the
pool of unlabeled examples at noise ratio tau, and the initial labeled set. Protocol, not data: it
reads only the labels (mqnet_fast.data loads them)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class OpenSetSplit:
    """Which classes are IN, the pool (global train indices: all IN examples plus the OOD ones), and
    the initial labeled set (one budget drawn from the pool, so it carries OOD at about rate tau)."""
    in_classes: list[int]
    pool: np.ndarray            # (P,) int64 global train indices, sorted
    is_in: np.ndarray           # (N_train,) bool: the example's class is IN
    initial_labeled: np.ndarray  # (b,) int64 global train indices
    num_in_pool: int
    num_ood_pool: int
    notes: list[str] = field(default_factory=list)


def num_ood_for(num_in: int, tau: float) -> int:
    """round(|IN| * tau / (1 - tau)): the OOD count that gives the pool noise ratio tau."""
    return int(round(num_in * tau / (1.0 - tau)))


def make_open_set(labels: np.ndarray, num_classes: int, num_in_classes: int, tau: float, budget: int,
                  seed: int, in_classes: list[int] | None = None) -> OpenSetSplit:
    """The paper's split-dataset setup. IN classes are drawn with `seed` (or given as `in_classes`:
    the cross-dataset setup, where they are the IN dataset's); the pool holds all IN examples plus
    round(|IN| tau / (1 - tau)) OOD examples drawn at random. Where the OOD classes hold too few
    examples for that (tau = 0.6 with a 4:6 split needs every OOD example), IN examples are
    subsampled instead so the pool's noise ratio is still tau (recorded in `notes`)."""
    if not 0 < num_in_classes < num_classes:
        raise ValueError(f"num_in_classes must be in 1..{num_classes - 1}, got {num_in_classes}")
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"noise ratio tau must be in [0, 1), got {tau}")
    rng = np.random.RandomState(seed)
    if in_classes is None:
        in_classes = sorted(rng.permutation(num_classes)[:num_in_classes].tolist())
    else:
        in_classes = sorted(int(c) for c in in_classes)
        if len(in_classes) != num_in_classes or len(set(in_classes)) != len(in_classes) or \
                not all(0 <= c < num_classes for c in in_classes):
            raise ValueError(f"in_classes must be {num_in_classes} distinct classes of 0..{num_classes - 1}, "
                             f"got {in_classes}")
    is_in = np.isin(labels, in_classes)
    in_idx, ood_idx = np.flatnonzero(is_in), np.flatnonzero(~is_in)
    notes = []
    num_ood = num_ood_for(len(in_idx), tau)
    if num_ood > len(ood_idx):
        keep = int(math.floor(len(ood_idx) * (1.0 - tau) / tau))
        while num_ood_for(keep, tau) > len(ood_idx):
            keep -= 1
        notes.append(f"OOD classes hold {len(ood_idx)} examples, fewer than the {num_ood} that tau={tau} needs "
                     f"with all {len(in_idx)} IN examples: the pool keeps {keep} IN examples instead")
        in_idx = np.sort(rng.permutation(in_idx)[:keep])
        num_ood = num_ood_for(keep, tau)
    ood_pick = np.sort(rng.permutation(ood_idx)[:num_ood])
    pool = np.sort(np.concatenate([in_idx, ood_pick])).astype(np.int64)
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    if budget > len(pool):
        raise ValueError(f"budget ({budget}) exceeds the pool ({len(pool)} examples)")
    initial = np.sort(rng.choice(pool, size=budget, replace=False)).astype(np.int64)
    return OpenSetSplit(in_classes, pool, is_in, initial, len(in_idx), num_ood, notes)
