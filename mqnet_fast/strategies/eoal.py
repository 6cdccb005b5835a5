"""EOAL (Safaei et al., "Entropic Open-set Active Learning", AAAI 2024).

A detector with K + 1 outputs (mqnet_fast.training.detector: the target model's architecture and
recipe, fresh weights every round) carries K one-vs-rest binary heads on its penultimate features (a
bias-free linear layer to 2K logits; head j's softmax over its two logits gives p1_j = "class j" and
p0_j = "not class j"). It trains on the labeled examples, OOD ones as class K, with
- the cross-entropy of its K + 1 logits divided by T = 0.5;
- the open-set loss of the one-vs-rest heads: for IN examples of class y, -log p1_y and the hardest
  negative max_{j != y} -log p0_j (weight 1 - alpha once OOD examples are labeled); for OOD examples
  the cross-entropy of every head towards (1/2, 1/2) (entropy maximization), weight alpha / K per
  head; alpha = 0.8; each term halved (with one IN class there is no negative head: no such term);
- 0.1 x a regularizer on the OOD examples' features: the labeled OOD examples are clustered into
  C = K clusters (`finch_clusters`) at the start of every epoch of the detector's training (an epoch
  = one pass over the labeled set, and at most 300 clusterings a training: the published code's
  300 epochs), in its features; per OOD example with distances d_c to the cluster means, 0.1 x d_own (intra) +
  log(1 + sum_{c != own} exp(d_own - d_c)) (inter).
Scores: the closed-set entropy H_c (the mean binary entropy of the K heads, in bits) and, once OOD
examples are labeled, the open-set entropy H_o (the entropy of softmax(-d_c) over the C cluster
means, divided by log C). s = H_c - H_o: low s is a confident known example far from every OOD
cluster. The candidates predicted as a known class (argmax of the K + 1 logits < K) are clustered by
FINCH in the detector's features, the finest partition with at most b clusters; the query takes the
lowest-s candidates of each cluster in turn, int(min(b, n) / clusters) per visit, until b are taken
(with no partition of at most b clusters, the lowest s); short of b (few candidates predicted
known), the lowest s of the others.

FINCH (Sarfraz et al., CVPR 2019; mqnet_fast.finch), `finch_partitions`: each point is linked to its first neighbour
(the most similar other point by cosine, ties to the lower row), the connected components are the
clusters, and the same is repeated on the clusters' means until nothing merges; `finch_clusters`
takes the coarsest partition with at least the required number of clusters and merges the two most
similar cluster means until that number is left (FINCH's req_clust does its merging by steps of its
own).

From the published code (bardisafa/EOAL, main.py and query_strategies.py, the version that subtracts
the open-set entropy), as the paper's method section was not at hand: T, alpha, the 0.1 weights,
C = K clusters, the query's cluster quota. Differences: the published code clusters with the finch
package (cosine, its own req_clust merging) and fails with fewer labeled OOD examples than K, here
C = min(K, labeled OOD); it scores augmented images and clusters them, here unaugmented ones; it
trains with epochs of its own (300) where this detector takes the target model's iterations; its
losses average over empty groups (NaN), here an absent group adds nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast.finch import finch_clusters, finch_partitions, means
from mqnet_fast.models.eoal_net import EOALNet
from mqnet_fast.strategies.base import Selection, Strategy, fill_by_score, register

TEMPERATURE = 0.5
ALPHA = 0.8
REG_WEIGHT, INTRA_WEIGHT = 0.1, 0.1
MAX_CLUSTERINGS = 300  # the published code's 300 epochs: re-clustering at most this often a training


QUERIES = ("diverse", "lowest")


@dataclass(frozen=True)
class EOALOptions:
    eoal_query: str = field(default="diverse", metadata={
        "help": "EOAL's query: diverse (FINCH clusters of the candidates, the published default) or lowest (s alone)"})

    def __post_init__(self):
        if self.eoal_query not in QUERIES:
            raise ValueError(f"eoal_query must be one of {', '.join(QUERIES)}, got {self.eoal_query!r}")


# --------------------------------------------------------------------------------------------------
# The detector's loss (its network: mqnet_fast.models.eoal_net)

def open_set_loss(p: torch.Tensor, targets: torch.Tensor, k: int, any_ood: bool) -> torch.Tensor:
    """The one-vs-rest heads' loss (module docstring) of probabilities p (B, 2, K); targets >= k are OOD."""
    eps = 1e-8
    known = targets < k
    loss = p.new_zeros(())
    if bool(known.any()):
        pk, y = p[known], targets[known]
        pos = -torch.log(pk[torch.arange(len(y)), 1, y] + eps).mean()
        if k > 1:
            neg_logs = -torch.log(pk[:, 0, :] + eps)
            neg = neg_logs.masked_fill(F.one_hot(y, k).bool(), float("-inf")).max(1).values.mean()
        else:  # one IN class: no other head to be the hardest negative
            neg = pos.new_zeros(())
        loss = loss + 0.5 * (1 - ALPHA if any_ood else 1.0) * (pos + neg)
    if bool((~known).any()):
        pu = p[~known]
        pos_ood = (ALPHA / k * -torch.log(pu[:, 1, :] + eps)).sum(1).mean()
        neg_ood = (ALPHA / k * -torch.log(pu[:, 0, :] + eps)).sum(1).mean()
        loss = loss + 0.5 * (pos_ood + neg_ood)
    return loss


def cluster_regularizer(feats: torch.Tensor, own: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """0.1 x mean d_own + mean log(1 + sum_{c != own} exp(d_own - d_c)), d the Euclidean distances
    of the OOD features to the (detached) cluster means."""
    d = torch.cdist(feats.float(), centers.float())
    d_own = d.gather(1, own[:, None])
    others = (d_own - d).masked_fill(F.one_hot(own, centers.shape[0]).bool(), float("-inf"))
    inter = torch.log1p(torch.exp(others).sum(1)).mean()
    return INTRA_WEIGHT * d_own.mean() + inter


class _Loss:
    """The detector's loss; every `per_epoch` calls it re-clusters the labeled OOD examples in the
    detector's current features (unaugmented, eval mode), at most MAX_CLUSTERINGS times a training.
    Targets: IN class, or k + the OOD example's position among the labeled OOD rows."""

    def __init__(self, net: EOALNet, images, ood_rows: torch.Tensor, k: int, per_epoch: int):
        self.net, self.images, self.ood_rows, self.k, self.per_epoch = net, images, ood_rows, k, per_epoch
        self.clusters = min(k, len(ood_rows))
        self.calls = 0
        self.own = self.centers = None

    def refresh(self):
        from mqnet_fast.training.inference import infer

        with torch.no_grad():
            feats = infer(self.net.backbone, self.images, self.ood_rows).feats
        self.net.train()
        labels = finch_clusters(feats, self.clusters)
        self.own = torch.from_numpy(labels).to(feats.device)
        self.centers = means(feats, labels, self.clusters).float()

    def __call__(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.clusters and self.calls % self.per_epoch == 0:
            self.refresh()
        self.calls += 1
        k = self.k
        logits, ova, feats = out[:, :k + 1], out[:, k + 1:3 * k + 1], out[:, 3 * k + 1:]
        ood = targets >= k
        loss = F.cross_entropy(logits.float() / TEMPERATURE, torch.where(ood, k, targets))
        p = torch.softmax(ova.float().view(-1, 2, k), 1)
        loss = loss + open_set_loss(p, targets, k, self.clusters > 0)
        if self.clusters and bool(ood.any()):
            own = self.own[(targets[ood] - k)]
            loss = loss + REG_WEIGHT * cluster_regularizer(feats[ood], own, self.centers)
        return loss


def eoal_scores(net: EOALNet, feats: torch.Tensor, centers: torch.Tensor | None):
    """(s, H_c, H_o) of the candidates: the closed-set entropy minus the open-set one."""
    with torch.no_grad():
        p = net.heads(feats)
    closed = (-(p * torch.log(p + 1e-8)).sum(1)).mean(1) / math.log(2)
    if centers is None or centers.shape[0] < 2:
        opened = torch.zeros_like(closed)
    else:
        q = torch.softmax(-torch.cdist(feats.float(), centers.float()), 1)
        opened = -(q * torch.log(q + 1e-20)).sum(1) / math.log(centers.shape[0])
    return (closed - opened).double(), closed, opened


def diverse_lowest(s: np.ndarray, clusters: np.ndarray, budget: int) -> np.ndarray:
    """Rows taken by visiting the clusters in turn, each visit its next int(min(b, n) / C) lowest s."""
    count = int(clusters.max()) + 1 if len(clusters) else 0
    if count == 0 or budget == 0:
        return np.zeros(0, np.int64)
    if count > budget:  # no partition with at most b clusters (e.g. no merge at all): the lowest s
        return np.argsort(s, kind="stable")[:budget].astype(np.int64)
    per_visit = max(1, min(budget, len(s)) // count)
    queues = [np.flatnonzero(clusters == c)[np.argsort(s[clusters == c], kind="stable")] for c in range(count)]
    cursor = [0] * count
    chosen: list[int] = []
    while len(chosen) < budget and any(cursor[c] < len(queues[c]) for c in range(count)):
        for c in range(count):
            take = min(per_visit, budget - len(chosen), len(queues[c]) - cursor[c])
            chosen += queues[c][cursor[c]:cursor[c] + take].tolist()
            cursor[c] += take
            if len(chosen) == budget:
                break
    return np.asarray(chosen, np.int64)


@register
class EOAL(Strategy):
    trains_extra_models = True  # its detectors
    name = "eoal"
    Options = EOALOptions
    inputs = None  # trains a detector on the labeled images

    def select(self, view, budget):
        from mqnet_fast.training.factory import model_like
        from mqnet_fast.training.inference import infer
        from mqnet_fast.training.target import train_model

        view.require("train_config", "model", "images", "labeled", "labeled_labels", by="eoal")
        k = view.probs.shape[1]
        images, config = view.images, view.train_config
        init_seed, head_seed, train_seed = torch.randint(0, 2**62, (3,), generator=view.generator).tolist()
        backbone = model_like(view.model, k + 1, images.images.shape[1], images.images.device, init_seed, images)
        net = EOALNet(backbone, k, head_seed)
        labels = view.labeled_labels.clone().cpu()
        ood = labels < 0
        labels[ood] = k + torch.arange(int(ood.sum()))
        # an epoch of the labeled set, but no more than MAX_CLUSTERINGS clusterings a training
        per_epoch = max(math.ceil(len(labels) / config.batch_size), math.ceil(config.iterations / MAX_CLUSTERINGS))
        per_epoch *= config.micro_batches
        loss_fn = _Loss(net, images, view.labeled.cpu()[ood], k, per_epoch)
        train_loss = train_model(net, images, view.labeled.cpu(), labels, config, train_seed, desc="eoal detector",
                                 show_progress=False, loss_fn=loss_fn)
        net.eval()
        out = infer(backbone, images, view.candidates)
        centers = None
        if loss_fn.clusters:
            loss_fn.refresh()  # the final detector's clusters
            net.eval()
            centers = loss_fn.centers
        s, closed, opened = eoal_scores(net, out.feats, centers)
        s_np = s.cpu().numpy()
        known = (out.logits.argmax(1) < k).cpu().numpy()
        rows = np.flatnonzero(known)
        if self.options.eoal_query == "diverse" and len(rows):
            partitions = finch_partitions(out.feats[torch.from_numpy(rows).to(out.feats.device)])
            clusters = np.arange(len(rows))
            for partition in partitions:
                clusters = partition
                if partition.max() + 1 <= budget:
                    break
            chosen = rows[diverse_lowest(s_np[rows], clusters, budget)]
        else:
            chosen = rows[np.argsort(s_np[rows], kind="stable")][:budget]
        chosen = fill_by_score(chosen, -s_np, budget)  # short: the lowest s of the others
        return Selection(view.candidates[torch.from_numpy(chosen.astype(np.int64))], None,
                         {"eoal_detector_loss": train_loss, "eoal_predicted_known": int(known.sum()),
                          "eoal_ood_clusters": loss_fn.clusters},
                         {"eoal_s": s.float().cpu(), "eoal_closed_entropy": closed.float().cpu(),
                          "eoal_open_entropy": opened.float().cpu(),
                          "eoal_predicted_known": torch.from_numpy(known).float()})
