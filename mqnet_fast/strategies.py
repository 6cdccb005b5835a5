"""Query strategies: one interface, `select(state, budget) -> Selection`.

A strategy sees the unlabeled candidates of the round (`PoolState`: their global indices, the
target model's softmax and penultimate features, the labeled examples' features) and returns the
global indices of `budget` distinct candidates plus one score per candidate for reports. Randomness
comes only from `state.generator`, which the loop seeds from (seed, round).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mqnet_fast import ops
from mqnet_fast.mqnet import MetaModel, MetaTrainConfig, MetaTrainStats, train_meta_model
from mqnet_fast.scores import informativeness, purity

STRATEGIES = ("random", "conf", "entropy", "margin", "coreset", "badge", "mqnet")


@dataclass
class PoolState:
    """What a strategy may use in one round. Rows of probs/feats are the candidates, in the order of
    `candidates` (global train indices of the unlabeled pool examples, ascending)."""
    round: int
    candidates: torch.Tensor        # (U,) int64, CPU
    probs: torch.Tensor             # (U, K) softmax of the target model over the IN classes
    feats: torch.Tensor             # (U, d) penultimate features
    labeled_feats: torch.Tensor     # (L, d) features of every labeled example (IN and OOD)
    labeled_in_feats: torch.Tensor  # (L_in, d) features of the labeled IN examples
    generator: torch.Generator


@dataclass
class Selection:
    indices: torch.Tensor                     # (budget,) global indices, in pick/rank order
    scores: torch.Tensor | None = None        # (U,) one score per candidate (higher = preferred)
    extra: dict = field(default_factory=dict)  # per-strategy numbers for the round's record
    columns: dict = field(default_factory=dict)  # more (U,) per-candidate values to save (e.g. P, I)


def penultimate_embedding(state: PoolState) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding MQ-Net's purity is measured in by default: the target model's penultimate
    features of the candidates and of the labeled IN examples."""
    return state.feats, state.labeled_in_feats


class Strategy:
    name = "strategy"

    def select(self, state: PoolState, budget: int) -> Selection:
        raise NotImplementedError

    def observe(self, state: PoolState, positions: torch.Tensor, losses: torch.Tensor, seed: int) -> dict:
        """Called after the query is labeled: `positions` (b,) rows of the candidates that were
        queried, `losses` (b,) their masked cross-entropy (0 for OOD). Returns numbers to record."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _top(state: PoolState, scores: torch.Tensor, budget: int) -> Selection:
    positions = ops.top_b(scores.float().cpu(), budget)
    return Selection(state.candidates[positions], scores.float().cpu())


class Random(Strategy):
    name = "random"

    def select(self, state, budget):
        positions = torch.randperm(len(state.candidates), generator=state.generator)[:budget]
        return Selection(state.candidates[positions])


class Uncertainty(Strategy):
    """CONF (least max-softmax), ENTROPY or MARGIN: the top `budget` by that score."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind not in ("conf", "entropy", "margin"):
            raise ValueError(f"uncertainty kind must be conf, entropy or margin, got {kind!r}")
        self.name = kind

    def select(self, state, budget):
        return _top(state, informativeness(state.probs, self.kind), budget)


class Coreset(Strategy):
    """CORESET: k-center greedy over penultimate features, every labeled example an initial center."""
    name = "coreset"

    def select(self, state, budget):
        x = torch.cat([state.labeled_feats, state.feats]).float()
        labeled = torch.arange(state.labeled_feats.shape[0], device=x.device)
        result = ops.kcenter_greedy(x, labeled, budget)
        positions = result.indices.cpu() - state.labeled_feats.shape[0]
        scores = result.min_dist[state.labeled_feats.shape[0]:].float().cpu()
        return Selection(state.candidates[positions], scores,
                         {"coreset_final_radius": float(result.radii[-1]) if budget else float("nan")})


class Badge(Strategy):
    """BADGE: k-means++ seeding over the implicit gradient embeddings (softmax, features)."""
    name = "badge"

    def select(self, state, budget):
        positions = ops.badge_kmeanspp(state.probs.float(), state.feats.float(), budget,
                                       generator=state.generator).cpu()
        return Selection(state.candidates[positions])


class MQNet(Strategy):
    """MQ-Net: z = <P(x), I(x)>, standardized per round over the candidates (see mqnet_fast.mqnet);
    round 0 ranks by P + I, later rounds by Phi(z) through the fused op. After each query Phi is
    trained on the query set with the ranking loss against the masked cross-entropy."""
    name = "mqnet"

    def __init__(self, informativeness_kind: str = "conf", meta_config: MetaTrainConfig | None = None,
                 seed: int = 0, purity_embedding=penultimate_embedding):
        """purity_embedding(state) -> (candidate embeddings (U, e), labeled IN embeddings (L_in, e)):
        where P(x) is measured (pluggable: e.g. a contrastive encoder's features)."""
        self.informativeness_kind = informativeness_kind
        self.purity_embedding = purity_embedding
        self.meta_config = meta_config or MetaTrainConfig()
        self.model = MetaModel(seed=seed)
        self.trained = False
        self._z = None

    def meta_inputs(self, state: PoolState) -> torch.Tensor:
        """Standardized z (U, 2) = <P, I> of the candidates."""
        z = torch.stack([purity(*self.purity_embedding(state)),
                         informativeness(state.probs, self.informativeness_kind).float()], 1).cpu()
        mean, std = z.mean(0), z.std(0) if z.shape[0] > 1 else torch.ones(2)
        return (z - mean) / torch.where(std > 0, std, torch.ones_like(std))

    def select(self, state, budget):
        self._z = self.meta_inputs(state)
        scores = self.model.score(self._z) if self.trained else self._z.sum(1)
        selection = _top(state, scores, budget)
        selection.columns = {"purity_std": self._z[:, 0], "informativeness_std": self._z[:, 1]}
        return selection

    def observe(self, state, positions, losses, seed):
        z = self._z if self._z is not None else self.meta_inputs(state)
        stats: MetaTrainStats = train_meta_model(self.model, z[positions], losses, self.meta_config, seed)
        self.trained = True
        return {"meta_loss": stats.loss, "meta_rank_accuracy": stats.rank_accuracy, "meta_steps": stats.steps}

    def state_dict(self):
        return {"model": self.model.state_dict(), "trained": self.trained}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.trained = bool(state["trained"])


def make_strategy(name: str, *, informativeness_kind: str = "conf", meta_config: MetaTrainConfig | None = None,
                  seed: int = 0) -> Strategy:
    """A fresh strategy by name (one of STRATEGIES)."""
    if name == "random":
        return Random()
    if name in ("conf", "entropy", "margin"):
        return Uncertainty(name)
    if name == "coreset":
        return Coreset()
    if name == "badge":
        return Badge()
    if name == "mqnet":
        return MQNet(informativeness_kind, meta_config, seed)
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
