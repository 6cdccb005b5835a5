"""What every strategy shares: the round's view, the selection it returns, the base class and the
registry of strategies by name."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from mqnet_fast import ops


@dataclass
class Shard:
    """A view's place in a pool split across the ranks of a torchrun run: the view's per-candidate
    rows are this rank's contiguous share of `candidates` (every rank's, in rank order), starting at
    row offsets[rank]. A strategy that supports shards (`Strategy.sharded`) returns the picks of the
    whole pool, the same on every rank, and its scores and columns for this rank's rows."""
    world: Any                 # mqnet_fast.world.World
    offsets: list[int]         # (W + 1,) where each rank's rows start, the candidate count last
    candidates: torch.Tensor   # (U,) int64 global train indices of every rank's candidates, CPU

    @property
    def start(self) -> int:
        return self.offsets[self.world.rank]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of the per-candidate `t`, concatenated: (U, ...) on every rank."""
        return self.world.gather_rows(t)

    def rows(self, t: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        """The rows of the per-candidate `t` at global candidate `positions`, in that order, on every
        rank (each sent by the rank holding it)."""
        positions = np.asarray(positions, dtype=np.int64)
        owner = np.searchsorted(np.asarray(self.offsets[1:]), positions, side="right")
        mine = torch.from_numpy(positions[owner == self.world.rank] - self.start).to(t.device)
        return self.world.gather_in_order(t[mine], owner)


@dataclass
class RoundView:
    """What a strategy may use in one round. Rows of the per-candidate tensors are the candidates, in
    the order of `candidates`; rows of the labeled tensors follow `labeled`.

    Only `candidates`, `probs`, `feats` and `generator` are needed by every strategy; the rest are
    filled in by the loop and may be left out when calling a strategy on your own arrays (a strategy
    that needs one says so)."""
    candidates: torch.Tensor                  # (U,) int64 global train indices of the unlabeled pool, CPU
    probs: torch.Tensor                       # (U, K) softmax of the target model over the IN classes
    feats: torch.Tensor                       # (U, d) penultimate features of the target model
    generator: torch.Generator                # the round's only source of randomness
    labeled_feats: torch.Tensor | None = None  # (L, d) penultimate features of the labeled examples
    labeled_is_in: torch.Tensor | None = None  # (L,) bool: the labeled example turned out IN
    round: int = 0
    logits: torch.Tensor | None = None        # (U, K)
    labeled: torch.Tensor | None = None       # (L,) int64 global indices of the labeled examples
    labeled_labels: torch.Tensor | None = None  # (L,) int64 IN class 0..K-1, -1 for OOD
    labeled_probs: torch.Tensor | None = None  # (L, K) softmax of the target model on the labeled examples
    model: torch.nn.Module | None = None      # the trained target model (eval mode)
    images: Any = None                        # the train split's DeviceImages (indexed by global index)
    cache: Any = None                         # the run's mqnet_fast.cache.RunCache (encoders trained once per pool)
    train_config: Any = None                  # the target model's TrainConfig (a detector trains on its recipe)
    extras: dict = field(default_factory=dict)  # more (U,) per-candidate model outputs, e.g. "predicted_loss"
    shard: Shard | None = None                # set under torchrun: the candidates are this rank's share

    @property
    def group(self):
        """The process group of a sharded view (what the ops' `group` takes), None in one process."""
        return None if self.shard is None else self.shard.world.process_group

    @property
    def pool(self) -> tuple[torch.Tensor, int]:
        """(every rank's candidates, where this view's rows start among them): the rows an op's
        global indices refer to ((candidates, 0) in one process)."""
        return (self.candidates, 0) if self.shard is None else (self.shard.candidates, self.shard.start)

    def on_group_device(self, t: torch.Tensor) -> torch.Tensor:
        """`t` on the device the collectives of a sharded view run on (unchanged in one process)."""
        return t if self.shard is None else t.to(self.shard.world.device)

    def __post_init__(self):
        if self.labeled_feats is None:
            self.labeled_feats = self.feats.new_zeros(0, self.feats.shape[1])
        if self.labeled_is_in is None:
            self.labeled_is_in = torch.zeros(self.labeled_feats.shape[0], dtype=torch.bool)

    @property
    def labeled_in_feats(self) -> torch.Tensor:
        """(L_in, d) penultimate features of the labeled IN examples."""
        return self.labeled_feats[self.labeled_is_in.to(self.labeled_feats.device)]

    def stage_features(self) -> list[torch.Tensor]:
        """The target model's four stage outputs of the candidates, globally average-pooled ((U, c_s)
        each), computed on first use and kept in `extras["stage_features"]`."""
        if "stage_features" not in self.extras:
            self.require("model", "images", by="stage_features")
            from mqnet_fast.training.inference import infer_stages

            self.extras["stage_features"] = infer_stages(self.model, self.images, self.candidates)
        return self.extras["stage_features"]

    def require(self, *names: str, by: str) -> None:
        """Raise ValueError naming the fields (or extras) in `names` that this view lacks and the
        strategy `by` that needs them."""
        missing = [n for n in names if getattr(self, n) is None and n not in self.extras]
        if missing:
            raise ValueError(f"{by} needs {', '.join(missing)} in the RoundView, which were not given")


@dataclass
class Selection:
    """A strategy's query: the picked rows in pick order, optionally one score per candidate, the
    per-candidate columns it computed (P, I, ...) and record fields (`extra`)."""
    indices: torch.Tensor                     # (budget,) global indices, in pick/rank order
    scores: torch.Tensor | None = None        # (U,) one score per candidate (higher = preferred)
    extra: dict = field(default_factory=dict)  # per-strategy numbers for the round's record
    columns: dict = field(default_factory=dict)  # more (U,) per-candidate values to save (e.g. P, I)


@dataclass(frozen=True)
class NoOptions:
    pass


class Strategy:
    """A query strategy: `select(view, budget) -> Selection`. Options are a frozen dataclass
    (`Options`) whose fields are the strategy's settings; they are part of a run's identity."""
    name: ClassVar[str] = "strategy"
    Options: ClassVar[type] = NoOptions
    # What mqnet_fast.select needs to run it on arrays (its keyword names): "probs" (or logits),
    # "feats", "labeled_feats", "labeled_is_in", "purity", "informativeness"; None: not from arrays.
    inputs: ClassVar[tuple[str, ...] | None] = ()
    # Whether select (and observe) work on a sharded view (RoundView.shard, under torchrun).
    sharded: ClassVar[bool] = False
    # Whether it needs the pool's images (contrastive encoders), so not fixed embeddings.
    needs_images: ClassVar[bool] = False
    # Whether its runs train more than the target model (an encoder, a detector): `--jobs` starts
    # those runs first, as they take longest.
    trains_extra_models: ClassVar[bool] = False

    def __init__(self, options=None, seed: int = 0):
        self.options = options if options is not None else self.Options()

    @property
    def uses_loss_module(self) -> bool:
        """Whether the target model must be trained with the loss-prediction module (learning loss)."""
        return False

    def missing_inputs(self, given: set[str]) -> list[str]:
        """The inputs of mqnet_fast.select this strategy needs and `given` lacks (each named, with
        why where that helps)."""
        if self.inputs is None:
            return [f"(strategy {self.name!r} does not run on arrays alone)"]
        return [name for name in self.inputs if name not in given]

    def select(self, view: RoundView, budget: int) -> Selection:
        """The `budget` candidates of `view` to label next."""
        raise NotImplementedError

    def observe(self, view: RoundView, selection: Selection, positions: torch.Tensor, losses: torch.Tensor,
                seed: int) -> dict:
        """Called after the query is labeled, with the round's `view` and the `selection` this
        strategy returned for it: `positions` (b,) rows of the candidates that were queried, `losses`
        (b,) their masked cross-entropy (0 for OOD). Returns numbers to record."""
        return {}

    def state_dict(self) -> dict:
        """What the strategy keeps across rounds (tensors, numbers, dicts), for the checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict()` returned."""
        pass


class TopScore(Strategy):
    """The top `budget` candidates by `score(view)` (ties to the lower row, through ops.top_b; on a
    sharded view across the ranks: ops.top_b with the view's group)."""
    sharded = True

    def score(self, view: RoundView) -> torch.Tensor:
        raise NotImplementedError

    def select(self, view, budget):
        return top_selection(view, self.score(view), budget)


def top_selection(view: RoundView, scores: torch.Tensor, budget: int) -> Selection:
    scores = scores.float().cpu()
    positions = ops.top_b(view.on_group_device(scores), budget, group=view.group).cpu()
    return Selection(view.pool[0][positions], scores)


def min_max(x: torch.Tensor) -> torch.Tensor:
    """`x` scaled to [0, 1] over its entries (all zeros where they are equal)."""
    span = x.max() - x.min() if x.numel() else x.new_zeros(())
    return (x - x.min()) / span if float(span) > 0 else torch.zeros_like(x)


def class_quota_query(scores: torch.Tensor, classes: torch.Tensor, num_classes: int, budget: int) -> np.ndarray:
    """Rows of a query that covers the classes: class c (the class each row is assigned, e.g. the
    target's prediction) takes its quota of its rows by score, highest first (ties to the lower row):
    b // K each, and one more for the b mod K classes whose best row scores highest (ties to the
    lower class); a class with too few rows leaves the rest of its quota to the highest scores among
    the rows not taken."""
    scores, classes = scores.double().cpu().numpy(), classes.cpu().numpy()
    best = [scores[classes == c].max() if (classes == c).any() else -np.inf for c in range(num_classes)]
    extra = set(np.argsort(-np.asarray(best), kind="stable")[:budget % num_classes].tolist()) if num_classes else set()
    chosen = []
    for c in range(num_classes):
        quota = budget // num_classes + (1 if c in extra else 0)
        rows = np.flatnonzero(classes == c)
        chosen.append(rows[np.argsort(-scores[rows], kind="stable")][:quota])
    return fill_by_score(np.concatenate(chosen) if chosen else np.zeros(0, np.int64), scores, budget)


def fill_by_score(chosen: np.ndarray, scores: np.ndarray, budget: int) -> np.ndarray:
    """The rows `chosen`, topped up to `budget` with the highest `scores` among the other rows
    (ties to the lower row): how a strategy whose rule picks too few completes its query."""
    chosen = np.asarray(chosen, np.int64)
    if len(chosen) >= budget:
        return chosen
    rest = np.setdiff1d(np.arange(len(scores)), chosen)
    return np.concatenate([chosen, rest[np.argsort(-np.asarray(scores)[rest], kind="stable")][:budget - len(chosen)]])


# --------------------------------------------------------------------------------------------------
# The registry

STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make the strategy available by its `name` (CLI, config check, docs)."""
    if cls.name in STRATEGIES:
        raise ValueError(f"a strategy named {cls.name!r} is registered already")
    STRATEGIES[cls.name] = cls
    return cls


def strategy_class(name: str) -> type[Strategy]:
    """The registered Strategy class of `name` (ValueError listing the names if unknown)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def option_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(strategy_class(name).Options)]


def make_options(name: str, **options):
    """The strategy's Options from keyword values (the rest at their defaults); an option the
    strategy does not have is refused by name."""
    cls = strategy_class(name)
    unknown = sorted(set(options) - set(option_names(name)))
    if unknown:
        have = ", ".join(option_names(name)) or "none"
        raise ValueError(f"strategy {name!r} has no option {', '.join(map(repr, unknown))} (its options: {have})")
    return cls.Options(**options)


def make_strategy(name: str, *, seed: int = 0, **options) -> Strategy:
    """A fresh strategy by registered name, with options given by keyword."""
    return strategy_class(name)(make_options(name, **options), seed=seed)
