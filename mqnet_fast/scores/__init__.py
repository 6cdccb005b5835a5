"""Per-example scores for open-set AL, one file per family: purity P(x) (how surely x is
in-distribution) and informativeness I(x) (how much labeling x would teach the target model);
higher = more worth labeling for both.

Each family file holds plain tensor functions (usable on your own arrays) and registers, by name,
an adapter that computes the score from a round's view (`mqnet_fast.strategies.RoundView`);
`purity(name, view)` and `informativeness(name, view)` look them up.
"""
from __future__ import annotations

from typing import Callable

import torch

PURITY: dict[str, Callable] = {}
INFORMATIVENESS: dict[str, Callable] = {}


def register_purity(name: str, inputs: tuple[str, ...] | None = None):
    """Register `fn(view)` as purity `name`. `inputs`: the arrays of mqnet_fast.select it is computed
    from (names of its keywords), or None where it needs more than arrays (the pool's images, the
    model)."""
    def add(fn):
        fn.array_inputs = inputs
        PURITY[name] = fn
        return fn
    return add


def register_informativeness(name: str, inputs: tuple[str, ...] | None = None):
    """Register `fn(view)` as informativeness `name`; `inputs` as for register_purity."""
    def add(fn):
        fn.array_inputs = inputs
        INFORMATIVENESS[name] = fn
        return fn
    return add


def array_inputs(kind: str, name: str) -> tuple[str, ...] | None:
    """What the registered score `name` (kind "purity" or "informativeness") is computed from in
    mqnet_fast.select, or None if arrays do not suffice."""
    return _lookup(PURITY if kind == "purity" else INFORMATIVENESS, kind, name).array_inputs


def _lookup(table: dict, kind: str, name: str) -> Callable:
    if name not in table:
        raise ValueError(f"{kind} must be one of {', '.join(table)}, got {name!r}")
    return table[name]


def purity(name: str, view) -> torch.Tensor:
    """P(x) of the view's candidates (U,), float32, by the registered score `name`."""
    return _lookup(PURITY, "purity", name)(view).float()


def informativeness(name: str, view) -> torch.Tensor:
    """I(x) of the view's candidates (U,), float32, by the registered score `name`."""
    return _lookup(INFORMATIVENESS, "informativeness", name)(view).float()


# Registration order is the order users see the names in.
from mqnet_fast.scores import uncertainty, knn, csi, react, ll  # noqa: E402,F401
from mqnet_fast.scores.knn import knn_purity  # noqa: E402
from mqnet_fast.scores.react import react_energy, react_threshold  # noqa: E402
from mqnet_fast.scores.uncertainty import entropy, least_confidence, negative_margin  # noqa: E402

__all__ = ["INFORMATIVENESS", "PURITY", "array_inputs", "entropy", "informativeness", "knn_purity", "least_confidence",
           "negative_margin", "purity", "react_energy", "react_threshold", "register_informativeness",
           "register_purity"]
