"""MQ-Net (Park et al., "Meta-Query-Net: Resolving Purity-Informativeness Dilemma in Open-set Active
Learning", NeurIPS 2022).

z = <P(x), I(x)> for every candidate, standardized per round over the candidates: each column with
that round's mean and std (one rule, used at training and at selection time; the query set is a
subset of the candidates, so Phi trains on exactly the values it scored). `standardize="exp-zscore"`
applies exp to the z-scores as the published code does (its `standardize` in mqnet_util.py; it
also uses the biased std, a factor sqrt(n / (n - 1)) that is immaterial at pool sizes and is not
copied). Round 0 ranks by the sum of the two meta-inputs; later rounds by Phi(z) through the fused
non-negative MLP op. After each query Phi is trained on the query set with the ranking loss of
Eq. 10 against the masked cross-entropy of the target model (0 for OOD examples):
mqnet_fast.training.meta.

Differences from the published code (kaist-dmlab/MQNet), where it differs from the paper's text or
does something the text leaves open:
- the meta-inputs of the query set are the candidates' standardized values (one rule for training
  and selection); the published code re-standardizes over the query set when training Phi, and in
  its LL mode feeds I unstandardized;
- Phi trains with SGD momentum 0.9, wd 5e-4, batch 64, margin `meta_margin` (0.1), 100 epochs of
  at least 100 steps; the published code: plain SGD lr 0.01, batch 32, margin 1, 1,000 epochs of at
  least 150 steps, weights initialized U(0, 1);
- pairs with equal targets (two OOD examples) are left out of the ranking loss, where the published
  code orders them one way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mqnet_fast.models import MetaModel
from mqnet_fast.scores import INFORMATIVENESS, PURITY, array_inputs, informativeness, purity
from mqnet_fast.strategies.base import Strategy, register, top_selection
from mqnet_fast.training.meta import MetaTrainConfig, MetaTrainStats, train_meta_model


STANDARDIZE = ("zscore", "exp-zscore")


@dataclass(frozen=True)
class MQNetOptions:
    purity: str = field(default="csi", metadata={"help": "P(x): " + ", ".join(PURITY)})
    informativeness: str = field(default="ll", metadata={"help": "I(x): " + ", ".join(INFORMATIVENESS)})
    standardize: str = field(default="zscore", metadata={"help": "meta-input standardization: " + ", ".join(STANDARDIZE)})
    meta_epochs: int = field(default=100, metadata={"help": "epochs of meta-model training per round"})
    meta_min_steps: int = field(default=100, metadata={"help": "minimum SGD steps per meta-model epoch"})
    meta_margin: float = field(default=0.1, metadata={"help": "margin of the ranking loss (published code: 1)"})

    def __post_init__(self):
        if self.purity not in PURITY:
            raise ValueError(f"purity must be one of {', '.join(PURITY)}, got {self.purity!r}")
        if self.informativeness not in INFORMATIVENESS:
            raise ValueError(f"informativeness must be one of {', '.join(INFORMATIVENESS)}, "
                             f"got {self.informativeness!r}")
        if isinstance(self.meta_margin, bool) or not isinstance(self.meta_margin, (int, float)) or not self.meta_margin >= 0:
            raise ValueError(f"meta_margin must be a number >= 0, got {self.meta_margin!r}")
        if self.standardize not in STANDARDIZE:
            raise ValueError(f"standardize must be one of {', '.join(STANDARDIZE)}, got {self.standardize!r}")
        for name in ("meta_epochs", "meta_min_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@register
class MQNet(Strategy):
    name = "mqnet"
    Options = MQNetOptions
    sharded = True  # P and I per rank; the standardization's statistics over every rank's candidates

    def __init__(self, options: MQNetOptions | None = None, seed: int = 0, purity_fn=None, informativeness_fn=None):
        """purity_fn(view) -> (U,) replaces the registered purity `options.purity` (e.g. a score in
        an embedding of your own); informativeness_fn likewise."""
        super().__init__(options, seed)
        self.purity_fn = purity_fn
        self.informativeness_fn = informativeness_fn
        self.meta_config = MetaTrainConfig(epochs=self.options.meta_epochs, min_steps_per_epoch=self.options.meta_min_steps,
                                           margin=self.options.meta_margin)
        self.model = MetaModel(seed=seed)
        self.trained = False

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

    def select(self, view, budget):
        raw, z = self._raw_and_standardized(view)
        if self.trained:  # a torchrun rank may hold no candidate: nothing for Phi to score
            scores = self.model.score(z) if z.shape[0] else z.new_zeros(0)
        else:
            scores = z.sum(1)
        selection = top_selection(view, scores, budget)
        selection.columns = {"purity": raw[:, 0], "informativeness": raw[:, 1],
                             "purity_std": z[:, 0], "informativeness_std": z[:, 1]}
        return selection

    @staticmethod
    def selection_meta_inputs(selection) -> torch.Tensor:
        """The meta-inputs z (U, 2) this strategy's `select` scored, read from the Selection it returned."""
        return torch.stack([selection.columns["purity_std"], selection.columns["informativeness_std"]], 1)

    def observe(self, view, selection, positions, losses, seed):
        """Train Phi on the query: the meta-inputs `selection` scored them with (so Phi learns on
        exactly the values it ranked; a Selection without them, e.g. built by hand, has them
        recomputed from `view`) against the losses. Phi counts as trained only once a query carried
        ranking signal, i.e. two examples with different losses: an all-OOD query (all losses 0) or a
        one-example query leaves it as it was, and the next round still ranks by P + I if Phi never
        got any."""
        if selection is not None and "purity_std" in selection.columns:
            z = self.selection_meta_inputs(selection)
        else:
            z = self.meta_inputs(view)
        if view is not None and view.shard is not None:
            z = view.shard.gather(z)  # positions are rows of every rank's candidates
        losses = losses.detach().float().cpu()
        if losses.numel() < 2 or bool((losses == losses[0]).all()):
            return {"meta_loss": float("nan"), "meta_rank_accuracy": float("nan"), "meta_steps": 0}
        stats: MetaTrainStats = train_meta_model(self.model, z[positions.cpu()], losses, self.meta_config, seed)
        self.trained = True
        return {"meta_loss": stats.loss, "meta_rank_accuracy": stats.rank_accuracy, "meta_steps": stats.steps}

    def state_dict(self):
        return {"model": self.model.state_dict(), "trained": self.trained}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.trained = bool(state["trained"])
