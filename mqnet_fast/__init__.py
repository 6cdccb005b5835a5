"""mqnet-fast: compiled-kernel accelerated open-set active learning (MQ-Net and baselines).

`mqnet_fast.ops` holds the fast ops (k-center greedy, nearest-set similarity, BADGE k-means++
seeding, fused non-negative MLP scoring); `mqnet_fast.reference` their plain-PyTorch definitions.
"""
from mqnet_fast import ops, reference
from mqnet_fast._library import build_info, compiled_backends, has_compiled

__version__ = "0.1.0"
__all__ = ["ops", "reference", "build_info", "compiled_backends", "has_compiled", "__version__"]
