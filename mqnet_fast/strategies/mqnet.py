"""MQ-Net (Park et al., "Meta-Query-Net: Resolving Purity-Informativeness Dilemma in Open-set Active
Learning", NeurIPS 2022).

z = <P(x), I(x)> for every candidate, standardized per round over the candidates: each column with
that round's mean and std (one rule, used at training and at selection time; the query set is a
subset of the candidates, so Phi trains on exactly the values it scored). `standardize="exp-zscore"`
applies exp to the z-scores as the published code does (its `standardize` in mqnet_util.py; it
also uses the biased std, a factor sqrt(n / (n - 1)) that is immaterial at pool sizes and is not
copied). Round 0 ranks by the sum of the two meta-inputs; later rounds by Phi(z) through the fused
non-negative MLP op. After each query Phi is trained with the ranking loss of Eq. 10 against the
masked cross-entropy of the target model (0 for OOD examples): mqnet_fast.training.meta. Phi's
weights stay >= 0 by projection after every SGD step (the training op), so none can drift.

The options, each with its source:
- `meta_init`: "fresh" creates a new Phi before every round's training, as the published code does
  (kaist-dmlab/MQNet, main_split.py calls init_mqnet every cycle); "warm" trains one Phi across the
  rounds, as the paper's Algorithm 1 writes it (w initialized once, line 1).
- `meta_optimizer`, Phi's recipe (always `meta_epochs` epochs of max(ceil(n / batch), `meta_min_steps`)
  steps of a random mini-batch of min(batch, n) distinct examples, lr x0.1 at half the epochs):
  "code" is the published code at HEAD: plain SGD at lr 0.001 (--lr-mqnet), batch 32, margin 1,
  weights and biases initialized U(0, 1) (QueryNet); "paper" is the same at the paper's lr 0.01
  (Appendix C.1); "momentum" is this library's earlier recipe: SGD lr 0.01 with momentum 0.9 and
  weight decay 5e-4, batch 64, margin 0.1, nn.Linear-scaled non-negative init. `meta_margin`
  overrides the recipe's margin.
- `meta_history`: "last" trains Phi on the last query only (the paper and its code); "all" on every
  query so far, each with the meta-inputs it was scored with and the losses of its round's model
  (the labeled set's IN/OOD answers, which the paper's rule leaves unused).
- `selection`: "top" takes the b highest scores (the paper and its code); "per-class" gives each
  class the target predicts a quota of b / K, filled by score (as CCAL and EAOA select per class),
  so that the IN examples queried are not all of one tight class.

A round whose training set holds no pair with distinct targets (an all-OOD query: every loss 0) has
no ranking signal. The published code then still takes SGD steps: its LossPredLoss counts a tie as
l_i < l_j, so every pair pushes the first half's score below the second's, an order drawn by the
loader. Here such a round leaves Phi untrained, and the next query ranks by purity alone (the
standardized P; its `meta_rule` is "purity"): the query that held nothing IN was ranked by a rule
that put OOD examples on top, and purity is the score meant to separate them. Without that rule a
fresh Phi would rank by P + I again and a warm Phi by the weights that chose the all-OOD query, and
both repeat it. Each round records the rule that chose its query (`meta_rule`: "sum", "phi",
"purity"), that rule's ranking accuracy on the query it chose (`query_rank_accuracy`), the trained
Phi's ranking accuracy on it whatever rule chose it (`phi_query_rank_accuracy`: how well the Phi of
the round before ranks the next query; nan before Phi has learned), and after training the fraction
of Phi's weights > 0 (`meta_weights_positive`).

Differences from the published code, where it differs from the paper's text or does something the
text leaves open:
- the meta-inputs of the query set are the candidates' standardized values (one rule for training
  and selection); the published code re-standardizes over the query set when training Phi, and in
  its LL mode feeds I unstandardized;
- an epoch's mini-batches are random subsets of min(batch, n) examples; the published code passes
  over the query in batches of 32 (the last one smaller) until an epoch has 100 steps;
- pairs with equal targets (two OOD examples) are left out of the ranking loss, where the published
  code orders them one way (above).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mqnet_fast.models import MetaModel
from mqnet_fast.scores import INFORMATIVENESS, PURITY, array_inputs, informativeness, purity
from mqnet_fast.strategies.base import Selection, Strategy, class_quota_query, register, top_selection
from mqnet_fast.training.meta import MetaTrainConfig, MetaTrainStats, ranking_accuracy, train_meta_model


STANDARDIZE = ("zscore", "exp-zscore")
META_INIT = ("fresh", "warm")
META_HISTORY = ("last", "all")
SELECTION = ("top", "per-class")


@dataclass(frozen=True)
class MetaRecipe:
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    margin: float
    init: str  # MetaModel's


META_OPTIMIZERS = {
    "code": MetaRecipe(lr=0.001, momentum=0.0, weight_decay=0.0, batch_size=32, margin=1.0, init="uniform"),
    "paper": MetaRecipe(lr=0.01, momentum=0.0, weight_decay=0.0, batch_size=32, margin=1.0, init="uniform"),
    "momentum": MetaRecipe(lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=64, margin=0.1, init="scaled"),
}


@dataclass(frozen=True)
class MQNetOptions:
    purity: str = field(default="csi", metadata={"help": "P(x): " + ", ".join(PURITY)})
    informativeness: str = field(default="ll", metadata={"help": "I(x): " + ", ".join(INFORMATIVENESS)})
    standardize: str = field(default="zscore", metadata={"help": "meta-input standardization: " + ", ".join(STANDARDIZE)})
    meta_init: str = field(default="fresh", metadata={"help": "Phi per round: fresh (published code) or warm "
                                                              "(paper's Algorithm 1)"})
    meta_optimizer: str = field(default="code", metadata={"help": "Phi's recipe: " + ", ".join(META_OPTIMIZERS)
                                                                  + " (code: published code; paper: its lr 0.01)"})
    meta_history: str = field(default="all", metadata={"help": "Phi trains on the last query (paper) or all "
                                                               "queries: " + ", ".join(META_HISTORY)})
    selection: str = field(default="per-class", metadata={"help": "top-b (paper) or per-class quotas: "
                                                                  + ", ".join(SELECTION)})
    meta_epochs: int = field(default=100, metadata={"help": "epochs of meta-model training per round"})
    meta_min_steps: int = field(default=100, metadata={"help": "minimum SGD steps per meta-model epoch"})
    meta_margin: float | None = field(default=None, metadata={"help": "margin of the ranking loss (default None: "
                                                                      "the meta_optimizer's)", "type": float})

    def __post_init__(self):
        for name, allowed in (("purity", PURITY), ("informativeness", INFORMATIVENESS), ("standardize", STANDARDIZE),
                              ("meta_init", META_INIT), ("meta_optimizer", tuple(META_OPTIMIZERS)),
                              ("meta_history", META_HISTORY), ("selection", SELECTION)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        margin = self.meta_margin
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0):
            raise ValueError(f"meta_margin must be a number >= 0, got {margin!r}")
        for name in ("meta_epochs", "meta_min_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def recipe(self) -> MetaRecipe:
        return META_OPTIMIZERS[self.meta_optimizer]


@register
class MQNetStrategy(Strategy):
    trains_extra_models = True  # a CSI encoder (purity csi)
    name = "mqnet"
    Options = MQNetOptions
    sharded = True  # P and I per rank; the standardization's statistics over every rank's candidates

    def __init__(self, options: MQNetOptions | None = None, seed: int = 0, purity_fn=None, informativeness_fn=None):
        """purity_fn(view) -> (U,) replaces the registered purity `options.purity` (e.g. a score in
        an embedding of your own); informativeness_fn likewise."""
        super().__init__(options, seed)
        self.purity_fn = purity_fn
        self.informativeness_fn = informativeness_fn
        recipe = self.options.recipe
        margin = recipe.margin if self.options.meta_margin is None else float(self.options.meta_margin)
        self.meta_config = MetaTrainConfig(epochs=self.options.meta_epochs, batch_size=recipe.batch_size,
                                           min_steps_per_epoch=self.options.meta_min_steps, lr=recipe.lr,
                                           momentum=recipe.momentum, weight_decay=recipe.weight_decay, margin=margin)
        self.model = MetaModel(seed=seed, init=recipe.init)
        self.trained = False        # Phi has learned from a query with ranking signal
        self.purity_next = False    # the last training set held no ranking signal: rank the next query by P
        self.history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (z, losses) of every query so far
        self.rule = None            # the rule that ranked the last selection

    @property
    def uses_loss_module(self) -> bool:
        """With informativeness "ll" the target model carries the loss-prediction module."""
        return self.options.informativeness == "ll"

    def missing_inputs(self, given):
        """On arrays, P and I are the `purity` and `informativeness` columns given, or else computed
        by the options' scores where arrays suffice (knn purity; conf, entropy, margin)."""
        missing = []
        for kind, name in (("purity", self.options.purity), ("informativeness", self.options.informativeness)):
            if kind in given:
                continue
            needs = array_inputs(kind, name)
            if needs is None:
                table = PURITY if kind == "purity" else INFORMATIVENESS
                usable = [n for n in table if array_inputs(kind, n) is not None]
                missing.append(f"{kind} ({kind} {name!r} is not computed from arrays: pass the column {kind}=, or "
                               f"the option {kind}= one of {', '.join(usable)})")
            else:
                missing += [f"{need} (for {kind} {name!r})" for need in needs if need not in given]
        if self.options.selection == "per-class" and "probs" not in given:
            missing.append("probs (for selection 'per-class': the classes the target predicts)")
        return missing

    def raw_scores(self, view) -> torch.Tensor:
        """<P, I> (U, 2) of the candidates, before standardization: each from purity_fn /
        informativeness_fn if set, else the view's precomputed column (extras["purity"],
        extras["informativeness"], as mqnet_fast.select passes them), else the options' score."""
        def score(kind, fn, name, registered):
            if fn is not None:
                return fn(view)
            return view.extras[kind] if kind in view.extras else registered(name, view)

        p = score("purity", self.purity_fn, self.options.purity, purity)
        i = score("informativeness", self.informativeness_fn, self.options.informativeness, informativeness)
        return torch.stack([p.float().cpu(), i.float().cpu()], 1)

    def standardized(self, raw: torch.Tensor, over: torch.Tensor | None = None) -> torch.Tensor:
        """`raw` standardized with the mean and std of the rows `over` (default: raw itself)."""
        over = raw if over is None else over
        mean, std = over.mean(0), over.std(0) if over.shape[0] > 1 else torch.ones(2)
        z = (raw - mean) / torch.where(std > 0, std, torch.ones_like(std))
        return torch.exp(z) if self.options.standardize == "exp-zscore" else z

    def meta_inputs(self, view) -> torch.Tensor:
        """The meta-inputs z (U, 2) of the candidates: standardized <P, I> (of this rank's candidates
        on a sharded view, with the statistics of all of them)."""
        return self._raw_and_standardized(view)[1]

    def _raw_and_standardized(self, view) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.raw_scores(view)
        return raw, self.standardized(raw, None if view.shard is None else view.shard.gather(raw))

    def ranking_rule(self) -> str:
        """What ranks the next query: "purity" after a round without ranking signal, else "phi" once
        Phi has learned, else "sum" (P + I)."""
        return "purity" if self.purity_next else "phi" if self.trained else "sum"

    def rule_scores(self, z: torch.Tensor, rule: str) -> torch.Tensor:
        if rule == "purity":
            return z[:, 0].clone()
        if rule == "sum":
            return z.sum(1)
        return self.model.score(z) if z.shape[0] else z.new_zeros(0)  # a torchrun rank may hold no candidate

    def select(self, view, budget):
        raw, z = self._raw_and_standardized(view)
        self.rule = self.ranking_rule()
        scores = self.rule_scores(z, self.rule)
        if self.options.selection == "top":
            selection = top_selection(view, scores, budget)
        else:
            selection = self._per_class(view, scores, budget)
        selection.columns = {"purity": raw[:, 0], "informativeness": raw[:, 1],
                             "purity_std": z[:, 0], "informativeness_std": z[:, 1], "meta_score": scores}
        selection.extra = {**selection.extra, "meta_rule": self.rule}
        return selection

    def _per_class(self, view, scores: torch.Tensor, budget: int) -> Selection:
        """Quotas per class the target predicts (class_quota_query), over every rank's candidates."""
        predicted = view.probs.argmax(1).cpu()
        candidates = view.candidates
        all_scores, all_predicted = scores, predicted
        if view.shard is not None:
            all_scores, all_predicted = view.shard.gather(scores), view.shard.gather(predicted)
            candidates = view.shard.candidates
        rows = class_quota_query(all_scores, all_predicted, view.probs.shape[1], budget)
        # no Selection.scores: under quotas a higher score is no promise of a pick (the rule's
        # scores are the column "meta_score")
        return Selection(candidates[torch.from_numpy(rows)], None)

    @staticmethod
    def selection_meta_inputs(selection) -> torch.Tensor:
        """The meta-inputs z (U, 2) this strategy's `select` scored, read from the Selection it returned."""
        return torch.stack([selection.columns["purity_std"], selection.columns["informativeness_std"]], 1)

    def observe(self, view, selection, positions, losses, seed):
        """Train Phi on the query (with meta_history "all", on every query so far): the meta-inputs
        `selection` scored them with (so Phi learns on exactly the values it ranked; a Selection
        without them, e.g. built by hand, has them recomputed from `view`) against the losses. With
        meta_init "fresh" a new Phi (seeded by `seed`) is trained. A training set without two
        examples of different losses leaves Phi as it was and sends the next query to the purity
        rule (the module docstring)."""
        if selection is not None and "purity_std" in selection.columns:
            z = self.selection_meta_inputs(selection)
        else:
            z = self.meta_inputs(view)
        if view is not None and view.shard is not None:
            z = view.shard.gather(z)  # positions are rows of every rank's candidates
        z_query, losses = z[positions.cpu()].float(), losses.detach().float().cpu()
        rule = self.rule or self.ranking_rule()
        self.rule = None  # used once: a second observe without a select ranks by what would select next
        record = {"query_rank_accuracy": ranking_accuracy(self.rule_scores(z_query, rule), losses),
                  "phi_query_rank_accuracy": (ranking_accuracy(self.rule_scores(z_query, "phi"), losses)
                                              if self.trained else float("nan"))}
        self.history.append((z_query, losses))
        if self.options.meta_history == "last":
            self.history = self.history[-1:]
        z_train = torch.cat([h[0] for h in self.history])
        targets = torch.cat([h[1] for h in self.history])
        if targets.numel() < 2 or bool((targets == targets[0]).all()):
            self.purity_next = True
            return {**record, "meta_loss": float("nan"), "meta_rank_accuracy": float("nan"), "meta_steps": 0,
                    "meta_weights_positive": self.model.positive_fraction() if self.trained else float("nan")}
        if self.options.meta_init == "fresh":
            self.model = MetaModel(seed=seed, init=self.options.recipe.init)
        stats: MetaTrainStats = train_meta_model(self.model, z_train, targets, self.meta_config, seed)
        self.trained, self.purity_next = True, False
        return {**record, "meta_loss": stats.loss, "meta_rank_accuracy": stats.rank_accuracy,
                "meta_steps": stats.steps, "meta_weights_positive": self.model.positive_fraction()}

    def state_dict(self):
        return {"model": self.model.state_dict(), "trained": self.trained, "purity_next": self.purity_next,
                "history": [(z.clone(), t.clone()) for z, t in self.history], "rule": self.rule}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.trained = bool(state["trained"])
        self.purity_next = bool(state.get("purity_next", False))
        self.history = [(z.float(), t.float()) for z, t in state.get("history", [])]
        self.rule = state.get("rule")
