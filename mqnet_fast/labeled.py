"""A pool of N examples and its labeled set: which rows are labeled and what labeling said of each
(IN or OOD), in one object that the engine, `mqnet_fast.select` / `MQNet` and `mqnet-fast select`
share (modeled on baal's ActiveLearningDataset: its labelled map, `label()` and `state_dict()`)::

    pool = LabeledSet(len(x), labeled=first_rows, is_in=oracle_in[first_rows])
    inputs = pool.inputs(feats=feats, logits=logits)     # the candidates' rows and the labeled rows
    picks = pool.rows(mqnet_fast.select("coreset", 100, **inputs).indices)  # rows of the pool
    pool.label(picks, is_in=oracle_in[picks])
"""
from __future__ import annotations

import numpy as np
import torch

from mqnet_fast import _checks as checks

PER_ROW = ("probs", "logits", "feats", "purity", "informativeness")  # inputs with one row per pool row


def _array(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class LabeledSet:
    """The labeled rows among `n` rows (sorted, each once) and, where known, whether each turned out
    IN (`is_in`, aligned with `labeled`). `pool` (sorted rows, default all n) are the rows that take
    part: the candidates are the pool's unlabeled rows, and only pool rows are labeled (the engine's
    n is the training split, its pool the open-set split's)."""

    def __init__(self, n: int, labeled=(), is_in=None, *, pool=None, name: str = "labeled"):
        self.n = checks.count("n", n, low=0)
        self.pool = np.arange(self.n) if pool is None else np.asarray(pool, dtype=np.int64)
        if pool is not None and (len(self.pool) and (self.pool.min() < 0 or self.pool.max() >= self.n
                                                     or (np.diff(self.pool) <= 0).any())):
            raise ValueError(f"pool must be sorted distinct rows of 0..{self.n - 1}")
        self._labeled = np.zeros(0, np.int64)
        self._is_in = None if is_in is None else np.zeros(0, bool)
        self.label(labeled, is_in=is_in, name=name)

    @property
    def labeled(self) -> np.ndarray:
        """(L,) int64 rows of the pool that are labeled, sorted."""
        return self._labeled

    @property
    def is_in(self) -> np.ndarray | None:
        """(L,) bool per labeled row: labeling found it IN (None where it was never given)."""
        return self._is_in

    @property
    def labeled_in(self) -> np.ndarray:
        """The labeled rows that turned out IN."""
        if self._is_in is None:
            raise ValueError("is_in was not given: which labeled rows are IN is unknown")
        return self._labeled[self._is_in]

    @property
    def unlabeled(self) -> np.ndarray:
        """(U,) int64 rows of the pool not labeled yet, sorted: the candidates."""
        return np.setdiff1d(self.pool, self._labeled)

    @property
    def labelled_map(self) -> np.ndarray:
        """(n,) bool: the row is labeled."""
        mask = np.zeros(self.n, bool)
        mask[self._labeled] = True
        return mask

    def __len__(self) -> int:
        """The number of labeled rows."""
        return len(self._labeled)

    def label(self, rows, is_in=None, *, name: str = "rows") -> None:
        """Add `rows` (row indices of the pool, none labeled already) to the labeled set, with what
        labeling said of each (`is_in`, one bool per row; required once the set keeps is_in, and
        refused once it does not). Errors name the rows `name`."""
        rows = checks.indices(name, rows, self.n, torch.device("cpu")).numpy()
        if len(np.unique(rows)) != len(rows):
            raise ValueError(f"{name} lists a row twice")
        again = np.intersect1d(rows, self._labeled)
        if len(again):
            raise ValueError(f"{name}: rows {again[:5].tolist()} are labeled already")
        outside = np.setdiff1d(rows, self.pool)
        if len(outside):
            raise ValueError(f"{name}: rows {outside[:5].tolist()} are not in the pool")
        if is_in is not None:
            flags = _array(is_in)
            flags = checks.flags("is_in", torch.as_tensor(flags if flags.size else flags.astype(bool)))
            flags = flags.numpy().reshape(-1)
            if flags.shape != rows.shape:
                raise ValueError(f"is_in must have one flag per labeled row ({len(rows)}), got {flags.shape[0]}")
        if not len(rows):
            return
        if is_in is not None and self._is_in is None and len(self._labeled) == 0:
            self._is_in = np.zeros(0, bool)
        if (is_in is None) != (self._is_in is None):
            raise ValueError(f"is_in must be given for every labeled row, or for none (the set "
                             f"{'keeps' if self._is_in is not None else 'does not keep'} it)")
        merged = np.concatenate([self._labeled, rows])
        order = np.argsort(merged, kind="stable")
        if is_in is not None:
            self._is_in = np.concatenate([self._is_in, flags])[order]
        self._labeled = merged[order].astype(np.int64)

    def check_budget(self, budget, *, name: str = "budget") -> int:
        """`budget` as an int in [1, the unlabeled rows]; ValueError naming `name` otherwise."""
        left = len(self.pool) - len(self)
        return checks.count(name, budget, low=1, high=left, what=f"the {left} unlabeled rows")

    def inputs(self, **arrays) -> dict:
        """The keyword inputs of `mqnet_fast.select` / `MQNet.select` from whole-pool arrays (one row
        per pool row: probs, logits, feats, purity, informativeness): the candidates' rows of each,
        and the labeled rows' features, softmax and IN flags (labeled_feats, labeled_probs,
        labeled_is_in). Picks are rows of the candidates: `rows()` maps them to pool rows."""
        unknown = sorted(set(arrays) - set(PER_ROW))
        if unknown:
            raise TypeError(f"unknown input(s) {', '.join(unknown)}; whole-pool inputs are {', '.join(PER_ROW)}")
        out, candidates, labeled = {}, self.unlabeled, self._labeled
        for name, value in arrays.items():
            if value is None:
                continue
            if getattr(value, "shape", (None,))[:1] != (self.n,):
                raise ValueError(f"{name} must have one row per row ({self.n}), got shape "
                                 f"{tuple(getattr(value, 'shape', ()))}")
            out[name] = value[candidates]  # NumPy rows index tensors and arrays alike
        if arrays.get("feats") is not None:
            out["labeled_feats"] = arrays["feats"][labeled]
            if self._is_in is not None:
                out["labeled_is_in"] = self._is_in
        if arrays.get("probs") is not None:  # the labeled rows' softmax (SIMILAR's gradient embedding)
            out["labeled_probs"] = arrays["probs"][labeled]
        elif arrays.get("logits") is not None:
            out["labeled_probs"] = torch.softmax(torch.as_tensor(arrays["logits"][labeled]).float(), 1)
        return out

    def rows(self, picks) -> np.ndarray:
        """Rows of the pool of `picks`, positions among the candidates (what select returns)."""
        return self.unlabeled[_array(picks).astype(np.int64)]

    def state_dict(self) -> dict:
        """Plain types (torch.save / torch.load(weights_only=True))."""
        return {"n": self.n, "pool": self.pool.tolist(), "labeled": self._labeled.tolist(),
                "is_in": None if self._is_in is None else self._is_in.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "LabeledSet":
        """The set `state_dict()` saved."""
        return cls(state["n"], state["labeled"], state["is_in"], pool=state["pool"])

    def __repr__(self) -> str:
        ins = "" if self._is_in is None else f", {int(self._is_in.sum())} IN"
        return f"LabeledSet(n={self.n}, labeled={len(self)}{ins})"
