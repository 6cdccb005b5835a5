"""Batched image augmentations on the device for contrastive training (SimCLR's and CSI's views):
random resized crop, horizontal flip, colour jitter, random greyscale, and rotations by multiples of
90 degrees (CSI's shifting transformations).

The transforms take float batches (N, C, H, W) with values in [0, 1] (unnormalized; `to_unit`
turns the uint8 rows that DeviceImages holds into that) and return the same shape and dtype, values
still in [0, 1]; DeviceImages normalizes the result (`csi_views` does both ends). Every random number
comes from the CPU `generator` (as DeviceImages.augmented_batch draws them) and is drawn for the
whole batch at once: no Python loop over images.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mqnet_fast.models.encoder import NUM_ROTATIONS
from mqnet_fast.training.images import DeviceImages

# ITU-R 601 luma, as torchvision's rgb_to_grayscale and CSI's RandomColorGrayLayer use.
_LUMA = (0.299, 0.587, 0.114)


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) in 0..255 -> float32 in [0, 1]."""
    return batch.float() / 255.0


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=generator)).to(device)


def _bernoulli(n: int, p: float, generator: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < p).to(device)


def rotate(batch: torch.Tensor, k: int) -> torch.Tensor:
    """Every image turned by k * 90 degrees counter-clockwise (torch.rot90 over H, W): an exact
    permutation of the pixels. Square images keep their shape."""
    return torch.rot90(batch, k, (2, 3))


def horizontal_flip(batch: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Each image mirrored left-right with probability p."""
    flips = _bernoulli(batch.shape[0], p, generator, batch.device)
    return torch.where(flips[:, None, None, None], batch.flip(-1), batch)


def random_resized_crop(batch: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style crop resized back to the input size, per image: the crop covers a fraction
    U(scale) of the area with aspect ratio exp(U(log ratio)) (sides clipped to the image), at a
    uniform position inside the image; bilinear resampling through affine_grid / grid_sample
    (as CSI's RandomResizedCropLayer; a crop side is not rounded to whole pixels)."""
    n, device = batch.shape[0], batch.device
    area = _uniform(n, scale[0], scale[1], generator, device)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)   # fractions of the image side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    # Centre in affine_grid's [-1, 1] coordinates, uniform where the crop stays inside the image.
    centre_x = (2 * _uniform(n, 0.0, 1.0, generator, device) - 1) * (1 - width)
    centre_y = (2 * _uniform(n, 0.0, 1.0, generator, device) - 1) * (1 - height)
    theta = torch.zeros(n, 2, 3, device=device, dtype=batch.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = width, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def grayscale(batch: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> its luma repeated in 3 channels."""
    weights = batch.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (batch * weights).sum(1, keepdim=True).expand_as(batch)


def random_grayscale(batch: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """Each image turned grey with probability p; only for 3-channel images (1 channel: unchanged)."""
    if batch.shape[1] != 3:
        return batch
    grey = _bernoulli(batch.shape[0], p, generator, batch.device)
    return torch.where(grey[:, None, None, None], grayscale(batch), batch)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    cmax, argmax = rgb.max(1)
    delta = cmax - rgb.min(1).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(argmax == 0, ((g - b) / safe) % 6,
                      torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    sat = torch.where(cmax > 0, delta / torch.where(cmax > 0, cmax, torch.ones_like(cmax)), torch.zeros_like(cmax))
    return torch.stack([hue, sat, cmax], 1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = hsv.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = (n + h * 6) % 6
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def color_jitter(batch: torch.Tensor, generator: torch.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.1, p: float = 0.8) -> torch.Tensor:
    """SimCLR's colour jitter, applied to each image with probability p: brightness (x * f),
    contrast (blend with the image's mean grey level), saturation (blend with the image's grey
    version) with factors f ~ U(1 - s, 1 + s), and a hue shift by U(-hue, hue) of a turn (in HSV);
    clipped to [0, 1] after each. Saturation and hue only for 3-channel images. The order is fixed
    (brightness, contrast, saturation, hue), where torchvision and CSI shuffle it."""
    n, channels, device = batch.shape[0], batch.shape[1], batch.device
    apply = _bernoulli(n, p, generator, device)[:, None, None, None]
    factor = lambda s: _uniform(n, max(0.0, 1 - s), 1 + s, generator, device).view(n, 1, 1, 1)  # noqa: E731
    f_bright, f_contrast = factor(brightness), factor(contrast)
    out = (batch * f_bright).clamp(0, 1)
    grey = grayscale(out) if channels == 3 else out
    mean = grey.mean((1, 2, 3), keepdim=True)
    out = ((out - mean) * f_contrast + mean).clamp(0, 1)
    if channels == 3:
        f_sat = factor(saturation)
        out = (grayscale(out) + (out - grayscale(out)) * f_sat).clamp(0, 1)
        shift = _uniform(n, -hue, hue, generator, device).view(n, 1, 1)
        hsv = _rgb_to_hsv(out)
        hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
        out = _hsv_to_rgb(hsv).clamp(0, 1)
    return torch.where(apply, out, batch)


def simclr_augment(batch: torch.Tensor, generator: torch.Generator, *, crop_scale: tuple[float, float] = (0.08, 1.0),
                   jitter: float = 1.0, jitter_p: float = 0.8, grey_p: float = 0.2) -> torch.Tensor:
    """CSI's `simclr_aug` on float [0, 1] images, in its order: colour jitter (strength `jitter`
    times SimCLR's 0.4 / 0.4 / 0.4 / 0.1) with probability jitter_p, greyscale with probability
    grey_p, random resized crop with area fraction in crop_scale."""
    if jitter > 0 and jitter_p > 0:
        batch = color_jitter(batch, generator, 0.4 * jitter, 0.4 * jitter, 0.4 * jitter, 0.1 * jitter, jitter_p)
    if grey_p > 0:
        batch = random_grayscale(batch, generator, grey_p)
    if crop_scale[0] < 1.0:
        batch = random_resized_crop(batch, generator, crop_scale)
    return batch


def csi_views(images: DeviceImages, index: torch.Tensor, generator: torch.Generator, *,
              crop_scale: tuple[float, float] = (0.08, 1.0), jitter: float = 1.0, jitter_p: float = 0.8,
              grey_p: float = 0.2, shifts: int = NUM_ROTATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """CSI's training batch for the B rows `index` of `images`: every image in 2 views, each view
    flipped at random (where images.flip allows it), turned by each of the 4 rotations, then
    augmented independently (simclr_augment) and normalized by DeviceImages.

    Returns (views (8B, C, H, W) normalized float, rotation labels (8B,) int64) in the layout
    [view 1: rotation 0 of the B images, rotation 1, 2, 3 | view 2: the same], so views i and
    i + 4B are the positive pair of nt_xent (first half / second half). With shifts=1, SimCLR's
    batch: 2B views, no rotation (labels all 0)."""
    batch = to_unit(images.images[index.to(images.images.device)])
    pair = torch.cat([batch, batch])
    if images.flip:
        pair = horizontal_flip(pair, generator)
    first, second = pair.chunk(2)
    views = torch.cat([rotate(half, k) for half in (first, second) for k in range(shifts)])
    views = simclr_augment(views, generator, crop_scale=crop_scale, jitter=jitter, jitter_p=jitter_p, grey_p=grey_p)
    b = batch.shape[0]
    labels = torch.arange(shifts, device=views.device).repeat_interleave(b).repeat(2)
    # DeviceImages' normalization takes 0..255 values (it divides by 255 itself).
    return images._normalize(views * 255.0), labels
