"""Purity in CSI's contrastive embedding (Tack et al., NeurIPS 2020), trained once on the unlabeled
pool (mqnet_fast.training.contrastive): the purity MQ-Net (Park et al., NeurIPS 2022) uses.

- `csi`: max cosine similarity to the labeled IN examples in the projection head's output (CSI's
  "simclr" layer, unnormalized; cosine makes the norm irrelevant), as MQ-Net's published code
  (get_CSI_score) computes it.
- `csi-ood`: cosine distance (1 - max cosine similarity) to the closest labeled OOD example, larger
  = purer (MQ-Net's Appendix C.1, following CCAL).
- `csi-full`: CSI's own detection score ("CSI" of alinlab/CSI evals/ood_pre.py): for each rotation
  k, max cosine similarity to the labeled IN examples' rotation-k embeddings times the norm of the
  candidate's rotation-k embedding, plus the shift head's logit of the correct rotation k, each
  term weighted by 1 / (its mean over the labeled IN examples), averaged over the 4 rotations.
  Differences from CSI: the statistics come from the labeled IN examples (CSI: the whole IN
  training set); every image is embedded once, unaugmented (CSI averages 10 augmented samples,
  random flip and a fixed 0.54 crop); where the labeled IN examples' mean correct-rotation logit
  is not positive, the shift term is left out for that rotation (CSI would divide by it and flip
  or blow up the term).

With no labeled IN example yet every purity is 0 (as knn does). The encoder and the pool's
embeddings are computed once per run (RunCache); the nearest-neighbour searches go through
ops.nearest. On a view sharded across torchrun ranks each rank embeds only the chunks of the pool
around its own candidates (and the labeled rows there, which it sends to the others), in the same
batches one process embeds the pool in, so the scores are the single-process ones.

On an embeddings dataset (the view's `images` are DeviceFeatures) there is no image to train an
encoder on: the given embedding is the self-supervised one (e.g. scripts/make_embeddings.py
--encoder csi, CSI's encoder trained on the training split; or a foundation model's features), so
`csi` and `csi-ood` are computed the same way in it, on the embeddings as given (CSI's score, too,
reads its encoder's output as it is; the target head sees them standardized per feature, which
on digits' pixel PCA lowered the round-0 AUROC of `csi` from 0.79 / 0.74 / 0.85 to 0.73 / 0.63 /
0.74 on seeds 0-2, and raised it from 0.55 / 0.53 / 0.53 to 0.58 / 0.55 / 0.56 on CIFAR-10's:
both weak, and the given space is the one the user chose). `csi-full` needs the images'
rotations and the shift head and is refused there (NEEDS_IMAGES).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mqnet_fast import ops
from mqnet_fast.models.encoder import NUM_ROTATIONS
from mqnet_fast.scores import register_purity
from mqnet_fast.scores.knn import knn_purity
from mqnet_fast.training.contrastive import EMBED_BATCH, EncoderConfig, embed, embed_rotations, load_or_train_encoder
from mqnet_fast.training.features import DeviceFeatures

# The embedding `csi` and `csi-ood` search in: the projection, as MQ-Net's and CSI's code read. On
# digits it gave AUROCs at or above the backbone's penultimate features' for the tuned encoder
# (benchmarks/results/csi-digits.txt, seeds 0-2: csi 0.933 vs 0.920, csi-ood 0.946 vs 0.933;
# csi-digits-seeds345.txt: 0.958 vs 0.955, 0.925 vs 0.923).
PURITY_LAYER = "projection"
# CSI's detection score reads the projection ("simclr") layer too.
FULL_LAYER = "projection"
# Purity scores that need the pool's images (not computable on an embeddings dataset).
NEEDS_IMAGES = ("csi-full",)


def csi_purity(embeddings: torch.Tensor, labeled_in_embeddings: torch.Tensor) -> torch.Tensor:
    """Max cosine similarity (n,) of each row of `embeddings` (n, d) to the labeled IN examples'
    embeddings (m, d); 0 everywhere when m = 0."""
    return knn_purity(embeddings, labeled_in_embeddings)


def csi_ood_purity(embeddings: torch.Tensor, labeled_ood_embeddings: torch.Tensor,
                   labeled_in_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine distance (n,) of each row of `embeddings` to its closest labeled OOD example,
    1 - max_j cos(x, ood_j), in [0, 2]: larger = purer.

    With no labeled IN example: 0 everywhere (the rule of every purity here). With IN examples but
    no OOD example labeled yet: csi_purity (max cosine similarity to the labeled IN examples) in
    the same space, rather than a constant: a constant would leave MQ-Net's purity input without
    information for that round, and MQ-Net standardizes each round's purity, so the change of
    scale when the first OOD example arrives does not matter."""
    if labeled_in_embeddings.shape[0] == 0 or embeddings.shape[0] == 0:
        return torch.zeros(embeddings.shape[0], dtype=torch.float32, device=embeddings.device)
    if labeled_ood_embeddings.shape[0] == 0:
        return csi_purity(embeddings, labeled_in_embeddings)
    values, _ = ops.nearest(embeddings, labeled_ood_embeddings, metric="cosine")
    return (1.0 - values).float()


def csi_full_purity(embeddings: torch.Tensor, shift_logits: torch.Tensor, labeled_in_embeddings: torch.Tensor,
                    labeled_in_shift_logits: torch.Tensor) -> torch.Tensor:
    """CSI's detection score (n,) from per-rotation embeddings (n, 4, d) and shift logits
    (n, 4, 4) of the candidates and (m, 4, d), (m, 4, 4) of the labeled IN examples:

        score(x) = 1/4 sum_k [ w_sim_k max_j cos(z_k(x), z_k(x_j)) |z_k(x)| + w_shi_k s_k(x)[k] ]
        w_sim_k = 1 / mean_j |z_k(x_j)|,   w_shi_k = 1 / mean_j s_k(x_j)[k]   (0 if that mean <= 0)

    with z_k the embedding and s_k the shift logits of x turned by k * 90 degrees. 0 everywhere
    when m = 0."""
    n = embeddings.shape[0]
    if labeled_in_embeddings.shape[0] == 0 or n == 0:
        return torch.zeros(n, dtype=torch.float32, device=embeddings.device)
    score = torch.zeros(n, dtype=torch.float32, device=embeddings.device)
    for k in range(NUM_ROTATIONS):
        z, z_in = embeddings[:, k].float(), labeled_in_embeddings[:, k].float()
        cosine, _ = ops.nearest(z, z_in, metric="cosine")
        score += cosine.float() * z.norm(dim=1) / z_in.norm(dim=1).mean().clamp_min(1e-12)
        mean_logit = labeled_in_shift_logits[:, k, k].float().mean()
        if mean_logit > 0:
            score += shift_logits[:, k, k].float() / mean_logit
    return score / NUM_ROTATIONS


# --------------------------------------------------------------------------------------------------
# Adapters from a round's view


def encoder_config(view) -> EncoderConfig:
    """The dataset's default encoder with the run's overrides (ExperimentConfig.encoder_epochs)."""
    return dataclasses.replace(EncoderConfig.for_dataset(view.cache.dataset), **view.cache.encoder_overrides)


def _pool_positions(pool: np.ndarray, index: torch.Tensor, what: str) -> torch.Tensor:
    """Rows of the sorted `pool` holding the global indices `index`."""
    index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
    positions = np.searchsorted(pool, index)
    inside = positions < len(pool)
    if not inside.all() or not (pool[positions[inside]] == index[inside]).all():
        missing = index[~inside] if not inside.all() else index[pool[positions] != index]
        raise ValueError(f"{what}: {len(missing)} index(es) are not in the cache's pool (first: {int(missing[0])}); "
                         "the CSI encoder embeds the pool it was trained on")
    return torch.from_numpy(positions)


def split_pool_table(view, table: torch.Tensor, by: str):
    """(candidate rows, labeled IN rows, labeled OOD rows) of a per-pool-row table."""
    view.require("cache", "labeled", by=by)
    pool = np.asarray(view.cache.pool, dtype=np.int64)
    device = table.device
    candidates = table[_pool_positions(pool, view.candidates, "candidates").to(device)]
    labeled = table[_pool_positions(pool, view.labeled, "labeled").to(device)]
    is_in = view.labeled_is_in.to(torch.bool).to(device)
    return candidates, labeled[is_in], labeled[~is_in]


def encoded_pool(view, what: tuple, encode, config: EncoderConfig | None = None):
    """encode(encoder, images, pool) for the cache's pool in the run's CSI encoder (or the encoder of
    `config`, trained and cached the same way), once per run."""
    view.require("cache", by="the CSI purity scores")
    config = encoder_config(view) if config is None else config

    def build():
        view.require("images", by="the CSI purity scores")
        encoder = load_or_train_encoder(view.images, view.cache, config, show_progress=view.cache.show_progress)
        return encode(encoder, view.images, view.cache.pool)
    return view.cache.get((*what, config), build)


def pool_embeddings(view, layer: str = PURITY_LAYER) -> torch.Tensor:
    """(P, d) embeddings of the cache's pool in the run's CSI encoder, computed once per run; on an
    embeddings dataset, the pool's rows of the embeddings as given."""
    if isinstance(view.images, DeviceFeatures):
        view.require("cache", by="the CSI purity scores")
        return view.images.given(torch.from_numpy(np.asarray(view.cache.pool, dtype=np.int64)))
    return encoded_pool(view, ("csi-pool-embeddings", layer),
                         lambda encoder, images, pool: embed(encoder, images, pool, layer=layer))


def pool_rotation_embeddings(view, layer: str = FULL_LAYER):
    """(P, 4, d) embeddings and (P, 4, 4) shift logits of the pool's 4 rotations, once per run."""
    if isinstance(view.images, DeviceFeatures):
        raise ValueError("purity 'csi-full' needs the pool's images (their rotations and CSI's shift head); "
                         "on an embeddings dataset use csi, csi-ood, knn or react")
    return encoded_pool(view, ("csi-pool-rotation-embeddings", layer),
                         lambda encoder, images, pool: embed_rotations(encoder, images, pool, layer=layer))


# --------------------------------------------------------------------------------------------------
# On a sharded view (torchrun): each rank embeds only the part of the pool around its candidates



def _shard_tables(view, what: tuple, encode, by: str) -> tuple[tuple, tuple, tuple]:
    """(candidates, labeled IN, labeled OOD), each a tuple of the tensors encode(encoder, images,
    rows) returns, on a sharded view. The pool is split into contiguous ranges at the ranks' first
    candidates. Each rank embeds the chunks of EMBED_BATCH pool positions that hold its candidates
    and the labeled rows of its range (memoized per chunk, and the very batches one process embeds:
    the same bits), and sends those labeled rows to every rank. No rank embeds the whole pool;
    the labeled rows (L x d) are all that moves."""
    view.require("cache", "labeled", "images", by=by)
    shard, world = view.shard, view.shard.world
    pool = np.asarray(view.cache.pool, dtype=np.int64)
    config = encoder_config(view)
    # every rank takes part: under torchrun the encoder is trained or loaded collectively
    encoder = load_or_train_encoder(view.images, view.cache, config, show_progress=view.cache.show_progress)
    cand = _pool_positions(pool, shard.candidates, "candidates").numpy()
    labeled = _pool_positions(pool, view.labeled, "labeled").numpy()
    firsts = [int(cand[o]) if o < len(cand) else len(pool) for o in shard.offsets[1:-1]]
    bounds = np.array([0, *firsts, len(pool)])
    owner = np.searchsorted(bounds[1:], labeled, side="right")  # the rank whose range holds each labeled row
    mine = cand[shard.offsets[world.rank]:shard.offsets[world.rank + 1]]
    need = np.concatenate([mine, labeled[owner == world.rank]])

    def as_tuple(out):
        return tuple(out) if isinstance(out, tuple) else (out,)

    pieces = [as_tuple(encode(encoder, view.images, pool[:0]))]  # empty, of the right shapes
    for c in np.unique(need // EMBED_BATCH):
        chunk = view.cache.get((*what, config, "chunk", int(c)),
                               lambda c=int(c): as_tuple(encode(encoder, view.images,
                                                                pool[c * EMBED_BATCH:(c + 1) * EMBED_BATCH])))
        rows = torch.from_numpy(need[need // EMBED_BATCH == c] - c * EMBED_BATCH)
        pieces.append(tuple(t[rows.to(t.device)] for t in chunk))
    # pieces follow the chunks in order, and need is sorted within each part: re-order to need's order
    order = np.argsort(need // EMBED_BATCH, kind="stable")
    rows = []
    for f in range(len(pieces[0])):
        stacked = torch.cat([piece[f] for piece in pieces])
        out = torch.empty_like(stacked)
        out[torch.from_numpy(order).to(out.device)] = stacked
        rows.append(out)
    candidates = tuple(r[:len(mine)] for r in rows)
    labeled_rows = [world.gather_in_order(r[len(mine):], owner) for r in rows]  # every rank's, in labeled order
    is_in = view.labeled_is_in.to(torch.bool)
    return (candidates, tuple(t[is_in.to(t.device)] for t in labeled_rows),
            tuple(t[~is_in.to(t.device)] for t in labeled_rows))


def _tables(view, what: tuple, encode, by: str, *, table=None):
    """(candidates, labeled IN, labeled OOD) as tuples of per-row tensors: rows of the whole pool's
    `table()` (computed once per run); on a sharded view from _shard_tables (on given embeddings,
    their rows)."""
    if view.shard is not None and not isinstance(view.images, DeviceFeatures):
        return _shard_tables(view, what, encode, by)
    if view.shard is not None:  # the embeddings as given, sharded: read this rank's rows directly
        view.require("labeled", by=by)
        is_in = view.labeled_is_in.to(torch.bool)
        given = view.images.given(view.labeled)
        return (view.images.given(view.candidates),), (given[is_in.to(given.device)],), (given[~is_in.to(given.device)],)
    parts = [split_pool_table(view, t, by) for t in table()]
    return tuple(tuple(p[k] for p in parts) for k in range(3))


def _embed_purity_layer(encoder, images, rows):
    return embed(encoder, images, rows, layer=PURITY_LAYER)


@register_purity("csi")
def _csi(view) -> torch.Tensor:
    (candidates,), (labeled_in,), _ = _tables(view, ("csi-pool-embeddings", PURITY_LAYER), _embed_purity_layer,
                                              "purity 'csi'", table=lambda: (pool_embeddings(view),))
    return csi_purity(candidates, labeled_in)


@register_purity("csi-ood")
def _csi_ood(view) -> torch.Tensor:
    (candidates,), (labeled_in,), (labeled_ood,) = _tables(
        view, ("csi-pool-embeddings", PURITY_LAYER), _embed_purity_layer, "purity 'csi-ood'",
        table=lambda: (pool_embeddings(view),))
    return csi_ood_purity(candidates, labeled_ood, labeled_in)


@register_purity("csi-full")
def _csi_full(view) -> torch.Tensor:
    if isinstance(view.images, DeviceFeatures):
        pool_rotation_embeddings(view)  # refused there, with why
    (cand_z, cand_s), (in_z, in_s), _ = _tables(
        view, ("csi-pool-rotation-embeddings", FULL_LAYER),
        lambda encoder, images, rows: embed_rotations(encoder, images, rows, layer=FULL_LAYER), "purity 'csi-full'",
        table=lambda: tuple(pool_rotation_embeddings(view)))
    return csi_full_purity(cand_z, cand_s, in_z, in_s)
