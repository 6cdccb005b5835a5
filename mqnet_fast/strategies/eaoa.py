"""EAOA (Zong et al., "Rethinking Epistemic and Aleatoric Uncertainty for Active Open-Set Annotation:
An Energy-Based Approach", CVPR 2025).

Two models: the target classifier f (K classes, the loop's model) and a detector g with K + 1 outputs
(mqnet_fast.training.detector: the target's architecture and recipe, fresh weights every round)
trained on the labeled examples, OOD ones as class K, with cross-entropy plus `eaoa_energy_weight`
(0.01) x an energy margin loss: with E(x) = -logsumexp(g_1..K(x)), mean over the batch's IN examples
of relu(E - m_in)^2 plus mean over its OOD examples of relu(m_out - E)^2, m_in = -25, m_out = -7.

Scores of every candidate:
- aleatoric uncertainty AU = log(1 - max_c p_c), from the target's logits
  (logsumexp of the other logits minus logsumexp of all);
- learning-based epistemic uncertainty EU1 = -logsumexp(g_1..K) + softplus(g_K+1): the known-class
  energy plus the unknown logit's;
- data-driven epistemic uncertainty EU2 from reverse nearest neighbours in the detector's
  penultimate features (cosine): each labeled example names its `eaoa_neighbours` (250) most similar
  candidates; with n_c(x) the number of labeled class-c examples that name x and n_ood(x) that of
  labeled OOD ones, EU2 = -logsumexp_c n_c(x) + softplus(n_ood(x)). The similarities are blocked over
  the labeled rows: no labeled x candidates matrix is held whole. `eaoa_counts` says what the counts
  are: "raw", as above, or "frequency", as the published code at its head: each group's count
  divided by that group's relative frequency among the labeled examples, N_g / mean_c N_c (N_g the
  labeled examples of group g, the mean over the K IN classes), i.e. n_g(x) mean_c N_c / N_g, so a
  group with many labeled examples (OOD ones, as they pile up) does not outweigh the others by its
  size alone. A group with no labeled example keeps its 0; with no labeled IN example the counts
  stay raw.
Each score is min-max scaled over the candidates and a two-component Gaussian mixture is fitted to it
(mqnet_fast.mixture); info = the posterior of AU's higher-mean component, clean = the product of the
posteriors of EU1's and EU2's lower-mean components.

Query: n = ceil(b / K). For each class c the target predicts, among the candidates predicted as c the
k n with the largest clean (ties to the lower row), of those the n with the largest info; all classes
together, shuffled with the round's generator, the first b. Should the classes hold fewer than b,
the rest are the largest clean among the others. k adapts to the precision of the last query (its
share of IN examples): above `eaoa_target_precision` (0.6) by more than 0.05, k + 1; below by more,
k - 1 (at least 1); k starts at `eaoa_k` (5).

From the published code (chenchenzong/EAOA, query_strategies.eaoa_sampling and main.py), as the
paper leaves them open: m_in, m_out, the energy weight, the 250 neighbours, the mixture settings,
the 0.05 tolerance. The code at its head counts the OOD reverse neighbours (earlier versions of
the file did not) and divides the counts by the groups' relative frequencies: eaoa_counts=
"frequency", the default (the method as its authors run it now). Differences: before its first
query (no OOD example labeled yet) the published detector trains on cross-entropy alone, here the
energy loss's IN term applies from the start; in that first round its EU2 leaves the OOD term out
and its mean class size runs over K + 1 groups, the OOD's 0 included, here the OOD column is 0
(softplus(0) shifts every EU2 alike, which the min-max scaling removes) and the mean runs over the
K IN classes; it fills a short query by no rule (torch.topk fails when a class holds fewer than
k n candidates), here by clean; its scores are computed on augmented images, here on the
unaugmented ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast import ops
from mqnet_fast.mixture import two_component_posteriors
from mqnet_fast.strategies.base import Selection, Strategy, fill_by_score, min_max, register

M_IN, M_OUT = -25.0, -7.0
TOLERANCE = 0.05
COUNTS = ("raw", "frequency")


@dataclass(frozen=True)
class EAOAOptions:
    eaoa_k: int = field(default=5, metadata={"help": "EAOA's initial candidate multiplier k (>= 1)"})
    eaoa_target_precision: float = field(default=0.6, metadata={"help": "EAOA's target share of IN in a query"})
    eaoa_energy_weight: float = field(default=0.01, metadata={"help": "EAOA's energy loss weight"})
    eaoa_neighbours: int = field(default=250, metadata={"help": "EAOA's reverse nearest neighbours per labeled example"})
    eaoa_counts: str = field(default="frequency", metadata={
        "help": "EAOA's reverse-neighbour counts: raw, or frequency (each group's divided by its relative "
                "frequency among the labeled examples, as the published code)"})

    def __post_init__(self):
        for name in ("eaoa_k", "eaoa_neighbours"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        p = self.eaoa_target_precision
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"eaoa_target_precision must be a number in [0, 1], got {p!r}")
        w = self.eaoa_energy_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise ValueError(f"eaoa_energy_weight must be a finite number >= 0, got {w!r}")
        if self.eaoa_counts not in COUNTS:
            raise ValueError(f"eaoa_counts must be one of {', '.join(COUNTS)}, got {self.eaoa_counts!r}")


def energy_loss(logits: torch.Tensor, targets: torch.Tensor, weight: float) -> torch.Tensor:
    """Cross-entropy over the K + 1 classes plus weight x the energy margin loss (class K = OOD);
    a group absent from the batch adds nothing."""
    k = logits.shape[1] - 1
    energy = -torch.logsumexp(logits[:, :k].float(), 1)
    ood = targets == k
    margin = logits.new_zeros((), dtype=torch.float32)
    if bool((~ood).any()):
        margin = margin + F.relu(energy[~ood] - M_IN).pow(2).mean()
    if bool(ood.any()):
        margin = margin + F.relu(M_OUT - energy[ood]).pow(2).mean()
    return F.cross_entropy(logits, targets) + weight * margin


def aleatoric(logits: torch.Tensor) -> torch.Tensor:
    """log(1 - max softmax) of each row: logsumexp of the other logits minus logsumexp of all."""
    logits = logits.double()
    top = logits.argmax(1, keepdim=True)
    others = logits.scatter(1, top, float("-inf"))
    return torch.logsumexp(others, 1) - torch.logsumexp(logits, 1)


def learned_epistemic(logits: torch.Tensor) -> torch.Tensor:
    """-logsumexp(g_1..K) + softplus(g_K+1) of each row of the detector's (n, K + 1) logits."""
    logits = logits.double()
    return -torch.logsumexp(logits[:, :-1], 1) + F.softplus(logits[:, -1])


def neighbour_counts(labeled: torch.Tensor, candidates: torch.Tensor, groups: torch.Tensor, num_groups: int,
                     neighbours: int) -> torch.Tensor:
    """(U, num_groups) counts: how many labeled rows of each group (groups (L,) in 0..num_groups-1)
    hold the candidate among their `neighbours` most similar candidates by cosine (ties to the lower
    candidate row)."""
    u = candidates.shape[0]
    counts = torch.zeros(u, num_groups, dtype=torch.float64, device=candidates.device)
    if u == 0 or labeled.shape[0] == 0:
        return counts
    _, top = ops.nearest_k(labeled.float(), candidates.float(), min(neighbours, u))
    flat = (top * num_groups + groups.to(candidates.device)[:, None]).flatten()
    counts.view(-1).index_add_(0, flat, torch.ones(flat.shape[0], dtype=torch.float64, device=flat.device))
    return counts


def frequency_weighted(counts: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(U, K + 1) counts (K IN classes, then OOD) divided column by column by the group's relative
    frequency among the labeled rows (groups (L,) in 0..K): n_g(x) mean_c N_c / N_g, the mean over
    the IN classes. A group with no labeled row keeps its column (all 0); with no labeled IN row,
    the counts are returned as they are."""
    sizes = torch.bincount(groups.cpu(), minlength=counts.shape[1]).to(counts.dtype)
    mean_in = sizes[:-1].mean()
    if float(mean_in) == 0:
        return counts
    weights = torch.where(sizes > 0, sizes / mean_in, torch.ones_like(sizes))
    return counts / weights.to(counts.device)


def data_epistemic(counts: torch.Tensor) -> torch.Tensor:
    """-logsumexp of the K IN-class counts + softplus of the OOD count (the last column)."""
    return -torch.logsumexp(counts[:, :-1], 1) + F.softplus(counts[:, -1])


def eaoa_query(predicted: np.ndarray, clean: np.ndarray, info: np.ndarray, num_classes: int, budget: int, k: int,
               generator: torch.Generator) -> np.ndarray:
    """The query's rows: per predicted class the top k n by clean, of those the top n by info
    (n = ceil(budget / num_classes)), shuffled, the first `budget`; short: filled by clean."""
    if budget == 0:
        return np.zeros(0, np.int64)
    n = math.ceil(budget / num_classes)
    chosen = []
    for c in range(num_classes):
        rows = np.flatnonzero(predicted == c)
        by_clean = rows[np.argsort(-clean[rows], kind="stable")][:k * n]
        chosen.append(by_clean[np.argsort(-info[by_clean], kind="stable")][:n])
    chosen = np.concatenate(chosen).astype(np.int64)
    chosen = chosen[torch.randperm(len(chosen), generator=generator).numpy()][:budget]
    return fill_by_score(chosen, clean, budget)


@register
class EAOA(Strategy):
    trains_extra_models = True  # its detector
    name = "eaoa"
    Options = EAOAOptions
    inputs = None  # trains a detector on the labeled images

    def __init__(self, options=None, seed: int = 0):
        super().__init__(options, seed)
        self.k = self.options.eaoa_k
        self.last_query: list[int] = []

    def _adapt(self, view) -> float:
        """k after the last query's precision (its share of IN examples, read from the labeled set)."""
        if not self.last_query:
            return float("nan")
        flags = dict(zip(view.labeled.cpu().tolist(), view.labeled_is_in.cpu().tolist()))
        missing = [i for i in self.last_query if i not in flags]
        if missing:
            raise ValueError(f"eaoa: {len(missing)} example(s) of the last query (first: {missing[0]}) are not in the "
                             "view's labeled set; label the query before the next select")
        precision = float(np.mean([flags[i] for i in self.last_query]))
        target = self.options.eaoa_target_precision
        if abs(precision - target) > TOLERANCE:
            self.k = self.k + 1 if precision > target else max(1, self.k - 1)
        self.last_query = []
        return precision

    def select(self, view, budget):
        from mqnet_fast.training.detector import train_detector
        from mqnet_fast.training.inference import infer

        view.require("train_config", "labeled", "labeled_labels", by="eaoa")
        precision = self._adapt(view)
        num_classes = view.probs.shape[1]
        seed = int(torch.randint(0, 2**62, (1,), generator=view.generator))
        weight = self.options.eaoa_energy_weight
        detector, loss = train_detector(view, view.train_config, seed,
                                        lambda logits, targets: energy_loss(logits, targets, weight), desc="eaoa detector")
        out = infer(detector, view.images, view.candidates)
        labeled_feats = infer(detector, view.images, view.labeled.cpu()).feats
        target_logits = view.logits if view.logits is not None else torch.log(view.probs.clamp_min(1e-30))
        au = aleatoric(target_logits)
        eu1 = learned_epistemic(out.logits)
        groups = view.labeled_labels.clone()
        groups[groups < 0] = num_classes
        counts = neighbour_counts(labeled_feats, out.feats, groups, num_classes + 1, self.options.eaoa_neighbours)
        if self.options.eaoa_counts == "frequency":
            counts = frequency_weighted(counts, groups)
        eu2 = data_epistemic(counts)
        scaled = [min_max(x.double()).cpu().numpy() for x in (au, eu1, eu2)]
        info = two_component_posteriors(scaled[0], seed)[1]
        clean = two_component_posteriors(scaled[1], seed + 1)[0] * two_component_posteriors(scaled[2], seed + 2)[0]
        predicted = view.probs.argmax(1).cpu().numpy()
        rows = eaoa_query(predicted, clean, info, num_classes, budget, self.k, view.generator)
        indices = view.candidates[torch.from_numpy(rows)]
        self.last_query = sorted(indices.tolist())
        columns = {"eaoa_au": au.float().cpu(), "eaoa_eu1": eu1.float().cpu(), "eaoa_eu2": eu2.float().cpu(),
                   "eaoa_clean": torch.from_numpy(clean).float(), "eaoa_info": torch.from_numpy(info).float()}
        return Selection(indices, None, {"eaoa_k": self.k, "eaoa_last_precision": precision,
                                         "eaoa_detector_loss": loss}, columns)

    def state_dict(self):
        return {"k": self.k, "last_query": list(self.last_query)}

    def load_state_dict(self, state):
        self.k = int(state["k"])
        self.last_query = [int(i) for i in state["last_query"]]
