"""SIMILAR (Kothawade et al., "SIMILAR: Submodular Information Measures Based Active Learning In
Realistic Scenarios", NeurIPS 2021), its out-of-distribution setting: the query greedily maximizes a
submodular conditional mutual information I_f(A; Q | P) between the picked set A of unlabeled
candidates and the query set Q = the labeled IN examples, conditioned on the private set P = the
labeled OOD examples, so picks resemble what turned out IN and not what turned out OOD.

- `smi_function="flcmi"` (facility location), over the ground set V = the candidates:
      I(A; Q | P) = sum_{i in V} max(min(max_{a in A} s_ia, eta max_{q in Q} s_iq) - nu max_{p in P} s_ip, 0).
  Greedy with lazy evaluation (Minoux): every candidate's gain is an upper bound on its later gains
  (submodularity), so each step re-evaluates only candidates whose stale bound could still win, in
  batches through the saturated facility-location op (ops.fl_gains: similarities blocked on the
  device, never a V x V matrix). It picks what the plain greedy picks: the largest gain, ties to the
  lowest row (a stale bound equal to the best gain at a lower row is re-evaluated; a bound of 0 is a
  gain of 0). That holds exactly where a candidate's gain comes out bit-identical however many
  candidates are evaluated with it: the C++ kernel (float64 sums in ground-row order); the
  reference and the Triton kernel may round a gain differently in another batch, so their picks can
  differ from the plain greedy's at a near-tie.
- `smi_function="logdetcmi"` (log determinant, f(X) = log det(S_X + lambda I)):
      I(A; Q | P) = f(A u P) + f(Q u P) - f(A u Q u P) - f(P),
  on the kernel with the candidate-Q entries scaled by eta and the candidate-P entries by nu. The gain
  of j is log r1_j - log r2_j, the Schur complements of j given A u P and given A u Q u P; both are
  kept for every candidate by incremental Cholesky rows (as in fast greedy MAP inference for DPPs), so
  each step costs O(V (|Q| + |P| + |A|)) and every gain is exact at every step (nothing lazy to do).

Similarity: cosine. `smi_embedding="gradients"` (the default of the published code, decile-team/
distil's SCMI with gradType "bias_linear") uses the last layer's gradient embedding
g = (onehot(y) - p) (x) [h, 1], whose cosine is cos(a_i, a_j) cos(h~_i, h~_j) with a = onehot(y) - p
and h~ = [h, 1]: two factors, never the K (d + 1) embedding. y is the predicted class for candidates,
the true class for labeled IN examples when the view has it (as distil embeds its query set with
labels), and for labeled OOD examples as `smi_private_label` says. `"features"` uses the
penultimate features h. With one IN class (K = 1) p is 1 and the gradient embedding vanishes
(every similarity 0, the lowest rows are picked): use "features".

`smi_private_label` says how the gradient embedding labels the private set. "predicted": with the
predicted IN class, as the candidates. "extra": with a (K + 1)-th class, as the published MQ-Net
code does (kaist-dmlab/MQNet, methods/similar.py: its SIMILAR target model has K + 1 outputs and
its labeled OOD examples carry the (K + 1)-th class's label, a class it never trains on). Our target model has
K outputs, so the (K + 1)-th class gets probability 0: a = onehot(K + 1) - [p, 0] = [-p, 1] for
the private rows and a = [onehot(y) - p, 0] for the candidates and the query set, the cosine factor
cos(a_i, a_j) taken in K + 1 dimensions. (The appended 0 changes no candidate-candidate or
candidate-query cosine; it is what lets [-p, 1] be compared with them.) With "features" it has no
effect.

The MQ-Net paper's SIMILAR baseline, as its published code runs it (arguments.py and
methods/similar.py): smi_function="logdetcmi", smi_embedding="gradients", smi_private_label="extra",
eta = nu = lambda = 1; those are the defaults here, so that SIMILAR is the baseline MQ-Net was
compared with (flcmi, the cheaper measure in memory, and "predicted" remain options; not measured
against each other yet).

FLCMI's maxima are taken over the set and 0: a similarity below 0 counts as 0 (facility location's
non-negative similarities; submodlib's greedy starts its running maxima at 0), and an empty set gives
0. So no labeled IN example makes every FLCMI gain 0, and the greedy then takes the lowest rows.
LogDetCMI's lambda (`smi_lambda`, default 1 as distil's lambdaVal) is added to every diagonal entry; with eta, nu <= 1 the kernel stays positive definite
and each Schur complement >= lambda; with larger eta or nu it may not, and a complement is clamped
at 1e-12 of lambda.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mqnet_fast import _memory, ops
from mqnet_fast.strategies.base import Selection, Strategy, register

FUNCTIONS = ("flcmi", "logdetcmi")
EMBEDDINGS = ("gradients", "features")
PRIVATE_LABELS = ("predicted", "extra")
LAZY_BATCH = 64  # candidates re-evaluated per op call when their stale bounds could still win
SIM_CHUNK = 4096  # rows per block of the (rows x |Q| or |P|) similarities


@dataclass(frozen=True)
class SimilarOptions:
    smi_function: str = field(default="logdetcmi", metadata={"help": "SIMILAR's measure: " + ", ".join(FUNCTIONS)})
    smi_embedding: str = field(default="gradients", metadata={"help": "SIMILAR's representation: " + ", ".join(EMBEDDINGS)})
    smi_eta: float = field(default=1.0, metadata={"help": "SIMILAR's query-relevance weight eta"})
    smi_nu: float = field(default=1.0, metadata={"help": "SIMILAR's privacy hardness nu"})
    smi_lambda: float = field(default=1.0, metadata={"help": "LogDetCMI's diagonal addition lambda (> 0)"})
    smi_private_label: str = field(default="extra", metadata={
        "help": "the class the gradient embedding gives labeled OOD examples: predicted (their predicted IN "
                "class) or extra (a K+1-th class of probability 0, as the MQ-Net code)"})

    def __post_init__(self):
        if self.smi_function not in FUNCTIONS:
            raise ValueError(f"smi_function must be one of {', '.join(FUNCTIONS)}, got {self.smi_function!r}")
        if self.smi_embedding not in EMBEDDINGS:
            raise ValueError(f"smi_embedding must be one of {', '.join(EMBEDDINGS)}, got {self.smi_embedding!r}")
        if self.smi_private_label not in PRIVATE_LABELS:
            raise ValueError(f"smi_private_label must be one of {', '.join(PRIVATE_LABELS)}, "
                             f"got {self.smi_private_label!r}")
        for name, low_open in (("smi_eta", False), ("smi_nu", False), ("smi_lambda", True)):
            value = getattr(self, name)
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (value > 0 if low_open else value >= 0)
            if not ok or value != value or value == float("inf"):
                raise ValueError(f"{name} must be a finite number {'> 0' if low_open else '>= 0'}, got {value!r}")


class Factors:
    """Rows as one or two unit-norm factors; s_ij = prod_f <u_f,i, u_f,j> (a cosine similarity)."""

    def __init__(self, parts: list[torch.Tensor]):
        self.parts = [F.normalize(p, dim=1) for p in parts]

    def __len__(self) -> int:
        return self.parts[0].shape[0]

    @classmethod
    def _of(cls, parts: list[torch.Tensor]) -> "Factors":
        out = cls.__new__(cls)
        out.parts = parts
        return out

    def rows(self, index) -> "Factors":
        return Factors._of([p[index] for p in self.parts])

    def to(self, dtype: torch.dtype) -> "Factors":
        return Factors._of([p.to(dtype) for p in self.parts])

    def sim(self, other: "Factors") -> torch.Tensor:
        """(len(self), len(other)) similarities."""
        out = self.parts[0] @ other.parts[0].T
        for a, b in zip(self.parts[1:], other.parts[1:]):
            out = out * (a @ b.T)
        return out

    def self_sim(self) -> torch.Tensor:
        """(len,) s_ii: 1, or 0 for a zero row."""
        out = (self.parts[0] * self.parts[0]).sum(1)
        for p in self.parts[1:]:
            out = out * (p * p).sum(1)
        return out

    def max_sim(self, keys: "Factors") -> torch.Tensor:
        """(len,) max_k s_ik over `keys` (0 for no keys), in blocks of rows."""
        if len(keys) == 0:
            return self.parts[0].new_zeros(len(self))
        if len(self.parts) == 1:
            return ops.nearest(self.parts[0], keys.parts[0])[0].to(self.parts[0].dtype)
        return torch.cat([self.rows(slice(s, s + SIM_CHUNK)).sim(keys).amax(1)
                          for s in range(0, len(self), SIM_CHUNK)]) if len(self) else self.parts[0].new_zeros(0)


def embed(probs: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor | None, embedding: str,
          dtype: torch.dtype, extra_class: bool = False) -> Factors:
    """Factors of the rows' embedding: features h, or the bias+linear gradient embedding
    (onehot(y) - p) (x) [h, 1] as its two factors (y = `labels`, or the argmax of p where None or -1).
    With `extra_class`, over K + 1 classes, the last of probability 0 (p becomes [p, 0]); a label K
    is that class."""
    feats = feats.to(dtype)
    if embedding == "features":
        return Factors([feats])
    probs = probs.to(feats.device, dtype)
    if extra_class:
        probs = torch.cat([probs, probs.new_zeros(probs.shape[0], 1)], 1)
    predicted = probs.argmax(1)
    y = predicted if labels is None else torch.where(labels.to(predicted.device) >= 0, labels.to(predicted.device), predicted)
    a = F.one_hot(y, probs.shape[1]).to(dtype) - probs
    return Factors([a, torch.cat([feats, feats.new_ones(feats.shape[0], 1)], 1)])


def flcmi_greedy(ground: Factors, queries: Factors, privates: Factors, budget: int, eta: float, nu: float,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lazy greedy maximization of FLCMI over the ground rows. Returns (picks (budget,) int64 in pick
    order, their gains at pick time, the number of gains evaluated)."""
    n = len(ground)
    if budget > n:
        raise ValueError(f"budget ({budget}) exceeds the {n} ground rows")
    cap = eta * ground.max_sim(queries).clamp_min(0)
    floor = nu * ground.max_sim(privates).clamp_min(0)
    hi = torch.maximum(cap, floor)  # rows whose cap is below their floor never gain (lo = hi)
    lo = torch.clamp(torch.zeros_like(cap), min=floor, max=hi)

    def gains(rows: torch.Tensor) -> torch.Tensor:
        sub = ground.rows(rows)
        two = dict(ground2=ground.parts[1], candidates2=sub.parts[1]) if len(ground.parts) > 1 else {}
        return ops.fl_gains(ground.parts[0], sub.parts[0], lo, hi, backend=backend, **two).to(cap.dtype)

    device = cap.device
    index = torch.arange(n, device=device)
    bounds = gains(index) if n else cap.new_zeros(0)
    evaluated = n
    fresh = torch.ones(n, dtype=torch.bool, device=device)
    available = torch.ones(n, dtype=torch.bool, device=device)
    picks, picked_gains = [], []
    neg = torch.tensor(float("-inf"), dtype=bounds.dtype, device=device)
    for _ in range(budget):
        while True:
            known = available & (fresh | (bounds == 0))  # a bound of 0 is a gain of 0
            value = torch.where(known, bounds, neg)
            best = int(torch.argmax(value))  # first maximum: the lowest row
            best_value = value[best]
            stale = available & ~known
            blocking = stale & ((bounds > best_value) | ((bounds == best_value) & (index < best)))
            if not bool(blocking.any()):
                break
            rows = index[blocking]
            order = torch.argsort(bounds[rows], descending=True, stable=True)[:LAZY_BATCH]
            rows = rows[order]
            bounds[rows] = gains(rows)
            fresh[rows] = True
            evaluated += len(rows)
        picks.append(best)
        picked_gains.append(float(best_value))
        available[best] = False
        column = ground.sim(ground.rows(slice(best, best + 1)))[:, 0]
        lo = torch.maximum(lo, torch.minimum(column, hi))
        fresh[:] = False
    return torch.tensor(picks, dtype=torch.long), torch.tensor(picked_gains, dtype=torch.float64), evaluated


def logdetcmi_greedy(ground: Factors, queries: Factors, privates: Factors, budget: int, eta: float, nu: float,
                     lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy maximization of LogDetCMI over the ground rows, in float64. Returns (picks (budget,)
    int64 in pick order, their gains at pick time)."""
    n, labeled = len(ground), len(queries) + len(privates)
    if budget > n:
        raise ValueError(f"budget ({budget}) exceeds the {n} ground rows")
    # the labeled rows' kernel and its Cholesky factor, their cross similarities with the ground rows
    # (with the triangular solve's output), and the greedy's two rows per pick, all in float64
    _memory.check(f"similar's LogDetCMI over {labeled} labeled and {n} candidate rows",
                  8 * (3 * labeled * labeled + 3 * labeled * n + 2 * budget * n), ground.parts[0].device)
    ground, queries, privates = (f.to(torch.float64) for f in (ground, queries, privates))
    diag = ground.self_sim() + lam
    floor = lam * 1e-12

    def conditioned(sets: list[tuple[Factors, float]]):
        """(G, r) for the base set made of `sets` ((rows, scale of their similarities with the ground
        rows), empty ones left out): G = L^-1 C (|B|, n) for the Cholesky factor L of its kernel and
        the scaled cross similarities C, r = diag - colsum(G^2), the Schur complements given it."""
        base = [b for b, _ in sets if len(b)]
        scales = [s for b, s in sets if len(b)]
        if not base:
            return ground.parts[0].new_zeros(0, n), diag.clone()
        blocks = [[bi.sim(bj) + (lam * torch.eye(len(bi), dtype=torch.float64, device=diag.device) if i == j else 0)
                   for j, bj in enumerate(base)] for i, bi in enumerate(base)]
        kernel = torch.cat([torch.cat(row, 1) for row in blocks], 0)
        cross = torch.cat([s * b.sim(ground) for b, s in zip(base, scales)], 0)
        chol = torch.linalg.cholesky(kernel)
        g = torch.linalg.solve_triangular(chol, cross, upper=False)
        return g, diag - (g * g).sum(0)

    g1, r1 = conditioned([(privates, nu)])
    g2, r2 = conditioned([(queries, eta), (privates, nu)])
    # the incremental Cholesky rows of both terms, one per pick
    rows = torch.zeros(2, budget, n, dtype=torch.float64, device=diag.device)
    available = torch.ones(n, dtype=torch.bool, device=diag.device)
    picks, picked_gains = [], []
    for t in range(budget):
        gain = torch.log(r1.clamp_min(floor)) - torch.log(r2.clamp_min(floor))
        gain = torch.where(available, gain, torch.tensor(float("-inf"), dtype=gain.dtype, device=gain.device))
        k = int(torch.argmax(gain))
        picks.append(k)
        picked_gains.append(float(gain[k]))
        available[k] = False
        column = ground.sim(ground.rows(slice(k, k + 1)))[:, 0]
        column[k] = diag[k]
        for term, (g, r) in enumerate(((g1, r1), (g2, r2))):
            e = rows[term, :t]
            proj = column - g.T @ g[:, k] - e.T @ e[:, k]
            new = proj / r[k].clamp_min(floor).sqrt()
            rows[term, t] = new
            r -= new * new
    return torch.tensor(picks, dtype=torch.long), torch.tensor(picked_gains, dtype=torch.float64)


@register
class Similar(Strategy):
    name = "similar"
    Options = SimilarOptions
    inputs = ("probs", "feats", "labeled_feats", "labeled_is_in", "labeled_probs")

    def missing_inputs(self, given):
        needs = ["feats", "labeled_feats", "labeled_is_in"]
        if self.options.smi_embedding == "gradients":
            needs += ["probs", "labeled_probs"]
        return [name for name in needs if name not in given]

    def select(self, view, budget):
        o = self.options
        device = view.feats.device
        dtype = torch.float64 if view.feats.dtype == torch.float64 else torch.float32
        gradients = o.smi_embedding == "gradients"
        if gradients and view.labeled_probs is None and view.labeled_feats.shape[0]:
            raise ValueError("similar with smi_embedding 'gradients' needs labeled_probs in the RoundView "
                             "(the softmax of the labeled examples)")
        extra = o.smi_private_label == "extra"
        ground = embed(view.probs, view.feats, None, o.smi_embedding, dtype, extra)
        is_in = view.labeled_is_in.to(device)
        labeled_feats = view.labeled_feats.to(device)
        labeled_probs = (view.labeled_probs.to(device) if view.labeled_probs is not None
                         else labeled_feats.new_zeros(labeled_feats.shape[0], max(view.probs.shape[1], 1)))
        labels = view.labeled_labels.to(device) if view.labeled_labels is not None else None
        queries = embed(labeled_probs[is_in], labeled_feats[is_in], None if labels is None else labels[is_in],
                        o.smi_embedding, dtype, extra)
        num_private = int((~is_in).sum())
        private_labels = torch.full((num_private,), labeled_probs.shape[1], device=device) if extra else None
        privates = embed(labeled_probs[~is_in], labeled_feats[~is_in], private_labels, o.smi_embedding, dtype, extra)
        if o.smi_function == "flcmi":
            positions, picked_gains, evaluated = flcmi_greedy(ground, queries, privates, budget, o.smi_eta, o.smi_nu)
            record = {"similar_gains_evaluated": evaluated}
        else:
            positions, picked_gains = logdetcmi_greedy(ground, queries, privates, budget, o.smi_eta, o.smi_nu,
                                                       o.smi_lambda)
            record = {}
        if budget:
            record.update(similar_first_gain=float(picked_gains[0]), similar_last_gain=float(picked_gains[-1]))
        return Selection(view.candidates[positions.cpu()], None, record)
