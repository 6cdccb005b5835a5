"""Selection without the loop: `select(strategy, budget, **arrays)` runs any strategy that needs only
arrays on your own model's outputs, and `MQNet` keeps MQ-Net's meta-model across your rounds.

Inputs are torch tensors (any device; the strategies compute on it) or NumPy arrays, all by keyword:

    probs or logits   (N, K)  the target model's softmax or logits over the IN classes
    feats             (N, d)  its penultimate features (CORESET, BADGE, knn purity)
    labeled_feats     (L, d)  the same features of the labeled examples (CORESET's centers)
    labeled_is_in     (L,)    bool: which labeled examples turned out IN (knn purity)
    labeled_probs     (L, K)  the softmax of the labeled examples (SIMILAR's gradient embedding)
    purity            (N,)    precomputed P(x) (MQ-Net), higher = more surely IN
    informativeness   (N,)    precomputed I(x) (MQ-Net), or LL's predicted losses
    generator                 a torch.Generator (RANDOM, BADGE); default: seeded with 0

The candidates are the N rows given; the result's indices are rows of them, in pick order.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast import _checks as checks
from mqnet_fast.strategies import RoundView, Selection, Strategy, make_strategy

INPUTS = ("probs", "logits", "feats", "labeled_feats", "labeled_is_in", "labeled_probs", "purity", "informativeness")
PER_CANDIDATE = ("probs", "logits", "feats", "purity", "informativeness")  # one row per candidate
_MATRICES = ("probs", "logits", "feats", "labeled_feats", "labeled_probs")


def _tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{name} must be a numeric array, got dtype object")
        copy = not value.flags.writeable or any(stride < 0 for stride in value.strides)
        value = torch.from_numpy(np.array(value, copy=True) if copy else value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}")
    return value


def _column(name: str, value) -> torch.Tensor:
    """A 1-D tensor from a tensor, an array or a list (what observe takes per labeled row)."""
    if isinstance(value, (list, tuple)):
        value = torch.as_tensor(value)
    t = _tensor(name, value)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one value per index), got shape {tuple(t.shape)}")
    return t


def _arrays(inputs: dict) -> dict[str, torch.Tensor]:
    """The given inputs as checked tensors: shapes, dtypes, finite values, rows that agree."""
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:
        raise TypeError(f"unknown input(s) {', '.join(map(repr, unknown))}; the inputs are {', '.join(INPUTS)}")
    given = {k: _tensor(k, v).detach() for k, v in inputs.items() if v is not None}
    if "probs" in given and "logits" in given:
        raise ValueError("give probs or logits, not both")
    for name, t in given.items():
        if name == "labeled_is_in":
            continue
        if name in _MATRICES:
            checks.matrix(name, t, allow_empty=name.startswith("labeled_"), products=int(name.endswith("feats")))
            if name.endswith("probs"):
                checks.probabilities(name, t)
        elif t.dim() != 1:
            raise ValueError(f"{name} must be 1-D (one value per candidate), got shape {tuple(t.shape)}")
        elif not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        else:
            checks.magnitude(name, t, terms=t.numel())  # finite, and small enough to standardize (mean, std)
    # one device for all: the first per-candidate input's (the strategies compute there)
    device = next((given[k].device for k in PER_CANDIDATE if k in given), None)
    if device is not None:
        given = {k: t.to(device) for k, t in given.items()}
    rows = {name: t.shape[0] for name, t in given.items() if name in PER_CANDIDATE}
    if len(set(rows.values())) > 1:
        raise ValueError("the per-candidate inputs disagree on the number of candidates: "
                         + ", ".join(f"{k} has {v} rows" for k, v in rows.items()))
    if "labeled_feats" in given and "feats" in given and given["labeled_feats"].shape[1] != given["feats"].shape[1]:
        raise ValueError(f"labeled_feats has {given['labeled_feats'].shape[1]} columns, feats "
                         f"{given['feats'].shape[1]}: they must be the same features")
    if "labeled_probs" in given:
        lp = given["labeled_probs"]
        if "labeled_feats" not in given or lp.shape[0] != given["labeled_feats"].shape[0]:
            raise ValueError(f"labeled_probs has {lp.shape[0]} rows: it needs labeled_feats with one row per labeled "
                             "example, the same rows")
        if "probs" in given or "logits" in given:
            k = (given.get("probs") if "probs" in given else given["logits"]).shape[1]
            if lp.shape[1] != k:
                raise ValueError(f"labeled_probs has {lp.shape[1]} columns, the candidates' probs {k}: the same classes")
    if "labeled_is_in" in given:
        flags = given["labeled_is_in"]
        if flags.dim() != 1:
            raise ValueError(f"labeled_is_in must be 1-D, got shape {tuple(flags.shape)}")
        given["labeled_is_in"] = checks.flags("labeled_is_in", flags)
        if "labeled_feats" not in given:
            raise ValueError("labeled_is_in is given without labeled_feats: it flags their rows")
        if given["labeled_is_in"].shape[0] != given["labeled_feats"].shape[0]:
            raise ValueError(f"labeled_is_in has {given['labeled_is_in'].shape[0]} entries, labeled_feats "
                             f"{given['labeled_feats'].shape[0]} rows: one flag per labeled row")
    return given


def _view(given: dict[str, torch.Tensor], generator: torch.Generator | None) -> RoundView:
    """A RoundView of the candidates from the given arrays (absent ones as empty placeholders, which
    the strategy's missing_inputs check has ruled out reading)."""
    per_candidate = [given[k] for k in PER_CANDIDATE if k in given]
    if not per_candidate:
        raise ValueError("no per-candidate input given: pass probs, logits, feats, purity or informativeness")
    n = per_candidate[0].shape[0]
    device = per_candidate[0].device
    logits = given.get("logits")
    probs = torch.softmax(logits.float(), 1) if logits is not None else given.get("probs")
    feats = given.get("feats")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    extras = {k: given[k].float() for k in ("purity", "informativeness") if k in given}
    if "informativeness" in given:
        extras["predicted_loss"] = extras["informativeness"]  # what LL ranks by
    return RoundView(torch.arange(n), probs if probs is not None else torch.empty(n, 0, device=device),
                     feats if feats is not None else torch.empty(n, 0, device=device),
                     generator if generator is not None else torch.Generator().manual_seed(0),
                     labeled_feats=given.get("labeled_feats"), labeled_is_in=given.get("labeled_is_in"),
                     labeled_probs=given.get("labeled_probs"),
                     logits=logits, extras=extras)


def _given_names(given: dict) -> set[str]:
    names = set(given)
    if "logits" in names:
        names.add("probs")
    return names


def _strategy(strategy, options: dict | None) -> Strategy:
    if isinstance(strategy, Strategy):
        if options:
            raise ValueError("options go to make_strategy; a Strategy instance comes with its own")
        return strategy
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a registered name or a Strategy, got {type(strategy).__name__}")
    return make_strategy(strategy, **(options or {}))


def select(strategy: str | Strategy, budget: int, *, probs=None, logits=None, feats=None, labeled_feats=None,
           labeled_is_in=None, labeled_probs=None, purity=None, informativeness=None,
           generator: torch.Generator | None = None, options: dict | None = None) -> Selection:
    """The `budget` rows of the N candidates that `strategy` (a registered name, e.g. "coreset", with
    its `options`, or a Strategy) picks; `Selection.indices` (budget,) int64 rows in pick order,
    `Selection.scores` (N,) one score per candidate where the strategy has one (higher =
    preferred), None otherwise (RANDOM, BADGE). Inputs: see the module docstring; a strategy
    refuses to run without what it needs, naming it.

    Example:
        >>> import numpy as np
        >>> select("conf", 1, probs=np.array([[0.9, 0.1], [0.5, 0.5]])).indices
        tensor([1])
    """
    chosen = _strategy(strategy, options)
    view, budget = _prepare(chosen, budget, generator, dict(
        probs=probs, logits=logits, feats=feats, labeled_feats=labeled_feats, labeled_is_in=labeled_is_in,
        labeled_probs=labeled_probs, purity=purity, informativeness=informativeness))
    return chosen.select(view, budget)


def _prepare(chosen: Strategy, budget, generator, inputs: dict) -> tuple[RoundView, int]:
    """The checked view of the inputs for `chosen`, and the checked budget."""
    given = _arrays(inputs)
    missing = chosen.missing_inputs(_given_names(given))
    if missing:
        raise ValueError(f"strategy {chosen.name!r} needs " + ", ".join(missing))
    view = _view(given, generator)
    budget = checks.count("budget", budget, high=len(view.candidates),
                          what=f"the {len(view.candidates)} candidates given")
    return view, budget


# What MQ-Net did before each of these options existed: a state saved then ran with these values.
OPTIONS_BEFORE = {"meta_init": "warm", "meta_optimizer": "momentum", "meta_history": "last", "selection": "top"}


class MQNet:
    """MQ-Net across rounds of your own loop: `select` ranks the candidates by the meta-model Phi
    (P + I before Phi has learned anything; P alone after a query that held no ranking signal),
    `observe` trains Phi on what labeling the selected rows taught you, `state_dict` /
    `load_state_dict` keep it between processes.

    P and I are the `purity` / `informativeness` columns given to `select`, or else computed by the
    options' scores from the arrays (options as for make_strategy("mqnet", ...): e.g.
    purity="knn" from feats, labeled_feats and labeled_is_in; informativeness="conf" from probs).

    Example (one round):
        >>> mq = MQNet(purity="knn", informativeness="conf")
        >>> sel = mq.select(10, logits=logits, feats=feats, labeled_feats=lf, labeled_is_in=lf_in)
        >>> mq.observe(sel.indices, is_in=oracle_in, labels=oracle_labels)  # doctest: +SKIP
    """

    def __init__(self, *, seed: int = 0, **options):
        self.seed = checks.count("seed", seed)
        self.strategy = make_strategy("mqnet", seed=seed, **options)
        self.rounds_observed = 0
        self._last = None

    @property
    def trained(self) -> bool:
        """Whether Phi has learned from a query with ranking signal (two different losses)."""
        return self.strategy.trained

    def select(self, budget: int, **inputs) -> Selection:
        """`budget` candidates by Phi(z), the top ones or per predicted class (option `selection`;
        inputs as for mqnet_fast.select). Remembers the candidates' meta-inputs and softmax for the
        next `observe`."""
        generator = inputs.pop("generator", None)
        view, budget = _prepare(self.strategy, budget, generator, inputs)
        selection = self.strategy.select(view, budget)
        has_probs = view.probs.shape[1] > 0  # an empty placeholder when neither probs nor logits came
        self._last = {"selection": selection, "probs": view.probs if has_probs else None}
        return selection

    def observe(self, indices, *, is_in=None, labels=None, losses=None) -> dict:
        """Train Phi on labeled rows of the last `select`'s candidates: `indices` (b,) rows (usually
        its `.indices`, or the subset you labeled), and either `losses` (b,) their masked losses
        (the target model's cross-entropy for IN rows, 0 for OOD), or `is_in` (b,) bool and `labels`
        (b,) IN class per row (any value for OOD rows), from which the losses are computed as the
        cross-entropy of the probs/logits given to `select`. Returns the meta-training record:
        query_rank_accuracy (how the rule that chose the query ranks it), phi_query_rank_accuracy
        (how the Phi trained before ranks it, whatever rule chose it), meta_loss,
        meta_rank_accuracy (on Phi's training set), meta_steps (0 when it held no ranking signal:
        the next select then ranks by purity alone) and meta_weights_positive."""
        if self._last is None:
            raise RuntimeError("observe() needs a select() first: it trains on rows of the last selection's pool")
        selection = self._last["selection"]
        n = selection.columns["purity_std"].shape[0]
        rows = checks.indices("indices", _tensor("indices", indices) if isinstance(indices, np.ndarray) else indices,
                              n, torch.device("cpu"))
        if len(torch.unique(rows)) != len(rows):
            raise ValueError("indices lists a row twice")
        if losses is not None:
            if is_in is not None or labels is not None:
                raise ValueError("give losses, or is_in and labels, not both")
            losses = _column("losses", losses).detach().float().cpu()
            if losses.shape != rows.shape:
                raise ValueError(f"losses must have shape {tuple(rows.shape)} (one per index), got {tuple(losses.shape)}")
            checks.finite("losses", losses)
            if bool((losses < 0).any()):
                raise ValueError(f"losses must be >= 0 (cross-entropies; 0 for OOD rows), got {float(losses.min()):.3g}")
        else:
            losses = self._losses(rows, is_in, labels)
        record = self.strategy.observe(None, selection, rows, losses,
                                       seed=self.seed * 1_000_003 + self.rounds_observed)
        self.rounds_observed += 1
        return record

    def _losses(self, rows: torch.Tensor, is_in, labels) -> torch.Tensor:
        if is_in is None or labels is None:
            raise ValueError("observe needs losses, or both is_in and labels")
        probs = self._last["probs"]
        if probs is None:
            raise ValueError("observe with is_in and labels needs probs or logits in the last select(), "
                             "to compute the losses from; or pass losses")
        is_in = _column("is_in", is_in).cpu()
        labels = _column("labels", labels).cpu()
        if is_in.shape != rows.shape or labels.shape != rows.shape:
            raise ValueError(f"is_in and labels must have shape {tuple(rows.shape)} (one per index), got "
                             f"{tuple(is_in.shape)} and {tuple(labels.shape)}")
        is_in = checks.flags("is_in", is_in)
        if labels.is_floating_point():
            raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
        k = probs.shape[1]
        bad = is_in & ((labels < 0) | (labels >= k))
        if bool(bad.any()):
            raise ValueError(f"labels of IN rows must be classes in [0, {k}), got {labels[bad].tolist()[:5]}")
        losses = torch.zeros(rows.shape[0])
        if bool(is_in.any()):
            p = probs[rows[is_in].to(probs.device)].float().cpu()
            losses[is_in] = F.nll_loss(torch.log(p.clamp_min(1e-30)), labels[is_in].long(), reduction="none")
        return losses

    def state_dict(self) -> dict:
        """Phi and the round count (tensors, numbers and dicts: torch.save / torch.load(weights_only=True))."""
        return {"strategy": self.strategy.state_dict(), "rounds_observed": self.rounds_observed, "seed": self.seed,
                "options": dataclasses.asdict(self.strategy.options)}

    def load_state_dict(self, state: dict) -> None:
        """Restore Phi and the round count from `state_dict()` (also states saved before an option
        existed: they ran as that option's OPTIONS_BEFORE value). Refused if the options differ."""
        options = dataclasses.asdict(self.strategy.options)
        if "options" in state:  # a state saved before an option existed ran as that option's OPTIONS_BEFORE
            state = {**state, "options": {**OPTIONS_BEFORE, **state["options"]}}
        if state.get("options", options) != options:
            raise ValueError(f"the state was saved with options {state['options']}, this MQNet has {options}")
        self.strategy.load_state_dict(state["strategy"])
        self.rounds_observed = int(state["rounds_observed"])
        self.seed = int(state["seed"])


__all__ = ["INPUTS", "MQNet", "select"]
