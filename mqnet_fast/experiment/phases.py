"""The phases of one round, each a short function: train, evaluate, infer, select, label, learn."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast.labeled import LabeledSet
from mqnet_fast.strategies import RoundView, Selection, Strategy
from mqnet_fast.strategies.base import Shard
from mqnet_fast.training import DeviceFeatures, DeviceImages, TrainConfig, infer, make_model, model_arch, train_model


def train(num_classes: int, images: DeviceImages | DeviceFeatures, labeled_in: np.ndarray, labels: np.ndarray,
          config: TrainConfig, init_seed: int, train_seed: int, device: torch.device, *, desc: str,
          show_progress: bool, loss_module: bool = False, width: int = 64, world=None):
    """A freshly initialized target model (a ResNet-18 on images, a FeatureHead of hidden width
    `width` on embeddings; with the loss-prediction module of learning loss if `loss_module`)
    trained on the labeled IN examples `labeled_in` (global rows) with IN labels `labels` (with a
    `world` of several ranks, data-parallel: train_model). Returns (model, mean loss of the last
    iterations)."""
    model = make_model(num_classes, images.images.shape[1], device, init_seed, loss_module=loss_module, width=width,
                       arch=model_arch(images))
    if len(labeled_in) == 0:
        return model, float("nan")  # nothing IN to learn from yet: the model stays at its initialization
    loss = train_model(model, images, torch.from_numpy(labeled_in), torch.from_numpy(labels), config, train_seed,
                       desc=desc, show_progress=show_progress, world=world)
    return model, loss


def evaluate(model: torch.nn.Module, images: DeviceImages | DeviceFeatures, rows: np.ndarray,
             labels: np.ndarray, batch_size: int = 1024) -> float:
    """Accuracy on the test rows `rows` with IN labels `labels` (nan with no rows)."""
    if len(rows) == 0:
        return float("nan")
    logits = infer(model, images, torch.from_numpy(rows), batch_size).logits
    return float((logits.argmax(1) == torch.from_numpy(labels).to(logits.device)).float().mean())


def infer_view(model: torch.nn.Module, images: DeviceImages | DeviceFeatures, labeled_set: LabeledSet,
               labels_in: np.ndarray, r: int, generator: torch.Generator, cache=None, *, world=None,
               batch_size: int = 1024, train_config: TrainConfig | None = None) -> RoundView:
    """The round's view: the model's outputs on the unlabeled candidates and the labeled examples
    (with a loss module, the candidates' predicted loss as extras["predicted_loss"]), inferred in
    batches of `batch_size` rows. With a `world` of several ranks each rank infers only its share of
    the candidates (RoundView.shard), cut at multiples of `batch_size` so that every row is
    inferred in the batch one process would infer it in; the labeled examples on every rank."""
    candidates, labeled = labeled_set.unlabeled, labeled_set.labeled
    shard, mine = None, candidates
    if world is not None and world.size > 1:
        shard = Shard(world, world.split_offsets(len(candidates), batch_size), torch.from_numpy(candidates))
        mine = candidates[shard.start:shard.offsets[world.rank + 1]]
    cand_logits, cand_feats, cand_predicted_loss = infer(model, images, torch.from_numpy(mine), batch_size)
    labeled_out = infer(model, images, torch.from_numpy(labeled), batch_size)
    extras = {} if cand_predicted_loss is None else {"predicted_loss": cand_predicted_loss}
    return RoundView(torch.from_numpy(mine), torch.softmax(cand_logits, 1), cand_feats, generator,
                     labeled_feats=labeled_out.feats, labeled_probs=torch.softmax(labeled_out.logits, 1),
                     labeled_is_in=torch.from_numpy(labeled_set.is_in), round=r,
                     logits=cand_logits, labeled=torch.from_numpy(labeled),
                     labeled_labels=torch.from_numpy(labels_in[labeled]), model=model, images=images, cache=cache,
                     train_config=train_config, extras=extras, shard=shard)


def select(strategy: Strategy, view: RoundView, budget: int, name: str) -> tuple[Selection, np.ndarray, np.ndarray]:
    """The strategy's query, checked against its contract. Returns (selection, query global indices,
    their rows in the candidates; of every rank's candidates on a sharded view)."""
    if view.shard is not None and not strategy.sharded:
        raise RuntimeError(f"strategy {name!r} does not run on a sharded pool (torchrun)")
    selection = strategy.select(view, budget)
    query = selection.indices.cpu().numpy().astype(np.int64)
    candidates = view.candidates if view.shard is None else view.shard.candidates
    return selection, query, check_selection(query, candidates.numpy(), budget, name)


def label(view: RoundView, query: np.ndarray, positions: np.ndarray, is_in: np.ndarray,
          labels_in: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """The oracle's answer for the query: IN or OOD per example, and the masked cross-entropy of the
    current model on it (0 for OOD examples), which MQ-Net's meta-model learns to rank."""
    query_in = is_in[query]
    losses = torch.zeros(len(query))
    if query_in.any():
        if view.shard is None:
            logits = view.logits[torch.from_numpy(positions[query_in]).to(view.logits.device)]
        else:
            logits = view.shard.rows(view.logits, positions[query_in])
        targets = torch.from_numpy(labels_in[query[query_in]])
        losses[torch.from_numpy(query_in)] = F.cross_entropy(logits.float().cpu(), targets, reduction="none")
    return query_in, losses


def learn(strategy: Strategy, view: RoundView, selection: Selection, positions: np.ndarray, losses: torch.Tensor,
          seed: int) -> dict:
    return strategy.observe(view, selection, torch.from_numpy(positions), losses, seed)


def check_selection(query: np.ndarray, candidates: np.ndarray, budget: int, strategy: str) -> np.ndarray:
    """The strategy contract: `budget` distinct unlabeled pool examples. Returns their rows in
    `candidates` (which is sorted ascending), in query order."""
    if query.shape != (budget,):
        raise RuntimeError(f"strategy {strategy!r} returned {query.shape} indices, expected ({budget},)")
    if len(np.unique(query)) != budget:
        raise RuntimeError(f"strategy {strategy!r} returned repeated indices")
    positions = np.searchsorted(candidates, query)
    if (positions >= len(candidates)).any() or (candidates[np.minimum(positions, len(candidates) - 1)] != query).any():
        raise RuntimeError(f"strategy {strategy!r} returned indices that are labeled or not in the pool")
    return positions
