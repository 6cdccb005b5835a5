"""Synthetic benchmark data: isotropic Gaussian (no structure, the worst case for pruning) and a
clustered low-intrinsic-dimension mixture standing in for penultimate CNN features (10 classes,
16-dim latent mixture mapped linearly into d dims, then ReLU as after a ResNet's last block)."""
import torch


def gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def clustered(n: int, d: int, classes: int = 10, latent: int = 16, seed: int = 0, device: str = "cpu"):
    """(features (n, d) float32 >= 0, labels (n,)), generated on `device`."""
    g = torch.Generator(device=device).manual_seed(seed)
    centers = torch.randn(classes, latent, generator=g, device=device) * 2
    labels = torch.randint(0, classes, (n,), generator=g, device=device)
    z = centers[labels] + 0.5 * torch.randn(n, latent, generator=g, device=device)
    mix = torch.randn(latent, d, generator=g, device=device) / latent ** 0.5
    feats = torch.relu(z @ mix + 0.05 * torch.randn(n, d, generator=g, device=device))
    return feats, labels


def classifier_probs(feats: torch.Tensor, labels: torch.Tensor, classes: int, seed: int = 0) -> torch.Tensor:
    """Softmax outputs of a noisy linear classifier on feats: mostly confident, some not (BADGE input)."""
    g = torch.Generator().manual_seed(seed)
    logits = 4 * torch.nn.functional.one_hot(labels % classes, classes).float()
    logits += 1.5 * torch.randn(len(labels), classes, generator=g)
    return torch.softmax(logits, 1)


def cifar_resnet18():
    """Real embeddings: (feats (50000, 512), probs (50000, 10)) of a ResNet-18 trained briefly on the
    shared CIFAR-10 images (benchmarks/ops/cifar_features.py builds them), or None if not built."""
    from cifar_features import load_features

    loaded = load_features()
    return None if loaded is None else (loaded[0], loaded[1])
