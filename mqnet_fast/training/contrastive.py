"""CSI's contrastive encoder, trained once per pool (Tack et al., NeurIPS 2020, "CSI: Novelty
Detection via Contrastive Learning on Distributionally Shifted Instances"): SimCLR's NT-Xent where
every rotation of an image is an instance of its own, plus rotation classification. MQ-Net (Park et
al., NeurIPS 2022) measures purity in this encoder's embedding (mqnet_fast.scores.csi).

Differences from the published code (alinlab/CSI, and MQ-Net's copy of it in kaist-dmlab/MQNet):
- trained once per (dataset, pool images, seed, config) and cached on disk; MQ-Net's code trains it
  once too when asked to save it (`ssl_save`), keyed by dataset, noise and trial only;
- both CSI and MQ-Net's code train it with LARS over SGD (momentum 0.9, wd 1e-6, trust 0.001, on
  every tensor, lr 0.1 with a x10 warm-up): here LARS, by default with SimCLR's exclusion of biases
  and normalization parameters from weight decay and the trust ratio
  (`EncoderConfig.lars_exclude_bias_and_norm`; CSI's way, `benchmarks/engine/csi_digits.py --set
  lars_exclude_bias_and_norm=False`, gave csi AUROC 0.950 against 0.959 on seeds 0-2, within the
  thread-count noise of ~0.02; that run is not recorded);
- the schedule is optim.warmup_cosine per step (linear warm-up from lr / warmup steps to lr, cosine
  to 0 at the end); CSI warms up from lr / 10 to lr over 10 epochs and ends its cosine, which spans
  all epochs from the end of the warm-up, slightly above 0;
- colour jitter in a fixed order (CSI shuffles contrast and HSV per batch); crops are not rounded
  to whole pixels. CSI trains CIFAR with SimCLR's crop (area 0.08..1, as MQ-Net's copy); its
  milder crop (a fixed 0.54) is for evaluation only, averaged over 10 augmented samples, which the
  scores here leave out (every image is embedded once, unaugmented).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mqnet_fast.io import RunFileError, first_line, load_sealed, payload_digest, save_sealed
from mqnet_fast.models.encoder import NUM_ROTATIONS, ContrastiveEncoder
from mqnet_fast.training.augment import csi_views, rotate
from mqnet_fast.training.images import DeviceImages
from mqnet_fast.training.loop import TrainingLoop, device_autocast, shuffled_batches
from mqnet_fast.training.optim import lars, warmup_cosine


def nt_xent(z: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent loss over 2M views z (2M, e), rows L2-normalized: the positive of view i is
    view i + M (first half / second half, CSI's layout), every other view is a negative.

        loss = mean_i -log( exp(z_i . z_pos(i) / t) / sum_{j != i} exp(z_i . z_j / t) )

    over all 2M anchors (CSI's NT_xent without its two eps terms)."""
    if z.ndim != 2 or z.shape[0] % 2 or z.shape[0] < 2:
        raise ValueError(f"z must be (2M, e) with M >= 1, got shape {tuple(z.shape)}")
    m = z.shape[0] // 2
    logits = (z @ z.t()) / temperature
    logits = logits.masked_fill(torch.eye(2 * m, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(m, 2 * m), torch.arange(0, m)]).to(z.device)
    return F.cross_entropy(logits, positives)


def csi_loss(projections: torch.Tensor, shift_logits: torch.Tensor, shift_labels: torch.Tensor,
             temperature: float = 0.5, shifts: int = NUM_ROTATIONS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSI's objective on a batch laid out as csi_views makes it (8B views: 2 views x 4 rotations x
    B images): NT-Xent over the normalized projections, each (image, rotation) an instance (so the
    other rotations of the same image are negatives), plus the rotation cross-entropy (weight 1).
    With shifts=1 SimCLR's (NT-Xent alone, the shift head untrained). Returns (total, contrastive, shift)."""
    contrastive = nt_xent(F.normalize(projections.float(), dim=1), temperature)
    if shifts == 1:
        shift = (shift_logits.float() * 0.0).sum()  # keeps the head in the graph (DDP), adds nothing
        return contrastive + shift, contrastive, shift
    shift = F.cross_entropy(shift_logits.float(), shift_labels)
    return contrastive + shift, contrastive, shift


@dataclass(frozen=True)
class EncoderConfig:
    """Training of the CSI encoder. batch_size counts images: a step sees 8 x batch_size views.
    lr is the peak of the warm-up + cosine schedule. Augmentation: crop area fraction in
    (crop_min_scale, 1), colour jitter of strength `jitter` (x SimCLR's 0.4/0.4/0.4/0.1) with
    probability jitter_p, greyscale with probability grey_p (3 channels only)."""
    epochs: int = 1000
    batch_size: int = 32
    lr: float = 1.0
    warmup_epochs: int = 10
    weight_decay: float = 1e-6
    momentum: float = 0.9
    trust_coefficient: float = 0.001
    lars_exclude_bias_and_norm: bool = True
    temperature: float = 0.5
    width: int = 64
    projection_dim: int = 128
    crop_min_scale: float = 0.08
    jitter: float = 1.0
    jitter_p: float = 0.8
    grey_p: float = 0.2
    # The 8 x batch_size views of a step as this many parts through the encoder, each with its own
    # BatchNorm statistics (the running ones following part 0), the loss over all of them: the step
    # data-parallel training on that many ranks takes (train_encoder with a World of that size).
    micro_batches: int = 1
    # CSI's 4 rotations as shifted instances; 1: plain SimCLR (CCAL's semantic encoder).
    shifts: int = NUM_ROTATIONS

    def __post_init__(self):
        if self.shifts not in (1, NUM_ROTATIONS):
            raise ValueError(f"shifts must be 1 (SimCLR) or {NUM_ROTATIONS} (CSI), got {self.shifts!r}")

    @classmethod
    def for_dataset(cls, name: str) -> "EncoderConfig":
        """The defaults for a dataset. CIFAR and image folders: the papers' setting: CSI's (1,000
        epochs, LARS, peak lr 1.0 = its lr 0.1 x the warm-up multiplier 10 over 10 epochs, wd 1e-6,
        temperature 0.5, crop area 0.08..1, SimCLR's colour jitter) with MQ-Net's batch of 32 images
        (256 views; CSI's multi-class runs take 4 GPUs x 32). On a 50,000-image CIFAR pool that is
        4e8 views of 3.3 GFLOP (forward and backward) each, 1.3e18 FLOP: hours on one GPU, and not
        feasible on a CPU. digits: a narrow ResNet-18 sized to train in about a minute on a 2-core
        CPU (DIGITS_ENCODER)."""
        if name == "digits":
            return DIGITS_ENCODER
        return cls()

    def steps_per_epoch(self, pool_size: int) -> int:
        return max(1, math.ceil(pool_size / self.batch_size))


# digits (8x8 grey, a pool of ~1,200): tuned on benchmarks/engine/csi_digits.py for the IN/OOD AUROC of the
# csi purity within about a minute of training on a 2-core CPU (35 epochs of 38 steps of 256 views:
# 36-40 s with 2 threads on the idle machine, 53 s with 1 thread while others used it). Versus the CIFAR setting: a ResNet-18 of width 16 (0.7 M parameters); a
# milder crop (area 0.85..1: on 8x8 images SimCLR's 0.08..1 leaves a few pixels, and 0.3..1 and
# 0.5..1 measured worse); lr 2 with 2 warm-up epochs for the short schedule (1 and 4 measured worse).
DIGITS_ENCODER = EncoderConfig(epochs=35, batch_size=32, lr=2.0, warmup_epochs=2, width=16, crop_min_scale=0.85)


def make_encoder(in_channels: int, config: EncoderConfig, device: torch.device, seed: int) -> ContrastiveEncoder:
    """A freshly initialized encoder; its initial weights depend only on `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = ContrastiveEncoder(in_channels, config.width, config.projection_dim)
    return encoder.to(device).to(memory_format=torch.channels_last)  # on every device (DeviceImages)


def train_encoder(images: DeviceImages, pool: np.ndarray, config: EncoderConfig, seed: int, *,
                  show_progress: bool = True, world=None) -> ContrastiveEncoder:
    """CSI's encoder trained on the rows `pool` (global indices of `images`) for config.epochs
    epochs of ceil(|pool| / batch_size) steps, batches from consecutive shuffles of the pool.
    Returns it in eval mode.

    With config.micro_batches = W > 1 each step's views go through the encoder in W parts (rows cut
    by torch.tensor_split), the loss is computed once over all their projections and shift logits,
    and its gradients with respect to them are pushed back through each part in turn. With a `world`
    of W ranks (every rank calling this with the same arguments) rank r computes part r inside
    DistributedDataParallel, the projections and logits are all-gathered for the loss (the same on
    every rank), and a communication hook sums the ranks' gradients in rank order: bit for bit the
    encoder one process trains with micro_batches = W, on the CPU."""
    if len(pool) == 0:
        raise ValueError("train_encoder: the pool is empty")
    device = images.images.device
    encoder = make_encoder(images.images.shape[1], config, device, seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = lars(encoder, config.lr, config.momentum, config.weight_decay, config.trust_coefficient,
                     exclude_bias_and_norm=config.lars_exclude_bias_and_norm)
    index = torch.as_tensor(np.asarray(pool), dtype=torch.int64)
    per_epoch = config.steps_per_epoch(len(index))
    total, warmup = config.epochs * per_epoch, config.warmup_epochs * per_epoch
    batches = shuffled_batches(len(index), min(config.batch_size, len(index)), generator)
    crop = (config.crop_min_scale, 1.0)
    # the loss is the whole batch's: the ranks' gradients are summed, not averaged
    loop = TrainingLoop(encoder, optimizer, device, parts=config.micro_batches, world=world, divide=False,
                        what=f"to train the encoder on {world.size if world else 1} ranks")

    def step(_: int) -> torch.Tensor:
        views, shift_labels = csi_views(images, index[next(batches)], generator, crop_scale=crop,
                                        jitter=config.jitter, jitter_p=config.jitter_p, grey_p=config.grey_p,
                                        shifts=config.shifts)
        return loop.joint(views.shape[0], lambda runner, part: runner(views[part])[1:],
                          lambda projections, logits: csi_loss(projections, logits, shift_labels,
                                                               config.temperature, config.shifts)[0])

    loop.run(total, lambda i: warmup_cosine(config.lr, i, total, warmup), step,
             desc="csi encoder" if config.shifts > 1 else "simclr encoder", show_progress=show_progress,
             steps_per_tick=per_epoch, show_loss=True)
    return encoder.eval()


# Bumped whenever the trainer computes other bits from the same config, so that an encoder cached by
# an earlier version is not taken for this one's. 2: channels-last on every device (the CPU's
# convolutions round otherwise than in NCHW). 3: one-position convolutions as linear maps on the CPU
# (models/resnet.py Conv2d).
TRAINER_VERSION = 3


def _cache_fields(config: EncoderConfig) -> dict:
    """The config as its disk entry records it, with the trainer's version: micro_batches left out
    at 1 and shifts at 4 (the entries written before they existed hold the same bits)."""
    fields = {**asdict(config), "trainer_version": TRAINER_VERSION}
    for name, before in (("micro_batches", 1), ("shifts", NUM_ROTATIONS)):
        if fields[name] == before:
            del fields[name]
    return fields


def load_or_train_encoder(images: DeviceImages, cache, config: EncoderConfig, *,
                          show_progress: bool = True) -> ContrastiveEncoder:
    """The run's encoder for `config`: from the cache's memory, else from its disk entry
    (cache.disk_path("csi-encoder", **_cache_fields(config)), keyed by dataset, pool, seed and config),
    else trained on cache.pool with cache.seed and written there atomically. The file is sealed
    (mqnet_fast.io.save_sealed: its key, config and input channels, and the sha256 of its state
    dict), so an edited, damaged or misplaced entry is refused by name, and it loads with
    torch.load(..., weights_only=True). Without a cache directory it is trained (once per run). The
    sha256 of the encoder used goes into cache.models (recorded by the run).
    With a cache.world of several ranks (torchrun), rank 0 decides whether the disk entry is there;
    if not, every rank trains it together (train_encoder with the world) and rank 0 writes it."""
    device = images.images.device
    in_channels = images.images.shape[1]
    key = _cache_fields(config)
    path = cache.disk_path("csi-encoder", **key)
    world = getattr(cache, "world", None)
    world = world if world is not None and world.size > 1 else None

    identity = {"kind": "csi-encoder", "key": path.stem if path is not None else None, "config": key,
                "in_channels": in_channels}

    def saved() -> tuple[ContrastiveEncoder, str] | None:
        loaded = load_sealed(path, identity, "the cached CSI encoder") if path is not None else None
        if loaded is None:
            return None
        payload, digest = loaded
        encoder = make_encoder(in_channels, config, device, 0)
        try:
            encoder.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, RuntimeError) as err:
            raise RunFileError(f"the cached CSI encoder {str(path)!r} does not fit this encoder ({first_line(err)}); "
                               "delete it to train it again") from None
        return encoder.to(device).eval(), digest

    def build() -> tuple[ContrastiveEncoder, str]:
        if world is not None and world.from_main(lambda: path is not None and path.exists()):
            return saved()  # rank 0 saw an entry (written atomically): every rank reads and checks it
        found = saved() if world is None else None
        if found is not None:
            return found
        encoder = train_encoder(images, cache.pool, config, cache.seed, show_progress=show_progress, world=world)
        state = {"state_dict": {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}}
        if path is not None and (world is None or world.is_main):
            digest = save_sealed(path, state, identity)
        else:
            digest = payload_digest(state)
        return encoder.eval(), digest

    encoder, digest = cache.get(("csi-encoder", config), build)
    cache.record_model("csi-encoder", digest)
    return encoder


def _rows(index: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(index), dtype=torch.int64)


LAYERS = ("penultimate", "projection")


def _layer_dim(encoder: ContrastiveEncoder, layer: str) -> int:
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
    return encoder.feature_dim if layer == "penultimate" else encoder.projection_dim


def _layer(encoder: ContrastiveEncoder, feats: torch.Tensor, layer: str) -> torch.Tensor:
    return feats if layer == "penultimate" else encoder.project(feats)


EMBED_BATCH = 1024  # embed()'s batch (the sharded CSI purity embeds the pool in chunks of it: the same bits)


@torch.no_grad()
def embed(encoder: ContrastiveEncoder, images: DeviceImages, index, *, layer: str = "penultimate",
          batch_size: int = EMBED_BATCH) -> torch.Tensor:
    """Embeddings (n, d) float32 on the images' device of the rows `index`, unaugmented, in eval
    mode: the backbone's penultimate features (layer "penultimate", d = 8 * width) or the projection
    head's unnormalized output (layer "projection", CSI's "simclr" layer, d = projection_dim)."""
    encoder.eval()
    device = images.images.device
    index = _rows(index)
    dim = _layer_dim(encoder, layer)
    out = [torch.zeros(0, dim, device=device)]
    for start in range(0, len(index), batch_size):
        with device_autocast(device):
            feats = encoder.features(images.batch(index[start:start + batch_size]))
            out.append(_layer(encoder, feats, layer).float())
    return torch.cat(out)


class RotationEmbeddings(NamedTuple):
    embeddings: torch.Tensor    # (n, 4, d) the layer's output for rotation k of each row
    shift_logits: torch.Tensor  # (n, 4, 4) the shift head's logits for rotation k of each row


@torch.no_grad()
def embed_rotations(encoder: ContrastiveEncoder, images: DeviceImages, index, *, layer: str = "projection",
                    batch_size: int = EMBED_BATCH) -> RotationEmbeddings:
    """What CSI's detection score reads, for each of the 4 rotations of every row `index`
    (unaugmented, eval mode): the embeddings of `layer` (default CSI's: the projection) and the
    shift logits."""
    encoder.eval()
    device = images.images.device
    index = _rows(index)
    dim = _layer_dim(encoder, layer)
    embeddings = [torch.zeros(0, NUM_ROTATIONS, dim, device=device)]
    logits = [torch.zeros(0, NUM_ROTATIONS, NUM_ROTATIONS, device=device)]
    for start in range(0, len(index), batch_size):
        batch = images.batch(index[start:start + batch_size])
        per_rotation_embeddings, per_rotation_logits = [], []
        for k in range(NUM_ROTATIONS):
            with device_autocast(device):
                feats = encoder.features(rotate(batch, k))
                per_rotation_embeddings.append(_layer(encoder, feats, layer).float())
                per_rotation_logits.append(encoder.shift_logits(feats).float())
        embeddings.append(torch.stack(per_rotation_embeddings, 1))
        logits.append(torch.stack(per_rotation_logits, 1))
    return RotationEmbeddings(torch.cat(embeddings), torch.cat(logits))
