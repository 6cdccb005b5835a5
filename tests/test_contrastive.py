"""CSI's contrastive encoder (NT-Xent, LARS, augmentations, rotations, the disk cache) and the CSI
purity scores."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mqnet_fast.io import read_seal
from mqnet_fast.cache import RunCache
from mqnet_fast.scores import PURITY, purity
from mqnet_fast.scores import csi as csi_module
from mqnet_fast.scores.csi import csi_full_purity, csi_ood_purity, csi_purity
from mqnet_fast.strategies import RoundView
from mqnet_fast.training import DeviceImages
from mqnet_fast.training import augment, contrastive
from mqnet_fast.training.augment import (color_jitter, csi_views, horizontal_flip, random_grayscale,
                                         random_resized_crop, rotate, simclr_augment)
from mqnet_fast.training.contrastive import (EncoderConfig, csi_loss, embed, embed_rotations,
                                             load_or_train_encoder, nt_xent, train_encoder)
from mqnet_fast.training.optim import LARS, lars

TINY = EncoderConfig(epochs=1, batch_size=16, lr=1.0, warmup_epochs=0, width=2, projection_dim=8,
                     crop_min_scale=0.5)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def device_images(n=40, channels=1, side=8, flip=False, seed=0):
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 256, size=(n, side, side, channels)).astype(np.uint8)
    mean, std = DeviceImages.channel_stats(pixels)
    return DeviceImages(pixels, mean, std, torch.device("cpu"), flip)


# --------------------------------------------------------------------------------------------------
# NT-Xent


def test_nt_xent_hand_computed():
    # Views 0, 1 | 2, 3: positives 0-2 and 1-3. Dot products: z0.z2 = 1, z0.z3 = -1, z2.z3 = -1,
    # the rest 0. With t = 0.5 a similarity s enters as exp(2 s):
    #   anchor 0: -log(e^2 / (e^0 + e^2 + e^-2)) = log(1 + e^-2 + e^-4); anchor 2: the same;
    #   anchor 1: all three others at 0: log 3;
    #   anchor 3: positive z1 at 0, negatives z0, z2 at -1: log(1 + 2 e^-2).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    a = math.log(1 + math.exp(-2) + math.exp(-4))
    expected = (2 * a + math.log(3) + math.log(1 + 2 * math.exp(-2))) / 4
    assert nt_xent(z, 0.5).item() == pytest.approx(expected, rel=1e-12)
    # t = 1: a similarity s enters as exp(s).
    a1 = math.log(1 + math.exp(-1) + math.exp(-2))
    expected_t1 = (2 * a1 + math.log(3) + math.log(1 + 2 * math.exp(-1))) / 4
    assert nt_xent(z, 1.0).item() == pytest.approx(expected_t1, rel=1e-12)


def test_nt_xent_rejects_odd_batches():
    with pytest.raises(ValueError, match="2M"):
        nt_xent(torch.ones(3, 2))


def test_csi_loss_adds_rotation_cross_entropy():
    torch.manual_seed(0)
    projections, logits = torch.randn(16, 5), torch.randn(16, 4)
    labels = torch.arange(4).repeat_interleave(2).repeat(2)
    total, contrastive_part, shift = csi_loss(projections, logits, labels, 0.5)
    assert contrastive_part.item() == pytest.approx(nt_xent(torch.nn.functional.normalize(projections, dim=1)).item())
    assert shift.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert total.item() == pytest.approx(contrastive_part.item() + shift.item())


# --------------------------------------------------------------------------------------------------
# LARS


def test_lars_steps_match_the_formula():
    layer = torch.nn.Linear(2, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    lr, momentum, wd, trust, eps = 0.7, 0.9, 0.01, 0.001, 1e-8
    opt = lars(layer, lr, momentum, wd, trust)
    grads = [(torch.tensor([[0.3, -0.4], [0.0, 1.2]]), torch.tensor([1.0, 2.0])),
             (torch.tensor([[-0.1, 0.2], [0.5, 0.5]]), torch.tensor([-3.0, 0.5]))]
    w, b, w_buf, b_buf = w0.double(), b0.double(), None, None
    for g_w, g_b in grads:
        layer.weight.grad, layer.bias.grad = g_w.double().clone(), g_b.double().clone()
        opt.step()
        # weight: weight decay and the trust ratio; bias: plain momentum SGD (SimCLR's exclusion).
        d = g_w.double() + wd * w
        d = d * trust * w.norm() / (g_w.double().norm() + wd * w.norm() + eps)
        w_buf = d if w_buf is None else momentum * w_buf + d
        b_buf = g_b.double() if b_buf is None else momentum * b_buf + g_b.double()
        w, b = w - lr * w_buf, b - lr * b_buf
        torch.testing.assert_close(layer.weight.detach(), w, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(layer.bias.detach(), b, rtol=1e-12, atol=1e-15)


def test_lars_without_exclusion_adapts_biases():
    layer = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        layer.bias.fill_(2.0)
    opt = lars(layer, 1.0, 0.9, 0.0, 0.001, exclude_bias_and_norm=False)
    layer.weight.grad, layer.bias.grad = torch.ones(1, 2, dtype=torch.float64), torch.full((1,), 4.0, dtype=torch.float64)
    opt.step()
    # trust * |b| / |g| * g = 0.001 * 2 / 4 * 4 = 0.002
    assert layer.bias.item() == pytest.approx(2.0 - 0.002)
    assert isinstance(opt, LARS)


def test_lars_zero_norm_falls_back_to_plain_sgd():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = LARS([{"params": [p]}], lr=0.5, weight_decay=0.0)
    p.grad = torch.tensor([1.0, -2.0, 0.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.5, 1.0, 0.0]))


# --------------------------------------------------------------------------------------------------
# Augmentations and rotations


@pytest.mark.parametrize("channels", [1, 3])
def test_augmentations_keep_shape_dtype_and_range(channels):
    x = torch.rand(12, channels, 8, 8, generator=gen(1))
    for out in (random_resized_crop(x, gen()), horizontal_flip(x, gen()), color_jitter(x, gen()),
                random_grayscale(x, gen()), simclr_augment(x, gen()), rotate(x, 1)):
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        assert torch.isfinite(out).all()
    assert not torch.equal(color_jitter(x, gen(), p=1.0), x)
    assert not torch.equal(random_resized_crop(x, gen()), x)


def test_augmentations_are_reproducible_from_the_generator():
    x = torch.rand(12, 3, 8, 8, generator=gen(1))
    torch.testing.assert_close(simclr_augment(x, gen(5)), simclr_augment(x, gen(5)), rtol=0, atol=0)
    assert not torch.equal(simclr_augment(x, gen(5)), simclr_augment(x, gen(6)))


def test_augmentation_limits_are_exact():
    x = torch.rand(6, 3, 8, 8, generator=gen(2))
    # A full-size crop with aspect ratio 1 samples every pixel at its centre: the identity.
    torch.testing.assert_close(random_resized_crop(x, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0)), x,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(horizontal_flip(x, gen(), p=1.0), x.flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(color_jitter(x, gen(), p=0.0), x, rtol=0, atol=0)
    # Zero strengths: factors 1 and no hue shift; only the RGB -> HSV -> RGB round trip remains.
    torch.testing.assert_close(color_jitter(x, gen(), 0.0, 0.0, 0.0, 0.0, p=1.0), x, rtol=0, atol=1e-5)
    grey = random_grayscale(x, gen(), p=1.0)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    one = x[:, :1]
    assert torch.equal(random_grayscale(one, gen(), p=1.0), one)


def test_hue_shift_of_pure_colours():
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0
    hsv = augment._rgb_to_hsv(red)
    hsv[:, 0] = (hsv[:, 0] + 1 / 3) % 1.0  # a third of a turn: red -> green
    torch.testing.assert_close(augment._hsv_to_rgb(hsv).flatten(), torch.tensor([0.0, 1.0, 0.0]))


def test_rotations_are_exact_pixel_permutations():
    x = torch.rand(5, 3, 8, 8, generator=gen(3))
    assert torch.equal(rotate(rotate(rotate(rotate(x, 1), 1), 1), 1), x)
    assert torch.equal(rotate(x, 4), x)
    assert torch.equal(rotate(x, 2), x.flip(2).flip(3))
    for k in range(1, 4):
        turned = rotate(x, k)
        assert not torch.equal(turned, x)
        assert torch.equal(turned.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert torch.equal(rotate(x, 1)[0, 0, 0, :], x[0, 0, :, -1])  # counter-clockwise: top row = last column


@pytest.mark.parametrize("flip", [False, True])
def test_csi_views_layout(flip):
    images = device_images(n=10, channels=3, flip=flip)
    index = torch.tensor([0, 3, 7])
    views, labels = csi_views(images, index, gen(), crop_scale=(1.0, 1.0), jitter=0.0, grey_p=0.0)
    assert views.shape == (24, 3, 8, 8) and views.dtype == torch.float32
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    clean = images.batch(index)
    lo, hi = ((0 - images.mean) / images.std).min(), ((1 - images.mean) / images.std).max()
    assert views.min() >= lo - 1e-5 and views.max() <= hi + 1e-5
    for half in (0, 1):
        base = views[12 * half: 12 * half + 3]
        if not flip:
            torch.testing.assert_close(base, clean, rtol=0, atol=1e-5)
        for k in range(4):
            torch.testing.assert_close(views[12 * half + 3 * k: 12 * half + 3 * (k + 1)], rotate(base, k), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Encoder training and the cache


def test_train_encoder_is_deterministic_and_embeds():
    images = device_images()
    pool = np.arange(0, 40, 2)
    a = train_encoder(images, pool, TINY, seed=3, show_progress=False)
    b = train_encoder(images, pool, TINY, seed=3, show_progress=False)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    feats = embed(a, images, pool)
    assert feats.shape == (20, 16) and torch.isfinite(feats).all()
    assert embed(a, images, pool, layer="projection").shape == (20, 8)
    rot = embed_rotations(a, images, pool[:3])
    assert rot.embeddings.shape == (3, 4, 8) and rot.shift_logits.shape == (3, 4, 4)
    # Rotation 0 is the plain image.
    torch.testing.assert_close(rot.embeddings[:, 0], embed(a, images, pool[:3], layer="projection"))
    with pytest.raises(ValueError, match="layer"):
        embed(a, images, pool, layer="logits")


def _state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_hit_miss_and_weights_only_reload(tmp_path, monkeypatch):
    images = device_images()
    pool = np.arange(0, 40, 2)
    calls = []
    real_train = contrastive.train_encoder

    def counting_train(*args, **kwargs):
        calls.append(args[2])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(contrastive, "train_encoder", counting_train)
    cache = RunCache("tiny", 0, pool, tmp_path)
    first = load_or_train_encoder(images, cache, TINY, show_progress=False)
    assert len(calls) == 1
    assert load_or_train_encoder(images, cache, TINY, show_progress=False) is first  # memory hit
    # the entry is keyed without micro_batches and shifts at 1 and 4, and with the trainer's version:
    # an encoder an earlier trainer cached (other bits from the same config) is not taken for this one's
    recorded = {k: v for k, v in dataclasses.asdict(TINY).items() if k not in ("micro_batches", "shifts")}
    recorded["trainer_version"] = contrastive.TRAINER_VERSION
    path = cache.disk_path("csi-encoder", **recorded)
    assert path.exists()
    stale = {**recorded, "trainer_version": contrastive.TRAINER_VERSION - 1}
    assert cache.disk_path("csi-encoder", **stale) != path
    seal = read_seal(path, "entry")  # sealed: what it is, and the sha256 of its state
    assert seal["identity"]["config"] == recorded and seal["identity"]["in_channels"] == 1
    assert cache.models["csi-encoder"] == seal["sha256"]  # the run records which encoder it used

    reloaded = load_or_train_encoder(images, RunCache("tiny", 0, pool, tmp_path), TINY, show_progress=False)
    assert len(calls) == 1 and reloaded is not first  # disk hit: nothing trained
    assert _state_equal(reloaded, first)
    torch.testing.assert_close(embed(reloaded, images, pool), embed(first, images, pool), rtol=0, atol=0)

    changed = dataclasses.replace(TINY, lr=0.5)
    load_or_train_encoder(images, RunCache("tiny", 0, pool, tmp_path), changed, show_progress=False)
    assert len(calls) == 2
    other_seed = load_or_train_encoder(images, RunCache("tiny", 1, pool, tmp_path), TINY, show_progress=False)
    assert len(calls) == 3 and not _state_equal(other_seed, first)
    load_or_train_encoder(images, RunCache("tiny", 0, pool[1:], tmp_path), TINY, show_progress=False)
    assert len(calls) == 4
    assert len(list((tmp_path / "csi-encoder").glob("*.pt"))) == 4


def test_no_cache_directory_trains_once_per_run(monkeypatch):
    images = device_images()
    cache = RunCache("tiny", 0, np.arange(16), None)
    first = load_or_train_encoder(images, cache, TINY, show_progress=False)
    assert load_or_train_encoder(images, cache, TINY, show_progress=False) is first


# --------------------------------------------------------------------------------------------------
# The purity scores


def test_csi_and_csi_ood_hand_checked():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labeled_in, labeled_ood = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(csi_purity(x, labeled_in), torch.tensor([1.0, 0.0, r]))
    torch.testing.assert_close(csi_ood_purity(x, labeled_ood, labeled_in), torch.tensor([1.0, 0.0, 1 - r]))
    none = torch.zeros(0, 2)
    torch.testing.assert_close(csi_ood_purity(x, none, labeled_in), csi_purity(x, labeled_in))  # no OOD yet
    assert torch.equal(csi_purity(x, none), torch.zeros(3))
    assert torch.equal(csi_ood_purity(x, labeled_ood, none), torch.zeros(3))


def _full_case():
    # Labeled IN j = 0, 1 at rotation k: (k + 1) e_1 and (k + 1) e_2, so mean norm k + 1; their
    # correct-rotation logits 2 and 4 (mean 3); every other logit 100 (must not be read).
    k = torch.arange(4, dtype=torch.float32)
    labeled = torch.zeros(2, 4, 2)
    labeled[0, :, 0], labeled[1, :, 1] = k + 1, k + 1
    labeled_logits = torch.full((2, 4, 4), 100.0)
    labeled_logits[0, range(4), range(4)], labeled_logits[1, range(4), range(4)] = 2.0, 4.0
    # Candidate at rotation k: (k + 1) (3, 4): max cosine 0.8, norm 5 (k + 1); correct logit 6, the
    # other logits 50 (larger, so reading the max logit instead of the correct one shows).
    cand = (k + 1)[None, :, None] * torch.tensor([3.0, 4.0])
    cand_logits = torch.full((1, 4, 4), 50.0)
    cand_logits[0, range(4), range(4)] = 6.0
    return cand, cand_logits, labeled, labeled_logits


def test_csi_full_hand_checked():
    cand, cand_logits, labeled, labeled_logits = _full_case()
    # per rotation: 0.8 * 5 (k + 1) / (k + 1) + 6 / 3 = 4 + 2; averaged over k: 6.
    torch.testing.assert_close(csi_full_purity(cand, cand_logits, labeled, labeled_logits), torch.tensor([6.0]))
    # The candidate's rotations matched against other rotations' statistics would not give 6:
    shuffled = cand[:, [3, 2, 1, 0]]
    assert csi_full_purity(shuffled, cand_logits, labeled, labeled_logits).item() != pytest.approx(6.0)
    # A non-positive mean correct-rotation logit drops that rotation's shift term.
    labeled_logits[:, 0, 0] = -1.0
    torch.testing.assert_close(csi_full_purity(cand, cand_logits, labeled, labeled_logits), torch.tensor([5.5]))
    assert torch.equal(csi_full_purity(cand, cand_logits, labeled[:0], labeled_logits[:0]), torch.zeros(1))


def _view(pool, candidates, labeled, labeled_is_in, images=None, dataset="tiny"):
    u = len(candidates)
    return RoundView(torch.tensor(candidates), torch.zeros(u, 1), torch.zeros(u, 1), gen(),
                     labeled=torch.tensor(labeled), labeled_is_in=torch.tensor(labeled_is_in), images=images,
                     cache=RunCache(dataset, 0, np.asarray(pool, dtype=np.int64), None))


def test_registered_scores_map_rows_through_the_pool(monkeypatch):
    assert {"csi", "csi-ood", "csi-full"} <= set(PURITY)
    # Pool rows 0..3 hold global indices 3, 5, 7, 9; row i has embedding table[i].
    table = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [0.0, 1.0]])
    cand, cand_logits, labeled, labeled_logits = _full_case()
    rot_table = torch.cat([labeled[:1], cand, labeled[1:], cand])
    rot_logits = torch.cat([labeled_logits[:1], cand_logits, labeled_logits[1:], cand_logits])
    monkeypatch.setattr(csi_module, "pool_embeddings", lambda view, layer=None: table)
    monkeypatch.setattr(csi_module, "pool_rotation_embeddings", lambda view, layer=None: (rot_table, rot_logits))
    view = _view([3, 5, 7, 9], [5, 9], [3, 7], [True, False])
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(purity("csi", view), torch.tensor([r, 0.0]))
    torch.testing.assert_close(purity("csi-ood", view), torch.tensor([1 - r, 0.0]))
    both_in = _view([3, 5, 7, 9], [5, 9], [3, 7], [True, True])
    torch.testing.assert_close(purity("csi-full", both_in), torch.tensor([6.0, 6.0]))
    none_in = _view([3, 5, 7, 9], [5, 9], [3, 7], [False, False])
    for name in ("csi", "csi-ood", "csi-full"):
        assert torch.equal(purity(name, none_in), torch.zeros(2))
    with pytest.raises(ValueError, match="not in the cache's pool"):
        purity("csi", _view([3, 5, 7, 9], [5, 8], [3, 7], [True, False]))


def test_registered_scores_end_to_end(monkeypatch):
    images = device_images()
    pool = np.arange(0, 40, 2)
    monkeypatch.setattr(csi_module, "encoder_config", lambda view: TINY)
    view = _view(pool, pool[4:], pool[:4], [True, False, True, False], images=images)
    scores = {name: purity(name, view) for name in ("csi", "csi-ood", "csi-full")}
    for s in scores.values():
        assert s.shape == (16,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    encoder = load_or_train_encoder(images, view.cache, TINY)
    feats = embed(encoder, images, pool, layer=csi_module.PURITY_LAYER)
    torch.testing.assert_close(scores["csi"], csi_purity(feats[4:], feats[[0, 2]]))
    torch.testing.assert_close(scores["csi-ood"], csi_ood_purity(feats[4:], feats[[1, 3]], feats[[0, 2]]))
